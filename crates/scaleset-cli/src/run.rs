//! `scaleset run`: the autoscaler daemon for one scale set from flags, or several from a
//! TOML file (`--config`). SIGINT/SIGTERM apply the shutdown policy.

use std::collections::HashMap;
use std::path::PathBuf;

use actions_scaleset::Client;
use clap::Args;
use scaleset_autoscaler::config::{
    Config, Connection, DockerSettings, KubernetesSettings, ProcessSettings, ProvisionerConfig,
    PullPolicy, ScaleSetConfig, ShutdownPolicy,
};
use scaleset_autoscaler::provisioner::kubernetes::PodTemplate;

use crate::error::CliError;
use crate::globals::{ConnectionArgs, client_from_connection};

/// Options of `run`.
#[derive(Args, Debug)]
#[command(after_help = "\
Runs an autoscaler: creates (or adopts) the scale set, starts a runner per
assigned job with the runner command (the JIT config in
ACTIONS_RUNNER_INPUT_JITCONFIG; {name} and {jitconfig} substituted in
--runner-arg), and stops idle runners. If another instance holds the scale
set's session, this one waits as a hot standby. On Kubernetes,
--leader-election makes replicas share a Lease: only its holder acts.

Examples:
  scaleset run --url https://github.com/my-org --name linux \\
      --label x64 --max-runners 20 --runner-command /opt/runner/run.sh
  scaleset run --url https://github.com/my-org --name k8s --max-runners 50 \\
      --provisioner kubernetes --namespace ci --pod-template pod.yaml \\
      --leader-election
  scaleset run --config autoscaler.toml --metrics-addr 127.0.0.1:9090")]
pub(crate) struct RunArgs {
    /// A TOML file with one `[[scale_set]]` per scale set (the scale set flags are then ignored).
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Scale set name.
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// An extra label (repeatable); the name is always the first label.
    #[arg(long = "label", value_name = "LABEL")]
    labels: Vec<String>,
    /// Runner group name.
    #[arg(long, default_value = "default", value_name = "NAME")]
    runner_group: String,
    /// Runners kept even without demand.
    #[arg(long, default_value_t = 0, value_name = "N")]
    min_runners: u32,
    /// Most runners at once.
    #[arg(long, default_value_t = 10, value_name = "N")]
    max_runners: u32,
    /// Extra idle runners above demand.
    #[arg(long, default_value_t = 0, value_name = "N")]
    idle_headroom: u32,
    /// Seconds an idle runner above the target stays before it is stopped.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    idle_delay: u64,
    /// What starts runners: local processes, containers on a Docker engine (reached
    /// through DOCKER_HOST or the default socket), or pods on a Kubernetes cluster (in-cluster,
    /// else --kubeconfig, KUBECONFIG or ~/.kube/config).
    #[arg(long, default_value = "process", value_parser = ["process", "docker", "kubernetes"])]
    provisioner: String,
    /// Program started per runner; with docker and kubernetes, the runner container's
    /// command (the official runner image has no entrypoint: /home/runner/run.sh).
    #[arg(long, value_name = "PROGRAM")]
    runner_command: Option<String>,
    /// An argument of the runner command (repeatable; for processes {name} and {jitconfig}
    /// are substituted).
    #[arg(long = "runner-arg", value_name = "ARG", allow_hyphen_values = true)]
    runner_args: Vec<String>,
    /// Docker: the runner image. Kubernetes: overrides the pod template's runner container
    /// image.
    #[arg(long, value_name = "IMAGE")]
    image: Option<String>,
    /// Docker: when to pull the image.
    #[arg(long, value_name = "POLICY", value_parser = ["always", "missing", "never"])]
    pull: Option<String>,
    /// Docker: the network runner containers join (e.g. host) [default: Docker's default].
    #[arg(long, value_name = "NAME")]
    network: Option<String>,
    /// Kubernetes: the namespace of the runner pods and their Secrets [default: default].
    #[arg(long, value_name = "NS")]
    namespace: Option<String>,
    /// Kubernetes: the pod template, a YAML Pod manifest (or PodTemplateSpec) with a
    /// container named runner.
    #[arg(long, value_name = "FILE")]
    pod_template: Option<PathBuf>,
    /// Kubernetes: the kubeconfig file [default: in-cluster, else KUBECONFIG, else
    /// ~/.kube/config].
    #[arg(long, value_name = "PATH")]
    kubeconfig: Option<PathBuf>,
    /// Kubernetes: the kubeconfig context [default: its current context].
    #[arg(long, value_name = "NAME")]
    context: Option<String>,
    /// Base work directory, private to this user (runner N works in DIR/N) [default:
    /// $XDG_STATE_HOME/scaleset/runners/NAME or ~/.local/state/scaleset/runners/NAME].
    #[arg(long, value_name = "DIR")]
    runner_workdir: Option<PathBuf>,
    /// A variable of this environment to pass to runners (repeatable). Runners get only
    /// PATH, HOME, LANG, LC_ALL, TMPDIR, USER, TZ, these and their JIT config.
    #[arg(long = "runner-env", value_name = "NAME")]
    runner_env: Vec<String>,
    /// Serve /metrics, /healthz and /readyz on HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    metrics_addr: Option<String>,
    /// Seconds of the long-poll window (/readyz wants a poll within twice this).
    #[arg(long, value_name = "SECS")]
    poll_window: Option<u64>,
    /// What SIGINT/SIGTERM do: keep (leave busy runners), drain (wait for them), delete
    /// (drain, then delete the scale set).
    #[arg(long, default_value = "keep", value_name = "POLICY")]
    shutdown: ShutdownPolicy,
    /// Seconds drain/delete wait for busy runners.
    #[arg(long, default_value_t = 600, value_name = "SECS")]
    drain_timeout: u64,
    /// Kubernetes hot standby: only the replica holding a coordination.k8s.io Lease acts;
    /// the others wait, ready, and take over within the lease duration (15 s) when it stops
    /// renewing. In a config file: the leader_election table.
    #[arg(long)]
    leader_election: bool,
    /// The Lease's name [default: scaleset-NAME-HASH: the first scale set's name and a hash
    /// of all of them].
    #[arg(long, value_name = "NAME", requires = "leader_election")]
    lease_name: Option<String>,
    /// The Lease's namespace [default: --namespace].
    #[arg(long, value_name = "NS", requires = "leader_election")]
    lease_namespace: Option<String>,
    /// Connection options given after the subcommand (last: the heading they set applies
    /// to every option after them).
    #[command(flatten)]
    pub(crate) connection: ConnectionArgs,
}

