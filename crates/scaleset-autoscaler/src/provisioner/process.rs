//! The process provisioner: one local process per runner.
//!
//! * The command gets the JIT config in `ACTIONS_RUNNER_INPUT_JITCONFIG`; `{name}` and
//!   `{jitconfig}` in its arguments are substituted (prefer the environment: arguments are
//!   visible to every user of the machine).
//! * The runner does **not** inherit the daemon's environment (it holds admin credentials):
//!   it gets only [`ALLOWED_ENV`], the names listed in [`ProcessConfig::env`], the JIT config
//!   and `RUNNER_NAME`.
//! * Each runner works in its own directory `WORKDIR/<runner name>` (mode 0700), removed
//!   after it exits. Its stdout and stderr go to `WORKDIR/<runner name>.log` (mode 0600), a
//!   regular file rather than a pipe so that the runner survives the daemon's death without
//!   a SIGPIPE; the daemon tails it into its own log (debug level) and removes it with the
//!   runner's directory once the runner is reaped (its content is in the daemon's log by
//!   then).
//! * The work directory must belong to the effective user and must not be writable by group
//!   or others; [`acquire`](Provisioner::acquire) locks it for the provisioner's whole life
//!   (the work directory's key in [`ProcessConfig::lock_file`], see [`HostLock`]), so two
//!   autoscalers never manage the same runners (a hot standby waits in `acquire`). The
//!   daemon keeps every scale set's key in one lock file of its state directory: one
//!   descriptor for all of them.
//! * Each runner is the leader of its own process group, so a Ctrl-C at the terminal does
//!   not reach it and [`stop`](Provisioner::stop) ends the whole group (SIGTERM, then
//!   SIGKILL after the stop timeout).
//! * Owned runners are recorded in `WORKDIR/.scaleset-runners.json` (name, runner id, pid,
//!   process start time). A started runner's record is on disk before the start is
//!   reported; a reservation (before the JIT config is minted) and the removal of an ended
//!   runner's record are written in the background, since losing them in a crash costs
//!   nothing (the daemon's start-up sweep removes a registration without a record by its
//!   name prefix; a record whose process is gone is released). So a restarted daemon finds
//!   what a crashed one left behind
//!   ([`list`](Provisioner::list)) and can stop or adopt it ([`adopt`](Provisioner::adopt)
//!   polls a leftover's liveness). A recorded pid is only signalled while its start time
//!   still matches (pid reuse), and names read back must carry the runner-name prefix.
//! * Dropping the provisioner leaves running runners alone (the `keep` policy relies on it).

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actions_scaleset::RunnerId;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use super::JIT_CONFIG_ENV;
use super::ownership::HostLock;
use super::state_file::StateFile;
use super::{
    ExitStatus, OwnedRunner, Provisioner, ProvisionerEvent, RunnerEvent, RunnerSpec, RunnerState,
    VERSION_DEPRECATED_ENV,
};
use crate::error::ProvisionError;

const BACKEND: &str = "process";

/// The longest line of runner output forwarded as one log line; longer ones are split.
const MAX_LINE: usize = 16 * 1024;

/// Variables of the daemon's environment every runner gets (when set).
pub const ALLOWED_ENV: [&str; 7] = ["PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "USER", "TZ"];

const STATE_FILE: &str = ".scaleset-runners.json";
/// The lock file [`ProcessConfig::new`] puts in the work directory.
const LOCK_FILE: &str = ".lock";

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
    /// Names of the daemon's environment variables passed to runners on top of
    /// [`ALLOWED_ENV`].
    pub env: Vec<String>,
    /// Every runner name starts with this; state-file entries that do not are ignored.
    pub name_prefix: String,
    /// The lock file holding the work directory's key while this provisioner owns it
    /// ([`HostLock`]). Every instance that may manage these runners must use the same file:
    /// the daemon uses one in its state directory for all its scale sets.
    pub lock_file: PathBuf,
}

