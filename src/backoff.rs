//! Waiting between attempts, one policy for every connection Redswitch
//! keeps: the inbound ESL connection, the control pub/sub connection, the
//! job queue and retried Redis commands.
//!
//! [`Backoff`] is exponential with jitter and a cap: attempt `n` waits a
//! random time in the upper half of `initial · 2ⁿ` (capped at `max`), so
//! many clients that lost a server together do not come back in lockstep,
//! yet each waits at least half the nominal delay. [`Attempts`] counts the
//! failures in a row of one loop.
//!
//! [`sleep_until`] is the "sleep until an optional deadline" of every
//! `select!` that may or may not have a timer armed.
//!
//! It sits at the crate root because both [`crate::switch`] and
//! [`crate::service`] use it, and `switch` must not depend on `service`.

use std::time::Duration;

use tokio::time::Instant;

/// Exponential backoff with jitter and a cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Nominal delay before the first retry.
    pub initial: Duration,
    /// Ceiling of the nominal delay.
    pub max: Duration,
}

impl Backoff {
    /// Reconnecting a long-lived connection (ESL, pub/sub, the queue):
    /// 100 ms doubling up to 5 s.
    pub const RECONNECT: Self = Self::new(Duration::from_millis(100), Duration::from_secs(5));

    /// A backoff from `initial` doubling up to `max`.
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max }
    }

    /// The nominal delay before retry `attempt` (0-based):
    /// `initial · 2^attempt`, capped at `max`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        self.initial
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.max)
    }

    /// The delay before retry `attempt` (0-based): a random point in the
    /// upper half of [`ceiling`](Self::ceiling).
    pub fn delay(&self, attempt: u32) -> Duration {
        let base = self.ceiling(attempt);
        let half = base / 2;
        half + half.mul_f64(rand::random::<f64>())
    }

    /// A counter of failures in a row using this backoff.
    pub fn attempts(self) -> Attempts {
        Attempts {
            backoff: self,
            failures: 0,
        }
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::RECONNECT
    }
}

/// Failures in a row of one reconnect or retry loop.
#[derive(Debug, Clone)]
pub struct Attempts {
    backoff: Backoff,
    failures: u32,
}

impl Attempts {
    /// One more failure: how long to wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.backoff.delay(self.failures);
        self.failures = self.failures.saturating_add(1);
        delay
    }

    /// Success: the next failure starts from the initial delay again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// Sleeps until `deadline`, or forever when there is none (for a `select!`
/// branch whose timer may be unset).
pub async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_with_jitter_in_the_upper_half() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        assert_eq!(b.ceiling(0), Duration::from_millis(100));
        assert_eq!(b.ceiling(3), Duration::from_millis(800));
        assert_eq!(b.ceiling(5), Duration::from_secs(2));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(2));
        for attempt in 0..30 {
            let d = b.delay(attempt);
            let cap = b.ceiling(attempt);
            assert!(d >= cap / 2 && d <= cap, "{attempt}: {d:?} vs {cap:?}");
        }
    }

    #[test]
    fn attempts_count_and_reset() {
        let mut a = Backoff::new(Duration::from_millis(10), Duration::from_millis(40)).attempts();
        assert!(a.next_delay() <= Duration::from_millis(10));
        assert!(a.next_delay() <= Duration::from_millis(20));
        assert!(a.next_delay() >= Duration::from_millis(20));
        assert_eq!(a.failures(), 3);
        a.reset();
        assert_eq!(a.failures(), 0);
        assert!(a.next_delay() <= Duration::from_millis(10));
    }

    #[tokio::test]
    async fn sleep_until_a_deadline_or_forever() {
        let start = Instant::now();
        sleep_until(Some(start + Duration::from_millis(30))).await;
        assert!(start.elapsed() >= Duration::from_millis(30));
        let never = tokio::time::timeout(Duration::from_millis(50), sleep_until(None)).await;
        assert!(never.is_err());
    }
}