impl RunArgs {
    /// The `[scale_set.provisioner]` table the flags describe; a flag of another kind is an
    /// error naming it.
    fn provisioner_config(&self) -> Result<ProvisionerConfig, CliError> {
        let wrong = |flag: &str, kind: &str| {
            CliError::config(
                "InvalidArgument",
                format!("run: {flag} applies to --provisioner {kind} only"),
            )
        };
        let kubernetes_flags = [
            ("--namespace", self.namespace.is_some()),
            ("--pod-template", self.pod_template.is_some()),
            ("--kubeconfig", self.kubeconfig.is_some()),
            ("--context", self.context.is_some()),
        ];
        if self.provisioner != "kubernetes"
            && let Some((flag, _)) = kubernetes_flags.iter().find(|(_, set)| *set)
        {
            return Err(wrong(flag, "kubernetes"));
        }
        match self.provisioner.as_str() {
            "kubernetes" => {
                for (flag, set, kind) in [
                    ("--runner-workdir", self.runner_workdir.is_some(), "process"),
                    ("--pull", self.pull.is_some(), "docker"),
                    ("--network", self.network.is_some(), "docker"),
                ] {
                    if set {
                        return Err(wrong(flag, kind));
                    }
                }
                let template = self.pod_template.clone().ok_or_else(|| {
                    CliError::config(
                        "InvalidArgument",
                        "run: --provisioner kubernetes needs --pod-template FILE",
                    )
                })?;
                let mut k = KubernetesSettings::new(template);
                if let Some(ns) = &self.namespace {
                    k.namespace = ns.clone();
                }
                k.image = self.image.clone();
                k.command = self.runner_command.clone();
                k.args = self.runner_args.clone();
                k.env = self.runner_env.clone();
                k.kubeconfig = self.kubeconfig.clone();
                k.context = self.context.clone();
                Ok(ProvisionerConfig::Kubernetes(k))
            }
            "docker" => {
                if self.runner_workdir.is_some() {
                    return Err(wrong("--runner-workdir", "process"));
                }
                let mut d = DockerSettings::new(self.image.clone().unwrap_or_default());
                d.command = self.runner_command.clone();
                d.args = self.runner_args.clone();
                d.env = self.runner_env.clone();
                d.network = self.network.clone();
                if let Some(pull) = &self.pull {
                    d.pull = pull.parse::<PullPolicy>().map_err(|e| {
                        CliError::config("InvalidArgument", format!("run: --pull: {e}"))
                    })?;
                }
                Ok(ProvisionerConfig::Docker(d))
            }
            _ => {
                for (flag, set, kind) in [
                    ("--image", self.image.is_some(), "docker or kubernetes"),
                    ("--pull", self.pull.is_some(), "docker"),
                    ("--network", self.network.is_some(), "docker"),
                ] {
                    if set {
                        return Err(wrong(flag, kind));
                    }
                }
                Ok(ProvisionerConfig::Process(ProcessSettings {
                    command: self.runner_command.clone(),
                    args: self.runner_args.clone(),
                    workdir: self.runner_workdir.clone(),
                    env: self.runner_env.clone(),
                }))
            }
        }
    }

