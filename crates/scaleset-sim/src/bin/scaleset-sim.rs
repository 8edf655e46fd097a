//! `scaleset-sim`: run the simulator (`serve`) or a simulated runner (`runner`).

use std::time::Duration;

use clap::{Parser, Subcommand};
use scaleset_sim::{AssignmentMode, SimConfig, Simulator, runner};

#[derive(Parser)]
#[command(name = "scaleset-sim", about = "GitHub runner scale set simulator")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the simulator; prints one JSON startup line, serves until SIGINT/SIGTERM.
    #[command(alias = "sim")]
    Serve {
        /// Port to bind on 127.0.0.1 (0 = any free port).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Long-poll length in seconds.
        #[arg(long, default_value_t = 50)]
        long_poll: u64,
        /// Assignment mode: ghes or hosted.
        #[arg(long, default_value = "hosted")]
        mode: AssignmentMode,
        /// Token (PAT) to accept; generated when absent.
        #[arg(long)]
        token: Option<String>,
    },
    /// Run one simulated runner with a JIT config; exits 0 after its job.
    #[command(alias = "sim-runner")]
    Runner {
        /// The encoded JIT config.
        #[arg(long, env = "ACTIONS_RUNNER_INPUT_JITCONFIG", hide_env_values = true)]
        jitconfig: String,
    },
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Serve {
            port,
            long_poll,
            mode,
            token,
        } => {
            let cfg = SimConfig {
                mode,
                long_poll: Duration::from_secs(long_poll),
                bind: ([127, 0, 0, 1], port).into(),
                token,
                ..SimConfig::default()
            };
            let sim = match Simulator::start(cfg).await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {e}");
                    return std::process::ExitCode::FAILURE;
                }
            };
            println!("{}", sim.startup_line());
            wait_for_signal().await;
            sim.shutdown().await;
            std::process::ExitCode::SUCCESS
        }
        Cmd::Runner { jitconfig } => {
            match runner::run(&jitconfig, runner::RunnerOptions::default()).await {
                Ok(outcome) => {
                    eprintln!(
                        "runner {} finished job {} with result {}",
                        outcome.runner_name, outcome.request_id, outcome.result
                    );
                    std::process::ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
    }
}
