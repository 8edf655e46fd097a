//! `scaleset runner jit|get|remove`.

use actions_scaleset::{JitRunnerSetting, RunnerId, ScaleSetId};
use clap::{ArgGroup, Args, Subcommand};
use serde_json::json;

use crate::cli::id_parser;
use crate::error::{CliError, OrCli};
use crate::globals::{ConnectionArgs, client_from_connection};
use crate::output::print_json;

/// `runner` subcommands.
#[derive(Subcommand)]
pub(crate) enum RunnerCommand {
    /// Register a just-in-time runner in a scale set and print its config (a secret).
    #[command(after_help = "\
Prints {\"runner\": {\"id\", \"name\", \"runnerScaleSetId\"},
\"encodedJITConfig\": \"...\"}. The encoded JIT config is a credential: hand it
to one runner (./run.sh --jitconfig, or ACTIONS_RUNNER_INPUT_JITCONFIG) and do
not log it. Exit 4 when the name is taken.

Examples:
  scaleset runner jit --scale-set-id 7
  scaleset runner jit --scale-set-id 7 --name runner-1 --work-folder _work")]
    Jit(JitArgs),
    /// Get a runner by id (exit 3 when it does not exist) or by name (`null` when none).
    #[command(after_help = "\
Prints {\"id\", \"name\", \"runnerScaleSetId\"}, or null when no runner has that name.

Examples:
  scaleset runner get --id 42
  scaleset runner get --name runner-1a2b3c4d")]
    Get(GetArgs),
    /// Remove a runner (prints nothing; exit 5 while it runs a job).
    #[command(after_help = "\
Succeeds when the service no longer has the runner. Exit 5 while the runner
is running a job.

Example:
  scaleset runner remove --id 42")]
    Remove(RemoveArgs),
}

/// `runner jit` arguments.
#[derive(Args)]
pub(crate) struct JitArgs {
    /// The scale set the runner joins.
    #[arg(long, value_name = "ID", value_parser = id_parser::<ScaleSetId>())]
    scale_set_id: ScaleSetId,
    /// Runner name [default: runner-<8 random hex digits>].
    #[arg(long, value_name = "NAME", value_parser = crate::cli::not_blank)]
    name: Option<String>,
    /// The runner's work folder [default: the runner's own default].
    #[arg(long, value_name = "DIR", value_parser = crate::cli::not_blank)]
    work_folder: Option<String>,
    /// Connection options given after the subcommand.
    #[command(flatten)]
    pub(crate) connection: ConnectionArgs,
}

/// `runner get` arguments.
#[derive(Args)]
#[command(group(ArgGroup::new("by").required(true).args(["id", "name"])))]
pub(crate) struct GetArgs {
    /// The runner id.
    #[arg(long, value_name = "ID", value_parser = id_parser::<RunnerId>())]
    id: Option<RunnerId>,
    /// The runner name.
    #[arg(long, value_name = "NAME", value_parser = crate::cli::not_blank)]
    name: Option<String>,
    /// Connection options given after the subcommand.
    #[command(flatten)]
    pub(crate) connection: ConnectionArgs,
}

/// `runner remove` arguments.
#[derive(Args)]
pub(crate) struct RemoveArgs {
    /// The runner id.
    #[arg(long, value_name = "ID", value_parser = id_parser::<RunnerId>())]
    id: RunnerId,
    /// Connection options given after the subcommand.
    #[command(flatten)]
    pub(crate) connection: ConnectionArgs,
}

impl RunnerCommand {
    /// The connection options given after the subcommand.
    pub(crate) fn connection_mut(&mut self) -> &mut ConnectionArgs {
        match self {
            RunnerCommand::Jit(a) => &mut a.connection,
            RunnerCommand::Get(a) => &mut a.connection,
            RunnerCommand::Remove(a) => &mut a.connection,
        }
    }
}

/// Runs a `runner` subcommand.
pub(crate) async fn run(g: &ConnectionArgs, cmd: RunnerCommand) -> Result<(), CliError> {
    match cmd {
        RunnerCommand::Jit(args) => jit(g, args).await,
        RunnerCommand::Get(args) => get(g, args).await,
        RunnerCommand::Remove(args) => {
            let client = client_from_connection(g)?;
            client
                .remove_runner(args.id)
                .await
                .map(drop)
                .or_cli("runner remove")
        }
    }
}

/// A runner name for when none is given: `runner-` and 8 random hex digits.
pub(crate) fn generated_runner_name() -> String {
    format!("runner-{:08x}", rand::random::<u32>())
}

async fn jit(g: &ConnectionArgs, args: JitArgs) -> Result<(), CliError> {
    let name = match args.name {
        Some(n) if n.trim().is_empty() => {
            return Err(CliError::config(
                "InvalidArgument",
                "--name must not be empty",
            ));
        }
        Some(n) => n.trim().to_string(),
        None => generated_runner_name(),
    };
    let client = client_from_connection(g)?;
    let setting = JitRunnerSetting {
        name,
        work_folder: args.work_folder.unwrap_or_default(),
    };
    let config = client
        .generate_jit_runner_config(args.scale_set_id, &setting)
        .await
        .or_cli("runner jit")?;
    let runner = serde_json::to_value(&config.runner)
        .map_err(|e| CliError::other("Output", format!("runner jit: {e}")))?;
    // The one place the CLI prints a secret: handing it over is the command's purpose.
    print_json(&json!({
        "runner": runner,
        "encodedJITConfig": config.encoded_jit_config.expose_secret(),
    }))
}

async fn get(g: &ConnectionArgs, args: GetArgs) -> Result<(), CliError> {
    let client = client_from_connection(g)?;
    match (args.id, args.name) {
        (Some(id), _) => print_json(&client.get_runner(id).await.or_cli("runner get")?),
        (None, Some(name)) => print_json(
            &client
                .get_runner_by_name(name.trim())
                .await
                .or_cli("runner get")?,
        ),
        (None, None) => Err(CliError::config(
            "InvalidArgument",
            "runner get: give --id or --name",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_names_have_8_hex_digits() {
        let name = generated_runner_name();
        let hex = name.strip_prefix("runner-").expect("prefix");
        assert_eq!(hex.len(), 8);
        assert!(hex.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
