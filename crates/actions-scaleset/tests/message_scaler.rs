//! The message-level [`MessageScaler`] against the `scaleset-sim` simulator on `127.0.0.1:0`:
//! the synthetic initial statistics first, each message whole with its job messages in order,
//! an empty poll as `None`, acknowledgement only after `Ok`, redelivery after an `Err`, and
//! acquisition left to the handler.
//!
//! Real clock with short timers; every wait has a deadline and no test asserts a duration.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actions_scaleset::listener::BoxError;
use actions_scaleset::{
    CancellationToken, Client, Credentials, DEFAULT_RUNNER_GROUP_ID, INITIAL_MESSAGE_ID,
    JobMessage, Listener, ListenerConfig, MessageContext, MessageScaler, RunnerScaleSet,
    RunnerScaleSetMessage, ScaleSetId,
};
use scaleset_sim::{AssignmentMode, EnqueueJobs, SimConfig, Simulator};
use tokio::sync::Notify;

const WAIT: Duration = Duration::from_secs(30);

/// One call of the handler, as recorded.
#[derive(Clone, Debug, PartialEq)]
enum Call {
    /// The synthetic initial message: its statistics' `totalAssignedJobs`.
    Initial(i64),
    /// A message: its id, its job messages as `(type, runnerRequestId)`, and how many DELETEs
    /// of that message the simulator had seen when the handler was called.
    Message(i64, Vec<(&'static str, i64)>, usize),
    /// An empty poll.
    Empty,
}

struct Recorder {
    sim: Arc<Simulator>,
    calls: Mutex<Vec<Call>>,
    changed: Notify,
    /// Fail the first delivery of the first real message.
    fail_first: bool,
    failed_once: Mutex<bool>,
    /// Acquire offered jobs (GHES).
    acquire: bool,
}

impl Recorder {
    fn new(sim: Arc<Simulator>, fail_first: bool, acquire: bool) -> Arc<Recorder> {
        Arc::new(Recorder {
            sim,
            calls: Mutex::default(),
            changed: Notify::new(),
            fail_first,
            failed_once: Mutex::new(false),
            acquire,
        })
    }

    async fn wait_for(&self, what: &str, pred: impl Fn(&[Call]) -> bool) -> Vec<Call> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let calls = self.calls.lock().expect("lock").clone();
            if pred(&calls) {
                return calls;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("timed out waiting for {what}: {calls:?}");
            }
        }
    }

    fn deletes_of(&self, message_id: i64) -> usize {
        let suffix = format!("/message/{message_id}");
        self.sim
            .requests()
            .iter()
            .filter(|e| e.method == "DELETE" && e.path.ends_with(&suffix))
            .count()
    }
}

fn kind(job: &JobMessage) -> (&'static str, i64) {
    match job {
        JobMessage::Available(j) => ("JobAvailable", j.base.runner_request_id.get()),
        JobMessage::Assigned(j) => ("JobAssigned", j.base.runner_request_id.get()),
        JobMessage::Started(j) => ("JobStarted", j.base.runner_request_id.get()),
        JobMessage::Completed(j) => ("JobCompleted", j.base.runner_request_id.get()),
    }
}

impl MessageScaler for Recorder {
    async fn handle_message(
        &self,
        message: Option<&RunnerScaleSetMessage>,
        ctx: &MessageContext<'_>,
    ) -> Result<(), BoxError> {
        let call = match message {
            None => Call::Empty,
            Some(m) if m.message_id == INITIAL_MESSAGE_ID => {
                assert!(m.jobs.is_empty(), "the initial message has no jobs: {m:?}");
                assert_eq!(m.statistics.as_ref(), Some(ctx.statistics()));
                Call::Initial(ctx.statistics().total_assigned_jobs)
            }
            Some(m) => Call::Message(
                m.message_id.get(),
                m.jobs.iter().map(kind).collect(),
                self.deletes_of(m.message_id.get()),
            ),
        };
        let fail = matches!(call, Call::Message(..)) && self.fail_first && {
            let mut failed = self.failed_once.lock().expect("lock");
            !std::mem::replace(&mut *failed, true)
        };
        self.calls.lock().expect("lock").push(call);
        self.changed.notify_waiters();
        if fail {
            return Err("the test handler fails the first delivery".into());
        }
        if self.acquire
            && let Some(m) = message
        {
            ctx.acquire_available(m).await?;
        }
        Ok(())
    }
}

