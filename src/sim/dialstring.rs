//! A pure parser for `originate` arguments and dial strings, splitting them
//! the way FreeSWITCH does (`switch_separate_string` and
//! `switch_event_create_brackets`), so that what a client sends has exactly
//! the effect it would have on a real switch, injections included: a comma
//! inside `{…}` starts a new variable, a comma outside starts a new leg.

use std::fmt;

/// Why an originate request cannot even be tried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DialError {
    /// No dial string at all.
    #[error("missing dial string")]
    Empty,
    /// A `{` or `[` block that never closes.
    #[error("unterminated variable block")]
    Unterminated,
}

/// A dialled endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `sofia/gateway/<gateway>/<number>`.
    Gateway {
        /// Gateway name (the job's `call_provider`).
        gateway: String,
        /// Dialled number.
        number: String,
    },
    /// `sofia/<profile>/<uri>`: a direct SIP URI; the number is its user part.
    Sofia {
        /// Sofia profile.
        profile: String,
        /// The user part of the URI.
        number: String,
    },
    /// `loopback/<number>[/<context>]`.
    Loopback {
        /// Destination looked up in the context.
        number: String,
        /// Dialplan context (`default` when absent).
        context: String,
    },
    /// `user/<number>[@domain]`.
    User {
        /// The user.
        number: String,
    },
    /// `error/<cause>`: fails at once with the cause.
    Error {
        /// Hangup cause.
        cause: String,
    },
    /// Any other technology: FreeSWITCH answers CHAN_NOT_IMPLEMENTED.
    Unsupported(String),
}

impl Endpoint {
    /// The dialled number (or destination), as in `Caller-Destination-Number`.
    pub fn number(&self) -> &str {
        match self {
            Self::Gateway { number, .. }
            | Self::Sofia { number, .. }
            | Self::Loopback { number, .. }
            | Self::User { number } => number,
            Self::Error { cause } => cause,
            Self::Unsupported(s) => s,
        }
    }
}

/// One leg of a dial string: its own `[…]` variables and the endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leg {
    /// Per-leg variables, in order.
    pub vars: Vec<(String, String)>,
    /// The endpoint text as written (after the variable blocks).
    pub target: String,
    /// The parsed endpoint.
    pub endpoint: Endpoint,
}

/// A parsed dial string: `{global vars}` then legs. `,` separates legs rung
/// together, `|` separates groups tried one after the other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialString {
    /// `{…}` variables, in order.
    pub global: Vec<(String, String)>,
    /// Groups of legs.
    pub groups: Vec<Vec<Leg>>,
}

impl DialString {
    /// The first leg (the simulator dials the first leg of the first group;
    /// see the module docs of [`crate::sim`]).
    pub fn first(&self) -> Option<&Leg> {
        self.groups.first().and_then(|g| g.first())
    }

