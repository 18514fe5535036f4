//! The voice-application API: call flows in async Rust with the
//! capabilities of the Doug voiceapp framework (SPEC §8).
//!
//! A voice application is an async function that receives a [`Voice`] (the
//! leg's handle plus its typed event stream) and returns a result or an
//! error to whoever started it: [`spawn_app`] for a leg the app placed
//! ([`Dialer::place_call`]), [`AppRouter`] for calls that came in through
//! the dialplan (it is a [`crate::switch::CallHandler`] for the outbound
//! listener).
//!
//! Every operation is the FreeSWITCH command that really does it, named on
//! each method: applications run with `sendmsg execute` (event-locked, so
//! they run in order), APIs go over the leg's own socket (`Control: full`).
//!
//! # The loop
//! [`Voice`] holds all of the leg's state in one struct: the media in
//! progress (as boxed execute futures), the DTMF mode, a digit collection,
//! timers and a small queue of typed events. [`Voice::next_event`] runs one
//! `select!` over the leg's raw events, the media completions, application
//! events and the earliest deadline; the blocking helpers
//! ([`Voice::play`], [`Voice::record`], [`Voice::collect_digits`]) turn the
//! same loop until their outcome is queued, leaving every other event in
//! the queue for the app. Nothing runs unless the app awaits the handle, so
//! there is no task to leak; the raw events wait meanwhile in the leg's
//! bounded queue ([`crate::switch::Call::events`]).
//!
//! Modules: [`events`] (the typed event model), [`dtmf`], [`timers`],
//! [`conference`], [`router`] (the inbound app registry, running apps,
//! placing calls).

pub mod conference;
pub mod dtmf;
pub mod events;
pub mod router;
pub mod timers;

pub use conference::ConferenceMember;
pub use dtmf::{DEFAULT_DTMF_DURATION, DtmfMode, MAX_DTMF_DURATION};
pub use events::{CollectEnd, Collected, PlayOutcome, RecordOutcome, TimerId, VoiceEvent};
pub use router::{APP_GRACE, AppError, AppRouter, PlaceError, run_app, run_on, spawn_app};

use crate::esl::Event;
use crate::switch::app::kill_leg;
use crate::switch::call::{Call, CallEvents, Direction, ExecuteComplete};
use crate::switch::error::Error;
use dtmf::{CollectJob, DtmfOut, DtmfState};
use std::collections::VecDeque;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;
use timers::Timers;
use tokio::sync::mpsc;
use tokio::time::Instant;

#[cfg(doc)]
use crate::switch::app::Dialer;

/// Typed events kept for the app; beyond this the oldest is dropped (and
/// counted): an app that never reads its events must not grow memory.
const EVENT_QUEUE: usize = 256;
/// Room for application-specific events sent from other tasks.
const APP_EVENT_QUEUE: usize = 32;
/// Digits in barge-in are every DTMF digit, A–D included (FreeSWITCH's
/// `any` covers only `0-9*#`).
const ALL_DIGITS: &str = "0123456789*#ABCD";

/// What can go wrong in the voice-application API. Input errors are
/// returned before anything is sent to FreeSWITCH.
#[derive(Debug, thiserror::Error)]
pub enum VoiceError {
    /// The FreeSWITCH connection failed or refused a command.
    #[error(transparent)]
    Switch(#[from] Error),
    /// The leg's event stream was already taken by someone else.
    #[error("the leg's events were already taken; one Voice per leg")]
    EventsTaken,
    /// `send_dtmf` without digits.
    #[error("no DTMF digits to send")]
    NoDigits,
    /// A character that is not a DTMF digit (`0-9*#A-D`).
    #[error("{found:?} is not a DTMF digit (0-9, *, #, A-D)")]
    InvalidDigit {
        /// The first offending character.
        found: char,
    },
    /// More than 64 digits at once.
    #[error("{count} DTMF digits at once; at most 64")]
    TooManyDigits {
        /// How many were given.
        count: usize,
    },
    /// A digit length of 0 or over 10 s.
    #[error("DTMF duration {duration:?} is outside 1 ms ..= 10 s")]
    InvalidDtmfDuration {
        /// The duration given.
        duration: Duration,
    },
    /// A gap between digits over 10 s.
    #[error("DTMF gap {gap:?} is over 10 s")]
    InvalidDtmfGap {
        /// The gap given.
        gap: Duration,
    },
    /// A hangup cause that is not FreeSWITCH's spelling (`[A-Z0-9_]+`).
    #[error("{0:?} is not a hangup cause (upper-case letters, digits, _)")]
    InvalidCause(String),
    /// A value that would change the meaning of the command it goes into
    /// (whitespace, control characters, `${`, quotes …).
    #[error("{what} {value:?} cannot go into a FreeSWITCH command")]
    InvalidValue {
        /// What the value is (media, path, conference name …).
        what: &'static str,
        /// The value.
        value: String,
    },
    /// An empty playlist.
    #[error("nothing to play")]
    EmptyPlaylist,
    /// `reject` on a leg already answered: hang it up instead.
    #[error("the call is already answered; reject only refuses unanswered calls")]
    AlreadyAnswered,
    /// A play is already running on this leg (one at a time: FreeSWITCH
    /// would queue the second behind the first).
    #[error("a play is already running on this leg")]
    PlayBusy,
    /// A recording is already running on this leg. The rule: one recording
    /// per leg at a time through this API; stop the first (`stop_media`)
    /// before starting another.
    #[error("a recording is already running on this leg")]
    RecordBusy,
    /// The leg is already in a conference.
    #[error("the leg is already in a conference")]
    ConferenceBusy,
    /// A digit collection is already running.
    #[error("a digit collection is already running on this leg")]
    CollectBusy,
    /// Too many pending timers.
    #[error("more than {max} timers pending")]
    TooManyTimers {
        /// The cap.
        max: usize,
    },
    /// The leg's socket is closed.
    #[error("the call is over (its socket closed)")]
    Closed,
    /// FreeSWITCH did not report the member id of a conference member.
    #[error("no conference_member_id for this leg in conference {0}")]
    NoMemberId(String),
}

/// A party of the call, from the channel data.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Party {
    /// The number (or SIP user).
    pub number: String,
    /// The display name, if any.
    pub name: Option<String>,
}

