//! Prometheus metrics with the names and labels of ARC's listener dashboards.
//!
//! Gauges carry the scale set labels (`name`, `runner_group`, `repository`, `organization`,
//! `enterprise`; `runner_group` keeps apart scale sets of one name in different groups);
//! job counters and histograms carry the job labels ARC uses (`job_name`,
//! `job_workflow_ref`, `event_name`, and `job_result` for completed jobs).

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use actions_scaleset::{
    GitHubConfig, JobCompleted, JobMessageBase, JobStarted, MetricsRecorder,
    RunnerScaleSetStatistic, Scope,
};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of the per-scale-set gauges.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScaleSetLabels {
    /// Scale set name.
    pub name: String,
    /// Its runner group's name.
    pub runner_group: String,
    /// Repository (repository scope).
    pub repository: String,
    /// Organization (organization and repository scopes).
    pub organization: String,
    /// Enterprise (enterprise scope).
    pub enterprise: String,
}

impl ScaleSetLabels {
    /// The labels of scale set `name` in `runner_group` under a config URL.
    pub fn new(name: &str, runner_group: &str, config: &GitHubConfig) -> ScaleSetLabels {
        let (organization, repository, enterprise) = match config.scope {
            Scope::Enterprise => (String::new(), String::new(), config.enterprise.clone()),
            Scope::Organization => (config.organization.clone(), String::new(), String::new()),
            Scope::Repository => (
                config.organization.clone(),
                config.repository.clone(),
                String::new(),
            ),
        };
        ScaleSetLabels {
            name: name.to_string(),
            runner_group: runner_group.to_string(),
            repository,
            organization,
            enterprise,
        }
    }
}

/// Labels of job metrics.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    /// Scale set name.
    pub name: String,
    /// Its runner group's name.
    pub runner_group: String,
    /// Repository the job runs for.
    pub repository: String,
    /// Its owner.
    pub organization: String,
    /// Enterprise (from the scale set's scope).
    pub enterprise: String,
    /// Job display name.
    pub job_name: String,
    /// Workflow reference.
    pub job_workflow_ref: String,
    /// Triggering event.
    pub event_name: String,
}

/// Labels of completed-job metrics: the job's labels plus its result.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CompletedJobLabels {
    /// The job's labels.
    #[prometheus(flatten)]
    pub job: JobLabels,
    /// Result (`succeeded`, `failed`, `canceled`, ...).
    pub job_result: String,
}

type HistFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    Histogram::new([
        0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0,
        3600.0, 7200.0, 14400.0, 28800.0,
    ])
}

/// All metric families. Cheap to clone (the families are `Arc`s inside).
#[derive(Clone, Debug)]
pub struct Metrics {
    assigned_jobs: Family<ScaleSetLabels, Gauge>,
    running_jobs: Family<ScaleSetLabels, Gauge>,
    registered_runners: Family<ScaleSetLabels, Gauge>,
    busy_runners: Family<ScaleSetLabels, Gauge>,
    idle_runners: Family<ScaleSetLabels, Gauge>,
    min_runners: Family<ScaleSetLabels, Gauge>,
    max_runners: Family<ScaleSetLabels, Gauge>,
    desired_runners: Family<ScaleSetLabels, Gauge>,
    managed_runners: Family<ScaleSetLabels, Gauge>,
    last_poll: Family<ScaleSetLabels, Gauge<f64, AtomicU64>>,
    session_recreations: Family<ScaleSetLabels, Counter>,
    provisioning_failures: Family<ScaleSetLabels, Counter>,
    outdated_runners: Family<ScaleSetLabels, Counter>,
    start_backoff: Family<ScaleSetLabels, Gauge<f64, AtomicU64>>,
    started_jobs: Family<JobLabels, Counter>,
    completed_jobs: Family<CompletedJobLabels, Counter>,
    startup_duration: HistFamily<JobLabels>,
    queue_duration: HistFamily<JobLabels>,
    execution_duration: HistFamily<CompletedJobLabels>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::unregistered()
    }
}

impl Metrics {
    /// Families not registered anywhere (for tests and callers without an endpoint).
    pub fn unregistered() -> Metrics {
        let h: fn() -> Histogram = duration_histogram;
        Metrics {
            assigned_jobs: Family::default(),
            running_jobs: Family::default(),
            registered_runners: Family::default(),
            busy_runners: Family::default(),
            idle_runners: Family::default(),
            min_runners: Family::default(),
            max_runners: Family::default(),
            desired_runners: Family::default(),
            managed_runners: Family::default(),
            last_poll: Family::default(),
            session_recreations: Family::default(),
            provisioning_failures: Family::default(),
            outdated_runners: Family::default(),
            start_backoff: Family::default(),
            started_jobs: Family::default(),
            completed_jobs: Family::default(),
            startup_duration: Family::new_with_constructor(h),
            queue_duration: Family::new_with_constructor(h),
            execution_duration: Family::new_with_constructor(h),
        }
    }

