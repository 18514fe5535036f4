//! `redswitch events`: print FreeSWITCH events as JSON lines.
//!
//! Connects with the inbound client, subscribes, and writes each event as one
//! JSON object per line on stdout. No event is dropped: when the output
//! cannot keep up (a slow disk, a pipe nobody reads), the client's buffer
//! fills to `--buffer` bytes and it stops reading the socket, so FreeSWITCH
//! queues the rest; memory stays bounded.
//!
//! The printing runs on a thread of its own: it decodes, formats and may
//! block on a stalled pipe without holding up the task that reads the
//! socket, and the two spread over two cores. Output goes through a large
//! `BufWriter` that is flushed only when no event is waiting, so a flood
//! costs one `write` per ~64 KiB, and a quiet stream still shows every event
//! at once.
//!
//! `--count N` exits 0 after exactly N events and prints the rate on stderr,
//! timed from the first event to the last. When FreeSWITCH closes the
//! connection (or sends a message larger than the buffer), `events` prints
//! what it had and fails with the reason; `--reconnect` makes it reconnect
//! with backoff instead, for a long-running tail. Failing to connect at the
//! start is an error either way.

use crate::esl::{ContentType, EventFormat};
use crate::switch::inbound::{EventStream, decode};
use crate::switch::{Error, InboundClient, InboundConfig, ReconnectPolicy};
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
    /// Exit after exactly N events and print the rate on stderr
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Reconnect with backoff when FreeSWITCH closes the connection, instead
    /// of failing (for a long-running tail)
    #[arg(long)]
    pub reconnect: bool,
    /// Events buffered before reading pauses and FreeSWITCH queues the rest
    /// (bytes, or with a KiB/MiB/GiB suffix); also the largest event accepted
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = parse_size)]
    pub buffer: usize,
}

/// Parses `65536`, `512KiB`, `64MiB`, `1GiB` (also `K`, `M`, `G`, `KB` …:
/// every multiple is a power of 1024).
pub fn parse_size(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let n: usize = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size (e.g. 65536, 512KiB, 64MiB)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        other => return Err(format!("unknown size unit {other:?} (use KiB, MiB or GiB)")),
    };
    let bytes = n
        .checked_mul(1usize << shift)
        .ok_or_else(|| format!("{text:?} is too large"))?;
    if bytes == 0 {
        return Err("the size must be at least one byte".into());
    }
    Ok(bytes)
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
    /// Events the client read and could not hand over (always 0: the
    /// client pauses instead of dropping).
    pub dropped: u64,
    /// How many times reading paused because the output lagged.
    pub stalls: u64,
}

/// Runs `redswitch events` against the event socket of `esl` (from the
/// global `--esl-host/--esl-port/--esl-password`), printing to stdout.
pub async fn run(esl: InboundConfig, args: EventsArgs) -> Result<(), Error> {
    match run_to(esl, args, std::io::stdout()).await {
        Ok(_) => Ok(()),
        // `redswitch events | head` closing the pipe is a normal end.
        Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(e),
    }
}

/// How the printing thread ended.
struct Printed<W> {
    out: W,
    stream: EventStream,
    events: u64,
    seconds: f64,
    result: std::io::Result<()>,
}

/// Runs `redswitch events`, printing to `out` (tests and benches pass a
/// buffer or a sink), and gives `out` back. Fails with the reason when
/// FreeSWITCH cannot be reached, or closes before `--count` events came
/// (without `--reconnect`).
pub async fn run_to<W: Write + Send + 'static>(
    mut cfg: InboundConfig,
    args: EventsArgs,
    out: W,
) -> Result<(Summary, W), Error> {
    cfg.event_buffer_bytes = args.buffer;
    cfg.reconnect = if args.reconnect {
        ReconnectPolicy::default()
    } else {
        ReconnectPolicy::never()
    };
    let (client, stream) = InboundClient::connect(cfg).await?;
    for pair in args.filter.chunks(2) {
        if let [header, value] = pair {
            client.filter(header, value).await?;
        }
    }
    client
        .subscribe(args.format.into(), args.events.iter().cloned())
        .await?;

    let limit = args.count.unwrap_or(u64::MAX);
    let printed = tokio::task::spawn_blocking(move || print(stream, out, limit))
        .await
        .map_err(|e| {
            Error::Io(std::io::Error::other(format!(
                "the printing thread failed: {e}"
            )))
        })?;
    let Printed {
        out,
        mut stream,
        events,
        seconds,
        result,
    } = printed;
    result?;
    let stats = client.stats();
    let summary = Summary {
        events,
        seconds,
        dropped: stats.events_dropped(),
        stalls: stats.stalls(),
    };
    if events < limit {
        // The stream ended: the client stopped, and says why.
        return Err(stream.take_error().unwrap_or(Error::Closed));
    }
    if args.count.is_some() {
        let rate = if seconds > 0.0 {
            events as f64 / seconds
        } else {
            0.0
        };
        eprintln!("{events} events in {seconds:.3} s ({rate:.0} events/s)");
    }
    Ok((summary, out))
}

