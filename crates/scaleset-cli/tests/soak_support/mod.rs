//! Shared by the fault soak (`soak.rs`) and the crash loop (`crash_loop.rs`): a seeded random
//! source, the real `scaleset run` daemon as a child process (process provisioner running
//! `scaleset sim-runner`) with its log in a file, and the checks both make from the
//! simulator's state. Every wait has a deadline; everything listens on loopback only.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use scaleset_sim::{Fault, SimState, Simulator};

use crate::common::{self, TOKEN};

/// A small xorshift64* generator: the whole schedule follows from the seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed` (any value; 0 is remapped).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// True with probability `p_percent` / 100.
    pub fn chance(&mut self, p_percent: u64) -> bool {
        self.next_u64() % 100 < p_percent
    }

    /// One element of a non-empty slice.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        let i = usize::try_from(self.next_u64() % items.len() as u64)
            .expect("an index below a slice length fits in usize");
        &items[i]
    }
}

/// A unique scratch directory under the system temp dir.
pub fn scratch(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("scaleset-{tag}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("the scratch directory can be made");
    dir
}

pub use crate::common::processes_under;

/// Kills every process under `dir` (clean-up after a failed test; runners have their own
/// process groups and would outlive it).
pub fn kill_all_under(dir: &Path) {
    for pid in processes_under(dir) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// What the daemon is configured with.
#[derive(Debug, Clone)]
pub struct DaemonSetup {
    /// Scale set name (and label).
    pub name: String,
    /// `max_runners`.
    pub max_runners: u32,
    /// `registration_timeout_secs`: how long a runner may take to run, or sit idle while
    /// jobs wait, before it is replaced.
    pub registration_timeout_secs: u64,
    /// `idle_delay_secs`.
    pub idle_delay_secs: u64,
    /// `drain_timeout_secs`.
    pub drain_timeout_secs: u64,
    /// `--timeout`: each request attempt's timeout.
    pub request_timeout_secs: u64,
}

/// The files and directories one daemon keeps across restarts.
#[derive(Debug)]
pub struct DaemonFiles {
    /// Scratch root (removed at the end).
    pub root: PathBuf,
    /// The TOML configuration.
    pub config: PathBuf,
    /// `XDG_STATE_HOME` of the daemon (its state directory lives under it).
    pub state_home: PathBuf,
    /// Runner work directories' base.
    pub workdir: PathBuf,
    /// Keep the scratch directory (logs) when dropped.
    pub keep: bool,
}

impl DaemonFiles {
    /// Writes the configuration for `sim` into a new scratch directory.
    pub fn new(tag: &str, sim: &Simulator, setup: &DaemonSetup) -> DaemonFiles {
        let root = scratch(tag);
        let state_home = root.join("state");
        let workdir = root.join("runners");
        std::fs::create_dir_all(&state_home).expect("state dir");
        let config = root.join("scaleset.toml");
        let toml = format!(
            r#"[connection]
url = "{url}"

[[scale_set]]
name = "{name}"
max_runners = {max}
registration_timeout_secs = {reg}
idle_delay_secs = {idle}
max_concurrent_starts = 4
shutdown = "drain"
drain_timeout_secs = {drain}

[scale_set.provisioner]
kind = "process"
command = "{bin}"
args = ["sim-runner"]
workdir = "{workdir}"
"#,
            url = sim.config_url(),
            name = setup.name,
            max = setup.max_runners,
            reg = setup.registration_timeout_secs,
            idle = setup.idle_delay_secs,
            drain = setup.drain_timeout_secs,
            bin = env!("CARGO_BIN_EXE_scaleset"),
            workdir = workdir.display(),
        );
        std::fs::write(&config, toml).expect("the configuration is written");
        DaemonFiles {
            root,
            config,
            state_home,
            workdir,
            keep: false,
        }
    }
}

impl Drop for DaemonFiles {
    fn drop(&mut self) {
        kill_all_under(&self.workdir);
        if !std::thread::panicking() && !self.keep {
            let _ = std::fs::remove_dir_all(&self.root);
        } else {
            eprintln!("kept for inspection: {}", self.root.display());
        }
    }
}

/// One `scaleset run` process; its stderr goes to `daemon-N.log` in the scratch root.
#[derive(Debug)]
pub struct Daemon {
    child: tokio::process::Child,
    /// The log file of this process.
    pub log: PathBuf,
}

impl Daemon {
    /// Starts `scaleset run --config ...` (generation `n` names the log file).
    pub fn start(files: &DaemonFiles, setup: &DaemonSetup, n: usize) -> Daemon {
        let log = files.root.join(format!("daemon-{n}.log"));
        let err = std::fs::File::create(&log).expect("the log file can be made");
        let mut c = common::cmd();
        c.args(["run", "--config"])
            .arg(&files.config)
            .args([
                "--token",
                TOKEN,
                "--timeout",
                &setup.request_timeout_secs.to_string(),
                "--retry-max",
                "3",
                "--retry-wait-max",
                "2",
                "--log-level",
                "info",
            ])
            .env("XDG_STATE_HOME", &files.state_home)
            .stdout(Stdio::null())
            .stderr(Stdio::from(err));
        let child = c.spawn().expect("the daemon starts");
        Daemon { child, log }
    }

    /// The exit status if the process has ended.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("the daemon can be waited for")
    }

    /// Sends a signal.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        if let Some(pid) = self.child.id() {
            let pid = i32::try_from(pid).expect("pids fit in i32");
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
        }
    }

    /// SIGKILL, then waits for the exit (under a deadline).
    pub async fn kill(mut self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
        tokio::time::timeout(common::DEADLINE, self.child.wait())
            .await
            .expect("a killed daemon exits before the deadline")
            .expect("the daemon can be waited for");
    }

    /// SIGTERM, then waits for the exit (under `deadline`); the exit code (-1 for a signal).
    pub async fn terminate(mut self, deadline: Duration) -> i32 {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let status = tokio::time::timeout(deadline, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("the daemon exits within {deadline:?} of SIGTERM"))
            .expect("the daemon can be waited for");
        status.code().unwrap_or(-1)
    }

    /// The last lines of the log (for failure messages).
    pub fn log_tail(&self) -> String {
        log_tail(&self.log)
    }
}

