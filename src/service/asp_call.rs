//! The asp-call flow (docs/PROTOCOL.md, events and control), written with the call API of
//! [`crate::switch`]: the agent is one user of the library.
//!
//! 1. Ring the caller (side 0) through the dial template, showing
//!    `caller_id_lega`. `call-start` once FreeSWITCH has created that leg
//!    (and always before any other event of the call).
//! 2. When the caller answers (the leg's socket connects): `answer-event`
//!    side 0, ringback to the caller, and ring the callee (side 1) showing
//!    `caller_id_legb`.
//! 3. When the callee answers: `answer-event` side 1; once both legs are
//!    confirmed up, the ringback is broken and the legs are bridged
//!    (`uuid_bridge`, retried once). A bridge that still fails ends both
//!    legs.
//! 4. Any hangup: `hangup-event` with FreeSWITCH's cause for that side, and
//!    every other side is ended too; each side that existed gets exactly
//!    one `hangup-event`.
//!
//! # Ending legs for certain
//!
//! Every leg is ended with `uuid_kill` on the inbound connection: a ringing
//! leg with `ORIGINATOR_CANCEL`, an answered one (the barger included) with
//! `NORMAL_CLEARING`. A `sendmsg` hangup is never relied on: FreeSWITCH
//! queues it behind an application executed with `event-lock` and it may
//! never run (trace 10). A leg cancelled before FreeSWITCH created its
//! channel (`-ERR No such channel!`) is killed again when its channel
//! shows up. The ringback runs without `event-lock`, so nothing ever waits
//! behind it, and it is broken before the bridge.
//!
//! Every leg also carries FreeSWITCH's own bound: as soon as its channel
//! exists, `sched_hangup +<max-call-duration> <uuid> ALLOTTED_TIMEOUT`, so a
//! leg outlives no agent failure by more than `--max-call-duration`
//! (counted from the channel's creation). Its channel variables
//! `redswitch_instance=<instance id>` and `dial_id=<dial_id>` let an operator
//! find it (`hupall <cause> dial_id <dial_id>`).
//!
//! # Pacing
//!
//! Originates are paced under the switch's sessions-per-second limit (see
//! [`crate::service::pacing`]). The caller's slot is reserved by whoever
//! takes the job, before [`AspCall::start`], so jobs are dialled in the
//! order they were taken; the callee's and the barger's slots are reserved
//! here, without holding up the call's other work. An originate refused by
//! the throttle (`DESTINATION_OUT_OF_ORDER` before any channel exists) is
//! dialled again after [`THROTTLE_BACKOFF`].
//!
//! One task drives one call: a single `select!` over the news of its legs,
//! its control mailbox and the reports of its media tasks, so every event
//! of a call is published in order and no state is shared.
//!
//! Control: every message gets exactly one `ack` or `error`.
//! `barge` dials side 2, which eavesdrops on side 0 muted once it answers;
//! `whisper`/`mute`/`threeway`/`unthreeway` queue eavesdrop's DTMF controls
//! on the barger's own channel with `uuid_recv_dtmf` (`2` the caller hears
//! the barger, `3` both hear, `0` listen only; switch_ivr_async.c). Only one
//! barger at a time. `play`, `stop-media`, `send-dtmf`, `record` and
//! `stop-record` act on the answered sides; one recording at a time (a
//! second `record` is an `error` while one runs). DTMF pressed on side 0 or
//! 1 is published as `dtmf-event`, one event per digit as FreeSWITCH
//! reports them (`1234#` is five events; a controller joins them); the
//! barger's keys are eavesdrop controls and are not published.
//!
//! `stop-media` ends the whole playlist of a side (`media-done-event`
//! `stopped`), not just the file playing; a new `play` on a side replaces
//! the one running there, which ends `stopped`. A play still running when
//! the call ends reports `hangup`. An event a control message brings about
//! (`record-done-event` of `stop-record`) is published after its `ack`.
//!
//! A side that was to be dialled but never got a channel (the throttle
//! kept refusing it, or the call ended while it waited for its slot) gets
//! a `hangup-event` with the refusal's cause, or `ORIGINATOR_CANCEL`.

use crate::esl::{CallCommand, Command, Event as FsEvent, Execute, SendMsg};
use crate::service::control::{ControlMessage, ControlRouter, PlaySide, RouterError, Subscription};
use crate::service::events::{CallEvents, Event, MediaDoneReason, RecordDoneReason, Side};
use crate::service::job::AspCallJob;
use crate::service::pacing::{Pacer, THROTTLE_BACKOFF, Turn, sessions_of};
use crate::service::stats::CallMeter;
use crate::service::validate::{Media, PhoneNumber};
use crate::switch::app::{DialError, Dialer, Originate, Progress, Ringing};
use crate::switch::{Call, CallEvents as LegEvents};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// What the caller hears while the callee rings (North American ringback,
/// until broken).
pub const RINGBACK: &str = "tone_stream://%(2000,4000,440,480);loops=-1";

