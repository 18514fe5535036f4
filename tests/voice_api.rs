//! The voice-application API against the FreeSWITCH simulator: placed and
//! inbound calls, play (done, barge-in, time limit, stop), record, DTMF
//! modes, collection, sending, timers, app events, bridge, reject, hangup.

use redswitch::switch::Direction;
use redswitch::switch::voice::{
    AppRouter, CollectEnd, DtmfMode, PlayOptions, PlayOutcome, RecordOptions, RecordOutcome, Voice,
    VoiceEvent,
};
use redswitch_test_support::eventually;
use redswitch_test_support::voice::{Harness, recorded_length};
use std::future::ready;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

const TONE_2S: &str = "tone_stream://%(2000,0,440)";
const T: Duration = Duration::from_secs(10);

async fn next<U: Send + std::fmt::Debug + 'static>(v: &mut Voice<U>) -> VoiceEvent<U> {
    tokio::time::timeout(T, v.next_event())
        .await
        .expect("an event within 10 s")
        .expect("the leg ended")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placed_call_starts_answered_and_knows_its_parties() {
    let h = Harness::start(AppRouter::new()).await;
    let mut v: Voice = h.call("15551230000").await;
    assert_eq!(
        next(&mut v).await,
        VoiceEvent::CallStarted {
            direction: Direction::Outbound
        }
    );
    assert_eq!(next(&mut v).await, VoiceEvent::Answered);
    assert!(v.is_answered());
    assert_eq!(v.caller().number, "15550001111");
    assert_eq!(v.callee().number, "15551230000");
    v.hangup("NORMAL_CLEARING").await.unwrap();
    assert_eq!(
        next(&mut v).await,
        VoiceEvent::Ended {
            cause: "NORMAL_CLEARING".into()
        }
    );
    assert!(
        tokio::time::timeout(T, v.next_event())
            .await
            .unwrap()
            .is_none()
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn play_a_playlist_to_the_end_then_fail_on_a_missing_file_and_go_on() {
    let h = Harness::start(AppRouter::new()).await;
    let mut v: Voice = h.call("15551230001").await;
    let uuid = v.uuid().to_owned();
    v.start_play(
        &["silence_stream://200", "hello.wav", TONE_2S],
        PlayOptions::default(),
    )
    .unwrap();
    assert!(v.is_playing());
    assert!(matches!(
        v.start_play(&["hello.wav"], PlayOptions::default()),
        Err(redswitch::switch::voice::VoiceError::PlayBusy)
    ));
    let started = Instant::now();
    let outcome = loop {
        if let VoiceEvent::Play(o) = next(&mut v).await {
            break o;
        }
    };
    assert_eq!(outcome, PlayOutcome::Done);
    // 200 ms + 300 ms (a file in the sim) + 2 s of tone, one after the other.
    assert!(
        started.elapsed() >= Duration::from_millis(2400),
        "{:?}",
        started.elapsed()
    );
    assert!(!v.is_playing());

    let failed = v
        .play(&["no-such-file.wav", "hello.wav"], PlayOptions::default())
        .await
        .unwrap();
    match failed {
        PlayOutcome::Failed { reason } => {
            assert!(
                reason.contains("no-such-file.wav") && reason.contains("FILE NOT FOUND"),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }
    // The call goes on: the next play works.
    assert!(h.channel(&uuid).is_some_and(|c| c.hangup_cause.is_none()));
    let again = v
        .play(&["hello.wav"], PlayOptions::default())
        .await
        .unwrap();
    assert_eq!(again, PlayOutcome::Done);
    v.hangup("NORMAL_CLEARING").await.unwrap();
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barge_in_stops_the_play_and_the_other_digits_follow_as_events() {
    let h = Harness::start(AppRouter::new()).await;
    // 1555700…: the far end sends 1234# one second after answer.
    let mut v: Voice = h.call("15557000001").await;
    let started = Instant::now();
    let outcome = v
        .play(
            &["tone_stream://%(10000,0,440)"],
            PlayOptions {
                barge_in: true,
                timeout: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(outcome, PlayOutcome::BargeIn { digits: "1".into() });
    assert!(started.elapsed() < Duration::from_secs(3));
    let mut rest = String::new();
    while rest.len() < 4 {
        match next(&mut v).await {
            VoiceEvent::Dtmf { digits } => rest.push_str(&digits),
            VoiceEvent::CallStarted { .. } | VoiceEvent::Answered => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(rest, "234#");
    v.hangup("NORMAL_CLEARING").await.unwrap();
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_play_without_barge_in_ignores_digits_and_a_time_limit_or_stop_cuts_it() {
    let h = Harness::start(AppRouter::new()).await;
    let mut v: Voice = h.call("15557000002").await;
    let outcome = v.play(&[TONE_2S], PlayOptions::default()).await.unwrap();
    assert_eq!(outcome, PlayOutcome::Done, "digits at 1 s must not stop it");

    let started = Instant::now();
    let outcome = v
        .play(
            &["silence_stream://5000"],
            PlayOptions {
                barge_in: false,
                timeout: Some(Duration::from_millis(300)),
            },
        )
        .await
        .unwrap();
    assert_eq!(outcome, PlayOutcome::TimerExpired);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    v.start_play(&["silence_stream://5000"], PlayOptions::default())
        .unwrap();
    let uuid = v.uuid().to_owned();
    eventually("the sim to start playing", T, || {
        ready(h.channel(&uuid).is_some_and(|c| c.playing.is_some()))
    })
    .await;
    v.stop_media().await.unwrap();
    let outcome = loop {
        if let VoiceEvent::Play(o) = next(&mut v).await {
            break o;
        }
    };
    assert_eq!(outcome, PlayOutcome::Stopped);
    v.hangup("NORMAL_CLEARING").await.unwrap();
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_to_the_time_limit_writes_a_wav_of_that_length() {
    let h = Harness::start(AppRouter::new()).await;
    let mut v: Voice = h.call("15551230003").await;
    let path = h.recording("limit.wav");
    v.start_record(
        &path,
        RecordOptions {
            max_len: Duration::from_secs(2),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(v.is_recording());
    assert!(matches!(
        v.start_record(h.recording("second.wav"), RecordOptions::default()),
        Err(redswitch::switch::voice::VoiceError::RecordBusy)
    ));
    let outcome = loop {
        if let VoiceEvent::Record(o) = next(&mut v).await {
            break o;
        }
    };
    match outcome {
        RecordOutcome::Timeout { path: p, length } => {
            assert_eq!(p, path);
            assert!(length >= Duration::from_millis(1900), "{length:?}");
        }
        other => panic!("{other:?}"),
    }
    assert!(!v.is_recording());
    let len = recorded_length(&path).await;
    assert!(
        len >= Duration::from_millis(1900) && len <= Duration::from_millis(2300),
        "{len:?}"
    );

    // Stopped early: done, shorter.
    let path = h.recording("stopped.wav");
    v.start_record(&path, RecordOptions::default()).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    v.stop_media().await.unwrap();
    let outcome = loop {
        if let VoiceEvent::Record(o) = next(&mut v).await {
            break o;
        }
    };
    assert!(matches!(outcome, RecordOutcome::Done { .. }), "{outcome:?}");
    assert!(recorded_length(&path).await < Duration::from_secs(2));

    // Hung up while recording.
    let path = h.recording("hungup.wav");
    v.start_record(&path, RecordOptions::default()).unwrap();
    let uuid = v.uuid().to_owned();
    h.dialer.kill(&uuid, "NORMAL_CLEARING").await.unwrap();
    let mut got = None;
    while let Some(e) = tokio::time::timeout(T, v.next_event()).await.unwrap() {
        if let VoiceEvent::Record(o) = e {
            got = Some(o);
        }
    }
    assert_eq!(got, Some(RecordOutcome::RemoteClosed { path }));
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dtmf_string_mode_terminator_and_timeout() {
    let h = Harness::start(AppRouter::new()).await;
    let mut v: Voice = h.call("15557000003").await;
    v.set_dtmf_mode(
        DtmfMode::String {
            terminator: '#',
            timeout: Some(Duration::from_secs(5)),
        },
        true,
    )
    .await
    .unwrap();
    loop {
        match next(&mut v).await {
            VoiceEvent::Dtmf { digits } => {
                assert_eq!(digits, "1234");
                break;
            }
            VoiceEvent::CallStarted { .. } | VoiceEvent::Answered => {}
            other => panic!("{other:?}"),
        }
    }
    v.hangup("NORMAL_CLEARING").await.unwrap();

    // `*` never comes: the first-to-last timeout reports what there was.
    let mut v: Voice = h.call("15557000004").await;
    v.set_dtmf_mode(
        DtmfMode::String {
            terminator: '*',
            timeout: Some(Duration::from_millis(400)),
        },
        false,
    )
    .await
    .unwrap();
    loop {
        match next(&mut v).await {
            VoiceEvent::DtmfTimeout { digits } => {
                assert_eq!(digits, "1234#");
                break;
            }
            VoiceEvent::CallStarted { .. } | VoiceEvent::Answered => {}
            other => panic!("{other:?}"),
        }
    }
    v.hangup("NORMAL_CLEARING").await.unwrap();
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collect_digits_by_terminator_count_and_timeout() {
    let h = Harness::start(AppRouter::new()).await;
    let mut v: Voice = h.call("15557000005").await;
    let got = v.collect_digits(10, "#", Some(T)).await.unwrap();
    assert_eq!(got.digits, "1234");
    assert_eq!(got.end, CollectEnd::Terminator);
    let got = v
        .collect_digits(3, "#", Some(Duration::from_millis(300)))
        .await
        .unwrap();
    assert_eq!((got.digits.as_str(), got.end), ("", CollectEnd::Timeout));
    v.hangup("NORMAL_CLEARING").await.unwrap();

    let mut v: Voice = h.call("15557000006").await;
    let got = v.collect_digits(2, "", Some(T)).await.unwrap();
    assert_eq!((got.digits.as_str(), got.end), ("12", CollectEnd::Count));
    v.hangup("NORMAL_CLEARING").await.unwrap();
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_dtmf_at_once_and_with_a_gap() {
    let h = Harness::start(AppRouter::new()).await;
    let mut v: Voice = h.call("15551230007").await;
    let uuid = v.uuid().to_owned();
    v.send_dtmf("12#", Duration::from_millis(100), None)
        .await
        .unwrap();
    assert_eq!(h.channel(&uuid).unwrap().sent_dtmf, "12#");
    let started = Instant::now();
    v.send_dtmf(
        "AD",
        Duration::from_millis(80),
        Some(Duration::from_millis(300)),
    )
    .await
    .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(h.channel(&uuid).unwrap().sent_dtmf, "12#AD");
    v.hangup("NORMAL_CLEARING").await.unwrap();
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_and_application_events_arrive_in_the_stream() {
    let h = Harness::start(AppRouter::new()).await;
    let mut v: Voice<&'static str> = h.call("15551230008").await;
    let late = v.set_timer(Duration::from_millis(400), "late").unwrap();
    let early = v.set_timer(Duration::from_millis(150), "early").unwrap();
    let gone = v
        .set_timer(Duration::from_millis(250), "cancelled")
        .unwrap();
    assert!(v.cancel_timer(gone));
    let tx = v.app_sender();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let _ = tx.send("hello").await;
    });
    let mut seen = Vec::new();
    while seen.len() < 3 {
        match next(&mut v).await {
            VoiceEvent::Timer { id, data } => seen.push((Some(id), data)),
            VoiceEvent::App(data) => seen.push((None, data)),
            _ => {}
        }
    }
    assert_eq!(
        seen,
        vec![
            (Some(early), "early"),
            (None, "hello"),
            (Some(late), "late")
        ]
    );
    // A play reports TimerExpired only for its own limit; app timers keep
    // their own events.
    v.set_timer(Duration::from_millis(100), "during play")
        .unwrap();
    let o = v
        .play(&["silence_stream://300"], PlayOptions::default())
        .await
        .unwrap();
    assert_eq!(o, PlayOutcome::Done);
    assert!(matches!(
        next(&mut v).await,
        VoiceEvent::Timer {
            data: "during play",
            ..
        }
    ));
    v.hangup("NORMAL_CLEARING").await.unwrap();
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_two_placed_legs() {
    let h = Harness::start(AppRouter::new()).await;
    let mut a: Voice = h.call("15551230009").await;
    let b: Voice = h.call("15551230010").await;
    a.bridge(b.uuid()).await.unwrap();
    loop {
        match next(&mut a).await {
            VoiceEvent::Bridged { other } => {
                assert_eq!(other.as_deref(), Some(b.uuid()));
                break;
            }
            VoiceEvent::CallStarted { .. } | VoiceEvent::Answered => {}
            e => panic!("{e:?}"),
        }
    }
    assert_eq!(
        h.channel(a.uuid()).unwrap().bridged_to.as_deref(),
        Some(b.uuid())
    );
    assert!(a.bridge("not-a-uuid").await.is_err());
    // The far end of B hangs up: A is unbridged and hung up too.
    h.dialer.kill(b.uuid(), "NORMAL_CLEARING").await.unwrap();
    let mut names = Vec::new();
    while let Some(e) = tokio::time::timeout(T, a.next_event()).await.unwrap() {
        names.push(e);
    }
    assert!(names.contains(&VoiceEvent::Unbridged), "{names:?}");
    assert!(
        names.iter().any(|e| matches!(e, VoiceEvent::Ended { .. })),
        "{names:?}"
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn far_end_hangup_ends_the_stream() {
    let h = Harness::start(AppRouter::new()).await;
    // 1555487…: the far end hangs up 2 s after answer.
    let mut v: Voice = h.call("15554870000").await;
    let o = v
        .play(&["silence_stream://10000"], PlayOptions::default())
        .await
        .unwrap();
    assert_eq!(o, PlayOutcome::RemoteClosed);
    assert_eq!(v.wait_end().await, "NORMAL_CLEARING");
    assert!(
        tokio::time::timeout(T, v.next_event())
            .await
            .unwrap()
            .is_none()
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_placed_call_gives_its_cause() {
    let h = Harness::start(AppRouter::new()).await;
    let err = h
        .dialer
        .place_call::<()>(&redswitch::switch::app::Originate {
            endpoint: "sofia/gateway/gw/15554860000".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, redswitch::switch::voice::PlaceError::Rejected { cause } if cause == "USER_BUSY"),
        "{err:?}"
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_calls_run_the_routed_app() {
    let (tx, mut rx) = mpsc::channel(4);
    let calls = Arc::new(AtomicUsize::new(0));
    // The sim's `socket` extension: the loopback leg's destination. It
    // answers before the socket app (as the recorded test dialplan does),
    // so `reject` finds the leg answered; freeswitch-conf's extension 7000
    // does not answer, and there `reject` refuses the call.
    let router = AppRouter::new()
        .route("socket", move |mut v: Voice| {
            let tx = tx.clone();
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                let mut seen = vec![v.next_event().await];
                if n == 0 {
                    v.answer().await?;
                    seen.push(v.next_event().await);
                    let refused = v.reject("USER_BUSY").await;
                    let _ = tx.send((seen, format!("{refused:?}"))).await;
                    v.play(&["silence_stream://100"], PlayOptions::default())
                        .await?;
                } else {
                    let bad = v.hangup("user busy").await;
                    v.hangup("USER_BUSY").await?;
                    let cause = v.wait_end().await;
                    seen.push(Some(VoiceEvent::Ended { cause }));
                    let _ = tx.send((seen, format!("{bad:?}"))).await;
                }
                Ok(())
            }
        })
        .fallback(|_v: Voice| async { Err("unexpected destination".into()) });
    let h = Harness::start(router).await;
    let reply = h.inbound_call().await;
    assert!(reply.starts_with("+OK"), "{reply}");
    let (seen, refused) = tokio::time::timeout(T, rx.recv()).await.unwrap().unwrap();
    assert_eq!(
        seen,
        vec![
            Some(VoiceEvent::CallStarted {
                direction: Direction::Inbound
            }),
            Some(VoiceEvent::Answered)
        ]
    );
    assert_eq!(refused, "Err(AlreadyAnswered)");

    // The app hangs this one up at once: as in FreeSWITCH (trace 08), the
    // originate loop may see the hangup on the tick it checks the answer.
    let reply = h.inbound_call().await;
    assert!(
        reply.starts_with("+OK") || reply == "-ERR USER_BUSY",
        "{reply}"
    );
    let (seen, bad) = tokio::time::timeout(T, rx.recv()).await.unwrap().unwrap();
    assert!(bad.starts_with("Err(InvalidCause"), "{bad}");
    assert_eq!(
        seen.last(),
        Some(&Some(VoiceEvent::Ended {
            cause: "USER_BUSY".into()
        }))
    );
    h.shutdown().await;
}

/// `hangup` ends the leg at once while an application runs on it with
/// `event-lock` (a play, a record): it does not queue behind them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hangup_during_play_or_record_ends_the_leg_at_once() {
    let h = Harness::start(AppRouter::new()).await;
    let mut v: Voice = h.call("15551230005").await;
    let uuid = v.uuid().to_owned();
    v.start_play(&["silence_stream://60000"], PlayOptions::default())
        .unwrap();
    eventually("the sim to start playing", T, || {
        ready(h.channel(&uuid).is_some_and(|c| c.playing.is_some()))
    })
    .await;
    v.hangup("NORMAL_CLEARING").await.unwrap();
    eventually("the playing leg to end", T, || {
        ready(h.channel(&uuid).is_none())
    })
    .await;

    let mut v: Voice = h.call("15551230006").await;
    let uuid = v.uuid().to_owned();
    v.start_record(h.recording("cut.wav"), RecordOptions::default())
        .unwrap();
    eventually("the sim to start recording", T, || {
        ready(h.channel(&uuid).is_some_and(|c| c.recording.is_some()))
    })
    .await;
    v.hangup("NORMAL_CLEARING").await.unwrap();
    eventually("the recording leg to end", T, || {
        ready(h.channel(&uuid).is_none())
    })
    .await;
    h.shutdown().await;
}
