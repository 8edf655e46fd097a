//! The [`Listener`] against a scripted broker: PROTOCOL.md behaviours 107-112 and the listener
//! semantics documented in `src/listener.rs` (numbered S1-S6 below, as in its module docs).
//! Time-dependent tests run on a paused tokio clock; waits use deadlines, never real sleeps.

mod support;

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actions_scaleset::{
    CancellationToken, ConflictPolicy, ErrorKind, Listener, ListenerConfig, MessageSessionClient,
    MetricsRecorder, RunnerScaleSetStatistic, ScaleSetId,
};
use axum::response::Response;
use support::*;

/// One scripted answer to a poll.
enum Poll {
    Json(serde_json::Value),
    Status(u16),
    Raw(u16, &'static str),
    /// Held until the notify fires, then 202.
    HoldUntil(Arc<tokio::sync::Notify>),
}

/// A broker: create/refresh/delete session, polls answered from a script (then a 50 s long
/// poll answering 202), deletes 204, acquire echoes the ids.
#[derive(Default)]
struct Broker {
    polls: Mutex<VecDeque<Poll>>,
    /// Answers to create-session calls (`None`: the standard session); then standard.
    creates: Mutex<VecDeque<Option<Response>>>,
}

impl Broker {
    fn with_polls(polls: impl IntoIterator<Item = Poll>) -> Arc<Broker> {
        let b = Broker::default();
        b.polls.lock().expect("lock").extend(polls);
        Arc::new(b)
    }