impl ProcessConfig {
    /// Settings with a 10 s stop timeout, no extra environment, no name prefix and the lock
    /// file `WORKDIR/.lock`.
    pub fn new(command: impl Into<String>, args: Vec<String>, workdir: PathBuf) -> ProcessConfig {
        ProcessConfig {
            command: command.into(),
            args,
            lock_file: workdir.join(LOCK_FILE),
            workdir,
            stop_timeout: Duration::from_secs(10),
            env: Vec::new(),
            name_prefix: String::new(),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Record {
    #[serde(default)]
    runner_id: RunnerId,
    #[serde(default)]
    pid: Option<i32>,
    /// Field 22 of `/proc/<pid>/stat` when the process was started.
    #[serde(default)]
    start_time: Option<u64>,
}

#[derive(Default, Serialize, Deserialize)]
struct State {
    #[serde(default)]
    runners: BTreeMap<String, Record>,
}

/// A live process: its pid (= pgid) and "has exited".
#[derive(Clone)]
struct Live {
    pid: i32,
    done: watch::Receiver<bool>,
}

struct Inner {
    config: ProcessConfig,
    /// The state file `WORKDIR/.scaleset-runners.json`.
    records: StateFile<State>,
    /// Live processes this instance started or adopted.
    live: Mutex<HashMap<String, Live>>,
    /// Records found at start-up and not yet forgotten or adopted.
    leftovers: Mutex<BTreeMap<String, Record>>,
    exits_tx: mpsc::UnboundedSender<ProvisionerEvent>,
    exits_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<ProvisionerEvent>>,
    /// Held from [`Provisioner::acquire`] on: the work directory belongs to this instance.
    lock: Mutex<Option<HostLock>>,
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
    move |source| ProvisionError::backend(BACKEND, format!("{what} ({}): {source}", path.display()))
}

/// The start time of `pid` (field 22 of `/proc/<pid>/stat`), if it exists.
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: skip past the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether any process of group `pgid` is alive (signal 0 to the group).
fn group_alive(pgid: i32) -> bool {
    if pgid <= 0 {
        return false;
    }
    match killpg(Pid::from_raw(pgid), None) {
        Ok(()) => true,
        Err(nix::errno::Errno::EPERM) => true,
        Err(_) => false,
    }
}

/// Whether a recorded process group is still the one recorded: the group is alive and its
/// leader, if still there, has the recorded start time (a different one means the pid was
/// reused; a group whose leader exited keeps its id reserved, so it is still ours). A record
/// without a start time is never trusted.
fn recorded_alive(pid: i32, recorded_start: Option<u64>) -> bool {
    let Some(want) = recorded_start else {
        return false;
    };
    group_alive(pid) && start_time(pid).is_none_or(|t| t == want)
}

fn substitute(arg: &str, name: &str, jit: &str) -> String {
    arg.replace("{name}", name).replace("{jitconfig}", jit)
}

/// Whether `name` may be a runner of this provisioner (it becomes a path component).
fn valid_runner_name(name: &str, prefix: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\0')
        && !name.contains("..")
        && !name.starts_with('.')
        && name.starts_with(prefix)
        && name.len() > prefix.len()
}

/// Creates `dir` (mode 0700) if missing and checks that it belongs to the effective user and
/// is not writable by group or others.
fn prepare_workdir(dir: &Path) -> Result<(), ProvisionError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io("creating the work directory", dir))?;
    check_private_dir(dir)
}

fn check_private_dir(dir: &Path) -> Result<(), ProvisionError> {
    let meta = std::fs::symlink_metadata(dir).map_err(io("inspecting the work directory", dir))?;
    let unsafe_dir = |why: &str| {
        ProvisionError::backend(
            BACKEND,
            format!("unsafe work directory {}: {why}", dir.display()),
        )
    };
    if !meta.is_dir() {
        return Err(unsafe_dir("not a directory"));
    }
    if meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(unsafe_dir("owned by another user"));
    }
    if meta.permissions().mode() & 0o022 != 0 {
        return Err(unsafe_dir("writable by group or others (chmod go-w it)"));
    }
    Ok(())
}

impl ProcessProvisioner {
    /// A provisioner working under `config.workdir` (created if missing), owning nothing
    /// yet: [`acquire`](Provisioner::acquire) locks the work directory and loads the state
    /// file a previous run left.
    ///
    /// # Errors
    /// When the work directory cannot be created or is not private to this user.
    pub fn unlocked(config: ProcessConfig) -> Result<ProcessProvisioner, ProvisionError> {
        prepare_workdir(&config.workdir)?;
        let (exits_tx, exits_rx) = mpsc::unbounded_channel();
        let state_path = config.workdir.join(STATE_FILE);
        Ok(ProcessProvisioner {
            inner: Arc::new(Inner {
                config,
                records: StateFile::new(BACKEND, state_path, State::default()),
                live: Mutex::new(HashMap::new()),
                leftovers: Mutex::new(BTreeMap::new()),
                exits_tx,
                exits_rx: tokio::sync::Mutex::new(exits_rx),
                lock: Mutex::new(None),
            }),
        })
    }

    /// [`unlocked`](Self::unlocked), then takes the work directory now.
    ///
    /// # Errors
    /// As [`unlocked`](Self::unlocked); [`ProvisionError::Locked`] when another instance
    /// holds the work directory.
    pub fn new(config: ProcessConfig) -> Result<ProcessProvisioner, ProvisionError> {
        let p = Self::unlocked(config)?;
        let lock = HostLock::try_acquire(BACKEND, &p.inner.config.lock_file, &p.lock_key())
            .map_err(|e| match e {
                ProvisionError::Locked(_) => ProvisionError::Locked(format!(
                    "the work directory {}",
                    p.inner.config.workdir.display()
                )),
                e => e,
            })?;
        p.owned(lock);
        Ok(p)
    }

