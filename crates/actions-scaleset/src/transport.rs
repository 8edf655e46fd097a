//! Sending one logical request: headers, per-attempt timeout, retries with jittered backoff,
//! `Retry-After`, byte-order-mark removal.
//!
//! Retries follow the reference's policy (transport failures, 429 and 5xx other than 501) with
//! three differences: the delay has jitter, `Retry-After` is capped at the configured maximum
//! wait, and when the attempts run out the caller still gets the final answer (status, headers,
//! body) so the error it builds keeps the status and `ActivityId`.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue, USER_AGENT};
use http::{HeaderMap, Method, StatusCode};
use rand::Rng;
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use crate::error::{ApiError, Error, is_certificate_error, is_retryable_status, redact_url};

/// How failed attempts are retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (default 4, so up to 5 attempts).
    pub max_retries: u32,
    /// The first delay (default 1 s); each retry doubles it.
    pub wait_min: Duration,
    /// The longest delay, also the ceiling on `Retry-After` (default 30 s).
    pub wait_max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 4,
            wait_min: Duration::from_secs(1),
            wait_max: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The delay before retry number `retry` (0-based): `wait_min * 2^retry` capped at
    /// `wait_max`, then drawn uniformly from its upper half so that many clients do not retry
    /// in lockstep. A `Retry-After` from the service replaces it, capped at `wait_max`.
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(after) = retry_after {
            return after.min(self.wait_max);
        }
        jittered_backoff(self.wait_min, self.wait_max, retry)
    }
}

/// `min * 2^attempt` capped at `max`, then drawn uniformly from its upper half, so that many
/// clients failing together do not retry in lockstep.
pub(crate) fn jittered_backoff(min: Duration, max: Duration, attempt: u32) -> Duration {
    let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
    let capped = min.saturating_mul(factor).min(max);
    let half = capped / 2;
    let span = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
    half + Duration::from_nanos(rand::rng().random_range(0..=span))
}

/// Authorization of one request.
#[allow(clippy::enum_variant_names)] // `RemoteAuth` is the scheme's name on the wire.
pub(crate) enum Auth<'a> {
    /// `Bearer <token>`.
    Bearer(&'a SecretString),
    /// `RemoteAuth <token>` (runner registration).
    RemoteAuth(&'a SecretString),
    /// `Bearer <jwt>` for a freshly signed App JWT.
    BearerOwned(SecretString),
}

/// One logical request.
pub(crate) struct Outgoing<'a> {
    pub(crate) method: Method,
    pub(crate) url: Url,
    pub(crate) auth: Option<Auth<'a>>,
    pub(crate) content_type: Option<&'static str>,
    pub(crate) accept: Option<&'static str>,
    pub(crate) headers: Vec<(HeaderName, String)>,
    pub(crate) body: Option<Vec<u8>>,
    /// Also retry 401 answers (runner registration only).
    pub(crate) retry_unauthorized: bool,
    /// A success answer carries credentials (tokens, JIT configs): errors built from it keep
    /// no excerpt of its body.
    pub(crate) sensitive_response: bool,
    /// Per-attempt timeout replacing the client's (long polls).
    pub(crate) timeout: Option<Duration>,
}

impl<'a> Outgoing<'a> {
    pub(crate) fn new(method: Method, url: Url) -> Outgoing<'a> {
        Outgoing {
            method,
            url,
            auth: None,
            content_type: None,
            accept: None,
            headers: Vec::new(),
            body: None,
            retry_unauthorized: false,
            sensitive_response: false,
            timeout: None,
        }
    }
}

/// The final answer to a request.
pub(crate) struct Incoming {
    pub(crate) method: Method,
    pub(crate) url: Url,
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    /// The body with one leading UTF-8 byte-order mark removed.
    pub(crate) body: Vec<u8>,
    pub(crate) attempts: u32,
    /// See [`Outgoing::sensitive_response`].
    pub(crate) sensitive: bool,
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming")
            .field("method", &self.method)
            .field("url", &redact_url(&self.url))
            .field("status", &self.status)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

impl Incoming {
    /// Whether the body may hold credentials (a success answer of a sensitive call).
    fn body_is_secret(&self) -> bool {
        self.sensitive && self.status.is_success()
    }

