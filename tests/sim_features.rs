//! Simulator features the agent and the voice-application API rely on,
//! over real sockets: a looping ringback tone that plays until
//! `uuid_break`, far-end DTMF from the `1555700` number-plan entry reaching
//! the socket of the leg that dialled it (and, across a `bridge` with a dial
//! string, firing on the dialled leg only), a failing `bridge` dial string,
//! and conferences.

use redswitch_test_support as support;
use std::time::Duration;
use support::sim_client::{Client, WAIT, sim, socket_leg};
use tokio::net::TcpListener;
use tokio::time::Instant;

async fn dtmf_digits(c: &mut Client, n: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut digits = String::new();
    while digits.len() < n {
        let m = c.event("DTMF", deadline).await;
        digits.push_str(&m.ev("DTMF-Digit").expect("DTMF-Digit"));
    }
    digits
}

#[tokio::test]
async fn looping_ringback_plays_until_uuid_break() {
    let sim = sim().await;
    let mut c = Client::login(&sim).await;
    let uuid = "5b0e3f52-4d3c-4f6e-9a43-0c9f2e6d1a01";
    c.cmd("event plain PLAYBACK_START PLAYBACK_STOP CHANNEL_EXECUTE_COMPLETE")
        .await;
    let r = c
        .cmd(&format!(
            "api originate {{origination_uuid={uuid}}}loopback/answer-park/redswitch-test &playback(tone_stream://%(1000,4000,440,480);loops=-1)"
        ))
        .await;
    assert_eq!(r.body, format!("+OK {uuid}\n"));
    c.event("PLAYBACK_START", Instant::now() + WAIT).await;
    // Far longer than one 5 s cadence would be needed to prove "forever";
    // 1.5 s after start it must still play and nothing has completed.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let snap = sim.channel(uuid).expect("channel");
    assert!(
        snap.playing
            .as_deref()
            .is_some_and(|p| p.contains("loops=-1")),
        "{snap:?}"
    );
    assert_eq!(c.cmd(&format!("api uuid_break {uuid}")).await.body, "+OK\n");
    let stop = c.event("PLAYBACK_STOP", Instant::now() + WAIT).await;
    assert_eq!(stop.ev("Playback-Status").as_deref(), Some("break"));
    let done = c
        .event("CHANNEL_EXECUTE_COMPLETE", Instant::now() + WAIT)
        .await;
    assert_eq!(done.ev("Application").as_deref(), Some("playback"));
    assert_eq!(done.ev("Unique-ID").as_deref(), Some(uuid));
    // The tone was the originate's application: once broken, the channel
    // has nothing left to run and hangs up, as FreeSWITCH does.
    assert!(sim.channel(uuid).is_none_or(|s| s.playing.is_none()));
    sim.shutdown().await;
}

#[tokio::test]
async fn dtmf_from_1555700_reaches_the_socket_of_the_leg_that_dialled() {
    let sim = sim().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut c = Client::login(&sim).await;
    let r = c
        .cmd(&format!(
            "bgapi originate sofia/gateway/gw/15557001234 '&socket({addr} async full)'"
        ))
        .await;
    assert!(
        r.get("Reply-Text")
            .is_some_and(|t| t.starts_with("+OK Job-UUID"))
    );
    let (mut leg, _) = socket_leg(&listener).await;
    assert_eq!(dtmf_digits(&mut leg, 5).await, "1234#");
    sim.shutdown().await;
}

