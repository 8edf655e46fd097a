//! `[leader_election]`: a hot standby on Kubernetes through a `coordination.k8s.io/v1`
//! Lease (the election itself is [`crate::leader`], cargo feature `kubernetes`).
//!
//! ```toml
//! [leader_election]
//! lease_name = "scaleset"          # default: scaleset-<first scale set>-<hash of the scale sets>
//! namespace = "scaleset"           # default: the first kubernetes scale set's namespace
//! identity = "scaleset-7d9f-abcde" # default: SCALESET_INSTANCE, else the host (pod) name
//! lease_duration_secs = 15         # a standby takes over this long after the last renewal
//! renew_deadline_secs = 10         # the leader stops acting when it could not renew this long
//! retry_period_secs = 2            # how often the leader renews and a standby tries
//! # kubeconfig = "/etc/kube/config" # default: the first kubernetes scale set's, else in-cluster
//! # context = "prod"
//! ```
//!
//! The table's presence turns leader election on (`enabled = false` turns it off again).
//! Replicas with the same configuration derive the same lease name, so they elect one
//! leader; give `lease_name` explicitly when the configuration changes during a rollout.
//! With leader election the pods' owner labels name the *lease* (the logical daemon), not
//! the replica, so the next leader finds and adopts them.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{Config, ProvisionerConfig};
use crate::error::{Error, Result};

/// client-go's default lease duration.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
/// client-go's default renew deadline.
pub const DEFAULT_RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// client-go's default retry period.
pub const DEFAULT_RETRY_PERIOD: Duration = Duration::from_secs(2);

/// The `[leader_election]` table as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaderElectionConfig {
    /// Leader election is on (the default once the table is there).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The Lease's name; see [`LeaderElectionConfig::settings`] for the default.
    pub lease_name: Option<String>,
    /// The Lease's namespace (default: the first kubernetes scale set's namespace).
    pub namespace: Option<String>,
    /// This replica's holder identity (default: [`crate::daemon::instance_name`]).
    pub identity: Option<String>,
    /// Seconds a standby waits after the last renewal it saw before it takes over.
    #[serde(default = "lease_duration")]
    pub lease_duration_secs: f64,
    /// Seconds the leader keeps acting without a successful renewal.
    #[serde(default = "renew_deadline")]
    pub renew_deadline_secs: f64,
    /// Seconds between the leader's renewals and a standby's attempts.
    #[serde(default = "retry_period")]
    pub retry_period_secs: f64,
    /// The kubeconfig file (default: the first kubernetes scale set's, else as `kubectl`).
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context (default: the first kubernetes scale set's).
    pub context: Option<String>,
}

fn yes() -> bool {
    true
}
fn lease_duration() -> f64 {
    DEFAULT_LEASE_DURATION.as_secs_f64()
}
fn renew_deadline() -> f64 {
    DEFAULT_RENEW_DEADLINE.as_secs_f64()
}
fn retry_period() -> f64 {
    DEFAULT_RETRY_PERIOD.as_secs_f64()
}

impl Default for LeaderElectionConfig {
    fn default() -> Self {
        LeaderElectionConfig {
            enabled: true,
            lease_name: None,
            namespace: None,
            identity: None,
            lease_duration_secs: lease_duration(),
            renew_deadline_secs: renew_deadline(),
            retry_period_secs: retry_period(),
            kubeconfig: None,
            context: None,
        }
    }
}

/// Leader election with every default resolved: what [`crate::leader::LeaderElection`] runs
/// with.
#[derive(Clone, Debug, PartialEq)]
pub struct LeaderElectionSettings {
    /// The Lease's name.
    pub lease_name: String,
    /// The Lease's namespace.
    pub namespace: String,
    /// This replica's holder identity.
    pub identity: String,
    /// See [`LeaderElectionConfig::lease_duration_secs`].
    pub lease_duration: Duration,
    /// See [`LeaderElectionConfig::renew_deadline_secs`].
    pub renew_deadline: Duration,
    /// See [`LeaderElectionConfig::retry_period_secs`].
    pub retry_period: Duration,
    /// The kubeconfig file, if not in-cluster/inferred.
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context.
    pub context: Option<String>,
}

/// Whether `s` is a DNS subdomain name (RFC 1123), as Lease names must be.
fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

