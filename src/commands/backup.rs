//! `mkectl backup --save-path F`: a consistent etcd snapshot (through the
//! running etcd's maintenance API), the PKI and the config in one archive.
//! See `ops::backup` for the format.

use anyhow::Context;

use crate::cli::{BackupArgs, GlobalArgs};
use crate::config::NodePaths;
use crate::etcd::EtcdClientTls;
use crate::exit::UnavailableError;
use crate::ops::backup::{self, BackupError, BackupInput};
use crate::pki::PkiPaths;

pub async fn run(global: &GlobalArgs, args: &BackupArgs) -> anyhow::Result<()> {
    let cfg = super::shared::load_config(global.config.as_deref())?;
    let paths = NodePaths::new(&global.data_dir, &global.run_dir, global.bin_dir.as_deref());
    let pki = PkiPaths::new(&paths.pki_dir());
    if !pki.ca.cert.exists() {
        anyhow::bail!(
            "no cluster PKI at {} (run on a controller, as root, with its --data-dir)",
            pki.dir.display()
        );
    }
    let config = match global.config.as_deref() {
        None => None,
        // Standard input was consumed by the load: archive what it parsed.
        Some(p) if p == std::path::Path::new("-") => Some(cfg.to_yaml()?.into_bytes()),
        Some(p) => Some(std::fs::read(p).with_context(|| format!("reading {}", p.display()))?),
    };
    let dest = if args.save_path.is_dir() {
        let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
            .to_string()
            .replace(['-', ':'], "");
        args.save_path.join(format!("mkectl-backup-{stamp}.tar.gz"))
    } else {
        args.save_path.clone()
    };
    let input = BackupInput {
        config,
        cluster_name: cfg.metadata.name.clone(),
        etcd_endpoint: crate::etcd::local_url(cfg.spec.etcd.client_port),
        etcd_tls: EtcdClientTls::apiserver(&pki),
        pki_dir: pki.dir.clone(),
    };
    let summary = backup::create(&input, &dest).await.map_err(|e| match e {
        BackupError::Snapshot { .. } => UnavailableError(format!(
            "{e}; a backup needs the controller (and its etcd) running"
        ))
        .into(),
        other => anyhow::Error::from(other),
    })?;
    println!(
        "backup written to {} ({} bytes: etcd snapshot of {} bytes and {} files)",
        summary.path.display(),
        summary.archive_bytes,
        summary.snapshot_bytes,
        summary.files
    );
    Ok(())
}
