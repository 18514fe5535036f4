//! A bare-bytes ESL client for the simulator tests: an inbound connection
//! (`auth ClueCon`) or an accepted outbound socket of a leg, reading frames
//! straight off the socket so nothing is hidden behind the library under
//! test.

use redswitch::sim::{SimConfig, SimHandle, Simulator};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, timeout};

/// How long any one read or accept may take (generous: a loaded machine is
/// slow).
pub const WAIT: Duration = Duration::from_secs(10);

/// A simulator with `cfg`, its event socket on a free loopback port.
pub async fn sim_with(cfg: SimConfig) -> SimHandle {
    Simulator::start(SimConfig {
        esl_listen: "127.0.0.1:0".parse().expect("addr"),
        ..cfg
    })
    .await
    .expect("simulator starts")
}

/// A simulator with the default configuration.
pub async fn sim() -> SimHandle {
    sim_with(SimConfig::default()).await
}

/// A simulator whose calls ring for 50 ms before they answer, as the
/// agent tests want: ringing is seen, and calls still answer at once.
pub async fn quick_sim() -> SimHandle {
    sim_with(SimConfig {
        ring_time: Duration::from_millis(50),
        ..SimConfig::default()
    })
    .await
}

/// One frame the simulator sent.
#[derive(Debug)]
pub struct Msg {
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Msg {
    /// A header of the frame (case-insensitive name).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// A header of a plain event (percent-decoded).
    pub fn ev(&self, name: &str) -> Option<String> {
        self.body
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .map(|v| {
                percent_encoding::percent_decode_str(v)
                    .decode_utf8_lossy()
                    .into_owned()
            })
    }

    /// The body of a plain event (after its headers).
    pub fn event_body(&self) -> &str {
        self.body.split_once("\n\n").map_or("", |(_, b)| b)
    }
}

pub struct Client {
    s: TcpStream,
    buf: Vec<u8>,
    /// Events and log lines read while waiting for a command's reply.
    pub pending: Vec<Msg>,
}

impl Client {
    pub fn new(s: TcpStream) -> Self {
        Self {
            s,
            buf: Vec::new(),
            pending: Vec::new(),
        }
    }

    /// An inbound connection to `addr`, authenticated.
    pub async fn connect(addr: SocketAddr) -> Self {
        let mut c = Self::new(TcpStream::connect(addr).await.expect("connect"));
        c.msg().await;
        assert_eq!(
            c.cmd("auth ClueCon").await.get("Reply-Text"),
            Some("+OK accepted")
        );
        c
    }

    /// An inbound connection to the simulator's event socket, authenticated.
    pub async fn login(sim: &SimHandle) -> Self {
        Self::connect(sim.esl_addr()).await
    }

