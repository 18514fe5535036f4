//! `redswitch calls`: the live calls, read from Redis, and with
//! `--check-switch` compared with the channels FreeSWITCH holds.
//!
//! A call is live while its active-call list
//! `redswitch.<dial_id>.<org_id>.<user_id>` exists: the list holds
//! `ACTIVE.<side>` for every side that answered and has not hung up, and
//! Redis deletes it when the last side hangs up. A call still ringing its
//! first side has no such list yet and is not shown. The keys are found with
//! one `SCAN … TYPE list` pass (on a cluster, one on every master), then
//! each is read with `LRANGE` and `TTL`.
//!
//! **Age** is how long ago the call's state last changed: each write to the
//! list (an answer or a hangup of any side) re-sets its expiry to 24 h, so
//! the age is 24 h minus the key's remaining TTL. For a two-party call that
//! is the time since the callee answered, i.e. how long the conversation
//! has lasted; a barger joining or leaving restarts it. A dead instance's
//! lists are removed when a live instance closes its calls out; one that
//! nobody closed out keeps ageing until Redis expires it at 24 h, which is
//! exactly what an operator looking for stale entries wants to see.
//!
//! **`--check-switch`** asks FreeSWITCH for its channels (`show channels as
//! json`) and each channel's `dial_id` and `redswitch_side` variables
//! (`uuid_getvar`), which the agent sets on every leg it creates. A call
//! with an answered side that no channel carrying its `dial_id` and that
//! side stands for is marked `missing`, with those sides (FreeSWITCH no
//! longer has those legs); a channel carrying a `dial_id` that no live call
//! owns is listed as an orphan. Redis records which sides are up, not the
//! channel uuid of each, so legs are matched by `dial_id` and side; a
//! channel without `redswitch_side` stands for any one side of its call.
//! Any mismatch makes the command exit 1. Only the one FreeSWITCH of
//! `--esl-host` is asked: where several switches share a Redis, a call on
//! another switch shows as `missing` here.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use clap::Args;
use futures::StreamExt;
use serde::Serialize;

use crate::service::events::ACTIVE_TTL_SECS;
use crate::service::store::{RedisClient, RedisConn, StoreError};
use crate::service::validate::Id;
use crate::switch::{InboundClient, InboundConfig};

/// `redswitch calls`.
#[derive(Debug, Clone, Args)]
pub struct CallsArgs {
    /// Print one JSON object (`{"calls": […], "orphan_channels": […]}`)
    /// instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Compare with FreeSWITCH's channels (--esl-host/--esl-port/--esl-password):
    /// mark calls whose legs FreeSWITCH no longer has, list channels whose
    /// `dial_id` no call owns; exit 1 on any mismatch.
    #[arg(long)]
    pub check_switch: bool,
}

/// Why `calls` failed.
#[derive(Debug, thiserror::Error)]
pub enum CallsError {
    /// Redis could not be opened or read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A Redis command failed.
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// FreeSWITCH could not be reached or answered badly.
    #[error("FreeSWITCH: {0}")]
    Switch(String),
    /// `--check-switch` found calls and channels that disagree.
    #[error("{missing} call(s) without their legs in FreeSWITCH, {orphans} orphan channel(s)")]
    Mismatch {
        /// Calls marked `missing`.
        missing: usize,
        /// Channels with a `dial_id` no call owns.
        orphans: usize,
    },
    /// Writing to stdout failed.
    #[error("stdout: {0}")]
    Io(#[from] std::io::Error),
}

/// One live call as Redis records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LiveCall {
    /// The call's id (its channel).
    pub dial_id: String,
    /// The user's organisation.
    pub org_id: String,
    /// The user.
    pub user_id: String,
    /// The sides that answered and have not hung up (0 caller, 1 callee,
    /// 2 barger).
    pub sides: Vec<u8>,
    /// Seconds since the call's last answer or hangup (see the module
    /// documentation); `None` when the key has no expiry.
    pub age_s: Option<u64>,
    /// With `--check-switch`: how many FreeSWITCH channels carry this
    /// `dial_id`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub switch_legs: Option<usize>,
    /// With `--check-switch`: `ok`, or `missing` when an answered side has
    /// no channel in FreeSWITCH.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub switch: Option<&'static str>,
    /// With `--check-switch`: the answered sides FreeSWITCH has no channel
    /// for.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing_sides: Vec<u8>,
}

/// A FreeSWITCH channel that carries a `dial_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchLeg {
    /// The channel's uuid.
    pub uuid: String,
    /// Its channel name.
    pub name: String,
    /// Its `redswitch_side` variable, when set.
    pub side: Option<u8>,
}

