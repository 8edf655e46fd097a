//! End-to-end tests of `scaleset run` against the in-process simulator, with simulated
//! runners (`scaleset sim-runner`) as the runner command.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Streaming, TOKEN, cmd, processes_under};
use scaleset_sim::{EnqueueJobs, Fault, Simulator};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LONG: Duration = Duration::from_secs(120);

fn workdir(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    std::env::temp_dir().join(format!("scaleset-e2e-{tag}-{}-{nanos}", std::process::id()))
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

async fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.expect("read");
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Polls an endpoint until it answers `want` (under a deadline).
async fn wait_status(port: u16, path: &str, want: u16) -> String {
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let got = tokio::time::timeout(Duration::from_secs(5), async {
            match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                Ok(_) => Some(http_get(port, path).await),
                Err(_) => None,
            }
        })
        .await
        .ok()
        .flatten();
        if let Some((code, body)) = got
            && code == want
        {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path} never answered {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn run_cmd(sim: &Simulator, dir: &Path, name: &str, extra: &[&str]) -> Streaming {
    let mut c = cmd();
    c.args([
        "run",
        "--url",
        &sim.config_url(),
        "--token",
        TOKEN,
        "--name",
        name,
        "--label",
        name,
        "--runner-command",
        env!("CARGO_BIN_EXE_scaleset"),
        "--runner-arg",
        "sim-runner",
        "--runner-workdir",
        &dir.display().to_string(),
        "--log-level",
        "info",
    ])
    .args(extra);
    Streaming::spawn(c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_jobs_with_max_20_runners_all_complete_then_drain_leaves_nothing() {
    let sim = common::sim().await;
    let dir = workdir("burst");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut run = run_cmd(
        &sim,
        &dir,
        "e2e",
        &[
            "--max-runners",
            "20",
            "--metrics-addr",
            &addr,
            "--shutdown",
            "drain",
            "--drain-timeout",
            "30",
        ],
    );
    run.wait_stderr("listening").await;
    sim.enqueue_jobs(EnqueueJobs {
        labels: vec!["e2e".into()],
        count: 100,
        duration: Duration::from_millis(200),
        ..Default::default()
    })
    .await
    .expect("enqueue");
    let peak = Arc::new(AtomicUsize::new(0));
    let p = peak.clone();
    let (done, st) = sim
        .wait_until(LONG, move |st| {
            p.fetch_max(st.runners.len(), Ordering::SeqCst);
            st.jobs.len() == 100 && st.jobs.iter().all(|j| j.status == "completed")
        })
        .await;
    assert!(
        done,
        "not all jobs completed: {} completed",
        st.jobs_in("completed")
    );
    let peak = peak.load(Ordering::SeqCst);
    assert!(peak <= 20, "never more than max runners, saw {peak}");
    assert!(peak >= 2, "runners ran in parallel, saw {peak}");
    assert!(
        st.jobs
            .iter()
            .all(|j| j.result.as_deref() == Some("succeeded")),
        "all succeeded"
    );

    // /metrics: exact metric families, ARC label sets.
    let body = wait_status(port, "/metrics", 200).await;
    let mut families: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .collect();
    families.sort();
    assert_eq!(
        families,
        vec![
            "gha_assigned_jobs gauge",
            "gha_busy_runners gauge",
            "gha_completed_jobs counter",
            "gha_desired_runners gauge",
            "gha_idle_runners gauge",
            "gha_job_execution_duration_seconds histogram",
            "gha_job_queue_duration_seconds histogram",
            "gha_job_startup_duration_seconds histogram",
            "gha_last_successful_poll_timestamp_seconds gauge",
            "gha_managed_runners gauge",
            "gha_max_runners gauge",
            "gha_min_runners gauge",
            "gha_outdated_runners counter",
            "gha_provisioning_failures counter",
            "gha_registered_runners gauge",
            "gha_running_jobs gauge",
            "gha_session_recreations counter",
            "gha_start_backoff_seconds gauge",
            "gha_started_jobs counter",
        ]
    );
    // prometheus-client ends each HELP text with a period itself: the served text has one.
    let help: Vec<&str> = body.lines().filter(|l| l.starts_with("# HELP ")).collect();
    assert!(!help.is_empty(), "{body}");
    for line in help {
        assert!(line.ends_with('.') && !line.ends_with(".."), "{line}");
    }
    let set_labels = r#"{name="e2e",runner_group="default",repository="sim-repo",organization="sim-org",enterprise=""}"#;
    assert!(
        body.contains(&format!("gha_max_runners{set_labels} 20")),
        "{body}"
    );
    assert!(
        body.contains(&format!("gha_min_runners{set_labels} 0")),
        "{body}"
    );
    let started: f64 = body
        .lines()
        .filter(|l| l.starts_with("gha_started_jobs_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(started, 100.0, "{body}");
    let completed_line = body
        .lines()
        .find(|l| l.starts_with("gha_completed_jobs_total{"))
        .expect("a completed-jobs series");
    for label in [
        "name=\"e2e\"",
        "repository=",
        "organization=",
        "enterprise=",
        "job_name=",
        "job_workflow_ref=",
        "event_name=",
        "job_result=\"succeeded\"",
    ] {
        assert!(completed_line.contains(label), "{completed_line}");
    }
    assert_eq!(wait_status(port, "/healthz", 200).await, "ok\n");
    wait_status(port, "/readyz", 200).await;

    run.sigterm();
    let out = run.finish().await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let st = sim.state();
    assert!(
        st.runners.is_empty(),
        "no runner stays registered: {:?}",
        st.runners
    );
    assert!(st.sessions.is_empty(), "the session is deleted");
    assert!(
        processes_under(&dir).is_empty(),
        "no runner process remains"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_flips_when_polls_fail() {
    let sim = common::sim().await;
    let dir = workdir("ready");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut run = run_cmd(
        &sim,
        &dir,
        "ready",
        &["--metrics-addr", &addr, "--poll-window", "1"],
    );
    run.wait_stderr("listening").await;
    wait_status(port, "/readyz", 200).await;
    let fault: Fault = serde_json::from_value(serde_json::json!({
        "kind": "status", "class": "message", "count": 100000, "status": 500
    }))
    .expect("fault");
    sim.faults().inject(fault).expect("inject");
    let why = wait_status(port, "/readyz", 503).await;
    assert!(why.contains("ready"), "{why}");
    sim.faults().clear();
    wait_status(port, "/readyz", 200).await;
    run.sigterm();
    let out = run.finish().await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_runner_leaks_after_sigkill_and_restart() {
    let sim = common::sim().await;
    let dir = workdir("kill");
    let mut run = run_cmd(
        &sim,
        &dir,
        "kill",
        &["--min-runners", "3", "--max-runners", "5"],
    );
    run.wait_stderr("listening").await;
    let (ok, _) = sim
        .wait_until(LONG, |st| {
            st.runners.iter().filter(|r| r.online).count() == 3
        })
        .await;
    assert!(ok, "three warm runners");
    let before: Vec<String> = sim.state().runners.iter().map(|r| r.name.clone()).collect();
    run.signal(nix::sys::signal::Signal::SIGKILL);
    let _ = run.finish().await;
    // The runner processes survived the daemon (own process groups).
    assert!(!processes_under(&dir).is_empty());
    // The killed daemon's session is still there: a restart waits it out (hot standby), so
    // free it the way the service would eventually.
    let ss = sim
        .state()
        .scale_set_by_name("kill")
        .map(|s| s.id)
        .expect("scale set");
    let evict: Fault =
        serde_json::from_value(serde_json::json!({"kind": "evictSession", "scaleSetId": ss}))
            .expect("fault");
    sim.faults().inject(evict).expect("evict");
    let mut again = run_cmd(
        &sim,
        &dir,
        "kill",
        &[
            "--min-runners",
            "3",
            "--max-runners",
            "5",
            "--shutdown",
            "drain",
            "--drain-timeout",
            "10",
        ],
    );
    again
        .wait_stderr("taking over the runners and registrations a previous run left")
        .await;
    again.wait_stderr("listening").await;
    let (ok, st) = sim
        .wait_until(LONG, |st| {
            st.runners.len() == 3 && st.runners.iter().all(|r| !before.contains(&r.name))
        })
        .await;
    assert!(
        ok,
        "the old runners were removed and replaced: {:?}",
        st.runners
    );
    again.sigterm();
    let out = again.finish().await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(sim.state().runners.is_empty(), "{:?}", sim.state().runners);
    assert!(
        processes_under(&dir).is_empty(),
        "no runner process remains"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Polls for a file a runner writes (under a deadline).
async fn wait_file(dir: &Path, suffix: &str) -> String {
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().ends_with(suffix)
                    && let Ok(text) = std::fs::read_to_string(e.path())
                    && text.contains("RUNNER_NAME=")
                {
                    return text;
                }
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {suffix} file appeared in {}",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runners_do_not_inherit_the_daemons_credentials() {
    let sim = common::sim().await;
    let dir = workdir("env");
    let mut c = cmd();
    c.args([
        "run",
        "--url",
        &sim.config_url(),
        "--name",
        "envtest",
        "--min-runners",
        "1",
        "--runner-command",
        "/bin/sh",
        "--runner-arg=-c",
        "--runner-arg",
        "env > ../$RUNNER_NAME.env; exec \"$0\" sim-runner",
        "--runner-arg",
        env!("CARGO_BIN_EXE_scaleset"),
        "--runner-env",
        "PASS_ME",
        "--runner-workdir",
        &dir.display().to_string(),
        "--log-level",
        "info",
    ])
    .env("SCALESET_TOKEN", TOKEN)
    .env("GITHUB_TOKEN", "ghp_fallbackSecret0000")
    .env("SCALESET_APP_PRIVATE_KEY_FILE", "/nonexistent/key.pem")
    .env("PASS_ME", "passed-through");
    let mut run = Streaming::spawn(c);
    run.wait_stderr("listening").await;
    let env = wait_file(&dir, ".env").await;
    assert!(!env.contains(TOKEN), "the admin token leaked: {env}");
    for var in [
        "SCALESET_TOKEN=",
        "GITHUB_TOKEN=",
        "SCALESET_APP_PRIVATE_KEY_FILE=",
    ] {
        assert!(!env.lines().any(|l| l.starts_with(var)), "{var} leaked");
    }
    assert!(env.contains("PASS_ME=passed-through"), "{env}");
    assert!(env.contains("ACTIONS_RUNNER_INPUT_JITCONFIG="));
    run.sigterm();
    let out = run.finish().await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A config file whose `[connection]` names the credentials; no token flag or variable.
async fn run_with_connection(tag: &str, connection: &str, env: &[(&str, &str)]) {
    let sim = common::sim().await;
    let dir = workdir(tag);
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("autoscaler.toml");
    let toml = format!(
        "[connection]\nurl = {url:?}\n{connection}\n\n[[scale_set]]\nname = {tag:?}\n[scale_set.provisioner]\nkind = \"process\"\ncommand = {cmd:?}\nargs = [\"sim-runner\"]\nworkdir = {wd:?}\n",
        url = sim.config_url(),
        cmd = env!("CARGO_BIN_EXE_scaleset"),
        wd = dir.join("runners").display().to_string(),
    );
    std::fs::write(&config, toml).expect("config");
    let mut c = cmd();
    c.args([
        "run",
        "--config",
        &config.display().to_string(),
        "--log-level",
        "info",
    ]);
    for (k, v) in env {
        c.env(k, v);
    }
    let mut run = Streaming::spawn(c);
    run.wait_stderr("listening").await;
    run.sigterm();
    let out = run.finish().await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!out.stderr.contains(TOKEN), "the token is never printed");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_token_env_authenticates() {
    run_with_connection(
        "tokenenv",
        "token_env = \"MY_TOKEN\"",
        &[("MY_TOKEN", TOKEN)],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_token_file_authenticates() {
    let file = workdir("tokenfile-secret");
    std::fs::write(&file, format!("{TOKEN}\n")).expect("token file");
    run_with_connection(
        "tokenfile",
        &format!("token_file = {:?}", file.display().to_string()),
        &[],
    )
    .await;
    let _ = std::fs::remove_file(&file);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_standby_leaves_the_active_instances_runners_alone() {
    let sim = common::sim().await;
    let dir = workdir("standby");
    let mut active = run_cmd(&sim, &dir, "standby", &["--min-runners", "2"]);
    active.wait_stderr("listening").await;
    let (ok, _) = sim
        .wait_until(LONG, |st| {
            st.runners.iter().filter(|r| r.online).count() == 2
        })
        .await;
    assert!(ok, "two warm runners");
    let before: Vec<String> = sim.state().runners.iter().map(|r| r.name.clone()).collect();
    let pids = processes_under(&dir);
    // Same scale set, same work directory: it must only wait.
    let mut standby = run_cmd(&sim, &dir, "standby", &["--min-runners", "2"]);
    standby.wait_stderr("hot standby").await;
    let after: Vec<String> = sim.state().runners.iter().map(|r| r.name.clone()).collect();
    assert_eq!(after, before, "the standby removed no registration");
    for pid in &pids {
        assert!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), None).is_ok(),
            "runner process {pid} still alive"
        );
    }
    standby.sigterm();
    let out = standby.finish().await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!out.stderr.contains("cleaned up"), "{}", out.stderr);
    active.sigterm();
    let out = active.finish().await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let _ = std::fs::remove_dir_all(&dir);
}

// Structured logs: every line about a scale set, from the engine, the provisioner and the
// library's listener and session alike, carries the scale set's name (a field or the span).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scale_set_log_line_names_the_scale_set() {
    let sim = common::sim().await;
    let dir = workdir("logs");
    let mut c = cmd();
    c.args([
        "run",
        "--url",
        &sim.config_url(),
        "--token",
        TOKEN,
        "--name",
        "named-logs",
        "--runner-command",
        env!("CARGO_BIN_EXE_scaleset"),
        "--runner-arg",
        "sim-runner",
        "--runner-workdir",
        &dir.display().to_string(),
        "--shutdown",
        "drain",
        "--log-format",
        "json",
        "--log-level",
        "debug",
    ]);
    let mut run = Streaming::spawn(c);
    run.wait_stderr("listening").await;
    sim.enqueue_jobs(EnqueueJobs {
        labels: vec!["named-logs".into()],
        count: 3,
        ..Default::default()
    })
    .await
    .expect("enqueue");
    let (done, state) = sim
        .wait_until(LONG, |s| {
            s.jobs.iter().filter(|j| j.status == "completed").count() == 3
        })
        .await;
    assert!(done, "{:?}", state.jobs);
    run.sigterm();
    let out = run.finish().await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let mut checked = 0;
    for line in out.stderr.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("a log line is not JSON ({e}): {line}"));
        let target = v["target"].as_str().unwrap_or_default();
        // The admin-token refresh serves the client, shared by every scale set of a config
        // URL: it logs under its own span, naming the URL instead.
        let spans: Vec<&serde_json::Value> = v["spans"]
            .as_array()
            .map(|a| a.iter().collect())
            .unwrap_or_default();
        let client_wide = spans.iter().any(|s| s["name"] == "admin_token");
        let about_the_scale_set = !client_wide
            && (target.starts_with("actions_scaleset")
                || target.starts_with("scaleset_autoscaler::engine")
                || target.starts_with("scaleset_autoscaler::provisioner"));
        if !about_the_scale_set {
            continue;
        }
        let named =
            v["scale_set"] == "named-logs" || spans.iter().any(|s| s["scale_set"] == "named-logs");
        assert!(named, "a line without the scale set's name: {line}");
        checked += 1;
    }
    assert!(checked > 5, "too few lines checked: {}", out.stderr);
    let _ = std::fs::remove_dir_all(&dir);
}

// `--shutdown delete`: drain, then delete the scale set; nothing of it is left on the service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_delete_drains_then_deletes_the_scale_set() {
    let sim = common::sim().await;
    let dir = workdir("delete");
    let mut run = run_cmd(&sim, &dir, "deleteme", &["--shutdown", "delete"]);
    run.wait_stderr("listening").await;
    assert!(sim.state().scale_set_by_name("deleteme").is_some());
    sim.enqueue_jobs(EnqueueJobs {
        labels: vec!["deleteme".into()],
        count: 2,
        ..Default::default()
    })
    .await
    .expect("enqueue");
    let (done, state) = sim
        .wait_until(LONG, |s| {
            s.jobs.iter().filter(|j| j.status == "completed").count() == 2
        })
        .await;
    assert!(done, "{:?}", state.jobs);
    run.sigterm();
    let out = run.finish().await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let state = sim.state();
    assert!(
        state.scale_set_by_name("deleteme").is_none(),
        "{:?}",
        state.scale_sets
    );
    assert!(state.runners.is_empty(), "{:?}", state.runners);
    assert!(state.sessions.is_empty(), "{:?}", state.sessions);
    assert!(
        processes_under(&dir).is_empty(),
        "no runner process is left"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A daemon started while GitHub has a bad minute waits and retries, not ready meanwhile,
/// instead of exiting once the client's own retries are spent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_started_during_a_github_outage_waits_and_then_serves() {
    let sim = common::sim().await;
    // Enough 5xx answers for the scale-set lookup to spend three rounds of the client's
    // retries (two attempts each with --retry-max 1).
    let fault: Fault = serde_json::from_value(serde_json::json!({
        "kind": "status", "class": "scaleset", "count": 6, "status": 503
    }))
    .expect("fault");
    sim.faults().inject(fault).expect("inject");
    let dir = workdir("outage");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut run = run_cmd(
        &sim,
        &dir,
        "outage",
        &["--metrics-addr", &addr, "--retry-max", "1"],
    );
    run.wait_stderr("retrying (not ready meanwhile)").await;
    let why = wait_status(port, "/readyz", 503).await;
    assert!(why.contains("setting the scale set up"), "{why}");
    run.wait_stderr("listening").await;
    wait_status(port, "/readyz", 200).await;
    run.sigterm();
    let out = run.finish().await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Whatever reads the daemon's log goes away (`| tee` killed with the terminal, a collector
/// restarting): logging must not panic, and SIGTERM still shuts the daemon down cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_whose_stderr_closes_still_shuts_down_cleanly() {
    use tokio::io::AsyncBufReadExt;
    let sim = common::sim().await;
    let dir = workdir("nolog");
    let mut c = cmd();
    c.args([
        "run",
        "--url",
        &sim.config_url(),
        "--token",
        TOKEN,
        "--name",
        "nolog",
        "--runner-command",
        env!("CARGO_BIN_EXE_scaleset"),
        "--runner-arg",
        "sim-runner",
        "--runner-workdir",
        &dir.display().to_string(),
        "--log-level",
        "debug",
    ])
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().expect("the daemon starts");
    let stderr = child.stderr.take().expect("stderr is piped");
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    tokio::time::timeout(LONG, async {
        while let Some(line) = lines.next_line().await.expect("stderr is readable") {
            if line.contains("listening") {
                return;
            }
        }
        panic!("stderr closed before the daemon listened");
    })
    .await
    .expect("the daemon listens before the deadline");
    // The reader goes away; the daemon keeps logging (debug lines on every poll and job).
    drop(lines);
    sim.enqueue_jobs(EnqueueJobs {
        labels: vec!["nolog".into()],
        count: 2,
        duration: Duration::from_millis(100),
        ..Default::default()
    })
    .await
    .expect("enqueue");
    let (ok, st) = sim
        .wait_until(LONG, |st| st.jobs_in("completed") == 2)
        .await;
    assert!(ok, "jobs are still served: {:?}", st.jobs);
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id().expect("running")).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("signal");
    let status = tokio::time::timeout(LONG, child.wait())
        .await
        .expect("the daemon exits before the deadline")
        .expect("wait");
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(sim.state().sessions.is_empty(), "the session is deleted");
    let _ = std::fs::remove_dir_all(&dir);
}

/// github.com delivers `JobStarted` a poll late, so a runner that ran a short job has often
/// exited before the daemon hears that its job started. Such a runner did its work: it must
/// not be replaced. With every `JobStarted` held back 2 s and jobs of 100 ms, 10 jobs mint
/// exactly 10 JIT configs, all complete, and no runner is left idle afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_job_started_messages_mint_exactly_one_runner_per_job() {
    let sim = common::sim_with(|c| c.job_message_delay = Duration::from_secs(2)).await;
    let dir = workdir("late");
    let mut run = run_cmd(&sim, &dir, "late", &["--max-runners", "5"]);
    run.wait_stderr("listening").await;
    sim.enqueue_jobs(EnqueueJobs {
        labels: vec!["late".into()],
        count: 10,
        duration: Duration::from_millis(100),
        ..Default::default()
    })
    .await
    .expect("enqueue");
    let (done, st) = sim
        .wait_until(LONG, |st| {
            st.jobs.len() == 10 && st.jobs.iter().all(|j| j.status == "completed")
        })
        .await;
    assert!(done, "{} of 10 jobs completed", st.jobs_in("completed"));
    // Every late JobStarted/JobCompleted reaches the daemon, and a few polls pass after.
    let (settled, st) = sim
        .wait_until(LONG, |st| {
            st.scale_sets.iter().all(|s| s.pending_events == 0) && st.runners.is_empty()
        })
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let jit_calls = sim
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/generatejitconfig"))
        .count();
    assert!(
        settled,
        "late messages delivered, no runner left: {:?}",
        st.runners
    );
    assert_eq!(
        jit_calls, 10,
        "one JIT config per job, none for replacements"
    );
    assert!(sim.state().runners.is_empty(), "no idle runner was started");
    run.sigterm();
    let out = run.finish().await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A thousand scale sets under the usual soft open-file limit of 1,024: the daemon raises its
/// soft limit to the hard one at start, so every scale set opens its session and polls, and
/// a SIGTERM still deletes all 1,000 sessions and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_scale_sets_start_under_a_soft_limit_of_1024_open_files() {
    const N: usize = 1_000;
    let hard = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .expect("limits readable")
        .1;
    assert!(
        hard >= 4_096,
        "this test needs a hard open-file limit of at least 4,096, the machine has {hard}"
    );
    let sim = common::sim_with(|c| c.long_poll = Duration::from_secs(20)).await;
    let dir = workdir("thousand");
    let mut config = format!("[connection]\nurl = \"{}\"\n", sim.config_url());
    for i in 0..N {
        config.push_str(&format!(
            "\n[[scale_set]]\nname = \"many-{i:04}\"\nmax_runners = 1\n\n[scale_set.provisioner]\nkind = \"process\"\ncommand = \"{exe}\"\nargs = [\"sim-runner\"]\nworkdir = \"{work}\"\n",
            exe = env!("CARGO_BIN_EXE_scaleset"),
            work = dir.join(i.to_string()).display(),
        ));
    }
    std::fs::create_dir_all(&dir).expect("the test directory");
    let path = dir.join("many.toml");
    std::fs::write(&path, config).expect("config written");
    let mut c = tokio::process::Command::new("/bin/sh");
    for var in common::CLEARED {
        c.env_remove(var);
    }
    c.args([
        "-c",
        r#"ulimit -Sn 1024 && exec "$0" run --config "$1" --log-level warn"#,
        env!("CARGO_BIN_EXE_scaleset"),
    ])
    .arg(&path)
    .env("SCALESET_TOKEN", TOKEN)
    .env("NO_PROXY", "*")
    .stdin(std::process::Stdio::null())
    .kill_on_drop(true);
    let run = Streaming::spawn(c);
    let (all, st) = sim
        .wait_until(Duration::from_secs(240), |s| s.in_flight_polls >= N)
        .await;
    assert!(
        all,
        "only {} of {N} scale sets poll ({} sessions)",
        st.in_flight_polls,
        st.sessions.len()
    );
    run.sigterm();
    let out = run.finish().await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        !out.stderr.contains("Too many open files"),
        "{}",
        out.stderr
    );
    assert!(sim.state().sessions.is_empty(), "every session deleted");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Open descriptors of process `pid`.
fn open_descriptors(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the daemon's descriptors are readable")
        .count()
}

/// A daemon holds about one descriptor per scale set once started (its long poll), plus a
/// constant: one lock file for all the scale sets' work directories, not one each, and the
/// connections left idle by the start-up burst expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_scale_sets_hold_about_one_descriptor_each() {
    const N: usize = 200;
    // Room for the runtime, the standard streams, the lock file, the signal pipes and a
    // few pooled connections of the last polls to return.
    const CONSTANT: usize = 40;
    let bound = N + N / 10 + CONSTANT;
    let sim = common::sim_with(|c| c.long_poll = Duration::from_secs(5)).await;
    let dir = workdir("fds");
    let mut config = format!("[connection]\nurl = \"{}\"\n", sim.config_url());
    for i in 0..N {
        config.push_str(&format!(
            "\n[[scale_set]]\nname = \"fds-{i:03}\"\nmax_runners = 1\n\n[scale_set.provisioner]\nkind = \"process\"\ncommand = \"{exe}\"\nargs = [\"sim-runner\"]\nworkdir = \"{work}\"\n",
            exe = env!("CARGO_BIN_EXE_scaleset"),
            work = dir.join(i.to_string()).display(),
        ));
    }
    std::fs::create_dir_all(&dir).expect("the test directory");
    let path = dir.join("fds.toml");
    std::fs::write(&path, config).expect("config written");
    let mut c = cmd();
    c.args(["run", "--config"])
        .arg(&path)
        .args(["--log-level", "warn"])
        .env("SCALESET_TOKEN", TOKEN);
    let run = Streaming::spawn(c);
    let (all, st) = sim.wait_until(LONG, |s| s.in_flight_polls >= N).await;
    assert!(all, "only {} of {N} scale sets poll", st.in_flight_polls);
    // Start-up settles: every scale set polls and the burst's idle connections expire.
    let deadline = tokio::time::Instant::now() + LONG;
    let mut seen = Vec::new();
    loop {
        let open = open_descriptors(run.pid());
        seen.push(open);
        if open <= bound {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{N} scale sets hold more than {bound} descriptors; counts seen: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "{N} scale sets: {} descriptors (bound {bound}); counts seen {seen:?}",
        seen[seen.len() - 1]
    );
    run.sigterm();
    let out = run.finish().await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(sim.state().sessions.is_empty(), "every session deleted");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two scale sets of one name in two runner groups (issue 11 defect 3): each registers in
/// `/readyz` (it passes once both poll) and `/metrics` keeps their series apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_scale_sets_of_one_name_are_ready_and_counted_apart() {
    let sim = common::sim().await;
    sim.add_runner_group("gpu").expect("runner group added");
    let dir = workdir("twins");
    let port = free_port();
    let mut config = format!(
        "[connection]\nurl = \"{}\"\n\n[metrics]\naddr = \"127.0.0.1:{port}\"\n",
        sim.config_url()
    );
    for (i, (group, max)) in [("default", 1), ("gpu", 2)].iter().enumerate() {
        config.push_str(&format!(
            "\n[[scale_set]]\nname = \"twin\"\nrunner_group = \"{group}\"\nmax_runners = {max}\n\n[scale_set.provisioner]\nkind = \"process\"\ncommand = \"{exe}\"\nargs = [\"sim-runner\"]\nworkdir = \"{work}\"\n",
            exe = env!("CARGO_BIN_EXE_scaleset"),
            work = dir.join(i.to_string()).display(),
        ));
    }
    std::fs::create_dir_all(&dir).expect("the test directory");
    let path = dir.join("twins.toml");
    std::fs::write(&path, config).expect("config written");
    let mut c = cmd();
    c.args(["run", "--config"])
        .arg(&path)
        .env("SCALESET_TOKEN", TOKEN);
    let run = Streaming::spawn(c);
    let (both, st) = sim.wait_until(LONG, |s| s.in_flight_polls >= 2).await;
    assert!(both, "both poll: {:?}", st.sessions);
    wait_status(port, "/readyz", 200).await;
    let (_, metrics) = http_get(port, "/metrics").await;
    let max: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("gha_max_runners{") && l.contains("name=\"twin\""))
        .collect();
    assert_eq!(max.len(), 2, "{metrics}");
    assert!(
        max.iter()
            .any(|l| l.contains("runner_group=\"gpu\"") && l.ends_with(" 2")),
        "{max:?}"
    );
    run.sigterm();
    let out = run.finish().await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The log of `run` at its default level (info) with what changes from run to run redacted:
/// the timestamp, the version, the metrics port, ids the service makes up, runner names (by
/// order of appearance) and durations.
fn redact_log(stderr: &str, prefix: &str) -> Vec<String> {
    let mut runners: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for line in stderr.lines() {
        // `2026-12-06T07:54:23.680605Z  INFO target: message fields`
        let Some((_, rest)) = line.split_once(' ') else {
            continue;
        };
        let mut words = Vec::new();
        for word in rest.trim_start().split(' ') {
            let word = match word.split_once('=') {
                Some((key @ ("start_s" | "lifetime_s" | "deadline_in_s" | "waited_s"), _)) => {
                    format!("{key}=<s>")
                }
                Some((key @ ("job_id" | "session_id"), _)) => format!("{key}=<uuid>"),
                Some((key @ "version", _)) => format!("{key}=<version>"),
                Some(("metrics", addr)) if addr.starts_with("127.0.0.1:") => {
                    "metrics=127.0.0.1:<port>".to_string()
                }
                _ => word.to_string(),
            };
            words.push(word);
        }
        let mut line = words.join(" ");
        // Runner names: the prefix and 8 random hex digits.
        while let Some(at) = line.find(prefix).filter(|at| {
            line[at + prefix.len()..]
                .chars()
                .take(8)
                .filter(char::is_ascii_hexdigit)
                .count()
                == 8
        }) {
            let name = line[at..at + prefix.len() + 8].to_string();
            let n = match runners.iter().position(|r| *r == name) {
                Some(i) => i + 1,
                None => {
                    runners.push(name.clone());
                    runners.len()
                }
            };
            line = line.replacen(&name, &format!("<runner {n}>"), 1);
        }
        out.push(line);
    }
    // A runner's exit and GitHub's JobCompleted for its job race; the snapshot puts the exit
    // right after the job.
    let mut i = 0;
    while i < out.len() {
        let line = out[i].clone();
        let span = line.split(": ").next().unwrap_or_default().to_string();
        if line.contains("runner finished")
            && let Some(j) = out
                .iter()
                .position(|l| l.starts_with(&span) && l.contains("job completed"))
            && j != i + 1
            && j != i
        {
            out.remove(i);
            let j = if j > i { j - 1 } else { j };
            out.insert(j + 1, line);
            if j < i {
                i += 1;
            }
            continue;
        }
        i += 1;
    }
    out
}

/// The shape of `run`'s log at its default level, reviewed like an API: start-up, the scale
/// set ready, a change of target with its reason, a runner started, its job, its end, a second
/// job busy when SIGTERM comes, the drain waiting for it, and the outcome of the shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_info_log_of_a_short_run() {
    let sim = common::sim().await;
    let dir = workdir("infolog");
    let port = free_port();
    let mut c = cmd();
    c.args([
        "run",
        "--url",
        &sim.config_url(),
        "--token",
        TOKEN,
        "--name",
        "logged",
        "--label",
        "x64",
        "--max-runners",
        "2",
        "--runner-command",
        env!("CARGO_BIN_EXE_scaleset"),
        "--runner-arg",
        "sim-runner",
        "--runner-workdir",
        &dir.display().to_string(),
        "--metrics-addr",
        &format!("127.0.0.1:{port}"),
        "--shutdown",
        "drain",
    ]);
    let mut run = Streaming::spawn(c);
    run.wait_stderr("listening for jobs").await;
    let job = |duration| EnqueueJobs {
        labels: vec!["logged".into()],
        duration,
        ..Default::default()
    };
    sim.enqueue_jobs(job(Duration::from_millis(100)))
        .await
        .expect("enqueue");
    run.wait_stderr("target changed target=0").await;
    let (gone, st) = sim.wait_until(LONG, |s| s.runners.is_empty()).await;
    assert!(gone, "the first runner is deregistered: {:?}", st.runners);
    // Long enough to be running when SIGTERM arrives, so the drain waits for it.
    sim.enqueue_jobs(job(Duration::from_secs(8)))
        .await
        .expect("enqueue");
    run.wait_stderr("job started").await;
    run.sigterm();
    let out = run.finish().await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    insta::assert_snapshot!(redact_log(&out.stderr, "logged-").join("\n"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// One label rule (issue 11 defect 5): a scale set made with `scale-set create --name linux
/// --label x64` has `[linux, x64]`; `run --name linux --label x64` wants the same labels, so
/// it adopts the scale set as it is and never rewrites it to `[x64]` (which would strand every
/// workflow with `runs-on: linux`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_keeps_the_name_label_of_a_scale_set_made_by_create() {
    let sim = common::sim().await;
    let r = common::scaleset(
        &sim,
        &["scale-set", "create", "--name", "linux", "--label", "x64"],
    )
    .await;
    r.expect_code(0);
    let labels = |sim: &Simulator| {
        let state = sim.state();
        let set = state.scale_set_by_name("linux").expect("the scale set");
        let mut names = set.labels.clone();
        names.sort();
        names
    };
    assert_eq!(labels(&sim), ["linux", "x64"]);
    let dir = workdir("labels");
    let mut c = cmd();
    c.args([
        "run",
        "--url",
        &sim.config_url(),
        "--token",
        TOKEN,
        "--name",
        "linux",
        "--label",
        "x64",
        "--runner-command",
        env!("CARGO_BIN_EXE_scaleset"),
        "--runner-arg",
        "sim-runner",
        "--runner-workdir",
        &dir.display().to_string(),
    ]);
    let mut run = Streaming::spawn(c);
    run.wait_stderr("listening for jobs").await;
    assert_eq!(labels(&sim), ["linux", "x64"], "the name is still a label");
    let patches = sim
        .requests()
        .iter()
        .filter(|r| r.method == "PATCH" && r.path.contains("/runnerscalesets/"))
        .count();
    assert_eq!(patches, 0, "the scale set was not rewritten");
    run.sigterm();
    let out = run.finish().await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("adopted the existing scale set id=1 labels=linux,x64"),
        "{}",
        out.stderr
    );
    let _ = std::fs::remove_dir_all(&dir);
}
