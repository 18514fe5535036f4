//! One event-socket connection, inbound (a client logged in on port 8021)
//! or outbound (the `socket` application connected out): mod_event_socket's
//! `parse_command` and listener loop, reply text for reply text.
//!
//! Each connection is one task. Events reach it through a bounded queue
//! filled by [`crate::sim::Core::fire`]; a connection that stops reading
//! loses events once the queue is full and is killed after `max_missed`
//! losses, as FreeSWITCH does, so a slow client never stalls the switch.

use crate::esl::{Event, EventFormat};
use crate::sim::actor::{ChanMsg, ChannelHandle, PrivateMsg};
use crate::sim::event::{EVENT_ALL, EVENT_CUSTOM, EVENT_NAMES, FiredEvent, event_id, origin};
use crate::sim::packet::{Packet, PacketDecoder, PacketError};
use crate::sim::{Core, api, lock};
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

/// The goodbye body FreeSWITCH sends with its last disconnect notice.
pub(crate) const GOODBYE: &str =
    "Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n";
/// The body of the notice sent when the switch shuts down.
const SHUTDOWN_MSG: &str = "The system is being shut down.\n";

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
    fn frame(&self) -> Bytes {
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
    enabled: bool,
    mask: [u64; 2],
    custom: HashSet<String>,
    filters: Vec<(String, String)>,
    /// LFLAG_MYEVENTS: only events whose Unique-ID is this uuid (any
    /// Unique-ID when the uuid is empty).
    myevents: Option<String>,
    log_level: Option<u8>,
}

impl Subscription {
    fn has(&self, id: usize) -> bool {
        self.mask[id / 64] & (1 << (id % 64)) != 0
    }

    fn set(&mut self, id: usize, on: bool) {
        if on {
            self.mask[id / 64] |= 1 << (id % 64);
        } else {
            self.mask[id / 64] &= !(1 << (id % 64));
        }
    }

    /// mod_event_socket's `event_handler` test.
    fn wants(&self, ev: &FiredEvent) -> bool {
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
    sub: Mutex<Subscription>,
    tx: mpsc::Sender<Arc<FiredEvent>>,
    log_tx: mpsc::Sender<Arc<LogLine>>,
    lost: AtomicU32,
    lost_logs: AtomicU32,
    /// Cancelled to kill the connection (too many lost events).
    kill: CancellationToken,
    /// Set (and notified) when the controlled channel goes down.
    down: AtomicBool,
    down_notify: Notify,
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

/// How a connection was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Inbound,
    Outbound { asynchronous: bool, full: bool },
}

/// Why a connection task ended, for the log.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
    #[error("unreadable input: {0}")]
    Input(#[from] PacketError),
    /// Killed for leaving too many events unread (FreeSWITCH's
    /// `kill_listener`).
    #[error("killed: the client left more than max_missed events unread")]
    Killed,
    /// The simulator shut down while a write was blocked.
    #[error("simulator shutting down")]
    ShuttingDown,
}

/// One connection's state (mod_event_socket's `listener_t`).
pub(crate) struct Session {
    core: Arc<Core>,
    entry: Arc<ListenerEntry>,
    events: mpsc::Receiver<Arc<FiredEvent>>,
    logs: mpsc::Receiver<Arc<LogLine>>,
    kind: Kind,
    authed: bool,
    running: bool,
    format: EventFormat,
    log_on: bool,
    /// The controlled channel (outbound, or inbound after `myevents <uuid>`).
    channel: Option<ChannelHandle>,
    asynchronous: bool,
    linger: Option<i64>,
    handle_disco: bool,
    linger_deadline: Option<Instant>,
    resume: bool,
    /// Static outbound sockets run applications in the channel thread:
    /// the simulated channel is told so (no DTMF, no park).
    out: Vec<u8>,
}

/// What a command does to the connection after its reply.
enum After {
    Continue,
    /// `exit`, a wrong password: disconnect notice, close.
    Stop,
}

impl Session {
    pub(crate) fn new(core: Arc<Core>, kind: Kind, channel: Option<ChannelHandle>) -> Self {
        let (tx, events) = mpsc::channel(core.cfg.event_queue_len.max(1));
        let (log_tx, logs) = mpsc::channel(1024);
        let entry = Arc::new(ListenerEntry {
            id: core.next_listener_id(),
            sub: Mutex::new(Subscription::default()),
            tx,
            log_tx,
            lost: AtomicU32::new(0),
            lost_logs: AtomicU32::new(0),
            kill: CancellationToken::new(),
            down: AtomicBool::new(false),
            down_notify: Notify::new(),
        });
        let (authed, asynchronous) = match kind {
            Kind::Inbound => (false, false),
            Kind::Outbound { asynchronous, .. } => (true, asynchronous),
        };
        Self {
            core,
            entry,
            events,
            logs,
            kind,
            authed,
            running: true,
            format: EventFormat::Plain,
            log_on: false,
            channel,
            asynchronous,
            linger: None,
            handle_disco: false,
            linger_deadline: None,
            resume: false,
            out: Vec::with_capacity(4096),
        }
    }