/// What [`plain_json_line`] does with a byte: copy it, or stop at it.
const COPY: u8 = 0;
const COLON: u8 = 1;
const NEWLINE: u8 = 2;
const PERCENT: u8 = 3;
/// Needs JSON escaping: left to the usual path.
const ESCAPE: u8 = 4;

const CLASS: [u8; 256] = {
    let mut table = [COPY; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = ESCAPE;
        b += 1;
    }
    table[b'"' as usize] = ESCAPE;
    table[b'\\' as usize] = ESCAPE;
    table[b':' as usize] = COLON;
    table[b'\n' as usize] = NEWLINE;
    table[b'%' as usize] = PERCENT;
    table
};

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Writes a `text/event-plain` body into `line` as the JSON line that
/// decoding it into an [`crate::esl::Event`] and calling `write_json_line`
/// gives, in one pass over the bytes and without building the event.
/// Returns false for anything that needs more care (an event body, a
/// character JSON must escape, an escape that decodes to a non-ASCII or
/// control byte, bytes that are not UTF-8, no `Event-Name`, a malformed
/// line); the caller then takes the usual path, which also reports what is
/// wrong.
fn plain_json_line(data: &[u8], line: &mut Vec<u8>) -> bool {
    line.clear();
    if std::str::from_utf8(data).is_err() {
        return false;
    }
    line.reserve(data.len() + 64);
    line.push(b'{');
    if data.first().is_some_and(|&b| b != b'\n') {
        line.push(b'"');
    }
    let (mut i, mut run, mut line_start) = (0, 0, 0);
    let mut in_value = false;
    let mut named = false;
    while i < data.len() {
        let class = CLASS[data[i] as usize];
        if class == COPY || (class == COLON && in_value) || (class == PERCENT && !in_value) {
            i += 1;
            continue;
        }
        line.extend_from_slice(&data[run..i]);
        match class {
            COLON => {
                named |= &data[line_start..i] == b"Event-Name";
                line.extend_from_slice(b"\":\"");
                i += 1;
                if data.get(i) == Some(&b' ') {
                    i += 1;
                }
                in_value = true;
            }
            NEWLINE if !in_value => {
                // A blank line ends the headers; a line without a colon is
                // malformed. Either way, what follows is not for this path.
                if i != line_start || i + 1 < data.len() {
                    return false;
                }
                break;
            }
            NEWLINE => {
                line.push(b'"');
                in_value = false;
                i += 1;
                line_start = i;
                if data.get(i).is_some_and(|&b| b != b'\n') {
                    line.extend_from_slice(b",\"");
                }
            }
            PERCENT => match (data.get(i + 1), data.get(i + 2)) {
                (Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                    let byte = hex(h).unwrap_or(0) << 4 | hex(l).unwrap_or(0);
                    if byte >= 0x80 || CLASS[byte as usize] == ESCAPE {
                        return false;
                    }
                    line.push(byte);
                    i += 3;
                }
                // Not an escape: the `%` stays.
                _ => {
                    line.push(b'%');
                    i += 1;
                }
            },
            _ => return false,
        }
        run = i;
    }
    if in_value || run < i || !named {
        return false;
    }
    line.extend_from_slice(b"}\n");
    true
}

