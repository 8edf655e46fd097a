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
