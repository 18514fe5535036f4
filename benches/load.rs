//! Load benchmarks: whole processes over loopback, measured from outside.
//!
//! `cargo bench --bench load` runs every scenario; name some to run only
//! those (`cargo bench --bench load -- agent`):
//!
//! - `events`: `redswitch events --count N` against a server that replays
//!   the recorded FreeSWITCH events (2–5 KiB each) as fast as the socket
//!   takes them: events/s end to end, and CPU per event.
//! - `announcement`: the announcement example (answer, play, hang up) as its
//!   own process, driven through the simulator at 100 concurrent calls:
//!   CPU per call.
//! - `legs`: 1,000 connected idle legs on an outbound listener process:
//!   RSS per leg.
//! - `agent`: `redswitch serve` with the simulator and a local
//!   redis-server: 1,000 concurrent calls pushed at 300 calls/s; sustained
//!   calls/s, control round trip (publish → ack) p50/p99/max, RSS per call.
//! - `agent-paced`: the same with 240 jobs pushed at once, paced under the
//!   simulator's default limit of 30 sessions/s: the calls/s the agent
//!   sustains there.
//!
//! CPU is read from `/proc/<pid>/task/*/schedstat` (nanoseconds on CPU) and memory
//! from `/proc/<pid>/status` (VmRSS) of the process under test, so the load
//! generator's own cost is not counted. Linux only.

#[allow(dead_code)]
#[path = "../examples/announcement.rs"]
mod announcement;

use futures::StreamExt;
use redswitch::commands::demo::RedisServer;
use redswitch::esl::EventFormat;
use redswitch::switch::{Call, InboundClient, InboundConfig, OutboundConfig, OutboundListener};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

const REDSWITCH: &str = env!("CARGO_BIN_EXE_redswitch");
const RECORDED: &[u8] = include_bytes!("data/04-outbound-A.fs-stream");

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn wait_port(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{addr} never accepted");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process killed on drop.
struct Proc(Child);

impl Proc {
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Nanoseconds the process has spent on a CPU: the sum over its threads
/// (`/proc/<pid>/schedstat` alone is the main thread only).
fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// CPU time (user + system) of every child process reaped so far.
fn children_cpu_ns() -> u64 {
    // SAFETY: getrusage only writes into the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) } != 0 {
        return 0;
    }
    let ns = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    ns(usage.ru_utime) + ns(usage.ru_stime)
}

/// Resident set size in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn start_sim() -> (Proc, SocketAddr) {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let child = Command::new(REDSWITCH)
        .args([
            "sim",
            "--esl-listen",
            &addr.to_string(),
            "--password",
            "ClueCon",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("redswitch sim starts");
    wait_port(addr);
    (Proc(child), addr)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Plain events of the recorded outbound stream, as frames.
fn recorded_event_frames() -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = RECORDED;
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
            out.extend_from_slice(&rest[start..head_end + len]);
        }
        rest = &rest[head_end + len..];
    }
    out
}

/// Recorded events per replayed batch (the 14 recorded events, 64 times).
const BATCH_EVENTS: u64 = 14 * 64;

/// A fake FreeSWITCH that greets, accepts any password and subscription,
/// then streams the recorded events until the client goes away: at `rate`
/// events/s, or as fast as the socket takes them.
fn replay_server(rate: Option<u64>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let batch: Vec<u8> = recorded_event_frames().repeat(64);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let batch = batch.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let _ = stream.write_all(b"Content-Type: auth/request\n\n");
                // Answer every command with +OK until the subscription to
                // ALL (the client first subscribes BACKGROUND_JOB itself).
                let mut line = String::new();
                let mut subscribed = false;
                while !subscribed {
                    let mut command = String::new();
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\n" {
                            break;
                        }
                        command.push_str(&line);
                    }
                    subscribed = command.starts_with("event") && command.contains("ALL");
                    let _ = stream.write_all(b"Content-Type: command/reply\nReply-Text: +OK\n\n");
                }
                let started = Instant::now();
                let mut sent = 0u64;
                while stream.write_all(&batch).is_ok() {
                    sent += BATCH_EVENTS;
                    if let Some(rate) = rate {
                        let due = started + Duration::from_secs_f64(sent as f64 / rate as f64);
                        std::thread::sleep(due.saturating_duration_since(Instant::now()));
                    }
                }
            });
        }
    });
    addr
}

