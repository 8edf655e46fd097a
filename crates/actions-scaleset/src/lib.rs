//! A client for GitHub Actions **runner scale sets**: register a scale set, mint just-in-time
//! runner configs, and follow its demand through a message session, with a [`Listener`] that
//! keeps running through the failures seen in production.
//!
//! This is the Rust counterpart of the Go module `github.com/actions/scaleset`, with the same
//! operations in Rust idiom and a few things done better: no global lock (calls overlap on the
//! wire, the admin token refreshes single-flight), names percent-encoded in queries, errors
//! that keep the final status and `ActivityId` after retries, jittered backoff with a capped
//! `Retry-After`, typed errors for every failure a caller acts on, and secrets that never reach
//! `Debug` output or logs. Ids are typed ([`ScaleSetId`], [`RunnerId`]...): a runner id cannot
//! be passed where a scale set id is expected.
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
//! The [`listener`] module documents a complete loop: session, listener and scaler. The
//! crate's `examples/` directory has four programs: `lifecycle`, `listener` (the three-method
//! [`Scaler`]), `message_scaler` ([`MessageScaler`]) and a provisioner-free `autoscaler`.
//!
//! # A GitHub App
//!
//! An App installed on the organization (or repository) authenticates with a JWT signed by
//! its private key; [`Credentials::github_app_with_signer`] takes any [`JwtSigner`] (a KMS or
//! an HSM) instead of the PEM.
//!
//! ```no_run
//! use actions_scaleset::{Client, Credentials, DEFAULT_RUNNER_GROUP_ID};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let pem = std::fs::read_to_string("/etc/scaleset/app.pem")?;
//! let credentials = Credentials::github_app("Iv1.0123456789abcdef", 12345678, &pem)?;
//! let client = Client::builder("https://github.com/my-org", credentials).build()?;
//! for set in client.list_runner_scale_sets(DEFAULT_RUNNER_GROUP_ID).await? {
//!     println!("{} (id {})", set.name, set.id);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Logging
//!
//! The crate logs through [`tracing`](https://docs.rs/tracing) and installs no subscriber:
//! nothing is printed until the application installs one. Events carry fields (`scale_set_id`,
//! `message_id`, `method`, `url`, `status`, `attempt`...), never a token, key, signer output
//! or JIT config; URLs are logged without their query. The targets are the module paths:
//!
//! | Target | What it logs |
//! |---|---|
//! | `actions_scaleset::transport` | `debug`: every answer (method, URL, status, attempt, time); `warn`: a retry and its cause |
//! | `actions_scaleset::auth` | `debug`: an admin-token refresh, a token file read; `info`: a refused token re-read from its file; `warn`: a refused provider token asked for again, an unreadable token file (the previous token kept) |
//! | `actions_scaleset::client` | `warn`: a refused admin token refreshed and retried once, a retried create or JIT request that met its own earlier attempt |
//! | `actions_scaleset::session` | `debug`: an old session that could not be deleted before its replacement; `info`: a session created, refreshed, deleted, a refused queue token (the session is refreshed) |
//! | `actions_scaleset::listener` | `info`: jobs acquired, backoff waits, waiting out a session conflict; `warn`: every failure the loop heals (poll, scaler, lost session) |
//! | `actions_scaleset::message` | `debug`: a job message of an unknown type skipped |
//!
//! Levels: `error` is never used (the crate returns errors instead); `warn` is something went
//! wrong and was handled; `info` is a change of state (a session, an acquisition, a backoff);
//! `debug` is every request and answer; nothing is logged at `trace`.
//!
//! The seed's `withLogger(console)` (every log line on the console) is a `tracing-subscriber`
//! `fmt` subscriber; `RUST_LOG=actions_scaleset=debug` shows every request:
//!
//! ```no_run
//! use tracing_subscriber::EnvFilter;
//!
//! tracing_subscriber::fmt()
//!     .with_env_filter(
//!         EnvFilter::try_from_default_env()
//!             .unwrap_or_else(|_| EnvFilter::new("actions_scaleset=info")),
//!     )
//!     .with_writer(std::io::stderr)
//!     .init();
//! ```
//!
//! # Coming from the Go reference or the Node seed
//!
//! Every method, option, error and utility of the Go module `github.com/actions/scaleset`
//! (its current API: v0.4.0 plus the later `ListRunnerScaleSets`, status-class errors, JWT
//! providers, client certificates, the one-method listener contract and the proposed
//! `GetAcquirableJobs`) and of the seed's Node API, and the Rust item that does it. Go takes a
//! `context.Context` everywhere: in Rust, drop the future (or use [`CancellationToken`] for
//! the listener) to cancel.
//!
//! **Client construction and options**
//!
//! | Go reference | Node seed | Rust |
//! |---|---|---|
//! | `NewClientWithPersonalAccessToken(config, opts...)` | `new Client({ configUrl, token })` | [`Client::builder`] with [`Credentials::token`], then [`ClientBuilder::build`] |
//! | `NewClientWithGitHubApp(config, opts...)`, `ClientWithGitHubAppConfig`, `GitHubAppAuth` | `new Client({ configUrl, app: { clientId, installationId, privateKey } })` | [`Credentials::github_app`] ([`GitHubApp`]) |
//! | `GitHubAppAuth.Validate()` | (validated in the constructor) | [`Credentials::github_app`] validates (errors [`Error::InvalidCredentials`]) |
//! | `NewClientWithJWTProvider`, `JWTProvider`, `JWTProviderFunc`, `SignerJWTProvider` | — | [`Credentials::github_app_with_signer`], [`JwtSigner`], [`PemJwtSigner`] |
//! | `TokenProvider` (unmerged) | — | [`Credentials::provider`], [`TokenProvider`], [`Credentials::token_file`], [`TokenFile`] |
//! | `SystemInfo`, `SetSystemInfo`, `SystemInfo()` | `systemInfo` option, `setSystemInfo` | [`SystemInfo`], [`ClientBuilder::system_info`], [`Client::set_system_info`], [`Client::system_info`] |
//! | `DebugInfo()` | `debugInfo()` | [`Client::debug_info`] ([`DebugInfo`]) |
//! | `HTTPOption` | constructor options | the [`ClientBuilder`] methods |
//! | `WithRetryMax` | `retryMax` | [`ClientBuilder::retry_max`] |
//! | `WithRetryWaitMax` | `retryWaitMax` | [`ClientBuilder::retry_wait_max`] (and [`ClientBuilder::retry_wait_min`]) |
//! | `WithTimeout` | `timeout` | [`ClientBuilder::timeout`] |
//! | `WithRootCAs` | `rootCAs` | [`ClientBuilder::root_ca_pem`] |
//! | `WithoutTLSVerify` | `insecureSkipTlsVerify` | [`ClientBuilder::insecure_skip_tls_verify`] |
//! | `WithProxy`, `ProxyFunc` | `proxy` | [`ClientBuilder::proxy`] (environment proxies by default) |
//! | `WithRetryableHTTPClint` | `httpClient` | [`ClientBuilder::http_client`] |
//! | `WithTLSClientCertificate`, `WithTLSClientCertificateFromFile` | — | [`ClientBuilder::client_certificate_pem`] |
//! | `WithLogger(*slog.Logger)` | `withLogger(console)` | a `tracing` subscriber (see [Logging](#logging)) |
//! | `HeaderScaleSetMaxCapacity` | — | sent by [`MessageSessionClient::get_message`] from its `max_capacity` |
//!
//! **Client operations**
//!
//! | Go reference | Node seed | Rust |
//! |---|---|---|
//! | `GetRunnerScaleSet` | `getRunnerScaleSet` | [`Client::get_runner_scale_set`] |
//! | `ListRunnerScaleSets` | `listRunnerScaleSets` | [`Client::list_runner_scale_sets`] |
//! | `GetRunnerScaleSetByID` | `getRunnerScaleSetById` | [`Client::get_runner_scale_set_by_id`] |
//! | `CreateRunnerScaleSet` | `createRunnerScaleSet` | [`Client::create_runner_scale_set`] (labels by [`scale_set_labels`]) |
//! | `UpdateRunnerScaleSet` | `updateRunnerScaleSet` | [`Client::update_runner_scale_set`] ([`RunnerScaleSetUpdate`]) |
//! | `DeleteRunnerScaleSet` | `deleteRunnerScaleSet` | [`Client::delete_runner_scale_set`] |
//! | `GetRunnerGroupByName` | `getRunnerGroupByName` | [`Client::get_runner_group_by_name`] |
//! | `GenerateJitRunnerConfig` | `generateJitRunnerConfig` | [`Client::generate_jit_runner_config`] |
//! | `GetRunner` | `getRunner` | [`Client::get_runner`] |
//! | `GetRunnerByName` | `getRunnerByName` | [`Client::get_runner_by_name`] |
//! | `RemoveRunner` | `removeRunner` | [`Client::remove_runner`] ([`RunnerRemoval`]) |
//! | `GetAcquirableJobs` (proposed) | — | [`Client::get_acquirable_jobs`] ([`AcquirableJobList`]) |
//! | `MessageSessionClient(ctx, id, owner)` | `createMessageSessionClient` | [`Client::create_message_session_client`], [`Client::create_message_session_client_waiting`] |
//!
//! **Message session**
//!
//! | Go reference | Node seed | Rust |
//! |---|---|---|
//! | `MessageSessionClient` | `MessageSessionClient` | [`MessageSessionClient`] |
//! | `GetMessage` | `getMessage` | [`MessageSessionClient::get_message`] |
//! | `DeleteMessage` | `deleteMessage` | [`MessageSessionClient::delete_message`] |
//! | `AcquireJobs` | `acquireJobs` | [`MessageSessionClient::acquire_jobs`] |
//! | `Session()` | `session` | [`MessageSessionClient::session`] |
//! | `Close` | `close` | [`MessageSessionClient::close`] |
//! | (refresh on a 401, internal) | (internal) | automatic; [`MessageSessionClient::recreate`] replaces a lost session |
//!
//! **Listener**
//!
//! | Go reference | Node seed | Rust |
//! |---|---|---|
//! | `listener.New(client, config, opts...)` | `new Listener(session, config)` | [`Listener::new`] |
//! | `listener.Config{ScaleSetID, MaxRunners, Logger}`, `Config.Validate` | listener config | [`ListenerConfig`] (validated by [`Listener::new`]) |
//! | `listener.Client` (interface) | — | [`MessageSessionClient`] (the listener's only client) |
//! | `Listener.Run(ctx, scaler)` | `run(scaler, signal)` | [`Listener::run`] with a [`CancellationToken`] |
//! | `Listener.SetMaxRunners` | `setMaxRunners` | [`Listener::set_max_runners`] |
//! | `Scaler` (v0.4.0: three methods) | `Scaler` (three methods) | [`Scaler`] |
//! | `HandleDesiredRunnerCount` | `handleDesiredRunnerCount` | [`Scaler::handle_desired_runner_count`] |
//! | `HandleJobStarted` | `handleJobStarted` | [`Scaler::handle_job_started`] |
//! | `HandleJobCompleted` | `handleJobCompleted` | [`Scaler::handle_job_completed`] |
//! | `Scaler.Scale(ctx, *RunnerScaleSetMessage)` (PR #113) | — | [`MessageScaler::handle_message`] with a [`MessageContext`] |
//! | `InitialMessageID` | — | [`INITIAL_MESSAGE_ID`] |
//! | `MetricsRecorder`, `WithMetricsRecorder`, `Option` | metrics hooks | [`MetricsRecorder`], [`Listener::with_metrics`] |
//! | — | — | [`Listener::health`], [`HealthHandle`], [`ListenerHealth`], [`ConflictPolicy`] |
//!
//! **Errors**
//!
//! | Go reference | Node seed | Rust |
//! |---|---|---|
//! | `RunnerNotFoundError` | `RunnerNotFoundError` | [`Error::RunnerNotFound`] ([`ErrorKind::RunnerNotFound`]) |
//! | `RunnerExistsError` | `RunnerExistsError` | [`Error::RunnerExists`] |
//! | `JobStillRunningError` | `JobStillRunningError` | [`Error::JobStillRunning`] |
//! | `MessageQueueTokenExpiredError` | `MessageQueueTokenExpiredError` | [`Error::MessageQueueTokenExpired`] |
//! | `BadRequestError`, `NotFoundError`, `UnauthorizedError`, `ConflictError` (status classes) | `status` on errors | [`Error::status`], [`ApiError::status`]; [`Error::Unauthorized`] |
//! | `ErrInvalidGitHubConfigURL` | `InvalidConfigUrlError` | [`Error::InvalidConfigUrl`] |
//! | `actionsExceptionError` (exception name and message) | `ServiceError` | [`ServiceException`] via [`Error::exception`] |
//! | request/response context (method, URL, status, `ActivityId`) | error fields | [`ApiError`] via [`Error::api_error`] |
//! | — (matched on text) | — | [`Error::SessionConflict`], [`Error::SessionNotFound`], [`Error::ScaleSetNotFound`], [`Error::RunnerGroupNotFound`], [`Error::InvalidSession`], [`Error::RateLimited`] |
//! | — | — | [`Error::kind`] ([`ErrorKind`]), [`Error::is_retryable`], [`Result`] |
//!
//! **Types and utilities**
//!
//! | Go reference | Node seed | Rust |
//! |---|---|---|
//! | `RunnerScaleSet`, `RunnerSetting`, `Label` | same names | [`RunnerScaleSet`], [`RunnerSetting`], [`Label`] |
//! | `RunnerGroup`, `RunnerGroupList` | `RunnerGroup` | [`RunnerGroup`] (lists are `Vec`) |
//! | `RunnerReference`, `RunnerReferenceList` | `RunnerReference` | [`RunnerReference`] |
//! | `RunnerScaleSetJitRunnerSetting` | `JitRunnerSetting` | [`JitRunnerSetting`] |
//! | `RunnerScaleSetJitRunnerConfig` | `JitRunnerConfig` | [`JitRunnerConfig`], [`EncodedJitConfig`] |
//! | `RunnerScaleSetSession` | `RunnerScaleSetSession` | [`RunnerScaleSetSession`] |
//! | `RunnerScaleSetStatistic` | `RunnerScaleSetStatistic` | [`RunnerScaleSetStatistic`] |
//! | `RunnerScaleSetMessage` | `RunnerScaleSetMessage` | [`RunnerScaleSetMessage`], [`JobMessage`], [`JOB_MESSAGES_TYPE`] |
//! | `JobMessageBase`, `JobMessageType`, `MessageType` (+ `MessageTypeJob*`) | job message types | [`JobMessageBase`], [`JobMessage`] (one variant per type) |
//! | `JobAvailable`, `JobAssigned`, `JobStarted`, `JobCompleted` | same names | [`JobAvailable`], [`JobAssigned`], [`JobStarted`], [`JobCompleted`] |
//! | `DefaultRunnerGroup` | `DEFAULT_RUNNER_GROUP` | [`DEFAULT_RUNNER_GROUP`], [`DEFAULT_RUNNER_GROUP_ID`] |
//! | ids as `int` / `int64` (`RunnerScaleSet.Id`, `RunnerGroupId`, `RunnerReference.Id`, `MessageId`, `RunnerRequestId`) | ids as `number` | typed ids, one per kind (see [`ids`]): [`ScaleSetId`], [`RunnerGroupId`], [`RunnerId`], [`MessageId`], [`RunnerRequestId`] (`i64` inside, the bare number on the wire and in `Display`; [`ParseIdError`]) |
//! | `parseGitHubConfigFromURL` (internal) | `parseGitHubConfigFromUrl` | [`parse_github_config_from_url`] ([`GitHubConfig`], [`Scope`]) |
//! | `isHostedGitHubURL` (internal) | `isHostedGitHubUrl` | [`is_hosted_github_url`] (and [`GITHUB_ACTIONS_FORCE_GHES`]) |
//! | `gitHubAPIURL` (internal) | `gitHubApiUrl` | [`github_api_url`], [`github_api_base`] |
//! | (host name as owner) | default owner | [`default_owner`] |
//! | — | — | [`Url`] (re-exported), [`RetryPolicy`], [`BoxError`] |

