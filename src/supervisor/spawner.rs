//! The one thread that forks every child.
//!
//! `PR_SET_PDEATHSIG` is tied to the *thread* that forked the child: when that
//! thread exits, the child gets the signal even though mkectl still runs.
//! Tokio's `spawn_blocking` threads retire after being idle and worker threads
//! are not ours to keep, so all spawns are sent over a channel to a single
//! named std thread that is started on first use and never returns (its
//! receiver loop only ends if every sender is gone, and the sender lives in a
//! `static`). Only the fork/exec happens here; waiting and reaping are done by
//! the async supervisor (see `instance.rs`), which is fine because the death
//! signal does not depend on which thread reaps.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::{mpsc, OnceLock};

use tokio::sync::oneshot;

use super::proc;

/// A freshly spawned child and, when the kernel supports it, a pidfd for it.
#[derive(Debug)]
pub(crate) struct Spawned {
    pub child: Child,
    /// `Err` carries the reason a pidfd could not be opened (old kernel).
    pub pidfd: io::Result<OwnedFd>,
}

struct Job {
    cmd: Command,
    reply: oneshot::Sender<io::Result<Spawned>>,
}

/// The spawner thread's channel, or why the thread could not start. Kept as
/// text: the `io::Error` is not `Clone` and every later call reports it again.
static SPAWNER: OnceLock<Result<mpsc::Sender<Job>, String>> = OnceLock::new();

fn spawner() -> io::Result<&'static mpsc::Sender<Job>> {
    let slot = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("mkectl-spawner".to_owned())
            .spawn(move || serve(rx))
            .map(|_| tx)
            .map_err(|e| format!("cannot start the spawner thread: {e}"))
    });
    slot.as_ref().map_err(|msg| io::Error::other(msg.clone()))
}

fn serve(rx: mpsc::Receiver<Job>) {
    while let Ok(job) = rx.recv() {
        let result = spawn_here(job.cmd);
        if let Err(Ok(mut orphan)) = job.reply.send(result) {
            // The requester went away (its future was dropped): do not leave
            // an unsupervised child behind.
            let _ = proc::signal_group(orphan.child.id() as i32, nix::sys::signal::Signal::SIGKILL);
            let _ = orphan.child.wait();
        }
    }
}

fn spawn_here(mut cmd: Command) -> io::Result<Spawned> {
    let child = cmd.spawn()?;
    let pidfd = proc::pidfd_open(child.id() as i32);
    Ok(Spawned { child, pidfd })
}

/// Spawns `cmd` on the spawner thread as the leader of a new process group,
/// with `PR_SET_PDEATHSIG(SIGKILL)` armed.
pub(crate) async fn spawn(mut cmd: Command) -> io::Result<Spawned> {
    // The pid the child must see as its parent; if it sees another, mkectl
    // died between fork and prctl and the death signal will never come.
    let parent = std::process::id() as libc::pid_t;
    cmd.process_group(0);
    // SAFETY: the closure runs between fork and exec and only calls the
    // async-signal-safe prctl/getppid and builds an io::Error from a raw
    // errno (no allocation).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    let (reply, rx) = oneshot::channel();
    spawner()?
        .send(Job { cmd, reply })
        .map_err(|_| io::Error::other("the spawner thread is gone"))?;
    rx.await
        .map_err(|_| io::Error::other("the spawner thread dropped the request"))?
}
