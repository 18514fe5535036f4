//! A connection as the event fan-out sees it: what it subscribed to, its
//! bounded event and log queues, and the signal that its channel went down.
//! [`crate::sim::Core::fire`] offers every event here; the connection task
//! ([`crate::sim::session`]) drains the queues.

use crate::sim::event::{EVENT_ALL, EVENT_CUSTOM, FiredEvent};
use crate::sim::lock;
use bytes::Bytes;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

/// A log line for connections that ran `log <level>`.
#[derive(Debug, Clone)]
pub(crate) struct LogLine {
    pub(crate) level: u8,
    pub(crate) text_channel: u8,
    pub(crate) file: &'static str,
    pub(crate) func: &'static str,
    pub(crate) line: u32,
    pub(crate) user_data: String,
    pub(crate) data: String,
}

impl LogLine {
    pub(crate) fn frame(&self) -> Bytes {
        Bytes::from(format!(
            "Content-Type: log/data\nContent-Length: {}\nLog-Level: {}\nText-Channel: {}\nLog-File: {}\nLog-Func: {}\nLog-Line: {}\nUser-Data: {}\n\n{}",
            self.data.len(),
            self.level,
            self.text_channel,
            self.file,
            self.func,
            self.line,
            self.user_data,
            self.data
        ))
    }
}

/// What a connection subscribed to (read by [`Core::fire`] on every event).
#[derive(Debug, Default)]
pub(crate) struct Subscription {
    /// LFLAG_EVENTS.
    pub(crate) enabled: bool,
    pub(crate) mask: [u64; 2],
    pub(crate) custom: HashSet<String>,
    pub(crate) filters: Vec<(String, String)>,
    /// LFLAG_MYEVENTS: only events whose Unique-ID is this uuid (any
    /// Unique-ID when the uuid is empty).
    pub(crate) myevents: Option<String>,
    pub(crate) log_level: Option<u8>,
}

impl Subscription {
    pub(crate) fn has(&self, id: usize) -> bool {
        self.mask[id / 64] & (1 << (id % 64)) != 0
    }

    pub(crate) fn set(&mut self, id: usize, on: bool) {
        if on {
            self.mask[id / 64] |= 1 << (id % 64);
        } else {
            self.mask[id / 64] &= !(1 << (id % 64));
        }
    }

    /// mod_event_socket's `event_handler` test.
    pub(crate) fn wants(&self, ev: &FiredEvent) -> bool {
        if !self.enabled {
            return false;
        }
        let mut send = self.has(EVENT_ALL)
            || (self.has(ev.id)
                && (ev.id != EVENT_CUSTOM
                    || ev.event.subclass().is_none_or(|s| self.custom.contains(s))));
        if send && !self.filters.is_empty() {
            send = false;
            for (name, value) in &self.filters {
                let Some(hval) = ev.event.header(name) else {
                    continue;
                };
                let mut comp = value.as_str();
                let mut pos = true;
                while let Some(c) = comp.chars().next() {
                    match c {
                        '+' => pos = true,
                        '-' => pos = false,
                        ' ' => {}
                        _ => break,
                    }
                    comp = &comp[1..];
                }
                if send && pos {
                    continue;
                }
                let comp = comp
                    .strip_prefix('/')
                    .map_or(comp, |c| c.strip_suffix('/').unwrap_or(c));
                if hval.eq_ignore_ascii_case(comp) {
                    if pos {
                        send = true;
                    } else {
                        send = false;
                        break;
                    }
                }
            }
        }
        if send && let Some(uuid) = &self.myevents {
            match &ev.unique_id {
                Some(u) => send = uuid.is_empty() || u == uuid,
                None => send = false,
            }
        }
        send
    }
}

/// A connection as the event fan-out sees it.
pub(crate) struct ListenerEntry {
    pub(crate) id: u64,
    pub(crate) sub: Mutex<Subscription>,
    pub(crate) tx: mpsc::Sender<Arc<FiredEvent>>,
    pub(crate) log_tx: mpsc::Sender<Arc<LogLine>>,
    pub(crate) lost: AtomicU32,
    pub(crate) lost_logs: AtomicU32,
    /// Cancelled to kill the connection (too many lost events).
    pub(crate) kill: CancellationToken,
    /// Set (and notified) when the controlled channel goes down.
    pub(crate) down: AtomicBool,
    pub(crate) down_notify: Notify,
}

impl ListenerEntry {
    /// Queues an event if this connection wants it; counts and acts on
    /// losses when the queue is full.
    pub(crate) fn offer(&self, ev: &Arc<FiredEvent>, max_missed: u32) {
        if !lock(&self.sub).wants(ev) {
            return;
        }
        match self.tx.try_send(ev.clone()) {
            Ok(()) => {
                let lost = self.lost.swap(0, Ordering::Relaxed);
                if lost > 0 {
                    tracing::error!(listener = self.id, lost, "Lost {lost} events!");
                }
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                let lost = self.lost.fetch_add(1, Ordering::Relaxed) + 1;
                if lost > max_missed && !self.kill.is_cancelled() {
                    tracing::error!(
                        listener = self.id,
                        lost,
                        "event socket connection does not read its events; killing it as FreeSWITCH does"
                    );
                    self.kill.cancel();
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    pub(crate) fn offer_log(&self, line: &Arc<LogLine>) {
        let wants = lock(&self.sub).log_level.is_some_and(|l| l >= line.level);
        if wants && self.log_tx.try_send(line.clone()).is_err() {
            self.lost_logs.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The controlled channel went down (after CHANNEL_HANGUP for an inbound
    /// `myevents <uuid>` listener, after CHANNEL_HANGUP_COMPLETE for an
    /// outbound socket). Later events of that channel (CHANNEL_DESTROY) are
    /// not delivered.
    pub(crate) fn channel_down(&self) {
        lock(&self.sub).enabled = false;
        self.down.store(true, Ordering::Release);
        self.down_notify.notify_one();
    }
}
