//! The inbound ESL client: Redswitch connects to FreeSWITCH's event socket.
//!
//! [`InboundClient::connect`] authenticates and returns a cloneable handle
//! plus an [`EventStream`]. One driver task owns the socket (the redis-rs
//! multiplexed-connection model):
//!
//! - requests (`api`, `bgapi`, `event`, `filter`, `sendmsg` …) arrive over a
//!   bounded channel with a oneshot reply slot; the driver encodes each into
//!   its write buffer and queues the slot. FreeSWITCH answers `command/reply`
//!   and `api/response` in command order, so replies are matched FIFO;
//! - `bgapi` sends a `Job-UUID` chosen here (uuid v4): the job is registered
//!   before the command is written, so its BACKGROUND_JOB event cannot race
//!   the reply. The client always subscribes to BACKGROUND_JOB for this (and
//!   adds `filter Event-Name BACKGROUND_JOB` next to user filters); those
//!   events reach the [`EventStream`] only if the user subscribed to them;
//! - the socket is read continuously. Events go to the stream's bounded
//!   queue with the **drop-newest** policy: when the consumer lags by
//!   [`InboundConfig::event_buffer`] events, further events are discarded,
//!   counted ([`EventStream::dropped`]) and a warning is logged at most once
//!   a second. Memory stays bounded and FreeSWITCH never sees a stalled
//!   listener (it disconnects one that lets ~500 events queue up).
//!   Frames are queued undecoded: decoding happens in the consumer's task
//!   ([`EventStream::recv`]), which spreads the work over two cores;
//! - when the link drops, every request in flight fails at once with
//!   [`Error::ConnectionDropped`], requests made while reconnecting fail
//!   with [`Error::NotConnected`] (both `is_connection_dropped()`), and the
//!   driver reconnects with exponential backoff and jitter, re-authenticates
//!   and replays the subscriptions (format, event names, nixed names,
//!   filters). Every request has a timeout.

use crate::esl::{CallCommand, Command, ContentType, Event, EventFormat, Frame, SendMsg};
use crate::switch::error::{Error, Result};
use crate::switch::link::{self, DropLog, Reader, ReplyTx, WRITE_HIGH_WATER};
use bytes::BytesMut;
use futures::{Stream, StreamExt};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{mpsc, oneshot};

/// The event the client needs for `bgapi` results.
const BACKGROUND_JOB: &str = "BACKGROUND_JOB";
/// How many requests may wait for the driver before callers are held back.
const REQUEST_QUEUE: usize = 256;

/// Exponential backoff with jitter between reconnect attempts.
#[derive(Debug, Clone)]
pub struct ReconnectPolicy {
    /// Delay before the first attempt.
    pub initial: Duration,
    /// Ceiling of the delay.
    pub max: Duration,
    /// Give up after this many failed attempts in a row (`None`: never).
    pub max_attempts: Option<u32>,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            max_attempts: None,
        }
    }
}

impl ReconnectPolicy {
    /// The delay before attempt `attempt` (0-based): `initial · 2^attempt`,
    /// capped at `max`, then a random point in its upper half so that many
    /// clients restarted together do not reconnect in lockstep.
    pub fn delay(&self, attempt: u32) -> Duration {
        crate::backoff::Backoff::new(self.initial, self.max).delay(attempt)
    }
}

/// How to reach and talk to FreeSWITCH.
#[derive(Clone)]
pub struct InboundConfig {
    /// `host:port` of the event socket (see [`crate::cli::esl_address`]).
    pub addr: String,
    /// The event-socket password (never logged: `Debug` hides it).
    pub password: String,
    /// Limit for the TCP connect and the `auth/request` greeting.
    pub connect_timeout: Duration,
    /// Limit for each command's reply.
    pub request_timeout: Duration,
    /// Limit for a `bgapi` job's BACKGROUND_JOB (originate can ring a while).
    pub job_timeout: Duration,
    /// Capacity of the event queue (events beyond it are dropped, newest first).
    pub event_buffer: usize,
    /// Backoff between reconnect attempts.
    pub reconnect: ReconnectPolicy,
}

impl fmt::Debug for InboundConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboundConfig")
            .field("addr", &self.addr)
            .field("password", &"<hidden>")
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("job_timeout", &self.job_timeout)
            .field("event_buffer", &self.event_buffer)
            .field("reconnect", &self.reconnect)
            .finish()
    }
}

