//! Every bad job of issue 3, pushed through a real redis-server: each is
//! dead-lettered with its reason, a `failure` is published when its
//! `dial_id` is valid, and none stops the queue.

use redswitch_test_support as support;

use std::time::Duration;

use futures::StreamExt;
use redis::AsyncCommands;
use redswitch::service::job;
use redswitch::service::queue::{JobQueue, QueueConfig, push_job};
use redswitch::service::store::RedisClient;
use serde_json::{Value, json};
use support::redis_server::RedisServer;

fn good() -> Value {
    json!({
        "type": "asp-call", "call_provider": "talk_call_provider",
        "callee_number": "14157697098", "caller_id_lega": "15105625882",
        "caller_id_legb": "14157697098", "caller_number": "15105625882",
        "dial_id": "bad_dial", "org_id": "talkiq_org_id", "user_id": "talkiq_user_id"
    })
}

/// (raw job, whether its dial_id is valid, a word the reason must contain)
fn bad_jobs() -> Vec<(Vec<u8>, bool, String)> {
    let mut cases: Vec<(Vec<u8>, bool, String)> = vec![
        (b"not json at all".to_vec(), false, "not JSON".into()),
        (
            br#"{"type":"asp-call","dial_id":"bad_dial",}"#.to_vec(),
            false,
            "not JSON".into(),
        ),
        (b"[1,2,3]".to_vec(), false, "object".into()),
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
        let mut missing = good();
        missing.as_object_mut().unwrap().remove(field);
        cases.push((
            missing.to_string().into_bytes(),
            field != "dial_id",
            field.into(),
        ));
        let mut wrong = good();
        wrong[field] = json!(12345);
        cases.push((
            wrong.to_string().into_bytes(),
            field != "dial_id",
            field.into(),
        ));
    }
    for field in ["dial_id", "org_id", "user_id"] {
        for bad in ["has.dot", "has space", &"x".repeat(129)] {
            let mut j = good();
            j[field] = json!(bad);
            cases.push((j.to_string().into_bytes(), field != "dial_id", field.into()));
        }
    }
    let injections = [
        "1555,execute_on_answer=system x",
        "1555}",
        "{a=b}1555",
        "1555|sofia/gateway/evil/1666",
        "1555&park()",
        "1555 foo",
        "١٥٥٥",
    ];
    for field in [
        "callee_number",
        "caller_id_lega",
        "caller_id_legb",
        "caller_number",
        "call_provider",
    ] {
        for bad in injections {
            let mut j = good();
            j[field] = json!(bad);
            cases.push((j.to_string().into_bytes(), true, field.into()));
        }
    }
    cases
}

#[tokio::test]
async fn every_bad_job_is_dead_lettered_and_answered_with_failure() {
    let server = RedisServer::start();
    let client = RedisClient::connect(&server.url(), Duration::from_secs(5))
        .await
        .unwrap();
    let mut conn = client.connection().await.unwrap();
    let mut config = QueueConfig::new("talkiq-asp.calls");
    config.take_timeout = Duration::from_millis(200);
    let queue = JobQueue::open(&client, config).await.unwrap();
    let raw = redis::Client::open(server.url()).unwrap();
    let mut watcher = raw.get_async_pubsub().await.unwrap();
    watcher.subscribe("bad_dial").await.unwrap();

    let cases = bad_jobs();
    for (raw, _, _) in &cases {
        push_job(&mut conn, "talkiq-asp.calls", raw).await.unwrap();
    }
    // A good job after them: bad jobs do not stop the queue.
    push_job(&mut conn, "talkiq-asp.calls", good().to_string().as_bytes())
        .await
        .unwrap();

    for (raw, dial_id_valid, word) in &cases {
        let taken = queue.take().await.unwrap().unwrap();
        assert_eq!(taken.raw(), raw.as_slice());
        let bad = job::parse(taken.raw()).unwrap_err();
        assert!(
            bad.reason().contains(word.as_str()),
            "{} vs {word}",
            bad.reason()
        );
        assert_eq!(bad.dial_id.is_some(), *dial_id_valid, "{}", bad.reason());
        queue.reject(&taken, &bad).await.unwrap();
        if *dial_id_valid {
            let msg = tokio::time::timeout(Duration::from_secs(5), watcher.on_message().next())
                .await
                .unwrap()
                .unwrap();
            let failure: Value = serde_json::from_slice(msg.get_payload_bytes()).unwrap();
            assert_eq!(failure["type"], "failure");
            assert_eq!(failure["cause"], bad.reason());
        }
    }
    let taken = queue.take().await.unwrap().unwrap();
    let ok = job::parse(taken.raw()).unwrap();
    assert_eq!(ok.dial_id.as_str(), "bad_dial");
    queue.ack(&taken).await.unwrap();

    let dead: Vec<String> = conn.lrange("talkiq-asp.calls.dead", 0, -1).await.unwrap();
    assert_eq!(dead.len(), cases.len());
    for (entry, (raw, _, _)) in dead.iter().zip(&cases) {
        let entry: Value = serde_json::from_str(entry).unwrap();
        assert_eq!(entry["job"], String::from_utf8_lossy(raw).as_ref());
    }
    assert_eq!(queue.in_flight().await.unwrap(), 0);
    // No failure beyond one per case with a valid dial_id.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), watcher.on_message().next())
            .await
            .is_err()
    );
}
