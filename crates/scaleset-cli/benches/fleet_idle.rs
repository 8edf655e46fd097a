//! Fleet idle: 1, 100, 1,000 and 10,000 scale sets in one `scaleset run` process against one
//! simulator, against the same scale sets through one `scaleset listen` process each.
//!
//! Per size, three measurements, each against a fresh in-process simulator (50 s long poll,
//! as github.com):
//! - **simulator alone**: a bare protocol client in this process creates the scale sets and
//!   their sessions (32 requests in flight) and holds a long poll on each: the simulator's own
//!   capacity, the floor of every figure below;
//! - **one `scaleset run`** (process provisioner, no jobs): time from the spawn until every
//!   session is open and polling; its RSS, PSS and open descriptors then and after the pooled
//!   connections left from the start have gone idle (`FLEET_IDLE_SETTLE_SECS`, default 25 s,
//!   above the client's 20 s pool idle timeout); its CPU over an idle window
//!   (`FLEET_IDLE_WINDOW_SECS`, default 60 s) and whether its memory grew meanwhile; and the
//!   time from SIGTERM until it exits, with the sessions left on the simulator (none: each is
//!   deleted);
//! - **baseline**: N processes of `scaleset listen` (one per scale set, the only shape the
//!   peers allow), their RSS and PSS summed, up to `FLEET_IDLE_LISTEN_MAX` (default 1,000)
//!   processes; above that the baseline is extrapolated from the largest size measured.
//!
//! Sizes: `FLEET_IDLE_SIZES` (default `1,100,1000,10000`). The figures are printed and written
//! to `target/bench-results/fleet_idle.{json,md}` (see `support/results.rs`).
//!
//! Run with `cargo bench -p scaleset-cli --bench fleet_idle` (release build). Bounded: every
//! wait gives up after 300 s.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use scaleset_sim::{SimConfig, Simulator};
use serde_json::json;
use tokio::process::Command;

mod support;

use support::procfs::{self, Usage};
use support::results::{secs, verdict};

const DEADLINE: Duration = Duration::from_secs(300);
/// Requests the bare client keeps in flight while setting up.
const BARE_CONCURRENCY: usize = 32;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn sizes() -> Vec<usize> {
    std::env::var("FLEET_IDLE_SIZES")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| vec![1, 100, 1_000, 10_000])
}

async fn simulator() -> Simulator {
    Simulator::start(SimConfig {
        long_poll: Duration::from_secs(50),
        request_log_capacity: 100,
        ..Default::default()
    })
    .await
    .expect("the simulator starts")
}

fn names(tag: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{tag}-{i:05}")).collect()
}

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("scaleset-idle-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    dir
}

/// The simulator's own capacity for `n` scale sets.
#[derive(Debug, Clone, Copy)]
struct SimAlone {
    /// Scale sets and sessions created.
    setup: Duration,
    /// From the start until every poll was held; `None` when this process cannot hold both
    /// ends of `n` connections.
    polls_held: Option<Duration>,
}

