//! An in-memory provisioner for tests: runners "run" until the test makes them exit.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actions_scaleset::RunnerId;
use tokio::sync::{Notify, mpsc};

use super::{
    ExitStatus, OwnedRunner, Provisioner, ProvisionerEvent, RunnerEvent, RunnerSpec, RunnerState,
};
use crate::error::ProvisionError;

#[derive(Default)]
struct State {
    running: BTreeMap<String, RunnerId>,
    leftovers: BTreeMap<String, OwnedRunner>,
    created: Vec<String>,
    stopped: Vec<String>,
    in_flight: usize,
    max_in_flight: usize,
    fail_next: usize,
    fail_start_next: Option<(usize, String)>,
    reserved: BTreeSet<String>,
    owned: bool,
}

struct Inner {
    state: Mutex<State>,
    exits_tx: mpsc::UnboundedSender<ProvisionerEvent>,
    exits_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<ProvisionerEvent>>,
    changed: Notify,
    create_delay: Duration,
}

/// The fake provisioner. Clones share the same state.
#[derive(Clone)]
pub struct FakeProvisioner {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for FakeProvisioner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeProvisioner").finish_non_exhaustive()
    }
}

impl Default for FakeProvisioner {
    fn default() -> Self {
        FakeProvisioner::new(Duration::ZERO)
    }
}

impl FakeProvisioner {
    /// A fake whose `create` takes `create_delay` (tokio time, so a paused clock controls it).
    pub fn new(create_delay: Duration) -> FakeProvisioner {
        let (exits_tx, exits_rx) = mpsc::unbounded_channel();
        FakeProvisioner {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                exits_tx,
                exits_rx: tokio::sync::Mutex::new(exits_rx),
                changed: Notify::new(),
                create_delay,
            }),
        }
    }

    fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.inner.state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let out = f(&mut self.inner.state.lock().unwrap_or_else(|e| e.into_inner()));
        self.inner.changed.notify_waiters();
        out
    }

    /// Names of the running runners.
    pub fn running(&self) -> Vec<String> {
        self.read(|s| s.running.keys().cloned().collect())
    }

    /// The runner id of a running runner.
    pub fn runner_id(&self, name: &str) -> Option<RunnerId> {
        self.read(|s| s.running.get(name).copied())
    }

    /// Every runner ever created, in order.
    pub fn created(&self) -> Vec<String> {
        self.read(|s| s.created.clone())
    }

    /// Every runner stopped through [`Provisioner::stop`], in order.
    pub fn stopped(&self) -> Vec<String> {
        self.read(|s| s.stopped.clone())
    }

    /// The most `create` calls that were in flight at once.
    pub fn max_in_flight(&self) -> usize {
        self.read(|s| s.max_in_flight)
    }

    /// Makes the next `n` creates fail.
    pub fn fail_next_creates(&self, n: usize) {
        self.with(|s| s.fail_next = n);
    }

    /// Adds a leftover runner, as if a previous run had left it behind.
    pub fn add_leftover(&self, runner: OwnedRunner) {
        self.with(|s| {
            if runner.state.is_alive() {
                s.running.insert(runner.name.clone(), runner.runner_id);
            }
            s.leftovers.insert(runner.name.clone(), runner);
        });
    }

    /// Makes the next `n` creates succeed but the runners fail to start with `reason`
    /// (reported as [`RunnerEvent::FailedToStart`]), as an image that cannot be pulled does.
    pub fn fail_next_starts(&self, n: usize, reason: &str) {
        self.with(|s| s.fail_start_next = Some((n, reason.to_string())));
    }

    /// Makes a running runner exit with code 0 (`success`) or 1. Returns whether it was
    /// running.
    pub fn exit(&self, name: &str, success: bool) -> bool {
        self.exit_with(name, ExitStatus::code(if success { 0 } else { 1 }))
    }

    /// Makes a running runner exit with `status`. Returns whether it was running.
    pub fn exit_with(&self, name: &str, status: ExitStatus) -> bool {
        self.end(name, RunnerEvent::Exited(status))
    }

    /// Makes a running runner disappear behind the engine's back: it is no longer listed and
    /// [`RunnerEvent::Vanished`] is reported.
    pub fn vanish(&self, name: &str) -> bool {
        self.end(name, RunnerEvent::Vanished)
    }

    /// Makes a running runner disappear without any event (a lost event stream): only a
    /// resync against [`list`](Provisioner::list) can notice.
    pub fn vanish_silently(&self, name: &str) -> bool {
        self.with(|s| s.running.remove(name).is_some())
    }

    fn end(&self, name: &str, event: RunnerEvent) -> bool {
        let was = self.with(|s| s.running.remove(name).is_some());
        if was {
            let _ = self.inner.exits_tx.send(ProvisionerEvent::new(name, event));
        }
        was
    }

    /// Waits until `pred` holds for the running runners' names, at most `timeout`.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        pred: impl Fn(&[String]) -> bool,
    ) -> Result<Vec<String>, Vec<String>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.inner.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let running = self.running();
            if pred(&running) {
                return Ok(running);
            }
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep_until(deadline) => {
                    let running = self.running();
                    return if pred(&running) { Ok(running) } else { Err(running) };
                }
            }
        }
    }
}

