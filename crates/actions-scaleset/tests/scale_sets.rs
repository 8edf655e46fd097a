//! Scale-set and runner-group operations over HTTP (PROTOCOL.md section 9, behaviours 24-44),
//! plus the query-escaping and count/value items of section 10.

mod common;

use actions_scaleset::{
    ErrorKind, Label, RunnerGroupId, RunnerRequestId, RunnerScaleSet, RunnerScaleSetUpdate,
    RunnerSetting, ScaleSetId,
};
use common::*;

const SETS: &str = "_apis/runtime/runnerscalesets";

fn full_scale_set() -> &'static str {
    r#"{"id":1,"name":"ScaleSet","runnerGroupId":1,"runnerGroupName":"Default",
        "labels":[{"type":"System","name":"ScaleSet"}],
        "RunnerSetting":{"disableUpdate":true},
        "createdOn":"2025-01-01T10:00:00.1234567Z",
        "runnerJitConfigUrl":"https://example/generatejitconfig",
        "statistics":{"totalAvailableJobs":1,"totalAcquiredJobs":2,"totalAssignedJobs":3,
          "totalRunningJobs":4,"totalRegisteredRunners":5,"totalBusyRunners":6,"totalIdleRunners":7}}"#
}

// Behaviours 24 and 25: get by name returns the one scale set; the URL carries name,
// runnerGroupId and api-version; tenant headers (17) are present.
#[tokio::test]
async fn b24_b25_b17_get_by_name_returns_the_scale_set_and_calls_the_right_url() {
    let s = TestServer::with_auth().await;
    s.on_tenant("GET", SETS, |_, _| {
        Reply::json(200, r#"{"count":1,"value":[{"id":1,"name":"ScaleSet"}]}"#)
    });
    let c = client(&s);
    let got = within(c.get_runner_scale_set(RunnerGroupId::new(1), "ScaleSet"))
        .await
        .expect("found")
        .expect("some");
    assert_eq!(
        (got.id, got.name.as_str()),
        (ScaleSetId::new(1), "ScaleSet")
    );

    let reqs = s.requests_to(&tenant_path(SETS));
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.method, "GET");
    assert_eq!(r.path, "/tenant/123/_apis/runtime/runnerscalesets");
    let q = r.query_map();
    assert_eq!(q.get("name").map(String::as_str), Some("ScaleSet"));
    assert_eq!(q.get("runnerGroupId").map(String::as_str), Some("1"));
    assert_eq!(
        q.get("api-version").map(String::as_str),
        Some("6.0-preview")
    );
    assert_eq!(q.len(), 3);
    // Keys sorted alphabetically (PROTOCOL.md 1.5 step 4).
    assert_eq!(
        r.raw_query,
        "api-version=6.0-preview&name=ScaleSet&runnerGroupId=1"
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(
        r.header("user-agent")
            .is_some_and(|ua| ua.contains(r#""kind":"scaleset""#))
    );
    // No specific Accept header (reqwest's neutral `*/*` at most).
    assert!(matches!(r.header("accept"), None | Some("*/*")));
    assert!(r.authorization().starts_with("Bearer ey"));
}

// Behaviour 26: 404 with an empty body fails.
#[tokio::test]
async fn b26_get_by_name_404_fails() {
    let s = TestServer::with_auth().await;
    s.on_tenant("GET", SETS, |_, _| Reply::status(404));
    let err = within(client(&s).get_runner_scale_set(RunnerGroupId::new(1), "x"))
        .await
        .expect_err("404");
    assert_eq!(err.status(), Some(404));
    assert!(err.to_string().contains("unknown error"), "{err}");
}

// Behaviour 27: 400 text/plain fails and keeps the text.
#[tokio::test]
async fn b27_get_by_name_text_plain_400_fails() {
    let s = TestServer::with_auth().await;
    s.on_tenant("GET", SETS, |_, _| Reply::text(400, "plain text error"));
    let err = within(client(&s).get_runner_scale_set(RunnerGroupId::new(1), "x"))
        .await
        .expect_err("400");
    assert_eq!(err.status(), Some(400));
    assert!(err.to_string().contains("plain text error"), "{err}");
}

// Behaviours 28, 32, 36: 503 forever with retryMax 1 makes exactly 2 requests, for get by
// name, get by id and create.
#[tokio::test]
async fn b28_b32_b36_server_errors_are_retried_retry_max_plus_one_times() {
    let s = TestServer::with_auth().await;
    s.on_tenant("GET", SETS, |_, _| Reply::status(503));
    s.on_tenant("GET", &format!("{SETS}/1"), |_, _| Reply::status(503));
    s.on_tenant("POST", SETS, |_, _| Reply::status(503));
    let c = builder(&s).retry_max(1).build().expect("client");
    let e1 = within(c.get_runner_scale_set(RunnerGroupId::new(1), "x"))
        .await
        .expect_err("503");
    let e2 = within(c.get_runner_scale_set_by_id(ScaleSetId::new(1)))
        .await
        .expect_err("503");
    let set = RunnerScaleSet {
        name: "x".into(),
        ..Default::default()
    };
    let e3 = within(c.create_runner_scale_set(&set))
        .await
        .expect_err("503");
    for e in [&e1, &e2, &e3] {
        assert_eq!(e.status(), Some(503), "{e}");
    }
    let sets = s.requests_to(&tenant_path(SETS));
    assert_eq!(sets.iter().filter(|r| r.method == "GET").count(), 2);
    assert_eq!(sets.iter().filter(|r| r.method == "POST").count(), 2);
    assert_eq!(s.count(&tenant_path(&format!("{SETS}/1"))), 2);
}

// Behaviour 29, replaced on purpose: the reference trusts `count` (count 0 with entries ->
// none, count 1 with no entries -> panic). We treat any count/value mismatch as
// Error::Protocol (issue item 5); `count 0, value []` is still "none".
#[tokio::test]
async fn b29_count_value_mismatch_is_a_protocol_error() {
    let s = TestServer::with_auth().await;
    s.on_seq(
        "GET",
        &tenant_path(SETS),
        vec![
            Reply::json(200, r#"{"count":0,"value":[{"id":1,"name":"x"}]}"#),
            Reply::json(200, r#"{"count":1,"value":[]}"#),
            Reply::json(200, r#"{"count":0,"value":[]}"#),
        ],
    );
    let c = client(&s);
    for _ in 0..2 {
        let err = within(c.get_runner_scale_set(RunnerGroupId::new(1), "x"))
            .await
            .expect_err("mismatch");
        assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
        assert_eq!(err.status(), Some(200));
    }
    assert!(
        within(c.get_runner_scale_set(RunnerGroupId::new(1), "x"))
            .await
            .expect("ok")
            .is_none()
    );
}

// Behaviour 30: count 2 -> error naming "multiple runner scale sets found" and the ActivityId.
#[tokio::test]
async fn b30_multiple_scale_sets_is_an_error_with_activity_id() {
    let s = TestServer::with_auth().await;
    s.on_tenant("GET", SETS, |_, _| {
        Reply::json(
            200,
            r#"{"count":2,"value":[{"id":1,"name":"x"},{"id":2,"name":"x"}]}"#,
        )
        .header("ActivityId", "act-123")
    });
    let err = within(client(&s).get_runner_scale_set(RunnerGroupId::new(1), "x"))
        .await
        .expect_err("multiple");
    let text = err.to_string();
    assert!(text.contains("multiple runner scale sets found"), "{text}");
    assert!(text.contains(r#"activity_id="act-123""#), "{text}");
}

// Behaviour 31: get by id returns the full object (createdOn with 7 fractional digits,
// RunnerSetting, statistics) and calls /runnerscalesets/1?api-version=6.0-preview.
#[tokio::test]
async fn b31_get_by_id_returns_the_full_scale_set() {
    let s = TestServer::with_auth().await;
    s.on_tenant("GET", &format!("{SETS}/1"), |_, _| {
        Reply::json(200, full_scale_set())
    });
    let got = within(client(&s).get_runner_scale_set_by_id(ScaleSetId::new(1)))
        .await
        .expect("ok")
        .expect("some");
    assert_eq!(got.id, ScaleSetId::new(1));
    assert_eq!(got.runner_group_name, "Default");
    assert!(got.runner_setting.disable_update);
    assert_eq!(got.labels, vec![Label::system("ScaleSet")]);
    let created = got.created_on.expect("createdOn");
    assert_eq!(created.as_second(), 1_735_725_600);
    assert_eq!(created.subsec_nanosecond(), 123_456_700);
    assert_eq!(got.statistics.map(|s| s.total_assigned_jobs), Some(3));
    let r = &s.requests_to("/tenant/123/_apis/runtime/runnerscalesets/1")[0];
    assert_eq!(r.raw_query, "api-version=6.0-preview");
}

// Behaviour 32: get by id fails on 404 (as ScaleSetNotFound: our typed kind) and on 400
// text/plain.
#[tokio::test]
async fn b32_get_by_id_errors() {
    let s = TestServer::with_auth().await;
    s.on_seq(
        "GET",
        &tenant_path(&format!("{SETS}/1")),
        vec![Reply::status(404), Reply::text(400, "bad thing")],
    );
    let c = client(&s);
    let e = within(c.get_runner_scale_set_by_id(ScaleSetId::new(1)))
        .await
        .expect_err("404");
    assert_eq!(e.kind(), ErrorKind::ScaleSetNotFound, "{e}");
    assert_eq!(e.status(), Some(404));
    let e = within(c.get_runner_scale_set_by_id(ScaleSetId::new(1)))
        .await
        .expect_err("400");
    assert_eq!(e.status(), Some(400));
    assert!(e.to_string().contains("bad thing"), "{e}");
}

// Behaviour 33: 200 `null` -> none.
#[tokio::test]
async fn b33_get_by_id_null_is_none() {
    let s = TestServer::with_auth().await;
    s.on_tenant("GET", &format!("{SETS}/1"), |_, _| Reply::json(200, "null"));
    assert!(
        within(client(&s).get_runner_scale_set_by_id(ScaleSetId::new(1)))
            .await
            .expect("ok")
            .is_none()
    );
}

// Behaviours 34 and 37: create POSTs to /runnerscalesets?api-version=6.0-preview and returns the
// answer; a scale set with a name and no labels is sent with one System label named after it.
// Ours takes `&RunnerScaleSet` (the caller's value is not mutated, unlike the reference), so
// the defaulting is asserted on the request body. Unlike the reference we do not send a zero
// `createdOn` for an unset time.
#[tokio::test]
async fn b34_b37_create_sends_defaulted_labels_and_returns_the_created_set() {
    let s = TestServer::with_auth().await;
    s.on_tenant("POST", SETS, |_, _| Reply::json(200, full_scale_set()));
    let wanted = RunnerScaleSet {
        name: "my-set".into(),
        runner_group_id: RunnerGroupId::new(1),
        runner_setting: RunnerSetting {
            disable_update: true,
        },
        ..Default::default()
    };
    let got = within(client(&s).create_runner_scale_set(&wanted))
        .await
        .expect("created");
    assert_eq!(got.id, ScaleSetId::new(1));
    assert!(
        wanted.labels.is_empty(),
        "the caller's value is left as it was"
    );
    let r = &s.requests_to(&tenant_path(SETS))[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.raw_query, "api-version=6.0-preview");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.json(),
        json(
            r#"{"name":"my-set","runnerGroupId":1,
                "labels":[{"name":"my-set","type":"System"}],
                "RunnerSetting":{"disableUpdate":true},
                "createdOn":"0001-01-01T00:00:00Z"}"#
        )
    );
}

// Behaviour 35: 400 text/plain -> status and text in the error.
#[tokio::test]
async fn b35_create_text_plain_error() {
    let s = TestServer::with_auth().await;
    s.on_tenant("POST", SETS, |_, _| {
        Reply::text(400, "example plain text error")
    });
    let set = RunnerScaleSet {
        name: "x".into(),
        ..Default::default()
    };
    let e = within(client(&s).create_runner_scale_set(&set))
        .await
        .expect_err("400");
    let text = e.to_string();
    assert!(text.contains(r#"status="400 Bad Request""#), "{text}");
    assert!(text.contains("example plain text error"), "{text}");
}

// Behaviour 38: neither name nor labels -> InvalidArgument, and no request at all.
#[tokio::test]
async fn b38_create_without_name_or_labels_sends_nothing() {
    let s = TestServer::with_auth().await;
    let e = within(client(&s).create_runner_scale_set(&RunnerScaleSet::default()))
        .await
        .expect_err("invalid");
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(s.requests().is_empty(), "{:?}", s.requests());
}

// Behaviour 39: the name is the first label, then the caller's labels in order (a duplicate of
// the name, in any case, dropped); an empty type becomes System.
#[tokio::test]
async fn b39_create_preserves_labels_and_defaults_their_type() {
    let s = TestServer::with_auth().await;
    s.on_tenant("POST", SETS, |_, _| Reply::json(200, r#"{"id":2}"#));
    let set = RunnerScaleSet {
        name: "n".into(),
        labels: vec![
            Label {
                kind: String::new(),
                name: "b-label".into(),
            },
            Label {
                kind: "User".into(),
                name: "a-label".into(),
            },
            Label {
                kind: String::new(),
                name: "c-label".into(),
            },
            Label::system("N"),
        ],
        ..Default::default()
    };
    within(client(&s).create_runner_scale_set(&set))
        .await
        .expect("ok");
    let body = s.requests_to(&tenant_path(SETS))[0].json();
    assert_eq!(
        body["labels"],
        json(
            r#"[{"name":"n","type":"System"},{"name":"b-label","type":"System"},
                {"name":"a-label","type":"User"},{"name":"c-label","type":"System"}]"#
        )
    );
}

// Behaviour 40: update PATCHes /runnerscalesets/1?api-version=6.0-preview and returns the
// answer. Unlike the reference, the partial body holds only the fields given (no
// `"RunnerSetting":{}`, no zero `createdOn`), and an empty label type becomes System.
#[tokio::test]
async fn b40_update_patches_only_the_given_fields() {
    let s = TestServer::with_auth().await;
    s.on_tenant("PATCH", &format!("{SETS}/1"), |_, _| {
        Reply::json(200, r#"{"id":1,"name":"renamed","runnerGroupId":2}"#)
    });
    let c = client(&s);
    let update = RunnerScaleSetUpdate {
        runner_group_id: Some(RunnerGroupId::new(2)),
        ..Default::default()
    };
    let got = within(c.update_runner_scale_set(ScaleSetId::new(1), &update))
        .await
        .expect("ok");
    assert_eq!(
        (got.id, got.runner_group_id),
        (ScaleSetId::new(1), RunnerGroupId::new(2))
    );
    let update = RunnerScaleSetUpdate {
        name: Some("renamed".into()),
        labels: Some(vec![Label {
            kind: String::new(),
            name: "l".into(),
        }]),
        ..Default::default()
    };
    within(c.update_runner_scale_set(ScaleSetId::new(1), &update))
        .await
        .expect("ok");
    let reqs = s.requests_to("/tenant/123/_apis/runtime/runnerscalesets/1");
    assert_eq!(reqs.len(), 2);
    assert!(
        reqs.iter()
            .all(|r| r.method == "PATCH" && r.raw_query == "api-version=6.0-preview")
    );
    assert_eq!(reqs[0].json(), json(r#"{"runnerGroupId":2}"#));
    assert_eq!(
        reqs[1].json(),
        json(r#"{"name":"renamed","labels":[{"name":"l","type":"System"}]}"#)
    );
}

// Behaviours 41 and 42: delete succeeds on 204 (DELETE /runnerscalesets/10?api-version=...);
// a 400 `{"message":"test error"}` fails with that text.
#[tokio::test]
async fn b41_b42_delete_scale_set() {
    let s = TestServer::with_auth().await;
    s.on_seq(
        "DELETE",
        &tenant_path(&format!("{SETS}/10")),
        vec![
            Reply::status(204),
            Reply::json(400, r#"{"message":"test error"}"#),
        ],
    );
    let c = client(&s);
    within(c.delete_runner_scale_set(ScaleSetId::new(10)))
        .await
        .expect("deleted");
    let e = within(c.delete_runner_scale_set(ScaleSetId::new(10)))
        .await
        .expect_err("400");
    assert!(e.to_string().contains("test error"), "{e}");
    assert_eq!(e.status(), Some(400));
    let r = &s.requests_to("/tenant/123/_apis/runtime/runnerscalesets/10")[0];
    assert_eq!(
        (r.method.as_str(), r.raw_query.as_str()),
        ("DELETE", "api-version=6.0-preview")
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
}

// Section 11: list scale sets of a group (GET without name).
#[tokio::test]
async fn list_scale_sets_of_a_group() {
    let s = TestServer::with_auth().await;
    s.on_tenant("GET", SETS, |_, _| {
        Reply::json(
            200,
            r#"{"count":2,"value":[{"id":1,"name":"a"},{"id":2,"name":"b"}]}"#,
        )
    });
    let got = within(client(&s).list_runner_scale_sets(RunnerGroupId::new(3)))
        .await
        .expect("ok");
    assert_eq!(
        got.iter().map(|s| s.id).collect::<Vec<_>>(),
        vec![ScaleSetId::new(1), ScaleSetId::new(2)]
    );
    let r = &s.requests_to(&tenant_path(SETS))[0];
    assert_eq!(r.raw_query, "api-version=6.0-preview&runnerGroupId=3");
}

// Behaviours 43 and 44: group by name returns id 1 from count 1, and fails with "no runner
// group found with name" (kind RunnerGroupNotFound) on count 0. The path keeps its trailing
// slash: `runnergroups/`.
#[tokio::test]
async fn b43_b44_runner_group_by_name() {
    let s = TestServer::with_auth().await;
    s.on_seq(
        "GET",
        &tenant_path("_apis/runtime/runnergroups/"),
        vec![
            Reply::json(
                200,
                r#"{"count":1,"value":[{"id":1,"name":"test-runner-group"}]}"#,
            ),
            Reply::json(200, r#"{"count":0,"value":[]}"#),
        ],
    );
    let c = client(&s);
    let g = within(c.get_runner_group_by_name("test-runner-group"))
        .await
        .expect("group");
    assert_eq!(
        (g.id, g.name.as_str()),
        (RunnerGroupId::new(1), "test-runner-group")
    );
    let e = within(c.get_runner_group_by_name("nope"))
        .await
        .expect_err("none");
    assert_eq!(e.kind(), ErrorKind::RunnerGroupNotFound);
    assert!(
        e.to_string().contains("no runner group found with name"),
        "{e}"
    );
    let r = &s.requests_to("/tenant/123/_apis/runtime/runnergroups/")[0];
    assert_eq!(
        r.raw_query,
        "api-version=6.0-preview&groupName=test-runner-group"
    );
}

// Issue item 2 (section 10 weakness 9): names with `&`, `#`, `+`, `%` and spaces round-trip
// in the query of every lookup by name; the server decodes exactly the name sent.
#[tokio::test]
async fn names_with_reserved_characters_round_trip_in_queries() {
    let s = TestServer::with_auth().await;
    let empty = |_: &Recorded, _| Reply::json(200, r#"{"count":0,"value":[]}"#);
    s.on_tenant("GET", SETS, empty);
    s.on_tenant("GET", "_apis/distributedtask/pools/0/agents", empty);
    s.on_tenant("GET", "_apis/runtime/runnergroups/", |_, _| {
        Reply::json(200, r#"{"count":1,"value":[{"id":5,"name":"g"}]}"#)
    });
    let c = client(&s);
    let names = [
        "a&b=c",
        "x#y",
        "1+1",
        "100%25 sure %zz",
        "with space",
        "é ü/?",
    ];
    for name in names {
        within(c.get_runner_scale_set(RunnerGroupId::new(1), name))
            .await
            .expect("ok");
        within(c.get_runner_by_name(name)).await.expect("ok");
        within(c.get_runner_group_by_name(name)).await.expect("ok");
    }
    let seen = |path: &str, key: &str| -> Vec<String> {
        s.requests_to(&tenant_path(path))
            .iter()
            .map(|r| {
                assert_eq!(
                    r.query.iter().filter(|(k, _)| k == key).count(),
                    1,
                    "{}",
                    r.uri
                );
                r.query_map()[key].clone()
            })
            .collect()
    };
    let want: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    assert_eq!(seen(SETS, "name"), want);
    assert_eq!(
        seen("_apis/distributedtask/pools/0/agents", "agentName"),
        want
    );
    assert_eq!(seen("_apis/runtime/runnergroups/", "groupName"), want);
}

// Acquirable jobs (the reference's GetAcquirableJobs): 204 is an empty list, 200 the list, a
// count that disagrees with the list a protocol error, 404 a missing scale set; retried like
// its siblings.
#[tokio::test]
async fn acquirable_jobs_answers() {
    let s = TestServer::with_auth().await;
    let path = tenant_path("_apis/runtime/runnerscalesets/7/acquirablejobs");
    s.on_seq(
        "GET",
        &path,
        vec![
            Reply::status(204),
            Reply::json(
                200,
                r#"{"count":1,"value":[{"messageType":"JobAvailable","runnerRequestId":11,"acquireJobUrl":"https://x/acquirejobs","requestLabels":["linux"],"jobId":"j"}]}"#,
            ),
            Reply::json(200, r#"{"count":0}"#),
            Reply::json(200, r#"{"count":2,"value":[{"runnerRequestId":1}]}"#),
            Reply::json(
                404,
                r#"{"typeName":"GitHub.Actions.Runtime.WebApi.RunnerScaleSetNotFoundException, GitHub.Actions.Runtime.WebApi","message":"gone"}"#,
            ),
            Reply::status(503),
        ],
    );
    let c = builder(&s).retry_max(1).build().expect("client");
    let empty = within(c.get_acquirable_jobs(ScaleSetId::new(7)))
        .await
        .expect("204");
    assert_eq!(empty, actions_scaleset::AcquirableJobList::default());
    let one = within(c.get_acquirable_jobs(ScaleSetId::new(7)))
        .await
        .expect("200");
    assert_eq!(one.count, 1);
    assert_eq!(one.jobs[0].base.runner_request_id, RunnerRequestId::new(11));
    assert_eq!(one.jobs[0].base.request_labels, vec!["linux".to_string()]);
    assert!(
        within(c.get_acquirable_jobs(ScaleSetId::new(7)))
            .await
            .expect("count only")
            .jobs
            .is_empty()
    );
    let e = within(c.get_acquirable_jobs(ScaleSetId::new(7)))
        .await
        .expect_err("count mismatch");
    assert_eq!(e.kind(), ErrorKind::Protocol);
    let e = within(c.get_acquirable_jobs(ScaleSetId::new(7)))
        .await
        .expect_err("404");
    assert_eq!(e.kind(), ErrorKind::ScaleSetNotFound);
    let e = within(c.get_acquirable_jobs(ScaleSetId::new(7)))
        .await
        .expect_err("503");
    assert_eq!(e.status(), Some(503));
    let reqs = s.requests_to(&path);
    assert_eq!(reqs.len(), 5 + 2, "503 is retried once");
    assert!(reqs.iter().all(|r| r.method == "GET"));
}
