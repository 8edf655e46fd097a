//! The watch on this scale set's and instance's pods: kube-runtime's watcher (a list, then
//! a watch from its resource version; after `410 Gone` a fresh list, after other failures a
//! retry with backoff) feeding the provisioner's view of its pods, and a tick for deadlines.
//!
//! A relist is buffered until it is complete and then replaces the view at once: a followed
//! pod missing from it is gone, and is reported as such by the provisioner.

use std::collections::HashMap;
use std::sync::Weak;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as watch_pods};
use tokio_util::sync::CancellationToken;

use super::status::{self, Observed};
use super::{Inner, KubernetesProvisioner, TICK, template};

fn upgrade(inner: &Weak<Inner>) -> Option<KubernetesProvisioner> {
    inner.upgrade().map(|inner| KubernetesProvisioner { inner })
}

/// Follows the pods until `shutdown` fires or the provisioner is gone.
pub(super) async fn run(inner: Weak<Inner>, shutdown: CancellationToken) {
    let Some(this) = upgrade(&inner) else {
        return;
    };
    let config = watcher::Config::default().labels(&this.inner.selector);
    let mut stream = watch_pods(this.inner.pods.clone(), config)
        .default_backoff()
        .boxed();
    drop(this);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut relist: Option<HashMap<String, Pod>> = None;
    let mut failing = false;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {
                let Some(this) = upgrade(&inner) else {
                    return;
                };
                this.tick();
            }
            item = stream.next() => {
                let Some(item) = item else {
                    // The watcher retries for ever; an end means it was dropped.
                    return;
                };
                let Some(this) = upgrade(&inner) else {
                    return;
                };
                match item {
                    Ok(event) => {
                        if failing {
                            tracing::info!("the pod watch is back");
                            failing = false;
                        }
                        this.on_watch(event, &mut relist);
                    }
                    Err(watcher::Error::WatchError(s)) if s.code == 410 => {
                        tracing::debug!("the pod watch expired (410 Gone); listing the pods again");
                    }
                    Err(e) if !failing => {
                        tracing::warn!(error = %e, "the pod watch failed; retrying");
                        failing = true;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "the pod watch is still failing");
                    }
                }
            }
        }
    }
}

impl KubernetesProvisioner {
    /// Applies one watch event to the view and evaluates the runners it concerns.
    fn on_watch(&self, event: Event<Pod>, relist: &mut Option<HashMap<String, Pod>>) {
        let ours = |pod: &Pod| template::is_ours(&pod.metadata, &self.inner.identity);
        match event {
            Event::Init => *relist = Some(HashMap::new()),
            Event::InitApply(pod) => match relist {
                Some(buffer) if ours(&pod) => {
                    if let Some(name) = pod.metadata.name.clone() {
                        buffer.insert(name, pod);
                    }
                }
                Some(_) => {}
                None => self.on_watch(Event::Apply(pod), relist),
            },
            Event::InitDone => {
                let listed = relist.take().unwrap_or_default();
                let names: Vec<String> = {
                    let mut state = self.state();
                    state.pods = listed;
                    state.synced = true;
                    state.runners.keys().cloned().collect()
                };
                self.changed();
                for name in &names {
                    self.evaluate(name);
                }
            }
            Event::Apply(pod) => {
                if !ours(&pod) {
                    return;
                }
                let Some(pod_name) = pod.metadata.name.clone() else {
                    return;
                };
                let runner = {
                    let mut state = self.state();
                    state.pods.insert(pod_name.clone(), pod);
                    Self::runner_of(&state, &pod_name)
                };
                self.changed();
                if let Some(runner) = runner {
                    self.evaluate(&runner);
                }
            }
            Event::Delete(pod) => {
                let Some(pod_name) = pod.metadata.name.clone() else {
                    return;
                };
                let container = self.inner.template_container();
                let runner = {
                    let mut state = self.state();
                    state.pods.remove(&pod_name);
                    let runner = Self::runner_of(&state, &pod_name);
                    if let Some(r) = runner.as_ref().and_then(|n| state.runners.get_mut(n)) {
                        r.seen = true;
                        if let Observed::Exited(s) = status::observe(&pod, &container) {
                            r.last_exit = Some(s);
                        }
                    }
                    runner
                };
                self.changed();
                if let Some(runner) = runner {
                    self.evaluate(&runner);
                }
            }
        }
    }
}
