//! A bare protocol client: raw HTTP against the simulator, no retries, no bookkeeping, so
//! that what it achieves is the simulator's own capacity on this machine (the bound of any
//! figure measured through the simulator).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use scaleset_sim::Simulator;
use serde_json::{Value, json};

/// An admin connection to one simulator.
#[derive(Clone)]
pub struct Bare {
    /// The HTTP client (no proxy, a pool as large as asked).
    pub http: reqwest::Client,
    /// The tenant URL (`.../_apis/...` is appended).
    pub tenant: String,
    /// `Bearer <admin token>`.
    pub admin: String,
}

/// A message session: its queue URL and access token.
#[derive(Clone, Debug)]
pub struct Session {
    /// The scale set's id.
    pub scale_set_id: i64,
    /// `messageQueueUrl`.
    pub queue_url: String,
    /// `messageQueueAccessToken`.
    pub token: String,
}

/// What the poll loops saw.
#[derive(Default)]
pub struct Counters {
    /// Polls answered 200 (a message).
    pub polls_200: AtomicU64,
    /// Polls answered 202 (nothing).
    pub polls_202: AtomicU64,
    /// Transport failures or unexpected statuses.
    pub errors: AtomicU64,
}

async fn post(http: &reqwest::Client, url: &str, auth: &str, body: Value) -> Result<Value, String> {
    let r = http
        .post(url)
        .header("Authorization", auth)
        .json(&body)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let status = r.status();
    let text = r.text().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("{url}: {status} {text}"));
    }
    serde_json::from_str(&text).map_err(|e| e.to_string())
}

impl Bare {
    /// Registers with `sim` as the library does (registration token, then the admin
    /// connection), with a pool of up to `pool` idle connections.
    pub async fn connect(sim: &Simulator, pool: usize) -> Bare {
        let http = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(pool)
            .timeout(Duration::from_secs(120))
            .build()
            .expect("an HTTP client");
        let api = format!("{}/api/v3", sim.base_url());
        let reg = post(
            &http,
            &format!("{api}/orgs/sim-org/actions/runners/registration-token"),
            &format!("Bearer {}", sim.token()),
            json!({}),
        )
        .await
        .expect("a registration token");
        let conn = post(
            &http,
            &format!("{api}/actions/runner-registration"),
            &format!("RemoteAuth {}", reg["token"].as_str().unwrap_or_default()),
            json!({"url": sim.org_config_url(), "runner_event": "register"}),
        )
        .await
        .expect("an admin connection");
        Bare {
            http,
            tenant: conn["url"].as_str().unwrap_or_default().to_owned(),
            admin: format!("Bearer {}", conn["token"].as_str().unwrap_or_default()),
        }
    }

    /// Creates the scale set `name` (runner group 1, its name as its label); its id.
    pub async fn create_scale_set(&self, name: &str) -> i64 {
        let ss = post(
            &self.http,
            &format!(
                "{}_apis/runtime/runnerscalesets?api-version=6.0-preview",
                self.tenant
            ),
            &self.admin,
            json!({"name": name, "runnerGroupId": 1, "labels": [{"name": name, "type": "System"}]}),
        )
        .await
        .expect("a scale set created");
        ss["id"].as_i64().unwrap_or_default()
    }

    /// Opens a message session on scale set `id`.
    pub async fn create_session(&self, id: i64) -> Session {
        let s = post(
            &self.http,
            &format!(
                "{}_apis/runtime/runnerscalesets/{id}/sessions?api-version=6.0-preview",
                self.tenant
            ),
            &self.admin,
            json!({"ownerName": "bare"}),
        )
        .await
        .expect("a session created");
        Session {
            scale_set_id: id,
            queue_url: s["messageQueueUrl"].as_str().unwrap_or_default().to_owned(),
            token: s["messageQueueAccessToken"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        }
    }

    /// Creates scale sets named `names` with `concurrency` requests in flight; their ids in
    /// the order of `names`.
    pub async fn create_scale_sets(&self, names: &[String], concurrency: usize) -> Vec<i64> {
        futures::stream::iter(names.iter())
            .map(|n| self.create_scale_set(n))
            .buffered(concurrency)
            .collect()
            .await
    }

    /// Creates scale sets named `names` and a session on each, `concurrency` at a time.
    pub async fn create_with_sessions(&self, names: &[String], concurrency: usize) -> Vec<Session> {
        futures::stream::iter(names.iter())
            .map(|n| async move {
                let id = self.create_scale_set(n).await;
                self.create_session(id).await
            })
            .buffer_unordered(concurrency)
            .collect()
            .await
    }

    /// Long-polls `session` until `stop`, acknowledging (DELETE) every message.
    pub async fn poll_loop(
        &self,
        session: Session,
        counters: Arc<Counters>,
        stop: Arc<AtomicBool>,
    ) {
        let mut last = 0i64;
        let auth = format!("Bearer {}", session.token);
        while !stop.load(Ordering::Relaxed) {
            let url = if last > 0 {
                format!("{}&lastMessageId={last}", session.queue_url)
            } else {
                session.queue_url.clone()
            };
            let r = match self
                .http
                .get(&url)
                .header("Authorization", &auth)
                .header("X-ScaleSetMaxCapacity", "20")
                .send()
                .await
            {
                Ok(r) => r,
                Err(_) => {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            match r.status().as_u16() {
                202 => {
                    counters.polls_202.fetch_add(1, Ordering::Relaxed);
                }
                200 => {
                    counters.polls_200.fetch_add(1, Ordering::Relaxed);
                    let Ok(env) = r.json::<Value>().await else {
                        counters.errors.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    let id = env["messageId"].as_i64().unwrap_or(0);
                    last = id;
                    let (path, q) = session
                        .queue_url
                        .split_once('?')
                        .unwrap_or((&session.queue_url, ""));
                    let del = self
                        .http
                        .delete(format!("{path}/{id}?{q}"))
                        .header("Authorization", &auth)
                        .send()
                        .await;
                    if !matches!(del, Ok(ref d) if d.status().as_u16() == 204) {
                        counters.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                _ => {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}
