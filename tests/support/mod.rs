//! Helpers shared by the integration tests.
//!
//! Each `tests/*.rs` file is its own crate and uses a different subset of
//! these helpers, so each declares `#[allow(dead_code)] mod support;`.

pub mod redis;
pub mod stack;

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `check` every 20 ms until it returns `true`; panics with `what`
/// after `timeout`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
