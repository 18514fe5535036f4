//! The task that runs one channel: its far end (number plan, loopback
//! partner), its applications (with FreeSWITCH's nesting rules), DTMF,
//! bridging, eavesdrop, recording, and the hangup sequence.
//!
//! Everything that happens to a channel goes through its bounded mailbox
//! (`ChanMsg`), so the channel's events come out in one well-defined order.
//!
//! This module holds the task loop and the dispatch of mailbox messages and
//! timers; the rest is split by concern: `answer` (ringing, answer, the
//! originate's result), `apps` (the applications and their nesting),
//! `media` (breaks, DTMF, the recording bug, conferences), `bridge`
//! (bridge and eavesdrop) and `hangup` (the hangup sequence); `state` is the
//! channel's life (up, hanging up, reporting, destroyed) as one pure type.

use crate::esl::Event;
use crate::sim::Core;
use crate::sim::event::now_micros;
use crate::sim::listener::ListenerEntry;
use crate::sim::mailbox::{ChanMsg, ChannelHandle, ExecReq, OriginateResult, PrivateMsg};
use crate::sim::numberplan::{Extension, Outcome};
use crate::sim::queue::{Queued, SendmsgQueue};
use crate::sim::snapshot::{ChanState, SnapExtra, at, normalize_cause};
use state::Lifecycle;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

mod answer;
mod apps;
mod bridge;
mod hangup;
mod media;
mod state;

pub(crate) use apps::extension_steps;

/// How long a channel whose loopback twin began its hangup waits for the
/// twin to report its end before finishing on its own.
const TWIN_GRACE: Duration = Duration::from_secs(1);

/// Who this channel is, at creation.
pub(crate) enum Role {
    /// A SIP/user leg whose far end follows the number plan.
    Remote(Outcome),
    /// The `-a` half of a loopback pair: answered when the `-b` half is.
    LoopbackA { partner: ChannelHandle },
    /// The `-b` half: runs the dialplan extension.
    LoopbackB {
        partner: ChannelHandle,
        ext: Extension,
    },
    /// An `-a` half whose `-b` half the sessions-per-second throttle
    /// refused: it stays in CS_INIT until killed or the originate times out.
    LoopbackWithoutB,
}

/// Everything needed to start a channel task.
pub(crate) struct Spawn {
    pub(crate) state: ChanState,
    pub(crate) extra: SnapExtra,
    pub(crate) role: Role,
    pub(crate) originate: Option<OriginateResult>,
    pub(crate) originate_timeout: Duration,
    /// Run after a successful originate (`&app(args)`).
    pub(crate) app: Option<ExecReq>,
}

/// Creates the handle (registered in the core) and the mailbox.
pub(crate) fn handle_for(
    core: &Core,
    state: &ChanState,
    extra: &SnapExtra,
) -> Option<(ChannelHandle, mpsc::Receiver<ChanMsg>)> {
    let (handle, rx) = ChannelHandle::new(&state.uuid, &state.name, state.snapshot(extra));
    core.insert_channel(handle.clone()).then_some((handle, rx))
}

/// Fires CHANNEL_CREATE and starts the task.
pub(crate) fn spawn(core: Arc<Core>, handle: ChannelHandle, rx: mpsc::Receiver<ChanMsg>, s: Spawn) {
    core.fire(
        s.state
            .event(&core.info, "CHANNEL_CREATE", at::CREATE, &[], &[]),
    );
    let mut actor = Actor {
        core: core.clone(),
        me: handle,
        st: s.state,
        extra: s.extra,
        rx,
        role: s.role,
        originate: s.originate,
        originate_app: s.app,
        stack: Vec::new(),
        waiting: SendmsgQueue::default(),
        dialplan: VecDeque::new(),
        run_dialplan: false,
        timers: Vec::new(),
        dtmf_in: VecDeque::new(),
        dtmf_due: None,
        socket: None,
        bound: Vec::new(),
        bridged: None,
        eavesdroppers: Vec::new(),
        record: None,
        last_app: None,
        hangup_after_idle: false,
        answer_ack: None,
        hangup_ack: None,
        life: Lifecycle::default(),
        parked: false,
        pending_private: VecDeque::new(),
        socket_closed: None,
    };
    core.tasks.spawn(async move {
        actor.start(s.originate_timeout);
        actor.run().await;
    });
}

