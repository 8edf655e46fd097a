//! The autoscaler's configuration file (TOML), validated up front.
//!
//! ```toml
//! [connection]
//! url = "https://github.com/my-org"        # default config URL of every scale set
//! # Credentials never live in this file: a token is read from the environment variable
//! # named by `token_env` (default GITHUB_TOKEN) or from `token_file`; a GitHub App from
//! # `app_client_id`, `app_installation_id` and `app_private_key_file`. A token file is
//! # re-read when it changes.
//! # client_cert_file = "/etc/scaleset/client.crt"   # mutual TLS (optional, with the key)
//! # client_key_file = "/etc/scaleset/client.key"
//!
//! [metrics]
//! addr = "127.0.0.1:9090"                  # /metrics, /healthz, /readyz (optional)
//! poll_window_secs = 50                    # readiness: a poll succeeded within 2x this
//!
//! # [leader_election]                      # a hot standby on Kubernetes (module leader_election)
//! # lease_name = "scaleset"
//!
//! [[scale_set]]
//! name = "linux-x64"
//! labels = ["linux", "x64"]                # extra labels; the name is always the first
//! runner_group = "default"
//! min_runners = 0
//! max_runners = 10
//! idle_headroom = 0                        # extra idle runners kept above demand
//! idle_delay_secs = 60                     # an idle runner above target waits this long
//! registration_timeout_secs = 300          # idle while jobs wait this long = broken runner
//! max_concurrent_starts = 16
//! shutdown = "keep"                        # keep | drain | delete
//! drain_timeout_secs = 600
//!
//! [scale_set.provisioner]                  # see [`provisioner`] for every kind's keys
//! kind = "process"                         # process | docker
//! command = "/opt/runner/run.sh"
//! args = []                                # `{name}` and `{jitconfig}` are substituted
//! workdir = "/var/lib/scaleset/linux-x64"  # runner N works in workdir/N
//! env = ["HTTPS_PROXY"]                    # daemon variables passed to runners
//! ```
//!
//! Runners never inherit the daemon's environment (it holds credentials): they get `PATH`,
//! `HOME`, `LANG`, `LC_ALL`, `TMPDIR`, `USER`, `TZ` (processes only), the variables named in
//! the provisioner's `env`, and their JIT config.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};

pub mod leader_election;
pub mod provisioner;

pub use leader_election::{LeaderElectionConfig, LeaderElectionSettings};
pub use provisioner::{
    DockerSettings, KubernetesSettings, ProcessSettings, ProvisionerConfig, PullPolicy,
};

/// The whole configuration.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Connection settings shared by the scale sets.
    #[serde(default)]
    pub connection: Connection,
    /// Metrics and health endpoints.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// The scale sets, one `[[scale_set]]` table each.
    #[serde(default, rename = "scale_set")]
    pub scale_sets: Vec<ScaleSetConfig>,
    /// A hot standby through a Kubernetes Lease (see [`leader_election`]); off when absent.
    #[serde(default)]
    pub leader_election: Option<LeaderElectionConfig>,
}

/// How to reach GitHub. Credentials are never read from the file itself.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Connection {
    /// Default config URL (enterprise, organization or repository).
    pub url: Option<String>,
    /// Environment variable holding a token (default `GITHUB_TOKEN`).
    pub token_env: Option<String>,
    /// File holding a token, re-read when it changes (a mounted Secret rotating in place).
    pub token_file: Option<PathBuf>,
    /// GitHub App client id (or app id).
    pub app_client_id: Option<String>,
    /// GitHub App installation id.
    pub app_installation_id: Option<u64>,
    /// File holding the GitHub App private key (PEM).
    pub app_private_key_file: Option<PathBuf>,
    /// File holding a TLS client certificate in PEM, optionally followed by its
    /// intermediates, presented on every connection (mutual TLS; needs `client_key_file`).
    pub client_cert_file: Option<PathBuf>,
    /// File holding the private key of `client_cert_file` in PEM (unencrypted).
    pub client_key_file: Option<PathBuf>,
}

/// Metrics and health endpoints.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `HOST:PORT` to serve `/metrics`, `/healthz` and `/readyz` on; none when absent.
    pub addr: Option<String>,
    /// The long-poll window; `/readyz` wants a successful poll within twice this.
    #[serde(default = "default_poll_window")]
    pub poll_window_secs: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            addr: None,
            poll_window_secs: default_poll_window(),
        }
    }
}

