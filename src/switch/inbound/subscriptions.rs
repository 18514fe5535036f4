//! What the connection is subscribed to, as FreeSWITCH acknowledged it, and
//! the commands that rebuild it after a reconnect.
//!
//! The client keeps BACKGROUND_JOB for itself (`bgapi` results) whatever
//! the user asks: it is always in the replayed `event` command, never in a
//! `nixevent`, and a `filter Event-Name BACKGROUND_JOB` goes in front of the
//! user's filters (FreeSWITCH passes an event when any filter matches).

use crate::esl::{Command, EventFormat};

/// The event the client needs for `bgapi` results.
pub(crate) const BACKGROUND_JOB: &str = "BACKGROUND_JOB";

/// A subscription command that succeeded and must be replayed after a
/// reconnect.
#[derive(Debug, Clone)]
pub(crate) enum SubChange {
    Event(EventFormat, Vec<String>),
    Nix(Vec<String>),
    NoEvents,
    Filter(String, String),
    FilterDelete(String, Option<String>),
}

impl SubChange {
    /// The change a command makes once FreeSWITCH accepts it.
    pub(crate) fn of(cmd: &Command) -> Option<Self> {
        Some(match cmd {
            Command::Event { format, events } => Self::Event(*format, events.clone()),
            Command::NixEvent { events } => Self::Nix(events.clone()),
            Command::NoEvents => Self::NoEvents,
            Command::Filter { header, value } => Self::Filter(header.clone(), value.clone()),
            Command::FilterDelete { header, value } => {
                Self::FilterDelete(header.clone(), value.clone())
            }
            _ => return None,
        })
    }
}

/// What the connection is subscribed to.
#[derive(Debug, Clone, Default)]
pub(crate) struct SubState {
    pub(crate) format: EventFormat,
    events: Vec<String>,
    nixed: Vec<String>,
    pub(crate) filters: Vec<(String, String)>,
}

fn has(list: &[String], name: &str) -> bool {
    list.iter().any(|n| n.eq_ignore_ascii_case(name))
}

impl SubState {
    pub(crate) fn apply(&mut self, change: &SubChange) {
        match change {
            SubChange::Event(format, names) => {
                // `event json` after `event plain` switches every
                // subscription of the connection to JSON (trace 01).
                self.format = *format;
                for n in names {
                    if !has(&self.events, n) {
                        self.events.push(n.clone());
                    }
                    self.nixed.retain(|x| !x.eq_ignore_ascii_case(n));
                }
            }
            SubChange::Nix(names) => {
                let all = has(&self.events, "ALL");
                for n in names {
                    self.events.retain(|x| !x.eq_ignore_ascii_case(n));
                    if all && !has(&self.nixed, n) {
                        self.nixed.push(n.clone());
                    }
                }
            }
            SubChange::NoEvents => {
                self.events.clear();
                self.nixed.clear();
            }
            SubChange::Filter(h, v) => {
                if !self.filters.iter().any(|(a, b)| a == h && b == v) {
                    self.filters.push((h.clone(), v.clone()));
                }
            }
            SubChange::FilterDelete(h, v) => match v {
                None if h.eq_ignore_ascii_case("all") => self.filters.clear(),
                None => self.filters.retain(|(a, _)| a != h),
                Some(v) => self.filters.retain(|(a, b)| !(a == h && b == v)),
            },
        }
    }

    /// Whether the user (not just the client) asked for BACKGROUND_JOB.
    pub(crate) fn user_wants_bg(&self) -> bool {
        has(&self.events, BACKGROUND_JOB)
            || (has(&self.events, "ALL") && !has(&self.nixed, BACKGROUND_JOB))
    }

    /// The commands that rebuild this state on a fresh connection.
    pub(crate) fn replay(&self) -> Vec<Command> {
        let mut events = vec![BACKGROUND_JOB.to_owned()];
        events.extend(
            self.events
                .iter()
                .filter(|n| !n.eq_ignore_ascii_case(BACKGROUND_JOB))
                .cloned(),
        );
        let mut out = vec![Command::Event {
            format: self.format,
            events,
        }];
        let nixed: Vec<String> = self
            .nixed
            .iter()
            .filter(|n| !n.eq_ignore_ascii_case(BACKGROUND_JOB))
            .cloned()
            .collect();
        if !nixed.is_empty() {
            out.push(Command::NixEvent { events: nixed });
        }
        if !self.filters.is_empty() {
            out.push(bg_filter());
            out.extend(self.filters.iter().map(|(h, v)| Command::Filter {
                header: h.clone(),
                value: v.clone(),
            }));
        }
        out
    }
}

/// The filter that keeps `bgapi` results flowing next to user filters.
pub(crate) fn bg_filter() -> Command {
    Command::Filter {
        header: "Event-Name".into(),
        value: BACKGROUND_JOB.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_rebuilds_subscriptions_with_bgapi_support() {
        let mut s = SubState::default();
        s.apply(&SubChange::Event(EventFormat::Plain, vec!["ALL".into()]));
        s.apply(&SubChange::Event(EventFormat::Json, vec!["DTMF".into()]));
        s.apply(&SubChange::Nix(vec!["HEARTBEAT".into()]));
        s.apply(&SubChange::Filter("Unique-ID".into(), "u1".into()));
        let cmds = s.replay();
        assert_eq!(
            cmds[0],
            Command::Event {
                format: EventFormat::Json,
                events: vec!["BACKGROUND_JOB".into(), "ALL".into(), "DTMF".into()]
            }
        );
        assert_eq!(
            cmds[1],
            Command::NixEvent {
                events: vec!["HEARTBEAT".into()]
            }
        );
        assert_eq!(cmds[2], bg_filter());
        assert_eq!(
            cmds[3],
            Command::Filter {
                header: "Unique-ID".into(),
                value: "u1".into()
            }
        );
        assert!(s.user_wants_bg());
        s.apply(&SubChange::Nix(vec!["BACKGROUND_JOB".into()]));
        assert!(!s.user_wants_bg());
        s.apply(&SubChange::FilterDelete("all".into(), None));
        assert!(s.filters.is_empty());
    }

    #[test]
    fn a_fresh_connection_subscribes_background_job_only() {
        let cmds = SubState::default().replay();
        assert_eq!(
            cmds,
            [Command::Event {
                format: EventFormat::Plain,
                events: vec!["BACKGROUND_JOB".into()]
            }]
        );
    }
}
