//! The task that runs one channel: its far end (number plan, loopback
//! partner), its applications (with FreeSWITCH's nesting rules), DTMF,
//! bridging, eavesdrop, recording, and the hangup sequence.
//!
//! Everything that happens to a channel goes through its bounded mailbox
//! ([`ChanMsg`]), so the channel's events come out in one well-defined order.

use crate::esl::Event;
use crate::sim::channel::{ChanState, OtherLeg, SnapExtra, at, normalize_cause, set_cdr_vars};
use crate::sim::event::now_micros;
use crate::sim::numberplan::{Extension, Outcome};
use crate::sim::packet::Packet;
use crate::sim::session::{ListenerEntry, is_true};
use crate::sim::wav::{PlayLength, file_type, play_length, write_recording};
use crate::sim::{ChannelSnapshot, Core, EavesdropMode, EavesdropSnapshot, lock, outbound};
use crate::sim::{Conference, ConferenceMember};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// How long a channel whose loopback twin began its hangup waits for the
/// twin to report its end before finishing on its own.
const TWIN_GRACE: Duration = Duration::from_secs(1);

/// Mailbox size per channel. Senders from the network (`api`, `sendmsg`)
/// wait when it is full; channel-to-channel messages are dropped and logged.
const MAILBOX: usize = 256;

/// A `sendmsg` as the channel parses it (`switch_ivr_parse_event`).
#[derive(Debug, Clone, Default)]
pub(crate) struct PrivateMsg {
    pub(crate) call_command: String,
    pub(crate) app: String,
    pub(crate) arg: String,
    pub(crate) loops: i64,
    pub(crate) event_lock: bool,
    pub(crate) event_uuid: Option<String>,
    pub(crate) hangup_cause: String,
    /// The whole command text and headers, for PRIVATE_COMMAND.
    pub(crate) raw: String,
    pub(crate) headers: Vec<(String, String)>,
}

impl PrivateMsg {
    pub(crate) fn from_frame(frame: &Packet) -> Self {
        let h = |n: &str| frame.header(n).map(str::to_owned);
        let mut raw = String::from_utf8_lossy(frame.head()).into_owned();
        raw.push('\n');
        let headers: Vec<(String, String)> = frame
            .headers_bytes()
            .map(|(n, v)| {
                (
                    String::from_utf8_lossy(n).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            })
            .collect();
        // A long argument may come as the body.
        let arg = h("execute-app-arg").unwrap_or_else(|| {
            frame
                .body()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default()
        });
        Self {
            call_command: h("call-command").unwrap_or_default().to_ascii_lowercase(),
            app: h("execute-app-name").unwrap_or_default(),
            arg,
            loops: h("loops").map_or(1, |l| crate::sim::session::atoi(&l).max(1)),
            event_lock: h("event-lock").is_some_and(|v| is_true(&v)),
            event_uuid: h("Event-UUID"),
            hangup_cause: h("hangup-cause").unwrap_or_else(|| "NORMAL_CLEARING".to_owned()),
            raw,
            headers,
        }
    }
}

/// What the `conference` API does to a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConferenceOp {
    Mute,
    Unmute,
    Kick,
}

/// Messages a channel handles.
pub(crate) enum ChanMsg {
    /// A `sendmsg` (with a completion for static sockets).
    Private(PrivateMsg, Option<oneshot::Sender<()>>),
    /// `uuid_kill` and friends.
    Hangup(String),
    /// `uuid_break [all]`.
    Break {
        all: bool,
    },
    /// `uuid_recv_dtmf`: digits the channel receives.
    RecvDtmf(String),
    /// `uuid_send_dtmf`: digits sent to the far end.
    SendDtmf(String),
    SetVar(String, String),
    GetVar(String, oneshot::Sender<Option<String>>),
    /// The outbound socket's `connect`.
    Connect {
        asynchronous: bool,
        full: bool,
        reply: oneshot::Sender<Event>,
    },
    /// An inbound `myevents <uuid>` listener to close when we hang up.
    BindListener(Arc<ListenerEntry>),
    /// The outbound socket connected (`Some`) or failed to (`None`).
    SocketUp(Option<(Arc<ListenerEntry>, bool)>),
    /// The outbound socket closed.
    SocketClosed {
        resume: bool,
    },
    /// Loopback: the other half rang (ack when our PROGRESS has fired).
    PartnerRinging(oneshot::Sender<()>),
    /// Loopback: the other half answered (ack when our ANSWER has fired).
    PartnerAnswered(oneshot::Sender<()>),
    /// Loopback or bridge partner hung up (after its HANGUP_COMPLETE).
    PartnerGone(String, String),
    /// The loopback twin is hanging up (in its CS_HANGUP state): fire our
    /// CHANNEL_HANGUP now and acknowledge; the rest follows PartnerGone.
    PartnerHangup(String, oneshot::Sender<()>),
    /// DTMF arriving from the far end.
    FarDtmf(String),
    /// `uuid_bridge` (`transfer`) or the `bridge` application: become
    /// bridged to `other`.
    Bridge {
        other: ChannelHandle,
        other_profile: Option<Box<(crate::sim::channel::Profile, String)>>,
        originator: bool,
        transfer: bool,
    },
    /// `conference <name> mute|unmute|kick <member>` for this member.
    ConferenceOp(ConferenceOp),
    /// The leg the `bridge` application dialled answered, or failed with a
    /// cause.
    BridgeDialled(Result<ChannelHandle, String>),
    /// Profile exchange for a bridge.
    Profile(oneshot::Sender<(crate::sim::channel::Profile, String)>),
    /// Someone eavesdrops on us.
    EavesdropAdd(String),
    /// The channel we eavesdrop on is gone.
    EavesdropGone(String),
    /// `uuid_record <uuid> start|stop <path> [limit]`.
    Record {
        start: bool,
        path: String,
        limit: Option<Duration>,
        reply: oneshot::Sender<Result<(), String>>,
    },
}

/// A cloneable handle on a channel task.
#[derive(Clone)]
pub(crate) struct ChannelHandle {
    pub(crate) uuid: Arc<str>,
    name: Arc<str>,
    pub(crate) tx: mpsc::Sender<ChanMsg>,
    snap: Arc<Mutex<ChannelSnapshot>>,
}

impl ChannelHandle {
    pub(crate) fn snapshot(&self) -> ChannelSnapshot {
        lock(&self.snap).clone()
    }

    pub(crate) fn name(&self) -> String {
        self.name.to_string()
    }

    /// Sends, waiting for room (used for requests from the network).
    pub(crate) async fn send(&self, msg: ChanMsg) -> bool {
        self.tx.send(msg).await.is_ok()
    }

