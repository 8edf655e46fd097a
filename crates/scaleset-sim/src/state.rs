//! The simulator's state model: runner groups, scale sets, sessions, runners, jobs and the
//! per-scale-set message queues. Everything lives behind one `std::sync::Mutex` that is never
//! held across an `.await`; waiters use per-scale-set [`Notify`]s.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::time::Instant;
use uuid::Uuid;

use crate::auth::random_token;
use crate::config::{AssignmentMode, SimConfig};

/// The zero time the service writes for "unset" (.NET `DateTime.MinValue`).
pub(crate) const ZERO_TIME: &str = "0001-01-01T00:00:00.0000000Z";

/// A timestamp the way the service writes it: UTC, exactly 7 fractional digits (.NET ticks,
/// truncated) and `Z`, e.g. `2025-01-01T10:00:00.1234567Z`.
pub(crate) fn fmt_ts(t: jiff::Timestamp) -> String {
    let dt = jiff::tz::Offset::UTC.to_datetime(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:07}Z",
        dt.year(),
        dt.month(),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second(),
        dt.subsec_nanosecond() / 100
    )
}

/// [`fmt_ts`] for a serde field.
pub(crate) fn ser_ts<S: serde::Serializer>(t: &jiff::Timestamp, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&fmt_ts(*t))
}

/// [`fmt_ts`] for an optional serde field (`null` when unset).
pub(crate) fn ser_opt_ts<S: serde::Serializer>(
    t: &Option<jiff::Timestamp>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&fmt_ts(*t)),
        None => s.serialize_none(),
    }
}

pub(crate) fn ts(t: Option<jiff::Timestamp>) -> String {
    t.map_or_else(|| ZERO_TIME.to_owned(), fmt_ts)
}

/// Time from `since` to `now`, zero when `since` is later (never panics, unlike `now - since`
/// or `since + timeout`, whatever the configured durations).
pub(crate) fn elapsed(now: Instant, since: Instant) -> Duration {
    now.saturating_duration_since(since)
}

/// `t + d`, or a far-future instant when that overflows (a huge TTL means "never").
pub(crate) fn add_or_far(t: Instant, d: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    t.checked_add(d).or_else(|| t.checked_add(FAR)).unwrap_or(t)
}

/// Scale-set statistics, exactly the seven counters of the wire format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Statistics {
    /// Offered (ghes `JobAvailable`) and not yet acquired.
    pub total_available_jobs: i64,
    /// Acquired through `acquirejobs` and not completed (ghes only).
    pub total_acquired_jobs: i64,
    /// Assigned to the scale set and not completed (waiting + running).
    pub total_assigned_jobs: i64,
    /// Running on a runner.
    pub total_running_jobs: i64,
    /// Runners registered in the scale set.
    pub total_registered_runners: i64,
    /// Runners with a job.
    pub total_busy_runners: i64,
    /// Registered runners without a job.
    pub total_idle_runners: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) enum RunnerBehavior {
    Normal,
    NeverOnline,
    CrashMidJob,
    CrashBeforeJob,
    FailJob,
}

pub(crate) struct Group {
    pub id: i64,
    pub name: String,
}

pub(crate) struct Label {
    pub name: String,
    pub kind: String,
}

pub(crate) struct Message {
    pub id: i64,
    pub body: String,
    /// Last delivery; `None` before the first.
    pub delivered_at: Option<Instant>,
}

pub(crate) struct ScaleSet {
    pub id: i64,
    pub name: String,
    pub group_id: i64,
    pub labels: Vec<Label>,
    pub runner_setting: serde_json::Map<String, Value>,
    pub created_on: jiff::Timestamp,
    /// Last `X-ScaleSetMaxCapacity` seen; `None` before the first poll (treated as 0).
    pub max_capacity: Option<u32>,
    /// Non-completed jobs offered/assigned to this scale set.
    pub jobs: BTreeSet<i64>,
    pub runners: BTreeSet<i64>,
    pub pending: Vec<Value>,
    /// Job messages held back until their time ([`SimConfig::job_message_delay`]), oldest
    /// first (one delay for all, so this is also the order they fall due).
    pub delayed: VecDeque<(Instant, Value)>,
    pub messages: VecDeque<Message>,
    pub session: Option<Uuid>,
    pub foreign_owner: Option<String>,
    pub notify: Arc<Notify>,
}

pub(crate) struct Session {
    pub id: Uuid,
    pub scale_set: i64,
    pub owner: String,
    pub token: String,
    pub token_expires: Instant,
    pub mq_url: String,
    /// Last poll, message DELETE, acquire or refresh (or the creation).
    pub last_active: Instant,
    /// Message polls in flight.
    pub polls: u32,
}

