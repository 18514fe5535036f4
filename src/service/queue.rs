//! Reliable, at-least-once taking of jobs from the job list (docs/PROTOCOL.md).
//!
//! Producers `RPUSH` jobs onto the job list; each Redswitch instance moves
//! the oldest job atomically into a processing list of its own
//! (`BLMOVE … LEFT RIGHT`), handles it, and removes it from there once the
//! job is done: its call ended (see [`crate::service::claims`]), or the job
//! was refused ([`JobQueue::dead_letter`] for a bad job). An instance
//! proves it is alive by refreshing a liveness key with a short expiry.
//! Every instance runs a reaper: an instance whose liveness key expired is
//! dead, and the jobs of its processing list it had not claimed (never
//! dialled) are moved back to the **head** of the job list, so those jobs
//! are redone first by a live instance. Claimed jobs are never redone:
//! they are handed to the caller of [`JobQueue::reap_dead`] to be closed
//! out. A job is therefore never silently dropped, and never dialled twice.
//!
//! # Keys
//!
//! With `J` the job-list key (`--jobs-key`, default `talkiq-asp.calls`) and
//! `T` the hash tag `{J}` (or `J`'s own hash tag, when it has one):
//!
//! | key | type | holds | expiry |
//! |---|---|---|---|
//! | `J` | list | jobs waiting, oldest at the head | none (producers own it) |
//! | `T.processing.<instance>` | list | jobs taken by `<instance>` whose call has not ended | none: emptied by `ack` or by a reaper; Redis deletes it when empty |
//! | `T.claim.<dial_id>` | hash | the live call of that `dial_id`: owner, switch, legs (see [`super::claims`]) | the maximum call duration plus 15 min; deleted when the call ends |
//! | `T.alive.<instance>` | string | `<instance>` is alive (value: last beat, unix ms) | liveness TTL (default 15 s), re-set by each heartbeat (every TTL/3) |
//! | `T.instances` | set | instances that may own a processing list | none: an instance is removed once reaped, re-added by each heartbeat |
//! | `J.dead` | list | dead letters `{"reason":…,"job":"<raw job>","at":<unix ms>}`, newest last | none; capped to the newest 10,000 entries |
//!
//! `<instance>` is a random id per process start (1–128 of `[A-Za-z0-9_-]`).
//!
//! # Redis Cluster
//!
//! `J`, the processing lists, liveness keys and the instance set share one
//! hash slot: the tag `{J}` hashes exactly like the untagged key `J`, so
//! `BLMOVE`/`LMOVE` between them is a single-slot command. The dead-letter
//! list (its name is fixed by the contract) may sit in another slot; it is only
//! written with single-key commands.
//!
//! # Races
//!
//! The reaper moves a dead instance's unclaimed jobs in one script per
//! processing list, so two reapers racing cannot lose or duplicate a job,
//! nor requeue a job that is claimed at that moment. An instance that was
//! only late (its key expired, then it beat again) may find an undialled
//! job it held requeued; its `ack` then finds nothing to remove and says
//! so in the log, and the job's claim (taken by whichever instance dials
//! first) keeps it from being dialled twice.
//!
//! # Broken connections
//!
//! Every operation runs under [`with_retry`]: an attempt that failed
//! because the connection broke (a Redis restart, a failover, a killed
//! client) is re-run on a fresh connection with backoff, for up to 10 s.
//! Each operation's doc says whether it is idempotent; those that are not
//! by nature are made so:
//!
//! - [`take`](JobQueue::take) (`BLMOVE`) may have moved a job although its
//!   reply was lost. Before trying again it looks at its processing list for
//!   a job it does not hold (this process keeps a count of the jobs it
//!   holds) and takes that one.
//! - [`ack`](JobQueue::ack) (`LREM`) compares the job's copies on the list
//!   with the copies held before removing one again.
//! - [`give_back`](JobQueue::give_back) is a Lua script that pushes the job
//!   back only if it removed it from the processing list.
//! - [`dead_letter`](JobQueue::dead_letter) is a Lua script that looks for
//!   its entry (which carries its own timestamp) before pushing it.
//! - the reaper's requeue is one Lua script: a second run after a lost
//!   reply finds the jobs already moved.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::AsyncCommands;
use redis::aio::ConnectionLike;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::events::{Event, eval, publish_only_cmd};
use super::job::BadJob;
use super::retry::{Idempotency, RetryPolicy, with_retry, with_retry_policy};
use super::store::{RedisClient, RedisConn, StoreError};
use super::validate::{Id, ValidationError};

