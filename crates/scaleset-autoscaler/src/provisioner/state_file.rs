//! A provisioner's state file: a small JSON document kept in memory and rewritten after
//! every change, atomically (a temporary file written and synced, then renamed over the
//! old one), so a restarted daemon always reads either the old or the new state.
//!
//! Writing happens on a blocking thread, never on an async worker: a sync to disk can take
//! milliseconds, and a burst of runner starts would otherwise stall every listener's poll.
//! Changes that arrive while a write is under way are committed together by the next write
//! (group commit): [`update`](StateFile::update) returns once a write that includes its
//! change is on disk, so a burst of 16 starts costs a few writes, not 16. A change whose
//! loss in a crash is harmless is made with [`change`](StateFile::change) and written by a
//! later [`flush`](StateFile::flush) or update, off the caller's path.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use serde::Serialize;

use crate::error::ProvisionError;

/// The in-memory value and the generation of its latest change.
struct Current<T> {
    value: T,
    generation: u64,
}

/// A JSON state file owned by one provisioner instance.
pub(crate) struct StateFile<T> {
    backend: &'static str,
    path: PathBuf,
    current: Mutex<Current<T>>,
    /// The generation on disk; held while a write is under way.
    written: tokio::sync::Mutex<u64>,
}

impl<T: Serialize> StateFile<T> {
    /// A state file at `path` holding `value`, considered written as it is (it was just
    /// read from there, or there is nothing to write yet).
    pub(crate) fn new(backend: &'static str, path: PathBuf, value: T) -> StateFile<T> {
        StateFile {
            backend,
            path,
            current: Mutex::new(Current {
                value,
                generation: 0,
            }),
            written: tokio::sync::Mutex::new(0),
        }
    }

    fn current(&self) -> MutexGuard<'_, Current<T>> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the in-memory value.
    pub(crate) fn read<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        f(&self.current().value)
    }

    /// Replaces the in-memory value without writing it (it was just loaded from disk).
    pub(crate) fn replace(&self, value: T) {
        self.current().value = value;
    }

    /// Changes the value with `f` and returns once a write that includes the change is on
    /// disk.
    ///
    /// # Errors
    /// When the file cannot be written; the change stays in memory and the next successful
    /// write carries it.
    pub(crate) async fn update(&self, f: impl FnOnce(&mut T)) -> Result<(), ProvisionError> {
        self.change(f);
        self.flush().await
    }

    /// Changes the value with `f` in memory only: the next [`flush`](Self::flush) (or
    /// [`update`](Self::update)) writes it.
    pub(crate) fn change(&self, f: impl FnOnce(&mut T)) {
        let mut c = self.current();
        f(&mut c.value);
        c.generation += 1;
    }

    /// Returns once every change made before the call is on disk (at once when a write
    /// that started after the latest change already carried it).
    ///
    /// # Errors
    /// When the file cannot be written; the changes stay in memory and the next successful
    /// write carries them.
    pub(crate) async fn flush(&self) -> Result<(), ProvisionError> {
        let mine = self.current().generation;
        let mut written = self.written.lock().await;
        if *written >= mine {
            // A write that started after this change carried it.
            return Ok(());
        }
        let (bytes, generation) = {
            let c = self.current();
            let bytes = serde_json::to_vec_pretty(&c.value).map_err(|e| {
                ProvisionError::backend(self.backend, format!("encoding the state file: {e}"))
            })?;
            (bytes, c.generation)
        };
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || write_atomically(&path, &bytes))
            .await
            .map_err(|e| {
                ProvisionError::backend(self.backend, format!("writing the state file: {e}"))
            })?
            .map_err(|(what, path, e)| {
                ProvisionError::backend(self.backend, format!("{what} ({}): {e}", path.display()))
            })?;
        *written = generation;
        Ok(())
    }
}

/// Writes `bytes` to `path` through `path.tmp` (mode 0600), synced before the rename.
fn write_atomically(
    path: &Path,
    bytes: &[u8],
) -> Result<(), (&'static str, PathBuf, std::io::Error)> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let failed = |p: &Path| {
        let p = p.to_path_buf();
        move |e| ("writing the state file", p, e)
    };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(failed(&tmp))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(failed(&tmp))?;
    std::fs::rename(&tmp, path).map_err(failed(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    fn tempdir(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("scaleset-state-file-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        dir
    }

    fn on_disk(path: &Path) -> BTreeMap<String, u32> {
        serde_json::from_slice(&std::fs::read(path).expect("the state file exists"))
            .expect("the state file is JSON")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_change_of_a_concurrent_burst_is_on_disk_when_its_update_returns() {
        let dir = tempdir("burst");
        let path = dir.join("state.json");
        let file = Arc::new(StateFile::new("test", path.clone(), BTreeMap::new()));
        let tasks: Vec<_> = (0..64u32)
            .map(|i| {
                let (file, path) = (file.clone(), path.clone());
                tokio::spawn(async move {
                    file.update(|m| {
                        m.insert(format!("r{i}"), i);
                    })
                    .await
                    .expect("written");
                    // Whatever else was written since, this change is there.
                    assert_eq!(on_disk(&path).get(&format!("r{i}")), Some(&i));
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("the task ran");
        }
        assert_eq!(on_disk(&path).len(), 64);
        assert_eq!(file.read(BTreeMap::len), 64);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_change_reaches_the_disk_with_the_next_flush() {
        let dir = tempdir("change");
        let path = dir.join("state.json");
        let file = StateFile::new("test", path.clone(), BTreeMap::new());
        file.change(|m| {
            m.insert("a".to_string(), 1u32);
        });
        assert!(!path.exists(), "a change alone writes nothing");
        assert_eq!(file.read(BTreeMap::len), 1);
        file.flush().await.expect("written");
        assert_eq!(on_disk(&path).get("a"), Some(&1));
        file.change(|m| {
            m.remove("a");
        });
        file.update(|m| {
            m.insert("b".to_string(), 2u32);
        })
        .await
        .expect("written");
        assert_eq!(on_disk(&path), BTreeMap::from([("b".to_string(), 2)]));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_failed_write_is_an_error_naming_the_file_and_the_next_write_carries_the_change() {
        let dir = tempdir("fail");
        let path = dir.join("state.json");
        let file = StateFile::new("test", path.clone(), BTreeMap::new());
        // A directory in the file's place: the rename fails.
        std::fs::create_dir_all(path.join("x")).expect("blocker");
        let e = file
            .update(|m| {
                m.insert("a".to_string(), 1u32);
            })
            .await
            .expect_err("the rename fails");
        assert!(e.to_string().contains("state file"), "{e}");
        assert!(e.to_string().contains("state.json"), "{e}");
        std::fs::remove_dir_all(&path).expect("blocker removed");
        file.update(|m| {
            m.insert("b".to_string(), 2);
        })
        .await
        .expect("written");
        assert_eq!(on_disk(&path).len(), 2, "the failed change was carried");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
