//! The Kubernetes provisioner against a stateful fake API server (`support/fake_kube.rs`),
//! beyond the generic contract (`tests/contract.rs`): the exact requests it sends (Secret
//! before Pod, the Pod built from the template, the Secret owned by the Pod), that the JIT
//! config is nowhere but in the Secret's data (every request body, trace-level logs), and
//! what it reports for exits, OOM kills, image pull failures, evictions, pods deleted behind
//! its back, a watch that expires (410 Gone), pods stuck terminating, and a restart.
//!
//! The "kubelet" is the test: it drives pod status through the fake. Every wait has a
//! deadline; nothing asserts wall-clock timings.
#![cfg(feature = "kubernetes")]

#[path = "support/fake_kube.rs"]
mod fake_kube;
#[path = "support/kubelet.rs"]
mod kubelet;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actions_scaleset::{EncodedJitConfig, RunnerId, ScaleSetId};
use fake_kube::{FakeKube, Kind, Request};
use kubelet::{Kubelet, Policy, Start};
use scaleset_autoscaler::ProvisionError;
use scaleset_autoscaler::config::provisioner::KubernetesSettings;
use scaleset_autoscaler::provisioner::kubernetes::{
    KubernetesProvisioner, LABEL_INSTANCE, LABEL_RUNNER_ID, LABEL_RUNNER_NAME, LABEL_SCALE_SET_ID,
    LABEL_SCALE_SET_NAME, SECRET_KEY,
};
use scaleset_autoscaler::provisioner::{
    ExitStatus, JIT_CONFIG_ENV, Provisioner, ProvisionerEvent, RunnerEvent, RunnerSpec,
    RunnerState, ScaleSetIdentity, VERSION_DEPRECATED_ENV,
};
use serde_json::{Value, json};

const DEADLINE: Duration = Duration::from_secs(30);
const QUIET: Duration = Duration::from_secs(2);
const NS: &str = "ci";
const SECRET: &str = "jit-secret-c29tZXRoaW5nLXNlY3JldA";

const TEMPLATE: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: ignored
  labels:
    app: runners
  annotations:
    team: ci
spec:
  serviceAccountName: runner
  nodeSelector:
    kubernetes.io/os: linux
  tolerations:
    - key: dedicated
      operator: Equal
      value: ci
      effect: NoSchedule
  volumes:
    - name: work
      emptyDir: {}
  containers:
    - name: runner
      image: ghcr.io/actions/actions-runner:latest
      command: ["/home/runner/run.sh"]
      env:
        - name: KEEP
          value: "yes"
      resources:
        limits:
          memory: 4Gi
      volumeMounts:
        - name: work
          mountPath: /home/runner/_work
"#;

fn unique() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The base64 form of `s`, as a Secret's `data` carries it.
fn base64(s: &str) -> String {
    serde_json::to_value(k8s_openapi::ByteString(s.as_bytes().to_vec()))
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .expect("a ByteString serializes to a string")
}

/// One test's fake cluster, template file and settings.
struct Env {
    fake: Arc<FakeKube>,
    dir: PathBuf,
    settings: KubernetesSettings,
}

