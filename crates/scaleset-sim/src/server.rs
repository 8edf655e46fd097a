//! The axum server: routes, auth checks, the fault/logging middleware and every handler.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State as AxState};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rand::Rng;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::auth::{APP_CLIENT_ID, APP_INSTALLATION_ID, Keys, now_secs, random_token};
use crate::config::SimConfig;
use crate::faults::{EndpointClass, Fault, FaultStore, LatencyRule, ResponseAction, ResponseRule};
use crate::snapshot::{RequestLogEntry, snapshot};
use crate::state::{
    EX_AGENT_NOT_FOUND, EX_ARGUMENT, EX_SS_NOT_FOUND, EX_UNAUTHORIZED, JobPhase, Label, OpError,
    RunnerBehavior, State, add_or_far, op_err,
};

/// Everything the handlers share.
pub(crate) struct Shared {
    pub cfg: SimConfig,
    pub base_url: String,
    pub pat: String,
    pub keys: Keys,
    pub state: Mutex<State>,
    pub faults: Mutex<FaultStore>,
    pub log: Mutex<VecDeque<RequestLogEntry>>,
    pub changed: Notify,
    pub cancel: CancellationToken,
    /// Hard stop after a graceful shutdown timed out: every request still being handled is
    /// answered 503 at once so its connection closes.
    pub halt: CancellationToken,
    pub in_flight_polls: std::sync::atomic::AtomicUsize,
    /// Why the timer task died, if it did (shown in [`crate::SimState::reaper_error`]).
    pub reaper_error: Mutex<Option<String>>,
    seq: AtomicU64,
}

/// Counts a long poll as in flight while alive ([`crate::SimState::in_flight_polls`] is
/// observable, so its start and end wake `wait_until` waiters).
struct PollGuard<'a>(&'a Shared);

impl<'a> PollGuard<'a> {
    fn new(s: &'a Shared) -> Self {
        s.in_flight_polls.fetch_add(1, Ordering::Relaxed);
        s.changed.notify_waiters();
        Self(s)
    }
}

impl Drop for PollGuard<'_> {
    fn drop(&mut self) {
        self.0.in_flight_polls.fetch_sub(1, Ordering::Relaxed);
        self.0.changed.notify_waiters();
    }
}

/// A message poll of a session in flight: the session cannot idle out meanwhile; its end
/// (answered or cancelled) counts as activity.
struct SessionPoll<'a> {
    s: &'a Shared,
    sid: Uuid,
}

