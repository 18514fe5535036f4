//! The agent (`redswitch serve`): takes jobs while FreeSWITCH is reachable,
//! runs each asp-call in its own task, and routes control messages.
//!
//! Startup fails with one clear error when Redis, FreeSWITCH or the
//! listen address cannot be used; after startup, losing either service is
//! survived: the inbound connection and the pub/sub router reconnect by
//! themselves, and no job is taken while FreeSWITCH is away (jobs wait in
//! Redis, where another instance may take them).
//!
//! A job's fate is decided once FreeSWITCH accepted the first originate, or
//! the job was refused (dead-lettered, `failure` published); only then is it
//! removed from this instance's processing list.
//!
//! A job whose `dial_id` is the channel of a call still live on this
//! instance is refused: `failure` ("dial_id already has an active call on
//! this instance") is published on that channel, the job is dead-lettered
//! with that reason, nothing is dialled, and the live call goes on (its
//! control messages keep getting exactly one answer). The guard is per
//! instance: two instances each holding a live call with one `dial_id`
//! would both obey, and both answer, its control messages. Once a call has
//! ended (also while it lingers answering "call has ended"), its `dial_id`
//! may be used again. A job whose instance dies
//! before that goes back to the queue (see [`crate::service::queue`]); one
//! whose call was already placed is not dialled twice.

use crate::service::asp_call::{AspCall, CallSettings, StartError};
use crate::service::control::{ControlRouter, RouterConfig};
use crate::service::events::CallEvents;
use crate::service::job;
use crate::service::monitor::Monitor;
use crate::service::pacing::{Turn, Turns};
use crate::service::queue::{JobQueue, QueueConfig, QueueError, TakenJob};
use crate::service::stats::{CallMeter, Stats};
use crate::service::store::{RedisClient, StoreError};
use crate::switch::app::{Dialer, reject_unknown};
use crate::switch::{InboundClient, InboundConfig, OutboundConfig, OutboundListener};
use ipnet::IpNet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// Everything `serve` needs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// FreeSWITCH's event socket, `host:port`.
    pub esl_addr: String,
    /// Its password.
    pub esl_password: String,
    /// Redis URL(s).
    pub redis_url: String,
    /// Time allowed to connect to Redis.
    pub redis_timeout: Duration,
    /// The outbound listener's address.
    pub listen: SocketAddr,
    /// What FreeSWITCH dials back (`&socket(<advertise> async full)`).
    pub advertise: String,
    /// Networks allowed to connect to the listener.
    pub allow: Vec<IpNet>,
    /// The job list.
    pub jobs_key: String,
    /// The flow's settings (dial template, folders, timeouts).
    pub call: CallSettings,
    /// Most calls at once; more jobs wait in Redis.
    pub max_calls: usize,
    /// This instance's id (processing list, liveness key, leg filter).
    pub instance: String,
}

