//! Bad input against the simulator's event socket, over real sockets: each
//! offending connection gets the reply FreeSWITCH 1.10 gives (its
//! `read_packet`/`parse_command` are lenient) or is closed, the simulator
//! stays up, and a witness connection opened beforehand keeps working.
//!
//! What FreeSWITCH does, and so what is asserted:
//! - an unparseable command line → `-ERR command not found`, connection
//!   kept (authenticated or not);
//! - a header line without `:` → ignored, the command still runs;
//! - a header block longer than `max_len` → cut there and parsed as a
//!   command (here the limit is lowered to 4 KiB to keep the test small);
//! - a negative or non-numeric `Content-Length` → no body; the bytes after
//!   the blank line are read as the next command;
//! - a huge `Content-Length` → (simulator limit) goodbye notice and close;
//! - a packet cut off mid-body then EOF → goodbye notice and close;
//! - a wrong password → the exact bytes of trace 01, then close;
//! - a client that stops reading while events flood → killed (closed
//!   without a notice) after `max_missed` lost events;
//! - commands in flight at shutdown → the shutdown notice, then close.

use redswitch::sim::{SimConfig, SimHandle};
use redswitch_test_support as support;
use std::net::SocketAddr;
use std::time::Duration;
use support::sim_client::{WAIT, sim, sim_with};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// One frame the simulator sent.
#[derive(Debug)]
struct Msg {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Msg {
    fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn content_type(&self) -> &str {
        self.get("Content-Type").unwrap_or("")
    }
}

/// A bare-bytes ESL client: nothing is hidden behind a library.
struct Client {
    s: TcpStream,
    buf: Vec<u8>,
    eof: bool,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Self {
        let s = TcpStream::connect(addr).await.expect("connect");
        s.set_nodelay(true).expect("nodelay");
        Self {
            s,
            buf: Vec::new(),
            eof: false,
        }
    }

    async fn login(addr: SocketAddr) -> Self {
        let mut c = Self::connect(addr).await;
        let m = c.msg().await.expect("auth/request");
        assert_eq!(m.content_type(), "auth/request");
        assert_eq!(c.reply("auth ClueCon").await, "+OK accepted");
        c
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.expect("send");
    }

    /// Reads more bytes; false at EOF (or a reset, which a killed
    /// connection may produce).
    async fn fill(&mut self) -> bool {
        self.buf.reserve(65536);
        match timeout(WAIT, self.s.read_buf(&mut self.buf)).await {
            Err(_) => panic!("the simulator sent nothing for {WAIT:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => {
                self.eof = true;
                false
            }
            Ok(Ok(_)) => true,
        }
    }

    /// The next frame, or `None` at EOF.
    async fn msg(&mut self) -> Option<Msg> {
        loop {
            if let Some(end) = find(&self.buf, b"\n\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                let headers: Vec<(String, String)> = head
                    .lines()
                    .filter_map(|l| l.split_once(": "))
                    .map(|(n, v)| (n.to_owned(), v.to_owned()))
                    .collect();
                let len: usize = headers
                    .iter()
                    .find(|(n, _)| n == "Content-Length")
                    .map_or(0, |(_, v)| v.parse().expect("numeric Content-Length"));
                while self.buf.len() < end + 2 + len {
                    assert!(self.fill().await, "EOF inside a frame");
                }
                let body = self.buf[end + 2..end + 2 + len].to_vec();
                self.buf.drain(..end + 2 + len);
                return Some(Msg { headers, body });
            }
            if !self.fill().await {
                assert!(self.buf.is_empty(), "EOF after a partial frame");
                return None;
            }
        }
    }

    async fn reply(&mut self, cmd: &str) -> String {
        self.send(format!("{cmd}\n\n").as_bytes()).await;
        self.reply_text().await
    }

    async fn reply_text(&mut self) -> String {
        let m = self.msg().await.expect("a reply");
        assert_eq!(m.content_type(), "command/reply", "{m:?}");
        m.get("Reply-Text").expect("Reply-Text").to_owned()
    }

    async fn api(&mut self, cmd: &str) -> String {
        self.send(format!("api {cmd}\n\n").as_bytes()).await;
        let m = self.msg().await.expect("an api response");
        assert_eq!(m.content_type(), "api/response", "{m:?}");
        String::from_utf8(m.body).expect("utf-8")
    }

