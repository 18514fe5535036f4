//! Commands a client sends to FreeSWITCH's event socket, and their encoding.
//!
//! A command is one frame: the command line, optional `Name: value` lines,
//! a blank line, and (for `sendevent` and long `sendmsg` arguments) a body.
//! A line break inside any value would end the frame early and let the rest
//! run as a second command, so encoding refuses CR and LF everywhere: this is
//! the last line of defence behind the service's allow-lists (docs/PROTOCOL.md).

use bytes::{BufMut, BytesMut};

/// Application arguments longer than this go in a body (`Content-Length`)
/// instead of an `execute-app-arg` header, as mod_event_socket allows.
pub const MAX_ARG_IN_HEADER: usize = 2048;

/// A value that cannot be encoded safely.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// A value holds CR or LF, which would inject a second command.
    #[error("{field} contains a line break; refusing to send it to FreeSWITCH")]
    LineBreak {
        /// Which part of the command.
        field: &'static str,
    },
    /// A header name that would break the `Name: value` syntax.
    #[error("invalid header name {name:?} in {field}")]
    BadHeaderName {
        /// Which part of the command.
        field: &'static str,
        /// The name as given.
        name: String,
    },
}

/// Event encodings a subscription can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EventFormat {
    /// Percent-encoded `Name: value` lines (the default, and the fastest to
    /// decode).
    #[default]
    Plain,
    /// One JSON object per event.
    Json,
    /// One XML document per event.
    Xml,
}

impl EventFormat {
    /// The keyword FreeSWITCH expects (`plain`, `json`, `xml`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::Json => "json",
            Self::Xml => "xml",
        }
    }
}

impl std::str::FromStr for EventFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "plain" => Ok(Self::Plain),
            "json" => Ok(Self::Json),
            "xml" => Ok(Self::Xml),
            other => Err(format!(
                "unknown event format {other:?} (plain, json or xml)"
            )),
        }
    }
}

/// An application to run on a channel (`sendmsg` with `call-command: execute`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Execute {
    /// The dialplan application (`playback`, `bridge`, `eavesdrop` …).
    pub app: String,
    /// Its argument; sent as a body when longer than [`MAX_ARG_IN_HEADER`].
    pub arg: Option<String>,
    /// `loops`: how many times to run it.
    pub loops: Option<u32>,
    /// `event-lock`: run queued executes one after the other instead of
    /// nesting the second inside the first (trace 09).
    pub event_lock: bool,
    /// `async`: queue it without blocking the socket in static mode.
    pub r#async: bool,
}

/// What a `sendmsg` asks the channel to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallCommand {
    /// Run an application.
    Execute(Execute),
    /// Hang the channel up with a Hangup-Cause.
    Hangup {
        /// e.g. `NORMAL_CLEARING`.
        cause: String,
    },
}

/// A `sendmsg` frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendMsg {
    /// The target channel; `None` on an outbound socket means its own.
    pub uuid: Option<String>,
    /// What to do.
    pub command: CallCommand,
    /// `Event-UUID`: echoed back as `Application-UUID` on CHANNEL_EXECUTE
    /// and CHANNEL_EXECUTE_COMPLETE, which is how completions are matched.
    pub event_uuid: Option<String>,
}