    /// The error context of this answer.
    pub(crate) fn api_error(&self) -> ApiError {
        let retry_after = retry_after(&self.headers);
        let body: &[u8] = if self.body_is_secret() {
            b"[body withheld: this answer carries credentials]"
        } else {
            &self.body
        };
        let mut e = ApiError::new(&self.method, &self.url, self.status, &self.headers, body)
            .with_retry_after(retry_after);
        if self.attempts > 1 && is_retryable_status(self.status) {
            e = e.with_detail(format!("giving up after {} attempt(s)", self.attempts));
        }
        e
    }

    /// This answer as an error, classified by exception name and status.
    pub(crate) fn into_error(self) -> Error {
        Error::from_response(self.api_error())
    }

    /// Succeeds when the status is `expected`, otherwise turns the answer into an error.
    pub(crate) fn expect_status(self, expected: StatusCode) -> Result<Incoming, Error> {
        if self.status == expected {
            Ok(self)
        } else {
            Err(self.into_error())
        }
    }

    /// A decode failure of this answer's body at `path`.
    pub(crate) fn decode_error(&self, path: String, message: String) -> Error {
        Error::Decode {
            response: Box::new(self.api_error()),
            path,
            message,
        }
    }

    /// Decodes the body, naming the failing field.
    pub(crate) fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        let decode_error = |path: String, message: String| self.decode_error(path, message);
        if self.body.iter().all(u8::is_ascii_whitespace) {
            return Err(decode_error(
                ".".to_string(),
                "the body is empty".to_string(),
            ));
        }
        let de = &mut serde_json::Deserializer::from_slice(&self.body);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let message = if self.body_is_secret() {
                // serde's text can quote the offending value, which may be a credential.
                "the value has an unexpected type or shape".to_string()
            } else {
                e.into_inner().to_string()
            };
            decode_error(path, message)
        })
    }
}

/// The `Retry-After` of an answer: integer seconds or an HTTP date (a past date is zero).
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = jiff::fmt::rfc2822::parse(value).ok()?.timestamp();
    let now = jiff::Timestamp::now();
    Some(Duration::try_from(when.duration_since(now)).unwrap_or(Duration::ZERO))
}

/// The HTTP side of a client: a connection pool, a retry policy and the `User-Agent`.
#[derive(Debug)]
pub(crate) struct Transport {
    http: reqwest::Client,
    retry: RetryPolicy,
    timeout: Duration,
    user_agent: RwLock<Arc<str>>,
}

impl Transport {
    pub(crate) fn new(
        http: reqwest::Client,
        retry: RetryPolicy,
        timeout: Duration,
        user_agent: String,
    ) -> Transport {
        Transport {
            http,
            retry,
            timeout,
            user_agent: RwLock::new(user_agent.into()),
        }
    }

