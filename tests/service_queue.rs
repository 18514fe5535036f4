//! The job queue against a real redis-server: order, at-least-once
//! delivery across instances, the reaper, dead letters.

use redswitch_test_support as support;

use std::collections::HashSet;
use std::time::Duration;

use redis::AsyncCommands;
use redswitch::service::job;
use redswitch::service::queue::{JobQueue, QueueConfig, push_job};
use redswitch::service::store::RedisClient;
use support::redis_server::RedisServer;
use tokio_util::sync::CancellationToken;

async fn client(server: &RedisServer) -> RedisClient {
    RedisClient::connect(&server.url(), Duration::from_secs(5))
        .await
        .unwrap()
}

fn config(instance: &str, ttl_ms: u64) -> QueueConfig {
    let mut c =
        QueueConfig::new("talkiq-asp.calls").with_liveness_ttl(Duration::from_millis(ttl_ms));
    c.instance = instance.into();
    c.reap_every = Duration::from_millis(100);
    c.take_timeout = Duration::from_millis(200);
    c
}

#[tokio::test]
async fn takes_oldest_first_and_ack_empties_the_processing_list() {
    let server = RedisServer::start();
    let client = client(&server).await;
    let q = JobQueue::open(&client, config("a", 5_000)).await.unwrap();
    let mut conn = client.connection().await.unwrap();
    for i in 0..3 {
        push_job(&mut conn, "talkiq-asp.calls", format!("job{i}").as_bytes())
            .await
            .unwrap();
    }
    let first = q.take().await.unwrap().unwrap();
    assert_eq!(first.raw(), b"job0");
    let second = q.take().await.unwrap().unwrap();
    assert_eq!(second.raw(), b"job1");
    assert_eq!(q.in_flight().await.unwrap(), 2);
    assert_eq!(q.waiting().await.unwrap(), 1);
    let in_list: Vec<Vec<u8>> = conn.lrange(&q.keys().processing, 0, -1).await.unwrap();
    assert_eq!(in_list, vec![b"job0".to_vec(), b"job1".to_vec()]);
    assert!(q.ack(&first).await.unwrap());
    assert!(!q.ack(&first).await.unwrap(), "second ack finds nothing");
    assert!(q.ack(&second).await.unwrap());
    assert_eq!(q.in_flight().await.unwrap(), 0);
    assert_eq!(q.take().await.unwrap().unwrap().raw(), b"job2");
}

#[tokio::test]
async fn take_times_out_with_none_and_the_liveness_key_expires() {
    let server = RedisServer::start();
    let client = client(&server).await;
    let q = JobQueue::open(&client, config("a", 3_000)).await.unwrap();
    let started = std::time::Instant::now();
    assert!(q.take().await.unwrap().is_none());
    assert!(started.elapsed() >= Duration::from_millis(150));
    let mut conn = client.connection().await.unwrap();
    let ttl: i64 = conn.pttl(&q.keys().alive).await.unwrap();
    assert!(ttl > 0 && ttl <= 3_000, "{ttl}");
    let members: Vec<String> = conn.smembers(&q.keys().instances).await.unwrap();
    assert_eq!(members, vec!["a".to_string()]);
    assert!(q.heartbeat().await.unwrap(), "key was still alive");
}

#[tokio::test]
async fn two_consumers_handle_each_job_exactly_once() {
    let server = RedisServer::start();
    let client = client(&server).await;
    let mut conn = client.connection().await.unwrap();
    const JOBS: usize = 300;
    let consumers: Vec<JobQueue> = vec![
        JobQueue::open(&client, config("a", 5_000)).await.unwrap(),
        JobQueue::open(&client, config("b", 5_000)).await.unwrap(),
    ];
    let workers: Vec<_> = consumers
        .iter()
        .cloned()
        .map(|q| {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut idle = 0;
                while idle < 3 {
                    match q.take().await.unwrap() {
                        Some(job) => {
                            idle = 0;
                            seen.push(String::from_utf8(job.raw().to_vec()).unwrap());
                            assert!(q.ack(&job).await.unwrap());
                        }
                        None => idle += 1,
                    }
                }
                seen
            })
        })
        .collect();
    for i in 0..JOBS {
        push_job(
            &mut conn,
            "talkiq-asp.calls",
            format!("{{\"n\":{i}}}").as_bytes(),
        )
        .await
        .unwrap();
    }
    let mut all = Vec::new();
    let mut per_worker = Vec::new();
    for w in workers {
        let seen = w.await.unwrap();
        per_worker.push(seen.len());
        all.extend(seen);
    }
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!(all.len(), JOBS, "per worker: {per_worker:?}");
    assert_eq!(unique.len(), JOBS);
    assert!(
        per_worker.iter().all(|n| *n > 0),
        "both took jobs: {per_worker:?}"
    );
    for q in &consumers {
        assert_eq!(q.in_flight().await.unwrap(), 0);
    }
}

