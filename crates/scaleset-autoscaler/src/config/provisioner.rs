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
//!
//! ```toml
//! [scale_set.provisioner]
//! kind = "kubernetes"
//! namespace = "runners"                    # default: default
//! pod_template = "/etc/scaleset/runner-pod.yaml"   # a Pod or a PodTemplateSpec (required)
//! runner_container = "runner"              # the template's runner container
//! image = "ghcr.io/actions/actions-runner:latest"  # default: the template's
//! command = "/home/runner/run.sh"          # default: the template's
//! args = []
//! env = ["HTTPS_PROXY"]                    # daemon variables passed to runners
//! labels = { team = "ci" }                 # extra pod labels
//! start_deadline_secs = 300                # image pull errors, unschedulable pods
//! terminating_deadline_secs = 120          # pods stuck terminating are reported then
//! force_delete = false                     # ... and force-deleted only when true
//! stop_timeout_secs = 10                   # the pod's termination grace period on stop
//! kubeconfig = "/home/me/.kube/config"     # default: in-cluster, else KUBECONFIG
//! context = "prod"                         # default: the kubeconfig's current context
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
    /// A pod per runner on a Kubernetes cluster.
    Kubernetes(KubernetesSettings),
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
            ProvisionerConfig::Kubernetes(_) => "kubernetes",
        }
    }

    /// The names of the daemon's environment variables passed to runners.
    pub fn env(&self) -> &[String] {
        match self {
            ProvisionerConfig::Process(p) => &p.env,
            ProvisionerConfig::Docker(d) => &d.env,
            ProvisionerConfig::Kubernetes(k) => &k.env,
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
            ProvisionerConfig::Kubernetes(k) => k.validate(key),
        }
    }

    /// Parses a `[scale_set.provisioner]` table (`value`) found at `key`.
    pub(crate) fn from_toml(key: &str, value: toml::Value) -> Result<ProvisionerConfig> {
        let toml::Value::Table(mut table) = value else {
            return Err(Error::config(
                key,
                "must be a table with a `kind` (process, docker or kubernetes)",
            ));
        };
        let kind = match table.remove("kind") {
            None => {
                return Err(Error::config(
                    format!("{key}.kind"),
                    "missing (process, docker or kubernetes)",
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
            "kubernetes" => Ok(ProvisionerConfig::Kubernetes(parse(key, rest)?)),
            other => Err(Error::config(
                format!("{key}.kind"),
                format!("unknown provisioner {other:?} (process, docker or kubernetes)"),
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

/// Settings of the Kubernetes provisioner (`kind = "kubernetes"`): one Pod per runner from
/// a pod template. The cluster is reached in-cluster (service account) or through a
/// kubeconfig (`kubeconfig`, else `KUBECONFIG`, else `~/.kube/config`), as `kubectl` does.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesSettings {
    /// The namespace the runner pods and their Secrets live in.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// The pod template: a YAML file holding a Pod manifest (`kind: Pod`) or a
    /// PodTemplateSpec (`metadata` and `spec`), with a container named
    /// [`runner_container`](Self::runner_container). Required.
    #[serde(default)]
    pub pod_template: PathBuf,
    /// Overrides the runner container's image; default: the template's.
    pub image: Option<String>,
    /// Overrides the runner container's command (`command: [this]`); default: the
    /// template's (the official runner image has none: `/home/runner/run.sh`).
    pub command: Option<String>,
    /// The runner container's arguments (`args`); when empty, the template's stay.
    #[serde(default)]
    pub args: Vec<String>,
    /// The name of the runner container in the template.
    #[serde(default = "default_runner_container")]
    pub runner_container: String,
    /// How long a pod may wait for its image (`ErrImagePull`, `ImagePullBackOff`, ...), a
    /// valid container configuration or a node before it is reported as a failed start and
    /// deleted. `InvalidImageName` is reported at once.
    #[serde(default = "default_start_deadline")]
    pub start_deadline_secs: u64,
    /// How long a pod may stay terminating before it is reported (and force-deleted when
    /// [`force_delete`](Self::force_delete) says so).
    #[serde(default = "default_terminating_deadline")]
    pub terminating_deadline_secs: u64,
    /// The grace period of a stopped runner's pod (seconds between SIGTERM and SIGKILL).
    #[serde(default = "default_stop_timeout")]
    pub stop_timeout_secs: u64,
    /// Force-delete (grace period 0) pods stuck terminating past
    /// [`terminating_deadline_secs`](Self::terminating_deadline_secs). A force-deleted pod
    /// may still run on its node while the API no longer shows it.
    #[serde(default)]
    pub force_delete: bool,
    /// The kubeconfig file; default: in-cluster configuration, else `KUBECONFIG`, else
    /// `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context; default: its current context.
    pub context: Option<String>,
    /// Names of the daemon's environment variables passed to the runner container.
    #[serde(default)]
    pub env: Vec<String>,
    /// Extra pod labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

fn default_namespace() -> String {
    "default".into()
}

fn default_runner_container() -> String {
    "runner".into()
}

fn default_start_deadline() -> u64 {
    300
}

fn default_terminating_deadline() -> u64 {
    120
}

impl Default for KubernetesSettings {
    fn default() -> Self {
        KubernetesSettings {
            namespace: default_namespace(),
            pod_template: PathBuf::new(),
            image: None,
            command: None,
            args: Vec::new(),
            runner_container: default_runner_container(),
            start_deadline_secs: default_start_deadline(),
            terminating_deadline_secs: default_terminating_deadline(),
            stop_timeout_secs: default_stop_timeout(),
            force_delete: false,
            kubeconfig: None,
            context: None,
            env: Vec::new(),
            labels: BTreeMap::new(),
        }
    }
}

impl KubernetesSettings {
    /// Settings for the pod template at `pod_template` with defaults for the rest.
    pub fn new(pod_template: impl Into<PathBuf>) -> KubernetesSettings {
        KubernetesSettings {
            pod_template: pod_template.into(),
            ..Default::default()
        }
    }

    fn validate(&self, key: &str) -> Result<()> {
        let at = |field: &str| format!("{key}.{field}");
        if self.pod_template.as_os_str().is_empty() {
            return Err(Error::config(
                at("pod_template"),
                "required by the kubernetes provisioner",
            ));
        }
        if !is_dns_label(&self.namespace) {
            return Err(Error::config(
                at("namespace"),
                format!(
                    "{:?} is not a namespace name (lower-case letters, digits and '-', at most 63)",
                    self.namespace
                ),
            ));
        }
        if !is_dns_label(&self.runner_container) {
            return Err(Error::config(
                at("runner_container"),
                format!("{:?} is not a container name", self.runner_container),
            ));
        }
        if let Some(image) = &self.image
            && (image.trim().is_empty() || image.chars().any(char::is_whitespace))
        {
            return Err(Error::config(
                at("image"),
                format!("{image:?} is not an image reference"),
            ));
        }
        if self.command.as_deref().is_some_and(|c| c.trim().is_empty()) {
            return Err(Error::config(at("command"), "must not be empty"));
        }
        if self.context.as_deref().is_some_and(|c| c.trim().is_empty()) {
            return Err(Error::config(at("context"), "must not be empty"));
        }
        if self
            .kubeconfig
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Err(Error::config(at("kubeconfig"), "must not be empty"));
        }
        for (field, secs) in [
            ("start_deadline_secs", self.start_deadline_secs),
            ("terminating_deadline_secs", self.terminating_deadline_secs),
            ("stop_timeout_secs", self.stop_timeout_secs),
        ] {
            if secs > 86_400 {
                return Err(Error::config(at(field), "must be at most 86400 (a day)"));
            }
        }
        for (k, v) in &self.labels {
            if k.starts_with(OWN_LABEL_PREFIX) {
                return Err(Error::config(
                    at("labels"),
                    format!(
                        "{k:?}: labels starting with {OWN_LABEL_PREFIX} are the provisioner's own"
                    ),
                ));
            }
            if !is_label_key(k) {
                return Err(Error::config(
                    at("labels"),
                    format!("{k:?} is not a Kubernetes label key"),
                ));
            }
            if !is_label_value(v) {
                return Err(Error::config(
                    at("labels"),
                    format!("{k:?} = {v:?}: not a Kubernetes label value"),
                ));
            }
        }
        Ok(())
    }
}

/// Whether `s` is a DNS-1123 label (namespace and container names).
pub(crate) fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Whether `s` is a Kubernetes label value: at most 63 of `[A-Za-z0-9._-]`, starting and
/// ending with an alphanumeric (or empty).
pub(crate) fn is_label_value(s: &str) -> bool {
    s.is_empty()
        || (s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && s.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric()))
}

/// Whether `s` is a Kubernetes label key: an optional DNS subdomain prefix and `/`, then a
/// name as for [`is_label_value`] (not empty).
pub(crate) fn is_label_key(s: &str) -> bool {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    let prefix_ok =
        prefix.is_none_or(|p| !p.is_empty() && p.len() <= 253 && p.split('.').all(is_dns_label));
    prefix_ok && !name.is_empty() && is_label_value(name)
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

    #[test]
    fn kubernetes_settings_parse_with_defaults_and_are_checked() {
        let k = parse_table("kind = \"kubernetes\"\npod_template = \"/etc/pod.yaml\"\n")
            .expect("kubernetes");
        let ProvisionerConfig::Kubernetes(k) = &k else {
            panic!("kubernetes settings");
        };
        assert_eq!(k.namespace, "default");
        assert_eq!(k.runner_container, "runner");
        assert_eq!(k.start_deadline_secs, 300);
        assert_eq!(k.terminating_deadline_secs, 120);
        assert_eq!(k.stop_timeout_secs, 10);
        assert!(!k.force_delete);
        let full = parse_table(
            "kind = \"kubernetes\"\nnamespace = \"ci\"\npod_template = \"p.yaml\"\nimage = \"img:1\"\ncommand = \"/run.sh\"\nargs = [\"--once\"]\nrunner_container = \"main\"\nstart_deadline_secs = 5\nterminating_deadline_secs = 6\nstop_timeout_secs = 7\nforce_delete = true\nkubeconfig = \"/k\"\ncontext = \"prod\"\nenv = [\"A\"]\nlabels = { team = \"ci\" }\n",
        )
        .expect("every key");
        full.validate("p").expect("valid");
        let e = parse_table("kind = \"kubernetes\"\npod_template = \"p\"\npull = \"never\"\n")
            .expect_err("a docker key");
        assert!(e.to_string().contains("pull"), "{e}");
        let e = parse_table("kind = \"kubernetes\"\n")
            .expect("parses")
            .validate("p")
            .expect_err("no template");
        assert!(e.to_string().starts_with("p.pod_template:"), "{e}");
        for (extra, field) in [
            ("namespace = \"Bad_NS\"", "p.namespace:"),
            ("runner_container = \"\"", "p.runner_container:"),
            ("image = \"a b\"", "p.image:"),
            ("command = \" \"", "p.command:"),
            ("labels = { \"dev.scaleset.x\" = \"y\" }", "p.labels:"),
            ("labels = { team = \"not a value\" }", "p.labels:"),
            ("labels = { \"bad key!\" = \"v\" }", "p.labels:"),
            ("stop_timeout_secs = 100000", "p.stop_timeout_secs:"),
        ] {
            let text = format!("kind = \"kubernetes\"\npod_template = \"p\"\n{extra}\n");
            let e = parse_table(&text)
                .expect("parses")
                .validate("p")
                .expect_err(extra);
            assert!(e.to_string().starts_with(field), "{extra}: {e}");
        }
    }

    #[test]
    fn kubernetes_names_and_labels_are_checked_as_the_api_does() {
        assert!(is_dns_label("runners-1"));
        assert!(!is_dns_label("-x") && !is_dns_label("A") && !is_dns_label(""));
        assert!(is_label_value("") && is_label_value("a.b_c-D"));
        assert!(!is_label_value("-a") && !is_label_value(&"a".repeat(64)));
        assert!(is_label_key("team") && is_label_key("example.com/team"));
        assert!(!is_label_key("/team") && !is_label_key("Ex.com/x") && !is_label_key("a/"));
    }
}
