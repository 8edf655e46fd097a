//! The one error type of the library, with a variant per failure a caller acts on.
//!
//! Every failure that came from an HTTP answer keeps the request method, the URL (with any
//! user-info removed), the status, the `ActivityId` and `X-GitHub-Request-Id` headers, the
//! service exception (`typeName` and `message`) when there was one, and a short excerpt of the
//! body. Nothing here holds a token, a key or a JIT config: the body excerpt of a success
//! answer that carries credentials (tokens, sessions, JIT configs) is withheld.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Method, StatusCode};
use url::Url;

/// How many bytes of a response body an error keeps.
const BODY_EXCERPT_LIMIT: usize = 1024;

/// A result with the library's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An exception reported by the Actions service in an error body
/// (`{"typeName": "...", "message": "..."}`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceException {
    /// The .NET type name, e.g.
    /// `GitHub.Actions.Runtime.WebApi.RunnerScaleSetSessionConflictException, GitHub.Actions.Runtime.WebApi`.
    pub type_name: String,
    /// The human-readable message.
    pub message: String,
}

impl ServiceException {
    /// Whether the exception's type name contains `name` (the service sends fully qualified
    /// names, so matching is by substring, as the reference does).
    pub fn is(&self, name: &str) -> bool {
        self.type_name.contains(name)
    }
}

impl fmt::Display for ServiceException {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.type_name, self.message)
    }
}

/// What is known about a request that got an unsuccessful HTTP answer.
#[derive(Clone, Debug)]
pub struct ApiError {
    method: Method,
    url: String,
    status: StatusCode,
    activity_id: Option<String>,
    github_request_id: Option<String>,
    exception: Option<ServiceException>,
    body: String,
    body_is_json_error: bool,
    retry_after: Option<Duration>,
    detail: Option<String>,
}

impl ApiError {
    /// Builds the context of a failed request from its response parts, as the client does for
    /// every unsuccessful answer: the URL without user-info, the `ActivityId` and
    /// `X-GitHub-Request-Id` headers, the service exception when the body is a JSON object with
    /// `typeName` or `message` (matched case-insensitively; not looked for in a `text/plain`
    /// body), and an excerpt of at most 1 KiB of the body, cut at a character boundary.
    ///
    /// Any body, however malformed (not UTF-8, not JSON), gives an `ApiError`. A body that may
    /// hold credentials must not be passed here: the excerpt keeps it.
    pub fn new(
        method: &Method,
        url: &Url,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
    ) -> ApiError {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        let text = String::from_utf8_lossy(body);
        let is_plain = header("content-type").is_some_and(|ct| ct.contains("text/plain"));
        let (exception, body_is_json_error) = if body.is_empty() || is_plain {
            (None, false)
        } else {
            match serde_json::from_slice::<serde_json::Value>(body) {
                Ok(serde_json::Value::Object(map)) => {
                    let field = |k: &str| {
                        map.iter()
                            .find(|(key, _)| key.eq_ignore_ascii_case(k))
                            .and_then(|(_, v)| v.as_str())
                            .unwrap_or_default()
                            .to_string()
                    };
                    let type_name = field("typeName");
                    let message = field("message");
                    if type_name.is_empty() && message.is_empty() {
                        (None, false)
                    } else {
                        (Some(ServiceException { type_name, message }), false)
                    }
                }
                Ok(_) => (None, false),
                Err(_) => (None, true),
            }
        };
        ApiError {
            method: method.clone(),
            url: redact_url(url),
            status,
            activity_id: header("activityid"),
            github_request_id: header("x-github-request-id"),
            exception,
            body: excerpt(&text),
            body_is_json_error,
            retry_after: None,
            detail: None,
        }
    }

    pub(crate) fn with_retry_after(mut self, retry_after: Option<Duration>) -> ApiError {
        self.retry_after = retry_after;
        self
    }

    pub(crate) fn with_detail(mut self, detail: impl Into<String>) -> ApiError {
        self.detail = Some(detail.into());
        self
    }

