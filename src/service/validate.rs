//! Allow-list grammars for every value that comes from Redis (docs/PROTOCOL.md).
//!
//! Values from jobs and control messages end up in FreeSWITCH dial strings,
//! ESL commands and Redis key names. FreeSWITCH splits variable blocks on `,`,
//! ends them at `}`/`]`/`>`, expands `${…}` and treats a newline as the start
//! of a new command, so nothing is "cleaned": a value either matches its
//! grammar exactly or is rejected with a [`ValidationError`] naming the field
//! and the rule.
//!
//! Each grammar has a newtype ([`Id`], [`PhoneNumber`], [`Provider`],
//! [`Digits`], [`RecordingName`], [`Media`]) whose only constructor validates,
//! so code that builds ESL commands can take these types and never see an
//! unchecked string.

use std::borrow::Cow;
use std::fmt;

/// A value broke its allow-list grammar.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid `{field}`: {violation} (rule: {rule})")]
pub struct ValidationError {
    /// The field the value came from (`dial_id`, `callee_number`, `media[2]` …).
    pub field: Cow<'static, str>,
    /// The grammar the value had to match.
    pub rule: Rule,
    /// What exactly was wrong.
    pub violation: Violation,
}

/// The grammars of the contract's validation rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// `dial_id`, `org_id`, `user_id`.
    Id,
    /// Phone numbers and caller ids.
    PhoneNumber,
    /// `call_provider` (a FreeSWITCH gateway name).
    Provider,
    /// DTMF digits to send.
    Dtmf,
    /// DTMF tone duration.
    DtmfDuration,
    /// Recording file names.
    RecordingName,
    /// Media to play: a file, a tone stream or a silence stream.
    Media,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Rule::Id => "1-128 of [A-Za-z0-9_-]",
            Rule::PhoneNumber => "optional '+', then 1-32 of [0-9*#]",
            Rule::Provider => "1-64 of [A-Za-z0-9_.-]",
            Rule::Dtmf => "1-64 of [0-9*#A-D]",
            Rule::DtmfDuration => "an integer from 1 to 10000 (ms)",
            Rule::RecordingName => "1-128 of [A-Za-z0-9_-]",
            Rule::Media => {
                "a relative file name of [A-Za-z0-9_./-] without '..' segments, \
                 tone_stream://%(on,off,freq[,freq...])[;loops=N] or silence_stream://<ms>"
            }
        })
    }
}

/// What was wrong with a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// The value is empty.
    Empty,
    /// The value is longer than the grammar allows.
    TooLong {
        /// The most the grammar allows.
        max: usize,
        /// What was given.
        len: usize,
    },
    /// A character outside the grammar's alphabet.
    BadChar {
        /// The character (shown escaped, so control characters cannot
        /// corrupt logs).
        ch: char,
        /// Its byte offset in the value.
        at: usize,
    },
    /// A number outside its range.
    OutOfRange,
    /// A path with a `..` segment.
    ParentSegment,
    /// An absolute path.
    Absolute,
    /// A `tone_stream://` or `silence_stream://` that is not in the exact
    /// accepted form.
    BadStream,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::Empty => f.write_str("empty"),
            Violation::TooLong { max, len } => write!(f, "{len} characters, at most {max}"),
            Violation::BadChar { ch, at } => {
                write!(
                    f,
                    "character '{}' at byte {at} not allowed",
                    ch.escape_debug()
                )
            }
            Violation::OutOfRange => f.write_str("out of range"),
            Violation::ParentSegment => f.write_str("'..' path segment"),
            Violation::Absolute => f.write_str("absolute path"),
            Violation::BadStream => f.write_str("malformed stream"),
        }
    }
}

fn err(field: impl Into<Cow<'static, str>>, rule: Rule, violation: Violation) -> ValidationError {
    ValidationError {
        field: field.into(),
        rule,
        violation,
    }
}