    pub(crate) fn entry(&self) -> Arc<ListenerEntry> {
        self.entry.clone()
    }

    fn full(&self) -> bool {
        match self.kind {
            Kind::Inbound => true,
            Kind::Outbound { full, .. } => full,
        }
    }

    fn outbound(&self) -> bool {
        matches!(self.kind, Kind::Outbound { .. })
    }

    /// Runs the connection until it closes. `greet` sends the inbound
    /// `auth/request`.
    pub(crate) async fn run<S>(mut self, stream: S) -> Result<(), SessionError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        self.core.add_listener(self.entry.clone());
        let res = self.serve(stream).await;
        self.core.remove_listener(self.entry.id);
        self.finish().await;
        res
    }

    async fn serve<S>(&mut self, stream: S) -> Result<(), SessionError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let (rd, wr) = tokio::io::split(stream);
        let decoder =
            PacketDecoder::new(self.core.cfg.max_packet_head, self.core.cfg.max_packet_body);
        let mut frames = FramedRead::new(rd, decoder);
        let shutdown = self.core.shutdown.clone();
        let kill = self.entry.kill.clone();
        let mut wr = Writer {
            wr,
            kill: kill.clone(),
            shutdown: shutdown.clone(),
        };
        if matches!(self.kind, Kind::Inbound) {
            wr.write(b"Content-Type: auth/request\n\n").await?;
        }
        while self.running {
            let linger_at = self.linger_deadline;
            tokio::select! {
                biased;
                () = shutdown.cancelled() => {
                    self.say_shutdown(&mut wr).await;
                    return Ok(());
                }
                () = kill.cancelled() => {
                    // FreeSWITCH's kill_listener: no notice, just close.
                    return Err(SessionError::Killed);
                }
                () = self.entry.down_notify.notified(), if !self.handle_disco => {
                    if self.entry.down.load(Ordering::Acquire) {
                        if matches!(self.kind, Kind::Outbound { asynchronous: false, .. }) {
                            // A static socket stops reading at once: events
                            // still queued are never sent (trace 07).
                            while self.events.try_recv().is_ok() {}
                        } else {
                            self.flush_events();
                        }
                        self.on_channel_down();
                        wr.write(&self.out).await?;
                        self.out.clear();
                    }
                }
                () = sleep_until_opt(linger_at) => {
                    tracing::debug!("linger timeout, closing socket");
                    self.running = false;
                }
                frame = frames.next() => {
                    let mut frame = Some(frame);
                    let mut handled = 0;
                    // Commands a client pipelined are answered in one write
                    // (a reply per syscall halves the rate of a `sendevent`
                    // flood); the batch ends with the buffered input.
                    while let Some(next) = frame.take() {
                        let packet = match next {
                            Some(Ok(f)) => f,
                            Some(Err(e)) => {
                                // Unreadable input (cut off mid-packet, a
                                // body over the limit): read_packet fails
                                // and the listener says goodbye and closes.
                                tracing::info!(error = %e, "closing event socket connection on bad input");
                                self.flush_events();
                                self.out.extend_from_slice(&disconnect_notice(self.session_uuid(), GOODBYE));
                                let _ = wr.write(&self.out).await;
                                wr.close().await;
                                return Err(e.into());
                            }
                            None => {
                                if !self.out.is_empty() {
                                    let _ = wr.write(&self.out).await;
                                }
                                return Ok(());
                            }
                        };
                        // A command may wait (a blocking `api originate`, a
                        // static socket's `sendmsg`): shutting down must not.
                        let after = tokio::select! {
                            a = self.command(&packet) => Some(a),
                            () = shutdown.cancelled() => None,
                        };
                        match after {
                            None => {
                                self.say_shutdown(&mut wr).await;
                                return Ok(());
                            }
                            Some(After::Stop) => self.running = false,
                            Some(After::Continue) => {}
                        }
                        handled += 1;
                        if self.running && handled < 256 && self.out.len() < 256 * 1024 {
                            frame = frames.next().now_or_never();
                        }
                    }
                    if !self.out.is_empty() {
                        wr.write(&self.out).await?;
                        self.out.clear();
                    }
                }
                Some(ev) = self.events.recv() => {
                    // One turn of read_packet's loop: one queued log line,
                    // then every queued event (trace 08's order).
                    if self.log_on && let Ok(line) = self.logs.try_recv() {
                        self.out.extend_from_slice(&line.frame());
                    }
                    self.write_event(&ev);
                    // Batch whatever else is queued into the same write.
                    while self.out.len() < 256 * 1024 {
                        match self.events.try_recv() {
                            Ok(ev) => self.write_event(&ev),
                            Err(_) => break,
                        }
                    }
                    wr.write(&self.out).await?;
                    self.out.clear();
                }
                Some(line) = self.logs.recv() => {
                    if self.log_on {
                        self.out.extend_from_slice(&line.frame());
                    }
                    self.flush_events();
                    if !self.out.is_empty() {
                        wr.write(&self.out).await?;
                        self.out.clear();
                    }
                }
            }
        }
        // The listener loop ended (exit, wrong password, linger timeout,
        // channel down without linger): FreeSWITCH's send_disconnect.
        self.flush_events();
        self.out
            .extend_from_slice(&disconnect_notice(self.session_uuid(), GOODBYE));
        wr.write(&self.out).await?;
        self.out.clear();
        wr.close().await;
        Ok(())
    }

    /// The last words when the simulator stops: queued events, then the
    /// shutdown notice. Best effort: the client may be gone or not reading.
    async fn say_shutdown<W: AsyncWrite + Unpin>(&mut self, wr: &mut Writer<W>) {
        self.flush_events();
        self.out
            .extend_from_slice(&disconnect_notice(self.session_uuid(), SHUTDOWN_MSG));
        // The shutdown token is already cancelled; give a client that reads
        // a moment to take the notice, but never wait on one that does not.
        let _ = tokio::time::timeout(Duration::from_millis(200), wr.wr.write_all(&self.out)).await;
        self.out.clear();
        wr.close().await;
    }

    /// After the connection ends: an outbound socket that goes away hangs
    /// its channel up (unless `resume`).
    async fn finish(&mut self) {
        if let (Kind::Outbound { .. }, Some(ch)) = (self.kind, &self.channel) {
            let _ = ch
                .tx
                .send(ChanMsg::SocketClosed {
                    resume: self.resume,
                })
                .await;
        }
    }

    fn session_uuid(&self) -> Option<&str> {
        self.channel.as_ref().map(|c| c.uuid.as_ref())
    }

    /// Moves events already queued to the output (so they precede a notice).
    fn flush_events(&mut self) {
        while let Ok(ev) = self.events.try_recv() {
            self.write_event(&ev);
        }
    }

    fn write_event(&mut self, ev: &FiredEvent) {
        let bytes = match self.format {
            EventFormat::Plain => ev.plain(),
            EventFormat::Json => ev.json(),
            EventFormat::Xml => ev.xml(),
        };
        self.out.extend_from_slice(&bytes);
    }

    fn on_channel_down(&mut self) {
        self.handle_disco = true;
        let lingering = self.outbound() && self.linger.is_some();
        if !lingering {
            self.running = false;
            return;
        }
        let t = self.linger.unwrap_or(-1);
        let name = self.channel.as_ref().map(|c| c.name()).unwrap_or_default();
        let uuid = self.session_uuid().unwrap_or_default().to_owned();
        self.out.extend_from_slice(
            format!(
                "Content-Type: text/disconnect-notice\nControlled-Session-UUID: {uuid}\nContent-Disposition: linger\nChannel-Name: {name}\nLinger-Time: {t}\nContent-Length: 0\n\n"
            )
            .as_bytes(),
        );
        if t >= 0 {
            // FreeSWITCH checks whole seconds against its clock, so the close
            // comes between N and N+1 s after the notice (traces: N + ~0.4 s).
            self.linger_deadline =
                Some(Instant::now() + Duration::from_millis(t as u64 * 1000 + 300));
        }
    }

    fn reply(&mut self, text: &str) {
        self.out
            .extend_from_slice(b"Content-Type: command/reply\nReply-Text: ");
        self.out.extend_from_slice(text.as_bytes());
        self.out.extend_from_slice(b"\n\n");
    }

    /// mod_event_socket's `parse_command`.
    async fn command(&mut self, frame: &Packet) -> After {
        let line = frame.command_line();
        let cmd = String::from_utf8_lossy(line).into_owned();
        let lower = cmd.to_ascii_lowercase();
        let starts = |p: &str| lower.starts_with(p);

        if starts("exit") || starts("...") {
            self.reply("+OK bye");
            return After::Stop;
        }
        if !self.authed {
            if let Some(pass) = cmd
                .strip_prefix("auth ")
                .or_else(|| starts("auth ").then(|| &cmd[5..]))
            {
                if pass == self.core.cfg.password {
                    self.authed = true;
                    self.reply("+OK accepted");
                    return After::Continue;
                }
                self.reply("-ERR invalid");
                return After::Stop;
            }
            if starts("userauth ") {
                self.reply("-ERR invalid");
                return After::Stop;
            }
            self.reply("-ERR command not found");
            return After::Continue;
        }
        if starts("filter ") {
            let reply = self.filter(&cmd[7..]);
            self.reply(&reply);
            return After::Continue;
        }
        if self.channel.is_some() && starts("resume") {
            self.resume = true;
            if let Some(ch) = &self.channel {
                ch.try_send(ChanMsg::SetVar("socket_resume".into(), "true".into()));
            }
            self.reply("+OK");
            return After::Continue;
        }
        if self.channel.is_some() || starts("myevents ") {
            if starts("connect") {
                if let Some(ch) = &self.channel {
                    let (tx, rx) = oneshot::channel();
                    let Kind::Outbound { asynchronous, full } = self.kind else {
                        self.reply("-ERR command not found");
                        return After::Continue;
                    };
                    ch.try_send(ChanMsg::Connect {
                        asynchronous,
                        full,
                        reply: tx,
                    });
                    if let Ok(ev) = rx.await {
                        ev.encode_plain(&mut self.out);
                    }
                }
                return After::Continue;
            }
            if starts("getvar") {
                let name = cmd.split_once(' ').map(|(_, n)| n.trim().to_owned());
                let mut val = String::new();
                if let (Some(name), Some(ch)) = (name, &self.channel) {
                    val = ch.getvar(&name).await.unwrap_or_default();
                }
                self.reply(&val);
                return After::Continue;
            }
            if starts("myevents") {
                let reply = self.myevents(&cmd);
                self.reply(&reply);
                return After::Continue;
            }
        }
        if starts("divert_events") {
            let arg = cmd[13..].trim();
            let reply = if self.channel.is_none() {
                "-ERR not controlling a session."
            } else if arg.is_empty() {
                "-ERR missing value."
            } else if arg.eq_ignore_ascii_case("on") {
                "+OK events diverted"
            } else {
                "+OK events not diverted"
            };
            self.reply(reply);
            return After::Continue;
        }
        if starts("sendmsg") {
            return self.sendmsg(frame, &cmd).await;
        }
        if self.outbound() && !self.full() {
            self.reply("-ERR command not found");
            return After::Continue;
        }
        if starts("sendevent") {
            let reply = self.sendevent(frame, &cmd);
            self.reply(&reply);
        } else if (starts("api ") || starts("bgapi "))
            && !self.outbound()
            && !api::permitted(&self.core, cmd.split_once(' ').map_or("", |(_, c)| c))
        {
            self.reply("-ERR permission denied");
        } else if starts("api ") {
            let body = api::execute(&self.core, cmd[4..].trim_end()).await;
            let body = if body.is_empty() {
                "-ERR no reply\n".to_owned()
            } else {
                body
            };
            self.out.extend_from_slice(
                format!(
                    "Content-Type: api/response\nContent-Length: {}\n\n",
                    body.len()
                )
                .as_bytes(),
            );
            self.out.extend_from_slice(body.as_bytes());
        } else if starts("bgapi ") {
            let job = frame
                .header("Job-UUID")
                .map(str::to_owned)
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
            self.out.extend_from_slice(
                format!("Content-Type: command/reply\nReply-Text: +OK Job-UUID: {job}\nJob-UUID: {job}\n\n")
                    .as_bytes(),
            );
            api::spawn_bgapi(&self.core, cmd[6..].trim_end().to_owned(), job);
        } else if starts("log") {
            let reply = self.log(&cmd);
            self.reply(&reply);
        } else if starts("linger") {
            let reply = if self.channel.is_some() {
                let arg = cmd
                    .get(7..)
                    .filter(|_| cmd.as_bytes().get(6) == Some(&b' '));
                match arg.filter(|a| !a.is_empty()) {
                    Some(a) => {
                        let n = atoi(a);
                        self.linger = Some(n);
                        format!("+OK will linger {n} seconds")
                    }
                    None => {
                        self.linger = Some(-1);
                        "+OK will linger".to_owned()
                    }
                }
            } else {
                "-ERR not controlling a session".to_owned()
            };
            self.reply(&reply);
        } else if starts("nolinger") {
            let reply = if self.channel.is_some() {
                self.linger = None;
                "+OK will not linger"
            } else {
                "-ERR not controlling a session"
            };
            self.reply(reply);
        } else if starts("nolog") {
            while self.logs.try_recv().is_ok() {}
            let reply = if self.log_on {
                self.log_on = false;
                lock(&self.entry.sub).log_level = None;
                "+OK no longer logging"
            } else {
                "-ERR not loging"
            };
            self.reply(reply);
        } else if starts("event") {
            let reply = self.event_cmd(&cmd);
            self.reply(&reply);
        } else if starts("nixevent") {
            let reply = self.nixevent(&cmd);
            self.reply(&reply);
        } else if starts("noevents") {
            while self.events.try_recv().is_ok() {}
            let mut sub = lock(&self.entry.sub);
            let reply = if sub.enabled {
                sub.enabled = false;
                sub.mask = [0; 2];
                sub.custom.clear();
                "+OK no longer listening for events"
            } else {
                "-ERR not listening for events"
            };
            drop(sub);
            self.reply(reply);
        } else {
            self.reply("-ERR command not found");
        }
        After::Continue
    }

    fn filter(&mut self, rest: &str) -> String {
        let rest = rest.trim_start_matches(' ');
        let (mut name, mut val) = match rest.split_once(' ') {
            Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
            None => (rest.to_owned(), None),
        };
        let mut sub = lock(&self.entry.sub);
        if name.eq_ignore_ascii_case("delete")
            && let Some(v) = val.take()
        {
            let (n, v) = match v.split_once(' ') {
                Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
                None => (v, None),
            };
            if n.eq_ignore_ascii_case("all") {
                sub.filters.clear();
            } else {
                // switch_event_del_header_val: by name, and value when given.
                sub.filters.retain(|(fname, fval)| {
                    !(fname.eq_ignore_ascii_case(&n)
                        && v.as_ref().is_none_or(|v| v.eq_ignore_ascii_case(fval)))
                });
            }
            return format!("+OK filter deleted. [{n}][{}]", v.as_deref().unwrap_or(""));
        }
        let Some(mut v) = val else {
            return "-ERR invalid syntax".to_owned();
        };
        if name.eq_ignore_ascii_case("add") {
            match v.split_once(' ') {
                Some((n, rest)) => {
                    name = n.to_owned();
                    v = rest.to_owned();
                }
                None => {
                    name = v.clone();
                    v = String::new();
                }
            }
        }
        sub.filters.push((name.clone(), v.clone()));
        format!("+OK filter added. [{name}]=[{v}]")
    }

    fn myevents(&mut self, cmd: &str) -> String {
        let mut sub = lock(&self.entry.sub);
        if sub.myevents.is_some() {
            return "-ERR aready enabled.".to_owned();
        }
        let lower = cmd.to_ascii_lowercase();
        if self.channel.is_none() {
            let arg = cmd.get(9..).unwrap_or("").trim();
            let (uuid, fmt) = match arg.split_once(' ') {
                Some((u, f)) => (u, Some(f)),
                None => (arg, None),
            };
            match self.core.channel(uuid) {
                Some(ch) => {
                    ch.try_send(ChanMsg::BindListener(self.entry.clone()));
                    self.channel = Some(ch);
                }
                None if fmt.is_some() => return "-ERR invalid uuid".to_owned(),
                None => {}
            }
            if let Some(f) = fmt {
                match f.to_ascii_lowercase().as_str() {
                    "xml" => self.format = EventFormat::Xml,
                    "plain" => self.format = EventFormat::Plain,
                    "json" => self.format = EventFormat::Json,
                    _ => {}
                }
            }
            self.asynchronous = true;
        }
        for name in [
            "CHANNEL_ANSWER",
            "CHANNEL_APPLICATION",
            "CHANNEL_BRIDGE",
            "CHANNEL_CREATE",
            "CHANNEL_DATA",
            "CHANNEL_DESTROY",
            "CHANNEL_EXECUTE",
            "CHANNEL_EXECUTE_COMPLETE",
            "CHANNEL_HANGUP",
            "CHANNEL_HANGUP_COMPLETE",
            "CHANNEL_ORIGINATE",
            "CHANNEL_UUID",
            "CHANNEL_OUTGOING",
            "CHANNEL_PARK",
            "CHANNEL_PROGRESS",
            "CHANNEL_PROGRESS_MEDIA",
            "CHANNEL_STATE",
            "CHANNEL_UNBRIDGE",
            "CHANNEL_UNPARK",
            "DETECTED_SPEECH",
            "DTMF",
            "NOTALK",
            "TALK",
        ] {
            if let Some(id) = event_id(name) {
                sub.set(id, true);
            }
        }
        sub.myevents = Some(self.session_uuid().unwrap_or_default().to_owned());
        sub.enabled = true;
        if lower.contains("xml") {
            self.format = EventFormat::Xml;
        }
        if lower.contains("json") {
            self.format = EventFormat::Json;
        }
        "+OK Events Enabled".to_owned()
    }

    fn event_cmd(&mut self, cmd: &str) -> String {
        let mut sub = lock(&self.entry.sub);
        let mut key_count = 0;
        let mut custom = false;
        if let Some((_, rest)) = cmd.split_once(' ') {
            for (i, tok) in rest.split(' ').enumerate() {
                if i == 0 {
                    match tok.to_ascii_lowercase().as_str() {
                        "xml" => {
                            self.format = EventFormat::Xml;
                            continue;
                        }
                        "plain" => {
                            self.format = EventFormat::Plain;
                            continue;
                        }
                        "json" => {
                            self.format = EventFormat::Json;
                            continue;
                        }
                        _ => {}
                    }
                }
                if custom {
                    sub.custom.insert(tok.to_owned());
                } else if let Some(id) = event_id(tok) {
                    key_count += 1;
                    if id == EVENT_ALL {
                        for x in 0..EVENT_NAMES.len() {
                            sub.set(x, true);
                        }
                    }
                    sub.set(id, true);
                    if id == EVENT_CUSTOM {
                        custom = true;
                    }
                }
            }
        }
        if key_count == 0 {
            return "-ERR no keywords supplied".to_owned();
        }
        sub.enabled = true;
        format!("+OK event listener enabled {}", self.format.as_str())
    }

    fn nixevent(&mut self, cmd: &str) -> String {
        let mut sub = lock(&self.entry.sub);
        let mut key_count = 0;
        let mut custom = false;
        if let Some((_, rest)) = cmd.split_once(' ') {
            for tok in rest.split(' ') {
                if custom {
                    sub.custom.remove(tok);
                } else if let Some(id) = event_id(tok) {
                    key_count += 1;
                    if id == EVENT_CUSTOM {
                        custom = true;
                    } else if id == EVENT_ALL {
                        sub.mask = [0; 2];
                    } else {
                        if sub.has(EVENT_ALL) {
                            sub.set(EVENT_ALL, false);
                            for x in 0..EVENT_ALL {
                                sub.set(x, true);
                            }
                        }
                        sub.set(id, false);
                    }
                }
            }
        }
        if key_count == 0 {
            return "-ERR no keywords supplied".to_owned();
        }
        sub.enabled = true;
        "+OK events nixed".to_owned()
    }

    fn log(&mut self, cmd: &str) -> String {
        let arg = cmd.get(3..).unwrap_or("");
        let level_s = arg.strip_prefix(' ').unwrap_or(arg);
        let level = if level_s.is_empty() {
            Some(7)
        } else {
            log_level(level_s)
        };
        match level {
            Some(l) => {
                self.log_on = true;
                lock(&self.entry.sub).log_level = Some(l);
                format!("+OK log level {level_s} [{l}]")
            }
            None => "-ERR invalid log level".to_owned(),
        }
    }

    fn sendevent(&mut self, frame: &Packet, cmd: &str) -> String {
        let event_uuid = uuid::Uuid::new_v4().to_string();
        let ename = cmd[9..].trim_start_matches([' ', '\t']).trim_end();
        let name = event_id(ename)
            .map(|id| EVENT_NAMES[id])
            .unwrap_or("CUSTOM")
            .to_owned();
        let mut e = Event::default();
        let subclass = frame.header("Event-Subclass").map(str::to_owned);
        if name == "CUSTOM"
            && let Some(s) = &subclass
        {
            e.push_header("Event-Subclass", s);
        }
        e.push_header("Command", cmd);
        for (n, v) in frame.headers_bytes() {
            if n.eq_ignore_ascii_case(b"Event-Subclass") && name == "CUSTOM" {
                continue;
            }
            e.push_header(&String::from_utf8_lossy(n), &String::from_utf8_lossy(v));
        }
        e.push_header("Event-UUID", &event_uuid);
        e.push_header("Event-Name", &name);
        self.core.info.push_core(
            &mut e,
            origin("mod_event_socket.c", "parse_command", "2275"),
        );
        if let Some(body) = frame.body() {
            e.set_body(String::from_utf8_lossy(body).into_owned());
        }
        self.core.fire(e);
        format!("+OK {event_uuid}")
    }

    async fn sendmsg(&mut self, frame: &Packet, cmd: &str) -> After {
        let mut uuid = cmd[7..].trim().to_owned();
        if uuid.is_empty() {
            uuid = frame.header("session-id").unwrap_or("").to_owned();
        }
        if !uuid.is_empty() && self.session_uuid() == Some(uuid.as_str()) {
            uuid.clear();
        }
        let force_async = frame.header("async").is_some_and(is_true);
        let msg = PrivateMsg::from_frame(frame);
        if uuid.is_empty()
            && let Some(ch) = self.channel.clone()
        {
            if self.asynchronous || force_async {
                ch.send(ChanMsg::Private(msg, None)).await;
            } else {
                // Static mode: the application runs in the socket's own
                // thread, so the +OK waits until it has finished (trace 07).
                let (tx, rx) = oneshot::channel();
                ch.send(ChanMsg::Private(msg, Some(tx))).await;
                let _ = rx.await;
            }
            self.reply("+OK");
            return After::Continue;
        }
        match (!uuid.is_empty())
            .then(|| self.core.channel(&uuid))
            .flatten()
        {
            Some(ch) => {
                ch.send(ChanMsg::Private(msg, None)).await;
                self.reply("+OK");
            }
            None => self.reply(&format!("-ERR invalid session id [{uuid}]")),
        }
        After::Continue
    }
}

