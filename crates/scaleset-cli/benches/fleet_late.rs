//! A fleet burst with late `JobStarted` messages: 100 scale sets x 5 jobs through one
//! `scaleset run`, against the same burst through 100 processes of a peer library.
//!
//! github.com delivers `JobStarted` on the poll after the one in flight, so a runner that ran
//! a short job has often exited before its listener hears the job started. The simulator holds
//! every `JobStarted`/`JobCompleted` back 1 s (`SimConfig::job_message_delay`); jobs last
//! 500 ms, so most runners exit before their `JobStarted` arrives. Figures, per side:
//! - JIT configs minted (the target is exactly one per job: 500);
//! - time from the enqueue until every job has started on a runner, and until all completed.
//!
//! Both sides run against one in-process simulator, one after the other, with
//! `scaleset sim-runner` as the runner:
//! - **ours**: one `scaleset run --config` holding the 100 scale sets, process provisioner;
//! - **peer**: 100 processes of the example autoscaler of the crates.io `scaleset` crate
//!   (0.1.0), one per scale set, each with `max_runners = 5`, the only shape it offers. Set
//!   `SCALESET_PEER_AUTOSCALER` to its binary; otherwise this bench builds it once with
//!   `cargo install scaleset@0.1.0 --example autoscaler --root target/peer-scaleset`
//!   (crates.io must be reachable), and skips the peer side when that fails.
//!
//! Run with `cargo bench -p scaleset-cli --bench fleet_late` (release build). Bounded: each
//! side gives up after 300 s.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use scaleset_sim::{EnqueueJobs, SimConfig, Simulator};
use tokio::process::Command;

mod support;

const SCALE_SETS: usize = 100;
const JOBS_EACH: u32 = 5;
const TOTAL: usize = SCALE_SETS * JOBS_EACH as usize;
const DEADLINE: Duration = Duration::from_secs(300);

/// What one side achieved in one round.
#[derive(Debug)]
struct Outcome {
    jit_configs: usize,
    all_started: Duration,
    all_completed: Duration,
    /// CPU time the side's own processes (the daemon, or the peer's 100 processes; not the
    /// runners) used from the enqueue until every job completed.
    cpu: Duration,
}

/// The summed CPU time of `pids`.
fn cpu_of(pids: &[u32]) -> Duration {
    pids.iter().filter_map(|p| support::cpu_time(*p)).sum()
}

async fn simulator() -> Simulator {
    Simulator::start(SimConfig {
        long_poll: Duration::from_secs(5),
        job_message_delay: Duration::from_secs(1),
        request_log_capacity: 200_000,
        ..Default::default()
    })
    .await
    .expect("the simulator starts")
}

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("scaleset-fleet-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    dir
}

fn name(side: &str, i: usize) -> String {
    format!("{side}-{i:03}")
}

/// Enqueues the burst once every scale set polls, then measures it; `pids` are the side's
/// own processes.
async fn burst(sim: &Simulator, side: &str, pids: &[u32]) -> Outcome {
    let (polling, st) = sim
        .wait_until(DEADLINE, |s| s.in_flight_polls >= SCALE_SETS)
        .await;
    assert!(
        polling,
        "{side}: only {} of {SCALE_SETS} scale sets poll",
        st.in_flight_polls
    );
    sim.clear_requests();
    let cpu_before = cpu_of(pids);
    let start = Instant::now();
    if std::env::var_os("SCALESET_BENCH_LOG").is_some() {
        eprintln!("{side}: enqueue at {:?}", std::time::SystemTime::now());
    }
    for i in 0..SCALE_SETS {
        sim.enqueue_jobs(EnqueueJobs {
            labels: vec![name(side, i)],
            count: JOBS_EACH,
            duration: Duration::from_millis(500),
            ..Default::default()
        })
        .await
        .expect("jobs enqueued");
    }
    let (started, st) = sim
        .wait_until(DEADLINE, |s| {
            s.jobs.len() >= TOTAL
                && s.jobs
                    .iter()
                    .all(|j| j.status == "running" || j.status == "completed")
        })
        .await;
    assert!(started, "{side}: {} jobs running", st.jobs_in("running"));
    let all_started = start.elapsed();
    let (completed, st) = sim
        .wait_until(DEADLINE, |s| s.jobs.iter().all(|j| j.status == "completed"))
        .await;
    assert!(completed, "{side}: {} completed", st.jobs_in("completed"));
    let all_completed = start.elapsed();
    let cpu = cpu_of(pids).saturating_sub(cpu_before);
    // Late replacements would be minted after the last late message: let those arrive.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let jit_configs = sim
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/generatejitconfig"))
        .count();
    Outcome {
        jit_configs,
        all_started,
        all_completed,
        cpu,
    }
}

