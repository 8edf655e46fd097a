//! Logs on stderr through `tracing-subscriber`: text or JSON lines.
//!
//! The level applies to this workspace's crates (`scaleset`, `actions_scaleset`,
//! `scaleset_autoscaler`, `scaleset_sim`). Dependencies (hyper, reqwest, rustls...) log at most
//! at `info`: their debug and trace output is transport noise, and it may dump raw headers,
//! which carry tokens.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::globals::{LogFormat, LogLevel};

const OWN_CRATES: [&str; 4] = [
    "scaleset",
    "actions_scaleset",
    "scaleset_autoscaler",
    "scaleset_sim",
];

fn level_name(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Error => "error",
        LogLevel::Warn => "warn",
        LogLevel::Info => "info",
        LogLevel::Debug => "debug",
        LogLevel::Trace => "trace",
    }
}

/// The filter directives for a level.
fn directives(level: LogLevel) -> String {
    let others = level_name(level.min(LogLevel::Info));
    let own = level_name(level);
    let mut out = others.to_string();
    for krate in OWN_CRATES {
        out.push_str(&format!(",{krate}={own}"));
    }
    out
}

/// Installs the global subscriber. Called once, right after the arguments parsed.
pub(crate) fn init(level: LogLevel, format: LogFormat) {
    let filter = EnvFilter::builder().parse_lossy(directives(level));
    // A log sink that went away (a closed pipe) must never take the daemon down: by default
    // the subscriber reports a failed write with `eprintln!`, which panics on a closed
    // stderr, in whatever task was logging (the signal handler, say). Lost lines are dropped.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    // A second init (never happens in the binary) would fail; logging then stays as it was.
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_are_capped_at_info() {
        assert_eq!(
            directives(LogLevel::Trace),
            "info,scaleset=trace,actions_scaleset=trace,scaleset_autoscaler=trace,scaleset_sim=trace"
        );
        assert!(directives(LogLevel::Warn).starts_with("warn,scaleset=warn"));
    }
}
