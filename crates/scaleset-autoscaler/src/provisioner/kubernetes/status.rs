//! What a pod's status says about its runner, and what the provisioner does about it: pure
//! functions over k8s-openapi types, table-tested without a cluster.
//!
//! * [`observe`] reads a pod: the runner container running, terminated (exit code, reason
//!   such as `OOMKilled`), waiting on a start failure, the pod unschedulable, evicted, or
//!   failed before its runner ran.
//! * [`decide`] turns an observation of a followed runner into at most one report:
//!   `Running` once, then one terminal event.
//! * [`listed_state`] is the state [`list`](crate::provisioner::Provisioner::list) shows.

use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

use crate::provisioner::{ExitStatus, RunnerEvent, RunnerState};

/// Waiting reasons of a start that will not get better on its own: reported at once.
pub const HOPELESS_WAITING: &[&str] = &["InvalidImageName", "ErrImageNeverPull"];

/// Waiting reasons of a start that may still recover (a registry hiccup, a Secret or
/// ConfigMap created late): reported once the pod is older than the start deadline.
pub const FAILING_WAITING: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
];

/// The pod condition reason of a pod no node can take.
pub const UNSCHEDULABLE: &str = "Unschedulable";

/// The pod condition the cluster sets on a pod it is about to disrupt (evict, preempt,
/// terminate with its node).
pub const DISRUPTION_TARGET: &str = "DisruptionTarget";

/// Container termination reasons that say nothing beyond the exit code.
const PLAIN_TERMINATIONS: &[&str] = &["Completed", "Error"];

/// What a pod shows of its runner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observed {
    /// Not running yet, and nothing wrong (yet).
    Pending,
    /// The runner container runs.
    Running,
    /// The runner container terminated.
    Exited(ExitStatus),
    /// The kubelet evicted the pod (node pressure); its words.
    Evicted(String),
    /// The pod ended (phase `Failed` or `Succeeded`) without its runner container having
    /// terminated: an init container failed, the kubelet refused the pod, ...
    PodEnded(String),
    /// The start is failing: an image that cannot be pulled, a bad container configuration,
    /// no node for the pod.
    Failing {
        /// Kubernetes' reason and message.
        reason: String,
        /// Whether it is reported at once ([`HOPELESS_WAITING`]) rather than after the start
        /// deadline.
        at_once: bool,
    },
}

fn runner_status<'a>(pod: &'a Pod, container: &str) -> Option<&'a ContainerStatus> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == container)
}

/// `reason: message`, or whichever of them there is.
fn words(reason: Option<&str>, message: Option<&str>) -> String {
    match (
        reason.filter(|r| !r.is_empty()),
        message.filter(|m| !m.is_empty()),
    ) {
        (Some(r), Some(m)) => format!("{r}: {m}"),
        (Some(r), None) => r.to_string(),
        (None, Some(m)) => m.to_string(),
        (None, None) => String::new(),
    }
}

