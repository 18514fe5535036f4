//! `schemas/`: every schema is valid JSON Schema 2020-12, every message type
//! has one, the schemas and the agent's own parsers agree on good and bad
//! messages, and every message seen on the calls' channels while the agent
//! runs real call flows (a `PSUBSCRIBE *` tap) validates against the schema
//! of its `type`.

#[allow(dead_code)]
use redswitch_test_support as support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::StreamExt;
use redswitch::commands::schema::{SCHEMAS, schema};
use redswitch::service::control::{self, ControlMessage, Parsed};
use redswitch::service::events::{EVENT_TYPES, Event};
use redswitch::service::job;
use serde_json::{Value, json};
use support::stack::{Follower, Stack, job, job_with};

fn validator(kind: &str) -> jsonschema::Validator {
    let text = schema(kind).unwrap_or_else(|| panic!("no schema for {kind}"));
    let value: Value = serde_json::from_str(text).unwrap();
    jsonschema::draft202012::new(&value).unwrap_or_else(|e| panic!("{kind}: {e}"))
}

/// Every control message type. The match has no wildcard, so a new control
/// message does not compile here until it is listed (and so has a schema).
fn control_types() -> Vec<&'static str> {
    fn listed(m: &ControlMessage) -> &'static str {
        match m {
            ControlMessage::Hangup
            | ControlMessage::Barge { .. }
            | ControlMessage::Whisper
            | ControlMessage::Mute
            | ControlMessage::Threeway
            | ControlMessage::Unthreeway
            | ControlMessage::Play { .. }
            | ControlMessage::StopMedia { .. }
            | ControlMessage::Record { .. }
            | ControlMessage::StopRecord
            | ControlMessage::SendDtmf { .. } => m.event_type(),
        }
    }
    let _ = listed;
    vec![
        "hangup",
        "barge",
        "whisper",
        "mute",
        "threeway",
        "unthreeway",
        "play",
        "stop-media",
        "record",
        "stop-record",
        "send-dtmf",
    ]
}

#[test]
fn every_schema_is_valid_2020_12_and_every_type_has_one() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
    let on_disk: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let embedded: BTreeSet<String> = SCHEMAS.iter().map(|(t, _)| format!("{t}.json")).collect();
    assert_eq!(on_disk, embedded, "schemas/ and the embedded list differ");

    let mut wanted: BTreeSet<&str> = EVENT_TYPES.into_iter().collect();
    wanted.extend(control_types());
    wanted.insert(job::ASP_CALL);
    let have: BTreeSet<&str> = SCHEMAS.iter().map(|(t, _)| *t).collect();
    assert_eq!(have, wanted);

    for (kind, text) in SCHEMAS {
        let value: Value = serde_json::from_str(text).unwrap();
        assert_eq!(
            value["$schema"],
            "https://json-schema.org/draft/2020-12/schema"
        );
        jsonschema::draft202012::meta::validate(&value)
            .unwrap_or_else(|e| panic!("{kind} is not a valid schema: {e}"));
        assert_eq!(value["properties"]["type"]["const"], *kind);
        // The file on disk is what is embedded.
        let file = std::fs::read_to_string(dir.join(format!("{kind}.json"))).unwrap();
        assert_eq!(&file, text);
    }
    // A schema that is not one is caught by the same check.
    assert!(jsonschema::draft202012::meta::validate(&json!({"type": 12})).is_err());

    // The ack names exactly the control types.
    let ack: Value = serde_json::from_str(schema("ack").unwrap()).unwrap();
    let acked: BTreeSet<&str> = ack["properties"]["event"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(acked, control_types().into_iter().collect());
}

