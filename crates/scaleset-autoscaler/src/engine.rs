//! The scaling engine of one scale set: runner bookkeeping, the scaling policy, and a
//! reconcile task that converges toward the target without ever blocking the listener.
//!
//! # Runner life cycle (keyed by runner name, never by `runnerRequestId`)
//!
//! ```text
//! starting --(JIT minted, provisioner started it)--> idle --(JobStarted names it)--> busy
//!    busy --(JobCompleted)--> finished --(process exits)--> removed
//!    busy --(process exits before JobCompleted)--> exited --(JobCompleted or grace)--> removed
//!    idle --(above target for idle_delay, or broken)--> removing --> removed
//! ```
//!
//! The protocol has no "runner online" message, so a runner counts as idle capacity once its
//! provisioner started it. A runner is **broken** ("never came online") when its process
//! exits without having started a job, or when it stays idle longer than the registration
//! timeout *while jobs are waiting* (assigned jobs beyond the busy runners). A broken runner
//! is removed from GitHub (`remove_runner`; `JobStillRunning` means it did pick up a job, so
//! it is kept) and replaced by the reconcile task if still needed.
//!
//! Capacity = starting + idle + busy + exited-while-busy. Finished and removing runners never
//! count.
//!
//! # Policy
//!
//! `target = min(max_runners, min_runners + totalAssignedJobs + idle_headroom)` (the
//! reference/ARC rule plus optional headroom). Above the target only idle runners are
//! stopped, and only after they were idle for `idle_delay`; a busy runner never is.
//!
//! # Concurrency
//!
//! The [`Scaler`] methods only record facts and wake the reconcile task; they never wait for
//! GitHub or the provisioner, so the listener is never blocked. The reconcile task starts
//! runners in parallel with at most `max_concurrent_starts` JIT mints/starts in flight.
//! Every Scaler method is idempotent: a redelivered message changes nothing.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actions_scaleset::listener::BoxError;
use actions_scaleset::{
    Client, Error as ApiError, JitRunnerSetting, JobCompleted, JobStarted, Scaler,
};
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::{ScaleSetConfig, ShutdownPolicy};
use crate::metrics::ScaleSetMetrics;
use crate::provisioner::{Provisioner, RunnerExit, RunnerSpec};

/// Settings of one engine.
#[derive(Clone, Debug)]
pub struct EngineSettings {
    /// Scale set id.
    pub scale_set_id: i64,
    /// Scale set name (a field of every log line).
    pub scale_set_name: String,
    /// Runners kept even without demand.
    pub min_runners: u32,
    /// Most runners at once.
    pub max_runners: u32,
    /// Extra idle runners above demand.
    pub idle_headroom: u32,
    /// How long an idle runner above the target stays before it is stopped.
    pub idle_delay: Duration,
    /// Idle this long while jobs wait = broken.
    pub registration_timeout: Duration,
    /// How long a busy runner whose process exited keeps counting while its `JobCompleted`
    /// is awaited.
    pub exit_grace: Duration,
    /// How long a finished runner may take to exit before it is stopped.
    pub finish_grace: Duration,
    /// JIT mints/starts in flight at once.
    pub max_concurrent_starts: usize,
    /// Runner names are `<prefix><8 hex digits>`.
    pub runner_name_prefix: String,
    /// `workFolder` sent with the JIT request (empty: the runner's default).
    pub work_folder: String,
}

impl EngineSettings {
    /// Settings with defaults: 0..10 runners, 60 s idle delay, 300 s registration timeout,
    /// 16 concurrent starts, names `<name>-xxxxxxxx`.
    pub fn new(scale_set_id: i64, scale_set_name: impl Into<String>) -> EngineSettings {
        let name = scale_set_name.into();
        EngineSettings {
            scale_set_id,
            runner_name_prefix: format!("{name}-"),
            scale_set_name: name,
            min_runners: 0,
            max_runners: 10,
            idle_headroom: 0,
            idle_delay: Duration::from_secs(60),
            registration_timeout: Duration::from_secs(300),
            exit_grace: Duration::from_secs(120),
            finish_grace: Duration::from_secs(60),
            max_concurrent_starts: 16,
            work_folder: String::new(),
        }
    }

    /// Settings from a scale set's configuration.
    pub fn from_config(scale_set_id: i64, c: &ScaleSetConfig) -> EngineSettings {
        EngineSettings {
            min_runners: c.min_runners,
            max_runners: c.max_runners,
            idle_headroom: c.idle_headroom,
            idle_delay: c.idle_delay(),
            registration_timeout: Duration::from_secs(c.registration_timeout_secs),
            max_concurrent_starts: c.max_concurrent_starts,
            runner_name_prefix: c.name_prefix(),
            ..EngineSettings::new(scale_set_id, &c.name)
        }
    }

