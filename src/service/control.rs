//! Call control (docs/PROTOCOL.md): the messages controllers publish on a call's
//! channel, and the router that delivers them to the call that owns it.
//!
//! [`parse`] turns a raw message into a typed [`ControlMessage`] whose values
//! all passed [`validate`](super::validate); Redswitch's own event types
//! (the event types), which share the channel, come out as [`Parsed::Ignored`].
//! Anything else is a [`BadControl`] that becomes an `error` event.
//!
//! [`ControlRouter`] owns **one** pub/sub connection per instance, never
//! one per call. [`ControlRouter::subscribe`] gives a call a bounded mailbox
//! ([`Subscription`]) for its `dial_id`; dropping it unsubscribes. After the
//! connection is lost, the router reconnects with backoff and subscribes
//! every live `dial_id` again. Messages published while it was away are
//! lost: Redis pub/sub is at most once, and controllers resend when no
//! `ack`/`error` arrives.
//!
//! One `dial_id` has at most one live call per instance: a second
//! [`ControlRouter::subscribe`] for it fails with [`RouterError::InUse`]
//! until the first is dropped. An ended call may [`Subscription::linger`] a
//! few seconds answering late control messages with an `error` ("call has
//! ended"), so a resent `hangup` is answered; a new call with the same
//! `dial_id` takes the channel over from a lingering one at once.
//!
//! A call that does not read its mailbox fast enough does not block the
//! router or other calls: when its mailbox is full, each further message is
//! parked as a "mailbox full" [`BadControl`] on a small side list the call
//! reads next, so it still answers every message with exactly one `error`.
//! Past that list's cap, messages are dropped with a log line.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::events::{EVENT_TYPES, Event, Side};
use super::job::json_kind;
use super::store::RedisClient;
use super::validate::{
    Digits, Id, Media, PhoneNumber, RecordingName, ValidationError, dtmf_duration_ms,
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

/// What a call's mailbox delivers.
pub type Delivery = Result<ControlMessage, BadControl>;

/// Errors subscribing.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// A live call already owns this `dial_id` on this instance.
    #[error("dial_id {0} is already in use by a live call")]
    InUse(Id),
    /// The router task has ended (shut down).
    #[error("control router has stopped")]
    Stopped,
}

/// How the router behaves.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// Messages one call may have waiting.
    pub mailbox: usize,
    /// Messages parked as "mailbox full" errors per call, beyond the mailbox.
    pub overflow: usize,
    /// First wait before reconnecting; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    /// Longest wait between reconnect attempts.
    pub max_backoff: Duration,
    /// How often the idle connection is pinged to notice a dead peer.
    pub ping_every: Duration,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            mailbox: 32,
            overflow: 256,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            ping_every: Duration::from_secs(15),
        }
    }
}

type Overflow = Arc<Mutex<VecDeque<BadControl>>>;

struct Slot {
    id: u64,
    tx: mpsc::Sender<Delivery>,
    overflow: Overflow,
    /// The call has ended and only answers "call has ended" errors: a new
    /// call with this dial_id takes the slot over.
    lingering: bool,
}

enum Cmd {
    Subscribe(String, oneshot::Sender<()>),
    Unsubscribe(String),
}

struct Shared {
    config: RouterConfig,
    /// Live subscriptions by `dial_id`. A std mutex: held only for map
    /// operations, never across an await.
    slots: Mutex<HashMap<String, Slot>>,
    /// To the router task. Unbounded because `Drop` cannot wait; it holds
    /// at most one subscribe and one unsubscribe per call.
    cmds: mpsc::UnboundedSender<Cmd>,
    next_id: AtomicU64,
    /// Successful (re)connections, for tests and metrics.
    connects: AtomicU64,
}

impl Shared {
    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        // A poisoned map is still a consistent map: every operation on it is
        // a single insert/remove/lookup.
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Routes control messages from one pub/sub connection to call mailboxes.
#[derive(Clone)]
pub struct ControlRouter {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ControlRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlRouter")
            .field("calls", &self.shared.slots().len())
            .finish()
    }
}

