//! `mkectl certs check-expiration`: every certificate under the data dir with
//! its expiry, soonest first.

use std::time::SystemTime;

use anyhow::Context;

use crate::cli::{CertsCommand, GlobalArgs, OutputFormat};
use crate::config::NodePaths;
use crate::pki;

pub fn run(global: &GlobalArgs, cmd: &CertsCommand) -> anyhow::Result<()> {
    match cmd {
        CertsCommand::CheckExpiration { output } => check_expiration(global, *output),
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
        OutputFormat::Json => {
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
            println!("{}", serde_json::to_string_pretty(&rows)?);
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
