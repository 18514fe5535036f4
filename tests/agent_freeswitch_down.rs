//! The agent takes jobs only while its FreeSWITCH connection is up: while
//! FreeSWITCH is away, jobs wait in Redis (where another instance could take
//! them); once the inbound connection is back, they are done.

use redswitch_test_support as support;

use redswitch::sim::Simulator;
use std::time::Duration;
use support::stack::{JOBS, Stack, job};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_wait_in_redis_while_freeswitch_is_down() {
    let mut stack = Stack::start(1).await;
    let config = stack.sim.config().clone();
    stack.sim.clone().shutdown().await;
    // Let the agent notice the dropped link before the job arrives.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let job = job("15105625882", "14157697098");
    let mut f = stack.push(&job).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut con = stack.redis().await;
    let waiting: i64 = redis::cmd("LLEN")
        .arg(JOBS)
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(
        waiting, 1,
        "the job must stay queued while FreeSWITCH is down"
    );
    assert!(f.drain(Duration::from_millis(50)).await.is_empty());

    // FreeSWITCH comes back on the same address: the agent reconnects,
    // re-subscribes, and the job is done.
    stack.sim = Simulator::start(config).await.unwrap();
    f.expect("call-start").await;
    f.expect_where("answer-event", |v| v["side"] == 1).await;
    let waiting: i64 = redis::cmd("LLEN")
        .arg(JOBS)
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(waiting, 0);
    stack
        .publish(job["dial_id"].as_str().unwrap(), r#"{"type":"hangup"}"#)
        .await;
    f.hangups(&[0, 1]).await;
    stack.stop().await;
}