/// A command frame for FreeSWITCH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `auth <password>`.
    Auth {
        /// The event-socket password.
        password: String,
    },
    /// `api <command>`: blocking; answered by an `api/response`.
    Api {
        /// The API and its arguments, e.g. `uuid_kill <uuid>`.
        command: String,
    },
    /// `bgapi <command>`: answered at once with a Job-UUID, the result comes
    /// later as a BACKGROUND_JOB event.
    BgApi {
        /// The API and its arguments.
        command: String,
        /// A client-chosen Job-UUID (FreeSWITCH honours it).
        job_uuid: Option<String>,
    },
    /// `event <format> <names…>` (`ALL` for every event).
    Event {
        /// Encoding for every subscription of the connection.
        format: EventFormat,
        /// Event names, and for CUSTOM, subclasses.
        events: Vec<String>,
    },
    /// `myevents [<uuid>] [<format>]`: only events of one channel.
    MyEvents {
        /// The channel on an inbound socket; `None` on an outbound socket.
        uuid: Option<String>,
        /// Encoding; FreeSWITCH's default is plain.
        format: Option<EventFormat>,
    },
    /// `filter <header> <value>`.
    Filter {
        /// Header name.
        header: String,
        /// Value that must match.
        value: String,
    },
    /// `filter delete <header> [<value>]`.
    FilterDelete {
        /// Header name.
        header: String,
        /// Value; `None` deletes every filter on the header.
        value: Option<String>,
    },
    /// `nixevent <names…>`.
    NixEvent {
        /// Event names to stop receiving.
        events: Vec<String>,
    },
    /// `noevents`.
    NoEvents,
    /// `divert_events on|off`.
    DivertEvents(bool),
    /// `linger [<seconds>]`: keep the outbound socket open after hangup.
    Linger(Option<u32>),
    /// `nolinger`.
    NoLinger,
    /// `resume`: continue the dialplan when the socket app ends.
    Resume,
    /// `log <level>`.
    Log(u8),
    /// `nolog`.
    NoLog,
    /// `sendmsg`.
    SendMsg(SendMsg),
    /// `sendevent <name>` with headers and an optional body.
    SendEvent {
        /// Event name, e.g. `CUSTOM`.
        name: String,
        /// Extra headers, in order.
        headers: Vec<(String, String)>,
        /// Optional body.
        body: Option<String>,
    },
    /// `connect`: first command on an outbound socket.
    Connect,
    /// `exit`.
    Exit,
}

fn check<'a>(field: &'static str, value: &'a str) -> Result<&'a str, CommandError> {
    if value.bytes().any(|b| b == b'\n' || b == b'\r') {
        Err(CommandError::LineBreak { field })
    } else {
        Ok(value)
    }
}

fn check_name<'a>(field: &'static str, name: &'a str) -> Result<&'a str, CommandError> {
    let ok = !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b':');
    if ok {
        Ok(name)
    } else {
        Err(CommandError::BadHeaderName {
            field,
            name: name.to_owned(),
        })
    }
}

/// Writes `Name: value\n` after checking the value.
fn header(
    dst: &mut BytesMut,
    name: &str,
    field: &'static str,
    value: &str,
) -> Result<(), CommandError> {
    let value = check(field, value)?;
    dst.put_slice(name.as_bytes());
    dst.put_slice(b": ");
    dst.put_slice(value.as_bytes());
    dst.put_u8(b'\n');
    Ok(())
}

