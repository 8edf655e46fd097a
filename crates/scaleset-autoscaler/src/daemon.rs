//! Runs several scale sets in one process: for each, get-or-create the scale set (and
//! reconcile its labels), clean up what a previous run left, start the engine, open the
//! message session (waiting as a hot standby while another instance holds it), run the
//! listener, and on cancellation apply the shutdown policy. Scale sets with the same config
//! URL share one [`Client`].
//!
//! A daemon with thousands of scale sets does not open them all at once: each waits a random
//! part of a short spread (1 ms per scale set, at most [`MAX_SETUP_SPREAD`]) and its set-up
//! calls (get or create, open the session, look for leftovers) go through a [`SetupGate`] of
//! [`SETUP_CONCURRENCY`] permits, so the service sees a bounded stream of requests instead of
//! a stampede, and the connections of the set-up are reused instead of opened one per scale
//! set. Waits that can last (a hot standby's wait for the session, for the work directory's
//! lock, a retry's backoff) hold no permit.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use actions_scaleset::{
    Client, ConflictPolicy, DEFAULT_RUNNER_GROUP, DEFAULT_RUNNER_GROUP_ID, Label, Listener,
    ListenerConfig, RunnerScaleSet, RunnerScaleSetUpdate, RunnerSetting,
};
use prometheus_client::registry::Registry;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::{Config, ScaleSetConfig, ShutdownPolicy};
use crate::engine::{Engine, EngineSettings, Recovery};
use crate::error::{Error, ProvisionError, Result};
use crate::leader::Leading;
use crate::metrics::{Metrics, ScaleSetLabels, ScaleSetMetrics};
use crate::provisioner::any::AnyProvisioner;
use crate::provisioner::{Provisioner, ScaleSetIdentity};
use crate::server::{self, Readiness, ReadinessSlot};

