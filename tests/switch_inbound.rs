//! The inbound client against a fake FreeSWITCH that answers as the traces
//! show: auth, api, bgapi by Job-UUID, subscriptions, reconnect with replay,
//! and every bad input of issue 2 that concerns the client.

use redswitch_test_support::fake_switch as support;

use redswitch::esl::EventFormat;
use redswitch::switch::{Error, InboundClient, InboundConfig, ReconnectPolicy};
use std::time::{Duration, Instant};
use support::{FakeFs, api_response, event, reply};

fn config(fake: &FakeFs) -> InboundConfig {
    let mut c = InboundConfig::new(fake.addr.to_string(), "ClueCon");
    c.request_timeout = Duration::from_secs(5);
    c.reconnect = ReconnectPolicy {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(100),
        max_attempts: None,
    };
    c
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within 5 s"))
}

#[tokio::test]
async fn api_replies_in_order_and_errors_are_typed() {
    let fake = FakeFs::start("ClueCon").await;
    let (client, _events) = InboundClient::connect(config(&fake)).await.unwrap();
    assert!(client.is_connected());
    // Many requests in flight at once: FIFO matching keeps them straight.
    let (a, b, c) = tokio::join!(
        client.api("status"),
        client.api("no_such_command"),
        client.api("status")
    );
    assert_eq!(a.unwrap(), "UP 0 years, 0 days\n");
    let err = b.unwrap_err();
    assert!(
        matches!(&err, Error::CommandFailed { reply } if reply == "-ERR no_such_command Command not found!"),
        "{err:?}"
    );
    assert_eq!(c.unwrap(), "UP 0 years, 0 days\n");
    let r = client
        .send(redswitch::esl::Command::Api {
            command: "status".into(),
        })
        .await
        .unwrap();
    assert_eq!(r.body().map(|b| b.len()), Some(19));
    // Writes are one per command, with the auth first.
    assert_eq!(fake.commands(0)[0], "auth ClueCon");
}

#[tokio::test]
async fn wrong_password_is_a_typed_error() {
    let fake = FakeFs::start("ClueCon").await;
    let mut c = config(&fake);
    c.password = "WrongPassword".into();
    let err = InboundClient::connect(c).await.unwrap_err();
    assert!(err.is_auth_failed(), "{err:?}");
    assert!(
        err.to_string()
            .contains("rejected the event-socket password")
    );
    assert!(!err.to_string().contains("WrongPassword"));
}

#[tokio::test]
async fn nothing_listening_is_a_typed_error() {
    let addr = support::dead_port().await;
    let err = InboundClient::connect(InboundConfig::new(addr.to_string(), "ClueCon"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");
    assert!(err.to_string().contains("cannot reach FreeSWITCH"));
}

#[tokio::test]
async fn an_acl_rejection_is_a_typed_error() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let _ = tokio::io::AsyncWriteExt::write_all(
            &mut s,
            b"Content-Type: text/rude-rejection\nContent-Length: 24\n\nAccess Denied, go away.\n",
        )
        .await;
    });
    let err = InboundClient::connect(InboundConfig::new(addr.to_string(), "ClueCon"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Refused { reason, .. } if reason.contains("Access Denied")),
        "{err:?}"
    );
}

#[tokio::test]
async fn bgapi_resolves_by_job_uuid_and_is_hidden_unless_subscribed() {
    let fake = FakeFs::start("ClueCon").await;
    let (client, mut events) = InboundClient::connect(config(&fake)).await.unwrap();
    // The client subscribed BACKGROUND_JOB for itself.
    assert_eq!(fake.commands(0)[1], "event plain BACKGROUND_JOB");
    let (ok, busy) = tokio::join!(
        client.bgapi("originate loopback/x &park()"),
        client.bgapi("originate loopback/busy &park()")
    );
    let ok = ok.unwrap();
    assert_eq!(ok.result(), Ok("originate loopback/x &park()"));
    let busy = busy.unwrap();
    assert_eq!(busy.result(), Err("USER_BUSY"));
    assert_ne!(ok.job_uuid, busy.job_uuid);
    assert_eq!(ok.event.job_uuid(), Some(ok.job_uuid.as_str()));
    // Not subscribed by the user: nothing reached the stream.
    assert!(events.is_empty());
    client
        .subscribe(EventFormat::Plain, ["BACKGROUND_JOB"])
        .await
        .unwrap();
    let r = client.bgapi("status").await.unwrap();
    let e = within("bg event", events.recv()).await.unwrap();
    assert_eq!(e.job_uuid(), Some(r.job_uuid.as_str()));
}

