//! Offline images: nothing a node runs is pulled from a registry.
//!
//! * [`oci`] packs an image from local files (tar + gzip + the OCI image
//!   spec, no daemon): `mkectl images pack`, used by the packaging scripts
//!   (CoreDNS), by tests (busybox) and by the worker itself (pause).
//! * [`archive`] reads an image archive (OCI layout or docker archive,
//!   optionally gzip'd): its format, the images it names and their digests,
//!   and whether it is whole.
//! * [`import`] runs at worker start, once containerd is ready and before
//!   kubelet starts: every archive in `<data-dir>/images/` is imported into
//!   containerd's `k8s.io` namespace (the one CRI uses) unless containerd
//!   already holds each of its images by digest. A corrupt archive is
//!   reported by name and skipped; the others are unaffected. k0s calls
//!   such archives airgap bundles.
//! * [`pause`] makes the pod sandbox image from mkectl's own pause program
//!   under the configured `spec.worker.sandboxImage` name, so the sandbox
//!   image is never pulled.
//! * [`reference`](mod@reference) normalises image names the way containerd and CRI do.
//!
//! `mkectl bundle create --image FILE` carries archives inside the bundled
//! mkectl, which stages them into `<data-dir>/images/` at start.

pub mod archive;
pub mod import;
pub mod oci;
pub mod pause;
pub mod reference;
pub mod spec;

use std::path::PathBuf;

pub use archive::{inspect, ArchiveFormat, ArchiveImage, ArchiveInfo};
pub use import::{import_dir, ImportReport, ImportSettings, SandboxOutcome, K8S_NAMESPACE};
pub use oci::{pack, pack_to_file, FileSpec, Format, PackSpec, Packed};

/// File name endings of image archives in `<data-dir>/images/`; anything
/// else there is ignored (and said so in the log).
pub const ARCHIVE_SUFFIXES: &[&str] = &[".tar", ".tar.gz", ".tgz"];

/// True when `name` is an image archive's file name: one of
/// [`ARCHIVE_SUFFIXES`], not hidden (dot files are in-progress copies).
pub fn is_archive_name(name: &str) -> bool {
    !name.starts_with('.')
        && ARCHIVE_SUFFIXES
            .iter()
            .any(|s| name.len() > s.len() && name.ends_with(s))
}

#[derive(Debug, thiserror::Error)]
pub enum ImagesError {
    /// The archive is truncated, corrupt, or in no format containerd imports.
    #[error("{path}: not a usable image archive")]
    Archive {
        path: PathBuf,
        #[source]
        source: archive::ArchiveError,
    },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    /// An input of `images pack` is unusable; `field` is the flag.
    #[error("--{field}: {detail}")]
    Spec { field: &'static str, detail: String },
    #[error("packing image {name}")]
    Pack {
        name: String,
        source: std::io::Error,
    },
    /// `ctr images import` failed for this archive.
    #[error("{path}: ctr images import failed: {detail}")]
    Import { path: PathBuf, detail: String },
}

impl ImagesError {
    /// True for mistakes in what the operator asked for (exit 64).
    pub fn is_usage(&self) -> bool {
        matches!(self, Self::Spec { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_names() {
        for ok in [
            "a.tar",
            "coredns.oci.tar",
            "x.tar.gz",
            "x.tgz",
            "b.docker.tar",
        ] {
            assert!(is_archive_name(ok), "{ok}");
        }
        for no in [
            ".mkectl-extract-x.tar",
            "a.zip",
            "tar",
            ".tar",
            "README",
            "a.tar.part",
        ] {
            assert!(!is_archive_name(no), "{no}");
        }
    }
}