    /// The HTTP method of the request.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The request URL (user-info removed; tokens never travel in URLs).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The HTTP status of the final answer.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The `ActivityId` header of the Actions service, when present.
    pub fn activity_id(&self) -> Option<&str> {
        self.activity_id.as_deref()
    }

    /// The `X-GitHub-Request-Id` header of the GitHub API, when present.
    pub fn github_request_id(&self) -> Option<&str> {
        self.github_request_id.as_deref()
    }

    /// The service exception from the body, when the body was one.
    pub fn exception(&self) -> Option<&ServiceException> {
        self.exception.as_ref()
    }

    /// The start of the response body (at most 1 KiB, byte-order mark removed).
    pub fn body(&self) -> &str {
        &self.body
    }

    /// What this library found wrong with an answer the service meant as a success (e.g.
    /// `no runner group found with name "gpu"` for an empty lookup), when it did.
    pub fn detail(&self) -> Option<&str> {
        self.detail.as_deref()
    }

    /// The delay the service asked for with `Retry-After`, when it gave one.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// What the body says, as the tail of the error text.
    fn tail(&self) -> String {
        let mut out = String::new();
        if let Some(detail) = &self.detail {
            out.push_str(detail);
            out.push_str(": ");
        }
        if let Some(ex) = &self.exception {
            out.push_str(&ex.to_string());
        } else if self.body.trim().is_empty() {
            out.push_str("unknown error");
        } else if self.body_is_json_error {
            out.push_str(&format!(
                "failed to unmarshal error response body: {:?}",
                self.body
            ));
        } else {
            out.push_str(&self.body);
        }
        out
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "request {} {} failed (status=\"{}",
            self.method,
            self.url,
            self.status.as_u16()
        )?;
        if let Some(reason) = self.status.canonical_reason() {
            write!(f, " {reason}")?;
        }
        f.write_str("\"")?;
        if let Some(id) = &self.activity_id {
            write!(f, ", activity_id=\"{id}\"")?;
        }
        if let Some(id) = &self.github_request_id {
            write!(f, ", github_request_id=\"{id}\"")?;
        }
        f.write_str(")")
    }
}

