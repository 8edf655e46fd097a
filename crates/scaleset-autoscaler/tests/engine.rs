//! Engine tests: the fake provisioner, the simulator for GitHub's side (JIT, remove runner),
//! a paused clock. The Scaler methods are driven directly, as the listener would.

use std::time::Duration;

use actions_scaleset::{
    Client, Credentials, DEFAULT_RUNNER_GROUP_ID, JobCompleted, JobMessageBase, JobStarted,
    RunnerId, RunnerRequestId, RunnerScaleSet, Scaler,
};
use scaleset_autoscaler::config::ShutdownPolicy;
use scaleset_autoscaler::engine::{Engine, EngineSettings, Phase};
use scaleset_autoscaler::metrics::ScaleSetMetrics;
use scaleset_autoscaler::provisioner::fake::FakeProvisioner;
use scaleset_autoscaler::provisioner::{ExitStatus, OwnedRunner, RunnerState};
use scaleset_sim::{SimConfig, Simulator};

const WAIT: Duration = Duration::from_secs(600);

struct Env {
    sim: Simulator,
    engine: Engine<FakeProvisioner>,
    fake: FakeProvisioner,
    client: Client,
}

async fn env(create_delay: Duration, tune: impl FnOnce(&mut EngineSettings)) -> Env {
    let sim = Simulator::start(SimConfig::default())
        .await
        .expect("sim starts");
    let client = Client::builder(
        sim.config_url(),
        Credentials::token(sim.token()).expect("token"),
    )
    .build()
    .expect("client");
    let set = client
        .create_runner_scale_set(&RunnerScaleSet {
            name: "eng".into(),
            runner_group_id: DEFAULT_RUNNER_GROUP_ID,
            ..Default::default()
        })
        .await
        .expect("scale set");
    let mut settings = EngineSettings::new(set.id, "eng");
    settings.max_runners = 100;
    settings.idle_delay = Duration::from_secs(30);
    tune(&mut settings);
    let fake = FakeProvisioner::new(create_delay);
    let engine = Engine::new(
        settings,
        client.clone(),
        fake.clone(),
        ScaleSetMetrics::detached("eng"),
    );
    engine.spawn();
    Env {
        sim,
        engine,
        fake,
        client,
    }
}

fn started(runner: &str, request_id: i64) -> JobStarted {
    JobStarted {
        base: JobMessageBase {
            message_type: "JobStarted".into(),
            runner_request_id: RunnerRequestId::new(request_id),
            job_id: format!("job-{request_id}"),
            ..Default::default()
        },
        runner_id: RunnerId::new(0),
        runner_name: runner.into(),
    }
}

fn completed(runner: &str, request_id: i64) -> JobCompleted {
    JobCompleted {
        base: JobMessageBase {
            message_type: "JobCompleted".into(),
            runner_request_id: RunnerRequestId::new(request_id),
            job_id: format!("job-{request_id}"),
            ..Default::default()
        },
        result: "succeeded".into(),
        runner_id: RunnerId::new(0),
        runner_name: runner.into(),
    }
}

async fn running(env: &Env, n: usize) -> Vec<String> {
    env.fake
        .wait_until(WAIT, |r| r.len() == n)
        .await
        .unwrap_or_else(|r| panic!("expected {n} running runners, got {r:?}"))
}

async fn idle(env: &Env, n: usize) {
    env.engine
        .wait_until(WAIT, |s| s.idle == n && s.starting == 0)
        .await
        .unwrap_or_else(|s| panic!("expected {n} idle runners: {s:?}"));
}

#[tokio::test(start_paused = true)]
async fn burst_of_50_starts_50_runners_with_bounded_concurrency() {
    let env = env(Duration::from_secs(1), |_| {}).await;
    let target = env
        .engine
        .handle_desired_runner_count(50)
        .await
        .expect("ok");
    assert_eq!(target, 50);
    running(&env, 50).await;
    idle(&env, 50).await;
    assert_eq!(env.fake.created().len(), 50);
    let max = env.fake.max_in_flight();
    assert!(max <= 16, "at most 16 starts in flight, saw {max}");
    assert!(max >= 8, "starts run in parallel, saw {max}");
    // The GitHub side has the 50 registrations.
    let state = env.sim.state();
    assert_eq!(state.runners.len(), 50);
}

#[tokio::test(start_paused = true)]
async fn target_is_capped_by_max_runners() {
    let env = env(Duration::ZERO, |s| s.max_runners = 5).await;
    assert_eq!(
        env.engine
            .handle_desired_runner_count(50)
            .await
            .expect("ok"),
        5
    );
    running(&env, 5).await;
    idle(&env, 5).await;
    assert_eq!(env.fake.created().len(), 5);
}