impl InboundConfig {
    /// A configuration with default limits.
    pub fn new(addr: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            addr: addr.into(),
            password: password.into(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            job_timeout: Duration::from_secs(180),
            event_buffer: 2048,
            reconnect: ReconnectPolicy::default(),
        }
    }
}

/// State shared by the handles, the stream and the driver.
#[derive(Debug, Default)]
struct Shared {
    /// False while the driver is reconnecting.
    connected: AtomicBool,
    /// Events dropped because the stream was full.
    dropped: AtomicU64,
    /// Connections re-established after a loss.
    reconnects: AtomicU64,
}

/// A subscription command that succeeded and must be replayed after a
/// reconnect.
#[derive(Debug, Clone)]
enum SubChange {
    Event(EventFormat, Vec<String>),
    Nix(Vec<String>),
    NoEvents,
    Filter(String, String),
    FilterDelete(String, Option<String>),
}

/// What the connection is subscribed to, as FreeSWITCH acknowledged it.
#[derive(Debug, Clone, Default)]
struct SubState {
    format: EventFormat,
    events: Vec<String>,
    nixed: Vec<String>,
    filters: Vec<(String, String)>,
}

fn has(list: &[String], name: &str) -> bool {
    list.iter().any(|n| n.eq_ignore_ascii_case(name))
}

impl SubState {
    fn apply(&mut self, change: &SubChange) {
        match change {
            SubChange::Event(format, names) => {
                // `event json` after `event plain` switches every
                // subscription of the connection to JSON (trace 01).
                self.format = *format;
                for n in names {
                    if !has(&self.events, n) {
                        self.events.push(n.clone());
                    }
                    self.nixed.retain(|x| !x.eq_ignore_ascii_case(n));
                }
            }
            SubChange::Nix(names) => {
                let all = has(&self.events, "ALL");
                for n in names {
                    self.events.retain(|x| !x.eq_ignore_ascii_case(n));
                    if all && !has(&self.nixed, n) {
                        self.nixed.push(n.clone());
                    }
                }
            }
            SubChange::NoEvents => {
                self.events.clear();
                self.nixed.clear();
            }
            SubChange::Filter(h, v) => {
                if !self.filters.iter().any(|(a, b)| a == h && b == v) {
                    self.filters.push((h.clone(), v.clone()));
                }
            }
            SubChange::FilterDelete(h, v) => match v {
                None if h.eq_ignore_ascii_case("all") => self.filters.clear(),
                None => self.filters.retain(|(a, _)| a != h),
                Some(v) => self.filters.retain(|(a, b)| !(a == h && b == v)),
            },
        }
    }

    /// Whether the user (not just the client) asked for BACKGROUND_JOB.
    fn user_wants_bg(&self) -> bool {
        has(&self.events, BACKGROUND_JOB)
            || (has(&self.events, "ALL") && !has(&self.nixed, BACKGROUND_JOB))
    }

    /// The commands that rebuild this state on a fresh connection.
    fn replay(&self) -> Vec<Command> {
        let mut events = vec![BACKGROUND_JOB.to_owned()];
        events.extend(
            self.events
                .iter()
                .filter(|n| !n.eq_ignore_ascii_case(BACKGROUND_JOB))
                .cloned(),
        );
        let mut out = vec![Command::Event {
            format: self.format,
            events,
        }];
        let nixed: Vec<String> = self
            .nixed
            .iter()
            .filter(|n| !n.eq_ignore_ascii_case(BACKGROUND_JOB))
            .cloned()
            .collect();
        if !nixed.is_empty() {
            out.push(Command::NixEvent { events: nixed });
        }
        if !self.filters.is_empty() {
            out.push(bg_filter());
            out.extend(self.filters.iter().map(|(h, v)| Command::Filter {
                header: h.clone(),
                value: v.clone(),
            }));
        }
        out
    }
}

/// The filter that keeps `bgapi` results flowing next to user filters
/// (FreeSWITCH passes an event when any filter matches it).
fn bg_filter() -> Command {
    Command::Filter {
        header: "Event-Name".into(),
        value: BACKGROUND_JOB.into(),
    }
}

/// What the driver does besides writing the command.
enum Track {
    None,
    Sub(SubChange),
    Job(String, oneshot::Sender<Result<Event>>),
    Exit,
}

