//! The run both roles share once their components are planned: lock the
//! node, stop children a crashed mkectl left, install the signal handler,
//! serve the ops endpoints, start every component, and on the first signal
//! drain them in reverse order within [`SHUTDOWN_DEADLINE`].

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::NodeError;
use crate::components::Manager;
use crate::config::NodePaths;
use crate::{fsutil, ops, supervisor};

/// Upper bound for stopping every component on shutdown: covers the
/// apiserver's drain (`kube_apiserver` stop grace, 70 s by default) plus etcd.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(120);

/// One mkectl per run dir and per data dir (`nodelock`): a second one would
/// fight over children and pid files, or rewrite a running node's files.
/// Taken before anything is written; the run dir is created if absent. The
/// locks die with the process, so a crash never leaves them held.
pub fn lock(paths: &NodePaths) -> Result<crate::nodelock::NodeLock, NodeError> {
    fsutil::ensure_dir(&paths.run_dir, fsutil::PRIVATE_DIR_MODE)?;
    Ok(crate::nodelock::lock_node(paths)?)
}

/// Stops children a crashed mkectl may have left for these components
/// (PDEATHSIG covers a child, not always its group); found by their marker.
async fn stop_stale_children(paths: &NodePaths, manager: &Manager) -> Result<(), NodeError> {
    let run_dir = paths.run_dir.clone();
    let names = manager.names();
    tokio::task::spawn_blocking(move || -> Result<(), NodeError> {
        for name in names {
            if let Some(pgid) = supervisor::cleanup_stale(&run_dir, name)? {
                warn!(
                    component = name,
                    pgid, "stopped a stale child left by an earlier mkectl"
                );
            }
        }
        Ok(())
    })
    .await
    .map_err(|source| NodeError::Task {
        what: "stale child cleanup",
        source,
    })?
}

/// What [`run`] needs besides the planned components.
pub struct Run {
    /// `controller`, `controller+worker` or `worker`: names the node in logs
    /// and on the status page.
    pub role: &'static str,
    pub paths: NodePaths,
    pub ops: ops::OpsSettings,
    /// Cancelled by the first SIGTERM/SIGINT; also ends the tasks the plan
    /// spawned (controller list refresh, ...).
    pub cancel: CancellationToken,
    pub started: Instant,
}

/// Runs initialised components until the first signal, then drains them.
/// `on_ready` runs once every component is ready.
pub async fn run(
    mut manager: Manager,
    r: Run,
    on_ready: impl FnOnce(&Manager),
) -> Result<(), NodeError> {
    stop_stale_children(&r.paths, &manager).await?;
    spawn_signal_handler(r.cancel.clone())?;
    let _ops = ops::start(r.ops, manager.handle(), &r.cancel).await?;
    let cancel = &r.cancel;
    if let Err(e) = manager.start_all(cancel).await {
        if cancel.is_cancelled() {
            info!("start interrupted by a signal");
            return Ok(());
        }
        return Err(e.into());
    }
    info!(
        components = ?manager.names(),
        elapsed_ms = r.started.elapsed().as_millis() as u64,
        "{} ready", r.role
    );
    on_ready(&manager);
    cancel.cancelled().await;
    info!("shutting down");
    manager.stop_all(SHUTDOWN_DEADLINE).await;
    info!("{} stopped", r.role);
    Ok(())
}

/// First SIGTERM/SIGINT cancels `cancel` (graceful drain); a second one exits
/// at once (children die with us through PDEATHSIG).
fn spawn_signal_handler(cancel: CancellationToken) -> Result<(), NodeError> {
    use tokio::signal::unix::{signal, SignalKind};
    let install = |kind, name| {
        signal(kind).map_err(|source| NodeError::Signal {
            signal: name,
            source,
        })
    };
    let mut term = install(SignalKind::terminate(), "SIGTERM")?;
    let mut int = install(SignalKind::interrupt(), "SIGINT")?;
    tokio::spawn(async move {
        let mut seen = 0u32;
        loop {
            let which = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            seen += 1;
            if seen == 1 {
                info!(
                    signal = which,
                    "received signal, stopping components (again to force)"
                );
                cancel.cancel();
            } else {
                warn!(signal = which, "second signal: forcing exit");
                std::process::exit(i32::from(crate::exit::FAILURE));
            }
        }
    });
    Ok(())
}