#[tokio::test]
async fn a_job_event_before_its_reply_still_resolves() {
    // The Job-UUID is chosen by the client and registered before the write,
    // so even an event racing ahead of the reply finds its job.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use futures::StreamExt;
        use tokio::io::AsyncWriteExt;
        let (s, _) = listener.accept().await.unwrap();
        let (rd, mut wr) = s.into_split();
        let mut rd = tokio_util::codec::FramedRead::new(rd, redswitch::esl::EslCodec::server());
        wr.write_all(support::AUTH_REQUEST).await.unwrap();
        while let Some(Ok(f)) = rd.next().await {
            let line = String::from_utf8_lossy(f.command_line().unwrap()).into_owned();
            if line.starts_with("bgapi") {
                let job = f.header("Job-UUID").unwrap().to_owned();
                let ev = event("BACKGROUND_JOB", &[("Job-UUID", &job)], Some("+OK early\n"));
                wr.write_all(&ev).await.unwrap();
                wr.write_all(&reply(&format!("+OK Job-UUID: {job}")))
                    .await
                    .unwrap();
            } else {
                wr.write_all(&reply("+OK accepted")).await.unwrap();
            }
        }
    });
    let (client, _events) = InboundClient::connect(InboundConfig::new(addr.to_string(), "ClueCon"))
        .await
        .unwrap();
    let r = within("bgapi", client.bgapi("status")).await.unwrap();
    assert_eq!(r.result(), Ok("early"));
}

#[tokio::test]
async fn events_flow_plain_and_json_and_bad_ones_are_dropped() {
    let fake = FakeFs::start("ClueCon").await;
    let (client, mut events) = InboundClient::connect(config(&fake)).await.unwrap();
    client
        .subscribe(EventFormat::Plain, ["CHANNEL_ANSWER", "CUSTOM"])
        .await
        .unwrap();
    fake.send(event("CHANNEL_ANSWER", &[("Unique-ID", "u1")], None));
    // No Event-Name: dropped and logged, the connection stays.
    fake.send(support::raw_plain(b"Unique-ID: u2\nX-Y: z\n\n"));
    // A broken percent-escape and non-UTF-8 bytes are kept as they can be.
    fake.send(support::raw_plain(
        b"Event-Name: CUSTOM\nA: 100%zz\nB: \xff%FEok\n\n",
    ));
    let json = br#"{"Event-Name":"CHANNEL_HANGUP","Unique-ID":"u1","Hangup-Cause":"NORMAL_CLEARING","Content-Length":"3","_body":"abc"}"#;
    let mut frame = format!(
        "Content-Length: {}\nContent-Type: text/event-json\n\n",
        json.len()
    )
    .into_bytes();
    frame.extend_from_slice(json);
    fake.send(frame);
    let e = within("answer", events.recv()).await.unwrap();
    assert_eq!((e.name(), e.unique_id()), ("CHANNEL_ANSWER", Some("u1")));
    let e = within("custom", events.recv()).await.unwrap();
    assert_eq!(e.header("A"), Some("100%zz"));
    assert_eq!(e.header("B"), Some("\u{FFFD}\u{FFFD}ok"));
    let e = within("json", events.recv()).await.unwrap();
    assert_eq!(e.hangup_cause(), Some("NORMAL_CLEARING"));
    assert_eq!(e.body(), Some("abc"));
    assert_eq!(client.api("status").await.unwrap(), "UP 0 years, 0 days\n");
}

#[tokio::test]
async fn filters_keep_bgapi_working_and_are_undone() {
    let fake = FakeFs::start("ClueCon").await;
    let (client, _events) = InboundClient::connect(config(&fake)).await.unwrap();
    client.filter("Unique-ID", "u1").await.unwrap();
    client.filter("Unique-ID", "u2").await.unwrap();
    client.filter_delete("Unique-ID", Some("u1")).await.unwrap();
    client.filter_delete("Unique-ID", Some("u2")).await.unwrap();
    client.nixevent(["BACKGROUND_JOB"]).await.unwrap();
    client.bgapi("status").await.unwrap();
    let cmds = fake.commands(0);
    assert_eq!(
        &cmds[2..],
        [
            "filter Event-Name BACKGROUND_JOB",
            "filter Unique-ID u1",
            "filter Unique-ID u2",
            "filter delete Unique-ID u1",
            "filter delete Unique-ID u2",
            "filter delete Event-Name BACKGROUND_JOB",
            // nixevent BACKGROUND_JOB never reaches FreeSWITCH: bgapi needs it.
            cmds.last().unwrap().as_str(),
        ]
    );
    assert!(cmds.last().unwrap().starts_with("bgapi status"));
}