/// The failures of this library.
///
/// Match on the variant, or ask [`Error::kind`], [`Error::status`] and [`Error::is_retryable`].
/// Variants that carry an [`ApiError`] came from an HTTP answer and keep its context.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No runner group has the requested name.
    #[error("{0}: {tail}", tail = .0.tail())]
    RunnerGroupNotFound(Box<ApiError>),
    /// The runner does not exist (`AgentNotFoundException`).
    #[error("{0}: runner not found: {tail}", tail = .0.tail())]
    RunnerNotFound(Box<ApiError>),
    /// A runner with that name already exists (`AgentExistsException`).
    #[error("{0}: runner exists: {tail}", tail = .0.tail())]
    RunnerExists(Box<ApiError>),
    /// The runner is running a job and cannot be removed now (`JobStillRunningException`).
    #[error("{0}: job still running: {tail}", tail = .0.tail())]
    JobStillRunning(Box<ApiError>),
    /// The message-queue token was refused (401 on a queue or acquire call), even after one
    /// session refresh.
    #[error("{0}: message queue token expired: {tail}", tail = .0.tail())]
    MessageQueueTokenExpired(Box<ApiError>),
    /// Another client holds the scale set's message session
    /// (409 `RunnerScaleSetSessionConflictException`).
    #[error("{0}: session conflict: {tail}", tail = .0.tail())]
    SessionConflict(Box<ApiError>),
    /// The message session no longer exists (evicted or expired).
    #[error("{0}: session not found: {tail}", tail = .0.tail())]
    SessionNotFound(Box<ApiError>),
    /// The scale set does not exist (`RunnerScaleSetNotFoundException`, or 404 on a scale-set path).
    #[error("{0}: scale set not found: {tail}", tail = .0.tail())]
    ScaleSetNotFound(Box<ApiError>),
    /// GitHub refused the credentials (401 or 403 from the installation-token,
    /// registration-token or runner-registration call, or a tenant 401 even with a fresh
    /// admin token): the token was revoked, lacks a scope, or the App was uninstalled.
    #[error("{0}: credentials refused: {tail}", tail = .0.tail())]
    Unauthorized(Box<ApiError>),
    /// The service returned a session that cannot be used (no id, no message queue URL or
    /// token); replace it with a new one.
    #[error("{0}: invalid session: {tail}", tail = .0.tail())]
    InvalidSession(Box<ApiError>),
    /// The service answered 429 (after every retry); [`ApiError::retry_after`] has its delay.
    #[error("{0}: rate limited: {tail}", tail = .0.tail())]
    RateLimited(Box<ApiError>),
    /// Any other exception the service reported (name and message in [`ApiError::exception`]).
    #[error("{0}: {tail}", tail = .0.tail())]
    Service(Box<ApiError>),
    /// An unexpected status without a service exception.
    #[error("{0}: unexpected status code: {tail}", tail = .0.tail())]
    UnexpectedStatus(Box<ApiError>),
    /// No answer: connection refused or dropped, timeout, TLS failure.
    #[error("request {method} {url} failed after {attempts} attempt(s): {cause}", cause = transport_cause(.source.as_ref()))]
    Transport {
        /// HTTP method.
        method: Method,
        /// Request URL (user-info removed).
        url: String,
        /// How many attempts were made.
        attempts: u32,
        /// The transport error.
        #[source]
        source: Arc<reqwest::Error>,
    },
    /// A success answer whose body could not be decoded.
    #[error("{response}: cannot decode the response at `{path}`: {message}; body starts with {excerpt:?}", excerpt = .response.body())]
    Decode {
        /// The request and its answer.
        response: Box<ApiError>,
        /// The JSON path of the field that failed (`.` for the document).
        path: String,
        /// What was wrong.
        message: String,
    },
    /// An answer that decoded but broke the protocol (a `count` that disagrees with `value`,
    /// several scale sets under one name, a registration without a URL...).
    #[error("{}{message}", response.as_ref().map(|r| format!("{r}: ")).unwrap_or_default())]
    Protocol {
        /// The request and its answer, when the failure belongs to one.
        response: Option<Box<ApiError>>,
        /// What was wrong.
        message: String,
    },
    /// The queue sent an envelope of a type this library does not know; acknowledge it by
    /// `message_id` so it is not redelivered forever.
    #[error("unsupported message type {message_type:?} (message {message_id})")]
    UnsupportedMessage {
        /// The message id.
        message_id: crate::ids::MessageId,
        /// The envelope type received.
        message_type: String,
    },
    /// The operation was cancelled by the caller.
    #[error("cancelled")]
    Cancelled,
    /// An operation did not finish within its own deadline.
    #[error("{0} timed out")]
    Timeout(String),
    /// The config URL does not name an enterprise, organization or repository.
    #[error("invalid config URL {url:?}: {reason}")]
    InvalidConfigUrl {
        /// The URL as given.
        url: String,
        /// Why it was refused.
        reason: String,
    },
    /// Credentials are missing or malformed (empty token, bad PEM, missing App fields).
    #[error("invalid credentials: {0}")]
    InvalidCredentials(String),
    /// A caller-supplied argument is invalid (no request was sent).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The HTTP client could not be built (bad CA certificate, client certificate or key,
    /// proxy URL...).
    #[error("invalid client configuration: {0}")]
    InvalidClientConfig(String),
    /// A caller-supplied credential source failed: a [`JwtSigner`](crate::JwtSigner) (a KMS or
    /// HSM that did not answer) or a [`TokenProvider`](crate::TokenProvider) (a vault, a token
    /// file that cannot be read). Retryable: the next call asks the source again.
    #[error("the {what} failed: {cause}", cause = chain(.source.as_ref()))]
    CredentialSource {
        /// Which source failed, e.g. `GitHub App JWT signer`.
        what: String,
        /// The source's own error.
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync + 'static>,
    },
}