pub(crate) struct Runner {
    pub id: i64,
    pub name: String,
    pub scale_set: i64,
    pub secret: String,
    pub online: bool,
    pub job: Option<i64>,
    pub last_heartbeat: Instant,
    pub behavior: Option<RunnerBehavior>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JobPhase {
    Queued,
    Available(i64),
    Assigned(i64),
    Running(i64),
    Completed,
}

pub(crate) struct Job {
    pub id: i64,
    pub job_id: String,
    pub labels: Vec<String>,
    pub duration: Duration,
    pub result: String,
    pub phase: JobPhase,
    pub acquired: bool,
    pub requeues: u32,
    pub workflow_run_id: i64,
    pub display_name: String,
    pub queue_time: jiff::Timestamp,
    pub scale_set_assign_time: Option<jiff::Timestamp>,
    pub runner_assign_time: Option<jiff::Timestamp>,
    pub finish_time: Option<jiff::Timestamp>,
    pub assigned_at: Option<Instant>,
    /// When the job was last offered (`JobAvailable`, ghes mode) and not yet acquired.
    pub offered_at: Option<Instant>,
    pub runner: Option<(i64, String)>,
    pub final_result: Option<String>,
    pub scale_set: Option<i64>,
}

/// Error raised by state operations; mapped to HTTP by the server.
#[derive(Debug)]
pub(crate) struct OpError {
    pub status: u16,
    pub type_name: &'static str,
    pub message: String,
}

pub(crate) fn op_err(status: u16, type_name: &'static str, message: impl Into<String>) -> OpError {
    OpError {
        status,
        type_name,
        message: message.into(),
    }
}

pub(crate) const EX_SS_NOT_FOUND: &str =
    "GitHub.Actions.Runtime.WebApi.RunnerScaleSetNotFoundException, GitHub.Actions.Runtime.WebApi";
pub(crate) const EX_SESSION_CONFLICT: &str = "GitHub.Actions.Runtime.WebApi.RunnerScaleSetSessionConflictException, GitHub.Actions.Runtime.WebApi";
pub(crate) const EX_SESSION_EXPIRED: &str = "GitHub.Actions.Runtime.WebApi.RunnerScaleSetSessionExpiredException, GitHub.Actions.Runtime.WebApi";
pub(crate) const EX_RUNNER_ADMIN: &str =
    "GitHub.Actions.Runtime.WebApi.RunnerAdminException, GitHub.Actions.Runtime.WebApi";
pub(crate) const EX_AGENT_EXISTS: &str =
    "GitHub.DistributedTask.WebApi.AgentExistsException, GitHub.DistributedTask.WebApi";
pub(crate) const EX_AGENT_NOT_FOUND: &str =
    "GitHub.DistributedTask.WebApi.AgentNotFoundException, GitHub.DistributedTask.WebApi";
pub(crate) const EX_JOB_STILL_RUNNING: &str =
    "GitHub.DistributedTask.WebApi.JobStillRunningException, GitHub.DistributedTask.WebApi";
pub(crate) const EX_SS_EXISTS: &str =
    "GitHub.Actions.Runtime.WebApi.RunnerScaleSetExistsException, GitHub.Actions.Runtime.WebApi";
pub(crate) const EX_GROUP_NOT_FOUND: &str =
    "GitHub.DistributedTask.WebApi.RunnerGroupNotFoundException, GitHub.DistributedTask.WebApi";
pub(crate) const EX_ARGUMENT: &str = "System.ArgumentException";
pub(crate) const EX_UNAUTHORIZED: &str = "Microsoft.VisualStudio.Services.Common.VssUnauthorizedException, Microsoft.VisualStudio.Services.Common";
pub(crate) const EX_TOKEN_EXPIRED: &str = "GitHub.Actions.Runtime.WebApi.MessageQueueTokenExpiredException, GitHub.Actions.Runtime.WebApi";

pub(crate) struct State {
    pub mode: AssignmentMode,
    pub cfg: SimConfig,
    pub base_url: String,
    pub tenant_url: String,
    pub groups: BTreeMap<i64, Group>,
    pub scale_sets: BTreeMap<i64, ScaleSet>,
    pub sessions: HashMap<Uuid, Session>,
    pub queue_tokens: HashMap<String, Uuid>,
    pub runners: BTreeMap<i64, Runner>,
    pub jobs: BTreeMap<i64, Job>,
    pub queued: BTreeSet<i64>,
    pub install_tokens: HashMap<String, Instant>,
    pub reg_tokens: HashMap<String, Instant>,
    pub admin_generation: u64,
    pub runner_faults: VecDeque<RunnerBehavior>,
    pub empty_mq_url_next: u32,
    /// Revision of what [`crate::SimState`] shows from this state: bumped by changes that
    /// bookkeeping paths (polls, acks, acquires) may or may not make, so they wake
    /// `wait_until` waiters only when something changed (see `Shared::with_state_if_changed`).
    pub rev: u64,
    /// Completed jobs, oldest completion first; beyond `completed_jobs_capacity` the oldest
    /// are dropped from `jobs`.
    completed: VecDeque<i64>,
    next_group_id: i64,
    next_scale_set_id: i64,
    next_runner_id: i64,
    next_job_id: i64,
    next_message_id: i64,
    next_run_id: i64,
}

impl State {
    /// How many runners were ever registered (one per JIT config minted).
    pub(crate) fn runners_registered(&self) -> u64 {
        u64::try_from(self.next_runner_id - 1).unwrap_or(0)
    }

    pub(crate) fn new(cfg: SimConfig, base_url: String) -> Self {
        let mut groups = BTreeMap::new();
        groups.insert(
            1,
            Group {
                id: 1,
                name: "Default".into(),
            },
        );
        Self {
            mode: cfg.mode,
            tenant_url: format!("{base_url}/tenant/1/"),
            cfg,
            base_url,
            groups,
            scale_sets: BTreeMap::new(),
            sessions: HashMap::new(),
            queue_tokens: HashMap::new(),
            runners: BTreeMap::new(),
            jobs: BTreeMap::new(),
            queued: BTreeSet::new(),
            install_tokens: HashMap::new(),
            reg_tokens: HashMap::new(),
            admin_generation: 0,
            runner_faults: VecDeque::new(),
            empty_mq_url_next: 0,
            rev: 0,
            completed: VecDeque::new(),
            next_group_id: 2,
            next_scale_set_id: 1,
            next_runner_id: 1,
            next_job_id: 1,
            next_message_id: 1,
            next_run_id: 1000,
        }
    }

    // ----- runner groups -----

    pub(crate) fn group_by_name(&self, name: &str) -> Option<&Group> {
        self.groups
            .values()
            .find(|g| g.name.eq_ignore_ascii_case(name))
    }

    pub(crate) fn add_group(&mut self, name: &str) -> Result<i64, OpError> {
        if name.trim().is_empty() {
            return Err(op_err(
                400,
                EX_ARGUMENT,
                "runner group name must not be empty",
            ));
        }
        if let Some(g) = self.group_by_name(name) {
            return Ok(g.id);
        }
        let id = self.next_group_id;
        self.next_group_id += 1;
        self.groups.insert(
            id,
            Group {
                id,
                name: name.to_owned(),
            },
        );
        Ok(id)
    }

