//! Message envelopes from the queue and the job messages inside them.
//!
//! The envelope's `body` is a JSON *string* holding an array of job messages. Parsing is
//! forgiving where the reference is all-or-nothing: an element that is not an object or fails
//! to decode is recorded in [`RunnerScaleSetMessage::problems`] and skipped, so one bad element
//! does not take the others with it; an element of an unknown `messageType` is skipped silently
//! (new types appear over time). Order across types is preserved.

use std::borrow::Cow;
use std::fmt;

use jiff::Timestamp;
use serde::de::{self, DeserializeOwned, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::ids::{MessageId, RunnerRequestId};
use crate::types::{
    JobAssigned, JobAvailable, JobCompleted, JobMessageBase, JobStarted, RunnerScaleSetStatistic,
    nullable, string_or_number, timestamp,
};

/// The only envelope type the queue is known to send.
pub const JOB_MESSAGES_TYPE: &str = "RunnerScaleSetJobMessages";

/// One job message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobMessage {
    /// A job offered to the scale set (GHES): acquire it.
    Available(JobAvailable),
    /// A job assigned to the scale set.
    Assigned(JobAssigned),
    /// A job that started on a runner.
    Started(JobStarted),
    /// A job that finished, or was canceled before a runner took it.
    Completed(JobCompleted),
}

/// A message from the queue.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunnerScaleSetMessage {
    /// Id to acknowledge (delete) and to pass as the next `lastMessageId`.
    pub message_id: MessageId,
    /// Envelope type (always [`JOB_MESSAGES_TYPE`] for messages returned by the session client).
    pub message_type: String,
    /// Statistics at the time of the message; absent only from a misbehaving service.
    pub statistics: Option<RunnerScaleSetStatistic>,
    /// Job messages in the order they were sent.
    pub jobs: Vec<JobMessage>,
    /// Elements that could not be decoded, as `index: reason`.
    pub problems: Vec<String>,
}

impl RunnerScaleSetMessage {
    /// The `JobAvailable` messages.
    pub fn jobs_available(&self) -> impl Iterator<Item = &JobAvailable> {
        self.jobs.iter().filter_map(|j| match j {
            JobMessage::Available(a) => Some(a),
            _ => None,
        })
    }

    /// The `JobAssigned` messages.
    pub fn jobs_assigned(&self) -> impl Iterator<Item = &JobAssigned> {
        self.jobs.iter().filter_map(|j| match j {
            JobMessage::Assigned(a) => Some(a),
            _ => None,
        })
    }

    /// The `JobStarted` messages.
    pub fn jobs_started(&self) -> impl Iterator<Item = &JobStarted> {
        self.jobs.iter().filter_map(|j| match j {
            JobMessage::Started(s) => Some(s),
            _ => None,
        })
    }

    /// The `JobCompleted` messages.
    pub fn jobs_completed(&self) -> impl Iterator<Item = &JobCompleted> {
        self.jobs.iter().filter_map(|j| match j {
            JobMessage::Completed(c) => Some(c),
            _ => None,
        })
    }
}

/// What a 200 answer of the queue holds.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Envelope {
    /// A job-messages envelope (possibly with problems recorded).
    Message(RunnerScaleSetMessage),
    /// An envelope of another type, to acknowledge by id.
    Unsupported {
        /// Id to acknowledge (delete) the message by.
        message_id: MessageId,
        /// The envelope type the queue sent.
        message_type: String,
    },
}

/// Why a queue answer could not be read as a message at all: it is not a JSON object, or it has
/// no integer `messageId` to acknowledge it by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvelopeError {
    /// Where in the answer the problem is: `.` for the whole answer, `messageId` for the id.
    pub path: String,
    /// What is wrong there.
    pub message: String,
}

impl std::fmt::Display for EnvelopeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl std::error::Error for EnvelopeError {}