#[tokio::test]
async fn a_dead_instances_job_is_requeued_at_the_head_and_redone() {
    let server = RedisServer::start();
    let client = client(&server).await;
    let mut conn = client.connection().await.unwrap();

    // Instance a takes two jobs, then "dies": its heartbeat stops.
    let a = JobQueue::open(&client, config("a", 1_000)).await.unwrap();
    let a_beat = CancellationToken::new();
    let a_task = a.spawn_maintenance(a_beat.clone());
    for raw in ["first", "second", "third"] {
        push_job(&mut conn, "talkiq-asp.calls", raw.as_bytes())
            .await
            .unwrap();
    }
    assert_eq!(a.take().await.unwrap().unwrap().raw(), b"first");
    assert_eq!(a.take().await.unwrap().unwrap().raw(), b"second");
    // Alive for longer than its TTL thanks to the heartbeat.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(conn.exists::<_, bool>(&a.keys().alive).await.unwrap());
    assert_eq!(a.in_flight().await.unwrap(), 2);
    a_beat.cancel();
    a_task.await.unwrap();

    // Instance b's reaper waits for a's key to expire, then requeues.
    let b = JobQueue::open(&client, config("b", 5_000)).await.unwrap();
    let b_beat = CancellationToken::new();
    let b_task = b.spawn_maintenance(b_beat.clone());
    let a_processing = a.keys().processing.clone();
    support::eventually("a's jobs requeued", Duration::from_secs(5), || {
        let mut conn = conn.clone();
        let key = a_processing.clone();
        async move { conn.llen::<_, usize>(&key).await.unwrap() == 0 }
    })
    .await;
    let waiting: Vec<String> = conn.lrange("talkiq-asp.calls", 0, -1).await.unwrap();
    assert_eq!(
        waiting,
        ["first", "second", "third"],
        "requeued at the head, in order"
    );
    let members: Vec<String> = conn.smembers(&b.keys().instances).await.unwrap();
    assert_eq!(members, vec!["b".to_string()], "a forgotten once reaped");

    for expected in ["first", "second", "third"] {
        let job = b.take().await.unwrap().unwrap();
        assert_eq!(job.raw(), expected.as_bytes());
        assert!(b.ack(&job).await.unwrap());
    }
    assert!(b.take().await.unwrap().is_none());
    b_beat.cancel();
    b_task.await.unwrap();
}