impl Drop for SessionPoll<'_> {
    fn drop(&mut self) {
        lock(&self.s.state).touch_session(self.sid, -1, Instant::now());
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub(crate) fn new(cfg: SimConfig, base_url: String, keys: Keys) -> Self {
        let pat = cfg.token.clone().unwrap_or_else(|| random_token("ghp_sim"));
        Self {
            state: Mutex::new(State::new(cfg.clone(), base_url.clone())),
            cfg,
            base_url,
            pat,
            keys,
            faults: Mutex::new(FaultStore::default()),
            log: Mutex::new(VecDeque::new()),
            changed: Notify::new(),
            cancel: CancellationToken::new(),
            halt: CancellationToken::new(),
            in_flight_polls: std::sync::atomic::AtomicUsize::new(0),
            reaper_error: Mutex::new(None),
            seq: AtomicU64::new(1),
        }
    }

    /// Runs `f` on the state and wakes [`crate::Simulator::wait_until`] waiters.
    pub(crate) fn with_state<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let r = f(&mut lock(&self.state));
        self.changed.notify_waiters();
        r
    }

    /// Runs `f` on the state and wakes [`crate::Simulator::wait_until`] waiters only when it
    /// changed [`State::rev`]: for bookkeeping (poll checks, acks, acquires, session touches)
    /// that mostly changes nothing a snapshot shows.
    pub(crate) fn with_state_if_changed<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let (r, changed) = {
            let mut st = lock(&self.state);
            let before = st.rev;
            let r = f(&mut st);
            (r, st.rev != before)
        };
        if changed {
            self.changed.notify_waiters();
        }
        r
    }

    pub(crate) fn read_state<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&lock(&self.state))
    }

    pub(crate) fn snapshot(&self) -> crate::SimState {
        let mut snap = self.read_state(snapshot);
        snap.in_flight_polls = self.in_flight_polls.load(Ordering::Relaxed);
        snap.reaper_error = lock(&self.reaper_error).clone();
        snap
    }

    pub(crate) fn requests(&self) -> Vec<RequestLogEntry> {
        lock(&self.log).iter().cloned().collect()
    }

    /// Adds an entry to the request log in `seq` order (a long poll is logged when it ends
    /// but placed where it arrived), dropping the oldest beyond the capacity.
    fn log_request(&self, entry: RequestLogEntry) {
        let mut log = lock(&self.log);
        let pos = log
            .iter()
            .rposition(|e| e.seq < entry.seq)
            .map_or(0, |i| i + 1);
        log.insert(pos, entry);
        while log.len() > self.cfg.request_log_capacity.max(1) {
            log.pop_front();
        }
    }

    pub(crate) fn clear_requests(&self) {
        lock(&self.log).clear();
    }

    pub(crate) fn faults_json(&self) -> Value {
        let store = serde_json::to_value(&*lock(&self.faults)).unwrap_or(Value::Null);
        let (runner, empty_mq, foreign) = self.read_state(|st| {
            let runner: Vec<RunnerBehavior> = st.runner_faults.iter().copied().collect();
            let foreign: Vec<i64> = st
                .scale_sets
                .values()
                .filter(|s| s.foreign_owner.is_some())
                .map(|s| s.id)
                .collect();
            (runner, st.empty_mq_url_next, foreign)
        });
        json!({
            "requestFaults": store,
            "runnerFaults": runner,
            "emptyMessageQueueUrl": empty_mq,
            "foreignSessions": foreign,
        })
    }

    /// Clears pending request faults, runner faults, empty-URL sessions and foreign sessions.
    pub(crate) fn clear_faults(&self) {
        *lock(&self.faults) = FaultStore::default();
        self.with_state(|st| {
            st.runner_faults.clear();
            st.empty_mq_url_next = 0;
            for ss in st.scale_sets.values_mut() {
                ss.foreign_owner = None;
            }
        });
    }

    pub(crate) fn apply_fault(&self, fault: Fault) -> Result<(), String> {
        fn check_method(m: &Option<String>) -> Result<(), String> {
            match m.as_deref() {
                Some(m) if m.is_empty() || !m.chars().all(|c| c.is_ascii_alphabetic()) => {
                    Err(format!("invalid method {m:?}"))
                }
                _ => Ok(()),
            }
        }
        let push = |class: EndpointClass,
                    method: Option<String>,
                    count: u32,
                    action: ResponseAction|
         -> Result<(), String> {
            check_method(&method)?;
            if count == 0 {
                return Err("count must be at least 1".into());
            }
            lock(&self.faults).responses.push(ResponseRule {
                class,
                method,
                remaining: count,
                action,
            });
            Ok(())
        };
        match fault {
            Fault::Latency {
                class,
                method,
                delay_ms,
                count,
                after,
            } => {
                check_method(&method)?;
                if delay_ms > 600_000 {
                    return Err("delayMs must be at most 600000".into());
                }
                lock(&self.faults).latency.push(LatencyRule {
                    class,
                    method,
                    delay_ms,
                    remaining: count,
                    after,
                });
                Ok(())
            }
            Fault::Status {
                class,
                method,
                count,
                status,
                type_name,
                message,
                retry_after,
            } => {
                if !(200..=599).contains(&status) {
                    return Err(format!(
                        "status must be a final HTTP status from 200 to 599, got {status}"
                    ));
                }
                push(
                    class,
                    method,
                    count,
                    ResponseAction::Status {
                        status,
                        type_name: type_name
                            .unwrap_or_else(|| "GitHub.Actions.Sim.InjectedFaultException".into()),
                        message: message.unwrap_or_else(|| "injected fault".into()),
                        retry_after,
                    },
                )
            }
            Fault::Bom {
                class,
                method,
                count,
            } => push(class, method, count, ResponseAction::Bom),
            Fault::MalformedJson {
                class,
                method,
                count,
            } => push(class, method, count, ResponseAction::MalformedJson),
            Fault::TruncatedJson {
                class,
                method,
                count,
            } => push(class, method, count, ResponseAction::TruncatedJson),
            Fault::EmptyBody {
                class,
                method,
                count,
            } => push(class, method, count, ResponseAction::EmptyBody),
            Fault::DropConnection {
                class,
                method,
                count,
            } => push(class, method, count, ResponseAction::DropConnection),
            Fault::ExpireQueueToken { scale_set_id } => self.with_state(|st| {
                let now = Instant::now();
                let mut hit = Vec::new();
                for s in st.sessions.values_mut() {
                    if scale_set_id.is_none_or(|id| id == s.scale_set) {
                        s.token_expires = now;
                        hit.push(s.scale_set);
                    }
                }
                // Polls in flight answer 401 now, not 202 at the end of the long poll.
                for id in hit {
                    if let Some(ss) = st.scale_sets.get(&id) {
                        ss.notify.notify_waiters();
                    }
                }
                Ok(())
            }),
            Fault::ExpireAdminToken => self.with_state(|st| {
                st.admin_generation += 1;
                Ok(())
            }),
            Fault::ForeignSession {
                scale_set_id,
                owner_name,
            } => self.with_state(|st| {
                let ss = st
                    .scale_sets
                    .get_mut(&scale_set_id)
                    .ok_or_else(|| format!("scale set {scale_set_id} not found"))?;
                ss.foreign_owner = Some(owner_name.unwrap_or_else(|| "foreign-owner".into()));
                Ok(())
            }),
            Fault::ReleaseForeignSession { scale_set_id } => self.with_state(|st| {
                let ss = st
                    .scale_sets
                    .get_mut(&scale_set_id)
                    .ok_or_else(|| format!("scale set {scale_set_id} not found"))?;
                ss.foreign_owner = None;
                Ok(())
            }),
            Fault::EvictSession { scale_set_id } => self.with_state(|st| {
                let ids: Vec<Uuid> = st
                    .sessions
                    .values()
                    .filter(|s| scale_set_id.is_none_or(|id| id == s.scale_set))
                    .map(|s| s.id)
                    .collect();
                for id in ids {
                    st.remove_session(id);
                }
                Ok(())
            }),
            Fault::DeleteScaleSet { scale_set_id } => {
                self.with_state(|st| st.delete_scale_set(scale_set_id).map_err(|e| e.message))
            }
            Fault::EmptyMessageQueueUrl { count } => self.with_state(|st| {
                st.empty_mq_url_next = st.empty_mq_url_next.saturating_add(count);
                Ok(())
            }),
            Fault::RunnerNeverOnline { count } => self.with_state(|st| {
                st.runner_faults
                    .extend((0..count.min(10_000)).map(|_| RunnerBehavior::NeverOnline));
                Ok(())
            }),
            Fault::RunnerCrashMidJob { count } => self.with_state(|st| {
                st.runner_faults
                    .extend((0..count.min(10_000)).map(|_| RunnerBehavior::CrashMidJob));
                Ok(())
            }),
            Fault::RunnerCrashBeforeJob { count } => self.with_state(|st| {
                st.runner_faults
                    .extend((0..count.min(10_000)).map(|_| RunnerBehavior::CrashBeforeJob));
                Ok(())
            }),
            Fault::RunnerFailJob { count } => self.with_state(|st| {
                st.runner_faults
                    .extend((0..count.min(10_000)).map(|_| RunnerBehavior::FailJob));
                Ok(())
            }),
        }
    }
}

type S = AxState<Arc<Shared>>;

// ----- errors -----

/// An HTTP error answer: Actions exception shape on the tenant side, GitHub shape on REST.
pub(crate) struct ApiError {
    status: StatusCode,
    type_name: String,
    message: String,
    rest: bool,
}

impl ApiError {
    fn new(status: u16, type_name: &str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            type_name: type_name.to_owned(),
            message: message.into(),
            rest: false,
        }
    }

    fn rest(status: u16, message: impl Into<String>) -> Self {
        Self {
            rest: true,
            ..Self::new(status, "", message)
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, EX_ARGUMENT, message)
    }
}

impl From<OpError> for ApiError {
    fn from(e: OpError) -> Self {
        Self::new(e.status, e.type_name, e.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = if self.rest {
            json!({"message": self.message, "documentation_url": "https://docs.github.com/rest"})
        } else {
            json!({"typeName": self.type_name, "message": self.message})
        };
        json_response(self.status, &body)
    }
}

type ApiResult = Result<Response, ApiError>;

fn json_response(status: StatusCode, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut resp = (status, bytes).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn ok(body: &Value) -> ApiResult {
    Ok(json_response(StatusCode::OK, body))
}

fn no_content() -> ApiResult {
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn parse_json<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

fn parse_json_or_default<T: DeserializeOwned + Default>(body: &Bytes) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        Ok(T::default())
    } else {
        parse_json(body)
    }
}

fn q_i64(q: &HashMap<String, String>, key: &str) -> Result<Option<i64>, ApiError> {
    match q.get(key).map(|v| v.trim()) {
        None | Some("") => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| {
            ApiError::bad_request(format!("query parameter {key} must be an integer"))
        }),
    }
}

fn auth_header<'a>(headers: &'a HeaderMap, scheme: &str) -> Option<&'a str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (s, rest) = v.split_once(' ')?;
    s.eq_ignore_ascii_case(scheme).then(|| rest.trim())
}

