//! The simulated runner: decodes a JIT config, comes online at the simulator, takes exactly
//! one job, runs it for the job's duration while sending heartbeats, reports the result.
//!
//! Runner API (under the JIT config's `serverUrl`, `Authorization: Bearer <simRunnerSecret>`):
//! `POST /_sim/runner/{agentId}/online`, `GET /_sim/runner/{agentId}/job?waitMs=N`
//! (200 job / 204 nothing yet), `POST /_sim/runner/{agentId}/heartbeat`,
//! `POST /_sim/runner/{agentId}/complete` with `{"result": "..."}`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;
use serde_json::{Value, json};

/// Options of the simulated runner.
#[derive(Debug, Clone)]
pub struct RunnerOptions {
    /// Interval between heartbeats while a job runs (default 1 s).
    pub heartbeat_interval: Duration,
    /// How long one job fetch may be held open by the server (default 30 s; the server caps it).
    pub job_poll: Duration,
    /// Per-request timeout added on top of `job_poll` (default 30 s).
    pub request_timeout: Duration,
    /// Give up waiting for a job after this long (default: wait forever).
    pub max_wait_for_job: Option<Duration>,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(1),
            job_poll: Duration::from_secs(30),
            request_timeout: Duration::from_secs(30),
            max_wait_for_job: None,
        }
    }
}

/// What a runner did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerOutcome {
    /// Agent id from the JIT config.
    pub runner_id: i64,
    /// Agent name from the JIT config.
    pub runner_name: String,
    /// `runnerRequestId` of the job it ran.
    pub request_id: i64,
    /// `jobId` of the job it ran.
    pub job_id: String,
    /// The result it reported.
    pub result: String,
}

/// Simulated-runner failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunnerError {
    /// The JIT config could not be decoded.
    #[error("invalid JIT config: {0}")]
    InvalidJitConfig(String),
    /// A request to the simulator failed at the transport level.
    #[error("request to the simulator failed: {0}")]
    Http(#[source] reqwest::Error),
    /// The simulator answered with an unexpected status.
    #[error("the simulator answered {status} to {what}: {body}")]
    Rejected {
        /// What the runner was doing.
        what: &'static str,
        /// HTTP status.
        status: u16,
        /// Response body.
        body: String,
    },
    /// The runner was removed by the simulator (for example declared dead) while working.
    #[error("the runner was removed by the simulator")]
    Removed,
    /// An injected crash: the runner stopped mid-job without reporting.
    #[error("simulated crash mid-job (injected fault)")]
    Crashed,
    /// An injected crash: the runner came online and stopped before taking a job.
    #[error("simulated crash before the job (injected fault)")]
    CrashedBeforeJob,
    /// No job arrived within `max_wait_for_job`.
    #[error("no job arrived in time")]
    NoJob,
}

/// The decoded parts of a JIT config that the simulated runner uses.
#[derive(Clone, PartialEq, Eq)]
pub struct JitRunnerInfo {
    /// `.runner` `agentId`.
    pub agent_id: i64,
    /// `.runner` `agentName`.
    pub agent_name: String,
    /// `.runner` `serverUrl` (without trailing slash).
    pub server_url: String,
    /// `.runner` `workFolder`.
    pub work_folder: String,
    /// `.credentials` `data.simRunnerSecret`.
    pub secret: String,
}

impl std::fmt::Debug for JitRunnerInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JitRunnerInfo")
            .field("agent_id", &self.agent_id)
            .field("agent_name", &self.agent_name)
            .field("server_url", &self.server_url)
            .field("work_folder", &self.work_folder)
            .field("secret", &"<redacted>")
            .finish()
    }
}

fn decode_b64_json(what: &str, s: &str) -> Result<Value, RunnerError> {
    let bytes = B64
        .decode(s.trim())
        .map_err(|e| RunnerError::InvalidJitConfig(format!("{what} is not base64: {e}")))?;
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    serde_json::from_slice(bytes)
        .map_err(|e| RunnerError::InvalidJitConfig(format!("{what} is not JSON: {e}")))
}

fn get_ci<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v)
}

