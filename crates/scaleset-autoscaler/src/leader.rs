//! Leader election through a `coordination.k8s.io/v1` Lease (cargo feature `kubernetes`):
//! one replica of a daemon acts, the others wait as hot standbys.
//!
//! The algorithm is client-go's (`tools/leaderelection`), which every Kubernetes controller
//! uses, so a Lease written by this daemon reads the same in `kubectl get lease`:
//!
//! * **A standby** reads the Lease every `retry_period` (with a little jitter). It takes the
//!   Lease over when nobody holds it, or when the record it sees (holder, renew time) has not
//!   changed for the lease's `leaseDurationSeconds` by *its own* clock since it first saw
//!   that record: the holder's timestamps are never compared with local time, so clock skew
//!   between nodes does not matter. It writes with the `resourceVersion` it read, so of two
//!   standbys racing for an expired Lease one wins and the other gets `409 Conflict`.
//! * **The leader** renews every `retry_period`. A `409 Conflict` (someone wrote the Lease
//!   meanwhile) is answered by reading it again: still ours, the renewal is retried at once;
//!   someone else's, leadership is lost. When it could not renew for `renew_deadline`
//!   (shorter than the lease duration, so it stops before any standby may start) it loses
//!   leadership too. Losing it fires [`Leadership::lost`] at once; the daemon then stops
//!   acting (no more pods, no more acknowledged messages) and exits.
//! * **Release**: [`Leadership::release`] on a graceful stop empties the holder (and sets a
//!   1 s duration, as client-go's `ReleaseOnCancel`), so a standby takes over on its next try
//!   instead of waiting out the lease.
//!
//! [`elect`] is what the daemon awaits; [`Leading`] is what it hands to each scale set.

use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::server::Readiness;

/// What a scale set of a leading daemon needs to know: the owner name recorded on its pods
/// (the Lease's name, shared by the replicas, so the next leader adopts them) and the token
/// that fires when leadership is lost.
#[derive(Clone, Debug)]
pub struct Leading {
    /// The instance name provisioners record on what they create (the Lease's name).
    pub instance: String,
    /// The Lease, `namespace/name`, for messages.
    pub lease: String,
    /// Cancelled when this replica lost the Lease: stop acting at once.
    pub lost: CancellationToken,
    /// The local (monotonic) instant until which the last renewal holds: the renewal
    /// deadline after it, which ends before the Lease can expire for the other replicas.
    pub held_until: Arc<Mutex<tokio::time::Instant>>,
}

/// The outcome of [`elect`].
#[derive(Debug)]
pub enum Elected {
    /// No `[leader_election]` (or `enabled = false`): act at once.
    Off,
    /// This replica holds the Lease.
    #[cfg(feature = "kubernetes")]
    Leader(Leadership),
    /// The shutdown came while this replica was a standby.
    Cancelled,
}

impl Elected {
    /// Whether this replica may act (no election, or it leads).
    pub fn proceed(&self) -> bool {
        !matches!(self, Elected::Cancelled)
    }

    /// What the scale sets of a leader get; `None` without an election.
    pub fn leading(&self) -> Option<Leading> {
        match self {
            #[cfg(feature = "kubernetes")]
            Elected::Leader(l) => Some(l.leading()),
            _ => None,
        }
    }

    /// Gives the Lease up if this replica holds it (see [`Leadership::release`]).
    pub async fn release(self) {
        #[cfg(feature = "kubernetes")]
        if let Elected::Leader(l) = self {
            l.release().await;
        }
    }
}