    /// New families, registered in `registry`.
    pub fn new(registry: &mut Registry) -> Metrics {
        let m = Metrics::unregistered();
        macro_rules! reg {
            ($name:literal, $help:literal, $field:ident) => {
                registry.register($name, $help, m.$field.clone())
            };
        }
        reg!(
            "gha_assigned_jobs",
            "Number of jobs assigned to this scale set",
            assigned_jobs
        );
        reg!(
            "gha_running_jobs",
            "Number of jobs running (or about to run)",
            running_jobs
        );
        reg!(
            "gha_registered_runners",
            "Number of runners registered",
            registered_runners
        );
        reg!(
            "gha_busy_runners",
            "Number of registered runners running a job",
            busy_runners
        );
        reg!(
            "gha_idle_runners",
            "Number of registered runners not running a job",
            idle_runners
        );
        reg!("gha_min_runners", "Minimum number of runners", min_runners);
        reg!("gha_max_runners", "Maximum number of runners", max_runners);
        reg!(
            "gha_desired_runners",
            "Number of runners desired by the scale set",
            desired_runners
        );
        reg!(
            "gha_managed_runners",
            "Number of runners this autoscaler manages",
            managed_runners
        );
        reg!(
            "gha_last_successful_poll_timestamp_seconds",
            "Unix time of the last successful message poll",
            last_poll
        );
        reg!(
            "gha_session_recreations",
            "Message sessions re-created after a loss",
            session_recreations
        );
        reg!(
            "gha_provisioning_failures",
            "Runners that failed to mint or start",
            provisioning_failures
        );
        reg!(
            "gha_outdated_runners",
            "Runners that refused to start because their version is older than GitHub accepts (no more runners are started until the configuration changes)",
            outdated_runners
        );
        reg!(
            "gha_start_backoff_seconds",
            "Seconds the next runner start waits after failed starts (0: starts are not backing off)",
            start_backoff
        );
        reg!(
            "gha_started_jobs",
            "Total number of jobs started",
            started_jobs
        );
        reg!(
            "gha_completed_jobs",
            "Total number of jobs completed",
            completed_jobs
        );
        reg!(
            "gha_job_startup_duration_seconds",
            "Seconds from assignment to the scale set until a runner was assigned",
            startup_duration
        );
        reg!(
            "gha_job_queue_duration_seconds",
            "Seconds from queueing until a runner was assigned",
            queue_duration
        );
        reg!(
            "gha_job_execution_duration_seconds",
            "Seconds from runner assignment until the job finished",
            execution_duration
        );
        m
    }

    /// A recorder for one scale set, for [`actions_scaleset::Listener::with_metrics`].
    pub fn scale_set(&self, labels: ScaleSetLabels) -> ScaleSetMetrics {
        // Counters exist (at 0) from the start, so dashboards and rate() see them.
        drop(self.session_recreations.get_or_create(&labels));
        drop(self.provisioning_failures.get_or_create(&labels));
        drop(self.outdated_runners.get_or_create(&labels));
        drop(self.start_backoff.get_or_create(&labels));
        ScaleSetMetrics {
            metrics: self.clone(),
            labels: Arc::new(labels),
        }
    }
}

/// The metrics of one scale set; also the listener's [`MetricsRecorder`].
#[derive(Clone, Debug)]
pub struct ScaleSetMetrics {
    metrics: Metrics,
    labels: Arc<ScaleSetLabels>,
}

fn secs_between(from: Option<jiff::Timestamp>, to: Option<jiff::Timestamp>) -> Option<f64> {
    let (from, to) = (from?, to?);
    // The zero time (0001-01-01) means "unset".
    if from.as_second() <= 0 || to.as_second() <= 0 {
        return None;
    }
    let d = to.duration_since(from).as_secs_f64();
    (d >= 0.0).then_some(d)
}

impl ScaleSetMetrics {
    /// A recorder not connected to any registry.
    pub fn detached(name: &str) -> ScaleSetMetrics {
        Metrics::unregistered().scale_set(ScaleSetLabels {
            name: name.to_string(),
            ..Default::default()
        })
    }

