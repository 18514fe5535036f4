//! `redswitch events` (the library function behind the subcommand) against a
//! fake FreeSWITCH: subscriptions, filters, JSON lines, `--count`, errors.

use redswitch_test_support::fake_switch as support;

use clap::Parser;
use redswitch::commands::events::{EventsArgs, Summary, run_to};
use redswitch::switch::{Error, InboundConfig};
use std::time::Duration;
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

async fn run<W: std::io::Write>(a: (InboundConfig, EventsArgs), out: W) -> Result<Summary, Error> {
    run_to(a.0, a.1, out).await
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
    let mut out = Vec::new();
    let summary = tokio::time::timeout(Duration::from_secs(20), run(a, &mut out))
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
    let mut out = Vec::new();
    let summary = tokio::time::timeout(Duration::from_secs(5), run(a, &mut out))
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
    let err = run(args(&["--esl-host", &dead.to_string()]), Vec::new())
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
    let err = run(
        args(&[
            "--esl-host",
            &fake.addr.to_string(),
            "--esl-password",
            "nope",
        ]),
        Vec::new(),
    )
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
    let printer = tokio::spawn(async move {
        let mut out = Vec::new();
        let s = run(a, &mut out).await;
        (s, out)
    });
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
        .unwrap();
    dialer.abort();
    assert_eq!(summary.unwrap().events, 3);
    let text = String::from_utf8(out).unwrap();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["Event-Name"], "CHANNEL_ANSWER");
        assert_eq!(v["variable_dial_id"], "evtest");
    }
    sim.shutdown().await;
}