/// A FreeSWITCH channel carrying a `dial_id` that no live call owns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrphanChannel {
    /// The channel's uuid.
    pub uuid: String,
    /// Its channel name (`sofia/gateway/…`).
    pub name: String,
    /// Its `dial_id` variable.
    pub dial_id: String,
}

/// The `(dial_id, org_id, user_id)` of an active-call key, or `None` for
/// any other key that happens to match the `SCAN` pattern.
pub fn parse_active_key(key: &str) -> Option<(String, String, String)> {
    let mut parts = key.split('.');
    if parts.next() != Some("redswitch") {
        return None;
    }
    let mut id = || Id::parse("key", parts.next()?).ok().map(Id::into_string);
    let ids = (id()?, id()?, id()?);
    parts.next().is_none().then_some(ids)
}

/// The sides of an active-call list's items (`ACTIVE.<side>`), sorted, once
/// each; other items are ignored.
fn sides(items: &[String]) -> Vec<u8> {
    let set: BTreeSet<u8> = items
        .iter()
        .filter_map(|i| i.strip_prefix("ACTIVE.")?.parse().ok())
        .filter(|s| *s <= 2)
        .collect();
    set.into_iter().collect()
}

/// The age from the remaining TTL (`-1`: no expiry, `-2`: gone).
fn age_from_ttl(ttl: i64) -> Option<u64> {
    u64::try_from(ttl).ok().map(|t| {
        u64::try_from(ACTIVE_TTL_SECS)
            .unwrap_or(0)
            .saturating_sub(t)
    })
}

/// Every live call in Redis, sorted by `dial_id`.
pub async fn live_calls(conn: &RedisConn) -> Result<Vec<LiveCall>, CallsError> {
    let keys = conn.scan_match("redswitch.*.*.*", "list").await?;
    let reads = futures::stream::iter(keys.into_iter().filter_map(|key| {
        let (dial_id, org_id, user_id) = parse_active_key(&key)?;
        let mut conn = conn.clone();
        Some(async move {
            // LRANGE and TTL of one key: one slot, one round trip.
            let (items, ttl): (Vec<String>, i64) = redis::pipe()
                .lrange(&key, 0, -1)
                .ttl(&key)
                .query_async(&mut conn)
                .await?;
            Ok::<_, redis::RedisError>(LiveCall {
                dial_id,
                org_id,
                user_id,
                sides: sides(&items),
                age_s: age_from_ttl(ttl),
                switch_legs: None,
                switch: None,
                missing_sides: Vec::new(),
            })
        })
    }))
    .buffer_unordered(32);
    let mut calls: Vec<LiveCall> = reads
        .collect::<Vec<_>>()
        .await
        .into_iter()
        // A list that emptied since the SCAN is a call that ended.
        .filter(|r| r.as_ref().map_or(true, |call| !call.sides.is_empty()))
        .collect::<Result<_, _>>()?;
    calls.sort_by(|a, b| a.dial_id.cmp(&b.dial_id));
    Ok(calls)
}

/// FreeSWITCH's channels that carry a `dial_id` variable, by `dial_id`.
pub async fn switch_channels(
    esl: InboundConfig,
) -> Result<BTreeMap<String, Vec<SwitchLeg>>, CallsError> {
    let fail = |e: crate::switch::Error| CallsError::Switch(e.to_string());
    let mut esl = esl;
    esl.reconnect.max_attempts = Some(0);
    let (client, _events) = InboundClient::connect(esl).await.map_err(fail)?;
    let listing = client.api("show channels as json").await.map_err(fail)?;
    let rows = channel_rows(&listing)?;
    let getvar = async |uuid: &str, name: &str| {
        // A channel that ended since the listing answers -ERR: no value.
        match client.api(&format!("uuid_getvar {uuid} {name}")).await {
            Ok(v) => Ok(Some(v.trim().to_owned()).filter(|v| !v.is_empty() && v != "_undef_")),
            Err(e) if e.is_command_failed() => Ok(None),
            Err(e) => Err(fail(e)),
        }
    };
    let mut by_dial = BTreeMap::<String, Vec<SwitchLeg>>::new();
    for (uuid, name) in rows {
        let Some(dial_id) = getvar(&uuid, "dial_id").await? else {
            continue;
        };
        let side = getvar(&uuid, "redswitch_side")
            .await?
            .and_then(|s| s.parse().ok());
        by_dial
            .entry(dial_id)
            .or_default()
            .push(SwitchLeg { uuid, name, side });
    }
    let _ = client.close().await;
    Ok(by_dial)
}

