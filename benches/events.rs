//! The `redswitch events` benchmark: the real binary against a server that
//! replays the recorded FreeSWITCH events (`benches/data/*.fs-stream`, the
//! plain ones, 1–4 KiB each) as fast as the socket takes them.
//!
//! `cargo bench --bench events` runs, three times each:
//!
//! - `devnull`: `redswitch events --count 200000 > /dev/null`;
//! - `pipe`: the same into a pipe the bench reads and counts line by line.
//!
//! The server sends exactly 200,000 events and then waits, so the run only
//! ends (exit 0) if every one of them was printed: nothing lost. Reported:
//! events/s over the whole run (process start to exit), the rate the tool
//! itself measured (first event to last), and CPU per event (user + system
//! time of the `redswitch events` process over the events, from
//! `getrusage(RUSAGE_CHILDREN)`; the server's own cost is not counted).
//! The target is 150,000 events/s. Linux only.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const REDSWITCH: &str = env!("CARGO_BIN_EXE_redswitch");
const RECORDINGS: [&[u8]; 2] = [
    include_bytes!("data/01-inbound.fs-stream"),
    include_bytes!("data/04-outbound-A.fs-stream"),
];
const EVENTS: u64 = 200_000;
const TARGET: f64 = 150_000.0;

/// The plain event frames of a recorded stream, each as its bytes.
fn plain_events(recorded: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = recorded;
    while let Some(start) = memchr::memmem::find(rest, b"Content-Length: ") {
        let head_end =
            start + memchr::memmem::find(&rest[start..], b"\n\n").expect("header end") + 2;
        let head = std::str::from_utf8(&rest[start..head_end]).expect("ascii head");
        let len: usize = head["Content-Length: ".len()..]
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .expect("length");
        if head.contains("text/event-plain") {
            out.push(rest[start..head_end + len].to_vec());
        }
        rest = &rest[head_end + len..];
    }
    out
}

/// A fake FreeSWITCH for one client: greets, answers every command with
/// `+OK` until the subscription to ALL, writes `count` recorded events as
/// fast as the socket takes them, then holds the connection open.
fn replay_server(count: u64) -> (SocketAddr, std::thread::JoinHandle<Duration>) {
    let events: Vec<Vec<u8>> = RECORDINGS.iter().flat_map(|r| plain_events(r)).collect();
    assert!(!events.is_empty(), "no plain events in the recordings");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("the client connects");
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        stream
            .write_all(b"Content-Type: auth/request\n\n")
            .expect("greet");
        loop {
            let mut command = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    return Duration::ZERO;
                }
                if line == "\n" {
                    break;
                }
                command.push_str(&line);
            }
            let _ = stream.write_all(b"Content-Type: command/reply\nReply-Text: +OK\n\n");
            if command.starts_with("event") && command.contains("ALL") {
                break;
            }
        }
        // Batches of 1,000 events cycling through the recordings.
        let batch: Vec<u8> = events
            .iter()
            .cycle()
            .take(1000)
            .flatten()
            .copied()
            .collect();
        let started = Instant::now();
        let mut sent = 0;
        while sent < count {
            let n = (count - sent).min(1000) as usize;
            let bytes = if n == 1000 {
                &batch[..]
            } else {
                let end: usize = events.iter().cycle().take(n).map(Vec::len).sum();
                &batch[..end]
            };
            if stream.write_all(bytes).is_err() {
                return started.elapsed();
            }
            sent += n as u64;
        }
        let took = started.elapsed();
        // Hold the connection until the client goes: a close would be an
        // error for it.
        let mut sink = [0u8; 256];
        while matches!(reader.read(&mut sink), Ok(n) if n > 0) {}
        took
    });
    (addr, server)
}

/// CPU time (user + system) of every child process reaped so far.
fn children_cpu() -> Duration {
    // SAFETY: getrusage only writes into the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) } != 0 {
        return Duration::ZERO;
    }
    let t = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    t(usage.ru_utime) + t(usage.ru_stime)
}

/// One measured run.
struct Run {
    wall: Duration,
    cpu: Duration,
    printed: u64,
    tool_says: String,
}

fn run(to_pipe: bool) -> Run {
    let (addr, server) = replay_server(EVENTS);
    let stdout = if to_pipe {
        Stdio::piped()
    } else {
        Stdio::from(std::fs::File::create("/dev/null").expect("/dev/null"))
    };
    let cpu0 = children_cpu();
    let started = Instant::now();
    let mut child = Command::new(REDSWITCH)
        .args([
            "--esl-host",
            &addr.to_string(),
            "events",
            "--count",
            &EVENTS.to_string(),
        ])
        .env("RUST_LOG", "warn")
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .expect("redswitch events starts");
    let printed = match child.stdout.take() {
        Some(out) => {
            let mut lines = 0u64;
            let mut reader = BufReader::with_capacity(256 * 1024, out);
            loop {
                let buf = reader.fill_buf().expect("read the pipe");
                if buf.is_empty() {
                    break;
                }
                lines += memchr::memchr_iter(b'\n', buf).count() as u64;
                let n = buf.len();
                reader.consume(n);
            }
            Some(lines)
        }
        None => None,
    };
    let mut stderr = String::new();
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut stderr);
    }
    let status = child.wait().expect("wait");
    let wall = started.elapsed();
    // The only child reaped in between is this one.
    let cpu = children_cpu().saturating_sub(cpu0);
    assert!(status.success(), "redswitch events failed: {stderr}");
    let _ = server.join();
    Run {
        wall,
        cpu,
        // Exit 0 with --count means exactly EVENTS were printed.
        printed: printed.unwrap_or(EVENTS),
        tool_says: stderr.trim().replace('\n', "; "),
    }
}

fn main() {
    // `cargo test --all-targets` runs bench targets without `--bench`.
    if !std::env::args().any(|a| a == "--bench") {
        println!("events benchmark: run it with `cargo bench --bench events`");
        return;
    }
    for (name, to_pipe) in [("devnull", false), ("pipe", true)] {
        let mut rates = Vec::new();
        for _ in 0..3 {
            let r = run(to_pipe);
            let rate = EVENTS as f64 / r.wall.as_secs_f64();
            rates.push(rate);
            println!(
                "events {name}: {} of {EVENTS} printed (lost {}), {:.3} s wall, {:.0} events/s, {:.2} µs CPU per event [{}]",
                r.printed,
                EVENTS - r.printed,
                r.wall.as_secs_f64(),
                rate,
                r.cpu.as_secs_f64() * 1e6 / EVENTS as f64,
                r.tool_says,
            );
        }
        rates.sort_by(f64::total_cmp);
        let median = rates[rates.len() / 2];
        println!(
            "events {name}: median {median:.0} events/s ({} the {TARGET:.0} target)",
            if median >= TARGET { "meets" } else { "BELOW" }
        );
    }
}
