//! `scaleset run`: the autoscaler daemon for one scale set from flags, or several from a
//! TOML file (`--config`). SIGINT/SIGTERM apply the shutdown policy.

use std::collections::HashMap;
use std::path::PathBuf;

use actions_scaleset::Client;
use clap::Args;
use scaleset_autoscaler::config::{Config, ProvisionerKind, ScaleSetConfig, ShutdownPolicy};

use crate::error::CliError;
use crate::globals::{GlobalArgs, client_from_globals};

/// Options of `run`.
#[derive(Args, Debug)]
#[command(after_help = "\
Runs an autoscaler: creates (or adopts) the scale set, starts a runner per assigned job with
the runner command (the JIT config in ACTIONS_RUNNER_INPUT_JITCONFIG; {name} and {jitconfig}
substituted in --runner-arg), and stops idle runners. If another instance holds the scale
set's session, this one waits as a hot standby.

Examples:
  scaleset run --url https://github.com/my-org --name linux --label linux --max-runners 20 \\
      --runner-command /opt/runner/run.sh
  scaleset run --config autoscaler.toml --metrics-addr 127.0.0.1:9090")]
pub(crate) struct RunArgs {
    /// A TOML file with one `[[scale_set]]` per scale set (the scale set flags are then ignored).
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Scale set name.
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// A label (repeatable; default: the name).
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
    /// The provisioner.
    #[arg(long, default_value = "process", value_parser = ["process"])]
    provisioner: String,
    /// Program started per runner.
    #[arg(long, value_name = "PROGRAM")]
    runner_command: Option<String>,
    /// An argument of the runner command (repeatable; {name} and {jitconfig} substituted).
    #[arg(long = "runner-arg", value_name = "ARG", allow_hyphen_values = true)]
    runner_args: Vec<String>,
    /// Base work directory (runner N works in DIR/N) [default: TMPDIR/scaleset-runners/NAME].
    #[arg(long, value_name = "DIR")]
    runner_workdir: Option<PathBuf>,
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
}

impl RunArgs {
    fn to_config(&self, g: &GlobalArgs) -> Result<Config, CliError> {
        let bad = |e: scaleset_autoscaler::Error| CliError::config("InvalidConfig", e.to_string());
        let mut config = match &self.config {
            Some(path) => Config::from_file(path).map_err(bad)?,
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
                s.provisioner = ProvisionerKind::Process;
                s.command = self.runner_command.clone();
                s.args = self.runner_args.clone();
                s.workdir = self.runner_workdir.clone();
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
        config.validate().map_err(|e| {
            // Flag-built configs name flags, not file keys.
            let msg = e.to_string();
            let msg = if self.config.is_none() {
                msg.replace("scale_set[0].max_runners", "--max-runners")
                    .replace("scale_set[0].command", "--runner-command")
                    .replace("scale_set[0].url", "--url")
                    .replace("scale_set[0].name", "--name")
            } else {
                msg
            };
            CliError::config("InvalidConfig", msg)
        })?;
        Ok(config)
    }
}

/// Runs `run`.
pub(crate) async fn run(g: &GlobalArgs, args: RunArgs) -> Result<(), CliError> {
    let config = args.to_config(g)?;
    let mut clients: HashMap<String, Client> = HashMap::new();
    for i in 0..config.scale_sets.len() {
        if let Some(url) = config.url_of(i)
            && !clients.contains_key(url)
        {
            let mut per_url = g.clone();
            per_url.url = Some(url.to_string());
            clients.insert(url.to_string(), client_from_globals(&per_url)?);
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
            e => CliError::other("Run", e.to_string()),
        })
}