/// Whether the pod is being deleted (`metadata.deletionTimestamp` set).
pub fn is_deleting(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// What `pod` shows of its runner container `container`.
pub fn observe(pod: &Pod, container: &str) -> Observed {
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.as_deref());
    let pod_reason = status.and_then(|s| s.reason.as_deref());
    let pod_message = status.and_then(|s| s.message.as_deref());
    let runner = runner_status(pod, container);
    let state = runner.and_then(|c| c.state.as_ref());
    // Eviction first: an evicted pod's containers are killed too, and that is not an exit.
    // Besides the kubelet's node-pressure eviction (reason `Evicted`), a pod the cluster
    // disrupted carries the `DisruptionTarget` condition (a node shutting down, preemption,
    // a taint, the pod garbage collector): its runner was killed, it did not end.
    let disruption = status
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .find(|c| c.type_ == DISRUPTION_TARGET && c.status == "True");
    let runner_terminated = state.is_some_and(|s| s.terminated.is_some());
    if phase == Some("Failed") && pod_reason == Some("Evicted") {
        return Observed::Evicted(words(pod_reason, pod_message));
    }
    if let Some(c) = disruption
        && (phase == Some("Failed") || runner_terminated)
    {
        let why = words(pod_reason, pod_message);
        return Observed::Evicted(if why.is_empty() {
            words(c.reason.as_deref(), c.message.as_deref())
        } else {
            why
        });
    }
    if let Some(t) = state.and_then(|s| s.terminated.as_ref()) {
        let reason = t
            .reason
            .clone()
            .filter(|r| !r.is_empty() && !PLAIN_TERMINATIONS.contains(&r.as_str()));
        return Observed::Exited(ExitStatus {
            code: Some(t.exit_code),
            reason,
        });
    }
    if matches!(phase, Some("Failed" | "Succeeded")) {
        let init_failure = status
            .and_then(|s| s.init_container_statuses.as_ref())
            .into_iter()
            .flatten()
            .find_map(|c| {
                let t = c.state.as_ref()?.terminated.as_ref()?;
                (t.exit_code != 0)
                    .then(|| format!("init container {} exited with code {}", c.name, t.exit_code))
            });
        let why = init_failure.unwrap_or_else(|| {
            let w = words(pod_reason, pod_message);
            if w.is_empty() {
                format!("the pod ended ({})", phase.unwrap_or_default())
            } else {
                w
            }
        });
        return Observed::PodEnded(why);
    }
    if state.is_some_and(|s| s.running.is_some()) {
        return Observed::Running;
    }
    // The runner's own waiting state, or an init container's (the runner then waits on
    // `PodInitializing`).
    let init = status
        .and_then(|s| s.init_container_statuses.as_ref())
        .into_iter()
        .flatten();
    for c in runner.into_iter().chain(init) {
        let Some(w) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) else {
            continue;
        };
        let Some(reason) = w.reason.as_deref() else {
            continue;
        };
        let at_once = HOPELESS_WAITING.contains(&reason);
        if at_once || FAILING_WAITING.contains(&reason) {
            let text = words(Some(reason), w.message.as_deref());
            let text = if c.name == container {
                text
            } else {
                format!("init container {}: {text}", c.name)
            };
            return Observed::Failing {
                reason: text,
                at_once,
            };
        }
    }
    let unschedulable = status
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .find(|c| {
            c.type_ == "PodScheduled"
                && c.status == "False"
                && c.reason.as_deref() == Some(UNSCHEDULABLE)
        });
    if let Some(c) = unschedulable {
        return Observed::Failing {
            reason: words(c.reason.as_deref(), c.message.as_deref()),
            at_once: false,
        };
    }
    Observed::Pending
}

/// What the provisioner knows of a followed runner besides its pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Followed {
    /// `Running` was reported.
    pub running_reported: bool,
    /// This provisioner asked for the pod's deletion.
    pub deleted_by_us: bool,
    /// How old the pod is.
    pub age: Duration,
    /// The start deadline ([`FAILING_WAITING`] and unschedulable pods).
    pub start_deadline: Duration,
}

/// What to report about a followed runner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nothing (yet).
    Nothing,
    /// Report `Running`.
    Running,
    /// Report this terminal event, then remove the runner's pod and Secret.
    Terminal(RunnerEvent),
}

/// The report due for a followed runner whose pod shows `observed` (`deleting`: its
/// deletion began).
pub fn decide(observed: &Observed, deleting: bool, f: Followed) -> Decision {
    match observed {
        Observed::Evicted(_) => Decision::Terminal(RunnerEvent::Vanished),
        Observed::Exited(status) => Decision::Terminal(RunnerEvent::Exited(status.clone())),
        // Deleted behind our back: gone for our purposes, whatever it still shows.
        _ if deleting && !f.deleted_by_us => Decision::Terminal(RunnerEvent::Vanished),
        Observed::PodEnded(why) if f.running_reported => {
            Decision::Terminal(RunnerEvent::Exited(ExitStatus {
                code: None,
                reason: Some(why.clone()),
            }))
        }
        Observed::PodEnded(why) => Decision::Terminal(RunnerEvent::FailedToStart {
            reason: why.clone(),
        }),
        Observed::Running if !f.running_reported => Decision::Running,
        Observed::Failing { reason, at_once } if *at_once || f.age >= f.start_deadline => {
            Decision::Terminal(RunnerEvent::FailedToStart {
                reason: reason.clone(),
            })
        }
        Observed::Running | Observed::Failing { .. } | Observed::Pending => Decision::Nothing,
    }
}

