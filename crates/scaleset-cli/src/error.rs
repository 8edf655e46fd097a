//! Exit codes and the final error line.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success (including `null` results) |
//! | 1 | anything else |
//! | 2 | usage or configuration error, detected before any request is sent |
//! | 3 | a named thing that must exist does not (runner group, scale set by id, runner by id) |
//! | 4 | conflict (`RunnerExists`, `SessionConflict`, a 409, a scale set name taken) |
//! | 5 | the runner is still running a job |
//! | 130 | interrupted by SIGINT/SIGTERM (`demo`; a second signal during any shutdown) |
//!
//! The last line on stderr is `error: <message>` in text mode, or one JSON object
//! `{"level":"error","kind",...}` in JSON mode. Messages come from the library's errors, which
//! never hold a token, a key or a JIT config.

use std::io::Write;

use actions_scaleset::Error;
use serde::Serialize;

use crate::globals::LogFormat;

/// Success.
pub(crate) const EXIT_OK: u8 = 0;
/// Anything not covered below.
pub(crate) const EXIT_FAILURE: u8 = 1;
/// Usage or configuration error.
pub(crate) const EXIT_USAGE: u8 = 2;
/// A named thing that must exist does not.
pub(crate) const EXIT_NOT_FOUND: u8 = 3;
/// Conflict.
pub(crate) const EXIT_CONFLICT: u8 = 4;
/// The runner is still running a job.
pub(crate) const EXIT_JOB_STILL_RUNNING: u8 = 5;
/// Interrupted by SIGINT/SIGTERM (128 + SIGINT, as shells report it).
pub(crate) const EXIT_INTERRUPTED: u8 = 130;

/// A failure of a command, with its exit code and what the error line shows.
#[derive(Debug)]
pub(crate) struct CliError {
    exit: u8,
    kind: String,
    message: String,
    status: Option<u16>,
    activity_id: Option<String>,
    github_request_id: Option<String>,
}

impl CliError {
    /// A failure of the library during `operation` (e.g. `scale-set get`).
    pub(crate) fn api(operation: &str, err: Error) -> CliError {
        let api = err.api_error();
        CliError {
            exit: exit_code_for(&err),
            kind: err.kind().as_str().to_string(),
            status: err.status(),
            activity_id: api.and_then(|a| a.activity_id()).map(str::to_string),
            github_request_id: api.and_then(|a| a.github_request_id()).map(str::to_string),
            message: format!("{operation}: {}", readable(&err)),
        }
    }

    fn new(exit: u8, kind: &str, message: impl Into<String>) -> CliError {
        CliError {
            exit,
            kind: kind.to_string(),
            message: message.into(),
            status: None,
            activity_id: None,
            github_request_id: None,
        }
    }

    /// A usage or configuration error (exit 2).
    pub(crate) fn config(kind: &str, message: impl Into<String>) -> CliError {
        CliError::new(EXIT_USAGE, kind, message)
    }

    /// A named thing that must exist does not (exit 3).
    pub(crate) fn not_found(kind: &str, message: impl Into<String>) -> CliError {
        CliError::new(EXIT_NOT_FOUND, kind, message)
    }

    /// Any other failure (exit 1).
    pub(crate) fn other(kind: &str, message: impl Into<String>) -> CliError {
        CliError::new(EXIT_FAILURE, kind, message)
    }

    /// Interrupted by a signal before the work was done (exit 130).
    pub(crate) fn interrupted(message: impl Into<String>) -> CliError {
        CliError::new(EXIT_INTERRUPTED, "Interrupted", message)
    }

    /// The process exit code.
    pub(crate) fn exit_code(&self) -> u8 {
        self.exit
    }

    /// The message of the error line.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn message(&self) -> &str {
        &self.message
    }

    /// The error line: `error: <message>`, or one JSON object in JSON mode. Always one line.
    pub(crate) fn line(&self, format: LogFormat) -> String {
        let message = self.message.replace(['\r', '\n'], " ");
        match format {
            LogFormat::Text => format!("error: {message}"),
            LogFormat::Json => {
                let line = JsonLine {
                    level: "error",
                    kind: &self.kind,
                    status: self.status,
                    message: &message,
                    activity_id: self.activity_id.as_deref(),
                    github_request_id: self.github_request_id.as_deref(),
                };
                // A struct of strings and numbers always serializes; the fallback keeps the
                // line JSON anyway.
                serde_json::to_string(&line)
                    .unwrap_or_else(|_| format!(r#"{{"level":"error","message":{message:?}}}"#))
            }
        }
    }

    /// Writes the error line to stderr.
    pub(crate) fn report(&self, format: LogFormat) {
        let mut stderr = std::io::stderr().lock();
        // Nothing more can be done when stderr itself is gone; the exit code still tells.
        let _ = writeln!(stderr, "{}", self.line(format));
        let _ = stderr.flush();
    }
}

/// The JSON error line, fields in the documented order.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonLine<'a> {
    level: &'static str,
    kind: &'a str,
    status: Option<u16>,
    message: &'a str,
    activity_id: Option<&'a str>,
    github_request_id: Option<&'a str>,
}

