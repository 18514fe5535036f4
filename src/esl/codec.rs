//! [`EslCodec`]: the tokio-util `Decoder`/`Encoder` for ESL frames.
//!
//! Decoding is a two-state machine (header block, then body). Nothing read
//! from the peer is trusted: the header block and the body each have a hard
//! size limit, every malformed header block is a typed [`CodecError`], and no
//! byte sequence can make the decoder panic (a proptest feeds it arbitrary
//! bytes). After an error the connection must be closed: ESL has no way to
//! find the next frame boundary in a stream that went wrong.

use crate::esl::command::{Command, CommandError};
use crate::esl::frame::{Frame, HeaderSpan};
use bytes::{Buf, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Default cap on a header block. The largest FreeSWITCH sends is the
/// outbound `connect` reply (all channel variables), a few KiB to a few tens
/// of KiB on busy channels.
pub const DEFAULT_MAX_HEAD: usize = 256 * 1024;
/// Default cap on a body. Events with every channel variable are 2–20 KiB.
pub const DEFAULT_MAX_BODY: usize = 8 * 1024 * 1024;

/// Which side of the socket decodes: FreeSWITCH's output, or a client's
/// commands (whose first line is the command, not a header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// We are the ESL client (or the outbound listener): we decode what
    /// FreeSWITCH sends. Every header line must be `Name: value`.
    Client,
    /// We are FreeSWITCH (the simulator): we decode commands.
    Server,
}

