//! The messages Redswitch publishes and the Redis state kept with
//! them (docs/PROTOCOL.md, events and keys).
//!
//! For one call, [`CallEvents`] writes each event in one round trip:
//!
//! | key | type | what | expiry |
//! |---|---|---|---|
//! | channel `<dial_id>` | pub/sub | `PUBLISH` of the event JSON | — |
//! | `redswitch_history.<org_id>.<user_id>` | list | `RPUSH` of the same JSON; deleted by [`CallEvents::start_call`] | 4 h, re-set on each write |
//! | `redswitch.<dial_id>.<org_id>.<user_id>` | list | `ACTIVE.<side>` pushed on `answer-event` (once), `LREM`-ed on `hangup-event` | 24 h, re-set on each write |
//! | `{redswitch_history.<org_id>.<user_id>}.sent.<dial_id>` | set | the ids (`<writer>:<sequence>`) of the call's events already written | 4 h, re-set on each write |
//!
//! The state keys are written before the `PUBLISH`, so a controller
//! reacting to an event already sees the state it describes. On a
//! standalone Redis all of an event's writes are one Lua script: one round
//! trip, atomic, and history order equals publish order even with several
//! writers. On a cluster the two keys live in different slots (their names
//! are fixed by the protocol, so no hash tag can join them) and no script may
//! span slots: the active-list writes go first as their own script, then
//! the history and the `PUBLISH` as another — two round trips.
//!
//! # Idempotency
//!
//! A `PUBLISH` or an `RPUSH` to the history run twice is a duplicate, so an
//! event write whose connection broke could not simply be sent again. Each
//! event gets an id: a random id of its [`CallEvents`] (a later call may
//! reuse the `dial_id`) and a sequence number. The script that appends to
//! the history and publishes first adds that id to the call's `sent` set
//! (in the history's slot) and does nothing if it was there. The
//! active-list writes are idempotent by themselves (`LREM` before the
//! `RPUSH`). So [`CallEvents::publish`] is idempotent and is retried on a
//! fresh connection after a broken one (see [`retry`](super::retry)).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use redis::aio::ConnectionLike;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::job::AspCallJob;
use super::retry::{Idempotency, with_retry};
use super::store::RedisConn;
use super::validate::Id;

/// History lists live this long after their last write.
pub const HISTORY_TTL_SECS: i64 = 4 * 3600;
/// Active-call lists live this long after their last write.
pub const ACTIVE_TTL_SECS: i64 = 24 * 3600;

/// A party of the call, published as a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Side {
    /// 0: the user's own phone, rung first.
    Caller,
    /// 1: the party the user wants.
    Callee,
    /// 2: a barger listening in.
    Barger,
}

impl Side {
    /// The number the wire format uses.
    pub fn number(self) -> u8 {
        match self {
            Side::Caller => 0,
            Side::Callee => 1,
            Side::Barger => 2,
        }
    }

    /// The side for a wire number.
    pub fn from_number(n: u64) -> Option<Self> {
        match n {
            0 => Some(Side::Caller),
            1 => Some(Side::Callee),
            2 => Some(Side::Barger),
            _ => None,
        }
    }
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.number())
    }
}

impl Serialize for Side {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(self.number())
    }
}

impl<'de> Deserialize<'de> for Side {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = u64::deserialize(d)?;
        Side::from_number(n)
            .ok_or_else(|| serde::de::Error::custom(format!("side {n} is not 0, 1 or 2")))
    }
}

/// Why a `play` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaDoneReason {
    /// Every item was played.
    Done,
    /// A `stop-media` (or a new `play`) interrupted it.
    Stopped,
    /// FreeSWITCH could not play it (missing file …).
    Failed,
    /// The side hung up during playback.
    Hangup,
}

/// Why a recording ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordDoneReason {
    /// It reached its limit (length or silence).
    Done,
    /// A `stop-record` ended it.
    Stopped,
    /// FreeSWITCH could not record.
    Failed,
    /// The call ended.
    Hangup,
}