#[tokio::test]
async fn bridge_to_a_dial_string_and_far_end_dtmf_fires_on_the_dialled_leg_only() {
    let sim = sim().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut c = Client::login(&sim).await;
    c.cmd(&format!(
        "bgapi originate loopback/answer-park/redswitch-test '&socket({addr} async full)'"
    ))
    .await;
    let (mut leg, uuid) = socket_leg(&listener).await;
    leg.cmd("event plain CHANNEL_BRIDGE DTMF CHANNEL_EXECUTE_COMPLETE")
        .await;
    let r = leg
        .cmd("sendmsg\ncall-command: execute\nexecute-app-name: bridge\nexecute-app-arg: {origination_caller_id_number=15550001111}sofia/gateway/gw/15557001234")
        .await;
    assert_eq!(r.get("Reply-Text"), Some("+OK"));
    let bridge = leg.event("CHANNEL_BRIDGE", Instant::now() + WAIT).await;
    assert_eq!(
        bridge.ev("Bridge-A-Unique-ID").as_deref(),
        Some(uuid.as_str())
    );
    let other = bridge.ev("Bridge-B-Unique-ID").expect("B leg");
    let b = sim.channel(&other).expect("the dialled leg exists");
    assert!(b.name.starts_with("sofia/"), "{b:?}");
    assert_eq!(b.caller_id_number, "15550001111");
    assert_eq!(
        sim.channel(&uuid).and_then(|s| s.bridged_to),
        Some(other.clone())
    );
    // 1555700 sends `1234#` 1 s after answering: the dialled leg receives
    // them; the bridging leg gets no DTMF of its own.
    let deadline = Instant::now() + WAIT;
    while sim.channel(&other).map(|b| b.received_dtmf).as_deref() != Some("1234#") {
        assert!(Instant::now() < deadline, "the dialled leg never got 1234#");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        sim.channel(&uuid).map(|a| a.received_dtmf).as_deref(),
        Some("")
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn bridge_to_a_failing_dial_string_completes_with_the_cause() {
    let sim = sim().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut c = Client::login(&sim).await;
    c.cmd(&format!(
        "bgapi originate loopback/answer-park/redswitch-test '&socket({addr} async full)'"
    ))
    .await;
    let (mut leg, uuid) = socket_leg(&listener).await;
    leg.cmd("event plain CHANNEL_EXECUTE_COMPLETE").await;
    leg.cmd("sendmsg\ncall-command: execute\nexecute-app-name: bridge\nexecute-app-arg: sofia/gateway/gw/15554860000")
        .await;
    let done = leg
        .event("CHANNEL_EXECUTE_COMPLETE", Instant::now() + WAIT)
        .await;
    assert_eq!(done.ev("Application").as_deref(), Some("bridge"));
    assert_eq!(
        done.ev("variable_originate_disposition").as_deref(),
        Some("USER_BUSY")
    );
    assert_eq!(done.ev("variable_DIALSTATUS").as_deref(), Some("BUSY"));
    // The caller stays up (hangup_after_bridge only acts after a bridge).
    assert!(sim.channel(&uuid).is_some_and(|s| s.hangup_cause.is_none()));
    sim.shutdown().await;
}

#[tokio::test]
async fn conference_members_mute_unmute_kick() {
    let sim = sim().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut watch = Client::login(&sim).await;
    watch
        .cmd("event plain CUSTOM conference::maintenance")
        .await;
    let mut api = Client::login(&sim).await;
    let mut legs = Vec::new();
    for _ in 0..2 {
        api.cmd(&format!(
            "bgapi originate loopback/answer-park/redswitch-test '&socket({addr} async full)'"
        ))
        .await;
        let (mut leg, uuid) = socket_leg(&listener).await;
        leg.cmd("event plain CHANNEL_EXECUTE_COMPLETE").await;
        leg.cmd("sendmsg\ncall-command: execute\nexecute-app-name: conference\nexecute-app-arg: room1@default")
            .await;
        legs.push((leg, uuid));
    }
    let deadline = Instant::now() + WAIT;
    for (i, (_, uuid)) in legs.iter().enumerate() {
        let add = watch.event("CUSTOM", deadline).await;
        assert_eq!(
            add.ev("Event-Subclass").as_deref(),
            Some("conference::maintenance")
        );
        assert_eq!(add.ev("Action").as_deref(), Some("add-member"));
        assert_eq!(add.ev("Conference-Name").as_deref(), Some("room1"));
        assert_eq!(add.ev("Member-ID"), Some((i + 1).to_string()));
        assert_eq!(add.ev("Conference-Size"), Some((i + 1).to_string()));
        assert_eq!(add.ev("Unique-ID").as_deref(), Some(uuid.as_str()));
    }
    let list = api.cmd("api conference room1 list").await.body;
    assert_eq!(list.lines().count(), 2, "{list}");
    assert_eq!(
        api.cmd("api conference room1 mute 1").await.body,
        "OK mute 1\n"
    );
    let m = watch.event("CUSTOM", deadline).await;
    assert_eq!(m.ev("Action").as_deref(), Some("mute-member"));
    assert_eq!(m.ev("Speak").as_deref(), Some("false"));
    assert_eq!(
        api.cmd("api conference room1 unmute 1").await.body,
        "OK unmute 1\n"
    );
    let m = watch.event("CUSTOM", deadline).await;
    assert_eq!(m.ev("Action").as_deref(), Some("unmute-member"));
    assert_eq!(m.ev("Speak").as_deref(), Some("true"));
    assert_eq!(
        api.cmd("api conference room1 kick 7").await.body,
        "Non-Existant ID 7\n"
    );
    assert_eq!(
        api.cmd("api conference room1 kick 2").await.body,
        "OK kicked 2\n"
    );
    let k = watch.event("CUSTOM", deadline).await;
    assert_eq!(k.ev("Action").as_deref(), Some("kick-member"));
    let d = watch.event("CUSTOM", deadline).await;
    assert_eq!(d.ev("Action").as_deref(), Some("del-member"));
    assert_eq!(d.ev("Member-ID").as_deref(), Some("2"));
    assert_eq!(d.ev("Conference-Size").as_deref(), Some("1"));
    let done = legs[1].0.event("CHANNEL_EXECUTE_COMPLETE", deadline).await;
    assert_eq!(done.ev("Application").as_deref(), Some("conference"));
    // The last member hanging up ends the conference.
    api.cmd(&format!("api uuid_kill {}", legs[0].1)).await;
    let d = watch.event("CUSTOM", deadline).await;
    assert_eq!(d.ev("Action").as_deref(), Some("del-member"));
    assert_eq!(
        api.cmd("api conference room1 list").await.body,
        "Conference room1 not found\n"
    );
    sim.shutdown().await;
}
