//! A voice application in a few lines: answer, play an announcement, hang up.
//!
//! ```text
//! cargo run --example announcement -- --listen 127.0.0.1:8084 --media 'tone_stream://%(100,0,440)'
//! ```
//!
//! Then have FreeSWITCH (or `redswitch sim`) send a call to it, e.g. over
//! the inbound socket:
//! `bgapi originate loopback/1000/default '&socket(127.0.0.1:8084 async full)'`
//! (the single quotes matter: unquoted, the socket runs in static mode).
//!
//! The app is [`announce`], written on `redswitch::switch::voice`; an
//! [`AppRouter`] runs it for every call the outbound listener accepts. The integration test `tests/announcement.rs`
//! runs this very file against the simulator.

use clap::Parser;
use redswitch::switch::voice::{AppRouter, PlayOptions, PlayOutcome, Voice};
use redswitch::switch::{AppResult, OutboundConfig, OutboundListener};
use std::process::ExitCode;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Answer every call, play an announcement, hang up.
#[derive(Debug, Clone, Parser)]
pub struct Args {
    /// Where FreeSWITCH's socket application connects
    #[arg(long, default_value = "127.0.0.1:8084")]
    pub listen: String,
    /// What to play: a file FreeSWITCH can read, or a tone/silence stream
    #[arg(long, default_value = "tone_stream://%(100,0,440)")]
    pub media: String,
    /// Networks allowed to connect (comma-separated CIDRs)
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1/32,::1/128")]
    pub allow: Vec<ipnet::IpNet>,
}

/// The call flow: answer (`answer`), play (`playback`), hang up with
/// NORMAL_CLEARING. A file that cannot be played is logged and the call
/// still ends normally.
pub async fn announce(mut call: Voice, media: &str) -> AppResult {
    call.answer().await?;
    match call.play(&[media], PlayOptions::default()).await? {
        PlayOutcome::Failed { reason } => {
            tracing::warn!(uuid = call.uuid(), %reason, "announcement not played")
        }
        PlayOutcome::RemoteClosed => return Ok(()),
        _ => {}
    }
    call.hangup("NORMAL_CLEARING").await?;
    Ok(())
}

/// Binds, reports the bound address on stdout, and serves until `shutdown`.
pub async fn run(args: Args, shutdown: CancellationToken) -> std::io::Result<()> {
    let config = OutboundConfig {
        allow: args.allow.clone(),
        ..Default::default()
    };
    let listener = OutboundListener::bind(&args.listen, config).await?;
    println!("listening on {}", listener.local_addr()?);
    serve_on(listener, &args.media, shutdown).await;
    Ok(())
}

/// Runs [`announce`] for every leg that connects to `listener`.
pub async fn serve_on(listener: OutboundListener, media: &str, shutdown: CancellationToken) {
    let media: Arc<str> = media.into();
    let router = AppRouter::new().fallback(move |call: Voice| {
        let media = media.clone();
        async move { announce(call, &media).await }
    });
    listener.serve(router, shutdown).await;
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.cancel();
    });
    match run(args, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("announcement: {e}");
            ExitCode::FAILURE
        }
    }
}
