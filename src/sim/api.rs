//! The `api` / `bgapi` commands the simulator implements (mod_commands'
//! reply texts), `originate` among them.

use crate::sim::channel::{self, Role, Spawn};
use crate::sim::dialstring::{Endpoint, OriginateApp, parse_originate};
use crate::sim::event::{format_local, now_micros, origin};
use crate::sim::listener::LogLine;
use crate::sim::mailbox::{ChanMsg, ChannelHandle, ExecReq};
use crate::sim::snapshot::{CState, ChanState, Profile, SnapExtra, Vars};
use crate::sim::{Core, lock};
use crate::sim::{fslog, numberplan};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// The version string of the recorded FreeSWITCH.
pub const VERSION: &str = "FreeSWITCH Version 1.10.12-release+git~20240802T210227Z~a88d069d6f~64bit (git a88d069 2024-08-02 21:02:27Z 64bit)";

const ORIGINATE_USAGE: &str = "-USAGE: <call url> <exten>|&<application_name>(<app_args>) [<dialplan>] [<context>] [<cid_name>] [<cid_num>] [<timeout_sec>]\n";

/// Runs one API command line (`status`, `originate …`) and returns its
/// output, exactly what `api` puts in the `api/response` body.
pub(crate) async fn execute(core: &Arc<Core>, line: &str) -> String {
    let (cmd, arg) = match line.split_once(' ') {
        Some((c, a)) => (c, a.trim()),
        None => (line, ""),
    };
    let args: Vec<&str> = arg.split_whitespace().collect();
    let no_channel = || "-ERR No such channel!\n".to_owned();
    match cmd {
        "status" => status(core),
        "fsctl" => fsctl(core, &args).await,
        "hupall" => hupall(core, &args).await,
        "sched_hangup" => crate::sim::sched::api(core, &args).await,
        "version" => format!("{VERSION}\n"),
        "hostname" => core.cfg.hostname.clone(),
        "global_getvar" => match arg {
            "hostname" => core.cfg.hostname.clone(),
            "local_ip_v4" => core.cfg.ipv4.clone(),
            "local_ip_v6" => core.cfg.ipv6.clone(),
            "core_uuid" => core.info.core_uuid.clone(),
            _ => String::new(),
        },
        "originate" => originate(core, arg).await,
        "uuid_exists" => match args.first() {
            Some(u) if core.channel(u).is_some() => "true".into(),
            _ => "false".into(),
        },
        "conference" => conference(core, &args).await,
        "uuid_kill" => match args.first().and_then(|u| core.channel(u)) {
            Some(ch) => {
                let cause = args.get(1).map_or("NORMAL_CLEARING".to_owned(), |c| {
                    crate::sim::snapshot::normalize_cause(c)
                });
                ch.send(ChanMsg::Hangup(cause)).await;
                "+OK\n".into()
            }
            None => no_channel(),
        },
        "uuid_getvar" => match (args.first().and_then(|u| core.channel(u)), args.get(1)) {
            (Some(ch), Some(name)) => ch.getvar(name).await.unwrap_or_else(|| "_undef_".into()),
            (Some(_), None) => "-USAGE: <uuid> <var>\n".into(),
            (None, _) => no_channel(),
        },
        "uuid_setvar" => match (args.first().and_then(|u| core.channel(u)), args.get(1)) {
            (Some(ch), Some(name)) => {
                let value = arg.splitn(3, ' ').nth(2).unwrap_or("").to_owned();
                ch.send(ChanMsg::SetVar((*name).to_owned(), value)).await;
                "+OK\n".into()
            }
            (Some(_), None) => "-USAGE: <uuid> <var> [value]\n".into(),
            (None, _) => no_channel(),
        },
        "uuid_break" => match args.first().and_then(|u| core.channel(u)) {
            Some(ch) => {
                let all = args.get(1).is_some_and(|a| *a == "all");
                ch.send(ChanMsg::Break { all }).await;
                "+OK\n".into()
            }
            None => no_channel(),
        },
        "uuid_recv_dtmf" => match (args.first(), args.get(1)) {
            (Some(u), Some(digits)) => match core.channel(u) {
                Some(ch) => {
                    ch.send(ChanMsg::RecvDtmf((*digits).to_owned())).await;
                    format!("+OK {u} received DTMF {digits}.\n")
                }
                None => "-ERR no such session\n".into(),
            },
            _ => "-USAGE: <uuid> <dtmf_data>\n".into(),
        },
        "uuid_send_dtmf" => match (args.first(), args.get(1)) {
            (Some(u), Some(digits)) => match core.channel(u) {
                Some(ch) => {
                    let digits = digits.split('@').next().unwrap_or("");
                    ch.send(ChanMsg::SendDtmf(digits.to_owned())).await;
                    "+OK Success\n".into()
                }
                None => "-ERR no such session\n".into(),
            },
            _ => "-USAGE: <uuid> <dtmf_data>\n".into(),
        },
        "uuid_bridge" => uuid_bridge(core, &args).await,
        "uuid_record" => uuid_record(core, &args).await,
        "show" => show(core, arg).await,
        _ => format!("-ERR {cmd} Command not found!\n"),
    }
}