    /// [`unlocked`](Self::unlocked), then [`acquire`](Provisioner::acquire): waits while
    /// another instance holds the work directory (a hot standby), until `cancel` fires.
    ///
    /// # Errors
    /// As [`new`](Self::new); [`ProvisionError::Cancelled`] when `cancel` fired first.
    pub async fn open(
        config: ProcessConfig,
        cancel: &CancellationToken,
    ) -> Result<ProcessProvisioner, ProvisionError> {
        let p = Self::unlocked(config)?;
        p.acquire(cancel).await?;
        Ok(p)
    }

    /// The work directory's key in the lock file: its canonical path, so two spellings of one
    /// directory are one key.
    fn lock_key(&self) -> String {
        let dir = &self.inner.config.workdir;
        std::fs::canonicalize(dir)
            .unwrap_or_else(|_| dir.clone())
            .display()
            .to_string()
    }

    /// Keeps `lock` and loads the state file (now that no other instance writes it).
    fn owned(&self, lock: HostLock) {
        let config = &self.inner.config;
        let path = config.workdir.join(STATE_FILE);
        let mut state: State = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                let aside = config.workdir.join(format!("{STATE_FILE}.unreadable"));
                tracing::warn!(path = %path.display(), moved_to = %aside.display(), error = %e, "an unreadable state file was moved aside; its runners are not cleaned up");
                if let Err(e) = std::fs::rename(&path, &aside) {
                    tracing::warn!(path = %path.display(), error = %e, "could not move the unreadable state file aside");
                }
                State::default()
            }),
            Err(_) => State::default(),
        };
        state.runners.retain(|name, _| {
            let ok = valid_runner_name(name, &config.name_prefix);
            if !ok {
                tracing::warn!(path = %path.display(), runner = ?name, "ignoring a state file entry with an invalid runner name");
            }
            ok
        });
        *lock_of(&self.inner.leftovers) = state.runners.clone();
        self.inner.records.replace(state);
        *lock_of(&self.inner.lock) = Some(lock);
    }

    /// The settings.
    pub fn config(&self) -> &ProcessConfig {
        &self.inner.config
    }

    /// Pids of the runner processes this instance started and that are still running.
    pub fn live_pids(&self) -> Vec<i32> {
        lock(&self.inner.live).values().map(|l| l.pid).collect()
    }

    /// Changes the recorded runners and writes the state file (see [`StateFile`]).
    async fn update(
        &self,
        f: impl FnOnce(&mut BTreeMap<String, Record>),
    ) -> Result<(), ProvisionError> {
        self.inner.records.update(|s| f(&mut s.runners)).await
    }

    /// Changes the recorded runners and writes the state file in the background, for a
    /// change whose loss in a crash costs nothing: a reservation (the daemon's start-up sweep
    /// finds a registration without a record by its name prefix) or a removed record (a
    /// record whose process is gone is released at the next start). A failed write is
    /// logged; the next write carries the change.
    fn update_later(&self, f: impl FnOnce(&mut BTreeMap<String, Record>)) {
        self.inner.records.change(|s| f(&mut s.runners));
        let this = self.clone();
        tokio::spawn(
            async move {
                if let Err(e) = this.inner.records.flush().await {
                    tracing::warn!(error = %e, "could not update the state file; the next write carries the change");
                }
            }
            .in_current_span(),
        );
    }

    fn runner_dir(&self, name: &str) -> PathBuf {
        self.inner.config.workdir.join(name)
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.inner.config.workdir.join(format!("{name}.log"))
    }

    /// Reaps `name` after its process ended: directory and log (off the async workers: a
    /// work directory can hold gigabytes after a job), record, exit event.
    async fn finished(&self, name: &str, status: ExitStatus) {
        self.remove_files(name).await;
        self.update_later(|r| {
            r.remove(name);
        });
        lock(&self.inner.live).remove(name);
        let _ = self
            .inner
            .exits_tx
            .send(ProvisionerEvent::new(name, RunnerEvent::Exited(status)));
    }

    /// Removes the runner's work directory and log file on a blocking thread.
    async fn remove_files(&self, name: &str) {
        let dir = self.runner_dir(name);
        let log = self.log_path(name);
        let runner = name.to_string();
        let removed = tokio::task::spawn_blocking(move || {
            if let Err(e) = std::fs::remove_dir_all(&dir)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(runner = %runner, dir = %dir.display(), error = %e, "could not remove the runner's work directory");
            }
            let _ = std::fs::remove_file(&log);
        })
        .await;
        if let Err(e) = removed {
            tracing::warn!(runner = %name, error = %e, "removing the runner's files failed");
        }
    }

    async fn stop_pid(&self, name: &str, pid: i32, done: Option<watch::Receiver<bool>>) {
        if pid <= 0 {
            tracing::warn!(runner = %name, pid, "refusing to signal an invalid pid");
            return;
        }
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

    /// The runner's environment: the allow-list and the configured names, from `lookup`.
    fn runner_env(
        &self,
        lookup: impl Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Vec<(String, std::ffi::OsString)> {
        let extra = self.inner.config.env.iter().map(String::as_str);
        let mut out: Vec<(String, std::ffi::OsString)> = Vec::new();
        for name in ALLOWED_ENV.into_iter().chain(extra) {
            if name == JIT_CONFIG_ENV || out.iter().any(|(n, _)| n == name) {
                continue;
            }
            if let Some(v) = lookup(name) {
                out.push((name.to_string(), v));
            }
        }
        out
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

use lock as lock_of;

/// Splits complete lines off `pending` and logs them (lossy UTF-8: a bad byte never stops
/// the forwarding). A line longer than [`MAX_LINE`] is logged in pieces, so `pending` never
/// holds more than that. With `flush`, a trailing partial line is logged too.
fn forward_lines(pending: &mut Vec<u8>, name: &str, flush: bool) {
    while let Some(i) = pending.iter().position(|b| *b == b'\n') {
        let line: Vec<u8> = pending.drain(..=i).collect();
        let text = String::from_utf8_lossy(&line[..line.len() - 1]);
        tracing::debug!(runner = %name, "{}", text.trim_end_matches('\r'));
    }
    while pending.len() >= MAX_LINE {
        let piece: Vec<u8> = pending.drain(..MAX_LINE).collect();
        tracing::debug!(runner = %name, "{}", String::from_utf8_lossy(&piece));
    }
    if flush && !pending.is_empty() {
        tracing::debug!(runner = %name, "{}", String::from_utf8_lossy(pending));
        pending.clear();
    }
}

/// Creates the runner's work directory (mode 0700; a stale one of the same name, not ours
/// any more, is removed first) and its log file (mode 0600, truncated); returns the log file
/// twice, for stdout and stderr.
fn prepare_runner_files(
    dir: &Path,
    log_path: &Path,
) -> Result<(std::fs::File, std::fs::File), ProvisionError> {
    let mkdir = || std::fs::DirBuilder::new().mode(0o700).create(dir);
    match mkdir() {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::remove_dir_all(dir).map_err(io("removing a stale runner directory", dir))?;
            mkdir()
        }
        other => other,
    }
    .map_err(io("creating the runner's work directory", dir))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(log_path)
        .map_err(io("creating the runner's log file", log_path))?;
    let log_err = log
        .try_clone()
        .map_err(io("creating the runner's log file", log_path))?;
    Ok((log, log_err))
}

/// Tails the runner's log file into the daemon's log until `exited` turns true (then reads
/// what is left and returns).
async fn tail_log(path: PathBuf, name: String, mut exited: watch::Receiver<bool>) {
    let mut offset = 0u64;
    let mut pending = Vec::new();
    let mut buf = vec![0u8; 8192];
    loop {
        let last = *exited.borrow();
        if let Ok(mut f) = std::fs::File::open(&path)
            && f.seek(SeekFrom::Start(offset)).is_ok()
        {
            while let Ok(n) = f.read(&mut buf) {
                if n == 0 {
                    break;
                }
                offset += n as u64;
                pending.extend_from_slice(&buf[..n]);
                forward_lines(&mut pending, &name, false);
            }
        }
        if last {
            forward_lines(&mut pending, &name, true);
            return;
        }
        tokio::select! {
            _ = exited.changed() => {}
            () = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

impl Provisioner for ProcessProvisioner {
    fn kind(&self) -> &'static str {
        BACKEND
    }

    async fn acquire(&self, cancel: &CancellationToken) -> Result<(), ProvisionError> {
        if lock(&self.inner.lock).is_some() {
            return Ok(());
        }
        let key = self.lock_key();
        let lock = HostLock::acquire(BACKEND, &self.inner.config.lock_file, &key, cancel).await?;
        self.owned(lock);
        Ok(())
    }

    async fn reserve(&self, name: &str) -> Result<(), ProvisionError> {
        // Not waited for: it is on the way to every start, and a sync to disk under load
        // takes long (a crash before it lands leaves a registration the sweep removes).
        self.update_later(|r| {
            r.insert(name.to_string(), Record::default());
        });
        Ok(())
    }

    async fn unreserve(&self, name: &str) -> Result<(), ProvisionError> {
        self.update_later(|r| {
            r.remove(name);
        });
        Ok(())
    }

    async fn create(&self, spec: RunnerSpec) -> Result<(), ProvisionError> {
        let name = spec.name.clone();
        if !valid_runner_name(&name, &self.inner.config.name_prefix) {
            return Err(ProvisionError::backend(
                BACKEND,
                format!("invalid runner name {name:?}"),
            ));
        }
        if lock(&self.inner.live).contains_key(&name) {
            return Err(ProvisionError::AlreadyExists(name));
        }
        let cfg = &self.inner.config;
        let dir = self.runner_dir(&name);
        let log_path = self.log_path(&name);
        // Directory and log file on a blocking thread: under a burst of starts and syncs,
        // file-system metadata operations wait on the journal for a long time.
        let (log, log_err) = {
            let (dir, log_path) = (dir.clone(), log_path.clone());
            tokio::task::spawn_blocking(move || prepare_runner_files(&dir, &log_path))
                .await
                .map_err(|e| {
                    ProvisionError::backend(BACKEND, format!("preparing the runner's files: {e}"))
                })??
        };
        let jit = spec.jit_config.expose_secret();
        let mut cmd = tokio::process::Command::new(&cfg.command);
        cmd.args(cfg.args.iter().map(|a| substitute(a, &name, jit)))
            .env_clear()
            .envs(self.runner_env(|n| std::env::var_os(n)))
            .env(JIT_CONFIG_ENV, jit)
            .env(VERSION_DEPRECATED_ENV, "1")
            .env("RUNNER_NAME", &name)
            .current_dir(&dir)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .kill_on_drop(false);
        let cleanup = |dir: &Path| {
            let _ = std::fs::remove_dir_all(dir);
            let _ = std::fs::remove_file(&log_path);
        };
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                cleanup(&dir);
                return Err(io("starting the runner command", Path::new(&cfg.command))(
                    e,
                ));
            }
        };
        let Some(pid) = child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .filter(|p| *p > 0)
        else {
            // Already reaped (cannot happen before `wait`) or out of range: never signal
            // group 0 (our own); kill the child directly.
            let _ = child.start_kill();
            let _ = child.wait().await;
            cleanup(&dir);
            return Err(ProvisionError::backend(
                BACKEND,
                format!("the runner process of {name} has no pid"),
            ));
        };
        let started = start_time(pid);
        if let Err(e) = self
            .update(|r| {
                r.insert(
                    name.clone(),
                    Record {
                        runner_id: spec.runner_id,
                        pid: Some(pid),
                        start_time: started,
                    },
                );
            })
            .await
        {
            // Unrecorded, a crash would leak it: do not run it.
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            let _ = child.wait().await;
            cleanup(&dir);
            return Err(e);
        }
        let (done_tx, done_rx) = watch::channel(false);
        lock(&self.inner.live).insert(name.clone(), Live { pid, done: done_rx });
        let (exited_tx, exited_rx) = watch::channel(false);
        let tail =
            tokio::spawn(tail_log(log_path.clone(), name.clone(), exited_rx).in_current_span());
        let this = self.clone();
        let task_name = name.clone();
        tokio::spawn(async move {
            let name = task_name;
            let status = child.wait().await;
            let exit = match &status {
                Ok(s) => {
                    use std::os::unix::process::ExitStatusExt;
                    ExitStatus {
                        code: s.code(),
                        reason: s.signal().map(|n| format!("killed by signal {n}")),
                    }
                }
                Err(e) => ExitStatus {
                    code: None,
                    reason: Some(format!("could not wait for it: {e}")),
                },
            };
            match &status {
                Ok(s) => tracing::debug!(runner = %name, pid, status = %s, "runner process exited"),
                Err(e) => {
                    tracing::warn!(runner = %name, pid, error = %e, "waiting for the runner process failed")
                }
            }
            // Whatever the runner left in its group goes too.
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            let _ = exited_tx.send(true);
            let _ = tail.await;
            this.finished(&name, exit).await;
            let _ = done_tx.send(true);
        }.in_current_span());
        tracing::debug!(runner = %name, pid, "runner process started");
        let _ = self
            .inner
            .exits_tx
            .send(ProvisionerEvent::new(name, RunnerEvent::Running));
        Ok(())
    }

    async fn stop(&self, name: &str) -> Result<(), ProvisionError> {
        let live = lock(&self.inner.live).get(name).cloned();
        if let Some(l) = live {
            self.stop_pid(name, l.pid, Some(l.done)).await;
            return Ok(());
        }
        let leftover = lock(&self.inner.leftovers).get(name).cloned();
        if let Some(Record {
            pid: Some(pid),
            start_time,
            ..
        }) = leftover
            && recorded_alive(pid, start_time)
        {
            self.stop_pid(name, pid, None).await;
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<OwnedRunner>, ProvisionError> {
        let mut out: BTreeMap<String, OwnedRunner> = lock(&self.inner.leftovers)
            .iter()
            .map(|(name, r)| {
                let alive = r.pid.is_some_and(|p| recorded_alive(p, r.start_time));
                let state = match (alive, r.pid) {
                    (true, _) => RunnerState::Running,
                    (false, None) => RunnerState::Failed {
                        reason: "reserved, never started".into(),
                    },
                    (false, Some(_)) => RunnerState::Exited(ExitStatus::default()),
                };
                let owned = OwnedRunner {
                    name: name.clone(),
                    runner_id: r.runner_id,
                    state,
                };
                (name.clone(), owned)
            })
            .collect();
        for name in lock(&self.inner.live).keys() {
            let runner_id = self.inner.records.read(|s| {
                s.runners
                    .get(name)
                    .map_or(RunnerId::default(), |r| r.runner_id)
            });
            out.insert(
                name.clone(),
                OwnedRunner {
                    name: name.clone(),
                    runner_id,
                    state: RunnerState::Running,
                },
            );
        }
        Ok(out.into_values().collect())
    }

    async fn adopt(&self, name: &str) -> Result<bool, ProvisionError> {
        let Some(record) = lock(&self.inner.leftovers).get(name).cloned() else {
            return Ok(false);
        };
        let Some(pid) = record.pid.filter(|p| recorded_alive(*p, record.start_time)) else {
            return Ok(false);
        };
        lock(&self.inner.leftovers).remove(name);
        let (done_tx, done_rx) = watch::channel(false);
        lock(&self.inner.live).insert(name.to_string(), Live { pid, done: done_rx });
        let this = self.clone();
        let name = name.to_string();
        let started = record.start_time;
        tokio::spawn(
            async move {
                while recorded_alive(pid, started) {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                // Not our child: its exit code is not ours to read.
                let status = ExitStatus {
                    code: None,
                    reason: Some("adopted process ended".into()),
                };
                this.finished(&name, status).await;
                let _ = done_tx.send(true);
            }
            .in_current_span(),
        );
        Ok(true)
    }

    async fn release(&self, name: &str) -> Result<(), ProvisionError> {
        if lock(&self.inner.live).contains_key(name) {
            // Started or adopted here: stopping it reaps it.
            return self.stop(name).await;
        }
        self.stop(name).await?;
        lock(&self.inner.leftovers).remove(name);
        self.remove_files(name).await;
        self.update(|r| {
            r.remove(name);
        })
        .await
    }

    async fn next_event(&self) -> Option<ProvisionerEvent> {
        self.inner.exits_rx.lock().await.recv().await
    }

    /// Writes whatever `update_later` left in memory: a background
    /// write still running is waited for, one not yet begun finds nothing left to write.
    async fn settle(&self) {
        if let Err(e) = self.inner.records.flush().await {
            tracing::warn!(error = %e, "could not update the state file");
        }
    }
}

#[cfg(test)]
mod tests {
    //! The process provisioner at its own boundary: small `/bin/sh` runners, a private
    //! temporary work directory per test, every wait under a deadline.

    use super::*;
    use actions_scaleset::EncodedJitConfig;
    use std::os::unix::process::CommandExt;

    const DEADLINE: Duration = Duration::from_secs(30);

    // The state file's bytes are those of the plain-integer ids before the typed ones.
    #[test]
    fn a_record_is_written_as_it_was_with_integer_ids() {
        let state = State {
            runners: BTreeMap::from([(
                "t-1".to_string(),
                Record {
                    runner_id: RunnerId::new(42),
                    pid: Some(7),
                    start_time: Some(9),
                },
            )]),
        };
        let text = serde_json::to_string_pretty(&state).expect("encodes");
        assert_eq!(
            text,
            "{\n  \"runners\": {\n    \"t-1\": {\n      \"runner_id\": 42,\n      \"pid\": 7,\n      \"start_time\": 9\n    }\n  }\n}"
        );
        let back: State = serde_json::from_str(&text).expect("decodes");
        assert_eq!(back.runners["t-1"].runner_id, RunnerId::new(42));
    }
    const PREFIX: &str = "t-";

    fn tempdir(tag: &str) -> PathBuf {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        std::env::temp_dir().join(format!(
            "scaleset-proc-{tag}-{}-{nanos}",
            std::process::id()
        ))
    }

    fn sh(dir: &Path, script: &str) -> ProcessConfig {
        let mut c = ProcessConfig::new(
            "/bin/sh",
            vec!["-c".into(), script.into()],
            dir.to_path_buf(),
        );
        c.name_prefix = PREFIX.into();
        c.stop_timeout = Duration::from_secs(5);
        c
    }

    fn spec(name: &str) -> RunnerSpec {
        RunnerSpec {
            name: name.into(),
            runner_id: RunnerId::new(1),
            jit_config: EncodedJitConfig::new("jit-secret-value"),
        }
    }

    /// The next exit, skipping `Running` events.
    async fn next_exit(p: &ProcessProvisioner) -> ExitStatus {
        loop {
            let e = tokio::time::timeout(DEADLINE, p.next_event())
                .await
                .expect("the runner exits in time")
                .expect("an event");
            match e.event {
                RunnerEvent::Running => continue,
                RunnerEvent::Exited(status) => return status,
                other => panic!("unexpected event {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_second_instance_cannot_take_the_workdir_and_a_standby_waits() {
        let dir = tempdir("lock");
        let first = ProcessProvisioner::new(sh(&dir, "true")).expect("first");
        let e = ProcessProvisioner::new(sh(&dir, "true")).expect_err("locked");
        assert!(matches!(e, ProvisionError::Locked(_)), "{e}");
        assert!(e.to_string().contains(&dir.display().to_string()), "{e}");
        // A standby waits; cancelling ends the wait.
        let cancel = CancellationToken::new();
        cancel.cancel();
        let e = ProcessProvisioner::open(sh(&dir, "true"), &cancel)
            .await
            .expect_err("cancelled");
        assert!(matches!(e, ProvisionError::Cancelled), "{e}");
        // Once the first is gone, the standby gets it.
        let standby = tokio::spawn({
            let dir = dir.clone();
            async move { ProcessProvisioner::open(sh(&dir, "true"), &CancellationToken::new()).await }
        });
        drop(first);
        tokio::time::timeout(DEADLINE, standby)
            .await
            .expect("in time")
            .expect("joined")
            .expect("the standby takes over");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The record of a runner that ended is removed from the state file in the background;
    /// `settle` (the engine's last step in its shutdown) returns only once that write is on
    /// disk, so the demo's removal of the work directory cannot race it.
    #[tokio::test]
    async fn settle_returns_once_the_ended_runners_record_is_off_the_disk() {
        let dir = tempdir("settle");
        let p = ProcessProvisioner::new(sh(&dir, "true")).expect("provisioner");
        p.create(spec("t-settle")).await.expect("create");
        let on_disk = || std::fs::read_to_string(dir.join(STATE_FILE)).expect("state file");
        assert!(
            on_disk().contains("t-settle"),
            "a started runner is recorded"
        );
        assert!(next_exit(&p).await.success());
        p.settle().await;
        assert!(!on_disk().contains("t-settle"), "{}", on_disk());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn runners_get_only_allowed_and_configured_environment() {
        let dir = tempdir("env");
        // Two variables of this process that are not on the allow-list.
        let mut others = std::env::vars().filter(|(k, v)| {
            !ALLOWED_ENV.contains(&k.as_str()) && !v.is_empty() && !v.contains('\n')
        });
        let (hidden, _) = others
            .next()
            .expect("the test process has some environment");
        let (passed, passed_value) = others.next().expect("a second variable");
        let mut c = sh(&dir, "env > ../$RUNNER_NAME.env");
        c.env = vec![passed.clone()];
        let p = ProcessProvisioner::new(c).expect("provisioner");
        p.create(spec("t-env")).await.expect("create");
        assert!(next_exit(&p).await.success());
        let env = std::fs::read_to_string(dir.join("t-env.env")).expect("env dump");
        assert!(
            !env.lines().any(|l| l.starts_with(&format!("{hidden}="))),
            "{hidden} leaked"
        );
        assert!(
            env.contains(&format!("{passed}={passed_value}")),
            "{passed} passed"
        );
        assert!(env.contains("ACTIONS_RUNNER_INPUT_JITCONFIG=jit-secret-value"));
        assert!(env.lines().any(|l| l.starts_with("PATH=")), "PATH kept");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn runner_output_goes_to_a_private_file_not_a_pipe() {
        let dir = tempdir("log");
        let script = "fd1=$(readlink /proc/$$/fd/1); echo \"$fd1\" > ../$RUNNER_NAME.fd1; \\
                      stat -c %a . > ../$RUNNER_NAME.mode; printf 'a\\377b\\nafter\\n'";
        let p = ProcessProvisioner::new(sh(&dir, script)).expect("provisioner");
        p.create(spec("t-log")).await.expect("create");
        assert!(next_exit(&p).await.success());
        let fd1 = std::fs::read_to_string(dir.join("t-log.fd1")).expect("fd1");
        assert_eq!(fd1.trim(), dir.join("t-log.log").display().to_string());
        let mode = std::fs::read_to_string(dir.join("t-log.mode")).expect("mode");
        assert_eq!(mode.trim(), "700");
        // Reaped: the runner's directory and log are gone.
        assert!(!dir.join("t-log").exists() && !dir.join("t-log.log").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn non_utf8_output_does_not_stop_forwarding() {
        let mut pending = b"a\xffb\nafter\npartial".to_vec();
        forward_lines(&mut pending, "t-x", false);
        assert_eq!(pending, b"partial");
        forward_lines(&mut pending, "t-x", true);
        assert!(pending.is_empty());
    }

    fn write_state(dir: &Path, json: serde_json::Value) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .expect("dir");
        std::fs::write(dir.join(STATE_FILE), json.to_string()).expect("state");
    }

    #[tokio::test]
    async fn state_file_names_are_validated() {
        let dir = tempdir("names");
        write_state(
            &dir,
            serde_json::json!({"runners": {
                "../evil": {}, "": {}, "other-1": {}, "t-": {}, "t-..": {}, "t-ok": {"runner_id": 3}
            }}),
        );
        let p = ProcessProvisioner::new(sh(&dir, "true")).expect("provisioner");
        let names: Vec<String> = p
            .list()
            .await
            .expect("list")
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(names, vec!["t-ok".to_string()]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_shared_or_foreign_workdir_is_refused() {
        let dir = tempdir("perm");
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let e = ProcessProvisioner::new(sh(&dir, "true")).expect_err("unsafe");
        assert!(matches!(e, ProvisionError::Backend { .. }), "{e}");
        assert!(e.to_string().contains("writable by group or others"), "{e}");
        assert!(e.to_string().contains(&dir.display().to_string()), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
        // A fresh one is created private.
        ProcessProvisioner::new(sh(&dir, "true")).expect("created");
        let mode = std::fs::metadata(&dir).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A process in its own group, not a child of any provisioner.
    fn stranger() -> std::process::Child {
        std::process::Command::new("/bin/sh")
            .args(["-c", "sleep 60"])
            .process_group(0)
            .spawn()
            .expect("spawn")
    }

    #[tokio::test]
    async fn a_reused_pid_is_never_signalled() {
        let dir = tempdir("reuse");
        let mut child = stranger();
        let pid = i32::try_from(child.id()).expect("pid");
        let real = start_time(pid).expect("start time");
        // Reap it as soon as it dies (a zombie would still look alive).
        let (tx, exited) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        write_state(
            &dir,
            serde_json::json!({"runners": {
                "t-reused": {"runner_id": 1, "pid": pid, "start_time": real + 1},
                "t-unknown": {"runner_id": 2, "pid": pid},
            }}),
        );
        let p = ProcessProvisioner::new(sh(&dir, "true")).expect("provisioner");
        let listed = p.list().await.expect("list");
        assert!(listed.iter().all(|r| !r.state.is_alive()), "{listed:?}");
        p.stop("t-reused").await.expect("stop");
        p.stop("t-unknown").await.expect("stop");
        assert!(!p.adopt("t-reused").await.expect("adopt"));
        assert!(exited.try_recv().is_err(), "the stranger lives");
        drop(p);
        // The same record with the right start time is ours.
        write_state(
            &dir,
            serde_json::json!({"runners": {"t-mine": {"runner_id": 1, "pid": pid, "start_time": real}}}),
        );
        let p = ProcessProvisioner::new(sh(&dir, "true")).expect("provisioner");
        assert!(p.list().await.expect("list")[0].state.is_alive());
        p.stop("t-mine").await.expect("stop");
        let status = exited
            .recv_timeout(DEADLINE)
            .expect("stopped in time")
            .expect("wait");
        assert!(!status.success());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_group_whose_leader_exited_is_still_alive() {
        let mut leader = std::process::Command::new("/bin/sh")
            .args(["-c", "sleep 60 >/dev/null 2>&1 & exit 0"])
            .process_group(0)
            .spawn()
            .expect("spawn");
        let pgid = i32::try_from(leader.id()).expect("pid");
        assert!(leader.wait().expect("wait").success());
        assert!(
            group_alive(pgid),
            "the background sleep keeps the group alive"
        );
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        assert!(!group_alive(0), "group 0 is never ours");
    }

    #[tokio::test]
    async fn create_fails_and_stops_the_child_when_the_state_cannot_be_written() {
        let dir = tempdir("state");
        let p = ProcessProvisioner::new(sh(&dir, "sleep 60")).expect("provisioner");
        // The state file's place is taken by a directory: the rename fails.
        std::fs::create_dir_all(dir.join(STATE_FILE).join("x")).expect("blocker");
        let e = p.create(spec("t-state")).await.expect_err("unrecorded");
        assert!(e.to_string().contains("state file"), "{e}");
        assert!(p.live_pids().is_empty());
        assert!(!dir.join("t-state").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
