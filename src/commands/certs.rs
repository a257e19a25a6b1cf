//! `mkectl certs check-expiration`: every certificate under the data dir with
//! its expiry, soonest first. `mkectl certs renew`: reissue leaves now,
//! through the running node (which restarts their users) or, when none runs,
//! on disk only.

use std::time::SystemTime;

use anyhow::Context;

use crate::cli::{CertsCommand, GlobalArgs, OutputFormat};
use crate::config::NodePaths;
use crate::exit::UsageError;
use crate::ops::client::{self, ClientError};
use crate::ops::rotation;
use crate::ops::server::RenewRequest;
use crate::pki;

pub fn run(global: &GlobalArgs, cmd: &CertsCommand) -> anyhow::Result<()> {
    match cmd {
        CertsCommand::CheckExpiration { output } => check_expiration(global, *output),
        CertsCommand::Renew {
            names,
            all,
            node_name,
        } => renew(global, names, *all, node_name.as_deref()),
    }
}

fn check_expiration(global: &GlobalArgs, output: OutputFormat) -> anyhow::Result<()> {
    let paths = NodePaths::new(&global.data_dir, &global.run_dir, global.bin_dir.as_deref());
    let dir = paths.pki_dir();
    let mut certs = pki::list_certificates(&dir)
        .with_context(|| format!("reading certificates under {}", dir.display()))?;
    if certs.is_empty() {
        anyhow::bail!(
            "no certificates under {}; run `mkectl controller --init-only` first",
            dir.display()
        );
    }
    certs.sort_by_key(|c| c.not_after);
    let now = SystemTime::now();
    let residual = |t: SystemTime| -> i64 {
        match t.duration_since(now) {
            Ok(d) => d.as_secs() as i64,
            Err(e) => -(e.duration().as_secs() as i64),
        }
    };
    match output {
        OutputFormat::Json | OutputFormat::Yaml => {
            let rows: Vec<_> = certs
                .iter()
                .map(|c| {
                    serde_json::json!({
                        "name": c.name,
                        "path": c.path,
                        "subject": c.subject,
                        "issuer": c.issuer,
                        "isCA": c.is_ca,
                        "notAfter": humantime::format_rfc3339_seconds(c.not_after).to_string(),
                        "residualSeconds": residual(c.not_after),
                    })
                })
                .collect();
            super::shared::print_structured(&rows, output)?;
        }
        OutputFormat::Text => {
            let width = certs.iter().map(|c| c.name.len()).max().unwrap_or(4).max(4);
            println!(
                "{:<width$}  {:<20}  {:>10}  CA",
                "NAME", "EXPIRES", "RESIDUAL"
            );
            for c in &certs {
                let left = residual(c.not_after);
                let residual = if left < 0 {
                    "expired".to_string()
                } else if left >= 86_400 {
                    format!("{}d", left / 86_400)
                } else {
                    format!("{}h", left / 3600)
                };
                println!(
                    "{:<width$}  {:<20}  {:>10}  {}",
                    c.name,
                    humantime::format_rfc3339_seconds(c.not_after).to_string(),
                    residual,
                    if c.is_ca { "yes" } else { "no" }
                );
            }
        }
    }
    Ok(())
}

fn renew(
    global: &GlobalArgs,
    names: &[String],
    all: bool,
    node_name: Option<&str>,
) -> anyhow::Result<()> {
    // Names are checked against every leaf here; the node (or, offline,
    // force_renew) refuses one it does not maintain.
    let every: Vec<pki::Leaf> = pki::Leaf::every().collect();
    let leaves =
        rotation::parse_leaves(names, all, &every).map_err(|e| UsageError(e.to_string()))?;
    let paths = NodePaths::new(&global.data_dir, &global.run_dir, global.bin_dir.as_deref());
    let socket = paths.status_socket();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let req = RenewRequest {
        certificates: names.to_vec(),
        all,
    };
    match rt.block_on(client::renew(&socket, &req)) {
        Ok(outcome) => {
            println!("renewed: {}", list_or_none(&outcome.renewed));
            println!("restarted: {}", list_or_none(&outcome.restarted));
            if !outcome.failed.is_empty() {
                anyhow::bail!("restart failed: {}", outcome.failed.join("; "));
            }
            Ok(())
        }
        Err(ClientError::NotRunning { .. }) => {
            if node_running(&paths) {
                anyhow::bail!(
                    "a node holds {} but its status socket {} does not answer; not renewing behind its back",
                    paths.lock_file().display(),
                    socket.display()
                );
            }
            // A node running on this data dir with another run dir: its
            // files are not ours to rewrite. Held while renewing.
            let _data_lock = crate::nodelock::lock_data_dir(&paths.data_dir, false)?;
            let cfg = super::shared::load_config(global.config.as_deref())?;
            let node_name = match node_name {
                Some(n) => n.to_string(),
                None => crate::node::hostname()?,
            };
            // A controller that ran with --enable-worker left its kubelet
            // certificate: keep maintaining it.
            let worker = pki::PkiPaths::new(&paths.pki_dir())
                .kubelet_client
                .cert
                .exists();
            let node = cfg.node_address(&crate::config::display_name(global.config.as_deref()))?;
            let spec = crate::node::controller::pki_spec(&cfg, node, &paths, &node_name, worker);
            // `--all` offline means every leaf this PKI holds.
            let leaves = if all { spec.leaves() } else { leaves };
            if !pki::PkiPaths::new(&spec.dir).ca.cert.exists() {
                anyhow::bail!(
                    "no cluster PKI at {} (run on a controller, as root, with its --data-dir)",
                    spec.dir.display()
                );
            }
            let renewed = rotation::force_renew(&spec, &leaves)?;
            println!(
                "no node is running with run dir {}: renewed the files only ({}); they are used from the next start",
                paths.run_dir.display(),
                list_or_none(&renewed)
            );
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

fn list_or_none(names: &[String]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// Whether a node holds the run dir's lock (see `controller::lock_run_dir`).
fn node_running(paths: &NodePaths) -> bool {
    crate::nodelock::is_held(&paths.lock_file())
}
