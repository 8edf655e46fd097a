//! The provisioner contract (v2, see `provisioner/mod.rs`) checked against every
//! implementation: the in-memory fake, the process provisioner, (cargo feature `docker`)
//! the Docker provisioner and (cargo feature `kubernetes`) the Kubernetes provisioner
//! against a fake API server with a test kubelet.
//!
//! Each check is an async function generic over a [`Backend`]: a harness that makes a fresh
//! provisioner, a second instance over the same backend, and runners that run until
//! stopped, exit with a code, or fail to start. The process and Docker runners are
//! `/bin/sh -c 'eval "$ACTIONS_RUNNER_INPUT_JITCONFIG"'`: in these tests the JIT config is
//! the runner's script. Every wait has a deadline; nothing asserts wall-clock timings.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actions_scaleset::{EncodedJitConfig, RunnerId};
use scaleset_autoscaler::ProvisionError;
use scaleset_autoscaler::provisioner::fake::FakeProvisioner;
use scaleset_autoscaler::provisioner::process::{ProcessConfig, ProcessProvisioner};
use scaleset_autoscaler::provisioner::{
    ExitStatus, OwnedRunner, Provisioner, ProvisionerEvent, RunnerEvent, RunnerSpec, RunnerState,
};
use tokio_util::sync::CancellationToken;

/// The longest any single wait may take.
const DEADLINE: Duration = Duration::from_secs(60);
/// How long "nothing more is reported" is watched for.
const QUIET: Duration = Duration::from_secs(2);

/// The script of a runner that runs until stopped (and exits 0 on SIGTERM).
const UNTIL_STOPPED: &str = "trap 'exit 0' TERM; sleep 600 & wait";

/// A unique suffix for names, directories and identities.
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

/// What a test runner does.
#[derive(Clone, Copy, Debug)]
enum Behaviour {
    /// Runs until stopped.
    UntilStopped,
    /// Exits with this code on its own.
    Exit(i32),
}

impl Behaviour {
    fn script(self) -> String {
        match self {
            Behaviour::UntilStopped => UNTIL_STOPPED.to_string(),
            Behaviour::Exit(code) => format!("exit {code}"),
        }
    }
}

/// What the checks need of an implementation.
trait Backend: Send + Sync {
    /// The provisioner under test.
    type P: Provisioner + Clone;

    /// A provisioner over this harness's backend (not acquired yet).
    fn make(&self) -> impl Future<Output = Self::P> + Send;

    /// The runner name for `base`, unique to this harness.
    fn name(&self, base: &str) -> String;

    /// A spec for runner `name` behaving as told.
    fn spec(&self, name: &str, behaviour: Behaviour) -> RunnerSpec {
        RunnerSpec {
            name: name.to_string(),
            runner_id: RunnerId::new(42),
            jit_config: EncodedJitConfig::new(behaviour.script()),
        }
    }

    /// Called after `create` returned: a backend whose runners do nothing on their own
    /// makes them behave here.
    fn after_create(
        &self,
        _p: &Self::P,
        _name: &str,
        _behaviour: Behaviour,
    ) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// An acquired provisioner whose every start fails after `create` returned, if the
    /// backend has such failures.
    fn failing(&self) -> impl Future<Output = Option<Self::P>> + Send;

    /// Leaves runners `names` (running until stopped) behind an instance that then dies,
    /// and returns a new, acquired instance over the same backend.
    fn restarted_with_leftovers(&self, names: &[String]) -> impl Future<Output = Self::P> + Send;

    /// Whether `acquire` makes this instance the only manager (rule 1); a backend without
    /// ownership yet says why not.
    fn exclusive(&self) -> Result<(), &'static str> {
        Ok(())
    }

    /// Removes what the harness left on the backend.
    fn cleanup(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// Reads a provisioner's events, keeping those of other runners for later.
struct Events<'a, P> {
    p: &'a P,
    stash: Vec<ProvisionerEvent>,
}

impl<'a, P: Provisioner> Events<'a, P> {
    fn new(p: &'a P) -> Self {
        Events {
            p,
            stash: Vec::new(),
        }
    }

