//! `redswitch events`: print FreeSWITCH events as JSON lines.
//!
//! Connects with the inbound client, subscribes, and writes each event as one
//! JSON object per line on stdout. Output goes through a large `BufWriter`
//! that is flushed only when no event is waiting, so a flood costs one
//! `write` per ~64 KiB instead of one per event, and a quiet stream still
//! shows every event at once. Decoding happens here, in the consumer task,
//! while the client's driver task keeps reading the socket on the other
//! core. `--count N` stops after N events and prints the rate on stderr,
//! timed from the first event to the last.

use crate::esl::EventFormat;
use crate::switch::inbound::decode;
use crate::switch::{Error, InboundClient, InboundConfig};
use std::io::Write;
use std::time::Instant;

/// Flags of `redswitch events`.
#[derive(Debug, Clone, clap::Args)]
pub struct EventsArgs {
    /// Encoding FreeSWITCH uses on the wire (the output is JSON lines either way)
    #[arg(long, value_enum, default_value_t = WireFormat::Plain)]
    pub format: WireFormat,
    /// Event names to subscribe to (CUSTOM takes subclasses after it)
    #[arg(long, num_args = 1.., default_values_t = ["ALL".to_owned()])]
    pub events: Vec<String>,
    /// Only events whose HEADER equals VALUE (repeatable; any filter may match)
    #[arg(long, num_args = 2, value_names = ["HEADER", "VALUE"], action = clap::ArgAction::Append)]
    pub filter: Vec<String>,
    /// Exit after N events and print the rate on stderr
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Capacity of the event queue between the socket and the output
    #[arg(long, default_value_t = 8192, hide = true)]
    pub buffer: usize,
}

/// The wire encoding to ask FreeSWITCH for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WireFormat {
    /// `event plain`: percent-encoded headers (the cheapest to decode)
    Plain,
    /// `event json`
    Json,
}

impl From<WireFormat> for EventFormat {
    fn from(f: WireFormat) -> Self {
        match f {
            WireFormat::Plain => EventFormat::Plain,
            WireFormat::Json => EventFormat::Json,
        }
    }
}

/// What `events` reports at the end.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Events printed.
    pub events: u64,
    /// Seconds from the first event to the last.
    pub seconds: f64,
    /// Events dropped because output could not keep up.
    pub dropped: u64,
}

/// Runs `redswitch events` against the event socket of `esl` (from the
/// global `--esl-host/--esl-port/--esl-password`), printing to stdout.
pub async fn run(esl: InboundConfig, args: EventsArgs) -> Result<(), Error> {
    let stdout = std::io::stdout();
    match run_to(esl, args, stdout).await {
        Ok(_) => Ok(()),
        // `redswitch events | head` closing the pipe is a normal end.
        Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(e),
    }
}

/// Runs `redswitch events`, printing to `out` (tests and benches pass a
/// buffer or a sink).
pub async fn run_to<W: Write>(
    mut cfg: InboundConfig,
    args: EventsArgs,
    out: W,
) -> Result<Summary, Error> {
    cfg.event_buffer = args.buffer.max(1);
    let (client, mut stream) = InboundClient::connect(cfg).await?;
    for pair in args.filter.chunks(2) {
        if let [header, value] = pair {
            client.filter(header, value).await?;
        }
    }
    client
        .subscribe(args.format.into(), args.events.iter().cloned())
        .await?;

    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    let limit = args.count.unwrap_or(u64::MAX);
    let mut printed = 0u64;
    let mut first: Option<Instant> = None;
    while printed < limit {
        let frame = match stream.try_recv_frame() {
            Ok(f) => f,
            Err(_) => {
                // Idle: show what we have before waiting.
                out.flush()?;
                match stream.recv_frame().await {
                    Some(f) => f,
                    None => break,
                }
            }
        };
        let Some(event) = decode(&frame) else {
            continue;
        };
        drop(frame);
        first.get_or_insert_with(Instant::now);
        event.write_json_line(&mut out)?;
        printed += 1;
    }
    out.flush()?;
    let seconds = first.map_or(0.0, |t| t.elapsed().as_secs_f64());
    let summary = Summary {
        events: printed,
        seconds,
        dropped: stream.dropped(),
    };
    if args.count.is_some() {
        let rate = if seconds > 0.0 {
            printed as f64 / seconds
        } else {
            0.0
        };
        eprintln!("{printed} events in {seconds:.3} s ({rate:.0} events/s)");
    }
    if summary.dropped > 0 {
        eprintln!(
            "{} events dropped: output could not keep up",
            summary.dropped
        );
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: EventsArgs,
    }

    #[test]
    fn flags_parse_with_pairs_and_lists() {
        let cli = Cli::try_parse_from([
            "events",
            "--format",
            "json",
            "--events",
            "CHANNEL_ANSWER",
            "DTMF",
            "--filter",
            "Unique-ID",
            "u1",
            "--filter",
            "Event-Name",
            "DTMF",
            "--count",
            "10",
        ])
        .unwrap();
        let a = cli.args;
        assert_eq!(a.format, WireFormat::Json);
        assert_eq!(a.events, ["CHANNEL_ANSWER", "DTMF"]);
        assert_eq!(a.filter, ["Unique-ID", "u1", "Event-Name", "DTMF"]);
        assert_eq!(a.count, Some(10));
    }

    #[test]
    fn defaults_subscribe_to_all() {
        let a = Cli::try_parse_from(["events"]).unwrap().args;
        assert_eq!(a.events, ["ALL"]);
        assert_eq!(a.format, WireFormat::Plain);
        assert!(a.filter.is_empty());
    }
}
