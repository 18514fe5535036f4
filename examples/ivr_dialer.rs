//! Place a call, wait for the answer, navigate an IVR with DTMF, record the
//! answer, and print one JSON line with the digits heard and the recording.
//!
//! ```text
//! cargo run --example ivr_dialer -- --esl-host 127.0.0.1 --esl-port 8021 \
//!     --esl-password ClueCon --listen 127.0.0.1:8085 \
//!     --to sofia/gateway/gw/15557001234 --record /tmp/ivr-answer.wav
//! ```
//!
//! Against `redswitch sim`, numbers starting `1555700` answer and send DTMF
//! `1234#` after one second: those are the digits heard.
//!
//! Written on `redswitch::switch::voice`: [`Dialer::place_call`] places the
//! call through the inbound connection (`bgapi originate …
//! '&socket(<listen> async full)'`) and the app in [`ivr`] drives the leg.
//! The integration test `tests/ivr_dialer.rs` runs this file against the
//! simulator.

use clap::Parser;
use redswitch::switch::app::{Dialer, Originate, reject_unknown};
use redswitch::switch::voice::{
    AppError, CollectEnd, RecordOptions, RecordOutcome, Voice, VoiceError, run_on,
};
use redswitch::switch::{InboundClient, InboundConfig, OutboundConfig, OutboundListener};
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Call an IVR, press through its menu, record what it says.
#[derive(Debug, Clone, Parser)]
pub struct Args {
    /// FreeSWITCH event-socket host
    #[arg(long, default_value = "127.0.0.1")]
    pub esl_host: String,
    /// FreeSWITCH event-socket port
    #[arg(long, default_value_t = 8021)]
    pub esl_port: u16,
    /// FreeSWITCH event-socket password
    #[arg(long, default_value = "ClueCon")]
    pub esl_password: String,
    /// Where the placed leg's socket connects (FreeSWITCH must reach it)
    #[arg(long, default_value = "127.0.0.1:8085")]
    pub listen: String,
    /// What to dial, e.g. sofia/gateway/gw/15557001234
    #[arg(long)]
    pub to: String,
    /// Caller id number to present
    #[arg(long)]
    pub from: Option<String>,
    /// Digits that navigate the IVR's menu
    #[arg(long, default_value = "1")]
    pub navigate: String,
    /// How long to listen for the digits the IVR sends (ended by #)
    #[arg(long, default_value_t = 5)]
    pub listen_secs: u64,
    /// The recording (as FreeSWITCH sees the path; relative paths go to its
    /// recordings directory)
    #[arg(long, default_value = "/tmp/ivr-answer.wav")]
    pub record: PathBuf,
    /// The longest recording, in seconds
    #[arg(long, default_value_t = 2)]
    pub record_secs: u64,
}

/// The one JSON line the example prints.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Report {
    /// The leg's uuid.
    pub uuid: String,
    /// Digits pressed to navigate the menu.
    pub digits_sent: String,
    /// Digits the far end sent (up to `#`).
    pub digits_heard: String,
    /// How listening for them ended (`terminator`, `count`, `timeout`,
    /// `hangup`).
    pub digits_end: String,
    /// The recording's path.
    pub recording: String,
    /// How the recording ended (`done`, `timeout`, `remote_closed`).
    pub record_outcome: String,
    /// Its length in milliseconds.
    pub record_ms: u64,
}

/// Why the example failed.
#[derive(Debug, thiserror::Error)]
pub enum IvrError {
    /// The call could not be placed or was rejected.
    #[error("call failed: {0}")]
    Place(#[from] redswitch::switch::voice::PlaceError),
    /// Talking to FreeSWITCH failed.
    #[error(transparent)]
    Switch(#[from] redswitch::switch::Error),
    /// The app failed on the leg.
    #[error(transparent)]
    App(#[from] AppError<VoiceError>),
    /// The recording failed.
    #[error("recording failed: {0}")]
    Record(String),
    /// `--esl-host` is not a host or host:port.
    #[error(transparent)]
    Address(#[from] redswitch::cli::ConfigError),
    /// The listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
}

/// The call flow on the answered leg.
pub async fn ivr(mut v: Voice, args: &Args) -> Result<Report, VoiceError> {
    // Navigate the menu: one digit at a time, 100 ms each, 300 ms apart.
    v.send_dtmf(
        &args.navigate,
        Duration::from_millis(100),
        Some(Duration::from_millis(300)),
    )
    .await?;
    // What the IVR sends back, ended by '#'.
    let heard = v
        .collect_digits(32, "#", Some(Duration::from_secs(args.listen_secs)))
        .await?;
    let outcome = v
        .record(
            &args.record,
            RecordOptions {
                max_len: Duration::from_secs(args.record_secs),
                ..Default::default()
            },
        )
        .await?;
    let (what, ms) = match &outcome {
        RecordOutcome::Done { length, .. } => ("done", length.as_millis() as u64),
        RecordOutcome::Timeout { length, .. } => ("timeout", length.as_millis() as u64),
        RecordOutcome::RemoteClosed { .. } => ("remote_closed", 0),
        RecordOutcome::Failed { reason } => {
            return Err(VoiceError::InvalidValue {
                what: "recording",
                value: reason.clone(),
            });
        }
    };
    v.hangup("NORMAL_CLEARING").await?;
    Ok(Report {
        uuid: v.uuid().to_owned(),
        digits_sent: args.navigate.clone(),
        digits_heard: heard.digits,
        digits_end: match heard.end {
            CollectEnd::Count => "count",
            CollectEnd::Terminator => "terminator",
            CollectEnd::Timeout => "timeout",
            CollectEnd::Hangup => "hangup",
        }
        .into(),
        recording: args.record.display().to_string(),
        record_outcome: what.into(),
        record_ms: ms,
    })
}

/// Connects, places the call, runs [`ivr`] and returns its report.
pub async fn run(args: Args) -> Result<Report, IvrError> {
    let listener = OutboundListener::bind(&args.listen, OutboundConfig::default())
        .await
        .map_err(|source| IvrError::Listen {
            addr: args.listen.clone(),
            source,
        })?;
    let socket_addr = listener
        .local_addr()
        .map_err(|source| IvrError::Listen {
            addr: args.listen.clone(),
            source,
        })?
        .to_string();
    let esl_addr = redswitch::cli::esl_address(&args.esl_host, args.esl_port)?;
    let (inbound, events) =
        InboundClient::connect(InboundConfig::new(esl_addr, args.esl_password.clone())).await?;
    let owner = format!("ivr-dialer-{}", uuid::Uuid::new_v4().simple());
    let (dialer, _dispatch) = Dialer::start(inbound.clone(), events, &socket_addr, &owner)
        .await
        .map_err(redswitch::switch::voice::PlaceError::from)?;
    let stop = CancellationToken::new();
    tokio::spawn(listener.serve(dialer.handler(reject_unknown), stop.clone()));
    let voice = dialer
        .place_call(&Originate {
            endpoint: args.to.clone(),
            caller_id_number: args.from.clone(),
            ..Default::default()
        })
        .await;
    let result = match voice {
        Ok(voice) => run_on(voice, |v| ivr(v, &args))
            .await
            .map_err(IvrError::from),
        Err(e) => Err(e.into()),
    };
    stop.cancel();
    let _ = inbound.close().await;
    result
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Args::parse()).await {
        Ok(report) => match serde_json::to_string(&report) {
            Ok(line) => {
                println!("{line}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ivr_dialer: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("ivr_dialer: {e}");
            ExitCode::FAILURE
        }
    }
}
