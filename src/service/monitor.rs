//! What a running agent shows its operators: whether its loops run
//! (liveness), whether it should be given work (readiness), and the
//! readings that live in other parts (reconnects, dropped events) next to
//! its own [`Stats`]. [`crate::ops`] serves them over HTTP; this module
//! knows nothing of HTTP.
//!
//! Live means every long-running task of the agent still runs, or the
//! agent is stopping (its loops then end by design, while calls finish).
//!
//! Ready means all of:
//! - not draining: neither marked so ([`Monitor::set_draining`]) nor
//!   stopping (the agent then takes no jobs and finishes its calls);
//! - FreeSWITCH connected, and heard from within [`SWITCH_SILENCE`]: the
//!   agent's inbound connection only receives its own legs' events
//!   (filtered), so no HEARTBEAT arrives there; instead a probe asks
//!   `api version` every [`PROBE_EVERY`], and any frame the connection
//!   reads counts ([`crate::switch::LinkStats::since_last_frame`]);
//! - Redis answering a `PING` within [`REDIS_PING_TIMEOUT`], asked when
//!   readiness is asked.

use crate::service::control::ControlRouter;
use crate::service::stats::Stats;
use crate::service::store::RedisConn;
use crate::switch::InboundClient;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::{AbortHandle, JoinHandle};
use tokio_util::sync::CancellationToken;

/// Longest FreeSWITCH may stay silent before the agent is not ready.
pub const SWITCH_SILENCE: Duration = Duration::from_secs(30);
/// How often the probe asks FreeSWITCH for a reply.
pub const PROBE_EVERY: Duration = Duration::from_secs(10);
/// How long the probe waits for that reply.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long readiness waits for Redis's `PONG`.
pub const REDIS_PING_TIMEOUT: Duration = Duration::from_secs(2);

struct Inner {
    stats: Stats,
    inbound: InboundClient,
    router: ControlRouter,
    redis: RedisConn,
    draining: AtomicBool,
    /// The agent's stop signal.
    stop: CancellationToken,
    /// The agent's long-running tasks, by name; one that ended while the
    /// agent runs means the agent no longer works.
    loops: Mutex<Vec<(&'static str, AbortHandle)>>,
}

/// A running agent's health and readings. Cheap to clone.
#[derive(Clone)]
pub struct Monitor {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor")
            .field("draining", &self.is_draining())
            .finish()
    }
}

impl Monitor {
    /// A monitor over the agent's parts.
    pub(crate) fn new(
        stats: Stats,
        inbound: InboundClient,
        router: ControlRouter,
        redis: RedisConn,
        stop: CancellationToken,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                stats,
                inbound,
                router,
                redis,
                draining: AtomicBool::new(false),
                stop,
                loops: Mutex::new(Vec::new()),
            }),
        }
    }

    /// The agent's counters, gauges and histograms.
    pub fn stats(&self) -> &Stats {
        &self.inner.stats
    }

    /// Marks the agent draining (or not): it is then not ready, so a load
    /// balancer sends it nothing new while its calls finish.
    pub fn set_draining(&self, draining: bool) {
        self.inner.draining.store(draining, Ordering::Release);
    }

    /// Whether the agent is draining or stopping.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Acquire) || self.inner.stop.is_cancelled()
    }

    /// Watches a long-running task of the agent: liveness fails once it
    /// ends.
    pub(crate) fn watch<T>(&self, name: &'static str, task: &JoinHandle<T>) {
        self.inner
            .loops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((name, task.abort_handle()));
    }

    /// Liveness: `Err` names a loop that has stopped.
    pub fn live(&self) -> Result<(), String> {
        if self.inner.stop.is_cancelled() {
            return Ok(());
        }
        let loops = self.inner.loops.lock().unwrap_or_else(|p| p.into_inner());
        match loops.iter().find(|(_, task)| task.is_finished()) {
            Some((name, _)) => Err(format!("{name} has stopped")),
            None => Ok(()),
        }
    }

    /// Readiness: `Err` is the first reason the agent should not be given
    /// work, on one line.
    pub async fn ready(&self) -> Result<(), String> {
        if self.is_draining() {
            return Err("draining: finishing its calls, taking no new jobs".into());
        }
        self.live()?;
        if !self.inner.inbound.is_connected() {
            return Err("FreeSWITCH: not connected".into());
        }
        // Connected means authenticated, which is a reply: no frame counted
        // yet is not silence.
        let silent = self
            .inner
            .inbound
            .stats()
            .since_last_frame()
            .unwrap_or_default();
        if silent > SWITCH_SILENCE {
            return Err(format!("FreeSWITCH: no reply for {} s", silent.as_secs()));
        }
        let mut conn = self.inner.redis.clone();
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<String>(&mut conn);
        match tokio::time::timeout(REDIS_PING_TIMEOUT, ping).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(format!("Redis: {}", one_line(&error.to_string()))),
            Err(_) => Err(format!(
                "Redis: no answer to PING within {} s",
                REDIS_PING_TIMEOUT.as_secs()
            )),
        }
    }

    /// Times the inbound connection to FreeSWITCH was re-established.
    pub fn esl_reconnects(&self) -> u64 {
        self.inner.inbound.stats().reconnects()
    }

    /// Times the control pub/sub connection to Redis was re-established.
    pub fn redis_reconnects(&self) -> u64 {
        self.inner.router.connects().saturating_sub(1)
    }

    /// The inbound connection's own readings: its event buffer's fill and
    /// the time it spent stalled on a slow consumer.
    pub fn inbound_stats(&self) -> std::sync::Arc<crate::switch::LinkStats> {
        self.inner.inbound.stats()
    }

    /// FreeSWITCH events the inbound client dropped.
    pub fn events_dropped(&self) -> u64 {
        self.inner.inbound.stats().events_dropped()
    }

    /// Asks FreeSWITCH for a reply every [`PROBE_EVERY`] while connected,
    /// until `cancel`.
    pub(crate) fn spawn_switch_probe(&self, cancel: CancellationToken) -> JoinHandle<()> {
        let monitor = self.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(PROBE_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    _ = every.tick() => {}
                }
                if !monitor.inner.inbound.is_connected() {
                    continue;
                }
                // The reply itself is the reading (the connection counts
                // every frame it reads); only failures are worth a line.
                let asked = monitor.inner.inbound.api("version");
                match tokio::time::timeout(PROBE_TIMEOUT, asked).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(error)) => tracing::debug!(%error, "FreeSWITCH probe failed"),
                    Err(_) => tracing::debug!("FreeSWITCH probe got no reply in time"),
                }
            }
        })
    }
}

/// `text` with line breaks replaced, so a reason stays one line.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
