//! Shutdown on SIGINT or SIGTERM.

use actions_scaleset::CancellationToken;

use crate::error::CliError;

/// A token that fires on the first SIGINT or SIGTERM. A second signal while the graceful
/// shutdown runs (deleting the session, draining) exits at once with status 130, as an
/// operator pressing Ctrl-C twice expects.
///
/// The handlers are installed before this returns, so a signal sent right after cannot kill
/// the process the default way.
pub(crate) fn shutdown_token() -> Result<CancellationToken, CliError> {
    let token = CancellationToken::new();
    let fire = token.clone();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let install = |kind: SignalKind, name: &str| {
            signal(kind).map_err(|e| {
                CliError::other("Signal", format!("cannot install the {name} handler: {e}"))
            })
        };
        let mut term = install(SignalKind::terminate(), "SIGTERM")?;
        let mut int = install(SignalKind::interrupt(), "SIGINT")?;
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received; shutting down"),
                _ = int.recv() => tracing::info!("SIGINT received; shutting down"),
            }
            fire.cancel();
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::warn!("second signal received; exiting without finishing the shutdown");
            std::process::exit(130);
        });
    }
    #[cfg(not(unix))]
    {
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                tracing::info!("Ctrl-C received; shutting down");
                fire.cancel();
            }
        });
    }
    Ok(token)
}