/// Decodes a 200 answer of the message queue as the session client does: `Ok(None)` for an
/// envelope of another type than [`JOB_MESSAGES_TYPE`], an error (`field: reason`) when not
/// even its id can be read. For benchmarks and tools that decode captured messages; not a
/// stable interface.
#[doc(hidden)]
pub fn decode(raw: &[u8]) -> Result<Option<RunnerScaleSetMessage>, String> {
    match parse_envelope(raw) {
        Ok(Envelope::Message(m)) => Ok(Some(m)),
        Ok(Envelope::Unsupported { .. }) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// Decodes the body of a 200 answer of the message queue, as
/// [`MessageSessionClient::get_message`](crate::MessageSessionClient::get_message) does.
///
/// Decoding goes in two steps, so that one bad field costs only that field: the id and type
/// first (without them the message cannot even be acknowledged, which is the only error), then
/// statistics and body, whose failures are recorded in [`RunnerScaleSetMessage::problems`].
/// Field names match case-insensitively; any input, however malformed, returns rather than
/// panics.
///
/// Straight from the bytes to the typed messages: the envelope's members are read as borrowed
/// raw JSON, each job message is decoded once into a flat wire struct and only the fields of
/// its type are read. No `serde_json::Value` tree is built, so the typed decode costs no more
/// than parsing the same bytes untyped.
///
/// # Errors
/// [`EnvelopeError`] when `raw` is not a JSON object or has no integer `messageId`.
pub fn parse_envelope(raw: &[u8]) -> Result<Envelope, EnvelopeError> {
    let fail = |path: &str, message: String| EnvelopeError {
        path: path.to_string(),
        message,
    };
    let members: Members<'_> = serde_json::from_slice(raw).map_err(|e| {
        let reason = if e.is_data() {
            "the message is not a JSON object".to_string()
        } else {
            format!("the message is not JSON: {e}")
        };
        fail(".", reason)
    })?;
    let message_id = members
        .get("messageId")
        .and_then(|v| serde_json::from_str::<i64>(v.get()).ok())
        .map(MessageId::new)
        .ok_or_else(|| fail("messageId", "missing or not an integer".to_string()))?;
    let message_type = members
        .get("messageType")
        .and_then(|v| serde_json::from_str::<String>(v.get()).ok())
        .unwrap_or_default();
    if message_type != JOB_MESSAGES_TYPE {
        return Ok(Envelope::Unsupported {
            message_id,
            message_type,
        });
    }
    let mut problems = Vec::new();
    let statistics = match members.get("statistics") {
        None => None,
        Some(v) => match serde_json::from_str::<RunnerScaleSetStatistic>(v.get()) {
            Ok(stats) => Some(stats),
            Err(e) => {
                problems.push(format!("statistics: {e}"));
                None
            }
        },
    };
    let jobs = match members.get("body") {
        None => Vec::new(),
        Some(v) => match serde_json::from_str::<String>(v.get()) {
            Ok(body) => match parse_body(&body) {
                Ok((jobs, element_problems)) => {
                    problems.extend(element_problems);
                    jobs
                }
                Err(problem) => {
                    problems.push(problem);
                    Vec::new()
                }
            },
            Err(_) => {
                problems.push(format!(
                    "body: expected a string holding a JSON array, found {}",
                    kind_of(v)
                ));
                Vec::new()
            }
        },
    };
    Ok(Envelope::Message(RunnerScaleSetMessage {
        message_id,
        message_type,
        statistics,
        jobs,
        problems,
    }))
}

/// What kind of JSON value `v` is, for a message.
fn kind_of(v: &RawValue) -> &'static str {
    match v.get().trim_start().as_bytes().first() {
        Some(b'n') => "null",
        Some(b't' | b'f') => "a boolean",
        Some(b'"') => "a string",
        Some(b'[') => "an array",
        Some(b'{') => "an object",
        _ => "a number",
    }
}

/// A JSON object's members as borrowed raw JSON, in order.
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'a> Members<'a> {
    /// The first member named `name` (ignoring case) that is not `null`.
    fn get(&self, name: &str) -> Option<&'a RawValue> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
            .filter(|v| v.get().trim() != "null")
    }
}

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Object;
        impl<'de> Visitor<'de> for Object {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members<'de>, A::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(Key(k)) = map.next_key()? {
                    members.push((k, map.next_value()?));
                }
                Ok(Members(members))
            }
        }
        d.deserialize_map(Object)
    }
}

