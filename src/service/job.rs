//! The `asp-call` job (docs/PROTOCOL.md): parse raw bytes from the job list, then
//! validate every field.
//!
//! A job either becomes an [`AspCallJob`] whose fields all passed their
//! allow-list grammar, or a [`BadJob`] that says why and carries the `dial_id`
//! when that one field is present and valid, so the caller can publish a
//! `failure` on it before dead-lettering the raw job.
//!
//! Parsing goes through `serde_json::Value` rather than a derived struct so a
//! missing field, a wrong type and non-JSON are distinct typed errors naming
//! the field. serde_json rejects trailing commas; unknown fields are ignored.

use serde_json::{Map, Value};

use super::validate::{Id, PhoneNumber, Provider, ValidationError};

/// The only job type Redswitch handles.
pub const ASP_CALL: &str = "asp-call";

/// Jobs larger than this are refused unparsed: a real job is a few hundred
/// bytes, and the limit stops a producer from making us parse megabytes.
pub const MAX_JOB_BYTES: usize = 64 * 1024;

/// A validated `asp-call` job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AspCallJob {
    /// Gateway both legs are dialled through (`{provider}` in the dial template).
    pub call_provider: Provider,
    /// The party the user wants to reach (side 1).
    pub callee_number: PhoneNumber,
    /// Caller id shown to the user's phone (side 0).
    pub caller_id_lega: PhoneNumber,
    /// Caller id shown to the callee (side 1).
    pub caller_id_legb: PhoneNumber,
    /// The user's own phone, rung first (side 0).
    pub caller_number: PhoneNumber,
    /// The call's id: its pub/sub channel and part of its Redis keys.
    pub dial_id: Id,
    /// The user's organisation (part of the Redis keys).
    pub org_id: Id,
    /// The user (part of the Redis keys).
    pub user_id: Id,
}

/// Why a job was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// The job is larger than [`MAX_JOB_BYTES`].
    #[error("job is {0} bytes, at most {MAX_JOB_BYTES}")]
    TooLarge(usize),
    /// The bytes are not JSON (including trailing commas and invalid UTF-8).
    #[error("not JSON: {0}")]
    NotJson(String),
    /// The JSON is not an object.
    #[error("not a JSON object")]
    NotObject,
    /// A required field is absent.
    #[error("missing field `{0}`")]
    Missing(&'static str),
    /// A field has the wrong JSON type.
    #[error("field `{field}` must be a {expected}, found {found}")]
    WrongType {
        /// The field.
        field: &'static str,
        /// The JSON type the field must have.
        expected: &'static str,
        /// The JSON type it had.
        found: &'static str,
    },
    /// `type` is a string but not `asp-call`.
    #[error("unsupported job type {0:?}")]
    UnsupportedType(String),
    /// A field broke its allow-list grammar.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
}

/// A job that will not be dialled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad job: {error}")]
pub struct BadJob {
    /// What was wrong (the first problem found).
    pub error: JobError,
    /// The job's `dial_id`, when it is present and valid: a `failure` can be
    /// published on it.
    pub dial_id: Option<Id>,
}

impl BadJob {
    /// The reason as text, for the `failure` cause and the dead letter.
    pub fn reason(&self) -> String {
        self.error.to_string()
    }
}

/// The JSON type name of a value, for error messages.
pub(crate) fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A required string field of a JSON object.
pub(crate) fn string_field<'a>(
    obj: &'a Map<String, Value>,
    field: &'static str,
) -> Result<&'a str, JobError> {
    match obj.get(field) {
        None => Err(JobError::Missing(field)),
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(JobError::WrongType {
            field,
            expected: "string",
            found: json_kind(other),
        }),
    }
}

/// Parses and validates one raw job.
pub fn parse(raw: &[u8]) -> Result<AspCallJob, BadJob> {
    if raw.len() > MAX_JOB_BYTES {
        return Err(BadJob {
            error: JobError::TooLarge(raw.len()),
            dial_id: None,
        });
    }
    let value: Value = serde_json::from_slice(raw).map_err(|e| BadJob {
        error: JobError::NotJson(e.to_string()),
        dial_id: None,
    })?;
    let Value::Object(obj) = value else {
        return Err(BadJob {
            error: JobError::NotObject,
            dial_id: None,
        });
    };
    // Take the dial_id first so every later error can still be reported on
    // the call's channel.
    let dial_id = string_field(&obj, "dial_id")
        .ok()
        .and_then(|s| Id::parse("dial_id", s).ok());
    from_object(&obj).map_err(|error| BadJob {
        error,
        dial_id: dial_id.clone(),
    })
}