    fn to_config(&self, g: &ConnectionArgs) -> Result<Config, CliError> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path).map_err(|e| {
                // The file's errors start with its path; the flag says where it came from.
                CliError::config("InvalidConfig", format!("--config {e}"))
            })?,
            None => {
                let name = self.name.clone().ok_or_else(|| {
                    CliError::config("InvalidArgument", "run: give --name (or --config)")
                })?;
                let mut s = ScaleSetConfig::new(name);
                s.labels = self.labels.clone();
                s.runner_group = self.runner_group.clone();
                s.min_runners = self.min_runners;
                s.max_runners = self.max_runners;
                s.idle_headroom = self.idle_headroom;
                s.idle_delay_secs = self.idle_delay;
                s.provisioner = self.provisioner_config()?;
                s.shutdown = self.shutdown;
                s.drain_timeout_secs = self.drain_timeout;
                let mut c = Config::default();
                c.scale_sets.push(s);
                c
            }
        };
        if config.connection.url.is_none() {
            config.connection.url = g.url.clone();
        }
        if let Some(addr) = &self.metrics_addr {
            config.metrics.addr = Some(addr.clone());
        }
        if let Some(w) = self.poll_window {
            config.metrics.poll_window_secs = w;
        }
        if self.leader_election {
            let le = config.leader_election.get_or_insert_with(Default::default);
            le.enabled = true;
            if let Some(name) = &self.lease_name {
                le.lease_name = Some(name.clone());
            }
            if let Some(ns) = &self.lease_namespace {
                le.namespace = Some(ns.clone());
            }
        }
        config.validate().map_err(|e| {
            // Flag-built configs name flags, not file keys.
            let msg = e.to_string();
            let msg = if self.config.is_none() {
                [
                    ("scale_set[0].max_runners", "--max-runners"),
                    ("scale_set[0].min_runners", "--min-runners"),
                    ("scale_set[0].provisioner.command", "--runner-command"),
                    ("scale_set[0].provisioner.args", "--runner-arg"),
                    ("scale_set[0].provisioner.image", "--image"),
                    ("scale_set[0].provisioner.pull", "--pull"),
                    ("scale_set[0].provisioner.network", "--network"),
                    ("scale_set[0].provisioner.workdir", "--runner-workdir"),
                    ("scale_set[0].provisioner.env", "--runner-env"),
                    ("scale_set[0].provisioner.namespace", "--namespace"),
                    ("scale_set[0].provisioner.pod_template", "--pod-template"),
                    ("scale_set[0].provisioner.kubeconfig", "--kubeconfig"),
                    ("scale_set[0].provisioner.context", "--context"),
                    ("scale_set[0].provisioner.kind", "--provisioner"),
                    ("scale_set[0].url", "--url"),
                    ("scale_set[0].name", "--name"),
                    ("scale_set[0].labels", "--label"),
                    ("scale_set[0].runner_group", "--runner-group"),
                    ("scale_set[0].idle_delay_secs", "--idle-delay"),
                    ("scale_set[0].drain_timeout_secs", "--drain-timeout"),
                    ("scale_set[0].runner_name_prefix", "--name"),
                    ("leader_election.lease_name", "--lease-name"),
                    ("leader_election.namespace", "--lease-namespace"),
                    ("metrics.addr", "--metrics-addr"),
                    ("metrics.poll_window_secs", "--poll-window"),
                    ("connection.url", "--url"),
                ]
                .iter()
                .fold(msg, |m, (key, flag)| m.replace(key, flag))
            } else {
                msg
            };
            CliError::config("InvalidConfig", msg)
        })?;
        // A pod template that cannot be used is a configuration error, found before anything
        // talks to GitHub or the cluster.
        for s in &config.scale_sets {
            if let ProvisionerConfig::Kubernetes(k) = &s.provisioner {
                PodTemplate::load(&k.pod_template, &k.runner_container)
                    .map_err(|e| CliError::config("InvalidConfig", format!("run: {e}")))?;
            }
        }
        Ok(config)
    }
}