impl Env {
    async fn new() -> Env {
        let fake = Arc::new(FakeKube::start().await);
        let dir = std::env::temp_dir().join(format!("scaleset-kube-{}", unique()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let template = dir.join("pod.yaml");
        std::fs::write(&template, TEMPLATE).expect("template written");
        let mut settings = KubernetesSettings::new(&template);
        settings.namespace = NS.into();
        settings.stop_timeout_secs = 5;
        settings.terminating_deadline_secs = 5;
        Env {
            fake,
            dir,
            settings,
        }
    }

    fn identity(&self) -> ScaleSetIdentity {
        ScaleSetIdentity {
            id: ScaleSetId::new(3),
            name: "Linux X64".into(),
            instance: "host-a".into(),
        }
    }

    async fn provisioner_with(&self, settings: KubernetesSettings) -> KubernetesProvisioner {
        let config = kube::Config::new(self.fake.url().parse().expect("the fake's URL"));
        let client = kube::Client::try_from(config).expect("a client for the fake");
        tokio::time::timeout(
            DEADLINE,
            KubernetesProvisioner::with_client(client, settings, self.identity()),
        )
        .await
        .expect("connected in time")
        .expect("connect")
    }

    async fn provisioner(&self) -> KubernetesProvisioner {
        self.provisioner_with(self.settings.clone()).await
    }

    /// A kubelet that finishes graceful deletions and leaves starts to the test.
    fn kubelet(&self) -> Kubelet {
        Kubelet::spawn(
            self.fake.clone(),
            Policy {
                namespace: NS.into(),
                container: "runner".into(),
                finish_deletions: true,
                stop_code: 0,
            },
            |_, _| Start::Leave,
        )
    }

    fn pod(&self, name: &str) -> Option<Value> {
        self.fake.get(Kind::Pod, NS, name)
    }

    fn secret(&self, name: &str) -> Option<Value> {
        self.fake.get(Kind::Secret, NS, &format!("{name}-jit"))
    }

    /// Waits until neither the pod nor the Secret of `name` is left.
    async fn all_gone(&self, name: &str) {
        let secret = format!("{name}-jit");
        let gone = self
            .fake
            .wait_until(DEADLINE, |f| {
                f.get(Kind::Pod, NS, name).is_none() && f.get(Kind::Secret, NS, &secret).is_none()
            })
            .await;
        assert!(
            gone,
            "left behind: pods {:?}, secrets {:?}",
            self.fake.names(Kind::Pod, NS),
            self.fake.names(Kind::Secret, NS)
        );
    }

    /// The requests that changed something (not GETs).
    fn writes(&self) -> Vec<Request> {
        self.fake
            .requests()
            .into_iter()
            .filter(|r| r.method != "GET")
            .collect()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn spec(name: &str) -> RunnerSpec {
    RunnerSpec {
        name: name.to_string(),
        runner_id: RunnerId::new(12),
        jit_config: EncodedJitConfig::new(SECRET),
    }
}

/// Reads a provisioner's events, keeping those of other runners for later.
struct Events {
    p: KubernetesProvisioner,
    stash: Vec<ProvisionerEvent>,
}

impl Events {
    fn new(p: &KubernetesProvisioner) -> Events {
        Events {
            p: p.clone(),
            stash: Vec::new(),
        }
    }

    /// The next event about `name` within [`DEADLINE`].
    async fn next(&mut self, name: &str) -> RunnerEvent {
        if let Some(i) = self.stash.iter().position(|e| e.name == name) {
            return self.stash.remove(i).event;
        }
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let e = tokio::time::timeout_at(deadline, self.p.next_event())
                .await
                .unwrap_or_else(|_| panic!("no event about {name} within {DEADLINE:?}"))
                .expect("the provisioner stays open");
            if e.name == name {
                return e.event;
            }
            self.stash.push(e);
        }
    }

    /// The terminal event about `name`, after an optional `Running`.
    async fn terminal(&mut self, name: &str) -> RunnerEvent {
        match self.next(name).await {
            RunnerEvent::Running => self.next(name).await,
            e => e,
        }
    }

    /// Fails when anything is reported within [`QUIET`].
    async fn quiet(&mut self) {
        if let Some(e) = self.stash.first() {
            panic!("nothing more was expected, got {e:?}");
        }
        if let Ok(e) = tokio::time::timeout(QUIET, self.p.next_event()).await {
            panic!("nothing more was expected, got {e:?}");
        }
    }
}

async fn create(p: &KubernetesProvisioner, name: &str) {
    tokio::time::timeout(DEADLINE, p.create(spec(name)))
        .await
        .expect("create returns in time")
        .expect("create");
}

// ---- the requests ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secret_comes_first_then_the_pod_from_the_template_then_the_owner_reference() {
    let env = Env::new().await;
    let p = env.provisioner().await;
    let name = "linux-0001";
    create(&p, name).await;

    let writes = env.writes();
    let kinds: Vec<(String, String)> = writes
        .iter()
        .map(|r| (r.method.clone(), r.path.clone()))
        .collect();
    let secret_name = format!("{name}-jit");
    assert_eq!(
        kinds,
        vec![
            ("POST".into(), format!("/api/v1/namespaces/{NS}/secrets")),
            ("POST".into(), format!("/api/v1/namespaces/{NS}/pods")),
            (
                "PATCH".into(),
                format!("/api/v1/namespaces/{NS}/secrets/{secret_name}")
            ),
        ],
        "the writes of one create"
    );

    // The Secret: the JIT config under its key, the identity, immutable.
    let secret = writes[0].json();
    assert_eq!(secret["metadata"]["name"], secret_name);
    assert_eq!(secret["data"][SECRET_KEY], base64(SECRET));
    assert_eq!(secret["data"].as_object().map(|d| d.len()), Some(1));
    assert_eq!(secret["immutable"], true);
    let labels = &secret["metadata"]["labels"];
    assert_eq!(labels[LABEL_SCALE_SET_ID], "3");
    assert_eq!(labels[LABEL_INSTANCE], "host-a");
    assert_eq!(labels[LABEL_RUNNER_NAME], name);

    // The Pod: the template with only the provisioner's fields set.
    let pod = writes[1].json();
    let meta = &pod["metadata"];
    assert_eq!(meta["name"], name);
    assert_eq!(meta["namespace"], NS);
    assert_eq!(
        meta["labels"]["app"], "runners",
        "the template's labels stay"
    );
    assert_eq!(
        meta["annotations"]["team"], "ci",
        "the template's annotations stay"
    );
    assert_eq!(meta["labels"][LABEL_SCALE_SET_ID], "3");
    let set_label = meta["labels"][LABEL_SCALE_SET_NAME]
        .as_str()
        .unwrap_or_default();
    assert!(
        set_label.starts_with("Linux-X64-"),
        "a label value: {set_label}"
    );
    assert_eq!(meta["labels"][LABEL_INSTANCE], "host-a");
    assert_eq!(meta["labels"][LABEL_RUNNER_NAME], name);
    assert_eq!(meta["labels"][LABEL_RUNNER_ID], "12");
    let pod_spec = &pod["spec"];
    assert_eq!(pod_spec["restartPolicy"], "Never");
    assert_eq!(pod_spec["serviceAccountName"], "runner");
    assert_eq!(
        pod_spec["nodeSelector"],
        json!({"kubernetes.io/os": "linux"})
    );
    assert_eq!(
        pod_spec["tolerations"],
        json!([{"key": "dedicated", "operator": "Equal", "value": "ci", "effect": "NoSchedule"}])
    );
    assert_eq!(
        pod_spec["volumes"],
        json!([{"name": "work", "emptyDir": {}}])
    );
    let containers = pod_spec["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1);
    let runner = &containers[0];
    assert_eq!(runner["name"], "runner");
    assert_eq!(runner["image"], "ghcr.io/actions/actions-runner:latest");
    assert_eq!(runner["command"], json!(["/home/runner/run.sh"]));
    assert_eq!(runner["resources"], json!({"limits": {"memory": "4Gi"}}));
    assert_eq!(
        runner["volumeMounts"],
        json!([{"name": "work", "mountPath": "/home/runner/_work"}])
    );
    assert_eq!(
        runner["env"],
        json!([
            {"name": "KEEP", "value": "yes"},
            {"name": VERSION_DEPRECATED_ENV, "value": "1"},
            {"name": JIT_CONFIG_ENV, "valueFrom": {"secretKeyRef": {"name": secret_name, "key": SECRET_KEY, "optional": false}}},
        ])
    );
    // Nothing else was added to the spec.
    let keys: Vec<&String> = pod_spec.as_object().expect("a spec").keys().collect();
    assert_eq!(
        keys,
        vec![
            "containers",
            "nodeSelector",
            "restartPolicy",
            "serviceAccountName",
            "tolerations",
            "volumes"
        ]
    );

    // The owner reference: a merge patch naming the created pod's uid.
    assert_eq!(writes[2].content_type, "application/merge-patch+json");
    let uid = env.pod(name).expect("the pod")["metadata"]["uid"].clone();
    assert_eq!(
        writes[2].json(),
        json!({"metadata": {"ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid}]}})
    );
    let stored = env.secret(name).expect("the Secret");
    assert_eq!(stored["metadata"]["ownerReferences"][0]["uid"], uid);
    // The cluster's garbage collector removes the Secret with its pod.
    assert!(env.fake.delete(Kind::Pod, NS, name, Some(0)));
    assert!(env.secret(name).is_none(), "collected with its pod");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_that_cannot_be_created_takes_its_secret_with_it() {
    let env = Env::new().await;
    let p = env.provisioner().await;
    env.fake.fail_next_creates(
        Kind::Pod,
        1,
        403,
        "Forbidden",
        "pods \"linux-0002\" is forbidden: exceeded quota: runners",
    );
    let e = tokio::time::timeout(DEADLINE, p.create(spec("linux-0002")))
        .await
        .expect("in time")
        .expect_err("the pod is refused");
    assert!(matches!(e, ProvisionError::Backend { .. }), "{e:?}");
    assert!(e.to_string().contains("exceeded quota"), "{e}");
    let writes: Vec<(String, String)> = env
        .writes()
        .iter()
        .map(|r| (r.method.clone(), r.path.clone()))
        .collect();
    assert_eq!(
        writes,
        vec![
            ("POST".into(), format!("/api/v1/namespaces/{NS}/secrets")),
            ("POST".into(), format!("/api/v1/namespaces/{NS}/pods")),
            (
                "DELETE".into(),
                format!("/api/v1/namespaces/{NS}/secrets/linux-0002-jit")
            ),
        ]
    );
    assert!(env.fake.names(Kind::Secret, NS).is_empty());
    let listed = p.list().await.expect("list");
    assert!(listed.is_empty(), "{listed:?}");

    // A pod name taken already: AlreadyExists, and the Secret goes too.
    env.fake.fail_next_creates(
        Kind::Pod,
        1,
        409,
        "AlreadyExists",
        "pods \"linux-0003\" already exists",
    );
    let e = p.create(spec("linux-0003")).await.expect_err("taken");
    assert!(matches!(e, ProvisionError::AlreadyExists(_)), "{e:?}");
    assert!(env.fake.names(Kind::Secret, NS).is_empty());
    // A Secret that cannot be created: no pod is tried.
    env.fake
        .fail_next_creates(Kind::Secret, 1, 500, "InternalError", "etcd is unhappy");
    let before = env.writes().len();
    let e = p.create(spec("linux-0004")).await.expect_err("no Secret");
    assert!(e.to_string().contains("etcd is unhappy"), "{e}");
    let after = env.writes();
    assert_eq!(after.len(), before + 1, "only the Secret was tried");
    assert!(env.fake.names(Kind::Pod, NS).is_empty());
}

// ---- the secret --------------------------------------------------------------------------

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

/// On a current-thread runtime, so that the thread's subscriber sees every task's logs.
#[tokio::test(flavor = "current_thread")]
async fn the_jit_config_is_only_in_the_secrets_data() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let mut env = Env::new().await;
    env.settings.start_deadline_secs = 1;
    env.settings.stop_timeout_secs = 1;
    let p = env.provisioner().await;
    let mut ev = Events::new(&p);
    let _kubelet = env.kubelet();
    // A runner that runs and is stopped.
    create(&p, "linux-0010").await;
    env.fake.run_pod(NS, "linux-0010");
    assert_eq!(ev.next("linux-0010").await, RunnerEvent::Running);
    tokio::time::timeout(DEADLINE, p.stop("linux-0010"))
        .await
        .expect("in time")
        .expect("stop");
    // One that exits, one that cannot pull its image.
    create(&p, "linux-0011").await;
    env.fake.run_pod(NS, "linux-0011");
    env.fake.terminate(NS, "linux-0011", "runner", 1, "Error");
    create(&p, "linux-0012").await;
    env.fake
        .wait_on(NS, "linux-0012", "runner", "ErrImagePull", "no such image");
    assert!(matches!(
        ev.terminal("linux-0011").await,
        RunnerEvent::Exited(_)
    ));
    assert!(matches!(
        ev.next("linux-0012").await,
        RunnerEvent::FailedToStart { .. }
    ));
    let all_logs = logs.text();
    // An API server that echoes the JIT config in its error message. kube's client logs
    // the API's `Status` at debug level, which the daemon never shows (other crates are
    // capped at info there): these logs are filtered as the daemon's are.
    let echo_logs = Captured::default();
    let writer = echo_logs.clone();
    let daemon_like = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            "info,scaleset_autoscaler=trace",
        ))
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let echo_guard = tracing::subscriber::set_default(daemon_like);
    env.fake.fail_next_creates(
        Kind::Pod,
        1,
        422,
        "Invalid",
        &format!("Pod is invalid: {SECRET} / {}", base64(SECRET)),
    );
    let e = p.create(spec("linux-0013")).await.expect_err("refused");
    let listed = p.list().await.expect("list");
    drop(echo_guard);

    let encoded = base64(SECRET);
    for text in [
        e.to_string(),
        format!("{e:?}"),
        format!("{p:?}"),
        format!("{listed:?}"),
    ] {
        assert!(!text.contains(SECRET) && !text.contains(&encoded), "{text}");
    }
    let requests = env.fake.requests();
    let mut secret_posts = 0;
    for r in &requests {
        let mut body = r.json();
        let is_secret_post = r.method == "POST" && r.path.ends_with("/secrets");
        if is_secret_post {
            secret_posts += 1;
            assert_eq!(body["data"][SECRET_KEY], encoded);
            body["data"][SECRET_KEY] = json!("removed");
        }
        let text = if body.is_null() {
            r.body.clone()
        } else {
            body.to_string()
        };
        for t in [&text, &r.query, &r.path] {
            assert!(
                !t.contains(SECRET) && !t.contains(&encoded),
                "the JIT config in a {} {}: {t}",
                r.method,
                r.path
            );
        }
    }
    assert_eq!(secret_posts, 4, "one Secret per create");
    assert!(
        all_logs.contains("runner pod created") && all_logs.contains("kube_client"),
        "trace logs of every crate were captured: {all_logs}"
    );
    for logs in [all_logs, echo_logs.text()] {
        assert!(
            !logs.contains(SECRET) && !logs.contains(&encoded),
            "the JIT config in the logs: {logs}"
        );
    }
}

// ---- what becomes of a runner ------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_then_exited_with_the_code_and_reason_of_the_runner_container() {
    let env = Env::new().await;
    let p = env.provisioner().await;
    let mut ev = Events::new(&p);
    let _kubelet = env.kubelet();
    for (name, code, reason, expected) in [
        (
            "linux-0020",
            137,
            "OOMKilled",
            ExitStatus {
                code: Some(137),
                reason: Some("OOMKilled".into()),
            },
        ),
        ("linux-0021", 7, "Error", ExitStatus::code(7)),
    ] {
        create(&p, name).await;
        env.fake.run_pod(NS, name);
        assert_eq!(ev.next(name).await, RunnerEvent::Running);
        env.fake.terminate(NS, name, "runner", code, reason);
        let end = ev.next(name).await;
        assert_eq!(end, RunnerEvent::Exited(expected.clone()), "{name}");
        if let RunnerEvent::Exited(s) = &end {
            assert_eq!(s.outdated(), code == 7);
        }
        // The end is reported once the pod and the Secret are gone.
        assert!(env.pod(name).is_none(), "{name}: the pod is removed first");
        assert!(env.secret(name).is_none(), "{name}: the Secret too");
        ev.quiet().await;
    }
    assert!(p.list().await.expect("list").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_that_cannot_be_pulled_is_reported_once_past_the_start_deadline() {
    let mut env = Env::new().await;
    env.settings.start_deadline_secs = 1;
    let p = env.provisioner().await;
    let mut ev = Events::new(&p);
    let _kubelet = env.kubelet();
    let name = "linux-0030";
    create(&p, name).await;
    env.fake
        .wait_on(NS, name, "runner", "ErrImagePull", "manifest unknown");
    // The kubelet backs off, as it does.
    env.fake.wait_on(
        NS,
        name,
        "runner",
        "ImagePullBackOff",
        "Back-off pulling image",
    );
    let end = ev.next(name).await;
    let RunnerEvent::FailedToStart { reason } = &end else {
        panic!("expected a failed start, got {end:?}");
    };
    assert!(
        reason.contains("ImagePullBackOff") || reason.contains("ErrImagePull"),
        "{reason}"
    );
    env.all_gone(name).await;
    ev.quiet().await;
    let pod_creates = env
        .fake
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/pods"))
        .count();
    assert_eq!(pod_creates, 1, "never retried here");
    assert!(p.list().await.expect("list").is_empty());

    // No node for it, past the deadline.
    let name = "linux-0031";
    create(&p, name).await;
    env.fake
        .unschedulable(NS, name, "0/3 nodes are available: 3 Insufficient memory.");
    let end = ev.next(name).await;
    let RunnerEvent::FailedToStart { reason } = &end else {
        panic!("expected a failed start, got {end:?}");
    };
    assert!(reason.starts_with("Unschedulable: 0/3 nodes"), "{reason}");
    env.all_gone(name).await;
    ev.quiet().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_image_name_fails_at_once() {
    let mut env = Env::new().await;
    // Far beyond this test's deadline: only an immediate report passes.
    env.settings.start_deadline_secs = 3600;
    let p = env.provisioner().await;
    let mut ev = Events::new(&p);
    let _kubelet = env.kubelet();
    let name = "linux-0032";
    create(&p, name).await;
    env.fake.wait_on(
        NS,
        name,
        "runner",
        "InvalidImageName",
        "couldn't parse image name",
    );
    let end = ev.next(name).await;
    assert_eq!(
        end,
        RunnerEvent::FailedToStart {
            reason: "InvalidImageName: couldn't parse image name".into()
        }
    );
    env.all_gone(name).await;
    ev.quiet().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evicted_pods_and_pods_deleted_behind_our_back_vanish() {
    let env = Env::new().await;
    let p = env.provisioner().await;
    let mut ev = Events::new(&p);
    let _kubelet = env.kubelet();
    // Evicted mid-job.
    create(&p, "linux-0040").await;
    env.fake.run_pod(NS, "linux-0040");
    assert_eq!(ev.next("linux-0040").await, RunnerEvent::Running);
    env.fake
        .evict(NS, "linux-0040", "The node was low on resource: memory.");
    assert_eq!(ev.next("linux-0040").await, RunnerEvent::Vanished);
    env.all_gone("linux-0040").await;
    // Killed with its node (a graceful node shutdown): not an exit of the runner.
    create(&p, "linux-0043").await;
    env.fake.run_pod(NS, "linux-0043");
    assert_eq!(ev.next("linux-0043").await, RunnerEvent::Running);
    env.fake.shut_down_node(NS, "linux-0043");
    assert_eq!(ev.next("linux-0043").await, RunnerEvent::Vanished);
    env.all_gone("linux-0043").await;
    // Deleted at once (kubectl delete --force).
    create(&p, "linux-0041").await;
    env.fake.run_pod(NS, "linux-0041");
    assert_eq!(ev.next("linux-0041").await, RunnerEvent::Running);
    assert!(env.fake.delete(Kind::Pod, NS, "linux-0041", Some(0)));
    assert_eq!(ev.next("linux-0041").await, RunnerEvent::Vanished);
    env.all_gone("linux-0041").await;
    // Deleted gracefully by someone else (kubectl delete): its deletion in progress.
    create(&p, "linux-0042").await;
    env.fake.run_pod(NS, "linux-0042");
    assert_eq!(ev.next("linux-0042").await, RunnerEvent::Running);
    assert!(env.fake.delete(Kind::Pod, NS, "linux-0042", Some(30)));
    assert_eq!(ev.next("linux-0042").await, RunnerEvent::Vanished);
    env.all_gone("linux-0042").await;
    ev.quiet().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_watch_relists_without_losing_an_exit() {
    let env = Env::new().await;
    let p = env.provisioner().await;
    let mut ev = Events::new(&p);
    let _kubelet = env.kubelet();
    let name = "linux-0050";
    create(&p, name).await;
    env.fake.run_pod(NS, name);
    assert_eq!(ev.next(name).await, RunnerEvent::Running);
    let lists = |f: &FakeKube| {
        f.requests()
            .iter()
            .filter(|r| r.method == "GET" && r.path.ends_with("/pods") && !r.is_watch())
            .count()
    };
    let before = lists(&env.fake);
    // The open watch ends with 410 Gone; the exit happens before any new watch, so only a
    // fresh list can show it.
    env.fake.expire_watches();
    env.fake.terminate(NS, name, "runner", 3, "Error");
    assert_eq!(
        ev.next(name).await,
        RunnerEvent::Exited(ExitStatus::code(3))
    );
    assert!(lists(&env.fake) > before, "the pods were listed again");
    env.all_gone(name).await;

    // Deleted while the watch was down: missing from the relist, so gone.
    let name = "linux-0052";
    create(&p, name).await;
    env.fake.run_pod(NS, name);
    assert_eq!(ev.next(name).await, RunnerEvent::Running);
    env.fake.expire_watches();
    assert!(env.fake.delete(Kind::Pod, NS, name, Some(0)));
    assert_eq!(ev.next(name).await, RunnerEvent::Vanished);
    env.all_gone(name).await;

    // The next watch expires at once too: still followed.
    let name = "linux-0051";
    create(&p, name).await;
    env.fake.expire_next_watch();
    env.fake.expire_watches();
    env.fake.run_pod(NS, name);
    assert_eq!(ev.next(name).await, RunnerEvent::Running);
    env.fake.terminate(NS, name, "runner", 0, "Completed");
    assert_eq!(
        ev.next(name).await,
        RunnerEvent::Exited(ExitStatus::code(0))
    );
    ev.quiet().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_stuck_terminating_is_force_deleted_only_when_configured() {
    for force in [false, true] {
        let mut env = Env::new().await;
        env.settings.stop_timeout_secs = 1;
        env.settings.terminating_deadline_secs = 1;
        env.settings.force_delete = force;
        let p = env.provisioner().await;
        let mut ev = Events::new(&p);
        // A kubelet that never finishes a deletion (a lost node).
        let name = "linux-0060";
        create(&p, name).await;
        env.fake.run_pod(NS, name);
        assert_eq!(ev.next(name).await, RunnerEvent::Running);
        let stopped = tokio::time::timeout(DEADLINE, p.stop(name))
            .await
            .expect("stop returns in time");
        let grace_zero = env.fake.requests().iter().any(|r| {
            r.method == "DELETE"
                && r.path.ends_with(&format!("/pods/{name}"))
                && r.json()["gracePeriodSeconds"] == 0
        });
        if force {
            stopped.expect("force-deleted");
            assert!(
                grace_zero,
                "force_delete = true deletes with grace period 0"
            );
            assert!(env.pod(name).is_none());
            assert!(matches!(ev.next(name).await, RunnerEvent::Exited(_)));
            env.all_gone(name).await;
        } else {
            let e = stopped.expect_err("still terminating");
            assert!(e.to_string().contains("still terminating"), "{e}");
            assert!(!grace_zero, "never force-deleted without force_delete");
            assert!(env.fake.is_terminating(NS, name), "left to the cluster");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_instance_lists_adopts_and_releases_what_the_old_one_left() {
    let env = Env::new().await;
    let _kubelet = env.kubelet();
    {
        let old = env.provisioner().await;
        let mut old_ev = Events::new(&old);
        for name in ["linux-0070", "linux-0071"] {
            create(&old, name).await;
            env.fake.run_pod(NS, name);
            assert_eq!(old_ev.next(name).await, RunnerEvent::Running);
        }
        // Dropped: its watch ends, its pods stay.
    }
    // linux-0073 ran and exited while no instance watched.
    {
        let old = env.provisioner().await;
        let mut old_ev = Events::new(&old);
        create(&old, "linux-0073").await;
        env.fake.run_pod(NS, "linux-0073");
        assert_eq!(old_ev.next("linux-0073").await, RunnerEvent::Running);
    }
    env.fake.terminate(NS, "linux-0073", "runner", 7, "Error");
    // A Secret left without its pod (a crash between the two creates).
    env.fake.insert(
        Kind::Secret,
        NS,
        json!({"metadata": {"name": "linux-0072-jit", "labels": {
            LABEL_SCALE_SET_ID: "3", LABEL_INSTANCE: "host-a", LABEL_RUNNER_NAME: "linux-0072", LABEL_RUNNER_ID: "9"
        }}, "data": {SECRET_KEY: base64("x")}}),
    );
    // Another instance's pod is not ours.
    env.fake.insert(
        Kind::Pod,
        NS,
        json!({"metadata": {"name": "other", "labels": {LABEL_SCALE_SET_ID: "3", LABEL_INSTANCE: "host-b"}}, "spec": {"containers": [{"name": "runner"}]}}),
    );
    let p = env.provisioner().await;
    let mut ev = Events::new(&p);
    let mut listed = p.list().await.expect("list");
    listed.sort_by(|a, b| a.name.cmp(&b.name));
    let summary: Vec<(String, i64, bool)> = listed
        .iter()
        .map(|r| {
            (
                r.name.clone(),
                r.runner_id.get(),
                r.state == RunnerState::Running,
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("linux-0070".into(), 12, true),
            ("linux-0071".into(), 12, true),
            ("linux-0072".into(), 9, false),
            ("linux-0073".into(), 12, false),
        ]
    );
    assert_eq!(listed[3].state, RunnerState::Exited(ExitStatus::code(7)));
    assert!(
        matches!(listed[2].state, RunnerState::Failed { .. }),
        "{:?}",
        listed[2]
    );
    assert!(p.adopt("linux-0070").await.expect("adopt"));
    assert!(p.adopt("linux-0073").await.expect("adopt"));
    assert_eq!(
        ev.next("linux-0073").await,
        RunnerEvent::Exited(ExitStatus::code(7)),
        "an adopted runner that ended meanwhile reports its exit"
    );
    env.all_gone("linux-0073").await;
    assert!(!p.adopt("other").await.expect("adopt"), "not ours");
    tokio::time::timeout(DEADLINE, p.release("linux-0071"))
        .await
        .expect("in time")
        .expect("release");
    tokio::time::timeout(DEADLINE, p.release("linux-0072"))
        .await
        .expect("in time")
        .expect("release");
    env.all_gone("linux-0071").await;
    env.all_gone("linux-0072").await;
    // The adopted runner's exit is reported by the new instance.
    env.fake
        .terminate(NS, "linux-0070", "runner", 0, "Completed");
    assert_eq!(
        ev.next("linux-0070").await,
        RunnerEvent::Exited(ExitStatus::code(0))
    );
    env.all_gone("linux-0070").await;
    ev.quiet().await;
    assert!(
        env.pod("other").is_some(),
        "another instance's pod is left alone"
    );
}
