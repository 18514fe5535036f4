//! One call leg on an outbound socket: the [`Call`] handle, its
//! [`ChannelData`], and the connection task that owns the leg's socket.
//!
//! The handle is small and cloneable; every operation is a request to the
//! leg's task over a bounded channel. The task keeps all read state in its
//! own struct (never in locals of a future a `select!` may cancel): the FIFO
//! of reply slots, the executes waiting for their CHANNEL_EXECUTE_COMPLETE
//! (matched by `Application-UUID`, which FreeSWITCH copies from the
//! `Event-UUID` we send), the hangup cause. It reads the socket continuously;
//! the leg's events go to a small bounded queue ([`Call::events`]) with the
//! drop-newest policy, so an app that never reads its events costs nothing
//! but dropped events.
//!
//! When the channel hangs up, FreeSWITCH sends CHANNEL_HANGUP_COMPLETE and
//! then (we always ask for `linger`) a `text/disconnect-notice` with
//! `Content-Disposition: linger`; the task then says `exit` and closes. An
//! execute still waiting at that point fails with [`Error::Hangup`]: that is
//! how an unknown application shows (no CHANNEL_EXECUTE at all, the channel
//! hangs up with `DESTINATION_OUT_OF_ORDER`, trace 03).

use crate::esl::{CallCommand, Command, ContentType, Event, Execute, Frame, SendMsg};
use crate::switch::error::{Error, Result};
use crate::switch::link::{self, DropLog, Reader, ReplyTx, WRITE_HIGH_WATER};
use bytes::BytesMut;
use futures::{Stream, StreamExt};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{mpsc, oneshot, watch};

/// After `exit`, how long to wait for FreeSWITCH to close before we do.
const EXIT_GRACE: Duration = Duration::from_secs(5);
/// A read buffer larger than this is released when it runs empty, so an
/// idle leg does not keep the few KiB a big frame needed.
const IDLE_READ_BUFFER: usize = 8 * 1024;

/// `Call-Direction` of the channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The channel came into FreeSWITCH (a phone called).
    Inbound,
    /// FreeSWITCH created it (originate).
    Outbound,
}

/// `Socket-Mode` of the `connect` reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketMode {
    /// `socket … async`: commands are answered at once.
    Async,
    /// Static mode (the socket app's argument was not quoted in originate):
    /// `linger` and `event` are refused, `sendmsg` blocks (trace 07).
    Static,
}

/// `Control` of the `connect` reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// `full`: the socket may run any command and API.
    Full,
    /// `single-channel`: only this channel's commands.
    SingleChannel,
}

/// The channel's data from the `connect` reply: every header FreeSWITCH
/// sent, percent-decoded.
///
/// The typed accessors read from the one stored [`Event`] instead of copying
/// values out, and [`ChannelData::variables_map`] builds its map on demand:
/// an idle leg keeps one copy of its variables, not two.
#[derive(Clone)]
pub struct ChannelData {
    event: Event,
}

impl fmt::Debug for ChannelData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelData")
            .field("uuid", &self.uuid())
            .field("caller", &self.caller_number())
            .field("destination", &self.destination())
            .field("direction", &self.direction())
            .field("socket_mode", &self.socket_mode())
            .field("control", &self.control())
            .finish_non_exhaustive()
    }
}

impl ChannelData {
    /// Parses the header block of a `connect` reply.
    pub fn from_connect_reply(frame: &Frame) -> Result<Self> {
        let event = Event::parse_plain(frame.head())
            .map_err(|e| Error::Handshake(format!("unusable channel data: {e}")))?;
        Self::from_event(event)
    }

    /// Wraps channel data already decoded; it must name its channel.
    pub fn from_event(event: Event) -> Result<Self> {
        let data = Self { event };
        if data.uuid().is_empty() {
            return Err(Error::Handshake("channel data without Unique-ID".into()));
        }
        Ok(data)
    }

    /// The channel's uuid (`Unique-ID`).
    pub fn uuid(&self) -> &str {
        self.event
            .header("Unique-ID")
            .or_else(|| self.event.header("Channel-Unique-ID"))
            .unwrap_or_default()
    }