/// The kind of an [`Error`], for callers that want a plain value to match or print.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// See [`Error::RunnerGroupNotFound`].
    RunnerGroupNotFound,
    /// See [`Error::RunnerNotFound`].
    RunnerNotFound,
    /// See [`Error::RunnerExists`].
    RunnerExists,
    /// See [`Error::JobStillRunning`].
    JobStillRunning,
    /// See [`Error::MessageQueueTokenExpired`].
    MessageQueueTokenExpired,
    /// See [`Error::SessionConflict`].
    SessionConflict,
    /// See [`Error::SessionNotFound`].
    SessionNotFound,
    /// See [`Error::ScaleSetNotFound`].
    ScaleSetNotFound,
    /// See [`Error::Unauthorized`].
    Unauthorized,
    /// See [`Error::InvalidSession`].
    InvalidSession,
    /// See [`Error::RateLimited`].
    RateLimited,
    /// See [`Error::Service`].
    Service,
    /// See [`Error::UnexpectedStatus`].
    UnexpectedStatus,
    /// See [`Error::Transport`].
    Transport,
    /// See [`Error::Decode`].
    Decode,
    /// See [`Error::Protocol`].
    Protocol,
    /// See [`Error::UnsupportedMessage`].
    UnsupportedMessage,
    /// See [`Error::Timeout`].
    Timeout,
    /// See [`Error::Cancelled`].
    Cancelled,
    /// See [`Error::InvalidConfigUrl`].
    InvalidConfigUrl,
    /// See [`Error::InvalidCredentials`].
    InvalidCredentials,
    /// See [`Error::InvalidArgument`].
    InvalidArgument,
    /// See [`Error::InvalidClientConfig`].
    InvalidClientConfig,
    /// See [`Error::CredentialSource`].
    CredentialSource,
}

