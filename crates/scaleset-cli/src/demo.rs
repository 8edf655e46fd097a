//! `scaleset demo`: the whole system on one machine, no account and no network needed.
//!
//! One process runs the scale set simulator on 127.0.0.1, the autoscaler daemon (exactly as
//! `scaleset run` does, with the process provisioner starting `scaleset sim-runner` per
//! runner) and a workload generator that enqueues jobs at a steady arrival rate. It shows the
//! progress while the jobs flow, then a summary taken from the simulator's job records: how
//! many jobs succeeded, how long they waited from queued to started (p50, p95), the peak
//! number of runners and the total time.
//!
//! Why one loop and no tasks: the workload, the progress display and the peak sampling all
//! read the simulator, and [`Simulator::wait_until`] wakes on every state change. Sampling
//! inside its predicate sees every change, so the peak is exact, not a periodic guess.

use std::cell::Cell;
use std::io::{IsTerminal, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use actions_scaleset::{CancellationToken, Client, Credentials};
use clap::Args;
use scaleset_autoscaler::config::{
    Config, DockerSettings, ProcessSettings, ProvisionerConfig, PullPolicy, ScaleSetConfig,
    ShutdownPolicy,
};
use scaleset_autoscaler::provisioner::docker;
use scaleset_autoscaler::provisioner::docker_image::{self, LocalImage};
use scaleset_sim::{AssignmentMode, EnqueueJobs, SimConfig, SimState, Simulator};
use serde::Serialize;
use tokio::time::Instant;

use crate::error::CliError;
use crate::globals::{LogArgs, LogLevel, parse_secs, system_info};
use crate::output::print_json;

/// The scale set the demo creates (and the label its jobs ask for).
const SCALE_SET: &str = "demo-runners";
/// The demo's first line: what it shows, in one sentence.
const INTRO: &str = "scaleset demo: a runner scale set is a named pool of self-hosted \
    runners that GitHub sends `runs-on: <name>` jobs to, grown and shrunk by an autoscaler as \
    jobs arrive (here demo-runners, against a local simulator of GitHub).";
/// The demo's last line (after the summary): what to try next.
const NEXT: &str = "Next: try `scaleset demo --jobs 200 --arrival-rate 20 --max-runners 30`, \
    or serve GitHub's jobs with `scaleset run --help`.";
/// The name of the runner image `--provisioner docker` builds (tagged with the version).
const DEMO_IMAGE: &str = "scaleset-demo-runner";
/// The image label fingerprinting the program it holds (path, size, modification time).
const IMAGE_SOURCE_LABEL: &str = "dev.scaleset.demo.source";
/// Most jobs one demo may enqueue (the progress sampling copies the job list per change).
const MAX_JOBS: u32 = 1_000;
/// Most runners: each is a process on this machine.
const MAX_RUNNERS: u32 = 100;
/// Slowest and fastest arrival rates, in jobs per second.
const MIN_RATE: f64 = 0.01;
const MAX_RATE: f64 = 10_000.0;
/// Longest job, in seconds.
const MAX_JOB_SECS: u64 = 3_600;
/// How often the display refreshes (and the longest the loop sleeps).
const TICK: Duration = Duration::from_millis(100);
/// Plain (non-terminal) progress lines are at most this frequent.
const PLAIN_INTERVAL: Duration = Duration::from_secs(1);
/// How long the autoscaler may take to open its session before the demo gives up.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Upper bound of the drain after the workload ends or an interrupt.
const MAX_DRAIN_SECS: u64 = 60;
/// With every job enqueued, the demo gives up when nothing changed for this long beyond one
/// job's duration (runners that cannot start, for instance).
const STALL_MARGIN: Duration = Duration::from_secs(60);

/// Watches for a workload that stopped moving.
struct StallWatch {
    last: Option<Progress>,
    since: Instant,
    limit: Duration,
}

impl StallWatch {
    fn new(job_duration: Duration, now: Instant) -> StallWatch {
        StallWatch {
            last: None,
            since: now,
            limit: job_duration.saturating_add(STALL_MARGIN),
        }
    }

    /// Records `p`; true when every job was sent and nothing changed for longer than the
    /// limit.
    fn stalled(&mut self, p: Progress, all_sent: bool, now: Instant) -> bool {
        if self.last != Some(p) {
            self.last = Some(p);
            self.since = now;
            return false;
        }
        all_sent && now.saturating_duration_since(self.since) > self.limit
    }
}

/// Options of `demo`.
#[derive(Args, Debug)]
#[command(after_help = "\
Starts the scale set simulator on 127.0.0.1, creates the scale set
demo-runners, runs the autoscaler with `scaleset sim-runner` as the runner
command (each runner a child process in a temporary work directory), and
enqueues --jobs jobs at --arrival-rate jobs per second. Needs no network and
no credentials; the defaults take about 15 seconds.

Progress goes to stderr: one updating line on a terminal, otherwise a plain
line at most once a second. The summary goes to stdout (text, or one JSON
object with --json): jobs done, failed and canceled, the wait from queued to
started (p50, p95, max), the peak number of runners and the total time.

With --provisioner docker each runner is a container instead (--network host,
so it reaches the simulator on 127.0.0.1) of the local image
scaleset-demo-runner:VERSION, built FROM scratch out of this program, its
shared libraries and the CA bundle (reused while this program is unchanged).
It needs a Docker engine: DOCKER_HOST, else the socket /var/run/docker.sock;
without one the demo stops at once with an error saying so.

SIGINT/SIGTERM (Ctrl-C) stops the workload; running jobs may finish (drain,
at most the job duration plus 10 s, capped at 60 s), then the runners, the
autoscaler and the simulator stop, the work directory is removed and the
summary is printed. A second Ctrl-C exits at once.

Exit status: 0 when every job succeeded, 1 when a job failed or was canceled
(or the autoscaler failed, or nothing moved for a job's duration plus 60 s),
2 for invalid options, 130 after an interrupt.

Examples:
  scaleset demo
  scaleset demo --jobs 100 --arrival-rate 10 --job-duration 5 \\
      --max-runners 20 --min-runners 0
  scaleset demo --jobs 12 --job-duration 0.5 --json | jq .waitP95Secs

  # runners as containers on a Docker engine
  scaleset demo --provisioner docker

  # also show the autoscaler's logs
  scaleset demo --log-level info")]
pub(crate) struct DemoArgs {
    /// How many jobs to run (1 to 1000).
    #[arg(long, default_value_t = 40, value_name = "N")]
    jobs: u32,
    /// How long each job runs, in seconds (at most 3600).
    #[arg(
        long,
        default_value = "3",
        value_parser = parse_secs,
        value_name = "SECS",
        allow_negative_numbers = true
    )]
    job_duration: Duration,
    /// Jobs enqueued per second, a steady rate (0.01 to 10000).
    #[arg(
        long,
        default_value_t = 4.0,
        value_name = "JOBS_PER_SEC",
        allow_negative_numbers = true
    )]
    arrival_rate: f64,
    /// Most runners at once (1 to 100).
    #[arg(long, default_value_t = 10, value_name = "N")]
    max_runners: u32,
    /// Runners kept even without demand.
    #[arg(long, default_value_t = 1, value_name = "N")]
    min_runners: u32,
    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
    /// What runs the runners: local processes, or containers on a Docker engine (reached
    /// through DOCKER_HOST or the default socket) from a local image holding this program.
    #[arg(long, default_value = "process", value_parser = ["process", "docker"])]
    provisioner: String,
}