    /// Any header of the channel data.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.event.header(name)
    }

    /// The calling number (`Caller-Caller-ID-Number`).
    pub fn caller_number(&self) -> Option<&str> {
        self.event.header("Caller-Caller-ID-Number")
    }

    /// The calling name (`Caller-Caller-ID-Name`).
    pub fn caller_name(&self) -> Option<&str> {
        self.event.header("Caller-Caller-ID-Name")
    }

    /// The dialled number (`Caller-Destination-Number`).
    pub fn destination(&self) -> Option<&str> {
        self.event.header("Caller-Destination-Number")
    }

    /// The callee's number as presented (`Caller-Callee-ID-Number`).
    pub fn callee_number(&self) -> Option<&str> {
        self.event.header("Caller-Callee-ID-Number")
    }

    /// The callee's name as presented (`Caller-Callee-ID-Name`).
    pub fn callee_name(&self) -> Option<&str> {
        self.event.header("Caller-Callee-ID-Name")
    }

    /// `Channel-Name`, e.g. `sofia/gateway/gw/1415…`.
    pub fn channel_name(&self) -> Option<&str> {
        self.event.header("Channel-Name")
    }

    /// `Call-Direction`.
    pub fn direction(&self) -> Option<Direction> {
        match self.event.header("Call-Direction")? {
            "inbound" => Some(Direction::Inbound),
            "outbound" => Some(Direction::Outbound),
            _ => None,
        }
    }

    /// `Socket-Mode`.
    pub fn socket_mode(&self) -> Option<SocketMode> {
        match self.event.header("Socket-Mode")? {
            "async" => Some(SocketMode::Async),
            "static" => Some(SocketMode::Static),
            _ => None,
        }
    }

    /// `Control`.
    pub fn control(&self) -> Option<Control> {
        match self.event.header("Control")? {
            "full" => Some(Control::Full),
            "single-channel" => Some(Control::SingleChannel),
            _ => None,
        }
    }

    /// A channel variable (`variable_<name>`).
    pub fn variable(&self, name: &str) -> Option<&str> {
        self.event.variable(name)
    }

    /// Every channel variable, in wire order, without the `variable_` prefix.
    pub fn variables(&self) -> impl Iterator<Item = (&str, &str)> {
        self.event
            .headers()
            .filter_map(|(n, v)| n.strip_prefix("variable_").map(|n| (n, v)))
    }

    /// Every channel variable as a map (built on each call).
    pub fn variables_map(&self) -> HashMap<&str, &str> {
        self.variables().collect()
    }

    /// The whole header set.
    pub fn event(&self) -> &Event {
        &self.event
    }
}

/// A completed application (its CHANNEL_EXECUTE_COMPLETE).
#[derive(Debug, Clone)]
pub struct ExecuteComplete {
    /// `Application`, e.g. `playback`.
    pub application: String,
    /// `Application-Response`, e.g. `FILE PLAYED` (absent for some apps).
    pub response: Option<String>,
    /// The whole event.
    pub event: Event,
}

impl ExecuteComplete {
    fn from_event(event: Event) -> Self {
        Self {
            application: event.header("Application").unwrap_or_default().to_owned(),
            response: event.header("Application-Response").map(str::to_owned),
            event,
        }
    }
}

/// What the leg's task tells the handles.
#[derive(Debug, Clone, Default)]
struct LegState {
    /// CHANNEL_ANSWER was seen.
    answered: bool,
    /// Hangup-Cause of CHANNEL_HANGUP / CHANNEL_HANGUP_COMPLETE.
    hangup_cause: Option<String>,
    /// The socket is closed; nothing more will happen.
    closed: bool,
}

/// State the handles and the task share (not the request sender: the task
/// notices that every handle is gone when its receiver closes).
struct LegShared {
    state: watch::Sender<LegState>,
    dropped: AtomicU64,
}

