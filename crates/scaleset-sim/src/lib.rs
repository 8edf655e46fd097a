//! A stateful, fault-injecting simulator of GitHub's runner scale set service, plus a
//! simulated runner.
//!
//! One axum server on one port serves three surfaces:
//!
//! * the **GitHub REST** side in GHES layout under `/api/v3/...` (installation token,
//!   registration token for org/repo/enterprise scopes, `actions/runner-registration`);
//! * the **Actions service** tenant under `/tenant/1/_apis/...` (runner groups, scale sets,
//!   JIT configs, runners, sessions, acquire jobs) and the **message queue** under
//!   `/_broker/{scaleSetId}/message?sessionId=...`;
//! * the **control API** and the **simulated-runner API** under the reserved prefix `/_sim`.
//!
//! # Quick start
//!
//! ```no_run
//! # async fn demo() -> Result<(), scaleset_sim::SimError> {
//! use scaleset_sim::{EnqueueJobs, SimConfig, Simulator};
//! let sim = Simulator::start(SimConfig::default()).await?;
//! println!("{}", sim.startup_line());
//! let ids = sim
//!     .enqueue_jobs(EnqueueJobs { labels: vec!["linux".into()], ..Default::default() })
//!     .await?;
//! assert_eq!(ids.len(), 1);
//! sim.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Model
//!
//! * Jobs match a scale set whose labels contain all of the job's labels (case-insensitive;
//!   a job with no labels matches any scale set). Unmatched jobs wait.
//! * `hosted` mode: the job is assigned directly (`JobAssigned`). `ghes` mode: `JobAvailable`
//!   (with `acquireJobUrl`), then `acquirejobs`, then `JobAssigned`.
//! * **Capacity**: a scale set never holds more non-completed jobs (available + assigned +
//!   running) than the last `X-ScaleSetMaxCapacity` its listener sent. Before its first poll
//!   the capacity is **0**, so nothing is offered to a scale set nobody listens to; jobs
//!   enqueued earlier are offered on the first poll (which then answers at once).
//! * Events belong to the scale set, not the session: a new session sees unacknowledged
//!   messages. Pending events are packed into messages of at most 50 job messages when a
//!   poll arrives; a poll returns the oldest unacknowledged message with id > `lastMessageId`
//!   at once, else the oldest unacknowledged one not delivered within
//!   `message_visibility_timeout` (default 30 s; the long poll answers when one becomes
//!   visible again, so a client whose `DELETE` failed is not served in a hot loop).
//!   `DELETE` acknowledges.
//! * An assigned job no runner takes within `assignment_timeout` gets `JobCompleted` with
//!   result `canceled` and is requeued (at once), at most `max_requeues` times, then it stays
//!   completed/canceled.
//! * ghes: an offered job (`JobAvailable`) not acquired within `assignment_timeout` (the
//!   listener never called `acquirejobs`, or the call failed) goes back to the queue without
//!   any `JobCompleted` (it was never assigned; not counted in `max_requeues`) and is offered
//!   again at once, with a new `JobAvailable` in the next message, to any matching scale set
//!   with room. GitHub keeps an unacquired job queued and offers it again; it never loses it.
//! * A session with no poll in flight and no poll, message `DELETE`, `acquirejobs` or refresh
//!   for `session_idle_timeout` (default 120 s) is removed (a listener that crashed without
//!   deleting it); its scale set then accepts a new session.
//! * A simulated runner takes the oldest assigned job of its scale set (`JobStarted`), runs it
//!   for the job's duration with heartbeats and reports (`JobCompleted`); the ephemeral runner
//!   is then removed. A busy runner silent for `runner_heartbeat_timeout` is dead: its job
//!   completes `failed` and the runner is removed.
//!
//! # Errors
//!
//! Every error answer is JSON (`Content-Type: application/json`): the Actions exception
//! `{"typeName","message"}` on the tenant, the message queue and `/_sim`, GitHub's
//! `{"message","documentation_url"}` under `/api/v3`. The web framework's own rejections
//! (unknown route 404, wrong method 405, body too large 413, bad path or query parameter
//! 400) are rewritten into that shape too, keeping the status and the `ActivityId` /
//! `X-GitHub-Request-Id` headers.
//!
//! # Memory
//!
//! Only the [`SimConfig::completed_jobs_capacity`] most recently completed jobs are kept;
//! expired installation/registration tokens are dropped when a new one is issued; the request
//! log keeps [`SimConfig::request_log_capacity`] entries.
//!
//! # Control API (`/_sim`, JSON; never faulted, never logged)
//!
//! | Method & path | Body | Answer |
//! |---|---|---|
//! | `GET /_sim/info` | | `{"baseUrl","configUrl","orgConfigUrl","enterpriseConfigUrl","token","controlUrl","mode","app":{"clientId","appId","installationId","privateKeyPem"}}` |
//! | `POST /_sim/jobs` | `{"labels":[..],"count":N,"durationSeconds":S,"durationMs":M,"result":"succeeded"}` (all optional; count 1 (1 to [`MAX_ENQUEUE`]), duration 0 (at most [`MAX_JOB_DURATION`])) | 201 `{"jobIds":[..]}` |
//! | `GET /_sim/state` | | 200 [`SimState`] |
//! | `GET /_sim/requests` | | 200 `[`[`RequestLogEntry`]`]` in `seq` order, oldest first (a request abandoned by its client: status 499) |
//! | `DELETE /_sim/requests` | | 204, log cleared |
//! | `POST /_sim/faults` | one [`Fault`] object or an array of them | 204, or 400 with the reason |
//! | `GET /_sim/faults` | | 200 pending faults |
//! | `DELETE /_sim/faults` | | 204; clears pending request faults, runner faults, empty-URL sessions and foreign sessions |
//! | `POST /_sim/runnergroups` | `{"name":"group"}` | 201 `{"id","name","size","isDefaultGroup"}` (existing group returned as is) |
//!
//! Fault JSON (`kind` plus camelCase fields; `class` is one of `github`, `scaleset`, `jit`,
//! `runner`, `session`, `message`, `acquire`, `simRunner`, `any`; `method` optional;
//! `count` defaults to 1):
//!
//! * `{"kind":"latency","class":"message","delayMs":200,"count":3}` (no count = until cleared)
//! * `{"kind":"status","class":"session","method":"POST","count":2,"status":503,"typeName":"X","message":"m","retryAfter":1}`
//!   (`status` 200 to 599; 204 and 304 are answered without a body or `Content-Type`)
//! * `{"kind":"bom"|"malformedJson"|"truncatedJson"|"emptyBody"|"dropConnection","class":..,"count":N}`
//!   — `status`, `emptyBody` (200, empty) and `dropConnection` (socket closed, no answer)
//!   skip the handler; `bom`, `malformedJson`, `truncatedJson` run it and then mangle the body.
//! * `{"kind":"expireQueueToken","scaleSetId":1}`, `{"kind":"expireAdminToken"}`
//! * `{"kind":"foreignSession","scaleSetId":1}`, `{"kind":"releaseForeignSession","scaleSetId":1}`
//! * `{"kind":"evictSession","scaleSetId":1}`, `{"kind":"deleteScaleSet","scaleSetId":1}`
//! * `{"kind":"emptyMessageQueueUrl","count":1}`
//! * `{"kind":"runnerNeverOnline","count":1}`, `{"kind":"runnerCrashMidJob","count":1}`,
//!   `{"kind":"runnerCrashBeforeJob","count":1}`, `{"kind":"runnerFailJob","count":1}`
//!
//! # Simulated-runner API (`/_sim/runner/{agentId}/...`, `Authorization: Bearer <secret>`)
//!
//! The secret is `.credentials` → `data.simRunnerSecret` of the JIT config.
//!
//! | Method & path | Answer |
//! |---|---|
//! | `POST online` | 200 `{"behavior":"normal"|"neverOnline"|"crashMidJob"|"crashBeforeJob"|"failJob"}` (a pending runner fault is consumed here) |
//! | `GET job?waitMs=N` | long poll: 200 `{"runnerRequestId","jobId","jobDisplayName","durationMs","result"}` or 204 |
//! | `POST heartbeat` | 200; 404 when the runner was removed |
//! | `POST complete` `{"result":"succeeded"}` | 200; the job completes and the runner is removed |

