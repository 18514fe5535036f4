//! `redswitch serve` (the agent) and `redswitch check` (can it reach and
//! authenticate to Redis and FreeSWITCH?).

use crate::cli::Config;
use crate::service::agent::{self, AgentConfig, AgentError};
use crate::service::asp_call::CallSettings;
use crate::service::pacing::Pacer;
use crate::service::store::RedisClient;
use crate::switch::{InboundClient, InboundConfig};
use std::path::{Path, PathBuf};
use tokio_util::sync::CancellationToken;

/// A setting that cannot be used, or a failure of the agent.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A bad value on the command line.
    #[error(transparent)]
    Config(#[from] crate::cli::ConfigError),
    /// A folder that cannot be made absolute.
    #[error("cannot resolve {path}: {source}")]
    Folder {
        /// The folder as given.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The agent failed.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// The metrics server could not start.
    #[error(transparent)]
    Ops(#[from] crate::ops::OpsError),
}

/// FreeSWITCH may run elsewhere, so `play` and `record` hand it absolute
/// paths; a relative folder is taken from the current directory.
fn absolute(path: &Path) -> Result<PathBuf, ServeError> {
    std::path::absolute(path).map_err(|source| ServeError::Folder {
        path: path.to_owned(),
        source,
    })
}

/// The agent's configuration from the command line.
pub fn agent_config(config: &Config) -> Result<AgentConfig, ServeError> {
    Ok(AgentConfig {
        esl_addr: config.esl_address()?,
        esl_password: config.esl_password.clone(),
        redis_url: config.redis_url.clone(),
        redis_timeout: config.redis_timeout(),
        listen: config.listen,
        advertise: config.advertise(),
        allow: config.allow.clone(),
        jobs_key: config.jobs_key.clone(),
        call: CallSettings {
            dial_template: config.dial_template.clone(),
            media_dir: absolute(&config.media_dir)?,
            recordings_dir: absolute(&config.recordings_dir)?,
            max_call_duration: config.max_call_duration,
            pacer: Pacer::new(config.sessions_per_second),
            ..CallSettings::default()
        },
        max_calls: 10_000,
        instance: instance_id(),
        drain_timeout: config.drain_timeout,
    })
}

/// `<hostname>-<pid>-<random>`: readable in Redis, unique per process.
pub fn instance_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| {
            h.trim()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect::<String>()
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "redswitch".into());
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}-{}", std::process::id(), &random[..8])
}

/// The first Ctrl-C or SIGTERM cancels `drain` (no new jobs; live calls
/// go on), the second cancels `hangup` (every call hung up now).
pub fn cancel_on_signal(drain: CancellationToken, hangup: CancellationToken) {
    tokio::spawn(async move {
        #[cfg(unix)]
        let mut term = {
            use tokio::signal::unix::{SignalKind, signal};
            signal(SignalKind::terminate()).ok()
        };
        for (n, token) in [drain, hangup].into_iter().enumerate() {
            #[cfg(unix)]
            {
                let term_recv = async {
                    match &mut term {
                        Some(term) => {
                            term.recv().await;
                        }
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    () = term_recv => {}
                }
            }
            #[cfg(not(unix))]
            let _ = tokio::signal::ctrl_c().await;
            if n == 0 {
                tracing::info!("stopping: no new jobs, waiting for calls in progress");
            } else {
                tracing::warn!("second signal: hanging up every call");
            }
            token.cancel();
        }
    });
}

/// `redswitch serve`.
pub async fn serve(config: &Config) -> Result<(), ServeError> {
    let agent_config = agent_config(config)?;
    let ops = match config.metrics_listen {
        Some(addr) => Some(crate::ops::OpsServer::bind(addr).await?),
        None => None,
    };
    let drain = CancellationToken::new();
    let hangup = CancellationToken::new();
    cancel_on_signal(drain.clone(), hangup.clone());
    let agent = agent::Agent::start(agent_config, drain).await?;
    let all = agent.hangup_token();
    tokio::spawn(async move {
        hangup.cancelled().await;
        all.cancel();
    });
    // Kept up until the calls are over, answering /ready with 503.
    let ops_stop = CancellationToken::new();
    if let Some(ops) = ops {
        ops.spawn(agent.monitor().clone(), ops_stop.clone());
    }
    agent.stopped().await;
    ops_stop.cancel();
    Ok(())
}

/// What `check` found wrong.
#[derive(Debug, thiserror::Error)]
#[error("check failed: {0}")]
pub struct CheckFailed(pub String);

/// `redswitch check`: prints what it found, fails if anything is wrong.
pub async fn check(config: &Config) -> Result<(), CheckFailed> {
    let mut problems = Vec::new();
    match RedisClient::connect(&config.redis_url, config.redis_timeout()).await {
        Ok(redis) => match redis.server_info().await {
            Ok(info) => println!("redis: ok, {info}"),
            Err(e) => problems.push(format!("redis: {e}")),
        },
        Err(e) => problems.push(format!("redis: {e}")),
    }
    match config.esl_address() {
        Err(e) => problems.push(format!("freeswitch: {e}")),
        Ok(addr) => {
            let mut esl = InboundConfig::new(addr.clone(), config.esl_password.clone());
            esl.reconnect.max_attempts = Some(0);
            match InboundClient::connect(esl).await {
                Ok((client, _events)) => {
                    match client.api("version").await {
                        Ok(v) => println!("freeswitch: ok at {addr}, {}", v.trim()),
                        Err(e) => problems.push(format!("freeswitch: `api version` failed: {e}")),
                    }
                    let _ = client.close().await;
                }
                Err(e) => problems.push(format!("freeswitch: {e}")),
            }
        }
    }
    for p in &problems {
        println!("{p}");
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(CheckFailed(problems.join("; ")))
    }
}
