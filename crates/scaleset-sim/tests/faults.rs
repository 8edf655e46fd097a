//! Every fault kind, injected through the HTTP control API or the Rust API.

mod common;

use std::time::Duration;

use common::*;
use reqwest::Method;
use scaleset_sim::runner::{self, RunnerError};
use scaleset_sim::{EndpointClass, EnqueueJobs, Fault, SimConfig};
use serde_json::{Value, json};

async fn fault(ctx: &Ctx, body: Value) {
    let r = send(
        &ctx.http,
        Method::POST,
        &format!("{}/faults", ctx.sim.control_url()),
        None,
        Some(body.clone()),
    )
    .await;
    assert_eq!(
        r.status,
        204,
        "fault {body}: {}",
        String::from_utf8_lossy(&r.body)
    );
}

const GROUPS: &str = "_apis/runtime/runnergroups/?groupName=default";

#[tokio::test]
async fn latency_delays_requests_of_a_class() {
    let ctx = Ctx::start(fast_cfg()).await;
    fault(&ctx, json!({"kind": "latency", "class": "scaleset", "method": "GET", "delayMs": 200, "count": 1})).await;
    ctx.sim.clear_requests();
    assert_eq!(ctx.tenant(Method::GET, GROUPS, None).await.status, 200);
    assert_eq!(ctx.tenant(Method::GET, GROUPS, None).await.status, 200);
    let log = ctx.sim.requests();
    assert!(
        log[0].duration_ms >= 200,
        "first request delayed: {}",
        log[0].duration_ms
    );
    // The latency rule was consumed.
    let r = send(
        &ctx.http,
        Method::GET,
        &format!("{}/faults", ctx.sim.control_url()),
        None,
        None,
    )
    .await;
    assert_eq!(r.json()["requestFaults"]["latency"], json!([]));
}

#[tokio::test]
async fn status_fault_with_exception_and_retry_after() {
    let ctx = Ctx::start(fast_cfg()).await;
    fault(&ctx, json!({"kind": "status", "class": "scaleset", "count": 2, "status": 503,
        "typeName": "GitHub.Services.ServiceUnavailableException", "message": "try later", "retryAfter": 3})).await;
    for _ in 0..2 {
        let r = ctx.tenant(Method::GET, GROUPS, None).await;
        assert_eq!(r.status, 503);
        assert_eq!(r.header("retry-after").as_deref(), Some("3"));
        assert!(r.header("activityid").is_some());
        assert_eq!(
            r.json(),
            json!({"typeName": "GitHub.Services.ServiceUnavailableException", "message": "try later"})
        );
    }
    assert_eq!(ctx.tenant(Method::GET, GROUPS, None).await.status, 200);
    // Method filter: a POST-only fault does not hit GETs.
    fault(
        &ctx,
        json!({"kind": "status", "class": "github", "method": "POST", "status": 500}),
    )
    .await;
    let r = send(
        &ctx.http,
        Method::POST,
        &format!(
            "{}/api/v3/orgs/sim-org/actions/runners/registration-token",
            ctx.sim.base_url()
        ),
        Some(&format!("Bearer {}", ctx.sim.token())),
        None,
    )
    .await;
    assert_eq!(r.status, 500);
    assert!(r.header("x-github-request-id").is_some());
    // Rust API equivalent, class any.
    ctx.sim
        .faults()
        .inject(Fault::Status {
            class: EndpointClass::Any,
            method: None,
            count: 1,
            status: 429,
            type_name: None,
            message: None,
            retry_after: None,
        })
        .expect("inject");
    assert_eq!(ctx.tenant(Method::GET, GROUPS, None).await.status, 429);
}