mod auth;
mod config;
mod error;
mod faults;
pub mod runner;
mod server;
mod snapshot;
mod state;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use auth::{
    APP_CLIENT_ID, APP_ID, APP_INSTALLATION_ID, APP_PRIVATE_KEY_PEM, APP_PUBLIC_KEY_PEM,
    AppCredentials,
};
pub use config::{AssignmentMode, MAX_POLL_WAIT, SimConfig};
pub use error::SimError;
pub use faults::{EndpointClass, Fault};
pub use snapshot::{
    JobState, RequestLogEntry, RunnerGroupState, RunnerState, ScaleSetState, SessionState, SimState,
};
pub use state::Statistics;

use server::Shared;

/// Jobs to enqueue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnqueueJobs {
    /// Labels the job requests (`runs-on`).
    pub labels: Vec<String>,
    /// How many identical jobs (default 1).
    pub count: u32,
    /// How long a runner runs each job (default 0).
    pub duration: Duration,
    /// The result the runner reports (default `succeeded`).
    pub result: String,
}

impl Default for EnqueueJobs {
    fn default() -> Self {
        Self {
            labels: Vec::new(),
            count: 1,
            duration: Duration::ZERO,
            result: "succeeded".into(),
        }
    }
}

/// Maximum number of jobs one enqueue call may create.
pub const MAX_ENQUEUE: u32 = 100_000;