fn check_admin(s: &Shared, headers: &HeaderMap) -> Result<(), ApiError> {
    let unauthorized = |m: &str| ApiError::new(401, EX_UNAUTHORIZED, m);
    let tok = auth_header(headers, "Bearer").ok_or_else(|| unauthorized("missing bearer token"))?;
    let generation = s
        .keys
        .verify_admin(tok)
        .map_err(|e| unauthorized(&format!("invalid admin token: {e}")))?;
    if generation != s.read_state(|st| st.admin_generation) {
        return Err(unauthorized("admin token has been revoked"));
    }
    Ok(())
}

fn queue_token(headers: &HeaderMap) -> Result<String, ApiError> {
    auth_header(headers, "Bearer")
        .map(str::to_owned)
        .ok_or_else(|| {
            ApiError::new(
                401,
                crate::state::EX_TOKEN_EXPIRED,
                "missing message queue token",
            )
        })
}

// ----- router -----

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let t = "/tenant/{tenant}/_apis";
    Router::new()
        .route(
            "/api/v3/app/installations/{id}/access_tokens",
            post(installation_token),
        )
        .route(
            "/api/v3/orgs/{org}/actions/runners/registration-token",
            post(registration_token),
        )
        .route(
            "/api/v3/repos/{owner}/{repo}/actions/runners/registration-token",
            post(registration_token),
        )
        .route(
            "/api/v3/enterprises/{ent}/actions/runners/registration-token",
            post(registration_token),
        )
        .route(
            "/api/v3/actions/runner-registration",
            post(runner_registration),
        )
        .route(
            &format!("{t}/runtime/runnergroups"),
            get(list_runner_groups),
        )
        .route(
            &format!("{t}/runtime/runnergroups/"),
            get(list_runner_groups),
        )
        .route(
            &format!("{t}/runtime/runnerscalesets"),
            get(list_scale_sets).post(create_scale_set),
        )
        .route(
            &format!("{t}/runtime/runnerscalesets/{{id}}"),
            get(get_scale_set)
                .patch(update_scale_set)
                .delete(delete_scale_set),
        )
        .route(
            &format!("{t}/runtime/runnerscalesets/{{id}}/generatejitconfig"),
            post(generate_jit),
        )
        .route(
            &format!("{t}/runtime/runnerscalesets/{{id}}/sessions"),
            post(create_session),
        )
        .route(
            &format!("{t}/runtime/runnerscalesets/{{id}}/sessions/{{sid}}"),
            patch(refresh_session).delete(delete_session),
        )
        .route(
            &format!("{t}/runtime/runnerscalesets/{{id}}/acquirejobs"),
            post(acquire_jobs),
        )
        .route(
            &format!("{t}/runtime/runnerscalesets/{{id}}/acquirablejobs"),
            get(acquirable_jobs),
        )
        .route(
            &format!("{t}/distributedtask/pools/{{pool}}/agents"),
            get(list_agents),
        )
        .route(
            &format!("{t}/distributedtask/pools/{{pool}}/agents/{{rid}}"),
            get(get_agent).delete(delete_agent),
        )
        .route("/_broker/{id}/message", get(get_message))
        .route("/_broker/{id}/message/{mid}", delete(delete_message))
        .route("/_sim/info", get(control_info))
        .route("/_sim/jobs", post(control_enqueue))
        .route("/_sim/state", get(control_state))
        .route(
            "/_sim/requests",
            get(control_requests).delete(control_clear_requests),
        )
        .route(
            "/_sim/faults",
            get(control_faults)
                .post(control_add_faults)
                .delete(control_clear_faults),
        )
        .route("/_sim/runnergroups", post(control_add_group))
        .route("/_sim/runner/{rid}/online", post(runner_online))
        .route("/_sim/runner/{rid}/job", get(runner_job))
        .route("/_sim/runner/{rid}/heartbeat", post(runner_heartbeat))
        .route("/_sim/runner/{rid}/complete", post(runner_complete))
        .fallback(fallback)
        .layer(middleware::from_fn(json_errors))
        .layer(middleware::from_fn_with_state(shared.clone(), fault_layer))
        .layer(middleware::from_fn_with_state(shared.clone(), halt_layer))
        .with_state(shared)
}

async fn fallback(req: Request) -> Response {
    let path = req.uri().path().to_owned();
    if path.starts_with("/api/v3/") {
        ApiError::rest(404, "Not Found").into_response()
    } else {
        ApiError::new(
            404,
            "GitHub.Actions.Sim.NotFoundException",
            format!("no route for {path}"),
        )
        .into_response()
    }
}

/// Exception name for an error answer that did not come from a handler (an axum rejection
/// or a bare status).
fn rejection_type_name(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => EX_ARGUMENT,
        401 => crate::state::EX_UNAUTHORIZED,
        404 => "GitHub.Actions.Sim.NotFoundException",
        405 => "GitHub.Actions.Sim.MethodNotAllowedException",
        413 => "GitHub.Actions.Sim.RequestTooLargeException",
        415 => "GitHub.Actions.Sim.UnsupportedMediaTypeException",
        _ => "GitHub.Actions.Sim.HttpException",
    }
}

/// Rewrites every 4xx/5xx answer that is not already JSON (axum's own rejections: 405 with
/// an empty body, 413 and the 400s of the `Path`/`Query` extractors in plain text) into the
/// error shape of its surface: `{"message","documentation_url"}` under `/api/v3`, the Actions
/// exception `{"typeName","message"}` everywhere else (tenant, broker, `/_sim`). Status and
/// headers (`Allow`, `Retry-After`, ...) are kept; the diagnostic headers are added by the
/// outer layer.
async fn json_errors(req: Request, next: Next) -> Response {
    let rest = req.uri().path().starts_with("/api/v3/");
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        text
    };
    let fresh = ApiError {
        rest,
        ..ApiError::new(status.as_u16(), rejection_type_name(status), message)
    }
    .into_response();
    let (fresh_parts, fresh_body) = fresh.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    drop(fresh_parts);
    Response::from_parts(parts, fresh_body)
}

// ----- middleware: faults, diagnostic headers, request log -----

const MALFORMED: &[u8] = b"{\"count\": 1, \"value\": [{\"id\": ,,]";

fn logged_headers(h: &HeaderMap) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for name in [
        "user-agent",
        "content-type",
        "accept",
        "x-scalesetmaxcapacity",
    ] {
        if let Some(v) = h.get(name).and_then(|v| v.to_str().ok()) {
            out.insert(name.to_owned(), v.to_owned());
        }
    }
    if let Some(v) = h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        out.insert("authorization".to_owned(), auth_scheme_for_log(v));
    }
    out
}

