//! Load sanity for the simulator (SPEC §9, issue 2 item 7). Ignored by
//! default: they measure, and measuring wants a release build on an idle
//! machine. Run with
//! `cargo test --release --test sim_load -- --ignored --nocapture`.
//!
//! - `events_to_one_all_subscriber`: a producer pipelines `sendevent`s,
//!   one `event plain ALL` subscriber reads them; prints events/s and
//!   fails under 150,000/s.
//! - `thousand_concurrent_calls`: 1,000 `bgapi originate`s that answer and
//!   park; all must be up at once, and all go away with `hupall`-style
//!   `uuid_kill`s.

use redswitch::sim::{SimConfig, Simulator};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn login(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    // auth/request, then the auth reply.
    s.write_all(b"auth ClueCon\n\n").await.expect("auth");
    while !got.windows(12).any(|w| w == b"+OK accepted") {
        let n = s.read(&mut buf).await.expect("read");
        assert!(n > 0, "closed during login");
        got.extend_from_slice(&buf[..n]);
    }
    s
}

/// Reads until `want` frames with this content type have arrived.
async fn count_frames(s: &mut TcpStream, marker: &[u8], want: usize) -> usize {
    let mut buf = vec![0u8; 1 << 20];
    let mut carry: Vec<u8> = Vec::new();
    let mut seen = 0;
    while seen < want {
        let n = tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf))
            .await
            .expect("events keep coming")
            .expect("read");
        assert!(n > 0, "closed");
        carry.extend_from_slice(&buf[..n]);
        seen += memchr::memmem::find_iter(&carry, marker).count();
        // Keep a tail that may hold a marker cut in two.
        let keep = carry.len().min(marker.len() - 1);
        carry.drain(..carry.len() - keep);
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "load measurement; run in release"]
async fn events_to_one_all_subscriber() {
    const EVENTS: usize = 300_000;
    let sim = Simulator::start(SimConfig {
        esl_listen: "127.0.0.1:0".parse().expect("addr"),
        ..SimConfig::default()
    })
    .await
    .expect("sim");
    let addr = sim.esl_addr();
    let mut sub = login(addr).await;
    sub.write_all(b"event plain ALL\n\n")
        .await
        .expect("subscribe");
    let mut ack = vec![0u8; 256];
    let n = sub.read(&mut ack).await.expect("ack");
    assert!(String::from_utf8_lossy(&ack[..n]).contains("+OK event listener enabled plain"));

    let producer = tokio::spawn(async move {
        let mut s = login(addr).await;
        let cmd = b"sendevent CUSTOM\nEvent-Subclass: load::test\nX-Load: 1\n\n";
        let batch: Vec<u8> = cmd.repeat(1000);
        for _ in 0..EVENTS / 1000 {
            s.write_all(&batch).await.expect("send");
            // Wait for the batch's replies: the producer runs at the rate
            // the simulator accepts events, not faster.
            count_frames(&mut s, b"Reply-Text: +OK", 1000).await;
        }
    });
    let started = Instant::now();
    let got = count_frames(&mut sub, b"Content-Type: text/event-plain", EVENTS).await;
    let secs = started.elapsed().as_secs_f64();
    let rate = got as f64 / secs;
    println!("{got} events in {secs:.2} s: {rate:.0} events/s to one `event plain ALL` subscriber");
    producer.await.expect("producer");
    sim.shutdown().await;
    assert!(rate >= 150_000.0, "{rate:.0} events/s is under 150,000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "load measurement; run in release"]
async fn thousand_concurrent_calls() {
    const CALLS: usize = 1000;
    let sim = Simulator::start(SimConfig {
        esl_listen: "127.0.0.1:0".parse().expect("addr"),
        ring_time: Duration::from_millis(50),
        ..SimConfig::default()
    })
    .await
    .expect("sim");
    let mut c = login(sim.esl_addr()).await;
    let started = Instant::now();
    let mut cmds = Vec::new();
    for i in 0..CALLS {
        cmds.extend_from_slice(
            format!("bgapi originate sofia/gateway/gw/1415{i:07} &park()\n\n").as_bytes(),
        );
    }
    c.write_all(&cmds).await.expect("originate");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let up = sim.channels().iter().filter(|s| s.answered).count();
        if up == CALLS {
            break;
        }
        assert!(Instant::now() < deadline, "only {up} of {CALLS} calls up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "{CALLS} calls up in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let uuids: Vec<String> = sim.channels().into_iter().map(|s| s.uuid).collect();
    let mut kills = Vec::new();
    for u in &uuids {
        kills.extend_from_slice(format!("bgapi uuid_kill {u}\n\n").as_bytes());
    }
    c.write_all(&kills).await.expect("kill");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sim.channels().is_empty() {
        assert!(Instant::now() < deadline, "calls left after uuid_kill");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "all {CALLS} calls gone {:.2} s after start",
        started.elapsed().as_secs_f64()
    );
    sim.shutdown().await;
}
