//! The options shared by many commands (connection and log options) and the [`Client`]
//! built from the connection options.
//!
//! [`client_from_connection`] is the one place that turns options and environment variables into
//! credentials and a client; every command that talks to the service (including `run`) uses it,
//! so they all accept the same configuration and fail the same way (exit 2, before any request)
//! when it is incomplete.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use actions_scaleset::{Client, Credentials, SystemInfo};
use clap::{Args, ValueEnum};

use crate::error::CliError;

/// Environment variable holding a GitHub App private key in PEM (instead of a key file).
pub(crate) const ENV_APP_PRIVATE_KEY: &str = "SCALESET_APP_PRIVATE_KEY";
/// Fallback token variable, read when neither `--token` nor `SCALESET_TOKEN` is set.
pub(crate) const ENV_GITHUB_TOKEN: &str = "GITHUB_TOKEN";

/// Log verbosity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub(crate) enum LogLevel {
    /// Errors only.
    Error,
    /// Errors and warnings.
    Warn,
    /// Progress information.
    Info,
    /// Details for debugging.
    Debug,
    /// Everything.
    Trace,
}

/// Log line format on stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The options of every command that talks to GitHub: where (the config URL), with what
/// credentials, over which TLS setup, with which retries and timeouts.
///
/// Flattened into [`crate::cli::Cli`] (so they may come before the subcommand, as in
/// `scaleset --url URL scale-set list`) and into each command that uses them (so they come
/// after it, and its `--help` lists them under their own heading); the commands that do not
/// talk to GitHub (`config parse`, `sim`, `sim-runner`, `demo`) have none.
/// [`ConnectionArgs::take_given_before`] merges the two places. `--help` names each
/// environment variable without its value: help reads the same whatever is set.
#[derive(Args, Clone, Default)]
#[command(next_help_heading = "Connection options")]
pub(crate) struct ConnectionArgs {
    /// Config URL: the repository, organization or enterprise to work on.
    ///
    /// https://github.com/ORG/REPO, https://github.com/ORG or
    /// https://github.com/enterprises/ENT (or the same on a GHES host).
    #[arg(long, env = "SCALESET_URL", hide_env_values = true, value_name = "URL")]
    pub(crate) url: Option<String>,

    /// Personal access token (else GITHUB_TOKEN is read).
    #[arg(
        long,
        env = "SCALESET_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub(crate) token: Option<String>,

    /// File holding a token, re-read when it changes.
    ///
    /// A PAT or an installation token; a mounted Secret that rotates in place keeps
    /// working.
    #[arg(
        long,
        env = "SCALESET_TOKEN_FILE",
        hide_env_values = true,
        value_name = "PATH"
    )]
    pub(crate) token_file: Option<PathBuf>,

    /// GitHub App client id (or numeric app id).
    #[arg(
        long,
        env = "SCALESET_APP_CLIENT_ID",
        hide_env_values = true,
        value_name = "ID"
    )]
    pub(crate) app_client_id: Option<String>,

    /// GitHub App installation id (non-zero).
    #[arg(
        long,
        env = "SCALESET_APP_INSTALLATION_ID",
        hide_env_values = true,
        value_name = "N",
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub(crate) app_installation_id: Option<u64>,

    /// GitHub App private key file (PEM).
    ///
    /// Or put the PEM itself in SCALESET_APP_PRIVATE_KEY.
    #[arg(
        long,
        env = "SCALESET_APP_PRIVATE_KEY_FILE",
        hide_env_values = true,
        value_name = "PATH"
    )]
    pub(crate) app_private_key_file: Option<PathBuf>,

    /// Extra root CA certificates to trust (PEM; repeatable).
    #[arg(long, value_name = "PATH")]
    pub(crate) ca_cert: Vec<PathBuf>,

    /// TLS client certificate (PEM) for mutual TLS; needs --client-key.
    ///
    /// The certificate, optionally followed by its intermediates.
    #[arg(
        long,
        env = "SCALESET_CLIENT_CERT",
        hide_env_values = true,
        value_name = "PATH"
    )]
    pub(crate) client_cert: Option<PathBuf>,

    /// Private key of --client-cert (PEM).
    ///
    /// Unencrypted: PKCS#8, PKCS#1 RSA or SEC1 EC.
    #[arg(
        long,
        env = "SCALESET_CLIENT_KEY",
        hide_env_values = true,
        value_name = "PATH"
    )]
    pub(crate) client_key: Option<PathBuf>,

    /// Do not verify TLS certificates (testing only).
    #[arg(long)]
    pub(crate) insecure_skip_tls_verify: bool,

    /// Retries after a request's first attempt [default: 4].
    #[arg(long, value_name = "N")]
    pub(crate) retry_max: Option<u32>,

    /// Longest wait between retries, in seconds [default: 30].
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub(crate) retry_wait_max: Option<Duration>,

    /// Timeout of each request attempt, in seconds [default: 300].
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub(crate) timeout: Option<Duration>,

    /// What errors call the file options: the flags, or the config file keys they came from.
    #[arg(skip)]
    pub(crate) names: OptionNames,
}