/// A request to the leg's task.
struct LegRequest {
    cmd: Command,
    reply: ReplyTx,
    /// For executes: the Event-UUID and where its completion goes.
    complete: Option<(String, oneshot::Sender<Result<Event>>)>,
}

struct CallInner {
    data: ChannelData,
    /// Boxed requests keep the channel's preallocated slots small.
    tx: mpsc::Sender<Box<LegRequest>>,
    shared: Arc<LegShared>,
    events: Mutex<Option<mpsc::Receiver<Event>>>,
    request_timeout: Duration,
}

/// The handle of one call leg. Cheap to clone; the leg's task ends when the
/// socket closes (and says `exit` when every handle is dropped).
#[derive(Clone)]
pub struct Call {
    inner: Arc<CallInner>,
}

impl fmt::Debug for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Call").field("uuid", &self.uuid()).finish()
    }
}

impl Call {
    /// The channel's uuid.
    pub fn uuid(&self) -> &str {
        self.inner.data.uuid()
    }

    /// The channel data of the `connect` reply.
    pub fn channel_data(&self) -> &ChannelData {
        &self.inner.data
    }

    async fn request(
        &self,
        cmd: Command,
        complete: Option<(String, oneshot::Sender<Result<Event>>)>,
    ) -> Result<Frame> {
        let (reply, rx) = oneshot::channel();
        let after = self.inner.request_timeout;
        let exchange = async {
            self.inner
                .tx
                .send(Box::new(LegRequest {
                    cmd,
                    reply,
                    complete,
                }))
                .await
                .map_err(|_| Error::Closed)?;
            rx.await.unwrap_or(Err(Error::ConnectionDropped))
        };
        tokio::time::timeout(after, exchange)
            .await
            .map_err(|_| Error::Timeout { after })?
    }

    /// Sends any command on the leg's socket and returns the reply frame.
    pub async fn send(&self, cmd: Command) -> Result<Frame> {
        self.request(cmd, None).await
    }

    /// Runs an application on the channel (`sendmsg` execute with a fresh
    /// `Event-UUID` and `event-lock`, so queued applications run one after
    /// the other) and waits for its CHANNEL_EXECUTE_COMPLETE. Fails with
    /// [`Error::Hangup`] when the channel hangs up first. The reply must
    /// come within the request timeout; the completion has no timeout of its
    /// own (an application may run for as long as the call lasts).
    pub async fn execute(&self, app: &str, arg: &str) -> Result<ExecuteComplete> {
        let event_uuid = uuid::Uuid::new_v4().to_string();
        let (tx, rx) = oneshot::channel();
        let cmd = Command::SendMsg(SendMsg {
            uuid: None,
            command: CallCommand::Execute(Execute {
                app: app.to_owned(),
                arg: (!arg.is_empty()).then(|| arg.to_owned()),
                event_lock: true,
                ..Default::default()
            }),
            event_uuid: Some(event_uuid.clone()),
        });
        link::check_ok(self.request(cmd, Some((event_uuid, tx))).await?)?;
        let event = rx.await.unwrap_or(Err(Error::ConnectionDropped))?;
        Ok(ExecuteComplete::from_event(event))
    }

    /// Answers the channel (the `answer` application).
    pub async fn answer(&self) -> Result<ExecuteComplete> {
        self.execute("answer", "").await
    }

    /// Plays a file or stream (`playback`); the completion's response is
    /// `FILE PLAYED` or FreeSWITCH's reason it was not.
    pub async fn playback(&self, media: &str) -> Result<ExecuteComplete> {
        self.execute("playback", media).await
    }

    /// Hangs the channel up with a cause (`sendmsg` hangup). Succeeds at
    /// once when the channel has already hung up. FreeSWITCH queues it like
    /// an execute: behind an application running with `event-lock` (every
    /// [`Call::execute`]) it waits until that application ends, and may
    /// never run (trace 10); [`crate::switch::app::kill_leg`] ends the
    /// channel at once.
    pub async fn hangup(&self, cause: &str) -> Result<()> {
        if self.hangup_cause().is_some() {
            return Ok(());
        }
        let cmd = Command::SendMsg(SendMsg {
            uuid: None,
            command: CallCommand::Hangup {
                cause: cause.to_owned(),
            },
            event_uuid: None,
        });
        link::check_ok(self.request(cmd, None).await?).map(drop)
    }

