//! Pacing originates under FreeSWITCH's sessions-per-second limit.
//!
//! FreeSWITCH refuses any session created past its limit (`sps`, 30 by
//! default) with `DESTINATION_OUT_OF_ORDER` and logs `Throttle Error!`; a
//! loopback endpoint costs two sessions (its `-a` and `-b` halves). The
//! agent reads the limit with `fsctl sps` when it connects and again after
//! every reconnect, and sends each originate only once a token bucket has
//! room for its sessions. `--sessions-per-second` overrides what the switch
//! says (e.g. when other applications share the switch's budget).
//!
//! The bucket's burst plus one second of refill stays below the limit, so
//! no one-second window of FreeSWITCH's counter can see more sessions from
//! this agent than the limit, with a margin for the jitter between sending
//! an originate and FreeSWITCH creating its sessions. Slots are reserved in
//! the order [`Pacer::reserve`] is called, and [`Turns`] keeps originates
//! prepared by concurrent tasks in that order, so jobs are dialled in the
//! order they were taken. An originate the throttle still refuses (another
//! application used the budget) is retried by the call with
//! [`THROTTLE_BACKOFF`].

use crate::switch::InboundClient;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// FreeSWITCH's default `sps` (`switch.conf.xml`'s `sessions-per-second`),
/// used when the switch does not tell its own.
pub const DEFAULT_SESSIONS_PER_SECOND: u32 = 30;

/// The waits before the retries of an originate refused by the throttle
/// (`DESTINATION_OUT_OF_ORDER` with no channel created); once they are
/// used up the refusal stands.
pub const THROTTLE_BACKOFF: [Duration; 6] = [
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
];

/// How often the connection's state is looked at to notice a reconnect.
const RECONNECT_POLL: Duration = Duration::from_millis(250);

/// The sessions an originate to `endpoint` creates: two for a loopback
/// endpoint (both halves are sessions), one otherwise.
pub fn sessions_of(endpoint: &str) -> u32 {
    if endpoint.starts_with("loopback/") {
        2
    } else {
        1
    }
}

/// The limit in `fsctl sps`'s answer, `+OK sessions per second: 30`.
pub fn parse_sps(reply: &str) -> Option<u32> {
    let rest = reply.trim().strip_prefix("+OK sessions per second:")?;
    rest.trim().parse().ok().filter(|&n| n > 0)
}

/// A token bucket in sessions, refilled continuously. Tokens may go
/// negative: a reservation takes its tokens at once and waits until the
/// debt is paid, so reservations are served strictly in order.
#[derive(Debug)]
struct Bucket {
    limit: u32,
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(limit: u32, now: Instant) -> Self {
        let mut bucket = Self {
            limit: 0,
            rate: 0.0,
            burst: 0.0,
            tokens: 0.0,
            at: now,
        };
        bucket.set_limit(limit, now);
        bucket.tokens = bucket.burst;
        bucket
    }

    /// Burst and rate for a limit: burst + rate is 90 % of the limit (for
    /// limits of 10 and more), the burst big enough for one loopback
    /// originate.
    fn set_limit(&mut self, limit: u32, now: Instant) {
        self.refill(now);
        let limit = limit.max(1);
        let l = f64::from(limit);
        self.limit = limit;
        self.burst = (l / 10.0).ceil().max(2.0);
        self.rate = (l * 0.9 - self.burst).max(l / 2.0);
        self.tokens = self.tokens.min(self.burst);
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.at = now;
    }

    /// Takes `sessions` tokens and returns when they are paid for.
    fn reserve(&mut self, sessions: u32, now: Instant) -> Instant {
        self.refill(now);
        self.tokens -= f64::from(sessions);
        if self.tokens >= 0.0 {
            now
        } else {
            now + Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// Where the pacer's limit came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitSource {
    /// `--sessions-per-second`.
    Override,
    /// The switch's `fsctl sps`.
    Switch,
    /// The switch would not say; FreeSWITCH's default is assumed.
    Fallback,
}

struct PacerInner {
    bucket: Mutex<Bucket>,
    source: Mutex<LimitSource>,
    overridden: bool,
    /// Whether the fallback was logged already (it is logged once).
    fallback_logged: std::sync::atomic::AtomicBool,
}

/// Paces originates under the switch's limit. Cheap to clone.
#[derive(Clone)]
pub struct Pacer {
    inner: Arc<PacerInner>,
}

impl std::fmt::Debug for Pacer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pacer")
            .field("limit", &self.limit())
            .field("source", &self.source())
            .finish()
    }
}

impl Default for Pacer {
    fn default() -> Self {
        Self::new(None)
    }
}

impl Pacer {
    /// A pacer at `limit` sessions/s when given (it then never asks the
    /// switch), else at FreeSWITCH's default until [`Pacer::read_limit`]
    /// learns the switch's.
    pub fn new(limit: Option<u32>) -> Self {
        let overridden = limit.is_some();
        Self {
            inner: Arc::new(PacerInner {
                bucket: Mutex::new(Bucket::new(
                    limit.unwrap_or(DEFAULT_SESSIONS_PER_SECOND),
                    Instant::now(),
                )),
                source: Mutex::new(if overridden {
                    LimitSource::Override
                } else {
                    LimitSource::Fallback
                }),
                overridden,
                fallback_logged: Default::default(),
            }),
        }
    }

    /// The limit in force, sessions per second.
    pub fn limit(&self) -> u32 {
        self.bucket().limit
    }

