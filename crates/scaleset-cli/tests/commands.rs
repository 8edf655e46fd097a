//! Every non-streaming command against the in-process simulator: output shapes, every exit
//! code, both error-line formats, configuration through the environment.

mod common;

use common::{TOKEN, bare, cmd, create_scale_set, run, scaleset, sim};
use scaleset_sim::{EndpointClass, Fault};
use serde_json::Value;

fn status_fault(class: EndpointClass, method: &str, status: u16, type_name: &str) -> Fault {
    Fault::Status {
        class,
        method: Some(method.to_string()),
        count: 1,
        status,
        type_name: Some(type_name.to_string()),
        message: Some("injected by the CLI tests".to_string()),
        retry_after: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_parse_prints_the_wire_shape_without_credentials() {
    let r = bare(&["config", "parse", "https://github.com/my-org/my-repo/"]).await;
    r.expect_code(0);
    assert_eq!(
        r.json(),
        serde_json::json!({
            "scope": "repository",
            "enterprise": null,
            "organization": "my-org",
            "repository": "my-repo",
            "isHosted": true,
            "apiUrl": "https://api.github.com",
        })
    );
    let r = bare(&[
        "config",
        "parse",
        "https://ghes.example.com/enterprises/ent",
    ])
    .await;
    r.expect_code(0);
    let v = r.json();
    assert_eq!(v["scope"], "enterprise");
    assert_eq!(v["enterprise"], "ent");
    assert_eq!(v["isHosted"], false);
    assert_eq!(v["apiUrl"], "https://ghes.example.com/api/v3");

    let r = bare(&["config", "parse", "https://github.com/a/b/c"]).await;
    r.expect_code(2);
    assert!(r.stdout.is_empty());
    assert!(
        r.last_err_line().starts_with("error: config parse: "),
        "{r:?}"
    );
    let r = bare(&["config", "parse", "not a url", "--log-format", "json"]).await;
    r.expect_code(2);
    let e = r.err_json();
    assert_eq!(e["level"], "error");
    assert_eq!(e["kind"], "InvalidConfigUrl");
    assert!(e["status"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_is_complete_with_examples() {
    let r = bare(&["--help"]).await;
    r.expect_code(0);
    for needle in [
        "Examples:",
        "Exit codes:",
        "--url",
        "SCALESET_TOKEN",
        "GITHUB_TOKEN",
    ] {
        assert!(
            r.stdout.contains(needle),
            "--help lacks {needle}: {}",
            r.stdout
        );
    }
    for path in [
        &["config", "parse"][..],
        &["runner-group", "get"],
        &["scale-set", "list"],
        &["scale-set", "get"],
        &["scale-set", "create"],
        &["scale-set", "update"],
        &["scale-set", "delete"],
        &["scale-set", "acquirable-jobs"],
        &["runner", "jit"],
        &["runner", "get"],
        &["runner", "remove"],
        &["listen"],
        &["sim"],
        &["sim-runner"],
    ] {
        let mut args = path.to_vec();
        args.push("--help");
        let r = bare(&args).await;
        r.expect_code(0);
        assert!(
            r.stdout.contains("Example"),
            "{path:?} --help: {}",
            r.stdout
        );
        assert!(
            r.stdout.contains("--log-format"),
            "{path:?} lacks the globals"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_and_configuration_errors_exit_2_before_any_request() {
    let sim = sim().await;
    let url = sim.config_url();
    // clap's own usage errors keep clap's format.
    let r = bare(&["scale-set", "list", "--no-such-flag"]).await;
    r.expect_code(2);
    assert!(r.stderr.contains("error:"), "{r:?}");
    let r = bare(&["scale-set", "get", "--url", &url, "--token", TOKEN]).await;
    r.expect_code(2);
    let r = bare(&[
        "scale-set",
        "get",
        "--id",
        "0",
        "--url",
        &url,
        "--token",
        TOKEN,
    ])
    .await;
    r.expect_code(2);
    let r = bare(&["scale-set", "list", "--timeout", "soon"]).await;
    r.expect_code(2);
    assert!(r.stderr.contains("soon"), "{r:?}");

    // Configuration errors: ours, one line, naming what is wrong.
    let r = bare(&["scale-set", "list", "--url", &url]).await;
    r.expect_code(2);
    assert!(r.last_err_line().contains("missing credentials"), "{r:?}");
    let r = bare(&["scale-set", "list", "--token", TOKEN]).await;
    r.expect_code(2);
    assert!(r.last_err_line().contains("--url"), "{r:?}");
    let r = bare(&[
        "scale-set",
        "list",
        "--url",
        "https://github.com",
        "--token",
        TOKEN,
    ])
    .await;
    r.expect_code(2);
    let r = bare(&[
        "scale-set",
        "list",
        "--url",
        &url,
        "--app-client-id",
        "Iv1.x",
    ])
    .await;
    r.expect_code(2);
    assert!(r.last_err_line().contains("--app-installation-id"), "{r:?}");
    let r = bare(&[
        "scale-set",
        "list",
        "--url",
        &url,
        "--app-client-id",
        "Iv1.x",
        "--app-installation-id",
        "1",
        "--app-private-key-file",
        "/nonexistent/key.pem",
    ])
    .await;
    r.expect_code(2);
    assert!(r.last_err_line().contains("/nonexistent/key.pem"), "{r:?}");
    let mut c = cmd();
    c.args(["scale-set", "list", "--url", &url, "--log-format", "json"])
        .env("SCALESET_APP_CLIENT_ID", "Iv1.x")
        .env("SCALESET_APP_INSTALLATION_ID", "3")
        .env(
            "SCALESET_APP_PRIVATE_KEY",
            "-----BEGIN RSA PRIVATE KEY-----\ngarbage\n",
        );
    let r = run(c).await;
    r.expect_code(2);
    assert_eq!(r.err_json()["kind"], "InvalidCredentials");
    let r = bare(&[
        "scale-set",
        "list",
        "--url",
        &url,
        "--token",
        TOKEN,
        "--ca-cert",
        "/nonexistent/ca.pem",
    ])
    .await;
    r.expect_code(2);
    let r = bare(&[
        "scale-set",
        "update",
        "--id",
        "1",
        "--url",
        &url,
        "--token",
        TOKEN,
    ])
    .await;
    r.expect_code(2);
    assert!(r.last_err_line().contains("nothing to update"), "{r:?}");

    assert!(
        sim.requests().is_empty(),
        "no request may be sent: {:?}",
        sim.requests()
    );
}

/// `run --provisioner kubernetes`: the pod template and the flags are checked (exit 2, one
/// line naming the flag or the file) before anything talks to GitHub or a cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_kubernetes_flags_and_pod_templates_are_checked_first() {
    let sim = sim().await;
    let url = sim.config_url();
    let dir = std::env::temp_dir().join(format!("scaleset-cli-k8s-flags-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let no_runner = dir.join("no-runner.yaml");
    std::fs::write(
        &no_runner,
        "spec:\n  containers:\n    - name: main\n      image: x\n",
    )
    .expect("template");
    let good = dir.join("pod.yaml");
    std::fs::write(
        &good,
        "spec:\n  containers:\n    - name: runner\n      image: x\n",
    )
    .expect("template");
    let (no_runner, good) = (no_runner.to_string_lossy(), good.to_string_lossy());
    let base = ["run", "--url", &url, "--token", TOKEN, "--name", "k8s"];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--provisioner", "kubernetes"],
            "run: --provisioner kubernetes needs --pod-template FILE",
        ),
        (
            vec![
                "--provisioner",
                "kubernetes",
                "--pod-template",
                "/nonexistent/pod.yaml",
            ],
            "/nonexistent/pod.yaml: cannot be read",
        ),
        (
            vec!["--provisioner", "kubernetes", "--pod-template", &no_runner],
            "no container named \"runner\"",
        ),
        (
            vec![
                "--provisioner",
                "kubernetes",
                "--pod-template",
                &good,
                "--namespace",
                "Not_A_Namespace",
            ],
            "--namespace: \"Not_A_Namespace\" is not a namespace name",
        ),
        (
            vec![
                "--provisioner",
                "kubernetes",
                "--pod-template",
                &good,
                "--pull",
                "always",
            ],
            "run: --pull applies to --provisioner docker only",
        ),
        (
            vec![
                "--provisioner",
                "docker",
                "--image",
                "x",
                "--namespace",
                "ci",
            ],
            "run: --namespace applies to --provisioner kubernetes only",
        ),
        (
            vec!["--pod-template", &good],
            "run: --pod-template applies to --provisioner kubernetes only",
        ),
        (
            vec!["--kubeconfig", "/k", "--runner-command", "/bin/true"],
            "run: --kubeconfig applies to --provisioner kubernetes only",
        ),
        (
            vec!["--image", "x", "--runner-command", "/bin/true"],
            "run: --image applies to --provisioner docker or kubernetes only",
        ),
    ];
    for (extra, expected) in cases {
        let mut args = base.to_vec();
        args.extend(extra.iter().copied());
        let r = bare(&args).await;
        r.expect_code(2);
        assert!(
            r.last_err_line().contains(expected),
            "{extra:?}: expected {expected:?} in {r:?}"
        );
    }
    assert!(
        sim.requests().is_empty(),
        "no request may be sent: {:?}",
        sim.requests()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_set_lifecycle() {
    let sim = sim().await;
    let r = scaleset(
        &sim,
        &[
            "scale-set",
            "create",
            "--name",
            "cli-set",
            "--label",
            "linux",
            "--disable-update",
        ],
    )
    .await;
    r.expect_code(0);
    let created = r.json();
    let id = created["id"].as_i64().expect("id");
    assert_eq!(created["name"], "cli-set");
    assert_eq!(created["runnerGroupId"], 1);
    assert_eq!(created["RunnerSetting"]["disableUpdate"], true);
    let labels: Vec<&str> = created["labels"]
        .as_array()
        .expect("labels")
        .iter()
        .filter_map(|l| l["name"].as_str())
        .collect();
    assert_eq!(labels, ["cli-set", "linux"]);

    // The name is taken: exit 4.
    let r = scaleset(&sim, &["scale-set", "create", "--name", "cli-set"]).await;
    r.expect_code(4);
    assert!(
        r.last_err_line().starts_with("error: scale-set create: "),
        "{r:?}"
    );

    let r = scaleset(&sim, &["scale-set", "list"]).await;
    r.expect_code(0);
    let list = r.json();
    assert!(
        list.as_array()
            .expect("array")
            .iter()
            .any(|s| s["id"] == id),
        "{list}"
    );
    let r = scaleset(&sim, &["scale-set", "list", "--runner-group-id", "1"]).await;
    r.expect_code(0);

    let id_s = id.to_string();
    let r = scaleset(&sim, &["scale-set", "get", "--id", &id_s]).await;
    r.expect_code(0);
    assert_eq!(r.json()["name"], "cli-set");
    let r = scaleset(&sim, &["scale-set", "get", "--name", "cli-set"]).await;
    r.expect_code(0);
    assert_eq!(r.json()["id"], id);
    let r = scaleset(&sim, &["scale-set", "get", "--name", "nope"]).await;
    r.expect_code(0);
    assert_eq!(r.json(), Value::Null);
    let r = scaleset(&sim, &["scale-set", "get", "--id", "999999"]).await;
    r.expect_code(3);
    assert!(
        r.last_err_line().starts_with("error: scale-set get: "),
        "{r:?}"
    );

    let r = scaleset(
        &sim,
        &[
            "scale-set",
            "update",
            "--id",
            &id_s,
            "--name",
            "cli-set-2",
            "--label",
            "gpu",
        ],
    )
    .await;
    r.expect_code(0);
    assert_eq!(r.json()["name"], "cli-set-2");
    let r = scaleset(
        &sim,
        &["scale-set", "update", "--id", "999999", "--name", "x"],
    )
    .await;
    r.expect_code(3);

    let r = scaleset(&sim, &["scale-set", "delete", "--id", &id_s]).await;
    r.expect_code(0);
    assert!(r.stdout.is_empty(), "delete prints nothing: {r:?}");
    assert!(sim.state().scale_set(id).is_none());
    let r = scaleset(&sim, &["scale-set", "delete", "--id", &id_s]).await;
    r.expect_code(3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_groups_resolve_through_the_api_except_default() {
    let sim = sim().await;
    let blue = sim.add_runner_group("blue").expect("group added");
    let r = scaleset(&sim, &["runner-group", "get", "blue"]).await;
    r.expect_code(0);
    let g = r.json();
    assert_eq!(g["id"], blue);
    assert_eq!(g["name"], "blue");
    assert!(g.get("isDefaultGroup").is_some());

    let r = scaleset(
        &sim,
        &["runner-group", "get", "nope", "--log-format", "json"],
    )
    .await;
    r.expect_code(3);
    assert_eq!(r.err_json()["kind"], "RunnerGroupNotFound");

    let r = scaleset(
        &sim,
        &[
            "scale-set",
            "create",
            "--name",
            "blue-set",
            "--runner-group",
            "blue",
        ],
    )
    .await;
    r.expect_code(0);
    assert_eq!(r.json()["runnerGroupId"], blue);
    let r = scaleset(&sim, &["scale-set", "list", "--runner-group", "blue"]).await;
    r.expect_code(0);
    assert_eq!(r.json().as_array().map(Vec::len), Some(1));
    let r = scaleset(
        &sim,
        &[
            "scale-set",
            "get",
            "--name",
            "blue-set",
            "--runner-group",
            "blue",
        ],
    )
    .await;
    r.expect_code(0);
    assert_eq!(r.json()["name"], "blue-set");
    let r = scaleset(&sim, &["scale-set", "list", "--runner-group", "nope"]).await;
    r.expect_code(3);

    // `default` is id 1 without asking the service.
    sim.clear_requests();
    let r = scaleset(&sim, &["scale-set", "list", "--runner-group", "default"]).await;
    r.expect_code(0);
    assert!(
        !sim.requests()
            .iter()
            .any(|q| q.path.contains("runnergroups")),
        "{:?}",
        sim.requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runners_jit_get_remove() {
    let sim = sim().await;
    let set = create_scale_set(&sim, "runner-set").await.to_string();
    let r = scaleset(
        &sim,
        &[
            "runner",
            "jit",
            "--scale-set-id",
            &set,
            "--name",
            "r1",
            "--work-folder",
            "_w",
        ],
    )
    .await;
    r.expect_code(0);
    let jit = r.json();
    assert_eq!(jit["runner"]["name"], "r1");
    assert_eq!(jit["runner"]["runnerScaleSetId"].to_string(), set);
    assert!(
        !jit["encodedJITConfig"]
            .as_str()
            .unwrap_or_default()
            .is_empty()
    );
    let rid = jit["runner"]["id"].as_i64().expect("runner id").to_string();

    let r = scaleset(
        &sim,
        &["runner", "jit", "--scale-set-id", &set, "--name", "r1"],
    )
    .await;
    r.expect_code(4);
    let r = scaleset(&sim, &["runner", "jit", "--scale-set-id", &set]).await;
    r.expect_code(0);
    let generated = r.json()["runner"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let hex = generated.strip_prefix("runner-").expect("generated name");
    assert!(
        hex.len() == 8 && hex.chars().all(|c| c.is_ascii_hexdigit()),
        "{generated}"
    );
    let r = scaleset(&sim, &["runner", "jit", "--scale-set-id", "999999"]).await;
    r.expect_code(3);

    let r = scaleset(&sim, &["runner", "get", "--id", &rid]).await;
    r.expect_code(0);
    assert_eq!(r.json()["name"], "r1");
    let r = scaleset(&sim, &["runner", "get", "--name", "r1"]).await;
    r.expect_code(0);
    assert_eq!(r.json()["id"].to_string(), rid);
    let r = scaleset(&sim, &["runner", "get", "--name", "nope"]).await;
    r.expect_code(0);
    assert_eq!(r.json(), Value::Null);
    let r = scaleset(
        &sim,
        &["runner", "get", "--id", "999999", "--log-format", "json"],
    )
    .await;
    r.expect_code(3);
    let e = r.err_json();
    assert_eq!(e["kind"], "RunnerNotFound");
    assert_eq!(e["status"], 404);
    assert!(
        e["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("runner get: "),
        "{e}"
    );

    // Busy runner: the service answers 400 JobStillRunningException.
    sim.faults()
        .inject(status_fault(
            EndpointClass::Runner,
            "DELETE",
            400,
            "GitHub.DistributedTask.WebApi.JobStillRunningException, GitHub.DistributedTask.WebApi",
        ))
        .expect("fault");
    let r = scaleset(&sim, &["runner", "remove", "--id", &rid]).await;
    r.expect_code(5);
    let r = scaleset(&sim, &["runner", "remove", "--id", &rid]).await;
    r.expect_code(0);
    assert!(r.stdout.is_empty());
    // Gone already: 204, still success.
    let r = scaleset(&sim, &["runner", "remove", "--id", &rid]).await;
    r.expect_code(0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_failures_conflicts_and_transport_errors() {
    let sim = sim().await;
    // A 500 (no retries): exit 1, with status and ids in the JSON line.
    sim.faults()
        .inject(status_fault(
            EndpointClass::Scaleset,
            "GET",
            500,
            "X.BoomException",
        ))
        .expect("fault");
    let r = scaleset(
        &sim,
        &[
            "scale-set",
            "list",
            "--retry-max",
            "0",
            "--log-format",
            "json",
        ],
    )
    .await;
    r.expect_code(1);
    let e = r.err_json();
    assert_eq!(e["level"], "error");
    assert_eq!(e["status"], 500);
    assert_eq!(e["kind"], "Service");
    assert!(
        e["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("scale-set list: ")
    );
    for key in ["activityId", "githubRequestId"] {
        assert!(e.get(key).is_some(), "{key} missing: {e}");
    }
    let r = scaleset(&sim, &["scale-set", "list", "--retry-max", "0"]).await;
    r.expect_code(0);

    // A 409 and an exception naming a duplicate: exit 4.
    sim.faults()
        .inject(status_fault(
            EndpointClass::Scaleset,
            "POST",
            409,
            "X.SomeException",
        ))
        .expect("fault");
    let r = scaleset(&sim, &["scale-set", "create", "--name", "c1"]).await;
    r.expect_code(4);
    sim.faults()
        .inject(status_fault(
            EndpointClass::Scaleset,
            "POST",
            400,
            "X.DuplicateNameException",
        ))
        .expect("fault");
    let r = scaleset(&sim, &["scale-set", "create", "--name", "c1"]).await;
    r.expect_code(4);

    // Nobody listening: exit 1, kind Transport.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let url = format!("http://127.0.0.1:{closed}/org/repo");
    let r = bare(&[
        "scale-set",
        "list",
        "--url",
        &url,
        "--token",
        TOKEN,
        "--retry-max",
        "0",
        "--log-format",
        "json",
    ])
    .await;
    r.expect_code(1);
    assert_eq!(r.err_json()["kind"], "Transport");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_from_the_environment() {
    let sim = sim().await;
    let url = sim.config_url();
    let creds = sim.app_credentials();

    let mut c = cmd();
    c.args(["scale-set", "list"])
        .env("SCALESET_URL", &url)
        .env("SCALESET_TOKEN", TOKEN);
    run(c).await.expect_code(0);

    let mut c = cmd();
    c.args(["scale-set", "list"])
        .env("SCALESET_URL", &url)
        .env("GITHUB_TOKEN", TOKEN);
    run(c).await.expect_code(0);

    // SCALESET_TOKEN wins over GITHUB_TOKEN.
    let mut c = cmd();
    c.args(["scale-set", "list", "--retry-max", "0"])
        .env("SCALESET_URL", &url)
        .env("SCALESET_TOKEN", TOKEN)
        .env("GITHUB_TOKEN", "ghp_wrong");
    run(c).await.expect_code(0);

    let key_file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../scaleset-sim/keys/app-private-key.pem"
    );
    let mut c = cmd();
    c.args(["scale-set", "list"])
        .env("SCALESET_URL", &url)
        .env("SCALESET_APP_CLIENT_ID", &creds.client_id)
        .env(
            "SCALESET_APP_INSTALLATION_ID",
            creds.installation_id.to_string(),
        )
        .env("SCALESET_APP_PRIVATE_KEY_FILE", key_file);
    run(c).await.expect_code(0);

    let mut c = cmd();
    c.args(["scale-set", "list"])
        .env("SCALESET_URL", &url)
        .env("SCALESET_APP_CLIENT_ID", &creds.client_id)
        .env(
            "SCALESET_APP_INSTALLATION_ID",
            creds.installation_id.to_string(),
        )
        .env("SCALESET_APP_PRIVATE_KEY", &creds.private_key_pem);
    run(c).await.expect_code(0);
    assert!(
        sim.requests()
            .iter()
            .any(|q| q.path.contains("/app/installations/")),
        "the App path was used"
    );

    // SCALESET_LOG sets the level; json lines on stderr.
    let mut c = cmd();
    c.args(["scale-set", "get", "--id", "424242", "--log-format", "json"])
        .env("SCALESET_URL", &url)
        .env("SCALESET_TOKEN", TOKEN)
        .env("SCALESET_LOG", "debug");
    let r = run(c).await;
    r.expect_code(3);
    let lines: Vec<&str> = r.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() > 1, "debug logs expected: {r:?}");
    for line in &lines {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("stderr line is not JSON ({e}): {line}"));
        assert!(v.get("level").is_some(), "{line}");
    }
    let e = r.err_json();
    assert_eq!(e["kind"], "ScaleSetNotFound");
    assert_eq!(e["level"], "error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_set_acquirable_jobs_lists_the_offered_jobs() {
    let sim = common::sim_with(|c| c.mode = scaleset_sim::AssignmentMode::Ghes).await;
    let id = create_scale_set(&sim, "ghes-cli").await;
    let ids = sim
        .enqueue_jobs(scaleset_sim::EnqueueJobs {
            labels: vec!["ghes-cli".into()],
            count: 2,
            ..Default::default()
        })
        .await
        .expect("enqueue");
    let set = id.to_string();
    // Nothing offered before a listener told the service its capacity.
    let r = scaleset(&sim, &["scale-set", "acquirable-jobs", "--id", &set]).await;
    r.expect_code(0);
    assert_eq!(r.json(), serde_json::json!([]));

    // A session and one poll: the jobs are offered.
    let client = actions_scaleset::Client::builder(
        sim.config_url(),
        actions_scaleset::Credentials::token(TOKEN).expect("token"),
    )
    .build()
    .expect("client");
    let session = tokio::time::timeout(
        common::DEADLINE,
        client.create_message_session_client(actions_scaleset::ScaleSetId::new(id), None),
    )
    .await
    .expect("in time")
    .expect("session");
    let message = tokio::time::timeout(
        common::DEADLINE,
        session.get_message(actions_scaleset::MessageId::new(0), 5),
    )
    .await
    .expect("in time")
    .expect("poll")
    .expect("a message");
    assert_eq!(message.jobs_available().count(), 2);

    let r = scaleset(&sim, &["scale-set", "acquirable-jobs", "--id", &set]).await;
    r.expect_code(0);
    let jobs = r.json();
    let listed: Vec<i64> = jobs
        .as_array()
        .expect("an array")
        .iter()
        .filter_map(|j| j["runnerRequestId"].as_i64())
        .collect();
    assert_eq!(listed, ids);
    assert_eq!(jobs[0]["messageType"], "JobAvailable");
    assert_eq!(jobs[0]["requestLabels"], serde_json::json!(["ghes-cli"]));
    assert!(
        jobs[0]["acquireJobUrl"]
            .as_str()
            .unwrap_or_default()
            .ends_with("/acquirejobs")
    );

    let r = scaleset(
        &sim,
        &[
            "scale-set",
            "acquirable-jobs",
            "--id",
            "999999",
            "--log-format",
            "json",
        ],
    )
    .await;
    r.expect_code(3);
    assert_eq!(r.err_json()["kind"], "ScaleSetNotFound");
    tokio::time::timeout(common::DEADLINE, session.close())
        .await
        .expect("in time")
        .expect("close");
}

/// Error lines a person can read (issue 11): what failed and why first, in the service's or
/// our words, then where (status, method, URL, request ids) in parentheses; no phrase twice,
/// no "failed (200 OK)" for a lookup that found nothing, no .NET exception type names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_lines_lead_with_what_failed() {
    let sim = sim().await;
    let line = |r: &common::Run| r.last_err_line().to_string();

    let r = scaleset(&sim, &["runner-group", "get", "nope"]).await;
    r.expect_code(3);
    let l = line(&r);
    assert!(
        l.starts_with(
            r#"error: runner-group get: no runner group found with name "nope" (GET http"#
        ),
        "{l}"
    );
    assert!(!l.contains("200") && !l.contains("failed"), "{l}");

    let r = scaleset(&sim, &["scale-set", "get", "--id", "999999"]).await;
    r.expect_code(3);
    let l = line(&r);
    assert!(l.contains("(404 Not Found from GET http"), "{l}");
    assert!(!l.contains("Exception") && !l.contains("::"), "{l}");

    create_scale_set(&sim, "taken").await;
    let r = scaleset(&sim, &["scale-set", "create", "--name", "taken"]).await;
    r.expect_code(4);
    let l = line(&r);
    assert!(
        l.contains("already exists") && l.contains("409 Conflict"),
        "{l}"
    );
    assert!(!l.contains("Exception"), "{l}");

    let r = bare(&["config", "parse", "https://github.com"]).await;
    r.expect_code(2);
    let l = line(&r);
    assert_eq!(l.matches("config URL").count(), 1, "{l}");

    let r = run({
        let mut c = cmd();
        c.args(["scale-set", "list", "--url", &sim.config_url()])
            .args(["--token", "ghp_wrong"]);
        c
    })
    .await;
    r.expect_code(1);
    let l = line(&r);
    assert!(
        l.starts_with("error: scale-set list: GitHub refused the credentials"),
        "{l}"
    );
    assert!(!l.contains("ghp_wrong"), "{l}");
}
