//! FreeSWITCH events: one typed model for the plain and JSON encodings.
//!
//! An [`Event`] keeps its headers in wire order. Decoding writes every name
//! and (percent-decoded) value into a single string and records where each
//! lies, so a 3 KiB event with a hundred headers costs two allocations, not
//! two hundred. The same type encodes events back to plain or JSON, exactly
//! as FreeSWITCH does, for the simulator.

use crate::esl::frame::{ContentType, Frame};
use bytes::Bytes;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use std::fmt;
use std::ops::Range;

/// Why a frame could not be turned into an [`Event`]. The frame is dropped
/// (and logged); the connection goes on.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// Every FreeSWITCH event names itself; one that does not is not usable.
    #[error("event without an Event-Name header")]
    MissingEventName,
    /// The frame is not an event (wrong content type) or has no body.
    #[error("frame is not an event ({0:?})")]
    NotAnEvent(ContentType),
    /// A JSON event that is not a JSON object of strings.
    #[error("malformed JSON event: {0}")]
    Json(#[from] serde_json::Error),
    /// A plain event line without `: `.
    #[error("malformed plain event line {0:?}")]
    BadLine(String),
    /// The XML encoding is recognised but not decoded (subscribe plain or json).
    #[error("text/event-xml events are not decoded; subscribe with plain or json")]
    XmlNotSupported,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Span {
    name: Range<u32>,
    value: Range<u32>,
}

/// One FreeSWITCH event: ordered headers and an optional body.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Event {
    /// Every header name and decoded value, back to back.
    text: String,
    /// Positions of each header in `text`, in wire order.
    headers: Vec<Span>,
    /// The event body (`_body` in JSON), e.g. a BACKGROUND_JOB's result.
    body: Option<String>,
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("name", &self.name())
            .field("headers", &self.headers().collect::<Vec<_>>())
            .field("body", &self.body)
            .finish()
    }
}

/// Characters FreeSWITCH's `switch_url_encode` escapes in plain events,
/// besides control characters and bytes above `~`.
const URL_UNSAFE: &[u8] = b" \"#%&+:;<=>?@[\\]^`{|}";

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decodes `buf[from..end]` in place (escapes only shrink it) and
/// returns where the decoded value now ends. A `%` not followed by two hex
/// digits is kept as it is, as FreeSWITCH's `switch_url_decode` does.
fn decode_in_place(buf: &mut [u8], from: usize, end: usize) -> usize {
    let (mut r, mut w) = (from, from);
    while r < end {
        let c = buf[r];
        let escaped = if c == b'%' && r + 3 <= end {
            hex_val(buf[r + 1]).zip(hex_val(buf[r + 2]))
        } else {
            None
        };
        match escaped {
            Some((h, l)) => {
                buf[w] = h << 4 | l;
                r += 3;
            }
            None => {
                buf[w] = c;
                r += 1;
            }
        }
        w += 1;
    }
    w
}

fn bad_line(line: &[u8]) -> EventError {
    EventError::BadLine(String::from_utf8_lossy(&line[..line.len().min(80)]).into_owned())
}

/// Which bytes `switch_url_encode` escapes: [`URL_UNSAFE`], control
/// characters and everything above `~`. A table: encoding runs for every
/// header of every event the simulator sends.
const ESCAPED: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = b < 0x20 || b > 0x7e;
        b += 1;
    }
    let mut i = 0;
    while i < URL_UNSAFE.len() {
        table[URL_UNSAFE[i] as usize] = true;
        i += 1;
    }
    table
};

/// Percent-encodes a value as FreeSWITCH writes it in plain events.
pub fn percent_encode_into(value: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let bytes = value.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if ESCAPED[b as usize] {
            out.extend_from_slice(&bytes[start..i]);
            out.extend_from_slice(&[b'%', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]);
            start = i + 1;
        }
    }
    out.extend_from_slice(&bytes[start..]);
}

/// The decoded text of an event and the position of each header in it.
struct TextBuilder {
    bytes: Vec<u8>,
    headers: Vec<Span>,
}

