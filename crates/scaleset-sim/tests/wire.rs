//! Wire details of every surface: error bodies (including the web framework's own
//! rejections), timestamp format, App JWT issuers and the request log order.

mod common;

use common::*;
use reqwest::Method;
use serde_json::{Value, json};

/// Asserts an error answer in the Actions exception shape (or the REST shape), JSON typed.
fn assert_json_error(r: &Resp, status: u16, rest: bool, what: &str) -> Value {
    assert_eq!(
        r.status,
        status,
        "{what}: {}",
        String::from_utf8_lossy(&r.body)
    );
    let ct = r.header("content-type").unwrap_or_default();
    assert!(
        ct.starts_with("application/json"),
        "{what}: content-type {ct:?}"
    );
    let v = r.json();
    let msg = v["message"].as_str().unwrap_or_default();
    assert!(!msg.is_empty(), "{what}: message in {v}");
    if rest {
        assert!(v["documentation_url"].is_string(), "{what}: {v}");
        assert!(
            r.header("x-github-request-id").is_some(),
            "{what}: request id"
        );
    } else {
        let t = v["typeName"].as_str().unwrap_or_default();
        assert!(!t.is_empty(), "{what}: typeName in {v}");
    }
    v
}

#[tokio::test]
async fn framework_rejections_are_json_errors() {
    let ctx = Ctx::start(fast_cfg()).await;
    let base = ctx.sim.base_url();

    // 405 on a tenant route: Actions shape, ActivityId and Allow kept.
    let r = ctx
        .tenant(
            Method::PUT,
            "_apis/runtime/runnerscalesets/1/sessions",
            None,
        )
        .await;
    assert_json_error(&r, 405, false, "tenant 405");
    assert!(r.header("activityid").is_some(), "ActivityId on 405");
    assert!(r.header("allow").is_some(), "Allow kept on 405");

    // 405 on the broker.
    let r = send(
        &ctx.http,
        Method::POST,
        &format!("{base}/_broker/1/message?sessionId=x"),
        None,
        None,
    )
    .await;
    assert_json_error(&r, 405, false, "broker 405");
    assert!(r.header("activityid").is_some(), "ActivityId on broker 405");

    // 405 on REST: GitHub shape, X-GitHub-Request-Id.
    let r = send(
        &ctx.http,
        Method::GET,
        &format!("{base}/api/v3/actions/runner-registration"),
        None,
        None,
    )
    .await;
    assert_json_error(&r, 405, true, "rest 405");

    // 400 from the path extractor (invalid UTF-8 in a path parameter).
    let r = ctx
        .tenant(
            Method::GET,
            "_apis/distributedtask/pools/1/agents/%FF",
            None,
        )
        .await;
    assert_json_error(&r, 400, false, "path rejection");

    // 413 from the body limit, on the tenant and on the control API.
    let big = "x".repeat(3 * 1024 * 1024);
    let r = send(
        &ctx.http,
        Method::POST,
        &ctx.t("_apis/runtime/runnerscalesets?api-version=6.0-preview"),
        Some(&format!("Bearer {}", ctx.admin)),
        Some(json!({"name": big})),
    )
    .await;
    assert_json_error(&r, 413, false, "tenant 413");
    assert!(r.header("activityid").is_some(), "ActivityId on 413");
    let r = send(
        &ctx.http,
        Method::POST,
        &format!("{base}/_sim/jobs"),
        None,
        Some(json!({"labels": [big]})),
    )
    .await;
    assert_json_error(&r, 413, false, "control 413");

    // Unknown routes and a wrong method on the control API.
    for (m, path, rest) in [
        (Method::GET, "/tenant/1/_apis/nothing/here", false),
        (Method::GET, "/api/v3/nothing", true),
        (Method::GET, "/nothing", false),
        (Method::DELETE, "/_sim/info", false),
        (Method::PUT, "/_sim/jobs", false),
    ] {
        let r = send(&ctx.http, m.clone(), &format!("{base}{path}"), None, None).await;
        assert!(
            r.status == 404 || r.status == 405,
            "{m} {path}: {}",
            r.status
        );
        assert_json_error(&r, r.status, rest, &format!("{m} {path}"));
    }
    ctx.sim.shutdown().await;
}

/// `YYYY-MM-DDTHH:MM:SS.fffffffZ`: exactly 7 fractional digits and `Z`.
fn assert_net_ts(v: &Value, what: &str) {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("{what}: not a string: {v}"));
    let b = s.as_bytes();
    let ok = b.len() == 28
        && b[19] == b'.'
        && b[20..27].iter().all(u8::is_ascii_digit)
        && b[27] == b'Z'
        && s.parse::<jiff::Timestamp>().is_ok();
    assert!(ok, "{what}: {s:?} is not a 7-digit UTC timestamp");
}

