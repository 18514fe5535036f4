//! The simulated far ends: the test number plan (README), and the test extensions of
//! the `redswitch-test` context that the recorded traces use.

use std::time::Duration;

/// What the far end of a dialled number does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Refuses the call at once with this Hangup-Cause.
    Reject(&'static str),
    /// Rings until the originate timeout: `NO_ANSWER`.
    RingForever,
    /// Rings for the configured ring time, answers, then hangs up
    /// `NORMAL_CLEARING` after this long.
    AnswerThenHangup(Duration),
    /// Rings, answers, then sends these DTMF digits after this long.
    AnswerThenDtmf(Duration, &'static str),
    /// Rings for the configured ring time, answers, stays up.
    Answer,
}

/// The test number plan, by prefix of the dialled number (a leading
/// `+` is ignored).
pub fn outcome(number: &str) -> Outcome {
    let n = number.strip_prefix('+').unwrap_or(number);
    if n.starts_with("1555486") {
        Outcome::Reject("USER_BUSY")
    } else if n.starts_with("1555404") {
        Outcome::Reject("UNALLOCATED_NUMBER")
    } else if n.starts_with("1555408") {
        Outcome::RingForever
    } else if n.starts_with("1555487") {
        Outcome::AnswerThenHangup(Duration::from_secs(2))
    } else if n.starts_with("1555700") {
        Outcome::AnswerThenDtmf(Duration::from_secs(1), "1234#")
    } else {
        Outcome::Answer
    }
}

/// What the dialplan does with a loopback leg's destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Extension {
    /// `answer-park`: answer, park.
    AnswerPark,
    /// `answer-echo`: answer, echo.
    AnswerEcho,
    /// `answer-tone`: answer, play a 30 s tone, hang up.
    AnswerTone,
    /// `busy`: hang up `USER_BUSY`.
    Busy,
    /// `noanswer`: ring 3 s, hang up `NO_ANSWER`.
    NoAnswer,
    /// `socket`: answer, then `socket <addr> async full`.
    Socket,
    /// Any other number: the number plan.
    Plan(Outcome),
}

/// Resolves a loopback destination. The named test extensions exist only in
/// the `redswitch-test` context (as in the recorded FreeSWITCH); numbers
/// follow the number plan in every context.
pub fn extension(destination: &str, context: &str) -> Extension {
    if context == "redswitch-test" {
        match destination {
            "answer-park" => return Extension::AnswerPark,
            "answer-echo" => return Extension::AnswerEcho,
            "answer-tone" => return Extension::AnswerTone,
            "busy" => return Extension::Busy,
            "noanswer" => return Extension::NoAnswer,
            "socket" => return Extension::Socket,
            _ => {}
        }
    }
    Extension::Plan(outcome(destination))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_by_prefix() {
        assert_eq!(outcome("15554860000"), Outcome::Reject("USER_BUSY"));
        assert_eq!(
            outcome("+15554041234"),
            Outcome::Reject("UNALLOCATED_NUMBER")
        );
        assert_eq!(outcome("1555408"), Outcome::RingForever);
        assert_eq!(
            outcome("15554870001"),
            Outcome::AnswerThenHangup(Duration::from_secs(2))
        );
        assert_eq!(
            outcome("15557001111"),
            Outcome::AnswerThenDtmf(Duration::from_secs(1), "1234#")
        );
        assert_eq!(outcome("14157697098"), Outcome::Answer);
        // A prefix must match from the start.
        assert_eq!(outcome("21555486"), Outcome::Answer);
        assert_eq!(outcome("155548"), Outcome::Answer);
    }

    #[test]
    fn test_extensions_only_in_their_context() {
        assert_eq!(extension("busy", "redswitch-test"), Extension::Busy);
        assert_eq!(
            extension("busy", "default"),
            Extension::Plan(Outcome::Answer)
        );
        assert_eq!(
            extension("15554861", "default"),
            Extension::Plan(Outcome::Reject("USER_BUSY"))
        );
        assert_eq!(
            extension("answer-park", "redswitch-test"),
            Extension::AnswerPark
        );
    }
}
