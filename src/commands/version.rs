//! `mkectl version [-o json]`: the mkectl version and, when this executable
//! carries a bundle, each bundled component with its version, read from the
//! manifest (nothing is extracted; `mkectl bundle verify` checks the bytes).

use crate::bundle::{self, Bundle};
use crate::cli::{OutputFormat, VersionArgs};

pub fn run(args: &VersionArgs) -> anyhow::Result<()> {
    let version = env!("CARGO_PKG_VERSION");
    // Set by build.rs from git at build time ("unknown" without git).
    let git_commit = env!("MKECTL_GIT_COMMIT");
    let git_dirty: Option<bool> = match env!("MKECTL_GIT_DIRTY") {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    };
    let bundle = Bundle::open_self()?;
    let manifest = match &bundle {
        Some(b) => Some(b.manifest()?),
        None => None,
    };
    match args.output {
        OutputFormat::Json | OutputFormat::Yaml => {
            let bundle_json = match (&bundle, &manifest) {
                (Some(b), Some(m)) => serde_json::json!({
                    "formatVersion": b.footer().format_version,
                    "arch": m.arch,
                    "createdBy": m.created_by,
                    "payloadBytes": b.footer().payload_len,
                    "payloadSha256": b.footer().sha256_hex(),
                    "components": m.components(),
                    "images": m.images,
                }),
                _ => serde_json::Value::Null,
            };
            let doc = serde_json::json!({
                "version": version,
                "gitCommit": git_commit,
                "gitTreeDirty": git_dirty,
                "bundle": bundle_json,
            });
            super::shared::print_structured(&doc, args.output)?;
        }
        OutputFormat::Text => {
            println!("mkectl {version}");
            let dirty = match git_dirty {
                Some(true) => "dirty",
                Some(false) => "clean",
                None => "unknown",
            };
            println!("git commit {git_commit} (tree {dirty})");
            match (&bundle, &manifest) {
                (Some(b), Some(m)) => {
                    println!(
                        "bundled components ({}, payload {}):",
                        m.arch,
                        bundle::mib(b.footer().payload_len)
                    );
                    let comps = m.components();
                    let w = comps.iter().map(|c| c.name.len()).max().unwrap_or(0);
                    let vw = comps.iter().map(|c| c.version.len()).max().unwrap_or(0);
                    for c in comps {
                        println!(
                            "  {:w$}  {:vw$}  {}  ({})",
                            c.name,
                            c.version,
                            c.origin,
                            c.files.join(", ")
                        );
                    }
                    if !m.images.is_empty() {
                        println!("bundled image archives:");
                        for i in &m.images {
                            println!("  {}  {}", i.name, i.refs.join(", "));
                        }
                    }
                }
                _ => println!("no bundled components"),
            }
        }
    }
    Ok(())
}
