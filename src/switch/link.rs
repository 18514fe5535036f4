//! Pieces both connection tasks share: the socket halves, the FIFO of reply
//! slots, awaiting a reply with a timeout, and the rate-limited drop log.

use crate::esl::{EslCodec, Frame};
use crate::switch::error::{Error, Result};
use std::time::{Duration, Instant};
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
/// would otherwise add up to ~40–200 ms per command.
pub(crate) fn split(
    stream: TcpStream,
    read_capacity: usize,
) -> std::io::Result<(Reader, OwnedWriteHalf)> {
    stream.set_nodelay(true)?;
    let (rd, wr) = stream.into_split();
    Ok((
        FramedRead::with_capacity(rd, EslCodec::client(), read_capacity),
        wr,
    ))
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

/// Counts events dropped because a consumer lags, and warns at most once a
/// second so a flood does not turn into a flood of log lines.
#[derive(Debug)]
pub(crate) struct DropLog {
    what: &'static str,
    since_warn: u64,
    last_warn: Option<Instant>,
}

impl DropLog {
    pub(crate) fn new(what: &'static str) -> Self {
        Self {
            what,
            since_warn: 0,
            last_warn: None,
        }
    }

    /// Records one dropped event; `total` is the running total to report.
    pub(crate) fn dropped(&mut self, total: u64) {
        self.since_warn += 1;
        let now = Instant::now();
        if self
            .last_warn
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            tracing::warn!(
                queue = self.what,
                dropped = self.since_warn,
                total,
                "event consumer is too slow: dropping new events (queue full)"
            );
            self.since_warn = 0;
            self.last_warn = Some(now);
        }
    }
}
