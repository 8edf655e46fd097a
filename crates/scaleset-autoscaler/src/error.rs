//! The crate's error type.

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
    /// This replica lost the leader Lease (see [`crate::leader`]): it stopped acting at once,
    /// leaving its runners to the new leader.
    #[error("lost the leader lease {lease}: another replica leads now (this one stopped acting)")]
    LeadershipLost {
        /// The Lease, `namespace/name`.
        lease: String,
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
    /// The backend (the process spawner, the Docker engine, the cluster) failed; `message`
    /// is its own account, with the file, container or object involved.
    #[error("{backend}: {message}")]
    Backend {
        /// The provisioner kind (`process`, `docker`, ...).
        backend: &'static str,
        /// What failed and why.
        message: String,
    },
    /// A runner with this name is already owned.
    #[error("a runner named {0:?} already exists")]
    AlreadyExists(String),
    /// Another instance owns the scale set's runners on this backend (the text says which
    /// lock).
    #[error("{0} is held by another autoscaler instance")]
    Locked(String),
    /// The operation was cancelled (shutdown while waiting).
    #[error("cancelled")]
    Cancelled,
}

impl ProvisionError {
    /// A [`ProvisionError::Backend`].
    pub fn backend(backend: &'static str, message: impl Into<String>) -> ProvisionError {
        ProvisionError::Backend {
            backend,
            message: message.into(),
        }
    }
}
