//! The scaling engine of one scale set: runner bookkeeping, the scaling policy, and the
//! tasks that carry its decisions out without ever blocking the listener.
//!
//! * [`lifecycle`]: the runner life cycle, one transition function with its table.
//! * [`book`]: the records, changed only through that function.
//! * [`plan`](mod@plan): the reconcile decision (starts, deadlines, scale-down, retries), pure.
//!
//! Runners are keyed by name, never by `runnerRequestId`. The [`Scaler`] methods and the
//! provisioner's events only record facts (through the transition function) and wake the
//! reconcile task; GitHub and the provisioner are called from tasks, at most
//! `max_concurrent_starts` starts at once. Every input is idempotent: a redelivered message
//! or a repeated event changes nothing.
//!
//! The engine also compares its records with what the provisioner actually has, at start
//! ([`Engine::recover`]) and every `resync_interval`: a runner it has no record of is
//! adopted and deregistered (a leftover of a previous run: stopped once GitHub confirms,
//! kept if it is running a job), or released when it no longer runs; a record whose runner
//! the provisioner no longer has is treated as vanished. GitHub's side is swept too (at
//! start, after a mint that failed in a way that may have registered its runner, and every
//! `sweep_interval`): a registration of this scale set with the engine's name prefix and no
//! record is removed, and never counted as capacity.

pub mod book;
pub mod lifecycle;
pub mod plan;
mod settings;

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actions_scaleset::listener::BoxError;
use actions_scaleset::{
    Client, Error as ApiError, JitRunnerSetting, JobCompleted, JobStarted, RunnerId, ScaleSetId,
    Scaler,
};
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::ShutdownPolicy;
use crate::metrics::ScaleSetMetrics;
use crate::provisioner::{
    ExitStatus, Provisioner, ProvisionerEvent, RunnerEvent, RunnerSpec, RunnerState,
};
use book::{Applied, Book, Record};
pub use lifecycle::Phase;
use lifecycle::{Action, Event, ExitKind, Next};
use plan::{HeldBack, plan};
pub use settings::EngineSettings;

/// One runner in a [`Snapshot`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunnerInfo {
    /// Name.
    pub name: String,
    /// Runner id (0 until the JIT config is minted).
    pub id: RunnerId,
    /// Phase.
    pub phase: Phase,
}

/// The engine's state at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Latest `totalAssignedJobs`.
    pub assigned: i64,
    /// Current target.
    pub target: u32,
    /// Runners being minted or started.
    pub starting: usize,
    /// Idle runners.
    pub idle: usize,
    /// Busy runners, including those that ended before their `JobCompleted` arrived.
    pub busy: usize,
    /// Runners whose job completed and that have not ended yet.
    pub finished: usize,
    /// Runners on their way out (deregistering, stopping).
    pub removing: usize,
    /// Every runner, by name.
    pub runners: Vec<RunnerInfo>,
    /// Runners that could not be minted or started so far.
    pub provisioning_failures: u64,
    /// Starts are backing off after failures.
    pub backing_off: bool,
    /// A runner reported itself too old for GitHub; no more runners are started.
    pub outdated: bool,
    /// Whether the engine is shutting down.
    pub stopping: bool,
}

impl Snapshot {
    /// Runners that count toward the target.
    pub fn capacity(&self) -> usize {
        self.starting + self.idle + self.busy
    }

    /// The runners in `phase`.
    pub fn count(&self, phase: Phase) -> usize {
        self.runners.iter().filter(|r| r.phase == phase).count()
    }
}

/// How many runners [`Engine::recover`] found and what became of them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Leftovers still running, adopted (and being deregistered; kept when busy).
    pub adopted: usize,
    /// Leftovers that no longer ran, released (their registrations being removed).
    pub released: usize,
    /// Registrations with this engine's name prefix and no runner behind them, being
    /// removed.
    pub unaccounted: usize,
}

/// A bounded set of recently seen keys (for counting redelivered jobs once).
#[derive(Default)]
struct Seen {
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl Seen {
    const CAP: usize = 20_000;
    fn insert(&mut self, key: String) -> bool {
        if self.set.contains(&key) {
            return false;
        }
        if self.order.len() >= Self::CAP
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        self.set.insert(key.clone());
        self.order.push_back(key);
        true
    }
}

struct Shared<P> {
    settings: EngineSettings,
    client: Client,
    provisioner: P,
    metrics: ScaleSetMetrics,
    book: Mutex<Book>,
    seen_started: Mutex<Seen>,
    seen_completed: Mutex<Seen>,
    /// The last reason starts were held back (logged when it changes).
    held_back: Mutex<Option<HeldBack>>,
    wake: Notify,
    changed: Notify,
    /// A mint failed in a way that may have registered its runner: sweep soon.
    sweep_soon: Notify,
    starts: Semaphore,
    cancel: CancellationToken,
    tasks: TaskTracker,
    /// Fires when a background task ended unexpectedly.
    failed: CancellationToken,
    failure: Mutex<Option<String>>,
    /// The span the engine was made in (the daemon's `scale_set` span): the parent of every
    /// runner's span.
    span: tracing::Span,
    /// The last target logged (a change is logged with its reason).
    logged_target: Mutex<u32>,
    /// Asked before every call that changes a runner or a registration (see
    /// [`Engine::fence`]).
    fence: std::sync::OnceLock<Fence>,
}

/// Answers whether this engine may still change runners and registrations (see
/// [`Engine::fence`]).
pub type Fence = Arc<dyn Fn() -> bool + Send + Sync>;

/// The engine of one scale set. Cheap to clone; implements [`Scaler`].
pub struct Engine<P: Provisioner> {
    shared: Arc<Shared<P>>,
}

impl<P: Provisioner> Clone for Engine<P> {
    fn clone(&self) -> Self {
        Engine {
            shared: self.shared.clone(),
        }
    }
}

impl<P: Provisioner> std::fmt::Debug for Engine<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("settings", &self.shared.settings)
            .finish_non_exhaustive()
    }
}

