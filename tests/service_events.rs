//! Published events and the Redis state kept with them, against a real
//! redis-server.

use redswitch_test_support as support;

use std::time::Duration;

use futures::StreamExt;
use redis::AsyncCommands;
use redswitch::service::events::{CallEvents, Event, MediaDoneReason, Side};
use redswitch::service::store::RedisClient;
use redswitch::service::validate::Id;
use support::redis_server::RedisServer;

fn id(s: &str) -> Id {
    Id::parse("test", s).unwrap()
}

async fn setup(server: &RedisServer) -> (RedisClient, redis::aio::PubSub) {
    let client = RedisClient::connect(&server.url(), Duration::from_secs(5))
        .await
        .unwrap();
    let raw = redis::Client::open(server.url()).unwrap();
    let pubsub = raw.get_async_pubsub().await.unwrap();
    (client, pubsub)
}

async fn next(pubsub: &mut redis::aio::PubSub) -> (String, serde_json::Value) {
    let msg = tokio::time::timeout(Duration::from_secs(5), pubsub.on_message().next())
        .await
        .expect("an event within 5 s")
        .expect("pubsub open");
    (
        msg.get_channel_name().to_owned(),
        serde_json::from_slice(msg.get_payload_bytes()).unwrap(),
    )
}

#[tokio::test]
async fn a_call_publishes_keeps_history_and_active_sides() {
    let server = RedisServer::start();
    let (client, mut pubsub) = setup(&server).await;
    pubsub.subscribe("dial1").await.unwrap();
    let mut conn = client.connection().await.unwrap();

    // Leftover history of the user's previous call is deleted at call start.
    conn.rpush::<_, _, ()>("redswitch_history.org1.user1", "old")
        .await
        .unwrap();

    let events = CallEvents::new(conn.clone(), &id("dial1"), &id("org1"), &id("user1"));
    assert_eq!(events.history_key(), "redswitch_history.org1.user1");
    assert_eq!(events.active_key(), "redswitch.dial1.org1.user1");
    events.start_call().await.unwrap();
    let sequence = [
        Event::Answer { side: Side::Caller },
        Event::Answer { side: Side::Callee },
        Event::Dtmf {
            side: Side::Callee,
            digits: "1234#".into(),
        },
        Event::MediaDone {
            side: Side::Caller,
            reason: MediaDoneReason::Done,
        },
    ];
    for e in &sequence {
        events.publish(e).await.unwrap();
    }

    let (channel, first) = next(&mut pubsub).await;
    assert_eq!(channel, "dial1");
    assert_eq!(
        first,
        serde_json::json!({"type":"call-start","dial_id":"dial1"})
    );
    for e in &sequence {
        let (_, got) = next(&mut pubsub).await;
        assert_eq!(got, serde_json::to_value(e).unwrap());
    }

    let active: Vec<String> = conn.lrange(events.active_key(), 0, -1).await.unwrap();
    assert_eq!(active, ["ACTIVE.0", "ACTIVE.1"]);
    let ttl: i64 = conn.ttl(events.active_key()).await.unwrap();
    assert!(ttl > 24 * 3600 - 10 && ttl <= 24 * 3600, "{ttl}");

    let history: Vec<String> = conn.lrange(events.history_key(), 0, -1).await.unwrap();
    assert_eq!(history.len(), 1 + sequence.len(), "old history deleted");
    assert_eq!(history[0], r#"{"type":"call-start","dial_id":"dial1"}"#);
    assert_eq!(history[1], r#"{"type":"answer-event","side":0}"#);
    let ttl: i64 = conn.ttl(events.history_key()).await.unwrap();
    assert!(ttl > 4 * 3600 - 10 && ttl <= 4 * 3600, "{ttl}");

    // Hangups take sides off the active list; the key disappears with the
    // last one.
    events
        .publish(&Event::Hangup {
            side: Side::Callee,
            cause: "NORMAL_CLEARING".into(),
        })
        .await
        .unwrap();
    let active: Vec<String> = conn.lrange(events.active_key(), 0, -1).await.unwrap();
    assert_eq!(active, ["ACTIVE.0"]);
    events
        .publish(&Event::Hangup {
            side: Side::Caller,
            cause: "NORMAL_CLEARING".into(),
        })
        .await
        .unwrap();
    assert!(!conn.exists::<_, bool>(events.active_key()).await.unwrap());
    let (_, hangup) = next(&mut pubsub).await;
    assert_eq!(hangup["type"], "hangup-event");
    assert_eq!(hangup["side"], 1);
    assert_eq!(hangup["cause"], "NORMAL_CLEARING");
    let history: Vec<String> = conn.lrange(events.history_key(), 0, -1).await.unwrap();
    assert_eq!(history.len(), 1 + sequence.len() + 2);
}

#[tokio::test]
async fn server_info_reports_version_and_role() {
    let server = RedisServer::start();
    let (client, _pubsub) = setup(&server).await;
    let info = client.server_info().await.unwrap();
    assert!(info.version.starts_with('7'), "{info}");
    assert_eq!(info.role, "master");
    assert!(!info.cluster);
}

#[tokio::test]
async fn each_event_is_one_script() {
    let server = RedisServer::start();
    let (client, _pubsub) = setup(&server).await;
    let conn = client.connection().await.unwrap();
    let events = CallEvents::new(conn, &id("d"), &id("o"), &id("u"));
    server.command("CONFIG RESETSTAT");
    events
        .publish(&Event::Answer { side: Side::Caller })
        .await
        .unwrap();
    let stats = server.command("INFO commandstats");
    // One script doing every write: the whole event is one round trip
    // and atomic.
    for cmd in ["rpush", "expire", "publish", "hset"] {
        assert!(
            stats.contains(&format!("cmdstat_{cmd}:calls=")),
            "{cmd}: {stats}"
        );
    }
    assert!(stats.contains("cmdstat_eval:calls=1,"), "{stats}");
    assert!(!stats.contains("cmdstat_multi:"), "{stats}");
}

#[tokio::test]
async fn two_users_histories_are_separate_and_a_new_call_resets_only_its_user() {
    let server = RedisServer::start();
    let (client, _pubsub) = setup(&server).await;
    let mut conn = client.connection().await.unwrap();
    let a = CallEvents::new(conn.clone(), &id("d1"), &id("o"), &id("alice"));
    let b = CallEvents::new(conn.clone(), &id("d2"), &id("o"), &id("bob"));
    a.start_call().await.unwrap();
    b.start_call().await.unwrap();
    a.publish(&Event::Failure { cause: "x".into() })
        .await
        .unwrap();
    let a2 = CallEvents::new(conn.clone(), &id("d3"), &id("o"), &id("alice"));
    a2.start_call().await.unwrap();
    let alice: Vec<String> = conn
        .lrange("redswitch_history.o.alice", 0, -1)
        .await
        .unwrap();
    assert_eq!(alice, [r#"{"type":"call-start","dial_id":"d3"}"#]);
    let bob: Vec<String> = conn.lrange("redswitch_history.o.bob", 0, -1).await.unwrap();
    assert_eq!(bob, [r#"{"type":"call-start","dial_id":"d2"}"#]);
}

#[tokio::test]
async fn publishing_recovers_after_redis_restarts() {
    let mut server = RedisServer::start();
    let (client, _pubsub) = setup(&server).await;
    let mut conn = client.connection().await.unwrap();
    let events = CallEvents::new(conn.clone(), &id("d"), &id("o"), &id("u"));
    events.start_call().await.unwrap();
    server.restart();
    // The first command on the dead connection fails; the handle redials.
    let mut ok = false;
    for _ in 0..50 {
        if events
            .publish(&Event::Answer { side: Side::Caller })
            .await
            .is_ok()
        {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "publishing never recovered");
    let active: Vec<String> = conn.lrange(events.active_key(), 0, -1).await.unwrap();
    assert_eq!(active, ["ACTIVE.0"]);
}