/// An object key, borrowed unless it holds escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Name;
        impl<'de> Visitor<'de> for Name {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(Name)
    }
}

/// A job message as it comes, every type's fields flat: the shared ones decoded, the
/// type-specific ones kept raw until the type is known (so a bad field of another type is
/// no problem, as when each type is decoded on its own).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireJob<'a> {
    #[serde(default)]
    message_type: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    runner_request_id: RunnerRequestId,
    #[serde(default, deserialize_with = "nullable")]
    repository_name: String,
    #[serde(default, deserialize_with = "nullable")]
    owner_name: String,
    #[serde(default, deserialize_with = "string_or_number")]
    job_id: String,
    #[serde(default, deserialize_with = "nullable")]
    job_workflow_ref: String,
    #[serde(default, deserialize_with = "nullable")]
    job_display_name: String,
    #[serde(default, deserialize_with = "nullable")]
    workflow_run_id: i64,
    #[serde(default, deserialize_with = "nullable")]
    event_name: String,
    #[serde(default, deserialize_with = "nullable")]
    request_labels: Vec<String>,
    #[serde(default, deserialize_with = "timestamp::deserialize")]
    queue_time: Option<Timestamp>,
    #[serde(default, deserialize_with = "timestamp::deserialize")]
    scale_set_assign_time: Option<Timestamp>,
    #[serde(default, deserialize_with = "timestamp::deserialize")]
    runner_assign_time: Option<Timestamp>,
    #[serde(default, deserialize_with = "timestamp::deserialize")]
    finish_time: Option<Timestamp>,
    #[serde(default, borrow)]
    acquire_job_url: Option<&'a RawValue>,
    #[serde(default, borrow)]
    runner_id: Option<&'a RawValue>,
    #[serde(default, borrow)]
    runner_name: Option<&'a RawValue>,
    #[serde(default, borrow)]
    result: Option<&'a RawValue>,
}

/// A type-specific field: its default when absent or `null`.
fn field<T: DeserializeOwned + Default>(raw: Option<&RawValue>, name: &str) -> Result<T, String> {
    match raw {
        None => Ok(T::default()),
        Some(v) => serde_json::from_str::<Option<T>>(v.get())
            .map(Option::unwrap_or_default)
            .map_err(|e| format!("{name}: {e}")),
    }
}

impl WireJob<'_> {
    /// The job message of type `kind` (one of the four known ones).
    fn into_message(self, kind: &str) -> Result<JobMessage, String> {
        let (acquire_job_url, runner_id, runner_name, result) = (
            self.acquire_job_url,
            self.runner_id,
            self.runner_name,
            self.result,
        );
        let base = JobMessageBase {
            message_type: self.message_type.unwrap_or_default(),
            runner_request_id: self.runner_request_id,
            repository_name: self.repository_name,
            owner_name: self.owner_name,
            job_id: self.job_id,
            job_workflow_ref: self.job_workflow_ref,
            job_display_name: self.job_display_name,
            workflow_run_id: self.workflow_run_id,
            event_name: self.event_name,
            request_labels: self.request_labels,
            queue_time: self.queue_time,
            scale_set_assign_time: self.scale_set_assign_time,
            runner_assign_time: self.runner_assign_time,
            finish_time: self.finish_time,
        };
        Ok(match kind {
            "JobAvailable" => JobMessage::Available(JobAvailable {
                base,
                acquire_job_url: field(acquire_job_url, "acquireJobUrl")?,
            }),
            "JobAssigned" => JobMessage::Assigned(JobAssigned { base }),
            "JobStarted" => JobMessage::Started(JobStarted {
                base,
                runner_id: field(runner_id, "runnerId")?,
                runner_name: field(runner_name, "runnerName")?,
            }),
            _ => JobMessage::Completed(JobCompleted {
                base,
                result: field(result, "result")?,
                runner_id: field(runner_id, "runnerId")?,
                runner_name: field(runner_name, "runnerName")?,
            }),
        })
    }
}

/// The `messageType` of a job message, its name compared ignoring case; `None` when absent
/// or not a string.
fn message_type_of(element: &RawValue) -> Option<String> {
    let members: Members<'_> = serde_json::from_str(element.get()).ok()?;
    serde_json::from_str(members.get("messageType")?.get()).ok()
}

