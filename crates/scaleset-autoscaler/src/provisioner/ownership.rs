//! Ownership of a scale set's runners on one host: an exclusive `flock` on a lock file,
//! held for as long as the [`HostLock`] lives. A second instance (a hot standby) waits in
//! [`HostLock::acquire`] until the first one lets go, or dies: the kernel releases a dead
//! holder's lock, so a crash never leaves a stale lock behind.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use tokio_util::sync::CancellationToken;

use crate::error::ProvisionError;

/// How often a waiting instance tries the lock again.
const RETRY: Duration = Duration::from_millis(500);

/// A held lock file. Dropping it lets go.
#[derive(Debug)]
pub struct HostLock {
    path: PathBuf,
    _lock: Flock<std::fs::File>,
}

impl HostLock {
    /// Takes the lock at `path` now.
    ///
    /// # Errors
    /// [`ProvisionError::Locked`] when another holder has it; a backend error when the file
    /// cannot be opened.
    pub fn try_acquire(backend: &'static str, path: &Path) -> Result<HostLock, ProvisionError> {
        Self::attempt(backend, path)?
            .ok_or_else(|| ProvisionError::Locked(format!("the lock {}", path.display())))
    }

    /// Takes the lock at `path`, waiting (and saying so once, at info level) while another
    /// instance holds it, until `cancel` fires.
    ///
    /// # Errors
    /// [`ProvisionError::Cancelled`] when `cancel` fired first; a backend error when the
    /// file cannot be opened.
    pub async fn acquire(
        backend: &'static str,
        path: &Path,
        cancel: &CancellationToken,
    ) -> Result<HostLock, ProvisionError> {
        let mut logged = false;
        loop {
            if let Some(lock) = Self::attempt(backend, path)? {
                if logged {
                    tracing::info!(lock = %path.display(), "took over the runners");
                }
                return Ok(lock);
            }
            if !logged {
                tracing::info!(lock = %path.display(), "another instance manages these runners; waiting for it to finish");
                logged = true;
            }
            tokio::select! {
                () = cancel.cancelled() => return Err(ProvisionError::Cancelled),
                () = tokio::time::sleep(RETRY) => {}
            }
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn attempt(backend: &'static str, path: &Path) -> Result<Option<HostLock>, ProvisionError> {
        let failed = |what: &str, e: std::io::Error| {
            ProvisionError::backend(backend, format!("{what} {}: {e}", path.display()))
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| failed("opening the lock file", e))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(Some(HostLock {
                path: path.to_path_buf(),
                _lock: lock,
            })),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, errno)) => Err(failed("locking", errno.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_holder_waits_until_the_first_lets_go() {
        let dir = std::env::temp_dir().join(format!("scaleset-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("a.lock");
        let first = HostLock::try_acquire("test", &path).expect("free");
        assert!(matches!(
            HostLock::try_acquire("test", &path),
            Err(ProvisionError::Locked(_))
        ));
        let cancel = CancellationToken::new();
        let waiter = {
            let path = path.clone();
            let cancel = cancel.clone();
            tokio::spawn(async move { HostLock::acquire("test", &path, &cancel).await })
        };
        tokio::time::sleep(RETRY * 2).await;
        assert!(!waiter.is_finished(), "the standby must wait");
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("took over within the deadline")
            .expect("task")
            .expect("locked");
        assert_eq!(second.path(), path);
        let cancelled = CancellationToken::new();
        cancelled.cancel();
        assert!(matches!(
            HostLock::acquire("test", &path, &cancelled).await,
            Err(ProvisionError::Cancelled)
        ));
        drop(second);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