    async fn answer(self: Arc<Self>, rec: Recorded) -> Response {
        if is_create(&rec) {
            let scripted = self.creates.lock().expect("lock").pop_front().flatten();
            return scripted.unwrap_or_else(|| created(&rec));
        }
        if is_refresh(&rec) {
            return json(200, session_json(&queue_url_of(&rec), "qtoken-1", 0));
        }
        if is_delete_session(&rec) || rec.method == "DELETE" {
            return status(204);
        }
        if rec.path.ends_with("/acquirejobs") {
            let ids: Vec<i64> = serde_json::from_slice(&rec.body).unwrap_or_default();
            return json(200, serde_json::json!({"count": ids.len(), "value": ids}));
        }
        let next = self.polls.lock().expect("lock").pop_front();
        match next {
            Some(Poll::Json(v)) => json(200, v),
            Some(Poll::Status(code)) => status(code),
            Some(Poll::Raw(code, body)) => raw(code, "application/json", body),
            Some(Poll::HoldUntil(n)) => {
                n.notified().await;
                status(202)
            }
            None => {
                tokio::time::sleep(Duration::from_secs(50)).await;
                status(202)
            }
        }
    }
}

async fn start(broker: &Arc<Broker>) -> Scripted {
    let b = broker.clone();
    Scripted::start(move |rec| b.clone().answer(rec)).await
}

async fn session(server: &Scripted, retries: u32) -> MessageSessionClient {
    server
        .client(retries)
        .create_message_session_client(ScaleSetId::new(7), Some("owner"))
        .await
        .expect("session")
}

fn config(max_runners: u32) -> ListenerConfig {
    let mut c = ListenerConfig::new(ScaleSetId::new(7), max_runners);
    c.backoff_min = Duration::from_millis(100);
    c.backoff_max = Duration::from_secs(2);
    c
}

/// Runs a listener in a task; returns the task.
fn spawn_run(
    listener: &Arc<Listener>,
    scaler: &Arc<RecScaler>,
    token: &CancellationToken,
) -> tokio::task::JoinHandle<actions_scaleset::Result<()>> {
    let (l, s, t) = (listener.clone(), scaler.clone(), token.clone());
    tokio::spawn(async move { l.run(&*s, &t).await })
}

async fn finish(
    task: tokio::task::JoinHandle<actions_scaleset::Result<()>>,
) -> actions_scaleset::Result<()> {
    tokio::time::timeout(DEADLINE, task)
        .await
        .expect("run ends")
        .expect("run task")
}

/// Metrics hooks that record calls; optionally cancel a token right after a poll returned.
#[derive(Default)]
struct RecMetrics {
    calls: Mutex<Vec<String>>,
    cancel_after_poll: Mutex<Option<CancellationToken>>,
}

impl RecMetrics {
    fn calls(&self) -> Vec<String> {
        self.calls.lock().expect("lock").clone()
    }
    fn push(&self, s: String) {
        self.calls.lock().expect("lock").push(s);
    }
}

impl MetricsRecorder for RecMetrics {
    fn record_statistics(&self, s: &RunnerScaleSetStatistic) {
        self.push(format!("statistics {}", s.total_assigned_jobs));
    }
    fn record_desired_runners(&self, n: i64) {
        self.push(format!("desired {n}"));
    }
    fn record_poll_latency(&self, _latency: Duration) {
        self.push("poll".into());
        if let Some(t) = self.cancel_after_poll.lock().expect("lock").take() {
            t.cancel();
        }
    }
    fn record_consecutive_failures(&self, n: u32) {
        self.push(format!("failures {n}"));
    }
    fn record_session_recreated(&self) {
        self.push("recreated".into());
    }
}

fn count(log: &[Recorded], f: impl Fn(&Recorded) -> bool) -> usize {
    log.iter().filter(|r| f(r)).count()
}

fn is_ack(r: &Recorded, id: i64) -> bool {
    r.method == "DELETE" && r.path == format!("/queue/message/{id}")
}

// ---------------------------------------------------------------- behaviours 107-112

// Behaviour 107
#[tokio::test]
async fn b107_config_validation_and_stored_values() {
    let broker = Broker::with_polls([]);
    let server = start(&broker).await;
    let s = session(&server, 0).await;
    let err =
        Listener::new(s.clone(), ListenerConfig::new(ScaleSetId::new(0), 1)).expect_err("zero id");
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    let err = Listener::new(
        s.clone(),
        ListenerConfig::new(ScaleSetId::new(1), i32::MAX as u32 + 1),
    )
    .expect_err("2^31");
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    let mut zero_backoff = ListenerConfig::new(ScaleSetId::new(1), 1);
    zero_backoff.backoff_min = Duration::ZERO;
    assert!(Listener::new(s.clone(), zero_backoff).is_err());
    let l = Listener::new(s.clone(), ListenerConfig::new(ScaleSetId::new(1), 10)).expect("valid");
    assert_eq!(l.max_runners(), 10);
    assert_eq!(l.session().session_id(), s.session_id());
    assert_eq!(l.health().session_id, Some(s.session_id()));
    assert!(!l.health().running);
    l.set_max_runners(u32::MAX);
    assert_eq!(l.max_runners(), i32::MAX as u32, "clamped");
}

// Behaviour 108 + S1: initial statistics reach the scaler before the first poll; a shutdown
// there ends the run without polling (and the session is still deleted, S6).
#[tokio::test(start_paused = true)]
async fn b108_initial_statistics_before_first_poll_then_cancel() {
    let broker = Broker::with_polls([]);
    let server = start(&broker).await;
    let metrics = Arc::new(RecMetrics::default());
    let listener = Arc::new(
        Listener::new(session(&server, 0).await, config(10))
            .expect("valid")
            .with_metrics(metrics.clone()),
    );
    let scaler = RecScaler::new();
    let token = CancellationToken::new();
    *scaler.cancel_on_desired.lock().expect("lock") = Some(token.clone());
    finish(spawn_run(&listener, &scaler, &token))
        .await
        .expect("shutdown is Ok");
    assert_eq!(scaler.events(), vec![Event::Desired(2)]);
    assert_eq!(metrics.calls(), vec!["statistics 2", "desired 2"]);
    assert!(server.polls().is_empty(), "{:?}", server.lines());
    assert_eq!(count(&server.requests(), is_delete_session), 1);
}

// Behaviour 109 + S6: a shutdown right after a poll returned still finishes the message
// (acquire, dispatch, desired count, acknowledgement), then the run ends.
#[tokio::test(start_paused = true)]
async fn b109_cancel_right_after_poll_still_finishes_handling() {
    let jobs = serde_json::json!([
        job_available(1),
        job_started(2, "r-2"),
        job_completed(3, "r-3")
    ]);
    let broker = Broker::with_polls([Poll::Json(message(5, jobs, Some(3)))]);
    let server = start(&broker).await;
    let token = CancellationToken::new();
    let metrics = Arc::new(RecMetrics::default());
    *metrics.cancel_after_poll.lock().expect("lock") = Some(token.clone());
    let listener = Arc::new(
        Listener::new(session(&server, 0).await, config(10))
            .expect("valid")
            .with_metrics(metrics.clone()),
    );
    let scaler = RecScaler::new();
    finish(spawn_run(&listener, &scaler, &token))
        .await
        .expect("Ok");
    assert_eq!(
        scaler.events(),
        vec![
            Event::Desired(2),
            Event::Started(2, "r-2".into()),
            Event::Completed(3, "r-3".into(), "succeeded".into()),
            Event::Desired(3),
        ]
    );
    assert!(metrics.calls().contains(&"statistics 3".to_string()));
    assert!(metrics.calls().contains(&"desired 3".to_string()));
    let log = server.requests();
    assert_eq!(count(&log, Recorded::is_poll), 1);
    assert_eq!(count(&log, |r| is_ack(r, 5)), 1, "{:?}", server.lines());
    assert_eq!(count(&log, is_delete_session), 1);
}

// Behaviour 110: a session without statistics fails before polling; a nil session id is
// refused when the session is created, so no listener can run on it.
#[tokio::test]
async fn b110_nil_session_or_missing_statistics_fail_before_polling() {
    let broker = Broker::with_polls([]);
    {
        let mut c = broker.creates.lock().expect("lock");
        let mut no_stats = session_json("http://127.0.0.1:1/queue/message?sessionId=abc", "t", 0);
        no_stats
            .as_object_mut()
            .expect("object")
            .remove("statistics");
        c.push_back(Some(json(200, no_stats)));
        let mut nil = session_json("http://127.0.0.1:1/queue/message?sessionId=abc", "t", 0);
        nil["sessionId"] = "00000000-0000-0000-0000-000000000000".into();
        c.push_back(Some(json(200, nil)));
    }
    let server = start(&broker).await;
    let listener = Listener::new(session(&server, 0).await, config(1)).expect("valid");
    let scaler = RecScaler::new();
    let err = listener
        .run(&*scaler, &CancellationToken::new())
        .await
        .expect_err("no statistics");
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    assert!(err.to_string().contains("statistics"), "{err}");
    assert!(scaler.events().is_empty());
    assert!(server.polls().is_empty());

    let err = server
        .client(0)
        .create_message_session_client(ScaleSetId::new(7), None)
        .await
        .expect_err("nil session id");
    assert_eq!(err.kind(), ErrorKind::InvalidSession, "{err}");
    assert!(server.polls().is_empty());
}

// Behaviour 111 + S1: a 202 re-uses the latest totalAssignedJobs (not 0) and the next poll
// carries the same lastMessageId.
#[tokio::test(start_paused = true)]
async fn b111_empty_poll_reuses_latest_statistics_and_last_message_id() {
    let broker = Broker::with_polls([
        Poll::Json(message(5, serde_json::json!([]), Some(4))),
        Poll::Status(202),
        Poll::Json(message(6, serde_json::json!([]), Some(1))),
    ]);
    let server = start(&broker).await;
    let listener = Arc::new(Listener::new(session(&server, 0).await, config(10)).expect("valid"));
    let scaler = RecScaler::new();
    let token = CancellationToken::new();
    let task = spawn_run(&listener, &scaler, &token);
    scaler
        .wait_for("four desired counts", DEADLINE, |e| e.len() >= 4)
        .await;
    server
        .wait_for("the fourth poll", |l| count(l, Recorded::is_poll) >= 4)
        .await;
    token.cancel();
    finish(task).await.expect("Ok");
    assert_eq!(scaler.desired()[..4], [2, 4, 4, 1]);
    let queries: Vec<Option<String>> = server.polls().into_iter().map(|p| p.query).collect();
    assert_eq!(
        queries[..4],
        [
            Some("sessionId=abc".to_string()),
            Some("lastMessageId=5&sessionId=abc".to_string()),
            Some("lastMessageId=5&sessionId=abc".to_string()),
            Some("lastMessageId=6&sessionId=abc".to_string()),
        ]
    );
}

// Behaviour 112 + S2: acquire all JobAvailable ids in one call, then JobStarted, then
// JobCompleted in order, then the desired count; the message is acknowledged after that.
#[tokio::test(start_paused = true)]
async fn b112_acquire_then_started_then_completed_then_desired_then_ack() {
    let jobs = serde_json::json!([
        job_started(10, "r-a"),
        job_available(1),
        job_completed(11, "r-b"),
        job_available(2),
        job_started(12, "r-c"),
    ]);
    let broker = Broker::with_polls([Poll::Json(message(8, jobs, Some(2)))]);
    let server = start(&broker).await;
    let listener = Arc::new(Listener::new(session(&server, 0).await, config(10)).expect("valid"));
    let scaler = RecScaler::new();
    let token = CancellationToken::new();
    let task = spawn_run(&listener, &scaler, &token);
    server
        .wait_for("the acknowledgement", |l| l.iter().any(|r| is_ack(r, 8)))
        .await;
    token.cancel();
    finish(task).await.expect("Ok");
    assert_eq!(
        scaler.events(),
        vec![
            Event::Desired(2),
            Event::Started(10, "r-a".into()),
            Event::Started(12, "r-c".into()),
            Event::Completed(11, "r-b".into(), "succeeded".into()),
            Event::Desired(2),
        ]
    );
    let log = server.requests();
    let acquire: Vec<_> = log
        .iter()
        .filter(|r| r.path.ends_with("/acquirejobs"))
        .collect();
    assert_eq!(acquire.len(), 1);
    assert_eq!(acquire[0].body_str(), "[1,2]");
    assert_eq!(acquire[0].header("authorization"), Some("Bearer qtoken-1"));
    let lines = server.lines();
    let pos = |needle: &str| lines.iter().position(|l| l.contains(needle)).expect(needle);
    assert!(pos("GET /queue/message") < pos("acquirejobs"));
    assert!(pos("acquirejobs") < pos("DELETE /queue/message/8"));
}

// S2: never acquire when max runners is 0 (the message is still handled and acknowledged).
#[tokio::test(start_paused = true)]
async fn s2_job_available_not_acquired_when_max_runners_is_zero() {
    let broker = Broker::with_polls([Poll::Json(message(
        3,
        serde_json::json!([job_available(1)]),
        Some(1),
    ))]);
    let server = start(&broker).await;
    let listener = Arc::new(Listener::new(session(&server, 0).await, config(0)).expect("valid"));
    let scaler = RecScaler::new();
    let token = CancellationToken::new();
    let task = spawn_run(&listener, &scaler, &token);
    server
        .wait_for("the acknowledgement", |l| l.iter().any(|r| is_ack(r, 3)))
        .await;
    token.cancel();
    finish(task).await.expect("Ok");
    assert!(!server.lines().iter().any(|l| l.contains("acquirejobs")));
    assert_eq!(server.polls()[0].header("x-scalesetmaxcapacity"), Some("0"));
    assert_eq!(scaler.desired(), vec![2, 1]);
}

// ---------------------------------------------------------------- semantics

// S2: a scaler error leaves the message unacknowledged; it is delivered again (the listener
// does not advance lastMessageId) and acknowledged only after a successful handling.
#[tokio::test(start_paused = true)]
async fn s2_scaler_error_then_redelivery_then_single_ack() {
    let m = || {
        Poll::Json(message(
            7,
            serde_json::json!([job_started(1, "r-1")]),
            Some(1),
        ))
    };
    let broker = Broker::with_polls([m(), m()]);
    let server = start(&broker).await;
    let metrics = Arc::new(RecMetrics::default());
    let listener = Arc::new(
        Listener::new(session(&server, 0).await, config(10))
            .expect("valid")
            .with_metrics(metrics.clone()),
    );
    let scaler = RecScaler::new();
    scaler.fail_started.store(1, Ordering::SeqCst);
    let token = CancellationToken::new();
    let task = spawn_run(&listener, &scaler, &token);
    server
        .wait_for("the acknowledgement", |l| l.iter().any(|r| is_ack(r, 7)))
        .await;
    server
        .wait_for("the poll after it", |l| count(l, Recorded::is_poll) >= 3)
        .await;
    token.cancel();
    finish(task).await.expect("Ok");
    assert_eq!(
        scaler.events(),
        vec![
            Event::Desired(2),
            Event::Started(1, "r-1".into()),
            Event::Started(1, "r-1".into()),
            Event::Desired(1),
        ]
    );
    let lines = server.lines();
    assert_eq!(count(&server.requests(), |r| is_ack(r, 7)), 1, "{lines:?}");
    let polls = server.polls();
    assert_eq!(
        polls[1].query.as_deref(),
        Some("sessionId=abc"),
        "not advanced"
    );
    assert_eq!(
        polls[2].query.as_deref(),
        Some("lastMessageId=7&sessionId=abc")
    );
    let second_poll = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.starts_with("GET /queue/message"))
        .nth(1)
        .map(|(i, _)| i)
        .expect("second poll");
    let ack = lines
        .iter()
        .position(|l| l == "DELETE /queue/message/7")
        .expect("ack");
    assert!(ack > second_poll, "{lines:?}");
    let calls = metrics.calls();
    assert!(calls.contains(&"failures 1".to_string()), "{calls:?}");
    assert!(calls.contains(&"failures 0".to_string()), "{calls:?}");
}

