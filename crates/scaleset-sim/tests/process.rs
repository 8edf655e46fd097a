//! The `scaleset-sim` binary as a process: startup line, simulated runner, SIGTERM.

mod common;

use std::process::Stdio;

use common::*;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_scaleset-sim");

#[tokio::test]
async fn serve_and_run_a_runner_process() {
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--long-poll",
            "1",
            "--mode",
            "hosted",
            "--token",
            "ghp_proc",
        ])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(DEADLINE, lines.next_line())
        .await
        .expect("startup line in time")
        .expect("read")
        .expect("a line");
    let v: Value = serde_json::from_str(&line).expect("startup line is JSON");
    assert_eq!(v["token"], "ghp_proc");
    let control = v["controlUrl"].as_str().expect("controlUrl").to_owned();
    let base = control.trim_end_matches("/_sim").to_owned();
    assert_eq!(v["configUrl"], format!("{base}/sim-org/sim-repo"));

    // Drive it over HTTP: admin connection, scale set, session, a job, a runner process.
    let http = client();
    let r = send(
        &http,
        Method::POST,
        &format!("{base}/api/v3/repos/sim-org/sim-repo/actions/runners/registration-token"),
        Some("Bearer ghp_proc"),
        None,
    )
    .await;
    let reg = r.json()["token"].as_str().expect("token").to_owned();
    let r = send(
        &http,
        Method::POST,
        &format!("{base}/api/v3/actions/runner-registration"),
        Some(&format!("RemoteAuth {reg}")),
        Some(json!({"url": v["configUrl"], "runner_event": "register"})),
    )
    .await;
    let admin = format!("Bearer {}", r.json()["token"].as_str().expect("token"));
    let tenant = r.json()["url"].as_str().expect("url").to_owned();
    let r = send(
        &http,
        Method::POST,
        &format!("{tenant}_apis/runtime/runnerscalesets?api-version=6.0-preview"),
        Some(&admin),
        Some(json!({"name": "proc", "runnerGroupId": 1})),
    )
    .await;
    let ss = r.json()["id"].as_i64().expect("id");
    let r = send(
        &http,
        Method::POST,
        &format!("{tenant}_apis/runtime/runnerscalesets/{ss}/sessions?api-version=6.0-preview"),
        Some(&admin),
        Some(json!({"ownerName": "p"})),
    )
    .await;
    let s = Session::from(r.json(), ss);
    let r = send(
        &http,
        Method::POST,
        &format!("{control}/jobs"),
        None,
        Some(json!({"labels": ["proc"], "count": 1, "durationSeconds": 0.1})),
    )
    .await;
    assert_eq!(r.status, 201);
    let r = http
        .get(&s.mq_url)
        .header("Authorization", format!("Bearer {}", s.token))
        .header("X-ScaleSetMaxCapacity", "1")
        .send()
        .await
        .expect("poll");
    assert!(r.status().is_success());
    let r = send(
        &http,
        Method::POST,
        &format!(
            "{tenant}_apis/runtime/runnerscalesets/{ss}/generatejitconfig?api-version=6.0-preview"
        ),
        Some(&admin),
        Some(json!({"name": "proc-runner", "workFolder": ""})),
    )
    .await;
    let jit = r.json()["encodedJITConfig"]
        .as_str()
        .expect("jit")
        .to_owned();
    let status = tokio::time::timeout(
        DEADLINE,
        Command::new(BIN)
            .arg("runner")
            .env("ACTIONS_RUNNER_INPUT_JITCONFIG", &jit)
            .stderr(Stdio::null())
            .status(),
    )
    .await
    .expect("runner exits in time")
    .expect("runner status");
    assert!(status.success());
    let r = send(&http, Method::GET, &format!("{control}/state"), None, None).await;
    assert_eq!(r.json()["jobs"][0]["result"], "succeeded");

    // A bad JIT config is a non-zero exit.
    let status = Command::new(BIN)
        .args(["runner", "--jitconfig", "garbage"])
        .stderr(Stdio::null())
        .status()
        .await
        .expect("status");
    assert!(!status.success());

    // SIGTERM: graceful exit 0.
    let pid = child.id().expect("pid").to_string();
    let k = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .expect("kill");
    assert!(k.success());
    let st = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .expect("exits in time")
        .expect("wait");
    assert!(st.success());
}