/// `bgapi`: runs the command in its own task and fires BACKGROUND_JOB.
pub(crate) fn spawn_bgapi(core: &Arc<Core>, line: String, job: String) {
    let core2 = core.clone();
    core.tasks.spawn(async move {
        let body = execute(&core2, &line).await;
        let (cmd, arg) = match line.split_once(' ') {
            Some((c, a)) => (c.to_owned(), Some(a.to_owned())),
            None => (line.clone(), None),
        };
        let mut e = core2.info.event(
            "BACKGROUND_JOB",
            origin("mod_event_socket.c", "api_exec", "1572"),
        );
        e.push_header("Job-UUID", &job);
        e.push_header("Job-Command", &cmd);
        if let Some(a) = &arg {
            e.push_header("Job-Command-Arg", a);
        }
        e.set_body(if body.is_empty() {
            "Command returned no output!".to_owned()
        } else {
            body
        });
        core2.fire(e);
    });
}

fn status(core: &Core) -> String {
    let up = core.uptime();
    let s = up.as_secs();
    let (years, days) = (s / 31_536_000, s / 86_400 % 365);
    let (hours, mins, secs) = (s / 3600 % 24, s / 60 % 60, s % 60);
    let ms = u64::from(up.subsec_millis());
    let us = u64::from(up.subsec_micros() % 1000);
    // FreeSWITCH writes "1 year", "2 years" (mod_commands' status_function).
    let n = |v: u64, unit: &str| format!("{v} {unit}{}", if v == 1 { "" } else { "s" });
    roll_throttle(core);
    let live = core.channel_count();
    let t = lock(&core.throttle).clone();
    format!(
        "UP {}, {}, {}, {}, {}, {}, {}\n\
FreeSWITCH (Version 1.10.12-release git a88d069 2024-08-02 21:02:27Z 64bit) is ready\n\
{} session(s) since startup\n\
{live} session(s) - peak {}, last 5min {} \n\
{} session(s) per Sec out of max {}, peak {}, last 5min {} \n\
1000 session(s) max\n\
min idle cpu 0.00/100.00\n\
Current Stack Size/Max 240K/8192K\n",
        n(years, "year"),
        n(days, "day"),
        n(hours, "hour"),
        n(mins, "minute"),
        n(secs, "second"),
        n(ms, "millisecond"),
        n(us, "microsecond"),
        core.sessions_since_startup(),
        t.sessions_peak(),
        t.sessions_peak_fivemin(),
        t.last(),
        t.limit(),
        t.peak(),
        t.peak_fivemin(),
    )
}

/// mod_commands' `fsctl`: `sps [N]` reads (and with a positive N sets) the
/// sessions-per-second limit, `last_sps` the rate of the last second;
/// `hupall` ends every channel. The other subcommands act on parts of
/// FreeSWITCH the simulator does not have and answer as an unknown one.
async fn fsctl(core: &Arc<Core>, args: &[&str]) -> String {
    const SYNTAX: &str = "[recover|send_sighup|hupall|pause [inbound|outbound]|resume [inbound|outbound]|shutdown [cancel|elegant|asap|now|restart]|sps|sync_clock|sync_clock_when_idle|reclaim_mem|max_sessions|min_dtmf_duration [num]|max_dtmf_duration [num]|default_dtmf_duration [num]|min_idle_cpu|loglevel [level]|debug_level [level]]";
    let Some(sub) = args.first() else {
        return format!("-USAGE: {SYNTAX}\n");
    };
    match sub.to_ascii_lowercase().as_str() {
        "sps" => {
            // atoi: a missing or non-numeric value reads as 0 (no change).
            let n = args.get(1).map_or(0, |a| crate::sim::sched::atol(a));
            let limit = lock(&core.throttle).set_limit(n);
            format!("+OK sessions per second: {limit}\n")
        }
        "last_sps" => {
            roll_throttle(core);
            let last = lock(&core.throttle).last();
            format!("+OK last sessions per second: {last}\n")
        }
        "hupall" => {
            hangup_matching(core, "MANAGER_REQUEST", None).await;
            "+OK\n".into()
        }
        _ => format!("-ERR INVALID COMMAND\nUSAGE: fsctl {SYNTAX}"),
    }
}

