//! Jobs end to end (real redis-server + simulator + agents): bad jobs never
//! reach FreeSWITCH, the number-plan outcomes, two agents sharing one
//! queue, a reused `dial_id`, and at-least-once delivery when an instance
//! dies holding a job.

use redswitch_test_support as support;

use redswitch::service::claims;
use redswitch::service::queue::{JobQueue, QueueConfig};
use redswitch::service::store::RedisClient;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use support::stack::{Follower, JOBS, Stack, job};

fn good(dial_id: &str) -> Value {
    json!({
        "type": "asp-call", "call_provider": "talk_call_provider",
        "callee_number": "14157697098", "caller_id_lega": "15105625882",
        "caller_id_legb": "14157697098", "caller_number": "15105625882",
        "dial_id": dial_id, "org_id": "talkiq_org_id", "user_id": "talkiq_user_id"
    })
}

/// A bad job: its raw bytes, its dial_id when that is valid (a `failure`
/// must come on it), and a piece of the reason.
struct Bad {
    raw: String,
    dial_id: Option<String>,
    reason: String,
}

fn bad_jobs() -> Vec<Bad> {
    let mut n = 0;
    let mut next_id = || {
        n += 1;
        format!("bad-{n}")
    };
    let mut cases = vec![
        Bad {
            raw: "not json".into(),
            dial_id: None,
            reason: "not JSON".into(),
        },
        Bad {
            // The seed's example had a trailing comma; it is not JSON.
            raw: {
                let body = good("x").to_string();
                format!("{},}}", &body[..body.len() - 1])
            },
            dial_id: None,
            reason: "not JSON".into(),
        },
    ];
    let fields = [
        "type",
        "call_provider",
        "callee_number",
        "caller_id_lega",
        "caller_id_legb",
        "caller_number",
        "dial_id",
        "org_id",
        "user_id",
    ];
    for field in fields {
        let id = next_id();
        let mut missing = good(&id);
        missing.as_object_mut().unwrap().remove(field);
        cases.push(Bad {
            raw: missing.to_string(),
            dial_id: (field != "dial_id").then_some(id),
            reason: format!("missing field `{field}`"),
        });
        let id = next_id();
        let mut wrong = good(&id);
        wrong[field] = json!(15551234);
        cases.push(Bad {
            raw: wrong.to_string(),
            dial_id: (field != "dial_id").then_some(id),
            reason: format!("`{field}` must be a string"),
        });
    }
    for field in ["dial_id", "org_id", "user_id"] {
        for bad in ["a.b".to_owned(), "a b".to_owned(), "x".repeat(129)] {
            let id = next_id();
            let mut job = good(&id);
            job[field] = json!(bad);
            cases.push(Bad {
                raw: job.to_string(),
                dial_id: (field != "dial_id").then_some(id),
                reason: format!("`{field}`"),
            });
        }
    }
    let injections = [
        "1555,execute_on_answer=system x",
        "1555}",
        "{a=b}1555",
        "1555|sofia/gateway/other/1666",
        "1555&park()",
        "1555 foo",
        "1555\napi system x",
        "${system(id)}",
        "١٥٥٥",
        "１５５５",
    ];
    for field in [
        "caller_number",
        "callee_number",
        "caller_id_lega",
        "caller_id_legb",
        "call_provider",
    ] {
        for bad in injections {
            // Dots and digits are fine in a provider; these are not.
            let bad = if field == "call_provider" {
                bad.replace("1555", "gw")
            } else {
                bad.to_owned()
            };
            let id = next_id();
            let mut job = good(&id);
            job[field] = json!(bad);
            cases.push(Bad {
                raw: job.to_string(),
                dial_id: Some(id),
                reason: format!("`{field}`"),
            });
        }
    }
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_jobs_are_dead_lettered_and_nothing_reaches_freeswitch() {
    let stack = Stack::start(1).await;
    let cases = bad_jobs();
    let mut followers = Vec::new();
    for case in &cases {
        if let Some(id) = &case.dial_id {
            followers.push(Follower::start(&stack.redis.url(), id).await);
        }
    }
    for case in &cases {
        stack.push_raw(&case.raw).await;
    }
    let n = cases.len();
    support::eventually(
        "every bad job dead-lettered",
        Duration::from_secs(10),
        || {
            let stack = &stack;
            async move { stack.lrange(&format!("{JOBS}.dead")).await.len() >= n }
        },
    )
    .await;

    // Not one channel was created.
    assert_eq!(stack.sessions_since_startup().await, 0);
    assert!(stack.sim.channels().is_empty());

    let dead = stack.dead_letters().await;
    assert_eq!(dead.len(), cases.len());
    // Jobs are handled concurrently, so the letters may be in any order;
    // each keeps its raw job.
    let by_job: BTreeMap<&str, &Value> = dead
        .iter()
        .map(|letter| (letter["job"].as_str().unwrap(), letter))
        .collect();
    assert_eq!(by_job.len(), cases.len(), "one letter per job");
    for case in &cases {
        let letter = by_job
            .get(case.raw.as_str())
            .unwrap_or_else(|| panic!("no dead letter for {:?}", case.raw));
        let reason = letter["reason"].as_str().unwrap();
        assert!(
            reason.contains(&case.reason),
            "{:?}: reason {reason:?} lacks {:?}",
            case.raw,
            case.reason
        );
    }
    let mut followers = followers.into_iter();
    for case in cases.iter().filter(|c| c.dial_id.is_some()) {
        let mut f = followers.next().unwrap();
        let failure = f.expect("failure").await;
        let cause = failure["cause"].as_str().unwrap();
        assert!(cause.contains(&case.reason), "{cause:?} for {:?}", case.raw);
        f.drain(Duration::from_millis(20)).await;
        assert_eq!(f.seen.len(), 1, "only the failure: {:#?}", f.seen);
    }
    // Nothing undecided is left behind.
    assert!(stack.lrange(JOBS).await.is_empty());

    // The agent keeps working.
    let (mut f, _) = stack.bridged_call("15105625882", "14157697098").await;
    stack
        .publish(&f.dial_id.clone(), r#"{"type":"hangup"}"#)
        .await;
    f.hangups(&[0, 1]).await;
    assert_eq!(stack.sessions_since_startup().await, 2);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unallocated_callee() {
    let stack = Stack::start(1).await;
    let mut f = stack.push(&job("15105625882", "15554041234")).await;
    f.expect_where("answer-event", |v| v["side"] == 0).await;
    let causes = f.hangups(&[0, 1]).await;
    assert_eq!(causes[&1], "UNALLOCATED_NUMBER");
    assert_eq!(causes[&0], "NORMAL_CLEARING");
    f.drain(Duration::from_millis(300)).await;
    assert_eq!(f.count("hangup-event"), 2, "{:#?}", f.seen);
    assert_eq!(f.count("answer-event"), 1);
    assert_eq!(f.count("failure"), 0);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_caller_ends_the_call_before_the_callee_rings() {
    let stack = Stack::start(1).await;
    let job = job("15554861234", "14157697098");
    let mut f = stack.push(&job).await;
    f.expect("call-start").await;
    let causes = f.hangups(&[0]).await;
    assert_eq!(causes[&0], "USER_BUSY");
    f.drain(Duration::from_millis(300)).await;
    assert_eq!(f.count("hangup-event"), 1, "{:#?}", f.seen);
    assert_eq!(f.count("answer-event"), 0);
    // Only the caller was ever dialled.
    assert_eq!(stack.sessions_since_startup().await, 1);
    stack.stop().await;
}

/// 1555700…: the callee sends `1234#` a second after answering. The agent
/// publishes one `dtmf-event` per digit, as FreeSWITCH reports them (one
/// DTMF event per key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callee_dtmf_is_published_one_event_per_digit() {
    let stack = Stack::start(1).await;
    let (mut f, dial_id) = stack.bridged_call("15105625882", "15557001234").await;
    let mut digits = String::new();
    while digits.len() < 5 {
        let v = f.expect("dtmf-event").await;
        assert_eq!(v["side"], 1, "{v}");
        let d = v["digits"].as_str().unwrap();
        assert_eq!(d.len(), 1, "one digit per event: {v}");
        digits.push_str(d);
    }
    assert_eq!(digits, "1234#");
    // Received by the callee's leg: nobody sent tones to the far end.
    assert_eq!(stack.leg(&dial_id, 0).unwrap().sent_dtmf, "");
    stack.publish(&dial_id, r#"{"type":"hangup"}"#).await;
    f.hangups(&[0, 1]).await;
    f.drain(Duration::from_millis(300)).await;
    assert_eq!(f.count("dtmf-event"), 5, "{:#?}", f.seen);
    // The history keeps them in order too.
    let history: Vec<Value> = stack.lrange_json("redswitch_history.org1.user1").await;
    let in_history: String = history
        .iter()
        .filter(|v| v["type"] == "dtmf-event")
        .map(|v| v["digits"].as_str().unwrap())
        .collect();
    assert_eq!(in_history, "1234#");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dial_id_reused_while_its_call_is_live_is_refused() {
    let stack = Stack::start(1).await;
    let (mut f, dial_id) = stack.bridged_call("15105625882", "14157697098").await;
    let sessions = stack.sessions_since_startup().await;

    let mut again = job("15105620000", "14150000000");
    again["dial_id"] = json!(dial_id);
    stack.push_raw(&again.to_string()).await;
    let failure = f.expect("failure").await;
    assert_eq!(failure["cause"], claims::DIAL_ID_CLAIMED);
    support::eventually("dead-lettered", Duration::from_secs(5), || {
        let stack = &stack;
        async move { !stack.lrange(&format!("{JOBS}.dead")).await.is_empty() }
    })
    .await;
    let dead = stack.dead_letters().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["job"], again.to_string());
    assert_eq!(
        stack.sessions_since_startup().await,
        sessions,
        "nothing dialled"
    );

    // The live call is untouched and still answers control exactly once.
    let caller = stack.leg(&dial_id, 0).unwrap();
    assert!(caller.bridged_to.is_some());
    stack.publish(&dial_id, r#"{"type":"hangup"}"#).await;
    f.answer(Some("hangup")).await;
    f.hangups(&[0, 1]).await;
    f.drain(Duration::from_millis(400)).await;
    assert_eq!(f.answers(), 1, "{:#?}", f.seen);
    assert_eq!(f.count("hangup-event"), 2);

    // Once the call is over the dial_id can be used again.
    let mut third = job("15105625882", "14157697098");
    third["dial_id"] = json!(dial_id);
    stack.push_raw(&third.to_string()).await;
    f.expect_where("answer-event", |v| v["side"] == 1).await;
    stack.publish(&dial_id, r#"{"type":"hangup"}"#).await;
    f.answer(Some("hangup")).await;
    f.drain(Duration::from_millis(400)).await;
    assert_eq!(f.answers(), 2, "{:#?}", f.seen);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dial_id_live_on_one_instance_is_refused_by_every_instance() {
    let stack = Stack::start(2).await;
    let (mut f, dial_id) = stack.bridged_call("15105625882", "14157697098").await;
    let sessions = stack.sessions_since_startup().await;
    // Pushed several times: both agents take some (Redis hands each job to
    // the longest waiter), and each refuses it through the claim.
    let mut again = job("15105620000", "14150000000");
    again["dial_id"] = json!(dial_id);
    for _ in 0..4 {
        stack.push_raw(&again.to_string()).await;
        let failure = f.expect("failure").await;
        assert_eq!(failure["cause"], claims::DIAL_ID_CLAIMED);
    }
    support::eventually("dead-lettered", Duration::from_secs(5), || {
        let stack = &stack;
        async move { stack.lrange(&format!("{JOBS}.dead")).await.len() == 4 }
    })
    .await;
    assert_eq!(
        stack.sessions_since_startup().await,
        sessions,
        "nothing dialled"
    );
    stack.publish(&dial_id, r#"{"type":"hangup"}"#).await;
    f.hangups(&[0, 1]).await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_share_the_queue_and_control_reaches_the_owner() {
    let stack = Stack::start(2).await;
    let mut calls = Vec::new();
    for _ in 0..20 {
        let job = job("15105625882", "14157697098");
        let dial_id = job["dial_id"].as_str().unwrap().to_owned();
        calls.push((stack.push(&job).await, dial_id));
    }
    let mut owners = BTreeMap::new();
    for (f, dial_id) in &mut calls {
        f.expect_where("answer-event", |v| v["side"] == 1).await;
        let leg = stack
            .wait_leg(dial_id, 0, "bridged", |c| c.bridged_to.is_some())
            .await;
        owners.insert(dial_id.clone(), leg.variables["redswitch_instance"].clone());
    }
    let instances: BTreeSet<_> = stack.agents.iter().map(|a| a.instance.clone()).collect();
    let used: BTreeSet<_> = owners.values().cloned().collect();
    // Both agents block on the list; Redis hands each pushed job to the
    // longest waiter, so both get calls (else the routing check is moot).
    assert_eq!(used, instances, "jobs went to: {owners:#?}");

    for (_, dial_id) in &calls {
        stack.publish(dial_id, r#"{"type":"hangup"}"#).await;
    }
    for (f, dial_id) in &mut calls {
        f.answer(Some("hangup")).await;
        f.hangups(&[0, 1]).await;
        f.drain(Duration::from_millis(100)).await;
        assert_eq!(f.count("call-start"), 1, "{dial_id}: {:#?}", f.seen);
        assert_eq!(f.count("ack"), 1, "{dial_id}: {:#?}", f.seen);
        assert_eq!(f.count("error"), 0, "{dial_id}: {:#?}", f.seen);
        assert_eq!(f.count("hangup-event"), 2, "{dial_id}: {:#?}", f.seen);
    }
    // Two legs per job, no job dialled twice.
    assert_eq!(stack.sessions_since_startup().await, 40);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_taken_by_an_instance_that_died_is_done_by_a_live_one() {
    let mut stack = Stack::start(0).await;
    let job = job("15105625882", "14157697098");
    let dial_id = job["dial_id"].as_str().unwrap().to_owned();
    let mut f = stack.push(&job).await;

    // An instance takes the job, beats once, and dies before deciding it.
    let client = RedisClient::connect(&stack.redis.url(), Duration::from_secs(5))
        .await
        .unwrap();
    let mut config = QueueConfig::new(JOBS).with_liveness_ttl(Duration::from_millis(300));
    config.instance = "doomed".into();
    let doomed = JobQueue::open(&client, config).await.unwrap();
    doomed.heartbeat().await.unwrap();
    let taken = doomed.take().await.unwrap().expect("the job");
    assert_eq!(taken.raw(), job.to_string().as_bytes());
    assert_eq!(doomed.in_flight().await.unwrap(), 1);
    drop(doomed);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A live agent's reaper gives the job back and the agent does it.
    stack.add_agent().await;
    f.expect("call-start").await;
    f.expect_where("answer-event", |v| v["side"] == 1).await;
    let leg = stack
        .wait_leg(&dial_id, 0, "bridged", |c| c.bridged_to.is_some())
        .await;
    assert_eq!(
        leg.variables["redswitch_instance"],
        stack.agents[0].instance
    );
    stack.publish(&dial_id, r#"{"type":"hangup"}"#).await;
    f.hangups(&[0, 1]).await;
    f.drain(Duration::from_millis(300)).await;
    assert_eq!(f.count("call-start"), 1, "{:#?}", f.seen);
    assert!(stack.lrange(JOBS).await.is_empty());
    assert!(
        stack
            .lrange(&format!("{{{JOBS}}}.processing.doomed"))
            .await
            .is_empty()
    );
    stack.stop().await;
}