#[tokio::test(start_paused = true)]
async fn scales_to_zero_after_jobs_and_after_idle_delay() {
    let env = env(Duration::ZERO, |_| {}).await;
    env.engine.handle_desired_runner_count(3).await.expect("ok");
    let names = running(&env, 3).await;
    idle(&env, 3).await;
    // Two runners take jobs and finish; the third never gets one.
    for (i, n) in names.iter().take(2).enumerate() {
        env.engine
            .handle_job_started(&started(n, i as i64 + 1))
            .await
            .expect("ok");
    }
    env.engine.handle_desired_runner_count(3).await.expect("ok");
    for (i, n) in names.iter().take(2).enumerate() {
        env.engine
            .handle_job_completed(&completed(n, i as i64 + 1))
            .await
            .expect("ok");
        env.engine
            .handle_desired_runner_count(2 - i as i64 - 1)
            .await
            .expect("ok");
        env.fake.exit(n, true);
    }
    env.engine
        .wait_until(WAIT, |s| s.runners.is_empty())
        .await
        .unwrap_or_else(|s| panic!("scaled to zero: {s:?}"));
    assert_eq!(env.fake.created().len(), 3, "no replacement runners");
    assert_eq!(
        env.fake.stopped(),
        vec![names[2].clone()],
        "the idle one was stopped"
    );
    assert!(env.fake.running().is_empty());
    // Its registration was removed from GitHub.
    let (ok, state) = env
        .sim
        .wait_until(Duration::from_secs(5), |st| {
            !st.runners.iter().any(|r| r.name == names[2])
        })
        .await;
    assert!(ok, "{:?}", state.runners);
}

#[tokio::test(start_paused = true)]
async fn min_runners_stay_warm_under_and_after_load() {
    let env = env(Duration::ZERO, |s| s.min_runners = 2).await;
    env.engine.handle_desired_runner_count(0).await.expect("ok");
    running(&env, 2).await;
    env.engine.handle_desired_runner_count(3).await.expect("ok");
    let names = running(&env, 5).await;
    idle(&env, 5).await;
    for (i, n) in names.iter().take(3).enumerate() {
        env.engine
            .handle_job_started(&started(n, i as i64))
            .await
            .expect("ok");
    }
    for (i, n) in names.iter().take(3).enumerate() {
        env.engine
            .handle_job_completed(&completed(n, i as i64))
            .await
            .expect("ok");
        env.fake.exit(n, true);
    }
    env.engine.handle_desired_runner_count(0).await.expect("ok");
    let snap = env
        .engine
        .wait_until(WAIT, |s| s.runners.len() == 2 && s.idle == 2)
        .await
        .unwrap_or_else(|s| panic!("two warm runners: {s:?}"));
    assert_eq!(snap.target, 2);
    // Long after the idle delay, the warm runners are still there.
    tokio::time::sleep(Duration::from_secs(300)).await;
    assert_eq!(env.engine.snapshot().idle, 2);
    assert!(env.fake.stopped().is_empty());
    assert_eq!(env.fake.created().len(), 5);
}

#[tokio::test(start_paused = true)]
async fn busy_runners_are_never_stopped() {
    let env = env(Duration::ZERO, |_| {}).await;
    env.engine.handle_desired_runner_count(2).await.expect("ok");
    let names = running(&env, 2).await;
    idle(&env, 2).await;
    env.engine
        .handle_job_started(&started(&names[0], 7))
        .await
        .expect("ok");
    // Demand drops to zero although the job still runs (e.g. a stale count).
    env.engine.handle_desired_runner_count(0).await.expect("ok");
    env.fake
        .wait_until(WAIT, |r| r.len() == 1)
        .await
        .unwrap_or_else(|r| panic!("only the idle runner stops: {r:?}"));
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(env.fake.running(), vec![names[0].clone()]);
    assert_eq!(env.fake.stopped(), vec![names[1].clone()]);
    let snap = env.engine.snapshot();
    assert_eq!(snap.busy, 1);
}

#[tokio::test(start_paused = true)]
async fn a_crashed_runner_is_removed_and_replaced() {
    let env = env(Duration::ZERO, |_| {}).await;
    env.engine.handle_desired_runner_count(1).await.expect("ok");
    let first = running(&env, 1).await.remove(0);
    idle(&env, 1).await;
    assert!(env.sim.state().runners.iter().any(|r| r.name == first));
    env.fake.exit(&first, false);
    let now = env
        .fake
        .wait_until(WAIT, |r| r.len() == 1 && r[0] != first)
        .await
        .unwrap_or_else(|r| panic!("replaced: {r:?}"));
    assert_ne!(now[0], first);
    assert_eq!(env.fake.created().len(), 2);
    let (ok, st) = env
        .sim
        .wait_until(Duration::from_secs(5), |st| {
            !st.runners.iter().any(|r| r.name == first)
        })
        .await;
    assert!(
        ok,
        "the crashed runner is removed from GitHub: {:?}",
        st.runners
    );
}

