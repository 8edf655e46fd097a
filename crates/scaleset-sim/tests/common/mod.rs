//! Shared helpers for the simulator's integration tests: a raw reqwest client with
//! hand-written JSON (no library crate of ours).
#![allow(dead_code)]

use std::time::Duration;

use reqwest::Method;
use scaleset_sim::{SimConfig, Simulator};
use serde_json::{Value, json};
use tokio::time::Instant;

/// A response: status, headers, raw body.
pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }
}

pub struct Ctx {
    pub sim: Simulator,
    pub http: reqwest::Client,
    pub tenant: String,
    pub admin: String,
}

pub fn fast_cfg() -> SimConfig {
    SimConfig {
        long_poll: Duration::from_millis(300),
        runner_job_poll: Duration::from_millis(500),
        ..SimConfig::default()
    }
}

pub const DEADLINE: Duration = Duration::from_secs(15);

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

pub async fn send(
    http: &reqwest::Client,
    method: Method,
    url: &str,
    auth: Option<&str>,
    body: Option<Value>,
) -> Resp {
    let mut req = http
        .request(method, url)
        .header("Content-Type", "application/json");
    if let Some(a) = auth {
        req = req.header("Authorization", a);
    }
    if let Some(b) = body {
        req = req.body(serde_json::to_vec(&b).expect("json"));
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("request to {url} failed: {e}"));
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.bytes().await.expect("body").to_vec();
    Resp {
        status,
        headers,
        body,
    }
}

/// PAT -> registration token -> runner-registration: (tenant URL, admin token).
pub async fn admin_connection(http: &reqwest::Client, sim: &Simulator) -> (String, String) {
    let api = format!("{}/api/v3", sim.base_url());
    let r = send(
        http,
        Method::POST,
        &format!("{api}/repos/sim-org/sim-repo/actions/runners/registration-token"),
        Some(&format!("Bearer {}", sim.token())),
        None,
    )
    .await;
    assert_eq!(r.status, 201, "registration token");
    let reg = r.json()["token"].as_str().expect("token").to_owned();
    let r = send(
        http,
        Method::POST,
        &format!("{api}/actions/runner-registration"),
        Some(&format!("RemoteAuth {reg}")),
        Some(json!({"url": sim.config_url(), "runner_event": "register"})),
    )
    .await;
    assert!(
        (200..300).contains(&r.status),
        "runner-registration {}",
        r.status
    );
    let v = r.json();
    (
        v["url"].as_str().expect("url").to_owned(),
        v["token"].as_str().expect("token").to_owned(),
    )
}

impl Ctx {
    pub async fn start(cfg: SimConfig) -> Ctx {
        let sim = Simulator::start(cfg).await.expect("start");
        let http = client();
        let (tenant, admin) = admin_connection(&http, &sim).await;
        Ctx {
            sim,
            http,
            tenant,
            admin,
        }
    }

    pub fn t(&self, path: &str) -> String {
        format!("{}{}", self.tenant, path.trim_start_matches('/'))
    }

    pub async fn tenant(&self, method: Method, path: &str, body: Option<Value>) -> Resp {
        let url = self.t(path);
        let sep = if url.contains('?') { '&' } else { '?' };
        let url = format!("{url}{sep}api-version=6.0-preview");
        send(
            &self.http,
            method,
            &url,
            Some(&format!("Bearer {}", self.admin)),
            body,
        )
        .await
    }

    pub async fn create_scale_set(&self, name: &str, labels: &[&str]) -> i64 {
        let labels: Vec<Value> = labels
            .iter()
            .map(|l| json!({"name": l, "type": "System"}))
            .collect();
        let r = self
            .tenant(
                Method::POST,
                "_apis/runtime/runnerscalesets",
                Some(json!({"name": name, "runnerGroupId": 1, "labels": labels,
                    "RunnerSetting": {"disableUpdate": true}, "createdOn": "0001-01-01T00:00:00Z"})),
            )
            .await;
        assert_eq!(
            r.status,
            200,
            "create scale set: {}",
            String::from_utf8_lossy(&r.body)
        );
        r.json()["id"].as_i64().expect("id")
    }

