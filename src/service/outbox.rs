//! The one ordered path from the agent to Redis: call events with their
//! history and active-call keys, other publishes, dead letters, claims and
//! job acknowledgements all go through an [`Outbox`].
//!
//! # Order
//!
//! An outbox is a FIFO of entries; one writer task sends them in order,
//! oldest first, so everything one call writes (and everything the agent
//! writes at all) reaches Redis in the order it was produced. Each entry is
//! a list of commands, each touching one hash slot, sent in order.
//!
//! # Outages
//!
//! When Redis cannot be reached (connection refused or broken, timeout,
//! `LOADING`, a failover …) the writer keeps the entry at the head and
//! retries it with a backoff from 50 ms up to 1 s, for as long as it takes.
//! A producer waits ([`Receipt::written`]) while that lasts less than half
//! a second (a lost reply, a quick restart), so what it wrote is in Redis
//! when it goes on; past that, producers are not held up: `written`
//! returns at once, and calls go on (a call's hangups are never delayed
//! by a Redis outage). The queue is bounded
//! ([`DEFAULT_CAPACITY`] entries): beyond it a new entry is dropped, counted
//! ([`Outbox::dropped`]) and logged at most once a second. When Redis is
//! back the backlog is flushed in order.
//!
//! # Exactly once
//!
//! A command whose reply was lost (the connection broke after Redis ran
//! it) is sent again, so every command put in an outbox must be
//! idempotent: the call-event script keeps a per-call sequence number next
//! to the history and appends only a newer one (see
//! [`crate::service::events`]); active-call items are added only when
//! absent; dead letters are appended only when not already among the
//! newest; acknowledgements are `LREM`s. A plain `PUBLISH` with no history
//! (the `failure` of a bad job) is the exception: after a lost reply it may
//! reach subscribers twice.
//!
//! # What subscribers miss
//!
//! Pub/sub delivers at most once, to whoever is subscribed at that moment.
//! A subscriber that is itself disconnected while an event is published
//! (or an event published while the subscriber reconnects) never sees it;
//! an event the outbox held during an outage is published when Redis is
//! back, late but in order. The history list `redswitch_history.<org>.<user>`
//! is the durable record: after any outage it holds exactly the events it
//! would have held without one, in order, and a subscriber that may have
//! missed something reads it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::ConnectionLike;
use redis::{Cmd, RedisError, RetryMethod};
use tokio::sync::{Notify, oneshot, watch};

use super::store::RedisConn;

/// The default bound of the queue: beyond it new entries are dropped.
pub const DEFAULT_CAPACITY: usize = 100_000;
/// Entries sent in one pipeline (standalone Redis).
const BATCH: usize = 256;
/// First and largest pause between retries while Redis is away.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How long writes may fail before producers stop waiting for them: a
/// lost reply or a quick restart is retried within this while the
/// producer waits (so what it wrote is in Redis when it goes on); a longer
/// outage must not hold calls up.
const OUTAGE_GRACE: Duration = Duration::from_millis(500);

/// Why an entry was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OutboxError {
    /// The queue is full (Redis has been away for a long time): the entry
    /// was dropped and counted.
    #[error("outbox full ({0} entries waiting for Redis): dropped")]
    Full(usize),
}

/// What happened to an entry by the time [`Receipt::written`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// Redis ran its commands.
    Done,
    /// Redis is away; the entry waits in the outbox and will be written,
    /// in order, when Redis is back.
    Queued,
    /// Redis refused a command for good (not an outage); logged.
    Refused,
}

/// One entry: commands sent in order, each on one hash slot, each
/// idempotent.
struct Entry {
    what: &'static str,
    cmds: Vec<Cmd>,
    done: Option<oneshot::Sender<Written>>,
}