/// mod_commands' `hupall [<cause> [<var> <value>]]`: ends every channel,
/// or every channel whose variable `var` is `value`, with `cause` (an
/// unknown or missing cause is MANAGER_REQUEST). A pending originate whose
/// leg is ended this way fails with that cause.
async fn hupall(core: &Core, args: &[&str]) -> String {
    let cause = match args.first() {
        Some(c) if c.eq_ignore_ascii_case("NORMAL_CLEARING") => "NORMAL_CLEARING".to_owned(),
        Some(c) => match crate::sim::snapshot::normalize_cause(c) {
            // normalize_cause maps unknown names to NORMAL_CLEARING;
            // hupall's own default is MANAGER_REQUEST.
            n if n == "NORMAL_CLEARING" => "MANAGER_REQUEST".to_owned(),
            n => n,
        },
        None => "MANAGER_REQUEST".to_owned(),
    };
    match (args.get(1), args.get(2)) {
        (Some(var), Some(value)) => {
            hangup_matching(core, &cause, Some((var, value))).await;
            format!("+OK hangup all channels matching [{var}]=[{value}] with cause: {cause}\n")
        }
        _ => {
            hangup_matching(core, &cause, None).await;
            format!("+OK hangup all channels with cause {cause}\n")
        }
    }
}

/// Sends a hangup (as `uuid_kill` does) to every channel, or to those whose
/// variable `name` equals `value`.
async fn hangup_matching(core: &Core, cause: &str, var: Option<(&str, &str)>) {
    for ch in core.channel_handles() {
        if let Some((name, value)) = var
            && ch.getvar(name).await.as_deref() != Some(value)
        {
            continue;
        }
        ch.send(ChanMsg::Hangup(cause.to_owned())).await;
    }
}

/// Whether the event-socket user may run `cmd` (mod_event_socket's
/// `auth_api_command`): a denied command is refused, and so is one hidden
/// behind a command that runs another (`bgapi`, `sched_api`, `eval`,
/// `expand`, `xml_wrap`).
pub(crate) fn permitted(core: &Core, line: &str) -> bool {
    const SNEAKY: &[&str] = &["bgapi", "sched_api", "eval", "expand", "xml_wrap"];
    let denied = |c: &str| core.cfg.denied_api.iter().any(|d| d == c);
    let mut rest = line.trim();
    loop {
        let (cmd, arg) = rest.split_once(' ').unwrap_or((rest, ""));
        if denied(cmd) {
            return false;
        }
        if !SNEAKY.iter().any(|s| s.eq_ignore_ascii_case(cmd)) || arg.trim().is_empty() {
            return true;
        }
        rest = arg.trim();
        // sched_api's first word is the time, then the command.
        if cmd.eq_ignore_ascii_case("sched_api") {
            rest = rest.split_once(' ').map_or("", |(_, r)| r.trim());
        }
    }
}

/// Runs the throttle's one-second ticks that are due and logs `Over
/// Session Rate` for each that found the budget spent.
fn roll_throttle(core: &Core) {
    let live = core.channel_count();
    let (rolled, limit) = {
        let mut t = lock(&core.throttle);
        (t.roll(std::time::Instant::now(), live), t.limit())
    };
    let lines = (0..rolled.over)
        .map(|_| {
            fslog::line(
                2,
                "switch_time.c",
                "softtimer_runtime",
                1243,
                "",
                format!("Over Session Rate of {limit}!"),
            )
        })
        .collect();
    fslog::emit(core, lines);
}

/// FreeSWITCH's timer thread for the throttle: ticks it every second, so
/// `Over Session Rate` is logged when the second ends, not at the next
/// request.
pub(crate) async fn throttle_clock(core: Arc<Core>) {
    loop {
        let next = lock(&core.throttle).next_tick();
        tokio::select! {
            () = core.shutdown.cancelled() => return,
            () = tokio::time::sleep_until(next.into()) => roll_throttle(&core),
        }
    }
}

/// Session requests (`switch_core_session_request_uuid`) for the `n`
/// channels of one originate (two for loopback: A, then B from A's
/// CS_INIT), taken from this second's budget in one go so that concurrent
/// originates cannot interleave between A and B. Stops at the first
/// refusal. Returns how many were granted (no channel may be created
/// beyond that) and, after a refusal, the `Throttle Error!` line to log,
/// with the live session count (the A leg just granted included), as
/// FreeSWITCH logs it.
pub(crate) fn admit_sessions(core: &Core, n: usize) -> (usize, Option<fslog::Raw>) {
    roll_throttle(core);
    let granted = {
        let mut t = lock(&core.throttle);
        (0..n).take_while(|_| t.take()).count()
    };
    let refusal = (granted < n).then(|| {
        let live = core.channel_count() + granted;
        fslog::line(
            2,
            "switch_core_session.c",
            "switch_core_session_request_uuid",
            2422,
            "",
            format!("Throttle Error! {live}"),
        )
    });
    (granted, refusal)
}