async fn sim(mode: AssignmentMode) -> Arc<Simulator> {
    Arc::new(
        Simulator::start(SimConfig {
            mode,
            long_poll: Duration::from_millis(300),
            ..SimConfig::default()
        })
        .await
        .expect("simulator starts"),
    )
}

fn client(sim: &Simulator) -> Client {
    Client::builder(
        sim.config_url(),
        Credentials::token(sim.token()).expect("sim token"),
    )
    .retry_max(1)
    .retry_wait_min(Duration::from_millis(5))
    .retry_wait_max(Duration::from_millis(20))
    .build()
    .expect("client")
}

struct Running {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<actions_scaleset::Result<()>>,
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the listener stops before the deadline")
            .expect("the task does not panic")
            .expect("the listener ends cleanly");
    }
}

async fn start(sim: &Simulator, name: &str, scaler: Arc<Recorder>) -> (i64, Running) {
    let client = client(sim);
    let set = client
        .create_runner_scale_set(&RunnerScaleSet {
            name: name.into(),
            runner_group_id: DEFAULT_RUNNER_GROUP_ID,
            ..Default::default()
        })
        .await
        .expect("create scale set");
    let session = client
        .create_message_session_client(set.id, None)
        .await
        .expect("session");
    let mut config = ListenerConfig::new(set.id, 10);
    config.backoff_min = Duration::from_millis(10);
    config.backoff_max = Duration::from_millis(50);
    let listener = Arc::new(Listener::new(session, config).expect("listener"));
    let shutdown = CancellationToken::new();
    let task = {
        let (l, t) = (listener.clone(), shutdown.clone());
        tokio::spawn(async move { l.run(&*scaler, &t).await })
    };
    (set.id.get(), Running { shutdown, task })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_statistics_first_then_whole_messages_and_empty_polls() {
    let sim = sim(AssignmentMode::Hosted).await;
    let rec = Recorder::new(sim.clone(), false, false);
    let (_, running) = start(&sim, "msg-order", rec.clone()).await;
    rec.wait_for("the initial message", |c| !c.is_empty()).await;
    let ids = sim
        .enqueue_jobs(EnqueueJobs {
            labels: vec!["msg-order".into()],
            count: 3,
            ..Default::default()
        })
        .await
        .expect("enqueue");
    let calls = rec
        .wait_for("the three JobAssigned and an empty poll after them", |c| {
            let assigned: usize = c
                .iter()
                .map(|x| match x {
                    Call::Message(_, jobs, _) => jobs.len(),
                    _ => 0,
                })
                .sum();
            let last_message = c.iter().rposition(|x| matches!(x, Call::Message(..)));
            assigned >= 3 && last_message.is_some_and(|i| c[i + 1..].contains(&Call::Empty))
        })
        .await;
    running.stop().await;

    assert_eq!(calls[0], Call::Initial(0), "{calls:?}");
    assert_eq!(
        calls
            .iter()
            .filter(|c| matches!(c, Call::Initial(_)))
            .count(),
        1,
        "{calls:?}"
    );
    let jobs: Vec<(&str, i64)> = calls
        .iter()
        .flat_map(|c| match c {
            Call::Message(_, jobs, _) => jobs.clone(),
            _ => Vec::new(),
        })
        .collect();
    let want: Vec<(&str, i64)> = ids.iter().map(|&id| ("JobAssigned", id)).collect();
    assert_eq!(jobs, want, "every job message, in the order sent");
    // Each message was acknowledged once, after the handler returned, never before.
    for call in &calls {
        if let Call::Message(id, _, deletes_before) = call {
            assert_eq!(
                *deletes_before, 0,
                "message {id} was deleted before handling"
            );
            assert_eq!(rec.deletes_of(*id), 1, "message {id} acknowledged once");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_err_leaves_the_message_for_redelivery() {
    let sim = sim(AssignmentMode::Hosted).await;
    let rec = Recorder::new(sim.clone(), true, false);
    let (_, running) = start(&sim, "msg-retry", rec.clone()).await;
    rec.wait_for("the initial message", |c| !c.is_empty()).await;
    let ids = sim
        .enqueue_jobs(EnqueueJobs {
            labels: vec!["msg-retry".into()],
            ..Default::default()
        })
        .await
        .expect("enqueue");
    let calls = rec
        .wait_for("the same message twice", |c| {
            c.iter().filter(|x| matches!(x, Call::Message(..))).count() >= 2
        })
        .await;
    let deliveries: Vec<&Call> = calls
        .iter()
        .filter(|x| matches!(x, Call::Message(..)))
        .collect();
    let (Call::Message(first, jobs, before_first), Call::Message(second, again, before_second)) =
        (deliveries[0], deliveries[1])
    else {
        unreachable!("filtered on Message")
    };
    assert_eq!(first, second, "the failed message comes back: {calls:?}");
    assert_eq!(jobs, again);
    assert_eq!(jobs, &vec![("JobAssigned", ids[0])]);
    assert_eq!(
        (*before_first, *before_second),
        (0, 0),
        "not acknowledged after the Err"
    );
    // Acknowledged after the Ok of the second delivery.
    let id = *first;
    let (acked, _) = sim.wait_until(WAIT, |_| rec.deletes_of(id) == 1).await;
    running.stop().await;
    assert!(
        acked || rec.deletes_of(id) == 1,
        "message {id} acknowledged once after Ok"
    );
    assert_eq!(rec.deletes_of(id), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquiring_is_the_handlers_job() {
    // GHES: offered jobs stay unacquired unless the handler acquires them.
    let sim = sim(AssignmentMode::Ghes).await;
    let passive = Recorder::new(sim.clone(), false, false);
    let (passive_set, running) = start(&sim, "msg-passive", passive.clone()).await;
    passive
        .wait_for("the initial message", |c| !c.is_empty())
        .await;
    let ids = sim
        .enqueue_jobs(EnqueueJobs {
            labels: vec!["msg-passive".into()],
            ..Default::default()
        })
        .await
        .expect("enqueue");
    passive
        .wait_for("the JobAvailable", |c| {
            c.iter().any(
                |x| matches!(x, Call::Message(_, j, _) if j.contains(&("JobAvailable", ids[0]))),
            )
        })
        .await;
    let list = client(&sim)
        .get_acquirable_jobs(ScaleSetId::new(passive_set))
        .await
        .expect("list");
    running.stop().await;
    assert_eq!(
        list.jobs.len(),
        1,
        "the listener did not acquire it: {list:?}"
    );
    assert!(
        !sim.requests()
            .iter()
            .any(|e| e.path.ends_with("/acquirejobs")),
        "no acquirejobs call without the handler"
    );

    let active = Recorder::new(sim.clone(), false, true);
    let (active_set, running) = start(&sim, "msg-active", active.clone()).await;
    active
        .wait_for("the initial message", |c| !c.is_empty())
        .await;
    let ids = sim
        .enqueue_jobs(EnqueueJobs {
            labels: vec!["msg-active".into()],
            ..Default::default()
        })
        .await
        .expect("enqueue");
    active
        .wait_for("the JobAssigned after acquiring", |c| {
            c.iter().any(
                |x| matches!(x, Call::Message(_, j, _) if j.contains(&("JobAssigned", ids[0]))),
            )
        })
        .await;
    running.stop().await;
    let list = client(&sim)
        .get_acquirable_jobs(ScaleSetId::new(active_set))
        .await
        .expect("list");
    assert!(list.jobs.is_empty(), "{list:?}");
}