impl Provisioner for FakeProvisioner {
    fn kind(&self) -> &'static str {
        "fake"
    }

    /// The first caller owns the fake; a second one waits (ownership is never given back)
    /// until `cancel` fires.
    async fn acquire(
        &self,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Result<(), ProvisionError> {
        let got = self.with(|s| !std::mem::replace(&mut s.owned, true));
        if got {
            return Ok(());
        }
        cancel.cancelled().await;
        Err(ProvisionError::Cancelled)
    }

    async fn reserve(&self, name: &str) -> Result<(), ProvisionError> {
        self.with(|s| s.reserved.insert(name.to_string()));
        Ok(())
    }

    async fn unreserve(&self, name: &str) -> Result<(), ProvisionError> {
        self.with(|s| s.reserved.remove(name));
        Ok(())
    }

    async fn create(&self, spec: RunnerSpec) -> Result<(), ProvisionError> {
        let fail = self.with(|s| {
            s.in_flight += 1;
            s.max_in_flight = s.max_in_flight.max(s.in_flight);
            if s.fail_next > 0 {
                s.fail_next -= 1;
                true
            } else {
                false
            }
        });
        if !self.inner.create_delay.is_zero() {
            tokio::time::sleep(self.inner.create_delay).await;
        }
        let started = self.with(|s| {
            s.in_flight -= 1;
            s.reserved.remove(&spec.name);
            if fail {
                return Err(ProvisionError::backend("fake", "injected create failure"));
            }
            if s.running.contains_key(&spec.name) {
                return Err(ProvisionError::AlreadyExists(spec.name.clone()));
            }
            s.created.push(spec.name.clone());
            if let Some((n, reason)) = s.fail_start_next.take() {
                if n > 1 {
                    s.fail_start_next = Some((n - 1, reason.clone()));
                }
                return Ok(RunnerEvent::FailedToStart { reason });
            }
            s.running.insert(spec.name.clone(), spec.runner_id);
            Ok(RunnerEvent::Running)
        })?;
        let _ = self
            .inner
            .exits_tx
            .send(ProvisionerEvent::new(spec.name, started));
        Ok(())
    }

    async fn stop(&self, name: &str) -> Result<(), ProvisionError> {
        self.with(|s| s.stopped.push(name.to_string()));
        self.exit_with(
            name,
            ExitStatus {
                code: None,
                reason: Some("stopped".into()),
            },
        );
        Ok(())
    }

    async fn list(&self) -> Result<Vec<OwnedRunner>, ProvisionError> {
        Ok(self.read(|s| {
            let mut out: BTreeMap<String, OwnedRunner> = s.leftovers.clone();
            for (name, id) in &s.running {
                out.entry(name.clone()).or_insert_with(|| OwnedRunner {
                    name: name.clone(),
                    runner_id: *id,
                    state: RunnerState::Running,
                });
            }
            out.into_values().collect()
        }))
    }

    async fn adopt(&self, name: &str) -> Result<bool, ProvisionError> {
        Ok(self.with(|s| s.leftovers.remove(name).is_some() && s.running.contains_key(name)))
    }

    async fn release(&self, name: &str) -> Result<(), ProvisionError> {
        self.with(|s| {
            s.leftovers.remove(name);
            s.running.remove(name);
        });
        Ok(())
    }

    async fn next_event(&self) -> Option<ProvisionerEvent> {
        self.inner.exits_rx.lock().await.recv().await
    }
}
