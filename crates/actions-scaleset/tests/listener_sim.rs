//! Scenario tests of the [`Listener`] against the `scaleset-sim` simulator on `127.0.0.1:0`:
//! the complete loop of the `listener` module docs with simulated runners, and recovery from
//! faults (dropped connections, empty and truncated bodies, 5xx, an evicted session).
//!
//! These run on the real clock (the simulator's runners and timers do real I/O) with short
//! backoffs; every wait has a deadline and no test asserts a wall-clock duration.

mod support;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actions_scaleset::listener::BoxError;
use actions_scaleset::{
    CancellationToken, Client, Credentials, DEFAULT_RUNNER_GROUP_ID, JitRunnerSetting,
    JobCompleted, JobStarted, Listener, ListenerConfig, RunnerScaleSet, ScaleSetId, Scaler,
};
use scaleset_sim::runner::{RunnerOptions, RunnerOutcome};
use scaleset_sim::{EnqueueJobs, Fault, SimConfig, Simulator};
use support::{Event, RecScaler};

const WAIT: Duration = Duration::from_secs(60);

async fn sim() -> Simulator {
    Simulator::start(SimConfig {
        long_poll: Duration::from_secs(5),
        ..SimConfig::default()
    })
    .await
    .expect("simulator starts")
}

fn client(sim: &Simulator, retries: u32) -> Client {
    Client::builder(
        sim.config_url(),
        Credentials::token(sim.token()).expect("sim token"),
    )
    .retry_max(retries)
    .retry_wait_min(Duration::from_millis(5))
    .retry_wait_max(Duration::from_millis(20))
    .build()
    .expect("client")
}

async fn scale_set(client: &Client, name: &str) -> RunnerScaleSet {
    match client
        .get_runner_scale_set(DEFAULT_RUNNER_GROUP_ID, name)
        .await
        .expect("get scale set")
    {
        Some(s) => s,
        None => client
            .create_runner_scale_set(&RunnerScaleSet {
                name: name.into(),
                runner_group_id: DEFAULT_RUNNER_GROUP_ID,
                ..Default::default()
            })
            .await
            .expect("create scale set"),
    }
}

fn fault(v: serde_json::Value) -> Fault {
    serde_json::from_value(v).expect("valid fault")
}

/// A scaler that starts simulated runners from JIT configs (the dockerscaleset policy:
/// target = min(max, assigned), scale down through JobCompleted).
struct SimScaler {
    client: Client,
    scale_set_id: i64,
    max: i64,
    active: AtomicI64,
    next: AtomicI64,
    names: Mutex<Vec<String>>,
    runners: Mutex<Vec<tokio::task::JoinHandle<Result<RunnerOutcome, String>>>>,
    rec: Arc<RecScaler>,
}

impl Scaler for SimScaler {
    async fn handle_desired_runner_count(&self, count: i64) -> Result<i64, BoxError> {
        self.rec.handle_desired_runner_count(count).await?;
        let target = count.min(self.max);
        while self.active.load(Ordering::SeqCst) < target {
            let name = format!("runner-{}", self.next.fetch_add(1, Ordering::SeqCst));
            let jit = self
                .client
                .generate_jit_runner_config(
                    ScaleSetId::new(self.scale_set_id),
                    &JitRunnerSetting {
                        name: name.clone(),
                        work_folder: String::new(),
                    },
                )
                .await?;
            let config = jit.encoded_jit_config.expose_secret().to_string();
            self.names.lock().expect("lock").push(name);
            self.active.fetch_add(1, Ordering::SeqCst);
            self.runners
                .lock()
                .expect("lock")
                .push(tokio::spawn(async move {
                    scaleset_sim::runner::run(&config, RunnerOptions::default())
                        .await
                        .map_err(|e| e.to_string())
                }));
        }
        Ok(self.active.load(Ordering::SeqCst))
    }

    async fn handle_job_started(&self, job: &JobStarted) -> Result<(), BoxError> {
        self.rec.handle_job_started(job).await
    }

    async fn handle_job_completed(&self, job: &JobCompleted) -> Result<(), BoxError> {
        self.active.fetch_sub(1, Ordering::SeqCst);
        self.rec.handle_job_completed(job).await
    }
}