/// The default job list.
pub const DEFAULT_JOBS_KEY: &str = "talkiq-asp.calls";
/// Default liveness TTL: long enough to ride out a GC-free but busy Redis
/// or a short network hiccup, short enough that a dead instance's jobs wait
/// at most this long.
pub const DEFAULT_LIVENESS_TTL: Duration = Duration::from_secs(15);
/// Default cap of the dead-letter list.
pub const DEFAULT_DEAD_CAP: usize = 10_000;
/// How long one [`JobQueue::take`] retries a broken connection.
const TAKE_RETRIES_FOR: Duration = Duration::from_secs(3);

/// Errors of the job queue.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The job-list key cannot be used (empty, too long, whitespace, or a `}`
    /// that breaks hash tagging).
    #[error("invalid jobs key: {0}")]
    BadJobsKey(&'static str),
    /// The instance id broke the id grammar.
    #[error(transparent)]
    BadInstance(#[from] ValidationError),
    /// Connecting to Redis failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A Redis command failed.
    #[error("job queue: {0}")]
    Redis(#[from] redis::RedisError),
}

/// How the queue behaves.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// The job list (`--jobs-key`).
    pub jobs_key: String,
    /// This process's id; names its processing list and liveness key.
    pub instance: String,
    /// How long the liveness key lives without a heartbeat.
    pub liveness_ttl: Duration,
    /// How often the heartbeat re-sets the liveness key.
    pub heartbeat_every: Duration,
    /// How often the reaper looks for dead instances.
    pub reap_every: Duration,
    /// How long one `take` blocks waiting for a job.
    pub take_timeout: Duration,
    /// How many dead letters are kept.
    pub dead_cap: usize,
    /// Where jobs taken, requeued and dead-lettered are counted.
    pub stats: super::stats::Stats,
}

impl QueueConfig {
    /// Defaults for `jobs_key`, with a fresh random instance id.
    pub fn new(jobs_key: impl Into<String>) -> Self {
        let ttl = DEFAULT_LIVENESS_TTL;
        Self {
            jobs_key: jobs_key.into(),
            instance: uuid::Uuid::new_v4().simple().to_string(),
            liveness_ttl: ttl,
            heartbeat_every: ttl / 3,
            reap_every: Duration::from_secs(5),
            take_timeout: Duration::from_secs(1),
            dead_cap: DEFAULT_DEAD_CAP,
            stats: super::stats::Stats::default(),
        }
    }

    /// Sets the liveness TTL, with the heartbeat at a third of it so two
    /// beats can be missed before the instance is declared dead.
    pub fn with_liveness_ttl(mut self, ttl: Duration) -> Self {
        self.liveness_ttl = ttl;
        self.heartbeat_every = ttl / 3;
        self
    }
}

/// The hash tag that puts a key in the same slot as `key`: `key`'s own tag
/// if it has one (Redis hashes only the part between the first `{` and the
/// next `}`, when not empty), else `key` itself.
fn same_slot_tag(key: &str) -> Result<&str, QueueError> {
    if let Some(open) = key.find('{')
        && let Some(len) = key[open + 1..].find('}')
        && len > 0
    {
        return Ok(&key[open + 1..open + 1 + len]);
    }
    if key.contains('}') {
        // `{key}` would end its tag at that brace and land elsewhere.
        return Err(QueueError::BadJobsKey("'}' outside a hash tag"));
    }
    Ok(key)
}

/// The key names of a queue, as seen by one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueKeys {
    /// The job list.
    pub jobs: String,
    /// This instance's processing list.
    pub processing: String,
    /// This instance's liveness key.
    pub alive: String,
    /// The set of instances that may own a processing list.
    pub instances: String,
    /// The dead-letter list.
    pub dead: String,
    tag: String,
}

