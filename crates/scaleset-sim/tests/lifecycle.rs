//! Job lifecycle scenarios: both assignment modes with a simulated runner, redelivery,
//! batching, capacity, cancel-and-requeue, events surviving a session.

mod common;

use std::time::Duration;

use common::*;
use reqwest::Method;
use scaleset_sim::runner::{self, RunnerError};
use scaleset_sim::{AssignmentMode, EnqueueJobs, SimConfig};
use serde_json::{Value, json};

fn job(label: &str, count: u32, ms: u64) -> EnqueueJobs {
    EnqueueJobs {
        labels: vec![label.into()],
        count,
        duration: Duration::from_millis(ms),
        ..Default::default()
    }
}

fn has_completed(msgs: &[Value], id: i64) -> bool {
    of_type(msgs, "JobCompleted")
        .iter()
        .any(|m| m["runnerRequestId"] == id)
}

#[tokio::test]
async fn hosted_lifecycle_with_runner() {
    let ctx = Ctx::start(fast_cfg()).await;
    let ss = ctx.create_scale_set("linux-set", &["linux", "x64"]).await;
    let s = ctx.create_session(ss).await;
    let ids = ctx
        .sim
        .enqueue_jobs(EnqueueJobs {
            labels: vec!["Linux".into()],
            count: 1,
            duration: Duration::from_millis(150),
            result: "succeeded".into(),
        })
        .await
        .expect("enqueue");
    let id = ids[0];
    let msgs = ctx
        .collect(&s, 5, |m| !of_type(m, "JobAssigned").is_empty())
        .await;
    assert!(
        of_type(&msgs, "JobAvailable").is_empty(),
        "hosted mode has no JobAvailable"
    );
    let (rid, jit) = ctx.jit(ss, "runner-hosted-1").await;
    let task = tokio::spawn(async move { runner::run(&jit, fast_runner()).await });
    let msgs = ctx.collect(&s, 5, |m| has_completed(m, id)).await;
    let started = of_type(&msgs, "JobStarted");
    assert_eq!(started.len(), 1);
    assert_eq!(started[0]["runnerId"], rid);
    assert_eq!(started[0]["runnerName"], "runner-hosted-1");
    let done = of_type(&msgs, "JobCompleted");
    assert_eq!(done[0]["result"], "succeeded");
    assert_eq!(done[0]["runnerId"], rid);
    assert_ne!(done[0]["finishTime"], "0001-01-01T00:00:00.0000000Z");
    let outcome = task.await.expect("join").expect("runner ok");
    assert_eq!(outcome.request_id, id);
    assert_eq!(outcome.result, "succeeded");
    let (ok, st) = ctx
        .sim
        .wait_until(DEADLINE, |st| st.runners.is_empty())
        .await;
    assert!(ok, "ephemeral runner removed");
    assert_eq!(
        st.job(id).expect("job").result.as_deref(),
        Some("succeeded")
    );
    let stats = st.scale_set(ss).expect("ss").statistics;
    assert_eq!(stats, scaleset_sim::Statistics::default());
}

#[tokio::test]
async fn ghes_lifecycle_with_acquire_and_failed_result() {
    let ctx = Ctx::start(SimConfig {
        mode: AssignmentMode::Ghes,
        ..fast_cfg()
    })
    .await;
    let ss = ctx.create_scale_set("ghes-set", &["self-hosted"]).await;
    let s = ctx.create_session(ss).await;
    let ids = ctx
        .sim
        .enqueue_jobs(EnqueueJobs {
            labels: vec!["self-hosted".into()],
            count: 1,
            duration: Duration::from_millis(50),
            result: "failed".into(),
        })
        .await
        .expect("enqueue");
    let id = ids[0];
    let msgs = ctx
        .collect(&s, 5, |m| !of_type(m, "JobAvailable").is_empty())
        .await;
    assert!(of_type(&msgs, "JobAssigned").is_empty());
    let st = ctx.sim.state();
    assert_eq!(
        st.scale_set(ss)
            .expect("ss")
            .statistics
            .total_available_jobs,
        1
    );
    // A runner cannot take an offered (not acquired) job.
    let r = ctx.acquire(&s, &[id]).await;
    assert_eq!(r.json()["value"], json!([id]));
    let msgs = ctx
        .collect(&s, 5, |m| !of_type(m, "JobAssigned").is_empty())
        .await;
    assert_eq!(msgs[0]["runnerRequestId"], id);
    let st = ctx.sim.state();
    let stats = st.scale_set(ss).expect("ss").statistics;
    assert_eq!(
        (
            stats.total_available_jobs,
            stats.total_acquired_jobs,
            stats.total_assigned_jobs
        ),
        (0, 1, 1)
    );
    let (_rid, jit) = ctx.jit(ss, "runner-ghes-1").await;
    let task = tokio::spawn(async move { runner::run(&jit, fast_runner()).await });
    let msgs = ctx.collect(&s, 5, |m| has_completed(m, id)).await;
    assert_eq!(of_type(&msgs, "JobCompleted")[0]["result"], "failed");
    assert_eq!(task.await.expect("join").expect("runner").result, "failed");
}