#[test]
fn the_schema_command_prints_them() {
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_redswitch"))
            .args(args)
            .output()
            .expect("run redswitch")
    };
    let out = run(&["schema", "hangup-event"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        schema("hangup-event").unwrap()
    );
    let out = run(&["schema"]);
    let all: Value = serde_json::from_slice(&out.stdout).unwrap();
    for (kind, text) in SCHEMAS {
        assert_eq!(all[kind], serde_json::from_str::<Value>(text).unwrap());
    }
    let out = run(&["schema", "--list"]);
    let listed: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(listed, SCHEMAS.iter().map(|(t, _)| *t).collect::<Vec<_>>());
    let out = run(&["schema", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.starts_with("redswitch: error: no schema for \"nope\"; known types: asp-call,"),
        "{stderr}"
    );
}

/// What the agent's own parser says of a message of `kind`.
fn parser_accepts(kind: &str, message: &Value) -> bool {
    let raw = message.to_string();
    if kind == job::ASP_CALL {
        return job::parse(raw.as_bytes()).is_ok();
    }
    if EVENT_TYPES.contains(&kind) {
        return serde_json::from_value::<Event>(message.clone()).is_ok();
    }
    match control::parse(raw.as_bytes()) {
        Parsed::Control(m) => m.event_type() == kind,
        _ => false,
    }
}

#[test]
fn examples_validate_and_are_accepted_by_the_agent() {
    for (kind, text) in SCHEMAS {
        let value: Value = serde_json::from_str(text).unwrap();
        let examples = value["examples"].as_array().unwrap();
        assert!(!examples.is_empty(), "{kind} has no example");
        let v = validator(kind);
        for ex in examples {
            assert!(v.is_valid(ex), "{kind}: example {ex} fails its schema");
            assert!(parser_accepts(kind, ex), "{kind}: the agent refuses {ex}");
        }
    }
}

/// `base` with `field` set to `value` (`Value::Null` as a marker removes it).
fn with(base: &Value, field: &str, value: Value) -> Value {
    let mut m = base.clone();
    match value {
        Value::Null => {
            m.as_object_mut().unwrap().remove(field);
        }
        v => m[field] = v,
    }
    m
}

#[test]
fn schemas_and_the_agent_agree_on_edge_cases() {
    let good_job = job("15105625882", "14157697098");
    let play = json!({"type":"play","media":["a.wav"],"side":0});
    let dtmf = json!({"type":"send-dtmf","digits":"1","side":1});
    let mut cases: Vec<(&str, Value, bool)> = Vec::new();
    for (field, value, ok) in [
        ("dial_id", json!("a.b"), false),
        ("dial_id", json!("x".repeat(128)), true),
        ("dial_id", json!("x".repeat(129)), false),
        ("org_id", json!(""), false),
        ("user_id", json!("ü"), false),
        ("callee_number", json!("+14157697098"), true),
        ("callee_number", json!("*67#"), true),
        (
            "callee_number",
            json!("1555,execute_on_answer=system x"),
            false,
        ),
        ("callee_number", json!("1555\n"), false),
        ("callee_number", json!("١٥٥٥"), false),
        ("callee_number", json!("++1"), false),
        ("callee_number", json!(format!("+{}", "9".repeat(32))), true),
        ("callee_number", json!("9".repeat(33)), false),
        ("caller_number", json!(15105625882u64), false),
        ("caller_id_lega", Value::Null, false),
        ("call_provider", json!("gw.example-1"), true),
        ("call_provider", json!("gw/1"), false),
        ("call_provider", json!("p".repeat(65)), false),
        ("type", json!("sms"), false),
        ("priority", json!(7), true),
    ] {
        cases.push(("asp-call", with(&good_job, field, value), ok));
    }
    for (media, ok) in [
        ("ivr/welcome.wav", true),
        ("./a..b.wav", true),
        ("../etc/passwd", false),
        ("a/..", false),
        ("/etc/passwd", false),
        ("a b.wav", false),
        ("http://x/y.wav", false),
        ("${x}.wav", false),
        ("tone_stream://%(2000,4000,440,480)", true),
        ("tone_stream://%(2000,4000,440);loops=3", true),
        ("tone_stream://%(2000,4000)", false),
        ("tone_stream://%(2000,4000,440);loops=-1", false),
        ("tone_stream://%(2000,4000,440)\napi system x", false),
        ("tone_stream://%(2000,4000,${system(x)})", false),
        ("tone_stream://%(١,0,941)", false),
        ("silence_stream://500", true),
        ("silence_stream://0000001", true),
        ("silence_stream://3600000", true),
        ("silence_stream://3600001", false),
        ("silence_stream://0", false),
        ("silence_stream://", false),
        ("silence_stream://5 0", false),
    ] {
        cases.push(("play", with(&play, "media", json!([media])), ok));
    }
    let long_tone = format!("tone_stream://%(1,1{})", ",440".repeat(70));
    cases.push(("play", with(&play, "media", json!([long_tone])), false));
    cases.push(("play", with(&play, "media", json!([])), false));
    cases.push(("play", with(&play, "media", json!(vec!["a.wav"; 64])), true));
    cases.push((
        "play",
        with(&play, "media", json!(vec!["a.wav"; 65])),
        false,
    ));
    cases.push(("play", with(&play, "media", json!("a.wav")), false));
    cases.push(("play", with(&play, "media", json!([1])), false));
    for (side, ok) in [
        (json!(0), true),
        (json!(1), true),
        (json!("both"), true),
        (json!(2), false),
        (json!("0"), false),
        (json!(-1), false),
        (Value::Null, false),
    ] {
        cases.push(("play", with(&play, "side", side.clone()), ok));
        cases.push((
            "stop-media",
            with(&json!({"type":"stop-media","side":0}), "side", side),
            ok,
        ));
    }
    for (field, value, ok) in [
        ("digits", json!("0123456789*#ABCD"), true),
        ("digits", json!("E"), false),
        ("digits", json!("1 2"), false),
        ("digits", json!("1".repeat(65)), false),
        ("side", json!(2), true),
        ("side", json!(3), false),
        ("duration_ms", json!(1), true),
        ("duration_ms", json!(10000), true),
        ("duration_ms", json!(0), false),
        ("duration_ms", json!(10001), false),
        ("duration_ms", json!(null), true),
        ("duration_ms", json!("100"), false),
        ("duration_ms", json!(-5), false),
    ] {
        let m = if value.is_null() {
            let mut m = dtmf.clone();
            m[field] = Value::Null;
            m
        } else {
            with(&dtmf, field, value)
        };
        cases.push(("send-dtmf", m, ok));
    }
    for (name, ok) in [
        ("call-42_a", true),
        ("a.wav", false),
        ("../x", false),
        ("", false),
    ] {
        cases.push(("record", json!({"type":"record","name":name}), ok));
    }
    cases.push(("record", json!({"type":"record"}), false));
    cases.push((
        "barge",
        json!({"type":"barge","phone_number":"+15105550199","caller_id":"1"}),
        true,
    ));
    cases.push((
        "barge",
        json!({"type":"barge","phone_number":"1555}","caller_id":"1"}),
        false,
    ));
    cases.push(("barge", json!({"type":"barge","phone_number":"1"}), false));
    cases.push(("hangup", json!({"type":"hangup","extra":1}), true));
    cases.push(("hangup", json!({"type":"hang-up"}), false));
    // Events: exactly the fields the agent writes.
    for (kind, message, ok) in [
        (
            "answer-event",
            json!({"type":"answer-event","side":2}),
            true,
        ),
        (
            "answer-event",
            json!({"type":"answer-event","side":3}),
            false,
        ),
        (
            "answer-event",
            json!({"type":"answer-event","side":"0"}),
            false,
        ),
        (
            "hangup-event",
            json!({"type":"hangup-event","side":0,"cause":"NORMAL_CLEARING"}),
            true,
        ),
        (
            "hangup-event",
            json!({"type":"hangup-event","side":0}),
            false,
        ),
        (
            "media-done-event",
            json!({"type":"media-done-event","side":1,"reason":"later"}),
            false,
        ),
        (
            "record-done-event",
            json!({"type":"record-done-event","path":"/r/a.wav","reason":"done","duration_ms":-1}),
            false,
        ),
        ("ack", json!({"type":"ack"}), false),
        ("error", json!({"type":"error","event":"x"}), false),
        ("call-start", json!({"type":"call-start"}), false),
        ("failure", json!({"type":"failure","cause":7}), false),
    ] {
        cases.push((kind, message, ok));
    }

    let validators: BTreeMap<&str, jsonschema::Validator> =
        SCHEMAS.iter().map(|(t, _)| (*t, validator(t))).collect();
    let mut disagreements = Vec::new();
    for (kind, message, ok) in &cases {
        let by_schema = validators[kind].is_valid(message);
        let by_agent = parser_accepts(kind, message);
        if by_schema != *ok || by_agent != *ok {
            disagreements.push(format!(
                "{kind} {message}: expected {ok}, schema {by_schema}, agent {by_agent}"
            ));
        }
    }
    assert!(disagreements.is_empty(), "{disagreements:#?}");
}

/// Every message published on any channel, as (channel, payload).
async fn tap(url: &str) -> tokio::sync::mpsc::UnboundedReceiver<(String, String)> {
    let client = redis::Client::open(url).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.psubscribe("*").await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = pubsub.on_message();
        while let Some(msg) = messages.next().await {
            let payload: String = msg.get_payload().unwrap_or_default();
            if tx
                .send((msg.get_channel_name().to_owned(), payload))
                .is_err()
            {
                return;
            }
        }
    });
    rx
}

