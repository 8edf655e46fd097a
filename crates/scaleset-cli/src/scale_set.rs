//! `scaleset scale-set list|get|create|update|delete|acquirable-jobs`.

use actions_scaleset::{
    Label, RunnerGroupId, RunnerScaleSet, RunnerScaleSetUpdate, RunnerSetting, ScaleSetId,
    scale_set_labels,
};
use clap::{ArgGroup, Args, Subcommand};

use crate::cli::id_parser;
use crate::error::{CliError, OrCli};
use crate::globals::{ConnectionArgs, client_from_connection};
use crate::output::print_json;
use crate::runner_group::{RunnerGroupArgs, resolve_group};

/// `scale-set` subcommands.
#[derive(Subcommand)]
pub(crate) enum ScaleSetCommand {
    /// List the scale sets of a runner group.
    #[command(after_help = "\
Prints a JSON array of scale sets.

Examples:
  scaleset scale-set list
  scaleset scale-set list --runner-group my-group")]
    List(ListArgs),
    /// Get a scale set by id (exit 3 when it does not exist) or by name (`null` when none).
    #[command(after_help = "\
Prints the scale set, or null when no scale set has that name.

Examples:
  scaleset scale-set get --id 7
  scaleset scale-set get --name my-runners --runner-group my-group")]
    Get(GetArgs),
    /// Create a scale set (exit 4 when the name is taken).
    #[command(after_help = "\
The scale set's name is always its first label; --label adds more (GHES
before 3.18 keeps only the name). Prints the created scale set.

Examples:
  scaleset scale-set create --name my-runners
  scaleset scale-set create --name gpu --label linux --label x64")]
    Create(CreateArgs),
    /// Update a scale set's name, labels or runner group.
    #[command(after_help = "\
Only the given fields change. The scale set's name stays its first label:
--label replaces the other labels, and --name renames the first label too.
Prints the updated scale set.

Examples:
  scaleset scale-set update --id 7 --name new-name
  scaleset scale-set update --id 7 --label linux --label gpu
  scaleset scale-set update --id 7 --runner-group my-group")]
    Update(UpdateArgs),
    /// Delete a scale set (prints nothing; exit 3 when it does not exist).
    #[command(after_help = "\
Example:
  scaleset scale-set delete --id 7")]
    Delete(DeleteArgs),
    /// List the jobs offered to a scale set and not yet acquired (GHES; empty on github.com).
    #[command(after_help = "\
Prints a JSON array of JobAvailable messages, as the service sends them:
runnerRequestId, acquireJobUrl, requestLabels, repositoryName, jobId,
queueTime... An empty array when nothing waits to be acquired (github.com
assigns jobs directly). Exit 3 when the scale set does not exist.

Example:
  scaleset scale-set acquirable-jobs --id 7")]
    AcquirableJobs(AcquirableJobsArgs),
}

/// `scale-set list` arguments.
#[derive(Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    group: RunnerGroupArgs,
    /// Connection options given after the subcommand.
    #[command(flatten)]
    pub(crate) connection: ConnectionArgs,
}

/// `scale-set get` arguments.
#[derive(Args)]
#[command(group(ArgGroup::new("by").required(true).args(["id", "name"])))]
pub(crate) struct GetArgs {
    /// The scale set id.
    #[arg(long, value_name = "ID", value_parser = id_parser::<ScaleSetId>())]
    id: Option<ScaleSetId>,
    /// The scale set name (looked up in the runner group).
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Runner group name for --name [default: default].
    #[arg(
        long,
        value_name = "NAME",
        requires = "name",
        conflicts_with = "runner_group_id"
    )]
    runner_group: Option<String>,
    /// Runner group id for --name.
    #[arg(long, value_name = "ID", requires = "name", value_parser = id_parser::<RunnerGroupId>())]
    runner_group_id: Option<RunnerGroupId>,
    /// Connection options given after the subcommand.
    #[command(flatten)]
    pub(crate) connection: ConnectionArgs,
}