/// The `failure` cause of a job whose `dial_id` belongs to a call still
/// live on this instance.
pub const DIAL_ID_IN_USE: &str = "dial_id already has an active call on this instance";

/// The cause FreeSWITCH gives a leg that reached `--max-call-duration`.
pub const ALLOTTED_TIMEOUT: &str = "ALLOTTED_TIMEOUT";

/// The cause both legs are ended with when they cannot be bridged.
pub const BRIDGE_FAILED_CAUSE: &str = "NORMAL_TEMPORARY_FAILURE";

/// The channel variable that carries the call's `dial_id` on every leg.
pub const DIAL_ID_VARIABLE: &str = "dial_id";

/// The cause of a throttled originate (no channel was created).
const THROTTLED: &str = "DESTINATION_OUT_OF_ORDER";

/// Settings of the flow that come from the command line.
#[derive(Debug, Clone)]
pub struct CallSettings {
    /// `--dial-template`, with `{provider}` and `{number}`.
    pub dial_template: String,
    /// `--media-dir`, made absolute: where `play` finds file names.
    pub media_dir: PathBuf,
    /// `--recordings-dir`, made absolute: where `record` writes.
    pub recordings_dir: PathBuf,
    /// How long a leg may ring (`originate_timeout`).
    pub ring_timeout: Duration,
    /// How long control messages are still answered (with an error) after
    /// the call ended.
    pub linger: Duration,
    /// `--max-call-duration`: FreeSWITCH hangs every leg up this long after
    /// its creation (`ALLOTTED_TIMEOUT`).
    pub max_call_duration: Duration,
    /// Paces originates under the switch's sessions-per-second limit.
    pub pacer: Pacer,
}

impl Default for CallSettings {
    fn default() -> Self {
        Self {
            dial_template: "sofia/gateway/{provider}/{number}".into(),
            media_dir: PathBuf::from("media"),
            recordings_dir: PathBuf::from("recordings"),
            ring_timeout: Duration::from_secs(60),
            linger: Duration::from_secs(10),
            max_call_duration: Duration::from_secs(4 * 3600),
            pacer: Pacer::default(),
        }
    }
}

impl CallSettings {
    /// Sessions the caller's originate creates (for reserving its slot
    /// before the job is started).
    pub fn caller_sessions(&self) -> u32 {
        sessions_of(&self.dial_template)
    }
}

/// Why a call was never attempted (published as `failure`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{cause}")]
pub struct NotAttempted {
    /// The `cause` of the `failure` event.
    pub cause: String,
    /// The job itself was refused (its `dial_id` belongs to a live call),
    /// rather than FreeSWITCH refusing the call: it is kept on the
    /// dead-letter list like a bad job.
    pub refused: bool,
}

/// Why [`AspCall::start`] did not start a call.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The call will not be attempted; `failure` was published.
    #[error(transparent)]
    NotAttempted(#[from] NotAttempted),
    /// FreeSWITCH could not be asked (the link is down): nothing was
    /// published, and the job should go back to the queue.
    #[error("FreeSWITCH is not reachable: {0}")]
    SwitchAway(DialError),
}

/// Why a control message was not carried out (the `reason` of its
/// `error`).
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// Every side has hung up.
    #[error("call has ended")]
    Ended,
    /// `barge` while a barger is on the call.
    #[error("a barger is already on the call")]
    BargerPresent,
    /// The side the message acts on has not answered (or has hung up).
    #[error("side {0} is not on an answered call")]
    NotAnswered(Side),
    /// A barger control with no answered barger.
    #[error("no answered barger on the call")]
    NoBarger,
    /// `record` while a recording runs.
    #[error("a recording is already running on this call")]
    RecordingRunning,
    /// `stop-record` with no recording.
    #[error("no recording is running on this call")]
    NoRecording,
    /// FreeSWITCH answered `-ERR …`.
    #[error("{0}")]
    Switch(String),
    /// FreeSWITCH could not be asked, or refused the originate.
    #[error(transparent)]
    Dial(#[from] DialError),
}

/// The dial string for `number` through `provider`.
pub fn endpoint(template: &str, provider: &str, number: &PhoneNumber) -> String {
    template
        .replace("{provider}", provider)
        .replace("{number}", number.as_str())
}

/// A leg's originate and how it has fared.
struct Dial {
    req: Originate,
    /// Throttle refusals so far.
    refusals: usize,
}

/// A placed leg that has not answered.
struct Placed {
    ringing: Ringing,
    dial: Dial,
    /// FreeSWITCH's maximum duration is scheduled on the channel.
    bounded: bool,
    /// The leg was cancelled with this cause; a channel that shows up
    /// afterwards (the cancel came before FreeSWITCH created it) is killed
    /// too.
    cancelled: Option<&'static str>,
}

