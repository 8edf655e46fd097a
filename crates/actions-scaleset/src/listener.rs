//! The [`Listener`]: a message loop that hands a scale set's demand to a [`Scaler`] (the
//! seed's three methods) or a [`MessageScaler`] (each message whole, the reference's newer
//! contract) and keeps running through the failures seen in production.
//!
//! # Semantics
//!
//! Written for the three-method [`Scaler`]; a [`MessageScaler`] receives the same things one
//! level lower: the initial statistics as a synthetic message of id [`INITIAL_MESSAGE_ID`],
//! an empty poll as `None`, each message whole, acknowledged only after it returned `Ok`, and
//! it acquires offered jobs itself.
//!
//! 1. **Initial statistics.** Before the first poll, the session's statistics are recorded and
//!    `totalAssignedJobs` is handed to [`Scaler::handle_desired_runner_count`]. After an empty
//!    poll (202) the scaler gets the latest known `totalAssignedJobs` again, never 0 because
//!    nothing arrived.
//! 2. **At-least-once.** A message is acknowledged (deleted) only after the scaler handled all
//!    of it: `JobAvailable` ids acquired (GHES; never when max runners is 0), every
//!    `JobStarted` then every `JobCompleted` dispatched in order, then the desired count. If any
//!    step fails the message is not acknowledged and the queue delivers it again, so **a scaler
//!    must be idempotent**: the same `JobStarted`/`JobCompleted` may arrive twice.
//! 3. **Session conflict.** A 409 on session creation is [`Error::SessionConflict`]. With
//!    [`ConflictPolicy::Wait`] the listener retries with jittered backoff (cancellable) up to a
//!    deadline or forever, which makes a second instance a hot standby that takes over when the
//!    first one's session ends.
//! 4. **Lost session.** A session the service evicted or expired (404 on refresh or poll, a
//!    second 401, a session without a queue URL or token: [`Error::InvalidSession`]) is
//!    replaced in place and the loop goes on; a new session without statistics keeps the last
//!    known demand.
//! 5. **Transient failures** (5xx after retries, dropped connections, a 200 with an empty or
//!    truncated body, a failing scaler): backoff from 1 s to 60 s with jitter, then continue;
//!    [`ListenerConfig::max_consecutive_failures`] (default: unlimited) bounds the streak. The
//!    streak ends only when a whole iteration succeeds, so a poll that works followed by a
//!    scaler that fails keeps growing it. Failures waiting cannot heal end the run at once:
//!    the scale set was deleted ([`Error::ScaleSetNotFound`]) or GitHub refused the
//!    credentials ([`Error::Unauthorized`]).
//!    [`Listener::health`] reports the last successful poll, the session id and the streak.
//! 6. **Shutdown.** When the token fires, a poll in flight is abandoned at once; a message being
//!    handled is finished first (a scaler call is never cut in the middle); then the session is
//!    deleted with its own deadline, even though the caller's cancellation already fired, so the
//!    next start does not meet a 409.
//!
//! # Example: a complete loop
//!
//! ```no_run
//! use std::sync::atomic::{AtomicI64, Ordering};
//! use actions_scaleset::{
//!     CancellationToken, Client, Credentials, JobCompleted, JobStarted, Listener, ListenerConfig,
//!     RunnerScaleSet, Scaler, DEFAULT_RUNNER_GROUP_ID,
//! };
//!
//! /// Remembers the demand; a real scaler starts and stops runners here.
//! struct Demand(AtomicI64);
//!
//! impl Scaler for Demand {
//!     async fn handle_desired_runner_count(&self, count: i64) -> Result<i64, actions_scaleset::listener::BoxError> {
//!         self.0.store(count, Ordering::SeqCst);
//!         Ok(count)
//!     }
//!     async fn handle_job_started(&self, job: &JobStarted) -> Result<(), actions_scaleset::listener::BoxError> {
//!         println!("job {} started on {}", job.base.job_id, job.runner_name);
//!         Ok(())
//!     }
//!     async fn handle_job_completed(&self, job: &JobCompleted) -> Result<(), actions_scaleset::listener::BoxError> {
//!         println!("job {} finished: {}", job.base.job_id, job.result);
//!         Ok(())
//!     }
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let client = Client::builder("https://github.com/my-org", Credentials::token("ghp_example")?).build()?;
//! let scale_set = match client.get_runner_scale_set(DEFAULT_RUNNER_GROUP_ID, "my-runners").await? {
//!     Some(s) => s,
//!     None => client.create_runner_scale_set(&RunnerScaleSet {
//!         name: "my-runners".into(),
//!         runner_group_id: DEFAULT_RUNNER_GROUP_ID,
//!         ..Default::default()
//!     }).await?,
//! };
//! let session = client.create_message_session_client(scale_set.id, None).await?;
//! let listener = Listener::new(session, ListenerConfig::new(scale_set.id, 10))?;
//! let shutdown = CancellationToken::new();
//! let stop = shutdown.clone();
//! tokio::spawn(async move {
//!     let _ = tokio::signal::ctrl_c().await;
//!     stop.cancel();
//! });
//! listener.run(&Demand(AtomicI64::new(0)), &shutdown).await?;
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::transport::jittered_backoff;
use jiff::Timestamp;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::ids::{MessageId, RunnerRequestId, ScaleSetId};
use crate::message::{JOB_MESSAGES_TYPE, RunnerScaleSetMessage};
use crate::session::MessageSessionClient;
use crate::types::{JobCompleted, JobStarted, RunnerScaleSetStatistic};