impl DemoArgs {
    /// Checks the options before anything starts; errors name the flag (exit 2).
    fn validate(&self) -> Result<(), CliError> {
        let bad = |msg: String| Err(CliError::config("InvalidArgument", format!("demo: {msg}")));
        if self.jobs == 0 || self.jobs > MAX_JOBS {
            return bad(format!(
                "--jobs must be between 1 and {MAX_JOBS} (got {})",
                self.jobs
            ));
        }
        if !(MIN_RATE..=MAX_RATE).contains(&self.arrival_rate) {
            return bad(format!(
                "--arrival-rate must be a positive number of jobs per second, from {MIN_RATE} \
                 to {MAX_RATE} (got {})",
                self.arrival_rate
            ));
        }
        if self.job_duration > Duration::from_secs(MAX_JOB_SECS) {
            return bad(format!(
                "--job-duration must be at most {MAX_JOB_SECS} seconds (got {})",
                self.job_duration.as_secs_f64()
            ));
        }
        if self.max_runners == 0 || self.max_runners > MAX_RUNNERS {
            return bad(format!(
                "--max-runners must be between 1 and {MAX_RUNNERS} (got {})",
                self.max_runners
            ));
        }
        if self.min_runners > self.max_runners {
            return bad(format!(
                "--min-runners ({}) must not exceed --max-runners ({})",
                self.min_runners, self.max_runners
            ));
        }
        Ok(())
    }

    /// How long the drain may wait for busy runners.
    fn drain_timeout_secs(&self) -> u64 {
        self.job_duration
            .as_secs()
            .saturating_add(10)
            .min(MAX_DRAIN_SECS)
    }

    /// How many jobs should have been enqueued `elapsed` after the workload started: the
    /// first at once, then one every `1 / rate` seconds.
    fn jobs_due(&self, elapsed: Duration) -> u32 {
        let due = (elapsed.as_secs_f64() * self.arrival_rate).floor() + 1.0;
        if due >= f64::from(self.jobs) {
            self.jobs
        } else {
            // 0 < due < jobs <= MAX_JOBS: the conversion is exact.
            due as u32
        }
    }

    /// When job number `n` (0-based) is due, relative to the workload start.
    fn due_at(&self, n: u32) -> Duration {
        // Validated: n <= 1000 and rate >= 0.01, so this is at most 100,000 s.
        Duration::try_from_secs_f64(f64::from(n) / self.arrival_rate)
            .unwrap_or(Duration::from_secs(100_000))
    }
}

/// A temporary work directory, removed when dropped (and explicitly by [`WorkDir::remove`]).
struct WorkDir {
    path: PathBuf,
    removed: bool,
}

