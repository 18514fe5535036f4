//! The task that owns the inbound socket: writes requests, matches replies,
//! resolves `bgapi` jobs, feeds the event backlog (pausing reads while it is
//! full), and reconnects.

use super::Shared;
use super::config::InboundConfig;
use super::handshake::open;
use super::stream::EventSink;
use super::subscriptions::{BACKGROUND_JOB, SubChange, SubState, bg_filter};
use crate::esl::{Command, ContentType, Event, Frame};
use crate::switch::error::{Error, Result};
use crate::switch::link::{self, Reader, ReplyTx, WRITE_HIGH_WATER, Wire};
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{mpsc, oneshot};

/// What the driver does besides writing the command.
pub(super) enum Track {
    None,
    Sub(SubChange),
    Job(String, oneshot::Sender<Result<Event>>),
    Exit,
}

impl Track {
    pub(super) fn of(cmd: &Command) -> Self {
        match (cmd, SubChange::of(cmd)) {
            (_, Some(change)) => Self::Sub(change),
            (Command::Exit, None) => Self::Exit,
            _ => Self::None,
        }
    }
}

/// One request from a handle.
pub(super) struct Request {
    pub(super) cmd: Command,
    pub(super) reply: ReplyTx,
    pub(super) track: Track,
}

/// What to do when a queued reply arrives.
enum After {
    Nothing,
    Sub(SubChange),
    Job(String),
}

/// Why a connection ended.
enum Stop {
    /// Every handle is gone, or `exit` was asked for: no reconnect.
    Done,
    /// The link failed: reconnect.
    Dropped(Error),
}

/// The task that owns the socket.
pub(super) struct Driver {
    cfg: Arc<InboundConfig>,
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Request>,
    reader: Reader,
    writer: OwnedWriteHalf,
    sink: EventSink,
    subs: SubState,
    wire: Wire<After>,
    jobs: HashMap<String, oneshot::Sender<Result<Event>>>,
    /// Job count after the last sweep of timed-out jobs.
    jobs_pruned_at: usize,
    /// Whether `filter Event-Name BACKGROUND_JOB` is installed.
    bg_filter: bool,
    /// `exit` was sent: the next close is the end.
    closing: bool,
    bg_finder: memchr::memmem::Finder<'static>,
}

impl Driver {
    /// Opens the first connection; later ones are the driver's business.
    pub(super) async fn open(
        cfg: Arc<InboundConfig>,
        rx: mpsc::Receiver<Request>,
        mut sink: EventSink,
        shared: Arc<Shared>,
    ) -> Result<Self> {
        let subs = SubState::default();
        let (reader, writer) = open(&cfg, &subs, &mut sink).await?;
        let wire = Wire::new(sink.peer.clone());
        Ok(Self {
            cfg,
            shared,
            rx,
            reader,
            writer,
            sink,
            subs,
            wire,
            jobs: HashMap::new(),
            jobs_pruned_at: 0,
            bg_filter: false,
            closing: false,
            bg_finder: memchr::memmem::Finder::new(BACKGROUND_JOB.as_bytes()),
        })
    }

    pub(super) async fn run(mut self) {
        loop {
            let stop = self.serve().await;
            self.shared.connected.store(false, Ordering::Release);
            self.fail_in_flight();
            let error = match stop {
                Stop::Done => return,
                Stop::Dropped(_) if self.closing => return,
                Stop::Dropped(error) => error,
            };
            if self.cfg.reconnect.max_attempts == Some(0) {
                // The stream's consumer reports it (once).
                tracing::debug!(addr = %self.cfg.addr, %error, "lost the FreeSWITCH connection; not reconnecting");
                self.end_with(error);
                return;
            }
            tracing::warn!(addr = %self.cfg.addr, %error, "lost the FreeSWITCH connection; reconnecting");
            let _ = self.writer.shutdown().await;
            if !self.reconnect().await {
                return;
            }
            self.sink.stats().reconnected();
            self.shared.connected.store(true, Ordering::Release);
            tracing::info!(addr = %self.cfg.addr, "reconnected to FreeSWITCH");
        }
    }

