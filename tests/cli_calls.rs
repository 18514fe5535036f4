//! `redswitch calls` (the real binary) against a real redis-server, the
//! simulator and an agent: a live call is listed with its sides and age;
//! `--check-switch` marks a call whose legs FreeSWITCH no longer has and a
//! channel whose `dial_id` no call owns, and exits 1 until they are gone.

#[allow(dead_code)]
use redswitch_test_support as support;

use redis::AsyncCommands;
use redswitch::switch::{InboundClient, InboundConfig};
use serde_json::{Value, json};
use std::process::Output;
use std::time::Duration;
use support::stack::Stack;

/// Runs the binary with `args` (no configuration from the environment).
async fn redswitch(args: Vec<String>) -> Output {
    support::bin::run(
        env!("CARGO_BIN_EXE_redswitch"),
        args,
        Duration::from_secs(30),
    )
    .await
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn calls_args(stack: &Stack, extra: &[&str]) -> Vec<String> {
    let mut v = vec![
        "--redis-url".to_owned(),
        stack.redis.url(),
        "--esl-port".into(),
        stack.sim.esl_addr().port().to_string(),
        "calls".into(),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// The JSON document `calls --json` printed.
fn document(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {} / {}", text(&out.stdout), text(&out.stderr)))
}

fn call<'a>(doc: &'a Value, dial_id: &str) -> &'a Value {
    doc["calls"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["dial_id"] == dial_id)
        .unwrap_or_else(|| panic!("{dial_id} not listed: {doc}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_lists_a_live_call_with_sides_and_age() {
    let stack = Stack::start(1).await;
    // A key that only looks like an active-call list is not a call.
    let mut redis = stack.redis().await;
    let _: () = redis.set("redswitch.not.a.list", "x").await.unwrap();
    let out = redswitch(calls_args(&stack, &["--json"])).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(document(&out), json!({"calls": []}));

    let (mut f, dial_id) = stack.bridged_call("15105625882", "14157697098").await;
    let out = redswitch(calls_args(&stack, &["--json"])).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let doc = document(&out);
    let c = call(&doc, &dial_id);
    assert_eq!(
        (&c["org_id"], &c["user_id"], &c["sides"]),
        (&json!("org1"), &json!("user1"), &json!([0, 1]))
    );
    let age = c["age_s"].as_u64().unwrap();
    assert!(age < 120, "{c}");

    // The table: a header, the call, a count.
    let out = redswitch(calls_args(&stack, &[])).await;
    let table = text(&out.stdout);
    assert!(table.starts_with("DIAL_ID"), "{table}");
    let row = table.lines().find(|l| l.starts_with(&dial_id)).unwrap();
    assert!(row.contains("org1") && row.contains("0,1"), "{row}");
    assert!(table.contains("1 live call(s)"), "{table}");

    // A node list whose first entry is down: the standalone server that
    // answered is the one used.
    let dead = format!(
        "redis://127.0.0.1:{}",
        support::redis_server::free_port(false)
    );
    let mut argv = calls_args(&stack, &["--json"]);
    argv[1] = format!("{dead},{}", stack.redis.url());
    let out = redswitch(argv).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(call(&document(&out), &dial_id)["sides"], json!([0, 1]));

    // Once the call is over it is gone.
    stack.publish(&dial_id, r#"{"type":"hangup"}"#).await;
    f.hangups(&[0, 1]).await;
    let out = redswitch(calls_args(&stack, &["--json"])).await;
    assert_eq!(document(&out), json!({"calls": []}));
    stack.stop().await;
}

/// Places a channel in the simulator carrying `vars`, parked.
async fn park_channel(client: &InboundClient, uuid: &str, vars: &str) {
    let reply = client
        .api(&format!(
            "originate {{origination_uuid={uuid},{vars}}}sofia/gateway/gw/14155550100 &park()"
        ))
        .await
        .unwrap();
    assert!(reply.starts_with("+OK"), "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_switch_marks_calls_without_legs_and_orphan_channels() {
    let stack = Stack::start(0).await;
    let mut esl = InboundConfig::new(stack.sim.esl_addr().to_string(), "ClueCon");
    esl.reconnect.max_attempts = Some(0);
    let (client, _events) = InboundClient::connect(esl).await.unwrap();
    let mut redis = stack.redis().await;

    // A call whose two legs FreeSWITCH holds, as the agent marks them.
    let live = "redswitch.live-1.org1.user1";
    let _: () = redis.rpush(live, &["ACTIVE.0", "ACTIVE.1"]).await.unwrap();
    let _: () = redis.expire(live, 86_400).await.unwrap();
    park_channel(&client, "leg-live-0", "dial_id=live-1,redswitch_side=0").await;
    park_channel(&client, "leg-live-1", "dial_id=live-1,redswitch_side=1").await;
    // A call left in Redis by an instance that died two minutes after its
    // last answer: FreeSWITCH has none of its legs.
    let ghost = "redswitch.ghost-1.org1.user2";
    let _: () = redis.rpush(ghost, &["ACTIVE.0", "ACTIVE.1"]).await.unwrap();
    let _: () = redis.expire(ghost, 86_400 - 120).await.unwrap();
    // A half-gone call: the callee's leg is gone.
    let half = "redswitch.half-1.org1.user3";
    let _: () = redis.rpush(half, &["ACTIVE.0", "ACTIVE.1"]).await.unwrap();
    let _: () = redis.expire(half, 86_400).await.unwrap();
    park_channel(&client, "leg-half-0", "dial_id=half-1,redswitch_side=0").await;
    // A channel carrying a dial_id no call owns, and one that is not ours.
    park_channel(&client, "leg-orphan", "dial_id=orphan-1,redswitch_side=0").await;
    park_channel(&client, "not-ours", "foo=bar").await;

    let out = redswitch(calls_args(&stack, &["--json", "--check-switch"])).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("redswitch: error: 2 call(s) without their legs in FreeSWITCH, 1 orphan"),
        "{stderr}"
    );
    let doc = document(&out);
    let live_1 = call(&doc, "live-1");
    assert_eq!(
        (&live_1["switch"], &live_1["switch_legs"]),
        (&json!("ok"), &json!(2))
    );
    let ghost_1 = call(&doc, "ghost-1");
    assert_eq!(
        (&ghost_1["switch"], &ghost_1["missing_sides"]),
        (&json!("missing"), &json!([0, 1]))
    );
    let age = ghost_1["age_s"].as_u64().unwrap();
    assert!((120..600).contains(&age), "{ghost_1}");
    let half_1 = call(&doc, "half-1");
    assert_eq!(half_1["missing_sides"], json!([1]));
    let orphans = doc["orphan_channels"].as_array().unwrap();
    assert_eq!(orphans.len(), 1, "{doc}");
    assert_eq!(
        (&orphans[0]["uuid"], &orphans[0]["dial_id"]),
        (&json!("leg-orphan"), &json!("orphan-1"))
    );

    // The table says the same.
    let out = redswitch(calls_args(&stack, &["--check-switch"])).await;
    let table = text(&out.stdout);
    assert!(table.contains("missing side 0,1"), "{table}");
    let orphan = table
        .lines()
        .find(|l| l.starts_with("orphan channel leg-orphan ("))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        orphan.ends_with("carries dial_id orphan-1 that no call owns"),
        "{orphan}"
    );

    // Cleaned up: consistent, exit 0.
    let _: () = redis.del(&[ghost, half]).await.unwrap();
    for uuid in ["leg-orphan", "leg-half-0"] {
        client.api(&format!("uuid_kill {uuid}")).await.unwrap();
    }
    support::eventually("killed channels gone", Duration::from_secs(10), || async {
        stack.sim.channels().len() == 3
    })
    .await;
    let out = redswitch(calls_args(&stack, &["--json", "--check-switch"])).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(document(&out)["orphan_channels"], json!([]));

    // FreeSWITCH unreachable: one error line, exit 1.
    let mut argv = calls_args(&stack, &["--check-switch"]);
    let port = argv.iter().position(|a| a == "--esl-port").unwrap() + 1;
    argv[port] = support::redis_server::free_port(false).to_string();
    let out = redswitch(argv).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("redswitch: error: FreeSWITCH:"), "{stderr}");
    // The channels this test made by hand are its own to end.
    for uuid in ["leg-live-0", "leg-live-1", "not-ours"] {
        client.api(&format!("uuid_kill {uuid}")).await.unwrap();
    }
    let _ = client.close().await;
    stack.stop().await;
}
