//! A channel's mailbox: the messages a channel task handles and the handle
//! others hold to send them. This is the vocabulary shared by the channel
//! tasks ([`crate::sim::channel`]), the commands that act on channels
//! ([`crate::sim::api`], [`crate::sim::session`]) and the socket
//! application ([`crate::sim::outbound`]); it depends on none of them.

use crate::esl::Event;
use crate::sim::listener::ListenerEntry;
use crate::sim::packet::Packet;
use crate::sim::snapshot::Profile;
use crate::sim::text::{atoi, is_true};
use crate::sim::{ChannelSnapshot, lock};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

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
            loops: h("loops").map_or(1, |l| atoi(&l).max(1)),
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
        other_profile: Option<Box<(Profile, String)>>,
        originator: bool,
        transfer: bool,
    },
    /// `conference <name> mute|unmute|kick <member>` for this member.
    ConferenceOp(ConferenceOp),
    /// The leg the `bridge` application dialled answered, or failed with a
    /// cause.
    BridgeDialled(Result<ChannelHandle, String>),
    /// Profile exchange for a bridge.
    Profile(oneshot::Sender<(Profile, String)>),
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

/// What an originate waits for.
pub(crate) type OriginateResult = oneshot::Sender<Result<(), String>>;

impl ChannelHandle {
    /// A handle and the mailbox it feeds, for a new channel.
    pub(crate) fn new(
        uuid: &str,
        name: &str,
        snap: ChannelSnapshot,
    ) -> (Self, mpsc::Receiver<ChanMsg>) {
        let (tx, rx) = mpsc::channel(MAILBOX);
        let handle = Self {
            uuid: Arc::from(uuid),
            name: Arc::from(name),
            tx,
            snap: Arc::new(Mutex::new(snap)),
        };
        (handle, rx)
    }

    /// Replaces what [`ChannelHandle::snapshot`] returns (the channel task
    /// publishes after every change).
    pub(crate) fn publish(&self, snap: ChannelSnapshot) {
        *lock(&self.snap) = snap;
    }
}