fn bench_events() {
    // As fast as the socket goes (what the tool can take when FreeSWITCH
    // outruns it: it drops events rather than stall), then at the target
    // rate (does it keep up without dropping?).
    for rate in [None, Some(150_000)] {
        events_run(rate, 1_500_000);
    }
}

fn events_run(rate: Option<u64>, count: u64) {
    let addr = replay_server(rate);
    let child = Command::new(REDSWITCH)
        .args([
            "--esl-host",
            &addr.to_string(),
            "events",
            "--count",
            &count.to_string(),
        ])
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("redswitch events starts");
    let mut child = Proc(child);
    let started = Instant::now();
    let mut stderr = String::new();
    if let Some(mut err) = child.0.stderr.take() {
        let _ = err.read_to_string(&mut stderr);
    }
    // The child's whole CPU time (every thread), read once it has been
    // reaped: the only child reaped in between is this one.
    let cpu0 = children_cpu_ns();
    let _ = child.0.wait();
    let cpu = children_cpu_ns().saturating_sub(cpu0);
    let wall = started.elapsed();
    let offered = rate.map_or_else(
        || "as fast as the socket goes".to_owned(),
        |r| format!("offered at {r} events/s"),
    );
    println!("events ({offered}): {}", stderr.trim().replace('\n', "; "));
    println!(
        "events ({offered}): {count} printed in {:.2} s wall, {:.0} events/s; {:.2} µs CPU per printed event (whole redswitch events process, JSON output included)",
        wall.as_secs_f64(),
        count as f64 / wall.as_secs_f64(),
        cpu as f64 / 1000.0 / count as f64
    );
}

/// Runs in a child process: the outbound listener under test.
async fn serve_role(role: &str, addr: &str) -> Result<(), BoxError> {
    let listener = OutboundListener::bind(addr, OutboundConfig::default()).await?;
    println!("ready");
    let shutdown = CancellationToken::new();
    match role {
        "announcement" => {
            announcement::serve_on(listener, "tone_stream://%(100,0,440)", shutdown).await
        }
        _ => {
            listener
                .serve(
                    |call: Call| async move {
                        call.closed().await;
                        Ok(())
                    },
                    shutdown,
                )
                .await
        }
    }
    Ok(())
}

fn spawn_role(role: &str) -> (Proc, SocketAddr) {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut child = Command::new(std::env::current_exe().expect("own path"))
        .args(["--role", role, &addr.to_string()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("role process starts");
    let mut ready = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut ready);
    }
    (Proc(child), addr)
}

/// Originates `total` calls through the simulator into `socket`, at most
/// `concurrent` at once; returns when each has hung up (or, with `hold`,
/// once all are answered, leaving them up).
async fn drive_calls(
    esl: SocketAddr,
    socket: SocketAddr,
    total: usize,
    concurrent: usize,
    hold: bool,
) -> Result<Duration, BoxError> {
    let (client, mut events) =
        InboundClient::connect(InboundConfig::new(esl.to_string(), "ClueCon")).await?;
    client
        .subscribe(EventFormat::Plain, ["CHANNEL_HANGUP_COMPLETE"])
        .await?;
    let waiting: Arc<std::sync::Mutex<HashMap<String, tokio::sync::oneshot::Sender<()>>>> =
        Arc::default();
    let router = waiting.clone();
    tokio::spawn(async move {
        while let Some(e) = events.recv().await {
            if let Some(id) = e.unique_id()
                && let Some(tx) = router.lock().expect("lock").remove(id)
            {
                let _ = tx.send(());
            }
        }
    });
    let slots = Arc::new(Semaphore::new(concurrent));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        let permit = slots.clone().acquire_owned().await?;
        let uuid = uuid::Uuid::new_v4().to_string();
        let (tx, rx) = tokio::sync::oneshot::channel();
        waiting.lock().expect("lock").insert(uuid.clone(), tx);
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let cmd = format!("originate {{origination_uuid={uuid}}}sofia/gateway/bench/1999{i:07} '&socket({socket} async full)'");
            let result = client.bgapi(&cmd).await;
            if !hold {
                let _ = rx.await;
            }
            drop(permit);
            result.map(|r| r.is_ok()).unwrap_or(false)
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += usize::from(t.await.unwrap_or(false));
    }
    assert_eq!(ok, total, "every call placed");
    Ok(started.elapsed())
}