/// One side of the call.
enum Leg {
    /// Never dialled.
    Absent,
    /// To be dialled at `at`: waiting for a pacing slot (`paced`) or for a
    /// retry after the throttle refused it (then a slot is reserved).
    Waiting {
        dial: Dial,
        at: tokio::time::Instant,
        paced: bool,
    },
    /// Dialled, not answered.
    Ringing(Box<Placed>),
    /// Answered: its socket is ours.
    Up(Call, Option<LegEvents>),
    /// Hung up (its `hangup-event` is out).
    Gone,
}

/// What a leg has to say.
enum LegNews {
    /// Its time to be dialled has come.
    Due,
    Created,
    Answered(Call),
    Dtmf(String),
    Ended(String, bool),
}

impl Leg {
    fn is_live(&self) -> bool {
        matches!(self, Leg::Waiting { .. } | Leg::Ringing(_) | Leg::Up(..))
    }

    fn call(&self) -> Option<&Call> {
        match self {
            Leg::Up(call, _) => Some(call),
            _ => None,
        }
    }

    /// The leg's channel uuid, once dialled (for the `leg` span).
    fn uuid(&self) -> Option<&str> {
        match self {
            Leg::Ringing(p) => Some(p.ringing.uuid()),
            Leg::Up(call, _) => Some(call.uuid()),
            _ => None,
        }
    }

    /// Cancel-safe: state lives in the leg, not in this future.
    async fn news(&mut self) -> LegNews {
        match self {
            Leg::Waiting { at, .. } => {
                tokio::time::sleep_until(*at).await;
                LegNews::Due
            }
            Leg::Ringing(p) => match p.ringing.next().await {
                Progress::Created => LegNews::Created,
                Progress::Answered(call) => LegNews::Answered(call),
                Progress::Ended { cause, created } => LegNews::Ended(cause, created),
            },
            Leg::Up(call, events) => loop {
                let next = match events {
                    Some(events) => events.recv().await,
                    None => None,
                };
                match next {
                    Some(e) if e.name() == "DTMF" => {
                        if let Some(digit) = e.header("DTMF-Digit") {
                            return LegNews::Dtmf(digit.to_owned());
                        }
                    }
                    Some(e)
                        if e.name() == "CHANNEL_HANGUP"
                            || e.name() == "CHANNEL_HANGUP_COMPLETE" =>
                    {
                        return LegNews::Ended(hangup_cause(&e, call), true);
                    }
                    Some(_) => {}
                    None => {
                        let cause = match call.wait_hangup().await {
                            Ok(cause) => cause,
                            Err(_) => call
                                .hangup_cause()
                                .unwrap_or_else(|| "NORMAL_CLEARING".into()),
                        };
                        return LegNews::Ended(cause, true);
                    }
                }
            },
            Leg::Absent | Leg::Gone => std::future::pending().await,
        }
    }
}

fn hangup_cause(e: &FsEvent, call: &Call) -> String {
    e.hangup_cause()
        .map(str::to_owned)
        .or_else(|| call.hangup_cause())
        .unwrap_or_else(|| "NORMAL_CLEARING".into())
}

/// Reports of the tasks a call spawns.
enum Report {
    /// A play task ended; `play` tells which one.
    MediaDone {
        side: Side,
        play: u64,
        reason: MediaDoneReason,
    },
}

/// A `play` running on one side.
///
/// `uuid_break` alone does not stop a playlist: FreeSWITCH ends the broken
/// `playback` with the same "FILE PLAYED" as a finished one, and the task
/// would go on with the next item. So the task also watches `stop`, which
/// `stop-media` (or a newer `play` on the side) cancels before breaking.
struct Playing {
    /// Which play this is (reports of older plays are told apart by it).
    id: u64,
    /// Cancelled to stop the playlist.
    stop: CancellationToken,
}

/// A recording in progress.
struct Recording {
    path: PathBuf,
    started: Instant,
    uuid: String,
}

/// The eavesdrop DTMF control for each barger mode (switch_ivr_async.c).
fn eavesdrop_digit(msg: &ControlMessage) -> Option<char> {
    match msg {
        ControlMessage::Whisper => Some('2'),
        ControlMessage::Threeway => Some('3'),
        ControlMessage::Mute | ControlMessage::Unthreeway => Some('0'),
        _ => None,
    }
}

/// One asp-call from its first originate to its last hangup.
pub struct AspCall {
    dialer: Dialer,
    settings: CallSettings,
    job: AspCallJob,
    events: CallEvents,
    control: Option<Subscription>,
    legs: [Leg; 3],
    started: bool,
    /// The play running on side 0 and side 1, if any.
    playing: [Option<Playing>; 2],
    /// Numbers the plays of this call.
    plays: u64,
    recording: Option<Recording>,
    reports_tx: mpsc::Sender<Report>,
    reports: mpsc::Receiver<Report>,
    /// Counts the call and sees what it publishes.
    meter: CallMeter,
}

