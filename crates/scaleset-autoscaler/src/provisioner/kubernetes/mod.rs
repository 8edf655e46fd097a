//! The Kubernetes provisioner (cargo feature `kubernetes`): one Pod per runner in a
//! namespace, from the user's pod template, through [kube].
//!
//! * **Cluster.** [`KubernetesProvisioner::connect`] builds a client as `kubectl` finds its
//!   cluster: the configured kubeconfig file and context when given, else in-cluster (the
//!   pod's service account), else `KUBECONFIG`, else `~/.kube/config`; it asks the API server
//!   for its version so an unreachable cluster is an error at start.
//! * **Pods.** Each runner is a Pod named after the runner ([`template::pod_name`]), built
//!   from the [`PodTemplate`] with only the provisioner's fields set (see [`template`]):
//!   `restartPolicy: Never`, the identity labels and annotations, and on the runner container
//!   the image and command when configured,
//!   [`VERSION_DEPRECATED_ENV`](super::VERSION_DEPRECATED_ENV)`=1` and
//!   [`JIT_CONFIG_ENV`](super::JIT_CONFIG_ENV) from a `secretKeyRef`.
//! * **Secrets.** The JIT config lives in a per-runner Secret (key [`SECRET_KEY`]), created
//!   *before* the Pod and deleted again when the Pod cannot be created. Once the Pod exists
//!   the Secret gets an ownerReference to it (its uid is known only then), so the garbage
//!   collector removes it with the Pod; the provisioner deletes it itself too when the
//!   runner ends or is released. The JIT config is in no Pod, label, annotation, log line,
//!   error or `Debug` output.
//! * **State** comes from a watch (kube-runtime's watcher on this scale set's and instance's
//!   pods: it relists after `410 Gone`) and a tick every [`TICK`] for deadlines, while
//!   [`list`](Provisioner::list) asks the API server for the engine's resync. A runner
//!   reports [`RunnerEvent::Running`] once its runner container runs, then exactly one
//!   terminal event: [`RunnerEvent::Exited`] from the runner container's terminated state
//!   (code and reason, such as `OOMKilled`); [`RunnerEvent::FailedToStart`] for
//!   `InvalidImageName` or `ErrImageNeverPull` at once, and for `ErrImagePull`,
//!   `ImagePullBackOff`, `CreateContainerConfigError`, `CreateContainerError` or an
//!   unschedulable pod once the pod is older than `start_deadline_secs` (reported once,
//!   never retried here); [`RunnerEvent::Vanished`] for a pod evicted or otherwise disrupted
//!   by the cluster (condition `DisruptionTarget`: its node shut down, preemption), or
//!   deleted behind our back (a delete event, a deletion in progress that we did not ask for, or a pod missing
//!   from a relist). An ended runner's pod and Secret are deleted and the pod waited for
//!   (up to its grace period plus `terminating_deadline_secs`) *before* its terminal event
//!   is reported, so a daemon that drains and exits leaves no pod behind.
//! * **Stuck pods.** A pod still terminating `terminating_deadline_secs` after its grace
//!   period is reported once at warn level, and force-deleted (grace period 0) only when
//!   `force_delete = true`: a force-deleted pod may still run on a node the API server lost.
//! * **Stopping** deletes the pod with a grace period of `stop_timeout_secs` (SIGTERM, then
//!   SIGKILL) and waits until it is gone; releasing deletes the pod and its Secret.
//! * **Ownership.** [`acquire`](Provisioner::acquire) takes nothing: one manager per scale
//!   set across replicas is the daemon's `coordination.k8s.io` Lease ([`crate::leader`]),
//!   held before any provisioner is built. With leader election the instance recorded on
//!   pods and Secrets is the Lease's name, shared by the replicas, so the next leader lists
//!   and adopts the pods of the last one. Without it every instance manages the pods labelled
//!   with its own instance name, and one replica per instance name is the operator's to keep.

pub mod status;
pub mod template;
mod watch;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use actions_scaleset::RunnerId;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use self::status::{Decision, Followed, Observed};
pub use self::template::{
    ANNOTATION_INSTANCE, ANNOTATION_RUNNER_NAME, ANNOTATION_SCALE_SET_NAME, LABEL_INSTANCE,
    LABEL_RUNNER_ID, LABEL_RUNNER_NAME, LABEL_SCALE_SET_ID, LABEL_SCALE_SET_NAME, PodTemplate,
    SECRET_KEY, TemplateError,
};
use super::{
    ExitStatus, OwnedRunner, Provisioner, ProvisionerEvent, RunnerEvent, RunnerSpec, RunnerState,
    ScaleSetIdentity,
};
use crate::config::provisioner::KubernetesSettings;
use crate::error::ProvisionError;

