//! The hangup sequence, event for event: from the channel's own thread
//! or from outside (`uuid_kill`), the bridged or loopback partner going
//! away, and the reporting and destroy states that end the channel.

use super::{Actor, Kind, Role, Timer};
use crate::sim::event::now_micros;
use crate::sim::mailbox::{ChanMsg, ChannelHandle, PrivateMsg};
use crate::sim::snapshot::{at, set_cdr_vars};
use std::time::Duration;
use tokio::sync::oneshot;

impl Actor {
    pub(super) fn partner_gone(&mut self, uuid: &str, cause: &str) {
        if self.hung_up() {
            // The twin that began our hangup has finished its own: ours
            // runs now if we are answered (media wakes the channel thread),
            // on the next frame if we only ring (trace 14; answered, 04).
            let twin = match &self.role {
                Role::LoopbackA { partner } | Role::LoopbackB { partner, .. } => {
                    *partner.uuid == *uuid
                }
                Role::Remote(_) | Role::LoopbackWithoutB => false,
            };
            if twin && !self.life.hangup_finished() {
                let cause = self
                    .st
                    .hangup_cause
                    .clone()
                    .unwrap_or_else(|| cause.to_owned());
                self.timers
                    .retain(|(_, t)| !matches!(t, Timer::HangupFinish(_)));
                let after = if self.st.answered() {
                    Duration::ZERO
                } else {
                    self.core.cfg.park_delay
                };
                self.schedule(after, Timer::HangupFinish(cause));
            }
            return;
        }
        let bridged_to_it = self
            .bridged
            .as_ref()
            .is_some_and(|b| b.uuid.as_ref() == uuid);
        if bridged_to_it {
            let was_originator = self.st.profile.bridged != 0;
            self.bridged = None;
            self.extra.bridged_to = None;
            self.st.vars.set("last_bridge_to", uuid);
            self.st.vars.set("last_bridge_hangup_cause", cause);
            self.st.vars.set("bridge_hangup_cause", cause);
            if was_originator {
                let me = self.st.uuid.clone();
                self.fire(
                    "CHANNEL_UNBRIDGE",
                    at::UNBRIDGE,
                    &[("Bridge-A-Unique-ID", &me), ("Bridge-B-Unique-ID", uuid)],
                    &[],
                );
                self.st.state = crate::sim::snapshot::CState::Execute;
                self.fire("CHANNEL_STATE", at::STATE, &[], &[]);
            }
            // hangup_after_bridge (the default).
            let bridge_app = self
                .stack
                .iter()
                .rposition(|f| matches!(f.kind, Kind::Bridged));
            if let Some(i) = bridge_app {
                while self.stack.len() > i + 1 {
                    self.finish_top(true);
                }
                self.finish_top(false);
            }
            self.hangup("NORMAL_CLEARING", None);
            return;
        }
        // Loopback partner: the pair goes down together, with its cause.
        self.hangup(cause, None);
    }

    /// The hangup sequence of FreeSWITCH, event for event (traces 02–05).
    /// A hangup on the channel's own thread (an application, a sendmsg,
    /// the far end): every event at once.
    pub(super) fn hangup(&mut self, cause: &str, private: Option<PrivateMsg>) {
        if self.hangup_begin(cause, private, false) {
            self.hangup_finish(cause);
        }
    }

    /// A hangup from outside (`uuid_kill`): FreeSWITCH fires CHANNEL_HANGUP
    /// in the caller's thread; the channel thread runs the hangup and
    /// reporting states when its media loop next wakes, a frame later, so
    /// the `api` reply precedes HANGUP_COMPLETE by ~20 ms (traces 01, 08).
    pub(super) fn hangup_from_outside(&mut self, cause: &str) {
        if self.hangup_begin(cause, None, true) {
            self.schedule(
                self.core.cfg.park_delay,
                Timer::HangupFinish(cause.to_owned()),
            );
        }
    }

    /// CHANNEL_HANGUP and what goes with it; false (and nothing fired) if
    /// the channel already hangs up.
    pub(super) fn hangup_begin(
        &mut self,
        cause: &str,
        private: Option<PrivateMsg>,
        from_outside: bool,
    ) -> bool {
        if !self.life.begin_hangup(from_outside) {
            return false;
        }
        self.st.hangup_cause = Some(cause.to_owned());
        self.st.answer_state = "hangup";
        self.fire("CHANNEL_HANGUP", at::HANGUP, &[], &[]);
        for l in self.bound.drain(..) {
            l.channel_down();
        }
        if let Some((l, false)) = &self.socket {
            l.channel_down();
        }
        if let Some(pm) = &private {
            self.fire_private(pm);
        }
        true
    }

