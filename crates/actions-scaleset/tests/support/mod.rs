//! Shared helpers of the session and listener tests: a scripted in-process HTTP server on
//! `127.0.0.1:0` that answers the GitHub auth calls itself and hands every other request to a
//! test-provided handler, and a recording [`Scaler`].
//!
//! (Not `tests/common/`: that directory belongs to other test suites.)

#![allow(dead_code, missing_docs)]

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actions_scaleset::listener::BoxError;
use actions_scaleset::{Client, Credentials, JobCompleted, JobStarted, Scaler};
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::sync::watch;

/// An admin JWT (`{"alg":"HS256","typ":"JWT"}`, `{"exp":2000000000}`); the client reads `exp`
/// without verifying the signature.
pub const ADMIN_JWT: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJleHAiOjIwMDAwMDAwMDB9.c2ln";
/// The session id the scripted server hands out.
pub const SESSION_ID: &str = "11111111-2222-3333-4444-555555555555";
/// A deadline for waits in tests (virtual time under a paused clock).
pub const DEADLINE: Duration = Duration::from_secs(3600);

/// One request the scripted server received.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn body_str(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap_or("<binary>")
    }

    /// `METHOD path` (no query), for sequence assertions.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }

    pub fn is_poll(&self) -> bool {
        self.method == "GET" && self.path == "/queue/message"
    }
}

type Handler =
    Arc<dyn Fn(Recorded) -> Pin<Box<dyn Future<Output = Response> + Send>> + Send + Sync>;

/// A scripted server. Auth calls under `/api/v3` are answered automatically and not logged.
pub struct Scripted {
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<Recorded>>>,
    changed: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Scripted {
    /// Starts a server whose non-auth requests are answered by `handler`.
    pub async fn start<F, Fut>(handler: F) -> Scripted
    where
        F: Fn(Recorded) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let log: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let (changed, _) = watch::channel(0u64);
        let handler: Handler = Arc::new(move |r| Box::pin(handler(r)));
        let base = format!("http://{addr}");
        let app = {
            let log = log.clone();
            let changed = changed.clone();
            axum::Router::new().fallback(move |req: Request| {
                let log = log.clone();
                let changed = changed.clone();
                let handler = handler.clone();
                let base = base.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    let body = axum::body::to_bytes(body, usize::MAX)
                        .await
                        .unwrap_or_default();
                    let rec = Recorded {
                        method: parts.method.to_string(),
                        path: parts.uri.path().to_string(),
                        query: parts.uri.query().map(str::to_string),
                        headers: parts.headers,
                        body,
                    };
                    if rec.path.ends_with("/actions/runners/registration-token") {
                        return json(201, serde_json::json!({"token": "reg-token"}));
                    }
                    if rec.path == "/api/v3/actions/runner-registration" {
                        return json(
                            200,
                            serde_json::json!({"url": format!("{base}/tenant/123/"), "token": ADMIN_JWT}),
                        );
                    }
                    log.lock().expect("log lock").push(rec.clone());
                    changed.send_modify(|n| *n += 1);
                    handler(rec).await
                }
            })
        };
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Scripted {
            addr,
            log,
            changed,
            task,
        }
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// An organization config URL served by this server (not hosted: API under `/api/v3`).
    pub fn config_url(&self) -> String {
        format!("{}/my-org", self.base())
    }

    /// The message queue URL of the scripted sessions.
    pub fn queue_url(&self) -> String {
        format!("{}/queue/message?sessionId=abc", self.base())
    }

    /// A client with `retries` retries and millisecond backoff.
    pub fn client(&self, retries: u32) -> Client {
        Client::builder(
            self.config_url(),
            Credentials::token("ghp_test").expect("valid token"),
        )
        .retry_max(retries)
        .retry_wait_min(Duration::from_millis(1))
        .retry_wait_max(Duration::from_millis(5))
        .build()
        .expect("client builds")
    }

    /// Every non-auth request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.log.lock().expect("log lock").clone()
    }

    pub fn lines(&self) -> Vec<String> {
        self.requests().iter().map(Recorded::line).collect()
    }

    pub fn polls(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(Recorded::is_poll)
            .collect()
    }

    /// Waits until `pred` holds for the request log (panics after [`DEADLINE`]).
    pub async fn wait_for(&self, what: &str, pred: impl Fn(&[Recorded]) -> bool) -> Vec<Recorded> {
        let mut rx = self.changed.subscribe();
        let waited = tokio::time::timeout(DEADLINE, async {
            loop {
                let log = self.requests();
                if pred(&log) {
                    return log;
                }
                rx.changed().await.expect("server alive");
            }
        })
        .await;
        match waited {
            Ok(log) => log,
            Err(_) => panic!("timed out waiting for {what}; requests: {:?}", self.lines()),
        }
    }
}

/// A JSON answer.
pub fn json(status: u16, value: serde_json::Value) -> Response {
    raw(status, "application/json", value.to_string())
}

/// An answer with a content type and body.
pub fn raw(status: u16, content_type: &str, body: impl Into<Body>) -> Response {
    Response::builder()
        .status(StatusCode::from_u16(status).expect("valid status"))
        .header("content-type", content_type)
        .body(body.into())
        .expect("valid response")
}

/// An answer with only a status and no body.
pub fn status(code: u16) -> Response {
    StatusCode::from_u16(code)
        .expect("valid status")
        .into_response()
}

/// The queue URL of the server that received `rec` (from its `Host` header).
pub fn queue_url_of(rec: &Recorded) -> String {
    format!(
        "http://{}/queue/message?sessionId=abc",
        rec.header("host").unwrap_or("127.0.0.1")
    )
}

/// Whether `rec` is a create-session call.
pub fn is_create(rec: &Recorded) -> bool {
    rec.method == "POST" && rec.path.ends_with("/sessions")
}

