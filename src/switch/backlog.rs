//! The event backlog between a connection task and its consumer: a queue
//! bounded in bytes whose overflow is backpressure, never a drop.
//!
//! A connection task pushes every event it reads; while the queued events
//! hold [`BacklogTx::limit`] bytes or more, the task stops reading its
//! socket, so the excess waits in the kernel's socket buffers and then in
//! FreeSWITCH's own per-listener queue (100,000 events on an event socket).
//! It reads again once the consumer has brought the backlog down to half
//! the limit: the hysteresis keeps a steady stall from waking the task for
//! every event taken. Memory stays under the limit plus one message (the
//! codec refuses a message larger than the limit).
//!
//! [`LinkStats`] counts what happens for the operator: fill level, time and
//! number of stalls, events queued, reconnects. One `LinkStats` may be shared
//! by many connections (every leg of an outbound listener adds to one).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, mpsc};

/// Counters and gauges of one connection, or of a group of connections
/// (all the legs of a listener). Every figure is read lock-free except the
/// stall time, whose bookkeeping changes only when a stall starts or ends.
///
/// Suggested Prometheus names are given per method; none carries a label
/// that identifies a call.
#[derive(Debug, Default)]
pub struct LinkStats {
    limit_bytes: AtomicU64,
    buffered_bytes: AtomicU64,
    buffered_events: AtomicU64,
    events: AtomicU64,
    dropped: AtomicU64,
    stalls: AtomicU64,
    reconnects: AtomicU64,
    last_frame_nanos: AtomicU64,
    stall_clock: Mutex<StallClock>,
}

/// Time spent stalled: finished stalls, plus the ones in progress.
#[derive(Debug, Default)]
struct StallClock {
    finished: Duration,
    /// Start of each stall in progress (one per stalled connection).
    ongoing: Vec<Instant>,
}

/// The process-wide origin of [`LinkStats::since_last_frame`] timestamps.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl LinkStats {
    /// Stats whose connections each buffer at most `limit_bytes`.
    pub(crate) fn new(limit_bytes: usize) -> Self {
        let stats = Self::default();
        stats
            .limit_bytes
            .store(limit_bytes as u64, Ordering::Relaxed);
        stats
    }

    /// The byte limit of one connection's backlog (a gauge:
    /// `redswitch_esl_event_buffer_limit_bytes`).
    pub fn buffer_limit_bytes(&self) -> u64 {
        self.limit_bytes.load(Ordering::Relaxed)
    }

    /// Bytes of events read from FreeSWITCH and not yet taken by their
    /// consumer, over every connection counted here (a gauge:
    /// `redswitch_esl_event_buffer_bytes`).
    pub fn buffered_bytes(&self) -> u64 {
        self.buffered_bytes.load(Ordering::Relaxed)
    }

    /// Events read and not yet taken (a gauge:
    /// `redswitch_esl_event_buffer_events`).
    pub fn buffered_events(&self) -> u64 {
        self.buffered_events.load(Ordering::Relaxed)
    }

    /// Events read from FreeSWITCH and queued for the consumer (a counter:
    /// `redswitch_esl_events_total`).
    pub fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    /// Events read from FreeSWITCH that never reached a consumer (a counter:
    /// `redswitch_events_dropped_total`). A slow consumer never causes a
    /// drop (the connection stalls instead); this counts only events read
    /// after the consumer let go of its stream while the connection ran. The
    /// agent holds its inbound stream for the life of the connection, so
    /// there it stays 0. Outbound legs never count here: a voice app that
    /// drops its leg's stream says it wants no more events.
    pub fn events_dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// How many times a connection stopped reading because its backlog was
    /// full (a counter: `redswitch_esl_stalls_total`).
    pub fn stalls(&self) -> u64 {
        self.stalls.load(Ordering::Relaxed)
    }

    /// Connections stalled right now (a gauge:
    /// `redswitch_esl_stalled_connections`).
    pub fn stalled_now(&self) -> u64 {
        self.clock().ongoing.len() as u64
    }

    /// Total time connections spent not reading because their backlog was
    /// full, stalls in progress included (a counter:
    /// `redswitch_esl_stalled_seconds_total`). With several connections
    /// stalled at once, their times add up.
    pub fn stalled(&self) -> Duration {
        let clock = self.clock();
        let now = Instant::now();
        clock.finished
            + clock
                .ongoing
                .iter()
                .map(|&t| now.saturating_duration_since(t))
                .sum::<Duration>()
    }

    /// Successful reconnects after the link dropped (a counter:
    /// `redswitch_esl_reconnects_total`). Outbound legs never reconnect.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    /// Time since the last frame of any kind (reply, event, HEARTBEAT …)
    /// arrived on a connection counted here; `None` before the first. A
    /// readiness check can hold FreeSWITCH for alive while this is short.
    pub fn since_last_frame(&self) -> Option<Duration> {
        match self.last_frame_nanos.load(Ordering::Relaxed) {
            0 => None,
            n => Some(epoch().elapsed().saturating_sub(Duration::from_nanos(n))),
        }
    }

    pub(crate) fn frame_read(&self) {
        // Never 0 (which means "none yet"), even in the epoch's first nanosecond.
        let nanos = (epoch().elapsed().as_nanos() as u64).max(1);
        self.last_frame_nanos.store(nanos, Ordering::Relaxed);
    }

    pub(crate) fn reconnected(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    fn clock(&self) -> std::sync::MutexGuard<'_, StallClock> {
        self.stall_clock.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stall_started(&self, at: Instant) {
        self.stalls.fetch_add(1, Ordering::Relaxed);
        self.clock().ongoing.push(at);
    }

    fn stall_ended(&self, started: Instant) {
        let mut clock = self.clock();
        if let Some(i) = clock.ongoing.iter().position(|&t| t == started) {
            clock.ongoing.swap_remove(i);
        }
        clock.finished += started.elapsed();
    }
}

