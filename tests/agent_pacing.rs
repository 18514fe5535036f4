//! The agent under the switch's sessions-per-second limit: bursts of jobs
//! are dialled in order, paced so that FreeSWITCH refuses none.

use redswitch::esl::EventFormat;
use redswitch::service::pacing::{LimitSource, Pacer};
use redswitch::sim::Simulator;
use redswitch::switch::{InboundClient, InboundConfig};
use redswitch_test_support::eventually;
use redswitch_test_support::stack::{Follower, Stack, job};
use std::time::Duration;

/// The far end answers, then hangs up 2 s later: calls end by themselves.
const ANSWERS_THEN_HANGS_UP: &str = "15554870001";

/// Pushes `n` jobs at once and checks that every call comes up (both sides
/// answer), none fails, every one ends, and the callers were created in
/// the order the jobs were pushed.
async fn burst(stack: &Stack, n: usize) {
    // The switch's own view of the order: CHANNEL_CREATE of each caller.
    let (watch, mut created) = InboundClient::connect(InboundConfig::new(
        stack.sim.esl_addr().to_string(),
        "ClueCon",
    ))
    .await
    .unwrap();
    watch
        .subscribe(EventFormat::Plain, ["CHANNEL_CREATE"])
        .await
        .unwrap();
    let jobs: Vec<_> = (0..n)
        .map(|_| job("15105625882", ANSWERS_THEN_HANGS_UP))
        .collect();
    let mut followers = Vec::new();
    for job in &jobs {
        followers.push(Follower::start(&stack.redis.url(), job["dial_id"].as_str().unwrap()).await);
    }
    for job in &jobs {
        stack.push_raw(&job.to_string()).await;
    }
    let mut order = Vec::new();
    while order.len() < n {
        let event = tokio::time::timeout(Duration::from_secs(60), created.recv())
            .await
            .expect("a caller created within 60 s")
            .expect("event stream open");
        if event.variable("redswitch_side") == Some("0") {
            order.push(event.variable("dial_id").unwrap_or_default().to_owned());
        }
    }
    let pushed: Vec<_> = jobs
        .iter()
        .map(|j| j["dial_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(order, pushed, "callers not created in the order pushed");
    for f in &mut followers {
        f.expect_where("answer-event", |v| v["side"] == 1).await;
        let causes = f.hangups(&[0, 1]).await;
        assert_eq!(causes[&1], "NORMAL_CLEARING", "{:#?}", f.seen);
        assert_eq!(f.count("failure"), 0, "{:#?}", f.seen);
    }
    let _ = watch.close().await;
}

/// The switch never had to refuse a session: the peak rate its `status`
/// reports (attempts counted, refused ones included) stayed within its
/// limit.
async fn assert_no_throttling(stack: &Stack) {
    let status = stack.api("status").await;
    let line = status
        .lines()
        .find(|l| l.contains("session(s) per Sec out of max"))
        .unwrap_or_else(|| panic!("no rate line in {status:?}"));
    // `N session(s) per Sec out of max M, peak P, last 5min P5`
    let number_after = |word: &str| -> u64 {
        line.split(word)
            .nth(1)
            .and_then(|r| r.trim_start().split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {word:?} in {line:?}"))
    };
    let (max, peak) = (number_after("out of max"), number_after("peak"));
    assert!(
        peak <= max,
        "the switch saw {peak} sessions/s, over its limit {max}: {line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_jobs_at_once_all_come_up_at_the_default_limit() {
    let stack = Stack::start(1).await;
    burst(&stack, 60).await;
    assert_no_throttling(&stack).await;
    stack.stop().await;
}

/// A burst far beyond a low limit: every call is placed, in order, and the
/// switch refuses none. (100 jobs: two sessions a call at 10 sessions/s is
/// about 30 s.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_against_a_limit_of_ten_is_placed_in_order() {
    let mut stack = Stack::start(0).await;
    assert_eq!(
        stack.api("fsctl sps 10").await.trim(),
        "+OK sessions per second: 10"
    );
    let pacer = Pacer::new(None);
    stack
        .add_agent_with(|agent| agent.call.pacer = pacer.clone())
        .await;
    // Read at connect.
    assert_eq!((pacer.limit(), pacer.source()), (10, LimitSource::Switch));
    burst(&stack, 100).await;
    assert_no_throttling(&stack).await;
    stack.stop().await;
}

/// The limit is read again after every reconnect: a switch that comes back
/// with another limit is paced at the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limit_is_read_again_after_a_reconnect() {
    let mut stack = Stack::start(0).await;
    stack.api("fsctl sps 10").await;
    let pacer = Pacer::new(None);
    stack
        .add_agent_with(|agent| agent.call.pacer = pacer.clone())
        .await;
    assert_eq!(pacer.limit(), 10);
    // The switch restarts on the same address with its default limit.
    let config = stack.sim.config().clone();
    stack.sim.clone().shutdown().await;
    stack.sim = Simulator::start(config).await.unwrap();
    eventually("the limit read again", Duration::from_secs(15), || {
        std::future::ready(pacer.limit() == 30)
    })
    .await;
    assert_eq!(pacer.source(), LimitSource::Switch);
    stack.stop().await;
}
