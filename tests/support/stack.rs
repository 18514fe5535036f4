//! The whole system for integration tests: a real redis-server, the
//! FreeSWITCH simulator and one or more agents, plus a follower that reads a
//! call's channel the way a controller would.

use crate::redis_server::RedisServer;
use futures::StreamExt;
use redswitch::service::agent::{Agent, AgentConfig};
use redswitch::service::asp_call::CallSettings;
use redswitch::sim::{ChannelSnapshot, SimConfig, SimHandle, Simulator};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub const JOBS: &str = "talkiq-asp.calls";

pub struct Stack {
    pub redis: RedisServer,
    pub sim: SimHandle,
    pub agents: Vec<Agent>,
    pub cancel: CancellationToken,
    pub recordings: tempfile::TempDir,
    pub media: tempfile::TempDir,
}

pub fn agent_config(
    redis_url: &str,
    sim: &SimHandle,
    recordings: &std::path::Path,
    media: &std::path::Path,
) -> AgentConfig {
    let listen = SocketAddr::from(([127, 0, 0, 1], 0));
    AgentConfig {
        esl_addr: sim.esl_addr().to_string(),
        esl_password: "ClueCon".into(),
        redis_url: redis_url.to_owned(),
        redis_timeout: Duration::from_secs(5),
        listen,
        advertise: listen.to_string(),
        allow: vec!["127.0.0.0/8".parse().unwrap()],
        jobs_key: JOBS.into(),
        call: CallSettings {
            dial_template: "sofia/gateway/{provider}/{number}".into(),
            media_dir: media.to_owned(),
            recordings_dir: recordings.to_owned(),
            ring_timeout: Duration::from_secs(2),
            linger: Duration::from_secs(5),
            ..CallSettings::default()
        },
        max_calls: 2000,
        instance: format!("test-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
        drain_timeout: Duration::from_secs(3),
    }
}

impl Stack {
    pub async fn start(agents: usize) -> Self {
        Self::start_with(agents, |_| {}, |_| {}).await
    }

    /// Starts the stack with the simulator's and the agents' settings
    /// changed by `sim` and `agent`.
    pub async fn start_with(
        agents: usize,
        sim: impl FnOnce(&mut SimConfig),
        agent: impl Fn(&mut AgentConfig),
    ) -> Self {
        let redis = RedisServer::start();
        let recordings = tempfile::tempdir().unwrap();
        let media = tempfile::tempdir().unwrap();
        let mut sim_config = SimConfig {
            esl_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ring_time: Duration::from_millis(50),
            media_dir: Some(media.path().to_owned()),
            recordings_dir: Some(recordings.path().to_owned()),
            ..SimConfig::default()
        };
        sim(&mut sim_config);
        let sim = Simulator::start(sim_config).await.unwrap();
        let cancel = CancellationToken::new();
        let mut started = Vec::new();
        for _ in 0..agents {
            let mut config = agent_config(&redis.url(), &sim, recordings.path(), media.path());
            agent(&mut config);
            started.push(Agent::start(config, cancel.child_token()).await.unwrap());
        }
        Self {
            redis,
            sim,
            agents: started,
            cancel,
            recordings,
            media,
        }
    }

    /// Starts one more agent on this stack (e.g. after a dead instance's
    /// liveness key expired).
    pub async fn add_agent(&mut self) {
        self.add_agent_with(|_| {}).await;
    }

    /// Starts one more agent with its settings changed by `agent`.
    pub async fn add_agent_with(&mut self, agent: impl FnOnce(&mut AgentConfig)) {
        let mut config = agent_config(
            &self.redis.url(),
            &self.sim,
            self.recordings.path(),
            self.media.path(),
        );
        agent(&mut config);
        self.agents.push(
            Agent::start(config, self.cancel.child_token())
                .await
                .unwrap(),
        );
    }

    /// Channels FreeSWITCH (the simulator) ever created: `api status`'s
    /// "N session(s) since startup", asked over the event socket.
    pub async fn sessions_since_startup(&self) -> u64 {
        let status = self.api("status").await;
        status
            .lines()
            .find_map(|l| l.strip_suffix(" session(s) since startup"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no session count in {status:?}"))
    }

    /// `api <cmd>` on the simulator's event socket.
    pub async fn api(&self, cmd: &str) -> String {
        crate::esl_api(self.sim.esl_addr(), cmd).await
    }

    /// Pushes a job that rings through and waits until its two parties are
    /// bridged in the simulator. Returns the follower (which has seen
    /// call-start and both answer-events) and the dial_id.
    pub async fn bridged_call(&self, caller: &str, callee: &str) -> (Follower, String) {
        let job = job(caller, callee);
        let dial_id = job["dial_id"].as_str().unwrap().to_owned();
        let mut f = self.push(&job).await;
        f.expect("call-start").await;
        f.expect_where("answer-event", |v| v["side"] == 0).await;
        f.expect_where("answer-event", |v| v["side"] == 1).await;
        self.wait_leg(&dial_id, 0, "bridged", |c| c.bridged_to.is_some())
            .await;
        (f, dial_id)
    }

    /// The dead-letter list, parsed.
    pub async fn dead_letters(&self) -> Vec<Value> {
        self.lrange(&format!("{JOBS}.dead"))
            .await
            .iter()
            .map(|s| serde_json::from_str(s).unwrap())
            .collect()
    }

    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.redis.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// Subscribes to `dial_id`, then pushes `job`.
    pub async fn push(&self, job: &Value) -> Follower {
        let dial_id = job["dial_id"].as_str().unwrap_or("no-dial-id").to_owned();
        let follower = Follower::start(&self.redis.url(), &dial_id).await;
        self.push_raw(&job.to_string()).await;
        follower
    }

    pub async fn push_raw(&self, raw: &str) {
        let mut con = self.redis().await;
        redis::cmd("RPUSH")
            .arg(JOBS)
            .arg(raw)
            .query_async::<()>(&mut con)
            .await
            .unwrap();
    }

    pub async fn publish(&self, dial_id: &str, msg: &str) {
        let mut con = self.redis().await;
        redis::cmd("PUBLISH")
            .arg(dial_id)
            .arg(msg)
            .query_async::<()>(&mut con)
            .await
            .unwrap();
    }

    pub async fn lrange(&self, key: &str) -> Vec<String> {
        let mut con = self.redis().await;
        redis::cmd("LRANGE")
            .arg(key)
            .arg(0)
            .arg(-1)
            .query_async(&mut con)
            .await
            .unwrap()
    }

    /// The list at `key`, each entry parsed as JSON (a history or a
    /// dead-letter list).
    pub async fn lrange_json(&self, key: &str) -> Vec<Value> {
        self.lrange(key)
            .await
            .iter()
            .map(|s| serde_json::from_str(s).unwrap())
            .collect()
    }

    /// The live simulator channel whose variable `redswitch_side` is `side`
    /// for `dial_id`.
    pub fn leg(&self, dial_id: &str, side: u8) -> Option<ChannelSnapshot> {
        self.sim.channels().into_iter().find(|c| {
            c.variables.get("dial_id").map(String::as_str) == Some(dial_id)
                && c.variables.get("redswitch_side").map(String::as_str) == Some(&side.to_string())
                && c.hangup_cause.is_none()
        })
    }

    pub async fn wait_leg<F: Fn(&ChannelSnapshot) -> bool>(
        &self,
        dial_id: &str,
        side: u8,
        what: &str,
        check: F,
    ) -> ChannelSnapshot {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(c) = self.leg(dial_id, side)
                && check(&c)
            {
                return c;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for side {side} of {dial_id}: {what}; channels: {:#?}",
                self.sim.channels()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Checks that the simulator holds no channel, then stops the agents
    /// and the simulator.
    pub async fn stop(self) {
        crate::assert_no_channels(self.sim.esl_addr()).await;
        self.cancel.cancel();
        for agent in self.agents {
            tokio::time::timeout(Duration::from_secs(10), agent.stopped())
                .await
                .expect("agent stops");
        }
        self.sim.shutdown().await;
    }
}

/// A job with the given numbers and a fresh dial_id.
pub fn job(caller: &str, callee: &str) -> Value {
    job_with(caller, callee, "talk_call_provider")
}

pub fn job_with(caller: &str, callee: &str, provider: &str) -> Value {
    json!({
        "type": "asp-call",
        "call_provider": provider,
        "callee_number": callee,
        "caller_id_lega": "15550000001",
        "caller_id_legb": "15550000002",
        "caller_number": caller,
        "dial_id": format!("d-{}", uuid::Uuid::new_v4().simple()),
        "org_id": "org1",
        "user_id": "user1",
    })
}

/// Reads one call's channel.
pub struct Follower {
    pub dial_id: String,
    rx: tokio::sync::mpsc::UnboundedReceiver<Value>,
    pub seen: Vec<Value>,
}

impl Follower {
    pub async fn start(url: &str, dial_id: &str) -> Self {
        let client = redis::Client::open(url).unwrap();
        let mut pubsub = client.get_async_pubsub().await.unwrap();
        pubsub.subscribe(dial_id).await.unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut messages = pubsub.on_message();
            while let Some(msg) = messages.next().await {
                let payload: String = msg.get_payload().unwrap();
                let v: Value = serde_json::from_str(&payload).unwrap_or(Value::String(payload));
                if tx.send(v).is_err() {
                    return;
                }
            }
        });
        Self {
            dial_id: dial_id.to_owned(),
            rx,
            seen: Vec::new(),
        }
    }

    /// The next message of `type` (others are kept in `seen`); panics after
    /// 10 s.
    pub async fn expect(&mut self, kind: &str) -> Value {
        self.expect_where(kind, |_| true).await
    }

    pub async fn expect_where<F: Fn(&Value) -> bool>(&mut self, kind: &str, check: F) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(v)) => {
                    self.seen.push(v.clone());
                    if v["type"] == kind && check(&v) {
                        return v;
                    }
                }
                _ => panic!(
                    "no {kind:?} on {} within 10 s; seen: {:#?}",
                    self.dial_id, self.seen
                ),
            }
        }
    }

    /// The `ack` or `error` answering a control message of type `event`
    /// (`None`: a message without a type, answered by an `error` without
    /// `event`).
    pub async fn answer(&mut self, event: Option<&str>) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(v)) => {
                    self.seen.push(v.clone());
                    let kind = &v["type"];
                    if (kind == "ack" || kind == "error") && v["event"].as_str() == event {
                        return v;
                    }
                }
                _ => panic!(
                    "no ack/error for {event:?} on {} within 10 s; seen: {:#?}",
                    self.dial_id, self.seen
                ),
            }
        }
    }

    /// Answers (`ack` + `error`) seen so far.
    pub fn answers(&self) -> usize {
        self.count("ack") + self.count("error")
    }

    /// Waits until each of `sides` has had its `hangup-event` (in any
    /// order) and returns their causes, by side.
    pub async fn hangups(&mut self, sides: &[u64]) -> std::collections::BTreeMap<u64, String> {
        let mut causes = std::collections::BTreeMap::new();
        for v in &self.seen {
            if v["type"] == "hangup-event" {
                causes.insert(
                    v["side"].as_u64().unwrap(),
                    v["cause"].as_str().unwrap().to_owned(),
                );
            }
        }
        while !sides.iter().all(|s| causes.contains_key(s)) {
            let v = self.expect("hangup-event").await;
            causes.insert(
                v["side"].as_u64().unwrap(),
                v["cause"].as_str().unwrap().to_owned(),
            );
        }
        causes
    }

    /// Collects everything that arrives within `quiet` of the last message.
    pub async fn drain(&mut self, quiet: Duration) -> Vec<Value> {
        let mut out = Vec::new();
        while let Ok(Some(v)) = tokio::time::timeout(quiet, self.rx.recv()).await {
            self.seen.push(v.clone());
            out.push(v);
        }
        out
    }

    /// Messages of `type` seen so far.
    pub fn count(&self, kind: &str) -> usize {
        self.seen.iter().filter(|v| v["type"] == kind).count()
    }
}
