//! Test peers for the `switch` tests: a small fake FreeSWITCH event socket
//! (inbound), a replayer of the recorded outbound traces, and frame builders.
//! Each speaks the bytes the traces in `tests/fixtures/` show.

use base64::Engine;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use redswitch::esl::event::plain_frame;
use redswitch::esl::{EslCodec, Event, Frame};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;

pub const AUTH_REQUEST: &[u8] = b"Content-Type: auth/request\n\n";
pub const GOODBYE: &[u8] = b"Content-Type: text/disconnect-notice\nContent-Length: 67\n\nDisconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n";

/// A `command/reply` frame.
pub fn reply(text: &str) -> Bytes {
    Bytes::from(format!(
        "Content-Type: command/reply\nReply-Text: {text}\n\n"
    ))
}

/// An `api/response` frame.
pub fn api_response(body: &str) -> Bytes {
    Bytes::from(format!(
        "Content-Type: api/response\nContent-Length: {}\n\n{body}",
        body.len()
    ))
}

/// A plain event frame with these headers (values percent-encoded as
/// FreeSWITCH does) and an optional body.
pub fn event(name: &str, headers: &[(&str, &str)], body: Option<&str>) -> Bytes {
    let mut e = Event::new(name);
    for (n, v) in headers {
        e.push_header(n, v);
    }
    if let Some(b) = body {
        e.set_body(b);
    }
    plain_frame(&e)
}

/// What a fake FreeSWITCH connection is told to do from the test.
#[derive(Debug)]
pub enum Ctl {
    /// Write these bytes.
    Send(Bytes),
    /// Close the socket.
    Close,
}

/// A fake FreeSWITCH inbound event socket: greets, checks the password,
/// answers the commands Redswitch sends with the replies of the traces,
/// and lets the test push bytes or close connections.
#[derive(Clone)]
pub struct FakeFs {
    pub addr: SocketAddr,
    /// Every command line received, as `(connection number, line)`.
    pub log: Arc<Mutex<Vec<(usize, String)>>>,
    conns: Arc<Mutex<Vec<mpsc::UnboundedSender<Ctl>>>>,
}

impl FakeFs {
    pub async fn start(password: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let fake = Self {
            addr: listener.local_addr().unwrap(),
            log: Arc::default(),
            conns: Arc::default(),
        };
        let f = fake.clone();
        let password = password.to_owned();
        tokio::spawn(async move {
            let mut n = 0;
            while let Ok((stream, _)) = listener.accept().await {
                let (tx, rx) = mpsc::unbounded_channel();
                f.conns.lock().unwrap().push(tx);
                tokio::spawn(serve_conn(stream, n, password.clone(), f.log.clone(), rx));
                n += 1;
            }
        });
        fake
    }

    /// How many connections were accepted.
    pub fn connections(&self) -> usize {
        self.conns.lock().unwrap().len()
    }

    /// Sends bytes on the latest connection.
    pub fn send(&self, bytes: impl Into<Bytes>) {
        let conns = self.conns.lock().unwrap();
        let _ = conns.last().unwrap().send(Ctl::Send(bytes.into()));
    }

    /// Closes the latest connection.
    pub fn close(&self) {
        let conns = self.conns.lock().unwrap();
        let _ = conns.last().unwrap().send(Ctl::Close);
    }

    /// Commands received on connection `n`.
    pub fn commands(&self, n: usize) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(c, _)| *c == n)
            .map(|(_, l)| l.clone())
            .collect()
    }

    /// Waits until connection `n` has received a command starting with `prefix`.
    pub async fn wait_command(&self, n: usize, prefix: &str) {
        for _ in 0..500 {
            if self.commands(n).iter().any(|c| c.starts_with(prefix)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "connection {n} never got {prefix:?}; got {:?}",
            self.commands(n)
        );
    }
}