fn default_poll_window() -> u64 {
    50
}

/// What happens to runners when the autoscaler is told to stop.
///
/// With leader election a graceful stop hands over instead: idle runners stop, busy ones
/// are left to the next leader (as `keep`), and the Lease is given up at once, so a standby
/// takes the scale set without a window in which new jobs wait for a drain. `delete` is
/// refused with leader election.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShutdownPolicy {
    /// Keep the scale set; stop idle runners and remove their registrations; busy runners
    /// finish their job on their own.
    #[default]
    Keep,
    /// Stop taking work, wait for busy runners (up to the drain timeout), then stop them all.
    Drain,
    /// Drain, then delete the scale set.
    Delete,
}

impl std::str::FromStr for ShutdownPolicy {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "keep" => Ok(ShutdownPolicy::Keep),
            "drain" => Ok(ShutdownPolicy::Drain),
            "delete" => Ok(ShutdownPolicy::Delete),
            other => Err(format!(
                "unknown shutdown policy {other:?} (expected keep, drain or delete)"
            )),
        }
    }
}

/// The policy's name as the configuration spells it (`keep`, `drain`, `delete`).
impl std::fmt::Display for ShutdownPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ShutdownPolicy::Keep => "keep",
            ShutdownPolicy::Drain => "drain",
            ShutdownPolicy::Delete => "delete",
        })
    }
}

/// One scale set.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleSetConfig {
    /// Scale set name (unique in its runner group).
    pub name: String,
    /// Config URL; defaults to `connection.url`.
    pub url: Option<String>,
    /// Extra labels (`runs-on:`); the name is always the first label.
    #[serde(default)]
    pub labels: Vec<String>,
    /// Runner group name (default `default`).
    #[serde(default = "default_group")]
    pub runner_group: String,
    /// Runners kept even without demand.
    #[serde(default)]
    pub min_runners: u32,
    /// Most runners at once.
    #[serde(default = "default_max")]
    pub max_runners: u32,
    /// Extra idle runners kept above demand (still capped by `max_runners`).
    #[serde(default)]
    pub idle_headroom: u32,
    /// How long an idle runner above the target stays before it is stopped.
    #[serde(default = "default_idle_delay")]
    pub idle_delay_secs: u64,
    /// An idle runner that takes no job this long while jobs wait is treated as broken.
    #[serde(default = "default_registration_timeout")]
    pub registration_timeout_secs: u64,
    /// JIT mints and runner starts in flight at once.
    #[serde(default = "default_concurrency")]
    pub max_concurrent_starts: usize,
    /// Runner names are `<prefix><8 hex digits>`; default `<name>-`.
    pub runner_name_prefix: Option<String>,
    /// Shutdown policy.
    #[serde(default)]
    pub shutdown: ShutdownPolicy,
    /// How long `drain`/`delete` wait for busy runners.
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout_secs: u64,
    /// The provisioner and its settings (`[scale_set.provisioner]`).
    #[serde(skip)]
    pub provisioner: ProvisionerConfig,
    /// The `[scale_set.provisioner]` table as read, parsed into `provisioner` by
    /// [`Config::from_toml_str`] so that its errors name the kind's own keys.
    #[serde(default, rename = "provisioner")]
    provisioner_table: Option<toml::Value>,
}

/// The longest `*_secs` duration accepted (7 days): larger values would overflow timers.
pub const MAX_DURATION_SECS: u64 = 7 * 24 * 3600;

/// The most `max_concurrent_starts` accepted.
pub const MAX_CONCURRENT_STARTS: usize = 1024;

fn default_group() -> String {
    actions_scaleset::DEFAULT_RUNNER_GROUP.to_string()
}
fn default_max() -> u32 {
    10
}
fn default_idle_delay() -> u64 {
    60
}
fn default_registration_timeout() -> u64 {
    300
}
fn default_concurrency() -> usize {
    16
}
fn default_drain_timeout() -> u64 {
    600
}

