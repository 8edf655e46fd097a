//! A client for GitHub Actions **runner scale sets**: register a scale set, mint just-in-time
//! runner configs, and follow its demand through a message session, with a [`Listener`] that
//! keeps running through the failures seen in production.
//!
//! This is the Rust counterpart of the Go module `github.com/actions/scaleset`, with the same
//! operations in Rust idiom and a few things done better: no global lock (calls overlap on the
//! wire, the admin token refreshes single-flight), names percent-encoded in queries, errors
//! that keep the final status and `ActivityId` after retries, jittered backoff with a capped
//! `Retry-After`, typed errors for every failure a caller acts on, and secrets that never reach
//! `Debug` output or logs.
//!
//! # Quick start
//!
//! ```no_run
//! use actions_scaleset::{Client, Credentials, JitRunnerSetting, RunnerScaleSet, DEFAULT_RUNNER_GROUP_ID};
//!
//! # async fn run() -> Result<(), actions_scaleset::Error> {
//! let token = std::env::var("GITHUB_TOKEN").unwrap_or_default();
//! let client = Client::builder("https://github.com/my-org/my-repo", Credentials::token(token)?)
//!     .build()?;
//!
//! // Get or create the scale set that workflows target with `runs-on: my-runners`.
//! let scale_set = match client.get_runner_scale_set(DEFAULT_RUNNER_GROUP_ID, "my-runners").await? {
//!     Some(existing) => existing,
//!     None => {
//!         let wanted = RunnerScaleSet {
//!             name: "my-runners".into(),
//!             runner_group_id: DEFAULT_RUNNER_GROUP_ID,
//!             ..Default::default()
//!         };
//!         client.create_runner_scale_set(&wanted).await?
//!     }
//! };
//!
//! // Mint a JIT config and hand it to a runner (ACTIONS_RUNNER_INPUT_JITCONFIG).
//! let jit = client
//!     .generate_jit_runner_config(
//!         scale_set.id,
//!         &JitRunnerSetting { name: "runner-1".into(), work_folder: String::new() },
//!     )
//!     .await?;
//! println!("runner {} registered", jit.runner.name);
//! let _config_for_the_runner: &str = jit.encoded_jit_config.expose_secret();
//! # Ok(())
//! # }
//! ```
//!
//! The [`listener`] module documents a complete loop: session, listener and scaler.

pub mod auth;
pub mod client;
pub mod config;
pub mod error;
pub mod listener;
pub mod message;
pub mod session;
mod transport;
pub mod types;

pub use auth::{Credentials, GitHubApp, JwtSigner, PemJwtSigner, TokenFile, TokenProvider};
pub use client::{Client, ClientBuilder, DebugInfo, RunnerRemoval};
pub use config::{
    GITHUB_ACTIONS_FORCE_GHES, GitHubConfig, Scope, github_api_base, github_api_url,
    is_hosted_github_url, parse_github_config_from_url,
};
pub use error::{ApiError, Error, ErrorKind, Result, ServiceException};
pub use listener::{
    BoxError, ConflictPolicy, HealthHandle, INITIAL_MESSAGE_ID, Listener, ListenerConfig,
    ListenerHealth, MessageContext, MessageScaler, MetricsRecorder, Scaler,
};
pub use message::{JOB_MESSAGES_TYPE, JobMessage, RunnerScaleSetMessage};
pub use session::{MessageSessionClient, default_owner};
pub use transport::RetryPolicy;
pub use types::{
    AcquirableJobList, DEFAULT_RUNNER_GROUP, DEFAULT_RUNNER_GROUP_ID, EncodedJitConfig,
    JitRunnerConfig, JitRunnerSetting, JobAssigned, JobAvailable, JobCompleted, JobMessageBase,
    JobStarted, Label, RunnerGroup, RunnerReference, RunnerScaleSet, RunnerScaleSetSession,
    RunnerScaleSetStatistic, RunnerScaleSetUpdate, RunnerSetting, SystemInfo, scale_set_labels,
};

/// The `url` crate's URL type, re-exported: [`GitHubConfig::config_url`] is one, and
/// [`is_hosted_github_url`] accepts one as well as a `&str`.
pub use url::Url;

/// `tokio_util`'s cancellation token, re-exported: [`Listener::run`] stops when it fires.
pub use tokio_util::sync::CancellationToken;
