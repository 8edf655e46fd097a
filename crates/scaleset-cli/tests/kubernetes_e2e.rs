//! End to end with Kubernetes: the `scaleset` binary runs `scaleset run --provisioner
//! kubernetes` against the in-process simulator and the fake API server
//! (`scaleset-autoscaler/tests/support/fake_kube.rs`, reached through a kubeconfig). The
//! test is the kubelet: when a pod appears it reads the JIT config from the pod's Secret (as
//! the real kubelet resolves the `secretKeyRef`), runs `scaleset sim-runner` with it, marks
//! the pod running, and terminated with the runner's exit code when it ends; a deleted pod's
//! runner gets SIGTERM (SIGKILL after the grace period), then the pod is removed.
//!
//! Every wait has a deadline; nothing asserts on wall-clock durations.

mod common;
#[path = "../../scaleset-autoscaler/tests/support/fake_kube.rs"]
mod fake_kube;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use common::{Streaming, TOKEN, cmd};
use fake_kube::{FakeKube, Kind};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use scaleset_sim::{EnqueueJobs, Simulator};
use serde_json::Value;
use tokio::sync::mpsc;

const LONG: Duration = Duration::from_secs(120);
const NS: &str = "e2e";
/// How long a deleted pod's runner has between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(10);

/// The test's kubelet: `scaleset sim-runner` per pod.
struct SimKubelet {
    task: tokio::task::JoinHandle<()>,
    /// Every JIT config it read from a Secret.
    jit_configs: Arc<Mutex<Vec<String>>>,
}

