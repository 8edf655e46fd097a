//! The fault soak: the real `scaleset run` (process provisioner, `scaleset sim-runner` per
//! runner) against the in-process simulator while a seeded fault schedule fires on every
//! request class, the runners misbehave, and the daemon is SIGKILLed and restarted once.
//!
//! The simulator's state is sampled every 200 ms; the invariants (see [`check`]) hold at
//! every sample and at the end. A summary line per seed is printed (`--nocapture` shows
//! it). The short version runs in `cargo test`; the long one is the same code:
//!
//! ```text
//! SOAK_JOBS=2500 SOAK_SEEDS=1,2 cargo test -p scaleset-cli --test soak -- --nocapture
//! ```
//!
//! `SOAK_MAX_RUNNERS` (default 6) sets `max_runners`.

mod common;
mod soak_support;

use std::collections::BTreeMap;
use std::time::Duration;

use scaleset_sim::{EndpointClass, EnqueueJobs, Fault, SimState};
use soak_support::{Daemon, DaemonFiles, DaemonSetup, JobTally, Rng};
use tokio::time::Instant;

/// Request classes the schedule faults (the simulated runners' own API is left alone: a
/// fault there is a runner fault, and those are injected as such).
const CLASSES: [EndpointClass; 7] = [
    EndpointClass::Github,
    EndpointClass::Scaleset,
    EndpointClass::Jit,
    EndpointClass::Runner,
    EndpointClass::Session,
    EndpointClass::Message,
    EndpointClass::Acquire,
];

/// Runner behaviours the schedule injects, by the simulator's name.
const RUNNER_FAULTS: [&str; 4] = ["neverOnline", "crashMidJob", "crashBeforeJob", "failJob"];

/// One soak's parameters.
#[derive(Debug, Clone)]
struct Soak {
    seed: u64,
    jobs: u32,
    max_runners: u32,
}

/// What a soak measured.
#[derive(Debug, Default)]
struct Report {
    seed: u64,
    jobs: JobTally,
    /// Faults injected, by kind.
    faults: BTreeMap<String, u64>,
    /// Request faults injected on the JIT class whose answer may be lost after the runner
    /// was registered (late answer past the timeout, mangled body).
    uncertain_mints: u64,
    /// Fault injections after which jobs completed again.
    recoveries: u64,
    /// Longest time from a fault's injection to the next job completion.
    longest_recovery: Duration,
    /// JIT configs minted (runners ever registered).
    minted: u64,
    /// Most registered runners seen at once.
    peak_registered: usize,
    /// Samples where the registered runners exceeded `max_runners`.
    over_max_samples: u64,
    /// Runner faults consumed by a runner, by behaviour.
    runner_faults_consumed: BTreeMap<String, u64>,
    /// Daemon exits not caused by the test.
    daemon_exits: u64,
    /// Registrations, sessions and runner processes left after the final drain.
    leaked_registrations: usize,
    leaked_sessions: usize,
    leaked_processes: usize,
    /// Wall time of the soak.
    elapsed: Duration,
    /// Broken invariants, in words.
    failures: Vec<String>,
    /// Request faults dropped because the daemon did not meet them within 3 s.
    unmet_faults: u64,
}

impl Report {
    fn consumed(&self, behaviour: &str) -> u64 {
        self.runner_faults_consumed
            .get(behaviour)
            .copied()
            .unwrap_or(0)
    }

    /// Jobs whose failure a designed fault explains: a runner that crashed mid-job or was
    /// told to fail its job fails at most one job each.
    fn justified_failures(&self) -> u64 {
        self.consumed("crashMidJob") + self.consumed("failJob")
    }

    /// Mints beyond one per job that the faults justify: a runner that crashed before its
    /// job or never came online is replaced; a mint whose answer was lost registers one
    /// runner nobody runs; the kill can orphan every runner in flight (`max_runners`); a
    /// requeued job is assigned again.
    fn justified_extra_mints(&self, max_runners: u32) -> u64 {
        self.consumed("crashBeforeJob")
            + self.consumed("neverOnline")
            + self.uncertain_mints
            + u64::from(max_runners)
            + self.jobs.requeues
    }

