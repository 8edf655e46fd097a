//! A scale set's lifecycle: get or create it, mint a JIT runner config, look the runner up,
//! list the jobs waiting to be acquired, remove the runner, delete the scale set.
//!
//! ```text
//! SCALESET_URL=https://github.com/my-org SCALESET_TOKEN=ghp_... cargo run --example lifecycle
//! ```
//!
//! Against the simulator: `scaleset sim --port 0` prints a config URL and a token.

use actions_scaleset::{
    Client, Credentials, DEFAULT_RUNNER_GROUP_ID, JitRunnerSetting, RunnerRemoval, RunnerScaleSet,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("SCALESET_URL")?;
    let token = std::env::var("SCALESET_TOKEN")?;
    let client = Client::builder(url, Credentials::token(token)?).build()?;

    let name = "example-lifecycle";
    let scale_set = match client
        .get_runner_scale_set(DEFAULT_RUNNER_GROUP_ID, name)
        .await?
    {
        Some(existing) => existing,
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
    println!("scale set {} (id {})", scale_set.name, scale_set.id);

    let jit = client
        .generate_jit_runner_config(
            scale_set.id,
            &JitRunnerSetting {
                name: "example-runner-1".into(),
                work_folder: String::new(),
            },
        )
        .await?;
    // The config is a credential: hand it to one runner, never log it.
    let _for_the_runner: &str = jit.encoded_jit_config.expose_secret();
    let runner = client.get_runner(jit.runner.id).await?;
    println!("runner {} registered (id {})", runner.name, runner.id);

    let waiting = client.get_acquirable_jobs(scale_set.id).await?;
    println!("{} job(s) waiting to be acquired", waiting.count);

    match client.remove_runner(runner.id).await? {
        RunnerRemoval::Removed => println!("runner removed"),
        RunnerRemoval::AlreadyGone => println!("runner was already gone"),
    }
    client.delete_runner_scale_set(scale_set.id).await?;
    println!("scale set deleted");
    Ok(())
}
