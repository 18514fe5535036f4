//! The FreeSWITCH simulator: a protocol-faithful stand-in for FreeSWITCH
//! 1.10, used by the tests, the demo and the benchmarks.
//!
//! It serves the inbound event socket ([`server`] + [`session`]), places
//! calls with `originate` ([`api`], [`dialstring`], [`numberplan`]), runs
//! each channel as a task ([`channel`]) that fires events laid out as the
//! recorded traces show ([`snapshot`], [`event`]), and for each leg whose
//! application is `socket(host:port …)` connects out and speaks the outbound
//! protocol ([`outbound`], which reuses [`session`]).
//!
//! The modules depend downwards only: `mailbox` (channel messages and
//! handles), `listener` (a connection as the event fan-out sees it) and
//! `text` are leaves; `channel` uses them and reaches the socket application
//! and `originate` only through `Core`'s `connect_socket` / `dial_leg`;
//! `api` starts channels; `session` runs commands; `outbound` runs a
//! session.
//!
//! # How calls end (traces 10–16)
//! - A `sendmsg` hangup is queued like an execute: behind an application
//!   executed with `event-lock: true` it waits until that application ends;
//!   `uuid_break <uuid> all` ends the application *and* drops the queued
//!   messages (mod_commands flushes the private events), so the hangup
//!   never runs (10); a plain `uuid_break` lets it run next. Without the
//!   lock it runs at once, nested in the running application (11).
//! - `uuid_kill` ends a channel whatever runs on it; a playback it cuts
//!   reports `PLAYBACK ERROR` (12). Of a channel already gone it answers
//!   `-ERR No such channel!`.
//! - `uuid_kill <origination_uuid> ORIGINATOR_CANCEL` on a ringing loopback
//!   originate ends both halves (the `-b` half's CHANNEL_HANGUP before the
//!   `-a` half's HANGUP_COMPLETE) and the originate answers
//!   `-ERR ORIGINATOR_CANCEL` (14).
//! - A closed outbound socket is noticed by the socket application's park
//!   loop only: while an application runs on top of it (event-locked or
//!   not) the channel lives on, until that application ends (never, for a
//!   `loops=-1` ringback: only `uuid_kill` ends it, 15); a parked channel
//!   hangs up (or resumes its dialplan with `resume`) on its next frame.
//! - A hangup while bridged with `uuid_bridge`: the bridging side (A) fires
//!   CHANNEL_UNBRIDGE right after its CHANNEL_HANGUP, the other side hangs
//!   up after the bridge (16).
//!
//! # Timing model
//! FreeSWITCH does much of its work on 20 ms media frames, and the traces
//! show it; the simulator reproduces that with one frame delay
//! ([`SimConfig::park_delay`]) measured from the triggering event of each
//! channel: an async `sendmsg` is parsed on the channel's next frame; a
//! socket that closed is noticed on the park loop's next frame (once no
//! application runs on top of it); `uuid_kill` fires
//! CHANNEL_HANGUP at once and the rest of the hangup a frame later; the
//! originate loop sees an answer a frame later; a bridged leg notices its
//! partner's hangup a frame later. FreeSWITCH's frames come from one global
//! clock, so two channels can land on the same tick; the simulator's
//! per-channel frames cannot (see trace 08's remaining difference in
//! `tests/fixtures_replay.rs`).
//!
//! # Known simplifications
//! - The order of events across channels follows the traces where they
//!   show it, but a teardown FreeSWITCH runs on several threads at once is
//!   serialised: after `uuid_bridge A B` and a hangup of A, the simulator's
//!   A unbridges at once where FreeSWITCH's waits for B (trace 16, see
//!   `tests/fixtures_replay.rs`).
//! - A dial string with several legs (`,`) or failover groups (`|`) dials
//!   only the first leg of the first group.
//! - Media is not real: playback and tones take their computed duration
//!   (`loops=-1` plays until broken); `record` writes a silent 8 kHz 16-bit
//!   WAV of the recorded length.
//! - `bridge <dial string>` dials the leg without an application and
//!   bridges when it answers; far-end DTMF on the dialled leg is also
//!   delivered to the leg that bridged (as DTMF events on its socket).
//! - `ignore_early_media` is accepted (it is set on the channel), but no
//!   simulated destination sends early media, so it changes nothing.
//! - Conferences (`conference <name>` application, `conference <name>
//!   list|mute|unmute|kick <id|all|last>` API) keep members and fire
//!   `conference::maintenance` events (add/del/mute/unmute/kick-member)
//!   with mod_conference's headers; there is no audio mixing, no floor or
//!   talking detection, and no recorded trace to check the events against.
//! - Log lines (`log <level>`) follow FreeSWITCH's text for a loopback
//!   originate (`sim::fslog`); other scenarios log a few lines only.
//! - Event filters whose value starts with `/` (regular expressions) are
//!   compared literally (case-insensitively), without the slashes.
//! - The local time zone in `Event-Date-Local` is UTC.
//! - Sessions per second are limited as FreeSWITCH limits them
//!   ([`throttle`]); the 1000-session maximum and `min-idle-cpu` are not.
//! - [`SimConfig::denied_api`] restricts every inbound connection; in
//!   FreeSWITCH `esl-allowed-api` restricts the users who log in with
//!   `userauth`, which the simulator does not implement.
//! - `sched_hangup` fires no `RE_SCHEDULE` events, and `sched_api`,
//!   `sched_transfer` and `sched_del` do not exist.
//! - Client input is read as `read_packet` does ([`packet`]), except that a
//!   `Content-Length` over [`SimConfig::max_packet_body`] closes the
//!   connection instead of being allocated.
//!
//! Use [`Simulator::start`] and the returned [`SimHandle`].

