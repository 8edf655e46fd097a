//! A listener with the message-level [`MessageScaler`]: each message whole, the initial
//! statistics first, `None` after an empty poll; acquiring offered jobs (GHES) is the
//! handler's job, and the message is acknowledged only after it returned `Ok`.
//!
//! ```text
//! SCALESET_URL=https://ghes.example.com/my-org SCALESET_TOKEN=ghp_... cargo run --example message_scaler
//! ```

use actions_scaleset::listener::BoxError;
use actions_scaleset::{
    CancellationToken, Client, Credentials, DEFAULT_RUNNER_GROUP_ID, INITIAL_MESSAGE_ID,
    JobMessage, Listener, ListenerConfig, MessageContext, MessageScaler, RunnerScaleSet,
    RunnerScaleSetMessage,
};

struct Handler;

impl MessageScaler for Handler {
    async fn handle_message(
        &self,
        message: Option<&RunnerScaleSetMessage>,
        ctx: &MessageContext<'_>,
    ) -> Result<(), BoxError> {
        let assigned = ctx.statistics().total_assigned_jobs;
        let Some(message) = message else {
            println!("empty poll; {assigned} job(s) assigned");
            return Ok(());
        };
        if message.message_id == INITIAL_MESSAGE_ID {
            println!("session opened; {assigned} job(s) assigned");
            return Ok(());
        }
        // Acquire before returning Ok, or the offered jobs stay unassigned.
        let acquired = ctx.acquire_available(message).await?;
        if !acquired.is_empty() {
            println!("acquired {acquired:?}");
        }
        for job in &message.jobs {
            match job {
                JobMessage::Available(j) => println!("offered {}", j.base.runner_request_id),
                JobMessage::Assigned(j) => println!("assigned {}", j.base.runner_request_id),
                JobMessage::Started(j) => println!("started on {}", j.runner_name),
                JobMessage::Completed(j) => println!("completed: {}", j.result),
            }
        }
        println!(
            "message {} handled; {assigned} job(s) assigned",
            message.message_id
        );
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("SCALESET_URL")?;
    let token = std::env::var("SCALESET_TOKEN")?;
    let client = Client::builder(url, Credentials::token(token)?).build()?;
    let name = "example-messages";
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
    listener.run(&Handler, &shutdown).await?;
    Ok(())
}
