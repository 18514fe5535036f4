//! The consumer's end of the inbound client's events, and the driver's
//! end that fills it.

use super::Shared;
use crate::esl::{Event, Frame};
use crate::switch::backlog::{BacklogRx, BacklogTx, LinkStats, Pushed};
use crate::switch::error::Error;
use crate::switch::link::{self, Peer};
use futures::Stream;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::mpsc::error::TryRecvError;

/// The client's events, in order, none dropped (see the module docs for
/// the backpressure). Ends when the driver stops; then
/// [`EventStream::take_error`] tells why.
#[derive(Debug)]
pub struct EventStream {
    rx: BacklogRx<Frame>,
    shared: Arc<Shared>,
}

impl EventStream {
    pub(super) fn new(rx: BacklogRx<Frame>, shared: Arc<Shared>) -> Self {
        Self { rx, shared }
    }

    /// The next event, decoded. Frames that are not usable events (no
    /// `Event-Name`, malformed JSON) are logged and skipped.
    pub async fn recv(&mut self) -> Option<Event> {
        loop {
            let frame = self.rx.recv().await?;
            if let Some(event) = decode(&frame) {
                return Some(event);
            }
        }
    }

    /// The next event frame, undecoded (for consumers that forward bytes).
    pub async fn recv_frame(&mut self) -> Option<Frame> {
        self.rx.recv().await
    }

    /// An event frame if one is queued, without waiting.
    pub fn try_recv_frame(&mut self) -> Result<Frame, TryRecvError> {
        self.rx.try_recv()
    }

    /// The next event frame, blocking the thread: for a consumer on its own
    /// thread (e.g. in `spawn_blocking`), which may then block on its output
    /// without holding up the runtime. Panics in an async context.
    pub fn blocking_recv_frame(&mut self) -> Option<Frame> {
        self.rx.blocking_recv()
    }

    /// Why the stream ended: the error that stopped the client when it does
    /// not reconnect ([`crate::switch::ReconnectPolicy::never`]) or gave up
    /// reconnecting. `None` while it runs, and after
    /// [`crate::switch::InboundClient::close`] or when every handle was
    /// dropped.
    pub fn take_error(&mut self) -> Option<Error> {
        self.shared
            .ended
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// Events queued and not yet received.
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.rx.len() == 0
    }

    /// Bytes of events queued and not yet received.
    pub fn buffered_bytes(&self) -> usize {
        self.rx.bytes()
    }

    /// The buffer's size ([`crate::switch::InboundConfig::event_buffer_bytes`]).
    pub fn capacity_bytes(&self) -> usize {
        self.rx.limit()
    }

    /// The connection's counters (the same as the client's).
    pub fn stats(&self) -> &Arc<LinkStats> {
        &self.shared.stats
    }
}

/// Decodes an event frame; an unusable one is logged and yields `None`.
pub fn decode(frame: &Frame) -> Option<Event> {
    match Event::from_frame(frame) {
        Ok(event) => Some(event),
        Err(error) => {
            tracing::warn!(%error, "skipping an unusable event FreeSWITCH sent");
            None
        }
    }
}

impl Stream for EventStream {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        loop {
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(frame)) => {
                    if let Some(event) = decode(&frame) {
                        return Poll::Ready(Some(event));
                    }
                }
                other => return other.map(|_| None),
            }
        }
    }
}

/// The driver's end of the event backlog.
#[derive(Debug)]
pub(super) struct EventSink {
    tx: BacklogTx<Frame>,
    pub(super) peer: Peer,
}

impl EventSink {
    pub(super) fn new(tx: BacklogTx<Frame>, peer: Peer) -> Self {
        Self { tx, peer }
    }

    /// Queues an event frame for the consumer (logged at trace).
    pub(super) fn push(&mut self, frame: Frame) {
        link::log_event_frame(&self.peer, &frame);
        let size = link::frame_size(&frame);
        if self.tx.push(frame, size) == Pushed::NoConsumer {
            self.tx.count_dropped();
        }
    }

    /// Whether the driver may read the socket (the backlog has room).
    pub(super) fn readable(&mut self) -> bool {
        self.tx.readable()
    }

    /// Resolves when the consumer may have made room.
    pub(super) async fn room(&self) {
        self.tx.room().await
    }

    /// The largest message the backlog can take.
    pub(super) fn limit(&self) -> usize {
        self.tx.limit()
    }

    pub(super) fn stats(&self) -> &Arc<LinkStats> {
        self.tx.stats()
    }
}