async fn sim_alone(n: usize, nofile: u64) -> SimAlone {
    let sim = simulator().await;
    let bare = support::bare::Bare::connect(&sim, BARE_CONCURRENCY * 2).await;
    let t0 = Instant::now();
    let sessions = bare
        .create_with_sessions(&names("bare", n), BARE_CONCURRENCY)
        .await;
    let setup = t0.elapsed();
    // Both ends of every poll are in this process.
    let polls_held = if (2 * n as u64) + 512 <= nofile {
        let counters = Arc::new(support::bare::Counters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let tasks: Vec<_> = sessions
            .into_iter()
            .map(|s| {
                let (bare, c, stop) = (bare.clone(), counters.clone(), stop.clone());
                tokio::spawn(async move { bare.poll_loop(s, c, stop).await })
            })
            .collect();
        let held = support::wait_for(DEADLINE, || sim.in_flight_polls() >= n).await;
        let at = t0.elapsed();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        sim.shutdown().await;
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        held.then_some(at)
    } else {
        sim.shutdown().await;
        None
    };
    SimAlone { setup, polls_held }
}

/// One `scaleset run` holding `n` idle scale sets.
#[derive(Debug, Clone, Copy)]
struct Daemon {
    /// From the spawn until every scale set polls.
    open: Duration,
    /// Usage when every scale set polls.
    at_open: Usage,
    /// Usage after the settle time.
    settled: Usage,
    /// Usage at the end of the idle window.
    after_window: Usage,
    /// Threads after the settle time.
    threads: u64,
    /// CPU time over the idle window.
    idle_cpu: Duration,
    /// The idle window.
    window: Duration,
    /// From SIGTERM until the process exited.
    shutdown: Duration,
    /// Whether it exited within the deadline.
    exited: bool,
    /// Sessions left on the simulator after it exited.
    sessions_left: usize,
}

fn daemon_config(sim: &Simulator, dir: &std::path::Path, n: usize) -> PathBuf {
    let mut config = format!("[connection]\nurl = \"{}\"\n", sim.config_url());
    for (i, name) in names("run", n).iter().enumerate() {
        config.push_str(&format!(
            r#"
[[scale_set]]
name = "{name}"
max_runners = 5

[scale_set.provisioner]
kind = "process"
command = "{exe}"
args = ["sim-runner"]
workdir = "{work}"
"#,
            exe = env!("CARGO_BIN_EXE_scaleset"),
            work = dir.join("runners").join(i.to_string()).display(),
        ));
    }
    let path = dir.join("fleet.toml");
    std::fs::write(&path, config).expect("config written");
    path
}

async fn daemon(n: usize, settle: Duration, window: Duration) -> Daemon {
    let sim = simulator().await;
    let dir = scratch(&format!("run-{n}"));
    let config = daemon_config(&sim, &dir, n);
    let state = dir.join("state");
    let t0 = Instant::now();
    let mut child = support::spawn_run_with(
        &config,
        &sim.token(),
        &[("XDG_STATE_HOME", state.as_os_str())],
    );
    let pid = child.id().expect("the daemon runs");
    let polling = support::wait_for(DEADLINE, || sim.in_flight_polls() >= n).await;
    let open = t0.elapsed();
    assert!(
        polling,
        "scaleset run: only {} of {n} scale sets poll after {DEADLINE:?}",
        sim.in_flight_polls()
    );
    let at_open = procfs::usage(pid).expect("the daemon runs");
    tokio::time::sleep(settle).await;
    let settled = procfs::usage(pid).expect("the daemon runs");
    let threads = procfs::threads(pid).unwrap_or_default();
    let cpu0 = support::cpu_time(pid).expect("the daemon runs");
    let w0 = Instant::now();
    tokio::time::sleep(window).await;
    let idle_cpu = support::cpu_time(pid)
        .expect("the daemon runs")
        .saturating_sub(cpu0);
    let window = w0.elapsed();
    let after_window = procfs::usage(pid).expect("the daemon runs");
    let still = sim.in_flight_polls();
    assert!(
        still >= n,
        "scaleset run: {still} of {n} poll after the idle window"
    );
    let t1 = Instant::now();
    support::signal(&child, Signal::SIGTERM);
    let exited = tokio::time::timeout(Duration::from_secs(120), child.wait())
        .await
        .is_ok();
    let shutdown = t1.elapsed();
    let sessions_left = sim.state().sessions.len();
    drop(child);
    sim.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    Daemon {
        open,
        at_open,
        settled,
        after_window,
        threads,
        idle_cpu,
        window,
        shutdown,
        exited,
        sessions_left,
    }
}

/// N `scaleset listen` processes.
#[derive(Debug, Clone, Copy)]
struct Listen {
    /// From the first spawn until every scale set polls.
    open: Duration,
    /// Summed usage, 5 s after every scale set polls.
    usage: Usage,
}

async fn listen(n: usize) -> Listen {
    let sim = simulator().await;
    let bare = support::bare::Bare::connect(&sim, BARE_CONCURRENCY * 2).await;
    let ids = bare
        .create_scale_sets(&names("listen", n), BARE_CONCURRENCY)
        .await;
    let t0 = Instant::now();
    let mut children = Vec::with_capacity(n);
    for id in ids {
        let child = Command::new(env!("CARGO_BIN_EXE_scaleset"))
            .args([
                "listen",
                "--scale-set-id",
                &id.to_string(),
                "--max-runners",
                "5",
            ])
            .env("SCALESET_URL", sim.config_url())
            .env("SCALESET_TOKEN", sim.token())
            .env("NO_PROXY", "*")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("scaleset listen starts");
        children.push(child);
    }
    let polling = support::wait_for(DEADLINE, || sim.in_flight_polls() >= n).await;
    let open = t0.elapsed();
    assert!(
        polling,
        "scaleset listen: only {} of {n} processes poll",
        sim.in_flight_polls()
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pids: Vec<u32> = children
        .iter()
        .filter_map(tokio::process::Child::id)
        .collect();
    let usage = procfs::usage_of(&pids);
    for c in &children {
        support::signal(c, Signal::SIGTERM);
    }
    for mut c in children {
        let _ = tokio::time::timeout(Duration::from_secs(30), c.wait()).await;
    }
    sim.shutdown().await;
    Listen { open, usage }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// One size's figures.
struct Row {
    n: usize,
    alone: SimAlone,
    run: Daemon,
    /// Measured, or `None` above `FLEET_IDLE_LISTEN_MAX`.
    listen: Option<Listen>,
}

impl Row {
    /// RSS and PSS per scale set above the first, KiB, against `one` (the size-1 row).
    fn per_extra(&self, one: Option<&Row>) -> (f64, f64) {
        match one.filter(|o| o.n < self.n) {
            Some(o) => {
                let extra = (self.n - o.n) as f64;
                (
                    (self.run.settled.rss_kib as f64 - o.run.settled.rss_kib as f64) / extra,
                    (self.run.settled.pss_kib as f64 - o.run.settled.pss_kib as f64) / extra,
                )
            }
            None => (
                self.run.settled.rss_kib as f64 / self.n as f64,
                self.run.settled.pss_kib as f64 / self.n as f64,
            ),
        }
    }

    fn cpu_percent(&self) -> f64 {
        100.0 * self.run.idle_cpu.as_secs_f64() / self.run.window.as_secs_f64()
    }

    fn fds_per_set(&self) -> f64 {
        self.run.settled.fds as f64 / self.n as f64
    }
}

/// The baseline of `row`: measured, or scaled from the largest measured one (per process).
fn baseline(row: &Row, rows: &[Row]) -> Option<(Usage, bool)> {
    if let Some(l) = row.listen {
        return Some((l.usage, false));
    }
    let (m, l) = rows
        .iter()
        .filter_map(|r| r.listen.map(|l| (r.n, l)))
        .max_by_key(|(n, _)| *n)?;
    let f = row.n as f64 / m as f64;
    let scale = |v: u64| (v as f64 * f) as u64;
    Some((
        Usage {
            rss_kib: scale(l.usage.rss_kib),
            pss_kib: scale(l.usage.pss_kib),
            fds: scale(l.usage.fds),
        },
        true,
    ))
}

fn markdown(rows: &[Row], listen_max: usize, settle: Duration) -> String {
    let one = rows.iter().find(|r| r.n == 1);
    let mut md = String::new();
    md.push_str(&format!(
        "One `scaleset run` (process provisioner, no jobs) against one in-process simulator \
         (50 s long poll); memory and descriptors {} s after every scale set polls (pooled \
         connections left from the start idle out after 20 s); CPU over an idle window.\n\n",
        settle.as_secs()
    ));
    md.push_str(
        "| scale sets | all polling after | simulator alone: sets + sessions / polls held | RSS | PSS | per extra scale set RSS / PSS | descriptors (per scale set) | threads | idle CPU (of one core) | memory growth over the window | SIGTERM to exit (sessions left) |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let (rss_x, pss_x) = r.per_extra(one);
        let growth = r.run.after_window.rss_kib as i64 - r.run.settled.rss_kib as i64;
        md.push_str(&format!(
            "| {} | {} | {} / {} | {} | {} | {:.1} KiB / {:.1} KiB | {} ({:.2}) | {} | {:.2}% | {:+} KiB RSS in {:.0} s | {} ({}) |\n",
            r.n,
            secs(r.run.open),
            secs(r.alone.setup),
            r.alone.polls_held.map_or("not measured (descriptors)".to_string(), secs),
            mib(r.run.settled.rss_kib),
            mib(r.run.settled.pss_kib),
            rss_x,
            pss_x,
            r.run.settled.fds,
            r.fds_per_set(),
            r.run.threads,
            r.cpu_percent(),
            growth,
            r.run.window.as_secs_f64(),
            if r.run.exited { secs(r.run.shutdown) } else { "did not exit".into() },
            r.run.sessions_left,
        ));
    }
    md.push_str(&format!(
        "\nBaseline: one `scaleset listen` process per scale set (the only shape the peers \
         allow), measured up to {listen_max} processes, 5 s after every one polls.\n\n\
         | scale sets | all polling after | RSS summed | PSS summed | PSS: N processes / one `scaleset run` |\n\
         |---|---|---|---|---|\n"
    ));
    for r in rows {
        let Some((b, extrapolated)) = baseline(r, rows) else {
            continue;
        };
        let ratio = b.pss_kib as f64 / r.run.settled.pss_kib.max(1) as f64;
        md.push_str(&format!(
            "| {} | {} | {} | {} | **{:.1}x**{} |\n",
            r.n,
            r.listen.map_or("-".to_string(), |l| secs(l.open)),
            mib(b.rss_kib),
            mib(b.pss_kib),
            ratio,
            if extrapolated {
                " (baseline extrapolated linearly from the largest size measured: that many processes do not fit this machine's process and descriptor limits and two cores)"
            } else {
                ""
            },
        ));
    }
    if let Some(big) = rows.iter().max_by_key(|r| r.n) {
        let (rss_x, _) = big.per_extra(one);
        let bound = big
            .alone
            .polls_held
            .unwrap_or(big.alone.setup)
            .mul_f64(1.2)
            .max(Duration::from_secs(60));
        let ratio = baseline(big, rows)
            .map(|(b, _)| b.pss_kib as f64 / big.run.settled.pss_kib.max(1) as f64);
        md.push_str(&format!(
            "\nTargets at {} scale sets:\n\n| target | figure | verdict |\n|---|---|---|\n",
            big.n
        ));
        md.push_str(&format!(
            "| all open within max(60 s, 1.2x the simulator alone) = {} | {} | {} |\n",
            secs(bound),
            secs(big.run.open),
            verdict(big.run.open <= bound, || format!(
                "by {}",
                secs(big.run.open.saturating_sub(bound))
            ))
        ));
        md.push_str(&format!(
            "| at most 40 KB RSS per scale set | {:.1} KiB ({:.1} KB) | {} |\n",
            rss_x,
            rss_x * 1.024,
            verdict(rss_x * 1.024 <= 40.0, || format!(
                "{:.1}x",
                rss_x * 1.024 / 40.0
            ))
        ));
        md.push_str(&format!(
            "| at most 1.1 descriptors per scale set | {:.2} | {} |\n",
            big.fds_per_set(),
            verdict(big.fds_per_set() <= 1.1, || format!(
                "{:.2} over",
                big.fds_per_set() - 1.1
            ))
        ));
        md.push_str(&format!(
            "| idle CPU under 1% of a core | {:.2}% | {} |\n",
            big.cpu_percent(),
            verdict(big.cpu_percent() < 1.0, || format!(
                "{:.1}x",
                big.cpu_percent()
            ))
        ));
        md.push_str(&format!(
            "| graceful shutdown (every session deleted) within 10 s | {} ({} sessions left) | {} |\n",
            secs(big.run.shutdown),
            big.run.sessions_left,
            verdict(
                big.run.exited
                    && big.run.sessions_left == 0
                    && big.run.shutdown <= Duration::from_secs(10),
                || format!("by {}", secs(big.run.shutdown.saturating_sub(Duration::from_secs(10))))
            )
        ));
        if let Some(ratio) = ratio {
            md.push_str(&format!(
                "| N `scaleset listen` processes at least 10x the PSS | {ratio:.1}x | {} |\n",
                verdict(ratio >= 10.0, || format!("{:.1}x short", 10.0 / ratio))
            ));
        }
    }
    md
}

fn usage_json(u: &Usage) -> serde_json::Value {
    json!({"rss_kib": u.rss_kib, "pss_kib": u.pss_kib, "fds": u.fds})
}

#[tokio::main]
async fn main() {
    let nofile = support::raise_open_files();
    let settle = Duration::from_secs(env_num("FLEET_IDLE_SETTLE_SECS", 25));
    let window = Duration::from_secs(env_num("FLEET_IDLE_WINDOW_SECS", 60));
    let listen_max = env_num("FLEET_IDLE_LISTEN_MAX", 1_000) as usize;
    let mut rows = Vec::new();
    for n in sizes() {
        let alone = sim_alone(n, nofile).await;
        println!("{n} scale sets: simulator alone {alone:?}");
        let run = daemon(n, settle, window).await;
        println!("{n} scale sets: one scaleset run {run:?}");
        let listen = if n <= listen_max {
            let l = listen(n).await;
            println!("{n} scale sets: {n} scaleset listen {l:?}");
            Some(l)
        } else {
            None
        };
        rows.push(Row {
            n,
            alone,
            run,
            listen,
        });
    }
    let md = markdown(&rows, listen_max, settle);
    println!("\n{md}");
    let json = json!({
        "bench": "fleet_idle",
        "open_files_limit": nofile,
        "settle_s": settle.as_secs(),
        "rows": rows.iter().map(|r| json!({
            "scale_sets": r.n,
            "sim_alone": {
                "setup_s": r.alone.setup.as_secs_f64(),
                "polls_held_s": r.alone.polls_held.map(|d| d.as_secs_f64()),
            },
            "run": {
                "open_s": r.run.open.as_secs_f64(),
                "at_open": usage_json(&r.run.at_open),
                "settled": usage_json(&r.run.settled),
                "after_window": usage_json(&r.run.after_window),
                "threads": r.run.threads,
                "idle_cpu_s": r.run.idle_cpu.as_secs_f64(),
                "window_s": r.run.window.as_secs_f64(),
                "shutdown_s": r.run.shutdown.as_secs_f64(),
                "exited": r.run.exited,
                "sessions_left": r.run.sessions_left,
            },
            "listen": r.listen.map(|l| json!({
                "open_s": l.open.as_secs_f64(),
                "summed": usage_json(&l.usage),
            })),
        })).collect::<Vec<_>>(),
    });
    support::results::write("fleet_idle", &json, &md);
}
