//! The Docker provisioner against a real engine, beyond the generic contract
//! (`tests/contract.rs`): failed pulls, OOM kills, what a container shows of the JIT config,
//! containers removed behind our back, and an engine restart.
//!
//! Without an engine every test says it was SKIPPED and passes, unless
//! `SCALESET_REQUIRE_DOCKER=1` (CI), where it fails. Every wait has a deadline.
#![cfg(feature = "docker")]

#[path = "support/docker_engine.rs"]
mod docker_engine;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actions_scaleset::{EncodedJitConfig, RunnerId, ScaleSetId};
use bollard::Docker;
use bollard::query_parameters::{InspectContainerOptions, RemoveContainerOptions};
use scaleset_autoscaler::config::provisioner::{DockerSettings, PullPolicy};
use scaleset_autoscaler::provisioner::docker::{
    DockerProvisioner, LABEL_INSTANCE, LABEL_RUNNER_ID, LABEL_SCALE_SET_ID, LABEL_SCALE_SET_NAME,
};
use scaleset_autoscaler::provisioner::{
    JIT_CONFIG_ENV, Provisioner, RunnerEvent, RunnerSpec, ScaleSetIdentity, VERSION_DEPRECATED_ENV,
};
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(120);
const QUIET: Duration = Duration::from_secs(2);
const SECRET: &str = "jit-secret-c29tZXRoaW5n";

/// Tests share the engine; the restart test has it alone.
static ENGINE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

fn unique() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// One test's view of the engine: its own identity, names and lock file.
struct Env {
    docker: Docker,
    tag: String,
    dir: PathBuf,
}