impl QueueKeys {
    /// Key names for `jobs_key` and `instance`.
    pub fn new(jobs_key: &str, instance: &str) -> Result<Self, QueueError> {
        if jobs_key.is_empty() {
            return Err(QueueError::BadJobsKey("empty"));
        }
        if jobs_key.len() > 512 {
            return Err(QueueError::BadJobsKey("longer than 512 bytes"));
        }
        if jobs_key
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(QueueError::BadJobsKey("whitespace or control character"));
        }
        Id::parse("instance", instance)?;
        let tag = format!("{{{}}}", same_slot_tag(jobs_key)?);
        Ok(Self {
            jobs: jobs_key.to_owned(),
            processing: format!("{tag}.processing.{instance}"),
            alive: format!("{tag}.alive.{instance}"),
            instances: format!("{tag}.instances"),
            dead: format!("{jobs_key}.dead"),
            tag,
        })
    }

    /// The processing list of any instance.
    pub fn processing_of(&self, instance: &str) -> String {
        format!("{}.processing.{instance}", self.tag)
    }

    /// The liveness key of any instance.
    pub fn alive_of(&self, instance: &str) -> String {
        format!("{}.alive.{instance}", self.tag)
    }

    /// The claim of a `dial_id` (see [`crate::service::claims`]); in the
    /// queue's slot, so a claim and a processing list change together.
    pub fn claim(&self, dial_id: &str) -> String {
        format!("{}{dial_id}", self.claim_prefix())
    }

    /// What every claim key starts with.
    pub fn claim_prefix(&self) -> String {
        format!("{}.claim.", self.tag)
    }
}

/// Moves the unclaimed jobs of a processing list back to the head of the
/// job list (newest first, so the oldest ends up first) and leaves the jobs
/// `ARGV[2]` holds a claim for: those were (or may have been) dialled and
/// are closed out instead (see [`crate::service::claims`]). One script, so
/// a job is never both queued and claimed, and racing reapers split the
/// work.
///
/// KEYS: processing list, job list. ARGV: claim prefix, instance.
/// Returns `{moved, {claimed raw jobs}}`.
const REQUEUE_SCRIPT: &str = r"
local items = redis.call('LRANGE', KEYS[1], 0, -1)
local moved = 0
local kept = {}
for i = #items, 1, -1 do
  local raw = items[i]
  local ok, job = pcall(cjson.decode, raw)
  local claimed = false
  if ok and type(job) == 'table' and type(job['dial_id']) == 'string' then
    claimed = redis.call('HGET', ARGV[1] .. job['dial_id'], 'instance') == ARGV[2]
  end
  if claimed then
    table.insert(kept, raw)
  else
    redis.call('LREM', KEYS[1], -1, raw)
    redis.call('LPUSH', KEYS[2], raw)
    moved = moved + 1
  end
end
return {moved, kept}
";

/// Appends a dead letter unless it is already among the newest 1,000 (a
/// retry after a lost reply), then caps the list.
///
/// KEYS: dead-letter list. ARGV: entry, cap.
const DEAD_LETTER_SCRIPT: &str = r"
if redis.call('LPOS', KEYS[1], ARGV[1], 'RANK', -1, 'MAXLEN', 1000) then return 0 end
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[2]), -1)
return 1
";

/// A job taken from the list: its raw bytes, exactly as the producer pushed
/// them (the processing list is searched by value to acknowledge it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TakenJob {
    raw: Vec<u8>,
}

/// What one reaper pass found.
#[derive(Debug, Default)]
pub struct Reaped {
    /// Jobs moved back to the job list (never dialled).
    pub requeued: usize,
    /// Jobs a dead instance holds a claim for, with that instance: they
    /// were dialled and must be closed out, never redone.
    pub claimed: Vec<(String, TakenJob)>,
}

impl TakenJob {
    /// A job as read from a processing list.
    pub(crate) fn from_raw(raw: Vec<u8>) -> Self {
        Self { raw }
    }

    /// The raw job.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }
}

/// Now, in unix milliseconds.
/// Now, in unix milliseconds (the timestamps kept in Redis).
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The JSON kept on the dead-letter list. The raw job is kept as a string
/// (invalid UTF-8 replaced by U+FFFD) so the entry is always valid JSON.
pub fn dead_letter_entry(raw: &[u8], reason: &str, at_unix_ms: u64) -> String {
    serde_json::json!({
        "reason": reason,
        "job": String::from_utf8_lossy(raw),
        "at": at_unix_ms,
    })
    .to_string()
}

/// Pushes a raw job onto the job list (what producers do; used by
/// `redswitch push` and tests). Not idempotent (a second `RPUSH` queues the
/// job twice), so not retried: the producer decides.
pub async fn push_job<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    jobs_key: &str,
    raw: &[u8],
) -> Result<(), QueueError> {
    conn.rpush::<_, _, ()>(jobs_key, raw).await?;
    Ok(())
}

