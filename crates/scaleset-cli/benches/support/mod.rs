//! What the whole-process benchmarks share: `scaleset run --config` as a child process, and
//! stopping a child with a signal.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::process::{Child, Command};

/// Starts `scaleset run --config <config>` with `token`, its output discarded.
pub fn spawn_run(config: &Path, token: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_scaleset"))
        .args(["run", "--config"])
        .arg(config)
        .env("SCALESET_TOKEN", token)
        .env("NO_PROXY", "*")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("scaleset run starts")
}

/// Sends `signal` to `child` (nothing when it is gone).
pub fn signal(child: &Child, signal: Signal) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
    }
}

/// Sends `signal` and waits up to `grace` for `child` to exit (dropping it kills it after).
pub async fn stop(mut child: Child, sig: Signal, grace: Duration) {
    signal(&child, sig);
    let _ = tokio::time::timeout(grace, child.wait()).await;
}