impl Track {
    fn of(cmd: &Command) -> Self {
        match cmd {
            Command::Event { format, events } => {
                Self::Sub(SubChange::Event(*format, events.clone()))
            }
            Command::NixEvent { events } => Self::Sub(SubChange::Nix(events.clone())),
            Command::NoEvents => Self::Sub(SubChange::NoEvents),
            Command::Filter { header, value } => {
                Self::Sub(SubChange::Filter(header.clone(), value.clone()))
            }
            Command::FilterDelete { header, value } => {
                Self::Sub(SubChange::FilterDelete(header.clone(), value.clone()))
            }
            Command::Exit => Self::Exit,
            _ => Self::None,
        }
    }
}

/// One request to the driver.
struct Request {
    cmd: Command,
    reply: ReplyTx,
    track: Track,
}

/// What to do when a queued reply arrives.
enum After {
    Nothing,
    Sub(SubChange),
    Job(String),
}

/// A reply slot in FIFO order; `reply` is `None` for the client's own
/// commands.
struct Pending {
    reply: Option<ReplyTx>,
    after: After,
}

/// The result of a `bgapi` job: its BACKGROUND_JOB event.
#[derive(Debug, Clone)]
pub struct BgJobResult {
    /// The Job-UUID the client chose.
    pub job_uuid: String,
    /// The BACKGROUND_JOB event; its body is the API's output.
    pub event: Event,
}

impl BgJobResult {
    /// The API output, e.g. `+OK <uuid>\n` or `-ERR USER_BUSY\n`.
    pub fn body(&self) -> &str {
        self.event.body().unwrap_or_default()
    }

    /// False when the output starts with `-ERR`.
    pub fn is_ok(&self) -> bool {
        !self.body().starts_with("-ERR")
    }

    /// The output without its `+OK `/`-ERR ` prefix and trailing newline:
    /// `Ok("<uuid>")` for a placed call, `Err("USER_BUSY")` for a refused one.
    pub fn result(&self) -> std::result::Result<&str, &str> {
        let body = self.body();
        match body.strip_prefix("-ERR") {
            Some(rest) => Err(rest.trim()),
            None => Ok(body.strip_prefix("+OK").unwrap_or(body).trim()),
        }
    }
}

/// A cloneable handle to the inbound connection. The driver task runs until
/// every handle is dropped, [`InboundClient::close`] is called, or
/// reconnecting gives up ([`ReconnectPolicy::max_attempts`]).
#[derive(Clone)]
pub struct InboundClient {
    tx: mpsc::Sender<Request>,
    shared: Arc<Shared>,
    cfg: Arc<InboundConfig>,
}

impl fmt::Debug for InboundClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboundClient")
            .field("addr", &self.cfg.addr)
            .field("connected", &self.is_connected())
            .finish()
    }
}

impl InboundClient {
    /// Connects and authenticates. Fails with [`Error::Unreachable`] when
    /// nothing listens, [`Error::AuthFailed`] for a wrong password; later
    /// outages are handled by reconnecting.
    pub async fn connect(cfg: InboundConfig) -> Result<(Self, EventStream)> {
        let cfg = Arc::new(cfg);
        let shared = Arc::new(Shared::default());
        let (events_tx, events_rx) = mpsc::channel(cfg.event_buffer.max(1));
        let mut sink = EventSink {
            tx: events_tx,
            shared: shared.clone(),
            drops: DropLog::new("inbound events"),
        };
        let subs = SubState::default();
        let (reader, writer) = open(&cfg, &subs, &mut sink).await?;
        shared.connected.store(true, Ordering::Release);
        let (tx, rx) = mpsc::channel(REQUEST_QUEUE);
        let driver = Driver {
            cfg: cfg.clone(),
            rx,
            sink,
            subs,
            pending: VecDeque::new(),
            jobs: HashMap::new(),
            jobs_pruned_at: 0,
            bg_filter: false,
            closing: false,
            wbuf: BytesMut::with_capacity(1024),
            bg_finder: memchr::memmem::Finder::new(BACKGROUND_JOB.as_bytes()),
        };
        tokio::spawn(driver.run(reader, writer));
        Ok((
            Self {
                tx,
                shared: shared.clone(),
                cfg,
            },
            EventStream {
                rx: events_rx,
                shared,
            },
        ))
    }

    /// The configuration this client runs with.
    pub fn config(&self) -> &InboundConfig {
        &self.cfg
    }

