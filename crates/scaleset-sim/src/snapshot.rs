//! Serializable views of the simulator: [`SimState`] and [`RequestLogEntry`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::AssignmentMode;
use crate::faults::EndpointClass;
use crate::state::{JobPhase, State, Statistics};

/// A snapshot of the whole simulator (`GET /_sim/state`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SimState {
    /// Assignment mode.
    pub mode: AssignmentMode,
    /// Runner groups.
    pub runner_groups: Vec<RunnerGroupState>,
    /// Scale sets with their statistics.
    pub scale_sets: Vec<ScaleSetState>,
    /// Active sessions (not including foreign sessions).
    pub sessions: Vec<SessionState>,
    /// Registered runners.
    pub runners: Vec<RunnerState>,
    /// Every job ever enqueued.
    pub jobs: Vec<JobState>,
    /// Message-queue long polls currently held open.
    #[serde(default)]
    pub in_flight_polls: usize,
    /// Runners ever registered (one per JIT config minted), including removed ones.
    #[serde(default)]
    pub runners_registered: u64,
    /// `None` while the timer task (assignment timeouts, re-offers, dead runners, idle
    /// sessions) runs; the panic message if it died. Timers stop when it is set.
    #[serde(default)]
    pub reaper_error: Option<String>,
}

impl SimState {
    /// The scale set with this id.
    pub fn scale_set(&self, id: i64) -> Option<&ScaleSetState> {
        self.scale_sets.iter().find(|s| s.id == id)
    }

    /// The scale set with this name (case-insensitive).
    pub fn scale_set_by_name(&self, name: &str) -> Option<&ScaleSetState> {
        self.scale_sets
            .iter()
            .find(|s| s.name.eq_ignore_ascii_case(name))
    }

    /// The job with this runner request id.
    pub fn job(&self, request_id: i64) -> Option<&JobState> {
        self.jobs.iter().find(|j| j.request_id == request_id)
    }

    /// Number of jobs in a status (`queued`, `available`, `assigned`, `running`, `completed`).
    pub fn jobs_in(&self, status: &str) -> usize {
        self.jobs.iter().filter(|j| j.status == status).count()
    }
}

/// A runner group.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunnerGroupState {
    /// Id (`1` is the default group).
    pub id: i64,
    /// Name.
    pub name: String,
}

/// A scale set.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScaleSetState {
    /// Id.
    pub id: i64,
    /// Name.
    pub name: String,
    /// Runner group id.
    pub runner_group_id: i64,
    /// Label names.
    pub labels: Vec<String>,
    /// Last `X-ScaleSetMaxCapacity` seen (`None` before the first poll, treated as 0).
    pub max_capacity: Option<u32>,
    /// Current statistics.
    pub statistics: Statistics,
    /// Id of the active session, if any.
    pub session_id: Option<String>,
    /// Owner of a foreign session holding the scale set (fault), if any.
    pub foreign_session_owner: Option<String>,
    /// Job events not yet packed into a message (including those held back by
    /// `SimConfig::job_message_delay`).
    pub pending_events: usize,
    /// Ids of messages delivered or packed but not yet deleted.
    pub unacked_messages: Vec<i64>,
}

/// A session.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionState {
    /// Session id.
    pub session_id: String,
    /// Scale set id.
    pub scale_set_id: i64,
    /// Owner name.
    pub owner_name: String,
}

/// A runner.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunnerState {
    /// Runner (agent) id.
    pub id: i64,
    /// Runner name.
    pub name: String,
    /// Scale set id.
    pub scale_set_id: i64,
    /// Whether the simulated runner came online.
    pub online: bool,
    /// Request id of the job it runs.
    pub job_request_id: Option<i64>,
}