// S3: a session conflict that clears after 3 attempts, with ConflictPolicy::Wait.
#[tokio::test(start_paused = true)]
async fn s3_session_conflict_clears_after_three_attempts() {
    let conflict = || {
        Some(json(
            409,
            serde_json::json!({
            "typeName": "GitHub.Actions.Runtime.WebApi.RunnerScaleSetSessionConflictException, GitHub.Actions.Runtime.WebApi",
            "message": "The actions runner scaleset my-set already has an active session."}),
        ))
    };
    let broker = Broker::with_polls([]);
    broker
        .creates
        .lock()
        .expect("lock")
        .extend([conflict(), conflict(), conflict()]);
    let server = start(&broker).await;
    let client = server.client(0);
    let s = client
        .create_message_session_client_waiting(
            ScaleSetId::new(7),
            Some("standby"),
            ConflictPolicy::Wait(None),
            &CancellationToken::new(),
        )
        .await
        .expect("conflict clears");
    assert_eq!(s.session_id().to_string(), SESSION_ID);
    assert_eq!(count(&server.requests(), is_create), 4);

    // Fail: one attempt.
    broker.creates.lock().expect("lock").push_back(conflict());
    let err = client
        .create_message_session_client_waiting(
            ScaleSetId::new(7),
            None,
            ConflictPolicy::Fail,
            &CancellationToken::new(),
        )
        .await
        .expect_err("fail policy");
    assert_eq!(err.kind(), ErrorKind::SessionConflict);
    assert_eq!(count(&server.requests(), is_create), 5);

    // A bounded wait gives up with the conflict; a cancelled wait returns Cancelled.
    broker
        .creates
        .lock()
        .expect("lock")
        .extend((0..20).map(|_| conflict()));
    let err = client
        .create_message_session_client_waiting(
            ScaleSetId::new(7),
            None,
            ConflictPolicy::Wait(Some(Duration::from_secs(5))),
            &CancellationToken::new(),
        )
        .await
        .expect_err("deadline");
    assert_eq!(err.kind(), ErrorKind::SessionConflict);
    let cancel = CancellationToken::new();
    cancel.cancel();
    let err = client
        .create_message_session_client_waiting(
            ScaleSetId::new(7),
            None,
            ConflictPolicy::Wait(None),
            &cancel,
        )
        .await
        .expect_err("cancelled");
    assert_eq!(err.kind(), ErrorKind::Cancelled);
}

