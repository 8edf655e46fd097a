//! Issue item 1 (section 10 weakness 1): no global lock. The client is `Clone + Send + Sync`,
//! calls overlap on the wire, and the admin-token refresh is single-flight, including when it
//! fails.

mod common;

use actions_scaleset::{Client, RunnerGroupId, RunnerId};
use common::*;
use futures::FutureExt;
use futures::future::join_all;

const AGENT_1: &str = "_apis/distributedtask/pools/0/agents/1";

#[test]
fn client_is_clone_send_sync() {
    fn assert_traits<T: Clone + Send + Sync + 'static>() {}
    assert_traits::<Client>();
    fn assert_send<T: Send>(_: &T) {}
    let c = Client::builder("https://github.com/org", pat())
        .build()
        .expect("client");
    // The futures of the operations are Send too, so they can be spawned.
    assert_send(&c.get_runner(RunnerId::new(1)));
    assert_send(&c.get_runner_scale_set(RunnerGroupId::new(1), "x"));
}

// At least 20 requests in flight at once on one Client: the server holds every tenant request
// until 20 are in flight (deadline 10 s), so without overlap the max stays at 1. Also, only
// one registration round trip for all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_requests_overlap_on_the_wire() {
    let s = TestServer::with_auth().await;
    let waiter = s.clone();
    s.on_async("GET", &tenant_path(AGENT_1), move |_, _| {
        let waiter = waiter.clone();
        async move {
            waiter
                .wait_inflight(20, std::time::Duration::from_secs(10))
                .await;
            Reply::json(200, r#"{"id":1}"#)
        }
        .boxed()
    });
    let c = client(&s);
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.get_runner(RunnerId::new(1)).await })
        })
        .collect();
    for t in within(join_all(tasks)).await {
        t.expect("task").expect("call succeeds");
    }
    assert!(s.max_inflight() >= 20, "max in flight {}", s.max_inflight());
    assert_eq!(s.count(REG_TOKEN_PATH), 1);
    assert_eq!(s.count(RUNNER_REGISTRATION_PATH), 1);
}

// 50 concurrent first calls: exactly one registration-token and one runner-registration
// round trip, and 50 tenant calls with that admin token. The futures are polled together by
// join_all on a current-thread runtime, so all 50 ask for the token before any answer arrives.
#[tokio::test]
async fn fifty_first_calls_share_one_refresh() {
    let s = TestServer::with_auth().await;
    s.on_tenant("GET", AGENT_1, |_, _| Reply::json(200, r#"{"id":1}"#));
    let c = client(&s);
    let results = within(join_all((0..50).map(|_| c.get_runner(RunnerId::new(1))))).await;
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(s.count(REG_TOKEN_PATH), 1);
    assert_eq!(s.count(RUNNER_REGISTRATION_PATH), 1);
    let tenant = s.tenant_requests();
    assert_eq!(tenant.len(), 50);
    assert!(
        tenant
            .iter()
            .all(|r| r.authorization() == tenant[0].authorization())
    );
}

// When that one refresh fails, all 50 waiters get the failure of that one attempt: the server
// sees one refresh sequence (with its own retries), not 50. Checked with a non-retried 403 and
// with a retried 503 (retryMax 2 -> 3 requests in total).
#[tokio::test]
async fn fifty_waiters_share_one_failed_refresh() {
    for (status, expected_requests) in [(403u16, 1usize), (503, 3)] {
        let s = TestServer::with_auth().await;
        s.on("POST", REG_TOKEN_PATH, move |_, _| {
            Reply::json(status, r#"{"message":"no token for you"}"#)
        });
        let c = builder(&s).retry_max(2).build().expect("client");
        let results = within(join_all((0..50).map(|_| c.get_runner(RunnerId::new(1))))).await;
        for r in &results {
            let e = r.as_ref().expect_err("refresh failed");
            assert_eq!(e.status(), Some(status), "{e}");
            assert!(e.to_string().contains("no token for you"), "{e}");
        }
        assert_eq!(
            s.count(REG_TOKEN_PATH),
            expected_requests,
            "status {status}"
        );
        assert_eq!(s.count(RUNNER_REGISTRATION_PATH), 0);
        assert!(s.tenant_requests().is_empty());
        // The next call starts a new refresh.
        s.default_auth();
        s.on_tenant("GET", AGENT_1, |_, _| Reply::json(200, r#"{"id":1}"#));
        within(c.get_runner(RunnerId::new(1)))
            .await
            .expect("recovered");
    }
}

// Issue item 6 under concurrency: 20 calls that all see a 401 with the same stale admin token
// force one refresh between them, and each retries once with the new token.
#[tokio::test]
async fn concurrent_401s_force_a_single_refresh() {
    let s = TestServer::with_auth().await;
    s.on_tenant("GET", AGENT_1, |r, _| {
        // The first admin token (claims with "n":0) is refused; later ones are accepted.
        if is_first_token(r) {
            Reply::status(401)
        } else {
            Reply::json(200, r#"{"id":1}"#)
        }
    });
    let c = client(&s);
    let results = within(join_all((0..20).map(|_| c.get_runner(RunnerId::new(1))))).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(
        s.count(RUNNER_REGISTRATION_PATH),
        2,
        "initial + one forced refresh"
    );
    assert_eq!(s.tenant_requests().len(), 40);
}

/// Whether the tenant request carries the admin token of the first refresh (`"n":0`).
fn is_first_token(r: &Recorded) -> bool {
    use base64::Engine as _;
    let Some(token) = r.authorization().strip_prefix("Bearer ") else {
        return false;
    };
    let Some(claims) = token.split('.').nth(1) else {
        return false;
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_some_and(|v| v["n"] == 0)
}
