//! Bridging two channels and the eavesdrop that listens in on one.

use super::{Actor, Kind};
use crate::sim::event::now_micros;
use crate::sim::mailbox::{ChanMsg, ChannelHandle};
use crate::sim::snapshot::{OtherLeg, at};

impl Actor {
    /// The `bridge` application joins this channel (the originator) to
    /// `other`.
    pub(super) fn bridge_to(&mut self, other: ChannelHandle) {
        let mine = (self.st.profile.clone(), self.st.uuid.clone());
        other.try_send(ChanMsg::Bridge {
            other: self.me.clone(),
            other_profile: Some(Box::new(mine)),
            originator: false,
            transfer: false,
        });
        self.bridge(other, None, true, false);
    }

    /// The outcome of the leg a `bridge <dial string>` dialled.
    pub(super) fn bridge_dialled(&mut self, result: Result<ChannelHandle, String>) {
        let waiting = !self.hung_up()
            && self.bridged.is_none()
            && matches!(self.stack.last().map(|f| &f.kind), Some(Kind::Bridged));
        match result {
            Ok(other) if waiting => self.bridge_to(other),
            Ok(other) => {
                other.try_send(ChanMsg::Hangup("ORIGINATOR_CANCEL".into()));
            }
            Err(cause) => {
                if !waiting {
                    return;
                }
                // switch_ivr_originate's dispositions; the application
                // returns and the dialplan (or the socket) carries on.
                let status = match cause.as_str() {
                    "USER_BUSY" => "BUSY",
                    "NO_ANSWER" | "NO_USER_RESPONSE" | "ALLOTTED_TIMEOUT" => "NOANSWER",
                    "ORIGINATOR_CANCEL" => "CANCEL",
                    "UNALLOCATED_NUMBER" | "INVALID_NUMBER_FORMAT" => "INVALIDARGS",
                    _ => "CHANUNAVAIL",
                };
                self.st.vars.set("originate_disposition", &cause);
                self.st.vars.set("DIALSTATUS", status);
                self.st.vars.set("last_bridge_hangup_cause", &cause);
                self.finish_top(false);
            }
        }
    }

    pub(super) fn bridge(
        &mut self,
        other: ChannelHandle,
        other_profile: Option<Box<(crate::sim::snapshot::Profile, String)>>,
        originator: bool,
        transfer: bool,
    ) {
        if self.hung_up() {
            return;
        }
        self.st.other = other_profile.map(|b| *b).map(|(profile, uuid)| OtherLeg {
            kind: if originator {
                "originatee"
            } else {
                "originator"
            },
            uuid,
            profile,
        });
        if !transfer {
            // The `bridge` application: no transfer, no state dance; the
            // called leg leaves its originate wait and exchanges media.
            self.st.vars.set("bridge_channel", &other.name());
            self.st.vars.set("bridge_uuid", &other.uuid);
            self.st.vars.set("signal_bond", &other.uuid);
            let uuid = other.uuid.to_string();
            self.join_bridge(other, uuid, originator);
            return;
        }
        // switch_ivr_uuid_bridge records the transfer, sets the other leg's
        // profile and asks for CS_HIBERNATE before the channel thread
        // leaves its applications: UNPARK and the socket's
        // EXECUTE_COMPLETE already carry them, with Channel-State-Number 8
        // while Channel-State still says CS_EXECUTE (trace 04).
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let source = format!("{epoch}:{}:uuid_br:{}", uuid::Uuid::new_v4(), other.uuid);
        self.st.vars.set("transfer_history", &source);
        self.st.vars.set("transfer_source", &source);
        self.st.profile.transfer_source = Some(source);
        self.st.profile.profile_index += 1;
        self.st.requested_state = Some(crate::sim::snapshot::CState::Hibernate);
        while let Some(f) = self.stack.last() {
            if matches!(f.kind, Kind::Bridged) {
                break;
            }
            self.finish_top(true);
        }
        self.st.requested_state = None;
        self.dialplan.clear();
        for s in [
            crate::sim::snapshot::CState::Hibernate,
            crate::sim::snapshot::CState::Reset,
            crate::sim::snapshot::CState::SoftExecute,
        ] {
            self.st.state = s;
            self.fire("CHANNEL_STATE", at::STATE, &[], &[]);
        }
        self.st.vars.set("bridge_channel", &other.name());
        self.st.vars.set("bridge_uuid", &other.uuid);
        self.st.vars.set("signal_bond", &other.uuid);
        let uuid = other.uuid.to_string();
        let exec_at = if originator {
            at::BRIDGE_EXECUTE
        } else {
            crate::sim::event::origin("switch_ivr_bridge.c", "uuid_bridge_on_soft_execute", "1243")
        };
        self.fire(
            "CHANNEL_EXECUTE",
            exec_at,
            &[],
            &[("Application", "uuid_bridge"), ("Application-Data", &uuid)],
        );
        self.join_bridge(other, uuid, originator);
    }

    /// Records the bridge and fires what each side of it sees: the
    /// originator CHANNEL_BRIDGE, the other leg a state change.
    pub(super) fn join_bridge(&mut self, other: ChannelHandle, uuid: String, originator: bool) {
        self.extra.bridged_to = Some(uuid.clone());
        self.bridged = Some(other);
        if originator {
            self.st.profile.bridged = now_micros();
            let me = self.st.uuid.clone();
            self.fire(
                "CHANNEL_BRIDGE",
                at::BRIDGE,
                &[("Bridge-A-Unique-ID", &me), ("Bridge-B-Unique-ID", &uuid)],
                &[],
            );
        } else {
            self.st.state = crate::sim::snapshot::CState::ExchangeMedia;
            self.fire("CHANNEL_STATE", at::STATE, &[], &[]);
        }
    }
}
