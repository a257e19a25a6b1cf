//! `mkectl backup`: one tar + gzip archive holding a consistent etcd
//! snapshot (etcd's maintenance API streams a point-in-time copy of the
//! database, with etcd's own checksum at the end), the whole PKI and the
//! ClusterConfig, with file modes kept.
//!
//! # Archive format (version 1)
//!
//! ```text
//! mkectl-backup/manifest.json     always the first entry
//! mkectl-backup/etcd/snapshot.db
//! mkectl-backup/pki/...           every file under <data-dir>/pki
//! mkectl-backup/config/cluster.yaml   when the controller runs with --config
//! ```
//!
//! The manifest names the format and its version, the cluster and the
//! SHA-256 of its CA's public key (the cluster identity), and lists every
//! other member with its mode, size and SHA-256. Restore refuses an archive
//! whose manifest is missing, unknown or does not match the members.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::etcd::{connect_with_timeout, EtcdClientTls};
use crate::fsutil;
use crate::pki;

/// `format` of the manifest.
pub const FORMAT: &str = "mkectl-backup";
/// Highest format version this mkectl reads and the one it writes.
pub const FORMAT_VERSION: u32 = 1;
/// Top-level directory of every archive member.
pub const ROOT: &str = "mkectl-backup";
pub const MANIFEST: &str = "manifest.json";
pub const SNAPSHOT: &str = "etcd/snapshot.db";
pub const PKI_PREFIX: &str = "pki";
pub const CONFIG: &str = "config/cluster.yaml";
/// A manifest larger than this is not ours.
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;
/// Per-request bound while taking the snapshot.
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Fs(#[from] fsutil::FsError),
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    #[error("etcd snapshot from {endpoint}: {message}")]
    Snapshot { endpoint: String, message: String },
    #[error("{path} already exists; choose another --save-path (backups are never overwritten)")]
    Exists { path: PathBuf },
    #[error("{path} is not an mkectl backup: {reason}")]
    Foreign { path: PathBuf, reason: String },
    #[error("{path} is damaged or truncated: {reason}")]
    Damaged { path: PathBuf, reason: String },
    #[error(
        "data directory {path} is not empty; restore only into an empty or absent data directory"
    )]
    DataDirNotEmpty { path: PathBuf },
    #[error("etcdctl snapshot restore failed ({status}): {stderr}")]
    Etcdctl { status: String, stderr: String },
}

/// One archive member other than the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileEntry {
    /// Relative to [`ROOT`], `/`-separated.
    pub path: String,
    pub mode: u32,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    /// RFC 3339.
    pub created_at: String,
    pub mkectl_version: String,
    pub cluster_name: String,
    /// SHA-256 of the cluster CA's public key (`sha256:<hex>`), as in join
    /// tokens: the cluster's identity.
    pub cluster_ca_sha256: String,
    pub files: Vec<FileEntry>,
}

/// What `create` needs.
pub struct BackupInput {
    pub pki_dir: PathBuf,
    /// The ClusterConfig text, if the node runs with a config file.
    pub config: Option<Vec<u8>>,
    pub cluster_name: String,
    pub etcd_endpoint: String,
    pub etcd_tls: EtcdClientTls,
}

/// What `create` wrote.
#[derive(Debug, Clone)]
pub struct BackupSummary {
    pub path: PathBuf,
    pub archive_bytes: u64,
    pub snapshot_bytes: u64,
    pub files: usize,
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

/// Writes into a file while hashing what passes through.
pub(crate) struct HashingWriter<W> {
    pub inner: W,
    pub ctx: ring::digest::Context,
    pub size: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            ctx: ring::digest::Context::new(&ring::digest::SHA256),
            size: 0,
        }
    }
    pub fn finish(self) -> (W, String, u64) {
        (
            self.inner,
            hex::encode(self.ctx.finish().as_ref()),
            self.size,
        )
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.ctx.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn mode_of(meta: &std::fs::Metadata) -> u32 {
    std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777
}

/// Every regular file under `dir` as (archive path, disk path), sorted.
fn pki_files(dir: &Path) -> Result<Vec<(String, PathBuf)>, BackupError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = std::fs::read_dir(&d).map_err(|source| BackupError::Io {
            path: d.clone(),
            source,
        })?;
        for e in rd {
            let e = e.map_err(|source| BackupError::Io {
                path: d.clone(),
                source,
            })?;
            let p = e.path();
            let ft = e.file_type().map_err(|source| BackupError::Io {
                path: p.clone(),
                source,
            })?;
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() {
                // Only leftovers of an interrupted `certs renew` are skipped.
                if p.extension().is_some_and(|x| x == "renewing") {
                    continue;
                }
                let rel = p.strip_prefix(dir).unwrap_or(&p);
                let parts: Vec<_> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                out.push((format!("{PKI_PREFIX}/{}", parts.join("/")), p));
            }
        }
    }
    out.sort();
    Ok(out)
}

