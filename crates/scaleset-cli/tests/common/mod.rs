//! Helpers of the CLI's integration tests: the simulator in-process on 127.0.0.1:0, the
//! `scaleset` binary as a child process, every wait under a deadline.
#![allow(dead_code)]

use std::process::Stdio;
use std::time::Duration;

use scaleset_sim::{SimConfig, Simulator};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{ChildStdout, Command};
use tokio::sync::mpsc;

/// The longest any single wait in these tests may take.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// The PAT the test simulators accept.
pub const TOKEN: &str = "ghp_cliTestToken0123456789abcdefXYZ";

/// Environment variables that must not leak from the test runner into the CLI.
pub const CLEARED: [&str; 19] = [
    "SCALESET_URL",
    "SCALESET_TOKEN",
    "SCALESET_TOKEN_FILE",
    "SCALESET_CLIENT_CERT",
    "SCALESET_CLIENT_KEY",
    "GITHUB_TOKEN",
    "SCALESET_APP_CLIENT_ID",
    "SCALESET_APP_INSTALLATION_ID",
    "SCALESET_APP_PRIVATE_KEY_FILE",
    "SCALESET_APP_PRIVATE_KEY",
    "SCALESET_LOG",
    "ACTIONS_RUNNER_INPUT_JITCONFIG",
    "GITHUB_ACTIONS_FORCE_GHES",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
];

/// A simulator with short timers, accepting [`TOKEN`].
pub async fn sim() -> Simulator {
    sim_with(|_| {}).await
}

/// A simulator with short timers and a tweak.
pub async fn sim_with(tweak: impl FnOnce(&mut SimConfig)) -> Simulator {
    let mut cfg = SimConfig {
        long_poll: Duration::from_millis(300),
        runner_job_poll: Duration::from_millis(500),
        token: Some(TOKEN.to_string()),
        ..SimConfig::default()
    };
    tweak(&mut cfg);
    Simulator::start(cfg).await.expect("the simulator starts")
}

/// The `scaleset` binary with a clean environment.
pub fn cmd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_scaleset"));
    for var in CLEARED {
        c.env_remove(var);
    }
    c.env("NO_PROXY", "*");
    c.stdin(Stdio::null()).kill_on_drop(true);
    c
}

/// What a finished command printed.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Stdout as one JSON document.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    /// The last non-empty line of stderr.
    pub fn last_err_line(&self) -> &str {
        self.stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_default()
    }

    /// The last stderr line as JSON (JSON log format).
    pub fn err_json(&self) -> Value {
        serde_json::from_str(self.last_err_line())
            .unwrap_or_else(|e| panic!("the last stderr line is not JSON ({e}): {self:?}"))
    }

    /// Asserts the exit code, showing the output when it differs.
    pub fn expect_code(&self, code: i32) -> &Run {
        assert_eq!(self.code, code, "unexpected exit code: {self:#?}");
        self
    }
}