/// Publishes a control message and waits for its ack or error.
async fn control(stack: &Stack, f: &mut Follower, message: Value) -> Value {
    stack
        .publish(&f.dial_id.clone(), &message.to_string())
        .await;
    f.answer(message["type"].as_str()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_of_real_call_flows_matches_its_schema() {
    let stack = Stack::start(1).await;
    let mut tapped = tap(&stack.redis.url()).await;
    let mut dial_ids = BTreeSet::new();
    // Messages the test publishes on purpose broken: each must fail its
    // schema (when it names a known type) and is not checked again below.
    let mut broken: Vec<String> = Vec::new();

    // The happy path, with every control verb.
    let (mut f, dial_id) = stack.bridged_call("15105625882", "14157697098").await;
    dial_ids.insert(dial_id.clone());
    let barge = json!({"type":"barge","phone_number":"15553331234","caller_id":"15550009999"});
    assert_eq!(control(&stack, &mut f, barge).await["type"], "ack");
    f.expect_where("answer-event", |v| v["side"] == 2).await;
    for kind in ["whisper", "threeway", "unthreeway", "mute"] {
        assert_eq!(
            control(&stack, &mut f, json!({ "type": kind })).await["type"],
            "ack"
        );
    }
    let play = json!({"type":"play","media":["tone_stream://%(100,0,440)"],"side":0});
    assert_eq!(control(&stack, &mut f, play).await["type"], "ack");
    f.expect("media-done-event").await;
    let play = json!({"type":"play","media":["silence_stream://20000"],"side":"both"});
    assert_eq!(control(&stack, &mut f, play).await["type"], "ack");
    for side in [0, 1] {
        stack
            .wait_leg(&dial_id, side, "playing", |c| c.playing.is_some())
            .await;
    }
    control(&stack, &mut f, json!({"type":"stop-media","side":"both"})).await;
    f.expect("media-done-event").await;
    let record = json!({"type":"record","name":"schema-flow"});
    assert_eq!(control(&stack, &mut f, record).await["type"], "ack");
    tokio::time::sleep(Duration::from_millis(200)).await;
    control(&stack, &mut f, json!({"type":"stop-record"})).await;
    f.expect("record-done-event").await;
    let dtmf = json!({"type":"send-dtmf","digits":"12#","side":1,"duration_ms":100});
    assert_eq!(control(&stack, &mut f, dtmf).await["type"], "ack");
    // Bad control messages on a live call.
    for raw in [
        "nope".to_owned(),
        json!({"type":"fly"}).to_string(),
        json!({"type":"play","media":["../etc/passwd"],"side":0}).to_string(),
        json!({"type":"send-dtmf","digits":"1","side":7}).to_string(),
        json!({"type":"barge","phone_number":"1555,x","caller_id":"1"}).to_string(),
    ] {
        stack.publish(&dial_id, &raw).await;
        broken.push(raw);
    }
    for _ in 0..5 {
        f.expect("error").await;
    }
    assert_eq!(
        control(&stack, &mut f, json!({"type":"hangup"})).await["type"],
        "ack"
    );
    f.hangups(&[0, 1, 2]).await;
    // After the end: "call has ended".
    assert_eq!(
        control(&stack, &mut f, json!({"type":"hangup"})).await["type"],
        "error"
    );

    // DTMF from the far end (1555700… sends 1234#), barger modes without a
    // barger.
    let (mut f, dial_id) = stack.bridged_call("15105625882", "15557001234").await;
    dial_ids.insert(dial_id.clone());
    for _ in 0..5 {
        f.expect("dtmf-event").await;
    }
    assert_eq!(
        control(&stack, &mut f, json!({"type":"whisper"})).await["type"],
        "error"
    );
    control(&stack, &mut f, json!({"type":"hangup"})).await;
    f.hangups(&[0, 1]).await;

    // Failures: a busy callee, an unknown gateway, a bad job with a valid
    // dial_id, and jobs too broken to name a channel.
    let busy = job("15105625882", "15554861234");
    let refused = job_with("15105625882", "14157697098", "nonexistent");
    let bad = with(
        &job("15105625882", "14157697098"),
        "callee_number",
        json!("1555}"),
    );
    let asp_call = validator(job::ASP_CALL);
    for good in [&busy, &refused] {
        assert!(asp_call.is_valid(good), "{good}");
    }
    let mut followers = Vec::new();
    for j in [&busy, &refused, &bad] {
        dial_ids.insert(j["dial_id"].as_str().unwrap().to_owned());
        followers.push(stack.push(j).await);
    }
    followers[0]
        .expect_where("hangup-event", |v| v["side"] == 1)
        .await;
    followers[0].hangups(&[0, 1]).await;
    followers[1].expect("failure").await;
    followers[2].expect("failure").await;
    let unnamed = [
        "{not json".to_owned(),
        json!({"type":"asp-call","dial_id":"x.y"}).to_string(),
        json!([1, 2]).to_string(),
    ];
    for raw in &unnamed {
        stack.push_raw(raw).await;
    }
    // Every bad job fails the job schema too, and is dead-lettered.
    for raw in unnamed.iter().chain([&bad.to_string()]) {
        let parsed: Option<Value> = serde_json::from_str(raw).ok();
        assert!(
            !parsed.is_some_and(|v| asp_call.is_valid(&v)),
            "the job schema accepts {raw}"
        );
    }
    support::eventually("4 dead letters", Duration::from_secs(10), || async {
        stack.dead_letters().await.len() == 4
    })
    .await;

    // Everything the tap saw on those channels.
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    let validators: BTreeMap<&str, jsonschema::Validator> =
        SCHEMAS.iter().map(|(t, _)| (*t, validator(t))).collect();
    while let Ok(Some((channel, payload))) =
        tokio::time::timeout(Duration::from_millis(500), tapped.recv()).await
    {
        if !dial_ids.contains(&channel) {
            continue;
        }
        let value: Option<Value> = serde_json::from_str(&payload).ok();
        let kind = value
            .as_ref()
            .and_then(|v| v["type"].as_str())
            .map(str::to_owned);
        if broken.contains(&payload) {
            // It must fail its schema when it has a known type.
            if let (Some(v), Some(k)) = (&value, &kind)
                && let Some(validator) = validators.get(k.as_str())
            {
                assert!(!validator.is_valid(v), "schema {k} accepts {payload}");
            }
            continue;
        }
        let (Some(value), Some(kind)) = (value, kind) else {
            failures.push(format!("{channel}: not a typed JSON object: {payload}"));
            continue;
        };
        match validators.get(kind.as_str()) {
            None => failures.push(format!("{channel}: no schema for {payload}")),
            Some(v) => {
                let errors: Vec<String> = v.iter_errors(&value).map(|e| e.to_string()).collect();
                if !errors.is_empty() {
                    failures.push(format!("{channel}: {payload}: {errors:?}"));
                }
            }
        }
        *seen.entry(kind).or_default() += 1;
    }
    assert!(failures.is_empty(), "{failures:#?}");
    // The flows covered every event and every control message.
    let missing: Vec<&str> = EVENT_TYPES
        .into_iter()
        .chain(control_types())
        .filter(|t| !seen.contains_key(*t))
        .collect();
    assert!(
        missing.is_empty(),
        "never seen: {missing:?}; seen: {seen:?}"
    );
    stack.stop().await;
}
