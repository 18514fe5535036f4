//! Every control message of SPEC §5, published through a real redis-server
//! on a live call's channel the way a controller would, with its effect
//! checked in the simulator's channel state (not just by the `ack`), and
//! every bad control message answered by one `error` with nothing reaching
//! FreeSWITCH.

use redswitch_test_support as support;

use redswitch::sim::{ChannelSnapshot, EavesdropMode};
use serde_json::json;
use std::time::Duration;
use support::stack::{Follower, Stack, job};

/// Publishes `msg` and returns its one answer (`ack` or `error`).
async fn control(stack: &Stack, f: &mut Follower, msg: serde_json::Value) -> serde_json::Value {
    stack.publish(&f.dial_id.clone(), &msg.to_string()).await;
    f.answer(msg["type"].as_str()).await
}

async fn ack(stack: &Stack, f: &mut Follower, msg: serde_json::Value) {
    let answer = control(stack, f, msg.clone()).await;
    assert_eq!(answer["type"], "ack", "{msg} was answered {answer}");
}

async fn error(stack: &Stack, f: &mut Follower, msg: serde_json::Value) -> String {
    let answer = control(stack, f, msg.clone()).await;
    assert_eq!(answer["type"], "error", "{msg} was answered {answer}");
    answer["reason"].as_str().unwrap().to_owned()
}

/// Waits until the barger's channel eavesdrops on `target` in `mode`.
async fn eavesdrop_mode(
    stack: &Stack,
    dial_id: &str,
    target: &str,
    mode: EavesdropMode,
) -> ChannelSnapshot {
    stack
        .wait_leg(dial_id, 2, &format!("eavesdrop {mode:?}"), |c| {
            c.eavesdrop
                .as_ref()
                .is_some_and(|e| e.target == target && e.mode == mode)
        })
        .await
}