impl WorkDir {
    fn create() -> Result<WorkDir, CliError> {
        let path = std::env::temp_dir().join(format!(
            "scaleset-demo-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&path).map_err(|e| {
            CliError::other(
                "Demo",
                format!(
                    "demo: cannot create the work directory {}: {e}",
                    path.display()
                ),
            )
        })?;
        Ok(WorkDir {
            path,
            removed: false,
        })
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn remove(&mut self) {
        self.removed = true;
        if let Err(e) = std::fs::remove_dir_all(&self.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %self.path.display(), error = %e, "could not remove the demo's work directory");
        }
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if !self.removed {
            self.remove();
        }
    }
}

/// What the simulator says about the demo's jobs and runners at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Progress {
    enqueued: usize,
    queued: usize,
    running: usize,
    done: usize,
    not_succeeded: usize,
    idle: usize,
    busy: usize,
}

impl Progress {
    fn of(state: &SimState) -> Progress {
        let mut p = Progress::default();
        for j in &state.jobs {
            p.enqueued += 1;
            match j.status.as_str() {
                "running" => p.running += 1,
                "completed" => {
                    p.done += 1;
                    if j.result.as_deref() != Some("succeeded") {
                        p.not_succeeded += 1;
                    }
                }
                // queued, available, assigned: waiting for a runner.
                _ => p.queued += 1,
            }
        }
        for r in &state.runners {
            if r.job_request_id.is_some() {
                p.busy += 1;
            } else {
                p.idle += 1;
            }
        }
        p
    }

    fn line(&self, total: u32, elapsed: Duration) -> String {
        let failed = if self.not_succeeded > 0 {
            format!(" ({} failed or canceled)", self.not_succeeded)
        } else {
            String::new()
        };
        format!(
            "{:6.1}s  jobs: {} queued, {} running, {}/{total} done{failed}  runners: {} busy, {} idle",
            elapsed.as_secs_f64(),
            self.queued,
            self.running,
            self.done,
            self.busy,
            self.idle,
        )
    }
}

/// Writes the progress to stderr: one line rewritten in place on a terminal, otherwise a
/// plain line when something changed, at most once per [`PLAIN_INTERVAL`].
struct Reporter {
    live: bool,
    total: u32,
    last: Option<(Progress, Instant)>,
    live_line_open: bool,
}

impl Reporter {
    fn new(live: bool, total: u32) -> Reporter {
        Reporter {
            live,
            total,
            last: None,
            live_line_open: false,
        }
    }

    /// A one-off message on its own line.
    fn note(&mut self, text: &str) {
        self.close_live_line();
        write_stderr(&format!("{text}\n"));
    }

    fn update(&mut self, p: Progress, elapsed: Duration) {
        let now = Instant::now();
        if self.live {
            write_stderr(&format!("\r\x1b[2K{}", p.line(self.total, elapsed)));
            self.live_line_open = true;
            self.last = Some((p, now));
            return;
        }
        let due = match self.last {
            None => true,
            Some((last, at)) => last != p && now.duration_since(at) >= PLAIN_INTERVAL,
        };
        if due {
            write_stderr(&format!("{}\n", p.line(self.total, elapsed)));
            self.last = Some((p, now));
        }
    }

    /// The final state, printed whatever the rate limit says (unless already shown).
    fn finish(&mut self, p: Progress, elapsed: Duration) {
        if self.live {
            self.update(p, elapsed);
            self.close_live_line();
        } else if self.last.map(|(last, _)| last) != Some(p) {
            write_stderr(&format!("{}\n", p.line(self.total, elapsed)));
            self.last = Some((p, Instant::now()));
        }
    }

    fn close_live_line(&mut self) {
        if self.live_line_open {
            write_stderr("\n");
            self.live_line_open = false;
        }
    }
}

fn write_stderr(text: &str) {
    let mut err = std::io::stderr().lock();
    // Progress is best effort: a closed stderr must not stop the demo.
    let _ = err.write_all(text.as_bytes()).and_then(|()| err.flush());
}

/// The demo's result, printed on stdout.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Summary {
    scale_set: &'static str,
    jobs_total: u32,
    jobs_enqueued: usize,
    /// Completed, whatever the result.
    jobs_done: usize,
    jobs_succeeded: usize,
    jobs_failed: usize,
    jobs_canceled: usize,
    /// Queued to started, over the jobs that started.
    wait_p50_secs: Option<f64>,
    wait_p95_secs: Option<f64>,
    wait_max_secs: Option<f64>,
    peak_runners: usize,
    min_runners: u32,
    max_runners: u32,
    /// First enqueue to the end of the drain.
    workload_secs: f64,
    /// The whole command, start-up and shutdown included.
    total_secs: f64,
    interrupted: bool,
}

impl Summary {
    fn all_succeeded(&self) -> bool {
        !self.interrupted && self.jobs_succeeded == self.jobs_total as usize
    }

