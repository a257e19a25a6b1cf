//! One node per run dir and per data dir: an exclusive `flock` on
//! `<run-dir>/mkectl.lock` and on `<data-dir>/mkectl.lock`, taken before
//! anything is written, each holding the holder's pid so a refusal can name
//! it. A second mkectl pointed at a running node's data dir (with another
//! run dir and other ports) stops here instead of rewriting that node's
//! kubeconfigs and generated files.
//!
//! The locks die with the process, so a crash never leaves one held. The
//! data dir's lock file is removed when the lock is released (so a clean
//! stop leaves the data dir as it was, and a refused start leaves no data
//! dir behind); whoever locks it checks that the file it locked is still
//! the one at the path, so a file being removed is never locked twice.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::config::NodePaths;
use crate::fsutil;

/// Name of the lock file in the run dir and in the data dir.
pub const LOCK_FILE: &str = "mkectl.lock";
/// Attempts when the lock file is replaced under us (see the module docs).
const ATTEMPTS: usize = 5;
/// Bytes read from a lock file to learn the holder's pid.
const PID_BYTES: u64 = 32;

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot lock {path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{what} {dir} is in use by another mkectl ({holder}, lock {lock}): one node per {what}; stop it first, or give this one its own --{flag}"
    )]
    Held {
        what: &'static str,
        flag: &'static str,
        dir: PathBuf,
        lock: PathBuf,
        /// `pid N`, or why it is unknown.
        holder: String,
    },
}

/// Which directory a lock protects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Run,
    Data,
}

impl Kind {
    fn what(self) -> &'static str {
        match self {
            Kind::Run => "run dir",
            Kind::Data => "data dir",
        }
    }
    fn flag(self) -> &'static str {
        match self {
            Kind::Run => "run-dir",
            Kind::Data => "data-dir",
        }
    }
}

/// One held lock; released (and for the data dir, removed) on drop.
#[derive(Debug)]
pub struct DirLock {
    path: PathBuf,
    /// Dropped after the file is unlinked: nobody can lock a removed file.
    file: Option<Flock<File>>,
    remove_on_drop: bool,
    /// The directory, when this lock created it (removed again if empty).
    created_dir: Option<PathBuf>,
}

