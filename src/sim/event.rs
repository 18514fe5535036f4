//! Building the events the simulator fires, the way FreeSWITCH lays them out.
//!
//! Every FreeSWITCH event starts with the same thirteen core headers
//! (`Event-Name` … `Event-Sequence`, see the traces). Channel events then add
//! the channel's state block, its caller profile and (for most types) its
//! variables; [`crate::sim::snapshot`] adds those. An event is built once and
//! shared by every subscribed connection as an `Arc<FiredEvent>`; its plain
//! and JSON encodings are produced lazily, at most once each, whatever the
//! number of subscribers.

use crate::esl::Event;
use crate::esl::event::{json_frame, plain_frame};
use bytes::Bytes;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// FreeSWITCH's event type names, in `switch_event_types_t` order. The index
/// of a name is its bit in a subscription mask.
pub(crate) const EVENT_NAMES: &[&str] = &[
    "CUSTOM",
    "CLONE",
    "CHANNEL_CREATE",
    "CHANNEL_DESTROY",
    "CHANNEL_STATE",
    "CHANNEL_CALLSTATE",
    "CHANNEL_ANSWER",
    "CHANNEL_HANGUP",
    "CHANNEL_HANGUP_COMPLETE",
    "CHANNEL_EXECUTE",
    "CHANNEL_EXECUTE_COMPLETE",
    "CHANNEL_HOLD",
    "CHANNEL_UNHOLD",
    "CHANNEL_BRIDGE",
    "CHANNEL_UNBRIDGE",
    "CHANNEL_PROGRESS",
    "CHANNEL_PROGRESS_MEDIA",
    "CHANNEL_OUTGOING",
    "CHANNEL_PARK",
    "CHANNEL_UNPARK",
    "CHANNEL_APPLICATION",
    "CHANNEL_ORIGINATE",
    "CHANNEL_UUID",
    "API",
    "LOG",
    "INBOUND_CHAN",
    "OUTBOUND_CHAN",
    "STARTUP",
    "SHUTDOWN",
    "PUBLISH",
    "UNPUBLISH",
    "TALK",
    "NOTALK",
    "SESSION_CRASH",
    "MODULE_LOAD",
    "MODULE_UNLOAD",
    "DTMF",
    "MESSAGE",
    "PRESENCE_IN",
    "NOTIFY_IN",
    "PRESENCE_OUT",
    "PRESENCE_PROBE",
    "MESSAGE_WAITING",
    "MESSAGE_QUERY",
    "ROSTER",
    "CODEC",
    "BACKGROUND_JOB",
    "DETECTED_SPEECH",
    "DETECTED_TONE",
    "PRIVATE_COMMAND",
    "HEARTBEAT",
    "TRAP",
    "ADD_SCHEDULE",
    "DEL_SCHEDULE",
    "EXE_SCHEDULE",
    "RE_SCHEDULE",
    "RELOADXML",
    "NOTIFY",
    "PHONE_FEATURE",
    "PHONE_FEATURE_SUBSCRIBE",
    "SEND_MESSAGE",
    "RECV_MESSAGE",
    "REQUEST_PARAMS",
    "CHANNEL_DATA",
    "GENERAL",
    "COMMAND",
    "SESSION_HEARTBEAT",
    "CLIENT_DISCONNECTED",
    "SERVER_DISCONNECTED",
    "SEND_INFO",
    "RECV_INFO",
    "RECV_RTCP_MESSAGE",
    "SEND_RTCP_MESSAGE",
    "CALL_SECURE",
    "NAT",
    "RECORD_START",
    "RECORD_STOP",
    "PLAYBACK_START",
    "PLAYBACK_STOP",
    "CALL_UPDATE",
    "FAILURE",
    "SOCKET_DATA",
    "MEDIA_BUG_START",
    "MEDIA_BUG_STOP",
    "CONFERENCE_DATA_QUERY",
    "CONFERENCE_DATA",
    "CALL_SETUP_REQ",
    "CALL_SETUP_RESULT",
    "CALL_DETAIL",
    "DEVICE_STATE",
    "TEXT",
    "SHUTDOWN_REQUESTED",
    "ALL",
];