    /// Records why the driver stops, for the stream's consumer.
    fn end_with(&self, error: Error) {
        *self.shared.ended.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
    }

    async fn serve(&mut self) -> Stop {
        loop {
            let readable = self.sink.readable();
            tokio::select! {
                biased;
                r = self.writer.write_buf(&mut self.wire.wbuf), if !self.wire.wbuf.is_empty() => {
                    if let Err(e) = r {
                        return Stop::Dropped(e.into());
                    }
                }
                req = self.rx.recv(), if self.wire.wbuf.len() < WRITE_HIGH_WATER && !self.closing => {
                    match req {
                        Some(req) => self.enqueue(req),
                        None => return Stop::Done,
                    }
                }
                frame = self.reader.next(), if readable => match frame {
                    Some(Ok(frame)) => self.on_frame(frame),
                    Some(Err(e)) => return Stop::Dropped(e.into()),
                    None => return Stop::Dropped(Error::Disconnected { addr: self.cfg.addr.clone() }),
                },
                () = self.sink.room(), if !readable => {}
            }
        }
    }

    fn enqueue(&mut self, req: Request) {
        let Request {
            mut cmd,
            reply,
            track,
        } = req;
        if let Track::Sub(SubChange::Filter(..)) = track
            && !self.bg_filter
        {
            // FreeSWITCH passes an event when any filter matches: without
            // this one, the first user filter would hide bgapi results.
            self.wire.send(&bg_filter(), None, After::Nothing);
            self.bg_filter = true;
        }
        if let Command::NixEvent { events } = &mut cmd {
            // The client keeps BACKGROUND_JOB for bgapi; the user's wish is
            // kept in the subscription state and applied when forwarding.
            events.retain(|n| !n.eq_ignore_ascii_case(BACKGROUND_JOB));
            if events.is_empty() {
                if let Track::Sub(change) = &track {
                    self.subs.apply(change);
                }
                let ok = Frame::from_parts(
                    [
                        ("Content-Type", "command/reply"),
                        ("Reply-Text", "+OK events nixed"),
                    ],
                    None,
                );
                let _ = reply.send(Ok(ok));
                return;
            }
        }
        let noevents = matches!(cmd, Command::NoEvents);
        let after = match track {
            Track::None => After::Nothing,
            Track::Sub(change) => After::Sub(change),
            Track::Exit => After::Nothing,
            Track::Job(uuid, tx) => {
                self.insert_job(uuid.clone(), tx);
                After::Job(uuid)
            }
        };
        let job = match &after {
            After::Job(uuid) => Some(uuid.clone()),
            _ => None,
        };
        if !self.wire.send(&cmd, Some(reply), after) {
            if let Some(uuid) = job {
                self.jobs.remove(&uuid);
            }
            return;
        }
        if matches!(cmd, Command::Exit) {
            self.closing = true;
        }
        if noevents {
            let again = Command::Event {
                format: self.subs.format,
                events: vec![BACKGROUND_JOB.into()],
            };
            self.wire.send(&again, None, After::Nothing);
        }
    }

    fn insert_job(&mut self, uuid: String, tx: oneshot::Sender<Result<Event>>) {
        // Callers that timed out dropped their receivers; sweep them now and
        // then so the map stays as small as the jobs really pending.
        if self.jobs.len() >= self.jobs_pruned_at * 2 + 64 {
            self.jobs.retain(|_, tx| !tx.is_closed());
            self.jobs_pruned_at = self.jobs.len();
        }
        self.jobs.insert(uuid, tx);
    }

    fn on_frame(&mut self, frame: Frame) {
        self.sink.stats().frame_read();
        match frame.content_type() {
            ContentType::CommandReply | ContentType::ApiResponse => self.on_reply(frame),
            ContentType::EventPlain | ContentType::EventJson | ContentType::EventXml => {
                self.on_event(frame)
            }
            ContentType::DisconnectNotice => {
                tracing::debug!(addr = %self.cfg.addr, "FreeSWITCH announced it is closing the connection");
            }
            ContentType::LogData => {}
            other => tracing::debug!(?other, "ignoring an unexpected frame"),
        }
    }

