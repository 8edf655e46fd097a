//! Per-endpoint tests with a raw HTTP client and hand-written JSON.

mod common;

use std::time::Duration;

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Method;
use scaleset_sim::{SimConfig, Simulator};
use serde_json::{Value, json};

fn app_jwt(iss: &str, iat: i64, exp: i64, pem: &str) -> String {
    let key = EncodingKey::from_rsa_pem(pem.as_bytes()).expect("pem");
    jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        &json!({"iss": iss, "iat": iat, "exp": exp}),
        &key,
    )
    .expect("sign")
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

const OTHER_KEY: &str = include_str!("other-key.pem");

#[tokio::test]
async fn startup_line_and_urls() {
    let sim = Simulator::start(SimConfig {
        token: Some("ghp_fixed".into()),
        ..fast_cfg()
    })
    .await
    .expect("start");
    let line = sim.startup_line();
    assert_eq!(
        line["configUrl"],
        format!("{}/sim-org/sim-repo", sim.base_url())
    );
    assert_eq!(line["token"], "ghp_fixed");
    assert_eq!(line["controlUrl"], format!("{}/_sim", sim.base_url()));
    assert!(sim.base_url().starts_with("http://127.0.0.1:"));
    let info = send(
        &client(),
        Method::GET,
        &format!("{}/info", sim.control_url()),
        None,
        None,
    )
    .await;
    assert_eq!(info.status, 200);
    assert_eq!(
        info.json()["app"]["installationId"],
        sim.app_credentials().installation_id
    );
    assert!(!format!("{:?}", sim.app_credentials()).contains("PRIVATE KEY"));
    sim.shutdown().await;
}

#[tokio::test]
async fn app_jwt_flow_good_and_bad() {
    let sim = Simulator::start(fast_cfg()).await.expect("start");
    let http = client();
    let creds = sim.app_credentials();
    let url = format!(
        "{}/api/v3/app/installations/{}/access_tokens",
        sim.base_url(),
        creds.installation_id
    );
    let good = app_jwt(
        &creds.client_id,
        now() - 60,
        now() + 480,
        &creds.private_key_pem,
    );
    let r = send(
        &http,
        Method::POST,
        &url,
        Some(&format!("Bearer {good}")),
        None,
    )
    .await;
    assert_eq!(r.status, 201);
    assert!(r.header("x-github-request-id").is_some());
    let inst = r.json()["token"].as_str().expect("token").to_owned();
    assert!(r.json()["expires_at"].as_str().is_some());

    // Bad JWTs: wrong key, wrong issuer, expired, too long-lived, garbage, missing header.
    let bad = [
        app_jwt(&creds.client_id, now() - 60, now() + 480, OTHER_KEY),
        app_jwt(
            "someone-else",
            now() - 60,
            now() + 480,
            &creds.private_key_pem,
        ),
        app_jwt(
            &creds.client_id,
            now() - 1200,
            now() - 600,
            &creds.private_key_pem,
        ),
        app_jwt(
            &creds.client_id,
            now(),
            now() + 3600,
            &creds.private_key_pem,
        ),
        "not.a.jwt".to_owned(),
    ];
    for b in &bad {
        let r = send(
            &http,
            Method::POST,
            &url,
            Some(&format!("Bearer {b}")),
            None,
        )
        .await;
        assert_eq!(r.status, 401, "jwt {b}");
        assert!(r.json()["message"].is_string());
    }
    let r = send(&http, Method::POST, &url, None, None).await;
    assert_eq!(r.status, 401);
    // Wrong installation id.
    let wrong = format!(
        "{}/api/v3/app/installations/1/access_tokens",
        sim.base_url()
    );
    let r = send(
        &http,
        Method::POST,
        &wrong,
        Some(&format!("Bearer {good}")),
        None,
    )
    .await;
    assert_eq!(r.status, 404);

    // The installation token works for the registration token (org scope).
    let reg = format!(
        "{}/api/v3/orgs/sim-org/actions/runners/registration-token",
        sim.base_url()
    );
    let r = send(
        &http,
        Method::POST,
        &reg,
        Some(&format!("Bearer {inst}")),
        None,
    )
    .await;
    assert_eq!(r.status, 201);
    sim.shutdown().await;
}

