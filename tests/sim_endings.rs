//! How calls end in the simulator, as on a real FreeSWITCH 1.10: a
//! `sendmsg` hangup queued behind an event-locked application waits (and
//! `uuid_break <uuid> all` drops it), without the lock it runs at once;
//! `uuid_kill` ends a channel whatever runs on it; cancelling a ringing
//! originate; a socket closed during an application leaves its channel
//! alive; a hangup while bridged; and the bad inputs around them
//! (`uuid_kill` of a leg already gone, two hangups at once).

use redswitch::sim::SimHandle;
use redswitch_test_support as support;
use std::time::Duration;
use support::sim_client::{Client, WAIT, sim, socket_leg};
use tokio::net::TcpListener;
use tokio::time::{Instant, timeout};

const RINGBACK: &str = "tone_stream://%(2000,4000,440,480);loops=-1";

/// Originates a loopback leg whose application is a socket to `listener`
/// and returns its socket (subscribed with `myevents`) and uuid.
async fn socket_call(
    sim: &SimHandle,
    listener: &TcpListener,
    inbound: &mut Client,
) -> (Client, String) {
    let addr = listener.local_addr().expect("addr");
    let r = inbound
        .cmd(&format!(
            "bgapi originate loopback/answer-park/redswitch-test '&socket({addr} async full)'"
        ))
        .await;
    assert!(
        r.get("Reply-Text")
            .is_some_and(|t| t.starts_with("+OK Job-UUID"))
    );
    let (mut leg, uuid) = socket_leg(listener).await;
    let r = leg
        .cmd("event plain CHANNEL_EXECUTE CHANNEL_EXECUTE_COMPLETE PLAYBACK_START PLAYBACK_STOP CHANNEL_HANGUP CHANNEL_HANGUP_COMPLETE CHANNEL_BRIDGE CHANNEL_UNBRIDGE")
        .await;
    assert_eq!(
        r.get("Reply-Text"),
        Some("+OK event listener enabled plain")
    );
    assert!(sim.channel(&uuid).is_some());
    (leg, uuid)
}

/// A socket call whose leg plays `tone` (under the event lock if
/// `locked`), its PLAYBACK_START seen.
async fn playing_call(
    sim: &SimHandle,
    listener: &TcpListener,
    inbound: &mut Client,
    tone: &str,
    locked: bool,
) -> (Client, String) {
    let (mut leg, uuid) = socket_call(sim, listener, inbound).await;
    execute(&mut leg, "playback", tone, locked).await;
    leg.event("PLAYBACK_START", Instant::now() + WAIT).await;
    (leg, uuid)
}

/// `uuid_kill` of a live channel, which FreeSWITCH accepts.
async fn uuid_kill(inbound: &mut Client, uuid: &str) {
    assert_eq!(
        inbound.cmd(&format!("api uuid_kill {uuid}")).await.body,
        "+OK\n"
    );
}

async fn execute(leg: &mut Client, app: &str, arg: &str, locked: bool) {
    let lock = if locked { "\nevent-lock: true" } else { "" };
    let r = leg
        .cmd(&format!(
            "sendmsg\ncall-command: execute\nexecute-app-name: {app}\nexecute-app-arg: {arg}{lock}"
        ))
        .await;
    assert_eq!(r.get("Reply-Text"), Some("+OK"));
}

async fn sendmsg_hangup(leg: &mut Client) {
    let r = leg
        .cmd("sendmsg\ncall-command: hangup\nhangup-cause: NORMAL_CLEARING")
        .await;
    assert_eq!(r.get("Reply-Text"), Some("+OK"));
}

