//! Load harness (harness = false): 1,000 scale sets each with a session holding a long poll,
//! then 10,000 jobs assigned and acknowledged through those polls, in one process.
//!
//! Run: `cargo bench -p scaleset-sim --bench sim_load`. Bounded: fails after 180 s.
//! Environment: `SIM_SCALE_SETS` (default 1000), `SIM_JOBS` (default 10000).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use scaleset_sim::{EnqueueJobs, SimConfig, Simulator};
use serde_json::{Value, json};
use tokio::time::Instant;

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Default)]
struct Counters {
    assigned: AtomicU64,
    polls_200: AtomicU64,
    polls_202: AtomicU64,
    errors: AtomicU64,
}

async fn post(http: &reqwest::Client, url: &str, auth: &str, body: Value) -> Result<Value, String> {
    let r = http
        .post(url)
        .header("Authorization", auth)
        .json(&body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = r.status();
    let text = r.text().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("{url}: {status} {text}"));
    }
    serde_json::from_str(&text).map_err(|e| e.to_string())
}

async fn listener(
    http: reqwest::Client,
    mq_url: String,
    token: String,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
) {
    let mut last = 0i64;
    while !stop.load(Ordering::Relaxed) {
        let url = if last > 0 {
            format!("{mq_url}&lastMessageId={last}")
        } else {
            mq_url.clone()
        };
        let resp = http
            .get(&url)
            .header("Authorization", format!("Bearer {token}"))
            .header("X-ScaleSetMaxCapacity", "20")
            .send()
            .await;
        let r = match resp {
            Ok(r) => r,
            Err(_) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
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
                let body: Vec<Value> =
                    serde_json::from_str(env["body"].as_str().unwrap_or("[]")).unwrap_or_default();
                let n = body
                    .iter()
                    .filter(|m| m["messageType"] == "JobAssigned")
                    .count();
                counters.assigned.fetch_add(n as u64, Ordering::Relaxed);
                last = id;
                let (path, q) = mq_url.split_once('?').unwrap_or((&mq_url, ""));
                let del = http
                    .delete(format!("{path}/{id}?{q}"))
                    .header("Authorization", format!("Bearer {token}"))
                    .send()
                    .await;
                if !matches!(del, Ok(ref d) if d.status().as_u16() == 204) {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[tokio::main]
async fn main() {
    let n_sets = env_num("SIM_SCALE_SETS", 1000);
    let n_jobs = env_num("SIM_JOBS", 10_000);
    let overall = Instant::now() + Duration::from_secs(180);
    let sim = Simulator::start(SimConfig {
        long_poll: Duration::from_secs(20),
        request_log_capacity: 1000,
        ..SimConfig::default()
    })
    .await
    .expect("start simulator");
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(4 * n_sets)
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client");
    let api = format!("{}/api/v3", sim.base_url());
    let reg = post(
        &http,
        &format!("{api}/orgs/sim-org/actions/runners/registration-token"),
        &format!("Bearer {}", sim.token()),
        json!({}),
    )
    .await
    .expect("registration token");
    let conn = post(
        &http,
        &format!("{api}/actions/runner-registration"),
        &format!("RemoteAuth {}", reg["token"].as_str().unwrap_or_default()),
        json!({"url": sim.org_config_url(), "runner_event": "register"}),
    )
    .await
    .expect("admin connection");
    let tenant = conn["url"].as_str().unwrap_or_default().to_owned();
    let admin = format!("Bearer {}", conn["token"].as_str().unwrap_or_default());

    // Setup: scale sets and sessions, 32 requests in flight.
    let t0 = Instant::now();
    let sessions: Vec<(String, String)> = futures::stream::iter(0..n_sets)
        .map(|i| {
            let (http, tenant, admin) = (http.clone(), tenant.clone(), admin.clone());
            async move {
                let ss = post(&http, &format!("{tenant}_apis/runtime/runnerscalesets?api-version=6.0-preview"), &admin, json!({"name": format!("set-{i}"), "runnerGroupId": 1}))
                    .await
                    .expect("create scale set");
                let id = ss["id"].as_i64().unwrap_or_default();
                let s = post(&http, &format!("{tenant}_apis/runtime/runnerscalesets/{id}/sessions?api-version=6.0-preview"), &admin, json!({"ownerName": "bench"}))
                    .await
                    .expect("create session");
                (
                    s["messageQueueUrl"].as_str().unwrap_or_default().to_owned(),
                    s["messageQueueAccessToken"].as_str().unwrap_or_default().to_owned(),
                )
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let setup = t0.elapsed();

    let counters = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let t1 = Instant::now();
    let tasks: Vec<_> = sessions
        .into_iter()
        .map(|(url, tok)| {
            tokio::spawn(listener(
                http.clone(),
                url,
                tok,
                counters.clone(),
                stop.clone(),
            ))
        })
        .collect();
    while sim.in_flight_polls() < n_sets {
        assert!(
            Instant::now() < overall,
            "timed out waiting for {n_sets} concurrent polls (have {})",
            sim.in_flight_polls()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all_held = t1.elapsed();

    let t2 = Instant::now();
    let per_set = n_jobs / n_sets.max(1);
    for i in 0..n_sets {
        sim.enqueue_jobs(EnqueueJobs {
            labels: vec![format!("set-{i}")],
            count: per_set as u32,
            ..Default::default()
        })
        .await
        .expect("enqueue");
    }
    let enqueue = t2.elapsed();
    let total = (per_set * n_sets) as u64;
    while counters.assigned.load(Ordering::Relaxed) < total {
        assert!(
            Instant::now() < overall,
            "timed out: {} of {total} assignments delivered",
            counters.assigned.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let delivered = t2.elapsed();
    // Polls are held again once everything is acknowledged.
    while sim.in_flight_polls() < n_sets {
        assert!(Instant::now() < overall, "polls not re-established");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let st = sim.state();
    let assigned: i64 = st
        .scale_sets
        .iter()
        .map(|s| s.statistics.total_assigned_jobs)
        .sum();
    let unacked: usize = st.scale_sets.iter().map(|s| s.unacked_messages.len()).sum();
    stop.store(true, Ordering::Relaxed);
    let t3 = Instant::now();
    sim.shutdown().await;
    let shutdown = t3.elapsed();
    for t in tasks {
        let _ = t.await;
    }
    let errors = counters.errors.load(Ordering::Relaxed);
    println!("scale sets + sessions created:      {n_sets} in {setup:.2?}");
    println!("concurrent long polls held:         {n_sets} (all held after {all_held:.2?})");
    println!("jobs enqueued:                      {total} in {enqueue:.2?}");
    println!(
        "JobAssigned delivered + acked:      {} in {delivered:.2?} ({:.0} jobs/s)",
        counters.assigned.load(Ordering::Relaxed),
        total as f64 / delivered.as_secs_f64()
    );
    println!(
        "poll answers 200 / 202:             {} / {}",
        counters.polls_200.load(Ordering::Relaxed),
        counters.polls_202.load(Ordering::Relaxed)
    );
    println!("statistics totalAssignedJobs sum:   {assigned}; unacked messages: {unacked}");
    println!("graceful shutdown with polls held:  {shutdown:.2?}");
    println!("errors:                             {errors}");
    assert_eq!(errors, 0, "errors during the run");
    assert_eq!(assigned as u64, total);
}
