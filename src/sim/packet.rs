//! Reading what clients send, the way mod_event_socket's `read_packet`
//! does — not the way a strict ESL decoder would.
//!
//! FreeSWITCH is lenient, and the simulator must answer bad input the way it
//! does, so clients see the same replies:
//! - leading `\r`/`\n` bytes are skipped; the header block ends at a `\n`
//!   followed, after any number of `\r`, by another `\n`;
//! - the first line is the command; a later line without a `:` is ignored
//!   (the rest of the packet is still executed);
//! - `Content-Length` is read with C's `atoi` (`strtol` truncated to `int`):
//!   a negative or non-numeric value means "no body", and the bytes that
//!   follow are read as the next packet;
//! - a header block that reaches the limit without its blank line is cut
//!   there and parsed as a packet (FreeSWITCH's `max_len`, 10 MiB).
//!
//! One deliberate difference: a positive `Content-Length` over the body
//! limit closes the connection with [`PacketError::BodyTooLarge`].
//! FreeSWITCH would try to allocate that much (up to 2 GiB) and wait for
//! it; a simulator that allocates what a peer asks for is a liability.

use bytes::{Buf, Bytes, BytesMut};
use std::ops::Range;
use tokio_util::codec::Decoder;

/// FreeSWITCH's `max_len` in `read_packet`.
pub const DEFAULT_MAX_PACKET_HEAD: usize = 10 * 1024 * 1024;
/// Largest body the simulator accepts (a `sendevent` or `sendmsg` body).
pub const DEFAULT_MAX_PACKET_BODY: usize = 8 * 1024 * 1024;

/// Why a connection's input cannot be read any further. Each is fatal for
/// that connection only.
#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    /// A `Content-Length` over the body limit.
    #[error("Content-Length {len} exceeds the {max}-byte body limit")]
    BodyTooLarge {
        /// The announced length.
        len: i64,
        /// The configured limit.
        max: usize,
    },
    /// The peer closed the connection inside a packet.
    #[error("connection closed in the middle of a packet ({buffered} bytes pending)")]
    Truncated {
        /// Bytes of the unfinished packet that had arrived.
        buffered: usize,
    },
    /// The socket failed.
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
}

/// One packet a client sent: the command line, its headers and body.
#[derive(Debug, Clone)]
pub struct Packet {
    head: Bytes,
    command: Range<usize>,
    headers: Vec<(Range<usize>, Range<usize>)>,
    body: Option<Bytes>,
}

impl Packet {
    /// The first line (`api status`).
    pub fn command_line(&self) -> &[u8] {
        &self.head[self.command.clone()]
    }

    /// The value of the first header with this name (case-insensitive, as
    /// `switch_event_get_header`).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers_bytes()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// Every header, in order.
    pub fn headers_bytes(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.headers
            .iter()
            .map(|(n, v)| (&self.head[n.clone()], &self.head[v.clone()]))
    }

    /// The header block as received (without the blank line).
    pub fn head(&self) -> &Bytes {
        &self.head
    }

    /// The body, when a positive `Content-Length` announced one.
    pub fn body(&self) -> Option<&Bytes> {
        self.body.as_ref()
    }
}

#[derive(Debug)]
enum State {
    /// Looking for the end of the header block; `scanned` bytes are done,
    /// `newlines` is `read_packet`'s `crcount` at that point.
    Head { scanned: usize, newlines: u8 },
    /// Waiting for `len` body bytes.
    Body { packet: Packet, len: usize },
}

/// The decoder: `read_packet` as a tokio-util [`Decoder`].
#[derive(Debug)]
pub struct PacketDecoder {
    max_head: usize,
    max_body: usize,
    state: State,
}

impl PacketDecoder {
    /// A decoder with these limits (at least 16 bytes of header).
    pub fn new(max_head: usize, max_body: usize) -> Self {
        Self {
            max_head: max_head.max(16),
            max_body,
            state: State::Head {
                scanned: 0,
                newlines: 0,
            },
        }
    }

