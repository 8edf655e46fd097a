//! The settings of one scale set's engine.

use std::time::Duration;

use actions_scaleset::ScaleSetId;

use crate::config::ScaleSetConfig;

/// Settings of one engine.
#[derive(Clone, Debug)]
pub struct EngineSettings {
    /// Scale set id.
    pub scale_set_id: ScaleSetId,
    /// Scale set name (a field of every log line).
    pub scale_set_name: String,
    /// Runners kept even without demand.
    pub min_runners: u32,
    /// Most runners at once.
    pub max_runners: u32,
    /// Extra idle runners above demand.
    pub idle_headroom: u32,
    /// How long an idle runner above the target stays before it is stopped.
    pub idle_delay: Duration,
    /// Not running this long after its start, or idle this long while jobs wait: broken.
    pub registration_timeout: Duration,
    /// How long a busy runner whose process exited keeps counting while its `JobCompleted`
    /// is awaited.
    pub exit_grace: Duration,
    /// How long a finished runner may take to exit before it is stopped.
    pub finish_grace: Duration,
    /// JIT mints/starts in flight at once.
    pub max_concurrent_starts: usize,
    /// Runner names are `<prefix><8 hex digits>`.
    pub runner_name_prefix: String,
    /// `workFolder` sent with the JIT request (empty: the runner's default).
    pub work_folder: String,
    /// How often the engine compares its records with what the provisioner has.
    pub resync_interval: Duration,
    /// How often the engine looks for registrations it has no record of (one listing of
    /// the runner pool per scale set).
    pub sweep_interval: Duration,
}

impl EngineSettings {
    /// Settings with defaults: 0..10 runners, 60 s idle delay, 300 s registration timeout,
    /// 16 concurrent starts, a resync every 60 s, a registration sweep every 5 min, names `<name>-xxxxxxxx`.
    pub fn new(scale_set_id: ScaleSetId, scale_set_name: impl Into<String>) -> EngineSettings {
        let name = scale_set_name.into();
        EngineSettings {
            scale_set_id,
            runner_name_prefix: format!("{name}-"),
            scale_set_name: name,
            min_runners: 0,
            max_runners: 10,
            idle_headroom: 0,
            idle_delay: Duration::from_secs(60),
            registration_timeout: Duration::from_secs(300),
            exit_grace: Duration::from_secs(120),
            finish_grace: Duration::from_secs(60),
            max_concurrent_starts: 16,
            work_folder: String::new(),
            resync_interval: Duration::from_secs(60),
            sweep_interval: Duration::from_secs(300),
        }
    }

    /// Settings from a scale set's configuration.
    pub fn from_config(scale_set_id: ScaleSetId, c: &ScaleSetConfig) -> EngineSettings {
        EngineSettings {
            min_runners: c.min_runners,
            max_runners: c.max_runners,
            idle_headroom: c.idle_headroom,
            idle_delay: c.idle_delay(),
            registration_timeout: Duration::from_secs(c.registration_timeout_secs),
            max_concurrent_starts: c.max_concurrent_starts,
            runner_name_prefix: c.name_prefix(),
            ..EngineSettings::new(scale_set_id, &c.name)
        }
    }

    /// The number of runners wanted for `assigned` jobs.
    pub fn target(&self, assigned: i64) -> u32 {
        let assigned = u64::try_from(assigned.max(0)).unwrap_or(0);
        let want = u64::from(self.min_runners) + assigned + u64::from(self.idle_headroom);
        want.min(u64::from(self.max_runners)) as u32
    }
}
