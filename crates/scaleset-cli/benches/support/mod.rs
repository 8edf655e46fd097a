//! What the whole-process benchmarks share: `scaleset run --config` as a child process,
//! stopping a child with a signal, what `/proc` says of a process, a bare protocol client
//! (the simulator's own capacity) and where results are written.
#![allow(dead_code, reason = "each bench uses part of the support code")]

pub mod bare;
pub mod procfs;
pub mod results;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::process::{Child, Command};

/// Starts `scaleset run --config <config>` with `token`. Its log is discarded, or appended
/// to the file `SCALESET_BENCH_LOG` names (at the level `RUST_LOG` sets) when that is set.
pub fn spawn_run(config: &Path, token: &str) -> Child {
    spawn_run_with(config, token, &[])
}

/// [`spawn_run`] with extra environment variables (`XDG_STATE_HOME`, `RUST_LOG`, ...).
pub fn spawn_run_with(config: &Path, token: &str, env: &[(&str, &std::ffi::OsStr)]) -> Child {
    let log = match std::env::var_os("SCALESET_BENCH_LOG") {
        Some(path) => Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .unwrap_or_else(|e| panic!("SCALESET_BENCH_LOG {path:?} cannot be opened: {e}")),
        ),
        None => Stdio::null(),
    };
    Command::new(env!("CARGO_BIN_EXE_scaleset"))
        .args(["run", "--config"])
        .arg(config)
        .env("SCALESET_TOKEN", token)
        .env("NO_PROXY", "*")
        .envs(env.iter().map(|(k, v)| (*k, *v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
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

/// CPU time (user + system) `pid` has used so far, its children excluded; `None` when it is
/// gone or `/proc` cannot be read.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (in parentheses, which may hold spaces): state is the
    // first, utime the 12th, stime the 13th.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|v| u64::try_from(v).ok())
        .filter(|v| *v > 0)?;
    Some(Duration::from_secs_f64(ticks as f64 / hz as f64))
}

/// Raises this process's soft open-file limit to the hard limit (the simulator in a bench
/// holds one socket per scale set); returns the soft limit in force.
pub fn raise_open_files() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
    getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft)
}

/// Polls `cond` every 20 ms until it holds or `deadline` passes; whether it held.
pub async fn wait_for(deadline: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The median of `v` (the upper one of an even count); zero when empty.
pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}