    /// False while the client is reconnecting.
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::Acquire)
    }

    /// How many times the connection was re-established after a loss.
    pub fn reconnects(&self) -> u64 {
        self.shared.reconnects.load(Ordering::Relaxed)
    }

    /// Events dropped so far because the [`EventStream`] was full.
    pub fn dropped_events(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    async fn request(&self, cmd: Command, track: Track, after: Duration) -> Result<Frame> {
        let (reply, rx) = oneshot::channel();
        let exchange = async {
            self.tx
                .send(Request { cmd, reply, track })
                .await
                .map_err(|_| Error::Closed)?;
            match rx.await {
                Ok(r) => r,
                Err(_) => Err(Error::ConnectionDropped),
            }
        };
        tokio::time::timeout(after, exchange)
            .await
            .map_err(|_| Error::Timeout { after })?
    }

    /// Sends any command and returns FreeSWITCH's reply frame as it is
    /// (`-ERR` replies included). Subscription commands sent this way are
    /// remembered for reconnects like the dedicated methods.
    pub async fn send(&self, cmd: Command) -> Result<Frame> {
        let track = Track::of(&cmd);
        self.request(cmd, track, self.cfg.request_timeout).await
    }

    async fn send_ok(&self, cmd: Command) -> Result<Frame> {
        link::check_ok(self.send(cmd).await?)
    }

    /// `api <cmd>`: the API's output. An output starting with `-ERR` is
    /// [`Error::CommandFailed`].
    pub async fn api(&self, cmd: &str) -> Result<String> {
        let frame = self
            .send_ok(Command::Api {
                command: cmd.into(),
            })
            .await?;
        Ok(frame
            .body()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default())
    }

    /// `bgapi <cmd>` with a client-chosen Job-UUID; resolves with the job's
    /// BACKGROUND_JOB event (within [`InboundConfig::job_timeout`]). A job
    /// that fails (`-ERR USER_BUSY`) is still `Ok`: see
    /// [`BgJobResult::result`].
    pub async fn bgapi(&self, cmd: &str) -> Result<BgJobResult> {
        let job_uuid = uuid::Uuid::new_v4().to_string();
        let (job_tx, job_rx) = oneshot::channel();
        let cmd = Command::BgApi {
            command: cmd.into(),
            job_uuid: Some(job_uuid.clone()),
        };
        let track = Track::Job(job_uuid.clone(), job_tx);
        link::check_ok(self.request(cmd, track, self.cfg.request_timeout).await?)?;
        let after = self.cfg.job_timeout;
        let event = match tokio::time::timeout(after, job_rx).await {
            Err(_) => return Err(Error::Timeout { after }),
            Ok(Err(_)) => return Err(Error::ConnectionDropped),
            Ok(Ok(r)) => r?,
        };
        Ok(BgJobResult { job_uuid, event })
    }

    /// `event <format> <names…>` (`ALL` for everything). Note that
    /// FreeSWITCH switches every subscription of the connection to the
    /// latest format.
    pub async fn subscribe<S: Into<String>>(
        &self,
        format: EventFormat,
        events: impl IntoIterator<Item = S>,
    ) -> Result<()> {
        let events = events.into_iter().map(Into::into).collect();
        self.send_ok(Command::Event { format, events })
            .await
            .map(drop)
    }

    /// `filter <header> <value>`: only events matching some filter pass.
    pub async fn filter(&self, header: &str, value: &str) -> Result<()> {
        self.send_ok(Command::Filter {
            header: header.into(),
            value: value.into(),
        })
        .await
        .map(drop)
    }

    /// `filter delete <header> [<value>]` (`all` deletes every filter).
    pub async fn filter_delete(&self, header: &str, value: Option<&str>) -> Result<()> {
        self.send_ok(Command::FilterDelete {
            header: header.into(),
            value: value.map(Into::into),
        })
        .await
        .map(drop)
    }

    /// `nixevent <names…>`: stop receiving these events.
    pub async fn nixevent<S: Into<String>>(
        &self,
        events: impl IntoIterator<Item = S>,
    ) -> Result<()> {
        let events = events.into_iter().map(Into::into).collect();
        self.send_ok(Command::NixEvent { events }).await.map(drop)
    }

    /// `noevents`: stop every subscription (the client keeps its own
    /// BACKGROUND_JOB subscription for `bgapi`).
    pub async fn noevents(&self) -> Result<()> {
        self.send_ok(Command::NoEvents).await.map(drop)
    }

    /// `sendmsg <uuid>`: run an application on, or hang up, any channel.
    pub async fn sendmsg(&self, uuid: &str, command: CallCommand) -> Result<()> {
        self.send_ok(Command::SendMsg(SendMsg {
            uuid: Some(uuid.into()),
            command,
            event_uuid: None,
        }))
        .await
        .map(drop)
    }

    /// Says `exit` and stops the driver (no reconnect); the event stream
    /// ends once FreeSWITCH closes the socket.
    pub async fn close(&self) -> Result<()> {
        self.send_ok(Command::Exit).await.map(drop)
    }
}

