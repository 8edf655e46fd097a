//! Leader election over a `coordination.k8s.io/v1` Lease against the fake API server: one
//! holder at a time, a standby that takes over once the leader stops renewing (within the
//! lease duration by its own clock), a conflict on renewal that is retried, a lease taken
//! behind the leader's back that ends its leadership at once, and a release that lets the
//! standby in without waiting. Every wait has a deadline; nothing asserts wall-clock times.
#![cfg(feature = "kubernetes")]

#[path = "support/fake_kube.rs"]
mod fake_kube;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fake_kube::{FakeKube, Kind};
use scaleset_autoscaler::config::LeaderElectionSettings;
use scaleset_autoscaler::leader::{LeaderElection, Leadership};
use scaleset_autoscaler::server::StandbyStatus;
use tokio_util::sync::CancellationToken;

const NS: &str = "ci";
const LEASE: &str = "scaleset-test";
/// Far beyond any wait below.
const DEADLINE: Duration = Duration::from_secs(30);
/// Short timers so a takeover takes a second or two.
const LEASE_DURATION: Duration = Duration::from_millis(1500);
const RENEW_DEADLINE: Duration = Duration::from_millis(1000);
const RETRY: Duration = Duration::from_millis(200);

fn settings(identity: &str) -> LeaderElectionSettings {
    LeaderElectionSettings {
        lease_name: LEASE.into(),
        namespace: NS.into(),
        identity: identity.into(),
        lease_duration: LEASE_DURATION,
        renew_deadline: RENEW_DEADLINE,
        retry_period: RETRY,
        kubeconfig: None,
        context: None,
    }
}

fn election(fake: &FakeKube, identity: &str) -> LeaderElection {
    let config = kube::Config::new(fake.url().parse().expect("the fake's URL"));
    let client = kube::Client::try_from(config).expect("a client for the fake");
    LeaderElection::with_client(client, settings(identity))
}

fn holder(fake: &FakeKube) -> Option<String> {
    fake.get(Kind::Lease, NS, LEASE)?["spec"]["holderIdentity"]
        .as_str()
        .map(str::to_string)
}

async fn lead(e: &LeaderElection) -> Leadership {
    tokio::time::timeout(DEADLINE, e.acquire(&CancellationToken::new(), |_| {}))
        .await
        .expect("acquired before the deadline")
        .expect("not cancelled")
}

/// A standby trying in a task; what it heard while waiting.
struct Standby {
    task: tokio::task::JoinHandle<Option<Leadership>>,
    heard: Arc<Mutex<Vec<StandbyStatus>>>,
    cancel: CancellationToken,
}

fn standby(e: LeaderElection) -> Standby {
    let heard = Arc::new(Mutex::new(Vec::new()));
    let cancel = CancellationToken::new();
    let (h, c) = (heard.clone(), cancel.clone());
    let task = tokio::spawn(async move {
        e.acquire(&c, |s| h.lock().expect("not poisoned").push(s))
            .await
    });
    Standby {
        task,
        heard,
        cancel,
    }
}

impl Standby {
    async fn takes_over(self) -> Leadership {
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("the standby took over before the deadline")
            .expect("the task did not panic")
            .expect("not cancelled")
    }
}

#[tokio::test]
async fn one_holder_at_a_time_and_the_standby_takes_over_once_renewals_stop() {
    let fake = FakeKube::start().await;
    let a = election(&fake, "pod-a");
    let leader = lead(&a).await;
    let lease = fake
        .get(Kind::Lease, NS, LEASE)
        .expect("the lease was created");
    assert_eq!(lease["spec"]["holderIdentity"], "pod-a");
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 2, "1.5 s rounded up");
    assert_eq!(lease["spec"]["leaseTransitions"], 0);

    let b = standby(election(&fake, "pod-b"));
    // The leader renews: through several lease durations the standby only waits.
    let renewed = fake
        .wait_until(LEASE_DURATION * 3, |f| {
            f.requests()
                .iter()
                .filter(|r| r.method == "PUT" && r.path.ends_with(LEASE))
                .count()
                >= 6
        })
        .await;
    assert!(renewed, "the leader renews every retry period");
    assert!(
        !b.task.is_finished(),
        "the standby does not take a held lease"
    );
    assert_eq!(holder(&fake).as_deref(), Some("pod-a"));
    assert!(!leader.lost().is_cancelled());
    assert!(
        b.heard
            .lock()
            .expect("not poisoned")
            .iter()
            .all(|s| matches!(s, StandbyStatus::Waiting { holder, .. } if holder == "pod-a")),
        "the standby heard who leads: {:?}",
        b.heard.lock().expect("not poisoned")
    );

    // The leader stops renewing without giving the lease up (a crash, a frozen process).
    drop(leader);
    let new_leader = b.takes_over().await;
    let lease = fake.get(Kind::Lease, NS, LEASE).expect("the lease");
    assert_eq!(lease["spec"]["holderIdentity"], "pod-b");
    assert_eq!(lease["spec"]["leaseTransitions"], 1);
    assert_eq!(
        new_leader.leading().instance,
        LEASE,
        "runners are the lease's"
    );
    assert_eq!(new_leader.leading().lease, format!("{NS}/{LEASE}"));
}

