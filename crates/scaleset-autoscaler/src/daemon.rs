//! Runs several scale sets in one process: for each, get-or-create the scale set (and
//! reconcile its labels), clean up what a previous run left, start the engine, open the
//! message session (waiting as a hot standby while another instance holds it), run the
//! listener, and on cancellation apply the shutdown policy. Scale sets with the same config
//! URL share one [`Client`].

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use actions_scaleset::{
    Client, ConflictPolicy, DEFAULT_RUNNER_GROUP, DEFAULT_RUNNER_GROUP_ID, Label, Listener,
    ListenerConfig, RunnerScaleSet, RunnerScaleSetUpdate, RunnerSetting,
};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ProvisionerKind, ScaleSetConfig, ShutdownPolicy};
use crate::engine::{Engine, EngineSettings};
use crate::error::{Error, Result};
use crate::metrics::{Metrics, ScaleSetLabels, ScaleSetMetrics};
use crate::provisioner::process::{ProcessConfig, ProcessProvisioner};
use crate::server::{self, Readiness};

/// Gets or creates a scale set by name in its runner group and reconciles its labels.
///
/// # Errors
/// When the runner group does not exist or a call fails.
pub async fn get_or_create_scale_set(
    client: &Client,
    cfg: &ScaleSetConfig,
) -> Result<RunnerScaleSet> {
    let group_id = if cfg.runner_group.eq_ignore_ascii_case(DEFAULT_RUNNER_GROUP) {
        DEFAULT_RUNNER_GROUP_ID
    } else {
        client.get_runner_group_by_name(&cfg.runner_group).await?.id
    };
    let wanted: BTreeSet<String> = cfg.effective_labels().into_iter().collect();
    let labels: Vec<Label> = wanted.iter().map(Label::system).collect();
    let got = match client.get_runner_scale_set(group_id, &cfg.name).await? {
        Some(existing) => {
            let have: BTreeSet<String> = existing.labels.iter().map(|l| l.name.clone()).collect();
            if have == wanted {
                tracing::info!(scale_set = %cfg.name, id = existing.id, "adopted the existing scale set");
                existing
            } else {
                tracing::info!(scale_set = %cfg.name, id = existing.id, ?have, ?wanted, "updating the scale set's labels");
                client
                    .update_runner_scale_set(
                        existing.id,
                        &RunnerScaleSetUpdate {
                            labels: Some(labels),
                            ..Default::default()
                        },
                    )
                    .await?
            }
        }
        None => {
            let created = client
                .create_runner_scale_set(&RunnerScaleSet {
                    name: cfg.name.clone(),
                    runner_group_id: group_id,
                    labels,
                    runner_setting: RunnerSetting {
                        disable_update: true,
                    },
                    ..Default::default()
                })
                .await?;
            tracing::info!(scale_set = %cfg.name, id = created.id, "created the scale set");
            created
        }
    };
    let read_back: BTreeSet<String> = got.labels.iter().map(|l| l.name.clone()).collect();
    if read_back != wanted {
        tracing::warn!(scale_set = %cfg.name, asked = ?wanted, got = ?read_back, "the service kept different labels than asked for (GHES without custom labels?)");
    }
    Ok(got)
}

