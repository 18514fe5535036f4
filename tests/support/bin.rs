//! Running the real `redswitch` binary from a test, as an operator would,
//! without the caller's environment leaking configuration into it.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// Runs the binary at `bin` (a test passes `env!("CARGO_BIN_EXE_redswitch")`,
/// which only its own crate sees) with `args` and returns its output; no
/// Redis or switch address comes from the environment. Fails the test
/// after `limit`.
pub async fn run(bin: &'static str, args: Vec<String>, limit: Duration) -> Output {
    let run = tokio::task::spawn_blocking(move || {
        Command::new(bin)
            .args(&args)
            .env_remove("PUBSUB_REDIS_URL")
            .env_remove("ESL_URL")
            .env_remove("ESL_PORT")
            .env("RUST_LOG", "warn")
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .output()
            .expect("run redswitch")
    });
    tokio::time::timeout(limit, run)
        .await
        .expect("redswitch finished in time")
        .expect("the runner task")
}
