//! The simulator's sessions-per-second throttle and the APIs that bound and
//! find legs, over real sockets: `fsctl sps`, `status`, originates refused
//! over the limit (trace 13), an ESL user without the right to run `fsctl`,
//! `redswitch sim --sessions-per-second`, `sched_hangup` (API and
//! application), `hupall` (all, and by variable), and the variables of an
//! originate's `{…}` block seen through `uuid_getvar` and in events.

use redswitch::sim::{SimConfig, SimHandle};
use redswitch_test_support as support;
use std::time::Duration;
use support::sim_client::{Client, WAIT, sim, sim_with};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, timeout};

fn originate_ok(body: &str) -> String {
    body.strip_prefix("+OK ")
        .unwrap_or_else(|| panic!("originate failed: {body:?}"))
        .trim_end()
        .to_owned()
}

/// The line of `status` that starts with `prefix`-like content.
fn status_line<'a>(status: &'a str, contains: &str) -> &'a str {
    status
        .lines()
        .find(|l| l.contains(contains))
        .unwrap_or_else(|| panic!("no {contains:?} line in {status:?}"))
}

async fn channel_count(c: &mut Client) -> String {
    c.api("show channels count").await.trim().to_owned()
}

/// Waits until the simulator holds no channel, and checks `show channels
/// count` agrees.
async fn all_gone(sim: &SimHandle, c: &mut Client) {
    support::eventually("every channel gone", WAIT, || {
        let sim = sim.clone();
        async move { sim.channels().is_empty() }
    })
    .await;
    assert_eq!(channel_count(c).await, "0 total.");
}

#[tokio::test]
async fn fsctl_sps_reads_and_sets_the_limit_as_freeswitch_answers() {
    let sim = sim().await;
    let mut c = Client::login(&sim).await;
    assert_eq!(c.api("fsctl sps").await, "+OK sessions per second: 30\n");
    assert_eq!(
        c.api("fsctl sps 100").await,
        "+OK sessions per second: 100\n"
    );
    assert_eq!(c.api("fsctl sps").await, "+OK sessions per second: 100\n");
    // atoi: 0, negative or garbage leave the limit as it is.
    for keep in ["fsctl sps 0", "fsctl sps -4", "fsctl sps many"] {
        assert_eq!(
            c.api(keep).await,
            "+OK sessions per second: 100\n",
            "{keep}"
        );
    }
    assert_eq!(
        c.api("fsctl last_sps").await,
        "+OK last sessions per second: 0\n"
    );
    assert!(c.api("fsctl").await.starts_with("-USAGE: [recover|"));
    assert!(
        c.api("fsctl frobnicate")
            .await
            .starts_with("-ERR INVALID COMMAND\nUSAGE: fsctl [recover|")
    );
    let status = c.api("status").await;
    assert_eq!(
        status_line(&status, "per Sec"),
        "0 session(s) per Sec out of max 100, peak 0, last 5min 0 "
    );
    sim.shutdown().await;
}