    /// Splits a header block into command and headers, and reads the body
    /// length (`None`: no body).
    fn parse(&self, head: Bytes) -> Result<(Packet, Option<usize>), PacketError> {
        let mut lines = Vec::new();
        let mut start = 0;
        while start < head.len() {
            let end =
                memchr::memchr2(b'\r', b'\n', &head[start..]).map_or(head.len(), |i| start + i);
            lines.push(start..end);
            start = end;
            while start < head.len() && matches!(head[start], b'\r' | b'\n') {
                start += 1;
            }
        }
        let command = lines.first().cloned().unwrap_or(0..0);
        let mut headers = Vec::new();
        let mut body_len = None;
        for line in lines.into_iter().skip(1) {
            let bytes = &head[line.clone()];
            // `var` without a `:` has no value: FreeSWITCH skips it.
            let Some(colon) = memchr::memchr(b':', bytes) else {
                continue;
            };
            let name = line.start..line.start + colon;
            let mut v0 = name.end + 1;
            while v0 < line.end && head[v0] == b' ' {
                v0 += 1;
            }
            if body_len.is_none() && head[name.clone()].eq_ignore_ascii_case(b"Content-Length") {
                let clen = c_atoi(&head[v0..line.end]);
                if clen > 0 {
                    if clen as u64 > self.max_body as u64 {
                        return Err(PacketError::BodyTooLarge {
                            len: i64::from(clen),
                            max: self.max_body,
                        });
                    }
                    body_len = Some(clen as usize);
                }
            }
            headers.push((name, v0..line.end));
        }
        Ok((
            Packet {
                head,
                command,
                headers,
                body: None,
            },
            body_len,
        ))
    }
}

/// C's `atoi` as glibc implements it: `(int) strtol(s, NULL, 10)` — leading
/// white space, an optional sign, digits; saturates at the `long` range,
/// then keeps the low 32 bits.
pub fn c_atoi(s: &[u8]) -> i32 {
    let mut i = 0;
    while i < s.len() && matches!(s[i], b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c) {
        i += 1;
    }
    let neg = match s.get(i) {
        Some(b'-') => {
            i += 1;
            true
        }
        Some(b'+') => {
            i += 1;
            false
        }
        _ => false,
    };
    let mut n: i64 = 0;
    for &b in s[i..].iter().take_while(|b| b.is_ascii_digit()) {
        let d = i64::from(b - b'0');
        n = if neg {
            n.saturating_mul(10).saturating_sub(d)
        } else {
            n.saturating_mul(10).saturating_add(d)
        };
    }
    n as i32
}

