//! Dial-once claims, and the close-out of a dead instance's calls.
//!
//! # Claims
//!
//! Before the first originate of a job, the instance claims its `dial_id`:
//! a hash `T.claim.<dial_id>` (in the job list's hash slot `T`, see
//! [`crate::service::queue`]) created only if absent, holding
//!
//! | field | what |
//! |---|---|
//! | `instance` | the instance running the call |
//! | `token` | the call's token (names its state hash, see [`crate::service::events`]) |
//! | `at` | when it was claimed, unix ms |
//! | `switch` | the `Core-UUID` of the FreeSWITCH the call runs on |
//! | `job` | the raw job |
//! | `leg0`, `leg1`, `leg2` | each side's channel uuid, once FreeSWITCH accepted its originate |
//! | `reaper` | the instance closing the call out, once its owner died |
//!
//! with an expiry of the maximum call duration plus a margin
//! ([`ClaimConfig::ttl`]). The job stays on the instance's processing list
//! until the call has ended; then claim and processing entry go in one
//! script. So:
//!
//! - a claimed job is never requeued: the reaper moves only unclaimed jobs
//!   back (they were never dialled) and closes the claimed ones out;
//! - a job taken at shutdown either runs to its end (claimed) or goes back
//!   before anything was dialled (unclaimed), never both;
//! - a second job with the `dial_id` of a live call, on any instance,
//!   finds the claim and is refused (`failure` [`DIAL_ID_CLAIMED`],
//!   dead-lettered). Once the call has ended the `dial_id` may be used
//!   again.
//!
//! # A dead instance's calls
//!
//! The reaper that finds an instance dead (its liveness key expired) with
//! claimed jobs closes each call out, unless another live reaper already
//! does. Only a reaper that can act takes a call over: one on the same
//! FreeSWITCH at once, any other only once the call is overdue (below), so
//! a reaper on another switch never holds a call away from one that could
//! end its legs.
//!
//! 1. When the call runs on the reaper's own FreeSWITCH (same `Core-UUID`),
//!    it ends the recorded legs with `uuid_kill <uuid> MANAGER_REQUEST`,
//!    and every channel of the job with
//!    `hupall MANAGER_REQUEST dial_id <dial_id>` (every leg carries the
//!    job's `dial_id` as a channel variable, so this also gets a leg whose
//!    uuid the dead instance had no time to record).
//! 2. It publishes, in the call's order, one `hangup-event` with cause
//!    [`DEAD_INSTANCE_CAUSE`] (`MANAGER_REQUEST`) for each side that
//!    existed and had none written to the history; a call whose
//!    `call-start` was never written gets a `failure`
//!    ([`DIED_BEFORE_START`]) instead.
//! 3. It removes the active-call key, then the claim and the job.
//!
//! When no live instance shares the dead instance's FreeSWITCH, nobody can
//! end those channels: FreeSWITCH's own maximum call duration (the
//! `ALLOTTED_TIMEOUT` set on every leg from `--max-call-duration`) bounds
//! them. Their events and keys are then closed out by any reaper once the
//! claim is older than the maximum call duration plus a minute, when the
//! call has surely ended.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::AsyncCommands;

use super::asp_call::DIAL_ID_VARIABLE;
use super::events::{CallEvents, ENDED_STATE_TTL_SECS, Event, Side, call_state_key, eval};
use super::job::{self, AspCallJob};
use super::outbox::{Outbox, OutboxError, Receipt};
use super::queue::{QueueKeys, TakenJob, unix_ms};
use super::store::RedisConn;
use crate::switch::InboundClient;

/// The default `--max-call-duration`.
pub const DEFAULT_MAX_CALL_DURATION: Duration = Duration::from_secs(4 * 3600);
/// Added to the maximum call duration for the claim's expiry: ringing
/// time and clock skew.
pub const CLAIM_MARGIN: Duration = Duration::from_secs(15 * 60);
/// The cause of the `hangup-event`s published for a dead instance's calls
/// (also the cause their legs are killed with): FreeSWITCH's cause for a
/// hangup asked through the API.
pub const DEAD_INSTANCE_CAUSE: &str = "MANAGER_REQUEST";
/// The `failure` cause for a dead instance's call that never started.
pub const DIED_BEFORE_START: &str = "redswitch instance died before the call started";
/// The `failure` cause of a job whose `dial_id` is claimed by a live call.
pub const DIAL_ID_CLAIMED: &str = "dial_id already has an active call";

/// Creates the claim unless one exists; succeeds again for the same token
/// (a retry after a lost reply). Returns `''` when claimed, else the
/// holder's instance.
///
/// KEYS: claim. ARGV: instance, token, at, switch, job, TTL ms.
const CLAIM_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('HGET', KEYS[1], 'token') == ARGV[2] then return '' end
  return redis.call('HGET', KEYS[1], 'instance') or '?'