/// Longest job duration accepted (5 days, GitHub's limit for a job on a self-hosted runner).
pub const MAX_JOB_DURATION: Duration = Duration::from_secs(5 * 24 * 3600);

pub(crate) fn enqueue(s: &Shared, req: EnqueueJobs) -> Result<Vec<i64>, SimError> {
    if req.count == 0 {
        return Err(SimError::InvalidRequest("count must be at least 1".into()));
    }
    if req.count > MAX_ENQUEUE {
        return Err(SimError::InvalidRequest(format!(
            "count must be at most {MAX_ENQUEUE}"
        )));
    }
    if req.duration > MAX_JOB_DURATION {
        return Err(SimError::InvalidRequest(format!(
            "duration must be at most {} s",
            MAX_JOB_DURATION.as_secs()
        )));
    }
    if req.result.trim().is_empty() {
        return Err(SimError::InvalidRequest("result must not be empty".into()));
    }
    if req.labels.iter().any(|l| l.trim().is_empty()) {
        return Err(SimError::InvalidRequest(
            "labels must not be empty strings".into(),
        ));
    }
    Ok(s.with_state(|st| st.enqueue(req.labels, req.count, req.duration, req.result)))
}

/// A running simulator. Dropping it stops the server (without waiting);
/// [`Simulator::shutdown`] stops it gracefully.
pub struct Simulator {
    shared: Arc<Shared>,
    addr: SocketAddr,
    server: Option<JoinHandle<()>>,
    reaper: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Handle to inject and clear faults from Rust (same effect as `POST/DELETE /_sim/faults`).
#[derive(Clone)]
pub struct Faults {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Faults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Faults").finish_non_exhaustive()
    }
}

impl Faults {
    /// Inject one fault.
    pub fn inject(&self, fault: Fault) -> Result<(), SimError> {
        self.shared
            .apply_fault(fault)
            .map_err(SimError::InvalidFault)
    }

    /// Clear pending request faults, runner faults, empty-URL sessions and foreign sessions.
    pub fn clear(&self) {
        self.shared.clear_faults();
    }

    /// The pending faults as JSON (same as `GET /_sim/faults`).
    pub fn pending(&self) -> serde_json::Value {
        self.shared.faults_json()
    }
}