    /// The next event about `name`, within `limit`.
    async fn next_within(&mut self, name: &str, limit: Duration) -> Option<RunnerEvent> {
        if let Some(i) = self.stash.iter().position(|e| e.name == name) {
            return Some(self.stash.remove(i).event);
        }
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let e = tokio::time::timeout_at(deadline, self.p.next_event())
                .await
                .ok()?
                .expect("the provisioner stays open");
            if e.name == name {
                return Some(e.event);
            }
            self.stash.push(e);
        }
    }

    /// The next event about `name`; fails the test after [`DEADLINE`].
    async fn next(&mut self, name: &str) -> RunnerEvent {
        self.next_within(name, DEADLINE)
            .await
            .unwrap_or_else(|| panic!("no event about {name} within {DEADLINE:?}"))
    }

    /// The terminal event of `name` (after an optional `Running`), then checks that nothing
    /// more is reported about it for a while.
    async fn terminal_once(&mut self, name: &str) -> RunnerEvent {
        let mut e = self.next(name).await;
        if e == RunnerEvent::Running {
            e = self.next(name).await;
        }
        assert!(
            e.is_terminal(),
            "{name}: expected a terminal event, got {e:?}"
        );
        self.quiet(name).await;
        e
    }

    /// Fails when anything more is reported about `name` within [`QUIET`].
    async fn quiet(&mut self, name: &str) {
        if let Some(more) = self.next_within(name, QUIET).await {
            panic!("{name}: reported again after its terminal event: {more:?}");
        }
    }
}

