//! The bundle: upstream binaries (etcd, containerd, the kube binaries, ...)
//! appended to the mkectl executable, so one file carries a whole node.
//!
//! # File format (version 1)
//!
//! ```text
//!   0                 +------------------------------+
//!                     | mkectl executable (ELF)      |  unchanged bytes
//!   payload_offset    +------------------------------+
//!                     | payload: gzip(tar)           |  see below
//!   + payload_len     +------------------------------+
//!                     | footer, 64 bytes             |  last 64 bytes of the file
//!                     +------------------------------+
//! ```
//!
//! The footer (all integers little endian; see [`footer`]):
//!
//! | bytes  | field                                   |
//! |--------|-----------------------------------------|
//! | 0..8   | payload offset (u64)                    |
//! | 8..16  | payload length (u64)                    |
//! | 16..48 | SHA-256 of the payload bytes            |
//! | 48..52 | format version (u32, currently 1)       |
//! | 52..56 | reserved, zero                          |
//! | 56..64 | magic `MKE-BNDL`                        |
//!
//! The payload is one gzip member holding a ustar archive: first
//! `manifest.json` ([`Manifest`]: name, component, version, sha256, size and
//! mode of every file), then one regular file per binary with a flat name,
//! in name order. Headers carry no timestamps or owners, so the same inputs
//! give the same bytes.
//!
//! # Reading
//!
//! [`Bundle::open_self`] opens `/proc/self/exe` and reads the footer. No
//! footer means no bundle, which is not an error, unless a gzip payload
//! follows the ELF image: then the footer was cut off and the file is
//! refused as truncated. Before anything is written the whole payload is hashed and
//! compared with the footer; a mismatch, a footer that does not fit the file
//! size, or a malformed archive is an error naming the mkectl file.
//!
//! # Staging
//!
//! [`extract()`] writes each file whose copy in `<data-dir>/bin` is missing or
//! differs into a temporary file there, checks size and SHA-256 against the
//! manifest, and only when every file checked out renames them all into
//! place. Files already up to date are not touched (same bytes, same mtime),
//! so a second start extracts nothing. Component lookup (see
//! `components::binary`) then finds the staged copies before `PATH`.

mod create;
mod elf;
mod extract;
pub mod footer;
mod manifest;
mod pins;
mod reader;
#[cfg(test)]
mod round_trip_tests;
pub mod source_builds;

use std::io::{self, Read};
use std::path::PathBuf;

pub use create::{create, CreateOptions, CreateReport, SourceKind};
pub use extract::{
    extract, stage, stage_blocking, verify_contents, ExtractReport, RECORD_NAME, TEMP_PREFIX,
};
pub use footer::{Footer, FOOTER_LEN, FORMAT_VERSION, MAGIC};
pub use manifest::{
    ComponentSummary, FileEntry, ImageEntry, Manifest, Origin, IMAGES_PREFIX, IMAGE_MODE,
    MANIFEST_NAME,
};
pub use pins::{Artifact, Checksum, PinnedComponent, Pins};
pub use reader::Bundle;

/// Mode of every staged binary and of `<data-dir>/bin`.
pub const BIN_MODE: u32 = 0o755;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("cannot read {path}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write {path}")]
    Write { path: PathBuf, source: io::Error },
    #[error("{path}: the bundle is truncated or corrupt: {detail}; rebuild it or copy it again")]
    Corrupt { path: PathBuf, detail: String },
    #[error(
        "{path}: bundle payload checksum mismatch (footer records sha256 {expected}, the payload \
         hashes to {actual}): the file is corrupt; rebuild it or copy it again"
    )]
    PayloadChecksum {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error(
        "{path}: bundle format version {found} is not supported by this mkectl (it reads version {supported})"
    )]
    UnsupportedVersion {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("{path}: bundled file {name}: {detail}")]
    File {
        path: PathBuf,
        name: String,
        detail: String,
    },
    #[error(transparent)]
    Fs(#[from] crate::fsutil::FsError),
    /// The source-build record of a `--from-dir` is unreadable or invalid.
    #[error(transparent)]
    SourceBuilds(#[from] source_builds::SourceBuildsError),
    /// The pinned versions file is unreadable or invalid.
    #[error("{path}: {detail}")]
    Pins { path: PathBuf, detail: String },
    /// An input of `bundle create` is unusable (bad name, not pinned, ...).
    #[error("{path}: {detail}")]
    Input { path: PathBuf, detail: String },
    /// A pinned artifact's, or a source build's, checksum does not match
    /// what `detail` says it was recorded against.
    #[error("{path}: {algorithm} mismatch: expected {expected}, file has {actual} ({detail})")]
    ArtifactChecksum {
        path: PathBuf,
        algorithm: &'static str,
        expected: String,
        actual: String,
        detail: String,
    },
    #[error("another mkectl is staging binaries into {path}")]
    Locked { path: PathBuf, source: nix::Error },
    /// An image archive given to `bundle create` is unusable.
    #[error("--image")]
    Image {
        path: PathBuf,
        source: Box<crate::images::ImagesError>,
    },
    #[error("bundle extraction task failed")]
    Task(#[from] tokio::task::JoinError),
}

impl BundleError {
    /// True for errors in what the operator asked for (bad pins file, an
    /// unpinned input without `--allow-local`, ...): exit 64 rather than 1.
    pub fn is_usage(&self) -> bool {
        matches!(self, Self::Pins { .. } | Self::Input { .. })
    }
}

/// The architecture name used in release URLs (`amd64`, `arm64`) for the
/// host mkectl was built for.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
}

/// Streams `r` through SHA-256; returns the lowercase hex digest and the
/// number of bytes read.
pub fn sha256_reader(mut r: impl Read) -> io::Result<(String, u64)> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        ctx.update(&buf[..n]);
        total += n as u64;
    }
    Ok((hex::encode(ctx.finish().as_ref()), total))
}

/// SHA-256 of a file (hex) and its length.
pub fn sha256_file(path: &std::path::Path) -> io::Result<(String, u64)> {
    sha256_reader(std::fs::File::open(path)?)
}

/// A name that may appear as a file in the bundle and in `<data-dir>/bin`:
/// one path component of `[A-Za-z0-9._+-]`, not starting with a dot (dot
/// files in the bin dir are mkectl's own bookkeeping).
pub fn valid_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && !name.starts_with('.')
        && name != MANIFEST_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+'))
}

/// Human-readable byte count (MiB with one decimal).
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names() {
        for ok in [
            "etcd",
            "kube-apiserver",
            "containerd-shim-runc-v2",
            "host-local",
            "a+b_c.1",
        ] {
            assert!(valid_file_name(ok), "{ok}");
        }
        for bad in [
            "",
            ".hidden",
            "a/b",
            "..",
            "manifest.json",
            "sp ace",
            "tab\t",
            "ü",
            &"x".repeat(101),
        ] {
            assert!(!valid_file_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn sha256_of_known_input() {
        let (h, n) = sha256_reader(&b"abc"[..]).unwrap();
        assert_eq!(n, 3);
        assert_eq!(
            h,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
