//! The Docker provisioner (cargo feature `docker`): one container per runner on a Docker
//! engine, through [bollard].
//!
//! * **Engine.** [`DockerProvisioner::connect`] reaches the engine named by `DOCKER_HOST`
//!   (`unix://`, `tcp://`, `https://`; `DOCKER_TLS_VERIFY`/`DOCKER_CERT_PATH` for TLS, as
//!   bollard supports them), else the default socket `/var/run/docker.sock`, negotiates the
//!   API version down to the engine's and pings it.
//! * **Containers.** Each runner is a container named after the runner, from
//!   [`DockerSettings::image`]. When [`DockerSettings::command`] is given it becomes the
//!   container's entrypoint and [`DockerSettings::args`] its command (`Entrypoint =
//!   [command]`, `Cmd = args`), so an image's own entrypoint never wraps it; without a
//!   command, non-empty `args` replace the image's `Cmd` and its entrypoint stays. `user`,
//!   `working_dir`, `network` (`NetworkMode`: `host`, a user-defined network), `cpus`
//!   (`NanoCpus`), `memory_mb` (`Memory`) and `stop_timeout_secs` map to the container
//!   settings of the same meaning.
//! * **Environment.** A container gets the JIT config in [`JIT_CONFIG_ENV`],
//!   [`VERSION_DEPRECATED_ENV`]`=1`, and the daemon's variables named in
//!   [`DockerSettings::env`] (when set); nothing else of the daemon's environment. The JIT
//!   config is never in a label, the name, a log line, an error or `Debug` output.
//! * **Labels.** [`LABEL_SCALE_SET_ID`], [`LABEL_SCALE_SET_NAME`], [`LABEL_INSTANCE`] and
//!   [`LABEL_RUNNER_ID`] (plus [`DockerSettings::labels`]) mark a container as this scale
//!   set's and this instance's, so [`list`](Provisioner::list) finds them after a restart and
//!   nothing else is ever touched.
//! * **Pulling** follows [`DockerSettings::pull`] (Docker's words): `never` with a missing
//!   image, or a failed pull, is one [`RunnerEvent::FailedToStart`] with Docker's message,
//!   never retried here. When the image is already there (`missing`, `never`),
//!   [`create`](Provisioner::create) creates and starts the container before it returns (an
//!   error creating it is `create`'s error; a start the engine refuses, such as a command
//!   missing from the image, is a `FailedToStart`). When a pull is needed (`always`, or
//!   `missing` without the image) `create` returns at once and a task pulls, creates and
//!   starts the container, reporting [`RunnerEvent::Running`] or `FailedToStart`: a slow pull
//!   never holds up the engine. [`list`](Provisioner::list) shows such a runner as
//!   [`RunnerState::Pending`].
//! * **Exits** come from the engine's event stream, filtered by this instance's labels
//!   (`die`, `oom`, `destroy`): on `die` the container is inspected for its exit code and
//!   `OOMKilled`, giving [`RunnerEvent::Exited`]; a container removed behind our back is
//!   [`RunnerEvent::Vanished`]. When the stream breaks (an engine restart) it is reconnected
//!   with backoff, replaying from the last event seen, and every followed runner is
//!   inspected again; the same resync runs every [`RESYNC`] as a safety net. Each runner has
//!   one record, removed with its terminal event, so nothing is reported twice. An ended
//!   runner's container is removed (with its anonymous volumes) *before* its terminal event
//!   is reported, so a daemon that drains and exits leaves no container behind.
//! * **Ownership** is per Docker host: [`acquire`](Provisioner::acquire) takes a
//!   [`HostLock`] on the lock file given to `connect`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actions_scaleset::RunnerId;
use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::{ContainerCreateBody, ContainerSummaryStateEnum, EventMessage, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, EventsOptions, InspectContainerOptions,
    ListContainersOptions, RemoveContainerOptions, StartContainerOptions, StopContainerOptions,
};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::ownership::HostLock;
use super::{
    ExitStatus, JIT_CONFIG_ENV, OwnedRunner, Provisioner, ProvisionerEvent, RunnerEvent,
    RunnerSpec, RunnerState, ScaleSetIdentity, VERSION_DEPRECATED_ENV,
};
use crate::config::provisioner::{DockerSettings, OWN_LABEL_PREFIX, PullPolicy};
use crate::error::ProvisionError;

const BACKEND: &str = "docker";

/// Label holding the scale set id.
pub const LABEL_SCALE_SET_ID: &str = "dev.scaleset.scale-set-id";
/// Label holding the scale set name.
pub const LABEL_SCALE_SET_NAME: &str = "dev.scaleset.scale-set-name";
/// Label holding the owning instance ([`ScaleSetIdentity::instance`]).
pub const LABEL_INSTANCE: &str = "dev.scaleset.instance";
/// Label holding the runner id GitHub assigned.
pub const LABEL_RUNNER_ID: &str = "dev.scaleset.runner-id";

