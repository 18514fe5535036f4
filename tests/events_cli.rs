//! `redswitch events` against fake FreeSWITCHes: the library function
//! behind the subcommand (subscriptions, filters, JSON lines, errors) and
//! the real binary (exactly `--count` events, exit codes, `--reconnect`, and
//! bounded memory when nobody reads its output).

use redswitch_test_support::fake_switch as support;

use clap::Parser;
use redswitch::commands::events::{EventsArgs, Summary, run_to};
use redswitch::switch::{Error, InboundConfig};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use std::time::Instant;
use support::{FakeFs, event};

/// Parses `redswitch events <extra>` with the real command line, and
/// returns the event socket its global `--esl-*` flags name plus the
/// subcommand's flags.
fn args(extra: &[&str]) -> (InboundConfig, EventsArgs) {
    let mut argv = vec!["redswitch", "events"];
    argv.extend_from_slice(extra);
    let cli = redswitch::cli::Cli::try_parse_from(argv).unwrap();
    let esl = InboundConfig::new(
        cli.config.esl_address().unwrap(),
        cli.config.esl_password.clone(),
    );
    match cli.command {
        Some(redswitch::cli::Command::Events(a)) => (esl, a),
        other => panic!("not the events command: {other:?}"),
    }
}

async fn run(a: (InboundConfig, EventsArgs)) -> Result<(Summary, Vec<u8>), Error> {
    run_to(a.0, a.1, Vec::new()).await
}

/// A recorded plain event from trace 02 (CHANNEL_EXECUTE_COMPLETE, ~3 KiB).
fn recorded_event() -> Vec<u8> {
    let chunks = support::trace_chunks("02-outbound-socket", "outbound");
    let all: Vec<u8> = chunks
        .iter()
        .filter(|(d, _)| *d == support::Dir::FromFs)
        .flat_map(|(_, b)| b.clone())
        .collect();
    let start = memchr::memmem::find(&all, b"Content-Length: 3154\n").unwrap();
    let head_end = start + memchr::memmem::find(&all[start..], b"\n\n").unwrap() + 2;
    all[start..head_end + 3154].to_vec()
}

#[tokio::test]
async fn prints_count_events_as_json_lines() {
    let fake = FakeFs::start("secret").await;
    let host = fake.addr.to_string();
    let a = args(&[
        "--esl-host",
        &host,
        "--esl-password",
        "secret",
        "--events",
        "CHANNEL_EXECUTE_COMPLETE",
        "DTMF",
        "--filter",
        "Unique-ID",
        "b9bf40ae-1b42-48b4-8edd-029b34d97ac8",
        "--count",
        "1000",
    ]);
    let f = fake.clone();
    tokio::spawn(async move {
        f.wait_command(0, "event plain").await;
        let one = recorded_event();
        let mut flood = Vec::new();
        for _ in 0..1000 {
            flood.extend_from_slice(&one);
        }
        // Events past the count are not printed.
        flood.extend_from_slice(&event("DTMF", &[("DTMF-Digit", "9")], None));
        f.send(flood);
    });
    let (summary, out) = tokio::time::timeout(Duration::from_secs(20), run(a))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(summary.events, 1000);
    assert_eq!(summary.dropped, 0);
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1000);
    for line in &lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["Event-Name"], "CHANNEL_EXECUTE_COMPLETE");
        assert_eq!(v["Application-Response"], "FILE PLAYED");
        assert_eq!(
            v["Application-Data"],
            "tone_stream://%(500,500,440);loops=2"
        );
    }
    assert_eq!(
        fake.commands(0),
        [
            "auth secret",
            "event plain BACKGROUND_JOB",
            "filter Event-Name BACKGROUND_JOB",
            "filter Unique-ID b9bf40ae-1b42-48b4-8edd-029b34d97ac8",
            "event plain CHANNEL_EXECUTE_COMPLETE DTMF"
        ]
    );
}

