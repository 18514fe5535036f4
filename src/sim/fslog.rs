//! FreeSWITCH's own log lines (what a `log 7` connection receives as
//! `log/data`) for the scenarios the traces recorded.
//!
//! Only a loopback `originate` is covered line for line: trace 08 records
//! the 57 lines of `api originate … loopback/answer-echo/redswitch-test
//! &park()`, kept here as tables of rows (one per stage of the call), and
//! [`loopback_originate`] reproduces them in order, with the
//! same levels, text channels, files, functions, line numbers and user data,
//! for any loopback destination (the dialplan lines follow the extension's
//! steps). Other scenarios log a few representative lines (see
//! [`crate::sim::api`]). Timestamps and the idle-CPU figure are the
//! simulator's own.

use crate::sim::Core;
use crate::sim::event::{format_local, now_micros};
use crate::sim::listener::LogLine;

/// One log line before it is stamped: level, text channel (0 and 3 get the
/// date/level/file prefix, 1 is raw), file, function, line, user data
/// (the channel uuid, or empty), text.
pub(crate) type Raw = (u8, u8, &'static str, &'static str, u32, String, String);

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
const XML: &str = "mod_dialplan_xml.c";
const CH: &str = "switch_channel.c";

/// Whose line it is: the user data is that leg's uuid (`Tmp` is the A
/// leg's first uuid, replaced when the client chose one).
#[derive(Clone, Copy)]
enum Who {
    Tmp,
    A,
    B,
}