/// A message Redswitch publishes on the call's channel, with the
/// exact wire names: `{"type":"answer-event","side":0}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Event {
    /// FreeSWITCH has created the first leg of the job.
    #[serde(rename = "call-start")]
    CallStart {
        /// The job's `dial_id`.
        dial_id: String,
    },
    /// That side's phone answered.
    #[serde(rename = "answer-event")]
    Answer {
        /// Who answered.
        side: Side,
    },
    /// That side hung up.
    #[serde(rename = "hangup-event")]
    Hangup {
        /// Who hung up.
        side: Side,
        /// FreeSWITCH's Hangup-Cause (`NORMAL_CLEARING`, `USER_BUSY` …).
        cause: String,
    },
    /// The call will not even be attempted.
    #[serde(rename = "failure")]
    Failure {
        /// Why.
        cause: String,
    },
    /// A control message was carried out.
    #[serde(rename = "ack")]
    Ack {
        /// The control message's `type`.
        event: String,
    },
    /// A control message could not be carried out.
    #[serde(rename = "error")]
    Error {
        /// The control message's `type`; absent when it had none (non-JSON).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event: Option<String>,
        /// Why.
        reason: String,
    },
    /// DTMF received from a side.
    #[serde(rename = "dtmf-event")]
    Dtmf {
        /// Who pressed the keys.
        side: Side,
        /// The digits.
        digits: String,
    },
    /// A `play` ended.
    #[serde(rename = "media-done-event")]
    MediaDone {
        /// Where it played.
        side: Side,
        /// How it ended.
        reason: MediaDoneReason,
    },
    /// A recording ended.
    #[serde(rename = "record-done-event")]
    RecordDone {
        /// The file written.
        path: String,
        /// How it ended.
        reason: RecordDoneReason,
        /// Its length.
        duration_ms: u64,
    },
}

/// Every `type` in [`Event`]; the control router ignores these on a call's
/// channel because they are Redswitch's own messages.
pub const EVENT_TYPES: [&str; 9] = [
    "call-start",
    "answer-event",
    "hangup-event",
    "failure",
    "ack",
    "error",
    "dtmf-event",
    "media-done-event",
    "record-done-event",
];

impl Event {
    /// The wire `type`.
    pub fn event_type(&self) -> &'static str {
        match self {
            Event::CallStart { .. } => "call-start",
            Event::Answer { .. } => "answer-event",
            Event::Hangup { .. } => "hangup-event",
            Event::Failure { .. } => "failure",
            Event::Ack { .. } => "ack",
            Event::Error { .. } => "error",
            Event::Dtmf { .. } => "dtmf-event",
            Event::MediaDone { .. } => "media-done-event",
            Event::RecordDone { .. } => "record-done-event",
        }
    }

    /// The JSON published.
    pub fn to_json(&self) -> String {
        // Serialising these plain structs cannot fail: every field is a
        // string, a number or a unit enum.
        serde_json::to_string(self).unwrap_or_else(|e| {
            format!(r#"{{"type":"error","reason":"serialising event failed: {e}"}}"#)
        })
    }
}

/// Errors writing events.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    /// Redis failed; the event may not have been published.
    #[error("publishing event: {0}")]
    Redis(#[from] redis::RedisError),
}

/// `redswitch_history.<org_id>.<user_id>`.
pub fn history_key(org_id: &Id, user_id: &Id) -> String {
    format!("redswitch_history.{org_id}.{user_id}")
}

/// `redswitch.<dial_id>.<org_id>.<user_id>`.
pub fn active_key(dial_id: &Id, org_id: &Id, user_id: &Id) -> String {
    format!("redswitch.{dial_id}.{org_id}.{user_id}")
}

/// The active-list item for a side: `ACTIVE.<side>`.
pub fn active_item(side: Side) -> String {
    format!("ACTIVE.{}", side.number())
}

