//! End to end against a real Docker engine: the `scaleset` binary runs
//! `scaleset run --provisioner docker` against the in-process simulator, its runners are
//! containers (`--network host`) of an image built `FROM scratch` out of the same binary,
//! running `scaleset sim-runner`.
//!
//! Without an engine every test says it was SKIPPED and passes, unless
//! `SCALESET_REQUIRE_DOCKER=1` (CI), where it fails. Every wait has a deadline; nothing
//! asserts on wall-clock durations. Each test has its own scale set name, instance name
//! (`SCALESET_INSTANCE`) and state directory (`XDG_STATE_HOME`, where the Docker host lock
//! lives), so tests running at once never see each other's containers; the engine restart
//! test has the engine alone.

mod common;
#[path = "../../scaleset-autoscaler/tests/support/docker_engine.rs"]
mod docker_engine;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::{
    InspectContainerOptions, KillContainerOptions, ListContainersOptions,
};
use common::{Streaming, TOKEN, cmd};
use nix::sys::signal::Signal;
use scaleset_sim::{EnqueueJobs, SimState, Simulator};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LONG: Duration = Duration::from_secs(180);
const IMAGE: &str = "scaleset-e2e-runner:latest";
const LABEL_NAME: &str = "dev.scaleset.scale-set-name";
const LABEL_INSTANCE: &str = "dev.scaleset.instance";

/// Tests share the engine; the restart test has it alone.
static ENGINE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Builds [`IMAGE`] (the `scaleset` binary, its libraries, the CA bundle) once per run.
async fn image(docker: &Docker) {
    static BUILT: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    BUILT
        .get_or_init(|| async {
            let exe = Path::new(env!("CARGO_BIN_EXE_scaleset"));
            let ca = Path::new(docker_engine::docker_image::CA_BUNDLE);
            let files: Vec<&Path> = [ca].into_iter().filter(|p| p.exists()).collect();
            tokio::time::timeout(
                Duration::from_secs(300),
                docker_engine::docker_image::build_image(docker, IMAGE, &[exe], &files),
            )
            .await
            .expect("the runner image builds in time")
            .expect("the runner image builds");
        })
        .await;
}

/// One test's scale set on the engine.
struct Case {
    docker: Docker,
    name: String,
    instance: String,
    state: PathBuf,
}

impl Case {
    async fn new(test: &str, short: &str) -> Option<Case> {
        let docker = docker_engine::engine(test).await?;
        image(&docker).await;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let tag = format!("{}-{nanos:x}", std::process::id());
        let state = std::env::temp_dir().join(format!("scaleset-dke2e-{short}-{tag}"));
        std::fs::create_dir_all(&state).expect("the state dir is created");
        let case = Case {
            docker,
            name: format!("dk-{short}"),
            instance: format!("e2e-{short}-{tag}"),
            state,
        };
        case.remove_earlier_runs().await;
        Some(case)
    }

