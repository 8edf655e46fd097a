//! Provisioners start and stop the runners (processes, containers, pods) behind a scale set.
//! The engine decides *how many*; a provisioner does what it is told and reports what became
//! of each runner.
//!
//! * [`process`]: a local process per runner, in its own process group and work directory.
//! * `docker` (cargo feature `docker`): a container per runner on a Docker engine;
//!   `docker_image` builds local runner images `FROM scratch` out of host files.
//! * `kubernetes` (cargo feature `kubernetes`): a pod per runner on a Kubernetes cluster.
//! * [`fake`]: an in-memory provisioner for tests.
//! * [`any`]: the one the daemon builds from a scale set's `[scale_set.provisioner]` table.
//!
//! # The contract (v2)
//!
//! Every provisioner keeps these rules; one generic test suite (`tests/contract.rs`) checks
//! them against each implementation.
//!
//! 1. **Ownership.** [`acquire`](Provisioner::acquire) makes this instance the only manager
//!    of the scale set's runners on this backend (a work-directory lock for processes, a
//!    lock for a Docker host, a Lease for a cluster), waiting while another instance holds
//!    it; a second instance never gets it at the same time. The engine calls nothing else
//!    before `acquire` returned `Ok`.
//! 2. **Creation.** [`create`](Provisioner::create) returns once the runner was handed to the
//!    backend. What becomes of it is reported as events: [`RunnerEvent::Running`] once it
//!    runs, then exactly one terminal event. A start the backend refuses after `create`
//!    returned (an image that cannot be pulled, a command that does not exist) is
//!    [`RunnerEvent::FailedToStart`], reported once; the provisioner never retries it on its
//!    own. An error from `create` itself means nothing was left running.
//! 3. **Exactly one terminal event per runner** created or adopted: [`RunnerEvent::Exited`]
//!    (with the exit code when the backend knows it, and a reason such as `OOMKilled`),
//!    [`RunnerEvent::FailedToStart`] or [`RunnerEvent::Vanished`] (deleted behind our back).
//!    A runner stopped through [`stop`](Provisioner::stop) reports its `Exited` too. After its
//!    terminal event the provisioner removes what is left of the runner (process record,
//!    container, work directory) on its own.
//! 4. **Stopping** an unknown or already gone runner is `Ok`. `stop` waits until the runner no
//!    longer runs.
//! 5. **Listing** ([`list`](Provisioner::list)) is level-triggered truth: every runner the
//!    backend has for this scale set and instance, the ones started by this process and the
//!    ones a previous run left behind, with their current state. The engine's periodic
//!    resync compares it with its records and repairs both directions.
//! 6. **Leftovers.** A listed runner this process did not start is adopted
//!    ([`adopt`](Provisioner::adopt): from then on its events are reported as for a runner
//!    it created) or released ([`release`](Provisioner::release): whatever is left of it is
//!    removed; a live one is stopped first).
//! 7. **Identity.** The provisioner labels what it creates with the scale set's identity
//!    ([`ScaleSetIdentity`]), so a restarted daemon finds its runners and never touches
//!    another scale set's.
//! 8. **Secrets.** The JIT config reaches the runner and nothing else: never a name, label,
//!    annotation, log line, error or `Debug` output.
//! 9. **Errors** are [`ProvisionError`]; backend failures are
//!    [`ProvisionError::Backend`] with the backend's own message.
//! 10. **Quiet after shutdown.** Once [`settle`](Provisioner::settle) returns (the engine's
//!     last step), nothing the backend started in the background still writes.

use std::future::Future;

use actions_scaleset::{EncodedJitConfig, RunnerId, ScaleSetId};
use tokio_util::sync::CancellationToken;

use crate::error::ProvisionError;

pub mod any;
#[cfg(feature = "docker")]
pub mod docker;
#[cfg(feature = "docker")]
pub mod docker_image;
pub mod fake;
#[cfg(feature = "kubernetes")]
pub mod kubernetes;
pub mod ownership;
pub mod process;
mod state_file;

/// The environment variable a runner reads its JIT config from.
pub const JIT_CONFIG_ENV: &str = "ACTIONS_RUNNER_INPUT_JITCONFIG";

/// Set to `1` for every runner, so that `run.sh` exits with
/// [`OUTDATED_RUNNER_EXIT_CODE`] when the runner is older than the service accepts (it
/// otherwise exits 0 or 1 and the start is retried forever).
pub const VERSION_DEPRECATED_ENV: &str = "ACTIONS_RUNNER_RETURN_VERSION_DEPRECATED_EXIT_CODE";

/// The exit code of a runner that refused to start because its version is too old.
pub const OUTDATED_RUNNER_EXIT_CODE: i32 = 7;

/// The scale set a provisioner works for: it labels its runners with this.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScaleSetIdentity {
    /// Scale set id.
    pub id: ScaleSetId,
    /// Scale set name.
    pub name: String,
    /// The owning instance (stable across restarts of the same daemon: a host name or a pod
    /// name), recorded on what the provisioner creates.
    pub instance: String,
}

/// What a provisioner needs to start one runner.
#[derive(Clone, Debug)]
pub struct RunnerSpec {
    /// Runner name (unique in the scale set; the key of all bookkeeping).
    pub name: String,
    /// The runner id GitHub assigned when the JIT config was minted.
    pub runner_id: RunnerId,
    /// The JIT config; a secret (its `Debug` is redacted).
    pub jit_config: EncodedJitConfig,
}