    /// The next frame off the socket.
    pub async fn msg(&mut self) -> Msg {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                let headers: Vec<(String, String)> = head
                    .lines()
                    .filter_map(|l| l.split_once(": "))
                    .map(|(n, v)| (n.to_owned(), v.to_owned()))
                    .collect();
                let len = headers
                    .iter()
                    .find(|(n, _)| n == "Content-Length")
                    .map_or(0, |(_, v)| v.parse::<usize>().expect("length"));
                if self.buf.len() >= end + 2 + len {
                    let body =
                        String::from_utf8_lossy(&self.buf[end + 2..end + 2 + len]).into_owned();
                    self.buf.drain(..end + 2 + len);
                    return Msg { headers, body };
                }
            }
            self.buf.reserve(65536);
            let n = timeout(WAIT, self.s.read_buf(&mut self.buf))
                .await
                .expect("the simulator answers in time")
                .expect("read");
            assert!(n > 0, "connection closed");
        }
    }

    /// Sends a command and returns its reply; events and log lines that
    /// come first are kept in `pending` (only [`Client::next_where`] and
    /// [`Client::logged`] look there).
    pub async fn cmd(&mut self, cmd: &str) -> Msg {
        self.s
            .write_all(format!("{cmd}\n\n").as_bytes())
            .await
            .expect("write");
        loop {
            let m = self.msg().await;
            match m.get("Content-Type") {
                Some("text/event-plain" | "log/data") => self.pending.push(m),
                _ => return m,
            }
        }
    }

    /// Writes raw bytes without waiting for any reply.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.expect("write");
    }

    /// `api <cmd>`: the body of its `api/response`.
    pub async fn api(&mut self, cmd: &str) -> String {
        let r = self.cmd(&format!("api {cmd}")).await;
        assert_eq!(r.get("Content-Type"), Some("api/response"), "{r:?}");
        r.body
    }

    /// `bgapi`: the Job-UUID.
    pub async fn bgapi(&mut self, cmd: &str) -> String {
        let r = self.cmd(&format!("bgapi {cmd}")).await;
        r.get("Job-UUID").expect("Job-UUID").to_owned()
    }

    /// The next event off the socket with this name (others are skipped),
    /// or a panic at the deadline.
    pub async fn event(&mut self, name: &str, deadline: Instant) -> Msg {
        loop {
            let m = timeout(
                deadline.saturating_duration_since(Instant::now()),
                self.msg(),
            )
            .await
            .unwrap_or_else(|_| panic!("no {name} in time"));
            if m.ev("Event-Name").as_deref() == Some(name) {
                return m;
            }
        }
    }

    /// The next event off the socket, whatever it is.
    pub async fn event_any(&mut self, deadline: Instant) -> Msg {
        loop {
            let m = timeout(
                deadline.saturating_duration_since(Instant::now()),
                self.msg(),
            )
            .await
            .expect("an event in time");
            if m.get("Content-Type") == Some("text/event-plain") {
                return m;
            }
        }
    }

    /// The next message that satisfies `want` (pending ones first).
    pub async fn next_where(&mut self, what: &str, want: impl Fn(&Msg) -> bool) -> Msg {
        if let Some(i) = self.pending.iter().position(&want) {
            return self.pending.remove(i);
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let m = timeout(
                deadline.saturating_duration_since(Instant::now()),
                self.msg(),
            )
            .await
            .unwrap_or_else(|_| panic!("no {what} in time"));
            if want(&m) {
                return m;
            }
            self.pending.push(m);
        }
    }

    /// The next event `name` whose header `key` is `value` (pending ones
    /// first).
    pub async fn next_event(&mut self, name: &str, key: &str, value: &str) -> Msg {
        self.next_where(name, |m| {
            m.ev("Event-Name").as_deref() == Some(name) && m.ev(key).as_deref() == Some(value)
        })
        .await
    }

    /// The BACKGROUND_JOB of this job: its body.
    pub async fn job(&mut self, job: &str) -> String {
        let m = self.next_event("BACKGROUND_JOB", "Job-UUID", job).await;
        m.event_body().to_owned()
    }

    /// The CHANNEL_HANGUP_COMPLETE of this channel: its Hangup-Cause.
    pub async fn hangup_cause(&mut self, uuid: &str) -> String {
        let m = self
            .next_event("CHANNEL_HANGUP_COMPLETE", "Unique-ID", uuid)
            .await;
        m.ev("Hangup-Cause").expect("Hangup-Cause")
    }

    /// Log lines received so far whose text contains `text`.
    pub fn logged(&self, text: &str) -> Vec<&str> {
        self.pending
            .iter()
            .filter(|m| m.get("Content-Type") == Some("log/data") && m.body.contains(text))
            .map(|m| m.body.as_str())
            .collect()
    }
}

/// Accepts the outbound socket of a leg and subscribes to its events.
pub async fn socket_leg(listener: &TcpListener) -> (Client, String) {
    let (s, _) = timeout(WAIT, listener.accept())
        .await
        .expect("the leg connects")
        .expect("accept");
    let mut c = Client::new(s);
    let connect = c.cmd("connect").await;
    let uuid = connect.get("Unique-ID").expect("Unique-ID").to_owned();
    assert_eq!(
        c.cmd("myevents").await.get("Reply-Text"),
        Some("+OK Events Enabled")
    );
    (c, uuid)
}