// S4: the session is evicted mid-run (404 on the poll); the listener replaces it, starts again
// from lastMessageId 0 with the new token and handles 10 more messages.
#[tokio::test(start_paused = true)]
async fn s4_session_evicted_mid_run_then_ten_more_messages() {
    let mut polls = vec![
        Poll::Json(message(1, serde_json::json!([]), Some(1))),
        Poll::Status(404),
    ];
    polls.extend((101..=110).map(|id| Poll::Json(message(id, serde_json::json!([]), Some(id)))));
    let broker = Broker::with_polls(polls);
    broker.creates.lock().expect("lock").extend([
        None,
        Some(json(200, {
            let mut s = session_json("http://placeholder", "qtoken-2", 5);
            s["sessionId"] = "99999999-2222-3333-4444-555555555555".into();
            s
        })),
    ]);
    let server = start(&broker).await;
    // The re-created session needs this server's queue URL: patch the scripted answer.
    {
        let mut c = broker.creates.lock().expect("lock");
        let mut s = session_json(&server.queue_url(), "qtoken-2", 5);
        s["sessionId"] = "99999999-2222-3333-4444-555555555555".into();
        c[1] = Some(json(200, s));
    }
    let metrics = Arc::new(RecMetrics::default());
    let listener = Arc::new(
        Listener::new(session(&server, 0).await, config(10))
            .expect("valid")
            .with_metrics(metrics.clone()),
    );
    let health = listener.health_handle();
    let scaler = RecScaler::new();
    let token = CancellationToken::new();
    let task = spawn_run(&listener, &scaler, &token);
    server
        .wait_for("ten acknowledgements after the eviction", |l| {
            (101..=110).all(|id| l.iter().any(|r| is_ack(r, id)))
        })
        .await;
    let h = health.get();
    token.cancel();
    finish(task).await.expect("Ok");

    assert_eq!(h.session_recreations, 1);
    assert_eq!(
        h.session_id.map(|u| u.to_string()).as_deref(),
        Some("99999999-2222-3333-4444-555555555555")
    );
    // initial 2, message 1, new session's statistics 5, then 101..=110
    let mut expected = vec![2, 1, 5];
    expected.extend(101..=110);
    assert_eq!(scaler.desired(), expected);
    assert!(metrics.calls().contains(&"recreated".to_string()));
    let log = server.requests();
    // The old session was deleted (best effort) before the new one was created.
    let lines = server.lines();
    let old_delete = lines
        .iter()
        .position(|l| l.contains(&format!("sessions/{SESSION_ID}")) && l.starts_with("DELETE"))
        .expect("old session deleted");
    let second_create = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.starts_with("POST") && l.ends_with("/sessions"))
        .nth(1)
        .map(|(i, _)| i)
        .expect("re-created");
    assert!(old_delete < second_create, "{lines:?}");
    let polls: Vec<_> = log.iter().filter(|r| r.is_poll()).collect();
    assert_eq!(
        polls[2].query.as_deref(),
        Some("sessionId=abc"),
        "restarts at 0"
    );
    assert_eq!(polls[2].header("authorization"), Some("Bearer qtoken-2"));
}