/// A `text/disconnect-notice` (with `Controlled-Session-UUID` on
/// connections that control a channel).
pub(crate) fn disconnect_notice(session: Option<&str>, message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(200);
    match session {
        Some(uuid) => out.extend_from_slice(
            format!(
                "Content-Type: text/disconnect-notice\nControlled-Session-UUID: {uuid}\nContent-Disposition: disconnect\nContent-Length: {}\n\n",
                message.len()
            )
            .as_bytes(),
        ),
        None => out.extend_from_slice(
            format!(
                "Content-Type: text/disconnect-notice\nContent-Length: {}\n\n",
                message.len()
            )
            .as_bytes(),
        ),
    }
    out.extend_from_slice(message.as_bytes());
    out
}

/// The write half of a connection. Every write gives up when the
/// connection is killed or the simulator stops: a client that stopped
/// reading must not keep its task blocked in a write forever.
struct Writer<W> {
    wr: W,
    kill: CancellationToken,
    shutdown: CancellationToken,
}

impl<W: AsyncWrite + Unpin> Writer<W> {
    async fn write(&mut self, buf: &[u8]) -> Result<(), SessionError> {
        tokio::select! {
            r = self.wr.write_all(buf) => Ok(r?),
            () = self.kill.cancelled() => Err(SessionError::Killed),
            () = self.shutdown.cancelled() => Err(SessionError::ShuttingDown),
        }
    }

