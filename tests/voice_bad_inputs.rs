//! Issue 4's app-side bad inputs against the simulator: a missing media
//! file, a panicking app, an app that never returns after the far end hung
//! up, bad DTMF digits and durations. Plus the app's result and error
//! reaching whoever started it.

use redswitch::switch::voice::{
    AppError, AppRouter, PlayOptions, PlayOutcome, Voice, VoiceError, spawn_app,
};
use redswitch_test_support::eventually;
use redswitch_test_support::voice::Harness;
use std::future::ready;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;

const T: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_media_file_fails_the_play_and_the_call_goes_on() {
    let h = Harness::start(AppRouter::new()).await;
    let mut v: Voice = h.call("15551240001").await;
    let uuid = v.uuid().to_owned();
    let o = v
        .play(&["missing/nothing-here.wav"], PlayOptions::default())
        .await
        .unwrap();
    assert!(
        matches!(&o, PlayOutcome::Failed { reason } if reason.contains("FILE NOT FOUND")),
        "{o:?}"
    );
    let snapshot = h.channel(&uuid).expect("the call is still up");
    assert!(snapshot.answered && snapshot.hangup_cause.is_none());
    v.send_dtmf("1", Duration::from_millis(100), None)
        .await
        .unwrap();
    assert_eq!(h.channel(&uuid).unwrap().sent_dtmf, "1");
    v.hangup("NORMAL_CLEARING").await.unwrap();
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_dtmf_is_refused_before_anything_is_sent() {
    let h = Harness::start(AppRouter::new()).await;
    let mut v: Voice = h.call("15551240002").await;
    let uuid = v.uuid().to_owned();
    let ms = Duration::from_millis;
    for (digits, duration, gap) in [
        ("12E", ms(100), None),
        ("1 2", ms(100), None),
        ("1\n2", ms(100), None),
        ("", ms(100), None),
        ("12", Duration::ZERO, None),
        ("12", ms(10_001), None),
        ("12", Duration::from_secs(60), Some(ms(10))),
        ("12", ms(100), Some(ms(10_001))),
    ] {
        let r = v.send_dtmf(digits, duration, gap).await;
        assert!(
            matches!(
                r,
                Err(VoiceError::InvalidDigit { .. }
                    | VoiceError::NoDigits
                    | VoiceError::InvalidDtmfDuration { .. }
                    | VoiceError::InvalidDtmfGap { .. })
            ),
            "{digits:?} {duration:?} {gap:?}: {r:?}"
        );
    }
    assert!(matches!(
        v.send_dtmf(&"1".repeat(65), ms(100), None).await,
        Err(VoiceError::TooManyDigits { count: 65 })
    ));
    // Nothing reached the simulator; the first valid digits do.
    assert_eq!(h.channel(&uuid).unwrap().sent_dtmf, "");
    v.send_dtmf("0*#ABCD9", ms(100), None).await.unwrap();
    assert_eq!(h.channel(&uuid).unwrap().sent_dtmf, "0*#ABCD9");
    v.hangup("NORMAL_CLEARING").await.unwrap();
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_inbound_app_hangs_up_its_call_only() {
    // What each app run reports: (panics?, uuid) when it starts, then the
    // play outcome of those that do not panic.
    let (tx, mut rx) = mpsc::channel::<Report>(16);
    let runs = Arc::new(AtomicUsize::new(0));
    let router = AppRouter::new().route("socket", move |mut v: Voice| {
        let tx = tx.clone();
        // Every other call's app panics.
        let panics = runs.fetch_add(1, Ordering::SeqCst).is_multiple_of(2);
        async move {
            let uuid = v.uuid().to_owned();
            let _ = tx
                .send(Report::Started {
                    panics,
                    uuid: uuid.clone(),
                })
                .await;
            if panics {
                panic!("app bug on {uuid}");
            }
            let o = v
                .play(&["silence_stream://300"], PlayOptions::default())
                .await?;
            let _ = tx.send(Report::Played(o)).await;
            Ok(())
        }
    });
    let h = Harness::start(router).await;
    let mut originates = Vec::new();
    for _ in 0..6 {
        let inbound = h.inbound.clone();
        originates.push(tokio::spawn(async move {
            inbound
                .api("originate loopback/socket/redswitch-test &park")
                .await
        }));
    }
    for o in originates {
        let reply = o.await.unwrap().unwrap();
        assert!(reply.starts_with("+OK"), "{reply}");
    }
    let mut panicked = Vec::new();
    let mut played = Vec::new();
    while panicked.len() + played.len() < 6 {
        match tokio::time::timeout(T, rx.recv()).await.unwrap().unwrap() {
            Report::Started { panics: true, uuid } => panicked.push(uuid),
            Report::Started { panics: false, .. } => {}
            Report::Played(o) => played.push(o),
        }
    }
    assert_eq!(panicked.len(), 3);
    // The other calls went on undisturbed.
    assert_eq!(played, vec![PlayOutcome::Done; 3]);
    // The panicking apps' legs are hung up; nothing is left behind.
    eventually("the panicked apps' legs to end", T, || {
        ready(panicked.iter().all(|u| h.channel(u).is_none()))
    })
    .await;
    // The listener goes on.
    let reply = h.inbound_call().await;
    assert!(reply.starts_with("+OK"), "{reply}");
    h.shutdown().await;
}

#[derive(Debug)]
enum Report {
    Started { panics: bool, uuid: String },
    Played(PlayOutcome),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_never_returns_ends_with_its_leg() {
    let h = Harness::start(AppRouter::new()).await;
    // 1555487…: the far end hangs up 2 s after answer.
    let v: Voice = h.call("15554870001").await;
    let app = spawn_app(v, |_v: Voice| async {
        std::future::pending::<()>().await;
        Ok::<(), String>(())
    });
    let r = tokio::time::timeout(T, app)
        .await
        .expect("the app's task ended with its leg")
        .unwrap();
    assert!(matches!(r, Err(AppError::LegClosed)), "{r:?}");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_errors_and_panics_reach_whoever_started_the_app() {
    let h = Harness::start(AppRouter::new()).await;
    let v: Voice = h.call("15551240003").await;
    let uuid = v.uuid().to_owned();
    let result = spawn_app(v, |mut v: Voice| async move {
        let o = v
            .play(&["silence_stream://100"], PlayOptions::default())
            .await?;
        Ok::<_, VoiceError>(format!("{o:?}"))
    })
    .await
    .unwrap();
    assert_eq!(result.unwrap(), "Done");
    // The app left the leg up; run_app hung it up.
    eventually("run_app to end the leg", T, || {
        ready(h.channel(&uuid).is_none())
    })
    .await;

    let v: Voice = h.call("15551240004").await;
    let err = spawn_app(v, |_v: Voice| async { Err::<(), _>("no such menu") })
        .await
        .unwrap();
    assert!(matches!(err, Err(AppError::App("no such menu"))), "{err:?}");

    let v: Voice = h.call("15551240005").await;
    let uuid = v.uuid().to_owned();
    let panicked = spawn_app(v, |_v: Voice| async {
        if true {
            panic!("boom");
        }
        Ok::<(), String>(())
    })
    .await
    .unwrap();
    assert!(
        matches!(&panicked, Err(AppError::Panicked(m)) if m == "boom"),
        "{panicked:?}"
    );
    eventually("the panicked app's leg to end", T, || {
        ready(h.channel(&uuid).is_none())
    })
    .await;
    h.shutdown().await;
}