/// State shared by the two ends of one backlog.
#[derive(Debug)]
struct Gate {
    limit: usize,
    /// Reading resumes at or below this many bytes.
    resume_at: usize,
    used: AtomicUsize,
    room: Notify,
    stats: Arc<LinkStats>,
}

impl Gate {
    /// The consumer took an item of `size` bytes.
    fn release(&self, size: usize) {
        let before = self.used.fetch_sub(size, Ordering::AcqRel);
        self.stats
            .buffered_bytes
            .fetch_sub(size as u64, Ordering::Relaxed);
        self.stats.buffered_events.fetch_sub(1, Ordering::Relaxed);
        // Wake the producer when the backlog crosses the resume mark; a
        // permit stored while it is not waiting costs one spurious wake-up.
        if before > self.resume_at && before - size <= self.resume_at {
            self.room.notify_one();
        }
    }
}

/// A backlog bounded to `limit` bytes (at least 1) whose figures add up in
/// `stats`.
pub(crate) fn backlog<T>(limit: usize, stats: Arc<LinkStats>) -> (BacklogTx<T>, BacklogRx<T>) {
    let limit = limit.max(1);
    let gate = Arc::new(Gate {
        limit,
        resume_at: limit / 2,
        used: AtomicUsize::new(0),
        room: Notify::new(),
        stats,
    });
    let (tx, rx) = mpsc::unbounded_channel();
    (
        BacklogTx {
            tx,
            gate: gate.clone(),
            stalled_since: None,
        },
        BacklogRx { rx, gate },
    )
}

/// What happened to a pushed item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushed {
    Queued,
    /// The consumer is gone; the item was discarded.
    NoConsumer,
}

/// The connection task's end.
#[derive(Debug)]
pub(crate) struct BacklogTx<T> {
    tx: mpsc::UnboundedSender<(T, usize)>,
    gate: Arc<Gate>,
    /// When the current stall began.
    stalled_since: Option<Instant>,
}

