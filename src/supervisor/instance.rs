//! Real processes behind the supervision loop's `Launcher`/`Instance` seam.

use std::ffi::OsString;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::watch;

use super::spec::{marker_value, ChildSpec};
use super::status::ExitInfo;
use super::task::{Instance, Launcher};
use super::{logs, pidfile, proc, spawner, SupervisorError};
use crate::fsutil;

/// Poll interval of the last-resort exit detection (no pidfd, no thread).
const EXIT_POLL: Duration = Duration::from_millis(10);

/// Spawns instances of one [`ChildSpec`].
#[derive(Debug)]
pub(crate) struct OsLauncher {
    spec: ChildSpec,
    name: Arc<str>,
    marker: OsString,
    pid_file: PathBuf,
}

impl OsLauncher {
    /// Prepares the run directory and the marker. The marker uses the
    /// canonical run dir so two spellings of one directory agree.
    pub(crate) fn new(spec: ChildSpec) -> Result<Self, SupervisorError> {
        if let Some(cwd) = &spec.cwd {
            // Otherwise exec's ENOENT would be reported against the program.
            if !cwd.is_dir() {
                return Err(SupervisorError::InvalidSpec {
                    name: spec.name.clone(),
                    reason: format!("cwd {} is not a directory", cwd.display()),
                });
            }
        }
        if !spec.run_dir.is_dir() {
            fsutil::ensure_dir(&spec.run_dir, fsutil::PRIVATE_DIR_MODE).map_err(|source| {
                SupervisorError::RunDir {
                    path: spec.run_dir.clone(),
                    source,
                }
            })?;
        }
        let canonical = std::fs::canonicalize(&spec.run_dir).map_err(|source| {
            SupervisorError::ResolveRunDir {
                path: spec.run_dir.clone(),
                source,
            }
        })?;
        Ok(Self {
            marker: marker_value(&canonical, &spec.name),
            pid_file: pidfile::pid_file_path(&spec.run_dir, &spec.name),
            name: Arc::from(spec.name.as_str()),
            spec,
        })
    }

    pub(crate) fn program(&self) -> &Path {
        &self.spec.program
    }
}

impl Launcher for OsLauncher {
    type Instance = OsInstance;

    async fn launch(&self) -> Result<OsInstance, SupervisorError> {
        let cmd = self.spec.command(&self.marker);
        let spawned = spawner::spawn(cmd)
            .await
            .map_err(|source| SupervisorError::Spawn {
                program: self.spec.program.clone(),
                source,
            })?;
        let mut child = spawned.child;
        let pid = child.id() as i32;
        if let Some(out) = child.stdout.take() {
            logs::spawn_forwarder(OwnedFd::from(out), self.name.clone(), "stdout");
        }
        if let Some(err) = child.stderr.take() {
            logs::spawn_forwarder(OwnedFd::from(err), self.name.clone(), "stderr");
        }
        let exit = ExitWatch::new(pid, spawned.pidfd, &self.name);
        let inst = OsInstance {
            child: Some(child),
            pid,
            exit,
        };
        // On error `inst` is dropped here, which kills and reaps the child:
        // an instance without a pid file could not be found after a crash.
        pidfile::write(&self.pid_file, pid)?;
        Ok(inst)
    }

    fn forget(&self) {
        if let Err(e) = pidfile::remove(&self.pid_file) {
            tracing::warn!(component = %self.name, error = %crate::telemetry::Chain(&e), "cannot remove pid file");
        }
    }
}

/// How exit is noticed without reaping (see the module docs of
/// `supervisor`).
enum ExitWatch {
    /// pidfd registered with the reactor: readable once the child exited.
    Pidfd(AsyncFd<OwnedFd>),
    /// Old kernel: a thread blocked in `waitid(WNOWAIT)` flips the flag.
    Thread(watch::Receiver<bool>),
    /// Neither worked: poll `waitid(WNOHANG | WNOWAIT)`.
    Poll,
}

impl ExitWatch {
    fn new(pid: i32, pidfd: io::Result<OwnedFd>, name: &str) -> Self {
        let registered = pidfd.and_then(|fd| {
            // SAFETY: the OwnedFd is moved into the AsyncFd, which owns it
            // until dropped, so the fd stays open and unchanged meanwhile.
            unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
                .map_err(|e| e.into_parts().1)
        });
        let pidfd_err = match registered {
            Ok(fd) => return ExitWatch::Pidfd(fd),
            Err(e) => e,
        };
        tracing::debug!(component = %name, pid, error = %pidfd_err, "no pidfd; watching exit with a thread");
        let (tx, rx) = watch::channel(false);
        let spawned = std::thread::Builder::new()
            .name(format!("mkectl-wait-{pid}"))
            .spawn(move || {
                // On error (ECHILD: reaped elsewhere) report "exited" too,
                // the reap then records an unknown status.
                let _ = proc::wait_exited_no_reap(pid);
                let _ = tx.send(true);
            });
        match spawned {
            Ok(_) => ExitWatch::Thread(rx),
            Err(e) => {
                tracing::warn!(component = %name, pid, error = %crate::telemetry::Chain(&e), "cannot start exit watcher thread; polling");
                ExitWatch::Poll
            }
        }
    }
}

