//! `/readyz` as a probe sees it, against the simulator: ready while the first long poll is in
//! flight, unready as soon as the session is lost (and cannot be re-created), ready again once
//! a new session polls.

use std::sync::Arc;
use std::time::Duration;

use actions_scaleset::{
    BoxError, Client, Credentials, DEFAULT_RUNNER_GROUP_ID, JobCompleted, JobStarted, Listener,
    ListenerConfig, RunnerScaleSet, ScaleSetId, Scaler,
};
use scaleset_autoscaler::server::Readiness;
use scaleset_sim::{Fault, SimConfig, Simulator};
use tokio_util::sync::CancellationToken;

/// Every wait below ends by this deadline.
const DEADLINE: Duration = Duration::from_secs(30);

struct Idle;
impl Scaler for Idle {
    async fn handle_desired_runner_count(&self, count: i64) -> Result<i64, BoxError> {
        Ok(count)
    }
    async fn handle_job_started(&self, _: &JobStarted) -> Result<(), BoxError> {
        Ok(())
    }
    async fn handle_job_completed(&self, _: &JobCompleted) -> Result<(), BoxError> {
        Ok(())
    }
}

/// Waits until readiness is `want` (under [`DEADLINE`]); returns the last reasons.
async fn wait_ready(readiness: &Readiness, want: bool) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let got = readiness.check();
        if got.is_ok() == want {
            return got.err().unwrap_or_default();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "readiness never became {want}: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn setup(long_poll: Duration) -> (Simulator, Client, ScaleSetId) {
    let sim = Simulator::start(SimConfig {
        long_poll,
        ..SimConfig::default()
    })
    .await
    .expect("sim starts");
    let client = Client::builder(
        sim.config_url(),
        Credentials::token(sim.token()).expect("token"),
    )
    .retry_max(0)
    .build()
    .expect("client");
    let set = client
        .create_runner_scale_set(&RunnerScaleSet {
            name: "ready".into(),
            runner_group_id: DEFAULT_RUNNER_GROUP_ID,
            ..Default::default()
        })
        .await
        .expect("created");
    (sim, client, set.id)
}

fn listener(session: actions_scaleset::MessageSessionClient, id: ScaleSetId) -> Listener {
    let mut cfg = ListenerConfig::new(id, 1);
    cfg.backoff_min = Duration::from_millis(50);
    cfg.backoff_max = Duration::from_millis(200);
    Listener::new(session, cfg).expect("a valid listener")
}

// A long poll of ten minutes, no jobs: the first poll stays in flight the whole test. With a
// window of 50 s a probe must see ready at once, not after the first poll returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_while_the_first_long_poll_is_in_flight() {
    let (sim, client, id) = setup(Duration::from_secs(600)).await;
    let session = client
        .create_message_session_client(id, None)
        .await
        .expect("session");
    let listener = Arc::new(listener(session, id));
    let readiness = Readiness::new(Duration::from_secs(50));
    let slot = readiness.add("ready");
    readiness.attach(slot, listener.health_handle());
    let stop = CancellationToken::new();
    let run = {
        let (listener, stop) = (listener.clone(), stop.clone());
        tokio::spawn(async move { listener.run(&Idle, &stop).await })
    };
    wait_ready(&readiness, true).await;
    assert!(
        listener.health().last_successful_poll.is_none(),
        "no poll returned yet"
    );
    stop.cancel();
    tokio::time::timeout(DEADLINE, run)
        .await
        .expect("the listener stops")
        .expect("joined")
        .expect("clean stop");
    let problems = wait_ready(&readiness, false).await;
    assert_eq!(problems, ["ready: listener not running"]);
    sim.shutdown().await;
}

// The session is evicted server-side and session creation answers 503 indefinitely: unready
// at once (the window is ten minutes, so a stale last poll cannot be what flips it), and
// ready again once the service lets a new session be created and it polls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unready_as_soon_as_the_session_is_lost_then_ready_again() {
    let (sim, client, id) = setup(Duration::from_millis(200)).await;
    let session = client
        .create_message_session_client(id, None)
        .await
        .expect("session");
    let listener = Arc::new(listener(session, id));
    let readiness = Readiness::new(Duration::from_secs(300));
    let slot = readiness.add("ready");
    readiness.attach(slot, listener.health_handle());
    let stop = CancellationToken::new();
    let run = {
        let (listener, stop) = (listener.clone(), stop.clone());
        tokio::spawn(async move { listener.run(&Idle, &stop).await })
    };
    wait_ready(&readiness, true).await;

    let no_sessions: Fault = serde_json::from_value(serde_json::json!({
        "kind": "status", "class": "session", "method": "POST", "count": 1000000, "status": 503
    }))
    .expect("fault");
    sim.faults().inject(no_sessions).expect("inject");
    let evict: Fault =
        serde_json::from_value(serde_json::json!({"kind": "evictSession", "scaleSetId": id}))
            .expect("fault");
    sim.faults().inject(evict).expect("inject");
    let problems = wait_ready(&readiness, false).await;
    assert_eq!(
        problems,
        ["ready: message session lost, not yet re-created"]
    );

    sim.faults().clear();
    wait_ready(&readiness, true).await;
    assert!(listener.health().session_recreations >= 1);
    stop.cancel();
    tokio::time::timeout(DEADLINE, run)
        .await
        .expect("the listener stops")
        .expect("joined")
        .expect("clean stop");
    sim.shutdown().await;
}

// Two scale sets of one name (other runner groups): each has its own slot, so the second
// listener registers and both must be ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_scale_sets_of_one_name_are_tracked_apart() {
    let readiness = Readiness::new(Duration::from_secs(50));
    let (sim, client, id) = setup(Duration::from_secs(600)).await;
    let a = readiness.add("ready (runner group default)");
    let _b = readiness.add("ready (runner group gpu)");
    let session = client
        .create_message_session_client(id, None)
        .await
        .expect("session");
    let listener = Arc::new(listener(session, id));
    readiness.attach(a, listener.health_handle());
    let stop = CancellationToken::new();
    let run = {
        let (listener, stop) = (listener.clone(), stop.clone());
        tokio::spawn(async move { listener.run(&Idle, &stop).await })
    };
    // The first is ready, the second has no listener: not ready, naming the second.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let problems = readiness.check().expect_err("the second has no listener");
        if problems == ["ready (runner group gpu): no listener yet"] {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{problems:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    let _ = tokio::time::timeout(DEADLINE, run).await;
    sim.shutdown().await;
}