/// Checks `value` is 1..=`max` bytes long and made only of bytes `ok`
/// accepts. Every grammar here is ASCII, so a non-ASCII character (unicode
/// digits included) is always a `BadChar`.
fn charset(
    field: Cow<'static, str>,
    rule: Rule,
    value: &str,
    max: usize,
    ok: impl Fn(u8) -> bool,
) -> Result<(), ValidationError> {
    if value.is_empty() {
        return Err(err(field, rule, Violation::Empty));
    }
    if let Some((at, ch)) = value
        .char_indices()
        .find(|&(_, c)| !c.is_ascii() || !ok(c as u8))
    {
        return Err(err(field, rule, Violation::BadChar { ch, at }));
    }
    if value.len() > max {
        return Err(err(
            field,
            rule,
            Violation::TooLong {
                max,
                len: value.len(),
            },
        ));
    }
    Ok(())
}

fn is_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

fn is_phone_byte(b: u8) -> bool {
    b.is_ascii_digit() || b == b'*' || b == b'#'
}

/// Defines a validated string newtype with `parse`, `as_str` and `Display`.
macro_rules! validated_string {
    ($(#[$doc:meta])* $name:ident, $check:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Validates `value` for `field`; the error names both.
            pub fn parse(
                field: impl Into<Cow<'static, str>>,
                value: &str,
            ) -> Result<Self, ValidationError> {
                $check(field.into(), value)?;
                Ok(Self(value.to_owned()))
            }

            /// The validated value.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The validated value, owned.
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
    };
}

fn check_id(field: Cow<'static, str>, value: &str) -> Result<(), ValidationError> {
    charset(field, Rule::Id, value, 128, is_id_byte)
}

fn check_phone(field: Cow<'static, str>, value: &str) -> Result<(), ValidationError> {
    // The '+' is only allowed first; strip it and check the rest as digits,
    // fixing up the reported offset so it points into the original value.
    let (offset, digits) = match value.strip_prefix('+') {
        Some(rest) => (1, rest),
        None => (0, value),
    };
    charset(field, Rule::PhoneNumber, digits, 32, is_phone_byte).map_err(|mut e| {
        if let Violation::BadChar { at, .. } = &mut e.violation {
            *at += offset;
        }
        e
    })
}

fn check_provider(field: Cow<'static, str>, value: &str) -> Result<(), ValidationError> {
    charset(field, Rule::Provider, value, 64, |b| {
        is_id_byte(b) || b == b'.'
    })
}

fn check_dtmf(field: Cow<'static, str>, value: &str) -> Result<(), ValidationError> {
    charset(field, Rule::Dtmf, value, 64, |b| {
        is_phone_byte(b) || (b'A'..=b'D').contains(&b)
    })
}

fn check_recording_name(field: Cow<'static, str>, value: &str) -> Result<(), ValidationError> {
    charset(field, Rule::RecordingName, value, 128, is_id_byte)
}

validated_string!(
    /// A `dial_id`, `org_id` or `user_id`: 1–128 of `[A-Za-z0-9_-]`. No dots,
    /// because Redis key names are dot-separated.
    Id,
    check_id
);
validated_string!(
    /// A phone number or caller id: optional `+`, then 1–32 of `[0-9*#]`.
    PhoneNumber,
    check_phone
);
validated_string!(
    /// A `call_provider` (gateway name): 1–64 of `[A-Za-z0-9_.-]`.
    Provider,
    check_provider
);
validated_string!(
    /// DTMF digits to send: 1–64 of `[0-9*#A-D]`.
    Digits,
    check_dtmf
);
validated_string!(
    /// A recording name: 1–128 of `[A-Za-z0-9_-]`; the file is written under
    /// the configured recordings folder.
    RecordingName,
    check_recording_name
);

/// Checks a DTMF tone duration: 1..=10000 ms.
pub fn dtmf_duration_ms(
    field: impl Into<Cow<'static, str>>,
    value: u64,
) -> Result<u32, ValidationError> {
    match u32::try_from(value) {
        Ok(ms @ 1..=10_000) => Ok(ms),
        _ => Err(err(field, Rule::DtmfDuration, Violation::OutOfRange)),
    }
}

/// Longest media file name accepted (a path relative to the media folder).
pub const MAX_MEDIA_PATH: usize = 255;
/// Longest tone stream accepted, whole string.
pub const MAX_TONE_STREAM: usize = 256;
/// Longest silence accepted: one hour.
pub const MAX_SILENCE_MS: u32 = 3_600_000;

const TONE_PREFIX: &str = "tone_stream://%(";
const SILENCE_PREFIX: &str = "silence_stream://";

/// Something `play` may play.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Media {
    /// A file name relative to the configured media folder (never absolute,
    /// never with a `..` segment).
    File(String),
    /// A `tone_stream://%(on,off,freq[,freq…])[;loops=N]`, exactly as given.
    Tone(String),
    /// `silence_stream://<ms>`: this many milliseconds of silence.
    Silence(u32),
}