/// The error a [`Scaler`] returns.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What the listener drives: turns demand into runners (the seed's three-method scaler).
///
/// Calls come from one task, one at a time. Messages are delivered at least once, so every
/// method must be idempotent. Implemented on top of the message-level [`MessageScaler`]: every
/// `Scaler` is one, so [`Listener::run`] takes either.
pub trait Scaler: Send + Sync {
    /// The scale set has `count` assigned jobs (waiting or running); returns how many runners
    /// the scaler now has or is starting.
    fn handle_desired_runner_count(
        &self,
        count: i64,
    ) -> impl Future<Output = Result<i64, BoxError>> + Send;
    /// A job started on one of the scale set's runners.
    fn handle_job_started(
        &self,
        job: &JobStarted,
    ) -> impl Future<Output = Result<(), BoxError>> + Send;
    /// A job completed (or was canceled before a runner took it).
    fn handle_job_completed(
        &self,
        job: &JobCompleted,
    ) -> impl Future<Output = Result<(), BoxError>> + Send;
}

/// The id of the synthetic message that carries the session's statistics to a
/// [`MessageScaler`] before the first poll (and again after a lost session was replaced). The
/// service's own message ids are never negative; this message is never acknowledged.
pub const INITIAL_MESSAGE_ID: MessageId = MessageId::new(-1);

/// The lower-level handler the listener drives: it receives each message whole, as the
/// reference's newer one-method contract (`Scale(ctx, message)`) does.
///
/// The listener calls [`handle_message`](Self::handle_message):
///
/// 1. first with a synthetic message of id [`INITIAL_MESSAGE_ID`] holding the session's
///    statistics and no job messages (again after a lost session was replaced);
/// 2. then with every message the queue delivers, statistics and all its job messages in the
///    order they were sent;
/// 3. with `None` after an empty poll (the long poll ended without a message).
///
/// A message is acknowledged (deleted from the queue) only after the handler returned `Ok`;
/// an `Err` leaves it in the queue and it is delivered again after the listener's backoff, so
/// **handling must be idempotent**. Calls come from one task, one at a time.
///
/// Acquiring offered jobs (`JobAvailable`, GHES) is the handler's job here: call
/// [`MessageContext::acquire_available`] (or [`MessageSessionClient::acquire_jobs`] with the
/// ids you choose) before returning `Ok`, or the jobs stay unassigned.
///
/// Every [`Scaler`] is a `MessageScaler` through a blanket implementation that does what the
/// listener always did: acquire the `JobAvailable` ids (unless max runners is 0), dispatch
/// every `JobStarted` then every `JobCompleted`, then hand the latest `totalAssignedJobs` to
/// [`Scaler::handle_desired_runner_count`]. A type implements one of the two traits, not both.
///
/// ```no_run
/// use actions_scaleset::listener::{BoxError, MessageContext, MessageScaler};
/// use actions_scaleset::{JobMessage, RunnerScaleSetMessage};
///
/// struct Logger;
///
/// impl MessageScaler for Logger {
///     async fn handle_message(
///         &self,
///         message: Option<&RunnerScaleSetMessage>,
///         ctx: &MessageContext<'_>,
///     ) -> Result<(), BoxError> {
///         let Some(message) = message else {
///             println!("no news; still {} assigned", ctx.statistics().total_assigned_jobs);
///             return Ok(());
///         };
///         ctx.acquire_available(message).await?;
///         for job in &message.jobs {
///             if let JobMessage::Started(s) = job {
///                 println!("job {} started on {}", s.base.job_id, s.runner_name);
///             }
///         }
///         println!("{} assigned", ctx.statistics().total_assigned_jobs);
///         Ok(())
///     }
/// }
/// ```
pub trait MessageScaler: Send + Sync {
    /// Handles one message (`None`: an empty poll). Return `Ok` only once the message is
    /// fully handled: it is acknowledged right after.
    fn handle_message(
        &self,
        message: Option<&RunnerScaleSetMessage>,
        ctx: &MessageContext<'_>,
    ) -> impl Future<Output = Result<(), BoxError>> + Send;
}