/// Log options: every command accepts them, before or after the subcommand.
#[derive(Args, Clone, Copy, Debug)]
#[command(next_help_heading = "Log options")]
pub(crate) struct LogArgs {
    /// Log level on stderr [default: warn; for run: info].
    #[arg(
        long,
        global = true,
        env = "SCALESET_LOG",
        hide_env_values = true,
        value_enum,
        value_name = "LEVEL"
    )]
    pub(crate) log_level: Option<LogLevel>,

    /// Log format on stderr.
    ///
    /// json also makes the final error line a JSON object.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t = LogFormat::Text,
        value_name = "FORMAT"
    )]
    pub(crate) log_format: LogFormat,
}

impl LogArgs {
    /// The level in effect: the one given, else `default` (the command's own: a daemon
    /// says what it does at `info`, a one-shot command only warns).
    pub(crate) fn level_or(&self, default: LogLevel) -> LogLevel {
        self.log_level.unwrap_or(default)
    }
}

/// The names errors give the file options: the flag by default, the config file key when
/// `run` took the value from its `[connection]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct OptionNames {
    /// Name of the token file option.
    pub(crate) token_file: &'static str,
    /// Name of the client certificate option.
    pub(crate) client_cert: &'static str,
    /// Name of the client key option.
    pub(crate) client_key: &'static str,
}

impl Default for OptionNames {
    fn default() -> Self {
        OptionNames {
            token_file: "--token-file",
            client_cert: "--client-cert",
            client_key: "--client-key",
        }
    }
}

impl ConnectionArgs {
    /// Takes each option given on the command line before the subcommand (`before`, parsed
    /// by the top-level command) unless it was given after the subcommand too: after wins.
    /// Options given in neither place keep what the command's own parse found (its
    /// environment variable, or nothing).
    ///
    /// `given_before` and `given_after` say whether the option with that clap id (its field
    /// name) was on the command line at that level.
    pub(crate) fn take_given_before(
        &mut self,
        before: &ConnectionArgs,
        given_before: &dyn Fn(&str) -> bool,
        given_after: &dyn Fn(&str) -> bool,
    ) {
        macro_rules! take {
            ($($field:ident),* $(,)?) => {
                // Destructured so that a new field that is not listed here does not compile.
                let ConnectionArgs { $($field: _,)* names: _ } = before;
                $(
                    if given_before(stringify!($field)) && !given_after(stringify!($field)) {
                        self.$field = before.$field.clone();
                    }
                )*
            };
        }
        take!(
            url,
            token,
            token_file,
            app_client_id,
            app_installation_id,
            app_private_key_file,
            ca_cert,
            client_cert,
            client_key,
            insecure_skip_tls_verify,
            retry_max,
            retry_wait_max,
            timeout,
        );
    }
}

