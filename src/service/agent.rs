//! The agent (`redswitch serve`): takes jobs while FreeSWITCH is reachable,
//! runs each asp-call in its own task, and routes control messages.
//!
//! Startup fails with one clear error when Redis, FreeSWITCH or the
//! listen address cannot be used; after startup, losing either service is
//! survived: the inbound connection and the pub/sub router reconnect by
//! themselves, and no job is taken while FreeSWITCH is away (jobs wait in
//! Redis, where another instance may take them).
//!
//! Every write to Redis (events, history, active keys, claims, dead
//! letters, acknowledgements) goes through one [`Outbox`], in order, and
//! survives a Redis outage (see [`crate::service::outbox`]).
//!
//! Before dialling, a job is claimed (see [`crate::service::claims`]): a
//! job with the `dial_id` of a live call on any instance is refused
//! (`failure` "dial_id already has an active call", dead-lettered), and a
//! claimed job stays on this instance's processing list until its call
//! ended, so that should this instance die, another one closes the call out
//! instead of dialling it again.
//!
//! # Shutdown
//!
//! Cancelling the agent's token (SIGTERM or Ctrl-C in `serve`) starts a
//! drain: no job is taken from then on (a job whose take was under way
//! goes back to the queue undialled), while control, the leg listener and
//! the outbox go on until every live call has ended; then the undialled
//! jobs go back to the queue, the outbox is flushed (for up to 2 s) and
//! the agent stops. After the drain timeout, or at once on
//! [`Agent::hang_up_all`] (a second signal), every remaining leg is killed
//! with cause `MANAGER_REQUEST`; each call publishes its `hangup-event`s as
//! usual and ends. [`Agent::draining`] tells whether the drain has begun
//! (for `/ready`).

use crate::service::asp_call::{AspCall, CallSettings, StartError};
use crate::service::claims::{self, Claim, ClaimConfig, Claims};
use crate::service::control::{ControlRouter, RouterConfig};
use crate::service::events::{CallEvents, Event, publish_only_cmd};
use crate::service::job;
use crate::service::monitor::Monitor;
use crate::service::outbox::{DEFAULT_CAPACITY, Outbox, Receipt};
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
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// The default `--drain-timeout`.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(600);
/// The cause legs are killed with when the drain ends them: FreeSWITCH's
/// cause for a hangup asked through the API (its `hangup-event`s carry it).
pub const SHUTDOWN_CAUSE: &str = "MANAGER_REQUEST";
/// How long the outbox may take to flush once the last call ended.
const FINAL_FLUSH: Duration = Duration::from_secs(2);

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
    /// After the drain began, how long live calls may go on before they
    /// are hung up (`--drain-timeout`).
    pub drain_timeout: Duration,
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
    hangup: CancellationToken,
    draining: watch::Receiver<bool>,
    outbox: Outbox,
    claims: Claims,
}

impl Agent {
    /// Starts every part; returns once the agent takes jobs. Cancelling
    /// `cancel` starts the drain (see the module doc).
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

        // Stops the listener, the router and the maintenance once the last
        // call ended; the calls need them until then.
        let shutdown = CancellationToken::new();
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
            tasks.spawn(outbound.serve(dialer.handler(reject_unknown), shutdown.child_token()));
        let (router, router_task) = ControlRouter::spawn(
            redis.clone(),
            RouterConfig::default(),
            shutdown.child_token(),
        );
        let stats = Stats::default();
        let mut queue_config = QueueConfig::new(config.jobs_key.clone());
        queue_config.instance = config.instance.clone();
        queue_config.stats = stats.clone();
        let queue = JobQueue::open(&redis, queue_config).await?;
        let conn = redis.connection().await?;
        let outbox = Outbox::spawn(conn.clone(), DEFAULT_CAPACITY);
        let claims = Claims::new(
            conn.clone(),
            outbox.clone(),
            queue.keys().clone(),
            config.instance.clone(),
            // Claims outlive the longest call FreeSWITCH lets run.
            ClaimConfig {
                max_call_duration: config.call.max_call_duration,
            },
        );
        let maintenance = {
            let claims = claims.clone();
            let inbound = inbound.clone();
            queue.spawn_maintenance_with(shutdown.child_token(), move |jobs| {
                let claims = claims.clone();
                let inbound = inbound.clone();
                async move { claims.close_out(jobs, &inbound).await }
            })
        };
        let monitor = Monitor::new(
            stats.clone(),
            inbound.clone(),
            router.clone(),
            conn.clone(),
            cancel.clone(),
        );
        let probe = monitor.spawn_switch_probe(shutdown.child_token());
        monitor.watch("the outbound listener", &outbound_task);
        monitor.watch("the control router", &router_task);
        monitor.watch("the queue heartbeat", &maintenance);
        monitor.watch("the FreeSWITCH event router", &dispatcher);
        monitor.watch("the FreeSWITCH probe", &probe);
        {
            // The outbox's backlog, as the `redswitch_outbox_pending` gauge.
            let (outbox, gauge, stop) = (
                outbox.clone(),
                stats.outbox_pending.clone(),
                shutdown.clone(),
            );
            tokio::spawn(async move {
                loop {
                    gauge.set(i64::try_from(outbox.pending()).unwrap_or(i64::MAX));
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            });
        }

        // The switch's sessions-per-second limit, now and after reconnects.
        config.call.pacer.read_limit(&inbound).await;
        tasks.spawn(
            config
                .call
                .pacer
                .clone()
                .follow(inbound.clone(), shutdown.child_token()),
        );
        let (draining_tx, draining) = watch::channel(false);
        let hangup = CancellationToken::new();
        let worker = Worker {
            queue: Arc::new(queue),
            dialer,
            router,
            inbound,
            outbox: outbox.clone(),
            claims: claims.clone(),
            settings: config.call.clone(),
            calls: Arc::new(Semaphore::new(config.max_calls.max(1))),
            call_tasks: TaskTracker::new(),
            stats,
        };
        {
            // `/ready` turns false the moment the drain begins.
            let cancel = cancel.clone();
            tokio::spawn(async move {
                cancel.cancelled().await;
                draining_tx.send_replace(true);
            });
        }
        let stop = cancel.clone();
        let hangup_all = hangup.clone();
        let drain_timeout = config.drain_timeout;
        let jobs_task = tasks.spawn(async move {
            worker.take_jobs(&stop).await;
            worker.drain(drain_timeout, &hangup_all).await;
            // The calls' last writes (their jobs' fates among them) go
            // first, so `release` sees which jobs are really still claimed.
            let left = worker.outbox.flush(FINAL_FLUSH).await;
            worker.release().await;
            if left > 0 {
                tracing::error!(
                    entries = left,
                    "Redis unreachable at exit: events and state not written"
                );
            }
            shutdown.cancel();
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
            hangup,
            draining,
            outbox,
            claims,
        })
    }