fn append(
    tar: &mut tar::Builder<impl Write>,
    rel: &str,
    mode: u32,
    size: u64,
    data: impl Read,
    archive: &Path,
) -> Result<(), BackupError> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    );
    tar.append_data(&mut h, format!("{ROOT}/{rel}"), data)
        .map_err(|source| BackupError::Io {
            path: archive.to_path_buf(),
            source,
        })
}

/// Streams an etcd snapshot into `out`; returns its size and SHA-256.
async fn snapshot_to(input: &BackupInput, out: &Path) -> Result<(u64, String), BackupError> {
    let fail = |message: String| BackupError::Snapshot {
        endpoint: input.etcd_endpoint.clone(),
        message,
    };
    let mut client = connect_with_timeout(&input.etcd_endpoint, &input.etcd_tls, SNAPSHOT_TIMEOUT)
        .await
        .map_err(|e| fail(crate::telemetry::Chain(&e).to_string()))?;
    let mut stream = client
        .snapshot()
        .await
        .map_err(|e| fail(format!("{e} (is the controller running?)")))?;
    let io = |source| BackupError::Io {
        path: out.to_path_buf(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(fsutil::PRIVATE_FILE_MODE)
        .open(out)
        .map_err(io)?;
    let mut w = HashingWriter::new(std::io::BufWriter::new(file));
    while let Some(msg) = stream.message().await.map_err(|e| fail(e.to_string()))? {
        w.write_all(msg.blob()).map_err(io)?;
    }
    let (buf, sha, size) = w.finish();
    let file = buf.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    if size == 0 {
        return Err(fail("etcd sent an empty snapshot".into()));
    }
    Ok((size, sha))
}

/// Where an archive member's bytes come from.
pub(crate) enum Source {
    Bytes(Vec<u8>),
    File(PathBuf),
}

/// Takes the snapshot and writes the archive to `dest` (0600, atomically:
/// a partial archive is never left at `dest`). `dest` must not exist.
pub async fn create(input: &BackupInput, dest: &Path) -> Result<BackupSummary, BackupError> {
    if dest.exists() {
        return Err(BackupError::Exists {
            path: dest.to_path_buf(),
        });
    }
    let parent = parent_of(dest);
    let staging = tempfile::Builder::new()
        .prefix(".mkectl-backup-")
        .tempdir_in(&parent)
        .map_err(|source| BackupError::Io {
            path: parent.clone(),
            source,
        })?;
    let snap_path = staging.path().join("snapshot.db");
    let (snapshot_bytes, snapshot_sha) = snapshot_to(input, &snap_path).await?;

    let mut members = vec![(
        FileEntry {
            path: SNAPSHOT.into(),
            mode: fsutil::PRIVATE_FILE_MODE,
            size: snapshot_bytes,
            sha256: snapshot_sha,
        },
        Source::File(snap_path),
    )];
    for (rel, p) in pki_files(&input.pki_dir)? {
        let bytes = fsutil::read(&p)?;
        let meta = std::fs::metadata(&p).map_err(|source| BackupError::Io {
            path: p.clone(),
            source,
        })?;
        members.push((
            entry_for(&rel, mode_of(&meta), &bytes),
            Source::Bytes(bytes),
        ));
    }
    if let Some(bytes) = &input.config {
        members.push((
            entry_for(CONFIG, fsutil::PRIVATE_FILE_MODE, bytes),
            Source::Bytes(bytes.clone()),
        ));
    }
    let ca = pki::PkiPaths::new(&input.pki_dir).ca.cert;
    let manifest = Manifest {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        created_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        mkectl_version: env!("CARGO_PKG_VERSION").into(),
        cluster_name: input.cluster_name.clone(),
        cluster_ca_sha256: pki::spki_sha256(&fsutil::read(&ca)?)?,
        files: members.iter().map(|(e, _)| e.clone()).collect(),
    };
    let archive_bytes = write_archive(dest, &manifest, &members)?;
    Ok(BackupSummary {
        path: dest.to_path_buf(),
        archive_bytes,
        snapshot_bytes,
        files: members.len(),
    })
}

pub(crate) fn entry_for(rel: &str, mode: u32, bytes: &[u8]) -> FileEntry {
    FileEntry {
        path: rel.into(),
        mode,
        size: bytes.len() as u64,
        sha256: sha256_hex(bytes),
    }
}

fn parent_of(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Writes manifest + members as a tar.gz at `dest` through a temporary file
/// beside it (0600), never replacing an existing `dest`. Returns its size.
pub(crate) fn write_archive(
    dest: &Path,
    manifest: &Manifest,
    members: &[(FileEntry, Source)],
) -> Result<u64, BackupError> {
    let parent = parent_of(dest);
    let manifest_json = serde_json::to_vec_pretty(manifest).map_err(|e| BackupError::Io {
        path: dest.to_path_buf(),
        source: e.into(),
    })?;
    let tmp = tempfile::Builder::new()
        .prefix(".mkectl-backup-")
        .suffix(".tar.gz.tmp")
        .tempfile_in(&parent)
        .map_err(|source| BackupError::Io {
            path: parent.clone(),
            source,
        })?;
    fsutil::set_mode(tmp.path(), fsutil::PRIVATE_FILE_MODE)?;
    let io = |source| BackupError::Io {
        path: tmp.path().to_path_buf(),
        source,
    };
    let gz = flate2::write::GzEncoder::new(
        std::io::BufWriter::new(tmp.as_file()),
        flate2::Compression::default(),
    );
    let mut tar = tar::Builder::new(gz);
    append(
        &mut tar,
        MANIFEST,
        fsutil::PRIVATE_FILE_MODE,
        manifest_json.len() as u64,
        &manifest_json[..],
        dest,
    )?;
    for (entry, source) in members {
        match source {
            Source::Bytes(b) => {
                append(&mut tar, &entry.path, entry.mode, entry.size, &b[..], dest)?
            }
            Source::File(p) => {
                let f = std::fs::File::open(p).map_err(|source| BackupError::Io {
                    path: p.clone(),
                    source,
                })?;
                let r = std::io::BufReader::new(f);
                append(&mut tar, &entry.path, entry.mode, entry.size, r, dest)?
            }
        }
    }
    let gz = tar.into_inner().map_err(io)?;
    let buf = gz.finish().map_err(io)?;
    buf.into_inner().map_err(|e| io(e.into_error()))?;
    tmp.as_file().sync_all().map_err(io)?;
    let size = tmp.as_file().metadata().map_err(io)?.len();
    tmp.persist_noclobber(dest).map_err(|e| {
        if e.error.kind() == std::io::ErrorKind::AlreadyExists {
            BackupError::Exists {
                path: dest.to_path_buf(),
            }
        } else {
            BackupError::Io {
                path: dest.to_path_buf(),
                source: e.error,
            }
        }
    })?;
    if let Ok(d) = std::fs::File::open(&parent) {
        let _ = d.sync_all();
    }
    Ok(size)
}

/// Checks that an archive member path is ours: under [`ROOT`], relative,
/// without `..`; returns it relative to [`ROOT`].
pub(crate) fn member_path(p: &Path) -> Option<String> {
    let mut comps = p.components();
    if comps.next() != Some(Component::Normal(ROOT.as_ref())) {
        return None;
    }
    let mut parts = Vec::new();
    for c in comps {
        match c {
            Component::Normal(s) => parts.push(s.to_str()?.to_string()),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_paths_stay_inside_the_root() {
        assert_eq!(
            member_path(Path::new("mkectl-backup/pki/ca.crt")).as_deref(),
            Some("pki/ca.crt")
        );
        assert_eq!(member_path(Path::new("mkectl-backup")), None);
        assert_eq!(member_path(Path::new("other/pki/ca.crt")), None);
        assert_eq!(member_path(Path::new("mkectl-backup/../etc/passwd")), None);
        assert_eq!(member_path(Path::new("/mkectl-backup/x")), None);
    }
}
