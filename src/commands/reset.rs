//! `mkectl reset`: takes this node out of its cluster and deletes its data.
//!
//! Refuses while mkectl still runs on the node (its run dir lock is held):
//! stop the service first. On a controller it first removes the node's etcd
//! member through another controller's join API (mTLS with the node's etcd
//! peer certificate); that controller refuses when the remaining members
//! would lose quorum. Without `--force`, any failure to remove the member,
//! or being the last controller (which destroys the cluster), stops the
//! reset before anything is deleted. Then the data dir and mkectl's files in
//! the run dir are removed. On a worker it just removes its data.

use std::path::Path;

use anyhow::Context;
use tracing::{info, warn};

use crate::cli::{GlobalArgs, ResetArgs};
use crate::config::NodePaths;
use crate::exit::UsageError;
use crate::join::client::JoinClient;
use crate::join::state::{self, WorkerPaths};
use crate::join::tls::{ClientIdentity, Trust};
use crate::join::wire::LeaveRequest;
use crate::join::{self, registry, ControllerJoinState, JoinError};
use crate::mounts;
use crate::nodelock;
use crate::pki::PkiPaths;
use crate::supervisor;

/// How long a member removal is retried while etcd answers "try again".
const LEAVE_RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NodeKind {
    Controller,
    Worker,
}

fn kind(paths: &NodePaths) -> Option<NodeKind> {
    let d = &paths.data_dir;
    if WorkerPaths::new(d).state.exists() {
        return Some(NodeKind::Worker);
    }
    let pki = PkiPaths::new(&paths.pki_dir());
    if pki.etcd_peer.cert.exists()
        || pki.ca.key.exists()
        || paths.etcd_dir().exists()
        || join::controller_state_file(d).exists()
    {
        return Some(NodeKind::Controller);
    }
    None
}

pub async fn run(global: &GlobalArgs, args: &ResetArgs) -> anyhow::Result<()> {
    let paths = NodePaths::new(&global.data_dir, &global.run_dir, global.bin_dir.as_deref());
    if paths.data_dir.parent().is_none() {
        return Err(UsageError(format!(
            "refusing to reset data dir {}",
            paths.data_dir.display()
        ))
        .into());
    }
    // A node running with this run dir, or with this data dir and another
    // run dir, is refused before anything is removed.
    let stop_first = |e: crate::nodelock::LockError| {
        anyhow::anyhow!(
            "{}; stop mkectl on this node first (e.g. `systemctl stop mkectl`), then reset",
            crate::telemetry::Chain(&e)
        )
    };
    let _run_lock = if paths.run_dir.exists() {
        Some(nodelock::lock_run_dir(&paths.run_dir).map_err(stop_first)?)
    } else {
        None
    };
    let _data_lock = nodelock::lock_data_dir(&paths.data_dir, false).map_err(stop_first)?;
    let kind = if paths.data_dir.exists() {
        match kind(&paths) {
            Some(k) => Some(k),
            None => {
                return Err(UsageError(format!(
                    "{} does not look like an mkectl data dir (no controller or worker state); not removing it",
                    paths.data_dir.display()
                ))
                .into())
            }
        }
    } else {
        None
    };
    stop_stale_children(&paths).await?;
    sweep_workloads(&paths).await;
    match kind {
        Some(NodeKind::Controller) => leave_etcd(&paths, args.force).await?,
        Some(NodeKind::Worker) => info!("resetting a worker"),
        None => info!(data_dir = %paths.data_dir.display(), "no data dir: nothing to remove there"),
    }
    if paths.data_dir.exists() {
        let own_mount = unmount_node_dirs(&paths)?;
        remove_data_dir(&paths.data_dir, own_mount)?;
    }
    clean_run_dir(&paths)?;
    Ok(())
}

