//! The clap command tree.

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::globals::{ConnectionArgs, LogArgs};
use crate::{config, listen, runner, runner_group, scale_set, sim};

/// The value parser of every id flag (`--scale-set-id`, `--runner-group-id`, `--id`): a
/// positive whole number, made into the flag's typed id (`ScaleSetId`, `RunnerId`...). On bad
/// input clap names the flag: `invalid value '0' for '--id <ID>': 0 is not in
/// 1..=9223372036854775807`.
pub(crate) fn id_parser<T>() -> impl clap::builder::TypedValueParser<Value = T>
where
    T: From<i64> + Clone + Send + Sync + 'static,
{
    use clap::builder::TypedValueParser;
    clap::value_parser!(i64).range(1..).map(T::from)
}

const ABOUT: &str = "Manage GitHub Actions runner scale sets from the command line";

const LONG_ABOUT: &str = "\
Manage GitHub Actions runner scale sets from the command line: inspect config
URLs, look up runner groups, create, update and delete scale sets, mint
just-in-time runner configs, follow a scale set's demand as a stream of JSON
events, run the autoscaler, and serve a local simulator of the service.

Data is written to stdout as JSON (field names are the service's wire names;
pretty on a terminal, compact otherwise). Logs go to stderr. Credentials come
from --token (or SCALESET_TOKEN, then GITHUB_TOKEN), from --token-file
(re-read when it changes), or from GitHub App credentials (--app-client-id,
--app-installation-id and --app-private-key-file, or SCALESET_APP_PRIVATE_KEY
holding the PEM). --client-cert and --client-key present a TLS client
certificate (mutual TLS) on every connection. The connection options go
before the command or after it.

Exit codes:
  0    success (including `null` results)
  1    any other failure (service error, network failure...)
  2    usage or configuration error, detected before any request is sent
  3    a named thing that must exist does not (runner group, scale set by
       id, runner by id)
  4    conflict (runner name taken, session held by another client, scale
       set name taken)
  5    the runner is still running a job
  130  interrupted (demo; or a second SIGINT/SIGTERM during a shutdown)";

const EXAMPLES: &str = "\
Examples:
  # Everything on this machine: simulator, autoscaler, runners and a
  # workload (about 15 s)
  scaleset demo

  # Serve a local simulator and point the CLI at it (the first line it
  # prints is {\"configUrl\": ..., \"token\": ..., \"controlUrl\": ...})
  scaleset sim --port 0 > sim.json &
  export SCALESET_URL=$(jq -r .configUrl sim.json)
  export SCALESET_TOKEN=$(jq -r .token sim.json)

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
    arg_required_else_help = true,
    max_term_width = 100
)]
pub(crate) struct Cli {
    /// Log options (every command accepts them, before or after the subcommand).
    #[command(flatten)]
    pub(crate) log: LogArgs,
    /// Connection options given before the subcommand; after [`Cli::from_matches`], the
    /// effective connection options of the command.
    #[command(flatten)]
    pub(crate) connection: ConnectionArgs,
    /// The command to run.
    #[command(subcommand)]
    pub(crate) command: Command,
}

impl Cli {
    /// Parses the process arguments; help, version and usage errors exit as clap does (help
    /// and version 0, usage errors 2).
    pub(crate) fn parse_args() -> Cli {
        let matches = Cli::command().get_matches();
        Cli::from_matches(&matches).unwrap_or_else(|e| e.exit())
    }