impl ErrorKind {
    /// The kind's name, e.g. `SessionConflict`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::RunnerGroupNotFound => "RunnerGroupNotFound",
            ErrorKind::RunnerNotFound => "RunnerNotFound",
            ErrorKind::RunnerExists => "RunnerExists",
            ErrorKind::JobStillRunning => "JobStillRunning",
            ErrorKind::MessageQueueTokenExpired => "MessageQueueTokenExpired",
            ErrorKind::SessionConflict => "SessionConflict",
            ErrorKind::SessionNotFound => "SessionNotFound",
            ErrorKind::ScaleSetNotFound => "ScaleSetNotFound",
            ErrorKind::Unauthorized => "Unauthorized",
            ErrorKind::InvalidSession => "InvalidSession",
            ErrorKind::RateLimited => "RateLimited",
            ErrorKind::Service => "Service",
            ErrorKind::UnexpectedStatus => "UnexpectedStatus",
            ErrorKind::Transport => "Transport",
            ErrorKind::Decode => "Decode",
            ErrorKind::Protocol => "Protocol",
            ErrorKind::UnsupportedMessage => "UnsupportedMessage",
            ErrorKind::Timeout => "Timeout",
            ErrorKind::Cancelled => "Cancelled",
            ErrorKind::InvalidConfigUrl => "InvalidConfigUrl",
            ErrorKind::InvalidCredentials => "InvalidCredentials",
            ErrorKind::InvalidArgument => "InvalidArgument",
            ErrorKind::InvalidClientConfig => "InvalidClientConfig",
            ErrorKind::CredentialSource => "CredentialSource",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Error {
    /// The kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::RunnerGroupNotFound(_) => ErrorKind::RunnerGroupNotFound,
            Error::RunnerNotFound(_) => ErrorKind::RunnerNotFound,
            Error::RunnerExists(_) => ErrorKind::RunnerExists,
            Error::JobStillRunning(_) => ErrorKind::JobStillRunning,
            Error::MessageQueueTokenExpired(_) => ErrorKind::MessageQueueTokenExpired,
            Error::SessionConflict(_) => ErrorKind::SessionConflict,
            Error::SessionNotFound(_) => ErrorKind::SessionNotFound,
            Error::ScaleSetNotFound(_) => ErrorKind::ScaleSetNotFound,
            Error::Unauthorized(_) => ErrorKind::Unauthorized,
            Error::InvalidSession(_) => ErrorKind::InvalidSession,
            Error::RateLimited(_) => ErrorKind::RateLimited,
            Error::Service(_) => ErrorKind::Service,
            Error::UnexpectedStatus(_) => ErrorKind::UnexpectedStatus,
            Error::Transport { .. } => ErrorKind::Transport,
            Error::Decode { .. } => ErrorKind::Decode,
            Error::Protocol { .. } => ErrorKind::Protocol,
            Error::UnsupportedMessage { .. } => ErrorKind::UnsupportedMessage,
            Error::Timeout(_) => ErrorKind::Timeout,
            Error::Cancelled => ErrorKind::Cancelled,
            Error::InvalidConfigUrl { .. } => ErrorKind::InvalidConfigUrl,
            Error::InvalidCredentials(_) => ErrorKind::InvalidCredentials,
            Error::InvalidArgument(_) => ErrorKind::InvalidArgument,
            Error::InvalidClientConfig(_) => ErrorKind::InvalidClientConfig,
            Error::CredentialSource { .. } => ErrorKind::CredentialSource,
        }
    }

    /// The request context, for errors that came from an HTTP answer.
    pub fn api_error(&self) -> Option<&ApiError> {
        match self {
            Error::RunnerGroupNotFound(e)
            | Error::RunnerNotFound(e)
            | Error::RunnerExists(e)
            | Error::JobStillRunning(e)
            | Error::MessageQueueTokenExpired(e)
            | Error::SessionConflict(e)
            | Error::SessionNotFound(e)
            | Error::ScaleSetNotFound(e)
            | Error::Unauthorized(e)
            | Error::InvalidSession(e)
            | Error::RateLimited(e)
            | Error::Service(e)
            | Error::UnexpectedStatus(e) => Some(e),
            Error::Decode { response, .. } => Some(response),
            Error::Protocol { response, .. } => response.as_deref(),
            _ => None,
        }
    }

    /// The HTTP status of the answer, when there was one.
    pub fn status(&self) -> Option<u16> {
        self.api_error().map(|e| e.status().as_u16())
    }

    /// The service exception, when the service reported one.
    pub fn exception(&self) -> Option<&ServiceException> {
        self.api_error().and_then(ApiError::exception)
    }

    /// Whether trying the same call again later may succeed: transport failures (except TLS
    /// certificate rejections), timeouts, a failing credential source, 429, and 5xx other than
    /// 501.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::RateLimited(_) => true,
            Error::Transport { source, .. } => !is_certificate_error(source),
            Error::Timeout(_) | Error::CredentialSource { .. } => true,
            Error::Service(e) | Error::UnexpectedStatus(e) => is_retryable_status(e.status()),
            _ => false,
        }
    }

    /// Builds the error for an unsuccessful answer, classified by the service exception's type
    /// name first (for example `AgentExistsException` gives [`Error::RunnerExists`]) and the
    /// status second (429 gives [`Error::RateLimited`]); another exception gives
    /// [`Error::Service`], no exception [`Error::UnexpectedStatus`].
    pub fn from_response(api: ApiError) -> Error {
        let api = Box::new(api);
        if let Some(ex) = api.exception() {
            if ex.is("AgentExistsException") {
                return Error::RunnerExists(api);
            }
            if ex.is("AgentNotFoundException") {
                return Error::RunnerNotFound(api);
            }
            if ex.is("JobStillRunningException") {
                return Error::JobStillRunning(api);
            }
            if ex.is("RunnerScaleSetSessionConflictException") {
                return Error::SessionConflict(api);
            }
            if ex.is("RunnerScaleSetSessionExpiredException") {
                return Error::SessionNotFound(api);
            }
            if ex.is("RunnerScaleSetNotFoundException") {
                return Error::ScaleSetNotFound(api);
            }
        }
        if api.status() == StatusCode::TOO_MANY_REQUESTS {
            return Error::RateLimited(api);
        }
        if api.exception().is_some_and(|e| !e.type_name.is_empty()) {
            Error::Service(api)
        } else {
            Error::UnexpectedStatus(api)
        }
    }
}