/// Options of a play.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlayOptions {
    /// Any DTMF digit stops the play ([`PlayOutcome::BargeIn`]): FreeSWITCH
    /// does it itself through the `playback_terminators` channel variable.
    pub barge_in: bool,
    /// Stop the play after this long ([`PlayOutcome::TimerExpired`]), with
    /// `uuid_break`.
    pub timeout: Option<Duration>,
}

/// Options of a recording: the arguments of FreeSWITCH's `record`
/// application, `record <path> <max_sec> <silence_thresh> <silence_hits>`.
#[derive(Debug, Clone, Copy)]
pub struct RecordOptions {
    /// The longest recording (whole seconds, at least 1).
    pub max_len: Duration,
    /// The energy level under which audio counts as silence (FreeSWITCH's
    /// `silence_thresh`; 200 is a usual value, 0 turns detection off).
    pub silence_threshold: u32,
    /// How many seconds of silence end the recording (`silence_hits`).
    pub silence_hits: u32,
}

impl Default for RecordOptions {
    fn default() -> Self {
        Self {
            max_len: Duration::from_secs(60),
            silence_threshold: 200,
            silence_hits: 3,
        }
    }
}

type ExecFuture = Pin<Box<dyn Future<Output = crate::switch::Result<ExecuteComplete>> + Send>>;

/// Why a play was cut short by us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PlayStop {
    Timer,
    User,
}

/// A play in progress: one `playback` per item, in order.
struct PlayJob {
    item: String,
    rest: VecDeque<String>,
    exec: ExecFuture,
    barge_in: bool,
    digits: String,
    deadline: Option<Instant>,
    stop: Option<PlayStop>,
}

/// A recording in progress.
struct RecordJob {
    path: PathBuf,
    max_len: Duration,
    started: Instant,
    exec: ExecFuture,
    /// RECORD_START came: FreeSWITCH opened the file.
    opened: bool,
}

/// A `conference` application in progress (it runs while the member is in
/// the conference).
struct ConferenceJob {
    exec: ExecFuture,
}

/// A leg driven by a voice application: the [`Call`] handle, the typed
/// event stream and the state of the media, DTMF and timers on the leg.
///
/// `U` is the application's own data type, carried by timers and
/// [`VoiceEvent::App`] events.
pub struct Voice<U = ()> {
    call: Call,
    events: CallEvents,
    queue: VecDeque<VoiceEvent<U>>,
    queue_dropped: u64,
    dtmf: DtmfState,
    collect: Option<CollectJob>,
    play: Option<PlayJob>,
    record: Option<RecordJob>,
    conference: Option<ConferenceJob>,
    timers: Timers<U>,
    app_tx: mpsc::Sender<U>,
    app_rx: mpsc::Receiver<U>,
    answered: bool,
    /// Ended or Rejected was queued.
    ended: bool,
    /// The leg's event stream ended: the socket is closed.
    socket_closed: bool,
}

impl<U> std::fmt::Debug for Voice<U> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Voice")
            .field("uuid", &self.call.uuid())
            .field("playing", &self.play.is_some())
            .field("recording", &self.record.is_some())
            .field("queued", &self.queue.len())
            .finish_non_exhaustive()
    }
}

use crate::backoff::sleep_until as sleep_opt;