impl<T> BacklogTx<T> {
    /// Queues an item of `size` bytes. Never refuses for lack of room: the
    /// caller asks [`Self::readable`] before reading the next one.
    pub(crate) fn push(&mut self, item: T, size: usize) -> Pushed {
        // Counted before the send: the consumer may take the item and
        // subtract at once, which must never wrap the gauges below zero.
        let stats = &self.gate.stats;
        self.gate.used.fetch_add(size, Ordering::AcqRel);
        stats
            .buffered_bytes
            .fetch_add(size as u64, Ordering::Relaxed);
        stats.buffered_events.fetch_add(1, Ordering::Relaxed);
        if self.tx.send((item, size)).is_err() {
            self.gate.used.fetch_sub(size, Ordering::AcqRel);
            stats
                .buffered_bytes
                .fetch_sub(size as u64, Ordering::Relaxed);
            stats.buffered_events.fetch_sub(1, Ordering::Relaxed);
            return Pushed::NoConsumer;
        }
        stats.events.fetch_add(1, Ordering::Relaxed);
        Pushed::Queued
    }

    /// Counts an event that reached no consumer in
    /// [`LinkStats::events_dropped`].
    pub(crate) fn count_dropped(&self) {
        self.gate.stats.dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether the task may read its socket now; starts and ends stalls
    /// (with their statistics) as the backlog fills and drains.
    pub(crate) fn readable(&mut self) -> bool {
        let used = self.gate.used.load(Ordering::Acquire);
        let gone = self.tx.is_closed();
        match self.stalled_since {
            None if used >= self.gate.limit && !gone => {
                let now = Instant::now();
                self.gate.stats.stall_started(now);
                self.stalled_since = Some(now);
                tracing::debug!(
                    buffered_bytes = used,
                    limit = self.gate.limit,
                    "event consumer is behind: pausing reads (FreeSWITCH queues the rest)"
                );
                false
            }
            None => true,
            Some(since) if used <= self.gate.resume_at || gone => {
                self.gate.stats.stall_ended(since);
                self.stalled_since = None;
                tracing::debug!(
                    stalled_ms = since.elapsed().as_millis() as u64,
                    "event consumer caught up: reading again"
                );
                true
            }
            Some(_) => false,
        }
    }

    /// Resolves when the consumer may have made room (or went away); then
    /// ask [`Self::readable`] again.
    pub(crate) async fn room(&self) {
        if self.tx.is_closed() {
            return;
        }
        tokio::select! {
            () = self.gate.room.notified() => {}
            () = self.tx.closed() => {}
        }
    }

    /// The byte limit.
    pub(crate) fn limit(&self) -> usize {
        self.gate.limit
    }

    /// The statistics this backlog adds to.
    pub(crate) fn stats(&self) -> &Arc<LinkStats> {
        &self.gate.stats
    }
}

impl<T> Drop for BacklogTx<T> {
    fn drop(&mut self) {
        if let Some(since) = self.stalled_since.take() {
            self.gate.stats.stall_ended(since);
        }
    }
}

/// The consumer's end. Ends (`None`) once the producer is gone and every
/// queued item was taken.
#[derive(Debug)]
pub(crate) struct BacklogRx<T> {
    rx: mpsc::UnboundedReceiver<(T, usize)>,
    gate: Arc<Gate>,
}

impl<T> BacklogRx<T> {
    fn take(&self, (item, size): (T, usize)) -> T {
        self.gate.release(size);
        item
    }

    /// The next item.
    pub(crate) async fn recv(&mut self) -> Option<T> {
        let got = self.rx.recv().await?;
        Some(self.take(got))
    }

    /// The next item if one is queued.
    pub(crate) fn try_recv(&mut self) -> Result<T, mpsc::error::TryRecvError> {
        let got = self.rx.try_recv()?;
        Ok(self.take(got))
    }

    /// The next item, blocking the thread (for consumers on their own
    /// thread; panics inside an async context, as tokio's does).
    pub(crate) fn blocking_recv(&mut self) -> Option<T> {
        let got = self.rx.blocking_recv()?;
        Some(self.take(got))
    }