    /// `api <cmd>` over the leg's socket (needs `Control: full`).
    pub async fn api(&self, cmd: &str) -> Result<String> {
        let frame = link::check_ok(
            self.request(
                Command::Api {
                    command: cmd.to_owned(),
                },
                None,
            )
            .await?,
        )?;
        Ok(frame
            .body()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default())
    }

    /// The leg's event stream. It can be taken once; later calls get `None`.
    pub fn events(&self) -> Option<CallEvents> {
        let rx = self
            .inner
            .events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()?;
        Some(CallEvents {
            rx,
            shared: self.inner.shared.clone(),
        })
    }

    /// Whether CHANNEL_ANSWER has been seen.
    pub fn is_answered(&self) -> bool {
        self.inner.shared.state.borrow().answered
    }

    /// The Hangup-Cause once the channel has hung up.
    pub fn hangup_cause(&self) -> Option<String> {
        self.inner.shared.state.borrow().hangup_cause.clone()
    }

    /// Whether the leg's socket is closed.
    pub fn is_closed(&self) -> bool {
        self.inner.shared.state.borrow().closed
    }

    /// Waits for the hangup and returns its cause; fails with
    /// [`Error::ConnectionDropped`] if the socket closed without one.
    pub async fn wait_hangup(&self) -> Result<String> {
        let mut rx = self.inner.shared.state.subscribe();
        let state = rx
            .wait_for(|s| s.hangup_cause.is_some() || s.closed)
            .await
            .map_err(|_| Error::ConnectionDropped)?;
        state.hangup_cause.clone().ok_or(Error::ConnectionDropped)
    }

    /// Waits until the leg's socket is closed.
    pub async fn closed(&self) {
        let mut rx = self.inner.shared.state.subscribe();
        let _ = rx.wait_for(|s| s.closed).await;
    }

    /// Events dropped because [`Call::events`] was not read fast enough.
    pub fn dropped_events(&self) -> u64 {
        self.inner.shared.dropped.load(Ordering::Relaxed)
    }
}

/// The events of one leg, in order. Ends when the leg's socket closes.
#[derive(Debug)]
pub struct CallEvents {
    rx: mpsc::Receiver<Event>,
    shared: Arc<LegShared>,
}

impl fmt::Debug for LegShared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LegShared")
            .field("state", &*self.state.borrow())
            .finish()
    }
}

impl CallEvents {
    /// The next event.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// An event if one is queued.
    pub fn try_recv(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
    }

    /// Events dropped because this stream was full.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

impl Stream for CallEvents {
    type Item = Event;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.rx.poll_recv(cx)
    }
}

/// Sizes of a leg's queues.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LegLimits {
    pub(crate) command_queue: usize,
    pub(crate) event_queue: usize,
    pub(crate) request_timeout: Duration,
}

/// A reply slot in FIFO order.
struct Pending {
    /// `None` for the task's own commands (`myevents`, `linger`, `exit` …).
    reply: Option<ReplyTx>,
    /// The Event-UUID of an execute, to forget it if FreeSWITCH refuses.
    execute: Option<String>,
    /// What the command was, for logs about the task's own commands.
    what: &'static str,
}

/// The task that owns a leg's socket.
pub(crate) struct LegDriver {
    reader: Reader,
    writer: OwnedWriteHalf,
    rx: mpsc::Receiver<Box<LegRequest>>,
    events: mpsc::Sender<Event>,
    shared: Arc<LegShared>,
    uuid: Box<str>,
    pending: VecDeque<Pending>,
    /// Executes waiting for CHANNEL_EXECUTE_COMPLETE: usually zero to two,
    /// so a vector beats a map.
    executes: Vec<(String, oneshot::Sender<Result<Event>>)>,
    wbuf: BytesMut,
    drops: DropLog,
    /// CHANNEL_HANGUP_COMPLETE or the linger notice arrived.
    over: bool,
    /// `exit` was written; the socket closes after FreeSWITCH's `+OK bye`.
    exit_sent: bool,
    /// When we stop waiting for FreeSWITCH to close after `exit`.
    exit_deadline: Option<tokio::time::Instant>,
    /// Every handle is gone.
    handles_gone: bool,
}