/// How often a drain says how many runners it still waits for when that does not change.
const DRAIN_REPORT_EVERY: Duration = Duration::from_secs(60);

/// How long after an uncertain mint the registrations are swept.
const SWEEP_DELAY: Duration = Duration::from_secs(5);

/// `now + d`, saturating at about 30 years.
fn deadline_in(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365 * 30))
}

/// Logs one line in the runner's span, under the scale set's: `runner_log!(shared, name,
/// info, fields..., "message")`.
macro_rules! runner_log {
    ($shared:expr, $name:expr, $level:ident, $($arg:tt)+) => {
        $shared.runner_span(&$name).in_scope(|| tracing::$level!($($arg)+))
    };
}

/// Seconds with a tenth, for log fields.
fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 10.0).round() / 10.0
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// How the life cycle sees an exit.
fn exit_kind(status: &ExitStatus) -> ExitKind {
    if status.success() {
        ExitKind::Success
    } else if status.outdated() {
        ExitKind::Outdated
    } else {
        ExitKind::Failed
    }
}

impl<P: Provisioner> Engine<P> {
    /// An engine; call [`recover`](Self::recover) and then [`spawn`](Self::spawn).
    pub fn new(
        settings: EngineSettings,
        client: Client,
        provisioner: P,
        metrics: ScaleSetMetrics,
    ) -> Engine<P> {
        metrics.set_bounds(settings.min_runners, settings.max_runners);
        Engine {
            shared: Arc::new(Shared {
                starts: Semaphore::new(settings.max_concurrent_starts.max(1)),
                settings,
                client,
                provisioner,
                metrics,
                book: Mutex::new(Book::default()),
                seen_started: Mutex::new(Seen::default()),
                seen_completed: Mutex::new(Seen::default()),
                held_back: Mutex::new(None),
                wake: Notify::new(),
                changed: Notify::new(),
                sweep_soon: Notify::new(),
                cancel: CancellationToken::new(),
                tasks: TaskTracker::new(),
                failed: CancellationToken::new(),
                failure: Mutex::new(None),
                span: tracing::Span::current(),
                logged_target: Mutex::new(0),
                fence: std::sync::OnceLock::new(),
            }),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &EngineSettings {
        &self.shared.settings
    }

    /// The provisioner.
    pub fn provisioner(&self) -> &P {
        &self.shared.provisioner
    }

    /// Starts the reconcile task, the provisioner-event task and the periodic resync. Each
    /// is supervised: if one ends before [`shutdown`](Self::shutdown) (a panic, the
    /// provisioner closed), the engine is marked failed ([`failed`](Self::failed),
    /// [`failure`](Self::failure)).
    pub fn spawn(&self) {
        // Spawned tasks run in the span the engine was made in (the daemon's `scale_set`
        // span), so every line they and the library log names the scale set once.
        let span = &self.shared.span;
        let s = self.shared.clone();
        self.supervise(
            "reconcile",
            tokio::spawn(s.reconcile_loop().instrument(span.clone())),
        );
        let s = self.shared.clone();
        self.supervise(
            "provisioner-event",
            tokio::spawn(s.event_loop().instrument(span.clone())),
        );
        let s = self.shared.clone();
        self.supervise(
            "resync",
            tokio::spawn(s.resync_loop().instrument(span.clone())),
        );
    }

    fn supervise(&self, what: &'static str, task: tokio::task::JoinHandle<()>) {
        let s = self.shared.clone();
        self.shared.tasks.spawn(async move {
            let joined = task.await;
            if s.cancel.is_cancelled() {
                return;
            }
            let why = match joined {
                Ok(()) => format!("the engine's {what} task ended unexpectedly"),
                Err(e) => format!("the engine's {what} task failed: {e}"),
            };
            tracing::error!(error = %why, "the engine stopped working");
            lock(&s.failure).get_or_insert(why);
            s.failed.cancel();
        });
    }

    /// Resolves once a background task ended unexpectedly.
    pub async fn failed(&self) {
        self.shared.failed.cancelled().await;
    }

    /// Why the engine failed, if it did.
    pub fn failure(&self) -> Option<String> {
        lock(&self.shared.failure).clone()
    }

    /// The current state.
    pub fn snapshot(&self) -> Snapshot {
        self.shared.snapshot()
    }

    /// Waits until `pred` holds for the state, at most `timeout`; returns the last snapshot in
    /// `Ok` when it held, in `Err` when time ran out.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        pred: impl Fn(&Snapshot) -> bool,
    ) -> Result<Snapshot, Snapshot> {
        let deadline = deadline_in(timeout);
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let snap = self.snapshot();
            if pred(&snap) {
                return Ok(snap);
            }
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep_until(deadline) => {
                    let snap = self.snapshot();
                    return if pred(&snap) { Ok(snap) } else { Err(snap) };
                }
            }
        }
    }

    /// Takes over what a previous run left behind: every runner the provisioner has and the
    /// engine has no record of is adopted and its registration removed (it is stopped once
    /// GitHub confirms; a runner GitHub says is running a job is kept as busy), or released
    /// when it no longer runs (its registration removed too). The removals run as tasks, so
    /// call [`spawn`](Self::spawn) afterwards for their retries. The periodic resync does the
    /// same for anything that appears later.
    ///
    /// # Errors
    /// When the provisioner cannot list its runners.
    pub async fn recover(&self) -> Result<Recovery, crate::Error> {
        Ok(self.shared.resync().await?)
    }

    /// Stops the engine's tasks at once and applies no shutdown policy: runners, their
    /// registrations and their pods stay as they are, for whoever manages the scale set next
    /// (a replica that lost its leader Lease must not stop another leader's runners, nor
    /// start new ones). A start already under way finishes its current call.
    pub fn abandon(&self) {
        self.shared.cancel.cancel();
        self.shared.tasks.close();
    }

    /// Makes every call that changes a runner or a registration (a mint, a create, a stop,
    /// a deregistration) ask `fence` first and skip the call when it answers false. A leader
    /// gives the local deadline of its Lease here: woken from a freeze past that deadline,
    /// it must not act before its renewal task has noticed the loss (the next leader may
    /// already manage the scale set). The first false answer also stops the engine as
    /// [`abandon`](Self::abandon) does: a lost Lease does not come back. Only the first
    /// fence given counts.
    pub fn fence(&self, fence: Fence) {
        let _ = self.shared.fence.set(fence);
    }

    /// Stops the engine according to `policy` (see [`ShutdownPolicy`]); `drain_timeout`
    /// bounds the wait for busy runners under `drain`/`delete`, after which the remaining
    /// runners are stopped and their registrations removed (for up to a minute more).
    /// Deleting the scale set is the caller's business. Returns the runners left: busy ones
    /// under `keep`, and any whose runner or registration could not be removed.
    pub async fn shutdown(&self, policy: ShutdownPolicy, drain_timeout: Duration) -> Vec<String> {
        let s = &self.shared;
        lock(&s.book).stopping = true;
        s.touched();
        let before = self.snapshot();
        let idle = before.starting + before.idle;
        let busy = before.busy + before.finished;
        match policy {
            ShutdownPolicy::Keep => tracing::info!(
                %policy,
                idle,
                busy,
                "shutting down: stopping idle runners; busy runners finish their jobs on their own"
            ),
            ShutdownPolicy::Drain | ShutdownPolicy::Delete => tracing::info!(
                %policy,
                idle,
                busy,
                drain_timeout_s = drain_timeout.as_secs(),
                "shutting down: stopping idle runners, waiting for busy ones to finish their jobs"
            ),
        }
        let settle = Duration::from_secs(60);
        match policy {
            ShutdownPolicy::Keep => {
                // A runner whose job completed ends within its finish grace: it is cleaned
                // up here rather than left to the next start (or the next leader).
                let kept = |snap: &Snapshot| snap.runners.iter().all(|r| r.phase == Phase::Busy);
                if self.wait_until(settle, kept).await.is_err() {
                    tracing::warn!("idle runners were not all removed in time");
                }
            }
            ShutdownPolicy::Drain | ShutdownPolicy::Delete => {
                if let Err(snap) = self.drain(drain_timeout).await {
                    tracing::warn!(
                        busy = snap.busy,
                        runners = snap.runners.len(),
                        "drain timeout: stopping the remaining runners"
                    );
                    let names: Vec<String> = snap.runners.into_iter().map(|r| r.name).collect();
                    for name in &names {
                        s.apply(name, Event::ForceStop, true);
                    }
                    if self
                        .wait_until(settle, |snap| snap.runners.is_empty())
                        .await
                        .is_err()
                    {
                        tracing::warn!("runners were not all stopped and deregistered in time");
                    }
                }
            }
        }
        s.cancel.cancel();
        s.tasks.close();
        s.tasks.wait().await;
        s.provisioner.settle().await;
        let left: Vec<String> = lock(&s.book).runners.keys().cloned().collect();
        let removed = before.runners.len().saturating_sub(left.len());
        if left.is_empty() {
            tracing::info!(
                %policy,
                removed,
                "engine stopped: every runner stopped and deregistered"
            );
        } else if policy == ShutdownPolicy::Keep {
            tracing::info!(
                %policy,
                removed,
                left = left.len(),
                runners = %left.join(", "),
                "engine stopped: busy runners keep running and finish their jobs"
            );
        } else {
            tracing::warn!(
                %policy,
                removed,
                left = left.len(),
                runners = %left.join(", "),
                "engine stopped: runners left behind (still registered with GitHub or still running)"
            );
        }
        left
    }

    /// Waits up to `timeout` for every runner to be gone, saying how many busy runners are
    /// left (and the time to the deadline) whenever that changes, and every
    /// [`DRAIN_REPORT_EVERY`] otherwise. `Err` with the last snapshot when time ran out.
    async fn drain(&self, timeout: Duration) -> Result<Snapshot, Snapshot> {
        let deadline = deadline_in(timeout);
        let mut shown: Option<usize> = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let r = self
                .wait_until(left.min(DRAIN_REPORT_EVERY), |snap| {
                    snap.runners.is_empty() || shown != Some(snap.busy)
                })
                .await;
            let (Ok(snap) | Err(snap)) = &r;
            if snap.runners.is_empty() {
                return r;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(r.unwrap_or_else(|snap| snap));
            }
            let snap = r.unwrap_or_else(|snap| snap);
            shown = Some(snap.busy);
            if snap.busy == 0 {
                // Only removals are left: nothing to wait for that a person could act on.
                continue;
            }
            tracing::info!(
                busy = snap.busy,
                runners = snap.runners.len(),
                deadline_in_s = left.as_secs(),
                "draining: waiting for busy runners to finish their jobs"
            );
        }
    }
}

