//! Media on a channel: breaking applications, DTMF in and out, the
//! recording media bug, and conference membership.

use super::{Actor, Kind, MediaBug, Role, Timer};
use crate::esl::Event;
use crate::sim::mailbox::{ChanMsg, ConferenceOp};
use crate::sim::snapshot::at;
use crate::sim::text::is_true;
use crate::sim::wav::write_recording;
use crate::sim::{EavesdropMode, lock};
use std::time::Duration;
use tokio::time::Instant;

impl Actor {
    pub(super) fn break_media(&mut self, all: bool) {
        loop {
            let breakable = self.stack.last().is_some_and(|f| {
                matches!(
                    f.kind,
                    Kind::Timed { playback: true, .. } | Kind::Timed { .. } | Kind::Record { .. }
                )
            });
            if !breakable {
                break;
            }
            self.finish_top(true);
            if !all {
                break;
            }
        }
        // `uuid_break <uuid> all` also flushes the channel's queued private
        // events (mod_commands' break_function): a sendmsg hangup or execute
        // waiting behind the broken application is dropped, never run
        // (trace 10). A plain break lets the next one run.
        if all {
            self.waiting.flush();
            self.pending_private.clear();
        }
    }

    pub(super) fn queue_dtmf(&mut self, digits: &str) {
        if self.hung_up() {
            return;
        }
        // A static socket holds the channel thread: nothing reads DTMF (07).
        if self.socket.as_ref().is_some_and(|s| !s.1)
            && self.stack.iter().any(|f| matches!(f.kind, Kind::Socket))
        {
            return;
        }
        self.dtmf_in
            .extend(digits.chars().filter(|c| !c.is_whitespace()));
        if self.dtmf_due.is_none() && !self.dtmf_in.is_empty() {
            self.dtmf_due = Some(Instant::now() + Duration::from_millis(20));
        }
    }

    pub(super) fn next_dtmf(&mut self) {
        let Some(d) = self.dtmf_in.pop_front() else {
            self.dtmf_due = None;
            return;
        };
        self.dtmf_due =
            (!self.dtmf_in.is_empty()).then(|| Instant::now() + Duration::from_millis(20));
        let digit = d.to_string();
        self.extra.received_dtmf.push(d);
        let source = match self.role {
            Role::Remote(_) => "RTP",
            _ => "APP",
        };
        self.fire(
            "DTMF",
            at::DTMF,
            &[],
            &[
                ("DTMF-Digit", &digit),
                ("DTMF-Duration", "2000"),
                ("DTMF-Source", source),
            ],
        );
        let digits = self
            .st
            .vars
            .get("digits_dialed")
            .filter(|d| *d != "none")
            .unwrap_or("")
            .to_owned();
        self.st
            .vars
            .set_keep("digits_dialed", &format!("{digits}{d}"));
        // Eavesdrop's DTMF controls (switch_ivr_async.c).
        if let Some(ed) = &mut self.extra.eavesdrop {
            match d {
                '0' => ed.mode = EavesdropMode::ListenOnly,
                '1' => ed.mode = EavesdropMode::PartnerHears,
                '2' => ed.mode = EavesdropMode::TargetHears,
                '3' => ed.mode = EavesdropMode::BothHear,
                '*' => {
                    if let Some(i) = self
                        .stack
                        .iter()
                        .rposition(|f| matches!(f.kind, Kind::Eavesdrop))
                    {
                        while self.stack.len() > i + 1 {
                            self.finish_top(true);
                        }
                        self.finish_top(true);
                    }
                }
                _ => {}
            }
        }
        // Barge-in on a playback started with playback_terminators.
        if let Some(terms) = self.st.vars.get("playback_terminators").map(str::to_owned)
            && (terms.contains(d) || terms == "any")
            && matches!(
                self.stack.last().map(|f| &f.kind),
                Some(Kind::Timed { playback: true, .. })
            )
        {
            self.finish_top(true);
        }
    }

    pub(super) fn send_dtmf(&mut self, digits: &str) {
        self.extra.sent_dtmf.push_str(digits);
        let partner = match &self.role {
            Role::LoopbackA { partner } | Role::LoopbackB { partner, .. } => Some(partner.clone()),
            Role::Remote(_) | Role::LoopbackWithoutB => None,
        };
        if let Some(p) = partner.or_else(|| self.bridged.clone()) {
            p.try_send(ChanMsg::FarDtmf(digits.to_owned()));
        }
    }

