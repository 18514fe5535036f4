//! The queue, the events and the control router on a three-master Redis
//! Cluster: the queue keys share one slot, the event keys do not and still
//! work, pub/sub reaches the router from any node; and the real binary's
//! `push`, `control`, `calls`, `check` and `demo` given one node's URL or
//! the node list.

use redswitch_test_support as support;

use std::time::Duration;

use redis::AsyncCommands;
use redswitch::service::control::{ControlMessage, ControlRouter, RouterConfig};
use redswitch::service::events::{CallEvents, Event, Side};
use redswitch::service::queue::{JobQueue, QueueConfig, push_job};
use redswitch::service::store::RedisClient;
use redswitch::service::validate::Id;
use support::redis_server::{RedisCluster, raw_command};
use tokio_util::sync::CancellationToken;

fn id(s: &str) -> Id {
    Id::parse("test", s).unwrap()
}

#[tokio::test]
async fn queue_events_and_control_work_on_a_cluster() {
    let cluster = RedisCluster::start();
    let client = RedisClient::connect(&cluster.urls(), Duration::from_secs(5))
        .await
        .unwrap();
    assert!(client.is_cluster());
    let mut conn = client.connection().await.unwrap();

    // Queue: the processing list sits in the job list's slot.
    let mut cfg =
        QueueConfig::new("talkiq-asp.calls").with_liveness_ttl(Duration::from_millis(500));
    cfg.instance = "a".into();
    cfg.take_timeout = Duration::from_millis(200);
    let a = JobQueue::open(&client, cfg.clone()).await.unwrap();
    let port = cluster.nodes()[0].port();
    let slot = |key: &str| raw_command(port, &format!("CLUSTER KEYSLOT {key}")).unwrap();
    assert_eq!(slot("talkiq-asp.calls"), slot(&a.keys().processing));
    assert_eq!(slot("talkiq-asp.calls"), slot(&a.keys().alive));

    push_job(&mut conn, "talkiq-asp.calls", b"j1")
        .await
        .unwrap();
    push_job(&mut conn, "talkiq-asp.calls", b"j2")
        .await
        .unwrap();
    let j1 = a.take().await.unwrap().unwrap();
    assert_eq!(j1.raw(), b"j1");
    a.dead_letter(&j1, "testing").await.unwrap();
    let dead: Vec<String> = conn.lrange("talkiq-asp.calls.dead", 0, -1).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(a.take().await.unwrap().unwrap().raw(), b"j2");
    // a dies holding j2; b reaps it.
    tokio::time::sleep(Duration::from_millis(700)).await;
    cfg.instance = "b".into();
    cfg = cfg.with_liveness_ttl(Duration::from_secs(5));
    let b = JobQueue::open(&client, cfg).await.unwrap();
    assert_eq!(b.reap().await.unwrap(), 1);
    let j2 = b.take().await.unwrap().unwrap();
    assert_eq!(j2.raw(), b"j2");
    assert!(b.ack(&j2).await.unwrap());

    // Control: one pub/sub connection on one node; publish through the
    // cluster connection (any node) reaches it.
    let cancel = CancellationToken::new();
    let (router, task) =
        ControlRouter::spawn(client.clone(), RouterConfig::default(), cancel.clone());
    let mut sub = router.subscribe(&id("cdial")).await.unwrap();

    // Events: history and active keys are in different slots.
    let events = CallEvents::new(conn.clone(), &id("cdial"), &id("org"), &id("user"));
    assert_ne!(slot(events.history_key()), slot(events.active_key()));
    events.start_call().await.unwrap();
    events
        .publish(&Event::Answer { side: Side::Caller })
        .await
        .unwrap();
    let history: Vec<String> = conn.lrange(events.history_key(), 0, -1).await.unwrap();
    assert_eq!(history.len(), 2);
    let active: Vec<String> = conn.lrange(events.active_key(), 0, -1).await.unwrap();
    assert_eq!(active, ["ACTIVE.0"]);
    let ttl: i64 = conn.ttl(events.active_key()).await.unwrap();
    assert!(ttl > 0);

    for node in cluster.nodes() {
        // Published on every node in turn: cluster pub/sub is broadcast.
        let reply = raw_command(node.port(), r#"PUBLISH cdial "{\"type\":\"hangup\"}""#).unwrap();
        assert!(reply.starts_with(':'), "{reply}");
        let got = tokio::time::timeout(Duration::from_secs(5), sub.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, Ok(ControlMessage::Hangup));
    }
    drop(sub);
    cancel.cancel();
    task.await.unwrap();
}

/// Runs the real binary with `args` (no configuration from the
/// environment).
async fn redswitch(args: Vec<String>) -> std::process::Output {
    support::bin::run(
        env!("CARGO_BIN_EXE_redswitch"),
        args,
        Duration::from_secs(30),
    )
    .await
}

/// The node (of `cluster`) that owns `key`'s slot: the others answer MOVED.
fn owner(cluster: &RedisCluster, key: &str) -> usize {
    cluster
        .nodes()
        .iter()
        .position(|n| !n.command(&format!("TYPE {key}")).starts_with("-MOVED"))
        .expect("a node owns every slot")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_control_and_calls_work_on_a_cluster_from_one_node_or_a_list() {
    use redswitch::service::agent::Agent;

    let cluster = RedisCluster::start();
    let recordings = tempfile::tempdir().unwrap();
    let media = tempfile::tempdir().unwrap();
    let sim = support::sim_client::quick_sim().await;
    let cancel = CancellationToken::new();
    let config =
        support::stack::agent_config(&cluster.urls(), &sim, recordings.path(), media.path());
    let agent = Agent::start(config, cancel.child_token()).await.unwrap();

    // One node's URL: one that does NOT own the job list's slot, so a plain
    // connection would get MOVED.
    let jobs_owner = owner(&cluster, support::stack::JOBS);
    let one_node = cluster.nodes()[(jobs_owner + 1) % 3].url();
    let list = cluster.urls();
    // Three calls whose active keys land on each of the three masters, so
    // `calls` must scan every one.
    let mut dial_ids = Vec::new();
    for n in 0.. {
        let dial_id = format!("cl-{n}");
        if owner(&cluster, &format!("redswitch.{dial_id}.org1.user1")) == dial_ids.len() {
            dial_ids.push(dial_id);
        }
        if dial_ids.len() == 3 {
            break;
        }
    }
    let mut followers = Vec::new();
    for (i, dial_id) in dial_ids.iter().enumerate() {
        let url = if i % 2 == 0 { &one_node } else { &list };
        let follower = support::stack::Follower::start(&one_node, dial_id).await;
        let out = redswitch(
            [
                "--redis-url",
                url,
                "push",
                "--dial-id",
                dial_id,
                "--org-id",
                "org1",
                "--user-id",
                "user1",
            ]
            .map(String::from)
            .to_vec(),
        )
        .await;
        assert!(
            out.status.success(),
            "push via {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        followers.push(follower);
    }
    for f in &mut followers {
        f.expect_where("answer-event", |v| v["side"] == 0).await;
        f.expect_where("answer-event", |v| v["side"] == 1).await;
    }

    for url in [&one_node, &list] {
        let out = redswitch(
            ["--redis-url", url, "calls", "--json"]
                .map(String::from)
                .to_vec(),
        )
        .await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let listed: Vec<&str> = doc["calls"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["dial_id"].as_str().unwrap())
            .collect();
        let mut expected = dial_ids.clone();
        expected.sort();
        assert_eq!(listed, expected, "calls via {url}");
    }

    for (i, (dial_id, f)) in dial_ids.iter().zip(&mut followers).enumerate() {
        let url = if i % 2 == 0 { &list } else { &one_node };
        let out = redswitch(
            ["--redis-url", url, "control", dial_id, "hangup"]
                .map(String::from)
                .to_vec(),
        )
        .await;
        assert!(
            out.status.success(),
            "control via {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ack: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(ack, serde_json::json!({"type":"ack","event":"hangup"}));
        f.hangups(&[0, 1]).await;
    }
    let out = redswitch(
        ["--redis-url", &list, "calls", "--json"]
            .map(String::from)
            .to_vec(),
    )
    .await;
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc, serde_json::json!({"calls": []}));

    // check and demo through one node.
    let esl_port = sim.esl_addr().port().to_string();
    let out = redswitch(
        ["--redis-url", &one_node, "--esl-port", &esl_port, "check"]
            .map(String::from)
            .to_vec(),
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("redis: ok, Redis") && stdout.contains("(cluster"),
        "{stdout}"
    );
    let out = redswitch(
        ["demo", "--use-redis", &one_node, "--talk-time", "1"]
            .map(String::from)
            .to_vec(),
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("\"type\":\"hangup-event\""), "{stdout}");
    assert!(stdout.contains("demo finished"), "{stdout}");

    cancel.cancel();
    agent.stopped().await;
    sim.shutdown().await;
}