    pub(super) fn hangup_finish(&mut self, cause: &str) {
        if self.life.hangup_finished() {
            return;
        }
        // Tell the others (the loopback twin further down).
        let me = self.st.uuid.clone();
        if let Some(b) = self.bridged.take() {
            b.try_send(ChanMsg::PartnerGone(me.clone(), cause.to_owned()));
            // The side that ran the bridge loop reports its end (trace 16:
            // a sendmsg hangup on A, bridged with `uuid_bridge A B`).
            if self.st.profile.bridged != 0 {
                self.extra.bridged_to = None;
                self.fire(
                    "CHANNEL_UNBRIDGE",
                    at::UNBRIDGE,
                    &[("Bridge-A-Unique-ID", &me), ("Bridge-B-Unique-ID", &b.uuid)],
                    &[],
                );
            }
        }
        for e in self.eavesdroppers.drain(..) {
            if let Some(h) = self.core.channel(&e) {
                h.try_send(ChanMsg::EavesdropGone(me.clone()));
            }
        }
        self.extra.eavesdrop = None;
        self.stop_media_bug();
        while !self.stack.is_empty() {
            self.finish_top(true);
        }
        self.waiting.flush();
        self.dialplan.clear();
        self.timers.clear();
        self.dtmf_in.clear();
        self.dtmf_due = None;

        self.st.state = crate::sim::snapshot::CState::Hangup;
        self.fire("CHANNEL_STATE", at::STATE, &[], &[]);
        let old = self.st.call_state;
        self.st.call_state = "HANGUP";
        self.fire(
            "CHANNEL_CALLSTATE",
            at::CALLSTATE,
            &[],
            &[
                ("Original-Channel-Call-State", old),
                ("Channel-Call-State-Number", "10"),
            ],
        );
        // mod_loopback's on_hangup hangs the twin up from this thread: its
        // CHANNEL_HANGUP comes before our REPORTING (trace 14).
        self.life.finish_hangup(cause);
        if let Some(p) = self.loopback_partner() {
            let (tx, rx) = oneshot::channel();
            if p.try_send(ChanMsg::PartnerHangup(cause.to_owned(), tx)) {
                self.hangup_ack = Some(rx);
                return;
            }
        }
        self.hangup_report();
    }

    pub(super) fn loopback_partner(&self) -> Option<ChannelHandle> {
        match &self.role {
            Role::LoopbackA { partner } | Role::LoopbackB { partner, .. } => Some(partner.clone()),
            Role::Remote(_) | Role::LoopbackWithoutB => None,
        }
    }

    /// The reporting and destroy states that end a hangup.
    pub(super) fn hangup_report(&mut self) {
        self.hangup_ack = None;
        let Some(cause) = self.life.reporting_cause().map(str::to_owned) else {
            return;
        };
        let cause = cause.as_str();
        let me = self.st.uuid.clone();
        self.st.state = crate::sim::snapshot::CState::Reporting;
        self.fire("CHANNEL_STATE", at::STATE, &[], &[]);
        self.st.profile.hangup = now_micros();
        let last = self.last_app.clone();
        set_cdr_vars(
            &mut self.st,
            last.as_ref().map(|(a, b)| (a.as_str(), b.as_str())),
        );
        if matches!(self.role, Role::LoopbackA { .. } | Role::LoopbackB { .. }) {
            self.st.vars.set("is_loopback", "1");
        }
        let c = cause.to_owned();
        self.fire(
            "CHANNEL_HANGUP_COMPLETE",
            at::HANGUP_COMPLETE,
            &[("Hangup-Cause", &c)],
            &[],
        );
        // The loopback twin goes down after us: the leg that hung up first
        // reports HANGUP_COMPLETE first (traces 01, 04, 08).
        if let Some(p) = self.loopback_partner() {
            p.try_send(ChanMsg::PartnerGone(me, c.clone()));
        }
        if let Some((l, true)) = &self.socket {
            l.channel_down();
        }
        if let Some(tx) = self.originate.take() {
            let _ = tx.send(Err(c));
        }
        self.st.state = crate::sim::snapshot::CState::Destroy;
        self.fire("CHANNEL_STATE", at::STATE, &[], &[]);
        self.fire("CHANNEL_DESTROY", at::DESTROY, &[], &[]);
        self.life.destroy();
        self.publish();
    }
}
