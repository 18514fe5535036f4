//! The outbound listener and the call handle against recorded FreeSWITCH
//! traffic (traces 02 and 09 replayed byte for byte) and against a fake leg
//! for the failure cases.

use redswitch_test_support::fake_switch as support;

use redswitch::esl::Event;
use redswitch::switch::outbound::serve;
use redswitch::switch::{
    AppResult, Call, Control, Direction, Error, OutboundConfig, OutboundListener, SocketMode,
};
use std::net::SocketAddr;
use std::time::Duration;
use support::{FakeLeg, reply};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Starts a listener on 127.0.0.1:0 serving `handler`.
async fn listen<H: redswitch::switch::CallHandler>(
    config: OutboundConfig,
    handler: H,
) -> (SocketAddr, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let token = CancellationToken::new();
    tokio::spawn(serve(listener, config, handler, token.clone()));
    (addr, token)
}

async fn recv<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("nothing within 5 s")
        .expect("sender gone")
}

#[tokio::test]
async fn trace_02_playback_dtmf_hangup_linger_exit() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let handler = move |call: Call| {
        let tx = tx.clone();
        async move {
            let mut events = call.events().expect("first take");
            assert!(call.events().is_none(), "the stream is taken once");
            let d = call.channel_data();
            tx.send(format!(
                "data {} {:?} {:?} {:?} {:?} {:?} {:?}",
                d.uuid(),
                d.destination(),
                d.direction(),
                d.socket_mode(),
                d.control(),
                d.variable("socket_host"),
                d.variables_map().get("current_application_data"),
            ))?;
            let done = call
                .playback("tone_stream://%(500,500,440);loops=2")
                .await?;
            tx.send(format!("played {} {:?}", done.application, done.response))?;
            // Trace 02 then receives DTMF 1234 (uuid_recv_dtmf from inbound).
            let mut digits = String::new();
            while digits.len() < 4 {
                let e: Event = events.recv().await.ok_or("events ended")?;
                if e.name() == "DTMF" {
                    digits.push_str(e.header("DTMF-Digit").unwrap_or("?"));
                }
            }
            tx.send(format!("dtmf {digits}"))?;
            call.hangup("NORMAL_CLEARING").await?;
            let cause = call.wait_hangup().await?;
            tx.send(format!("hangup {cause}"))?;
            call.closed().await;
            tx.send("closed".to_owned())?;
            AppResult::Ok(())
        }
    };
    let (addr, _stop) = listen(OutboundConfig::default(), handler).await;
    let fs = tokio::spawn(support::replay_outbound(addr, "02-outbound-socket"));
    assert_eq!(
        recv(&mut rx).await,
        "data b9bf40ae-1b42-48b4-8edd-029b34d97ac8 Some(\"answer-park\") Some(Outbound) Some(Async) Some(Full) Some(\"127.0.0.1\") Some(\"127.0.0.1:8084 async full\")"
    );
    assert_eq!(recv(&mut rx).await, "played playback Some(\"FILE PLAYED\")");
    assert_eq!(recv(&mut rx).await, "dtmf 1234");
    assert_eq!(recv(&mut rx).await, "hangup NORMAL_CLEARING");
    assert_eq!(recv(&mut rx).await, "closed");
    let sent = fs.await.unwrap();
    // The handshake is pipelined in one write; `exit` follows the linger notice.
    assert_eq!(&sent[..3], ["connect", "myevents", "linger"]);
    assert!(sent[3].starts_with("event plain CHANNEL_EXECUTE CHANNEL_EXECUTE_COMPLETE"));
    assert_eq!(sent.last().map(String::as_str), Some("exit"));
    assert_eq!(sent.iter().filter(|c| *c == "sendmsg").count(), 2);
}