#[tokio::test]
async fn every_timestamp_has_seven_fractional_digits() {
    let ctx = Ctx::start(fast_cfg()).await;
    let base = ctx.sim.base_url();

    // REST token expiries.
    let r = send(
        &ctx.http,
        Method::POST,
        &format!("{base}/api/v3/orgs/sim-org/actions/runners/registration-token"),
        Some(&format!("Bearer {}", ctx.sim.token())),
        None,
    )
    .await;
    assert_eq!(r.status, 201);
    assert_net_ts(&r.json()["expires_at"], "registration expires_at");

    // Scale set createdOn (create and get).
    let ss = ctx.create_scale_set("ts-set", &["ts"]).await;
    let r = ctx
        .tenant(
            Method::GET,
            &format!("_apis/runtime/runnerscalesets/{ss}"),
            None,
        )
        .await;
    assert_net_ts(&r.json()["createdOn"], "createdOn");

    // Job message times, set and unset.
    let session = ctx.create_session(ss).await;
    ctx.sim
        .enqueue_jobs(scaleset_sim::EnqueueJobs {
            labels: vec!["ts".into()],
            ..Default::default()
        })
        .await
        .expect("enqueue");
    let msgs = ctx
        .collect(&session, 1, |m| !of_type(m, "JobAssigned").is_empty())
        .await;
    let m = of_type(&msgs, "JobAssigned")[0];
    for k in [
        "queueTime",
        "scaleSetAssignTime",
        "runnerAssignTime",
        "finishTime",
    ] {
        assert_net_ts(&m[k], k);
    }
    assert_eq!(m["finishTime"], "0001-01-01T00:00:00.0000000Z");

    // Control API: job times in the state and request log times.
    let r = send(
        &ctx.http,
        Method::GET,
        &format!("{base}/_sim/state"),
        None,
        None,
    )
    .await;
    let state = r.json();
    assert_net_ts(&state["jobs"][0]["queuedAt"], "state queuedAt");
    let r = send(
        &ctx.http,
        Method::GET,
        &format!("{base}/_sim/requests"),
        None,
        None,
    )
    .await;
    let log = r.json();
    let entries = log.as_array().expect("log array");
    assert!(!entries.is_empty());
    for e in entries {
        assert_net_ts(&e["time"], "request log time");
    }
    // The Rust view reads them back.
    assert!(ctx.sim.state().jobs[0].queued_at.as_second() > 0);
    ctx.sim.shutdown().await;
}

fn signed_app_jwt(iss: Value, pem: &str) -> String {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let now = jiff::Timestamp::now().as_second();
    let key = EncodingKey::from_rsa_pem(pem.as_bytes()).expect("pem");
    jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        &json!({"iss": iss, "iat": now - 60, "exp": now + 480}),
        &key,
    )
    .expect("sign")
}