/// How often followed runners are inspected again even when the event stream looks fine.
pub const RESYNC: Duration = Duration::from_secs(30);

/// How long `connect` waits for the engine to answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// How often, and how far apart, a SIGKILLed container is inspected again for a late
/// `OOMKilled`.
const LATE_OOM_TRIES: u32 = 5;
const LATE_OOM_WAIT: Duration = Duration::from_millis(200);

/// After how many failed tries removing an ended runner's container is warned about, and
/// the first pause between two tries.
const REMOVE_TRIES: u32 = 3;
const REMOVE_RETRY: Duration = Duration::from_millis(500);
/// The longest wait between two tries of a removal while the engine does not answer.
const REMOVE_RETRY_MAX: Duration = Duration::from_secs(10);
/// How long an ended runner's container removal is retried while the engine does not answer
/// (a restart of the Docker engine takes seconds); the runner's terminal event waits for it,
/// so the engine's books keep counting a container that still exists.
const REMOVE_DEADLINE: Duration = Duration::from_secs(120);

/// The longest wait between two reconnection attempts of the event stream.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// What a followed runner is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Being pulled, created or started.
    Pending,
    /// Started (or adopted while running).
    Running,
}

/// One followed runner: created or adopted here, no terminal event yet.
struct Tracked {
    runner_id: RunnerId,
    phase: Phase,
    /// Fired by `stop`: a pending runner is never started (a pull in progress is dropped).
    cancel: CancellationToken,
    /// Held while the runner is being pulled/created/started; event handling and `stop`
    /// wait for it, so `Running` always comes before the terminal event.
    gate: Arc<tokio::sync::Mutex<()>>,
}