    /// Everything until EOF.
    async fn drain(&mut self) -> Vec<Msg> {
        let mut v = Vec::new();
        while let Some(m) = self.msg().await {
            v.push(m);
        }
        v
    }
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

/// The simulator still serves: the witness connection answers, and a new
/// connection can log in.
async fn assert_alive(sim: &SimHandle, witness: &mut Client) {
    assert!(witness.api("status").await.starts_with("UP "));
    let mut fresh = Client::login(sim.esl_addr()).await;
    assert!(fresh.api("status").await.starts_with("UP "));
}

fn goodbye(m: &Msg) {
    assert_eq!(m.content_type(), "text/disconnect-notice", "{m:?}");
    assert_eq!(
        m.body,
        b"Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n"
    );
}

#[tokio::test]
async fn wrong_password_gets_trace_01s_bytes_then_close() {
    let sim = sim().await;
    let mut witness = Client::login(sim.esl_addr()).await;
    let mut c = Client::connect(sim.esl_addr()).await;
    let mut raw = Vec::new();
    while raw.len() < 28 {
        assert!(c.fill().await);
        raw = c.buf.clone();
    }
    assert_eq!(raw, b"Content-Type: auth/request\n\n");
    c.buf.clear();
    c.send(b"auth WrongPassword\n\n").await;
    while c.fill().await {}
    // Trace 01, connection inbound-badpw: 178 bytes, then FreeSWITCH closes.
    assert_eq!(
        String::from_utf8_lossy(&c.buf),
        "Content-Type: command/reply\nReply-Text: -ERR invalid\n\n\
         Content-Type: text/disconnect-notice\nContent-Length: 67\n\n\
         Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n"
    );
    assert_alive(&sim, &mut witness).await;
    sim.shutdown().await;
}

#[tokio::test]
async fn garbage_gets_command_not_found_and_the_connection_lives() {
    let sim = sim().await;
    let mut witness = Client::login(sim.esl_addr()).await;

    // Not yet authenticated: parse_command answers anything but auth so.
    let mut c = Client::connect(sim.esl_addr()).await;
    assert_eq!(
        c.msg().await.expect("greeting").content_type(),
        "auth/request"
    );
    c.send(b"\x00\xff\xfe binary \x01\x02 junk\n\n").await;
    assert_eq!(c.reply_text().await, "-ERR command not found");
    assert_eq!(c.reply("api status").await, "-ERR command not found");
    assert_eq!(c.reply("auth ClueCon").await, "+OK accepted");

    // Authenticated: 100 KiB of bytes with no line end, then one.
    let junk: Vec<u8> = (0..100_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .map(|b| if b == b'\n' || b == b'\r' { b'x' } else { b })
        .collect();
    c.send(&junk).await;
    c.send(b"\n\n").await;
    assert_eq!(c.reply_text().await, "-ERR command not found");
    assert_eq!(
        c.reply("no_such_command arg").await,
        "-ERR command not found"
    );
    // Stray blank lines between packets are skipped, as FreeSWITCH does.
    c.send(b"\r\n\n\r\n").await;
    assert!(c.api("status").await.starts_with("UP "));

    assert_alive(&sim, &mut witness).await;
    sim.shutdown().await;
}

#[tokio::test]
async fn header_line_without_colon_is_ignored_and_the_command_runs() {
    let sim = sim().await;
    let mut witness = Client::login(sim.esl_addr()).await;
    let mut listener = Client::login(sim.esl_addr()).await;
    assert_eq!(
        listener.reply("event plain CUSTOM test::nocolon").await,
        "+OK event listener enabled plain"
    );

    let mut c = Client::login(sim.esl_addr()).await;
    c.send(b"sendevent CUSTOM\nEvent-Subclass: test::nocolon\nthis line has no colon\nX-Probe: one\n\n")
        .await;
    let reply = c.reply_text().await;
    assert!(reply.starts_with("+OK "), "{reply}");

    let ev = listener.msg().await.expect("the event");
    assert_eq!(ev.content_type(), "text/event-plain");
    let body = String::from_utf8(ev.body).expect("utf-8");
    assert!(body.contains("\nX-Probe: one\n"), "{body}");
    assert!(
        body.contains("Event-Subclass: test%3A%3Anocolon\n"),
        "{body}"
    );
    assert!(!body.contains("no colon"), "{body}");

    assert!(c.api("status").await.starts_with("UP "));
    assert_alive(&sim, &mut witness).await;
    sim.shutdown().await;
}

#[tokio::test]
async fn too_long_header_block_is_cut_at_the_limit_and_parsed() {
    let sim = sim_with(SimConfig {
        max_packet_head: 4096,
        ..SimConfig::default()
    })
    .await;
    let mut witness = Client::login(sim.esl_addr()).await;
    let mut c = Client::login(sim.esl_addr()).await;
    // 10,000 bytes of header without an end: FreeSWITCH parses a packet
    // each time `max_len` bytes have piled up (4096 + 4096), then the rest
    // (1808) when its blank line comes.
    let mut big = b"X-Long: ".to_vec();
    big.resize(10_000, b'a');
    big.extend_from_slice(b"\n\napi status\n\n");
    c.send(&big).await;
    for _ in 0..3 {
        assert_eq!(c.reply_text().await, "-ERR command not found");
    }
    let m = c.msg().await.expect("api response");
    assert_eq!(m.content_type(), "api/response");
    assert!(m.body.starts_with(b"UP "));
    assert_alive(&sim, &mut witness).await;
    sim.shutdown().await;
}

#[tokio::test]
async fn negative_or_non_numeric_content_length_means_no_body() {
    let sim = sim().await;
    let mut witness = Client::login(sim.esl_addr()).await;
    let mut listener = Client::login(sim.esl_addr()).await;
    assert_eq!(
        listener.reply("event plain CUSTOM test::clen").await,
        "+OK event listener enabled plain"
    );
    let mut c = Client::login(sim.esl_addr()).await;
    for clen in ["-5", "abc", "99999999999999999999"] {
        // The last one is atoi's LONG_MAX cast to int: -1.
        c.send(
            format!(
                "sendevent CUSTOM\nEvent-Subclass: test::clen\nContent-Length: {clen}\n\nhello\n\n"
            )
            .as_bytes(),
        )
        .await;
        let r = c.reply_text().await;
        assert!(r.starts_with("+OK "), "{clen}: {r}");
        // The would-be body is the next command.
        assert_eq!(c.reply_text().await, "-ERR command not found", "{clen}");
        let ev = listener.msg().await.expect("the event");
        let body = String::from_utf8(ev.body).expect("utf-8");
        // The header is kept as sent (sendevent fires the packet itself).
        assert!(
            body.contains(&format!("\nContent-Length: {clen}\n")),
            "{body}"
        );
        assert!(
            !body.contains("hello"),
            "{clen}: the event has no body: {body}"
        );
    }
    // A positive length is a body, as usual.
    c.send(b"sendevent CUSTOM\nEvent-Subclass: test::clen\nContent-Length: 5\n\nhello")
        .await;
    assert!(c.reply_text().await.starts_with("+OK "));
    let body = String::from_utf8(listener.msg().await.expect("event").body).expect("utf-8");
    assert!(body.ends_with("\n\nhello"), "{body}");
    assert_alive(&sim, &mut witness).await;
    sim.shutdown().await;
}

#[tokio::test]
async fn huge_content_length_closes_that_connection_only() {
    let sim = sim().await;
    let mut witness = Client::login(sim.esl_addr()).await;
    for clen in ["2147483647", "99999999999"] {
        let mut c = Client::login(sim.esl_addr()).await;
        c.send(format!("sendevent CUSTOM\nContent-Length: {clen}\n\nhello").as_bytes())
            .await;
        let rest = c.drain().await;
        assert_eq!(rest.len(), 1, "{clen}: {rest:?}");
        goodbye(&rest[0]);
    }
    assert_alive(&sim, &mut witness).await;
    sim.shutdown().await;
}

#[tokio::test]
async fn packet_cut_mid_body_then_eof_is_dropped() {
    let sim = sim().await;
    let mut witness = Client::login(sim.esl_addr()).await;
    let mut listener = Client::login(sim.esl_addr()).await;
    assert_eq!(
        listener.reply("event plain CUSTOM test::cut").await,
        "+OK event listener enabled plain"
    );
    let mut c = Client::login(sim.esl_addr()).await;
    c.send(b"sendevent CUSTOM\nEvent-Subclass: test::cut\nContent-Length: 100\n\nonly part")
        .await;
    c.s.shutdown().await.expect("half-close");
    let rest = c.drain().await;
    assert_eq!(rest.len(), 1, "{rest:?}");
    goodbye(&rest[0]);

    // The cut packet never ran: the next event the listener sees is this one.
    let mut d = Client::login(sim.esl_addr()).await;
    d.send(b"sendevent CUSTOM\nEvent-Subclass: test::cut\nX-Marker: after\n\n")
        .await;
    assert!(d.reply_text().await.starts_with("+OK "));
    let ev = listener.msg().await.expect("event");
    let body = String::from_utf8(ev.body).expect("utf-8");
    assert!(body.contains("X-Marker: after"), "{body}");
    assert_alive(&sim, &mut witness).await;
    sim.shutdown().await;
}

/// A subscriber that stops reading is killed once `max_missed` events
/// could not be queued for it; a subscriber that reads gets every event and
/// the simulator answers commands throughout.
#[tokio::test]
async fn slow_consumer_is_killed_and_nobody_else_notices() {
    const EVENTS: usize = 2_000;
    let sim = sim_with(SimConfig {
        event_queue_len: 64,
        max_missed: 50,
        ..SimConfig::default()
    })
    .await;
    let addr = sim.esl_addr();
    let mut witness = Client::login(addr).await;

    let mut slow = Client::login(addr).await;
    assert_eq!(
        slow.reply("event plain CUSTOM test::flood").await,
        "+OK event listener enabled plain"
    );
    let mut good = Client::login(addr).await;
    assert_eq!(
        good.reply("event plain CUSTOM test::flood").await,
        "+OK event listener enabled plain"
    );
    let reader = tokio::spawn(async move {
        let mut n = 0;
        while n < EVENTS {
            let m = good
                .msg()
                .await
                .expect("the reading subscriber is never cut off");
            assert_eq!(m.content_type(), "text/event-plain");
            n += 1;
        }
        n
    });

    // 2,000 events of 16 KiB (32 MiB) is more than the slow client's queue
    // and both sockets' kernel buffers can hold.
    let mut producer = Client::login(addr).await;
    let body = vec![b'z'; 16 * 1024];
    let mut head = Vec::new();
    for i in 0..EVENTS {
        head.clear();
        head.extend_from_slice(
            format!(
                "sendevent CUSTOM\nEvent-Subclass: test::flood\nContent-Length: {}\n\n",
                body.len()
            )
            .as_bytes(),
        );
        head.extend_from_slice(&body);
        producer.send(&head).await;
        assert!(producer.reply_text().await.starts_with("+OK "));
        if i % 500 == 0 {
            assert!(witness.api("status").await.starts_with("UP "));
        }
    }
    let got = timeout(Duration::from_secs(60), reader)
        .await
        .expect("the reader finishes")
        .expect("reader task");
    assert_eq!(got, EVENTS);

    // The slow client now reads: what the kernel held, then EOF, and no
    // disconnect notice (kill_listener just closes, possibly mid-event).
    let read_all = async { while slow.fill().await {} };
    timeout(Duration::from_secs(20), read_all)
        .await
        .expect("the slow client was disconnected");
    let text = String::from_utf8_lossy(&slow.buf);
    let seen = text.matches("Content-Type: text/event-plain\n").count();
    assert!(!text.contains("disconnect-notice"));
    assert!(seen > 0, "the slow client got events before it stalled");
    assert!(seen < EVENTS, "the slow client got all {seen} events");
    assert_alive(&sim, &mut witness).await;
    sim.shutdown().await;
}

#[tokio::test]
async fn commands_in_flight_at_shutdown_end_with_the_shutdown_notice() {
    let sim = sim().await;
    let addr = sim.esl_addr();
    // A blocking originate to a number that rings for 30 s.
    let mut blocked = Client::login(addr).await;
    blocked
        .send(b"api originate {originate_timeout=30}loopback/1555408 &park()\n\n")
        .await;
    // A bgapi whose job is still running, on a subscribed connection.
    let mut bg = Client::login(addr).await;
    assert_eq!(
        bg.reply("event plain BACKGROUND_JOB").await,
        "+OK event listener enabled plain"
    );
    let r = bg
        .reply("bgapi originate {originate_timeout=30}loopback/1555408 &park()")
        .await;
    assert!(r.starts_with("+OK Job-UUID: "), "{r}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!sim.channels().is_empty(), "the calls are ringing");

    timeout(Duration::from_secs(5), sim.clone().shutdown())
        .await
        .expect("shutdown does not wait for the calls");
    for c in [&mut blocked, &mut bg] {
        let rest = timeout(Duration::from_secs(5), c.drain())
            .await
            .expect("the connection is closed");
        let last = rest.last().expect("a notice");
        assert_eq!(last.content_type(), "text/disconnect-notice", "{rest:?}");
        assert_eq!(last.body, b"The system is being shut down.\n");
    }
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
}
