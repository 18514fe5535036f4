//! The messages Redswitch publishes and the Redis state kept with
//! them (docs/PROTOCOL.md, events and keys).
//!
//! For one call, [`CallEvents`] writes each event through the agent's
//! [`Outbox`] (in order with everything else, surviving Redis outages):
//!
//! | key | type | what | expiry |
//! |---|---|---|---|
//! | channel `<dial_id>` | pub/sub | `PUBLISH` of the event JSON | — |
//! | `redswitch_history.<org_id>.<user_id>` | list | `RPUSH` of the same JSON; deleted by [`CallEvents::start_call`] | 4 h, re-set on each write |
//! | `redswitch.<dial_id>.<org_id>.<user_id>` | list | `ACTIVE.<side>` pushed on `answer-event`, `LREM`-ed on `hangup-event` | 24 h, re-set on each write |
//! | `{redswitch_history.<org_id>.<user_id>}.call.<token>` | hash | the call's last sequence number `seq`, `started`, and per side `s<n>` = `a` (answered) or `h` (its `hangup-event` is written) | the claim's TTL while the call is live, 10 min once it ended |
//!
//! Each event is two commands, each on one hash slot (so this works on a
//! cluster too, where the history and active keys sit in different slots):
//! first the active-list change (so a controller reacting to the event
//! already sees the state it describes), then one Lua script that appends
//! the event to the history, updates the call state and publishes it.
//! Both are idempotent: the script does nothing for a sequence number the
//! call has already written (a retry after a lost reply), and an
//! `ACTIVE.<side>` item is pushed only when absent. The call state is what
//! another instance reads to close the call out should this one die (see
//! [`super::claims`]).

use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::job::AspCallJob;
use super::outbox::{Outbox, OutboxError, Written};
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
    /// The outbox is full (Redis away for long): the event was dropped.
    #[error(transparent)]
    Dropped(#[from] OutboxError),
    /// Redis refused the event's commands (not an outage).
    #[error("Redis refused the event's commands")]
    Refused,
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

/// The call-state hash kept next to the history (same hash slot, so the
/// event script updates both atomically): `{<history>}.call.<token>`.
pub fn call_state_key(history: &str, token: &str) -> String {
    format!("{{{history}}}.call.{token}")
}

/// How long a call's state hash lives after its last write while the call
/// is live; set per call from the claim TTL (the longest a call may last).
pub const DEFAULT_STATE_TTL_SECS: i64 = 5 * 3600;
/// How long it lives once the call has ended (late control answers may
/// still be written).
pub const ENDED_STATE_TTL_SECS: i64 = 600;

/// The event script. Appends the event to the history and publishes it
/// only when its sequence number is newer than the call's last one, so a
/// retry after a lost reply changes nothing. On a standalone Redis it also
/// makes the event's active-list change (a third key), so the whole event
/// is one atomic round trip; on a cluster that change is
/// [`ACTIVE_SCRIPT`], sent first.
///
/// KEYS: history, call state[, active list]. ARGV: seq, json, reset (`1`
/// deletes the history first), history TTL, state TTL, channel, state
/// field (or ``), its value[, `add`/`rem`/``, item, active TTL].
const EVENT_SCRIPT: &str = r"
local last = tonumber(redis.call('HGET', KEYS[2], 'seq') or '0')
if tonumber(ARGV[1]) <= last then return 0 end
if KEYS[3] and ARGV[9] ~= '' then
  if ARGV[9] == 'add' then
    if not redis.call('LPOS', KEYS[3], ARGV[10]) then redis.call('RPUSH', KEYS[3], ARGV[10]) end
  else
    redis.call('LREM', KEYS[3], 0, ARGV[10])
  end
  if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('EXPIRE', KEYS[3], ARGV[11]) end
end
if ARGV[3] == '1' then redis.call('DEL', KEYS[1]) end
redis.call('RPUSH', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('HSET', KEYS[2], 'seq', ARGV[1])
if ARGV[7] ~= '' then redis.call('HSET', KEYS[2], ARGV[7], ARGV[8]) end
redis.call('EXPIRE', KEYS[2], ARGV[5])
redis.call('PUBLISH', ARGV[6], ARGV[2])
return 1
";

/// The active-list script: `add` pushes the item only when absent, `rem`
/// removes it; either re-sets the expiry while the list exists.
///
/// KEYS: active list. ARGV: `add`/`rem`, item, TTL.
const ACTIVE_SCRIPT: &str = r"
if ARGV[1] == 'add' then
  if not redis.call('LPOS', KEYS[1], ARGV[2]) then redis.call('RPUSH', KEYS[1], ARGV[2]) end
else
  redis.call('LREM', KEYS[1], 0, ARGV[2])
end
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
return 1
";

/// An `EVAL` of `script` with `keys` and `args`.
pub(crate) fn eval(script: &str, keys: &[&str], args: &[&str]) -> redis::Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(script).arg(keys.len());
    for k in keys {
        cmd.arg(*k);
    }
    for a in args {
        cmd.arg(*a);
    }
    cmd
}

/// An event with its place in the call's sequence, to be written (perhaps
/// more than once) with [`CallEvents::write`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumberedEvent {
    seq: u64,
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
    /// This call's token (unique per call, also when a `dial_id` is
    /// reused): names its state hash.
    token: String,
    state: String,
    /// The last sequence number given out.
    seq: std::sync::atomic::AtomicU64,
    /// The state hash's TTL in seconds (shortened once the call ended).
    state_ttl: std::sync::atomic::AtomicI64,
    /// Where the legs of the call are recorded, for a call that holds a
    /// claim.
    record: Option<super::claims::CallRecord>,
    /// Held while a sequence number is taken and its entry queued, so the
    /// outbox order and the sequence agree when several tasks publish.
    order: std::sync::Mutex<()>,
}

