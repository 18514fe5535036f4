//! DTMF: validation of digits and durations (refused with a typed error
//! before anything reaches FreeSWITCH), the DTMF modes of Doug's
//! `dtmfMode(single, inband, timeout)`, and digit collection.
//!
//! Received digits come from the leg's DTMF events (`DTMF-Digit`), which
//! FreeSWITCH sends for RFC 2833 and SIP INFO digits, and for in-band tones
//! once `start_dtmf` runs the in-band detector on the channel.

use super::VoiceError;
use std::time::Duration;
use tokio::time::Instant;

/// The longest DTMF digit we send. FreeSWITCH itself caps digits at its
/// `max_dtmf_duration` (about 8 s at 8 kHz); anything near it is a mistake.
pub const MAX_DTMF_DURATION: Duration = Duration::from_secs(10);
/// The most digits one `send_dtmf` may carry (docs/PROTOCOL.md: 1–64).
pub const MAX_DTMF_DIGITS: usize = 64;
/// Doug's default digit length (`sendDTMF(duration=0.1)`).
pub const DEFAULT_DTMF_DURATION: Duration = Duration::from_millis(100);

/// Whether `c` is a DTMF digit FreeSWITCH can send: `0-9`, `*`, `#`, `A-D`.
pub fn is_dtmf_digit(c: char) -> bool {
    c.is_ascii_digit() || matches!(c, '*' | '#' | 'A'..='D')
}

/// Checks digits to send: 1–64 of `0-9*#A-D`.
pub fn check_digits(digits: &str) -> Result<(), VoiceError> {
    if digits.is_empty() {
        return Err(VoiceError::NoDigits);
    }
    if let Some(found) = digits.chars().find(|&c| !is_dtmf_digit(c)) {
        return Err(VoiceError::InvalidDigit { found });
    }
    let n = digits.chars().count();
    if n > MAX_DTMF_DIGITS {
        return Err(VoiceError::TooManyDigits { count: n });
    }
    Ok(())
}

/// Checks a digit length: more than 0, at most [`MAX_DTMF_DURATION`].
pub fn check_duration(duration: Duration) -> Result<(), VoiceError> {
    if duration.is_zero() || duration > MAX_DTMF_DURATION {
        return Err(VoiceError::InvalidDtmfDuration { duration });
    }
    Ok(())
}

/// The argument of FreeSWITCH's `send_dtmf` application:
/// `<digits>@<duration in ms>`. A duration under 1 ms rounds up to 1 ms
/// (FreeSWITCH raises short digits to its minimum length anyway).
pub fn send_dtmf_arg(digits: &str, duration: Duration) -> String {
    format!("{digits}@{}", duration.as_millis().max(1))
}

/// How received DTMF is reported (Doug's `dtmfMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DtmfMode {
    /// One [`super::VoiceEvent::Dtmf`] per digit (Doug's `single=True`).
    #[default]
    Single,
    /// Digits are gathered until `terminator` and reported as one string
    /// (Doug's default, `#`); if `timeout` runs out between the first digit
    /// and the terminator, a [`super::VoiceEvent::DtmfTimeout`] carries the
    /// digits so far.
    String {
        /// The digit that ends a string (not reported).
        terminator: char,
        /// The longest time from the first to the last digit.
        timeout: Option<Duration>,
    },
}

/// What a digit or a deadline produced in [`DtmfState`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum DtmfOut {
    /// A digit or a finished string.
    Digits(String),
    /// The string timed out.
    Timeout(String),
}

/// The received-DTMF state of one leg: its mode and the string being built.
#[derive(Debug, Default)]
pub(crate) struct DtmfState {
    pub(crate) mode: DtmfMode,
    /// Whether `start_dtmf` (in-band detection) is running.
    pub(crate) inband: bool,
    buf: String,
    deadline: Option<Instant>,
}

impl DtmfState {
    pub(crate) fn set_mode(&mut self, mode: DtmfMode) {
        self.mode = mode;
        self.buf.clear();
        self.deadline = None;
    }

