//! Redis commands that survive a reconnect.
//!
//! A Redis restart, a failover or a killed client connection breaks every
//! connection the agent holds. [`RedisConn`](super::store::RedisConn) drops
//! a broken connection and dials a new one on the next command; [`with_retry`]
//! runs that next command: it re-runs an operation whose attempt failed
//! because of the connection, with [`Backoff`] between attempts, until it
//! succeeds, fails for another reason, or the policy's time is up.
//!
//! Whether a failed attempt may be re-run depends on the operation and on
//! how the attempt failed ([`Failure`]):
//!
//! - [`Failure::NotApplied`]: Redis certainly did not run it (no connection
//!   could be made, or the server refused it while loading its data set or
//!   during a failover). Any operation is re-run.
//! - [`Failure::Unknown`]: the connection broke while the command was out
//!   (broken pipe, reset, timeout, cluster node lost). Redis may have run
//!   it. Only an [`Idempotency::Idempotent`] operation is re-run.
//!
//! An operation that is not naturally idempotent is made so by its author,
//! either with a Lua script that checks a marker (a per-message sequence,
//! the job still on the processing list …) or with a check before the
//! retry: the closure gets an [`Attempt`] whose
//! [`maybe_applied`](Attempt::maybe_applied) says an earlier attempt may
//! have taken effect. Every queue, publish and state operation says in its
//! doc comment which it is.

use std::future::Future;
use std::time::Duration;

use redis::{ErrorKind, RedisError, ServerErrorKind};
use tokio::time::Instant;

use crate::backoff::Backoff;

/// Whether an operation may run twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idempotency {
    /// Running it again after it may already have run has the effect of
    /// running it once (by nature, by a Lua script's check, or by the
    /// closure's own check when [`Attempt::maybe_applied`]): re-run after
    /// any broken connection.
    Idempotent,
    /// Must not run twice: re-run only when Redis certainly did not run the
    /// failed attempt ([`Failure::NotApplied`]).
    NotIdempotent,
}

/// How an attempt failed, as far as retrying goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Redis did not run the command: no connection, or refused while
    /// loading or failing over.
    NotApplied,
    /// The connection broke with the command out: it may have run.
    Unknown,
    /// Not a connection problem (a wrong type, a script error …): retrying
    /// would fail the same way.
    Permanent,
}

impl Failure {
    /// Classifies a redis-rs error.
    pub fn of(error: &RedisError) -> Self {
        match error.kind() {
            ErrorKind::Server(
                ServerErrorKind::BusyLoading
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ReadOnly,
            ) => Failure::NotApplied,
            ErrorKind::Io if error.is_connection_refusal() || is_no_connection(error) => {
                Failure::NotApplied
            }
            ErrorKind::Io | ErrorKind::ClusterConnectionNotFound | ErrorKind::Parse => {
                Failure::Unknown
            }
            _ => Failure::Permanent,
        }
    }

    /// Whether an operation of `idempotency` may be re-run after this.
    pub fn retryable(self, idempotency: Idempotency) -> bool {
        match self {
            Failure::NotApplied => true,
            Failure::Unknown => idempotency == Idempotency::Idempotent,
            Failure::Permanent => false,
        }
    }
}

/// The message [`no_connection`] errors carry.
const NO_CONNECTION: &str = "no connection to Redis";

/// The error of a command that was never sent because no connection could
/// be made (what [`Failure::of`] calls [`Failure::NotApplied`]).
pub(crate) fn no_connection(why: impl std::fmt::Display) -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::NotConnected,
        format!("{NO_CONNECTION}: {why}"),
    ))
}

fn is_no_connection(error: &RedisError) -> bool {
    error.to_string().contains(NO_CONNECTION)
}

/// One attempt of an operation under [`with_retry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// 0 for the first attempt.
    pub number: u32,
    /// An earlier attempt failed with [`Failure::Unknown`]: it may have
    /// taken effect. A check-before-retry operation looks first.
    pub maybe_applied: bool,
}

/// How long and how often to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Waits between attempts.
    pub backoff: Backoff,
    /// No attempt starts this long after the first one started.
    pub give_up_after: Duration,
}

impl Default for RetryPolicy {
    /// 50 ms doubling to 1 s, for up to 10 s: a restarted Redis (also one
    /// loading an AOF of some size) is back well within that, and a call's
    /// task is not held much longer than a controller waits for an answer.
    fn default() -> Self {
        Self {
            backoff: Backoff::new(Duration::from_millis(50), Duration::from_secs(1)),
            give_up_after: Duration::from_secs(10),
        }
    }
}

/// Runs `op` under the default [`RetryPolicy`]; see [`with_retry_policy`].
pub async fn with_retry<T, F, Fut>(
    what: &str,
    idempotency: Idempotency,
    op: F,
) -> Result<T, RedisError>
where
    F: FnMut(Attempt) -> Fut,
    Fut: Future<Output = Result<T, RedisError>>,
{
    with_retry_policy(&RetryPolicy::default(), what, idempotency, op).await
}

