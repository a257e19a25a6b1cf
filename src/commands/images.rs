//! `mkectl images pack`: a thin wrapper over `crate::images::oci`.

use anyhow::Context;

use crate::cli::{ImageFormat, ImagesCommand, ImagesPackArgs};
use crate::exit::UsageError;
use crate::images::{self, reference, FileSpec, Format, PackSpec};

pub fn run(cmd: &ImagesCommand) -> anyhow::Result<()> {
    match cmd {
        ImagesCommand::Pack(args) => pack(args),
    }
}

fn pack(args: &ImagesPackArgs) -> anyhow::Result<()> {
    let name = reference::normalize(&args.name).map_err(|e| UsageError(format!("--name {e}")))?;
    let mut files = Vec::new();
    for f in &args.files {
        files.push(
            FileSpec::parse(f)
                .map_err(|e| UsageError(format!("--file {}", crate::telemetry::Chain(&e))))?,
        );
    }
    let mut spec = PackSpec::new(&name, files);
    spec.entrypoint = args.entrypoint.clone();
    spec.cmd = args.cmd.clone();
    spec.env = args.env.clone();
    spec.workdir = args.workdir.clone();
    spec.user = args.user.clone();
    if let Some(a) = &args.arch {
        spec.arch = a.clone();
    }
    spec.format = match args.format {
        ImageFormat::Oci => Format::Oci,
        ImageFormat::Docker => Format::Docker,
    };
    spec.gzip = args.gzip;
    let packed = images::pack_to_file(&spec, &args.output).map_err(|e| {
        if e.is_usage() {
            anyhow::Error::from(UsageError(crate::telemetry::Chain(&e).to_string()))
        } else {
            anyhow::Error::from(e)
        }
    })?;
    let format = match packed.format {
        Format::Oci => "oci",
        Format::Docker => "docker",
    };
    if args.json {
        let doc = serde_json::json!({
            "output": args.output,
            "name": packed.name,
            "format": format,
            "gzip": args.gzip,
            "manifestDigest": packed.manifest_digest,
            "configDigest": packed.config_digest,
            "diffId": packed.diff_id,
            "size": packed.archive_size,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).context("printing the result")?
        );
    } else {
        println!(
            "wrote {} ({format}{}, {}): {}",
            args.output.display(),
            if args.gzip { ", gzip" } else { "" },
            crate::bundle::mib(packed.archive_size),
            packed.name
        );
        if let Some(d) = &packed.manifest_digest {
            println!("  manifest {d}");
        }
        println!("  config   {}", packed.config_digest);
    }
    Ok(())
}