#[derive(Debug)]
enum Kind {
    /// playback/sleep: `until` while running, `left` while paused.
    Timed {
        until: Option<Instant>,
        left: Option<Duration>,
        started: Instant,
        playback: bool,
    },
    Park,
    Socket,
    Echo,
    Eavesdrop,
    Bridged,
    /// In a conference as this member.
    Conference {
        name: String,
        member: u32,
    },
    /// `answer` on a loopback `-b` leg, waiting for the `-a` half.
    AnswerWait,
    Record {
        path: std::path::PathBuf,
        started: Instant,
        until: Option<Instant>,
    },
}

struct AppFrame {
    app: String,
    arg: String,
    uuid: String,
    locked: bool,
    kind: Kind,
    done: Option<oneshot::Sender<()>>,
    private: Option<PrivateMsg>,
}

#[derive(Debug, Clone)]
enum Timer {
    Progress,
    Answer,
    FarHangup(String),
    FarDtmf(String),
    OriginateTimeout,
    Park,
    RecordLimit,
    /// The channel thread runs the rest of a hangup begun from outside.
    HangupFinish(String),
    /// The bridged partner hung up: the bridge loop notices on its next
    /// frame read.
    BridgeGone(String, String),
    /// The originate loop's pass after the answer.
    OriginatePoll,
    /// The media loop's next 20 ms frame: queued `sendmsg` messages are
    /// parsed now (`switch_ivr_parse_all_events` runs once per frame).
    Frame,
}

struct MediaBug {
    path: std::path::PathBuf,
    started: Instant,
    until: Option<Instant>,
    display: String,
}

struct Actor {
    core: Arc<Core>,
    me: ChannelHandle,
    st: ChanState,
    extra: SnapExtra,
    rx: mpsc::Receiver<ChanMsg>,
    role: Role,
    originate: Option<OriginateResult>,
    originate_app: Option<ExecReq>,
    stack: Vec<AppFrame>,
    /// Executes and hangups waiting for an event-locked application to
    /// finish.
    waiting: SendmsgQueue,
    /// Dialplan (or originate application) steps, run one after another.
    dialplan: VecDeque<ExecReq>,
    run_dialplan: bool,
    timers: Vec<(Instant, Timer)>,
    dtmf_in: VecDeque<char>,
    dtmf_due: Option<Instant>,
    /// The outbound socket: its listener and whether it is async.
    socket: Option<(Arc<ListenerEntry>, bool)>,
    /// Inbound listeners bound with `myevents <uuid>`.
    bound: Vec<Arc<ListenerEntry>>,
    bridged: Option<ChannelHandle>,
    eavesdroppers: Vec<String>,
    record: Option<MediaBug>,
    last_app: Option<(String, String)>,
    hangup_after_idle: bool,
    answer_ack: Option<oneshot::Receiver<()>>,
    /// Waiting for the loopback twin to fire its CHANNEL_HANGUP before we
    /// report.
    hangup_ack: Option<oneshot::Receiver<()>>,
    /// Up, hanging up, reporting or destroyed.
    life: Lifecycle,
    /// An async socket parks the channel shortly after `connect`; messages
    /// sent before that wait, as in FreeSWITCH, where they are parsed from
    /// the park loop (CHANNEL_PARK precedes the first CHANNEL_EXECUTE).
    parked: bool,
    /// Async `sendmsg` messages waiting for the next frame tick.
    pending_private: VecDeque<PrivateMsg>,
    /// The socket closed (with `resume`); acted on at the next frame tick.
    socket_closed: Option<bool>,
}

impl Actor {
    fn fire(
        &self,
        name: &str,
        at: crate::sim::event::Origin,
        pre: &[(&str, &str)],
        post: &[(&str, &str)],
    ) {
        self.core
            .fire(self.st.event(&self.core.info, name, at, pre, post));
    }