impl Simulator {
    /// Bind and start serving.
    ///
    /// Fails with [`SimError::InvalidConfig`] when [`SimConfig::validate`] rejects `cfg`.
    pub async fn start(cfg: SimConfig) -> Result<Simulator, SimError> {
        cfg.validate()?;
        let listener = tokio::net::TcpListener::bind(cfg.bind)
            .await
            .map_err(|source| SimError::Bind {
                addr: cfg.bind,
                source,
            })?;
        let mut addr = listener.local_addr().map_err(|source| SimError::Bind {
            addr: cfg.bind,
            source,
        })?;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let base_url = format!("http://{addr}");
        let keys = auth::Keys::new()?;
        let shared = Arc::new(Shared::new(cfg, base_url, keys));
        let app = server::router(shared.clone());
        let cancel = shared.cancel.clone();
        let server = tokio::spawn(async move {
            let res = axum::serve(listener, app)
                .with_graceful_shutdown(async move { cancel.cancelled().await })
                .await;
            if let Err(e) = res {
                tracing::warn!(error = %e, "simulator server stopped with an error");
            }
        });
        let reaper = tokio::spawn(watch_reaper(
            shared.clone(),
            tokio::spawn(reaper(shared.clone())),
        ));
        Ok(Simulator {
            shared,
            addr,
            server: Some(server),
            reaper: Some(reaper),
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        self.shared.base_url.clone()
    }

    /// The bound socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Repository-scope config URL, `http://127.0.0.1:PORT/sim-org/sim-repo`.
    pub fn config_url(&self) -> String {
        format!(
            "{}/{}/{}",
            self.shared.base_url, self.shared.cfg.org, self.shared.cfg.repo
        )
    }

    /// Organization-scope config URL, `http://127.0.0.1:PORT/sim-org`.
    pub fn org_config_url(&self) -> String {
        format!("{}/{}", self.shared.base_url, self.shared.cfg.org)
    }

    /// Enterprise-scope config URL, `http://127.0.0.1:PORT/enterprises/sim-enterprise`.
    pub fn enterprise_config_url(&self) -> String {
        format!("{}/enterprises/sim-enterprise", self.shared.base_url)
    }

    /// The personal access token the simulator accepts.
    pub fn token(&self) -> String {
        self.shared.pat.clone()
    }

    /// `http://127.0.0.1:PORT/_sim`.
    pub fn control_url(&self) -> String {
        format!("{}/_sim", self.shared.base_url)
    }

    /// The tenant URL handed out by runner-registration (with trailing slash).
    pub fn tenant_url(&self) -> String {
        self.shared.read_state(|st| st.tenant_url.clone())
    }

    /// The fixed GitHub App credentials the simulator accepts (with the configured
    /// [`SimConfig::app_id`]).
    pub fn app_credentials(&self) -> AppCredentials {
        AppCredentials::with_app_id(self.shared.cfg.app_id)
    }

    /// `{"configUrl": ..., "token": ..., "controlUrl": ...}`.
    pub fn startup_line(&self) -> serde_json::Value {
        serde_json::json!({
            "configUrl": self.config_url(),
            "token": self.token(),
            "controlUrl": self.control_url(),
        })
    }

    /// Enqueue jobs; returns their runner request ids.
    pub async fn enqueue_jobs(&self, req: EnqueueJobs) -> Result<Vec<i64>, SimError> {
        enqueue(&self.shared, req)
    }

    /// Add a runner group (or return the id of the existing one with that name).
    pub fn add_runner_group(&self, name: &str) -> Result<i64, SimError> {
        self.shared
            .with_state(|st| st.add_group(name))
            .map_err(|e| SimError::InvalidRequest(e.message))
    }

    /// A snapshot of the whole state.
    pub fn state(&self) -> SimState {
        self.shared.snapshot()
    }

    /// Message-queue long polls currently held open (cheap; no snapshot).
    pub fn in_flight_polls(&self) -> usize {
        self.shared
            .in_flight_polls
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Wait until `pred` holds for the state, at most `timeout`. Returns the last snapshot
    /// and whether the predicate held. The predicate is re-checked on every change a snapshot
    /// shows (including `in_flight_polls`), not on poll bookkeeping that changes nothing.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        pred: impl Fn(&SimState) -> bool,
    ) -> (bool, SimState) {
        let deadline = state::add_or_far(Instant::now(), timeout);
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let snap = self.state();
            if pred(&snap) {
                return (true, snap);
            }
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep_until(deadline) => {
                    let snap = self.state();
                    return (pred(&snap), snap);
                }
            }
        }
    }

    /// The fault-injection handle.
    pub fn faults(&self) -> Faults {
        Faults {
            shared: self.shared.clone(),
        }
    }

