//! Message envelopes from the queue and the job messages inside them.
//!
//! The envelope's `body` is a JSON *string* holding an array of job messages. Parsing is
//! forgiving where the reference is all-or-nothing: an element that is not an object or fails
//! to decode is recorded in [`RunnerScaleSetMessage::problems`] and skipped, so one bad element
//! does not take the others with it; an element of an unknown `messageType` is skipped silently
//! (new types appear over time). Order across types is preserved.

use serde::Deserialize;

use crate::ids::MessageId;
use crate::types::{JobAssigned, JobAvailable, JobCompleted, JobStarted, RunnerScaleSetStatistic};

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

/// Decodes the body of a 200 answer of the message queue, as
/// [`MessageSessionClient::get_message`](crate::MessageSessionClient::get_message) does.
///
/// Decoding goes in two steps, so that one bad field costs only that field: the id and type
/// first (without them the message cannot even be acknowledged, which is the only error), then
/// statistics and body, whose failures are recorded in [`RunnerScaleSetMessage::problems`].
/// Field names match case-insensitively; any input, however malformed, returns rather than
/// panics.
///
/// # Errors
/// [`EnvelopeError`] when `raw` is not a JSON object or has no integer `messageId`.
pub fn parse_envelope(raw: &[u8]) -> Result<Envelope, EnvelopeError> {
    let fail = |path: &str, message: String| EnvelopeError {
        path: path.to_string(),
        message,
    };
    let value: serde_json::Value = serde_json::from_slice(raw)
        .map_err(|e| fail(".", format!("the message is not JSON: {e}")))?;
    let serde_json::Value::Object(map) = value else {
        return Err(fail(".", "the message is not a JSON object".to_string()));
    };
    let field = |name: &str| {
        map.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
            .filter(|v| !v.is_null())
    };
    let message_id = field("messageId")
        .and_then(serde_json::Value::as_i64)
        .map(MessageId::new)
        .ok_or_else(|| fail("messageId", "missing or not an integer".to_string()))?;
    let message_type = field("messageType")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
        .to_string();
    if message_type != JOB_MESSAGES_TYPE {
        return Ok(Envelope::Unsupported {
            message_id,
            message_type,
        });
    }
    let mut problems = Vec::new();
    let statistics = match field("statistics") {
        None => None,
        Some(v) => match RunnerScaleSetStatistic::deserialize(v) {
            Ok(stats) => Some(stats),
            Err(e) => {
                problems.push(format!("statistics: {e}"));
                None
            }
        },
    };
    let jobs = match field("body") {
        None => Vec::new(),
        Some(serde_json::Value::String(body)) => match parse_body(body) {
            Ok((jobs, element_problems)) => {
                problems.extend(element_problems);
                jobs
            }
            Err(problem) => {
                problems.push(problem);
                Vec::new()
            }
        },
        Some(other) => {
            problems.push(format!(
                "body: expected a string holding a JSON array, found {}",
                kind_of(other)
            ));
            Vec::new()
        }
    };
    Ok(Envelope::Message(RunnerScaleSetMessage {
        message_id,
        message_type,
        statistics,
        jobs,
        problems,
    }))
}

fn kind_of(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
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
    let elements: Vec<serde_json::Value> = serde_json::from_str(trimmed)
        .map_err(|e| format!("the message body is not a JSON array: {e}"))?;
    let mut jobs = Vec::with_capacity(elements.len());
    let mut problems = Vec::new();
    for (index, element) in elements.into_iter().enumerate() {
        let Some(kind) = element.as_object().map(|o| {
            o.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("messageType"))
                .and_then(|(_, v)| v.as_str())
                .map(str::to_string)
        }) else {
            problems.push(format!("{index}: not a JSON object"));
            continue;
        };
        let decoded = match kind.as_deref() {
            Some("JobAvailable") => serde_json::from_value(element).map(JobMessage::Available),
            Some("JobAssigned") => serde_json::from_value(element).map(JobMessage::Assigned),
            Some("JobStarted") => serde_json::from_value(element).map(JobMessage::Started),
            Some("JobCompleted") => serde_json::from_value(element).map(JobMessage::Completed),
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