impl ScaleSetConfig {
    /// A scale set with defaults for everything but the name.
    pub fn new(name: impl Into<String>) -> ScaleSetConfig {
        ScaleSetConfig {
            name: name.into(),
            url: None,
            labels: Vec::new(),
            runner_group: default_group(),
            min_runners: 0,
            max_runners: default_max(),
            idle_headroom: 0,
            idle_delay_secs: default_idle_delay(),
            registration_timeout_secs: default_registration_timeout(),
            max_concurrent_starts: default_concurrency(),
            runner_name_prefix: None,
            shutdown: ShutdownPolicy::Keep,
            drain_timeout_secs: default_drain_timeout(),
            provisioner: ProvisionerConfig::default(),
            provisioner_table: None,
        }
    }

    /// The labels to register, by [`actions_scaleset::scale_set_labels`]: the name first,
    /// then the configured labels without case-insensitive duplicates.
    pub fn effective_labels(&self) -> Vec<String> {
        actions_scaleset::scale_set_labels(
            &self.name,
            self.labels.iter().map(actions_scaleset::Label::system),
        )
        .into_iter()
        .map(|l| l.name)
        .collect()
    }

    /// The runner name prefix.
    pub fn name_prefix(&self) -> String {
        self.runner_name_prefix
            .clone()
            .unwrap_or_else(|| format!("{}-", self.name))
    }

    /// The process provisioner's base work directory (see [`ProcessSettings::workdir`] for
    /// the default); `None` for other provisioners.
    pub fn effective_workdir(&self) -> Option<PathBuf> {
        match &self.provisioner {
            ProvisionerConfig::Process(p) => {
                Some(self.effective_workdir_with(p.workdir.as_ref(), |n| std::env::var_os(n)))
            }
            _ => None,
        }
    }

    /// The daemon's own state directory for this host and user (lock files of backends
    /// that have no directory of their own): `$XDG_STATE_HOME/scaleset`, else
    /// `$HOME/.local/state/scaleset`, else `<temp dir>/scaleset-state`.
    pub fn state_dir() -> PathBuf {
        state_dir_with(|n| std::env::var_os(n))
    }

    fn effective_workdir_with(
        &self,
        configured: Option<&PathBuf>,
        env: impl Fn(&str) -> Option<std::ffi::OsString>,
    ) -> PathBuf {
        if let Some(dir) = configured {
            return dir.clone();
        }
        let absolute = |v: std::ffi::OsString| Some(PathBuf::from(v)).filter(|p| p.is_absolute());
        let state = env("XDG_STATE_HOME").and_then(absolute).or_else(|| {
            env("HOME")
                .and_then(absolute)
                .map(|h| h.join(".local/state"))
        });
        match state {
            Some(state) => state.join("scaleset").join("runners").join(&self.name),
            None => std::env::temp_dir()
                .join("scaleset-runners")
                .join(&self.name),
        }
    }

    /// The idle delay.
    pub fn idle_delay(&self) -> Duration {
        Duration::from_secs(self.idle_delay_secs)
    }

    /// The drain timeout.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_timeout_secs)
    }
}

