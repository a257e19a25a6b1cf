//! Child-process supervision for the components mkectl runs as separate
//! programs (etcd, kube-apiserver, containerd, kubelet, ...).
//!
//! [`start`] spawns a child described by a [`ChildSpec`] and returns a
//! [`Supervised`] handle; a background task then keeps the child running until
//! [`Supervised::stop`] is called (or the handle is dropped).
//!
//! # Guarantees
//!
//! * **Own process group.** Every child is the leader of a new process group
//!   (`setpgid(0, 0)`), and every signal mkectl sends goes to the whole group,
//!   so helpers a component forks die with it.
//! * **No child outlives mkectl.** Each child sets `PR_SET_PDEATHSIG(SIGKILL)`
//!   before `exec`, then checks that its parent did not already die between
//!   `fork` and `prctl` (a race the kernel does not cover). The death signal
//!   fires when the *thread* that forked the child exits, so all children are
//!   forked by one dedicated spawner thread that lives as long as the process
//!   (see `spawner.rs`), never by a tokio worker or `spawn_blocking` thread.
//!   The death signal is not inherited across `fork`, so a grandchild of a
//!   crashed mkectl can survive it; [`cleanup_stale`] finds such leftovers
//!   through the pid file and the marker variable and stops them.
//! * **Pid file + marker.** After each spawn `<run_dir>/<name>.pid` is written
//!   atomically; it is removed whenever that instance is gone. The child's
//!   environment carries [`MARKER_ENV`]`=<canonical run_dir>/<name>`, so
//!   [`cleanup_stale`] only ever kills a process that this run dir and
//!   component name started: several mkectl instances on one machine, and pids
//!   reused by unrelated programs, are never touched.
//! * **Logs.** stdout and stderr are re-logged line by line as `tracing`
//!   events (target `mkectl::child`) with fields `component` and
//!   `stream = "stdout" | "stderr"`; lines are decoded as lossy UTF-8 and cut
//!   at [`MAX_LINE_BYTES`] (marked `truncated = true`), so memory per stream
//!   is bounded whatever the child writes.
//! * **Restart with backoff.** An exited child is restarted after the delay of
//!   [`BackoffPolicy::delay`]: immediately after the first crash that follows
//!   a stable run, then `initial`, doubling up to `max` while it keeps failing
//!   quickly; a run of at least `stable_after` resets the sequence. Every exit
//!   is logged as "exited with code N" or "killed by signal SIGx". A crashed
//!   instance's remaining process-group members are SIGKILLed before the
//!   restart, so nothing of the old instance holds ports or files.
//! * **Stop.** SIGTERM to the group, wait up to `stop_grace` for the group to
//!   empty, then SIGKILL whatever is left (logged), wait until the group is
//!   gone, remove the pid file. Idempotent, callable in any state, never
//!   restarts afterwards.
//!
//! # Exit detection and reaping
//!
//! Children are spawned with `std::process::Command` on the spawner thread
//! (`tokio::process` would need a runtime context on that thread and reaps
//! from its own SIGCHLD driver). Right after the fork a `pidfd` is opened for
//! the child and registered with tokio's reactor: it becomes readable when the
//! child exits, *without* reaping it. The supervisor therefore keeps the dead
//! leader as a zombie while it signals the leftover group members: the pid,
//! and so the process-group id, cannot be reused by an unrelated process
//! until the zombie is reaped, which makes `killpg` race-free. Only then is the
//! child reaped with `waitpid`. Kernels without `pidfd_open` (before 5.3) fall
//! back to one short-lived thread per instance blocked in
//! `waitid(WEXITED | WNOWAIT)`, which has the same don't-reap semantics.
//!
//! # Environment
//!
//! Children do not inherit mkectl's whole environment. They get only
//! [`INHERITED_ENV`] (PATH, HOME, locale, time zone, temp dir and the proxy
//! variables operators set for components) plus [`ChildSpec::env`] plus the
//! marker. Notably `NOTIFY_SOCKET`, `LISTEN_FDS` and anything else systemd or
//! a shell put into mkectl's environment does not leak into components.

mod backoff;
mod instance;
mod logs;
mod pidfile;
mod proc;
mod spawner;
mod spec;
mod status;
mod task;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;

pub use backoff::{
    BackoffPolicy, DEFAULT_BACKOFF_FACTOR, DEFAULT_BACKOFF_INITIAL, DEFAULT_BACKOFF_MAX,
    DEFAULT_BACKOFF_STABLE_AFTER,
};
pub use logs::{CHILD_LOG_TARGET, MAX_LINE_BYTES};
pub use pidfile::{cleanup_stale, pid_file_path, STALE_STOP_GRACE};
pub use spec::{ChildSpec, DEFAULT_STOP_GRACE, INHERITED_ENV, MARKER_ENV};
pub use status::{signal_name, ChildState, ChildStatus, ExitInfo};

use crate::fsutil::FsError;