    pub(crate) fn group_json(&self, g: &Group) -> Value {
        let size = self
            .scale_sets
            .values()
            .filter(|s| s.group_id == g.id)
            .count();
        json!({"id": g.id, "name": g.name, "size": size, "isDefaultGroup": g.id == 1})
    }

    // ----- scale sets -----

    pub(crate) fn stats(&self, ss_id: i64) -> Statistics {
        let mut st = Statistics::default();
        let Some(ss) = self.scale_sets.get(&ss_id) else {
            return st;
        };
        for jid in &ss.jobs {
            let Some(j) = self.jobs.get(jid) else {
                continue;
            };
            match j.phase {
                JobPhase::Available(_) => st.total_available_jobs += 1,
                JobPhase::Assigned(_) => st.total_assigned_jobs += 1,
                JobPhase::Running(_) => {
                    st.total_assigned_jobs += 1;
                    st.total_running_jobs += 1;
                }
                JobPhase::Queued | JobPhase::Completed => {}
            }
            if j.acquired && matches!(j.phase, JobPhase::Assigned(_) | JobPhase::Running(_)) {
                st.total_acquired_jobs += 1;
            }
        }
        for rid in &ss.runners {
            if let Some(r) = self.runners.get(rid) {
                st.total_registered_runners += 1;
                if r.job.is_some() {
                    st.total_busy_runners += 1;
                } else {
                    st.total_idle_runners += 1;
                }
            }
        }
        st
    }

    pub(crate) fn scale_set_json(&self, ss: &ScaleSet) -> Value {
        let group_name = self
            .groups
            .get(&ss.group_id)
            .map(|g| g.name.clone())
            .unwrap_or_default();
        let labels: Vec<Value> = ss
            .labels
            .iter()
            .map(|l| json!({"type": l.kind, "name": l.name}))
            .collect();
        json!({
            "id": ss.id,
            "name": ss.name,
            "runnerGroupId": ss.group_id,
            "runnerGroupName": group_name,
            "labels": labels,
            "RunnerSetting": Value::Object(ss.runner_setting.clone()),
            "createdOn": fmt_ts(ss.created_on),
            "runnerJitConfigUrl": format!("{}_apis/runtime/runnerscalesets/{}/generatejitconfig", self.tenant_url, ss.id),
            "statistics": self.stats(ss.id),
        })
    }

    pub(crate) fn find_scale_set(&self, group: Option<i64>, name: &str) -> Option<&ScaleSet> {
        self.scale_sets
            .values()
            .find(|s| s.name.eq_ignore_ascii_case(name) && group.is_none_or(|g| g == s.group_id))
    }

    pub(crate) fn create_scale_set(
        &mut self,
        name: String,
        group_id: i64,
        labels: Vec<Label>,
        runner_setting: serde_json::Map<String, Value>,
    ) -> Result<i64, OpError> {
        if name.trim().is_empty() {
            return Err(op_err(
                400,
                EX_ARGUMENT,
                "runner scale set name must not be empty",
            ));
        }
        if !self.groups.contains_key(&group_id) {
            return Err(op_err(
                404,
                EX_GROUP_NOT_FOUND,
                format!("runner group {group_id} not found"),
            ));
        }
        if self.find_scale_set(Some(group_id), &name).is_some() {
            return Err(op_err(
                409,
                EX_SS_EXISTS,
                format!(
                    "A runner scale set named {name} already exists in runner group {group_id}."
                ),
            ));
        }
        let labels = if labels.is_empty() {
            vec![Label {
                name: name.clone(),
                kind: "System".into(),
            }]
        } else {
            labels
        };
        let id = self.next_scale_set_id;
        self.next_scale_set_id += 1;
        self.scale_sets.insert(
            id,
            ScaleSet {
                id,
                name,
                group_id,
                labels,
                runner_setting,
                created_on: jiff::Timestamp::now(),
                max_capacity: None,
                jobs: BTreeSet::new(),
                runners: BTreeSet::new(),
                pending: Vec::new(),
                delayed: VecDeque::new(),
                messages: VecDeque::new(),
                session: None,
                foreign_owner: None,
                notify: Arc::new(Notify::new()),
            },
        );
        self.schedule(Instant::now());
        Ok(id)
    }

    pub(crate) fn update_scale_set(
        &mut self,
        id: i64,
        name: Option<String>,
        group_id: Option<i64>,
        labels: Option<Vec<Label>>,
        runner_setting: Option<serde_json::Map<String, Value>>,
    ) -> Result<(), OpError> {
        if !self.scale_sets.contains_key(&id) {
            return Err(op_err(
                404,
                EX_SS_NOT_FOUND,
                format!("runner scale set {id} not found"),
            ));
        }
        if let Some(g) = group_id
            && !self.groups.contains_key(&g)
        {
            return Err(op_err(
                404,
                EX_GROUP_NOT_FOUND,
                format!("runner group {g} not found"),
            ));
        }
        let cur_group = self.scale_sets.get(&id).map_or(1, |s| s.group_id);
        let cur_name = self
            .scale_sets
            .get(&id)
            .map(|s| s.name.clone())
            .unwrap_or_default();
        let new_group = group_id.unwrap_or(cur_group);
        let new_name = name.clone().unwrap_or(cur_name);
        if let Some(other) = self.find_scale_set(Some(new_group), &new_name)
            && other.id != id
        {
            return Err(op_err(
                409,
                EX_SS_EXISTS,
                format!(
                    "A runner scale set named {new_name} already exists in runner group {new_group}."
                ),
            ));
        }
        if let Some(ss) = self.scale_sets.get_mut(&id) {
            ss.name = new_name;
            ss.group_id = new_group;
            if let Some(l) = labels {
                ss.labels = l;
            }
            if let Some(rs) = runner_setting {
                for (k, v) in rs {
                    ss.runner_setting.insert(k, v);
                }
            }
        }
        self.schedule(Instant::now());
        Ok(())
    }