#[tokio::test]
async fn trace_09_two_queued_executes_complete_by_application_uuid() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let handler = move |call: Call| {
        let tx = tx.clone();
        async move {
            // Round 1 then round 2 of the trace: two executes in flight each.
            for _ in 0..2 {
                let (long, short) = tokio::join!(
                    call.playback("tone_stream://%(1500,0,440)"),
                    call.playback("tone_stream://%(300,0,660)")
                );
                let (long, short) = (long?, short?);
                tx.send((
                    long.event.header("Application-Data").map(str::to_owned),
                    short.event.header("Application-Data").map(str::to_owned),
                ))?;
            }
            call.hangup("NORMAL_CLEARING").await?;
            call.closed().await;
            AppResult::Ok(())
        }
    };
    let (addr, _stop) = listen(OutboundConfig::default(), handler).await;
    let fs = tokio::spawn(support::replay_outbound(addr, "09-outbound-event-lock"));
    for _ in 0..2 {
        let (long, short) = recv(&mut rx).await;
        assert_eq!(long.as_deref(), Some("tone_stream://%(1500,0,440)"));
        assert_eq!(short.as_deref(), Some("tone_stream://%(300,0,660)"));
    }
    let sent = fs.await.unwrap();
    assert_eq!(sent.iter().filter(|c| *c == "sendmsg").count(), 5);
}

#[tokio::test]
async fn unknown_application_fails_with_the_hangup_cause() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let handler = move |call: Call| {
        let tx = tx.clone();
        async move {
            let r = call.execute("no_such_app", "foo").await;
            tx.send(r.map(|_| ()))?;
            AppResult::Ok(())
        }
    };
    let (addr, _stop) = listen(OutboundConfig::default(), handler).await;
    let mut leg = FakeLeg::connect(addr, "3d99d5e5-9331-47bb-800d-350eacf97dc4").await;
    let f = leg.next_frame().await;
    assert_eq!(f.header("execute-app-name"), Some("no_such_app"));
    assert_eq!(f.header("event-lock"), Some("true"));
    assert!(f.header("Event-UUID").is_some());
    // Trace 03: +OK, no CHANNEL_EXECUTE, the channel hangs up.
    leg.send(reply("+OK")).await;
    let bye = leg.hangup_sequence("DESTINATION_OUT_OF_ORDER");
    leg.send(bye).await;
    let err = recv(&mut rx).await.unwrap_err();
    assert!(
        matches!(&err, Error::Hangup { cause } if cause == "DESTINATION_OUT_OF_ORDER"),
        "{err:?}"
    );
    assert!(err.is_hangup());
    // The linger notice makes the leg say exit; the app already hung up.
    assert_eq!(leg.next_command().await, "exit");
    leg.send(reply("+OK bye")).await;
    drop(leg.wr);
}

#[tokio::test]
async fn outside_the_allow_list_is_closed_at_once_and_others_are_served() {
    let config = OutboundConfig {
        allow: vec!["127.0.0.2/32".parse().unwrap()],
        ..Default::default()
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let handler = move |call: Call| {
        let tx = tx.clone();
        async move {
            tx.send(call.uuid().to_owned())?;
            call.hangup("NORMAL_CLEARING").await?;
            AppResult::Ok(())
        }
    };
    let (addr, _stop) = listen(config, handler).await;
    // From 127.0.0.1: closed without a word.
    let mut refused = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut refused, &mut buf),
    )
    .await
    .expect("not closed")
    .unwrap_or(0);
    assert_eq!(n, 0, "the refused peer got {:?}", &buf[..n]);
    // From 127.0.0.2 (loopback too, but a different address): served.
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let (rd, wr) = stream.into_split();
    let mut leg = FakeLeg {
        rd: tokio_util::codec::FramedRead::new(rd, redswitch::esl::EslCodec::server()),
        wr,
        uuid: "u-allowed".into(),
    };
    assert_eq!(leg.next_command().await, "connect");
    leg.send(support::connect_reply("u-allowed", "async", "full"))
        .await;
    assert_eq!(recv(&mut rx).await, "u-allowed");
}

