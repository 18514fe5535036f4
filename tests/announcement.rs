//! `examples/announcement.rs` end to end against the FreeSWITCH simulator:
//! calls originated over the inbound client run `&socket(...)` into the
//! example's listener, which answers, plays and hangs up. Checked through an
//! inbound event subscription and the simulator's own state.

#[allow(dead_code)] // the example's `main` and `run` are not used here
#[path = "../examples/announcement.rs"]
mod announcement;

use redswitch::esl::EventFormat;
use redswitch::sim::{SimConfig, Simulator};
use redswitch::switch::{InboundClient, InboundConfig, OutboundConfig, OutboundListener};
use std::collections::HashMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announcement_answers_plays_and_hangs_up_every_call() {
    let sim = Simulator::start(SimConfig {
        esl_listen: "127.0.0.1:0".parse().unwrap(),
        password: "ClueCon".into(),
        ring_time: Duration::from_millis(20),
        ..Default::default()
    })
    .await
    .unwrap();
    let listener = OutboundListener::bind("127.0.0.1:0", OutboundConfig::default())
        .await
        .unwrap();
    let app_addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let media = "tone_stream://%(100,0,440)";
    tokio::spawn(announcement::serve_on(listener, media, stop.clone()));

    let (client, mut events) =
        InboundClient::connect(InboundConfig::new(sim.esl_addr().to_string(), "ClueCon"))
            .await
            .unwrap();
    client
        .subscribe(
            EventFormat::Plain,
            [
                "CHANNEL_ANSWER",
                "CHANNEL_EXECUTE_COMPLETE",
                "PLAYBACK_START",
                "PLAYBACK_STOP",
                "CHANNEL_HANGUP_COMPLETE",
            ],
        )
        .await
        .unwrap();

    const CALLS: usize = 10;
    let mut jobs = Vec::new();
    for i in 0..CALLS {
        let uuid = uuid::Uuid::new_v4().to_string();
        let client = client.clone();
        // The socket app must be quoted, or originate splits it (trace 07).
        let cmd = format!(
            "originate {{origination_uuid={uuid}}}loopback/1415555{i:04} '&socket({app_addr} async full)'"
        );
        jobs.push((uuid, tokio::spawn(async move { client.bgapi(&cmd).await })));
    }
    let mut uuids = Vec::new();
    for (uuid, job) in jobs {
        let r = job.await.unwrap().unwrap();
        assert_eq!(r.result(), Ok(uuid.as_str()), "originate {uuid}");
        uuids.push(uuid);
    }

    // What each leg went through, as the inbound subscription saw it.
    let mut seen: HashMap<String, Vec<String>> = HashMap::new();
    let mut done = 0;
    while done < CALLS {
        let e = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .expect("calls did not finish within 10 s")
            .expect("event stream ended");
        let Some(uuid) = e.unique_id() else { continue };
        if !uuids.iter().any(|u| u == uuid) {
            continue;
        }
        let what = match e.name() {
            "CHANNEL_EXECUTE_COMPLETE" => format!(
                "{}={}",
                e.header("Application").unwrap_or_default(),
                e.header("Application-Response").unwrap_or_default()
            ),
            "CHANNEL_HANGUP_COMPLETE" => {
                done += 1;
                format!("hangup={}", e.hangup_cause().unwrap_or_default())
            }
            other => other.to_owned(),
        };
        seen.entry(uuid.to_owned()).or_default().push(what);
    }
    for uuid in &uuids {
        let steps = &seen[uuid];
        let pos = |s: &str| {
            steps
                .iter()
                .position(|x| x == s)
                .unwrap_or_else(|| panic!("{uuid}: no {s} in {steps:?}"))
        };
        let answered = pos("CHANNEL_ANSWER");
        let started = pos("PLAYBACK_START");
        let stopped = pos("PLAYBACK_STOP");
        let played = pos("playback=FILE PLAYED");
        let hangup = pos("hangup=NORMAL_CLEARING");
        assert!(
            answered < started && started < stopped && stopped < played && played < hangup,
            "{uuid}: {steps:?}"
        );
    }
    // The simulator agrees: none of the channels is left.
    redswitch_test_support::assert_no_channels(sim.esl_addr()).await;
    stop.cancel();
    sim.shutdown().await;
}
