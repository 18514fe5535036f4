//! Placing calls and handing each new leg to whoever placed it.
//!
//! A [`Dialer`] owns the inbound connection's event stream. To place a call
//! it sends `bgapi originate {vars}<endpoint> '&socket(<addr> async full)'`
//! with a fresh uuid used both as the channel's `origination_uuid` and as
//! the job's `Job-UUID`, so every piece of news about the call carries that
//! one id: CHANNEL_CREATE and CHANNEL_HANGUP_COMPLETE (by `Unique-ID`),
//! BACKGROUND_JOB (by `Job-UUID`) and, once the far end answers, the leg's
//! own socket connecting to the outbound listener (by the channel uuid of
//! its `connect` reply). They all arrive on one ordered stream per call,
//! [`Ringing`], which resolves to the live [`Call`] or to the cause that
//! ended it.
//!
//! The `&socket(...)` application is single-quoted: unquoted, `originate`
//! splits it on spaces and FreeSWITCH runs the socket in static mode
//! (trace 07). Every leg carries `app_disable_expand_variables=true` and a
//! `redswitch_instance` variable (the dialer's owner, an instance id); the
//! inbound connection filters on it, so several Redswitch instances can
//! share one FreeSWITCH and each sees only its own legs, and an operator
//! can end one instance's legs with `hupall <cause> redswitch_instance <id>`.
//!
//! Ending a leg: [`Dialer::kill`] (`uuid_kill`, an API on the inbound
//! connection) ends a channel at once whatever runs on it, while a
//! `sendmsg` hangup waits behind an application executed with `event-lock`
//! and a closed socket does not end a channel at all (traces 10, 12, 15).
//! So every leg this module hands out is ended with `uuid_kill`; a leg
//! already gone (`-ERR No such channel!`) counts as ended.

use crate::esl::{Command, Event, EventFormat};
use crate::switch::call::Call;
use crate::switch::error::Error;
use crate::switch::inbound::{EventStream, InboundClient};
use crate::switch::outbound::{AppResult, CallHandler};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The channel variable that marks legs placed by one Dialer.
pub const OWNER_VARIABLE: &str = "redswitch_instance";

/// How long a leg whose originate succeeded may take to connect its socket.
const SOCKET_GRACE: Duration = Duration::from_secs(10);

/// Why a value cannot go into an originate string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DialStringError {
    /// A variable name outside `[A-Za-z0-9_]`.
    #[error("channel variable name {0:?} is not [A-Za-z0-9_]+")]
    Name(String),
    /// A value with a character that FreeSWITCH would interpret.
    #[error(
        "value of {name} contains {found:?}, which FreeSWITCH would interpret in a dial string"
    )]
    Value {
        /// The variable (or `endpoint`).
        name: String,
        /// The first offending character.
        found: char,
    },
}

/// Why a call could not be placed.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// A value would change the meaning of the originate string.
    #[error(transparent)]
    Invalid(#[from] DialStringError),
    /// FreeSWITCH refused the job or could not be asked.
    #[error(transparent)]
    Switch(#[from] Error),
}

/// Characters that split, end or expand parts of a dial string, or end an
/// ESL command (SPEC §10).
fn forbidden(c: char) -> bool {
    c.is_whitespace() || c.is_control() || ",{}[]<>'\"\\$^|".contains(c)
}

fn check_value(name: &str, value: &str) -> std::result::Result<(), DialStringError> {
    match value.chars().find(|&c| forbidden(c)) {
        Some(found) => Err(DialStringError::Value {
            name: name.to_owned(),
            found,
        }),
        None => Ok(()),
    }
}

/// A call to place.
#[derive(Debug, Clone, Default)]
pub struct Originate {
    /// The endpoint, e.g. `sofia/gateway/gw1/15551234567` or
    /// `loopback/1555/redswitch-test`; built from validated parts only.
    pub endpoint: String,
    /// `origination_caller_id_number`.
    pub caller_id_number: Option<String>,
    /// `origination_caller_id_name`.
    pub caller_id_name: Option<String>,
    /// `originate_timeout`: how long it may ring (FreeSWITCH's default is
    /// 60 s).
    pub timeout: Option<Duration>,
    /// More channel variables (names `[A-Za-z0-9_]`, values free of the
    /// characters FreeSWITCH interprets).
    pub variables: Vec<(String, String)>,
}

/// News about a placed call, in the order it happened.
#[derive(Debug)]
pub enum Progress {
    /// FreeSWITCH created the channel (CHANNEL_CREATE).
    Created,
    /// The far end answered and the leg's socket connected.
    Answered(Call),
    /// The call ended before its socket connected.
    Ended {
        /// FreeSWITCH's Hangup-Cause (`USER_BUSY`, `NO_ANSWER`,
        /// `ORIGINATOR_CANCEL` …) or the originate error.
        cause: String,
        /// Whether a channel ever existed (if not, the call was never
        /// attempted: an unknown gateway, a refused originate).
        created: bool,
    },
}

/// What the dispatcher and the listener tell a ringing call.
#[derive(Debug)]
enum Signal {
    Event(Event),
    Socket(Call),
}

#[derive(Default)]
struct Legs {
    waiting: HashMap<String, mpsc::Sender<Signal>>,
}

struct DialerInner {
    inbound: InboundClient,
    socket_app: String,
    owner: String,
    legs: Mutex<Legs>,
}

impl DialerInner {
    fn route(&self, id: &str, signal: Signal) {
        let tx = self
            .legs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .waiting
            .get(id)
            .cloned();
        if let Some(tx) = tx {
            // A full queue means the call's owner stopped listening; the
            // signal would not be read anyway.
            let _ = tx.try_send(signal);
        }
    }

    fn forget(&self, uuid: &str) {
        self.legs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .waiting
            .remove(uuid);
    }
}

/// Places calls through the inbound connection and receives their legs
/// from the outbound listener. Cheap to clone.
#[derive(Clone)]
pub struct Dialer {
    inner: Arc<DialerInner>,
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialer")
            .field("socket_app", &self.inner.socket_app)
            .field("owner", &self.inner.owner)
            .finish()
    }
}