/// Decodes the job messages of an envelope body (the JSON array the envelope's `body` string
/// holds), as [`parse_envelope`] does: the decoded messages in order, and the elements that
/// could not be decoded as `index: reason`. An empty or `null` body holds no messages;
/// elements of an unknown `messageType` are skipped.
///
/// # Errors
/// A description when the body is not a JSON array; element failures go to the second list
/// instead.
pub fn parse_body(body: &str) -> Result<(Vec<JobMessage>, Vec<String>), String> {
    let trimmed = body.trim();
    if trimmed.is_empty() || trimmed == "null" {
        return Ok((Vec::new(), Vec::new()));
    }
    // The usual body: every element an object whose `messageType` is spelled as sent; one
    // pass. Anything else takes the element-by-element path below.
    if let Ok(wires) = serde_json::from_str::<Vec<WireJob<'_>>>(trimmed)
        && wires.iter().all(|w| w.message_type.is_some())
    {
        let mut jobs = Vec::with_capacity(wires.len());
        let mut problems = Vec::new();
        for (index, wire) in wires.into_iter().enumerate() {
            let kind = wire.message_type.clone().unwrap_or_default();
            match kind.as_str() {
                k @ ("JobAvailable" | "JobAssigned" | "JobStarted" | "JobCompleted") => {
                    match wire.into_message(k) {
                        Ok(job) => jobs.push(job),
                        Err(e) => problems.push(format!("{index} ({kind}): {e}")),
                    }
                }
                other => {
                    tracing::debug!(index, message_type = ?other, "skipping a job message of an unknown type");
                }
            }
        }
        return Ok((jobs, problems));
    }
    let elements: Vec<&RawValue> = serde_json::from_str(trimmed)
        .map_err(|e| format!("the message body is not a JSON array: {e}"))?;
    let mut jobs = Vec::with_capacity(elements.len());
    let mut problems = Vec::new();
    for (index, element) in elements.into_iter().enumerate() {
        if kind_of(element) != "an object" {
            problems.push(format!("{index}: not a JSON object"));
            continue;
        }
        let wire = serde_json::from_str::<WireJob<'_>>(element.get());
        // The name as sent is the usual case; another spelling, or a wire struct that did not
        // decode, takes a look ignoring case.
        let kind = match &wire {
            Ok(WireJob {
                message_type: Some(t),
                ..
            }) => Some(t.clone()),
            _ => message_type_of(element),
        };
        let decoded = match kind.as_deref() {
            Some(k @ ("JobAvailable" | "JobAssigned" | "JobStarted" | "JobCompleted")) => wire
                .map_err(|e| e.to_string())
                .and_then(|w| w.into_message(k)),
            other => {
                tracing::debug!(index, message_type = ?other, "skipping a job message of an unknown type");
                continue;
            }
        };
        match decoded {
            Ok(job) => jobs.push(job),
            Err(e) => problems.push(format!("{index} ({}): {e}", kind.unwrap_or_default())),
        }
    }
    Ok((jobs, problems))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{RunnerId, RunnerRequestId};

    // Behaviour 78
    #[test]
    fn parses_all_four_types_in_order() {
        let body = r#"[
          {"messageType":"JobAvailable","runnerRequestId":1,"acquireJobUrl":"https://a/1","requestLabels":["x"],"jobId":"j1","queueTime":"2025-01-01T00:00:00.1234567Z"},
          {"messageType":"JobAssigned","runnerRequestId":2},
          {"messageType":"SomethingNew","runnerRequestId":9},
          {"messageType":"JobStarted","runnerRequestId":3,"runnerId":30,"runnerName":"r-3"},
          {"runnerRequestId":10},
          {"messageType":"JobCompleted","runnerRequestId":4,"runnerId":40,"runnerName":"r-4","result":"succeeded"}
        ]"#;
        let (jobs, problems) = parse_body(body).expect("parses");
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(jobs.len(), 4);
        match &jobs[0] {
            JobMessage::Available(a) => {
                assert_eq!(a.base.runner_request_id, RunnerRequestId::new(1));
                assert_eq!(a.acquire_job_url, "https://a/1");
                assert_eq!(a.base.request_labels, vec!["x".to_string()]);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            matches!(&jobs[1], JobMessage::Assigned(a) if a.base.runner_request_id == RunnerRequestId::new(2))
        );
        assert!(
            matches!(&jobs[2], JobMessage::Started(s) if s.runner_id == RunnerId::new(30) && s.runner_name == "r-3")
        );
        assert!(
            matches!(&jobs[3], JobMessage::Completed(c) if c.result == "succeeded" && c.runner_name == "r-4")
        );
    }

    /// A clean body takes the one-pass path; the same elements beside a bad one take the
    /// element-by-element path; both decode them alike.
    #[test]
    fn both_paths_decode_alike() {
        let elements = [
            r#"{"messageType":"JobAvailable","runnerRequestId":1,"acquireJobUrl":"https://a/1","jobId":7,"queueTime":"2025-01-01T00:00:00.1234567Z"}"#,
            r#"{"messageType":"JobAssigned","runnerRequestId":2,"runnerId":"ignored for this type"}"#,
            r#"{"messageType":"Later","whatever":[1]}"#,
            r#"{"messageType":"JobStarted","runnerRequestId":3,"runnerId":30,"runnerName":"r-3","finishTime":"0001-01-01T00:00:00Z"}"#,
            r#"{"messageType":"JobCompleted","runnerRequestId":4,"runnerId":null,"result":"failed","requestLabels":null}"#,
        ];
        let clean = format!("[{}]", elements.join(","));
        let mixed = format!("[{},5]", elements.join(","));
        let (fast, none) = parse_body(&clean).expect("parses");
        let (slow, one) = parse_body(&mixed).expect("parses");
        assert!(none.is_empty(), "{none:?}");
        assert_eq!(one, vec!["5: not a JSON object".to_string()]);
        assert_eq!(fast.len(), 4);
        assert_eq!(fast, slow);
        assert!(
            matches!(&fast[0], JobMessage::Available(a) if a.base.job_id == "7" && a.base.queue_time.is_some())
        );
        assert!(matches!(&fast[2], JobMessage::Started(s) if s.base.finish_time.is_none()));
        // A bad field of the element's own type is a problem on either path.
        let (jobs, problems) =
            parse_body(r#"[{"messageType":"JobStarted","runnerId":"nope"}]"#).expect("parses");
        assert!(jobs.is_empty());
        assert_eq!(problems.len(), 1, "{problems:?}");
    }

    #[test]
    fn envelope_survives_bad_fields() {
        let raw = br#"{"messageId":7,"messageType":"RunnerScaleSetJobMessages","statistics":{"totalAssignedJobs":"three"},"body":"[{\"messageType\":\"JobAssigned\",\"runnerRequestId\":1}]"}"#;
        match parse_envelope(raw) {
            Ok(Envelope::Message(m)) => {
                assert_eq!(m.message_id, MessageId::new(7));
                assert_eq!(m.statistics, None);
                assert_eq!(m.jobs.len(), 1);
                assert_eq!(m.problems.len(), 1, "{:?}", m.problems);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            parse_envelope(br#"{"messageId":8,"messageType":"Other"}"#),
            Ok(Envelope::Unsupported { message_id, .. }) if message_id == MessageId::new(8)
        ));
        assert!(parse_envelope(br#"{"messageType":"RunnerScaleSetJobMessages"}"#).is_err());
        assert!(parse_envelope(b"").is_err());
        assert!(parse_envelope(br#"{"messageId":1,"#).is_err());
    }

    #[test]
    fn bad_elements_are_reported_not_fatal() {
        let body = r#"[5, {"messageType":"JobStarted","runnerId":"nope"}, {"messageType":"JobCompleted","runnerName":"ok"}]"#;
        let (jobs, problems) = parse_body(body).expect("array parses");
        assert_eq!(jobs.len(), 1);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(parse_body("{\"not\":\"array\"}").is_err());
        assert!(parse_body("").expect("empty is fine").0.is_empty());
    }
}