    pub async fn create_session(&self, ss: i64) -> Session {
        let r = self
            .tenant(
                Method::POST,
                &format!("_apis/runtime/runnerscalesets/{ss}/sessions"),
                Some(json!({"sessionId": "00000000-0000-0000-0000-000000000000", "ownerName": "test"})),
            )
            .await;
        assert_eq!(
            r.status,
            200,
            "create session: {}",
            String::from_utf8_lossy(&r.body)
        );
        Session::from(r.json(), ss)
    }

    pub async fn jit(&self, ss: i64, name: &str) -> (i64, String) {
        let r = self
            .tenant(
                Method::POST,
                &format!("_apis/runtime/runnerscalesets/{ss}/generatejitconfig"),
                Some(json!({"name": name, "workFolder": ""})),
            )
            .await;
        assert_eq!(r.status, 200, "jit: {}", String::from_utf8_lossy(&r.body));
        let v = r.json();
        (
            v["runner"]["id"].as_i64().expect("id"),
            v["encodedJITConfig"].as_str().expect("jit").to_owned(),
        )
    }

    pub async fn poll(&self, s: &Session, last: i64, cap: u32) -> Resp {
        let mut url = s.mq_url.clone();
        if last > 0 {
            url = format!("{url}&lastMessageId={last}");
        }
        let r = self
            .http
            .get(&url)
            .header("Authorization", format!("Bearer {}", s.token))
            .header("Accept", "application/json; api-version=6.0-preview")
            .header("X-ScaleSetMaxCapacity", cap.to_string())
            .send()
            .await
            .expect("poll");
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        Resp {
            status,
            headers,
            body: r.bytes().await.expect("body").to_vec(),
        }
    }

    pub async fn delete_message(&self, s: &Session, id: i64) -> u16 {
        let (path, query) = s.mq_url.split_once('?').expect("mq url has a query");
        let url = format!("{path}/{id}?{query}");
        send(
            &self.http,
            Method::DELETE,
            &url,
            Some(&format!("Bearer {}", s.token)),
            None,
        )
        .await
        .status
    }

    pub async fn acquire(&self, s: &Session, ids: &[i64]) -> Resp {
        let url = self.t(&format!(
            "_apis/runtime/runnerscalesets/{}/acquirejobs?api-version=6.0-preview",
            s.ss
        ));
        send(
            &self.http,
            Method::POST,
            &url,
            Some(&format!("Bearer {}", s.token)),
            Some(json!(ids)),
        )
        .await
    }

    /// Poll (and acknowledge) until `want` job messages have been collected or the deadline.
    pub async fn collect(
        &self,
        s: &Session,
        cap: u32,
        want: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + DEADLINE;
        let mut out = Vec::new();
        let mut last = 0;
        while !want(&out) {
            assert!(
                Instant::now() < deadline,
                "deadline waiting for messages; got {out:?}"
            );
            let r = self.poll(s, last, cap).await;
            match r.status {
                202 => continue,
                200 => {
                    let env = r.json();
                    let id = env["messageId"].as_i64().expect("messageId");
                    let body: Vec<Value> =
                        serde_json::from_str(env["body"].as_str().expect("body string"))
                            .expect("body array");
                    out.extend(body);
                    last = id;
                    assert_eq!(self.delete_message(s, id).await, 204);
                }
                other => panic!(
                    "poll answered {other}: {}",
                    String::from_utf8_lossy(&r.body)
                ),
            }
        }
        out
    }
}

pub fn of_type<'a>(msgs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    msgs.iter().filter(|m| m["messageType"] == kind).collect()
}

#[derive(Clone, Debug)]
pub struct Session {
    pub ss: i64,
    pub id: String,
    pub token: String,
    pub mq_url: String,
    pub raw: Value,
}

impl Session {
    pub fn from(v: Value, ss: i64) -> Session {
        Session {
            ss,
            id: v["sessionId"].as_str().expect("sessionId").to_owned(),
            token: v["messageQueueAccessToken"]
                .as_str()
                .expect("token")
                .to_owned(),
            mq_url: v["messageQueueUrl"].as_str().expect("url").to_owned(),
            raw: v,
        }
    }
}

pub fn fast_runner() -> scaleset_sim::runner::RunnerOptions {
    scaleset_sim::runner::RunnerOptions {
        heartbeat_interval: Duration::from_millis(50),
        job_poll: Duration::from_millis(500),
        request_timeout: Duration::from_secs(10),
        max_wait_for_job: Some(DEADLINE),
    }
}
