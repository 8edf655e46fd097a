//! Errors built from real answers (PROTOCOL.md section 5; section 9 behaviours 94-106), tolerant
//! decoding of hostile bodies (issue item 7) and secrets kept out of errors, `Debug` and logs
//! (issue item 8).

mod common;

use std::time::Duration;

use actions_scaleset::{
    Client, Credentials, ErrorKind, JitRunnerSetting, RunnerGroupId, RunnerId, ScaleSetId,
};
use common::*;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const AGENT_1: &str = "_apis/distributedtask/pools/0/agents/1";

// Behaviours 94 and 106: an unknown exception keeps name and message (kind Service), and both
// are in the text.
#[tokio::test]
async fn b94_b106_unknown_exception_is_extractable() {
    let s = TestServer::with_auth().await;
    s.on_tenant("DELETE", AGENT_1, |_, _| {
        Reply::json(
            400,
            r#"{"typeName":"SomeException","message":"could not do something"}"#,
        )
        .header("ActivityId", "act-1")
    });
    let e = within(client(&s).remove_runner(RunnerId::new(1)))
        .await
        .expect_err("400");
    assert_eq!(e.kind(), ErrorKind::Service);
    let ex = e.exception().expect("exception");
    assert_eq!(
        (ex.type_name.as_str(), ex.message.as_str()),
        ("SomeException", "could not do something")
    );
    let text = e.to_string();
    assert!(
        text.contains("SomeException") && text.contains("could not do something"),
        "{text}"
    );
    assert!(
        text.contains(r#"status="400 Bad Request""#) && text.contains(r#"activity_id="act-1""#)
    );
    assert!(!e.is_retryable());
}

// Behaviours 96, 97, 99: an empty body (Content-Length 0, or chunked with no data) says
// `unknown error` and keeps status, ActivityId and X-GitHub-Request-Id.
#[tokio::test]
async fn b96_b97_b99_empty_error_bodies_are_unknown_error() {
    let s = TestServer::with_auth().await;
    s.on_tenant("DELETE", AGENT_1, |_, _| {
        Reply::status(404)
            .header("ActivityId", "activity-id")
            .header("X-GitHub-Request-Id", "request-id")
    });
    let e = within(client(&s).remove_runner(RunnerId::new(1)))
        .await
        .expect_err("404");
    let text = e.to_string();
    for want in [
        r#"status="404 Not Found""#,
        r#"activity_id="activity-id""#,
        r#"github_request_id="request-id""#,
        "unknown error",
    ] {
        assert!(text.contains(want), "{want} in {text}");
    }
    // Unknown length: a chunked answer with no data (raw HTTP from a TCP server).
    let raw = raw_server(
        "HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\nActivityId: a-2\r\n\r\n0\r\n\r\n",
    )
    .await;
    let e = within(raw_client(&raw).get_runner(RunnerId::new(1)))
        .await
        .expect_err("404");
    assert!(e.to_string().contains("unknown error"), "{e}");
    assert_eq!(e.status(), Some(404));
}

/// A TCP server that answers every request with `response` and closes; returns its address.
async fn raw_server(response: &'static str) -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16384];
                let mut seen = Vec::new();
                // Read the request head (the requests here have no body).
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = sock.write_all(response.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    addr
}

fn raw_client(addr: &std::net::SocketAddr) -> Client {
    Client::builder(format!("http://{addr}/org"), pat())
        .retry_max(1)
        .retry_wait_min(Duration::from_millis(1))
        .retry_wait_max(Duration::from_millis(2))
        .build()
        .expect("client")
}

// Behaviour 98, our variant: a body that cannot be read (Content-Length larger than what
// arrives) is a transport failure, retried, and reported as Error::Transport naming the
// request, not a panic or a half-parsed error.
#[tokio::test]
async fn b98_body_read_failure_is_a_transport_error() {
    let raw = raw_server("HTTP/1.1 400 Bad Request\r\nContent-Length: 100\r\n\r\nshort").await;
    let e = within(raw_client(&raw).get_runner(RunnerId::new(1)))
        .await
        .expect_err("truncated");
    assert_eq!(e.kind(), ErrorKind::Transport, "{e}");
    assert!(
        matches!(e, actions_scaleset::Error::Transport { attempts: 2, .. }),
        "{e:?}"
    );
    assert!(e.to_string().starts_with("request POST http://"), "{e}");
}

// Behaviour 100: text/plain bodies are included verbatim.
#[tokio::test]
async fn b100_text_plain_body_is_included() {
    let s = TestServer::with_auth().await;
    s.on_tenant("DELETE", AGENT_1, |_, _| {
        Reply::text(400, "example plain text error")
    });
    let e = within(client(&s).remove_runner(RunnerId::new(1)))
        .await
        .expect_err("400");
    assert!(e.to_string().contains("example plain text error"), "{e}");
    assert_eq!(e.kind(), ErrorKind::UnexpectedStatus);
}

// Behaviour 101, our variant: where the call itself decides the kind (404 on get-runner ->
// RunnerNotFound), a body naming another exception does not change the kind, and the body's
// exception is still extractable.
#[tokio::test]
async fn b101_call_kind_is_kept_with_another_exception_in_the_body() {
    let s = TestServer::with_auth().await;
    s.on_tenant("GET", AGENT_1, |_, _| {
        Reply::json(
            404,
            r#"{"typeName":"SomethingElseException","message":"elsewhere"}"#,
        )
    });
    let e = within(client(&s).get_runner(RunnerId::new(1)))
        .await
        .expect_err("404");
    assert_eq!(e.kind(), ErrorKind::RunnerNotFound);
    assert_eq!(
        e.exception().map(|x| x.type_name.as_str()),
        Some("SomethingElseException")
    );
    assert!(e.to_string().contains("elsewhere"), "{e}");
}

// Behaviours 102-104 (and 48, 52): known exception names map to kinds by substring of the
// fully qualified name, on any endpoint; session conflict/expired and scale set not found have
// kinds too (our addition).
#[tokio::test]
async fn b102_b103_b104_known_exceptions_map_to_kinds() {
    let cases = [
        (
            409,
            "GitHub.DistributedTask.WebApi.AgentExistsException, GitHub.DistributedTask.WebApi",
            ErrorKind::RunnerExists,
        ),
        (
            404,
            "GitHub.DistributedTask.WebApi.AgentNotFoundException, GitHub.DistributedTask.WebApi",
            ErrorKind::RunnerNotFound,
        ),
        (
            400,
            "GitHub.DistributedTask.WebApi.JobStillRunningException, GitHub.DistributedTask.WebApi",
            ErrorKind::JobStillRunning,
        ),
        (409, "JobStillRunningException", ErrorKind::JobStillRunning),
        (
            409,
            "GitHub.Actions.Runtime.WebApi.RunnerScaleSetSessionConflictException, GitHub.Actions.Runtime.WebApi",
            ErrorKind::SessionConflict,
        ),
        (
            400,
            "GitHub.Actions.Runtime.WebApi.RunnerScaleSetSessionExpiredException, GitHub.Actions.Runtime.WebApi",
            ErrorKind::SessionNotFound,
        ),
        (
            404,
            "GitHub.Actions.Runtime.WebApi.RunnerScaleSetNotFoundException, GitHub.Actions.Runtime.WebApi",
            ErrorKind::ScaleSetNotFound,
        ),
    ];
    let s = TestServer::with_auth().await;
    // GET, not DELETE: removing a runner the service no longer has is a success (see
    // `remove_runner_that_is_gone_is_ok`), so the kinds are read through get-runner.
    s.on_tenant("GET", AGENT_1, move |_, n| {
        let (status, name, _) = cases[n];
        Reply::json(
            status,
            &format!(r#"{{"typeName":"{name}","message":"message {n}"}}"#),
        )
    });
    let c = client(&s);
    for (n, (status, name, kind)) in cases.iter().enumerate() {
        let e = within(c.get_runner(RunnerId::new(1)))
            .await
            .expect_err("error");
        assert_eq!(e.kind(), *kind, "{name}");
        assert_eq!(e.status(), Some(*status));
        assert!(e.to_string().contains(&format!("message {n}")), "{e}");
        assert_eq!(e.exception().map(|x| x.type_name.as_str()), Some(*name));
    }
}

// Removing a runner the service answers 404 `AgentNotFoundException` for is a success: the
// runner is gone, which is what the caller wanted (the service usually answers 204 then).
#[tokio::test]
async fn remove_runner_that_is_gone_is_ok() {
    let s = TestServer::with_auth().await;
    s.on_tenant("DELETE", AGENT_1, |_, _| {
        Reply::json(
            404,
            r#"{"typeName":"GitHub.DistributedTask.WebApi.AgentNotFoundException","message":"gone"}"#,
        )
    });
    within(client(&s).remove_runner(RunnerId::new(1)))
        .await
        .expect("a runner that is gone is removed");
}

// Behaviour 105: a non-JSON body with a JSON content type says so and includes the body.
#[tokio::test]
async fn b105_invalid_json_error_body() {
    let s = TestServer::with_auth().await;
    s.on_tenant("DELETE", AGENT_1, |_, _| Reply::json(400, "not-json"));
    let e = within(client(&s).remove_runner(RunnerId::new(1)))
        .await
        .expect_err("400");
    let text = e.to_string();
    assert!(
        text.contains("failed to unmarshal error response body"),
        "{text}"
    );
    assert!(text.contains("not-json"), "{text}");
}

// ---------------------------------------------------------------------------------------------
// Issue item 7: tolerant decoding never panics.

fn hostile_bodies() -> Vec<Vec<u8>> {
    let mut bodies: Vec<Vec<u8>> = [
        "", " ", "null", "true", "0", "-1", "1e400", "\"str\"", "[]", "{}", "[null]", "{\"count\":null,\"value\":null}",
        r#"{"count":-1,"value":[]}"#,
        r#"{"count":9223372036854775807,"value":[{}]}"#,
        r#"{"count":"1","value":[{"id":1}]}"#,
        r#"{"count":1,"value":{"id":1}}"#,
        r#"{"count":1,"value":[null]}"#,
        r#"{"count":1,"value":[{"id":"1","name":5}]}"#,
        r#"{"id":null,"name":null,"labels":null,"RunnerSetting":null,"createdOn":null,"statistics":null,"runner":null,"encodedJITConfig":null}"#,
        r#"{"id":1.5}"#,
        r#"{"id":99999999999999999999999}"#,
        r#"{"id":1,"createdOn":"2025-01-01T10:00:00.1234567Z"}"#,
        r#"{"id":1,"createdOn":"0001-01-01T00:00:00Z"}"#,
        r#"{"id":1,"createdOn":"2025-01-01T10:00:00"}"#,
        r#"{"id":1,"createdOn":""}"#,
        r#"{"id":1,"createdOn":"yesterday"}"#,
        r#"{"id":1,"createdOn":12}"#,
        r#"{"id":1,"labels":[{"type":null,"name":null},7]}"#,
        r#"{"id":1,"runnerSetting":{"disableUpdate":"yes"}}"#,
        r#"{"id":1,"statistics":{"totalAssignedJobs":-5}}"#,
        r#"{"runner":{"id":1},"encodedJITConfig":{"nested":true}}"#,
        r#"{"count":1,"value":[{"id":1,"name":"g","size":null,"isDefaultGroup":null}]}"#,
        "\u{feff}\u{feff}{}",
        "{\"id\":1,\"name\":\"\\ud800\"}",
        "{\"id\":1",
        "}{",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    bodies.push(format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes());
    bodies.push(format!("{}1{}", "{\"a\":".repeat(50_000), "}".repeat(50_000)).into_bytes());
    bodies.push(vec![0xff, 0xfe, 0x00, 0x7b, 0x7d]);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5ca1e5e7);
    for _ in 0..150 {
        let len = rng.random_range(0..256);
        let mut b: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        if rng.random_bool(0.5) {
            b.insert(0, b'{');
        }
        bodies.push(b);
    }
    bodies
}

#[tokio::test]
async fn hostile_success_bodies_never_panic() {
    let bodies = std::sync::Arc::new(hostile_bodies());
    let total = bodies.len();
    let s = TestServer::with_auth().await;
    let routes = [
        ("GET", "_apis/runtime/runnerscalesets/1"),
        ("GET", "_apis/runtime/runnerscalesets"),
        ("GET", "_apis/runtime/runnergroups/"),
        ("GET", "_apis/distributedtask/pools/0/agents/1"),
        ("GET", "_apis/distributedtask/pools/0/agents"),
        ("POST", "_apis/runtime/runnerscalesets/1/generatejitconfig"),
    ];
    for (method, path) in routes {
        let bodies = bodies.clone();
        s.on_tenant(method, path, move |_, n| {
            Reply::json(200, "").body(&bodies[n % bodies.len()])
        });
    }
    let c = client(&s);
    let jit = JitRunnerSetting {
        name: "r".into(),
        work_folder: String::new(),
    };
    for _ in 0..total {
        let results = [
            c.get_runner_scale_set_by_id(ScaleSetId::new(1))
                .await
                .map(drop),
            c.get_runner_scale_set(RunnerGroupId::new(1), "x")
                .await
                .map(drop),
            c.list_runner_scale_sets(RunnerGroupId::new(1))
                .await
                .map(drop),
            c.get_runner_group_by_name("g").await.map(drop),
            c.get_runner(RunnerId::new(1)).await.map(drop),
            c.get_runner_by_name("r").await.map(drop),
            c.generate_jit_runner_config(ScaleSetId::new(1), &jit)
                .await
                .map(drop),
        ];
        for r in results {
            if let Err(e) = r {
                assert!(
                    matches!(
                        e.kind(),
                        ErrorKind::Decode | ErrorKind::Protocol | ErrorKind::RunnerGroupNotFound
                    ),
                    "{e}"
                );
                let _ = format!("{e} {e:?}");
            }
        }
    }
}

// Tolerant decoding that must succeed: nulls read as defaults, 7-digit fractions, the zero
// time as absent, `runnerSetting` in either casing, unknown fields ignored.
#[tokio::test]
async fn tolerant_bodies_decode() {
    let s = TestServer::with_auth().await;
    s.on_seq(
        "GET",
        &tenant_path("_apis/runtime/runnerscalesets/1"),
        vec![
            Reply::json(200, r#"{"id":1,"name":null,"labels":null,"RunnerSetting":null,"createdOn":null,"statistics":null,"extra":{"deep":[1,2,{}]}}"#),
            Reply::json(200, r#"{"id":1,"runnerSetting":{"disableUpdate":true},"createdOn":"0001-01-01T00:00:00Z"}"#),
            Reply::json(200, r#"{"id":1,"createdOn":"2025-06-01T12:00:00.1234567+02:00"}"#),
        ],
    );
    let c = client(&s);
    let a = within(c.get_runner_scale_set_by_id(ScaleSetId::new(1)))
        .await
        .expect("nulls")
        .expect("some");
    assert_eq!(
        (a.id, a.name.as_str(), a.labels.len(), a.created_on),
        (ScaleSetId::new(1), "", 0, None)
    );
    let b = within(c.get_runner_scale_set_by_id(ScaleSetId::new(1)))
        .await
        .expect("casing")
        .expect("some");
    assert!(b.runner_setting.disable_update);
    assert_eq!(b.created_on, None, "zero time is absent");
    let t = within(c.get_runner_scale_set_by_id(ScaleSetId::new(1)))
        .await
        .expect("fraction")
        .expect("some");
    let ts = t.created_on.expect("time");
    assert_eq!(
        (ts.as_second(), ts.subsec_nanosecond()),
        (1_748_772_000, 123_456_700)
    );
}

// ---------------------------------------------------------------------------------------------
// Issue item 8: secrets never appear in Debug/Display of credentials, client, errors, nor in
// TRACE logs of a full flow with retries and a forced refresh.

const PKCS8: &str = include_str!("fixtures/app_key_pkcs8.pem");
const INSTALLATION_TOKEN: &str = "ghs_SecretInstallationToken42";
const JIT_CONFIG: &str = "eyJzZWNyZXQtaml0LWNvbmZpZyI6InRydWUifQ==";

/// Every secret string a server saw or sent in this flow.
fn secrets_seen(s: &TestServer) -> Vec<String> {
    let mut out: Vec<String> = vec![PAT.into(), INSTALLATION_TOKEN.into(), JIT_CONFIG.into()];
    for r in s.requests() {
        let auth = r.authorization();
        if let Some((_, token)) = auth.split_once(' ') {
            out.push(token.to_string());
            // Parts of a JWT are secret too (its signature in particular).
            if let Some(sig) = token.rsplit('.').next()
                && sig.len() > 8
            {
                out.push(sig.to_string());
            }
        }
    }
    // Lines of the PEM body.
    out.extend(
        PKCS8
            .lines()
            .filter(|l| !l.starts_with("-----") && l.len() > 20)
            .map(str::to_string),
    );
    out.sort();
    out.dedup();
    out
}

fn assert_no_secret(what: &str, text: &str, secrets: &[String]) {
    for secret in secrets {
        assert!(
            !text.contains(secret.as_str()),
            "{what} leaks a secret {secret:?}:\n{text}"
        );
    }
}

#[tokio::test]
async fn secrets_stay_out_of_debug_errors_and_logs() {
    let logs = capture_logs();
    let s = TestServer::with_auth().await;
    s.on(
        "POST",
        "/api/v3/app/installations/7/access_tokens",
        |_, _| Reply::json(201, &format!(r#"{{"token":"{INSTALLATION_TOKEN}"}}"#)),
    );
    let base = s.url("");
    s.on("POST", RUNNER_REGISTRATION_PATH, move |_, n| {
        if n == 0 {
            Reply::json(401, r#"{"message":"try again"}"#)
        } else {
            Reply::json(
                200,
                &format!(
                    r#"{{"url":"{base}{TENANT}","token":"{}"}}"#,
                    admin_jwt(3600, n)
                ),
            )
        }
    });
    s.on_seq(
        "POST",
        &tenant_path("_apis/runtime/runnerscalesets/1/generatejitconfig"),
        vec![
            Reply::status(503),
            Reply::status(401),
            Reply::json(
                200,
                &format!(r#"{{"runner":{{"id":1,"name":"r"}},"encodedJITConfig":"{JIT_CONFIG}"}}"#),
            ),
        ],
    );
    let creds = Credentials::github_app("client-id", 7, PKCS8).expect("key");
    let c = Client::builder(s.config_url(), creds.clone())
        .retry_max(2)
        .retry_wait_min(Duration::from_millis(1))
        .retry_wait_max(Duration::from_millis(2))
        .build()
        .expect("client");
    let jit = JitRunnerSetting {
        name: "r".into(),
        work_folder: String::new(),
    };
    let cfg = within(c.generate_jit_runner_config(ScaleSetId::new(1), &jit))
        .await
        .expect("jit");
    assert_eq!(cfg.encoded_jit_config.expose_secret(), JIT_CONFIG);

    // Rejections: the admin token (401 twice on a tenant call) ...
    s.on_tenant("GET", AGENT_1, |_, _| {
        Reply::json(401, r#"{"message":"Bad token"}"#)
    });
    let admin_rejected = within(c.get_runner(RunnerId::new(1)))
        .await
        .expect_err("401");
    // ... the registration token (runner-registration refuses it) ...
    s.on("POST", RUNNER_REGISTRATION_PATH, |_, _| {
        Reply::json(403, r#"{"message":"Forbidden"}"#)
    });
    let c2 = Client::builder(s.config_url(), pat())
        .retry_max(0)
        .build()
        .expect("client");
    let reg_rejected = within(c2.get_runner(RunnerId::new(1)))
        .await
        .expect_err("403");
    // ... and the PAT (registration-token refuses it).
    s.on("POST", REG_TOKEN_PATH, |_, _| {
        Reply::json(401, r#"{"message":"Bad credentials"}"#)
    });
    let c3 = Client::builder(s.config_url(), pat())
        .retry_max(0)
        .build()
        .expect("client");
    let pat_rejected = within(c3.get_runner(RunnerId::new(1)))
        .await
        .expect_err("401");

    let secrets = secrets_seen(&s);
    assert!(secrets.len() > 8, "{secrets:?}");
    let log_text = logs.text();
    assert!(
        log_text.contains("retrying"),
        "the log capture works: {log_text}"
    );
    assert_no_secret("logs", &log_text, &secrets);
    for (what, text) in [
        ("PAT credentials", format!("{:?}", pat())),
        ("App credentials", format!("{creds:?}")),
        ("client", format!("{c:?} {c2:?} {:?}", c.debug_info())),
        ("JIT config", format!("{cfg:?}")),
        (
            "admin rejected",
            format!("{admin_rejected} {admin_rejected:?}"),
        ),
        (
            "registration rejected",
            format!("{reg_rejected} {reg_rejected:?}"),
        ),
        ("PAT rejected", format!("{pat_rejected} {pat_rejected:?}")),
    ] {
        assert_no_secret(what, &text, &secrets);
    }
}