    fn schedule(&mut self, after: Duration, t: Timer) {
        self.timers.push((Instant::now() + after, t));
    }

    fn start(&mut self, originate_timeout: Duration) {
        if self.originate.is_some() {
            self.schedule(originate_timeout, Timer::OriginateTimeout);
        }
        let ring = self.core.cfg.ring_time;
        match &self.role {
            Role::Remote(outcome) => {
                self.st.state = crate::sim::snapshot::CState::ConsumeMedia;
                match outcome.clone() {
                    Outcome::Reject(cause) => {
                        self.schedule(Duration::ZERO, Timer::FarHangup(cause.to_owned()))
                    }
                    Outcome::RingForever => self.schedule(Duration::ZERO, Timer::Progress),
                    Outcome::Answer
                    | Outcome::AnswerThenHangup(_)
                    | Outcome::AnswerThenDtmf(..) => {
                        self.schedule(Duration::ZERO, Timer::Progress);
                        self.schedule(ring, Timer::Answer);
                    }
                }
            }
            Role::LoopbackA { .. } => {
                self.st.state = crate::sim::snapshot::CState::ConsumeMedia;
            }
            Role::LoopbackWithoutB => {}
            Role::LoopbackB { ext, .. } => {
                self.st.state = crate::sim::snapshot::CState::Execute;
                self.st.call_state = "RINGING";
                let steps = extension_steps(ext, &self.core.cfg);
                for (app, arg) in steps {
                    self.dialplan.push_back(ExecReq::new(app, &arg));
                }
                self.run_dialplan = true;
                self.hangup_after_idle = true;
            }
        }
        self.pump();
        self.publish();
    }

    async fn run(&mut self) {
        let shutdown = self.core.shutdown.clone();
        while !self.life.is_destroyed() {
            let deadline = self.next_deadline();
            tokio::select! {
                biased;
                () = shutdown.cancelled() => self.shut_down(),
                msg = self.rx.recv() => match msg {
                    Some(m) => self.handle(m),
                    None => break,
                },
                () = sleep_opt(deadline) => self.on_time(),
                _ = ack_opt(&mut self.answer_ack) => self.answer_acked(),
                _ = ack_opt(&mut self.hangup_ack) => self.hangup_report(),
            }
            self.pump();
            self.publish();
        }
        self.core.remove_channel(&self.st.uuid);
    }

