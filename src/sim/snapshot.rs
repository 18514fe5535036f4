//! One simulated channel: its state, its caller profile and variables, and
//! the events it fires, laid out header for header as FreeSWITCH 1.10 does
//! (`switch_channel_event_set_data`: basic data, caller profile, other leg,
//! then variables for the event types that carry them).
//!
//! The state here is owned by the channel's task ([`crate::sim::channel`]);
//! nothing in this module does I/O.

use crate::esl::Event;
use crate::sim::ChannelSnapshot;
use crate::sim::event::{CoreInfo, Origin, now_micros, origin};
use std::collections::BTreeMap;

/// Where each channel event type is fired from (from the traces).
pub(crate) mod at {
    use super::{Origin, origin};
    pub const CREATE: Origin = origin(
        "switch_core_state_machine.c",
        "switch_core_session_run",
        "626",
    );
    pub const ANSWER: Origin = origin(
        "switch_channel.c",
        "switch_channel_perform_mark_answered",
        "3846",
    );
    pub const PROGRESS: Origin = origin(
        "switch_channel.c",
        "switch_channel_perform_mark_ring_ready_value",
        "3505",
    );
    pub const PROGRESS_MEDIA: Origin = origin(
        "switch_channel.c",
        "switch_channel_perform_mark_pre_answered",
        "3716",
    );
    pub const PARK: Origin = origin("switch_ivr.c", "switch_ivr_park", "1002");
    pub const UNPARK: Origin = origin("switch_ivr.c", "switch_ivr_park", "1213");
    pub const EXECUTE: Origin = origin("switch_core_session.c", "switch_core_session_exec", "2944");
    pub const EXECUTE_COMPLETE: Origin =
        origin("switch_core_session.c", "switch_core_session_exec", "2967");
    pub const BRIDGE_EXECUTE: Origin =
        origin("switch_ivr_bridge.c", "uuid_bridge_on_soft_execute", "1236");
    pub const PLAYBACK_START: Origin =
        origin("switch_ivr_play_say.c", "switch_ivr_play_file", "1646");
    pub const PLAYBACK_STOP: Origin =
        origin("switch_ivr_play_say.c", "switch_ivr_play_file", "2020");
    pub const RECORD_START: Origin = origin("switch_ivr_async.c", "record_callback", "1248");
    pub const RECORD_STOP: Origin = origin("switch_ivr_async.c", "record_callback", "1386");
    pub const DTMF: Origin = origin("switch_channel.c", "switch_channel_dequeue_dtmf", "677");
    pub const HANGUP: Origin = origin("switch_channel.c", "switch_channel_perform_hangup", "3445");
    pub const STATE: Origin = origin(
        "switch_channel.c",
        "switch_channel_perform_set_running_state",
        "2408",
    );
    pub const CALLSTATE: Origin = origin(
        "switch_channel.c",
        "switch_channel_perform_set_callstate",
        "301",
    );
    pub const HANGUP_COMPLETE: Origin = origin(
        "switch_core_state_machine.c",
        "switch_core_session_reporting_state",
        "943",
    );
    pub const DESTROY: Origin = origin(
        "switch_core_session.c",
        "switch_core_session_perform_destroy",
        "1779",
    );
    pub const BRIDGE: Origin = origin(
        "switch_ivr_bridge.c",
        "switch_ivr_multi_threaded_bridge",
        "1689",
    );
    pub const UNBRIDGE: Origin = origin(
        "switch_ivr_bridge.c",
        "switch_ivr_multi_threaded_bridge",
        "1879",
    );
    pub const PRIVATE_COMMAND: Origin =
        origin("switch_ivr.c", "switch_ivr_parse_next_event", "804");
    pub const DATA: Origin = origin("mod_event_socket.c", "parse_command", "2021");
}

/// FreeSWITCH's channel states (`Channel-State` / `Channel-State-Number`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum CState {
    Init,
    Routing,
    SoftExecute,
    Execute,
    ExchangeMedia,
    ConsumeMedia,
    Hibernate,
    Reset,
    Hangup,
    Reporting,
    Destroy,
}

