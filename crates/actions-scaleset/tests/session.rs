//! Message sessions over HTTP against a scripted server: PROTOCOL.md behaviours 63-93 (create,
//! refresh, delete session; get message; delete message; acquire jobs), plus concurrency of an
//! acknowledgement with a long poll in flight.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use actions_scaleset::{
    ErrorKind, JobMessage, MessageId, MessageSessionClient, RunnerId, RunnerRequestId, ScaleSetId,
};
use secrecy::ExposeSecret;
use support::*;

const TENANT_SESSIONS: &str = "/tenant/123/_apis/runtime/runnerscalesets/7/sessions";

async fn open(server: &Scripted, retries: u32) -> MessageSessionClient {
    server
        .client(retries)
        .create_message_session_client(ScaleSetId::new(7), Some("my-host"))
        .await
        .expect("session created")
}

// ---------------------------------------------------------------- create / refresh / delete

// Behaviour 63 (+ PROTOCOL 3.4 #14 body, 4.6 session fields)
#[tokio::test]
async fn b63_create_session_sends_nil_id_and_owner_and_exposes_the_session() {
    let server = Scripted::start(|rec| async move { created(&rec) }).await;
    let session = open(&server, 0).await;

    let reqs = server.requests();
    assert_eq!(reqs.len(), 1, "{:?}", server.lines());
    let create = &reqs[0];
    assert_eq!(create.method, "POST");
    assert_eq!(create.path, TENANT_SESSIONS);
    assert_eq!(create.query.as_deref(), Some("api-version=6.0-preview"));
    assert_eq!(create.header("content-type"), Some("application/json"));
    assert_eq!(
        create.header("authorization"),
        Some(format!("Bearer {ADMIN_JWT}").as_str())
    );
    // Hand-written from PROTOCOL.md 3.4 #14, byte for byte (key order of the reference).
    assert_eq!(
        create.body_str(),
        r#"{"sessionId":"00000000-0000-0000-0000-000000000000","ownerName":"my-host"}"#
    );

    let s = session.session();
    assert_eq!(s.session_id.to_string(), SESSION_ID);
    assert_eq!(session.session_id().to_string(), SESSION_ID);
    assert_eq!(s.owner_name, "test-owner");
    assert_eq!(s.message_queue_url, server.queue_url());
    assert_eq!(s.message_queue_access_token.expose_secret(), "qtoken-1");
    assert_eq!(s.statistics.map(|st| st.total_assigned_jobs), Some(2));
    assert_eq!(s.runner_scale_set.map(|r| r.id), Some(ScaleSetId::new(7)));
    assert_eq!(session.scale_set_id(), ScaleSetId::new(7));
    assert_eq!(session.owner(), "my-host");
    assert!(
        !format!("{session:?}").contains("qtoken-1"),
        "the queue token must not reach Debug output"
    );
}

// Behaviour 63: the default owner is the host name (never empty).
#[tokio::test]
async fn b63_default_owner_is_not_empty() {
    let server = Scripted::start(|rec| async move { created(&rec) }).await;
    let session = server
        .client(0)
        .create_message_session_client(ScaleSetId::new(7), None)
        .await
        .expect("session created");
    let body: serde_json::Value =
        serde_json::from_slice(&server.requests()[0].body).expect("json body");
    assert_eq!(body["ownerName"], session.owner());
    assert!(!session.owner().is_empty());
}