    fn over_provisioned(&self) -> i64 {
        let needed =
            self.jobs.total as u64 + self.consumed("crashBeforeJob") + self.consumed("neverOnline");
        i64::try_from(self.minted).unwrap_or(i64::MAX) - i64::try_from(needed).unwrap_or(0)
    }

    fn summary(&self) -> String {
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        format!(
            "soak seed={} jobs={} succeeded={} failed={} (justified<={}) lost={} faults[{}] total_faults={} \
             recoveries={} longest_recovery={:.1}s minted={} over_provisioned={} peak_registered={} \
             over_max_samples={} leaked_registrations={} leaked_sessions={} leaked_processes={} \
             daemon_exits={} unmet_faults_dropped={} elapsed={:.0}s",
            self.seed,
            self.jobs.total,
            self.jobs.succeeded,
            self.jobs.failed,
            self.justified_failures(),
            self.jobs.other + self.jobs.open,
            faults.join(" "),
            self.faults.values().sum::<u64>(),
            self.recoveries,
            self.longest_recovery.as_secs_f64(),
            self.minted,
            self.over_provisioned(),
            self.peak_registered,
            self.over_max_samples,
            self.leaked_registrations,
            self.leaked_sessions,
            self.leaked_processes,
            self.daemon_exits,
            self.unmet_faults,
            self.elapsed.as_secs_f64(),
        )
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn seeds() -> Vec<u64> {
    std::env::var("SOAK_SEEDS")
        .ok()
        .map(|v| {
            v.split(',')
                .filter_map(|s| s.trim().parse().ok())
                .collect::<Vec<u64>>()
        })
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| vec![1])
}

fn fault(v: serde_json::Value) -> Fault {
    serde_json::from_value(v).expect("the schedule writes valid faults")
}

/// One fault of the schedule, and the kind it is counted as.
fn next_fault(rng: &mut Rng, ss: i64) -> (String, Vec<Fault>, Option<Duration>) {
    let class = *rng.pick(&CLASSES);
    let cname = serde_json::to_value(class)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    match rng.range(0, 13) {
        0 | 1 => {
            let status = *rng.pick(&[500u16, 502, 503, 504]);
            let count = rng.range(1, 4);
            let retry = rng.chance(50);
            let mut v = serde_json::json!({"kind": "status", "class": cname, "status": status, "count": count});
            if retry {
                v["retryAfter"] = 1.into();
            }
            ("5xx".into(), vec![fault(v)], None)
        }
        2 => (
            "429".into(),
            vec![fault(serde_json::json!({
                "kind": "status", "class": cname, "status": 429, "count": rng.range(1, 3), "retryAfter": 1
            }))],
            None,
        ),
        3 => (
            "dropConnection".into(),
            vec![fault(
                serde_json::json!({"kind": "dropConnection", "class": cname, "count": rng.range(1, 2)}),
            )],
            None,
        ),
        4 => (
            "latencyPastTimeout".into(),
            vec![fault(serde_json::json!({
                "kind": "latency", "class": cname, "delayMs": 2500, "count": 1, "after": true
            }))],
            None,
        ),
        5 => {
            let kind = *rng.pick(&["bom", "truncatedJson", "malformedJson"]);
            (
                kind.into(),
                vec![fault(
                    serde_json::json!({"kind": kind, "class": cname, "count": 1}),
                )],
                None,
            )
        }
        6 => (
            "expireQueueToken".into(),
            vec![Fault::ExpireQueueToken {
                scale_set_id: Some(ss),
            }],
            None,
        ),
        7 => (
            "expireAdminToken".into(),
            vec![Fault::ExpireAdminToken],
            None,
        ),
        8 => (
            "evictSession".into(),
            vec![Fault::EvictSession {
                scale_set_id: Some(ss),
            }],
            None,
        ),
        9 => (
            "foreignSession".into(),
            vec![
                Fault::EvictSession {
                    scale_set_id: Some(ss),
                },
                Fault::ForeignSession {
                    scale_set_id: ss,
                    owner_name: Some("someone-else".into()),
                },
            ],
            Some(Duration::from_millis(rng.range(500, 3000))),
        ),
        _ => {
            let kind = *rng.pick(&RUNNER_FAULTS);
            let name = format!("runner{}{}", kind[..1].to_uppercase(), &kind[1..]);
            (
                kind.into(),
                vec![fault(serde_json::json!({"kind": name, "count": 1}))],
                None,
            )
        }
    }
}

fn is_uncertain_mint(kind: &str, f: &Fault) -> bool {
    let jit = serde_json::to_value(f)
        .map(|v| v["class"] == "jit")
        .unwrap_or(false);
    jit && matches!(
        kind,
        "latencyPastTimeout" | "bom" | "truncatedJson" | "malformedJson"
    )
}

/// The invariants a sample must show; `Err` names the first broken one.
fn check(st: &SimState, max_runners: u32) -> Result<(), String> {
    if st.runners.len() > max_runners as usize {
        let runners: Vec<String> = st
            .runners
            .iter()
            .map(|r| {
                format!(
                    "{}(id {}, online {}, job {:?})",
                    r.name, r.id, r.online, r.job_request_id
                )
            })
            .collect();
        return Err(format!(
            "{} runners registered, max_runners is {max_runners}: {}",
            st.runners.len(),
            runners.join(", ")
        ));
    }
    if let Some(e) = &st.reaper_error {
        return Err(format!("the simulator's timers died: {e}"));
    }
    Ok(())
}

async fn soak(cfg: Soak) -> Report {
    let started = Instant::now();
    let jobs_total = cfg.jobs as usize;
    let sim = common::sim_with(|c| {
        // GHES assignment: jobs are offered, then acquired, so `acquire` is a class in use.
        c.mode = scaleset_sim::AssignmentMode::Ghes;
        c.runner_heartbeat_timeout = Duration::from_secs(2);
        // A session whose create answer was lost to the client's timeout is the daemon's own
        // but unknown to it: its retry conflicts and it waits as a hot standby until the
        // service drops the silent session. 10 s stands for the service's expiry here.
        c.session_idle_timeout = Duration::from_secs(10);
        c.assignment_timeout = Duration::from_secs(30);
        c.max_requeues = 1_000;
        c.completed_jobs_capacity = jobs_total + 1_000;
        c.request_log_capacity = 1_000;
    })
    .await;
    let setup = DaemonSetup {
        name: format!("soak{}", cfg.seed),
        max_runners: cfg.max_runners,
        registration_timeout_secs: 8,
        idle_delay_secs: 2,
        drain_timeout_secs: 60,
        request_timeout_secs: 2,
    };
    let files = DaemonFiles::new("soak", &sim, &setup);
    let mut generation = 0;
    let mut daemon = Daemon::start(&files, &setup, generation);
    let ss = soak_support::scale_set_id(&sim, &setup.name, common::DEADLINE).await;
    assert!(
        soak_support::wait_listening(&sim, ss, common::DEADLINE).await,
        "the daemon listens: {}",
        daemon.log_tail()
    );

    let mut rng = Rng::new(cfg.seed);
    let mut report = Report {
        seed: cfg.seed,
        ..Report::default()
    };
    let mut runner_injected: BTreeMap<String, u64> = BTreeMap::new();
    let mut enqueued = 0usize;
    let mut release_at: Option<Instant> = None;
    let mut open_faults: Vec<Instant> = Vec::new();
    let mut killed = false;
    let mut last_completed = 0usize;
    let mut last_progress = Instant::now();
    // A generous bound: ~4 jobs/s on two cores is the slowest seen; no progress for this
    // long with jobs outstanding fails the soak.
    let stall_limit = Duration::from_secs(120);
    let mut violations: Vec<String> = Vec::new();
    let mut recent_faults: Vec<String> = Vec::new();
    let mut pending_since: Option<Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        tick.tick().await;
        let now = Instant::now();
        let st = sim.state();
        let tally = JobTally::of(&st);
        report.peak_registered = report.peak_registered.max(st.runners.len());
        if let Err(e) = check(&st, cfg.max_runners) {
            report.over_max_samples += 1;
            if violations.len() < 5 {
                let recent: Vec<&String> = recent_faults.iter().rev().take(4).collect();
                violations.push(format!(
                    "{e} (at {:.1}s; daemon generation {generation}; recent faults {recent:?})",
                    started.elapsed().as_secs_f64()
                ));
            }
        }
        let completed = tally.succeeded + tally.failed + tally.other;
        if completed > last_completed {
            for t in open_faults.drain(..) {
                report.recoveries += 1;
                report.longest_recovery = report.longest_recovery.max(now - t);
            }
            last_completed = completed;
            last_progress = now;
        }
        if enqueued == jobs_total && tally.open == 0 {
            break;
        }
        assert!(
            now - last_progress < stall_limit,
            "no job completed for {stall_limit:?} ({} of {jobs_total} done; {tally:?}): {}",
            completed,
            log_of(&daemon)
        );

        if let Some(status) = daemon.exited() {
            report.daemon_exits += 1;
            eprintln!(
                "the daemon exited on its own ({status}); restarting it:\n{}",
                daemon.log_tail()
            );
            soak_support::evict(&sim, ss);
            generation += 1;
            daemon = Daemon::start(&files, &setup, generation);
        }

        // Jobs arrive in bursts until the total is reached.
        if enqueued < jobs_total && rng.chance(60) {
            let n = (rng.range(1, 10) as usize).min(jobs_total - enqueued);
            sim.enqueue_jobs(EnqueueJobs {
                labels: vec![setup.name.clone()],
                count: u32::try_from(n).expect("a burst is small"),
                duration: Duration::from_millis(rng.range(0, 400)),
                ..Default::default()
            })
            .await
            .expect("the jobs are enqueued");
            enqueued += n;
        }

        if let Some(at) = release_at
            && now >= at
        {
            sim.faults()
                .inject(Fault::ReleaseForeignSession { scale_set_id: ss })
                .expect("release is a valid fault");
            release_at = None;
        }

        // The one SIGKILL + restart, halfway.
        if !killed && completed >= jobs_total / 2 {
            killed = true;
            daemon.kill().await;
            *report.faults.entry("sigkill".into()).or_default() += 1;
            recent_faults.push(format!(
                "sigkill at {:.1}s",
                started.elapsed().as_secs_f64()
            ));
            open_faults.push(now);
            soak_support::evict(&sim, ss);
            generation += 1;
            daemon = Daemon::start(&files, &setup, generation);
            continue;
        }

        // A request fault on a class the daemon rarely uses (the GitHub REST side is called
        // once per admin token) would block the schedule: unmet after 3 s, it is dropped.
        if faults_pending(&sim) {
            let since = *pending_since.get_or_insert(now);
            if now - since > Duration::from_secs(3) {
                drop_unmet_request_faults(&sim, ss, release_at.is_some());
                report.unmet_faults += 1;
                pending_since = None;
            }
        } else {
            pending_since = None;
        }

        // Up to two faults a second while jobs are still arriving or running; a new one only
        // once the daemon has met the last (faults nobody consumes would pile up while the
        // daemon backs off, and one burst would become an outage).
        if rng.chance(40) {
            let (kind, faults, hold) = next_fault(&mut rng, ss);
            if (hold.is_some() && release_at.is_some()) || faults_pending(&sim) {
                continue;
            }
            for f in &faults {
                if is_uncertain_mint(&kind, f) {
                    report.uncertain_mints += 1;
                }
                sim.faults().inject(f.clone()).expect("a valid fault");
            }
            if RUNNER_FAULTS.contains(&kind.as_str()) {
                *runner_injected.entry(kind.clone()).or_default() += 1;
            }
            if let Some(h) = hold {
                release_at = Some(now + h);
            }
            recent_faults.push(format!(
                "{kind} {} at {:.1}s",
                serde_json::to_string(&faults).unwrap_or_default(),
                started.elapsed().as_secs_f64()
            ));
            *report.faults.entry(kind).or_default() += 1;
            open_faults.push(now);
        }
    }