end
redis.call('HSET', KEYS[1], 'instance', ARGV[1], 'token', ARGV[2], 'at', ARGV[3], 'switch', ARGV[4], 'job', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
return ''
";

/// The call ended (or was closed out): removes the claim if it is still
/// this call's, and the job from the processing list.
///
/// KEYS: claim, processing list. ARGV: token, raw job.
const FINISH_SCRIPT: &str = r"
if redis.call('HGET', KEYS[1], 'token') == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('LREM', KEYS[2], 1, ARGV[2])
return 1
";

/// Nothing was dialled after all: removes the claim and puts the job back
/// at the head of the job list (once, even when retried).
///
/// KEYS: claim, processing list, job list. ARGV: token, raw job.
const GIVE_BACK_SCRIPT: &str = r"
if redis.call('HGET', KEYS[1], 'token') == ARGV[1] then redis.call('DEL', KEYS[1]) end
if redis.call('LREM', KEYS[2], 1, ARGV[2]) == 1 then redis.call('LPUSH', KEYS[3], ARGV[2]) end
return 1
";

/// Makes `ARGV[1]` the reaper of a claim unless a live instance already
/// is. Returns 1 when it is now ours.
///
/// KEYS: claim. ARGV: instance, liveness-key prefix.
const TAKE_OVER_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local r = redis.call('HGET', KEYS[1], 'reaper')
if r and r ~= ARGV[1] and redis.call('EXISTS', ARGV[2] .. r) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'reaper', ARGV[1])
return 1
";

/// Errors of claiming.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// Redis failed; nothing may be dialled.
    #[error("claiming the job: {0}")]
    Redis(#[from] redis::RedisError),
    /// The outbox is full.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
}

/// How claims behave.
#[derive(Debug, Clone)]
pub struct ClaimConfig {
    /// The longest a call may last (`--max-call-duration`).
    pub max_call_duration: Duration,
}

impl Default for ClaimConfig {
    fn default() -> Self {
        Self {
            max_call_duration: DEFAULT_MAX_CALL_DURATION,
        }
    }
}

impl ClaimConfig {
    /// The claim's expiry: longer than any call.
    pub fn ttl(&self) -> Duration {
        self.max_call_duration + CLAIM_MARGIN
    }

    /// A claim older than this belongs to a call that has surely ended.
    fn overdue(&self) -> Duration {
        self.max_call_duration + Duration::from_secs(60)
    }
}

/// The outcome of [`Claims::claim`].
#[derive(Debug)]
pub enum Claim {
    /// The job is ours to dial.
    Claimed(CallRecord),
    /// A live call (of `by`) holds the `dial_id`.
    Held {
        /// The instance holding it.
        by: String,
    },
}

struct RecordInner {
    key: String,
    token: String,
    legs: Mutex<[Option<String>; 3]>,
}

/// A claimed call: where its legs are recorded. Clones share it.
#[derive(Clone)]
pub struct CallRecord {
    inner: Arc<RecordInner>,
}

impl std::fmt::Debug for CallRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallRecord")
            .field("key", &self.inner.key)
            .field("token", &self.inner.token)
            .finish()
    }
}

impl CallRecord {
    /// The call's token.
    pub fn token(&self) -> &str {
        &self.inner.token
    }

    /// Records `side`'s leg, in order with the call's events.
    pub(crate) fn leg_dialled(&self, outbox: &Outbox, side: Side, uuid: &str) {
        self.inner.legs.lock().unwrap_or_else(|p| p.into_inner())[side.number() as usize] =
            Some(uuid.to_owned());
        let mut cmd = redis::cmd("HSET");
        cmd.arg(&self.inner.key)
            .arg(format!("leg{}", side.number()))
            .arg(uuid);
        // Its fate needs no waiting: the outbox writes it before whatever
        // the call writes next.
        if let Err(error) = outbox.push("claim-leg", vec![cmd]) {
            tracing::error!(%error, "could not record a leg");
        }
    }

    fn legs(&self) -> Vec<String> {
        self.inner
            .legs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .flatten()
            .cloned()
            .collect()
    }
}

struct Inner {
    conn: RedisConn,
    outbox: Outbox,
    keys: QueueKeys,
    instance: String,
    config: ClaimConfig,
    /// This instance's live calls, by token.
    live: Mutex<HashMap<String, CallRecord>>,
}

