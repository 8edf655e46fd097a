//! JIT configs and runners over HTTP (PROTOCOL.md section 9, behaviours 45-52).

mod common;

use actions_scaleset::{ErrorKind, JitRunnerSetting, RunnerId, ScaleSetId};
use common::*;

const JIT: &str = "_apis/runtime/runnerscalesets/7/generatejitconfig";
const AGENTS: &str = "_apis/distributedtask/pools/0/agents";

fn setting() -> JitRunnerSetting {
    JitRunnerSetting {
        name: "runner-1a2b3c4d".into(),
        work_folder: String::new(),
    }
}

// Behaviour 45 (and section 3.4 #10): the JIT request body has both keys; an answer without
// `runner`/`encodedJITConfig` is an empty config, not an error.
#[tokio::test]
async fn b45_jit_body_and_empty_answer() {
    let s = TestServer::with_auth().await;
    s.on_seq(
        "POST",
        &tenant_path(JIT),
        vec![
            Reply::json(200, r#"{"something":"unrelated"}"#),
            Reply::json(
                200,
                r#"{"runner":{"id":42,"name":"runner-1a2b3c4d","runnerScaleSetId":7},
                    "encodedJITConfig":"eyJhIjoiYiJ9"}"#,
            ),
        ],
    );
    let c = client(&s);
    let empty = within(c.generate_jit_runner_config(ScaleSetId::new(7), &setting()))
        .await
        .expect("ok");
    assert!(empty.encoded_jit_config.is_empty());
    assert_eq!(empty.runner.id, RunnerId::new(0));
    let jit = within(c.generate_jit_runner_config(ScaleSetId::new(7), &setting()))
        .await
        .expect("ok");
    assert_eq!(jit.runner.id, RunnerId::new(42));
    assert_eq!(jit.runner.runner_scale_set_id, ScaleSetId::new(7));
    assert_eq!(jit.encoded_jit_config.expose_secret(), "eyJhIjoiYiJ9");
    let r = &s.requests_to(&tenant_path(JIT))[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.raw_query, "api-version=6.0-preview");
    assert_eq!(
        r.json(),
        json(r#"{"name":"runner-1a2b3c4d","workFolder":""}"#)
    );
}

// Behaviour 46: 503 forever with retryMax 1 -> exactly 2 requests and an error.
#[tokio::test]
async fn b46_jit_retries_server_errors() {
    let s = TestServer::with_auth().await;
    s.on_tenant("POST", JIT, |_, _| Reply::status(503));
    let c = builder(&s).retry_max(1).build().expect("client");
    let e = within(c.generate_jit_runner_config(ScaleSetId::new(7), &setting()))
        .await
        .expect_err("503");
    assert_eq!(e.status(), Some(503));
    assert_eq!(s.count(&tenant_path(JIT)), 2);
}

// Behaviour 47: 500 with retryMax 0 -> the error names POST and generatejitconfig.
#[tokio::test]
async fn b47_jit_error_names_method_and_url() {
    let s = TestServer::with_auth().await;
    s.on_tenant("POST", JIT, |_, _| Reply::status(500));
    let c = builder(&s).retry_max(0).build().expect("client");
    let e = within(c.generate_jit_runner_config(ScaleSetId::new(7), &setting()))
        .await
        .expect_err("500");
    let text = e.to_string();
    assert!(
        text.contains("POST") && text.contains("generatejitconfig"),
        "{text}"
    );
    assert_eq!(s.count(&tenant_path(JIT)), 1);
}

// Behaviour 48: 409 AgentExistsException -> kind RunnerExists, message kept.
#[tokio::test]
async fn b48_jit_agent_exists() {
    let s = TestServer::with_auth().await;
    s.on_tenant("POST", JIT, |_, _| {
        Reply::json(
            409,
            r#"{"typeName":"GitHub.DistributedTask.WebApi.AgentExistsException, GitHub.DistributedTask.WebApi",
                "message":"Agent runner-1a2b3c4d already exists"}"#,
        )
    });
    let e = within(client(&s).generate_jit_runner_config(ScaleSetId::new(7), &setting()))
        .await
        .expect_err("409");
    assert_eq!(e.kind(), ErrorKind::RunnerExists);
    assert_eq!(e.status(), Some(409));
    assert!(e.to_string().contains("already exists"), "{e}");
    assert_eq!(s.count(&tenant_path(JIT)), 1, "409 is not retried");
}

// Behaviour 49: get runner by id returns the reference; 503 forever (retryMax 1) -> 2 requests.
#[tokio::test]
async fn b49_get_runner() {
    let s = TestServer::with_auth().await;
    s.on_seq(
        "GET",
        &tenant_path(&format!("{AGENTS}/1")),
        vec![
            Reply::json(
                200,
                r#"{"id":1,"name":"self-hosted-ubuntu","runnerScaleSetId":7}"#,
            ),
            Reply::status(503),
        ],
    );
    let c = builder(&s).retry_max(1).build().expect("client");
    let r = within(c.get_runner(RunnerId::new(1))).await.expect("ok");
    assert_eq!(
        (r.id, r.name.as_str(), r.runner_scale_set_id),
        (RunnerId::new(1), "self-hosted-ubuntu", ScaleSetId::new(7))
    );
    let e = within(c.get_runner(RunnerId::new(1)))
        .await
        .expect_err("503");
    assert_eq!(e.status(), Some(503));
    let reqs = s.requests_to("/tenant/123/_apis/distributedtask/pools/0/agents/1");
    assert_eq!(reqs.len(), 3);
    assert_eq!(reqs[0].raw_query, "api-version=6.0-preview");
}