/// Index of `ALL` in [`EVENT_NAMES`].
pub(crate) const EVENT_ALL: usize = EVENT_NAMES.len() - 1;
/// Index of `CUSTOM` in [`EVENT_NAMES`].
pub(crate) const EVENT_CUSTOM: usize = 0;

/// Looks an event type up by name, as `switch_name_event` does (case
/// insensitive, `SWITCH_EVENT_` prefix allowed).
pub(crate) fn event_id(name: &str) -> Option<usize> {
    let name = name
        .get(..13)
        .filter(|p| p.eq_ignore_ascii_case("SWITCH_EVENT_"))
        .map_or(name, |_| &name[13..]);
    EVENT_NAMES
        .iter()
        .position(|n| n.eq_ignore_ascii_case(name))
}

/// Microseconds since the epoch, FreeSWITCH's `Event-Date-Timestamp`.
pub(crate) fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// (year, month 1-12, day 1-31) of a day count since 1970-01-01 (Howard
/// Hinnant's civil_from_days).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `2026-11-22 05:56:34` (the simulator's local time zone is UTC).
pub(crate) fn format_local(micros: u64) -> String {
    let secs = (micros / 1_000_000) as i64;
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let t = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        t / 3600,
        t / 60 % 60,
        t % 60
    )
}

/// `Sun, 22 Nov 2026 05:56:34 GMT`.
pub(crate) fn format_gmt(micros: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = (micros / 1_000_000) as i64;
    let days = secs.div_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let t = secs.rem_euclid(86_400);
    format!(
        "{}, {d:02} {} {y:04} {:02}:{:02}:{:02} GMT",
        DAYS[days.rem_euclid(7) as usize],
        MONTHS[(m - 1) as usize],
        t / 3600,
        t / 60 % 60,
        t % 60
    )
}

/// Where FreeSWITCH fires an event from (`Event-Calling-*`), copied from the
/// traces so that the headers match.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Origin {
    pub(crate) file: &'static str,
    pub(crate) func: &'static str,
    pub(crate) line: &'static str,
}

/// Shorthand for an [`Origin`].
pub(crate) const fn origin(file: &'static str, func: &'static str, line: &'static str) -> Origin {
    Origin { file, func, line }
}

/// The switch-wide identity every event carries.
#[derive(Debug)]
pub(crate) struct CoreInfo {
    pub(crate) core_uuid: String,
    pub(crate) hostname: String,
    pub(crate) ipv4: String,
    pub(crate) ipv6: String,
    seq: AtomicU64,
    /// `Event-Date-Local` and `Event-Date-GMT` of the current second: they
    /// change once a second, and formatting them per event was a tenth of
    /// the cost of an event flood.
    dates: std::sync::Mutex<(u64, String, String)>,
}

impl CoreInfo {
    pub(crate) fn new(hostname: String, ipv4: String, ipv6: String) -> Self {
        Self {
            core_uuid: uuid::Uuid::new_v4().to_string(),
            hostname,
            ipv4,
            ipv6,
            seq: AtomicU64::new(1),
            dates: std::sync::Mutex::new((u64::MAX, String::new(), String::new())),
        }
    }

    /// A new event with its core headers, stamped now.
    pub(crate) fn event(&self, name: &str, at: Origin) -> Event {
        let mut e = Event::new(name);
        self.push_core(&mut e, at);
        e
    }