async fn show(core: &Core, arg: &str) -> String {
    let words: Vec<&str> = arg.split_whitespace().collect();
    let what = words.first().copied().unwrap_or("");
    if !matches!(what, "channels" | "calls") {
        return "-USAGE: show channels|calls [count|as json]\n".into();
    }
    let mut snaps: Vec<_> = core
        .channel_handles()
        .iter()
        .map(|h| h.snapshot())
        .collect();
    snaps.sort_by(|a, b| a.uuid.cmp(&b.uuid));
    if what == "calls" {
        snaps.retain(|s| s.bridged_to.is_some());
    }
    if words.get(1) == Some(&"count") {
        return format!("\n{} total.\n", snaps.len());
    }
    let json = words.get(1) == Some(&"as") && words.get(2) == Some(&"json");
    if json {
        let rows: Vec<serde_json::Value> = snaps
            .iter()
            .map(|s| {
                serde_json::json!({
                    "uuid": s.uuid,
                    "name": s.name,
                    "state": s.state,
                    "cid_num": s.caller_id_number,
                    "dest": s.destination,
                    "callstate": if s.answered { "ACTIVE" } else { "RINGING" },
                })
            })
            .collect();
        return serde_json::json!({"row_count": rows.len(), "rows": rows}).to_string();
    }
    let mut out = String::from("uuid,name,state,cid_num,dest,callstate\n");
    for s in &snaps {
        out.push_str(&format!(
            "{},{},{},{},{},{}\n",
            s.uuid,
            s.name,
            s.state,
            s.caller_id_number,
            s.destination,
            if s.answered { "ACTIVE" } else { "RINGING" }
        ));
    }
    out.push_str(&format!("\n{} total.\n", snaps.len()));
    out
}

async fn uuid_bridge(core: &Core, args: &[&str]) -> String {
    let (Some(a), Some(b)) = (args.first(), args.get(1)) else {
        return "-USAGE: <uuid> <other_uuid>\n".into();
    };
    let (Some(ha), Some(hb)) = (core.channel(a), core.channel(b)) else {
        return format!(
            "-ERR Invalid uuid {}\n",
            if core.channel(a).is_none() { a } else { b }
        );
    };
    let pa = profile(&ha).await;
    let pb = profile(&hb).await;
    ha.send(ChanMsg::Bridge {
        other: hb.clone(),
        other_profile: pb,
        originator: true,
        transfer: true,
    })
    .await;
    hb.send(ChanMsg::Bridge {
        other: ha.clone(),
        other_profile: pa,
        originator: false,
        transfer: true,
    })
    .await;
    format!("+OK {b}\n")
}

async fn profile(h: &ChannelHandle) -> Option<Box<(Profile, String)>> {
    let (tx, rx) = oneshot::channel();
    if !h.send(ChanMsg::Profile(tx)).await {
        return None;
    }
    rx.await.ok().map(Box::new)
}

async fn uuid_record(core: &Core, args: &[&str]) -> String {
    let (Some(u), Some(action), Some(path)) = (args.first(), args.get(1), args.get(2)) else {
        return "-USAGE: <uuid> [start|stop|mask|unmask] <path> [<limit>] [<recording_vars>]\n"
            .into();
    };
    let Some(ch) = core.channel(u) else {
        return "-ERR Cannot locate session!\n".into();
    };
    let start = match *action {
        "start" => true,
        "stop" => false,
        _ => {
            return "-USAGE: <uuid> [start|stop|mask|unmask] <path> [<limit>] [<recording_vars>]\n"
                .into();
        }
    };
    let limit = args
        .get(3)
        .and_then(|l| l.parse::<u64>().ok())
        .filter(|&l| l > 0)
        .map(Duration::from_secs);
    let (tx, rx) = oneshot::channel();
    ch.send(ChanMsg::Record {
        start,
        path: (*path).to_owned(),
        limit,
        reply: tx,
    })
    .await;
    match rx.await {
        Ok(Ok(())) => "+OK Success\n".into(),
        Ok(Err(e)) => e,
        Err(_) => "-ERR Cannot record session!\n".into(),
    }
}

