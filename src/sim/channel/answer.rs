//! Ringing and answering: the `answer` application, a loopback pair's
//! answer handshake, and the originate's result.

use super::{Actor, AppFrame, Kind, Role, Timer};
use crate::sim::event::now_micros;
use crate::sim::mailbox::ChanMsg;
use crate::sim::snapshot::at;
use tokio::sync::oneshot;

impl Actor {
    /// The `answer` application. On a loopback `-b` leg the `-a` half
    /// answers (and its CHANNEL_ANSWER fires) first, as in trace 01: the app
    /// waits for the partner's acknowledgement before marking itself.
    pub(super) fn answer_app(&mut self, frame: AppFrame) {
        if let Role::LoopbackB { partner, .. } = &self.role
            && !self.st.answered()
            && !self.hung_up()
        {
            let (tx, rx) = oneshot::channel();
            if partner.try_send(ChanMsg::PartnerAnswered(tx)) {
                self.answer_ack = Some(rx);
                let mut frame = frame;
                frame.kind = Kind::AnswerWait;
                self.stack.push(frame);
                return;
            }
        }
        self.answer();
        self.complete(frame);
    }

    pub(super) fn answer_acked(&mut self) {
        self.answer_ack = None;
        if let Some(top) = self.stack.last()
            && matches!(top.kind, Kind::AnswerWait)
        {
            if top.app == "ring_ready" {
                self.ring_ready();
            } else {
                self.answer();
            }
            self.finish_top(false);
        }
    }

    /// Marks the channel ringing (CHANNEL_PROGRESS), once.
    pub(super) fn ring_ready(&mut self) {
        if self.st.profile.progress == 0 && !self.hung_up() {
            self.st.profile.progress = now_micros();
            self.fire("CHANNEL_PROGRESS", at::PROGRESS, &[], &[]);
        }
    }

    /// Marks the channel answered (FreeSWITCH's mark_answered).
    pub(super) fn answer(&mut self) {
        if self.st.answered() || self.hung_up() {
            return;
        }
        self.st.profile.answered = now_micros();
        self.st.answer_state = "answered";
        if self.st.profile.progress == 0 && matches!(self.role, Role::Remote(_)) {
            self.st.profile.progress = self.st.profile.answered;
        }
        if self.st.codec.is_none() && self.st.name.starts_with("sofia/") {
            // A sofia leg has no codec until SDP is negotiated: from the
            // answer on, its events carry the PCMU codec block and the
            // codec variables, as in trace 06.
            self.st.codec = Some("PCMU");
            for (n, v) in [
                ("rtp_use_codec_name", "PCMU"),
                ("rtp_use_codec_rate", "8000"),
                ("rtp_use_codec_ptime", "20"),
                ("rtp_use_codec_channels", "1"),
                ("read_codec", "PCMU"),
                ("original_read_codec", "PCMU"),
                ("read_rate", "8000"),
                ("original_read_rate", "8000"),
                ("write_codec", "PCMU"),
                ("write_rate", "8000"),
                ("dtmf_type", "rfc2833"),
            ] {
                self.st.vars.set(n, v);
            }
        }
        self.st.vars.set_keep("endpoint_disposition", "ANSWER");
        self.fire("CHANNEL_ANSWER", at::ANSWER, &[], &[]);
        self.st.call_state = "ACTIVE";
        if self.originate.is_some() {
            // The originate loop polls its legs every 20 ms: it sees the
            // answer (and flips the caller id, starts the application) on
            // its next pass, and a leg that hung up meanwhile fails the
            // originate with its cause (trace 08, the `socket` extension).
            self.schedule(self.core.cfg.park_delay, Timer::OriginatePoll);
        }
    }

    pub(super) fn originate_succeeded(&mut self) {
        let Some(tx) = self.originate.take() else {
            return;
        };
        self.timers
            .retain(|(_, t)| !matches!(t, Timer::OriginateTimeout));
        // originate flips the caller id of the answered leg.
        let p = &mut self.st.profile;
        let orig = p.caller_id_number.clone();
        let callee = p.callee_id_number.clone().unwrap_or_default();
        p.caller_id_name = p.callee_id_name.take().or(Some("Outbound Call".into()));
        p.caller_id_number = callee;
        p.orig_caller_id_number = Some(orig.clone());
        p.callee_id_number = Some(orig.clone());
        self.st.vars.set("pre_transfer_caller_id_number", &orig);
        self.st.vars.set("channel_cid_flipped", "yes");
        let uuid = self.st.uuid.clone();
        self.st.vars.set("call_uuid", &uuid);
        let _ = tx.send(Ok(()));
        if let Some(app) = self.originate_app.take() {
            self.st.state = crate::sim::snapshot::CState::Execute;
            self.st.hit_dialplan = true;
            self.dialplan.push_back(app);
            self.run_dialplan = true;
            self.hangup_after_idle = true;
        }
    }
}