impl TextBuilder {
    fn with_capacity(bytes: usize, headers: usize) -> Self {
        Self {
            bytes: Vec::with_capacity(bytes),
            headers: Vec::with_capacity(headers),
        }
    }

    fn push(&mut self, name: &[u8], value: &[u8]) {
        let n0 = self.bytes.len();
        self.bytes.extend_from_slice(name);
        let v0 = self.bytes.len();
        self.bytes.extend_from_slice(value);
        self.headers.push(Span {
            name: n0 as u32..v0 as u32,
            value: v0 as u32..self.bytes.len() as u32,
        });
    }

    /// The value of the last header if it is `Content-Length`.
    fn last_content_length(&self) -> Option<usize> {
        let span = self.headers.last()?;
        let name = &self.bytes[span.name.start as usize..span.name.end as usize];
        let value = &self.bytes[span.value.start as usize..span.value.end as usize];
        (name == b"Content-Length")
            .then(|| std::str::from_utf8(value).ok()?.parse().ok())
            .flatten()
    }

    fn pop_header(&mut self) {
        if let Some(span) = self.headers.pop() {
            self.bytes.truncate(span.name.start as usize);
        }
    }

    /// The same headers with bytes that are not UTF-8 replaced by U+FFFD,
    /// header by header, so one bad value does not cost the whole event.
    fn repaired_parts(bytes: Vec<u8>, headers: Vec<Span>) -> (String, Vec<Span>) {
        let mut fixed = Self::with_capacity(bytes.len() + 64, headers.len());
        let slice = |r: &Range<u32>| &bytes[r.start as usize..r.end as usize];
        for span in &headers {
            let name = String::from_utf8_lossy(slice(&span.name));
            let value = String::from_utf8_lossy(slice(&span.value));
            fixed.push(name.as_bytes(), value.as_bytes());
        }
        // Every pushed piece came from a `str`.
        let text = String::from_utf8(fixed.bytes)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        (text, fixed.headers)
    }

    /// Validates the text once; bytes that are not UTF-8 (or a span that
    /// would cut a character) send the event through [`Self::repaired`].
    fn finish(self, body: Option<String>) -> Result<Event, EventError> {
        let headers = self.headers;
        let (text, headers) = match String::from_utf8(self.bytes) {
            Ok(text)
                if headers.iter().all(|s| {
                    [s.name.start, s.name.end, s.value.start, s.value.end]
                        .iter()
                        .all(|&i| text.is_char_boundary(i as usize))
                }) =>
            {
                (text, headers)
            }
            Ok(text) => Self::repaired_parts(text.into_bytes(), headers),
            Err(e) => Self::repaired_parts(e.into_bytes(), headers),
        };
        let event = Event {
            text,
            headers,
            body,
        };
        if event.header("Event-Name").is_none() {
            return Err(EventError::MissingEventName);
        }
        Ok(event)
    }
}

impl Event {
    /// An empty event with just its `Event-Name` (for building events).
    pub fn new(name: &str) -> Self {
        let mut e = Self::default();
        e.push_header("Event-Name", name);
        e
    }

    /// Decodes an event frame of any supported encoding.
    pub fn from_frame(frame: &Frame) -> Result<Self, EventError> {
        let ct = frame.content_type();
        let body = frame.body().ok_or(EventError::NotAnEvent(ct))?;
        match ct {
            ContentType::EventPlain => Self::parse_plain(body),
            ContentType::EventJson => Self::parse_json(body),
            ContentType::EventXml => Err(EventError::XmlNotSupported),
            other => Err(EventError::NotAnEvent(other)),
        }
    }