struct Inner {
    config: QueueConfig,
    keys: QueueKeys,
    /// Shared multiplexed connection for the quick commands.
    conn: RedisConn,
    /// A connection of its own for `BLMOVE`, which blocks the connection.
    blocking: RedisConn,
    /// Copies of each raw job this process took and has not decided, to
    /// tell a job a lost `BLMOVE` reply left on the processing list from
    /// the jobs being handled. A std mutex: never held across an await.
    held: Mutex<HashMap<Vec<u8>, usize>>,
    /// The last `take` failed: a job may be on the processing list that
    /// nobody holds; the next `take` looks first.
    suspect: AtomicBool,
}

impl Inner {
    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, usize>> {
        // A poisoned map is still consistent: each operation is one update.
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn hold(&self, raw: &[u8]) {
        *self.held().entry(raw.to_vec()).or_default() += 1;
    }

    fn release_hold(&self, raw: &[u8]) {
        let mut held = self.held();
        if let Some(n) = held.get_mut(raw) {
            *n -= 1;
            if *n == 0 {
                held.remove(raw);
            }
        }
    }

    fn held_copies(&self, raw: &[u8]) -> usize {
        self.held().get(raw).copied().unwrap_or(0)
    }
}

/// Moves a job from the processing list (`KEYS[1]`) back to the head of
/// the job list (`KEYS[2]`) only if it was still there: running it twice
/// gives the job back once.
const GIVE_BACK: &str = r"
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
  redis.call('LPUSH', KEYS[2], ARGV[1])
  return 1
end
return 0
";

/// One instance's view of the job queue. Clones share the connections.
#[derive(Clone)]
pub struct JobQueue {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for JobQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobQueue")
            .field("keys", &self.inner.keys)
            .finish()
    }
}

impl JobQueue {
    /// Opens the queue for this instance and announces it alive (one
    /// heartbeat), so no reaper takes its jobs from the first take on.
    pub async fn open(client: &RedisClient, config: QueueConfig) -> Result<Self, QueueError> {
        let keys = QueueKeys::new(&config.jobs_key, &config.instance)?;
        let conn = client.connection().await?;
        // The response must be allowed to take the whole block time.
        let blocking = client
            .connection_with_timeout(Some(config.take_timeout + Duration::from_secs(5)))
            .await?;
        let queue = Self {
            inner: Arc::new(Inner {
                config,
                keys,
                conn,
                blocking,
                held: Mutex::new(HashMap::new()),
                suspect: AtomicBool::new(false),
            }),
        };
        queue.heartbeat().await?;
        Ok(queue)
    }

    /// The key names used.
    pub fn keys(&self) -> &QueueKeys {
        &self.inner.keys
    }

    /// The configuration used.
    pub fn config(&self) -> &QueueConfig {
        &self.inner.config
    }

    /// Re-sets this instance's liveness key and registers it. Returns
    /// whether the key was still there: `false` means other instances may
    /// have requeued this instance's jobs. Idempotent (a retry after a lost
    /// reply finds the key it set itself).
    pub async fn heartbeat(&self) -> Result<bool, QueueError> {
        let keys = &self.inner.keys;
        let ttl_ms = u64::try_from(self.inner.config.liveness_ttl.as_millis()).unwrap_or(u64::MAX);
        let previous = with_retry("heartbeat", Idempotency::Idempotent, |_| {
            let mut conn = self.inner.conn.clone();
            async move {
                // Same slot, so a transaction works on a cluster too.
                let (previous,): (Option<String>,) = redis::pipe()
                    .atomic()
                    .cmd("SET")
                    .arg(&keys.alive)
                    .arg(unix_ms())
                    .arg("PX")
                    .arg(ttl_ms.max(1))
                    .arg("GET")
                    .sadd(&keys.instances, &self.inner.config.instance)
                    .ignore()
                    .query_async(&mut conn)
                    .await?;
                Ok(previous)
            }
        })
        .await?;
        Ok(previous.is_some())
    }