impl AspCall {
    /// Subscribes to the call's channel and rings the caller. Returns once
    /// FreeSWITCH accepted the originate (the job's fate is decided), or
    /// publishes `failure` and returns why the call was not attempted. The
    /// caller's pacing slot must have been waited for already (see the
    /// module doc); the originate waits for `turn`, so calls started
    /// concurrently are dialled in the order of their turns.
    pub async fn start(
        dialer: Dialer,
        router: &ControlRouter,
        settings: CallSettings,
        job: AspCallJob,
        events: CallEvents,
        mut turn: Turn,
        meter: CallMeter,
    ) -> Result<Self, StartError> {
        let control = match router.subscribe(&job.dial_id).await {
            Ok(sub) => Some(sub),
            Err(RouterError::InUse(_)) => {
                // Two live calls on one channel would both obey (and both
                // answer) every control message: the newcomer is refused,
                // the live call goes on untouched.
                let mut refused = fail(&events, DIAL_ID_IN_USE).await;
                refused.refused = true;
                return Err(refused.into());
            }
            Err(error) => {
                // Without pub/sub the call still works; it just cannot be
                // controlled. Redis is reconnecting; say so loudly.
                tracing::warn!(dial_id = %job.dial_id, %error, "no control subscription for this call");
                None
            }
        };
        let (reports_tx, reports) = mpsc::channel(16);
        let mut call = Self {
            dialer,
            settings,
            job,
            events,
            control,
            legs: [Leg::Absent, Leg::Absent, Leg::Absent],
            started: false,
            playing: [None, None],
            plays: 0,
            recording: None,
            reports_tx,
            reports,
            meter,
        };
        let req = call.originate(
            Side::Caller,
            &call.job.caller_number.clone(),
            &call.job.caller_id_lega.clone(),
        );
        turn.wait().await;
        let placed = call.dialer.originate(&req).await;
        turn.release();
        match placed {
            Ok(ringing) => {
                call.events.leg_dialled(Side::Caller, ringing.uuid());
                call.legs[0] = Leg::Ringing(Box::new(Placed {
                    ringing,
                    dial: Dial { req, refusals: 0 },
                    bounded: false,
                    cancelled: None,
                }));
                Ok(call)
            }
            // Given back only when the originate was certainly not sent: one
            // cut off in flight may still ring the caller, so giving the
            // job back could dial it twice.
            Err(DialError::Switch(e))
                if matches!(
                    e,
                    crate::switch::Error::NotConnected | crate::switch::Error::Closed
                ) =>
            {
                Err(StartError::SwitchAway(e.into()))
            }
            Err(error) => {
                tracing::warn!(dial_id = %call.job.dial_id, %error, "originate refused");
                Err(fail(&call.events, &format!("originate refused: {error}"))
                    .await
                    .into())
            }
        }
    }

    fn originate(&self, side: Side, number: &PhoneNumber, caller_id: &PhoneNumber) -> Originate {
        Originate {
            endpoint: endpoint(
                &self.settings.dial_template,
                self.job.call_provider.as_str(),
                number,
            ),
            caller_id_number: Some(caller_id.as_str().to_owned()),
            caller_id_name: Some(caller_id.as_str().to_owned()),
            timeout: Some(self.settings.ring_timeout),
            variables: vec![
                (DIAL_ID_VARIABLE.into(), self.job.dial_id.to_string()),
                ("redswitch_side".into(), side.number().to_string()),
            ],
        }
    }

    /// Puts a side in line for its pacing slot; it is dialled when the
    /// slot comes (see [`AspCall::on_due`]).
    fn dial_paced(&mut self, side: Side, req: Originate) {
        let slot = self.settings.pacer.reserve(sessions_of(&req.endpoint));
        self.legs[side.number() as usize] = Leg::Waiting {
            dial: Dial { req, refusals: 0 },
            at: slot.instant(),
            paced: true,
        };
    }

    async fn publish(&self, event: Event) {
        self.meter.published(&event);
        tracing::debug!(event = event.event_type(), "publishing");
        if let Err(error) = self.events.publish(&event).await {
            tracing::warn!(dial_id = %self.job.dial_id, %error, event = event.event_type(), "could not publish");
        }
    }

    /// `call-start`, once, before anything else of the call: under load
    /// the caller's socket may connect before its CHANNEL_CREATE is read.
    async fn ensure_started(&mut self) {
        if !self.started {
            self.started = true;
            if let Err(error) = self.events.start_call().await {
                tracing::warn!(dial_id = %self.job.dial_id, %error, "could not publish call-start");
            }
        }
    }

    /// Has FreeSWITCH bound the leg's life, once its channel exists.
    async fn bound(&self, uuid: &str) {
        if let Err(error) = self
            .dialer
            .schedule_hangup(uuid, self.settings.max_call_duration, ALLOTTED_TIMEOUT)
            .await
        {
            tracing::warn!(dial_id = %self.job.dial_id, uuid, %error, "could not schedule the maximum call duration");
        }
    }

