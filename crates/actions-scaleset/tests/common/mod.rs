//! A scripted HTTP server on `127.0.0.1:0` for the client's HTTP-level tests.
//!
//! Every request is recorded (method, full URI as received, path, decoded query, headers,
//! body). Answers come from routes (method + exact path); the route registered last wins, so a
//! test overrides the default auth routes by registering its own. A handler gets the request
//! and how many times its route was hit before (0 for the first hit), and returns a future so
//! it may hold the request (the concurrency tests do).
//!
//! The server also acts as a plain-HTTP proxy: a request in absolute form
//! (`GET http://host/path`) is routed by its path and recorded with its full URI, and a
//! `CONNECT` is recorded and refused with 502.

#![allow(dead_code, missing_docs)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actions_scaleset::{Client, ClientBuilder, Credentials};
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::response::Response;
use base64::Engine as _;
use futures::FutureExt;
use futures::future::BoxFuture;
use http::HeaderMap;
use tokio::sync::Notify;

/// The PAT the default clients use.
pub const PAT: &str = "ghp_TestPersonalAccessToken0123456789";
/// The tenant path the default runner-registration answer points at (with a trailing slash,
/// like the reference's test servers).
pub const TENANT: &str = "/tenant/123/";
/// Registration tokens are `REG_TOKEN_PREFIX` followed by the hit number.
pub const REG_TOKEN_PREFIX: &str = "AREGTOKEN";
/// An upper bound for every wait on a condition in these tests.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    /// The request target as received: origin form (`/path?q`) or, through a proxy, absolute
    /// form (`http://host/path?q`); authority form for `CONNECT`.
    pub uri: String,
    pub path: String,
    /// The raw query string (empty when none).
    pub raw_query: String,
    /// The query, form-decoded, in order.
    pub query: Vec<(String, String)>,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn query_map(&self) -> HashMap<String, String> {
        self.query.iter().cloned().collect()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "request body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn authorization(&self) -> &str {
        self.header("authorization").unwrap_or_default()
    }
}

/// A scripted answer.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A JSON answer (the text is sent verbatim).
    pub fn json(status: u16, body: &str) -> Reply {
        Reply::status(status)
            .header("content-type", "application/json; charset=utf-8")
            .body(body.as_bytes())
    }

    /// A `text/plain` answer.
    pub fn text(status: u16, body: &str) -> Reply {
        Reply::status(status)
            .header("content-type", "text/plain; charset=utf-8")
            .body(body.as_bytes())
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn body(mut self, body: &[u8]) -> Reply {
        self.body = body.to_vec();
        self
    }
}

type Handler = Arc<dyn Fn(Recorded, usize) -> BoxFuture<'static, Reply> + Send + Sync>;

struct Route {
    method: String,
    path: String,
    handler: Handler,
    hits: Arc<AtomicUsize>,
}

#[derive(Default)]
struct Inner {
    log: Mutex<Vec<Recorded>>,
    routes: Mutex<Vec<Route>>,
    inflight: AtomicUsize,
    max_inflight: AtomicUsize,
    changed: Notify,
}

/// The scripted server. Dropping it does not stop it; it lives as long as the test runtime.
#[derive(Clone)]
pub struct TestServer {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
}

