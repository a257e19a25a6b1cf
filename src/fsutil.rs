//! Filesystem helpers shared by every module that persists state: atomic,
//! permission-exact writes so a crash never leaves a half-written key or config.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode for directories holding secrets (pki/, etcd/).
pub const PRIVATE_DIR_MODE: u32 = 0o700;
/// Mode for private keys and anything else secret.
pub const PRIVATE_FILE_MODE: u32 = 0o600;
/// Mode for public material (certificates, non-secret configs).
pub const PUBLIC_FILE_MODE: u32 = 0o644;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("cannot create directory {path}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot set permissions on {path}")]
    Chmod {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} has no parent directory")]
    NoParent { path: PathBuf },
}

/// Creates `path` (and missing parents) and forces its mode, so an existing
/// directory created with a looser umask is tightened too.
/// `p` made absolute against the current directory (unchanged if that fails).
pub fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

pub fn ensure_dir(path: &Path, mode: u32) -> Result<(), FsError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(|source| FsError::CreateDir {
            path: path.to_path_buf(),
            source,
        })?;
    set_mode(path, mode)
}

/// Sets the permission bits of `path` unless they already match.
pub fn set_mode(path: &Path, mode: u32) -> Result<(), FsError> {
    let meta = fs::metadata(path).map_err(|source| FsError::Chmod {
        path: path.to_path_buf(),
        source,
    })?;
    if meta.permissions().mode() & 0o7777 != mode {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|source| {
            FsError::Chmod {
                path: path.to_path_buf(),
                source,
            }
        })?;
    }
    Ok(())
}

/// Writes `contents` to `path` atomically (temp file in the same directory,
/// fsync, rename) with exactly `mode`. When the file already holds the same
/// bytes only the mode is corrected and nothing is rewritten, so repeated runs
/// change no byte and no mtime. Returns whether the content was written.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<bool, FsError> {
    if let Ok(existing) = fs::read(path) {
        if existing == contents {
            set_mode(path, mode)?;
            return Ok(false);
        }
    }
    let dir = path.parent().ok_or_else(|| FsError::NoParent {
        path: path.to_path_buf(),
    })?;
    let werr = |source| FsError::Write {
        path: path.to_path_buf(),
        source,
    };
    // The temp file is created 0600 by tempfile, so secrets are never exposed
    // even before the final chmod.
    let mut tmp = tempfile::Builder::new()
        .prefix(".mkectl-tmp-")
        .tempfile_in(dir)
        .map_err(werr)?;
    tmp.write_all(contents).map_err(werr)?;
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(mode))
        .map_err(werr)?;
    tmp.as_file().sync_all().map_err(werr)?;
    tmp.persist(path).map_err(|e| werr(e.error))?;
    // Make the rename durable.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(true)
}

/// Reads `r` to its end if that is at most `limit` bytes; `Ok(None)` as
/// soon as there is more (an endless input like `/dev/zero` or a pipe is
/// never buffered beyond `limit`).
pub fn read_at_most(r: impl std::io::Read, limit: u64) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    let mut buf = Vec::new();
    r.take(limit.saturating_add(1)).read_to_end(&mut buf)?;
    Ok((buf.len() as u64 <= limit).then_some(buf))
}

/// Reads a file, naming it in the error.
pub fn read(path: &Path) -> Result<Vec<u8>, FsError> {
    fs::read(path).map_err(|source| FsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_at_most_stops_at_the_limit() {
        let exact = read_at_most(&b"abcd"[..], 4).unwrap();
        assert_eq!(exact.as_deref(), Some(&b"abcd"[..]));
        assert_eq!(read_at_most(&b"abcde"[..], 4).unwrap(), None);
        // An endless reader ends after limit + 1 bytes.
        assert_eq!(read_at_most(std::io::repeat(0), 1 << 20).unwrap(), None);
    }

    #[test]
    fn atomic_write_sets_mode_and_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/key.pem");
        ensure_dir(p.parent().unwrap(), PRIVATE_DIR_MODE).unwrap();
        assert!(write_atomic(&p, b"secret", PRIVATE_FILE_MODE).unwrap());
        let m = fs::metadata(&p).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
        let mtime = m.modified().unwrap();
        assert!(!write_atomic(&p, b"secret", PRIVATE_FILE_MODE).unwrap());
        assert_eq!(fs::metadata(&p).unwrap().modified().unwrap(), mtime);
        assert!(write_atomic(&p, b"other", PRIVATE_FILE_MODE).unwrap());
        assert_eq!(fs::read(&p).unwrap(), b"other");
        let dmode = fs::metadata(p.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dmode & 0o777, 0o700);
    }
}