/// Polls an optional execute, or never completes.
async fn poll_exec(exec: Option<&mut ExecFuture>) -> crate::switch::Result<ExecuteComplete> {
    match exec {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// Runs applications in their own task, so they reach FreeSWITCH at once
/// (not when the app next awaits its handle) and `is_playing` tells the
/// truth. The task ends with the execute: at its completion or when the
/// channel hangs up.
fn spawn_exec(call: &Call, steps: Vec<(&'static str, String)>) -> ExecFuture {
    let call = call.clone();
    let task = tokio::spawn(async move {
        let mut last = None;
        for (app, arg) in steps {
            last = Some(call.execute(app, &arg).await?);
        }
        last.ok_or(Error::Closed)
    });
    Box::pin(async move {
        task.await.unwrap_or_else(|e| {
            Err(Error::CommandFailed {
                reply: format!("the execute task failed: {e}"),
            })
        })
    })
}

fn exec_future(call: &Call, app: &'static str, arg: String) -> ExecFuture {
    spawn_exec(call, vec![(app, arg)])
}

/// Checks a value that goes into an application argument or API command:
/// no whitespace (arguments are space-separated), control characters,
/// quotes, or `${`/`$${` (FreeSWITCH would expand them).
fn check_arg(what: &'static str, value: &str) -> Result<(), VoiceError> {
    let bad = value.is_empty()
        || value.contains("${")
        || value
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '\'' | '"' | '`'));
    if bad {
        return Err(VoiceError::InvalidValue {
            what,
            value: value.to_owned(),
        });
    }
    Ok(())
}

/// Checks a hangup cause: FreeSWITCH's names are `[A-Z0-9_]+`.
fn check_cause(cause: &str) -> Result<(), VoiceError> {
    if cause.is_empty()
        || cause.len() > 64
        || !cause
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(VoiceError::InvalidCause(cause.to_owned()));
    }
    Ok(())
}