/// Outermost layer: once [`Shared::halt`] fires, a request still in its handler (for
/// example one whose body never arrives) is answered 503 with `Connection: close`.
async fn halt_layer(AxState(s): S, req: Request, next: Next) -> Response {
    tokio::select! {
        r = next.run(req) => r,
        () = s.halt.cancelled() => {
            let mut r = ApiError::new(
                503,
                "GitHub.Actions.Sim.ShuttingDownException",
                "the simulator is stopping",
            )
            .into_response();
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            r
        }
    }
}

/// The scheme of an `Authorization` value when it is a known one, else `<redacted>`: a value
/// without a scheme is the credential itself and must not reach the log.
fn auth_scheme_for_log(v: &str) -> String {
    const KNOWN: [&str; 4] = ["Bearer", "RemoteAuth", "token", "Basic"];
    let mut words = v.split_whitespace();
    match (words.next(), words.next()) {
        (Some(first), Some(_)) => KNOWN
            .iter()
            .find(|k| k.eq_ignore_ascii_case(first))
            .map_or_else(|| "<redacted>".to_owned(), |k| (*k).to_owned()),
        _ => "<redacted>".to_owned(),
    }
}

/// Status logged for a request whose handler never answered because the client went away
/// (nginx's "client closed request").
pub(crate) const STATUS_CLIENT_CLOSED: u16 = 499;

/// Logs a request that is dropped before it is answered (the client closed the connection,
/// say a listener abandoning a long poll) with [`STATUS_CLIENT_CLOSED`].
struct PendingLog<'a> {
    s: &'a Shared,
    entry: Option<RequestLogEntry>,
    started: Instant,
}

impl PendingLog<'_> {
    fn finish(mut self, status: u16) {
        if let Some(mut e) = self.entry.take() {
            e.status = status;
            e.duration_ms = millis(self.started.elapsed());
            self.s.log_request(e);
        }
    }
}

impl Drop for PendingLog<'_> {
    fn drop(&mut self) {
        if let Some(mut e) = self.entry.take() {
            e.status = STATUS_CLIENT_CLOSED;
            e.duration_ms = millis(self.started.elapsed());
            self.s.log_request(e);
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

async fn fault_layer(AxState(s): S, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    let Some(class) = EndpointClass::classify(&path) else {
        return next.run(req).await;
    };
    let method = req.method().as_str().to_owned();
    let query = req.uri().query().map(str::to_owned);
    let headers = logged_headers(req.headers());
    let started = Instant::now();
    let time = crate::state::fmt_ts(jiff::Timestamp::now());
    let seq = s.seq.fetch_add(1, Ordering::Relaxed);
    let (latency, action) = {
        let mut f = lock(&s.faults);
        (
            f.take_latency(class, &method),
            f.take_response(class, &method),
        )
    };
    let mut pending = PendingLog {
        s: &s,
        entry: Some(RequestLogEntry {
            seq,
            time,
            method: method.clone(),
            path,
            query,
            class,
            status: 0,
            headers,
            fault: None,
            duration_ms: 0,
        }),
        started,
    };
    if !latency.before.is_zero() {
        tokio::select! {
            () = tokio::time::sleep(latency.before) => {}
            () = s.cancel.cancelled() => {}
        }
    }
    let fault_name = action.as_ref().map(|a| {
        match a {
            ResponseAction::Status { .. } => "status",
            ResponseAction::Bom => "bom",
            ResponseAction::MalformedJson => "malformedJson",
            ResponseAction::TruncatedJson => "truncatedJson",
            ResponseAction::EmptyBody => "emptyBody",
            ResponseAction::DropConnection => "dropConnection",
        }
        .to_owned()
    });
    if let Some(e) = pending.entry.as_mut() {
        e.fault.clone_from(&fault_name);
    }
    let mut dropped = false;
    let mut resp = match action {
        None if !latency.after.is_zero() => {
            // Handled to the end even if the client hangs up; only the answer is late.
            let handled = tokio::spawn(next.run(req)).await;
            tokio::select! {
                () = tokio::time::sleep(latency.after) => {}
                () = s.cancel.cancelled() => {}
            }
            handled.unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
        }
        None => next.run(req).await,
        Some(ResponseAction::Status {
            status,
            type_name,
            message,
            retry_after,
        }) => {
            let mut r = if matches!(status, 204 | 304) {
                // No body (and no Content-Type) is allowed with these.
                StatusCode::from_u16(status)
                    .unwrap_or(StatusCode::NO_CONTENT)
                    .into_response()
            } else {
                ApiError {
                    rest: class == EndpointClass::Github,
                    ..ApiError::new(status, &type_name, message)
                }
                .into_response()
            };
            if let Some(secs) = retry_after {
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            r
        }
        Some(ResponseAction::EmptyBody) => StatusCode::OK.into_response(),
        Some(ResponseAction::DropConnection) => {
            dropped = true;
            let stream = futures::stream::once(async {
                Err::<Bytes, std::io::Error>(std::io::Error::other(
                    "scaleset-sim: dropped connection",
                ))
            });
            Response::new(Body::from_stream(stream))
        }
        Some(mangle) => {
            let resp = next.run(req).await;
            let (parts, body) = resp.into_parts();
            let bytes = axum::body::to_bytes(body, 64 * 1024 * 1024)
                .await
                .unwrap_or_default();
            let new: Vec<u8> = match mangle {
                ResponseAction::Bom => [b"\xEF\xBB\xBF".as_slice(), &bytes].concat(),
                ResponseAction::MalformedJson => MALFORMED.to_vec(),
                _ => {
                    let half = if bytes.len() > 1 { bytes.len() / 2 } else { 0 };
                    bytes[..half].to_vec()
                }
            };
            let mut r = Response::from_parts(parts, Body::from(new));
            r.headers_mut().remove(header::CONTENT_LENGTH);
            r
        }
    };
    let id = Uuid::new_v4().to_string();
    if let Ok(v) = HeaderValue::from_str(&id) {
        let name = if class == EndpointClass::Github {
            "x-github-request-id"
        } else {
            "activityid"
        };
        resp.headers_mut().insert(name, v);
    }
    pending.finish(if dropped { 0 } else { resp.status().as_u16() });
    resp
}

// ----- GitHub REST -----

#[derive(Deserialize)]
struct InstPath {
    id: String,
}

async fn installation_token(
    AxState(s): S,
    Path(p): Path<InstPath>,
    headers: HeaderMap,
) -> ApiResult {
    let tok = auth_header(&headers, "Bearer")
        .ok_or_else(|| ApiError::rest(401, "A JSON web token could not be decoded"))?;
    s.keys
        .verify_app_jwt(tok, APP_CLIENT_ID, s.cfg.app_id)
        .map_err(|e| ApiError::rest(401, e))?;
    if p.id.parse::<u64>().ok() != Some(APP_INSTALLATION_ID) {
        return Err(ApiError::rest(404, "Not Found"));
    }
    let token = random_token("ghs_");
    let ttl = s.cfg.installation_token_ttl;
    s.with_state(|st| {
        let now = Instant::now();
        st.insert_install_token(token.clone(), add_or_far(now, ttl), now);
    });
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"token": token, "expires_at": expiry(ttl), "permissions": {"organization_self_hosted_runners": "write"}}),
    ))
}

