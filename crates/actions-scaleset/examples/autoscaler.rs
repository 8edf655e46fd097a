//! A small autoscaler without a provisioner: it keeps `min(max, assigned jobs)` JIT runner
//! registrations and prints each config's runner name where a real one would start a runner
//! (a process, a container, a VM) with it. Runners are ephemeral: a completed job frees a slot.
//!
//! ```text
//! SCALESET_URL=https://github.com/my-org SCALESET_TOKEN=ghp_... cargo run --example autoscaler
//! ```

use std::collections::HashSet;
use std::sync::Mutex;

use actions_scaleset::listener::BoxError;
use actions_scaleset::{
    CancellationToken, Client, Credentials, DEFAULT_RUNNER_GROUP_ID, JitRunnerSetting,
    JobCompleted, JobStarted, Listener, ListenerConfig, RunnerScaleSet, ScaleSetId, Scaler,
};

const MAX_RUNNERS: u32 = 5;

struct Autoscaler {
    client: Client,
    scale_set_id: i64,
    /// Names of the runners registered and not yet finished.
    runners: Mutex<HashSet<String>>,
}

impl Autoscaler {
    fn active(&self) -> i64 {
        self.runners.lock().map(|r| r.len() as i64).unwrap_or(0)
    }
}

impl Scaler for Autoscaler {
    async fn handle_desired_runner_count(&self, count: i64) -> Result<i64, BoxError> {
        let target = count.min(i64::from(MAX_RUNNERS));
        while self.active() < target {
            let name = format!("example-{:08x}", rand_suffix());
            let jit = self
                .client
                .generate_jit_runner_config(
                    ScaleSetId::new(self.scale_set_id),
                    &JitRunnerSetting {
                        name: name.clone(),
                        work_folder: String::new(),
                    },
                )
                .await?;
            // Start a runner here with jit.encoded_jit_config.expose_secret() (never log it).
            println!("would start runner {} (id {})", name, jit.runner.id);
            self.runners.lock().map_err(|_| "poisoned")?.insert(name);
        }
        Ok(self.active())
    }

    async fn handle_job_started(&self, job: &JobStarted) -> Result<(), BoxError> {
        println!("{} took job {}", job.runner_name, job.base.job_id);
        Ok(())
    }

    async fn handle_job_completed(&self, job: &JobCompleted) -> Result<(), BoxError> {
        // Idempotent: a redelivered JobCompleted finds the runner already gone.
        let removed = self
            .runners
            .lock()
            .map_err(|_| "poisoned")?
            .remove(&job.runner_name);
        if removed {
            println!("{} finished ({}); slot freed", job.runner_name, job.result);
        }
        Ok(())
    }
}

/// A pseudo-random suffix without extra dependencies.
fn rand_suffix() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    nanos ^ std::process::id().rotate_left(16)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("SCALESET_URL")?;
    let token = std::env::var("SCALESET_TOKEN")?;
    let client = Client::builder(url, Credentials::token(token)?).build()?;
    let name = "example-autoscaler";
    let scale_set = match client
        .get_runner_scale_set(DEFAULT_RUNNER_GROUP_ID, name)
        .await?
    {
        Some(s) => s,
        None => {
            client
                .create_runner_scale_set(&RunnerScaleSet {
                    name: name.into(),
                    runner_group_id: DEFAULT_RUNNER_GROUP_ID,
                    ..Default::default()
                })
                .await?
        }
    };
    let session = client
        .create_message_session_client(scale_set.id, None)
        .await?;
    let listener = Listener::new(session, ListenerConfig::new(scale_set.id, MAX_RUNNERS))?;
    let scaler = Autoscaler {
        client: client.clone(),
        scale_set_id: scale_set.id.get(),
        runners: Mutex::default(),
    };
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.cancel();
    });
    listener.run(&scaler, &shutdown).await?;
    Ok(())
}