/// Why a stream of bytes is not valid ESL. Each is fatal for the connection.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// No blank line within the header limit: garbage, or a hostile peer.
    #[error("ESL header block exceeds {max} bytes")]
    HeaderTooLarge {
        /// The configured limit.
        max: usize,
    },
    /// A header line with no `:` (only a command frame's first line may).
    #[error("ESL header line without a colon: {line:?}")]
    HeaderWithoutColon {
        /// The offending line, lossily decoded and cut to 80 bytes.
        line: String,
    },
    /// `Content-Length` is not a non-negative decimal integer.
    #[error("invalid ESL Content-Length {value:?}")]
    InvalidContentLength {
        /// The raw value, lossily decoded.
        value: String,
    },
    /// `Content-Length` is over the body limit.
    #[error("ESL body of {len} bytes exceeds the {max}-byte limit")]
    BodyTooLarge {
        /// The announced length.
        len: u64,
        /// The configured limit.
        max: usize,
    },
    /// The peer closed the connection in the middle of a frame.
    #[error("connection closed in the middle of an ESL frame ({buffered} bytes pending)")]
    Truncated {
        /// How many bytes of the unfinished frame had arrived.
        buffered: usize,
    },
    /// A command could not be encoded (it would inject another command).
    #[error(transparent)]
    Command(#[from] CommandError),
    /// The socket failed.
    #[error("ESL socket error: {0}")]
    Io(#[from] std::io::Error),
}

#[derive(Debug)]
enum DecodeState {
    /// Looking for the blank line; `scanned` bytes are known not to hold it.
    Head { scanned: usize },
    /// Header block parsed; waiting for `len` body bytes.
    Body { frame: Frame, len: usize },
}

/// ESL framing with size limits. One codec per connection.
#[derive(Debug)]
pub struct EslCodec {
    role: Role,
    max_head: usize,
    max_body: usize,
    state: DecodeState,
}

impl EslCodec {
    /// A codec for the client side, with the default limits.
    pub fn client() -> Self {
        Self::new(Role::Client, DEFAULT_MAX_HEAD, DEFAULT_MAX_BODY)
    }

    /// A codec for the server side (the simulator), with the default limits.
    pub fn server() -> Self {
        Self::new(Role::Server, DEFAULT_MAX_HEAD, DEFAULT_MAX_BODY)
    }

    /// A codec with explicit limits.
    pub fn new(role: Role, max_head: usize, max_body: usize) -> Self {
        Self {
            role,
            max_head,
            max_body,
            state: DecodeState::Head { scanned: 0 },
        }
    }

    fn parse_head(&self, head: Bytes) -> Result<(Frame, Option<usize>), CodecError> {
        let mut spans = Vec::with_capacity(8);
        let mut command = None;
        let mut content_length = None;
        let mut start = 0usize;
        let bytes: &[u8] = &head;
        while start < bytes.len() {
            let end = memchr::memchr(b'\n', &bytes[start..]).map_or(bytes.len(), |i| start + i);
            let mut line_end = end;
            if line_end > start && bytes[line_end - 1] == b'\r' {
                line_end -= 1;
            }
            let line = &bytes[start..line_end];
            if self.role == Role::Server && start == 0 && command.is_none() {
                command = Some(start as u32..line_end as u32);
            } else if let Some(colon) = memchr::memchr(b':', line) {
                let name = start..start + colon;
                let mut v0 = start + colon + 1;
                if v0 < line_end && bytes[v0] == b' ' {
                    v0 += 1;
                }
                if content_length.is_none() && line[..colon].eq_ignore_ascii_case(b"Content-Length")
                {
                    content_length = Some(self.parse_content_length(&bytes[v0..line_end])?);
                }
                spans.push(HeaderSpan {
                    name: name.start as u32..name.end as u32,
                    value: v0 as u32..line_end as u32,
                });
            } else if !line.is_empty() {
                let shown = &line[..line.len().min(80)];
                return Err(CodecError::HeaderWithoutColon {
                    line: String::from_utf8_lossy(shown).into_owned(),
                });
            }
            start = end + 1;
        }
        Ok((Frame::new(head, command, spans, None), content_length))
    }

    fn parse_content_length(&self, raw: &[u8]) -> Result<usize, CodecError> {
        let invalid = || CodecError::InvalidContentLength {
            value: String::from_utf8_lossy(&raw[..raw.len().min(40)]).into_owned(),
        };
        if raw.is_empty() || raw.len() > 20 || !raw.iter().all(u8::is_ascii_digit) {
            return Err(invalid());
        }
        let len: u64 = std::str::from_utf8(raw)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(invalid)?;
        if len > self.max_body as u64 {
            return Err(CodecError::BodyTooLarge {
                len,
                max: self.max_body,
            });
        }
        Ok(len as usize)
    }
}

impl Decoder for EslCodec {
    type Item = Frame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        loop {
            match &mut self.state {
                DecodeState::Head { scanned } => {
                    // Blank lines between frames carry nothing; FreeSWITCH's
                    // own parser skips them too.
                    if *scanned == 0 {
                        let skip = src
                            .iter()
                            .take_while(|&&b| b == b'\n' || b == b'\r')
                            .count();
                        src.advance(skip);
                    }
                    let from = scanned.saturating_sub(1);
                    let Some(pos) = memchr::memmem::find(&src[from..], b"\n\n").map(|p| p + from)
                    else {
                        if src.len() > self.max_head {
                            return Err(CodecError::HeaderTooLarge { max: self.max_head });
                        }
                        *scanned = src.len();
                        src.reserve(4096);
                        return Ok(None);
                    };
                    if pos > self.max_head {
                        return Err(CodecError::HeaderTooLarge { max: self.max_head });
                    }
                    let head = src.split_to(pos + 2).freeze().slice(..pos + 1);
                    self.state = DecodeState::Head { scanned: 0 };
                    let (frame, len) = self.parse_head(head)?;
                    match len {
                        None => return Ok(Some(frame)),
                        Some(len) => self.state = DecodeState::Body { frame, len },
                    }
                }
                DecodeState::Body { len, .. } => {
                    let len = *len;
                    if src.len() < len {
                        src.reserve(len - src.len());
                        return Ok(None);
                    }
                    let body = src.split_to(len).freeze();
                    let DecodeState::Body { mut frame, .. } =
                        std::mem::replace(&mut self.state, DecodeState::Head { scanned: 0 })
                    else {
                        unreachable!("state checked just above");
                    };
                    frame.set_body(body);
                    return Ok(Some(frame));
                }
            }
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        if let Some(frame) = self.decode(src)? {
            return Ok(Some(frame));
        }
        let pending_body = matches!(self.state, DecodeState::Body { .. });
        let pending_head = src.iter().any(|&b| b != b'\n' && b != b'\r');
        if pending_body || pending_head {
            let buffered = src.len();
            src.clear();
            self.state = DecodeState::Head { scanned: 0 };
            return Err(CodecError::Truncated { buffered });
        }
        Ok(None)
    }
}

impl Encoder<Command> for EslCodec {
    type Error = CodecError;

    fn encode(&mut self, command: Command, dst: &mut BytesMut) -> Result<(), CodecError> {
        command.encode(dst)?;
        Ok(())
    }
}

impl Encoder<&Command> for EslCodec {
    type Error = CodecError;

    fn encode(&mut self, command: &Command, dst: &mut BytesMut) -> Result<(), CodecError> {
        command.encode(dst)?;
        Ok(())
    }
}

/// Pre-encoded bytes (the simulator writes replies and events it built).
impl Encoder<Bytes> for EslCodec {
    type Error = CodecError;

    fn encode(&mut self, bytes: Bytes, dst: &mut BytesMut) -> Result<(), CodecError> {
        dst.extend_from_slice(&bytes);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::esl::frame::ContentType;

    fn decode_all(codec: &mut EslCodec, input: &[u8]) -> Result<Vec<Frame>, CodecError> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(f) = codec.decode(&mut buf)? {
            out.push(f);
        }
        if let Some(f) = codec.decode_eof(&mut buf)? {
            out.push(f);
        }
        Ok(out)
    }

    const API_STATUS: &[u8] = b"Content-Type: api/response\nContent-Length: 11\n\nUP 0 years\nContent-Type: command/reply\nReply-Text: +OK accepted\n\n";

    #[test]
    fn decodes_body_without_trailing_newline_and_next_frame() {
        let frames = decode_all(&mut EslCodec::client(), API_STATUS).unwrap();
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].content_type(), ContentType::ApiResponse);
        assert_eq!(frames[0].body().unwrap().as_ref(), b"UP 0 years\n");
        assert_eq!(frames[1].reply_text().as_deref(), Some("+OK accepted"));
        assert!(frames[1].body().is_none());
    }

    #[test]
    fn split_at_every_offset_gives_the_same_frames() {
        let whole = decode_all(&mut EslCodec::client(), API_STATUS).unwrap();
        for cut in 0..=API_STATUS.len() {
            let mut codec = EslCodec::client();
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            for part in [&API_STATUS[..cut], &API_STATUS[cut..]] {
                buf.extend_from_slice(part);
                while let Some(f) = codec.decode(&mut buf).unwrap() {
                    out.push(f);
                }
            }
            assert_eq!(out, whole, "cut at {cut}");
        }
    }

    #[test]
    fn byte_by_byte_feeding_works() {
        let mut codec = EslCodec::client();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for &b in API_STATUS {
            buf.extend_from_slice(&[b]);
            while let Some(f) = codec.decode(&mut buf).unwrap() {
                out.push(f);
            }
        }
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn header_without_colon_is_an_error_for_clients() {
        let err = decode_all(&mut EslCodec::client(), b"garbage line\n\n").unwrap_err();
        assert!(
            matches!(err, CodecError::HeaderWithoutColon { ref line } if line == "garbage line")
        );
    }

    #[test]
    fn server_role_keeps_the_command_line() {
        let frames = decode_all(
            &mut EslCodec::server(),
            b"bgapi status\nJob-UUID: abc\n\nauth ClueCon\n\n",
        )
        .unwrap();
        assert_eq!(frames[0].command_line(), Some(&b"bgapi status"[..]));
        assert_eq!(frames[0].header("Job-UUID"), Some("abc"));
        assert_eq!(frames[1].command_line(), Some(&b"auth ClueCon"[..]));
    }

    #[test]
    fn crlf_line_ends_are_accepted() {
        let frames =
            decode_all(&mut EslCodec::server(), b"auth ClueCon\r\n\r\n").unwrap_or_default();
        // "\r\n\r\n" holds no "\n\n": FreeSWITCH needs LF line ends too, so
        // such a frame only ends at EOF as truncated. A CR before LF is trimmed.
        assert!(frames.is_empty());
        let frames = decode_all(&mut EslCodec::server(), b"auth ClueCon\r\n\n").unwrap();
        assert_eq!(frames[0].command_line(), Some(&b"auth ClueCon"[..]));
    }

    #[test]
    fn bad_content_lengths_are_typed_errors() {
        for value in ["-1", "abc", "", "1e3", " 12", "99999999999999999999999"] {
            let input = format!("Content-Type: api/response\nContent-Length: {value}\n\n");
            let err = decode_all(&mut EslCodec::client(), input.as_bytes()).unwrap_err();
            assert!(
                matches!(err, CodecError::InvalidContentLength { .. }),
                "{value:?} gave {err:?}"
            );
        }
        let err = decode_all(
            &mut EslCodec::new(Role::Client, 1024, 100),
            b"Content-Length: 101\n\n",
        )
        .unwrap_err();
        assert!(matches!(
            err,
            CodecError::BodyTooLarge { len: 101, max: 100 }
        ));
    }

    #[test]
    fn missing_content_length_means_no_body() {
        let frames =
            decode_all(&mut EslCodec::client(), b"Content-Type: auth/request\n\n").unwrap();
        assert_eq!(frames[0].content_type(), ContentType::AuthRequest);
        assert!(frames[0].body().is_none());
    }

    #[test]
    fn huge_header_block_is_refused() {
        let mut codec = EslCodec::new(Role::Client, 1024, 1024);
        let mut buf = BytesMut::from(&[b'x'; 2048][..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(CodecError::HeaderTooLarge { max: 1024 })
        ));
    }

    #[test]
    fn eof_mid_body_is_truncated() {
        let err = decode_all(
            &mut EslCodec::client(),
            b"Content-Type: api/response\nContent-Length: 50\n\nonly a few",
        )
        .unwrap_err();
        assert!(matches!(err, CodecError::Truncated { .. }));
        let err = decode_all(&mut EslCodec::client(), b"Content-Type: api/resp").unwrap_err();
        assert!(matches!(err, CodecError::Truncated { .. }));
    }

    #[test]
    fn non_utf8_header_values_are_kept_as_bytes() {
        let frames = decode_all(&mut EslCodec::client(), b"Reply-Text: +OK \xff\xfe\n\n").unwrap();
        assert_eq!(
            frames[0].header_bytes("Reply-Text"),
            Some(&b"+OK \xff\xfe"[..])
        );
        assert_eq!(frames[0].header("Reply-Text"), None);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..2048)) {
            for role in [Role::Client, Role::Server] {
                let mut codec = EslCodec::new(role, 512, 512);
                let _ = decode_all(&mut codec, &data);
            }
        }

        #[test]
        fn arbitrary_text_frames_never_panic(data in "[a-zA-Z:\\- 0-9\n%]{0,512}") {
            let _ = decode_all(&mut EslCodec::client(), data.as_bytes());
        }
    }
}