fn log(
    core: &Core,
    level: u8,
    file: &'static str,
    func: &'static str,
    line: u32,
    uuid: &str,
    text: String,
) {
    let label = match level {
        3 => "ERR",
        4 => "WARNING",
        5 => "NOTICE",
        6 => "INFO",
        _ => "DEBUG",
    };
    let now = now_micros();
    let data = format!(
        "{}.{:06} 100.00% [{label}] {file}:{line} {text}\n",
        format_local(now),
        now % 1_000_000
    );
    core.log(LogLine {
        level,
        text_channel: 3,
        file,
        func,
        line,
        user_data: uuid.to_owned(),
        data,
    });
}

/// `originate <dial string> <&app(args)|extension> [dialplan] [context]
/// [cid_name] [cid_num] [timeout]`: blocks until the leg answers or fails.
pub(crate) async fn originate(core: &Arc<Core>, arg: &str) -> String {
    originate_inner(core, arg, false).await
}

/// Dials one leg for the `bridge` application: no application runs on it
/// once it answers (the bridge takes it over). Returns the answered leg or
/// the cause it failed with.
pub(crate) async fn originate_leg(core: &Arc<Core>, dial: &str) -> Result<ChannelHandle, String> {
    let reply = originate_inner(core, &format!("{dial} &park()"), true).await;
    match reply.trim_end().strip_prefix("+OK ") {
        Some(uuid) => core
            .channel(uuid)
            .ok_or_else(|| "NORMAL_CLEARING".to_owned()),
        None => Err(reply
            .trim_end()
            .strip_prefix("-ERR ")
            .unwrap_or("DESTINATION_OUT_OF_ORDER")
            .split_whitespace()
            .next()
            .unwrap_or("DESTINATION_OUT_OF_ORDER")
            .to_owned()),
    }
}

