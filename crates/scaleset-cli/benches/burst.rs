//! End to end: how long `scaleset run` takes to get a burst of jobs running.
//!
//! Whole processes, as a user runs them: the simulator in this process (with 20 ms of latency
//! on every JIT call, standing in for the round trip to GitHub), `scaleset run` as a child
//! process with the process provisioner starting `scaleset sim-runner` children. A burst of
//! jobs is enqueued at once; the figure is the time until every job has started on a runner.
//!
//! Three configurations run back to back in the same process, so their ratios are what to
//! read:
//! - **bare spawn**: no daemon. The JIT configs are minted before the clock starts; then this
//!   process spawns the same 50 `scaleset sim-runner` processes itself, with no state file, no
//!   work directory and no log tail. The floor of the start pipeline on this machine: the
//!   project's own overhead per start is the ratio of the default to this;
//! - **one at a time**: `max_concurrent_starts = 1`, one runner minted and started after the
//!   other, as an autoscaler built on the reference client does (its global lock serialises
//!   the JIT calls);
//! - **default**: `max_concurrent_starts = 16`.
//!
//! Run with `cargo bench -p scaleset-cli --bench burst` (release build), or
//! `scripts/bench burst`; the figures go to `target/bench-results/burst.{json,md}`. Bounded:
//! each run gives up after 120 s.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use actions_scaleset::{Client, Credentials, JitRunnerSetting, RunnerScaleSet};
use scaleset_sim::{EndpointClass, EnqueueJobs, Fault, SimConfig, Simulator};
use serde_json::json;

mod support;

const BURST: u32 = 50;
const ROUNDS: usize = 3;