const BACKEND: &str = "kubernetes";

/// How often deadlines (start, terminating) are looked at.
pub const TICK: Duration = Duration::from_millis(500);

/// How long `connect` waits for the API server to answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a pod created here may stay unseen by the watch before it is looked up.
const UNSEEN_PROBE: Duration = Duration::from_secs(10);

/// Extra time a waiter gives a pod beyond its grace period and the terminating deadline
/// (and, with `force_delete`, for the forced deletion to land).
const WAIT_MARGIN: Duration = Duration::from_secs(2);
const FORCE_MARGIN: Duration = Duration::from_secs(10);

/// How often a waiter asks the API server itself, whatever the watch says.
const RECHECK: Duration = Duration::from_secs(2);

/// Where a followed runner is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// `create` is making its Secret and Pod.
    Creating,
    /// The pod exists; its runner does not run yet.
    Pending,
    /// `Running` was reported.
    Running,
    /// Its terminal event is decided; its pod and Secret are being removed, then the event
    /// is reported.
    Finishing,
}

/// One followed runner: created or adopted here, no terminal event reported yet.
#[derive(Debug)]
struct Record {
    pod: String,
    runner_id: RunnerId,
    stage: Stage,
    /// A `stop` is under way: it reports the end.
    stopping: bool,
    /// This provisioner asked for the pod's deletion.
    deleted_by_us: bool,
    /// The watch has shown this pod (so its absence from a relist means it is gone).
    seen: bool,
    /// When the pod was created (by the monotonic clock).
    born: Instant,
    /// The runner container's exit as last seen.
    last_exit: Option<ExitStatus>,
    /// When it was last looked up because the watch had not shown it.
    probed: Option<Instant>,
}

/// A pod of ours seen terminating.
#[derive(Debug)]
struct Terminating {
    since: Instant,
    grace: Duration,
    warned: bool,
    forced: bool,
}

#[derive(Debug, Default)]
struct State {
    runners: HashMap<String, Record>,
    /// The watch's view of our pods, by pod name.
    pods: HashMap<String, Pod>,
    /// The watch has listed the pods at least once.
    synced: bool,
    terminating: HashMap<String, Terminating>,
}

struct Inner {
    settings: KubernetesSettings,
    identity: ScaleSetIdentity,
    template: PodTemplate,
    selector: String,
    pods: Api<Pod>,
    secrets: Api<Secret>,
    state: Mutex<State>,
    /// Notified on every change of `state`.
    changed: Notify,
    events_tx: mpsc::UnboundedSender<ProvisionerEvent>,
    events_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<ProvisionerEvent>>,
    /// Cancelled when the last handle goes: ends the watch.
    shutdown: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The Kubernetes provisioner. Clones share their state; dropping the last one stops the
/// watch and leaves the pods alone.
#[derive(Clone)]
pub struct KubernetesProvisioner {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for KubernetesProvisioner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesProvisioner")
            .field("identity", &self.inner.identity)
            .field("namespace", &self.inner.settings.namespace)
            .field("pod_template", &self.inner.template.file())
            .finish_non_exhaustive()
    }
}

/// Kubernetes' own words for an error: the API's message for API errors.
fn kube_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) if !s.message.is_empty() => s.message.clone(),
        other => other.to_string(),
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

fn backend_error(what: &str, e: &kube::Error) -> ProvisionError {
    ProvisionError::backend(BACKEND, format!("{what}: {}", kube_message(e)))
}

/// `text` with the JIT config (as is and base64-encoded, as a Secret carries it) replaced.
fn redact(text: String, secret: &str) -> String {
    if secret.is_empty() {
        return text;
    }
    let encoded = serde_json::to_value(k8s_openapi::ByteString(secret.as_bytes().to_vec()))
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let mut text = text.replace(secret, "[redacted]");
    if !encoded.is_empty() {
        text = text.replace(&encoded, "[redacted]");
    }
    text
}

/// A client for the cluster `settings` name: their kubeconfig file and context when given,
/// else as `kube::Config::infer` finds it (in-cluster, then `KUBECONFIG`, then
/// `~/.kube/config`).
///
/// # Errors
/// [`ProvisionError::Backend`] saying which configuration could not be read.
pub async fn client(settings: &KubernetesSettings) -> Result<Client, ProvisionError> {
    client_for(settings.kubeconfig.as_deref(), settings.context.as_deref()).await
}