/// `{redswitch_history.<org_id>.<user_id>}.sent.<dial_id>`: the call's
/// written event numbers, in the history's cluster slot (the tag is the
/// history key itself, which hashes the same).
pub fn sent_key(dial_id: &Id, org_id: &Id, user_id: &Id) -> String {
    format!("{{{}}}.sent.{dial_id}", history_key(org_id, user_id))
}

/// Appends an event to the history and publishes it, once per event id.
/// KEYS: history, sent set. ARGV: event id, JSON, channel, reset
/// the history first ("1"/"0"), history TTL.
const HISTORY_AND_PUBLISH: &str = r"
if redis.call('SADD', KEYS[2], ARGV[1]) == 0 then
  return 0
end
redis.call('EXPIRE', KEYS[2], ARGV[5])
if ARGV[4] == '1' then
  redis.call('DEL', KEYS[1])
end
redis.call('RPUSH', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('PUBLISH', ARGV[3], ARGV[2])
return 1
";

/// The whole write of one event on a standalone Redis: the active list
/// (KEYS[3]; ARGV[6] "push", "remove" or "", ARGV[7] the item, ARGV[8] its
/// TTL), then [`HISTORY_AND_PUBLISH`].
const ACTIVE_THEN_HISTORY_AND_PUBLISH: &str = r"
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then
  return 0
end
if ARGV[6] ~= '' then
  redis.call('LREM', KEYS[3], 0, ARGV[7])
  if ARGV[6] == 'push' then
    redis.call('RPUSH', KEYS[3], ARGV[7])
  end
  redis.call('EXPIRE', KEYS[3], ARGV[8])
end
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[5])
if ARGV[4] == '1' then
  redis.call('DEL', KEYS[1])
end
redis.call('RPUSH', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('PUBLISH', ARGV[3], ARGV[2])
return 1
";

/// The active-list writes alone (a cluster's first round trip): KEYS[1]
/// the list, ARGV as ARGV[6..8] above. Idempotent by itself.
const ACTIVE: &str = r"
redis.call('LREM', KEYS[1], 0, ARGV[2])
if ARGV[1] == 'push' then
  redis.call('RPUSH', KEYS[1], ARGV[2])
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
";

/// An event with its id within its call, written at most once however
/// often [`CallEvents::write`] is called with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumberedEvent {
    id: String,
    event: Event,
    reset_history: bool,
}

impl NumberedEvent {
    /// The event.
    pub fn event(&self) -> &Event {
        &self.event
    }
}

struct CallKeys {
    dial_id: Id,
    history: String,
    active: String,
    sent: String,
    /// Tells this writer's event ids from those of another call that
    /// reuses the `dial_id`.
    writer: u64,
    /// The next event's sequence number.
    next_seq: AtomicU64,
}

/// Publishes the events of one call and keeps its Redis state. Clones share
/// the keys and the connection, so the tasks of both legs can hold one.
#[derive(Clone)]
pub struct CallEvents {
    conn: RedisConn,
    keys: Arc<CallKeys>,
}

impl std::fmt::Debug for CallEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallEvents")
            .field("dial_id", &self.keys.dial_id)
            .field("history", &self.keys.history)
            .field("active", &self.keys.active)
            .finish()
    }
}

impl CallEvents {
    /// Events for the call `dial_id` of `user_id` in `org_id`.
    pub fn new(conn: RedisConn, dial_id: &Id, org_id: &Id, user_id: &Id) -> Self {
        Self {
            conn,
            keys: Arc::new(CallKeys {
                dial_id: dial_id.clone(),
                history: history_key(org_id, user_id),
                active: active_key(dial_id, org_id, user_id),
                sent: sent_key(dial_id, org_id, user_id),
                writer: rand::random(),
                next_seq: AtomicU64::new(0),
            }),
        }
    }

    /// Events for the call of `job`.
    pub fn for_job(conn: RedisConn, job: &AspCallJob) -> Self {
        Self::new(conn, &job.dial_id, &job.org_id, &job.user_id)
    }