/// The state a listing shows for a pod showing `observed`, `age` old.
pub fn listed_state(observed: Observed, age: Duration, start_deadline: Duration) -> RunnerState {
    match observed {
        Observed::Pending => RunnerState::Pending,
        Observed::Running => RunnerState::Running,
        Observed::Exited(s) => RunnerState::Exited(s),
        Observed::Evicted(why) => RunnerState::Exited(ExitStatus {
            code: None,
            reason: Some(why),
        }),
        Observed::PodEnded(reason) => RunnerState::Failed { reason },
        Observed::Failing { reason, at_once } if at_once || age >= start_deadline => {
            RunnerState::Failed { reason }
        }
        Observed::Failing { .. } => RunnerState::Pending,
    }
}

/// How old `pod` is by its creation timestamp (zero when unknown or in the future).
pub fn age(pod: &Pod) -> Duration {
    let Some(created) = &pod.metadata.creation_timestamp else {
        return Duration::ZERO;
    };
    let now = jiff::Timestamp::now();
    now.duration_since(created.0)
        .try_into()
        .unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "runner"}, {"name": "dind"}]},
            "status": status,
        }))
        .expect("a pod")
    }

    fn runner(state: serde_json::Value) -> serde_json::Value {
        json!({"name": "runner", "image": "i", "imageID": "", "ready": false, "restartCount": 0, "state": state})
    }

    #[test]
    fn observations_follow_the_runner_container() {
        let cases = [
            (json!({"phase": "Pending"}), Observed::Pending),
            (
                json!({"phase": "Running", "containerStatuses": [runner(json!({"running": {}}))]}),
                Observed::Running,
            ),
            (
                json!({"phase": "Running", "containerStatuses": [runner(json!({"terminated": {"exitCode": 3, "reason": "Error"}}))]}),
                Observed::Exited(ExitStatus::code(3)),
            ),
            (
                json!({"phase": "Failed", "containerStatuses": [runner(json!({"terminated": {"exitCode": 137, "reason": "OOMKilled"}}))]}),
                Observed::Exited(ExitStatus {
                    code: Some(137),
                    reason: Some("OOMKilled".into()),
                }),
            ),
            (
                json!({"phase": "Failed", "reason": "Evicted", "message": "low on memory", "containerStatuses": [runner(json!({"terminated": {"exitCode": 137}}))]}),
                Observed::Evicted("Evicted: low on memory".into()),
            ),
            (
                json!({"phase": "Failed", "reason": "Terminated", "message": "Pod was terminated in response to imminent node shutdown.",
                    "conditions": [{"type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet"}],
                    "containerStatuses": [runner(json!({"terminated": {"exitCode": 137, "reason": "Error"}}))]}),
                Observed::Evicted(
                    "Terminated: Pod was terminated in response to imminent node shutdown.".into(),
                ),
            ),
            (
                json!({"phase": "Running",
                    "conditions": [{"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler", "message": "preempted"}],
                    "containerStatuses": [runner(json!({"terminated": {"exitCode": 143, "reason": "Error"}}))]}),
                Observed::Evicted("PreemptionByScheduler: preempted".into()),
            ),
            (
                json!({"phase": "Running",
                    "conditions": [{"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI"}],
                    "containerStatuses": [runner(json!({"running": {}}))]}),
                Observed::Running,
            ),
            (
                json!({"phase": "Pending", "containerStatuses": [runner(json!({"waiting": {"reason": "ErrImagePull", "message": "not found"}}))]}),
                Observed::Failing {
                    reason: "ErrImagePull: not found".into(),
                    at_once: false,
                },
            ),
            (
                json!({"phase": "Pending", "containerStatuses": [runner(json!({"waiting": {"reason": "InvalidImageName"}}))]}),
                Observed::Failing {
                    reason: "InvalidImageName".into(),
                    at_once: true,
                },
            ),
            (
                json!({"phase": "Pending", "containerStatuses": [runner(json!({"waiting": {"reason": "ContainerCreating"}}))]}),
                Observed::Pending,
            ),
            (
                json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes"}]}),
                Observed::Failing {
                    reason: "Unschedulable: 0/3 nodes".into(),
                    at_once: false,
                },
            ),
            (
                json!({"phase": "Pending", "initContainerStatuses": [{"name": "init", "image": "i", "imageID": "", "ready": false, "restartCount": 0, "state": {"waiting": {"reason": "ImagePullBackOff"}}}]}),
                Observed::Failing {
                    reason: "init container init: ImagePullBackOff".into(),
                    at_once: false,
                },
            ),
            (
                json!({"phase": "Failed", "initContainerStatuses": [{"name": "init", "image": "i", "imageID": "", "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 2}}}]}),
                Observed::PodEnded("init container init exited with code 2".into()),
            ),
            (
                json!({"phase": "Failed", "reason": "OutOfcpu"}),
                Observed::PodEnded("OutOfcpu".into()),
            ),
        ];
        for (status, expected) in cases {
            assert_eq!(
                observe(&pod(status.clone()), "runner"),
                expected,
                "{status}"
            );
        }
    }

    #[test]
    fn decisions_report_running_once_and_one_terminal_event() {
        let f = Followed {
            running_reported: false,
            deleted_by_us: false,
            age: Duration::from_secs(10),
            start_deadline: Duration::from_secs(300),
        };
        let reported = Followed {
            running_reported: true,
            ..f
        };
        let old = Followed {
            age: Duration::from_secs(301),
            ..f
        };
        let ours = Followed {
            deleted_by_us: true,
            ..reported
        };
        let failing = |at_once| Observed::Failing {
            reason: "ErrImagePull".into(),
            at_once,
        };
        let failed = Decision::Terminal(RunnerEvent::FailedToStart {
            reason: "ErrImagePull".into(),
        });
        let exited = |s: ExitStatus| Decision::Terminal(RunnerEvent::Exited(s));
        let cases = [
            (Observed::Pending, false, f, Decision::Nothing),
            (Observed::Running, false, f, Decision::Running),
            (Observed::Running, false, reported, Decision::Nothing),
            (
                Observed::Exited(ExitStatus::code(7)),
                false,
                reported,
                exited(ExitStatus::code(7)),
            ),
            (
                Observed::Exited(ExitStatus::code(0)),
                true,
                ours,
                exited(ExitStatus::code(0)),
            ),
            (
                Observed::Evicted("Evicted".into()),
                false,
                reported,
                Decision::Terminal(RunnerEvent::Vanished),
            ),
            (
                Observed::Running,
                true,
                reported,
                Decision::Terminal(RunnerEvent::Vanished),
            ),
            (Observed::Running, true, ours, Decision::Nothing),
            (failing(false), false, f, Decision::Nothing),
            (failing(false), false, old, failed.clone()),
            (failing(true), false, f, failed),
            (
                Observed::PodEnded("OutOfcpu".into()),
                false,
                f,
                Decision::Terminal(RunnerEvent::FailedToStart {
                    reason: "OutOfcpu".into(),
                }),
            ),
            (
                Observed::PodEnded("Terminated".into()),
                false,
                reported,
                exited(ExitStatus {
                    code: None,
                    reason: Some("Terminated".into()),
                }),
            ),
        ];
        for (observed, deleting, followed, expected) in cases {
            assert_eq!(
                decide(&observed, deleting, followed),
                expected,
                "{observed:?} deleting={deleting} {followed:?}"
            );
        }
    }

    #[test]
    fn listed_states_apply_the_start_deadline() {
        let deadline = Duration::from_secs(300);
        let failing = Observed::Failing {
            reason: "ImagePullBackOff".into(),
            at_once: false,
        };
        assert_eq!(
            listed_state(failing.clone(), Duration::from_secs(1), deadline),
            RunnerState::Pending
        );
        assert_eq!(
            listed_state(failing, deadline, deadline),
            RunnerState::Failed {
                reason: "ImagePullBackOff".into()
            }
        );
        assert!(!listed_state(Observed::Evicted("Evicted".into()), deadline, deadline).is_alive());
        assert_eq!(
            listed_state(Observed::Running, Duration::ZERO, deadline),
            RunnerState::Running
        );
    }
}