impl Dialer {
    /// Subscribes the inbound connection to the events of this dialer's
    /// legs and starts the task that routes them. `socket_addr` is where
    /// FreeSWITCH reaches the outbound listener (`host:port`); `owner` tells
    /// this dialer's legs from others' (an instance id).
    pub async fn start(
        inbound: InboundClient,
        mut events: EventStream,
        socket_addr: &str,
        owner: &str,
    ) -> std::result::Result<(Self, JoinHandle<()>), DialError> {
        check_value("socket address", socket_addr)?;
        check_value(OWNER_VARIABLE, owner)?;
        inbound
            .subscribe(
                EventFormat::Plain,
                [
                    "CHANNEL_CREATE",
                    "CHANNEL_HANGUP_COMPLETE",
                    "BACKGROUND_JOB",
                ],
            )
            .await?;
        inbound
            .filter(&format!("variable_{OWNER_VARIABLE}"), owner)
            .await?;
        let inner = Arc::new(DialerInner {
            inbound,
            socket_app: format!("'&socket({socket_addr} async full)'"),
            owner: owner.to_owned(),
            legs: Mutex::new(Legs::default()),
        });
        let router = inner.clone();
        let task = tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                let id = match event.name() {
                    "BACKGROUND_JOB" => event.job_uuid(),
                    _ => event.unique_id(),
                };
                if let Some(id) = id.map(str::to_owned) {
                    router.route(&id, Signal::Event(event));
                }
            }
        });
        Ok((Self { inner }, task))
    }

    /// The inbound connection this dialer uses.
    pub fn inbound(&self) -> &InboundClient {
        &self.inner.inbound
    }

    /// The outbound-listener handler: legs this dialer placed go to their
    /// [`Ringing`]; any other leg (a call that came in through the
    /// dialplan) runs `other`.
    pub fn handler<H: CallHandler>(&self, other: H) -> DialerHandler<H> {
        DialerHandler {
            dialer: self.clone(),
            other,
        }
    }

    /// The originate command for a call, with its uuid.
    pub fn originate_command(
        &self,
        uuid: &str,
        req: &Originate,
    ) -> std::result::Result<String, DialStringError> {
        let mut vars: Vec<(&str, String)> = vec![
            ("origination_uuid", uuid.to_owned()),
            (OWNER_VARIABLE, self.inner.owner.clone()),
            ("app_disable_expand_variables", "true".into()),
        ];
        if let Some(n) = &req.caller_id_number {
            vars.push(("origination_caller_id_number", n.clone()));
        }
        if let Some(n) = &req.caller_id_name {
            vars.push(("origination_caller_id_name", n.clone()));
        }
        if let Some(t) = req.timeout {
            vars.push(("originate_timeout", t.as_secs().max(1).to_string()));
        }
        for (name, value) in &req.variables {
            vars.push((name.as_str(), value.clone()));
        }
        let mut cmd = String::with_capacity(256);
        cmd.push_str("originate {");
        for (i, (name, value)) in vars.iter().enumerate() {
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(DialStringError::Name((*name).to_owned()));
            }
            check_value(name, value)?;
            if i > 0 {
                cmd.push(',');
            }
            cmd.push_str(name);
            cmd.push('=');
            cmd.push_str(value);
        }
        cmd.push('}');
        check_value("endpoint", &req.endpoint)?;
        cmd.push_str(&req.endpoint);
        cmd.push(' ');
        cmd.push_str(&self.inner.socket_app);
        Ok(cmd)
    }

    /// Places a call. Returns once FreeSWITCH accepted the job; the
    /// returned [`Ringing`] tells what becomes of it.
    pub async fn originate(&self, req: &Originate) -> std::result::Result<Ringing, DialError> {
        let uuid = uuid::Uuid::new_v4().to_string();
        let command = self.originate_command(&uuid, req)?;
        // Room for everything one call can be told before it is read.
        let (tx, rx) = mpsc::channel(8);
        self.inner
            .legs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .waiting
            .insert(uuid.clone(), tx);
        let sent = self
            .inner
            .inbound
            .send(Command::BgApi {
                command,
                job_uuid: Some(uuid.clone()),
            })
            .await
            .and_then(crate::switch::link::check_ok);
        if let Err(error) = sent {
            self.inner.forget(&uuid);
            return Err(error.into());
        }
        Ok(Ringing {
            uuid,
            rx,
            dialer: self.clone(),
            created: false,
            job_ok: false,
            done: false,
        })
    }

    /// Hangs up any channel of this FreeSWITCH at once, whatever runs on it
    /// (`uuid_kill`). A channel that is already gone (`-ERR No such
    /// channel!`) is not an error: it has ended, which is what was asked.
    pub async fn kill(&self, uuid: &str, cause: &str) -> std::result::Result<(), DialError> {
        check_value("uuid", uuid)?;
        check_value("cause", cause)?;
        match self
            .inner
            .inbound
            .api(&format!("uuid_kill {uuid} {cause}"))
            .await
        {
            Ok(_) => Ok(()),
            Err(Error::CommandFailed { reply }) if reply.contains("No such channel") => {
                tracing::debug!(uuid, "uuid_kill: the channel is already gone");
                Ok(())
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Has FreeSWITCH itself hang the channel up `after` from now with
    /// `cause` (`sched_hangup +<seconds> <uuid> <cause>`): a bound that
    /// holds even if nobody is left to end the call.
    pub async fn schedule_hangup(
        &self,
        uuid: &str,
        after: Duration,
        cause: &str,
    ) -> std::result::Result<(), DialError> {
        check_value("uuid", uuid)?;
        check_value("cause", cause)?;
        let secs = after.as_secs().max(1);
        self.inner
            .inbound
            .api(&format!("sched_hangup +{secs} {uuid} {cause}"))
            .await?;
        Ok(())
    }

    /// Bridges two answered channels (`uuid_bridge <a> <b>`). A refusal
    /// (`-ERR …`) is retried once after [`BRIDGE_RETRY`]: under load a leg
    /// may not be ready for a moment. The second refusal, or a link
    /// failure, is returned. Both legs are left as they are either way: the
    /// caller decides how to end them.
    pub async fn bridge(&self, a: &str, b: &str) -> std::result::Result<(), DialError> {
        check_value("uuid", a)?;
        check_value("uuid", b)?;
        let cmd = format!("uuid_bridge {a} {b}");
        match self.inner.inbound.api(&cmd).await {
            Ok(_) => return Ok(()),
            Err(Error::CommandFailed { reply }) => {
                tracing::debug!(a, b, reply, "uuid_bridge refused; retrying once");
            }
            Err(error) => return Err(error.into()),
        }
        tokio::time::sleep(BRIDGE_RETRY).await;
        self.inner.inbound.api(&cmd).await?;
        Ok(())
    }
}

/// How long [`Dialer::bridge`] waits before its one retry.
pub const BRIDGE_RETRY: Duration = Duration::from_millis(200);

/// A placed call, until its socket connects or it ends.
#[derive(Debug)]
pub struct Ringing {
    uuid: String,
    rx: mpsc::Receiver<Signal>,
    dialer: Dialer,
    created: bool,
    job_ok: bool,
    done: bool,
}

impl Ringing {
    /// The channel's uuid (`origination_uuid`).
    pub fn uuid(&self) -> &str {
        &self.uuid
    }

    /// Whether FreeSWITCH has created the channel.
    pub fn is_created(&self) -> bool {
        self.created
    }

    /// The next piece of news. After [`Progress::Answered`] or
    /// [`Progress::Ended`] it returns the same ending again. Cancel-safe:
    /// all state lives in `self`.
    pub async fn next(&mut self) -> Progress {
        loop {
            if self.done {
                return Progress::Ended {
                    cause: "NORMAL_CLEARING".into(),
                    created: self.created,
                };
            }
            let signal = if self.job_ok {
                // Originate succeeded: the socket is on its way.
                match tokio::time::timeout(SOCKET_GRACE, self.rx.recv()).await {
                    Ok(s) => s,
                    Err(_) => return self.end("SOCKET_NOT_CONNECTED".into()),
                }
            } else {
                self.rx.recv().await
            };
            let Some(signal) = signal else {
                return self.end("DESTINATION_OUT_OF_ORDER".into());
            };
            match signal {
                Signal::Socket(call) => {
                    self.created = true;
                    self.finish();
                    return Progress::Answered(call);
                }
                Signal::Event(event) => match event.name() {
                    "CHANNEL_CREATE" if !self.created => {
                        self.created = true;
                        return Progress::Created;
                    }
                    "CHANNEL_HANGUP_COMPLETE" => {
                        let cause = event.hangup_cause().unwrap_or("NORMAL_CLEARING").to_owned();
                        return self.end(cause);
                    }
                    "BACKGROUND_JOB" => {
                        let body = event.body().unwrap_or_default().trim_end();
                        match body.strip_prefix("-ERR") {
                            Some(cause) => {
                                let cause = cause.trim();
                                let cause = if cause.is_empty() {
                                    "NORMAL_TEMPORARY_FAILURE"
                                } else {
                                    cause
                                };
                                return self.end(cause.to_owned());
                            }
                            None => self.job_ok = true,
                        }
                    }
                    _ => {}
                },
            }
        }
    }

    /// Waits for the outcome: the live leg, or the cause that ended it.
    pub async fn answered(mut self) -> std::result::Result<Call, String> {
        loop {
            match self.next().await {
                Progress::Created => {}
                Progress::Answered(call) => return Ok(call),
                Progress::Ended { cause, .. } => return Err(cause),
            }
        }
    }

    /// Hangs up the ringing call (`uuid_kill <uuid> <cause>`); its
    /// [`Progress::Ended`] follows.
    pub async fn cancel(&self, cause: &str) -> std::result::Result<(), DialError> {
        self.dialer.kill(&self.uuid, cause).await
    }

    fn end(&mut self, cause: String) -> Progress {
        self.finish();
        Progress::Ended {
            cause,
            created: self.created,
        }
    }

    fn finish(&mut self) {
        if !self.done {
            self.done = true;
            self.dialer.inner.forget(&self.uuid);
        }
    }
}

impl Drop for Ringing {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The outbound-listener handler of a [`Dialer`] (see [`Dialer::handler`]).
pub struct DialerHandler<H> {
    dialer: Dialer,
    other: H,
}

impl<H: CallHandler> CallHandler for DialerHandler<H> {
    async fn handle(&self, call: Call) -> AppResult {
        let waiting = self
            .dialer
            .inner
            .legs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .waiting
            .get(call.uuid())
            .cloned();
        match waiting {
            Some(tx) => {
                if tx.send(Signal::Socket(call.clone())).await.is_err() {
                    // Whoever placed it is gone: nobody will drive the leg.
                    return Err("the call's owner stopped waiting for it".into());
                }
                // The owner drives the leg from here; returning now would
                // hang it up.
                call.closed().await;
                Ok(())
            }
            None => self.other.handle(call).await,
        }
    }
}

/// Ends a leg at once over its own socket (`api uuid_kill <uuid> <cause>`),
/// whatever application runs on it: an API on the socket is carried out by
/// the socket's own thread, not queued behind the channel's applications
/// as a `sendmsg` hangup is. A leg already gone is not an error.
pub async fn kill_leg(call: &Call, cause: &str) -> std::result::Result<(), Error> {
    if call.hangup_cause().is_some() || call.is_closed() {
        return Ok(());
    }
    match call
        .api(&format!("uuid_kill {} {cause}", call.uuid()))
        .await
    {
        Ok(_) => Ok(()),
        Err(Error::CommandFailed { reply }) if reply.contains("No such channel") => Ok(()),
        // The socket closed under us: the channel hung up.
        Err(error) if error.is_hangup() || call.hangup_cause().is_some() => Ok(()),
        Err(error) => Err(error),
    }
}

/// A handler for legs nobody placed: ends them with `CALL_REJECTED`.
pub async fn reject_unknown(call: Call) -> AppResult {
    tracing::warn!(
        uuid = call.uuid(),
        "a leg nobody placed connected; rejecting it"
    );
    kill_leg(&call, "CALL_REJECTED").await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_characters() {
        for bad in [
            "a,b", "a}", "{a", "a b", "a\n", "${x}", "a|b", "'", "\"", "a^b", "a<b", "a]",
        ] {
            assert!(check_value("x", bad).is_err(), "{bad:?}");
        }
        assert!(check_value("x", "sofia/gateway/gw-1.example/+1555*#").is_ok());
    }
}
