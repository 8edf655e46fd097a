//! The process provisioner: one local process per runner.
//!
//! * The command gets the JIT config in `ACTIONS_RUNNER_INPUT_JITCONFIG`; `{name}` and
//!   `{jitconfig}` in its arguments are substituted (prefer the environment: arguments are
//!   visible to every user of the machine).
//! * Each runner works in its own directory `WORKDIR/<runner name>`, removed after it exits.
//! * Each runner is the leader of its own process group, so a Ctrl-C at the terminal does
//!   not reach it and [`stop`](Provisioner::stop) ends the whole group (SIGTERM, then
//!   SIGKILL after the stop timeout).
//! * Owned runners are recorded in `WORKDIR/.scaleset-runners.json` (name, runner id, pid),
//!   written before a JIT config is minted and after the process started, so a restarted
//!   daemon finds what a crashed one left behind ([`list`](Provisioner::list)) and can stop
//!   or adopt it ([`watch`](Provisioner::watch) polls a leftover's liveness).
//! * Dropping the provisioner leaves running runners alone (the `keep` policy relies on it).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::{Pid, getpgid};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{mpsc, watch};

use super::{OwnedRunner, Provisioner, RunnerExit, RunnerSpec};
use crate::error::ProvisionError;

/// The environment variable the runner reads its JIT config from.
pub const JIT_CONFIG_ENV: &str = "ACTIONS_RUNNER_INPUT_JITCONFIG";

const STATE_FILE: &str = ".scaleset-runners.json";

/// Settings of the process provisioner.
#[derive(Clone, Debug)]
pub struct ProcessConfig {
    /// The program to run per runner.
    pub command: String,
    /// Its arguments (`{name}`, `{jitconfig}` substituted).
    pub args: Vec<String>,
    /// Base work directory.
    pub workdir: PathBuf,
    /// How long a stopped runner gets between SIGTERM and SIGKILL.
    pub stop_timeout: Duration,
}

impl ProcessConfig {
    /// Settings with a 10 s stop timeout.
    pub fn new(command: impl Into<String>, args: Vec<String>, workdir: PathBuf) -> ProcessConfig {
        ProcessConfig {
            command: command.into(),
            args,
            workdir,
            stop_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Record {
    #[serde(default)]
    runner_id: i64,
    #[serde(default)]
    pid: Option<i32>,
}

#[derive(Default, Serialize, Deserialize)]
struct StateFile {
    #[serde(default)]
    runners: BTreeMap<String, Record>,
}

struct Inner {
    config: ProcessConfig,
    records: Mutex<StateFile>,
    /// Live processes this instance started or adopted: name -> (pid, "has exited").
    live: Mutex<HashMap<String, (i32, watch::Receiver<bool>)>>,
    /// Records found at start-up and not yet forgotten or adopted.
    leftovers: Mutex<BTreeMap<String, Record>>,
    exits_tx: mpsc::UnboundedSender<RunnerExit>,
    exits_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<RunnerExit>>,
}

/// The process provisioner. Clones share their state.
#[derive(Clone)]
pub struct ProcessProvisioner {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ProcessProvisioner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessProvisioner")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ProvisionError {
    let path = path.to_path_buf();
    move |source| ProvisionError::Io { what, path, source }
}

/// Whether `pid` is alive and still the leader of its own group (guards against pid reuse).
fn group_alive(pid: i32) -> bool {
    let p = Pid::from_raw(pid);
    let alive = match kill(p, None) {
        Ok(()) => true,
        Err(nix::errno::Errno::EPERM) => true,
        Err(_) => false,
    };
    alive && getpgid(Some(p)).map(|g| g == p).unwrap_or(false)
}

fn substitute(arg: &str, name: &str, jit: &str) -> String {
    arg.replace("{name}", name).replace("{jitconfig}", jit)
}

impl ProcessProvisioner {
    /// A provisioner working under `config.workdir` (created if missing). Loads the state
    /// file a previous run left.
    ///
    /// # Errors
    /// When the work directory cannot be created.
    pub fn new(config: ProcessConfig) -> Result<ProcessProvisioner, ProvisionError> {
        std::fs::create_dir_all(&config.workdir)
            .map_err(io("creating the work directory", &config.workdir))?;
        let path = config.workdir.join(STATE_FILE);
        let state: StateFile = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable state file");
                StateFile::default()
            }),
            Err(_) => StateFile::default(),
        };
        let leftovers = state.runners.clone();
        let (exits_tx, exits_rx) = mpsc::unbounded_channel();
        Ok(ProcessProvisioner {
            inner: Arc::new(Inner {
                config,
                records: Mutex::new(state),
                live: Mutex::new(HashMap::new()),
                leftovers: Mutex::new(leftovers),
                exits_tx,
                exits_rx: tokio::sync::Mutex::new(exits_rx),
            }),
        })
    }

