//! `mkectl restore`: the archive is read and checked completely (gzip
//! integrity, manifest, every member's size and SHA-256) into a staging
//! directory next to the data dir, etcd's data dir is rebuilt there from the
//! snapshot with `etcdctl snapshot restore` (which also checks etcd's own
//! snapshot hash), and only then the staged data dir is renamed into place.
//! Any failure removes the staging directory: nothing is written.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::backup::{
    member_path, BackupError, HashingWriter, Manifest, CONFIG, FORMAT, FORMAT_VERSION, MANIFEST,
    MAX_MANIFEST_BYTES, PKI_PREFIX, SNAPSHOT,
};
use crate::fsutil;

/// Where the archived ClusterConfig lands in the restored data dir.
pub const RESTORED_CONFIG: &str = "restored-config.yaml";

/// gzip's magic bytes.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Prefix of the staging directory.
const STAGING_PREFIX: &str = ".mkectl-restore-";

/// Refuses a data dir that exists and holds anything.
pub fn check_target(data_dir: &Path) -> Result<(), BackupError> {
    check_target_except(data_dir, None)
}

fn check_target_except(data_dir: &Path, ours: Option<&Path>) -> Result<(), BackupError> {
    match std::fs::read_dir(data_dir) {
        Ok(rd) => {
            for e in rd.flatten() {
                if Some(e.path().as_path()) != ours {
                    return Err(BackupError::DataDirNotEmpty {
                        path: data_dir.to_path_buf(),
                    });
                }
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(BackupError::Io {
            path: data_dir.to_path_buf(),
            source,
        }),
    }
}

/// Where to stage: inside an existing (empty) data dir, which may be a mount
/// point of its own, else beside it; either way on the data dir's file system
/// so installing is a rename.
pub fn staging_parent(data_dir: &Path) -> PathBuf {
    if data_dir.is_dir() {
        return data_dir.to_path_buf();
    }
    match data_dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// A verified archive unpacked into a staging dir beside the data dir.
pub struct Staged {
    dir: tempfile::TempDir,
    pub manifest: Manifest,
    /// The archived ClusterConfig text, if any.
    pub config: Option<String>,
}

impl Staged {
    fn files(&self) -> PathBuf {
        self.dir.path().join("archive")
    }
    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Rebuilds etcd's data dir from the snapshot for a single member `name`
    /// at `peer_url` (the controller's `--name` and peer URL).
    pub fn restore_etcd(
        &self,
        etcdctl: &Path,
        name: &str,
        peer_url: &str,
    ) -> Result<(), BackupError> {
        let data = self.data();
        fsutil::ensure_dir(&data, fsutil::PRIVATE_DIR_MODE)?;
        let etcd_dir = data.join("etcd");
        let out = Command::new(etcdctl)
            .env("ETCDCTL_API", "3")
            .arg("snapshot")
            .arg("restore")
            .arg(self.files().join(SNAPSHOT))
            .arg(format!("--data-dir={}", etcd_dir.display()))
            .arg(format!("--name={name}"))
            .arg(format!("--initial-cluster={name}={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .output()
            .map_err(|source| BackupError::Io {
                path: etcdctl.to_path_buf(),
                source,
            })?;
        if !out.status.success() {
            return Err(BackupError::Etcdctl {
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        fsutil::set_mode(&etcd_dir, fsutil::PRIVATE_DIR_MODE)?;
        Ok(())
    }

    /// Moves the PKI (and config) into the staged data dir, then into place:
    /// one rename of the whole dir when `data_dir` is absent, else one
    /// rename per entry into the existing empty `data_dir`. Returns the path
    /// of the restored config, if the archive had one.
    pub fn install(self, data_dir: &Path) -> Result<Option<PathBuf>, BackupError> {
        let data = self.data();
        fsutil::ensure_dir(&data, fsutil::PRIVATE_DIR_MODE)?;
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| BackupError::Io { path, source }
        };
        let pki_src = self.files().join(PKI_PREFIX);
        std::fs::rename(&pki_src, data.join(PKI_PREFIX)).map_err(io(&pki_src))?;
        let mut config_path = None;
        if let Some(text) = &self.config {
            fsutil::write_atomic(
                &data.join(RESTORED_CONFIG),
                text.as_bytes(),
                fsutil::PRIVATE_FILE_MODE,
            )?;
            config_path = Some(data_dir.join(RESTORED_CONFIG));
        }
        let inside = self.dir.path().parent() == Some(data_dir);
        check_target_except(data_dir, inside.then(|| self.dir.path()))?;
        if inside {
            // etcd last: a data dir with etcd data but no PKI never exists.
            for name in [PKI_PREFIX, RESTORED_CONFIG, "etcd"] {
                let from = data.join(name);
                if from.exists() {
                    std::fs::rename(&from, data_dir.join(name)).map_err(io(&from))?;
                }
            }
        } else {
            std::fs::rename(&data, data_dir).map_err(io(data_dir))?;
        }
        fsutil::set_mode(data_dir, fsutil::PRIVATE_DIR_MODE)?;
        for d in [Some(data_dir), data_dir.parent()].into_iter().flatten() {
            if let Ok(f) = std::fs::File::open(d) {
                let _ = f.sync_all();
            }
        }
        Ok(config_path)
    }
}

/// Reads `archive` completely, checking it as it goes, into a staging dir
/// created in `staging_parent`.
pub fn unpack(archive: &Path, staging_parent: &Path) -> Result<Staged, BackupError> {
    let damaged = |reason: String| BackupError::Damaged {
        path: archive.to_path_buf(),
        reason,
    };
    let foreign = |reason: String| BackupError::Foreign {
        path: archive.to_path_buf(),
        reason,
    };
    let mut file = std::fs::File::open(archive).map_err(|source| BackupError::Io {
        path: archive.to_path_buf(),
        source,
    })?;
    let mut magic = [0u8; 2];
    if file.read_exact(&mut magic).is_err() || magic != GZIP_MAGIC {
        return Err(foreign("not a gzip file (a backup is a .tar.gz)".into()));
    }
    let file = std::fs::File::open(archive).map_err(|source| BackupError::Io {
        path: archive.to_path_buf(),
        source,
    })?;
    let dir = tempfile::Builder::new()
        .prefix(STAGING_PREFIX)
        .tempdir_in(staging_parent)
        .map_err(|source| BackupError::Io {
            path: staging_parent.to_path_buf(),
            source,
        })?;
    let files_dir = dir.path().join("archive");
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)));
    let entries = tar.entries().map_err(|e| damaged(e.to_string()))?;

    let mut manifest: Option<Manifest> = None;
    let mut expected: BTreeMap<String, super::backup::FileEntry> = BTreeMap::new();
    for entry in entries {
        let mut entry = entry.map_err(|e| damaged(e.to_string()))?;
        let raw = entry
            .path()
            .map_err(|e| damaged(e.to_string()))?
            .into_owned();
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            continue;
        }
        let Some(rel) = member_path(&raw) else {
            return Err(foreign(format!("unexpected member {}", raw.display())));
        };
        if !kind.is_file() {
            return Err(foreign(format!("{rel} is not a regular file")));
        }
        if manifest.is_none() {
            if rel != MANIFEST {
                return Err(foreign(format!("first member is {rel}, not {MANIFEST}")));
            }
            if entry.size() > MAX_MANIFEST_BYTES {
                return Err(foreign("manifest too large".into()));
            }
            let mut text = Vec::new();
            entry
                .read_to_end(&mut text)
                .map_err(|e| damaged(e.to_string()))?;
            let m: Manifest = serde_json::from_slice(&text)
                .map_err(|e| foreign(format!("unreadable manifest: {e}")))?;
            if m.format != FORMAT {
                return Err(foreign(format!("manifest format is {:?}", m.format)));
            }
            if m.format_version == 0 || m.format_version > FORMAT_VERSION {
                return Err(foreign(format!(
                    "format version {} is not supported (this mkectl reads up to {FORMAT_VERSION})",
                    m.format_version
                )));
            }
            for f in &m.files {
                if member_path(&Path::new(super::backup::ROOT).join(&f.path)).as_deref()
                    != Some(f.path.as_str())
                    || f.path == MANIFEST
                {
                    return Err(foreign(format!("manifest lists a bad path {:?}", f.path)));
                }
                expected.insert(f.path.clone(), f.clone());
            }
            if !expected.contains_key(SNAPSHOT) {
                return Err(foreign("manifest lists no etcd snapshot".into()));
            }
            manifest = Some(m);
            continue;
        }
        let Some(want) = expected.remove(&rel) else {
            return Err(damaged(format!(
                "member {rel} is not in the manifest (or appears twice)"
            )));
        };
        // Checked before a byte is written: a small archive may expand to
        // any size, and staging must never hold more than the manifest says.
        if entry.size() != want.size {
            return Err(damaged(format!(
                "{rel}: the archive holds {} bytes, the manifest says {}; nothing of it was written",
                entry.size(),
                want.size
            )));
        }
        let dest = files_dir.join(&rel);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(|source| BackupError::Io {
                path: parent.to_path_buf(),
                source,
            })?;
            fsutil::set_mode(parent, fsutil::PRIVATE_DIR_MODE)?;
        }
        let io = |source| BackupError::Io {
            path: dest.clone(),
            source,
        };
        let out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(fsutil::PRIVATE_FILE_MODE)
            .open(&dest)
            .map_err(io)?;
        let mut w = HashingWriter::new(std::io::BufWriter::new(out));
        std::io::copy(&mut (&mut entry).take(want.size), &mut w)
            .map_err(|e| damaged(format!("{rel}: {e}")))?;
        w.flush().map_err(io)?;
        let (_, sha, size) = w.finish();
        if size != want.size || sha != want.sha256 {
            return Err(damaged(format!(
                "{rel}: checksum or size differs from the manifest"
            )));
        }
        fsutil::set_mode(&dest, want.mode & 0o777)?;
    }
    let Some(manifest) = manifest else {
        return Err(foreign("no manifest".into()));
    };
    if let Some(missing) = expected.keys().next() {
        return Err(damaged(format!("member {missing} is missing")));
    }
    // The tar reader stops at the end-of-archive blocks; read the gzip
    // stream to its end so the trailer (CRC, length) is checked too.
    let mut rest = tar.into_inner();
    std::io::copy(&mut rest, &mut std::io::sink()).map_err(|e| damaged(e.to_string()))?;

    // The PKI must be the cluster the manifest names.
    let ca = files_dir.join(PKI_PREFIX).join("ca.crt");
    let pin = std::fs::read(&ca)
        .map_err(|e| damaged(format!("{PKI_PREFIX}/ca.crt: {e}")))
        .and_then(|pem| {
            crate::pki::spki_sha256(&pem).map_err(|e| damaged(format!("{PKI_PREFIX}/ca.crt: {e}")))
        })?;
    if pin != manifest.cluster_ca_sha256 {
        return Err(damaged(format!(
            "the cluster CA ({pin}) is not the one the manifest names ({})",
            manifest.cluster_ca_sha256
        )));
    }
    let config = if manifest.files.iter().any(|f| f.path == CONFIG) {
        let p = files_dir.join(CONFIG);
        Some(std::fs::read_to_string(&p).map_err(|source| BackupError::Io { path: p, source })?)
    } else {
        None
    };
    Ok(Staged {
        dir,
        manifest,
        config,
    })
}

#[cfg(test)]
mod tests {
    use super::super::backup::{entry_for, write_archive, FileEntry, Source};
    use super::*;
    use crate::pki;

    /// A real PKI and a fake snapshot, archived as `backup` does.
    fn archive(dir: &Path, tweak: impl Fn(&mut Manifest)) -> PathBuf {
        let mut spec = pki::PkiSpec::new(dir.join("src-pki"), "n1");
        spec.node_addresses = vec!["127.0.0.1".parse().unwrap()];
        pki::ensure(&spec).unwrap();
        let snap = b"not really bolt".to_vec();
        let mut members = vec![(
            entry_for(SNAPSHOT, 0o600, &snap),
            Source::Bytes(snap.clone()),
        )];
        for rel in ["ca.crt", "ca.key", "etcd/ca.crt"] {
            let bytes = std::fs::read(spec.dir.join(rel)).unwrap();
            let mode = if rel.ends_with(".key") { 0o600 } else { 0o644 };
            members.push((
                entry_for(&format!("{PKI_PREFIX}/{rel}"), mode, &bytes),
                Source::Bytes(bytes),
            ));
        }
        let cfg = b"apiVersion: mkectl.io/v1beta1\nkind: ClusterConfig\n".to_vec();
        members.push((entry_for(CONFIG, 0o600, &cfg), Source::Bytes(cfg)));
        let ca = std::fs::read(spec.dir.join("ca.crt")).unwrap();
        let mut manifest = Manifest {
            format: FORMAT.into(),
            format_version: FORMAT_VERSION,
            created_at: "2026-01-01T00:00:00Z".into(),
            mkectl_version: "test".into(),
            cluster_name: "mke".into(),
            cluster_ca_sha256: pki::spki_sha256(&ca).unwrap(),
            files: members.iter().map(|(e, _)| e.clone()).collect(),
        };
        tweak(&mut manifest);
        let dest = dir.join(format!("b-{}.tar.gz", rand::random::<u32>()));
        write_archive(&dest, &manifest, &members).unwrap();
        dest
    }

    fn no_staging_left(dir: &Path) {
        let left: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(STAGING_PREFIX))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn round_trip_into_an_absent_and_into_an_empty_data_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let a = archive(tmp.path(), |_| {});
        for existing in [false, true] {
            let data = tmp.path().join(format!("data-{existing}"));
            if existing {
                std::fs::create_dir(&data).unwrap();
            }
            let staged = unpack(&a, &staging_parent(&data)).unwrap();
            assert_eq!(staged.manifest.files.len(), 5);
            assert!(staged.config.as_deref().unwrap().contains("ClusterConfig"));
            let cfg = staged.install(&data).unwrap();
            assert_eq!(cfg, Some(data.join(RESTORED_CONFIG)));
            let mode = |p: &Path| {
                std::os::unix::fs::PermissionsExt::mode(
                    &std::fs::metadata(p).unwrap().permissions(),
                ) & 0o777
            };
            assert_eq!(mode(&data), 0o700);
            assert_eq!(mode(&data.join("pki/ca.key")), 0o600);
            assert_eq!(mode(&data.join("pki/ca.crt")), 0o644);
            assert_eq!(mode(&data.join("pki/etcd")), 0o700);
            assert_eq!(
                std::fs::read(data.join("pki/ca.crt")).unwrap(),
                std::fs::read(tmp.path().join("src-pki/ca.crt")).unwrap()
            );
            no_staging_left(&data);
            no_staging_left(tmp.path());
            assert!(matches!(
                check_target(&data),
                Err(BackupError::DataDirNotEmpty { .. })
            ));
        }
    }

    #[test]
    fn bad_archives_are_refused_and_leave_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let cases: Vec<(PathBuf, &str)> = vec![
            (
                archive(tmp.path(), |m| m.files[1].sha256 = "00".repeat(32)),
                "checksum",
            ),
            (
                archive(tmp.path(), |m| m.format = "other".into()),
                "not an mkectl backup",
            ),
            (
                // The snapshot is 15 bytes; refused before any is written.
                archive(tmp.path(), |m| m.files[0].size = 3),
                "the archive holds 15 bytes, the manifest says 3; nothing of it was written",
            ),
            (
                archive(tmp.path(), |m| m.format_version = 99),
                "not supported",
            ),
            (
                archive(tmp.path(), |m| m.cluster_ca_sha256 = "sha256:00".into()),
                "not the one the manifest names",
            ),
            (
                archive(tmp.path(), |m| {
                    m.files.push(FileEntry {
                        path: "../escape".into(),
                        mode: 0o600,
                        size: 0,
                        sha256: String::new(),
                    })
                }),
                "bad path",
            ),
            (
                archive(tmp.path(), |m| {
                    m.files.push(FileEntry {
                        path: "pki/missing.key".into(),
                        mode: 0o600,
                        size: 1,
                        sha256: String::new(),
                    })
                }),
                "missing",
            ),
        ];
        for (path, want) in cases {
            let e = unpack(&path, tmp.path())
                .err()
                .expect("refused")
                .to_string();
            assert!(e.contains(want), "{want:?} not in {e:?}");
            no_staging_left(tmp.path());
        }
        // Truncated at every tenth of its length.
        let good = std::fs::read(archive(tmp.path(), |_| {})).unwrap();
        for i in 1..10 {
            let cut = tmp.path().join("cut.tar.gz");
            std::fs::write(&cut, &good[..good.len() * i / 10]).unwrap();
            let e = unpack(&cut, tmp.path()).err().expect("refused").to_string();
            assert!(
                e.contains("damaged or truncated") || e.contains("not an mkectl backup"),
                "{e}"
            );
            no_staging_left(tmp.path());
        }
    }
}
