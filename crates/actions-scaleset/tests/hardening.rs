//! Failure modes found in review, each pinned by a test: credentials GitHub refuses, POSTs
//! whose first attempt may have been applied before its answer was lost, secrets in the body
//! of an undecodable success answer, and a shutdown that arrives while a session is being
//! created.

mod common;

use std::sync::Arc;

use actions_scaleset::{
    CancellationToken, ConflictPolicy, Error, ErrorKind, JitRunnerSetting, RunnerGroupId, RunnerId,
    RunnerScaleSet, ScaleSetId,
};
use common::*;
use futures::FutureExt;

const SETS: &str = "_apis/runtime/runnerscalesets";
const AGENTS: &str = "_apis/distributedtask/pools/0/agents";
const JIT: &str = "_apis/runtime/runnerscalesets/1/generatejitconfig";

fn no_retries_after_auth(s: &TestServer) -> actions_scaleset::Client {
    builder(s).retry_max(0).build().expect("client builds")
}

// GitHub refusing the credentials is a typed, non-retryable `Unauthorized`, whether the
// registration-token call (401) or the runner registration (403) refuses them.
#[tokio::test]
async fn refused_credentials_are_unauthorized() {
    let s = TestServer::start().await;
    s.on("POST", REG_TOKEN_PATH, |_, _| {
        Reply::json(401, r#"{"message":"Bad credentials"}"#)
    });
    let e = within(client(&s).get_runner(RunnerId::new(1)))
        .await
        .expect_err("refused");
    assert_eq!(e.kind(), ErrorKind::Unauthorized, "{e}");
    assert!(!e.is_retryable());
    assert!(!e.to_string().contains(PAT), "{e}");
    assert_eq!(
        s.count(REG_TOKEN_PATH),
        1,
        "a 401 on the token call is not retried"
    );

    let s = TestServer::with_auth().await;
    s.on("POST", RUNNER_REGISTRATION_PATH, |_, _| {
        Reply::json(
            403,
            r#"{"message":"Resource not accessible by integration"}"#,
        )
    });
    let e = within(client(&s).get_runner(RunnerId::new(1)))
        .await
        .expect_err("forbidden");
    assert_eq!(e.kind(), ErrorKind::Unauthorized, "{e}");
    assert_eq!(s.count(RUNNER_REGISTRATION_PATH), 1, "a 403 is not retried");
}

// A tenant call refused again right after a fresh admin token is `Unauthorized`, not a
// generic status.
#[tokio::test]
async fn tenant_401_after_a_fresh_token_is_unauthorized() {
    let s = TestServer::with_auth().await;
    s.on_tenant("GET", &format!("{AGENTS}/1"), |_, _| Reply::status(401));
    let e = within(client(&s).get_runner(RunnerId::new(1)))
        .await
        .expect_err("refused");
    assert_eq!(e.kind(), ErrorKind::Unauthorized, "{e}");
    assert_eq!(
        s.count(&tenant_path(&format!("{AGENTS}/1"))),
        2,
        "one retry after a refresh"
    );
}

// A JIT request whose first attempt registered the runner but lost its answer (502) meets
// `AgentExistsException` on the retry. Nobody holds that runner's config, so the client
// removes it and mints a fresh one instead of failing with `RunnerExists` and leaking it.
#[tokio::test]
async fn retried_jit_that_meets_its_own_runner_mints_again() {
    let s = TestServer::with_auth().await;
    s.on_seq(
        "POST",
        &tenant_path(JIT),
        vec![
            Reply::status(502),
            Reply::json(
                409,
                r#"{"typeName":"GitHub.DistributedTask.WebApi.AgentExistsException","message":"exists"}"#,
            ),
            Reply::json(
                200,
                r#"{"runner":{"id":43,"name":"runner-a","runnerScaleSetId":1},"encodedJITConfig":"bmV3"}"#,
            ),
        ],
    );
    s.on_tenant("GET", AGENTS, |_, _| {
        Reply::json(
            200,
            r#"{"count":1,"value":[{"id":42,"name":"runner-a","runnerScaleSetId":1}]}"#,
        )
    });
    s.on_tenant("DELETE", &format!("{AGENTS}/42"), |_, _| Reply::status(204));
    let setting = JitRunnerSetting {
        name: "runner-a".into(),
        work_folder: String::new(),
    };
    let jit = within(client(&s).generate_jit_runner_config(ScaleSetId::new(1), &setting))
        .await
        .expect("minted after removing the orphan");
    assert_eq!(jit.runner.id, RunnerId::new(43));
    assert_eq!(jit.encoded_jit_config.expose_secret(), "bmV3");
    assert_eq!(s.count(&tenant_path(JIT)), 3);
    assert_eq!(
        s.count(&tenant_path(&format!("{AGENTS}/42"))),
        1,
        "the orphan was removed"
    );
}

// A first-attempt 409 is a real conflict: no lookup, no removal.
#[tokio::test]
async fn first_attempt_jit_conflict_is_runner_exists() {
    let s = TestServer::with_auth().await;
    s.on_tenant("POST", JIT, |_, _| {
        Reply::json(
            409,
            r#"{"typeName":"AgentExistsException","message":"exists"}"#,
        )
    });
    let setting = JitRunnerSetting {
        name: "runner-a".into(),
        work_folder: String::new(),
    };
    let e = within(client(&s).generate_jit_runner_config(ScaleSetId::new(1), &setting))
        .await
        .expect_err("conflict");
    assert_eq!(e.kind(), ErrorKind::RunnerExists);
    assert_eq!(
        s.count(&tenant_path(AGENTS)),
        0,
        "no lookup on a first-attempt conflict"
    );
}

// A create whose first attempt was applied (answer lost) meets a name conflict on the retry;
// the scale set exists under that name, so create returns it.
#[tokio::test]
async fn retried_create_that_meets_its_own_scale_set_returns_it() {
    let s = TestServer::with_auth().await;
    s.on_seq(
        "POST",
        &tenant_path(SETS),
        vec![
            Reply::status(504),
            Reply::json(
                409,
                r#"{"typeName":"RunnerScaleSetExistsException","message":"name taken"}"#,
            ),
        ],
    );
    s.on_tenant("GET", SETS, |_, _| {
        Reply::json(
            200,
            r#"{"count":1,"value":[{"id":9,"name":"my-set","runnerGroupId":1}]}"#,
        )
    });
    let wanted = RunnerScaleSet {
        name: "my-set".into(),
        runner_group_id: RunnerGroupId::new(1),
        ..Default::default()
    };
    let got = within(client(&s).create_runner_scale_set(&wanted))
        .await
        .expect("found");
    assert_eq!(got.id, ScaleSetId::new(9));
}

// A success answer that carries a credential but does not decode yields a `Decode` error
// that names the field and withholds the body: the JIT config and the queue token do not
// reach the error text or its Debug output.
#[tokio::test]
async fn undecodable_secret_answers_withhold_the_body() {
    let s = TestServer::with_auth().await;
    s.on_tenant("POST", JIT, |_, _| {
        Reply::json(
            200,
            r#"{"runner":{"id":"not-a-number"},"encodedJITConfig":"JITSECRET"}"#,
        )
    });
    s.on_tenant(
        "POST",
        "_apis/runtime/runnerscalesets/1/sessions",
        |_, _| {
            Reply::json(
                200,
                r#"{"sessionId":5,"messageQueueAccessToken":"MQSECRET"}"#,
            )
        },
    );
    let c = client(&s);
    let setting = JitRunnerSetting {
        name: "r".into(),
        work_folder: String::new(),
    };
    let e = within(c.generate_jit_runner_config(ScaleSetId::new(1), &setting))
        .await
        .expect_err("undecodable");
    assert_eq!(e.kind(), ErrorKind::Decode);
    assert!(e.to_string().contains("runner.id"), "names the field: {e}");
    for text in [e.to_string(), format!("{e:?}")] {
        assert!(!text.contains("JITSECRET"), "{text}");
    }
    let e = within(c.create_message_session_client(ScaleSetId::new(1), Some("o")))
        .await
        .expect_err("undecodable");
    for text in [e.to_string(), format!("{e:?}")] {
        assert!(!text.contains("MQSECRET"), "{text}");
    }
}

// An undecodable *error* answer is not a secret: its body stays in the error for diagnosis.
#[tokio::test]
async fn error_answers_keep_their_body() {
    let s = TestServer::with_auth().await;
    s.on_tenant("POST", JIT, |_, _| {
        Reply::json(400, r#"{"message":"bad work folder"}"#)
    });
    let setting = JitRunnerSetting {
        name: "r".into(),
        work_folder: String::new(),
    };
    let e =
        within(no_retries_after_auth(&s).generate_jit_runner_config(ScaleSetId::new(1), &setting))
            .await
            .expect_err("400");
    assert!(e.to_string().contains("bad work folder"), "{e}");
}

// A shutdown that fires while the create-session call is in flight lets that call finish and
// deletes the session it created, so the next start does not meet a 409.
#[tokio::test]
async fn cancel_during_session_create_deletes_the_created_session() {
    let s = TestServer::with_auth().await;
    let release = Arc::new(tokio::sync::Notify::new());
    let arrived = Arc::new(tokio::sync::Notify::new());
    let base = s.url("");
    {
        let (release, arrived) = (release.clone(), arrived.clone());
        s.on_async(
            "POST",
            &tenant_path("_apis/runtime/runnerscalesets/1/sessions"),
            move |_, _| {
                let (release, arrived, base) = (release.clone(), arrived.clone(), base.clone());
                async move {
                    arrived.notify_one();
                    release.notified().await;
                    Reply::json(
                        200,
                        &format!(
                            r#"{{"sessionId":"11111111-2222-3333-4444-555555555555","ownerName":"o",
                        "messageQueueUrl":"{base}/queue/message","messageQueueAccessToken":"q",
                        "statistics":{{"totalAssignedJobs":0}}}}"#
                        ),
                    )
                }
                .boxed()
            },
        );
    }
    let deleted = tenant_path(
        "_apis/runtime/runnerscalesets/1/sessions/11111111-2222-3333-4444-555555555555",
    );
    s.on("DELETE", &deleted, |_, _| Reply::status(204));
    let c = client(&s);
    let cancel = CancellationToken::new();
    let creating = {
        let (c, cancel) = (c.clone(), cancel.clone());
        tokio::spawn(async move {
            c.create_message_session_client_waiting(
                ScaleSetId::new(1),
                Some("o"),
                ConflictPolicy::Wait(None),
                &cancel,
            )
            .await
        })
    };
    within(arrived.notified()).await;
    cancel.cancel();
    release.notify_one();
    let result = within(creating).await.expect("task");
    assert!(matches!(result, Err(Error::Cancelled)), "{result:?}");
    assert_eq!(
        s.count(&deleted),
        1,
        "the session created during shutdown was deleted"
    );
}