    fn text(&self) -> String {
        let secs = |s: Option<f64>| s.map_or_else(|| "-".to_string(), |s| format!("{s:.2} s"));
        let mut out = format!(
            "scaleset demo: {}/{} jobs done{}\n",
            self.jobs_done,
            self.jobs_total,
            if self.interrupted {
                " (interrupted)"
            } else {
                ""
            }
        );
        out.push_str(&format!(
            "  jobs      {} succeeded, {} failed, {} canceled, {} never finished\n",
            self.jobs_succeeded,
            self.jobs_failed,
            self.jobs_canceled,
            self.jobs_total as usize - self.jobs_done.min(self.jobs_total as usize),
        ));
        out.push_str(&format!(
            "  wait      p50 {}, p95 {}, max {} (queued to started)\n",
            secs(self.wait_p50_secs),
            secs(self.wait_p95_secs),
            secs(self.wait_max_secs),
        ));
        out.push_str(&format!(
            "  runners   peak {} (min {}, max {})\n",
            self.peak_runners, self.min_runners, self.max_runners
        ));
        out.push_str(&format!(
            "  time      {:.1} s of workload, {:.1} s in total\n",
            self.workload_secs, self.total_secs
        ));
        out
    }
}

/// The `p`-th percentile (nearest rank) of sorted values.
fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn round_ms(secs: f64) -> f64 {
    (secs * 1000.0).round() / 1000.0
}

fn summarize(
    args: &DemoArgs,
    state: &SimState,
    peak_runners: usize,
    workload: Duration,
    total: Duration,
    interrupted: bool,
) -> Summary {
    let mut waits: Vec<f64> = state
        .jobs
        .iter()
        .filter_map(|j| {
            j.started_at
                .map(|s| s.duration_since(j.queued_at).as_secs_f64().max(0.0))
        })
        .collect();
    waits.sort_by(f64::total_cmp);
    let done: Vec<&str> = state
        .jobs
        .iter()
        .filter(|j| j.status == "completed")
        .map(|j| j.result.as_deref().unwrap_or(""))
        .collect();
    let succeeded = done.iter().filter(|r| **r == "succeeded").count();
    let canceled = done.iter().filter(|r| **r == "canceled").count();
    Summary {
        scale_set: SCALE_SET,
        jobs_total: args.jobs,
        jobs_enqueued: state.jobs.len(),
        jobs_done: done.len(),
        jobs_succeeded: succeeded,
        jobs_failed: done.len() - succeeded - canceled,
        jobs_canceled: canceled,
        wait_p50_secs: percentile(&waits, 50.0).map(round_ms),
        wait_p95_secs: percentile(&waits, 95.0).map(round_ms),
        wait_max_secs: waits.last().copied().map(round_ms),
        peak_runners,
        min_runners: args.min_runners,
        max_runners: args.max_runners,
        workload_secs: round_ms(workload.as_secs_f64()),
        total_secs: round_ms(total.as_secs_f64()),
        interrupted,
    }
}

/// The autoscaler configuration: what `scaleset run --name demo-runners
/// --runner-command <this binary> --runner-arg sim-runner --shutdown drain` builds.
/// With `image` (the Docker provisioner), the runners are containers of that image running
/// this binary at the same path.
fn autoscaler_config(
    args: &DemoArgs,
    url: String,
    workdir: &Path,
    image: Option<&str>,
) -> Result<Config, CliError> {
    let exe = current_exe()?;
    let mut s = ScaleSetConfig::new(SCALE_SET);
    s.min_runners = args.min_runners;
    s.max_runners = args.max_runners;
    s.idle_delay_secs = 5;
    let command = exe.to_string_lossy().into_owned();
    s.provisioner = match image {
        None => ProvisionerConfig::Process(ProcessSettings {
            command: Some(command),
            args: vec!["sim-runner".to_string()],
            workdir: Some(workdir.join("runners")),
            env: Vec::new(),
        }),
        Some(image) => {
            let mut d = DockerSettings::new(image);
            d.command = Some(command);
            d.args = vec!["sim-runner".to_string()];
            d.pull = PullPolicy::Never;
            d.network = Some("host".to_string());
            d.stop_timeout_secs = 5;
            ProvisionerConfig::Docker(d)
        }
    };
    s.shutdown = ShutdownPolicy::Drain;
    s.drain_timeout_secs = args.drain_timeout_secs();
    let mut config = Config::default();
    config.connection.url = Some(url);
    config.scale_sets.push(s);
    config
        .validate()
        .map_err(|e| CliError::config("InvalidConfig", format!("demo: {e}")))?;
    Ok(config)
}

/// This program's path (what the runners run).
fn current_exe() -> Result<PathBuf, CliError> {
    std::env::current_exe().map_err(|e| {
        CliError::other(
            "Demo",
            format!("demo: cannot find this program's path to start runners with: {e}"),
        )
    })
}

/// The tag of the demo's runner image.
fn demo_image_tag() -> String {
    format!("{DEMO_IMAGE}:{}", env!("CARGO_PKG_VERSION"))
}