#[tokio::test]
async fn body_faults_bom_malformed_truncated_empty() {
    let ctx = Ctx::start(fast_cfg()).await;
    fault(&ctx, json!({"kind": "bom", "class": "scaleset"})).await;
    let r = ctx.tenant(Method::GET, GROUPS, None).await;
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..3], b"\xEF\xBB\xBF");
    let v: Value = serde_json::from_slice(&r.body[3..]).expect("json after BOM");
    assert_eq!(v["count"], 1);

    fault(&ctx, json!({"kind": "malformedJson", "class": "scaleset"})).await;
    let r = ctx.tenant(Method::GET, GROUPS, None).await;
    assert_eq!(r.status, 200);
    assert!(serde_json::from_slice::<Value>(&r.body).is_err());

    fault(&ctx, json!({"kind": "truncatedJson", "class": "scaleset"})).await;
    let r = ctx.tenant(Method::GET, GROUPS, None).await;
    let full = ctx.tenant(Method::GET, GROUPS, None).await;
    assert!(serde_json::from_slice::<Value>(&r.body).is_err());
    assert!(!r.body.is_empty() && r.body.len() < full.body.len());
    assert!(full.body.starts_with(&r.body));

    fault(
        &ctx,
        json!({"kind": "emptyBody", "class": "session", "method": "POST"}),
    )
    .await;
    let ss = ctx.create_scale_set("empty", &[]).await;
    let r = ctx
        .tenant(
            Method::POST,
            &format!("_apis/runtime/runnerscalesets/{ss}/sessions"),
            Some(json!({"ownerName": "x"})),
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    // The handler did not run: a session can still be created.
    ctx.create_session(ss).await;
}

#[tokio::test]
async fn drop_connection_gives_no_answer() {
    let ctx = Ctx::start(fast_cfg()).await;
    fault(
        &ctx,
        json!({"kind": "dropConnection", "class": "scaleset", "count": 1}),
    )
    .await;
    let url = ctx.t(&format!("{GROUPS}&api-version=6.0-preview"));
    let res = async {
        let r = ctx
            .http
            .get(&url)
            .header("Authorization", format!("Bearer {}", ctx.admin))
            .send()
            .await?;
        r.bytes().await
    }
    .await;
    assert!(res.is_err(), "expected a transport error, got {res:?}");
    assert_eq!(ctx.tenant(Method::GET, GROUPS, None).await.status, 200);
    assert!(
        ctx.sim
            .requests()
            .iter()
            .any(|e| e.status == 0 && e.fault.as_deref() == Some("dropConnection"))
    );
}

#[tokio::test]
async fn expire_queue_token_then_refresh() {
    let ctx = Ctx::start(fast_cfg()).await;
    let ss = ctx.create_scale_set("qt", &[]).await;
    let s = ctx.create_session(ss).await;
    fault(&ctx, json!({"kind": "expireQueueToken", "scaleSetId": ss})).await;
    assert_eq!(ctx.poll(&s, 0, 1).await.status, 401);
    assert_eq!(ctx.acquire(&s, &[]).await.status, 401);
    assert_eq!(ctx.delete_message(&s, 1).await, 401);
    let r = ctx
        .tenant(
            Method::PATCH,
            &format!("_apis/runtime/runnerscalesets/{ss}/sessions/{}", s.id),
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    let s2 = Session::from(r.json(), ss);
    assert_eq!(ctx.poll(&s2, 0, 1).await.status, 202);
}

#[tokio::test]
async fn expire_queue_token_by_ttl() {
    let ctx = Ctx::start(SimConfig {
        queue_token_ttl: Duration::from_millis(1),
        ..fast_cfg()
    })
    .await;
    let ss = ctx.create_scale_set("ttl", &[]).await;
    let s = ctx.create_session(ss).await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        assert!(tokio::time::Instant::now() < deadline);
        if ctx.poll(&s, 0, 1).await.status == 401 {
            break;
        }
    }
}