fn bench_announcement(rt: &tokio::runtime::Runtime) {
    let (_sim, esl) = start_sim();
    let (app, socket) = spawn_role("announcement");
    // Warm up (first connections, allocator) before measuring.
    rt.block_on(drive_calls(esl, socket, 200, 100, false))
        .expect("warm-up calls");
    let calls = 3000;
    let cpu0 = cpu_ns(app.pid());
    let wall = rt
        .block_on(drive_calls(esl, socket, calls, 100, false))
        .expect("calls");
    let cpu = cpu_ns(app.pid()) - cpu0;
    println!(
        "announcement: {calls} calls at 100 concurrent in {:.2} s ({:.0} calls/s); {:.0} µs CPU per call (connect → answer → play → hangup → close) in the app process",
        wall.as_secs_f64(),
        calls as f64 / wall.as_secs_f64(),
        cpu as f64 / 1000.0 / calls as f64
    );
}

fn bench_legs(rt: &tokio::runtime::Runtime) {
    let (_sim, esl) = start_sim();
    let (app, socket) = spawn_role("idle");
    rt.block_on(drive_calls(esl, socket, 20, 20, true))
        .expect("warm-up legs");
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_kib(app.pid());
    let legs = 1000;
    rt.block_on(drive_calls(esl, socket, legs, 200, true))
        .expect("legs");
    std::thread::sleep(Duration::from_secs(1));
    let after = rss_kib(app.pid());
    println!(
        "legs: {legs} idle connected legs: RSS {before} KiB -> {after} KiB, {:.1} KiB per leg",
        (after.saturating_sub(before)) as f64 / legs as f64
    );
}

