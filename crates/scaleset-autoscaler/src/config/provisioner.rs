//! The `[scale_set.provisioner]` table: which provisioner starts a scale set's runners, and
//! that kind's own settings. `kind` picks the table's shape; every other key belongs to the
//! kind, and a key of another kind is an error that names it.
//!
//! ```toml
//! [scale_set.provisioner]
//! kind = "process"
//! command = "/opt/runner/run.sh"
//! args = []                                # `{name}` and `{jitconfig}` are substituted
//! workdir = "/var/lib/scaleset/linux-x64"  # runner N works in workdir/N
//! env = ["HTTPS_PROXY"]                    # daemon variables passed to runners
//! ```
//!
//! ```toml
//! [scale_set.provisioner]
//! kind = "docker"
//! image = "ghcr.io/actions/actions-runner:latest"
//! command = "/home/runner/run.sh"          # the official image has no entrypoint
//! args = []
//! pull = "missing"                         # always | missing | never
//! network = "host"                         # default: Docker's default network
//! user = "runner"
//! working_dir = "/home/runner"
//! env = ["HTTPS_PROXY"]                    # daemon variables passed to runners
//! labels = { team = "ci" }                 # extra container labels
//! cpus = 2.0
//! memory_mb = 4096
//! stop_timeout_secs = 10
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::error::{Error, Result};

/// Which provisioner, with its settings.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum ProvisionerConfig {
    /// A local process per runner.
    Process(ProcessSettings),
    /// A container per runner on a Docker engine.
    Docker(DockerSettings),
}

impl Default for ProvisionerConfig {
    fn default() -> Self {
        ProvisionerConfig::Process(ProcessSettings::default())
    }
}

impl ProvisionerConfig {
    /// The kind's name, as written in `kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            ProvisionerConfig::Process(_) => "process",
            ProvisionerConfig::Docker(_) => "docker",
        }
    }

    /// The names of the daemon's environment variables passed to runners.
    pub fn env(&self) -> &[String] {
        match self {
            ProvisionerConfig::Process(p) => &p.env,
            ProvisionerConfig::Docker(d) => &d.env,
        }
    }

    /// Checks the settings; `key` is the table's path (`scale_set[0].provisioner`).
    ///
    /// # Errors
    /// [`Error::Config`] naming the offending key.
    pub fn validate(&self, key: &str) -> Result<()> {
        let at = |field: &str| format!("{key}.{field}");
        if let Some(bad) = self
            .env()
            .iter()
            .find(|n| n.is_empty() || n.contains('=') || n.contains('\0'))
        {
            return Err(Error::config(
                at("env"),
                format!("{bad:?} is not an environment variable name"),
            ));
        }
        match self {
            ProvisionerConfig::Process(p) => match &p.command {
                None => Err(Error::config(
                    at("command"),
                    "required by the process provisioner",
                )),
                Some(c) if c.trim().is_empty() => {
                    Err(Error::config(at("command"), "must not be empty"))
                }
                Some(_) => Ok(()),
            },
            ProvisionerConfig::Docker(d) => {
                if d.image.trim().is_empty() {
                    return Err(Error::config(
                        at("image"),
                        "required by the docker provisioner",
                    ));
                }
                if d.image.chars().any(char::is_whitespace) {
                    return Err(Error::config(
                        at("image"),
                        format!("{:?} is not an image reference", d.image),
                    ));
                }
                if d.command.as_deref().is_some_and(|c| c.trim().is_empty()) {
                    return Err(Error::config(at("command"), "must not be empty"));
                }
                if let Some(cpus) = d.cpus
                    && !(cpus.is_finite() && cpus > 0.0 && cpus <= 1024.0)
                {
                    return Err(Error::config(at("cpus"), "must be > 0 and at most 1024"));
                }
                if d.memory_mb == Some(0) {
                    return Err(Error::config(at("memory_mb"), "must be > 0"));
                }
                if d.stop_timeout_secs > 3600 {
                    return Err(Error::config(
                        at("stop_timeout_secs"),
                        "must be at most 3600",
                    ));
                }
                if let Some(bad) = d.labels.keys().find(|k| k.starts_with(OWN_LABEL_PREFIX)) {
                    return Err(Error::config(
                        at("labels"),
                        format!(
                            "{bad:?}: labels starting with {OWN_LABEL_PREFIX} are the provisioner's own"
                        ),
                    ));
                }
                Ok(())
            }
        }
    }

    /// Parses a `[scale_set.provisioner]` table (`value`) found at `key`.
    pub(crate) fn from_toml(key: &str, value: toml::Value) -> Result<ProvisionerConfig> {
        let toml::Value::Table(mut table) = value else {
            return Err(Error::config(
                key,
                "must be a table with a `kind` (process or docker)",
            ));
        };
        let kind = match table.remove("kind") {
            None => {
                return Err(Error::config(
                    format!("{key}.kind"),
                    "missing (process or docker)",
                ));
            }
            Some(toml::Value::String(k)) => k,
            Some(other) => {
                return Err(Error::config(
                    format!("{key}.kind"),
                    format!("must be a string, not {}", other.type_str()),
                ));
            }
        };
        let rest = toml::Value::Table(table);
        match kind.as_str() {
            "process" => Ok(ProvisionerConfig::Process(parse(key, rest)?)),
            "docker" => Ok(ProvisionerConfig::Docker(parse(key, rest)?)),
            "kubernetes" => Err(Error::config(
                format!("{key}.kind"),
                "\"kubernetes\" is not available in this version (process or docker)",
            )),
            other => Err(Error::config(
                format!("{key}.kind"),
                format!("unknown provisioner {other:?} (process or docker)"),
            )),
        }
    }
}

/// Labels starting with this are set by the provisioners themselves.
pub const OWN_LABEL_PREFIX: &str = "dev.scaleset.";

