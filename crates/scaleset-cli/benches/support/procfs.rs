//! What `/proc` says of a process: resident and proportional memory, open descriptors.

use std::time::Duration;

/// Memory and descriptors of one process at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    /// Resident set size, KiB (`VmRSS` of `/proc/PID/status`).
    pub rss_kib: u64,
    /// Proportional set size, KiB (`Pss` of `/proc/PID/smaps_rollup`): shared pages divided
    /// among the processes that map them, so N processes sum to what they really cost.
    pub pss_kib: u64,
    /// Open descriptors (entries of `/proc/PID/fd`).
    pub fds: u64,
}

impl std::ops::Add for Usage {
    type Output = Usage;
    fn add(self, o: Usage) -> Usage {
        Usage {
            rss_kib: self.rss_kib + o.rss_kib,
            pss_kib: self.pss_kib + o.pss_kib,
            fds: self.fds + o.fds,
        }
    }
}

/// The `kB` value of the line `key:` in `text`.
fn kib(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The usage of `pid`; `None` when it is gone.
pub fn usage(pid: u32) -> Option<Usage> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some(Usage {
        rss_kib: kib(&status, "VmRSS:")?,
        pss_kib: kib(&rollup, "Pss:")?,
        fds,
    })
}

/// The summed usage of `pids` (those gone count nothing).
pub fn usage_of(pids: &[u32]) -> Usage {
    pids.iter()
        .filter_map(|p| usage(*p))
        .fold(Usage::default(), |a, b| a + b)
}

/// The summed CPU time of `pids`.
pub fn cpu_of(pids: &[u32]) -> Duration {
    pids.iter().filter_map(|p| super::cpu_time(*p)).sum()
}

/// Threads of `pid` (`Threads:` of `/proc/PID/status`).
pub fn threads(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
}