/// Waits until `pred` holds for the listing.
async fn until_listed<P: Provisioner>(
    p: &P,
    what: &str,
    pred: impl Fn(&[OwnedRunner]) -> bool,
) -> Vec<OwnedRunner> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let listed = tokio::time::timeout(DEADLINE, p.list())
            .await
            .expect("list answers in time")
            .expect("list");
        if pred(&listed) {
            return listed;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: still listed {listed:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn alive(listed: &[OwnedRunner], name: &str) -> bool {
    listed.iter().any(|r| r.name == name && r.state.is_alive())
}

fn listed(listed: &[OwnedRunner], name: &str) -> bool {
    listed.iter().any(|r| r.name == name)
}

async fn acquired<B: Backend>(b: &B) -> B::P {
    let p = b.make().await;
    tokio::time::timeout(DEADLINE, p.acquire(&CancellationToken::new()))
        .await
        .expect("acquired in time")
        .expect("acquire");
    p
}

async fn create<B: Backend>(b: &B, p: &B::P, name: &str, behaviour: Behaviour) {
    tokio::time::timeout(DEADLINE, p.create(b.spec(name, behaviour)))
        .await
        .expect("create returns in time")
        .expect("create");
    b.after_create(p, name, behaviour).await;
}

async fn stop<P: Provisioner>(p: &P, name: &str) {
    tokio::time::timeout(DEADLINE, p.stop(name))
        .await
        .expect("stop returns in time")
        .expect("stop");
}

// ---- the checks -------------------------------------------------------------------------

/// Rules 2-4: a created runner reports `Running`; a stopped one then exactly one `Exited`,
/// and is no longer listed.
async fn create_runs_and_stop_ends_it<B: Backend>(b: &B) {
    let p = acquired(b).await;
    let mut events = Events::new(&p);
    let name = b.name("run");
    create(b, &p, &name, Behaviour::UntilStopped).await;
    assert_eq!(events.next(&name).await, RunnerEvent::Running);
    assert!(alive(&p.list().await.expect("list"), &name));
    stop(&p, &name).await;
    let end = events.terminal_once(&name).await;
    assert!(matches!(end, RunnerEvent::Exited(_)), "{end:?}");
    until_listed(&p, "a stopped runner is removed", |l| !listed(l, &name)).await;
    // Stopping it again is fine.
    stop(&p, &name).await;
    events.quiet(&name).await;
}

/// Rule 4: stopping or releasing an unknown runner is `Ok`.
async fn unknown_runners_stop_and_release<B: Backend>(b: &B) {
    let p = acquired(b).await;
    let name = b.name("nobody");
    stop(&p, &name).await;
    tokio::time::timeout(DEADLINE, p.release(&name))
        .await
        .expect("in time")
        .expect("release");
    assert!(!p.adopt(&name).await.expect("adopt"), "nothing to adopt");
}

/// Rule 3: an exit is reported once, with its code; the runner is then removed.
async fn an_exit_is_reported_once<B: Backend>(b: &B) {
    let p = acquired(b).await;
    let mut events = Events::new(&p);
    let name = b.name("exit");
    create(b, &p, &name, Behaviour::Exit(3)).await;
    let end = events.terminal_once(&name).await;
    let RunnerEvent::Exited(status) = end else {
        panic!("expected an exit, got {end:?}");
    };
    assert_eq!(status.code, Some(3), "{status:?}");
    until_listed(&p, "an exited runner is removed", |l| !listed(l, &name)).await;
}

/// Rule 2: a start refused after `create` returned is one `FailedToStart`, never retried.
async fn a_failed_start_is_reported_once<B: Backend>(b: &B) {
    let Some(p) = b.failing().await else {
        eprintln!("(this backend has no start failure after create: skipped)");
        return;
    };
    let mut events = Events::new(&p);
    let name = b.name("fail");
    create(b, &p, &name, Behaviour::UntilStopped).await;
    let end = events.terminal_once(&name).await;
    let RunnerEvent::FailedToStart { reason } = end else {
        panic!("expected a failed start, got {end:?}");
    };
    assert!(!reason.is_empty());
    let l = p.list().await.expect("list");
    assert!(!alive(&l, &name), "not retried: {l:?}");
}

/// Rules 5 and 6: a restarted instance lists what the previous one left; an adopted
/// leftover's exit is reported (once); a released one is removed.
async fn leftovers_are_listed_adopted_and_released<B: Backend>(b: &B) {
    let kept = b.name("kept");
    let dropped = b.name("dropped");
    let p = b
        .restarted_with_leftovers(&[kept.clone(), dropped.clone()])
        .await;
    let mut events = Events::new(&p);
    let l = until_listed(&p, "leftovers", |l| alive(l, &kept) && alive(l, &dropped)).await;
    let runner = l.iter().find(|r| r.name == kept).expect("listed");
    assert_eq!(runner.state, RunnerState::Running);
    assert!(
        p.adopt(&kept).await.expect("adopt"),
        "a live leftover is adopted"
    );
    tokio::time::timeout(DEADLINE, p.release(&dropped))
        .await
        .expect("in time")
        .expect("release");
    until_listed(&p, "a released leftover is removed", |l| {
        !listed(l, &dropped)
    })
    .await;
    stop(&p, &kept).await;
    let end = events.terminal_once(&kept).await;
    assert!(matches!(end, RunnerEvent::Exited(_)), "{end:?}");
    until_listed(&p, "an adopted runner is removed after it ended", |l| {
        !listed(l, &kept)
    })
    .await;
    events.quiet(&dropped).await;
}

/// Rule 1: a second instance waits while the first one owns the runners; cancelling it
/// ends the wait with `Cancelled`.
async fn a_second_instance_waits_for_ownership<B: Backend>(b: &B) {
    if let Err(why) = b.exclusive() {
        eprintln!("(SKIPPED: this backend has no ownership yet: {why})");
        return;
    }
    let first = acquired(b).await;
    let second = b.make().await;
    let cancel = CancellationToken::new();
    let waiter = tokio::spawn({
        let cancel = cancel.clone();
        async move { second.acquire(&cancel).await }
    });
    // Not a timing assertion: the waiter gets a moment to (wrongly) succeed.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!waiter.is_finished(), "the second instance must wait");
    cancel.cancel();
    let got = tokio::time::timeout(DEADLINE, waiter)
        .await
        .expect("the wait ends in time")
        .expect("joined");
    assert!(matches!(got, Err(ProvisionError::Cancelled)), "{got:?}");
    drop(first);
}

/// Runs every check against one backend, each test with a fresh harness.
macro_rules! contract_tests {
    ($module:ident, $harness:expr) => {
        mod $module {
            use super::*;

            macro_rules! check {
                ($check:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $check() {
                        let Some(h) = $harness(stringify!($check)).await else {
                            return;
                        };
                        super::$check(&h).await;
                        h.cleanup().await;
                    }
                };
            }

            check!(create_runs_and_stop_ends_it);
            check!(unknown_runners_stop_and_release);
            check!(an_exit_is_reported_once);
            check!(a_failed_start_is_reported_once);
            check!(leftovers_are_listed_adopted_and_released);
            check!(a_second_instance_waits_for_ownership);
        }
    };
}

/// Runs `f` in a runtime of its own that is then dropped, as when a daemon dies: its
/// tasks (event watchers, child waiters) are gone, what it started on the backend stays.
async fn in_a_dying_runtime<F, Fut>(f: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the dying instance");
        rt.block_on(f());
        drop(rt);
    })
    .await
    .expect("the dying instance's thread");
}

