//! FreeSWITCH's scheduler as `sched_hangup` uses it: a hangup that
//! FreeSWITCH itself carries out at a given time, whatever runs on the
//! channel and whether or not anyone is still connected to the switch.
//!
//! Both forms are here: the API (`sched_hangup [+]<time> <uuid> [<cause>]`,
//! mod_commands) and the application (`sched_hangup [+]<time> [<cause>]`,
//! mod_dptools). `+N` is N seconds from now, a bare number an epoch time;
//! the cause defaults to `ALLOTTED_TIMEOUT`. As in FreeSWITCH, times are
//! whole epoch seconds (so `+1` fires within 0–1 s), a time whose digits
//! after the first read as 0 (`+0`, `0`) hangs up at once, and the hangup
//! acts like `uuid_kill`: it does not queue behind a running application.
//! A scheduled hangup is dropped when its channel ends (FreeSWITCH deletes
//! the channel's task group when the session is destroyed).

use crate::sim::Core;
use crate::sim::mailbox::{ChanMsg, ChannelHandle};
use crate::sim::snapshot::normalize_cause;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The cause a scheduled hangup uses when none is given.
pub(crate) const DEFAULT_CAUSE: &str = "ALLOTTED_TIMEOUT";

/// When a `[+]<time>` argument fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum When {
    /// At once (`sched_hangup +0 …`).
    Now,
    /// At this epoch second.
    At(u64),
}

/// Reads `[+]<time>` as FreeSWITCH does: `atol` of the text after the
/// first character decides "at once", `+` makes it relative to `now`.
pub(crate) fn parse_when(spec: &str, now_epoch: u64) -> When {
    let tail = spec.get(1..).unwrap_or("");
    if atol(tail) == 0 {
        return When::Now;
    }
    match spec.strip_prefix('+') {
        Some(rel) => When::At(now_epoch.saturating_add(atol(rel).max(0) as u64)),
        None => When::At(atol(spec).max(0) as u64),
    }
}

/// C's `atol`/`atoi`: leading digits after an optional sign, 0 if none.
pub(crate) fn atol(s: &str) -> i64 {
    let s = s.trim_start();
    let (neg, digits) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let end = digits
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    let v = digits[..end].parse::<i64>().unwrap_or(i64::MAX);
    let v = if end == 0 { 0 } else { v };
    if neg { -v } else { v }
}

/// The current epoch second.
pub(crate) fn epoch_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The cause argument: absent means `ALLOTTED_TIMEOUT`.
pub(crate) fn cause(arg: Option<&str>) -> String {
    arg.map_or_else(|| DEFAULT_CAUSE.to_owned(), normalize_cause)
}

/// Hangs `channel` up with `cause` at epoch second `at`, unless it has
/// ended by then.
pub(crate) fn hangup_at(core: &Arc<Core>, channel: ChannelHandle, at: u64, cause: String) {
    let shutdown = core.shutdown.clone();
    core.tasks.spawn(async move {
        let due = UNIX_EPOCH + Duration::from_secs(at);
        let wait = due
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        tokio::select! {
            () = shutdown.cancelled() => {}
            // The channel's task has ended: nothing to hang up.
            () = channel.tx.closed() => {}
            () = tokio::time::sleep(wait) => {
                channel.send(ChanMsg::Hangup(cause)).await;
            }
        }
    });
}

/// `sched_hangup` API: the reply text, having scheduled (or done) the
/// hangup.
pub(crate) async fn api(core: &Arc<Core>, args: &[&str]) -> String {
    let Some(spec) = args.first().filter(|s| !s.is_empty()) else {
        return "-USAGE: [+]<time> <uuid> [<cause>]\n".into();
    };
    let Some(channel) = args.get(1).and_then(|u| core.channel(u)) else {
        return "-ERR No Such Channel!\n".into();
    };
    let cause = cause(args.get(2).copied());
    match parse_when(spec, epoch_now()) {
        When::Now => {
            channel.send(ChanMsg::Hangup(cause)).await;
        }
        When::At(at) => hangup_at(core, channel, at, cause),
    }
    "+OK\n".into()
}

/// `sched_hangup` application on `me`: returns the cause when the hangup
/// is due at once (the application hangs its own channel up), else
/// schedules it and returns `None`. Without a time it does nothing
/// (FreeSWITCH logs "No time specified.").
pub(crate) fn app(core: &Arc<Core>, me: &ChannelHandle, arg: &str) -> Option<String> {
    let mut words = arg.split_whitespace();
    let spec = words.next()?;
    let cause = cause(words.next());
    match parse_when(spec, epoch_now()) {
        When::Now => Some(cause),
        When::At(at) => {
            hangup_at(core, me.clone(), at, cause);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_freeswitch_reads_them() {
        assert_eq!(parse_when("+30", 1000), When::At(1030));
        assert_eq!(parse_when("+14400", 1000), When::At(15400));
        assert_eq!(parse_when("+0", 1000), When::Now);
        assert_eq!(parse_when("0", 1000), When::Now);
        assert_eq!(parse_when("+", 1000), When::Now);
        assert_eq!(parse_when("+x", 1000), When::Now);
        assert_eq!(parse_when("1796016972", 1000), When::At(1_796_016_972));
        // atol of "0" after the first digit: at once, as in FreeSWITCH.
        assert_eq!(parse_when("10", 1000), When::Now);
    }

    #[test]
    fn the_cause_defaults_to_allotted_timeout() {
        assert_eq!(cause(None), "ALLOTTED_TIMEOUT");
        assert_eq!(cause(Some("user_busy")), "USER_BUSY");
    }
}