/// Reaches the Docker engine and builds (or reuses) the runner image: this program, its
/// libraries and the CA bundle, `FROM scratch`. Returns the image's tag.
async fn prepare_docker(reporter: &mut Reporter) -> Result<String, CliError> {
    let docker = docker::connect_engine().await.map_err(|e| {
        CliError::other(
            "DockerUnavailable",
            format!(
                "demo: --provisioner docker needs a Docker engine: {e}. Start one (Debian: \
                 apt-get install docker.io, then start dockerd, e.g. systemctl start docker) or \
                 point DOCKER_HOST at one (unix:///path/docker.sock, tcp://HOST:2375); or run the \
                 demo with --provisioner process"
            ),
        )
    })?;
    let exe = current_exe()?;
    let meta = std::fs::metadata(&exe)
        .map_err(|e| CliError::other("Demo", format!("demo: reading {}: {e}", exe.display())))?;
    // Rebuilt when this program changes (same version, new build).
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let mut image = LocalImage::new(demo_image_tag());
    image.executables.push(exe.clone());
    let ca = Path::new(docker_image::CA_BUNDLE);
    if ca.exists() {
        image.files.push(ca.to_path_buf());
    }
    image.labels.insert(
        IMAGE_SOURCE_LABEL.to_string(),
        format!("{}:{}:{mtime}", exe.display(), meta.len()),
    );
    reporter.note(&format!(
        "scaleset demo: preparing the runner image {} (FROM scratch: {} and its libraries)",
        image.tag,
        exe.display()
    ));
    let ensured = docker_image::ensure_local_image(&docker, &image)
        .await
        .map_err(|e| CliError::other("Docker", format!("demo: {e}")))?;
    tracing::info!(image = %image.tag, ?ensured, "the demo's runner image is ready");
    Ok(image.tag)
}

fn daemon_error(e: scaleset_autoscaler::Error) -> CliError {
    match e {
        scaleset_autoscaler::Error::Api(e) => CliError::api("demo: autoscaler", e),
        e => CliError::other("Run", format!("demo: the autoscaler failed: {e}")),
    }
}

/// Why the workload loop ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    AllDone,
    Interrupted,
    AutoscalerStopped,
    Stalled,
}

/// Runs `demo`.
pub(crate) async fn run(log: &LogArgs, args: DemoArgs) -> Result<(), CliError> {
    args.validate()?;
    write_stderr(&format!("{INTRO}\n"));
    let started = Instant::now();
    let shutdown = crate::signal::shutdown_token()?;
    let mut workdir = WorkDir::create()?;
    let sim = Simulator::start(SimConfig {
        mode: AssignmentMode::Hosted,
        long_poll: Duration::from_secs(5),
        bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        ..SimConfig::default()
    })
    .await
    .map_err(|e| CliError::other("Sim", format!("demo: cannot start the simulator: {e}")))?;
    let outcome = prepare_and_drive(log, &args, &sim, &workdir, &shutdown, started).await;
    sim.shutdown().await;
    workdir.remove();
    let summary = outcome?;
    if args.json {
        print_json(&summary)?;
        // stdout stays one JSON document; the hint goes with the progress.
        write_stderr(&format!("{NEXT}\n"));
    } else {
        let mut out = std::io::stdout().lock();
        out.write_all(format!("{}{NEXT}\n", summary.text()).as_bytes())
            .and_then(|()| out.flush())
            .map_err(|e| CliError::other("Output", format!("cannot write to stdout: {e}")))?;
    }
    if summary.interrupted {
        return Err(CliError::interrupted(format!(
            "demo: interrupted after {} of {} jobs",
            summary.jobs_done, summary.jobs_total
        )));
    }
    if !summary.all_succeeded() {
        return Err(CliError::other(
            "DemoFailed",
            format!(
                "demo: {} of {} jobs did not succeed",
                summary.jobs_total as usize
                    - summary.jobs_succeeded.min(summary.jobs_total as usize),
                summary.jobs_total
            ),
        ));
    }
    Ok(())
}

/// Prepares the runners (the Docker image, when asked for), the autoscaler configuration and
/// its client, then runs the autoscaler and the workload with [`drive`].
async fn prepare_and_drive(
    log: &LogArgs,
    args: &DemoArgs,
    sim: &Simulator,
    workdir: &WorkDir,
    shutdown: &CancellationToken,
    started: Instant,
) -> Result<Summary, CliError> {
    let live = std::io::stderr().is_terminal() && log.level_or(LogLevel::Warn) <= LogLevel::Warn;
    let mut reporter = Reporter::new(live, args.jobs);
    let image = match args.provisioner.as_str() {
        "docker" => Some(prepare_docker(&mut reporter).await?),
        _ => None,
    };
    let config = autoscaler_config(args, sim.config_url(), workdir.path(), image.as_deref())?;
    let client = simulator_client(sim)?;
    reporter.note(&format!(
        "scaleset demo: simulator at {}, scale set {SCALE_SET}, {} jobs of {:.1} s at {} per second, {} to {} runners{}",
        sim.base_url(),
        args.jobs,
        args.job_duration.as_secs_f64(),
        args.arrival_rate,
        args.min_runners,
        args.max_runners,
        image
            .as_deref()
            .map(|i| format!(" (containers of {i})"))
            .unwrap_or_default(),
    ));
    let enqueue = async |count: u32| {
        sim.enqueue_jobs(EnqueueJobs {
            labels: vec![SCALE_SET.to_string()],
            count,
            duration: args.job_duration,
            result: "succeeded".to_string(),
        })
        .await
        .map(drop)
        .map_err(|e| CliError::other("Sim", format!("demo: cannot enqueue jobs: {e}")))
    };
    drive(
        args,
        sim,
        config,
        client,
        &mut reporter,
        shutdown,
        started,
        enqueue,
    )
    .await
}