async fn originate_inner(core: &Arc<Core>, arg: &str, no_app: bool) -> String {
    let Ok(o) = parse_originate(arg) else {
        return ORIGINATE_USAGE.into();
    };
    log(
        core,
        7,
        "switch_ivr_originate.c",
        "switch_ivr_originate",
        2301,
        "",
        "Parsing global variables".into(),
    );
    let Some(leg) = o.dial.first() else {
        return ORIGINATE_USAGE.into();
    };
    let var = |n: &str| o.dial.var(leg, n).map(str::to_owned);
    match &leg.endpoint {
        Endpoint::Error { cause } => {
            return format!("-ERR {}\n", crate::sim::snapshot::normalize_cause(cause));
        }
        Endpoint::Unsupported(_) => return "-ERR CHAN_NOT_IMPLEMENTED\n".into(),
        Endpoint::Gateway { gateway, .. } => {
            let known = match &core.cfg.gateways {
                Some(list) => list.iter().any(|g| g == gateway),
                None => gateway != "nonexistent",
            };
            if !known {
                // mod_sofia: "Invalid Gateway" before any channel exists.
                log(
                    core,
                    3,
                    "mod_sofia.c",
                    "sofia_outgoing_channel",
                    5008,
                    "",
                    format!("Invalid Gateway '{gateway}'"),
                );
                return "-ERR INVALID_GATEWAY\n".into();
            }
        }
        _ => {}
    }
    let uuid = var("origination_uuid").unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    if core.channel(&uuid).is_some() {
        return "-ERR DESTINATION_OUT_OF_ORDER\n".into();
    }
    let timeout = var("originate_timeout")
        .and_then(|t| t.parse::<u64>().ok())
        .or(o.timeout)
        .filter(|&t| t > 0)
        .unwrap_or(60);
    let cid_num = var("origination_caller_id_number")
        .or_else(|| o.cid_num.clone())
        .unwrap_or_else(|| "0000000000".into());
    let cid_name = var("origination_caller_id_name").or_else(|| o.cid_name.clone());
    let cid_name_log = cid_name.clone();
    let number = leg.endpoint.number().to_owned();
    let callee_num = leg.target.rsplit('/').next().unwrap_or(&number).to_owned();
    let now = now_micros();
    let session_id = core.next_session_id();

    let mut user_vars: Vec<(String, String)> = o.dial.global.clone();
    for (k, v) in &leg.vars {
        user_vars.retain(|(n, _)| n != k);
        user_vars.push((k.clone(), v.clone()));
    }
    let has_uuid = var("origination_uuid").is_some();

    let (source, context, name, dialplan, codec) = match &leg.endpoint {
        Endpoint::Loopback { number, context } => (
            "mod_loopback",
            context.clone(),
            format!("loopback/{number}-a"),
            Some("xml".to_owned()),
            Some("L16"),
        ),
        Endpoint::Gateway { .. } | Endpoint::Sofia { .. } => (
            "src/switch_ivr_originate.c",
            "default".to_owned(),
            format!("sofia/{}/{number}", core.cfg.sofia_profile),
            None,
            None,
        ),
        _ => (
            "src/switch_ivr_originate.c",
            "default".to_owned(),
            format!("user/{number}"),
            None,
            None,
        ),
    };
    let profile = Profile {
        direction: "outbound",
        logical_direction: "outbound",
        dialplan,
        caller_id_name: cid_name,
        caller_id_number: cid_num.clone(),
        orig_caller_id_number: Some(cid_num.clone()),
        callee_id_name: Some("Outbound Call".into()),
        callee_id_number: Some(callee_num.clone()),
        network_addr: None,
        ani: cid_num.clone(),
        destination_number: number.clone(),
        source: source.into(),
        transfer_source: None,
        context: context.clone(),
        channel_name: name.clone(),
        profile_index: 1,
        profile_created: now,
        channel_created: now,
        ..Profile::default()
    };
    let loopback = matches!(leg.endpoint, Endpoint::Loopback { .. });
    let b_uuid = uuid::Uuid::new_v4().to_string();

    let mut vars = Vars::default();
    vars.set("direction", "outbound");
    vars.set("is_outbound", "true");
    let sid = session_id.to_string();
    if has_uuid {
        vars.set("session_id", &sid);
    } else {
        vars.set("uuid", &uuid);
        vars.set("call_uuid", &uuid);
        vars.set("session_id", &sid);
    }
    if let Endpoint::Gateway { gateway, number } = &leg.endpoint {
        vars.set("sip_gateway_name", gateway);
        vars.set("sip_profile_name", "gateway");
        vars.set("channel_name", &name);
        vars.set("sip_destination_url", &format!("sip:{number}@{gateway}"));
    } else if codec.is_some() {
        for (n, v) in [
            ("read_codec", "L16"),
            ("read_rate", "8000"),
            ("write_codec", "L16"),
            ("write_rate", "8000"),
        ] {
            vars.set(n, v);
        }
        vars.set("channel_name", &name);
    } else {
        vars.set("channel_name", &name);
    }
    if has_uuid {
        vars.set("uuid", &uuid);
        vars.set("call_uuid", &uuid);
    }
    for (k, v) in &user_vars {
        vars.set(k, v);
    }
    vars.set("originate_early_media", "true");
    vars.set(
        "originate_endpoint",
        match leg.endpoint {
            Endpoint::Loopback { .. } => "loopback",
            Endpoint::User { .. } => "user",
            _ => "sofia",
        },
    );
    if loopback {
        vars.set("other_loopback_leg_uuid", &b_uuid);
        vars.set("loopback_leg", "A");
    }

    let a_state = ChanState {
        uuid: uuid.clone(),
        name: name.clone(),
        direction: "outbound",
        state: CState::Init,
        call_state: "DOWN",
        answer_state: "ringing",
        hit_dialplan: false,
        hangup_cause: None,
        codec,
        profile: profile.clone(),
        other: None,
        vars,
        requested_state: None,
    };
    let a_extra = SnapExtra {
        caller_id_number: cid_num.clone(),
        destination: number.clone(),
        ..SnapExtra::default()
    };
    let (granted, refusal) = admit_sessions(core, if loopback { 2 } else { 1 });
    if granted == 0 {
        fslog::emit(core, refusal.into_iter().collect());
        return throttled(core, &leg.endpoint);
    }
    let Some((a_handle, a_rx)) = channel::handle_for(core, &a_state, &a_extra) else {
        return "-ERR DESTINATION_OUT_OF_ORDER\n".into();
    };
    if !loopback {
        log(
            core,
            5,
            "switch_channel.c",
            "switch_channel_set_name",
            1142,
            &uuid,
            format!("New Channel {name} [{uuid}]"),
        );
    }
    let (app_name, app_arg) = match &o.app {
        OriginateApp::App { name, args } => (name.as_str(), args.as_str()),
        OriginateApp::Extension(_) => ("park", ""),
    };
    let app = (!no_app).then(|| ExecReq::new(app_name, app_arg));
    // A loopback originate logs FreeSWITCH's full debug trace (trace 08);
    // the lines are written once the outcome is known.
    let loopback_log = match &leg.endpoint {
        Endpoint::Loopback { number, context } => {
            let steps =
                channel::extension_steps(&numberplan::extension(number, context), &core.cfg);
            let target = leg.target.strip_prefix("loopback/").unwrap_or(&leg.target);
            let o = fslog::LoopbackOriginate {
                target,
                number,
                context,
                a: &name,
                a_uuid: &uuid,
                b: &format!("loopback/{number}-b"),
                b_uuid: &b_uuid,
                chosen_uuid: has_uuid,
                cid_name: cid_name_log.as_deref().unwrap_or(""),
                cid_num: &cid_num,
                callee: &callee_num,
                steps: &steps,
                app: app_name,
                app_arg,
                cur: core.channel_count() + 1,
                total: core.sessions_since_startup() + 1,
            };
            Some(if granted == 2 {
                fslog::loopback_originate(&o)
            } else {
                fslog::loopback_a_without_b(&o)
            })
        }
        _ => None,
    };
    let (tx, rx) = oneshot::channel();
    let originate_timeout = Duration::from_secs(timeout);

    let loopback_b = match &leg.endpoint {
        Endpoint::Loopback { number, context } => Some((number, context, granted == 2)),
        _ => None,
    };
    if let Some((_, _, false)) = loopback_b {
        // mod_loopback could not create the B leg: the A leg stays in
        // CS_INIT, and the originate waits for it until it times out or is
        // killed (trace 13: `hupall` ends it, `-ERR NORMAL_CLEARING`).
        let (created, after) = loopback_log.clone().unwrap_or_default();
        fslog::emit(
            core,
            created.into_iter().chain(refusal).chain(after).collect(),
        );
        channel::spawn(
            core.clone(),
            a_handle,
            a_rx,
            Spawn {
                state: a_state,
                extra: a_extra,
                role: Role::LoopbackWithoutB,
                originate: Some(tx),
                originate_timeout,
                app,
            },
        );
    } else if let Some((number, context, true)) = loopback_b {
        let b_name = format!("loopback/{number}-b");
        let mut b_vars = Vars::default();
        b_vars.set("direction", "inbound");
        b_vars.set("uuid", &b_uuid);
        b_vars.set("call_uuid", &b_uuid);
        b_vars.set("session_id", &(session_id + 1).to_string());
        b_vars.set("channel_name", &b_name);
        for (n, v) in [
            ("read_codec", "L16"),
            ("read_rate", "8000"),
            ("write_codec", "L16"),
            ("write_rate", "8000"),
        ] {
            b_vars.set(n, v);
        }
        if has_uuid {
            b_vars.set("origination_uuid", &uuid);
        }
        for (k, v) in &user_vars {
            if k != "origination_uuid" {
                b_vars.set(k, v);
            }
        }
        b_vars.set("other_loopback_leg_uuid", &uuid);
        b_vars.set("loopback_leg", "B");
        let b_profile = Profile {
            direction: "inbound",
            logical_direction: "inbound",
            channel_name: b_name.clone(),
            ..profile.clone()
        };
        let b_state = ChanState {
            uuid: b_uuid.clone(),
            name: b_name,
            direction: "inbound",
            state: CState::Init,
            call_state: "DOWN",
            answer_state: "ringing",
            hit_dialplan: true,
            hangup_cause: None,
            codec: Some("L16"),
            profile: b_profile,
            other: None,
            vars: b_vars,
            requested_state: None,
        };
        let b_extra = SnapExtra {
            caller_id_number: cid_num.clone(),
            destination: number.clone(),
            ..SnapExtra::default()
        };
        let Some((b_handle, b_rx)) = channel::handle_for(core, &b_state, &b_extra) else {
            core.remove_channel(&uuid);
            return "-ERR DESTINATION_OUT_OF_ORDER\n".into();
        };
        let a_for_b = a_handle.clone();
        channel::spawn(
            core.clone(),
            a_handle,
            a_rx,
            Spawn {
                state: a_state,
                extra: a_extra,
                role: Role::LoopbackA {
                    partner: b_handle.clone(),
                },
                originate: Some(tx),
                originate_timeout,
                app,
            },
        );
        let ext = numberplan::extension(number, context);
        channel::spawn(
            core.clone(),
            b_handle,
            b_rx,
            Spawn {
                state: b_state,
                extra: b_extra,
                role: Role::LoopbackB {
                    partner: a_for_b,
                    ext,
                },
                originate: None,
                originate_timeout,
                app: None,
            },
        );
    } else {
        let down = matches!(&leg.endpoint, Endpoint::Gateway { gateway, .. } if core.cfg.down_gateways.contains(gateway));
        let outcome = if down {
            numberplan::Outcome::Reject("NORMAL_TEMPORARY_FAILURE")
        } else {
            numberplan::outcome(&number)
        };
        channel::spawn(
            core.clone(),
            a_handle,
            a_rx,
            Spawn {
                state: a_state,
                extra: a_extra,
                role: Role::Remote(outcome),
                originate: Some(tx),
                originate_timeout,
                app,
            },
        );
    }
    // The channel answers the originate on the originate loop's next pass
    // after the answer (20 ms), as FreeSWITCH's loop polls its legs.
    let result = rx.await;
    match result {
        Ok(Ok(())) => {
            let (before, after) = loopback_log.unzip();
            fslog::emit(core, before.unwrap_or_default());
            log(
                core,
                7,
                "switch_ivr_originate.c",
                "switch_ivr_originate",
                3913,
                "",
                format!("Originate Resulted in Success: [{name}] Peer UUID: {uuid}"),
            );
            fslog::emit(core, after.unwrap_or_default());
            format!("+OK {uuid}\n")
        }
        Ok(Err(cause)) => {
            log(
                core,
                7,
                "switch_ivr_originate.c",
                "switch_ivr_originate",
                4056,
                "",
                format!(
                    "Originate Resulted in Error Cause: {} [{cause}]",
                    crate::sim::snapshot::q850(&cause)
                ),
            );
            format!("-ERR {cause}\n")
        }
        Err(_) => "-ERR SYSTEM_SHUTDOWN\n".into(),
    }
}