/// Runs `run`.
pub(crate) async fn run(g: &ConnectionArgs, args: RunArgs) -> Result<(), CliError> {
    let config = args.to_config(g)?;
    let mut clients: HashMap<String, Client> = HashMap::new();
    for i in 0..config.scale_sets.len() {
        if let Some(url) = config.url_of(i)
            && !clients.contains_key(url)
        {
            let per_url = globals_for(g, &config.connection, url, &|n| std::env::var(n).ok())?;
            clients.insert(url.to_string(), client_from_connection(&per_url)?);
        }
    }
    let shutdown = crate::signal::shutdown_token()?;
    let make = |url: &str| {
        clients.get(url).cloned().ok_or_else(|| {
            scaleset_autoscaler::Error::config("connection.url", format!("no client for {url}"))
        })
    };
    scaleset_autoscaler::daemon::run(config, make, shutdown)
        .await
        .map_err(|e| match e {
            scaleset_autoscaler::Error::Api(e) => CliError::api("run", e),
            e @ scaleset_autoscaler::Error::Config { .. } => {
                CliError::config("InvalidConfig", e.to_string())
            }
            e @ scaleset_autoscaler::Error::Internal(_) => {
                CliError::other("Internal", e.to_string())
            }
            e => CliError::other("Run", e.to_string()),
        })
}

/// The global options for the client of `url`, completed with the config file's
/// `[connection]` credentials and client certificate. Flags and their environment variables
/// win: the file's `client_cert_file`/`client_key_file` and GitHub App fields fill only what
/// they left unset, and its token (`token_file`, re-read when it changes, else `token_env`) is
/// used only when neither `--token`/`SCALESET_TOKEN`, `--token-file` nor a complete GitHub App
/// is given.
/// Without either, [`client_from_connection`] falls back to `GITHUB_TOKEN`. Secrets are never
/// part of an error.
fn globals_for(
    g: &ConnectionArgs,
    conn: &Connection,
    url: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ConnectionArgs, CliError> {
    let mut g = g.clone();
    g.url = Some(url.to_string());
    // The client certificate: flags (and their variables) win, each half on its own.
    if g.client_cert.is_none()
        && let Some(path) = &conn.client_cert_file
    {
        g.client_cert = Some(path.clone());
        g.names.client_cert = "connection.client_cert_file";
    }
    if g.client_key.is_none()
        && let Some(path) = &conn.client_key_file
    {
        g.client_key = Some(path.clone());
        g.names.client_key = "connection.client_key_file";
    }
    if g.token.as_deref().is_some_and(|t| !t.trim().is_empty()) || g.token_file.is_some() {
        return Ok(g);
    }
    if g.app_client_id.is_none() {
        g.app_client_id = conn.app_client_id.clone();
    }
    if g.app_installation_id.is_none() {
        g.app_installation_id = conn.app_installation_id;
    }
    if g.app_private_key_file.is_none() && env(crate::globals::ENV_APP_PRIVATE_KEY).is_none() {
        g.app_private_key_file = conn.app_private_key_file.clone();
    }
    let app_complete = g.app_client_id.is_some()
        && g.app_installation_id.is_some()
        && (g.app_private_key_file.is_some() || env(crate::globals::ENV_APP_PRIVATE_KEY).is_some());
    if app_complete {
        return Ok(g);
    }
    if let Some(path) = &conn.token_file {
        // Re-read when it changes (Credentials::token_file), like --token-file.
        g.token_file = Some(path.clone());
        g.names.token_file = "connection.token_file";
    } else if let Some(var) = &conn.token_env {
        match env(var).filter(|v| !v.trim().is_empty()) {
            Some(token) => g.token = Some(token),
            None => {
                return Err(CliError::config(
                    "InvalidCredentials",
                    format!("connection.token_env: the environment variable {var} is not set"),
                ));
            }
        }
    }
    Ok(g)
}
