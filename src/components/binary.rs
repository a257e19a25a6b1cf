//! Finding component binaries. A miss names the binary and every place
//! looked, and exits 69.
//!
//! Lookup order (docs/design.md "Lookup order"), first executable match wins:
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
#[error("required binary `{name}` not found; looked in: {}{}", searched_list(.searched), not_executable_note(.not_executable))]
pub struct BinaryNotFound {
    pub name: String,
    pub searched: Vec<PathBuf>,
    /// Files of that name that exist but lack the execute bit: the likely
    /// mistake, named so the operator need not guess.
    pub not_executable: Vec<PathBuf>,
}

impl crate::exit::ExitCode for BinaryNotFound {
    fn exit_code(&self) -> Option<u8> {
        Some(crate::exit::UNAVAILABLE)
    }
}

fn not_executable_note(paths: &[PathBuf]) -> String {
    if paths.is_empty() {
        return String::new();
    }
    format!(" ({} exists but is not executable)", searched_list(paths))
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
    let mut not_executable = Vec::new();
    for dir in search_dirs(paths, path_env.as_deref()) {
        let candidate = dir.join(name);
        if is_executable(&candidate) {
            return Ok(candidate);
        }
        if candidate.is_file() {
            not_executable.push(candidate.clone());
        }
        searched.push(candidate);
    }
    Err(BinaryNotFound {
        name: name.into(),
        searched,
        not_executable,
    })
}

/// How long an upstream binary gets to answer `--version`.
const VERSION_PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// An upstream Kubernetes binary that was found but cannot be used: it does
/// not run, crashes, or is another release than the one mkectl generates
/// flags for. Exit 69, like a missing one.
#[derive(Debug, thiserror::Error)]
pub enum UnusableBinary {
    #[error("`{name}` at {path} cannot be run")]
    Spawn {
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{name}` at {path}: `--version` did not answer within {secs}s", secs = VERSION_PROBE_TIMEOUT.as_secs())]
    Timeout { name: String, path: PathBuf },
    #[error("`{name}` at {path} fails at start (`--version`: {status}): {output}")]
    Crashed {
        name: String,
        path: PathBuf,
        status: String,
        output: String,
    },
    #[error("`{name}` at {path} is {found}; this mkectl runs Kubernetes {expected} (any {expected_minor}.x is accepted)")]
    WrongVersion {
        name: String,
        path: PathBuf,
        found: String,
        expected: &'static str,
        expected_minor: String,
    },
}

impl crate::exit::ExitCode for UnusableBinary {
    fn exit_code(&self) -> Option<u8> {
        Some(crate::exit::UNAVAILABLE)
    }
}

/// `v1.32` of `v1.32.8`.
fn minor_of(version: &str) -> &str {
    match version.match_indices('.').nth(1) {
        Some((i, _)) => &version[..i],
        None => version,
    }
}

/// Runs `<path> --version` and checks that it is Kubernetes `expected`'s
/// minor release; returns the version it reported (a patch other than
/// `expected`'s is accepted: the flags are the minor release's).
pub async fn check_kube_version(
    name: &str,
    path: &Path,
    expected: &'static str,
) -> Result<String, UnusableBinary> {
    let run = tokio::process::Command::new(path)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(VERSION_PROBE_TIMEOUT, run).await {
        Err(_) => {
            return Err(UnusableBinary::Timeout {
                name: name.into(),
                path: path.into(),
            })
        }
        Ok(Err(source)) => {
            return Err(UnusableBinary::Spawn {
                name: name.into(),
                path: path.into(),
                source,
            })
        }
        Ok(Ok(out)) => out,
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let reported = text.trim().strip_prefix("Kubernetes ").map(str::trim);
    if !out.status.success() || reported.is_none() {
        let mut output = format!(
            "{}{}",
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        if output.len() > 400 {
            let mut cut = 400;
            while !output.is_char_boundary(cut) {
                cut -= 1;
            }
            output.truncate(cut);
            output.push('…');
        }
        if output.is_empty() {
            output = "no output".into();
        }
        return Err(UnusableBinary::Crashed {
            name: name.into(),
            path: path.into(),
            status: out.status.to_string(),
            output,
        });
    }
    let found = reported.unwrap_or_default().to_string();
    if minor_of(&found) != minor_of(expected) || !found.starts_with("v1.") {
        return Err(UnusableBinary::WrongVersion {
            name: name.into(),
            path: path.into(),
            found: format!("Kubernetes {found}"),
            expected,
            expected_minor: minor_of(expected).into(),
        });
    }
    Ok(found)
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

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[tokio::test]
    async fn version_probe_accepts_the_minor_and_names_what_is_wrong() {
        let d = tempfile::tempdir().unwrap();
        let good = script(d.path(), "good", "echo 'Kubernetes v1.32.8'");
        assert_eq!(
            check_kube_version("kube-apiserver", &good, "v1.32.8")
                .await
                .unwrap(),
            "v1.32.8"
        );
        let patch = script(d.path(), "patch", "echo 'Kubernetes v1.32.3'");
        assert_eq!(
            check_kube_version("kube-apiserver", &patch, "v1.32.8")
                .await
                .unwrap(),
            "v1.32.3"
        );
        let old = script(d.path(), "old", "echo 'Kubernetes v1.31.4'");
        let e = check_kube_version("kube-apiserver", &old, "v1.32.8")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`kube-apiserver`") && e.contains("v1.31.4") && e.contains("v1.32.8"),
            "{e}"
        );
        let crash = script(d.path(), "crash", "echo 'panic: boom' >&2; exit 2");
        let e = check_kube_version("kubelet", &crash, "v1.32.8")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("fails at start") && e.contains("panic: boom"),
            "{e}"
        );
        let other = script(d.path(), "other", "echo 'etcd Version: 3.4.30'");
        let e = check_kube_version("kubelet", &other, "v1.32.8")
            .await
            .unwrap_err();
        assert!(matches!(e, UnusableBinary::Crashed { .. }), "{e}");
        let not_exec = d.path().join("garbage");
        std::fs::write(&not_exec, b"\x7fELF garbage").unwrap();
        std::fs::set_permissions(&not_exec, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = check_kube_version("kubelet", &not_exec, "v1.32.8")
            .await
            .unwrap_err();
        assert!(matches!(e, UnusableBinary::Spawn { .. }), "{e}");
    }
}