impl CState {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Init => "CS_INIT",
            Self::Routing => "CS_ROUTING",
            Self::SoftExecute => "CS_SOFT_EXECUTE",
            Self::Execute => "CS_EXECUTE",
            Self::ExchangeMedia => "CS_EXCHANGE_MEDIA",
            Self::ConsumeMedia => "CS_CONSUME_MEDIA",
            Self::Hibernate => "CS_HIBERNATE",
            Self::Reset => "CS_RESET",
            Self::Hangup => "CS_HANGUP",
            Self::Reporting => "CS_REPORTING",
            Self::Destroy => "CS_DESTROY",
        }
    }

    pub(crate) fn number(self) -> &'static str {
        match self {
            Self::Init | Self::Routing => "2",
            Self::SoftExecute => "3",
            Self::Execute => "4",
            Self::ExchangeMedia => "5",
            Self::ConsumeMedia => "7",
            Self::Hibernate => "8",
            Self::Reset => "9",
            Self::Hangup => "10",
            Self::Reporting => "11",
            Self::Destroy => "12",
        }
    }
}

/// A caller profile, as `switch_caller_profile_event_set_data` prints it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Profile {
    pub(crate) direction: &'static str,
    pub(crate) logical_direction: &'static str,
    pub(crate) dialplan: Option<String>,
    pub(crate) caller_id_name: Option<String>,
    pub(crate) caller_id_number: String,
    pub(crate) orig_caller_id_number: Option<String>,
    pub(crate) callee_id_name: Option<String>,
    pub(crate) callee_id_number: Option<String>,
    pub(crate) network_addr: Option<String>,
    pub(crate) ani: String,
    pub(crate) destination_number: String,
    pub(crate) source: String,
    pub(crate) transfer_source: Option<String>,
    pub(crate) context: String,
    pub(crate) channel_name: String,
    pub(crate) profile_index: u32,
    pub(crate) profile_created: u64,
    pub(crate) channel_created: u64,
    pub(crate) answered: u64,
    pub(crate) progress: u64,
    pub(crate) progress_media: u64,
    pub(crate) hangup: u64,
    pub(crate) bridged: u64,
}

impl Profile {
    /// Appends the profile with a prefix (`Caller`, `Channel`, `Other-Leg`).
    /// `Other-Leg` profiles omit `Profile-Index`, as FreeSWITCH does.
    pub(crate) fn push(&self, e: &mut Event, prefix: &str, uuid: &str) {
        let mut name = String::with_capacity(48);
        let mut h = |e: &mut Event, suffix: &str, value: &str| {
            name.clear();
            name.push_str(prefix);
            name.push('-');
            name.push_str(suffix);
            e.push_header(&name, value);
        };
        h(e, "Direction", self.direction);
        h(e, "Logical-Direction", self.logical_direction);
        if let Some(d) = &self.dialplan {
            h(e, "Dialplan", d);
        }
        if let Some(n) = &self.caller_id_name {
            h(e, "Caller-ID-Name", n);
        }
        h(e, "Caller-ID-Number", &self.caller_id_number);
        if let Some(n) = &self.orig_caller_id_number {
            h(e, "Orig-Caller-ID-Number", n);
        }
        if let Some(n) = &self.callee_id_name {
            h(e, "Callee-ID-Name", n);
        }
        if let Some(n) = &self.callee_id_number {
            h(e, "Callee-ID-Number", n);
        }
        if let Some(n) = &self.network_addr {
            h(e, "Network-Addr", n);
        }
        h(e, "ANI", &self.ani);
        h(e, "Destination-Number", &self.destination_number);
        h(e, "Unique-ID", uuid);
        h(e, "Source", &self.source);
        if let Some(t) = &self.transfer_source {
            h(e, "Transfer-Source", t);
        }
        h(e, "Context", &self.context);
        h(e, "Channel-Name", &self.channel_name);
        if prefix != "Other-Leg" {
            h(e, "Profile-Index", &self.profile_index.to_string());
        }
        h(e, "Profile-Created-Time", &self.profile_created.to_string());
        h(e, "Channel-Created-Time", &self.channel_created.to_string());
        h(e, "Channel-Answered-Time", &self.answered.to_string());
        h(e, "Channel-Progress-Time", &self.progress.to_string());
        h(
            e,
            "Channel-Progress-Media-Time",
            &self.progress_media.to_string(),
        );
        h(e, "Channel-Hangup-Time", &self.hangup.to_string());
        h(e, "Channel-Transfer-Time", "0");
        h(e, "Channel-Resurrect-Time", "0");
        h(e, "Channel-Bridged-Time", &self.bridged.to_string());
        h(e, "Channel-Last-Hold", "0");
        h(e, "Channel-Hold-Accum", "0");
        h(e, "Screen-Bit", "true");
        h(e, "Privacy-Hide-Name", "false");
        h(e, "Privacy-Hide-Number", "false");
    }
}