    // The end: runner faults no runner consumed are not counted; the rest is cleared.
    for (kind, n) in &runner_injected {
        let left = soak_support::pending_runner_faults(&sim, kind);
        report
            .runner_faults_consumed
            .insert(kind.clone(), n.saturating_sub(left));
    }
    sim.faults().clear();
    let st = sim.state();
    report.jobs = JobTally::of(&st);
    if let Some(status) = daemon.exited() {
        report.daemon_exits += 1;
        eprintln!(
            "the daemon exited on its own ({status}):\n{}",
            daemon.log_tail()
        );
        soak_support::evict(&sim, ss);
        generation += 1;
        daemon = Daemon::start(&files, &setup, generation);
        soak_support::wait_listening(&sim, ss, common::DEADLINE).await;
    }
    let log = daemon.log.clone();
    let code = daemon.terminate(Duration::from_secs(90)).await;
    // Registrations whose removal was in flight are answered before the daemon exits; give
    // the simulator's heartbeat timer time for nothing: it is read once.
    let st = sim.state();
    report.minted = st.runners_registered;
    report.leaked_registrations = st.runners.len();
    report.leaked_sessions = st.sessions.len();
    report.leaked_processes = soak_support::processes_under(&files.workdir).len();
    report.elapsed = started.elapsed();
    println!("{}", report.summary());