    /// Appends the twelve core headers that follow `Event-Name`.
    pub(crate) fn push_core(&self, e: &mut Event, at: Origin) {
        let now = now_micros();
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        e.push_header("Core-UUID", &self.core_uuid);
        e.push_header("FreeSWITCH-Hostname", &self.hostname);
        e.push_header("FreeSWITCH-Switchname", &self.hostname);
        e.push_header("FreeSWITCH-IPv4", &self.ipv4);
        e.push_header("FreeSWITCH-IPv6", &self.ipv6);
        {
            let mut dates = crate::sim::lock(&self.dates);
            let second = now / 1_000_000;
            if dates.0 != second {
                *dates = (second, format_local(now), format_gmt(now));
            }
            e.push_header("Event-Date-Local", &dates.1);
            e.push_header("Event-Date-GMT", &dates.2);
        }
        e.push_header("Event-Date-Timestamp", &now.to_string());
        e.push_header("Event-Calling-File", at.file);
        e.push_header("Event-Calling-Function", at.func);
        e.push_header("Event-Calling-Line-Number", at.line);
        e.push_header("Event-Sequence", &seq.to_string());
    }
}

/// An event as delivered to subscribers: the event, what subscriptions match
/// on, and its wire encodings (built on first use, then shared).
#[derive(Debug)]
pub struct FiredEvent {
    pub(crate) event: Event,
    /// Index in [`EVENT_NAMES`] (CUSTOM for unknown names).
    pub(crate) id: usize,
    pub(crate) unique_id: Option<String>,
    plain: OnceLock<Bytes>,
    json: OnceLock<Bytes>,
}

impl FiredEvent {
    pub(crate) fn new(event: Event) -> Self {
        let id = event_id(event.name()).unwrap_or(EVENT_CUSTOM);
        let unique_id = event.unique_id().map(str::to_owned);
        Self {
            event,
            id,
            unique_id,
            plain: OnceLock::new(),
            json: OnceLock::new(),
        }
    }

    /// The `text/event-plain` frame.
    pub(crate) fn plain(&self) -> Bytes {
        self.plain.get_or_init(|| plain_frame(&self.event)).clone()
    }

    /// The `text/event-json` frame.
    pub(crate) fn json(&self) -> Bytes {
        self.json.get_or_init(|| json_frame(&self.event)).clone()
    }

    /// The `text/event-xml` frame (FreeSWITCH's `switch_event_xmlize` shape).
    pub(crate) fn xml(&self) -> Bytes {
        let mut body = String::from("<event>\n  <headers>\n");
        for (name, value) in self.event.headers() {
            body.push_str("    <");
            body.push_str(name);
            body.push('>');
            xml_escape(value, &mut body);
            body.push_str("</");
            body.push_str(name);
            body.push_str(">\n");
        }
        body.push_str("  </headers>\n");
        if let Some(b) = self.event.body() {
            body.push_str(&format!("  <body>{}</body>\n", {
                let mut s = String::new();
                xml_escape(b, &mut s);
                s
            }));
        }
        body.push_str("</event>");
        Bytes::from(format!(
            "Content-Length: {}\nContent-Type: text/event-xml\n\n{body}",
            body.len()
        ))
    }
}

fn xml_escape(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_match_freeswitch_formats() {
        // 1795326994708889 is Event-Date-Timestamp in trace 01.
        assert_eq!(format_local(1_795_326_994_708_889), "2026-11-22 05:56:34");
        assert_eq!(
            format_gmt(1_795_326_994_708_889),
            "Sun, 22 Nov 2026 05:56:34 GMT"
        );
        assert_eq!(format_gmt(0), "Thu, 01 Jan 1970 00:00:00 GMT");
    }

    #[test]
    fn event_names_resolve_like_switch_name_event() {
        assert_eq!(event_id("CHANNEL_CREATE"), Some(2));
        assert_eq!(event_id("channel_answer"), Some(6));
        assert_eq!(event_id("SWITCH_EVENT_DTMF"), event_id("DTMF"));
        assert_eq!(event_id("ALL"), Some(EVENT_ALL));
        assert_eq!(event_id("NOPE"), None);
    }
}