    /// A received digit.
    pub(crate) fn on_digit(&mut self, d: char, now: Instant) -> Option<DtmfOut> {
        match self.mode {
            DtmfMode::Single => Some(DtmfOut::Digits(d.to_string())),
            DtmfMode::String {
                terminator,
                timeout,
            } => {
                if d == terminator {
                    self.deadline = None;
                    return Some(DtmfOut::Digits(std::mem::take(&mut self.buf)));
                }
                if self.buf.is_empty() {
                    self.deadline = timeout.map(|t| now + t);
                }
                // A bounded buffer: a far end that never sends the
                // terminator cannot grow it without end.
                if self.buf.len() >= 256 {
                    self.deadline = None;
                    return Some(DtmfOut::Timeout(std::mem::take(&mut self.buf)));
                }
                self.buf.push(d);
                None
            }
        }
    }

    /// When the string being built times out.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The deadline passed.
    pub(crate) fn on_deadline(&mut self, now: Instant) -> Option<DtmfOut> {
        if self.deadline.is_some_and(|d| d <= now) {
            self.deadline = None;
            return Some(DtmfOut::Timeout(std::mem::take(&mut self.buf)));
        }
        None
    }

    /// Takes the digits of an unfinished string (type-ahead for a collect).
    pub(crate) fn take_partial(&mut self) -> String {
        self.deadline = None;
        std::mem::take(&mut self.buf)
    }
}

/// A digit collection in progress (see [`super::Voice::start_collect`]).
#[derive(Debug)]
pub(crate) struct CollectJob {
    pub(crate) max: usize,
    pub(crate) terminators: String,
    pub(crate) deadline: Option<Instant>,
    pub(crate) digits: String,
}

impl CollectJob {
    /// Adds a digit; returns why collecting ends, if it does.
    pub(crate) fn push(&mut self, d: char) -> Option<super::CollectEnd> {
        if self.terminators.contains(d) {
            return Some(super::CollectEnd::Terminator);
        }
        self.digits.push(d);
        (self.digits.chars().count() >= self.max).then_some(super::CollectEnd::Count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_and_durations_are_checked() {
        assert!(check_digits("0123456789*#ABCD").is_ok());
        assert!(matches!(check_digits(""), Err(VoiceError::NoDigits)));
        for bad in ["12E", "1 2", "a", "1\n", "F", "1,2", "w"] {
            assert!(
                matches!(check_digits(bad), Err(VoiceError::InvalidDigit { .. })),
                "{bad:?}"
            );
        }
        assert!(matches!(
            check_digits(&"1".repeat(65)),
            Err(VoiceError::TooManyDigits { count: 65 })
        ));
        assert!(check_duration(Duration::ZERO).is_err());
        assert!(check_duration(Duration::from_millis(10_001)).is_err());
        assert!(check_duration(Duration::from_secs(10)).is_ok());
        assert_eq!(send_dtmf_arg("12#", Duration::from_millis(250)), "12#@250");
    }

    #[test]
    fn string_mode_ends_on_terminator_or_timeout() {
        let mut s = DtmfState::default();
        let t0 = Instant::now();
        assert_eq!(s.on_digit('5', t0), Some(DtmfOut::Digits("5".into())));
        s.set_mode(DtmfMode::String {
            terminator: '#',
            timeout: Some(Duration::from_secs(3)),
        });
        assert_eq!(s.on_digit('1', t0), None);
        assert_eq!(s.deadline(), Some(t0 + Duration::from_secs(3)));
        assert_eq!(s.on_digit('2', t0 + Duration::from_secs(1)), None);
        // The deadline runs from the first digit, not the last.
        assert_eq!(s.deadline(), Some(t0 + Duration::from_secs(3)));
        assert_eq!(
            s.on_digit('#', t0 + Duration::from_secs(2)),
            Some(DtmfOut::Digits("12".into()))
        );
        assert_eq!(s.deadline(), None);
        assert_eq!(s.on_digit('7', t0), None);
        assert_eq!(s.on_deadline(t0 + Duration::from_secs(1)), None);
        assert_eq!(
            s.on_deadline(t0 + Duration::from_secs(3)),
            Some(DtmfOut::Timeout("7".into()))
        );
    }
}
