//! How the inbound client reaches FreeSWITCH and the limits it runs with.

use std::fmt;
use std::time::Duration;

/// The default size of the event buffer: 64 MiB, about 15,000 events with
/// every channel variable, several seconds of a busy switch's full stream.
pub const DEFAULT_EVENT_BUFFER_BYTES: usize = 64 * 1024 * 1024;

/// Exponential backoff with jitter between reconnect attempts.
#[derive(Debug, Clone)]
pub struct ReconnectPolicy {
    /// Delay before the first attempt.
    pub initial: Duration,
    /// Ceiling of the delay.
    pub max: Duration,
    /// Give up after this many failed attempts in a row (`None`: never).
    /// `Some(0)` never reconnects: when the link drops, the client stops and
    /// its [`crate::switch::EventStream`] ends with the reason.
    pub max_attempts: Option<u32>,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            max_attempts: None,
        }
    }
}

impl ReconnectPolicy {
    /// No reconnect: the first drop ends the client.
    pub fn never() -> Self {
        Self {
            max_attempts: Some(0),
            ..Self::default()
        }
    }

    /// The delay before attempt `attempt` (0-based): `initial · 2^attempt`,
    /// capped at `max`, then a random point in its upper half so that many
    /// clients restarted together do not reconnect in lockstep.
    pub fn delay(&self, attempt: u32) -> Duration {
        crate::backoff::Backoff::new(self.initial, self.max).delay(attempt)
    }
}

/// How to reach and talk to FreeSWITCH.
#[derive(Clone)]
pub struct InboundConfig {
    /// `host:port` of the event socket (see [`crate::cli::esl_address`]).
    pub addr: String,
    /// The event-socket password (never logged: `Debug` hides it).
    pub password: String,
    /// Limit for the TCP connect and the `auth/request` greeting.
    pub connect_timeout: Duration,
    /// Limit for each command's reply.
    pub request_timeout: Duration,
    /// Limit for a `bgapi` job's BACKGROUND_JOB (originate can ring a while).
    pub job_timeout: Duration,
    /// Bytes of events read but not yet taken from the
    /// [`crate::switch::EventStream`] before the client stops reading the
    /// socket (FreeSWITCH then queues the rest). Also the largest message
    /// accepted: a bigger one closes the connection with
    /// [`crate::switch::Error::TooLarge`].
    pub event_buffer_bytes: usize,
    /// Backoff between reconnect attempts.
    pub reconnect: ReconnectPolicy,
}

impl fmt::Debug for InboundConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboundConfig")
            .field("addr", &self.addr)
            .field("password", &"<hidden>")
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("job_timeout", &self.job_timeout)
            .field("event_buffer_bytes", &self.event_buffer_bytes)
            .field("reconnect", &self.reconnect)
            .finish()
    }
}

impl InboundConfig {
    /// A configuration with default limits.
    pub fn new(addr: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            addr: addr.into(),
            password: password.into(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            job_timeout: Duration::from_secs(180),
            event_buffer_bytes: DEFAULT_EVENT_BUFFER_BYTES,
            reconnect: ReconnectPolicy::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap_with_jitter() {
        let p = ReconnectPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
            max_attempts: None,
        };
        for attempt in 0..30 {
            let d = p.delay(attempt);
            let base = (Duration::from_millis(100) * 2u32.pow(attempt.min(20))).min(p.max);
            assert!(d >= base / 2 && d <= base, "attempt {attempt}: {d:?}");
        }
    }

    #[test]
    fn the_password_is_never_in_debug_output() {
        let c = InboundConfig::new("127.0.0.1:8021", "s3cret");
        assert!(!format!("{c:?}").contains("s3cret"));
    }
}