    pub(super) fn start_media_bug(
        &mut self,
        file: &str,
        limit: Option<Duration>,
    ) -> Result<(), String> {
        if self.hung_up() {
            return Err("-ERR channel is hung up\n".into());
        }
        if self.record.is_some() {
            self.stop_media_bug();
        }
        let path = self.record_path(file);
        let now = Instant::now();
        self.extra.recording = Some(path.display().to_string());
        self.fire(
            "RECORD_START",
            at::RECORD_START,
            &[],
            &[("Record-File-Path", &path.display().to_string())],
        );
        self.record = Some(MediaBug {
            display: path.display().to_string(),
            path,
            started: now,
            until: limit.map(|l| now + l),
        });
        if let Some(l) = limit {
            self.schedule(l, Timer::RecordLimit);
        }
        Ok(())
    }

    pub(super) fn stop_media_bug(&mut self) {
        let Some(bug) = self.record.take() else {
            return;
        };
        self.timers
            .retain(|(_, t)| !matches!(t, Timer::RecordLimit));
        let ms = bug.started.elapsed().as_millis() as u64;
        let stereo = self.st.vars.get("RECORD_STEREO").is_some_and(is_true);
        self.core
            .tasks
            .spawn(write_recording(bug.path, ms, if stereo { 2 } else { 1 }));
        self.extra.recording = None;
        self.st.vars.set("record_ms", &ms.to_string());
        self.fire(
            "RECORD_STOP",
            at::RECORD_STOP,
            &[],
            &[("Record-File-Path", &bug.display)],
        );
    }

    /// `uuid_bridge` / `bridge`: this channel joins `other`.
    /// A `conference::maintenance` event for this member
    /// (conference_member_add_event_data: conference, channel, member).
    pub(super) fn conference_event(&self, name: &str, member: u32, action: &str, muted: bool) {
        let (size, uuid) = {
            let confs = lock(&self.core.conferences);
            confs
                .get(name)
                .map_or((0, String::new()), |c| (c.members.len(), c.uuid.clone()))
        };
        let mut e = Event::default();
        e.push_header("Event-Subclass", "conference::maintenance");
        e.push_header("Event-Name", "CUSTOM");
        self.core.info.push_core(
            &mut e,
            crate::sim::event::origin(
                "mod_conference.c",
                "conference_member_add_event_data",
                "1045",
            ),
        );
        e.push_header("Conference-Name", name);
        e.push_header("Conference-Size", &size.to_string());
        e.push_header("Conference-Ghosts", "0");
        e.push_header("Conference-Profile-Name", "default");
        e.push_header("Conference-Unique-ID", &uuid);
        self.st.push_data(&mut e, true);
        let speak = if muted { "false" } else { "true" };
        for (n, v) in [
            ("Hear", "true"),
            ("See", "true"),
            ("Speak", speak),
            ("Talking", "false"),
            ("Mute-Detect", "false"),
        ] {
            e.push_header(n, v);
        }
        e.push_header("Member-ID", &member.to_string());
        e.push_header("Member-Type", "member");
        e.push_header("Member-Ghost", "false");
        e.push_header("Energy-Level", "100");
        e.push_header("Current-Energy", "0");
        e.push_header("Action", action);
        self.core.fire(e);
    }

    /// The `conference` API acting on this channel's membership.
    pub(super) fn conference_op(&mut self, op: ConferenceOp) {
        let Some(i) = self
            .stack
            .iter()
            .rposition(|f| matches!(f.kind, Kind::Conference { .. }))
        else {
            return;
        };
        let Kind::Conference { name, member } = &self.stack[i].kind else {
            return;
        };
        let (name, member) = (name.clone(), *member);
        match op {
            ConferenceOp::Mute => {
                self.extra.conference_muted = true;
                self.conference_event(&name, member, "mute-member", true);
            }
            ConferenceOp::Unmute => {
                self.extra.conference_muted = false;
                self.conference_event(&name, member, "unmute-member", false);
            }
            ConferenceOp::Kick => {
                let muted = self.extra.conference_muted;
                self.conference_event(&name, member, "kick-member", muted);
                // The application returns; whatever was nested inside ends
                // with it.
                while self.stack.len() > i + 1 {
                    self.finish_top(true);
                }
                self.finish_top(false);
            }
        }
    }
}