    // Every broken invariant is collected, so a long run reports each seed in full.
    let mut failures = violations
        .iter()
        .map(|v| format!("invariant broken: {v}"))
        .collect::<Vec<_>>();
    let mut expect = |ok: bool, what: String| {
        if !ok {
            failures.push(what);
        }
    };
    expect(
        code == 0,
        format!(
            "drain + SIGTERM exits 0, got {code}: {}",
            soak_support::log_tail(&log)
        ),
    );
    expect(
        report.daemon_exits == 0,
        format!("the daemon exited on its own {} times", report.daemon_exits),
    );
    expect(
        (report.jobs.other, report.jobs.open) == (0, 0),
        format!("every job completes succeeded or failed: {:?}", report.jobs),
    );
    expect(
        report.jobs.failed as u64 <= report.justified_failures(),
        format!(
            "only designed faults fail jobs: {} failed, {} justified",
            report.jobs.failed,
            report.justified_failures()
        ),
    );
    let bound = jobs_total as u64 + report.justified_extra_mints(cfg.max_runners);
    expect(
        report.minted <= bound,
        format!(
            "JIT configs minted {} > jobs + justified replacements {bound}",
            report.minted
        ),
    );
    expect(
        (
            report.leaked_registrations,
            report.leaked_sessions,
            report.leaked_processes,
        ) == (0, 0, 0),
        format!(
            "nothing is left after drain: runners {:?} sessions {:?} processes {}",
            st.runners, st.sessions, report.leaked_processes
        ),
    );
    if !failures.is_empty() {
        println!("seed {}: logs kept in {}", cfg.seed, files.root.display());
    }
    report.failures = failures;
    let mut files = files;
    files.keep = !report.failures.is_empty();
    drop(files);
    sim.shutdown().await;
    report
}