impl Media {
    /// Validates one media item for `field`.
    pub fn parse(
        field: impl Into<Cow<'static, str>>,
        value: &str,
    ) -> Result<Self, ValidationError> {
        let field = field.into();
        let bad = |v| err(field.clone(), Rule::Media, v);
        if value.starts_with("tone_stream:") {
            return if value.len() <= MAX_TONE_STREAM && is_tone_stream(value) {
                Ok(Media::Tone(value.to_owned()))
            } else {
                Err(bad(Violation::BadStream))
            };
        }
        if let Some(ms) = value.strip_prefix(SILENCE_PREFIX) {
            return match parse_digits(ms, 7) {
                Some(ms) if (1..=MAX_SILENCE_MS).contains(&ms) => Ok(Media::Silence(ms)),
                _ => Err(bad(Violation::BadStream)),
            };
        }
        charset(field.clone(), Rule::Media, value, MAX_MEDIA_PATH, |b| {
            is_id_byte(b) || b == b'.' || b == b'/'
        })?;
        if value.starts_with('/') {
            return Err(bad(Violation::Absolute));
        }
        if value.split('/').any(|segment| segment == "..") {
            return Err(bad(Violation::ParentSegment));
        }
        Ok(Media::File(value.to_owned()))
    }
}

impl fmt::Display for Media {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Media::File(path) => f.write_str(path),
            Media::Tone(tone) => f.write_str(tone),
            Media::Silence(ms) => write!(f, "{SILENCE_PREFIX}{ms}"),
        }
    }
}