    /// Half-closes (FIN) after the last write; bounded like the writes.
    async fn close(&mut self) {
        let _ = tokio::time::timeout(Duration::from_millis(200), self.wr.shutdown()).await;
    }
}

use crate::backoff::sleep_until as sleep_until_opt;

/// C's `atoi`: leading digits (with sign), 0 when none.
pub(crate) fn atoi(s: &str) -> i64 {
    let s = s.trim_start();
    let (neg, digits) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let n: i64 = digits
        .chars()
        .take_while(char::is_ascii_digit)
        .take(18)
        .fold(0, |acc, c| acc * 10 + i64::from(c as u8 - b'0'));
    if neg { -n } else { n }
}

/// `switch_true`.
pub(crate) fn is_true(v: &str) -> bool {
    matches!(
        v.to_ascii_lowercase().as_str(),
        "yes" | "on" | "true" | "t" | "enabled" | "active" | "allow"
    ) || atoi(v) != 0
}

/// `switch_log_str2level`.
fn log_level(s: &str) -> Option<u8> {
    if let Ok(n) = s.parse::<u8>() {
        return (n <= 7).then_some(n);
    }
    match s.to_ascii_lowercase().as_str() {
        "console" => Some(0),
        "alert" => Some(1),
        "crit" => Some(2),
        "err" | "error" => Some(3),
        "warning" => Some(4),
        "notice" => Some(5),
        "info" => Some(6),
        "debug" => Some(7),
        _ => None,
    }
}