/// What a [`MessageScaler`] gets with each message: the session (to acquire jobs), the latest
/// statistics and the listener's settings.
pub struct MessageContext<'a> {
    session: &'a MessageSessionClient,
    statistics: RunnerScaleSetStatistic,
    max_runners: u32,
    metrics: &'a dyn MetricsRecorder,
}

impl std::fmt::Debug for MessageContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageContext")
            .field("scale_set_id", &self.session.scale_set_id())
            .field("statistics", &self.statistics)
            .field("max_runners", &self.max_runners)
            .finish_non_exhaustive()
    }
}

impl MessageContext<'_> {
    /// The message session (for [`MessageSessionClient::acquire_jobs`]).
    pub fn session(&self) -> &MessageSessionClient {
        self.session
    }

    /// The scale set the listener serves.
    pub fn scale_set_id(&self) -> ScaleSetId {
        self.session.scale_set_id()
    }

    /// The latest statistics known: the message's own, or after an empty poll (or a message
    /// without statistics) the last ones received. Scale on
    /// [`total_assigned_jobs`](RunnerScaleSetStatistic::total_assigned_jobs).
    pub fn statistics(&self) -> &RunnerScaleSetStatistic {
        &self.statistics
    }

    /// The maximum runners (the capacity sent with the poll that brought this message).
    pub fn max_runners(&self) -> u32 {
        self.max_runners
    }

    /// Acquires every `JobAvailable` of the message (GHES), as the three-method adapter does;
    /// does nothing when there are none or max runners is 0. Returns the ids the service now
    /// holds for this scale set.
    ///
    /// # Errors
    /// As [`MessageSessionClient::acquire_jobs`].
    pub async fn acquire_available(
        &self,
        message: &RunnerScaleSetMessage,
    ) -> Result<Vec<RunnerRequestId>> {
        let scale_set_id = self.scale_set_id().get();
        let available: Vec<RunnerRequestId> = message
            .jobs_available()
            .map(|j| j.base.runner_request_id)
            .collect();
        if available.is_empty() {
            return Ok(Vec::new());
        }
        if self.max_runners == 0 {
            tracing::info!(
                scale_set_id,
                jobs = available.len(),
                "not acquiring jobs: max runners is 0"
            );
            return Ok(Vec::new());
        }
        let acquired = self.session.acquire_jobs(&available).await?;
        tracing::info!(
            scale_set_id,
            requested = available.len(),
            acquired = acquired.len(),
            "acquired jobs"
        );
        Ok(acquired)
    }
}

/// The three-method [`Scaler`] on top of the message-level contract (see [`MessageScaler`]).
impl<S: Scaler> MessageScaler for S {
    async fn handle_message(
        &self,
        message: Option<&RunnerScaleSetMessage>,
        ctx: &MessageContext<'_>,
    ) -> Result<(), BoxError> {
        if let Some(message) = message {
            ctx.acquire_available(message).await?;
            for job in message.jobs_started() {
                ctx.metrics.record_job_started(job);
                self.handle_job_started(job).await?;
            }
            for job in message.jobs_completed() {
                ctx.metrics.record_job_completed(job);
                self.handle_job_completed(job).await?;
            }
        }
        let desired = self
            .handle_desired_runner_count(ctx.statistics.total_assigned_jobs)
            .await?;
        ctx.metrics.record_desired_runners(desired);
        Ok(())
    }
}