// Behaviour 64
#[tokio::test]
async fn b64_create_session_error_keeps_exception_details() {
    let server = Scripted::start(|_| async {
        let mut r = json(
            400,
            serde_json::json!({"typeName":"CSharpExceptionNameHere","message":"could not do something"}),
        );
        r.headers_mut()
            .insert("ActivityId", "act-123".parse().expect("header"));
        r
    })
    .await;
    let err = server
        .client(0)
        .create_message_session_client(ScaleSetId::new(7), Some("o"))
        .await
        .expect_err("400 fails");
    let text = err.to_string();
    assert!(text.contains(r#"status="400 Bad Request""#), "{text}");
    assert!(text.contains(r#"activity_id="act-123""#), "{text}");
    let ex = err.exception().expect("exception extractable");
    assert_eq!(ex.type_name, "CSharpExceptionNameHere");
    assert_eq!(ex.message, "could not do something");
    assert_eq!(err.status(), Some(400));
}

// Behaviour 65
#[tokio::test(start_paused = true)]
async fn b65_create_session_500_is_retried_retry_max_plus_one_times() {
    let server = Scripted::start(|_| async { status(500) }).await;
    let err = server
        .client(3)
        .create_message_session_client(ScaleSetId::new(7), Some("o"))
        .await
        .expect_err("500 fails");
    assert_eq!(server.requests().len(), 4, "{:?}", server.lines());
    assert_eq!(err.status(), Some(500), "{err}");
}

// PROTOCOL 3.4 #14: 409 conflict and 404 scale set gone are typed.
#[tokio::test]
async fn create_session_conflict_and_missing_scale_set_are_typed() {
    let server = Scripted::start(|rec| async move {
        if rec.path.contains("/runnerscalesets/7/") {
            json(409, serde_json::json!({
                "typeName": "GitHub.Actions.Runtime.WebApi.RunnerScaleSetSessionConflictException, GitHub.Actions.Runtime.WebApi",
                "message": "The actions runner scaleset my-set already has an active session."}))
        } else {
            json(404, serde_json::json!({
                "typeName": "GitHub.Actions.Runtime.WebApi.RunnerScaleSetNotFoundException, GitHub.Actions.Runtime.WebApi",
                "message": "gone"}))
        }
    })
    .await;
    let client = server.client(0);
    let err = client
        .create_message_session_client(ScaleSetId::new(7), Some("o"))
        .await
        .expect_err("409");
    assert_eq!(err.kind(), ErrorKind::SessionConflict, "{err}");
    let err = client
        .create_message_session_client(ScaleSetId::new(8), Some("o"))
        .await
        .expect_err("404");
    assert_eq!(err.kind(), ErrorKind::ScaleSetNotFound, "{err}");
}

// PROTOCOL 3.4 #14 (issue 4370): a session without a queue URL is refused at once.
#[tokio::test]
async fn create_session_without_queue_url_is_an_invalid_session() {
    let server = Scripted::start(|_| async { json(200, session_json("", "qtoken-1", 0)) }).await;
    let err = server
        .client(0)
        .create_message_session_client(ScaleSetId::new(7), Some("o"))
        .await
        .expect_err("empty queue URL");
    assert_eq!(err.kind(), ErrorKind::InvalidSession, "{err}");
}

// Behaviour 66 (refresh half): refresh answering 500 forever is tried retry_max+1 times.
#[tokio::test(start_paused = true)]
async fn b66_refresh_session_500_is_retried_retry_max_plus_one_times() {
    let server = Scripted::start(|rec| async move {
        if is_create(&rec) {
            created(&rec)
        } else if is_refresh(&rec) {
            status(500)
        } else {
            status(401)
        }
    })
    .await;
    let session = open(&server, 3).await;
    let err = session
        .get_message(MessageId::new(0), 1)
        .await
        .expect_err("refresh fails");
    let patches = server.requests().iter().filter(|r| is_refresh(r)).count();
    assert_eq!(patches, 4, "{:?}", server.lines());
    assert_eq!(err.status(), Some(500), "{err}");
    assert!(err.to_string().contains("refresh"), "{err}");
}

// Behaviour 66 (delete half) and PROTOCOL 3.4 #16.
#[tokio::test(start_paused = true)]
async fn b66_delete_session_500_is_retried_retry_max_plus_one_times() {
    let server = Scripted::start(|rec| async move {
        if is_create(&rec) {
            created(&rec)
        } else {
            status(500)
        }
    })
    .await;
    let session = open(&server, 3).await;
    let err = session.close().await.expect_err("delete fails");
    let deletes: Vec<_> = server
        .requests()
        .into_iter()
        .filter(is_delete_session)
        .collect();
    assert_eq!(deletes.len(), 4, "{:?}", server.lines());
    assert_eq!(deletes[0].path, format!("{TENANT_SESSIONS}/{SESSION_ID}"));
    assert_eq!(err.status(), Some(500), "{err}");
}

// PROTOCOL 3.4 #16: 204 closes; a session the service no longer knows counts as closed.
#[tokio::test]
async fn close_deletes_the_session_and_tolerates_an_expired_one() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let server = Scripted::start(move |rec| {
        let n = if is_delete_session(&rec) {
            c.fetch_add(1, Ordering::SeqCst)
        } else {
            0
        };
        async move {
            if is_create(&rec) {
                created(&rec)
            } else if n == 0 {
                status(204)
            } else {
                json(400, serde_json::json!({
                    "typeName": "GitHub.Actions.Runtime.WebApi.RunnerScaleSetSessionExpiredException, GitHub.Actions.Runtime.WebApi",
                    "message": "The session identifier is not valid."}))
            }
        }
    })
    .await;
    let session = open(&server, 0).await;
    session.close().await.expect("204 closes");
    session.close().await.expect("an expired session is closed");
    let last = server.requests().pop().expect("a request");
    assert_eq!(last.method, "DELETE");
    assert_eq!(last.path, format!("{TENANT_SESSIONS}/{SESSION_ID}"));
    assert_eq!(
        last.header("authorization"),
        Some(format!("Bearer {ADMIN_JWT}").as_str())
    );
}

// ---------------------------------------------------------------- get message

// Behaviours 67, 68, 74, 79
#[tokio::test]
async fn b67_b68_b74_b79_get_message_request_and_minimal_answer() {
    let server = Scripted::start(|rec| async move {
        if is_create(&rec) {
            created(&rec)
        } else {
            json(
                200,
                serde_json::json!({"messageId":1,"messageType":"RunnerScaleSetJobMessages"}),
            )
        }
    })
    .await;
    let session = open(&server, 0).await;

    let m = session
        .get_message(MessageId::new(0), 0)
        .await
        .expect("ok")
        .expect("a message");
    assert_eq!(m.message_id, MessageId::new(1));
    assert!(m.jobs.is_empty());
    assert!(m.statistics.is_none());
    assert!(m.problems.is_empty());

    session
        .get_message(MessageId::new(5), 10)
        .await
        .expect("ok")
        .expect("a message");

    let polls = server.polls();
    assert_eq!(polls.len(), 2);
    // 68: lastMessageId absent when 0 (the URL is used unchanged) ...
    assert_eq!(polls[0].query.as_deref(), Some("sessionId=abc"));
    // ... and merged into the existing query (keys sorted) when > 0.
    assert_eq!(
        polls[1].query.as_deref(),
        Some("lastMessageId=5&sessionId=abc")
    );
    for (p, cap) in polls.iter().zip(["0", "10"]) {
        // 74
        assert_eq!(p.header("x-scalesetmaxcapacity"), Some(cap));
        // 79
        assert_eq!(
            p.header("accept"),
            Some("application/json; api-version=6.0-preview")
        );
        assert_eq!(p.header("authorization"), Some("Bearer qtoken-1"));
        assert_eq!(p.header("content-type"), None);
        assert!(p.header("user-agent").is_some());
    }
}

// Behaviour 75
#[tokio::test]
async fn b75_negative_capacity_is_rejected_without_a_request() {
    let server = Scripted::start(|rec| async move { created(&rec) }).await;
    let session = open(&server, 0).await;
    let err = session
        .get_message(MessageId::new(0), -1)
        .await
        .expect_err("negative");
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    let err = session
        .get_message(MessageId::new(0), i64::from(i32::MAX) + 1)
        .await
        .expect_err("too large");
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(server.polls().is_empty());
}

// Behaviour 69
#[tokio::test(start_paused = true)]
async fn b69_get_message_503_is_retried_retry_max_plus_one_times() {
    let server = Scripted::start(|rec| async move {
        if is_create(&rec) {
            created(&rec)
        } else {
            status(503)
        }
    })
    .await;
    let session = open(&server, 1).await;
    let err = session
        .get_message(MessageId::new(0), 1)
        .await
        .expect_err("503");
    assert_eq!(server.polls().len(), 2);
    assert_eq!(err.status(), Some(503), "{err}");
    assert!(err.is_retryable());
}

// Behaviour 70
#[tokio::test]
async fn b70_get_message_401_twice_refreshes_once_then_token_expired() {
    let server = Scripted::start(|rec| async move {
        if is_create(&rec) {
            created(&rec)
        } else if is_refresh(&rec) {
            json(200, session_json(&queue_url_of(&rec), "qtoken-2", 0))
        } else {
            status(401)
        }
    })
    .await;
    let session = open(&server, 0).await;
    let err = session
        .get_message(MessageId::new(0), 1)
        .await
        .expect_err("401");
    assert_eq!(err.kind(), ErrorKind::MessageQueueTokenExpired, "{err}");
    let lines = server.lines();
    assert_eq!(
        lines,
        vec![
            format!("POST {TENANT_SESSIONS}"),
            "GET /queue/message".to_string(),
            format!("PATCH {TENANT_SESSIONS}/{SESSION_ID}"),
            "GET /queue/message".to_string(),
        ]
    );
}

// Behaviour 71 (+ PROTOCOL 3.4 #15: PATCH without body; 2.4 the new token is used)
#[tokio::test]
async fn b71_get_message_401_refresh_then_message() {
    let polls = Arc::new(AtomicUsize::new(0));
    let p = polls.clone();
    let server = Scripted::start(move |rec| {
        let n = if rec.is_poll() {
            p.fetch_add(1, Ordering::SeqCst)
        } else {
            0
        };
        async move {
            if is_create(&rec) {
                created(&rec)
            } else if is_refresh(&rec) {
                json(200, session_json(&queue_url_of(&rec), "qtoken-2", 0))
            } else if n == 0 {
                status(401)
            } else {
                json(200, message(3, serde_json::json!([]), Some(1)))
            }
        }
    })
    .await;
    let session = open(&server, 0).await;
    let m = session
        .get_message(MessageId::new(0), 1)
        .await
        .expect("ok")
        .expect("message");
    assert_eq!(m.message_id, MessageId::new(3));
    let reqs = server.requests();
    let lines: Vec<String> = reqs.iter().map(Recorded::line).collect();
    assert_eq!(
        lines,
        vec![
            format!("POST {TENANT_SESSIONS}"),
            "GET /queue/message".to_string(),
            format!("PATCH {TENANT_SESSIONS}/{SESSION_ID}"),
            "GET /queue/message".to_string(),
        ]
    );
    assert!(reqs[2].body.is_empty(), "refresh has no body");
    assert_eq!(reqs[2].header("content-type"), Some("application/json"));
    assert_eq!(
        reqs[2].header("authorization"),
        Some(format!("Bearer {ADMIN_JWT}").as_str())
    );
    assert_eq!(reqs[1].header("authorization"), Some("Bearer qtoken-1"));
    assert_eq!(reqs[3].header("authorization"), Some("Bearer qtoken-2"));
    assert_eq!(
        session.session().message_queue_access_token.expose_secret(),
        "qtoken-2"
    );
}

// PROTOCOL 3.4 #15: a 404 on refresh (evicted session) is SessionNotFound.
#[tokio::test]
async fn refresh_404_is_session_not_found() {
    let server = Scripted::start(|rec| async move {
        if is_create(&rec) {
            created(&rec)
        } else if is_refresh(&rec) {
            json(
                404,
                serde_json::json!({
                "typeName": "GitHub.DistributedTask.WebApi.RunnerAdminException",
                "message": "runner referenced a session ID that doesn't exist in redis"}),
            )
        } else {
            status(401)
        }
    })
    .await;
    let session = open(&server, 0).await;
    let err = session
        .get_message(MessageId::new(0), 1)
        .await
        .expect_err("evicted");
    assert_eq!(err.kind(), ErrorKind::SessionNotFound, "{err}");
}

// Behaviours 72, 73
#[tokio::test]
async fn b72_b73_get_message_404_and_text_plain_errors() {
    let polls = Arc::new(AtomicUsize::new(0));
    let p = polls.clone();
    let server = Scripted::start(move |rec| {
        let n = if rec.is_poll() {
            p.fetch_add(1, Ordering::SeqCst)
        } else {
            0
        };
        async move {
            if is_create(&rec) {
                created(&rec)
            } else if n == 0 {
                status(404)
            } else {
                raw(400, "text/plain", "example plain text error")
            }
        }
    })
    .await;
    let session = open(&server, 0).await;
    let err = session
        .get_message(MessageId::new(0), 1)
        .await
        .expect_err("404");
    let text = err.to_string();
    assert!(text.contains(r#"status="404 Not Found""#), "{text}");
    assert!(text.contains("unknown error"), "{text}");
    let err = session
        .get_message(MessageId::new(0), 1)
        .await
        .expect_err("400");
    let text = err.to_string();
    assert!(text.contains(r#"status="400 Bad Request""#), "{text}");
    assert!(text.contains("example plain text error"), "{text}");
}

// Behaviour 76
#[tokio::test]
async fn b76_get_message_202_is_no_message() {
    let server = Scripted::start(|rec| async move {
        if is_create(&rec) {
            created(&rec)
        } else {
            raw(202, "application/json", "ignored, not json")
        }
    })
    .await;
    let session = open(&server, 0).await;
    assert!(
        session
            .get_message(MessageId::new(0), 1)
            .await
            .expect("ok")
            .is_none()
    );
}

// Behaviour 77
#[tokio::test]
async fn b77_unknown_envelope_type_is_an_error_naming_the_id() {
    let server = Scripted::start(|rec| async move {
        if is_create(&rec) {
            created(&rec)
        } else {
            json(
                200,
                serde_json::json!({"messageId": 9, "messageType": "SomethingElse", "body": ""}),
            )
        }
    })
    .await;
    let session = open(&server, 0).await;
    let err = session
        .get_message(MessageId::new(0), 1)
        .await
        .expect_err("unsupported");
    assert_eq!(err.kind(), ErrorKind::UnsupportedMessage);
    match err {
        actions_scaleset::Error::UnsupportedMessage {
            message_id,
            message_type,
        } => {
            assert_eq!(message_id, MessageId::new(9));
            assert_eq!(message_type, "SomethingElse");
        }
        other => panic!("unexpected {other:?}"),
    }
}

// Behaviour 78 (over HTTP; element decoding details are unit-tested in message.rs)
#[tokio::test]
async fn b78_all_job_types_decode_unknown_skipped_statistics_kept() {
    let server = Scripted::start(|rec| async move {
        if is_create(&rec) {
            created(&rec)
        } else {
            let jobs = serde_json::json!([
                job_available(1),
                {"messageType": "JobAssigned", "runnerRequestId": 2},
                {"messageType": "NewKind", "runnerRequestId": 99},
                job_started(3, "runner-a"),
                job_completed(4, "runner-b"),
            ]);
            json(200, message(42, jobs, Some(5)))
        }
    })
    .await;
    let session = open(&server, 0).await;
    let m = session
        .get_message(MessageId::new(0), 1)
        .await
        .expect("ok")
        .expect("message");
    assert_eq!(m.message_id, MessageId::new(42));
    assert_eq!(m.statistics.map(|s| s.total_assigned_jobs), Some(5));
    assert!(m.problems.is_empty(), "{:?}", m.problems);
    assert_eq!(m.jobs.len(), 4);
    assert!(matches!(&m.jobs[0], JobMessage::Available(a)
        if a.base.runner_request_id == RunnerRequestId::new(1) && a.acquire_job_url.ends_with("/acquire/1")));
    assert!(
        matches!(&m.jobs[1], JobMessage::Assigned(a) if a.base.runner_request_id == RunnerRequestId::new(2))
    );
    assert!(matches!(&m.jobs[2], JobMessage::Started(s)
        if s.base.runner_request_id == RunnerRequestId::new(3) && s.runner_name == "runner-a" && s.runner_id == RunnerId::new(1)));
    assert!(matches!(&m.jobs[3], JobMessage::Completed(c)
        if c.base.runner_request_id == RunnerRequestId::new(4) && c.result == "succeeded" && c.runner_name == "runner-b"));
}

// PROTOCOL 10 #15: a 200 with an empty or truncated body is a decode error, not a panic.
#[tokio::test]
async fn empty_and_truncated_200_bodies_are_decode_errors() {
    let polls = Arc::new(AtomicUsize::new(0));
    let p = polls.clone();
    let server = Scripted::start(move |rec| {
        let n = if rec.is_poll() {
            p.fetch_add(1, Ordering::SeqCst)
        } else {
            0
        };
        async move {
            if is_create(&rec) {
                created(&rec)
            } else if n == 0 {
                raw(200, "application/json", "")
            } else {
                raw(200, "application/json", r#"{"messageId":1,"messageTy"#)
            }
        }
    })
    .await;
    let session = open(&server, 0).await;
    for _ in 0..2 {
        let err = session
            .get_message(MessageId::new(0), 1)
            .await
            .expect_err("bad body");
        assert_eq!(err.kind(), ErrorKind::Decode, "{err}");
    }
}

// ---------------------------------------------------------------- delete message

// Behaviours 80, 86
#[tokio::test]
async fn b80_b86_delete_message_url_keeps_query_and_succeeds_on_204() {
    let server = Scripted::start(|rec| async move {
        if is_create(&rec) {
            let url = format!(
                "http://{}/queue/message?x=y",
                rec.header("host").unwrap_or_default()
            );
            json(200, session_json(&url, "qtoken-1", 0))
        } else {
            status(204)
        }
    })
    .await;
    let session = open(&server, 0).await;
    session
        .delete_message(MessageId::new(42))
        .await
        .expect("204");
    let del = server.requests().pop().expect("a request");
    assert_eq!(del.method, "DELETE");
    assert_eq!(del.path, "/queue/message/42");
    assert_eq!(del.query.as_deref(), Some("x=y"));
    assert_eq!(del.header("authorization"), Some("Bearer qtoken-1"));
    assert_eq!(del.header("content-type"), Some("application/json"));
}

// PROTOCOL 10 #25: a queue URL path with a trailing slash does not yield `//`.
#[tokio::test]
async fn delete_message_with_trailing_slash_queue_url() {
    let server = Scripted::start(|rec| async move {
        if is_create(&rec) {
            let url = format!(
                "http://{}/queue/message/?sessionId=abc",
                rec.header("host").unwrap_or_default()
            );
            json(200, session_json(&url, "qtoken-1", 0))
        } else {
            status(204)
        }
    })
    .await;
    let session = open(&server, 0).await;
    session
        .delete_message(MessageId::new(7))
        .await
        .expect("204");
    assert_eq!(
        server.requests().pop().expect("req").path,
        "/queue/message/7"
    );
}

// Behaviour 81
#[tokio::test]
async fn b81_delete_message_401_twice_is_token_expired() {
    let server = Scripted::start(|rec| async move {
        if is_create(&rec) {
            created(&rec)
        } else if is_refresh(&rec) {
            json(200, session_json(&queue_url_of(&rec), "qtoken-2", 0))
        } else {
            status(401)
        }
    })
    .await;
    let session = open(&server, 0).await;
    let err = session
        .delete_message(MessageId::new(1))
        .await
        .expect_err("401");
    assert_eq!(err.kind(), ErrorKind::MessageQueueTokenExpired, "{err}");
    assert_eq!(
        server.lines(),
        vec![
            format!("POST {TENANT_SESSIONS}"),
            "DELETE /queue/message/1".to_string(),
            format!("PATCH {TENANT_SESSIONS}/{SESSION_ID}"),
            "DELETE /queue/message/1".to_string(),
        ]
    );
}

// Behaviour 82
#[tokio::test]
async fn b82_delete_message_401_refresh_then_204() {
    let deletes = Arc::new(AtomicUsize::new(0));
    let d = deletes.clone();
    let server = Scripted::start(move |rec| {
        let n = if rec.method == "DELETE" && rec.path.starts_with("/queue/") {
            d.fetch_add(1, Ordering::SeqCst)
        } else {
            0
        };
        async move {
            if is_create(&rec) {
                created(&rec)
            } else if is_refresh(&rec) {
                json(200, session_json(&queue_url_of(&rec), "qtoken-2", 0))
            } else if n == 0 {
                status(401)
            } else {
                status(204)
            }
        }
    })
    .await;
    let session = open(&server, 0).await;
    session
        .delete_message(MessageId::new(1))
        .await
        .expect("refreshed");
    let reqs = server.requests();
    assert_eq!(
        reqs.iter().map(Recorded::line).collect::<Vec<_>>(),
        vec![
            format!("POST {TENANT_SESSIONS}"),
            "DELETE /queue/message/1".to_string(),
            format!("PATCH {TENANT_SESSIONS}/{SESSION_ID}"),
            "DELETE /queue/message/1".to_string(),
        ]
    );
    assert_eq!(reqs[3].header("authorization"), Some("Bearer qtoken-2"));
}

// Behaviours 83, 84, 85
#[tokio::test(start_paused = true)]
async fn b83_b84_b85_delete_message_errors() {
    let deletes = Arc::new(AtomicUsize::new(0));
    let d = deletes.clone();
    let server = Scripted::start(move |rec| {
        let n = if rec.method == "DELETE" {
            d.fetch_add(1, Ordering::SeqCst)
        } else {
            0
        };
        async move {
            if is_create(&rec) {
                created(&rec)
            } else if n == 0 {
                raw(400, "text/plain", "example plain text error")
            } else if n <= 2 {
                status(503)
            } else {
                raw(200, "application/json", "null")
            }
        }
    })
    .await;
    let session = open(&server, 1).await;
    // 83
    let err = session
        .delete_message(MessageId::new(1))
        .await
        .expect_err("400");
    let text = err.to_string();
    assert!(text.contains(r#"status="400 Bad Request""#), "{text}");
    assert!(text.contains("example plain text error"), "{text}");
    // 84: 503 twice with retry_max 1 -> 2 requests, error
    let err = session
        .delete_message(MessageId::new(1))
        .await
        .expect_err("503");
    assert_eq!(err.status(), Some(503), "{err}");
    assert_eq!(deletes.load(Ordering::SeqCst), 3);
    // 85: 200 instead of 204 is an error
    let err = session
        .delete_message(MessageId::new(1))
        .await
        .expect_err("200 is not 204");
    assert_eq!(err.status(), Some(200), "{err}");
    assert!(err.to_string().contains("unexpected status code"), "{err}");
}

// ---------------------------------------------------------------- acquire jobs

const ACQUIRE: &str = "/tenant/123/_apis/runtime/runnerscalesets/7/acquirejobs";

// Behaviours 87, 91, 92 (first half), 93
#[tokio::test]
async fn b87_b91_b92_b93_acquire_jobs_bodies_answers_and_token() {
    let server = Scripted::start(|rec| async move {
        if is_create(&rec) {
            created(&rec)
        } else {
            let ids: Vec<i64> = serde_json::from_slice(&rec.body).unwrap_or_default();
            match ids.as_slice() {
                [] => json(200, serde_json::json!({"count": 0, "value": []})),
                [1] => json(200, serde_json::json!({"value": [1]})),
                _ => json(200, serde_json::json!({"count": ids.len(), "value": ids})),
            }
        }
    })
    .await;
    let session = open(&server, 0).await;
    assert_eq!(
        session
            .acquire_jobs(&request_ids(&[1, 2]))
            .await
            .expect("ok"),
        request_ids(&[1, 2])
    );
    assert_eq!(
        session.acquire_jobs(&[]).await.expect("ok"),
        Vec::<RunnerRequestId>::new()
    );
    assert_eq!(
        session.acquire_jobs(&request_ids(&[1])).await.expect("ok"),
        request_ids(&[1])
    );

    let reqs: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.path == ACQUIRE)
        .collect();
    assert_eq!(reqs.len(), 3, "the empty list is still POSTed");
    assert_eq!(reqs[0].body_str(), "[1,2]");
    assert_eq!(reqs[1].body_str(), "[]");
    assert_eq!(reqs[2].body_str(), "[1]");
    for r in &reqs {
        assert_eq!(r.method, "POST");
        assert_eq!(r.query.as_deref(), Some("api-version=6.0-preview"));
        assert_eq!(r.header("content-type"), Some("application/json"));
        // 93: the queue token, not the admin token
        assert_eq!(r.header("authorization"), Some("Bearer qtoken-1"));
    }
}

// Behaviours 88, 92 (second half: 401 with a text body)
#[tokio::test]
async fn b88_b92_acquire_jobs_401_twice_is_token_expired() {
    let server = Scripted::start(|rec| async move {
        if is_create(&rec) {
            created(&rec)
        } else if is_refresh(&rec) {
            json(200, session_json(&queue_url_of(&rec), "qtoken-2", 0))
        } else {
            raw(401, "text/plain", "Session expired")
        }
    })
    .await;
    let session = open(&server, 0).await;
    let err = session
        .acquire_jobs(&request_ids(&[1]))
        .await
        .expect_err("401");
    assert_eq!(err.kind(), ErrorKind::MessageQueueTokenExpired, "{err}");
    assert_eq!(
        server.lines(),
        vec![
            format!("POST {TENANT_SESSIONS}"),
            format!("POST {ACQUIRE}"),
            format!("PATCH {TENANT_SESSIONS}/{SESSION_ID}"),
            format!("POST {ACQUIRE}"),
        ]
    );
}

// Behaviour 89
#[tokio::test]
async fn b89_acquire_jobs_401_refresh_then_200() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let server = Scripted::start(move |rec| {
        let n = if rec.path == ACQUIRE {
            c.fetch_add(1, Ordering::SeqCst)
        } else {
            0
        };
        async move {
            if is_create(&rec) {
                created(&rec)
            } else if is_refresh(&rec) {
                json(200, session_json(&queue_url_of(&rec), "qtoken-2", 0))
            } else if n == 0 {
                status(401)
            } else {
                json(200, serde_json::json!({"count": 2, "value": [1, 2]}))
            }
        }
    })
    .await;
    let session = open(&server, 0).await;
    assert_eq!(
        session
            .acquire_jobs(&request_ids(&[1, 2]))
            .await
            .expect("ok"),
        request_ids(&[1, 2])
    );
    let reqs = server.requests();
    assert_eq!(
        reqs.iter().map(Recorded::line).collect::<Vec<_>>(),
        vec![
            format!("POST {TENANT_SESSIONS}"),
            format!("POST {ACQUIRE}"),
            format!("PATCH {TENANT_SESSIONS}/{SESSION_ID}"),
            format!("POST {ACQUIRE}"),
        ]
    );
    assert_eq!(reqs[3].header("authorization"), Some("Bearer qtoken-2"));
    assert_eq!(reqs[3].body_str(), "[1,2]");
}

// Behaviour 90
#[tokio::test(start_paused = true)]
async fn b90_acquire_jobs_500_fails() {
    let server = Scripted::start(|rec| async move {
        if is_create(&rec) {
            created(&rec)
        } else {
            status(500)
        }
    })
    .await;
    let session = open(&server, 1).await;
    let err = session
        .acquire_jobs(&request_ids(&[1]))
        .await
        .expect_err("500");
    assert_eq!(err.status(), Some(500), "{err}");
    let n = server
        .requests()
        .iter()
        .filter(|r| r.path == ACQUIRE)
        .count();
    assert_eq!(n, 2);
}

// ---------------------------------------------------------------- concurrency

// Module docs of session.rs / STYLE 4: an acknowledgement proceeds while another task's long
// poll is in flight on the same session client. The server holds the poll until the DELETE has
// arrived (or a 30 s deadline passes, in which case the poll answers 202 and the test fails).
#[tokio::test]
async fn delete_message_proceeds_while_a_poll_is_in_flight() {
    let deleted = Arc::new(tokio::sync::Notify::new());
    let d = deleted.clone();
    let server = Scripted::start(move |rec| {
        let d = d.clone();
        async move {
            if is_create(&rec) {
                created(&rec)
            } else if rec.is_poll() {
                match tokio::time::timeout(Duration::from_secs(30), d.notified()).await {
                    Ok(()) => json(200, message(2, serde_json::json!([]), Some(0))),
                    Err(_) => status(202),
                }
            } else {
                d.notify_one();
                status(204)
            }
        }
    })
    .await;
    let session = open(&server, 0).await;
    let poller = session.clone();
    let poll = tokio::spawn(async move { poller.get_message(MessageId::new(0), 1).await });
    server
        .wait_for("the poll to arrive", |log| {
            log.iter().any(Recorded::is_poll)
        })
        .await;
    tokio::time::timeout(
        Duration::from_secs(30),
        session.delete_message(MessageId::new(1)),
    )
    .await
    .expect("delete is not blocked by the poll")
    .expect("204");
    let polled = tokio::time::timeout(Duration::from_secs(30), poll)
        .await
        .expect("poll ends")
        .expect("task")
        .expect("ok");
    assert_eq!(
        polled.map(|m| m.message_id),
        Some(MessageId::new(2)),
        "the poll must have been held until the delete arrived"
    );
}

fn request_ids(ids: &[i64]) -> Vec<RunnerRequestId> {
    ids.iter().copied().map(RunnerRequestId::new).collect()
}
