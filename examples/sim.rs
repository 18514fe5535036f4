//! Runs the FreeSWITCH simulator on `127.0.0.1:8021` (or the address given
//! as the first argument) until Ctrl-C. Handy for trying ESL clients by hand:
//! `cargo run --example sim -- 127.0.0.1:8021`.

use redswitch::sim::{SimConfig, Simulator};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8021".to_owned())
        .parse()?;
    let sim = Simulator::start(SimConfig {
        esl_listen: addr,
        ..SimConfig::default()
    })
    .await?;
    println!("simulator listening on {}", sim.esl_addr());
    tokio::signal::ctrl_c().await?;
    sim.shutdown().await;
    Ok(())
}
