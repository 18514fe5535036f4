//! Conferences: put a leg into a named conference (FreeSWITCH's
//! `conference <name>` application from mod_conference) and mute, unmute or
//! kick members (the `conference <name> mute|unmute|kick <member-id>` API).
//!
//! The member id comes from the `conference_member_id` channel variable,
//! which mod_conference sets when the member joins; it is read with
//! `uuid_getvar` over the leg's socket.

use super::{ConferenceJob, Voice, VoiceError, exec_future};
use crate::switch::error::Error;
use std::time::Duration;

/// How long to wait for mod_conference to report the member id.
const MEMBER_ID_WAIT: Duration = Duration::from_secs(3);
const MEMBER_ID_POLL: Duration = Duration::from_millis(50);

/// A leg in a conference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConferenceMember {
    /// The conference name (`room` or `room@profile`).
    pub conference: String,
    /// mod_conference's member id.
    pub member_id: u32,
}

/// Checks a conference name: `[A-Za-z0-9_.-]`, optionally `@profile`,
/// 1–64 characters (it goes into an application argument and an API line).
pub fn check_conference_name(name: &str) -> Result<(), VoiceError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.matches('@').count() <= 1
        && !name.starts_with('@')
        && !name.ends_with('@')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'@'));
    if !ok {
        return Err(VoiceError::InvalidValue {
            what: "conference name",
            value: name.to_owned(),
        });
    }
    Ok(())
}

/// The conference API line for an action on a member.
pub fn member_command(member: &ConferenceMember, action: &str) -> String {
    format!(
        "conference {} {action} {}",
        member.conference, member.member_id
    )
}

impl<U: Send + 'static> Voice<U> {
    /// Puts the leg into the conference `name` (created on first join): the
    /// `conference <name>` application, which runs for as long as the leg
    /// is a member. Returns the member once mod_conference has set its
    /// `conference_member_id`.
    pub async fn join_conference(&mut self, name: &str) -> Result<ConferenceMember, VoiceError> {
        check_conference_name(name)?;
        if self.conference.is_some() {
            return Err(VoiceError::ConferenceBusy);
        }
        self.conference = Some(ConferenceJob {
            exec: exec_future(&self.call, "conference", name.to_owned()),
        });
        let getvar = format!("uuid_getvar {} conference_member_id", self.call.uuid());
        let deadline = tokio::time::Instant::now() + MEMBER_ID_WAIT;
        loop {
            if let Some(cause) = self.call.hangup_cause() {
                return Err(Error::Hangup { cause }.into());
            }
            let reply = self.call.api(&getvar).await?;
            if let Ok(member_id) = reply.trim().parse::<u32>() {
                return Ok(ConferenceMember {
                    conference: name.to_owned(),
                    member_id,
                });
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(VoiceError::NoMemberId(name.to_owned()));
            }
            tokio::time::sleep(MEMBER_ID_POLL).await;
        }
    }

    /// Mutes a member (this leg's or another's): `conference <name> mute <id>`.
    pub async fn conference_mute(&mut self, member: &ConferenceMember) -> Result<(), VoiceError> {
        self.conference_action(member, "mute").await
    }

    /// Unmutes a member: `conference <name> unmute <id>`.
    pub async fn conference_unmute(&mut self, member: &ConferenceMember) -> Result<(), VoiceError> {
        self.conference_action(member, "unmute").await
    }

    /// Removes a member from the conference: `conference <name> kick <id>`.
    /// The member's `conference` application ends; its call goes on.
    pub async fn conference_kick(&mut self, member: &ConferenceMember) -> Result<(), VoiceError> {
        self.conference_action(member, "kick").await
    }

    async fn conference_action(
        &mut self,
        member: &ConferenceMember,
        action: &str,
    ) -> Result<(), VoiceError> {
        check_conference_name(&member.conference)?;
        let reply = self.call.api(&member_command(member, action)).await?;
        let reply = reply.trim();
        if reply.starts_with("-ERR")
            || reply.contains("not found")
            || reply.contains("Command not found")
        {
            return Err(Error::CommandFailed {
                reply: reply.to_owned(),
            }
            .into());
        }
        Ok(())
    }

    /// Whether the leg's `conference` application is running.
    pub fn in_conference(&self) -> bool {
        self.conference.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_commands() {
        for good in ["room1", "sales-2@default", "a.b_c"] {
            assert!(check_conference_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "a b",
            "x;y",
            "a@b@c",
            "@x",
            "${x}",
            "a\nb",
            &"x".repeat(65),
        ] {
            assert!(check_conference_name(bad).is_err(), "{bad:?}");
        }
        let m = ConferenceMember {
            conference: "room1".into(),
            member_id: 7,
        };
        assert_eq!(member_command(&m, "mute"), "conference room1 mute 7");
        assert_eq!(member_command(&m, "kick"), "conference room1 kick 7");
    }
}
