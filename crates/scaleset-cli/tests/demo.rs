//! `scaleset demo` end to end: the built binary runs the simulator, the autoscaler and its
//! simulated runners in one process. Each test gives the demo its own `TMPDIR`, so the
//! demo's work directory, and the runner processes working in it, are this test's alone.

mod common;
#[path = "../../scaleset-autoscaler/tests/support/docker_engine.rs"]
mod docker_engine;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{DEADLINE, Streaming, cmd};
use nix::sys::signal::Signal;

/// A fresh, empty directory for one demo's `TMPDIR`.
fn tmpdir(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "scaleset-demo-test-{tag}-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("the test's temp dir is created");
    dir
}

/// Live `sim-runner` processes working under `dir`.
fn runners_under(dir: &Path) -> Vec<(i32, String)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cwd) = std::fs::read_link(e.path().join("cwd")) else {
            continue;
        };
        let cmdline = std::fs::read(e.path().join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        if cwd.starts_with(dir) && cmdline.contains("sim-runner") {
            found.push((pid, cmdline));
        }
    }
    found
}

/// Every `sim-runner` child of our binary anywhere, and what is left in the demo's `TMPDIR`.
fn assert_nothing_left(dir: &Path) {
    assert!(
        runners_under(dir).is_empty(),
        "runner processes are left: {:?}",
        runners_under(dir)
    );
    let left: Vec<_> = std::fs::read_dir(dir)
        .expect("the test's temp dir is readable")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "the work directory is left: {left:?}");
    let _ = std::fs::remove_dir_all(dir);
}

fn demo(dir: &Path, args: &[&str]) -> tokio::process::Command {
    let mut c = cmd();
    c.arg("demo").args(args).env("TMPDIR", dir);
    c
}

const SMALL: [&str; 10] = [
    "--jobs",
    "12",
    "--job-duration",
    "0.2",
    "--arrival-rate",
    "50",
    "--max-runners",
    "4",
    "--min-runners",
    "0",
];

#[tokio::test]
async fn a_small_demo_runs_every_job_and_leaves_nothing() {
    let dir = tmpdir("small");
    let mut args = SMALL.to_vec();
    args.push("--json");
    let r = common::run(demo(&dir, &args)).await;
    r.expect_code(0);

    let s = r.json();
    assert_eq!(s["jobsTotal"], 12, "{s}");
    assert_eq!(s["jobsDone"], 12, "{s}");
    assert_eq!(s["jobsSucceeded"], 12, "{s}");
    assert_eq!(s["jobsFailed"], 0, "{s}");
    assert_eq!(s["jobsCanceled"], 0, "{s}");
    assert_eq!(s["interrupted"], false, "{s}");
    let peak = s["peakRunners"].as_u64().expect("peakRunners is a number");
    assert!((1..=4).contains(&peak), "peak runners {peak}: {s}");
    let p50 = s["waitP50Secs"].as_f64().expect("waitP50Secs is a number");
    let p95 = s["waitP95Secs"].as_f64().expect("waitP95Secs is a number");
    let max = s["waitMaxSecs"].as_f64().expect("waitMaxSecs is a number");
    assert!(0.0 <= p50 && p50 <= p95 && p95 <= max, "{s}");
    assert!(s["totalSecs"].as_f64().is_some_and(|t| t > 0.0), "{s}");

    // Not a terminal: plain progress lines on stderr, no carriage returns, ending with the
    // final state; stdout holds the JSON summary alone (runner output never reaches it).
    assert!(!r.stderr.contains('\r'), "{}", r.stderr);
    let progress: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.contains("jobs:") && l.contains("runners:"))
        .collect();
    assert!(!progress.is_empty(), "no progress lines: {}", r.stderr);
    assert!(
        progress
            .last()
            .is_some_and(|l| l.contains("12/12 done") && l.contains("0 running")),
        "{progress:#?}"
    );
    assert_eq!(r.stdout.lines().count(), 1, "{}", r.stdout);
    // The first line says what a scale set is; the last one what to try next.
    let first = r.stderr.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("scaleset demo: a runner scale set is "),
        "{}",
        r.stderr
    );
    assert!(first.contains("runs-on:"), "{first}");
    assert!(
        r.last_err_line().starts_with("Next: try `scaleset demo"),
        "{}",
        r.stderr
    );
    assert_nothing_left(&dir);
}

#[tokio::test]
async fn the_text_summary_and_trace_logs_hold_no_secret() {
    let dir = tmpdir("trace");
    let mut args = SMALL.to_vec();
    args.extend(["--log-level", "trace"]);
    let r = common::run(demo(&dir, &args)).await;
    r.expect_code(0);
    assert!(r.stdout.contains("12/12 jobs done"), "{}", r.stdout);
    assert!(r.stdout.contains("p50"), "{}", r.stdout);
    assert!(r.stdout.contains("peak"), "{}", r.stdout);
    // Text mode: the summary on stdout ends with what to try next.
    let last = r.stdout.lines().last().unwrap_or_default();
    assert!(last.starts_with("Next: try `scaleset demo"), "{}", r.stdout);
    // With logs on, progress stays plain lines even on a terminal; here, not one.
    assert!(r.stderr.contains("runners:"), "{}", r.stderr);
    // The simulator's PAT starts with ghp_sim; JIT configs and JWTs are base64 JSON (eyJ).
    for out in [&r.stdout, &r.stderr] {
        assert!(!out.contains("ghp_sim"), "the token leaked: {out}");
        assert!(!out.contains("eyJ"), "a JIT config or JWT leaked: {out}");
    }
    assert_nothing_left(&dir);
}