    pub(crate) fn delete_scale_set(&mut self, id: i64) -> Result<(), OpError> {
        let Some(ss) = self.scale_sets.remove(&id) else {
            return Err(op_err(
                404,
                EX_SS_NOT_FOUND,
                format!("runner scale set {id} not found"),
            ));
        };
        // Offered / assigned jobs go back to the queue; running jobs finish on their runner.
        for jid in &ss.jobs {
            if let Some(j) = self.jobs.get_mut(jid)
                && matches!(j.phase, JobPhase::Available(_) | JobPhase::Assigned(_))
            {
                j.phase = JobPhase::Queued;
                j.acquired = false;
                j.assigned_at = None;
                j.offered_at = None;
                j.scale_set = None;
                j.scale_set_assign_time = None;
                self.queued.insert(*jid);
            }
        }
        for rid in &ss.runners {
            if self.runners.get(rid).is_some_and(|r| r.job.is_none()) {
                self.runners.remove(rid);
            }
        }
        let sessions: Vec<Uuid> = self
            .sessions
            .values()
            .filter(|s| s.scale_set == id)
            .map(|s| s.id)
            .collect();
        for sid in sessions {
            self.remove_session(sid);
        }
        ss.notify.notify_waiters();
        self.schedule(Instant::now());
        Ok(())
    }

    // ----- sessions -----

    pub(crate) fn remove_session(&mut self, sid: Uuid) {
        if let Some(s) = self.sessions.remove(&sid) {
            self.queue_tokens.remove(&s.token);
            if let Some(ss) = self.scale_sets.get_mut(&s.scale_set) {
                if ss.session == Some(sid) {
                    ss.session = None;
                }
                ss.notify.notify_waiters();
            }
        }
    }

    pub(crate) fn session_json(&self, sid: Uuid) -> Value {
        let Some(s) = self.sessions.get(&sid) else {
            return Value::Null;
        };
        let ss = self
            .scale_sets
            .get(&s.scale_set)
            .map(|ss| self.scale_set_json(ss));
        let mut v = json!({
            "sessionId": s.id.to_string(),
            "ownerName": s.owner,
            "messageQueueUrl": s.mq_url,
            "messageQueueAccessToken": s.token,
            "statistics": self.stats(s.scale_set),
        });
        if let (Some(ss), Some(obj)) = (ss, v.as_object_mut()) {
            obj.insert("runnerScaleSet".into(), ss);
        }
        v
    }

    pub(crate) fn create_session(&mut self, ss_id: i64, owner: String) -> Result<Uuid, OpError> {
        let Some(ss) = self.scale_sets.get(&ss_id) else {
            return Err(op_err(
                404,
                EX_SS_NOT_FOUND,
                format!("The runner scale set {ss_id} does not exist."),
            ));
        };
        if ss.session.is_some() || ss.foreign_owner.is_some() {
            return Err(op_err(
                409,
                EX_SESSION_CONFLICT,
                format!(
                    "The actions runner scaleset {} already has an active session.",
                    ss.name
                ),
            ));
        }
        let id = Uuid::new_v4();
        let token = random_token("mqt_");
        let mq_url = if self.empty_mq_url_next > 0 {
            self.empty_mq_url_next -= 1;
            String::new()
        } else {
            format!("{}/_broker/{ss_id}/message?sessionId={id}", self.base_url)
        };
        let owner = if owner.is_empty() {
            "unknown".to_owned()
        } else {
            owner
        };
        self.sessions.insert(
            id,
            Session {
                id,
                scale_set: ss_id,
                owner,
                token: token.clone(),
                token_expires: add_or_far(Instant::now(), self.cfg.queue_token_ttl),
                mq_url,
                last_active: Instant::now(),
                polls: 0,
            },
        );
        self.queue_tokens.insert(token, id);
        if let Some(ss) = self.scale_sets.get_mut(&ss_id) {
            ss.session = Some(id);
        }
        Ok(id)
    }

    pub(crate) fn refresh_session(&mut self, ss_id: i64, sid: Uuid) -> Result<(), OpError> {
        let evicted = || {
            op_err(
                404,
                EX_RUNNER_ADMIN,
                "runner referenced a session ID that doesn't exist in redis",
            )
        };
        let Some(s) = self.sessions.get_mut(&sid) else {
            return Err(evicted());
        };
        if s.scale_set != ss_id {
            return Err(evicted());
        }
        let token = random_token("mqt_");
        let old = std::mem::replace(&mut s.token, token.clone());
        s.token_expires = add_or_far(Instant::now(), self.cfg.queue_token_ttl);
        s.last_active = Instant::now();
        self.queue_tokens.remove(&old);
        self.queue_tokens.insert(token, sid);
        Ok(())
    }

    pub(crate) fn delete_session(&mut self, ss_id: i64, sid: Uuid) -> Result<(), OpError> {
        match self.sessions.get(&sid) {
            Some(s) if s.scale_set == ss_id => {
                self.remove_session(sid);
                Ok(())
            }
            _ => Err(op_err(
                400,
                EX_SESSION_EXPIRED,
                format!("The session identifier {sid} is not valid."),
            )),
        }
    }

    /// Validates a queue token for a scale set; returns the session id.
    pub(crate) fn check_queue_token(
        &self,
        token: &str,
        ss_id: i64,
        now: Instant,
    ) -> Result<Uuid, OpError> {
        let bad = || {
            op_err(
                401,
                EX_TOKEN_EXPIRED,
                "The message queue access token is not valid.",
            )
        };
        let sid = self.queue_tokens.get(token).ok_or_else(bad)?;
        let s = self.sessions.get(sid).ok_or_else(bad)?;
        if s.scale_set != ss_id || !self.scale_sets.contains_key(&ss_id) {
            return Err(bad());
        }
        if now >= s.token_expires {
            return Err(op_err(
                401,
                EX_TOKEN_EXPIRED,
                "The message queue access token has expired.",
            ));
        }
        Ok(*sid)
    }