/// Runs `op` until it succeeds, fails in a way [`Failure::retryable`] says
/// not to retry for `idempotency`, or `policy` gives up; returns the last
/// result. `what` names the operation in log lines.
///
/// `op` is called again for each attempt and should take its connection
/// afresh each time (a [`RedisConn`](super::store::RedisConn) clone does:
/// the handle has already dropped the broken connection).
pub async fn with_retry_policy<T, F, Fut>(
    policy: &RetryPolicy,
    what: &str,
    idempotency: Idempotency,
    mut op: F,
) -> Result<T, RedisError>
where
    F: FnMut(Attempt) -> Fut,
    Fut: Future<Output = Result<T, RedisError>>,
{
    let started = Instant::now();
    let mut attempts = policy.backoff.attempts();
    let mut attempt = Attempt {
        number: 0,
        maybe_applied: false,
    };
    loop {
        let error = match op(attempt).await {
            Ok(value) => {
                if attempt.number > 0 {
                    tracing::info!(
                        operation = what,
                        attempts = attempt.number + 1,
                        "Redis command went through after a reconnect"
                    );
                }
                return Ok(value);
            }
            Err(error) => error,
        };
        let failure = Failure::of(&error);
        let delay = attempts.next_delay();
        if !failure.retryable(idempotency) || started.elapsed() + delay > policy.give_up_after {
            return Err(error);
        }
        tracing::debug!(operation = what, %error, ?failure, retry_in = ?delay, "Redis command failed; retrying");
        tokio::time::sleep(delay).await;
        attempt.number += 1;
        attempt.maybe_applied |= failure == Failure::Unknown;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn io(kind: std::io::ErrorKind) -> RedisError {
        RedisError::from(std::io::Error::from(kind))
    }

    #[test]
    fn classifies_errors() {
        use std::io::ErrorKind as K;
        assert_eq!(Failure::of(&io(K::ConnectionRefused)), Failure::NotApplied);
        assert_eq!(Failure::of(&no_connection("down")), Failure::NotApplied);
        for kind in [
            K::BrokenPipe,
            K::ConnectionReset,
            K::UnexpectedEof,
            K::TimedOut,
        ] {
            assert_eq!(Failure::of(&io(kind)), Failure::Unknown, "{kind:?}");
        }
        let loading = RedisError::from((
            ErrorKind::Server(ServerErrorKind::BusyLoading),
            "LOADING Redis is loading the dataset in memory",
        ));
        assert_eq!(Failure::of(&loading), Failure::NotApplied);
        let wrong = RedisError::from((
            ErrorKind::Server(ServerErrorKind::ResponseError),
            "WRONGTYPE",
        ));
        assert_eq!(Failure::of(&wrong), Failure::Permanent);
        assert!(Failure::NotApplied.retryable(Idempotency::NotIdempotent));
        assert!(Failure::Unknown.retryable(Idempotency::Idempotent));
        assert!(!Failure::Unknown.retryable(Idempotency::NotIdempotent));
        assert!(!Failure::Permanent.retryable(Idempotency::Idempotent));
    }

    fn quick() -> RetryPolicy {
        RetryPolicy {
            backoff: Backoff::new(Duration::from_millis(1), Duration::from_millis(4)),
            give_up_after: Duration::from_secs(2),
        }
    }

    /// Fails with `errors` in turn, then succeeds; returns the result and
    /// the attempts seen.
    async fn run(
        idempotency: Idempotency,
        errors: Vec<RedisError>,
    ) -> (Result<u32, RedisError>, Vec<Attempt>) {
        let calls = AtomicU32::new(0);
        let seen = std::sync::Mutex::new(Vec::new());
        let result = with_retry_policy(&quick(), "test", idempotency, |attempt| {
            seen.lock().unwrap().push(attempt);
            let n = calls.fetch_add(1, Ordering::SeqCst) as usize;
            let outcome = errors.get(n).cloned().map_or(Ok(7), Err);
            async move { outcome }
        })
        .await;
        (result, seen.into_inner().unwrap())
    }

    #[tokio::test]
    async fn idempotent_operations_are_retried_after_a_broken_connection() {
        use std::io::ErrorKind as K;
        let (result, seen) = run(
            Idempotency::Idempotent,
            vec![
                io(K::ConnectionRefused),
                io(K::BrokenPipe),
                io(K::ConnectionRefused),
            ],
        )
        .await;
        assert_eq!(result.unwrap(), 7);
        let flags: Vec<_> = seen.iter().map(|a| (a.number, a.maybe_applied)).collect();
        assert_eq!(flags, [(0, false), (1, false), (2, true), (3, true)]);
    }

    #[tokio::test]
    async fn non_idempotent_operations_are_retried_only_when_not_applied() {
        use std::io::ErrorKind as K;
        let (result, seen) = run(Idempotency::NotIdempotent, vec![no_connection("x")]).await;
        assert_eq!((result.unwrap(), seen.len()), (7, 2));
        let (result, seen) = run(Idempotency::NotIdempotent, vec![io(K::BrokenPipe)]).await;
        assert!(result.is_err());
        assert_eq!(seen.len(), 1);
    }

    #[tokio::test]
    async fn permanent_errors_are_not_retried_and_the_policy_gives_up() {
        let wrong = RedisError::from((
            ErrorKind::Server(ServerErrorKind::ResponseError),
            "WRONGTYPE",
        ));
        let (result, seen) = run(Idempotency::Idempotent, vec![wrong]).await;
        assert!(result.is_err());
        assert_eq!(seen.len(), 1);
        let always_down = AtomicU32::new(0);
        let policy = RetryPolicy {
            backoff: Backoff::new(Duration::from_millis(5), Duration::from_millis(20)),
            give_up_after: Duration::from_millis(200),
        };
        let started = Instant::now();
        let result: Result<(), _> =
            with_retry_policy(&policy, "test", Idempotency::Idempotent, |_| {
                always_down.fetch_add(1, Ordering::SeqCst);
                async { Err(no_connection("down")) }
            })
            .await;
        assert!(result.is_err());
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(always_down.load(Ordering::SeqCst) >= 3);
    }
}
