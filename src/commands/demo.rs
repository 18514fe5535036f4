//! `redswitch demo`: the whole system on one machine. It starts a Redis
//! (`redis-server` from PATH on a free loopback port, unless `--use-redis`
//! names one), the FreeSWITCH simulator, and the agent; pushes a sample
//! asp-call job; prints the call's events as they flow; hangs the call up
//! through a `hangup` control message after `--talk-time` seconds; and
//! stops (or, with `--stay`, keeps running for `push` and `control` by
//! hand).

use crate::cli::{Config, DemoArgs};
use crate::commands::redis_tools::CallTracker;
use crate::service::agent::{Agent, AgentConfig};
use crate::service::asp_call::CallSettings;
use crate::sim::{SimConfig, Simulator};
use futures::StreamExt;
use serde_json::json;
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// `redis-server` is not installed and no `--use-redis` was given.
    #[error(
        "cannot start redis-server ({0}); install it (apt-get install redis-server) or pass --use-redis URL"
    )]
    NoRedisServer(std::io::Error),
    /// It started but never answered.
    #[error("redis-server on port {0} did not answer within 5 s")]
    RedisNotReady(u16),
    /// Redis failed during the demo.
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The simulator could not start.
    #[error("simulator: {0}")]
    Sim(std::io::Error),
    /// The agent could not start.
    #[error(transparent)]
    Agent(#[from] crate::service::agent::AgentError),
    /// A folder could not be resolved.
    #[error(transparent)]
    Serve(#[from] crate::commands::serve::ServeError),
    /// The sample call did not end in time.
    #[error("the sample call did not end within {0} s")]
    Timeout(u64),
}

/// A throw-away `redis-server` on a free loopback port (for the demo and
/// the load benchmarks), stopped and its folder removed on drop.
pub struct RedisServer {
    child: Child,
    url: String,
    _dir: tempfile_dir::TempDir,
}

/// A tiny private temp dir (removed on drop) for redis-server's files.
mod tempfile_dir {
    use std::path::{Path, PathBuf};

    pub struct TempDir(PathBuf);

    impl TempDir {
        pub fn new() -> std::io::Result<Self> {
            let dir = std::env::temp_dir()
                .join(format!("redswitch-demo-{}", uuid::Uuid::new_v4().simple()));
            std::fs::create_dir_all(&dir)?;
            Ok(Self(dir))
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl RedisServer {
    /// Starts `redis-server` from PATH and waits until it answers PING.
    pub async fn start() -> Result<Self, DemoError> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(DemoError::NoRedisServer)?
            .port();
        let dir = tempfile_dir::TempDir::new().map_err(DemoError::NoRedisServer)?;
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(DemoError::NoRedisServer)?;
        let server = Self {
            child,
            url: format!("redis://127.0.0.1:{port}"),
            _dir: dir,
        };
        let client = redis::Client::open(server.url.as_str())?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(mut con) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut con)
                    .await
                    .is_ok()
            {
                return Ok(server);
            }
            if Instant::now() > deadline {
                return Err(DemoError::RedisNotReady(port));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl RedisServer {
    /// Its URL.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn say(start: Instant, what: &str) {
    println!("[{:>6.3}s] {what}", start.elapsed().as_secs_f64());
}

/// `redswitch demo`.
pub async fn run(config: &Config, args: DemoArgs) -> Result<(), DemoError> {
    let start = Instant::now();
    let (_redis_server, redis_url) = match &args.use_redis {
        Some(url) => (None, url.clone()),
        None => {
            let server = RedisServer::start().await?;
            let url = server.url.clone();
            (Some(server), url)
        }
    };
    say(
        start,
        &format!("redis: {}", crate::service::store::redact_url(&redis_url)),
    );

    let sim = Simulator::start(SimConfig {
        esl_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        password: config.esl_password.clone(),
        ..SimConfig::default()
    })
    .await
    .map_err(DemoError::Sim)?;
    say(
        start,
        &format!("FreeSWITCH simulator: event socket on {}", sim.esl_addr()),
    );

    let cancel = CancellationToken::new();
    let listen = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut agent_config: AgentConfig = crate::commands::serve::agent_config(config)?;
    agent_config.esl_addr = sim.esl_addr().to_string();
    agent_config.redis_url = redis_url.clone();
    agent_config.listen = listen;
    agent_config.advertise = listen.to_string();
    agent_config.call = CallSettings {
        ring_timeout: Duration::from_secs(20),
        ..agent_config.call
    };
    let agent = Agent::start(agent_config, cancel.clone()).await?;
    say(
        start,
        &format!(
            "agent {}: listening for legs on {}",
            agent.instance, agent.listen
        ),
    );

    if let Some(addr) = config.metrics_listen {
        let ops = crate::ops::OpsServer::bind(addr)
            .await
            .map_err(crate::commands::serve::ServeError::from)?;
        say(
            start,
            &format!("metrics: http://{}/metrics", ops.local_addr()),
        );
        ops.spawn(agent.monitor().clone(), cancel.child_token());
    }

    let client = redis::Client::open(redis_url.as_str())?;
    let dial_id = format!("demo-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let job = json!({
        "type": "asp-call",
        "call_provider": "demo_provider",
        "callee_number": args.callee_number,
        "caller_id_lega": args.callee_number,
        "caller_id_legb": args.caller_number,
        "caller_number": args.caller_number,
        "dial_id": dial_id,
        "org_id": "demo_org",
        "user_id": "demo_user",
    })
    .to_string();
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(&dial_id).await?;
    let mut con = client.get_multiplexed_async_connection().await?;
    redis::cmd("RPUSH")
        .arg(&config.jobs_key)
        .arg(&job)
        .query_async::<()>(&mut con)
        .await?;
    say(start, &format!("pushed onto {}: {job}", config.jobs_key));

    let mut messages = pubsub.on_message();
    let mut tracker = CallTracker::default();
    let mut hangup_at: Option<Instant> = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let until = [hangup_at, tracker.grace_over(), Some(deadline)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(deadline);
        match tokio::time::timeout_at(until.into(), messages.next()).await {
            Ok(Some(msg)) => {
                let payload: String = msg.get_payload()?;
                say(start, &format!("{dial_id} <- {payload}"));
                if tracker.observe(&payload) {
                    break;
                }
                if tracker.answered[1] && hangup_at.is_none() && tracker.ended_at.is_none() {
                    hangup_at = Some(Instant::now() + Duration::from_secs(args.talk_time));
                }
            }
            Ok(None) => break,
            Err(_) if hangup_at.is_some_and(|at| at <= Instant::now()) => {
                hangup_at = Some(deadline);
                let control = json!({"type": "hangup"}).to_string();
                redis::cmd("PUBLISH")
                    .arg(&dial_id)
                    .arg(&control)
                    .query_async::<()>(&mut con)
                    .await?;
                say(start, &format!("{dial_id} -> {control}"));
            }
            Err(_) if tracker.ended_at.is_some() => break,
            Err(_) => return Err(DemoError::Timeout(60)),
        }
    }

    if args.stay {
        say(
            start,
            "call over; everything keeps running (Ctrl-C to stop). Try, in another terminal:",
        );
        println!("  redswitch --redis-url {redis_url} push --follow --callee-number 15557001234");
        println!("  redswitch --redis-url {redis_url} control <dial_id> hangup");
        let _ = tokio::signal::ctrl_c().await;
    }
    cancel.cancel();
    agent.stopped().await;
    sim.shutdown().await;
    say(start, "demo finished");
    Ok(())
}