/// One line of trace 08's loopback originate: level, text channel, file,
/// function, line number, whose, and the text with `{name}` placeholders
/// (see [`loopback_originate`] for the names).
type Row = (u8, u8, &'static str, &'static str, u32, Who, &'static str);

/// The A leg is created (with the uuid it is born with).
#[rustfmt::skip]
const A_CREATED: &[Row] = &[
    (5, 3, CH, "switch_channel_set_name", 1142, Who::Tmp, "New Channel {first} [{tmp}]"),
    (7, 3, LB, "tech_init", 166, Who::Tmp, "{first} setup codec L16/8000/20"),
    (5, 3, CH, "switch_channel_set_name", 1140, Who::Tmp, "Rename Channel {first}->{a} [{tmp}]"),
    (7, 0, LB, "channel_outgoing_channel", 1262, Who::Tmp, "({a}) State Change CS_NEW -> CS_INIT"),
];

/// Only when the client chose the uuid (`origination_uuid`).
#[rustfmt::skip]
const A_UUID_SET: &[Row] = &[(
    7,
    3,
    "switch_core_session.c",
    "switch_core_session_outgoing_channel",
    641,
    Who::A,
    "{a} set UUID={au}",
)];

/// The A leg enters CS_INIT, where mod_loopback creates the B leg.
#[rustfmt::skip]
const A_INIT: &[Row] = &[
    (7, 0, SM, RUN, 581, Who::A, "({a}) Running State Change CS_INIT (Cur {c1} Tot {t1})"),
    (7, 3, SM, RUN, 624, Who::A, "({a}) State INIT"),
];

/// The B leg is created and routed, up to the dialplan's match.
#[rustfmt::skip]
const B_ROUTED: &[Row] = &[
    (5, 3, CH, "switch_channel_set_name", 1142, Who::B, "New Channel {b} [{bu}]"),
    (7, 3, LB, "tech_init", 166, Who::B, "{b} setup codec L16/8000/20"),
    (7, 0, LB, "channel_on_init", 288, Who::B, "({b}) State Change CS_NEW -> CS_INIT"),
    (7, 3, LB, "channel_on_init", 356, Who::B, "setting other_loopback_from_uuid on b leg to (null)"),
    (7, 0, LB, "channel_on_init", 380, Who::A, "({a}) State Change CS_INIT -> CS_ROUTING"),
    (7, 3, SM, RUN, 624, Who::A, "({a}) State INIT going to sleep"),
    (7, 0, SM, RUN, 581, Who::B, "({b}) Running State Change CS_INIT (Cur {c2} Tot {t2})"),
    (7, 0, SM, RUN, 581, Who::A, "({a}) Running State Change CS_ROUTING (Cur {c2} Tot {t2})"),
    (7, 3, SM, RUN, 640, Who::A, "({a}) State ROUTING"),
    (7, 3, LB, "channel_on_routing", 412, Who::A, "{a} CHANNEL ROUTING"),
    (7, 0, "switch_ivr_originate.c", "originate_on_routing", 67, Who::A, "({a}) State Change CS_ROUTING -> CS_CONSUME_MEDIA"),
    (7, 3, SM, RUN, 640, Who::A, "({a}) State ROUTING going to sleep"),
    (7, 0, SM, RUN, 581, Who::A, "({a}) Running State Change CS_CONSUME_MEDIA (Cur {c2} Tot {t2})"),
    (7, 3, SM, RUN, 659, Who::A, "({a}) State CONSUME_MEDIA"),
    (7, 3, LB, "channel_on_consume_media", 681, Who::A, "CHANNEL CONSUME_MEDIA"),
    (7, 3, SM, RUN, 659, Who::A, "({a}) State CONSUME_MEDIA going to sleep"),
    (7, 3, SM, RUN, 624, Who::B, "({b}) State INIT"),
    (7, 0, LB, "channel_on_init", 380, Who::B, "({b}) State Change CS_INIT -> CS_ROUTING"),
    (7, 3, SM, RUN, 624, Who::B, "({b}) State INIT going to sleep"),
    (7, 0, SM, RUN, 581, Who::B, "({b}) Running State Change CS_ROUTING (Cur {c2} Tot {t2})"),
    (7, 0, CH, "switch_channel_perform_set_running_state", 2399, Who::B, "({b}) Callstate Change DOWN -> RINGING"),
    (7, 3, SM, RUN, 640, Who::B, "({b}) State ROUTING"),
    (7, 3, LB, "channel_on_routing", 412, Who::B, "{b} CHANNEL ROUTING"),
    (7, 3, SM, "switch_core_standard_on_routing", 230, Who::B, "{b} Standard ROUTING"),
    (6, 3, XML, "dialplan_hunt", 639, Who::B, "Processing {cid_name} <{cid_num}>->{num} in context {ctx}"),
    (7, 1, XML, "dialplan_hunt", 696, Who::B, "Dialplan: {b} parsing [{ctx}->{num}] continue=false"),
    (7, 1, XML, "parse_exten", 415, Who::B, "Dialplan: {b} Regex (PASS) [{num}] destination_number({num}) =~ /^{num}$/ break=on-false"),
];

/// One per step of the B leg's extension.
#[rustfmt::skip]
const B_ACTION: &[Row] = &[(7, 1, XML, "parse_exten", 560, Who::B, "Dialplan: {b} Action {app}({arg}) ")];

/// The B leg starts executing its extension.
#[rustfmt::skip]
const B_EXECUTE: &[Row] = &[
    (7, 0, SM, "switch_core_standard_on_routing", 281, Who::B, "({b}) State Change CS_ROUTING -> CS_EXECUTE"),
    (7, 3, SM, RUN, 640, Who::B, "({b}) State ROUTING going to sleep"),
    (7, 0, SM, RUN, 581, Who::B, "({b}) Running State Change CS_EXECUTE (Cur {c2} Tot {t2})"),
    (7, 3, SM, RUN, 647, Who::B, "({b}) State EXECUTE"),
    (7, 3, LB, "channel_on_execute", 454, Who::B, "{b} CHANNEL EXECUTE"),
    (7, 3, SM, "switch_core_standard_on_execute", 323, Who::B, "{b} Standard EXECUTE"),
];

/// One per step the B leg runs (`{app}({arg})` is the step).
#[rustfmt::skip]
const B_STEP: &[Row] = &[(6, 1, "switch_core_session.c", "switch_core_session_exec", 2902, Who::B, "EXECUTE [depth=0] {b} {app}({arg})")];

/// After the B leg's `answer` step: both legs are answered.
#[rustfmt::skip]
const ANSWERED: &[Row] = &[
    (5, 0, LB, "channel_receive_message", 1021, Who::A, "Channel [{a}] has been answered"),
    (7, 0, CH, "switch_channel_perform_mark_answered", 3912, Who::A, "({a}) Callstate Change DOWN -> ACTIVE"),
    (5, 0, "mod_dptools.c", "answer_function", 1406, Who::B, "Channel [{b}] has been answered"),
    (7, 0, CH, "switch_channel_perform_mark_answered", 3912, Who::B, "({b}) Callstate Change RINGING -> ACTIVE"),
];

/// After `Originate Resulted in Success`: the A leg runs the originate's
/// application (`{app}({arg})`).
#[rustfmt::skip]
const A_EXECUTE: &[Row] = &[
    (6, 3, CH, "switch_channel_flip_cid", 3289, Who::A, "{a} Flipping CID from \"{cid_name}\" <{cid_num}> to \"Outbound Call\" <{callee}>"),
    (7, 0, "mod_commands.c", "originate_function", 5164, Who::A, "({a}) State Change CS_CONSUME_MEDIA -> CS_EXECUTE"),
    (7, 0, SM, RUN, 581, Who::A, "({a}) Running State Change CS_EXECUTE (Cur {c2} Tot {t2})"),
    (7, 3, SM, RUN, 647, Who::A, "({a}) State EXECUTE"),
    (7, 3, LB, "channel_on_execute", 454, Who::A, "{a} CHANNEL EXECUTE"),
    (7, 3, SM, "switch_core_standard_on_execute", 323, Who::A, "{a} Standard EXECUTE"),
    (6, 1, "switch_core_session.c", "switch_core_session_exec", 2902, Who::A, "EXECUTE [depth=0] {a} {app}({arg})"),
];

/// After a loopback A leg's CS_INIT when the throttle refused its B leg
/// (trace 13): mod_loopback gives up, and the A leg sleeps in CS_INIT.
#[rustfmt::skip]
const A_WITHOUT_B: &[Row] = &[
    (2, 3, LB, "channel_on_init", 258, Who::A, "Failure."),
    (7, 3, SM, RUN, 624, Who::A, "({a}) State INIT going to sleep"),
];

/// Fills a template's `{name}` placeholders.
fn fill(template: &str, value: &dyn Fn(&str) -> String) -> String {
    let mut out = String::with_capacity(template.len() + 64);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        match rest[open..].find('}') {
            Some(close) => {
                out.push_str(&value(&rest[open + 1..open + close]));
                rest = &rest[open + close + 1..];
            }
            None => {
                out.push_str(&rest[open..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// The lines from the A leg's creation to the B leg answering (logged
/// before `Originate Resulted in Success`), and the A leg's lines after it.
///
/// Placeholders: `first` (the A leg's name before mod_loopback renames it),
/// `tmp`/`a`/`au` (the A leg's first uuid, name, uuid), `b`/`bu`, `c1`/`t1`
/// and `c2`/`t2` (live and total sessions before and after the B leg),
/// `num`, `ctx`, `cid_name`, `cid_num`, `callee`, and `app`/`arg` (the step
/// or application a row is about).
pub(crate) fn loopback_originate(o: &LoopbackOriginate<'_>) -> (Vec<Raw>, Vec<Raw>) {
    let r = Renderer::new(o);
    let none = ("", "");
    let mut before: Vec<Raw> = Vec::with_capacity(64);
    r.a_created(&mut before);
    r.emit(&mut before, B_ROUTED, none);
    for (app, arg) in o.steps {
        r.emit(&mut before, B_ACTION, (app, arg));
    }
    r.emit(&mut before, B_EXECUTE, none);
    // The B leg runs its steps up to the answer, and starts the next one
    // before the originate notices (it polls every 20 ms).
    let mut answered = false;
    for (app, arg) in o.steps {
        r.emit(&mut before, B_STEP, (app, arg));
        if answered {
            break;
        }
        if *app == "answer" {
            answered = true;
            r.emit(&mut before, ANSWERED, none);
        }
    }
    let mut after: Vec<Raw> = Vec::with_capacity(8);
    r.emit(&mut after, A_EXECUTE, (o.app, o.app_arg));
    (before, after)
}

/// A loopback originate whose B leg the throttle refused: the A leg's
/// lines up to its CS_INIT, and those after the refusal (`Throttle Error!`
/// comes between them).
pub(crate) fn loopback_a_without_b(o: &LoopbackOriginate<'_>) -> (Vec<Raw>, Vec<Raw>) {
    let r = Renderer::new(o);
    let (mut before, mut after) = (Vec::new(), Vec::new());
    r.a_created(&mut before);
    r.emit(&mut after, A_WITHOUT_B, ("", ""));
    (before, after)
}

/// Fills the tables' rows for one originate.
struct Renderer<'o, 'a> {
    o: &'o LoopbackOriginate<'a>,
    /// The A leg's first uuid (another one when the client chose it).
    tmp: String,
    /// The A leg's name before mod_loopback renames it.
    first: String,
    /// Live and total sessions before and after the B leg exists.
    counts: (usize, u64, usize, u64),
}

impl<'o, 'a> Renderer<'o, 'a> {
    fn new(o: &'o LoopbackOriginate<'a>) -> Self {
        let tmp = if o.chosen_uuid {
            uuid::Uuid::new_v4().to_string()
        } else {
            o.a_uuid.to_owned()
        };
        let (c1, t1) = (
            o.cur.saturating_sub(1).max(1),
            o.total.saturating_sub(1).max(1),
        );
        Self {
            o,
            tmp,
            first: format!("loopback/{}-a", o.target),
            counts: (c1, t1, c1 + 1, t1 + 1),
        }
    }

    /// The A leg is created and enters CS_INIT.
    fn a_created(&self, v: &mut Vec<Raw>) {
        let none = ("", "");
        self.emit(v, A_CREATED, none);
        if self.o.chosen_uuid {
            self.emit(v, A_UUID_SET, none);
        }
        self.emit(v, A_INIT, none);
    }

    fn value(&self, k: &str, app: (&str, &str)) -> String {
        let o = self.o;
        let (c1, t1, c2, t2) = self.counts;
        match k {
            "first" => self.first.clone(),
            "tmp" => self.tmp.clone(),
            "a" => o.a.to_owned(),
            "au" => o.a_uuid.to_owned(),
            "b" => o.b.to_owned(),
            "bu" => o.b_uuid.to_owned(),
            "c1" => c1.to_string(),
            "t1" => t1.to_string(),
            "c2" => c2.to_string(),
            "t2" => t2.to_string(),
            "num" => o.number.to_owned(),
            "ctx" => o.context.to_owned(),
            "cid_name" => o.cid_name.to_owned(),
            "cid_num" => o.cid_num.to_owned(),
            "callee" => o.callee.to_owned(),
            "app" => app.0.to_owned(),
            "arg" => app.1.to_owned(),
            other => format!("{{{other}}}"),
        }
    }

    fn emit(&self, v: &mut Vec<Raw>, rows: &[Row], app: (&str, &str)) {
        for &(level, channel, file, func, line, who, text) in rows {
            let ud = match who {
                Who::Tmp => self.tmp.clone(),
                Who::A => self.o.a_uuid.to_owned(),
                Who::B => self.o.b_uuid.to_owned(),
            };
            let text = fill(text, &|k| self.value(k, app));
            v.push((level, channel, file, func, line, ud, text));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_replaces_placeholders_and_keeps_the_rest() {
        let v = |k: &str| match k {
            "a" => "loopback/x-a".to_owned(),
            other => format!("<{other}?>"),
        };
        assert_eq!(
            fill("({a}) State {a}", &v),
            "(loopback/x-a) State loopback/x-a"
        );
        assert_eq!(fill("{zz} and {open", &v), "<zz?> and {open");
        assert_eq!(fill("no placeholder", &v), "no placeholder");
    }

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
