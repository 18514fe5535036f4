//! The control router: one pub/sub connection per instance, delivering each
//! call's control messages to that call's [`Subscription`].
//!
//! [`ControlRouter::subscribe`] gives a call an inbox for its `dial_id`;
//! dropping the [`Subscription`] unsubscribes. After the connection is
//! lost, the router reconnects with the shared [`Backoff`] and subscribes
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
//! A call that reads slowly, or a controller that floods its channel, does
//! not block the router or other calls: each call's inbox (the `inbox`
//! module) queues `hangup` ahead of everything, real commands apart from
//! garbage, and answers garbage from a rate-limited budget. What no queue can take gets no answer; it is counted
//! ([`ControlRouter::unanswered`]) and logged at most once a second.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::inbox::{FloodLog, FloodReport, Inbox, Limits, Offer};
use super::message::{Delivery, Parsed, parse};
use crate::backoff::Backoff;
use crate::service::events::CallEvents;
use crate::service::store::RedisClient;
use crate::service::validate::Id;

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
    /// Valid commands one call may have waiting (and, separately, pending
    /// `hangup`s).
    pub mailbox: usize,
    /// Commands past a full mailbox answered "too many control messages
    /// queued", per call; more are counted unanswered.
    pub overflow: usize,
    /// Bad messages (unparseable, unknown, invalid) a call answers in a
    /// burst: its `error` budget.
    pub error_burst: u32,
    /// How fast the `error` budget refills, per second.
    pub errors_per_sec: f64,
    /// Waits between reconnect attempts.
    pub backoff: Backoff,
    /// How often the idle connection is pinged to notice a dead peer.
    pub ping_every: Duration,
    /// Unanswered messages are logged at most this often.
    pub report_every: Duration,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            mailbox: 32,
            overflow: 256,
            error_burst: 32,
            errors_per_sec: 10.0,
            backoff: Backoff::RECONNECT,
            ping_every: Duration::from_secs(15),
            report_every: Duration::from_secs(1),
        }
    }
}

impl RouterConfig {
    fn limits(&self) -> Limits {
        Limits {
            mailbox: self.mailbox,
            overflow: self.overflow,
            error_burst: self.error_burst,
            errors_per_sec: self.errors_per_sec,
        }
    }
}

/// A call's inbox and the signal that something arrived.
struct Mailbox {
    inbox: Mutex<Inbox>,
    ready: Notify,
}

impl Mailbox {
    fn inbox(&self) -> MutexGuard<'_, Inbox> {
        // A poisoned inbox is still consistent: each operation is a few
        // queue pushes and pops.
        self.inbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn close(&self) {
        self.inbox().closed = true;
        self.ready.notify_one();
    }
}

struct Slot {
    id: u64,
    mailbox: Arc<Mailbox>,
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
    /// Messages left unanswered, and when that was last logged.
    flood: Mutex<FloodLog>,
}

impl Shared {
    fn slots(&self) -> MutexGuard<'_, HashMap<String, Slot>> {
        // A poisoned map is still a consistent map: every operation on it is
        // a single insert/remove/lookup.
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn flood(&self) -> MutexGuard<'_, FloodLog> {
        self.flood.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Logs the unanswered messages not reported yet, if a line is due.
    fn report_flood(&self, due: Option<FloodReport>) {
        if let Some(r) = due {
            tracing::warn!(
                unanswered = r.unanswered,
                total = r.total,
                dial_id = %r.dial_id,
                "control messages left unanswered: past their call's error budget or queue"
            );
        }
    }
}

/// Routes control messages from one pub/sub connection to call inboxes.
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
        let flood = FloodLog::new(config.report_every);
        let shared = Arc::new(Shared {
            config,
            slots: Mutex::new(HashMap::new()),
            cmds,
            next_id: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            flood: Mutex::new(flood),
        });
        let task = tokio::spawn(run(Arc::downgrade(&shared), client, rx, cancel));
        (Self { shared }, task)
    }

    /// Gives the call `dial_id` its inbox. Returns once Redis confirmed the
    /// subscription, or at once while disconnected (the reconnect subscribes
    /// it): publish `call-start` after this, so no early control is missed.
    pub async fn subscribe(&self, dial_id: &Id) -> Result<Subscription, RouterError> {
        let mailbox = Arc::new(Mailbox {
            inbox: Mutex::new(Inbox::new(self.shared.config.limits(), Instant::now())),
            ready: Notify::new(),
        });
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut slots = self.shared.slots();
            if slots.get(dial_id.as_str()).is_some_and(|s| !s.lingering) {
                return Err(RouterError::InUse(dial_id.clone()));
            }
            let previous = slots.insert(
                dial_id.to_string(),
                Slot {
                    id,
                    mailbox: mailbox.clone(),
                    lingering: false,
                },
            );
            // A lingering call taken over: its task sees its inbox close.
            if let Some(previous) = previous {
                previous.mailbox.close();
            }
        }
        // From here on dropping the guard undoes the registration, also if
        // this future is cancelled.
        let subscription = Subscription {
            dial_id: dial_id.clone(),
            id,
            mailbox,
            received_at: None,
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

    /// Control messages left without an answer since the router started
    /// (past a call's error budget or queues), for metrics.
    pub fn unanswered(&self) -> u64 {
        self.shared.flood().total()
    }
}