/// Creates `names` as runners that run until stopped, waiting for each one's `Running`.
async fn start_all<B: Backend>(b: &B, p: &B::P, names: &[String]) {
    let mut events = Events::new(p);
    for name in names {
        create(b, p, name, Behaviour::UntilStopped).await;
        assert_eq!(events.next(name).await, RunnerEvent::Running);
    }
}

// ---- the fake ----------------------------------------------------------------------------

struct Fake {
    fake: FakeProvisioner,
}

async fn fake_harness(_test: &str) -> Option<Fake> {
    Some(Fake {
        fake: FakeProvisioner::default(),
    })
}

impl Backend for Fake {
    type P = FakeProvisioner;

    async fn make(&self) -> FakeProvisioner {
        // Clones share the backend (and its ownership).
        self.fake.clone()
    }

    fn name(&self, base: &str) -> String {
        base.to_string()
    }

    async fn after_create(&self, p: &FakeProvisioner, name: &str, behaviour: Behaviour) {
        if let Behaviour::Exit(code) = behaviour {
            assert!(p.exit_with(name, ExitStatus::code(code)), "{name} runs");
        }
    }

    async fn failing(&self) -> Option<FakeProvisioner> {
        let p = FakeProvisioner::default();
        p.fail_next_starts(usize::MAX, "image not found");
        p.acquire(&CancellationToken::new()).await.expect("acquire");
        Some(p)
    }

    async fn restarted_with_leftovers(&self, names: &[String]) -> FakeProvisioner {
        // The fake's backend dies with it: a new one is told what the old one left.
        let p = FakeProvisioner::default();
        for name in names {
            p.add_leftover(OwnedRunner {
                name: name.clone(),
                runner_id: RunnerId::new(42),
                state: RunnerState::Running,
            });
        }
        p.acquire(&CancellationToken::new()).await.expect("acquire");
        p
    }
}

contract_tests!(fake, fake_harness);

// ---- processes ---------------------------------------------------------------------------

struct Process {
    dir: PathBuf,
}

async fn process_harness(test: &str) -> Option<Process> {
    let dir = std::env::temp_dir().join(format!("scaleset-contract-{test}-{}", unique()));
    Some(Process { dir })
}

impl Process {
    fn config(&self) -> ProcessConfig {
        let mut c = ProcessConfig::new(
            "/bin/sh",
            vec![
                "-c".into(),
                format!(
                    "eval \"${}\"",
                    scaleset_autoscaler::provisioner::JIT_CONFIG_ENV
                ),
            ],
            self.dir.clone(),
        );
        c.name_prefix = "c-".into();
        c.stop_timeout = Duration::from_secs(5);
        c
    }
}

impl Backend for Process {
    type P = ProcessProvisioner;

    async fn make(&self) -> ProcessProvisioner {
        ProcessProvisioner::unlocked(self.config()).expect("process provisioner")
    }

    fn name(&self, base: &str) -> String {
        format!("c-{base}")
    }

    async fn failing(&self) -> Option<ProcessProvisioner> {
        // A command that cannot start is `create`'s own error here.
        None
    }

    async fn restarted_with_leftovers(&self, names: &[String]) -> ProcessProvisioner {
        let config = self.config();
        let names = names.to_vec();
        in_a_dying_runtime(move || async move {
            let b = Process {
                dir: config.workdir.clone(),
            };
            let p = acquired(&b).await;
            start_all(&b, &p, &names).await;
        })
        .await;
        acquired(self).await
    }

