//! A call's inbox: the control messages routed to one call and not read
//! yet, kept so that no flood of one kind can crowd out another. Pure: no
//! I/O, no async; the router and the call share it behind a mutex.
//!
//! Four queues, each with its own limit:
//!
//! | queue | holds | limit | past it |
//! |---|---|---|---|
//! | hangups | `hangup` commands | `mailbox` | answered "too many control messages queued" (one hangup is already pending) |
//! | commands | every other valid command | `mailbox` | answered "too many control messages queued" |
//! | refusals | those "too many queued" answers | `overflow` | unanswered, counted |
//! | bad | unparseable, unknown or invalid messages | a token bucket: `error_burst`, refilled at `errors_per_sec` | unanswered, counted |
//!
//! A pending `hangup` is always read first: it jumps the queue. The other
//! queues are read in arrival order. Garbage only ever spends the bad
//! queue's budget, so it never takes a real command's place, and the rate
//! bounds how many `error` answers (each a publish and a history write) a
//! flood can cause. Every message is either answered once or counted as
//! unanswered.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::message::{BadControl, ControlError, ControlMessage, Delivery};

/// The limits of one inbox (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Limits {
    pub mailbox: usize,
    pub overflow: usize,
    pub error_burst: u32,
    pub errors_per_sec: f64,
}

/// What became of an offered message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Offer {
    /// Queued: the call will answer it.
    Queued,
    /// Past every limit: it will get no answer and was counted.
    Unanswered,
}

/// A token bucket: `burst` tokens, refilled continuously at `per_sec`.
#[derive(Debug, Clone)]
struct Budget {
    burst: f64,
    per_sec: f64,
    tokens: f64,
    last: Instant,
}