fn from_object(obj: &Map<String, Value>) -> Result<AspCallJob, JobError> {
    let kind = string_field(obj, "type")?;
    if kind != ASP_CALL {
        return Err(JobError::UnsupportedType(kind.chars().take(64).collect()));
    }
    let phone = |field| -> Result<PhoneNumber, JobError> {
        Ok(PhoneNumber::parse(field, string_field(obj, field)?)?)
    };
    let id = |field| -> Result<Id, JobError> { Ok(Id::parse(field, string_field(obj, field)?)?) };
    Ok(AspCallJob {
        dial_id: id("dial_id")?,
        org_id: id("org_id")?,
        user_id: id("user_id")?,
        call_provider: Provider::parse("call_provider", string_field(obj, "call_provider")?)?,
        caller_number: phone("caller_number")?,
        callee_number: phone("callee_number")?,
        caller_id_lega: phone("caller_id_lega")?,
        caller_id_legb: phone("caller_id_legb")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::validate::{Rule, Violation};

    const FIELDS: [&str; 9] = [
        "type",
        "call_provider",
        "callee_number",
        "caller_id_lega",
        "caller_id_legb",
        "caller_number",
        "dial_id",
        "org_id",
        "user_id",
    ];

    fn good() -> Value {
        serde_json::json!({
            "type": "asp-call", "call_provider": "talk_call_provider",
            "callee_number": "14157697098", "caller_id_lega": "15105625882",
            "caller_id_legb": "14157697098", "caller_number": "15105625882",
            "dial_id": "talkiq_dial_id", "org_id": "talkiq_org_id",
            "user_id": "talkiq_user_id"
        })
    }

    fn with(field: &str, v: Value) -> Vec<u8> {
        let mut j = good();
        j[field] = v;
        serde_json::to_vec(&j).unwrap()
    }

    #[test]
    fn parses_the_spec_example() {
        let job = parse(&serde_json::to_vec(&good()).unwrap()).unwrap();
        assert_eq!(job.dial_id.as_str(), "talkiq_dial_id");
        assert_eq!(job.caller_number.as_str(), "15105625882");
        assert_eq!(job.callee_number.as_str(), "14157697098");
        assert_eq!(job.call_provider.as_str(), "talk_call_provider");
    }

    #[test]
    fn ignores_unknown_fields() {
        let job = parse(&with("priority", Value::from(7))).unwrap();
        assert_eq!(job.org_id.as_str(), "talkiq_org_id");
    }

    #[test]
    fn rejects_trailing_comma_and_non_json() {
        let trailing = br#"{"type":"asp-call","dial_id":"d",}"#;
        let e = parse(trailing).unwrap_err();
        assert!(matches!(e.error, JobError::NotJson(_)), "{e}");
        assert_eq!(e.dial_id, None);
        for raw in [&b"hello"[..], b"", b"\xff\xfe", b"{", b"{\"a\":1}x"] {
            assert!(matches!(
                parse(raw).unwrap_err().error,
                JobError::NotJson(_)
            ));
        }
        for raw in [&b"[]"[..], b"\"asp-call\"", b"null", b"42"] {
            assert_eq!(parse(raw).unwrap_err().error, JobError::NotObject);
        }
    }

    #[test]
    fn rejects_oversized_jobs() {
        let raw = vec![b' '; MAX_JOB_BYTES + 1];
        assert_eq!(
            parse(&raw).unwrap_err().error,
            JobError::TooLarge(MAX_JOB_BYTES + 1)
        );
    }

    #[test]
    fn each_missing_field_is_named() {
        for field in FIELDS {
            let mut j = good();
            j.as_object_mut().unwrap().remove(field);
            let e = parse(&serde_json::to_vec(&j).unwrap()).unwrap_err();
            assert_eq!(e.error, JobError::Missing(field));
            let expected_dial =
                (field != "dial_id").then(|| Id::parse("d", "talkiq_dial_id").unwrap());
            assert_eq!(e.dial_id, expected_dial, "{field}");
        }
    }

    #[test]
    fn each_wrong_type_is_named() {
        for field in FIELDS {
            for (v, found) in [
                (Value::from(14157697098u64), "number"),
                (Value::Null, "null"),
                (Value::Bool(true), "boolean"),
                (serde_json::json!(["1555"]), "array"),
                (serde_json::json!({"n": "1555"}), "object"),
            ] {
                let e = parse(&with(field, v)).unwrap_err();
                assert_eq!(
                    e.error,
                    JobError::WrongType {
                        field,
                        expected: "string",
                        found
                    }
                );
                assert!(e.reason().contains(field));
            }
        }
    }

    #[test]
    fn unsupported_type() {
        let e = parse(&with("type", Value::from("sms"))).unwrap_err();
        assert_eq!(e.error, JobError::UnsupportedType("sms".into()));
        assert!(e.dial_id.is_some());
    }

    #[test]
    fn bad_ids() {
        for field in ["dial_id", "org_id", "user_id"] {
            for bad in ["a.b", "a b", "", &"x".repeat(129)] {
                let e = parse(&with(field, Value::from(bad))).unwrap_err();
                match &e.error {
                    JobError::Invalid(v) => {
                        assert_eq!((v.field.as_ref(), v.rule), (field, Rule::Id))
                    }
                    other => panic!("{other:?}"),
                }
                assert_eq!(e.dial_id.is_some(), field != "dial_id");
            }
        }
    }

    #[test]
    fn dial_string_injection_in_every_number_and_provider() {
        let injections = [
            "1555,execute_on_answer=system x",
            "1555}",
            "{a=b}1555",
            "1555|sofia/gateway/evil/1666",
            "1555&park()",
            "1555 foo",
            "١٥٥٥",
            "1555${system(id)}",
            "1555\napi system x",
            "'1555'",
        ];
        for field in [
            "callee_number",
            "caller_id_lega",
            "caller_id_legb",
            "caller_number",
            "call_provider",
        ] {
            for bad in injections {
                let e = parse(&with(field, Value::from(bad))).unwrap_err();
                let JobError::Invalid(v) = &e.error else {
                    panic!("{field} {bad:?}: {e}");
                };
                assert_eq!(v.field, field);
                assert!(matches!(v.violation, Violation::BadChar { .. }));
                assert_eq!(e.dial_id.as_ref().map(Id::as_str), Some("talkiq_dial_id"));
            }
        }
    }
}
