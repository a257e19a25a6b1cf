//! `mkectl restore ARCHIVE`: brings a controller's data dir back from a
//! backup: same CAs and keys (the cluster identity), same etcd data. The
//! data dir must be absent or empty (exit 64 otherwise); a damaged or
//! foreign archive fails (exit 1) before anything is written. Start the
//! controller afterwards with the same --node-name and config.

use anyhow::Context;

use crate::cli::{GlobalArgs, RestoreArgs};
use crate::components::binary;
use crate::config::{ClusterConfig, NodePaths};
use crate::exit::UsageError;
use crate::node::{hostname, url_for};
use crate::ops::backup::BackupError;
use crate::ops::restore;

pub fn run(global: &GlobalArgs, args: &RestoreArgs) -> anyhow::Result<()> {
    let paths = NodePaths::new(&global.data_dir, &global.run_dir, global.bin_dir.as_deref());
    let data_dir = &paths.data_dir;
    restore::check_target(data_dir).map_err(|e| match e {
        BackupError::DataDirNotEmpty { .. } => UsageError(e.to_string()).into(),
        other => anyhow::Error::from(other),
    })?;
    let staging = restore::staging_parent(data_dir);
    if !staging.is_dir() {
        anyhow::bail!(
            "the parent of the data directory, {}, does not exist",
            staging.display()
        );
    }
    let etcdctl = binary::find("etcdctl", &paths)?;
    let node_name = match &args.node_name {
        Some(n) => n.clone(),
        None => hostname()?,
    };
    let staged = restore::unpack(&args.archive, &staging)?;
    // The controller's config wins; else the one in the archive.
    let cfg = match (&global.config, &staged.config) {
        (Some(p), _) => super::shared::load_config(Some(p))?,
        (None, Some(text)) => {
            super::shared::config_from_yaml(text, "<backup>/config/cluster.yaml")?
        }
        (None, None) => ClusterConfig::default(),
    };
    let node = cfg.node_address(&crate::config::display_name(global.config.as_deref()))?;
    let peer_url = url_for(cfg.etcd_peer_address(node), cfg.spec.etcd.peer_port);
    staged
        .restore_etcd(&etcdctl, &node_name, &peer_url)
        .context("rebuilding etcd's data from the snapshot")?;
    let manifest = staged.manifest.clone();
    let restored_config = staged.install(data_dir)?;
    println!(
        "restored cluster {:?} (CA {}) from the backup of {} into {}",
        manifest.cluster_name,
        manifest.cluster_ca_sha256,
        manifest.created_at,
        data_dir.display()
    );
    if let Some(p) = restored_config {
        println!("the backup's ClusterConfig is at {}", p.display());
    }
    println!("start the controller with --node-name {node_name}");
    Ok(())
}