    /// The number of runners wanted for `assigned` jobs.
    pub fn target(&self, assigned: i64) -> u32 {
        let assigned = u64::try_from(assigned.max(0)).unwrap_or(0);
        let want = u64::from(self.min_runners) + assigned + u64::from(self.idle_headroom);
        want.min(u64::from(self.max_runners)) as u32
    }
}

/// Where a runner is in its life cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// JIT config being minted or the provisioner starting it.
    Starting,
    /// Started, no job yet.
    Idle,
    /// Running a job.
    Busy,
    /// Its process exited while busy; waiting for the `JobCompleted`.
    Exited,
    /// Its job completed; waiting for the process to exit.
    Finished,
    /// Being removed from GitHub and stopped.
    Removing,
}

impl Phase {
    /// Whether the runner counts toward the target.
    pub fn is_capacity(self) -> bool {
        matches!(
            self,
            Phase::Starting | Phase::Idle | Phase::Busy | Phase::Exited
        )
    }
}

#[derive(Debug)]
struct Runner {
    id: i64,
    phase: Phase,
    since: Instant,
    /// After a failed removal: not retried before this.
    retry_at: Option<Instant>,
    /// Failed removals in a row.
    remove_failures: u32,
}

impl Runner {
    fn new(id: i64, phase: Phase, since: Instant) -> Runner {
        Runner {
            id,
            phase,
            since,
            retry_at: None,
            remove_failures: 0,
        }
    }

    /// Whether a failed removal is still backing off at `now`.
    fn backing_off(&self, now: Instant) -> bool {
        self.retry_at.is_some_and(|t| t > now)
    }
}

/// What became of a runner's registration.
#[derive(Debug)]
enum Removal {
    /// Gone from GitHub (removed now, or not found).
    Removed,
    /// GitHub refused: the runner is running a job.
    StillRunning,
    /// Unknown: the call failed (5xx, timeout, ...). The runner may still be registered and
    /// may even have just been given a job.
    Failed(ApiError),
}

/// `t + d`, or `None` when that is beyond what the clock can represent (never due).
fn after(t: Instant, d: Duration) -> Option<Instant> {
    t.checked_add(d)
}

/// `now + d`, saturating at about 30 years.
fn deadline_in(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365 * 30))
}

/// How long [`Shared::deregister_retrying`] keeps trying.
const REMOVE_RETRY_BUDGET: Duration = Duration::from_secs(60);

/// One runner in a [`Snapshot`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunnerInfo {
    /// Name.
    pub name: String,
    /// Runner id (0 until the JIT config is minted).
    pub id: i64,
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
    /// Runners by phase.
    pub starting: usize,
    /// Idle runners.
    pub idle: usize,
    /// Busy runners (including exited-while-busy).
    pub busy: usize,
    /// Finished runners whose process has not exited yet.
    pub finished: usize,
    /// Runners being removed.
    pub removing: usize,
    /// Every runner, by name.
    pub runners: Vec<RunnerInfo>,
    /// Runners that could not be minted or started so far.
    pub provisioning_failures: u64,
    /// Whether the engine is shutting down.
    pub stopping: bool,
}

impl Snapshot {
    /// Runners that count toward the target.
    pub fn capacity(&self) -> usize {
        self.starting + self.idle + self.busy
    }
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

#[derive(Default)]
struct State {
    assigned: i64,
    runners: BTreeMap<String, Runner>,
    stopping: bool,
    start_failures: u32,
    backoff_until: Option<Instant>,
    failures_total: u64,
    seen_started: Seen,
    seen_completed: Seen,
}

struct Shared<P> {
    settings: EngineSettings,
    client: Client,
    provisioner: P,
    metrics: ScaleSetMetrics,
    state: Mutex<State>,
    wake: Notify,
    changed: Notify,
    starts: Semaphore,
    cancel: CancellationToken,
    tasks: TaskTracker,
    /// Fires when a background task ended unexpectedly.
    failed: CancellationToken,
    failure: Mutex<Option<String>>,
}

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

fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.min(6)).min(Duration::from_secs(60))
}

impl<P: Provisioner> Engine<P> {
    /// An engine; call [`spawn`](Self::spawn) to start its reconcile task.
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
                state: Mutex::new(State::default()),
                wake: Notify::new(),
                changed: Notify::new(),
                cancel: CancellationToken::new(),
                tasks: TaskTracker::new(),
                failed: CancellationToken::new(),
                failure: Mutex::new(None),
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

