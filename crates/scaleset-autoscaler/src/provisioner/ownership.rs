//! Ownership of runners on one host: an exclusive lock on a *key* (a work directory, a scale
//! set on a Docker host) inside a lock file, held for as long as the [`HostLock`] lives. A
//! second instance (a hot standby) waits in [`HostLock::acquire`] until the first one lets
//! go, or dies: the kernel releases a dead holder's locks, so a crash never leaves a stale
//! lock behind.
//!
//! A daemon runs hundreds of scale sets, and a lock file per scale set held open for the
//! process's life was one descriptor each (a third of the open-file budget). Here a daemon
//! holds **one descriptor per lock file** (the daemon uses one per state directory), whatever
//! the number of keys locked in it:
//!
//! * each key is a one-byte range of the file, at an offset hashed from the key (FNV-1a, 62
//!   bits: stable across builds, so two versions of the daemon agree on it);
//! * the range is locked with an *open file description* lock (`F_OFD_SETLK`): such locks
//!   belong to the descriptor, not the process, so they conflict with any other descriptor of
//!   the file (another daemon), and closing some other descriptor of the file does not drop
//!   them (unlike classic `fcntl` locks);
//! * within a process every holder of one file shares its descriptor (a registry of open lock
//!   files, keyed by device and inode), and a key held twice in one process is refused by the
//!   registry's set of held keys, since one descriptor's own locks never conflict.
//!
//! The descriptor is closed when the last [`HostLock`] of its file goes.

use std::collections::{HashMap, HashSet};
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::Duration;

use nix::fcntl::{FcntlArg, fcntl};
use nix::libc;
use tokio_util::sync::CancellationToken;

use crate::error::ProvisionError;

/// The daemon's lock file in its state directory, holding the key of every scale set it
/// manages.
pub const OWNERS_LOCK_FILE: &str = "owners.lock";

/// How often a waiting instance tries the lock again.
const RETRY: Duration = Duration::from_millis(500);

/// One open lock file of this process, shared by every [`HostLock`] in it.
struct LockFile {
    file: std::fs::File,
    /// Offsets locked through this descriptor.
    held: Mutex<HashSet<i64>>,
}

/// Open lock files by (device, inode).
type OpenFiles = HashMap<(u64, u64), Weak<LockFile>>;

/// The open lock files of this process. Entries whose last holder went are dropped on the
/// next look-up.
static OPEN: LazyLock<Mutex<OpenFiles>> = LazyLock::new(|| Mutex::new(HashMap::new()));

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A held key of a lock file. Dropping it lets go.
pub struct HostLock {
    path: PathBuf,
    key: String,
    offset: i64,
    file: Arc<LockFile>,
}

impl std::fmt::Debug for HostLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostLock")
            .field("path", &self.path)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// The byte of the lock file that stands for `key`: FNV-1a over its bytes, in `0..2^62`.