/// Builds the handle and the task for a leg whose `connect` reply arrived.
/// `internal` names the commands already written after `connect` whose
/// replies are still due (`myevents`, `linger`, `event …`).
pub(crate) fn new_leg(
    reader: Reader,
    writer: OwnedWriteHalf,
    data: ChannelData,
    internal: &[&'static str],
    limits: LegLimits,
) -> (Call, LegDriver) {
    let (tx, rx) = mpsc::channel(limits.command_queue.max(1));
    let (events_tx, events_rx) = mpsc::channel(limits.event_queue.max(1));
    let shared = Arc::new(LegShared {
        state: watch::Sender::new(LegState::default()),
        dropped: AtomicU64::new(0),
    });
    let uuid: Box<str> = data.uuid().into();
    let call = Call {
        inner: Arc::new(CallInner {
            data,
            tx,
            shared: shared.clone(),
            events: Mutex::new(Some(events_rx)),
            request_timeout: limits.request_timeout,
        }),
    };
    let pending = internal
        .iter()
        .map(|&what| Pending {
            reply: None,
            execute: None,
            what,
        })
        .collect();
    let driver = LegDriver {
        reader,
        writer,
        rx,
        events: events_tx,
        shared,
        uuid,
        pending,
        executes: Vec::new(),
        wbuf: BytesMut::new(),
        drops: DropLog::new("call events"),
        over: false,
        exit_sent: false,
        exit_deadline: None,
        handles_gone: false,
    };
    (call, driver)
}

use crate::backoff::sleep_until;

impl LegDriver {
    /// Serves the leg until its socket closes.
    pub(crate) async fn run(mut self) {
        let error = loop {
            tokio::select! {
                biased;
                r = self.writer.write_buf(&mut self.wbuf), if !self.wbuf.is_empty() => {
                    if let Err(e) = r {
                        break Some(Error::from(e));
                    }
                }
                req = self.rx.recv(), if !self.handles_gone && self.wbuf.len() < WRITE_HIGH_WATER => {
                    match req {
                        Some(req) => self.enqueue(*req),
                        None => {
                            self.handles_gone = true;
                            self.send_exit();
                        }
                    }
                }
                frame = self.reader.next() => match frame {
                    Some(Ok(frame)) => {
                        self.on_frame(frame);
                        let buf = self.reader.read_buffer_mut();
                        if buf.is_empty() && buf.capacity() > IDLE_READ_BUFFER {
                            *buf = BytesMut::new();
                        }
                    }
                    Some(Err(e)) => break Some(Error::from(e)),
                    None => break None,
                },
                () = sleep_until(self.exit_deadline), if self.exit_deadline.is_some() => {
                    tracing::debug!(uuid = %self.uuid, "FreeSWITCH did not close after exit; closing");
                    break None;
                }
            }
        };
        if let Some(error) = &error {
            tracing::warn!(uuid = %self.uuid, %error, "closing the call's socket");
        }
        let _ = self.writer.shutdown().await;
        self.finish();
    }

    fn send_exit(&mut self) {
        if self.exit_sent {
            return;
        }
        if Command::Exit.encode(&mut self.wbuf).is_ok() {
            self.pending.push_back(Pending {
                reply: None,
                execute: None,
                what: "exit",
            });
        }
        self.exit_sent = true;
        self.exit_deadline = Some(tokio::time::Instant::now() + EXIT_GRACE);
    }

    fn hangup_error(&self) -> Error {
        match &self.shared.state.borrow().hangup_cause {
            Some(cause) => Error::Hangup {
                cause: cause.clone(),
            },
            None => Error::ConnectionDropped,
        }
    }

    fn enqueue(&mut self, req: LegRequest) {
        let LegRequest {
            cmd,
            reply,
            complete,
        } = req;
        if self.exit_sent {
            let _ = reply.send(Err(Error::Closed));
            return;
        }
        if complete.is_some() && self.over {
            let _ = reply.send(Err(self.hangup_error()));
            return;
        }
        if let Err(e) = cmd.encode(&mut self.wbuf) {
            let _ = reply.send(Err(e.into()));
            return;
        }
        let execute = complete.map(|(uuid, tx)| {
            self.executes.push((uuid.clone(), tx));
            uuid
        });
        self.pending.push_back(Pending {
            reply: Some(reply),
            execute,
            what: "request",
        });
    }

    fn on_frame(&mut self, frame: Frame) {
        match frame.content_type() {
            ContentType::CommandReply | ContentType::ApiResponse => self.on_reply(frame),
            ContentType::EventPlain | ContentType::EventJson | ContentType::EventXml => {
                match Event::from_frame(&frame) {
                    Ok(event) => self.on_event(event),
                    Err(error) => {
                        tracing::warn!(uuid = %self.uuid, %error, "dropping an event FreeSWITCH sent")
                    }
                }
            }
            ContentType::DisconnectNotice => {
                // Linger: the call is over and FreeSWITCH keeps the socket
                // until we say `exit`. Otherwise it closes by itself.
                self.call_over();
                if frame.header("Content-Disposition") == Some("linger") {
                    self.send_exit();
                }
            }
            _ => {}
        }
    }

    fn on_reply(&mut self, frame: Frame) {
        let Some(p) = self.pending.pop_front() else {
            tracing::warn!(uuid = %self.uuid, reply = %link::reply_summary(&frame), "reply without a request; ignored");
            return;
        };
        let ok = frame.is_ok();
        if !ok && let Some(uuid) = &p.execute {
            self.executes.retain(|(u, _)| u != uuid);
        }
        match p.reply {
            Some(tx) => {
                let _ = tx.send(Ok(frame));
            }
            None if !ok && p.what != "exit" => tracing::warn!(
                uuid = %self.uuid,
                command = p.what,
                reply = %link::reply_summary(&frame),
                "FreeSWITCH refused a command (a static socket? quote the '&socket(...)' app in originate)"
            ),
            None => {}
        }
    }

    fn on_event(&mut self, event: Event) {
        match event.name() {
            "CHANNEL_EXECUTE_COMPLETE" => {
                if let Some(app_uuid) = event.header("Application-UUID")
                    && let Some(i) = self.executes.iter().position(|(u, _)| u == app_uuid)
                {
                    let (_, tx) = self.executes.swap_remove(i);
                    let _ = tx.send(Ok(event.clone()));
                }
            }
            "CHANNEL_ANSWER" => self.shared.state.send_modify(|s| s.answered = true),
            "CHANNEL_HANGUP" | "CHANNEL_HANGUP_COMPLETE" => {
                if let Some(cause) = event.hangup_cause() {
                    self.shared.state.send_if_modified(|s| {
                        if s.hangup_cause.is_none() {
                            s.hangup_cause = Some(cause.to_owned());
                            true
                        } else {
                            false
                        }
                    });
                }
                if event.name() == "CHANNEL_HANGUP_COMPLETE" {
                    self.call_over();
                }
            }
            _ => {}
        }
        match self.events.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                let total = self.shared.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                self.drops.dropped(total);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// No CHANNEL_EXECUTE_COMPLETE can come any more.
    fn call_over(&mut self) {
        self.over = true;
        for (_, tx) in std::mem::take(&mut self.executes) {
            let _ = tx.send(Err(self.hangup_error()));
        }
    }

    fn finish(mut self) {
        for p in self.pending.drain(..) {
            if let Some(tx) = p.reply {
                let _ = tx.send(Err(Error::ConnectionDropped));
            }
        }
        for (_, tx) in std::mem::take(&mut self.executes) {
            let _ = tx.send(Err(self.hangup_error()));
        }
        self.shared.state.send_modify(|s| s.closed = true);
    }
}