    /// The per-attempt timeout.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    pub(crate) fn set_user_agent(&self, ua: String) {
        *self.user_agent.write().unwrap_or_else(|e| e.into_inner()) = ua.into();
    }

    pub(crate) fn user_agent(&self) -> Arc<str> {
        self.user_agent
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn build(&self, req: &Outgoing<'_>, ua: &str) -> Result<reqwest::Request, Error> {
        let mut builder = self
            .http
            .request(req.method.clone(), req.url.clone())
            .timeout(req.timeout.unwrap_or(self.timeout))
            .header(USER_AGENT, ua);
        if let Some(ct) = req.content_type {
            builder = builder.header(CONTENT_TYPE, ct);
        }
        if let Some(accept) = req.accept {
            builder = builder.header(ACCEPT, accept);
        }
        if let Some(auth) = &req.auth {
            let (scheme, secret) = match auth {
                Auth::Bearer(s) => ("Bearer", s.expose_secret()),
                Auth::RemoteAuth(s) => ("RemoteAuth", s.expose_secret()),
                Auth::BearerOwned(s) => ("Bearer", s.expose_secret()),
            };
            let mut value = HeaderValue::from_str(&format!("{scheme} {secret}")).map_err(|_| {
                Error::InvalidCredentials(format!(
                    "the {scheme} token contains characters that cannot travel in an HTTP header"
                ))
            })?;
            value.set_sensitive(true);
            builder = builder.header(AUTHORIZATION, value);
        }
        for (name, value) in &req.headers {
            builder = builder.header(name, value);
        }
        if let Some(body) = &req.body {
            builder = builder.body(body.clone());
        }
        builder
            .build()
            .map_err(|e| Error::InvalidArgument(format!("cannot build the request: {e}")))
    }

    /// Sends `req`, retrying per the policy. Returns the final answer whatever its status;
    /// fails only when no answer arrived.
    pub(crate) async fn send(&self, req: Outgoing<'_>) -> Result<Incoming, Error> {
        let ua = self.user_agent();
        let attempts_allowed = self.retry.max_retries.saturating_add(1);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let request = self.build(&req, &ua)?;
            let sent = std::time::Instant::now();
            let outcome = self.http.execute(request).await;
            let (retryable, cause, after) = match outcome {
                Ok(resp) => {
                    let status = resp.status();
                    // Method, URL (never carrying a credential) and status only: headers and
                    // bodies can hold tokens and JIT configs.
                    tracing::debug!(
                        method = %req.method,
                        url = %redact_url(&req.url),
                        status = status.as_u16(),
                        attempt,
                        elapsed_ms = sent.elapsed().as_millis() as u64,
                        "answer received"
                    );
                    let headers = resp.headers().clone();
                    let retry_status = is_retryable_status(status)
                        || (req.retry_unauthorized && status == StatusCode::UNAUTHORIZED);
                    match read_body(resp).await {
                        Ok(None) => {
                            return Err(Error::Protocol {
                                response: None,
                                message: format!(
                                    "the answer to {} {} is larger than {} MiB",
                                    req.method,
                                    redact_url(&req.url),
                                    MAX_BODY_BYTES / (1024 * 1024)
                                ),
                            });
                        }
                        Ok(Some(body)) => {
                            if !retry_status || attempt >= attempts_allowed {
                                return Ok(Incoming {
                                    method: req.method.clone(),
                                    url: req.url.clone(),
                                    status,
                                    headers,
                                    body: strip_bom(body),
                                    attempts: attempt,
                                    sensitive: req.sensitive_response,
                                });
                            }
                            let after = if matches!(status.as_u16(), 429 | 503) {
                                retry_after(&headers)
                            } else {
                                None
                            };
                            (true, format!("status {status}"), after)
                        }
                        Err(e) => {
                            if attempt >= attempts_allowed {
                                return Err(self.transport_error(&req, attempt, e));
                            }
                            (true, format!("reading the body failed: {e}"), None)
                        }
                    }
                }
                Err(e) => {
                    let retryable =
                        !e.is_builder() && !e.is_redirect() && !is_certificate_error(&e);
                    if !retryable || attempt >= attempts_allowed {
                        return Err(self.transport_error(&req, attempt, e));
                    }
                    (true, crate::error::chain(&e), None)
                }
            };
            debug_assert!(retryable);
            let delay = self.retry.delay(attempt - 1, after);
            tracing::warn!(
                method = %req.method,
                url = %redact_url(&req.url),
                attempt,
                max_attempts = attempts_allowed,
                delay_ms = delay.as_millis() as u64,
                %cause,
                "request failed, retrying"
            );
            tokio::time::sleep(delay).await;
        }
    }

    fn transport_error(&self, req: &Outgoing<'_>, attempts: u32, e: reqwest::Error) -> Error {
        Error::Transport {
            method: req.method.clone(),
            url: redact_url(&req.url),
            attempts,
            source: Arc::new(e.without_url()),
        }
    }
}

/// The largest response body read; the service's answers are small JSON documents, so a
/// larger one is a broken proxy or server and must not exhaust memory.
pub(crate) const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Reads a body up to [`MAX_BODY_BYTES`]; `None` when it is larger.
async fn read_body(mut resp: reqwest::Response) -> Result<Option<Vec<u8>>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

fn strip_bom(mut body: Vec<u8>) -> Vec<u8> {
    if body.starts_with(&[0xEF, 0xBB, 0xBF]) {
        body.drain(..3);
    }
    body
}