/// Optional hooks for metrics; every method has a no-op default.
pub trait MetricsRecorder: Send + Sync {
    /// Statistics from the session or a message.
    fn record_statistics(&self, _statistics: &RunnerScaleSetStatistic) {}
    /// A `JobStarted` about to be handed to the scaler.
    fn record_job_started(&self, _job: &JobStarted) {}
    /// A `JobCompleted` about to be handed to the scaler.
    fn record_job_completed(&self, _job: &JobCompleted) {}
    /// The count the scaler returned.
    fn record_desired_runners(&self, _count: i64) {}
    /// How long a poll took (successful or empty).
    fn record_poll_latency(&self, _latency: Duration) {}
    /// A lost session was replaced by a new one.
    fn record_session_recreated(&self) {}
    /// The current streak of failures (0 after a success).
    fn record_consecutive_failures(&self, _failures: u32) {}
}

struct NoMetrics;
impl MetricsRecorder for NoMetrics {}

/// What to do when another client holds the scale set's session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConflictPolicy {
    /// Fail with [`Error::SessionConflict`].
    Fail,
    /// Retry with backoff until the session frees up, for at most the given time (`None`:
    /// forever, a hot standby).
    Wait(Option<Duration>),
}

/// Listener settings.
#[derive(Clone, Debug)]
pub struct ListenerConfig {
    /// The scale set (non-zero).
    pub scale_set_id: ScaleSetId,
    /// Maximum runners, sent as the queue capacity (0 to `i32::MAX`).
    pub max_runners: u32,
    /// Consecutive failures after which [`Listener::run`] gives up (`None`: never).
    pub max_consecutive_failures: Option<u32>,
    /// What to do on a session conflict when a lost session is re-created.
    pub conflict: ConflictPolicy,
    /// First backoff delay after a failure (default 1 s).
    pub backoff_min: Duration,
    /// Longest backoff delay (default 60 s).
    pub backoff_max: Duration,
}

impl ListenerConfig {
    /// Settings with defaults: unlimited failures, wait out conflicts forever, 1-60 s backoff.
    pub fn new(scale_set_id: ScaleSetId, max_runners: u32) -> ListenerConfig {
        ListenerConfig {
            scale_set_id,
            max_runners,
            max_consecutive_failures: None,
            conflict: ConflictPolicy::Wait(None),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
        }
    }
}

/// A snapshot of the listener's health.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListenerHealth {
    /// When a poll last succeeded (a message or a 202).
    pub last_successful_poll: Option<Timestamp>,
    /// The current session id.
    pub session_id: Option<Uuid>,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// How many times a lost session was replaced.
    pub session_recreations: u64,
    /// Whether the listener loop is running.
    pub running: bool,
    /// When the poll now in flight started (`None` between polls).
    pub poll_in_flight_since: Option<Timestamp>,
}

impl ListenerHealth {
    /// Whether the listener serves its scale set at `now`, else why not: it runs, its session
    /// is open (a lost session is reported at once, not when the last poll grows old), and
    /// either a poll succeeded within `limit` or a poll is in flight for less than `limit`
    /// with no failure since the last success (a healthy long poll waits up to a minute).
    ///
    /// # Errors
    /// The reason, in words.
    pub fn ready_at(&self, now: Timestamp, limit: Duration) -> std::result::Result<(), String> {
        let limit = jiff::SignedDuration::try_from(limit).unwrap_or(jiff::SignedDuration::MAX);
        let recent = |t: Timestamp| now.duration_since(t) <= limit;
        if !self.running {
            return Err("listener not running".into());
        }
        if self.session_id.is_none() {
            return Err("message session lost, not yet re-created".into());
        }
        if self.last_successful_poll.is_some_and(recent) {
            return Ok(());
        }
        if self.consecutive_failures == 0 && self.poll_in_flight_since.is_some_and(recent) {
            return Ok(());
        }
        Err(match self.last_successful_poll {
            None if self.consecutive_failures > 0 => "no successful poll yet".into(),
            None => "no poll yet".into(),
            Some(_) => "last successful poll too old".into(),
        })
    }
}