impl ControlRouter {
    /// Starts the router task; it runs until `cancel` fires or every handle
    /// and subscription is gone.
    pub fn spawn(
        client: RedisClient,
        config: RouterConfig,
        cancel: CancellationToken,
    ) -> (Self, JoinHandle<()>) {
        let (cmds, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            config,
            slots: Mutex::new(HashMap::new()),
            cmds,
            next_id: AtomicU64::new(0),
            connects: AtomicU64::new(0),
        });
        let task = tokio::spawn(run(Arc::downgrade(&shared), client, rx, cancel));
        (Self { shared }, task)
    }

    /// Gives the call `dial_id` its mailbox. Returns once Redis confirmed the
    /// subscription, or at once while disconnected (the reconnect subscribes
    /// it): publish `call-start` after this, so no early control is missed.
    pub async fn subscribe(&self, dial_id: &Id) -> Result<Subscription, RouterError> {
        let (tx, rx) = mpsc::channel(self.shared.config.mailbox.max(1));
        let overflow = Overflow::default();
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut slots = self.shared.slots();
            if slots.get(dial_id.as_str()).is_some_and(|s| !s.lingering) {
                return Err(RouterError::InUse(dial_id.clone()));
            }
            // Replacing a lingering slot drops its sender: the lingering
            // task sees its mailbox close and ends.
            slots.insert(
                dial_id.to_string(),
                Slot {
                    id,
                    tx,
                    overflow: overflow.clone(),
                    lingering: false,
                },
            );
        }
        // From here on dropping the guard undoes the registration, also if
        // this future is cancelled.
        let subscription = Subscription {
            dial_id: dial_id.clone(),
            id,
            rx,
            overflow,
            shared: self.shared.clone(),
        };
        let (done, confirmed) = oneshot::channel();
        self.shared
            .cmds
            .send(Cmd::Subscribe(dial_id.to_string(), done))
            .map_err(|_| RouterError::Stopped)?;
        confirmed.await.map_err(|_| RouterError::Stopped)?;
        Ok(subscription)
    }

    /// How many times the pub/sub connection was established.
    pub fn connects(&self) -> u64 {
        self.shared.connects.load(Ordering::Relaxed)
    }

    /// How many calls are subscribed.
    pub fn calls(&self) -> usize {
        self.shared.slots().len()
    }
}

/// A call's mailbox. Dropping it unsubscribes the `dial_id`.
pub struct Subscription {
    dial_id: Id,
    id: u64,
    rx: mpsc::Receiver<Delivery>,
    overflow: Overflow,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("dial_id", &self.dial_id)
            .finish()
    }
}

impl Subscription {
    /// The call's `dial_id`.
    pub fn dial_id(&self) -> &Id {
        &self.dial_id
    }

    /// The next message for this call. Cancel-safe (fit for `select!`).
    /// `None` once the router has stopped.
    pub async fn recv(&mut self) -> Option<Delivery> {
        // Mailbox first: everything parked on the overflow list arrived
        // after the mailbox filled up.
        if let Ok(d) = self.rx.try_recv() {
            return Some(d);
        }
        let parked = self
            .overflow
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front();
        if let Some(bad) = parked {
            return Some(Err(bad));
        }
        self.rx.recv().await
    }

    /// Messages waiting: in the mailbox plus those parked as "mailbox full".
    pub fn backlog(&self) -> usize {
        let parked = self
            .overflow
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len();
        self.rx.len() + parked
    }

    /// The call has ended: for `linger`, answer every control message on its
    /// channel with an `error` ("call has ended") through `events`, so a
    /// controller resending gets an answer rather than silence,
    /// then unsubscribe. A new call with the same `dial_id` may subscribe
    /// meanwhile; it takes the channel over at once.
    pub fn linger(mut self, events: super::events::CallEvents, linger: Duration) -> JoinHandle<()> {
        if let Some(slot) = self.shared.slots().get_mut(self.dial_id.as_str())
            && slot.id == self.id
        {
            slot.lingering = true;
        }
        tokio::spawn(async move {
            let deadline = tokio::time::sleep(linger);
            tokio::pin!(deadline);
            loop {
                let delivery = tokio::select! {
                    () = &mut deadline => return,
                    d = self.recv() => match d {
                        Some(d) => d,
                        // Taken over by a new call, or the router stopped.
                        None => return,
                    },
                };
                let event = match delivery {
                    Ok(msg) => msg.error("call has ended"),
                    Err(bad) => bad.to_event(),
                };
                if let Err(e) = events.publish(&event).await {
                    tracing::warn!(dial_id = %self.dial_id, error = %e, "could not answer control after call end");
                }
            }
        })
    }

    /// Unsubscribes now (the same as dropping it).
    pub fn unsubscribe(self) {}
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut slots = self.shared.slots();
        // Only our own registration: the dial_id may already belong to a
        // newer call.
        if slots
            .get(self.dial_id.as_str())
            .is_some_and(|s| s.id == self.id)
        {
            slots.remove(self.dial_id.as_str());
            drop(slots);
            // If the router is gone there is nothing to unsubscribe from.
            let _ = self
                .shared
                .cmds
                .send(Cmd::Unsubscribe(self.dial_id.to_string()));
        }
    }
}