/// Decode an `encodedJITConfig` (base64 of a JSON object mapping file names to base64 contents).
pub fn decode_jit_config(jit_config: &str) -> Result<JitRunnerInfo, RunnerError> {
    if jit_config.trim().is_empty() {
        return Err(RunnerError::InvalidJitConfig("empty JIT config".into()));
    }
    let map: HashMap<String, String> =
        serde_json::from_value(decode_b64_json("the JIT config", jit_config)?).map_err(|e| {
            RunnerError::InvalidJitConfig(format!("not a map of file name to string: {e}"))
        })?;
    let file = |name: &str| {
        map.get(name)
            .ok_or_else(|| RunnerError::InvalidJitConfig(format!("missing {name}")))
            .and_then(|v| decode_b64_json(name, v))
    };
    let runner = file(".runner")?;
    let creds = file(".credentials")?;
    let missing = |what: &str| RunnerError::InvalidJitConfig(format!("missing {what}"));
    let agent_id = get_ci(&runner, "agentId")
        .and_then(Value::as_i64)
        .ok_or_else(|| missing(".runner agentId"))?;
    let agent_name = get_ci(&runner, "agentName")
        .and_then(Value::as_str)
        .ok_or_else(|| missing(".runner agentName"))?
        .to_owned();
    let server_url = get_ci(&runner, "serverUrl")
        .and_then(Value::as_str)
        .filter(|s| s.starts_with("http://") || s.starts_with("https://"))
        .ok_or_else(|| missing(".runner serverUrl (http/https URL)"))?
        .trim_end_matches('/')
        .to_owned();
    let work_folder = get_ci(&runner, "workFolder")
        .and_then(Value::as_str)
        .unwrap_or("_work")
        .to_owned();
    let secret = get_ci(&creds, "data")
        .and_then(|d| get_ci(d, "simRunnerSecret"))
        .and_then(Value::as_str)
        .ok_or_else(|| missing(".credentials data.simRunnerSecret"))?
        .to_owned();
    Ok(JitRunnerInfo {
        agent_id,
        agent_name,
        server_url,
        work_folder,
        secret,
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JobIn {
    runner_request_id: i64,
    #[serde(default)]
    job_id: String,
    #[serde(default)]
    duration_ms: u64,
    #[serde(default)]
    result: String,
}

struct Api {
    http: reqwest::Client,
    base: String,
    secret: String,
    timeout: Duration,
}

impl Api {
    async fn call(
        &self,
        what: &'static str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        extra_timeout: Duration,
    ) -> Result<(u16, String), RunnerError> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.secret)
            .timeout(self.timeout + extra_timeout);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(RunnerError::Http)?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(RunnerError::Http)?;
        match status {
            200..=299 => Ok((status, text)),
            404 => Err(RunnerError::Removed),
            _ => Err(RunnerError::Rejected {
                what,
                status,
                body: text,
            }),
        }
    }
}

/// Run the simulated runner for one job. See the module docs for the protocol.
pub async fn run(jit_config: &str, opts: RunnerOptions) -> Result<RunnerOutcome, RunnerError> {
    let info = decode_jit_config(jit_config)?;
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .map_err(RunnerError::Http)?;
    let api = Api {
        http,
        base: format!("{}/_sim/runner/{}", info.server_url, info.agent_id),
        secret: info.secret.clone(),
        timeout: opts.request_timeout,
    };
    let (_, text) = api
        .call(
            "online",
            reqwest::Method::POST,
            "/online",
            None,
            Duration::ZERO,
        )
        .await?;
    let behavior: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let behavior = behavior
        .get("behavior")
        .and_then(Value::as_str)
        .unwrap_or("normal")
        .to_owned();
    if behavior == "neverOnline" {
        tracing::info!(runner = %info.agent_name, "injected fault: never coming online");
        let never = std::future::pending::<Infallible>().await;
        match never {}
    }
    if behavior == "crashBeforeJob" {
        tracing::info!(runner = %info.agent_name, "injected fault: crashing before the job");
        return Err(RunnerError::CrashedBeforeJob);
    }
    let started = tokio::time::Instant::now();
    let job: JobIn = loop {
        if let Some(max) = opts.max_wait_for_job
            && started.elapsed() >= max
        {
            return Err(RunnerError::NoJob);
        }
        let wait = opts.job_poll;
        let path = format!("/job?waitMs={}", wait.as_millis());
        let (status, text) = api
            .call("fetch job", reqwest::Method::GET, &path, None, wait)
            .await?;
        if status == 200 {
            break serde_json::from_str(&text).map_err(|e| RunnerError::Rejected {
                what: "fetch job",
                status,
                body: format!("undecodable job ({e}): {text}"),
            })?;
        }
    };
    let duration = Duration::from_millis(job.duration_ms);
    let run_for = if behavior == "crashMidJob" {
        duration / 2
    } else {
        duration
    };
    let end = crate::state::add_or_far(tokio::time::Instant::now(), run_for);
    loop {
        let now = tokio::time::Instant::now();
        if now >= end {
            break;
        }
        tokio::time::sleep((end - now).min(opts.heartbeat_interval)).await;
        if tokio::time::Instant::now() < end || behavior != "crashMidJob" {
            api.call(
                "heartbeat",
                reqwest::Method::POST,
                "/heartbeat",
                None,
                Duration::ZERO,
            )
            .await?;
        }
    }
    if behavior == "crashMidJob" {
        tracing::info!(runner = %info.agent_name, "injected fault: crashing mid-job");
        return Err(RunnerError::Crashed);
    }
    let result = if behavior == "failJob" {
        tracing::info!(runner = %info.agent_name, "injected fault: failing the job");
        "failed".to_owned()
    } else if job.result.is_empty() {
        "succeeded".to_owned()
    } else {
        job.result
    };
    api.call(
        "complete",
        reqwest::Method::POST,
        "/complete",
        Some(json!({"result": result})),
        Duration::ZERO,
    )
    .await?;
    Ok(RunnerOutcome {
        runner_id: info.agent_id,
        runner_name: info.agent_name,
        request_id: job.runner_request_id,
        job_id: job.job_id,
        result,
    })
}