#[tokio::test]
async fn invalid_flags_exit_2_and_name_the_flag() {
    let dir = tmpdir("flags");
    let cases: [(&[&str], &str); 7] = [
        (&["--jobs", "0"], "--jobs"),
        (&["--arrival-rate", "0"], "--arrival-rate"),
        (&["--arrival-rate", "-1"], "--arrival-rate"),
        (
            &["--max-runners", "2", "--min-runners", "3"],
            "--min-runners",
        ),
        (
            &["--max-runners", "0", "--min-runners", "0"],
            "--max-runners",
        ),
        (&["--job-duration", "soon"], "--job-duration"),
        (&["--job-duration", "-1"], "--job-duration"),
    ];
    for (args, flag) in cases {
        let r = common::run(demo(&dir, args)).await;
        r.expect_code(2);
        assert!(
            r.stderr.contains(flag),
            "{args:?}: the error does not name {flag}: {}",
            r.stderr
        );
        assert!(r.stdout.is_empty(), "{args:?}: {}", r.stdout);
    }
    // Nothing was started: no work directory was created.
    assert_nothing_left(&dir);
}

#[tokio::test]
async fn sigint_stops_the_demo_promptly_and_leaves_nothing() {
    let dir = tmpdir("sigint");
    let args = [
        "--jobs",
        "1000",
        "--job-duration",
        "1",
        "--arrival-rate",
        "5",
        "--max-runners",
        "3",
        "--min-runners",
        "1",
    ];
    let mut d = Streaming::spawn(demo(&dir, &args));
    d.wait_stderr("jobs:").await;
    // Wait (under the deadline) until runner processes exist, so the interrupt has
    // something to drain and stop.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while runners_under(&dir).is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no runner process started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    d.signal(Signal::SIGINT);
    // `finish` waits under the deadline: the drain is bounded by the 1 s jobs plus 10 s.
    let r = d.finish().await;
    r.expect_code(130);
    assert!(r.stdout.contains("(interrupted)"), "{}", r.stdout);
    assert!(r.stdout.contains("/1000 jobs done"), "{}", r.stdout);
    assert!(
        r.last_err_line().starts_with("error: demo: interrupted"),
        "{}",
        r.stderr
    );
    assert_nothing_left(&dir);
}

/// Containers of the demo's scale set on the engine, whatever their state.
async fn demo_containers(docker: &bollard::Docker) -> Vec<String> {
    let mut filters = std::collections::HashMap::new();
    filters.insert(
        "label".to_string(),
        vec!["dev.scaleset.scale-set-name=demo-runners".to_string()],
    );
    let opts = bollard::query_parameters::ListContainersOptions {
        all: true,
        filters: Some(filters),
        ..Default::default()
    };
    docker
        .list_containers(Some(opts))
        .await
        .expect("the engine lists containers")
        .into_iter()
        .flat_map(|c| c.names.unwrap_or_default())
        .collect()
}

#[tokio::test]
async fn a_docker_demo_runs_its_runners_as_containers_and_leaves_none() {
    let Some(docker) =
        docker_engine::engine("a_docker_demo_runs_its_runners_as_containers_and_leaves_none").await
    else {
        return;
    };
    let dir = tmpdir("docker");
    let mut args = SMALL.to_vec();
    args.extend(["--provisioner", "docker", "--json"]);
    let mut c = demo(&dir, &args);
    c.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    // The first run builds the image: a longer deadline than the other demos.
    let out = tokio::time::timeout(Duration::from_secs(300), c.output())
        .await
        .expect("the docker demo finishes before the deadline")
        .expect("the demo runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the summary is JSON");
    assert_eq!(s["jobsSucceeded"], 12, "{s}");
    assert!(
        stderr.contains("containers of scaleset-demo-runner:"),
        "{stderr}"
    );
    let image = format!("scaleset-demo-runner:{}", env!("CARGO_PKG_VERSION"));
    docker
        .inspect_image(&image)
        .await
        .unwrap_or_else(|e| panic!("the demo's image {image} exists: {e}"));
    let left = demo_containers(&docker).await;
    assert!(left.is_empty(), "containers are left: {left:?}");
    assert_nothing_left(&dir);
}

#[tokio::test]
async fn a_docker_demo_without_an_engine_fails_at_once_naming_docker_host() {
    let dir = tmpdir("nodocker");
    let missing = dir.join("no-such-docker.sock");
    let host = format!("unix://{}", missing.display());
    let mut c = demo(&dir, &["--provisioner", "docker"]);
    c.env("DOCKER_HOST", &host);
    let r = common::run(c).await;
    r.expect_code(1);
    let line = r.last_err_line();
    assert!(
        line.starts_with("error: demo: --provisioner docker needs a Docker engine"),
        "{}",
        r.stderr
    );
    assert!(line.contains(&format!("DOCKER_HOST={host}")), "{line}");
    assert!(line.contains("apt-get install docker.io"), "{line}");
    // One error, no progress: nothing ran.
    assert!(!r.stderr.contains("jobs:"), "{}", r.stderr);
    assert_eq!(r.stderr.matches("error:").count(), 1, "{}", r.stderr);
    assert!(r.stdout.is_empty(), "{}", r.stdout);
    assert_nothing_left(&dir);
}
