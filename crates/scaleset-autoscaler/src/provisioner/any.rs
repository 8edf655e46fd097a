//! The provisioner the daemon builds from a scale set's `[scale_set.provisioner]` table: one
//! type over every kind, so one engine type serves them all.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

#[cfg(feature = "docker")]
use super::docker::DockerProvisioner;
#[cfg(feature = "kubernetes")]
use super::kubernetes::KubernetesProvisioner;
use super::ownership::OWNERS_LOCK_FILE;
use super::process::{ProcessConfig, ProcessProvisioner};
use super::{OwnedRunner, Provisioner, ProvisionerEvent, RunnerSpec, ScaleSetIdentity};
use crate::config::{ProvisionerConfig, ScaleSetConfig};
use crate::error::{Error, ProvisionError, Result};

/// Any provisioner kind.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum AnyProvisioner {
    /// Local processes.
    Process(ProcessProvisioner),
    /// Docker containers.
    #[cfg(feature = "docker")]
    Docker(DockerProvisioner),
    /// Kubernetes pods.
    #[cfg(feature = "kubernetes")]
    Kubernetes(KubernetesProvisioner),
}

impl AnyProvisioner {
    /// Builds the provisioner of `cfg` for the scale set `identity`, owning nothing yet (call
    /// [`acquire`](Provisioner::acquire)). `state_dir` holds the daemon's own files (lock
    /// files of backends that have no directory of their own).
    ///
    /// # Errors
    /// [`Error::Config`] for a kind this build lacks; [`Error::Provision`] when the backend
    /// cannot be prepared (work directory unusable, Docker engine or Kubernetes API server
    /// unreachable, pod template unusable).
    pub async fn build(
        cfg: &ScaleSetConfig,
        identity: ScaleSetIdentity,
        state_dir: PathBuf,
    ) -> Result<AnyProvisioner> {
        match &cfg.provisioner {
            ProvisionerConfig::Process(p) => {
                let command = p.command.clone().ok_or_else(|| {
                    Error::config(
                        "scale_set.provisioner.command",
                        "required by the process provisioner",
                    )
                })?;
                let workdir = cfg.effective_workdir().unwrap_or_else(|| state_dir.clone());
                let mut pc = ProcessConfig::new(command, p.args.clone(), workdir);
                pc.stop_timeout = Duration::from_secs(10);
                pc.env = p.env.clone();
                pc.name_prefix = cfg.name_prefix();
                pc.lock_file = owners_lock_file("process", &state_dir)?;
                Ok(AnyProvisioner::Process(ProcessProvisioner::unlocked(pc)?))
            }
            #[cfg(feature = "docker")]
            ProvisionerConfig::Docker(d) => {
                let lock = owners_lock_file("docker", &state_dir)?;
                Ok(AnyProvisioner::Docker(
                    DockerProvisioner::connect(d.clone(), identity, lock).await?,
                ))
            }
            #[cfg(not(feature = "docker"))]
            ProvisionerConfig::Docker(_) => {
                let _ = (identity, state_dir);
                Err(Error::config(
                    "scale_set.provisioner.kind",
                    "this build has no Docker support (cargo feature `docker`)",
                ))
            }
            #[cfg(feature = "kubernetes")]
            ProvisionerConfig::Kubernetes(k) => Ok(AnyProvisioner::Kubernetes(
                KubernetesProvisioner::connect(k.clone(), identity).await?,
            )),
            #[cfg(not(feature = "kubernetes"))]
            ProvisionerConfig::Kubernetes(_) => {
                let _ = (identity, state_dir);
                Err(Error::config(
                    "scale_set.provisioner.kind",
                    "this build has no Kubernetes support (cargo feature `kubernetes`)",
                ))
            }
        }
    }
}

/// The lock file of `state_dir` that holds every scale set's ownership key (one descriptor
/// for all of them, see [`HostLock`](super::ownership::HostLock)); creates the directory
/// (mode 0700) when missing.
fn owners_lock_file(backend: &'static str, state_dir: &Path) -> Result<PathBuf, ProvisionError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)
        .map_err(|e| {
            ProvisionError::backend(
                backend,
                format!("creating the state directory {}: {e}", state_dir.display()),
            )
        })?;
    Ok(state_dir.join(OWNERS_LOCK_FILE))
}

/// Calls `$method` on whichever provisioner `$self` holds.
macro_rules! each {
    ($self:ident, $p:ident => $call:expr) => {
        match $self {
            AnyProvisioner::Process($p) => $call,
            #[cfg(feature = "docker")]
            AnyProvisioner::Docker($p) => $call,
            #[cfg(feature = "kubernetes")]
            AnyProvisioner::Kubernetes($p) => $call,
        }
    };
}

impl Provisioner for AnyProvisioner {
    fn kind(&self) -> &'static str {
        each!(self, p => p.kind())
    }

    async fn acquire(&self, cancel: &CancellationToken) -> Result<(), ProvisionError> {
        each!(self, p => p.acquire(cancel).await)
    }

    async fn reserve(&self, name: &str) -> Result<(), ProvisionError> {
        each!(self, p => p.reserve(name).await)
    }

    async fn unreserve(&self, name: &str) -> Result<(), ProvisionError> {
        each!(self, p => p.unreserve(name).await)
    }

    async fn create(&self, spec: RunnerSpec) -> Result<(), ProvisionError> {
        each!(self, p => p.create(spec).await)
    }

    async fn stop(&self, name: &str) -> Result<(), ProvisionError> {
        each!(self, p => p.stop(name).await)
    }

    async fn list(&self) -> Result<Vec<OwnedRunner>, ProvisionError> {
        each!(self, p => p.list().await)
    }

    async fn adopt(&self, name: &str) -> Result<bool, ProvisionError> {
        each!(self, p => p.adopt(name).await)
    }

    async fn release(&self, name: &str) -> Result<(), ProvisionError> {
        each!(self, p => p.release(name).await)
    }

    async fn next_event(&self) -> Option<ProvisionerEvent> {
        each!(self, p => p.next_event().await)
    }

    async fn settle(&self) {
        each!(self, p => p.settle().await)
    }
}