    /// Records activity of a session (keeps it from idling out); `poll` +1 when a poll
    /// starts, -1 when it ends, 0 otherwise.
    pub(crate) fn touch_session(&mut self, sid: Uuid, poll: i32, now: Instant) {
        if let Some(s) = self.sessions.get_mut(&sid) {
            s.last_active = now;
            s.polls = s.polls.saturating_add_signed(poll);
        }
    }

    // ----- messages -----

    fn emit(&mut self, ss_id: i64, msg: Value, held: bool) {
        self.rev += 1;
        let delay = self.cfg.job_message_delay;
        if let Some(ss) = self.scale_sets.get_mut(&ss_id) {
            if held && !delay.is_zero() {
                // The poll in flight learns of it when it falls due (see `next_message`).
                ss.delayed
                    .push_back((add_or_far(Instant::now(), delay), msg));
            } else {
                ss.pending.push(msg);
            }
            ss.notify.notify_waiters();
        }
    }

    /// Packs pending events into messages (at most `max_jobs_per_message` each) and returns
    /// the message to deliver: the oldest unacknowledged one with id > `last`, else the oldest
    /// unacknowledged one that was never delivered or whose last delivery is at least
    /// `message_visibility_timeout` old. `Err(when)`: nothing to deliver now; `when` is the
    /// next time an unacknowledged message becomes visible again, if any.
    pub(crate) fn next_message(
        &mut self,
        ss_id: i64,
        last: i64,
        now: Instant,
    ) -> Result<Value, Option<Instant>> {
        let per = self.cfg.max_jobs_per_message.max(1);
        let (pending, held_until) = match self.scale_sets.get_mut(&ss_id) {
            Some(ss) => {
                while ss.delayed.front().is_some_and(|(due, _)| *due <= now) {
                    if let Some((_, msg)) = ss.delayed.pop_front() {
                        ss.pending.push(msg);
                    }
                }
                (
                    std::mem::take(&mut ss.pending),
                    ss.delayed.front().map(|(due, _)| *due),
                )
            }
            None => return Err(None),
        };
        if !pending.is_empty() {
            self.rev += 1;
        }
        let mut new_msgs = Vec::new();
        for chunk in pending.chunks(per) {
            let id = self.next_message_id;
            self.next_message_id += 1;
            let body = serde_json::to_string(chunk).unwrap_or_else(|_| "[]".to_owned());
            new_msgs.push(Message {
                id,
                body,
                delivered_at: None,
            });
        }
        let vis = self.cfg.message_visibility_timeout;
        let ss = self.scale_sets.get_mut(&ss_id).ok_or(None)?;
        ss.messages.extend(new_msgs);
        let visible = |m: &Message| m.delivered_at.is_none_or(|t| elapsed(now, t) >= vis);
        let pos = ss
            .messages
            .iter()
            .position(|m| m.id > last)
            .or_else(|| ss.messages.iter().position(visible));
        let Some(m) = pos.and_then(|i| ss.messages.get_mut(i)) else {
            let wake = ss
                .messages
                .iter()
                .filter_map(|m| m.delivered_at)
                .map(|t| add_or_far(t, vis))
                .chain(held_until)
                .min();
            return Err(wake);
        };
        m.delivered_at = Some(now);
        let (id, body) = (m.id, m.body.clone());
        Ok(json!({
            "messageId": id,
            "messageType": "RunnerScaleSetJobMessages",
            "body": body,
            "statistics": self.stats(ss_id),
        }))
    }

    pub(crate) fn ack_message(&mut self, ss_id: i64, message_id: i64) {
        if let Some(ss) = self.scale_sets.get_mut(&ss_id) {
            let before = ss.messages.len();
            ss.messages.retain(|m| m.id != message_id);
            if ss.messages.len() != before {
                self.rev += 1;
            }
        }
    }

    pub(crate) fn set_capacity(&mut self, ss_id: i64, cap: u32) {
        if let Some(ss) = self.scale_sets.get_mut(&ss_id) {
            let grew = ss.max_capacity.is_none_or(|c| cap > c);
            if ss.max_capacity != Some(cap) {
                self.rev += 1;
            }
            ss.max_capacity = Some(cap);
            if grew {
                self.schedule(Instant::now());
            }
        }
    }

    // ----- jobs -----

    pub(crate) fn enqueue(
        &mut self,
        labels: Vec<String>,
        count: u32,
        duration: Duration,
        result: String,
    ) -> Vec<i64> {
        let mut ids = Vec::with_capacity(count as usize);
        let run_id = self.next_run_id;
        self.next_run_id += 1;
        for _ in 0..count {
            let id = self.next_job_id;
            self.next_job_id += 1;
            self.jobs.insert(
                id,
                Job {
                    id,
                    job_id: Uuid::new_v4().to_string(),
                    labels: labels.clone(),
                    duration,
                    result: result.clone(),
                    phase: JobPhase::Queued,
                    acquired: false,
                    requeues: 0,
                    workflow_run_id: run_id,
                    display_name: format!("sim-job-{id}"),
                    queue_time: jiff::Timestamp::now(),
                    scale_set_assign_time: None,
                    runner_assign_time: None,
                    finish_time: None,
                    assigned_at: None,
                    offered_at: None,
                    runner: None,
                    final_result: None,
                    scale_set: None,
                },
            );
            self.queued.insert(id);
            ids.push(id);
        }
        self.schedule(Instant::now());
        ids
    }