/// `1..=max_len` ASCII digits as a number.
fn parse_digits(s: &str, max_len: usize) -> Option<u32> {
    if s.is_empty() || s.len() > max_len || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `tone_stream://%(on,off,freq[,freq…])` with an optional `;loops=N`: digits
/// and those commas only, at least one frequency.
fn is_tone_stream(value: &str) -> bool {
    let Some(rest) = value.strip_prefix(TONE_PREFIX) else {
        return false;
    };
    let Some((spec, tail)) = rest.split_once(')') else {
        return false;
    };
    let numbers: Vec<&str> = spec.split(',').collect();
    if numbers.len() < 3 || numbers.iter().any(|n| parse_digits(n, 5).is_none()) {
        return false;
    }
    match tail {
        "" => true,
        _ => tail
            .strip_prefix(";loops=")
            .is_some_and(|n| parse_digits(n, 5).is_some()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Injection attempts: dial-string syntax, expansion, newlines, Unicode digits.
    const INJECTIONS: &[&str] = &[
        "1555,execute_on_answer=system x",
        "1555}",
        "{a=b}1555",
        "1555|sofia/gateway/x/1666",
        "1555&park()",
        "1555 foo",
        "١٥٥٥",
        "1555${system(id)}",
        "${",
        "1555\n",
        "1555\napi system x",
        "1555\r",
        "'1555'",
        "\"1555\"",
        "1555\\",
        "1555^",
        "1555<x>",
        "[a=b]1555",
        "1555\t",
        "1555\0",
        "１５５５",
    ];

    #[test]
    fn ids_accept_the_grammar() {
        for ok in ["a", "talkiq_dial_id", "A-b_9", &"x".repeat(128)] {
            assert_eq!(Id::parse("dial_id", ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn ids_reject_dots_spaces_length_and_injection() {
        let e = Id::parse("org_id", "a.b").unwrap_err();
        assert_eq!(e.field, "org_id");
        assert_eq!(e.rule, Rule::Id);
        assert_eq!(e.violation, Violation::BadChar { ch: '.', at: 1 });
        assert_eq!(
            Id::parse("user_id", "a b").unwrap_err().violation,
            Violation::BadChar { ch: ' ', at: 1 }
        );
        assert_eq!(
            Id::parse("dial_id", "").unwrap_err().violation,
            Violation::Empty
        );
        assert_eq!(
            Id::parse("dial_id", &"x".repeat(129))
                .unwrap_err()
                .violation,
            Violation::TooLong { max: 128, len: 129 }
        );
        for bad in INJECTIONS {
            assert!(Id::parse("dial_id", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn phone_numbers_accept_the_grammar() {
        for ok in ["14157697098", "+14157697098", "*67#", "1", &"9".repeat(32)] {
            assert!(PhoneNumber::parse("callee_number", ok).is_ok(), "{ok}");
        }
        let plus33 = format!("+{}", "9".repeat(32));
        assert!(PhoneNumber::parse("callee_number", &plus33).is_ok());
    }

    #[test]
    fn phone_numbers_reject_injection_unicode_and_shape() {
        for bad in INJECTIONS {
            let e = PhoneNumber::parse("caller_id_lega", bad).unwrap_err();
            assert_eq!(e.field, "caller_id_lega");
            assert_eq!(e.rule, Rule::PhoneNumber);
        }
        for bad in ["", "+", "++1", "1+1", "1555a", &"9".repeat(33), "- 1"] {
            assert!(PhoneNumber::parse("callee_number", bad).is_err(), "{bad}");
        }
        // The offset of a bad character counts the leading '+'.
        assert_eq!(
            PhoneNumber::parse("n", "+15,5").unwrap_err().violation,
            Violation::BadChar { ch: ',', at: 3 }
        );
        // Arabic-Indic digits are digits to Unicode, not to FreeSWITCH.
        assert_eq!(
            PhoneNumber::parse("n", "١٥٥٥").unwrap_err().violation,
            Violation::BadChar { ch: '١', at: 0 }
        );
    }

    #[test]
    fn providers() {
        for ok in ["talk_call_provider", "gw.example-1", &"p".repeat(64)] {
            assert!(Provider::parse("call_provider", ok).is_ok());
        }
        for bad in INJECTIONS {
            assert!(Provider::parse("call_provider", bad).is_err(), "{bad:?}");
        }
        for bad in ["", "gw/1", "gw:5060", &"p".repeat(65)] {
            assert!(Provider::parse("call_provider", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dtmf_digits_and_duration() {
        for ok in ["0123456789", "*#ABCD", "1"] {
            assert!(Digits::parse("digits", ok).is_ok());
        }
        for bad in ["", "a", "E", "1 2", "1,2", "+1", &"1".repeat(65)] {
            assert_eq!(
                Digits::parse("digits", bad).unwrap_err().rule,
                Rule::Dtmf,
                "{bad}"
            );
        }
        for bad in INJECTIONS {
            assert!(Digits::parse("digits", bad).is_err(), "{bad:?}");
        }
        assert_eq!(dtmf_duration_ms("duration_ms", 1), Ok(1));
        assert_eq!(dtmf_duration_ms("duration_ms", 10_000), Ok(10_000));
        for bad in [0, 10_001, u64::from(u32::MAX) + 1] {
            let e = dtmf_duration_ms("duration_ms", bad).unwrap_err();
            assert_eq!(
                (e.rule, e.violation),
                (Rule::DtmfDuration, Violation::OutOfRange)
            );
        }
    }

    #[test]
    fn recording_names() {
        assert!(RecordingName::parse("name", "call-42_a").is_ok());
        for bad in ["", "a.wav", "../x", "/tmp/x", "a/b", &"r".repeat(129)] {
            assert!(RecordingName::parse("name", bad).is_err(), "{bad}");
        }
        for bad in INJECTIONS {
            assert!(RecordingName::parse("name", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn media_files() {
        assert_eq!(
            Media::parse("media[0]", "ivr/welcome.wav"),
            Ok(Media::File("ivr/welcome.wav".into()))
        );
        assert!(Media::parse("m", "./a..b.wav").is_ok());
        let e = Media::parse("media[1]", "../etc/passwd").unwrap_err();
        assert_eq!(
            (e.field.as_ref(), e.violation),
            ("media[1]", Violation::ParentSegment)
        );
        assert_eq!(
            Media::parse("m", "a/../../b").unwrap_err().violation,
            Violation::ParentSegment
        );
        assert_eq!(
            Media::parse("m", "a/..").unwrap_err().violation,
            Violation::ParentSegment
        );
        assert_eq!(
            Media::parse("m", "/etc/passwd").unwrap_err().violation,
            Violation::Absolute
        );
        for bad in INJECTIONS {
            assert!(Media::parse("m", bad).is_err(), "{bad:?}");
        }
        for bad in ["", "a b.wav", "a:b", "http://x/y.wav", "a\\b", "${x}.wav"] {
            assert!(Media::parse("m", bad).is_err(), "{bad}");
        }
        assert!(Media::parse("m", &"a".repeat(MAX_MEDIA_PATH + 1)).is_err());
    }

    #[test]
    fn media_tone_streams() {
        for ok in [
            "tone_stream://%(2000,4000,440,480)",
            "tone_stream://%(100,0,941)",
            "tone_stream://%(2000,4000,440,480);loops=3",
        ] {
            assert_eq!(Media::parse("m", ok), Ok(Media::Tone(ok.into())));
        }
        for bad in [
            "tone_stream://%(2000,4000)",
            "tone_stream://%(2000,4000,)",
            "tone_stream://%(2000,4000,440",
            "tone_stream://%(2000,4000,440);loops=-1",
            "tone_stream://%(2000,4000,440);loops=",
            "tone_stream://%(2000,4000,440);loops=1,2",
            "tone_stream://%(2000,4000,440)x",
            "tone_stream://%(2000,4000,440);loops=1;x=y",
            "tone_stream://%(2000,4000,440+480)",
            "tone_stream://%(2000,4000,${system(x)})",
            "tone_stream://%(2000,4000,440)\napi system x",
            "tone_stream://v=-7;%(100,0,941)",
            "tone_stream://L=3;%(100,0,941)",
            "tone_stream://%(١,0,941)",
        ] {
            assert_eq!(
                Media::parse("m", bad).unwrap_err().violation,
                Violation::BadStream,
                "{bad}"
            );
        }
    }

    #[test]
    fn media_silence_streams() {
        assert_eq!(
            Media::parse("m", "silence_stream://500"),
            Ok(Media::Silence(500))
        );
        assert_eq!(Media::Silence(500).to_string(), "silence_stream://500");
        for bad in [
            "silence_stream://",
            "silence_stream://0",
            "silence_stream://-1",
            "silence_stream://500,1400",
            "silence_stream://99999999",
            "silence_stream://5 0",
        ] {
            assert!(Media::parse("m", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn error_messages_name_field_and_rule_and_escape_control_chars() {
        let e = PhoneNumber::parse("callee_number", "1555\napi").unwrap_err();
        let text = e.to_string();
        assert!(text.contains("`callee_number`"), "{text}");
        assert!(text.contains("[0-9*#]"), "{text}");
        assert!(text.contains("'\\n'"), "{text}");
        assert!(!text.contains('\n'), "{text}");
    }
}