impl Config {
    /// Parses and validates a TOML document.
    ///
    /// # Errors
    /// [`Error::Config`] naming the key that is missing, unknown or invalid.
    pub fn from_toml_str(text: &str) -> Result<Config> {
        let at_line = |e: &toml::de::Error| {
            e.span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
        };
        // Old flat provisioner keys get a pointer to their new table. A document that does not
        // even parse as untyped TOML is left to the typed pass below, which names the key.
        let value: Option<toml::Value> = toml::from_str(text).ok();
        if let Some(sets) = value
            .as_ref()
            .and_then(|v| v.get("scale_set"))
            .and_then(toml::Value::as_array)
        {
            for (i, set) in sets.iter().enumerate() {
                if let Some(old) = ["command", "args", "workdir", "env"]
                    .into_iter()
                    .find(|k| set.get(k).is_some())
                {
                    return Err(Error::config(
                        format!("scale_set[{i}].{old}"),
                        "provisioner settings live in their own table now: write it under [scale_set.provisioner] with kind = \"process\" (or \"docker\")",
                    ));
                }
            }
        }
        let de = toml::Deserializer::parse(text).map_err(|e| {
            let place = at_line(&e).map_or_else(|| "config".to_string(), |l| format!("line {l}"));
            Error::config(place, e.message().to_string())
        })?;
        // serde_path_to_error names the key that failed, e.g. `scale_set[0].max_runners`.
        let mut config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let key = if path.is_empty() || path == "." {
                "config".to_string()
            } else {
                path
            };
            let line = at_line(&inner)
                .map(|l| format!(" (line {l})"))
                .unwrap_or_default();
            Error::config(key, format!("{}{line}", inner.message()))
        })?;
        for (i, s) in config.scale_sets.iter_mut().enumerate() {
            if let Some(table) = s.provisioner_table.take() {
                s.provisioner =
                    ProvisionerConfig::from_toml(&format!("scale_set[{i}].provisioner"), table)?;
            }
        }
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates a file.
    ///
    /// # Errors
    /// [`Error::Config`] when the file cannot be read or is invalid.
    pub fn from_file(path: &std::path::Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::config(path.display().to_string(), e.to_string()))?;
        Config::from_toml_str(&text).map_err(|e| match e {
            Error::Config { key, message } => {
                Error::config(format!("{}: {key}", path.display()), message)
            }
            other => other,
        })
    }

    /// The config URL of scale set `index`.
    pub fn url_of(&self, index: usize) -> Option<&str> {
        self.scale_sets
            .get(index)
            .and_then(|s| s.url.as_deref())
            .or(self.connection.url.as_deref())
    }

    /// Checks every setting; the error names the first offending key.
    ///
    /// # Errors
    /// [`Error::Config`].
    pub fn validate(&self) -> Result<()> {
        if self.scale_sets.is_empty() {
            return Err(Error::config(
                "scale_set",
                "at least one [[scale_set]] is required",
            ));
        }
        if let Some(addr) = &self.metrics.addr {
            addr.parse::<std::net::SocketAddr>().map_err(|e| {
                Error::config("metrics.addr", format!("{addr:?} is not HOST:PORT ({e})"))
            })?;
        }
        if self.metrics.poll_window_secs == 0 {
            return Err(Error::config("metrics.poll_window_secs", "must be > 0"));
        }
        if let Some(le) = self.leader_election.as_ref().filter(|le| le.enabled) {
            le.settings(self, "validating")?;
            if let Some(s) = self
                .scale_sets
                .iter()
                .find(|s| s.shutdown == ShutdownPolicy::Delete)
            {
                return Err(Error::config(
                    "scale_set.shutdown",
                    format!(
                        "scale set {:?}: \"delete\" cannot be combined with [leader_election]: \
                         a replica that stops would delete the scale set its standby takes over \
                         (a stop with leader election hands over; use \"keep\" or \"drain\")",
                        s.name
                    ),
                ));
            }
        }
        if let Some(url) = &self.connection.url {
            actions_scaleset::parse_github_config_from_url(url)
                .map_err(|e| Error::config("connection.url", e.to_string()))?;
        }
        if self.connection.app_client_id.is_some() != self.connection.app_private_key_file.is_some()
            || self.connection.app_client_id.is_some()
                != self.connection.app_installation_id.is_some()
        {
            return Err(Error::config(
                "connection.app_client_id",
                "a GitHub App needs app_client_id, app_installation_id and app_private_key_file",
            ));
        }
        if self.connection.token_env.is_some() && self.connection.token_file.is_some() {
            return Err(Error::config(
                "connection.token_file",
                "give token_env or token_file, not both",
            ));
        }
        if self
            .connection
            .token_env
            .as_deref()
            .is_some_and(|v| v.is_empty() || v.contains('=') || v.contains('\0'))
        {
            return Err(Error::config(
                "connection.token_env",
                "must be an environment variable name",
            ));
        }
        let mut names: std::collections::HashMap<_, usize> = Default::default();
        let mut workdirs: std::collections::HashMap<PathBuf, usize> = Default::default();
        for (i, s) in self.scale_sets.iter().enumerate() {
            let key = |field: &str| format!("scale_set[{i}].{field}");
            if s.name.trim().is_empty() {
                return Err(Error::config(key("name"), "must not be empty"));
            }
            // The same scale set is the same (config URL, runner group, name) after the
            // `[connection]` default, compared as the service does: ignoring case.
            let identity = (
                self.url_of(i)
                    .map(|u| u.trim().trim_end_matches('/').to_lowercase()),
                s.runner_group.trim().to_lowercase(),
                s.name.trim().to_lowercase(),
            );
            if let Some(j) = names.insert(identity, i) {
                return Err(Error::config(
                    key("name"),
                    format!(
                        "scale_set[{j}] and scale_set[{i}] are the same scale set ({:?} in runner \
                         group {:?} at {}); give each entry its own name, runner group or url",
                        s.name,
                        s.runner_group,
                        self.url_of(i).unwrap_or("no URL"),
                    ),
                ));
            }
            match self.url_of(i) {
                None => {
                    return Err(Error::config(
                        key("url"),
                        "no config URL (set connection.url or scale_set.url)",
                    ));
                }
                Some(url) => {
                    actions_scaleset::parse_github_config_from_url(url)
                        .map_err(|e| Error::config(key("url"), e.to_string()))?;
                }
            }
            if s.labels.iter().any(|l| l.trim().is_empty()) {
                return Err(Error::config(key("labels"), "labels must not be empty"));
            }
            if s.runner_group.trim().is_empty() {
                return Err(Error::config(key("runner_group"), "must not be empty"));
            }
            if s.max_runners == 0 {
                return Err(Error::config(
                    key("max_runners"),
                    "must be at least 1 (a scale set that can start no runner strands every job)",
                ));
            }
            if s.max_runners > i32::MAX as u32 {
                return Err(Error::config(
                    key("max_runners"),
                    format!("must be at most {}", i32::MAX),
                ));
            }
            if s.max_runners < s.min_runners {
                return Err(Error::config(key("max_runners"), "must be >= min_runners"));
            }
            if s.max_concurrent_starts == 0 {
                return Err(Error::config(key("max_concurrent_starts"), "must be > 0"));
            }
            if s.max_concurrent_starts > MAX_CONCURRENT_STARTS {
                return Err(Error::config(
                    key("max_concurrent_starts"),
                    format!("must be at most {MAX_CONCURRENT_STARTS}"),
                ));
            }
            if s.registration_timeout_secs == 0 {
                return Err(Error::config(
                    key("registration_timeout_secs"),
                    "must be > 0",
                ));
            }
            for (field, secs) in [
                ("registration_timeout_secs", s.registration_timeout_secs),
                ("idle_delay_secs", s.idle_delay_secs),
                ("drain_timeout_secs", s.drain_timeout_secs),
            ] {
                if secs > MAX_DURATION_SECS {
                    return Err(Error::config(
                        key(field),
                        format!("must be at most {MAX_DURATION_SECS} (7 days)"),
                    ));
                }
            }
            s.provisioner.validate(&key("provisioner"))?;
            if let Some(dir) = s.effective_workdir() {
                if let Some(j) = workdirs.get(&dir) {
                    return Err(Error::config(
                        key("provisioner.workdir"),
                        format!(
                            "{} is also the work directory of scale_set[{j}] (give each scale set its own workdir)",
                            dir.display()
                        ),
                    ));
                }
                if let Some(file) = dir.ancestors().find(|a| a.exists()).filter(|a| !a.is_dir()) {
                    return Err(Error::config(
                        key("provisioner.workdir"),
                        format!(
                            "{} cannot be a work directory: {} is not a directory",
                            dir.display(),
                            file.display()
                        ),
                    ));
                }
                workdirs.insert(dir, i);
            }
            let prefix = s.name_prefix();
            if prefix.is_empty()
                || !prefix
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
            {
                return Err(Error::config(
                    key("runner_name_prefix"),
                    format!("{prefix:?}: use letters, digits, '-', '_' or '.'"),
                ));
            }
        }
        Ok(())
    }
}