/// Waits until this replica may act: at once without leader election, else once it holds
/// the Lease (a standby says so on `/readyz` meanwhile: ready while it can read the Lease,
/// with the holder's name; not ready when it cannot). `default_identity` is the holder
/// identity unless the configuration names one.
///
/// # Errors
/// [`Error::Config`] for unusable settings or a build without the `kubernetes` feature;
/// [`Error::Provision`] when no Kubernetes client can be built.
pub async fn elect(
    config: &Config,
    default_identity: &str,
    readiness: &Readiness,
    shutdown: &CancellationToken,
) -> Result<Elected> {
    let Some(le) = config.leader_election.as_ref().filter(|le| le.enabled) else {
        return Ok(Elected::Off);
    };
    let settings = le.settings(config, default_identity)?;
    #[cfg(feature = "kubernetes")]
    {
        let election = LeaderElection::connect(settings).await?;
        let elected = election
            .acquire(shutdown, |s| readiness.standby(Some(s)))
            .await;
        readiness.standby(None);
        Ok(match elected {
            Some(l) => Elected::Leader(l),
            None => Elected::Cancelled,
        })
    }
    #[cfg(not(feature = "kubernetes"))]
    {
        let _ = (settings, readiness, shutdown);
        Err(Error::config(
            "leader_election",
            "this build has no Kubernetes support (cargo feature `kubernetes`)",
        ))
    }
}

#[cfg(feature = "kubernetes")]
pub use self::kube_lease::{LeaderElection, Leadership};

#[cfg(feature = "kubernetes")]
mod kube_lease {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
    use kube::api::{Api, PostParams};
    use tokio::time::Instant;
    use tokio_util::sync::CancellationToken;

    /// client-go's jitter on a standby's retries: up to this fraction of the period more.
    const JITTER: f64 = 0.2;