/// A client for the cluster a kubeconfig file and context name (see [`client`]); both `None`:
/// inferred.
///
/// # Errors
/// [`ProvisionError::Backend`] saying which configuration could not be read.
pub async fn client_for(
    kubeconfig: Option<&std::path::Path>,
    context: Option<&str>,
) -> Result<Client, ProvisionError> {
    let failed = |what: String| ProvisionError::backend(BACKEND, what);
    let config = if kubeconfig.is_none() && context.is_none() {
        Config::infer().await.map_err(|e| {
            failed(format!(
                "no cluster configuration (in-cluster, KUBECONFIG or ~/.kube/config): {e}"
            ))
        })?
    } else {
        let options = KubeConfigOptions {
            context: context.map(str::to_string),
            ..Default::default()
        };
        match kubeconfig {
            Some(path) => {
                let kubeconfig = Kubeconfig::read_from(path).map_err(|e| {
                    failed(format!("reading the kubeconfig {}: {e}", path.display()))
                })?;
                Config::from_custom_kubeconfig(kubeconfig, &options)
                    .await
                    .map_err(|e| failed(format!("using the kubeconfig {}: {e}", path.display())))?
            }
            None => Config::from_kubeconfig(&options)
                .await
                .map_err(|e| failed(format!("using the kubeconfig (KUBECONFIG): {e}")))?,
        }
    };
    Client::try_from(config).map_err(|e| failed(format!("building the client: {e}")))
}

impl KubernetesProvisioner {
    /// Connects to the cluster `settings` name (see [`client`]) for the scale set
    /// `identity`; see [`with_client`](Self::with_client).
    ///
    /// # Errors
    /// As [`client`] and [`with_client`](Self::with_client).
    pub async fn connect(
        settings: KubernetesSettings,
        identity: ScaleSetIdentity,
    ) -> Result<KubernetesProvisioner, ProvisionError> {
        // A bad template is reported before anything talks to the cluster.
        PodTemplate::load(&settings.pod_template, &settings.runner_container)
            .map_err(|e| ProvisionError::backend(BACKEND, e.to_string()))?;
        let client = client(&settings).await?;
        KubernetesProvisioner::with_client(client, settings, identity).await
    }