    /// The agent's health and metrics, for [`crate::ops`].
    pub fn monitor(&self) -> &Monitor {
        &self.monitor
    }

    /// Whether the drain has begun (no new jobs are taken).
    pub fn draining(&self) -> watch::Receiver<bool> {
        self.draining.clone()
    }

    /// The outbox every write goes through (its pending count is a gauge).
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Live calls on this instance.
    pub fn live_calls(&self) -> usize {
        self.claims.live_calls()
    }

    /// Starts the drain if it has not begun, and hangs every call up now.
    pub fn hang_up_all(&self) {
        self.cancel.cancel();
        self.hangup.cancel();
    }

    /// A handle that does what [`hang_up_all`](Self::hang_up_all) does, for
    /// a signal handler.
    pub fn hangup_token(&self) -> CancellationToken {
        self.hangup.clone()
    }

    /// Waits until the agent stopped (after `cancel` and the drain).
    pub async fn stopped(self) {
        self.cancel.cancelled().await;
        self.tasks.close();
        self.tasks.wait().await;
    }
}

struct Worker {
    queue: Arc<JobQueue>,
    dialer: Dialer,
    router: ControlRouter,
    inbound: InboundClient,
    outbox: Outbox,
    claims: Claims,
    settings: CallSettings,
    calls: Arc<Semaphore>,
    call_tasks: TaskTracker,
    stats: Stats,
}

impl Worker {
    async fn take_jobs(&self, stop: &CancellationToken) {
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
                // The link dropped, or the drain began, while `take` was
                // blocked: the job waits, undialled.
                Ok(Some(job)) if !self.inbound.is_connected() || stop.is_cancelled() => {
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
            let meter = self.stats.call();
            let job = JobRun {
                queue: self.queue.clone(),
                dialer: self.dialer.clone(),
                router: self.router.clone(),
                outbox: self.outbox.clone(),
                claims: self.claims.clone(),
                settings: self.settings.clone(),
            };
            let span = tracing::info_span!("call", dial_id = tracing::field::Empty);
            self.call_tasks.spawn(
                async move {
                    let _permit = permit;
                    job.run(taken, turn, meter).await;
                }
                .instrument(span),
            );
        }
    }