    /// A variable for a leg: its `[…]` value, else the `{…}` value.
    pub fn var<'a>(&'a self, leg: &'a Leg, name: &str) -> Option<&'a str> {
        leg.vars
            .iter()
            .rev()
            .chain(self.global.iter().rev())
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The application part of `originate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginateApp {
    /// `&app(args)` or `&app`.
    App {
        /// Application name.
        name: String,
        /// Its arguments (empty when none).
        args: String,
    },
    /// A dialplan extension.
    Extension(String),
}

impl fmt::Display for OriginateApp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::App { name, args } => write!(f, "&{name}({args})"),
            Self::Extension(e) => f.write_str(e),
        }
    }
}

/// A whole `originate` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Originate {
    /// The call URL.
    pub dial: DialString,
    /// What the answered leg runs.
    pub app: OriginateApp,
    /// Optional dialplan (`xml`) for an extension.
    pub dialplan: Option<String>,
    /// Optional context for an extension.
    pub context: Option<String>,
    /// Optional caller id name.
    pub cid_name: Option<String>,
    /// Optional caller id number.
    pub cid_num: Option<String>,
    /// Optional timeout in seconds.
    pub timeout: Option<u64>,
}

/// Splits on `sep` like `switch_separate_string`: single quotes group (and
/// are removed), a backslash escapes the next character, runs of the
/// separator count once when it is a space.
pub fn separate(input: &str, sep: char) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = input.chars().peekable();
    let mut any = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars
                .peek()
                .is_some_and(|&n| n == sep || n == '\'' || n == '\\') =>
            {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
                any = true;
            }
            '\'' => {
                quoted = !quoted;
                any = true;
            }
            c if c == sep && !quoted => {
                if sep != ' ' || any {
                    out.push(std::mem::take(&mut cur));
                }
                any = false;
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any || (sep != ' ' && !out.is_empty()) || (sep != ' ' && !input.is_empty()) {
        out.push(cur);
    }
    out
}

/// Parses `k=v,k2='v 2'` (the inside of a `{…}` or `[…]` block).
fn parse_vars(block: &str) -> Vec<(String, String)> {
    separate(block, ',')
        .into_iter()
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            let k = k.trim();
            (!k.is_empty()).then(|| (k.to_owned(), v.to_owned()))
        })
        .collect()
}

/// Takes a leading `open … close` block (respecting single quotes).
fn take_block(s: &str, open: char, close: char) -> Result<Option<(&str, &str)>, DialError> {
    let Some(rest) = s.strip_prefix(open) else {
        return Ok(None);
    };
    let mut quoted = false;
    for (i, c) in rest.char_indices() {
        match c {
            '\'' => quoted = !quoted,
            c if c == close && !quoted => return Ok(Some((&rest[..i], &rest[i + 1..]))),
            _ => {}
        }
    }
    Err(DialError::Unterminated)
}

/// Splits at top-level separators (not inside `[…]`, `{…}` or quotes).
fn split_top(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut quoted, mut start) = (0i32, false, 0);
    for (i, c) in s.char_indices() {
        match c {
            '\'' => quoted = !quoted,
            '[' | '{' | '<' if !quoted => depth += 1,
            ']' | '}' | '>' if !quoted => depth -= 1,
            c if c == sep && !quoted && depth <= 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// Parses an endpoint such as `sofia/gateway/gw/1555`.
pub fn parse_endpoint(target: &str) -> Endpoint {
    let parts: Vec<&str> = target.split('/').collect();
    match parts.as_slice() {
        ["sofia", "gateway", gw, rest @ ..] if !rest.is_empty() => Endpoint::Gateway {
            gateway: (*gw).to_owned(),
            number: rest.join("/"),
        },
        ["sofia", profile, rest @ ..] if !rest.is_empty() => {
            let uri = rest.join("/");
            let uri = uri.strip_prefix("sip:").unwrap_or(&uri);
            let user = uri.split('@').next().unwrap_or(uri);
            Endpoint::Sofia {
                profile: (*profile).to_owned(),
                number: user.to_owned(),
            }
        }
        ["loopback", number] => Endpoint::Loopback {
            number: (*number).to_owned(),
            context: "default".to_owned(),
        },
        ["loopback", number, context, ..] => Endpoint::Loopback {
            number: (*number).to_owned(),
            context: (*context).to_owned(),
        },
        ["user", user, ..] => Endpoint::User {
            number: user.split('@').next().unwrap_or(user).to_owned(),
        },
        ["error", cause, ..] => Endpoint::Error {
            cause: (*cause).to_owned(),
        },
        _ => Endpoint::Unsupported(target.to_owned()),
    }
}

/// Parses a dial string (the first argument of `originate`).
pub fn parse_dial(s: &str) -> Result<DialString, DialError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(DialError::Empty);
    }
    let (global, rest) = match take_block(s, '{', '}')? {
        Some((inner, rest)) => (parse_vars(inner), rest),
        None => (Vec::new(), s),
    };
    let mut groups = Vec::new();
    for group in split_top(rest, '|') {
        let mut legs = Vec::new();
        for leg in split_top(group, ',') {
            let mut leg = leg.trim();
            let mut vars = Vec::new();
            while let Some((inner, after)) = take_block(leg, '[', ']')? {
                vars.extend(parse_vars(inner));
                leg = after;
            }
            legs.push(Leg {
                vars,
                target: leg.to_owned(),
                endpoint: parse_endpoint(leg),
            });
        }
        groups.push(legs);
    }
    Ok(DialString { global, groups })
}

/// Parses the application part: `&app(args)`, `&app`, or an extension.
pub fn parse_app(s: &str) -> OriginateApp {
    match s.strip_prefix('&') {
        Some(app) => match app.split_once('(') {
            Some((name, args)) => OriginateApp::App {
                name: name.to_owned(),
                args: args.strip_suffix(')').unwrap_or(args).to_owned(),
            },
            None => OriginateApp::App {
                name: app.to_owned(),
                args: String::new(),
            },
        },
        None => OriginateApp::Extension(s.to_owned()),
    }
}

/// Parses the whole argument string of `originate`.
pub fn parse_originate(args: &str) -> Result<Originate, DialError> {
    let argv = separate(args.trim(), ' ');
    let dial = parse_dial(argv.first().ok_or(DialError::Empty)?)?;
    let app = parse_app(argv.get(1).map_or("park", |s| s.as_str()));
    let opt = |i: usize| {
        argv.get(i)
            .filter(|s| !s.is_empty() && *s != "undef")
            .cloned()
    };
    Ok(Originate {
        dial,
        app,
        dialplan: opt(2),
        context: opt(3),
        cid_name: opt(4),
        cid_num: opt(5),
        timeout: opt(6).and_then(|t| t.parse().ok()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_01_originate() {
        let o = parse_originate(
            "{origination_uuid=00e6edae-90af-4663-bcfa-2ce52b421f74,dial_id=d1,side=0}loopback/answer-park/redswitch-test &park()",
        )
        .unwrap();
        assert_eq!(
            o.dial.global,
            vec![
                (
                    "origination_uuid".into(),
                    "00e6edae-90af-4663-bcfa-2ce52b421f74".into()
                ),
                ("dial_id".into(), "d1".into()),
                ("side".into(), "0".into()),
            ]
        );
        let leg = o.dial.first().unwrap();
        assert_eq!(
            leg.endpoint,
            Endpoint::Loopback {
                number: "answer-park".into(),
                context: "redswitch-test".into()
            }
        );
        assert_eq!(
            o.app,
            OriginateApp::App {
                name: "park".into(),
                args: String::new()
            }
        );
    }

    #[test]
    fn quoted_socket_app_is_one_argument() {
        let o =
            parse_originate("sofia/gateway/gw/15551234567 '&socket(127.0.0.1:8084 async full)'")
                .unwrap();
        assert_eq!(
            o.app,
            OriginateApp::App {
                name: "socket".into(),
                args: "127.0.0.1:8084 async full".into()
            }
        );
        assert_eq!(o.dialplan, None);
        assert_eq!(
            o.dial.first().unwrap().endpoint,
            Endpoint::Gateway {
                gateway: "gw".into(),
                number: "15551234567".into()
            }
        );
    }

    #[test]
    fn unquoted_socket_app_splits_on_spaces_like_trace_07() {
        let o = parse_originate(
            "loopback/answer-park/redswitch-test &socket(127.0.0.1:8084 async full)",
        )
        .unwrap();
        assert_eq!(
            o.app,
            OriginateApp::App {
                name: "socket".into(),
                args: "127.0.0.1:8084".into()
            }
        );
        assert_eq!(o.dialplan.as_deref(), Some("async"));
        assert_eq!(o.context.as_deref(), Some("full)"));
    }

    #[test]
    fn quoted_values_keep_commas_and_spaces() {
        let d =
            parse_dial("{origination_caller_id_name='Doe, John',a=b}[x='1 2']user/1000").unwrap();
        assert_eq!(
            d.global[0],
            ("origination_caller_id_name".into(), "Doe, John".into())
        );
        let leg = d.first().unwrap();
        assert_eq!(leg.vars, vec![("x".into(), "1 2".into())]);
        assert_eq!(
            leg.endpoint,
            Endpoint::User {
                number: "1000".into()
            }
        );
        assert_eq!(d.var(leg, "a"), Some("b"));
    }

    #[test]
    fn comma_injection_behaves_as_in_freeswitch() {
        // Inside a variable block a comma starts a new (hook) variable.
        let d =
            parse_dial("{origination_caller_id_number=1555,execute_on_answer=x}user/1").unwrap();
        assert_eq!(d.global[1], ("execute_on_answer".into(), "x".into()));
        // Outside, it starts a second leg rung at the same time.
        let d = parse_dial("sofia/gateway/gw/1555,execute_on_answer=x").unwrap();
        assert_eq!(d.groups[0].len(), 2);
        assert_eq!(d.groups[0][0].endpoint.number(), "1555");
        assert!(matches!(d.groups[0][1].endpoint, Endpoint::Unsupported(_)));
        // A closing brace in a value ends the block early.
        let d = parse_dial("{a=1555}x}loopback/1").unwrap();
        assert_eq!(d.global, vec![("a".into(), "1555".into())]);
        assert_eq!(d.first().unwrap().target, "x}loopback/1");
        // `|` makes a failover group.
        let d = parse_dial("user/1|sofia/gateway/gw/2").unwrap();
        assert_eq!(d.groups.len(), 2);
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            parse_endpoint("loopback/1555"),
            Endpoint::Loopback {
                number: "1555".into(),
                context: "default".into()
            }
        );
        assert_eq!(
            parse_endpoint("error/USER_BUSY"),
            Endpoint::Error {
                cause: "USER_BUSY".into()
            }
        );
        assert_eq!(
            parse_endpoint("sofia/external/sip:1555@example.com"),
            Endpoint::Sofia {
                profile: "external".into(),
                number: "1555".into()
            }
        );
        assert!(matches!(
            parse_endpoint("iax/foo"),
            Endpoint::Unsupported(_)
        ));
    }

    #[test]
    fn errors() {
        assert_eq!(parse_originate(""), Err(DialError::Empty));
        assert_eq!(parse_dial("{a=b"), Err(DialError::Unterminated));
        assert_eq!(parse_dial("[a=b user/1"), Err(DialError::Unterminated));
    }

    #[test]
    fn separate_like_switch_separate_string() {
        assert_eq!(separate("a  b 'c d'", ' '), vec!["a", "b", "c d"]);
        assert_eq!(separate("a,b\\,c", ','), vec!["a", "b,c"]);
        assert_eq!(separate("", ' '), Vec::<String>::new());
    }
}