fn offset_of(key: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.as_bytes() {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    i64::try_from(hash >> 2).expect("a 62-bit value fits an i64")
}

/// An `F_OFD_SETLK` request for one byte at `offset`.
fn range(kind: libc::c_int, offset: i64) -> libc::flock {
    libc::flock {
        l_type: libc::c_short::try_from(kind).expect("lock types are small constants"),
        l_whence: libc::c_short::try_from(libc::SEEK_SET).expect("SEEK_SET is 0"),
        l_start: offset,
        l_len: 1,
        // Must be 0 for open file description locks.
        l_pid: 0,
    }
}

impl HostLock {
    /// Takes `key` in the lock file at `path` now.
    ///
    /// # Errors
    /// [`ProvisionError::Locked`] when another holder has it; a backend error when the file
    /// cannot be opened or locked.
    pub fn try_acquire(
        backend: &'static str,
        path: &Path,
        key: &str,
    ) -> Result<HostLock, ProvisionError> {
        Self::attempt(backend, path, key)?
            .ok_or_else(|| ProvisionError::Locked(format!("{key} (lock file {})", path.display())))
    }

    /// Takes `key` in the lock file at `path`, waiting (and saying so once, at info level)
    /// while another instance holds it, until `cancel` fires.
    ///
    /// # Errors
    /// [`ProvisionError::Cancelled`] when `cancel` fired first; a backend error when the
    /// file cannot be opened or locked.
    pub async fn acquire(
        backend: &'static str,
        path: &Path,
        key: &str,
        cancel: &CancellationToken,
    ) -> Result<HostLock, ProvisionError> {
        let mut logged = false;
        loop {
            if let Some(lock) = Self::attempt(backend, path, key)? {
                if logged {
                    tracing::info!("took over the runners");
                }
                return Ok(lock);
            }
            if !logged {
                tracing::info!(lock = %path.display(), key, "another instance manages these runners; waiting for it to finish");
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

    /// The key held.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// This process's descriptor of the lock file at `path`, opening it when no holder has it.
    fn file(path: &Path) -> std::io::Result<Arc<LockFile>> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(0o600)
            .open(path)?;
        let meta = file.metadata()?;
        let id = (meta.dev(), meta.ino());
        let mut open = lock(&OPEN);
        open.retain(|_, f| f.strong_count() > 0);
        if let Some(shared) = open.get(&id).and_then(Weak::upgrade) {
            // Closing this second descriptor leaves the shared one's locks in place (they
            // belong to its open file description).
            return Ok(shared);
        }
        let shared = Arc::new(LockFile {
            file,
            held: Mutex::new(HashSet::new()),
        });
        open.insert(id, Arc::downgrade(&shared));
        Ok(shared)
    }

    fn attempt(
        backend: &'static str,
        path: &Path,
        key: &str,
    ) -> Result<Option<HostLock>, ProvisionError> {
        let failed = |what: &str, e: std::io::Error| {
            ProvisionError::backend(backend, format!("{what} {}: {e}", path.display()))
        };
        let file = Self::file(path).map_err(|e| failed("opening the lock file", e))?;
        let offset = offset_of(key);
        let mut held = lock(&file.held);
        if held.contains(&offset) {
            return Ok(None);
        }
        match fcntl(
            file.file.as_fd(),
            FcntlArg::F_OFD_SETLK(&range(libc::F_WRLCK, offset)),
        ) {
            Ok(_) => {}
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EACCES) => return Ok(None),
            Err(errno) => return Err(failed("locking", errno.into())),
        }
        held.insert(offset);
        drop(held);
        Ok(Some(HostLock {
            path: path.to_path_buf(),
            key: key.to_string(),
            offset,
            file,
        }))
    }
}

impl Drop for HostLock {
    fn drop(&mut self) {
        let mut held = lock(&self.file.held);
        // Should the unlock fail, the lock still goes with the descriptor when its last
        // holder drops it; the key stays held meanwhile, which is the safe side.
        if fcntl(
            self.file.file.as_fd(),
            FcntlArg::F_OFD_SETLK(&range(libc::F_UNLCK, self.offset)),
        )
        .is_ok()
        {
            held.remove(&self.offset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("scaleset-lock-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    /// Whether another open file description (another daemon, as the kernel sees it) could
    /// take `key` in the file at `path` now.
    fn free_for_another_descriptor(path: &Path, key: &str) -> bool {
        let other = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .expect("the lock file exists");
        let offset = offset_of(key);
        match fcntl(
            other.as_fd(),
            FcntlArg::F_OFD_SETLK(&range(libc::F_WRLCK, offset)),
        ) {
            Ok(_) => true,
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EACCES) => false,
            Err(e) => panic!("locking failed: {e}"),
        }
    }

    #[tokio::test]
    async fn a_second_holder_waits_until_the_first_lets_go() {
        let dir = tempdir("wait");
        let path = dir.join("owners.lock");
        let first = HostLock::try_acquire("test", &path, "a").expect("free");
        assert!(matches!(
            HostLock::try_acquire("test", &path, "a"),
            Err(ProvisionError::Locked(_))
        ));
        let cancel = CancellationToken::new();
        let waiter = {
            let path = path.clone();
            let cancel = cancel.clone();
            tokio::spawn(async move { HostLock::acquire("test", &path, "a", &cancel).await })
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
        assert_eq!(second.key(), "a");
        let cancelled = CancellationToken::new();
        cancelled.cancel();
        assert!(matches!(
            HostLock::acquire("test", &path, "a", &cancelled).await,
            Err(ProvisionError::Cancelled)
        ));
        drop(second);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn keys_of_one_file_share_a_descriptor_and_exclude_other_descriptors() {
        let dir = tempdir("keys");
        let path = dir.join("owners.lock");
        let locks: Vec<HostLock> = (0..50)
            .map(|i| HostLock::try_acquire("test", &path, &format!("set-{i}")).expect("free"))
            .collect();
        assert!(
            locks.iter().all(|l| Arc::ptr_eq(&l.file, &locks[0].file)),
            "one descriptor for every key of the file"
        );
        // Another daemon (another open file description) is kept out of every held key, and
        // only of those.
        assert!(!free_for_another_descriptor(&path, "set-0"));
        assert!(!free_for_another_descriptor(&path, "set-49"));
        assert!(free_for_another_descriptor(&path, "set-50"));
        drop(locks);
        assert!(free_for_another_descriptor(&path, "set-0"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_released_key_is_free_while_the_descriptor_stays_open() {
        let dir = tempdir("release");
        let path = dir.join("owners.lock");
        let keep = HostLock::try_acquire("test", &path, "keep").expect("free");
        let gone = HostLock::try_acquire("test", &path, "gone").expect("free");
        drop(gone);
        assert!(free_for_another_descriptor(&path, "gone"));
        assert!(!free_for_another_descriptor(&path, "keep"));
        HostLock::try_acquire("test", &path, "gone").expect("free again in this process");
        drop(keep);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn offsets_are_stable_and_in_range() {
        // FNV-1a of "" and of "a", shifted right by 2: fixed across builds and versions.
        let empty = i64::try_from(0xcbf2_9ce4_8422_2325_u64 >> 2).expect("62 bits");
        assert_eq!(offset_of(""), empty);
        assert!((0..1 << 62).contains(&offset_of("/srv/runners/linux")));
        assert_ne!(offset_of("a"), offset_of("b"));
    }
}
