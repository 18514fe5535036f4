//! Every way an asp-call ends, against the simulator, which behaves as
//! FreeSWITCH does: a `sendmsg` hangup queued behind an event-locked app
//! never runs, a closed socket does not end a channel, originates past the
//! sessions-per-second limit are refused. Each test ends by asserting that
//! the switch holds no channel (in `Stack::stop`).

use redswitch::service::asp_call::{ALLOTTED_TIMEOUT, DIAL_ID_VARIABLE};
use redswitch::service::pacing::{LimitSource, Pacer};
use redswitch::switch::app::{Dialer, Originate};
use redswitch::switch::{InboundClient, InboundConfig};
use redswitch_test_support::eventually;
use redswitch_test_support::fake_switch::FakeFs;
use redswitch_test_support::stack::{Follower, Stack, job};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;

/// A number whose far end answers and stays up.
const ANSWERS: &str = "14157697098";
/// A number whose far end rings until the ring timeout.
const RINGS: &str = "15554080000";

/// Waits for both sides' `hangup-event`s and checks nothing more follows.
async fn ends(f: &mut Follower, sides: &[u64]) -> BTreeMap<u64, String> {
    let causes = f.hangups(sides).await;
    f.drain(Duration::from_millis(300)).await;
    assert_eq!(f.count("hangup-event"), sides.len(), "{:#?}", f.seen);
    causes
}

