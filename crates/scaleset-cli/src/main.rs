//! `scaleset`: a command line for GitHub Actions runner scale sets.
//!
//! Data goes to stdout (one JSON document per command, or newline-delimited JSON events for
//! `listen`); logs and errors go to stderr. The exit code says what happened (see
//! [`error`]); scripts depend on it and on the JSON field names, which are the wire names of
//! the service.
//!
//! Layout: [`cli`] is the clap command tree, [`globals`] the shared (connection and log)
//! options and the client built from the connection options, [`error`] the exit codes and
//! the final error line, one module per command family. A new command is a module with an
//! `Args` type and an async `run` function, one variant in [`cli::Command`] and one arm in
//! [`dispatch`]; a command that talks to GitHub also flattens
//! [`globals::ConnectionArgs`] into its `Args` and returns it from
//! `cli::Command::connection_mut`.

// Doc comments on clap types double as `--help` text, read in a terminal: URLs stay bare.
#![allow(rustdoc::bare_urls)]

mod cli;
mod config;
mod demo;
mod error;
mod globals;
mod listen;
mod logging;
mod output;
mod run;
mod runner;
mod runner_group;
mod scale_set;
mod signal;
mod sim;

use std::process::ExitCode;

use crate::cli::{Cli, Command};
use crate::error::CliError;

#[tokio::main]
async fn main() -> ExitCode {
    // Help and version exit 0; usage errors exit 2 in clap's own format.
    let cli = Cli::parse_args();
    let level = cli.log.level_or(match cli.command {
        Command::Run(_) => globals::LogLevel::Info,
        _ => globals::LogLevel::Warn,
    });
    logging::init(level, cli.log.log_format);
    let format = cli.log.log_format;
    match dispatch(cli).await {
        Ok(()) => ExitCode::from(error::EXIT_OK),
        Err(e) => {
            e.report(format);
            ExitCode::from(e.exit_code())
        }
    }
}

/// Runs the parsed command.
async fn dispatch(cli: Cli) -> Result<(), CliError> {
    let g = &cli.connection;
    match cli.command {
        Command::Config(cmd) => config::run(cmd),
        Command::RunnerGroup(cmd) => runner_group::run(g, cmd).await,
        Command::ScaleSet(cmd) => scale_set::run(g, cmd).await,
        Command::Runner(cmd) => runner::run(g, cmd).await,
        Command::Listen(args) => listen::run(g, args).await,
        Command::Run(args) => run::run(g, *args).await,
        Command::Demo(args) => demo::run(&cli.log, args).await,
        Command::Sim(args) => sim::run_sim(args).await,
        Command::SimRunner(args) => sim::run_sim_runner(args).await,
    }
}