/// Publishes the events of one call and keeps its Redis state, through an
/// [`Outbox`]. Clones share the keys, the sequence and the outbox, so the
/// tasks of both legs can hold one.
#[derive(Clone)]
pub struct CallEvents {
    outbox: Outbox,
    keys: Arc<CallKeys>,
}

impl std::fmt::Debug for CallEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallEvents")
            .field("dial_id", &self.keys.dial_id)
            .field("history", &self.keys.history)
            .field("active", &self.keys.active)
            .field("token", &self.keys.token)
            .finish()
    }
}

impl CallEvents {
    /// Events for the call `dial_id` of `user_id` in `org_id`, written
    /// through `outbox` (a [`RedisConn`](super::store::RedisConn) gets an
    /// outbox of its own).
    pub fn new(outbox: impl Into<Outbox>, dial_id: &Id, org_id: &Id, user_id: &Id) -> Self {
        let token = uuid::Uuid::new_v4().simple().to_string();
        Self::resume(outbox.into(), dial_id, org_id, user_id, token, 0, None)
    }

    /// Events for the call of `job`.
    pub fn for_job(outbox: impl Into<Outbox>, job: &AspCallJob) -> Self {
        Self::new(outbox, &job.dial_id, &job.org_id, &job.user_id)
    }

    /// Events of a call whose `token` is known and whose last written
    /// sequence number is `seq`: a claimed call (with `record`), or a dead
    /// instance's call being closed out.
    pub(crate) fn resume(
        outbox: Outbox,
        dial_id: &Id,
        org_id: &Id,
        user_id: &Id,
        token: String,
        seq: u64,
        record: Option<super::claims::CallRecord>,
    ) -> Self {
        let history = history_key(org_id, user_id);
        Self {
            outbox,
            keys: Arc::new(CallKeys {
                dial_id: dial_id.clone(),
                active: active_key(dial_id, org_id, user_id),
                state: call_state_key(&history, &token),
                history,
                token,
                seq: std::sync::atomic::AtomicU64::new(seq),
                state_ttl: std::sync::atomic::AtomicI64::new(DEFAULT_STATE_TTL_SECS),
                record,
                order: std::sync::Mutex::new(()),
            }),
        }
    }

    /// Sets how long the call's state hash lives while the call is live.
    pub(crate) fn set_state_ttl(&self, ttl: std::time::Duration) {
        let secs = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX).max(1);
        self.keys
            .state_ttl
            .store(secs, std::sync::atomic::Ordering::Relaxed);
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

    /// The call's state hash (sequence number, which sides ended).
    pub fn state_key(&self) -> &str {
        &self.keys.state
    }

    /// The outbox the events go through.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// FreeSWITCH accepted the originate of `side`'s leg `uuid`: recorded
    /// with the call's claim (if it holds one), so that the call can be
    /// ended by another instance should this one die.
    pub fn leg_dialled(&self, side: Side, uuid: &str) {
        if let Some(record) = &self.keys.record {
            record.leg_dialled(&self.outbox, side, uuid);
        }
    }

    /// The call has started: deletes the user's history, then publishes
    /// `call-start` and makes it the history's first entry.
    pub async fn start_call(&self) -> Result<(), EventsError> {
        let event = Event::CallStart {
            dial_id: self.keys.dial_id.to_string(),
        };
        self.write_event(event, true).await
    }

    /// Publishes `event`, appends it to the history and updates the
    /// active-call list for answers and hangups, through the outbox: in
    /// order with everything else the agent writes. Returns once written,
    /// or at once while Redis is away (the outbox then holds the event).
    pub async fn publish(&self, event: &Event) -> Result<(), EventsError> {
        self.write_event(event.clone(), false).await
    }