impl fmt::Debug for ConnectionArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionArgs")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "[REDACTED]"))
            .field("token_file", &self.token_file)
            .field("app_client_id", &self.app_client_id)
            .field("app_installation_id", &self.app_installation_id)
            .field("app_private_key_file", &self.app_private_key_file)
            .field("ca_cert", &self.ca_cert)
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key)
            .field("insecure_skip_tls_verify", &self.insecure_skip_tls_verify)
            .field("retry_max", &self.retry_max)
            .field("retry_wait_max", &self.retry_wait_max)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Parses a duration given in plain seconds (`30`, `0.5`).
pub(crate) fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds (e.g. 30 or 0.5)"))?;
    Duration::try_from_secs_f64(secs)
        .map_err(|_| format!("{s:?} is not a valid number of seconds (finite, not negative)"))
}

/// The system info every request of the CLI carries in its `User-Agent`.
pub(crate) fn system_info() -> SystemInfo {
    SystemInfo {
        system: "scaleset-cli".to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        commit_sha: option_env!("SCALESET_BUILD_COMMIT")
            .unwrap_or("unknown")
            .to_string(),
        scale_set_id: actions_scaleset::ScaleSetId::default(),
        subsystem: "cli".to_string(),
    }
}

/// Builds a client from the connection options and the environment. Sends no request.
///
/// Credentials, in order: `--token`/`SCALESET_TOKEN`; complete GitHub App credentials (client
/// id, non-zero installation id, and a key from `--app-private-key-file`/
/// `SCALESET_APP_PRIVATE_KEY_FILE` or `SCALESET_APP_PRIVATE_KEY`); `GITHUB_TOKEN`.
///
/// # Errors
/// Exit code 2 for a missing or invalid URL, missing or malformed credentials, an unreadable
/// file, or a bad CA bundle.
pub(crate) fn client_from_connection(g: &ConnectionArgs) -> Result<Client, CliError> {
    client_with_env(g, &|name| std::env::var(name).ok())
}

fn client_with_env(
    g: &ConnectionArgs,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Client, CliError> {
    let url = non_empty(g.url.clone()).ok_or_else(|| {
        CliError::config(
            "InvalidConfigUrl",
            "missing the config URL: give --url or set SCALESET_URL \
             (e.g. https://github.com/my-org/my-repo)",
        )
    })?;
    let credentials = credentials(g, env)?;
    let mut builder = Client::builder(url, credentials)
        .system_info(system_info())
        .insecure_skip_tls_verify(g.insecure_skip_tls_verify);
    if let Some(n) = g.retry_max {
        builder = builder.retry_max(n);
    }
    if let Some(d) = g.retry_wait_max {
        builder = builder.retry_wait_max(d);
    }
    if let Some(d) = g.timeout {
        if d.is_zero() {
            return Err(CliError::config(
                "InvalidArgument",
                "--timeout must be greater than 0",
            ));
        }
        builder = builder.timeout(d);
    }
    for path in &g.ca_cert {
        let pem = read_file(path, "--ca-cert", "InvalidClientConfig")?;
        // Checked here so that the error names the flag and the path.
        check_pem(&pem, "CERTIFICATE-----", "--ca-cert", path)?;
        builder = builder.root_ca_pem(pem);
    }
    let names = &g.names;
    match (&g.client_cert, &g.client_key) {
        (Some(cert), Some(key)) => {
            let cert_pem = read_file(cert, names.client_cert, "InvalidClientConfig")?;
            let key_pem = read_file(key, names.client_key, "InvalidClientConfig")?;
            // Check each half here so that the error names its flag (or key) and path; the
            // builder checks them again together.
            check_pem(&cert_pem, "CERTIFICATE-----", names.client_cert, cert)?;
            check_pem(&key_pem, "PRIVATE KEY-----", names.client_key, key)?;
            builder = builder.client_certificate_pem(cert_pem, key_pem);
        }
        (Some(_), None) => {
            return Err(CliError::config(
                "InvalidClientConfig",
                format!(
                    "{} needs {} (SCALESET_CLIENT_KEY) too",
                    names.client_cert, names.client_key
                ),
            ));
        }
        (None, Some(_)) => {
            return Err(CliError::config(
                "InvalidClientConfig",
                format!(
                    "{} needs {} (SCALESET_CLIENT_CERT) too",
                    names.client_key, names.client_cert
                ),
            ));
        }
        (None, None) => {}
    }
    builder
        .build()
        .map_err(|e| match (e, &g.client_cert, &g.client_key) {
            (actions_scaleset::Error::InvalidClientConfig(m), Some(cert), Some(key))
                if m.contains("client") =>
            {
                CliError::config(
                    "InvalidClientConfig",
                    format!(
                        "{} {} / {} {}: {m}",
                        names.client_cert,
                        cert.display(),
                        names.client_key,
                        key.display(),
                    ),
                )
            }
            (e, _, _) => CliError::api("configuration", e),
        })
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.trim().is_empty())
}