    /// The call's channel (its `dial_id`).
    pub fn dial_id(&self) -> &Id {
        &self.keys.dial_id
    }

    /// The user's history list.
    pub fn history_key(&self) -> &str {
        &self.keys.history
    }

    /// The call's active-call list.
    pub fn active_key(&self) -> &str {
        &self.keys.active
    }

    /// The call has started: deletes the user's history, then publishes
    /// `call-start` and makes it the history's first entry. Idempotent (see
    /// the module doc); retried after a broken connection.
    pub async fn start_call(&self) -> Result<(), EventsError> {
        self.write(&self.call_start()).await
    }

    /// Publishes `event`, appends it to the history and updates the
    /// active-call list for answers and hangups: one round trip. Idempotent
    /// (see the module doc); retried after a broken connection.
    pub async fn publish(&self, event: &Event) -> Result<(), EventsError> {
        self.write(&self.numbered(event.clone())).await
    }

    /// `call-start`, numbered, for [`write`](Self::write).
    pub fn call_start(&self) -> NumberedEvent {
        let mut numbered = self.numbered(Event::CallStart {
            dial_id: self.keys.dial_id.to_string(),
        });
        numbered.reset_history = true;
        numbered
    }

    /// Gives `event` its id, for [`write`](Self::write): a caller that keeps
    /// an event to write again later (after an outage longer than the
    /// retries) keeps it numbered, so a write that went through unseen is
    /// not repeated.
    pub fn numbered(&self, event: Event) -> NumberedEvent {
        let seq = self.keys.next_seq.fetch_add(1, Ordering::Relaxed);
        NumberedEvent {
            id: format!("{:x}:{seq}", self.keys.writer),
            event,
            reset_history: false,
        }
    }

    /// Writes a numbered event: publishes it, appends it to the history and
    /// updates the active-call list, unless it was written before.
    /// Idempotent; retried after a broken connection.
    pub async fn write(&self, numbered: &NumberedEvent) -> Result<(), EventsError> {
        let NumberedEvent {
            id: event_id,
            event,
            reset_history,
        } = numbered;
        let json = event.to_json();
        let keys = &self.keys;
        let (op, item) = match event {
            Event::Answer { side } => ("push", active_item(*side)),
            Event::Hangup { side, .. } => ("remove", active_item(*side)),
            _ => ("", String::new()),
        };
        let reset = if *reset_history { "1" } else { "0" };
        let standalone = !self.conn.is_cluster();
        let written = with_retry(event.event_type(), Idempotency::Idempotent, |_| {
            let mut conn = self.conn.clone();
            let (json, item, event_id) = (&json, &item, &event_id);
            async move {
                let history = |script: &str| {
                    let mut eval = redis::cmd("EVAL");
                    eval.arg(script)
                        .arg(if standalone { 3 } else { 2 })
                        .arg(&keys.history)
                        .arg(&keys.sent);
                    if standalone {
                        eval.arg(&keys.active);
                    }
                    eval.arg(event_id)
                        .arg(json)
                        .arg(keys.dial_id.as_str())
                        .arg(reset)
                        .arg(HISTORY_TTL_SECS);
                    eval
                };
                // EVAL rather than EVALSHA: the scripts are short, and a
                // restarted Redis has an empty script cache.
                if standalone {
                    let mut eval = history(ACTIVE_THEN_HISTORY_AND_PUBLISH);
                    eval.arg(op).arg(item).arg(ACTIVE_TTL_SECS);
                    return eval.query_async::<i64>(&mut conn).await;
                }
                // Cluster: the active list first (its own slot), so a
                // controller reacting to the publish sees the state.
                if !op.is_empty() {
                    redis::cmd("EVAL")
                        .arg(ACTIVE)
                        .arg(1)
                        .arg(&keys.active)
                        .arg(op)
                        .arg(item)
                        .arg(ACTIVE_TTL_SECS)
                        .query_async::<i64>(&mut conn)
                        .await?;
                }
                history(HISTORY_AND_PUBLISH)
                    .query_async::<i64>(&mut conn)
                    .await
            }
        })
        .await?;
        if written == 0 {
            tracing::debug!(dial_id = %keys.dial_id, event = %event_id, "event already written by an attempt whose reply was lost");
        }
        Ok(())
    }
}

