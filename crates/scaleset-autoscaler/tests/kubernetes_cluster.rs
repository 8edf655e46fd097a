//! Against a real cluster, ignored by default (no cluster runs on the CI machines). Run with
//! a kubeconfig whose user may manage pods, Secrets and Leases in a scratch namespace:
//!
//! ```sh
//! KUBECONFIG=~/.kube/config SCALESET_TEST_NAMESPACE=scaleset-test \
//!     cargo test -p scaleset-autoscaler --features kubernetes --test kubernetes_cluster -- --ignored
//! ```
//!
//! The runner pod is `busybox` checking that the JIT config reached it through its Secret;
//! no GitHub account is involved.
#![cfg(feature = "kubernetes")]

use std::time::Duration;

use actions_scaleset::{EncodedJitConfig, RunnerId, ScaleSetId};
use scaleset_autoscaler::config::LeaderElectionSettings;
use scaleset_autoscaler::config::provisioner::KubernetesSettings;
use scaleset_autoscaler::leader::LeaderElection;
use scaleset_autoscaler::provisioner::kubernetes::KubernetesProvisioner;
use scaleset_autoscaler::provisioner::{
    ExitStatus, Provisioner, RunnerEvent, RunnerSpec, ScaleSetIdentity,
};
use tokio_util::sync::CancellationToken;

/// Image pulls on a fresh node may take a while.
const DEADLINE: Duration = Duration::from_secs(300);

fn namespace() -> String {
    std::env::var("SCALESET_TEST_NAMESPACE").unwrap_or_else(|_| "default".into())
}

fn unique() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{}-{nanos:x}", std::process::id())
}

async fn client() -> kube::Client {
    scaleset_autoscaler::provisioner::kubernetes::client_for(None, None)
        .await
        .expect("a cluster configuration (KUBECONFIG or in-cluster)")
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: KUBECONFIG=... cargo test -p scaleset-autoscaler --features kubernetes --test kubernetes_cluster -- --ignored"]
async fn a_runner_pod_gets_its_jit_config_from_its_secret_runs_and_leaves_nothing() {
    let dir = std::env::temp_dir().join(format!("scaleset-cluster-{}", unique()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let template = dir.join("pod.yaml");
    std::fs::write(
        &template,
        "apiVersion: v1\nkind: Pod\nspec:\n  automountServiceAccountToken: false\n  containers:\n    - name: runner\n      image: busybox:1.36\n      command: [\"sh\", \"-c\", \"test \\\"$ACTIONS_RUNNER_INPUT_JITCONFIG\\\" = cluster-test-jit\"]\n",
    )
    .expect("template");
    let mut settings = KubernetesSettings::new(&template);
    settings.namespace = namespace();
    let identity = ScaleSetIdentity {
        id: ScaleSetId::new(1),
        name: format!("cluster-test-{}", unique()),
        instance: "cluster-test".into(),
    };
    let p = KubernetesProvisioner::with_client(client().await, settings, identity)
        .await
        .expect("connected");
    let name = format!("runner-{}", unique());
    p.create(RunnerSpec {
        name: name.clone(),
        runner_id: RunnerId::new(1),
        jit_config: EncodedJitConfig::new("cluster-test-jit"),
    })
    .await
    .expect("created");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let end = loop {
        let e = tokio::time::timeout_at(deadline, p.next_event())
            .await
            .expect("the pod ended before the deadline")
            .expect("the provisioner stays open");
        if e.name == name && !matches!(e.event, RunnerEvent::Running) {
            break e.event;
        }
    };
    assert!(
        matches!(end, RunnerEvent::Exited(ExitStatus { code: Some(0), .. })),
        "the JIT config reached the runner container: {end:?}"
    );
    let left = p.list().await.expect("list");
    assert!(left.is_empty(), "no pod left: {left:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: KUBECONFIG=... cargo test -p scaleset-autoscaler --features kubernetes --test kubernetes_cluster -- --ignored"]
async fn one_lease_one_leader_and_a_release_hands_over() {
    let lease = format!("scaleset-test-{}", unique());
    let settings = |identity: &str| LeaderElectionSettings {
        lease_name: lease.clone(),
        namespace: namespace(),
        identity: identity.into(),
        lease_duration: Duration::from_secs(15),
        renew_deadline: Duration::from_secs(10),
        retry_period: Duration::from_secs(2),
        kubeconfig: None,
        context: None,
    };
    let a = LeaderElection::with_client(client().await, settings("a"));
    let b = LeaderElection::with_client(client().await, settings("b"));
    let leader = tokio::time::timeout(DEADLINE, a.acquire(&CancellationToken::new(), |_| {}))
        .await
        .expect("in time")
        .expect("a leads");
    let standby = tokio::spawn(async move { b.acquire(&CancellationToken::new(), |_| {}).await });
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!standby.is_finished(), "b waits while a renews");
    leader.release().await;
    let b_leads = tokio::time::timeout(Duration::from_secs(10), standby)
        .await
        .expect("b took over after the release, long before the lease ran out")
        .expect("no panic")
        .expect("b leads");
    b_leads.release().await;
    let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
        kube::Api::namespaced(client().await, &namespace());
    let _ = leases.delete(&lease, &Default::default()).await;
}
