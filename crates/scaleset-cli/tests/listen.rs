//! `listen`, `sim` and `sim-runner` as child processes against the in-process simulator.

mod common;

use common::{DEADLINE, Streaming, bare, cmd, create_scale_set, run, scaleset, sim};
use scaleset_sim::EnqueueJobs;
use serde_json::Value;
use tokio::time::Instant;

/// Reads events until `pred` matches one (under [`DEADLINE`]); returns every event read.
async fn read_until(stream: &mut Streaming, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + DEADLINE;
    let mut events = Vec::new();
    loop {
        assert!(Instant::now() < deadline, "no matching event: {events:#?}");
        let event = stream.next_json().await;
        let done = pred(&event);
        events.push(event);
        if done {
            return events;
        }
    }
}

fn kind(event: &Value) -> &str {
    event["event"].as_str().unwrap_or_default()
}

/// Every job event comes after a statistics event and before the desiredRunners that closes
/// its message; every event has its documented shape.
fn check_stream(events: &[Value]) {
    assert_eq!(kind(&events[0]), "statistics", "{events:#?}");
    assert_eq!(kind(&events[1]), "desiredRunners", "{events:#?}");
    let mut in_message = false;
    for e in events {
        match kind(e) {
            "statistics" => {
                assert!(e["statistics"]["totalAssignedJobs"].is_i64(), "{e}");
                assert!(e["statistics"]["totalRunningJobs"].is_i64(), "{e}");
                in_message = true;
            }
            "jobStarted" | "jobCompleted" => {
                assert!(in_message, "a job event outside a message: {events:#?}");
                assert!(e["job"]["runnerRequestId"].is_i64(), "{e}");
                assert!(e["job"]["jobId"].is_string(), "{e}");
                assert!(e["job"]["runnerName"].is_string(), "{e}");
            }
            "desiredRunners" => {
                assert!(e["count"].is_i64(), "{e}");
                in_message = false;
            }
            other => panic!("unknown event {other}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_streams_events_and_deletes_its_session_on_sigterm() {
    let sim = sim().await;
    let id = create_scale_set(&sim, "listen-set").await;
    let id_s = id.to_string();
    let mut listen = Streaming::start(
        &sim,
        &[
            "listen",
            "--scale-set-id",
            &id_s,
            "--max-runners",
            "3",
            "--owner",
            "cli-test",
        ],
    );
    let mut events = read_until(&mut listen, |e| kind(e) == "desiredRunners").await;
    let (ok, state) = sim
        .wait_until(DEADLINE, |s| {
            s.sessions.iter().any(|x| x.scale_set_id == id)
        })
        .await;
    assert!(ok, "a session is open: {:?}", state.sessions);
    assert_eq!(state.sessions[0].owner_name, "cli-test");

    sim.enqueue_jobs(EnqueueJobs {
        labels: vec!["listen-set".into()],
        ..Default::default()
    })
    .await
    .expect("job enqueued");
    events.extend(
        read_until(&mut listen, |e| {
            kind(e) == "desiredRunners" && e["count"] == 1
        })
        .await,
    );

    // A simulated runner takes the job: jobStarted, then jobCompleted.
    let r = scaleset(&sim, &["runner", "jit", "--scale-set-id", &id_s]).await;
    r.expect_code(0);
    let jit = r.json()["encodedJITConfig"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut c = cmd();
    c.args(["sim-runner"])
        .env("ACTIONS_RUNNER_INPUT_JITCONFIG", &jit);
    let runner = run(c).await;
    runner.expect_code(0);
    assert_eq!(runner.json()["result"], "succeeded");

    events.extend(read_until(&mut listen, |e| kind(e) == "jobCompleted").await);
    events.extend(read_until(&mut listen, |e| kind(e) == "desiredRunners").await);
    check_stream(&events);
    assert!(
        events.iter().any(|e| kind(e) == "jobStarted"),
        "{events:#?}"
    );
    let completed = events
        .iter()
        .find(|e| kind(e) == "jobCompleted")
        .expect("jobCompleted");
    assert_eq!(completed["job"]["result"], "succeeded");

    listen.sigterm();
    let done = listen.finish().await;
    done.expect_code(0);
    let (ok, state) = sim.wait_until(DEADLINE, |s| s.sessions.is_empty()).await;
    assert!(ok, "the session is deleted on exit: {:?}", state.sessions);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_listener_exits_4_or_waits_for_the_session() {
    let sim = sim().await;
    let id = create_scale_set(&sim, "conflict-set").await.to_string();
    let mut first = Streaming::start(&sim, &["listen", "--scale-set-id", &id]);
    assert_eq!(kind(&first.next_json().await), "statistics");

    let r = scaleset(&sim, &["listen", "--scale-set-id", &id]).await;
    r.expect_code(4);
    assert!(r.last_err_line().starts_with("error: listen: "), "{r:?}");
    // The line says what to do about it.
    assert!(
        r.last_err_line()
            .starts_with("error: listen: another client holds the scale set's message session")
            && r.last_err_line().contains("--wait-for-session"),
        "{r:?}"
    );
    let r = scaleset(
        &sim,
        &["listen", "--scale-set-id", &id, "--log-format", "json"],
    )
    .await;
    r.expect_code(4);
    assert_eq!(r.err_json()["kind"], "SessionConflict");
    assert_eq!(r.err_json()["status"], 409);

    // A standby takes over when the first one ends.
    let mut standby = Streaming::start(
        &sim,
        &[
            "listen",
            "--scale-set-id",
            &id,
            "--wait-for-session",
            "--log-level",
            "info",
        ],
    );
    standby.wait_stderr("waiting").await;
    first.sigterm();
    first.finish().await.expect_code(0);
    assert_eq!(kind(&standby.next_json().await), "statistics");
    standby.sigterm();
    standby.finish().await.expect_code(0);
    let (ok, state) = sim.wait_until(DEADLINE, |s| s.sessions.is_empty()).await;
    assert!(ok, "{:?}", state.sessions);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_listener_stops_on_sigterm_and_a_missing_scale_set_exits_3() {
    let sim = sim().await;
    let id = create_scale_set(&sim, "held-set").await;
    sim.faults()
        .inject(scaleset_sim::Fault::ForeignSession {
            scale_set_id: id,
            owner_name: None,
        })
        .expect("fault");
    let id_s = id.to_string();
    let mut waiting = Streaming::start(
        &sim,
        &[
            "listen",
            "--scale-set-id",
            &id_s,
            "--wait-for-session",
            "--log-level",
            "info",
        ],
    );
    // Once it has met the conflict and is waiting, SIGTERM ends the wait at once.
    waiting.wait_stderr("waiting").await;
    waiting.sigterm();
    waiting.finish().await.expect_code(0);

    let r = scaleset(&sim, &["listen", "--scale-set-id", "999999"]).await;
    r.expect_code(3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sim_serves_until_sigint_and_sim_runner_rejects_bad_configs() {
    let mut c = cmd();
    c.args(["sim", "--port", "0", "--long-poll", "0.5", "--mode", "ghes"]);
    let mut served = Streaming::spawn(c);
    let line = served.next_json().await;
    let url = line["configUrl"].as_str().expect("configUrl").to_string();
    let token = line["token"].as_str().expect("token").to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "{line}");
    assert!(
        line["controlUrl"]
            .as_str()
            .is_some_and(|u| u.ends_with("/_sim"))
    );
    let r = bare(&[
        "scale-set",
        "create",
        "--name",
        "s",
        "--url",
        &url,
        "--token",
        &token,
    ])
    .await;
    r.expect_code(0);
    let r = bare(&["scale-set", "list", "--url", &url, "--token", &token]).await;
    r.expect_code(0);
    assert_eq!(r.json().as_array().map(Vec::len), Some(1));
    served.signal(nix::sys::signal::Signal::SIGINT);
    served.finish().await.expect_code(0);

    let r = bare(&["sim-runner"]).await;
    r.expect_code(2);
    let r = bare(&["sim-runner", "--jitconfig", "not-base64!"]).await;
    assert_ne!(r.code, 0);
    assert!(
        r.last_err_line().starts_with("error: sim-runner: "),
        "{r:?}"
    );
    assert!(r.last_err_line().contains("JIT config"), "{r:?}");
}

// A second signal while the graceful shutdown is stuck (here: deleting the session hangs)
// exits at once with 130 instead of making the operator wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once() {
    let sim = sim().await;
    let id = create_scale_set(&sim, "twice").await;
    let id_s = id.to_string();
    let mut listen = Streaming::start(
        &sim,
        &["listen", "--scale-set-id", &id_s, "--log-level", "info"],
    );
    read_until(&mut listen, |e| kind(e) == "desiredRunners").await;
    sim.faults()
        .inject(
            serde_json::from_value(serde_json::json!({
                "kind": "latency", "class": "session", "method": "DELETE", "delayMs": 60_000
            }))
            .expect("a valid fault"),
        )
        .expect("fault accepted");
    listen.sigterm();
    listen.wait_stderr("SIGTERM received").await;
    listen.signal(nix::sys::signal::Signal::SIGINT);
    let done = listen.finish().await;
    done.expect_code(130);
}
