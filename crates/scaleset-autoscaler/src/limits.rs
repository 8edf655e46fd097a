//! The open-file limit a daemon with many scale sets needs. Each scale set holds a long-poll
//! connection and, now and then, a second pooled connection or a runner's log pipe; the
//! usual soft limit of 1,024 is not enough for a thousand scale sets. At start the daemon
//! raises its soft limit to the hard limit (the kernel allows that without privileges, and
//! Go's runtime does the same) and says so when even the hard limit is too low.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Descriptors the daemon holds whatever its size: standard streams, the metrics listener,
/// the runtime's own, DNS, the state directory.
const BASE: u64 = 64;

/// Descriptors per scale set, with room for a second pooled connection and a runner pipe.
const PER_SCALE_SET: u64 = 3;

/// The open-file limits after [`raise_open_files`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenFiles {
    /// The soft limit in force now.
    pub soft: u64,
    /// The hard limit.
    pub hard: u64,
    /// The soft limit before it was raised.
    pub was: u64,
}

/// How many open files a daemon with `scale_sets` scale sets needs.
pub fn needed(scale_sets: usize) -> u64 {
    BASE.saturating_add(PER_SCALE_SET.saturating_mul(scale_sets as u64))
}

/// Raises the soft open-file limit to the hard limit.
///
/// # Errors
/// The system's error when the limits cannot be read or set.
pub fn raise_open_files() -> Result<OpenFiles, nix::Error> {
    let (was, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if was < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    Ok(OpenFiles { soft, hard, was })
}

/// Raises the limit and logs the outcome for `scale_sets` scale sets: at debug level when it
/// is enough, as a warning naming the number needed when it is not.
pub fn prepare(scale_sets: usize) {
    let want = needed(scale_sets);
    match raise_open_files() {
        Ok(l) if l.soft >= want => {
            tracing::debug!(soft = l.soft, was = l.was, needed = want, "open-file limit")
        }
        Ok(l) => tracing::warn!(
            limit = l.soft,
            needed = want,
            scale_sets,
            "the open-file limit is too low for this many scale sets and the hard limit allows no more; raise it (ulimit -n {want}, or LimitNOFILE={want} under systemd)"
        ),
        Err(e) => {
            tracing::warn!(error = %e, needed = want, "cannot read or raise the open-file limit")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estimate_grows_with_the_scale_sets() {
        assert_eq!(needed(0), BASE);
        assert_eq!(needed(1_000), BASE + 3_000);
    }

    #[test]
    fn raising_ends_at_the_hard_limit() {
        let l = raise_open_files().expect("limits readable");
        assert_eq!(l.soft, l.hard);
        assert!(l.was <= l.soft);
    }
}