    /// The provisioner over `client` for the scale set `identity`: reads the pod template,
    /// asks the API server for its version (waiting at most 30 s) and starts watching the
    /// scale set's pods.
    ///
    /// # Errors
    /// [`ProvisionError::Backend`] for a pod template that cannot be used (naming the file
    /// and the field) or an API server that does not answer.
    pub async fn with_client(
        client: Client,
        settings: KubernetesSettings,
        identity: ScaleSetIdentity,
    ) -> Result<KubernetesProvisioner, ProvisionError> {
        let template = PodTemplate::load(&settings.pod_template, &settings.runner_container)
            .map_err(|e| ProvisionError::backend(BACKEND, e.to_string()))?;
        let version = tokio::time::timeout(CONNECT_TIMEOUT, client.apiserver_version())
            .await
            .map_err(|_| {
                ProvisionError::backend(
                    BACKEND,
                    format!(
                        "the API server did not answer within {}s",
                        CONNECT_TIMEOUT.as_secs()
                    ),
                )
            })?
            .map_err(|e| backend_error("asking the API server for its version", &e))?;
        tracing::debug!(version = %version.git_version, namespace = %settings.namespace, "connected to the Kubernetes API server");
        let pods = Api::namespaced(client.clone(), &settings.namespace);
        let secrets = Api::namespaced(client, &settings.namespace);
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            selector: template::selector(&identity),
            settings,
            identity,
            template,
            pods,
            secrets,
            state: Mutex::new(State::default()),
            changed: Notify::new(),
            events_tx,
            events_rx: tokio::sync::Mutex::new(events_rx),
            shutdown: CancellationToken::new(),
        });
        let weak = Arc::downgrade(&inner);
        tokio::spawn(watch::run(weak, inner.shutdown.clone()).in_current_span());
        Ok(KubernetesProvisioner { inner })
    }

    /// The pod template in use.
    pub fn template(&self) -> &PodTemplate {
        &self.inner.template
    }

    /// The label selector of this scale set's and instance's pods and Secrets.
    pub fn selector(&self) -> &str {
        &self.inner.selector
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn changed(&self) {
        self.inner.changed.notify_waiters();
    }

    fn send(&self, name: &str, event: RunnerEvent) {
        let _ = self
            .inner
            .events_tx
            .send(ProvisionerEvent::new(name, event));
    }

    fn grace(&self) -> Duration {
        Duration::from_secs(self.inner.settings.stop_timeout_secs)
    }

    fn start_deadline(&self) -> Duration {
        Duration::from_secs(self.inner.settings.start_deadline_secs)
    }

    /// How long a waiter gives a pod deleted with `grace` to be gone.
    fn gone_within(&self, grace: Duration) -> Duration {
        let s = &self.inner.settings;
        let mut limit = grace + Duration::from_secs(s.terminating_deadline_secs) + WAIT_MARGIN;
        if s.force_delete {
            limit += FORCE_MARGIN;
        }
        limit
    }

    /// Waits until `done` holds for the state (true), or `limit` passed (false).
    async fn wait_for(&self, limit: Duration, done: impl Fn(&State) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let notified = self.inner.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if done(&self.state()) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep_until(deadline.min(Instant::now() + RECHECK)) => {}
            }
        }
    }

    /// The runner following the pod `pod`.
    fn runner_of(state: &State, pod: &str) -> Option<String> {
        state
            .runners
            .iter()
            .find(|(_, r)| r.pod == pod)
            .map(|(n, _)| n.clone())
    }

    /// Looks at the followed runner `name` with what the watch shows of its pod, and
    /// reports what is due.
    fn evaluate(&self, name: &str) {
        let mut state = self.state();
        let synced = state.synced;
        let pod = state
            .runners
            .get(name)
            .and_then(|r| state.pods.get(&r.pod).cloned());
        let start_deadline = self.start_deadline();
        let Some(r) = state.runners.get_mut(name) else {
            return;
        };
        if matches!(r.stage, Stage::Creating | Stage::Finishing) {
            return;
        }
        let decision = match &pod {
            Some(pod) => {
                r.seen = true;
                let observed = status::observe(pod, &self.inner.template_container());
                if let Observed::Exited(s) = &observed {
                    r.last_exit = Some(s.clone());
                }
                if r.stopping {
                    return;
                }
                status::decide(
                    &observed,
                    status::is_deleting(pod),
                    Followed {
                        running_reported: r.stage == Stage::Running,
                        deleted_by_us: r.deleted_by_us,
                        age: r.born.elapsed(),
                        start_deadline,
                    },
                )
            }
            // Gone: only a pod the watch showed before (a pod just created may not have
            // reached it yet).
            None if synced && r.seen && !r.stopping => Decision::Terminal(if r.deleted_by_us {
                RunnerEvent::Exited(r.last_exit.clone().unwrap_or(ExitStatus {
                    code: None,
                    reason: Some("deleted".into()),
                }))
            } else {
                RunnerEvent::Vanished
            }),
            None => Decision::Nothing,
        };
        match decision {
            Decision::Nothing => {}
            Decision::Running => {
                r.stage = Stage::Running;
                tracing::debug!(runner = %name, pod = %r.pod, "runner pod running");
                self.send(name, RunnerEvent::Running);
            }
            Decision::Terminal(event) => {
                r.stage = Stage::Finishing;
                let pod_name = r.pod.clone();
                let present = pod.is_some();
                let deleting = pod.as_ref().is_some_and(status::is_deleting);
                drop(state);
                self.finish(name.to_string(), pod_name, event, present && !deleting);
            }
        }
    }

    /// Removes an ended runner's pod (when `delete`) and Secret, waits until the pod is
    /// gone, then reports `event` and forgets the runner; in a task of its own.
    fn finish(&self, name: String, pod: String, event: RunnerEvent, delete: bool) {
        tracing::debug!(runner = %name, pod = %pod, event = ?event, "runner ended");
        let this = self.clone();
        tokio::spawn(
            async move {
                if delete && let Err(e) = this.delete_pod(&pod, this.grace()).await {
                    tracing::warn!(runner = %name, pod = %pod, error = %e, "could not delete the pod of an ended runner");
                }
                this.delete_secret(&pod, &name).await;
                if !this.wait_gone(&pod, this.gone_within(this.grace())).await {
                    tracing::warn!(runner = %name, pod = %pod, "the pod of an ended runner is still there; reporting its end anyway");
                }
                let removed = this.state().runners.remove(&name).is_some();
                if removed {
                    this.send(&name, event);
                }
                this.changed();
            }
            .in_current_span(),
        );
    }

    /// Deletes the pod `pod` with a grace period of `grace`; a missing one is fine.
    async fn delete_pod(&self, pod: &str, grace: Duration) -> Result<(), ProvisionError> {
        let dp = DeleteParams {
            grace_period_seconds: Some(u32::try_from(grace.as_secs()).unwrap_or(u32::MAX)),
            ..Default::default()
        };
        match self.inner.pods.delete(pod, &dp).await {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(backend_error(&format!("deleting pod {pod}"), &e)),
        }
    }

    /// Deletes the Secret of the pod `pod` (runner `runner`, for the log); a missing one is
    /// fine, a failure is logged (the garbage collector removes it with its pod).
    async fn delete_secret(&self, pod: &str, runner: &str) {
        let secret = template::secret_name(pod);
        match self
            .inner
            .secrets
            .delete(&secret, &DeleteParams::default())
            .await
        {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => {
                tracing::warn!(runner = %runner, secret = %secret, error = %kube_message(&e), "could not delete the runner's Secret");
            }
        }
    }

    /// Whether the API server says the pod `pod` is gone (`None`: it could not be asked).
    async fn pod_gone(&self, pod: &str) -> Option<bool> {
        match self.inner.pods.get_opt(pod).await {
            Ok(found) => Some(found.is_none()),
            Err(e) => {
                tracing::debug!(pod = %pod, error = %kube_message(&e), "could not look the pod up");
                None
            }
        }
    }

    /// Waits until the pod `pod` is gone, at most `limit`: as the watch shows it, confirmed
    /// by the API server (asked every [`RECHECK`] too, should the watch be down).
    async fn wait_gone(&self, pod: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut asked = Instant::now();
        if self.pod_gone(pod).await == Some(true) {
            return true;
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return self.pod_gone(pod).await == Some(true);
            }
            let watch_says_gone = self
                .wait_for(left.min(RECHECK), |s| s.synced && !s.pods.contains_key(pod))
                .await;
            if (watch_says_gone || asked.elapsed() >= RECHECK)
                && self.pod_gone(pod).await == Some(true)
            {
                return true;
            }
            asked = Instant::now();
            if watch_says_gone {
                // The watch lags behind the API server: do not spin on it.
                tokio::time::sleep(TICK.min(left)).await;
            }
        }
    }

    /// Deletes the pod `pod` (and the Secret) and waits until it is gone. `Ok(false)`: it is
    /// still there after the wait.
    async fn remove(&self, pod: &str, runner: &str) -> Result<bool, ProvisionError> {
        self.delete_pod(pod, self.grace()).await?;
        let gone = self.wait_gone(pod, self.gone_within(self.grace())).await;
        self.delete_secret(pod, runner).await;
        Ok(gone)
    }

    /// Whether the watch last showed the runner container of `pod` terminated.
    fn runner_ended(&self, pod: &str) -> bool {
        let container = self.inner.template_container();
        self.state()
            .pods
            .get(pod)
            .is_some_and(|p| matches!(status::observe(p, &container), Observed::Exited(_)))
    }

    /// Creates the Secret and the Pod of `spec` and ties the Secret to the Pod.
    async fn create_objects(&self, spec: &RunnerSpec) -> Result<(), ProvisionError> {
        let s = &self.inner.settings;
        let secret_text = spec.jit_config.expose_secret();
        let pod_name = template::pod_name(&spec.name);
        let secret = template::build_secret(&s.namespace, &self.inner.identity, spec);
        let secret_name = template::secret_name(&pod_name);
        let pp = PostParams::default();
        if let Err(e) = self.inner.secrets.create(&pp, &secret).await {
            return Err(if is_conflict(&e) {
                ProvisionError::AlreadyExists(spec.name.clone())
            } else {
                ProvisionError::backend(
                    BACKEND,
                    format!(
                        "creating Secret {}/{secret_name}: {}",
                        s.namespace,
                        redact(kube_message(&e), secret_text)
                    ),
                )
            });
        }
        let pod = template::build_pod(&self.inner.template, s, &self.inner.identity, spec, |n| {
            std::env::var(n).ok()
        });
        let created = match self.inner.pods.create(&pp, &pod).await {
            Ok(created) => created,
            Err(e) => {
                self.delete_secret(&pod_name, &spec.name).await;
                return Err(if is_conflict(&e) {
                    ProvisionError::AlreadyExists(spec.name.clone())
                } else {
                    ProvisionError::backend(
                        BACKEND,
                        format!(
                            "creating pod {}/{pod_name}: {}",
                            s.namespace,
                            redact(kube_message(&e), secret_text)
                        ),
                    )
                });
            }
        };
        match created.metadata.uid.as_deref() {
            Some(uid) => {
                let patch = serde_json::json!({
                    "metadata": {"ownerReferences": [template::owner_reference(&pod_name, uid)]}
                });
                if let Err(e) = self
                    .inner
                    .secrets
                    .patch(&secret_name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    tracing::warn!(runner = %spec.name, secret = %secret_name, error = %kube_message(&e), "could not make the runner's Secret owned by its pod; it is deleted with the runner");
                }
            }
            None => {
                tracing::warn!(runner = %spec.name, pod = %pod_name, "the API server gave the pod no uid; its Secret is deleted with the runner");
            }
        }
        Ok(())
    }

    /// The current pods of this scale set and instance, from the API server.
    async fn list_pods(&self) -> Result<Vec<Pod>, ProvisionError> {
        let lp = ListParams::default().labels(&self.inner.selector);
        let list = self
            .inner
            .pods
            .list(&lp)
            .await
            .map_err(|e| backend_error("listing pods", &e))?;
        Ok(list
            .items
            .into_iter()
            .filter(|p| template::is_ours(&p.metadata, &self.inner.identity))
            .collect())
    }

    /// The names of this scale set's and instance's Secrets with their runner names and ids.
    async fn list_secrets(&self) -> Result<Vec<(String, RunnerId)>, ProvisionError> {
        let lp = ListParams::default().labels(&self.inner.selector);
        let list = self
            .inner
            .secrets
            .list_metadata(&lp)
            .await
            .map_err(|e| backend_error("listing Secrets", &e))?;
        Ok(list
            .items
            .into_iter()
            .filter(|s| template::is_ours(&s.metadata, &self.inner.identity))
            .map(|s| {
                (
                    template::runner_name_of(&s.metadata),
                    template::runner_id_of(&s.metadata),
                )
            })
            .collect())
    }

    /// Called by the watch on every tick: start deadlines, pods stuck terminating, pods the
    /// watch has not shown.
    fn tick(&self) {
        let names: Vec<String> = self.state().runners.keys().cloned().collect();
        for name in &names {
            self.evaluate(name);
        }
        self.check_terminating();
        self.probe_unseen();
    }

    /// Reports pods stuck terminating (once) and force-deletes them when configured.
    fn check_terminating(&self) {
        let s = &self.inner.settings;
        let deadline = Duration::from_secs(s.terminating_deadline_secs);
        let mut force = Vec::new();
        {
            let mut state = self.state();
            let State {
                pods, terminating, ..
            } = &mut *state;
            terminating.retain(|name, _| pods.get(name).is_some_and(status::is_deleting));
            for (name, pod) in pods.iter().filter(|(_, p)| status::is_deleting(p)) {
                let grace = pod
                    .metadata
                    .deletion_grace_period_seconds
                    .and_then(|g| u64::try_from(g).ok())
                    .map_or(Duration::ZERO, Duration::from_secs);
                let t = terminating.entry(name.clone()).or_insert(Terminating {
                    since: Instant::now(),
                    grace,
                    warned: false,
                    forced: false,
                });
                let stuck_for = t.since.elapsed();
                if stuck_for < t.grace + deadline {
                    continue;
                }
                if !t.warned {
                    t.warned = true;
                    if s.force_delete {
                        tracing::warn!(pod = %name, secs = stuck_for.as_secs(), "pod stuck terminating past terminating_deadline_secs; force-deleting it (force_delete = true)");
                    } else {
                        tracing::warn!(pod = %name, secs = stuck_for.as_secs(), "pod stuck terminating past terminating_deadline_secs; leaving it (set force_delete = true to force-delete such pods)");
                    }
                }
                if s.force_delete && !t.forced {
                    t.forced = true;
                    force.push(name.clone());
                }
            }
        }
        for pod in force {
            let this = self.clone();
            tokio::spawn(
                async move {
                    if let Err(e) = this.delete_pod(&pod, Duration::ZERO).await {
                        tracing::warn!(pod = %pod, error = %e, "could not force-delete a pod stuck terminating");
                    }
                }
                .in_current_span(),
            );
        }
    }

    /// Looks up pods created here that the watch has not shown for a while: one gone by then
    /// is reported.
    fn probe_unseen(&self) {
        let due: Vec<(String, String)> = {
            let mut state = self.state();
            state
                .runners
                .iter_mut()
                .filter(|(_, r)| {
                    matches!(r.stage, Stage::Pending | Stage::Running)
                        && !r.seen
                        && !r.stopping
                        && r.born.elapsed() >= UNSEEN_PROBE
                        && r.probed.is_none_or(|p| p.elapsed() >= UNSEEN_PROBE)
                })
                .map(|(n, r)| {
                    r.probed = Some(Instant::now());
                    (n.clone(), r.pod.clone())
                })
                .collect()
        };
        for (name, pod) in due {
            let this = self.clone();
            tokio::spawn(
                async move {
                    if this.pod_gone(&pod).await != Some(true) {
                        return;
                    }
                    let event = {
                        let mut state = this.state();
                        match state.runners.get_mut(&name) {
                            Some(r) if !r.seen && !r.stopping && r.stage != Stage::Finishing => {
                                r.stage = Stage::Finishing;
                                Some(if r.deleted_by_us {
                                    RunnerEvent::Exited(ExitStatus {
                                        code: None,
                                        reason: Some("deleted".into()),
                                    })
                                } else {
                                    RunnerEvent::Vanished
                                })
                            }
                            _ => None,
                        }
                    };
                    if let Some(event) = event {
                        this.finish(name, pod, event, false);
                    }
                }
                .in_current_span(),
            );
        }
    }
}