#[tokio::test]
async fn racing_reapers_lose_and_duplicate_nothing() {
    let server = RedisServer::start();
    let client = client(&server).await;
    let mut conn = client.connection().await.unwrap();
    let dead = JobQueue::open(&client, config("dead", 300)).await.unwrap();
    const JOBS: usize = 200;
    for i in 0..JOBS {
        push_job(&mut conn, "talkiq-asp.calls", format!("j{i}").as_bytes())
            .await
            .unwrap();
    }
    for _ in 0..JOBS {
        dead.take().await.unwrap().unwrap();
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let reapers = [
        JobQueue::open(&client, config("r1", 5_000)).await.unwrap(),
        JobQueue::open(&client, config("r2", 5_000)).await.unwrap(),
        JobQueue::open(&client, config("r3", 5_000)).await.unwrap(),
    ];
    let passes = futures::future::join_all(reapers.iter().map(|r| r.reap())).await;
    let moved: usize = passes.into_iter().map(|r| r.unwrap()).sum();
    assert_eq!(moved, JOBS);
    let waiting: Vec<String> = conn.lrange("talkiq-asp.calls", 0, -1).await.unwrap();
    let unique: HashSet<_> = waiting.iter().collect();
    assert_eq!((waiting.len(), unique.len()), (JOBS, JOBS));
}

#[tokio::test]
async fn a_live_instance_is_not_reaped_and_release_gives_jobs_back() {
    let server = RedisServer::start();
    let client = client(&server).await;
    let mut conn = client.connection().await.unwrap();
    let a = JobQueue::open(&client, config("a", 5_000)).await.unwrap();
    let b = JobQueue::open(&client, config("b", 5_000)).await.unwrap();
    push_job(&mut conn, "talkiq-asp.calls", b"x").await.unwrap();
    push_job(&mut conn, "talkiq-asp.calls", b"y").await.unwrap();
    a.take().await.unwrap().unwrap();
    assert_eq!(b.reap().await.unwrap(), 0, "a is alive");
    assert_eq!(a.reap().await.unwrap(), 0, "never reaps itself");
    assert_eq!(a.in_flight().await.unwrap(), 1);
    assert_eq!(a.release().await.unwrap(), 1);
    let waiting: Vec<String> = conn.lrange("talkiq-asp.calls", 0, -1).await.unwrap();
    assert_eq!(waiting, ["x", "y"]);
    assert!(!conn.exists::<_, bool>(&a.keys().alive).await.unwrap());
    let members: Vec<String> = conn.smembers(&a.keys().instances).await.unwrap();
    assert_eq!(members, vec!["b".to_string()]);
}

#[tokio::test]
async fn bad_jobs_are_dead_lettered_with_a_failure_and_the_list_is_capped() {
    let server = RedisServer::start();
    let client = client(&server).await;
    let mut conn = client.connection().await.unwrap();
    let mut cfg = config("a", 5_000);
    cfg.dead_cap = 5;
    let q = JobQueue::open(&client, cfg).await.unwrap();

    // A subscriber on the dial_id sees the failure.
    let raw_client = redis::Client::open(server.url()).unwrap();
    let mut pubsub = raw_client.get_async_pubsub().await.unwrap();
    pubsub.subscribe("d1").await.unwrap();

    let bad = br#"{"type":"asp-call","dial_id":"d1","org_id":"o","user_id":"u","call_provider":"p","caller_number":"1555,execute_on_answer=system x","callee_number":"1","caller_id_lega":"1","caller_id_legb":"1"}"#;
    push_job(&mut conn, "talkiq-asp.calls", bad).await.unwrap();
    let taken = q.take().await.unwrap().unwrap();
    let refused = job::parse(taken.raw()).unwrap_err();
    q.reject(&taken, &refused).await.unwrap();

    use futures::StreamExt;
    let msg = tokio::time::timeout(Duration::from_secs(5), pubsub.on_message().next())
        .await
        .unwrap()
        .unwrap();
    let event: serde_json::Value = serde_json::from_slice(msg.get_payload_bytes()).unwrap();
    assert_eq!(event["type"], "failure");
    assert!(
        event["cause"].as_str().unwrap().contains("caller_number"),
        "{event}"
    );

    let dead: Vec<String> = conn.lrange("talkiq-asp.calls.dead", 0, -1).await.unwrap();
    assert_eq!(dead.len(), 1);
    let entry: serde_json::Value = serde_json::from_str(&dead[0]).unwrap();
    assert_eq!(entry["job"], String::from_utf8_lossy(bad).as_ref());
    assert!(entry["reason"].as_str().unwrap().contains("caller_number"));
    assert!(entry["at"].as_u64().unwrap() > 1_600_000_000_000);
    assert_eq!(q.in_flight().await.unwrap(), 0, "acknowledged");
    // Nothing goes to the history of an untrusted user.
    assert!(
        !conn
            .exists::<_, bool>("redswitch_history.o.u")
            .await
            .unwrap()
    );

    // Non-JSON: no dial_id, no publish, still dead-lettered; and the cap.
    for i in 0..7 {
        push_job(
            &mut conn,
            "talkiq-asp.calls",
            format!("not json {i}").as_bytes(),
        )
        .await
        .unwrap();
        let taken = q.take().await.unwrap().unwrap();
        let refused = job::parse(taken.raw()).unwrap_err();
        assert!(refused.dial_id.is_none());
        q.reject(&taken, &refused).await.unwrap();
    }
    let dead: Vec<String> = conn.lrange("talkiq-asp.calls.dead", 0, -1).await.unwrap();
    assert_eq!(dead.len(), 5, "capped");
    let newest: serde_json::Value = serde_json::from_str(&dead[4]).unwrap();
    assert_eq!(newest["job"], "not json 6");
    assert!(newest["reason"].as_str().unwrap().starts_with("not JSON"));
}
