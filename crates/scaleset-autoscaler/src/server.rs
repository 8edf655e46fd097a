//! The HTTP endpoints: `/metrics` (OpenMetrics text), `/healthz` (the process is up) and
//! `/readyz` (every scale set has an open session, and a poll succeeded or is in flight within
//! twice the poll window; a hot standby of a leader-elected daemon is ready while it can read
//! the Lease, and says `standby: not the leader`: see [`StandbyStatus`]).

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

/// Readiness of the scale sets, one slot per configured scale set (not per name: two scale
/// sets may share a name in different runner groups or config URLs).
#[derive(Debug)]
pub struct Readiness {
    window: Duration,
    sets: Mutex<Vec<Slot>>,
    standby: Mutex<Option<StandbyStatus>>,
}

/// How a hot standby (see [`crate::leader`]) is doing, for `/readyz`.
///
/// A standby that can read the Lease is *ready*: it is doing its job (standing by, able to
/// take over), and a standby that never became ready would stall every rolling update of a
/// two-replica Deployment and keep `kubectl rollout status` waiting. `/readyz` names the
/// role and the holder; a standby that cannot read the Lease is not ready.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StandbyStatus {
    /// Another replica holds the Lease.
    Waiting {
        /// The Lease, `namespace/name`.
        lease: String,
        /// Its holder.
        holder: String,
    },
    /// The Lease cannot be read or written (the reason).
    Failing(String),
}

#[derive(Debug)]
struct Slot {
    label: String,
    health: Option<HealthHandle>,
    failed: Option<String>,
    waiting: Option<String>,
}

/// A scale set's place in [`Readiness`], from [`Readiness::add`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadinessSlot(usize);

impl Readiness {
    /// Readiness with a poll window (a poll must have succeeded, or be in flight, within
    /// twice this).
    pub fn new(poll_window: Duration) -> Readiness {
        Readiness {
            window: poll_window,
            sets: Mutex::new(Vec::new()),
            standby: Mutex::new(None),
        }
    }

    /// Declares a scale set, named `label` in the reasons `/readyz` gives (not ready until
    /// its listener is attached).
    pub fn add(&self, label: impl Into<String>) -> ReadinessSlot {
        let mut sets = self.lock();
        sets.push(Slot {
            label: label.into(),
            health: None,
            failed: None,
            waiting: None,
        });
        ReadinessSlot(sets.len() - 1)
    }

    /// Marks a scale set as failed for good (not ready until the process restarts).
    pub fn fail(&self, slot: ReadinessSlot, why: impl Into<String>) {
        if let Some(s) = self.lock().get_mut(slot.0) {
            s.failed = Some(why.into());
        }
    }

    /// Says why a scale set has no listener yet (`None`: no particular reason), for
    /// `/readyz`.
    pub fn waiting(&self, slot: ReadinessSlot, why: Option<String>) {
        if let Some(s) = self.lock().get_mut(slot.0) {
            s.waiting = why;
        }
    }

    /// Attaches the listener of a scale set.
    pub fn attach(&self, slot: ReadinessSlot, health: HealthHandle) {
        if let Some(s) = self.lock().get_mut(slot.0) {
            s.health = Some(health);
        }
    }

    /// Marks this replica a hot standby (`None`: it leads, or there is no election); see
    /// [`StandbyStatus`].
    pub fn standby(&self, status: Option<StandbyStatus>) {
        *self.standby.lock().unwrap_or_else(|e| e.into_inner()) = status;
    }

    /// What `/readyz` adds to `ready`: the standby's role and the holder.
    pub fn note(&self) -> Option<String> {
        match &*self.standby.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(StandbyStatus::Waiting { lease, holder }) => Some(format!(
                "standby: not the leader (lease {lease} held by {holder})"
            )),
            _ => None,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Slot>> {
        self.sets.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `Ok` when ready, else the reasons (see [`actions_scaleset::ListenerHealth::ready_at`]).
    pub fn check(&self) -> std::result::Result<(), Vec<String>> {
        match &*self.standby.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(StandbyStatus::Waiting { .. }) => return Ok(()),
            Some(StandbyStatus::Failing(why)) => return Err(vec![format!("standby: {why}")]),
            None => {}
        }
        let now = jiff::Timestamp::now();
        let limit = self.window.saturating_mul(2);
        let sets = self.lock();
        let mut problems = Vec::new();
        if sets.is_empty() {
            problems.push("no scale sets".to_string());
        }
        for s in sets.iter() {
            let verdict = match (&s.failed, &s.health) {
                (Some(why), _) => Err(why.clone()),
                (None, None) => Err(s
                    .waiting
                    .clone()
                    .unwrap_or_else(|| "no listener yet".to_string())),
                (None, Some(h)) => h.get().ready_at(now, limit),
            };
            if let Err(why) = verdict {
                problems.push(format!("{}: {why}", s.label));
            }
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
        Ok(()) => match s.readiness.note() {
            Some(note) => (StatusCode::OK, format!("ready ({note})\n")),
            None => (StatusCode::OK, "ready\n".to_string()),
        },
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
