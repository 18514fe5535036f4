//! [`InboundClient`]: the cloneable handle; every operation is a request to
//! the driver task.

use super::Shared;
use super::config::InboundConfig;
use super::driver::{Driver, Request, Track};
use super::stream::{EventSink, EventStream};
use crate::esl::{CallCommand, Command, Event, EventFormat, Frame, SendMsg};
use crate::switch::backlog::{self, LinkStats};
use crate::switch::error::{Error, Result};
use crate::switch::link::{self, Peer};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How many requests may wait for the driver before callers are held back.
const REQUEST_QUEUE: usize = 256;

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
/// reconnecting gives up ([`crate::switch::ReconnectPolicy::max_attempts`]).
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
        let limit = cfg.event_buffer_bytes.max(1);
        let shared = Arc::new(Shared {
            connected: AtomicBool::new(false),
            stats: Arc::new(LinkStats::new(limit)),
            ended: Mutex::new(None),
        });
        let (events_tx, events_rx) = backlog::backlog(limit, shared.stats.clone());
        let peer = Peer::Inbound(cfg.addr.as_str().into());
        let sink = EventSink::new(events_tx, peer);
        let (tx, rx) = mpsc::channel(REQUEST_QUEUE);
        let driver = Driver::open(cfg.clone(), rx, sink, shared.clone()).await?;
        shared.connected.store(true, Ordering::Release);
        tokio::spawn(driver.run());
        Ok((
            Self {
                tx,
                shared: shared.clone(),
                cfg,
            },
            EventStream::new(events_rx, shared),
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

    /// The connection's counters: event buffer fill, stalls and time
    /// stalled, events, drops (none), reconnects, time since the last
    /// frame. They live as long as any holder of the `Arc`.
    pub fn stats(&self) -> Arc<LinkStats> {
        self.shared.stats.clone()
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