/// A job.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobState {
    /// `runnerRequestId`.
    pub request_id: i64,
    /// `jobId` (a string on the wire).
    pub job_id: String,
    /// Requested labels.
    pub labels: Vec<String>,
    /// `queued`, `available`, `assigned`, `running` or `completed`.
    pub status: String,
    /// Scale set the job is offered/assigned to.
    pub scale_set_id: Option<i64>,
    /// Runner running (or that ran) the job.
    pub runner_id: Option<i64>,
    /// Final result once completed (`succeeded`, `failed`, `canceled`, ...).
    pub result: Option<String>,
    /// How many times the job was canceled and requeued.
    pub requeues: u32,
    /// When the job was first enqueued (kept across requeues).
    #[serde(default, serialize_with = "crate::state::ser_ts")]
    pub queued_at: jiff::Timestamp,
    /// When a runner took the job (`JobStarted`); `None` until then.
    #[serde(default, serialize_with = "crate::state::ser_opt_ts")]
    pub started_at: Option<jiff::Timestamp>,
    /// When the job completed; `None` until then.
    #[serde(default, serialize_with = "crate::state::ser_opt_ts")]
    pub finished_at: Option<jiff::Timestamp>,
}

/// One entry of the request log (`GET /_sim/requests`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestLogEntry {
    /// Sequence number, in arrival order; the log is sorted by it (oldest first), so a long
    /// poll answered late sits where it arrived.
    pub seq: u64,
    /// RFC 3339 time the request arrived (UTC, 7 fractional digits, `Z`).
    pub time: String,
    /// HTTP method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Raw query string, if any.
    pub query: Option<String>,
    /// Endpoint class.
    pub class: EndpointClass,
    /// Status answered; 0 when the connection was dropped by a `dropConnection` fault; 499
    /// when the client closed the connection before an answer (an abandoned long poll is
    /// logged when the server notices, in its arrival place; a request cut off by a hard
    /// shutdown, which answers 503, is logged as 499 too).
    pub status: u16,
    /// Selected headers (`authorization` holds only a known scheme: `Bearer`, `RemoteAuth`,
    /// `token` or `Basic`; any other value is logged as `<redacted>`).
    pub headers: BTreeMap<String, String>,
    /// Name of the fault applied, if any.
    pub fault: Option<String>,
    /// Milliseconds until the response head was ready.
    pub duration_ms: u64,
}

pub(crate) fn snapshot(st: &State) -> SimState {
    let runner_groups = st
        .groups
        .values()
        .map(|g| RunnerGroupState {
            id: g.id,
            name: g.name.clone(),
        })
        .collect();
    let scale_sets = st
        .scale_sets
        .values()
        .map(|ss| ScaleSetState {
            id: ss.id,
            name: ss.name.clone(),
            runner_group_id: ss.group_id,
            labels: ss.labels.iter().map(|l| l.name.clone()).collect(),
            max_capacity: ss.max_capacity,
            statistics: st.stats(ss.id),
            session_id: ss.session.map(|s| s.to_string()),
            foreign_session_owner: ss.foreign_owner.clone(),
            pending_events: ss.pending.len() + ss.delayed.len(),
            unacked_messages: ss.messages.iter().map(|m| m.id).collect(),
        })
        .collect();
    let sessions = st
        .sessions
        .values()
        .map(|s| SessionState {
            session_id: s.id.to_string(),
            scale_set_id: s.scale_set,
            owner_name: s.owner.clone(),
        })
        .collect();
    let runners = st
        .runners
        .values()
        .map(|r| RunnerState {
            id: r.id,
            name: r.name.clone(),
            scale_set_id: r.scale_set,
            online: r.online,
            job_request_id: r.job,
        })
        .collect();
    let jobs = st
        .jobs
        .values()
        .map(|j| JobState {
            request_id: j.id,
            job_id: j.job_id.clone(),
            labels: j.labels.clone(),
            status: match j.phase {
                JobPhase::Queued => "queued",
                JobPhase::Available(_) => "available",
                JobPhase::Assigned(_) => "assigned",
                JobPhase::Running(_) => "running",
                JobPhase::Completed => "completed",
            }
            .to_owned(),
            scale_set_id: j.scale_set,
            runner_id: j.runner.as_ref().map(|r| r.0),
            result: if j.phase == JobPhase::Completed {
                j.final_result.clone()
            } else {
                None
            },
            requeues: j.requeues,
            queued_at: j.queue_time,
            started_at: j.runner_assign_time,
            finished_at: if j.phase == JobPhase::Completed {
                j.finish_time
            } else {
                None
            },
        })
        .collect();
    SimState {
        mode: st.mode,
        runner_groups,
        scale_sets,
        sessions,
        runners,
        jobs,
        in_flight_polls: 0,
        runners_registered: st.runners_registered(),
        reaper_error: None,
    }
}