impl Budget {
    fn new(burst: u32, per_sec: f64, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            burst,
            per_sec: per_sec.max(0.0),
            tokens: burst,
            last: now,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// An item with its arrival order and time.
#[derive(Debug)]
struct Item<T> {
    seq: u64,
    at: Instant,
    what: T,
}

/// One call's unread control messages.
#[derive(Debug)]
pub(super) struct Inbox {
    limits: Limits,
    hangups: VecDeque<Item<()>>,
    commands: VecDeque<Item<ControlMessage>>,
    refusals: VecDeque<Item<BadControl>>,
    bad: VecDeque<Item<BadControl>>,
    budget: Budget,
    next_seq: u64,
    unanswered: u64,
    /// No more messages will come: taken over, or the router stopped.
    pub closed: bool,
}

impl Inbox {
    pub fn new(limits: Limits, now: Instant) -> Self {
        Self {
            limits,
            hangups: VecDeque::new(),
            commands: VecDeque::new(),
            refusals: VecDeque::new(),
            bad: VecDeque::new(),
            budget: Budget::new(limits.error_burst, limits.errors_per_sec, now),
            next_seq: 0,
            unanswered: 0,
            closed: false,
        }
    }

    /// Files one routed message that arrived at `now`.
    pub fn offer(&mut self, delivery: Delivery, now: Instant) -> Offer {
        let seq = self.next_seq;
        self.next_seq += 1;
        let mailbox = self.limits.mailbox.max(1);
        let refused = match delivery {
            Ok(ControlMessage::Hangup) if self.hangups.len() < mailbox => {
                self.hangups.push_back(Item {
                    seq,
                    at: now,
                    what: (),
                });
                return Offer::Queued;
            }
            Ok(msg) if msg != ControlMessage::Hangup && self.commands.len() < mailbox => {
                self.commands.push_back(Item {
                    seq,
                    at: now,
                    what: msg,
                });
                return Offer::Queued;
            }
            Ok(msg) => BadControl {
                event: Some(msg.event_type().to_owned()),
                error: ControlError::MailboxFull,
            },
            Err(bad) => {
                // The bucket bounds the queue too: it never holds more than
                // a burst plus what the rate refilled while it was read.
                if self.bad.len() < self.limits.error_burst.max(1) as usize && self.budget.take(now)
                {
                    self.bad.push_back(Item {
                        seq,
                        at: now,
                        what: bad,
                    });
                    return Offer::Queued;
                }
                return self.unanswered();
            }
        };
        if self.refusals.len() < self.limits.overflow {
            self.refusals.push_back(Item {
                seq,
                at: now,
                what: refused,
            });
            return Offer::Queued;
        }
        self.unanswered()
    }

    fn unanswered(&mut self) -> Offer {
        self.unanswered += 1;
        Offer::Unanswered
    }

    /// The next message to handle and when it arrived: a pending `hangup`
    /// first, then the oldest of the rest.
    pub fn take(&mut self) -> Option<(Delivery, Instant)> {
        if let Some(h) = self.hangups.pop_front() {
            return Some((Ok(ControlMessage::Hangup), h.at));
        }
        let heads = [
            self.commands.front().map(|i| i.seq),
            self.refusals.front().map(|i| i.seq),
            self.bad.front().map(|i| i.seq),
        ];
        let oldest = heads
            .iter()
            .enumerate()
            .filter_map(|(i, seq)| seq.map(|s| (s, i)))
            .min()?
            .1;
        match oldest {
            0 => self.commands.pop_front().map(|i| (Ok(i.what), i.at)),
            1 => self.refusals.pop_front().map(|i| (Err(i.what), i.at)),
            _ => self.bad.pop_front().map(|i| (Err(i.what), i.at)),
        }
    }

    /// Messages waiting.
    pub fn len(&self) -> usize {
        self.hangups.len() + self.commands.len() + self.refusals.len() + self.bad.len()
    }

    /// Messages this call received that got no answer.
    pub fn unanswered_total(&self) -> u64 {
        self.unanswered
    }
}

/// Counts messages left unanswered across calls and says so in the log at
/// most once per `every`, so a flood does not become a flood of log lines.
#[derive(Debug)]
pub(super) struct FloodLog {
    every: Duration,
    since_report: u64,
    total: u64,
    last_report: Option<Instant>,
    /// The call of the latest unanswered message.
    last_call: String,
}

/// One log line's worth of unanswered messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct FloodReport {
    /// Since the previous line.
    pub unanswered: u64,
    /// Since the router started.
    pub total: u64,
    /// The call of the latest one.
    pub dial_id: String,
}

impl FloodLog {
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            since_report: 0,
            total: 0,
            last_report: None,
            last_call: String::new(),
        }
    }

    /// One more unanswered message, for `dial_id`, at `now`. Returns what
    /// to log when a line is due.
    pub fn count(&mut self, dial_id: &str, now: Instant) -> Option<FloodReport> {
        self.since_report += 1;
        self.total += 1;
        if self.last_call != dial_id {
            dial_id.clone_into(&mut self.last_call);
        }
        self.due(now)
    }

    /// What to report at `now`, if anything is pending and a line is due
    /// (called on a timer, so a flood's tail is reported too).
    pub fn due(&mut self, now: Instant) -> Option<FloodReport> {
        if self.since_report == 0
            || self
                .last_report
                .is_some_and(|t| now.saturating_duration_since(t) < self.every)
        {
            return None;
        }
        self.last_report = Some(now);
        Some(FloodReport {
            unanswered: std::mem::take(&mut self.since_report),
            total: self.total,
            dial_id: self.last_call.clone(),
        })
    }

    /// Messages left unanswered since the router started.
    pub fn total(&self) -> u64 {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::control::message::{Parsed, parse};

    const LIMITS: Limits = Limits {
        mailbox: 4,
        overflow: 2,
        error_burst: 3,
        errors_per_sec: 10.0,
    };

    fn msg(raw: &str) -> Delivery {
        match parse(raw.as_bytes()) {
            Parsed::Control(c) => Ok(c),
            Parsed::Bad(b) => Err(b),
            Parsed::Ignored(t) => panic!("ignored {t}"),
        }
    }

    fn drain(inbox: &mut Inbox) -> Vec<String> {
        std::iter::from_fn(|| inbox.take())
            .map(|(d, _)| match d {
                Ok(c) => c.event_type().to_owned(),
                Err(b) => format!("error:{}", b.event.unwrap_or_default()),
            })
            .collect()
    }

    #[test]
    fn garbage_never_takes_a_commands_place_and_hangup_jumps_the_queue() {
        let now = Instant::now();
        let mut inbox = Inbox::new(LIMITS, now);
        let mut answered = 0;
        for _ in 0..500 {
            if inbox.offer(msg("garbage"), now) == Offer::Queued {
                answered += 1;
            }
        }
        assert_eq!(answered, 3, "the burst");
        assert_eq!(inbox.unanswered_total(), 497);
        for _ in 0..4 {
            assert_eq!(inbox.offer(msg(r#"{"type":"mute"}"#), now), Offer::Queued);
        }
        assert_eq!(inbox.offer(msg(r#"{"type":"hangup"}"#), now), Offer::Queued);
        assert_eq!(inbox.len(), 8);
        let order = drain(&mut inbox);
        assert_eq!(
            order,
            [
                "hangup", "error:", "error:", "error:", "mute", "mute", "mute", "mute"
            ]
        );
    }

    #[test]
    fn the_error_budget_refills_at_its_rate() {
        let start = Instant::now();
        let mut inbox = Inbox::new(LIMITS, start);
        let queued =
            |inbox: &mut Inbox, at| inbox.offer(msg(r#"{"type":"reboot"}"#), at) == Offer::Queued;
        for _ in 0..3 {
            assert!(queued(&mut inbox, start));
        }
        assert!(!queued(&mut inbox, start));
        drain(&mut inbox);
        // 10 per second: one more after 100 ms, not before.
        assert!(!queued(&mut inbox, start + Duration::from_millis(50)));
        assert!(queued(&mut inbox, start + Duration::from_millis(150)));
        assert!(!queued(&mut inbox, start + Duration::from_millis(160)));
        // Refilling stops at the burst.
        drain(&mut inbox);
        let later = start + Duration::from_secs(60);
        let n = (0..10).filter(|_| queued(&mut inbox, later)).count();
        assert_eq!(n, 3);
        assert_eq!(inbox.unanswered_total(), 2 + 1 + 7);
    }

    #[test]
    fn commands_past_the_mailbox_are_refused_then_counted() {
        let now = Instant::now();
        let mut inbox = Inbox::new(LIMITS, now);
        for _ in 0..4 {
            inbox.offer(msg(r#"{"type":"whisper"}"#), now);
        }
        assert_eq!(
            inbox.offer(msg(r#"{"type":"threeway"}"#), now),
            Offer::Queued
        );
        assert_eq!(inbox.offer(msg(r#"{"type":"mute"}"#), now), Offer::Queued);
        assert_eq!(
            inbox.offer(msg(r#"{"type":"mute"}"#), now),
            Offer::Unanswered
        );
        // Hangups have their own queue: one still goes through.
        assert_eq!(inbox.offer(msg(r#"{"type":"hangup"}"#), now), Offer::Queued);
        let (first, _) = inbox.take().unwrap();
        assert_eq!(first, Ok(ControlMessage::Hangup));
        let rest: Vec<_> = std::iter::from_fn(|| inbox.take())
            .map(|(d, _)| d)
            .collect();
        assert_eq!(rest.len(), 6);
        assert_eq!(
            rest[4],
            Err(BadControl {
                event: Some("threeway".into()),
                error: ControlError::MailboxFull
            })
        );
        assert_eq!(inbox.unanswered_total(), 1);
    }

    #[test]
    fn too_many_pending_hangups_are_refused_not_dropped() {
        let now = Instant::now();
        let mut inbox = Inbox::new(LIMITS, now);
        for _ in 0..5 {
            assert_eq!(inbox.offer(msg(r#"{"type":"hangup"}"#), now), Offer::Queued);
        }
        let all: Vec<_> = std::iter::from_fn(|| inbox.take())
            .map(|(d, _)| d)
            .collect();
        assert_eq!(all[..4], [const { Ok(ControlMessage::Hangup) }; 4]);
        assert!(matches!(
            &all[4],
            Err(BadControl {
                error: ControlError::MailboxFull,
                ..
            })
        ));
    }

    #[test]
    fn the_flood_log_reports_at_most_once_per_period_and_its_tail() {
        let start = Instant::now();
        let mut log = FloodLog::new(Duration::from_secs(1));
        let mut reports = Vec::new();
        for ms in 0..3000u64 {
            let call = if ms < 2500 { "a" } else { "b" };
            if let Some(r) = log.count(call, start + Duration::from_millis(ms)) {
                reports.push((r.unanswered, r.total));
            }
        }
        assert_eq!(reports, [(1, 1), (1000, 1001), (1000, 2001)]);
        let end = start + Duration::from_millis(2999);
        assert_eq!(log.due(end), None);
        assert_eq!(
            log.due(end + Duration::from_secs(1)),
            Some(FloodReport {
                unanswered: 999,
                total: 3000,
                dial_id: "b".into()
            })
        );
        assert_eq!(log.due(end + Duration::from_secs(5)), None);
        assert_eq!(log.total(), 3000);
    }
}
