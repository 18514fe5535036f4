//! Redis faults: a restart (same port, with its append-only file) while the
//! agent is idle and in the middle of a call, and replies lost after Redis
//! ran a command. Nothing is lost and nothing is done twice: every `ack`,
//! `call-start` and event reaches the history exactly once, every job's
//! fate is written (the processing list ends empty), no job is dialled
//! twice, no active key or channel is left.

use redswitch_test_support as support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::AsyncCommands;
use redswitch::esl::EventFormat;
use redswitch::service::agent::Agent;
use redswitch::service::events::{CallEvents, Event, Side};
use redswitch::service::queue::{JobQueue, QueueConfig};
use redswitch::service::store::RedisClient;
use redswitch::service::validate::Id;
use redswitch::sim::{SimConfig, Simulator};
use redswitch::switch::{InboundClient, InboundConfig};
use serde_json::{Value, json};
use support::redis_server::RedisServer;
use support::stack::{Follower, JOBS, Stack, agent_config, job};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The whole stack on a Redis that keeps its data across a restart; the
/// simulated phones ring for `ring_time`.
async fn persistent_stack(ring_time: Duration) -> Stack {
    let redis = RedisServer::start_persistent();
    let recordings = tempfile::tempdir().unwrap();
    let media = tempfile::tempdir().unwrap();
    let sim = Simulator::start(SimConfig {
        esl_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        ring_time,
        media_dir: Some(media.path().to_owned()),
        recordings_dir: Some(recordings.path().to_owned()),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let cancel = CancellationToken::new();
    let config = agent_config(&redis.url(), &sim, recordings.path(), media.path());
    let agent = Agent::start(config, cancel.child_token()).await.unwrap();
    Stack {
        redis,
        sim,
        agents: vec![agent],
        cancel,
        recordings,
        media,
    }
}

/// Counts the channels the simulator creates per `redswitch_dial_id`.
#[derive(Clone, Default)]
struct Legs(Arc<Mutex<HashMap<String, usize>>>);

impl Legs {
    async fn watch(stack: &Stack) -> Self {
        let legs = Self::default();
        let (client, mut events) = InboundClient::connect(InboundConfig::new(
            stack.sim.esl_addr().to_string(),
            "ClueCon",
        ))
        .await
        .unwrap();
        client
            .subscribe(EventFormat::Plain, ["CHANNEL_CREATE"])
            .await
            .unwrap();
        let counts = legs.0.clone();
        tokio::spawn(async move {
            let _client = client;
            while let Some(e) = events.recv().await {
                if let Some(dial_id) = e.header("variable_dial_id") {
                    *counts
                        .lock()
                        .unwrap()
                        .entry(dial_id.to_owned())
                        .or_default() += 1;
                }
            }
        });
        legs
    }

    fn of(&self, dial_id: &str) -> usize {
        self.0.lock().unwrap().get(dial_id).copied().unwrap_or(0)
    }
}

/// A job for its own user, so each call has a history of its own.
fn own_job() -> Value {
    let mut j = job("15105625882", "14157697098");
    j["user_id"] = json!(format!("u-{}", uuid::Uuid::new_v4().simple()));
    j
}

fn history_of(j: &Value) -> String {
    format!(
        "redswitch_history.{}.{}",
        j["org_id"].as_str().unwrap(),
        j["user_id"].as_str().unwrap()
    )
}

async fn history(stack: &Stack, j: &Value) -> Vec<Value> {
    stack
        .lrange(&history_of(j))
        .await
        .iter()
        .map(|s| serde_json::from_str(s).unwrap())
        .collect()
}

/// Waits until the history holds an entry matching `check`.
async fn history_has(stack: &Stack, j: &Value, what: &str, check: impl Fn(&Value) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if history(stack, j).await.iter().any(&check) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {what} in {}: {:#?}",
            history_of(j),
            history(stack, j).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A fresh follower on `dial_id`, once the agent's router has subscribed
/// it again (after a restart every subscriber has to).
async fn follow_again(stack: &Stack, dial_id: &str) -> Follower {
    let f = Follower::start(&stack.redis.url(), dial_id).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut con = stack.redis().await;
        let (_, n): (String, i64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(dial_id)
            .query_async(&mut con)
            .await
            .unwrap();
        if n >= 2 {
            return f;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the agent did not subscribe {dial_id} again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Hangs the call up by control and checks its one `ack`.
async fn hang_up(stack: &Stack, f: &mut Follower) {
    stack
        .publish(&f.dial_id.clone(), r#"{"type":"hangup"}"#)
        .await;
    let answer = f.answer(Some("hangup")).await;
    assert_eq!(answer["type"], "ack", "{answer}");
    f.hangups(&[0, 1]).await;
}

/// The call's history, complete and in order, each event once.
async fn complete_history(stack: &Stack, j: &Value) {
    history_has(stack, j, "both hangup-events", |v| {
        v["type"] == "hangup-event" && v["side"] == 1
    })
    .await;
    history_has(stack, j, "both hangup-events", |v| {
        v["type"] == "hangup-event" && v["side"] == 0
    })
    .await;
    let kinds: Vec<String> = history(stack, j)
        .await
        .iter()
        .map(|v| match v["side"].as_u64() {
            Some(side) => format!("{}:{side}", v["type"].as_str().unwrap()),
            None => v["type"].as_str().unwrap().to_owned(),
        })
        .collect();
    assert_eq!(
        kinds[..4],
        ["call-start", "answer-event:0", "answer-event:1", "ack"],
        "{kinds:?}"
    );
    let mut ends = kinds[4..].to_vec();
    ends.sort();
    assert_eq!(ends, ["hangup-event:0", "hangup-event:1"], "{kinds:?}");
}

/// What every case ends with: fates written, nothing dialled twice, no
/// active key, no channel.
async fn nothing_left(stack: &Stack, legs: &Legs, jobs: &[&Value]) {
    for j in jobs {
        let dial_id = j["dial_id"].as_str().unwrap();
        assert_eq!(legs.of(dial_id), 2, "legs of {dial_id}");
    }
    let processing = format!("{{{JOBS}}}.processing.{}", stack.agents[0].instance);
    let mut con = stack.redis().await;
    support::eventually("empty processing list", Duration::from_secs(10), || {
        let mut con = con.clone();
        let processing = processing.clone();
        async move { con.llen::<_, usize>(&processing).await.unwrap() == 0 }
    })
    .await;
    let active: Vec<String> = con.keys("redswitch.*").await.unwrap();
    assert!(active.is_empty(), "active keys left: {active:?}");
    let dead: usize = con.llen(format!("{JOBS}.dead")).await.unwrap();
    assert_eq!(dead, 0);
    let sim = &stack.sim;
    support::eventually("no channel left", Duration::from_secs(10), || async {
        sim.channels().is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_while_idle_loses_no_call_start_ack_or_fate() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let mut stack = persistent_stack(Duration::from_millis(50)).await;
        let legs = Legs::watch(&stack).await;
        let first = own_job();
        let mut f = stack.push(&first).await;
        f.expect_where("answer-event", |v| v["side"] == 1).await;

        // A restart with nothing going on: the agent's connections all
        // break, and the first command on each must still go through.
        stack.redis.restart();
        let back = std::time::Instant::now();
        let second = own_job();
        let mut g = stack.push(&second).await;
        g.expect("call-start").await;
        eprintln!("call-start {:?} after Redis was back", back.elapsed());
        g.expect_where("answer-event", |v| v["side"] == 1).await;

        stack.redis.restart();
        let back = std::time::Instant::now();
        let mut f = follow_again(&stack, first["dial_id"].as_str().unwrap()).await;
        eprintln!(
            "control resubscribed {:?} after Redis was back",
            back.elapsed()
        );
        hang_up(&stack, &mut f).await;
        let mut g = follow_again(&stack, second["dial_id"].as_str().unwrap()).await;
        hang_up(&stack, &mut g).await;

        for j in [&first, &second] {
            complete_history(&stack, j).await;
        }
        nothing_left(&stack, &legs, &[&first, &second]).await;
        stack.stop().await;
    })
    .await
    .expect("the case ends within 2 minutes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_in_the_middle_of_a_call_loses_nothing() {
    tokio::time::timeout(Duration::from_secs(120), async {
        // Each phone rings 1.5 s (under the 2 s ring timeout): the
        // answers and the bridge happen while Redis is down.
        let mut stack = persistent_stack(Duration::from_millis(1500)).await;
        let legs = Legs::watch(&stack).await;
        let j = own_job();
        let dial_id = j["dial_id"].as_str().unwrap().to_owned();
        let f = stack.push(&j).await;
        history_has(&stack, &j, "call-start", |v| v["type"] == "call-start").await;
        drop(f);

        stack.redis.stop();
        tokio::time::sleep(Duration::from_secs(3)).await;
        stack.redis.restart();
        let back = std::time::Instant::now();

        history_has(&stack, &j, "the caller's answer", |v| {
            v["type"] == "answer-event" && v["side"] == 0
        })
        .await;
        eprintln!(
            "answer-event written {:?} after Redis was back",
            back.elapsed()
        );
        stack
            .wait_leg(&dial_id, 0, "bridged", |c| c.bridged_to.is_some())
            .await;
        history_has(&stack, &j, "the callee's answer", |v| {
            v["type"] == "answer-event" && v["side"] == 1
        })
        .await;
        let mut f = follow_again(&stack, &dial_id).await;
        hang_up(&stack, &mut f).await;
        complete_history(&stack, &j).await;
        nothing_left(&stack, &legs, &[&j]).await;
        stack.stop().await;
    })
    .await
    .expect("the case ends within 2 minutes");
}

/// A TCP proxy in front of Redis that, when armed, closes the connection
/// instead of passing on the next reply: Redis ran the command, the client
/// never hears so (a connection that broke at the worst moment).
struct LosesReplies {
    port: u16,
    armed: Arc<AtomicBool>,
}

impl LosesReplies {
    async fn start(redis_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let armed = Arc::new(AtomicBool::new(false));
        let arm = armed.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", redis_port)).await else {
                    continue;
                };
                let (mut client_rd, mut client_wr) = client.into_split();
                let (mut server_rd, mut server_wr) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut client_rd, &mut server_wr).await;
                });
                let arm = arm.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        match server_rd.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if arm.swap(false, Ordering::SeqCst) {
                                    // Dropping both halves closes the
                                    // client's connection.
                                    return;
                                }
                                if client_wr.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        Self { port, armed }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn lose_next_reply(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_reply_does_not_repeat_or_strand_anything() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let server = RedisServer::start();
        let proxy = LosesReplies::start(server.port()).await;
        let client = RedisClient::connect(&proxy.url(), Duration::from_secs(5))
            .await
            .unwrap();
        let direct = redis::Client::open(server.url()).unwrap();
        let mut con = direct.get_multiplexed_async_connection().await.unwrap();
        let queue = JobQueue::open(&client, QueueConfig::new("lost.jobs"))
            .await
            .unwrap();
        let processing = queue.keys().processing.clone();
        for n in 1..=3 {
            con.rpush::<_, _, ()>("lost.jobs", format!("job-{n}"))
                .await
                .unwrap();
        }

        // take: BLMOVE ran, its reply was lost. The retry takes that job,
        // not the next one, and leaves nothing stranded.
        proxy.lose_next_reply();
        let taken = queue.take().await.unwrap().expect("a job");
        assert_eq!(taken.raw(), b"job-1");
        let listed: Vec<String> = con.lrange(&processing, 0, -1).await.unwrap();
        assert_eq!(listed, ["job-1"]);

        // ack: LREM ran, its reply was lost.
        proxy.lose_next_reply();
        assert!(queue.ack(&taken).await.unwrap());
        assert_eq!(con.llen::<_, usize>(&processing).await.unwrap(), 0);

        // give_back: the job goes back once.
        let taken = queue.take().await.unwrap().expect("a job");
        assert_eq!(taken.raw(), b"job-2");
        proxy.lose_next_reply();
        queue.give_back(&taken).await.unwrap();
        let waiting: Vec<String> = con.lrange("lost.jobs", 0, -1).await.unwrap();
        assert_eq!(waiting, ["job-2", "job-3"]);

        // dead_letter: one entry.
        let taken = queue.take().await.unwrap().expect("a job");
        proxy.lose_next_reply();
        queue.dead_letter(&taken, "bad").await.unwrap();
        assert_eq!(con.llen::<_, usize>("lost.jobs.dead").await.unwrap(), 1);
        assert_eq!(con.llen::<_, usize>(&processing).await.unwrap(), 0);

        // An event: published and kept in the history once.
        let mut watcher = direct.get_async_pubsub().await.unwrap();
        watcher.subscribe("lost-call").await.unwrap();
        let id = |s| Id::parse("t", s).unwrap();
        let conn = client.connection().await.unwrap();
        let events = CallEvents::new(conn, &id("lost-call"), &id("o"), &id("u"));
        proxy.lose_next_reply();
        events.start_call().await.unwrap();
        proxy.lose_next_reply();
        events
            .publish(&Event::Answer { side: Side::Caller })
            .await
            .unwrap();
        // A caller keeping an event to write again later (an outbox)
        // writes it once however often it tries.
        let kept = events.numbered(Event::Answer { side: Side::Callee });
        events.write(&kept).await.unwrap();
        events.write(&kept).await.unwrap();
        let history: Vec<String> = con.lrange("redswitch_history.o.u", 0, -1).await.unwrap();
        assert_eq!(history.len(), 3, "{history:?}");
        let active: Vec<String> = con.lrange("redswitch.lost-call.o.u", 0, -1).await.unwrap();
        assert_eq!(active, ["ACTIVE.0", "ACTIVE.1"]);
        let mut published = 0;
        {
            use futures::StreamExt;
            let mut messages = watcher.on_message();
            while tokio::time::timeout(Duration::from_millis(500), messages.next())
                .await
                .is_ok_and(|m| m.is_some())
            {
                published += 1;
            }
        }
        assert_eq!(published, 3);
    })
    .await
    .expect("the case ends within a minute");
}