    /// Ends a side for certain: a ringing side is cancelled, an answered
    /// one killed (`uuid_kill`), a side still waiting to be dialled gets
    /// its `hangup-event` at once. The others' `hangup-event`s follow
    /// through [`Leg::news`].
    async fn end_leg(&mut self, side: Side, cause: &'static str) {
        let i = side.number() as usize;
        let uuid = match &mut self.legs[i] {
            Leg::Waiting { .. } => {
                self.legs[i] = Leg::Gone;
                self.publish(Event::Hangup {
                    side,
                    cause: "ORIGINATOR_CANCEL".into(),
                })
                .await;
                return;
            }
            Leg::Ringing(p) => {
                if p.cancelled.is_some() {
                    return;
                }
                p.cancelled = Some("ORIGINATOR_CANCEL");
                p.ringing.uuid().to_owned()
            }
            Leg::Up(call, _) => call.uuid().to_owned(),
            Leg::Absent | Leg::Gone => return,
        };
        let cause = if matches!(self.legs[i], Leg::Ringing(_)) {
            "ORIGINATOR_CANCEL"
        } else {
            cause
        };
        if let Err(error) = self.dialer.kill(&uuid, cause).await {
            tracing::warn!(dial_id = %self.job.dial_id, %uuid, %error, "uuid_kill failed");
        }
    }

    /// Ends every side still live.
    async fn end_all(&mut self, cause: &'static str) {
        for side in [Side::Caller, Side::Callee, Side::Barger] {
            self.end_leg(side, cause).await;
        }
    }