    /// Takes the oldest job, waiting up to the configured take timeout;
    /// `None` when none came. The job is on this instance's processing list
    /// until [`ack`](Self::ack) or [`dead_letter`](Self::dead_letter).
    ///
    /// Do not cancel this future: a job Redis moves while nobody waits for
    /// the answer stays on the processing list until [`release`](Self::release)
    /// or this instance's death. Call it in a loop and check for shutdown
    /// between calls; the take timeout bounds the wait.
    ///
    /// Not idempotent by nature (a second `BLMOVE` takes a second job);
    /// made safe by a check before the retry: after a connection broke with
    /// the command out, a job on the processing list that this process does
    /// not hold is the one that was moved, and is taken instead.
    ///
    /// It retries for a few seconds only, so a shutdown is not held up while
    /// Redis is away; the caller's loop goes on trying, and the next call
    /// still checks first if this one failed.
    pub async fn take(&self) -> Result<Option<TakenJob>, QueueError> {
        let keys = &self.inner.keys;
        let check_first = self.inner.suspect.swap(false, Ordering::Relaxed);
        let policy = RetryPolicy {
            give_up_after: TAKE_RETRIES_FOR,
            ..RetryPolicy::default()
        };
        let taken = with_retry_policy(
            &policy,
            "take",
            Idempotency::Idempotent,
            |attempt| async move {
                if (attempt.maybe_applied || check_first)
                    && let Some(raw) = self.unheld().await?
                {
                    tracing::info!("took the job a broken connection left on the processing list");
                    return Ok(Some(raw));
                }
                let mut conn = self.inner.blocking.clone();
                redis::cmd("BLMOVE")
                    .arg(&keys.jobs)
                    .arg(&keys.processing)
                    .arg("LEFT")
                    .arg("RIGHT")
                    .arg(self.inner.config.take_timeout.as_secs_f64())
                    .query_async::<Option<Vec<u8>>>(&mut conn)
                    .await
            },
        )
        .await;
        let raw = taken.inspect_err(|_| self.inner.suspect.store(true, Ordering::Relaxed))?;
        if raw.is_some() {
            self.inner.config.stats.jobs_taken.inc();
        }
        Ok(raw.map(|raw| {
            self.inner.hold(&raw);
            TakenJob { raw }
        }))
    }

    /// A job on this instance's processing list that this process does not
    /// hold: one whose `BLMOVE` reply was lost.
    async fn unheld(&self) -> Result<Option<Vec<u8>>, redis::RedisError> {
        let mut conn = self.inner.conn.clone();
        let listed: Vec<Vec<u8>> = conn.lrange(&self.inner.keys.processing, 0, -1).await?;
        let mut seen: HashMap<&[u8], usize> = HashMap::new();
        for raw in &listed {
            *seen.entry(raw).or_default() += 1;
        }
        Ok(seen
            .into_iter()
            .find(|(raw, n)| *n > self.inner.held_copies(raw))
            .map(|(raw, _)| raw.to_vec()))
    }

    /// Copies of `raw` on this instance's processing list.
    async fn listed_copies(&self, raw: &[u8]) -> Result<usize, redis::RedisError> {
        let mut conn = self.inner.conn.clone();
        let at: Vec<i64> = redis::cmd("LPOS")
            .arg(&self.inner.keys.processing)
            .arg(raw)
            .arg("COUNT")
            .arg(0)
            .query_async(&mut conn)
            .await?;
        Ok(at.len())
    }

    /// The job's fate is decided: removes it from the processing list.
    /// Returns `false` when it was no longer there (a reaper requeued it
    /// because this instance looked dead).
    ///
    /// Idempotent with a check: after a connection broke with the `LREM`
    /// out, fewer copies on the list than this process holds means it was
    /// removed.
    pub async fn ack(&self, job: &TakenJob) -> Result<bool, QueueError> {
        let removed = with_retry("ack", Idempotency::Idempotent, |attempt| async move {
            if attempt.maybe_applied
                && self.listed_copies(&job.raw).await? < self.inner.held_copies(&job.raw)
            {
                return Ok(1);
            }
            let mut conn = self.inner.conn.clone();
            conn.lrem::<_, _, i64>(&self.inner.keys.processing, 1, &job.raw)
                .await
        })
        .await?;
        self.inner.release_hold(&job.raw);
        if removed == 0 {
            tracing::warn!(
                processing = %self.inner.keys.processing,
                "acknowledged job was not on the processing list; it may run twice"
            );
        }
        Ok(removed > 0)
    }

    /// Forgets `job` once its `LREM` was written through an outbox (see
    /// [`ack_cmd`](Self::ack_cmd)); until then this process still holds it,
    /// so a take retried after a lost reply does not mistake it for a job
    /// nobody holds.
    pub fn forget(&self, job: &TakenJob) {
        self.inner.release_hold(&job.raw);
    }

    /// The `LREM` that acknowledges `job` (idempotent: a second one
    /// removes nothing); call [`forget`](Self::forget) once it is written.
    pub fn ack_cmd(&self, job: &TakenJob) -> redis::Cmd {
        let mut cmd = redis::cmd("LREM");
        cmd.arg(&self.inner.keys.processing).arg(1).arg(&job.raw);
        cmd
    }