/// Ordered channel variables. Setting a variable moves it to the end, as
/// FreeSWITCH's delete-then-add does, so event variable order matches.
#[derive(Debug, Clone, Default)]
pub(crate) struct Vars(Vec<(String, String)>);

impl Vars {
    pub(crate) fn set(&mut self, name: &str, value: &str) {
        self.0.retain(|(n, _)| n != name);
        self.0.push((name.to_owned(), value.to_owned()));
    }

    /// Sets without moving an existing variable (FreeSWITCH's
    /// `switch_channel_set_variable` on an unchanged value is a no-op).
    pub(crate) fn set_keep(&mut self, name: &str, value: &str) {
        if let Some(v) = self.0.iter_mut().find(|(n, _)| n == name) {
            v.1 = value.to_owned();
        } else {
            self.0.push((name.to_owned(), value.to_owned()));
        }
    }

    pub(crate) fn unset(&mut self, name: &str) {
        self.0.retain(|(n, _)| n != name);
    }

    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    pub(crate) fn to_map(&self) -> BTreeMap<String, String> {
        self.0.iter().cloned().collect()
    }
}

/// The other leg of a bridge, as the events show it (`Other-Type` and an
/// `Other-Leg-*` profile).
#[derive(Debug, Clone)]
pub(crate) struct OtherLeg {
    pub(crate) kind: &'static str,
    pub(crate) uuid: String,
    pub(crate) profile: Profile,
}

/// Everything about a channel that its events print.
#[derive(Debug, Clone)]
pub(crate) struct ChanState {
    pub(crate) uuid: String,
    pub(crate) name: String,
    pub(crate) direction: &'static str,
    pub(crate) state: CState,
    pub(crate) call_state: &'static str,
    pub(crate) answer_state: &'static str,
    pub(crate) hit_dialplan: bool,
    pub(crate) hangup_cause: Option<String>,
    pub(crate) codec: Option<&'static str>,
    pub(crate) profile: Profile,
    pub(crate) other: Option<OtherLeg>,
    pub(crate) vars: Vars,
    /// A state already requested (`channel->state`) while the channel
    /// thread still runs the current one: `Channel-State-Number` shows it.
    pub(crate) requested_state: Option<CState>,
}

impl ChanState {
    /// The state block of `switch_channel_event_set_basic_data`.
    fn push_basic(&self, e: &mut Event, state_number: Option<&'static str>) {
        e.push_header("Channel-State", self.state.name());
        e.push_header("Channel-Call-State", self.call_state);
        e.push_header(
            "Channel-State-Number",
            state_number.unwrap_or_else(|| self.state.number()),
        );
        e.push_header("Channel-Name", &self.name);
        e.push_header("Unique-ID", &self.uuid);
        e.push_header("Call-Direction", self.direction);
        e.push_header("Presence-Call-Direction", self.direction);
        e.push_header(
            "Channel-HIT-Dialplan",
            if self.hit_dialplan { "true" } else { "false" },
        );
        e.push_header("Channel-Call-UUID", &self.uuid);
        e.push_header("Answer-State", self.answer_state);
        if let Some(cause) = &self.hangup_cause {
            e.push_header("Hangup-Cause", cause);
        }
        if let Some(codec) = self.codec {
            let (rate, bits) = ("8000", if codec == "L16" { "128000" } else { "64000" });
            e.push_header("Channel-Read-Codec-Name", codec);
            e.push_header("Channel-Read-Codec-Rate", rate);
            e.push_header("Channel-Read-Codec-Bit-Rate", bits);
            e.push_header("Channel-Write-Codec-Name", codec);
            e.push_header("Channel-Write-Codec-Rate", rate);
            e.push_header("Channel-Write-Codec-Bit-Rate", bits);
        }
    }