impl Drop for SimKubelet {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A runner process the kubelet started.
struct Proc {
    pid: Pid,
    terminated_at: Option<tokio::time::Instant>,
}

/// The JIT config the pod's runner container gets from its Secret.
fn jit_config_of(fake: &FakeKube, pod: &Value) -> Option<String> {
    let env = pod["spec"]["containers"][0]["env"].as_array()?;
    let key_ref = env
        .iter()
        .find(|e| e["name"] == "ACTIONS_RUNNER_INPUT_JITCONFIG")?["valueFrom"]["secretKeyRef"]
        .clone();
    let secret = fake.get(Kind::Secret, NS, key_ref["name"].as_str()?)?;
    let data = secret["data"][key_ref["key"].as_str()?]
        .as_str()?
        .to_string();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .ok()?;
    String::from_utf8(bytes).ok()
}

impl SimKubelet {
    fn spawn(fake: Arc<FakeKube>) -> SimKubelet {
        let jit_configs = Arc::new(Mutex::new(Vec::new()));
        let seen = jit_configs.clone();
        let task = tokio::spawn(async move {
            let (exits_tx, mut exits) = mpsc::unbounded_channel::<(String, i32)>();
            let mut started: HashSet<String> = HashSet::new();
            let mut procs: HashMap<String, Proc> = HashMap::new();
            loop {
                let rv = fake.resource_version();
                for pod in fake.list(Kind::Pod, NS) {
                    let name = pod["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    let uid = pod["metadata"]["uid"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    let deleting = !pod["metadata"]["deletionTimestamp"].is_null();
                    if deleting {
                        match procs.get_mut(&name) {
                            Some(p) => match p.terminated_at {
                                None => {
                                    let _ = nix::sys::signal::kill(p.pid, Signal::SIGTERM);
                                    p.terminated_at = Some(tokio::time::Instant::now());
                                }
                                Some(at) if at.elapsed() > GRACE => {
                                    let _ = nix::sys::signal::kill(p.pid, Signal::SIGKILL);
                                }
                                Some(_) => {}
                            },
                            None => {
                                fake.finish_termination(NS, &name);
                            }
                        }
                        continue;
                    }
                    if !started.insert(uid) {
                        continue;
                    }
                    let Some(jit) = jit_config_of(&fake, &pod) else {
                        fake.wait_on(
                            NS,
                            &name,
                            "runner",
                            "CreateContainerConfigError",
                            "the JIT config Secret is missing",
                        );
                        continue;
                    };
                    seen.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(jit.clone());
                    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_scaleset"))
                        .arg("sim-runner")
                        .env("ACTIONS_RUNNER_INPUT_JITCONFIG", jit)
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::null())
                        .kill_on_drop(true)
                        .spawn();
                    let mut child = match child {
                        Ok(c) => c,
                        Err(e) => {
                            fake.wait_on(NS, &name, "runner", "RunContainerError", &e.to_string());
                            continue;
                        }
                    };
                    let pid = child
                        .id()
                        .and_then(|p| i32::try_from(p).ok())
                        .map(Pid::from_raw)
                        .expect("a started child has a pid");
                    procs.insert(
                        name.clone(),
                        Proc {
                            pid,
                            terminated_at: None,
                        },
                    );
                    fake.run_pod(NS, &name);
                    let tx = exits_tx.clone();
                    tokio::spawn(async move {
                        let code = match child.wait().await {
                            Ok(s) => s.code().unwrap_or(143),
                            Err(_) => 137,
                        };
                        let _ = tx.send((name, code));
                    });
                }
                while let Ok((name, code)) = exits.try_recv() {
                    procs.remove(&name);
                    let reason = if code == 0 { "Completed" } else { "Error" };
                    fake.terminate(NS, &name, "runner", code, reason);
                    if fake.is_terminating(NS, &name) {
                        fake.finish_termination(NS, &name);
                    }
                }
                tokio::select! {
                    _ = fake.changed_since(rv, Duration::from_millis(200)) => {}
                    Some((name, code)) = exits.recv() => {
                        procs.remove(&name);
                        let reason = if code == 0 { "Completed" } else { "Error" };
                        fake.terminate(NS, &name, "runner", code, reason);
                        if fake.is_terminating(NS, &name) {
                            fake.finish_termination(NS, &name);
                        }
                    }
                }
            }
        });
        SimKubelet { task, jit_configs }
    }
}

fn temp_dir(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "scaleset-k8s-e2e-{tag}-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn run_cmd(sim: &Simulator, dir: &Path, name: &str, extra: &[&str]) -> Streaming {
    let kubeconfig = dir.join("kubeconfig");
    let template = dir.join("pod.yaml");
    let mut c = cmd();
    c.args([
        "run",
        "--url",
        &sim.config_url(),
        "--token",
        TOKEN,
        "--name",
        name,
        "--label",
        name,
        "--provisioner",
        "kubernetes",
        "--namespace",
        NS,
        "--pod-template",
        &template.display().to_string(),
        "--kubeconfig",
        &kubeconfig.display().to_string(),
        "--context",
        "fake",
        // Trace level: the JIT config must not be in the daemon's log even there.
        "--log-level",
        "trace",
    ])
    .args(extra)
    .env("SCALESET_INSTANCE", format!("e2e-{name}"));
    Streaming::spawn(c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_jobs_with_max_3_pods_all_complete_then_drain_leaves_no_pod_or_secret() {
    let sim = common::sim().await;
    let fake = Arc::new(FakeKube::start().await);
    let dir = temp_dir("ten");
    std::fs::write(dir.join("kubeconfig"), fake.kubeconfig(NS)).expect("kubeconfig");
    std::fs::write(
        dir.join("pod.yaml"),
        "apiVersion: v1\nkind: Pod\nspec:\n  containers:\n    - name: runner\n      image: scaleset-e2e/sim-runner:1\n",
    )
    .expect("pod template");
    let kubelet = SimKubelet::spawn(fake.clone());
    let mut run = run_cmd(
        &sim,
        &dir,
        "k8s-e2e",
        &[
            "--max-runners",
            "3",
            "--shutdown",
            "drain",
            "--drain-timeout",
            "30",
        ],
    );
    run.wait_stderr("listening").await;
    sim.enqueue_jobs(EnqueueJobs {
        labels: vec!["k8s-e2e".into()],
        count: 10,
        duration: Duration::from_millis(200),
        ..Default::default()
    })
    .await
    .expect("enqueue");
    let (done, st) = sim
        .wait_until(LONG, |st| {
            st.jobs.len() == 10 && st.jobs.iter().all(|j| j.status == "completed")
        })
        .await;
    assert!(
        done,
        "not all jobs completed: {} completed; pods {:?}",
        st.jobs_in("completed"),
        fake.names(Kind::Pod, NS)
    );
    assert!(
        st.jobs
            .iter()
            .all(|j| j.result.as_deref() == Some("succeeded")),
        "all succeeded"
    );

    run.sigterm();
    let out = run.finish().await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_no_pod_or_secret(&fake);
    let peak = fake.peak(Kind::Pod, NS);
    assert!(
        peak <= 3,
        "never more than max runners pods, terminating ones included: {peak}"
    );
    assert!(peak >= 2, "pods ran in parallel: {peak}");
    let st = sim.state();
    assert!(
        st.runners.is_empty(),
        "no runner stays registered: {:?}",
        st.runners
    );
    assert!(
        st.sessions.is_empty(),
        "the session is deleted: {:?}",
        st.sessions
    );
    let minted = sim
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/generatejitconfig"))
        .count();
    assert_eq!(minted, 10, "one JIT config per job");

    // The JIT configs reached the runners through their Secrets only.
    let jit_configs = kubelet
        .jit_configs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    assert_eq!(
        jit_configs.len(),
        10,
        "each minted JIT config ran in one pod"
    );
    let distinct: HashSet<&String> = jit_configs.iter().collect();
    assert_eq!(distinct.len(), 10, "no JIT config ran twice");
    for r in fake.requests() {
        if r.method == "POST" && r.path.ends_with("/secrets") {
            continue;
        }
        for jit in &jit_configs {
            assert!(
                !r.body.contains(jit.as_str()),
                "a JIT config in a {} {}",
                r.method,
                r.path
            );
        }
    }
    for jit in &jit_configs {
        assert!(
            !out.stderr.contains(jit.as_str()),
            "a JIT config in the daemon's log"
        );
    }
    drop(kubelet);
    let _ = std::fs::remove_dir_all(&dir);
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// `GET path` on 127.0.0.1:port: the status and the body (`None` when nothing listens).
async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// Polls `/readyz` until its answer satisfies `ok` (under [`LONG`]).
async fn wait_readyz(port: u16, ok: impl Fn(u16, &str) -> bool) -> (u16, String) {
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let got = tokio::time::timeout(Duration::from_secs(5), http_get(port, "/readyz"))
            .await
            .ok()
            .flatten();
        if let Some((code, body)) = &got
            && ok(*code, body)
        {
            return (*code, body.clone());
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz never answered as wanted; last: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (under [`LONG`]) until the leader has removed every pod whose job completed.
///
/// A graceful stop with leader election hands busy pods over to the next leader; a pod whose
/// job has just ended counts as busy until its exit is seen, so a test that wants nothing
/// left behind waits for the clean-up before it stops the last replica.
async fn wait_no_pods(fake: &FakeKube) {
    let deadline = tokio::time::Instant::now() + LONG;
    while !fake.names(Kind::Pod, NS).is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "pods of completed jobs were never removed: {:?}",
            fake.names(Kind::Pod, NS)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asserts that no Pod and no Secret of the namespace is left.
fn assert_no_pod_or_secret(fake: &FakeKube) {
    let pods = fake.names(Kind::Pod, NS);
    assert!(pods.is_empty(), "no pod is left: {pods:?}");
    let secrets = fake.names(Kind::Secret, NS);
    assert!(secrets.is_empty(), "no Secret is left: {secrets:?}");
}

/// `scaleset run --config` of one replica of a leader-elected daemon.
fn replica(config: &Path, instance: &str, port: u16) -> Streaming {
    let mut c = cmd();
    c.args([
        "run",
        "--config",
        &config.display().to_string(),
        "--token",
        TOKEN,
        "--metrics-addr",
        &format!("127.0.0.1:{port}"),
        "--log-level",
        "info",
    ])
    .env("SCALESET_INSTANCE", instance);
    Streaming::spawn(c)
}

/// The simulator (sessions of a dead leader expire 3 s after its last poll, as GitHub's
/// do), the fake API server, and a config of one scale set (max 3 pods) with a short Lease
/// (2 s, renew deadline 1.5 s, retry 0.3 s).
async fn ha_setup(tag: &str) -> (Simulator, Arc<FakeKube>, PathBuf, PathBuf) {
    let sim = common::sim_with(|c| c.session_idle_timeout = Duration::from_secs(3)).await;
    let fake = Arc::new(FakeKube::start().await);
    let dir = temp_dir(tag);
    std::fs::write(dir.join("kubeconfig"), fake.kubeconfig(NS)).expect("kubeconfig");
    std::fs::write(
        dir.join("pod.yaml"),
        "apiVersion: v1\nkind: Pod\nspec:\n  containers:\n    - name: runner\n      image: scaleset-e2e/sim-runner:1\n",
    )
    .expect("pod template");
    let config = dir.join("scaleset.toml");
    std::fs::write(
        &config,
        format!(
            "[connection]\nurl = \"{url}\"\n\n[[scale_set]]\nname = \"k8s-ha\"\nmax_runners = 3\nshutdown = \"drain\"\ndrain_timeout_secs = 30\n\n[scale_set.provisioner]\nkind = \"kubernetes\"\nnamespace = \"{NS}\"\npod_template = \"{template}\"\nkubeconfig = \"{kubeconfig}\"\ncontext = \"fake\"\n\n[leader_election]\nlease_name = \"scaleset-e2e\"\nlease_duration_secs = 2\nrenew_deadline_secs = 1.5\nretry_period_secs = 0.3\n",
            url = sim.config_url(),
            template = dir.join("pod.yaml").display(),
            kubeconfig = dir.join("kubeconfig").display(),
        ),
    )
    .expect("config");
    (sim, fake, dir, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_one_leads_and_the_standby_takes_over_a_killed_leaders_pods() {
    let (sim, fake, dir, config) = ha_setup("ha").await;
    let kubelet = SimKubelet::spawn(fake.clone());
    let (port_a, port_b) = (free_port(), free_port());
    let mut a = replica(&config, "replica-a", port_a);
    a.wait_stderr("listening").await;
    let mut b = replica(&config, "replica-b", port_b);
    // The standby is ready (it can take over) and says it is not the leader.
    let (_, body) = wait_readyz(port_b, |code, body| code == 200 && body.contains("standby")).await;
    assert!(
        body.contains("not the leader") && body.contains("replica-a"),
        "{body}"
    );
    let (code, body) = wait_readyz(port_a, |code, _| code == 200).await;
    assert!(
        !body.contains("standby"),
        "the leader is no standby: {code} {body}"
    );

    // Four jobs, three at once; the leader dies with three runner pods at work. The jobs
    // outlast the takeover (the lease's 2 s, then the dead leader's session expiring after
    // 3 s), so the standby finds the pods busy and adopts them.
    sim.enqueue_jobs(EnqueueJobs {
        labels: vec!["k8s-ha".into()],
        count: 4,
        duration: Duration::from_secs(10),
        ..Default::default()
    })
    .await
    .expect("enqueue");
    let (busy, st) = sim.wait_until(LONG, |st| st.jobs_in("running") == 3).await;
    assert!(busy, "three jobs run: {:?}", st.jobs);
    let lease = fake
        .get(Kind::Lease, NS, "scaleset-e2e")
        .expect("the lease");
    assert_eq!(lease["spec"]["holderIdentity"], "replica-a");
    let pods_by_a = fake.names(Kind::Pod, NS);
    assert_eq!(pods_by_a.len(), 3, "{pods_by_a:?}");
    a.signal(Signal::SIGKILL);
    let out_a = a.finish().await;
    assert_ne!(out_a.code, 0);

    // The standby takes over, adopts the three pods, and runs the fourth job.
    b.wait_stderr("this replica leads now").await;
    let (done, st) = sim
        .wait_until(LONG, |st| {
            st.jobs.len() == 4 && st.jobs.iter().all(|j| j.status == "completed")
        })
        .await;
    assert!(done, "every job completed: {:?}", st.jobs);
    assert!(
        st.jobs
            .iter()
            .all(|j| j.result.as_deref() == Some("succeeded")),
        "none was lost: {:?}",
        st.jobs
    );
    let (code, body) = wait_readyz(port_b, |code, _| code == 200).await;
    assert!(!body.contains("standby"), "the new leader: {code} {body}");
    wait_no_pods(&fake).await;
    b.sigterm();
    let out_b = b.finish().await;
    assert_eq!(out_b.code, 0, "{}", out_b.stderr);
    let leads = out_b.stderr.find("this replica leads now").expect("b led");
    let listening = out_b.stderr.find("listening").expect("b listened");
    assert!(leads < listening, "b opened no session as a standby");

    let minted = sim
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/generatejitconfig"))
        .count();
    assert_eq!(
        minted,
        4,
        "a runner per job: none created twice; jobs {:?}\nA: {}\nB: {}",
        sim.state().jobs,
        out_a.stderr,
        out_b.stderr
    );
    let jit_configs = kubelet
        .jit_configs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    assert_eq!(jit_configs.len(), 4, "each ran in one pod");
    assert!(
        fake.peak(Kind::Pod, NS) <= 3,
        "never more than max runners pods"
    );
    assert_no_pod_or_secret(&fake);
    let st = sim.state();
    assert!(st.sessions.is_empty(), "{:?}", st.sessions);
    assert!(st.runners.is_empty(), "{:?}", st.runners);
    // A graceful stop gives the lease up.
    let lease = fake
        .get(Kind::Lease, NS, "scaleset-e2e")
        .expect("the lease");
    assert!(lease["spec"]["holderIdentity"].is_null(), "{lease}");
    drop(kubelet);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn lease_flags_need_leader_election_and_bad_values_name_their_flag() {
    let r = common::bare(&["run", "--name", "x", "--lease-name", "y"]).await;
    r.expect_code(2);
    assert!(r.stderr.contains("--leader-election"), "{}", r.stderr);
    let dir = temp_dir("flags");
    let template = dir.join("pod.yaml");
    std::fs::write(&template, "spec:\n  containers:\n    - name: runner\n").expect("template");
    let r = common::bare(&[
        "run",
        "--url",
        "https://github.com/o",
        "--token",
        TOKEN,
        "--name",
        "x",
        "--provisioner",
        "kubernetes",
        "--pod-template",
        &template.display().to_string(),
        "--leader-election",
        "--lease-name",
        "Not_A_Name",
    ])
    .await;
    r.expect_code(2);
    assert!(r.last_err_line().contains("--lease-name"), "{}", r.stderr);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_leader_is_replaced_and_on_waking_stops_at_once_without_creating_pods() {
    let (sim, fake, dir, config) = ha_setup("frozen").await;
    let kubelet = SimKubelet::spawn(fake.clone());
    let (port_a, port_b) = (free_port(), free_port());
    let mut a = replica(&config, "replica-a", port_a);
    a.wait_stderr("listening").await;
    let mut b = replica(&config, "replica-b", port_b);
    wait_readyz(port_b, |code, body| code == 200 && body.contains("standby")).await;
    sim.enqueue_jobs(EnqueueJobs {
        labels: vec!["k8s-ha".into()],
        count: 2,
        duration: Duration::from_secs(10),
        ..Default::default()
    })
    .await
    .expect("enqueue");
    let (busy, st) = sim.wait_until(LONG, |st| st.jobs_in("running") == 2).await;
    assert!(busy, "two jobs run: {:?}", st.jobs);

    // The leader freezes (a stalled node, a long GC pause): its renewals stop.
    a.signal(Signal::SIGSTOP);
    b.wait_stderr("this replica leads now").await;
    b.wait_stderr("listening").await;
    let lease = fake
        .get(Kind::Lease, NS, "scaleset-e2e")
        .expect("the lease");
    assert_eq!(lease["spec"]["holderIdentity"], "replica-b");
    let pods_before = fake
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/pods"))
        .count();
    // It wakes up past its renew deadline: it stops at once and exits, leaving the pods.
    a.signal(Signal::SIGCONT);
    let out_a = a.finish().await;
    assert_eq!(out_a.code, 1, "{}", out_a.stderr);
    assert!(
        out_a
            .stderr
            .contains("lost the leader lease e2e/scaleset-e2e"),
        "{}",
        out_a.stderr
    );

    let (done, st) = sim
        .wait_until(LONG, |st| {
            st.jobs.len() == 2 && st.jobs.iter().all(|j| j.status == "completed")
        })
        .await;
    assert!(done, "both jobs completed: {:?}", st.jobs);
    assert!(
        st.jobs
            .iter()
            .all(|j| j.result.as_deref() == Some("succeeded")),
        "{:?}",
        st.jobs
    );
    let pods_after = fake
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/pods"))
        .count();
    assert_eq!(
        pods_before, 2,
        "the two pods of the first leader, none by the standby"
    );
    wait_no_pods(&fake).await;
    b.sigterm();
    let out_b = b.finish().await;
    assert_eq!(
        pods_after, 2,
        "no pod created after the takeover: the old leader stopped\nA:\n{}\nB:\n{}",
        out_a.stderr, out_b.stderr
    );
    assert_eq!(out_b.code, 0, "{}", out_b.stderr);
    assert!(out_b.stderr.contains("adopted=2"), "{}", out_b.stderr);
    assert_no_pod_or_secret(&fake);
    assert!(
        sim.state().sessions.is_empty(),
        "{:?}",
        sim.state().sessions
    );
    drop(kubelet);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_told_to_stop_hands_its_busy_pods_over_without_draining_them() {
    // The scale set's policy is `drain` (30 s); the jobs last 20 s: a leader that drained
    // before giving the Lease up would still be running when they end.
    let (sim, fake, dir, config) = ha_setup("handover").await;
    let kubelet = SimKubelet::spawn(fake.clone());
    let (port_a, port_b) = (free_port(), free_port());
    let mut a = replica(&config, "replica-a", port_a);
    a.wait_stderr("listening").await;
    let mut b = replica(&config, "replica-b", port_b);
    wait_readyz(port_b, |code, body| code == 200 && body.contains("standby")).await;
    sim.enqueue_jobs(EnqueueJobs {
        labels: vec!["k8s-ha".into()],
        count: 2,
        duration: Duration::from_secs(20),
        ..Default::default()
    })
    .await
    .expect("enqueue");
    let (busy, st) = sim.wait_until(LONG, |st| st.jobs_in("running") == 2).await;
    assert!(busy, "two jobs run: {:?}", st.jobs);

    a.sigterm();
    let out_a = a.finish().await;
    assert_eq!(out_a.code, 0, "{}", out_a.stderr);
    let st = sim.state();
    assert_eq!(
        st.jobs_in("running"),
        2,
        "the leader left without waiting for its busy runners: {:?}\n{}",
        st.jobs,
        out_a.stderr
    );
    assert!(out_a.stderr.contains("handing over"), "{}", out_a.stderr);
    assert_eq!(
        fake.names(Kind::Pod, NS).len(),
        2,
        "the busy pods run on: {}",
        out_a.stderr
    );
    let lease = fake
        .get(Kind::Lease, NS, "scaleset-e2e")
        .expect("the lease");
    assert_ne!(lease["spec"]["holderIdentity"], "replica-a", "{lease}");

    // The standby leads, adopts both pods, and cleans up after their jobs.
    b.wait_stderr("this replica leads now").await;
    b.wait_stderr("listening").await;
    let (done, st) = sim
        .wait_until(LONG, |st| {
            st.jobs.len() == 2 && st.jobs.iter().all(|j| j.status == "completed")
        })
        .await;
    assert!(done, "both jobs completed: {:?}", st.jobs);
    assert!(
        st.jobs
            .iter()
            .all(|j| j.result.as_deref() == Some("succeeded")),
        "{:?}",
        st.jobs
    );
    let (gone, _) = sim.wait_until(LONG, |st| st.runners.is_empty()).await;
    wait_no_pods(&fake).await;
    b.sigterm();
    let out_b = b.finish().await;
    assert!(
        gone,
        "no registration left\nA:\n{}\nB:\n{}",
        out_a.stderr, out_b.stderr
    );
    assert_eq!(out_b.code, 0, "{}", out_b.stderr);
    assert!(out_b.stderr.contains("adopted=2"), "{}", out_b.stderr);
    let created = fake
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/pods"))
        .count();
    assert_eq!(created, 2, "no pod created twice\nB:\n{}", out_b.stderr);
    assert_no_pod_or_secret(&fake);
    assert!(
        sim.state().sessions.is_empty(),
        "{:?}",
        sim.state().sessions
    );
    drop(kubelet);
    let _ = std::fs::remove_dir_all(&dir);
}