impl<U: Send + 'static> Voice<U> {
    /// Takes over a leg: its event stream (which can be taken once) and its
    /// channel data. The first event is [`VoiceEvent::CallStarted`], then
    /// [`VoiceEvent::Answered`] if the leg was answered before its socket
    /// connected (placed calls are).
    pub fn new(call: Call) -> Result<Self, VoiceError> {
        let direction = call
            .channel_data()
            .direction()
            .unwrap_or(Direction::Inbound);
        Self::with_direction(call, direction)
    }

    pub(crate) fn with_direction(call: Call, direction: Direction) -> Result<Self, VoiceError> {
        let events = call.events().ok_or(VoiceError::EventsTaken)?;
        let answered =
            call.is_answered() || call.channel_data().header("Answer-State") == Some("answered");
        let (app_tx, app_rx) = mpsc::channel(APP_EVENT_QUEUE);
        let mut queue = VecDeque::new();
        queue.push_back(VoiceEvent::CallStarted { direction });
        if answered {
            queue.push_back(VoiceEvent::Answered);
        }
        Ok(Self {
            call,
            events,
            queue,
            queue_dropped: 0,
            dtmf: DtmfState::default(),
            collect: None,
            play: None,
            record: None,
            conference: None,
            timers: Timers::default(),
            app_tx,
            app_rx,
            answered,
            ended: false,
            socket_closed: false,
        })
    }

    /// The underlying leg handle (raw `execute`, `api`, channel data).
    pub fn call(&self) -> &Call {
        &self.call
    }

    /// The channel's uuid.
    pub fn uuid(&self) -> &str {
        self.call.uuid()
    }

    /// The calling party (Doug's `getDialog().getCaller()`). On an inbound
    /// leg, `Caller-Caller-ID-Number` / `-Name`. On a leg FreeSWITCH
    /// originated, the caller id it was placed with
    /// (`Caller-Orig-Caller-ID-Number` / `-Name`): once such a leg is
    /// answered FreeSWITCH swaps its caller and callee ids, so its
    /// `Caller-Caller-ID-Number` is the far end (trace 06).
    pub fn caller(&self) -> Party {
        let d = self.call.channel_data();
        let nonempty = |h: &str| d.header(h).filter(|v| !v.is_empty());
        let (number, name) = if d.direction() == Some(Direction::Outbound) {
            (
                nonempty("Caller-Orig-Caller-ID-Number").or(d.caller_number()),
                nonempty("Caller-Orig-Caller-ID-Name").or(d.caller_name()),
            )
        } else {
            (d.caller_number(), d.caller_name())
        };
        Party {
            number: number.unwrap_or_default().to_owned(),
            name: name.filter(|n| !n.is_empty()).map(str::to_owned),
        }
    }

    /// The called party (Doug's `getCallee()`): the dialled number
    /// (`Caller-Destination-Number`), the same on both directions.
    pub fn callee(&self) -> Party {
        let d = self.call.channel_data();
        let name = (d.direction() == Some(Direction::Inbound))
            .then(|| d.callee_name())
            .flatten();
        Party {
            number: d.destination().unwrap_or_default().to_owned(),
            name: name.filter(|n| !n.is_empty()).map(str::to_owned),
        }
    }

    /// Whether the leg is answered.
    pub fn is_answered(&self) -> bool {
        self.answered || self.call.is_answered()
    }

    /// Whether a play is running (Doug's `isPlaying`).
    pub fn is_playing(&self) -> bool {
        self.play.is_some()
    }

    /// Whether a recording is running (Doug's `isRecording`).
    pub fn is_recording(&self) -> bool {
        self.record.is_some()
    }

    /// Typed events dropped because the queue was full.
    pub fn dropped_events(&self) -> u64 {
        self.queue_dropped + self.call.dropped_events()
    }

    /// A sender for application-specific events: any task may send the app
    /// a `U`, which arrives as [`VoiceEvent::App`] (Doug's
    /// `ApplicationSpecificEvent`). Bounded: a full queue makes senders wait.
    pub fn app_sender(&self) -> mpsc::Sender<U> {
        self.app_tx.clone()
    }

    // ---- call control --------------------------------------------------

    /// Answers the call: the `answer` application. [`VoiceEvent::Answered`]
    /// follows (CHANNEL_ANSWER).
    pub async fn answer(&mut self) -> Result<(), VoiceError> {
        self.call.answer().await?;
        Ok(())
    }

    /// Rejects an unanswered call with a cause (Doug's `rejectCall`):
    /// `uuid_kill <uuid> <cause>` before answer, which FreeSWITCH turns into
    /// the SIP final response (`USER_BUSY` → 486, `CALL_REJECTED` → 603,
    /// `UNALLOCATED_NUMBER` → 404 …). Like [`Voice::hangup`] it takes effect
    /// at once, whatever runs on the channel.
    pub async fn reject(&mut self, cause: &str) -> Result<(), VoiceError> {
        check_cause(cause)?;
        if self.is_answered() {
            return Err(VoiceError::AlreadyAnswered);
        }
        kill_leg(&self.call, cause).await?;
        Ok(())
    }

    /// Hangs up with a cause (Doug's `hangupCall`): `uuid_kill <uuid>
    /// <cause>` over the leg's socket, which ends the channel at once even
    /// while a play, a record or any other application runs on it (a
    /// `sendmsg` hangup would wait behind it). Succeeds at once if the leg is
    /// already down.
    pub async fn hangup(&mut self, cause: &str) -> Result<(), VoiceError> {
        check_cause(cause)?;
        kill_leg(&self.call, cause).await?;
        Ok(())
    }

    /// Bridges this leg with another channel (Doug's `connectLegs`): the
    /// `uuid_bridge <this> <other>` API over this leg's socket. Both
    /// sockets stay connected; CHANNEL_BRIDGE reaches this leg's socket
    /// ([`VoiceEvent::Bridged`]), and when the other leg hangs up this one
    /// is unbridged and hung up too (FreeSWITCH's default, trace 04).
    pub async fn bridge(&mut self, other_uuid: &str) -> Result<(), VoiceError> {
        check_arg("uuid", other_uuid)?;
        let reply = self
            .call
            .api(&format!("uuid_bridge {} {other_uuid}", self.call.uuid()))
            .await?;
        if reply.trim_start().starts_with("-ERR") {
            return Err(Error::CommandFailed {
                reply: reply.trim_end().to_owned(),
            }
            .into());
        }
        Ok(())
    }

    // ---- media ---------------------------------------------------------

    /// Starts a play of a playlist (Doug's `mediaPlay`) and returns at once;
    /// [`VoiceEvent::Play`] tells how it ended. Items are files FreeSWITCH
    /// can read, `tone_stream://…` or `silence_stream://<ms>`; each is one
    /// `playback` application, run in order, and the list stops at the
    /// first that fails or is interrupted. Before the first item the
    /// `playback_terminators` channel variable is set (`set` application):
    /// every digit with barge-in, `none` without, so FreeSWITCH itself
    /// stops the playback on a digit.
    pub fn start_play<S: AsRef<str>>(
        &mut self,
        playlist: &[S],
        opts: PlayOptions,
    ) -> Result<(), VoiceError> {
        if self.play.is_some() {
            return Err(VoiceError::PlayBusy);
        }
        let mut items = VecDeque::with_capacity(playlist.len());
        for item in playlist {
            let item = item.as_ref();
            check_arg("media", item)?;
            items.push_back(item.to_owned());
        }
        let Some(first) = items.pop_front() else {
            return Err(VoiceError::EmptyPlaylist);
        };
        let terminators = if opts.barge_in { ALL_DIGITS } else { "none" };
        let exec = spawn_exec(
            &self.call,
            vec![
                ("set", format!("playback_terminators={terminators}")),
                ("playback", first.clone()),
            ],
        );
        self.play = Some(PlayJob {
            item: first,
            rest: items,
            exec,
            barge_in: opts.barge_in,
            digits: String::new(),
            deadline: opts.timeout.map(|t| Instant::now() + t),
            stop: None,
        });
        Ok(())
    }

    /// Plays a playlist and waits for how it ended (see
    /// [`Voice::start_play`]). Other events that arrive meanwhile stay
    /// queued for [`Voice::next_event`].
    pub async fn play<S: AsRef<str>>(
        &mut self,
        playlist: &[S],
        opts: PlayOptions,
    ) -> Result<PlayOutcome, VoiceError> {
        self.start_play(playlist, opts)?;
        let outcome = self.wait_for(|e| matches!(e, VoiceEvent::Play(_))).await;
        Ok(match outcome {
            Some(VoiceEvent::Play(o)) => o,
            _ => PlayOutcome::RemoteClosed,
        })
    }

    /// Stops any play and recording on the leg (Doug's `mediaStop`): the
    /// `uuid_break <uuid> all` API, which ends the running `playback` or
    /// `record` and flushes queued ones. Their outcomes follow
    /// ([`PlayOutcome::Stopped`], [`RecordOutcome::Done`]).
    pub async fn stop_media(&mut self) -> Result<(), VoiceError> {
        if let Some(p) = &mut self.play {
            p.stop.get_or_insert(PlayStop::User);
            p.rest.clear();
        }
        self.call
            .api(&format!("uuid_break {} all", self.call.uuid()))
            .await?;
        Ok(())
    }

    /// Starts recording the leg to `path` (Doug's `mediaRecord`) and returns
    /// at once; [`VoiceEvent::Record`] tells how it ended. This is
    /// FreeSWITCH's `record <path> <max_sec> <silence_thresh>
    /// <silence_hits>` application: it ends after `max_len`, after
    /// `silence_hits` seconds under `silence_threshold`, on `uuid_break`
    /// ([`Voice::stop_media`]) or at hangup. A relative path is relative to
    /// FreeSWITCH's recordings directory. One recording per leg at a time.
    pub fn start_record(
        &mut self,
        path: impl Into<PathBuf>,
        opts: RecordOptions,
    ) -> Result<(), VoiceError> {
        if self.record.is_some() {
            return Err(VoiceError::RecordBusy);
        }
        let path = path.into();
        let shown = path.to_string_lossy().into_owned();
        check_arg("recording path", &shown)?;
        let secs = opts.max_len.as_secs().max(1);
        let arg = format!(
            "{shown} {secs} {} {}",
            opts.silence_threshold, opts.silence_hits
        );
        self.record = Some(RecordJob {
            path,
            max_len: Duration::from_secs(secs),
            started: Instant::now(),
            exec: exec_future(&self.call, "record", arg),
            opened: false,
        });
        Ok(())
    }

    /// Records and waits for how it ended (see [`Voice::start_record`]).
    pub async fn record(
        &mut self,
        path: impl Into<PathBuf>,
        opts: RecordOptions,
    ) -> Result<RecordOutcome, VoiceError> {
        let path = path.into();
        self.start_record(path.clone(), opts)?;
        let outcome = self.wait_for(|e| matches!(e, VoiceEvent::Record(_))).await;
        Ok(match outcome {
            Some(VoiceEvent::Record(o)) => o,
            _ => RecordOutcome::RemoteClosed { path },
        })
    }

    // ---- DTMF ----------------------------------------------------------

    /// Sends DTMF to the far end (Doug's `sendDTMF(digits, duration,
    /// delay)`): FreeSWITCH's `send_dtmf <digits>@<ms>` application.
    /// `send_dtmf` has no gap of its own (FreeSWITCH spaces queued digits
    /// itself), so with `gap` each digit is one `send_dtmf` followed by a
    /// tokio sleep of `gap`. Digits outside `0-9*#A-D`, more than 64 of
    /// them, a duration of 0 or over 10 s, or a gap over 10 s are refused
    /// before anything is sent.
    pub async fn send_dtmf(
        &mut self,
        digits: &str,
        duration: Duration,
        gap: Option<Duration>,
    ) -> Result<(), VoiceError> {
        dtmf::check_digits(digits)?;
        dtmf::check_duration(duration)?;
        if let Some(gap) = gap
            && gap > MAX_DTMF_DURATION
        {
            return Err(VoiceError::InvalidDtmfGap { gap });
        }
        match gap {
            None => {
                self.call
                    .execute("send_dtmf", &dtmf::send_dtmf_arg(digits, duration))
                    .await?;
            }
            Some(gap) => {
                let mut buf = [0u8; 4];
                for (i, d) in digits.chars().enumerate() {
                    if i > 0 {
                        tokio::time::sleep(gap).await;
                    }
                    let d = d.encode_utf8(&mut buf);
                    self.call
                        .execute("send_dtmf", &dtmf::send_dtmf_arg(d, duration))
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// Sets how received DTMF is reported (Doug's `dtmfMode(single, inband,
    /// timeout)`). `inband: true` runs FreeSWITCH's in-band detector on the
    /// channel (the `start_dtmf` application; `stop_dtmf` turns it off
    /// again), for far ends that send digits as tones in the audio. A
    /// partial string is discarded.
    pub async fn set_dtmf_mode(&mut self, mode: DtmfMode, inband: bool) -> Result<(), VoiceError> {
        if let DtmfMode::String { terminator, .. } = mode
            && !dtmf::is_dtmf_digit(terminator)
        {
            return Err(VoiceError::InvalidDigit { found: terminator });
        }
        if inband != self.dtmf.inband {
            let app = if inband { "start_dtmf" } else { "stop_dtmf" };
            self.call.execute(app, "").await?;
            self.dtmf.inband = inband;
        }
        self.dtmf.set_mode(mode);
        Ok(())
    }

    /// Starts collecting digits and returns at once;
    /// [`VoiceEvent::Collected`] follows. Collecting ends after `max`
    /// digits, on any of `terminators` (not included), or when `timeout`
    /// runs out. Digits already received and not yet read (queued
    /// [`VoiceEvent::Dtmf`] events, a partial string) count as type-ahead.
    /// While collecting, digits go to the collection, not to DTMF events.
    /// Done from the leg's DTMF events, so it needs nothing from
    /// FreeSWITCH but the digits.
    pub fn start_collect(
        &mut self,
        max: usize,
        terminators: &str,
        timeout: Option<Duration>,
    ) -> Result<(), VoiceError> {
        if self.collect.is_some() {
            return Err(VoiceError::CollectBusy);
        }
        if let Some(found) = terminators.chars().find(|&c| !dtmf::is_dtmf_digit(c)) {
            return Err(VoiceError::InvalidDigit { found });
        }
        let mut job = CollectJob {
            max: max.max(1),
            terminators: terminators.to_owned(),
            deadline: timeout.map(|t| Instant::now() + t),
            digits: String::new(),
        };
        // Type-ahead: digits the app has not read yet.
        let mut ahead = String::new();
        self.queue.retain(|e| match e {
            VoiceEvent::Dtmf { digits } => {
                ahead.push_str(digits);
                false
            }
            _ => true,
        });
        ahead.push_str(&self.dtmf.take_partial());
        for d in ahead.chars() {
            if let Some(end) = job.push(d) {
                self.push(VoiceEvent::Collected(Collected {
                    digits: job.digits,
                    end,
                }));
                return Ok(());
            }
        }
        if self.socket_closed {
            self.push(VoiceEvent::Collected(Collected {
                digits: job.digits,
                end: CollectEnd::Hangup,
            }));
            return Ok(());
        }
        self.collect = Some(job);
        Ok(())
    }

    /// Collects digits and waits for them (see [`Voice::start_collect`]).
    pub async fn collect_digits(
        &mut self,
        max: usize,
        terminators: &str,
        timeout: Option<Duration>,
    ) -> Result<Collected, VoiceError> {
        self.start_collect(max, terminators, timeout)?;
        let got = self
            .wait_for(|e| matches!(e, VoiceEvent::Collected(_)))
            .await;
        Ok(match got {
            Some(VoiceEvent::Collected(c)) => c,
            _ => Collected {
                digits: String::new(),
                end: CollectEnd::Hangup,
            },
        })
    }

    // ---- timers --------------------------------------------------------

    /// Sets a timer (Doug's `setTimer`, with the user data Doug lacked):
    /// after `delay`, [`VoiceEvent::Timer`] with `data`. A tokio timer in
    /// this leg's loop (see [`timers`]).
    pub fn set_timer(&mut self, delay: Duration, data: U) -> Result<TimerId, VoiceError> {
        self.timers.set(Instant::now(), delay, data)
    }

    /// Cancels a timer; `false` if it already fired or was cancelled. A
    /// fired timer whose event is still queued is not withdrawn.
    pub fn cancel_timer(&mut self, id: TimerId) -> bool {
        self.timers.cancel(id)
    }

    // ---- the event loop ------------------------------------------------

    /// The next event; `None` once the leg's socket is closed and every
    /// event has been read (timers and app events die with the leg).
    pub async fn next_event(&mut self) -> Option<VoiceEvent<U>> {
        loop {
            if let Some(e) = self.queue.pop_front() {
                return Some(e);
            }
            if !self.pump().await {
                return None;
            }
        }
    }

    /// Waits for hangup, dropping the events meanwhile, and returns the
    /// hangup cause.
    pub async fn wait_end(&mut self) -> String {
        while let Some(e) = self.next_event().await {
            if let VoiceEvent::Ended { cause } | VoiceEvent::Rejected { cause } = e {
                return cause;
            }
        }
        self.call
            .hangup_cause()
            .unwrap_or_else(|| "SOCKET_CLOSED".into())
    }

    /// Turns the loop until an event matching `pred` is queued and takes
    /// it out; the others stay queued. `None` if the leg ended first.
    async fn wait_for(&mut self, pred: impl Fn(&VoiceEvent<U>) -> bool) -> Option<VoiceEvent<U>> {
        loop {
            if let Some(i) = self.queue.iter().position(&pred) {
                return self.queue.remove(i);
            }
            if !self.pump().await {
                return None;
            }
        }
    }

    fn push(&mut self, e: VoiceEvent<U>) {
        if self.queue.len() >= EVENT_QUEUE {
            self.queue.pop_front();
            self.queue_dropped += 1;
            tracing::warn!(
                uuid = self.call.uuid(),
                dropped = self.queue_dropped,
                "voice app is not reading its events; dropped the oldest"
            );
        }
        self.queue.push_back(e);
    }

    /// One turn of the leg's loop: waits for one thing to happen and queues
    /// the events it makes. `false` when nothing more can happen.
    async fn pump(&mut self) -> bool {
        let busy = self.play.is_some() || self.record.is_some() || self.conference.is_some();
        if self.socket_closed && !busy {
            return false;
        }
        let wake = if self.socket_closed {
            None
        } else {
            [
                self.timers.next_deadline(),
                self.dtmf.deadline(),
                self.collect.as_ref().and_then(|c| c.deadline),
                self.play
                    .as_ref()
                    .filter(|p| p.stop.is_none())
                    .and_then(|p| p.deadline),
            ]
            .into_iter()
            .flatten()
            .min()
        };
        // Raw events first: a DTMF event is queued before the completion
        // of the playback it interrupted, and must be seen first.
        tokio::select! {
            biased;
            raw = self.events.recv(), if !self.socket_closed => match raw {
                Some(event) => self.on_raw(&event),
                None => self.on_socket_closed(),
            },
            r = poll_exec(self.play.as_mut().map(|p| &mut p.exec)) => self.on_play_step(r),
            r = poll_exec(self.record.as_mut().map(|p| &mut p.exec)) => self.on_record_done(r),
            r = poll_exec(self.conference.as_mut().map(|c| &mut c.exec)) => {
                self.conference = None;
                if let Err(error) = r {
                    tracing::debug!(uuid = self.call.uuid(), %error, "conference application ended");
                }
                self.push(VoiceEvent::ConferenceLeft);
            }
            Some(u) = self.app_rx.recv(), if !self.socket_closed => self.push(VoiceEvent::App(u)),
            () = sleep_opt(wake), if wake.is_some() => self.on_deadlines().await,
        }
        true
    }

    fn on_raw(&mut self, event: &Event) {
        match event.name() {
            "DTMF" => {
                if let Some(d) = event.header("DTMF-Digit").and_then(|d| d.chars().next()) {
                    self.on_digit(d);
                }
            }
            "CHANNEL_ANSWER" if !self.answered => {
                self.answered = true;
                self.push(VoiceEvent::Answered);
            }
            "CHANNEL_HANGUP" | "CHANNEL_HANGUP_COMPLETE" => {
                let cause = event.hangup_cause().unwrap_or("NORMAL_CLEARING").to_owned();
                self.on_end(cause);
            }
            "CHANNEL_BRIDGE" => self.push(VoiceEvent::Bridged {
                other: event.header("Other-Leg-Unique-ID").map(str::to_owned),
            }),
            "CHANNEL_UNBRIDGE" => self.push(VoiceEvent::Unbridged),
            "RECORD_START" => {
                if let Some(r) = &mut self.record {
                    r.opened = true;
                }
            }
            _ => {}
        }
    }

    fn on_digit(&mut self, d: char) {
        if let Some(p) = &mut self.play
            && p.barge_in
            && p.stop.is_none()
        {
            // FreeSWITCH stops the playback itself (playback_terminators);
            // the digit belongs to the play's outcome.
            p.digits.push(d);
            return;
        }
        if let Some(job) = &mut self.collect {
            if let Some(end) = job.push(d) {
                let digits = std::mem::take(&mut job.digits);
                self.collect = None;
                self.push(VoiceEvent::Collected(Collected { digits, end }));
            }
            return;
        }
        match self.dtmf.on_digit(d, Instant::now()) {
            Some(DtmfOut::Digits(digits)) => self.push(VoiceEvent::Dtmf { digits }),
            Some(DtmfOut::Timeout(digits)) => self.push(VoiceEvent::DtmfTimeout { digits }),
            None => {}
        }
    }

    fn on_end(&mut self, cause: String) {
        if self.ended {
            return;
        }
        self.ended = true;
        if let Some(job) = self.collect.take() {
            self.push(VoiceEvent::Collected(Collected {
                digits: job.digits,
                end: CollectEnd::Hangup,
            }));
        }
        self.push(if self.is_answered() {
            VoiceEvent::Ended { cause }
        } else {
            VoiceEvent::Rejected { cause }
        });
    }

    fn on_socket_closed(&mut self) {
        self.socket_closed = true;
        self.timers.clear();
        let cause = self
            .call
            .hangup_cause()
            .unwrap_or_else(|| "SOCKET_CLOSED".into());
        self.on_end(cause);
    }

    fn on_play_step(&mut self, r: crate::switch::Result<ExecuteComplete>) {
        let Some(job) = &mut self.play else { return };
        let outcome = match r {
            Ok(_) if self.call.hangup_cause().is_some() => PlayOutcome::RemoteClosed,
            Ok(done) if done.response.as_deref() != Some("FILE PLAYED") => PlayOutcome::Failed {
                reason: format!(
                    "{}: {}",
                    job.item,
                    done.response
                        .as_deref()
                        .unwrap_or("no Application-Response")
                ),
            },
            Ok(_) => match job.stop {
                Some(PlayStop::Timer) => PlayOutcome::TimerExpired,
                Some(PlayStop::User) => PlayOutcome::Stopped,
                None if job.barge_in && !job.digits.is_empty() => PlayOutcome::BargeIn {
                    digits: std::mem::take(&mut job.digits),
                },
                None => match job.rest.pop_front() {
                    Some(next) => {
                        job.exec = exec_future(&self.call, "playback", next.clone());
                        job.item = next;
                        return;
                    }
                    None => PlayOutcome::Done,
                },
            },
            Err(e) if e.is_hangup() || e.is_connection_dropped() => PlayOutcome::RemoteClosed,
            Err(e) => PlayOutcome::Failed {
                reason: format!("{}: {e}", job.item),
            },
        };
        self.play = None;
        self.push(VoiceEvent::Play(outcome));
    }

    fn on_record_done(&mut self, r: crate::switch::Result<ExecuteComplete>) {
        let Some(job) = self.record.take() else {
            return;
        };
        let outcome = match r {
            Ok(_) if self.call.hangup_cause().is_some() => {
                RecordOutcome::RemoteClosed { path: job.path }
            }
            Ok(_) if !job.opened => RecordOutcome::Failed {
                reason: format!(
                    "{}: no RECORD_START, FreeSWITCH did not open the file",
                    job.path.display()
                ),
            },
            Ok(done) => {
                let length = done
                    .event
                    .variable("record_ms")
                    .and_then(|ms| ms.parse::<u64>().ok())
                    .map(Duration::from_millis)
                    .unwrap_or_else(|| job.started.elapsed());
                // FreeSWITCH 1.10 says why in record_completion_cause; if it
                // is absent, a recording that lasted its maximum timed out.
                let timed_out = match done.event.variable("record_completion_cause") {
                    Some(cause) => cause == "success-maxtime",
                    None => length + Duration::from_millis(100) >= job.max_len,
                };
                if timed_out {
                    RecordOutcome::Timeout {
                        path: job.path,
                        length,
                    }
                } else {
                    RecordOutcome::Done {
                        path: job.path,
                        length,
                    }
                }
            }
            Err(e) if e.is_hangup() || e.is_connection_dropped() => {
                RecordOutcome::RemoteClosed { path: job.path }
            }
            Err(e) => RecordOutcome::Failed {
                reason: format!("{}: {e}", job.path.display()),
            },
        };
        self.push(VoiceEvent::Record(outcome));
    }

    async fn on_deadlines(&mut self) {
        let now = Instant::now();
        while let Some((id, data)) = self.timers.pop_due(now) {
            self.push(VoiceEvent::Timer { id, data });
        }
        if let Some(DtmfOut::Timeout(digits)) = self.dtmf.on_deadline(now) {
            self.push(VoiceEvent::DtmfTimeout { digits });
        }
        if let Some(job) = &mut self.collect
            && job.deadline.is_some_and(|d| d <= now)
        {
            let digits = std::mem::take(&mut job.digits);
            self.collect = None;
            self.push(VoiceEvent::Collected(Collected {
                digits,
                end: CollectEnd::Timeout,
            }));
        }
        if let Some(p) = &mut self.play
            && p.stop.is_none()
            && p.deadline.is_some_and(|d| d <= now)
        {
            p.stop = Some(PlayStop::Timer);
            p.rest.clear();
            // Stops the running playback only; its completion then reports
            // TimerExpired.
            if let Err(error) = self
                .call
                .api(&format!("uuid_break {}", self.call.uuid()))
                .await
            {
                tracing::debug!(uuid = self.call.uuid(), %error, "uuid_break for a play timeout failed");
            }
        }
    }
}
