//! `scaleset runner-group get NAME`, and runner-group resolution for the other commands.

use actions_scaleset::{Client, DEFAULT_RUNNER_GROUP, DEFAULT_RUNNER_GROUP_ID, RunnerGroupId};
use clap::{Args, Subcommand};

use crate::error::{CliError, OrCli};
use crate::globals::{ConnectionArgs, client_from_connection};
use crate::output::print_json;

/// `runner-group` subcommands.
#[derive(Subcommand)]
pub(crate) enum RunnerGroupCommand {
    /// Get a runner group by name (exit 3 when there is none).
    #[command(after_help = "\
Prints {\"id\", \"name\", \"size\", \"isDefaultGroup\"}.

Examples:
  scaleset runner-group get my-group
  scaleset runner-group get default --url https://github.com/my-org")]
    Get {
        /// The runner group's name.
        #[arg(value_name = "NAME", value_parser = crate::cli::not_blank)]
        name: String,
        /// Connection options given after the subcommand.
        #[command(flatten)]
        connection: ConnectionArgs,
    },
}

impl RunnerGroupCommand {
    /// The connection options given after the subcommand.
    pub(crate) fn connection_mut(&mut self) -> &mut ConnectionArgs {
        match self {
            RunnerGroupCommand::Get { connection, .. } => connection,
        }
    }
}

/// Runs a `runner-group` subcommand.
pub(crate) async fn run(g: &ConnectionArgs, cmd: RunnerGroupCommand) -> Result<(), CliError> {
    match cmd {
        RunnerGroupCommand::Get { name, .. } => {
            let client = client_from_connection(g)?;
            let group = client
                .get_runner_group_by_name(&name)
                .await
                .or_cli("runner-group get")?;
            print_json(&group)
        }
    }
}

/// `--runner-group NAME | --runner-group-id ID`, for commands that look scale sets up.
#[derive(Args, Debug, Clone, Default)]
pub(crate) struct RunnerGroupArgs {
    /// Runner group name [default: default].
    #[arg(long, value_name = "NAME", conflicts_with = "runner_group_id")]
    pub(crate) runner_group: Option<String>,
    /// Runner group id.
    #[arg(long, value_name = "ID", value_parser = crate::cli::id_parser::<RunnerGroupId>())]
    pub(crate) runner_group_id: Option<RunnerGroupId>,
}

impl RunnerGroupArgs {
    /// The runner group id: the given id, else the named group (id 1 for `default`, without a
    /// request), else the default group.
    pub(crate) async fn resolve(
        &self,
        client: &Client,
        operation: &str,
    ) -> Result<RunnerGroupId, CliError> {
        match self.runner_group_id {
            Some(id) => Ok(id),
            None => resolve_group(client, self.runner_group.as_deref(), operation).await,
        }
    }
}

/// The id of a runner group given by name; `default` (or no name) is id 1 without a request.
///
/// # Errors
/// Exit 3 when no group has that name.
pub(crate) async fn resolve_group(
    client: &Client,
    name: Option<&str>,
    operation: &str,
) -> Result<RunnerGroupId, CliError> {
    match name.map(str::trim) {
        None => Ok(DEFAULT_RUNNER_GROUP_ID),
        Some("") => Err(CliError::config(
            "InvalidArgument",
            format!("{operation}: --runner-group must not be empty"),
        )),
        Some(n) if n.eq_ignore_ascii_case(DEFAULT_RUNNER_GROUP) => Ok(DEFAULT_RUNNER_GROUP_ID),
        Some(n) => Ok(client
            .get_runner_group_by_name(n)
            .await
            .or_cli(operation)?
            .id),
    }
}
