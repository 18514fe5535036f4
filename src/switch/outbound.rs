//! The outbound listener: FreeSWITCH's `socket` application connects here,
//! one TCP connection per call leg.
//!
//! [`serve`] takes an already bound `TcpListener` (tests bind
//! `127.0.0.1:0`), like mini-redis's `server::run`. For each connection:
//!
//! 1. a permit from a semaphore caps concurrent legs
//!    ([`OutboundConfig::max_legs`]); at the cap, accepting waits;
//! 2. a peer outside [`OutboundConfig::allow`] is closed at once and logged;
//! 3. `connect`, `myevents`, `linger` and `event plain <extra events>` are
//!    written in one write; the `connect` reply becomes [`ChannelData`];
//! 4. the leg's socket task starts, and the [`CallHandler`] runs with the
//!    [`Call`] handle in the connection's own task. When the handler returns
//!    (or fails, or panics) and the channel is still up, the leg is hung up
//!    (`NORMAL_CLEARING`, or `NORMAL_TEMPORARY_FAILURE` after an error).
//!
//! A leg's protocol error, EOF or failing app closes that leg only; the
//! listener and the other legs go on. Every leg's event backlog is bounded
//! in bytes ([`OutboundConfig::event_buffer_bytes`]) and applies
//! backpressure instead of dropping (see [`crate::switch::call`]); their
//! figures add up in one [`LinkStats`] per listener
//! ([`OutboundListener::stats`]). Cancelling the shutdown token stops
//! accepting; legs already running finish their calls.

use crate::esl::{Command, ContentType, EventFormat};
use crate::switch::backlog::LinkStats;
use crate::switch::call::{self, Call, ChannelData, LegLimits, SocketMode};
use crate::switch::error::{Error, Result};
use crate::switch::link::{self, Peer};
use bytes::{Bytes, BytesMut};
use futures::{FutureExt, StreamExt};
use ipnet::IpNet;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Any error a voice application returns.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// What a voice application returns.
pub type AppResult = std::result::Result<(), BoxError>;

/// A voice application: runs once per leg with the leg's handle. Any
/// `Fn(Call) -> impl Future<Output = AppResult>` is one.
pub trait CallHandler: Send + Sync + 'static {
    /// Runs the call flow of one leg.
    fn handle(&self, call: Call) -> impl Future<Output = AppResult> + Send;
}

impl<F, Fut> CallHandler for F
where
    F: Fn(Call) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = AppResult> + Send,
{
    fn handle(&self, call: Call) -> impl Future<Output = AppResult> + Send {
        self(call)
    }
}

/// The events every leg subscribes to besides `myevents` (as the traces do),
/// so apps see executes, DTMF, playback, bridges and recordings.
pub const DEFAULT_LEG_EVENTS: &[&str] = &[
    "CHANNEL_EXECUTE",
    "CHANNEL_EXECUTE_COMPLETE",
    "CHANNEL_ANSWER",
    "CHANNEL_HANGUP",
    "CHANNEL_HANGUP_COMPLETE",
    "CHANNEL_BRIDGE",
    "CHANNEL_UNBRIDGE",
    "CHANNEL_PROGRESS",
    "CHANNEL_PROGRESS_MEDIA",
    "DTMF",
    "PLAYBACK_START",
    "PLAYBACK_STOP",
    "RECORD_START",
    "RECORD_STOP",
];

/// Listener settings.
#[derive(Debug, Clone)]
pub struct OutboundConfig {
    /// Networks FreeSWITCH may connect from; anyone else is closed at once.
    pub allow: Vec<IpNet>,
    /// Most legs served at once; beyond it, accepting waits.
    pub max_legs: usize,
    /// Per-leg queue of requests from the handles (small: one app issues
    /// one or two commands at a time).
    pub command_queue: usize,
    /// Bytes of a leg's events read but not yet taken by its app before the
    /// leg's task stops reading the socket (nothing is dropped). Also the
    /// largest message a leg accepts: a bigger one closes the leg's socket
    /// with [`Error::TooLarge`].
    pub event_buffer_bytes: usize,
    /// Limit for the `connect` reply.
    pub handshake_timeout: Duration,
    /// Limit for each command's reply.
    pub request_timeout: Duration,
    /// Events subscribed with `event plain` after `myevents`.
    pub events: Vec<String>,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        Self {
            allow: vec![
                IpNet::from(IpAddr::from([127, 0, 0, 1])),
                IpNet::from(IpAddr::from(std::net::Ipv6Addr::LOCALHOST)),
            ],
            max_legs: 10_000,
            command_queue: 4,
            event_buffer_bytes: DEFAULT_LEG_EVENT_BUFFER_BYTES,
            handshake_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            events: DEFAULT_LEG_EVENTS.iter().map(|&s| s.to_owned()).collect(),
        }
    }
}