    /// Where the limit came from.
    pub fn source(&self) -> LimitSource {
        *self.inner.source.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bucket(&self) -> std::sync::MutexGuard<'_, Bucket> {
        self.inner.bucket.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves room for an originate of `sessions` sessions; the returned
    /// [`Slot`] is the moment it may be sent. Slots come in the order of
    /// the calls.
    pub fn reserve(&self, sessions: u32) -> Slot {
        Slot(self.bucket().reserve(sessions, Instant::now()))
    }

    /// Asks the switch for its limit (`fsctl sps`) unless overridden. A
    /// switch that refuses (an event-socket user without the rights, an
    /// old version) leaves FreeSWITCH's default in force; that is logged
    /// once per process lifetime of this pacer.
    pub async fn read_limit(&self, inbound: &InboundClient) {
        if self.inner.overridden {
            return;
        }
        let (limit, source) = match inbound.api("fsctl sps").await {
            Ok(reply) => match parse_sps(&reply) {
                Some(limit) => (limit, LimitSource::Switch),
                None => {
                    self.log_fallback(reply.trim());
                    (DEFAULT_SESSIONS_PER_SECOND, LimitSource::Fallback)
                }
            },
            // The link dropped: the next connect reads it again.
            Err(error) if error.is_connection_dropped() => return,
            Err(error) => {
                self.log_fallback(&error.to_string());
                (DEFAULT_SESSIONS_PER_SECOND, LimitSource::Fallback)
            }
        };
        self.bucket().set_limit(limit, Instant::now());
        *self.inner.source.lock().unwrap_or_else(|p| p.into_inner()) = source;
        if source == LimitSource::Switch {
            tracing::info!(
                sessions_per_second = limit,
                "pacing originates under the switch's limit"
            );
        }
    }

    fn log_fallback(&self, why: &str) {
        use std::sync::atomic::Ordering;
        if !self.inner.fallback_logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                reply = why,
                sessions_per_second = DEFAULT_SESSIONS_PER_SECOND,
                "the switch refused `fsctl sps`; pacing at FreeSWITCH's default (set --sessions-per-second to choose)"
            );
        }
    }

    /// Reads the limit again each time `inbound` reconnects, until `stop`
    /// (call [`Pacer::read_limit`] once connected first).
    pub async fn follow(self, inbound: InboundClient, stop: CancellationToken) {
        let mut connected = inbound.is_connected();
        while !stop.is_cancelled() {
            let now = inbound.is_connected();
            if now && !connected {
                self.read_limit(&inbound).await;
            }
            connected = now;
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(RECONNECT_POLL) => {}
            }
        }
    }
}

/// Hands out turns in order: each [`Turn`] waits for the one before it to
/// be released (or dropped), so originates prepared by concurrent tasks
/// reach the switch in the order the turns were handed out.
#[derive(Debug, Default)]
pub struct Turns {
    last: Option<oneshot::Receiver<()>>,
}

impl Turns {
    /// The next turn, after every turn handed out before it.
    pub fn next(&mut self) -> Turn {
        let (done, after) = oneshot::channel();
        Turn {
            before: self.last.replace(after),
            done: Some(done),
        }
    }
}

/// One place in line (see [`Turns`]). Dropping it releases it.
#[derive(Debug)]
pub struct Turn {
    before: Option<oneshot::Receiver<()>>,
    done: Option<oneshot::Sender<()>>,
}

impl Turn {
    /// Waits until every earlier turn has been released or dropped.
    pub async fn wait(&mut self) {
        if let Some(before) = self.before.take() {
            // An error means the earlier turn was dropped: released too.
            let _ = before.await;
        }
    }

    /// Lets the next turn go.
    pub fn release(mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(());
        }
    }
}

/// When a reserved originate may be sent.
#[derive(Debug, Clone, Copy)]
pub struct Slot(Instant);

impl Slot {
    /// The moment the originate may be sent.
    pub fn instant(self) -> Instant {
        self.0
    }

    /// Waits for the slot.
    pub async fn wait(self) {
        tokio::time::sleep_until(self.0).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fsctl_sps() {
        assert_eq!(parse_sps("+OK sessions per second: 30\n"), Some(30));
        assert_eq!(parse_sps("+OK sessions per second: 10"), Some(10));
        assert_eq!(parse_sps("-ERR permission denied"), None);
        assert_eq!(parse_sps("+OK sessions per second: 0"), None);
    }

    #[tokio::test]
    async fn turns_go_in_order_and_a_dropped_turn_releases() {
        let mut turns = Turns::default();
        let (mut a, b, mut c) = (turns.next(), turns.next(), turns.next());
        a.wait().await;
        let waiting = tokio::spawn(async move {
            c.wait().await;
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        a.release();
        drop(b);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the third turn comes once the first two are done")
            .unwrap();
    }

    #[test]
    fn loopback_costs_two() {
        assert_eq!(sessions_of("loopback/1555/redswitch-test"), 2);
        assert_eq!(sessions_of("sofia/gateway/gw/1555"), 1);
    }

    /// In every one-second window, no more than 90 % of the limit is
    /// granted, in the order asked.
    #[test]
    fn never_more_than_the_limit_in_any_second() {
        for limit in [1, 2, 10, 30, 100] {
            let start = Instant::now();
            let mut bucket = Bucket::new(limit, start);
            let grants: Vec<Duration> =
                (0..400).map(|_| bucket.reserve(2, start) - start).collect();
            for (i, &t) in grants.iter().enumerate() {
                let in_window = grants[i..]
                    .iter()
                    .take_while(|&&u| u < t + Duration::from_secs(1))
                    .count() as u32
                    * 2;
                assert!(
                    limit < 10 || in_window <= limit * 9 / 10,
                    "limit {limit}: {in_window} sessions within 1 s of {t:?}"
                );
            }
            // In order.
            assert!(grants.windows(2).all(|w| w[0] <= w[1]));
        }
    }
}