#[tokio::test]
async fn registration_all_scopes_and_admin_connection() {
    let sim = Simulator::start(fast_cfg()).await.expect("start");
    let http = client();
    let api = format!("{}/api/v3", sim.base_url());
    let pat = format!("Bearer {}", sim.token());
    for (path, cfg_url) in [
        ("orgs/sim-org", sim.org_config_url()),
        ("repos/sim-org/sim-repo", sim.config_url()),
        ("enterprises/sim-enterprise", sim.enterprise_config_url()),
    ] {
        let r = send(
            &http,
            Method::POST,
            &format!("{api}/{path}/actions/runners/registration-token"),
            Some(&pat),
            None,
        )
        .await;
        assert_eq!(r.status, 201, "{path}");
        let reg = r.json()["token"].as_str().expect("token").to_owned();
        let r = send(
            &http,
            Method::POST,
            &format!("{api}/actions/runner-registration"),
            Some(&format!("RemoteAuth {reg}")),
            Some(json!({"url": cfg_url, "runner_event": "register"})),
        )
        .await;
        assert_eq!(r.status, 201);
        let v = r.json();
        assert_eq!(v["url"], format!("{}/tenant/1/", sim.base_url()));
        let tok = v["token"].as_str().expect("token");
        assert_eq!(tok.split('.').count(), 3, "admin token is a JWT");
        let claims: Value = jsonwebtoken::dangerous::insecure_decode_claims(tok).expect("claims");
        assert!(claims["exp"].as_i64().expect("exp") > now());
    }
    // Bad PAT, bad registration token, bad URL.
    let r = send(
        &http,
        Method::POST,
        &format!("{api}/orgs/x/actions/runners/registration-token"),
        Some("Bearer nope"),
        None,
    )
    .await;
    assert_eq!(r.status, 401);
    let r = send(
        &http,
        Method::POST,
        &format!("{api}/actions/runner-registration"),
        Some("RemoteAuth nope"),
        Some(json!({"url": sim.config_url(), "runner_event": "register"})),
    )
    .await;
    assert_eq!(r.status, 401);
    let r = send(
        &http,
        Method::POST,
        &format!("{api}/orgs/sim-org/actions/runners/registration-token"),
        Some(&pat),
        None,
    )
    .await;
    let reg = r.json()["token"].as_str().expect("token").to_owned();
    let r = send(
        &http,
        Method::POST,
        &format!("{api}/actions/runner-registration"),
        Some(&format!("RemoteAuth {reg}")),
        Some(json!({"url": format!("{}/a/b/c", sim.base_url()), "runner_event": "register"})),
    )
    .await;
    assert_eq!(r.status, 404);
    let r = send(
        &http,
        Method::POST,
        &format!("{api}/actions/runner-registration"),
        Some(&format!("RemoteAuth {reg}")),
        None,
    )
    .await;
    assert_eq!(r.status, 400);
    sim.shutdown().await;
}

