//! Control messages, parsed: the messages controllers publish on a call's
//! channel, turned into a typed [`ControlMessage`] whose values all passed
//! [`validate`](crate::service::validate). Pure and I/O-free.
//!
//! Redswitch's own event types, which share the channel, come out as
//! [`Parsed::Ignored`]. Anything else is a [`BadControl`] that becomes an
//! `error` event.

use serde_json::{Map, Value};

use crate::service::events::{EVENT_TYPES, Event, Side};
use crate::service::job::json_kind;
use crate::service::validate::{
    Digits, Media, PhoneNumber, RecordingName, ValidationError, dtmf_duration_ms,
};

/// Control messages larger than this are refused unparsed.
pub const MAX_CONTROL_BYTES: usize = 64 * 1024;
/// Most media items one `play` may list.
pub const MAX_PLAY_ITEMS: usize = 64;
/// Longest `type` echoed back in an `error` (the rest is cut).
const MAX_ECHOED_TYPE: usize = 64;

/// Where `play` and `stop-media` act.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlaySide {
    /// Side 0 or side 1.
    One(Side),
    /// Both parties.
    Both,
}

/// A validated control message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlMessage {
    /// Hang up every side.
    Hangup,
    /// Dial a barger (side 2) who eavesdrops, muted.
    Barge {
        /// Whom to dial.
        phone_number: PhoneNumber,
        /// Caller id the barger sees.
        caller_id: PhoneNumber,
    },
    /// The barger talks to the caller (side 0) only.
    Whisper,
    /// The barger returns to listen-only.
    Mute,
    /// The barger talks to both parties.
    Threeway,
    /// The barger leaves three-way, back to listen-only.
    Unthreeway,
    /// Play media to a side.
    Play {
        /// What to play, in order.
        media: Vec<Media>,
        /// Where.
        side: PlaySide,
    },
    /// Stop playback on a side.
    StopMedia {
        /// Where.
        side: PlaySide,
    },
    /// Record the conversation.
    Record {
        /// The recording's name under the recordings folder.
        name: RecordingName,
    },
    /// Stop recording.
    StopRecord,
    /// Send DTMF tones to a side.
    SendDtmf {
        /// The digits.
        digits: Digits,
        /// To whom.
        side: Side,
        /// Tone length in ms, when given (1..=10000).
        duration_ms: Option<u32>,
    },
}

impl ControlMessage {
    /// The wire `type`, as echoed in `ack` and `error`.
    pub fn event_type(&self) -> &'static str {
        match self {
            ControlMessage::Hangup => "hangup",
            ControlMessage::Barge { .. } => "barge",
            ControlMessage::Whisper => "whisper",
            ControlMessage::Mute => "mute",
            ControlMessage::Threeway => "threeway",
            ControlMessage::Unthreeway => "unthreeway",
            ControlMessage::Play { .. } => "play",
            ControlMessage::StopMedia { .. } => "stop-media",
            ControlMessage::Record { .. } => "record",
            ControlMessage::StopRecord => "stop-record",
            ControlMessage::SendDtmf { .. } => "send-dtmf",
        }
    }

    /// The `ack` for this message.
    pub fn ack(&self) -> Event {
        Event::Ack {
            event: self.event_type().to_owned(),
        }
    }

    /// An `error` for this message.
    pub fn error(&self, reason: impl Into<String>) -> Event {
        Event::Error {
            event: Some(self.event_type().to_owned()),
            reason: reason.into(),
        }
    }
}

/// Why a control message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// Larger than [`MAX_CONTROL_BYTES`].
    #[error("message is {0} bytes, at most {MAX_CONTROL_BYTES}")]
    TooLarge(usize),
    /// Not JSON.
    #[error("not JSON: {0}")]
    NotJson(String),
    /// JSON, but not an object.
    #[error("not a JSON object")]
    NotObject,
    /// No `type`, or a `type` that is not a string.
    #[error("missing or non-string `type`")]
    NoType,
    /// A `type` Redswitch does not know.
    #[error("unknown control type")]
    Unknown,
    /// A required field is absent.
    #[error("missing field `{0}`")]
    Missing(&'static str),
    /// A field has the wrong JSON type or value shape.
    #[error("field `{field}` must be {expected}, found {found}")]
    WrongType {
        /// The field.
        field: &'static str,
        /// What it must be.
        expected: &'static str,
        /// What it was (a JSON type, or the bad value for sides).
        found: String,
    },
    /// A value broke its allow-list grammar.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The call's mailbox was full; the message was not carried out.
    #[error("too many control messages queued for this call")]
    MailboxFull,
}