#[tokio::test]
async fn a_broken_leg_closes_alone() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let handler = move |call: Call| {
        let tx = tx.clone();
        async move {
            let r = call.answer().await.map(|c| c.application);
            tx.send((call.uuid().to_owned(), r))?;
            AppResult::Ok(())
        }
    };
    let (addr, _stop) = listen(OutboundConfig::default(), handler).await;
    let mut bad = FakeLeg::connect(addr, "leg-bad").await;
    let mut good = FakeLeg::connect(addr, "leg-good").await;
    assert!(bad.next_frame().await.header("execute-app-name") == Some("answer"));
    let f = good.next_frame().await;
    let app_uuid = f.header("Event-UUID").unwrap().to_owned();
    // Garbage on one leg: a header line without a colon.
    bad.send(b"this is not ESL\n\n").await;
    let (uuid, r) = recv(&mut rx).await;
    assert_eq!(uuid, "leg-bad");
    assert!(r.unwrap_err().is_connection_dropped());
    bad.expect_closed().await;
    // The other leg completes normally.
    good.send(reply("+OK")).await;
    let done = good.channel_event(
        "CHANNEL_EXECUTE_COMPLETE",
        &[("Application", "answer"), ("Application-UUID", &app_uuid)],
    );
    good.send(done).await;
    let (uuid, r) = recv(&mut rx).await;
    assert_eq!(uuid, "leg-good");
    assert_eq!(r.unwrap(), "answer");
    // Its app returned with the channel up: the leg is ended for it, with
    // `uuid_kill` (a queued `sendmsg` hangup could wait behind a running
    // app for good).
    assert_eq!(
        good.next_command().await,
        "api uuid_kill leg-good NORMAL_CLEARING"
    );
}

#[tokio::test]
async fn bad_frames_close_the_leg_and_fail_requests_at_once() {
    let cases: &[&[u8]] = &[
        b"\x00\xff\xfe garbage \x01\x02\n\n",
        b"Content-Type: api/response\nContent-Length: -5\n\n",
        b"Content-Type: api/response\nContent-Length: twelve\n\n",
        b"Content-Type: api/response\nContent-Length: 99999999999\n\n",
        b"Content-Type: api/response\nContent-Length: 100\n\nonly part of the bo",
    ];
    for (i, bytes) in cases.iter().enumerate() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let handler = move |call: Call| {
            let tx = tx.clone();
            async move {
                tx.send(call.api("status").await)?;
                AppResult::Ok(())
            }
        };
        let (addr, _stop) = listen(OutboundConfig::default(), handler).await;
        let mut leg = FakeLeg::connect(addr, &format!("leg-{i}")).await;
        assert_eq!(leg.next_command().await, "api status");
        leg.send(bytes).await;
        if i == cases.len() - 1 {
            // A frame cut mid-body, then EOF.
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut leg.wr).await;
        }
        let started = std::time::Instant::now();
        let err = recv(&mut rx).await.unwrap_err();
        assert!(err.is_connection_dropped(), "case {i}: {err:?}");
        assert!(started.elapsed() < Duration::from_secs(2), "case {i} hung");
        leg.expect_closed().await;
    }
}

