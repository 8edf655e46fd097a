//! Simulator configuration.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::SimError;

/// How jobs reach a scale set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AssignmentMode {
    /// GHES style: the scale set receives `JobAvailable`, must call `acquirejobs`, then
    /// receives `JobAssigned`.
    Ghes,
    /// github.com style: jobs are assigned directly (`JobAssigned`), no acquire step.
    #[default]
    Hosted,
}

impl FromStr for AssignmentMode {
    type Err = SimError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "ghes" => Ok(Self::Ghes),
            "hosted" => Ok(Self::Hosted),
            _ => Err(SimError::InvalidMode(s.to_owned())),
        }
    }
}

impl fmt::Display for AssignmentMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ghes => "ghes",
            Self::Hosted => "hosted",
        })
    }
}

/// Configuration of a [`crate::Simulator`]. Every field has a default; tests shorten the
/// timers so they run fast.
#[derive(Clone)]
pub struct SimConfig {
    /// Job assignment mode (default [`AssignmentMode::Hosted`]).
    pub mode: AssignmentMode,
    /// Maximum time a message-queue GET is held open when there is nothing to deliver
    /// (default 50 s).
    pub long_poll: Duration,
    /// Lifetime of the admin JWT returned by `/actions/runner-registration` (default 1 h).
    pub admin_token_ttl: Duration,
    /// Lifetime of a session's `messageQueueAccessToken` (default 50 min).
    pub queue_token_ttl: Duration,
    /// An assigned job that no runner takes within this time is canceled and requeued; in
    /// ghes mode an offered job not acquired within this time is offered again (default 60 s).
    pub assignment_timeout: Duration,
    /// How many times a canceled job is requeued before it is given up (default 3).
    pub max_requeues: u32,
    /// A busy runner whose heartbeats stop for this long is declared dead: its job
    /// completes with result `failed` and the runner is removed (default 10 s).
    pub runner_heartbeat_timeout: Duration,
    /// Address to bind (default `127.0.0.1:0`).
    pub bind: SocketAddr,
    /// The personal access token to accept; a random one is generated when `None`.
    pub token: Option<String>,
    /// Lifetime of GitHub App installation tokens (default 1 h).
    pub installation_token_ttl: Duration,
    /// Lifetime of runner registration tokens (default 1 h).
    pub registration_token_ttl: Duration,
    /// A session with no message poll in flight and no queue or session call (poll, message
    /// DELETE, acquirejobs, refresh) for this long is removed by the timer, like a listener
    /// that crashed without deleting it; its scale set then accepts a new session (default
    /// 120 s: longer than a 50 s long poll plus a retry).
    pub session_idle_timeout: Duration,
    /// Maximum time the simulated runner's job fetch is held open (default 30 s).
    pub runner_job_poll: Duration,
    /// A message delivered and not acknowledged is delivered again to a poll whose
    /// `lastMessageId` is at or past it only once this long has passed since its last
    /// delivery (default 30 s, below the 50 s long poll, so a listener whose DELETE failed
    /// gets it back within one poll instead of in a hot loop). A poll with a lower
    /// `lastMessageId` (a new session sends 0; a listener retrying a message it failed to
    /// handle keeps the previous id) gets it at once.
    pub message_visibility_timeout: Duration,
    /// Maximum number of job messages per queue message (default 50).
    pub max_jobs_per_message: usize,
    /// How many request-log entries are kept (oldest dropped first; default 10,000).
    pub request_log_capacity: usize,
    /// Organization name used in the default config URL and job messages (default `sim-org`).
    pub org: String,
    /// Repository name used in the default config URL and job messages (default `sim-repo`).
    pub repo: String,
    /// Numeric GitHub App id accepted as the App JWT `iss`, besides the client id
    /// [`crate::APP_CLIENT_ID`] (default [`crate::APP_ID`]).
    pub app_id: u64,
    /// How many completed jobs are kept (most recently completed); older ones are dropped
    /// from the state so a long-running simulator does not grow without bound (default
    /// 10,000; must be at least 1).
    pub completed_jobs_capacity: usize,
    /// Whether removing a runner the simulator does not have answers 404
    /// `AgentNotFoundException` instead of 204. The service usually answers 204 (the default,
    /// `false`); some of its versions answer 404, which a client reports as "already gone".
    pub missing_runner_delete_not_found: bool,
    /// How long after the event a `JobStarted` or `JobCompleted` message becomes deliverable
    /// (default 0: at once). github.com delivers `JobStarted` late, typically on the poll after
    /// the one in flight when the job started; a runner that finishes a short job can exit
    /// before its `JobStarted` reaches the listener. Both kinds are held for the same time, so
    /// a job's messages keep their order; `JobAvailable` and `JobAssigned` are never held.
    pub job_message_delay: Duration,
}

