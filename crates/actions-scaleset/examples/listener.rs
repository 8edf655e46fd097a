//! A listener with the three-method [`Scaler`]: prints the demand and the job events of a
//! scale set until Ctrl-C. Starts no runner.
//!
//! ```text
//! SCALESET_URL=https://github.com/my-org SCALESET_TOKEN=ghp_... cargo run --example listener
//! ```

use actions_scaleset::listener::BoxError;
use actions_scaleset::{
    CancellationToken, Client, Credentials, DEFAULT_RUNNER_GROUP_ID, JobCompleted, JobStarted,
    Listener, ListenerConfig, RunnerScaleSet, Scaler,
};

/// Prints what it is told; a real scaler starts and stops runners here.
struct Printer;

impl Scaler for Printer {
    async fn handle_desired_runner_count(&self, count: i64) -> Result<i64, BoxError> {
        println!("{count} job(s) assigned");
        Ok(count)
    }

    async fn handle_job_started(&self, job: &JobStarted) -> Result<(), BoxError> {
        println!("job {} started on {}", job.base.job_id, job.runner_name);
        Ok(())
    }

    async fn handle_job_completed(&self, job: &JobCompleted) -> Result<(), BoxError> {
        println!("job {} finished: {}", job.base.job_id, job.result);
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("SCALESET_URL")?;
    let token = std::env::var("SCALESET_TOKEN")?;
    let client = Client::builder(url, Credentials::token(token)?).build()?;
    let name = "example-listener";
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
    let listener = Listener::new(session, ListenerConfig::new(scale_set.id, 10))?;
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.cancel();
    });
    // Deletes the session before returning.
    listener.run(&Printer, &shutdown).await?;
    Ok(())
}
