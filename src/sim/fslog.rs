//! FreeSWITCH's own log lines (what a `log 7` connection receives as
//! `log/data`) for the scenarios the traces recorded.
//!
//! Only a loopback `originate` is covered line for line: trace 08 records
//! the 57 lines of `api originate … loopback/answer-echo/redswitch-test
//! &park()`, and [`loopback_originate`] reproduces them in order, with the
//! same levels, text channels, files, functions, line numbers and user data,
//! for any loopback destination (the dialplan lines follow the extension's
//! steps). Other scenarios log a few representative lines (see
//! [`crate::sim::api`]). Timestamps and the idle-CPU figure are the
//! simulator's own.

use crate::sim::Core;
use crate::sim::event::{format_local, now_micros};
use crate::sim::session::LogLine;

/// One log line before it is stamped: level, text channel (0 and 3 get the
/// date/level/file prefix, 1 is raw), file, function, line, user data
/// (the channel uuid, or empty), text.
type Raw = (u8, u8, &'static str, &'static str, u32, String, String);

/// Stamps and sends lines to every connection that asked for logs.
pub(crate) fn emit(core: &Core, lines: Vec<Raw>) {
    for (level, text_channel, file, func, line, user_data, text) in lines {
        let data = if text_channel == 1 {
            format!("{text}\n")
        } else {
            let now = now_micros();
            let label = match level {
                0 => "CONSOLE",
                1 => "ALERT",
                2 => "CRIT",
                3 => "ERR",
                4 => "WARNING",
                5 => "NOTICE",
                6 => "INFO",
                _ => "DEBUG",
            };
            format!(
                "{}.{:06} 97.83% [{label}] {file}:{line} {text}\n",
                format_local(now),
                now % 1_000_000
            )
        };
        core.log(LogLine {
            level,
            text_channel,
            file,
            func,
            line,
            user_data,
            data,
        });
    }
}

/// One line on the default text channel (date, level and file prefix).
pub(crate) fn line(
    level: u8,
    file: &'static str,
    func: &'static str,
    line: u32,
    uuid: &str,
    text: String,
) -> Raw {
    (level, 3, file, func, line, uuid.to_owned(), text)
}

/// What the log lines of a loopback originate mention.
pub(crate) struct LoopbackOriginate<'a> {
    /// The dial target without the endpoint prefix (`answer-echo/redswitch-test`).
    pub target: &'a str,
    /// The destination (`answer-echo`) and context (`redswitch-test`).
    pub number: &'a str,
    pub context: &'a str,
    /// A and B leg names and uuids.
    pub a: &'a str,
    pub a_uuid: &'a str,
    pub b: &'a str,
    pub b_uuid: &'a str,
    /// Whether the client chose the uuid (`origination_uuid`): the A leg
    /// is created with another one and renamed (`set UUID=`).
    pub chosen_uuid: bool,
    /// Caller id name and number of the A leg.
    pub cid_name: &'a str,
    pub cid_num: &'a str,
    /// The callee number the A leg's caller id is flipped to.
    pub callee: &'a str,
    /// The B leg's dialplan steps.
    pub steps: &'a [(&'static str, String)],
    /// The application the A leg runs once answered.
    pub app: &'a str,
    pub app_arg: &'a str,
    /// Live sessions and sessions since start-up, A leg included.
    pub cur: usize,
    pub total: u64,
}

const SM: &str = "switch_core_state_machine.c";
const RUN: &str = "switch_core_session_run";
const LB: &str = "mod_loopback.c";