/// A client of the simulator, with its own token.
fn simulator_client(sim: &Simulator) -> Result<Client, CliError> {
    let credentials = Credentials::token(sim.token())
        .map_err(|e| CliError::api("demo: simulator credentials", e))?;
    Client::builder(sim.config_url(), credentials)
        .system_info(system_info())
        .build()
        .map_err(|e| CliError::api("demo: client", e))
}

/// How the workload ended, and what the messages about it need.
struct Workload {
    end: End,
    start: Instant,
    stall_limit: Duration,
}

/// Runs the autoscaler and the workload (jobs go in through `enqueue`) against a started
/// simulator. Every way out, a failed enqueue included, stops the autoscaler (and so its
/// runners) before returning: the workload's result is held until the autoscaler is
/// stopped.
#[allow(clippy::too_many_arguments)]
async fn drive(
    args: &DemoArgs,
    sim: &Simulator,
    config: Config,
    client: Client,
    reporter: &mut Reporter,
    shutdown: &CancellationToken,
    started: Instant,
    enqueue: impl AsyncFn(u32) -> Result<(), CliError>,
) -> Result<Summary, CliError> {
    // The autoscaler stops on its own token: the demo decides when (after the drain of the
    // workload, or on an interrupt).
    let stop = CancellationToken::new();
    let mut daemon = tokio::spawn(scaleset_autoscaler::daemon::run(
        config,
        move |_url: &str| Ok(client.clone()),
        stop.clone(),
    ));
    let peak = Cell::new(0usize);
    let sample = |s: &SimState| peak.set(peak.get().max(s.runners.len()));

    let workload = workload(args, sim, &daemon, reporter, shutdown, &sample, enqueue).await;
    let (end, workload_start) = match &workload {
        Ok(w) => (Some(w.end), w.start),
        Err(_) => (None, Instant::now()),
    };
    match &workload {
        Ok(Workload {
            end: End::AllDone,
            start,
            ..
        }) => reporter.finish(Progress::of(&sim.state()), start.elapsed()),
        Ok(Workload {
            end: End::Interrupted,
            ..
        }) => reporter.note(&format!(
            "scaleset demo: interrupted; no more jobs; running jobs may finish (at most {} s), then everything stops",
            args.drain_timeout_secs()
        )),
        Ok(Workload {
            end: End::Stalled,
            stall_limit,
            ..
        }) => reporter.note(&format!(
            "scaleset demo: nothing moved for {} s; stopping (run with --log-level info to see why)",
            stall_limit.as_secs()
        )),
        Ok(Workload {
            end: End::AutoscalerStopped,
            ..
        }) => {}
        Err(_) => reporter.note("scaleset demo: stopping the autoscaler and its runners"),
    }

    // Drain: show the running jobs finishing while the autoscaler stops.
    stop.cancel();
    let daemon_result = loop {
        if daemon.is_finished() {
            break stop_daemon(&mut daemon, args).await;
        }
        let (_, snap) = sim
            .wait_until(TICK, |s| {
                sample(s);
                daemon.is_finished()
            })
            .await;
        if end == Some(End::Interrupted) {
            reporter.update(Progress::of(&snap), workload_start.elapsed());
        }
    };
    let state = sim.state();
    sample(&state);
    if end == Some(End::Interrupted) {
        reporter.finish(Progress::of(&state), workload_start.elapsed());
    }
    let workload = match workload {
        Ok(w) => w,
        Err(e) => {
            if let Err(d) = daemon_result {
                tracing::warn!(error = d.message(), "the autoscaler failed too");
            }
            return Err(e);
        }
    };
    daemon_result?;
    match workload.end {
        End::AutoscalerStopped => {
            return Err(CliError::other(
                "Run",
                "demo: the autoscaler stopped before the jobs were done",
            ));
        }
        End::Stalled => {
            let p = Progress::of(&state);
            return Err(CliError::other(
                "DemoStalled",
                format!(
                    "demo: no job started or finished for {} s ({} waiting, {} running, {} of {} done); \
                     run with --log-level info to see why",
                    workload.stall_limit.as_secs(),
                    p.queued,
                    p.running,
                    p.done,
                    args.jobs
                ),
            ));
        }
        End::AllDone | End::Interrupted => {}
    }
    Ok(summarize(
        args,
        &state,
        peak.get(),
        workload_start.elapsed(),
        started.elapsed(),
        workload.end == End::Interrupted,
    ))
}