    /// Polls for the next item.
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(got)) => Poll::Ready(Some(self.take(got))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Items queued.
    pub(crate) fn len(&self) -> usize {
        self.rx.len()
    }

    /// Bytes queued in this backlog.
    pub(crate) fn bytes(&self) -> usize {
        self.gate.used.load(Ordering::Acquire)
    }

    /// The byte limit.
    pub(crate) fn limit(&self) -> usize {
        self.gate.limit
    }
}

impl<T> Drop for BacklogRx<T> {
    fn drop(&mut self) {
        // Whatever is still queued is freed with the channel: give its bytes
        // back so the gauges and the producer's gate stay true.
        self.rx.close();
        while let Ok(got) = self.rx.try_recv() {
            self.take(got);
        }
        self.gate.room.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(limit: usize) -> (BacklogTx<u32>, BacklogRx<u32>, Arc<LinkStats>) {
        let stats = Arc::new(LinkStats::new(limit));
        let (tx, rx) = backlog(limit, stats.clone());
        (tx, rx, stats)
    }

    #[test]
    fn stalls_at_the_limit_and_resumes_at_half() {
        let (mut tx, mut rx, stats) = pair(100);
        for i in 0..10 {
            assert!(tx.readable());
            assert_eq!(tx.push(i, 10), Pushed::Queued);
        }
        assert_eq!(stats.buffered_bytes(), 100);
        assert_eq!(stats.buffered_events(), 10);
        assert!(!tx.readable());
        assert_eq!((stats.stalls(), stats.stalled_now()), (1, 1));
        // Taking a few is not enough: the backlog must drain to half.
        for i in 0..4 {
            assert_eq!(rx.try_recv().unwrap(), i);
            assert!(!tx.readable());
        }
        assert_eq!(rx.try_recv().unwrap(), 4);
        assert!(tx.readable());
        assert_eq!((stats.stalls(), stats.stalled_now()), (1, 0));
        assert_eq!(stats.buffered_bytes(), 50);
        assert_eq!(stats.events(), 10);
        assert_eq!(stats.events_dropped(), 0);
    }

    #[tokio::test]
    async fn room_wakes_the_producer_when_the_consumer_catches_up() {
        let (mut tx, mut rx, stats) = pair(10);
        tx.push(1, 10);
        assert!(!tx.readable());
        let consumer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            rx.recv().await
        });
        tokio::time::timeout(Duration::from_secs(5), tx.room())
            .await
            .expect("woken");
        assert!(tx.readable());
        assert_eq!(consumer.await.unwrap(), Some(1));
        assert!(stats.stalled() >= Duration::from_millis(10));
    }

    #[test]
    fn a_gone_consumer_discards_and_frees_its_bytes() {
        let (mut tx, rx, stats) = pair(10);
        tx.push(1, 10);
        assert!(!tx.readable());
        drop(rx);
        assert_eq!(stats.buffered_bytes(), 0);
        assert_eq!(stats.buffered_events(), 0);
        assert!(tx.readable(), "nobody to wait for");
        assert_eq!(tx.push(2, 10), Pushed::NoConsumer);
        assert_eq!(stats.buffered_bytes(), 0);
        assert_eq!(stats.stalled_now(), 0);
    }

    #[test]
    fn one_stats_adds_up_many_backlogs() {
        let stats = Arc::new(LinkStats::new(10));
        let (mut a, _ra) = backlog::<u8>(10, stats.clone());
        let (mut b, _rb) = backlog::<u8>(10, stats.clone());
        a.push(0, 10);
        b.push(0, 10);
        assert!(!a.readable() && !b.readable());
        assert_eq!(stats.buffered_bytes(), 20);
        assert_eq!(stats.stalled_now(), 2);
        drop(a);
        assert_eq!(stats.stalled_now(), 1);
    }

    #[test]
    fn last_frame_is_none_until_one_is_read() {
        let stats = LinkStats::new(1);
        assert_eq!(stats.since_last_frame(), None);
        stats.frame_read();
        assert!(stats.since_last_frame().unwrap() < Duration::from_secs(5));
    }
}