    async fn cleanup(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

contract_tests!(process, process_harness);

// ---- Docker ------------------------------------------------------------------------------

#[cfg(feature = "docker")]
#[path = "support/docker_engine.rs"]
mod docker_engine;

#[cfg(feature = "docker")]
mod docker_backend {
    use super::*;
    use actions_scaleset::ScaleSetId;
    use scaleset_autoscaler::config::provisioner::{DockerSettings, PullPolicy};
    use scaleset_autoscaler::provisioner::ScaleSetIdentity;
    use scaleset_autoscaler::provisioner::docker::{DockerProvisioner, LABEL_INSTANCE};

    pub struct Docker {
        pub docker: bollard::Docker,
        pub tag: String,
        pub dir: PathBuf,
    }

    pub async fn docker_harness(test: &str) -> Option<Docker> {
        let docker = docker_engine::engine(test).await?;
        docker_engine::runner_image(&docker).await;
        let tag = unique();
        let dir = std::env::temp_dir().join(format!("scaleset-contract-docker-{tag}"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Some(Docker { docker, tag, dir })
    }

    impl Docker {
        pub fn identity(&self) -> ScaleSetIdentity {
            ScaleSetIdentity {
                id: ScaleSetId::new(7),
                name: "contract".into(),
                instance: format!("test-{}", self.tag),
            }
        }

        pub fn settings(&self, image: &str) -> DockerSettings {
            let mut s = DockerSettings::new(image);
            s.command = Some("/bin/sh".into());
            s.args = vec![
                "-c".into(),
                format!(
                    "eval \"${}\"",
                    scaleset_autoscaler::provisioner::JIT_CONFIG_ENV
                ),
            ];
            s.network = Some("host".into());
            s.pull = PullPolicy::Never;
            s.stop_timeout_secs = 5;
            s
        }

        pub async fn connect(&self, settings: DockerSettings) -> DockerProvisioner {
            DockerProvisioner::connect(settings, self.identity(), self.dir.join("docker.lock"))
                .await
                .expect("connect")
        }
    }

    impl Backend for Docker {
        type P = DockerProvisioner;

        async fn make(&self) -> DockerProvisioner {
            self.connect(self.settings(docker_engine::RUNNER_IMAGE))
                .await
        }

        fn name(&self, base: &str) -> String {
            format!("scaleset-test-{base}-{}", self.tag)
        }

        async fn failing(&self) -> Option<DockerProvisioner> {
            let p = self
                .connect(self.settings("scaleset-test/never-built:nope"))
                .await;
            p.acquire(&CancellationToken::new()).await.expect("acquire");
            Some(p)
        }

        async fn restarted_with_leftovers(&self, names: &[String]) -> DockerProvisioner {
            let settings = self.settings(docker_engine::RUNNER_IMAGE);
            let identity = self.identity();
            let lock = self.dir.join("docker.lock");
            let names = names.to_vec();
            let tag = self.tag.clone();
            in_a_dying_runtime(move || async move {
                let p = DockerProvisioner::connect(settings, identity, lock)
                    .await
                    .expect("connect");
                p.acquire(&CancellationToken::new()).await.expect("acquire");
                let docker = bollard::Docker::connect_with_defaults().expect("client");
                let b = Docker {
                    docker,
                    tag,
                    dir: PathBuf::new(),
                };
                start_all(&b, &p, &names).await;
            })
            .await;
            acquired(self).await
        }

        async fn cleanup(&self) {
            use bollard::query_parameters::{ListContainersOptions, RemoveContainerOptions};
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
                for c in list {
                    if let Some(id) = c.id {
                        let rm = RemoveContainerOptions {
                            force: true,
                            ..Default::default()
                        };
                        let _ = self.docker.remove_container(&id, Some(rm)).await;
                    }
                }
            }
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(feature = "docker")]
use docker_backend::docker_harness;

#[cfg(feature = "docker")]
contract_tests!(docker, docker_harness);

// ---- Kubernetes --------------------------------------------------------------------------

#[cfg(feature = "kubernetes")]
#[path = "support/fake_kube.rs"]
mod fake_kube;
#[cfg(feature = "kubernetes")]
#[path = "support/kubelet.rs"]
mod kubelet;

#[cfg(feature = "kubernetes")]
mod kubernetes_backend {
    use std::sync::Arc;

    use super::fake_kube::{FakeKube, Kind};
    use super::kubelet::{Kubelet, Policy, Start};
    use super::*;
    use actions_scaleset::ScaleSetId;
    use scaleset_autoscaler::config::provisioner::KubernetesSettings;
    use scaleset_autoscaler::provisioner::ScaleSetIdentity;
    use scaleset_autoscaler::provisioner::kubernetes::{KubernetesProvisioner, SECRET_KEY};

    const NS: &str = "contract";
    /// The runner image that cannot be pulled.
    const MISSING_IMAGE: &str = "scaleset-test/never-built:nope";
    const TEMPLATE: &str =
        "spec:\n  containers:\n    - name: runner\n      image: scaleset-test/runner:1\n";

    /// One fake cluster with a kubelet that runs each pod as the JIT config in its Secret
    /// says: `exit N` exits with N, anything else runs until the pod is deleted (and then
    /// exits 0); a pod of [`MISSING_IMAGE`] waits on `ErrImagePull`.
    #[derive(Clone)]
    pub struct Kube {
        fake: Arc<FakeKube>,
        _kubelet: Arc<Kubelet>,
        dir: PathBuf,
    }

    /// What the kubelet does with `pod`: the runner's script is its JIT config.
    fn start(fake: &FakeKube, pod: &serde_json::Value) -> Start {
        let runner = &pod["spec"]["containers"][0];
        if runner["image"] == MISSING_IMAGE {
            return Start::Wait("ErrImagePull".into());
        }
        let secret = runner["env"]
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|e| e["valueFrom"]["secretKeyRef"]["name"].as_str())
            .and_then(|name| fake.get(Kind::Secret, NS, name));
        let script = secret
            .and_then(|s| {
                serde_json::from_value::<k8s_openapi::ByteString>(s["data"][SECRET_KEY].clone())
                    .ok()
            })
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .unwrap_or_default();
        match script
            .strip_prefix("exit ")
            .and_then(|c| c.trim().parse().ok())
        {
            Some(code) => Start::Exit(code),
            None => Start::Run,
        }
    }

    pub async fn kube_harness(test: &str) -> Option<Kube> {
        let fake = Arc::new(FakeKube::start().await);
        let kubelet = Kubelet::spawn(
            fake.clone(),
            Policy {
                namespace: NS.into(),
                container: "runner".into(),
                finish_deletions: true,
                stop_code: 0,
            },
            start,
        );
        let dir = std::env::temp_dir().join(format!("scaleset-contract-kube-{test}-{}", unique()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("pod.yaml"), TEMPLATE).expect("template");
        Some(Kube {
            fake,
            _kubelet: Arc::new(kubelet),
            dir,
        })
    }

    impl Kube {
        fn settings(&self) -> KubernetesSettings {
            let mut s = KubernetesSettings::new(self.dir.join("pod.yaml"));
            s.namespace = NS.into();
            s.start_deadline_secs = 1;
            s.stop_timeout_secs = 5;
            s.terminating_deadline_secs = 5;
            s
        }

        async fn connect(&self, settings: KubernetesSettings) -> KubernetesProvisioner {
            let config = kube::Config::new(self.fake.url().parse().expect("the fake's URL"));
            let client = kube::Client::try_from(config).expect("a client");
            let identity = ScaleSetIdentity {
                id: ScaleSetId::new(7),
                name: "contract".into(),
                instance: "test".into(),
            };
            KubernetesProvisioner::with_client(client, settings, identity)
                .await
                .expect("connect")
        }
    }

    impl Backend for Kube {
        type P = KubernetesProvisioner;

        async fn make(&self) -> KubernetesProvisioner {
            self.connect(self.settings()).await
        }

        fn name(&self, base: &str) -> String {
            format!("kube-{base}")
        }

        async fn failing(&self) -> Option<KubernetesProvisioner> {
            let mut settings = self.settings();
            settings.image = Some(MISSING_IMAGE.into());
            let p = self.connect(settings).await;
            p.acquire(&CancellationToken::new()).await.expect("acquire");
            Some(p)
        }

        async fn restarted_with_leftovers(&self, names: &[String]) -> KubernetesProvisioner {
            let this = self.clone();
            let names = names.to_vec();
            in_a_dying_runtime(move || async move {
                let p = acquired(&this).await;
                start_all(&this, &p, &names).await;
            })
            .await;
            acquired(self).await
        }

        fn exclusive(&self) -> Result<(), &'static str> {
            Err(
                "one manager per scale set is the daemon's Lease (leader election, tests/leader.rs and the CLI's kubernetes_e2e), held before any provisioner is built; acquire takes nothing",
            )
        }

        async fn cleanup(&self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(feature = "kubernetes")]
use kubernetes_backend::kube_harness;

#[cfg(feature = "kubernetes")]
contract_tests!(kubernetes, kube_harness);
