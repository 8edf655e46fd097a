//! Message decode: a 50-job message from the queue (envelope, body string, typed job
//! messages) decoded as the session client does, against `serde_json::Value` parsing of the
//! same bytes (the envelope, then its body string): the least a consumer that reads the
//! message at all must do. The target is a typed decode no slower than the untyped parse.
//!
//! Run with `cargo bench -p actions-scaleset --bench message_decode` (criterion, release
//! build). Besides criterion's report, the medians go to
//! `target/bench-results/message_decode.{json,md}` (`SCALESET_BENCH_OUT` names another
//! directory).

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{Criterion, Throughput};
use serde_json::{Value, json};

/// A realistic message: 50 job messages as github.com sends them (20 assigned, 15 started,
/// 15 completed), every field the service fills.
fn message() -> Vec<u8> {
    let mut jobs = Vec::new();
    for i in 0..50u32 {
        let kind = match i {
            0..20 => "JobAssigned",
            20..35 => "JobStarted",
            _ => "JobCompleted",
        };
        let mut job = json!({
            "messageType": kind,
            "runnerRequestId": 1_000_000 + i,
            "repositoryName": "scaleset",
            "ownerName": "octo-org",
            "jobId": format!("8d0b5c4e-{i:04}-4b5e-9a3f-2c6d1e7f8a9b"),
            "jobWorkflowRef": "octo-org/scaleset/.github/workflows/ci.yml@refs/heads/main",
            "jobDisplayName": format!("test ({i})"),
            "workflowRunId": 9_876_543_210u64 + u64::from(i),
            "eventName": "pull_request",
            "requestLabels": ["linux-x64", "self-hosted"],
            "queueTime": "2026-12-07T15:04:05.1234567Z",
            "scaleSetAssignTime": "2026-12-07T15:04:05.2345678Z",
            "runnerAssignTime": "0001-01-01T00:00:00Z",
            "finishTime": "0001-01-01T00:00:00Z",
        });
        if kind != "JobAssigned" {
            job["runnerId"] = json!(4_000 + i);
            job["runnerName"] = json!(format!("linux-x64-{i:08x}"));
            job["runnerAssignTime"] = json!("2026-12-07T15:04:06.3456789Z");
        }
        if kind == "JobCompleted" {
            job["result"] = json!("succeeded");
            job["finishTime"] = json!("2026-12-07T15:09:07.4567891Z");
        }
        jobs.push(job);
    }
    let body = serde_json::to_string(&jobs).expect("serialises");
    serde_json::to_vec(&json!({
        "messageId": 4242,
        "messageType": "RunnerScaleSetJobMessages",
        "statistics": {
            "totalAvailableJobs": 0,
            "totalAcquiredJobs": 0,
            "totalAssignedJobs": 35,
            "totalRunningJobs": 15,
            "totalRegisteredRunners": 30,
            "totalBusyRunners": 15,
            "totalIdleRunners": 15,
        },
        "body": body,
    }))
    .expect("serialises")
}

/// The untyped baseline: the envelope and its body string as `Value`s.
fn untyped(raw: &[u8]) -> (Value, Value) {
    let envelope: Value = serde_json::from_slice(raw).expect("JSON");
    let body: Value =
        serde_json::from_str(envelope["body"].as_str().expect("a body string")).expect("JSON body");
    (envelope, body)
}

fn out_dir() -> PathBuf {
    std::env::var_os("SCALESET_BENCH_OUT").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/bench-results"),
        PathBuf::from,
    )
}

/// The median point estimate (ns) criterion recorded for `id` of group `message_decode`.
fn median_ns(criterion_dir: &std::path::Path, id: &str) -> Option<f64> {
    let path = criterion_dir.join(format!("message_decode/{id}/new/estimates.json"));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    v["median"]["point_estimate"].as_f64()
}

fn main() {
    let raw = message();
    let decoded = actions_scaleset::message::decode(&raw)
        .expect("decodes")
        .expect("a job message");
    assert_eq!(decoded.jobs.len(), 50);
    assert!(decoded.problems.is_empty(), "{:?}", decoded.problems);
    let criterion_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/criterion");
    let mut c = Criterion::default()
        .output_directory(&criterion_dir)
        .configure_from_args();
    {
        let mut g = c.benchmark_group("message_decode");
        g.throughput(Throughput::Bytes(raw.len() as u64));
        g.bench_function("serde_json_value", |b| b.iter(|| untyped(black_box(&raw))));
        g.bench_function("typed", |b| {
            b.iter(|| actions_scaleset::message::decode(black_box(&raw)))
        });
        g.finish();
    }
    c.final_summary();
    // `cargo bench --no-run`/`--test` runs write no estimates.
    let (Some(value), Some(typed)) = (
        median_ns(&criterion_dir, "serde_json_value"),
        median_ns(&criterion_dir, "typed"),
    ) else {
        return;
    };
    let ratio = typed / value;
    let verdict = if ratio <= 1.0 {
        "**met**".to_string()
    } else {
        format!("**missed** ({:.0}% slower)", (ratio - 1.0) * 100.0)
    };
    let md = format!(
        "A 50-job message ({} bytes: 20 `JobAssigned`, 15 `JobStarted`, 15 `JobCompleted`, \
         statistics), decoded from its bytes; criterion medians.\n\n\
         | decode | median | per job message | |\n|---|---|---|---|\n\
         | `serde_json::Value`, envelope then body string (baseline) | {:.1} µs | {:.2} µs | |\n\
         | typed, as the session client decodes it | {:.1} µs | {:.2} µs | {ratio:.2}x the baseline |\n\n\
         Target (typed decode no slower than the untyped parse): {verdict}.\n",
        raw.len(),
        value / 1_000.0,
        value / 50_000.0,
        typed / 1_000.0,
        typed / 50_000.0,
    );
    println!("\n{md}");
    let dir = out_dir();
    if std::fs::create_dir_all(&dir).is_ok() {
        let json = json!({
            "bench": "message_decode",
            "bytes": raw.len(),
            "jobs": 50,
            "serde_json_value_ns": value,
            "typed_ns": typed,
            "ratio": ratio,
        });
        let _ = std::fs::write(
            dir.join("message_decode.json"),
            serde_json::to_string_pretty(&json).unwrap_or_default() + "\n",
        );
        let _ = std::fs::write(dir.join("message_decode.md"), md);
    }
}