#[tokio::test]
async fn admin_token_is_verified_and_expires() {
    let ctx = Ctx::start(SimConfig {
        admin_token_ttl: std::time::Duration::from_secs(1),
        ..fast_cfg()
    })
    .await;
    let url = ctx.t("_apis/runtime/runnergroups/?groupName=default&api-version=6.0-preview");
    let r = send(&ctx.http, Method::GET, &url, Some("Bearer garbage"), None).await;
    assert_eq!(r.status, 401);
    assert!(
        r.json()["typeName"]
            .as_str()
            .expect("typeName")
            .contains("Unauthorized")
    );
    let r = send(&ctx.http, Method::GET, &url, None, None).await;
    assert_eq!(r.status, 401);
    // Wait (deadline-bounded) until the 1 s token is past its exp.
    let claims: Value =
        jsonwebtoken::dangerous::insecure_decode_claims(&ctx.admin).expect("claims");
    let exp = claims["exp"].as_i64().expect("exp");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        assert!(tokio::time::Instant::now() < deadline);
        if now() > exp {
            break;
        }
        let r = send(
            &ctx.http,
            Method::GET,
            &url,
            Some(&format!("Bearer {}", ctx.admin)),
            None,
        )
        .await;
        if r.status == 401 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let r = send(
        &ctx.http,
        Method::GET,
        &url,
        Some(&format!("Bearer {}", ctx.admin)),
        None,
    )
    .await;
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn runner_groups() {
    let ctx = Ctx::start(fast_cfg()).await;
    let r = ctx
        .tenant(
            Method::GET,
            "_apis/runtime/runnergroups/?groupName=default",
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(r.header("activityid").is_some());
    let v = r.json();
    assert_eq!(v["count"], 1);
    assert_eq!(v["value"][0]["id"], 1);
    assert_eq!(v["value"][0]["isDefaultGroup"], true);
    let r = ctx
        .tenant(
            Method::GET,
            "_apis/runtime/runnergroups/?groupName=nope",
            None,
        )
        .await;
    assert_eq!(r.json()["count"], 0);
    // Add a group through the control API.
    let r = send(
        &ctx.http,
        Method::POST,
        &format!("{}/runnergroups", ctx.sim.control_url()),
        None,
        Some(json!({"name": "gpu"})),
    )
    .await;
    assert_eq!(r.status, 201);
    let gid = r.json()["id"].as_i64().expect("id");
    let r = ctx
        .tenant(
            Method::GET,
            "_apis/runtime/runnergroups/?groupName=gpu",
            None,
        )
        .await;
    assert_eq!(r.json()["value"][0]["id"], gid);
    let r = send(
        &ctx.http,
        Method::POST,
        &format!("{}/runnergroups", ctx.sim.control_url()),
        None,
        Some(json!({"nom": 1})),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(ctx.sim.add_runner_group("gpu").expect("group"), gid);
}

#[tokio::test]
async fn scale_set_crud() {
    let ctx = Ctx::start(fast_cfg()).await;
    let base = "_apis/runtime/runnerscalesets";
    // Create with default labels.
    let r = ctx.tenant(Method::POST, base, Some(json!({"name": "my-set", "runnerGroupId": 1, "RunnerSetting": {"disableUpdate": true}, "createdOn": "0001-01-01T00:00:00Z"}))).await;
    assert_eq!(r.status, 200);
    let v = r.json();
    let id = v["id"].as_i64().expect("id");
    assert_eq!(v["labels"], json!([{"type": "System", "name": "my-set"}]));
    assert_eq!(v["RunnerSetting"]["disableUpdate"], true);
    assert_eq!(v["runnerGroupName"], "Default");
    assert!(v["statistics"]["totalAssignedJobs"].is_i64());
    assert!(
        v["runnerJitConfigUrl"]
            .as_str()
            .expect("url")
            .ends_with("/generatejitconfig")
    );
    // Duplicate name.
    let r = ctx
        .tenant(
            Method::POST,
            base,
            Some(json!({"name": "my-set", "runnerGroupId": 1})),
        )
        .await;
    assert_eq!(r.status, 409);
    assert!(
        r.json()["typeName"]
            .as_str()
            .expect("t")
            .contains("RunnerScaleSetExistsException")
    );
    // Bad bodies.
    let r = ctx
        .tenant(Method::POST, base, Some(json!({"runnerGroupId": 1})))
        .await;
    assert_eq!(r.status, 400);
    let r = send(
        &ctx.http,
        Method::POST,
        &ctx.t(&format!("{base}?api-version=6.0-preview")),
        Some(&format!("Bearer {}", ctx.admin)),
        None,
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    assert!(r.json()["typeName"].is_string());
    let r = ctx
        .tenant(
            Method::POST,
            base,
            Some(json!({"name": "x", "runnerGroupId": 99})),
        )
        .await;
    assert_eq!(r.status, 404);
    // Get by name, list by group, get by id.
    let r = ctx
        .tenant(
            Method::GET,
            &format!("{base}?runnerGroupId=1&name=my-set"),
            None,
        )
        .await;
    assert_eq!(r.json()["count"], 1);
    assert_eq!(r.json()["value"][0]["id"], id);
    let r = ctx
        .tenant(
            Method::GET,
            &format!("{base}?runnerGroupId=1&name=other"),
            None,
        )
        .await;
    assert_eq!(r.json()["count"], 0);
    ctx.create_scale_set("second", &["linux", "x64"]).await;
    let r = ctx
        .tenant(Method::GET, &format!("{base}?runnerGroupId=1"), None)
        .await;
    assert_eq!(r.json()["count"], 2);
    let r = ctx
        .tenant(Method::GET, &format!("{base}?runnerGroupId=abc"), None)
        .await;
    assert_eq!(r.status, 400);
    let r = ctx.tenant(Method::GET, &format!("{base}/{id}"), None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["name"], "my-set");
    let r = ctx.tenant(Method::GET, &format!("{base}/999"), None).await;
    assert_eq!(r.status, 404);
    let r = ctx
        .tenant(Method::GET, &format!("{base}/notanumber"), None)
        .await;
    assert_eq!(r.status, 400);
    // Update (partial body as the reference sends it).
    let gid = ctx.sim.add_runner_group("other").expect("group");
    let r = ctx.tenant(Method::PATCH, &format!("{base}/{id}"), Some(json!({"runnerGroupId": gid, "RunnerSetting": {}, "createdOn": "0001-01-01T00:00:00Z"}))).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["runnerGroupId"], gid);
    assert_eq!(r.json()["name"], "my-set");
    let r = ctx
        .tenant(
            Method::PATCH,
            &format!("{base}/{id}"),
            Some(json!({"name": "renamed", "labels": [{"name": "gpu"}]})),
        )
        .await;
    assert_eq!(r.json()["name"], "renamed");
    assert_eq!(
        r.json()["labels"],
        json!([{"type": "System", "name": "gpu"}])
    );
    // Delete.
    let r = ctx
        .tenant(Method::DELETE, &format!("{base}/{id}"), None)
        .await;
    assert_eq!(r.status, 204);
    let r = ctx.tenant(Method::GET, &format!("{base}/{id}"), None).await;
    assert_eq!(r.status, 404);
    let r = ctx
        .tenant(Method::DELETE, &format!("{base}/{id}"), None)
        .await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn jit_config_and_runners() {
    let ctx = Ctx::start(fast_cfg()).await;
    let ss = ctx.create_scale_set("jit-set", &[]).await;
    let (rid, jit) = ctx.jit(ss, "runner-1a2b3c4d").await;
    // The encoded format of PROTOCOL.md section 8.
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let map: serde_json::Map<String, Value> =
        serde_json::from_slice(&b64.decode(&jit).expect("b64")).expect("map");
    for key in [".runner", ".credentials", ".credentials_rsaparams"] {
        assert!(map.contains_key(key), "{key}");
    }
    let runner: Value = serde_json::from_slice(
        &b64.decode(map[".runner"].as_str().expect("s"))
            .expect("b64"),
    )
    .expect("json");
    assert_eq!(runner["agentId"], rid);
    assert_eq!(runner["agentName"], "runner-1a2b3c4d");
    assert_eq!(runner["ephemeral"], true);
    assert!(
        runner["serverUrl"]
            .as_str()
            .expect("url")
            .starts_with(&ctx.sim.base_url())
    );
    assert_eq!(runner["workFolder"], "_work");
    let creds: Value = serde_json::from_slice(
        &b64.decode(map[".credentials"].as_str().expect("s"))
            .expect("b64"),
    )
    .expect("json");
    assert_eq!(creds["scheme"], "OAuth");
    let info = scaleset_sim::runner::decode_jit_config(&jit).expect("decode");
    assert_eq!(info.agent_id, rid);
    assert!(!format!("{info:?}").contains(&info.secret));
    // Duplicate name.
    let r = ctx
        .tenant(
            Method::POST,
            &format!("_apis/runtime/runnerscalesets/{ss}/generatejitconfig"),
            Some(json!({"name": "runner-1a2b3c4d", "workFolder": ""})),
        )
        .await;
    assert_eq!(r.status, 409);
    assert!(
        r.json()["typeName"]
            .as_str()
            .expect("t")
            .contains("AgentExistsException")
    );
    let r = ctx
        .tenant(
            Method::POST,
            "_apis/runtime/runnerscalesets/999/generatejitconfig",
            Some(json!({"name": "x", "workFolder": ""})),
        )
        .await;
    assert_eq!(r.status, 404);
    // Get by id / by name.
    let r = ctx
        .tenant(
            Method::GET,
            &format!("_apis/distributedtask/pools/0/agents/{rid}"),
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["name"], "runner-1a2b3c4d");
    assert_eq!(r.json()["runnerScaleSetId"], ss);
    let r = ctx
        .tenant(
            Method::GET,
            "_apis/distributedtask/pools/0/agents/4242",
            None,
        )
        .await;
    assert_eq!(r.status, 404);
    assert!(
        r.json()["typeName"]
            .as_str()
            .expect("t")
            .contains("AgentNotFoundException")
    );
    let r = ctx
        .tenant(
            Method::GET,
            "_apis/distributedtask/pools/0/agents?agentName=runner-1a2b3c4d",
            None,
        )
        .await;
    assert_eq!(r.json()["count"], 1);
    let r = ctx
        .tenant(
            Method::GET,
            "_apis/distributedtask/pools/0/agents?agentName=nope",
            None,
        )
        .await;
    assert_eq!(r.json()["count"], 0);
    // Delete (idle), delete unknown.
    let r = ctx
        .tenant(
            Method::DELETE,
            &format!("_apis/distributedtask/pools/0/agents/{rid}"),
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    let r = ctx
        .tenant(
            Method::DELETE,
            "_apis/distributedtask/pools/0/agents/4242",
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    // Busy runner cannot be deleted.
    let ids = ctx
        .sim
        .enqueue_jobs(scaleset_sim::EnqueueJobs {
            labels: vec!["jit-set".into()],
            duration: std::time::Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .expect("enqueue");
    let s = ctx.create_session(ss).await;
    let msgs = ctx
        .collect(&s, 1, |m| !of_type(m, "JobAssigned").is_empty())
        .await;
    assert_eq!(msgs[0]["runnerRequestId"], ids[0]);
    let (rid, jit) = ctx.jit(ss, "busy-runner").await;
    let task = tokio::spawn(async move { scaleset_sim::runner::run(&jit, fast_runner()).await });
    let (ok, _) = ctx
        .sim
        .wait_until(DEADLINE, |st| {
            st.runners
                .iter()
                .any(|r| r.id == rid && r.job_request_id.is_some())
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
    assert_eq!(r.status, 400);
    assert!(
        r.json()["typeName"]
            .as_str()
            .expect("t")
            .contains("JobStillRunningException")
    );
    task.abort();
}

#[tokio::test]
async fn sessions() {
    let ctx = Ctx::start(fast_cfg()).await;
    let ss = ctx.create_scale_set("sess", &[]).await;
    let s = ctx.create_session(ss).await;
    assert_eq!(s.raw["ownerName"], "test");
    assert_eq!(s.raw["runnerScaleSet"]["id"], ss);
    assert_eq!(s.raw["statistics"]["totalAssignedJobs"], 0);
    assert!(
        s.mq_url.contains("?sessionId="),
        "queue URL carries a query: {}",
        s.mq_url
    );
    uuid::Uuid::parse_str(&s.id).expect("uuid");
    // Second session conflicts.
    let path = format!("_apis/runtime/runnerscalesets/{ss}/sessions");
    let r = ctx
        .tenant(
            Method::POST,
            &path,
            Some(json!({"sessionId": "00000000-0000-0000-0000-000000000000", "ownerName": "b"})),
        )
        .await;
    assert_eq!(r.status, 409);
    let v = r.json();
    assert_eq!(
        v["typeName"],
        "GitHub.Actions.Runtime.WebApi.RunnerScaleSetSessionConflictException, GitHub.Actions.Runtime.WebApi"
    );
    assert_eq!(
        v["message"],
        "The actions runner scaleset sess already has an active session."
    );
    // Unknown scale set.
    let r = ctx
        .tenant(
            Method::POST,
            "_apis/runtime/runnerscalesets/999/sessions",
            Some(json!({"ownerName": "b"})),
        )
        .await;
    assert_eq!(r.status, 404);
    assert!(
        r.json()["typeName"]
            .as_str()
            .expect("t")
            .contains("RunnerScaleSetNotFoundException")
    );
    // Refresh: new token, old one is dead.
    let r = ctx
        .tenant(Method::PATCH, &format!("{path}/{}", s.id), None)
        .await;
    assert_eq!(r.status, 200);
    let s2 = Session::from(r.json(), ss);
    assert_ne!(s2.token, s.token);
    assert_eq!(s2.id, s.id);
    assert_eq!(ctx.poll(&s, 0, 1).await.status, 401);
    assert_eq!(ctx.poll(&s2, 0, 1).await.status, 202);
    // Refresh unknown session: 404 RunnerAdminException.
    let r = ctx
        .tenant(
            Method::PATCH,
            &format!("{path}/{}", uuid::Uuid::new_v4()),
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
    // Delete, delete again (expired).
    let r = ctx
        .tenant(Method::DELETE, &format!("{path}/{}", s.id), None)
        .await;
    assert_eq!(r.status, 204);
    let r = ctx
        .tenant(Method::DELETE, &format!("{path}/{}", s.id), None)
        .await;
    assert_eq!(r.status, 400);
    assert!(
        r.json()["typeName"]
            .as_str()
            .expect("t")
            .contains("RunnerScaleSetSessionExpiredException")
    );
    assert_eq!(
        r.json()["message"],
        format!("The session identifier {} is not valid.", s.id)
    );
    let r = ctx
        .tenant(Method::DELETE, &format!("{path}/not-a-uuid"), None)
        .await;
    assert_eq!(r.status, 400);
    // A new session can be created now.
    ctx.create_session(ss).await;
}

#[tokio::test]
async fn message_queue_basics() {
    let ctx = Ctx::start(fast_cfg()).await;
    let ss = ctx.create_scale_set("mq", &[]).await;
    let s = ctx.create_session(ss).await;
    // Idle -> 202.
    assert_eq!(ctx.poll(&s, 0, 2).await.status, 202);
    // Missing token / wrong token / missing sessionId query / bad capacity header.
    let r = send(&ctx.http, Method::GET, &s.mq_url, None, None).await;
    assert_eq!(r.status, 401);
    let r = send(&ctx.http, Method::GET, &s.mq_url, Some("Bearer nope"), None).await;
    assert_eq!(r.status, 401);
    let (bare, _) = s.mq_url.split_once('?').expect("query");
    let r = send(
        &ctx.http,
        Method::GET,
        bare,
        Some(&format!("Bearer {}", s.token)),
        None,
    )
    .await;
    assert_eq!(r.status, 400);
    let r = ctx
        .http
        .get(&s.mq_url)
        .header("Authorization", format!("Bearer {}", s.token))
        .header("X-ScaleSetMaxCapacity", "-1")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 400);
    let r = ctx
        .http
        .get(format!("{}&lastMessageId=abc", s.mq_url))
        .header("Authorization", format!("Bearer {}", s.token))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 400);
    // A message answers as soon as events exist, with the envelope shape.
    let poll = {
        let s = s.clone();
        let http = ctx.http.clone();
        tokio::spawn(async move {
            http.get(&s.mq_url)
                .header("Authorization", format!("Bearer {}", s.token))
                .header("X-ScaleSetMaxCapacity", "3")
                .send()
                .await
                .expect("send")
        })
    };
    // The poll sets capacity 3; wait for it to register, then enqueue.
    let (ok, _) = ctx
        .sim
        .wait_until(DEADLINE, |st| {
            st.scale_set(ss).is_some_and(|s| s.max_capacity == Some(3))
        })
        .await;
    assert!(ok);
    let ids = ctx
        .sim
        .enqueue_jobs(scaleset_sim::EnqueueJobs {
            labels: vec!["mq".into()],
            ..Default::default()
        })
        .await
        .expect("enqueue");
    let r = poll.await.expect("join");
    let r = if r.status().as_u16() == 202 {
        ctx.poll(&s, 0, 3).await.json()
    } else {
        r.json::<Value>().await.expect("json")
    };
    assert_eq!(r["messageType"], "RunnerScaleSetJobMessages");
    let stats = &r["statistics"];
    for k in [
        "totalAvailableJobs",
        "totalAcquiredJobs",
        "totalAssignedJobs",
        "totalRunningJobs",
        "totalRegisteredRunners",
        "totalBusyRunners",
        "totalIdleRunners",
    ] {
        assert!(stats[k].is_i64(), "{k}");
    }
    assert_eq!(stats["totalAssignedJobs"], 1);
    let body: Vec<Value> =
        serde_json::from_str(r["body"].as_str().expect("string body")).expect("array");
    let m = &body[0];
    assert_eq!(m["messageType"], "JobAssigned");
    assert_eq!(m["runnerRequestId"], ids[0]);
    assert!(m["jobId"].is_string());
    for k in [
        "repositoryName",
        "ownerName",
        "jobWorkflowRef",
        "jobDisplayName",
        "eventName",
        "queueTime",
        "scaleSetAssignTime",
        "runnerAssignTime",
        "finishTime",
    ] {
        assert!(m[k].is_string(), "{k}");
    }
    assert!(m["workflowRunId"].is_i64());
    assert_eq!(m["requestLabels"], json!(["mq"]));
    jiff::Timestamp::from_str_rfc3339(m["queueTime"].as_str().expect("t"));
    // Delete acknowledges; a bad id is a 400; a bad token a 401; like GET it requires the
    // sessionId query (400 without it, 401 for another session's id).
    let id = r["messageId"].as_i64().expect("id");
    let (path, q) = s.mq_url.split_once('?').expect("q");
    for (query, status) in [
        (String::new(), 400),
        (format!("?sessionId={}", uuid_nil()), 401),
    ] {
        let r = send(
            &ctx.http,
            Method::DELETE,
            &format!("{path}/{id}{query}"),
            Some(&format!("Bearer {}", s.token)),
            None,
        )
        .await;
        assert_eq!(r.status, status, "DELETE with {query:?}");
    }
    assert_eq!(ctx.delete_message(&s, id).await, 204);
    let r = send(
        &ctx.http,
        Method::DELETE,
        &format!("{path}/abc?{q}"),
        Some(&format!("Bearer {}", s.token)),
        None,
    )
    .await;
    assert_eq!(r.status, 400);
    let r = send(
        &ctx.http,
        Method::DELETE,
        &format!("{path}/{id}?{q}"),
        Some("Bearer nope"),
        None,
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(ctx.poll(&s, id, 3).await.status, 202);
}

trait Rfc3339 {
    fn from_str_rfc3339(s: &str);
}
impl Rfc3339 for jiff::Timestamp {
    fn from_str_rfc3339(s: &str) {
        s.parse::<jiff::Timestamp>()
            .unwrap_or_else(|e| panic!("{s:?} is not RFC 3339: {e}"));
    }
}

#[tokio::test]
async fn acquire_jobs_endpoint() {
    let ctx = Ctx::start(SimConfig {
        mode: scaleset_sim::AssignmentMode::Ghes,
        ..fast_cfg()
    })
    .await;
    let ss = ctx.create_scale_set("acq", &[]).await;
    let s = ctx.create_session(ss).await;
    let ids = ctx
        .sim
        .enqueue_jobs(scaleset_sim::EnqueueJobs {
            labels: vec!["acq".into()],
            count: 2,
            ..Default::default()
        })
        .await
        .expect("enqueue");
    let msgs = ctx
        .collect(&s, 5, |m| of_type(m, "JobAvailable").len() == 2)
        .await;
    let url = msgs[0]["acquireJobUrl"].as_str().expect("url");
    assert!(url.ends_with(&format!("/runnerscalesets/{ss}/acquirejobs")));
    // Admin token is not accepted for acquire; the queue token is.
    let r = send(
        &ctx.http,
        Method::POST,
        &format!("{url}?api-version=6.0-preview"),
        Some(&format!("Bearer {}", ctx.admin)),
        Some(json!([ids[0]])),
    )
    .await;
    assert_eq!(r.status, 401);
    let r = ctx.acquire(&s, &[ids[0], 9999]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"count": 1, "value": [ids[0]]}));
    let r = ctx.acquire(&s, &[]).await;
    assert_eq!(r.json(), json!({"count": 0, "value": []}));
    let url = ctx.t(&format!("_apis/runtime/runnerscalesets/{ss}/acquirejobs"));
    let r = send(
        &ctx.http,
        Method::POST,
        &url,
        Some(&format!("Bearer {}", s.token)),
        Some(json!({"not": "an array"})),
    )
    .await;
    assert_eq!(r.status, 400);
    // Acquirable jobs (old ARC): the second job is still available.
    let r = ctx
        .tenant(
            Method::GET,
            &format!("_apis/runtime/runnerscalesets/{ss}/acquirablejobs"),
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["value"][0]["runnerRequestId"], ids[1]);
    let st = ctx.sim.state();
    let stats = st.scale_set(ss).expect("ss").statistics;
    assert_eq!(
        (
            stats.total_available_jobs,
            stats.total_acquired_jobs,
            stats.total_assigned_jobs
        ),
        (1, 1, 1)
    );
}

const GROUPS_PATH: &str = "_apis/runtime/runnergroups/?groupName=default&api-version=6.0-preview";

#[tokio::test]
async fn request_log_redacts_authorization() {
    let ctx = Ctx::start(fast_cfg()).await;
    let log = ctx.sim.requests();
    assert!(log.len() >= 2);
    for e in &log {
        if let Some(a) = e.headers.get("authorization") {
            assert!(
                a == "Bearer" || a == "RemoteAuth",
                "only the scheme is logged: {a}"
            );
        }
    }
    let r = send(
        &ctx.http,
        Method::GET,
        &format!("{}/requests", ctx.sim.control_url()),
        None,
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    let v = r.json();
    let first = &v[0];
    for k in ["method", "path", "status", "time", "headers", "class"] {
        assert!(!first[k].is_null(), "{k}");
    }
    assert!(!String::from_utf8_lossy(&r.body).contains(&ctx.admin));
    assert!(!String::from_utf8_lossy(&r.body).contains(&ctx.sim.token()));
    // A credential sent without a scheme (or with an unknown one) is not logged either.
    ctx.sim.clear_requests();
    let pat = ctx.sim.token();
    for auth in [
        pat.clone(),
        format!("Weird {pat}"),
        format!("token {pat}"),
        format!("basic {pat}"),
    ] {
        send(
            &ctx.http,
            Method::GET,
            &ctx.t(GROUPS_PATH),
            Some(&auth),
            None,
        )
        .await;
    }
    let seen: Vec<String> = ctx
        .sim
        .requests()
        .iter()
        .map(|e| e.headers.get("authorization").cloned().unwrap_or_default())
        .collect();
    assert_eq!(seen, ["<redacted>", "<redacted>", "token", "Basic"]);
    let r = send(
        &ctx.http,
        Method::GET,
        &format!("{}/requests", ctx.sim.control_url()),
        None,
        None,
    )
    .await;
    assert!(!String::from_utf8_lossy(&r.body).contains(&pat));
    let r = send(
        &ctx.http,
        Method::DELETE,
        &format!("{}/requests", ctx.sim.control_url()),
        None,
        None,
    )
    .await;
    assert_eq!(r.status, 204);
    assert!(ctx.sim.requests().is_empty());
}

#[tokio::test]
async fn control_api_rejects_bad_input() {
    let sim = Simulator::start(fast_cfg()).await.expect("start");
    let http = client();
    let c = sim.control_url();
    for (path, body) in [
        ("jobs", json!({"labels": "notalist"})),
        ("jobs", json!({"count": -1})),
        ("jobs", json!({"count": 0})),
        ("jobs", json!({"durationSeconds": -5.0})),
        ("jobs", json!({"result": ""})),
        ("jobs", json!({"count": 10_000_000})),
        ("jobs", json!({"bogus": 1})),
        ("faults", json!({"kind": "nope"})),
        ("faults", json!({"kind": "status", "class": "session"})),
        (
            "faults",
            json!({"kind": "status", "class": "session", "status": 42}),
        ),
        (
            "faults",
            json!({"kind": "status", "class": "bogus", "status": 500}),
        ),
        (
            "faults",
            json!({"kind": "deleteScaleSet", "scaleSetId": 77}),
        ),
        (
            "faults",
            json!([{"kind": "expireAdminToken"}, {"kind": "nope"}]),
        ),
    ] {
        let r = send(
            &http,
            Method::POST,
            &format!("{c}/{path}"),
            None,
            Some(body.clone()),
        )
        .await;
        assert_eq!(r.status, 400, "{path} {body}");
        assert!(r.json()["message"].is_string());
    }
    let r = http
        .post(format!("{c}/jobs"))
        .body("{not json")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 400);
    let r = send(
        &http,
        Method::POST,
        &format!("{c}/jobs"),
        None,
        Some(json!({"labels": ["a"], "count": 3, "durationSeconds": 0.5})),
    )
    .await;
    assert_eq!(r.status, 201);
    assert_eq!(r.json()["jobIds"].as_array().expect("ids").len(), 3);
    let r = send(&http, Method::GET, &format!("{c}/state"), None, None).await;
    assert_eq!(r.json()["jobs"].as_array().expect("jobs").len(), 3);
    let r = send(
        &http,
        Method::GET,
        &format!("{}/nowhere", sim.base_url()),
        None,
        None,
    )
    .await;
    assert_eq!(r.status, 404);
    sim.shutdown().await;
}

#[tokio::test]
async fn out_of_range_poll_waits_are_rejected_at_start() {
    for cfg in [
        SimConfig {
            long_poll: Duration::MAX,
            ..fast_cfg()
        },
        SimConfig {
            runner_job_poll: Duration::from_secs(u64::MAX),
            ..fast_cfg()
        },
        SimConfig {
            max_jobs_per_message: 0,
            ..fast_cfg()
        },
    ] {
        let err = Simulator::start(cfg).await.expect_err("rejected");
        assert!(
            matches!(err, scaleset_sim::SimError::InvalidConfig(_)),
            "{err}"
        );
        let text = err.to_string();
        assert!(
            ["long_poll", "runner_job_poll", "max_jobs_per_message"]
                .iter()
                .any(|f| text.contains(f)),
            "names the field: {text}"
        );
    }
}

/// Huge lifetimes and timeouts mean "never": nothing overflows, the timer task survives.
#[tokio::test]
async fn huge_timeouts_and_ttls_mean_never() {
    let ctx = Ctx::start(SimConfig {
        long_poll: scaleset_sim::MAX_POLL_WAIT,
        assignment_timeout: Duration::MAX,
        runner_heartbeat_timeout: Duration::MAX,
        queue_token_ttl: Duration::MAX,
        admin_token_ttl: Duration::MAX,
        installation_token_ttl: Duration::MAX,
        registration_token_ttl: Duration::MAX,
        ..fast_cfg()
    })
    .await;
    let creds = ctx.sim.app_credentials();
    let jwt = app_jwt(
        &creds.client_id,
        now() - 60,
        now() + 480,
        &creds.private_key_pem,
    );
    let url = format!(
        "{}/api/v3/app/installations/{}/access_tokens",
        ctx.sim.base_url(),
        creds.installation_id
    );
    let r = send(
        &ctx.http,
        Method::POST,
        &url,
        Some(&format!("Bearer {jwt}")),
        None,
    )
    .await;
    assert_eq!(r.status, 201);
    let ss = ctx.create_scale_set("huge", &[]).await;
    let s = ctx.create_session(ss).await;
    let id = ctx
        .sim
        .enqueue_jobs(scaleset_sim::EnqueueJobs {
            labels: vec!["huge".into()],
            duration: Duration::from_millis(100),
            ..Default::default()
        })
        .await
        .expect("enqueue")[0];
    ctx.collect(&s, 1, |m| !of_type(m, "JobAssigned").is_empty())
        .await;
    let (_rid, jit) = ctx.jit(ss, "runner-huge").await;
    let outcome = scaleset_sim::runner::run(&jit, fast_runner())
        .await
        .expect("runner");
    assert_eq!(outcome.request_id, id);
    let (ok, st) = ctx
        .sim
        .wait_until(Duration::MAX, |st| {
            st.job(id).is_some_and(|j| j.status == "completed")
        })
        .await;
    assert!(ok);
    assert_eq!(st.reaper_error, None);
}

#[tokio::test]
async fn app_jwt_with_extreme_claims_is_rejected_not_a_crash() {
    let sim = Simulator::start(fast_cfg()).await.expect("start");
    let http = client();
    let creds = sim.app_credentials();
    let url = format!(
        "{}/api/v3/app/installations/{}/access_tokens",
        sim.base_url(),
        creds.installation_id
    );
    for (iat, exp) in [(i64::MIN, now() + 300), (now() - 60, i64::MAX)] {
        let jwt = app_jwt(&creds.client_id, iat, exp, &creds.private_key_pem);
        let r = send(
            &http,
            Method::POST,
            &url,
            Some(&format!("Bearer {jwt}")),
            None,
        )
        .await;
        assert_eq!(r.status, 401, "iat {iat} exp {exp}");
    }
}

#[tokio::test]
async fn job_duration_is_capped() {
    let sim = Simulator::start(fast_cfg()).await.expect("start");
    let http = client();
    let url = format!("{}/jobs", sim.control_url());
    for (body, field) in [
        (json!({"durationSeconds": 1e19}), "durationSeconds"),
        (json!({"durationSeconds": 432_001}), "durationSeconds"),
        (json!({"durationMs": u64::MAX}), "durationMs"),
    ] {
        let r = send(&http, Method::POST, &url, None, Some(body.clone())).await;
        assert_eq!(r.status, 400, "{body}");
        let msg = r.json()["message"].as_str().unwrap_or_default().to_owned();
        assert!(msg.contains(field), "{body}: {msg}");
    }
    let r = send(
        &http,
        Method::POST,
        &url,
        None,
        Some(json!({"durationSeconds": 432_000})),
    )
    .await;
    assert_eq!(r.status, 201);
    let err = sim
        .enqueue_jobs(scaleset_sim::EnqueueJobs {
            duration: Duration::MAX,
            ..Default::default()
        })
        .await
        .expect_err("too long");
    assert!(err.to_string().contains("duration"), "{err}");
}

/// A request whose body never arrives keeps a graceful shutdown waiting; after the grace
/// period the simulator answers it and closes the connection instead of serving on, detached.
#[tokio::test]
async fn shutdown_stops_requests_that_outlive_the_grace_period() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::time::Instant;
    let ctx = Ctx::start(fast_cfg()).await;
    // A consumed latency fault tells when the request reached the handler stack.
    ctx.sim
        .faults()
        .inject(scaleset_sim::Fault::Latency {
            class: scaleset_sim::EndpointClass::Scaleset,
            method: Some("POST".into()),
            delay_ms: 1,
            count: Some(1),
            after: false,
        })
        .expect("inject");
    let mut tcp = tokio::net::TcpStream::connect(ctx.sim.addr())
        .await
        .expect("connect");
    let head = format!(
        "POST /tenant/1/_apis/runtime/runnerscalesets HTTP/1.1\r\nHost: {}\r\n\
         Authorization: Bearer {}\r\nContent-Type: application/json\r\n\
         Content-Length: 100\r\n\r\n{{\"name\":",
        ctx.sim.addr(),
        ctx.admin
    );
    tcp.write_all(head.as_bytes()).await.expect("write");
    let deadline = Instant::now() + DEADLINE;
    while ctx.sim.faults().pending()["requestFaults"]["latency"] != json!([]) {
        assert!(
            Instant::now() < deadline,
            "the request never reached the server"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let Ctx { sim, .. } = ctx;
    tokio::time::timeout(DEADLINE, sim.shutdown_within(Duration::from_millis(50)))
        .await
        .expect("shutdown returns");
    let mut buf = Vec::new();
    tokio::time::timeout(DEADLINE, tcp.read_to_end(&mut buf))
        .await
        .expect("the connection is closed, not left serving")
        .ok();
    let text = String::from_utf8_lossy(&buf);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 503"),
        "{text}"
    );
}

fn uuid_nil() -> &'static str {
    "00000000-0000-0000-0000-000000000000"
}

#[tokio::test]
async fn acquirable_jobs_of_an_unknown_or_idle_scale_set() {
    let ctx = Ctx::start(fast_cfg()).await;
    let r = ctx
        .tenant(
            Method::GET,
            "_apis/runtime/runnerscalesets/999999/acquirablejobs",
            None,
        )
        .await;
    assert_eq!(r.status, 404);
    assert!(
        r.json()["typeName"]
            .as_str()
            .unwrap_or_default()
            .contains("RunnerScaleSetNotFoundException")
    );
    // A scale set with nothing offered answers 204.
    let ss = ctx.create_scale_set("idle-set", &[]).await;
    let r = ctx
        .tenant(
            Method::GET,
            &format!("_apis/runtime/runnerscalesets/{ss}/acquirablejobs"),
            None,
        )
        .await;
    assert_eq!(r.status, 204);
}
