//! Pid files and the cleanup of children left behind by a crashed mkectl.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::spec::{marker_value, validate_name, MARKER_ENV};
use super::{proc, SupervisorError};
use crate::fsutil;

/// How long a leftover child gets between SIGTERM and SIGKILL during
/// [`cleanup_stale`]. Short: it belongs to a dead mkectl and only delays start.
pub const STALE_STOP_GRACE: Duration = Duration::from_secs(3);
/// After SIGKILL, how long to wait for leftovers to disappear.
const STALE_KILL_WAIT: Duration = Duration::from_secs(5);
const STALE_POLL: Duration = Duration::from_millis(10);

/// `<run_dir>/<name>.pid`.
pub fn pid_file_path(run_dir: &Path, name: &str) -> PathBuf {
    run_dir.join(format!("{name}.pid"))
}

/// Writes `pid` atomically (temp file + rename), mode 0600: only root (or
/// mkectl's own user) learns which processes to signal.
pub(crate) fn write(path: &Path, pid: i32) -> Result<(), SupervisorError> {
    fsutil::write_atomic(
        path,
        format!("{pid}\n").as_bytes(),
        fsutil::PRIVATE_FILE_MODE,
    )
    .map(|_| ())
    .map_err(|source| SupervisorError::PidFileWrite {
        path: path.to_path_buf(),
        source,
    })
}