    /// Removes what an earlier, failed run of this test left (its containers carry this
    /// test's scale set name, which no other test uses).
    async fn remove_earlier_runs(&self) {
        let mut filters: HashMap<String, Vec<String>> = HashMap::new();
        filters.insert("label".into(), vec![format!("{LABEL_NAME}={}", self.name)]);
        let opts = ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        };
        for c in self
            .docker
            .list_containers(Some(opts))
            .await
            .unwrap_or_default()
        {
            if let Some(id) = c.id {
                let _ = self
                    .docker
                    .remove_container(
                        &id,
                        Some(bollard::query_parameters::RemoveContainerOptions {
                            force: true,
                            v: true,
                            ..Default::default()
                        }),
                    )
                    .await;
            }
        }
    }

    /// `scaleset run --provisioner docker` for this case, with `extra` flags.
    fn run(&self, sim: &Simulator, image: &str, extra: &[&str]) -> Streaming {
        let mut c = cmd();
        c.args([
            "run",
            "--url",
            &sim.config_url(),
            "--token",
            TOKEN,
            "--name",
            &self.name,
            "--label",
            &self.name,
            "--provisioner",
            "docker",
            "--network",
            "host",
            "--pull",
            "never",
            "--image",
            image,
            "--runner-command",
            env!("CARGO_BIN_EXE_scaleset"),
            "--runner-arg",
            "sim-runner",
        ])
        .args(extra)
        .env("SCALESET_INSTANCE", &self.instance)
        .env("SCALESET_LOG", "info")
        .env("XDG_STATE_HOME", &self.state);
        Streaming::spawn(c)
    }

    /// This case's containers: (name, state).
    async fn containers(&self) -> Vec<(String, String)> {
        containers_of(&self.docker, &self.name, &self.instance).await
    }

    async fn enqueue(&self, sim: &Simulator, count: u32, duration: Duration) {
        sim.enqueue_jobs(EnqueueJobs {
            labels: vec![self.name.clone()],
            count,
            duration,
            ..Default::default()
        })
        .await
        .expect("enqueue");
    }

    /// Nothing of this case is left: no registration, and no container but those the
    /// engine is already removing (on vfs that takes a moment after the daemon exited),
    /// which then vanish.
    async fn assert_nothing_left(&self, sim: &Simulator, log: &str) {
        let left = self.containers().await;
        assert!(
            left.iter().all(|(_, state)| state == "removing"),
            "containers are left: {left:?}\nthe daemon's log:\n{log}"
        );
        let deadline = tokio::time::Instant::now() + LONG;
        loop {
            let left = self.containers().await;
            if left.is_empty() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "containers are never removed: {left:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let st = sim.state();
        assert!(
            st.runners.is_empty(),
            "registrations are left: {:?}",
            st.runners
        );
    }

    /// Removes whatever a failed test left (best effort).
    async fn cleanup(&self) {
        for (name, _) in self.containers().await {
            let _ = self
                .docker
                .remove_container(
                    &name,
                    Some(bollard::query_parameters::RemoveContainerOptions {
                        force: true,
                        v: true,
                        ..Default::default()
                    }),
                )
                .await;
        }
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

async fn containers_of(docker: &Docker, name: &str, instance: &str) -> Vec<(String, String)> {
    let mut filters: HashMap<String, Vec<String>> = HashMap::new();
    filters.insert(
        "label".into(),
        vec![
            format!("{LABEL_NAME}={name}"),
            format!("{LABEL_INSTANCE}={instance}"),
        ],
    );
    let opts = ListContainersOptions {
        all: true,
        filters: Some(filters),
        ..Default::default()
    };
    match docker.list_containers(Some(opts)).await {
        Ok(list) => list
            .into_iter()
            .map(|c| {
                let name = c
                    .names
                    .and_then(|n| n.first().cloned())
                    .unwrap_or_default()
                    .trim_start_matches('/')
                    .to_string();
                let state = c.state.map(|s| s.to_string()).unwrap_or_default();
                (name, state)
            })
            .collect(),
        // The engine restarting: nothing can be said; the callers poll again.
        Err(_) => Vec::new(),
    }
}

/// Samples the number of live (created or running) containers of `case` every ~100 ms until
/// dropped; the peak is kept.
struct Sampler {
    peak: Arc<AtomicUsize>,
    samples: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Sampler {
    fn start(case: &Case) -> Sampler {
        let peak = Arc::new(AtomicUsize::new(0));
        let samples = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (docker, name, instance) = (
            case.docker.clone(),
            case.name.clone(),
            case.instance.clone(),
        );
        let (p, n, s) = (peak.clone(), samples.clone(), stop.clone());
        tokio::spawn(async move {
            while !s.load(Ordering::SeqCst) {
                let live = containers_of(&docker, &name, &instance)
                    .await
                    .iter()
                    .filter(|(_, state)| state == "running" || state == "created")
                    .count();
                p.fetch_max(live, Ordering::SeqCst);
                n.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Sampler {
            peak,
            samples,
            stop,
        }
    }

    fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }

    fn samples(&self) -> usize {
        self.samples.load(Ordering::SeqCst)
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn completed(st: &SimState) -> usize {
    st.jobs_in("completed")
}

/// Waits (under [`LONG`]) until `n` jobs completed; panics with the state otherwise.
async fn wait_completed(sim: &Simulator, n: usize) -> SimState {
    let (ok, st) = sim.wait_until(LONG, |st| completed(st) >= n).await;
    assert!(
        ok,
        "{} of {n} jobs completed: {:?}",
        completed(&st),
        st.jobs.iter().map(|j| &j.status).collect::<Vec<_>>()
    );
    st
}

/// SIGTERM (the policy given on the command line applies), then the exit.
async fn stop(run: Streaming) -> common::Run {
    run.sigterm();
    let out = run.finish().await;
    assert_eq!(out.code, 0, "the daemon exits 0: {}", out.stderr);
    out
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

async fn metrics(port: u16) -> Option<String> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.ok()?;
    buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
}

/// The value of the first sample of `family` in a metrics text.
fn metric(body: &str, family: &str) -> Option<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(family) && l[family.len()..].starts_with(['{', ' ']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

const DRAIN: [&str; 4] = ["--shutdown", "drain", "--drain-timeout", "60"];

// a. 30 jobs with at most 10 runners: all complete, never more than 10 containers, and the
// drain leaves no container and no registration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_jobs_with_max_ten_containers_complete_and_drain_leaves_nothing() {
    let _shared = ENGINE.read().await;
    let Some(case) = Case::new(
        "thirty_jobs_with_max_ten_containers_complete_and_drain_leaves_nothing",
        "burst",
    )
    .await
    else {
        return;
    };
    let sim = common::sim().await;
    let mut run = case.run(
        &sim,
        IMAGE,
        &[&["--max-runners", "10"][..], &DRAIN].concat(),
    );
    run.wait_stderr("listening").await;
    let sampler = Sampler::start(&case);
    case.enqueue(&sim, 30, Duration::from_millis(500)).await;
    let st = wait_completed(&sim, 30).await;
    assert!(
        st.jobs
            .iter()
            .all(|j| j.result.as_deref() == Some("succeeded")),
        "all succeeded: {:?}",
        st.jobs
    );
    let peak = sampler.peak();
    eprintln!(
        "30 jobs, max 10: peak {peak} live containers over {} samples",
        sampler.samples()
    );
    assert!(sampler.samples() > 5, "the engine was sampled");
    assert!(
        peak <= 10,
        "at most 10 runner containers at once, saw {peak}"
    );
    assert!(peak >= 2, "runners ran in parallel, saw {peak}");
    drop(sampler);
    let out = stop(run).await;
    case.assert_nothing_left(&sim, &out.stderr).await;
    case.cleanup().await;
}

// b. SIGKILL of the daemon mid-run, then a restart: the leftovers are adopted or removed,
// every job completes, and after the drain nothing leaks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_mid_run_is_restarted_without_leaks() {
    let _shared = ENGINE.read().await;
    let Some(case) = Case::new(
        "a_daemon_killed_mid_run_is_restarted_without_leaks",
        "sigkill",
    )
    .await
    else {
        return;
    };
    // The killed daemon's session ends when it stays unpolled this long.
    let sim = common::sim_with(|c| c.session_idle_timeout = Duration::from_secs(3)).await;
    let flags = [&["--max-runners", "5"][..], &DRAIN].concat();
    let mut run = case.run(&sim, IMAGE, &flags);
    run.wait_stderr("listening").await;
    case.enqueue(&sim, 12, Duration::from_secs(2)).await;
    let (ok, st) = sim.wait_until(LONG, |st| st.jobs_in("running") >= 2).await;
    assert!(ok, "jobs started: {:?}", st.jobs);
    run.signal(Signal::SIGKILL);
    let killed = run.finish().await;
    assert_ne!(killed.code, 0, "killed: {}", killed.stderr);
    let leftovers = case.containers().await;
    assert!(!leftovers.is_empty(), "the killed daemon left containers");

    let mut again = case.run(&sim, IMAGE, &flags);
    again.wait_stderr("listening").await;
    wait_completed(&sim, 12).await;
    let out = stop(again).await;
    assert!(
        out.stderr
            .contains("taking over the runners and registrations a previous run left"),
        "the restart found the leftovers: {}",
        out.stderr
    );
    case.assert_nothing_left(&sim, &out.stderr).await;
    for (name, _) in &leftovers {
        assert!(
            case.docker
                .inspect_container(name, None::<InspectContainerOptions>)
                .await
                .is_err(),
            "leftover {name} is gone"
        );
    }
    case.cleanup().await;
}

// c. A container killed mid-job: its job is accounted (the simulator fails it when the
// runner's heartbeats stop), the runner is replaced and the demand is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_killed_mid_job_is_replaced_and_its_job_accounted() {
    let _shared = ENGINE.read().await;
    let Some(case) = Case::new(
        "a_container_killed_mid_job_is_replaced_and_its_job_accounted",
        "dockerkill",
    )
    .await
    else {
        return;
    };
    let sim = common::sim_with(|c| c.runner_heartbeat_timeout = Duration::from_secs(5)).await;
    let mut run = case.run(&sim, IMAGE, &[&["--max-runners", "3"][..], &DRAIN].concat());
    run.wait_stderr("listening").await;
    case.enqueue(&sim, 3, Duration::from_secs(30)).await;
    let (ok, st) = sim
        .wait_until(LONG, |st| {
            st.runners.iter().any(|r| r.job_request_id.is_some())
        })
        .await;
    assert!(ok, "a job runs: {:?}", st.jobs);
    let (victim, victim_id, request) = st
        .runners
        .iter()
        .find_map(|r| r.job_request_id.map(|j| (r.name.clone(), r.id, j)))
        .expect("a busy runner");
    case.docker
        .kill_container(&victim, None::<KillContainerOptions>)
        .await
        .unwrap_or_else(|e| panic!("docker kill {victim}: {e}"));
    // The killed runner's job ends (failed, or requeued and run by another runner).
    let (ok, st) = sim
        .wait_until(LONG, |st| {
            st.job(request)
                .is_some_and(|j| j.status == "completed" || j.runner_id != Some(victim_id))
        })
        .await;
    assert!(
        ok,
        "the killed runner's job is accounted: {:?}",
        st.job(request)
    );
    // Its container and registration go; later demand is served by a replacement.
    let deadline = tokio::time::Instant::now() + LONG;
    while case.containers().await.iter().any(|(n, _)| *n == victim) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{victim} is never removed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    case.enqueue(&sim, 3, Duration::from_millis(300)).await;
    let (ok, st) = sim
        .wait_until(LONG, |st| {
            st.jobs
                .iter()
                .filter(|j| j.request_id != request && j.status == "completed")
                .count()
                >= 3
        })
        .await;
    assert!(ok, "new jobs run on replacements: {:?}", st.jobs);
    assert!(
        st.runners.iter().all(|r| r.name != victim),
        "the killed runner is deregistered: {:?}",
        st.runners
    );
    let out = stop(run).await;
    assert!(
        out.stderr.contains(&victim),
        "the log names the killed runner"
    );
    case.assert_nothing_left(&sim, &out.stderr).await;
    case.cleanup().await;
}

// d. An image that does not exist, with --pull never: one clear error naming the image per
// attempt, gha_provisioning_failures rising slowly (backoff), no tight create loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_image_is_one_clear_error_with_backoff_not_a_loop() {
    let _shared = ENGINE.read().await;
    let Some(case) = Case::new(
        "a_missing_image_is_one_clear_error_with_backoff_not_a_loop",
        "noimage",
    )
    .await
    else {
        return;
    };
    let sim = common::sim().await;
    let missing = format!("scaleset-no-such-image-{}:never", case.instance);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut run = case.run(
        &sim,
        &missing,
        &["--min-runners", "1", "--metrics-addr", &addr],
    );
    run.wait_stderr("listening").await;
    run.wait_stderr("the runner could not be started").await;
    // Watch for a while: the failures back off (1 s, 2 s, 4 s, 8 s, ... jittered).
    tokio::time::sleep(Duration::from_secs(20)).await;
    let body = metrics(port).await.expect("/metrics answers");
    let failures = metric(&body, "gha_provisioning_failures_total").expect("the failure metric");
    let backoff = metric(&body, "gha_start_backoff_seconds").expect("the backoff metric");
    assert!(
        case.containers().await.is_empty(),
        "no container was created"
    );
    let out = stop(run).await;
    let errors: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("the runner could not be started"))
        .collect();
    eprintln!(
        "missing image over ~20 s: {failures} provisioning failures, {} error lines, backoff {backoff} s",
        errors.len()
    );
    assert!(
        (1.0..=8.0).contains(&failures),
        "failures rise slowly: {failures}\n{body}"
    );
    assert!(backoff > 0.0, "a backoff is in force: {body}");
    assert!(
        (1..=8).contains(&errors.len()),
        "a handful of attempts in ~20 s, not dozens: {errors:#?}"
    );
    for line in &errors {
        assert!(line.contains(&missing), "the error names the image: {line}");
    }
    let st = sim.state();
    assert!(
        st.runners.is_empty(),
        "no registration is left: {:?}",
        st.runners
    );
    case.cleanup().await;
}

// e. The Docker engine restarted mid-run: jobs submitted after the restart complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_docker_engine_restart_is_survived() {
    let _alone = ENGINE.write().await;
    let Some(case) = Case::new("a_docker_engine_restart_is_survived", "restart").await else {
        return;
    };
    let sim = common::sim().await;
    let mut run = case.run(&sim, IMAGE, &[&["--max-runners", "3"][..], &DRAIN].concat());
    run.wait_stderr("listening").await;
    case.enqueue(&sim, 3, Duration::from_millis(300)).await;
    wait_completed(&sim, 3).await;
    if let Err(why) = docker_engine::restart_engine().await {
        if docker_engine::required() {
            panic!("restarting the engine: {why}");
        }
        eprintln!("\n*** a_docker_engine_restart_is_survived: SKIPPED: {why} ***\n");
        stop(run).await;
        case.cleanup().await;
        return;
    }
    case.enqueue(&sim, 5, Duration::from_millis(300)).await;
    let st = wait_completed(&sim, 8).await;
    assert!(
        st.jobs
            .iter()
            .all(|j| j.result.as_deref() == Some("succeeded")),
        "{:?}",
        st.jobs
    );
    let out = stop(run).await;
    case.assert_nothing_left(&sim, &out.stderr).await;
    case.cleanup().await;
}

// f. The JIT config is only in the container's environment: never in a label, a container
// name, or the daemon's trace-level log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_jit_config_in_labels_names_or_trace_logs() {
    let _shared = ENGINE.read().await;
    let Some(case) = Case::new("no_jit_config_in_labels_names_or_trace_logs", "secrets").await
    else {
        return;
    };
    let sim = common::sim().await;
    let flags = [&["--max-runners", "3", "--log-level", "trace"][..], &DRAIN].concat();
    let mut run = case.run(&sim, IMAGE, &flags);
    run.wait_stderr("listening").await;
    case.enqueue(&sim, 3, Duration::from_secs(3)).await;
    let (ok, st) = sim.wait_until(LONG, |st| st.jobs_in("running") >= 1).await;
    assert!(ok, "a job runs: {:?}", st.jobs);
    // The JIT configs, as the containers got them.
    let mut seen: Vec<(String, String, HashMap<String, String>)> = Vec::new();
    for (name, _) in case.containers().await {
        let Ok(info) = case
            .docker
            .inspect_container(&name, None::<InspectContainerOptions>)
            .await
        else {
            continue;
        };
        let config = info.config.unwrap_or_default();
        let jit = config
            .env
            .unwrap_or_default()
            .into_iter()
            .find_map(|e| {
                e.strip_prefix("ACTIONS_RUNNER_INPUT_JITCONFIG=")
                    .map(str::to_string)
            })
            .expect("the container has its JIT config");
        seen.push((name, jit, config.labels.unwrap_or_default()));
    }
    assert!(!seen.is_empty(), "containers were inspected");
    wait_completed(&sim, 3).await;
    let out = stop(run).await;
    for (name, jit, labels) in &seen {
        assert!(jit.len() > 20, "a real JIT config: {} chars", jit.len());
        assert!(
            !name.contains(jit.as_str()),
            "the name holds the JIT config"
        );
        for (k, v) in labels {
            assert!(
                !k.contains(jit.as_str()) && !v.contains(jit.as_str()),
                "label {k} holds the JIT config"
            );
        }
        assert!(
            !out.stderr.contains(jit.as_str()),
            "the trace log holds the JIT config of {name}"
        );
    }
    assert!(
        out.stderr.lines().count() > 50,
        "trace logging was on: {} lines",
        out.stderr.lines().count()
    );
    assert!(!out.stderr.contains(TOKEN), "the token is never logged");
    case.assert_nothing_left(&sim, &out.stderr).await;
    case.cleanup().await;
}