    /// Decodes a `text/event-plain` body: percent-encoded `Name: value`
    /// lines, a blank line, then the event's own body when it has a
    /// `Content-Length`.
    pub fn parse_plain(data: &[u8]) -> Result<Self, EventError> {
        // The event's text is one copy of the raw block, percent-decoded in
        // place: escapes only shrink a value, and its span ends where its
        // decoded bytes end. Lines are found with one SIMD scan; most values
        // have no `%` and are not touched at all.
        let mut b = TextBuilder {
            bytes: data.to_vec(),
            headers: Vec::with_capacity(data.len() / 32 + 4),
        };
        let mut line_start = 0;
        let mut body_start = None;
        for line_end in memchr::memchr_iter(b'\n', data) {
            let line = &data[line_start..line_end];
            if line.is_empty() {
                body_start = Some(line_end + 1);
                break;
            }
            let Some(colon) = memchr::memchr(b':', line) else {
                return Err(bad_line(line));
            };
            let name_end = line_start + colon;
            let mut v0 = name_end + 1;
            if v0 < line_end && data[v0] == b' ' {
                v0 += 1;
            }
            let v1 = match memchr::memchr(b'%', &data[v0..line_end]) {
                None => line_end,
                Some(first) => decode_in_place(&mut b.bytes, v0 + first, line_end),
            };
            b.headers.push(Span {
                name: line_start as u32..name_end as u32,
                value: v0 as u32..v1 as u32,
            });
            line_start = line_end + 1;
        }
        if body_start.is_none() && line_start < data.len() {
            return Err(bad_line(&data[line_start..]));
        }
        b.bytes.truncate(line_start);
        let body = match (body_start, b.last_content_length()) {
            (Some(start), Some(len)) if start < data.len() => {
                // The serialiser writes `Content-Length` as the last line
                // before a body; it describes the framing, not the event.
                b.pop_header();
                let raw = &data[start..data.len().min(start + len)];
                Some(String::from_utf8_lossy(raw).into_owned())
            }
            _ => None,
        };
        b.finish(body)
    }

    /// Decodes a `text/event-json` body (values are not percent-encoded;
    /// `_body` is the event body; a header given several times is an array).
    pub fn parse_json(data: &[u8]) -> Result<Self, EventError> {
        let mut de = serde_json::Deserializer::from_slice(data);
        let (b, body) = de.deserialize_map(JsonEventVisitor {
            capacity: data.len(),
        })?;
        de.end()?;
        b.finish(body)
    }

    /// Appends a header (for building events; the value is stored as is).
    pub fn push_header(&mut self, name: &str, value: &str) {
        let n0 = self.text.len() as u32;
        self.text.push_str(name);
        let v0 = self.text.len() as u32;
        self.text.push_str(value);
        self.headers.push(Span {
            name: n0..v0,
            value: v0..self.text.len() as u32,
        });
    }

    /// Sets the event body.
    pub fn set_body(&mut self, body: impl Into<String>) {
        self.body = Some(body.into());
    }

    fn slice(&self, r: &Range<u32>) -> &str {
        &self.text[r.start as usize..r.end as usize]
    }

    /// All headers, in wire order, values decoded.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.headers
            .iter()
            .map(|s| (self.slice(&s.name), self.slice(&s.value)))
    }

    /// The first header with this exact name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|s| self.slice(&s.name) == name)
            .map(|s| self.slice(&s.value))
    }

    /// A channel variable (`variable_<name>`).
    pub fn variable(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|s| {
                self.slice(&s.name)
                    .strip_prefix("variable_")
                    .is_some_and(|n| n == name)
            })
            .map(|s| self.slice(&s.value))
    }

    /// `Event-Name`, e.g. `CHANNEL_ANSWER` (always present once decoded).
    pub fn name(&self) -> &str {
        self.header("Event-Name").unwrap_or_default()
    }

    /// `Event-Subclass` of CUSTOM events.
    pub fn subclass(&self) -> Option<&str> {
        self.header("Event-Subclass")
    }

    /// `Unique-ID`: the channel the event is about.
    pub fn unique_id(&self) -> Option<&str> {
        self.header("Unique-ID")
    }

    /// `Job-UUID` of a BACKGROUND_JOB.
    pub fn job_uuid(&self) -> Option<&str> {
        self.header("Job-UUID")
    }

    /// `Hangup-Cause` of hangup events.
    pub fn hangup_cause(&self) -> Option<&str> {
        self.header("Hangup-Cause")
    }

    /// The body, e.g. `+OK <uuid>\n` for a BACKGROUND_JOB.
    pub fn body(&self) -> Option<&str> {
        self.body.as_deref()
    }

    /// Encodes as FreeSWITCH's `text/event-plain` body.
    pub fn encode_plain(&self, out: &mut Vec<u8>) {
        for (name, value) in self.headers() {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            percent_encode_into(value, out);
            out.push(b'\n');
        }
        if let Some(body) = &self.body {
            out.extend_from_slice(b"Content-Length: ");
            out.extend_from_slice(body.len().to_string().as_bytes());
            out.extend_from_slice(b"\n\n");
            out.extend_from_slice(body.as_bytes());
        } else {
            out.push(b'\n');
        }
    }

    /// Encodes as FreeSWITCH's `text/event-json` body (`_body` last, after
    /// a `Content-Length` header, as FreeSWITCH writes it).
    pub fn encode_json(&self) -> Vec<u8> {
        // Serialising Event cannot fail: every key and value is a string.
        serde_json::to_vec(&JsonWire(self)).unwrap_or_default()
    }
}