/// Hands one message to its call's mailbox.
fn dispatch(shared: &Shared, channel: &str, payload: &[u8]) {
    let Some((tx, overflow)) = shared
        .slots()
        .get(channel)
        .map(|s| (s.tx.clone(), s.overflow.clone()))
    else {
        // A late message for a call that just ended.
        return;
    };
    let delivery = match parse(payload) {
        Parsed::Ignored(_) => return,
        Parsed::Control(c) => Ok(c),
        Parsed::Bad(b) => Err(b),
    };
    match tx.try_send(delivery) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Closed(_)) => {}
        Err(mpsc::error::TrySendError::Full(delivery)) => {
            let bad = match delivery {
                Ok(c) => BadControl {
                    event: Some(c.event_type().to_owned()),
                    error: ControlError::MailboxFull,
                },
                Err(b) => b,
            };
            let mut parked = overflow.lock().unwrap_or_else(|p| p.into_inner());
            if parked.len() < shared.config.overflow {
                parked.push_back(bad);
            } else {
                tracing::warn!(dial_id = %channel, "control mailbox and overflow full; message dropped");
            }
        }
    }
}

/// Why one connection's session ended.
enum Ended {
    /// Shut down: stop the task.
    Stop,
    /// The connection failed: reconnect.
    Lost(String),
}

async fn run(
    shared: std::sync::Weak<Shared>,
    client: RedisClient,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    cancel: CancellationToken,
) {
    let Some(config) = shared.upgrade().map(|s| s.config.clone()) else {
        return;
    };
    let mut backoff = config.min_backoff;
    loop {
        let connected = tokio::select! {
            () = cancel.cancelled() => return,
            r = client.pubsub() => r,
        };
        let ended = match connected {
            Ok(pubsub) => {
                let ended = session(&shared, pubsub, &mut cmds, &cancel, &config).await;
                if let Ended::Lost(_) = ended {
                    // It was up; start the backoff over.
                    backoff = config.min_backoff;
                }
                ended
            }
            Err(e) => Ended::Lost(e.to_string()),
        };
        match ended {
            Ended::Stop => return,
            Ended::Lost(why) => {
                tracing::warn!(reason = %why, retry_in = ?backoff, "control pub/sub connection lost");
            }
        }
        // Wait, answering subscribes meanwhile: their dial_ids are in the
        // map, so the next session subscribes them.
        let wake = tokio::time::sleep(backoff);
        tokio::pin!(wake);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = &mut wake => break,
                cmd = cmds.recv() => match cmd {
                    None => return,
                    Some(Cmd::Subscribe(_, done)) => { let _ = done.send(()); }
                    Some(Cmd::Unsubscribe(_)) => {}
                },
            }
        }
        backoff = (backoff * 2).min(config.max_backoff);
    }
}

/// One pub/sub connection's life: subscribe every live call, then route
/// until the connection fails or the router stops.
async fn session(
    shared: &std::sync::Weak<Shared>,
    pubsub: redis::aio::PubSub,
    cmds: &mut mpsc::UnboundedReceiver<Cmd>,
    cancel: &CancellationToken,
    config: &RouterConfig,
) -> Ended {
    let (mut sink, mut stream) = pubsub.split();
    let live: Vec<String> = match shared.upgrade() {
        Some(s) => {
            s.connects.fetch_add(1, Ordering::Relaxed);
            s.slots().keys().cloned().collect()
        }
        None => return Ended::Stop,
    };
    if !live.is_empty() {
        if let Err(e) = sink.subscribe(&live).await {
            return Ended::Lost(e.to_string());
        }
        tracing::info!(calls = live.len(), "control channels subscribed");
    }
    let mut ping = tokio::time::interval(config.ping_every.max(Duration::from_millis(10)));
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Ended::Stop,
            cmd = cmds.recv() => match cmd {
                None => return Ended::Stop,
                Some(Cmd::Subscribe(dial_id, done)) => {
                    let still_live = shared.upgrade().is_some_and(|s| s.slots().contains_key(&dial_id));
                    let result = if still_live { sink.subscribe(&dial_id).await } else { Ok(()) };
                    // Confirm either way: on failure the reconnect
                    // subscribes it.
                    let _ = done.send(());
                    if let Err(e) = result {
                        return Ended::Lost(e.to_string());
                    }
                }
                Some(Cmd::Unsubscribe(dial_id)) => {
                    // Skip if a new call took the dial_id meanwhile.
                    let reused = shared.upgrade().is_some_and(|s| s.slots().contains_key(&dial_id));
                    if !reused && let Err(e) = sink.unsubscribe(&dial_id).await {
                        return Ended::Lost(e.to_string());
                    }
                }
            },
            msg = stream.next() => match msg {
                None => return Ended::Lost("connection closed".into()),
                Some(msg) => match shared.upgrade() {
                    Some(s) => dispatch(&s, msg.get_channel_name(), msg.get_payload_bytes()),
                    None => return Ended::Stop,
                },
            },
            _ = ping.tick() => {
                let pong = tokio::time::timeout(Duration::from_secs(5), sink.ping::<redis::Value>()).await;
                match pong {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Ended::Lost(e.to_string()),
                    Err(_) => return Ended::Lost("ping timed out".into()),
                }
            }
        }
    }
}

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