/// Detaches every mount below the data and run dirs first: kubelet leaves
/// pod volumes mounted (secrets, hostPath subPaths, network storage) when
/// it stops, and deleting the data dir through them would delete what they
/// point at. Refuses to delete anything while a mount is left.
/// The data dir itself may be a mount of its own (a disk for /var/lib/mke):
/// that one stays; returns whether it is one.
fn unmount_node_dirs(paths: &NodePaths) -> anyhow::Result<bool> {
    let dirs = [paths.data_dir.as_path(), paths.run_dir.as_path()];
    for m in mounts::unmount_strictly_below(&dirs) {
        info!(mount = %m.display(), "unmounted");
    }
    let info = std::fs::read_to_string(mounts::MOUNTINFO)
        .with_context(|| format!("reading {} to check for mounts left", mounts::MOUNTINFO))?;
    let left = mounts::mounts_strictly_below(&info, &mounts::canonical_dirs(&dirs[..1]));
    if let Some(m) = left.first() {
        anyhow::bail!(
            "{} is still mounted below the data dir; unmount it, then reset again (nothing was removed)",
            m.display()
        );
    }
    Ok(mounts::is_mount_point(&info, &paths.data_dir))
}

/// Deletes the data dir; one that is a mount point of its own is emptied
/// and kept (the mount stays the operator's).
fn remove_data_dir(dir: &Path, own_mount: bool) -> anyhow::Result<()> {
    if !own_mount {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
        println!("removed {}", dir.display());
        return Ok(());
    }
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for e in entries {
        let e = e.with_context(|| format!("reading {}", dir.display()))?;
        let p = e.path();
        let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
        let r = if is_dir {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        r.with_context(|| format!("removing {}", p.display()))?;
    }
    println!("emptied {} (a mount point of its own, kept)", dir.display());
    Ok(())
}

/// Stops children a crashed mkectl may have left (by their pid files).
async fn stop_stale_children(paths: &NodePaths) -> anyhow::Result<()> {
    let run_dir = paths.run_dir.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let Ok(entries) = std::fs::read_dir(&run_dir) else {
            return Ok(());
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(component) = name.strip_suffix(".pid") {
                if let Some(pgid) = supervisor::cleanup_stale(&run_dir, component)? {
                    warn!(component, pgid, "stopped a leftover child");
                }
            }
        }
        Ok(())
    })
    .await
    .context("stale child cleanup task")?
}

/// Kills the containers a crashed mkectl left running: containerd's shims
/// run in sessions of their own, so neither mkectl's death nor the stale
/// child cleanup reaches them. Every shim serving *this* node's containerd
/// socket goes, with its containers; their mounts are then detached by
/// [`unmount_node_dirs`].
async fn sweep_workloads(paths: &NodePaths) {
    let socket = crate::fsutil::absolute(&paths.containerd_socket());
    let shims = crate::containerd::kill_shims(&socket).await;
    if !shims.is_empty() {
        warn!(
            shims = shims.len(),
            "killed leftover containerd shims and their containers"
        );
    }
}

/// Removes mkectl's files from the run dir (pid files, sockets, the lock,
/// containerd's volatile state), then the dir itself if nothing else is in
/// it.
fn clean_run_dir(paths: &NodePaths) -> anyhow::Result<()> {
    let run_dir = paths.run_dir.as_path();
    let Ok(entries) = std::fs::read_dir(run_dir) else {
        return Ok(());
    };
    let containerd = paths.containerd_run_dir();
    if containerd.exists() {
        // Already done with the data dir's mounts; again in case there was
        // no data dir.
        mounts::unmount_below(&[containerd.as_path()]);
        std::fs::remove_dir_all(&containerd)
            .with_context(|| format!("removing {}", containerd.display()))?;
    }
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".pid") || name.ends_with(".sock") || name == "mkectl.lock" {
            std::fs::remove_file(e.path())
                .with_context(|| format!("removing {}", e.path().display()))?;
        }
    }
    let _ = std::fs::remove_dir(run_dir);
    Ok(())
}