    /// The switch stops: the channel hangs up, and a hangup already under
    /// way ends now without waiting for its frame or its twin.
    fn shut_down(&mut self) {
        self.hangup("SYSTEM_SHUTDOWN", None);
        if !self.life.is_destroyed() {
            let cause = self
                .st
                .hangup_cause
                .clone()
                .unwrap_or_else(|| "SYSTEM_SHUTDOWN".to_owned());
            self.hangup_finish(&cause);
            self.hangup_report();
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let mut d = self.timers.iter().map(|(t, _)| *t).min();
        if self.hung_up() {
            // Media, DTMF and recordings stopped with the hangup.
            return d;
        }
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                d = Some(d.map_or(t, |x: Instant| x.min(t)));
            }
        };
        consider(self.dtmf_due);
        consider(self.record.as_ref().and_then(|r| r.until));
        if let Some(top) = self.stack.last() {
            match &top.kind {
                Kind::Timed { until, .. } => consider(*until),
                Kind::Record { until, .. } => consider(*until),
                _ => {}
            }
        }
        d
    }

    fn publish(&self) {
        self.me.publish(self.st.snapshot(&self.extra));
    }

    fn hung_up(&self) -> bool {
        !self.life.is_up()
    }

    fn on_time(&mut self) {
        let now = Instant::now();
        let due: Vec<Timer> = {
            let mut due = Vec::new();
            self.timers.retain(|(t, timer)| {
                if *t <= now {
                    due.push(timer.clone());
                    false
                } else {
                    true
                }
            });
            due
        };
        if self.hung_up() {
            // Only the rest of a hangup is still to happen.
            if let Some(Timer::HangupFinish(cause)) = due
                .into_iter()
                .find(|t| matches!(t, Timer::HangupFinish(_)))
            {
                self.hangup_finish(&cause);
            }
            return;
        }
        for t in due {
            self.on_timer(t);
        }
        if self.dtmf_due.is_some_and(|t| t <= now) {
            self.next_dtmf();
        }
        if let Some(bug) = &self.record
            && bug.until.is_some_and(|t| t <= now)
        {
            self.stop_media_bug();
        }
        let top_due = self.stack.last().is_some_and(|f| match &f.kind {
            Kind::Timed { until, .. } | Kind::Record { until, .. } => {
                until.is_some_and(|t| t <= now)
            }
            _ => false,
        });
        if top_due {
            self.finish_top(false);
        }
    }

    fn on_timer(&mut self, t: Timer) {
        if self.hung_up() {
            return;
        }
        match t {
            Timer::Progress => {
                if self.st.profile.progress == 0 {
                    self.st.profile.progress = now_micros();
                    self.st.profile.network_addr = Some(self.core.cfg.ipv4.clone());
                    self.fire("CHANNEL_PROGRESS", at::PROGRESS, &[], &[]);
                    self.st.call_state = "RINGING";
                }
            }
            Timer::Answer => {
                self.answer();
                if let Role::Remote(outcome) = &self.role {
                    match outcome.clone() {
                        Outcome::AnswerThenHangup(after) => {
                            self.schedule(after, Timer::FarHangup("NORMAL_CLEARING".into()))
                        }
                        Outcome::AnswerThenDtmf(after, digits) => {
                            self.schedule(after, Timer::FarDtmf(digits.into()))
                        }
                        _ => {}
                    }
                }
            }
            Timer::FarHangup(cause) => self.hangup(&cause, None),
            // The DTMF event fires on the leg that received the digits
            // (switch_channel_dequeue_dtmf); a bridged partner only sends
            // them on to its own far end, with no event of its own.
            Timer::FarDtmf(digits) => self.queue_dtmf(&digits),
            Timer::OriginateTimeout => {
                if self.originate.is_some() {
                    self.hangup("NO_ANSWER", None);
                }
            }
            Timer::Park => {
                if !self.parked && self.stack.iter().any(|f| matches!(f.kind, Kind::Socket)) {
                    self.parked = true;
                    self.fire("CHANNEL_PARK", at::PARK, &[], &[]);
                }
            }
            Timer::RecordLimit => self.stop_media_bug(),
            Timer::BridgeGone(uuid, cause) => self.partner_gone(&uuid, &cause),
            Timer::OriginatePoll => self.originate_succeeded(),
            // Handled in on_time (the channel is hung up by then).
            Timer::HangupFinish(_) => {}
            Timer::Frame => {
                while let Some(pm) = self.pending_private.pop_front() {
                    self.private(pm, None);
                }
                self.park_loop_check();
            }
        }
    }

    fn handle(&mut self, msg: ChanMsg) {
        match msg {
            // A static socket runs the application in its own turn (the
            // reply waits for it); everything else is queued on the session
            // and parsed by the channel thread on its next media frame, so
            // two messages sent back to back are seen together (trace 09)
            // and a hangup's CHANNEL_HANGUP follows its +OK by ~20 ms.
            ChanMsg::Private(pm, Some(done)) => self.private(pm, Some(done)),
            ChanMsg::Private(pm, None) => {
                self.schedule_frame();
                self.pending_private.push_back(pm);
            }
            ChanMsg::Hangup(cause) => self.hangup_from_outside(&cause),
            ChanMsg::Break { all } => self.break_media(all),
            ChanMsg::RecvDtmf(d) => self.queue_dtmf(&d),
            ChanMsg::SendDtmf(d) => self.send_dtmf(&d),
            ChanMsg::SetVar(n, v) => self.st.vars.set(&n, &v),
            ChanMsg::GetVar(n, tx) => {
                let v = match n.as_str() {
                    "uuid" => Some(self.st.uuid.clone()),
                    _ => self.st.vars.get(&n).map(str::to_owned),
                };
                let _ = tx.send(v);
            }
            ChanMsg::Connect {
                asynchronous,
                full,
                reply,
            } => {
                let _ = reply.send(self.st.connect_reply(&self.core.info, asynchronous, full));
                if asynchronous {
                    self.schedule(self.core.cfg.park_delay, Timer::Park);
                }
            }
            ChanMsg::BindListener(l) => {
                if self.hung_up() {
                    l.channel_down();
                } else {
                    self.bound.push(l);
                }
            }
            ChanMsg::SocketUp(Some(sock)) => self.socket = Some(sock),
            ChanMsg::SocketUp(None) => {
                // "Socket Error!": the socket application returns at once.
                if matches!(self.stack.last().map(|f| &f.kind), Some(Kind::Socket)) {
                    self.finish_top(false);
                }
            }
            // The socket application notices its listener is gone on the
            // park loop's next frame, after any sendmsg still queued (an
            // app's `hangup` then `exit` hangs up with its cause).
            ChanMsg::SocketClosed { resume } => {
                if self.socket.as_ref().is_some_and(|s| s.1) {
                    self.schedule_frame();
                    self.socket_closed = Some(resume);
                } else {
                    self.socket_gone(resume);
                }
            }
            ChanMsg::PartnerAnswered(ack) => {
                self.answer();
                let _ = ack.send(());
            }
            // The `-a` half is still routing when its twin rings: its
            // PROGRESS says CS_ROUTING and call state DOWN (trace 14), and it
            // reaches CS_CONSUME_MEDIA (and RINGING) right after.
            ChanMsg::PartnerRinging(ack) => {
                if self.st.profile.progress == 0 && !self.hung_up() {
                    let (state, call) = (self.st.state, self.st.call_state);
                    self.st.state = crate::sim::snapshot::CState::Routing;
                    self.st.call_state = "DOWN";
                    self.ring_ready();
                    self.st.state = state;
                    self.st.call_state = if call == "DOWN" { "RINGING" } else { call };
                }
                let _ = ack.send(());
            }
            // FreeSWITCH's bridge loop sees its partner gone on its next
            // frame, after the partner (and the partner's loopback twin)
            // finished hanging up: their HANGUP_COMPLETE precede our
            // UNBRIDGE (trace 04).
            ChanMsg::PartnerGone(uuid, cause)
                if self.bridged.as_ref().is_some_and(|b| *b.uuid == *uuid) =>
            {
                self.schedule(self.core.cfg.park_delay, Timer::BridgeGone(uuid, cause));
            }
            ChanMsg::PartnerGone(uuid, cause) => self.partner_gone(&uuid, &cause),
            ChanMsg::PartnerHangup(cause, ack) => {
                if self.hangup_begin(&cause, None, false) {
                    // Should the twin never report its end, finish anyway.
                    self.schedule(TWIN_GRACE, Timer::HangupFinish(cause));
                }
                let _ = ack.send(());
            }
            ChanMsg::FarDtmf(d) => self.queue_dtmf(&d),
            ChanMsg::Bridge {
                other,
                other_profile,
                originator,
                transfer,
            } => self.bridge(other, other_profile, originator, transfer),
            ChanMsg::BridgeDialled(result) => self.bridge_dialled(result),
            ChanMsg::ConferenceOp(op) => self.conference_op(op),
            ChanMsg::Profile(tx) => {
                let _ = tx.send((self.st.profile.clone(), self.st.uuid.clone()));
            }
            ChanMsg::EavesdropAdd(u) => {
                if self.hung_up() {
                    if let Some(h) = self.core.channel(&u) {
                        h.try_send(ChanMsg::EavesdropGone(self.st.uuid.clone()));
                    }
                } else {
                    self.eavesdroppers.push(u);
                }
            }
            ChanMsg::EavesdropGone(target) => {
                let top_is = self
                    .stack
                    .iter()
                    .rposition(|f| matches!(f.kind, Kind::Eavesdrop) && f.arg == target);
                if let Some(i) = top_is {
                    while self.stack.len() > i + 1 {
                        self.finish_top(true);
                    }
                    self.finish_top(false);
                }
            }
            ChanMsg::Record {
                start,
                path,
                limit,
                reply,
            } => {
                let r = if start {
                    self.start_media_bug(&path, limit)
                } else if self.record.is_some() {
                    self.stop_media_bug();
                    Ok(())
                } else {
                    Err(format!("-ERR Cannot stop record session! [{path}]\n"))
                };
                let _ = reply.send(r);
            }
        }
    }

    /// Asks for the next media frame (once: messages that arrive before it
    /// are all parsed on it).
    fn schedule_frame(&mut self) {
        if !self.timers.iter().any(|(_, t)| matches!(t, Timer::Frame)) {
            self.schedule(self.core.cfg.park_delay, Timer::Frame);
        }
    }

    /// The socket application's park loop, on its frame: it notices that
    /// its connection closed only when nothing runs on top of it. An
    /// application executed from the socket (a playback, a bridge…) keeps
    /// the channel thread and checks nothing, so a closed socket leaves the
    /// channel alive until that application ends (trace 15; with `loops=-1`
    /// and `event-lock`, until someone kills the channel).
    fn park_loop_check(&mut self) {
        let parked_in_socket = matches!(self.stack.last().map(|f| &f.kind), Some(Kind::Socket));
        if parked_in_socket && let Some(resume) = self.socket_closed.take() {
            self.socket_gone(resume);
        }
    }

    /// The socket application ends because its connection closed: with
    /// `resume` the dialplan carries on, otherwise the channel hangs up
    /// ("has executed the last dialplan instruction").
    fn socket_gone(&mut self, resume: bool) {
        let in_socket = self.stack.iter().any(|f| matches!(f.kind, Kind::Socket));
        if resume && in_socket {
            while !matches!(
                self.stack.last().map(|f| &f.kind),
                Some(Kind::Socket) | None
            ) {
                self.finish_top(true);
            }
            self.finish_top(false);
        } else if !self.hung_up() {
            self.hangup("NORMAL_CLEARING", None);
        }
    }

    /// `switch_ivr_parse_event`.
    fn private(&mut self, pm: PrivateMsg, done: Option<oneshot::Sender<()>>) {
        if self.hung_up() {
            return;
        }
        match pm.call_command.as_str() {
            "execute" => {
                let req = ExecReq {
                    app: pm.app.clone(),
                    arg: pm.arg.clone(),
                    uuid: pm
                        .event_uuid
                        .clone()
                        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
                    locked: pm.event_lock,
                    done,
                    loops: Some(pm.loops),
                    private: Some(pm),
                };
                self.submit(req);
            }
            // Queued like an execute: behind an event-locked application it
            // waits (trace 10), otherwise it runs now, nested in whatever
            // runs (trace 11). A static socket runs it in its own turn.
            "hangup" => {
                let pm = if done.is_none() {
                    let open = self.top_open().unwrap_or(true);
                    match self.waiting.offer(Queued::Hangup(pm), open) {
                        Some(Queued::Hangup(pm)) => pm,
                        _ => return,
                    }
                } else {
                    pm
                };
                let cause = normalize_cause(&pm.hangup_cause);
                self.hangup(&cause, Some(pm));
                if let Some(d) = done {
                    let _ = d.send(());
                }
            }
            _ => {
                self.fire_private(&pm);
                if let Some(d) = done {
                    let _ = d.send(());
                }
            }
        }
    }

    fn fire_private(&self, pm: &PrivateMsg) {
        let mut e = Event::default();
        e.push_header("Command", &pm.raw);
        for (n, v) in &pm.headers {
            e.push_header(n, v);
        }
        e.push_header("Event-Name", "PRIVATE_COMMAND");
        self.core.info.push_core(&mut e, at::PRIVATE_COMMAND);
        self.st.push_data(&mut e, false);
        self.core.fire(e);
    }
}

async fn ack_opt(rx: &mut Option<oneshot::Receiver<()>>) {
    match rx {
        Some(rx) => {
            let _ = rx.await;
        }
        None => std::future::pending().await,
    }
}

use crate::backoff::sleep_until as sleep_opt;