pub mod api;
pub mod channel;
pub mod dialstring;
pub mod event;
pub(crate) mod fslog;
pub(crate) mod listener;
pub(crate) mod mailbox;
pub mod numberplan;
pub mod outbound;
pub mod packet;
pub(crate) mod queue;
pub(crate) mod sched;
pub mod server;
pub mod session;
pub mod snapshot;
pub(crate) mod text;
pub mod throttle;
pub mod wav;

use crate::sim::event::{CoreInfo, FiredEvent};
use crate::sim::listener::{ListenerEntry, LogLine};
use crate::sim::mailbox::ChannelHandle;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How the simulator behaves. `Default` gives FreeSWITCH's defaults.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Where the inbound event socket listens (`127.0.0.1:0` for tests).
    pub esl_listen: SocketAddr,
    /// The event-socket password (`ClueCon`).
    pub password: String,
    /// How long a number of the plan rings before it answers ("rings
    /// briefly").
    pub ring_time: Duration,
    /// `FreeSWITCH-Hostname` / `FreeSWITCH-Switchname`.
    pub hostname: String,
    /// `FreeSWITCH-IPv4`.
    pub ipv4: String,
    /// `FreeSWITCH-IPv6`.
    pub ipv6: String,
    /// Gateways that exist; `None` accepts every gateway name except
    /// `nonexistent`.
    pub gateways: Option<Vec<String>>,
    /// Gateways that exist but whose far end does not respond: calls fail
    /// at once with `NORMAL_TEMPORARY_FAILURE` (trace 06, `sipp-dead`).
    pub down_gateways: Vec<String>,
    /// The sofia profile in gateway channel names (`sofia/<profile>/<number>`).
    pub sofia_profile: String,
    /// Where `playback` looks up relative file names. A file that does not
    /// exist there (or at its absolute path) fails with `FILE NOT FOUND`.
    pub media_dir: Option<PathBuf>,
    /// How long a media file plays (its content is not decoded).
    pub file_play_time: Duration,
    /// Where `record` with a relative path writes.
    pub recordings_dir: Option<PathBuf>,
    /// Events a connection may leave unread before events are dropped
    /// (FreeSWITCH's `MAX_QUEUE_LEN`, 100,000).
    pub event_queue_len: usize,
    /// Header-block size at which a client's packet is cut and parsed as
    /// it is (FreeSWITCH's `max_len` in `read_packet`, 10 MiB).
    pub max_packet_head: usize,
    /// Largest `Content-Length` a client may send; over it the connection
    /// closes (FreeSWITCH would try to allocate it).
    pub max_packet_body: usize,
    /// Dropped events after which the connection is killed (FreeSWITCH's
    /// `MAX_MISSED`, 500).
    pub max_missed: u32,
    /// A channel's media frame (20 ms): the delay between an outbound
    /// socket's `connect` and the channel parking (CHANNEL_PARK), and
    /// between an async `sendmsg` and the channel acting on it (the park
    /// and playback loops parse queued messages once per frame).
    pub park_delay: Duration,
    /// Where the `socket` test extension connects (`127.0.0.1:8084` in the
    /// recorded dialplan).
    pub socket_extension: String,
    /// Ring time of the `noanswer` test extension (3 s in the recording).
    pub noanswer_time: Duration,
    /// Tone length of the `answer-tone` test extension (30 s).
    pub answer_tone_time: Duration,
    /// FreeSWITCH's sessions-per-second limit (`sessions-per-second` in
    /// switch.conf.xml, 30 by default; `fsctl sps N` changes it at run
    /// time). Every channel counts, so a loopback originate costs two; see
    /// [`throttle`] for how FreeSWITCH counts.
    pub sessions_per_second: u32,
    /// API commands the event-socket user may not run: `api`/`bgapi` of
    /// one of them is answered `-ERR permission denied` (a command/reply),
    /// as mod_event_socket answers a user whose `esl-allowed-api` lists
    /// every other command. Empty (the default): every command is allowed.
    /// Applies to inbound connections; outbound sockets are not restricted.
    pub denied_api: Vec<String>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            esl_listen: SocketAddr::from(([127, 0, 0, 1], 8021)),
            password: "ClueCon".to_owned(),
            ring_time: Duration::from_millis(100),
            hostname: "redswitch-sim".to_owned(),
            ipv4: "127.0.0.1".to_owned(),
            ipv6: "::1".to_owned(),
            gateways: None,
            down_gateways: Vec::new(),
            sofia_profile: "external".to_owned(),
            media_dir: None,
            file_play_time: Duration::from_millis(500),
            recordings_dir: None,
            event_queue_len: 100_000,
            max_packet_head: packet::DEFAULT_MAX_PACKET_HEAD,
            max_packet_body: packet::DEFAULT_MAX_PACKET_BODY,
            max_missed: 500,
            park_delay: Duration::from_millis(20),
            socket_extension: "127.0.0.1:8084".to_owned(),
            noanswer_time: Duration::from_secs(3),
            answer_tone_time: Duration::from_secs(30),
            sessions_per_second: throttle::DEFAULT_SESSIONS_PER_SECOND,
            denied_api: Vec::new(),
        }
    }
}