fn parse<T: for<'de> Deserialize<'de>>(key: &str, value: toml::Value) -> Result<T> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let at = if path.is_empty() || path == "." {
            key.to_string()
        } else {
            format!("{key}.{path}")
        };
        Error::config(at, e.into_inner().message().to_string())
    })
}

/// Settings of the process provisioner (`kind = "process"`).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessSettings {
    /// Program run per runner.
    pub command: Option<String>,
    /// Its arguments; `{name}` and `{jitconfig}` are substituted.
    #[serde(default)]
    pub args: Vec<String>,
    /// Base work directory; each runner gets `workdir/<runner name>`. Default:
    /// `$XDG_STATE_HOME/scaleset/runners/<name>`, else
    /// `$HOME/.local/state/scaleset/runners/<name>`, else `<temp dir>/scaleset-runners/<name>`.
    pub workdir: Option<PathBuf>,
    /// Names of the daemon's environment variables passed through to runners.
    #[serde(default)]
    pub env: Vec<String>,
}

/// When the Docker provisioner pulls the image; Docker's own words.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PullPolicy {
    /// Before every runner.
    Always,
    /// When the engine does not have the image.
    #[default]
    Missing,
    /// Never: a missing image is a failed start.
    Never,
}

impl std::str::FromStr for PullPolicy {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "always" => Ok(PullPolicy::Always),
            "missing" => Ok(PullPolicy::Missing),
            "never" => Ok(PullPolicy::Never),
            other => Err(format!(
                "unknown pull policy {other:?} (expected always, missing or never)"
            )),
        }
    }
}

impl std::fmt::Display for PullPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PullPolicy::Always => "always",
            PullPolicy::Missing => "missing",
            PullPolicy::Never => "never",
        })
    }
}

/// Settings of the Docker provisioner (`kind = "docker"`). The engine is reached through
/// `DOCKER_HOST` (with `DOCKER_CERT_PATH`/`DOCKER_TLS_VERIFY` for TLS) or the default socket.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerSettings {
    /// The runner image.
    #[serde(default)]
    pub image: String,
    /// The container's command (the official runner image has no entrypoint:
    /// `/home/runner/run.sh`); default: the image's own.
    pub command: Option<String>,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// When to pull the image.
    #[serde(default)]
    pub pull: PullPolicy,
    /// The network to attach (`host`, a user-defined network); default: Docker's default.
    pub network: Option<String>,
    /// The user the runner runs as; default: the image's.
    pub user: Option<String>,
    /// The working directory; default: the image's.
    pub working_dir: Option<String>,
    /// Names of the daemon's environment variables passed to runners.
    #[serde(default)]
    pub env: Vec<String>,
    /// Extra container labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// CPU limit, in CPUs.
    pub cpus: Option<f64>,
    /// Memory limit, in MiB.
    pub memory_mb: Option<u64>,
    /// Seconds a stopped container gets between SIGTERM and SIGKILL.
    #[serde(default = "default_stop_timeout")]
    pub stop_timeout_secs: u64,
}

fn default_stop_timeout() -> u64 {
    10
}

impl DockerSettings {
    /// Settings for `image` with defaults for the rest.
    pub fn new(image: impl Into<String>) -> DockerSettings {
        DockerSettings {
            image: image.into(),
            stop_timeout_secs: default_stop_timeout(),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_table(text: &str) -> Result<ProvisionerConfig> {
        let v: toml::Value = toml::from_str(text).expect("valid TOML");
        ProvisionerConfig::from_toml("p", v)
    }

    #[test]
    fn kinds_parse_into_their_own_settings() {
        let p = parse_table("kind = \"process\"\ncommand = \"/bin/true\"\n").expect("process");
        assert_eq!(p.kind(), "process");
        let d = parse_table(
            "kind = \"docker\"\nimage = \"img\"\npull = \"never\"\nnetwork = \"host\"\nmemory_mb = 512\n",
        )
        .expect("docker");
        let ProvisionerConfig::Docker(d) = d else {
            panic!("docker settings");
        };
        assert_eq!(d.pull, PullPolicy::Never);
        assert_eq!(d.network.as_deref(), Some("host"));
        assert_eq!(d.stop_timeout_secs, 10);
    }

    #[test]
    fn errors_name_the_key() {
        let e = parse_table("command = \"/bin/true\"\n").expect_err("no kind");
        assert!(e.to_string().starts_with("p.kind:"), "{e}");
        let e = parse_table("kind = \"podman\"\n").expect_err("unknown kind");
        assert!(e.to_string().contains("podman"), "{e}");
        let e = parse_table("kind = \"process\"\nimage = \"x\"\n").expect_err("docker key");
        assert!(e.to_string().contains("image"), "{e}");
        let e = parse_table("kind = \"docker\"\nimage = \"x\"\npull = \"sometimes\"\n")
            .expect_err("bad pull");
        assert!(e.to_string().starts_with("p.pull:"), "{e}");
        let ok = parse_table("kind = \"docker\"\n").expect("parses");
        let e = ok.validate("p").expect_err("no image");
        assert!(e.to_string().starts_with("p.image:"), "{e}");
        let ok = parse_table("kind = \"docker\"\nimage = \"x\"\ncpus = 0.0\n").expect("parses");
        assert!(
            ok.validate("p")
                .expect_err("cpus")
                .to_string()
                .starts_with("p.cpus:")
        );
        let ok = parse_table(
            "kind = \"docker\"\nimage = \"x\"\nlabels = { \"dev.scaleset.owner\" = \"me\" }\n",
        )
        .expect("parses");
        assert!(
            ok.validate("p")
                .expect_err("own label")
                .to_string()
                .starts_with("p.labels:")
        );
    }
}