    /// Sends without waiting (channel-to-channel); a full mailbox drops it.
    pub(crate) fn try_send(&self, msg: ChanMsg) -> bool {
        match self.tx.try_send(msg) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(uuid = %self.uuid, "channel mailbox full; message dropped");
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    pub(crate) async fn getvar(&self, name: &str) -> Option<String> {
        let (tx, rx) = oneshot::channel();
        if !self.send(ChanMsg::GetVar(name.to_owned(), tx)).await {
            return None;
        }
        rx.await.ok().flatten()
    }
}

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

/// An application to run.
#[derive(Debug)]
pub(crate) struct ExecReq {
    pub(crate) app: String,
    pub(crate) arg: String,
    pub(crate) uuid: String,
    pub(crate) locked: bool,
    pub(crate) done: Option<oneshot::Sender<()>>,
    pub(crate) private: Option<PrivateMsg>,
    pub(crate) loops: Option<i64>,
}

impl ExecReq {
    pub(crate) fn new(app: &str, arg: &str) -> Self {
        Self {
            app: app.to_owned(),
            arg: arg.to_owned(),
            uuid: uuid::Uuid::new_v4().to_string(),
            locked: true,
            done: None,
            private: None,
            loops: None,
        }
    }
}

/// A `sendmsg` that waits behind an event-locked application: an execute,
/// or a hangup (FreeSWITCH queues both as private events, trace 10).
#[derive(Debug)]
pub(crate) enum Queued {
    Exec(ExecReq),
    Hangup(PrivateMsg),
}

/// What an originate waits for.
pub(crate) type OriginateResult = oneshot::Sender<Result<(), String>>;

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
    let (tx, rx) = mpsc::channel(MAILBOX);
    let handle = ChannelHandle {
        uuid: Arc::from(state.uuid.as_str()),
        name: Arc::from(state.name.as_str()),
        tx,
        snap: Arc::new(Mutex::new(state.snapshot(extra))),
    };
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
        waiting: VecDeque::new(),
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
        done: false,
        hangup_after_idle: false,
        killed: false,
        answer_ack: None,
        hangup_ack: None,
        hangup_reporting: None,
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
    waiting: VecDeque<Queued>,
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
    done: bool,
    hangup_after_idle: bool,
    /// Hung up from outside the channel's thread (`uuid_kill`).
    killed: bool,
    answer_ack: Option<oneshot::Receiver<()>>,
    /// Waiting for the loopback twin to fire its CHANNEL_HANGUP before we
    /// report (the cause to report with).
    hangup_ack: Option<oneshot::Receiver<()>>,
    hangup_reporting: Option<String>,
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
                self.st.state = crate::sim::channel::CState::ConsumeMedia;
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
                self.st.state = crate::sim::channel::CState::ConsumeMedia;
            }
            Role::LoopbackWithoutB => {}
            Role::LoopbackB { ext, .. } => {
                self.st.state = crate::sim::channel::CState::Execute;
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
        while !self.done {
            let deadline = self.next_deadline();
            tokio::select! {
                biased;
                () = shutdown.cancelled() => match self.st.hangup_cause.clone() {
                    // A hangup from outside waits for its frame: finish it
                    // now, or this branch (ready for good) spins forever.
                    Some(cause) => self.hangup_finish(&cause),
                    None => self.hangup("SYSTEM_SHUTDOWN", None),
                },
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
        let snap = self.st.snapshot(&self.extra);
        *lock(&self.me.snap) = snap;
    }

    fn hung_up(&self) -> bool {
        self.st.hangup_cause.is_some()
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

    /// The `answer` application. On a loopback `-b` leg the `-a` half
    /// answers (and its CHANNEL_ANSWER fires) first, as in trace 01: the app
    /// waits for the partner's acknowledgement before marking itself.
    fn answer_app(&mut self, frame: AppFrame) {
        if let Role::LoopbackB { partner, .. } = &self.role
            && !self.st.answered()
            && !self.hung_up()
        {
            let (tx, rx) = oneshot::channel();
            if partner.try_send(ChanMsg::PartnerAnswered(tx)) {
                self.answer_ack = Some(rx);
                let mut frame = frame;
                frame.kind = Kind::AnswerWait;
                self.stack.push(frame);
                return;
            }
        }
        self.answer();
        self.complete(frame);
    }

    fn answer_acked(&mut self) {
        self.answer_ack = None;
        if let Some(top) = self.stack.last()
            && matches!(top.kind, Kind::AnswerWait)
        {
            if top.app == "ring_ready" {
                self.ring_ready();
            } else {
                self.answer();
            }
            self.finish_top(false);
        }
    }

    /// Marks the channel ringing (CHANNEL_PROGRESS), once.
    fn ring_ready(&mut self) {
        if self.st.profile.progress == 0 && !self.hung_up() {
            self.st.profile.progress = now_micros();
            self.fire("CHANNEL_PROGRESS", at::PROGRESS, &[], &[]);
        }
    }

    /// Marks the channel answered (FreeSWITCH's mark_answered).
    fn answer(&mut self) {
        if self.st.answered() || self.hung_up() {
            return;
        }
        self.st.profile.answered = now_micros();
        self.st.answer_state = "answered";
        if self.st.profile.progress == 0 && matches!(self.role, Role::Remote(_)) {
            self.st.profile.progress = self.st.profile.answered;
        }
        if self.st.codec.is_none() && self.st.name.starts_with("sofia/") {
            // A sofia leg has no codec until SDP is negotiated: from the
            // answer on, its events carry the PCMU codec block and the
            // codec variables, as in trace 06.
            self.st.codec = Some("PCMU");
            for (n, v) in [
                ("rtp_use_codec_name", "PCMU"),
                ("rtp_use_codec_rate", "8000"),
                ("rtp_use_codec_ptime", "20"),
                ("rtp_use_codec_channels", "1"),
                ("read_codec", "PCMU"),
                ("original_read_codec", "PCMU"),
                ("read_rate", "8000"),
                ("original_read_rate", "8000"),
                ("write_codec", "PCMU"),
                ("write_rate", "8000"),
                ("dtmf_type", "rfc2833"),
            ] {
                self.st.vars.set(n, v);
            }
        }
        self.st.vars.set_keep("endpoint_disposition", "ANSWER");
        self.fire("CHANNEL_ANSWER", at::ANSWER, &[], &[]);
        self.st.call_state = "ACTIVE";
        if self.originate.is_some() {
            // The originate loop polls its legs every 20 ms: it sees the
            // answer (and flips the caller id, starts the application) on
            // its next pass, and a leg that hung up meanwhile fails the
            // originate with its cause (trace 08, the `socket` extension).
            self.schedule(self.core.cfg.park_delay, Timer::OriginatePoll);
        }
    }

    fn originate_succeeded(&mut self) {
        let Some(tx) = self.originate.take() else {
            return;
        };
        self.timers
            .retain(|(_, t)| !matches!(t, Timer::OriginateTimeout));
        // originate flips the caller id of the answered leg.
        let p = &mut self.st.profile;
        let orig = p.caller_id_number.clone();
        let callee = p.callee_id_number.clone().unwrap_or_default();
        p.caller_id_name = p.callee_id_name.take().or(Some("Outbound Call".into()));
        p.caller_id_number = callee;
        p.orig_caller_id_number = Some(orig.clone());
        p.callee_id_number = Some(orig.clone());
        self.st.vars.set("pre_transfer_caller_id_number", &orig);
        self.st.vars.set("channel_cid_flipped", "yes");
        let uuid = self.st.uuid.clone();
        self.st.vars.set("call_uuid", &uuid);
        let _ = tx.send(Ok(()));
        if let Some(app) = self.originate_app.take() {
            self.st.state = crate::sim::channel::CState::Execute;
            self.st.hit_dialplan = true;
            self.dialplan.push_back(app);
            self.run_dialplan = true;
            self.hangup_after_idle = true;
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
                    self.st.state = crate::sim::channel::CState::Routing;
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
                if !self.hung_up() {
                    self.hangup_begin(&cause, None);
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
                let can_run = self.top_open().unwrap_or(true);
                if done.is_none() && !(can_run && self.waiting.is_empty()) {
                    self.waiting.push_back(Queued::Hangup(pm));
                    return;
                }
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

    /// A sendmsg execute: run now, nest inside the running application, or
    /// wait behind an event-locked one (trace 09).
    fn submit(&mut self, req: ExecReq) {
        let can_run = self
            .top_open()
            .unwrap_or(self.dialplan.is_empty() || !self.run_dialplan);
        if can_run && self.waiting.is_empty() {
            self.exec(req);
        } else {
            self.waiting.push_back(Queued::Exec(req));
        }
    }

    /// Whether the running application lets another execute start now
    /// (`None`: nothing runs). A socket app that has not parked yet holds
    /// its messages until the next frame; a locked frame holds them unless
    /// it is one that runs "forever" (park, socket, echo, bridge,
    /// conference), which nested executes interrupt as in FreeSWITCH.
    fn top_open(&self) -> Option<bool> {
        let top = self.stack.last()?;
        let unparked_socket = matches!(top.kind, Kind::Socket)
            && self.socket.as_ref().is_some_and(|s| s.1)
            && !self.parked;
        Some(
            !unparked_socket
                && (!top.locked
                    || matches!(
                        top.kind,
                        Kind::Park
                            | Kind::Socket
                            | Kind::Echo
                            | Kind::Bridged
                            | Kind::Conference { .. }
                    )),
        )
    }

    /// Starts whatever can start: waiting executes, then dialplan steps.
    fn pump(&mut self) {
        loop {
            if self.hung_up() || self.done {
                return;
            }
            let top_open = self.top_open().unwrap_or(true);
            if top_open && let Some(q) = self.waiting.pop_front() {
                match q {
                    Queued::Exec(req) => self.exec(req),
                    Queued::Hangup(pm) => self.hangup(&normalize_cause(&pm.hangup_cause), Some(pm)),
                }
                continue;
            }
            if self.stack.is_empty() && self.run_dialplan {
                if let Some(req) = self.dialplan.pop_front() {
                    self.exec(req);
                    continue;
                }
                if self.hangup_after_idle && self.waiting.is_empty() && self.bridged.is_none() {
                    self.hangup("NORMAL_CLEARING", None);
                }
            }
            // Back in the socket's park loop with its connection gone: it
            // notices on its next frame.
            if self.socket_closed.is_some()
                && matches!(self.stack.last().map(|f| &f.kind), Some(Kind::Socket))
            {
                self.schedule_frame();
            }
            return;
        }
    }

    /// A nested application pauses the timed one below it (trace 09: the
    /// outer playback finishes after the inner one, by its remaining time).
    /// A recording keeps recording.
    fn pause_top(&mut self) {
        let now = Instant::now();
        if let Some(f) = self.stack.last_mut()
            && let Kind::Timed { until, left, .. } = &mut f.kind
            && let Some(u) = until.take()
        {
            *left = Some(u.saturating_duration_since(now));
        }
    }

    fn resume_top(&mut self) {
        let now = Instant::now();
        if let Some(f) = self.stack.last_mut()
            && let Kind::Timed { until, left, .. } = &mut f.kind
            && let Some(l) = left.take()
        {
            *until = Some(now + l);
        }
    }

    /// `switch_core_session_exec`.
    fn exec(&mut self, req: ExecReq) {
        const APPS: &[&str] = &[
            "answer",
            "pre_answer",
            "ring_ready",
            "playback",
            "sleep",
            "park",
            "echo",
            "hangup",
            "sched_hangup",
            "set",
            "export",
            "unset",
            "socket",
            "eavesdrop",
            "record",
            "send_dtmf",
            "start_dtmf",
            "stop_dtmf",
            "info",
            "log",
            "bridge",
            "conference",
        ];
        let app = req.app.to_ascii_lowercase();
        if !APPS.contains(&app.as_str()) {
            // "Invalid Application": no CHANNEL_EXECUTE, the channel goes.
            tracing::warn!(uuid = %self.st.uuid, app = %req.app, "Invalid Application");
            if let Some(d) = req.done {
                let _ = d.send(());
            }
            self.hangup("DESTINATION_OUT_OF_ORDER", req.private);
            return;
        }
        if let Some(loops) = req.loops {
            self.st.vars.set("current_loop", "1");
            self.st.vars.set("total_loops", &loops.to_string());
        }
        self.st.vars.set("current_application_data", &req.arg);
        self.st.vars.set("current_application", &app);
        self.st.vars.unset("current_application_response");
        self.last_app = Some((app.clone(), req.arg.clone()));
        let fields = app_fields(&app, &req.arg, None, &req.uuid);
        self.fire("CHANNEL_EXECUTE", at::EXECUTE, &[], &fields);
        self.pause_top();
        let mut frame = AppFrame {
            app: app.clone(),
            arg: req.arg.clone(),
            uuid: req.uuid,
            locked: req.locked,
            kind: Kind::Park,
            done: req.done,
            private: req.private,
        };
        let arg = req.arg.trim().to_owned();
        let now = Instant::now();
        let timed = |d: Option<Duration>, playback: bool| Kind::Timed {
            until: d.map(|d| now + d),
            left: None,
            started: now,
            playback,
        };
        match app.as_str() {
            "answer" => return self.answer_app(frame),
            "pre_answer" => {
                if self.st.profile.progress_media == 0 {
                    self.st.profile.progress_media = now_micros();
                    self.fire("CHANNEL_PROGRESS_MEDIA", at::PROGRESS_MEDIA, &[], &[]);
                }
                return self.complete(frame);
            }
            "ring_ready" => {
                // On a loopback `-b` leg the `-a` half rings first (mod_loopback
                // passes the indication on before the leg marks itself, trace
                // 14): wait for its acknowledgement, as `answer` does.
                if let Role::LoopbackB { partner, .. } = &self.role
                    && self.st.profile.progress == 0
                {
                    let (tx, rx) = oneshot::channel();
                    if partner.try_send(ChanMsg::PartnerRinging(tx)) {
                        self.answer_ack = Some(rx);
                        frame.kind = Kind::AnswerWait;
                        self.stack.push(frame);
                        return;
                    }
                }
                self.ring_ready();
                return self.complete(frame);
            }
            "set" | "export" => {
                if let Some((n, v)) = arg.split_once('=') {
                    self.st.vars.set(n, v);
                    if app == "export" {
                        self.st.vars.set("export_vars", n);
                    }
                }
                return self.complete(frame);
            }
            "unset" => {
                self.st.vars.unset(&arg);
                return self.complete(frame);
            }
            "info" | "log" | "start_dtmf" | "stop_dtmf" => return self.complete(frame),
            "send_dtmf" => {
                let digits = arg.split('@').next().unwrap_or("").to_owned();
                self.send_dtmf(&digits);
                return self.complete(frame);
            }
            "hangup" => {
                let cause = if arg.is_empty() {
                    "NORMAL_CLEARING".to_owned()
                } else {
                    normalize_cause(&arg)
                };
                self.stack.push(frame);
                self.hangup(&cause, None);
                return;
            }
            "sched_hangup" => {
                let Some(cause) = crate::sim::sched::app(&self.core, &self.me, &arg) else {
                    return self.complete(frame);
                };
                self.stack.push(frame);
                self.hangup(&cause, None);
                return;
            }
            "sleep" => {
                let ms: u64 = arg.parse().unwrap_or(0);
                frame.kind = timed(Some(Duration::from_millis(ms)), false);
            }
            "playback" => {
                let len = play_length(
                    &arg,
                    self.core.cfg.media_dir.as_deref(),
                    self.core.cfg.file_play_time,
                );
                match len {
                    PlayLength::NotFound => {
                        self.st
                            .vars
                            .set("current_application_response", "FILE NOT FOUND");
                        return self.complete(frame);
                    }
                    PlayLength::For(d) => frame.kind = timed(Some(d), true),
                    PlayLength::Forever => frame.kind = timed(None, true),
                }
                self.extra.playing = Some(arg.clone());
                self.fire(
                    "PLAYBACK_START",
                    at::PLAYBACK_START,
                    &[],
                    &[
                        ("Playback-File-Type", file_type(&arg)),
                        ("Playback-File-Path", &arg),
                    ],
                );
            }
            "park" => {
                frame.kind = Kind::Park;
                self.stack.push(frame);
                self.fire("CHANNEL_PARK", at::PARK, &[], &[]);
                return;
            }
            "echo" => frame.kind = Kind::Echo,
            "socket" => {
                frame.kind = Kind::Socket;
                let mut parts = arg.split(' ').filter(|s| !s.is_empty());
                let addr = parts.next().unwrap_or("").to_owned();
                let (mut asynchronous, mut full) = (false, false);
                for p in parts {
                    asynchronous |= p.eq_ignore_ascii_case("async");
                    full |= p.eq_ignore_ascii_case("full");
                }
                let host = addr
                    .rsplit_once(':')
                    .map_or(addr.as_str(), |(h, _)| h)
                    .to_owned();
                self.st.vars.set("socket_host", &host);
                self.stack.push(frame);
                outbound::spawn(self.core.clone(), self.me.clone(), addr, asynchronous, full);
                return;
            }
            "eavesdrop" => {
                frame.kind = Kind::Eavesdrop;
                match self.core.channel(&arg) {
                    Some(target) if arg != self.st.uuid => {
                        target.try_send(ChanMsg::EavesdropAdd(self.st.uuid.clone()));
                        self.extra.eavesdrop = Some(EavesdropSnapshot {
                            target: arg.clone(),
                            mode: EavesdropMode::ListenOnly,
                        });
                    }
                    _ => return self.complete(frame),
                }
            }
            "record" => {
                let mut parts = arg.split_whitespace();
                let file = parts.next().unwrap_or("").to_owned();
                let limit = parts
                    .next()
                    .and_then(|s| s.parse::<u64>().ok())
                    .filter(|&s| s > 0);
                let path = self.record_path(&file);
                self.extra.recording = Some(path.display().to_string());
                self.fire(
                    "RECORD_START",
                    at::RECORD_START,
                    &[],
                    &[("Record-File-Path", &path.display().to_string())],
                );
                frame.kind = Kind::Record {
                    path,
                    started: now,
                    until: limit.map(|s| now + Duration::from_secs(s)),
                };
            }
            "conference" => {
                // `name[@profile][+flags{…}]`: the name is what counts.
                let name = arg.split(['@', '+']).next().unwrap_or_default().to_owned();
                if name.is_empty() || self.hung_up() {
                    return self.complete(frame);
                }
                let member = {
                    let mut confs = lock(&self.core.conferences);
                    let conf = confs.entry(name.clone()).or_insert_with(|| Conference {
                        uuid: uuid::Uuid::new_v4().to_string(),
                        ..Conference::default()
                    });
                    conf.last_id += 1;
                    conf.members.push(ConferenceMember {
                        id: conf.last_id,
                        channel: self.me.clone(),
                    });
                    conf.last_id
                };
                self.st.vars.set("conference_name", &name);
                self.st
                    .vars
                    .set("conference_member_id", &member.to_string());
                frame.kind = Kind::Conference {
                    name: name.clone(),
                    member,
                };
                self.stack.push(frame);
                self.conference_event(&name, member, "add-member", false);
                return;
            }
            "bridge" => {
                frame.kind = Kind::Bridged;
                match self.core.channel(&arg) {
                    Some(other) if !self.hung_up() => {
                        self.stack.push(frame);
                        self.bridge_to(other);
                        return;
                    }
                    // A dial string: dial it (without an application), and
                    // bridge when it answers (BridgeDialled).
                    None if arg.contains('/') => {
                        self.stack.push(frame);
                        let core = self.core.clone();
                        let me = self.me.clone();
                        self.core.tasks.spawn(async move {
                            let result = crate::sim::api::originate_leg(&core, &arg).await;
                            let leg = result.as_ref().ok().cloned();
                            if !me.send(ChanMsg::BridgeDialled(result)).await
                                && let Some(leg) = leg
                            {
                                // The caller is gone: nobody to bridge to.
                                leg.send(ChanMsg::Hangup("ORIGINATOR_CANCEL".into())).await;
                            }
                        });
                        return;
                    }
                    _ => {
                        self.st
                            .vars
                            .set("originate_disposition", "CHAN_NOT_IMPLEMENTED");
                        return self.complete(frame);
                    }
                }
            }
            _ => {}
        }
        self.stack.push(frame);
    }

    fn record_path(&self, file: &str) -> std::path::PathBuf {
        let p = std::path::Path::new(file);
        match &self.core.cfg.recordings_dir {
            Some(dir) if p.is_relative() => dir.join(p),
            _ => p.to_path_buf(),
        }
    }

    /// Ends the application on top of the stack (`interrupted`: cut short by
    /// a hangup or break).
    fn finish_top(&mut self, interrupted: bool) {
        let Some(frame) = self.stack.pop() else {
            return;
        };
        match &frame.kind {
            Kind::Timed {
                started, playback, ..
            } if *playback => {
                let ms = started.elapsed().as_millis() as u64;
                let ms = if interrupted { ms } else { ms.max(1) };
                let samples = (ms * 8).to_string();
                self.extra.playing = None;
                self.st.vars.set("playback_last_offset_pos", &samples);
                self.st
                    .vars
                    .set("playback_seconds", &(ms / 1000).to_string());
                self.st.vars.set("playback_ms", &ms.to_string());
                self.st.vars.set("playback_samples", &samples);
                let status = if interrupted && !self.hung_up() {
                    "break"
                } else {
                    "done"
                };
                self.fire(
                    "PLAYBACK_STOP",
                    at::PLAYBACK_STOP,
                    &[],
                    &[
                        ("Playback-File-Type", file_type(&frame.arg)),
                        ("Playback-File-Path", &frame.arg),
                        ("Playback-Status", status),
                    ],
                );
                // Killed from outside (`uuid_kill`), the playback's read
                // fails and it reports an error; a hangup on its own thread
                // (a sendmsg, nested) lets it finish cleanly (traces 11, 12).
                let response = if self.killed {
                    "PLAYBACK ERROR"
                } else {
                    "FILE PLAYED"
                };
                self.st.vars.set("current_application_response", response);
            }
            // A static socket never parked, so it does not unpark.
            Kind::Park | Kind::Socket
                if matches!(frame.kind, Kind::Park)
                    || self.socket.as_ref().is_some_and(|s| s.1) =>
            {
                self.fire("CHANNEL_UNPARK", at::UNPARK, &[], &[]);
            }
            Kind::Eavesdrop => self.extra.eavesdrop = None,
            Kind::Conference { name, member } => {
                let (name, member) = (name.clone(), *member);
                {
                    let mut confs = lock(&self.core.conferences);
                    if let Some(conf) = confs.get_mut(&name) {
                        conf.members.retain(|m| m.id != member);
                        if conf.members.is_empty() {
                            confs.remove(&name);
                        }
                    }
                }
                self.conference_event(&name, member, "del-member", false);
                self.st.vars.set("current_application_response", "_none_");
            }
            Kind::Record { path, started, .. } => {
                let ms = started.elapsed().as_millis() as u64;
                let stereo = self.st.vars.get("RECORD_STEREO").is_some_and(is_true);
                self.core.tasks.spawn(write_recording(
                    path.clone(),
                    ms,
                    if stereo { 2 } else { 1 },
                ));
                self.extra.recording = None;
                self.st.vars.set("record_ms", &ms.to_string());
                self.st.vars.set("record_samples", &(ms * 8).to_string());
                self.fire(
                    "RECORD_STOP",
                    at::RECORD_STOP,
                    &[],
                    &[("Record-File-Path", &path.display().to_string())],
                );
                self.st.vars.set("current_application_response", "success");
            }
            _ => {}
        }
        self.complete(frame);
    }

    /// CHANNEL_EXECUTE_COMPLETE (and PRIVATE_COMMAND for a sendmsg).
    fn complete(&mut self, frame: AppFrame) {
        let response = self
            .st
            .vars
            .get("current_application_response")
            .unwrap_or("_none_")
            .to_owned();
        let fields = app_fields(&frame.app, &frame.arg, Some(&response), &frame.uuid);
        self.fire(
            "CHANNEL_EXECUTE_COMPLETE",
            at::EXECUTE_COMPLETE,
            &[],
            &fields,
        );
        if let Some(d) = frame.done {
            let _ = d.send(());
        }
        if let Some(pm) = &frame.private {
            self.fire_private(pm);
        }
        self.resume_top();
    }

    fn break_media(&mut self, all: bool) {
        loop {
            let breakable = self.stack.last().is_some_and(|f| {
                matches!(
                    f.kind,
                    Kind::Timed { playback: true, .. } | Kind::Timed { .. } | Kind::Record { .. }
                )
            });
            if !breakable {
                break;
            }
            self.finish_top(true);
            if !all {
                break;
            }
        }
        // `uuid_break <uuid> all` also flushes the channel's queued private
        // events (mod_commands' break_function): a sendmsg hangup or execute
        // waiting behind the broken application is dropped, never run
        // (trace 10). A plain break lets the next one run.
        if all {
            for w in self.waiting.drain(..) {
                if let Queued::Exec(ExecReq { done: Some(d), .. }) = w {
                    let _ = d.send(());
                }
            }
            self.pending_private.clear();
        }
    }

    fn queue_dtmf(&mut self, digits: &str) {
        if self.hung_up() {
            return;
        }
        // A static socket holds the channel thread: nothing reads DTMF (07).
        if self.socket.as_ref().is_some_and(|s| !s.1)
            && self.stack.iter().any(|f| matches!(f.kind, Kind::Socket))
        {
            return;
        }
        self.dtmf_in
            .extend(digits.chars().filter(|c| !c.is_whitespace()));
        if self.dtmf_due.is_none() && !self.dtmf_in.is_empty() {
            self.dtmf_due = Some(Instant::now() + Duration::from_millis(20));
        }
    }

    fn next_dtmf(&mut self) {
        let Some(d) = self.dtmf_in.pop_front() else {
            self.dtmf_due = None;
            return;
        };
        self.dtmf_due =
            (!self.dtmf_in.is_empty()).then(|| Instant::now() + Duration::from_millis(20));
        let digit = d.to_string();
        self.extra.received_dtmf.push(d);
        let source = match self.role {
            Role::Remote(_) => "RTP",
            _ => "APP",
        };
        self.fire(
            "DTMF",
            at::DTMF,
            &[],
            &[
                ("DTMF-Digit", &digit),
                ("DTMF-Duration", "2000"),
                ("DTMF-Source", source),
            ],
        );
        let digits = self
            .st
            .vars
            .get("digits_dialed")
            .filter(|d| *d != "none")
            .unwrap_or("")
            .to_owned();
        self.st
            .vars
            .set_keep("digits_dialed", &format!("{digits}{d}"));
        // Eavesdrop's DTMF controls (switch_ivr_async.c).
        if let Some(ed) = &mut self.extra.eavesdrop {
            match d {
                '0' => ed.mode = EavesdropMode::ListenOnly,
                '1' => ed.mode = EavesdropMode::PartnerHears,
                '2' => ed.mode = EavesdropMode::TargetHears,
                '3' => ed.mode = EavesdropMode::BothHear,
                '*' => {
                    if let Some(i) = self
                        .stack
                        .iter()
                        .rposition(|f| matches!(f.kind, Kind::Eavesdrop))
                    {
                        while self.stack.len() > i + 1 {
                            self.finish_top(true);
                        }
                        self.finish_top(true);
                    }
                }
                _ => {}
            }
        }
        // Barge-in on a playback started with playback_terminators.
        if let Some(terms) = self.st.vars.get("playback_terminators").map(str::to_owned)
            && (terms.contains(d) || terms == "any")
            && matches!(
                self.stack.last().map(|f| &f.kind),
                Some(Kind::Timed { playback: true, .. })
            )
        {
            self.finish_top(true);
        }
    }

    fn send_dtmf(&mut self, digits: &str) {
        self.extra.sent_dtmf.push_str(digits);
        let partner = match &self.role {
            Role::LoopbackA { partner } | Role::LoopbackB { partner, .. } => Some(partner.clone()),
            Role::Remote(_) | Role::LoopbackWithoutB => None,
        };
        if let Some(p) = partner.or_else(|| self.bridged.clone()) {
            p.try_send(ChanMsg::FarDtmf(digits.to_owned()));
        }
    }

    fn start_media_bug(&mut self, file: &str, limit: Option<Duration>) -> Result<(), String> {
        if self.hung_up() {
            return Err("-ERR channel is hung up\n".into());
        }
        if self.record.is_some() {
            self.stop_media_bug();
        }
        let path = self.record_path(file);
        let now = Instant::now();
        self.extra.recording = Some(path.display().to_string());
        self.fire(
            "RECORD_START",
            at::RECORD_START,
            &[],
            &[("Record-File-Path", &path.display().to_string())],
        );
        self.record = Some(MediaBug {
            display: path.display().to_string(),
            path,
            started: now,
            until: limit.map(|l| now + l),
        });
        if let Some(l) = limit {
            self.schedule(l, Timer::RecordLimit);
        }
        Ok(())
    }

    fn stop_media_bug(&mut self) {
        let Some(bug) = self.record.take() else {
            return;
        };
        self.timers
            .retain(|(_, t)| !matches!(t, Timer::RecordLimit));
        let ms = bug.started.elapsed().as_millis() as u64;
        let stereo = self.st.vars.get("RECORD_STEREO").is_some_and(is_true);
        self.core
            .tasks
            .spawn(write_recording(bug.path, ms, if stereo { 2 } else { 1 }));
        self.extra.recording = None;
        self.st.vars.set("record_ms", &ms.to_string());
        self.fire(
            "RECORD_STOP",
            at::RECORD_STOP,
            &[],
            &[("Record-File-Path", &bug.display)],
        );
    }

    /// `uuid_bridge` / `bridge`: this channel joins `other`.
    /// A `conference::maintenance` event for this member
    /// (conference_member_add_event_data: conference, channel, member).
    fn conference_event(&self, name: &str, member: u32, action: &str, muted: bool) {
        let (size, uuid) = {
            let confs = lock(&self.core.conferences);
            confs
                .get(name)
                .map_or((0, String::new()), |c| (c.members.len(), c.uuid.clone()))
        };
        let mut e = Event::default();
        e.push_header("Event-Subclass", "conference::maintenance");
        e.push_header("Event-Name", "CUSTOM");
        self.core.info.push_core(
            &mut e,
            crate::sim::event::origin(
                "mod_conference.c",
                "conference_member_add_event_data",
                "1045",
            ),
        );
        e.push_header("Conference-Name", name);
        e.push_header("Conference-Size", &size.to_string());
        e.push_header("Conference-Ghosts", "0");
        e.push_header("Conference-Profile-Name", "default");
        e.push_header("Conference-Unique-ID", &uuid);
        self.st.push_data(&mut e, true);
        let speak = if muted { "false" } else { "true" };
        for (n, v) in [
            ("Hear", "true"),
            ("See", "true"),
            ("Speak", speak),
            ("Talking", "false"),
            ("Mute-Detect", "false"),
        ] {
            e.push_header(n, v);
        }
        e.push_header("Member-ID", &member.to_string());
        e.push_header("Member-Type", "member");
        e.push_header("Member-Ghost", "false");
        e.push_header("Energy-Level", "100");
        e.push_header("Current-Energy", "0");
        e.push_header("Action", action);
        self.core.fire(e);
    }

    /// The `conference` API acting on this channel's membership.
    fn conference_op(&mut self, op: ConferenceOp) {
        let Some(i) = self
            .stack
            .iter()
            .rposition(|f| matches!(f.kind, Kind::Conference { .. }))
        else {
            return;
        };
        let Kind::Conference { name, member } = &self.stack[i].kind else {
            return;
        };
        let (name, member) = (name.clone(), *member);
        match op {
            ConferenceOp::Mute => {
                self.extra.conference_muted = true;
                self.conference_event(&name, member, "mute-member", true);
            }
            ConferenceOp::Unmute => {
                self.extra.conference_muted = false;
                self.conference_event(&name, member, "unmute-member", false);
            }
            ConferenceOp::Kick => {
                let muted = self.extra.conference_muted;
                self.conference_event(&name, member, "kick-member", muted);
                // The application returns; whatever was nested inside ends
                // with it.
                while self.stack.len() > i + 1 {
                    self.finish_top(true);
                }
                self.finish_top(false);
            }
        }
    }

    /// The `bridge` application joins this channel (the originator) to
    /// `other`.
    fn bridge_to(&mut self, other: ChannelHandle) {
        let mine = (self.st.profile.clone(), self.st.uuid.clone());
        other.try_send(ChanMsg::Bridge {
            other: self.me.clone(),
            other_profile: Some(Box::new(mine)),
            originator: false,
            transfer: false,
        });
        self.bridge(other, None, true, false);
    }

    /// The outcome of the leg a `bridge <dial string>` dialled.
    fn bridge_dialled(&mut self, result: Result<ChannelHandle, String>) {
        let waiting = !self.hung_up()
            && self.bridged.is_none()
            && matches!(self.stack.last().map(|f| &f.kind), Some(Kind::Bridged));
        match result {
            Ok(other) if waiting => self.bridge_to(other),
            Ok(other) => {
                other.try_send(ChanMsg::Hangup("ORIGINATOR_CANCEL".into()));
            }
            Err(cause) => {
                if !waiting {
                    return;
                }
                // switch_ivr_originate's dispositions; the application
                // returns and the dialplan (or the socket) carries on.
                let status = match cause.as_str() {
                    "USER_BUSY" => "BUSY",
                    "NO_ANSWER" | "NO_USER_RESPONSE" | "ALLOTTED_TIMEOUT" => "NOANSWER",
                    "ORIGINATOR_CANCEL" => "CANCEL",
                    "UNALLOCATED_NUMBER" | "INVALID_NUMBER_FORMAT" => "INVALIDARGS",
                    _ => "CHANUNAVAIL",
                };
                self.st.vars.set("originate_disposition", &cause);
                self.st.vars.set("DIALSTATUS", status);
                self.st.vars.set("last_bridge_hangup_cause", &cause);
                self.finish_top(false);
            }
        }
    }

    fn bridge(
        &mut self,
        other: ChannelHandle,
        other_profile: Option<Box<(crate::sim::channel::Profile, String)>>,
        originator: bool,
        transfer: bool,
    ) {
        if self.hung_up() {
            return;
        }
        if !transfer {
            // The `bridge` application: no transfer, no state dance; the
            // called leg leaves its originate wait and exchanges media.
            self.st.other = other_profile.map(|b| *b).map(|(profile, uuid)| OtherLeg {
                kind: if originator {
                    "originatee"
                } else {
                    "originator"
                },
                uuid,
                profile,
            });
            self.st.vars.set("bridge_channel", &other.name());
            self.st.vars.set("bridge_uuid", &other.uuid);
            self.st.vars.set("signal_bond", &other.uuid);
            let uuid = other.uuid.to_string();
            self.join_bridge(other, uuid, originator);
            return;
        }
        // switch_ivr_uuid_bridge records the transfer, sets the other leg's
        // profile and asks for CS_HIBERNATE before the channel thread
        // leaves its applications: UNPARK and the socket's
        // EXECUTE_COMPLETE already carry them, with Channel-State-Number 8
        // while Channel-State still says CS_EXECUTE (trace 04).
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let source = format!("{epoch}:{}:uuid_br:{}", uuid::Uuid::new_v4(), other.uuid);
        self.st.vars.set("transfer_history", &source);
        self.st.vars.set("transfer_source", &source);
        self.st.profile.transfer_source = Some(source);
        self.st.profile.profile_index += 1;
        self.st.other = other_profile.map(|b| *b).map(|(profile, uuid)| OtherLeg {
            kind: if originator {
                "originatee"
            } else {
                "originator"
            },
            uuid,
            profile,
        });
        self.st.requested_state = Some(crate::sim::channel::CState::Hibernate);
        while let Some(f) = self.stack.last() {
            if matches!(f.kind, Kind::Bridged) {
                break;
            }
            self.finish_top(true);
        }
        self.st.requested_state = None;
        self.dialplan.clear();
        for s in [
            crate::sim::channel::CState::Hibernate,
            crate::sim::channel::CState::Reset,
            crate::sim::channel::CState::SoftExecute,
        ] {
            self.st.state = s;
            self.fire("CHANNEL_STATE", at::STATE, &[], &[]);
        }
        self.st.vars.set("bridge_channel", &other.name());
        self.st.vars.set("bridge_uuid", &other.uuid);
        self.st.vars.set("signal_bond", &other.uuid);
        let uuid = other.uuid.to_string();
        let exec_at = if originator {
            at::BRIDGE_EXECUTE
        } else {
            crate::sim::event::origin("switch_ivr_bridge.c", "uuid_bridge_on_soft_execute", "1243")
        };
        self.fire(
            "CHANNEL_EXECUTE",
            exec_at,
            &[],
            &[("Application", "uuid_bridge"), ("Application-Data", &uuid)],
        );
        self.join_bridge(other, uuid, originator);
    }

    /// Records the bridge and fires what each side of it sees: the
    /// originator CHANNEL_BRIDGE, the other leg a state change.
    fn join_bridge(&mut self, other: ChannelHandle, uuid: String, originator: bool) {
        self.extra.bridged_to = Some(uuid.clone());
        self.bridged = Some(other);
        if originator {
            self.st.profile.bridged = now_micros();
            let me = self.st.uuid.clone();
            self.fire(
                "CHANNEL_BRIDGE",
                at::BRIDGE,
                &[("Bridge-A-Unique-ID", &me), ("Bridge-B-Unique-ID", &uuid)],
                &[],
            );
        } else {
            self.st.state = crate::sim::channel::CState::ExchangeMedia;
            self.fire("CHANNEL_STATE", at::STATE, &[], &[]);
        }
    }

    fn partner_gone(&mut self, uuid: &str, cause: &str) {
        if self.hung_up() {
            // The twin that began our hangup has finished its own: ours
            // runs now if we are answered (media wakes the channel thread),
            // on the next frame if we only ring (trace 14; answered, 04).
            let twin = match &self.role {
                Role::LoopbackA { partner } | Role::LoopbackB { partner, .. } => {
                    *partner.uuid == *uuid
                }
                Role::Remote(_) | Role::LoopbackWithoutB => false,
            };
            if twin && !self.done && self.hangup_reporting.is_none() {
                let cause = self
                    .st
                    .hangup_cause
                    .clone()
                    .unwrap_or_else(|| cause.to_owned());
                self.timers
                    .retain(|(_, t)| !matches!(t, Timer::HangupFinish(_)));
                let after = if self.st.answered() {
                    Duration::ZERO
                } else {
                    self.core.cfg.park_delay
                };
                self.schedule(after, Timer::HangupFinish(cause));
            }
            return;
        }
        let bridged_to_it = self
            .bridged
            .as_ref()
            .is_some_and(|b| b.uuid.as_ref() == uuid);
        if bridged_to_it {
            let was_originator = self.st.profile.bridged != 0;
            self.bridged = None;
            self.extra.bridged_to = None;
            self.st.vars.set("last_bridge_to", uuid);
            self.st.vars.set("last_bridge_hangup_cause", cause);
            self.st.vars.set("bridge_hangup_cause", cause);
            if was_originator {
                let me = self.st.uuid.clone();
                self.fire(
                    "CHANNEL_UNBRIDGE",
                    at::UNBRIDGE,
                    &[("Bridge-A-Unique-ID", &me), ("Bridge-B-Unique-ID", uuid)],
                    &[],
                );
                self.st.state = crate::sim::channel::CState::Execute;
                self.fire("CHANNEL_STATE", at::STATE, &[], &[]);
            }
            // hangup_after_bridge (the default).
            let bridge_app = self
                .stack
                .iter()
                .rposition(|f| matches!(f.kind, Kind::Bridged));
            if let Some(i) = bridge_app {
                while self.stack.len() > i + 1 {
                    self.finish_top(true);
                }
                self.finish_top(false);
            }
            self.hangup("NORMAL_CLEARING", None);
            return;
        }
        // Loopback partner: the pair goes down together, with its cause.
        self.hangup(cause, None);
    }

    /// The hangup sequence of FreeSWITCH, event for event (traces 02–05).
    /// A hangup on the channel's own thread (an application, a sendmsg,
    /// the far end): every event at once.
    fn hangup(&mut self, cause: &str, private: Option<PrivateMsg>) {
        if self.hung_up() {
            return;
        }
        self.hangup_begin(cause, private);
        self.hangup_finish(cause);
    }

    /// A hangup from outside (`uuid_kill`): FreeSWITCH fires CHANNEL_HANGUP
    /// in the caller's thread; the channel thread runs the hangup and
    /// reporting states when its media loop next wakes, a frame later, so
    /// the `api` reply precedes HANGUP_COMPLETE by ~20 ms (traces 01, 08).
    fn hangup_from_outside(&mut self, cause: &str) {
        if self.hung_up() {
            return;
        }
        self.killed = true;
        self.hangup_begin(cause, None);
        self.schedule(
            self.core.cfg.park_delay,
            Timer::HangupFinish(cause.to_owned()),
        );
    }

    fn hangup_begin(&mut self, cause: &str, private: Option<PrivateMsg>) {
        self.st.hangup_cause = Some(cause.to_owned());
        self.st.answer_state = "hangup";
        self.fire("CHANNEL_HANGUP", at::HANGUP, &[], &[]);
        for l in self.bound.drain(..) {
            l.channel_down();
        }
        if let Some((l, false)) = &self.socket {
            l.channel_down();
        }
        if let Some(pm) = &private {
            self.fire_private(pm);
        }
    }

    fn hangup_finish(&mut self, cause: &str) {
        if self.done || self.hangup_reporting.is_some() {
            return;
        }
        // Tell the others (the loopback twin further down).
        let me = self.st.uuid.clone();
        if let Some(b) = self.bridged.take() {
            b.try_send(ChanMsg::PartnerGone(me.clone(), cause.to_owned()));
        }
        for e in self.eavesdroppers.drain(..) {
            if let Some(h) = self.core.channel(&e) {
                h.try_send(ChanMsg::EavesdropGone(me.clone()));
            }
        }
        self.extra.eavesdrop = None;
        self.stop_media_bug();
        while !self.stack.is_empty() {
            self.finish_top(true);
        }
        for w in self.waiting.drain(..) {
            if let Queued::Exec(ExecReq { done: Some(d), .. }) = w {
                let _ = d.send(());
            }
        }
        self.dialplan.clear();
        self.timers.clear();
        self.dtmf_in.clear();
        self.dtmf_due = None;

        self.st.state = crate::sim::channel::CState::Hangup;
        self.fire("CHANNEL_STATE", at::STATE, &[], &[]);
        let old = self.st.call_state;
        self.st.call_state = "HANGUP";
        self.fire(
            "CHANNEL_CALLSTATE",
            at::CALLSTATE,
            &[],
            &[
                ("Original-Channel-Call-State", old),
                ("Channel-Call-State-Number", "10"),
            ],
        );
        // mod_loopback's on_hangup hangs the twin up from this thread: its
        // CHANNEL_HANGUP comes before our REPORTING (trace 14).
        self.hangup_reporting = Some(cause.to_owned());
        if let Some(p) = self.loopback_partner() {
            let (tx, rx) = oneshot::channel();
            if p.try_send(ChanMsg::PartnerHangup(cause.to_owned(), tx)) {
                self.hangup_ack = Some(rx);
                return;
            }
        }
        self.hangup_report();
    }

    fn loopback_partner(&self) -> Option<ChannelHandle> {
        match &self.role {
            Role::LoopbackA { partner } | Role::LoopbackB { partner, .. } => Some(partner.clone()),
            Role::Remote(_) | Role::LoopbackWithoutB => None,
        }
    }

    /// The reporting and destroy states that end a hangup.
    fn hangup_report(&mut self) {
        self.hangup_ack = None;
        let Some(cause) = self.hangup_reporting.clone() else {
            return;
        };
        let cause = cause.as_str();
        let me = self.st.uuid.clone();
        self.st.state = crate::sim::channel::CState::Reporting;
        self.fire("CHANNEL_STATE", at::STATE, &[], &[]);
        self.st.profile.hangup = now_micros();
        let last = self.last_app.clone();
        set_cdr_vars(
            &mut self.st,
            last.as_ref().map(|(a, b)| (a.as_str(), b.as_str())),
        );
        if matches!(self.role, Role::LoopbackA { .. } | Role::LoopbackB { .. }) {
            self.st.vars.set("is_loopback", "1");
        }
        let c = cause.to_owned();
        self.fire(
            "CHANNEL_HANGUP_COMPLETE",
            at::HANGUP_COMPLETE,
            &[("Hangup-Cause", &c)],
            &[],
        );
        // The loopback twin goes down after us: the leg that hung up first
        // reports HANGUP_COMPLETE first (traces 01, 04, 08).
        if let Some(p) = self.loopback_partner() {
            p.try_send(ChanMsg::PartnerGone(me, c.clone()));
        }
        if let Some((l, true)) = &self.socket {
            l.channel_down();
        }
        if let Some(tx) = self.originate.take() {
            let _ = tx.send(Err(c));
        }
        self.st.state = crate::sim::channel::CState::Destroy;
        self.fire("CHANNEL_STATE", at::STATE, &[], &[]);
        self.fire("CHANNEL_DESTROY", at::DESTROY, &[], &[]);
        self.done = true;
        self.publish();
    }
}

/// The application headers of CHANNEL_EXECUTE(_COMPLETE). An application
/// run without an argument (`answer` from the dialplan) has no
/// `Application-Data` header at all (trace 15).
fn app_fields<'a>(
    app: &'a str,
    arg: &'a str,
    response: Option<&'a str>,
    uuid: &'a str,
) -> Vec<(&'static str, &'a str)> {
    let mut v = vec![("Application", app)];
    if !arg.is_empty() {
        v.push(("Application-Data", arg));
    }
    if let Some(r) = response {
        v.push(("Application-Response", r));
    }
    v.push(("Application-UUID", uuid));
    v
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

/// The dialplan of a test extension (the `redswitch-test` context and the
/// number plan), as (application, argument) steps.
pub(crate) fn extension_steps(
    ext: &Extension,
    cfg: &crate::sim::SimConfig,
) -> Vec<(&'static str, String)> {
    let ring = cfg.ring_time;
    let ms = |d: Duration| d.as_millis().to_string();
    match ext {
        Extension::AnswerPark => vec![("answer", String::new()), ("park", String::new())],
        Extension::AnswerEcho => vec![("answer", String::new()), ("echo", String::new())],
        Extension::AnswerTone => vec![
            ("answer", String::new()),
            (
                "playback",
                format!("tone_stream://%({},0,440)", ms(cfg.answer_tone_time)),
            ),
            ("hangup", String::new()),
        ],
        Extension::Busy => vec![("hangup", "USER_BUSY".into())],
        Extension::NoAnswer => vec![
            ("sleep", ms(cfg.noanswer_time)),
            ("hangup", "NO_ANSWER".into()),
        ],
        Extension::Socket => vec![
            ("answer", String::new()),
            ("socket", format!("{} async full", cfg.socket_extension)),
        ],
        Extension::Plan(Outcome::Reject(cause)) => vec![("hangup", (*cause).into())],
        Extension::Plan(Outcome::RingForever) => {
            vec![("ring_ready", String::new()), ("park", String::new())]
        }
        Extension::Plan(Outcome::Answer) => vec![
            ("ring_ready", String::new()),
            ("sleep", ms(ring)),
            ("answer", String::new()),
            ("park", String::new()),
        ],
        Extension::Plan(Outcome::AnswerThenHangup(after)) => vec![
            ("ring_ready", String::new()),
            ("sleep", ms(ring)),
            ("answer", String::new()),
            ("sleep", ms(*after)),
            ("hangup", "NORMAL_CLEARING".into()),
        ],
        Extension::Plan(Outcome::AnswerThenDtmf(after, digits)) => vec![
            ("ring_ready", String::new()),
            ("sleep", ms(ring)),
            ("answer", String::new()),
            ("sleep", ms(*after)),
            ("send_dtmf", (*digits).into()),
            ("park", String::new()),
        ],
    }
}