/// `scale-set create` arguments.
#[derive(Args)]
pub(crate) struct CreateArgs {
    /// The scale set name (what workflows put in `runs-on:`).
    #[arg(long, value_name = "NAME")]
    name: String,
    /// An extra label (repeatable).
    #[arg(long = "label", value_name = "LABEL")]
    labels: Vec<String>,
    /// Runner group name [default: default].
    #[arg(long, value_name = "NAME")]
    runner_group: Option<String>,
    /// Runners of this scale set skip self-updates.
    #[arg(long)]
    disable_update: bool,
    /// Connection options given after the subcommand.
    #[command(flatten)]
    pub(crate) connection: ConnectionArgs,
}

/// `scale-set update` arguments.
#[derive(Args)]
pub(crate) struct UpdateArgs {
    /// The scale set id.
    #[arg(long, value_name = "ID", value_parser = id_parser::<ScaleSetId>())]
    id: ScaleSetId,
    /// New name.
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// New extra labels (repeatable; replace all but the name).
    #[arg(long = "label", value_name = "LABEL")]
    labels: Vec<String>,
    /// New runner group, by name.
    #[arg(long, value_name = "NAME")]
    runner_group: Option<String>,
    /// Connection options given after the subcommand.
    #[command(flatten)]
    pub(crate) connection: ConnectionArgs,
}

/// `scale-set delete` arguments.
#[derive(Args)]
pub(crate) struct DeleteArgs {
    /// The scale set id.
    #[arg(long, value_name = "ID", value_parser = id_parser::<ScaleSetId>())]
    id: ScaleSetId,
    /// Connection options given after the subcommand.
    #[command(flatten)]
    pub(crate) connection: ConnectionArgs,
}

/// `scale-set acquirable-jobs` arguments.
#[derive(Args)]
pub(crate) struct AcquirableJobsArgs {
    /// The scale set id.
    #[arg(long, value_name = "ID", value_parser = id_parser::<ScaleSetId>())]
    id: ScaleSetId,
    /// Connection options given after the subcommand.
    #[command(flatten)]
    pub(crate) connection: ConnectionArgs,
}

impl ScaleSetCommand {
    /// The connection options given after the subcommand.
    pub(crate) fn connection_mut(&mut self) -> &mut ConnectionArgs {
        match self {
            ScaleSetCommand::List(a) => &mut a.connection,
            ScaleSetCommand::Get(a) => &mut a.connection,
            ScaleSetCommand::Create(a) => &mut a.connection,
            ScaleSetCommand::Update(a) => &mut a.connection,
            ScaleSetCommand::Delete(a) => &mut a.connection,
            ScaleSetCommand::AcquirableJobs(a) => &mut a.connection,
        }
    }
}

/// Runs a `scale-set` subcommand.
pub(crate) async fn run(g: &ConnectionArgs, cmd: ScaleSetCommand) -> Result<(), CliError> {
    match cmd {
        ScaleSetCommand::List(args) => list(g, args).await,
        ScaleSetCommand::Get(args) => get(g, args).await,
        ScaleSetCommand::Create(args) => create(g, args).await,
        ScaleSetCommand::Update(args) => update(g, args).await,
        ScaleSetCommand::Delete(args) => delete(g, args).await,
        ScaleSetCommand::AcquirableJobs(args) => acquirable_jobs(g, args).await,
    }
}

const LIST: &str = "scale-set list";
const GET: &str = "scale-set get";
const CREATE: &str = "scale-set create";
const UPDATE: &str = "scale-set update";
const DELETE: &str = "scale-set delete";
const ACQUIRABLE: &str = "scale-set acquirable-jobs";

async fn list(g: &ConnectionArgs, args: ListArgs) -> Result<(), CliError> {
    let client = client_from_connection(g)?;
    let group = args.group.resolve(&client, LIST).await?;
    let sets = client.list_runner_scale_sets(group).await.or_cli(LIST)?;
    print_json(&sets)
}