/// Polls until the channel is gone (generous: a loaded machine is slow).
async fn gone(sim: &SimHandle, uuid: &str) -> bool {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if sim.channel(uuid).is_none() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

async fn channel_count(c: &mut Client) -> String {
    c.cmd("api show channels count").await.body
}

async fn setup() -> (SimHandle, TcpListener, Client) {
    let sim = sim().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let inbound = Client::login(&sim).await;
    (sim, listener, inbound)
}

#[tokio::test]
async fn queued_hangup_waits_behind_an_event_locked_app_and_break_all_drops_it() {
    let (sim, listener, mut inbound) = setup().await;
    let (mut leg, uuid) = playing_call(&sim, &listener, &mut inbound, RINGBACK, true).await;
    sendmsg_hangup(&mut leg).await;
    // FreeSWITCH does not parse private events while CF_EVENT_LOCK is set.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let snap = sim.channel(&uuid).expect("the channel lives on");
    assert_eq!(snap.hangup_cause, None);
    assert!(snap.playing.is_some());
    // `uuid_break <uuid> all` ends the ringback and flushes the queue.
    assert_eq!(
        leg.cmd(&format!("api uuid_break {uuid} all")).await.body,
        "+OK\n"
    );
    let stop = leg.event("PLAYBACK_STOP", Instant::now() + WAIT).await;
    assert_eq!(stop.ev("Playback-Status").as_deref(), Some("break"));
    tokio::time::sleep(Duration::from_millis(800)).await;
    let snap = sim.channel(&uuid).expect("the queued hangup never ran");
    assert_eq!(snap.hangup_cause, None);
    // Only uuid_kill ends it.
    uuid_kill(&mut inbound, &uuid).await;
    assert!(gone(&sim, &uuid).await);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_plain_uuid_break_lets_the_queued_hangup_run() {
    let (sim, listener, mut inbound) = setup().await;
    let (mut leg, uuid) = playing_call(&sim, &listener, &mut inbound, RINGBACK, true).await;
    sendmsg_hangup(&mut leg).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(sim.channel(&uuid).is_some_and(|s| s.hangup_cause.is_none()));
    // Without `all` the queue is kept: once the locked app ends, the next
    // private event (the hangup) runs.
    assert_eq!(
        leg.cmd(&format!("api uuid_break {uuid}")).await.body,
        "+OK\n"
    );
    let h = leg.event("CHANNEL_HANGUP", Instant::now() + WAIT).await;
    assert_eq!(h.ev("Hangup-Cause").as_deref(), Some("NORMAL_CLEARING"));
    assert!(gone(&sim, &uuid).await);
    sim.shutdown().await;
}

#[tokio::test]
async fn without_event_lock_the_hangup_runs_at_once_inside_the_playback() {
    let (sim, listener, mut inbound) = setup().await;
    let (mut leg, uuid) = playing_call(&sim, &listener, &mut inbound, RINGBACK, false).await;
    sendmsg_hangup(&mut leg).await;
    let deadline = Instant::now() + WAIT;
    let h = leg.event("CHANNEL_HANGUP", deadline).await;
    assert_eq!(h.ev("Channel-State").as_deref(), Some("CS_EXECUTE"));
    // The playback ends with the channel: "done", not "break".
    let stop = leg.event("PLAYBACK_STOP", deadline).await;
    assert_eq!(stop.ev("Playback-Status").as_deref(), Some("done"));
    let done = leg.event("CHANNEL_EXECUTE_COMPLETE", deadline).await;
    assert_eq!(
        done.ev("Application-Response").as_deref(),
        Some("FILE PLAYED")
    );
    assert!(gone(&sim, &uuid).await);
    sim.shutdown().await;
}

#[tokio::test]
async fn uuid_kill_ends_a_channel_busy_in_an_event_locked_app() {
    let (sim, listener, mut inbound) = setup().await;
    let (mut leg, uuid) = playing_call(&sim, &listener, &mut inbound, RINGBACK, true).await;
    sendmsg_hangup(&mut leg).await;
    assert_eq!(
        inbound
            .cmd(&format!("api uuid_kill {uuid} NORMAL_CLEARING"))
            .await
            .body,
        "+OK\n"
    );
    let deadline = Instant::now() + WAIT;
    leg.event("CHANNEL_HANGUP", deadline).await;
    let done = leg.event("CHANNEL_EXECUTE_COMPLETE", deadline).await;
    assert_eq!(
        done.ev("Application-Response").as_deref(),
        Some("PLAYBACK ERROR")
    );
    let hc = leg.event("CHANNEL_HANGUP_COMPLETE", deadline).await;
    assert_eq!(hc.ev("Hangup-Cause").as_deref(), Some("NORMAL_CLEARING"));
    assert!(gone(&sim, &uuid).await);
    sim.shutdown().await;
}

#[tokio::test]
async fn uuid_kill_of_a_leg_already_gone_says_no_such_channel() {
    let (sim, listener, mut inbound) = setup().await;
    let (mut leg, uuid) = socket_call(&sim, &listener, &mut inbound).await;
    sendmsg_hangup(&mut leg).await;
    assert!(gone(&sim, &uuid).await);
    assert_eq!(
        inbound.cmd(&format!("api uuid_kill {uuid}")).await.body,
        "-ERR No such channel!\n"
    );
    assert_eq!(
        inbound
            .cmd("api uuid_kill 00000000-0000-4000-8000-000000000000 ORIGINATOR_CANCEL")
            .await
            .body,
        "-ERR No such channel!\n"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn two_hangups_at_once_end_the_channel_once() {
    let (sim, listener, mut inbound) = setup().await;
    inbound.cmd("event plain CHANNEL_HANGUP_COMPLETE").await;
    let (mut leg, uuid) = socket_call(&sim, &listener, &mut inbound).await;
    // A sendmsg hangup and a uuid_kill sent back to back, without waiting.
    leg.send(b"sendmsg\ncall-command: hangup\nhangup-cause: USER_BUSY\n\n")
        .await;
    inbound
        .send(format!("api uuid_kill {uuid} CALL_REJECTED\n\n").as_bytes())
        .await;
    let deadline = Instant::now() + WAIT;
    let hc = leg.event("CHANNEL_HANGUP_COMPLETE", deadline).await;
    let cause = hc.ev("Hangup-Cause").expect("cause");
    assert!(cause == "USER_BUSY" || cause == "CALL_REJECTED", "{cause}");
    assert!(gone(&sim, &uuid).await);
    // One HANGUP_COMPLETE per leg of the loopback pair, no more.
    let mut completes = 0;
    let quiet = Instant::now() + Duration::from_millis(1500);
    while let Ok(m) = timeout(
        quiet.saturating_duration_since(Instant::now()),
        inbound.msg(),
    )
    .await
    {
        if m.ev("Event-Name").as_deref() == Some("CHANNEL_HANGUP_COMPLETE") {
            completes += 1;
        }
    }
    assert_eq!(completes, 2, "the -a and -b halves end once each");
    assert_eq!(channel_count(&mut inbound).await, "\n0 total.\n");
    sim.shutdown().await;
}

#[tokio::test]
async fn cancelling_a_ringing_originate_ends_both_halves() {
    let (sim, _listener, mut inbound) = setup().await;
    inbound
        .cmd("event plain CHANNEL_PROGRESS CHANNEL_HANGUP CHANNEL_HANGUP_COMPLETE BACKGROUND_JOB")
        .await;
    let uuid = "6c3f9bd8-aeda-4487-8ed7-f3f82cff50d9";
    let r = inbound
        .cmd(&format!(
            "bgapi originate {{origination_uuid={uuid},originate_timeout=30}}loopback/15554080000/redswitch-test &park()"
        ))
        .await;
    assert!(
        r.get("Reply-Text")
            .is_some_and(|t| t.starts_with("+OK Job-UUID"))
    );
    // The -a half rings first, then the -b half.
    let deadline = Instant::now() + WAIT;
    let p = inbound.event("CHANNEL_PROGRESS", deadline).await;
    assert_eq!(p.ev("Unique-ID").as_deref(), Some(uuid));
    assert_eq!(p.ev("Channel-State").as_deref(), Some("CS_ROUTING"));
    let p = inbound.event("CHANNEL_PROGRESS", deadline).await;
    assert_eq!(
        p.ev("Channel-Name").as_deref(),
        Some("loopback/15554080000-b")
    );
    assert_eq!(
        inbound
            .cmd(&format!("api uuid_kill {uuid} ORIGINATOR_CANCEL"))
            .await
            .body,
        "+OK\n"
    );
    let mut hangups = Vec::new();
    let mut job = None;
    while hangups.len() < 2 || job.is_none() {
        let m = timeout(
            deadline.saturating_duration_since(Instant::now()),
            inbound.msg(),
        )
        .await
        .expect("both halves end and the job answers");
        match m.ev("Event-Name").as_deref() {
            Some("CHANNEL_HANGUP_COMPLETE") => {
                assert_eq!(m.ev("Hangup-Cause").as_deref(), Some("ORIGINATOR_CANCEL"));
                hangups.push(m.ev("Channel-Name").expect("name"));
            }
            Some("BACKGROUND_JOB") => {
                job = Some(m.body.split("\n\n").nth(1).unwrap_or("").to_owned())
            }
            _ => {}
        }
    }
    assert_eq!(job.as_deref(), Some("-ERR ORIGINATOR_CANCEL\n"));
    hangups.sort();
    assert_eq!(
        hangups,
        ["loopback/15554080000-a", "loopback/15554080000-b"]
    );
    assert_eq!(channel_count(&mut inbound).await, "\n0 total.\n");
    sim.shutdown().await;
}

#[tokio::test]
async fn a_socket_closed_during_an_event_locked_app_leaves_the_channel_alive() {
    let (sim, listener, mut inbound) = setup().await;
    let (leg, uuid) = playing_call(&sim, &listener, &mut inbound, RINGBACK, true).await;
    drop(leg);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        inbound.cmd(&format!("api uuid_exists {uuid}")).await.body,
        "true"
    );
    assert!(sim.channel(&uuid).is_some_and(|s| s.hangup_cause.is_none()));
    uuid_kill(&mut inbound, &uuid).await;
    assert!(gone(&sim, &uuid).await);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_socket_closed_during_a_finite_app_ends_the_channel_after_it() {
    let (sim, listener, mut inbound) = setup().await;
    let tone = "tone_stream://%(1200,0,440)";
    let (leg, uuid) = playing_call(&sim, &listener, &mut inbound, tone, false).await;
    drop(leg);
    // The playback keeps the channel thread: nothing notices the closed
    // socket until it ends, then the socket's park loop does.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        sim.channel(&uuid)
            .is_some_and(|s| s.hangup_cause.is_none() && s.playing.is_some())
    );
    assert!(gone(&sim, &uuid).await);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_socket_closed_while_parked_ends_the_channel() {
    let (sim, listener, mut inbound) = setup().await;
    let (leg, uuid) = socket_call(&sim, &listener, &mut inbound).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(leg);
    assert!(gone(&sim, &uuid).await);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_hangup_while_bridged_unbridges_on_the_bridging_side_only() {
    let (sim, listener, mut inbound) = setup().await;
    let (mut a, ua) = socket_call(&sim, &listener, &mut inbound).await;
    let (mut b, ub) = socket_call(&sim, &listener, &mut inbound).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        inbound
            .cmd(&format!("api uuid_bridge {ua} {ub}"))
            .await
            .body,
        format!("+OK {ub}\n")
    );
    let deadline = Instant::now() + WAIT;
    a.event("CHANNEL_BRIDGE", deadline).await;
    sendmsg_hangup(&mut a).await;
    // A: HANGUP, then UNBRIDGE, then the rest of its hangup.
    a.event("CHANNEL_HANGUP", deadline).await;
    let next = timeout(WAIT, async {
        loop {
            let m = a.msg().await;
            if m.get("Content-Type") == Some("text/event-plain") {
                return m;
            }
        }
    })
    .await
    .expect("an event");
    assert_eq!(next.ev("Event-Name").as_deref(), Some("CHANNEL_UNBRIDGE"));
    assert_eq!(next.ev("Bridge-B-Unique-ID").as_deref(), Some(ub.as_str()));
    // B (hangup_after_bridge) ends too, with no UNBRIDGE of its own.
    let mut b_events = Vec::new();
    loop {
        let m = b.event_any(deadline).await;
        let name = m.ev("Event-Name").unwrap_or_default();
        b_events.push(name.clone());
        if name == "CHANNEL_HANGUP_COMPLETE" {
            break;
        }
    }
    assert!(
        !b_events.iter().any(|e| e == "CHANNEL_UNBRIDGE"),
        "{b_events:?}"
    );
    assert!(gone(&sim, &ua).await && gone(&sim, &ub).await);
    sim.shutdown().await;
}