// Section 3.4 #11, our choice: a 404 on get runner is Error::RunnerNotFound whether or not
// the body names AgentNotFoundException (behaviour 103 for the named case).
#[tokio::test]
async fn get_runner_404_is_runner_not_found() {
    let s = TestServer::with_auth().await;
    s.on_seq(
        "GET",
        &tenant_path(&format!("{AGENTS}/9")),
        vec![
            Reply::status(404),
            Reply::json(
                404,
                r#"{"typeName":"GitHub.DistributedTask.WebApi.AgentNotFoundException, GitHub.DistributedTask.WebApi","message":"No agent 9"}"#,
            ),
            Reply::text(404, "gone"),
        ],
    );
    let c = client(&s);
    for _ in 0..3 {
        let e = within(c.get_runner(RunnerId::new(9)))
            .await
            .expect_err("404");
        assert_eq!(e.kind(), ErrorKind::RunnerNotFound, "{e}");
        assert_eq!(e.status(), Some(404));
    }
}

// Behaviour 50: by name: count 1 -> the runner, count 0 -> none, 503 -> retryMax+1 requests.
#[tokio::test]
async fn b50_get_runner_by_name() {
    let s = TestServer::with_auth().await;
    s.on_seq(
        "GET",
        &tenant_path(AGENTS),
        vec![
            Reply::json(200, r#"{"count":1,"value":[{"id":3,"name":"r-3"}]}"#),
            Reply::json(200, r#"{"count":0,"value":[]}"#),
            Reply::status(503),
        ],
    );
    let c = builder(&s).retry_max(2).build().expect("client");
    let r = within(c.get_runner_by_name("r-3"))
        .await
        .expect("ok")
        .expect("some");
    assert_eq!(r.id, RunnerId::new(3));
    assert!(
        within(c.get_runner_by_name("r-4"))
            .await
            .expect("ok")
            .is_none()
    );
    let e = within(c.get_runner_by_name("r-5")).await.expect_err("503");
    assert_eq!(e.status(), Some(503));
    let reqs = s.requests_to(&tenant_path(AGENTS));
    assert_eq!(reqs.len(), 2 + 3);
    assert_eq!(reqs[0].raw_query, "agentName=r-3&api-version=6.0-preview");
}

// Section 3.4 #12 with our issue item 5: several runners or a count/value mismatch are
// protocol errors.
#[tokio::test]
async fn get_runner_by_name_multiple_or_mismatch_is_protocol_error() {
    let s = TestServer::with_auth().await;
    s.on_seq(
        "GET",
        &tenant_path(AGENTS),
        vec![
            Reply::json(200, r#"{"count":2,"value":[{"id":1},{"id":2}]}"#),
            Reply::json(200, r#"{"count":1,"value":[]}"#),
        ],
    );
    let c = client(&s);
    let e = within(c.get_runner_by_name("r"))
        .await
        .expect_err("multiple");
    assert_eq!(e.kind(), ErrorKind::Protocol);
    assert!(e.to_string().contains("multiple runners found"), "{e}");
    let e = within(c.get_runner_by_name("r"))
        .await
        .expect_err("mismatch");
    assert_eq!(e.kind(), ErrorKind::Protocol);
}

// Behaviours 51 and 52: remove runner: 204 -> ok; 503 forever (retryMax 1) -> 2 requests;
// 400 JobStillRunningException -> kind JobStillRunning.
#[tokio::test]
async fn b51_b52_remove_runner() {
    let s = TestServer::with_auth().await;
    let path = tenant_path(&format!("{AGENTS}/5"));
    s.on_seq(
        "DELETE",
        &path,
        vec![
            Reply::status(204),
            Reply::json(
                400,
                r#"{"typeName":"GitHub.DistributedTask.WebApi.JobStillRunningException, GitHub.DistributedTask.WebApi","message":"job running"}"#,
            ),
            Reply::status(503),
        ],
    );
    let c = builder(&s).retry_max(1).build().expect("client");
    within(c.remove_runner(RunnerId::new(5)))
        .await
        .expect("removed");
    let e = within(c.remove_runner(RunnerId::new(5)))
        .await
        .expect_err("busy");
    assert_eq!(e.kind(), ErrorKind::JobStillRunning);
    assert_eq!(e.status(), Some(400));
    let e = within(c.remove_runner(RunnerId::new(5)))
        .await
        .expect_err("503");
    assert_eq!(e.status(), Some(503));
    let reqs = s.requests_to(&path);
    assert_eq!(reqs.len(), 1 + 1 + 2);
    assert!(reqs.iter().all(|r| r.method == "DELETE"));
}