// The loop of the `listener` module docs (client -> scale set -> session -> listener ->
// scaler) against the simulator: jobs enqueued, runners started from minted JIT configs,
// JobStarted/JobCompleted seen with runner names, statistics converge to zero, and the session
// is deleted at shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_loop_with_simulated_runners() {
    let sim = sim().await;
    let client = client(&sim, 2);
    let scale_set = scale_set(&client, "e2e-runners").await;
    let session = client
        .create_message_session_client(scale_set.id, None)
        .await
        .expect("session");
    let listener =
        Arc::new(Listener::new(session, ListenerConfig::new(scale_set.id, 10)).expect("listener"));
    let rec = RecScaler::new();
    let scaler = Arc::new(SimScaler {
        client: client.clone(),
        scale_set_id: scale_set.id.get(),
        max: 10,
        active: AtomicI64::new(0),
        next: AtomicI64::new(1),
        names: Mutex::default(),
        runners: Mutex::default(),
        rec: rec.clone(),
    });
    let shutdown = CancellationToken::new();
    let run = {
        let (l, s, t) = (listener.clone(), scaler.clone(), shutdown.clone());
        tokio::spawn(async move { l.run(&*s, &t).await })
    };

    let ids = sim
        .enqueue_jobs(EnqueueJobs {
            labels: vec!["e2e-runners".into()],
            count: 3,
            duration: Duration::from_millis(50),
            ..Default::default()
        })
        .await
        .expect("enqueue");
    assert_eq!(ids.len(), 3);

    let events = rec
        .wait_for("three completions and a desired count of 0", WAIT, |e| {
            let completed = e
                .iter()
                .filter(|x| matches!(x, Event::Completed(..)))
                .count();
            completed >= 3 && e.last() == Some(&Event::Desired(0))
        })
        .await;
    let names = scaler.names.lock().expect("lock").clone();
    for id in &ids {
        let started = events.iter().find_map(|e| match e {
            Event::Started(r, n) if r == id => Some(n.clone()),
            _ => None,
        });
        let completed = events.iter().find_map(|e| match e {
            Event::Completed(r, n, result) if r == id => Some((n.clone(), result.clone())),
            _ => None,
        });
        let started = started.unwrap_or_else(|| panic!("JobStarted for {id}: {events:?}"));
        let (completed, result) =
            completed.unwrap_or_else(|| panic!("JobCompleted for {id}: {events:?}"));
        assert!(names.contains(&started), "{started} not one of {names:?}");
        assert_eq!(started, completed);
        assert_eq!(result, "succeeded");
    }
    let (converged, state) = sim
        .wait_until(WAIT, |st| {
            st.scale_set(scale_set.id.get()).is_some_and(|s| {
                s.statistics.total_assigned_jobs == 0
                    && s.statistics.total_running_jobs == 0
                    && s.statistics.total_busy_runners == 0
            })
        })
        .await;
    assert!(converged, "{state:?}");

    shutdown.cancel();
    tokio::time::timeout(WAIT, run)
        .await
        .expect("run ends")
        .expect("task")
        .expect("Ok");
    let runners: Vec<_> = std::mem::take(&mut *scaler.runners.lock().expect("lock"));
    for r in runners {
        let outcome = tokio::time::timeout(WAIT, r)
            .await
            .expect("runner ends")
            .expect("task")
            .expect("runner ran a job");
        assert_eq!(outcome.result, "succeeded");
    }
    let (closed, state) = sim.wait_until(WAIT, |st| st.sessions.is_empty()).await;
    assert!(closed, "the session is deleted at shutdown: {state:?}");
    sim.shutdown().await;
}

