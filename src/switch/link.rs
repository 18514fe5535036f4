//! Pieces both connection tasks (the inbound driver and the leg driver)
//! share: the socket halves, the [`Wire`] (the write buffer and the one FIFO
//! of reply slots), and the debug/trace logging of everything that crosses
//! a connection.
//!
//! FreeSWITCH answers `command/reply` and `api/response` in the order of the
//! commands, so a reply always belongs to the oldest slot. Each connection
//! task keeps its own per-command data `T` in the slot (what to do once the
//! reply is in).
//!
//! Logging: at `debug`, every command written (its text on the wire, the
//! password of `auth` and `userauth` replaced by `<redacted>`) and every
//! reply; at `trace`, every event (name, channel uuid, size).

use crate::esl::{Command, EslCodec, Event, Frame, Role, codec::DEFAULT_MAX_HEAD};
use crate::switch::error::{Error, Result};
use bytes::BytesMut;
use std::collections::VecDeque;
use std::fmt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::oneshot;
use tokio_util::codec::FramedRead;

/// The read side: frames decoded from the socket.
pub(crate) type Reader = FramedRead<OwnedReadHalf, EslCodec>;

/// Above this many unsent bytes a connection task stops taking new requests
/// until the socket drains (backpressure to the callers, bounded memory).
pub(crate) const WRITE_HIGH_WATER: usize = 64 * 1024;

/// Splits a connected socket into a frame reader and a raw writer, with
/// TCP_NODELAY set: every command is one write, and Nagle plus delayed ACKs
/// would otherwise add up to ~40–200 ms per command. A frame whose body is
/// over `max_body` bytes (the connection's event buffer) is a protocol
/// error, [`Error::TooLarge`]: it could never fit the buffer.
pub(crate) fn split(
    stream: TcpStream,
    read_capacity: usize,
    max_body: usize,
) -> std::io::Result<(Reader, OwnedWriteHalf)> {
    stream.set_nodelay(true)?;
    let (rd, wr) = stream.into_split();
    let codec = EslCodec::new(Role::Client, DEFAULT_MAX_HEAD, max_body);
    Ok((FramedRead::with_capacity(rd, codec, read_capacity), wr))
}

/// The size a frame is counted for in an event backlog: its bytes on the
/// wire (the decoded event holds about as much).
pub(crate) fn frame_size(frame: &Frame) -> usize {
    frame.head().len() + 2 + frame.body().map_or(0, |b| b.len())
}

/// Where a reply goes once it arrives.
pub(crate) type ReplyTx = oneshot::Sender<Result<Frame>>;

/// Turns a `-ERR` reply (command reply text or API body) into an error.
pub(crate) fn check_ok(frame: Frame) -> Result<Frame> {
    if frame.is_ok() {
        Ok(frame)
    } else {
        Err(Error::CommandFailed {
            reply: reply_summary(&frame),
        })
    }
}

/// The human part of a reply: `Reply-Text`, or the API body, trimmed.
pub(crate) fn reply_summary(frame: &Frame) -> String {
    match frame.reply_text() {
        Some(t) => t,
        None => frame
            .body()
            .map(|b| String::from_utf8_lossy(b).trim_end().to_owned())
            .unwrap_or_default(),
    }
}

/// Which connection a log line is about.
#[derive(Debug, Clone)]
pub(crate) enum Peer {
    /// The inbound event socket at this address.
    Inbound(std::sync::Arc<str>),
    /// The outbound socket of the leg with this uuid.
    Leg(Box<str>),
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Inbound(addr) => write!(f, "inbound {addr}"),
            Self::Leg(uuid) => write!(f, "leg {uuid}"),
        }
    }
}

/// The name of a command, for logs and reply slots.
pub(crate) fn verb(cmd: &Command) -> &'static str {
    match cmd {
        Command::Auth { .. } => "auth",
        Command::Api { .. } => "api",
        Command::BgApi { .. } => "bgapi",
        Command::Event { .. } => "event",
        Command::MyEvents { .. } => "myevents",
        Command::Filter { .. } => "filter",
        Command::FilterDelete { .. } => "filter delete",
        Command::NixEvent { .. } => "nixevent",
        Command::NoEvents => "noevents",
        Command::DivertEvents(_) => "divert_events",
        Command::Linger(_) => "linger",
        Command::NoLinger => "nolinger",
        Command::Resume => "resume",
        Command::Log(_) => "log",
        Command::NoLog => "nolog",
        Command::SendMsg(_) => "sendmsg",
        Command::SendEvent { .. } => "sendevent",
        Command::Connect => "connect",
        Command::Exit => "exit",
    }
}