/// Eavesdrop modes, as eavesdrop's DTMF controls set them
/// (switch_ivr_async.c): `0` listen only, `1` the target's partner hears the
/// eavesdropper, `2` the target hears, `3` both hear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EavesdropMode {
    /// `0` (and the initial mode): nobody hears the eavesdropper.
    ListenOnly,
    /// `1`: the target's bridged partner hears the eavesdropper.
    PartnerHears,
    /// `2`: the eavesdropped channel hears the eavesdropper.
    TargetHears,
    /// `3`: both hear.
    BothHear,
}

/// An eavesdrop in progress on a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EavesdropSnapshot {
    /// The uuid being eavesdropped.
    pub target: String,
    /// The current mode.
    pub mode: EavesdropMode,
}

/// A point-in-time view of a live channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelSnapshot {
    /// `Unique-ID`.
    pub uuid: String,
    /// `Channel-Name`.
    pub name: String,
    /// `Channel-State` (`CS_EXECUTE` …).
    pub state: String,
    /// Answered and not hung up.
    pub answered: bool,
    /// Channel variables.
    pub variables: BTreeMap<String, String>,
    /// The caller id the far end sees (`origination_caller_id_number`, or
    /// `0000000000`).
    pub caller_id_number: String,
    /// The dialled number or destination.
    pub destination: String,
    /// The uuid this channel is bridged to.
    pub bridged_to: Option<String>,
    /// An eavesdrop this channel runs.
    pub eavesdrop: Option<EavesdropSnapshot>,
    /// What is playing now.
    pub playing: Option<String>,
    /// The file being recorded now.
    pub recording: Option<String>,
    /// DTMF digits received (by `uuid_recv_dtmf` or from the far end).
    pub received_dtmf: String,
    /// DTMF digits sent to the far end (`send_dtmf`, `uuid_send_dtmf`).
    pub sent_dtmf: String,
    /// Set once the channel has hung up.
    pub hangup_cause: Option<String>,
}