/// Errors of the supervisor. Each names the program, pid file or run
/// directory it is about.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("invalid child spec for component {name:?}: {reason}")]
    InvalidSpec { name: String, reason: String },
    #[error("cannot prepare run directory {path}")]
    RunDir { path: PathBuf, source: FsError },
    #[error("cannot resolve run directory {path}")]
    ResolveRunDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot spawn {program}")]
    Spawn {
        program: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot watch {program} (pid {pid}) for exit")]
    Watch {
        program: PathBuf,
        pid: i32,
        source: std::io::Error,
    },
    #[error("cannot write pid file {path}")]
    PidFileWrite { path: PathBuf, source: FsError },
    #[error("cannot read pid file {path}")]
    PidFileRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot remove pid file {path}")]
    PidFileRemove {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot signal process group {pgid} (from pid file {path})")]
    Signal {
        pgid: i32,
        path: PathBuf,
        source: nix::errno::Errno,
    },
    #[error("cannot scan /proc for process group {pgid} (from pid file {path})")]
    ScanProc {
        pgid: i32,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Spawns the child described by `spec` and supervises it in a background
/// task on the current tokio runtime.
///
/// The first spawn happens before this returns: a failure to start the
/// program at all (missing binary, no execute permission, bad `cwd`, ...) is
/// returned as [`SupervisorError::Spawn`] and nothing is retried. Once this
/// returns `Ok`, the child is running, its pid file is written and later exits
/// are handled by restarting with backoff.
///
/// The run directory is created (0700) if it does not exist; an existing one
/// is left as it is. Call [`cleanup_stale`] first so a child left over by a
/// crashed mkectl is stopped before a new one is started.
///
/// Dropping the returned handle stops the child in the background (same
/// SIGTERM/grace/SIGKILL sequence as [`Supervised::stop`]).
pub async fn start(spec: ChildSpec) -> Result<Supervised, SupervisorError> {
    spec.validate()?;
    let span = tracing::info_span!("supervisor", component = %spec.name);
    let name = spec.name.clone();
    let stop_grace = spec.stop_grace;
    let backoff = spec.backoff;
    let launcher = instance::OsLauncher::new(spec)?;
    let first = task::Launcher::launch(&launcher)
        .instrument(span.clone())
        .await?;
    let pid = task::Instance::pid(&first);
    span.in_scope(|| {
        tracing::info!(component = %name, pid, program = %launcher.program().display(), "started");
    });
    let initial = ChildStatus {
        state: ChildState::Running,
        pid: Some(pid),
        restarts: 0,
        last_exit: None,
        started_at: Some(SystemTime::now()),
        restart_delay: std::time::Duration::ZERO,
        last_error: None,
    };
    let (status_tx, status_rx) = watch::channel(initial);
    let (req_tx, req_rx) = mpsc::channel(REQUEST_QUEUE);
    let cfg = task::LoopConfig {
        name: name.clone(),
        stop_grace,
        backoff,
    };
    tokio::spawn(
        task::supervise(cfg, launcher, first, Instant::now(), status_tx, req_rx).instrument(span),
    );
    Ok(Supervised {
        name: Arc::from(name),
        requests: req_tx,
        status: status_rx,
    })
}

/// Pending stop/restart requests per child; senders wait when it is full.
const REQUEST_QUEUE: usize = 8;

/// Handle to a supervised child. Not `Clone`: wrap it in an `Arc` to share.
/// Dropping it stops the child in the background.
#[derive(Debug)]
pub struct Supervised {
    name: Arc<str>,
    requests: mpsc::Sender<task::Request>,
    status: watch::Receiver<ChildStatus>,
}

impl Supervised {
    /// The component name from the spec.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A snapshot of the current status.
    pub fn status(&self) -> ChildStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every status change (latest value wins, as with
    /// any `watch` channel). After the supervisor finished (stopped), the last
    /// value stays readable and `changed()` returns an error.
    pub fn subscribe(&self) -> watch::Receiver<ChildStatus> {
        self.status.clone()
    }

    /// Stops the child: SIGTERM to its process group, wait up to
    /// `stop_grace`, then SIGKILL the group; waits until the group is gone and
    /// removes the pid file. Works in every state (running, in backoff,
    /// already stopped); returns once the child is stopped. The child is never
    /// restarted afterwards.
    pub async fn stop(&self) {
        let (tx, rx) = oneshot::channel();
        if self.requests.send(task::Request::Stop(tx)).await.is_err() {
            return; // supervisor already finished: stopped
        }
        // An error means the supervisor finished while our request was queued,
        // which only happens after a stop completed.
        let _ = rx.await;
    }

    /// Replaces the running instance with a fresh one: the current instance is
    /// stopped exactly like [`Supervised::stop`] does (SIGTERM, grace, SIGKILL),
    /// then a new one is spawned right away and `restarts` grows by one. The
    /// backoff sequence is reset, since this is not a crash. During backoff it
    /// starts the child immediately. After `stop` it does nothing. Returns once
    /// the new instance was spawned (or its spawn failed and backoff began).
    pub async fn restart(&self) {
        let (tx, rx) = oneshot::channel();
        if self
            .requests
            .send(task::Request::Restart(tx))
            .await
            .is_err()
        {
            tracing::debug!(component = %self.name, "restart ignored: already stopped");
            return;
        }
        let _ = rx.await;
    }
}