/// How a runner ended, as far as the backend knows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExitStatus {
    /// The exit code; `None` when killed by a signal or unknown.
    pub code: Option<i32>,
    /// Why, when the backend says (`OOMKilled`, `signal 9`, ...).
    pub reason: Option<String>,
}

impl ExitStatus {
    /// An exit with `code` and no reason.
    pub fn code(code: i32) -> ExitStatus {
        ExitStatus {
            code: Some(code),
            reason: None,
        }
    }

    /// Whether it exited with code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// Whether the runner refused to start because its version is too old.
    pub fn outdated(&self) -> bool {
        self.code == Some(OUTDATED_RUNNER_EXIT_CODE)
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.code, &self.reason) {
            (Some(c), Some(r)) => write!(f, "exit code {c} ({r})"),
            (Some(c), None) => write!(f, "exit code {c}"),
            (None, Some(r)) => write!(f, "{r}"),
            (None, None) => write!(f, "unknown exit"),
        }
    }
}

/// What a provisioner reports about one runner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunnerEvent {
    /// The runner runs.
    Running,
    /// It ended (terminal).
    Exited(ExitStatus),
    /// The backend could not start it: image missing or refused, bad command, ... (terminal).
    FailedToStart {
        /// The backend's words.
        reason: String,
    },
    /// It is gone and nobody here removed it: deleted or evicted behind our back (terminal).
    Vanished,
}

impl RunnerEvent {
    /// Whether nothing more will be reported for this runner.
    pub fn is_terminal(&self) -> bool {
        !matches!(self, RunnerEvent::Running)
    }
}

/// An event about the runner `name`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProvisionerEvent {
    /// Runner name.
    pub name: String,
    /// What happened.
    pub event: RunnerEvent,
}

impl ProvisionerEvent {
    /// An event about `name`.
    pub fn new(name: impl Into<String>, event: RunnerEvent) -> ProvisionerEvent {
        ProvisionerEvent {
            name: name.into(),
            event,
        }
    }
}

/// The state of a runner in a [`list`](Provisioner::list).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunnerState {
    /// Known to the backend but not running yet (reserved, being created, image pulling).
    Pending,
    /// Running.
    Running,
    /// Ended, not cleaned up yet.
    Exited(ExitStatus),
    /// The backend could not start it.
    Failed {
        /// The backend's words.
        reason: String,
    },
}

impl RunnerState {
    /// Whether it may still run (pending or running).
    pub fn is_alive(&self) -> bool {
        matches!(self, RunnerState::Pending | RunnerState::Running)
    }
}

/// A runner a provisioner owns (started by this process or left over from a previous run).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedRunner {
    /// Runner name.
    pub name: String,
    /// Runner id, when known (0 when the JIT config was never minted).
    pub runner_id: RunnerId,
    /// Its state.
    pub state: RunnerState,
}

/// Starts and stops runners; see the [module docs](self) for the contract. Implementations
/// must be cheap to share (`Arc` inside or behind one).
pub trait Provisioner: Send + Sync + 'static {
    /// The backend's name for logs and errors (`process`, `docker`, ...).
    fn kind(&self) -> &'static str;

    /// Takes ownership of the scale set's runners on this backend, waiting while another
    /// instance holds it. Returns [`ProvisionError::Cancelled`] when `cancel` fires first.
    /// Default: nothing to own.
    fn acquire(
        &self,
        _cancel: &CancellationToken,
    ) -> impl Future<Output = Result<(), ProvisionError>> + Send {
        async { Ok(()) }
    }

    /// Records the intent to create `name` before its JIT config is minted, so a crash in
    /// between leaves a trace a restarted daemon can clean up. Default: nothing.
    fn reserve(&self, _name: &str) -> impl Future<Output = Result<(), ProvisionError>> + Send {
        async { Ok(()) }
    }

    /// Forgets a reservation that never became a runner. Default: nothing.
    fn unreserve(&self, _name: &str) -> impl Future<Output = Result<(), ProvisionError>> + Send {
        async { Ok(()) }
    }

    /// Hands a runner to the backend; its fate is reported as events.
    fn create(&self, spec: RunnerSpec) -> impl Future<Output = Result<(), ProvisionError>> + Send;

    /// Stops a runner and waits until it no longer runs. Stopping an unknown runner is `Ok`.
    fn stop(&self, name: &str) -> impl Future<Output = Result<(), ProvisionError>> + Send;

    /// Every runner this provisioner owns, with its state.
    fn list(&self) -> impl Future<Output = Result<Vec<OwnedRunner>, ProvisionError>> + Send;

    /// Starts reporting the events of a listed runner this process did not start. Returns
    /// false when it cannot (the runner is gone, or the backend cannot follow it); the engine
    /// then releases it.
    fn adopt(&self, name: &str) -> impl Future<Output = Result<bool, ProvisionError>> + Send;

    /// Removes whatever is left of a listed runner the engine is done with (stopping it
    /// first when it still runs). Releasing an unknown runner is `Ok`.
    fn release(&self, name: &str) -> impl Future<Output = Result<(), ProvisionError>> + Send;

    /// Waits for the next event; `None` once the provisioner is closed.
    fn next_event(&self) -> impl Future<Output = Option<ProvisionerEvent>> + Send;

    /// Returns once the background work the backend started before the call (a state write
    /// after a runner ended, say) is done. The engine calls it last in its shutdown, so
    /// whoever removes the backend's files afterwards does not race a write. Default:
    /// nothing runs in the background.
    fn settle(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}