/// Whether request or runner faults injected earlier are still waiting to be met.
fn faults_pending(sim: &scaleset_sim::Simulator) -> bool {
    let p = sim.faults().pending();
    let empty = |v: &serde_json::Value| v.as_array().is_none_or(|a| a.is_empty());
    !(empty(&p["requestFaults"]["responses"])
        && empty(&p["requestFaults"]["latency"])
        && p["runnerFaults"].as_array().is_none_or(|a| a.len() < 2))
}

/// Clears the request faults nobody met, keeping the runner faults and a foreign session.
fn drop_unmet_request_faults(sim: &scaleset_sim::Simulator, ss: i64, foreign: bool) {
    let p = sim.faults().pending();
    let runner: Vec<String> = p["runnerFaults"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|b| b.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    sim.faults().clear();
    for kind in runner {
        let name = format!("runner{}{}", kind[..1].to_uppercase(), &kind[1..]);
        sim.faults()
            .inject(fault(serde_json::json!({"kind": name, "count": 1})))
            .expect("a valid runner fault");
    }
    if foreign {
        sim.faults()
            .inject(Fault::ForeignSession {
                scale_set_id: ss,
                owner_name: Some("someone-else".into()),
            })
            .expect("a valid fault");
    }
}

fn log_of(d: &Daemon) -> String {
    d.log_tail()
}

/// The short soak (CI): a few hundred jobs, one seed, every fault class.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_soak_every_job_completes_nothing_leaks_limits_hold() {
    let jobs = env_or("SOAK_JOBS", 400u32);
    let max_runners = env_or("SOAK_MAX_RUNNERS", 6u32);
    let mut failures = Vec::new();
    for seed in seeds() {
        let report = soak(Soak {
            seed,
            jobs,
            max_runners,
        })
        .await;
        failures.extend(report.failures.iter().map(|f| format!("seed {seed}: {f}")));
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Found by the soak: a JIT answer that arrives unreadable (the service registered the
/// runner all the same) must keep its slot: registered runners never exceed `max_runners`
/// while that registration waits to be found and removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_mint_answer_keeps_registrations_within_max_runners() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let sim = common::sim().await;
    let setup = DaemonSetup {
        name: "unreadable".into(),
        max_runners: 1,
        registration_timeout_secs: 30,
        idle_delay_secs: 2,
        drain_timeout_secs: 30,
        request_timeout_secs: 5,
    };
    let files = DaemonFiles::new("unreadable", &sim, &setup);
    let daemon = Daemon::start(&files, &setup, 0);
    let ss = soak_support::scale_set_id(&sim, &setup.name, common::DEADLINE).await;
    assert!(
        soak_support::wait_listening(&sim, ss, common::DEADLINE).await,
        "the daemon listens: {}",
        daemon.log_tail()
    );
    sim.faults()
        .inject(fault(
            serde_json::json!({"kind": "truncatedJson", "class": "jit", "count": 1}),
        ))
        .expect("a valid fault");
    sim.enqueue_jobs(EnqueueJobs {
        labels: vec![setup.name.clone()],
        count: 3,
        duration: Duration::from_millis(200),
        ..Default::default()
    })
    .await
    .expect("the jobs are enqueued");
    let peak = Arc::new(AtomicUsize::new(0));
    let p = peak.clone();
    let (done, st) = sim
        .wait_until(Duration::from_secs(60), move |st| {
            p.fetch_max(st.runners.len(), Ordering::SeqCst);
            st.jobs.len() == 3 && st.jobs.iter().all(|j| j.status == "completed")
        })
        .await;
    assert!(done, "every job completes: {:?}", JobTally::of(&st));
    let code = daemon.terminate(Duration::from_secs(60)).await;
    assert_eq!(code, 0);
    let st = sim.state();
    assert!(st.runners.is_empty(), "nothing is left: {:?}", st.runners);
    assert!(
        st.runners_registered >= 4,
        "the unreadable answer registered a runner too: {}",
        st.runners_registered
    );
    let peak = peak.load(Ordering::SeqCst);
    assert!(
        peak <= 1,
        "registered runners never exceed max_runners 1: saw {peak}"
    );
    drop(files);
    sim.shutdown().await;
}

/// Found by the soak: a daemon (re)started while the scale-set lookup answers 200 with a
/// garbled body must wait and retry like for a 5xx, not exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbled_scale_set_answer_at_start_up_is_retried_not_fatal() {
    let sim = common::sim().await;
    let setup = DaemonSetup {
        name: "garbled".into(),
        max_runners: 1,
        registration_timeout_secs: 30,
        idle_delay_secs: 2,
        drain_timeout_secs: 30,
        request_timeout_secs: 5,
    };
    let files = DaemonFiles::new("garbled", &sim, &setup);
    // The first scale-set lookups of the daemon read a truncated and a malformed answer.
    for kind in ["truncatedJson", "malformedJson"] {
        sim.faults()
            .inject(fault(serde_json::json!({
                "kind": kind, "class": "scaleset", "method": "GET", "count": 1
            })))
            .expect("a valid fault");
    }
    let mut daemon = Daemon::start(&files, &setup, 0);
    let ss = soak_support::scale_set_id(&sim, &setup.name, common::DEADLINE).await;
    assert!(
        soak_support::wait_listening(&sim, ss, common::DEADLINE).await,
        "the daemon listens: {}",
        daemon.log_tail()
    );
    assert!(daemon.exited().is_none(), "{}", daemon.log_tail());
    let log = std::fs::read_to_string(&daemon.log).unwrap_or_default();
    assert!(
        log.contains("GitHub may be having a bad minute, retrying"),
        "{log}"
    );
    assert_eq!(daemon.terminate(Duration::from_secs(60)).await, 0);
    drop(files);
    sim.shutdown().await;
}