/// Trace 13 against the simulator: 25 loopback originates in one second
/// at the default limit. Returns `None` when the burst straddled one of
/// the simulator's one-second windows (then the counts differ, as they
/// would on FreeSWITCH), so the caller can run it again.
async fn trace_13_burst() -> Option<()> {
    let sim = sim().await;
    let mut c = Client::login(&sim).await;
    assert_eq!(c.api("fsctl sps").await, "+OK sessions per second: 30\n");
    c.cmd("event plain BACKGROUND_JOB CHANNEL_CREATE").await;
    c.cmd("log 7").await;
    let mut jobs = Vec::new();
    for _ in 0..25 {
        jobs.push(
            c.bgapi("originate loopback/answer-park/redswitch-test &park()")
                .await,
        );
    }
    // Past the next tick and one more: the rate of the burst's second has
    // been counted and the current second is quiet.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let status = c.api("status").await;
    if status_line(&status, "per Sec")
        != "0 session(s) per Sec out of max 30, peak 40, last 5min 40 "
    {
        eprintln!("the burst straddled a one-second window: {status}");
        sim.shutdown().await;
        return None;
    }
    // 14 calls (28 sessions), one A leg whose B leg was refused, and ten
    // originates refused before any channel existed.
    assert_eq!(
        status_line(&status, "session(s) - peak"),
        "29 session(s) - peak 29, last 5min 29 "
    );
    let mut ok = 0;
    let mut refused = 0;
    let mut waiting = Vec::new();
    for job in &jobs {
        let pending = !c
            .pending
            .iter()
            .any(|m| m.ev("Job-UUID").as_deref() == Some(job));
        if pending {
            waiting.push(job.clone());
            continue;
        }
        match c.job(job).await.as_str() {
            b if b.starts_with("+OK ") => ok += 1,
            "-ERR DESTINATION_OUT_OF_ORDER\n" => refused += 1,
            other => panic!("unexpected job result {other:?}"),
        }
    }
    assert_eq!((ok, refused, waiting.len()), (14, 10, 1), "{status}");
    assert_eq!(channel_count(&mut c).await, "29 total.");
    let creates = c
        .pending
        .iter()
        .filter(|m| m.ev("Event-Name").as_deref() == Some("CHANNEL_CREATE"))
        .count();
    assert_eq!(creates, 29, "refused sessions create no channel");
    // The log as FreeSWITCH's (trace 13's fslog).
    let throttle = c.logged("[CRIT] switch_core_session.c:2422 Throttle Error! ");
    assert_eq!(throttle.len(), 11, "ten A legs and one B leg refused");
    // The count is the live sessions; a refusal racing a concurrent
    // originate's channel creation may see one fewer.
    assert!(
        throttle
            .iter()
            .all(|l| l.ends_with("Throttle Error! 29\n") || l.ends_with("Throttle Error! 28\n")),
        "{throttle:?}"
    );
    assert_eq!(c.logged("[CRIT] mod_loopback.c:258 Failure.").len(), 1);
    // In FreeSWITCH's order: the A leg enters CS_INIT, its B leg is
    // refused, mod_loopback gives up, the A leg sleeps in CS_INIT.
    let logs: Vec<&str> = c
        .pending
        .iter()
        .filter(|m| m.get("Content-Type") == Some("log/data"))
        .map(|m| m.body.as_str())
        .collect();
    let failure = logs
        .iter()
        .position(|l| l.contains("mod_loopback.c:258 Failure."))
        .expect("Failure. logged");
    assert!(
        logs[failure - 2].contains("(loopback/answer-park-a) State INIT\n"),
        "{:?}",
        &logs[failure - 2..]
    );
    assert!(
        logs[failure - 1].contains("Throttle Error! "),
        "{:?}",
        &logs[failure - 2..]
    );
    assert!(logs[failure + 1].contains("(loopback/answer-park-a) State INIT going to sleep"));
    assert_eq!(
        c.logged(
            "Cannot create outgoing channel of type [loopback] cause: [DESTINATION_OUT_OF_ORDER]"
        )
        .len(),
        10
    );
    assert_eq!(
        c.logged("Originate Resulted in Error Cause: 27 [DESTINATION_OUT_OF_ORDER]")
            .len(),
        10
    );
    assert_eq!(
        c.logged("[CRIT] switch_time.c:1243 Over Session Rate of 30!")
            .len(),
        1
    );
    // The stranded A leg holds its originate until it is ended.
    assert_eq!(
        c.api("hupall NORMAL_CLEARING").await,
        "+OK hangup all channels with cause NORMAL_CLEARING\n"
    );
    assert_eq!(c.job(&waiting[0]).await, "-ERR NORMAL_CLEARING\n");
    all_gone(&sim, &mut c).await;
    sim.shutdown().await;
    Some(())
}

#[tokio::test]
async fn a_burst_over_the_limit_is_refused_as_in_trace_13() {
    for _ in 0..4 {
        if trace_13_burst().await.is_some() {
            return;
        }
    }
    panic!("every burst straddled a one-second window");
}