/// Whether a string can go between JSON quotes as it is. Written as a
/// plain fold over bytes so the compiler vectorises it.
fn json_safe(s: &str) -> bool {
    s.bytes()
        .fold(true, |ok, b| ok & (b >= 0x20) & (b != b'"') & (b != b'\\'))
}

impl Event {
    /// Writes the event as one JSON object (the same as its `Serialize`
    /// form) followed by a newline. Most names and values need no escaping:
    /// a vectorised check lets them be copied straight out, and serde_json
    /// escapes the others (SDP bodies, quoted values).
    pub fn write_json_line<W: std::io::Write>(&self, out: &mut W) -> std::io::Result<()> {
        fn string<W: std::io::Write>(out: &mut W, s: &str) -> std::io::Result<()> {
            if json_safe(s) {
                out.write_all(b"\"")?;
                out.write_all(s.as_bytes())?;
                out.write_all(b"\"")
            } else {
                serde_json::to_writer(&mut *out, s).map_err(std::io::Error::from)
            }
        }
        out.write_all(b"{")?;
        let body = self.body.as_deref().map(|b| ("_body", b));
        for (i, (name, value)) in self.headers().chain(body).enumerate() {
            if i > 0 {
                out.write_all(b",")?;
            }
            string(out, name)?;
            out.write_all(b":")?;
            string(out, value)?;
        }
        out.write_all(b"}\n")
    }
}

/// Events print as one JSON object of their headers, plus `_body`.
impl serde::Serialize for Event {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.headers.len() + 1))?;
        for (name, value) in self.headers() {
            map.serialize_entry(name, value)?;
        }
        if let Some(body) = &self.body {
            map.serialize_entry("_body", body)?;
        }
        map.end()
    }
}

/// The wire form of JSON events, with the `Content-Length` FreeSWITCH adds
/// before `_body`.
struct JsonWire<'a>(&'a Event);

impl serde::Serialize for JsonWire<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let e = self.0;
        let mut map = s.serialize_map(None)?;
        for (name, value) in e.headers() {
            map.serialize_entry(name, value)?;
        }
        if let Some(body) = &e.body {
            map.serialize_entry("Content-Length", &body.len().to_string())?;
            map.serialize_entry("_body", body)?;
        }
        map.end()
    }
}

struct JsonEventVisitor {
    capacity: usize,
}

/// A JSON value FreeSWITCH may put in an event: a string, or an array of
/// strings for a repeated header. Numbers and booleans are taken as text.
enum JsonValue {
    One(String),
    Many(Vec<String>),
}