    pub(crate) fn job_message(&self, j: &Job, kind: &str) -> Value {
        let mut v = json!({
            "messageType": kind,
            "runnerRequestId": j.id,
            "repositoryName": self.cfg.repo,
            "ownerName": self.cfg.org,
            "jobId": j.job_id,
            "jobWorkflowRef": format!("{}/{}/.github/workflows/sim.yml@refs/heads/main", self.cfg.org, self.cfg.repo),
            "jobDisplayName": j.display_name,
            "workflowRunId": j.workflow_run_id,
            "eventName": "push",
            "requestLabels": j.labels,
            "queueTime": fmt_ts(j.queue_time),
            "scaleSetAssignTime": ts(j.scale_set_assign_time),
            "runnerAssignTime": ts(j.runner_assign_time),
            "finishTime": ts(j.finish_time),
        });
        if let Some(obj) = v.as_object_mut() {
            match kind {
                "JobAvailable" => {
                    if let Some(ss) = j.scale_set {
                        obj.insert(
                            "acquireJobUrl".into(),
                            json!(format!(
                                "{}_apis/runtime/runnerscalesets/{ss}/acquirejobs",
                                self.tenant_url
                            )),
                        );
                    }
                }
                "JobStarted" | "JobCompleted" => {
                    let (rid, rname) = j.runner.clone().unwrap_or((0, String::new()));
                    obj.insert("runnerId".into(), json!(rid));
                    obj.insert("runnerName".into(), json!(rname));
                    if kind == "JobCompleted" {
                        obj.insert(
                            "result".into(),
                            json!(j.final_result.clone().unwrap_or_default()),
                        );
                    }
                }
                _ => {}
            }
        }
        v
    }

    fn emit_job(&mut self, jid: i64, kind: &str) {
        let Some(j) = self.jobs.get(&jid) else { return };
        let Some(ss) = j.scale_set else { return };
        let msg = self.job_message(j, kind);
        self.emit(ss, msg, matches!(kind, "JobStarted" | "JobCompleted"));
    }

    /// Matches queued jobs to scale sets with room (capacity minus non-completed jobs).
    pub(crate) fn schedule(&mut self, now: Instant) {
        if self.queued.is_empty() {
            return;
        }
        let mut room: HashMap<i64, usize> = HashMap::new();
        let mut label_sets: Vec<(i64, HashSet<String>)> = Vec::new();
        let mut by_label: HashMap<String, Vec<usize>> = HashMap::new();
        for ss in self.scale_sets.values() {
            let cap = ss.max_capacity.unwrap_or(0) as usize;
            let free = cap.saturating_sub(ss.jobs.len());
            if free == 0 {
                continue;
            }
            room.insert(ss.id, free);
            let set: HashSet<String> = ss.labels.iter().map(|l| l.name.to_lowercase()).collect();
            let idx = label_sets.len();
            for l in &set {
                by_label.entry(l.clone()).or_default().push(idx);
            }
            label_sets.push((ss.id, set));
        }
        if room.is_empty() {
            return;
        }
        let all: Vec<usize> = (0..label_sets.len()).collect();
        let queued: Vec<i64> = self.queued.iter().copied().collect();
        let wall = jiff::Timestamp::now();
        for jid in queued {
            if room.is_empty() {
                break;
            }
            let Some(job) = self.jobs.get(&jid) else {
                continue;
            };
            let wanted: Vec<String> = job.labels.iter().map(|l| l.to_lowercase()).collect();
            let candidates = match wanted.first() {
                None => &all,
                Some(first) => match by_label.get(first) {
                    Some(c) => c,
                    None => continue,
                },
            };
            let chosen = candidates.iter().find_map(|&i| {
                let (ss_id, set) = &label_sets[i];
                (room.contains_key(ss_id) && wanted.iter().all(|w| set.contains(w)))
                    .then_some(*ss_id)
            });
            let Some(ss_id) = chosen else { continue };
            if let Some(r) = room.get_mut(&ss_id) {
                *r -= 1;
                if *r == 0 {
                    room.remove(&ss_id);
                }
            }
            self.queued.remove(&jid);
            if let Some(ss) = self.scale_sets.get_mut(&ss_id) {
                ss.jobs.insert(jid);
            }
            let ghes = self.mode == AssignmentMode::Ghes;
            if let Some(j) = self.jobs.get_mut(&jid) {
                j.scale_set = Some(ss_id);
                if ghes {
                    j.phase = JobPhase::Available(ss_id);
                    j.offered_at = Some(now);
                } else {
                    j.phase = JobPhase::Assigned(ss_id);
                    j.assigned_at = Some(now);
                    j.scale_set_assign_time = Some(wall);
                }
            }
            self.emit_job(jid, if ghes { "JobAvailable" } else { "JobAssigned" });
        }
    }

    /// Acquires jobs offered to a scale set; returns the ids now held by it.
    pub(crate) fn acquire(&mut self, ss_id: i64, ids: &[i64]) -> Vec<i64> {
        let now = Instant::now();
        let wall = jiff::Timestamp::now();
        let mut out = Vec::new();
        for &id in ids {
            let Some(j) = self.jobs.get_mut(&id) else {
                continue;
            };
            match j.phase {
                JobPhase::Available(s) if s == ss_id => {
                    j.phase = JobPhase::Assigned(ss_id);
                    j.acquired = true;
                    j.offered_at = None;
                    j.assigned_at = Some(now);
                    j.scale_set_assign_time = Some(wall);
                    out.push(id);
                    self.emit_job(id, "JobAssigned");
                }
                JobPhase::Assigned(s) | JobPhase::Running(s) if s == ss_id && j.acquired => {
                    out.push(id);
                }
                _ => {}
            }
        }
        out
    }

    fn complete_job(&mut self, jid: i64, result: &str) {
        let Some(j) = self.jobs.get_mut(&jid) else {
            return;
        };
        j.phase = JobPhase::Completed;
        j.final_result = Some(result.to_owned());
        self.completed.push_back(jid);
        j.finish_time = Some(jiff::Timestamp::now());
        let ss = j.scale_set;
        let runner = j.runner.as_ref().map(|r| r.0);
        self.emit_job(jid, "JobCompleted");
        if let Some(ss) = ss.and_then(|s| self.scale_sets.get_mut(&s)) {
            ss.jobs.remove(&jid);
        }
        if let Some(rid) = runner {
            self.remove_runner_entry(rid);
        }
        self.prune_completed();
        self.schedule(Instant::now());
    }