impl TestServer {
    /// A server with no routes (every request gets 404 `no route`).
    pub async fn start() -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        TestServer::serve_on(listener)
    }

    /// Serves on an already bound listener.
    pub fn serve_on(listener: tokio::net::TcpListener) -> TestServer {
        let addr = listener.local_addr().expect("local addr");
        let server = TestServer {
            addr,
            inner: Arc::new(Inner::default()),
        };
        let app = server.router();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        server
    }

    /// The axum app of this server (for serving it over TLS).
    pub fn router(&self) -> axum::Router {
        axum::Router::new()
            .fallback(dispatch)
            .with_state(self.inner.clone())
    }

    /// A server that already answers the PAT auth flow: registration token (201) and runner
    /// registration (200, tenant `http://<addr>/tenant/123/`, admin JWT valid for an hour).
    pub async fn with_auth() -> TestServer {
        let s = TestServer::start().await;
        s.default_auth();
        s
    }

    /// Installs the default auth routes (organization `org` on a GHES-style API `/api/v3`).
    pub fn default_auth(&self) {
        self.on("POST", REG_TOKEN_PATH, |_, n| {
            Reply::json(
                201,
                &format!(
                    r#"{{"token":"{REG_TOKEN_PREFIX}{n}","expires_at":"2030-01-01T00:00:00Z"}}"#
                ),
            )
        });
        let base = self.url("");
        self.on("POST", RUNNER_REGISTRATION_PATH, move |_, n| {
            Reply::json(
                200,
                &format!(
                    r#"{{"url":"{base}{TENANT}","token":"{}","token_schema":"OAuthAccessToken"}}"#,
                    admin_jwt(3600, n)
                ),
            )
        });
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The config URL of organization `org` on this server (a GHES, so the API is `/api/v3`).
    pub fn config_url(&self) -> String {
        self.url("/org")
    }

    /// A synchronous route.
    pub fn on<F>(&self, method: &str, path: &str, f: F)
    where
        F: Fn(&Recorded, usize) -> Reply + Send + Sync + 'static,
    {
        self.on_async(method, path, move |req, n| {
            let reply = f(&req, n);
            async move { reply }.boxed()
        });
    }

    /// A route answering the replies in order, repeating the last one.
    pub fn on_seq(&self, method: &str, path: &str, replies: Vec<Reply>) {
        assert!(!replies.is_empty());
        self.on(method, path, move |_, n| {
            replies[n.min(replies.len() - 1)].clone()
        });
    }

    /// An asynchronous route.
    pub fn on_async<F>(&self, method: &str, path: &str, f: F)
    where
        F: Fn(Recorded, usize) -> BoxFuture<'static, Reply> + Send + Sync + 'static,
    {
        self.inner.routes.lock().expect("routes lock").push(Route {
            method: method.to_string(),
            path: path.to_string(),
            handler: Arc::new(f),
            hits: Arc::new(AtomicUsize::new(0)),
        });
    }

    /// A route on the tenant: `path` is relative to `/tenant/123/`.
    pub fn on_tenant<F>(&self, method: &str, path: &str, f: F)
    where
        F: Fn(&Recorded, usize) -> Reply + Send + Sync + 'static,
    {
        self.on(method, &tenant_path(path), f);
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.inner.log.lock().expect("log lock").clone()
    }

    /// The requests to `path` (any method).
    pub fn requests_to(&self, path: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    /// How many requests went to `path`.
    pub fn count(&self, path: &str) -> usize {
        self.requests_to(path).len()
    }

    /// The tenant requests (path under `/tenant/123/`).
    pub fn tenant_requests(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.starts_with(TENANT))
            .collect()
    }

    /// The most requests that were being answered at the same time.
    pub fn max_inflight(&self) -> usize {
        self.inner.max_inflight.load(Ordering::SeqCst)
    }

    /// Requests being answered right now.
    pub fn inflight(&self) -> usize {
        self.inner.inflight.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` requests have been in flight at the same time (now or
    /// earlier: the first to be answered lowers the current count), or the deadline passes;
    /// returns whether they were.
    pub async fn wait_inflight(&self, n: usize, deadline: Duration) -> bool {
        let inner = self.inner.clone();
        tokio::time::timeout(deadline, async move {
            loop {
                let notified = inner.changed.notified();
                if inner.max_inflight.load(Ordering::SeqCst) >= n {
                    return;
                }
                notified.await;
            }
        })
        .await
        .is_ok()
    }
}

/// The registration-token path of organization `org` on a GHES.
pub const REG_TOKEN_PATH: &str = "/api/v3/orgs/org/actions/runners/registration-token";
/// The runner-registration path on a GHES.
pub const RUNNER_REGISTRATION_PATH: &str = "/api/v3/actions/runner-registration";

/// `/tenant/123/<path>`.
pub fn tenant_path(path: &str) -> String {
    format!("{TENANT}{}", path.trim_start_matches('/'))
}

async fn dispatch(State(inner): State<Arc<Inner>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body: Bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let raw_query = parts.uri.query().unwrap_or_default().to_string();
    let recorded = Recorded {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        path: parts.uri.path().to_string(),
        query: url::form_urlencoded::parse(raw_query.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect(),
        raw_query,
        headers: parts.headers.clone(),
        body: body.to_vec(),
    };
    inner.log.lock().expect("log lock").push(recorded.clone());
    let now = inner.inflight.fetch_add(1, Ordering::SeqCst) + 1;
    inner.max_inflight.fetch_max(now, Ordering::SeqCst);
    inner.changed.notify_waiters();

    let route = {
        let routes = inner.routes.lock().expect("routes lock");
        routes
            .iter()
            .rev()
            .find(|r| r.method == recorded.method && r.path == recorded.path)
            .map(|r| (r.handler.clone(), r.hits.fetch_add(1, Ordering::SeqCst)))
    };
    let reply = match (route, recorded.method.as_str()) {
        (Some((handler, n)), _) => handler(recorded, n).await,
        (None, "CONNECT") => Reply::text(502, "this test proxy does not tunnel"),
        (None, _) => Reply::text(404, "no route"),
    };
    inner.inflight.fetch_sub(1, Ordering::SeqCst);
    inner.changed.notify_waiters();

    let mut resp = Response::builder().status(reply.status);
    for (k, v) in &reply.headers {
        resp = resp.header(k, v);
    }
    resp.body(Body::from(reply.body))
        .expect("a scripted response is valid")
}

/// An admin token: a syntactically valid JWT (HS256 header, not really signed) whose `exp` is
/// `valid_for` seconds from now and whose `n` claim tells tokens apart.
pub fn admin_jwt(valid_for: i64, n: usize) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64;
    let header = b64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = b64.encode(format!(r#"{{"exp":{},"n":{n}}}"#, now + valid_for));
    format!("{header}.{claims}.c2lnbmF0dXJl")
}

/// A builder for the default client of `server`: PAT, organization `org`, retries with
/// waits of a few milliseconds.
pub fn builder(server: &TestServer) -> ClientBuilder {
    Client::builder(server.config_url(), pat())
        .retry_max(2)
        .retry_wait_min(Duration::from_millis(1))
        .retry_wait_max(Duration::from_millis(5))
        .timeout(Duration::from_secs(20))
}

/// The default client of `server`.
pub fn client(server: &TestServer) -> Client {
    builder(server).build().expect("client builds")
}

pub fn pat() -> Credentials {
    Credentials::token(PAT).expect("valid PAT")
}

/// Parses a JSON literal written by hand in a test.
pub fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("bad JSON literal ({e}): {text}"))
}

/// Awaits `fut` under [`DEADLINE`].
pub async fn within<F: std::future::Future>(fut: F) -> F::Output {
    tokio::time::timeout(DEADLINE, fut)
        .await
        .expect("the call did not finish within the test deadline")
}

/// A buffer that a TRACE-level `fmt` subscriber writes to.
#[derive(Clone, Default)]
pub struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl LogBuffer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log buffer lock")).into_owned()
    }
}

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .expect("log buffer lock")
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The log buffer of this test binary: a TRACE-level `fmt` subscriber is installed as the
/// global default on first use (a thread-local default misses callsites whose interest was
/// cached by tests running in parallel without it). Tests running in parallel share it, so
/// assertions filter by something unique to the test (e.g. its server's port).
pub fn capture_logs() -> LogBuffer {
    static LOGS: std::sync::OnceLock<LogBuffer> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = LogBuffer::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other global subscriber in the test binary");
        buf
    })
    .clone()
}