/// A control message that will not be carried out: answer it with
/// [`BadControl::to_event`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub struct BadControl {
    /// The message's `type`, when it had one.
    pub event: Option<String>,
    /// What was wrong.
    pub error: ControlError,
}

impl BadControl {
    /// The `error` event answering it.
    pub fn to_event(&self) -> Event {
        Event::Error {
            event: self.event.clone(),
            reason: self.error.to_string(),
        }
    }
}

/// What a raw message on a call's channel is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A valid control message.
    Control(ControlMessage),
    /// One of Redswitch's own events (its type): not for us.
    Ignored(&'static str),
    /// A message to answer with an `error`.
    Bad(BadControl),
}

/// Parses one raw message from a call's channel.
pub fn parse(raw: &[u8]) -> Parsed {
    if raw.len() > MAX_CONTROL_BYTES {
        return bad(None, ControlError::TooLarge(raw.len()));
    }
    let value: Value = match serde_json::from_slice(raw) {
        Ok(v) => v,
        Err(e) => return bad(None, ControlError::NotJson(e.to_string())),
    };
    let Value::Object(obj) = value else {
        return bad(None, ControlError::NotObject);
    };
    let Some(Value::String(kind)) = obj.get("type") else {
        return bad(None, ControlError::NoType);
    };
    if let Some(own) = EVENT_TYPES.iter().find(|t| **t == kind) {
        return Parsed::Ignored(own);
    }
    match fields(kind, &obj) {
        Ok(Some(msg)) => Parsed::Control(msg),
        Ok(None) => bad(Some(echo(kind)), ControlError::Unknown),
        Err(error) => bad(Some(kind.clone()), error),
    }
}

fn bad(event: Option<String>, error: ControlError) -> Parsed {
    Parsed::Bad(BadControl { event, error })
}

/// An unknown type is echoed back, cut to a sane length (JSON escaping
/// makes any content safe to publish).
fn echo(kind: &str) -> String {
    kind.chars().take(MAX_ECHOED_TYPE).collect()
}

fn wrong(field: &'static str, expected: &'static str, found: &Value) -> ControlError {
    ControlError::WrongType {
        field,
        expected,
        found: json_kind(found).to_owned(),
    }
}

fn string<'a>(obj: &'a Map<String, Value>, field: &'static str) -> Result<&'a str, ControlError> {
    match obj.get(field) {
        None => Err(ControlError::Missing(field)),
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(wrong(field, "a string", other)),
    }
}

/// The `side` field as given, and the error naming what was expected.
fn side_field<'a>(
    obj: &'a Map<String, Value>,
    expected: &'static str,
) -> Result<(&'a Value, impl Fn() -> ControlError + 'a), ControlError> {
    let v = obj.get("side").ok_or(ControlError::Missing("side"))?;
    let wrong_side = move || ControlError::WrongType {
        field: "side",
        expected,
        found: v.to_string().chars().take(32).collect(),
    };
    Ok((v, wrong_side))
}

/// `side` of `play` and `stop-media`: 0, 1 or "both".
fn play_side(obj: &Map<String, Value>) -> Result<PlaySide, ControlError> {
    let (v, wrong_side) = side_field(obj, "0, 1 or \"both\"")?;
    match v {
        Value::String(s) if s == "both" => Ok(PlaySide::Both),
        Value::Number(n) => match n.as_u64().and_then(Side::from_number) {
            Some(side @ (Side::Caller | Side::Callee)) => Ok(PlaySide::One(side)),
            _ => Err(wrong_side()),
        },
        _ => Err(wrong_side()),
    }
}

/// `side` of `send-dtmf`: 0, 1 or 2.
fn any_side(obj: &Map<String, Value>) -> Result<Side, ControlError> {
    let (v, wrong_side) = side_field(obj, "0, 1 or 2")?;
    v.as_u64()
        .and_then(Side::from_number)
        .ok_or_else(wrong_side)
}

