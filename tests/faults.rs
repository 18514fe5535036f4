//! The fault suite: the real `redswitch serve` binary (so SIGKILL and
//! SIGTERM are real signals) against a real redis-server and the
//! simulator, with faults injected while calls are live.
//!
//! Every case ends with the same checks:
//! - every job was dialled at most once: the simulator created at most one
//!   leg per side of each `dial_id` (watched while the test runs), and its
//!   session count is exactly the legs expected;
//! - each call's events are complete and in order in the user's history;
//! - no active-call key and no claim is left in Redis;
//! - no channel is left in the simulator (`show channels count`).

use redswitch_test_support as support;

use redis::AsyncCommands;
use redswitch::sim::SimHandle;
use redswitch::switch::{InboundClient, InboundConfig};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::eventually;
use support::redis_server::RedisServer;
use tokio::process::{Child, Command};

const JOBS: &str = "talkiq-asp.calls";
const INSTANCES: &str = "{talkiq-asp.calls}.instances";
/// Rings briefly, answers, stays up until hung up.
const CALLER: &str = "15105625882";
const CALLEE: &str = "14157697098";
/// Answers, then the far end hangs up after 2 s.
const CALLEE_HANGS_UP: &str = "15554871234";

/// Every leg seen: `(dial_id, side)` → its uuids.
type Legs = BTreeMap<(String, String), BTreeSet<String>>;

/// The simulator, restartable, with a watcher that records every leg it
/// ever shows: `(dial_id, side)` → uuids.
struct Switch {
    sim: Arc<Mutex<SimHandle>>,
    legs: Arc<Mutex<Legs>>,
    /// Sessions of simulators already restarted.
    earlier_sessions: u64,
    watcher: tokio::task::JoinHandle<()>,
}