/// The name this instance records on what its provisioners create: `SCALESET_INSTANCE`,
/// else the host name (a pod's name on Kubernetes), else `scaleset`.
pub fn instance_name() -> String {
    std::env::var("SCALESET_INSTANCE")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .or_else(|| {
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "scaleset".to_string())
}

/// Gets or creates a scale set by name in its runner group and reconciles its labels.
///
/// # Errors
/// When the runner group does not exist or a call fails.
pub async fn get_or_create_scale_set(
    client: &Client,
    cfg: &ScaleSetConfig,
) -> Result<RunnerScaleSet> {
    let group_id = if cfg.runner_group.eq_ignore_ascii_case(DEFAULT_RUNNER_GROUP) {
        DEFAULT_RUNNER_GROUP_ID
    } else {
        client.get_runner_group_by_name(&cfg.runner_group).await?.id
    };
    let labels: Vec<Label> = cfg
        .effective_labels()
        .into_iter()
        .map(Label::system)
        .collect();
    let wanted = label_set(&labels);
    let got = match client.get_runner_scale_set(group_id, &cfg.name).await? {
        Some(existing) => {
            let have = label_set(&existing.labels);
            if have == wanted {
                tracing::info!(id = existing.id.get(), labels = %label_list(&existing.labels), "adopted the existing scale set");
                existing
            } else {
                tracing::info!(
                    id = existing.id.get(),
                    had = %label_list(&existing.labels),
                    labels = %label_list(&labels),
                    "updating the scale set's labels"
                );
                client
                    .update_runner_scale_set(
                        existing.id,
                        &RunnerScaleSetUpdate {
                            labels: Some(labels.clone()),
                            ..Default::default()
                        },
                    )
                    .await?
            }
        }
        None => {
            let created = client
                .create_runner_scale_set(&RunnerScaleSet {
                    name: cfg.name.clone(),
                    runner_group_id: group_id,
                    labels: labels.clone(),
                    runner_setting: RunnerSetting {
                        disable_update: true,
                    },
                    ..Default::default()
                })
                .await?;
            tracing::info!(id = created.id.get(), labels = %label_list(&created.labels), "created the scale set");
            created
        }
    };
    if label_set(&got.labels) != wanted {
        tracing::warn!(
            asked = %label_list(&labels),
            got = %label_list(&got.labels),
            "the service kept other labels than asked for (a GHES without custom labels?)"
        );
    }
    Ok(got)
}

/// Label names compared as the service does: ignoring case and order.
fn label_set(labels: &[Label]) -> BTreeSet<String> {
    labels.iter().map(|l| l.name.to_lowercase()).collect()
}

/// Label names for a log line: `linux,x64` (one word, so `key=value` stays readable).
fn label_list(labels: &[Label]) -> String {
    labels
        .iter()
        .map(|l| l.name.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// How many scale sets of one daemon make their set-up calls at once.
pub const SETUP_CONCURRENCY: usize = 64;

/// The longest a scale set waits before its first set-up call (the spread of a large fleet).
pub const MAX_SETUP_SPREAD: Duration = Duration::from_secs(2);

/// Bounds the scale sets of a daemon that set up at once and spreads their starts; see the
/// [module docs](self).
#[derive(Debug)]
pub struct SetupGate {
    permits: Semaphore,
    spread: Duration,
}

impl SetupGate {
    /// A gate of `concurrency` permits (at least one) whose scale sets start within `spread`.
    pub fn new(concurrency: usize, spread: Duration) -> SetupGate {
        SetupGate {
            permits: Semaphore::new(concurrency.max(1)),
            spread,
        }
    }

    /// The gate of a daemon with `scale_sets` scale sets: [`SETUP_CONCURRENCY`] permits, a
    /// spread of 1 ms per scale set up to [`MAX_SETUP_SPREAD`].
    pub fn for_fleet(scale_sets: usize) -> SetupGate {
        let spread = Duration::from_millis(u64::try_from(scale_sets).unwrap_or(u64::MAX));
        SetupGate::new(SETUP_CONCURRENCY, spread.min(MAX_SETUP_SPREAD))
    }

    /// Waits `jitter` (in `0..=1`) of the spread; `false` when `cancel` fired first.
    pub async fn stagger(&self, jitter: f64, cancel: &CancellationToken) -> bool {
        let delay = self.spread.mul_f64(jitter.clamp(0.0, 1.0));
        tokio::select! {
            () = cancel.cancelled() => false,
            () = tokio::time::sleep(delay) => true,
        }
    }

    /// Takes a permit for a set-up call; `None` when `cancel` fired first.
    pub async fn enter(&self, cancel: &CancellationToken) -> Option<SemaphorePermit<'_>> {
        tokio::select! {
            () = cancel.cancelled() => None,
            // The semaphore is never closed.
            p = self.permits.acquire() => p.ok(),
        }
    }
}

/// Runs every scale set of `config` until `shutdown` fires (then applies each one's shutdown
/// policy) or one fails. `make_client` builds the client of a config URL (called once per
/// distinct URL).
///
/// # Errors
/// The first scale set failure (a bad runner group, refused credentials, ...).
pub async fn run(
    config: Config,
    make_client: impl Fn(&str) -> Result<Client>,
    shutdown: CancellationToken,
) -> Result<()> {
    config.validate()?;
    crate::limits::prepare(config.scale_sets.len());
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    let readiness = Arc::new(Readiness::new(Duration::from_secs(
        config.metrics.poll_window_secs,
    )));
    let mut clients: HashMap<String, Client> = HashMap::new();
    let mut sets = Vec::new();
    for (i, s) in config.scale_sets.iter().enumerate() {
        let url = config
            .url_of(i)
            .ok_or_else(|| Error::config(format!("scale_set[{i}].url"), "missing"))?
            .to_string();
        let client = match clients.get(&url) {
            Some(c) => c.clone(),
            None => {
                let c = make_client(&url)?;
                clients.insert(url.clone(), c.clone());
                c
            }
        };
        // Names may repeat across runner groups and URLs; the label says which one it is.
        let shared = config
            .scale_sets
            .iter()
            .filter(|o| o.name == s.name)
            .count()
            > 1;
        let label = if shared {
            format!("{} (runner group {}, {url})", s.name, s.runner_group)
        } else {
            s.name.clone()
        };
        let slot = readiness.add(label.clone());
        sets.push((s.clone(), client, slot, label));
    }
    let server_stop = CancellationToken::new();
    let (server_task, metrics_addr) = match &config.metrics.addr {
        Some(addr) => {
            let router = server::router(Arc::new(registry), readiness.clone());
            let (bound, task) = server::serve(addr, router, server_stop.clone()).await?;
            (Some(task), bound.to_string())
        }
        None => (None, "off".to_string()),
    };
    let kinds: BTreeSet<&str> = config
        .scale_sets
        .iter()
        .map(|s| s.provisioner.kind())
        .collect();
    tracing::info!(
        version = %env!("CARGO_PKG_VERSION"),
        scale_sets = config.scale_sets.len(),
        provisioner = %kinds.into_iter().collect::<Vec<_>>().join(", "),
        metrics = %metrics_addr,
        "starting the autoscaler"
    );
    // With leader election a standby waits here (serving /readyz) and touches nothing.
    let elected = match crate::leader::elect(&config, &instance_name(), &readiness, &shutdown).await
    {
        Ok(e) => e,
        Err(e) => {
            server_stop.cancel();
            return Err(e);
        }
    };
    let leading = elected.leading();
    let lost = leading.as_ref().map(|l| l.lost.clone()).unwrap_or_default();
    let gate = Arc::new(SetupGate::for_fleet(config.scale_sets.len()));
    let mut tasks = tokio::task::JoinSet::new();
    for (cfg, client, slot, label) in sets.into_iter().filter(|_| elected.proceed()) {
        let labels = ScaleSetLabels::new(&cfg.name, &cfg.runner_group, client.config());
        let m = metrics.scale_set(labels);
        let readiness = readiness.clone();
        let shutdown = shutdown.clone();
        // Every line logged for this scale set, the library's listener and session included,
        // carries its name once, through this span (with its runner group and URL when
        // another entry has the same name).
        let span = tracing::info_span!("scale_set", scale_set = %label);
        let leading = leading.clone();
        let gate = gate.clone();
        tasks.spawn(
            async move {
                let r = run_scale_set(
                    cfg,
                    client,
                    m,
                    (readiness, slot),
                    shutdown.clone(),
                    leading,
                    &gate,
                )
                .await;
                if let Err(e) = &r {
                    tracing::error!(error = %e, "the scale set stopped");
                }
                r
            }
            .instrument(span),
        );
    }
    let mut first_error = None;
    let mut aborted = false;
    loop {
        let joined = tokio::select! {
            joined = tasks.join_next() => match joined {
                Some(j) => j,
                None => break,
            },
            // Lost the Lease: a scale set past its set-up stops at once by itself; one still
            // setting up is ended here.
            () = async { lost.cancelled().await; tokio::time::sleep(LOST_GRACE).await }, if !aborted => {
                aborted = true;
                tasks.abort_all();
                continue;
            }
        };
        if let Some(l) = leading.as_ref().filter(|l| l.lost.is_cancelled()) {
            first_error.get_or_insert(l.lost_error());
        }
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                // One scale set failed: stop the others gracefully too.
                shutdown.cancel();
                first_error.get_or_insert(e);
            }
            Err(e) => {
                shutdown.cancel();
                first_error
                    .get_or_insert(Error::Internal(format!("a scale set task panicked: {e}")));
            }
        }
    }
    if !lost.is_cancelled() {
        elected.release().await;
    }
    server_stop.cancel();
    if let Some(t) = server_task {
        let _ = t.await;
    }
    match first_error {
        Some(e) => Err(e),
        None => {
            tracing::info!("the autoscaler stopped");
            Ok(())
        }
    }
}

