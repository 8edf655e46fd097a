//! `scaleset config parse URL`: what a config URL names, without credentials or requests.

use actions_scaleset::{github_api_base, parse_github_config_from_url};
use clap::Subcommand;
use serde::Serialize;

use crate::error::{CliError, OrCli};
use crate::output::print_json;

/// `config` subcommands.
#[derive(Subcommand)]
pub(crate) enum ConfigCommand {
    /// Parse a config URL: its scope, names, whether it is GitHub-hosted, and its API base.
    #[command(after_help = "\
Prints {\"scope\", \"enterprise\", \"organization\", \"repository\",
\"isHosted\", \"apiUrl\"}; names that do not apply to the scope are null.
Sends no request; needs no credentials.

Examples:
  scaleset config parse https://github.com/my-org/my-repo
  scaleset config parse https://ghes.example.com/enterprises/my-enterprise")]
    Parse {
        /// The config URL (repository, organization or enterprise).
        #[arg(value_name = "URL")]
        url: String,
    },
}

/// The output of `config parse`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ParsedConfig {
    scope: &'static str,
    enterprise: Option<String>,
    organization: Option<String>,
    repository: Option<String>,
    is_hosted: bool,
    api_url: String,
}

/// Runs a `config` subcommand.
pub(crate) fn run(cmd: ConfigCommand) -> Result<(), CliError> {
    match cmd {
        ConfigCommand::Parse { url } => print_json(&parse(&url)?),
    }
}

fn parse(url: &str) -> Result<ParsedConfig, CliError> {
    let config = parse_github_config_from_url(url).or_cli("config parse")?;
    let name = |s: &str| (!s.is_empty()).then(|| s.to_string());
    Ok(ParsedConfig {
        scope: config.scope.as_str(),
        enterprise: name(&config.enterprise),
        organization: name(&config.organization),
        repository: name(&config.repository),
        is_hosted: config.is_hosted(),
        api_url: github_api_base(&config),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_url() {
        let v = serde_json::to_value(parse("https://github.com/org/repo/").expect("valid"))
            .expect("serializable");
        assert_eq!(
            v,
            serde_json::json!({
                "scope": "repository",
                "enterprise": null,
                "organization": "org",
                "repository": "repo",
                "isHosted": true,
                "apiUrl": "https://api.github.com",
            })
        );
    }

    #[test]
    fn ghes_enterprise_url() {
        let p = parse("https://ghes.example.com/enterprises/ent").expect("valid");
        assert_eq!(p.scope, "enterprise");
        assert_eq!(p.enterprise.as_deref(), Some("ent"));
        assert_eq!(p.organization, None);
        assert!(!p.is_hosted);
        assert_eq!(p.api_url, "https://ghes.example.com/api/v3");
    }

    #[test]
    fn invalid_url_exits_2() {
        let e = parse("https://github.com/a/b/c").expect_err("invalid");
        assert_eq!(e.exit_code(), 2);
        assert!(e.message().starts_with("config parse: "));
    }
}