#[tokio::test]
async fn a_conflict_on_renewal_is_read_again_and_renewed() {
    let fake = FakeKube::start().await;
    let a = election(&fake, "pod-a");
    let leader = lead(&a).await;
    let puts = |f: &FakeKube| {
        f.requests()
            .iter()
            .filter(|r| r.method == "PUT" && r.path.ends_with(LEASE))
            .count()
    };
    let before = puts(&fake);
    fake.conflict_next_replaces(Kind::Lease, 2);
    // Two renewals lose a race, the third (read again, same holder) succeeds.
    let ok = fake.wait_until(DEADLINE, |f| puts(f) >= before + 4).await;
    assert!(ok, "renewals go on after the conflicts");
    assert!(!leader.lost().is_cancelled(), "a conflict is not a loss");
    assert_eq!(holder(&fake).as_deref(), Some("pod-a"));
}

#[tokio::test]
async fn a_lease_taken_behind_the_leaders_back_ends_its_leadership_at_once() {
    let fake = FakeKube::start().await;
    let a = election(&fake, "pod-a");
    let leader = lead(&a).await;
    let lost = leader.lost();
    fake.update(Kind::Lease, NS, LEASE, |l| {
        l["spec"]["holderIdentity"] = "pod-z".into();
    });
    tokio::time::timeout(DEADLINE, lost.cancelled())
        .await
        .expect("the leader saw it lost the lease");
    assert_eq!(
        holder(&fake).as_deref(),
        Some("pod-z"),
        "it wrote nothing after"
    );
}

#[tokio::test]
async fn a_leader_that_cannot_renew_stops_before_the_lease_expires_for_others() {
    let fake = FakeKube::start().await;
    let a = election(&fake, "pod-a");
    let leader = lead(&a).await;
    let lost = leader.lost();
    // The API server goes away: renewals fail until the renew deadline passes.
    drop(fake);
    tokio::time::timeout(DEADLINE, lost.cancelled())
        .await
        .expect("the leader gave up after its renew deadline");
}

#[tokio::test]
async fn a_released_lease_is_taken_over_at_the_standbys_next_try() {
    let fake = FakeKube::start().await;
    // Long lease: only a release lets the standby in within the deadline below.
    let mut long = settings("pod-a");
    long.lease_duration = Duration::from_secs(600);
    long.renew_deadline = Duration::from_secs(300);
    let config = kube::Config::new(fake.url().parse().expect("the fake's URL"));
    let a = LeaderElection::with_client(kube::Client::try_from(config).expect("a client"), long);
    let leader = lead(&a).await;
    let b = standby(election(&fake, "pod-b"));
    let seen = fake
        .wait_until(DEADLINE, |_| {
            !b.heard.lock().expect("not poisoned").is_empty()
        })
        .await;
    assert!(seen, "the standby looked at the lease");
    leader.release().await;
    let lease = fake.get(Kind::Lease, NS, LEASE).expect("the lease");
    assert!(lease["spec"]["holderIdentity"].is_null(), "{lease}");
    tokio::time::timeout(Duration::from_secs(20), b.takes_over())
        .await
        .expect("taken over long before the 600 s lease ran out");
    assert_eq!(holder(&fake).as_deref(), Some("pod-b"));
}

#[tokio::test]
async fn a_standby_that_cannot_read_the_lease_says_why_and_stops_on_shutdown() {
    let fake = FakeKube::start().await;
    let e = election(&fake, "pod-b");
    drop(fake);
    let b = standby(e);
    let heard = b.heard.clone();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while heard.lock().expect("not poisoned").is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the standby reported nothing"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        matches!(&heard.lock().expect("not poisoned")[0], StandbyStatus::Failing(why) if why.contains("scaleset-test")),
        "{:?}",
        heard.lock().expect("not poisoned")
    );
    b.cancel.cancel();
    let r = tokio::time::timeout(DEADLINE, b.task)
        .await
        .expect("ended on shutdown")
        .expect("no panic");
    assert!(r.is_none(), "cancelled, not leading");
}