/// The text of encoded commands as logged: lossy UTF-8, the trailing blank
/// line cut, secrets redacted.
pub(crate) fn loggable(wire: &[u8]) -> String {
    let text = String::from_utf8_lossy(wire);
    let mut out = String::with_capacity(text.len());
    for line in text.trim_end_matches('\n').split('\n') {
        if !out.is_empty() {
            out.push('\n');
        }
        // `auth <password>`, `userauth <user>@<domain> <password>`.
        let redact_from = if line.starts_with("auth ") {
            Some("auth ".len())
        } else if line.starts_with("userauth ") {
            line.rfind(' ').map(|i| i + 1)
        } else {
            None
        };
        match redact_from {
            Some(at) => {
                out.push_str(&line[..at]);
                out.push_str("<redacted>");
            }
            None => out.push_str(line),
        }
    }
    out
}

/// A command as [`loggable`] shows it.
pub(crate) fn loggable_command(cmd: &Command) -> String {
    let mut wire = BytesMut::new();
    match cmd.encode(&mut wire) {
        Ok(()) => loggable(&wire),
        Err(e) => format!("<{e}>"),
    }
}

/// Logs commands just written (at debug).
pub(crate) fn log_sent(peer: &Peer, wire: &[u8]) {
    if tracing::enabled!(tracing::Level::DEBUG) {
        tracing::debug!(conn = %peer, command = ?loggable(wire), "sent to FreeSWITCH");
    }
}

/// Logs a reply (at debug), cut to a readable length.
pub(crate) fn log_reply(peer: &Peer, what: Option<&'static str>, frame: &Frame) {
    if tracing::enabled!(tracing::Level::DEBUG) {
        const MAX: usize = 300;
        let mut reply = reply_summary(frame);
        let len = reply.len();
        if len > MAX {
            let mut cut = MAX;
            while !reply.is_char_boundary(cut) {
                cut -= 1;
            }
            reply.truncate(cut);
            reply.push_str(&format!("… ({len} bytes)"));
        }
        tracing::debug!(conn = %peer, command = what.unwrap_or("none"), reply = ?reply, "reply from FreeSWITCH");
    }
}

/// Logs a frame that carries an event (at trace). Decoding an event only
/// for this is affordable at trace level.
pub(crate) fn log_event_frame(peer: &Peer, frame: &Frame) {
    if tracing::enabled!(tracing::Level::TRACE) {
        match Event::from_frame(frame) {
            Ok(event) => log_event(peer, &event, frame_size(frame)),
            Err(error) => tracing::trace!(conn = %peer, %error, "unusable event from FreeSWITCH"),
        }
    }
}

/// Logs a decoded event (at trace).
pub(crate) fn log_event(peer: &Peer, event: &Event, bytes: usize) {
    tracing::trace!(
        conn = %peer,
        event = event.name(),
        uuid = event.unique_id().unwrap_or_default(),
        bytes,
        "event from FreeSWITCH"
    );
}

/// A reply slot: who waits for the reply (`None` for the task's own
/// commands), the command's name, and the task's own data.
pub(crate) struct Slot<T> {
    pub(crate) reply: Option<ReplyTx>,
    pub(crate) what: &'static str,
    pub(crate) extra: T,
}

impl<T> Slot<T> {
    /// Hands the reply to whoever waits for it. Returns it back when nobody
    /// does (a command the task sent for itself).
    pub(crate) fn deliver(self, frame: Frame) -> Option<Frame> {
        match self.reply {
            Some(tx) => {
                let _ = tx.send(Ok(frame));
                None
            }
            None => Some(frame),
        }
    }
}

/// The write side of a connection: the bytes not yet written and the slots
/// of the commands not yet answered, in order.
pub(crate) struct Wire<T> {
    pub(crate) peer: Peer,
    /// Encoded commands not yet written to the socket.
    pub(crate) wbuf: BytesMut,
    slots: VecDeque<Slot<T>>,
}

impl<T> Wire<T> {
    pub(crate) fn new(peer: Peer) -> Self {
        Self {
            peer,
            wbuf: BytesMut::new(),
            slots: VecDeque::new(),
        }
    }

