//! End to end: how long `scaleset run` takes to get a burst of jobs running.
//!
//! Whole processes, as a user runs them: the simulator in this process (with 20 ms of latency
//! on every JIT call, standing in for the round trip to GitHub), `scaleset run` as a child
//! process with the process provisioner starting `scaleset sim-runner` children. A burst of
//! jobs is enqueued at once; the figure is the time until every job has started on a runner.
//!
//! Two configurations run back to back in the same process, so their ratio is what to read:
//! - **baseline**: `max_concurrent_starts = 1`, one runner minted and started after the other,
//!   as an autoscaler built on the reference client does (its global lock serialises the JIT
//!   calls);
//! - **default**: `max_concurrent_starts = 16`.
//!
//! Run with `cargo bench -p scaleset-cli --bench burst` (release build). Bounded: each run
//! gives up after 120 s.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use scaleset_sim::{EndpointClass, EnqueueJobs, Fault, SimConfig, Simulator};

mod support;

const BURST: u32 = 40;
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

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let mut serial = Vec::new();
    let mut parallel = Vec::new();
    for round in 0..ROUNDS {
        serial.push(time_burst(1, round).await);
        parallel.push(time_burst(16, round).await);
    }
    let (s, p) = (median(serial.clone()), median(parallel.clone()));
    println!("burst of {BURST} jobs, 20 ms JIT latency, {ROUNDS} rounds (median)");
    println!("  max_concurrent_starts = 1  (baseline): {s:?}   all: {serial:?}");
    println!("  max_concurrent_starts = 16 (default):  {p:?}   all: {parallel:?}");
    println!("  ratio: {:.1}x faster", s.as_secs_f64() / p.as_secs_f64());
}