#[tokio::test]
async fn json_wire_format_and_host_port_in_one_flag() {
    let fake = FakeFs::start("ClueCon").await;
    let host = format!("tcp://{}", fake.addr);
    let a = args(&[
        "--esl-host",
        &host,
        "--esl-port",
        "1",
        "--format",
        "json",
        "--count",
        "1",
    ]);
    let f = fake.clone();
    tokio::spawn(async move {
        f.wait_command(0, "event json").await;
        let json = br#"{"Event-Name":"HEARTBEAT","Up-Time":"0 years","Event-Info":"System Ready"}"#;
        let mut frame = format!(
            "Content-Length: {}\nContent-Type: text/event-json\n\n",
            json.len()
        )
        .into_bytes();
        frame.extend_from_slice(json);
        f.send(frame);
    });
    let (summary, out) = tokio::time::timeout(Duration::from_secs(5), run(a))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(summary.events, 1);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "{\"Event-Name\":\"HEARTBEAT\",\"Up-Time\":\"0 years\",\"Event-Info\":\"System Ready\"}\n"
    );
    assert_eq!(fake.commands(0)[2], "event json ALL");
}

#[tokio::test]
async fn unreachable_and_wrong_password_are_one_clear_line() {
    let dead = support::dead_port().await;
    let err = run(args(&["--esl-host", &dead.to_string()]))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unreachable { .. }));
    let line = err.to_string();
    assert!(
        line.starts_with("cannot reach FreeSWITCH at 127.0.0.1:"),
        "{line}"
    );
    assert!(!line.contains('\n'));

    let fake = FakeFs::start("ClueCon").await;
    let err = run(args(&[
        "--esl-host",
        &fake.addr.to_string(),
        "--esl-password",
        "nope",
    ]))
    .await
    .unwrap_err();
    assert!(err.is_auth_failed());
    let line = err.to_string();
    assert_eq!(
        line,
        format!(
            "FreeSWITCH at {} rejected the event-socket password",
            fake.addr
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn against_the_simulator() {
    use redswitch::sim::{SimConfig, Simulator};
    use redswitch::switch::{InboundClient, InboundConfig};
    let sim = Simulator::start(SimConfig {
        esl_listen: "127.0.0.1:0".parse().unwrap(),
        ring_time: Duration::from_millis(10),
        ..Default::default()
    })
    .await
    .unwrap();
    let a = args(&[
        "--esl-host",
        &sim.esl_addr().to_string(),
        "--events",
        "CHANNEL_ANSWER",
        "--filter",
        "variable_dial_id",
        "evtest",
        "--count",
        "3",
    ]);
    let printer = tokio::spawn(async move { run(a).await });
    // Calls keep coming until the printer has its three events (it may
    // subscribe after the first ones).
    let (client, _events) =
        InboundClient::connect(InboundConfig::new(sim.esl_addr().to_string(), "ClueCon"))
            .await
            .unwrap();
    let dialer = tokio::spawn(async move {
        loop {
            let _ = client
                .bgapi("originate {dial_id=evtest}loopback/14155550000 &park()")
                .await;
            let _ = client
                .bgapi("originate {dial_id=other}loopback/14155550001 &park()")
                .await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let (summary, out) = tokio::time::timeout(Duration::from_secs(10), printer)
        .await
        .expect("no three events within 10 s")
        .unwrap()
        .unwrap();
    dialer.abort();
    assert_eq!(summary.events, 3);
    let text = String::from_utf8(out).unwrap();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["Event-Name"], "CHANNEL_ANSWER");
        assert_eq!(v["variable_dial_id"], "evtest");
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn an_event_larger_than_the_buffer_is_a_clear_error_after_the_others() {
    let fake = FakeFs::start("ClueCon").await;
    let a = args(&["--esl-host", &fake.addr.to_string(), "--buffer", "64KiB"]);
    let f = fake.clone();
    tokio::spawn(async move {
        f.wait_command(0, "event plain ALL").await;
        let mut bytes = Vec::new();
        for i in 0..5 {
            bytes.extend_from_slice(&event("HEARTBEAT", &[("Seq", &i.to_string())], None));
        }
        let big = format!("Event-Name: CUSTOM\nPad: {}\n\n", "y".repeat(70_000));
        bytes.extend_from_slice(&support::raw_plain(big.as_bytes()));
        f.send(bytes);
    });
    let err = tokio::time::timeout(Duration::from_secs(10), run(a))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err:?}");
    assert!(err.to_string().contains("65536-byte event buffer"), "{err}");
    assert_eq!(fake.connections(), 1, "no reconnect without --reconnect");
}

/// The real binary.
const REDSWITCH: &str = env!("CARGO_BIN_EXE_redswitch");

/// A fake FreeSWITCH on plain threads that streams numbered events as fast
/// as the socket takes them: on each connection it greets, answers every
/// command with `+OK` until the subscription to ALL, then writes events
/// (`per_conn` of them and closes, or forever). Numbering goes on across
/// connections; after `max_conns` connections the port is closed.
struct Streamer {
    addr: std::net::SocketAddr,
    /// Bytes of events written so far.
    sent: Arc<AtomicU64>,
}

impl Streamer {
    fn start(per_conn: Option<u64>, max_conns: usize, pad: usize) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let sent = Arc::new(AtomicU64::new(0));
        let counter = sent.clone();
        std::thread::spawn(move || {
            let mut seq = 0u64;
            for _ in 0..max_conns {
                let Ok((stream, _)) = listener.accept() else {
                    return;
                };
                seq = serve_stream(stream, seq, per_conn, pad, &counter);
            }
        });
        Self { addr, sent }
    }

    fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

/// Serves one connection; returns the next sequence number.
fn serve_stream(
    mut stream: std::net::TcpStream,
    mut seq: u64,
    per_conn: Option<u64>,
    pad: usize,
    sent: &AtomicU64,
) -> u64 {
    use std::io::{BufRead, Write};
    let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
    if stream.write_all(support::AUTH_REQUEST).is_err() {
        return seq;
    }
    loop {
        let mut command = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return seq;
            }
            if line == "\n" {
                break;
            }
            command.push_str(&line);
        }
        let _ = stream.write_all(&support::reply("+OK"));
        if command.starts_with("event") && command.contains("ALL") {
            break;
        }
    }
    let pad = "x".repeat(pad);
    let end = per_conn.map_or(u64::MAX, |n| seq + n);
    while seq < end {
        let mut batch = Vec::new();
        let upto = end.min(seq + 100);
        while seq < upto {
            batch.extend_from_slice(&event(
                "HEARTBEAT",
                &[("Seq", &seq.to_string()), ("Pad", &pad)],
                None,
            ));
            seq += 1;
        }
        if stream.write_all(&batch).is_err() {
            return seq;
        }
        sent.fetch_add(batch.len() as u64, Ordering::Relaxed);
    }
    seq
}

/// `redswitch --esl-host ADDR events ARGS…` with stdout and stderr piped.
fn spawn_events(addr: std::net::SocketAddr, extra: &[&str]) -> Child {
    Command::new(REDSWITCH)
        .args(["--esl-host", &addr.to_string(), "events"])
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("redswitch events starts")
}

/// Waits for the child (killing it after `limit`) and returns its status,
/// stdout and stderr.
fn finish(mut child: Child, limit: Duration) -> (std::process::ExitStatus, String, String) {
    use std::io::Read;
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).unwrap();
        s
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("redswitch events still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (status, reader.join().unwrap(), stderr)
}

/// The `Seq` of every output line, which must be contiguous from `from`.
fn assert_contiguous(stdout: &str, from: u64, count: usize) {
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), count, "lines printed");
    for (i, line) in lines.iter().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let seq: u64 = v["Seq"].as_str().unwrap().parse().unwrap();
        assert_eq!(seq, from + i as u64, "line {i}");
    }
}

