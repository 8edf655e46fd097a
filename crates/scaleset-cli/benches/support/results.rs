//! Where a bench leaves its figures: `target/bench-results/NAME.json` (machine-readable) and
//! `NAME.md` (the Markdown `benches/run-all` puts between `<!-- bench:NAME -->` and
//! `<!-- /bench -->` in `BENCHMARKS.md`). `SCALESET_BENCH_OUT` names another directory.

use std::path::PathBuf;

/// The results directory (created).
pub fn dir() -> PathBuf {
    let dir = std::env::var_os("SCALESET_BENCH_OUT").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/bench-results"),
        PathBuf::from,
    );
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("the results directory {dir:?} cannot be made: {e}"));
    dir
}

/// Writes `NAME.json` and `NAME.md`, and says where.
pub fn write(name: &str, json: &serde_json::Value, markdown: &str) {
    let dir = dir();
    let j = dir.join(format!("{name}.json"));
    let m = dir.join(format!("{name}.md"));
    let text = serde_json::to_string_pretty(json).expect("a JSON value serialises");
    std::fs::write(&j, text + "\n").unwrap_or_else(|e| panic!("{j:?}: {e}"));
    std::fs::write(&m, markdown).unwrap_or_else(|e| panic!("{m:?}: {e}"));
    println!("results: {} and {}", j.display(), m.display());
}

/// A duration in seconds with two decimals.
pub fn secs(d: std::time::Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// "met" or "missed (by ...)" for a target.
pub fn verdict(met: bool, miss: impl FnOnce() -> String) -> String {
    if met {
        "**met**".to_string()
    } else {
        format!("**missed** ({})", miss())
    }
}