/// Removes the pid file; a missing file is fine. Returns whether it existed.
pub(crate) fn remove(path: &Path) -> Result<bool, SupervisorError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(SupervisorError::PidFileRemove {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Stops what a previous, crashed mkectl left of component `name` in
/// `run_dir`, before a new instance is started. Blocking (it waits up to
/// [`STALE_STOP_GRACE`] plus a few seconds); call it from a blocking context.
///
/// Reads `<run_dir>/<name>.pid`. Without a pid file there is nothing to do.
/// The processes considered are the pid itself and the members of the
/// process group it led, and only those whose environment holds
/// [`MARKER_ENV`]`=<canonical run_dir>/<name>`: a pid reused by an unrelated
/// program, or a child of another mkectl instance, is never signalled. Those
/// get SIGTERM (to the group), [`STALE_STOP_GRACE`], then SIGKILL. This also
/// catches grandchildren whose parent was already killed by its death signal.
/// The pid file is removed in every case, and every step is logged.
///
/// Returns `Some(pid)` (the pid from the file, which is also the group id)
/// if leftover processes were stopped, `None` if there was no pid file or
/// nothing of ours was running (the stale file was just removed).
pub fn cleanup_stale(run_dir: &Path, name: &str) -> Result<Option<i32>, SupervisorError> {
    cleanup_stale_with_grace(run_dir, name, STALE_STOP_GRACE)
}

pub(crate) fn cleanup_stale_with_grace(
    run_dir: &Path,
    name: &str,
    grace: Duration,
) -> Result<Option<i32>, SupervisorError> {
    validate_name(name).map_err(|reason| SupervisorError::InvalidSpec {
        name: name.to_owned(),
        reason: reason.to_owned(),
    })?;
    let _span = tracing::info_span!("cleanup_stale", component = %name).entered();
    let path = pid_file_path(run_dir, name);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(SupervisorError::PidFileRead { path, source }),
    };
    let own = std::process::id() as i32;
    let pid = match text.trim().parse::<i32>() {
        Ok(pid) if pid > 1 && pid != own => pid,
        _ => {
            tracing::warn!(component = %name, path = %path.display(), "pid file holds no usable pid; removing it");
            remove(&path)?;
            return Ok(None);
        }
    };
    let canonical = fs::canonicalize(run_dir).map_err(|source| SupervisorError::ResolveRunDir {
        path: run_dir.to_path_buf(),
        source,
    })?;
    let marker = marker_value(&canonical, name);
    let scan_err = |source| SupervisorError::ScanProc {
        pgid: pid,
        path: path.clone(),
        source,
    };

    let found = ours(pid, &marker).map_err(scan_err)?;
    if found.is_empty() {
        if proc::is_alive(pid) {
            tracing::info!(
                component = %name, pid, path = %path.display(),
                "pid {pid} belongs to another process (no {MARKER_ENV} marker of this run dir); leaving it alone, removing the stale pid file"
            );
        } else {
            tracing::info!(component = %name, pid, path = %path.display(), "pid {pid} is gone; removing the stale pid file");
        }
        remove(&path)?;
        return Ok(None);
    }

    tracing::warn!(
        component = %name, pid, processes = found.count(),
        "stopping processes left over from a previous run: SIGTERM, grace {}",
        humantime::format_duration(grace)
    );
    let sig_err = |source| SupervisorError::Signal {
        pgid: pid,
        path: path.clone(),
        source,
    };
    found.signal(pid, Signal::SIGTERM).map_err(sig_err)?;
    let deadline = Instant::now() + grace;
    let mut left = wait_gone(pid, &marker, deadline).map_err(scan_err)?;
    if !left.is_empty() {
        tracing::warn!(component = %name, pid, processes = left.count(), "leftover processes outlived the grace period; sending SIGKILL");
        left.signal(pid, Signal::SIGKILL).map_err(sig_err)?;
        left = wait_gone(pid, &marker, Instant::now() + STALE_KILL_WAIT).map_err(scan_err)?;
        if !left.is_empty() {
            tracing::error!(component = %name, pid, processes = left.count(), "leftover processes survive SIGKILL (uninterruptible sleep?)");
        }
    }
    remove(&path)?;
    tracing::info!(component = %name, pid, "stopped leftover processes and removed the stale pid file");
    Ok(Some(pid))
}

/// Live processes carrying our marker: members of group `pgid`, and the
/// leader `pgid` itself even if it moved to another group.
#[derive(Debug, Default)]
struct Ours {
    in_group: Vec<i32>,
    leader_elsewhere: bool,
}

impl Ours {
    fn is_empty(&self) -> bool {
        self.in_group.is_empty() && !self.leader_elsewhere
    }

    fn count(&self) -> usize {
        self.in_group.len() + usize::from(self.leader_elsewhere)
    }

    /// While marked members are alive the group id cannot be reused, so
    /// `killpg` reaches only that group.
    fn signal(&self, pgid: i32, sig: Signal) -> nix::Result<()> {
        if !self.in_group.is_empty() {
            proc::signal_group(pgid, sig)?;
        }
        if self.leader_elsewhere {
            match nix::sys::signal::kill(Pid::from_raw(pgid), sig) {
                Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

fn ours(pgid: i32, marker: &OsStr) -> io::Result<Ours> {
    let in_group: Vec<i32> = proc::live_group_members(pgid)?
        .into_iter()
        .filter(|&p| proc::environ_has(p, MARKER_ENV, marker))
        .collect();
    let leader_elsewhere = !in_group.contains(&pgid)
        && proc::is_alive(pgid)
        && proc::environ_has(pgid, MARKER_ENV, marker);
    Ok(Ours {
        in_group,
        leader_elsewhere,
    })
}

fn wait_gone(pgid: i32, marker: &OsStr, deadline: Instant) -> io::Result<Ours> {
    loop {
        let left = ours(pgid, marker)?;
        if left.is_empty() || Instant::now() >= deadline {
            return Ok(left);
        }
        std::thread::sleep(STALE_POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_file_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = pid_file_path(dir.path(), "etcd");
        assert_eq!(p, dir.path().join("etcd.pid"));
        write(&p, 4242).unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "4242\n");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(remove(&p).unwrap());
        assert!(!remove(&p).unwrap());
    }

    #[test]
    fn garbage_and_missing_pid_files() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(cleanup_stale(dir.path(), "x").unwrap(), None);
        let p = pid_file_path(dir.path(), "x");
        for junk in ["", "abc", "-5", "1", "0"] {
            fs::write(&p, junk).unwrap();
            assert_eq!(cleanup_stale(dir.path(), "x").unwrap(), None, "{junk:?}");
            assert!(!p.exists());
        }
        fs::write(&p, format!("{}\n", std::process::id())).unwrap();
        assert_eq!(cleanup_stale(dir.path(), "x").unwrap(), None);
        assert!(!p.exists());
        assert!(cleanup_stale(dir.path(), "../x").is_err());
    }
}