/// Whether `rec` is a refresh-session call.
pub fn is_refresh(rec: &Recorded) -> bool {
    rec.method == "PATCH" && rec.path.contains("/sessions/")
}

/// Whether `rec` is a delete-session call.
pub fn is_delete_session(rec: &Recorded) -> bool {
    rec.method == "DELETE" && rec.path.contains("/sessions/")
}

/// The standard answer to a create-session call (queue token `qtoken-1`, 2 assigned jobs).
pub fn created(rec: &Recorded) -> Response {
    json(200, session_json(&queue_url_of(rec), "qtoken-1", 2))
}

/// Statistics with only `totalAssignedJobs` set.
pub fn stats(assigned: i64) -> serde_json::Value {
    serde_json::json!({
        "totalAvailableJobs": 0, "totalAcquiredJobs": 0, "totalAssignedJobs": assigned,
        "totalRunningJobs": 0, "totalRegisteredRunners": 0, "totalBusyRunners": 0,
        "totalIdleRunners": 0
    })
}

/// A session as the service returns it.
pub fn session_json(queue_url: &str, token: &str, assigned: i64) -> serde_json::Value {
    serde_json::json!({
        "sessionId": SESSION_ID,
        "ownerName": "test-owner",
        "runnerScaleSet": {"id": 7, "name": "my-set"},
        "messageQueueUrl": queue_url,
        "messageQueueAccessToken": token,
        "statistics": stats(assigned),
    })
}

/// A message envelope with job messages (`body` is a JSON string holding the array).
pub fn message(id: i64, jobs: serde_json::Value, assigned: Option<i64>) -> serde_json::Value {
    let mut m = serde_json::json!({
        "messageId": id,
        "messageType": "RunnerScaleSetJobMessages",
        "body": jobs.to_string(),
    });
    if let Some(a) = assigned {
        m["statistics"] = stats(a);
    }
    m
}

pub fn job_started(request_id: i64, runner: &str) -> serde_json::Value {
    serde_json::json!({"messageType": "JobStarted", "runnerRequestId": request_id,
        "runnerId": 1, "runnerName": runner, "jobId": format!("job-{request_id}")})
}

pub fn job_completed(request_id: i64, runner: &str) -> serde_json::Value {
    serde_json::json!({"messageType": "JobCompleted", "runnerRequestId": request_id,
        "runnerId": 1, "runnerName": runner, "result": "succeeded",
        "jobId": format!("job-{request_id}")})
}

pub fn job_available(request_id: i64) -> serde_json::Value {
    serde_json::json!({"messageType": "JobAvailable", "runnerRequestId": request_id,
        "acquireJobUrl": format!("https://example.invalid/acquire/{request_id}")})
}

/// What a [`RecScaler`] saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Desired(i64),
    Started(i64, String),
    Completed(i64, String, String),
}

/// A scaler that records every call; failures can be scripted.
#[derive(Default)]
pub struct RecScaler {
    events: Mutex<Vec<Event>>,
    changed: watch::Sender<u64>,
    /// Answers for the next `handle_desired_runner_count` calls (`false` = fail).
    pub desired_script: Mutex<VecDeque<bool>>,
    /// How many of the next `handle_job_started` calls fail.
    pub fail_started: AtomicU32,
    /// Cancelled by the first `handle_desired_runner_count` call, when set.
    pub cancel_on_desired: Mutex<Option<actions_scaleset::CancellationToken>>,
}

impl RecScaler {
    pub fn new() -> Arc<RecScaler> {
        Arc::new(RecScaler::default())
    }

    fn push(&self, e: Event) {
        self.events.lock().expect("events lock").push(e);
        self.changed.send_modify(|n| *n += 1);
    }

    pub fn events(&self) -> Vec<Event> {
        self.events.lock().expect("events lock").clone()
    }

    pub fn desired(&self) -> Vec<i64> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Desired(n) => Some(n),
                _ => None,
            })
            .collect()
    }

    /// Waits until `pred` holds for the events (panics after `deadline`).
    pub async fn wait_for(
        &self,
        what: &str,
        deadline: Duration,
        pred: impl Fn(&[Event]) -> bool,
    ) -> Vec<Event> {
        let mut rx = self.changed.subscribe();
        let waited = tokio::time::timeout(deadline, async {
            loop {
                let events = self.events();
                if pred(&events) {
                    return events;
                }
                rx.changed().await.expect("scaler alive");
            }
        })
        .await;
        match waited {
            Ok(e) => e,
            Err(_) => panic!("timed out waiting for {what}; events: {:?}", self.events()),
        }
    }
}

impl Scaler for RecScaler {
    async fn handle_desired_runner_count(&self, count: i64) -> Result<i64, BoxError> {
        let ok = self
            .desired_script
            .lock()
            .expect("script lock")
            .pop_front()
            .unwrap_or(true);
        self.push(Event::Desired(count));
        if let Some(token) = self.cancel_on_desired.lock().expect("lock").take() {
            token.cancel();
        }
        if ok {
            Ok(count)
        } else {
            Err("scripted desired-count failure".into())
        }
    }

    async fn handle_job_started(&self, job: &JobStarted) -> Result<(), BoxError> {
        self.push(Event::Started(
            job.base.runner_request_id.get(),
            job.runner_name.clone(),
        ));
        let fail = self
            .fail_started
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if fail {
            Err("scripted job-started failure".into())
        } else {
            Ok(())
        }
    }

    async fn handle_job_completed(&self, job: &JobCompleted) -> Result<(), BoxError> {
        self.push(Event::Completed(
            job.base.runner_request_id.get(),
            job.runner_name.clone(),
            job.result.clone(),
        ));
        Ok(())
    }
}