    /// The request log in `seq` (arrival) order, oldest first; control endpoints are not
    /// logged. A request is added once answered (or abandoned by its client: status 499),
    /// at its arrival place.
    pub fn requests(&self) -> Vec<RequestLogEntry> {
        self.shared.requests()
    }

    /// Clear the request log.
    pub fn clear_requests(&self) {
        self.shared.clear_requests();
    }

    /// Graceful shutdown: pending long polls answer 202 at once, then the server stops.
    /// Same as [`Simulator::shutdown_within`] with 10 s.
    pub async fn shutdown(self) {
        self.shutdown_within(Duration::from_secs(10)).await;
    }

    /// Graceful shutdown that gives open requests `grace` to finish. Then every request still
    /// in a handler (say, one whose body never arrives) is answered 503 and its connection
    /// closed; whatever still runs after one more second is aborted. When this returns,
    /// nothing of the simulator serves anymore (a connection stuck before its request is
    /// complete may linger until its client gives up; it is never answered).
    pub async fn shutdown_within(mut self, grace: Duration) {
        self.shared.cancel.cancel();
        if let Some(r) = self.reaper.take() {
            let _ = r.await;
        }
        let Some(mut server) = self.server.take() else {
            return;
        };
        if tokio::time::timeout(grace, &mut server).await.is_ok() {
            return;
        }
        tracing::warn!(
            ?grace,
            "simulator: requests still open after the grace period; stopping them"
        );
        self.shared.halt.cancel();
        if tokio::time::timeout(Duration::from_secs(1), &mut server)
            .await
            .is_err()
        {
            server.abort();
            let _ = server.await;
        }
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
    }
}

/// Awaits the timer task; if it panicked, says so loudly (error log) and visibly
/// ([`SimState::reaper_error`]) instead of letting every timer stop in silence.
async fn watch_reaper(shared: Arc<Shared>, task: JoinHandle<()>) {
    let Err(e) = task.await else { return };
    if !e.is_panic() {
        return;
    }
    let payload = e.into_panic();
    let msg = payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "panic without a message".to_owned());
    tracing::error!(error = %msg, "simulator timer task died: timeouts no longer fire");
    *shared
        .reaper_error
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(msg);
    shared.changed.notify_waiters();
}

/// Timer task: assignment timeouts and dead runners.
async fn reaper(shared: Arc<Shared>) {
    let min = shared
        .cfg
        .assignment_timeout
        .min(shared.cfg.runner_heartbeat_timeout)
        .min(shared.cfg.session_idle_timeout);
    let tick = (min / 4).clamp(Duration::from_millis(5), Duration::from_millis(500));
    loop {
        tokio::select! {
            () = tokio::time::sleep(tick) => {}
            () = shared.cancel.cancelled() => return,
        }
        let changed = {
            let mut st = shared
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            st.tick(Instant::now())
        };
        if changed {
            shared.changed.notify_waiters();
        }
    }
}