/// Why the agent could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Redis is unreachable or refused us.
    #[error(transparent)]
    Redis(#[from] StoreError),
    /// The job queue could not be opened.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// FreeSWITCH is unreachable or refused us.
    #[error(transparent)]
    FreeSwitch(#[from] crate::switch::Error),
    /// The socket address or instance id cannot go into a dial string.
    #[error(transparent)]
    Dial(#[from] crate::switch::app::DialError),
    /// The listen address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A running agent's parts, for tests and the demo.
pub struct Agent {
    /// Where the outbound listener listens.
    pub listen: SocketAddr,
    /// This instance's id.
    pub instance: String,
    monitor: Monitor,
    tasks: TaskTracker,
    cancel: CancellationToken,
}

impl Agent {
    /// Starts every part; returns once the agent takes jobs.
    pub async fn start(config: AgentConfig, cancel: CancellationToken) -> Result<Self, AgentError> {
        let redis = RedisClient::connect(&config.redis_url, config.redis_timeout).await?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| AgentError::Listen {
                    addr: config.listen,
                    source,
                })?;
        let listen = listener.local_addr().map_err(|source| AgentError::Listen {
            addr: config.listen,
            source,
        })?;
        let esl = InboundConfig::new(config.esl_addr.clone(), config.esl_password.clone());
        let (inbound, events) = InboundClient::connect(esl).await?;
        // The advertised address defaults to the bound one (port 0 in tests).
        let advertise = if config.advertise.ends_with(":0") {
            listen.to_string()
        } else {
            config.advertise.clone()
        };
        let (dialer, dispatcher) =
            Dialer::start(inbound.clone(), events, &advertise, &config.instance).await?;

        let tasks = TaskTracker::new();
        let outbound = OutboundListener::from_listener(
            listener,
            OutboundConfig {
                allow: config.allow.clone(),
                max_legs: config.max_calls.saturating_mul(3).max(1),
                ..OutboundConfig::default()
            },
        );
        let outbound_task =
            tasks.spawn(outbound.serve(dialer.handler(reject_unknown), cancel.child_token()));
        let (router, router_task) =
            ControlRouter::spawn(redis.clone(), RouterConfig::default(), cancel.child_token());
        let stats = Stats::default();
        let mut queue_config = QueueConfig::new(config.jobs_key.clone());
        queue_config.instance = config.instance.clone();
        queue_config.stats = stats.clone();
        let queue = JobQueue::open(&redis, queue_config).await?;
        let maintenance = queue.spawn_maintenance(cancel.child_token());
        let conn = redis.connection().await?;
        let monitor = Monitor::new(
            stats.clone(),
            inbound.clone(),
            router.clone(),
            conn.clone(),
            cancel.clone(),
        );
        let probe = monitor.spawn_switch_probe(cancel.child_token());
        monitor.watch("the outbound listener", &outbound_task);
        monitor.watch("the control router", &router_task);
        monitor.watch("the queue heartbeat", &maintenance);
        monitor.watch("the FreeSWITCH event router", &dispatcher);
        monitor.watch("the FreeSWITCH probe", &probe);

        // The switch's sessions-per-second limit, now and after reconnects.
        config.call.pacer.read_limit(&inbound).await;
        tasks.spawn(
            config
                .call
                .pacer
                .clone()
                .follow(inbound.clone(), cancel.child_token()),
        );
        let worker = Worker {
            queue: Arc::new(queue),
            dialer,
            router,
            inbound,
            conn,
            settings: config.call.clone(),
            calls: Arc::new(Semaphore::new(config.max_calls.max(1))),
            tasks: tasks.clone(),
            stats,
        };
        let stop = cancel.clone();
        let jobs_task = tasks.spawn(async move {
            worker.take_jobs(stop).await;
            dispatcher.abort();
            probe.abort();
            let _ = router_task.await;
            let _ = maintenance.await;
        });
        monitor.watch("the job loop", &jobs_task);
        tracing::info!(%listen, %advertise, instance = %config.instance, "agent started");
        Ok(Self {
            listen,
            instance: config.instance,
            monitor,
            tasks,
            cancel,
        })
    }

    /// The agent's health and metrics, for [`crate::ops`].
    pub fn monitor(&self) -> &Monitor {
        &self.monitor
    }

    /// Waits until the agent stopped (after `cancel`), with every call task.
    pub async fn stopped(self) {
        self.cancel.cancelled().await;
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// `redswitch serve`: runs until `cancel`.
pub async fn serve(config: AgentConfig, cancel: CancellationToken) -> Result<(), AgentError> {
    let agent = Agent::start(config, cancel).await?;
    agent.stopped().await;
    Ok(())
}

struct Worker {
    queue: Arc<JobQueue>,
    dialer: Dialer,
    router: ControlRouter,
    inbound: InboundClient,
    conn: crate::service::store::RedisConn,
    settings: CallSettings,
    calls: Arc<Semaphore>,
    tasks: TaskTracker,
    stats: Stats,
}

impl Worker {
    async fn take_jobs(&self, stop: CancellationToken) {
        let mut backoff = crate::backoff::Backoff::RECONNECT.attempts();
        let mut turns = Turns::default();
        while !stop.is_cancelled() {
            if !self.inbound.is_connected() {
                // No jobs while FreeSWITCH is away: they wait in Redis.
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_millis(200)) => continue,
                }
            }
            let permit = tokio::select! {
                () = stop.cancelled() => break,
                p = self.calls.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            // `take` blocks for at most its timeout; letting it finish keeps
            // a job from being moved while nobody waits for it.
            let taken = match self.queue.take().await {
                // The link dropped while `take` was blocked: the job waits.
                Ok(Some(job)) if !self.inbound.is_connected() => {
                    if let Err(error) = self.queue.give_back(&job).await {
                        tracing::warn!(%error, "could not return a job to the queue; the reaper will");
                    }
                    continue;
                }
                Ok(Some(job)) => {
                    backoff.reset();
                    // Dialled in the order taken, under the switch's rate.
                    let slot = self.settings.pacer.reserve(self.settings.caller_sessions());
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = slot.wait() => {}
                    }
                    job
                }
                Ok(None) => continue,
                Err(error) => {
                    tracing::warn!(%error, "taking a job failed; retrying");
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(backoff.next_delay()) => {}
                    }
                    continue;
                }
            };
            let turn = turns.take();
            let queue = self.queue.clone();
            let dialer = self.dialer.clone();
            let router = self.router.clone();
            let conn = self.conn.clone();
            let settings = self.settings.clone();
            let meter = self.stats.call();
            let span = tracing::info_span!("call", dial_id = tracing::field::Empty);
            self.tasks.spawn(
                async move {
                    let _permit = permit;
                    handle_job(queue, dialer, router, conn, settings, taken, meter, turn).await;
                }
                .instrument(span),
            );
        }
        match self.queue.release().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(jobs = n, "returned undecided jobs to the queue"),
            Err(error) => tracing::warn!(%error, "could not return undecided jobs"),
        }
    }
}