fn expiry(ttl: Duration) -> String {
    let secs = now_secs().saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 4));
    jiff::Timestamp::from_second(secs)
        .or_else(|_| jiff::Timestamp::from_second(jiff::Timestamp::MAX.as_second()))
        .map(crate::state::fmt_ts)
        .unwrap_or_default()
}

async fn registration_token(AxState(s): S, headers: HeaderMap) -> ApiResult {
    let tok = auth_header(&headers, "Bearer")
        .or_else(|| auth_header(&headers, "token"))
        .ok_or_else(|| ApiError::rest(401, "Requires authentication"))?;
    let now = Instant::now();
    let valid =
        tok == s.pat || s.read_state(|st| st.install_tokens.get(tok).is_some_and(|exp| *exp > now));
    if !valid {
        return Err(ApiError::rest(401, "Bad credentials"));
    }
    let token = random_token("AREG");
    let ttl = s.cfg.registration_token_ttl;
    s.with_state(|st| st.insert_reg_token(token.clone(), add_or_far(now, ttl), now));
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"token": token, "expires_at": expiry(ttl)}),
    ))
}

#[derive(Deserialize)]
struct RegistrationBody {
    #[serde(default)]
    url: String,
    #[serde(default)]
    runner_event: String,
}

async fn runner_registration(AxState(s): S, headers: HeaderMap, body: Bytes) -> ApiResult {
    let tok = auth_header(&headers, "RemoteAuth")
        .ok_or_else(|| ApiError::rest(401, "Requires RemoteAuth registration token"))?;
    let now = Instant::now();
    if !s.read_state(|st| st.reg_tokens.get(tok).is_some_and(|exp| *exp > now)) {
        return Err(ApiError::rest(401, "Bad registration token"));
    }
    let b: RegistrationBody = parse_json(&body).map_err(|e| ApiError::rest(400, e.message))?;
    if b.url.is_empty() {
        return Err(ApiError::rest(400, "url is required"));
    }
    if !b.runner_event.is_empty() && b.runner_event != "register" {
        return Err(ApiError::rest(
            400,
            format!("unsupported runner_event {:?}", b.runner_event),
        ));
    }
    if !valid_config_url(&b.url) {
        return Err(ApiError::rest(
            404,
            format!("no enterprise, organization or repository at {}", b.url),
        ));
    }
    let generation = s.read_state(|st| st.admin_generation);
    let ttl = i64::try_from(s.cfg.admin_token_ttl.as_secs()).unwrap_or(i64::MAX / 4);
    let token = s
        .keys
        .mint_admin(ttl, generation)
        .map_err(|e| ApiError::rest(500, e))?;
    let tenant = s.read_state(|st| st.tenant_url.clone());
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"url": tenant, "token": token, "token_schema": "OAuthAccessToken", "use_v2_flow": false}),
    ))
}

/// Accepts `<scheme>://<host>/{org}`, `/{owner}/{repo}` and `/enterprises/{ent}`.
fn valid_config_url(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let path = rest.split_once('/').map_or("", |(_, p)| p);
    let path = path
        .split(['?', '#'])
        .next()
        .unwrap_or("")
        .trim_matches('/');
    let segs: Vec<&str> = path.split('/').collect();
    match segs.as_slice() {
        [one] => !one.is_empty(),
        [a, b] => !a.is_empty() && !b.is_empty(),
        _ => false,
    }
}

// ----- runner groups & scale sets -----

async fn list_runner_groups(
    AxState(s): S,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    check_admin(&s, &headers)?;
    let name = q.get("groupName").cloned();
    let value: Vec<Value> = s.read_state(|st| {
        st.groups
            .values()
            .filter(|g| {
                name.as_deref()
                    .is_none_or(|n| g.name.eq_ignore_ascii_case(n))
            })
            .map(|g| st.group_json(g))
            .collect()
    });
    ok(&json!({"count": value.len(), "value": value}))
}

async fn list_scale_sets(
    AxState(s): S,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    check_admin(&s, &headers)?;
    let group = q_i64(&q, "runnerGroupId")?;
    let name = q.get("name").cloned().filter(|n| !n.is_empty());
    let value: Vec<Value> = s.read_state(|st| {
        st.scale_sets
            .values()
            .filter(|ss| group.is_none_or(|g| g == ss.group_id))
            .filter(|ss| {
                name.as_deref()
                    .is_none_or(|n| ss.name.eq_ignore_ascii_case(n))
            })
            .map(|ss| st.scale_set_json(ss))
            .collect()
    });
    ok(&json!({"count": value.len(), "value": value}))
}