async fn time_burst(concurrency: usize, round: usize) -> Duration {
    let sim = Simulator::start(SimConfig {
        long_poll: Duration::from_secs(5),
        ..Default::default()
    })
    .await
    .expect("the simulator starts");
    sim.faults()
        .inject(Fault::Latency {
            class: EndpointClass::Jit,
            method: None,
            delay_ms: 20,
            count: None,
            after: false,
        })
        .expect("latency fault accepted");
    let dir = std::env::temp_dir().join(format!(
        "scaleset-burst-{}-{concurrency}-{round}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let name = format!("burst-{concurrency}-{round}");
    let config = format!(
        r#"[connection]
url = "{url}"

[[scale_set]]
name = "{name}"
min_runners = 0
max_runners = {BURST}
max_concurrent_starts = {concurrency}
shutdown = "drain"
drain_timeout_secs = 30

[scale_set.provisioner]
kind = "process"
command = "{exe}"
args = ["sim-runner"]
workdir = "{work}"
"#,
        url = sim.config_url(),
        exe = env!("CARGO_BIN_EXE_scaleset"),
        work = dir.join("runners").display(),
    );
    let config_path = dir.join("autoscaler.toml");
    std::fs::write(&config_path, config).expect("config written");
    let daemon = support::spawn_run(&config_path, &sim.token());
    let (listening, _) = sim
        .wait_until(Duration::from_secs(60), |s| {
            !s.sessions.is_empty() && s.in_flight_polls > 0
        })
        .await;
    assert!(listening, "the daemon opened a session");

    let started = Instant::now();
    sim.enqueue_jobs(EnqueueJobs {
        labels: vec![name.clone()],
        count: BURST,
        duration: Duration::from_secs(2),
        ..Default::default()
    })
    .await
    .expect("jobs enqueued");
    let (all_started, state) = sim
        .wait_until(Duration::from_secs(120), |s| {
            s.jobs
                .iter()
                .filter(|j| j.status == "running" || j.status == "completed")
                .count()
                >= BURST as usize
        })
        .await;
    let elapsed = started.elapsed();
    assert!(
        all_started,
        "every job started: {:?}",
        state.jobs.iter().map(|j| &j.status).collect::<Vec<_>>()
    );

    support::stop(daemon, Signal::SIGTERM, Duration::from_secs(60)).await;
    sim.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    elapsed
}

/// The floor: JIT configs minted first, then `BURST` runner processes spawned directly.
async fn time_bare_spawn(round: usize) -> Duration {
    let sim = Simulator::start(SimConfig {
        long_poll: Duration::from_secs(5),
        ..Default::default()
    })
    .await
    .expect("the simulator starts");
    let client = Client::builder(
        sim.config_url(),
        Credentials::token(sim.token()).expect("a token"),
    )
    .build()
    .expect("a client");
    let name = format!("bare-{round}");
    let set = client
        .create_runner_scale_set(&RunnerScaleSet {
            name: name.clone(),
            runner_group_id: actions_scaleset::DEFAULT_RUNNER_GROUP_ID,
            ..Default::default()
        })
        .await
        .expect("a scale set");
    let mut jits = Vec::new();
    for i in 0..BURST {
        let jit = client
            .generate_jit_runner_config(
                set.id,
                &JitRunnerSetting {
                    name: format!("{name}-{i}"),
                    work_folder: String::new(),
                },
            )
            .await
            .expect("a JIT config");
        jits.push(jit.encoded_jit_config.expose_secret().to_string());
    }
    let started = Instant::now();
    sim.enqueue_jobs(EnqueueJobs {
        labels: vec![name.clone()],
        count: BURST,
        duration: Duration::from_secs(2),
        ..Default::default()
    })
    .await
    .expect("jobs enqueued");
    let mut children = Vec::new();
    for jit in &jits {
        children.push(
            tokio::process::Command::new(env!("CARGO_BIN_EXE_scaleset"))
                .arg("sim-runner")
                .env_clear()
                .env("ACTIONS_RUNNER_INPUT_JITCONFIG", jit)
                .env("NO_PROXY", "*")
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("a runner starts"),
        );
    }
    let (all_started, state) = sim
        .wait_until(Duration::from_secs(120), |s| {
            s.jobs
                .iter()
                .filter(|j| j.status == "running" || j.status == "completed")
                .count()
                >= BURST as usize
        })
        .await;
    let elapsed = started.elapsed();
    assert!(
        all_started,
        "bare spawn: every job started: {:?}",
        state.jobs.iter().map(|j| &j.status).collect::<Vec<_>>()
    );
    for mut c in children {
        let _ = tokio::time::timeout(Duration::from_secs(30), c.wait()).await;
    }
    sim.shutdown().await;
    elapsed
}

#[tokio::main]
async fn main() {
    let mut bare = Vec::new();
    let mut serial = Vec::new();
    let mut parallel = Vec::new();
    for round in 0..ROUNDS {
        bare.push(time_bare_spawn(round).await);
        serial.push(time_burst(1, round).await);
        parallel.push(time_burst(16, round).await);
    }
    let (b, s, p) = (
        support::median(bare.clone()),
        support::median(serial.clone()),
        support::median(parallel.clone()),
    );
    println!("burst of {BURST} jobs, 20 ms JIT latency, {ROUNDS} rounds (median)");
    println!("  bare spawn (floor):                   {b:?}   all: {bare:?}");
    println!("  max_concurrent_starts = 1  (one at a time): {s:?}   all: {serial:?}");
    println!("  max_concurrent_starts = 16 (default):  {p:?}   all: {parallel:?}");
    let over = p.as_secs_f64() / b.as_secs_f64();
    let range = |v: &[Duration]| {
        let lo = v.iter().min().copied().unwrap_or_default();
        let hi = v.iter().max().copied().unwrap_or_default();
        format!("{:.2}-{:.2}", lo.as_secs_f64(), hi.as_secs_f64())
    };
    let md = format!(
        "Whole processes: the simulator in the harness (20 ms of latency on every JIT call), \
         `scaleset run --config` as a child process with the process provisioner starting one \
         `scaleset sim-runner` per job; {BURST} jobs enqueued at once, the figure is the time \
         from the enqueue until every job has started on a runner; {ROUNDS} rounds, alternating, \
         medians (range). The bare spawn mints the JIT configs before the clock starts and \
         spawns the same {BURST} processes itself: no JIT on the path, no state file, work \
         directory or log tail.\n\n\
         | configuration | all {BURST} started | against the bare spawn |\n|---|---|---|\n\
         | bare spawn, JIT configs minted beforehand (floor) | {} ({} s) | 1.00x |\n\
         | `max_concurrent_starts = 1` (one at a time, as the reference client) | {} ({} s) | {:.2}x |\n\
         | `max_concurrent_starts = 16` (default) | {} ({} s) | **{over:.2}x** |\n\n\
         The default is {:.1}x faster than one start at a time. Target (the default within \
         1.2x of the bare spawn): {}.\n",
        support::results::secs(b),
        range(&bare),
        support::results::secs(s),
        range(&serial),
        s.as_secs_f64() / b.as_secs_f64(),
        support::results::secs(p),
        range(&parallel),
        s.as_secs_f64() / p.as_secs_f64(),
        support::results::verdict(over <= 1.2, || format!(
            "{over:.2}x, {:.0}% over the bound",
            (over / 1.2 - 1.0) * 100.0
        )),
    );
    println!("\n{md}");
    let secs = |v: &[Duration]| v.iter().map(Duration::as_secs_f64).collect::<Vec<_>>();
    support::results::write(
        "burst",
        &json!({
            "bench": "burst",
            "jobs": BURST,
            "rounds": ROUNDS,
            "bare_spawn_s": secs(&bare),
            "one_at_a_time_s": secs(&serial),
            "default_s": secs(&parallel),
        }),
        &md,
    );
}
