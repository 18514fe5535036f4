//! The real `redswitch` binary: `push --follow`, `control`, `check`,
//! `demo`, and bad configuration, against a real redis-server, the
//! simulator and an agent started in the test.

use redswitch_test_support as support;

use serde_json::Value;
use std::process::Output;
use std::time::Duration;
use support::redis_server::free_port;
use support::stack::Stack;

/// Runs the binary with `args` (no inherited configuration from the
/// environment) and returns its output; fails the test after `limit`.
async fn redswitch(args: Vec<String>, limit: Duration) -> Output {
    support::bin::run(env!("CARGO_BIN_EXE_redswitch"), args, limit).await
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The JSON lines of stdout.
fn json_lines(out: &Output) -> Vec<Value> {
    text(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// A failure's stderr: one `redswitch: error:` line, no panic.
fn one_error_line(out: &Output) -> String {
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "expected failure; stderr: {stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
    let errors: Vec<_> = stderr
        .lines()
        .filter(|l| l.starts_with("redswitch: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "stderr: {stderr}");
    errors[0].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_follow_prints_the_call_until_it_ends() {
    let stack = Stack::start(1).await;
    // 1555487…: the callee answers, then hangs up after 2 s.
    let out = redswitch(
        args(&[
            "--redis-url",
            &stack.redis.url(),
            "push",
            "--follow",
            "--dial-id",
            "cli-follow-1",
            "--callee-number",
            "15554871234",
            "--timeout",
            "12",
        ]),
        Duration::from_secs(14),
    )
    .await;
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let events = json_lines(&out);
    let kinds: Vec<_> = events
        .iter()
        .map(|v| {
            format!(
                "{}{}",
                v["type"].as_str().unwrap(),
                v.get("side").map(|s| s.to_string()).unwrap_or_default()
            )
        })
        .collect();
    assert_eq!(
        &kinds[..3],
        ["call-start", "answer-event0", "answer-event1"],
        "{kinds:?}"
    );
    let mut hangups: Vec<_> = kinds[3..].to_vec();
    hangups.sort();
    assert_eq!(hangups, ["hangup-event0", "hangup-event1"], "{kinds:?}");
    assert_eq!(events[0]["dial_id"], "cli-follow-1");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_prints_the_ack_or_fails_when_nothing_answers() {
    let stack = Stack::start(1).await;
    let (mut f, dial_id) = stack.bridged_call("15105625882", "14157697098").await;
    let out = redswitch(
        args(&[
            "--redis-url",
            &stack.redis.url(),
            "control",
            &dial_id,
            "hangup",
        ]),
        Duration::from_secs(10),
    )
    .await;
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert_eq!(
        json_lines(&out),
        [serde_json::json!({"type":"ack","event":"hangup"})]
    );
    f.hangups(&[0, 1]).await;

    // The agent's refusal: printed, and a non-zero exit.
    let out = redswitch(
        args(&[
            "--redis-url",
            &stack.redis.url(),
            "control",
            &dial_id,
            "send-dtmf",
            "digits=12E",
            "side=1",
        ]),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(json_lines(&out)[0]["type"], "error");
    let line = one_error_line(&out);
    assert!(line.contains("refused"), "{line}");

    // Nobody owns the channel: no answer within the timeout.
    let out = redswitch(
        args(&[
            "--redis-url",
            &stack.redis.url(),
            "control",
            "nobody-owns-this",
            "hangup",
            "--timeout",
            "1",
        ]),
        Duration::from_secs(10),
    )
    .await;
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    let line = one_error_line(&out);
    assert!(line.contains("no ack or error"), "{line}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_what_it_reached() {
    let stack = Stack::start(0).await;
    let esl_port = stack.sim.esl_addr().port().to_string();
    let ok = redswitch(
        args(&[
            "--redis-url",
            &stack.redis.url(),
            "--esl-port",
            &esl_port,
            "check",
        ]),
        Duration::from_secs(10),
    )
    .await;
    let stdout = text(&ok.stdout);
    assert!(ok.status.success(), "{stdout} {}", text(&ok.stderr));
    assert!(stdout.contains("redis: ok"), "{stdout}");
    assert!(stdout.contains("freeswitch: ok"), "{stdout}");
    assert!(stdout.contains("FreeSWITCH Version 1.10"), "{stdout}");

    // Redis unreachable.
    let dead_redis = format!("redis://127.0.0.1:{}", free_port(false));
    let out = redswitch(
        args(&[
            "--redis-url",
            &dead_redis,
            "--redis-timeout",
            "1",
            "--esl-port",
            &esl_port,
            "check",
        ]),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("freeswitch: ok"), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("redis: ") && !l.starts_with("redis: ok")),
        "{stdout}"
    );
    one_error_line(&out);

    // FreeSWITCH unreachable (and a wrong password is refused too).
    let dead_esl = free_port(false).to_string();
    for extra in [
        vec!["--esl-port", dead_esl.as_str()],
        vec!["--esl-port", esl_port.as_str(), "--esl-password", "wrong"],
    ] {
        let mut argv = args(&["--redis-url", &stack.redis.url()]);
        argv.extend(args(&extra));
        argv.push("check".into());
        let out = redswitch(argv, Duration::from_secs(15)).await;
        assert_eq!(out.status.code(), Some(1), "{extra:?}");
        let stdout = text(&out.stdout);
        assert!(stdout.contains("redis: ok"), "{stdout}");
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with("freeswitch: ") && !l.starts_with("freeswitch: ok")),
            "{extra:?}: {stdout}"
        );
        let line = one_error_line(&out);
        assert!(!line.contains("wrong"), "password echoed: {line}");
    }
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_is_one_clear_line() {
    let dead_redis = format!("redis://127.0.0.1:{}", free_port(false));
    for (argv, must_contain) in [
        (
            vec!["--redis-url", "not a url", "--listen", "127.0.0.1:0"],
            "invalid redis url",
        ),
        (
            vec!["--redis-url", "redis://:secret@127.0.0.1:99999"],
            "invalid redis url",
        ),
        (
            vec![
                "--redis-url",
                &dead_redis,
                "--redis-timeout",
                "1",
                "--listen",
                "127.0.0.1:0",
                "serve",
            ],
            "cannot reach redis at redis://127.0.0.1:",
        ),
        (
            vec!["--redis-url", &dead_redis, "--redis-timeout", "1", "push"],
            "cannot reach redis at redis://127.0.0.1:",
        ),
        (
            vec!["--esl-host", "fs.example:99999", "--redis-url", &dead_redis],
            "esl-host",
        ),
    ] {
        let out = redswitch(args(&argv), Duration::from_secs(10)).await;
        let line = one_error_line(&out);
        assert!(
            line.to_lowercase().contains(must_contain),
            "{argv:?}: {line}"
        );
        assert!(!line.contains("secret"), "password shown: {line}");
    }

    // Values clap refuses: its own usage error, exit 2.
    for argv in [
        vec!["--esl-port", "70000", "check"],
        vec!["--redis-timeout", "soon", "check"],
        vec!["--listen", "nowhere", "check"],
        vec!["--allow", "10.0.0.0/33", "check"],
    ] {
        let out = redswitch(args(&argv), Duration::from_secs(10)).await;
        assert_eq!(out.status.code(), Some(2), "{argv:?}");
        let stderr = text(&out.stderr);
        assert!(stderr.starts_with("error:"), "{argv:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_a_call_to_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let dir_arg = dir.path().to_str().unwrap().to_owned();
    let out = redswitch(
        args(&[
            "--recordings-dir",
            &dir_arg,
            "--media-dir",
            &dir_arg,
            "demo",
            "--talk-time",
            "1",
        ]),
        Duration::from_secs(14),
    )
    .await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    for needle in [
        r#""type":"call-start""#,
        r#""type":"answer-event","side":0"#,
        r#""type":"answer-event","side":1"#,
        r#"{"type":"hangup"}"#,
        r#""type":"ack","event":"hangup""#,
        "demo finished",
    ] {
        assert!(stdout.contains(needle), "{needle} missing from:\n{stdout}");
    }
    assert_eq!(
        stdout.matches(r#""type":"hangup-event""#).count(),
        2,
        "{stdout}"
    );
}