    /// Puts an undecided job back at the head of the job list (FreeSWITCH
    /// went away before the call could be placed), atomically so it is
    /// never both queued and in flight, nor lost. Idempotent: a Lua script
    /// pushes it back only if it was still on the processing list.
    pub async fn give_back(&self, job: &TakenJob) -> Result<(), QueueError> {
        let keys = &self.inner.keys;
        with_retry("give back", Idempotency::Idempotent, |_| {
            let mut conn = self.inner.conn.clone();
            // EVAL rather than EVALSHA: the script is short, and a
            // restarted Redis has an empty script cache.
            let mut eval = redis::cmd("EVAL");
            eval.arg(GIVE_BACK)
                .arg(2)
                .arg(&keys.processing)
                .arg(&keys.jobs)
                .arg(&job.raw);
            async move { eval.query_async::<i64>(&mut conn).await }
        })
        .await?;
        self.inner.release_hold(&job.raw);
        self.inner.config.stats.jobs_requeued.inc();
        Ok(())
    }

    /// Keeps `job` on the dead-letter list with `reason`, then acknowledges
    /// it. Written first, removed second: a crash in between leaves the job
    /// both dead-lettered and requeued, never lost.
    ///
    /// Idempotent with a check: after a connection broke with the push out,
    /// the entry (unique by its timestamp) is looked for before pushing it
    /// again. The dead-letter list may be in another cluster slot than the
    /// processing list, so no script can do both.
    pub async fn dead_letter(&self, job: &TakenJob, reason: &str) -> Result<(), QueueError> {
        let cmd = self.dead_letter_cmd(job, reason);
        with_retry("dead letter", Idempotency::Idempotent, |_| {
            let mut conn = self.inner.conn.clone();
            let cmd = &cmd;
            async move { cmd.query_async::<()>(&mut conn).await }
        })
        .await?;
        self.inner.config.stats.jobs_dead_lettered.inc();
        self.ack(job).await?;
        Ok(())
    }

    /// The command that keeps `job` on the dead-letter list with `reason`
    /// (idempotent: an entry already among the newest is not added again).
    pub fn dead_letter_cmd(&self, job: &TakenJob, reason: &str) -> redis::Cmd {
        let entry = dead_letter_entry(&job.raw, reason, unix_ms());
        let cap = self.inner.config.dead_cap.max(1).to_string();
        eval(
            DEAD_LETTER_SCRIPT,
            &[&self.inner.keys.dead],
            &[&entry, &cap],
        )
    }

    /// Refuses a bad job publishes a `failure` on its `dial_id`
    /// when that is valid, then dead-letters it with the reason. Nothing is
    /// written to history: a bad job's `org_id`/`user_id` cannot be trusted
    /// to build key names. The `PUBLISH` is not idempotent and is retried
    /// only when Redis certainly did not run it: the notice is at most once,
    /// the dead letter is the record.
    pub async fn reject(&self, job: &TakenJob, bad: &BadJob) -> Result<(), QueueError> {
        let reason = bad.reason();
        if let Some(dial_id) = &bad.dial_id {
            let failure = Event::Failure {
                cause: reason.clone(),
            };
            let notice = with_retry("failure notice", Idempotency::NotIdempotent, |_| {
                let mut conn = self.inner.conn.clone();
                let failure = &failure;
                async move {
                    publish_only_cmd(dial_id, failure)
                        .query_async::<()>(&mut conn)
                        .await
                }
            })
            .await;
            // The dead letter matters more than the notice: keep going.
            if let Err(e) = notice {
                tracing::warn!(%dial_id, error = %e, "could not publish failure for bad job");
            }
        }
        tracing::warn!(reason = %reason, "bad job dead-lettered");
        self.dead_letter(job, &reason).await
    }

    /// Moves the unclaimed jobs of `instance`'s processing list back to
    /// the head of the job list; returns how many moved and the jobs
    /// `instance` holds a claim for, which stay (see [`REQUEUE_SCRIPT`]).
    async fn requeue(&self, instance: &str) -> Result<(usize, Vec<TakenJob>), QueueError> {
        let keys = &self.inner.keys;
        let cmd = eval(
            REQUEUE_SCRIPT,
            &[&keys.processing_of(instance), &keys.jobs],
            &[&keys.claim_prefix(), instance],
        );
        // Idempotent: a second run finds the moved jobs gone.
        let (moved, kept): (usize, Vec<Vec<u8>>) =
            with_retry("requeue", Idempotency::Idempotent, |_| {
                let mut conn = self.inner.conn.clone();
                let cmd = &cmd;
                async move { cmd.query_async(&mut conn).await }
            })
            .await?;
        self.inner
            .config
            .stats
            .jobs_requeued
            .inc_by(u64::try_from(moved).unwrap_or(u64::MAX));
        Ok((moved, kept.into_iter().map(TakenJob::from_raw).collect()))
    }