    /// Drops the oldest completed jobs beyond `completed_jobs_capacity`.
    fn prune_completed(&mut self) {
        let cap = self.cfg.completed_jobs_capacity.max(1);
        while self.completed.len() > cap {
            let Some(old) = self.completed.pop_front() else {
                break;
            };
            if self
                .jobs
                .get(&old)
                .is_some_and(|j| j.phase == JobPhase::Completed)
            {
                self.jobs.remove(&old);
            }
        }
    }

    /// Stores an installation token, dropping the expired ones first.
    pub(crate) fn insert_install_token(&mut self, token: String, expires: Instant, now: Instant) {
        self.install_tokens.retain(|_, exp| *exp > now);
        self.install_tokens.insert(token, expires);
    }

    /// Stores a registration token, dropping the expired ones first.
    pub(crate) fn insert_reg_token(&mut self, token: String, expires: Instant, now: Instant) {
        self.reg_tokens.retain(|_, exp| *exp > now);
        self.reg_tokens.insert(token, expires);
    }

    /// Cancels an assigned job nobody took: `JobCompleted` canceled, then requeue.
    fn cancel_and_requeue(&mut self, jid: i64) {
        let max = self.cfg.max_requeues;
        let Some(j) = self.jobs.get_mut(&jid) else {
            return;
        };
        j.final_result = Some("canceled".into());
        j.finish_time = Some(jiff::Timestamp::now());
        let ss = j.scale_set;
        self.emit_job(jid, "JobCompleted");
        if let Some(ss) = ss.and_then(|s| self.scale_sets.get_mut(&s)) {
            ss.jobs.remove(&jid);
        }
        let Some(j) = self.jobs.get_mut(&jid) else {
            return;
        };
        j.requeues += 1;
        if j.requeues > max {
            j.phase = JobPhase::Completed;
            self.completed.push_back(jid);
            self.prune_completed();
            return;
        }
        j.phase = JobPhase::Queued;
        j.acquired = false;
        j.assigned_at = None;
        j.scale_set = None;
        j.scale_set_assign_time = None;
        j.finish_time = None;
        j.final_result = None;
        self.queued.insert(jid);
    }

    /// Takes back an offered job nobody acquired (ghes): it returns to the queue silently (no
    /// `JobCompleted`: it was never assigned, and it does not count as a requeue) and the
    /// next [`State::schedule`] offers it again with a new `JobAvailable`.
    fn reoffer(&mut self, jid: i64) {
        let Some(j) = self.jobs.get_mut(&jid) else {
            return;
        };
        let ss = j.scale_set.take();
        j.phase = JobPhase::Queued;
        j.offered_at = None;
        if let Some(ss) = ss.and_then(|s| self.scale_sets.get_mut(&s)) {
            ss.jobs.remove(&jid);
        }
        self.queued.insert(jid);
    }

    // ----- runners -----

    pub(crate) fn runner_json(&self, r: &Runner) -> Value {
        json!({
            "id": r.id,
            "name": r.name,
            "runnerScaleSetId": r.scale_set,
            "status": if r.online { "online" } else { "offline" },
            "busy": r.job.is_some(),
            "ephemeral": true,
        })
    }

    pub(crate) fn register_runner(
        &mut self,
        ss_id: i64,
        name: &str,
    ) -> Result<(i64, String), OpError> {
        if !self.scale_sets.contains_key(&ss_id) {
            return Err(op_err(
                404,
                EX_SS_NOT_FOUND,
                format!("runner scale set {ss_id} not found"),
            ));
        }
        if name.trim().is_empty() {
            return Err(op_err(400, EX_ARGUMENT, "runner name must not be empty"));
        }
        if self
            .runners
            .values()
            .any(|r| r.name.eq_ignore_ascii_case(name))
        {
            return Err(op_err(
                409,
                EX_AGENT_EXISTS,
                format!("A runner exists with the same name {name}."),
            ));
        }
        let id = self.next_runner_id;
        self.next_runner_id += 1;
        let secret = random_token("rs_");
        self.runners.insert(
            id,
            Runner {
                id,
                name: name.to_owned(),
                scale_set: ss_id,
                secret: secret.clone(),
                online: false,
                job: None,
                last_heartbeat: Instant::now(),
                behavior: None,
            },
        );
        if let Some(ss) = self.scale_sets.get_mut(&ss_id) {
            ss.runners.insert(id);
            ss.notify.notify_waiters();
        }
        Ok((id, secret))
    }

    fn remove_runner_entry(&mut self, rid: i64) {
        if let Some(r) = self.runners.remove(&rid)
            && let Some(ss) = self.scale_sets.get_mut(&r.scale_set)
        {
            ss.runners.remove(&rid);
            ss.notify.notify_waiters();
        }
    }

    pub(crate) fn delete_runner(&mut self, rid: i64) -> Result<(), OpError> {
        match self.runners.get(&rid) {
            None => Ok(()),
            Some(r) if r.job.is_some() => Err(op_err(
                400,
                EX_JOB_STILL_RUNNING,
                format!(
                    "Runner {} is still running a job and cannot be removed.",
                    r.name
                ),
            )),
            Some(_) => {
                self.remove_runner_entry(rid);
                Ok(())
            }
        }
    }

    pub(crate) fn check_runner(&self, rid: i64, secret: &str) -> Result<&Runner, OpError> {
        match self.runners.get(&rid) {
            Some(r) if r.secret == secret => Ok(r),
            Some(_) => Err(op_err(401, EX_UNAUTHORIZED, "bad runner credentials")),
            None => Err(op_err(
                404,
                EX_AGENT_NOT_FOUND,
                format!("runner {rid} not found"),
            )),
        }
    }

