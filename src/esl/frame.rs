//! One ESL frame: a header block and an optional body.
//!
//! FreeSWITCH frames every message the same way: `Name: value` lines, a blank
//! line, then exactly `Content-Length` bytes of body when that header is
//! present. Commands sent *to* FreeSWITCH use the same framing, except that
//! their first line is the command itself (`auth ClueCon`, `sendmsg <uuid>`).
//!
//! A [`Frame`] keeps the whole header block as one [`Bytes`] and remembers
//! where each name and value lies in it, so decoding a frame allocates one
//! small index vector and never copies or allocates per header.

use bytes::Bytes;
use std::ops::Range;

/// The content types FreeSWITCH sends, as named in its `Content-Type` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentType {
    /// `auth/request`: the greeting of the inbound socket.
    AuthRequest,
    /// `command/reply`: the answer to every command but `api`.
    CommandReply,
    /// `api/response`: the answer to `api`; the body is the API's output.
    ApiResponse,
    /// `text/event-plain`: an event whose body is percent-encoded headers.
    EventPlain,
    /// `text/event-json`: an event whose body is a JSON object.
    EventJson,
    /// `text/event-xml`: an event whose body is XML.
    EventXml,
    /// `text/disconnect-notice`: FreeSWITCH is closing, or lingering.
    DisconnectNotice,
    /// `log/data`: a log line (after `log <level>`).
    LogData,
    /// `text/rude-rejection`: the ACL refused the connection.
    RudeRejection,
    /// Any other value, or none at all (a command frame has none).
    Other,
}

impl ContentType {
    /// Classifies a `Content-Type` header value.
    pub fn from_header(value: Option<&[u8]>) -> Self {
        match value {
            Some(b"auth/request") => Self::AuthRequest,
            Some(b"command/reply") => Self::CommandReply,
            Some(b"api/response") => Self::ApiResponse,
            Some(b"text/event-plain") => Self::EventPlain,
            Some(b"text/event-json") => Self::EventJson,
            Some(b"text/event-xml") => Self::EventXml,
            Some(b"text/disconnect-notice") => Self::DisconnectNotice,
            Some(b"log/data") => Self::LogData,
            Some(b"text/rude-rejection") => Self::RudeRejection,
            _ => Self::Other,
        }
    }

    /// True for the three event encodings.
    pub fn is_event(self) -> bool {
        matches!(self, Self::EventPlain | Self::EventJson | Self::EventXml)
    }
}

/// Where one header's name and value lie inside [`Frame::head`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HeaderSpan {
    pub(crate) name: Range<u32>,
    pub(crate) value: Range<u32>,
}

/// A decoded frame: the raw header block, an index into it, and the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The header block as received, without the terminating blank line.
    head: Bytes,
    /// For command frames (decoded in server role), the first line.
    command: Option<Range<u32>>,
    /// Name/value positions of every header line, in order.
    headers: Vec<HeaderSpan>,
    /// Exactly `Content-Length` bytes, when the header was present.
    body: Option<Bytes>,
}

impl Frame {
    pub(crate) fn new(
        head: Bytes,
        command: Option<Range<u32>>,
        headers: Vec<HeaderSpan>,
        body: Option<Bytes>,
    ) -> Self {
        Self {
            head,
            command,
            headers,
            body,
        }
    }

    pub(crate) fn set_body(&mut self, body: Bytes) {
        self.body = Some(body);
    }

    /// Builds a frame from header pairs and a body, as a peer would send it.
    /// Mostly for tests and the simulator; `Content-Length` is not added.
    pub fn from_parts<'a>(
        headers: impl IntoIterator<Item = (&'a str, &'a str)>,
        body: Option<Bytes>,
    ) -> Self {
        let mut head = Vec::new();
        let mut spans = Vec::new();
        for (name, value) in headers {
            let n0 = head.len() as u32;
            head.extend_from_slice(name.as_bytes());
            let n1 = head.len() as u32;
            head.extend_from_slice(b": ");
            let v0 = head.len() as u32;
            head.extend_from_slice(value.as_bytes());
            let v1 = head.len() as u32;
            head.push(b'\n');
            spans.push(HeaderSpan {
                name: n0..n1,
                value: v0..v1,
            });
        }
        Self::new(Bytes::from(head), None, spans, body)
    }

    /// The command line of a frame a client sent (`auth ClueCon`), if any.
    pub fn command_line(&self) -> Option<&[u8]> {
        self.command
            .as_ref()
            .map(|r| &self.head[r.start as usize..r.end as usize])
    }

    /// The raw value of the first header with this name (names compare
    /// ASCII-case-insensitively, as FreeSWITCH does).
    pub fn header_bytes(&self, name: &str) -> Option<&[u8]> {
        self.headers_bytes()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// The value of the first header with this name, if it is UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_bytes(name)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Every header as raw `(name, value)` pairs, in wire order.
    pub fn headers_bytes(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.headers.iter().map(|s| {
            (
                &self.head[s.name.start as usize..s.name.end as usize],
                &self.head[s.value.start as usize..s.value.end as usize],
            )
        })
    }

    /// The header block as received (without the blank line).
    pub fn head(&self) -> &Bytes {
        &self.head
    }

    /// The body, when the frame carried a `Content-Length`.
    pub fn body(&self) -> Option<&Bytes> {
        self.body.as_ref()
    }

    /// The frame's content type.
    pub fn content_type(&self) -> ContentType {
        ContentType::from_header(self.header_bytes("Content-Type"))
    }

    /// `Reply-Text` of a `command/reply`. The `connect` reply percent-encodes
    /// it (`%2BOK%0A`), so it is decoded and trimmed here.
    pub fn reply_text(&self) -> Option<String> {
        self.header_bytes("Reply-Text").map(|v| {
            let decoded = percent_encoding::percent_decode(v).decode_utf8_lossy();
            decoded.trim_end_matches('\n').to_owned()
        })
    }

    /// Whether a reply (`Reply-Text`, or an `api/response` body) says `+OK`.
    pub fn is_ok(&self) -> bool {
        match self.content_type() {
            ContentType::ApiResponse => self.body.as_ref().is_some_and(|b| !b.starts_with(b"-ERR")),
            _ => self.reply_text().is_some_and(|t| t.starts_with("+OK")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_is_case_insensitive_and_first_wins() {
        let f = Frame::from_parts(
            [("Content-Type", "command/reply"), ("content-type", "x")],
            None,
        );
        assert_eq!(f.header("CONTENT-TYPE"), Some("command/reply"));
        assert_eq!(f.content_type(), ContentType::CommandReply);
    }

    #[test]
    fn connect_reply_text_is_percent_decoded() {
        let f = Frame::from_parts([("Reply-Text", "%2BOK%0A")], None);
        assert_eq!(f.reply_text().as_deref(), Some("+OK"));
        assert!(f.is_ok());
    }

    #[test]
    fn api_error_body_is_not_ok() {
        let f = Frame::from_parts(
            [("Content-Type", "api/response")],
            Some(Bytes::from_static(
                b"-ERR no_such_command Command not found!\n",
            )),
        );
        assert!(!f.is_ok());
    }
}