/// One running child process, leader of its own process group.
pub(crate) struct OsInstance {
    /// `None` once reaped.
    child: Option<Child>,
    pid: i32,
    exit: ExitWatch,
}

impl Instance for OsInstance {
    fn pid(&self) -> i32 {
        self.pid
    }

    async fn exited(&mut self) {
        if let ExitWatch::Pidfd(fd) = &self.exit {
            // The readiness is never cleared, so repeated calls return at once.
            match fd.readable().await {
                Ok(_guard) => return,
                Err(e) => {
                    tracing::warn!(pid = self.pid, error = %crate::telemetry::Chain(&e), "pidfd watch failed; polling");
                    self.exit = ExitWatch::Poll;
                }
            }
        }
        match &mut self.exit {
            ExitWatch::Pidfd(_) => {}
            ExitWatch::Thread(rx) => {
                // Err: the thread is gone, which it only is after sending.
                let _ = rx.wait_for(|exited| *exited).await;
            }
            ExitWatch::Poll => loop {
                match proc::has_exited_no_reap(self.pid) {
                    Ok(false) => tokio::time::sleep(EXIT_POLL).await,
                    Ok(true) | Err(_) => return,
                }
            },
        }
    }

    fn signal_group(&self, sig: Signal) {
        if let Err(e) = proc::signal_group(self.pid, sig) {
            tracing::error!(pid = self.pid, signal = sig.as_str(), error = %crate::telemetry::Chain(&e), "cannot signal process group");
        }
    }

    fn has_remnants(&self) -> bool {
        match proc::live_group_members(self.pid) {
            Ok(members) => members.iter().any(|&p| p != self.pid),
            Err(e) => {
                tracing::warn!(pid = self.pid, error = %crate::telemetry::Chain(&e), "cannot scan /proc for the process group");
                false
            }
        }
    }

    fn reap(mut self) -> ExitInfo {
        let Some(mut child) = self.child.take() else {
            return ExitInfo::UNKNOWN;
        };
        match child.wait() {
            Ok(status) => ExitInfo::from_status(status),
            Err(e) => {
                tracing::warn!(pid = self.pid, error = %crate::telemetry::Chain(&e), "cannot collect exit status");
                ExitInfo::UNKNOWN
            }
        }
    }
}

impl Drop for OsInstance {
    /// An instance dropped without being reaped (its supervisor task was
    /// cancelled, e.g. by runtime shutdown, or setup failed) must not keep
    /// running unsupervised: kill the group, reap off-thread.
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = proc::signal_group(self.pid, Signal::SIGKILL);
        let reaper = std::thread::Builder::new()
            .name(format!("mkectl-reap-{}", self.pid))
            .spawn(move || {
                let _ = child.wait();
            });
        if let Err(e) = reaper {
            tracing::warn!(pid = self.pid, error = %crate::telemetry::Chain(&e), "cannot start reaper thread; zombie stays until exit");
        }
    }
}

#[cfg(test)]
mod tests {
    //! The fallbacks for kernels without pidfds, forced on purpose.

    use super::*;
    use std::process::{Command, Stdio};

    async fn spawn_true() -> Child {
        let mut cmd = Command::new("true");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        spawner::spawn(cmd).await.unwrap().child
    }

    async fn exits_with_code_zero(inst: &mut OsInstance) {
        tokio::time::timeout(Duration::from_secs(20), inst.exited())
            .await
            .expect("exit noticed");
        // Repeatable, and the child is still unreaped (a zombie) here.
        inst.exited().await;
        assert!(proc::has_exited_no_reap(inst.pid).unwrap());
    }

    #[tokio::test]
    async fn thread_fallback_notices_exit_without_reaping() {
        let child = spawn_true().await;
        let pid = child.id() as i32;
        let exit = ExitWatch::new(pid, Err(io::Error::from_raw_os_error(libc::ENOSYS)), "t");
        assert!(matches!(exit, ExitWatch::Thread(_)));
        let mut inst = OsInstance {
            child: Some(child),
            pid,
            exit,
        };
        exits_with_code_zero(&mut inst).await;
        assert_eq!(inst.reap().code, Some(0));
    }

    #[tokio::test]
    async fn poll_fallback_notices_exit_without_reaping() {
        let child = spawn_true().await;
        let pid = child.id() as i32;
        let mut inst = OsInstance {
            child: Some(child),
            pid,
            exit: ExitWatch::Poll,
        };
        exits_with_code_zero(&mut inst).await;
        assert_eq!(inst.reap().code, Some(0));
    }

    #[tokio::test]
    async fn dropping_an_unreaped_instance_kills_it() {
        let mut cmd = Command::new("sleep");
        cmd.arg("1000").stdin(Stdio::null());
        let spawned = spawner::spawn(cmd).await.unwrap();
        let pid = spawned.child.id() as i32;
        let inst = OsInstance {
            child: Some(spawned.child),
            pid,
            exit: ExitWatch::new(pid, spawned.pidfd, "t"),
        };
        assert!(proc::is_alive(pid));
        drop(inst);
        let start = std::time::Instant::now();
        while proc::stat(pid).is_some() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "not killed and reaped"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