#[tokio::test]
async fn the_configured_limit_applies_and_fsctl_sps_changes_it_at_run_time() {
    let sim = sim_with(SimConfig {
        sessions_per_second: 3,
        ..SimConfig::default()
    })
    .await;
    let mut c = Client::login(&sim).await;
    assert_eq!(c.api("fsctl sps").await, "+OK sessions per second: 3\n");
    // A budget of 3 grants 2 sessions a second: one loopback call, and the
    // A leg of the next one is refused.
    let mut seen = false;
    for _ in 0..5 {
        let first = c
            .api("originate loopback/answer-park/redswitch-test &park()")
            .await;
        let second = c
            .api("originate loopback/answer-park/redswitch-test &park()")
            .await;
        originate_ok(&first);
        c.api("hupall").await;
        if second == "-ERR DESTINATION_OUT_OF_ORDER\n" {
            seen = true;
            break;
        }
        // Both fell in different one-second windows: try again.
        originate_ok(&second);
    }
    assert!(seen, "the second call of a second is never refused");
    assert_eq!(
        c.api("fsctl sps 100").await,
        "+OK sessions per second: 100\n"
    );
    // From the next tick on, ten calls in a row go through.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..10 {
        originate_ok(
            &c.api("originate loopback/answer-park/redswitch-test &park()")
                .await,
        );
    }
    assert_eq!(
        c.api("hupall").await,
        "+OK hangup all channels with cause MANAGER_REQUEST\n"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn an_esl_user_without_fsctl_rights_is_refused_as_mod_event_socket_does() {
    let sim = sim_with(SimConfig {
        denied_api: vec!["fsctl".into()],
        ..SimConfig::default()
    })
    .await;
    let mut c = Client::login(&sim).await;
    for cmd in ["api fsctl sps", "bgapi fsctl sps", "api expand fsctl sps"] {
        let r = c.cmd(cmd).await;
        assert_eq!(r.get("Content-Type"), Some("command/reply"), "{cmd}");
        assert_eq!(r.get("Reply-Text"), Some("-ERR permission denied"), "{cmd}");
    }
    // Everything else still runs.
    assert!(c.api("status").await.starts_with("UP "));
    assert!(c.api("show channels count").await.contains("0 total."));
    sim.shutdown().await;
}

#[tokio::test]
async fn redswitch_sim_takes_sessions_per_second() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_redswitch"))
        .args([
            "sim",
            "--sessions-per-second",
            "7",
            "--esl-listen",
            &addr.to_string(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run redswitch sim");
    support::eventually("the simulator listens", WAIT, || async move {
        TcpStream::connect(addr).await.is_ok()
    })
    .await;
    let mut c = Client::connect(addr).await;
    assert_eq!(c.api("fsctl sps").await, "+OK sessions per second: 7\n");
    let status = c.api("status").await;
    assert!(
        status_line(&status, "per Sec").contains("out of max 7,"),
        "{status}"
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn sched_hangup_api_ends_the_channel_with_its_cause() {
    let sim = sim().await;
    let mut c = Client::login(&sim).await;
    c.cmd("event plain CHANNEL_HANGUP_COMPLETE").await;
    assert_eq!(
        c.api("sched_hangup").await,
        "-USAGE: [+]<time> <uuid> [<cause>]\n"
    );
    assert_eq!(
        c.api("sched_hangup +1 4f1c8c8e-0000-4000-8000-000000000000")
            .await,
        "-ERR No Such Channel!\n"
    );
    // Busy in a long application: the scheduled hangup does not wait for it.
    let uuid = originate_ok(
        &c.api("originate loopback/answer-park/redswitch-test &sleep(600000)")
            .await,
    );
    let started = Instant::now();
    assert_eq!(c.api(&format!("sched_hangup +1 {uuid}")).await, "+OK\n");
    assert_eq!(c.hangup_cause(&uuid).await, "ALLOTTED_TIMEOUT");
    assert!(started.elapsed() < Duration::from_secs(5));
    // A given cause; `+0` is at once.
    let uuid = originate_ok(
        &c.api("originate loopback/answer-park/redswitch-test &park()")
            .await,
    );
    assert_eq!(
        c.api(&format!("sched_hangup +0 {uuid} USER_BUSY")).await,
        "+OK\n"
    );
    assert_eq!(c.hangup_cause(&uuid).await, "USER_BUSY");
    // Scheduled far ahead: the channel stays up until then.
    let uuid = originate_ok(
        &c.api("originate loopback/answer-park/redswitch-test &park()")
            .await,
    );
    assert_eq!(c.api(&format!("sched_hangup +14400 {uuid}")).await, "+OK\n");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(sim.channel(&uuid).is_some());
    assert_eq!(c.api(&format!("uuid_kill {uuid}")).await, "+OK\n");
    assert_eq!(c.hangup_cause(&uuid).await, "NORMAL_CLEARING");
    sim.shutdown().await;
}

#[tokio::test]
async fn sched_hangup_application_ends_the_channel_later() {
    let sim = sim().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut c = Client::login(&sim).await;
    c.cmd("event plain CHANNEL_HANGUP_COMPLETE BACKGROUND_JOB")
        .await;
    let job = c
        .bgapi(&format!(
            "originate loopback/answer-park/redswitch-test '&socket({addr} async full)'"
        ))
        .await;
    let (s, _) = timeout(WAIT, listener.accept())
        .await
        .expect("the leg connects")
        .expect("accept");
    let mut leg = Client::new(s);
    let connect = leg.cmd("connect").await;
    let uuid = connect.get("Unique-ID").expect("Unique-ID").to_owned();
    leg.cmd("myevents").await;
    let started = Instant::now();
    for (app, arg) in [("sched_hangup", "+1 USER_BUSY"), ("park", "")] {
        let r = leg
            .cmd(&format!(
                "sendmsg\ncall-command: execute\nexecute-app-name: {app}\nexecute-app-arg: {arg}\nevent-lock: true"
            ))
            .await;
        assert_eq!(r.get("Reply-Text"), Some("+OK"), "{app}");
    }
    assert_eq!(c.job(&job).await, format!("+OK {uuid}\n"));
    assert_eq!(c.hangup_cause(&uuid).await, "USER_BUSY");
    assert!(started.elapsed() < Duration::from_secs(5));
    sim.shutdown().await;
}

#[tokio::test]
async fn originate_variables_find_and_end_the_legs_of_one_instance() {
    let sim = sim().await;
    let mut c = Client::login(&sim).await;
    c.cmd("event plain CHANNEL_CREATE CHANNEL_HANGUP_COMPLETE")
        .await;
    let mine = originate_ok(
        &c.api("originate {redswitch_instance=agent-1,dial_id=d-1}loopback/answer-park/redswitch-test &park()")
            .await,
    );
    let other = originate_ok(
        &c.api("originate {redswitch_instance=agent-2,dial_id=d-2}loopback/answer-park/redswitch-test &park()")
            .await,
    );
    assert_eq!(c.api(&format!("uuid_getvar {mine} dial_id")).await, "d-1");
    assert_eq!(
        c.api(&format!("uuid_getvar {other} redswitch_instance"))
            .await,
        "agent-2"
    );
    let create = c
        .next_where("CHANNEL_CREATE of the first call", |m| {
            m.ev("Event-Name").as_deref() == Some("CHANNEL_CREATE")
                && m.ev("Unique-ID").as_deref() == Some(mine.as_str())
        })
        .await;
    assert_eq!(create.ev("variable_dial_id").as_deref(), Some("d-1"));
    assert_eq!(
        create.ev("variable_redswitch_instance").as_deref(),
        Some("agent-1")
    );
    assert_eq!(channel_count(&mut c).await, "4 total.");
    assert_eq!(
        c.api("hupall MANAGER_REQUEST redswitch_instance agent-1")
            .await,
        "+OK hangup all channels matching [redswitch_instance]=[agent-1] with cause: MANAGER_REQUEST\n"
    );
    assert_eq!(c.hangup_cause(&mine).await, "MANAGER_REQUEST");
    support::eventually("both legs of the first call gone", WAIT, || {
        let sim = sim.clone();
        async move { sim.channels().len() == 2 }
    })
    .await;
    assert!(sim.channel(&other).is_some());
    // An unknown cause is MANAGER_REQUEST, as FreeSWITCH reads it.
    assert_eq!(
        c.api("hupall NO_SUCH_CAUSE dial_id d-2").await,
        "+OK hangup all channels matching [dial_id]=[d-2] with cause: MANAGER_REQUEST\n"
    );
    assert_eq!(c.hangup_cause(&other).await, "MANAGER_REQUEST");
    all_gone(&sim, &mut c).await;
    sim.shutdown().await;
}

/// A hangup from outside finishes a frame later; a shutdown in that frame
/// must still end the channel (it once spun forever instead).
#[tokio::test]
async fn shutdown_right_after_hupall_ends() {
    let sim = sim().await;
    let mut c = Client::login(&sim).await;
    for _ in 0..5 {
        originate_ok(
            &c.api("originate loopback/answer-park/redswitch-test &park()")
                .await,
        );
    }
    c.api("hupall").await;
    timeout(WAIT, sim.shutdown())
        .await
        .expect("the simulator shuts down");
}