struct Shared {
    queue: Mutex<VecDeque<Entry>>,
    /// Whether the connection is to a cluster (each command then goes on
    /// its own; producers keep every command on one slot).
    cluster: bool,
    wake: Notify,
    /// `true` while the writer cannot reach Redis.
    outage: watch::Sender<bool>,
    capacity: usize,
    dropped: AtomicU64,
    /// When the last "dropped" line was logged (rate limit).
    last_drop_log: Mutex<Option<Instant>>,
    /// Set when the last handle is gone: the writer flushes and ends.
    closed: std::sync::atomic::AtomicBool,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Entry>> {
        // A poisoned lock only means a panic elsewhere while pushing or
        // popping; the queue itself is consistent.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Ends the writer once every [`Outbox`] handle is dropped.
struct Owner(Arc<Shared>);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.closed.store(true, Ordering::SeqCst);
        self.0.wake.notify_one();
    }
}

/// A handle to an outbox; clones share it (and its order).
#[derive(Clone)]
pub struct Outbox {
    shared: Arc<Shared>,
    _owner: Arc<Owner>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("pending", &self.pending())
            .field("dropped", &self.dropped())
            .finish()
    }
}

/// Spawns an outbox writing through `conn` with the default capacity.
impl From<RedisConn> for Outbox {
    fn from(conn: RedisConn) -> Self {
        Outbox::spawn(conn, DEFAULT_CAPACITY)
    }
}

/// Waits for an entry's fate; see [`Written`].
pub struct Receipt {
    done: oneshot::Receiver<Written>,
    outage: watch::Receiver<bool>,
}

impl Receipt {
    /// Waits until the entry is written (however long Redis is away);
    /// `None` when it never will be (the outbox ended first).
    pub async fn done(self) -> Option<Written> {
        self.done.await.ok()
    }

    /// Returns once the entry is written, or at once when Redis is away
    /// (the entry then waits in the outbox).
    pub async fn written(mut self) -> Written {
        tokio::select! {
            done = &mut self.done => done.unwrap_or(Written::Queued),
            _ = self.outage.wait_for(|away| *away) => Written::Queued,
        }
    }
}