#[tokio::test]
async fn a_drop_fails_requests_in_flight_at_once_then_reconnects_and_resubscribes() {
    let fake = FakeFs::start("ClueCon").await;
    let (client, mut events) = InboundClient::connect(config(&fake)).await.unwrap();
    client
        .subscribe(EventFormat::Plain, ["CHANNEL_ANSWER"])
        .await
        .unwrap();
    client.subscribe(EventFormat::Json, ["DTMF"]).await.unwrap();
    client.filter("Unique-ID", "u1").await.unwrap();
    client.nixevent(["DTMF"]).await.unwrap();
    // Two requests FreeSWITCH never answers, then it goes away.
    let c2 = client.clone();
    let inflight = tokio::spawn(async move { tokio::join!(c2.api("hang 1"), c2.bgapi("hang 2")) });
    fake.wait_command(0, "bgapi hang 2").await;
    let started = Instant::now();
    fake.close();
    let (a, b) = within("in-flight", inflight).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(a.unwrap_err().is_connection_dropped());
    assert!(b.unwrap_err().is_connection_dropped());
    // The client comes back by itself and replays what was subscribed.
    within("reconnect", async {
        while fake.connections() < 2 || !client.is_connected() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(client.api("status").await.unwrap(), "UP 0 years, 0 days\n");
    assert_eq!(
        fake.commands(1),
        [
            "auth ClueCon",
            "event json BACKGROUND_JOB CHANNEL_ANSWER",
            "filter Event-Name BACKGROUND_JOB",
            "filter Unique-ID u1",
            "api status"
        ]
    );
    fake.send(event("CHANNEL_ANSWER", &[("Unique-ID", "u1")], None));
    let e = within("event after reconnect", events.recv())
        .await
        .unwrap();
    assert_eq!(e.name(), "CHANNEL_ANSWER");
}

#[tokio::test]
async fn requests_while_down_fail_fast_and_giving_up_ends_the_stream() {
    // A FreeSWITCH that serves one session and then is gone for good.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (close_tx, close_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut s, _) = listener.accept().await.unwrap();
        drop(listener);
        s.write_all(support::AUTH_REQUEST).await.unwrap();
        let mut buf = [0u8; 256];
        let mut seen = Vec::new();
        // auth, then `event plain BACKGROUND_JOB`
        for text in ["+OK accepted", "+OK event listener enabled plain"] {
            while !seen.windows(2).any(|w| w == b"\n\n") {
                let n = s.read(&mut buf).await.unwrap();
                seen.extend_from_slice(&buf[..n]);
            }
            let end = seen.windows(2).position(|w| w == b"\n\n").unwrap();
            seen.drain(..end + 2);
            s.write_all(&reply(text)).await.unwrap();
        }
        let _ = close_rx.await;
    });
    let mut c = InboundConfig::new(addr.to_string(), "ClueCon");
    c.reconnect = ReconnectPolicy {
        initial: Duration::from_millis(300),
        max: Duration::from_millis(300),
        max_attempts: Some(2),
    };
    let (client, mut events) = InboundClient::connect(c).await.unwrap();
    drop(close_tx);
    within("notice the drop", async {
        while client.is_connected() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    // While reconnecting, requests fail at once instead of queueing.
    let started = Instant::now();
    let err = client.api("status").await.unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(200));
    assert!(matches!(err, Error::NotConnected), "{err:?}");
    assert!(err.is_connection_dropped());
    // After the last attempt the driver stops: the stream ends, requests
    // report a closed client.
    assert!(within("stream end", events.recv()).await.is_none());
    let err = client.api("status").await.unwrap_err();
    assert!(matches!(err, Error::Closed), "{err:?}");
}

#[tokio::test]
async fn bad_frames_drop_the_connection_with_a_typed_error() {
    let cases: &[&[u8]] = &[
        b"\x00\xff garbage bytes \x01\n\n",
        b"a header line without a colon\n\n",
        b"Content-Type: api/response\nContent-Length: -1\n\n",
        b"Content-Type: api/response\nContent-Length: 12abc\n\n",
        b"Content-Type: api/response\nContent-Length: 18446744073709551616\n\n",
        b"Content-Type: api/response\nContent-Length: 999999999\n\n",
    ];
    for (i, bytes) in cases.iter().enumerate() {
        let fake = FakeFs::start("ClueCon").await;
        let (client, _events) = InboundClient::connect(config(&fake)).await.unwrap();
        let c2 = client.clone();
        let inflight = tokio::spawn(async move { c2.api("hang").await });
        fake.wait_command(0, "api hang").await;
        fake.send(*bytes);
        let err = within("in-flight", inflight).await.unwrap().unwrap_err();
        assert!(err.is_connection_dropped(), "case {i}: {err:?}");
        // The client reconnects and works again.
        within("reconnect", async {
            while fake.connections() < 2 || !client.is_connected() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(client.api("status").await.is_ok(), "case {i}");
    }
}

#[tokio::test]
async fn a_frame_cut_mid_body_then_eof_fails_the_request() {
    let fake = FakeFs::start("ClueCon").await;
    let (client, _events) = InboundClient::connect(config(&fake)).await.unwrap();
    let c2 = client.clone();
    let inflight = tokio::spawn(async move { c2.api("hang").await });
    fake.wait_command(0, "api hang").await;
    fake.send(&b"Content-Type: api/response\nContent-Length: 100\n\nonly a part"[..]);
    fake.close();
    let err = within("in-flight", inflight).await.unwrap().unwrap_err();
    assert!(err.is_connection_dropped(), "{err:?}");
}

#[tokio::test]
async fn a_missing_content_length_leaves_the_body_as_garbage_headers() {
    // Without Content-Length the body is read as the next header block:
    // "UP 0 years" has no colon, so the connection is dropped with a typed
    // error instead of running on out of step.
    let fake = FakeFs::start("ClueCon").await;
    let (client, _events) = InboundClient::connect(config(&fake)).await.unwrap();
    let c2 = client.clone();
    let inflight = tokio::spawn(async move { (c2.api("hang").await, c2.api("hang").await) });
    fake.wait_command(0, "api hang").await;
    fake.send(&b"Content-Type: api/response\n\nUP 0 years\n\n"[..]);
    let (first, second) = within("in-flight", inflight).await.unwrap();
    // The reply without its body carries no output at all.
    assert!(
        matches!(first, Err(Error::CommandFailed { .. })),
        "{first:?}"
    );
    assert!(second.unwrap_err().is_connection_dropped());
}

#[tokio::test]
async fn request_timeout_applies() {
    let fake = FakeFs::start("ClueCon").await;
    let mut c = config(&fake);
    c.request_timeout = Duration::from_millis(100);
    let (client, _events) = InboundClient::connect(c).await.unwrap();
    let err = client.api("hang").await.unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
}

#[tokio::test]
async fn a_slow_consumer_costs_events_not_the_connection() {
    let fake = FakeFs::start("ClueCon").await;
    let mut c = config(&fake);
    c.event_buffer = 64;
    let (client, mut events) = InboundClient::connect(c).await.unwrap();
    client.subscribe(EventFormat::Plain, ["ALL"]).await.unwrap();
    // 20,000 events of ~2 KiB (40 MB): far more than any socket buffer,
    // so the fake can only finish writing if the client keeps reading.
    let pad = "x".repeat(2000);
    let one = event("HEARTBEAT", &[("Pad", &pad)], None);
    let mut flood = Vec::with_capacity(one.len() * 20_000);
    for _ in 0..20_000 {
        flood.extend_from_slice(&one);
    }
    fake.send(flood);
    // Meanwhile requests are still answered.
    within("api during the flood", client.api("status"))
        .await
        .unwrap();
    within("flood drained", async {
        while client.dropped_events() + (events.len() as u64) < 20_000 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(events.len() <= events.capacity());
    assert_eq!(events.dropped(), 20_000 - events.len() as u64);
    // The oldest events are the ones kept (drop-newest).
    assert_eq!(
        within("first", events.recv()).await.unwrap().name(),
        "HEARTBEAT"
    );
}

#[tokio::test]
async fn close_says_exit_and_ends_the_stream() {
    let fake = FakeFs::start("ClueCon").await;
    let (client, mut events) = InboundClient::connect(config(&fake)).await.unwrap();
    client.close().await.unwrap();
    assert!(within("stream end", events.recv()).await.is_none());
    assert_eq!(fake.connections(), 1, "no reconnect after close");
    assert!(
        client
            .api("status")
            .await
            .unwrap_err()
            .is_connection_dropped()
    );
}

#[tokio::test]
async fn api_over_a_json_subscription_still_matches_replies() {
    let fake = FakeFs::start("ClueCon").await;
    let (client, mut events) = InboundClient::connect(config(&fake)).await.unwrap();
    client.subscribe(EventFormat::Json, ["ALL"]).await.unwrap();
    // An unsolicited reply, then an event: once the event is out, the
    // reply has been seen (the socket is read in order).
    fake.send(api_response("unsolicited?\n"));
    fake.send(event("HEARTBEAT", &[], None));
    let e = within("heartbeat", events.recv()).await.unwrap();
    assert_eq!(e.name(), "HEARTBEAT");
    // The unsolicited reply was logged and ignored; requests go on.
    assert_eq!(client.api("status").await.unwrap(), "UP 0 years, 0 days\n");
}