/// Lines of stderr that `redswitch` itself wrote as its error.
fn error_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with("redswitch: error:"))
        .collect()
}

#[test]
fn count_n_prints_exactly_n_events_and_exits_0_against_a_fast_server() {
    let server = Streamer::start(None, 1, 300);
    let child = spawn_events(server.addr, &["--count", "20000"]);
    let (status, stdout, stderr) = finish(child, Duration::from_secs(120));
    assert!(status.success(), "{status:?}: {stderr}");
    assert_contiguous(&stdout, 0, 20_000);
    assert!(stderr.contains("20000 events in"), "{stderr}");
    assert!(error_lines(&stderr).is_empty(), "{stderr}");
}

#[test]
fn freeswitch_closing_is_exit_1_with_one_error_line_after_every_event() {
    let server = Streamer::start(Some(300), 1, 100);
    let child = spawn_events(server.addr, &[]);
    let (status, stdout, stderr) = finish(child, Duration::from_secs(60));
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_contiguous(&stdout, 0, 300);
    assert_eq!(
        stderr.trim_end(),
        format!(
            "redswitch: error: FreeSWITCH at {} closed the connection",
            server.addr
        ),
        "one line and nothing else"
    );
    // With --count too: the count was not reached.
    let server = Streamer::start(Some(300), 1, 100);
    let child = spawn_events(server.addr, &["--count", "1000"]);
    let (status, stdout, stderr) = finish(child, Duration::from_secs(60));
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_contiguous(&stdout, 0, 300);
    assert_eq!(error_lines(&stderr).len(), 1, "{stderr}");
}