#[tokio::test]
async fn statistics_while_running() {
    let ctx = Ctx::start(fast_cfg()).await;
    let ss = ctx.create_scale_set("stats", &[]).await;
    let s = ctx.create_session(ss).await;
    ctx.sim
        .enqueue_jobs(job("stats", 2, 60_000))
        .await
        .expect("enqueue");
    ctx.collect(&s, 5, |m| of_type(m, "JobAssigned").len() == 2)
        .await;
    let (_, jit) = ctx.jit(ss, "r-busy").await;
    let _idle = ctx.jit(ss, "r-idle").await;
    let task = tokio::spawn(async move { runner::run(&jit, fast_runner()).await });
    let (ok, st) = ctx
        .sim
        .wait_until(DEADLINE, |st| {
            st.scale_set(ss)
                .is_some_and(|s| s.statistics.total_running_jobs == 1)
        })
        .await;
    assert!(ok);
    let stats = st.scale_set(ss).expect("ss").statistics;
    assert_eq!(stats.total_assigned_jobs, 2);
    assert_eq!(stats.total_registered_runners, 2);
    assert_eq!(stats.total_busy_runners, 1);
    assert_eq!(stats.total_idle_runners, 1);
    task.abort();
}

#[tokio::test]
async fn redelivery_until_deleted_and_across_sessions() {
    let ctx = Ctx::start(fast_cfg()).await;
    let ss = ctx.create_scale_set("redeliver", &[]).await;
    let s = ctx.create_session(ss).await;
    ctx.sim
        .enqueue_jobs(job("redeliver", 1, 0))
        .await
        .expect("enqueue");
    let r = ctx.poll(&s, 0, 10).await;
    assert_eq!(r.status, 200);
    let m1 = r.json()["messageId"].as_i64().expect("id");
    // Not deleted: delivered again with lastMessageId 0 (at once), but not with
    // lastMessageId = m1 before the visibility timeout (30 s by default): 202.
    assert_eq!(ctx.poll(&s, 0, 10).await.json()["messageId"], m1);
    assert_eq!(ctx.poll(&s, m1, 10).await.status, 202);
    // A newer message is preferred over the unacknowledged older one when lastMessageId = m1.
    ctx.sim
        .enqueue_jobs(job("redeliver", 1, 0))
        .await
        .expect("enqueue");
    let m2 = ctx.poll(&s, m1, 10).await.json()["messageId"]
        .as_i64()
        .expect("id");
    assert!(m2 > m1);
    assert_eq!(ctx.poll(&s, 0, 10).await.json()["messageId"], m1);
    // The session goes away; a new session still receives the unacknowledged messages.
    let r = ctx
        .tenant(
            Method::DELETE,
            &format!("_apis/runtime/runnerscalesets/{ss}/sessions/{}", s.id),
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    let s2 = ctx.create_session(ss).await;
    assert_eq!(ctx.poll(&s2, 0, 10).await.json()["messageId"], m1);
    assert_eq!(ctx.delete_message(&s2, m1).await, 204);
    assert_eq!(ctx.poll(&s2, 0, 10).await.json()["messageId"], m2);
    assert_eq!(ctx.delete_message(&s2, m2).await, 204);
    assert_eq!(ctx.poll(&s2, m2, 10).await.status, 202);
}

#[tokio::test]
async fn more_than_fifty_events_are_batched() {
    let ctx = Ctx::start(fast_cfg()).await;
    let ss = ctx.create_scale_set("batch", &[]).await;
    let s = ctx.create_session(ss).await;
    // First poll sets the capacity (nothing pending yet).
    assert_eq!(ctx.poll(&s, 0, 500).await.status, 202);
    ctx.sim
        .enqueue_jobs(job("batch", 120, 0))
        .await
        .expect("enqueue");
    let mut sizes = Vec::new();
    let mut last = 0;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while sizes.iter().sum::<usize>() < 120 {
        assert!(tokio::time::Instant::now() < deadline);
        let r = ctx.poll(&s, last, 500).await;
        if r.status != 200 {
            continue;
        }
        let env = r.json();
        let body: Vec<Value> =
            serde_json::from_str(env["body"].as_str().expect("body")).expect("array");
        assert!(body.len() <= 50);
        sizes.push(body.len());
        last = env["messageId"].as_i64().expect("id");
        assert_eq!(ctx.delete_message(&s, last).await, 204);
    }
    assert_eq!(sizes, vec![50, 50, 20]);
}

#[tokio::test]
async fn capacity_limits_assignment() {
    let ctx = Ctx::start(fast_cfg()).await;
    let ss = ctx.create_scale_set("cap", &[]).await;
    let s = ctx.create_session(ss).await;
    ctx.sim
        .enqueue_jobs(job("cap", 5, 0))
        .await
        .expect("enqueue");
    // Before any poll the capacity is 0: nothing assigned.
    let st = ctx.sim.state();
    assert_eq!(st.jobs_in("queued"), 5);
    let msgs = ctx
        .collect(&s, 2, |m| of_type(m, "JobAssigned").len() >= 2)
        .await;
    assert_eq!(of_type(&msgs, "JobAssigned").len(), 2);
    let st = ctx.sim.state();
    assert_eq!(
        st.scale_set(ss).expect("ss").statistics.total_assigned_jobs,
        2
    );
    assert_eq!(st.jobs_in("queued"), 3);
    // Capacity 0 assigns nothing more.
    assert_eq!(ctx.poll(&s, 0, 0).await.status, 202);
    assert_eq!(ctx.sim.state().jobs_in("queued"), 3);
    // Raising it assigns the rest.
    let msgs = ctx
        .collect(&s, 10, |m| of_type(m, "JobAssigned").len() >= 3)
        .await;
    assert_eq!(of_type(&msgs, "JobAssigned").len(), 3);
    assert_eq!(
        ctx.sim
            .state()
            .scale_set(ss)
            .expect("ss")
            .statistics
            .total_assigned_jobs,
        5
    );
}

#[tokio::test]
async fn unmatched_jobs_wait_for_a_matching_scale_set() {
    let ctx = Ctx::start(fast_cfg()).await;
    let other = ctx.create_scale_set("other", &["windows"]).await;
    let so = ctx.create_session(other).await;
    assert_eq!(ctx.poll(&so, 0, 10).await.status, 202);
    let ids = ctx
        .sim
        .enqueue_jobs(EnqueueJobs {
            labels: vec!["linux".into(), "gpu".into()],
            ..Default::default()
        })
        .await
        .expect("enqueue");
    assert_eq!(ctx.sim.state().jobs_in("queued"), 1);
    let partial = ctx.create_scale_set("partial", &["linux"]).await;
    let sp = ctx.create_session(partial).await;
    assert_eq!(ctx.poll(&sp, 0, 10).await.status, 202);
    let full = ctx.create_scale_set("full", &["linux", "gpu", "x64"]).await;
    let sf = ctx.create_session(full).await;
    let msgs = ctx
        .collect(&sf, 10, |m| !of_type(m, "JobAssigned").is_empty())
        .await;
    assert_eq!(msgs[0]["runnerRequestId"], ids[0]);
}

#[tokio::test]
async fn unstarted_job_is_canceled_and_requeued() {
    let ctx = Ctx::start(SimConfig {
        assignment_timeout: Duration::from_millis(150),
        max_requeues: 1,
        ..fast_cfg()
    })
    .await;
    let ss = ctx.create_scale_set("requeue", &[]).await;
    let s = ctx.create_session(ss).await;
    let id = ctx
        .sim
        .enqueue_jobs(job("requeue", 1, 0))
        .await
        .expect("enqueue")[0];
    let msgs = ctx
        .collect(&s, 1, |m| {
            of_type(m, "JobCompleted")
                .iter()
                .filter(|c| c["runnerRequestId"] == id)
                .count()
                == 2
        })
        .await;
    let kinds: Vec<&str> = msgs
        .iter()
        .map(|m| m["messageType"].as_str().expect("type"))
        .collect();
    assert_eq!(
        kinds,
        vec!["JobAssigned", "JobCompleted", "JobAssigned", "JobCompleted"]
    );
    for c in of_type(&msgs, "JobCompleted") {
        assert_eq!(c["result"], "canceled");
    }
    let (ok, st) = ctx
        .sim
        .wait_until(DEADLINE, |st| {
            st.job(id).is_some_and(|j| j.status == "completed")
        })
        .await;
    assert!(ok);
    let j = st.job(id).expect("job");
    assert_eq!(j.result.as_deref(), Some("canceled"));
    assert_eq!(j.requeues, 2);
    assert_eq!(
        st.scale_set(ss).expect("ss").statistics.total_assigned_jobs,
        0
    );
}

#[tokio::test]
async fn bad_jit_config_is_a_clear_error() {
    for bad in ["", "!!!", "aGVsbG8=", "e30=", "eyIucnVubmVyIjoiZTMwPSJ9"] {
        match runner::run(bad, fast_runner()).await {
            Err(RunnerError::InvalidJitConfig(msg)) => assert!(!msg.is_empty()),
            other => panic!("{bad:?}: expected InvalidJitConfig, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn removed_runner_stops_waiting() {
    let ctx = Ctx::start(fast_cfg()).await;
    let ss = ctx.create_scale_set("rm", &[]).await;
    let (rid, jit) = ctx.jit(ss, "r-rm").await;
    let task = tokio::spawn(async move { runner::run(&jit, fast_runner()).await });
    let (ok, _) = ctx
        .sim
        .wait_until(DEADLINE, |st| {
            st.runners.iter().any(|r| r.id == rid && r.online)
        })
        .await;
    assert!(ok);
    let r = ctx
        .tenant(
            Method::DELETE,
            &format!("_apis/distributedtask/pools/0/agents/{rid}"),
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    let res = tokio::time::timeout(DEADLINE, task)
        .await
        .expect("runner ends")
        .expect("join");
    assert!(matches!(res, Err(RunnerError::Removed)), "{res:?}");
}

/// ghes: a `JobAvailable` acknowledged but never acquired (the acquire failed) is offered
/// again after `assignment_timeout` instead of holding a capacity slot forever.
#[tokio::test]
async fn unacquired_offer_is_offered_again_and_can_run() {
    let ctx = Ctx::start(SimConfig {
        mode: AssignmentMode::Ghes,
        assignment_timeout: Duration::from_millis(200),
        ..fast_cfg()
    })
    .await;
    let ss = ctx.create_scale_set("reoffer", &[]).await;
    let s = ctx.create_session(ss).await;
    let id = ctx
        .sim
        .enqueue_jobs(job("reoffer", 1, 20))
        .await
        .expect("enqueue")[0];
    let offered = |m: &[Value]| {
        of_type(m, "JobAvailable")
            .iter()
            .any(|a| a["runnerRequestId"] == id)
    };
    ctx.collect(&s, 1, offered).await;
    ctx.sim
        .faults()
        .inject(scaleset_sim::Fault::Status {
            class: scaleset_sim::EndpointClass::Acquire,
            method: None,
            count: 1,
            status: 503,
            type_name: None,
            message: None,
            retry_after: None,
        })
        .expect("inject");
    assert_eq!(ctx.acquire(&s, &[id]).await.status, 503);
    // Offered again in a new message.
    let again = ctx.collect(&s, 1, offered).await;
    assert_eq!(of_type(&again, "JobCompleted").len(), 0, "{again:?}");
    let r = ctx.acquire(&s, &[id]).await;
    assert_eq!(r.json()["value"], json!([id]));
    let (_rid, jit) = ctx.jit(ss, "runner-reoffer-1").await;
    let task = tokio::spawn(async move { runner::run(&jit, fast_runner()).await });
    let msgs = ctx.collect(&s, 1, |m| has_completed(m, id)).await;
    assert_eq!(of_type(&msgs, "JobCompleted")[0]["result"], "succeeded");
    assert_eq!(
        task.await.expect("join").expect("runner").result,
        "succeeded"
    );
    let st = ctx.sim.state();
    assert_eq!(st.job(id).expect("job").requeues, 0);
}

/// A listener whose DELETE failed keeps polling with `lastMessageId` = that message: it gets
/// the message back once the visibility timeout passed (during its long poll), not in a hot
/// loop. A poll with a lower `lastMessageId` (a retry after a failed handling) gets it at once.
#[tokio::test]
async fn redelivery_past_last_message_id_waits_for_the_visibility_timeout() {
    let ctx = Ctx::start(SimConfig {
        long_poll: Duration::from_secs(30),
        message_visibility_timeout: Duration::from_millis(300),
        ..fast_cfg()
    })
    .await;
    let ss = ctx.create_scale_set("visibility", &[]).await;
    let s = ctx.create_session(ss).await;
    ctx.sim
        .enqueue_jobs(job("visibility", 1, 0))
        .await
        .expect("enqueue");
    let r = ctx.poll(&s, 0, 10).await;
    assert_eq!(r.status, 200);
    let m1 = r.json()["messageId"].as_i64().expect("id");
    // The failed-handling retry: lastMessageId below m1 -> at once, again and again.
    for _ in 0..3 {
        assert_eq!(ctx.poll(&s, m1 - 1, 10).await.json()["messageId"], m1);
    }
    // The failed-DELETE case: same lastMessageId. Polls in a tight loop see at most one
    // delivery per visibility timeout; the long poll (30 s) answers when m1 is visible again.
    ctx.sim.clear_requests();
    let r = tokio::time::timeout(DEADLINE, ctx.poll(&s, m1, 10))
        .await
        .expect("answered well before the 30 s long poll ends");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["messageId"], m1);
    let polls = ctx
        .sim
        .requests()
        .iter()
        .filter(|e| e.method == "GET" && e.class == scaleset_sim::EndpointClass::Message)
        .count();
    assert_eq!(polls, 1);
    // Acknowledged: nothing more.
    assert_eq!(ctx.delete_message(&s, m1).await, 204);
    assert_eq!(
        ctx.sim.state().scale_set(ss).expect("ss").unacked_messages,
        Vec::<i64>::new()
    );
}

/// A listener that crashed without deleting its session: the session idles out and a new
/// one can be created. A session with a poll in flight longer than the idle timeout stays.
#[tokio::test]
async fn abandoned_session_expires_and_a_new_one_can_be_created() {
    let ctx = Ctx::start(SimConfig {
        long_poll: Duration::from_millis(600),
        session_idle_timeout: Duration::from_millis(200),
        ..fast_cfg()
    })
    .await;
    let ss = ctx.create_scale_set("idle", &[]).await;
    let s = ctx.create_session(ss).await;
    // Polling keeps it alive even though one poll outlasts the idle timeout.
    for _ in 0..2 {
        assert_eq!(ctx.poll(&s, 0, 1).await.status, 202);
    }
    assert_eq!(ctx.sim.state().sessions.len(), 1);
    // Abandoned: no poll, no DELETE.
    let (ok, st) = ctx
        .sim
        .wait_until(DEADLINE, |st| st.sessions.is_empty())
        .await;
    assert!(ok, "the idle session expires: {:?}", st.sessions);
    assert_eq!(st.scale_set(ss).expect("ss").session_id, None);
    assert_eq!(ctx.poll(&s, 0, 1).await.status, 401);
    let s2 = ctx.create_session(ss).await;
    assert_ne!(s2.id, s.id);
}

/// `job_message_delay` holds `JobStarted` and `JobCompleted` back, as github.com delivers
/// `JobStarted` late: the runner is done before the listener hears that the job started,
/// and both arrive later, in order.
#[tokio::test]
async fn job_messages_held_back_arrive_late_and_in_order() {
    let ctx = Ctx::start(SimConfig {
        job_message_delay: Duration::from_secs(3),
        ..fast_cfg()
    })
    .await;
    let ss = ctx.create_scale_set("late-set", &["late"]).await;
    let s = ctx.create_session(ss).await;
    let id = ctx
        .sim
        .enqueue_jobs(job("late", 1, 50))
        .await
        .expect("enqueue")[0];
    let msgs = ctx
        .collect(&s, 1, |m| !of_type(m, "JobAssigned").is_empty())
        .await;
    assert!(of_type(&msgs, "JobStarted").is_empty());
    let (_, jit) = ctx.jit(ss, "late-runner").await;
    let outcome = runner::run(&jit, fast_runner()).await.expect("runner ok");
    assert_eq!(outcome.request_id, id);
    let st = ctx.sim.state();
    assert_eq!(
        st.scale_set(ss).expect("scale set").pending_events,
        2,
        "JobStarted and JobCompleted are held back while the runner already finished"
    );
    let msgs = ctx.collect(&s, 1, |m| has_completed(m, id)).await;
    let kinds: Vec<&str> = msgs
        .iter()
        .filter_map(|m| m["messageType"].as_str())
        .collect();
    assert_eq!(kinds, ["JobStarted", "JobCompleted"]);
}