    /// One reaper pass: requeues the jobs of every other instance whose
    /// liveness key expired and forgets those instances. Returns how many
    /// jobs went back. Claimed jobs are left for [`reap_dead`](Self::reap_dead)'s
    /// caller to close out.
    pub async fn reap(&self) -> Result<usize, QueueError> {
        Ok(self.reap_dead().await?.requeued)
    }

    /// One reaper pass: requeues every dead instance's unclaimed jobs and
    /// returns its claimed ones (to be closed out, never redone). An
    /// instance is forgotten once its processing list is empty.
    pub async fn reap_dead(&self) -> Result<Reaped, QueueError> {
        let keys = &self.inner.keys;
        let mut conn = self.inner.conn.clone();
        let instances: Vec<String> = conn.smembers(&keys.instances).await?;
        let mut reaped = Reaped::default();
        for instance in instances {
            if instance == self.inner.config.instance {
                continue;
            }
            let alive: bool = conn.exists(keys.alive_of(&instance)).await?;
            if alive {
                continue;
            }
            let (moved, claimed) = self.requeue(&instance).await?;
            if claimed.is_empty() {
                // If the instance was only late it re-registers on its next beat.
                conn.srem::<_, _, ()>(&keys.instances, &instance).await?;
            }
            if moved > 0 {
                tracing::warn!(%instance, jobs = moved, "requeued the jobs of a dead instance");
            }
            reaped.requeued += moved;
            reaped
                .claimed
                .extend(claimed.into_iter().map(|job| (instance.clone(), job)));
        }
        Ok(reaped)
    }

    /// Graceful exit: gives this instance's unclaimed jobs back to the head
    /// of the job list and withdraws its liveness. Call after the calls
    /// ended. A job still claimed stays (it was dialled: another
    /// instance's reaper closes it out). Returns how many jobs went back.
    pub async fn release(&self) -> Result<usize, QueueError> {
        let keys = &self.inner.keys;
        let (moved, claimed) = self.requeue(&self.inner.config.instance).await?;
        if !claimed.is_empty() {
            tracing::warn!(
                jobs = claimed.len(),
                "claimed jobs left for another instance to close out"
            );
        }
        // With claimed jobs left, the instance stays listed so that a
        // reaper finds it dead and closes those calls out.
        let forget = claimed.is_empty();
        with_retry("release", Idempotency::Idempotent, |_| {
            let mut conn = self.inner.conn.clone();
            async move {
                let mut pipe = redis::pipe();
                pipe.atomic().del(&keys.alive).ignore();
                if forget {
                    pipe.srem(&keys.instances, &self.inner.config.instance)
                        .ignore();
                }
                pipe.query_async::<()>(&mut conn).await
            }
        })
        .await?;
        Ok(moved)
    }

    /// Jobs waiting on the job list (a read, retried).
    pub async fn waiting(&self) -> Result<usize, QueueError> {
        Ok(self.llen(&self.inner.keys.jobs).await?)
    }

    /// Jobs this instance holds undecided (a read, retried).
    pub async fn in_flight(&self) -> Result<usize, QueueError> {
        Ok(self.llen(&self.inner.keys.processing).await?)
    }

    async fn llen(&self, key: &str) -> Result<usize, redis::RedisError> {
        with_retry("length", Idempotency::Idempotent, |_| {
            let mut conn = self.inner.conn.clone();
            async move { conn.llen(key).await }
        })
        .await
    }

    /// Runs the heartbeat and the reaper until `cancel` fires. Errors are
    /// logged and retried on the next tick: a Redis outage must not end the
    /// agent. Claimed jobs of dead instances are left where they are.
    pub fn spawn_maintenance(&self, cancel: CancellationToken) -> JoinHandle<()> {
        self.spawn_maintenance_with(cancel, |_| async {})
    }