fn fields(kind: &str, obj: &Map<String, Value>) -> Result<Option<ControlMessage>, ControlError> {
    Ok(Some(match kind {
        "hangup" => ControlMessage::Hangup,
        "whisper" => ControlMessage::Whisper,
        "mute" => ControlMessage::Mute,
        "threeway" => ControlMessage::Threeway,
        "unthreeway" => ControlMessage::Unthreeway,
        "stop-record" => ControlMessage::StopRecord,
        "barge" => ControlMessage::Barge {
            phone_number: PhoneNumber::parse("phone_number", string(obj, "phone_number")?)?,
            caller_id: PhoneNumber::parse("caller_id", string(obj, "caller_id")?)?,
        },
        "play" => {
            let items = match obj.get("media") {
                None => return Err(ControlError::Missing("media")),
                Some(Value::Array(items)) => items,
                Some(other) => return Err(wrong("media", "a list of strings", other)),
            };
            if items.is_empty() || items.len() > MAX_PLAY_ITEMS {
                return Err(ControlError::WrongType {
                    field: "media",
                    expected: "a list of 1 to 64 items",
                    found: format!("{} items", items.len()),
                });
            }
            let media = items
                .iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::String(s) => Ok(Media::parse(format!("media[{i}]"), s)?),
                    other => Err(wrong("media", "a list of strings", other)),
                })
                .collect::<Result<Vec<_>, ControlError>>()?;
            ControlMessage::Play {
                media,
                side: play_side(obj)?,
            }
        }
        "stop-media" => ControlMessage::StopMedia {
            side: play_side(obj)?,
        },
        "record" => ControlMessage::Record {
            name: RecordingName::parse("name", string(obj, "name")?)?,
        },
        "send-dtmf" => {
            let side = any_side(obj)?;
            let duration_ms = match obj.get("duration_ms") {
                None | Some(Value::Null) => None,
                Some(Value::Number(n)) => match n.as_u64() {
                    Some(ms) => Some(dtmf_duration_ms("duration_ms", ms)?),
                    None => {
                        return Err(wrong(
                            "duration_ms",
                            "a positive integer",
                            &Value::Number(n.clone()),
                        ));
                    }
                },
                Some(other) => return Err(wrong("duration_ms", "a positive integer", other)),
            };
            ControlMessage::SendDtmf {
                digits: Digits::parse("digits", string(obj, "digits")?)?,
                side,
                duration_ms,
            }
        }
        _ => return Ok(None),
    }))
}