/// The node name of a controller: its join state, else its etcd peer
/// certificate's common name (what etcd named the member).
fn controller_name(paths: &NodePaths) -> anyhow::Result<String> {
    if let Some(st) =
        state::read::<ControllerJoinState>(&join::controller_state_file(&paths.data_dir))?
    {
        return Ok(st.node_name);
    }
    use x509_parser::prelude::{FromDer, X509Certificate};
    let pki = PkiPaths::new(&paths.pki_dir());
    let pem = crate::fsutil::read(&pki.etcd_peer.cert)?;
    let der = join::tls::certs_from_pem("etcd peer certificate", &pem)?;
    let (_, cert) = X509Certificate::from_der(&der[0])
        .map_err(|e| anyhow::anyhow!("{}: {e}", pki.etcd_peer.cert.display()))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .map(str::to_string);
    cn.ok_or_else(|| anyhow::anyhow!("{}: no common name", pki.etcd_peer.cert.display()))
}

/// Removes this controller's etcd member through another controller.
async fn leave_etcd(paths: &NodePaths, force: bool) -> anyhow::Result<()> {
    let name = match controller_name(paths) {
        Ok(n) => n,
        Err(e) if force => {
            warn!(error = %format!("{e:#}"), "cannot tell this controller's name; --force: removing the data without leaving etcd");
            return Ok(());
        }
        Err(e) => return Err(e.context("cannot tell which etcd member this controller is (use --force to remove the data anyway)")),
    };
    let cache = registry::read_cache(&join::controllers_cache_file(&paths.data_dir))?;
    let own_url = cache
        .iter()
        .find(|r| r.name == name)
        .map(|r| r.join_api.clone());
    let mut peers: Vec<String> = cache
        .iter()
        .filter(|r| r.name != name)
        .map(|r| r.join_api.clone())
        .collect();
    if let Some(st) =
        state::read::<ControllerJoinState>(&join::controller_state_file(&paths.data_dir))?
    {
        for e in st.join_endpoints {
            if Some(&e) != own_url.as_ref() && !peers.contains(&e) {
                peers.push(e);
            }
        }
    }
    if peers.is_empty() {
        if force {
            warn!(member = %name, "no other controller known: --force removes the data (and with it this cluster if it was the only controller)");
            return Ok(());
        }
        anyhow::bail!(
            "{name} is the only controller this node knows of: resetting it destroys the cluster and all its data; rerun with --force to do that"
        );
    }
    let pki = PkiPaths::new(&paths.pki_dir());
    let ca = crate::fsutil::read(&pki.ca.cert)?;
    let identity = ClientIdentity {
        cert: pki.etcd_peer.cert.clone(),
        key: pki.etcd_peer.key.clone(),
    };
    let client = JoinClient::new(peers.clone(), Trust::CaPem(ca), Some(&identity))?;
    let req = LeaveRequest {
        name: name.clone(),
        force,
    };
    // etcd may ask to retry (a member connected only seconds ago).
    let deadline = tokio::time::Instant::now() + LEAVE_RETRY_FOR;
    let outcome = loop {
        match client.leave(&req).await {
            Err(e) if e.status() == Some(503) && tokio::time::Instant::now() < deadline => {
                info!(error = %crate::telemetry::Chain(&e), "etcd busy; retrying the member removal");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            other => break other,
        }
    };
    match outcome {
        Ok((endpoint, resp)) if resp.removed => {
            println!(
                "removed etcd member {name} (via {endpoint}); {} voting members remain",
                resp.members
            );
            Ok(())
        }
        Ok((endpoint, resp)) => {
            println!(
                "etcd member {name} was already gone (checked via {endpoint}; {} voting members)",
                resp.members
            );
            Ok(())
        }
        Err(e) if force => {
            warn!(error = %crate::telemetry::Chain(&e), member = %name, "could not remove the etcd member; --force: removing the data anyway (remove the member from the cluster later)");
            Ok(())
        }
        Err(e @ JoinError::Refused { .. }) => Err(anyhow::Error::new(e)
            .context(format!("etcd member {name} not removed; nothing was deleted"))),
        Err(e) => Err(anyhow::Error::new(e).context(format!(
            "cannot remove etcd member {name} (tried {}); nothing was deleted; use --force to remove the data anyway",
            peers.join(", ")
        ))),
    }
}
