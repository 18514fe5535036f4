//! `redswitch sim`: run the FreeSWITCH simulator until Ctrl-C.

use crate::sim::{SimConfig, Simulator};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Options of `redswitch sim`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Where the simulated event socket listens.
    #[arg(
        long,
        env = "REDSWITCH_SIM_ESL_LISTEN",
        default_value = "127.0.0.1:8021"
    )]
    pub esl_listen: SocketAddr,
    /// The event-socket password clients must send.
    #[arg(
        long,
        env = "ESL_PASSWORD",
        default_value = "ClueCon",
        hide_env_values = true
    )]
    pub password: String,
    /// How long numbers of the plan ring before answering, in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub ring_ms: u64,
    /// FreeSWITCH-Hostname of the simulated switch.
    #[arg(long, default_value = "redswitch-sim")]
    pub hostname: String,
    /// The sessions-per-second limit, as FreeSWITCH's `sessions-per-second`
    /// (a loopback call costs two sessions; `fsctl sps N` changes it at run
    /// time). Over it, originates fail with DESTINATION_OUT_OF_ORDER.
    #[arg(long, default_value_t = crate::sim::throttle::DEFAULT_SESSIONS_PER_SECOND, value_parser = clap::value_parser!(u32).range(1..))]
    pub sessions_per_second: u32,
}

/// Why the simulator could not run.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The event-socket address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// Runs the simulator until Ctrl-C (or SIGTERM), then shuts it down the way
/// FreeSWITCH does (disconnect notices, channels hung up).
/// `media_dir` and `recordings_dir` are the global `--media-dir` and
/// `--recordings-dir`, so the simulator finds files where the agent says
/// they are.
pub async fn run(
    args: SimArgs,
    media_dir: Option<PathBuf>,
    recordings_dir: Option<PathBuf>,
) -> Result<(), SimError> {
    let cfg = SimConfig {
        esl_listen: args.esl_listen,
        password: args.password,
        ring_time: Duration::from_millis(args.ring_ms),
        hostname: args.hostname,
        sessions_per_second: args.sessions_per_second,
        media_dir,
        recordings_dir,
        ..SimConfig::default()
    };
    let sim = Simulator::start(cfg)
        .await
        .map_err(|source| SimError::Bind {
            addr: args.esl_listen,
            source,
        })?;
    tracing::info!(addr = %sim.esl_addr(), "FreeSWITCH simulator listening");
    wait_for_signal().await;
    tracing::info!("shutting down the simulator");
    sim.shutdown().await;
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