/// Lets late messages arrive, then checks that `sent` control messages got
/// exactly `sent` answers.
async fn exactly_one_answer_each(f: &mut Follower, sent: usize) {
    f.drain(Duration::from_millis(400)).await;
    assert_eq!(f.answers(), sent, "answers: {:#?}", f.seen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barge_then_every_eavesdrop_mode_then_hangup() {
    let stack = Stack::start(1).await;
    let (mut f, dial_id) = stack.bridged_call("15105625882", "14157697098").await;
    let caller = stack.leg(&dial_id, 0).unwrap();

    ack(
        &stack,
        &mut f,
        json!({"type":"barge","phone_number":"15553331234","caller_id":"15550009999"}),
    )
    .await;
    f.expect_where("answer-event", |v| v["side"] == 2).await;
    let barger = eavesdrop_mode(&stack, &dial_id, &caller.uuid, EavesdropMode::ListenOnly).await;
    assert_eq!(barger.caller_id_number, "15550009999");
    assert_eq!(barger.destination, "15553331234");
    assert_eq!(
        barger.variables.get("sip_gateway_name").map(String::as_str),
        Some("talk_call_provider"),
        "dialled through the job's provider"
    );
    assert_eq!(
        barger
            .variables
            .get("app_disable_expand_variables")
            .map(String::as_str),
        Some("true")
    );

    for (kind, mode) in [
        ("whisper", EavesdropMode::TargetHears),
        ("threeway", EavesdropMode::BothHear),
        ("mute", EavesdropMode::ListenOnly),
        ("threeway", EavesdropMode::BothHear),
        ("unthreeway", EavesdropMode::ListenOnly),
        ("whisper", EavesdropMode::TargetHears),
        ("unthreeway", EavesdropMode::ListenOnly),
    ] {
        ack(&stack, &mut f, json!({ "type": kind })).await;
        eavesdrop_mode(&stack, &dial_id, &caller.uuid, mode).await;
    }
    // The modes are eavesdrop's controls on the barger's own channel, not
    // tones sent to anybody.
    let barger = stack.leg(&dial_id, 2).unwrap();
    assert_eq!(barger.received_dtmf, "2303020");
    assert_eq!(barger.sent_dtmf, "");
    assert_eq!(stack.leg(&dial_id, 0).unwrap().received_dtmf, "");

    // One barger at a time: the second barge dials nobody.
    let sessions = stack.sessions_since_startup().await;
    let reason = error(
        &stack,
        &mut f,
        json!({"type":"barge","phone_number":"15553335678","caller_id":"15550009999"}),
    )
    .await;
    assert!(reason.contains("barger"), "{reason}");
    assert_eq!(stack.sessions_since_startup().await, sessions);

    ack(&stack, &mut f, json!({"type":"hangup"})).await;
    let causes = f.hangups(&[0, 1, 2]).await;
    assert_eq!(causes[&0], "NORMAL_CLEARING");
    assert_eq!(causes[&1], "NORMAL_CLEARING");
    assert_eq!(causes[&2], "NORMAL_CLEARING");
    exactly_one_answer_each(&mut f, 10).await;
    assert_eq!(f.count("hangup-event"), 3, "{:#?}", f.seen);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barger_hanging_up_leaves_the_call_up_and_a_new_barge_works() {
    let stack = Stack::start(1).await;
    let (mut f, dial_id) = stack.bridged_call("15105625882", "14157697098").await;
    // 1555487…: answers, then hangs up after 2 s.
    ack(
        &stack,
        &mut f,
        json!({"type":"barge","phone_number":"15554871234","caller_id":"15550009999"}),
    )
    .await;
    f.expect_where("answer-event", |v| v["side"] == 2).await;
    let gone = f.expect_where("hangup-event", |v| v["side"] == 2).await;
    assert_eq!(gone["cause"], "NORMAL_CLEARING");
    assert!(stack.leg(&dial_id, 0).is_some() && stack.leg(&dial_id, 1).is_some());
    let reason = error(&stack, &mut f, json!({"type":"whisper"})).await;
    assert!(reason.contains("barger"), "{reason}");

    ack(
        &stack,
        &mut f,
        json!({"type":"barge","phone_number":"15553331234","caller_id":"15550009999"}),
    )
    .await;
    f.expect_where("answer-event", |v| v["side"] == 2).await;
    let caller = stack.leg(&dial_id, 0).unwrap();
    eavesdrop_mode(&stack, &dial_id, &caller.uuid, EavesdropMode::ListenOnly).await;
    ack(&stack, &mut f, json!({"type":"hangup"})).await;
    f.hangups(&[0, 1]).await;
    f.drain(Duration::from_millis(400)).await;
    // Each side that existed got exactly one hangup-event: two bargers were
    // side 2 one after the other.
    assert_eq!(f.count("hangup-event"), 4, "{:#?}", f.seen);
    exactly_one_answer_each(&mut f, 4).await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barger_modes_without_a_barger_are_errors() {
    let stack = Stack::start(1).await;
    let (mut f, dial_id) = stack.bridged_call("15105625882", "14157697098").await;
    for kind in ["whisper", "mute", "threeway", "unthreeway"] {
        let reason = error(&stack, &mut f, json!({ "type": kind })).await;
        assert!(reason.contains("barger"), "{kind}: {reason}");
    }
    for side in [0, 1] {
        assert_eq!(stack.leg(&dial_id, side).unwrap().received_dtmf, "");
    }

    // A barger still ringing is not answered yet: modes are refused too.
    ack(
        &stack,
        &mut f,
        json!({"type":"barge","phone_number":"15554081234","caller_id":"15550009999"}),
    )
    .await;
    stack.wait_leg(&dial_id, 2, "ringing", |_| true).await;
    let reason = error(&stack, &mut f, json!({"type":"threeway"})).await;
    assert!(reason.contains("barger"), "{reason}");
    assert_eq!(stack.leg(&dial_id, 2).unwrap().received_dtmf, "");
    // The ringing barger is cancelled with the call.
    ack(&stack, &mut f, json!({"type":"hangup"})).await;
    let causes = f.hangups(&[0, 1, 2]).await;
    assert_eq!(causes[&2], "ORIGINATOR_CANCEL");
    exactly_one_answer_each(&mut f, 7).await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn play_and_stop_media() {
    let stack = Stack::start(1).await;
    std::fs::write(stack.media.path().join("hello.wav"), b"RIFF").unwrap();
    let (mut f, dial_id) = stack.bridged_call("15105625882", "14157697098").await;

    ack(
        &stack,
        &mut f,
        json!({"type":"play","media":["hello.wav"],"side":0}),
    )
    .await;
    let playing = stack
        .wait_leg(&dial_id, 0, "playing", |c| c.playing.is_some())
        .await;
    let expected = stack.media.path().join("hello.wav");
    assert_eq!(playing.playing.as_deref(), expected.to_str());
    let done = f.expect("media-done-event").await;
    assert_eq!(
        done,
        json!({"type":"media-done-event","side":0,"reason":"done"})
    );

    // A long playlist on both sides, stopped on both.
    ack(
        &stack,
        &mut f,
        json!({"type":"play","media":["hello.wav","silence_stream://5000","tone_stream://%(100,100,941);loops=50"],"side":"both"}),
    )
    .await;
    for side in [0, 1] {
        stack
            .wait_leg(&dial_id, side, "playing", |c| c.playing.is_some())
            .await;
    }
    ack(&stack, &mut f, json!({"type":"stop-media","side":"both"})).await;
    let mut reasons = Vec::new();
    for _ in 0..2 {
        let v = f.expect("media-done-event").await;
        reasons.push((v["side"].as_u64().unwrap(), v["reason"].clone()));
    }
    reasons.sort_by_key(|r| r.0);
    assert_eq!(reasons, [(0, json!("stopped")), (1, json!("stopped"))]);
    for side in [0, 1] {
        stack
            .wait_leg(&dial_id, side, "not playing", |c| c.playing.is_none())
            .await;
    }
    // Still bridged after the media.
    assert!(stack.leg(&dial_id, 0).unwrap().bridged_to.is_some());

    // A file that is not there: the play is accepted, then fails.
    ack(
        &stack,
        &mut f,
        json!({"type":"play","media":["missing.wav"],"side":1}),
    )
    .await;
    let v = f.expect("media-done-event").await;
    assert_eq!(
        v,
        json!({"type":"media-done-event","side":1,"reason":"failed"})
    );

    // A play cut short by the hangup ends with `hangup`.
    ack(
        &stack,
        &mut f,
        json!({"type":"play","media":["silence_stream://5000"],"side":1}),
    )
    .await;
    stack
        .wait_leg(&dial_id, 1, "playing", |c| c.playing.is_some())
        .await;
    ack(&stack, &mut f, json!({"type":"hangup"})).await;
    let v = f.expect("media-done-event").await;
    assert_eq!(v["side"], 1);
    assert_ne!(v["reason"], "done", "{v}");
    f.hangups(&[0, 1]).await;
    exactly_one_answer_each(&mut f, 6).await;
    assert_eq!(f.count("media-done-event"), 5, "{:#?}", f.seen);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_dtmf_reaches_the_far_end() {
    let stack = Stack::start(1).await;
    let (mut f, dial_id) = stack.bridged_call("15105625882", "14157697098").await;
    ack(
        &stack,
        &mut f,
        json!({"type":"send-dtmf","digits":"12#","side":1}),
    )
    .await;
    stack
        .wait_leg(&dial_id, 1, "dtmf sent", |c| c.sent_dtmf == "12#")
        .await;
    ack(
        &stack,
        &mut f,
        json!({"type":"send-dtmf","digits":"9*A","side":0,"duration_ms":250}),
    )
    .await;
    stack
        .wait_leg(&dial_id, 0, "dtmf sent", |c| c.sent_dtmf == "9*A")
        .await;
    // No barger: side 2 cannot be sent tones.
    error(
        &stack,
        &mut f,
        json!({"type":"send-dtmf","digits":"1","side":2}),
    )
    .await;
    assert_eq!(stack.leg(&dial_id, 1).unwrap().sent_dtmf, "12#");
    ack(&stack, &mut f, json!({"type":"hangup"})).await;
    f.hangups(&[0, 1]).await;
    exactly_one_answer_each(&mut f, 4).await;
    stack.stop().await;
}

/// Waits for a WAV file and checks it is stereo (both parties, SPEC §5).
async fn wav_written(path: &std::path::Path) {
    support::eventually(&format!("{path:?} written"), Duration::from_secs(3), || {
        let p = path.to_owned();
        async move { std::fs::metadata(&p).is_ok_and(|m| m.len() >= 44) }
    })
    .await;
    let wav = std::fs::read(path).unwrap();
    assert_eq!(&wav[..4], b"RIFF");
    assert_eq!(u16::from_le_bytes([wav[22], wav[23]]), 2, "stereo");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_and_stop_record_write_the_file() {
    let stack = Stack::start(1).await;
    let (mut f, dial_id) = stack.bridged_call("15105625882", "14157697098").await;
    let error_reason = error(&stack, &mut f, json!({"type":"stop-record"})).await;
    assert!(error_reason.contains("no recording"), "{error_reason}");

    ack(&stack, &mut f, json!({"type":"record","name":"rec-1"})).await;
    let path = stack.recordings.path().join("rec-1.wav");
    stack
        .wait_leg(&dial_id, 0, "recording", |c| {
            c.recording.as_deref() == path.to_str()
        })
        .await;
    // One recording at a time.
    error(&stack, &mut f, json!({"type":"record","name":"rec-2"})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    ack(&stack, &mut f, json!({"type":"stop-record"})).await;
    let done = f.expect("record-done-event").await;
    assert_eq!(done["path"], path.to_str().unwrap());
    assert!(std::path::Path::new(done["path"].as_str().unwrap()).is_absolute());
    assert_eq!(done["reason"], "stopped");
    assert!(done["duration_ms"].as_u64().unwrap() >= 250, "{done}");
    stack
        .wait_leg(&dial_id, 0, "not recording", |c| c.recording.is_none())
        .await;
    // Simulator gap: FreeSWITCH opens the file when the recording starts
    // and has closed it when `uuid_record … stop` returns; the simulator
    // writes the whole file from a task spawned at stop, so wait for it.
    wav_written(&path).await;
    assert!(!stack.recordings.path().join("rec-2.wav").exists());

    // A recording still running at hangup ends with the call.
    ack(&stack, &mut f, json!({"type":"record","name":"rec-3"})).await;
    let path3 = stack.recordings.path().join("rec-3.wav");
    stack
        .wait_leg(&dial_id, 0, "recording", |c| {
            c.recording.as_deref() == path3.to_str()
        })
        .await;
    ack(&stack, &mut f, json!({"type":"hangup"})).await;
    let done = f.expect("record-done-event").await;
    assert_eq!(done["path"], path3.to_str().unwrap());
    assert_eq!(done["reason"], "hangup");
    f.hangups(&[0, 1]).await;
    exactly_one_answer_each(&mut f, 6).await;
    assert_eq!(f.count("record-done-event"), 2);
    wav_written(&path3).await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_control_messages_are_refused_and_nothing_reaches_freeswitch() {
    let stack = Stack::start(1).await;
    std::fs::write(stack.media.path().join("hello.wav"), b"RIFF").unwrap();
    let (mut f, dial_id) = stack.bridged_call("15105625882", "14157697098").await;
    let sessions = stack.sessions_since_startup().await;
    let before: Vec<_> = [0, 1].map(|s| stack.leg(&dial_id, s).unwrap()).into();

    // Non-JSON: an error without `event`.
    let mut sent = 0;
    for raw in ["hangup", "{\"type\":\"hangup\",}", ""] {
        stack.publish(&dial_id, raw).await;
        let v = f.answer(None).await;
        assert_eq!(v["type"], "error", "{raw:?}: {v}");
        assert!(v.get("event").is_none(), "{v}");
        sent += 1;
    }
    // Unknown type: the error names it.
    let v = control(&stack, &mut f, json!({"type":"reboot"})).await;
    assert_eq!(v["type"], "error");
    assert_eq!(v["event"], "reboot");
    assert_eq!(v["reason"], "unknown control type");
    sent += 1;

    let bad = [
        json!({"type":"barge","phone_number":"1555,execute_on_answer=system x","caller_id":"1"}),
        json!({"type":"barge","phone_number":"15551234","caller_id":"{a=b}1"}),
        json!({"type":"barge","phone_number":"1555 foo","caller_id":"1"}),
        json!({"type":"barge","phone_number":"١٥٥٥","caller_id":"1"}),
        json!({"type":"barge","phone_number":"15551234"}),
        json!({"type":"play","media":["../secret.wav"],"side":0}),
        json!({"type":"play","media":["hello.wav","/etc/passwd"],"side":0}),
        json!({"type":"play","media":["${system(id)}.wav"],"side":1}),
        json!({"type":"play","media":["hello.wav"],"side":2}),
        json!({"type":"play","media":[],"side":0}),
        json!({"type":"stop-media","side":"all"}),
        json!({"type":"send-dtmf","digits":"12E","side":1}),
        json!({"type":"send-dtmf","digits":"1 2","side":1}),
        json!({"type":"send-dtmf","digits":"1\napi system x","side":1}),
        json!({"type":"send-dtmf","digits":"1","side":1,"duration_ms":0}),
        json!({"type":"send-dtmf","digits":"1","side":1,"duration_ms":10001}),
        json!({"type":"send-dtmf","digits":"1","side":5}),
        json!({"type":"record","name":"../escape"}),
        json!({"type":"record","name":"/tmp/x"}),
        json!({"type":"record","name":"a b"}),
        json!({"type":"record"}),
    ];
    for msg in &bad {
        let v = control(&stack, &mut f, msg.clone()).await;
        assert_eq!(v["type"], "error", "{msg}: {v}");
        assert_eq!(v["event"], msg["type"], "{v}");
        sent += 1;
    }

    // Nothing reached FreeSWITCH: no channel, no tone, no file, no media.
    assert_eq!(stack.sessions_since_startup().await, sessions);
    for (side, was) in [0u8, 1].into_iter().zip(before) {
        let now = stack.leg(&dial_id, side).unwrap();
        assert_eq!(now.sent_dtmf, "", "side {side}");
        assert_eq!(now.received_dtmf, "", "side {side}");
        assert_eq!(now.recording, None, "side {side}");
        assert_eq!(now.playing, None, "side {side}");
        assert_eq!(now.bridged_to, was.bridged_to, "side {side}");
    }
    assert!(stack.leg(&dial_id, 2).is_none());
    assert_eq!(
        std::fs::read_dir(stack.recordings.path()).unwrap().count(),
        0
    );
    assert_eq!(f.count("media-done-event"), 0);

    // The call still obeys good control afterwards.
    ack(&stack, &mut f, json!({"type":"hangup"})).await;
    f.hangups(&[0, 1]).await;
    exactly_one_answer_each(&mut f, sent + 1).await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_for_an_ended_call_gets_call_has_ended() {
    let stack = Stack::start(1).await;
    let (mut f, _dial_id) = stack.bridged_call("15105625882", "14157697098").await;
    ack(&stack, &mut f, json!({"type":"hangup"})).await;
    f.hangups(&[0, 1]).await;
    let sessions = stack.sessions_since_startup().await;
    let verbs = [
        json!({"type":"hangup"}),
        json!({"type":"barge","phone_number":"15553331234","caller_id":"1555"}),
        json!({"type":"whisper"}),
        json!({"type":"play","media":["silence_stream://10"],"side":0}),
        json!({"type":"send-dtmf","digits":"1","side":0}),
        json!({"type":"record","name":"late"}),
    ];
    for msg in &verbs {
        let reason = error(&stack, &mut f, msg.clone()).await;
        assert_eq!(reason, "call has ended", "{msg}");
    }
    // Bad messages are still answered as bad, not as "ended".
    stack.publish(&f.dial_id.clone(), "nope").await;
    assert_eq!(f.answer(None).await["type"], "error");
    assert_eq!(stack.sessions_since_startup().await, sessions);
    exactly_one_answer_each(&mut f, 1 + verbs.len() + 1).await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hangup_while_the_caller_rings_cancels_it() {
    let stack = Stack::start(1).await;
    // 1555408…: the caller rings and never answers.
    let job = job("15554081234", "14157697098");
    let dial_id = job["dial_id"].as_str().unwrap().to_owned();
    let mut f = stack.push(&job).await;
    f.expect("call-start").await;
    stack.wait_leg(&dial_id, 0, "ringing", |_| true).await;
    ack(&stack, &mut f, json!({"type":"hangup"})).await;
    let causes = f.hangups(&[0]).await;
    assert_eq!(causes[&0], "ORIGINATOR_CANCEL");
    f.drain(Duration::from_millis(400)).await;
    assert_eq!(f.count("hangup-event"), 1, "{:#?}", f.seen);
    assert_eq!(f.answers(), 1);
    stack.stop().await;
}