#[tokio::test(start_paused = true)]
async fn a_runner_that_never_takes_a_job_is_removed_after_the_grace_period() {
    let env = env(Duration::ZERO, |s| {
        s.registration_timeout = Duration::from_secs(120);
    })
    .await;
    env.engine.handle_desired_runner_count(1).await.expect("ok");
    let first = running(&env, 1).await.remove(0);
    idle(&env, 1).await;
    let before = tokio::time::Instant::now();
    let now = env
        .fake
        .wait_until(WAIT, |r| r.len() == 1 && r[0] != first)
        .await
        .unwrap_or_else(|r| panic!("replaced: {r:?}"));
    assert!(
        before.elapsed() >= Duration::from_secs(120),
        "not before the grace period"
    );
    assert_eq!(env.fake.stopped(), vec![first.clone()]);
    assert_ne!(now[0], first);
    assert!(!env.sim.state().runners.iter().any(|r| r.name == first));
}

#[tokio::test(start_paused = true)]
async fn idle_warm_runners_without_waiting_jobs_are_not_broken() {
    let env = env(Duration::ZERO, |s| {
        s.min_runners = 1;
        s.registration_timeout = Duration::from_secs(10);
    })
    .await;
    env.engine.handle_desired_runner_count(0).await.expect("ok");
    running(&env, 1).await;
    tokio::time::sleep(Duration::from_secs(100)).await;
    assert!(env.fake.stopped().is_empty());
    assert_eq!(env.fake.created().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn job_completed_for_an_unknown_runner_is_ignored() {
    let env = env(Duration::ZERO, |_| {}).await;
    env.engine.handle_desired_runner_count(1).await.expect("ok");
    running(&env, 1).await;
    idle(&env, 1).await;
    let before = env.engine.snapshot();
    env.engine
        .handle_job_completed(&completed("someone-else", 9))
        .await
        .expect("ok");
    env.engine
        .handle_job_completed(&completed("", 0))
        .await
        .expect("ok");
    env.engine
        .handle_job_started(&started("someone-else", 9))
        .await
        .expect("ok");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(env.engine.snapshot(), before);
    assert_eq!(env.fake.created().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_redelivered_message_causes_no_extra_runner() {
    let env = env(Duration::ZERO, |_| {}).await;
    // Message 1: one job assigned.
    env.engine.handle_desired_runner_count(1).await.expect("ok");
    let name = running(&env, 1).await.remove(0);
    idle(&env, 1).await;
    // Message 2 (delivered twice): the job started.
    for _ in 0..2 {
        env.engine
            .handle_job_started(&started(&name, 1))
            .await
            .expect("ok");
        env.engine.handle_desired_runner_count(1).await.expect("ok");
    }
    // Message 3 (delivered twice): the job completed.
    for _ in 0..2 {
        env.engine
            .handle_job_completed(&completed(&name, 1))
            .await
            .expect("ok");
        env.engine.handle_desired_runner_count(0).await.expect("ok");
    }
    env.fake.exit(&name, true);
    env.engine
        .wait_until(WAIT, |s| s.runners.is_empty())
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(env.fake.created().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_busy_runner_that_exits_counts_until_its_job_completes() {
    let env = env(Duration::ZERO, |_| {}).await;
    env.engine.handle_desired_runner_count(1).await.expect("ok");
    let name = running(&env, 1).await.remove(0);
    env.engine
        .handle_job_started(&started(&name, 1))
        .await
        .expect("ok");
    // The process exits before the JobCompleted arrives: no replacement is started.
    env.fake.exit(&name, true);
    env.engine
        .wait_until(WAIT, |s| s.runners.iter().any(|r| r.phase == Phase::Exited))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(env.fake.created().len(), 1);
    env.engine
        .handle_job_completed(&completed(&name, 1))
        .await
        .expect("ok");
    env.engine.handle_desired_runner_count(0).await.expect("ok");
    env.engine
        .wait_until(WAIT, |s| s.runners.is_empty())
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    assert_eq!(env.fake.created().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn failed_starts_back_off_and_recover() {
    let env = env(Duration::ZERO, |_| {}).await;
    env.fake.fail_next_creates(3);
    env.engine.handle_desired_runner_count(2).await.expect("ok");
    running(&env, 2).await;
    let snap = env.engine.snapshot();
    assert_eq!(snap.provisioning_failures, 3);
    // The failed runners' registrations were removed: only the two live ones remain.
    let (ok, st) = env
        .sim
        .wait_until(Duration::from_secs(5), |st| st.runners.len() == 2)
        .await;
    assert!(ok, "{:?}", st.runners);
}

#[tokio::test(start_paused = true)]
async fn shutdown_keep_stops_idle_runners_and_leaves_busy_ones() {
    let env = env(Duration::ZERO, |_| {}).await;
    env.engine.handle_desired_runner_count(3).await.expect("ok");
    let names = running(&env, 3).await;
    idle(&env, 3).await;
    env.engine
        .handle_job_started(&started(&names[0], 1))
        .await
        .expect("ok");
    let left = env
        .engine
        .shutdown(ShutdownPolicy::Keep, Duration::from_secs(60))
        .await;
    assert_eq!(left, vec![names[0].clone()]);
    assert_eq!(env.fake.running(), vec![names[0].clone()]);
    let st = env.sim.state();
    assert_eq!(st.runners.len(), 1, "only the busy runner stays registered");
}

#[tokio::test(start_paused = true)]
async fn shutdown_drain_waits_for_busy_runners_then_stops_the_rest() {
    let env = env(Duration::ZERO, |_| {}).await;
    env.engine.handle_desired_runner_count(2).await.expect("ok");
    let names = running(&env, 2).await;
    idle(&env, 2).await;
    env.engine
        .handle_job_started(&started(&names[0], 1))
        .await
        .expect("ok");
    env.engine
        .handle_job_started(&started(&names[1], 2))
        .await
        .expect("ok");
    let fake = env.fake.clone();
    let first = names[0].clone();
    // One busy runner finishes during the drain; the other outlives the deadline.
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(10)).await;
        fake.exit(&first, true);
    });
    let left = env
        .engine
        .shutdown(ShutdownPolicy::Drain, Duration::from_secs(60))
        .await;
    assert!(left.is_empty(), "{left:?}");
    assert!(env.fake.running().is_empty());
    assert_eq!(env.fake.stopped(), vec![names[1].clone()]);
    assert!(env.sim.state().runners.is_empty());
}

#[tokio::test(start_paused = true)]
async fn orphans_are_removed_or_adopted() {
    let sim = Simulator::start(SimConfig::default()).await.expect("sim");
    let client = Client::builder(
        sim.config_url(),
        Credentials::token(sim.token()).expect("t"),
    )
    .build()
    .expect("client");
    let set = client
        .create_runner_scale_set(&RunnerScaleSet {
            name: "orph".into(),
            runner_group_id: DEFAULT_RUNNER_GROUP_ID,
            ..Default::default()
        })
        .await
        .expect("set");
    // A previous run registered two runners; one process is alive, one died.
    let mut ids = Vec::new();
    for name in ["orph-00000001", "orph-00000002"] {
        let jit = client
            .generate_jit_runner_config(
                set.id,
                &actions_scaleset::JitRunnerSetting {
                    name: name.into(),
                    work_folder: String::new(),
                },
            )
            .await
            .expect("jit");
        ids.push(jit.runner.id);
    }
    let fake = FakeProvisioner::default();
    fake.add_leftover(OwnedRunner {
        name: "orph-00000001".into(),
        runner_id: ids[0],
        state: RunnerState::Running,
    });
    // A reservation whose JIT was minted but never recorded: found by name.
    fake.add_leftover(OwnedRunner {
        name: "orph-00000002".into(),
        runner_id: RunnerId::new(0),
        state: RunnerState::Failed {
            reason: "reserved, never started".into(),
        },
    });
    let engine = Engine::new(
        EngineSettings::new(set.id, "orph"),
        client,
        fake.clone(),
        ScaleSetMetrics::detached("orph"),
    );
    let r = engine.recover().await.expect("recover");
    assert_eq!((r.adopted, r.released), (1, 1));
    engine.spawn();
    // Both registrations go; the live runner is stopped only after its registration went.
    engine
        .wait_until(WAIT, |s| s.runners.is_empty())
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    assert!(sim.state().runners.is_empty());
    assert!(fake.running().is_empty());
    assert_eq!(fake.stopped(), vec!["orph-00000001".to_string()]);
}

#[tokio::test(start_paused = true)]
async fn engine_client_is_shared() {
    // Two engines share one client (one per config URL).
    let env = env(Duration::ZERO, |_| {}).await;
    let set2 = env
        .client
        .create_runner_scale_set(&RunnerScaleSet {
            name: "eng2".into(),
            runner_group_id: DEFAULT_RUNNER_GROUP_ID,
            ..Default::default()
        })
        .await
        .expect("second set");
    let fake2 = FakeProvisioner::default();
    let e2 = Engine::new(
        EngineSettings::new(set2.id, "eng2"),
        env.client.clone(),
        fake2.clone(),
        ScaleSetMetrics::detached("eng2"),
    );
    e2.spawn();
    env.engine.handle_desired_runner_count(2).await.expect("ok");
    e2.handle_desired_runner_count(3).await.expect("ok");
    running(&env, 2).await;
    fake2
        .wait_until(WAIT, |r| r.len() == 3)
        .await
        .expect("three");
    let st = env.sim.state();
    assert_eq!(
        st.runners
            .iter()
            .filter(|r| r.scale_set_id == set2.id.get())
            .count(),
        3
    );
}

fn fail_runner_deletes(sim: &Simulator) {
    let fault: scaleset_sim::Fault = serde_json::from_value(serde_json::json!({
        "kind": "status", "class": "runner", "method": "DELETE", "count": 100000, "status": 500
    }))
    .expect("fault");
    sim.faults().inject(fault).expect("inject");
}

#[tokio::test(start_paused = true)]
async fn a_failed_removal_never_stops_the_runner_and_is_retried() {
    let env = env(Duration::ZERO, |_| {}).await;
    env.engine.handle_desired_runner_count(1).await.expect("ok");
    let name = running(&env, 1).await.remove(0);
    idle(&env, 1).await;
    fail_runner_deletes(&env.sim);
    env.engine.handle_desired_runner_count(0).await.expect("ok");
    // Well past the idle delay, with removals failing: the runner is kept, idle.
    tokio::time::sleep(Duration::from_secs(300)).await;
    assert!(env.fake.stopped().is_empty(), "{:?}", env.fake.stopped());
    assert_eq!(env.fake.running(), vec![name.clone()]);
    // Idle between attempts, or removing while a retry is in flight: never stopped, never
    // dropped from the books.
    let snap = env.engine.snapshot();
    assert_eq!(snap.idle + snap.removing, 1, "{snap:?}");
    assert_eq!(snap.runners.len(), 1, "{snap:?}");
    let deletes = env
        .sim
        .requests()
        .iter()
        .filter(|r| r.method == "DELETE" && r.path.contains("/agents/"))
        .count();
    assert!(deletes >= 2, "the removal is retried: {deletes} attempt(s)");
    // GitHub recovers: the retry removes it, then stops it.
    env.sim.faults().clear();
    env.engine
        .wait_until(WAIT, |s| s.runners.is_empty())
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    assert_eq!(env.fake.stopped(), vec![name.clone()]);
    assert!(!env.sim.state().runners.iter().any(|r| r.name == name));
}

#[tokio::test(start_paused = true)]
async fn finishing_runners_count_against_max_runners() {
    let env = env(Duration::ZERO, |s| s.max_runners = 2).await;
    env.engine.handle_desired_runner_count(2).await.expect("ok");
    let names = running(&env, 2).await;
    idle(&env, 2).await;
    for (i, n) in names.iter().enumerate() {
        env.engine
            .handle_job_started(&started(n, i as i64))
            .await
            .expect("ok");
        env.engine
            .handle_job_completed(&completed(n, i as i64))
            .await
            .expect("ok");
    }
    // Two new jobs while both processes are still finishing: no third process.
    env.engine.handle_desired_runner_count(2).await.expect("ok");
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(env.fake.running().len(), 2, "{:?}", env.fake.running());
    assert_eq!(env.fake.created().len(), 2);
    for n in &names {
        env.fake.exit(n, true);
    }
    env.fake
        .wait_until(WAIT, |r| {
            r.len() == 2 && r.iter().all(|n| !names.contains(n))
        })
        .await
        .unwrap_or_else(|r| panic!("replaced: {r:?}"));
    assert_eq!(env.fake.created().len(), 4);
}

#[tokio::test(start_paused = true)]
async fn drain_timeout_reports_runners_still_registered() {
    let env = env(Duration::ZERO, |_| {}).await;
    env.engine.handle_desired_runner_count(1).await.expect("ok");
    let name = running(&env, 1).await.remove(0);
    idle(&env, 1).await;
    env.engine
        .handle_job_started(&started(&name, 1))
        .await
        .expect("ok");
    fail_runner_deletes(&env.sim);
    let left = env
        .engine
        .shutdown(ShutdownPolicy::Drain, Duration::from_secs(10))
        .await;
    assert_eq!(left, vec![name.clone()]);
    assert_eq!(env.fake.stopped(), vec![name.clone()]);
    assert!(env.sim.state().runners.iter().any(|r| r.name == name));
}

#[tokio::test(start_paused = true)]
async fn orphans_whose_removal_fails_are_kept() {
    let env = env(Duration::ZERO, |_| {}).await;
    let mut ids = Vec::new();
    for name in ["eng-0000000a", "eng-0000000b"] {
        let jit = env
            .client
            .generate_jit_runner_config(
                env.engine.settings().scale_set_id,
                &actions_scaleset::JitRunnerSetting {
                    name: name.into(),
                    work_folder: String::new(),
                },
            )
            .await
            .expect("jit");
        ids.push(jit.runner.id);
    }
    let fake = FakeProvisioner::default();
    fake.add_leftover(OwnedRunner {
        name: "eng-0000000a".into(),
        runner_id: ids[0],
        state: RunnerState::Running,
    });
    fake.add_leftover(OwnedRunner {
        name: "eng-0000000b".into(),
        runner_id: ids[1],
        state: RunnerState::Exited(ExitStatus::code(0)),
    });
    fail_runner_deletes(&env.sim);
    let engine = Engine::new(
        EngineSettings::new(env.engine.settings().scale_set_id, "eng"),
        env.client.clone(),
        fake.clone(),
        ScaleSetMetrics::detached("eng"),
    );
    let r = engine.recover().await.expect("recover");
    assert_eq!((r.adopted, r.released), (1, 1));
    engine.spawn();
    // Removals keep failing: nothing is stopped and both stay in the books, retried.
    tokio::time::sleep(Duration::from_secs(300)).await;
    assert!(fake.stopped().is_empty(), "nothing is stopped");
    let snap = engine.snapshot();
    assert_eq!(snap.removing, 2, "{snap:?}");
    assert_eq!(env.sim.state().runners.len(), 2);
    // GitHub recovers: both registrations go, then the live runner is stopped.
    env.sim.faults().clear();
    engine
        .wait_until(WAIT, |s| s.runners.is_empty())
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    assert!(env.sim.state().runners.is_empty());
    assert_eq!(fake.stopped(), vec!["eng-0000000a".to_string()]);
}

#[tokio::test(start_paused = true)]
async fn huge_durations_do_not_panic() {
    let env = env(Duration::ZERO, |s| {
        s.idle_delay = Duration::MAX;
        s.registration_timeout = Duration::MAX;
        s.exit_grace = Duration::MAX;
        s.finish_grace = Duration::MAX;
    })
    .await;
    env.engine.handle_desired_runner_count(1).await.expect("ok");
    let name = running(&env, 1).await.remove(0);
    env.engine.handle_desired_runner_count(0).await.expect("ok");
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(env.fake.running(), vec![name]);
    assert!(env.engine.failure().is_none());
    let left = env
        .engine
        .shutdown(ShutdownPolicy::Drain, Duration::MAX)
        .await;
    assert!(left.is_empty(), "{left:?}");
}

/// JIT configs the simulator minted so far.
fn jit_mints(sim: &Simulator) -> usize {
    sim.requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.contains("generatejitconfig"))
        .count()
}

#[tokio::test(start_paused = true)]
async fn a_runner_that_exits_before_its_job_started_arrives_is_not_replaced() {
    // GitHub delivers JobStarted a poll late: the runner has run its job and exited (0)
    // before the engine hears of the job.
    let env = env(Duration::ZERO, |_| {}).await;
    env.engine.handle_desired_runner_count(1).await.expect("ok");
    let name = running(&env, 1).await.remove(0);
    env.fake.exit(&name, true);
    env.engine
        .wait_until(WAIT, |s| s.runners.iter().any(|r| r.phase == Phase::Exited))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    // Demand is unchanged (the job is still assigned): no second runner.
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(env.fake.created().len(), 1);
    assert_eq!(jit_mints(&env.sim), 1);
    env.engine
        .handle_job_started(&started(&name, 1))
        .await
        .expect("ok");
    env.engine
        .handle_job_completed(&completed(&name, 1))
        .await
        .expect("ok");
    env.engine.handle_desired_runner_count(0).await.expect("ok");
    env.engine
        .wait_until(WAIT, |s| s.runners.is_empty())
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    assert_eq!(
        env.fake.created().len(),
        1,
        "never replaced for the job it ran"
    );
    assert_eq!(jit_mints(&env.sim), 1);
    assert!(!env.sim.state().runners.iter().any(|r| r.name == name));
}

#[tokio::test(start_paused = true)]
async fn a_removal_whose_runner_exits_meanwhile_still_deregisters_it() {
    let env = env(Duration::ZERO, |_| {}).await;
    env.engine.handle_desired_runner_count(1).await.expect("ok");
    let name = running(&env, 1).await.remove(0);
    idle(&env, 1).await;
    fail_runner_deletes(&env.sim);
    env.engine.handle_desired_runner_count(0).await.expect("ok");
    // Past the idle delay its removal is attempted (and fails); then the runner exits.
    tokio::time::sleep(Duration::from_secs(40)).await;
    assert!(env.fake.exit(&name, true), "still running");
    tokio::time::sleep(Duration::from_secs(120)).await;
    // Still in the books, still registered: the removal is retried, not forgotten.
    let snap = env.engine.snapshot();
    assert_eq!(snap.runners.len(), 1, "{snap:?}");
    assert_eq!(snap.runners[0].phase, Phase::Deregistering, "{snap:?}");
    assert!(env.sim.state().runners.iter().any(|r| r.name == name));
    env.sim.faults().clear();
    env.engine
        .wait_until(WAIT, |s| s.runners.is_empty())
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    assert!(!env.sim.state().runners.iter().any(|r| r.name == name));
    assert_eq!(env.fake.created().len(), 1, "no replacement: no demand");
}

#[tokio::test(start_paused = true)]
async fn an_outdated_runner_stops_replacement_and_is_reported_once() {
    let env = env(Duration::ZERO, |_| {}).await;
    env.engine.handle_desired_runner_count(3).await.expect("ok");
    let names = running(&env, 3).await;
    for n in &names {
        env.fake.exit_with(n, ExitStatus::code(7));
    }
    env.engine
        .wait_until(WAIT, |s| s.outdated && s.runners.is_empty())
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    // Demand stays at 3, but nothing more is started: no create/fail loop.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(env.fake.created().len(), 3);
    assert_eq!(env.engine.snapshot().provisioning_failures, 0);
    assert!(
        env.sim.state().runners.is_empty(),
        "their registrations went"
    );
}

#[tokio::test(start_paused = true)]
async fn runners_that_fail_to_start_back_off_and_never_count_as_capacity() {
    let env = env(Duration::ZERO, |_| {}).await;
    env.fake.fail_next_starts(1000, "image not found");
    env.engine.handle_desired_runner_count(1).await.expect("ok");
    tokio::time::sleep(Duration::from_secs(600)).await;
    let created = env.fake.created().len();
    let snap = env.engine.snapshot();
    // Backoff doubles from 1 s (jittered down by at most half) to 5 min: over 10 minutes
    // that is a handful of attempts, not one per reconcile.
    assert!((3..=14).contains(&created), "{created} attempts in 10 min");
    assert_eq!(snap.provisioning_failures as usize, created);
    assert_eq!(snap.capacity(), 0, "{snap:?}");
    assert!(snap.backing_off, "{snap:?}");
    // Every failed runner's registration is removed.
    let (ok, st) = env
        .sim
        .wait_until(Duration::from_secs(5), |st| st.runners.is_empty())
        .await;
    assert!(ok, "{:?}", st.runners);
}

#[tokio::test(start_paused = true)]
async fn a_resync_notices_a_runner_lost_without_an_event() {
    let env = env(Duration::ZERO, |s| {
        s.resync_interval = Duration::from_secs(30);
    })
    .await;
    env.engine.handle_desired_runner_count(1).await.expect("ok");
    let first = running(&env, 1).await.remove(0);
    idle(&env, 1).await;
    // The event stream lost its exit: only the resync can tell.
    assert!(env.fake.vanish_silently(&first));
    let now = env
        .fake
        .wait_until(WAIT, |r| r.len() == 1 && r[0] != first)
        .await
        .unwrap_or_else(|r| panic!("replaced: {r:?}"));
    assert_ne!(now[0], first);
    let (ok, st) = env
        .sim
        .wait_until(Duration::from_secs(5), |st| {
            !st.runners.iter().any(|r| r.name == first)
        })
        .await;
    assert!(ok, "the lost runner's registration goes: {:?}", st.runners);
}

#[tokio::test(start_paused = true)]
async fn a_runner_the_engine_does_not_know_is_taken_over_by_the_resync() {
    let env = env(Duration::ZERO, |s| {
        s.resync_interval = Duration::from_secs(30);
    })
    .await;
    let jit = env
        .client
        .generate_jit_runner_config(
            env.engine.settings().scale_set_id,
            &actions_scaleset::JitRunnerSetting {
                name: "eng-000000ff".into(),
                work_folder: String::new(),
            },
        )
        .await
        .expect("jit");
    env.fake.add_leftover(OwnedRunner {
        name: "eng-000000ff".into(),
        runner_id: jit.runner.id,
        state: RunnerState::Running,
    });
    env.engine
        .wait_until(WAIT, |s| s.runners.is_empty() && !s.stopping)
        .await
        .expect("no records yet");
    let (ok, st) = env
        .sim
        .wait_until(Duration::from_secs(120), |st| st.runners.is_empty())
        .await;
    assert!(ok, "{:?}", st.runners);
    env.fake
        .wait_until(WAIT, |r| r.is_empty())
        .await
        .unwrap_or_else(|r| panic!("{r:?}"));
    assert_eq!(env.fake.stopped(), vec!["eng-000000ff".to_string()]);
}

fn inject(sim: &Simulator, fault: serde_json::Value) {
    let fault: scaleset_sim::Fault = serde_json::from_value(fault).expect("fault");
    sim.faults().inject(fault).expect("inject");
}

/// Registered runner names in the simulator.
fn registered(sim: &Simulator) -> Vec<String> {
    let mut names: Vec<String> = sim.state().runners.iter().map(|r| r.name.clone()).collect();
    names.sort();
    names
}

#[tokio::test(start_paused = true)]
async fn a_malformed_jit_answer_leaks_no_registration() {
    // The service registered the runner and answered 200 with a garbled body: the engine
    // cannot read the runner id and mints another; the first registration is found by the
    // sweep and removed.
    let env = env(Duration::ZERO, |_| {}).await;
    inject(
        &env.sim,
        serde_json::json!({"kind": "malformedJson", "class": "jit", "count": 1}),
    );
    env.engine.handle_desired_runner_count(1).await.expect("ok");
    let name = running(&env, 1).await.remove(0);
    let (ok, st) = env
        .sim
        .wait_until(Duration::from_secs(60), |st| st.runners.len() == 1)
        .await;
    assert!(
        ok,
        "the unreadable mint's registration is removed: {:?}",
        st.runners
    );
    assert_eq!(registered(&env.sim), vec![name]);
    env.engine.handle_desired_runner_count(0).await.expect("ok");
    let left = env.engine.shutdown(ShutdownPolicy::Drain, WAIT).await;
    assert!(left.is_empty(), "{left:?}");
    assert!(registered(&env.sim).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jit_request_that_times_out_and_is_retried_leaks_no_registration() {
    let sim = Simulator::start(SimConfig::default()).await.expect("sim");
    let client = Client::builder(
        sim.config_url(),
        Credentials::token(sim.token()).expect("token"),
    )
    .timeout(Duration::from_millis(500))
    .retry_max(1)
    .retry_wait_min(Duration::from_millis(10))
    .retry_wait_max(Duration::from_millis(50))
    .build()
    .expect("client");
    let set = client
        .create_runner_scale_set(&RunnerScaleSet {
            name: "slow".into(),
            runner_group_id: DEFAULT_RUNNER_GROUP_ID,
            ..Default::default()
        })
        .await
        .expect("scale set");
    // The first mint registers its runner but is answered after the client gave up on it;
    // the retry meets the name, and the library's removal of its own orphan fails too (both
    // attempts): the mint fails with a registration left behind, which the sweep removes.
    inject(
        &sim,
        serde_json::json!({"kind": "latency", "class": "jit", "delayMs": 1500, "count": 1, "after": true}),
    );
    inject(
        &sim,
        serde_json::json!({"kind": "status", "class": "runner", "method": "DELETE", "count": 2, "status": 500}),
    );
    let fake = FakeProvisioner::default();
    let engine = Engine::new(
        EngineSettings::new(set.id, "slow"),
        client,
        fake.clone(),
        ScaleSetMetrics::detached("slow"),
    );
    engine.spawn();
    engine.handle_desired_runner_count(1).await.expect("ok");
    let name = fake
        .wait_until(Duration::from_secs(30), |r| r.len() == 1)
        .await
        .unwrap_or_else(|r| panic!("{r:?}"))
        .remove(0);
    let (ok, st) = sim
        .wait_until(Duration::from_secs(30), |st| {
            st.runners.len() == 1 && st.runners[0].name == name
        })
        .await;
    assert!(ok, "one registration, the live runner's: {:?}", st.runners);
    engine.handle_desired_runner_count(0).await.expect("ok");
    let left = engine
        .shutdown(ShutdownPolicy::Drain, Duration::from_secs(30))
        .await;
    assert!(left.is_empty(), "{left:?}");
    assert!(registered(&sim).is_empty(), "{:?}", registered(&sim));
}

#[tokio::test(start_paused = true)]
async fn a_runner_that_crashes_before_its_job_is_never_replaced_above_max_runners() {
    let env = env(Duration::ZERO, |s| s.max_runners = 1).await;
    // Its removal is slow: the replacement must wait for it.
    inject(
        &env.sim,
        serde_json::json!({"kind": "status", "class": "runner", "method": "DELETE", "count": 3, "status": 500}),
    );
    env.engine.handle_desired_runner_count(1).await.expect("ok");
    let first = running(&env, 1).await.remove(0);
    env.fake.exit(&first, false);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let names = registered(&env.sim);
        assert!(
            names.len() <= 1,
            "more than max_runners registered: {names:?}"
        );
        let running = env.fake.running();
        if running.len() == 1 && running[0] != first {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never replaced");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!registered(&env.sim).contains(&first));
}

/// A replica frozen past its Lease's renewal deadline wakes with its timers firing in any
/// order: once the fence says the Lease is no longer held, no JIT config is minted and no
/// runner created, and the engine stops.
#[tokio::test(start_paused = true)]
async fn a_closed_fence_stops_mints_and_creates() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let env = env(Duration::ZERO, |_| {}).await;
    let holds = Arc::new(AtomicBool::new(true));
    let h = holds.clone();
    env.engine.fence(Arc::new(move || h.load(Ordering::SeqCst)));
    env.engine.handle_desired_runner_count(2).await.expect("ok");
    running(&env, 2).await;
    idle(&env, 2).await;
    holds.store(false, Ordering::SeqCst);
    env.engine.handle_desired_runner_count(4).await.expect("ok");
    // Let every task run (the paused clock advances only once all are idle).
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(
        env.fake.created().len(),
        2,
        "no runner created past the fence"
    );
    assert_eq!(
        env.sim.state().runners.len(),
        2,
        "no JIT config minted past the fence"
    );
}