/// The lines from the A leg's creation to the B leg answering (logged
/// before `Originate Resulted in Success`), and the A leg's lines after it.
pub(crate) fn loopback_originate(o: &LoopbackOriginate<'_>) -> (Vec<Raw>, Vec<Raw>) {
    let (a, b, au, bu) = (o.a, o.b, o.a_uuid.to_owned(), o.b_uuid.to_owned());
    let tmp = if o.chosen_uuid {
        uuid::Uuid::new_v4().to_string()
    } else {
        au.clone()
    };
    let first = format!("loopback/{}-a", o.target);
    let (c1, t1) = (
        o.cur.saturating_sub(1).max(1),
        o.total.saturating_sub(1).max(1),
    );
    let (c2, t2) = (c1 + 1, t1 + 1);
    let mut v: Vec<Raw> = Vec::with_capacity(64);
    let mut l = |lv: u8,
                 ch: u8,
                 file: &'static str,
                 func: &'static str,
                 line: u32,
                 ud: &str,
                 text: String| {
        v.push((lv, ch, file, func, line, ud.to_owned(), text));
    };
    l(
        5,
        3,
        "switch_channel.c",
        "switch_channel_set_name",
        1142,
        &tmp,
        format!("New Channel {first} [{tmp}]"),
    );
    l(
        7,
        3,
        LB,
        "tech_init",
        166,
        &tmp,
        format!("{first} setup codec L16/8000/20"),
    );
    l(
        5,
        3,
        "switch_channel.c",
        "switch_channel_set_name",
        1140,
        &tmp,
        format!("Rename Channel {first}->{a} [{tmp}]"),
    );
    l(
        7,
        0,
        LB,
        "channel_outgoing_channel",
        1262,
        &tmp,
        format!("({a}) State Change CS_NEW -> CS_INIT"),
    );
    if o.chosen_uuid {
        l(
            7,
            3,
            "switch_core_session.c",
            "switch_core_session_outgoing_channel",
            641,
            &au,
            format!("{a} set UUID={au}"),
        );
    }
    l(
        7,
        0,
        SM,
        RUN,
        581,
        &au,
        format!("({a}) Running State Change CS_INIT (Cur {c1} Tot {t1})"),
    );
    l(7, 3, SM, RUN, 624, &au, format!("({a}) State INIT"));
    l(
        5,
        3,
        "switch_channel.c",
        "switch_channel_set_name",
        1142,
        &bu,
        format!("New Channel {b} [{bu}]"),
    );
    l(
        7,
        3,
        LB,
        "tech_init",
        166,
        &bu,
        format!("{b} setup codec L16/8000/20"),
    );
    l(
        7,
        0,
        LB,
        "channel_on_init",
        288,
        &bu,
        format!("({b}) State Change CS_NEW -> CS_INIT"),
    );
    l(
        7,
        3,
        LB,
        "channel_on_init",
        356,
        &bu,
        "setting other_loopback_from_uuid on b leg to (null)".into(),
    );
    l(
        7,
        0,
        LB,
        "channel_on_init",
        380,
        &au,
        format!("({a}) State Change CS_INIT -> CS_ROUTING"),
    );
    l(
        7,
        3,
        SM,
        RUN,
        624,
        &au,
        format!("({a}) State INIT going to sleep"),
    );
    l(
        7,
        0,
        SM,
        RUN,
        581,
        &bu,
        format!("({b}) Running State Change CS_INIT (Cur {c2} Tot {t2})"),
    );
    l(
        7,
        0,
        SM,
        RUN,
        581,
        &au,
        format!("({a}) Running State Change CS_ROUTING (Cur {c2} Tot {t2})"),
    );
    l(7, 3, SM, RUN, 640, &au, format!("({a}) State ROUTING"));
    l(
        7,
        3,
        LB,
        "channel_on_routing",
        412,
        &au,
        format!("{a} CHANNEL ROUTING"),
    );
    l(
        7,
        0,
        "switch_ivr_originate.c",
        "originate_on_routing",
        67,
        &au,
        format!("({a}) State Change CS_ROUTING -> CS_CONSUME_MEDIA"),
    );
    l(
        7,
        3,
        SM,
        RUN,
        640,
        &au,
        format!("({a}) State ROUTING going to sleep"),
    );
    l(
        7,
        0,
        SM,
        RUN,
        581,
        &au,
        format!("({a}) Running State Change CS_CONSUME_MEDIA (Cur {c2} Tot {t2})"),
    );
    l(
        7,
        3,
        SM,
        RUN,
        659,
        &au,
        format!("({a}) State CONSUME_MEDIA"),
    );
    l(
        7,
        3,
        LB,
        "channel_on_consume_media",
        681,
        &au,
        "CHANNEL CONSUME_MEDIA".into(),
    );
    l(
        7,
        3,
        SM,
        RUN,
        659,
        &au,
        format!("({a}) State CONSUME_MEDIA going to sleep"),
    );
    l(7, 3, SM, RUN, 624, &bu, format!("({b}) State INIT"));
    l(
        7,
        0,
        LB,
        "channel_on_init",
        380,
        &bu,
        format!("({b}) State Change CS_INIT -> CS_ROUTING"),
    );
    l(
        7,
        3,
        SM,
        RUN,
        624,
        &bu,
        format!("({b}) State INIT going to sleep"),
    );
    l(
        7,
        0,
        SM,
        RUN,
        581,
        &bu,
        format!("({b}) Running State Change CS_ROUTING (Cur {c2} Tot {t2})"),
    );
    l(
        7,
        0,
        "switch_channel.c",
        "switch_channel_perform_set_running_state",
        2399,
        &bu,
        format!("({b}) Callstate Change DOWN -> RINGING"),
    );
    l(7, 3, SM, RUN, 640, &bu, format!("({b}) State ROUTING"));
    l(
        7,
        3,
        LB,
        "channel_on_routing",
        412,
        &bu,
        format!("{b} CHANNEL ROUTING"),
    );
    l(
        7,
        3,
        SM,
        "switch_core_standard_on_routing",
        230,
        &bu,
        format!("{b} Standard ROUTING"),
    );
    let (num, ctx) = (o.number, o.context);
    l(
        6,
        3,
        "mod_dialplan_xml.c",
        "dialplan_hunt",
        639,
        &bu,
        format!(
            "Processing {} <{}>->{num} in context {ctx}",
            o.cid_name, o.cid_num
        ),
    );
    l(
        7,
        1,
        "mod_dialplan_xml.c",
        "dialplan_hunt",
        696,
        &bu,
        format!("Dialplan: {b} parsing [{ctx}->{num}] continue=false"),
    );
    l(
        7,
        1,
        "mod_dialplan_xml.c",
        "parse_exten",
        415,
        &bu,
        format!(
            "Dialplan: {b} Regex (PASS) [{num}] destination_number({num}) =~ /^{num}$/ break=on-false"
        ),
    );
    for (app, arg) in o.steps {
        l(
            7,
            1,
            "mod_dialplan_xml.c",
            "parse_exten",
            560,
            &bu,
            format!("Dialplan: {b} Action {app}({arg}) "),
        );
    }
    l(
        7,
        0,
        SM,
        "switch_core_standard_on_routing",
        281,
        &bu,
        format!("({b}) State Change CS_ROUTING -> CS_EXECUTE"),
    );
    l(
        7,
        3,
        SM,
        RUN,
        640,
        &bu,
        format!("({b}) State ROUTING going to sleep"),
    );
    l(
        7,
        0,
        SM,
        RUN,
        581,
        &bu,
        format!("({b}) Running State Change CS_EXECUTE (Cur {c2} Tot {t2})"),
    );
    l(7, 3, SM, RUN, 647, &bu, format!("({b}) State EXECUTE"));
    l(
        7,
        3,
        LB,
        "channel_on_execute",
        454,
        &bu,
        format!("{b} CHANNEL EXECUTE"),
    );
    l(
        7,
        3,
        SM,
        "switch_core_standard_on_execute",
        323,
        &bu,
        format!("{b} Standard EXECUTE"),
    );
    // The B leg runs its steps up to the answer, and starts the next one
    // before the originate notices (it polls every 20 ms).
    let mut answered = false;
    for (app, arg) in o.steps {
        l(
            6,
            1,
            "switch_core_session.c",
            "switch_core_session_exec",
            2902,
            &bu,
            format!("EXECUTE [depth=0] {b} {app}({arg})"),
        );
        if answered {
            break;
        }
        if *app == "answer" {
            answered = true;
            l(
                5,
                0,
                LB,
                "channel_receive_message",
                1021,
                &au,
                format!("Channel [{a}] has been answered"),
            );
            l(
                7,
                0,
                "switch_channel.c",
                "switch_channel_perform_mark_answered",
                3912,
                &au,
                format!("({a}) Callstate Change DOWN -> ACTIVE"),
            );
            l(
                5,
                0,
                "mod_dptools.c",
                "answer_function",
                1406,
                &bu,
                format!("Channel [{b}] has been answered"),
            );
            l(
                7,
                0,
                "switch_channel.c",
                "switch_channel_perform_mark_answered",
                3912,
                &bu,
                format!("({b}) Callstate Change RINGING -> ACTIVE"),
            );
        }
    }
    let before = std::mem::take(&mut v);
    let mut l =
        |lv: u8, ch: u8, file: &'static str, func: &'static str, line: u32, text: String| {
            v.push((lv, ch, file, func, line, au.clone(), text));
        };
    l(
        6,
        3,
        "switch_channel.c",
        "switch_channel_flip_cid",
        3289,
        format!(
            "{a} Flipping CID from \"{}\" <{}> to \"Outbound Call\" <{}>",
            o.cid_name, o.cid_num, o.callee
        ),
    );
    l(
        7,
        0,
        "mod_commands.c",
        "originate_function",
        5164,
        format!("({a}) State Change CS_CONSUME_MEDIA -> CS_EXECUTE"),
    );
    l(
        7,
        0,
        SM,
        RUN,
        581,
        format!("({a}) Running State Change CS_EXECUTE (Cur {c2} Tot {t2})"),
    );
    l(7, 3, SM, RUN, 647, format!("({a}) State EXECUTE"));
    l(
        7,
        3,
        LB,
        "channel_on_execute",
        454,
        format!("{a} CHANNEL EXECUTE"),
    );
    l(
        7,
        3,
        SM,
        "switch_core_standard_on_execute",
        323,
        format!("{a} Standard EXECUTE"),
    );
    l(
        6,
        1,
        "switch_core_session.c",
        "switch_core_session_exec",
        2902,
        format!("EXECUTE [depth=0] {a} {}({})", o.app, o.app_arg),
    );
    (before, v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_echo_gives_trace_08s_57_lines() {
        let steps = vec![("answer", String::new()), ("echo", String::new())];
        let o = LoopbackOriginate {
            target: "answer-echo/redswitch-test",
            number: "answer-echo",
            context: "redswitch-test",
            a: "loopback/answer-echo-a",
            a_uuid: "265ff9a7-ce23-4073-bfd1-cf1603e0ae48",
            b: "loopback/answer-echo-b",
            b_uuid: "ec490e04-287f-418c-ac3f-20ebeb230a72",
            chosen_uuid: true,
            cid_name: "",
            cid_num: "0000000000",
            callee: "redswitch-test",
            steps: &steps,
            app: "park",
            app_arg: "",
            cur: 2,
            total: 66,
        };
        let (before, after) = loopback_originate(&o);
        // + "Parsing global variables" and "Originate Resulted in Success".
        assert_eq!(before.len() + after.len() + 2, 57);
        assert_eq!(
            before[5].6,
            "(loopback/answer-echo-a) Running State Change CS_INIT (Cur 1 Tot 65)"
        );
        assert!(
            before
                .iter()
                .any(|l| l.6 == "Processing  <0000000000>->answer-echo in context redswitch-test")
        );
        assert_eq!(
            before.last().map(|l| l.6.as_str()),
            Some("EXECUTE [depth=0] loopback/answer-echo-b echo()")
        );
        assert_eq!(
            after[0].6,
            "loopback/answer-echo-a Flipping CID from \"\" <0000000000> to \"Outbound Call\" <redswitch-test>"
        );
        assert_eq!(
            after.last().map(|l| (l.1, l.6.as_str())),
            Some((1, "EXECUTE [depth=0] loopback/answer-echo-a park()"))
        );
    }
}