#[tokio::test]
async fn non_utf8_and_broken_escapes_reach_the_app_and_no_event_name_is_dropped() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let handler = move |call: Call| {
        let tx = tx.clone();
        async move {
            let mut events = call.events().ok_or("taken")?;
            while let Some(e) = events.recv().await {
                tx.send(e)?;
            }
            AppResult::Ok(())
        }
    };
    let (addr, _stop) = listen(OutboundConfig::default(), handler).await;
    let mut leg = FakeLeg::connect(addr, "leg-x").await;
    let mut raw = Vec::new();
    for body in [
        &b"Event-Name: CUSTOM\nX-Bin: \xff\xfeok\nX-Pct: 100%zz%4\n\n"[..],
        &b"Unique-ID: leg-x\nX-Nameless: yes\n\n"[..],
        &b"Event-Name: DTMF\nDTMF-Digit: 5\n\n"[..],
    ] {
        raw.extend_from_slice(
            format!(
                "Content-Length: {}\nContent-Type: text/event-plain\n\n",
                body.len()
            )
            .as_bytes(),
        );
        raw.extend_from_slice(body);
    }
    leg.send(&raw).await;
    let e = recv(&mut rx).await;
    assert_eq!(e.header("X-Bin"), Some("\u{FFFD}\u{FFFD}ok"));
    assert_eq!(e.header("X-Pct"), Some("100%zz%4"));
    // The nameless event was dropped; the next one arrives.
    let e = recv(&mut rx).await;
    assert_eq!(e.name(), "DTMF");
}

#[tokio::test]
async fn static_socket_is_served_with_a_warning() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let handler = move |call: Call| {
        let tx = tx.clone();
        async move {
            let d = call.channel_data();
            tx.send((d.socket_mode(), d.control()))?;
            Ok(())
        }
    };
    let (addr, _stop) = listen(OutboundConfig::default(), handler).await;
    let mut leg = FakeLeg::connect_with(addr, "leg-static", "static").await;
    assert_eq!(
        recv(&mut rx).await,
        (Some(SocketMode::Static), Some(Control::SingleChannel))
    );
    assert_eq!(
        leg.next_command().await,
        "api uuid_kill leg-static NORMAL_CLEARING"
    );
}

#[tokio::test]
async fn a_panicking_app_hangs_its_leg_up_and_the_listener_goes_on() {
    let handler = |call: Call| async move {
        if call.uuid() == "leg-panic" {
            panic!("app bug");
        }
        Ok(())
    };
    let (addr, _stop) = listen(OutboundConfig::default(), handler).await;
    let mut leg = FakeLeg::connect(addr, "leg-panic").await;
    assert_eq!(
        leg.next_command().await,
        "api uuid_kill leg-panic NORMAL_TEMPORARY_FAILURE"
    );
    let mut next = FakeLeg::connect(addr, "leg-after").await;
    assert_eq!(
        next.next_command().await,
        "api uuid_kill leg-after NORMAL_CLEARING"
    );
}

#[tokio::test]
async fn max_legs_holds_further_connections_back() {
    let config = OutboundConfig {
        max_legs: 1,
        ..Default::default()
    };
    let handler = |call: Call| async move {
        call.closed().await;
        Ok(())
    };
    let (addr, _stop) = listen(config, handler).await;
    let first = FakeLeg::connect(addr, "leg-1").await;
    let mut second = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 16];
    let early = tokio::time::timeout(
        Duration::from_millis(300),
        tokio::io::AsyncReadExt::read(&mut second, &mut buf),
    )
    .await;
    assert!(early.is_err(), "the second leg was served beyond max_legs");
    drop(first);
    let n = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut second, &mut buf),
    )
    .await
    .expect("second leg not served after the first ended")
    .unwrap();
    assert_eq!(&buf[..n.min(9)], b"connect\n\n");
}

#[tokio::test]
async fn direction_and_caller_come_from_the_channel_data() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let handler = move |call: Call| {
        let tx = tx.clone();
        async move {
            let d = call.channel_data();
            tx.send((
                d.caller_number().map(str::to_owned),
                d.caller_name().map(str::to_owned),
                d.callee_number().map(str::to_owned),
                d.direction(),
                d.variable("dial_id").map(str::to_owned),
            ))?;
            Ok(())
        }
    };
    let (addr, _stop) = listen(OutboundConfig::default(), handler).await;
    let _leg = FakeLeg::connect(addr, "leg-d").await;
    let (num, name, callee, dir, dial) = recv(&mut rx).await;
    assert_eq!(num.as_deref(), Some("15105625882"));
    assert_eq!(name.as_deref(), Some("Alice A"));
    assert_eq!(callee.as_deref(), Some("14157697098"));
    assert_eq!(dir, Some(Direction::Outbound));
    assert_eq!(dial.as_deref(), Some("d1"));
}