/// How long a replica that lost the Lease gives its scale sets to stop by themselves.
const LOST_GRACE: Duration = Duration::from_secs(5);

/// [`get_or_create_scale_set`], retried with capped, jittered backoff (1 s doubling to a
/// minute) while GitHub fails in a way that may pass (5xx, 429, timeouts, connection
/// failures, unreadable success answers): a daemon started during GitHub's bad minute
/// waits, not ready, and says so.
/// Configuration errors and refused credentials end it. `None` when `shutdown` fired first.
/// Each attempt holds a permit of `gate`; the backoff between them does not.
async fn set_up_retrying(
    client: &Client,
    cfg: &ScaleSetConfig,
    (readiness, slot): (&Readiness, ReadinessSlot),
    shutdown: &CancellationToken,
    gate: &SetupGate,
) -> Result<Option<RunnerScaleSet>> {
    let mut attempt: u32 = 0;
    loop {
        let Some(permit) = gate.enter(shutdown).await else {
            return Ok(None);
        };
        let got = get_or_create_scale_set(client, cfg).await;
        drop(permit);
        let e = match got {
            Ok(set) => {
                readiness.waiting(slot, None);
                return Ok(Some(set));
            }
            // A success answer whose body is unreadable (cut off, garbled by a proxy) is the
            // service's bad minute too, not a configuration error.
            Err(Error::Api(e))
                if e.is_retryable() || e.kind() == actions_scaleset::ErrorKind::Decode =>
            {
                e
            }
            Err(e) => return Err(e),
        };
        let delay = crate::engine::book::retry_backoff(attempt, rand::random::<f64>());
        attempt = attempt.saturating_add(1);
        tracing::warn!(attempt, retry_in_s = delay.as_secs_f64(), error = %e, "could not set the scale set up; GitHub may be having a bad minute, retrying (not ready meanwhile)");
        readiness.waiting(slot, Some(format!("setting the scale set up: {e}")));
        tokio::select! {
            () = shutdown.cancelled() => return Ok(None),
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// Runs one scale set until `shutdown` fires; see the [module docs](self).
///
/// Nothing touches runners before this instance holds the scale set's message session: a hot
/// standby only waits (for the session, then for the work directory's lock) and never
/// cleans up or starts runners the active instance owns. With `leading` (leader election)
/// the runners are recorded as the Lease's, so the next leader adopts them, and losing the
/// Lease stops the scale set at once, applying no shutdown policy.
///
/// # Errors
/// When the scale set cannot be set up, its listener fails for good, or its engine stops
/// unexpectedly.
///
/// Its set-up calls go through `gate` (see the [module docs](self)).
pub async fn run_scale_set(
    cfg: ScaleSetConfig,
    client: Client,
    metrics: ScaleSetMetrics,
    (readiness, slot): (Arc<Readiness>, ReadinessSlot),
    shutdown: CancellationToken,
    leading: Option<Leading>,
    gate: &SetupGate,
) -> Result<()> {
    if !gate.stagger(rand::random::<f64>(), &shutdown).await {
        return Ok(());
    }
    let Some(set) = set_up_retrying(&client, &cfg, (&readiness, slot), &shutdown, gate).await?
    else {
        return Ok(());
    };
    tracing::debug!(id = set.id.get(), "opening the message session");
    // One attempt under the gate; a hot standby's wait for the session holds no permit.
    let first = match gate.enter(&shutdown).await {
        Some(_permit) => {
            client
                .create_message_session_client_waiting(
                    set.id,
                    None,
                    ConflictPolicy::Fail,
                    &shutdown,
                )
                .await
        }
        None => return Ok(()),
    };
    let created = match first {
        Err(actions_scaleset::Error::SessionConflict(_)) => {
            client
                .create_message_session_client_waiting(
                    set.id,
                    None,
                    ConflictPolicy::Wait(None),
                    &shutdown,
                )
                .await
        }
        other => other,
    };
    let session = match created {
        Ok(s) => s,
        Err(actions_scaleset::Error::Cancelled) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    // From here on, the session is closed and the engine shut down on every path.
    let identity = ScaleSetIdentity {
        id: set.id,
        name: cfg.name.clone(),
        instance: leading
            .as_ref()
            .map_or_else(instance_name, |l| l.instance.clone()),
    };
    let provisioner = match AnyProvisioner::build(&cfg, identity, ScaleSetConfig::state_dir()).await
    {
        Ok(p) => {
            tracing::debug!(
                provisioner = p.kind(),
                "taking ownership of the scale set's runners"
            );
            p.acquire(&shutdown).await.map(|()| p).map_err(Error::from)
        }
        Err(e) => Err(e),
    };
    let provisioner = match provisioner {
        Ok(p) => p,
        Err(e) => {
            close_session(&session).await;
            return match e {
                Error::Provision(ProvisionError::Cancelled) => Ok(()),
                e => Err(e),
            };
        }
    };
    let settings = EngineSettings::from_config(set.id, &cfg);
    let engine = Engine::new(settings, client.clone(), provisioner, metrics.clone());
    if let Some(l) = &leading {
        engine.fence(l.fence());
    }
    let recovered = match gate.enter(&shutdown).await {
        Some(_permit) => engine.recover().await,
        // Shutting down: the listener below stops at once.
        None => Ok(Recovery::default()),
    };
    match recovered {
        Ok(r) if r == Recovery::default() => {}
        Ok(Recovery {
            adopted,
            released,
            unaccounted,
        }) => {
            tracing::info!(
                adopted,
                released,
                unaccounted,
                "taking over the runners and registrations a previous run left"
            )
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not look for leftover runners")
        }
    }
    engine.spawn();
    let lost = leading.as_ref().map(|l| l.lost.clone()).unwrap_or_default();
    let _abandon = AbandonIfLost(engine.clone(), lost.clone());
    // The listener stops on shutdown or when the engine fails.
    let stop = shutdown.child_token();
    let watchdog = {
        let engine = engine.clone();
        let stop = stop.clone();
        let readiness = readiness.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = engine.failed() => {
                    readiness.fail(slot, "engine stopped");
                    stop.cancel();
                }
            }
        })
    };
    let outcome = match Listener::new(
        session.clone(),
        ListenerConfig::new(set.id, cfg.max_runners),
    ) {
        Ok(listener) => {
            let listener = listener.with_metrics(Arc::new(metrics.clone()));
            readiness.attach(slot, listener.health_handle());
            tracing::info!(id = set.id.get(), labels = %label_list(&set.labels), min = cfg.min_runners, max = cfg.max_runners, provisioner = %cfg.provisioner.kind(), "listening for jobs");
            // `run` deletes the session before it returns.
            tokio::select! {
                r = listener.run(&engine, &stop) => r.map_err(Error::from),
                () = lost.cancelled() => {
                    // No more acknowledged messages, no more pods; the session goes so the
                    // new leader gets it without waiting for it to expire.
                    engine.abandon();
                    stop.cancel();
                    let _ = tokio::time::timeout(LOST_GRACE, session.close()).await;
                    let _ = watchdog.await;
                    return Err(leading.map_or_else(|| Error::Internal("lost a lease never held".into()), |l| l.lost_error()));
                }
            }
        }
        Err(e) => {
            close_session(&session).await;
            Err(e.into())
        }
    };
    stop.cancel();
    let _ = watchdog.await;
    let outcome = match (outcome, engine.failure()) {
        (Ok(()), Some(why)) => Err(Error::Engine {
            scale_set: cfg.name.clone(),
            message: why,
        }),
        (outcome, _) => outcome,
    };
    // The engine logs what it stopped and what it left.
    let policy = stop_policy(cfg.shutdown, leading.is_some());
    if policy != cfg.shutdown {
        tracing::info!(
            configured = %cfg.shutdown,
            "handing over: idle runners stop, busy ones are left to the next leader, which \
             adopts them; the Lease is given up without waiting for a drain"
        );
    }
    let left = engine.shutdown(policy, cfg.drain_timeout()).await;
    if cfg.shutdown == ShutdownPolicy::Delete {
        if !left.is_empty() {
            tracing::warn!(
                id = set.id.get(),
                left = left.len(),
                "deleting the scale set although runner registrations remain"
            );
        }
        match client.delete_runner_scale_set(set.id).await {
            Ok(()) => tracing::info!(id = set.id.get(), "deleted the scale set"),
            Err(e) => {
                tracing::warn!(error = %e, "could not delete the scale set")
            }
        }
    } else if outcome.is_ok() {
        tracing::info!(id = set.id.get(), policy = %cfg.shutdown, "stopped; the scale set stays registered for the next start");
    }
    outcome
}

/// The policy a graceful stop applies. With leader election a stop is a handover: the
/// session is already gone, so a standby takes the scale set as soon as the Lease is free;
/// waiting for busy runners (`drain`) would only hold the Lease while new jobs wait. Idle
/// runners stop (a successor starts its own); busy ones run on, recorded as the Lease's, and
/// the next leader adopts them and cleans up after their jobs. `delete` is refused with
/// leader election when the configuration is validated.
fn stop_policy(configured: ShutdownPolicy, leading: bool) -> ShutdownPolicy {
    if leading {
        ShutdownPolicy::Keep
    } else {
        configured
    }
}

/// Abandons the engine (see [`Engine::abandon`]) when dropped after the Lease was lost: a
/// scale set ended while setting up leaves its engine's tasks running otherwise.
struct AbandonIfLost(Engine<AnyProvisioner>, CancellationToken);

impl Drop for AbandonIfLost {
    fn drop(&mut self) {
        if self.1.is_cancelled() {
            self.0.abandon();
        }
    }
}

async fn close_session(session: &actions_scaleset::MessageSessionClient) {
    if let Err(e) = session.close().await {
        tracing::warn!(error = %e, "could not delete the message session");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn the_spread_grows_with_the_fleet_up_to_its_cap() {
        assert_eq!(SetupGate::for_fleet(1).spread, Duration::from_millis(1));
        assert_eq!(SetupGate::for_fleet(500).spread, Duration::from_millis(500));
        assert_eq!(SetupGate::for_fleet(10_000).spread, MAX_SETUP_SPREAD);
        assert_eq!(
            SetupGate::for_fleet(1).permits.available_permits(),
            SETUP_CONCURRENCY
        );
        assert_eq!(
            SetupGate::new(0, Duration::ZERO)
                .permits
                .available_permits(),
            1
        );
    }

    /// A thousand scale sets set up through the gate: never more than its permits at once,
    /// all of them within the spread, every one done.
    #[tokio::test(start_paused = true)]
    async fn the_gate_bounds_concurrent_set_ups() {
        let gate = Arc::new(SetupGate::new(8, Duration::from_millis(100)));
        let cancel = CancellationToken::new();
        let (now, most, done) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
        );
        let started = tokio::time::Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..1_000u32 {
            let (gate, cancel) = (gate.clone(), cancel.clone());
            let (now, most, done) = (now.clone(), most.clone(), done.clone());
            tasks.spawn(async move {
                assert!(gate.stagger(f64::from(i) / 1_000.0, &cancel).await);
                let _permit = gate.enter(&cancel).await.expect("not cancelled");
                let inside = now.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(inside, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
                now.fetch_sub(1, Ordering::SeqCst);
                done.fetch_add(1, Ordering::SeqCst);
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.expect("no task panicked");
        }
        assert_eq!(done.load(Ordering::SeqCst), 1_000);
        assert_eq!(most.load(Ordering::SeqCst), 8);
        // 1,000 set-ups of 10 ms, 8 at a time, take at least 1.25 s of (paused) time.
        assert!(started.elapsed() >= Duration::from_millis(1_250));
    }

    #[tokio::test(start_paused = true)]
    async fn cancellation_ends_the_waits() {
        let gate = SetupGate::new(1, Duration::from_secs(3_600));
        let cancel = CancellationToken::new();
        let held = gate.enter(&cancel).await.expect("a free permit");
        cancel.cancel();
        assert!(gate.enter(&cancel).await.is_none());
        assert!(!gate.stagger(1.0, &cancel).await);
        drop(held);
    }
}