/// Runs every scale set of `config` until `shutdown` fires (then applies each one's shutdown
/// policy) or one fails. `make_client` builds the client of a config URL (called once per
/// distinct URL).
///
/// # Errors
/// The first scale set failure (a bad runner group, refused credentials, ...).
pub async fn run(
    config: Config,
    make_client: impl Fn(&str) -> Result<Client>,
    shutdown: CancellationToken,
) -> Result<()> {
    config.validate()?;
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    let readiness = Arc::new(Readiness::new(Duration::from_secs(
        config.metrics.poll_window_secs,
    )));
    let mut clients: HashMap<String, Client> = HashMap::new();
    let mut sets = Vec::new();
    for (i, s) in config.scale_sets.iter().enumerate() {
        let url = config
            .url_of(i)
            .ok_or_else(|| Error::config(format!("scale_set[{i}].url"), "missing"))?
            .to_string();
        let client = match clients.get(&url) {
            Some(c) => c.clone(),
            None => {
                let c = make_client(&url)?;
                clients.insert(url.clone(), c.clone());
                c
            }
        };
        readiness.add(&s.name);
        sets.push((s.clone(), client));
    }
    let server_stop = CancellationToken::new();
    let server_task = match &config.metrics.addr {
        Some(addr) => {
            let router = server::router(Arc::new(registry), readiness.clone());
            let (bound, task) = server::serve(addr, router, server_stop.clone()).await?;
            tracing::info!(addr = %bound, "serving /metrics, /healthz and /readyz");
            Some(task)
        }
        None => None,
    };
    let mut tasks = tokio::task::JoinSet::new();
    for (cfg, client) in sets {
        let labels = ScaleSetLabels::new(&cfg.name, client.config());
        let m = metrics.scale_set(labels);
        let readiness = readiness.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let name = cfg.name.clone();
            let r = run_scale_set(cfg, client, m, readiness, shutdown.clone()).await;
            if let Err(e) = &r {
                tracing::error!(scale_set = %name, error = %e, "the scale set stopped");
            }
            r
        });
    }
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                // One scale set failed: stop the others gracefully too.
                shutdown.cancel();
                first_error.get_or_insert(e);
            }
            Err(e) => {
                shutdown.cancel();
                first_error.get_or_insert(Error::config(
                    "internal",
                    format!("a scale set task panicked: {e}"),
                ));
            }
        }
    }
    server_stop.cancel();
    if let Some(t) = server_task {
        let _ = t.await;
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Runs one scale set until `shutdown` fires; see the [module docs](self).
///
/// # Errors
/// When the scale set cannot be set up or its listener fails for good.
pub async fn run_scale_set(
    cfg: ScaleSetConfig,
    client: Client,
    metrics: ScaleSetMetrics,
    readiness: Arc<Readiness>,
    shutdown: CancellationToken,
) -> Result<()> {
    let set = get_or_create_scale_set(&client, &cfg).await?;
    let provisioner = match cfg.provisioner {
        ProvisionerKind::Process => {
            let command = cfg
                .command
                .clone()
                .ok_or_else(|| Error::config("command", "required by the process provisioner"))?;
            let mut pc = ProcessConfig::new(command, cfg.args.clone(), cfg.effective_workdir());
            pc.stop_timeout = Duration::from_secs(10);
            ProcessProvisioner::new(pc)?
        }
    };
    let settings = EngineSettings::from_config(set.id, &cfg);
    let engine = Engine::new(settings, client.clone(), provisioner, metrics.clone());
    match engine.recover_orphans().await {
        Ok((0, 0)) => {}
        Ok((removed, adopted)) => {
            tracing::info!(scale_set = %cfg.name, removed, adopted, "cleaned up after a previous run")
        }
        Err(e) => {
            tracing::warn!(scale_set = %cfg.name, error = %e, "could not look for leftover runners")
        }
    }
    engine.spawn();
    tracing::info!(scale_set = %cfg.name, id = set.id, "opening the message session; if another instance holds it, this one waits as a hot standby");
    let session = match client
        .create_message_session_client_waiting(set.id, None, ConflictPolicy::Wait(None), &shutdown)
        .await
    {
        Ok(s) => Some(s),
        Err(actions_scaleset::Error::Cancelled) => None,
        Err(e) => {
            engine.shutdown(cfg.shutdown, cfg.drain_timeout()).await;
            return Err(e.into());
        }
    };
    let mut outcome = Ok(());
    if let Some(session) = session {
        let listener = Listener::new(session, ListenerConfig::new(set.id, cfg.max_runners))?
            .with_metrics(Arc::new(metrics.clone()));
        readiness.attach(&cfg.name, listener.health_handle());
        tracing::info!(scale_set = %cfg.name, id = set.id, min = cfg.min_runners, max = cfg.max_runners, "listening");
        outcome = listener.run(&engine, &shutdown).await.map_err(Error::from);
    }
    let left = engine.shutdown(cfg.shutdown, cfg.drain_timeout()).await;
    if !left.is_empty() {
        tracing::info!(scale_set = %cfg.name, runners = ?left, "busy runners keep running and finish their jobs");
    }
    if cfg.shutdown == ShutdownPolicy::Delete {
        match client.delete_runner_scale_set(set.id).await {
            Ok(()) => tracing::info!(scale_set = %cfg.name, id = set.id, "deleted the scale set"),
            Err(e) => {
                tracing::warn!(scale_set = %cfg.name, error = %e, "could not delete the scale set")
            }
        }
    }
    outcome
}