async fn agent_load(
    redis_url: &str,
    agent_pid: u32,
    calls: usize,
    rate: f64,
) -> Result<(), BoxError> {
    let client = redis::Client::open(redis_url)?;
    let mut con = client.get_multiplexed_async_connection().await?;
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.psubscribe("bench-*").await?;
    let (tx, mut rx) =
        tokio::sync::mpsc::unbounded_channel::<(String, serde_json::Value, Instant)>();
    tokio::spawn(async move {
        let mut messages = pubsub.on_message();
        while let Some(msg) = messages.next().await {
            let at = Instant::now();
            let channel = msg.get_channel_name().to_owned();
            let Ok(payload) = msg.get_payload::<String>() else {
                continue;
            };
            let Ok(v) = serde_json::from_str(&payload) else {
                continue;
            };
            if tx.send((channel, v, at)).is_err() {
                return;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss0 = rss_kib(agent_pid);

    // Push at `rate` calls/s; count bridged calls as their answer-event side 1 arrives.
    let mut pushed_at = HashMap::new();
    let mut setup = Vec::with_capacity(calls);
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut next = Instant::now();
    let mut i = 0;
    while setup.len() < calls {
        if i < calls && Instant::now() >= next {
            let dial_id = format!("bench-{i}");
            let job = serde_json::json!({
                "type": "asp-call", "call_provider": "bench", "callee_number": format!("1415{i:07}"),
                "caller_id_lega": "15550000001", "caller_id_legb": "15550000002",
                "caller_number": format!("1510{i:07}"), "dial_id": dial_id, "org_id": "bench", "user_id": format!("u{i}"),
            });
            redis::cmd("RPUSH")
                .arg("talkiq-asp.calls")
                .arg(job.to_string())
                .query_async::<()>(&mut con)
                .await?;
            pushed_at.insert(dial_id, Instant::now());
            i += 1;
            next += interval;
            continue;
        }
        let wait = if i < calls {
            next.saturating_duration_since(Instant::now())
        } else {
            Duration::from_secs(30)
        };
        match tokio::time::timeout(wait, rx.recv()).await {
            Ok(Some((channel, v, at))) => {
                if v["type"] == "answer-event" && v["side"] == 1 {
                    setup.push(at - pushed_at[&channel]);
                } else if v["type"] == "hangup-event" || v["type"] == "failure" {
                    return Err(format!("{channel} ended early: {v}").into());
                }
            }
            Ok(None) => return Err("pub/sub closed".into()),
            Err(_) if i >= calls => {
                return Err(format!("only {} of {calls} calls bridged", setup.len()).into());
            }
            Err(_) => {}
        }
    }
    let elapsed = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss1 = rss_kib(agent_pid);
    setup.sort();

    // Control round trips: send-dtmf on every call, 20 in flight.
    let mut rtt = Vec::with_capacity(calls);
    let mut sent: HashMap<String, Instant> = HashMap::new();
    let mut k = 0;
    while rtt.len() < calls {
        while k < calls && sent.len() < 20 {
            let dial_id = format!("bench-{k}");
            sent.insert(dial_id.clone(), Instant::now());
            redis::cmd("PUBLISH")
                .arg(&dial_id)
                .arg(r#"{"type":"send-dtmf","digits":"1","side":0}"#)
                .query_async::<()>(&mut con)
                .await?;
            k += 1;
        }
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some((channel, v, at))) if v["type"] == "ack" || v["type"] == "error" => {
                if let Some(t0) = sent.remove(&channel) {
                    rtt.push(at - t0);
                }
            }
            Ok(Some(_)) => {}
            _ => return Err(format!("control answers stopped after {}", rtt.len()).into()),
        }
    }
    rtt.sort();
    for k in 0..calls {
        redis::cmd("PUBLISH")
            .arg(format!("bench-{k}"))
            .arg(r#"{"type":"hangup"}"#)
            .query_async::<()>(&mut con)
            .await?;
    }
    println!(
        "agent: {calls} concurrent calls pushed at {rate:.0}/s: all bridged in {:.2} s ({:.0} calls/s sustained); setup (push → callee answered) p50 {:?} p99 {:?}",
        elapsed.as_secs_f64(),
        calls as f64 / elapsed.as_secs_f64(),
        percentile(&setup, 0.5),
        percentile(&setup, 0.99)
    );
    println!(
        "agent: control round trip (publish → ack) p50 {:?} p99 {:?} max {:?}",
        percentile(&rtt, 0.5),
        percentile(&rtt, 0.99),
        rtt.last().copied().unwrap_or_default()
    );
    println!(
        "agent: RSS {rss0} KiB idle -> {rss1} KiB with {calls} calls: {:.1} KiB per concurrent call",
        rss1.saturating_sub(rss0) as f64 / calls as f64
    );
    Ok(())
}

/// `redswitch serve` against the simulator at its default sessions-per-
/// second limit, `calls` jobs pushed at `rate` per second.
fn bench_agent(rt: &tokio::runtime::Runtime, calls: usize, rate: f64) {
    let redis = rt
        .block_on(RedisServer::start())
        .expect("redis-server starts (apt-get install redis-server)");
    let redis_url = redis.url().to_owned();
    let (_sim, esl) = start_sim();
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let agent = Command::new(REDSWITCH)
        .arg("serve")
        .env("ESL_URL", esl.to_string())
        .env("PUBSUB_REDIS_URL", &redis_url)
        .env("REDSWITCH_LISTEN", listen.to_string())
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("redswitch serve starts");
    let agent = Proc(agent);
    wait_port(listen);
    rt.block_on(agent_load(&redis_url, agent.pid(), calls, rate))
        .expect("agent load");
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, role, addr, ..] = args.as_slice()
        && flag == "--role"
    {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        if let Err(e) = rt.block_on(serve_role(role, addr)) {
            eprintln!("{role}: {e}");
        }
        return;
    }
    // `cargo test --all-targets` runs bench targets without `--bench`:
    // these scenarios take minutes and are measurements, not tests.
    if !args.iter().any(|a| a == "--bench") {
        println!("load benchmarks: run them with `cargo bench --bench load`");
        return;
    }
    let wanted: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let run = |name: &str| wanted.is_empty() || wanted.contains(&name);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    if run("events") {
        bench_events();
    }
    if run("announcement") {
        bench_announcement(&rt);
    }
    if run("legs") {
        bench_legs(&rt);
    }
    if run("agent") {
        bench_agent(&rt, 1000, 300.0);
    }
    if run("agent-paced") {
        // Everything at once: what the pacing sustains under the
        // switch's default limit (30 sessions/s, two per call).
        bench_agent(&rt, 240, 100_000.0);
    }
}