/// Runs a command to completion (under [`DEADLINE`]).
pub async fn run(mut c: Command) -> Run {
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let out = tokio::time::timeout(DEADLINE, c.output())
        .await
        .expect("the command finishes before the deadline")
        .expect("the command runs");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `scaleset <args>` with no configuration.
pub async fn bare(args: &[&str]) -> Run {
    let mut c = cmd();
    c.args(args);
    run(c).await
}

/// `scaleset <args> --url <sim> --token <TOKEN>`.
pub async fn scaleset(sim: &Simulator, args: &[&str]) -> Run {
    let mut c = cmd();
    c.args(args)
        .args(["--url", &sim.config_url(), "--token", TOKEN]);
    run(c).await
}

/// Creates a scale set through the CLI and returns its id.
pub async fn create_scale_set(sim: &Simulator, name: &str) -> i64 {
    let r = scaleset(sim, &["scale-set", "create", "--name", name]).await;
    r.expect_code(0);
    r.json()["id"]
        .as_i64()
        .expect("the created scale set has an id")
}

/// A long-running `scaleset` child whose stdout is read line by line.
pub struct Streaming {
    child: tokio::process::Child,
    lines: Lines<BufReader<ChildStdout>>,
    stderr: mpsc::UnboundedReceiver<String>,
    stderr_seen: Vec<String>,
}

impl Streaming {
    /// Starts `scaleset <args> --url <sim> --token <TOKEN>`.
    pub fn start(sim: &Simulator, args: &[&str]) -> Streaming {
        let mut c = cmd();
        c.args(args)
            .args(["--url", &sim.config_url(), "--token", TOKEN]);
        Streaming::spawn(c)
    }

    /// Starts a prepared command.
    pub fn spawn(mut c: Command) -> Streaming {
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = c.spawn().expect("the command starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let err = child.stderr.take().expect("stderr is piped");
        let (tx, stderr) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(err).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Streaming {
            child,
            lines: BufReader::new(stdout).lines(),
            stderr,
            stderr_seen: Vec::new(),
        }
    }

    /// Reads stderr until a line contains `needle` (under [`DEADLINE`]).
    pub async fn wait_stderr(&mut self, needle: &str) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let line = tokio::time::timeout_at(deadline, self.stderr.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "no stderr line contains {needle:?}: {:#?}",
                        self.stderr_seen
                    )
                })
                .unwrap_or_else(|| panic!("stderr closed: {:#?}", self.stderr_seen));
            let found = line.contains(needle);
            self.stderr_seen.push(line);
            if found {
                return;
            }
        }
    }

    /// The next stdout line (under [`DEADLINE`]); `None` at end of stream.
    pub async fn next_line(&mut self) -> Option<String> {
        tokio::time::timeout(DEADLINE, self.lines.next_line())
            .await
            .expect("a line arrives before the deadline")
            .expect("stdout is readable")
    }

    /// The next stdout line as JSON; panics at end of stream.
    pub async fn next_json(&mut self) -> Value {
        let line = self.next_line().await.expect("the stream goes on");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }

    /// The child's process id.
    pub fn pid(&self) -> i32 {
        let pid = self.child.id().expect("the child is running");
        i32::try_from(pid).expect("pids fit in i32")
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
    }

    /// Sends a signal.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = self.child.id().expect("the child is running");
        let pid = i32::try_from(pid).expect("pids fit in i32");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
            .expect("the signal is delivered");
    }

    /// Reads stderr until a line contains `needle` (then sends SIGTERM) or the child closes
    /// it (it exited); then [`finish`](Self::finish)es. Under [`DEADLINE`].
    pub async fn finish_or_stop_after(mut self, needle: &str) -> Run {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let line = tokio::time::timeout_at(deadline, self.stderr.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!("neither {needle:?} nor an exit: {:#?}", self.stderr_seen)
                });
            let Some(line) = line else { break };
            let found = line.contains(needle);
            self.stderr_seen.push(line);
            if found {
                self.sigterm();
                break;
            }
        }
        self.finish().await
    }

    /// Waits for the exit (under [`DEADLINE`]); returns the code, the rest of stdout, stderr.
    pub async fn finish(mut self) -> Run {
        let mut rest = String::new();
        while let Some(line) = tokio::time::timeout(DEADLINE, self.lines.next_line())
            .await
            .expect("stdout closes before the deadline")
            .expect("stdout is readable")
        {
            rest.push_str(&line);
            rest.push('\n');
        }
        let status = tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .expect("the child exits before the deadline")
            .expect("the child can be waited for");
        while let Some(line) = tokio::time::timeout(DEADLINE, self.stderr.recv())
            .await
            .expect("stderr closes before the deadline")
        {
            self.stderr_seen.push(line);
        }
        Run {
            code: status.code().unwrap_or(-1),
            stdout: rest,
            stderr: self.stderr_seen.join("\n"),
        }
    }
}

/// Processes whose working directory is under `dir` (the runners of one test).
pub fn processes_under(dir: &std::path::Path) -> Vec<i32> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(cwd) = std::fs::read_link(e.path().join("cwd"))
            && cwd.starts_with(dir)
        {
            found.push(pid);
        }
    }
    found
}
