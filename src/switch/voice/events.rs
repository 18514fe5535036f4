//! The typed event model of a voice application, keeping the distinctions
//! of Doug's event hierarchy (`shtoom.doug.events`) as enum variants.
//!
//! Doug used class inheritance (a `MediaPlayUserBargeInEvent` is both a
//! `DTMFReceivedEvent` and a `MediaPlayDoneEvent`); here each family is one
//! enum and the sub-kinds are its variants, so a `match` replaces
//! `isinstance`:
//!
//! | Doug | Redswitch |
//! |---|---|
//! | `InboundCallStartedEvent` / `OutboundCallStartedEvent` | [`VoiceEvent::CallStarted`] with [`Direction`] |
//! | `CallAnsweredEvent` | [`VoiceEvent::Answered`] |
//! | `CallRejectedEvent` | [`VoiceEvent::Rejected`] (hung up before answer) |
//! | `CallEndedEvent` | [`VoiceEvent::Ended`] |
//! | `DTMFReceivedEvent` / `DTMFTimeoutEvent` | [`VoiceEvent::Dtmf`] / [`VoiceEvent::DtmfTimeout`] |
//! | `MediaPlay…Event` | [`VoiceEvent::Play`] with [`PlayOutcome`] |
//! | `MediaRecord…Event` | [`VoiceEvent::Record`] with [`RecordOutcome`] |
//! | `TimeoutEvent` | [`VoiceEvent::Timer`] (a timer set with `set_timer`) |
//! | `ApplicationSpecificEvent` | [`VoiceEvent::App`] |

use crate::switch::call::Direction;
use std::path::PathBuf;
use std::time::Duration;

/// Identifies a timer set with [`super::Voice::set_timer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TimerId(pub(crate) u64);

/// How a play (a playlist) ended. Doug's `MediaPlayDoneEvent` family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlayOutcome {
    /// Every item played to its end (`MediaPlayContentDoneEvent`).
    Done,
    /// A DTMF digit interrupted the play (`MediaPlayUserBargeInEvent`); the
    /// digits pressed during the play, the interrupting one last.
    BargeIn {
        /// The digits, in order.
        digits: String,
    },
    /// An item could not be played (`MediaPlayContentFailedEvent`):
    /// FreeSWITCH's `Application-Response` (`FILE NOT FOUND`, `PLAYBACK
    /// ERROR`) or the error that stopped the command. The call goes on.
    Failed {
        /// Why, with the item.
        reason: String,
    },
    /// The channel hung up during the play (`MediaPlayRemoteClosedEvent`).
    RemoteClosed,
    /// The play's own time limit ([`super::PlayOptions::timeout`]) ran out
    /// and the play was stopped (`MediaPlayTimerExpiredEvent`).
    TimerExpired,
    /// [`super::Voice::stop_media`] stopped it (Doug's `mediaStop`; Doug
    /// reported that as content done).
    Stopped,
}

/// How a recording ended. Doug's `MediaRecordDoneEvent` family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordOutcome {
    /// Ended by silence, by [`super::Voice::stop_media`] or by a DTMF
    /// terminator (`MediaRecordDoneEvent`).
    Done {
        /// The file FreeSWITCH wrote.
        path: PathBuf,
        /// How long it recorded.
        length: Duration,
    },
    /// The maximum length was reached (`MediaRecordTimeoutExceededEvent`).
    Timeout {
        /// The file FreeSWITCH wrote.
        path: PathBuf,
        /// How long it recorded.
        length: Duration,
    },
    /// The channel hung up while recording (`MediaRecordRemoteClosedEvent`);
    /// FreeSWITCH still closes the file with what it had.
    RemoteClosed {
        /// The file.
        path: PathBuf,
    },
    /// FreeSWITCH could not record (`MediaRecordFailedEvent` /
    /// `MediaRecordStoreFailedEvent`): no RECORD_START came, so the file was
    /// never opened, or the command failed.
    Failed {
        /// Why.
        reason: String,
    },
}

/// How a [`super::Voice::collect_digits`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CollectEnd {
    /// The wanted number of digits arrived.
    Count,
    /// The terminator was pressed (it is not part of the digits).
    Terminator,
    /// The timeout ran out first.
    Timeout,
    /// The channel hung up or its socket closed.
    Hangup,
}

/// Digits collected by [`super::Voice::collect_digits`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collected {
    /// The digits, without the terminator.
    pub digits: String,
    /// Why collecting stopped.
    pub end: CollectEnd,
}

/// An event of a voice application's leg. `U` is the application's own
/// data, carried by timers and application-specific events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VoiceEvent<U = ()> {
    /// The leg is there (always the first event). `Inbound`: a call came
    /// in through the dialplan; `Outbound`: the app placed it.
    CallStarted {
        /// Who started the call.
        direction: Direction,
    },
    /// The leg was answered (CHANNEL_ANSWER, or already answered when its
    /// socket connected, as placed calls are).
    Answered,
    /// The leg hung up before it was ever answered (CHANNEL_HANGUP).
    Rejected {
        /// FreeSWITCH's Hangup-Cause.
        cause: String,
    },
    /// The answered leg hung up (CHANNEL_HANGUP), or its socket closed.
    Ended {
        /// FreeSWITCH's Hangup-Cause (`SOCKET_CLOSED` when the socket
        /// closed without one).
        cause: String,
    },
    /// DTMF: one digit in [`super::DtmfMode::Single`], or a string ended by
    /// its terminator in [`super::DtmfMode::String`] (terminator not
    /// included).
    Dtmf {
        /// The digit or digits.
        digits: String,
    },
    /// [`super::DtmfMode::String`]: the first-to-last-digit timeout ran out
    /// before the terminator; the digits so far.
    DtmfTimeout {
        /// The digits pressed before the timeout.
        digits: String,
    },
    /// A play ended.
    Play(PlayOutcome),
    /// A recording ended.
    Record(RecordOutcome),
    /// Digits collected with [`super::Voice::start_collect`].
    Collected(Collected),
    /// A timer set with [`super::Voice::set_timer`] expired (Doug's
    /// `TimeoutEvent`).
    Timer {
        /// Which timer.
        id: TimerId,
        /// The data given to `set_timer`.
        data: U,
    },
    /// The leg was bridged to another channel (CHANNEL_BRIDGE).
    Bridged {
        /// The other channel's uuid (`Other-Leg-Unique-ID`).
        other: Option<String>,
    },
    /// The bridge ended (CHANNEL_UNBRIDGE).
    Unbridged,
    /// The leg left its conference: its `conference` application ended
    /// (kicked, or the conference ended).
    ConferenceLeft,
    /// Application-specific: sent through [`super::Voice::app_sender`].
    App(U),
}