    /// The runner comes online; returns the behaviour it must show.
    pub(crate) fn runner_online(&mut self, rid: i64) -> RunnerBehavior {
        let fault = self.runner_faults.pop_front();
        let Some(r) = self.runners.get_mut(&rid) else {
            return RunnerBehavior::Normal;
        };
        if r.behavior.is_none() {
            r.behavior = Some(fault.unwrap_or(RunnerBehavior::Normal));
        } else if let Some(f) = fault {
            self.runner_faults.push_front(f);
        }
        let b = r.behavior.unwrap_or(RunnerBehavior::Normal);
        if b != RunnerBehavior::NeverOnline {
            r.online = true;
            r.last_heartbeat = Instant::now();
        }
        b
    }

    /// A waiting runner takes the oldest assigned job of its scale set, if any.
    pub(crate) fn runner_take_job(&mut self, rid: i64) -> Option<Value> {
        let r = self.runners.get(&rid)?;
        if !r.online {
            return None;
        }
        let jid = match r.job {
            Some(j) => j,
            None => {
                let ss = self.scale_sets.get(&r.scale_set)?;
                let jid = ss.jobs.iter().copied().find(|j| {
                    self.jobs
                        .get(j)
                        .is_some_and(|j| matches!(j.phase, JobPhase::Assigned(_)))
                })?;
                let name = r.name.clone();
                let ss_id = r.scale_set;
                if let Some(r) = self.runners.get_mut(&rid) {
                    r.job = Some(jid);
                    r.last_heartbeat = Instant::now();
                }
                if let Some(j) = self.jobs.get_mut(&jid) {
                    j.phase = JobPhase::Running(ss_id);
                    j.runner = Some((rid, name));
                    j.runner_assign_time = Some(jiff::Timestamp::now());
                }
                self.emit_job(jid, "JobStarted");
                jid
            }
        };
        let j = self.jobs.get(&jid)?;
        Some(json!({
            "runnerRequestId": j.id,
            "jobId": j.job_id,
            "jobDisplayName": j.display_name,
            "durationMs": u64::try_from(j.duration.as_millis()).unwrap_or(u64::MAX),
            "result": j.result,
        }))
    }

    pub(crate) fn heartbeat(&mut self, rid: i64) -> Result<(), OpError> {
        match self.runners.get_mut(&rid) {
            Some(r) if r.job.is_some() => {
                r.last_heartbeat = Instant::now();
                Ok(())
            }
            Some(_) => Err(op_err(409, EX_ARGUMENT, "runner has no job")),
            None => Err(op_err(
                404,
                EX_AGENT_NOT_FOUND,
                format!("runner {rid} not found"),
            )),
        }
    }

    pub(crate) fn runner_complete(&mut self, rid: i64, result: &str) -> Result<(), OpError> {
        let Some(jid) = self.runners.get(&rid).and_then(|r| r.job) else {
            return Err(op_err(409, EX_ARGUMENT, "runner has no job"));
        };
        self.complete_job(jid, result);
        Ok(())
    }

    /// Timer work: assignment timeouts and dead runners.
    pub(crate) fn tick(&mut self, now: Instant) -> bool {
        let timeout = self.cfg.assignment_timeout;
        let hb = self.cfg.runner_heartbeat_timeout;
        // Assigned jobs no runner took, and offered jobs nobody acquired, both past the
        // assignment timeout: one pass over the scale sets' jobs.
        let (mut expired, mut unacquired) = (Vec::new(), Vec::new());
        for jid in self
            .scale_sets
            .values()
            .flat_map(|ss| ss.jobs.iter())
            .copied()
        {
            let Some(j) = self.jobs.get(&jid) else {
                continue;
            };
            let overdue = |t: Option<Instant>| t.is_some_and(|t| elapsed(now, t) >= timeout);
            match j.phase {
                JobPhase::Assigned(_) if overdue(j.assigned_at) => expired.push(jid),
                JobPhase::Available(_) if overdue(j.offered_at) => unacquired.push(jid),
                _ => {}
            }
        }
        let dead: Vec<(i64, i64)> = self
            .runners
            .values()
            .filter(|r| r.job.is_some() && elapsed(now, r.last_heartbeat) >= hb)
            .filter_map(|r| r.job.map(|j| (r.id, j)))
            .collect();
        let idle = self.cfg.session_idle_timeout;
        let idle_sessions: Vec<Uuid> = self
            .sessions
            .values()
            .filter(|s| s.polls == 0 && elapsed(now, s.last_active) >= idle)
            .map(|s| s.id)
            .collect();
        for sid in &idle_sessions {
            tracing::info!(session_id = %sid, "session idle for too long; removing it");
            self.remove_session(*sid);
        }
        let changed = !expired.is_empty()
            || !dead.is_empty()
            || !unacquired.is_empty()
            || !idle_sessions.is_empty();
        for jid in expired {
            self.cancel_and_requeue(jid);
        }
        for jid in unacquired {
            self.reoffer(jid);
        }
        for (_rid, jid) in dead {
            self.complete_job(jid, "failed");
        }
        if changed {
            self.schedule(now);
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_have_seven_fraction_digits() {
        let t: jiff::Timestamp = "2025-01-01T10:00:00.123456789Z".parse().expect("ts");
        assert_eq!(fmt_ts(t), "2025-01-01T10:00:00.1234567Z");
        let t: jiff::Timestamp = "2025-01-01T10:00:00Z".parse().expect("ts");
        assert_eq!(fmt_ts(t), "2025-01-01T10:00:00.0000000Z");
        assert_eq!(ts(None), "0001-01-01T00:00:00.0000000Z");
        let t: jiff::Timestamp = "1969-12-31T23:59:59.5Z".parse().expect("ts");
        assert_eq!(fmt_ts(t), "1969-12-31T23:59:59.5000000Z");
    }
}
