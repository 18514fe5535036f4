//! The applications a channel runs (playback, sleep, park, record,
//! socket, echo, conference, …), with FreeSWITCH's nesting rules: the
//! stack of running applications, the `sendmsg` queue behind an
//! event-locked one, and the dialplan steps of the test extensions.

use super::{Actor, AppFrame, Kind, Role};
use crate::sim::event::now_micros;
use crate::sim::mailbox::{ChanMsg, ExecReq};
use crate::sim::numberplan::{Extension, Outcome};
use crate::sim::queue::Queued;
use crate::sim::snapshot::{at, normalize_cause};
use crate::sim::text::is_true;
use crate::sim::wav::{PlayLength, file_type, play_length, write_recording};
use crate::sim::{Conference, ConferenceMember};
use crate::sim::{EavesdropMode, EavesdropSnapshot, lock};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;

impl Actor {
    /// A sendmsg execute: run now, nest inside the running application, or
    /// wait behind an event-locked one (trace 09).
    pub(super) fn submit(&mut self, req: ExecReq) {
        let can_run = self
            .top_open()
            .unwrap_or(self.dialplan.is_empty() || !self.run_dialplan);
        if let Some(Queued::Exec(req)) = self.waiting.offer(Queued::Exec(req), can_run) {
            self.exec(req);
        }
    }

    /// Whether the running application lets another execute start now
    /// (`None`: nothing runs). A socket app that has not parked yet holds
    /// its messages until the next frame; a locked frame holds them unless
    /// it is one that runs "forever" (park, socket, echo, bridge,
    /// conference), which nested executes interrupt as in FreeSWITCH.
    pub(super) fn top_open(&self) -> Option<bool> {
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
    pub(super) fn pump(&mut self) {
        loop {
            if self.hung_up() || self.life.is_destroyed() {
                return;
            }
            let top_open = self.top_open().unwrap_or(true);
            if let Some(q) = self.waiting.next(top_open) {
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
    pub(super) fn pause_top(&mut self) {
        let now = Instant::now();
        if let Some(f) = self.stack.last_mut()
            && let Kind::Timed { until, left, .. } = &mut f.kind
            && let Some(u) = until.take()
        {
            *left = Some(u.saturating_duration_since(now));
        }
    }

    pub(super) fn resume_top(&mut self) {
        let now = Instant::now();
        if let Some(f) = self.stack.last_mut()
            && let Kind::Timed { until, left, .. } = &mut f.kind
            && let Some(l) = left.take()
        {
            *until = Some(now + l);
        }
    }

    /// `switch_core_session_exec`.
    pub(super) fn exec(&mut self, req: ExecReq) {
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
                (self.core.connect_socket)(
                    self.core.clone(),
                    self.me.clone(),
                    addr,
                    asynchronous,
                    full,
                );
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
                            let result = (core.dial_leg)(core.clone(), arg).await;
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

    pub(super) fn record_path(&self, file: &str) -> std::path::PathBuf {
        let p = std::path::Path::new(file);
        match &self.core.cfg.recordings_dir {
            Some(dir) if p.is_relative() => dir.join(p),
            _ => p.to_path_buf(),
        }
    }

    /// Ends the application on top of the stack (`interrupted`: cut short by
    /// a hangup or break).
    pub(super) fn finish_top(&mut self, interrupted: bool) {
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
                let response = if self.life.killed() {
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
    pub(super) fn complete(&mut self, frame: AppFrame) {
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
