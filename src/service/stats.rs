//! What the agent counts for monitoring: jobs, calls, hangup causes and
//! timings, kept in `prometheus-client` metric types so the parts that do
//! the work increment them directly and [`crate::ops`] only has to register
//! them. Every metric is a cheap `Arc` clone: a part that feeds one keeps a
//! clone of it (or of the whole [`Stats`]).
//!
//! No label ever carries a `dial_id` or a uuid: those are unbounded, and a
//! metric series per call would grow the registry forever. The only label
//! is a hangup's cause, whose values FreeSWITCH takes from a fixed list.

use crate::service::events::Event;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use std::time::Instant;

/// Upper bounds (seconds) of `call_setup_seconds`: two people pick up, so
/// from under a second (auto-answer) to the ring timeout.
const SETUP_BUCKETS: [f64; 12] = [
    0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 120.0,
];

/// Upper bounds (seconds) of `control_roundtrip_seconds`: one or two
/// FreeSWITCH commands and a Redis publish, 1 ms to 8 s.
const ROUNDTRIP_BUCKETS: [f64; 14] = [
    0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096,
    8.192,
];

/// Longest hangup cause kept as a label value; FreeSWITCH's longest is
/// under 40 characters.
const MAX_CAUSE_LEN: usize = 48;

/// The label of `hangups_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CauseLabel {
    /// FreeSWITCH's hangup cause (`NORMAL_CLEARING`, `USER_BUSY`, …), or
    /// `OTHER` for anything that is not shaped like one.
    pub cause: String,
}

impl CauseLabel {
    /// The label for `cause`. Causes come from FreeSWITCH's fixed list
    /// (upper-case words joined by `_`); anything else is `OTHER`, so a
    /// misbehaving peer cannot mint new series.
    pub fn new(cause: &str) -> Self {
        let shaped = !cause.is_empty()
            && cause.len() <= MAX_CAUSE_LEN
            && cause
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        Self {
            cause: if shaped { cause } else { "OTHER" }.to_owned(),
        }
    }
}

/// The agent's counters, gauges and histograms. Clones share the values.
#[derive(Clone, Debug)]
pub struct Stats {
    /// Jobs moved from the job list to this instance's processing list.
    pub jobs_taken: Counter,
    /// Jobs put on the dead-letter list (bad jobs, reused `dial_id`s).
    pub jobs_dead_lettered: Counter,
    /// Jobs put back at the head of the job list: undecided when
    /// FreeSWITCH went away or the agent stopped, or reaped from a dead
    /// instance.
    pub jobs_requeued: Counter,
    /// Calls this agent is running, from the job taken to the last hangup.
    pub calls_active: Gauge,
    /// From the job taken to the callee's answer.
    pub call_setup_seconds: Histogram,
    /// From a control message taken from the call's mailbox to its
    /// `ack`/`error` published.
    pub control_roundtrip_seconds: Histogram,
    /// Each `hangup-event` published, by FreeSWITCH's cause.
    pub hangups: Family<CauseLabel, Counter>,
    /// Messages waiting to be written to Redis.
    pub outbox_pending: Gauge,
    /// Originates held back because FreeSWITCH's sessions-per-second limit
    /// refused them or would have.
    pub originates_throttled: Counter,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            jobs_taken: Counter::default(),
            jobs_dead_lettered: Counter::default(),
            jobs_requeued: Counter::default(),
            calls_active: Gauge::default(),
            call_setup_seconds: Histogram::new(SETUP_BUCKETS),
            control_roundtrip_seconds: Histogram::new(ROUNDTRIP_BUCKETS),
            hangups: Family::default(),
            outbox_pending: Gauge::default(),
            originates_throttled: Counter::default(),
        }
    }
}

impl Stats {
    /// Counts a call from now (its job was just taken) until the returned
    /// meter is dropped.
    pub fn call(&self) -> CallMeter {
        self.calls_active.inc();
        CallMeter {
            stats: self.clone(),
            taken: Instant::now(),
        }
    }
}

/// One call's share of [`Stats`]: it is active while the meter lives, and
/// the meter sees what the call publishes.
#[derive(Debug)]
pub struct CallMeter {
    stats: Stats,
    taken: Instant,
}

impl CallMeter {
    /// Called for every event the call publishes: the callee's answer ends
    /// the setup, and each hangup counts by cause.
    pub fn published(&self, event: &Event) {
        match event {
            Event::Answer {
                side: crate::service::events::Side::Callee,
            } => self
                .stats
                .call_setup_seconds
                .observe(self.taken.elapsed().as_secs_f64()),
            Event::Hangup { cause, .. } => {
                self.stats
                    .hangups
                    .get_or_create(&CauseLabel::new(cause))
                    .inc();
            }
            _ => {}
        }
    }

    /// FreeSWITCH's sessions-per-second limit refused one of the call's
    /// originates, which is dialled again later.
    pub fn originate_throttled(&self) {
        self.stats.originates_throttled.inc();
    }

    /// A control message taken from the mailbox at `received` was answered.
    pub fn control_answered(&self, received: Instant) {
        self.stats
            .control_roundtrip_seconds
            .observe(received.elapsed().as_secs_f64());
    }
}

impl Drop for CallMeter {
    fn drop(&mut self) {
        self.stats.calls_active.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::events::Side;

    /// Observations of a histogram, read from its text exposition.
    fn count(h: &Histogram) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("h", "", h.clone());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("h_count "))
            .unwrap_or_default()
            .to_owned()
    }

    #[test]
    fn causes_outside_freeswitch_shape_are_other() {
        assert_eq!(CauseLabel::new("NORMAL_CLEARING").cause, "NORMAL_CLEARING");
        assert_eq!(CauseLabel::new("USER_BUSY").cause, "USER_BUSY");
        for bad in ["", "normal", "A B", "X\n", &"A".repeat(49)] {
            assert_eq!(CauseLabel::new(bad).cause, "OTHER", "{bad:?}");
        }
    }

    #[test]
    fn a_meter_counts_its_call_and_what_it_publishes() {
        let stats = Stats::default();
        let meter = stats.call();
        assert_eq!(stats.calls_active.get(), 1);
        meter.published(&Event::Answer { side: Side::Caller });
        assert_eq!(count(&stats.call_setup_seconds), "0");
        meter.published(&Event::Answer { side: Side::Callee });
        assert_eq!(count(&stats.call_setup_seconds), "1");
        meter.published(&Event::Hangup {
            side: Side::Caller,
            cause: "NORMAL_CLEARING".into(),
        });
        let label = CauseLabel::new("NORMAL_CLEARING");
        assert_eq!(stats.hangups.get_or_create(&label).get(), 1);
        meter.control_answered(Instant::now());
        assert_eq!(count(&stats.control_roundtrip_seconds), "1");
        drop(meter);
        assert_eq!(stats.calls_active.get(), 0);
    }
}