// An answer larger than the cap (a broken proxy streaming garbage) is an error, read no
// further, instead of exhausting memory.
#[tokio::test]
async fn oversized_answers_are_refused() {
    let s = TestServer::with_auth().await;
    let huge = vec![b' '; 17 * 1024 * 1024];
    s.on_tenant("GET", &format!("{AGENTS}/1"), move |_, _| {
        Reply::json(200, "").body(&huge)
    });
    let e = within(client(&s).get_runner(RunnerId::new(1)))
        .await
        .expect_err("too large");
    assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
    assert!(e.to_string().contains("larger than 16 MiB"), "{e}");
}

// An admin token without `exp` is used for a while instead of being refreshed (three GitHub
// calls) before every request.
#[tokio::test]
async fn admin_token_without_exp_is_not_refreshed_on_every_call() {
    use base64::Engine as _;
    let s = TestServer::with_auth().await;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let token = format!(
        "{}.{}.c2ln",
        b64.encode(br#"{"alg":"HS256","typ":"JWT"}"#),
        b64.encode(br#"{"n":1}"#)
    );
    let base = s.url("");
    s.on("POST", RUNNER_REGISTRATION_PATH, move |_, _| {
        Reply::json(
            200,
            &format!(r#"{{"url":"{base}{TENANT}","token":"{token}"}}"#),
        )
    });
    s.on_tenant("GET", &format!("{AGENTS}/1"), |_, _| {
        Reply::json(200, r#"{"id":1,"name":"r"}"#)
    });
    let c = client(&s);
    for _ in 0..3 {
        within(c.get_runner(RunnerId::new(1)))
            .await
            .expect("runner");
    }
    assert_eq!(s.count(RUNNER_REGISTRATION_PATH), 1);
}