async fn handle_job(
    queue: Arc<JobQueue>,
    dialer: Dialer,
    router: ControlRouter,
    conn: crate::service::store::RedisConn,
    settings: CallSettings,
    taken: TakenJob,
    meter: CallMeter,
    turn: Turn,
) {
    let job = match job::parse(taken.raw()) {
        Ok(job) => job,
        Err(bad) => {
            if let Some(dial_id) = &bad.dial_id {
                tracing::Span::current().record("dial_id", tracing::field::display(dial_id));
            }
            if let Err(error) = queue.reject(&taken, &bad).await {
                tracing::error!(%error, "could not dead-letter a bad job");
            }
            return;
        }
    };
    tracing::Span::current().record("dial_id", tracing::field::display(&job.dial_id));
    let events = CallEvents::for_job(conn, &job);
    let dial_id = job.dial_id.clone();
    let started = AspCall::start(dialer, &router, settings, job, events, meter, turn).await;
    // Placed, or answered with `failure`: either way the job is decided. A
    // job refused for its reused dial_id is kept with the bad ones.
    let decided = match &started {
        Err(StartError::NotAttempted(refused)) if refused.refused => {
            queue.dead_letter(&taken, &refused.cause).await
        }
        Err(StartError::SwitchAway(error)) => {
            // Not decided: another instance (or this one, once FreeSWITCH
            // is back) will do it.
            tracing::warn!(%dial_id, %error, "FreeSWITCH went away; job returned to the queue");
            queue.give_back(&taken).await
        }
        _ => queue.ack(&taken).await.map(drop),
    };
    if let Err(error) = decided {
        tracing::error!(%dial_id, %error, "could not record the job's fate");
    }
    if let Ok(call) = started {
        call.run().await;
        tracing::debug!(%dial_id, "call ended");
    }
}