impl<P: Provisioner> Shared<P> {
    /// Whether the [fence](Engine::fence), if any, lets this engine act.
    fn may_act(&self) -> bool {
        if self.fence.get().is_none_or(|f| f()) {
            return true;
        }
        self.cancel.cancel();
        self.tasks.close();
        false
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Book> {
        lock(&self.book)
    }

    /// The span of runner `name`'s lines and tasks (under the scale set's span, whatever
    /// span is current).
    fn runner_span(&self, name: &str) -> tracing::Span {
        tracing::info_span!(parent: &self.span, "runner", runner = %name)
    }

    fn snapshot(&self) -> Snapshot {
        let b = self.lock();
        let mut snap = Snapshot {
            assigned: b.assigned,
            target: if b.stopping {
                0
            } else {
                self.settings.target(b.assigned)
            },
            provisioning_failures: b.failures_total,
            backing_off: b.backoff_until.is_some_and(|u| u > Instant::now()),
            outdated: b.outdated,
            stopping: b.stopping,
            ..Default::default()
        };
        for (name, r) in &b.runners {
            match r.phase {
                Phase::Minting | Phase::Starting => snap.starting += 1,
                Phase::Idle => snap.idle += 1,
                Phase::Busy | Phase::Exited => snap.busy += 1,
                Phase::Finished => snap.finished += 1,
                Phase::Removing | Phase::Deregistering | Phase::Stopping | Phase::Killing => {
                    snap.removing += 1
                }
            }
            snap.runners.push(RunnerInfo {
                name: name.clone(),
                id: r.id,
                phase: r.phase,
            });
        }
        snap
    }

    fn touched(&self) {
        self.wake.notify_one();
        self.changed.notify_waiters();
    }

    fn new_name(&self, b: &Book) -> String {
        loop {
            let name = format!(
                "{}{:08x}",
                self.settings.runner_name_prefix,
                rand::random::<u32>()
            );
            if !b.runners.contains_key(&name) {
                return name;
            }
        }
    }

    /// Applies `event` to `name` and carries out the actions (all but `Create`, which the
    /// start task does itself). `wake`: wake the reconcile task (not from within it).
    fn apply(self: &Arc<Self>, name: &str, event: Event, wake: bool) -> Option<Applied> {
        let applied = self
            .lock()
            .apply(name, event, Instant::now(), rand::random::<f64>());
        let Some(a) = applied else {
            runner_log!(self, name, debug, %event, "event for a runner without a record");
            return None;
        };
        self.carry_out(name, event, &a);
        if wake {
            self.touched();
        } else {
            self.changed.notify_waiters();
        }
        Some(a)
    }

    fn carry_out(self: &Arc<Self>, name: &str, event: Event, a: &Applied) {
        if a.next != Next::To(a.from) {
            runner_log!(self, name, debug, %event, from = %a.from, to = %a.next, "runner transition");
        }
        for action in &a.actions {
            match action {
                Action::Create | Action::RetryLater | Action::ResetFailures => {}
                Action::Deregister => {
                    let (s, span) = (self.clone(), self.runner_span(name));
                    let (name, id) = (name.to_string(), a.record.id);
                    self.tasks
                        .spawn(async move { s.deregister(name, id).await }.instrument(span));
                }
                Action::Stop => {
                    let (s, name, span) = (self.clone(), name.to_string(), self.runner_span(name));
                    self.tasks
                        .spawn(async move { s.stop(name).await }.instrument(span));
                }
                Action::CountFailure => {
                    self.metrics.provisioning_failed();
                    let (failures, retry_in) = {
                        let b = self.lock();
                        let retry_in = b.backoff_until.map_or(Duration::ZERO, |u| {
                            u.saturating_duration_since(Instant::now())
                        });
                        (b.start_failures, retry_in)
                    };
                    self.metrics.set_start_backoff(retry_in);
                    runner_log!(self, name, warn, %event, failures_in_a_row = failures, next_start_in_s = retry_in.as_secs_f64(), "a runner failed to start; further starts back off");
                }
                Action::ReportOutdated => {
                    self.metrics.runner_outdated();
                    runner_log!(
                        self,
                        name,
                        error,
                        exit_code = crate::provisioner::OUTDATED_RUNNER_EXIT_CODE,
                        "the runner refused to start because its version is older than GitHub accepts; no more runners are started for this scale set until the configuration changes (update the runner image or binary and restart)"
                    );
                }
            }
        }
        if event == Event::Running {
            self.metrics.set_start_backoff(Duration::ZERO);
        }
        if a.next == Next::Gone {
            runner_log!(
                self,
                name,
                debug,
                runner_id = a.record.id.get(),
                lifetime_s = secs(a.record.born.elapsed()),
                "runner gone: stopped and deregistered"
            );
            if !a.record.created {
                let (s, name, span) = (self.clone(), name.to_string(), self.runner_span(name));
                self.tasks.spawn(
                    async move {
                        if let Err(e) = s.provisioner.unreserve(&name).await {
                            tracing::warn!(error = %e, "could not drop the runner's reservation");
                        }
                    }
                    .instrument(span),
                );
            }
        }
    }

    /// Removes the registration of `name` (looked up by name when `id` is 0) and reports
    /// the outcome as an event. The one place that interprets `remove_runner`'s answer.
    async fn deregister(self: Arc<Self>, name: String, id: RunnerId) {
        if !self.may_act() {
            return;
        }
        let event = self.remove_registration(&name, id).await;
        self.apply(&name, event, true);
    }

    async fn remove_registration(&self, name: &str, id: RunnerId) -> Event {
        let id = if id > RunnerId::new(0) {
            id
        } else {
            match self.lookup_id(name).await {
                Ok(id) if id == RunnerId::new(0) => return Event::RemovalDone,
                Ok(id) => id,
                Err(e) => {
                    runner_log!(self, name, warn, error = %e, "could not look the runner up on GitHub");
                    return Event::RemovalFailed;
                }
            }
        };
        match self.client.remove_runner(id).await {
            Ok(_) => Event::RemovalDone,
            Err(ApiError::JobStillRunning(_)) => Event::RemovalRefused,
            Err(e) => {
                runner_log!(self, name, warn, runner_id = id.get(), error = %e, "could not remove a runner from GitHub; retrying later");
                Event::RemovalFailed
            }
        }
    }

    /// The id of the runner registered as `name` in this scale set (0: none).
    async fn lookup_id(&self, name: &str) -> Result<RunnerId, ApiError> {
        Ok(match self.client.get_runner_by_name(name).await? {
            Some(r)
                if r.runner_scale_set_id == self.settings.scale_set_id
                    || r.runner_scale_set_id == ScaleSetId::new(0) =>
            {
                r.id
            }
            _ => RunnerId::new(0),
        })
    }

    async fn stop(self: Arc<Self>, name: String) {
        if !self.may_act() {
            return;
        }
        let event = match self.provisioner.stop(&name).await {
            Ok(()) => Event::StopDone,
            Err(e) => {
                runner_log!(self, name, warn, error = %e, "could not stop the runner; retrying later");
                Event::StopFailed
            }
        };
        self.apply(&name, event, true);
    }

    async fn reconcile_loop(self: Arc<Self>) {
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let next = self.reconcile_once();
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = self.cancel.cancelled() => return,
                () = &mut notified => {}
                () = sleep => {}
            }
        }
    }

    /// One pass: plan, carry the plan out, return when to look again.
    fn reconcile_once(self: &Arc<Self>) -> Option<Instant> {
        let now = Instant::now();
        let set = &self.settings;
        let (p, names) = {
            let mut b = self.lock();
            let p = plan(&b, set, now);
            let names: Vec<String> = (0..p.starts)
                .map(|_| {
                    let name = self.new_name(&b);
                    b.runners.insert(
                        name.clone(),
                        Record::new(RunnerId::new(0), Phase::Minting, now),
                    );
                    name
                })
                .collect();
            (p, names)
        };
        for (name, event) in &p.events {
            self.apply(name, *event, false);
        }
        {
            let mut held = lock(&self.held_back);
            if *held != p.held_back {
                match p.held_back {
                    Some(HeldBack::MaxRunners) => {
                        tracing::info!(
                            target = p.target,
                            capacity = p.capacity,
                            max_runners = set.max_runners,
                            "waiting for runners on their way out before starting more (max_runners reached)"
                        );
                    }
                    Some(HeldBack::Backoff) => {
                        tracing::info!(
                            target = p.target,
                            capacity = p.capacity,
                            "starts are backing off after failures"
                        );
                    }
                    Some(HeldBack::Outdated) | None => {}
                }
                *held = p.held_back;
            }
        }
        let capacity = self.lock().capacity();
        self.metrics.set_managed(capacity);
        if !names.is_empty() || !p.events.is_empty() {
            tracing::debug!(
                target = p.target,
                capacity = p.capacity,
                starting = names.len(),
                events = p.events.len(),
                "reconciling"
            );
        }
        for name in names {
            let (s, span) = (self.clone(), self.runner_span(&name));
            self.tasks
                .spawn(async move { s.start_runner(name).await }.instrument(span));
        }
        self.changed.notify_waiters();
        p.wake_at
    }

    async fn start_runner(self: Arc<Self>, name: String) {
        let permit = tokio::select! {
            () = self.cancel.cancelled() => None,
            p = self.starts.acquire() => p.ok(),
        };
        if permit.is_none() || self.lock().stopping {
            // Nothing was registered: the record just goes.
            self.lock().runners.remove(&name);
            self.touched();
            return;
        }
        if !self.may_act() {
            runner_log!(
                self,
                name,
                warn,
                "not started: this replica no longer holds its leader lease"
            );
            self.lock().runners.remove(&name);
            self.touched();
            return;
        }
        if let Err(e) = self.provisioner.reserve(&name).await {
            runner_log!(self, name, warn, error = %e, "could not record the runner");
            self.apply(&name, Event::MintFailed, true);
            return;
        }
        let jit = self
            .client
            .generate_jit_runner_config(
                self.settings.scale_set_id,
                &JitRunnerSetting {
                    name: name.clone(),
                    work_folder: self.settings.work_folder.clone(),
                },
            )
            .await;
        let jit = match jit {
            Ok(jit) => jit,
            Err(e) => {
                runner_log!(self, name, warn, error = %e, "could not mint a JIT config");
                if matches!(e, ApiError::Unauthorized(_)) {
                    self.apply(&name, Event::MintFailed, true);
                    return;
                }
                // The service may have registered the runner all the same (its answer was
                // lost or unreadable): the record keeps its slot while the registration is
                // looked up by name and removed; a sweep soon catches a mint the service
                // finishes later.
                self.apply(&name, Event::MintUncertain, true);
                self.sweep_soon.notify_one();
                return;
            }
        };
        let id = jit.runner.id;
        if let Some(r) = self.lock().runners.get_mut(&name) {
            r.id = id;
        }
        let minted = self.apply(&name, Event::Minted, true);
        if !minted.is_some_and(|a| a.actions.contains(&Action::Create)) {
            return;
        }
        if jit.encoded_jit_config.is_empty() {
            runner_log!(
                self,
                name,
                warn,
                runner_id = id.get(),
                "the service returned an empty JIT config"
            );
            self.apply(&name, Event::CreateFailed, true);
            return;
        }
        if !self.may_act() {
            // Registered, not created: the next leader's sweep finds a registration of the
            // scale set's prefix without a runner and removes it.
            runner_log!(
                self,
                name,
                warn,
                runner_id = id.get(),
                "not created: this replica no longer holds its leader lease"
            );
            return;
        }
        let spec = RunnerSpec {
            name: name.clone(),
            runner_id: id,
            jit_config: jit.encoded_jit_config,
        };
        match self.provisioner.create(spec).await {
            Ok(()) => {
                if let Some(r) = self.lock().runners.get_mut(&name) {
                    r.created = true;
                }
                runner_log!(self, name, debug, runner_id = id.get(), "runner created");
            }
            Err(e) => {
                runner_log!(self, name, warn, runner_id = id.get(), error = %e, "the provisioner could not create the runner");
                self.apply(&name, Event::CreateFailed, true);
            }
        }
        self.changed.notify_waiters();
    }

    async fn event_loop(self: Arc<Self>) {
        loop {
            let event = tokio::select! {
                () = self.cancel.cancelled() => return,
                e = self.provisioner.next_event() => e,
            };
            match event {
                Some(e) => self.on_provisioner_event(e),
                None => return,
            }
        }
    }

    fn on_provisioner_event(self: &Arc<Self>, e: ProvisionerEvent) {
        let name = e.name;
        let event = match &e.event {
            RunnerEvent::Running => Event::Running,
            RunnerEvent::Exited(status) => Event::Exited(exit_kind(status)),
            RunnerEvent::FailedToStart { reason } => {
                runner_log!(self, name, warn, reason = %reason, "the runner could not be started");
                Event::FailedToStart
            }
            RunnerEvent::Vanished => {
                runner_log!(
                    self,
                    name,
                    warn,
                    "the runner disappeared (removed behind the autoscaler's back)"
                );
                Event::Vanished
            }
        };
        let Some(a) = self.apply(&name, event, true) else {
            return;
        };
        let age = secs(a.record.born.elapsed());
        match &e.event {
            RunnerEvent::Running => {
                runner_log!(
                    self,
                    name,
                    info,
                    runner_id = a.record.id.get(),
                    start_s = age,
                    "runner started"
                );
            }
            // Stopped on purpose (scale-down, shutdown): whatever its status says.
            RunnerEvent::Exited(status)
                if matches!(a.from, Phase::Removing | Phase::Stopping | Phase::Killing) =>
            {
                runner_log!(self, name, info, %status, lifetime_s = age, "runner stopped");
            }
            RunnerEvent::Exited(status) if status.success() => {
                runner_log!(self, name, info, lifetime_s = age, "runner finished");
            }
            RunnerEvent::Exited(status) => {
                runner_log!(self, name, warn, %status, lifetime_s = age, "runner failed");
            }
            RunnerEvent::FailedToStart { .. } | RunnerEvent::Vanished => {}
        }
    }

    async fn resync_loop(self: Arc<Self>) {
        let mut last_sweep = Instant::now();
        loop {
            let mut sweep = tokio::select! {
                () = self.cancel.cancelled() => return,
                () = tokio::time::sleep(self.settings.resync_interval) => false,
                () = self.sweep_soon.notified() => {
                    // Give the service a moment: a mint it is still finishing shows up.
                    tokio::select! {
                        () = self.cancel.cancelled() => return,
                        () = tokio::time::sleep(SWEEP_DELAY) => {}
                    }
                    true
                }
            };
            if let Err(e) = self.resync_provisioner().await {
                tracing::warn!(error = %e, "could not list the provisioner's runners; the resync is retried later");
            }
            sweep |= last_sweep.elapsed() >= self.settings.sweep_interval;
            if sweep {
                last_sweep = Instant::now();
                self.sweep_registrations().await;
            }
        }
    }

    /// The start-up resync: the provisioner's runners, then GitHub's registrations.
    async fn resync(self: &Arc<Self>) -> Result<Recovery, crate::ProvisionError> {
        let mut recovery = self.resync_provisioner().await?;
        recovery.unaccounted = self.sweep_registrations().await;
        Ok(recovery)
    }

    /// Finds registrations of this scale set whose name has this engine's prefix but no
    /// record (a mint whose answer was lost or unreadable, a record lost in a crash) and
    /// removes them; until GitHub confirms, each is booked as deregistering, so it counts
    /// toward `max_runners` but never as capacity. Returns how many it found.
    async fn sweep_registrations(self: &Arc<Self>) -> usize {
        let registered = match self.client.list_runners().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "could not list the scale set's registrations; the sweep is retried later");
                return 0;
            }
        };
        let prefix = &self.settings.runner_name_prefix;
        let mut found = Vec::new();
        {
            let mut b = self.lock();
            for r in registered {
                if r.runner_scale_set_id != self.settings.scale_set_id
                    || !r.name.starts_with(prefix.as_str())
                    || r.id <= RunnerId::new(0)
                    || b.runners.contains_key(&r.name)
                {
                    continue;
                }
                let mut rec = Record::new(r.id, Phase::Deregistering, Instant::now());
                rec.created = true;
                rec.removing = true;
                b.runners.insert(r.name.clone(), rec);
                found.push((r.name, r.id));
            }
        }
        let n = found.len();
        for (name, id) in found {
            runner_log!(
                self,
                name,
                warn,
                runner_id = id.get(),
                "found a registration the engine had no record of (a lost mint answer or a crash); removing it"
            );
            let (s, span) = (self.clone(), self.runner_span(&name));
            self.tasks
                .spawn(async move { s.deregister(name, id).await }.instrument(span));
        }
        if n > 0 {
            self.touched();
        }
        n
    }

    /// Compares the records with the provisioner's list and repairs both directions.
    async fn resync_provisioner(self: &Arc<Self>) -> Result<Recovery, crate::ProvisionError> {
        let started = Instant::now();
        let listed = self.provisioner.list().await?;
        let mut leftovers = Vec::new();
        let mut events = Vec::new();
        {
            let b = self.lock();
            let names: HashSet<&str> = listed.iter().map(|o| o.name.as_str()).collect();
            for o in &listed {
                match b.runners.get(&o.name) {
                    None => leftovers.push(o.clone()),
                    // Only records that have not moved since the listing began.
                    Some(r) if r.created && r.since <= started => match &o.state {
                        RunnerState::Exited(status) => {
                            events.push((o.name.clone(), Event::Exited(exit_kind(status))));
                        }
                        RunnerState::Failed { .. } => {
                            events.push((o.name.clone(), Event::FailedToStart));
                        }
                        RunnerState::Pending | RunnerState::Running => {}
                    },
                    Some(_) => {}
                }
            }
            for (name, r) in &b.runners {
                let expects_runner = !matches!(
                    r.phase,
                    Phase::Minting | Phase::Exited | Phase::Deregistering
                );
                if expects_runner
                    && r.created
                    && r.since <= started
                    && !names.contains(name.as_str())
                {
                    events.push((name.clone(), Event::Vanished));
                }
            }
        }
        for (name, event) in events {
            runner_log!(self, name, info, %event, "resync: the provisioner's state differs from the engine's records");
            self.apply(&name, event, true);
        }
        let mut recovery = Recovery::default();
        for o in leftovers {
            if self.cancel.is_cancelled() {
                break;
            }
            let alive = o.state.is_alive() && self.adopt(&o.name).await;
            let phase = if alive {
                Phase::Removing
            } else {
                if let Err(e) = self.provisioner.release(&o.name).await {
                    runner_log!(self, o.name, warn, error = %e, "could not release a leftover runner");
                }
                Phase::Deregistering
            };
            {
                let mut b = self.lock();
                if b.runners.contains_key(&o.name) {
                    continue;
                }
                let mut r = Record::new(o.runner_id, phase, Instant::now());
                r.created = true;
                r.removing = true;
                b.runners.insert(o.name.clone(), r);
            }
            if alive {
                recovery.adopted += 1;
                runner_log!(
                    self,
                    o.name,
                    info,
                    runner_id = o.runner_id.get(),
                    "adopted a leftover runner; removing its registration (kept if it runs a job)"
                );
            } else {
                recovery.released += 1;
                runner_log!(
                    self,
                    o.name,
                    info,
                    runner_id = o.runner_id.get(),
                    "released a leftover runner that no longer ran; removing its registration"
                );
            }
            let (s, span) = (self.clone(), self.runner_span(&o.name));
            let (name, id) = (o.name.clone(), o.runner_id);
            self.tasks
                .spawn(async move { s.deregister(name, id).await }.instrument(span));
        }
        self.touched();
        Ok(recovery)
    }

    async fn adopt(&self, name: &str) -> bool {
        match self.provisioner.adopt(name).await {
            Ok(adopted) => adopted,
            Err(e) => {
                runner_log!(self, name, warn, error = %e, "could not adopt a leftover runner; releasing it");
                false
            }
        }
    }
}