/// The message loop of one scale set. See the [module docs](self) for its semantics.
pub struct Listener {
    session: MessageSessionClient,
    config: ListenerConfig,
    max_runners: AtomicU32,
    metrics: Arc<dyn MetricsRecorder>,
    health: Arc<Mutex<ListenerHealth>>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Listener {
    /// A listener over an open session.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a zero scale set id or `max_runners` above `i32::MAX`.
    pub fn new(session: MessageSessionClient, config: ListenerConfig) -> Result<Listener> {
        validate(&config)?;
        let health = ListenerHealth {
            session_id: Some(session.session_id()),
            ..Default::default()
        };
        Ok(Listener {
            max_runners: AtomicU32::new(config.max_runners),
            session,
            config,
            metrics: Arc::new(NoMetrics),
            health: Arc::new(Mutex::new(health)),
        })
    }

    /// Installs metrics hooks.
    pub fn with_metrics(mut self, metrics: Arc<dyn MetricsRecorder>) -> Listener {
        self.metrics = metrics;
        self
    }

    /// Changes the maximum runners (the capacity sent with the next poll). Values above
    /// `i32::MAX` are clamped.
    pub fn set_max_runners(&self, max_runners: u32) {
        self.max_runners
            .store(max_runners.min(i32::MAX as u32), Ordering::SeqCst);
    }

    /// The current maximum runners.
    pub fn max_runners(&self) -> u32 {
        self.max_runners.load(Ordering::SeqCst)
    }

    /// The session client.
    pub fn session(&self) -> &MessageSessionClient {
        &self.session
    }

    /// A snapshot of the listener's health.
    pub fn health(&self) -> ListenerHealth {
        self.health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A handle that reads the health from another task while [`run`](Self::run) is going.
    pub fn health_handle(&self) -> HealthHandle {
        HealthHandle(self.health.clone())
    }

    fn update_health(&self, f: impl FnOnce(&mut ListenerHealth)) {
        f(&mut self.health.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Runs the loop until `shutdown` fires (then returns `Ok`) or a failure it cannot heal
    /// (the scale set was deleted, GitHub refused the credentials, a session conflict under
    /// [`ConflictPolicy::Fail`], the failure streak reached its limit). Deletes the session
    /// before returning, in every case.
    ///
    /// `scaler` is a three-method [`Scaler`] or a message-level [`MessageScaler`] (every
    /// `Scaler` is one).
    pub async fn run<S: MessageScaler>(
        &self,
        scaler: &S,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        self.update_health(|h| h.running = true);
        let result = self.run_loop(scaler, shutdown).await;
        self.update_health(|h| h.running = false);
        if let Err(e) = self.session.close().await {
            tracing::warn!(scale_set_id = self.config.scale_set_id.get(), error = %e, "could not delete the message session");
        }
        result
    }

    async fn run_loop<S: MessageScaler>(
        &self,
        scaler: &S,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        let scale_set_id = self.config.scale_set_id.get();
        let mut latest = self.initial_statistics()?;
        let mut failures = 0u32;
        let mut last_message_id = MessageId::new(0);
        let mut synced = false;

        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            if !synced {
                // Semantic 1: the session's statistics reach the scaler before the first poll.
                self.metrics.record_statistics(&latest);
                let initial = RunnerScaleSetMessage {
                    message_id: INITIAL_MESSAGE_ID,
                    message_type: JOB_MESSAGES_TYPE.to_string(),
                    statistics: Some(latest),
                    ..Default::default()
                };
                match self.dispatch(scaler, Some(&initial), latest).await {
                    Ok(()) => synced = true,
                    Err(e) => {
                        tracing::warn!(scale_set_id, error = %e, "the scaler failed on the initial statistics");
                        self.failed(&mut failures, &e, shutdown).await?;
                        continue;
                    }
                }
                if shutdown.is_cancelled() {
                    return Ok(());
                }
            }

            let capacity = i64::from(self.max_runners());
            let generation = self.session.generation();
            let started = tokio::time::Instant::now();
            self.update_health(|h| h.poll_in_flight_since = Some(Timestamp::now()));
            let polled = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                polled = self.session.get_message(last_message_id, capacity) => polled,
            };
            self.update_health(|h| h.poll_in_flight_since = None);
            match polled {
                Ok(None) => {
                    self.metrics.record_poll_latency(started.elapsed());
                    self.poll_succeeded();
                    match self.dispatch(scaler, None, latest).await {
                        Ok(()) => self.iteration_succeeded(&mut failures),
                        Err(e) => {
                            tracing::warn!(scale_set_id, error = %e, "the scaler failed on an empty poll");
                            self.failed(&mut failures, &e, shutdown).await?;
                        }
                    }
                }
                Ok(Some(message)) => {
                    self.metrics.record_poll_latency(started.elapsed());
                    self.poll_succeeded();
                    let id = message.message_id;
                    match self.handle_message(scaler, &message, &mut latest).await {
                        Ok(()) => {
                            self.iteration_succeeded(&mut failures);
                            last_message_id = id;
                            if let Err(e) = self.session.delete_message(id).await {
                                // Handled but not acknowledged: it comes back and the
                                // (idempotent) scaler sees it again.
                                tracing::warn!(scale_set_id, message_id = id.get(), error = %e, "could not acknowledge a handled message");
                            }
                        }
                        Err(e) => {
                            tracing::warn!(scale_set_id, message_id = id.get(), error = %e, "handling a message failed; it will be delivered again");
                            self.failed(&mut failures, &e, shutdown).await?;
                        }
                    }
                }
                Err(Error::UnsupportedMessage {
                    message_id,
                    message_type,
                }) => {
                    self.metrics.record_poll_latency(started.elapsed());
                    self.poll_succeeded();
                    self.iteration_succeeded(&mut failures);
                    tracing::warn!(scale_set_id, message_id = message_id.get(), %message_type, "acknowledging a message of an unsupported type");
                    last_message_id = message_id;
                    if let Err(e) = self.session.delete_message(message_id).await {
                        tracing::warn!(scale_set_id, message_id = message_id.get(), error = %e, "could not acknowledge an unsupported message");
                    }
                }
                Err(e) if is_lost_session(&e) => {
                    // Unready from now until a new session exists.
                    self.update_health(|h| h.session_id = None);
                    tracing::warn!(scale_set_id, error = %e, "the message session was lost; creating a new one");
                    match self.recreate(generation, shutdown).await {
                        Ok(Some(stats)) => {
                            // A new session without statistics keeps the last known demand
                            // rather than telling the scaler there is none.
                            if let Some(stats) = stats {
                                latest = stats;
                            }
                            last_message_id = MessageId::new(0);
                            synced = false;
                        }
                        Ok(None) => return Ok(()),
                        Err(e) if is_fatal(&e) => return Err(e),
                        Err(e) => {
                            tracing::warn!(scale_set_id, error = %e, "could not create a new session");
                            self.failed(&mut failures, &e, shutdown).await?;
                        }
                    }
                }
                Err(e) if is_fatal(&e) => return Err(e),
                Err(e) => {
                    tracing::warn!(scale_set_id, error = %e, "polling the message queue failed");
                    self.failed(&mut failures, &e, shutdown).await?;
                }
            }
        }
    }

    fn initial_statistics(&self) -> Result<RunnerScaleSetStatistic> {
        let session = self.session.session();
        if session.session_id.is_nil() {
            return Err(Error::InvalidArgument("initial session is nil".into()));
        }
        session
            .statistics
            .ok_or_else(|| Error::InvalidArgument("session statistics is nil".into()))
    }

    async fn handle_message<S: MessageScaler>(
        &self,
        scaler: &S,
        message: &RunnerScaleSetMessage,
        latest: &mut RunnerScaleSetStatistic,
    ) -> std::result::Result<(), BoxError> {
        let scale_set_id = self.config.scale_set_id.get();
        for problem in &message.problems {
            tracing::warn!(
                scale_set_id,
                message_id = message.message_id.get(),
                problem,
                "skipping a malformed job message"
            );
        }
        match message.statistics {
            Some(stats) => *latest = stats,
            None => tracing::warn!(
                scale_set_id,
                message_id = message.message_id.get(),
                "message without statistics; keeping the previous ones"
            ),
        }
        self.metrics.record_statistics(latest);
        self.dispatch(scaler, Some(message), *latest).await
    }

    /// Hands one message (or an empty poll) to the scaler with its context.
    async fn dispatch<S: MessageScaler>(
        &self,
        scaler: &S,
        message: Option<&RunnerScaleSetMessage>,
        statistics: RunnerScaleSetStatistic,
    ) -> std::result::Result<(), BoxError> {
        let ctx = MessageContext {
            session: &self.session,
            statistics,
            max_runners: self.max_runners(),
            metrics: self.metrics.as_ref(),
        };
        scaler.handle_message(message, &ctx).await
    }

    /// A poll answered (a message or a 202): the queue is reachable.
    fn poll_succeeded(&self) {
        let session_id = self.session.session_id();
        self.update_health(|h| {
            h.last_successful_poll = Some(Timestamp::now());
            h.session_id = Some(session_id);
        });
    }

    /// A whole iteration succeeded (the message, or the empty poll, was handled): the failure
    /// streak ends. A poll that succeeds followed by a scaler that fails does not end it.
    fn iteration_succeeded(&self, failures: &mut u32) {
        if *failures > 0 {
            self.metrics.record_consecutive_failures(0);
        }
        *failures = 0;
        self.update_health(|h| h.consecutive_failures = 0);
    }

    /// Counts a failure and waits out the backoff; errors when the streak limit is reached.
    /// Returns early (Ok) when shutdown fires during the wait.
    async fn failed(
        &self,
        failures: &mut u32,
        cause: &(dyn std::fmt::Display + Sync),
        shutdown: &CancellationToken,
    ) -> Result<()> {
        *failures += 1;
        let n = *failures;
        self.metrics.record_consecutive_failures(n);
        self.update_health(|h| h.consecutive_failures = n);
        if let Some(max) = self.config.max_consecutive_failures
            && n >= max
        {
            return Err(Error::Protocol {
                response: None,
                message: format!("giving up after {n} consecutive failures; the last: {cause}"),
            });
        }
        let delay = jittered_backoff(self.config.backoff_min, self.config.backoff_max, n - 1);
        tracing::info!(
            scale_set_id = self.config.scale_set_id.get(),
            failures = n,
            delay_ms = delay.as_millis() as u64,
            "backing off"
        );
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(delay) => {}
        }
        Ok(())
    }

    /// Replaces the session (unless another task already did since `generation`), waiting out
    /// conflicts per the policy. `Ok(None)` on shutdown; `Ok(Some(statistics))` otherwise.
    async fn recreate(
        &self,
        generation: u64,
        shutdown: &CancellationToken,
    ) -> Result<Option<Option<RunnerScaleSetStatistic>>> {
        let replaced = retry_conflicts(
            self.config.scale_set_id,
            self.config.conflict,
            (self.config.backoff_min, self.config.backoff_max),
            shutdown,
            || self.session.recreate_if_current(generation),
        )
        .await?;
        if replaced.is_none() {
            return Ok(None);
        }
        self.metrics.record_session_recreated();
        let session = self.session.session();
        self.update_health(|h| {
            h.session_recreations += 1;
            h.session_id = Some(session.session_id);
        });
        Ok(Some(session.statistics))
    }
}

/// Runs `attempt` until it ends with anything but a session conflict, waiting between
/// attempts per `policy` with jittered backoff. `Ok(None)` when `cancel` fires during a wait;
/// an attempt in flight is never abandoned (dropping a create could leave a session behind).
async fn retry_conflicts<T, F, Fut>(
    scale_set_id: ScaleSetId,
    policy: ConflictPolicy,
    (min, max): (Duration, Duration),
    cancel: &CancellationToken,
    mut attempt: F,
) -> Result<Option<T>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let deadline = match policy {
        // A deadline too far away to represent is no deadline.
        ConflictPolicy::Wait(Some(d)) => tokio::time::Instant::now().checked_add(d),
        _ => None,
    };
    let scale_set_id = scale_set_id.get();
    let mut waits = 0u32;
    let mut started = None;
    loop {
        match attempt().await {
            Err(e @ Error::SessionConflict(_)) => {
                if policy == ConflictPolicy::Fail {
                    return Err(e);
                }
                let delay = jittered_backoff(min, max, waits);
                waits += 1;
                if deadline.is_some_and(|d| tokio::time::Instant::now() + delay > d) {
                    return Err(e);
                }
                // Said once at info (a hot standby can wait for hours), then at debug.
                if waits == 1 {
                    started = Some(tokio::time::Instant::now());
                    tracing::info!(
                        scale_set_id,
                        service_says = e.exception().map_or("", |x| x.message.as_str()),
                        "another client holds the scale set's message session; waiting for it \
                         to end (hot standby)"
                    );
                } else {
                    tracing::debug!(
                        scale_set_id,
                        waits,
                        delay_ms = delay.as_millis() as u64,
                        "the scale set's message session is still held; waiting"
                    );
                }
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(None),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            other => {
                if let (Ok(_), Some(started)) = (&other, started) {
                    tracing::info!(
                        scale_set_id,
                        waited_s = started.elapsed().as_secs(),
                        "the other client's session ended; this one holds it now"
                    );
                }
                return other.map(Some);
            }
        }
    }
}

/// Reads a listener's health from another task.
#[derive(Clone, Debug)]
pub struct HealthHandle(Arc<Mutex<ListenerHealth>>);

impl HealthHandle {
    /// A snapshot of the health.
    pub fn get(&self) -> ListenerHealth {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn validate(config: &ListenerConfig) -> Result<()> {
    if config.scale_set_id.get() == 0 {
        return Err(Error::InvalidArgument(
            "scale set id must be non-zero".into(),
        ));
    }
    if config.scale_set_id.get() < 0 {
        return Err(Error::InvalidArgument(
            "scale set id must be positive".into(),
        ));
    }
    if config.max_runners > i32::MAX as u32 {
        return Err(Error::InvalidArgument(format!(
            "max runners must be at most {}, got {}",
            i32::MAX,
            config.max_runners
        )));
    }
    if config.backoff_min.is_zero() || config.backoff_min > config.backoff_max {
        return Err(Error::InvalidArgument(
            "backoff_min must be non-zero and at most backoff_max".into(),
        ));
    }
    Ok(())
}

fn is_lost_session(e: &Error) -> bool {
    matches!(
        e,
        Error::SessionNotFound(_) | Error::MessageQueueTokenExpired(_) | Error::InvalidSession(_)
    )
}

/// Failures the loop cannot heal by waiting.
fn is_fatal(e: &Error) -> bool {
    matches!(
        e,
        Error::ScaleSetNotFound(_)
            | Error::SessionConflict(_)
            | Error::Unauthorized(_)
            | Error::InvalidArgument(_)
            | Error::InvalidCredentials(_)
            | Error::InvalidConfigUrl { .. }
            | Error::InvalidClientConfig(_)
    )
}

impl Client {
    /// Creates a message session, waiting out conflicts per `policy` with jittered backoff
    /// (1 s doubling to 30 s). Returns [`Error::Cancelled`] when `cancel` fires first; a create
    /// already sent is let finish and its session deleted, so none is left behind.
    ///
    /// # Errors
    /// As [`Client::create_message_session_client`]; [`Error::SessionConflict`] when the
    /// policy is [`ConflictPolicy::Fail`] or its deadline passed.
    pub async fn create_message_session_client_waiting(
        &self,
        scale_set_id: ScaleSetId,
        owner: Option<&str>,
        policy: ConflictPolicy,
        cancel: &CancellationToken,
    ) -> Result<MessageSessionClient> {
        let created = retry_conflicts(
            scale_set_id,
            policy,
            (Duration::from_secs(1), Duration::from_secs(30)),
            cancel,
            || self.create_message_session_client(scale_set_id, owner),
        )
        .await?;
        match created {
            Some(session) if !cancel.is_cancelled() => Ok(session),
            Some(session) => {
                // Cancelled while the create was in flight: do not leave the session behind.
                if let Err(e) = session.close().await {
                    tracing::warn!(scale_set_id = scale_set_id.get(), error = %e, "could not delete a session created during shutdown");
                }
                Err(Error::Cancelled)
            }
            None => Err(Error::Cancelled),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Behaviour 107 (configuration half; construction needs a session, see tests/listener.rs)
    #[test]
    fn config_validation() {
        let id = ScaleSetId::new;
        assert!(validate(&ListenerConfig::new(id(0), 1)).is_err());
        assert!(validate(&ListenerConfig::new(id(-1), 1)).is_err());
        assert!(validate(&ListenerConfig::new(id(1), 10)).is_ok());
        assert!(validate(&ListenerConfig::new(id(1), i32::MAX as u32)).is_ok());
        assert!(validate(&ListenerConfig::new(id(1), i32::MAX as u32 + 1)).is_err());
    }

    #[test]
    fn backoff_bounds() {
        for attempt in 0..10 {
            let d = jittered_backoff(Duration::from_secs(1), Duration::from_secs(60), attempt);
            let full = Duration::from_secs(1u64 << attempt).min(Duration::from_secs(60));
            assert!(d >= full / 2 && d <= full, "{attempt}: {d:?}");
        }
    }
}
