//! Timers of a voice application (Doug's `setTimer`), with user data.
//!
//! They are tokio timers, not FreeSWITCH's `sched_api`: the expiry is an
//! event in the app's own stream, which `sched_api` could only reach through
//! a round trip (a scheduled `uuid_*` API and an event back). The leg's loop
//! sleeps until the earliest deadline; there is one sleep per loop turn, not
//! one task per timer.

use super::VoiceError;
use super::events::TimerId;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;

/// The most timers one leg may have pending; a runaway app gets
/// [`VoiceError::TooManyTimers`] instead of unbounded memory.
pub const MAX_TIMERS: usize = 1024;

/// Pending timers ordered by deadline (ties by id, so by creation order).
#[derive(Debug)]
pub(crate) struct Timers<U> {
    next_id: u64,
    pending: BTreeMap<(Instant, u64), U>,
}

impl<U> Default for Timers<U> {
    fn default() -> Self {
        Self {
            next_id: 1,
            pending: BTreeMap::new(),
        }
    }
}

impl<U> Timers<U> {
    pub(crate) fn set(
        &mut self,
        now: Instant,
        delay: Duration,
        data: U,
    ) -> Result<TimerId, VoiceError> {
        if self.pending.len() >= MAX_TIMERS {
            return Err(VoiceError::TooManyTimers { max: MAX_TIMERS });
        }
        let id = self.next_id;
        self.next_id += 1;
        self.pending.insert((now + delay, id), data);
        Ok(TimerId(id))
    }

    /// Cancels a timer; `false` if it already fired or never existed.
    pub(crate) fn cancel(&mut self, id: TimerId) -> bool {
        let key = self.pending.keys().find(|(_, i)| *i == id.0).copied();
        key.is_some_and(|k| self.pending.remove(&k).is_some())
    }

    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.pending.keys().next().map(|(at, _)| *at)
    }

    /// The earliest timer due at `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<(TimerId, U)> {
        let first = self.pending.first_key_value().map(|(k, _)| *k)?;
        if first.0 > now {
            return None;
        }
        self.pending.remove(&first).map(|u| (TimerId(first.1), u))
    }

    pub(crate) fn clear(&mut self) {
        self.pending.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_fire_in_deadline_order_and_cancel() {
        let mut t = Timers::default();
        let now = Instant::now();
        let a = t.set(now, Duration::from_secs(2), "a").unwrap();
        let b = t.set(now, Duration::from_secs(1), "b").unwrap();
        let c = t.set(now, Duration::from_secs(3), "c").unwrap();
        assert_eq!(t.next_deadline(), Some(now + Duration::from_secs(1)));
        assert!(t.cancel(c));
        assert!(!t.cancel(c));
        assert_eq!(t.pop_due(now), None);
        let later = now + Duration::from_secs(5);
        assert_eq!(t.pop_due(later), Some((b, "b")));
        assert_eq!(t.pop_due(later), Some((a, "a")));
        assert_eq!(t.pop_due(later), None);
    }
}
