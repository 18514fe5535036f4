//! The binary's logs as a file or a pipe gets them: no colour codes, each
//! call's lines carry its `dial_id` (and a leg's its side and uuid), and a
//! bad job is logged once.

use redswitch_test_support as support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;
use support::eventually;
use support::redis_server::RedisServer;
use support::stack::{Follower, JOBS, job};

const PATIENCE: Duration = Duration::from_secs(20);

/// Collects a child's stderr lines on a thread.
fn stderr_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Lines received until one contains `wanted` (panics after PATIENCE).
fn read_until(lines: &mpsc::Receiver<String>, wanted: &str) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        match lines.recv_timeout(PATIENCE) {
            Ok(line) => {
                let done = line.contains(wanted);
                seen.push(line);
                if done {
                    return seen;
                }
            }
            Err(_) => panic!("no log line with {wanted:?}; got:\n{}", seen.join("\n")),
        }
    }
}

fn stop(mut child: Child) {
    // SIGTERM, as a supervisor would; the agent stops by itself.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let _ = child.wait();
}

#[test]
fn logs_to_a_pipe_have_no_colour() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_redswitch"))
        .args(["sim", "--esl-listen", "127.0.0.1:0"])
        .env_remove("NO_COLOR")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = stderr_lines(&mut child);
    let seen = read_until(&lines, "listening");
    stop(child);
    for line in seen {
        assert!(!line.contains('\u{1b}'), "colour code in {line:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_log_their_dial_id_and_bad_jobs_are_logged_once() {
    let redis = RedisServer::start();
    let sim = support::sim_client::quick_sim().await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_redswitch"))
        .arg("serve")
        .env("RUST_LOG", "redswitch=debug")
        .env("ESL_URL", sim.esl_addr().to_string())
        .env("PUBSUB_REDIS_URL", redis.url())
        .env("REDSWITCH_LISTEN", "127.0.0.1:0")
        .env("REDSWITCH_ALLOW", "127.0.0.0/8")
        .env_remove("REDSWITCH_ADVERTISE")
        .env_remove("REDSWITCH_METRICS_LISTEN")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = stderr_lines(&mut child);
    read_until(&lines, "agent started");

    let push = |raw: String| {
        let url = redis.url();
        async move {
            let client = redis::Client::open(url).unwrap();
            let mut con = client.get_multiplexed_async_connection().await.unwrap();
            redis::cmd("RPUSH")
                .arg(JOBS)
                .arg(raw)
                .query_async::<()>(&mut con)
                .await
                .unwrap();
        }
    };
    push(r#"{"type":"asp-call","dial_id":"bad-one"}"#.into()).await;
    let job = job("15105625882", "14157697098");
    let dial_id = job["dial_id"].as_str().unwrap().to_owned();
    let mut f = Follower::start(&redis.url(), &dial_id).await;
    push(job.to_string()).await;
    f.expect_where("answer-event", |v| v["side"] == 1).await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("PUBLISH")
        .arg(&dial_id)
        .arg(r#"{"type":"hangup"}"#)
        .query_async::<()>(&mut con)
        .await
        .unwrap();
    f.hangups(&[0, 1]).await;
    let seen = read_until(&lines, "call ended");
    eventually("the dead letter", PATIENCE, || async {
        let mut con = client.get_multiplexed_async_connection().await.unwrap();
        let n: i64 = redis::cmd("LLEN")
            .arg(format!("{JOBS}.dead"))
            .query_async(&mut con)
            .await
            .unwrap();
        n == 1
    })
    .await;
    stop(child);
    let mut seen = seen;
    seen.extend(lines.try_iter());
    let text = seen.join("\n");

    let bad: Vec<&String> = seen.iter().filter(|l| l.contains("bad job")).collect();
    assert_eq!(bad.len(), 1, "the bad job must be logged once:\n{text}");
    let ended = seen.iter().find(|l| l.contains("call ended")).unwrap();
    assert!(
        ended.contains(&format!("call{{dial_id={dial_id}}}")),
        "{ended}"
    );
    assert!(
        seen.iter()
            .any(|l| l.contains(&format!("call{{dial_id={dial_id}}}:leg{{side=1 uuid="))),
        "no line in the callee leg's span:\n{text}"
    );
    sim.shutdown().await;
}