/// Waits until the autoscaler listens, then enqueues the jobs at the arrival rate and
/// follows them until they are done, the demo is interrupted, the autoscaler stops or
/// nothing moves. Leaves the autoscaler running: [`drive`] stops it.
async fn workload(
    args: &DemoArgs,
    sim: &Simulator,
    daemon: &tokio::task::JoinHandle<scaleset_autoscaler::Result<()>>,
    reporter: &mut Reporter,
    shutdown: &CancellationToken,
    sample: &dyn Fn(&SimState),
    enqueue: impl AsyncFn(u32) -> Result<(), CliError>,
) -> Result<Workload, CliError> {
    // Start-up: wait until the autoscaler listens, so the waits measure scaling, not boot.
    let (listening, _) = sim
        .wait_until(STARTUP_TIMEOUT, |s| {
            sample(s);
            s.scale_set_by_name(SCALE_SET)
                .is_some_and(|ss| ss.session_id.is_some())
                || shutdown.is_cancelled()
                || daemon.is_finished()
        })
        .await;
    let start = Instant::now();
    let mut stall = StallWatch::new(args.job_duration, start);
    let done = |end| {
        Ok(Workload {
            end,
            start,
            stall_limit: stall.limit,
        })
    };
    if shutdown.is_cancelled() {
        return done(End::Interrupted);
    }
    if daemon.is_finished() {
        return done(End::AutoscalerStopped);
    }
    if !listening {
        return Err(CliError::other(
            "Demo",
            format!(
                "demo: the autoscaler did not start listening within {} s",
                STARTUP_TIMEOUT.as_secs()
            ),
        ));
    }
    let total = args.jobs as usize;
    let mut sent = 0u32;
    loop {
        let due = args.jobs_due(start.elapsed());
        if due > sent {
            enqueue(due - sent).await?;
            sent = due;
        }
        let wait = if sent < args.jobs {
            (start + args.due_at(sent))
                .saturating_duration_since(Instant::now())
                .min(TICK)
        } else {
            TICK
        };
        let (_, snap) = sim
            .wait_until(wait, |s| {
                sample(s);
                (s.jobs.len() == total && s.jobs.iter().all(|j| j.status == "completed"))
                    || shutdown.is_cancelled()
                    || daemon.is_finished()
            })
            .await;
        let p = Progress::of(&snap);
        reporter.update(p, start.elapsed());
        let end = if shutdown.is_cancelled() {
            End::Interrupted
        } else if daemon.is_finished() {
            End::AutoscalerStopped
        } else if p.enqueued == total && p.done == total {
            End::AllDone
        } else if stall.stalled(p, sent >= args.jobs, Instant::now()) {
            End::Stalled
        } else {
            continue;
        };
        return Ok(Workload {
            end,
            start,
            stall_limit: stall.limit,
        });
    }
}