async fn serve_conn(
    stream: TcpStream,
    n: usize,
    password: String,
    log: Arc<Mutex<Vec<(usize, String)>>>,
    mut ctl: mpsc::UnboundedReceiver<Ctl>,
) {
    let (rd, mut wr) = stream.into_split();
    let mut rd = FramedRead::new(rd, EslCodec::server());
    if wr.write_all(AUTH_REQUEST).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            c = ctl.recv() => match c {
                Some(Ctl::Send(b)) => { if wr.write_all(&b).await.is_err() { return; } }
                Some(Ctl::Close) | None => return,
            },
            f = rd.next() => {
                let Some(Ok(frame)) = f else { return };
                let line = String::from_utf8_lossy(frame.command_line().unwrap_or_default()).into_owned();
                log.lock().unwrap().push((n, line.clone()));
                let (out, close) = answer(&line, &frame, &password);
                if wr.write_all(&out).await.is_err() || close {
                    return;
                }
            }
        }
    }
}

/// The replies real FreeSWITCH 1.10 gives (traces 01 and 08).
fn answer(line: &str, frame: &Frame, password: &str) -> (BytesMut, bool) {
    let mut out = BytesMut::new();
    let (verb, rest) = line.split_once(' ').unwrap_or((line, ""));
    let mut close = false;
    match verb {
        "auth" if rest == password => out.extend_from_slice(&reply("+OK accepted")),
        "auth" => {
            out.extend_from_slice(&reply("-ERR invalid"));
            out.extend_from_slice(GOODBYE);
            close = true;
        }
        "api" if rest == "status" => out.extend_from_slice(&api_response("UP 0 years, 0 days\n")),
        // Never answered: for timeouts and requests in flight.
        "api" if rest.starts_with("hang") => {}
        "api" => out.extend_from_slice(&api_response(&format!(
            "-ERR {} Command not found!\n",
            rest.split(' ').next().unwrap_or_default()
        ))),
        "bgapi" if rest.starts_with("hang") => {}
        "bgapi" => {
            let job = frame
                .header("Job-UUID")
                .unwrap_or("server-chosen")
                .to_owned();
            out.extend_from_slice(&Bytes::from(format!(
                "Content-Type: command/reply\nReply-Text: +OK Job-UUID: {job}\nJob-UUID: {job}\n\n"
            )));
            let body = if rest.contains("busy") {
                "-ERR USER_BUSY\n".to_owned()
            } else {
                format!("+OK {rest}\n")
            };
            out.extend_from_slice(&event(
                "BACKGROUND_JOB",
                &[("Job-UUID", &job), ("Job-Command", rest)],
                Some(&body),
            ));
        }
        "event" if rest.split(' ').count() < 2 => {
            out.extend_from_slice(&reply("-ERR no keywords supplied"))
        }
        "event" => {
            let format = rest.split(' ').next().unwrap_or_default();
            out.extend_from_slice(&reply(&format!("+OK event listener enabled {format}")));
        }
        "filter" => {
            let parts: Vec<&str> = rest.splitn(3, ' ').collect();
            if parts[0] == "delete" {
                out.extend_from_slice(&reply(&format!(
                    "+OK filter deleted. [{}][{}]",
                    parts.get(1).unwrap_or(&""),
                    parts.get(2).unwrap_or(&"")
                )));
            } else {
                out.extend_from_slice(&reply(&format!(
                    "+OK filter added. [{}]=[{}]",
                    parts[0],
                    parts.get(1).unwrap_or(&"")
                )));
            }
        }
        "nixevent" => out.extend_from_slice(&reply("+OK events nixed")),
        "noevents" => out.extend_from_slice(&reply("+OK no longer listening for events")),
        "sendmsg" => out.extend_from_slice(&reply("+OK")),
        "exit" => {
            out.extend_from_slice(&reply("+OK bye"));
            out.extend_from_slice(GOODBYE);
            close = true;
        }
        _ => out.extend_from_slice(&reply("-ERR command not found")),
    }
    (out, close)
}

/// A `text/event-plain` frame around a raw body (for malformed bodies).
pub fn raw_plain(body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "Content-Length: {}\nContent-Type: text/event-plain\n\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// A free loopback port with nothing listening on it.
pub async fn dead_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// One direction of a recorded chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Bytes FreeSWITCH sent.
    FromFs,
    /// Bytes the recording client sent.
    ToFs,
}