/// What a call's mailbox delivers: a command to carry out, or a message
/// to answer with an `error`.
pub type Delivery = Result<ControlMessage, BadControl>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::validate::{Rule, Violation};
    use serde_json::json;

    fn p(v: serde_json::Value) -> Parsed {
        parse(v.to_string().as_bytes())
    }

    fn ok(v: serde_json::Value) -> ControlMessage {
        match p(v.clone()) {
            Parsed::Control(c) => c,
            other => panic!("{v}: {other:?}"),
        }
    }

    fn err(v: serde_json::Value) -> BadControl {
        match p(v.clone()) {
            Parsed::Bad(b) => b,
            other => panic!("{v}: {other:?}"),
        }
    }

    #[test]
    fn verbs_without_fields() {
        for (t, m) in [
            ("hangup", ControlMessage::Hangup),
            ("whisper", ControlMessage::Whisper),
            ("mute", ControlMessage::Mute),
            ("threeway", ControlMessage::Threeway),
            ("unthreeway", ControlMessage::Unthreeway),
            ("stop-record", ControlMessage::StopRecord),
        ] {
            // Unknown extra fields are ignored.
            let msg = ok(json!({"type": t, "extra": 1}));
            assert_eq!(msg, m);
            assert_eq!(msg.event_type(), t);
            assert_eq!(msg.ack(), Event::Ack { event: t.into() });
        }
    }

    #[test]
    fn barge() {
        let msg =
            ok(json!({"type":"barge","phone_number":"+14155550100","caller_id":"15105625882"}));
        assert_eq!(
            msg,
            ControlMessage::Barge {
                phone_number: PhoneNumber::parse("x", "+14155550100").unwrap(),
                caller_id: PhoneNumber::parse("x", "15105625882").unwrap(),
            }
        );
        let b = err(
            json!({"type":"barge","phone_number":"1555,execute_on_answer=system x","caller_id":"1"}),
        );
        assert_eq!(b.event.as_deref(), Some("barge"));
        let ControlError::Invalid(v) = &b.error else {
            panic!("{b:?}")
        };
        assert_eq!(
            (v.field.as_ref(), v.rule),
            ("phone_number", Rule::PhoneNumber)
        );
        assert_eq!(
            err(json!({"type":"barge","phone_number":"1"})).error,
            ControlError::Missing("caller_id")
        );
        assert!(matches!(
            err(json!({"type":"barge","phone_number":15555550100u64,"caller_id":"1"})).error,
            ControlError::WrongType {
                field: "phone_number",
                ..
            }
        ));
    }

    #[test]
    fn play_and_stop_media() {
        let msg = ok(
            json!({"type":"play","media":["hello.wav","tone_stream://%(100,0,941)","silence_stream://250"],"side":"both"}),
        );
        assert_eq!(
            msg,
            ControlMessage::Play {
                media: vec![
                    Media::File("hello.wav".into()),
                    Media::Tone("tone_stream://%(100,0,941)".into()),
                    Media::Silence(250),
                ],
                side: PlaySide::Both,
            }
        );
        assert_eq!(
            ok(json!({"type":"play","media":["a.wav"],"side":1})),
            ControlMessage::Play {
                media: vec![Media::File("a.wav".into())],
                side: PlaySide::One(Side::Callee)
            }
        );
        assert_eq!(
            ok(json!({"type":"stop-media","side":0})),
            ControlMessage::StopMedia {
                side: PlaySide::One(Side::Caller)
            }
        );
        for bad_side in [
            json!(2),
            json!(3),
            json!("1"),
            json!(-1),
            json!(0.5),
            json!(null),
        ] {
            let b = err(json!({"type":"play","media":["a.wav"],"side": bad_side}));
            assert!(
                matches!(b.error, ControlError::WrongType { field: "side", .. }),
                "{b:?}"
            );
        }
        assert_eq!(
            err(json!({"type":"stop-media"})).error,
            ControlError::Missing("side")
        );
        let b = err(json!({"type":"play","media":["ok.wav","../../etc/passwd"],"side":0}));
        let ControlError::Invalid(v) = &b.error else {
            panic!("{b:?}")
        };
        assert_eq!(
            (v.field.as_ref(), &v.violation),
            ("media[1]", &Violation::ParentSegment)
        );
        for media in [
            json!([]),
            json!("a.wav"),
            json!([1]),
            json!(vec!["a.wav"; 65]),
        ] {
            let b = err(json!({"type":"play","media": media,"side":0}));
            assert!(
                matches!(b.error, ControlError::WrongType { field: "media", .. }),
                "{b:?}"
            );
        }
        for bad in [
            "/etc/passwd",
            "a b.wav",
            "${x}",
            "a.wav\napi system x",
            "tone_stream://%(1,2,${x})",
        ] {
            let b = err(json!({"type":"play","media":[bad],"side":0}));
            assert!(matches!(b.error, ControlError::Invalid(_)), "{bad:?}");
        }
    }

    #[test]
    fn record() {
        assert_eq!(
            ok(json!({"type":"record","name":"call-1"})),
            ControlMessage::Record {
                name: RecordingName::parse("n", "call-1").unwrap()
            }
        );
        for bad in ["../x", "/tmp/x", "a.wav", "", "a b"] {
            assert!(matches!(
                err(json!({"type":"record","name":bad})).error,
                ControlError::Invalid(_)
            ));
        }
    }

    #[test]
    fn send_dtmf() {
        assert_eq!(
            ok(json!({"type":"send-dtmf","digits":"12#A","side":1})),
            ControlMessage::SendDtmf {
                digits: Digits::parse("d", "12#A").unwrap(),
                side: Side::Callee,
                duration_ms: None
            }
        );
        assert_eq!(
            ok(json!({"type":"send-dtmf","digits":"5","side":2,"duration_ms":250})),
            ControlMessage::SendDtmf {
                digits: Digits::parse("d", "5").unwrap(),
                side: Side::Barger,
                duration_ms: Some(250)
            }
        );
        assert!(matches!(
            ok(json!({"type":"send-dtmf","digits":"5","side":0,"duration_ms":null})),
            ControlMessage::SendDtmf {
                duration_ms: None,
                ..
            }
        ));
        for bad in [json!(0), json!(10001), json!(-5)] {
            let b = err(json!({"type":"send-dtmf","digits":"1","side":0,"duration_ms":bad}));
            assert!(
                matches!(
                    b.error,
                    ControlError::Invalid(_)
                        | ControlError::WrongType {
                            field: "duration_ms",
                            ..
                        }
                ),
                "{b:?}"
            );
        }
        for bad in [json!(1.5), json!("100")] {
            let b = err(json!({"type":"send-dtmf","digits":"1","side":0,"duration_ms":bad}));
            assert!(
                matches!(
                    b.error,
                    ControlError::WrongType {
                        field: "duration_ms",
                        ..
                    }
                ),
                "{b:?}"
            );
        }
        for bad in ["1 2", "E", "", "1\n", "١"] {
            assert!(matches!(
                err(json!({"type":"send-dtmf","digits":bad,"side":0})).error,
                ControlError::Invalid(_)
            ));
        }
        assert!(matches!(
            err(json!({"type":"send-dtmf","digits":"1","side":"both"})).error,
            ControlError::WrongType { field: "side", .. }
        ));
    }

    #[test]
    fn hostile_shapes_are_refused_without_harm() {
        // Deep nesting stops at serde_json's recursion limit, not the stack.
        let deep = format!("{}{}", "[".repeat(30_000), "]".repeat(30_000));
        assert!(matches!(
            parse(deep.as_bytes()),
            Parsed::Bad(BadControl {
                error: ControlError::NotJson(_),
                ..
            })
        ));
        // A valid hangup padded to just under the limit still parses.
        let mut padded = br#"{"type":"hangup","pad":""#.to_vec();
        padded.resize(MAX_CONTROL_BYTES - 2, b'x');
        padded.extend_from_slice(br#""}"#);
        assert_eq!(parse(&padded), Parsed::Control(ControlMessage::Hangup));
        // Duplicate keys: serde_json keeps the last, so the type is checked
        // as sent last.
        let Parsed::Bad(b) = parse(br#"{"type":"hangup","type":"nuke"}"#) else {
            panic!("a duplicate type is taken as sent last")
        };
        assert_eq!(
            (b.event.as_deref(), b.error),
            (Some("nuke"), ControlError::Unknown)
        );
    }

    #[test]
    fn own_events_are_ignored() {
        for t in EVENT_TYPES {
            assert_eq!(p(json!({"type": t, "side": 0})), Parsed::Ignored(t));
        }
    }

    #[test]
    fn non_json_has_no_event_and_unknown_echoes_the_type() {
        for raw in [&b"hangup"[..], b"{\"type\":\"hangup\",}", b"", b"\xff"] {
            let Parsed::Bad(b) = parse(raw) else { panic!() };
            assert_eq!(b.event, None);
            assert!(matches!(b.error, ControlError::NotJson(_)));
            assert_eq!(serde_json::to_value(b.to_event()).unwrap()["type"], "error");
        }
        assert_eq!(err(json!(["hangup"])).error, ControlError::NotObject);
        assert_eq!(err(json!({"kind":"hangup"})).error, ControlError::NoType);
        assert_eq!(err(json!({"type":7})).error, ControlError::NoType);
        let b = err(json!({"type":"reboot"}));
        assert_eq!(
            (b.event.as_deref(), &b.error),
            (Some("reboot"), &ControlError::Unknown)
        );
        assert_eq!(
            b.to_event(),
            Event::Error {
                event: Some("reboot".into()),
                reason: "unknown control type".into()
            }
        );
        let long = "x".repeat(1000);
        assert_eq!(
            err(json!({"type": long})).event.unwrap().len(),
            MAX_ECHOED_TYPE
        );
        let big = vec![b' '; MAX_CONTROL_BYTES + 1];
        assert!(matches!(
            parse(&big),
            Parsed::Bad(BadControl {
                error: ControlError::TooLarge(_),
                ..
            })
        ));
    }
}
