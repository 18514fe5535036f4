//! `redswitch push` and `redswitch control`: the tester tools that speak to
//! a running agent through Redis, exactly as a producer or controller would.
//!
//! They open Redis as `serve` does ([`RedisClient::connect`]): one node's
//! URL or a comma-separated list, standalone or cluster (detected), so a job
//! lands in the job list's slot and a control message reaches the agent
//! from any node (cluster pub/sub is broadcast).

use crate::cli::{ControlArgs, PushArgs};
use crate::service::store::{RedisClient, StoreError};
use futures::StreamExt;
use serde_json::{Map, Value, json};
use std::io::Write;
use std::time::Duration;
use std::time::Instant;

/// Why a tool could not do its job.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// Redis could not be opened (bad URL, unreachable, timeout).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Redis answered with an error, or the link broke.
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A `key=value` argument without `=`.
    #[error("field {0:?} is not key=value")]
    BadField(String),
    /// No ack or error arrived in time.
    #[error(
        "no ack or error for {kind:?} on {dial_id:?} within {secs} s (is an agent running and is the call up?)"
    )]
    NoAnswer {
        /// The channel.
        dial_id: String,
        /// The control type.
        kind: String,
        /// How long we waited.
        secs: u64,
    },
    /// The agent answered with `error`.
    #[error("the agent refused {event:?}: {reason}")]
    Refused {
        /// The control type.
        event: String,
        /// Its reason.
        reason: String,
    },
    /// With --follow, the call did not end in time.
    #[error("the call did not end within {0} s")]
    FollowTimeout(u64),
    /// Writing to stdout failed.
    #[error("stdout: {0}")]
    Io(#[from] std::io::Error),
}

/// Builds the asp-call job of `push`.
pub fn job_json(args: &PushArgs, dial_id: &str) -> Value {
    json!({
        "type": "asp-call",
        "call_provider": args.call_provider,
        "callee_number": args.callee_number,
        "caller_id_lega": args.caller_id_lega.as_deref().unwrap_or(&args.callee_number),
        "caller_id_legb": args.caller_id_legb.as_deref().unwrap_or(&args.caller_number),
        "caller_number": args.caller_number,
        "dial_id": dial_id,
        "org_id": args.org_id,
        "user_id": args.user_id,
    })
}

/// `redswitch push`: RPUSH a job; with `--follow`, print the call's events
/// (subscribed before the push, so none is missed) until it is over.
pub async fn push(
    url: &str,
    wait: Duration,
    jobs_key: &str,
    args: &PushArgs,
) -> Result<(), ToolError> {
    let client = RedisClient::connect(url, wait).await?;
    let dial_id = args
        .dial_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let job = job_json(args, &dial_id).to_string();
    let mut pubsub = client.pubsub().await?;
    if args.follow {
        pubsub.subscribe(&dial_id).await?;
    }
    let mut con = client.connection().await?;
    let _: () = redis::cmd("RPUSH")
        .arg(jobs_key)
        .arg(&job)
        .query_async(&mut con)
        .await?;
    eprintln!("pushed job {dial_id} onto {jobs_key}");
    if !args.follow {
        println!("{job}");
        return Ok(());
    }
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let mut tracker = CallTracker::default();
    let mut messages = pubsub.on_message();
    let mut out = std::io::stdout();
    loop {
        // After the caller's hangup, wait briefly for the other sides' own
        // hangup-events, then stop.
        let until = tracker.grace_over().map_or(deadline, |t| t.min(deadline));
        let msg = match tokio::time::timeout_at(until.into(), messages.next()).await {
            Ok(Some(msg)) => msg,
            Ok(None) => {
                return Err(ToolError::Redis(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "pub/sub connection closed",
                ))));
            }
            Err(_) if tracker.ended_at.is_some() => return Ok(()),
            Err(_) => return Err(ToolError::FollowTimeout(args.timeout)),
        };
        let payload: String = msg.get_payload()?;
        writeln!(out, "{payload}")?;
        out.flush()?;
        if tracker.observe(&payload) {
            return Ok(());
        }
    }
}

/// Decides, from the events of one call, when a follower (`push
/// --follow`, the demo) is done.
#[derive(Debug, Default)]
pub struct CallTracker {
    hung_up: [bool; 3],
    /// Sides that answered.
    pub answered: [bool; 3],
    /// When the caller hung up.
    pub ended_at: Option<Instant>,
}

impl CallTracker {
    /// When to stop waiting for the other sides' hangup-events.
    pub fn grace_over(&self) -> Option<Instant> {
        self.ended_at.map(|t| t + Duration::from_secs(2))
    }

