//! Provisioners start and stop the runner processes (or containers, or pods) behind a scale
//! set. The engine decides *how many*; a provisioner only does what it is told and reports
//! when a runner exits.
//!
//! * [`process`]: a local process per runner, in its own process group and work directory.
//! * [`fake`]: an in-memory provisioner for tests.

use std::future::Future;

use actions_scaleset::EncodedJitConfig;

use crate::error::ProvisionError;

pub mod fake;
pub mod process;

/// What a provisioner needs to start one runner.
#[derive(Clone, Debug)]
pub struct RunnerSpec {
    /// Runner name (unique in the scale set; the key of all bookkeeping).
    pub name: String,
    /// The runner id GitHub assigned when the JIT config was minted.
    pub runner_id: i64,
    /// The JIT config; a secret (its `Debug` is redacted).
    pub jit_config: EncodedJitConfig,
}

/// A runner a provisioner owns (possibly left over from a previous run).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedRunner {
    /// Runner name.
    pub name: String,
    /// Runner id, when known (0 when the JIT config was never minted).
    pub runner_id: i64,
    /// Whether its process (container, ...) is still alive.
    pub alive: bool,
}

/// A runner's process ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunnerExit {
    /// Runner name.
    pub name: String,
    /// Whether it exited successfully (exit code 0).
    pub success: bool,
}

/// Starts and stops runners. Implementations must be cheap to share (`Arc` inside or
/// behind one).
pub trait Provisioner: Send + Sync + 'static {
    /// Records the intent to create `name` before its JIT config is minted, so a crash in
    /// between leaves a trace a restarted daemon can clean up. Default: nothing.
    fn reserve(&self, _name: &str) -> impl Future<Output = Result<(), ProvisionError>> + Send {
        async { Ok(()) }
    }

    /// Forgets a reservation that never became a runner. Default: nothing.
    fn unreserve(&self, _name: &str) -> impl Future<Output = Result<(), ProvisionError>> + Send {
        async { Ok(()) }
    }

    /// Starts a runner. Returns once it is started (not once it finished).
    fn create(&self, spec: RunnerSpec) -> impl Future<Output = Result<(), ProvisionError>> + Send;

    /// Stops a runner and waits until it is gone. Stopping an unknown runner is not an error.
    fn stop(&self, name: &str) -> impl Future<Output = Result<(), ProvisionError>> + Send;

    /// The runners this provisioner owns, including leftovers from a previous run.
    fn list(&self) -> impl Future<Output = Result<Vec<OwnedRunner>, ProvisionError>> + Send;

    /// Starts reporting the exit of a live leftover runner through
    /// [`next_exit`](Self::next_exit) (it is adopted). Returns false when this provisioner
    /// cannot watch leftovers; the caller then stops it instead.
    fn watch(&self, _name: &str) -> impl Future<Output = bool> + Send {
        async { false }
    }

    /// Forgets a leftover runner after it was cleaned up.
    fn forget(&self, name: &str) -> impl Future<Output = Result<(), ProvisionError>> + Send;

    /// Waits for the next runner exit; `None` once the provisioner is closed.
    fn next_exit(&self) -> impl Future<Output = Option<RunnerExit>> + Send;
}