/// Joins a tenant URL and a relative path: path segments joined with single
/// slashes (a trailing slash on the path is kept), the tenant URL's query overlaid with
/// `query`, `api-version=6.0-preview` added unless given, keys sorted, values form-encoded
/// (so `&`, `#`, `+`, `%` and spaces in names survive).
pub(crate) fn tenant_url(base: &Url, path: &str, query: &[(&str, &str)]) -> Url {
    let mut url = base.clone();
    let joined = format!(
        "{}/{}",
        base.path().trim_end_matches('/'),
        path.trim_start_matches('/')
    );
    let mut collapsed = String::with_capacity(joined.len());
    for ch in joined.chars() {
        if ch == '/' && collapsed.ends_with('/') {
            continue;
        }
        collapsed.push(ch);
    }
    url.set_path(&collapsed);
    let mut pairs: Vec<(String, String)> = base
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .filter(|(k, _)| !query.iter().any(|(q, _)| q == k))
        .collect();
    pairs.extend(query.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    if !pairs
        .iter()
        .any(|(k, v)| k == "api-version" && !v.is_empty())
    {
        pairs.retain(|(k, _)| k != "api-version");
        pairs.push(("api-version".to_string(), "6.0-preview".to_string()));
    }
    set_sorted_query(&mut url, pairs);
    url
}

/// Replaces the query of `url` with `pairs`, sorted by key, form-encoded.
pub(crate) fn set_sorted_query(url: &mut Url, mut pairs: Vec<(String, String)>) {
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    if pairs.is_empty() {
        url.set_query(None);
        return;
    }
    let encoded = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish();
    url.set_query(Some(&encoded));
}

#[cfg(test)]
mod tests {
    use super::*;

    // Behaviour 16 and issue item 2
    #[test]
    fn tenant_url_joining() {
        let base = Url::parse("http://127.0.0.1:1/tenant/123/").expect("static URL");
        let u = tenant_url(&base, "/my/path", &[("name", "banana")]);
        assert_eq!(u.path(), "/tenant/123/my/path");
        assert_eq!(u.query(), Some("api-version=6.0-preview&name=banana"));
        let u = tenant_url(
            &base,
            "_apis/runtime/runnergroups/",
            &[("groupName", "a b&c#d+e%f")],
        );
        assert_eq!(u.path(), "/tenant/123/_apis/runtime/runnergroups/");
        let back: Vec<(String, String)> =
            u.query_pairs().map(|(k, v)| (k.into(), v.into())).collect();
        assert!(
            back.contains(&("groupName".into(), "a b&c#d+e%f".into())),
            "{u}"
        );
        let no_slash = Url::parse("http://h/tenant/1").expect("static URL");
        assert_eq!(
            tenant_url(&no_slash, "/x", &[]).as_str(),
            "http://h/tenant/1/x?api-version=6.0-preview"
        );
    }

    // Behaviour 18
    #[test]
    fn caller_api_version_is_kept() {
        let base = Url::parse("http://h/t/").expect("static URL");
        let u = tenant_url(&base, "/x", &[("api-version", "7.0")]);
        assert_eq!(u.query(), Some("api-version=7.0"));
    }

    // Behaviour 59
    #[test]
    fn bom_is_stripped_once() {
        assert_eq!(
            strip_bom(b"\xEF\xBB\xBF{\"foo\":\"bar\"}".to_vec()),
            b"{\"foo\":\"bar\"}"
        );
        assert_eq!(
            strip_bom(b"{\"foo\":\"bar\"}".to_vec()),
            b"{\"foo\":\"bar\"}"
        );
        assert_eq!(strip_bom(Vec::new()), b"");
    }

    // Issue item 4
    #[test]
    fn backoff_has_jitter_and_caps_retry_after() {
        let p = RetryPolicy {
            max_retries: 4,
            wait_min: Duration::from_secs(1),
            wait_max: Duration::from_secs(30),
        };
        for retry in 0..6 {
            let d = p.delay(retry, None);
            let full = Duration::from_secs(1 << retry).min(Duration::from_secs(30));
            assert!(d >= full / 2 && d <= full, "retry {retry}: {d:?}");
        }
        let draws: std::collections::HashSet<u128> =
            (0..20).map(|_| p.delay(3, None).as_nanos()).collect();
        assert!(draws.len() > 1, "delays must not all be equal");
        assert_eq!(
            p.delay(0, Some(Duration::from_secs(3600))),
            Duration::from_secs(30)
        );
        assert_eq!(
            p.delay(0, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn retry_after_forms() {
        let mut h = HeaderMap::new();
        h.insert(http::header::RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(
            http::header::RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
        let future = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(120);
        let text = jiff::fmt::rfc2822::DateTimePrinter::new()
            .timestamp_to_rfc9110_string(&future)
            .expect("printable");
        h.insert(
            http::header::RETRY_AFTER,
            HeaderValue::from_str(&text).expect("ascii"),
        );
        let got = retry_after(&h).expect("parsed");
        assert!(
            got > Duration::from_secs(100) && got <= Duration::from_secs(120),
            "{got:?}"
        );
    }
}
