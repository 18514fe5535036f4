//! `examples/ivr_dialer.rs` end to end against the simulator: the call to
//! a `1555700…` number is answered, the menu digit reaches the far end, the
//! far end's `1234#` is heard, the recording is a WAV of the asked length.

#[allow(dead_code)] // the example's `main` is not used here
#[path = "../examples/ivr_dialer.rs"]
mod ivr_dialer;

use clap::Parser;
use redswitch::sim::{SimConfig, Simulator};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ivr_dialer_hears_the_digits_and_records_the_answer() {
    let sim = Simulator::start(SimConfig {
        esl_listen: "127.0.0.1:0".parse().unwrap(),
        ring_time: Duration::from_millis(20),
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("answer.wav");
    let args = ivr_dialer::Args::parse_from([
        "ivr_dialer",
        "--esl-host",
        "127.0.0.1",
        "--esl-port",
        &sim.esl_addr().port().to_string(),
        "--esl-password",
        "ClueCon",
        "--listen",
        "127.0.0.1:0",
        "--to",
        "sofia/gateway/gw/15557001234",
        "--navigate",
        "19",
        "--record",
        record.to_str().unwrap(),
        "--record-secs",
        "2",
    ]);
    let report = tokio::time::timeout(Duration::from_secs(20), ivr_dialer::run(args))
        .await
        .expect("the example finished within 20 s")
        .expect("the example succeeded");
    let line = serde_json::to_string(&report).unwrap();
    let json: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(json["digits_heard"], "1234", "{line}");
    assert_eq!(json["digits_end"], "terminator", "{line}");
    assert_eq!(json["digits_sent"], "19", "{line}");
    assert_eq!(json["recording"], record.to_str().unwrap(), "{line}");
    assert_eq!(json["record_outcome"], "timeout", "{line}");
    let len = redswitch_test_support::voice::recorded_length(&record).await;
    assert!(
        len >= Duration::from_millis(1900) && len <= Duration::from_millis(2300),
        "{len:?}"
    );
    // The call is over.
    redswitch_test_support::assert_no_channels(sim.esl_addr()).await;
    sim.shutdown().await;
}