#[tokio::test]
async fn expire_admin_token() {
    let ctx = Ctx::start(fast_cfg()).await;
    ctx.sim
        .faults()
        .inject(Fault::ExpireAdminToken)
        .expect("inject");
    let r = ctx.tenant(Method::GET, GROUPS, None).await;
    assert_eq!(r.status, 401);
    let (_, admin) = admin_connection(&ctx.http, &ctx.sim).await;
    let url = ctx.t(&format!("{GROUPS}&api-version=6.0-preview"));
    let r = send(
        &ctx.http,
        Method::GET,
        &url,
        Some(&format!("Bearer {admin}")),
        None,
    )
    .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn foreign_session_conflicts_until_released() {
    let ctx = Ctx::start(fast_cfg()).await;
    let ss = ctx.create_scale_set("foreign", &[]).await;
    fault(
        &ctx,
        json!({"kind": "foreignSession", "scaleSetId": ss, "ownerName": "other-host"}),
    )
    .await;
    let path = format!("_apis/runtime/runnerscalesets/{ss}/sessions");
    for _ in 0..2 {
        let r = ctx
            .tenant(Method::POST, &path, Some(json!({"ownerName": "me"})))
            .await;
        assert_eq!(r.status, 409);
        assert_eq!(
            r.json()["message"],
            "The actions runner scaleset foreign already has an active session."
        );
    }
    fault(
        &ctx,
        json!({"kind": "releaseForeignSession", "scaleSetId": ss}),
    )
    .await;
    ctx.create_session(ss).await;
    // DELETE /_sim/faults also releases foreign sessions.
    let ss2 = ctx.create_scale_set("foreign2", &[]).await;
    fault(&ctx, json!({"kind": "foreignSession", "scaleSetId": ss2})).await;
    let r = send(
        &ctx.http,
        Method::DELETE,
        &format!("{}/faults", ctx.sim.control_url()),
        None,
        None,
    )
    .await;
    assert_eq!(r.status, 204);
    ctx.create_session(ss2).await;
}

#[tokio::test]
async fn evicted_session() {
    let ctx = Ctx::start(SimConfig {
        long_poll: Duration::from_secs(20),
        ..fast_cfg()
    })
    .await;
    let ss = ctx.create_scale_set("evict", &[]).await;
    let s = ctx.create_session(ss).await;
    // An in-flight long poll ends with 401 when the session is evicted.
    let pending = {
        let s = s.clone();
        let http = ctx.http.clone();
        tokio::spawn(async move {
            http.get(&s.mq_url)
                .header("Authorization", format!("Bearer {}", s.token))
                .header("X-ScaleSetMaxCapacity", "1")
                .send()
                .await
                .expect("send")
                .status()
                .as_u16()
        })
    };
    let (ok, _) = ctx
        .sim
        .wait_until(DEADLINE, |st| {
            st.scale_set(ss).is_some_and(|s| s.max_capacity == Some(1))
        })
        .await;
    assert!(ok);
    fault(&ctx, json!({"kind": "evictSession", "scaleSetId": ss})).await;
    assert_eq!(
        tokio::time::timeout(DEADLINE, pending)
            .await
            .expect("poll ends")
            .expect("join"),
        401
    );
    assert_eq!(ctx.poll(&s, 0, 1).await.status, 401);
    let r = ctx
        .tenant(
            Method::PATCH,
            &format!("_apis/runtime/runnerscalesets/{ss}/sessions/{}", s.id),
            None,
        )
        .await;
    assert_eq!(r.status, 404);
    assert!(
        r.json()["typeName"]
            .as_str()
            .expect("t")
            .contains("RunnerAdminException")
    );
    ctx.create_session(ss).await;
}

#[tokio::test]
async fn scale_set_deleted_server_side() {
    let ctx = Ctx::start(fast_cfg()).await;
    let ss = ctx.create_scale_set("gone", &[]).await;
    let s = ctx.create_session(ss).await;
    ctx.sim
        .faults()
        .inject(Fault::DeleteScaleSet { scale_set_id: ss })
        .expect("inject");
    assert_eq!(
        ctx.tenant(
            Method::GET,
            &format!("_apis/runtime/runnerscalesets/{ss}"),
            None
        )
        .await
        .status,
        404
    );
    let r = ctx
        .tenant(
            Method::POST,
            &format!("_apis/runtime/runnerscalesets/{ss}/sessions"),
            Some(json!({"ownerName": "x"})),
        )
        .await;
    assert_eq!(r.status, 404);
    assert!(
        r.json()["typeName"]
            .as_str()
            .expect("t")
            .contains("RunnerScaleSetNotFoundException")
    );
    assert_eq!(ctx.poll(&s, 0, 1).await.status, 401);
    assert!(
        ctx.sim
            .faults()
            .inject(Fault::DeleteScaleSet { scale_set_id: ss })
            .is_err()
    );
}

#[tokio::test]
async fn empty_message_queue_url() {
    let ctx = Ctx::start(fast_cfg()).await;
    let ss = ctx.create_scale_set("nourl", &[]).await;
    fault(&ctx, json!({"kind": "emptyMessageQueueUrl"})).await;
    let r = ctx
        .tenant(
            Method::POST,
            &format!("_apis/runtime/runnerscalesets/{ss}/sessions"),
            Some(json!({"ownerName": "x"})),
        )
        .await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["messageQueueUrl"], "");
    let sid = v["sessionId"].as_str().expect("id").to_owned();
    // Refresh keeps the broken URL (it is the session's), a new session gets a real one.
    let r = ctx
        .tenant(
            Method::DELETE,
            &format!("_apis/runtime/runnerscalesets/{ss}/sessions/{sid}"),
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    let s = ctx.create_session(ss).await;
    assert!(s.mq_url.starts_with("http://"));
}

#[tokio::test]
async fn runner_never_online() {
    let ctx = Ctx::start(fast_cfg()).await;
    let ss = ctx.create_scale_set("never", &[]).await;
    let s = ctx.create_session(ss).await;
    ctx.sim
        .enqueue_jobs(EnqueueJobs {
            labels: vec!["never".into()],
            ..Default::default()
        })
        .await
        .expect("enqueue");
    ctx.collect(&s, 1, |m| !of_type(m, "JobAssigned").is_empty())
        .await;
    fault(&ctx, json!({"kind": "runnerNeverOnline", "count": 1})).await;
    let (rid, jit) = ctx.jit(ss, "r-never").await;
    let task = tokio::spawn(async move { runner::run(&jit, fast_runner()).await });
    // Wait until the runner asked to come online; it must stay offline and never take the job.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let online_path = format!("/_sim/runner/{rid}/online");
    while !ctx
        .sim
        .requests()
        .iter()
        .any(|e| e.path == online_path && e.status == 200)
    {
        assert!(tokio::time::Instant::now() < deadline);
        let _ = ctx
            .sim
            .wait_until(Duration::from_millis(100), |_| false)
            .await;
    }
    let st = ctx.sim.state();
    let r = st.runners.iter().find(|r| r.id == rid).expect("runner");
    assert!(!r.online);
    assert_eq!(r.job_request_id, None);
    assert!(!task.is_finished());
    task.abort();
    // The next runner is normal.
    let (_, jit) = ctx.jit(ss, "r-normal").await;
    let out = runner::run(&jit, fast_runner()).await.expect("runner");
    assert_eq!(out.result, "succeeded");
}

#[tokio::test]
async fn runner_crash_mid_job_fails_the_job() {
    let ctx = Ctx::start(SimConfig {
        runner_heartbeat_timeout: Duration::from_millis(300),
        ..fast_cfg()
    })
    .await;
    let ss = ctx.create_scale_set("crash", &[]).await;
    let s = ctx.create_session(ss).await;
    let id = ctx
        .sim
        .enqueue_jobs(EnqueueJobs {
            labels: vec!["crash".into()],
            duration: Duration::from_millis(200),
            ..Default::default()
        })
        .await
        .expect("enqueue")[0];
    ctx.collect(&s, 1, |m| !of_type(m, "JobAssigned").is_empty())
        .await;
    ctx.sim
        .faults()
        .inject(Fault::RunnerCrashMidJob { count: 1 })
        .expect("inject");
    let (rid, jit) = ctx.jit(ss, "r-crash").await;
    let res = runner::run(&jit, fast_runner()).await;
    assert!(matches!(res, Err(RunnerError::Crashed)), "{res:?}");
    let msgs = ctx
        .collect(&s, 1, |m| {
            of_type(m, "JobCompleted")
                .iter()
                .any(|c| c["runnerRequestId"] == id)
        })
        .await;
    let done = of_type(&msgs, "JobCompleted");
    assert_eq!(done[0]["result"], "failed");
    assert_eq!(done[0]["runnerId"], rid);
    let (ok, st) = ctx
        .sim
        .wait_until(DEADLINE, |st| st.runners.is_empty())
        .await;
    assert!(ok, "dead runner removed");
    assert_eq!(st.job(id).expect("job").result.as_deref(), Some("failed"));
}

#[tokio::test]
async fn runner_crash_before_job_leaves_the_job_to_the_next_runner() {
    let ctx = Ctx::start(fast_cfg()).await;
    let ss = ctx.create_scale_set("early", &[]).await;
    let s = ctx.create_session(ss).await;
    let id = ctx
        .sim
        .enqueue_jobs(EnqueueJobs {
            labels: vec!["early".into()],
            ..Default::default()
        })
        .await
        .expect("enqueue")[0];
    ctx.collect(&s, 1, |m| !of_type(m, "JobAssigned").is_empty())
        .await;
    ctx.sim
        .faults()
        .inject(Fault::RunnerCrashBeforeJob { count: 1 })
        .expect("inject");
    let (rid, jit) = ctx.jit(ss, "r-early").await;
    let res = runner::run(&jit, fast_runner()).await;
    assert!(matches!(res, Err(RunnerError::CrashedBeforeJob)), "{res:?}");
    let st = ctx.sim.state();
    let r = st.runners.iter().find(|r| r.id == rid).expect("runner");
    assert!(r.online, "it came online before crashing");
    assert_eq!(r.job_request_id, None, "it took no job");
    let job = st.job(id).expect("job");
    assert_eq!(job.status, "assigned", "the job still waits: {job:?}");
    assert_eq!(st.runners_registered, 1);
    // The next runner takes the job and succeeds.
    let (_, jit) = ctx.jit(ss, "r-next").await;
    let out = runner::run(&jit, fast_runner()).await.expect("runner");
    assert_eq!((out.request_id, out.result.as_str()), (id, "succeeded"));
    assert_eq!(ctx.sim.state().runners_registered, 2);
}

#[tokio::test]
async fn runner_fail_job_reports_the_job_failed() {
    let ctx = Ctx::start(fast_cfg()).await;
    let ss = ctx.create_scale_set("fails", &[]).await;
    let s = ctx.create_session(ss).await;
    let id = ctx
        .sim
        .enqueue_jobs(EnqueueJobs {
            labels: vec!["fails".into()],
            ..Default::default()
        })
        .await
        .expect("enqueue")[0];
    ctx.collect(&s, 1, |m| !of_type(m, "JobAssigned").is_empty())
        .await;
    let body = json!({"kind": "runnerFailJob", "count": 1});
    fault(&ctx, body).await;
    let (rid, jit) = ctx.jit(ss, "r-fails").await;
    let out = runner::run(&jit, fast_runner()).await.expect("runner");
    assert_eq!((out.request_id, out.result.as_str()), (id, "failed"));
    let msgs = ctx
        .collect(&s, 1, |m| {
            of_type(m, "JobCompleted")
                .iter()
                .any(|c| c["runnerRequestId"] == id)
        })
        .await;
    let done = of_type(&msgs, "JobCompleted");
    assert_eq!(done[0]["result"], "failed");
    assert_eq!(done[0]["runnerId"], rid);
    let st = ctx.sim.state();
    assert_eq!(st.job(id).expect("job").result.as_deref(), Some("failed"));
    assert!(st.runners.is_empty(), "the ephemeral runner is removed");
    // The fault was consumed: the next runner's job succeeds.
    ctx.sim
        .enqueue_jobs(EnqueueJobs {
            labels: vec!["fails".into()],
            ..Default::default()
        })
        .await
        .expect("enqueue");
    ctx.collect(&s, 1, |m| !of_type(m, "JobAssigned").is_empty())
        .await;
    let (_, jit) = ctx.jit(ss, "r-ok").await;
    let out = runner::run(&jit, fast_runner()).await.expect("runner");
    assert_eq!(out.result, "succeeded");
}

#[tokio::test]
async fn faults_listing_and_clearing() {
    let ctx = Ctx::start(fast_cfg()).await;
    fault(
        &ctx,
        json!([
            {"kind": "status", "class": "message", "status": 500, "count": 3},
            {"kind": "latency", "class": "acquire", "delayMs": 10},
            {"kind": "runnerCrashMidJob", "count": 2},
            {"kind": "emptyMessageQueueUrl"}
        ]),
    )
    .await;
    let r = send(
        &ctx.http,
        Method::GET,
        &format!("{}/faults", ctx.sim.control_url()),
        None,
        None,
    )
    .await;
    let v = r.json();
    assert_eq!(v["requestFaults"]["responses"][0]["remaining"], 3);
    assert_eq!(v["runnerFaults"].as_array().expect("list").len(), 2);
    assert_eq!(v["emptyMessageQueueUrl"], 1);
    ctx.sim.faults().clear();
    let v = ctx.sim.faults().pending();
    assert_eq!(v["requestFaults"]["responses"], json!([]));
    assert_eq!(v["runnerFaults"], json!([]));
    assert_eq!(v["emptyMessageQueueUrl"], 0);
}

#[tokio::test]
async fn status_fault_accepts_only_final_statuses_and_sends_no_body_for_204_304() {
    let ctx = Ctx::start(fast_cfg()).await;
    for status in [100, 101, 199, 600, 0] {
        let body = json!({"kind": "status", "class": "scaleset", "status": status});
        let r = send(
            &ctx.http,
            Method::POST,
            &format!("{}/faults", ctx.sim.control_url()),
            None,
            Some(body),
        )
        .await;
        assert_eq!(r.status, 400, "status {status}");
        let msg = r.json()["message"].as_str().unwrap_or_default().to_owned();
        assert!(msg.contains("status"), "names the field: {msg}");
    }
    for status in [204u16, 304] {
        fault(
            &ctx,
            json!({"kind": "status", "class": "scaleset", "status": status}),
        )
        .await;
        let r = ctx.tenant(Method::GET, GROUPS, None).await;
        assert_eq!(r.status, status);
        assert!(r.body.is_empty(), "no body with {status}");
        assert_eq!(
            r.header("content-type"),
            None,
            "no content type with {status}"
        );
        assert!(r.header("activityid").is_some());
    }
    // The connection is still usable afterwards.
    assert_eq!(ctx.tenant(Method::GET, GROUPS, None).await.status, 200);
}

#[tokio::test]
async fn expire_queue_token_ends_a_poll_in_flight_with_401() {
    let ctx = std::sync::Arc::new(
        Ctx::start(SimConfig {
            long_poll: Duration::from_secs(60),
            ..fast_cfg()
        })
        .await,
    );
    let ss = ctx.create_scale_set("qt-wake", &[]).await;
    let s = ctx.create_session(ss).await;
    let poll = {
        let ctx = ctx.clone();
        tokio::spawn(async move { ctx.poll(&s, 0, 1).await.status })
    };
    let (ok, _) = ctx
        .sim
        .wait_until(DEADLINE, |st| st.in_flight_polls == 1)
        .await;
    assert!(ok, "the poll is in flight");
    ctx.sim
        .faults()
        .inject(Fault::ExpireQueueToken {
            scale_set_id: Some(ss),
        })
        .expect("inject");
    let status = tokio::time::timeout(DEADLINE, poll)
        .await
        .expect("answered before the 60 s long poll ends")
        .expect("join");
    assert_eq!(status, 401);
}

#[tokio::test]
async fn queue_token_expiring_by_ttl_ends_a_poll_in_flight_with_401() {
    let ctx = Ctx::start(SimConfig {
        long_poll: Duration::from_secs(60),
        queue_token_ttl: Duration::from_millis(300),
        ..fast_cfg()
    })
    .await;
    let ss = ctx.create_scale_set("qt-ttl-wake", &[]).await;
    let s = ctx.create_session(ss).await;
    let status = tokio::time::timeout(DEADLINE, ctx.poll(&s, 0, 1))
        .await
        .expect("answered before the 60 s long poll ends")
        .status;
    assert_eq!(status, 401);
}
