//! The asp-call flow end to end: a real redis-server, the simulator and the
//! agent; jobs pushed, events read and control published through Redis.

use redswitch_test_support as support;

use serde_json::json;
use std::time::Duration;
use support::stack::{Stack, job, job_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_bridges_and_hangs_up_on_control() {
    let stack = Stack::start(1).await;
    let job = job("15105625882", "14157697098");
    let dial_id = job["dial_id"].as_str().unwrap().to_owned();
    let mut f = stack.push(&job).await;

    f.expect("call-start").await;
    f.expect_where("answer-event", |v| v["side"] == 0).await;
    f.expect_where("answer-event", |v| v["side"] == 1).await;
    let caller = stack
        .wait_leg(&dial_id, 0, "bridged", |c| c.bridged_to.is_some())
        .await;
    let callee = stack.leg(&dial_id, 1).expect("callee leg");
    assert_eq!(caller.bridged_to.as_deref(), Some(callee.uuid.as_str()));
    assert_eq!(caller.caller_id_number, "15550000001");
    assert_eq!(callee.caller_id_number, "15550000002");
    assert_eq!(
        caller
            .variables
            .get("app_disable_expand_variables")
            .map(String::as_str),
        Some("true")
    );

    let active_key = format!("redswitch.{dial_id}.org1.user1");
    let mut active = stack.lrange(&active_key).await;
    active.sort();
    assert_eq!(active, ["ACTIVE.0", "ACTIVE.1"]);

    stack.publish(&dial_id, r#"{"type":"hangup"}"#).await;
    f.expect_where("ack", |v| v["event"] == "hangup").await;
    let causes = f.hangups(&[0, 1]).await;
    assert_eq!(causes[&0], "NORMAL_CLEARING");
    assert_eq!(causes[&1], "NORMAL_CLEARING");
    f.drain(Duration::from_millis(300)).await;
    assert_eq!(f.count("hangup-event"), 2, "{:#?}", f.seen);
    assert!(stack.lrange(&active_key).await.is_empty());

    // The history holds every message of the call, in order.
    let history: Vec<serde_json::Value> = stack
        .lrange("redswitch_history.org1.user1")
        .await
        .iter()
        .map(|s| serde_json::from_str(s).unwrap())
        .collect();
    // The follower also saw the controller's own `hangup` message.
    let published: Vec<_> = f
        .seen
        .iter()
        .filter(|v| v["type"] != "hangup")
        .cloned()
        .collect();
    assert_eq!(history, published);
    assert_eq!(
        history[0],
        json!({"type": "call-start", "dial_id": dial_id})
    );

    // A second hangup for the ended call gets an error, not silence.
    stack.publish(&dial_id, r#"{"type":"hangup"}"#).await;
    f.expect_where("error", |v| v["event"] == "hangup").await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_callee_ends_both_sides() {
    let stack = Stack::start(1).await;
    let mut f = stack.push(&job("15105625882", "15554861234")).await;
    f.expect("call-start").await;
    f.expect_where("answer-event", |v| v["side"] == 0).await;
    let causes = f.hangups(&[0, 1]).await;
    assert_eq!(causes[&1], "USER_BUSY");
    assert_eq!(causes[&0], "NORMAL_CLEARING");
    f.drain(Duration::from_millis(300)).await;
    assert_eq!(f.count("hangup-event"), 2, "{:#?}", f.seen);
    assert_eq!(f.count("answer-event"), 1);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_who_never_answers_gets_no_answer() {
    let stack = Stack::start(1).await;
    let mut f = stack.push(&job("15554081234", "14157697098")).await;
    f.expect("call-start").await;
    f.expect_where("hangup-event", |v| {
        v["side"] == 0 && v["cause"] == "NO_ANSWER"
    })
    .await;
    f.drain(Duration::from_millis(300)).await;
    assert_eq!(f.count("hangup-event"), 1, "{:#?}", f.seen);
    assert_eq!(f.count("answer-event"), 0);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn far_end_hangup_ends_the_call() {
    let stack = Stack::start(1).await;
    let mut f = stack.push(&job("15105625882", "15554871234")).await;
    f.expect_where("answer-event", |v| v["side"] == 1).await;
    let causes = f.hangups(&[0, 1]).await;
    assert_eq!(causes[&1], "NORMAL_CLEARING");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_gateway_is_a_failure_and_nothing_rings() {
    let stack = Stack::start(1).await;
    let mut f = stack
        .push(&job_with("15105625882", "14157697098", "nonexistent"))
        .await;
    let failure = f.expect("failure").await;
    assert!(failure["cause"].as_str().unwrap().len() > 2, "{failure}");
    f.drain(Duration::from_millis(300)).await;
    assert_eq!(f.count("call-start"), 0, "{:#?}", f.seen);
    assert!(stack.sim.channels().is_empty());
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hangup_while_ringing_cancels_with_originator_cancel() {
    let stack = Stack::start(1).await;
    let job = job("15105625882", "15554081234");
    let dial_id = job["dial_id"].as_str().unwrap().to_owned();
    let mut f = stack.push(&job).await;
    f.expect_where("answer-event", |v| v["side"] == 0).await;
    stack.wait_leg(&dial_id, 1, "ringing", |_| true).await;
    stack.publish(&dial_id, r#"{"type":"hangup"}"#).await;
    f.expect_where("ack", |v| v["event"] == "hangup").await;
    let causes = f.hangups(&[0, 1]).await;
    assert_eq!(causes[&1], "ORIGINATOR_CANCEL");
    assert_eq!(causes[&0], "NORMAL_CLEARING");
    stack.stop().await;
}