pub(crate) fn is_retryable_status(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS
        || (status.is_server_error() && status != StatusCode::NOT_IMPLEMENTED)
}

pub(crate) fn is_certificate_error(err: &reqwest::Error) -> bool {
    let text = chain(err).to_ascii_lowercase();
    text.contains("certificate")
        || text.contains("unknownissuer")
        || text.contains("unknown issuer")
}

/// The cause of a transport failure, with a hint when the server asked for a TLS client
/// certificate that was not given.
fn transport_cause(err: &reqwest::Error) -> String {
    let text = chain(err);
    if text.to_ascii_lowercase().contains("certificaterequired") {
        format!(
            "{text} (the server requires a TLS client certificate: give one with \
             ClientBuilder::client_certificate_pem)"
        )
    } else {
        text
    }
}

/// Renders an error and all its sources, `a: b: c`.
pub(crate) fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// A URL as text with any user name and password removed.
pub(crate) fn redact_url(url: &Url) -> String {
    if url.username().is_empty() && url.password().is_none() {
        return url.to_string();
    }
    let mut clean = url.clone();
    // Both setters only fail for URLs that cannot have credentials, which then have none.
    let _ = clean.set_username("");
    let _ = clean.set_password(None);
    clean.to_string()
}

fn excerpt(text: &str) -> String {
    if text.len() <= BODY_EXCERPT_LIMIT {
        return text.to_string();
    }
    let mut end = BODY_EXCERPT_LIMIT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};

    fn url() -> Url {
        Url::parse("https://tenant.example/_apis/runtime/runnerscalesets/1?api-version=6.0-preview")
            .expect("static URL")
    }

    fn api(status: u16, headers: &[(&str, &str)], body: &str) -> ApiError {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(
                http::HeaderName::from_bytes(k.as_bytes()).expect("test header name"),
                HeaderValue::from_str(v).expect("test header value"),
            );
        }
        ApiError::new(
            &Method::GET,
            &url(),
            StatusCode::from_u16(status).expect("test status"),
            &map,
            body.as_bytes(),
        )
    }

    // Behaviour 94
    #[test]
    fn exception_text_has_name_and_message() {
        let ex = ServiceException {
            type_name: "SomeException".into(),
            message: "went wrong".into(),
        };
        let text = ex.to_string();
        assert!(text.contains("SomeException") && text.contains("went wrong"));
    }

    // Behaviour 96, 97, 99
    #[test]
    fn empty_body_is_unknown_error_with_ids() {
        let e = Error::from_response(api(
            404,
            &[
                ("ActivityId", "activity-id"),
                ("X-GitHub-Request-Id", "request-id"),
                (CONTENT_LENGTH.as_str(), "0"),
            ],
            "",
        ));
        let text = e.to_string();
        assert!(text.contains("status=\"404 Not Found\""), "{text}");
        assert!(text.contains("activity_id=\"activity-id\""), "{text}");
        assert!(text.contains("github_request_id=\"request-id\""), "{text}");
        assert!(text.contains("unknown error"), "{text}");
        assert_eq!(e.status(), Some(404));
        assert_eq!(
            e.api_error().and_then(ApiError::activity_id),
            Some("activity-id")
        );
        assert_eq!(
            e.api_error().and_then(ApiError::github_request_id),
            Some("request-id")
        );
    }

    // Behaviour 100
    #[test]
    fn text_plain_body_is_included() {
        let e = Error::from_response(api(
            400,
            &[(CONTENT_TYPE.as_str(), "text/plain")],
            "example plain text error",
        ));
        let text = e.to_string();
        assert!(
            text.contains("status=\"400 Bad Request\"")
                && text.contains("example plain text error"),
            "{text}"
        );
        assert_eq!(e.kind(), ErrorKind::UnexpectedStatus);
    }

    // Behaviour 102, 103, 104, 48, 52
    #[test]
    fn known_exceptions_map_to_kinds() {
        let cases = [
            (
                409,
                "GitHub.DistributedTask.WebApi.AgentExistsException, GitHub.DistributedTask.WebApi",
                ErrorKind::RunnerExists,
            ),
            (404, "AgentNotFoundException", ErrorKind::RunnerNotFound),
            (400, "JobStillRunningException", ErrorKind::JobStillRunning),
            (
                409,
                "GitHub.Actions.Runtime.WebApi.RunnerScaleSetSessionConflictException, GitHub.Actions.Runtime.WebApi",
                ErrorKind::SessionConflict,
            ),
            (
                400,
                "GitHub.Actions.Runtime.WebApi.RunnerScaleSetSessionExpiredException, GitHub.Actions.Runtime.WebApi",
                ErrorKind::SessionNotFound,
            ),
            (
                404,
                "RunnerScaleSetNotFoundException",
                ErrorKind::ScaleSetNotFound,
            ),
        ];
        for (status, name, kind) in cases {
            let body = format!(r#"{{"typeName":"{name}","message":"the message"}}"#);
            let e = Error::from_response(api(status, &[], &body));
            assert_eq!(e.kind(), kind, "{name}");
            assert!(e.to_string().contains("the message"));
            assert_eq!(e.exception().map(|x| x.type_name.as_str()), Some(name));
        }
    }

    // Behaviour 105
    #[test]
    fn invalid_json_body() {
        let e = Error::from_response(api(
            400,
            &[(CONTENT_TYPE.as_str(), "application/json")],
            "not-json",
        ));
        let text = e.to_string();
        assert!(
            text.contains("failed to unmarshal error response body") && text.contains("not-json"),
            "{text}"
        );
    }

    // Behaviour 106, 42
    #[test]
    fn unknown_exception_is_extractable() {
        let e = Error::from_response(api(
            400,
            &[],
            r#"{"typeName":"SomeException","message":"test error"}"#,
        ));
        assert_eq!(e.kind(), ErrorKind::Service);
        let ex = e.exception().expect("exception kept");
        assert_eq!(
            (ex.type_name.as_str(), ex.message.as_str()),
            ("SomeException", "test error")
        );
        assert!(e.to_string().contains("test error"));
        let only_message = Error::from_response(api(400, &[], r#"{"message":"test error"}"#));
        assert!(only_message.to_string().contains("test error"));
        assert_eq!(only_message.kind(), ErrorKind::UnexpectedStatus);
    }

    #[test]
    fn retryability() {
        assert!(Error::from_response(api(503, &[], "")).is_retryable());
        assert!(Error::from_response(api(500, &[], "")).is_retryable());
        assert!(!Error::from_response(api(501, &[], "")).is_retryable());
        assert!(Error::from_response(api(429, &[], "")).is_retryable());
        assert_eq!(
            Error::from_response(api(429, &[], "")).kind(),
            ErrorKind::RateLimited
        );
        assert!(!Error::from_response(api(404, &[], "")).is_retryable());
        assert!(!Error::from_response(api(409, &[], "")).is_retryable());
    }

    #[test]
    fn urls_lose_user_info() {
        let u = Url::parse("https://user:secret-pass@example.com/x").expect("static URL");
        assert_eq!(redact_url(&u), "https://example.com/x");
    }

    #[test]
    fn long_bodies_are_cut() {
        let body = "é".repeat(2000);
        let e = api(500, &[], &body);
        assert!(e.body().len() <= BODY_EXCERPT_LIMIT + 4);
    }
}
