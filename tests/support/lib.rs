//! What the integration tests share, as a library of their own (so each
//! test crate uses the part it needs without dead code):
//!
//! - [`bin`]: the real `redswitch` binary, run without inherited
//!   configuration;
//! - [`redis_server`]: throw-away `redis-server` processes and clusters;
//! - [`stack`]: the whole system (redis-server, the FreeSWITCH simulator,
//!   agents) and a follower reading a call's channel;
//! - [`fake_switch`]: a small fake event socket and a replayer of the
//!   recorded traces, for the `switch` tests;
//! - [`voice`]: a simulator behind a dialer and a voice-app router;
//! - [`sim_client`]: a bare-bytes event-socket client for the simulator
//!   tests;
//! - [`eventually`], the one polling helper, and [`assert_no_channels`],
//!   the last step of every test that runs the simulator: when a test is
//!   over, FreeSWITCH holds no channel.

pub mod bin;
pub mod fake_switch;
pub mod redis_server;
pub mod sim_client;
pub mod stack;
pub mod voice;

use redswitch::switch::{InboundClient, InboundConfig};
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

/// Polls `check` every 20 ms until it returns `true`; panics with `what`
/// after `within`. For a plain condition, `|| std::future::ready(cond)`.
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `api <cmd>` on a fresh inbound connection to the event socket at `esl`
/// (password `ClueCon`), as an operator's `fs_cli -x` would.
pub async fn esl_api(esl: SocketAddr, cmd: &str) -> String {
    let mut config = InboundConfig::new(esl.to_string(), "ClueCon");
    config.reconnect.max_attempts = Some(0);
    let (client, _events) = InboundClient::connect(config)
        .await
        .expect("inbound connection to the simulator");
    let reply = match client.api(cmd).await {
        Ok(reply) => reply,
        Err(redswitch::switch::Error::CommandFailed { reply }) => reply,
        Err(other) => panic!("api {cmd}: {other}"),
    };
    let _ = client.close().await;
    reply
}

/// Asserts that the switch at `esl` holds no channel: `show channels
/// count` says `0 total.` (within 10 s: a channel is destroyed a moment
/// after its hangup). Otherwise panics with the channels it still has.
pub async fn assert_no_channels(esl: SocketAddr) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let count = esl_api(esl, "show channels count").await;
        if count.trim() == "0 total." {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            let channels = esl_api(esl, "show channels").await;
            panic!(
                "the switch still holds channels: {}\n{channels}",
                count.trim()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