fn state_dir_with(env: impl Fn(&str) -> Option<std::ffi::OsString>) -> PathBuf {
    let absolute = |v: std::ffi::OsString| Some(PathBuf::from(v)).filter(|p| p.is_absolute());
    let state = env("XDG_STATE_HOME").and_then(absolute).or_else(|| {
        env("HOME")
            .and_then(absolute)
            .map(|h| h.join(".local/state"))
    });
    match state {
        Some(state) => state.join("scaleset"),
        None => std::env::temp_dir().join("scaleset-state"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [connection]
        url = "https://github.com/org"
        [[scale_set]]
        name = "a"
        max_runners = 5
        [scale_set.provisioner]
        kind = "process"
        command = "/bin/true"
        [[scale_set]]
        name = "b"
        labels = ["linux", "x64"]
        min_runners = 1
        max_runners = 2
        shutdown = "drain"
        [scale_set.provisioner]
        kind = "process"
        command = "/bin/true"
        args = ["--name", "{name}"]
    "#;

    #[test]
    fn type_errors_name_the_key_and_line() {
        let bad = GOOD.replace("max_runners = 2", "max_runners = -1");
        let e = Config::from_toml_str(&bad).expect_err("negative max_runners");
        let text = e.to_string();
        assert!(text.contains("scale_set[1].max_runners"), "{text}");
        assert!(text.contains("line 14"), "{text}");
        let e = Config::from_toml_str("[connection]\nurl = 5\n").expect_err("url is a number");
        assert!(e.to_string().contains("connection.url"), "{e}");
        let e = Config::from_toml_str("[[scale_set]\n").expect_err("broken TOML");
        assert!(e.to_string().contains("line 1"), "{e}");
    }

    #[test]
    fn parses_a_good_file() {
        let c = Config::from_toml_str(GOOD).expect("valid");
        assert_eq!(c.scale_sets.len(), 2);
        assert_eq!(c.scale_sets[0].effective_labels(), vec!["a".to_string()]);
        assert_eq!(c.scale_sets[1].shutdown, ShutdownPolicy::Drain);
        assert_eq!(c.scale_sets[1].name_prefix(), "b-");
        assert_eq!(c.scale_sets[0].max_concurrent_starts, 16);
    }

    fn err(text: &str) -> String {
        Config::from_toml_str(text)
            .expect_err("invalid")
            .to_string()
    }

    #[test]
    fn errors_name_the_key() {
        let e = err(&GOOD.replace("min_runners = 1", "min_runners = 3"));
        assert_eq!(e, "scale_set[1].max_runners: must be >= min_runners");
        let e = err(&GOOD.replace("max_runners = 5", "max_runners = 0"));
        assert!(
            e.starts_with("scale_set[0].max_runners: must be at least 1"),
            "{e}"
        );
        let e = err(&GOOD.replace("command = \"/bin/true\"\n        [[", "[["));
        assert!(e.starts_with("scale_set[0].provisioner.command:"), "{e}");
        let e = err(&GOOD.replace("https://github.com/org", "https://github.com/"));
        assert!(e.starts_with("connection.url:"), "{e}");
        let e = err(&GOOD.replace("shutdown = \"drain\"", "shutdown = \"later\""));
        assert!(e.contains("later"), "{e}");
        let e = err(&GOOD.replace("max_runners = 5", "max_runnerz = 5"));
        assert!(e.contains("max_runnerz"), "{e}");
        let e = err("[connection]\nurl = \"https://github.com/org\"\n");
        assert!(e.starts_with("scale_set:"), "{e}");
        let e = err(&GOOD.replace("[connection]\n        url = \"https://github.com/org\"", ""));
        assert!(e.starts_with("scale_set[0].url:"), "{e}");
    }

    #[test]
    fn provisioner_settings_live_in_their_own_table() {
        let flat = "[connection]\nurl = \"https://github.com/org\"\n[[scale_set]]\nname = \"a\"\ncommand = \"/bin/true\"\n";
        let e = err(flat);
        assert!(e.starts_with("scale_set[0].command:"), "{e}");
        assert!(e.contains("[scale_set.provisioner]"), "{e}");
        let docker = GOOD.replace(
            "kind = \"process\"\n        command = \"/bin/true\"\n        [[",
            "kind = \"docker\"\n        image = \"runner:1\"\n        network = \"host\"\n        [[",
        );
        let c = Config::from_toml_str(&docker).expect("docker kind");
        assert_eq!(c.scale_sets[0].provisioner.kind(), "docker");
        assert_eq!(c.scale_sets[0].effective_workdir(), None);
        let e = err(&docker.replace(
            "image = \"runner:1\"",
            "image = \"runner:1\"\n        workdir = \"/x\"",
        ));
        assert!(e.starts_with("scale_set[0].provisioner"), "{e}");
        assert!(e.contains("workdir"), "{e}");
        let e = err(&GOOD.replacen("kind = \"process\"", "kind = \"vm\"", 1));
        assert!(e.starts_with("scale_set[0].provisioner.kind:"), "{e}");
    }

    #[test]
    fn the_same_scale_set_twice_is_rejected_naming_both_entries() {
        // One entry inherits the `[connection]` URL, the other spells it out: the same
        // scale set all the same.
        let text = r#"
            [connection]
            url = "https://github.com/org"
            [[scale_set]]
            name = "linux"
            [scale_set.provisioner]
            kind = "process"
            command = "/bin/true"
            workdir = "/srv/a"
            [[scale_set]]
            name = "Linux"
            url = "https://github.com/org/"
            [scale_set.provisioner]
            kind = "process"
            command = "/bin/true"
            workdir = "/srv/b"
        "#;
        let e = err(text);
        assert!(e.starts_with("scale_set[1].name:"), "{e}");
        assert!(
            e.contains("scale_set[0]") && e.contains("scale_set[1]"),
            "{e}"
        );
        // Another runner group or another URL is another scale set.
        Config::from_toml_str(&text.replace(
            "name = \"Linux\"",
            "name = \"Linux\"\n            runner_group = \"gpu\"",
        ))
        .expect("another runner group");
        Config::from_toml_str(&text.replace("github.com/org/", "github.com/org/repo"))
            .expect("another URL");
    }

    #[test]
    fn a_workdir_below_a_file_is_refused_at_load() {
        let file =
            std::env::temp_dir().join(format!("scaleset-workdir-file-{}", std::process::id()));
        std::fs::write(&file, "not a directory").expect("a temp file");
        for dir in [file.clone(), file.join("runners")] {
            let text = GOOD.replace(
                "command = \"/bin/true\"\n        [[",
                &format!(
                    "command = \"/bin/true\"\n        workdir = \"{}\"\n        [[",
                    dir.display()
                ),
            );
            let e = err(&text);
            assert!(e.starts_with("scale_set[0].provisioner.workdir:"), "{e}");
            assert!(
                e.contains(&format!("{} is not a directory", file.display())),
                "{e}"
            );
        }
        let _ = std::fs::remove_file(&file);
    }

    #[test]
    fn two_scale_sets_cannot_share_a_workdir() {
        let text = GOOD.replace(
            "command = \"/bin/true\"\n",
            "command = \"/bin/true\"\n        workdir = \"/srv/runners\"\n",
        );
        let e = err(&text);
        assert!(e.starts_with("scale_set[1].provisioner.workdir:"), "{e}");
        assert!(
            e.contains("scale_set[0]") && e.contains("/srv/runners"),
            "{e}"
        );
        // Different names get different default workdirs.
        Config::from_toml_str(GOOD).expect("distinct defaults");
    }

    #[test]
    fn durations_and_concurrency_are_capped() {
        for field in [
            "registration_timeout_secs",
            "idle_delay_secs",
            "drain_timeout_secs",
        ] {
            let e = err(&GOOD.replace(
                "max_runners = 5",
                &format!("max_runners = 5\n        {field} = 18446744073709551615"),
            ));
            assert!(e.starts_with(&format!("scale_set[0].{field}:")), "{e}");
        }
        let e = err(&GOOD.replace(
            "max_runners = 5",
            "max_runners = 5\n        max_concurrent_starts = 100000",
        ));
        assert!(e.starts_with("scale_set[0].max_concurrent_starts:"), "{e}");
    }

    #[test]
    fn the_default_workdir_is_private_state_not_tmp() {
        let s = ScaleSetConfig::new("x");
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |n: &str| {
                vars.iter()
                    .find(|(k, _)| *k == n)
                    .map(|(_, v)| std::ffi::OsString::from(v))
            }
        };
        assert_eq!(
            s.effective_workdir_with(None, env(&[("XDG_STATE_HOME", "/st"), ("HOME", "/h")])),
            PathBuf::from("/st/scaleset/runners/x")
        );
        assert_eq!(
            s.effective_workdir_with(None, env(&[("HOME", "/h")])),
            PathBuf::from("/h/.local/state/scaleset/runners/x")
        );
        assert_eq!(
            s.effective_workdir_with(None, env(&[])),
            std::env::temp_dir().join("scaleset-runners/x")
        );
    }
}