impl Decoder for PacketDecoder {
    type Item = Packet;
    type Error = PacketError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Packet>, PacketError> {
        loop {
            match &mut self.state {
                State::Head { scanned, newlines } => {
                    if *scanned == 0 {
                        // "bah": stray line ends between packets.
                        let skip = src
                            .iter()
                            .take_while(|&&b| matches!(b, b'\r' | b'\n'))
                            .count();
                        src.advance(skip);
                    }
                    let mut end = None;
                    let limit = src.len().min(self.max_head);
                    for (i, &b) in src[*scanned..limit].iter().enumerate() {
                        match b {
                            b'\n' => {
                                *newlines += 1;
                                if *newlines == 2 {
                                    end = Some(*scanned + i + 1);
                                    break;
                                }
                            }
                            b'\r' => {}
                            _ => *newlines = 0,
                        }
                    }
                    let end = match end {
                        Some(e) => e,
                        // FreeSWITCH parses whatever it has at `max_len`.
                        None if limit >= self.max_head => self.max_head,
                        None => {
                            *scanned = limit;
                            return Ok(None);
                        }
                    };
                    let head = src.split_to(end).freeze();
                    self.state = State::Head {
                        scanned: 0,
                        newlines: 0,
                    };
                    match self.parse(head)? {
                        (packet, None) => return Ok(Some(packet)),
                        (packet, Some(len)) => self.state = State::Body { packet, len },
                    }
                }
                State::Body { len, .. } => {
                    let len = *len;
                    if src.len() < len {
                        src.reserve(len - src.len());
                        return Ok(None);
                    }
                    let body = src.split_to(len).freeze();
                    let state = std::mem::replace(
                        &mut self.state,
                        State::Head {
                            scanned: 0,
                            newlines: 0,
                        },
                    );
                    if let State::Body { mut packet, .. } = state {
                        packet.body = Some(body);
                        return Ok(Some(packet));
                    }
                }
            }
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Packet>, PacketError> {
        if let Some(p) = self.decode(src)? {
            return Ok(Some(p));
        }
        let pending_body = matches!(self.state, State::Body { .. });
        if pending_body || !src.is_empty() {
            let buffered = src.len();
            src.clear();
            self.state = State::Head {
                scanned: 0,
                newlines: 0,
            };
            return Err(PacketError::Truncated { buffered });
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8], max_head: usize) -> Vec<Result<Packet, String>> {
        let mut d = PacketDecoder::new(max_head, 1024);
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        loop {
            match d.decode_eof(&mut buf) {
                Ok(Some(p)) => out.push(Ok(p)),
                Ok(None) => break,
                Err(e) => {
                    out.push(Err(e.to_string()));
                    break;
                }
            }
        }
        out
    }

    #[test]
    fn atoi_is_glibcs() {
        assert_eq!(c_atoi(b"12"), 12);
        assert_eq!(c_atoi(b"  -5x"), -5);
        assert_eq!(c_atoi(b"abc"), 0);
        assert_eq!(c_atoi(b""), 0);
        // strtol saturates at LONG_MAX, whose low 32 bits are -1.
        assert_eq!(c_atoi(b"99999999999999999999999"), -1);
        assert_eq!(c_atoi(b"4294967297"), 1);
    }

    #[test]
    fn header_without_colon_is_skipped() {
        let p = decode_all(b"\r\n\nsendevent CUSTOM\r\nno colon here\nA: 1\n\n", 100);
        let p = p[0].as_ref().expect("packet");
        assert_eq!(p.command_line(), b"sendevent CUSTOM");
        let hs: Vec<_> = p.headers_bytes().collect();
        assert_eq!(hs, vec![(&b"A"[..], &b"1"[..])]);
    }

    #[test]
    fn bad_content_length_means_no_body() {
        let out = decode_all(b"sendevent X\nContent-Length: -4\n\nexit\n\n", 100);
        assert_eq!(out.len(), 2);
        assert!(out[0].as_ref().expect("p").body().is_none());
        assert_eq!(out[1].as_ref().expect("p").command_line(), b"exit");
        let out = decode_all(b"sendevent X\nContent-Length: 3\n\nabc", 100);
        assert_eq!(
            out[0].as_ref().expect("p").body().map(|b| &b[..]),
            Some(&b"abc"[..])
        );
        let out = decode_all(b"sendevent X\nContent-Length: 2000\n\n", 100);
        assert!(matches!(&out[0], Err(e) if e.contains("exceeds")));
    }

    #[test]
    fn cr_between_newlines_ends_the_block_and_cut_body_is_an_error() {
        let out = decode_all(b"api status\n\r\napi x\nContent-Length: 9\n\nab", 100);
        assert_eq!(out[0].as_ref().expect("p").command_line(), b"api status");
        assert!(matches!(&out[1], Err(e) if e.contains("middle")));
    }

    #[test]
    fn overlong_head_is_parsed_at_the_limit() {
        let mut input = vec![b'x'; 40];
        input.extend_from_slice(b"\n\napi status\n\n");
        let out = decode_all(&input, 16);
        assert_eq!(out[0].as_ref().expect("p").command_line(), &[b'x'; 16][..]);
        assert_eq!(out[1].as_ref().expect("p").command_line(), &[b'x'; 16][..]);
        assert_eq!(out[2].as_ref().expect("p").command_line(), &[b'x'; 8][..]);
        assert_eq!(out[3].as_ref().expect("p").command_line(), b"api status");
    }

    #[test]
    fn split_at_every_offset_gives_the_same_packets() {
        let input = b"auth ClueCon\n\nsendevent X\nContent-Length: 5\n\nhello\napi status\n\n";
        for cut in 0..input.len() {
            let mut d = PacketDecoder::new(1000, 1000);
            let mut buf = BytesMut::from(&input[..cut]);
            let mut got = Vec::new();
            while let Ok(Some(p)) = d.decode(&mut buf) {
                got.push(p);
            }
            buf.extend_from_slice(&input[cut..]);
            while let Ok(Some(p)) = d.decode(&mut buf) {
                got.push(p);
            }
            let cmds: Vec<_> = got.iter().map(|p| p.command_line().to_vec()).collect();
            assert_eq!(
                cmds,
                vec![
                    b"auth ClueCon".to_vec(),
                    b"sendevent X".to_vec(),
                    b"api status".to_vec()
                ],
                "cut at {cut}"
            );
            assert_eq!(got[1].body().map(|b| &b[..]), Some(&b"hello"[..]));
        }
    }
}