/// Pushes a job and waits until the caller hears the ringback and the
/// callee's leg rings.
async fn callee_ringing(stack: &Stack, callee: &str) -> (Follower, String) {
    let job = job("15105625882", callee);
    let dial_id = job["dial_id"].as_str().unwrap().to_owned();
    let mut f = stack.push(&job).await;
    f.expect("call-start").await;
    f.expect_where("answer-event", |v| v["side"] == 0).await;
    stack
        .wait_leg(&dial_id, 0, "in ringback", |c| c.playing.is_some())
        .await;
    stack
        .wait_leg(&dial_id, 1, "ringing", |c| !c.answered)
        .await;
    (f, dial_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_callee_ends_the_caller_in_ringback() {
    let stack = Stack::start(1).await;
    let mut f = stack.push(&job("15105625882", "15554861234")).await;
    let causes = ends(&mut f, &[0, 1]).await;
    assert_eq!(causes[&1], "USER_BUSY");
    assert_eq!(causes[&0], "NORMAL_CLEARING");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unallocated_callee_ends_the_caller() {
    let stack = Stack::start(1).await;
    let mut f = stack.push(&job("15105625882", "15554041234")).await;
    let causes = ends(&mut f, &[0, 1]).await;
    assert_eq!(causes[&1], "UNALLOCATED_NUMBER");
    assert_eq!(causes[&0], "NORMAL_CLEARING");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_callee_ends_the_caller() {
    let stack = Stack::start(1).await;
    let mut f = stack.push(&job("15105625882", RINGS)).await;
    let causes = ends(&mut f, &[0, 1]).await;
    assert_eq!(causes[&1], "NO_ANSWER");
    assert_eq!(causes[&0], "NORMAL_CLEARING");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn far_end_hangup_after_the_bridge_ends_the_caller() {
    let stack = Stack::start(1).await;
    let (mut f, _) = stack.bridged_call("15105625882", "15554870001").await;
    let causes = ends(&mut f, &[0, 1]).await;
    assert_eq!(causes[&1], "NORMAL_CLEARING");
    assert_eq!(causes[&0], "NORMAL_CLEARING");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hangup_while_the_caller_rings_cancels_it() {
    let stack = Stack::start(1).await;
    let job = job(RINGS, ANSWERS);
    let dial_id = job["dial_id"].as_str().unwrap().to_owned();
    let mut f = stack.push(&job).await;
    f.expect("call-start").await;
    stack.publish(&dial_id, r#"{"type":"hangup"}"#).await;
    assert_eq!(f.answer(Some("hangup")).await["type"], "ack");
    let causes = ends(&mut f, &[0]).await;
    assert_eq!(causes[&0], "ORIGINATOR_CANCEL");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hangup_while_the_callee_rings_ends_the_caller_in_ringback() {
    let stack = Stack::start(1).await;
    let (mut f, dial_id) = callee_ringing(&stack, RINGS).await;
    stack.publish(&dial_id, r#"{"type":"hangup"}"#).await;
    assert_eq!(f.answer(Some("hangup")).await["type"], "ack");
    let causes = ends(&mut f, &[0, 1]).await;
    assert_eq!(causes[&1], "ORIGINATOR_CANCEL");
    assert_eq!(causes[&0], "NORMAL_CLEARING");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hangups_at_once_get_one_answer_each_and_end_the_call() {
    let stack = Stack::start(1).await;
    let (mut f, dial_id) = callee_ringing(&stack, RINGS).await;
    let (a, b) = tokio::join!(
        stack.publish(&dial_id, r#"{"type":"hangup"}"#),
        stack.publish(&dial_id, r#"{"type":"hangup"}"#)
    );
    let _ = (a, b);
    let first = f.answer(Some("hangup")).await;
    assert_eq!(first["type"], "ack");
    let second = f.answer(Some("hangup")).await;
    assert!(
        second["type"] == "ack"
            || (second["type"] == "error" && second["reason"] == "call has ended"),
        "{second}"
    );
    ends(&mut f, &[0, 1]).await;
    assert_eq!(f.answers(), 2, "{:#?}", f.seen);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hangup_after_the_bridge_ends_both() {
    let stack = Stack::start(1).await;
    let (mut f, dial_id) = stack.bridged_call("15105625882", ANSWERS).await;
    stack.publish(&dial_id, r#"{"type":"hangup"}"#).await;
    assert_eq!(f.answer(Some("hangup")).await["type"], "ack");
    let causes = ends(&mut f, &[0, 1]).await;
    assert_eq!(causes[&0], "NORMAL_CLEARING");
    assert_eq!(causes[&1], "NORMAL_CLEARING");
    stack.stop().await;
}

/// The callee's originate fails before any channel exists: its gateway is
/// down (the dial template puts the number in the gateway's place, and only
/// the callee's gateway is down).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callee_originate_refused_ends_the_caller() {
    let callee = "15550001234";
    let stack = Stack::start_with(
        1,
        |sim| sim.down_gateways = vec![callee.into()],
        |agent| agent.call.dial_template = "sofia/gateway/{number}/{number}".into(),
    )
    .await;
    let mut f = stack.push(&job("15105625882", callee)).await;
    f.expect_where("answer-event", |v| v["side"] == 0).await;
    let causes = ends(&mut f, &[0, 1]).await;
    assert_eq!(causes[&1], "NORMAL_TEMPORARY_FAILURE");
    assert_eq!(causes[&0], "NORMAL_CLEARING");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barge_then_hangup_ends_all_three() {
    let stack = Stack::start(1).await;
    let (mut f, dial_id) = stack.bridged_call("15105625882", ANSWERS).await;
    stack
        .publish(
            &dial_id,
            &json!({"type":"barge","phone_number":"15553331234","caller_id":"15550009999"})
                .to_string(),
        )
        .await;
    assert_eq!(f.answer(Some("barge")).await["type"], "ack");
    f.expect_where("answer-event", |v| v["side"] == 2).await;
    stack
        .wait_leg(&dial_id, 2, "eavesdropping", |c| c.eavesdrop.is_some())
        .await;
    stack.publish(&dial_id, r#"{"type":"hangup"}"#).await;
    assert_eq!(f.answer(Some("hangup")).await["type"], "ack");
    let causes = ends(&mut f, &[0, 1, 2]).await;
    assert!(
        causes.values().all(|c| c == "NORMAL_CLEARING"),
        "{causes:?}"
    );
    stack.stop().await;
}

/// A side hangs up (killed at the switch, as a phone hanging up would)
/// while a play runs on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_hangs_up_during_play() {
    let stack = Stack::start(1).await;
    let (mut f, dial_id) = stack.bridged_call("15105625882", ANSWERS).await;
    stack
        .publish(
            &dial_id,
            r#"{"type":"play","side":0,"media":["tone_stream://%(1000,0,440);loops=100"]}"#,
        )
        .await;
    assert_eq!(f.answer(Some("play")).await["type"], "ack");
    let caller = stack
        .wait_leg(&dial_id, 0, "playing", |c| c.playing.is_some())
        .await;
    stack
        .api(&format!("uuid_kill {} NORMAL_CLEARING", caller.uuid))
        .await;
    let causes = ends(&mut f, &[0, 1]).await;
    assert_eq!(causes[&0], "NORMAL_CLEARING");
    assert!(
        f.seen
            .iter()
            .any(|v| v["type"] == "media-done-event" && v["reason"] == "hangup"),
        "{:#?}",
        f.seen
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callee_hangs_up_during_record() {
    let stack = Stack::start(1).await;
    let (mut f, dial_id) = stack.bridged_call("15105625882", ANSWERS).await;
    stack
        .publish(&dial_id, r#"{"type":"record","name":"r1"}"#)
        .await;
    assert_eq!(f.answer(Some("record")).await["type"], "ack");
    stack
        .wait_leg(&dial_id, 0, "recording", |c| c.recording.is_some())
        .await;
    let callee = stack.leg(&dial_id, 1).expect("callee leg");
    stack
        .api(&format!("uuid_kill {} USER_BUSY", callee.uuid))
        .await;
    let causes = ends(&mut f, &[0, 1]).await;
    assert_eq!(causes[&1], "USER_BUSY");
    assert_eq!(causes[&0], "NORMAL_CLEARING");
    assert!(
        f.seen
            .iter()
            .any(|v| v["type"] == "record-done-event" && v["reason"] == "hangup"),
        "{:#?}",
        f.seen
    );
    stack.stop().await;
}

/// Every leg carries `redswitch_instance` and `dial_id`, so an operator can
/// find and end an instance's legs with `hupall`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legs_carry_instance_and_dial_id_for_hupall() {
    let stack = Stack::start(1).await;
    let (mut f, dial_id) = stack.bridged_call("15105625882", ANSWERS).await;
    let instance = stack.agents[0].instance.clone();
    for side in [0, 1] {
        let leg = stack.leg(&dial_id, side).expect("leg");
        assert_eq!(leg.variables["redswitch_instance"], instance);
        assert_eq!(leg.variables[DIAL_ID_VARIABLE], dial_id);
    }
    stack
        .api(&format!(
            "hupall MANAGER_REQUEST redswitch_instance {instance}"
        ))
        .await;
    let causes = ends(&mut f, &[0, 1]).await;
    assert!(
        causes.values().all(|c| c == "MANAGER_REQUEST"),
        "{causes:?}"
    );
    stack.stop().await;
}

/// FreeSWITCH itself ends a leg at `--max-call-duration`, whatever the
/// agent does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_call_duration_is_enforced_by_the_switch() {
    let stack = Stack::start_with(
        1,
        |_| {},
        |agent| agent.call.max_call_duration = Duration::from_secs(2),
    )
    .await;
    let (mut f, _) = stack.bridged_call("15105625882", ANSWERS).await;
    let causes = ends(&mut f, &[0, 1]).await;
    assert!(causes.values().any(|c| c == ALLOTTED_TIMEOUT), "{causes:?}");
    stack.stop().await;
}

/// A dialer of the test's own on the stack's switch, owning its calls as
/// `owner`; its socket address is never dialled (the tests only kill and
/// bridge).
async fn dialer(stack: &Stack, owner: &str) -> (Dialer, tokio::task::JoinHandle<()>) {
    let (inbound, events) = InboundClient::connect(InboundConfig::new(
        stack.sim.esl_addr().to_string(),
        "ClueCon",
    ))
    .await
    .unwrap();
    Dialer::start(inbound, events, "127.0.0.1:1", owner)
        .await
        .unwrap()
}

/// `uuid_kill` of a leg that is already gone is not an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_gone_leg_is_not_an_error() {
    let stack = Stack::start(0).await;
    let (dialer, _task) = dialer(&stack, "gone-test").await;
    let gone = uuid::Uuid::new_v4().to_string();
    dialer.kill(&gone, "NORMAL_CLEARING").await.unwrap();
    stack.stop().await;
}

/// A bridge that FreeSWITCH keeps refusing (one leg vanished) is tried
/// twice and then reported, leaving the caller to end the legs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_bridge_is_retried_once_then_reported() {
    let stack = Stack::start(0).await;
    let (dialer, _task) = dialer(&stack, "bridge-test").await;
    let gone = uuid::Uuid::new_v4().to_string();
    let started = std::time::Instant::now();
    let ringing = dialer
        .originate(&Originate {
            endpoint: format!("sofia/gateway/gw/{RINGS}"),
            ..Default::default()
        })
        .await
        .unwrap();
    let live = ringing.uuid().to_owned();
    eventually("the leg to exist", Duration::from_secs(10), || {
        std::future::ready(stack.sim.channel(&live).is_some())
    })
    .await;
    assert!(dialer.bridge(&live, &gone).await.is_err());
    assert!(started.elapsed() >= redswitch::switch::app::BRIDGE_RETRY);
    dialer.kill(&live, "NORMAL_CLEARING").await.unwrap();
    stack.stop().await;
}

/// A switch that refuses `fsctl` (an event-socket user without the
/// rights): FreeSWITCH's default limit is assumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_refusing_fsctl_leaves_the_default_limit() {
    let fake = FakeFs::start("ClueCon").await;
    let (inbound, _events) =
        InboundClient::connect(InboundConfig::new(fake.addr.to_string(), "ClueCon"))
            .await
            .unwrap();
    let pacer = Pacer::new(None);
    pacer.read_limit(&inbound).await;
    pacer.read_limit(&inbound).await;
    assert_eq!(pacer.limit(), 30);
    assert_eq!(pacer.source(), LimitSource::Fallback);
    assert_eq!(
        fake.commands(0)
            .iter()
            .filter(|c| c.as_str() == "api fsctl sps")
            .count(),
        2
    );
    // An override is never asked about.
    let pacer = Pacer::new(Some(7));
    pacer.read_limit(&inbound).await;
    assert_eq!((pacer.limit(), pacer.source()), (7, LimitSource::Override));
}
