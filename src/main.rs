//! The `redswitch` binary: parses the command line, sets up logging and
//! runs a subcommand. Every failure ends as one clear line on stderr and a
//! non-zero exit, never a backtrace.

use clap::Parser;
use redswitch::cli::{Cli, Command, LogFormat};
use redswitch::commands;
use redswitch::ops::probe;
use redswitch::switch::InboundConfig;
use std::io::IsTerminal;
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Colour only for a person at a terminal: a file or a pipe gets plain
/// text, and `NO_COLOR` (any value) turns it off everywhere.
fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(cli: Cli) -> Result<(), BoxError> {
    let config = cli.config;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => commands::serve::serve(&config).await?,
        Command::Check => commands::serve::check(&config).await?,
        Command::Push(args) => {
            commands::redis_tools::push(
                &config.redis_url,
                config.redis_timeout(),
                &config.jobs_key,
                &args,
            )
            .await?
        }
        Command::Control(args) => {
            commands::redis_tools::control(&config.redis_url, config.redis_timeout(), &args).await?
        }
        Command::Sim(args) => {
            commands::sim::run(
                args,
                Some(config.media_dir.clone()),
                Some(config.recordings_dir.clone()),
            )
            .await?
        }
        Command::Events(args) => {
            let esl = InboundConfig::new(config.esl_address()?, config.esl_password.clone());
            commands::events::run(esl, args).await?
        }
        Command::Demo(args) => commands::demo::run(&config, args).await?,
        Command::Probe(args) => {
            let listen = config
                .metrics_listen
                .ok_or("probe: no --metrics-listen (or REDSWITCH_METRICS_LISTEN) to ask")?;
            let reason = probe::probe(probe::target(listen), args.endpoint.path()).await?;
            println!("{reason}");
        }
    }
    Ok(())
}

/// The error and its causes on one line: `a: b: c`.
fn one_line(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.config.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("redswitch: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("redswitch: error: {}", one_line(error.as_ref()));
            ExitCode::FAILURE
        }
    }
}
