//! Conferences through the voice API: two legs join a named conference
//! (`conference <name>`), get their member ids (`conference_member_id`),
//! and one is muted, unmuted and kicked (`conference <name> mute|unmute|kick
//! <id>`).
//!
//! Ignored until the simulator runs mod_conference's `conference`
//! application and API (another branch is adding them): today it treats
//! `conference` as an unknown application and hangs the leg up with
//! DESTINATION_OUT_OF_ORDER, as FreeSWITCH does for an application it lacks.

use redswitch::switch::voice::{AppRouter, Voice, VoiceError, VoiceEvent};
use redswitch_test_support::voice::Harness;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_legs_in_a_conference_muted_unmuted_and_kicked() {
    let h = Harness::start(AppRouter::new()).await;
    let mut a: Voice = h.call("15551250001").await;
    let mut b: Voice = h.call("15551250002").await;
    let ma = a.join_conference("room1").await.unwrap();
    let mb = b.join_conference("room1").await.unwrap();
    assert_ne!(ma.member_id, mb.member_id);
    assert!(a.in_conference() && b.in_conference());
    assert!(matches!(
        a.join_conference("room2").await,
        Err(VoiceError::ConferenceBusy)
    ));
    a.conference_mute(&mb).await.unwrap();
    a.conference_unmute(&mb).await.unwrap();
    a.conference_kick(&mb).await.unwrap();
    // B's conference application ends; its call goes on.
    let left = tokio::time::timeout(Duration::from_secs(5), async {
        while b.in_conference() {
            if b.next_event().await.is_none() {
                break;
            }
        }
    })
    .await;
    assert!(left.is_ok() && !b.in_conference());
    assert!(b.call().hangup_cause().is_none());
    a.hangup("NORMAL_CLEARING").await.unwrap();
    b.hangup("NORMAL_CLEARING").await.unwrap();
    assert!(matches!(
        a.next_event().await,
        Some(VoiceEvent::CallStarted { .. })
    ));
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_conference_name_is_refused_before_anything_is_sent() {
    let h = Harness::start(AppRouter::new()).await;
    let mut a: Voice = h.call("15551250003").await;
    for bad in ["", "room 1", "room;hangup", "${x}", "a@b@c"] {
        assert!(
            matches!(
                a.join_conference(bad).await,
                Err(VoiceError::InvalidValue { .. })
            ),
            "{bad:?}"
        );
    }
    assert!(!a.in_conference());
    // Nothing ran: the leg is still up (an unknown application would have
    // hung it up).
    assert!(
        h.channel(a.uuid())
            .is_some_and(|c| c.hangup_cause.is_none())
    );
    a.hangup("NORMAL_CLEARING").await.unwrap();
    h.shutdown().await;
}
