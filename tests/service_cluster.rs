//! The queue, the events and the control router on a three-master Redis
//! Cluster: the queue keys share one slot, the event keys do not and still
//! work, pub/sub reaches the router from any node.

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