#[derive(Deserialize)]
struct LabelIn {
    #[serde(default)]
    name: String,
    #[serde(default, rename = "type")]
    kind: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ScaleSetIn {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    runner_group_id: Option<i64>,
    #[serde(default)]
    runner_group_name: Option<String>,
    #[serde(default)]
    labels: Option<Vec<LabelIn>>,
    #[serde(default, rename = "RunnerSetting", alias = "runnerSetting")]
    runner_setting: Option<serde_json::Map<String, Value>>,
}

fn labels_in(labels: Option<Vec<LabelIn>>) -> Result<Option<Vec<Label>>, ApiError> {
    let Some(labels) = labels else {
        return Ok(None);
    };
    if labels.is_empty() {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(labels.len());
    for l in labels {
        if l.name.trim().is_empty() {
            return Err(ApiError::bad_request("label names must not be empty"));
        }
        let kind = if l.kind.is_empty() {
            "System".to_owned()
        } else {
            l.kind
        };
        out.push(Label { name: l.name, kind });
    }
    Ok(Some(out))
}

fn resolve_group(st: &State, id: Option<i64>, name: Option<&str>) -> Option<i64> {
    match (id.filter(|i| *i != 0), name.filter(|n| !n.is_empty())) {
        (Some(i), _) => Some(i),
        (None, Some(n)) => st.group_by_name(n).map(|g| g.id).or(Some(-1)),
        (None, None) => None,
    }
}

async fn create_scale_set(AxState(s): S, headers: HeaderMap, body: Bytes) -> ApiResult {
    check_admin(&s, &headers)?;
    let b: ScaleSetIn = parse_json(&body)?;
    let labels = labels_in(b.labels)?.unwrap_or_default();
    let name = b.name.unwrap_or_default();
    let v = s.with_state(|st| {
        let group =
            resolve_group(st, b.runner_group_id, b.runner_group_name.as_deref()).unwrap_or(1);
        let id = st.create_scale_set(name, group, labels, b.runner_setting.unwrap_or_default())?;
        Ok::<_, OpError>(st.scale_sets.get(&id).map(|ss| st.scale_set_json(ss)))
    })?;
    ok(&v.unwrap_or(Value::Null))
}

#[derive(Deserialize)]
struct IdPath {
    id: String,
}

impl IdPath {
    fn id(&self) -> Result<i64, ApiError> {
        self.id
            .parse()
            .map_err(|_| ApiError::bad_request(format!("invalid id {:?}", self.id)))
    }
}

async fn get_scale_set(AxState(s): S, Path(p): Path<IdPath>, headers: HeaderMap) -> ApiResult {
    check_admin(&s, &headers)?;
    let id = p.id()?;
    let v = s.read_state(|st| st.scale_sets.get(&id).map(|ss| st.scale_set_json(ss)));
    match v {
        Some(v) => ok(&v),
        None => Err(ApiError::new(
            404,
            EX_SS_NOT_FOUND,
            format!("runner scale set {id} not found"),
        )),
    }
}

async fn update_scale_set(
    AxState(s): S,
    Path(p): Path<IdPath>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    check_admin(&s, &headers)?;
    let id = p.id()?;
    let b: ScaleSetIn = parse_json_or_default(&body)?;
    let labels = labels_in(b.labels)?;
    let v = s.with_state(|st| {
        let group = resolve_group(st, b.runner_group_id, b.runner_group_name.as_deref());
        st.update_scale_set(
            id,
            b.name.filter(|n| !n.is_empty()),
            group,
            labels,
            b.runner_setting.filter(|m| !m.is_empty()),
        )?;
        Ok::<_, OpError>(st.scale_sets.get(&id).map(|ss| st.scale_set_json(ss)))
    })?;
    ok(&v.unwrap_or(Value::Null))
}

async fn delete_scale_set(AxState(s): S, Path(p): Path<IdPath>, headers: HeaderMap) -> ApiResult {
    check_admin(&s, &headers)?;
    let id = p.id()?;
    s.with_state(|st| st.delete_scale_set(id))?;
    no_content()
}

// ----- JIT -----

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct JitIn {
    #[serde(default)]
    name: String,
    #[serde(default)]
    work_folder: String,
}

fn b64_json(v: &Value) -> String {
    B64.encode(serde_json::to_vec(v).unwrap_or_default())
}

fn random_b64(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    rand::rng().fill(bytes.as_mut_slice());
    B64.encode(bytes)
}

async fn generate_jit(
    AxState(s): S,
    Path(p): Path<IdPath>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    check_admin(&s, &headers)?;
    let ss_id = p.id()?;
    let b: JitIn = parse_json(&body)?;
    let (rid, secret) = s.with_state(|st| st.register_runner(ss_id, &b.name))?;
    let base = &s.base_url;
    let work = if b.work_folder.is_empty() {
        "_work".to_owned()
    } else {
        b.work_folder
    };
    let runner_file = json!({
        "agentId": rid,
        "agentName": b.name,
        "poolId": 1,
        "poolName": "Default",
        "serverUrl": format!("{base}/"),
        "gitHubUrl": format!("{base}/{}/{}", s.cfg.org, s.cfg.repo),
        "workFolder": work,
        "ephemeral": true,
        "disableUpdate": true,
    });
    let creds = json!({
        "scheme": "OAuth",
        "data": {
            "clientId": Uuid::new_v4().to_string(),
            "authorizationUrl": format!("{base}/_sim/runner/{rid}/oauth2/token"),
            "requireFipsCryptography": "False",
            "simRunnerSecret": secret,
        }
    });
    let rsa = json!({
        "d": random_b64(256), "dp": random_b64(128), "dq": random_b64(128),
        "exponent": "AQAB", "inverseQ": random_b64(128), "modulus": random_b64(256),
        "p": random_b64(128), "q": random_b64(128),
    });
    let map = json!({
        ".runner": b64_json(&runner_file),
        ".credentials": b64_json(&creds),
        ".credentials_rsaparams": b64_json(&rsa),
    });
    ok(&json!({
        "runner": {"id": rid, "name": b.name, "runnerScaleSetId": ss_id},
        "encodedJITConfig": b64_json(&map),
    }))
}

// ----- agents -----

async fn list_agents(
    AxState(s): S,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    check_admin(&s, &headers)?;
    let name = q.get("agentName").cloned();
    let value: Vec<Value> = s.read_state(|st| {
        st.runners
            .values()
            .filter(|r| {
                name.as_deref()
                    .is_none_or(|n| r.name.eq_ignore_ascii_case(n))
            })
            .map(|r| st.runner_json(r))
            .collect()
    });
    ok(&json!({"count": value.len(), "value": value}))
}

#[derive(Deserialize)]
struct AgentPath {
    rid: String,
}

impl AgentPath {
    fn id(&self) -> Result<i64, ApiError> {
        self.rid
            .parse()
            .map_err(|_| ApiError::bad_request(format!("invalid runner id {:?}", self.rid)))
    }
}

async fn get_agent(AxState(s): S, Path(p): Path<AgentPath>, headers: HeaderMap) -> ApiResult {
    check_admin(&s, &headers)?;
    let id = p.id()?;
    match s.read_state(|st| st.runners.get(&id).map(|r| st.runner_json(r))) {
        Some(v) => ok(&v),
        None => Err(ApiError::new(
            404,
            EX_AGENT_NOT_FOUND,
            format!("No runner with id {id} was found."),
        )),
    }
}

async fn delete_agent(AxState(s): S, Path(p): Path<AgentPath>, headers: HeaderMap) -> ApiResult {
    check_admin(&s, &headers)?;
    let id = p.id()?;
    let existed = s.with_state(|st| {
        let existed = st.runners.contains_key(&id);
        st.delete_runner(id).map(|()| existed)
    })?;
    if !existed && s.cfg.missing_runner_delete_not_found {
        return Err(ApiError::new(
            404,
            EX_AGENT_NOT_FOUND,
            format!("No runner with id {id} was found."),
        ));
    }
    no_content()
}

// ----- sessions -----

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct SessionIn {
    #[serde(default)]
    owner_name: String,
}

#[derive(Deserialize)]
struct SessionPath {
    id: String,
    sid: String,
}

impl SessionPath {
    fn ids(&self) -> Result<(i64, Uuid), ApiError> {
        let id = IdPath {
            id: self.id.clone(),
        }
        .id()?;
        let sid = Uuid::parse_str(&self.sid)
            .map_err(|_| ApiError::bad_request(format!("invalid session id {:?}", self.sid)))?;
        Ok((id, sid))
    }
}

async fn create_session(
    AxState(s): S,
    Path(p): Path<IdPath>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    check_admin(&s, &headers)?;
    let id = p.id()?;
    let b: SessionIn = parse_json_or_default(&body)?;
    let v = s.with_state(|st| {
        let sid = st.create_session(id, b.owner_name)?;
        Ok::<_, OpError>(st.session_json(sid))
    })?;
    ok(&v)
}

async fn refresh_session(
    AxState(s): S,
    Path(p): Path<SessionPath>,
    headers: HeaderMap,
) -> ApiResult {
    check_admin(&s, &headers)?;
    let (id, sid) = p.ids()?;
    let v = s.with_state(|st| {
        st.refresh_session(id, sid)?;
        Ok::<_, OpError>(st.session_json(sid))
    })?;
    ok(&v)
}

async fn delete_session(
    AxState(s): S,
    Path(p): Path<SessionPath>,
    headers: HeaderMap,
) -> ApiResult {
    check_admin(&s, &headers)?;
    let (id, sid) = p.ids()?;
    s.with_state(|st| st.delete_session(id, sid))?;
    no_content()
}

// ----- message queue -----

/// Waits until `check` yields a value (`Ok(v)`), `deadline` passes (`Ok(None)`) or the sim
/// shuts down. `check` answers `Err(Some(t))` to be checked again at `t` even without a
/// notification, `Err(None)` to wait for one.
async fn wait_on<T>(
    s: &Shared,
    notify: &Notify,
    deadline: Instant,
    mut check: impl FnMut(&mut State) -> Result<Result<T, Option<Instant>>, OpError>,
) -> Result<Option<T>, OpError> {
    loop {
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let wake = match s.with_state_if_changed(&mut check)? {
            Ok(v) => return Ok(Some(v)),
            Err(wake) => wake,
        };
        tokio::select! {
            () = &mut notified => {}
            () = tokio::time::sleep_until(wake.unwrap_or(deadline).min(deadline)) => {
                if Instant::now() >= deadline {
                    return Ok(None);
                }
            }
            () = s.cancel.cancelled() => return Ok(None),
        }
    }
}

async fn get_message(
    AxState(s): S,
    Path(p): Path<IdPath>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let ss_id = p.id()?;
    let token = queue_token(&headers)?;
    let last = q_i64(&q, "lastMessageId")?.unwrap_or(0);
    let capacity = match headers.get("x-scalesetmaxcapacity") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u32>().ok())
                .ok_or_else(|| {
                    ApiError::bad_request("X-ScaleSetMaxCapacity must be a non-negative integer")
                })?,
        ),
    };
    let session_q = q.get("sessionId").cloned();
    let notify = s.with_state_if_changed(|st| {
        let sid = st.check_queue_token(&token, ss_id, Instant::now())?;
        check_session_query(session_q.as_deref(), sid)?;
        if let Some(c) = capacity {
            st.set_capacity(ss_id, c);
        }
        st.touch_session(sid, 1, Instant::now());
        Ok::<_, OpError>((sid, st.scale_sets.get(&ss_id).map(|ss| ss.notify.clone())))
    })?;
    let (sid, notify) = notify;
    let _active = SessionPoll { s: &s, sid };
    let Some(notify) = notify else {
        return Err(ApiError::new(404, EX_SS_NOT_FOUND, "scale set not found"));
    };
    let deadline = add_or_far(Instant::now(), s.cfg.long_poll);
    let _guard = PollGuard::new(&s);
    let msg = wait_on(&s, &notify, deadline, |st| {
        let sid = st.check_queue_token(&token, ss_id, Instant::now())?;
        // Also wake when the token expires: the poll then answers 401 at once.
        let expires = st.sessions.get(&sid).map(|s| s.token_expires);
        Ok(st
            .next_message(ss_id, last, Instant::now())
            .map_err(|wake| wake.into_iter().chain(expires).min()))
    })
    .await?;
    match msg {
        Some(v) => ok(&v),
        None => Ok(StatusCode::ACCEPTED.into_response()),
    }
}