impl Inner {
    fn template_container(&self) -> String {
        self.settings.runner_container.clone()
    }
}

impl Provisioner for KubernetesProvisioner {
    fn kind(&self) -> &'static str {
        BACKEND
    }

    // `acquire` keeps the default (nothing to take): see the module docs on ownership.

    async fn create(&self, spec: RunnerSpec) -> Result<(), ProvisionError> {
        let name = spec.name.clone();
        let pod = template::pod_name(&name);
        {
            let mut state = self.state();
            if state.runners.contains_key(&name) || Self::runner_of(&state, &pod).is_some() {
                return Err(ProvisionError::AlreadyExists(name));
            }
            state.runners.insert(
                name.clone(),
                Record {
                    pod: pod.clone(),
                    runner_id: spec.runner_id,
                    stage: Stage::Creating,
                    stopping: false,
                    deleted_by_us: false,
                    seen: false,
                    born: Instant::now(),
                    last_exit: None,
                    probed: None,
                },
            );
        }
        let created = self.create_objects(&spec).await;
        {
            let mut state = self.state();
            match &created {
                Ok(()) => {
                    if let Some(r) = state.runners.get_mut(&name) {
                        r.stage = Stage::Pending;
                        r.born = Instant::now();
                    }
                }
                Err(_) => {
                    state.runners.remove(&name);
                }
            }
        }
        self.changed();
        if created.is_ok() {
            tracing::debug!(runner = %name, pod = %pod, namespace = %self.inner.settings.namespace, "runner pod created");
            self.evaluate(&name);
        }
        created
    }

    async fn stop(&self, name: &str) -> Result<(), ProvisionError> {
        let pod = template::pod_name(name);
        // A create in progress finishes first.
        self.wait_for(CONNECT_TIMEOUT, |s| {
            s.runners
                .get(name)
                .is_none_or(|r| r.stage != Stage::Creating)
        })
        .await;
        let followed = {
            let mut state = self.state();
            match state.runners.get_mut(name) {
                Some(r) if r.stage == Stage::Finishing => None,
                Some(r) => {
                    r.stopping = true;
                    r.deleted_by_us = true;
                    Some(true)
                }
                None => Some(false),
            }
        };
        let Some(followed) = followed else {
            // Ending already: wait for its end to be reported.
            let limit = self.gone_within(self.grace());
            self.wait_for(limit, |s| !s.runners.contains_key(name))
                .await;
            return Ok(());
        };
        let unstop = || {
            if let Some(r) = self.state().runners.get_mut(name) {
                r.stopping = false;
            }
        };
        match self.remove(&pod, name).await {
            Ok(true) => {}
            // Still terminating, but its runner no longer runs.
            Ok(false) if self.runner_ended(&pod) => {}
            Ok(false) => {
                unstop();
                return Err(ProvisionError::backend(
                    BACKEND,
                    format!(
                        "pod {}/{pod} is still terminating (force_delete = {})",
                        self.inner.settings.namespace, self.inner.settings.force_delete
                    ),
                ));
            }
            Err(e) => {
                unstop();
                return Err(e);
            }
        }
        if followed {
            let record = self.state().runners.remove(name);
            if let Some(r) = record {
                let status = r.last_exit.unwrap_or(ExitStatus {
                    code: None,
                    reason: Some("stopped".into()),
                });
                self.send(name, RunnerEvent::Exited(status));
            }
            self.changed();
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<OwnedRunner>, ProvisionError> {
        let container = self.inner.template_container();
        let deadline = self.start_deadline();
        let mut out: BTreeMap<String, OwnedRunner> = BTreeMap::new();
        for pod in self.list_pods().await? {
            let name = template::runner_name_of(&pod.metadata);
            let state = status::listed_state(
                status::observe(&pod, &container),
                status::age(&pod),
                deadline,
            );
            out.insert(
                name.clone(),
                OwnedRunner {
                    name,
                    runner_id: template::runner_id_of(&pod.metadata),
                    state,
                },
            );
        }
        let secrets = self.list_secrets().await?;
        let state = self.state();
        // Runners whose pod is being created.
        for (name, r) in state
            .runners
            .iter()
            .filter(|(_, r)| r.stage == Stage::Creating)
        {
            out.entry(name.clone()).or_insert_with(|| OwnedRunner {
                name: name.clone(),
                runner_id: r.runner_id,
                state: RunnerState::Pending,
            });
        }
        // A Secret without its pod (a crash between the two, or a pod gone before the
        // garbage collector came): released by the engine.
        for (name, runner_id) in secrets {
            if state.runners.contains_key(&name) {
                continue;
            }
            out.entry(name.clone()).or_insert_with(|| OwnedRunner {
                name,
                runner_id,
                state: RunnerState::Failed {
                    reason: "its Secret is left without its pod".into(),
                },
            });
        }
        Ok(out.into_values().collect())
    }

    async fn adopt(&self, name: &str) -> Result<bool, ProvisionError> {
        let pod_name = template::pod_name(name);
        let pod = match self.inner.pods.get_opt(&pod_name).await {
            Ok(Some(pod)) => pod,
            Ok(None) => return Ok(false),
            Err(e) => return Err(backend_error(&format!("looking up pod {pod_name}"), &e)),
        };
        if !template::is_ours(&pod.metadata, &self.inner.identity)
            || template::runner_name_of(&pod.metadata) != name
        {
            return Ok(false);
        }
        let running = matches!(
            status::observe(&pod, &self.inner.template_container()),
            Observed::Running
        );
        {
            let mut state = self.state();
            if state.runners.contains_key(name) {
                return Ok(true);
            }
            let born = Instant::now()
                .checked_sub(status::age(&pod))
                .unwrap_or_else(Instant::now);
            state.runners.insert(
                name.to_string(),
                Record {
                    pod: pod_name.clone(),
                    runner_id: template::runner_id_of(&pod.metadata),
                    stage: if running {
                        Stage::Running
                    } else {
                        Stage::Pending
                    },
                    stopping: false,
                    deleted_by_us: false,
                    seen: false,
                    born,
                    last_exit: None,
                    probed: None,
                },
            );
            // Until the watch shows it, what the API server just said.
            state.pods.entry(pod_name).or_insert(pod);
        }
        self.changed();
        self.evaluate(name);
        Ok(true)
    }

    async fn release(&self, name: &str) -> Result<(), ProvisionError> {
        if self.state().runners.contains_key(name) {
            return self.stop(name).await;
        }
        let pod = template::pod_name(name);
        match self.remove(&pod, name).await? {
            true => Ok(()),
            false if self.runner_ended(&pod) => Ok(()),
            false => Err(ProvisionError::backend(
                BACKEND,
                format!(
                    "pod {}/{pod} is still terminating",
                    self.inner.settings.namespace
                ),
            )),
        }
    }

    async fn next_event(&self) -> Option<ProvisionerEvent> {
        self.inner.events_rx.lock().await.recv().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_never_carry_the_secret() {
        let secret = "jit-secret-value";
        let encoded = "aml0LXNlY3JldC12YWx1ZQ==";
        let text = format!("bad {secret} and {encoded}");
        assert_eq!(redact(text, secret), "bad [redacted] and [redacted]");
        assert_eq!(redact("plain".into(), ""), "plain");
    }
}