    /// Returns true when nothing more will come.
    pub fn observe(&mut self, payload: &str) -> bool {
        let Ok(v) = serde_json::from_str::<Value>(payload) else {
            return false;
        };
        let side = v.get("side").and_then(Value::as_u64).unwrap_or(0).min(2) as usize;
        match v.get("type").and_then(Value::as_str) {
            Some("failure") => true,
            Some("answer-event") => {
                self.answered[side] = true;
                false
            }
            Some("hangup-event") => {
                self.hung_up[side] = true;
                if self.hung_up[0] && self.ended_at.is_none() {
                    self.ended_at = Some(Instant::now());
                }
                // Both parties of the call reported: done at once.
                self.hung_up[0] && self.hung_up[1] && (!self.answered[2] || self.hung_up[2])
            }
            _ => false,
        }
    }
}

/// Parses `key=value` fields: JSON arrays and objects stay JSON, `side`
/// and `duration_ms` numbers become numbers, everything else is a string
/// (phone numbers must stay strings).
pub fn control_json(kind: &str, fields: &[String]) -> Result<Value, ToolError> {
    let mut map = Map::new();
    map.insert("type".into(), Value::String(kind.to_owned()));
    for field in fields {
        let (k, v) = field
            .split_once('=')
            .ok_or_else(|| ToolError::BadField(field.clone()))?;
        let value = match serde_json::from_str::<Value>(v) {
            Ok(j @ (Value::Array(_) | Value::Object(_))) => j,
            Ok(Value::Number(n)) if k == "side" || k == "duration_ms" => Value::Number(n),
            _ => Value::String(v.to_owned()),
        };
        map.insert(k.to_owned(), value);
    }
    Ok(Value::Object(map))
}

/// `redswitch control`: publish, then wait for the matching ack or error.
pub async fn control(url: &str, wait: Duration, args: &ControlArgs) -> Result<(), ToolError> {
    let message = control_json(&args.kind, &args.fields)?.to_string();
    let client = RedisClient::connect(url, wait).await?;
    let mut pubsub = client.pubsub().await?;
    pubsub.subscribe(&args.dial_id).await?;
    let mut con = client.connection().await?;
    let receivers: i64 = redis::cmd("PUBLISH")
        .arg(&args.dial_id)
        .arg(&message)
        .query_async(&mut con)
        .await?;
    eprintln!(
        "published {message} to {} ({receivers} subscribers)",
        args.dial_id
    );
    let no_answer = || ToolError::NoAnswer {
        dial_id: args.dial_id.clone(),
        kind: args.kind.clone(),
        secs: args.timeout,
    };
    let mut messages = pubsub.on_message();
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    loop {
        let msg = tokio::time::timeout_at(deadline.into(), messages.next())
            .await
            .map_err(|_| no_answer())?
            .ok_or_else(no_answer)?;
        let payload: String = msg.get_payload()?;
        let Ok(v) = serde_json::from_str::<Value>(&payload) else {
            continue;
        };
        let event = v.get("event").and_then(Value::as_str);
        match v.get("type").and_then(Value::as_str) {
            Some("ack") if event == Some(&args.kind) => {
                println!("{payload}");
                return Ok(());
            }
            Some("error") if event.is_none() || event == Some(&args.kind) => {
                println!("{payload}");
                return Err(ToolError::Refused {
                    event: args.kind.clone(),
                    reason: v
                        .get("reason")
                        .and_then(Value::as_str)
                        .unwrap_or("no reason given")
                        .to_owned(),
                });
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_fields_keep_numbers_as_strings_except_side() {
        let v = control_json(
            "barge",
            &["phone_number=15105625882".into(), "caller_id=777".into()],
        )
        .unwrap();
        assert_eq!(
            v,
            json!({"type":"barge","phone_number":"15105625882","caller_id":"777"})
        );
        let v = control_json("play", &["media=[\"a.wav\"]".into(), "side=1".into()]).unwrap();
        assert_eq!(v, json!({"type":"play","media":["a.wav"],"side":1}));
        let v = control_json("play", &["side=both".into()]).unwrap();
        assert_eq!(v["side"], "both");
        assert!(control_json("x", &["novalue".into()]).is_err());
    }

    #[test]
    fn follow_ends_when_both_parties_hung_up_or_on_failure() {
        let mut t = CallTracker::default();
        assert!(!t.observe(r#"{"type":"call-start","dial_id":"d"}"#));
        assert!(!t.observe(r#"{"type":"hangup-event","side":0,"cause":"NORMAL_CLEARING"}"#));
        assert!(t.ended_at.is_some());
        assert!(t.observe(r#"{"type":"hangup-event","side":1,"cause":"NORMAL_CLEARING"}"#));
        let mut t = CallTracker::default();
        assert!(t.observe(r#"{"type":"failure","cause":"bad job"}"#));
    }
}