/// Start a simulator, serve until `shutdown` resolves, then stop gracefully. Prints nothing.
pub async fn serve(cfg: SimConfig, shutdown: impl Future<Output = ()>) -> Result<(), SimError> {
    let sim = Simulator::start(cfg).await?;
    shutdown.await;
    sim.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http() -> reqwest::Client {
        reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client")
    }

    #[tokio::test]
    async fn poll_bookkeeping_does_not_wake_state_waiters() {
        let sim = Simulator::start(SimConfig::default()).await.expect("start");
        let (ss, sid, token, ss_notify) = sim.shared.with_state(|st| {
            let ss = st
                .create_scale_set("quiet".into(), 1, Vec::new(), Default::default())
                .expect("scale set");
            let sid = st.create_session(ss, "me".into()).expect("session");
            let token = st.sessions[&sid].token.clone();
            (ss, sid, token, st.scale_sets[&ss].notify.clone())
        });
        let http = http();
        let base = sim.base_url();
        let poll = {
            let (http, base, token) = (http.clone(), base.clone(), token.clone());
            tokio::spawn(async move {
                http.get(format!("{base}/_broker/{ss}/message?sessionId={sid}"))
                    .bearer_auth(token)
                    .header("X-ScaleSetMaxCapacity", "1")
                    .send()
                    .await
                    .expect("poll")
            })
        };
        let (held, _) = sim
            .wait_until(Duration::from_secs(15), |st| {
                st.in_flight_polls == 1
                    && st.scale_set(ss).is_some_and(|s| s.max_capacity == Some(1))
            })
            .await;
        assert!(held, "the poll is held open");

        let shared = sim.shared.clone();
        let notified = shared.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        // Wake-ups of the held poll that deliver nothing, an ack of an unknown message and an
        // acquire of nothing change nothing a snapshot shows.
        for _ in 0..3 {
            ss_notify.notify_waiters();
            tokio::task::yield_now().await;
        }
        let r = http
            .delete(format!("{base}/_broker/{ss}/message/999?sessionId={sid}"))
            .bearer_auth(&token)
            .send()
            .await
            .expect("delete");
        assert_eq!(r.status(), 204);
        let r = http
            .post(format!(
                "{base}/tenant/1/_apis/runtime/runnerscalesets/{ss}/acquirejobs"
            ))
            .bearer_auth(&token)
            .header("Content-Type", "application/json")
            .body("[]")
            .send()
            .await
            .expect("acquire");
        assert_eq!(r.status(), 200);
        assert!(
            futures::poll!(notified.as_mut()).is_pending(),
            "bookkeeping woke the wait_until waiters"
        );

        // A real change still wakes them, and the poll answers.
        sim.enqueue_jobs(EnqueueJobs::default())
            .await
            .expect("enqueue");
        assert!(futures::poll!(notified.as_mut()).is_ready());
        let resp = tokio::time::timeout(Duration::from_secs(15), poll)
            .await
            .expect("poll answered")
            .expect("join");
        assert_eq!(resp.status(), 200);
        let (answered, _) = sim
            .wait_until(Duration::from_secs(15), |st| st.in_flight_polls == 0)
            .await;
        assert!(answered);
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn expired_tokens_are_pruned_on_insert() {
        let sim = Simulator::start(SimConfig {
            installation_token_ttl: Duration::ZERO,
            registration_token_ttl: Duration::ZERO,
            ..SimConfig::default()
        })
        .await
        .expect("start");
        let http = http();
        let base = sim.base_url();
        let creds = sim.app_credentials();
        let key =
            jsonwebtoken::EncodingKey::from_rsa_pem(creds.private_key_pem.as_bytes()).expect("pem");
        let now = auth::now_secs();
        let jwt = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
            &serde_json::json!({"iss": creds.client_id, "iat": now - 60, "exp": now + 300}),
            &key,
        )
        .expect("sign");
        for _ in 0..3 {
            let r = http
                .post(format!(
                    "{base}/api/v3/app/installations/{}/access_tokens",
                    creds.installation_id
                ))
                .bearer_auth(&jwt)
                .send()
                .await
                .expect("installation token");
            assert_eq!(r.status(), 201);
            let r = http
                .post(format!(
                    "{base}/api/v3/orgs/sim-org/actions/runners/registration-token"
                ))
                .bearer_auth(sim.token())
                .send()
                .await
                .expect("registration token");
            assert_eq!(r.status(), 201);
        }
        let (inst, reg) = sim
            .shared
            .read_state(|st| (st.install_tokens.len(), st.reg_tokens.len()));
        assert_eq!((inst, reg), (1, 1), "expired tokens are dropped on insert");
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn a_dead_reaper_is_reported() {
        let keys = auth::Keys::new().expect("keys");
        let shared = Arc::new(Shared::new(
            SimConfig::default(),
            "http://127.0.0.1:1".into(),
            keys,
        ));
        assert_eq!(shared.snapshot().reaper_error, None);
        let task = tokio::spawn(async { panic!("tick exploded") });
        watch_reaper(shared.clone(), task).await;
        assert_eq!(
            shared.snapshot().reaper_error.as_deref(),
            Some("tick exploded")
        );
        // A reaper that ends normally (shutdown) is not an error.
        let shared2 = Arc::new(Shared::new(
            SimConfig::default(),
            "http://127.0.0.1:1".into(),
            auth::Keys::new().expect("keys"),
        ));
        watch_reaper(shared2.clone(), tokio::spawn(async {})).await;
        assert_eq!(shared2.snapshot().reaper_error, None);
    }
}