    /// The parsed command line, its connection options merged: each one given after the
    /// subcommand wins, then each one given before it (`scaleset --url URL scale-set list`),
    /// then the environment.
    pub(crate) fn from_matches(matches: &ArgMatches) -> Result<Cli, clap::Error> {
        let mut cli = Cli::from_arg_matches(matches)?;
        let mut leaf = matches;
        while let Some((_, sub)) = leaf.subcommand() {
            leaf = sub;
        }
        let on_command_line =
            |m: &ArgMatches, id: &str| m.value_source(id) == Some(ValueSource::CommandLine);
        if let Some(after) = cli.command.connection_mut() {
            after.take_given_before(&cli.connection, &|id| on_command_line(matches, id), &|id| {
                on_command_line(leaf, id)
            });
            cli.connection = after.clone();
        }
        Ok(cli)
    }
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

impl Command {
    /// The connection options given after the subcommand, for the commands that talk to
    /// GitHub; `None` for the others.
    fn connection_mut(&mut self) -> Option<&mut ConnectionArgs> {
        match self {
            Command::Config(_) | Command::Demo(_) | Command::Sim(_) | Command::SimRunner(_) => None,
            Command::RunnerGroup(cmd) => Some(cmd.connection_mut()),
            Command::ScaleSet(cmd) => Some(cmd.connection_mut()),
            Command::Runner(cmd) => Some(cmd.connection_mut()),
            Command::Listen(args) => Some(&mut args.connection),
            Command::Run(args) => Some(&mut args.connection),
        }
    }
}

/// Parses a value that must hold more than spaces (a name, an owner, a folder): an empty
/// one is refused before any request is sent, as clap refuses a malformed number.
pub(crate) fn not_blank(value: &str) -> Result<String, String> {
    let v = value.trim();
    if v.is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(v.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Args;

    /// The width the help tests render at: the narrowest common terminal.
    const WIDTH: usize = 80;

    /// The commands that talk to GitHub are the ones that accept the connection options.
    const WITHOUT_CONNECTION: [&str; 5] = [
        "scaleset config",
        "scaleset config parse",
        "scaleset demo",
        "scaleset sim",
        "scaleset sim-runner",
    ];

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        let matches = Cli::command().try_get_matches_from(args)?;
        Cli::from_matches(&matches)
    }

    // Id flags parse into their typed ids; a bad one is refused naming the flag.
    #[test]
    fn id_flags_are_positive_numbers_and_errors_name_the_flag() {
        assert!(parse(&["scaleset", "runner", "get", "--id", "42"]).is_ok());
        assert!(parse(&["scaleset", "scale-set", "get", "--id", "7"]).is_ok());
        for (args, flag) in [
            (vec!["scaleset", "runner", "get", "--id", "x"], "--id"),
            (vec!["scaleset", "runner", "remove", "--id", "0"], "--id"),
            (
                vec!["scaleset", "runner", "jit", "--scale-set-id=-3"],
                "--scale-set-id",
            ),
            (
                vec!["scaleset", "listen", "--scale-set-id", "7x"],
                "--scale-set-id",
            ),
            (
                vec!["scaleset", "scale-set", "list", "--runner-group-id", "0"],
                "--runner-group-id",
            ),
        ] {
            let e = parse(&args)
                .err()
                .unwrap_or_else(|| panic!("{args:?} must be refused"));
            assert_eq!(
                e.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{args:?}"
            );
            assert!(e.to_string().contains(flag), "{args:?}: {e}");
        }
    }

    /// Every command of the tree, as `(path, command)`, the root first; the generated `help`
    /// subcommands left out.
    fn every_command() -> Vec<(String, clap::Command)> {
        fn walk(cmd: &clap::Command, path: &str, out: &mut Vec<(String, clap::Command)>) {
            let path = if path.is_empty() {
                cmd.get_name().to_string()
            } else {
                format!("{path} {}", cmd.get_name())
            };
            out.push((path.clone(), cmd.clone()));
            for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
                walk(sub, &path, out);
            }
        }
        let mut root = Cli::command();
        root.build();
        let mut out = Vec::new();
        walk(&root, "", &mut out);
        out
    }

    /// What `scaleset <path> --help` prints on a terminal `WIDTH` columns wide.
    fn long_help(path: &str) -> String {
        let mut args: Vec<&str> = path.split(' ').collect();
        args.push("--help");
        match Cli::command().term_width(WIDTH).try_get_matches_from(args) {
            Ok(_) => panic!("{path} --help parsed as a command"),
            Err(e) => {
                assert_eq!(e.kind(), clap::error::ErrorKind::DisplayHelp, "{path}");
                e.render().to_string()
            }
        }
    }

    #[test]
    fn the_command_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn connection_options_are_accepted_after_the_subcommand() {
        let cli = parse(&[
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
        assert_eq!(cli.connection.url.as_deref(), Some("https://github.com/o"));
        assert_eq!(cli.connection.retry_max, Some(0));
        assert_eq!(
            cli.connection.timeout,
            Some(std::time::Duration::from_millis(500))
        );
    }

    /// Every connection option works before the subcommand as after it (scripts written
    /// when they were global options keep working), and after wins when both are given.
    #[test]
    fn every_connection_option_works_before_the_subcommand_too() {
        let options = ConnectionArgs::augment_args(clap::Command::new("x"));
        let mut checked = 0;
        for arg in options.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            let flag = format!("--{long}");
            let takes_value = arg.get_action().takes_values();
            let with = |value: &'static str| -> Vec<String> {
                let mut v = vec![flag.clone()];
                if takes_value {
                    v.push(value.to_string());
                }
                v
            };
            let line = |before: &[String], after: &[String]| -> Vec<String> {
                let mut v = vec!["scaleset".to_string()];
                v.extend_from_slice(before);
                v.extend(["runner", "get", "--id", "1"].map(String::from));
                v.extend_from_slice(after);
                v
            };
            let resolved = |args: Vec<String>| {
                let refs: Vec<&str> = args.iter().map(String::as_str).collect();
                let cli = parse(&refs).unwrap_or_else(|e| panic!("{refs:?}: {e}"));
                format!("{:?}", cli.connection)
            };
            let none = resolved(line(&[], &[]));
            let before = resolved(line(&with("7"), &[]));
            let after = resolved(line(&[], &with("7")));
            assert_ne!(before, none, "{flag} before the subcommand is lost");
            assert_eq!(
                before, after,
                "{flag} before and after the subcommand differ"
            );
            if takes_value {
                let both = resolved(line(&with("7"), &with("8")));
                assert_eq!(both, resolved(line(&[], &with("8"))), "{flag}: after wins");
            }
            checked += 1;
        }
        assert!(checked >= 13, "only {checked} connection options found");
    }