/// The message queue URL carries `sessionId`: required, and it must be the token's session.
fn check_session_query(q: Option<&str>, sid: Uuid) -> Result<(), OpError> {
    match q {
        None => Err(op_err(
            400,
            EX_ARGUMENT,
            "the sessionId query parameter is required",
        )),
        Some(q) if q != sid.to_string() => Err(op_err(
            401,
            crate::state::EX_TOKEN_EXPIRED,
            "token does not belong to this session",
        )),
        Some(_) => Ok(()),
    }
}

#[derive(Deserialize)]
struct MessagePath {
    id: String,
    mid: String,
}

async fn delete_message(
    AxState(s): S,
    Path(p): Path<MessagePath>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let ss_id = IdPath { id: p.id.clone() }.id()?;
    let mid: i64 = p
        .mid
        .parse()
        .map_err(|_| ApiError::bad_request(format!("invalid message id {:?}", p.mid)))?;
    let token = queue_token(&headers)?;
    s.with_state_if_changed(|st| {
        let sid = st.check_queue_token(&token, ss_id, Instant::now())?;
        check_session_query(q.get("sessionId").map(String::as_str), sid)?;
        st.touch_session(sid, 0, Instant::now());
        st.ack_message(ss_id, mid);
        Ok::<_, OpError>(())
    })?;
    no_content()
}

async fn acquire_jobs(
    AxState(s): S,
    Path(p): Path<IdPath>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let ss_id = p.id()?;
    let token = queue_token(&headers)?;
    let ids: Vec<i64> = parse_json(&body)?;
    let acquired = s.with_state_if_changed(|st| {
        let sid = st.check_queue_token(&token, ss_id, Instant::now())?;
        st.touch_session(sid, 0, Instant::now());
        Ok::<_, OpError>(st.acquire(ss_id, &ids))
    })?;
    ok(&json!({"count": acquired.len(), "value": acquired}))
}

async fn acquirable_jobs(AxState(s): S, Path(p): Path<IdPath>, headers: HeaderMap) -> ApiResult {
    check_admin(&s, &headers)?;
    let ss_id = p.id()?;
    // Jobs offered to the scale set (ghes mode) and not yet acquired, in request-id order.
    let value: Option<Vec<Value>> = s.read_state(|st| {
        let ss = st.scale_sets.get(&ss_id)?;
        Some(
            ss.jobs
                .iter()
                .filter_map(|j| st.jobs.get(j))
                .filter(|j| matches!(j.phase, JobPhase::Available(_)) && !j.acquired)
                .map(|j| st.job_message(j, "JobAvailable"))
                .collect(),
        )
    });
    let Some(value) = value else {
        return Err(ApiError::new(
            404,
            EX_SS_NOT_FOUND,
            format!("Runner scale set {ss_id} was not found."),
        ));
    };
    if value.is_empty() {
        return no_content();
    }
    ok(&json!({"count": value.len(), "value": value}))
}

// ----- control API -----

