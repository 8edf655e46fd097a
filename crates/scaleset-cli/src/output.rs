//! Data on stdout: one JSON document, pretty on a terminal and compact otherwise, or one
//! compact JSON object per line (flushed per line) for event streams.

use std::io::{IsTerminal, Write};

use serde::Serialize;

use crate::error::CliError;

/// Prints one JSON document on stdout.
pub(crate) fn print_json<T: Serialize + ?Sized>(value: &T) -> Result<(), CliError> {
    let stdout = std::io::stdout();
    let text = if stdout.is_terminal() {
        serde_json::to_string_pretty(value)
    } else {
        serde_json::to_string(value)
    }
    .map_err(|e| CliError::other("Output", format!("cannot encode the output as JSON: {e}")))?;
    let mut out = stdout.lock();
    writeln!(out, "{text}")
        .and_then(|()| out.flush())
        .map_err(|e| CliError::other("Output", format!("cannot write to stdout: {e}")))
}

/// Prints one compact JSON object on its own line and flushes.
pub(crate) fn print_line<T: Serialize + ?Sized>(value: &T) -> std::io::Result<()> {
    let text = serde_json::to_string(value)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")?;
    out.flush()
}
