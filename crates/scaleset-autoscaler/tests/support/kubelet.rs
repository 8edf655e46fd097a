//! A test kubelet over the fake API server (`fake_kube.rs`): it starts each new pod of a
//! namespace as the test's policy says, and finishes graceful deletions the way a kubelet
//! does (the containers stop, then the pod is removed and its Secret with it).
//!
//! It reacts to every change of the fake's store, and looks again at least every 200 ms;
//! it stops when dropped.

#![allow(dead_code)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::fake_kube::{FakeKube, Kind};

/// What becomes of a new pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    /// Its containers run until it is deleted.
    Run,
    /// Its containers run, then the runner container exits with this code.
    Exit(i32),
    /// The runner container waits with this reason (`ErrImagePull`, ...).
    Wait(String),
    /// Nothing: the test drives it.
    Leave,
}

/// The kubelet's settings.
pub struct Policy {
    /// The namespace it serves.
    pub namespace: String,
    /// The runner container's name.
    pub container: String,
    /// Whether graceful deletions are finished (false: pods stay terminating).
    pub finish_deletions: bool,
    /// The exit code of a runner container stopped by a deletion.
    pub stop_code: i32,
}

/// The running kubelet.
pub struct Kubelet {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn name_of(pod: &Value) -> String {
    pod["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

impl Kubelet {
    /// Starts a kubelet over `fake`; `start` decides what becomes of each new pod (it sees
    /// the fake and the pod).
    pub fn spawn(
        fake: Arc<FakeKube>,
        policy: Policy,
        start: impl Fn(&FakeKube, &Value) -> Start + Send + 'static,
    ) -> Kubelet {
        let task = tokio::spawn(async move {
            let mut started: HashSet<String> = HashSet::new();
            loop {
                let rv = fake.resource_version();
                let ns = policy.namespace.as_str();
                for pod in fake.list(Kind::Pod, ns) {
                    let uid = pod["metadata"]["uid"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    let name = name_of(&pod);
                    let deleting = !pod["metadata"]["deletionTimestamp"].is_null();
                    if deleting {
                        if policy.finish_deletions {
                            let phase = pod["status"]["phase"].as_str().unwrap_or_default();
                            if !matches!(phase, "Succeeded" | "Failed") {
                                fake.terminate_all(
                                    ns,
                                    &name,
                                    &policy.container,
                                    policy.stop_code,
                                    "Completed",
                                );
                            }
                            fake.finish_termination(ns, &name);
                        }
                        continue;
                    }
                    if !started.insert(uid) {
                        continue;
                    }
                    match start(&fake, &pod) {
                        Start::Run => {
                            fake.run_pod(ns, &name);
                        }
                        Start::Exit(code) => {
                            fake.run_pod(ns, &name);
                            let reason = if code == 0 { "Completed" } else { "Error" };
                            fake.terminate(ns, &name, &policy.container, code, reason);
                        }
                        Start::Wait(reason) => {
                            fake.wait_on(
                                ns,
                                &name,
                                &policy.container,
                                &reason,
                                "the fake kubelet says so",
                            );
                        }
                        Start::Leave => {}
                    }
                }
                fake.changed_since(rv, Duration::from_millis(200)).await;
            }
        });
        Kubelet { task }
    }
}