    /// The full channel data: basic block, caller profile, other leg and,
    /// when `with_vars`, every variable.
    pub(crate) fn push_data(&self, e: &mut Event, with_vars: bool) {
        let hangup_number = self
            .hangup_cause
            .as_ref()
            .and_then(|_| (self.state < CState::Hangup).then_some(CState::Hangup.number()))
            .or_else(|| self.requested_state.map(CState::number));
        self.push_basic(e, hangup_number);
        self.profile.push(e, "Caller", &self.uuid);
        if let Some(other) = &self.other {
            e.push_header("Other-Type", other.kind);
            other.profile.push(e, "Other-Leg", &other.uuid);
        }
        if with_vars {
            self.push_vars(e);
        }
    }

    fn push_vars(&self, e: &mut Event) {
        let mut name = String::with_capacity(64);
        for (n, v) in self.vars.iter() {
            name.clear();
            name.push_str("variable_");
            name.push_str(n);
            e.push_header(&name, v);
        }
    }

    /// A channel event: core headers, `pre` headers (FreeSWITCH adds some,
    /// like `Hangup-Cause` or `Bridge-A-Unique-ID`, before the channel
    /// data), the channel data, then `post` headers.
    pub(crate) fn event(
        &self,
        core: &CoreInfo,
        name: &str,
        at: Origin,
        pre: &[(&str, &str)],
        post: &[(&str, &str)],
    ) -> Event {
        let mut e = core.event(name, at);
        for (n, v) in pre {
            e.push_header(n, v);
        }
        self.push_data(&mut e, carries_variables(name));
        for (n, v) in post {
            e.push_header(n, v);
        }
        e
    }

    /// The `connect` reply of an outbound socket: CHANNEL_DATA with the
    /// profile printed twice (`Channel-*` first), then the reply headers.
    pub(crate) fn connect_reply(&self, core: &CoreInfo, asynchronous: bool, full: bool) -> Event {
        let mut e = core.event("CHANNEL_DATA", at::DATA);
        self.profile.push(&mut e, "Channel", &self.uuid);
        self.push_data(&mut e, true);
        e.push_header("Content-Type", "command/reply");
        e.push_header("Reply-Text", "+OK\n");
        e.push_header("Socket-Mode", if asynchronous { "async" } else { "static" });
        e.push_header("Control", if full { "full" } else { "single-channel" });
        e
    }

    pub(crate) fn answered(&self) -> bool {
        self.profile.answered != 0
    }

    pub(crate) fn snapshot(&self, extra: &SnapExtra) -> ChannelSnapshot {
        ChannelSnapshot {
            uuid: self.uuid.clone(),
            name: self.name.clone(),
            state: self.state.name().to_owned(),
            answered: self.answered() && self.hangup_cause.is_none(),
            variables: self.vars.to_map(),
            caller_id_number: extra.caller_id_number.clone(),
            destination: extra.destination.clone(),
            bridged_to: extra.bridged_to.clone(),
            eavesdrop: extra.eavesdrop.clone(),
            playing: extra.playing.clone(),
            recording: extra.recording.clone(),
            received_dtmf: extra.received_dtmf.clone(),
            sent_dtmf: extra.sent_dtmf.clone(),
            hangup_cause: self.hangup_cause.clone(),
        }
    }
}

/// Snapshot fields that are not part of the event data.
#[derive(Debug, Clone, Default)]
pub(crate) struct SnapExtra {
    pub(crate) caller_id_number: String,
    pub(crate) destination: String,
    pub(crate) bridged_to: Option<String>,
    pub(crate) eavesdrop: Option<crate::sim::EavesdropSnapshot>,
    pub(crate) playing: Option<String>,
    pub(crate) recording: Option<String>,
    pub(crate) received_dtmf: String,
    pub(crate) sent_dtmf: String,
    /// Muted by `conference … mute` (not part of the snapshot).
    pub(crate) conference_muted: bool,
}