/// The chunks of connection `conn` in a trace's `.raw.jsonl`.
pub fn trace_chunks(scenario: &str, conn: &str) -> Vec<(Dir, Vec<u8>)> {
    let path = format!(
        "{}/../fixtures/freeswitch-1.10/{scenario}.raw.jsonl",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["conn"] == conn)
        .filter_map(|v| {
            let dir = match v["dir"].as_str()? {
                "fs->client" => Dir::FromFs,
                "client->fs" => Dir::ToFs,
                _ => return None,
            };
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(v["b64"].as_str()?)
                .ok()?;
            Some((dir, bytes))
        })
        .collect()
}

fn replace_all(hay: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(hay.len());
    let mut rest = hay;
    while let Some(i) = memchr::memmem::find(rest, from) {
        out.extend_from_slice(&rest[..i]);
        out.extend_from_slice(to);
        rest = &rest[i + from.len()..];
    }
    out.extend_from_slice(rest);
    out
}

/// Plays FreeSWITCH's side of a recorded outbound connection against the
/// listener at `addr`: for each command the recording client sent, reads one
/// command from Redswitch and writes what FreeSWITCH answered. A command of
/// ours with another verb than the recorded one gets a plain `+OK` (our
/// handshake subscribes to more events than the recording did). Event-UUIDs
/// we choose replace the recorded ones (same length, so Content-Lengths
/// hold). Returns the command lines we received.
pub async fn replay_outbound(addr: SocketAddr, scenario: &str) -> Vec<String> {
    let chunks = trace_chunks(scenario, "outbound");
    let stream = TcpStream::connect(addr).await.unwrap();
    let (rd, mut wr) = stream.into_split();
    let mut rd = FramedRead::new(rd, EslCodec::server());
    let mut subst: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut got = Vec::new();
    let mut i = 0;
    while i < chunks.len() {
        let (dir, bytes) = &chunks[i];
        i += 1;
        if *dir == Dir::FromFs {
            let mut b = bytes.clone();
            for (from, to) in &subst {
                b = replace_all(&b, from, to);
            }
            if wr.write_all(&b).await.is_err() {
                break;
            }
            continue;
        }
        let mut codec_buf = BytesMut::from(&bytes[..]);
        let recorded = tokio_util::codec::Decoder::decode(&mut EslCodec::server(), &mut codec_buf)
            .unwrap()
            .unwrap();
        let verb = |f: &Frame| {
            String::from_utf8_lossy(f.command_line().unwrap_or_default())
                .split(' ')
                .next()
                .unwrap_or_default()
                .to_owned()
        };
        loop {
            let Some(Ok(ours)) = rd.next().await else {
                return got;
            };
            got.push(String::from_utf8_lossy(ours.command_line().unwrap_or_default()).into_owned());
            if verb(&ours) == verb(&recorded) {
                if let (Some(theirs), Some(mine)) =
                    (recorded.header("Event-UUID"), ours.header("Event-UUID"))
                {
                    subst.push((theirs.as_bytes().to_vec(), mine.as_bytes().to_vec()));
                }
                break;
            }
            if wr.write_all(&reply("+OK")).await.is_err() {
                return got;
            }
        }
    }
    // FreeSWITCH closes at the end of every recording.
    let _ = wr.shutdown().await;
    drop(wr);
    // Keep reading until the listener closes, recording what it sends.
    while let Ok(Some(Ok(f))) = tokio::time::timeout(Duration::from_secs(5), rd.next()).await {
        got.push(String::from_utf8_lossy(f.command_line().unwrap_or_default()).into_owned());
    }
    got
}

/// The `connect` reply of a leg, shaped like trace 02's (CHANNEL_DATA
/// headers, then `Content-Type`, a percent-encoded `Reply-Text`,
/// `Socket-Mode`, `Control`, no Content-Length).
pub fn connect_reply(uuid: &str, mode: &str, control: &str) -> Bytes {
    Bytes::from(format!(
        "Event-Name: CHANNEL_DATA\nCore-UUID: a098c3de-e7c0-42d7-85dd-62fa79edba3b\n\
         Channel-Direction: outbound\nCaller-Caller-ID-Name: Alice%20A\n\
         Caller-Caller-ID-Number: 15105625882\nCaller-Callee-ID-Number: 14157697098\n\
         Caller-Destination-Number: 14157697098\nChannel-Name: loopback/answer-park-a\n\
         Unique-ID: {uuid}\nCall-Direction: outbound\nAnswer-State: answered\n\
         variable_dial_id: d1\nvariable_side: 0\nvariable_socket_host: 127.0.0.1\n\
         variable_current_application_data: 127.0.0.1%3A8084%20async%20full\n\
         Content-Type: command/reply\nReply-Text: %2BOK%0A\nSocket-Mode: {mode}\nControl: {control}\n\n"
    ))
}