/// FNV-1a, 64 bits: a stable hash that does not change between Rust releases.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn seconds(key: &str, secs: f64) -> Result<Duration> {
    if !secs.is_finite() || secs <= 0.0 || secs > 86_400.0 {
        return Err(Error::config(
            format!("leader_election.{key}"),
            "must be a number of seconds > 0 and at most a day",
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

impl LeaderElectionConfig {
    /// The settings for `config` (whose `leader_election` this is), defaults resolved:
    ///
    /// * `lease_name`: `scaleset-<first scale set's name, made a DNS label>-<8 hex digits
    ///   of a hash of every scale set's URL, runner group and name>`;
    /// * `namespace`, `kubeconfig`, `context`: those of the first scale set with
    ///   `kind = "kubernetes"`;
    /// * `identity`: `default_identity` (the daemon passes its instance name).
    ///
    /// # Errors
    /// [`Error::Config`] naming the key: durations not in `retry_period < renew_deadline <
    /// lease_duration` (client-go's rule), a lease name that is not a DNS subdomain, no
    /// namespace to be found, an empty identity.
    pub fn settings(
        &self,
        config: &Config,
        default_identity: &str,
    ) -> Result<LeaderElectionSettings> {
        let lease_duration = seconds("lease_duration_secs", self.lease_duration_secs)?;
        let renew_deadline = seconds("renew_deadline_secs", self.renew_deadline_secs)?;
        let retry_period = seconds("retry_period_secs", self.retry_period_secs)?;
        if renew_deadline >= lease_duration {
            return Err(Error::config(
                "leader_election.renew_deadline_secs",
                "must be shorter than lease_duration_secs (a leader stops acting before a standby may take over)",
            ));
        }
        if retry_period >= renew_deadline {
            return Err(Error::config(
                "leader_election.retry_period_secs",
                "must be shorter than renew_deadline_secs (the leader retries a failed renewal before its deadline)",
            ));
        }
        let kubernetes = config.scale_sets.iter().find_map(|s| match &s.provisioner {
            ProvisionerConfig::Kubernetes(k) => Some(k),
            _ => None,
        });
        let namespace = match (&self.namespace, kubernetes) {
            (Some(ns), _) => ns.clone(),
            (None, Some(k)) => k.namespace.clone(),
            (None, None) => {
                return Err(Error::config(
                    "leader_election.namespace",
                    "missing (no scale set has kind = \"kubernetes\" to take it from)",
                ));
            }
        };
        if !is_dns_subdomain(&namespace) || namespace.contains('.') || namespace.len() > 63 {
            return Err(Error::config(
                "leader_election.namespace",
                format!("{namespace:?} is not a Kubernetes namespace name"),
            ));
        }
        let lease_name = match &self.lease_name {
            Some(n) => n.clone(),
            None => default_lease_name(config),
        };
        if !is_dns_subdomain(&lease_name) {
            return Err(Error::config(
                "leader_election.lease_name",
                format!(
                    "{lease_name:?} is not a DNS subdomain name (lowercase letters, digits, '-' and '.')"
                ),
            ));
        }
        let identity = self
            .identity
            .clone()
            .unwrap_or_else(|| default_identity.to_string());
        if identity.trim().is_empty() {
            return Err(Error::config(
                "leader_election.identity",
                "must not be empty",
            ));
        }
        Ok(LeaderElectionSettings {
            lease_name,
            namespace,
            identity,
            lease_duration,
            renew_deadline,
            retry_period,
            kubeconfig: self
                .kubeconfig
                .clone()
                .or_else(|| kubernetes.and_then(|k| k.kubeconfig.clone())),
            context: self
                .context
                .clone()
                .or_else(|| kubernetes.and_then(|k| k.context.clone())),
        })
    }
}

/// The lease name replicas with the same scale sets share (see
/// [`LeaderElectionConfig::settings`]).
pub fn default_lease_name(config: &Config) -> String {
    let mut ids: Vec<String> = (0..config.scale_sets.len())
        .map(|i| {
            let s = &config.scale_sets[i];
            format!(
                "{}\n{}\n{}",
                config
                    .url_of(i)
                    .unwrap_or_default()
                    .trim()
                    .trim_end_matches('/')
                    .to_lowercase(),
                s.runner_group.trim().to_lowercase(),
                s.name.trim().to_lowercase()
            )
        })
        .collect();
    ids.sort();
    let hash = fnv1a(ids.join("\n\n").as_bytes());
    let first: String = config
        .scale_sets
        .first()
        .map(|s| s.name.to_lowercase())
        .unwrap_or_default()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(40)
        .collect();
    let first = first.trim_matches('-');
    if first.is_empty() {
        format!("scaleset-{:08x}", hash as u32)
    } else {
        format!("scaleset-{first}-{:08x}", hash as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::from_toml_str(text).expect("a valid config")
    }

    const K8S: &str = "[connection]\nurl = \"https://github.com/o\"\n[[scale_set]]\nname = \"Linux_X64\"\n[scale_set.provisioner]\nkind = \"kubernetes\"\nnamespace = \"ci\"\npod_template = \"/p.yaml\"\nkubeconfig = \"/k\"\ncontext = \"c\"\n";

    #[test]
    fn defaults_are_client_gos_and_come_from_the_kubernetes_scale_set() {
        let c = config(&format!("{K8S}[leader_election]\n"));
        let le = c.leader_election.as_ref().expect("the table");
        let s = le.settings(&c, "pod-a").expect("settings");
        assert_eq!(s.namespace, "ci");
        assert_eq!(s.identity, "pod-a");
        assert_eq!(s.lease_duration, Duration::from_secs(15));
        assert_eq!(s.renew_deadline, Duration::from_secs(10));
        assert_eq!(s.retry_period, Duration::from_secs(2));
        assert_eq!(s.kubeconfig, Some(PathBuf::from("/k")));
        assert_eq!(s.context.as_deref(), Some("c"));
        assert!(
            s.lease_name.starts_with("scaleset-linux-x64-"),
            "{}",
            s.lease_name
        );
        assert_eq!(s.lease_name.len(), "scaleset-linux-x64-".len() + 8);
        // The same scale sets give the same name; another set another one.
        assert_eq!(default_lease_name(&c), s.lease_name);
        let other = config(&K8S.replace("Linux_X64", "linux-arm"));
        assert_ne!(default_lease_name(&other), s.lease_name);
    }

    #[test]
    fn explicit_keys_win_and_bad_values_name_their_key() {
        let c = config(&format!(
            "{K8S}[leader_election]\nlease_name = \"ha\"\nnamespace = \"ops\"\nidentity = \"me\"\nlease_duration_secs = 4\nrenew_deadline_secs = 2.5\nretry_period_secs = 0.5\n"
        ));
        let s = c
            .leader_election
            .as_ref()
            .expect("the table")
            .settings(&c, "pod-a")
            .expect("settings");
        assert_eq!(
            (
                s.lease_name.as_str(),
                s.namespace.as_str(),
                s.identity.as_str()
            ),
            ("ha", "ops", "me")
        );
        assert_eq!(s.renew_deadline, Duration::from_millis(2500));
        for (extra, key) in [
            (
                "renew_deadline_secs = 20",
                "leader_election.renew_deadline_secs",
            ),
            (
                "retry_period_secs = 10",
                "leader_election.retry_period_secs",
            ),
            (
                "lease_duration_secs = 0",
                "leader_election.lease_duration_secs",
            ),
            ("lease_name = \"Not_A_Name\"", "leader_election.lease_name"),
            ("namespace = \"a.b\"", "leader_election.namespace"),
            ("identity = \" \"", "leader_election.identity"),
        ] {
            let text = format!("{K8S}[leader_election]\n{extra}\n");
            let e = Config::from_toml_str(&text).expect_err(extra);
            assert!(e.to_string().starts_with(key), "{extra}: {e}");
        }
        let e = Config::from_toml_str(&format!("{K8S}[leader_election]\nlease = 3\n"))
            .expect_err("unknown key");
        assert!(e.to_string().contains("leader_election"), "{e}");
    }

    #[test]
    fn without_a_kubernetes_scale_set_the_namespace_is_required() {
        let text = "[connection]\nurl = \"https://github.com/o\"\n[[scale_set]]\nname = \"a\"\n[scale_set.provisioner]\nkind = \"process\"\ncommand = \"/run.sh\"\n[leader_election]\n";
        let e = Config::from_toml_str(text).expect_err("no namespace");
        assert!(
            e.to_string().starts_with("leader_election.namespace"),
            "{e}"
        );
        let ok = format!("{text}namespace = \"ci\"\n");
        config(&ok);
        config(&format!("{text}enabled = false\n"));
    }

    #[test]
    fn a_scale_set_deleted_on_stop_is_refused_with_leader_election() {
        let text = K8S.replace(
            "name = \"Linux_X64\"\n",
            "name = \"Linux_X64\"\nshutdown = \"delete\"\n",
        );
        config(&text);
        let e = Config::from_toml_str(&format!("{text}[leader_election]\n"))
            .expect_err("delete with a standby");
        let msg = e.to_string();
        assert!(msg.starts_with("scale_set.shutdown"), "{msg}");
        assert!(msg.contains("Linux_X64") && msg.contains("delete"), "{msg}");
        config(&format!("{text}[leader_election]\nenabled = false\n"));
        config(&format!(
            "{}[leader_election]\n",
            K8S.replace(
                "name = \"Linux_X64\"\n",
                "name = \"Linux_X64\"\nshutdown = \"drain\"\n"
            )
        ));
    }
}