    /// The commands of one event: on a standalone Redis one script; on a
    /// cluster the active-list change first (so a controller reacting to
    /// the event already sees it), then history, call state and publish in
    /// one script. Each is idempotent and on one hash slot.
    fn commands(&self, numbered: &NumberedEvent) -> Vec<redis::Cmd> {
        use std::sync::atomic::Ordering::Relaxed;
        let NumberedEvent {
            seq,
            event,
            reset_history,
        } = numbered;
        let json = event.to_json();
        let keys = &self.keys;
        let active_ttl = ACTIVE_TTL_SECS.to_string();
        let (active, mark) = match event {
            Event::CallStart { .. } => (None, Some(("started".to_owned(), "1"))),
            Event::Answer { side } => (Some(("add", *side)), Some((side_field(*side), "a"))),
            Event::Hangup { side, .. } => (Some(("rem", *side)), Some((side_field(*side), "h"))),
            _ => (None, None),
        };
        let seq = seq.to_string();
        let (field, value) = mark.unwrap_or((String::new(), ""));
        let (op, item) = active.map_or(("", String::new()), |(op, side)| (op, active_item(side)));
        let mut args = vec![
            seq.as_str(),
            &json,
            if *reset_history { "1" } else { "0" },
            "",
            "",
            keys.dial_id.as_str(),
            &field,
            value,
        ];
        let (history_ttl, state_ttl) = (
            HISTORY_TTL_SECS.to_string(),
            keys.state_ttl.load(Relaxed).to_string(),
        );
        args[3] = &history_ttl;
        args[4] = &state_ttl;
        if !self.outbox.is_cluster() {
            args.extend([op, &item, &active_ttl]);
            return vec![eval(
                EVENT_SCRIPT,
                &[&keys.history, &keys.state, &keys.active],
                &args,
            )];
        }
        let mut cmds = Vec::with_capacity(2);
        if !op.is_empty() {
            cmds.push(eval(
                ACTIVE_SCRIPT,
                &[&keys.active],
                &[op, &item, &active_ttl],
            ));
        }
        cmds.push(eval(EVENT_SCRIPT, &[&keys.history, &keys.state], &args));
        cmds
    }

    async fn write_event(&self, event: Event, reset_history: bool) -> Result<(), EventsError> {
        // The number is taken under the push, so the outbox order and the
        // sequence agree even when both legs' tasks publish.
        let receipt = {
            let _order = self.keys.order.lock().unwrap_or_else(|p| p.into_inner());
            let mut numbered = self.numbered(event);
            numbered.reset_history = reset_history;
            self.outbox
                .push(numbered.event.event_type(), self.commands(&numbered))?
        };
        Self::outcome(receipt).await
    }

    /// Gives `event` the call's next sequence number, for a caller that
    /// keeps it to [`write`](Self::write) (again) later. A call's numbered
    /// events must be written in the order they were numbered: a number
    /// lower than one already written is taken for a repeat.
    pub fn numbered(&self, event: Event) -> NumberedEvent {
        NumberedEvent {
            seq: self
                .keys
                .seq
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                + 1,
            event,
            reset_history: false,
        }
    }

    /// Writes a numbered event through the outbox; idempotent (a second
    /// write of it changes nothing).
    pub async fn write(&self, numbered: &NumberedEvent) -> Result<(), EventsError> {
        let receipt = self
            .outbox
            .push(numbered.event.event_type(), self.commands(numbered))?;
        Self::outcome(receipt).await
    }

    async fn outcome(receipt: super::outbox::Receipt) -> Result<(), EventsError> {
        match receipt.written().await {
            Written::Done | Written::Queued => Ok(()),
            Written::Refused => Err(EventsError::Refused),
        }
    }

    /// The call ended: its state hash is kept only a short while (its
    /// expiry shortened to ten minutes) for late answers.
    pub(crate) fn ended(&self) {
        self.set_state_ttl(std::time::Duration::from_secs(ENDED_STATE_TTL_SECS as u64));
    }
}

/// The call-state field for `side`: `s0`, `s1`, `s2` (`a` answered, `h`
/// its `hangup-event` is written).
pub fn side_field(side: Side) -> String {
    format!("s{}", side.number())
}

/// The `PUBLISH` of `event` on `dial_id` only, without history: for a bad
/// job, whose `org_id`/`user_id` cannot be trusted to build key names.
pub fn publish_only_cmd(dial_id: &Id, event: &Event) -> redis::Cmd {
    let mut cmd = redis::cmd("PUBLISH");
    cmd.arg(dial_id.as_str()).arg(event.to_json());
    cmd
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