#[tokio::test]
async fn a_slow_app_stalls_its_leg_and_loses_no_event() {
    const N: u64 = 5_000;
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let go = std::sync::Arc::new(std::sync::Mutex::new(Some(go_rx)));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let handler = move |call: Call| {
        let (tx, go) = (tx.clone(), go.clone());
        async move {
            let mut events = call.events().ok_or("taken")?;
            let go = go.lock().unwrap().take().ok_or("one leg only")?;
            // The app is busy elsewhere until told to read.
            go.await?;
            let mut next = 0u64;
            while next < N {
                let e = events.recv().await.ok_or("events ended")?;
                if e.name() == "DTMF" {
                    let seq: u64 = e.header("Seq").ok_or("no Seq")?.parse()?;
                    if seq != next {
                        tx.send(format!("got {seq}, wanted {next}"))?;
                        return Ok(());
                    }
                    next += 1;
                }
            }
            tx.send(format!("all {next} in order"))?;
            AppResult::Ok(())
        }
    };
    let config = OutboundConfig {
        event_buffer_bytes: 64 * 1024,
        ..OutboundConfig::default()
    };
    let listener = OutboundListener::bind("127.0.0.1:0", config).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = listener.stats();
    assert_eq!(stats.buffer_limit_bytes(), 64 * 1024);
    let stop = CancellationToken::new();
    tokio::spawn(listener.serve(handler, stop.clone()));
    let mut leg = FakeLeg::connect(addr, "leg-slow").await;
    // ~1 KiB DTMF events, 5 MB in all: the leg must stop reading.
    let pad = "p".repeat(1000);
    let mut flood = Vec::new();
    for seq in 0..N {
        flood.extend_from_slice(&leg.channel_event(
            "DTMF",
            &[
                ("DTMF-Digit", "1"),
                ("Seq", &seq.to_string()),
                ("Pad", &pad),
            ],
        ));
    }
    let one = flood.len() as u64 / N;
    let writer = tokio::spawn(async move {
        leg.send(&flood).await;
        leg
    });
    tokio::time::timeout(Duration::from_secs(10), async {
        while stats.stalled_now() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the leg never stalled");
    let buffered = stats.buffered_bytes();
    assert!(buffered <= 64 * 1024 + one, "{buffered} bytes buffered");
    assert!(!writer.is_finished(), "the fake could write everything");
    go_tx.send(()).unwrap();
    assert_eq!(recv(&mut rx).await, format!("all {N} in order"));
    let _leg = writer.await.unwrap();
    assert_eq!(stats.events_dropped(), 0);
    assert!(stats.stalls() >= 1);
    assert!(stats.stalled() > Duration::ZERO);
    stop.cancel();
}

#[tokio::test]
async fn an_event_larger_than_the_leg_buffer_closes_the_leg_with_a_clear_error() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let handler = move |call: Call| {
        let tx = tx.clone();
        async move {
            tx.send(call.api("status").await)?;
            AppResult::Ok(())
        }
    };
    let config = OutboundConfig {
        event_buffer_bytes: 16 * 1024,
        ..OutboundConfig::default()
    };
    let (addr, _stop) = listen(config, handler).await;
    let mut leg = FakeLeg::connect(addr, "leg-big").await;
    assert_eq!(leg.next_command().await, "api status");
    let big = leg.channel_event("CUSTOM", &[("Pad", &"z".repeat(20_000))]);
    leg.send(big).await;
    let err = recv(&mut rx).await.unwrap_err();
    assert!(err.is_connection_dropped(), "{err:?}");
    leg.expect_closed().await;
}