    fn on_reply(&mut self, frame: Frame) {
        let Some(slot) = self.wire.on_reply(&frame) else {
            return;
        };
        let ok = frame.is_ok();
        let what = slot.what;
        match &slot.extra {
            After::Nothing | After::Sub(_) if !ok => {}
            After::Nothing => {}
            After::Sub(change) => self.sub_applied(change.clone()),
            After::Job(uuid) => {
                if !ok {
                    self.jobs.remove(uuid);
                }
            }
        }
        if let Some(frame) = slot.deliver(frame)
            && !ok
        {
            tracing::warn!(command = what, reply = %link::reply_summary(&frame), "FreeSWITCH refused a command the client sent for itself");
        }
    }

    /// A subscription change FreeSWITCH accepted.
    fn sub_applied(&mut self, change: SubChange) {
        self.subs.apply(&change);
        if let SubChange::FilterDelete(h, None) = &change
            && h.eq_ignore_ascii_case("all")
        {
            self.bg_filter = false;
        } else if matches!(change, SubChange::FilterDelete(..))
            && self.subs.filters.is_empty()
            && self.bg_filter
        {
            // Alone, our filter would let only BACKGROUND_JOB through.
            self.bg_filter = false;
            self.wire.send(
                &Command::FilterDelete {
                    header: "Event-Name".into(),
                    value: Some(BACKGROUND_JOB.into()),
                },
                None,
                After::Nothing,
            );
        }
    }

    fn on_event(&mut self, frame: Frame) {
        let wants_bg = self.subs.user_wants_bg();
        let maybe_bg = (!self.jobs.is_empty() || !wants_bg)
            && frame
                .body()
                .is_some_and(|b| self.bg_finder.find(b).is_some());
        if maybe_bg
            && let Ok(event) = Event::from_frame(&frame)
            && event.name() == BACKGROUND_JOB
        {
            if let Some(tx) = event.job_uuid().and_then(|u| self.jobs.remove(u)) {
                let _ = tx.send(Ok(event));
            }
            if !wants_bg {
                return;
            }
        }
        self.sink.push(frame);
    }

    /// Fails every request and job in flight: their replies will never come.
    fn fail_in_flight(&mut self) {
        self.wire.fail_all();
        for (_, tx) in self.jobs.drain() {
            let _ = tx.send(Err(Error::ConnectionDropped));
        }
        self.jobs_pruned_at = 0;
    }

    /// Reconnects with backoff; false when every handle is gone or the
    /// policy gave up (the reason is kept for the stream).
    async fn reconnect(&mut self) -> bool {
        // A filter is replayed with ours in front of it.
        self.bg_filter = !self.subs.filters.is_empty();
        let mut attempt = 0u32;
        loop {
            let sleep = tokio::time::sleep(self.cfg.reconnect.delay(attempt));
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    _ = &mut sleep => break,
                    req = self.rx.recv() => match req {
                        // Fails at once: there is no connection to send it on.
                        Some(req) => { let _ = req.reply.send(Err(Error::NotConnected)); }
                        None => return false,
                    },
                }
            }
            match open(&self.cfg, &self.subs, &mut self.sink).await {
                Ok((reader, writer)) => {
                    (self.reader, self.writer) = (reader, writer);
                    return true;
                }
                Err(error) => {
                    attempt = attempt.saturating_add(1);
                    if self
                        .cfg
                        .reconnect
                        .max_attempts
                        .is_some_and(|max| attempt >= max)
                    {
                        tracing::error!(addr = %self.cfg.addr, %error, attempt, "giving up reconnecting to FreeSWITCH");
                        self.end_with(error);
                        return false;
                    }
                    tracing::warn!(addr = %self.cfg.addr, %error, attempt, "reconnect to FreeSWITCH failed");
                }
            }
        }
    }
}