    fn job_labels(&self, base: &JobMessageBase) -> JobLabels {
        JobLabels {
            name: self.labels.name.clone(),
            runner_group: self.labels.runner_group.clone(),
            repository: base.repository_name.clone(),
            organization: base.owner_name.clone(),
            enterprise: self.labels.enterprise.clone(),
            job_name: base.job_display_name.clone(),
            job_workflow_ref: base.job_workflow_ref.clone(),
            event_name: base.event_name.clone(),
        }
    }

    /// Sets the configured bounds.
    pub fn set_bounds(&self, min: u32, max: u32) {
        self.metrics
            .min_runners
            .get_or_create(&self.labels)
            .set(min.into());
        self.metrics
            .max_runners
            .get_or_create(&self.labels)
            .set(max.into());
    }

    /// How many runners the engine manages (starting, idle or busy).
    pub fn set_managed(&self, n: usize) {
        self.metrics
            .managed_runners
            .get_or_create(&self.labels)
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// A runner failed to mint or start.
    pub fn provisioning_failed(&self) {
        self.metrics
            .provisioning_failures
            .get_or_create(&self.labels)
            .inc();
    }

    /// A runner refused to start because its version is too old.
    pub fn runner_outdated(&self) {
        self.metrics
            .outdated_runners
            .get_or_create(&self.labels)
            .inc();
    }

    /// How long the next start waits after failed starts (zero: not backing off).
    pub fn set_start_backoff(&self, wait: std::time::Duration) {
        self.metrics
            .start_backoff
            .get_or_create(&self.labels)
            .set(wait.as_secs_f64());
    }

    /// A job started (counted once per job, by the engine).
    pub fn job_started(&self, job: &JobStarted) {
        let labels = self.job_labels(&job.base);
        self.metrics.started_jobs.get_or_create(&labels).inc();
        let b = &job.base;
        if let Some(s) = secs_between(b.scale_set_assign_time, b.runner_assign_time) {
            self.metrics
                .startup_duration
                .get_or_create(&labels)
                .observe(s);
        }
        if let Some(s) = secs_between(b.queue_time, b.runner_assign_time) {
            self.metrics
                .queue_duration
                .get_or_create(&labels)
                .observe(s);
        }
    }

    /// A job completed (counted once per job, by the engine).
    pub fn job_completed(&self, job: &JobCompleted) {
        let labels = CompletedJobLabels {
            job: self.job_labels(&job.base),
            job_result: job.result.clone(),
        };
        self.metrics.completed_jobs.get_or_create(&labels).inc();
        let b = &job.base;
        if let Some(s) = secs_between(b.runner_assign_time, b.finish_time) {
            self.metrics
                .execution_duration
                .get_or_create(&labels)
                .observe(s);
        }
    }
}

impl MetricsRecorder for ScaleSetMetrics {
    fn record_statistics(&self, s: &RunnerScaleSetStatistic) {
        let m = &self.metrics;
        m.assigned_jobs
            .get_or_create(&self.labels)
            .set(s.total_assigned_jobs);
        m.running_jobs
            .get_or_create(&self.labels)
            .set(s.total_running_jobs);
        m.registered_runners
            .get_or_create(&self.labels)
            .set(s.total_registered_runners);
        m.busy_runners
            .get_or_create(&self.labels)
            .set(s.total_busy_runners);
        m.idle_runners
            .get_or_create(&self.labels)
            .set(s.total_idle_runners);
    }

    fn record_desired_runners(&self, count: i64) {
        self.metrics
            .desired_runners
            .get_or_create(&self.labels)
            .set(count);
    }

    fn record_poll_latency(&self, _latency: Duration) {
        let now = jiff::Timestamp::now().as_millisecond() as f64 / 1000.0;
        self.metrics.last_poll.get_or_create(&self.labels).set(now);
    }

    fn record_session_recreated(&self) {
        self.metrics
            .session_recreations
            .get_or_create(&self.labels)
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_lines_end_in_one_period_and_groups_stay_apart() {
        let mut registry = Registry::default();
        let m = Metrics::new(&mut registry);
        let config = actions_scaleset::parse_github_config_from_url("https://github.com/org")
            .expect("a valid URL");
        // One name in two runner groups: two series, not one.
        m.scale_set(ScaleSetLabels::new("linux", "default", &config))
            .set_bounds(0, 1);
        m.scale_set(ScaleSetLabels::new("linux", "gpu", &config))
            .set_bounds(0, 2);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        for line in text.lines().filter(|l| l.starts_with("# HELP ")) {
            assert!(line.ends_with('.') && !line.ends_with(".."), "{line}");
        }
        let max: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("gha_max_runners{"))
            .collect();
        assert_eq!(max.len(), 2, "{text}");
        assert!(
            max.iter()
                .any(|l| l.contains("runner_group=\"gpu\"") && l.ends_with(" 2"))
        );
    }
}
