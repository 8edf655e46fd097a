//! Client calls against the `scaleset-sim` simulator on `127.0.0.1:0`: acquirable jobs and
//! runner removal. Every wait has a deadline; no test asserts a wall-clock duration.

use std::time::Duration;

use actions_scaleset::{
    Client, Credentials, DEFAULT_RUNNER_GROUP_ID, ErrorKind, JitRunnerSetting, MessageId,
    RunnerRemoval, RunnerRequestId, RunnerScaleSet,
};
use scaleset_sim::{AssignmentMode, EnqueueJobs, SimConfig, Simulator};

const WAIT: Duration = Duration::from_secs(30);

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f)
        .await
        .expect("finishes before the deadline")
}

async fn sim(tweak: impl FnOnce(&mut SimConfig)) -> Simulator {
    let mut cfg = SimConfig {
        long_poll: Duration::from_millis(300),
        ..SimConfig::default()
    };
    tweak(&mut cfg);
    Simulator::start(cfg).await.expect("simulator starts")
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

async fn create(client: &Client, name: &str) -> RunnerScaleSet {
    within(client.create_runner_scale_set(&RunnerScaleSet {
        name: name.into(),
        runner_group_id: DEFAULT_RUNNER_GROUP_ID,
        ..Default::default()
    }))
    .await
    .expect("create scale set")
}

#[tokio::test]
async fn acquirable_jobs_are_the_offered_ones_not_yet_acquired() {
    let sim = sim(|c| c.mode = AssignmentMode::Ghes).await;
    let client = client(&sim);
    let set = create(&client, "ghes-set").await;

    // Nothing offered yet: the service answers 204, read as an empty list.
    let empty = within(client.get_acquirable_jobs(set.id))
        .await
        .expect("empty list");
    assert_eq!(empty.count, 0);
    assert!(empty.jobs.is_empty());

    let ids = sim
        .enqueue_jobs(EnqueueJobs {
            labels: vec!["ghes-set".into()],
            count: 3,
            ..Default::default()
        })
        .await
        .expect("enqueue");
    let ids: Vec<RunnerRequestId> = ids.into_iter().map(RunnerRequestId::new).collect();
    // The simulator offers jobs to a scale set once a poll told it the capacity.
    let session = within(client.create_message_session_client(set.id, None))
        .await
        .expect("session");
    let message = within(session.get_message(MessageId::new(0), 10))
        .await
        .expect("poll")
        .expect("a message with the offered jobs");
    assert_eq!(message.jobs_available().count(), 3);

    let list = within(client.get_acquirable_jobs(set.id))
        .await
        .expect("list");
    assert_eq!(list.count, 3);
    let mut listed: Vec<RunnerRequestId> =
        list.jobs.iter().map(|j| j.base.runner_request_id).collect();
    listed.sort_unstable();
    assert_eq!(listed, ids);
    for job in &list.jobs {
        assert_eq!(job.base.message_type, "JobAvailable");
        assert_eq!(job.base.request_labels, vec!["ghes-set".to_string()]);
        assert!(
            job.acquire_job_url.ends_with("/acquirejobs"),
            "{}",
            job.acquire_job_url
        );
    }

    // An acquired job is no longer acquirable.
    let acquired = within(session.acquire_jobs(&ids[..1]))
        .await
        .expect("acquire");
    assert_eq!(acquired, ids[..1]);
    let list = within(client.get_acquirable_jobs(set.id))
        .await
        .expect("list");
    let mut listed: Vec<RunnerRequestId> =
        list.jobs.iter().map(|j| j.base.runner_request_id).collect();
    listed.sort_unstable();
    assert_eq!(listed, ids[1..]);
    assert_eq!(list.count, 2);
    within(session.close()).await.expect("close");

    // The request carried the admin token and the api-version, as its siblings do.
    let log = sim.requests();
    let call = log
        .iter()
        .find(|e| e.path.ends_with("/acquirablejobs"))
        .expect("the call is logged");
    assert_eq!(call.method, "GET");
    assert!(
        call.query
            .as_deref()
            .unwrap_or_default()
            .contains("api-version=6.0-preview"),
        "{call:?}"
    );
    assert_eq!(
        call.headers.get("authorization").map(String::as_str),
        Some("Bearer")
    );
}

#[tokio::test]
async fn acquirable_jobs_on_hosted_are_empty() {
    // github.com assigns jobs directly: nothing is ever offered.
    let sim = sim(|_| {}).await;
    let client = client(&sim);
    let set = create(&client, "hosted-set").await;
    sim.enqueue_jobs(EnqueueJobs {
        labels: vec!["hosted-set".into()],
        ..Default::default()
    })
    .await
    .expect("enqueue");
    let session = within(client.create_message_session_client(set.id, None))
        .await
        .expect("session");
    let message = within(session.get_message(MessageId::new(0), 10))
        .await
        .expect("poll")
        .expect("a message");
    assert_eq!(message.jobs_assigned().count(), 1);
    let list = within(client.get_acquirable_jobs(set.id))
        .await
        .expect("list");
    assert!(list.jobs.is_empty());
    within(session.close()).await.expect("close");
}

#[tokio::test]
async fn a_second_removal_is_already_gone() {
    let sim = sim(|c| c.missing_runner_delete_not_found = true).await;
    let client = client(&sim);
    let set = create(&client, "removal-set").await;
    let jit = within(client.generate_jit_runner_config(
        set.id,
        &JitRunnerSetting {
            name: "runner-gone".into(),
            work_folder: String::new(),
        },
    ))
    .await
    .expect("jit");
    let id = jit.runner.id;
    assert_eq!(
        within(client.remove_runner(id))
            .await
            .expect("first removal"),
        RunnerRemoval::Removed
    );
    assert_eq!(
        within(client.remove_runner(id))
            .await
            .expect("second removal"),
        RunnerRemoval::AlreadyGone
    );
    // The runner is gone for the other calls too.
    let e = within(client.get_runner(id)).await.expect_err("gone");
    assert_eq!(e.kind(), ErrorKind::RunnerNotFound);
}

#[tokio::test]
async fn removal_stays_idempotent_when_the_service_answers_204() {
    // The service's usual behaviour: 204 for a runner it does not have.
    let sim = sim(|_| {}).await;
    let client = client(&sim);
    let set = create(&client, "removal-204").await;
    let jit = within(client.generate_jit_runner_config(
        set.id,
        &JitRunnerSetting {
            name: "runner-204".into(),
            work_folder: String::new(),
        },
    ))
    .await
    .expect("jit");
    for _ in 0..2 {
        assert_eq!(
            within(client.remove_runner(jit.runner.id))
                .await
                .expect("removal"),
            RunnerRemoval::Removed
        );
    }
}