/// The printing loop (on its own thread): up to `limit` events as JSON
/// lines, until the stream ends or the output fails.
fn print<W: Write>(mut stream: EventStream, out: W, limit: u64) -> Printed<W> {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    let mut events = 0u64;
    let mut first: Option<Instant> = None;
    let mut line = Vec::with_capacity(8192);
    let result = (|| {
        while events < limit {
            let frame = match stream.try_recv_frame() {
                Ok(f) => f,
                Err(_) => {
                    // Idle: show what we have before waiting.
                    out.flush()?;
                    match stream.blocking_recv_frame() {
                        Some(f) => f,
                        None => break,
                    }
                }
            };
            let fast = frame.content_type() == ContentType::EventPlain
                && frame.body().is_some_and(|b| plain_json_line(b, &mut line));
            if fast {
                out.write_all(&line)?;
            } else {
                let Some(event) = decode(&frame) else {
                    continue;
                };
                event.write_json_line(&mut out)?;
            }
            first.get_or_insert_with(Instant::now);
            events += 1;
        }
        out.flush()
    })();
    let seconds = first.map_or(0.0, |t| t.elapsed().as_secs_f64());
    // Everything was flushed, unless writing failed (reported in `result`).
    let (out, _unwritten) = out.into_parts();
    Printed {
        out,
        stream,
        events,
        seconds,
        result,
    }
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
        assert_eq!(a.buffer, 64 * 1024 * 1024);
        assert!(!a.reconnect);
    }

    /// The JSON line of the usual path: decode, then `write_json_line`.
    fn slow_line(body: &[u8]) -> Option<Vec<u8>> {
        let event = crate::esl::Event::parse_plain(body).ok()?;
        let mut out = Vec::new();
        event.write_json_line(&mut out).unwrap();
        Some(out)
    }

    /// Runs the fast path; when it accepts, its line must be the usual one.
    fn check_same(body: &[u8]) -> bool {
        let mut line = Vec::new();
        if !plain_json_line(body, &mut line) {
            return false;
        }
        assert_eq!(
            Some(String::from_utf8_lossy(&line).into_owned()),
            slow_line(body).map(|l| String::from_utf8_lossy(&l).into_owned()),
            "for {:?}",
            String::from_utf8_lossy(body)
        );
        true
    }

    #[test]
    fn the_fast_json_path_prints_recorded_events_as_the_decoder_does() {
        let recorded = include_bytes!("../../benches/data/04-outbound-A.fs-stream");
        let mut rest = &recorded[..];
        let mut fast = 0;
        while let Some(start) = memchr::memmem::find(rest, b"Content-Length: ") {
            let head_end = start + memchr::memmem::find(&rest[start..], b"\n\n").unwrap() + 2;
            let head = std::str::from_utf8(&rest[start..head_end]).unwrap();
            let len: usize = head["Content-Length: ".len()..]
                .lines()
                .next()
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            if head.contains("text/event-plain") && check_same(&rest[head_end..head_end + len]) {
                fast += 1;
            }
            rest = &rest[head_end + len..];
        }
        // CHANNEL_HANGUP_COMPLETE has an escaped `"` to escape again in JSON:
        // it takes the usual path.
        assert_eq!(fast, 13, "recorded plain events on the fast path");
    }

    #[test]
    fn the_fast_json_path_leaves_unusual_events_to_the_decoder() {
        assert!(check_same(
            b"Event-Name: CUSTOM\nA: 100%25 %zz%4\nB: caf\xc3\xa9\n\n"
        ));
        assert!(check_same(b"Event-Name: CUSTOM\nA:B\nC: x:y%3A%\n"));
        for unusual in [
            &b"Event-Name: CUSTOM\nQ: say \"hi\"\\n\n"[..],
            b"Event-Name: CUSTOM\nQ: %22%0A%5C\n",
            b"Event-Name: CUSTOM\nA: caf%C3%A9\n\n",
            b"Event-Name: X\nContent-Length: 3\n\nabc",
            b"Event-Name: X\nBad: \xff\n\n",
            b"Event-Name: X\nBad: %FF\n\n",
            b"No-Name: X\n\n",
            b"Event-Name: X\nno colon\n\n",
            b"Event-Name: X\ntrailing",
            b"\n",
            b"",
        ] {
            let mut line = Vec::new();
            assert!(
                !plain_json_line(unusual, &mut line),
                "{:?}",
                String::from_utf8_lossy(unusual)
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn the_fast_json_path_never_differs(body in "(Event-Name: [A-Z_]{1,8}\n)?([A-Za-z-]{0,6}(: ?)?[ -~\"\\\\%0-9A-F\t\r\u{e9}]{0,12}\n){0,6}\n?") {
            check_same(body.as_bytes());
        }
    }

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("512KiB"), Ok(512 * 1024));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("2 MB"), Ok(2 << 20));
        for bad in ["", "MiB", "0", "12XB", "-1", "99999999999999999999GiB"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }
}