async fn listen(
    sim: &Simulator,
    name: &str,
    retries: u32,
) -> (
    Arc<Listener>,
    Arc<RecScaler>,
    CancellationToken,
    tokio::task::JoinHandle<actions_scaleset::Result<()>>,
    i64,
) {
    let client = client(sim, retries);
    let ss = scale_set(&client, name).await;
    let session = client
        .create_message_session_client(ss.id, None)
        .await
        .expect("session");
    let mut cfg = ListenerConfig::new(ss.id, 10);
    cfg.backoff_min = Duration::from_millis(10);
    cfg.backoff_max = Duration::from_millis(50);
    let listener = Arc::new(Listener::new(session, cfg).expect("listener"));
    let rec = RecScaler::new();
    let token = CancellationToken::new();
    let task = {
        let (l, s, t) = (listener.clone(), rec.clone(), token.clone());
        tokio::spawn(async move { l.run(&*s, &t).await })
    };
    (listener, rec, token, task, ss.id.get())
}

// S5 against the simulator: a dropped connection, a 200 with an empty body, a truncated body
// and a 503 burst on the queue are transient; the loop continues and the job is seen. The
// faults are injected before the listener starts, so its first five polls consume them and the
// job can only arrive through a later, clean poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_queue_faults_are_survived() {
    let sim = sim().await;
    let faults = sim.faults();
    for f in [
        serde_json::json!({"kind": "dropConnection", "class": "message", "method": "GET"}),
        serde_json::json!({"kind": "emptyBody", "class": "message", "method": "GET"}),
        serde_json::json!({"kind": "status", "class": "message", "method": "GET", "status": 503, "count": 2}),
        serde_json::json!({"kind": "truncatedJson", "class": "message", "method": "GET"}),
    ] {
        faults.inject(fault(f)).expect("fault");
    }
    let (listener, rec, token, task, _) = listen(&sim, "faulty", 0).await;
    sim.enqueue_jobs(EnqueueJobs {
        labels: vec!["faulty".into()],
        ..Default::default()
    })
    .await
    .expect("enqueue");
    rec.wait_for("the job's desired count", WAIT, |e| {
        e.contains(&Event::Desired(1))
    })
    .await;
    let faulted = sim
        .requests()
        .iter()
        .filter(|r| r.fault.is_some() && r.method == "GET")
        .count();
    assert_eq!(faulted, 5, "every fault was met by a poll");
    // The streak ends once the whole message is handled, just after the scaler saw it.
    let deadline = tokio::time::Instant::now() + WAIT;
    let h = loop {
        let h = listener.health();
        if h.consecutive_failures == 0 || tokio::time::Instant::now() > deadline {
            break h;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(h.running);
    assert!(h.last_successful_poll.is_some());
    assert_eq!(h.consecutive_failures, 0);
    token.cancel();
    tokio::time::timeout(WAIT, task)
        .await
        .expect("run ends")
        .expect("task")
        .expect("Ok");
    sim.shutdown().await;
}

// S4 against the simulator: the session is evicted while the listener runs (the poll's token
// is refused, the refresh answers 404); the listener creates a new session and keeps handling
// jobs enqueued afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evicted_session_is_replaced_and_jobs_keep_flowing() {
    let sim = sim().await;
    let (listener, rec, token, task, id) = listen(&sim, "evicted", 0).await;
    rec.wait_for("initial desired count", WAIT, |e| !e.is_empty())
        .await;
    let first = listener.session().session_id();
    sim.faults()
        .inject(fault(
            serde_json::json!({"kind": "evictSession", "scaleSetId": id}),
        ))
        .expect("fault");
    for n in 1..=10 {
        sim.enqueue_jobs(EnqueueJobs {
            labels: vec!["evicted".into()],
            ..Default::default()
        })
        .await
        .expect("enqueue");
        rec.wait_for("the job's desired count", WAIT, |e| {
            e.contains(&Event::Desired(n))
        })
        .await;
    }
    let h = listener.health();
    assert!(h.session_recreations >= 1, "{h:?}");
    assert_ne!(listener.session().session_id(), first);
    let (ok, state) = sim
        .wait_until(WAIT, |st| {
            st.scale_set(id)
                .is_some_and(|s| s.session_id == Some(listener.session().session_id().to_string()))
        })
        .await;
    assert!(ok, "{state:?}");
    token.cancel();
    tokio::time::timeout(WAIT, task)
        .await
        .expect("run ends")
        .expect("task")
        .expect("Ok");
    sim.shutdown().await;
}