impl Outbox {
    /// Starts the writer task for `conn`, holding at most `capacity`
    /// entries while Redis is away.
    pub fn spawn(conn: RedisConn, capacity: usize) -> Self {
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::new()),
            cluster: conn.is_cluster(),
            wake: Notify::new(),
            outage: watch::Sender::new(false),
            capacity: capacity.max(1),
            dropped: AtomicU64::new(0),
            last_drop_log: Mutex::new(None),
            closed: std::sync::atomic::AtomicBool::new(false),
        });
        tokio::spawn(write_loop(shared.clone(), conn));
        Self {
            _owner: Arc::new(Owner(shared.clone())),
            shared,
        }
    }

    /// Queues `cmds` (sent in order; each must be idempotent and touch one
    /// hash slot) as one entry.
    pub fn push(&self, what: &'static str, cmds: Vec<Cmd>) -> Result<Receipt, OutboxError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut queue = self.shared.lock();
            if queue.len() >= self.shared.capacity {
                drop(queue);
                let dropped = self.shared.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                self.log_drop(what, dropped);
                return Err(OutboxError::Full(self.shared.capacity));
            }
            queue.push_back(Entry {
                what,
                cmds,
                done: Some(tx),
            });
        }
        self.shared.wake.notify_one();
        Ok(Receipt {
            done: rx,
            outage: self.shared.outage.subscribe(),
        })
    }

    /// Queues `cmds` and waits as [`Receipt::written`] does.
    pub async fn send(&self, what: &'static str, cmds: Vec<Cmd>) -> Result<Written, OutboxError> {
        Ok(self.push(what, cmds)?.written().await)
    }

    fn log_drop(&self, what: &'static str, dropped: u64) {
        let mut last = self
            .shared
            .last_drop_log
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            *last = Some(Instant::now());
            tracing::error!(
                what,
                dropped_total = dropped,
                capacity = self.shared.capacity,
                "outbox full while Redis is away: dropping"
            );
        }
    }

    /// Whether Redis is a cluster (no command may span hash slots).
    pub fn is_cluster(&self) -> bool {
        self.shared.cluster
    }

    /// Entries waiting to be written (the `redswitch_outbox_pending` gauge).
    pub fn pending(&self) -> usize {
        self.shared.lock().len()
    }

    /// Entries dropped because the outbox was full, since start.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Whether the writer currently cannot reach Redis.
    pub fn is_away(&self) -> bool {
        *self.shared.outage.borrow()
    }

    /// Waits until every entry queued so far is written, or `timeout`.
    /// Returns how many entries are still waiting.
    pub async fn flush(&self, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let pending = self.pending();
            if pending == 0 || tokio::time::Instant::now() >= deadline {
                return pending;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Whether `e` means Redis is (perhaps briefly) unreachable, as opposed to
/// a command Redis refuses for good.
fn is_outage(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || !matches!(e.retry_method(), RetryMethod::NoRetry)
}

async fn write_loop(shared: Arc<Shared>, mut conn: RedisConn) {
    let mut backoff = BACKOFF_MIN;
    let mut away_since: Option<Instant> = None;
    loop {
        // The commands of the oldest entries; they stay queued until sent.
        let batch: Vec<(&'static str, Vec<Cmd>)> = {
            let queue = shared.lock();
            let n = if conn.is_cluster() { 1 } else { BATCH };
            queue
                .iter()
                .take(n)
                .map(|e| (e.what, e.cmds.clone()))
                .collect()
        };
        if batch.is_empty() {
            if shared.closed.load(Ordering::SeqCst) {
                return;
            }
            // `notify_one` stores a permit, so a push between the check
            // and this wait is not missed.
            shared.wake.notified().await;
            continue;
        }
        let result = send_batch(&mut conn, &batch).await;
        match result {
            Ok(outcomes) => {
                if let Some(since) = away_since.take() {
                    tracing::info!(
                        after_ms = u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX),
                        pending = shared.lock().len(),
                        "Redis is back; flushing the outbox in order"
                    );
                }
                shared.outage.send_replace(false);
                backoff = BACKOFF_MIN;
                let mut queue = shared.lock();
                for outcome in outcomes {
                    if let Some(mut entry) = queue.pop_front()
                        && let Some(done) = entry.done.take()
                    {
                        let _ = done.send(outcome);
                    }
                }
            }
            Err(error) => {
                if away_since.is_none() {
                    away_since = Some(Instant::now());
                    tracing::warn!(
                        %error,
                        pending = shared.lock().len(),
                        "Redis unreachable; the outbox holds what the agent publishes and records"
                    );
                }
                if away_since.is_some_and(|t| t.elapsed() >= OUTAGE_GRACE) {
                    shared.outage.send_replace(true);
                }
                if shared.closed.load(Ordering::SeqCst) {
                    let lost = shared.lock().len();
                    tracing::error!(
                        lost,
                        "outbox closed while Redis is away: its entries are lost"
                    );
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// Sends the entries' commands in order; `Err` only for an outage (then
/// nothing is known to be done and everything is sent again: idempotent).
/// A command Redis refuses for good marks its entry [`Written::Refused`].
async fn send_batch(
    conn: &mut RedisConn,
    batch: &[(&'static str, Vec<Cmd>)],
) -> Result<Vec<Written>, RedisError> {
    if batch.len() > 1 {
        let mut pipe = redis::pipe();
        for (_, cmds) in batch {
            for cmd in cmds {
                pipe.add_command(cmd.clone());
            }
        }
        match pipe.query_async::<Vec<redis::Value>>(conn).await {
            Ok(_) => return Ok(vec![Written::Done; batch.len()]),
            Err(e) if is_outage(&e) => return Err(e),
            // Some command was refused: find it by sending one at a time.
            Err(_) => {}
        }
    }
    let mut outcomes = Vec::with_capacity(batch.len());
    for (what, cmds) in batch {
        let mut outcome = Written::Done;
        for cmd in cmds {
            match conn.req_packed_command(cmd).await {
                Ok(_) => {}
                Err(e) if is_outage(&e) => return Err(e),
                Err(error) => {
                    tracing::error!(what, %error, "Redis refused an outbox command; skipped");
                    outcome = Written::Refused;
                }
            }
        }
        outcomes.push(outcome);
    }
    Ok(outcomes)
}
