//! Metrics, health and readiness of a real agent (redis-server and the
//! FreeSWITCH simulator), scraped over HTTP as Prometheus would.

use redswitch_test_support as support;

use redswitch::ops::OpsServer;
use redswitch::sim::Simulator;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;
use support::eventually;
use support::stack::{JOBS, Stack, job};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

const PATIENCE: Duration = Duration::from_secs(20);

/// Serves the first agent's metrics on a free port.
async fn serve_ops(stack: &Stack) -> (SocketAddr, CancellationToken) {
    let server = OpsServer::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let addr = server.local_addr();
    let stop = CancellationToken::new();
    server.spawn(stack.agents[0].monitor().clone(), stop.clone());
    (addr, stop)
}

/// `GET path`: the status code and the body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    };
    let response = tokio::time::timeout(PATIENCE, exchange)
        .await
        .unwrap_or_else(|_| panic!("GET {path} got no answer"));
    let code = response[9..12].parse().unwrap();
    let (_, body) = response.split_once("\r\n\r\n").unwrap();
    (code, body.to_owned())
}

/// The value of the sample `name` (with its labels, as exposed), or 0 when
/// the series does not exist yet.
async fn sample(addr: SocketAddr, name: &str) -> f64 {
    let (code, body) = get(addr, "/metrics").await;
    assert_eq!(code, 200);
    body.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

async fn wait_sample(addr: SocketAddr, name: &str, check: impl Fn(f64) -> bool) {
    eventually(name, PATIENCE, || async { check(sample(addr, name).await) }).await;
}

async fn wait_status(addr: SocketAddr, path: &str, code: u16, reason: &str) -> String {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (got, body) = get(addr, path).await;
        if got == code && body.contains(reason) {
            return body;
        }
        let last = format!("{got} {body}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path}: wanted {code} {reason:?}, last got {last}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_moves_the_metrics() {
    let stack = Stack::start(1).await;
    let (addr, stop) = serve_ops(&stack).await;
    let (_, body) = get(addr, "/metrics").await;
    for name in [
        "redswitch_jobs_taken_total 0",
        "redswitch_jobs_dead_lettered_total 0",
        "redswitch_jobs_requeued_total 0",
        "redswitch_calls_active 0",
        "redswitch_call_setup_seconds_count 0",
        "redswitch_control_roundtrip_seconds_count 0",
        "redswitch_esl_reconnects_total 0",
        "redswitch_redis_reconnects_total 0",
        "redswitch_outbox_pending 0",
        "redswitch_events_dropped_total 0",
        "redswitch_originates_throttled_total 0",
    ] {
        assert!(body.contains(name), "{name} missing from:\n{body}");
    }
    assert_eq!(get(addr, "/health").await, (200, "ok\n".into()));
    assert_eq!(get(addr, "/ready").await, (200, "ok\n".into()));
    assert_eq!(get(addr, "/nothing").await.0, 404);

    let (mut f, dial_id) = stack.bridged_call("15105625882", "14157697098").await;
    assert_eq!(sample(addr, "redswitch_jobs_taken_total").await, 1.0);
    assert_eq!(sample(addr, "redswitch_calls_active").await, 1.0);
    assert_eq!(
        sample(addr, "redswitch_call_setup_seconds_count").await,
        1.0
    );
    stack.publish(&dial_id, r#"{"type":"hangup"}"#).await;
    f.answer(Some("hangup")).await;
    let causes = f.hangups(&[0, 1]).await;
    wait_sample(addr, "redswitch_calls_active", |v| v == 0.0).await;
    for cause in causes.values() {
        let expected = causes.values().filter(|c| *c == cause).count() as f64;
        let series = format!("redswitch_hangups_total{{cause=\"{cause}\"}}");
        assert_eq!(sample(addr, &series).await, expected, "{series}");
    }
    assert_eq!(
        sample(addr, "redswitch_control_roundtrip_seconds_count").await,
        1.0
    );

    // A bad job is taken and dead-lettered, and never counts as a call
    // for longer than it takes to refuse it.
    stack.push_raw("{not json").await;
    wait_sample(addr, "redswitch_jobs_dead_lettered_total", |v| v == 1.0).await;
    assert_eq!(sample(addr, "redswitch_jobs_taken_total").await, 2.0);
    wait_sample(addr, "redswitch_calls_active", |v| v == 0.0).await;

    // No call id ever becomes a label.
    let (_, body) = get(addr, "/metrics").await;
    assert!(!body.contains(&dial_id), "{body}");
    assert!(body.ends_with("# EOF\n"));
    stop.cancel();
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_follows_freeswitch_redis_and_draining() {
    let mut stack = Stack::start(1).await;
    let (addr, stop) = serve_ops(&stack).await;
    wait_status(addr, "/ready", 200, "ok").await;

    let monitor = stack.agents[0].monitor().clone();
    monitor.set_draining(true);
    wait_status(addr, "/ready", 503, "draining").await;
    assert_eq!(get(addr, "/health").await.0, 200);
    monitor.set_draining(false);
    wait_status(addr, "/ready", 200, "ok").await;

    // FreeSWITCH goes away and comes back on the same address.
    let config = stack.sim.config().clone();
    stack.sim.clone().shutdown().await;
    let body = wait_status(addr, "/ready", 503, "FreeSWITCH").await;
    assert_eq!(body.lines().count(), 1, "{body}");
    assert_eq!(get(addr, "/health").await.0, 200);
    stack.sim = Simulator::start(config).await.unwrap();
    wait_status(addr, "/ready", 200, "ok").await;
    wait_sample(addr, "redswitch_esl_reconnects_total", |v| v >= 1.0).await;

    // Redis goes away and comes back.
    stack.redis.stop();
    wait_status(addr, "/ready", 503, "Redis").await;
    stack.redis.restart();
    wait_status(addr, "/ready", 200, "ok").await;
    wait_sample(addr, "redswitch_redis_reconnects_total", |v| v >= 1.0).await;

    // Stopping the agent drains it: not ready, still alive, while it
    // finishes.
    stack.cancel.cancel();
    assert_eq!(get(addr, "/ready").await.0, 503);
    assert_eq!(get(addr, "/health").await.0, 200);
    stop.cancel();
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_clients_block_neither_scrapes_nor_calls() {
    let stack = Stack::start(1).await;
    let (addr, stop) = serve_ops(&stack).await;
    // One client connects and says nothing, another stops mid-request,
    // a third asks and never reads the answer.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut partial = TcpStream::connect(addr).await.unwrap();
    partial.write_all(b"GET /metr").await.unwrap();
    let mut deaf = TcpStream::connect(addr).await.unwrap();
    deaf.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();

    assert_eq!(get(addr, "/ready").await.0, 200);
    let (mut f, dial_id) = stack.bridged_call("15105625882", "14157697098").await;
    assert_eq!(sample(addr, "redswitch_calls_active").await, 1.0);
    stack.publish(&dial_id, r#"{"type":"hangup"}"#).await;
    f.hangups(&[0, 1]).await;
    wait_sample(addr, "redswitch_calls_active", |v| v == 0.0).await;

    // The silent client is let go once its time for a request is up.
    let mut rest = Vec::new();
    tokio::time::timeout(
        redswitch::ops::server::HEADER_TIMEOUT + PATIENCE,
        silent.read_to_end(&mut rest),
    )
    .await
    .expect("the server closes a connection that sends nothing")
    .ok();
    stop.cancel();
    stack.stop().await;
}

/// Runs the binary with `args` and no Redis or FreeSWITCH it could reach.
fn redswitch(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_redswitch"))
        .args(args)
        .env_remove("REDSWITCH_METRICS_LISTEN")
        .env("PUBSUB_REDIS_URL", "redis://127.0.0.1:1")
        .env("PUBSUB_REDIS_TIMEOUT", "1")
        .output()
        .unwrap()
}

#[test]
fn a_metrics_port_in_use_is_a_clear_error_at_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = redswitch(&["serve", "--metrics-listen", &addr]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].starts_with(&format!(
            "redswitch: error: cannot serve metrics on {addr}: "
        )),
        "{stderr}"
    );
    assert!(lines[0].to_lowercase().contains("in use"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_subcommand_exits_by_readiness() {
    let stack = Stack::start(1).await;
    let (addr, stop) = serve_ops(&stack).await;
    let addr = addr.to_string();
    let probe = |endpoint: &'static str| {
        let addr = addr.clone();
        tokio::task::spawn_blocking(move || {
            redswitch(&["--metrics-listen", &addr, "probe", endpoint])
        })
    };
    let out = probe("ready").await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");

    stack.agents[0].monitor().set_draining(true);
    let out = probe("ready").await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("redswitch: error: /ready: 503 draining"),
        "{stderr}"
    );
    let out = probe("health").await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");

    // Nothing listening: a clear error, exit 1.
    stop.cancel();
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gone = free.local_addr().unwrap().to_string();
    drop(free);
    let out = tokio::task::spawn_blocking(move || {
        redswitch(&["--metrics-listen", &gone, "probe", "health"])
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("redswitch: error: "));
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_reaped_from_a_dead_instance_count_as_requeued() {
    let stack = Stack::start(1).await;
    let (addr, stop) = serve_ops(&stack).await;
    // A dead instance (no liveness key) left a job on its processing list.
    let job = job("15105625882", "14157697098");
    let dial_id = job["dial_id"].as_str().unwrap().to_owned();
    let mut f = support::stack::Follower::start(&stack.redis.url(), &dial_id).await;
    let mut con = stack.redis().await;
    redis::pipe()
        .cmd("RPUSH")
        .arg(format!("{{{JOBS}}}.processing.gone"))
        .arg(job.to_string())
        .cmd("SADD")
        .arg(format!("{{{JOBS}}}.instances"))
        .arg("gone")
        .query_async::<()>(&mut con)
        .await
        .unwrap();
    wait_sample(addr, "redswitch_jobs_requeued_total", |v| v == 1.0).await;
    f.expect_where("answer-event", |v| v["side"] == 1).await;
    assert_eq!(sample(addr, "redswitch_jobs_taken_total").await, 1.0);
    stack.publish(&dial_id, r#"{"type":"hangup"}"#).await;
    f.hangups(&[0, 1]).await;
    stop.cancel();
    stack.stop().await;
}