struct Inner {
    docker: Docker,
    settings: DockerSettings,
    identity: ScaleSetIdentity,
    lock_path: PathBuf,
    lock: Mutex<Option<HostLock>>,
    runners: Mutex<HashMap<String, Tracked>>,
    events_tx: mpsc::UnboundedSender<ProvisionerEvent>,
    events_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<ProvisionerEvent>>,
    /// Cancelled when the last handle goes: ends the event watcher.
    shutdown: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The Docker provisioner. Clones share their state; dropping the last one stops following
/// the engine's events and leaves the containers alone.
#[derive(Clone)]
pub struct DockerProvisioner {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for DockerProvisioner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The settings hold only variable names, but keep `Debug` to what identifies it.
        f.debug_struct("DockerProvisioner")
            .field("identity", &self.inner.identity)
            .field("image", &self.inner.settings.image)
            .field("pull", &self.inner.settings.pull)
            .field("lock_path", &self.inner.lock_path)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Docker's own words for an error, without bollard's wrapping when it has some.
fn docker_message(e: &DockerError) -> String {
    match e {
        DockerError::DockerResponseServerError { message, .. } if !message.is_empty() => {
            message.clone()
        }
        DockerError::DockerStreamError { error } => error.clone(),
        other => other.to_string(),
    }
}

fn is_not_found(e: &DockerError) -> bool {
    matches!(
        e,
        DockerError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// A backend error about `what` (naming the container or image) with Docker's message.
fn backend_error(what: &str, e: &DockerError) -> ProvisionError {
    ProvisionError::backend(BACKEND, format!("{what}: {}", docker_message(e)))
}

/// `text` with every occurrence of `secret` replaced (an engine message that echoed a
/// request must not carry the JIT config anywhere).
fn redact(text: String, secret: &str) -> String {
    if secret.is_empty() || !text.contains(secret) {
        text
    } else {
        text.replace(secret, "[redacted]")
    }
}

/// Where the engine is looked for, for error messages.
fn engine_address() -> String {
    match std::env::var("DOCKER_HOST") {
        Ok(h) if !h.is_empty() => format!("DOCKER_HOST={h}"),
        _ => "the default socket unix:///var/run/docker.sock (DOCKER_HOST is not set)".into(),
    }
}

/// The exit code from a container list's status text (`Exited (3) 5 seconds ago`).
fn exit_code_of_status(status: &str) -> Option<i32> {
    let rest = status.strip_prefix("Exited (")?;
    rest[..rest.find(')')?].parse().ok()
}

/// `now` as Docker's `since` parameter, `secs` back.
fn docker_time(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
}

/// The container's configuration for `spec` under `s` for `identity`; `lookup` reads the
/// daemon's environment.
fn container_body(
    s: &DockerSettings,
    identity: &ScaleSetIdentity,
    spec: &RunnerSpec,
    lookup: impl Fn(&str) -> Option<String>,
) -> ContainerCreateBody {
    let mut env: Vec<String> = Vec::new();
    for name in &s.env {
        if name == JIT_CONFIG_ENV || name == VERSION_DEPRECATED_ENV {
            continue;
        }
        if let Some(v) = lookup(name) {
            env.push(format!("{name}={v}"));
        }
    }
    env.push(format!("{VERSION_DEPRECATED_ENV}=1"));
    env.push(format!(
        "{JIT_CONFIG_ENV}={}",
        spec.jit_config.expose_secret()
    ));
    let mut labels: HashMap<String, String> = s
        .labels
        .iter()
        .filter(|(k, _)| !k.starts_with(OWN_LABEL_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let own = [
        (LABEL_SCALE_SET_ID, identity.id.to_string()),
        (LABEL_SCALE_SET_NAME, identity.name.clone()),
        (LABEL_INSTANCE, identity.instance.clone()),
        (LABEL_RUNNER_ID, spec.runner_id.to_string()),
    ];
    for (k, v) in own {
        labels.insert(k.to_string(), v);
    }
    let (entrypoint, cmd) = match &s.command {
        Some(c) => (Some(vec![c.clone()]), Some(s.args.clone())),
        None if !s.args.is_empty() => (None, Some(s.args.clone())),
        None => (None, None),
    };
    ContainerCreateBody {
        image: Some(s.image.clone()),
        entrypoint,
        cmd,
        user: s.user.clone(),
        working_dir: s.working_dir.clone(),
        env: Some(env),
        labels: Some(labels),
        stop_timeout: i64::try_from(s.stop_timeout_secs).ok(),
        host_config: Some(HostConfig {
            network_mode: s.network.clone(),
            nano_cpus: s.cpus.map(|c| (c * 1e9).round() as i64),
            memory: s
                .memory_mb
                .and_then(|m| m.checked_mul(1024 * 1024))
                .and_then(|b| i64::try_from(b).ok()),
            auto_remove: Some(false),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Connects to the Docker engine named by `DOCKER_HOST` (TLS per
/// `DOCKER_TLS_VERIFY`/`DOCKER_CERT_PATH`), else the default socket
/// `/var/run/docker.sock`, negotiates the API version down to the engine's and pings it
/// (waiting at most 30 s).
///
/// # Errors
/// [`ProvisionError::Backend`] naming `DOCKER_HOST` or the default socket when no engine
/// answers.
pub async fn connect_engine() -> Result<Docker, ProvisionError> {
    let unreachable = |why: String| {
        ProvisionError::backend(
            BACKEND,
            format!("no Docker engine answers at {}: {why}", engine_address()),
        )
    };
    let docker = Docker::connect_with_defaults().map_err(|e| unreachable(e.to_string()))?;
    tokio::time::timeout(CONNECT_TIMEOUT, async {
        let docker = docker.negotiate_version().await?;
        docker.ping().await?;
        Ok::<_, DockerError>(docker)
    })
    .await
    .map_err(|_| unreachable(format!("no answer within {}s", CONNECT_TIMEOUT.as_secs())))?
    .map_err(|e| unreachable(docker_message(&e)))
}

impl DockerProvisioner {
    /// Connects to the Docker engine (see the [module docs](self)) for the scale set
    /// `identity`, owning nothing yet: [`acquire`](Provisioner::acquire) takes the scale
    /// set's key (`docker-ID`) in the lock file `lock_path`. Starts following the engine's
    /// events.
    ///
    /// # Errors
    /// [`ProvisionError::Backend`] naming `DOCKER_HOST` or the default socket when no engine
    /// answers.
    pub async fn connect(
        settings: DockerSettings,
        identity: ScaleSetIdentity,
        lock_path: PathBuf,
    ) -> Result<DockerProvisioner, ProvisionError> {
        let docker = connect_engine().await?;
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            docker,
            settings,
            identity,
            lock_path,
            lock: Mutex::new(None),
            runners: Mutex::new(HashMap::new()),
            events_tx,
            events_rx: tokio::sync::Mutex::new(events_rx),
            shutdown: CancellationToken::new(),
        });
        let weak = Arc::downgrade(&inner);
        let shutdown = inner.shutdown.clone();
        tokio::spawn(watch_events(weak, shutdown).in_current_span());
        Ok(DockerProvisioner { inner })
    }

    /// The engine client (for tests and diagnostics).
    pub fn docker(&self) -> &Docker {
        &self.inner.docker
    }

    /// Docker label filters selecting this scale set's and instance's containers.
    fn label_filters(&self) -> Vec<String> {
        let id = &self.inner.identity;
        vec![
            format!("{LABEL_SCALE_SET_ID}={}", id.id),
            format!("{LABEL_INSTANCE}={}", id.instance),
        ]
    }

    /// Whether `labels` mark a container as ours.
    fn is_ours(&self, labels: Option<&HashMap<String, String>>) -> bool {
        let Some(labels) = labels else {
            return false;
        };
        let id = &self.inner.identity;
        labels.get(LABEL_SCALE_SET_ID) == Some(&id.id.to_string())
            && labels.get(LABEL_INSTANCE) == Some(&id.instance)
    }

    fn send(&self, name: &str, event: RunnerEvent) {
        let _ = self
            .inner
            .events_tx
            .send(ProvisionerEvent::new(name, event));
    }

    /// Reports the terminal `event` of `name` if it is still followed (once: the record
    /// goes with it). When `remove` says so its container is removed first, and the event
    /// follows the removal: whoever waits for the end of a runner (a drain before the
    /// daemon exits) never leaves its container behind. A removal that fails (the engine is
    /// restarting) is tried again with a growing pause for up to [`REMOVE_DEADLINE`],
    /// warning once after [`REMOVE_TRIES`] tries; past the deadline the event goes out
    /// anyway and the periodic resync or the next start releases what is left.
    fn finish(&self, name: &str, event: RunnerEvent, remove: bool) {
        if lock(&self.inner.runners).remove(name).is_none() {
            return;
        }
        tracing::debug!(runner = %name, event = ?event, "runner ended");
        if !remove {
            self.send(name, event);
            return;
        }
        let this = self.clone();
        let name = name.to_string();
        tokio::spawn(
            async move {
                let deadline = tokio::time::Instant::now() + REMOVE_DEADLINE;
                let mut pause = REMOVE_RETRY;
                for attempt in 1.. {
                    let Err(e) = this.remove(&name).await else { break };
                    if tokio::time::Instant::now() + pause > deadline {
                        tracing::warn!(runner = %name, error = %e, "could not remove the runner's container; the next resync removes it");
                        break;
                    }
                    if attempt == REMOVE_TRIES {
                        tracing::warn!(runner = %name, error = %e, "could not remove the runner's container; trying again until the Docker engine answers");
                    } else {
                        tracing::debug!(runner = %name, error = %e, attempt, "could not remove the runner's container; trying again");
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(REMOVE_RETRY_MAX);
                }
                this.send(&name, event);
            }
            .in_current_span(),
        );
    }

    /// Removes the container `name` (forcibly, with its anonymous volumes); a missing one
    /// or one already being removed is fine.
    async fn remove(&self, name: &str) -> Result<(), ProvisionError> {
        let opts = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        match self.inner.docker.remove_container(name, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(DockerError::DockerResponseServerError {
                status_code: 409, ..
            }) => Ok(()),
            Err(e) => Err(backend_error(&format!("removing container {name}"), &e)),
        }
    }

    /// The gate of a followed runner.
    fn gate(&self, name: &str) -> Option<Arc<tokio::sync::Mutex<()>>> {
        lock(&self.inner.runners)
            .get(name)
            .map(|t| Arc::clone(&t.gate))
    }

    /// Looks at a followed runner's container and reports its end if it ended: an exit
    /// (with its code and `OOMKilled`), or `Vanished` when it is gone or being removed by
    /// someone else. A running one is left alone.
    async fn check(&self, name: &str) {
        let Some(gate) = self.gate(name) else {
            return;
        };
        // Wait for a create in progress: its `Running` comes first.
        let _held = gate.lock().await;
        if lock(&self.inner.runners)
            .get(name)
            .is_none_or(|t| t.phase != Phase::Running)
        {
            return;
        }
        let inspected = self
            .inner
            .docker
            .inspect_container(name, None::<InspectContainerOptions>)
            .await;
        let info = match inspected {
            Ok(info) => info,
            Err(e) if is_not_found(&e) => return self.finish(name, RunnerEvent::Vanished, false),
            Err(e) => {
                tracing::warn!(runner = %name, error = %docker_message(&e), "could not inspect the runner's container; trying again later");
                return;
            }
        };
        let state = info.state.unwrap_or_default();
        use bollard::models::ContainerStateStatusEnum as S;
        match state.status {
            Some(S::RUNNING | S::RESTARTING | S::PAUSED | S::CREATED | S::STOPPING) => {}
            Some(S::REMOVING) => self.finish(name, RunnerEvent::Vanished, false),
            _ if state.running == Some(true) => {}
            _ => {
                let code = state.exit_code.and_then(|c| i32::try_from(c).ok());
                let oom_killed = state.oom_killed == Some(true)
                    || (code == Some(137) && self.late_oom(name).await);
                let reason = if oom_killed {
                    Some("OOMKilled".to_string())
                } else {
                    state.error.filter(|e| !e.is_empty())
                };
                self.finish(name, RunnerEvent::Exited(ExitStatus { code, reason }), true);
            }
        }
    }

    /// Whether a container killed with SIGKILL turns out OOM-killed after all: the engine
    /// may learn of the OOM kill (from the cgroup) after it reported the exit, so one with
    /// a memory limit is inspected a few more times.
    async fn late_oom(&self, name: &str) -> bool {
        if self.inner.settings.memory_mb.is_none() {
            return false;
        }
        for _ in 0..LATE_OOM_TRIES {
            tokio::time::sleep(LATE_OOM_WAIT).await;
            match self
                .inner
                .docker
                .inspect_container(name, None::<InspectContainerOptions>)
                .await
            {
                Ok(info) if info.state.as_ref().and_then(|s| s.oom_killed) == Some(true) => {
                    return true;
                }
                Ok(_) => {}
                Err(_) => return false,
            }
        }
        false
    }

    /// Handles an event of the engine's stream.
    fn on_event(&self, event: EventMessage) {
        let Some(actor) = event.actor else {
            return;
        };
        let attrs = actor.attributes.unwrap_or_default();
        let Some(name) = attrs.get("name").cloned() else {
            return;
        };
        if !lock(&self.inner.runners).contains_key(&name) {
            return;
        }
        let action = event.action.unwrap_or_default();
        // Concurrently: a check may wait for a create in progress.
        let this = self.clone();
        match action.as_str() {
            "die" | "oom" | "destroy" => {
                tokio::spawn(async move { this.check(&name).await }.in_current_span());
            }
            _ => {}
        }
    }

    /// Checks every followed running runner (after a reconnect, and periodically).
    async fn resync(&self) {
        let names: Vec<String> = lock(&self.inner.runners)
            .iter()
            .filter(|(_, t)| t.phase == Phase::Running)
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            self.check(&name).await;
        }
    }

    /// Creates and starts the container of `spec`. `Err(Ok(e))`: creating failed (nothing
    /// left); `Err(Err(reason))`: the engine refused to start it (container removed).
    async fn create_and_start(
        &self,
        spec: &RunnerSpec,
    ) -> Result<(), Result<ProvisionError, String>> {
        let name = &spec.name;
        let secret = spec.jit_config.expose_secret();
        let opts = CreateContainerOptions {
            name: Some(name.clone()),
            ..Default::default()
        };
        if let Err(e) = self
            .inner
            .docker
            .create_container(
                Some(opts),
                container_body(&self.inner.settings, &self.inner.identity, spec, |n| {
                    std::env::var(n).ok()
                }),
            )
            .await
        {
            let message = redact(docker_message(&e), secret);
            return Err(Ok(match e {
                DockerError::DockerResponseServerError {
                    status_code: 409, ..
                } => ProvisionError::AlreadyExists(name.clone()),
                _ => ProvisionError::backend(
                    BACKEND,
                    format!("creating container {name}: {message}"),
                ),
            }));
        }
        if let Err(e) = self
            .inner
            .docker
            .start_container(name, None::<StartContainerOptions>)
            .await
        {
            let message = redact(docker_message(&e), secret);
            if let Err(e) = self.remove(name).await {
                tracing::warn!(runner = %name, error = %e, "could not remove a container that did not start");
            }
            return Err(Err(format!("starting container {name}: {message}")));
        }
        Ok(())
    }

    /// Marks a started runner running and reports it; stops it when `stop` came meanwhile.
    async fn started(&self, name: &str) {
        let cancelled = {
            let mut runners = lock(&self.inner.runners);
            match runners.get_mut(name) {
                Some(t) => {
                    t.phase = Phase::Running;
                    self.send(name, RunnerEvent::Running);
                    t.cancel.is_cancelled()
                }
                None => false,
            }
        };
        tracing::debug!(runner = %name, "runner container started");
        if cancelled && let Err(e) = self.stop_container(name).await {
            tracing::warn!(runner = %name, error = %e, "could not stop a runner stopped while it started");
        }
    }

    /// Pulls the image (a failure is the runner's `FailedToStart`), then creates and starts
    /// the runner; runs in its own task holding the runner's gate.
    async fn pull_and_start(&self, spec: RunnerSpec) {
        let name = spec.name.clone();
        let image = self.inner.settings.image.clone();
        let Some(cancel) = lock(&self.inner.runners)
            .get(&name)
            .map(|t| t.cancel.clone())
        else {
            return;
        };
        let stopped = || {
            RunnerEvent::Exited(ExitStatus {
                code: None,
                reason: Some("stopped before it started".into()),
            })
        };
        tokio::select! {
            pulled = self.pull(&image) => if let Err(reason) = pulled {
                return self.finish(&name, RunnerEvent::FailedToStart { reason }, false);
            },
            () = cancel.cancelled() => return self.finish(&name, stopped(), false),
        }
        if cancel.is_cancelled() {
            return self.finish(&name, stopped(), false);
        }
        match self.create_and_start(&spec).await {
            Ok(()) => self.started(&name).await,
            Err(Ok(e)) => self.finish(
                &name,
                RunnerEvent::FailedToStart {
                    reason: e.to_string(),
                },
                false,
            ),
            Err(Err(reason)) => self.finish(&name, RunnerEvent::FailedToStart { reason }, false),
        }
    }

    /// Pulls `image`; `Err` holds Docker's message.
    async fn pull(&self, image: &str) -> Result<(), String> {
        tracing::info!(image = %image, "pulling the runner image");
        let opts = CreateImageOptions {
            from_image: Some(image.to_string()),
            ..Default::default()
        };
        let mut stream = self.inner.docker.create_image(Some(opts), None, None);
        while let Some(item) = stream.next().await {
            if let Err(e) = item {
                return Err(format!("pulling image {image}: {}", docker_message(&e)));
            }
        }
        Ok(())
    }

    /// `None` when the engine has `image`, else Docker's message saying it has not.
    async fn image_missing(&self, image: &str) -> Result<Option<String>, ProvisionError> {
        match self.inner.docker.inspect_image(image).await {
            Ok(_) => Ok(None),
            Err(e) if is_not_found(&e) => Ok(Some(docker_message(&e))),
            Err(e) => Err(backend_error(&format!("inspecting image {image}"), &e)),
        }
    }

    /// Stops the container `name` (the stop timeout, then SIGKILL); a missing or stopped
    /// one is fine. Returns once it no longer runs.
    async fn stop_container(&self, name: &str) -> Result<(), ProvisionError> {
        let timeout = i32::try_from(self.inner.settings.stop_timeout_secs).unwrap_or(i32::MAX);
        let opts = StopContainerOptions {
            t: Some(timeout),
            ..Default::default()
        };
        match self.inner.docker.stop_container(name, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            // 304: already stopped.
            Err(DockerError::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(backend_error(&format!("stopping container {name}"), &e)),
        }
    }
}

/// Follows the engine's events for `inner`'s containers until `shutdown` fires or the
/// provisioner is gone: reconnects with backoff when the stream breaks, replaying from the
/// last event seen, and resyncs the followed runners after each (re)connection and every
/// [`RESYNC`].
async fn watch_events(inner: Weak<Inner>, shutdown: CancellationToken) {
    // Replay a little from before the first subscription: a runner created while the
    // request is on its way is not missed (duplicates are harmless).
    let mut since = SystemTime::now() - Duration::from_secs(2);
    let mut backoff = Duration::from_millis(500);
    let mut broken = false;
    loop {
        let Some(this) = inner.upgrade().map(|inner| DockerProvisioner { inner }) else {
            return;
        };
        let mut filters: HashMap<String, Vec<String>> = HashMap::new();
        filters.insert("type".into(), vec!["container".into()]);
        filters.insert(
            "event".into(),
            vec!["die".into(), "oom".into(), "destroy".into()],
        );
        filters.insert("label".into(), this.label_filters());
        let opts = EventsOptions {
            since: Some(docker_time(since)),
            filters: Some(filters),
            ..Default::default()
        };
        let mut stream = this.inner.docker.events(Some(opts));
        let docker_for_ping = this.inner.docker.clone();
        drop(this);
        // The stream's request is only sent when polled: resync once it answered (or after
        // a moment), so a runner that ended while we were away is reported.
        let mut resync = tokio::time::interval_at(
            tokio::time::Instant::now() + Duration::from_millis(200),
            RESYNC,
        );
        let mut connected_logged = false;
        let ended = loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = resync.tick() => {
                    let Some(this) = inner.upgrade().map(|inner| DockerProvisioner { inner }) else {
                        return;
                    };
                    this.resync().await;
                }
                item = stream.next() => match item {
                    Some(Ok(event)) => {
                        if broken && !connected_logged {
                            tracing::info!("the Docker event stream is back");
                            connected_logged = true;
                        }
                        broken = false;
                        backoff = Duration::from_millis(500);
                        if let Some(ns) = event.time_nano.and_then(|n| u64::try_from(n).ok()) {
                            since = UNIX_EPOCH + Duration::from_nanos(ns);
                        }
                        let Some(this) = inner.upgrade().map(|inner| DockerProvisioner { inner }) else {
                            return;
                        };
                        this.on_event(event);
                    }
                    Some(Err(e)) => break docker_message(&e),
                    None => break "the engine closed the stream".to_string(),
                },
            }
        };
        if !broken {
            tracing::warn!(error = %ended, "the Docker event stream broke; reconnecting");
            broken = true;
        } else {
            tracing::debug!(error = %ended, "the Docker event stream is still down");
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
        // Wait for the engine to answer before subscribing again.
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = docker_for_ping.ping() => {}
        }
    }
}

impl Provisioner for DockerProvisioner {
    fn kind(&self) -> &'static str {
        BACKEND
    }

    async fn acquire(&self, cancel: &CancellationToken) -> Result<(), ProvisionError> {
        if lock(&self.inner.lock).is_some() {
            return Ok(());
        }
        let key = format!("docker-{}", self.inner.identity.id);
        let held = HostLock::acquire(BACKEND, &self.inner.lock_path, &key, cancel).await?;
        *lock(&self.inner.lock) = Some(held);
        Ok(())
    }

    async fn create(&self, spec: RunnerSpec) -> Result<(), ProvisionError> {
        let name = spec.name.clone();
        let gate = Arc::new(tokio::sync::Mutex::new(()));
        let guard = Arc::clone(&gate).lock_owned().await;
        {
            let mut runners = lock(&self.inner.runners);
            if runners.contains_key(&name) {
                return Err(ProvisionError::AlreadyExists(name));
            }
            runners.insert(
                name.clone(),
                Tracked {
                    runner_id: spec.runner_id,
                    phase: Phase::Pending,
                    cancel: CancellationToken::new(),
                    gate,
                },
            );
        }
        let image = self.inner.settings.image.clone();
        let missing = match self.inner.settings.pull {
            PullPolicy::Always => Some(String::new()),
            PullPolicy::Missing | PullPolicy::Never => match self.image_missing(&image).await {
                Ok(m) => m,
                Err(e) => {
                    lock(&self.inner.runners).remove(&name);
                    return Err(e);
                }
            },
        };
        if let Some(message) = &missing
            && self.inner.settings.pull == PullPolicy::Never
        {
            let reason =
                format!("image {image} is missing and the pull policy is never: {message}");
            self.finish(&name, RunnerEvent::FailedToStart { reason }, false);
            return Ok(());
        }
        if missing.is_some() {
            let this = self.clone();
            tokio::spawn(
                async move {
                    let _held = guard;
                    this.pull_and_start(spec).await;
                }
                .in_current_span(),
            );
            return Ok(());
        }
        let outcome = self.create_and_start(&spec).await;
        match outcome {
            Ok(()) => {
                self.started(&name).await;
                Ok(())
            }
            Err(Ok(e)) => {
                lock(&self.inner.runners).remove(&name);
                Err(e)
            }
            Err(Err(reason)) => {
                self.finish(&name, RunnerEvent::FailedToStart { reason }, false);
                Ok(())
            }
        }
    }

    async fn stop(&self, name: &str) -> Result<(), ProvisionError> {
        let gate = {
            let mut runners = lock(&self.inner.runners);
            runners.get_mut(name).map(|t| {
                t.cancel.cancel();
                Arc::clone(&t.gate)
            })
        };
        if let Some(gate) = gate {
            // A pull in progress is dropped; a create in progress finishes first.
            drop(gate.lock().await);
        }
        self.stop_container(name).await?;
        // Followed: report the exit now rather than when the event arrives.
        if lock(&self.inner.runners).contains_key(name) {
            self.check(name).await;
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<OwnedRunner>, ProvisionError> {
        let mut filters: HashMap<String, Vec<String>> = HashMap::new();
        filters.insert("label".into(), self.label_filters());
        let opts = ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        };
        let containers = self
            .inner
            .docker
            .list_containers(Some(opts))
            .await
            .map_err(|e| backend_error("listing containers", &e))?;
        let mut out: std::collections::BTreeMap<String, OwnedRunner> = Default::default();
        for c in containers {
            if !self.is_ours(c.labels.as_ref()) {
                continue;
            }
            let Some(name) = c
                .names
                .as_ref()
                .and_then(|n| n.first())
                .map(|n| n.trim_start_matches('/').to_string())
                .filter(|n| !n.is_empty())
            else {
                continue;
            };
            let runner_id = c
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_RUNNER_ID))
                .and_then(|v| v.parse().ok())
                .unwrap_or_default();
            use ContainerSummaryStateEnum as S;
            let state = match c.state {
                Some(S::CREATED) => RunnerState::Pending,
                Some(S::RUNNING | S::RESTARTING | S::PAUSED | S::STOPPING) => RunnerState::Running,
                Some(S::EXITED | S::DEAD) => RunnerState::Exited(ExitStatus {
                    code: c.status.as_deref().and_then(exit_code_of_status),
                    reason: None,
                }),
                // Being removed: gone for our purposes.
                Some(S::REMOVING) => continue,
                Some(S::EMPTY) | None => RunnerState::Pending,
            };
            out.insert(
                name.clone(),
                OwnedRunner {
                    name,
                    runner_id,
                    state,
                },
            );
        }
        // Runners whose image is being pulled have no container yet.
        for (name, t) in lock(&self.inner.runners).iter() {
            out.entry(name.clone()).or_insert_with(|| OwnedRunner {
                name: name.clone(),
                runner_id: t.runner_id,
                state: RunnerState::Pending,
            });
        }
        Ok(out.into_values().collect())
    }

    async fn adopt(&self, name: &str) -> Result<bool, ProvisionError> {
        let info = match self
            .inner
            .docker
            .inspect_container(name, None::<InspectContainerOptions>)
            .await
        {
            Ok(info) => info,
            Err(e) if is_not_found(&e) => return Ok(false),
            Err(e) => return Err(backend_error(&format!("inspecting container {name}"), &e)),
        };
        let labels = info.config.as_ref().and_then(|c| c.labels.as_ref());
        if !self.is_ours(labels) {
            return Ok(false);
        }
        // Created but never started (a crash in between): nothing to follow; the engine
        // releases it.
        let status = info.state.as_ref().and_then(|s| s.status);
        if status == Some(bollard::models::ContainerStateStatusEnum::CREATED) {
            return Ok(false);
        }
        let runner_id = labels
            .and_then(|l| l.get(LABEL_RUNNER_ID))
            .and_then(|v| v.parse().ok())
            .unwrap_or_default();
        {
            let mut runners = lock(&self.inner.runners);
            if runners.contains_key(name) {
                return Ok(true);
            }
            runners.insert(
                name.to_string(),
                Tracked {
                    runner_id,
                    phase: Phase::Running,
                    cancel: CancellationToken::new(),
                    gate: Arc::new(tokio::sync::Mutex::new(())),
                },
            );
        }
        // Followed from now on; if it ended already, that is reported now.
        self.check(name).await;
        Ok(true)
    }

    async fn release(&self, name: &str) -> Result<(), ProvisionError> {
        if lock(&self.inner.runners).contains_key(name) {
            self.stop(name).await?;
        }
        self.remove(name).await
    }

    async fn next_event(&self) -> Option<ProvisionerEvent> {
        self.inner.events_rx.lock().await.recv().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actions_scaleset::ScaleSetId;

    #[test]
    fn exit_codes_are_read_from_the_status_text() {
        assert_eq!(exit_code_of_status("Exited (3) 5 seconds ago"), Some(3));
        assert_eq!(
            exit_code_of_status("Exited (137) About a minute ago"),
            Some(137)
        );
        assert_eq!(exit_code_of_status("Up 3 seconds"), None);
        assert_eq!(exit_code_of_status("Exited (x"), None);
    }

    #[test]
    fn container_settings_follow_the_configuration() {
        let mut s = DockerSettings::new("img:1");
        s.command = Some("/home/runner/run.sh".into());
        s.args = vec!["--once".into()];
        s.env = vec!["PASSED".into(), "UNSET".into(), JIT_CONFIG_ENV.into()];
        s.labels.insert("team".into(), "ci".into());
        s.cpus = Some(1.5);
        s.memory_mb = Some(512);
        s.network = Some("host".into());
        s.user = Some("runner".into());
        s.working_dir = Some("/home/runner".into());
        let identity = ScaleSetIdentity {
            id: ScaleSetId::new(3),
            name: "linux".into(),
            instance: "host-a".into(),
        };
        let spec = RunnerSpec {
            name: "linux-abc".into(),
            runner_id: RunnerId::new(12),
            jit_config: actions_scaleset::EncodedJitConfig::new("jit-secret-value"),
        };
        let lookup = |n: &str| match n {
            "PASSED" => Some("yes".to_string()),
            JIT_CONFIG_ENV => Some("from-the-daemon".to_string()),
            _ => None,
        };
        let body = container_body(&s, &identity, &spec, lookup);
        assert_eq!(body.image.as_deref(), Some("img:1"));
        assert_eq!(
            body.entrypoint,
            Some(vec!["/home/runner/run.sh".to_string()])
        );
        assert_eq!(body.cmd, Some(vec!["--once".to_string()]));
        assert_eq!(body.user.as_deref(), Some("runner"));
        assert_eq!(body.working_dir.as_deref(), Some("/home/runner"));
        assert_eq!(body.stop_timeout, Some(10));
        let env = body.env.clone().unwrap_or_default();
        assert_eq!(
            env,
            vec![
                "PASSED=yes".to_string(),
                format!("{VERSION_DEPRECATED_ENV}=1"),
                format!("{JIT_CONFIG_ENV}=jit-secret-value"),
            ]
        );
        let labels = body.labels.clone().unwrap_or_default();
        assert_eq!(
            labels.get(LABEL_SCALE_SET_ID).map(String::as_str),
            Some("3")
        );
        assert_eq!(
            labels.get(LABEL_SCALE_SET_NAME).map(String::as_str),
            Some("linux")
        );
        assert_eq!(
            labels.get(LABEL_INSTANCE).map(String::as_str),
            Some("host-a")
        );
        assert_eq!(labels.get(LABEL_RUNNER_ID).map(String::as_str), Some("12"));
        assert_eq!(labels.get("team").map(String::as_str), Some("ci"));
        assert!(labels.values().all(|v| !v.contains("jit-secret-value")));
        let host = body.host_config.unwrap_or_default();
        assert_eq!(host.nano_cpus, Some(1_500_000_000));
        assert_eq!(host.memory, Some(512 * 1024 * 1024));
        assert_eq!(host.network_mode.as_deref(), Some("host"));
        // Without a command, args replace the image's Cmd and its entrypoint stays.
        s.command = None;
        let body = container_body(&s, &identity, &spec, lookup);
        assert_eq!(body.entrypoint, None);
        assert_eq!(body.cmd, Some(vec!["--once".to_string()]));
        s.args.clear();
        let body = container_body(&s, &identity, &spec, lookup);
        assert_eq!((body.entrypoint, body.cmd), (None, None));
    }

    #[test]
    fn engine_messages_never_carry_the_secret() {
        let text = "invalid env jit-secret-value here".to_string();
        assert_eq!(
            redact(text, "jit-secret-value"),
            "invalid env [redacted] here"
        );
        assert_eq!(redact("plain".into(), ""), "plain");
    }
}