impl Drop for DirLock {
    fn drop(&mut self) {
        if self.remove_on_drop {
            let _ = std::fs::remove_file(&self.path);
        }
        self.file.take();
        if let Some(d) = &self.created_dir {
            // Only succeeds when nothing else was written there.
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// Both locks of a node, released together.
#[derive(Debug)]
pub struct NodeLock {
    _data: Option<DirLock>,
    _run: Option<DirLock>,
}

/// Locks the run dir (which must exist) and the data dir, created (0700)
/// when absent. For `mkectl controller` and `mkectl worker`.
pub fn lock_node(paths: &NodePaths) -> Result<NodeLock, LockError> {
    let run = lock_run_dir(&paths.run_dir)?;
    let data = lock_data_dir(&paths.data_dir, true)?;
    Ok(NodeLock {
        _data: data,
        _run: Some(run),
    })
}

/// Locks an existing run dir.
pub fn lock_run_dir(run_dir: &Path) -> Result<DirLock, LockError> {
    acquire(Kind::Run, run_dir, None)
}

/// Locks the data dir; `create` makes it when absent, else an absent data
/// dir is not locked (`None`: there is nothing in it to protect).
pub fn lock_data_dir(data_dir: &Path, create: bool) -> Result<Option<DirLock>, LockError> {
    let created = if data_dir.exists() {
        None
    } else if create {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(fsutil::PRIVATE_DIR_MODE)
            .create(data_dir)
            .map_err(|source| LockError::Io {
                path: data_dir.to_path_buf(),
                source,
            })?;
        Some(data_dir.to_path_buf())
    } else {
        return Ok(None);
    };
    let r = acquire(Kind::Data, data_dir, created.clone());
    if r.is_err() {
        if let Some(d) = &created {
            let _ = std::fs::remove_dir(d);
        }
    }
    r.map(Some)
}

/// Whether a lock file exists and some process holds it.
pub fn is_held(lock: &Path) -> bool {
    let Ok(file) = File::open(lock) else {
        return false;
    };
    match Flock::lock(file, FlockArg::LockSharedNonblock) {
        Ok(_unlocked_on_drop) => false,
        Err((_, e)) => e == nix::errno::Errno::EWOULDBLOCK,
    }
}

fn acquire(kind: Kind, dir: &Path, created_dir: Option<PathBuf>) -> Result<DirLock, LockError> {
    let path = dir.join(LOCK_FILE);
    let io = |source| LockError::Io {
        path: path.clone(),
        source,
    };
    for _ in 0..ATTEMPTS {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(fsutil::PRIVATE_FILE_MODE)
            .open(&path)
            .map_err(io)?;
        let mut locked = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                return Err(LockError::Held {
                    what: kind.what(),
                    flag: kind.flag(),
                    dir: dir.to_path_buf(),
                    lock: path.clone(),
                    holder: holder(&path),
                })
            }
            Err((_, e)) => return Err(io(std::io::Error::from(e))),
        };
        // A holder that was releasing may have unlinked the file we opened:
        // then it is not the lock any more; open the new one.
        let ours = locked.metadata().map_err(io)?;
        match std::fs::metadata(&path) {
            Ok(m) if m.dev() == ours.dev() && m.ino() == ours.ino() => {}
            _ => continue,
        }
        locked.set_len(0).map_err(io)?;
        locked
            .write_all(format!("{}\n", std::process::id()).as_bytes())
            .map_err(io)?;
        return Ok(DirLock {
            path,
            file: Some(locked),
            remove_on_drop: kind == Kind::Data,
            created_dir,
        });
    }
    Err(io(std::io::Error::other(
        "the lock file kept being replaced; try again",
    )))
}

/// `pid N` from a held lock file.
fn holder(lock: &Path) -> String {
    let mut text = String::new();
    let read = File::open(lock).and_then(|f| f.take(PID_BYTES).read_to_string(&mut text));
    match read.map(|_| text.trim().parse::<u32>()) {
        Ok(Ok(pid)) => format!("pid {pid}"),
        _ => "pid unknown: an older mkectl, or it is just starting".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let first = lock_data_dir(&data, true).unwrap().expect("created");
        let lock = data.join(LOCK_FILE);
        assert_eq!(
            std::fs::read_to_string(&lock).unwrap(),
            format!("{}\n", std::process::id())
        );
        assert!(is_held(&lock));
        // flock locks belong to the open file: a second open in this same
        // process conflicts like another process would.
        let e = lock_data_dir(&data, true).unwrap_err().to_string();
        assert!(
            e.contains(&format!("pid {}", std::process::id())) && e.contains("--data-dir"),
            "{e}"
        );
        drop(first);
        assert!(!lock.exists(), "lock file left behind");
        assert!(
            !data.exists(),
            "the data dir it created is removed when empty"
        );
        // Not created when told not to.
        assert!(lock_data_dir(&data, false).unwrap().is_none());
        assert!(!data.exists());
        // An existing data dir with content keeps it.
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("x"), "y").unwrap();
        drop(lock_data_dir(&data, false).unwrap());
        assert!(data.join("x").exists() && !lock.exists());
    }

    #[test]
    fn the_run_dir_lock_names_its_holder_and_stays() {
        let tmp = tempfile::tempdir().unwrap();
        let held = lock_run_dir(tmp.path()).unwrap();
        let e = lock_run_dir(tmp.path()).unwrap_err().to_string();
        assert!(
            e.contains("run dir") && e.contains("--run-dir") && e.contains("pid "),
            "{e}"
        );
        drop(held);
        assert!(tmp.path().join(LOCK_FILE).exists());
        assert!(!is_held(&tmp.path().join(LOCK_FILE)));
        drop(lock_run_dir(tmp.path()).unwrap());
    }
}