#[tokio::test]
async fn app_jwt_issuer_may_be_the_numeric_app_id() {
    let sim = scaleset_sim::Simulator::start(scaleset_sim::SimConfig {
        app_id: 987_654,
        ..fast_cfg()
    })
    .await
    .expect("start");
    let http = client();
    let creds = sim.app_credentials();
    assert_eq!(creds.app_id, 987_654);
    let url = format!(
        "{}/api/v3/app/installations/{}/access_tokens",
        sim.base_url(),
        creds.installation_id
    );
    let pem = &creds.private_key_pem;
    for (iss, want) in [
        (json!(creds.client_id), 201),
        (json!(987_654), 201),
        (json!("987654"), 201),
        (json!(scaleset_sim::APP_ID), 401),
        (json!(1), 401),
        (json!("someone-else"), 401),
        (json!(true), 401),
    ] {
        let jwt = signed_app_jwt(iss.clone(), pem);
        let r = send(
            &http,
            Method::POST,
            &url,
            Some(&format!("Bearer {jwt}")),
            None,
        )
        .await;
        assert_eq!(
            r.status,
            want,
            "iss {iss}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    let info = send(
        &http,
        Method::GET,
        &format!("{}/_sim/info", sim.base_url()),
        None,
        None,
    )
    .await;
    assert_eq!(info.json()["app"]["appId"], 987_654);
    sim.shutdown().await;

    // The default configuration accepts the default app id.
    let sim = scaleset_sim::Simulator::start(fast_cfg())
        .await
        .expect("start");
    let creds = sim.app_credentials();
    assert_eq!(creds.app_id, scaleset_sim::APP_ID);
    let url = format!(
        "{}/api/v3/app/installations/{}/access_tokens",
        sim.base_url(),
        creds.installation_id
    );
    let jwt = signed_app_jwt(json!(scaleset_sim::APP_ID), &creds.private_key_pem);
    let r = send(
        &http,
        Method::POST,
        &url,
        Some(&format!("Bearer {jwt}")),
        None,
    )
    .await;
    assert_eq!(r.status, 201);
    sim.shutdown().await;
}

#[tokio::test]
async fn completed_jobs_beyond_the_cap_are_pruned() {
    let ctx = Ctx::start(scaleset_sim::SimConfig {
        assignment_timeout: std::time::Duration::from_millis(20),
        max_requeues: 0,
        completed_jobs_capacity: 3,
        ..fast_cfg()
    })
    .await;
    let ss = ctx.create_scale_set("prune", &["prune"]).await;
    let session = ctx.create_session(ss).await;
    let ids = ctx
        .sim
        .enqueue_jobs(scaleset_sim::EnqueueJobs {
            labels: vec!["prune".into()],
            count: 5,
            ..Default::default()
        })
        .await
        .expect("enqueue");
    // The poll sets the capacity; every job is assigned, nobody runs it, each is canceled
    // and given up (no requeue left).
    let r = ctx.poll(&session, 0, 10).await;
    assert_eq!(r.status, 200);
    let (done, st) = ctx
        .sim
        .wait_until(DEADLINE, |st| {
            st.jobs.len() == 3 && st.jobs.iter().all(|j| j.status == "completed")
        })
        .await;
    assert!(done, "jobs: {:?}", st.jobs);
    let kept: Vec<i64> = st.jobs.iter().map(|j| j.request_id).collect();
    assert_eq!(
        kept,
        ids[2..].to_vec(),
        "the most recently completed are kept"
    );
    assert_eq!(
        st.scale_set(ss).map(|s| s.statistics.total_assigned_jobs),
        Some(0)
    );
    ctx.sim.shutdown().await;
}

#[tokio::test]
async fn request_log_is_in_seq_order_and_logs_abandoned_polls() {
    let ctx = Ctx::start(scaleset_sim::SimConfig {
        long_poll: std::time::Duration::from_secs(60),
        ..fast_cfg()
    })
    .await;
    let ss = ctx.create_scale_set("log", &["log"]).await;
    let session = ctx.create_session(ss).await;
    ctx.sim.clear_requests();

    // A long poll arrives first and is answered last.
    let poll = {
        let http = ctx.http.clone();
        let (url, token) = (session.mq_url.clone(), session.token.clone());
        tokio::spawn(async move {
            http.get(url)
                .bearer_auth(token)
                .header("X-ScaleSetMaxCapacity", "5")
                .send()
                .await
                .expect("poll")
                .status()
                .as_u16()
        })
    };
    let (held, _) = ctx
        .sim
        .wait_until(DEADLINE, |st| st.in_flight_polls == 1)
        .await;
    assert!(held);
    let r = ctx
        .tenant(
            Method::GET,
            &format!("_apis/runtime/runnerscalesets/{ss}"),
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    ctx.sim
        .enqueue_jobs(scaleset_sim::EnqueueJobs {
            labels: vec!["log".into()],
            ..Default::default()
        })
        .await
        .expect("enqueue");
    let status = tokio::time::timeout(DEADLINE, poll)
        .await
        .expect("poll answered")
        .expect("join");
    assert_eq!(status, 200);
    let log = ctx.sim.requests();
    assert_eq!(log.len(), 2, "{log:?}");
    assert!(log.windows(2).all(|w| w[0].seq < w[1].seq), "{log:?}");
    assert!(
        log[0].path.starts_with("/_broker/"),
        "the poll first: {log:?}"
    );
    assert_eq!(log[0].status, 200);
    // The HTTP view has the same order.
    let r = send(
        &ctx.http,
        Method::GET,
        &format!("{}/_sim/requests", ctx.sim.base_url()),
        None,
        None,
    )
    .await;
    let seqs: Vec<u64> = r
        .json()
        .as_array()
        .expect("array")
        .iter()
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(seqs, log.iter().map(|e| e.seq).collect::<Vec<_>>());

    // A poll the client abandons is logged as 499 once the server sees the connection close.
    ctx.sim.clear_requests();
    let abandoned = {
        let http = client();
        let (url, token) = (session.mq_url.clone(), session.token.clone());
        tokio::spawn(async move {
            let _ = http
                .get(format!("{url}&lastMessageId=1000"))
                .bearer_auth(token)
                .header("X-ScaleSetMaxCapacity", "5")
                .send()
                .await;
        })
    };
    let (held, _) = ctx
        .sim
        .wait_until(DEADLINE, |st| st.in_flight_polls == 1)
        .await;
    assert!(held);
    abandoned.abort();
    let _ = abandoned.await;
    let (ended, _) = ctx
        .sim
        .wait_until(DEADLINE, |st| st.in_flight_polls == 0)
        .await;
    assert!(ended, "the server dropped the abandoned poll");
    let log = ctx.sim.requests();
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0].status, 499);
    ctx.sim.shutdown().await;
}