impl Switch {
    async fn start(watch_every: Duration) -> Self {
        let sim = support::sim_client::quick_sim().await;
        let sim = Arc::new(Mutex::new(sim));
        let legs = Arc::new(Mutex::new(BTreeMap::new()));
        let watcher = {
            let (sim, legs) = (sim.clone(), legs.clone());
            tokio::spawn(async move {
                loop {
                    let channels = sim.lock().unwrap().channels();
                    {
                        let mut legs = legs.lock().unwrap();
                        for c in channels {
                            let dial_id = c.variables.get("dial_id").cloned();
                            let side = c.variables.get("redswitch_side").cloned();
                            if let (Some(d), Some(s)) = (dial_id, side) {
                                legs.entry((d, s))
                                    .or_insert_with(BTreeSet::new)
                                    .insert(c.uuid);
                            }
                        }
                    }
                    tokio::time::sleep(watch_every).await;
                }
            })
        };
        Self {
            sim,
            legs,
            earlier_sessions: 0,
            watcher,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.sim.lock().unwrap().esl_addr()
    }

    /// Runs an API command on the simulator's event socket.
    async fn api(&self, cmd: &str) -> String {
        let mut esl = InboundConfig::new(self.addr().to_string(), "ClueCon");
        esl.reconnect.max_attempts = Some(0);
        let (client, _events) = InboundClient::connect(esl).await.unwrap();
        let reply = client.api(cmd).await.unwrap_or_else(|e| e.to_string());
        let _ = client.close().await;
        reply
    }

    /// Sessions created by every simulator this test ran.
    async fn sessions(&self) -> u64 {
        let status = self.api("status").await;
        let now: u64 = status
            .lines()
            .find_map(|l| l.strip_suffix(" session(s) since startup"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no session count in {status:?}"));
        self.earlier_sessions + now
    }

    async fn restart(&mut self) {
        self.earlier_sessions = self.sessions().await;
        let old = self.sim.lock().unwrap().clone();
        let new = old.restart().await.unwrap();
        *self.sim.lock().unwrap() = new;
    }

    /// The live leg of `side` of `dial_id`.
    fn leg(&self, dial_id: &str, side: u8) -> Option<String> {
        let side = side.to_string();
        self.sim
            .lock()
            .unwrap()
            .channels()
            .into_iter()
            .find(|c| {
                c.variables.get("dial_id").map(String::as_str) == Some(dial_id)
                    && c.variables.get("redswitch_side") == Some(&side)
                    && c.hangup_cause.is_none()
            })
            .map(|c| c.uuid)
    }

    async fn wait_bridged(&self, dial_id: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let channels = self.sim.lock().unwrap().channels();
            let mine: Vec<_> = channels
                .into_iter()
                .filter(|c| c.variables.get("dial_id").map(String::as_str) == Some(dial_id))
                .collect();
            if mine.iter().any(|c| c.bridged_to.is_some()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{dial_id} never bridged: {mine:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

/// One `redswitch serve` process.
struct AgentProcess {
    child: Child,
    log: std::path::PathBuf,
}

impl AgentProcess {
    fn pid(&self) -> i32 {
        i32::try_from(self.child.id().expect("running")).unwrap()
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill({signal})");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the process to exit; returns its exit code and when.
    async fn exited(&mut self, within: Duration) -> (i32, Instant) {
        let status = tokio::time::timeout(within, self.child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!("agent still running after {within:?}; log:\n{}", self.log())
            })
            .unwrap();
        (status.code().unwrap_or(-1), Instant::now())
    }
}

struct Fault {
    redis: RedisServer,
    switch: Switch,
    dir: tempfile::TempDir,
    agents: Vec<AgentProcess>,
    /// Every job pushed: dial_id → user_id.
    jobs: BTreeMap<String, String>,
}

impl Fault {
    async fn start(watch_every: Duration) -> Self {
        // Persistent, as in production: a restarted Redis keeps its data.
        let redis = RedisServer::start_persistent();
        Self {
            redis,
            switch: Switch::start(watch_every).await,
            dir: tempfile::tempdir().unwrap(),
            agents: Vec::new(),
            jobs: BTreeMap::new(),
        }
    }

    async fn redis(&self) -> redis::aio::MultiplexedConnection {
        // Generous timeouts: the machine is loaded during the burst.
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(20)))
            .set_response_timeout(Some(Duration::from_secs(20)));
        redis::Client::open(self.redis.url())
            .unwrap()
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .unwrap()
    }

    async fn instances(&self) -> BTreeSet<String> {
        self.redis().await.smembers(INSTANCES).await.unwrap()
    }

    /// Starts an agent process and waits until it registered; returns its
    /// instance id.
    async fn add_agent(&mut self, drain_timeout: &str) -> String {
        let before = self.instances().await;
        let log = self
            .dir
            .path()
            .join(format!("agent{}.log", self.agents.len()));
        let child = Command::new(env!("CARGO_BIN_EXE_redswitch"))
            .args([
                "serve",
                "--esl-host",
                &self.switch.addr().to_string(),
                "--redis-url",
                &self.redis.url(),
                "--listen",
                "127.0.0.1:0",
                "--drain-timeout",
                drain_timeout,
                "--recordings-dir",
                &self.dir.path().to_string_lossy(),
                "--media-dir",
                &self.dir.path().to_string_lossy(),
            ])
            .env("RUST_LOG", "redswitch=info")
            .env_remove("PUBSUB_REDIS_URL")
            .env_remove("ESL_URL")
            .env_remove("ESL_PORT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn redswitch serve");
        self.agents.push(AgentProcess { child, log });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let new = &self.instances().await - &before;
            if let Some(id) = new.into_iter().next() {
                return id;
            }
            assert!(
                Instant::now() < deadline,
                "agent never registered: {}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Pushes a job for a fresh dial_id and user; returns the dial_id.
    async fn push(&mut self, callee: &str) -> String {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let dial_id = format!("d-{id}");
        let user = format!("u-{id}");
        let job = job(&dial_id, &user, callee);
        let _: () = self
            .redis()
            .await
            .rpush(JOBS, job.to_string())
            .await
            .unwrap();
        self.jobs.insert(dial_id.clone(), user);
        dial_id
    }

    async fn history(&self, dial_id: &str) -> Vec<Value> {
        let user = &self.jobs[dial_id];
        let items: Vec<String> = self
            .redis()
            .await
            .lrange(format!("redswitch_history.org.{user}"), 0, -1)
            .await
            .unwrap_or_default();
        items
            .iter()
            .map(|s| serde_json::from_str(s).unwrap())
            .collect()
    }

    /// Polls `dial_id`'s history until `done` holds; after `within`, fails
    /// with `what` went wrong, the history and the agents' logs.
    async fn wait_history(
        &self,
        dial_id: &str,
        within: Duration,
        what: &str,
        done: impl Fn(&[Value]) -> bool,
    ) {
        let deadline = Instant::now() + within;
        loop {
            let history = self.history(dial_id).await;
            if done(&history) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{dial_id}: {what}: {history:#?}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `dial_id`'s history holds `event`.
    async fn wait_event(&self, dial_id: &str, what: &str, check: impl Fn(&Value) -> bool) {
        let what = format!("no {what} in the history");
        self.wait_history(dial_id, Duration::from_secs(60), &what, |h| {
            h.iter().any(&check)
        })
        .await;
    }

    async fn wait_answered(&self, dial_id: &str) {
        self.wait_event(dial_id, "answer of side 1", |v| {
            v["type"] == "answer-event" && v["side"] == 1
        })
        .await;
        self.switch.wait_bridged(dial_id).await;
    }

    /// Waits until the call has ended in the history (both hangup-events).
    async fn wait_ended(&self, dial_id: &str, within: Duration) {
        self.wait_history(dial_id, within, "did not end", |h| {
            check_history(dial_id, h).is_ok()
        })
        .await;
    }

    async fn publish(&self, dial_id: &str, msg: &str) {
        let _: () = self.redis().await.publish(dial_id, msg).await.unwrap();
    }

    fn logs(&self) -> String {
        self.agents
            .iter()
            .enumerate()
            .map(|(i, a)| format!("--- agent {i} log:\n{}", a.log()))
            .collect()
    }

    /// The checks every case ends with, for the jobs that were dialled.
    async fn assert_clean(&self, dialled: &BTreeSet<String>) {
        for dial_id in dialled {
            self.wait_ended(dial_id, Duration::from_secs(60)).await;
        }
        let legs = self.switch.legs.lock().unwrap().clone();
        for ((dial_id, side), uuids) in &legs {
            assert!(
                uuids.len() <= 1,
                "{dial_id} side {side} dialled {} times",
                uuids.len()
            );
        }
        for dial_id in dialled {
            for side in ["0", "1"] {
                assert!(
                    legs.contains_key(&(dial_id.clone(), side.to_owned())),
                    "{dial_id} side {side} never seen"
                );
            }
        }
        let expected = 2 * dialled.len() as u64;
        assert_eq!(
            self.switch.sessions().await,
            expected,
            "sessions: two legs per job, each dialled once"
        );
        let mut conn = self.redis().await;
        for (what, pattern) in [
            ("no active key left", "redswitch.*"),
            ("no claim left", "{talkiq-asp.calls}.claim.*"),
        ] {
            eventually(what, Duration::from_secs(30), || {
                let mut conn = conn.clone();
                async move {
                    let keys: Vec<String> = conn.keys(pattern).await.unwrap();
                    keys.is_empty()
                }
            })
            .await;
        }
        let processing: Vec<String> = conn.keys("{talkiq-asp.calls}.processing.*").await.unwrap();
        for key in processing {
            let n: usize = conn.llen(&key).await.unwrap();
            assert_eq!(n, 0, "{key} still holds jobs");
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let count = self.switch.api("show channels count").await;
            if count.trim() == "0 total." {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "channels left: {count}: {:#?}",
                self.switch.sim.lock().unwrap().channels()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn job(dial_id: &str, user: &str, callee: &str) -> Value {
    json!({
        "type": "asp-call",
        "call_provider": "talk_call_provider",
        "callee_number": callee,
        "caller_id_lega": "15550000001",
        "caller_id_legb": "15550000002",
        "caller_number": CALLER,
        "dial_id": dial_id,
        "org_id": "org",
        "user_id": user,
    })
}

/// A two-party call's history, complete and in order: `call-start` first
/// and once; for sides 0 and 1 exactly one `hangup-event`, after that
/// side's `answer-event` (at most one); answers and control replies
/// anywhere after `call-start`; nothing else.
fn check_history(dial_id: &str, history: &[Value]) -> Result<(), String> {
    let kinds: Vec<String> = history
        .iter()
        .map(|v| format!("{}{}", v["type"].as_str().unwrap_or("?"), v["side"]))
        .collect();
    let fail = |why: &str| Err(format!("{why}: {kinds:?}"));
    match history.first() {
        Some(v) if v["type"] == "call-start" && v["dial_id"] == dial_id => {}
        _ => return fail("not starting with call-start"),
    }
    if history.iter().filter(|v| v["type"] == "call-start").count() != 1 {
        return fail("call-start more than once");
    }
    for side in [0, 1] {
        let at = |kind: &str| -> Vec<usize> {
            history
                .iter()
                .enumerate()
                .filter(|(_, v)| v["type"] == kind && v["side"] == side)
                .map(|(i, _)| i)
                .collect()
        };
        let (answers, hangups) = (at("answer-event"), at("hangup-event"));
        if hangups.len() != 1 {
            return fail(&format!("side {side}: {} hangup-events", hangups.len()));
        }
        if answers.len() > 1 || answers.first().is_some_and(|a| *a > hangups[0]) {
            return fail(&format!("side {side}: answers {answers:?}"));
        }
    }
    let known = ["call-start", "answer-event", "hangup-event", "ack", "error"];
    if let Some(v) = history
        .iter()
        .find(|v| !known.contains(&v["type"].as_str().unwrap_or("")))
    {
        return fail(&format!("unexpected {v}"));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_while_a_call_ends_loses_nothing() {
    let mut f = Fault::start(Duration::from_millis(20)).await;
    f.add_agent("10m").await;
    let dial_id = f.push(CALLEE).await;
    f.wait_answered(&dial_id).await;
    let callee = f.switch.leg(&dial_id, 1).expect("callee leg");

    // Redis goes away; the callee hangs up meanwhile, so both
    // hangup-events are produced while nothing can be written.
    f.redis.stop();
    f.switch
        .api(&format!("uuid_kill {callee} NORMAL_CLEARING"))
        .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(f.switch.api("show channels count").await.trim(), "0 total.");

    let back = Instant::now();
    f.redis.restart();
    f.wait_ended(&dial_id, Duration::from_secs(30)).await;
    eprintln!(
        "history complete {:?} after Redis came back",
        back.elapsed()
    );

    // Exactly what it would have been without the outage.
    let history = f.history(&dial_id).await;
    let kinds: Vec<(String, Value)> = history
        .iter()
        .map(|v| (v["type"].as_str().unwrap().to_owned(), v["side"].clone()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("call-start".to_owned(), Value::Null),
            ("answer-event".to_owned(), json!(0)),
            ("answer-event".to_owned(), json!(1)),
            ("hangup-event".to_owned(), json!(1)),
            ("hangup-event".to_owned(), json!(0)),
        ],
        "{history:#?}"
    );
    f.assert_clean(&BTreeSet::from([dial_id])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_live_calls_and_queued_jobs_is_closed_out_by_the_survivor() {
    let mut f = Fault::start(Duration::from_millis(20)).await;
    let doomed = f.add_agent("10m").await;
    let mut live = Vec::new();
    for _ in 0..3 {
        live.push(f.push(CALLEE).await);
    }
    for dial_id in &live {
        f.wait_answered(dial_id).await;
    }
    let survivor = f.add_agent("10m").await;
    // A job the doomed instance took but had not claimed yet (as if it
    // died between taking and dialling).
    let untouched = {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let dial_id = format!("d-{id}");
        let user = format!("u-{id}");
        let raw = job(&dial_id, &user, CALLEE).to_string();
        let _: () = f
            .redis()
            .await
            .rpush(format!("{{{JOBS}}}.processing.{doomed}"), raw)
            .await
            .unwrap();
        f.jobs.insert(dial_id.clone(), user);
        dial_id
    };

    let killed = Instant::now();
    f.agents[0].signal(libc::SIGKILL);
    f.agents[0].exited(Duration::from_secs(10)).await;
    // Queued after the death: only the survivor can take them.
    let mut queued = Vec::new();
    for _ in 0..2 {
        queued.push(f.push(CALLEE).await);
    }

    // The survivor finds the doomed instance dead, ends its calls with a
    // hangup-event per side, and redoes the job it never dialled.
    for dial_id in &live {
        f.wait_ended(dial_id, Duration::from_secs(60)).await;
        let history = f.history(dial_id).await;
        assert!(
            history
                .iter()
                .any(|v| v["type"] == "hangup-event" && v["cause"] == "MANAGER_REQUEST"),
            "{history:#?}"
        );
    }
    eprintln!(
        "dead instance's calls closed out {:?} after SIGKILL",
        killed.elapsed()
    );
    eventually(
        "the dead instance forgotten",
        Duration::from_secs(30),
        || async { !f.instances().await.contains(&doomed) },
    )
    .await;
    assert!(f.instances().await.contains(&survivor));
    for dial_id in queued.iter().chain([&untouched]) {
        f.wait_answered(dial_id).await;
        f.publish(dial_id, r#"{"type":"hangup"}"#).await;
    }
    let all: BTreeSet<String> = f.jobs.keys().cloned().collect();
    f.assert_clean(&all).await;
    let log = f.agents[1].log();
    assert!(log.contains("closed out a dead instance's call"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_live_calls_then_exits() {
    let mut f = Fault::start(Duration::from_millis(20)).await;
    f.add_agent("10m").await;
    let a = f.push(CALLEE).await;
    let b = f.push(CALLEE).await;
    f.wait_answered(&a).await;
    f.wait_answered(&b).await;

    f.agents[0].signal(libc::SIGTERM);
    // Once the signal is handled, no job is taken any more.
    eventually("SIGTERM handled", Duration::from_secs(10), || {
        std::future::ready(f.agents[0].log().contains("stopping: no new jobs"))
    })
    .await;
    let waiting = f.push(CALLEE).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let queued: Vec<String> = f.redis().await.lrange(JOBS, 0, -1).await.unwrap();
    assert_eq!(queued.len(), 1, "the job pushed after SIGTERM waits");
    assert!(
        f.agents[0].child.try_wait().unwrap().is_none(),
        "still draining"
    );

    // Control still works while draining: a hangup is answered and done.
    f.publish(&a, r#"{"type":"hangup"}"#).await;
    f.wait_ended(&a, Duration::from_secs(30)).await;
    assert!(
        f.history(&a)
            .await
            .iter()
            .any(|v| v["type"] == "ack" && v["event"] == "hangup")
    );
    assert!(f.agents[0].child.try_wait().unwrap().is_none(), "b is live");

    f.publish(&b, r#"{"type":"hangup"}"#).await;
    f.wait_ended(&b, Duration::from_secs(30)).await;
    let ended = Instant::now();
    let (code, exited) = f.agents[0].exited(Duration::from_secs(10)).await;
    assert_eq!(code, 0, "{}", f.logs());
    let after = exited.saturating_duration_since(ended);
    eprintln!("exited {after:?} after the last call ended");
    assert!(after < Duration::from_secs(5), "exit took {after:?}");

    f.jobs.remove(&waiting);
    let _: () = f.redis().await.del(JOBS).await.unwrap();
    f.assert_clean(&BTreeSet::from([a, b])).await;
    assert!(
        !f.switch
            .legs
            .lock()
            .unwrap()
            .keys()
            .any(|(d, _)| *d == waiting)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_past_the_drain_timeout_or_twice_hangs_up_with_events() {
    let mut f = Fault::start(Duration::from_millis(20)).await;
    // A short drain timeout: the call is hung up when it runs out.
    f.add_agent("2s").await;
    let a = f.push(CALLEE).await;
    f.wait_answered(&a).await;
    let signalled = Instant::now();
    f.agents[0].signal(libc::SIGTERM);
    let (code, exited) = f.agents[0].exited(Duration::from_secs(20)).await;
    assert_eq!(code, 0, "{}", f.logs());
    eprintln!(
        "drain timeout 2 s: exited {:?} after SIGTERM",
        exited - signalled
    );

    // A second SIGTERM hangs up at once, whatever the drain timeout.
    f.add_agent("10m").await;
    let b = f.push(CALLEE).await;
    f.wait_answered(&b).await;
    f.agents[1].signal(libc::SIGTERM);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = Instant::now();
    f.agents[1].signal(libc::SIGTERM);
    let (code, exited) = f.agents[1].exited(Duration::from_secs(20)).await;
    assert_eq!(code, 0, "{}", f.logs());
    eprintln!("second SIGTERM: exited {:?} after it", exited - second);
    for dial_id in [&a, &b] {
        let history = f.history(dial_id).await;
        assert!(
            history
                .iter()
                .any(|v| v["type"] == "hangup-event" && v["cause"] == "MANAGER_REQUEST"),
            "{dial_id}: {history:#?}\n{}",
            f.logs()
        );
    }
    f.assert_clean(&BTreeSet::from([a, b])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulator_restart_with_live_calls_ends_them_and_work_resumes() {
    let mut f = Fault::start(Duration::from_millis(20)).await;
    f.add_agent("10m").await;
    let a = f.push(CALLEE).await;
    let b = f.push(CALLEE).await;
    f.wait_answered(&a).await;
    f.wait_answered(&b).await;

    let restarted = Instant::now();
    f.switch.restart().await;
    f.wait_ended(&a, Duration::from_secs(30)).await;
    f.wait_ended(&b, Duration::from_secs(30)).await;
    eprintln!("calls ended {:?} after the restart", restarted.elapsed());

    let c = f.push(CALLEE).await;
    f.wait_answered(&c).await;
    eprintln!("new call up {:?} after the restart", restarted.elapsed());
    f.publish(&c, r#"{"type":"hangup"}"#).await;
    f.assert_clean(&BTreeSet::from([a, b, c])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_2000_jobs_dials_each_once_with_complete_histories() {
    const N: usize = 2000;
    // Watching thousands of channels is costly; legs live over 2 s.
    let mut f = Fault::start(Duration::from_millis(250)).await;
    f.add_agent("10m").await;
    let mut pipe = redis::pipe();
    let mut dialled = BTreeSet::new();
    for _ in 0..N {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let (dial_id, user) = (format!("d-{id}"), format!("u-{id}"));
        pipe.rpush(JOBS, job(&dial_id, &user, CALLEE_HANGS_UP).to_string())
            .ignore();
        f.jobs.insert(dial_id.clone(), user);
        dialled.insert(dial_id);
    }
    let started = Instant::now();
    let _: () = pipe.query_async(&mut f.redis().await).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(400);
    let mut pending: Vec<String> = dialled.iter().cloned().collect();
    let mut conn = f.redis().await;
    while !pending.is_empty() {
        let mut still = Vec::new();
        for chunk in pending.chunks(250) {
            let mut pipe = redis::pipe();
            for dial_id in chunk {
                pipe.lrange(format!("redswitch_history.org.{}", f.jobs[dial_id]), 0, -1);
            }
            let histories: Vec<Vec<String>> = pipe.query_async(&mut conn).await.unwrap();
            for (dial_id, history) in chunk.iter().zip(histories) {
                let history: Vec<Value> = history
                    .iter()
                    .map(|s| serde_json::from_str(s).unwrap())
                    .collect();
                if check_history(dial_id, &history).is_err() {
                    still.push(dial_id.clone());
                }
            }
        }
        pending = still;
        if let Some(d) = pending.first() {
            assert!(
                Instant::now() < deadline,
                "{} calls incomplete, e.g. {d}: {:#?}",
                pending.len(),
                f.history(d).await
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    eprintln!("{N} calls complete in {:?}", started.elapsed());
    f.assert_clean(&dialled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_holds_what_redis_cannot_take_in_order_and_drops_beyond_its_bound() {
    use redswitch::service::events::{CallEvents, Event, Side};
    use redswitch::service::outbox::Outbox;
    use redswitch::service::store::RedisClient;
    use redswitch::service::validate::Id;

    let mut redis = RedisServer::start_persistent();
    let client = RedisClient::connect(&redis.url(), Duration::from_secs(5))
        .await
        .unwrap();
    let outbox = Outbox::spawn(client.connection().await.unwrap(), 10);
    let id = |s| Id::parse("t", s).unwrap();
    let events = CallEvents::new(outbox.clone(), &id("held"), &id("o"), &id("u"));
    events.start_call().await.unwrap();

    redis.stop();
    // Nine more fit (the call-start is written); then the outbox is full.
    let mut dropped = 0;
    for n in 0..15u8 {
        let event = Event::Dtmf {
            side: Side::Caller,
            digits: n.to_string(),
        };
        if events.publish(&event).await.is_err() {
            dropped += 1;
        }
    }
    assert_eq!(dropped, 5);
    assert_eq!(outbox.dropped(), 5);
    assert_eq!(outbox.pending(), 10);
    assert!(outbox.is_away());

    redis.restart();
    assert_eq!(outbox.flush(Duration::from_secs(30)).await, 0);
    let mut conn = client.connection().await.unwrap();
    let history: Vec<String> = conn.lrange("redswitch_history.o.u", 0, -1).await.unwrap();
    let digits: Vec<String> = history
        .iter()
        .skip(1)
        .map(|h| {
            serde_json::from_str::<Value>(h).unwrap()["digits"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(digits, ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]);
    assert!(!outbox.is_away());
}