    /// Starts the reconcile task and the runner-exit watcher. Each is supervised: if one
    /// ends before [`shutdown`](Self::shutdown) (a panic, the provisioner closed), the engine
    /// is marked failed ([`failed`](Self::failed), [`failure`](Self::failure)).
    pub fn spawn(&self) {
        let s = self.shared.clone();
        // Spawned tasks keep the caller's span (the daemon's `scale_set` span), so every
        // line they and the library log names the scale set.
        self.supervise(
            "reconcile",
            tokio::spawn(s.reconcile_loop().in_current_span()),
        );
        let s = self.shared.clone();
        self.supervise("runner-exit", tokio::spawn(s.exit_loop().in_current_span()));
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
            tracing::error!(scale_set = %s.settings.scale_set_name, error = %why, "the engine stopped working");
            s.failure
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert(why);
            s.failed.cancel();
        });
    }

    /// Resolves once a background task ended unexpectedly.
    pub async fn failed(&self) {
        self.shared.failed.cancelled().await;
    }

    /// Why the engine failed, if it did.
    pub fn failure(&self) -> Option<String> {
        self.shared
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
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

    /// Cleans up what a previous run left behind. For each runner the provisioner still
    /// owns, its registration is removed from GitHub (looked up by name when its id was never
    /// recorded), retrying failures with backoff:
    ///
    /// * gone: its process (if alive) is stopped and its record forgotten;
    /// * `JobStillRunning` with a live process: adopted as busy (if the provisioner can watch
    ///   it);
    /// * not confirmed gone (the calls kept failing): nothing is stopped. A live process is
    ///   adopted as idle, so the engine retries its removal later (and keeps it if it turns
    ///   out busy); a dead one keeps its record for the next start.
    ///
    /// Call before [`spawn`](Self::spawn). Returns how many runners were removed and adopted.
    ///
    /// # Errors
    /// When the provisioner cannot list its runners.
    pub async fn recover_orphans(&self) -> Result<(usize, usize), crate::Error> {
        let s = &self.shared;
        let ss = &s.settings.scale_set_name;
        let leftovers = s.provisioner.list().await?;
        let (mut removed, mut adopted) = (0, 0);
        for orphan in leftovers {
            let name = orphan.name.clone();
            let mut id = orphan.runner_id;
            let removal = if id == 0 {
                match s.lookup_id_retrying(&name).await {
                    Ok(found) => {
                        id = found;
                        s.deregister_retrying(&name, id).await
                    }
                    Err(e) => Removal::Failed(e),
                }
            } else {
                s.deregister_retrying(&name, id).await
            };
            let adopt = |phase: Phase| {
                s.lock().runners.insert(name.clone(), {
                    let mut r = Runner::new(id, phase, Instant::now());
                    if phase == Phase::Idle {
                        r.remove_failures = 1;
                        r.retry_at = after(Instant::now(), backoff(0));
                    }
                    r
                });
            };
            match removal {
                Removal::Removed => {
                    if orphan.alive
                        && let Err(e) = s.provisioner.stop(&name).await
                    {
                        tracing::warn!(scale_set = %ss, runner = %name, error = %e, "could not stop a leftover runner");
                    }
                    if let Err(e) = s.provisioner.forget(&name).await {
                        tracing::warn!(scale_set = %ss, runner = %name, error = %e, "could not forget a leftover runner");
                    }
                    tracing::info!(scale_set = %ss, runner = %name, runner_id = id, "removed a leftover runner");
                    removed += 1;
                }
                Removal::StillRunning if orphan.alive && s.provisioner.watch(&name).await => {
                    adopt(Phase::Busy);
                    tracing::info!(scale_set = %ss, runner = %name, "adopted a leftover runner that is running a job");
                    adopted += 1;
                }
                Removal::Failed(e) if orphan.alive && s.provisioner.watch(&name).await => {
                    adopt(Phase::Idle);
                    tracing::warn!(scale_set = %ss, runner = %name, runner_id = id, error = %e, "could not remove a leftover runner from GitHub; adopted it, its removal is retried later");
                    adopted += 1;
                }
                Removal::StillRunning => {
                    tracing::warn!(scale_set = %ss, runner = %name, runner_id = id, "a leftover runner is still running a job but cannot be watched; keeping its record");
                }
                Removal::Failed(e) => {
                    tracing::warn!(scale_set = %ss, runner = %name, runner_id = id, error = %e, "could not remove a leftover runner from GitHub; keeping its record for the next start");
                }
            }
        }
        s.changed.notify_waiters();
        Ok((removed, adopted))
    }

    /// Stops the engine according to `policy` (see [`ShutdownPolicy`]); `drain_timeout`
    /// bounds the wait for busy runners under `drain`/`delete`, after which the remaining
    /// runners are stopped and their registrations removed (retried for up to a minute).
    /// Deleting the scale set is the caller's business. Returns the runners left: busy ones
    /// under `keep`, those whose registration could not be removed under `drain`/`delete`.
    pub async fn shutdown(&self, policy: ShutdownPolicy, drain_timeout: Duration) -> Vec<String> {
        let s = &self.shared;
        let ss = s.settings.scale_set_name.clone();
        {
            let mut st = s.lock();
            st.stopping = true;
        }
        s.wake.notify_one();
        s.changed.notify_waiters();
        tracing::info!(scale_set = %ss, ?policy, "shutting down the engine");
        let settle = Duration::from_secs(60);
        let mut still_registered = Vec::new();
        match policy {
            ShutdownPolicy::Keep => {
                let r = self
                    .wait_until(settle, |snap| {
                        snap.starting == 0 && snap.idle == 0 && snap.removing == 0
                    })
                    .await;
                if r.is_err() {
                    tracing::warn!(scale_set = %ss, "idle runners did not stop in time");
                }
            }
            ShutdownPolicy::Drain | ShutdownPolicy::Delete => {
                let r = self
                    .wait_until(drain_timeout, |snap| snap.runners.is_empty())
                    .await;
                if let Err(snap) = r {
                    tracing::warn!(scale_set = %ss, remaining = snap.runners.len(), "drain timeout: stopping the remaining runners");
                    let left: Vec<(String, i64)> = {
                        let mut st = s.lock();
                        st.runners
                            .iter_mut()
                            .map(|(n, r)| {
                                r.phase = Phase::Removing;
                                (n.clone(), r.id)
                            })
                            .collect()
                    };
                    let mut set = tokio::task::JoinSet::new();
                    for (name, id) in left {
                        let s = s.clone();
                        set.spawn(async move {
                            if let Err(e) = s.provisioner.stop(&name).await {
                                tracing::warn!(scale_set = %s.settings.scale_set_name, runner = %name, error = %e, "could not stop a runner");
                            }
                            // Its process is gone now: a job it ran fails and GitHub lets go
                            // of the registration shortly.
                            let removal = s.deregister_retrying_when(&name, id, true).await;
                            s.lock().runners.remove(&name);
                            s.changed.notify_waiters();
                            match removal {
                                Removal::Removed => None,
                                Removal::StillRunning | Removal::Failed(_) => Some((name, id)),
                            }
                        });
                    }
                    while let Some(joined) = set.join_next().await {
                        if let Ok(Some(left)) = joined {
                            still_registered.push(left);
                        }
                    }
                }
            }
        }
        s.cancel.cancel();
        s.tasks.close();
        s.tasks.wait().await;
        if !still_registered.is_empty() {
            still_registered.sort();
            tracing::warn!(scale_set = %ss, runners = ?still_registered, "runners still registered with GitHub after their process was stopped (name, id)");
        }
        let st = s.lock();
        let mut out: Vec<String> = st.runners.keys().cloned().collect();
        out.extend(still_registered.into_iter().map(|(n, _)| n));
        out.sort();
        out.dedup();
        out
    }
}

