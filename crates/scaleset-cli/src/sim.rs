//! `scaleset sim` (serve the simulator) and `scaleset sim-runner` (one simulated runner).

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use clap::{Args, ValueEnum};
use scaleset_sim::runner::{self, RunnerOptions};
use scaleset_sim::{AssignmentMode, SimConfig, Simulator};
use serde_json::json;

use crate::error::CliError;
use crate::globals::parse_secs;
use crate::output::print_json;
use crate::signal::shutdown_token;

/// How the simulator hands jobs to scale sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum SimMode {
    /// GHES: `JobAvailable`, then `acquirejobs`, then `JobAssigned`.
    Ghes,
    /// github.com: jobs are assigned directly.
    Hosted,
}

impl From<SimMode> for AssignmentMode {
    fn from(mode: SimMode) -> AssignmentMode {
        match mode {
            SimMode::Ghes => AssignmentMode::Ghes,
            SimMode::Hosted => AssignmentMode::Hosted,
        }
    }
}

/// `sim` arguments.
#[derive(Args)]
#[command(after_help = "\
Prints one JSON line, {\"configUrl\": ..., \"token\": ..., \"controlUrl\": ...},
then serves until SIGINT/SIGTERM. The token is the simulator's own test PAT.
Point the other commands at it with --url/--token (or
SCALESET_URL/SCALESET_TOKEN); enqueue jobs with
POST <controlUrl>/jobs {\"labels\": [\"my-runners\"], \"count\": 1}.

Examples:
  scaleset sim --port 8080 --long-poll 5
  scaleset sim --port 0 --mode ghes > sim.json &")]
pub(crate) struct SimArgs {
    /// Port on 127.0.0.1 (0 picks a free port).
    #[arg(long, value_name = "N", default_value_t = 0)]
    port: u16,
    /// How long a message poll is held open when there is nothing to deliver, in seconds.
    #[arg(long, value_name = "SECS", default_value = "50", value_parser = parse_secs)]
    long_poll: Duration,
    /// Job assignment mode.
    #[arg(long, value_enum, default_value_t = SimMode::Hosted)]
    mode: SimMode,
}

/// Runs `sim`.
pub(crate) async fn run_sim(args: SimArgs) -> Result<(), CliError> {
    if args.long_poll.is_zero() {
        return Err(CliError::config(
            "InvalidArgument",
            "--long-poll must be greater than 0",
        ));
    }
    let shutdown = shutdown_token()?;
    let config = SimConfig {
        mode: args.mode.into(),
        long_poll: args.long_poll,
        bind: SocketAddr::from((Ipv4Addr::LOCALHOST, args.port)),
        ..SimConfig::default()
    };
    let sim = Simulator::start(config)
        .await
        .map_err(|e| CliError::other("Sim", format!("sim: cannot start the simulator: {e}")))?;
    // Always one compact line, even on a terminal: scripts read it with `head -1`.
    let line = sim.startup_line().to_string();
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")
            .and_then(|()| out.flush())
            .map_err(|e| CliError::other("Output", format!("sim: cannot write to stdout: {e}")))?;
    }
    tracing::info!(base_url = %sim.base_url(), mode = %args.mode.to_possible_value().map(|v| v.get_name().to_string()).unwrap_or_default(), "simulator serving");
    shutdown.cancelled().await;
    sim.shutdown().await;
    Ok(())
}

/// `sim-runner` arguments.
#[derive(Args)]
#[command(after_help = "\
Decodes the JIT config, comes online at the simulator, takes one job, runs it
for the job's duration with heartbeats, reports the result, and exits 0
(non-zero on any failure). Prints {\"runnerId\", \"runnerName\",
\"runnerRequestId\", \"jobId\", \"result\"}.

Examples:
  jit=$(scaleset runner jit --scale-set-id 1 | jq -r .encodedJITConfig)
  scaleset sim-runner --jitconfig \"$jit\"
  ACTIONS_RUNNER_INPUT_JITCONFIG=\"$jit\" scaleset sim-runner")]
pub(crate) struct SimRunnerArgs {
    /// The encoded JIT config (from `scaleset runner jit`).
    #[arg(
        long,
        value_name = "JITCONFIG",
        env = "ACTIONS_RUNNER_INPUT_JITCONFIG",
        hide_env_values = true
    )]
    jitconfig: String,
}

/// Runs `sim-runner`.
pub(crate) async fn run_sim_runner(args: SimRunnerArgs) -> Result<(), CliError> {
    if args.jitconfig.trim().is_empty() {
        return Err(CliError::config(
            "InvalidArgument",
            "sim-runner: the JIT config is empty (give --jitconfig or set ACTIONS_RUNNER_INPUT_JITCONFIG)",
        ));
    }
    let outcome = runner::run(&args.jitconfig, RunnerOptions::default())
        .await
        .map_err(|e| {
            let kind = match e {
                runner::RunnerError::InvalidJitConfig(_) => "InvalidArgument",
                _ => "SimRunner",
            };
            let message = format!("sim-runner: {e}");
            if kind == "InvalidArgument" {
                CliError::config(kind, message)
            } else {
                CliError::other(kind, message)
            }
        })?;
    tracing::info!(
        runner = %outcome.runner_name,
        request_id = outcome.request_id,
        result = %outcome.result,
        "the simulated runner finished its job"
    );
    print_json(&json!({
        "runnerId": outcome.runner_id,
        "runnerName": outcome.runner_name,
        "runnerRequestId": outcome.request_id,
        "jobId": outcome.job_id,
        "result": outcome.result,
    }))
}
