//! The metric registry: every metric the agent exposes, under the
//! `redswitch_` prefix, rendered as Prometheus/OpenMetrics text.
//!
//! The agent's own [`Stats`](crate::service::stats::Stats) are registered
//! as they are (their values live in shared atomics); readings kept by
//! other parts (reconnects, dropped events) are read at scrape time by a
//! [`Collector`].

use crate::service::monitor::Monitor;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::registry::{Registry, Unit};

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The registry of a running agent.
pub fn registry(monitor: &Monitor) -> Registry {
    let mut registry = Registry::with_prefix("redswitch");
    let stats = monitor.stats();
    registry.register(
        "jobs_taken",
        "Jobs moved from the job list to this instance",
        stats.jobs_taken.clone(),
    );
    registry.register(
        "jobs_dead_lettered",
        "Jobs put on the dead-letter list (bad jobs, a dial_id already in use)",
        stats.jobs_dead_lettered.clone(),
    );
    registry.register(
        "jobs_requeued",
        "Jobs put back on the job list undecided (FreeSWITCH away, shutdown, a dead instance reaped)",
        stats.jobs_requeued.clone(),
    );
    registry.register(
        "calls_active",
        "Calls running on this instance, from the job taken to the last hangup",
        stats.calls_active.clone(),
    );
    registry.register_with_unit(
        "call_setup",
        "From the job taken to the callee's answer",
        Unit::Seconds,
        stats.call_setup_seconds.clone(),
    );
    registry.register_with_unit(
        "control_roundtrip",
        "From a control message taken from the call's mailbox to its ack or error published",
        Unit::Seconds,
        stats.control_roundtrip_seconds.clone(),
    );
    registry.register(
        "hangups",
        "hangup-events published, by FreeSWITCH's hangup cause",
        stats.hangups.clone(),
    );
    registry.register(
        "outbox_pending",
        "Messages waiting to be written to Redis",
        stats.outbox_pending.clone(),
    );
    registry.register(
        "originates_throttled",
        "Originates held back by FreeSWITCH's sessions-per-second limit",
        stats.originates_throttled.clone(),
    );
    registry.register_collector(Box::new(Readings(monitor.clone())));
    registry
}

/// The registry as OpenMetrics text.
pub fn render(registry: &Registry) -> String {
    let mut text = String::with_capacity(4096);
    // Writing into a String cannot fail; a metric that could not be
    // encoded leaves what came before it.
    if let Err(error) = prometheus_client::encoding::text::encode(&mut text, registry) {
        tracing::warn!(%error, "could not encode the metrics");
    }
    text
}

/// Counters kept by the connections themselves, read on each scrape.
#[derive(Debug)]
struct Readings(Monitor);

impl Collector for Readings {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counters = [
            (
                "esl_reconnects",
                "Times the inbound connection to FreeSWITCH was re-established.",
                self.0.esl_reconnects(),
            ),
            (
                "redis_reconnects",
                "Times the control pub/sub connection to Redis was re-established.",
                self.0.redis_reconnects(),
            ),
            (
                "events_dropped",
                "FreeSWITCH events the inbound client dropped.",
                self.0.events_dropped(),
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value);
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        Ok(())
    }
}