/// Publishes `event` on `dial_id` only, without history: for a bad job,
/// whose `org_id`/`user_id` cannot be trusted to build key names. Not
/// idempotent (a second `PUBLISH` is a second message) and not retried
/// here.
pub async fn publish_only<C: ConnectionLike + Send>(
    conn: &mut C,
    dial_id: &Id,
    event: &Event,
) -> Result<(), EventsError> {
    redis::cmd("PUBLISH")
        .arg(dial_id.as_str())
        .arg(event.to_json())
        .query_async::<()>(conn)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn wire(e: &Event) -> serde_json::Value {
        serde_json::from_str(&e.to_json()).unwrap()
    }

    #[test]
    fn wire_format_matches_the_spec() {
        let cases = [
            (
                Event::CallStart {
                    dial_id: "d1".into(),
                },
                json!({"type":"call-start","dial_id":"d1"}),
            ),
            (
                Event::Answer { side: Side::Caller },
                json!({"type":"answer-event","side":0}),
            ),
            (
                Event::Hangup {
                    side: Side::Callee,
                    cause: "USER_BUSY".into(),
                },
                json!({"type":"hangup-event","side":1,"cause":"USER_BUSY"}),
            ),
            (
                Event::Failure {
                    cause: "bad job".into(),
                },
                json!({"type":"failure","cause":"bad job"}),
            ),
            (
                Event::Ack {
                    event: "barge".into(),
                },
                json!({"type":"ack","event":"barge"}),
            ),
            (
                Event::Error {
                    event: Some("whisper".into()),
                    reason: "no barger".into(),
                },
                json!({"type":"error","event":"whisper","reason":"no barger"}),
            ),
            (
                Event::Error {
                    event: None,
                    reason: "not JSON".into(),
                },
                json!({"type":"error","reason":"not JSON"}),
            ),
            (
                Event::Dtmf {
                    side: Side::Barger,
                    digits: "1234#".into(),
                },
                json!({"type":"dtmf-event","side":2,"digits":"1234#"}),
            ),
            (
                Event::MediaDone {
                    side: Side::Callee,
                    reason: MediaDoneReason::Stopped,
                },
                json!({"type":"media-done-event","side":1,"reason":"stopped"}),
            ),
            (
                Event::RecordDone {
                    path: "/rec/a.wav".into(),
                    reason: RecordDoneReason::Done,
                    duration_ms: 1500,
                },
                json!({"type":"record-done-event","path":"/rec/a.wav","reason":"done","duration_ms":1500}),
            ),
        ];
        for (event, expected) in cases {
            assert_eq!(wire(&event), expected);
            assert_eq!(expected["type"], event.event_type());
            assert!(EVENT_TYPES.contains(&event.event_type()));
            // And back: `push --follow` and tests read events.
            let back: Event = serde_json::from_value(expected).unwrap();
            assert_eq!(back, event);
        }
    }

    #[test]
    fn sides_are_numbers_0_to_2() {
        for n in 0..3u64 {
            assert_eq!(u64::from(Side::from_number(n).unwrap().number()), n);
        }
        assert_eq!(Side::from_number(3), None);
        assert!(serde_json::from_str::<Side>("3").is_err());
        assert!(serde_json::from_str::<Side>("\"0\"").is_err());
    }

    #[test]
    fn key_names() {
        let id = |s| Id::parse("t", s).unwrap();
        assert_eq!(history_key(&id("o"), &id("u")), "redswitch_history.o.u");
        assert_eq!(active_key(&id("d"), &id("o"), &id("u")), "redswitch.d.o.u");
        assert_eq!(active_item(Side::Barger), "ACTIVE.2");
    }
}
