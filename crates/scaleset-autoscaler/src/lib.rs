//! An autoscaler for GitHub Actions **runner scale sets**, built on [`actions_scaleset`].
//!
//! * [`engine`]: per-scale-set runner bookkeeping, the scaling policy and a reconcile task
//!   (implements [`actions_scaleset::Scaler`]).
//! * [`provisioner`]: the [`Provisioner`](provisioner::Provisioner) trait, the
//!   [`process`](provisioner::process) provisioner and an in-memory
//!   [`fake`](provisioner::fake) for tests.
//! * [`config`]: the TOML configuration, validated up front.
//! * [`metrics`] and [`server`]: Prometheus metrics with ARC's names, `/metrics`,
//!   `/healthz`, `/readyz`.
//! * [`leader`]: a hot standby through a Kubernetes Lease (feature `kubernetes`).
//! * [`daemon`]: runs several scale sets in one process (get-or-create, orphan clean-up,
//!   listener, engine, shutdown policy).

pub mod config;
pub mod daemon;
pub mod engine;
pub mod error;
pub mod leader;
pub mod limits;
pub mod metrics;
pub mod provisioner;
pub mod server;

pub use config::{Config, ScaleSetConfig, ShutdownPolicy};
pub use engine::{Engine, EngineSettings, Phase, Snapshot};
pub use error::{Error, ProvisionError, Result};
pub use metrics::{Metrics, ScaleSetMetrics};
