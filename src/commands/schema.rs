//! `redswitch schema [TYPE]`: the JSON Schemas (2020-12) of every message
//! on the Redis contract, compiled into the binary from `schemas/`.
//!
//! Each schema is named by its message's `type`: the `asp-call` job, every
//! event Redswitch publishes, and every control message. They encode the
//! validation rules of `docs/PROTOCOL.md` (patterns, lengths, ranges); the
//! agent's own parser stays the authority, and `tests/schemas.rs` checks
//! the two agree.

use clap::Args;

/// `redswitch schema`.
#[derive(Debug, Clone, Args)]
pub struct SchemaArgs {
    /// A message type (`asp-call`, `hangup-event`, `barge` …); without it,
    /// every schema as one JSON object keyed by type.
    #[arg(value_name = "TYPE")]
    pub kind: Option<String>,
    /// Print the known types, one per line, instead.
    #[arg(long, conflicts_with = "kind")]
    pub list: bool,
}

/// Every schema: (message type, JSON text). The job first, then the events,
/// then the control messages.
pub const SCHEMAS: &[(&str, &str)] = &[
    ("asp-call", include_str!("../../schemas/asp-call.json")),
    ("call-start", include_str!("../../schemas/call-start.json")),
    (
        "answer-event",
        include_str!("../../schemas/answer-event.json"),
    ),
    (
        "hangup-event",
        include_str!("../../schemas/hangup-event.json"),
    ),
    ("failure", include_str!("../../schemas/failure.json")),
    ("ack", include_str!("../../schemas/ack.json")),
    ("error", include_str!("../../schemas/error.json")),
    ("dtmf-event", include_str!("../../schemas/dtmf-event.json")),
    (
        "media-done-event",
        include_str!("../../schemas/media-done-event.json"),
    ),
    (
        "record-done-event",
        include_str!("../../schemas/record-done-event.json"),
    ),
    ("hangup", include_str!("../../schemas/hangup.json")),
    ("barge", include_str!("../../schemas/barge.json")),
    ("whisper", include_str!("../../schemas/whisper.json")),
    ("mute", include_str!("../../schemas/mute.json")),
    ("threeway", include_str!("../../schemas/threeway.json")),
    ("unthreeway", include_str!("../../schemas/unthreeway.json")),
    ("play", include_str!("../../schemas/play.json")),
    ("stop-media", include_str!("../../schemas/stop-media.json")),
    ("record", include_str!("../../schemas/record.json")),
    (
        "stop-record",
        include_str!("../../schemas/stop-record.json"),
    ),
    ("send-dtmf", include_str!("../../schemas/send-dtmf.json")),
];

/// The schema of `kind`, as JSON text.
pub fn schema(kind: &str) -> Option<&'static str> {
    SCHEMAS.iter().find(|(t, _)| *t == kind).map(|(_, s)| *s)
}

/// A type with no schema.
#[derive(Debug, thiserror::Error)]
#[error("no schema for {kind:?}; known types: {known}")]
pub struct UnknownType {
    /// What was asked for.
    pub kind: String,
    /// The known types, comma-separated.
    pub known: String,
}

/// What `redswitch schema` prints for `args`.
pub fn render(args: &SchemaArgs) -> Result<String, UnknownType> {
    if args.list {
        return Ok(SCHEMAS.iter().map(|(t, _)| format!("{t}\n")).collect());
    }
    match &args.kind {
        Some(kind) => schema(kind).map(str::to_owned).ok_or_else(|| UnknownType {
            kind: kind.chars().take(64).collect(),
            known: SCHEMAS
                .iter()
                .map(|(t, _)| *t)
                .collect::<Vec<_>>()
                .join(", "),
        }),
        None => {
            // Each file is a JSON object, so the concatenation is one too.
            let body: Vec<String> = SCHEMAS
                .iter()
                .map(|(t, s)| format!("{t:?}: {}", s.trim_end()))
                .collect();
            Ok(format!("{{\n{}\n}}\n", body.join(",\n")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_schema_is_json_named_by_its_type() {
        for (kind, text) in SCHEMAS {
            let v: serde_json::Value = serde_json::from_str(text).unwrap();
            assert_eq!(v["properties"]["type"]["const"], *kind);
        }
        let all = render(&SchemaArgs {
            kind: None,
            list: false,
        })
        .unwrap();
        let all: serde_json::Value = serde_json::from_str(&all).unwrap();
        assert_eq!(all.as_object().unwrap().len(), SCHEMAS.len());
        assert!(
            render(&SchemaArgs {
                kind: Some("nope".into()),
                list: false
            })
            .is_err()
        );
    }
}