pub mod auth;
pub mod client;
pub mod config;
pub mod error;
pub mod ids;
pub mod listener;
pub mod message;
pub mod session;
mod transport;
pub mod types;

pub use auth::{Credentials, GitHubApp, JwtSigner, PemJwtSigner, TokenFile, TokenProvider};
pub use client::{Client, ClientBuilder, DEFAULT_POOL_IDLE_TIMEOUT, DebugInfo, RunnerRemoval};
pub use config::{
    GITHUB_ACTIONS_FORCE_GHES, GitHubConfig, Scope, github_api_base, github_api_url,
    is_hosted_github_url, parse_github_config_from_url,
};
pub use error::{ApiError, Error, ErrorKind, Result, ServiceException};
pub use ids::{MessageId, ParseIdError, RunnerGroupId, RunnerId, RunnerRequestId, ScaleSetId};
pub use listener::{
    BoxError, ConflictPolicy, HealthHandle, INITIAL_MESSAGE_ID, Listener, ListenerConfig,
    ListenerHealth, MessageContext, MessageScaler, MetricsRecorder, Scaler,
};
pub use message::{
    Envelope, EnvelopeError, JOB_MESSAGES_TYPE, JobMessage, RunnerScaleSetMessage, parse_body,
    parse_envelope,
};
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
