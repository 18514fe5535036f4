//! The control router against a real redis-server: routing, ignoring our
//! own events, errors, unsubscribe, one connection, reconnects.

use redswitch_test_support as support;

use std::time::Duration;

use redis::AsyncCommands;
use redswitch::backoff::Backoff;
use redswitch::service::control::{
    ControlError, ControlMessage, ControlRouter, Delivery, RouterConfig, RouterError, Subscription,
};
use redswitch::service::store::{RedisClient, RedisConn};
use redswitch::service::validate::Id;
use support::redis_server::RedisServer;
use tokio_util::sync::CancellationToken;

fn id(s: &str) -> Id {
    Id::parse("test", s).unwrap()
}

struct Fixture {
    router: ControlRouter,
    conn: RedisConn,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

async fn fixture(server: &RedisServer, config: RouterConfig) -> Fixture {
    let client = RedisClient::connect(&server.url(), Duration::from_secs(5))
        .await
        .unwrap();
    let conn = client.connection().await.unwrap();
    let cancel = CancellationToken::new();
    let (router, task) = ControlRouter::spawn(client, config, cancel.clone());
    Fixture {
        router,
        conn,
        cancel,
        task,
    }
}

async fn publish(conn: &mut RedisConn, channel: &str, msg: &str) -> usize {
    conn.publish(channel, msg).await.unwrap()
}

async fn recv(sub: &mut Subscription) -> Delivery {
    tokio::time::timeout(Duration::from_secs(5), sub.recv())
        .await
        .expect("a message within 5 s")
        .expect("router running")
}

async fn numsub(conn: &mut RedisConn, channel: &str) -> i64 {
    let (_, n): (String, i64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channel)
        .query_async(conn)
        .await
        .unwrap();
    n
}

#[tokio::test]
async fn routes_each_message_to_its_calls_mailbox() {
    let server = RedisServer::start();
    let mut f = fixture(&server, RouterConfig::default()).await;
    let mut a = f.router.subscribe(&id("call-a")).await.unwrap();
    let mut b = f.router.subscribe(&id("call-b")).await.unwrap();
    assert_eq!(a.dial_id().as_str(), "call-a");

    // Subscribed by the time subscribe() returns.
    assert_eq!(
        publish(&mut f.conn, "call-b", r#"{"type":"hangup"}"#).await,
        1
    );
    publish(&mut f.conn, "call-a", r#"{"type":"mute"}"#).await;
    assert_eq!(recv(&mut b).await, Ok(ControlMessage::Hangup));
    assert_eq!(recv(&mut a).await, Ok(ControlMessage::Mute));

    // Redswitch's own events on the channel are not delivered; the next
    // real control message is.
    publish(&mut f.conn, "call-a", r#"{"type":"answer-event","side":0}"#).await;
    publish(&mut f.conn, "call-a", r#"{"type":"ack","event":"mute"}"#).await;
    publish(
        &mut f.conn,
        "call-a",
        r#"{"type":"error","event":"x","reason":"y"}"#,
    )
    .await;
    publish(&mut f.conn, "call-a", r#"{"type":"threeway"}"#).await;
    assert_eq!(recv(&mut a).await, Ok(ControlMessage::Threeway));

    // Bad messages arrive as errors to answer.
    publish(&mut f.conn, "call-a", "hangup please").await;
    let bad = recv(&mut a).await.unwrap_err();
    assert_eq!(bad.event, None);
    assert!(matches!(bad.error, ControlError::NotJson(_)));
    publish(&mut f.conn, "call-a", r#"{"type":"selfdestruct"}"#).await;
    let bad = recv(&mut a).await.unwrap_err();
    assert_eq!(
        (bad.event.as_deref(), bad.error),
        (Some("selfdestruct"), ControlError::Unknown)
    );
    publish(
        &mut f.conn,
        "call-a",
        r#"{"type":"barge","phone_number":"1555}","caller_id":"1"}"#,
    )
    .await;
    let bad = recv(&mut a).await.unwrap_err();
    assert_eq!(bad.event.as_deref(), Some("barge"));
    assert!(matches!(bad.error, ControlError::Invalid(_)));
    assert_eq!(f.router.calls(), 2);
    f.cancel.cancel();
    f.task.await.unwrap();
}

#[tokio::test]
async fn one_pubsub_connection_for_many_calls_and_drop_unsubscribes() {
    let server = RedisServer::start();
    let mut f = fixture(&server, RouterConfig::default()).await;
    let mut subs = Vec::new();
    for i in 0..50 {
        subs.push(f.router.subscribe(&id(&format!("c{i}"))).await.unwrap());
    }
    let list = server.command("CLIENT LIST TYPE pubsub");
    assert_eq!(list.matches("cmd=").count(), 1, "{list}");
    let channels: Vec<String> = redis::cmd("PUBSUB")
        .arg("CHANNELS")
        .query_async(&mut f.conn)
        .await
        .unwrap();
    assert_eq!(channels.len(), 50);

    let dropped = subs.remove(7);
    assert_eq!(dropped.dial_id().as_str(), "c7");
    dropped.unsubscribe();
    assert_eq!(f.router.calls(), 49);
    let mut conn = f.conn.clone();
    support::eventually("c7 unsubscribed", Duration::from_secs(5), || {
        let mut conn = conn.clone();
        async move { numsub(&mut conn, "c7").await == 0 }
    })
    .await;
    assert_eq!(numsub(&mut conn, "c8").await, 1);
    drop(subs);
    support::eventually("all unsubscribed", Duration::from_secs(5), || {
        let mut conn = conn.clone();
        async move {
            let channels: Vec<String> = redis::cmd("PUBSUB")
                .arg("CHANNELS")
                .query_async(&mut conn)
                .await
                .unwrap();
            channels.is_empty()
        }
    })
    .await;
}

#[tokio::test]
async fn a_dial_id_in_use_is_refused_until_released() {
    let server = RedisServer::start();
    let mut f = fixture(&server, RouterConfig::default()).await;
    let first = f.router.subscribe(&id("dup")).await.unwrap();
    match f.router.subscribe(&id("dup")).await {
        Err(RouterError::InUse(d)) => assert_eq!(d.as_str(), "dup"),
        other => panic!("{other:?}"),
    }
    drop(first);
    // Reused at once: the pending unsubscribe must not undo the new
    // subscription.
    // subscribe() returns after the router handled the earlier unsubscribe.
    let mut second = f.router.subscribe(&id("dup")).await.unwrap();
    assert_eq!(numsub(&mut f.conn, "dup").await, 1);
    publish(&mut f.conn, "dup", r#"{"type":"stop-record"}"#).await;
    assert_eq!(recv(&mut second).await, Ok(ControlMessage::StopRecord));
}

#[tokio::test]
async fn a_full_mailbox_turns_extra_commands_into_errors_and_hangup_jumps_the_queue() {
    let server = RedisServer::start();
    let config = RouterConfig {
        mailbox: 2,
        overflow: 2,
        ..RouterConfig::default()
    };
    let mut f = fixture(&server, config).await;
    let mut sub = f.router.subscribe(&id("slow")).await.unwrap();
    let mut probe = f.router.subscribe(&id("probe")).await.unwrap();
    for t in [
        "mute",
        "whisper",
        "threeway",
        "unthreeway",
        "mute",
        "hangup",
    ] {
        publish(&mut f.conn, "slow", &format!(r#"{{"type":"{t}"}}"#)).await;
    }
    // The router handles messages in order: once the probe has its message,
    // all six were dispatched before the call reads any.
    publish(&mut f.conn, "probe", r#"{"type":"hangup"}"#).await;
    assert_eq!(recv(&mut probe).await, Ok(ControlMessage::Hangup));
    assert_eq!(sub.backlog(), 5);
    assert_eq!(sub.unanswered(), 1);
    assert_eq!(f.router.unanswered(), 1);
    // The hangup, sent last, comes first; then the rest in order.
    assert_eq!(recv(&mut sub).await, Ok(ControlMessage::Hangup));
    assert_eq!(recv(&mut sub).await, Ok(ControlMessage::Mute));
    assert_eq!(recv(&mut sub).await, Ok(ControlMessage::Whisper));
    for t in ["threeway", "unthreeway"] {
        let bad = recv(&mut sub).await.unwrap_err();
        assert_eq!(
            (bad.event.as_deref(), bad.error),
            (Some(t), ControlError::MailboxFull)
        );
    }
    // The fifth command exceeded the overflow cap: counted, not answered.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), sub.recv())
            .await
            .is_err()
    );
    // Reading freed the mailbox: new messages go through again.
    publish(&mut f.conn, "slow", r#"{"type":"mute"}"#).await;
    assert_eq!(recv(&mut sub).await, Ok(ControlMessage::Mute));
}

#[tokio::test]
async fn garbage_spends_its_own_budget_and_never_blocks_commands() {
    let server = RedisServer::start();
    let config = RouterConfig {
        mailbox: 4,
        error_burst: 5,
        errors_per_sec: 0.001,
        ..RouterConfig::default()
    };
    let mut f = fixture(&server, config).await;
    let mut sub = f.router.subscribe(&id("flooded")).await.unwrap();
    for i in 0..100 {
        publish(&mut f.conn, "flooded", &format!("garbage {i}")).await;
    }
    for t in ["mute", "whisper", "threeway", "unthreeway"] {
        publish(&mut f.conn, "flooded", &format!(r#"{{"type":"{t}"}}"#)).await;
    }
    publish(&mut f.conn, "flooded", r#"{"type":"hangup"}"#).await;
    let router = f.router.clone();
    support::eventually("the flood counted", Duration::from_secs(5), || {
        let router = router.clone();
        async move { router.unanswered() == 95 }
    })
    .await;
    assert_eq!(recv(&mut sub).await, Ok(ControlMessage::Hangup));
    let mut errors = 0;
    let mut commands = Vec::new();
    while let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(200), sub.recv()).await {
        match d {
            Ok(c) => commands.push(c),
            Err(bad) => {
                assert!(matches!(bad.error, ControlError::NotJson(_)), "{bad:?}");
                errors += 1;
            }
        }
    }
    assert_eq!(errors, 5, "the error budget");
    assert_eq!(
        commands,
        [
            ControlMessage::Mute,
            ControlMessage::Whisper,
            ControlMessage::Threeway,
            ControlMessage::Unthreeway
        ]
    );
    assert_eq!(sub.unanswered(), 95);
}

#[tokio::test]
async fn resubscribes_every_live_call_after_client_kill() {
    let server = RedisServer::start();
    let config = RouterConfig {
        backoff: Backoff::new(Duration::from_millis(20), Duration::from_secs(1)),
        ..RouterConfig::default()
    };
    let mut f = fixture(&server, config).await;
    let mut a = f.router.subscribe(&id("ka")).await.unwrap();
    let mut b = f.router.subscribe(&id("kb")).await.unwrap();
    assert_eq!(f.router.connects(), 1);

    let killed = server.command("CLIENT KILL TYPE pubsub");
    assert!(killed.starts_with(":1"), "{killed}");
    let router = f.router.clone();
    support::eventually("reconnect", Duration::from_secs(5), || {
        let router = router.clone();
        async move { router.connects() >= 2 }
    })
    .await;
    let conn = f.conn.clone();
    support::eventually("resubscribed", Duration::from_secs(5), || {
        let mut conn = conn.clone();
        async move { numsub(&mut conn, "ka").await == 1 && numsub(&mut conn, "kb").await == 1 }
    })
    .await;
    publish(&mut f.conn, "ka", r#"{"type":"hangup"}"#).await;
    publish(
        &mut f.conn,
        "kb",
        r#"{"type":"send-dtmf","digits":"1#","side":1}"#,
    )
    .await;
    assert_eq!(recv(&mut a).await, Ok(ControlMessage::Hangup));
    assert!(matches!(
        recv(&mut b).await,
        Ok(ControlMessage::SendDtmf { .. })
    ));
}

#[tokio::test]
async fn survives_a_redis_restart_and_subscribes_calls_made_while_down() {
    let mut server = RedisServer::start();
    let config = RouterConfig {
        backoff: Backoff::new(Duration::from_millis(20), Duration::from_millis(200)),
        ..RouterConfig::default()
    };
    let mut f = fixture(&server, config).await;
    let mut before = f.router.subscribe(&id("before")).await.unwrap();

    server.stop();
    let router = f.router.clone();
    // While Redis is down, subscribing still succeeds (the reconnect
    // subscribes it) and does not hang.
    let mut during = tokio::time::timeout(Duration::from_secs(5), router.subscribe(&id("during")))
        .await
        .expect("subscribe does not hang while Redis is down")
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.restart();

    let conn = f.conn.clone();
    support::eventually("both resubscribed", Duration::from_secs(10), || {
        let mut conn = conn.clone();
        async move {
            // The shared connection itself redials after the restart.
            let n: Result<(String, i64, String, i64), _> = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg("before")
                .arg("during")
                .query_async(&mut conn)
                .await;
            matches!(n, Ok((_, 1, _, 1)))
        }
    })
    .await;
    publish(&mut f.conn, "before", r#"{"type":"hangup"}"#).await;
    publish(&mut f.conn, "during", r#"{"type":"record","name":"r1"}"#).await;
    assert_eq!(recv(&mut before).await, Ok(ControlMessage::Hangup));
    assert!(matches!(
        recv(&mut during).await,
        Ok(ControlMessage::Record { .. })
    ));
}

#[tokio::test]
async fn subscribe_after_shutdown_reports_stopped() {
    let server = RedisServer::start();
    let f = fixture(&server, RouterConfig::default()).await;
    f.cancel.cancel();
    f.task.await.unwrap();
    assert!(matches!(
        f.router.subscribe(&id("late")).await,
        Err(RouterError::Stopped)
    ));
    // The failed attempt left nothing behind.
    assert_eq!(f.router.calls(), 0);
}

#[tokio::test]
async fn an_ended_call_lingers_answering_errors_then_yields_its_dial_id() {
    use futures::StreamExt;
    use redswitch::service::events::CallEvents;

    let server = RedisServer::start();
    let mut f = fixture(&server, RouterConfig::default()).await;
    let raw = redis::Client::open(server.url()).unwrap();
    let mut watcher = raw.get_async_pubsub().await.unwrap();
    watcher.subscribe("ended").await.unwrap();
    let mut next_published = async || -> serde_json::Value {
        let msg = tokio::time::timeout(Duration::from_secs(5), watcher.on_message().next())
            .await
            .unwrap()
            .unwrap();
        serde_json::from_slice(msg.get_payload_bytes()).unwrap()
    };

    let sub = f.router.subscribe(&id("ended")).await.unwrap();
    let events = CallEvents::new(f.conn.clone(), &id("ended"), &id("o"), &id("u"));
    let lingering = sub.linger(events, Duration::from_secs(30));

    // A second hangup after the end gets an error, not silence.
    publish(&mut f.conn, "ended", r#"{"type":"hangup"}"#).await;
    assert_eq!(next_published().await["type"], "hangup");
    let answer = next_published().await;
    assert_eq!(
        answer,
        serde_json::json!({"type":"error","event":"hangup","reason":"call has ended"})
    );
    // Its own error is ignored by the router, so no loop.

    // A new call with the same dial_id takes the channel over.
    let mut fresh = f.router.subscribe(&id("ended")).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), lingering)
        .await
        .expect("lingering task ends when taken over")
        .unwrap();
    // Still subscribed: the router's connection plus the watcher.
    assert_eq!(numsub(&mut f.conn, "ended").await, 2);
    publish(&mut f.conn, "ended", r#"{"type":"mute"}"#).await;
    assert_eq!(recv(&mut fresh).await, Ok(ControlMessage::Mute));
}

#[tokio::test]
async fn lingering_ends_and_unsubscribes_after_its_time() {
    use redswitch::service::events::CallEvents;

    let server = RedisServer::start();
    let f = fixture(&server, RouterConfig::default()).await;
    let sub = f.router.subscribe(&id("brief")).await.unwrap();
    let events = CallEvents::new(f.conn.clone(), &id("brief"), &id("o"), &id("u"));
    sub.linger(events, Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(f.router.calls(), 0);
    let conn = f.conn.clone();
    support::eventually("unsubscribed", Duration::from_secs(5), || {
        let mut conn = conn.clone();
        async move { numsub(&mut conn, "brief").await == 0 }
    })
    .await;
}

#[tokio::test]
async fn keepalive_pings_do_not_disturb_the_connection() {
    let server = RedisServer::start();
    let config = RouterConfig {
        ping_every: Duration::from_millis(30),
        ..RouterConfig::default()
    };
    let mut f = fixture(&server, config).await;
    let mut sub = f.router.subscribe(&id("pinged")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(f.router.connects(), 1, "no reconnect caused by pings");
    publish(&mut f.conn, "pinged", r#"{"type":"unthreeway"}"#).await;
    assert_eq!(recv(&mut sub).await, Ok(ControlMessage::Unthreeway));
}
