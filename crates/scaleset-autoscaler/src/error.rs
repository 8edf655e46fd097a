//! The crate's error type.

use std::path::PathBuf;

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything the autoscaler can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid; `key` names the offending setting, e.g.
    /// `scale_set[0].max_runners`.
    #[error("{key}: {message}")]
    Config {
        /// The setting, as a path into the configuration.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// A call to GitHub failed.
    #[error(transparent)]
    Api(#[from] actions_scaleset::Error),
    /// A provisioner could not create, stop or list runners.
    #[error("provisioner: {0}")]
    Provision(#[from] ProvisionError),
    /// A scale set's engine stopped unexpectedly (a task panicked or ended).
    #[error("scale set {scale_set}: {message}")]
    Engine {
        /// The scale set.
        scale_set: String,
        /// What happened.
        message: String,
    },
    /// A bug: something that should not happen did.
    #[error("internal error: {0}")]
    Internal(String),
    /// The metrics/health server could not start.
    #[error("metrics server on {addr}: {source}")]
    Server {
        /// The address it tried to bind.
        addr: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// A configuration error for `key`.
    pub fn config(key: impl Into<String>, message: impl Into<String>) -> Error {
        Error::Config {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// A provisioner failure. Never carries a JIT config.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProvisionError {
    /// An I/O operation failed (spawning a process, writing the state file, ...).
    #[error("{what} ({path}): {source}")]
    Io {
        /// What the provisioner was doing.
        what: &'static str,
        /// The file, directory or program involved.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A runner with this name is already owned.
    #[error("a runner named {0:?} already exists")]
    AlreadyExists(String),
    /// Another instance holds the work directory's lock.
    #[error("the work directory {} is in use by another autoscaler instance", .0.display())]
    Locked(PathBuf),
    /// The work directory is not private to this user.
    #[error("unsafe work directory {}: {why}", path.display())]
    UnsafeWorkdir {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The operation was cancelled (shutdown while waiting).
    #[error("cancelled")]
    Cancelled,
    /// Any other failure.
    #[error("{0}")]
    Other(String),
}