/// Awaits the autoscaler task (cancelled already) and maps its failure.
async fn stop_daemon(
    daemon: &mut tokio::task::JoinHandle<scaleset_autoscaler::Result<()>>,
    args: &DemoArgs,
) -> Result<(), CliError> {
    // The drain is bounded; the margin covers stopping runners and deleting the session.
    let limit = Duration::from_secs(args.drain_timeout_secs() + 30);
    match tokio::time::timeout(limit, daemon).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(e))) => Err(daemon_error(e)),
        Ok(Err(e)) => Err(CliError::other(
            "Run",
            format!("demo: the autoscaler task failed: {e}"),
        )),
        Err(_) => Err(CliError::other(
            "Run",
            format!(
                "demo: the autoscaler did not stop within {} s",
                limit.as_secs()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: DemoArgs,
    }

    fn args(extra: &[&str]) -> Result<DemoArgs, String> {
        let mut all = vec!["t"];
        all.extend_from_slice(extra);
        T::try_parse_from(all)
            .map(|t| t.a)
            .map_err(|e| e.to_string())
    }

    fn invalid(extra: &[&str]) -> String {
        let a = args(extra).expect("parses");
        let e = a.validate().expect_err("invalid");
        assert_eq!(e.exit_code(), 2);
        e.message().to_string()
    }

    /// Whether process `pid` still runs (a zombie waiting to be reaped does not).
    fn alive(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                let state = stat.rsplit(") ").next()?.chars().next()?;
                Some(state != 'Z' && state != 'X')
            })
            .unwrap_or(false)
    }

    fn pids_in(file: &Path) -> Vec<i32> {
        std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Defect 8 of issue 11: a failed enqueue returned early and left the autoscaler, and the
    /// runner processes it had started, running. Each runner here is a shell that writes
    /// its pid to a file and sleeps; enqueueing fails once one runs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_enqueue_stops_the_autoscaler_and_leaves_no_runner_process() {
        const DEADLINE: Duration = Duration::from_secs(30);
        let sim = Simulator::start(SimConfig {
            long_poll: Duration::from_millis(500),
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            ..SimConfig::default()
        })
        .await
        .expect("the simulator starts");
        let mut dir = WorkDir::create().expect("a temporary directory");
        let pids = dir.path().join("runner-pids");
        let a = args(&["--jobs", "5", "--min-runners", "1", "--max-runners", "2"]).expect("parses");
        let mut config =
            autoscaler_config(&a, sim.config_url(), dir.path(), None).expect("a valid config");
        config.scale_sets[0].provisioner = ProvisionerConfig::Process(ProcessSettings {
            command: Some("/bin/sh".to_string()),
            args: vec![
                "-c".to_string(),
                format!("echo $$ >> '{}'; exec sleep 120", pids.display()),
            ],
            workdir: Some(dir.path().join("runners")),
            env: Vec::new(),
        });
        let client = simulator_client(&sim).expect("a client");
        let mut reporter = Reporter::new(false, a.jobs);
        let enqueue = async |_count: u32| {
            let deadline = Instant::now() + DEADLINE;
            while pids_in(&pids).is_empty() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(CliError::other(
                "Sim",
                "demo: cannot enqueue jobs: injected",
            ))
        };
        let result = tokio::time::timeout(
            Duration::from_secs(120),
            drive(
                &a,
                &sim,
                config,
                client,
                &mut reporter,
                &CancellationToken::new(),
                Instant::now(),
                enqueue,
            ),
        )
        .await
        .expect("the demo stops before the deadline");
        let e = result.expect_err("enqueueing failed");
        assert!(
            e.message().contains("cannot enqueue jobs"),
            "{}",
            e.message()
        );

        let started = pids_in(&pids);
        assert!(!started.is_empty(), "no runner process was started");
        // Stopped means gone by now; the short grace only covers the kernel's bookkeeping.
        let deadline = Instant::now() + Duration::from_secs(5);
        while started.iter().any(|&p| alive(p)) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left: Vec<i32> = started.into_iter().filter(|&p| alive(p)).collect();
        for &pid in &left {
            // Clean up after a failure, so that the failing run leaves nothing either.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        assert!(left.is_empty(), "runner processes are left: {left:?}");
        sim.shutdown().await;
        dir.remove();
    }

    #[test]
    fn the_defaults_are_valid() {
        let a = args(&[]).expect("parses");
        a.validate().expect("valid");
        assert_eq!(a.jobs, 40);
        assert_eq!(a.job_duration, Duration::from_secs(3));
        assert_eq!(a.drain_timeout_secs(), 13);
    }

    #[test]
    fn bad_values_name_their_flag() {
        assert!(invalid(&["--jobs", "0"]).contains("--jobs"));
        assert!(invalid(&["--arrival-rate", "0"]).contains("--arrival-rate"));
        assert!(invalid(&["--arrival-rate", "-2"]).contains("--arrival-rate"));
        assert!(invalid(&["--arrival-rate", "inf"]).contains("--arrival-rate"));
        assert!(invalid(&["--arrival-rate", "1e-300"]).contains("--arrival-rate"));
        assert!(invalid(&["--arrival-rate", "NaN"]).contains("--arrival-rate"));
        assert!(invalid(&["--job-duration", "1e12"]).contains("--job-duration"));
        assert!(invalid(&["--jobs", "1001"]).contains("--jobs"));
        assert!(invalid(&["--max-runners", "0", "--min-runners", "0"]).contains("--max-runners"));
        let m = invalid(&["--max-runners", "2", "--min-runners", "3"]);
        assert!(
            m.contains("--min-runners") && m.contains("--max-runners"),
            "{m}"
        );
        assert!(
            args(&["--job-duration", "-1"])
                .expect_err("negative")
                .contains("--job-duration")
        );
    }

    #[test]
    fn jobs_arrive_at_the_rate() {
        let a = args(&["--jobs", "10", "--arrival-rate", "4"]).expect("parses");
        assert_eq!(a.jobs_due(Duration::ZERO), 1);
        assert_eq!(a.jobs_due(Duration::from_millis(249)), 1);
        assert_eq!(a.jobs_due(Duration::from_millis(250)), 2);
        assert_eq!(a.jobs_due(Duration::from_secs(100)), 10);
        assert_eq!(a.due_at(2), Duration::from_millis(500));
    }

    #[test]
    fn a_workload_that_stops_moving_is_detected() {
        let t0 = Instant::now();
        let mut w = StallWatch::new(Duration::from_secs(3), t0);
        let stuck = Progress {
            enqueued: 5,
            queued: 5,
            ..Progress::default()
        };
        assert!(!w.stalled(stuck, true, t0));
        assert!(
            !w.stalled(stuck, true, t0 + Duration::from_secs(60)),
            "within the limit"
        );
        assert!(
            !w.stalled(stuck, false, t0 + Duration::from_secs(100)),
            "jobs still arriving"
        );
        assert!(w.stalled(stuck, true, t0 + Duration::from_secs(64)));
        let moved = Progress {
            running: 1,
            queued: 4,
            ..stuck
        };
        assert!(
            !w.stalled(moved, true, t0 + Duration::from_secs(65)),
            "progress resets it"
        );
        assert!(!w.stalled(moved, true, t0 + Duration::from_secs(120)));
        assert!(w.stalled(moved, true, t0 + Duration::from_secs(129)));
    }

    #[test]
    fn the_drain_is_bounded() {
        let a = args(&["--job-duration", "3600"]).expect("parses");
        assert_eq!(a.drain_timeout_secs(), MAX_DRAIN_SECS);
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(10.0));
        assert_eq!(percentile(&v, 95.0), Some(19.0));
        assert_eq!(percentile(&[7.0], 95.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn the_progress_line_reads_well() {
        let p = Progress {
            enqueued: 10,
            queued: 2,
            running: 3,
            done: 5,
            not_succeeded: 0,
            idle: 1,
            busy: 3,
        };
        assert_eq!(
            p.line(40, Duration::from_millis(2500)),
            "   2.5s  jobs: 2 queued, 3 running, 5/40 done  runners: 3 busy, 1 idle"
        );
    }
}