async fn control_info(AxState(s): S) -> ApiResult {
    let creds = crate::auth::AppCredentials::with_app_id(s.cfg.app_id);
    ok(&json!({
        "baseUrl": s.base_url,
        "configUrl": format!("{}/{}/{}", s.base_url, s.cfg.org, s.cfg.repo),
        "orgConfigUrl": format!("{}/{}", s.base_url, s.cfg.org),
        "enterpriseConfigUrl": format!("{}/enterprises/sim-enterprise", s.base_url),
        "token": s.pat,
        "controlUrl": format!("{}/_sim", s.base_url),
        "mode": s.cfg.mode,
        "app": {
            "clientId": creds.client_id,
            "appId": creds.app_id,
            "installationId": creds.installation_id,
            "privateKeyPem": creds.private_key_pem,
        },
    }))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct EnqueueIn {
    #[serde(default)]
    labels: Vec<String>,
    #[serde(default = "one_u32")]
    count: u32,
    #[serde(default)]
    duration_seconds: Option<f64>,
    #[serde(default)]
    duration_ms: Option<u64>,
    #[serde(default)]
    result: Option<String>,
}

fn one_u32() -> u32 {
    1
}

async fn control_enqueue(AxState(s): S, body: Bytes) -> ApiResult {
    let b: EnqueueIn = parse_json(&body)?;
    let max = crate::MAX_JOB_DURATION;
    let duration = match (b.duration_ms, b.duration_seconds) {
        (Some(ms), _) => Some(Duration::from_millis(ms))
            .filter(|d| *d <= max)
            .ok_or_else(|| {
                ApiError::bad_request(format!("durationMs must be at most {}", max.as_millis()))
            })?,
        (None, Some(secs)) => Duration::try_from_secs_f64(secs)
            .ok()
            .filter(|d| *d <= max)
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "durationSeconds must be a number from 0 to {}",
                    max.as_secs()
                ))
            })?,
        (None, None) => Duration::ZERO,
    };
    let req = crate::EnqueueJobs {
        labels: b.labels,
        count: b.count,
        duration,
        result: b.result.unwrap_or_else(|| "succeeded".into()),
    };
    let ids = crate::enqueue(&s, req).map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(json_response(StatusCode::CREATED, &json!({"jobIds": ids})))
}

async fn control_state(AxState(s): S) -> ApiResult {
    let snap = s.snapshot();
    ok(&serde_json::to_value(snap).unwrap_or(Value::Null))
}

async fn control_requests(AxState(s): S) -> ApiResult {
    ok(&serde_json::to_value(s.requests()).unwrap_or(Value::Null))
}

async fn control_clear_requests(AxState(s): S) -> ApiResult {
    s.clear_requests();
    no_content()
}

async fn control_faults(AxState(s): S) -> ApiResult {
    ok(&s.faults_json())
}

async fn control_add_faults(AxState(s): S, body: Bytes) -> ApiResult {
    let v: Value = parse_json(&body)?;
    let list = match v {
        Value::Array(items) => items,
        other => vec![other],
    };
    let mut faults = Vec::with_capacity(list.len());
    for item in list {
        let f: Fault = serde_json::from_value(item)
            .map_err(|e| ApiError::bad_request(format!("invalid fault: {e}")))?;
        faults.push(f);
    }
    for f in faults {
        s.apply_fault(f)
            .map_err(|e| ApiError::bad_request(format!("invalid fault: {e}")))?;
    }
    no_content()
}

async fn control_clear_faults(AxState(s): S) -> ApiResult {
    s.clear_faults();
    no_content()
}

#[derive(Deserialize)]
struct GroupIn {
    name: String,
}

async fn control_add_group(AxState(s): S, body: Bytes) -> ApiResult {
    let b: GroupIn = parse_json(&body)?;
    let v = s.with_state(|st| {
        let id = st.add_group(&b.name)?;
        Ok::<_, OpError>(st.groups.get(&id).map(|g| st.group_json(g)))
    })?;
    Ok(json_response(
        StatusCode::CREATED,
        &v.unwrap_or(Value::Null),
    ))
}

// ----- simulated runner API -----

fn runner_auth(s: &Shared, rid: i64, headers: &HeaderMap) -> Result<(), ApiError> {
    let secret = auth_header(headers, "Bearer")
        .ok_or_else(|| ApiError::new(401, EX_UNAUTHORIZED, "missing runner credentials"))?;
    s.read_state(|st| st.check_runner(rid, secret).map(|_| ()))?;
    Ok(())
}

async fn runner_online(AxState(s): S, Path(p): Path<AgentPath>, headers: HeaderMap) -> ApiResult {
    let rid = p.id()?;
    runner_auth(&s, rid, &headers)?;
    let behavior = s.with_state(|st| st.runner_online(rid));
    ok(&json!({"behavior": behavior}))
}

async fn runner_job(
    AxState(s): S,
    Path(p): Path<AgentPath>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let rid = p.id()?;
    runner_auth(&s, rid, &headers)?;
    let wait = q_i64(&q, "waitMs")?
        .map_or(s.cfg.runner_job_poll, |ms| {
            Duration::from_millis(ms.clamp(0, 600_000) as u64)
        })
        .min(s.cfg.runner_job_poll);
    let notify = s.read_state(|st| {
        let r = st.runners.get(&rid)?;
        st.scale_sets.get(&r.scale_set).map(|ss| ss.notify.clone())
    });
    let Some(notify) = notify else {
        // Scale set gone: maybe the runner already holds a job (it keeps running it).
        let job = s.with_state(|st| st.runner_take_job(rid));
        return match job {
            Some(j) => ok(&j),
            None => Err(ApiError::new(
                404,
                EX_AGENT_NOT_FOUND,
                "runner or scale set removed",
            )),
        };
    };
    let job = wait_on(&s, &notify, add_or_far(Instant::now(), wait), |st| {
        if !st.runners.contains_key(&rid) {
            return Err(op_err(
                404,
                EX_AGENT_NOT_FOUND,
                format!("runner {rid} was removed"),
            ));
        }
        Ok(st.runner_take_job(rid).ok_or(None))
    })
    .await?;
    match job {
        Some(j) => ok(&j),
        None => no_content(),
    }
}

async fn runner_heartbeat(
    AxState(s): S,
    Path(p): Path<AgentPath>,
    headers: HeaderMap,
) -> ApiResult {
    let rid = p.id()?;
    runner_auth(&s, rid, &headers)?;
    s.with_state(|st| st.heartbeat(rid))?;
    ok(&json!({"ok": true}))
}

#[derive(Deserialize, Default)]
struct CompleteIn {
    #[serde(default)]
    result: Option<String>,
}

async fn runner_complete(
    AxState(s): S,
    Path(p): Path<AgentPath>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let rid = p.id()?;
    runner_auth(&s, rid, &headers)?;
    let b: CompleteIn = parse_json_or_default(&body)?;
    let result = b
        .result
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "succeeded".into());
    s.with_state(|st| st.runner_complete(rid, &result))?;
    ok(&json!({"ok": true}))
}