/// Whether FreeSWITCH adds the channel variables to an event of this type
/// (`switch_channel_event_set_extended_data`): CHANNEL_STATE,
/// CHANNEL_CALLSTATE, DTMF and PRIVATE_COMMAND carry none.
pub(crate) fn carries_variables(name: &str) -> bool {
    matches!(
        name,
        "CHANNEL_CREATE"
            | "CHANNEL_ORIGINATE"
            | "CHANNEL_UUID"
            | "CHANNEL_ANSWER"
            | "CHANNEL_PARK"
            | "CHANNEL_UNPARK"
            | "CHANNEL_BRIDGE"
            | "CHANNEL_UNBRIDGE"
            | "CHANNEL_PROGRESS"
            | "CHANNEL_PROGRESS_MEDIA"
            | "CHANNEL_HANGUP"
            | "CHANNEL_HANGUP_COMPLETE"
            | "CHANNEL_DATA"
            | "CHANNEL_EXECUTE"
            | "CHANNEL_EXECUTE_COMPLETE"
            | "CHANNEL_DESTROY"
            | "RECORD_START"
            | "RECORD_STOP"
            | "PLAYBACK_START"
            | "PLAYBACK_STOP"
            | "CHANNEL_HOLD"
            | "CHANNEL_UNHOLD"
            | "CUSTOM"
    )
}

/// Hangup causes and their Q.850 codes (`variable_hangup_cause_q850`).
pub(crate) fn q850(cause: &str) -> u32 {
    match cause {
        "UNALLOCATED_NUMBER" => 1,
        "NO_ROUTE_DESTINATION" => 3,
        "NORMAL_CLEARING" => 16,
        "USER_BUSY" => 17,
        "NO_USER_RESPONSE" => 18,
        "NO_ANSWER" => 19,
        "CALL_REJECTED" => 21,
        "DESTINATION_OUT_OF_ORDER" => 27,
        "INVALID_NUMBER_FORMAT" => 28,
        "NORMAL_UNSPECIFIED" => 31,
        "NORMAL_CIRCUIT_CONGESTION" => 34,
        "NETWORK_OUT_OF_ORDER" => 38,
        "NORMAL_TEMPORARY_FAILURE" => 41,
        "SWITCH_CONGESTION" => 42,
        "ORIGINATOR_CANCEL" => 487,
        "LOSE_RACE" => 502,
        _ => 0,
    }
}

/// Known hangup cause names (`switch_channel_str2cause`); anything else is
/// taken as NORMAL_CLEARING, as FreeSWITCH does.
pub(crate) fn normalize_cause(cause: &str) -> String {
    const KNOWN: &[&str] = &[
        "UNALLOCATED_NUMBER",
        "NO_ROUTE_DESTINATION",
        "NORMAL_CLEARING",
        "USER_BUSY",
        "NO_USER_RESPONSE",
        "NO_ANSWER",
        "SUBSCRIBER_ABSENT",
        "CALL_REJECTED",
        "NUMBER_CHANGED",
        "DESTINATION_OUT_OF_ORDER",
        "INVALID_NUMBER_FORMAT",
        "FACILITY_REJECTED",
        "NORMAL_UNSPECIFIED",
        "NORMAL_CIRCUIT_CONGESTION",
        "NETWORK_OUT_OF_ORDER",
        "NORMAL_TEMPORARY_FAILURE",
        "SWITCH_CONGESTION",
        "ORIGINATOR_CANCEL",
        "MANAGER_REQUEST",
        "LOSE_RACE",
        "ALLOTTED_TIMEOUT",
        "RECOVERY_ON_TIMER_EXPIRE",
        "MEDIA_TIMEOUT",
        "INVALID_GATEWAY",
        "GATEWAY_DOWN",
        "PROGRESS_TIMEOUT",
        "EXCHANGE_ROUTING_ERROR",
        "INCOMPATIBLE_DESTINATION",
        "USER_NOT_REGISTERED",
        "BEARERCAPABILITY_NOTAVAIL",
        "SERVICE_UNAVAILABLE",
        "CHAN_NOT_IMPLEMENTED",
        "INVALID_CALL_REFERENCE",
    ];
    let upper = cause.trim().to_ascii_uppercase();
    if KNOWN.contains(&upper.as_str()) {
        upper
    } else {
        "NORMAL_CLEARING".to_owned()
    }
}