/// A conference (the `conference` application): its members in joining
/// order. It exists while it has members.
#[derive(Default)]
pub(crate) struct Conference {
    /// `Conference-Unique-ID`.
    pub(crate) uuid: String,
    /// The last `Member-ID` handed out (they start at 1).
    pub(crate) last_id: u32,
    pub(crate) members: Vec<ConferenceMember>,
}

/// One channel in a conference.
pub(crate) struct ConferenceMember {
    pub(crate) id: u32,
    pub(crate) channel: ChannelHandle,
}

/// State shared by every task of one running simulator.
pub(crate) struct Core {
    pub(crate) cfg: SimConfig,
    pub(crate) info: CoreInfo,
    channels: Mutex<HashMap<String, ChannelHandle>>,
    /// mod_conference's conferences: name → members.
    pub(crate) conferences: Mutex<HashMap<String, Conference>>,
    listeners: Mutex<Vec<Arc<ListenerEntry>>>,
    /// Cancelled when the simulator stops: every task watches it.
    pub(crate) shutdown: CancellationToken,
    pub(crate) tasks: TaskTracker,
    started: Instant,
    sessions: AtomicU64,
    listener_ids: AtomicU64,
    /// The `socket` application's connection ([`outbound::spawn`]). A
    /// channel reaches the layers above it (the socket, `originate`) only
    /// through these two entries, so the channel tasks depend on neither.
    pub(crate) connect_socket: fn(Arc<Core>, ChannelHandle, String, bool, bool),
    /// Dials one leg for the `bridge` application ([`api::originate_leg`]).
    pub(crate) dial_leg: fn(Arc<Core>, String) -> DialFuture,
    /// The sessions-per-second budget and the counters of `status`.
    pub(crate) throttle: Mutex<throttle::Throttle>,
}

/// What [`Core::dial_leg`] returns: the answered leg, or its cause.
pub(crate) type DialFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<ChannelHandle, String>> + Send>>;

/// Locks a std mutex, recovering from poisoning: a panicked holder cannot
/// leave these maps half-updated (every update is a single insert/remove).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Core {
    fn new(cfg: SimConfig) -> Self {
        let info = CoreInfo::new(cfg.hostname.clone(), cfg.ipv4.clone(), cfg.ipv6.clone());
        let started = Instant::now();
        let throttle = throttle::Throttle::new(cfg.sessions_per_second, started);
        Self {
            cfg,
            info,
            channels: Mutex::new(HashMap::new()),
            conferences: Mutex::new(HashMap::new()),
            listeners: Mutex::new(Vec::new()),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            started,
            sessions: AtomicU64::new(0),
            listener_ids: AtomicU64::new(1),
            connect_socket: outbound::spawn,
            dial_leg: |core, dial| Box::pin(async move { api::originate_leg(&core, &dial).await }),
            throttle: Mutex::new(throttle),
        }
    }

    /// Delivers an event to every connection subscribed to it.
    pub(crate) fn fire(&self, event: crate::esl::Event) {
        let fired = Arc::new(FiredEvent::new(event));
        let listeners = lock(&self.listeners);
        for l in listeners.iter() {
            l.offer(&fired, self.cfg.max_missed);
        }
    }

    pub(crate) fn add_listener(&self, l: Arc<ListenerEntry>) {
        lock(&self.listeners).push(l);
    }

    pub(crate) fn remove_listener(&self, id: u64) {
        lock(&self.listeners).retain(|l| l.id != id);
    }

    pub(crate) fn next_listener_id(&self) -> u64 {
        self.listener_ids.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends a log line to every connection that asked for logs.
    pub(crate) fn log(&self, line: LogLine) {
        let line = Arc::new(line);
        for l in lock(&self.listeners).iter() {
            l.offer_log(&line);
        }
    }

    pub(crate) fn channel(&self, uuid: &str) -> Option<ChannelHandle> {
        lock(&self.channels).get(uuid).cloned()
    }

    pub(crate) fn insert_channel(&self, h: ChannelHandle) -> bool {
        let mut map = lock(&self.channels);
        if map.contains_key(h.uuid.as_ref()) {
            return false;
        }
        map.insert(h.uuid.to_string(), h);
        self.sessions.fetch_add(1, Ordering::Relaxed);
        let live = map.len();
        drop(map);
        lock(&self.throttle).created(live);
        true
    }

    pub(crate) fn remove_channel(&self, uuid: &str) {
        lock(&self.channels).remove(uuid);
    }

    pub(crate) fn channel_handles(&self) -> Vec<ChannelHandle> {
        lock(&self.channels).values().cloned().collect()
    }

    pub(crate) fn channel_count(&self) -> usize {
        lock(&self.channels).len()
    }

    pub(crate) fn sessions_since_startup(&self) -> u64 {
        self.sessions.load(Ordering::Relaxed)
    }

    pub(crate) fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// A fresh `session_id` for a channel.
    pub(crate) fn next_session_id(&self) -> u64 {
        self.sessions.load(Ordering::Relaxed) + 1
    }
}

