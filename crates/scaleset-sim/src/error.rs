//! The simulator's error type.

use std::net::SocketAddr;

/// Errors returned by the simulator's Rust API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// The listening socket could not be bound.
    #[error("failed to bind {addr}: {source}")]
    Bind {
        /// The address that was requested.
        addr: SocketAddr,
        /// The underlying IO error.
        #[source]
        source: std::io::Error,
    },
    /// An assignment mode string was neither `ghes` nor `hosted`.
    #[error("invalid assignment mode {0:?}, expected \"ghes\" or \"hosted\"")]
    InvalidMode(String),
    /// A fault description was rejected.
    #[error("invalid fault: {0}")]
    InvalidFault(String),
    /// A control request (for example an enqueue) was rejected.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// A [`crate::SimConfig`] field is out of range (the message names the field).
    #[error("invalid simulator configuration: {0}")]
    InvalidConfig(String),
    /// The embedded key material could not be loaded.
    #[error("key error: {0}")]
    Key(String),
}