impl<P: Provisioner> Shared<P> {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn snapshot(&self) -> Snapshot {
        let st = self.lock();
        let mut snap = Snapshot {
            assigned: st.assigned,
            target: if st.stopping {
                0
            } else {
                self.settings.target(st.assigned)
            },
            provisioning_failures: st.failures_total,
            stopping: st.stopping,
            ..Default::default()
        };
        for (name, r) in &st.runners {
            match r.phase {
                Phase::Starting => snap.starting += 1,
                Phase::Idle => snap.idle += 1,
                Phase::Busy | Phase::Exited => snap.busy += 1,
                Phase::Finished => snap.finished += 1,
                Phase::Removing => snap.removing += 1,
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

    fn new_name(&self, st: &State) -> String {
        loop {
            let name = format!(
                "{}{:08x}",
                self.settings.runner_name_prefix,
                rand::random::<u32>()
            );
            if !st.runners.contains_key(&name) {
                return name;
            }
        }
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

    /// One pass: decide, spawn the work, return when to look again.
    fn reconcile_once(self: &Arc<Self>) -> Option<Instant> {
        let now = Instant::now();
        let set = &self.settings;
        let mut starts = Vec::new();
        let mut retire = Vec::new();
        let mut deregister = Vec::new();
        let mut next: Option<Instant> = None;
        let mut at = |t: Instant| next = Some(next.map_or(t, |n: Instant| n.min(t)));
        {
            let mut st = self.lock();
            let target = if st.stopping {
                0
            } else {
                set.target(st.assigned)
            } as usize;
            let on_jobs = st
                .runners
                .values()
                .filter(|r| matches!(r.phase, Phase::Busy | Phase::Exited))
                .count() as i64;
            let waiting = st.assigned - on_jobs;
            let stopping = st.stopping;

            // Timeouts.
            let mut expired = Vec::new();
            for (name, r) in st.runners.iter_mut() {
                if r.phase == Phase::Exited {
                    match after(r.since, set.exit_grace) {
                        _ if stopping => expired.push(name.clone()),
                        Some(due) if due <= now => expired.push(name.clone()),
                        Some(due) => at(due),
                        None => {}
                    }
                    continue;
                }
                // A finished runner whose process does not exit, and an idle one that never
                // took a job while jobs wait, are retired once their grace has passed.
                let retire_after = match r.phase {
                    Phase::Finished => Some((set.finish_grace, "finished but did not exit")),
                    Phase::Idle if waiting > 0 && !stopping => Some((
                        set.registration_timeout,
                        "idle past the registration timeout while jobs wait",
                    )),
                    _ => None,
                };
                let Some((grace, reason)) = retire_after else {
                    continue;
                };
                match after(r.since, grace) {
                    _ if r.backing_off(now) => at(r.retry_at.unwrap_or(now)),
                    Some(due) if due <= now => {
                        retire.push((name.clone(), r.id, r.phase, reason));
                        r.phase = Phase::Removing;
                    }
                    Some(due) => at(due),
                    None => {}
                }
            }
            for name in expired {
                if let Some(r) = st.runners.remove(&name)
                    && r.id > 0
                {
                    deregister.push((name, r.id));
                }
            }

            let capacity = st
                .runners
                .values()
                .filter(|r| r.phase.is_capacity())
                .count();
            // Runners that still hold a registration or a live process without counting as
            // capacity: together with the capacity they must stay within max_runners.
            let lingering = st
                .runners
                .values()
                .filter(|r| matches!(r.phase, Phase::Removing | Phase::Finished))
                .count();
            let room = (set.max_runners as usize).saturating_sub(capacity + lingering);
            if capacity < target && !st.stopping {
                match st.backoff_until {
                    Some(until) if until > now => at(until),
                    _ => {
                        let n = (target - capacity).min(room);
                        if n < target - capacity {
                            tracing::debug!(scale_set = %set.scale_set_name, wanted = target - capacity, room, "waiting for finishing runners before starting more");
                        }
                        for _ in 0..n {
                            let name = self.new_name(&st);
                            st.runners
                                .insert(name.clone(), Runner::new(0, Phase::Starting, now));
                            starts.push(name);
                        }
                    }
                }
            } else if capacity > target {
                let mut idle: Vec<(Instant, String)> = st
                    .runners
                    .iter()
                    .filter(|(_, r)| r.phase == Phase::Idle)
                    .map(|(n, r)| (r.since, n.clone()))
                    .collect();
                idle.sort();
                let mut excess = capacity - target;
                for (since, name) in idle {
                    if excess == 0 {
                        break;
                    }
                    let stopping = st.stopping;
                    let Some(r) = st.runners.get_mut(&name) else {
                        continue;
                    };
                    if r.backing_off(now) {
                        at(r.retry_at.unwrap_or(now));
                        continue;
                    }
                    match after(since, set.idle_delay) {
                        _ if stopping => {}
                        Some(due) if due <= now => {}
                        Some(due) => {
                            at(due);
                            continue;
                        }
                        None => continue,
                    }
                    r.phase = Phase::Removing;
                    retire.push((name, r.id, Phase::Idle, "idle above the target"));
                    excess -= 1;
                }
            }
            let managed = st
                .runners
                .values()
                .filter(|r| r.phase.is_capacity())
                .count();
            self.metrics.set_managed(managed);
            if !starts.is_empty() || !retire.is_empty() {
                tracing::debug!(
                    scale_set = %set.scale_set_name,
                    assigned = st.assigned,
                    target,
                    capacity,
                    starting = starts.len(),
                    retiring = retire.len(),
                    "reconciling"
                );
            }
        }
        for name in starts {
            let s = self.clone();
            self.tasks
                .spawn(async move { s.start_runner(name).await }.in_current_span());
        }
        for (name, id) in deregister {
            let s = self.clone();
            self.tasks.spawn(
                async move {
                    s.deregister_retrying(&name, id).await;
                }
                .in_current_span(),
            );
        }
        for (name, id, back_to, reason) in retire {
            let s = self.clone();
            self.tasks.spawn(
                async move { s.retire_runner(name, id, back_to, reason).await }.in_current_span(),
            );
        }
        self.changed.notify_waiters();
        next
    }

    async fn start_runner(self: Arc<Self>, name: String) {
        let ss = &self.settings.scale_set_name;
        let Ok(permit) = self.starts.acquire().await else {
            return;
        };
        if self.lock().stopping {
            self.lock().runners.remove(&name);
            self.touched();
            return;
        }
        if let Err(e) = self.provisioner.reserve(&name).await {
            self.start_failed(&name, 0, &format!("could not record the runner: {e}"))
                .await;
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
            Ok(jit) if !jit.encoded_jit_config.is_empty() => jit,
            Ok(jit) => {
                self.start_failed(
                    &name,
                    jit.runner.id,
                    "the service returned an empty JIT config",
                )
                .await;
                return;
            }
            Err(e) => {
                let id = if matches!(e, ApiError::RunnerExists(_)) {
                    // A retried mint may have registered it already: clean it up.
                    match self.client.get_runner_by_name(&name).await {
                        Ok(Some(r)) => r.id,
                        _ => 0,
                    }
                } else {
                    0
                };
                self.start_failed(&name, id, &format!("could not mint a JIT config: {e}"))
                    .await;
                return;
            }
        };
        let id = jit.runner.id;
        if let Some(r) = self.lock().runners.get_mut(&name) {
            r.id = id;
        }
        let spec = RunnerSpec {
            name: name.clone(),
            runner_id: id,
            jit_config: jit.encoded_jit_config,
        };
        if let Err(e) = self.provisioner.create(spec).await {
            self.start_failed(
                &name,
                id,
                &format!("the provisioner could not start it: {e}"),
            )
            .await;
            return;
        }
        let stopping = {
            let mut st = self.lock();
            st.start_failures = 0;
            st.backoff_until = None;
            let stopping = st.stopping;
            if let Some(r) = st.runners.get_mut(&name)
                && r.phase == Phase::Starting
            {
                r.phase = if stopping {
                    Phase::Removing
                } else {
                    Phase::Idle
                };
                r.since = Instant::now();
            }
            stopping
        };
        tracing::info!(scale_set = %ss, runner = %name, runner_id = id, "runner started");
        self.touched();
        drop(permit);
        if stopping {
            self.retire_runner(name, id, Phase::Idle, "started during shutdown")
                .await;
        }
    }

    async fn start_failed(&self, name: &str, id: i64, why: &str) {
        let ss = &self.settings.scale_set_name;
        self.metrics.provisioning_failed();
        let delay = {
            let mut st = self.lock();
            st.runners.remove(name);
            st.failures_total += 1;
            st.start_failures += 1;
            let delay = backoff(st.start_failures - 1);
            st.backoff_until = Some(deadline_in(delay));
            delay
        };
        tracing::warn!(scale_set = %ss, runner = %name, error = why, retry_in_ms = delay.as_millis() as u64, "could not start a runner");
        let gone = id <= 0 || matches!(self.deregister_retrying(name, id).await, Removal::Removed);
        if gone {
            self.provisioner.unreserve(name).await.ok();
        } else {
            // Keep the reservation: the next start cleans the registration up.
            tracing::warn!(scale_set = %ss, runner = %name, runner_id = id, "keeping the record of a runner whose registration could not be removed");
        }
        self.touched();
    }

    /// Removes the registration of `name` (looked up by name when `id` is 0). The one place
    /// that interprets `remove_runner`'s answer.
    async fn deregister(&self, name: &str, id: i64) -> Removal {
        let id = if id > 0 {
            id
        } else {
            match self.lookup_id(name).await {
                Ok(0) => return Removal::Removed,
                Ok(id) => id,
                Err(e) => return Removal::Failed(e),
            }
        };
        match self.client.remove_runner(id).await {
            // A runner the service no longer has is reported as removed by the client.
            Ok(_) => Removal::Removed,
            Err(ApiError::JobStillRunning(_)) => Removal::StillRunning,
            Err(e) => {
                tracing::warn!(scale_set = %self.settings.scale_set_name, runner = %name, runner_id = id, error = %e, "could not remove a runner from GitHub");
                Removal::Failed(e)
            }
        }
    }

    /// [`deregister`](Self::deregister), retrying failures with backoff for up to
    /// [`REMOVE_RETRY_BUDGET`].
    async fn deregister_retrying(&self, name: &str, id: i64) -> Removal {
        self.deregister_retrying_when(name, id, false).await
    }

    /// [`deregister_retrying`](Self::deregister_retrying); with `still_running`, a
    /// `JobStillRunning` is retried too (for a runner whose process was just killed: GitHub
    /// lets go of its job shortly).
    async fn deregister_retrying_when(&self, name: &str, id: i64, still_running: bool) -> Removal {
        let deadline = deadline_in(REMOVE_RETRY_BUDGET);
        let mut attempt = 0;
        loop {
            let r = self.deregister(name, id).await;
            let delay = backoff(attempt);
            let retry = match r {
                Removal::Failed(_) => true,
                Removal::StillRunning => still_running,
                Removal::Removed => false,
            };
            match r {
                _ if retry && Instant::now() + delay < deadline => {
                    tracing::warn!(scale_set = %self.settings.scale_set_name, runner = %name, runner_id = id, attempt = attempt + 1, retry_in_ms = delay.as_millis() as u64, "retrying the runner's removal");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                r => return r,
            }
        }
    }

    /// The id of the runner registered as `name` in this scale set (0: none).
    async fn lookup_id(&self, name: &str) -> Result<i64, ApiError> {
        Ok(match self.client.get_runner_by_name(name).await? {
            Some(r)
                if r.runner_scale_set_id == self.settings.scale_set_id
                    || r.runner_scale_set_id == 0 =>
            {
                r.id
            }
            _ => 0,
        })
    }

    /// [`lookup_id`](Self::lookup_id), retrying failures with backoff.
    async fn lookup_id_retrying(&self, name: &str) -> Result<i64, ApiError> {
        let deadline = deadline_in(REMOVE_RETRY_BUDGET);
        let mut attempt = 0;
        loop {
            match self.lookup_id(name).await {
                Err(e) if Instant::now() + backoff(attempt) < deadline => {
                    tracing::warn!(scale_set = %self.settings.scale_set_name, runner = %name, attempt = attempt + 1, error = %e, "retrying the runner's lookup");
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
                r => return r,
            }
        }
    }

    /// Retires a runner marked `Removing`: its registration goes first, and its process is
    /// stopped only once GitHub confirmed that (a runner GitHub just gave a job keeps it).
    /// On failure it returns to `back_to` (keeping its `since`) and is retried later with
    /// backoff.
    async fn retire_runner(
        self: Arc<Self>,
        name: String,
        id: i64,
        back_to: Phase,
        reason: &'static str,
    ) {
        let ss = &self.settings.scale_set_name;
        tracing::info!(scale_set = %ss, runner = %name, runner_id = id, reason, "removing runner");
        match self.deregister(&name, id).await {
            Removal::Removed => {
                if let Err(e) = self.provisioner.stop(&name).await {
                    tracing::warn!(scale_set = %ss, runner = %name, error = %e, "could not stop the runner");
                }
                self.lock().runners.remove(&name);
            }
            Removal::StillRunning => {
                tracing::info!(scale_set = %ss, runner = %name, "runner picked up a job; keeping it");
                let mut st = self.lock();
                if let Some(r) = st.runners.get_mut(&name)
                    && r.phase == Phase::Removing
                {
                    r.phase = Phase::Busy;
                    r.since = Instant::now();
                    r.retry_at = None;
                    r.remove_failures = 0;
                }
            }
            Removal::Failed(_) => {
                let mut st = self.lock();
                if let Some(r) = st.runners.get_mut(&name)
                    && r.phase == Phase::Removing
                {
                    let delay = backoff(r.remove_failures);
                    r.remove_failures += 1;
                    r.retry_at = Some(deadline_in(delay));
                    r.phase = back_to;
                    tracing::warn!(scale_set = %ss, runner = %name, retry_in_ms = delay.as_millis() as u64, "keeping the runner until its registration is removed");
                }
            }
        }
        self.touched();
    }

    async fn exit_loop(self: Arc<Self>) {
        loop {
            let exit = tokio::select! {
                () = self.cancel.cancelled() => return,
                e = self.provisioner.next_exit() => e,
            };
            match exit {
                Some(exit) => self.on_exit(exit),
                None => return,
            }
        }
    }

    fn on_exit(self: &Arc<Self>, exit: RunnerExit) {
        let ss = &self.settings.scale_set_name;
        let name = exit.name;
        let mut deregister = None;
        {
            let mut st = self.lock();
            let stopping = st.stopping;
            let Some(r) = st.runners.get_mut(&name) else {
                tracing::debug!(scale_set = %ss, runner = %name, "exit of an unknown runner");
                return;
            };
            match r.phase {
                Phase::Starting | Phase::Idle => {
                    tracing::warn!(scale_set = %ss, runner = %name, success = exit.success, "runner exited without running a job; it will be replaced if still needed");
                    deregister = Some(r.id);
                    st.runners.remove(&name);
                }
                Phase::Busy if !stopping => {
                    tracing::info!(scale_set = %ss, runner = %name, success = exit.success, "busy runner exited; waiting for its job to complete");
                    r.phase = Phase::Exited;
                    r.since = Instant::now();
                }
                Phase::Exited => {}
                Phase::Removing => {
                    st.runners.remove(&name);
                }
                Phase::Busy | Phase::Finished => {
                    // Ephemeral runners are deregistered by the service after their job;
                    // make sure (a 204 when it is already gone).
                    tracing::debug!(scale_set = %ss, runner = %name, success = exit.success, "runner exited");
                    deregister = Some(r.id);
                    st.runners.remove(&name);
                }
            }
        }
        if let Some(id) = deregister.filter(|id| *id > 0) {
            let s = self.clone();
            self.tasks.spawn(
                async move {
                    s.deregister_retrying(&name, id).await;
                }
                .in_current_span(),
            );
        }
        self.touched();
    }
}

impl<P: Provisioner> Scaler for Engine<P> {
    async fn handle_desired_runner_count(&self, count: i64) -> Result<i64, BoxError> {
        let s = &self.shared;
        let target = {
            let mut st = s.lock();
            if st.assigned != count {
                tracing::debug!(scale_set = %s.settings.scale_set_name, assigned = count, "demand changed");
            }
            st.assigned = count.max(0);
            if st.stopping {
                0
            } else {
                s.settings.target(st.assigned)
            }
        };
        s.touched();
        Ok(i64::from(target))
    }

    async fn handle_job_started(&self, job: &JobStarted) -> Result<(), BoxError> {
        let s = &self.shared;
        let ss = &s.settings.scale_set_name;
        let key = format!(
            "{}/{}/{}",
            job.base.runner_request_id, job.base.job_id, job.runner_name
        );
        let first = {
            let mut st = s.lock();
            let first = st.seen_started.insert(key);
            match st.runners.get_mut(&job.runner_name) {
                Some(r) => match r.phase {
                    Phase::Starting | Phase::Idle | Phase::Removing => {
                        r.phase = Phase::Busy;
                        r.since = Instant::now();
                        if r.id == 0 {
                            r.id = job.runner_id;
                        }
                    }
                    Phase::Busy | Phase::Exited | Phase::Finished => {}
                },
                None => {
                    tracing::debug!(scale_set = %ss, runner = %job.runner_name, "job started on a runner this engine does not manage")
                }
            }
            first
        };
        if first {
            s.metrics.job_started(job);
            tracing::info!(scale_set = %ss, runner = %job.runner_name, job_id = %job.base.job_id, job = %job.base.job_display_name, "job started");
        }
        s.touched();
        Ok(())
    }

    async fn handle_job_completed(&self, job: &JobCompleted) -> Result<(), BoxError> {
        let s = &self.shared;
        let ss = &s.settings.scale_set_name;
        let key = format!(
            "{}/{}/{}/{}",
            job.base.runner_request_id, job.base.job_id, job.runner_name, job.result
        );
        let first = {
            let mut st = s.lock();
            let first = st.seen_completed.insert(key);
            if !job.runner_name.is_empty() {
                match st.runners.get(&job.runner_name).map(|r| r.phase) {
                    Some(Phase::Exited) => {
                        st.runners.remove(&job.runner_name);
                    }
                    Some(Phase::Starting | Phase::Idle | Phase::Busy) => {
                        if let Some(r) = st.runners.get_mut(&job.runner_name) {
                            r.phase = Phase::Finished;
                            r.since = Instant::now();
                        }
                    }
                    Some(Phase::Finished | Phase::Removing) => {}
                    None => {
                        tracing::debug!(scale_set = %ss, runner = %job.runner_name, "job completed on a runner this engine does not manage")
                    }
                }
            }
            first
        };
        if first {
            s.metrics.job_completed(job);
            tracing::info!(scale_set = %ss, runner = %job.runner_name, job_id = %job.base.job_id, result = %job.result, "job completed");
        }
        s.touched();
        Ok(())
    }
}