    /// Waits for every call to end; past `timeout`, or once `hangup` fires,
    /// kills their legs (again every second, for legs dialled meanwhile).
    async fn drain(&self, timeout: Duration, hangup: &CancellationToken) {
        self.call_tasks.close();
        let live = self.call_tasks.len();
        if live > 0 {
            tracing::info!(
                calls = live,
                ?timeout,
                "draining: no new jobs, waiting for live calls"
            );
        }
        tokio::select! {
            () = self.call_tasks.wait() => return,
            () = tokio::time::sleep(timeout) => {
                tracing::warn!(calls = self.call_tasks.len(), "drain timeout: hanging up the remaining calls");
            }
            () = hangup.cancelled() => {
                tracing::warn!(calls = self.call_tasks.len(), "hanging up every call now");
            }
        }
        loop {
            for uuid in self.claims.live_legs() {
                let _ = self.dialer.kill(&uuid, SHUTDOWN_CAUSE).await;
            }
            tokio::select! {
                () = self.call_tasks.wait() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Gives the undialled jobs back and withdraws this instance.
    async fn release(&self) {
        match self.queue.release().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(jobs = n, "returned undialled jobs to the queue"),
            Err(error) => {
                tracing::warn!(%error, "could not return undialled jobs; the reaper will")
            }
        }
    }
}

/// What one job's task needs.
struct JobRun {
    queue: Arc<JobQueue>,
    dialer: Dialer,
    router: ControlRouter,
    outbox: Outbox,
    claims: Claims,
    settings: CallSettings,
}

impl JobRun {
    /// Runs one job; `turn` keeps originates in the order jobs were taken
    /// (released, by being dropped, on every early return).
    async fn run(self, taken: TakenJob, turn: Turn, meter: CallMeter) {
        let job = match job::parse(taken.raw()) {
            Ok(job) => job,
            Err(bad) => {
                if let Some(dial_id) = &bad.dial_id {
                    tracing::Span::current().record("dial_id", tracing::field::display(dial_id));
                }
                let reason = bad.reason();
                tracing::warn!(%reason, "bad job dead-lettered");
                if let Some(dial_id) = &bad.dial_id {
                    let failure = Event::Failure {
                        cause: reason.clone(),
                    };
                    let notice = vec![publish_only_cmd(dial_id, &failure)];
                    if let Err(error) = self.outbox.push("bad-job", notice) {
                        tracing::error!(%error, "could not queue a failure notice");
                    }
                }
                self.dead_letter(taken, &reason);
                return;
            }
        };
        tracing::Span::current().record("dial_id", tracing::field::display(&job.dial_id));
        let dial_id = job.dial_id.clone();
        let switch = claims::core_uuid(self.dialer.inbound())
            .await
            .unwrap_or_default();
        let record = match self.claims.claim(&taken, &job, &switch).await {
            Ok(Claim::Claimed(record)) => record,
            Ok(Claim::Held { by }) => {
                tracing::warn!(%dial_id, holder = %by, "job refused: its dial_id has a live call");
                let events = CallEvents::for_job(self.outbox.clone(), &job);
                let failure = Event::Failure {
                    cause: claims::DIAL_ID_CLAIMED.into(),
                };
                if let Err(error) = events.publish(&failure).await {
                    tracing::warn!(%dial_id, %error, "could not publish failure");
                }
                self.dead_letter(taken, claims::DIAL_ID_CLAIMED);
                return;
            }
            Err(error) => {
                // Unclaimed, so undialled: another instance (or this one)
                // will do it.
                tracing::warn!(%dial_id, %error, "could not claim the job; returned to the queue");
                if let Err(error) = self.queue.give_back(&taken).await {
                    tracing::warn!(%error, "could not return a job to the queue; the reaper will");
                }
                return;
            }
        };
        let events = self.claims.events(&record, &job);
        let started = AspCall::start(
            self.dialer.clone(),
            &self.router,
            self.settings.clone(),
            job,
            events.clone(),
            turn,
            meter,
        )
        .await;
        match started {
            Err(StartError::SwitchAway(error)) => {
                // Nothing was dialled: another instance (or this one, once
                // FreeSWITCH is back) will do it.
                tracing::warn!(%dial_id, %error, "FreeSWITCH went away; job returned to the queue");
                let receipt = self.claims.give_back(&record, &taken);
                self.forget_once_written(receipt, taken);
                return;
            }
            Err(StartError::NotAttempted(refused)) if refused.refused => {
                self.queue.config().stats.jobs_dead_lettered.inc();
                let dead_letter = vec![self.queue.dead_letter_cmd(&taken, &refused.cause)];
                if let Err(error) = self.outbox.push("dead-letter", dead_letter) {
                    tracing::error!(%error, "could not queue a dead letter");
                }
            }
            Err(StartError::NotAttempted(_)) => {}
            Ok(call) => {
                call.run().await;
                tracing::debug!(%dial_id, "call ended");
            }
        }
        let receipt = self.claims.finish(&record, &taken, &events);
        self.forget_once_written(receipt, taken);
    }

    /// Keeps a job that will not run on the dead-letter list and
    /// acknowledges it, through the outbox.
    fn dead_letter(&self, taken: TakenJob, reason: &str) {
        self.queue.config().stats.jobs_dead_lettered.inc();
        let cmds = vec![
            self.queue.dead_letter_cmd(&taken, reason),
            self.queue.ack_cmd(&taken),
        ];
        let receipt = self
            .outbox
            .push("dead-letter", cmds)
            .inspect_err(|error| tracing::error!(%error, "could not queue a dead letter"))
            .ok();
        self.forget_once_written(receipt, taken);
    }

    /// The queue keeps holding a job until its removal from the processing
    /// list is written (however long Redis is away): a take retried after
    /// a lost reply must not mistake it for a job nobody holds.
    fn forget_once_written(&self, receipt: Option<Receipt>, taken: TakenJob) {
        let Some(receipt) = receipt else { return };
        let queue = self.queue.clone();
        tokio::spawn(async move {
            if receipt.done().await.is_some() {
                queue.forget(&taken);
            }
        });
    }
}