/// This instance's claims. Clones share them.
#[derive(Clone)]
pub struct Claims {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Claims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claims")
            .field("instance", &self.inner.instance)
            .field("live", &self.live_calls())
            .finish()
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The `Core-UUID` of the FreeSWITCH behind `inbound`, if it answers.
pub async fn core_uuid(inbound: &InboundClient) -> Option<String> {
    let reply = inbound.api("global_getvar core_uuid").await.ok()?;
    let uuid = reply.trim();
    (!uuid.is_empty() && !uuid.starts_with("-ERR")).then(|| uuid.to_owned())
}

impl Claims {
    /// Claims of `instance` on the queue `keys`, written through `outbox`
    /// (a claim itself is asked directly: its answer decides whether to
    /// dial).
    pub fn new(
        conn: RedisConn,
        outbox: Outbox,
        keys: QueueKeys,
        instance: String,
        config: ClaimConfig,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                conn,
                outbox,
                keys,
                instance,
                config,
                live: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<String, CallRecord>> {
        self.inner.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Claims `job` (taken as `taken`) for a call on the FreeSWITCH
    /// `switch`. Retried a few times while Redis is away; an error means
    /// nothing may be dialled.
    pub async fn claim(
        &self,
        taken: &TakenJob,
        job: &AspCallJob,
        switch: &str,
    ) -> Result<Claim, ClaimError> {
        let key = self.inner.keys.claim(job.dial_id.as_str());
        let token = uuid::Uuid::new_v4().simple().to_string();
        let raw = String::from_utf8_lossy(taken.raw()).into_owned();
        let cmd = eval(
            CLAIM_SCRIPT,
            &[&key],
            &[
                &self.inner.instance,
                &token,
                &unix_ms().to_string(),
                switch,
                &raw,
                &millis(self.inner.config.ttl()).to_string(),
            ],
        );
        let mut conn = self.inner.conn.clone();
        let mut backoff = Duration::from_millis(50);
        let holder: String = loop {
            match cmd.query_async(&mut conn).await {
                Ok(holder) => break holder,
                Err(e) if backoff < Duration::from_secs(2) && !e.is_unrecoverable_error() => {
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
                Err(e) => return Err(e.into()),
            }
        };
        if !holder.is_empty() {
            return Ok(Claim::Held { by: holder });
        }
        let record = CallRecord {
            inner: Arc::new(RecordInner {
                key,
                token: token.clone(),
                legs: Mutex::new([None, None, None]),
            }),
        };
        self.live().insert(token, record.clone());
        Ok(Claim::Claimed(record))
    }

    /// The events of a claimed call: its state hash lives as long as the
    /// claim, and its legs are recorded with it.
    pub fn events(&self, record: &CallRecord, job: &AspCallJob) -> CallEvents {
        let events = CallEvents::resume(
            self.inner.outbox.clone(),
            &job.dial_id,
            &job.org_id,
            &job.user_id,
            record.token().to_owned(),
            0,
            Some(record.clone()),
        );
        events.set_state_ttl(self.inner.config.ttl());
        events
    }

    /// The claimed call ended (every event of it is queued before): the
    /// claim and the job go, in order after its events. The receipt tells
    /// when that is written.
    pub fn finish(
        &self,
        record: &CallRecord,
        taken: &TakenJob,
        events: &CallEvents,
    ) -> Option<Receipt> {
        events.ended();
        let cmds = self.finish_cmds(
            &record.inner.key,
            record.token(),
            &self.inner.keys.processing,
            taken,
            events.state_key(),
        );
        self.live().remove(record.token());
        self.inner
            .outbox
            .push("finish", cmds)
            .inspect_err(
                |error| tracing::error!(%error, "could not queue the end of a claimed job"),
            )
            .ok()
    }

    fn finish_cmds(
        &self,
        claim: &str,
        token: &str,
        processing: &str,
        taken: &TakenJob,
        state: &str,
    ) -> Vec<redis::Cmd> {
        let raw = String::from_utf8_lossy(taken.raw()).into_owned();
        let mut expire = redis::cmd("EXPIRE");
        expire.arg(state).arg(ENDED_STATE_TTL_SECS);
        vec![
            eval(FINISH_SCRIPT, &[claim, processing], &[token, &raw]),
            expire,
        ]
    }

    /// Nothing was dialled (FreeSWITCH went away before the originate was
    /// accepted): the claim goes and the job returns to the head of the
    /// queue. The receipt tells when that is written.
    pub fn give_back(&self, record: &CallRecord, taken: &TakenJob) -> Option<Receipt> {
        let keys = &self.inner.keys;
        let raw = String::from_utf8_lossy(taken.raw()).into_owned();
        let cmd = eval(
            GIVE_BACK_SCRIPT,
            &[&record.inner.key, &keys.processing, &keys.jobs],
            &[record.token(), &raw],
        );
        self.live().remove(record.token());
        self.inner
            .outbox
            .push("give-back", vec![cmd])
            .inspect_err(|error| tracing::error!(%error, "could not queue giving a job back"))
            .ok()
    }

    /// Live calls of this instance.
    pub fn live_calls(&self) -> usize {
        self.live().len()
    }

    /// The recorded legs of every live call of this instance.
    pub fn live_legs(&self) -> Vec<String> {
        self.live().values().flat_map(CallRecord::legs).collect()
    }

    /// Closes out the claimed jobs of dead instances (see the module doc),
    /// ending their legs through `inbound` where the call runs on the same
    /// FreeSWITCH.
    pub async fn close_out(&self, jobs: Vec<(String, TakenJob)>, inbound: &InboundClient) {
        let switch = core_uuid(inbound).await;
        for (instance, taken) in jobs {
            if let Err(error) = self
                .close_out_one(&instance, &taken, switch.as_deref(), inbound)
                .await
            {
                tracing::warn!(%instance, %error, "closing out a dead instance's call failed; retried on the next pass");
            }
        }
    }

    async fn close_out_one(
        &self,
        instance: &str,
        taken: &TakenJob,
        switch: Option<&str>,
        inbound: &InboundClient,
    ) -> Result<(), ClaimError> {
        let Ok(job) = job::parse(taken.raw()) else {
            return Ok(());
        };
        let keys = &self.inner.keys;
        let key = keys.claim(job.dial_id.as_str());
        let mut conn = self.inner.conn.clone();
        let claim: HashMap<String, String> = conn.hgetall(&key).await?;
        let (Some(token), Some(at)) = (claim.get("token"), claim.get("at")) else {
            return Ok(());
        };
        let shares = switch.is_some() && claim.get("switch").map(String::as_str) == switch;
        let at: u64 = at.parse().unwrap_or(0);
        let overdue = unix_ms().saturating_sub(at) > millis(self.inner.config.overdue());
        if !shares && !overdue {
            tracing::debug!(%instance, dial_id = %job.dial_id, "dead instance's call is on another FreeSWITCH; left to its maximum duration");
            return Ok(());
        }
        // Only a reaper that can act takes the call over: one on another
        // FreeSWITCH must not hold it away from one on the same switch.
        let ours: i64 = eval(
            TAKE_OVER_SCRIPT,
            &[&key],
            &[&self.inner.instance, &keys.alive_of("")],
        )
        .query_async(&mut conn)
        .await?;
        if ours != 1 {
            return Ok(());
        }
        let legs: Vec<Option<&String>> = (0..3).map(|n| claim.get(&format!("leg{n}"))).collect();
        if shares {
            for uuid in legs.iter().flatten() {
                let _ = inbound
                    .api(&format!("uuid_kill {uuid} {DEAD_INSTANCE_CAUSE}"))
                    .await;
            }
            let _ = inbound
                .api(&format!(
                    "hupall {DEAD_INSTANCE_CAUSE} {DIAL_ID_VARIABLE} {}",
                    job.dial_id
                ))
                .await;
        }
        let history = super::events::history_key(&job.org_id, &job.user_id);
        let state_key = call_state_key(&history, token);
        let state: HashMap<String, String> = conn.hgetall(&state_key).await?;
        let seq = state.get("seq").and_then(|s| s.parse().ok()).unwrap_or(0);
        let events = CallEvents::resume(
            self.inner.outbox.clone(),
            &job.dial_id,
            &job.org_id,
            &job.user_id,
            token.clone(),
            seq,
            None,
        );
        let mut published = 0;
        if state.contains_key("started") {
            for side in [Side::Caller, Side::Callee, Side::Barger] {
                let n = side.number() as usize;
                let existed = side == Side::Caller || legs[n].is_some();
                let ended = state.get(&format!("s{n}")).map(String::as_str) == Some("h");
                if existed && !ended {
                    let hangup = Event::Hangup {
                        side,
                        cause: DEAD_INSTANCE_CAUSE.into(),
                    };
                    if events.publish(&hangup).await.is_ok() {
                        published += 1;
                    }
                }
            }
        } else {
            let failure = Event::Failure {
                cause: DIED_BEFORE_START.into(),
            };
            if events.publish(&failure).await.is_ok() {
                published += 1;
            }
        }
        let mut del = redis::cmd("DEL");
        del.arg(events.active_key());
        let mut cmds = vec![del];
        cmds.extend(self.finish_cmds(
            &key,
            token,
            &keys.processing_of(instance),
            taken,
            &state_key,
        ));
        self.inner.outbox.send("close-out", cmds).await?;
        tracing::warn!(
            %instance,
            dial_id = %job.dial_id,
            events = published,
            killed = shares,
            "closed out a dead instance's call"
        );
        Ok(())
    }
}