impl Env {
    async fn new(test: &str) -> Option<Env> {
        let docker = docker_engine::engine(test).await?;
        docker_engine::runner_image(&docker).await;
        let tag = unique();
        let dir = std::env::temp_dir().join(format!("scaleset-docker-{tag}"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Some(Env { docker, tag, dir })
    }

    fn identity(&self) -> ScaleSetIdentity {
        ScaleSetIdentity {
            id: ScaleSetId::new(9),
            name: "docker-tests".into(),
            instance: format!("test-{}", self.tag),
        }
    }

    fn name(&self, base: &str) -> String {
        format!("scaleset-dt-{base}-{}", self.tag)
    }

    fn settings(&self) -> DockerSettings {
        let mut s = DockerSettings::new(docker_engine::RUNNER_IMAGE);
        s.command = Some("/bin/sh".into());
        s.args = vec!["-c".into(), "exit 0".into()];
        s.network = Some("host".into());
        s.pull = PullPolicy::Never;
        s.stop_timeout_secs = 5;
        s
    }

    async fn provisioner(&self, settings: DockerSettings) -> DockerProvisioner {
        let p = DockerProvisioner::connect(settings, self.identity(), self.dir.join("lock"))
            .await
            .expect("connect");
        p.acquire(&CancellationToken::new()).await.expect("acquire");
        p
    }

    async fn cleanup(&self) {
        use bollard::query_parameters::ListContainersOptions;
        let mut filters = std::collections::HashMap::new();
        filters.insert(
            "label".to_string(),
            vec![format!("{LABEL_INSTANCE}={}", self.identity().instance)],
        );
        let opts = ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        };
        if let Ok(list) = self.docker.list_containers(Some(opts)).await {
            for c in list.into_iter().filter_map(|c| c.id) {
                let rm = RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                };
                let _ = self.docker.remove_container(&c, Some(rm)).await;
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn spec(name: &str) -> RunnerSpec {
    RunnerSpec {
        name: name.to_string(),
        runner_id: RunnerId::new(4711),
        jit_config: EncodedJitConfig::new(SECRET),
    }
}

/// A spec whose JIT config is the runner's script (the settings `eval` it).
fn script_spec(name: &str, script: &str) -> RunnerSpec {
    RunnerSpec {
        name: name.to_string(),
        runner_id: RunnerId::new(4711),
        jit_config: EncodedJitConfig::new(script),
    }
}

fn jit_settings(env: &Env) -> DockerSettings {
    let mut s = env.settings();
    s.args = vec!["-c".into(), format!("eval \"${JIT_CONFIG_ENV}\"")];
    s
}

/// The next event about `name` within `limit`, skipping other runners'.
async fn next_within(p: &DockerProvisioner, name: &str, limit: Duration) -> Option<RunnerEvent> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let e = tokio::time::timeout_at(deadline, p.next_event())
            .await
            .ok()?
            .expect("the provisioner stays open");
        if e.name == name {
            return Some(e.event);
        }
    }
}

async fn next(p: &DockerProvisioner, name: &str) -> RunnerEvent {
    next_within(p, name, DEADLINE)
        .await
        .unwrap_or_else(|| panic!("no event about {name} in time"))
}

/// The terminal event of `name` (after its `Running`, if any); nothing follows it.
async fn terminal_once(p: &DockerProvisioner, name: &str) -> RunnerEvent {
    let mut e = next(p, name).await;
    if e == RunnerEvent::Running {
        e = next(p, name).await;
    }
    assert!(e.is_terminal(), "{e:?}");
    if let Some(more) = next_within(p, name, QUIET).await {
        panic!("{name} reported again: {more:?}");
    }
    e
}

async fn container_gone(docker: &Docker, name: &str) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        match docker
            .inspect_container(name, None::<InspectContainerOptions>)
            .await
        {
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => return,
            _ if tokio::time::Instant::now() > deadline => panic!("{name} was not removed"),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

// A daemon that drains exits once every runner's end was reported: by then the container
// must be gone, not merely about to be removed by a task the exit cuts short.
#[tokio::test]
async fn an_ended_runners_container_is_gone_when_its_end_is_reported() {
    let _shared = ENGINE.read().await;
    let Some(env) = Env::new("an_ended_runners_container_is_gone_when_its_end_is_reported").await
    else {
        return;
    };
    let p = env.provisioner(jit_settings(&env)).await;
    for (i, script) in ["exit 3", "sleep 600"].iter().enumerate() {
        let name = env.name(&format!("gone{i}"));
        p.create(script_spec(&name, script)).await.expect("create");
        if i == 1 {
            assert_eq!(next(&p, &name).await, RunnerEvent::Running);
            p.stop(&name).await.expect("stop");
        }
        let mut end = next(&p, &name).await;
        if end == RunnerEvent::Running {
            end = next(&p, &name).await;
        }
        assert!(matches!(end, RunnerEvent::Exited(_)), "{end:?}");
        // At once: not after a quiet period in which a removal could still finish.
        let left = env
            .docker
            .inspect_container(&name, None::<InspectContainerOptions>)
            .await;
        assert!(
            matches!(
                left,
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404,
                    ..
                })
            ),
            "{name}'s container is still there when its end is reported: {:?}",
            left.map(|i| i.state)
        );
        assert_eq!(next_within(&p, &name, QUIET).await, None, "reported once");
    }
    env.cleanup().await;
}

#[tokio::test]
async fn a_missing_image_with_pull_never_fails_once_with_dockers_message() {
    let _shared = ENGINE.read().await;
    let Some(env) = Env::new("a_missing_image_with_pull_never_fails_once").await else {
        return;
    };
    let mut s = env.settings();
    s.image = format!("scaleset-test/absent-{}:never", env.tag);
    let p = env.provisioner(s).await;
    let name = env.name("never");
    p.create(spec(&name)).await.expect("create returns");
    let RunnerEvent::FailedToStart { reason } = terminal_once(&p, &name).await else {
        panic!("expected a failed start");
    };
    assert!(reason.contains("No such image"), "Docker's words: {reason}");
    assert!(!reason.contains(SECRET));
    env.cleanup().await;
}

#[tokio::test]
async fn a_failed_pull_fails_once_with_dockers_message() {
    let _shared = ENGINE.read().await;
    let Some(env) = Env::new("a_failed_pull_fails_once").await else {
        return;
    };
    let mut s = env.settings();
    // No registry is reachable, and this repository does not exist anyway.
    s.image = format!("scaleset-test/absent-{}:missing", env.tag);
    s.pull = PullPolicy::Missing;
    let p = env.provisioner(s).await;
    let name = env.name("pull");
    tokio::time::timeout(DEADLINE, p.create(spec(&name)))
        .await
        .expect("create does not wait for the pull")
        .expect("create returns");
    let RunnerEvent::FailedToStart { reason } = terminal_once(&p, &name).await else {
        panic!("expected a failed start");
    };
    assert!(reason.contains("pulling image"), "{reason}");
    assert!(!reason.contains(SECRET));
    let listed = p.list().await.expect("list");
    assert!(
        listed.iter().all(|r| r.name != name),
        "not retried: {listed:?}"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn an_oom_kill_and_an_exit_code_are_reported() {
    let _shared = ENGINE.read().await;
    let Some(env) = Env::new("an_oom_kill_and_an_exit_code_are_reported").await else {
        return;
    };
    let mut s = jit_settings(&env);
    s.memory_mb = Some(16);
    s.cpus = Some(0.5);
    let p = env.provisioner(s).await;
    let oom = env.name("oom");
    p.create(script_spec(&oom, "exec tail /dev/zero"))
        .await
        .expect("create");
    let RunnerEvent::Exited(status) = terminal_once(&p, &oom).await else {
        panic!("expected an exit");
    };
    assert_eq!(status.reason.as_deref(), Some("OOMKilled"), "{status:?}");
    assert_eq!(status.code, Some(137), "{status:?}");
    let exit = env.name("exit");
    p.create(script_spec(&exit, "exit 5"))
        .await
        .expect("create");
    let RunnerEvent::Exited(status) = terminal_once(&p, &exit).await else {
        panic!("expected an exit");
    };
    assert_eq!(status.code, Some(5));
    assert_eq!(status.reason, None);
    container_gone(&env.docker, &oom).await;
    container_gone(&env.docker, &exit).await;
    env.cleanup().await;
}

#[tokio::test]
async fn the_jit_config_is_only_in_the_containers_environment() {
    let _shared = ENGINE.read().await;
    let Some(env) = Env::new("the_jit_config_is_only_in_the_containers_environment").await else {
        return;
    };
    let mut s = env.settings();
    s.args = vec!["-c".into(), "trap 'exit 0' TERM; sleep 600 & wait".into()];
    s.labels.insert("team".into(), "ci".into());
    let p = env.provisioner(s).await;
    let name = env.name("secret");
    p.create(spec(&name)).await.expect("create");
    assert_eq!(next(&p, &name).await, RunnerEvent::Running);
    let info = env
        .docker
        .inspect_container(&name, None::<InspectContainerOptions>)
        .await
        .expect("inspect");
    let config = info.config.clone().expect("config");
    let labels = config.labels.clone().expect("labels");
    assert_eq!(
        labels.get(LABEL_SCALE_SET_ID).map(String::as_str),
        Some("9")
    );
    assert_eq!(
        labels.get(LABEL_SCALE_SET_NAME).map(String::as_str),
        Some("docker-tests")
    );
    assert_eq!(labels.get(LABEL_INSTANCE), Some(&env.identity().instance));
    assert_eq!(
        labels.get(LABEL_RUNNER_ID).map(String::as_str),
        Some("4711")
    );
    assert_eq!(labels.get("team").map(String::as_str), Some("ci"));
    assert!(
        labels
            .iter()
            .all(|(k, v)| !k.contains(SECRET) && !v.contains(SECRET)),
        "{labels:?}"
    );
    assert!(!info.name.unwrap_or_default().contains(SECRET));
    let envs = config.env.expect("env");
    assert!(
        envs.contains(&format!("{JIT_CONFIG_ENV}={SECRET}")),
        "{envs:?}"
    );
    assert!(
        envs.contains(&format!("{VERSION_DEPRECATED_ENV}=1")),
        "{envs:?}"
    );
    // Nothing of the daemon's own environment but what is allowed.
    assert!(
        !envs.iter().any(|e| e.starts_with("CARGO")),
        "the daemon's environment leaked: {envs:?}"
    );
    let host = info.host_config.expect("host config");
    assert_eq!(host.network_mode.as_deref(), Some("host"));
    assert!(!format!("{p:?}").contains(SECRET));
    tokio::time::timeout(DEADLINE, p.stop(&name))
        .await
        .expect("stop in time")
        .expect("stop");
    let RunnerEvent::Exited(status) = terminal_once(&p, &name).await else {
        panic!("expected an exit");
    };
    assert_eq!(status.code, Some(0), "SIGTERM ends it: {status:?}");
    container_gone(&env.docker, &name).await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_container_removed_behind_our_back_vanishes_once() {
    let _shared = ENGINE.read().await;
    let Some(env) = Env::new("a_container_removed_behind_our_back_vanishes_once").await else {
        return;
    };
    let p = env.provisioner(jit_settings(&env)).await;
    let name = env.name("vanish");
    p.create(script_spec(&name, "trap 'exit 0' TERM; sleep 600 & wait"))
        .await
        .expect("create");
    assert_eq!(next(&p, &name).await, RunnerEvent::Running);
    let rm = RemoveContainerOptions {
        force: true,
        ..Default::default()
    };
    env.docker
        .remove_container(&name, Some(rm))
        .await
        .expect("docker rm -f");
    assert_eq!(terminal_once(&p, &name).await, RunnerEvent::Vanished);
    env.cleanup().await;
}

#[tokio::test]
async fn an_engine_restart_is_survived() {
    let _alone = ENGINE.write().await;
    let Some(env) = Env::new("an_engine_restart_is_survived").await else {
        return;
    };
    let mut s = jit_settings(&env);
    s.stop_timeout_secs = 1;
    let p = env.provisioner(s).await;
    let before = env.name("before");
    p.create(script_spec(&before, "trap 'exit 0' TERM; sleep 600 & wait"))
        .await
        .expect("create");
    assert_eq!(next(&p, &before).await, RunnerEvent::Running);
    if let Err(why) = docker_engine::restart_engine().await {
        if docker_engine::required() {
            panic!("restarting the engine: {why}");
        }
        eprintln!("\n*** an_engine_restart_is_survived: SKIPPED: {why} ***\n");
        env.cleanup().await;
        return;
    }
    // The engine stopped the container on its way down: its end is reported, once.
    let end = terminal_once(&p, &before).await;
    assert!(matches!(end, RunnerEvent::Exited(_)), "{end:?}");
    // The event stream is back: a new runner's exit is reported.
    let after = env.name("after");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        match p.create(script_spec(&after, "sleep 1; exit 4")).await {
            Ok(()) => break,
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("the engine is not ready yet: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("create after the restart: {e}"),
        }
    }
    let RunnerEvent::Exited(status) = terminal_once(&p, &after).await else {
        panic!("expected an exit");
    };
    assert_eq!(status.code, Some(4));
    container_gone(&env.docker, &after).await;
    env.cleanup().await;
}
