//! Finding component binaries. A miss names the binary and every place
//! looked, and exits 69.
//!
//! Lookup order (DESIGN.md), first executable match wins:
//!
//! 1. `--bin-dir` (`MKECTL_BIN_DIR`): the operator's explicit override.
//! 2. The bundle: `mkectl controller|worker` extracts the binaries appended
//!    to its own executable into `<data-dir>/bin` (`bundle::stage`) before
//!    any component is initialised, replacing every copy there that differs
//!    from the bundle. So whatever the bundle carries is found here.
//! 3. Anything else in `<data-dir>/bin` (a binary the bundle does not carry,
//!    placed there by hand). Steps 2 and 3 are one directory; the bundle
//!    wins inside it because extraction overwrote its own files.
//! 4. `PATH` (distribution packages, e.g. Debian's etcd).
//!
//! So a bundled binary beats the same name on `PATH`, and `--bin-dir` beats
//! the bundle.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::config::NodePaths;

#[derive(Debug, thiserror::Error)]
#[error("required binary `{name}` not found; looked in: {}", searched_list(.searched))]
pub struct BinaryNotFound {
    pub name: String,
    pub searched: Vec<PathBuf>,
}

fn searched_list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn is_executable(p: &Path) -> bool {
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Directories searched for binaries, in order.
pub fn search_dirs(paths: &NodePaths, path_env: Option<&std::ffi::OsStr>) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(b) = &paths.bin_dir {
        dirs.push(b.clone());
    }
    dirs.push(paths.staged_bin_dir());
    if let Some(p) = path_env {
        dirs.extend(std::env::split_paths(p).filter(|d| !d.as_os_str().is_empty()));
    }
    dirs
}

/// Finds `name` in the search dirs.
pub fn find(name: &str, paths: &NodePaths) -> Result<PathBuf, BinaryNotFound> {
    let path_env = std::env::var_os("PATH");
    let mut searched = Vec::new();
    for dir in search_dirs(paths, path_env.as_deref()) {
        let candidate = dir.join(name);
        if is_executable(&candidate) {
            return Ok(candidate);
        }
        searched.push(candidate);
    }
    Err(BinaryNotFound {
        name: name.into(),
        searched,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bin_dir_wins_and_misses_list_every_place() {
        let tmp = tempfile::tempdir().unwrap();
        let bin = tmp.path().join("bin-dir");
        std::fs::create_dir_all(&bin).unwrap();
        let exe = bin.join("tool");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let paths = NodePaths::new(
            &tmp.path().join("data"),
            &tmp.path().join("run"),
            Some(&bin),
        );
        assert_eq!(find("tool", &paths).unwrap(), exe);

        let e = find("no-such-tool-xyz", &paths).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("no-such-tool-xyz"), "{msg}");
        assert!(msg.contains(&bin.display().to_string()), "{msg}");
        assert!(msg.contains("data/bin"), "{msg}");
        assert!(e.searched.len() >= 3);
    }
}