/// `(uuid, name)` of each row of `show channels as json`. FreeSWITCH leaves
/// `rows` out when there is no channel.
fn channel_rows(listing: &str) -> Result<Vec<(String, String)>, CallsError> {
    let v: serde_json::Value = serde_json::from_str(listing.trim())
        .map_err(|e| CallsError::Switch(format!("`show channels as json` is not JSON ({e})")))?;
    let field = |row: &serde_json::Value, name: &str| {
        row.get(name)
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    Ok(v.get("rows")
        .and_then(serde_json::Value::as_array)
        .map(|rows| {
            rows.iter()
                .map(|r| (field(r, "uuid"), field(r, "name")))
                .filter(|(uuid, _)| !uuid.is_empty())
                .collect()
        })
        .unwrap_or_default())
}

/// The answered `sides` that no leg stands for: a leg with a side stands
/// for that side, a leg without one for any one remaining side.
fn missing_sides(sides: &[u8], legs: &[SwitchLeg]) -> Vec<u8> {
    let mut missing: Vec<u8> = sides
        .iter()
        .copied()
        .filter(|s| !legs.iter().any(|l| l.side == Some(*s)))
        .collect();
    let unsided = legs.iter().filter(|l| l.side.is_none()).count();
    missing.drain(..unsided.min(missing.len()));
    missing
}

/// Marks each call `ok` or `missing` against `channels`, and returns the
/// channels no call owns.
pub fn compare(
    calls: &mut [LiveCall],
    mut channels: BTreeMap<String, Vec<SwitchLeg>>,
) -> Vec<OrphanChannel> {
    for call in calls.iter_mut() {
        let legs = channels.remove(&call.dial_id).unwrap_or_default();
        call.switch_legs = Some(legs.len());
        call.missing_sides = missing_sides(&call.sides, &legs);
        call.switch = Some(if call.missing_sides.is_empty() {
            "ok"
        } else {
            "missing"
        });
    }
    channels
        .into_iter()
        .flat_map(|(dial_id, legs)| {
            legs.into_iter().map(move |leg| OrphanChannel {
                uuid: leg.uuid,
                name: leg.name,
                dial_id: dial_id.clone(),
            })
        })
        .collect()
}

fn format_age(age: Option<u64>) -> String {
    match age {
        None => "-".into(),
        Some(s) if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        Some(s) => format!("{}h{:02}m", s / 3600, s / 60 % 60),
    }
}

/// The table `calls` prints without `--json`.
pub fn table(calls: &[LiveCall], orphans: Option<&[OrphanChannel]>) -> String {
    let sides = |c: &LiveCall| {
        c.sides
            .iter()
            .map(u8::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut rows = vec![vec![
        "DIAL_ID".to_owned(),
        "ORG".into(),
        "USER".into(),
        "SIDES".into(),
        "AGE".into(),
    ]];
    if orphans.is_some() {
        rows[0].push("SWITCH".into());
    }
    for c in calls {
        let mut row = vec![
            c.dial_id.clone(),
            c.org_id.clone(),
            c.user_id.clone(),
            sides(c),
            format_age(c.age_s),
        ];
        match (c.switch, c.switch_legs) {
            (Some("ok"), Some(legs)) => row.push(format!("ok ({legs} legs)")),
            (Some(state), Some(legs)) => row.push(format!(
                "{state} side {} ({legs} legs)",
                c.missing_sides
                    .iter()
                    .map(u8::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            )),
            _ => {}
        }
        rows.push(row);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, String::len))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out.push_str(&format!("{} live call(s)\n", calls.len()));
    if let Some(orphans) = orphans {
        for o in orphans {
            out.push_str(&format!(
                "orphan channel {} ({}) carries dial_id {} that no call owns\n",
                o.uuid, o.name, o.dial_id
            ));
        }
    }
    out
}

/// `redswitch calls`; `esl` is where FreeSWITCH is, given with
/// `--check-switch`.
pub async fn run(
    redis_url: &str,
    redis_timeout: Duration,
    esl: Option<InboundConfig>,
    args: &CallsArgs,
) -> Result<(), CallsError> {
    let client = RedisClient::connect(redis_url, redis_timeout).await?;
    let mut calls = live_calls(&client.connection().await?).await?;
    let orphans = match esl {
        Some(esl) => Some(compare(&mut calls, switch_channels(esl).await?)),
        None => None,
    };
    let out = if args.json {
        let mut doc = serde_json::json!({ "calls": calls });
        if let Some(o) = &orphans {
            doc["orphan_channels"] = serde_json::json!(o);
        }
        format!("{doc}\n")
    } else {
        table(&calls, orphans.as_deref())
    };
    use std::io::Write;
    let mut stdout = std::io::stdout();
    stdout.write_all(out.as_bytes())?;
    stdout.flush()?;
    let missing = calls.iter().filter(|c| c.switch == Some("missing")).count();
    let orphans = orphans.map_or(0, |o| o.len());
    if missing + orphans > 0 {
        return Err(CallsError::Mismatch { missing, orphans });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(dial_id: &str, sides: &[u8]) -> LiveCall {
        LiveCall {
            dial_id: dial_id.into(),
            org_id: "o".into(),
            user_id: "u".into(),
            sides: sides.to_vec(),
            age_s: Some(75),
            switch_legs: None,
            switch: None,
            missing_sides: Vec::new(),
        }
    }

    fn leg(uuid: &str, side: Option<u8>) -> SwitchLeg {
        SwitchLeg {
            uuid: uuid.into(),
            name: format!("sofia/gateway/g/{uuid}"),
            side,
        }
    }

    #[test]
    fn active_keys_and_nothing_else() {
        assert_eq!(
            parse_active_key("redswitch.d-1.org_1.user"),
            Some(("d-1".into(), "org_1".into(), "user".into()))
        );
        for other in [
            "redswitch_history.o.u",
            "redswitch.d.o",
            "redswitch.d.o.u.x",
            "redswitch.d..u",
            "redswitch.d o.o.u",
            "{talkiq-asp.calls}.processing.a",
        ] {
            assert_eq!(parse_active_key(other), None, "{other}");
        }
    }

    #[test]
    fn sides_and_age() {
        let items = ["ACTIVE.1", "ACTIVE.0", "ACTIVE.1", "junk", "ACTIVE.7"].map(String::from);
        assert_eq!(sides(&items), [0, 1]);
        assert_eq!(age_from_ttl(ACTIVE_TTL_SECS - 90), Some(90));
        assert_eq!(age_from_ttl(-1), None);
        assert_eq!(format_age(Some(75)), "1m15s");
        assert_eq!(format_age(Some(7380)), "2h03m");
    }

    #[test]
    fn switch_rows_with_and_without_channels() {
        assert_eq!(channel_rows(r#"{"row_count":0}"#).unwrap(), []);
        let rows = channel_rows(
            r#"{"row_count":1,"rows":[{"uuid":"u1","name":"sofia/gateway/g/1","state":"CS_EXECUTE"}]}"#,
        )
        .unwrap();
        assert_eq!(rows, [("u1".to_owned(), "sofia/gateway/g/1".to_owned())]);
        assert!(channel_rows("-ERR nope").is_err());
    }

    #[test]
    fn compare_marks_missing_sides_and_orphans() {
        let mut calls = [
            call("a", &[0, 1]),
            call("b", &[0, 1]),
            call("c", &[0]),
            call("d", &[0, 1]),
        ];
        let mut channels = BTreeMap::new();
        channels.insert("a".to_owned(), vec![leg("u1", Some(0)), leg("u2", Some(1))]);
        channels.insert("b".to_owned(), vec![leg("u3", Some(0)), leg("u4", Some(2))]);
        // Without redswitch_side, a leg stands for any one side.
        channels.insert("d".to_owned(), vec![leg("u5", None), leg("u6", None)]);
        channels.insert("z".to_owned(), vec![leg("u9", Some(0))]);
        let orphans = compare(&mut calls, channels);
        let states: Vec<_> = calls
            .iter()
            .map(|c| {
                (
                    c.switch.unwrap(),
                    c.switch_legs.unwrap(),
                    c.missing_sides.clone(),
                )
            })
            .collect();
        assert_eq!(
            states,
            [
                ("ok", 2, vec![]),
                ("missing", 2, vec![1]),
                ("missing", 0, vec![0]),
                ("ok", 2, vec![]),
            ]
        );
        assert_eq!(
            orphans,
            [OrphanChannel {
                uuid: "u9".into(),
                name: "sofia/gateway/g/u9".into(),
                dial_id: "z".into()
            }]
        );
        let text = table(&calls, Some(&orphans));
        assert!(text.contains("missing side 1 (2 legs)"), "{text}");
        assert!(
            text.contains("orphan channel u9 (sofia/gateway/g/u9) carries dial_id z"),
            "{text}"
        );
        assert_eq!(missing_sides(&[0, 1], &[leg("x", None)]), [1]);
    }
}