/// FreeSWITCH's side of one outbound leg, driven by the test.
pub struct FakeLeg {
    pub rd: FramedRead<tokio::net::tcp::OwnedReadHalf, EslCodec>,
    pub wr: tokio::net::tcp::OwnedWriteHalf,
    pub uuid: String,
}

impl FakeLeg {
    /// Connects to the listener and answers the handshake (`connect`,
    /// `myevents`, `linger`, `event …`) as an async full socket does.
    pub async fn connect(addr: SocketAddr, uuid: &str) -> Self {
        Self::connect_with(addr, uuid, "async").await
    }

    /// The same in a socket mode of choice (`static` refuses linger/event).
    pub async fn connect_with(addr: SocketAddr, uuid: &str, mode: &str) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (rd, wr) = stream.into_split();
        let mut leg = Self {
            rd: FramedRead::new(rd, EslCodec::server()),
            wr,
            uuid: uuid.to_owned(),
        };
        let control = if mode == "async" {
            "full"
        } else {
            "single-channel"
        };
        assert_eq!(leg.next_command().await, "connect");
        leg.send(connect_reply(uuid, mode, control)).await;
        for _ in 0..3 {
            let cmd = leg.next_command().await;
            let r = match (mode, cmd.split(' ').next().unwrap_or_default()) {
                (_, "myevents") => reply("+OK Events Enabled"),
                ("static", _) => reply("-ERR command not found"),
                (_, "linger") => reply("+OK will linger"),
                (_, "event") => reply("+OK event listener enabled plain"),
                (_, other) => panic!("unexpected handshake command {other}"),
            };
            leg.send(r).await;
        }
        leg
    }

    /// The next command frame from Redswitch.
    pub async fn next_frame(&mut self) -> Frame {
        tokio::time::timeout(Duration::from_secs(5), self.rd.next())
            .await
            .expect("no command within 5 s")
            .expect("listener closed")
            .expect("undecodable command")
    }

    /// The next command line from Redswitch.
    pub async fn next_command(&mut self) -> String {
        let f = self.next_frame().await;
        String::from_utf8_lossy(f.command_line().unwrap_or_default()).into_owned()
    }

    pub async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.wr.write_all(bytes.as_ref()).await.unwrap();
    }

    /// A channel event of this leg.
    pub fn channel_event(&self, name: &str, extra: &[(&str, &str)]) -> Bytes {
        let mut headers = vec![("Unique-ID", self.uuid.as_str())];
        headers.extend_from_slice(extra);
        event(name, &headers, None)
    }

    /// What FreeSWITCH sends when the channel hangs up under a lingering
    /// socket: CHANNEL_HANGUP, CHANNEL_HANGUP_COMPLETE, the linger notice.
    pub fn hangup_sequence(&self, cause: &str) -> BytesMut {
        let mut out = BytesMut::new();
        out.extend_from_slice(&self.channel_event("CHANNEL_HANGUP", &[("Hangup-Cause", cause)]));
        out.extend_from_slice(
            &self.channel_event("CHANNEL_HANGUP_COMPLETE", &[("Hangup-Cause", cause)]),
        );
        out.extend_from_slice(
            format!(
                "Content-Type: text/disconnect-notice\nControlled-Session-UUID: {}\n\
                 Content-Disposition: linger\nChannel-Name: loopback/answer-park-a\n\
                 Linger-Time: -1\nContent-Length: 0\n\n",
                self.uuid
            )
            .as_bytes(),
        );
        out
    }

    /// Waits for EOF from the listener side, failing after 5 s.
    pub async fn expect_closed(&mut self) {
        let r = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(Ok(_)) = self.rd.next().await {}
        })
        .await;
        assert!(r.is_ok(), "the listener did not close the leg");
    }
}
