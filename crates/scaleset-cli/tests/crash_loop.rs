//! Crash consistency: `scaleset run` is SIGKILLed at seeded random points of a burst (while
//! it mints JIT configs, while it starts runners, while it drains after SIGTERM) at least 20
//! times, and restarted each time on the same state and work directories. After each restart
//! the daemon must clean up what the killed one left: once the jobs so far are done, no
//! registration, no session but its own and no runner process is left, and registered
//! runners never exceed `max_runners`. In the end every job has succeeded and a drain leaves
//! nothing.
//!
//! `CRASH_SEED` (default 7) and `CRASH_KILLS` (default 20) change the schedule.

mod common;
mod soak_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use scaleset_sim::{EnqueueJobs, SimState, Simulator};
use soak_support::{Daemon, DaemonFiles, DaemonSetup, JobTally, Rng};

/// Where a kill lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KillPoint {
    /// Right after the burst is enqueued: the daemon is minting JIT configs.
    Mints,
    /// Once the first runner of the burst is registered: runners are being started.
    Starts,
    /// After SIGTERM with a drain under way (busy runners).
    Drain,
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// Records the most registered runners seen; never true (used to watch while waiting).
fn watch(peak: &Arc<AtomicUsize>) -> impl Fn(&SimState) -> bool + use<> {
    let peak = peak.clone();
    move |st| {
        peak.fetch_max(st.runners.len(), Ordering::SeqCst);
        false
    }
}

/// Waits (under `deadline`) until every job is done and nothing is registered or running
/// but what belongs to a live daemon's idle set: no registration, no runner process.
async fn settled(sim: &Simulator, files: &DaemonFiles, peak: &Arc<AtomicUsize>) -> SimState {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let p = peak.clone();
        let (done, st) = sim
            .wait_until(Duration::from_millis(500), move |st| {
                p.fetch_max(st.runners.len(), Ordering::SeqCst);
                st.jobs.iter().all(|j| j.status == "completed") && st.runners.is_empty()
            })
            .await;
        if done && soak_support::processes_under(&files.workdir).is_empty() {
            return st;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the restarted daemon did not clean up: jobs {:?}, runners {:?}, processes {:?}",
            JobTally::of(&st),
            st.runners,
            soak_support::processes_under(&files.workdir)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_mints_starts_and_drain_leaks_nothing_and_loses_no_job() {
    let seed = env_or("CRASH_SEED", 7);
    let kills = env_or("CRASH_KILLS", 20);
    let sim = common::sim_with(|c| {
        c.runner_heartbeat_timeout = Duration::from_secs(3);
        c.max_requeues = 1_000;
    })
    .await;
    let setup = DaemonSetup {
        name: "crash".into(),
        max_runners: 4,
        registration_timeout_secs: 8,
        idle_delay_secs: 1,
        drain_timeout_secs: 30,
        request_timeout_secs: 5,
    };
    let files = DaemonFiles::new("crash", &sim, &setup);
    let mut rng = Rng::new(seed);
    let peak = Arc::new(AtomicUsize::new(0));
    let mut daemon = Daemon::start(&files, &setup, 0);
    let ss = soak_support::scale_set_id(&sim, &setup.name, common::DEADLINE).await;
    let mut points = [0u32; 3];
    let mut jobs = 0u32;
    for i in 0..kills {
        assert!(
            soak_support::wait_listening(&sim, ss, common::DEADLINE).await,
            "restart {i}: the daemon listens: {}",
            daemon.log_tail()
        );
        // After each restart (and before the first kill) the daemon cleans up after its
        // predecessor and runs what is left.
        settled(&sim, &files, &peak).await;
        let point = *rng.pick(&[KillPoint::Mints, KillPoint::Starts, KillPoint::Drain]);
        let burst = u32::try_from(rng.range(2, 8)).expect("a small burst");
        jobs += burst;
        let registered_before = sim.state().runners_registered;
        sim.enqueue_jobs(EnqueueJobs {
            labels: vec![setup.name.clone()],
            count: burst,
            duration: Duration::from_millis(rng.range(200, 1_500)),
            ..Default::default()
        })
        .await
        .expect("the burst is enqueued");
        let pause = Duration::from_millis(rng.range(0, 400));
        match point {
            KillPoint::Mints => {
                points[0] += 1;
                sim.wait_until(pause, watch(&peak)).await;
            }
            KillPoint::Starts => {
                points[1] += 1;
                let p = peak.clone();
                sim.wait_until(common::DEADLINE, move |st| {
                    p.fetch_max(st.runners.len(), Ordering::SeqCst);
                    st.runners_registered > registered_before
                })
                .await;
                sim.wait_until(pause / 2, watch(&peak)).await;
            }
            KillPoint::Drain => {
                points[2] += 1;
                let p = peak.clone();
                sim.wait_until(common::DEADLINE, move |st| {
                    p.fetch_max(st.runners.len(), Ordering::SeqCst);
                    st.runners.iter().any(|r| r.job_request_id.is_some())
                })
                .await;
                daemon.signal(nix::sys::signal::Signal::SIGTERM);
                sim.wait_until(pause * 2, watch(&peak)).await;
            }
        }
        if let Some(status) = daemon.exited() {
            // A drain can finish before the kill lands: only a clean exit is acceptable.
            assert!(
                point == KillPoint::Drain && status.success(),
                "kill {i}: the daemon exited on its own ({status}): {}",
                daemon.log_tail()
            );
        }
        daemon.kill().await;
        soak_support::evict(&sim, ss);
        daemon = Daemon::start(&files, &setup, usize::try_from(i + 1).expect("small"));
    }
    assert!(
        soak_support::wait_listening(&sim, ss, common::DEADLINE).await,
        "the last restart listens: {}",
        daemon.log_tail()
    );
    let st = settled(&sim, &files, &peak).await;
    let tally = JobTally::of(&st);
    let log = daemon.log.clone();
    let code = daemon.terminate(Duration::from_secs(60)).await;
    let end = sim.state();
    let peak = peak.load(Ordering::SeqCst);
    println!(
        "crash loop seed={seed} kills={kills} (mints={} starts={} drain={}) jobs={jobs} \
         succeeded={} failed={} lost={} minted={} peak_registered={peak} leaked_registrations={} \
         leaked_sessions={} leaked_processes={}",
        points[0],
        points[1],
        points[2],
        tally.succeeded,
        tally.failed,
        tally.other + tally.open,
        end.runners_registered,
        end.runners.len(),
        end.sessions.len(),
        soak_support::processes_under(&files.workdir).len(),
    );
    assert_eq!(code, 0, "drain exits 0: {}", soak_support::log_tail(&log));
    assert_eq!(tally.total, jobs as usize, "every job was enqueued once");
    assert_eq!(
        tally.succeeded, tally.total,
        "every job succeeded: {tally:?}"
    );
    assert!(
        peak <= setup.max_runners as usize,
        "registered runners never exceed max_runners ({}): saw {peak}",
        setup.max_runners
    );
    // Each kill can orphan at most the runners in flight (max_runners), each re-minted once.
    let bound = u64::from(jobs) + kills * u64::from(setup.max_runners);
    assert!(
        end.runners_registered <= bound,
        "JIT configs minted {} > jobs + kills x max_runners = {bound}",
        end.runners_registered
    );
    assert!(end.runners.is_empty(), "no registration: {:?}", end.runners);
    assert!(end.sessions.is_empty(), "no session: {:?}", end.sessions);
    assert!(
        soak_support::processes_under(&files.workdir).is_empty(),
        "no runner process"
    );
    drop(files);
    sim.shutdown().await;
}
