//! Reaching the Docker engine from tests: when none answers, a test prints loudly that it
//! was SKIPPED and why, and returns; with `SCALESET_REQUIRE_DOCKER=1` (CI) it panics.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use bollard::Docker;

#[path = "docker_image.rs"]
pub mod docker_image;

/// The image the Docker tests run their runners in: a shell and a few tools.
pub const RUNNER_IMAGE: &str = "scaleset-test-runner:latest";

/// Whether a missing engine fails the test (`SCALESET_REQUIRE_DOCKER=1`).
pub fn required() -> bool {
    std::env::var("SCALESET_REQUIRE_DOCKER").is_ok_and(|v| v == "1")
}

/// The engine, or `None` after saying why the calling test is skipped (or panicking when
/// the engine is required).
pub async fn engine(test: &str) -> Option<Docker> {
    let why = match connect().await {
        Ok(d) => return Some(d),
        Err(why) => why,
    };
    if required() {
        panic!("{test}: no Docker engine ({why}) and SCALESET_REQUIRE_DOCKER=1");
    }
    eprintln!(
        "\n*** {test}: SKIPPED: no Docker engine answers ({why}); run .ci/docker-engine, or set SCALESET_REQUIRE_DOCKER=1 to fail instead ***\n"
    );
    None
}

async fn connect() -> Result<Docker, String> {
    let docker = Docker::connect_with_defaults().map_err(|e| e.to_string())?;
    let docker = tokio::time::timeout(Duration::from_secs(10), async {
        let d = docker.negotiate_version().await?;
        d.ping().await?;
        Ok::<_, bollard::errors::Error>(d)
    })
    .await
    .map_err(|_| "no answer within 10 s".to_string())?
    .map_err(|e| e.to_string())?;
    Ok(docker)
}

/// Builds [`RUNNER_IMAGE`] once per test binary.
pub async fn runner_image(docker: &Docker) {
    static BUILT: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    BUILT
        .get_or_init(|| async {
            let exes: Vec<&Path> = ["/bin/sh", "/bin/sleep", "/usr/bin/tail", "/usr/bin/env"]
                .iter()
                .map(Path::new)
                .collect();
            let files: Vec<&Path> = [docker_image::CA_BUNDLE]
                .iter()
                .map(Path::new)
                .filter(|p| p.exists())
                .collect();
            tokio::time::timeout(
                Duration::from_secs(300),
                docker_image::build_image(docker, RUNNER_IMAGE, &exes, &files),
            )
            .await
            .expect("the runner image builds in time")
            .expect("the runner image builds");
        })
        .await;
}

/// Kills the engine and starts it again with `.ci/docker-engine`; only for an engine that
/// script started (its flags say so), never someone's own. Every wait has a deadline.
pub async fn restart_engine() -> Result<(), String> {
    const DEADLINE: Duration = Duration::from_secs(120);
    let pid = std::fs::read_to_string("/var/run/docker.pid")
        .map_err(|e| format!("no /var/run/docker.pid: {e}"))?;
    let pid = pid.trim().to_string();
    let cmdline =
        std::fs::read(format!("/proc/{pid}/cmdline")).map_err(|e| format!("dockerd {pid}: {e}"))?;
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    if !(cmdline.contains("--storage-driver=vfs") && cmdline.contains("--bridge=none")) {
        return Err(format!(
            "dockerd {pid} was not started by .ci/docker-engine ({cmdline})"
        ));
    }
    let killed = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .map_err(|e| format!("kill: {e}"))?;
    if !killed.success() {
        return Err(format!("kill {pid} failed"));
    }
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while Path::new(&format!("/proc/{pid}")).exists() {
        if tokio::time::Instant::now() > deadline {
            return Err(format!("dockerd {pid} did not exit"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Every crate of the workspace is at crates/NAME.
    let script =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.ci/docker-engine");
    let started = tokio::time::timeout(
        DEADLINE,
        tokio::process::Command::new("bash").arg(&script).status(),
    )
    .await
    .map_err(|_| format!("{} did not finish in time", script.display()))?
    .map_err(|e| format!("{}: {e}", script.display()))?;
    if started.success() {
        Ok(())
    } else {
        Err(format!("{} failed", script.display()))
    }
}