/// A call's inbox. Dropping it unsubscribes the `dial_id`.
pub struct Subscription {
    dial_id: Id,
    id: u64,
    mailbox: Arc<Mailbox>,
    received_at: Option<Instant>,
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

    /// The next message for this call: a pending `hangup` first, then the
    /// rest in arrival order. Cancel-safe (fit for `select!`). `None` once
    /// no more will come (taken over, or the router stopped).
    pub async fn recv(&mut self) -> Option<Delivery> {
        loop {
            {
                let mut inbox = self.mailbox.inbox();
                if let Some((delivery, at)) = inbox.take() {
                    self.received_at = Some(at);
                    return Some(delivery);
                }
                if inbox.closed {
                    return None;
                }
            }
            // One reader, so `notify_one` keeps a wake-up for us if a
            // message arrived since the check.
            self.mailbox.ready.notified().await;
        }
    }

    /// When the message [`recv`](Self::recv) returned last came off the
    /// pub/sub connection. The hook for a control round-trip metric: the
    /// time from here to the answer being published.
    pub fn received_at(&self) -> Option<Instant> {
        self.received_at
    }

    /// Messages waiting.
    pub fn backlog(&self) -> usize {
        self.mailbox.inbox().len()
    }

    /// Messages on this call's channel that got no answer.
    pub fn unanswered(&self) -> u64 {
        self.mailbox.inbox().unanswered_total()
    }

    /// The call has ended: for `linger`, answer every control message on its
    /// channel with an `error` ("call has ended") through `events`, so a
    /// controller resending gets an answer rather than silence, then
    /// unsubscribe. A new call with the same `dial_id` may subscribe
    /// meanwhile; it takes the channel over at once.
    pub fn linger(mut self, events: CallEvents, linger: Duration) -> JoinHandle<()> {
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

/// Files one message in its call's inbox.
fn dispatch(shared: &Shared, channel: &str, payload: &[u8]) {
    let Some(mailbox) = shared.slots().get(channel).map(|s| s.mailbox.clone()) else {
        // A late message for a call that just ended.
        return;
    };
    let delivery = match parse(payload) {
        Parsed::Ignored(_) => return,
        Parsed::Control(c) => Ok(c),
        Parsed::Bad(b) => Err(b),
    };
    let now = Instant::now();
    match mailbox.inbox().offer(delivery, now) {
        Offer::Queued => mailbox.ready.notify_one(),
        Offer::Unanswered => {
            let due = shared.flood().count(channel, now);
            shared.report_flood(due);
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
    shared: Weak<Shared>,
    client: RedisClient,
    cmds: mpsc::UnboundedReceiver<Cmd>,
    cancel: CancellationToken,
) {
    connect_and_route(&shared, client, cmds, cancel).await;
    // No more messages will come: calls waiting on their inbox see `None`.
    if let Some(shared) = shared.upgrade() {
        for slot in shared.slots().values() {
            slot.mailbox.close();
        }
    }
}

async fn connect_and_route(
    shared: &Weak<Shared>,
    client: RedisClient,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    cancel: CancellationToken,
) {
    let Some(config) = shared.upgrade().map(|s| s.config.clone()) else {
        return;
    };
    let mut attempts = config.backoff.attempts();
    loop {
        let connected = tokio::select! {
            () = cancel.cancelled() => return,
            r = client.pubsub() => r,
        };
        let ended = match connected {
            Ok(pubsub) => {
                let ended = session(shared, pubsub, &mut cmds, &cancel, &config).await;
                // It was up; start the backoff over.
                attempts.reset();
                ended
            }
            Err(e) => Ended::Lost(e.to_string()),
        };
        let delay = attempts.next_delay();
        match ended {
            Ended::Stop => return,
            Ended::Lost(why) => {
                tracing::warn!(reason = %why, retry_in = ?delay, "control pub/sub connection lost");
            }
        }
        // Wait, answering subscribes meanwhile: their dial_ids are in the
        // map, so the next session subscribes them.
        let wake = tokio::time::sleep(delay);
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
    }
}

/// One pub/sub connection's life: subscribe every live call, then route
/// until the connection fails or the router stops.
async fn session(
    shared: &Weak<Shared>,
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
    // Reports the tail of a flood that stopped before a line was due.
    let mut report = tokio::time::interval(config.report_every.max(Duration::from_millis(10)));
    report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
            _ = report.tick() => if let Some(s) = shared.upgrade() {
                let due = s.flood().due(Instant::now());
                s.report_flood(due);
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