    /// How long [`Leadership::release`] may take.
    const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);
    use crate::config::LeaderElectionSettings;
    use crate::error::Result;
    use crate::server::StandbyStatus;

    /// One try at the Lease.
    #[derive(Debug)]
    enum Attempt {
        /// We hold it (created, taken over or renewed).
        Held,
        /// Someone else holds it and it has not expired (by our clock).
        HeldBy(String),
        /// Our write lost a race (`409`): read again.
        Conflict,
    }

    /// The Lease record as last seen, and when (by our monotonic clock) it last changed.
    #[derive(Debug)]
    struct Observed {
        holder: Option<String>,
        renew_time: Option<MicroTime>,
        duration: Duration,
        at: Instant,
    }

    fn api_message(e: &kube::Error) -> String {
        match e {
            kube::Error::Api(s) if !s.message.is_empty() => format!("{} ({})", s.message, s.code),
            other => other.to_string(),
        }
    }

    fn api_code(e: &kube::Error) -> Option<u16> {
        match e {
            kube::Error::Api(s) => Some(s.code),
            _ => None,
        }
    }

    /// Leader election over one Lease; see the [module docs](super).
    pub struct LeaderElection {
        inner: Arc<Inner>,
    }

    struct Inner {
        leases: Api<Lease>,
        settings: LeaderElectionSettings,
        observed: Mutex<Option<Observed>>,
    }

    impl std::fmt::Debug for LeaderElection {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("LeaderElection")
                .field("settings", &self.inner.settings)
                .finish_non_exhaustive()
        }
    }

    impl LeaderElection {
        /// An election over the cluster the settings name (their kubeconfig and context,
        /// else in-cluster / `KUBECONFIG`, as the Kubernetes provisioner finds it).
        ///
        /// # Errors
        /// [`Error::Provision`](crate::Error::Provision) when the cluster configuration cannot be
        /// read.
        pub async fn connect(settings: LeaderElectionSettings) -> Result<LeaderElection> {
            let client = crate::provisioner::kubernetes::client_for(
                settings.kubeconfig.as_deref(),
                settings.context.as_deref(),
            )
            .await?;
            Ok(LeaderElection::with_client(client, settings))
        }

        /// An election over `client`.
        pub fn with_client(client: kube::Client, settings: LeaderElectionSettings) -> Self {
            LeaderElection {
                inner: Arc::new(Inner {
                    leases: Api::namespaced(client, &settings.namespace),
                    settings,
                    observed: Mutex::new(None),
                }),
            }
        }

        /// The settings in use.
        pub fn settings(&self) -> &LeaderElectionSettings {
            &self.inner.settings
        }

        /// Waits as a standby until this replica holds the Lease, then keeps renewing it in a
        /// task of its own. `standby` hears every outcome of a try while waiting. `None` when
        /// `shutdown` fired first.
        pub async fn acquire(
            &self,
            shutdown: &CancellationToken,
            mut standby: impl FnMut(StandbyStatus),
        ) -> Option<Leadership> {
            let s = &self.inner.settings;
            tracing::info!(lease = %s.lease_name, namespace = %s.namespace, identity = %s.identity, "leader election: waiting for the lease (a hot standby until then)");
            let mut last_holder: Option<String> = None;
            let mut failing = false;
            loop {
                if shutdown.is_cancelled() {
                    return None;
                }
                let sent = Instant::now();
                let attempt = tokio::select! {
                    () = shutdown.cancelled() => return None,
                    r = tokio::time::timeout(s.retry_period.max(Duration::from_secs(5)), self.inner.try_acquire_or_renew()) => r,
                };
                match attempt {
                    Ok(Ok(Attempt::Held)) => {
                        tracing::info!(lease = %s.lease_name, identity = %s.identity, "leader election: this replica leads now");
                        return Some(Leadership::start(self.inner.clone(), sent));
                    }
                    Ok(Ok(Attempt::HeldBy(holder))) => {
                        if last_holder.as_deref() != Some(holder.as_str()) {
                            tracing::info!(lease = %s.lease_name, holder = %holder, "leader election: another replica leads; standing by");
                        }
                        failing = false;
                        standby(StandbyStatus::Waiting {
                            lease: format!("{}/{}", s.namespace, s.lease_name),
                            holder: holder.clone(),
                        });
                        last_holder = Some(holder);
                    }
                    Ok(Ok(Attempt::Conflict)) => {
                        tracing::debug!(lease = %s.lease_name, "leader election: another replica took the lease first");
                    }
                    Ok(Err(e)) => {
                        let why = api_message(&e);
                        if failing {
                            tracing::debug!(lease = %s.lease_name, error = %why, "leader election: cannot read or write the lease");
                        } else {
                            tracing::warn!(lease = %s.lease_name, error = %why, "leader election: cannot read or write the lease (does the Role allow get, create and update on leases?); retrying");
                        }
                        failing = true;
                        standby(StandbyStatus::Failing(format!(
                            "cannot read the lease {}/{}: {why}",
                            s.namespace, s.lease_name
                        )));
                    }
                    Err(_) => {
                        failing = true;
                        standby(StandbyStatus::Failing(format!(
                            "the API server did not answer about the lease {}/{}",
                            s.namespace, s.lease_name
                        )));
                    }
                }
                let wait = s.retry_period.mul_f64(1.0 + JITTER * rand::random::<f64>());
                tokio::select! {
                    () = shutdown.cancelled() => return None,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    }

    impl Inner {
        /// One read and (when we may) one write of the Lease.
        async fn try_acquire_or_renew(&self) -> std::result::Result<Attempt, kube::Error> {
            let s = &self.settings;
            let now = MicroTime(jiff::Timestamp::now());
            let duration_secs = i32::try_from(s.lease_duration.as_secs_f64().ceil() as i64)
                .unwrap_or(i32::MAX)
                .max(1);
            let Some(mut lease) = self.leases.get_opt(&s.lease_name).await? else {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(s.lease_name.clone()),
                        namespace: Some(s.namespace.clone()),
                        labels: Some(
                            [(
                                "app.kubernetes.io/managed-by".to_string(),
                                "scaleset".to_string(),
                            )]
                            .into(),
                        ),
                        ..Default::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(s.identity.clone()),
                        lease_duration_seconds: Some(duration_secs),
                        acquire_time: Some(now.clone()),
                        renew_time: Some(now),
                        lease_transitions: Some(0),
                        ..Default::default()
                    }),
                };
                return match self.leases.create(&PostParams::default(), &lease).await {
                    Ok(created) => {
                        self.observe(&created);
                        Ok(Attempt::Held)
                    }
                    Err(e) if api_code(&e) == Some(409) => Ok(Attempt::Conflict),
                    Err(e) => Err(e),
                };
            };
            let expired = self.observe(&lease);
            let spec = lease.spec.clone().unwrap_or_default();
            let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
            let ours = holder.as_deref() == Some(s.identity.as_str());
            if let Some(h) = &holder
                && !ours
                && !expired
            {
                return Ok(Attempt::HeldBy(h.clone()));
            }
            lease.spec = Some(LeaseSpec {
                holder_identity: Some(s.identity.clone()),
                lease_duration_seconds: Some(duration_secs),
                acquire_time: if ours {
                    spec.acquire_time.clone().or(Some(now.clone()))
                } else {
                    Some(now.clone())
                },
                renew_time: Some(now),
                // client-go counts every change of holder, a released (empty) one included.
                lease_transitions: Some(if ours {
                    spec.lease_transitions.unwrap_or(0)
                } else {
                    spec.lease_transitions.unwrap_or(0).saturating_add(1)
                }),
                ..spec
            });
            match self
                .leases
                .replace(&s.lease_name, &PostParams::default(), &lease)
                .await
            {
                Ok(stored) => {
                    self.observe(&stored);
                    Ok(Attempt::Held)
                }
                Err(e) if api_code(&e) == Some(409) => Ok(Attempt::Conflict),
                Err(e) => Err(e),
            }
        }

        /// Records what the Lease says; whether the holder's lease has expired by our clock.
        fn observe(&self, lease: &Lease) -> bool {
            let spec = lease.spec.clone().unwrap_or_default();
            let holder = spec.holder_identity.filter(|h| !h.is_empty());
            let duration = spec
                .lease_duration_seconds
                .and_then(|d| u64::try_from(d).ok())
                .map_or(self.settings.lease_duration, Duration::from_secs);
            let mut observed = self.observed.lock().unwrap_or_else(|e| e.into_inner());
            let changed = observed
                .as_ref()
                .is_none_or(|o| o.holder != holder || o.renew_time != spec.renew_time);
            if changed {
                *observed = Some(Observed {
                    holder,
                    renew_time: spec.renew_time,
                    duration,
                    at: Instant::now(),
                });
                // A record seen for the first time is valid for a whole duration from now.
                return false;
            }
            observed
                .as_ref()
                .is_some_and(|o| o.at.elapsed() >= o.duration)
        }

        /// Gives the Lease up if we still hold it.
        async fn release(&self) -> std::result::Result<bool, kube::Error> {
            let s = &self.settings;
            let Some(mut lease) = self.leases.get_opt(&s.lease_name).await? else {
                return Ok(false);
            };
            let mut spec = lease.spec.clone().unwrap_or_default();
            if spec.holder_identity.as_deref() != Some(s.identity.as_str()) {
                return Ok(false);
            }
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            spec.renew_time = Some(MicroTime(jiff::Timestamp::now()));
            lease.spec = Some(spec);
            self.leases
                .replace(&s.lease_name, &PostParams::default(), &lease)
                .await?;
            Ok(true)
        }
    }

    /// This replica holds the Lease; a task renews it until [`release`](Self::release), a
    /// drop, or the loss of the Lease ([`lost`](Self::lost)).
    #[derive(Debug)]
    pub struct Leadership {
        inner: Arc<Inner>,
        lost: CancellationToken,
        stop: CancellationToken,
        held_until: Arc<Mutex<Instant>>,
        task: Option<tokio::task::JoinHandle<()>>,
    }

    impl Drop for Leadership {
        fn drop(&mut self) {
            self.stop.cancel();
        }
    }

    impl std::fmt::Debug for Inner {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Inner")
                .field("settings", &self.settings)
                .finish_non_exhaustive()
        }
    }

    impl Leadership {
        /// Starts renewing a Lease acquired by a request sent at `sent`.
        fn start(inner: Arc<Inner>, sent: Instant) -> Leadership {
            let lost = CancellationToken::new();
            let stop = CancellationToken::new();
            let held_until = Arc::new(Mutex::new(sent + inner.settings.renew_deadline));
            let task = tokio::spawn(renew(
                inner.clone(),
                lost.clone(),
                stop.clone(),
                held_until.clone(),
            ));
            Leadership {
                inner,
                lost,
                stop,
                held_until,
                task: Some(task),
            }
        }

        /// The token that fires when this replica lost the Lease (a renewal missed its
        /// deadline, or another replica holds it).
        pub fn lost(&self) -> CancellationToken {
            self.lost.clone()
        }

        /// What each scale set of this replica is given: the owner name for its runners
        /// (the Lease's name) and the [`lost`](Self::lost) token.
        pub fn leading(&self) -> super::Leading {
            let s = &self.inner.settings;
            super::Leading {
                instance: s.lease_name.clone(),
                lease: format!("{}/{}", s.namespace, s.lease_name),
                lost: self.lost.clone(),
                held_until: self.held_until.clone(),
            }
        }

        /// Stops renewing and, if this replica still holds the Lease, gives it up so a
        /// standby takes over on its next try (bounded to a few seconds; a failure only
        /// means the standby waits out the lease duration).
        pub async fn release(mut self) {
            self.stop.cancel();
            if let Some(task) = self.task.take() {
                let _ = task.await;
            }
            if self.lost.is_cancelled() {
                return;
            }
            let s = &self.inner.settings;
            match tokio::time::timeout(RELEASE_TIMEOUT, self.inner.release()).await {
                Ok(Ok(true)) => {
                    tracing::info!(lease = %s.lease_name, "leader election: released the lease")
                }
                Ok(Ok(false)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(lease = %s.lease_name, error = %api_message(&e), "leader election: could not release the lease; a standby takes over once it expires")
                }
                Err(_) => {
                    tracing::warn!(lease = %s.lease_name, "leader election: releasing the lease timed out; a standby takes over once it expires")
                }
            }
        }
    }

    /// The leader's renewals; fires `lost` and ends when the Lease is lost.
    async fn renew(
        inner: Arc<Inner>,
        lost: CancellationToken,
        stop: CancellationToken,
        held_until: Arc<Mutex<Instant>>,
    ) {
        let s = &inner.settings;
        let mut renewed = *held_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            - s.renew_deadline;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(s.retry_period) => {}
            }
            let deadline = renewed + s.renew_deadline;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    tracing::error!(lease = %s.lease_name, deadline_s = s.renew_deadline.as_secs_f64(), "leader election: could not renew the lease in time; stopping at once");
                    lost.cancel();
                    return;
                }
                let sent = Instant::now();
                let attempt = tokio::select! {
                    () = stop.cancelled() => return,
                    r = tokio::time::timeout(left, inner.try_acquire_or_renew()) => r,
                };
                match attempt {
                    Ok(Ok(Attempt::Held)) => {
                        renewed = sent;
                        *held_until
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner) =
                            sent + s.renew_deadline;
                        break;
                    }
                    Ok(Ok(Attempt::HeldBy(holder))) => {
                        tracing::error!(lease = %s.lease_name, holder = %holder, "leader election: another replica holds the lease now; stopping at once");
                        lost.cancel();
                        return;
                    }
                    Ok(Ok(Attempt::Conflict)) => {
                        // Someone wrote the Lease since we read it: read it again at once.
                        tracing::debug!(lease = %s.lease_name, "leader election: conflict renewing the lease; reading it again");
                        tokio::task::yield_now().await;
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(lease = %s.lease_name, error = %api_message(&e), left_s = left.as_secs_f64(), "leader election: could not renew the lease; retrying");
                        tokio::select! {
                            () = stop.cancelled() => return,
                            () = tokio::time::sleep(s.retry_period.min(left)) => {}
                        }
                    }
                    Err(_) => {}
                }
            }
        }
    }
}

impl Leading {
    /// Whether this replica still holds the Lease by its own clock. A replica frozen past
    /// its renewal deadline (SIGSTOP, a paused VM) wakes with timers that fire in any
    /// order; this answers false from its first instant awake, and fires `lost`.
    pub fn holds(&self) -> bool {
        if self.lost.is_cancelled() {
            return false;
        }
        let until = *self
            .held_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if tokio::time::Instant::now() < until {
            return true;
        }
        tracing::error!(lease = %self.lease, "leader election: the lease was not renewed in time; stopping at once");
        self.lost.cancel();
        false
    }

    /// [`holds`](Self::holds) as an engine's [fence](crate::engine::Engine::fence).
    pub fn fence(&self) -> crate::engine::Fence {
        let me = self.clone();
        Arc::new(move || me.holds())
    }

    /// The error a scale set of a replica that lost the Lease stops with.
    pub fn lost_error(&self) -> Error {
        Error::LeadershipLost {
            lease: self.lease.clone(),
        }
    }
}