/// The client's events, in order, bounded (see the module docs for the drop
/// policy). Ends when the driver stops.
#[derive(Debug)]
pub struct EventStream {
    rx: mpsc::Receiver<Frame>,
    shared: Arc<Shared>,
}

impl EventStream {
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
    pub fn try_recv_frame(&mut self) -> std::result::Result<Frame, mpsc::error::TryRecvError> {
        self.rx.try_recv()
    }

    /// Events dropped so far because this stream was full.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Events queued and not yet received.
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// The queue's capacity ([`InboundConfig::event_buffer`]).
    pub fn capacity(&self) -> usize {
        self.rx.max_capacity()
    }
}

/// Decodes an event frame; an unusable one is logged and yields `None`.
pub fn decode(frame: &Frame) -> Option<Event> {
    match Event::from_frame(frame) {
        Ok(event) => Some(event),
        Err(error) => {
            tracing::warn!(%error, "dropping an event FreeSWITCH sent");
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

/// The producer side of the event queue, with its drop policy.
struct EventSink {
    tx: mpsc::Sender<Frame>,
    shared: Arc<Shared>,
    drops: DropLog,
}

impl EventSink {
    fn push(&mut self, frame: Frame) {
        match self.tx.try_send(frame) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                let total = self.shared.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                self.drops.dropped(total);
            }
            // Nobody listens any more: events are simply discarded.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

async fn write_command(wr: &mut OwnedWriteHalf, cmd: &Command) -> Result<()> {
    let mut buf = BytesMut::with_capacity(128);
    cmd.encode(&mut buf)?;
    wr.write_all(&buf).await?;
    Ok(())
}

/// Reads until a reply, passing events on; used during the handshake.
async fn read_reply(rd: &mut Reader, sink: &mut EventSink, after: Duration) -> Result<Frame> {
    let wait = async {
        loop {
            match rd.next().await {
                None => return Err(Error::ConnectionDropped),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(f)) => match f.content_type() {
                    ContentType::CommandReply | ContentType::ApiResponse => return Ok(f),
                    ct if ct.is_event() => sink.push(f),
                    _ => {}
                },
            }
        }
    };
    tokio::time::timeout(after, wait)
        .await
        .map_err(|_| Error::Timeout { after })?
}

/// Connects, authenticates and replays the subscriptions.
async fn open(
    cfg: &InboundConfig,
    subs: &SubState,
    sink: &mut EventSink,
) -> Result<(Reader, OwnedWriteHalf)> {
    let addr = &cfg.addr;
    let after = cfg.connect_timeout;
    let timed_out = || Error::ConnectTimeout {
        addr: addr.clone(),
        after,
    };
    let stream = tokio::time::timeout(after, TcpStream::connect(addr.as_str()))
        .await
        .map_err(|_| timed_out())?
        .map_err(|source| Error::Unreachable {
            addr: addr.clone(),
            source,
        })?;
    let (mut rd, mut wr) = link::split(stream, 8 * 1024)?;
    let refused = |reason: String| Error::Refused {
        addr: addr.clone(),
        reason,
    };
    let greeting = tokio::time::timeout(after, rd.next())
        .await
        .map_err(|_| timed_out())?;
    match greeting {
        None => {
            return Err(refused(
                "it closed the connection without a greeting".into(),
            ));
        }
        Some(Err(e)) => return Err(refused(format!("it does not speak ESL ({e})"))),
        Some(Ok(f)) => match f.content_type() {
            ContentType::AuthRequest => {}
            ContentType::RudeRejection => {
                let why = f
                    .body()
                    .map(|b| String::from_utf8_lossy(b).trim().to_owned())
                    .unwrap_or_default();
                return Err(refused(format!("access denied by its ACL: {why}")));
            }
            other => return Err(refused(format!("unexpected greeting {other:?}"))),
        },
    }
    write_command(
        &mut wr,
        &Command::Auth {
            password: cfg.password.clone(),
        },
    )
    .await?;
    let reply = read_reply(&mut rd, sink, cfg.request_timeout).await?;
    if !reply.is_ok() {
        return Err(Error::AuthFailed { addr: addr.clone() });
    }
    for cmd in subs.replay() {
        write_command(&mut wr, &cmd).await?;
        let reply = read_reply(&mut rd, sink, cfg.request_timeout).await?;
        if !reply.is_ok() {
            tracing::warn!(
                command = ?cmd,
                reply = %link::reply_summary(&reply),
                "FreeSWITCH refused a subscription"
            );
        }
    }
    Ok((rd, wr))
}

/// Why a connection ended.
enum Stop {
    /// Every handle is gone, or `exit` was asked for: no reconnect.
    Done,
    /// The link failed: reconnect.
    Dropped(Error),
}

/// The task that owns the socket.
struct Driver {
    cfg: Arc<InboundConfig>,
    rx: mpsc::Receiver<Request>,
    sink: EventSink,
    subs: SubState,
    pending: VecDeque<Pending>,
    jobs: HashMap<String, oneshot::Sender<Result<Event>>>,
    /// Job count after the last sweep of timed-out jobs.
    jobs_pruned_at: usize,
    /// Whether `filter Event-Name BACKGROUND_JOB` is installed.
    bg_filter: bool,
    /// `exit` was sent: the next close is the end.
    closing: bool,
    wbuf: BytesMut,
    bg_finder: memchr::memmem::Finder<'static>,
}

impl Driver {
    async fn run(mut self, mut reader: Reader, mut writer: OwnedWriteHalf) {
        loop {
            let stop = self.serve(&mut reader, &mut writer).await;
            self.sink.shared.connected.store(false, Ordering::Release);
            self.fail_in_flight();
            match stop {
                Stop::Done => return,
                Stop::Dropped(error) if !self.closing => {
                    tracing::warn!(addr = %self.cfg.addr, %error, "lost the FreeSWITCH connection; reconnecting");
                }
                Stop::Dropped(_) => return,
            }
            drop((reader, writer));
            match self.reconnect().await {
                Some((r, w)) => (reader, writer) = (r, w),
                None => return,
            }
            self.sink.shared.connected.store(true, Ordering::Release);
            self.sink.shared.reconnects.fetch_add(1, Ordering::Relaxed);
            tracing::info!(addr = %self.cfg.addr, "reconnected to FreeSWITCH");
        }
    }

    async fn serve(&mut self, reader: &mut Reader, writer: &mut OwnedWriteHalf) -> Stop {
        loop {
            tokio::select! {
                biased;
                r = writer.write_buf(&mut self.wbuf), if !self.wbuf.is_empty() => {
                    if let Err(e) = r {
                        return Stop::Dropped(e.into());
                    }
                }
                req = self.rx.recv(), if self.wbuf.len() < WRITE_HIGH_WATER && !self.closing => {
                    match req {
                        Some(req) => self.enqueue(req),
                        None => return Stop::Done,
                    }
                }
                frame = reader.next() => match frame {
                    Some(Ok(frame)) => self.on_frame(frame),
                    Some(Err(e)) => return Stop::Dropped(e.into()),
                    None => return Stop::Dropped(Error::ConnectionDropped),
                },
            }
        }
    }

    /// Queues a command the client sends for itself.
    fn internal(&mut self, cmd: Command, after: After) {
        if cmd.encode(&mut self.wbuf).is_ok() {
            self.pending.push_back(Pending { reply: None, after });
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
            self.internal(bg_filter(), After::Nothing);
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
        if let Err(e) = cmd.encode(&mut self.wbuf) {
            let _ = reply.send(Err(e.into()));
            return;
        }
        let after = match track {
            Track::None => After::Nothing,
            Track::Sub(change) => After::Sub(change),
            Track::Exit => {
                self.closing = true;
                After::Nothing
            }
            Track::Job(uuid, tx) => {
                self.insert_job(uuid.clone(), tx);
                After::Job(uuid)
            }
        };
        self.pending.push_back(Pending {
            reply: Some(reply),
            after,
        });
        if noevents {
            let again = Command::Event {
                format: self.subs.format,
                events: vec![BACKGROUND_JOB.into()],
            };
            self.internal(again, After::Nothing);
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
        let Some(pending) = self.pending.pop_front() else {
            tracing::warn!(reply = %link::reply_summary(&frame), "reply without a request; ignored");
            return;
        };
        let ok = frame.is_ok();
        match pending.after {
            After::Nothing => {}
            After::Sub(change) if ok => {
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
                    self.internal(
                        Command::FilterDelete {
                            header: "Event-Name".into(),
                            value: Some(BACKGROUND_JOB.into()),
                        },
                        After::Nothing,
                    );
                }
            }
            After::Sub(_) => {}
            After::Job(uuid) => {
                if !ok {
                    self.jobs.remove(&uuid);
                }
            }
        }
        match pending.reply {
            Some(tx) => {
                let _ = tx.send(Ok(frame));
            }
            None if !ok => {
                tracing::warn!(reply = %link::reply_summary(&frame), "FreeSWITCH refused a command the client sent for itself");
            }
            None => {}
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
        for p in self.pending.drain(..) {
            if let Some(tx) = p.reply {
                let _ = tx.send(Err(Error::ConnectionDropped));
            }
        }
        for (_, tx) in self.jobs.drain() {
            let _ = tx.send(Err(Error::ConnectionDropped));
        }
        self.jobs_pruned_at = 0;
        self.wbuf.clear();
    }

    /// Fails a request at once: there is no connection to send it on.
    fn refuse(req: Request) {
        let _ = req.reply.send(Err(Error::NotConnected));
    }

    async fn reconnect(&mut self) -> Option<(Reader, OwnedWriteHalf)> {
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
                        Some(req) => Self::refuse(req),
                        None => return None,
                    },
                }
            }
            match open(&self.cfg, &self.subs, &mut self.sink).await {
                Ok(link) => return Some(link),
                Err(error) => {
                    attempt = attempt.saturating_add(1);
                    if self
                        .cfg
                        .reconnect
                        .max_attempts
                        .is_some_and(|max| attempt >= max)
                    {
                        tracing::error!(addr = %self.cfg.addr, %error, attempt, "giving up reconnecting to FreeSWITCH");
                        return None;
                    }
                    tracing::warn!(addr = %self.cfg.addr, %error, attempt, "reconnect to FreeSWITCH failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap_with_jitter() {
        let p = ReconnectPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
            max_attempts: None,
        };
        for attempt in 0..30 {
            let d = p.delay(attempt);
            let base = (Duration::from_millis(100) * 2u32.pow(attempt.min(20))).min(p.max);
            assert!(d >= base / 2 && d <= base, "attempt {attempt}: {d:?}");
        }
    }

    #[test]
    fn replay_rebuilds_subscriptions_with_bgapi_support() {
        let mut s = SubState::default();
        s.apply(&SubChange::Event(EventFormat::Plain, vec!["ALL".into()]));
        s.apply(&SubChange::Event(EventFormat::Json, vec!["DTMF".into()]));
        s.apply(&SubChange::Nix(vec!["HEARTBEAT".into()]));
        s.apply(&SubChange::Filter("Unique-ID".into(), "u1".into()));
        let cmds = s.replay();
        assert_eq!(
            cmds[0],
            Command::Event {
                format: EventFormat::Json,
                events: vec!["BACKGROUND_JOB".into(), "ALL".into(), "DTMF".into()]
            }
        );
        assert_eq!(
            cmds[1],
            Command::NixEvent {
                events: vec!["HEARTBEAT".into()]
            }
        );
        assert_eq!(cmds[2], bg_filter());
        assert_eq!(
            cmds[3],
            Command::Filter {
                header: "Unique-ID".into(),
                value: "u1".into()
            }
        );
        assert!(s.user_wants_bg());
        s.apply(&SubChange::Nix(vec!["BACKGROUND_JOB".into()]));
        assert!(!s.user_wants_bg());
        s.apply(&SubChange::FilterDelete("all".into(), None));
        assert!(s.filters.is_empty());
    }

    #[test]
    fn bg_job_result_splits_ok_and_err() {
        let mut e = Event::new("BACKGROUND_JOB");
        e.set_body("+OK 00e6edae\n");
        let r = BgJobResult {
            job_uuid: "j".into(),
            event: e.clone(),
        };
        assert_eq!(r.result(), Ok("00e6edae"));
        e.set_body("-ERR USER_BUSY\n");
        let r = BgJobResult {
            job_uuid: "j".into(),
            event: e,
        };
        assert_eq!(r.result(), Err("USER_BUSY"));
        assert!(!r.is_ok());
    }
}