impl OutboundConfig {
    /// Whether a peer address is in the allow-list (IPv4-mapped IPv6
    /// addresses count as IPv4).
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.allow.iter().any(|net| net.contains(&ip))
    }

    fn limits(&self, stats: Arc<LinkStats>) -> LegLimits {
        LegLimits {
            command_queue: self.command_queue,
            event_buffer_bytes: self.event_buffer_bytes.max(1),
            request_timeout: self.request_timeout,
            stats,
        }
    }
}

/// The default of [`OutboundConfig::event_buffer_bytes`]: 1 MiB, a few
/// hundred events, far more than a call flow leaves unread between two
/// looks at its stream.
pub const DEFAULT_LEG_EVENT_BUFFER_BYTES: usize = 1024 * 1024;

/// A bound listener with its configuration.
#[derive(Debug)]
pub struct OutboundListener {
    listener: TcpListener,
    config: OutboundConfig,
    stats: Arc<LinkStats>,
}

impl OutboundListener {
    /// Binds `addr`.
    pub async fn bind(addr: impl ToSocketAddrs, config: OutboundConfig) -> std::io::Result<Self> {
        Ok(Self::from_listener(TcpListener::bind(addr).await?, config))
    }

    /// Wraps a listener bound elsewhere (tests bind `127.0.0.1:0`).
    pub fn from_listener(listener: TcpListener, config: OutboundConfig) -> Self {
        let stats = Arc::new(LinkStats::new(config.event_buffer_bytes.max(1)));
        Self {
            listener,
            config,
            stats,
        }
    }

    /// The figures of every leg's event backlog, added up (buffered bytes
    /// and events over all legs, stalls, time stalled). Take it before
    /// [`Self::serve`]; it stays valid after.
    pub fn stats(&self) -> Arc<LinkStats> {
        self.stats.clone()
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves legs until `shutdown` is cancelled.
    pub async fn serve<H: CallHandler>(self, handler: H, shutdown: CancellationToken) {
        accept_loop(self.listener, self.config, self.stats, handler, shutdown).await
    }
}

/// The commands written right after accepting, encoded once per listener.
struct Prepared {
    handshake: Bytes,
    internal: Vec<&'static str>,
}

fn prepare(config: &OutboundConfig) -> Result<Prepared> {
    let mut buf = BytesMut::with_capacity(256);
    let mut internal = vec!["myevents", "linger"];
    Command::Connect.encode(&mut buf)?;
    Command::MyEvents {
        uuid: None,
        format: None,
    }
    .encode(&mut buf)?;
    Command::Linger(None).encode(&mut buf)?;
    if !config.events.is_empty() {
        Command::Event {
            format: EventFormat::Plain,
            events: config.events.clone(),
        }
        .encode(&mut buf)?;
        internal.push("event");
    }
    Ok(Prepared {
        handshake: buf.freeze(),
        internal,
    })
}

/// Accepts legs on `listener` until `shutdown` is cancelled (use
/// [`OutboundListener`] to read the legs' [`LinkStats`]).
pub async fn serve<H: CallHandler>(
    listener: TcpListener,
    config: OutboundConfig,
    handler: H,
    shutdown: CancellationToken,
) {
    OutboundListener::from_listener(listener, config)
        .serve(handler, shutdown)
        .await
}

async fn accept_loop<H: CallHandler>(
    listener: TcpListener,
    config: OutboundConfig,
    stats: Arc<LinkStats>,
    handler: H,
    shutdown: CancellationToken,
) {
    let prepared = match prepare(&config) {
        Ok(p) => Arc::new(p),
        Err(error) => {
            tracing::error!(%error, "invalid outbound event list; not serving");
            return;
        }
    };
    let config = Arc::new(config);
    let handler = Arc::new(handler);
    let legs = Arc::new(Semaphore::new(config.max_legs.max(1)));
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => return,
            p = legs.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(error) => {
                    // Out of file descriptors and the like: wait a little
                    // instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if !config.allows(peer.ip()) {
            tracing::warn!(%peer, "refused an outbound socket connection: address not in the allow-list");
            drop(stream);
            continue;
        }
        let config = config.clone();
        let handler = handler.clone();
        let prepared = prepared.clone();
        let stats = stats.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match handshake(stream, &config, &prepared, stats).await {
                Ok(call) => run_app(call, &*handler).await,
                Err(error) => {
                    tracing::warn!(%peer, %error, "outbound leg closed during the handshake")
                }
            }
        });
    }
}