/// An originate whose first leg the throttle refused: no channel exists,
/// the job answers `-ERR DESTINATION_OUT_OF_ORDER` (trace 13).
fn throttled(core: &Core, endpoint: &Endpoint) -> String {
    let kind = match endpoint {
        Endpoint::Loopback { .. } => "loopback",
        Endpoint::User { .. } => "user",
        _ => "sofia",
    };
    let cause = "DESTINATION_OUT_OF_ORDER";
    fslog::emit(
        core,
        vec![
            fslog::line(
                5,
                "switch_ivr_originate.c",
                "switch_ivr_originate",
                3059,
                "",
                format!("Cannot create outgoing channel of type [{kind}] cause: [{cause}]"),
            ),
            fslog::line(
                7,
                "switch_ivr_originate.c",
                "switch_ivr_originate",
                4056,
                "",
                format!(
                    "Originate Resulted in Error Cause: {} [{cause}]",
                    crate::sim::snapshot::q850(cause)
                ),
            ),
        ],
    );
    format!("-ERR {cause}\n")
}

/// mod_conference's API, the member commands: `conference <name>
/// mute|unmute|kick <member-id|all|last>`, and `conference <name> list`
/// (one line per member: id;channel name;uuid;caller id;…;flags).
async fn conference(core: &Arc<Core>, args: &[&str]) -> String {
    use crate::sim::mailbox::ConferenceOp;
    let (Some(name), Some(cmd)) = (args.first(), args.get(1)) else {
        return "-USAGE: conference <name> <command> [args]\n".into();
    };
    let members: Vec<(u32, ChannelHandle)> = {
        let confs = crate::sim::lock(&core.conferences);
        match confs.get(*name) {
            Some(c) => c
                .members
                .iter()
                .map(|m| (m.id, m.channel.clone()))
                .collect(),
            None => return format!("Conference {name} not found\n"),
        }
    };
    let op = match *cmd {
        "mute" => ConferenceOp::Mute,
        "unmute" => ConferenceOp::Unmute,
        "kick" => ConferenceOp::Kick,
        "list" => {
            let mut out = String::new();
            for (id, ch) in &members {
                let snap = ch.snapshot();
                out.push_str(&format!(
                    "{id};{};{};{};{};{}\n",
                    snap.name, snap.uuid, snap.caller_id_number, snap.destination, "hear|speak"
                ));
            }
            return out;
        }
        _ => return format!("-ERR Unknown command {cmd}\n"),
    };
    let Some(target) = args.get(2) else {
        return format!("-USAGE: conference <name> {cmd} <[member_id|all|last]>\n");
    };
    let chosen: Vec<&(u32, ChannelHandle)> = match *target {
        "all" => members.iter().collect(),
        "last" => members.last().into_iter().collect(),
        id => match id.parse::<u32>() {
            Ok(id) => members.iter().filter(|(m, _)| *m == id).collect(),
            Err(_) => Vec::new(),
        },
    };
    if chosen.is_empty() {
        return format!("Non-Existant ID {target}\n");
    }
    let verb = match op {
        ConferenceOp::Mute => "mute",
        ConferenceOp::Unmute => "unmute",
        ConferenceOp::Kick => "kicked",
    };
    let mut out = String::new();
    for (id, ch) in chosen {
        ch.send(ChanMsg::ConferenceOp(op)).await;
        out.push_str(&format!("OK {verb} {id}\n"));
    }
    out
}
