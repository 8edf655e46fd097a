//! The clap command tree.

use clap::{Parser, Subcommand};

use crate::globals::GlobalArgs;
use crate::{config, listen, runner, runner_group, scale_set, sim};

const ABOUT: &str = "Manage GitHub Actions runner scale sets from the command line";

const LONG_ABOUT: &str = "\
Manage GitHub Actions runner scale sets from the command line: inspect config URLs, look up
runner groups, create, update and delete scale sets, mint just-in-time runner configs, follow a
scale set's demand as a stream of JSON events, and serve a local simulator of the service.

Data is written to stdout as JSON (field names are the service's wire names; pretty on a
terminal, compact otherwise). Logs go to stderr. Credentials come from --token (or
SCALESET_TOKEN, then GITHUB_TOKEN), from --token-file (re-read when it changes), or from GitHub
App credentials (--app-client-id, --app-installation-id and --app-private-key-file, or
SCALESET_APP_PRIVATE_KEY holding the PEM). --client-cert and --client-key present a TLS client
certificate (mutual TLS) on every connection.

Exit codes:
  0  success (including `null` results)
  1  any other failure (service error, network failure...)
  2  usage or configuration error, detected before any request is sent
  3  a named thing that must exist does not (runner group, scale set by id, runner by id)
  4  conflict (runner name taken, session held by another client, scale set name taken)
  5  the runner is still running a job
  130  interrupted (demo; or a second SIGINT/SIGTERM during a shutdown)";

const EXAMPLES: &str = "\
Examples:
  # Everything on this machine: simulator, autoscaler, runners and a workload (about 15 s)
  scaleset demo

  # Serve a local simulator and point the CLI at it
  scaleset sim --port 0 &            # prints {\"configUrl\":...,\"token\":...,\"controlUrl\":...}
  export SCALESET_URL=http://127.0.0.1:PORT/sim-org/sim-repo SCALESET_TOKEN=...

  scaleset config parse https://github.com/my-org/my-repo
  scaleset scale-set create --name my-runners --label linux
  scaleset scale-set get --name my-runners
  scaleset runner jit --scale-set-id 1
  scaleset listen --scale-set-id 1 --max-runners 10";

/// The `scaleset` command line.
#[derive(Parser)]
#[command(
    name = "scaleset",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = EXAMPLES,
    propagate_version = true,
    arg_required_else_help = true
)]
pub(crate) struct Cli {
    /// Options every command accepts.
    #[command(flatten)]
    pub(crate) globals: GlobalArgs,
    /// The command to run.
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// The commands.
#[derive(Subcommand)]
pub(crate) enum Command {
    /// Inspect config URLs (no credentials, no request).
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// Look up runner groups.
    #[command(subcommand)]
    RunnerGroup(runner_group::RunnerGroupCommand),
    /// List, get, create, update and delete runner scale sets.
    #[command(subcommand)]
    ScaleSet(scale_set::ScaleSetCommand),
    /// Mint JIT runner configs, look up and remove runners.
    #[command(subcommand)]
    Runner(runner::RunnerCommand),
    /// Follow a scale set's demand as newline-delimited JSON events.
    Listen(listen::ListenArgs),
    /// Run the autoscaler: runners on demand for one or more scale sets.
    Run(Box<crate::run::RunArgs>),
    /// Try everything locally: simulator, autoscaler and simulated runners under a workload.
    Demo(crate::demo::DemoArgs),
    /// Serve the scale set simulator on 127.0.0.1 until SIGINT/SIGTERM.
    Sim(sim::SimArgs),
    /// Run one simulated runner with a JIT config from the simulator.
    SimRunner(sim::SimRunnerArgs),
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn globals_are_accepted_after_the_subcommand() {
        let cli = Cli::try_parse_from([
            "scaleset",
            "scale-set",
            "list",
            "--url",
            "https://github.com/o",
            "--retry-max",
            "0",
            "--timeout",
            "0.5",
        ])
        .expect("valid arguments");
        assert_eq!(cli.globals.url.as_deref(), Some("https://github.com/o"));
        assert_eq!(cli.globals.retry_max, Some(0));
        assert_eq!(
            cli.globals.timeout,
            Some(std::time::Duration::from_millis(500))
        );
    }

    #[test]
    fn every_command_has_an_example() {
        fn walk(cmd: &clap::Command, path: &str) {
            let path = format!("{path} {}", cmd.get_name());
            if cmd.get_subcommands().next().is_none() {
                let help = cmd
                    .get_after_help()
                    .map(|h| h.to_string())
                    .unwrap_or_default();
                assert!(help.contains("Example"), "{path} has no example");
            }
            for sub in cmd.get_subcommands() {
                if sub.get_name() != "help" {
                    walk(sub, &path);
                }
            }
        }
        walk(&Cli::command(), "");
    }
}