/// The last 40 lines of a log file.
pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// The id of the scale set `name`, once the daemon made it.
pub async fn scale_set_id(sim: &Simulator, name: &str, deadline: Duration) -> i64 {
    let (ok, st) = sim
        .wait_until(deadline, |st| st.scale_set_by_name(name).is_some())
        .await;
    assert!(ok, "the daemon created scale set {name}");
    st.scale_set_by_name(name)
        .map(|s| s.id)
        .expect("the scale set exists")
}

/// Waits until the scale set has a session of the daemon (it listens).
pub async fn wait_listening(sim: &Simulator, ss: i64, deadline: Duration) -> bool {
    sim.wait_until(deadline, |st| {
        st.sessions.iter().any(|s| s.scale_set_id == ss)
    })
    .await
    .0
}

/// Frees the session a killed daemon left, the way the service eventually would.
pub fn evict(sim: &Simulator, ss: i64) {
    sim.faults()
        .inject(Fault::EvictSession {
            scale_set_id: Some(ss),
        })
        .expect("evictSession is a valid fault");
}

/// Jobs by final result, and those not completed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct JobTally {
    /// All jobs.
    pub total: usize,
    /// Completed `succeeded`.
    pub succeeded: usize,
    /// Completed `failed`.
    pub failed: usize,
    /// Completed with another result (canceled for good: lost).
    pub other: usize,
    /// Not completed.
    pub open: usize,
    /// Sum of every job's requeues.
    pub requeues: u64,
}

impl JobTally {
    /// Counts the jobs of a snapshot.
    pub fn of(st: &SimState) -> JobTally {
        let mut t = JobTally {
            total: st.jobs.len(),
            ..JobTally::default()
        };
        for j in &st.jobs {
            t.requeues += u64::from(j.requeues);
            match (j.status.as_str(), j.result.as_deref()) {
                ("completed", Some("succeeded")) => t.succeeded += 1,
                ("completed", Some("failed")) => t.failed += 1,
                ("completed", _) => t.other += 1,
                _ => t.open += 1,
            }
        }
        t
    }
}

/// Pending runner faults (not yet consumed by a runner coming online), by behaviour name.
pub fn pending_runner_faults(sim: &Simulator, behaviour: &str) -> u64 {
    sim.faults().pending()["runnerFaults"]
        .as_array()
        .map_or(0, |a| a.iter().filter(|b| *b == behaviour).count() as u64)
}
