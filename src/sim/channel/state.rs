//! Where a channel is in its life, as one pure value with named
//! transitions: up, hanging up (CHANNEL_HANGUP fired, the hangup state not
//! yet run), reporting (the hangup state ran; reporting and destroy wait,
//! for a loopback twin's CHANNEL_HANGUP) and destroyed. The channel task
//! asks this type what may still happen instead of combining flags.
//!
//! Ringing and answered are not modelled here: they are part of the
//! channel's event data (`answer_state`, `Channel-Call-State`) and live in
//! [`crate::sim::snapshot::ChanState`].

/// The phases, in the only order they can come in.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Up,
    HangingUp,
    /// The hangup state ran; the cause the reporting state reports.
    Reporting(String),
    Destroyed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Lifecycle {
    phase: Phase,
    /// Hung up from outside the channel's thread (`uuid_kill`): the
    /// application it cuts reports an error.
    killed: bool,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self {
            phase: Phase::Up,
            killed: false,
        }
    }
}

impl Lifecycle {
    /// CHANNEL_HANGUP fires: from the channel's own thread, or from
    /// outside (`from_outside`, as `uuid_kill` does). Only the first
    /// hangup counts.
    pub(super) fn begin_hangup(&mut self, from_outside: bool) -> bool {
        if self.phase != Phase::Up {
            return false;
        }
        self.phase = Phase::HangingUp;
        self.killed = from_outside;
        true
    }

    /// The hangup state runs with `cause`, once: false if it already ran.
    pub(super) fn finish_hangup(&mut self, cause: &str) -> bool {
        if self.hangup_finished() {
            return false;
        }
        self.phase = Phase::Reporting(cause.to_owned());
        true
    }

    /// The reporting and destroy states ran: the channel is gone.
    pub(super) fn destroy(&mut self) {
        self.phase = Phase::Destroyed;
    }

    /// Neither hung up nor going down.
    pub(super) fn is_up(&self) -> bool {
        self.phase == Phase::Up
    }

    /// The hangup state ran (the channel reports, or is gone).
    pub(super) fn hangup_finished(&self) -> bool {
        matches!(self.phase, Phase::Reporting(_) | Phase::Destroyed)
    }

    /// The cause to report while reporting waits; `None` in any other phase.
    pub(super) fn reporting_cause(&self) -> Option<&str> {
        match &self.phase {
            Phase::Reporting(cause) => Some(cause),
            _ => None,
        }
    }

    pub(super) fn is_destroyed(&self) -> bool {
        self.phase == Phase::Destroyed
    }

    pub(super) fn killed(&self) -> bool {
        self.killed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_channel_is_up() {
        let l = Lifecycle::default();
        assert!(l.is_up());
        assert!(!l.hangup_finished());
        assert!(!l.is_destroyed());
        assert!(!l.killed());
        assert_eq!(l.reporting_cause(), None);
    }

    #[test]
    fn a_hangup_runs_through_every_phase_in_order() {
        let mut l = Lifecycle::default();
        assert!(l.begin_hangup(false));
        assert!(!l.is_up());
        assert!(!l.hangup_finished());
        assert_eq!(l.reporting_cause(), None);

        assert!(l.finish_hangup("NORMAL_CLEARING"));
        assert!(l.hangup_finished());
        assert!(!l.is_destroyed());
        assert_eq!(l.reporting_cause(), Some("NORMAL_CLEARING"));

        l.destroy();
        assert!(l.is_destroyed());
        assert!(l.hangup_finished());
        assert_eq!(l.reporting_cause(), None);
        assert!(!l.killed());
    }

    #[test]
    fn only_the_first_hangup_begins() {
        let mut l = Lifecycle::default();
        assert!(l.begin_hangup(false));
        assert!(!l.begin_hangup(true));
        assert!(!l.killed(), "a later uuid_kill does not make it killed");
    }

    #[test]
    fn a_hangup_from_outside_is_remembered_to_the_end() {
        let mut l = Lifecycle::default();
        assert!(l.begin_hangup(true));
        assert!(l.killed());
        assert!(l.finish_hangup("NORMAL_CLEARING"));
        assert!(l.killed());
        l.destroy();
        assert!(l.killed());
    }

    #[test]
    fn the_hangup_state_runs_once_with_the_first_cause() {
        let mut l = Lifecycle::default();
        l.begin_hangup(false);
        assert!(l.finish_hangup("USER_BUSY"));
        assert!(!l.finish_hangup("SYSTEM_SHUTDOWN"));
        assert_eq!(l.reporting_cause(), Some("USER_BUSY"));
        l.destroy();
        assert!(!l.finish_hangup("SYSTEM_SHUTDOWN"));
        assert!(l.is_destroyed());
    }

    #[test]
    fn no_hangup_begins_once_down() {
        let mut l = Lifecycle::default();
        l.begin_hangup(false);
        l.finish_hangup("NORMAL_CLEARING");
        assert!(!l.begin_hangup(true));
        l.destroy();
        assert!(!l.begin_hangup(true));
        assert!(l.is_destroyed());
    }
}