async fn ours() -> Outcome {
    let sim = simulator().await;
    let dir = scratch("ours");
    let mut config = format!("[connection]\nurl = \"{}\"\n", sim.config_url());
    for i in 0..SCALE_SETS {
        config.push_str(&format!(
            r#"
[[scale_set]]
name = "{name}"
max_runners = {JOBS_EACH}
shutdown = "drain"

[scale_set.provisioner]
kind = "process"
command = "{exe}"
args = ["sim-runner"]
workdir = "{work}"
"#,
            name = name("ours", i),
            exe = env!("CARGO_BIN_EXE_scaleset"),
            work = dir.join("runners").join(i.to_string()).display(),
        ));
    }
    let path = dir.join("fleet.toml");
    std::fs::write(&path, config).expect("config written");
    let daemon = support::spawn_run(&path, &sim.token());
    let pids: Vec<u32> = daemon.id().into_iter().collect();
    let outcome = burst(&sim, "ours", &pids).await;
    support::stop(daemon, Signal::SIGTERM, Duration::from_secs(60)).await;
    sim.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

/// The peer's example autoscaler: from `SCALESET_PEER_AUTOSCALER`, or built once.
fn peer_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SCALESET_PEER_AUTOSCALER") {
        return Some(PathBuf::from(p));
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/peer-scaleset");
    let bin = root.join("bin/autoscaler");
    if bin.exists() {
        return Some(bin);
    }
    eprintln!("building the peer (cargo install scaleset@0.1.0 --example autoscaler)...");
    let status = std::process::Command::new(env!("CARGO"))
        .args([
            "install",
            "scaleset@0.1.0",
            "--example",
            "autoscaler",
            "--root",
        ])
        .arg(&root)
        .status();
    match status {
        Ok(s) if s.success() && bin.exists() => Some(bin),
        other => {
            eprintln!("the peer could not be built ({other:?}); its side is skipped");
            None
        }
    }
}

async fn peer(bin: &Path) -> Outcome {
    let sim = simulator().await;
    let runner = format!("exec {} sim-runner", env!("CARGO_BIN_EXE_scaleset"));
    let mut children = Vec::new();
    for i in 0..SCALE_SETS {
        let child = Command::new(bin)
            .env("SCALESET_URL", sim.config_url())
            .env("SCALESET_ALLOW_HTTP", "1")
            .env("SCALESET_NAME", name("peer", i))
            .env("GITHUB_TOKEN", sim.token())
            .env("MAX_RUNNERS", JOBS_EACH.to_string())
            .env("RUNNER_COMMAND", &runner)
            .env("NO_PROXY", "*")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("the peer starts");
        children.push(child);
    }
    let pids: Vec<u32> = children
        .iter()
        .filter_map(tokio::process::Child::id)
        .collect();
    let outcome = burst(&sim, "peer", &pids).await;
    // The peer stops on Ctrl-C.
    for c in &children {
        support::signal(c, Signal::SIGINT);
    }
    for mut c in children {
        let _ = tokio::time::timeout(Duration::from_secs(30), c.wait()).await;
    }
    sim.shutdown().await;
    outcome
}

/// The median of `f` over `outcomes` (the upper one of an even count).
fn median(outcomes: &[Outcome], f: impl Fn(&Outcome) -> Duration) -> Duration {
    let mut v: Vec<Duration> = outcomes.iter().map(f).collect();
    v.sort();
    v[v.len() / 2]
}

fn report(label: &str, outcomes: &[Outcome]) {
    let jit: Vec<usize> = outcomes.iter().map(|o| o.jit_configs).collect();
    println!(
        "  {label:<22} JIT configs {jit:?}, all started {:.2?}, all completed {:.2?}, CPU {:.2?} (medians)",
        median(outcomes, |o| o.all_started),
        median(outcomes, |o| o.all_completed),
        median(outcomes, |o| o.cpu),
    );
}

#[tokio::main]
async fn main() {
    let rounds: usize = std::env::var("FLEET_LATE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(3);
    let peer_bin = peer_binary();
    let (mut ours_runs, mut peer_runs) = (Vec::new(), Vec::new());
    // Alternating, so that a change of the machine's load falls on both sides.
    for _ in 0..rounds {
        ours_runs.push(ours().await);
        if let Some(bin) = &peer_bin {
            peer_runs.push(peer(bin).await);
        }
    }
    println!(
        "{SCALE_SETS} scale sets x {JOBS_EACH} jobs ({TOTAL}), JobStarted/JobCompleted 1 s late, jobs 500 ms, {rounds} rounds"
    );
    report("one scaleset run:", &ours_runs);
    if peer_runs.is_empty() {
        return;
    }
    report(&format!("{SCALE_SETS} peer processes:"), &peer_runs);
    let ratio = |f: fn(&Outcome) -> Duration| {
        median(&ours_runs, f).as_secs_f64() / median(&peer_runs, f).as_secs_f64()
    };
    println!(
        "  ours / peer: all started {:.2}x, all completed {:.2}x, CPU {:.2}x",
        ratio(|o| o.all_started),
        ratio(|o| o.all_completed),
        ratio(|o| o.cpu),
    );
}
