//! The HTTP endpoints: `/metrics` (OpenMetrics text), `/healthz` (the process is up) and
//! `/readyz` (every scale set has an open session and polled successfully within twice the
//! poll window).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actions_scaleset::HealthHandle;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};

/// Readiness of the scale sets.
#[derive(Debug)]
pub struct Readiness {
    window: Duration,
    sets: Mutex<Vec<(String, Option<HealthHandle>)>>,
    failed: Mutex<Vec<(String, String)>>,
}

impl Readiness {
    /// Readiness with a poll window (a poll must have succeeded within twice this).
    pub fn new(poll_window: Duration) -> Readiness {
        Readiness {
            window: poll_window,
            sets: Mutex::new(Vec::new()),
            failed: Mutex::new(Vec::new()),
        }
    }

    /// Marks scale set `name` as failed for good (not ready until the process restarts).
    pub fn fail(&self, name: &str, why: impl Into<String>) {
        self.failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((name.to_string(), why.into()));
    }

    /// Declares a scale set (not ready until its listener runs).
    pub fn add(&self, name: &str) {
        self.lock().push((name.to_string(), None));
    }

    /// Attaches the listener of scale set `name`.
    pub fn attach(&self, name: &str, health: HealthHandle) {
        let mut sets = self.lock();
        match sets.iter_mut().find(|(n, _)| n == name) {
            Some(entry) => entry.1 = Some(health),
            None => sets.push((name.to_string(), Some(health))),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(String, Option<HealthHandle>)>> {
        self.sets.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `Ok` when ready, else the reasons.
    pub fn check(&self) -> std::result::Result<(), Vec<String>> {
        let now = jiff::Timestamp::now();
        let limit =
            jiff::SignedDuration::try_from(self.window * 2).unwrap_or(jiff::SignedDuration::MAX);
        let mut problems = Vec::new();
        let sets = self.lock();
        if sets.is_empty() {
            problems.push("no scale sets".to_string());
        }
        for (name, health) in sets.iter() {
            let Some(h) = health.as_ref().map(HealthHandle::get) else {
                problems.push(format!("{name}: no listener yet"));
                continue;
            };
            if !h.running {
                problems.push(format!("{name}: listener not running"));
            } else if h.session_id.is_none() {
                problems.push(format!("{name}: no session"));
            } else {
                match h.last_successful_poll {
                    None => problems.push(format!("{name}: no successful poll yet")),
                    Some(t) if now.duration_since(t) > limit => {
                        problems.push(format!("{name}: last successful poll too old"))
                    }
                    Some(_) => {}
                }
            }
        }
        drop(sets);
        for (name, why) in self.failed.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            problems.push(format!("{name}: {why}"));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

#[derive(Clone)]
struct AppState {
    registry: Arc<Registry>,
    readiness: Arc<Readiness>,
}

/// The router with `/metrics`, `/healthz` and `/readyz`.
pub fn router(registry: Arc<Registry>, readiness: Arc<Readiness>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(AppState {
            registry,
            readiness,
        })
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &s.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n").into_response(),
    }
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    match s.readiness.check() {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(p) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{}\n", p.join("\n")),
        ),
    }
}

/// Binds `addr` and serves `router` until `shutdown` fires. Returns the bound address and
/// the server task.
///
/// # Errors
/// [`Error::Server`] when the address cannot be bound.
pub async fn serve(
    addr: &str,
    router: Router,
    shutdown: CancellationToken,
) -> Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    let err = |source| Error::Server {
        addr: addr.to_string(),
        source,
    };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(err)?;
    let bound = listener.local_addr().map_err(err)?;
    let task = tokio::spawn(async move {
        let r = axum::serve(listener, router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "metrics server stopped with an error");
        }
    });
    Ok((bound, task))
}