/// Picks the credentials (see [`client_from_connection`] for the order).
fn credentials(
    g: &ConnectionArgs,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Credentials, CliError> {
    let invalid = |e| CliError::api("credentials", e);
    let token = non_empty(g.token.clone());
    if let (Some(_), Some(_)) = (&token, &g.token_file) {
        return Err(CliError::config(
            "InvalidCredentials",
            format!(
                "give --token (SCALESET_TOKEN) or {} (SCALESET_TOKEN_FILE), not both",
                g.names.token_file
            ),
        ));
    }
    if let Some(token) = token {
        return Credentials::token(token).map_err(invalid);
    }
    if let Some(path) = &g.token_file {
        // TokenFile's errors name the path, never the contents.
        return Credentials::token_file(path).map_err(|e| {
            CliError::config("InvalidCredentials", format!("{}: {e}", g.names.token_file))
        });
    }
    let client_id = non_empty(g.app_client_id.clone());
    let installation_id = g.app_installation_id;
    let key = match &g.app_private_key_file {
        Some(path) => Some(
            String::from_utf8(read_file(
                path,
                "--app-private-key-file",
                "InvalidCredentials",
            )?)
            .map_err(|_| {
                CliError::config(
                    "InvalidCredentials",
                    format!(
                        "--app-private-key-file {}: the file is not UTF-8 PEM text",
                        path.display()
                    ),
                )
            })?,
        ),
        None => non_empty(env(ENV_APP_PRIVATE_KEY)),
    };
    let any_app = client_id.is_some() || installation_id.is_some() || key.is_some();
    if let (Some(id), Some(inst), Some(key)) = (&client_id, installation_id, &key) {
        return Credentials::github_app(id.clone(), inst, key).map_err(invalid);
    }
    let mut missing = Vec::new();
    if client_id.is_none() {
        missing.push("--app-client-id (SCALESET_APP_CLIENT_ID)");
    }
    if installation_id.is_none() {
        missing.push("--app-installation-id (SCALESET_APP_INSTALLATION_ID)");
    }
    if key.is_none() {
        missing.push(
            "--app-private-key-file (SCALESET_APP_PRIVATE_KEY_FILE) or SCALESET_APP_PRIVATE_KEY",
        );
    }
    if let Some(token) = non_empty(env(ENV_GITHUB_TOKEN)) {
        if any_app {
            tracing::warn!(
                missing = missing.join(", "),
                "incomplete GitHub App credentials are ignored; using GITHUB_TOKEN"
            );
        }
        return Credentials::token(token).map_err(invalid);
    }
    if any_app {
        return Err(CliError::config(
            "InvalidCredentials",
            format!(
                "missing credentials: incomplete GitHub App credentials, also give {}",
                missing.join(", ")
            ),
        ));
    }
    Err(CliError::config(
        "InvalidCredentials",
        "missing credentials: give --token (or SCALESET_TOKEN or GITHUB_TOKEN), or GitHub App \
         credentials (--app-client-id, --app-installation-id and --app-private-key-file)",
    ))
}

/// Checks that a PEM file holds a block whose label ends in `label_end`, naming the option
/// and the path (never the contents) when not.
fn check_pem(pem: &[u8], label_end: &str, name: &str, path: &Path) -> Result<(), CliError> {
    let text = String::from_utf8_lossy(pem);
    if text.contains("-----BEGIN ") && text.contains(label_end) {
        return Ok(());
    }
    let what = if label_end.starts_with("CERTIFICATE") {
        "a certificate"
    } else {
        "a private key"
    };
    Err(CliError::config(
        "InvalidClientConfig",
        format!("{name} {}: the file holds no {what} in PEM", path.display()),
    ))
}

fn read_file(path: &Path, flag: &str, kind: &'static str) -> Result<Vec<u8>, CliError> {
    std::fs::read(path)
        .map_err(|e| CliError::config(kind, format!("{flag} {}: cannot read: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        g: ConnectionArgs,
    }

    fn globals(args: &[&str]) -> ConnectionArgs {
        let mut all = vec!["t"];
        all.extend_from_slice(args);
        T::try_parse_from(all).expect("valid arguments").g
    }

    const URL: &str = "https://github.com/org/repo";

    #[test]
    fn durations_are_plain_seconds() {
        assert_eq!(parse_secs("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_secs("0.5"), Ok(Duration::from_millis(500)));
        assert!(parse_secs("-1").is_err());
        assert!(parse_secs("1s").is_err());
        assert!(parse_secs("NaN").is_err());
    }

    #[test]
    fn a_token_is_enough() {
        let g = globals(&["--url", URL, "--token", "ghp_x"]);
        assert!(client_with_env(&g, &|_| None).is_ok());
    }

    #[test]
    fn github_token_is_the_fallback() {
        let g = globals(&["--url", URL]);
        let env = |name: &str| (name == ENV_GITHUB_TOKEN).then(|| "ghp_y".to_string());
        assert!(client_with_env(&g, &env).is_ok());
    }

    #[test]
    fn nothing_is_a_missing_credential() {
        let g = globals(&["--url", URL]);
        let e = client_with_env(&g, &|_| None).expect_err("no credentials");
        assert_eq!(e.exit_code(), 2);
        assert!(
            e.message().contains("missing credentials"),
            "{}",
            e.message()
        );
    }

    #[test]
    fn an_incomplete_app_names_what_is_missing() {
        let g = globals(&["--url", URL, "--app-client-id", "Iv1.x"]);
        let e = client_with_env(&g, &|_| None).expect_err("incomplete app");
        assert_eq!(e.exit_code(), 2);
        assert!(
            e.message().contains("--app-installation-id"),
            "{}",
            e.message()
        );
        assert!(
            e.message().contains("SCALESET_APP_PRIVATE_KEY"),
            "{}",
            e.message()
        );
    }

    #[test]
    fn a_zero_installation_id_is_refused() {
        let e = T::try_parse_from([
            "t",
            "--url",
            URL,
            "--app-client-id",
            "Iv1.x",
            "--app-installation-id",
            "0",
        ])
        .err()
        .expect("zero installation id refused at parse time");
        assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation);
        let text = e.to_string();
        assert!(text.contains("--app-installation-id"), "{text}");
    }

    #[test]
    fn app_credentials_from_the_environment_key() {
        let g = globals(&[
            "--url",
            URL,
            "--app-client-id",
            "Iv1.x",
            "--app-installation-id",
            "7",
        ]);
        let env = |name: &str| {
            (name == ENV_APP_PRIVATE_KEY).then(|| scaleset_sim::APP_PRIVATE_KEY_PEM.to_string())
        };
        assert!(client_with_env(&g, &env).is_ok());
    }

    #[test]
    fn a_missing_url_is_a_configuration_error() {
        let g = globals(&["--token", "ghp_x"]);
        let e = client_with_env(&g, &|_| None).expect_err("no url");
        assert_eq!(e.exit_code(), 2);
        assert!(e.message().contains("--url"));
    }

    #[test]
    fn debug_output_hides_the_token() {
        let g = globals(&["--url", URL, "--token", "ghp_secret_value"]);
        assert!(!format!("{g:?}").contains("ghp_secret_value"));
    }
}