    #[test]
    fn only_the_commands_that_talk_to_github_list_the_connection_options() {
        for (path, cmd) in every_command() {
            let has_url = cmd.get_arguments().any(|a| a.get_long() == Some("url"));
            let is_group = cmd.get_subcommands().next().is_some();
            if WITHOUT_CONNECTION.contains(&path.as_str()) || (is_group && path != "scaleset") {
                assert!(!has_url, "{path} lists the connection options");
                assert!(!long_help(&path).contains("Connection options:"), "{path}");
            } else {
                assert!(has_url, "{path} lacks the connection options");
                let help = long_help(&path);
                let own = help
                    .find("\nOptions:")
                    .unwrap_or_else(|| panic!("{path}: {help}"));
                let conn = help
                    .find("\nConnection options:")
                    .unwrap_or_else(|| panic!("{path}: no heading: {help}"));
                assert!(own < conn, "{path}: its own options come first: {help}");
                let connection = ConnectionArgs::augment_args(clap::Command::new("x"));
                let logs = LogArgs::augment_args(clap::Command::new("x"));
                for a in cmd.get_arguments() {
                    let id = a.get_id();
                    let expected = if connection.get_arguments().any(|c| c.get_id() == id) {
                        Some("Connection options")
                    } else if logs.get_arguments().any(|l| l.get_id() == id) {
                        Some("Log options")
                    } else {
                        None
                    };
                    assert_eq!(a.get_help_heading(), expected, "{path} --{id}");
                }
            }
            // The log options are everyone's.
            assert!(long_help(&path).contains("--log-format"), "{path}");
        }
        let e = parse(&["scaleset", "sim", "--url", "x"])
            .err()
            .map(|e| e.kind());
        assert_eq!(e, Some(clap::error::ErrorKind::UnknownArgument));
    }

    /// Prose and examples are written to fit: clap never has to wrap a line of them on an
    /// 80-column terminal (a wrapped example breaks inside a shell expression), and nothing
    /// clap renders there is wider.
    #[test]
    fn help_fits_in_80_columns_without_wrapping_examples() {
        for (path, cmd) in every_command() {
            let texts = [
                cmd.get_long_about(),
                cmd.get_after_help(),
                cmd.get_after_long_help(),
                cmd.get_before_help(),
            ];
            for text in texts.into_iter().flatten() {
                for line in text.to_string().lines() {
                    assert!(
                        line.chars().count() <= WIDTH,
                        "{path}: a line clap would wrap at {WIDTH} columns:\n{line}"
                    );
                }
            }
            for line in long_help(&path).lines() {
                assert!(line.chars().count() <= WIDTH, "{path}: {line}");
            }
        }
    }

    /// A default is shown once: by clap's `[default: x]`, or (for an option whose default is
    /// not a value) by one `[default: ...]` in its help, never both and never again in the
    /// prose; a command's description leaves defaults to its options.
    #[test]
    fn every_default_is_shown_once() {
        let statements = |text: &str| {
            let t = text.to_ascii_lowercase();
            ["(default", "default:", "the default)"]
                .iter()
                .map(|p| t.matches(p).count())
                .sum::<usize>()
        };
        for (path, cmd) in every_command() {
            for about in [cmd.get_about(), cmd.get_long_about()]
                .into_iter()
                .flatten()
            {
                assert_eq!(statements(&about.to_string()), 0, "{path}: {about}");
            }
            for arg in cmd.get_arguments() {
                let shown = usize::from(
                    !arg.get_default_values().is_empty() && !arg.is_hide_default_value_set(),
                );
                let help = arg.get_long_help().or(arg.get_help());
                let mut n = help.map_or(0, |h| statements(&h.to_string()));
                for value in arg.get_possible_values() {
                    n += value.get_help().map_or(0, |h| statements(&h.to_string()));
                }
                assert!(
                    shown + n <= 1,
                    "{path} {}: the default is shown {} times",
                    arg.get_id(),
                    shown + n
                );
            }
        }
    }

    #[test]
    fn every_command_has_an_example() {
        for (path, cmd) in every_command() {
            if cmd.get_subcommands().next().is_none() {
                let help = cmd
                    .get_after_help()
                    .map(|h| h.to_string())
                    .unwrap_or_default();
                assert!(help.contains("Example"), "{path} has no example");
            }
        }
    }

    /// `--help` of every command, as a terminal 80 columns wide shows it, reviewed like an
    /// API: a change to any help text shows in the diff of `tests/snapshots`. A new command
    /// is covered without a change here.
    #[test]
    fn help_snapshots() {
        let mut settings = insta::Settings::clone_current();
        settings.set_snapshot_path("../tests/snapshots");
        settings.set_prepend_module_to_snapshot(false);
        settings.set_omit_expression(true);
        settings.bind(|| {
            for (path, _) in every_command() {
                let name = format!("help__{}", path.replace(' ', "_"));
                insta::assert_snapshot!(name, long_help(&path));
            }
        });
    }
}
