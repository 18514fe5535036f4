//! Control under abuse: 500 garbage messages on a live call's channel, then
//! a `hangup`. The hangup jumps the queue and is acknowledged within
//! seconds, the call ends with nothing left in the simulator, and every
//! garbage message either got its one `error` or was counted in a log line
//! (at most one a second).

use redswitch_test_support as support;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use redswitch::switch::{InboundClient, InboundConfig};
use serde_json::{Value, json};
use support::stack::Stack;

const GARBAGE: usize = 500;
const FLOOD_LINE: &str = "control messages left unanswered";

/// Every log line of this test binary, as JSON.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Captured {
    /// Installs the capture (once per process: the subscriber is global,
    /// because the agent's tasks run on the runtime's worker threads).
    fn install() -> Self {
        static LOGS: OnceLock<Captured> = OnceLock::new();
        LOGS.get_or_init(|| {
            let logs = Captured::default();
            let subscriber = tracing_subscriber::fmt()
                .json()
                .with_max_level(tracing::Level::WARN)
                .with_writer(logs.clone())
                .finish();
            tracing::subscriber::set_global_default(subscriber).expect("one subscriber");
            logs
        })
        .clone()
    }

    fn lines(&self) -> Vec<Value> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

/// The `n`-th garbage message: not JSON, an unknown type, or a known type
/// with fields that break their grammar.
fn garbage(n: usize) -> String {
    match n % 4 {
        0 => format!("not json {n}"),
        1 => json!({"type": format!("reboot-{n}")}).to_string(),
        2 => json!({"type":"play","media":["../../etc/passwd"],"side":0}).to_string(),
        _ => json!({"type":"send-dtmf","digits":"1 2","side":1}).to_string(),
    }
}

async fn channels_in_simulator(stack: &Stack) -> usize {
    let mut esl = InboundConfig::new(stack.sim.esl_addr().to_string(), "ClueCon");
    esl.reconnect.max_attempts = Some(0);
    let (client, _events) = InboundClient::connect(esl).await.unwrap();
    let reply = client.api("show channels count").await.unwrap();
    let _ = client.close().await;
    reply
        .trim()
        .strip_suffix(" total.")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {reply:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_flood_then_hangup_goes_through_and_every_message_is_accounted_for() {
    let logs = Captured::install();
    tokio::time::timeout(Duration::from_secs(90), async {
        let stack = Stack::start(1).await;
        let (mut f, dial_id) = stack.bridged_call("15105625882", "14157697098").await;
        let sessions = stack.sessions_since_startup().await;

        let started = Instant::now();
        let mut con = stack.redis().await;
        let mut flood = redis::pipe();
        for n in 0..GARBAGE {
            flood.publish(&dial_id, garbage(n)).ignore();
        }
        flood.publish(&dial_id, r#"{"type":"hangup"}"#).ignore();
        flood.query_async::<()>(&mut con).await.unwrap();

        // The hangup jumped the queue: acknowledged, and the call ends.
        let ack = f.answer(Some("hangup")).await;
        assert_eq!(ack["type"], "ack", "{ack}");
        let acked_after = started.elapsed();
        let causes = f.hangups(&[0, 1]).await;
        assert_eq!(causes[&0], "NORMAL_CLEARING");
        assert_eq!(causes[&1], "NORMAL_CLEARING");
        let sim = &stack.sim;
        support::eventually(
            "no channel in the simulator",
            Duration::from_secs(10),
            || async { sim.channels().is_empty() },
        )
        .await;
        assert_eq!(channels_in_simulator(&stack).await, 0);
        // The garbage dialled nobody.
        assert_eq!(stack.sessions_since_startup().await, sessions);

        // Late answers, and the flood log's last line (due a second after
        // the one before).
        tokio::time::sleep(Duration::from_millis(2500)).await;
        f.drain(Duration::from_millis(500)).await;
        let elapsed = started.elapsed();

        let errors = f.count("error");
        assert_eq!(f.count("ack"), 1, "one ack: the hangup");
        let flood_lines: Vec<Value> = logs
            .lines()
            .into_iter()
            .filter(|l| {
                l["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with(FLOOD_LINE))
            })
            .collect();
        let unanswered: u64 = flood_lines
            .iter()
            .map(|l| l["fields"]["unanswered"].as_u64().unwrap())
            .sum();
        // Exactly one answer, or counted: never both, never neither.
        assert_eq!(
            errors as u64 + unanswered,
            GARBAGE as u64,
            "{errors} errors + {unanswered} counted; lines: {flood_lines:#?}"
        );
        // The error budget: the burst answered, the flood not.
        assert!(errors >= 32, "{errors} errors");
        assert!(errors < GARBAGE / 2, "{errors} errors");
        // No log flood: at most one line a second (plus the first).
        assert!(
            flood_lines.len() as u64 <= elapsed.as_secs() + 1,
            "{} flood lines in {elapsed:?}",
            flood_lines.len()
        );
        let control_lines = logs
            .lines()
            .into_iter()
            .filter(|l| {
                l["target"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("redswitch::service::control"))
            })
            .count();
        assert_eq!(control_lines, flood_lines.len(), "{:#?}", logs.lines());
        // The history is the durable record: the call's events complete and
        // in order, each answer once, and no active key left.
        let history: Vec<Value> = stack.lrange_json("redswitch_history.org1.user1").await;
        let kinds: Vec<&str> = history
            .iter()
            .map(|v| v["type"].as_str().unwrap())
            .collect();
        assert_eq!(
            kinds[..3],
            ["call-start", "answer-event", "answer-event"],
            "{kinds:?}"
        );
        assert_eq!(kinds.iter().filter(|k| **k == "error").count(), errors);
        assert_eq!(kinds.iter().filter(|k| **k == "ack").count(), 1);
        assert_eq!(kinds.iter().filter(|k| **k == "hangup-event").count(), 2);
        let ack_at = kinds.iter().position(|k| *k == "ack").unwrap();
        let first_hangup = kinds.iter().position(|k| *k == "hangup-event").unwrap();
        assert!(
            ack_at < first_hangup,
            "the ack precedes the hangups: {kinds:?}"
        );
        let mut con = stack.redis().await;
        let active: Vec<String> = redis::AsyncCommands::keys(&mut con, "redswitch.*")
            .await
            .unwrap();
        assert!(active.is_empty(), "{active:?}");
        eprintln!(
            "hangup acked {acked_after:?} after the flood began; {errors} errors, \
             {unanswered} counted in {} log lines",
            flood_lines.len()
        );
        stack.stop().await;
    })
    .await
    .expect("the case ends within 90 s");
}