impl<'de> de::Deserialize<'de> for JsonValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = JsonValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array of strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<JsonValue, E> {
                Ok(JsonValue::One(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<JsonValue, E> {
                Ok(JsonValue::One(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<JsonValue, E> {
                Ok(JsonValue::One(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<JsonValue, E> {
                Ok(JsonValue::One(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<JsonValue, E> {
                Ok(JsonValue::One(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<JsonValue, E> {
                Ok(JsonValue::One(v.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<JsonValue, A::Error> {
                let mut all = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    all.push(s);
                }
                Ok(JsonValue::Many(all))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Visitor<'de> for JsonEventVisitor {
    type Value = (TextBuilder, Option<String>);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object of event headers")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut b = TextBuilder::with_capacity(self.capacity, self.capacity / 40 + 4);
        let mut body = None;
        let mut last_was_length = false;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let value = map.next_value::<JsonValue>()?;
            if key == "_body" {
                // FreeSWITCH adds `Content-Length` just before `_body`.
                if last_was_length {
                    b.pop_header();
                }
                if let JsonValue::One(v) = value {
                    body = Some(v);
                }
                continue;
            }
            last_was_length = key == "Content-Length";
            match value {
                JsonValue::One(v) => b.push(key.as_bytes(), v.as_bytes()),
                JsonValue::Many(vs) => {
                    for v in vs {
                        b.push(key.as_bytes(), v.as_bytes());
                    }
                }
            }
        }
        Ok((b, body))
    }
}

/// Shorthand used by the simulator and tests: an event frame's bytes.
pub fn plain_frame(event: &Event) -> Bytes {
    let mut body = Vec::with_capacity(4096);
    event.encode_plain(&mut body);
    let mut out = Vec::with_capacity(body.len() + 64);
    out.extend_from_slice(b"Content-Length: ");
    out.extend_from_slice(body.len().to_string().as_bytes());
    out.extend_from_slice(b"\nContent-Type: text/event-plain\n\n");
    out.extend_from_slice(&body);
    Bytes::from(out)
}

/// The `text/event-json` frame of an event.
pub fn json_frame(event: &Event) -> Bytes {
    let body = event.encode_json();
    let mut out = Vec::with_capacity(body.len() + 64);
    out.extend_from_slice(b"Content-Length: ");
    out.extend_from_slice(body.len().to_string().as_bytes());
    out.extend_from_slice(b"\nContent-Type: text/event-json\n\n");
    out.extend_from_slice(&body);
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BG_JOB: &[u8] = b"Event-Name: BACKGROUND_JOB\nCore-UUID: a098c3de\nEvent-Date-GMT: Sun,%2022%20Nov%202026%2005%3A56%3A34%20GMT\nJob-UUID: fc53ceca\nJob-Command: status\nContent-Length: 11\n\nUP 0 years\n";

    #[test]
    fn plain_event_values_are_decoded_and_body_kept() {
        let e = Event::parse_plain(BG_JOB).unwrap();
        assert_eq!(e.name(), "BACKGROUND_JOB");
        assert_eq!(
            e.header("Event-Date-GMT"),
            Some("Sun, 22 Nov 2026 05:56:34 GMT")
        );
        assert_eq!(e.job_uuid(), Some("fc53ceca"));
        assert_eq!(e.body(), Some("UP 0 years\n"));
    }

    #[test]
    fn plain_round_trip_is_byte_exact() {
        let e = Event::parse_plain(BG_JOB).unwrap();
        let mut out = Vec::new();
        e.encode_plain(&mut out);
        assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(BG_JOB)
        );
        assert_eq!(e.header("Content-Length"), None);
    }

    #[test]
    fn encoding_matches_switch_url_encode() {
        let mut out = Vec::new();
        percent_encode_into("tone_stream://%(500,500,440);loops=2", &mut out);
        assert_eq!(out, b"tone_stream%3A//%25(500,500,440)%3Bloops%3D2");
    }

    #[test]
    fn broken_escapes_stay_literal() {
        let e = Event::parse_plain(b"Event-Name: X\nA: 100%\nB: %zz%4\nC: %41\n\n").unwrap();
        assert_eq!(e.header("A"), Some("100%"));
        assert_eq!(e.header("B"), Some("%zz%4"));
        assert_eq!(e.header("C"), Some("A"));
    }

    #[test]
    fn non_utf8_values_become_replacement_chars() {
        let e = Event::parse_plain(b"Event-Name: X\nA: %FF%FEok\nB: fine\n\n").unwrap();
        assert_eq!(e.header("A"), Some("\u{FFFD}\u{FFFD}ok"));
        assert_eq!(e.header("B"), Some("fine"));
    }

    #[test]
    fn missing_event_name_is_an_error() {
        assert!(matches!(
            Event::parse_plain(b"Unique-ID: x\n\n"),
            Err(EventError::MissingEventName)
        ));
        assert!(matches!(
            Event::parse_json(br#"{"Unique-ID":"x"}"#),
            Err(EventError::MissingEventName)
        ));
    }

    #[test]
    fn json_event_with_body_and_arrays() {
        let e = Event::parse_json(
            br#"{"Event-Name":"BACKGROUND_JOB","Job-UUID":"j1","Content-Length":"41","_body":"+OK 00e6edae\n","X":["a","b"],"N":5}"#,
        )
        .unwrap();
        assert_eq!(e.name(), "BACKGROUND_JOB");
        assert_eq!(e.body(), Some("+OK 00e6edae\n"));
        assert_eq!(e.header("Content-Length"), None);
        assert_eq!(e.headers().filter(|(n, _)| *n == "X").count(), 2);
        assert_eq!(e.header("N"), Some("5"));
        assert!(Event::parse_json(b"[1,2]").is_err());
        assert!(Event::parse_json(b"{\"Event-Name\":\"X\"} trailing").is_err());
    }

    #[test]
    fn json_encoding_puts_body_last() {
        let mut e = Event::new("BACKGROUND_JOB");
        e.push_header("Job-UUID", "j");
        e.set_body("+OK x\n");
        assert_eq!(
            String::from_utf8(e.encode_json()).unwrap(),
            r#"{"Event-Name":"BACKGROUND_JOB","Job-UUID":"j","Content-Length":"6","_body":"+OK x\n"}"#
        );
    }

    #[test]
    fn json_lines_match_serde_with_and_without_escapes() {
        for raw in [
            &b"Event-Name: X\nA: plain value\n\n"[..],
            b"Event-Name: X\nA: quote%22and%5Cslash%0Anewline\n\n",
            b"Event-Name: X\nContent-Length: 3\n\nab\n",
        ] {
            let e = Event::parse_plain(raw).unwrap();
            let mut fast = Vec::new();
            e.write_json_line(&mut fast).unwrap();
            let mut want = serde_json::to_vec(&e).unwrap();
            want.push(b'\n');
            assert_eq!(
                String::from_utf8(fast).unwrap(),
                String::from_utf8(want).unwrap()
            );
        }
    }

    /// The obvious parser, line by line, for comparison.
    fn reference_headers(data: &[u8]) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for line in data.split(|&b| b == b'\n') {
            if line.is_empty() {
                break;
            }
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                return Vec::new();
            };
            let value = &line[colon + 1..];
            let value = value.strip_prefix(b" ").unwrap_or(value);
            let mut decoded = value.to_vec();
            let end = decode_in_place(&mut decoded, 0, value.len());
            decoded.truncate(end);
            out.push((
                String::from_utf8_lossy(&line[..colon]).into_owned(),
                String::from_utf8_lossy(&decoded).into_owned(),
            ));
        }
        out
    }

    proptest::proptest! {
        #[test]
        fn plain_parse_agrees_with_the_obvious_parser(
            lines in proptest::collection::vec(("[A-Za-z_-]{1,12}", "[ -~]{0,40}"), 1..20),
        ) {
            let mut data = b"Event-Name: X\n".to_vec();
            for (name, value) in &lines {
                data.extend_from_slice(format!("{name}: {}\n", value.replace('\n', "")).as_bytes());
            }
            data.push(b'\n');
            let event = Event::parse_plain(&data).unwrap();
            let got: Vec<(String, String)> = event.headers().map(|(n, v)| (n.to_owned(), v.to_owned())).collect();
            proptest::prop_assert_eq!(got, reference_headers(&data));
        }
    }

    #[test]
    fn variables_are_found_by_name() {
        let e = Event::parse_plain(b"Event-Name: X\nvariable_dial_id: d1\n\n").unwrap();
        assert_eq!(e.variable("dial_id"), Some("d1"));
        assert_eq!(e.variable("dial"), None);
    }
}
