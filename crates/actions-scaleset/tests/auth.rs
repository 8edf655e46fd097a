//! The admin-token flow over HTTP (PROTOCOL.md section 2; section 9 behaviours 11-23) and the
//! reactive refresh of issue item 6.

mod common;

use actions_scaleset::{Client, Credentials, ErrorKind, RunnerId};
use common::*;
use serde::Deserialize;

const PKCS1: &str = include_str!("fixtures/app_key_pkcs1.pem");
const PKCS8: &str = include_str!("fixtures/app_key_pkcs8.pem");
const PUBLIC: &str = include_str!("fixtures/app_key_public.pem");
const AGENT_1: &str = "_apis/distributedtask/pools/0/agents/1";
const INSTALLATION_TOKEN: &str = "ghs_InstallationToken0123456789";

fn runner_ok(s: &TestServer) {
    s.on_tenant("GET", AGENT_1, |_, _| {
        Reply::json(200, r#"{"id":1,"name":"r"}"#)
    });
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// The paths of all requests, in order.
fn paths(s: &TestServer) -> Vec<String> {
    s.requests().into_iter().map(|r| r.path).collect()
}

// Behaviours 11, 22, 23 (and 10: the body is sent unchanged): a new client fetches a
// registration token with `Bearer <PAT>`, trades it with `RemoteAuth` for the admin
// connection, and sends the tenant call with `Bearer <admin token>`.
#[tokio::test]
async fn b11_b22_b23_pat_flow_headers_and_bodies() {
    let s = TestServer::with_auth().await;
    let admin = admin_jwt(3600, 77);
    let (base, token) = (s.url(""), admin.clone());
    s.on("POST", RUNNER_REGISTRATION_PATH, move |_, _| {
        Reply::json(
            200,
            &format!(r#"{{"url":"{base}{TENANT}","token":"{token}"}}"#),
        )
    });
    runner_ok(&s);
    let c = client(&s);
    within(c.get_runner(RunnerId::new(1))).await.expect("ok");
    assert_eq!(
        paths(&s),
        vec![
            REG_TOKEN_PATH.to_string(),
            RUNNER_REGISTRATION_PATH.into(),
            tenant_path(AGENT_1)
        ]
    );
    let reqs = s.requests();
    // Behaviour 22.
    let reg = &reqs[0];
    assert_eq!(reg.method, "POST");
    assert_eq!(reg.authorization(), format!("Bearer {PAT}"));
    assert_eq!(
        reg.header("content-type"),
        Some("application/vnd.github.v3+json")
    );
    // Go sends no Accept header; reqwest sends its neutral default `*/*`, nothing more specific.
    assert!(matches!(reg.header("accept"), None | Some("*/*")));
    assert!(reg.header("x-github-api-version").is_none());
    assert!(reg.body.is_empty());
    assert!(
        reg.header("user-agent")
            .is_some_and(|ua| ua.starts_with(r#"{"system":"#))
    );
    // Behaviour 23.
    let rr = &reqs[1];
    assert_eq!(rr.method, "POST");
    assert_eq!(
        rr.authorization(),
        format!("RemoteAuth {REG_TOKEN_PREFIX}0")
    );
    assert_eq!(rr.header("content-type"), Some("application/json"));
    assert_eq!(
        rr.json(),
        json(&format!(
            r#"{{"url":"{}","runner_event":"register"}}"#,
            s.config_url()
        ))
    );
    assert!(
        rr.body.ends_with(b"}\n"),
        "encoded like Go's json.Encoder: a trailing newline"
    );
    // Behaviour 11.
    assert_eq!(reqs[2].authorization(), format!("Bearer {admin}"));
}

/// The `n` claim of the admin token a tenant request carried.
fn admin_n(r: &Recorded) -> u64 {
    use base64::Engine as _;
    let token = r.authorization().strip_prefix("Bearer ").expect("bearer");
    let claims = token.split('.').nth(1).expect("claims");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims)
        .expect("base64url");
    let v: serde_json::Value = serde_json::from_slice(&bytes).expect("json claims");
    v["n"].as_u64().expect("n claim")
}

// Behaviour 12: an admin token expiring within 60 s is refreshed before the next request.
#[tokio::test]
async fn b12_token_about_to_expire_is_refreshed_first() {
    let s = TestServer::with_auth().await;
    let base = s.url("");
    s.on("POST", RUNNER_REGISTRATION_PATH, move |_, n| {
        Reply::json(
            200,
            &format!(
                r#"{{"url":"{base}{TENANT}","token":"{}"}}"#,
                admin_jwt(59, n)
            ),
        )
    });
    runner_ok(&s);
    let c = client(&s);
    within(c.get_runner(RunnerId::new(1))).await.expect("ok");
    within(c.get_runner(RunnerId::new(1))).await.expect("ok");
    assert_eq!(s.count(REG_TOKEN_PATH), 2);
    assert_eq!(s.count(RUNNER_REGISTRATION_PATH), 2);
    let tenant = s.tenant_requests();
    assert_eq!(tenant.iter().map(admin_n).collect::<Vec<_>>(), vec![0, 1]);
}

// Behaviour 13: a token valid for an hour is reused verbatim, with no GitHub call.
#[tokio::test]
async fn b13_valid_token_is_reused() {
    let s = TestServer::with_auth().await;
    runner_ok(&s);
    let c = client(&s);
    for _ in 0..3 {
        within(c.get_runner(RunnerId::new(1))).await.expect("ok");
    }
    assert_eq!(s.count(REG_TOKEN_PATH), 1);
    assert_eq!(s.count(RUNNER_REGISTRATION_PATH), 1);
    let tenant = s.tenant_requests();
    assert_eq!(tenant.len(), 3);
    assert!(
        tenant
            .iter()
            .all(|r| r.authorization() == tenant[0].authorization())
    );
}

// Behaviour 14: runner-registration answering 401 `{"message":"test"}` forever fails after
// retryMax+1 attempts with `test` in the error, and the stored connection is unchanged (the
// next call uses the old token without calling GitHub). The refresh is forced here by a 401
// on the tenant call (issue item 6), since the stored token is still valid.
#[tokio::test]
async fn b14_refresh_failure_keeps_the_stored_token() {
    let s = TestServer::with_auth().await;
    let base = s.url("");
    s.on("POST", RUNNER_REGISTRATION_PATH, move |_, n| {
        if n == 0 {
            Reply::json(
                200,
                &format!(
                    r#"{{"url":"{base}{TENANT}","token":"{}"}}"#,
                    admin_jwt(3600, 0)
                ),
            )
        } else {
            Reply::json(401, r#"{"message":"test"}"#)
        }
    });
    s.on_seq(
        "GET",
        &tenant_path(AGENT_1),
        vec![Reply::status(401), Reply::json(200, r#"{"id":1}"#)],
    );
    let c = builder(&s).retry_max(2).build().expect("client");
    let e = within(c.get_runner(RunnerId::new(1)))
        .await
        .expect_err("refresh fails");
    assert!(e.to_string().contains("test"), "{e}");
    assert_eq!(e.status(), Some(401));
    assert_eq!(
        s.count(RUNNER_REGISTRATION_PATH),
        1 + 3,
        "retryMax+1 attempts on the refresh"
    );
    let before = s.requests().len();
    within(c.get_runner(RunnerId::new(1)))
        .await
        .expect("old token still works");
    let after = s.requests();
    assert_eq!(
        after.len(),
        before + 1,
        "no GitHub call, only the tenant call"
    );
    assert_eq!(admin_n(after.last().expect("one")), 0);
}

// Behaviour 15: 401 four times then success: the refresh succeeds on the 5th attempt (retryMax 4).
#[tokio::test]
async fn b15_runner_registration_401_is_retried_until_success() {
    let s = TestServer::with_auth().await;
    let base = s.url("");
    s.on("POST", RUNNER_REGISTRATION_PATH, move |_, n| {
        if n < 4 {
            Reply::json(401, r#"{"message":"not yet"}"#)
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
    runner_ok(&s);
    let c = builder(&s).retry_max(4).build().expect("client");
    within(c.get_runner(RunnerId::new(1))).await.expect("ok");
    assert_eq!(s.count(RUNNER_REGISTRATION_PATH), 5);
    assert_eq!(s.count(REG_TOKEN_PATH), 1);
    assert_eq!(admin_n(&s.tenant_requests()[0]), 4);
}

// Our deliberate difference (section 10 weakness 24): runner-registration retries 401 but not
// 403, a genuine permission error.
#[tokio::test]
async fn runner_registration_403_is_not_retried() {
    let s = TestServer::with_auth().await;
    s.on("POST", RUNNER_REGISTRATION_PATH, |_, _| {
        Reply::json(403, r#"{"message":"Forbidden here"}"#)
    });
    let c = builder(&s).retry_max(4).build().expect("client");
    let e = within(c.get_runner(RunnerId::new(1)))
        .await
        .expect_err("403");
    assert_eq!(e.status(), Some(403));
    assert!(e.to_string().contains("Forbidden here"), "{e}");
    assert_eq!(s.count(RUNNER_REGISTRATION_PATH), 1);
    assert!(s.tenant_requests().is_empty());
}

// Behaviour 16: the tenant URL is joined with or without its trailing slash.
#[tokio::test]
async fn b16_tenant_url_without_trailing_slash() {
    let s = TestServer::with_auth().await;
    let base = s.url("");
    s.on("POST", RUNNER_REGISTRATION_PATH, move |_, n| {
        Reply::json(
            200,
            &format!(
                r#"{{"url":"{base}/tenant/123","token":"{}"}}"#,
                admin_jwt(3600, n)
            ),
        )
    });
    runner_ok(&s);
    within(client(&s).get_runner(RunnerId::new(1)))
        .await
        .expect("ok");
    let r = &s.tenant_requests()[0];
    assert_eq!(r.path, "/tenant/123/_apis/distributedtask/pools/0/agents/1");
    assert_eq!(r.raw_query, "api-version=6.0-preview");
}

// Behaviour 19: the registration-token call must answer exactly 201; anything else fails
// with status and body (200 included).
#[tokio::test]
async fn b19_registration_token_needs_201() {
    for reply in [
        Reply::json(200, r#"{"token":"x"}"#),
        Reply::json(401, r#"{"message":"Bad credentials"}"#).header("X-GitHub-Request-Id", "GH-1"),
    ] {
        let s = TestServer::with_auth().await;
        let status = reply.status;
        s.on_seq("POST", REG_TOKEN_PATH, vec![reply]);
        let e = within(client(&s).get_runner(RunnerId::new(1)))
            .await
            .expect_err("not 201");
        assert_eq!(e.status(), Some(status));
        let text = e.to_string();
        assert!(
            text.contains("failed to get runner registration token"),
            "{text}"
        );
        if status == 401 {
            assert!(text.contains("Bad credentials"), "{text}");
            assert!(text.contains(r#"github_request_id="GH-1""#), "{text}");
        }
        assert_eq!(s.count(RUNNER_REGISTRATION_PATH), 0);
    }
}

// Section 10 weakness 11: a 201 without a token is a protocol error, not a crash.
#[tokio::test]
async fn registration_token_without_token_is_protocol_error() {
    let s = TestServer::with_auth().await;
    s.on("POST", REG_TOKEN_PATH, |_, _| {
        Reply::json(201, r#"{"expires_at":"2030-01-01T00:00:00Z"}"#)
    });
    let e = within(client(&s).get_runner(RunnerId::new(1)))
        .await
        .expect_err("no token");
    assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
}

// Behaviour 20: a runner-registration answer without (or with an empty) url or token fails.
#[tokio::test]
async fn b20_admin_connection_missing_url_or_token() {
    let cases = [
        (r#"{"token":"TOKEN"}"#, "missing url"),
        (r#"{"url":"","token":"TOKEN"}"#, "missing url"),
        (r#"{"url":"URL"}"#, "missing token"),
        (r#"{"url":"URL","token":""}"#, "missing token"),
        (r#"{"url":"URL","token":null}"#, "missing token"),
    ];
    for (body, want) in cases {
        let s = TestServer::with_auth().await;
        let body = body
            .replace("TOKEN", &admin_jwt(3600, 0))
            .replace("URL", &s.url(TENANT));
        s.on("POST", RUNNER_REGISTRATION_PATH, move |_, _| {
            Reply::json(200, &body)
        });
        let e = within(client(&s).get_runner(RunnerId::new(1)))
            .await
            .expect_err(want);
        assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
        assert!(e.to_string().contains(want), "{e}");
        assert!(s.tenant_requests().is_empty());
    }
}

// Section 2.2 D: an admin token that is not a JWT fails the refresh.
#[tokio::test]
async fn admin_token_that_is_not_a_jwt_fails_the_refresh() {
    let s = TestServer::with_auth().await;
    let url = s.url(TENANT);
    s.on("POST", RUNNER_REGISTRATION_PATH, move |_, _| {
        Reply::json(200, &format!(r#"{{"url":"{url}","token":"not-a-jwt"}}"#))
    });
    let e = within(client(&s).get_runner(RunnerId::new(1)))
        .await
        .expect_err("bad jwt");
    assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
}

#[derive(Debug, Deserialize)]
struct AppClaims {
    iss: String,
    iat: i64,
    exp: i64,
}

async fn app_server() -> TestServer {
    let s = TestServer::with_auth().await;
    s.on(
        "POST",
        "/api/v3/app/installations/4242/access_tokens",
        |_, _| {
            Reply::json(
                201,
                &format!(
                    r#"{{"token":"{INSTALLATION_TOKEN}","expires_at":"2030-01-01T00:00:00Z"}}"#
                ),
            )
        },
    );
    runner_ok(&s);
    s
}

// Behaviour 21 with a PKCS#1 and a PKCS#8 key: the App JWT is RS256, verifies with the public
// key, has iss = client id, iat = now - 60 and exp = iat + 540; the installation token then
// authorizes the registration-token call.
#[tokio::test]
async fn b21_github_app_flow_pkcs1_and_pkcs8() {
    for pem in [PKCS1, PKCS8] {
        let s = app_server().await;
        let creds = Credentials::github_app("Iv1.client-id", 4242, pem).expect("valid key");
        let c = Client::builder(s.config_url(), creds)
            .retry_wait_min(std::time::Duration::from_millis(1))
            .retry_wait_max(std::time::Duration::from_millis(5))
            .build()
            .expect("client");
        let before = unix_now();
        within(c.get_runner(RunnerId::new(1))).await.expect("ok");
        let after = unix_now();
        let reqs = s.requests();
        assert_eq!(
            reqs.iter().map(|r| r.path.as_str()).collect::<Vec<_>>(),
            vec![
                "/api/v3/app/installations/4242/access_tokens",
                REG_TOKEN_PATH,
                RUNNER_REGISTRATION_PATH,
                "/tenant/123/_apis/distributedtask/pools/0/agents/1",
            ]
        );
        let inst = &reqs[0];
        assert_eq!(inst.method, "POST");
        assert!(inst.body.is_empty());
        assert_eq!(
            inst.header("content-type"),
            Some("application/vnd.github+json")
        );
        let jwt = inst
            .authorization()
            .strip_prefix("Bearer ")
            .expect("Bearer JWT");
        let header = jsonwebtoken::decode_header(jwt).expect("JWT header");
        assert_eq!(header.alg, jsonwebtoken::Algorithm::RS256);
        let key = jsonwebtoken::DecodingKey::from_rsa_pem(PUBLIC.as_bytes()).expect("public key");
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        validation.set_required_spec_claims(&["exp", "iat", "iss"]);
        validation.set_issuer(&["Iv1.client-id"]);
        let claims = jsonwebtoken::decode::<AppClaims>(jwt, &key, &validation)
            .expect("signature verifies with the App's public key")
            .claims;
        assert_eq!(claims.iss, "Iv1.client-id");
        assert!(
            claims.iat >= before - 60 && claims.iat <= after - 60,
            "iat {claims:?}"
        );
        assert_eq!(claims.exp, claims.iat + 540);
        assert_eq!(
            reqs[1].authorization(),
            format!("Bearer {INSTALLATION_TOKEN}")
        );
    }
}

// Behaviour 19 for the installation token: anything but 201 fails with status and body.
#[tokio::test]
async fn b19_installation_token_needs_201() {
    let s = app_server().await;
    s.on(
        "POST",
        "/api/v3/app/installations/4242/access_tokens",
        |_, _| {
            Reply::json(
                401,
                r#"{"message":"A JSON web token could not be decoded"}"#,
            )
        },
    );
    let creds = Credentials::github_app("123", 4242, PKCS1).expect("valid key");
    let c = Client::builder(s.config_url(), creds)
        .build()
        .expect("client");
    let e = within(c.get_runner(RunnerId::new(1)))
        .await
        .expect_err("401");
    assert_eq!(e.status(), Some(401));
    let text = e.to_string();
    assert!(
        text.contains("failed to get access token for GitHub App auth"),
        "{text}"
    );
    assert!(text.contains("could not be decoded"), "{text}");
    assert_eq!(s.count(REG_TOKEN_PATH), 0);
}

// Credentials are validated at construction (section 10 weakness 11).
#[test]
fn app_credentials_are_validated() {
    assert_eq!(
        Credentials::github_app("id", 1, "not a pem")
            .map(drop)
            .map_err(|e| e.kind()),
        Err(ErrorKind::InvalidCredentials)
    );
    assert!(Credentials::github_app("id", 1, PKCS8).is_ok());
}

// Issue item 6: a 401 on a tenant call with the admin token forces exactly one refresh and
// one retry (with the new token); a second 401 is returned.
#[tokio::test]
async fn tenant_401_forces_one_refresh_and_one_retry() {
    let s = TestServer::with_auth().await;
    s.on_seq(
        "GET",
        &tenant_path(AGENT_1),
        vec![Reply::status(401), Reply::json(200, r#"{"id":1}"#)],
    );
    let c = client(&s);
    within(c.get_runner(RunnerId::new(1)))
        .await
        .expect("recovered");
    let tenant = s.tenant_requests();
    assert_eq!(tenant.iter().map(admin_n).collect::<Vec<_>>(), vec![0, 1]);
    assert_eq!(s.count(REG_TOKEN_PATH), 2);
    assert_eq!(s.count(RUNNER_REGISTRATION_PATH), 2);

    let s = TestServer::with_auth().await;
    s.on_tenant("GET", AGENT_1, |_, _| {
        Reply::json(401, r#"{"message":"nope"}"#)
    });
    let c = client(&s);
    let e = within(c.get_runner(RunnerId::new(1)))
        .await
        .expect_err("401 twice");
    assert_eq!(e.status(), Some(401));
    assert_eq!(s.tenant_requests().len(), 2);
    assert_eq!(
        s.count(RUNNER_REGISTRATION_PATH),
        2,
        "exactly one forced refresh"
    );
}