    /// Drives the call until every side has hung up.
    pub async fn run(mut self) {
        while self.legs.iter().any(Leg::is_live) {
            let [l0, l1, l2] = &mut self.legs;
            let control = async {
                match &mut self.control {
                    Some(sub) => sub.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                news = l0.news() => self.on_news(Side::Caller, news).await,
                news = l1.news() => self.on_news(Side::Callee, news).await,
                news = l2.news() => self.on_news(Side::Barger, news).await,
                Some(report) = self.reports.recv() => self.on_report(report).await,
                delivery = control => match delivery {
                    Some(Ok(msg)) => self.on_control(msg).await,
                    Some(Err(bad)) => self.publish(bad.to_event()).await,
                    None => self.control = None,
                },
            }
        }
        self.finish_recording(RecordDoneReason::Hangup).await;
        // Plays that reported before the end are published as they ended;
        // any still running ends with its leg: `hangup` (their tasks'
        // own reports, which may come later, are no longer read).
        while let Ok(report) = self.reports.try_recv() {
            self.on_report(report).await;
        }
        for side in [Side::Caller, Side::Callee] {
            if self.playing[side.number() as usize].take().is_some() {
                self.publish(Event::MediaDone {
                    side,
                    reason: MediaDoneReason::Hangup,
                })
                .await;
            }
        }
        if let Some(sub) = self.control.take() {
            sub.linger(self.events.clone(), self.settings.linger);
        }
    }

    #[tracing::instrument(name = "leg", skip_all, fields(side = side.number(), uuid = self.legs[side.number() as usize].uuid()))]
    async fn on_news(&mut self, side: Side, news: LegNews) {
        let i = side.number() as usize;
        match news {
            LegNews::Due => self.on_due(side).await,
            LegNews::Created => {
                if side == Side::Caller {
                    self.ensure_started().await;
                }
                let (uuid, cancelled) = match &mut self.legs[i] {
                    Leg::Ringing(p) => {
                        p.bounded = true;
                        (p.ringing.uuid().to_owned(), p.cancelled)
                    }
                    _ => return,
                };
                self.bound(&uuid).await;
                if let Some(cause) = cancelled {
                    // Cancelled before FreeSWITCH had created it.
                    let _ = self.dialer.kill(&uuid, cause).await;
                }
            }
            LegNews::Answered(call) => {
                if side == Side::Caller {
                    self.ensure_started().await;
                }
                let (bounded, cancelled) = match &self.legs[i] {
                    Leg::Ringing(p) => (p.bounded, p.cancelled),
                    _ => (false, None),
                };
                if !bounded {
                    self.bound(call.uuid()).await;
                }
                let events = call.events();
                self.legs[i] = Leg::Up(call.clone(), events);
                self.publish(Event::Answer { side }).await;
                if cancelled.is_some() {
                    // It answered as it was being cancelled: end it.
                    self.end_leg(side, "NORMAL_CLEARING").await;
                } else {
                    self.on_answer(side, call).await;
                }
            }
            LegNews::Dtmf(digits) => {
                if side != Side::Barger {
                    self.publish(Event::Dtmf { side, digits }).await;
                }
            }
            LegNews::Ended(cause, created) => {
                if let Leg::Ringing(p) = &mut self.legs[i]
                    && !created
                    && p.cancelled.is_none()
                    && cause == THROTTLED
                    && p.dial.refusals < THROTTLE_BACKOFF.len()
                {
                    // Refused by the switch's sessions-per-second limit
                    // before any channel existed: dial it again later.
                    let wait = THROTTLE_BACKOFF[p.dial.refusals];
                    tracing::info!(dial_id = %self.job.dial_id, %side, ?wait, "originate throttled by FreeSWITCH; retrying");
                    self.meter.originate_throttled();
                    let dial = Dial {
                        req: p.dial.req.clone(),
                        refusals: p.dial.refusals + 1,
                    };
                    self.legs[i] = Leg::Waiting {
                        dial,
                        at: tokio::time::Instant::now() + wait,
                        paced: false,
                    };
                    return;
                }
                self.legs[i] = Leg::Gone;
                if side == Side::Caller && !created && !self.started {
                    // No channel ever existed: the call was not attempted.
                    self.publish(Event::Failure { cause }).await;
                    return;
                }
                if side == Side::Caller {
                    self.ensure_started().await;
                }
                self.publish(Event::Hangup { side, cause }).await;
                if side != Side::Barger {
                    // A two-party call ends with either party; the barger
                    // goes with it.
                    self.end_all("NORMAL_CLEARING").await;
                }
            }
        }
    }

    /// A waiting side's time has come: a retry reserves its pacing slot, a
    /// side whose slot came is dialled.
    async fn on_due(&mut self, side: Side) {
        let i = side.number() as usize;
        let Leg::Waiting { dial, paced, .. } = std::mem::replace(&mut self.legs[i], Leg::Absent)
        else {
            return;
        };
        if !paced {
            let slot = self.settings.pacer.reserve(sessions_of(&dial.req.endpoint));
            self.legs[i] = Leg::Waiting {
                dial,
                at: slot.instant(),
                paced: true,
            };
            return;
        }
        match self.dialer.originate(&dial.req).await {
            Ok(ringing) => {
                self.events.leg_dialled(side, ringing.uuid());
                self.legs[i] = Leg::Ringing(Box::new(Placed {
                    ringing,
                    dial,
                    bounded: false,
                    cancelled: None,
                }));
            }
            Err(error) => {
                tracing::warn!(dial_id = %self.job.dial_id, %side, %error, "originate refused");
                self.legs[i] = Leg::Gone;
                if side == Side::Caller && !self.started {
                    self.publish(Event::Failure {
                        cause: "NORMAL_TEMPORARY_FAILURE".into(),
                    })
                    .await;
                    return;
                }
                self.publish(Event::Hangup {
                    side,
                    cause: "NORMAL_TEMPORARY_FAILURE".into(),
                })
                .await;
                if side != Side::Barger {
                    self.end_all("NORMAL_CLEARING").await;
                }
            }
        }
    }

    async fn on_answer(&mut self, side: Side, call: Call) {
        match side {
            Side::Caller => {
                // Ringback while the callee rings, without `event-lock`: a
                // locked app would hold back anything queued behind it. It
                // is broken before the bridge.
                let ringback = Command::SendMsg(SendMsg {
                    uuid: None,
                    command: CallCommand::Execute(Execute {
                        app: "playback".into(),
                        arg: Some(RINGBACK.into()),
                        event_lock: false,
                        ..Default::default()
                    }),
                    event_uuid: None,
                });
                if let Err(error) = call.send(ringback).await {
                    tracing::debug!(dial_id = %self.job.dial_id, %error, "ringback not started");
                }
                let req = self.originate(
                    Side::Callee,
                    &self.job.callee_number.clone(),
                    &self.job.caller_id_legb.clone(),
                );
                self.dial_paced(Side::Callee, req);
            }
            Side::Callee => {
                // Both legs must be up: a caller that hung up (or is being
                // ended) cannot be bridged, and the callee goes with it.
                let caller = match &self.legs[0] {
                    Leg::Up(c, _) if c.hangup_cause().is_none() => c.uuid().to_owned(),
                    _ => {
                        self.end_leg(Side::Callee, "NORMAL_CLEARING").await;
                        return;
                    }
                };
                let inbound = self.dialer.inbound();
                if let Err(error) = inbound.api(&format!("uuid_break {caller} all")).await {
                    tracing::debug!(%error, "uuid_break of the ringback failed");
                }
                if let Err(error) = self.dialer.bridge(&caller, call.uuid()).await {
                    tracing::warn!(dial_id = %self.job.dial_id, %error, "uuid_bridge failed; ending both legs");
                    self.end_leg(Side::Caller, BRIDGE_FAILED_CAUSE).await;
                    self.end_leg(Side::Callee, BRIDGE_FAILED_CAUSE).await;
                }
            }
            Side::Barger => {
                let Some(target) = self.legs[0].call().map(|c| c.uuid().to_owned()) else {
                    self.end_leg(Side::Barger, "NORMAL_CLEARING").await;
                    return;
                };
                // Eavesdrop runs until the target hangs up; it starts in
                // listen-only mode (muted).
                tokio::spawn(
                    async move {
                        let _ = call.execute("eavesdrop", &target).await;
                    }
                    .in_current_span(),
                );
            }
        }
    }

    async fn on_report(&mut self, report: Report) {
        match report {
            Report::MediaDone { side, play, reason } => {
                let slot = &mut self.playing[side.number() as usize];
                if slot.as_ref().is_some_and(|p| p.id == play) {
                    *slot = None;
                }
                self.publish(Event::MediaDone { side, reason }).await;
            }
        }
    }

    /// Carries out one control message and answers it. An event that the
    /// message itself brings about (the `record-done-event` of a
    /// `stop-record`) is published after the `ack`, as every other
    /// consequence of a control message is.
    async fn on_control(&mut self, msg: ControlMessage) {
        let received = Instant::now();
        let (answer, then) = match self.control_result(&msg).await {
            Ok(then) => (msg.ack(), then),
            Err(refusal) => (msg.error(refusal.to_string()), None),
        };
        self.publish(answer).await;
        self.meter.control_answered(received);
        if let Some(event) = then {
            self.publish(event).await;
        }
    }

    fn answered(&self, side: Side) -> Result<Call, Refusal> {
        self.legs[side.number() as usize]
            .call()
            .cloned()
            .ok_or(Refusal::NotAnswered(side))
    }

    fn sides(side: PlaySide) -> Vec<Side> {
        match side {
            PlaySide::One(s) => vec![s],
            PlaySide::Both => vec![Side::Caller, Side::Callee],
        }
    }

    async fn api(&self, cmd: String) -> Result<(), Refusal> {
        match self.dialer.inbound().api(&cmd).await {
            Ok(reply) if reply.starts_with("-ERR") => Err(Refusal::Switch(reply.trim().to_owned())),
            Ok(_) => Ok(()),
            Err(crate::switch::Error::CommandFailed { reply }) => Err(Refusal::Switch(reply)),
            Err(error) => Err(DialError::from(error).into()),
        }
    }

    /// Stops the play running on `side`, if any: its playlist ends at the
    /// item being played, which `uuid_break` cuts short. The play reports
    /// `stopped` through [`Report::MediaDone`].
    async fn stop_play(&mut self, side: Side, call: &Call) -> Result<(), Refusal> {
        let Some(playing) = &self.playing[side.number() as usize] else {
            return Ok(());
        };
        playing.stop.cancel();
        self.api(format!("uuid_break {} all", call.uuid())).await
    }

    /// Does what `msg` asks. `Ok` carries an event to publish after the
    /// `ack`; `Err` why it was refused.
    ///
    /// `barge` is acked once the barger is in line to be dialled (its
    /// pacing slot); an originate FreeSWITCH then refuses shows as the
    /// barger's `hangup-event`.
    async fn control_result(&mut self, msg: &ControlMessage) -> Result<Option<Event>, Refusal> {
        match msg {
            ControlMessage::Hangup => {
                if !self.legs.iter().any(Leg::is_live) {
                    return Err(Refusal::Ended);
                }
                self.end_all("NORMAL_CLEARING").await;
                Ok(None)
            }
            ControlMessage::Barge {
                phone_number,
                caller_id,
            } => {
                if self.legs[2].is_live() {
                    return Err(Refusal::BargerPresent);
                }
                self.answered(Side::Caller)?;
                let req = self.originate(Side::Barger, phone_number, caller_id);
                self.dial_paced(Side::Barger, req);
                Ok(None)
            }
            ControlMessage::Whisper
            | ControlMessage::Mute
            | ControlMessage::Threeway
            | ControlMessage::Unthreeway => {
                let barger = self.answered(Side::Barger).map_err(|_| Refusal::NoBarger)?;
                let digit = eavesdrop_digit(msg).unwrap_or('0');
                self.api(format!("uuid_recv_dtmf {} {digit}", barger.uuid()))
                    .await?;
                Ok(None)
            }
            ControlMessage::Play { media, side } => {
                let sides = Self::sides(*side);
                let calls = sides
                    .iter()
                    .map(|&s| self.answered(s))
                    .collect::<Result<Vec<_>, _>>()?;
                let playlist: Vec<String> = media.iter().map(|m| self.media_path(m)).collect();
                for (side, call) in sides.into_iter().zip(calls) {
                    // A new play replaces the one running on that side.
                    self.stop_play(side, &call).await?;
                    self.plays += 1;
                    let playing = Playing {
                        id: self.plays,
                        stop: CancellationToken::new(),
                    };
                    let (tx, play_id, stop) =
                        (self.reports_tx.clone(), playing.id, playing.stop.clone());
                    self.playing[side.number() as usize] = Some(playing);
                    let playlist = playlist.clone();
                    tokio::spawn(async move {
                        let reason = play(&call, &playlist, &stop).await;
                        let _ = tx
                            .send(Report::MediaDone {
                                side,
                                play: play_id,
                                reason,
                            })
                            .await;
                    });
                }
                Ok(None)
            }
            ControlMessage::StopMedia { side } => {
                let sides = Self::sides(*side);
                let calls = sides
                    .iter()
                    .map(|&s| self.answered(s))
                    .collect::<Result<Vec<_>, _>>()?;
                // Nothing playing is not an error: the play may have ended
                // just before the stop arrived.
                for (side, call) in sides.into_iter().zip(calls) {
                    self.stop_play(side, &call).await?;
                }
                Ok(None)
            }
            ControlMessage::SendDtmf {
                digits,
                side,
                duration_ms,
            } => {
                let call = self.answered(*side)?;
                let digits = match duration_ms {
                    Some(ms) => format!("{digits}@{ms}"),
                    None => digits.to_string(),
                };
                self.api(format!("uuid_send_dtmf {} {digits}", call.uuid()))
                    .await?;
                Ok(None)
            }
            ControlMessage::Record { name } => {
                if self.recording.is_some() {
                    return Err(Refusal::RecordingRunning);
                }
                let caller = self.answered(Side::Caller)?;
                let path = self.settings.recordings_dir.join(format!("{name}.wav"));
                let path_str = path.to_string_lossy().into_owned();
                // Stereo: the caller on the left, the far end on the right.
                self.api(format!("uuid_setvar {} RECORD_STEREO true", caller.uuid()))
                    .await?;
                self.api(format!("uuid_record {} start {path_str}", caller.uuid()))
                    .await?;
                self.recording = Some(Recording {
                    path,
                    started: Instant::now(),
                    uuid: caller.uuid().to_owned(),
                });
                Ok(None)
            }
            ControlMessage::StopRecord => match self.recording.take() {
                None => Err(Refusal::NoRecording),
                Some(rec) => Ok(Some(
                    self.end_recording(rec, RecordDoneReason::Stopped).await,
                )),
            },
        }
    }

    fn media_path(&self, media: &Media) -> String {
        match media {
            Media::File(name) => self
                .settings
                .media_dir
                .join(name)
                .to_string_lossy()
                .into_owned(),
            Media::Tone(tone) => tone.clone(),
            Media::Silence(ms) => format!("silence_stream://{ms}"),
        }
    }

    /// Publishes the `record-done-event` of a recording still running
    /// when the call ended.
    async fn finish_recording(&mut self, reason: RecordDoneReason) {
        if let Some(rec) = self.recording.take() {
            let done = self.end_recording(rec, reason).await;
            self.publish(done).await;
        }
    }

    /// Stops a recording (unless the call already ended it) and returns its
    /// `record-done-event`.
    async fn end_recording(&self, rec: Recording, reason: RecordDoneReason) -> Event {
        let path = rec.path.to_string_lossy().into_owned();
        if reason == RecordDoneReason::Stopped
            && let Err(error) = self
                .api(format!("uuid_record {} stop {path}", rec.uuid))
                .await
        {
            tracing::warn!(%error, "uuid_record stop failed");
        }
        Event::RecordDone {
            path,
            reason,
            duration_ms: u64::try_from(rec.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        }
    }
}

/// Plays a playlist on one leg, item by item, until `stop` is cancelled.
async fn play(call: &Call, playlist: &[String], stop: &CancellationToken) -> MediaDoneReason {
    for item in playlist {
        if stop.is_cancelled() {
            return MediaDoneReason::Stopped;
        }
        match call.playback(item).await {
            // A playback cut short by the hangup also reads "FILE PLAYED".
            Ok(_) if call.hangup_cause().is_some() => return MediaDoneReason::Hangup,
            Ok(done) if done.response.as_deref() == Some("FILE PLAYED") => {}
            Ok(_) => return MediaDoneReason::Failed,
            Err(error) if error.is_hangup() || error.is_connection_dropped() => {
                return MediaDoneReason::Hangup;
            }
            Err(_) => return MediaDoneReason::Failed,
        }
    }
    if stop.is_cancelled() {
        // The last item was cut short.
        MediaDoneReason::Stopped
    } else {
        MediaDoneReason::Done
    }
}

/// Publishes `failure` and returns it as the reason.
async fn fail(events: &CallEvents, cause: &str) -> NotAttempted {
    if let Err(error) = events
        .publish(&Event::Failure {
            cause: cause.to_owned(),
        })
        .await
    {
        tracing::warn!(dial_id = %events.dial_id(), %error, "could not publish failure");
    }
    NotAttempted {
        cause: cause.to_owned(),
        refused: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_fills_the_template() {
        let n = PhoneNumber::parse("n", "+15551234").unwrap();
        assert_eq!(
            endpoint("sofia/gateway/{provider}/{number}", "gw1", &n),
            "sofia/gateway/gw1/+15551234"
        );
        assert_eq!(
            endpoint("loopback/{number}/redswitch-test", "gw1", &n),
            "loopback/+15551234/redswitch-test"
        );
    }

    #[test]
    fn eavesdrop_modes_follow_switch_ivr_async() {
        assert_eq!(eavesdrop_digit(&ControlMessage::Whisper), Some('2'));
        assert_eq!(eavesdrop_digit(&ControlMessage::Threeway), Some('3'));
        assert_eq!(eavesdrop_digit(&ControlMessage::Mute), Some('0'));
        assert_eq!(eavesdrop_digit(&ControlMessage::Unthreeway), Some('0'));
        assert_eq!(eavesdrop_digit(&ControlMessage::Hangup), None);
    }
}