/// Longest [`SimConfig::long_poll`] and [`SimConfig::runner_job_poll`] accepted (1 day): these
/// are waits a request is held open for, anything longer is a mistake.
pub const MAX_POLL_WAIT: Duration = Duration::from_secs(24 * 3600);

impl SimConfig {
    /// Checks the fields [`crate::Simulator::start`] rejects: `long_poll` and
    /// `runner_job_poll` above [`MAX_POLL_WAIT`], `max_jobs_per_message`,
    /// `request_log_capacity` or `completed_jobs_capacity` of 0. Lifetimes and timeouts take any value: a huge one (up to
    /// `Duration::MAX`) means "never".
    pub fn validate(&self) -> Result<(), SimError> {
        for (name, d) in [
            ("long_poll", self.long_poll),
            ("runner_job_poll", self.runner_job_poll),
        ] {
            if d > MAX_POLL_WAIT {
                return Err(SimError::InvalidConfig(format!(
                    "{name} must be at most {} s, got {d:?}",
                    MAX_POLL_WAIT.as_secs()
                )));
            }
        }
        for (name, n) in [
            ("max_jobs_per_message", self.max_jobs_per_message),
            ("request_log_capacity", self.request_log_capacity),
            ("completed_jobs_capacity", self.completed_jobs_capacity),
        ] {
            if n == 0 {
                return Err(SimError::InvalidConfig(format!(
                    "{name} must be at least 1"
                )));
            }
        }
        Ok(())
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            mode: AssignmentMode::Hosted,
            long_poll: Duration::from_secs(50),
            admin_token_ttl: Duration::from_secs(3600),
            queue_token_ttl: Duration::from_secs(50 * 60),
            assignment_timeout: Duration::from_secs(60),
            max_requeues: 3,
            runner_heartbeat_timeout: Duration::from_secs(10),
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            token: None,
            installation_token_ttl: Duration::from_secs(3600),
            registration_token_ttl: Duration::from_secs(3600),
            session_idle_timeout: Duration::from_secs(120),
            runner_job_poll: Duration::from_secs(30),
            message_visibility_timeout: Duration::from_secs(30),
            max_jobs_per_message: 50,
            request_log_capacity: 10_000,
            org: "sim-org".to_owned(),
            repo: "sim-repo".to_owned(),
            app_id: crate::auth::APP_ID,
            completed_jobs_capacity: 10_000,
            missing_runner_delete_not_found: false,
            job_message_delay: Duration::ZERO,
        }
    }
}

impl fmt::Debug for SimConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimConfig")
            .field("mode", &self.mode)
            .field("long_poll", &self.long_poll)
            .field("admin_token_ttl", &self.admin_token_ttl)
            .field("queue_token_ttl", &self.queue_token_ttl)
            .field("assignment_timeout", &self.assignment_timeout)
            .field("max_requeues", &self.max_requeues)
            .field("runner_heartbeat_timeout", &self.runner_heartbeat_timeout)
            .field("bind", &self.bind)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("installation_token_ttl", &self.installation_token_ttl)
            .field("registration_token_ttl", &self.registration_token_ttl)
            .field("session_idle_timeout", &self.session_idle_timeout)
            .field("runner_job_poll", &self.runner_job_poll)
            .field(
                "message_visibility_timeout",
                &self.message_visibility_timeout,
            )
            .field("max_jobs_per_message", &self.max_jobs_per_message)
            .field("request_log_capacity", &self.request_log_capacity)
            .field("org", &self.org)
            .field("repo", &self.repo)
            .field("app_id", &self.app_id)
            .field("completed_jobs_capacity", &self.completed_jobs_capacity)
            .field(
                "missing_runner_delete_not_found",
                &self.missing_runner_delete_not_found,
            )
            .field("job_message_delay", &self.job_message_delay)
            .finish()
    }
}
