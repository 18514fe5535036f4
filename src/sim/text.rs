//! FreeSWITCH's small string conventions, shared by the command parser and
//! the channels: `atoi` and `switch_true`.

/// C's `atoi`: leading digits (with sign), 0 when none.
pub(crate) fn atoi(s: &str) -> i64 {
    let s = s.trim_start();
    let (neg, digits) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let n: i64 = digits
        .chars()
        .take_while(char::is_ascii_digit)
        .take(18)
        .fold(0, |acc, c| acc * 10 + i64::from(c as u8 - b'0'));
    if neg { -n } else { n }
}

/// `switch_true`.
pub(crate) fn is_true(v: &str) -> bool {
    matches!(
        v.to_ascii_lowercase().as_str(),
        "yes" | "on" | "true" | "t" | "enabled" | "active" | "allow"
    ) || atoi(v) != 0
}