impl<P: Provisioner> Scaler for Engine<P> {
    async fn handle_desired_runner_count(&self, count: i64) -> Result<i64, BoxError> {
        let s = &self.shared;
        let (target, assigned, stopping) = {
            let mut b = s.lock();
            if b.assigned != count {
                tracing::debug!(assigned = count, "demand changed");
            }
            b.assigned = count.max(0);
            let target = if b.stopping {
                0
            } else {
                s.settings.target(b.assigned)
            };
            (target, b.assigned, b.stopping)
        };
        let was = std::mem::replace(&mut *lock(&s.logged_target), target);
        if was != target && !stopping {
            // target = min(max, min + assigned jobs + headroom): the fields are its reason.
            let set = &s.settings;
            tracing::info!(
                target,
                was,
                assigned_jobs = assigned,
                min = set.min_runners,
                headroom = set.idle_headroom,
                max = set.max_runners,
                "target changed"
            );
        }
        s.touched();
        Ok(i64::from(target))
    }

    async fn handle_job_started(&self, job: &JobStarted) -> Result<(), BoxError> {
        let s = &self.shared;
        let key = format!(
            "{}/{}/{}",
            job.base.runner_request_id, job.base.job_id, job.runner_name
        );
        if lock(&s.seen_started).insert(key) {
            s.metrics.job_started(job);
            runner_log!(s, job.runner_name, info, job_id = %job.base.job_id, job = %job.base.job_display_name, "job started");
        }
        if let Some(r) = s.lock().runners.get_mut(&job.runner_name)
            && r.id == RunnerId::new(0)
        {
            r.id = job.runner_id;
        }
        s.apply(&job.runner_name, Event::JobStarted, true);
        Ok(())
    }

    async fn handle_job_completed(&self, job: &JobCompleted) -> Result<(), BoxError> {
        let s = &self.shared;
        let key = format!(
            "{}/{}/{}/{}",
            job.base.runner_request_id, job.base.job_id, job.runner_name, job.result
        );
        if lock(&s.seen_completed).insert(key) {
            s.metrics.job_completed(job);
            runner_log!(s, job.runner_name, info, job_id = %job.base.job_id, result = %job.result, "job completed");
        }
        if !job.runner_name.is_empty() {
            s.apply(&job.runner_name, Event::JobCompleted, true);
        }
        Ok(())
    }
}