/// The CDR variables FreeSWITCH sets at hangup (`switch_channel_set_timestamps`).
pub(crate) fn set_cdr_vars(st: &mut ChanState, last_app: Option<(&str, &str)>) {
    let p = st.profile.clone();
    let end = now_micros();
    let cause = st.hangup_cause.clone().unwrap_or_default();
    st.vars.set("hangup_cause", &cause);
    st.vars.set("hangup_cause_q850", &q850(&cause).to_string());
    let digits = st.vars.get("digits_dialed").unwrap_or("none").to_owned();
    st.vars.set("digits_dialed", &digits);
    let stamp = crate::sim::event::format_local;
    st.vars.set("start_stamp", &stamp(p.channel_created));
    st.vars
        .set("profile_start_stamp", &stamp(p.profile_created));
    if p.answered != 0 {
        st.vars.set("answer_stamp", &stamp(p.answered));
    }
    if p.progress != 0 {
        st.vars.set("progress_stamp", &stamp(p.progress));
    }
    st.vars.set("end_stamp", &stamp(end));
    let pair = |st: &mut ChanState, name: &str, us: u64| {
        st.vars
            .set(&format!("{name}_epoch"), &(us / 1_000_000).to_string());
        st.vars.set(&format!("{name}_uepoch"), &us.to_string());
    };
    pair(st, "start", p.channel_created);
    pair(st, "profile_start", p.profile_created);
    pair(st, "answer", p.answered);
    pair(st, "bridge", p.bridged);
    pair(st, "last_hold", 0);
    st.vars.set("hold_accum_seconds", "0");
    st.vars.set("hold_accum_usec", "0");
    st.vars.set("hold_accum_ms", "0");
    pair(st, "resurrect", 0);
    pair(st, "progress", p.progress);
    pair(st, "progress_media", p.progress_media);
    pair(st, "end", end);
    if let Some((app, arg)) = last_app {
        st.vars.set("last_app", app);
        st.vars.set("last_arg", arg);
    }
    let cid = match &p.caller_id_name {
        Some(n) => format!("\"{n}\" <{}>", p.caller_id_number),
        None => p.caller_id_number.clone(),
    };
    st.vars.set("caller_id", &cid);
    let since = |from: u64| {
        if from == 0 {
            0
        } else {
            end.saturating_sub(from)
        }
    };
    let dur = end.saturating_sub(p.channel_created);
    let bill = since(p.answered);
    let progress = if p.progress == 0 {
        0
    } else {
        p.progress.saturating_sub(p.channel_created)
    };
    let answer = if p.answered == 0 {
        0
    } else {
        p.answered.saturating_sub(p.channel_created)
    };
    let media = if p.progress_media == 0 {
        0
    } else {
        p.progress_media.saturating_sub(p.channel_created)
    };
    for (unit, div) in [("sec", 1_000_000u64), ("msec", 1_000), ("usec", 1)] {
        let (d, b, pr, an, wa, pm) = (
            dur / div,
            bill / div,
            progress / div,
            answer / div,
            answer / div,
            media / div,
        );
        let first = match unit {
            "sec" => "duration",
            "msec" => "mduration",
            _ => "uduration",
        };
        let s = match unit {
            "sec" => "sec",
            "msec" => "msec",
            _ => "usec",
        };
        st.vars.set(first, &d.to_string());
        st.vars.set(&format!("bill{s}"), &b.to_string());
        st.vars.set(&format!("progress{s}"), &pr.to_string());
        st.vars.set(&format!("answer{s}"), &an.to_string());
        st.vars.set(&format!("wait{s}"), &wa.to_string());
        st.vars.set(&format!("progress_media{s}"), &pm.to_string());
        st.vars.set(&format!("flow_bill{s}"), &b.to_string());
    }
}