    /// Encodes a command into the write buffer (logged at debug) and queues
    /// its reply slot. On an encoding error nothing is written or queued,
    /// and the requester (if any) gets the error.
    pub(crate) fn send(&mut self, cmd: &Command, reply: Option<ReplyTx>, extra: T) -> bool {
        let mark = self.wbuf.len();
        if let Err(e) = cmd.encode(&mut self.wbuf) {
            match reply {
                Some(tx) => {
                    let _ = tx.send(Err(e.into()));
                }
                None => tracing::warn!(conn = %self.peer, error = %e, "could not encode a command"),
            }
            return false;
        }
        log_sent(&self.peer, &self.wbuf[mark..]);
        self.expect(reply, verb(cmd), extra);
        true
    }

    /// Queues a reply slot for a command written some other way (the
    /// handshake's pipelined commands).
    pub(crate) fn expect(&mut self, reply: Option<ReplyTx>, what: &'static str, extra: T) {
        self.slots.push_back(Slot { reply, what, extra });
    }

    /// The slot a reply answers, the oldest. A reply nobody waits for is
    /// logged and ignored.
    pub(crate) fn on_reply(&mut self, frame: &Frame) -> Option<Slot<T>> {
        let slot = self.slots.pop_front();
        log_reply(&self.peer, slot.as_ref().map(|s| s.what), frame);
        if slot.is_none() {
            tracing::warn!(conn = %self.peer, reply = %reply_summary(frame), "reply without a request; ignored");
        }
        slot
    }

    /// The link is gone: every reply still due fails with
    /// [`Error::ConnectionDropped`], and unsent bytes are discarded.
    pub(crate) fn fail_all(&mut self) {
        for slot in self.slots.drain(..) {
            if let Some(tx) = slot.reply {
                let _ = tx.send(Err(Error::ConnectionDropped));
            }
        }
        self.wbuf.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(cmd: &Command) -> BytesMut {
        let mut b = BytesMut::new();
        cmd.encode(&mut b).unwrap();
        b
    }

    #[test]
    fn passwords_are_redacted_in_logs() {
        let auth = encoded(&Command::Auth {
            password: "s3cret".into(),
        });
        assert_eq!(loggable(&auth), "auth <redacted>");
        assert_eq!(
            loggable(b"userauth ops@example.com hunter2\n\n"),
            "userauth ops@example.com <redacted>"
        );
        let api = encoded(&Command::Api {
            command: "status".into(),
        });
        assert_eq!(loggable(&api), "api status");
        let bg = encoded(&Command::BgApi {
            command: "originate x".into(),
            job_uuid: Some("j1".into()),
        });
        assert_eq!(loggable(&bg), "bgapi originate x\nJob-UUID: j1");
    }

    #[tokio::test]
    async fn replies_go_to_the_oldest_slot_and_fail_when_the_link_drops() {
        let mut wire: Wire<u8> = Wire::new(Peer::Leg("u1".into()));
        let (tx1, rx1) = oneshot::channel();
        let (tx2, rx2) = oneshot::channel();
        assert!(wire.send(
            &Command::Api {
                command: "status".into()
            },
            Some(tx1),
            1
        ));
        assert!(wire.send(&Command::Exit, None, 2));
        assert!(wire.send(&Command::NoEvents, Some(tx2), 3));
        assert_eq!(&wire.wbuf[..], b"api status\n\nexit\n\nnoevents\n\n");
        let frame = Frame::from_parts([("Content-Type", "command/reply")], None);
        let slot = wire.on_reply(&frame).unwrap();
        assert_eq!((slot.what, slot.extra), ("api", 1));
        assert!(slot.deliver(frame.clone()).is_none());
        assert!(rx1.await.unwrap().is_ok());
        let slot = wire.on_reply(&frame).unwrap();
        assert_eq!((slot.what, slot.extra), ("exit", 2));
        assert!(
            slot.deliver(frame).is_some(),
            "nobody waits for our own exit"
        );
        wire.fail_all();
        assert!(matches!(rx2.await.unwrap(), Err(Error::ConnectionDropped)));
        assert!(wire.wbuf.is_empty());
    }

    #[test]
    fn a_command_that_cannot_be_encoded_is_refused_whole() {
        let mut wire: Wire<()> = Wire::new(Peer::Leg("u1".into()));
        let (tx, mut rx) = oneshot::channel();
        let bad = Command::Api {
            command: "status\nexit".into(),
        };
        assert!(!wire.send(&bad, Some(tx), ()));
        assert!(wire.wbuf.is_empty());
        assert!(matches!(rx.try_recv(), Ok(Err(Error::InvalidCommand(_)))));
    }
}