/// Says `connect` (and the rest of the setup) and starts the leg's task.
async fn handshake(
    stream: TcpStream,
    config: &OutboundConfig,
    prepared: &Prepared,
    stats: Arc<LinkStats>,
) -> Result<Call> {
    // The read buffer starts empty and grows to what frames need.
    let (mut reader, mut writer) = link::split(stream, 0, config.event_buffer_bytes.max(1))?;
    writer.write_all(&prepared.handshake).await?;
    let after = config.handshake_timeout;
    let reply = loop {
        let frame = tokio::time::timeout(after, reader.next())
            .await
            .map_err(|_| Error::Timeout { after })?;
        match frame {
            None => {
                return Err(Error::Handshake(
                    "FreeSWITCH closed before the connect reply".into(),
                ));
            }
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(f)) if f.content_type() == ContentType::CommandReply => break f,
            // Nothing else is due before the reply; skip whatever it is.
            Some(Ok(_)) => {}
        }
    };
    if !reply.is_ok() {
        return Err(Error::Handshake(format!(
            "connect refused: {}",
            link::reply_summary(&reply)
        )));
    }
    let data = ChannelData::from_connect_reply(&reply)?;
    let peer = Peer::Leg(data.uuid().into());
    link::log_sent(&peer, &prepared.handshake);
    link::log_reply(&peer, Some("connect"), &reply);
    drop(reply);
    if data.socket_mode() == Some(SocketMode::Static) {
        tracing::warn!(
            uuid = data.uuid(),
            "static outbound socket: events and linger are refused; quote the '&socket(... async full)' app in originate"
        );
    }
    let (call, driver) = call::new_leg(
        reader,
        writer,
        data,
        &prepared.internal,
        config.limits(stats),
    );
    let span = tracing::info_span!("leg", uuid = %call.uuid());
    tokio::spawn(tracing::Instrument::instrument(driver.run(), span));
    Ok(call)
}

/// Runs the app and hangs the leg up if the app left it up.
async fn run_app<H: CallHandler>(call: Call, handler: &H) {
    let outcome = AssertUnwindSafe(handler.handle(call.clone()))
        .catch_unwind()
        .await;
    let cause = match outcome {
        Ok(Ok(())) => "NORMAL_CLEARING",
        Ok(Err(error)) => {
            tracing::warn!(uuid = call.uuid(), %error, "voice application failed");
            "NORMAL_TEMPORARY_FAILURE"
        }
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(uuid = call.uuid(), panic = %message, "voice application panicked");
            "NORMAL_TEMPORARY_FAILURE"
        }
    };
    // An event stream the app never took would fill and stall the leg's
    // reads, and with them the reply to the kill below: let it go.
    drop(call.events());
    // `uuid_kill`: a `sendmsg` hangup would wait behind an event-locked app.
    if let Err(error) = crate::switch::app::kill_leg(&call, cause).await {
        tracing::debug!(uuid = call.uuid(), %error, "hangup after the app ended failed");
    }
}