/// Starts simulators.
pub struct Simulator;

impl Simulator {
    /// Binds the event socket and starts serving.
    pub async fn start(cfg: SimConfig) -> std::io::Result<SimHandle> {
        let listener = TcpListener::bind(cfg.esl_listen).await?;
        let addr = listener.local_addr()?;
        let mut cfg = cfg;
        cfg.esl_listen = addr;
        let core = Arc::new(Core::new(cfg));
        let task_core = core.clone();
        core.tasks
            .spawn(async move { server::run(listener, task_core).await });
        core.tasks.spawn(api::throttle_clock(core.clone()));
        Ok(SimHandle {
            inner: Arc::new(HandleInner { core, addr }),
        })
    }
}

struct HandleInner {
    core: Arc<Core>,
    addr: SocketAddr,
}

/// A running simulator. Cheap to clone; [`SimHandle::shutdown`] stops it.
#[derive(Clone)]
pub struct SimHandle {
    inner: Arc<HandleInner>,
}

impl SimHandle {
    /// The bound event-socket address.
    pub fn esl_addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// The configuration in use (with the bound address).
    pub fn config(&self) -> &SimConfig {
        &self.inner.core.cfg
    }

    /// Every live channel.
    pub fn channels(&self) -> Vec<ChannelSnapshot> {
        let mut v: Vec<_> = self
            .inner
            .core
            .channel_handles()
            .iter()
            .map(ChannelHandle::snapshot)
            .collect();
        v.sort_by(|a, b| a.uuid.cmp(&b.uuid));
        v
    }

    /// One live channel.
    pub fn channel(&self, uuid: &str) -> Option<ChannelSnapshot> {
        self.inner.core.channel(uuid).map(|h| h.snapshot())
    }

    /// Stops like FreeSWITCH shutting down: the listener closes, every
    /// connection gets a disconnect notice and is closed, every channel
    /// goes away. Waits until all tasks have ended.
    pub async fn shutdown(self) {
        let core = &self.inner.core;
        core.shutdown.cancel();
        core.tasks.close();
        core.tasks.wait().await;
    }

    /// Shuts down, then starts a fresh simulator with the same configuration
    /// on the same address (for reconnect tests).
    pub async fn restart(self) -> std::io::Result<SimHandle> {
        let cfg = self.inner.core.cfg.clone();
        self.shutdown().await;
        // The port was just released; binding may race the kernel briefly.
        let mut tries = 0;
        loop {
            match Simulator::start(cfg.clone()).await {
                Ok(h) => return Ok(h),
                Err(e) if tries < 50 && e.kind() == std::io::ErrorKind::AddrInUse => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}