// S6: a shutdown during a 50 s long poll abandons it at once (well under a second of virtual
// time) and deletes the session.
#[tokio::test(start_paused = true)]
async fn s6_shutdown_during_long_poll_is_prompt_and_deletes_the_session() {
    let broker = Broker::with_polls([]);
    let server = start(&broker).await;
    let listener = Arc::new(Listener::new(session(&server, 0).await, config(10)).expect("valid"));
    let health = listener.health_handle();
    let scaler = RecScaler::new();
    let token = CancellationToken::new();
    let task = spawn_run(&listener, &scaler, &token);
    server
        .wait_for("the long poll", |l| l.iter().any(Recorded::is_poll))
        .await;
    assert!(health.get().running);
    let t0 = tokio::time::Instant::now();
    token.cancel();
    finish(task).await.expect("Ok");
    let elapsed = t0.elapsed();
    assert!(
        elapsed < Duration::from_secs(1),
        "took {elapsed:?} of virtual time"
    );
    assert_eq!(count(&server.requests(), is_delete_session), 1);
    assert!(!health.get().running);
}

// S5 + health: transient failures (5xx after retries, a 200 with an empty body, a 200 with a
// truncated body) back off and the loop continues; the streak is visible from another task.
#[tokio::test(start_paused = true)]
async fn s5_transient_failures_back_off_and_continue_health_visible() {
    let release = Arc::new(tokio::sync::Notify::new());
    let broker = Broker::with_polls([
        Poll::Status(503),
        Poll::Status(503),
        Poll::Raw(200, ""),
        Poll::Raw(200, r#"{"messageId":1,"messageTy"#),
        Poll::HoldUntil(release.clone()),
        Poll::Json(message(1, serde_json::json!([]), Some(3))),
    ]);
    let server = start(&broker).await;
    let metrics = Arc::new(RecMetrics::default());
    let listener = Arc::new(
        Listener::new(session(&server, 1).await, config(10))
            .expect("valid")
            .with_metrics(metrics.clone()),
    );
    let health = listener.health_handle();
    let scaler = RecScaler::new();
    let token = CancellationToken::new();
    let task = spawn_run(&listener, &scaler, &token);
    server
        .wait_for("the held poll", |l| count(l, Recorded::is_poll) >= 5)
        .await;
    // Read from this (another) task while the listener waits on the held poll.
    let during = tokio::spawn(async move { health.get() })
        .await
        .expect("task");
    assert_eq!(during.consecutive_failures, 3, "{during:?}");
    assert!(during.last_successful_poll.is_none());
    assert!(during.running);
    assert_eq!(
        during.session_id.map(|u| u.to_string()).as_deref(),
        Some(SESSION_ID)
    );
    release.notify_one();
    scaler
        .wait_for("the message", DEADLINE, |e| e.contains(&Event::Desired(3)))
        .await;
    let after = listener.health_handle().get();
    assert_eq!(after.consecutive_failures, 0);
    assert!(after.last_successful_poll.is_some());
    token.cancel();
    finish(task).await.expect("Ok");
    let calls = metrics.calls();
    let streak: Vec<_> = calls.iter().filter(|c| c.starts_with("failures")).collect();
    assert_eq!(
        streak,
        ["failures 1", "failures 2", "failures 3", "failures 0"]
    );
}

// S5: max_consecutive_failures ends the run (and the session is still deleted).
#[tokio::test(start_paused = true)]
async fn s5_max_consecutive_failures_ends_the_run() {
    let broker = Broker::with_polls((0..10).map(|_| Poll::Status(500)));
    let server = start(&broker).await;
    let mut cfg = config(10);
    cfg.max_consecutive_failures = Some(3);
    let listener = Arc::new(Listener::new(session(&server, 0).await, cfg).expect("valid"));
    let scaler = RecScaler::new();
    let err = finish(spawn_run(&listener, &scaler, &CancellationToken::new()))
        .await
        .expect_err("gives up");
    assert!(err.to_string().contains("3 consecutive failures"), "{err}");
    assert!(
        err.to_string().contains("500"),
        "the last cause is kept: {err}"
    );
    assert_eq!(server.polls().len(), 3);
    assert_eq!(count(&server.requests(), is_delete_session), 1);
}

// S5 (set_max_runners): a change while running reaches the next poll's capacity header.
#[tokio::test(start_paused = true)]
async fn s5_set_max_runners_changes_next_poll_capacity() {
    let release = Arc::new(tokio::sync::Notify::new());
    let broker = Broker::with_polls([Poll::HoldUntil(release.clone())]);
    let server = start(&broker).await;
    let listener = Arc::new(Listener::new(session(&server, 0).await, config(10)).expect("valid"));
    let scaler = RecScaler::new();
    let token = CancellationToken::new();
    let task = spawn_run(&listener, &scaler, &token);
    server
        .wait_for("the first poll", |l| count(l, Recorded::is_poll) >= 1)
        .await;
    listener.set_max_runners(3);
    release.notify_one();
    server
        .wait_for("the second poll", |l| count(l, Recorded::is_poll) >= 2)
        .await;
    token.cancel();
    finish(task).await.expect("Ok");
    let caps: Vec<_> = server
        .polls()
        .iter()
        .map(|p| p.header("x-scalesetmaxcapacity").unwrap_or("").to_string())
        .collect();
    assert_eq!(caps[..2], ["10", "3"]);
}

// S2/S5 and message.rs: an unknown envelope type is acknowledged (and becomes lastMessageId),
// a malformed element is skipped, a message without statistics keeps the previous ones.
#[tokio::test(start_paused = true)]
async fn unknown_envelope_acked_malformed_element_skipped_missing_statistics_kept() {
    let broker = Broker::with_polls([
        Poll::Json(serde_json::json!({"messageId": 9, "messageType": "SomethingNew", "body": "x"})),
        Poll::Json(message(
            10,
            serde_json::json!([5, {"messageType": "JobStarted", "runnerId": "bad"}, job_started(1, "r-1")]),
            Some(4),
        )),
        Poll::Json(message(
            11,
            serde_json::json!([job_completed(1, "r-1")]),
            None,
        )),
    ]);
    let server = start(&broker).await;
    let listener = Arc::new(Listener::new(session(&server, 0).await, config(10)).expect("valid"));
    let scaler = RecScaler::new();
    let token = CancellationToken::new();
    let task = spawn_run(&listener, &scaler, &token);
    server
        .wait_for("ack of 11", |l| l.iter().any(|r| is_ack(r, 11)))
        .await;
    token.cancel();
    finish(task).await.expect("Ok");
    assert_eq!(
        scaler.events(),
        vec![
            Event::Desired(2),
            Event::Started(1, "r-1".into()),
            Event::Desired(4),
            Event::Completed(1, "r-1".into(), "succeeded".into()),
            Event::Desired(4),
        ]
    );
    let log = server.requests();
    assert_eq!(count(&log, |r| is_ack(r, 9)), 1);
    assert_eq!(count(&log, |r| is_ack(r, 10)), 1);
    let polls = server.polls();
    assert_eq!(
        polls[1].query.as_deref(),
        Some("lastMessageId=9&sessionId=abc")
    );
}

// S5: a scaler that fails on every message keeps the failure streak growing even though every
// poll succeeds, so `max_consecutive_failures` ends the run (a poll that works is not a
// healthy iteration), and the message is never acknowledged.
#[tokio::test(start_paused = true)]
async fn s5_scaler_failing_on_every_message_ends_the_run() {
    let msg = message(5, serde_json::json!([]), Some(2));
    let broker = Broker::with_polls((0..10).map(|_| Poll::Json(msg.clone())));
    let server = start(&broker).await;
    let mut cfg = config(10);
    cfg.max_consecutive_failures = Some(3);
    let listener = Listener::new(session(&server, 0).await, cfg).expect("valid");
    let scaler = RecScaler::new();
    // The initial count succeeds; every later one fails.
    scaler
        .desired_script
        .lock()
        .expect("lock")
        .extend([true, false, false, false, false, false]);
    let err = listener
        .run(&*scaler, &CancellationToken::new())
        .await
        .expect_err("the streak limit ends the run");
    assert!(err.to_string().contains("3 consecutive failures"), "{err}");
    assert_eq!(listener.health().consecutive_failures, 3);
    assert!(listener.health().last_successful_poll.is_some());
    let log = server.requests();
    assert_eq!(count(&log, |r| is_ack(r, 5)), 0, "never acknowledged");
    assert_eq!(count(&log, Recorded::is_poll), 3);
}

// S4: a re-created session that carries no statistics keeps the last known demand: the scaler
// is not told that there are 0 jobs.
#[tokio::test(start_paused = true)]
async fn s4_new_session_without_statistics_keeps_the_last_demand() {
    let broker = Broker::with_polls([
        Poll::Json(message(1, serde_json::json!([]), Some(4))),
        Poll::Status(404),
    ]);
    let server = start(&broker).await;
    let first = session(&server, 0).await;
    let mut no_stats = session_json(&server.queue_url(), "qtoken-2", 0);
    no_stats
        .as_object_mut()
        .expect("a session is an object")
        .remove("statistics");
    broker
        .creates
        .lock()
        .expect("lock")
        .push_back(Some(json(200, no_stats)));
    let listener = Arc::new(Listener::new(first, config(10)).expect("valid"));
    let scaler = RecScaler::new();
    let token = CancellationToken::new();
    let task = spawn_run(&listener, &scaler, &token);
    scaler
        .wait_for("the re-sync after the re-creation", DEADLINE, |e| {
            e.iter().filter(|e| matches!(e, Event::Desired(_))).count() >= 3
        })
        .await;
    token.cancel();
    finish(task).await.expect("clean shutdown");
    // The session's 2, the message's 4, then the re-sync after the lost session keeps 4.
    assert_eq!(&scaler.desired()[..3], &[2, 4, 4], "{:?}", scaler.desired());
    assert_eq!(listener.health().session_recreations, 1);
}