/// The words of the error line for a library error: what failed and why first, then where
/// it happened (method, URL, status, the service's request ids) in parentheses.
fn readable(err: &Error) -> String {
    if let Error::Transport {
        method,
        url,
        attempts,
        ..
    } = err
    {
        let text = err.to_string();
        let prefix = format!("request {method} {url} failed after {attempts} attempt(s): ");
        let cause = text.strip_prefix(&prefix).unwrap_or(&text);
        let plural = if *attempts == 1 { "" } else { "s" };
        return format!(
            "no answer from the server: {cause} ({method} {url}, {attempts} attempt{plural})"
        );
    }
    let api = match err {
        Error::Decode { .. } | Error::Protocol { .. } => None,
        e => e.api_error(),
    };
    let Some(api) = api else {
        return err.to_string();
    };
    // What the service (or the library, about an answer) said, in its own words.
    let said = api
        .exception()
        .map(|ex| ex.message.trim())
        .filter(|m| !m.is_empty())
        .or(api.detail())
        .or(Some(api.body().trim()).filter(|b| !b.is_empty() && b.len() <= 200))
        .unwrap_or_default()
        .trim_end_matches('.')
        .to_string();
    // What failed, for kinds whose service message may not say it.
    let words = match err {
        Error::SessionConflict(_) => Some(
            "another client holds the scale set's message session (wait for it with \
             --wait-for-session)",
        ),
        Error::Unauthorized(_) => Some("GitHub refused the credentials"),
        Error::JobStillRunning(_) => Some("the runner is running a job"),
        Error::MessageQueueTokenExpired(_) => Some("the message queue token was refused"),
        Error::SessionNotFound(_) => Some("the message session no longer exists"),
        Error::InvalidSession(_) => Some("the service returned a session that cannot be used"),
        Error::RateLimited(_) => Some("GitHub is rate limiting these requests"),
        Error::RunnerGroupNotFound(_) => Some("runner group not found"),
        Error::ScaleSetNotFound(_) => Some("scale set not found"),
        Error::RunnerNotFound(_) => Some("runner not found"),
        Error::RunnerExists(_) => Some("a runner with that name exists"),
        _ => None,
    };
    let what = match (words, said.as_str()) {
        (None, "") => "unexpected answer".to_string(),
        (Some(w), "") => w.to_string(),
        (None, said) => said.to_string(),
        // Not-found and exists messages of the service say what failed themselves.
        (Some(_), said)
            if matches!(
                err,
                Error::RunnerGroupNotFound(_)
                    | Error::ScaleSetNotFound(_)
                    | Error::RunnerNotFound(_)
                    | Error::RunnerExists(_)
            ) =>
        {
            said.to_string()
        }
        (Some(w), said) => format!("{w}: {said}"),
    };
    let status = api.status();
    let mut place = format!("{} {}", api.method(), api.url());
    // A success status is how the answer came, not what failed (an empty lookup is a 200).
    if !status.is_success() {
        place = format!("{status} from {place}");
    }
    if let Some(id) = api.activity_id() {
        place.push_str(&format!(", activity id {id}"));
    }
    if let Some(id) = api.github_request_id() {
        place.push_str(&format!(", request id {id}"));
    }
    format!("{what} ({place})")
}

/// Where a library error lands among the exit codes.
pub(crate) fn exit_code_for(err: &Error) -> u8 {
    match err {
        Error::InvalidConfigUrl { .. }
        | Error::InvalidCredentials(_)
        | Error::InvalidArgument(_)
        | Error::InvalidClientConfig(_) => EXIT_USAGE,
        Error::RunnerGroupNotFound(_) | Error::ScaleSetNotFound(_) | Error::RunnerNotFound(_) => {
            EXIT_NOT_FOUND
        }
        Error::RunnerExists(_) | Error::SessionConflict(_) => EXIT_CONFLICT,
        Error::JobStillRunning(_) => EXIT_JOB_STILL_RUNNING,
        e if is_conflict(e) => EXIT_CONFLICT,
        _ => EXIT_FAILURE,
    }
}

fn is_conflict(err: &Error) -> bool {
    err.status() == Some(409)
        || err.exception().is_some_and(|ex| {
            ["AlreadyExists", "Duplicate", "Conflict"]
                .iter()
                .any(|name| ex.is(name))
        })
}

/// Attaches the operation name to a library result.
pub(crate) trait OrCli<T> {
    /// Maps the library error to a [`CliError`] whose message starts with `operation`.
    fn or_cli(self, operation: &str) -> Result<T, CliError>;
}

impl<T> OrCli<T> for Result<T, Error> {
    fn or_cli(self, operation: &str) -> Result<T, CliError> {
        self.map_err(|e| CliError::api(operation, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_errors_exit_2() {
        let e = CliError::api(
            "config parse",
            Error::InvalidConfigUrl {
                url: "x".into(),
                reason: "bad".into(),
            },
        );
        assert_eq!(e.exit_code(), EXIT_USAGE);
        assert_eq!(e.kind, "InvalidConfigUrl");
        assert!(e.message().starts_with("config parse: "));
        assert_eq!(EXIT_OK, 0);
    }

    #[test]
    fn other_errors_exit_1() {
        let e = CliError::api("listen", Error::Cancelled);
        assert_eq!(e.exit_code(), EXIT_FAILURE);
    }

    #[test]
    fn the_json_line_has_every_field() {
        let e = CliError::not_found("ScaleSetNotFound", "scale-set get: no scale set\nwith id 3");
        let line = e.line(LogFormat::Json);
        assert!(!line.contains('\n'));
        assert!(line.starts_with(r#"{"level":"error","kind":"ScaleSetNotFound","status":null,"#));
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON");
        assert_eq!(v["level"], "error");
        assert_eq!(v["kind"], "ScaleSetNotFound");
        assert!(v["status"].is_null());
        assert!(v["activityId"].is_null());
        assert!(v["githubRequestId"].is_null());
        assert_eq!(v["message"], "scale-set get: no scale set with id 3");
        assert_eq!(
            e.line(LogFormat::Text),
            "error: scale-set get: no scale set with id 3"
        );
    }
}