fn line(dst: &mut BytesMut, parts: &[(&'static str, &str)]) -> Result<(), CommandError> {
    for (i, (field, part)) in parts.iter().enumerate() {
        if i > 0 {
            dst.put_u8(b' ');
        }
        dst.put_slice(check(field, part)?.as_bytes());
    }
    dst.put_u8(b'\n');
    Ok(())
}

fn names(field: &'static str, events: &[String]) -> Result<String, CommandError> {
    for e in events {
        check(field, e)?;
    }
    Ok(events.join(" "))
}

impl Command {
    /// Appends the encoded frame to `dst`. On error `dst` is left as it was,
    /// so nothing half-encoded is ever sent.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), CommandError> {
        let mark = dst.len();
        let result = self.encode_unchecked(dst);
        if result.is_err() {
            dst.truncate(mark);
        }
        result
    }

    fn encode_unchecked(&self, dst: &mut BytesMut) -> Result<(), CommandError> {
        match self {
            Self::Auth { password } => line(dst, &[("auth", "auth"), ("password", password)])?,
            Self::Api { command } => line(dst, &[("api", "api"), ("api command", command)])?,
            Self::BgApi { command, job_uuid } => {
                line(dst, &[("bgapi", "bgapi"), ("bgapi command", command)])?;
                if let Some(uuid) = job_uuid {
                    header(dst, "Job-UUID", "Job-UUID", uuid)?;
                }
            }
            Self::Event { format, events } => {
                let list = names("event names", events)?;
                if list.is_empty() {
                    line(dst, &[("event", "event"), ("format", format.as_str())])?;
                } else {
                    line(
                        dst,
                        &[
                            ("event", "event"),
                            ("format", format.as_str()),
                            ("event names", &list),
                        ],
                    )?;
                }
            }
            Self::MyEvents { uuid, format } => {
                dst.put_slice(b"myevents");
                if let Some(uuid) = uuid {
                    dst.put_u8(b' ');
                    dst.put_slice(check("uuid", uuid)?.as_bytes());
                }
                if let Some(format) = format {
                    dst.put_u8(b' ');
                    dst.put_slice(format.as_str().as_bytes());
                }
                dst.put_u8(b'\n');
            }
            Self::Filter { header, value } => line(
                dst,
                &[
                    ("filter", "filter"),
                    ("filter header", header),
                    ("filter value", value),
                ],
            )?,
            Self::FilterDelete { header, value } => {
                let mut parts = vec![
                    ("filter", "filter delete"),
                    ("filter header", header.as_str()),
                ];
                if let Some(value) = value {
                    parts.push(("filter value", value));
                }
                line(dst, &parts)?;
            }
            Self::NixEvent { events } => line(
                dst,
                &[
                    ("nixevent", "nixevent"),
                    ("event names", &names("event names", events)?),
                ],
            )?,
            Self::NoEvents => dst.put_slice(b"noevents\n"),
            Self::DivertEvents(on) => dst.put_slice(if *on {
                b"divert_events on\n"
            } else {
                b"divert_events off\n"
            }),
            Self::Linger(None) => dst.put_slice(b"linger\n"),
            Self::Linger(Some(secs)) => {
                line(dst, &[("linger", "linger"), ("seconds", &secs.to_string())])?
            }
            Self::NoLinger => dst.put_slice(b"nolinger\n"),
            Self::Resume => dst.put_slice(b"resume\n"),
            Self::Log(level) => line(dst, &[("log", "log"), ("level", &level.to_string())])?,
            Self::NoLog => dst.put_slice(b"nolog\n"),
            Self::SendMsg(msg) => return encode_sendmsg(msg, dst),
            Self::SendEvent {
                name,
                headers,
                body,
            } => {
                line(dst, &[("sendevent", "sendevent"), ("event name", name)])?;
                for (n, v) in headers {
                    header(
                        dst,
                        check_name("sendevent header", n)?,
                        "sendevent header",
                        v,
                    )?;
                }
                if let Some(body) = body {
                    dst.put_slice(b"Content-Length: ");
                    dst.put_slice(body.len().to_string().as_bytes());
                    dst.put_slice(b"\n\n");
                    dst.put_slice(body.as_bytes());
                    return Ok(());
                }
            }
            Self::Connect => dst.put_slice(b"connect\n"),
            Self::Exit => dst.put_slice(b"exit\n"),
        }
        dst.put_u8(b'\n');
        Ok(())
    }
}

fn encode_sendmsg(msg: &SendMsg, dst: &mut BytesMut) -> Result<(), CommandError> {
    match &msg.uuid {
        Some(uuid) => line(dst, &[("sendmsg", "sendmsg"), ("uuid", uuid)])?,
        None => dst.put_slice(b"sendmsg\n"),
    }
    let mut body = None;
    match &msg.command {
        CallCommand::Execute(exec) => {
            dst.put_slice(b"call-command: execute\n");
            header(dst, "execute-app-name", "application name", &exec.app)?;
            if let Some(arg) = &exec.arg {
                let arg = check("application argument", arg)?;
                if arg.len() > MAX_ARG_IN_HEADER {
                    body = Some(arg);
                } else {
                    header(dst, "execute-app-arg", "application argument", arg)?;
                }
            }
            if let Some(loops) = exec.loops {
                header(dst, "loops", "loops", &loops.to_string())?;
            }
            if let Some(uuid) = &msg.event_uuid {
                header(dst, "Event-UUID", "Event-UUID", uuid)?;
            }
            if exec.event_lock {
                dst.put_slice(b"event-lock: true\n");
            }
            if exec.r#async {
                dst.put_slice(b"async: true\n");
            }
        }
        CallCommand::Hangup { cause } => {
            dst.put_slice(b"call-command: hangup\n");
            header(dst, "hangup-cause", "hangup cause", cause)?;
            if let Some(uuid) = &msg.event_uuid {
                header(dst, "Event-UUID", "Event-UUID", uuid)?;
            }
        }
    }
    match body {
        Some(arg) => {
            dst.put_slice(b"content-type: text/plain\ncontent-length: ");
            dst.put_slice(arg.len().to_string().as_bytes());
            dst.put_slice(b"\n\n");
            dst.put_slice(arg.as_bytes());
        }
        None => dst.put_u8(b'\n'),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(c: Command) -> String {
        let mut b = BytesMut::new();
        c.encode(&mut b).unwrap();
        String::from_utf8(b.to_vec()).unwrap()
    }

    #[test]
    fn encodes_like_the_traces() {
        assert_eq!(
            enc(Command::Auth {
                password: "ClueCon".into()
            }),
            "auth ClueCon\n\n"
        );
        assert_eq!(
            enc(Command::BgApi {
                command: "status".into(),
                job_uuid: Some("37eb21f0-b4d5-4da2-8a92-851a51f163fb".into())
            }),
            "bgapi status\nJob-UUID: 37eb21f0-b4d5-4da2-8a92-851a51f163fb\n\n"
        );
        assert_eq!(
            enc(Command::Event {
                format: EventFormat::Plain,
                events: vec!["CHANNEL_EXECUTE".into(), "DTMF".into()]
            }),
            "event plain CHANNEL_EXECUTE DTMF\n\n"
        );
        assert_eq!(enc(Command::Linger(None)), "linger\n\n");
        assert_eq!(enc(Command::Linger(Some(5))), "linger 5\n\n");
        assert_eq!(
            enc(Command::FilterDelete {
                header: "Event-Name".into(),
                value: Some("CHANNEL_ANSWER".into())
            }),
            "filter delete Event-Name CHANNEL_ANSWER\n\n"
        );
        assert_eq!(
            enc(Command::MyEvents {
                uuid: Some("u1".into()),
                format: None
            }),
            "myevents u1\n\n"
        );
        assert_eq!(
            enc(Command::SendMsg(SendMsg {
                uuid: None,
                command: CallCommand::Execute(Execute {
                    app: "playback".into(),
                    arg: Some("tone_stream://%(500,500,440);loops=2".into()),
                    event_lock: true,
                    ..Default::default()
                }),
                event_uuid: Some("077a9860-3740-4c60-90e0-e6fc5493d9d0".into()),
            })),
            "sendmsg\ncall-command: execute\nexecute-app-name: playback\nexecute-app-arg: tone_stream://%(500,500,440);loops=2\nEvent-UUID: 077a9860-3740-4c60-90e0-e6fc5493d9d0\nevent-lock: true\n\n"
        );
        assert_eq!(
            enc(Command::SendMsg(SendMsg {
                uuid: None,
                command: CallCommand::Hangup {
                    cause: "NORMAL_CLEARING".into()
                },
                event_uuid: None,
            })),
            "sendmsg\ncall-command: hangup\nhangup-cause: NORMAL_CLEARING\n\n"
        );
        assert_eq!(
            enc(Command::SendEvent {
                name: "CUSTOM".into(),
                headers: vec![
                    ("Event-Subclass".into(), "redswitch::test".into()),
                    ("X-Redswitch".into(), "hello world".into()),
                    ("Content-Type".into(), "text/plain".into()),
                ],
                body: Some("hello body\n\n".into()),
            }),
            "sendevent CUSTOM\nEvent-Subclass: redswitch::test\nX-Redswitch: hello world\nContent-Type: text/plain\nContent-Length: 12\n\nhello body\n\n"
        );
    }

    #[test]
    fn long_arguments_go_in_a_body() {
        let arg = "x".repeat(MAX_ARG_IN_HEADER + 1);
        let out = enc(Command::SendMsg(SendMsg {
            uuid: Some("u".into()),
            command: CallCommand::Execute(Execute {
                app: "set".into(),
                arg: Some(arg.clone()),
                ..Default::default()
            }),
            event_uuid: None,
        }));
        assert!(out.starts_with("sendmsg u\ncall-command: execute\nexecute-app-name: set\n"));
        assert!(out.ends_with(&format!("content-length: {}\n\n{arg}", arg.len())));
        assert!(!out.contains("execute-app-arg"));
    }

    #[test]
    fn line_breaks_are_refused_and_nothing_is_written() {
        let mut b = BytesMut::from(&b"keep"[..]);
        let bad = Command::Api {
            command: "status\n\nauth x".into(),
        };
        assert_eq!(
            bad.encode(&mut b),
            Err(CommandError::LineBreak {
                field: "api command"
            })
        );
        assert_eq!(&b[..], b"keep");
        let bad = Command::SendMsg(SendMsg {
            uuid: None,
            command: CallCommand::Hangup {
                cause: "X\r".into(),
            },
            event_uuid: None,
        });
        assert!(bad.encode(&mut b).is_err());
        let bad = Command::SendEvent {
            name: "CUSTOM".into(),
            headers: vec![("A: b".into(), "c".into())],
            body: None,
        };
        assert!(matches!(
            bad.encode(&mut b),
            Err(CommandError::BadHeaderName { .. })
        ));
        assert_eq!(&b[..], b"keep");
    }
}