    /// The settings.
    pub fn config(&self) -> &ProcessConfig {
        &self.inner.config
    }

    /// Pids of the runner processes this instance started and that are still running.
    pub fn live_pids(&self) -> Vec<i32> {
        lock(&self.inner.live)
            .values()
            .map(|(pid, _)| *pid)
            .collect()
    }

    fn update(&self, f: impl FnOnce(&mut BTreeMap<String, Record>)) -> Result<(), ProvisionError> {
        let mut state = lock(&self.inner.records);
        f(&mut state.runners);
        let path = self.inner.config.workdir.join(STATE_FILE);
        let tmp = self.inner.config.workdir.join(format!("{STATE_FILE}.tmp"));
        let bytes = serde_json::to_vec_pretty(&*state)
            .map_err(|e| ProvisionError::Other(format!("encoding the state file: {e}")))?;
        std::fs::write(&tmp, bytes).map_err(io("writing the state file", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(io("writing the state file", &path))
    }

    fn runner_dir(&self, name: &str) -> PathBuf {
        self.inner.config.workdir.join(name)
    }

    /// Reaps `name` after its process ended: directory, record, exit event.
    fn finished(&self, name: &str, success: bool) {
        let dir = self.runner_dir(name);
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(runner = %name, dir = %dir.display(), error = %e, "could not remove the runner's work directory");
        }
        if let Err(e) = self.update(|r| {
            r.remove(name);
        }) {
            tracing::warn!(runner = %name, error = %e, "could not update the state file");
        }
        lock(&self.inner.live).remove(name);
        let _ = self.inner.exits_tx.send(RunnerExit {
            name: name.to_string(),
            success,
        });
    }

    async fn stop_pid(&self, name: &str, pid: i32, done: Option<watch::Receiver<bool>>) {
        let timeout = self.inner.config.stop_timeout;
        let pgid = Pid::from_raw(pid);
        let wait = |mut done: Option<watch::Receiver<bool>>, limit: Duration| async move {
            match done.as_mut() {
                Some(rx) => tokio::time::timeout(limit, rx.wait_for(|d| *d))
                    .await
                    .is_ok(),
                None => {
                    // Not our child: poll its liveness (bounded by `limit`).
                    let deadline = tokio::time::Instant::now() + limit;
                    while group_alive(pid) {
                        if tokio::time::Instant::now() >= deadline {
                            return false;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    true
                }
            }
        };
        if killpg(pgid, Signal::SIGTERM).is_err() {
            return;
        }
        if wait(done.clone(), timeout).await {
            return;
        }
        tracing::warn!(runner = %name, pid, "runner ignored SIGTERM; killing its process group");
        let _ = killpg(pgid, Signal::SIGKILL);
        if !wait(done, Duration::from_secs(10)).await {
            tracing::warn!(runner = %name, pid, "runner still alive after SIGKILL");
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn forward_lines<R: tokio::io::AsyncRead + Unpin>(
    reader: R,
    name: String,
    stream: &'static str,
) {
    let mut lines = BufReader::new(reader).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::debug!(runner = %name, stream, "{line}");
    }
}

impl Provisioner for ProcessProvisioner {
    async fn reserve(&self, name: &str) -> Result<(), ProvisionError> {
        self.update(|r| {
            r.insert(name.to_string(), Record::default());
        })
    }

    async fn unreserve(&self, name: &str) -> Result<(), ProvisionError> {
        self.update(|r| {
            r.remove(name);
        })
    }

    async fn create(&self, spec: RunnerSpec) -> Result<(), ProvisionError> {
        let name = spec.name.clone();
        if lock(&self.inner.live).contains_key(&name) {
            return Err(ProvisionError::AlreadyExists(name));
        }
        let cfg = &self.inner.config;
        let dir = self.runner_dir(&name);
        std::fs::create_dir_all(&dir).map_err(io("creating the runner's work directory", &dir))?;
        let jit = spec.jit_config.expose_secret();
        let mut cmd = tokio::process::Command::new(&cfg.command);
        cmd.args(cfg.args.iter().map(|a| substitute(a, &name, jit)))
            .env(JIT_CONFIG_ENV, jit)
            .env("RUNNER_NAME", &name)
            .current_dir(&dir)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(false);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(io("starting the runner command", Path::new(&cfg.command))(
                    e,
                ));
            }
        };
        let pid = child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
        let (done_tx, done_rx) = watch::channel(false);
        lock(&self.inner.live).insert(name.clone(), (pid, done_rx));
        if let Err(e) = self.update(|r| {
            r.insert(
                name.clone(),
                Record {
                    runner_id: spec.runner_id,
                    pid: Some(pid),
                },
            );
        }) {
            tracing::warn!(runner = %name, error = %e, "could not record the runner in the state file");
        }
        if let Some(out) = child.stdout.take() {
            tokio::spawn(forward_lines(out, name.clone(), "stdout"));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(forward_lines(err, name.clone(), "stderr"));
        }
        let this = self.clone();
        let task_name = name.clone();
        tokio::spawn(async move {
            let name = task_name;
            let status = child.wait().await;
            let success = status.as_ref().map(|s| s.success()).unwrap_or(false);
            match &status {
                Ok(s) => tracing::debug!(runner = %name, pid, status = %s, "runner process exited"),
                Err(e) => {
                    tracing::warn!(runner = %name, pid, error = %e, "waiting for the runner process failed")
                }
            }
            // Whatever the runner left in its group goes too.
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            this.finished(&name, success);
            let _ = done_tx.send(true);
        });
        tracing::debug!(runner = %name, pid, "runner process started");
        Ok(())
    }

    async fn stop(&self, name: &str) -> Result<(), ProvisionError> {
        let live = lock(&self.inner.live).get(name).cloned();
        if let Some((pid, done)) = live {
            self.stop_pid(name, pid, Some(done)).await;
            return Ok(());
        }
        let leftover = lock(&self.inner.leftovers).get(name).cloned();
        if let Some(Record { pid: Some(pid), .. }) = leftover
            && group_alive(pid)
        {
            self.stop_pid(name, pid, None).await;
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<OwnedRunner>, ProvisionError> {
        Ok(lock(&self.inner.leftovers)
            .iter()
            .map(|(name, r)| OwnedRunner {
                name: name.clone(),
                runner_id: r.runner_id,
                alive: r.pid.is_some_and(group_alive),
            })
            .collect())
    }

    async fn watch(&self, name: &str) -> bool {
        let Some(record) = lock(&self.inner.leftovers).remove(name) else {
            return false;
        };
        let Some(pid) = record.pid.filter(|p| group_alive(*p)) else {
            return false;
        };
        let (done_tx, done_rx) = watch::channel(false);
        lock(&self.inner.live).insert(name.to_string(), (pid, done_rx));
        let this = self.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            while group_alive(pid) {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            this.finished(&name, true);
            let _ = done_tx.send(true);
        });
        true
    }

    async fn forget(&self, name: &str) -> Result<(), ProvisionError> {
        lock(&self.inner.leftovers).remove(name);
        let dir = self.runner_dir(name);
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(runner = %name, dir = %dir.display(), error = %e, "could not remove a leftover work directory");
        }
        self.update(|r| {
            r.remove(name);
        })
    }

    async fn next_exit(&self) -> Option<RunnerExit> {
        self.inner.exits_rx.lock().await.recv().await
    }
}