#[test]
fn unreachable_freeswitch_is_exit_1_with_one_error_line() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    for extra in [&[][..], &["--reconnect"][..]] {
        let child = spawn_events(dead, extra);
        let (status, stdout, stderr) = finish(child, Duration::from_secs(60));
        assert_eq!(status.code(), Some(1), "{stderr}");
        assert!(stdout.is_empty());
        let line = stderr.trim_end();
        assert!(!line.contains('\n'), "one line: {stderr}");
        assert!(
            line.starts_with(&format!(
                "redswitch: error: cannot reach FreeSWITCH at {dead}"
            )),
            "{line}"
        );
    }
}

#[test]
fn reconnect_keeps_tailing_across_a_close() {
    // 500 events, a close, then a second connection that streams on.
    let server = Streamer::start(Some(500), 2, 100);
    let child = spawn_events(server.addr, &["--reconnect", "--count", "1000"]);
    let (status, stdout, stderr) = finish(child, Duration::from_secs(60));
    assert!(status.success(), "{status:?}: {stderr}");
    assert_contiguous(&stdout, 0, 1000);
    assert!(error_lines(&stderr).is_empty(), "{stderr}");
}

/// Resident set size of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_stalled_pipe_keeps_memory_bounded_and_loses_nothing() {
    // Events of ~1 KiB offered without end; nobody reads the output.
    const COUNT: usize = 60_000;
    let server = Streamer::start(None, 1, 1000);
    let mut child = spawn_events(server.addr, &["--buffer", "1MiB", "--count", "60000"]);
    let pid = child.id();
    // The server soon cannot write any more: the pipe is full, the client's
    // buffer too, and then the socket buffers.
    let started = Instant::now();
    let mut last = (server.sent(), Instant::now());
    let mut max_rss = 0;
    loop {
        std::thread::sleep(Duration::from_millis(100));
        max_rss = max_rss.max(rss_kib(pid));
        let sent = server.sent();
        if sent != last.0 {
            last = (sent, Instant::now());
        } else if sent > 0 && last.1.elapsed() > Duration::from_secs(2) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the server never stalled ({sent} bytes sent)"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "redswitch events exited while its output was stalled"
        );
    }
    // Watch a while longer: the server stays blocked and memory stays put.
    let plateau = server.sent();
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(100));
        max_rss = max_rss.max(rss_kib(pid));
    }
    assert_eq!(server.sent(), plateau, "nothing more was read");
    let offered = plateau as usize / 1100;
    assert!(
        offered < COUNT,
        "the server got {offered} events out: it was not held back"
    );
    assert!(
        max_rss < 40 * 1024,
        "RSS reached {max_rss} KiB with a 1 MiB buffer"
    );
    // Once the pipe is read, every event comes out, in order.
    let (status, stdout, stderr) = finish(child, Duration::from_secs(120));
    assert!(status.success(), "{status:?}: {stderr}");
    assert_contiguous(&stdout, 0, COUNT);
}

#[test]
fn debug_logs_every_command_and_reply_without_the_password_and_trace_every_event() {
    let server = Streamer::start(None, 1, 10);
    let child = Command::new(REDSWITCH)
        .args([
            "--esl-host",
            &server.addr.to_string(),
            "--esl-password",
            "Sup3rSecret",
            "events",
            "--count",
            "3",
        ])
        .env("RUST_LOG", "redswitch=trace")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("redswitch events starts");
    let (status, _, stderr) = finish(child, Duration::from_secs(60));
    assert!(status.success(), "{stderr}");
    assert!(!stderr.contains("Sup3rSecret"), "{stderr}");
    let sent = |what: &str| {
        stderr
            .lines()
            .any(|l| l.contains("sent to FreeSWITCH") && l.contains(what))
    };
    assert!(sent("\"auth <redacted>\""), "{stderr}");
    assert!(sent("\"event plain BACKGROUND_JOB\""), "{stderr}");
    assert!(sent("\"event plain ALL\""), "{stderr}");
    let replies = stderr
        .lines()
        .filter(|l| l.contains("reply from FreeSWITCH"))
        .count();
    assert_eq!(replies, 3, "auth, two subscriptions: {stderr}");
    let events = stderr
        .lines()
        .filter(|l| l.contains("event from FreeSWITCH") && l.contains("HEARTBEAT"))
        .count();
    assert!(events >= 3, "{stderr}");
}