    /// As [`spawn_maintenance`](Self::spawn_maintenance), handing each
    /// pass's claimed jobs of dead instances to `close_out`.
    ///
    /// The reaper waits for a liveness TTL of uninterrupted heartbeats
    /// after a Redis outage (or after finding its own key expired) before
    /// it declares anyone dead: every live instance's key may have expired
    /// during the outage, and each needs a beat to renew it.
    pub fn spawn_maintenance_with<F, Fut>(
        &self,
        cancel: CancellationToken,
        close_out: F,
    ) -> JoinHandle<()>
    where
        F: Fn(Vec<(String, TakenJob)>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let queue = self.clone();
        tokio::spawn(async move {
            let config = &queue.inner.config;
            let mut beat =
                tokio::time::interval(config.heartbeat_every.max(Duration::from_millis(10)));
            let mut reap = tokio::time::interval(config.reap_every.max(Duration::from_millis(10)));
            beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            reap.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // A fresh start trusts the keys it finds: live instances beat
            // all along (only an outage makes everyone's key suspect).
            let now = tokio::time::Instant::now();
            let mut healthy_since = Some(now.checked_sub(config.liveness_ttl).unwrap_or(now));
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    _ = beat.tick() => match queue.heartbeat().await {
                        Ok(true) => {
                            healthy_since.get_or_insert_with(tokio::time::Instant::now);
                        }
                        Ok(false) => {
                            tracing::warn!(
                                instance = %config.instance,
                                "liveness key had expired; other instances may have taken over our jobs"
                            );
                            healthy_since = Some(tokio::time::Instant::now());
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "heartbeat failed");
                            healthy_since = None;
                        }
                    },
                    _ = reap.tick() => {
                        if healthy_since.is_none_or(|t| t.elapsed() < config.liveness_ttl) {
                            continue;
                        }
                        match queue.reap_dead().await {
                            Ok(reaped) if !reaped.claimed.is_empty() => close_out(reaped.claimed).await,
                            Ok(_) => {}
                            Err(e) => tracing::warn!(error = %e, "reaper pass failed"),
                        }
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_key_names() {
        let k = QueueKeys::new(DEFAULT_JOBS_KEY, "i1").unwrap();
        assert_eq!(k.jobs, "talkiq-asp.calls");
        assert_eq!(k.processing, "{talkiq-asp.calls}.processing.i1");
        assert_eq!(k.alive, "{talkiq-asp.calls}.alive.i1");
        assert_eq!(k.instances, "{talkiq-asp.calls}.instances");
        assert_eq!(k.dead, "talkiq-asp.calls.dead");
        assert_eq!(k.processing_of("i2"), "{talkiq-asp.calls}.processing.i2");
        assert_eq!(k.alive_of("i2"), "{talkiq-asp.calls}.alive.i2");
    }

    #[test]
    fn a_jobs_key_with_its_own_hash_tag_keeps_it() {
        let k = QueueKeys::new("{calls}.jobs", "i").unwrap();
        assert_eq!(k.processing, "{calls}.processing.i");
        assert_eq!(k.dead, "{calls}.jobs.dead");
        // An empty tag does not count: the whole key is hashed.
        assert!(matches!(
            QueueKeys::new("a{}b", "i"),
            Err(QueueError::BadJobsKey(_))
        ));
        assert_eq!(
            QueueKeys::new("a{b", "i").unwrap().processing,
            "{a{b}.processing.i"
        );
    }

    #[test]
    fn bad_jobs_keys_and_instances() {
        for bad in ["", "a b", "a\nb", "a}b"] {
            assert!(
                matches!(QueueKeys::new(bad, "i"), Err(QueueError::BadJobsKey(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            QueueKeys::new("k", "a.b"),
            Err(QueueError::BadInstance(_))
        ));
    }

    #[test]
    fn dead_letters_are_json_with_the_raw_job_as_a_string() {
        let entry = dead_letter_entry(b"{\"a\":1,}", "not JSON", 42);
        let v: serde_json::Value = serde_json::from_str(&entry).unwrap();
        assert_eq!(v["reason"], "not JSON");
        assert_eq!(v["job"], "{\"a\":1,}");
        assert_eq!(v["at"], 42);
        let v: serde_json::Value =
            serde_json::from_str(&dead_letter_entry(b"\xff\n", "x", 1)).unwrap();
        assert_eq!(v["job"], "\u{fffd}\n");
    }

    #[test]
    fn config_defaults() {
        let c = QueueConfig::new(DEFAULT_JOBS_KEY).with_liveness_ttl(Duration::from_secs(3));
        assert_eq!(c.heartbeat_every, Duration::from_secs(1));
        assert!(Id::parse("instance", &c.instance).is_ok());
        assert_ne!(c.instance, QueueConfig::new("x").instance);
    }
}