async fn get(g: &ConnectionArgs, args: GetArgs) -> Result<(), CliError> {
    let client = client_from_connection(g)?;
    if let Some(id) = args.id {
        return match client.get_runner_scale_set_by_id(id).await.or_cli(GET)? {
            Some(set) => print_json(&set),
            None => Err(CliError::not_found(
                "ScaleSetNotFound",
                format!("{GET}: no scale set with id {id}"),
            )),
        };
    }
    let name = non_empty(args.name, "--name")?;
    let group = RunnerGroupArgs {
        runner_group: args.runner_group,
        runner_group_id: args.runner_group_id,
    }
    .resolve(&client, GET)
    .await?;
    let set = client
        .get_runner_scale_set(group, &name)
        .await
        .or_cli(GET)?;
    print_json(&set)
}

async fn create(g: &ConnectionArgs, args: CreateArgs) -> Result<(), CliError> {
    let name = non_empty(Some(args.name), "--name")?;
    let labels = scale_set_labels(&name, labels_from(args.labels)?);
    let client = client_from_connection(g)?;
    let group = resolve_group(&client, args.runner_group.as_deref(), CREATE).await?;
    let wanted = RunnerScaleSet {
        name,
        runner_group_id: group,
        labels,
        runner_setting: RunnerSetting {
            disable_update: args.disable_update,
        },
        ..Default::default()
    };
    let created = client
        .create_runner_scale_set(&wanted)
        .await
        .or_cli(CREATE)?;
    print_json(&created)
}

async fn update(g: &ConnectionArgs, args: UpdateArgs) -> Result<(), CliError> {
    if args.name.is_none() && args.labels.is_empty() && args.runner_group.is_none() {
        return Err(CliError::config(
            "InvalidArgument",
            format!("{UPDATE}: nothing to update: give --name, --label or --runner-group"),
        ));
    }
    let name = match args.name {
        Some(n) => Some(non_empty(Some(n), "--name")?),
        None => None,
    };
    let labels = if args.labels.is_empty() {
        None
    } else {
        Some(labels_from(args.labels)?)
    };
    let client = client_from_connection(g)?;
    // The name is always the first label, so a new name or new labels need the other half
    // from the scale set as it is.
    let labels = if name.is_some() || labels.is_some() {
        let current = client
            .get_runner_scale_set_by_id(args.id)
            .await
            .or_cli(UPDATE)?
            .ok_or_else(|| {
                CliError::not_found(
                    "ScaleSetNotFound",
                    format!("{UPDATE}: no scale set with id {}", args.id),
                )
            })?;
        let extra = labels.unwrap_or_else(|| {
            current
                .labels
                .iter()
                .filter(|l| !l.name.eq_ignore_ascii_case(&current.name))
                .cloned()
                .collect()
        });
        let first = name.as_deref().unwrap_or(&current.name);
        Some(scale_set_labels(first, extra))
    } else {
        None
    };
    let runner_group_id = match &args.runner_group {
        Some(group) => Some(resolve_group(&client, Some(group), UPDATE).await?),
        None => None,
    };
    let patch = RunnerScaleSetUpdate {
        name,
        runner_group_id,
        labels,
        runner_setting: None,
    };
    let updated = client
        .update_runner_scale_set(args.id, &patch)
        .await
        .or_cli(UPDATE)?;
    print_json(&updated)
}

async fn delete(g: &ConnectionArgs, args: DeleteArgs) -> Result<(), CliError> {
    let client = client_from_connection(g)?;
    client.delete_runner_scale_set(args.id).await.or_cli(DELETE)
}

async fn acquirable_jobs(g: &ConnectionArgs, args: AcquirableJobsArgs) -> Result<(), CliError> {
    let client = client_from_connection(g)?;
    let list = client
        .get_acquirable_jobs(args.id)
        .await
        .or_cli(ACQUIRABLE)?;
    print_json(&list.jobs)
}

fn non_empty(value: Option<String>, flag: &str) -> Result<String, CliError> {
    match value.map(|v| v.trim().to_string()) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(CliError::config(
            "InvalidArgument",
            format!("{flag} must not be empty"),
        )),
    }
}

fn labels_from(names: Vec<String>) -> Result<Vec<Label>, CliError> {
    names
        .into_iter()
        .map(|n| non_empty(Some(n), "--label").map(Label::system))
        .collect()
}
