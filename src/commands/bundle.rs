//! `mkectl bundle create|plan|verify`: build a bundled mkectl from a
//! directory of artifacts, list what to download, check a bundled file.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;

use crate::bundle::{self, Bundle, BundleError, CreateOptions, Pins, SourceKind};
use crate::cli::{BundleCommand, BundleCreateArgs, BundlePlanArgs};
use crate::exit::UsageError;

pub fn run(cmd: &BundleCommand) -> anyhow::Result<()> {
    match cmd {
        BundleCommand::Create(args) => create(args),
        BundleCommand::Plan(args) => plan(args),
        BundleCommand::Verify { file } => verify(file.clone()),
    }
}

/// Operator mistakes exit 64, everything else 1.
fn classify(e: BundleError) -> anyhow::Error {
    if e.is_usage() {
        UsageError(crate::telemetry::Chain(&e).to_string()).into()
    } else {
        e.into()
    }
}

fn this_exe() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("locating this mkectl executable")
}

fn create(args: &BundleCreateArgs) -> anyhow::Result<()> {
    let mut local_versions = BTreeMap::new();
    for kv in &args.local_versions {
        let Some((name, version)) = kv.split_once('=') else {
            return Err(
                UsageError(format!("--local-version {kv:?}: expected NAME=VERSION")).into(),
            );
        };
        if name.is_empty() || version.is_empty() || version.chars().any(char::is_control) {
            return Err(UsageError(format!(
                "--local-version {kv:?}: empty or unprintable name/version"
            ))
            .into());
        }
        if local_versions
            .insert(name.to_string(), version.to_string())
            .is_some()
        {
            return Err(UsageError(format!("--local-version: {name} given twice")).into());
        }
    }
    if !local_versions.is_empty() && !args.allow_local {
        return Err(UsageError("--local-version needs --allow-local".into()).into());
    }
    let pins = match &args.versions {
        Some(p) => Some((p.clone(), Pins::load(p).map_err(classify)?)),
        None => None,
    };
    if pins.is_none() && !args.allow_local {
        return Err(UsageError(
            "nothing can be bundled: give --versions (pinned artifacts) and/or --allow-local (local binaries)".into(),
        )
        .into());
    }
    let opts = CreateOptions {
        from_dir: args.from_dir.clone(),
        pins,
        arch: args
            .arch
            .clone()
            .unwrap_or_else(|| bundle::host_arch().to_string()),
        allow_local: args.allow_local,
        local_versions,
        require_all: args.require_all,
        mkectl: match &args.mkectl {
            Some(p) => p.clone(),
            None => this_exe()?,
        },
        output: args.output.clone(),
        compression_level: args.compression_level,
        images: args.images.clone(),
    };
    let report = bundle::create(&opts).map_err(classify)?;

    println!(
        "wrote {} ({} mkectl + {} payload, {} files, {} image archives, {} uncompressed)",
        report.output.display(),
        bundle::mib(report.image_len),
        bundle::mib(report.payload_len),
        report.manifest.files.len(),
        report.manifest.images.len(),
        bundle::mib(report.manifest.total_size()),
    );
    let width = report
        .manifest
        .files
        .iter()
        .map(|f| f.name.len())
        .max()
        .unwrap_or(0);
    for f in &report.manifest.files {
        let from = match &report.sources[&f.name] {
            SourceKind::Pinned { artifact } => {
                format!("pinned, from {artifact} (checksum verified)")
            }
            SourceKind::Local => {
                "LOCAL: own sha256 recorded, not checked against any pin".to_string()
            }
            SourceKind::Source => "BUILT FROM SOURCE: own sha256 (checked against its build \
                 record); the published artifact's checksum does not apply"
                .to_string(),
        };
        println!(
            "  {:width$}  {:<14} {:<12}  {}",
            f.name, f.component, f.version, from
        );
    }
    for i in &report.manifest.images {
        println!(
            "  image archive {}  {}  ({}, staged into <data-dir>/images/)",
            i.name,
            i.refs.join(", "),
            bundle::mib(i.size)
        );
    }
    if !report.missing_pins.is_empty() {
        println!(
            "note: pinned for {} but not in {}: {}",
            opts.arch,
            opts.from_dir.display(),
            report.missing_pins.join(", ")
        );
    }
    Ok(())
}

fn plan(args: &BundlePlanArgs) -> anyhow::Result<()> {
    let pins = Pins::load(&args.versions).map_err(classify)?;
    let arch = args
        .arch
        .clone()
        .unwrap_or_else(|| bundle::host_arch().to_string());
    let list = pins.plan(&arch, &args.versions).map_err(classify)?;
    for (component, artifact) in list {
        // plan() refused every artifact without a checksum.
        let Some(sum) = artifact.checksum() else {
            continue;
        };
        println!(
            "{}\t{}\t{}\t{}\t{}",
            component.name,
            artifact.url,
            sum.algorithm(),
            sum.hex(),
            artifact.file_name()
        );
    }
    Ok(())
}

fn verify(file: Option<PathBuf>) -> anyhow::Result<()> {
    let path = match file {
        Some(p) => p,
        None => this_exe()?,
    };
    let Some(b) = Bundle::open(&path)? else {
        anyhow::bail!("{} carries no bundle", path.display());
    };
    let manifest = bundle::verify_contents(&b)?;
    println!(
        "{}: bundle OK (format {}, payload {} sha256 {}, {} files, {} image archives)",
        path.display(),
        b.footer().format_version,
        bundle::mib(b.footer().payload_len),
        b.footer().sha256_hex(),
        manifest.files.len(),
        manifest.images.len()
    );
    Ok(())
}
