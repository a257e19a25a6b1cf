//! `source-builds.tsv`: the record `packaging/build-upstream.sh` writes next
//! to the upstream binaries it builds from their Go modules. Such a binary is
//! the pinned upstream version but not the published artifact, so its
//! checksum is its own: the bundle records it as built from source, after
//! checking the file still has the SHA-256 the build recorded. Binaries the
//! record marks `test-only` (upstream konnectivity peers) are never bundled,
//! nor are those it marks `image` (CoreDNS): they are image content, which
//! the bundle carries inside image archives (`bundle create --image`), never
//! as host binaries.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// File name of the record inside a `--from-dir`.
pub const SOURCE_BUILDS_FILE: &str = "source-builds.tsv";
/// Upper bound on the record's size: a handful of lines.
const MAX_RECORD_BYTES: u64 = 64 * 1024;

/// What the record says of one binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceBuild {
    pub component: String,
    pub version: String,
    pub sha256: String,
    pub usage: Usage,
}

/// The record's `use` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// Bundled as a host binary.
    Ship,
    /// Test peers and benchmark anchors: never bundled.
    TestOnly,
    /// Goes into an image (packed by `mkectl images pack`): never bundled
    /// as a host binary.
    Image,
}

impl Usage {
    pub fn as_str(self) -> &'static str {
        match self {
            Usage::Ship => "ship",
            Usage::TestOnly => "test-only",
            Usage::Image => "image",
        }
    }
}

impl SourceBuild {
    /// True when the binary is bundled as a host binary.
    pub fn ship(&self) -> bool {
        self.usage == Usage::Ship
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourceBuildsError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: larger than {MAX_RECORD_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("{path}:{line}: {detail}")]
    Line {
        path: PathBuf,
        line: usize,
        detail: String,
    },
}

/// The record in `dir`, by binary name; empty when `dir` has none.
pub fn read(dir: &Path) -> Result<BTreeMap<String, SourceBuild>, SourceBuildsError> {
    let path = dir.join(SOURCE_BUILDS_FILE);
    let meta = match fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(source) => return Err(SourceBuildsError::Read { path, source }),
    };
    if meta.len() > MAX_RECORD_BYTES {
        return Err(SourceBuildsError::TooLarge { path });
    }
    let text = fs::read_to_string(&path).map_err(|source| SourceBuildsError::Read {
        path: path.clone(),
        source,
    })?;
    parse(&path, &text)
}

fn parse(path: &Path, text: &str) -> Result<BTreeMap<String, SourceBuild>, SourceBuildsError> {
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let err = |detail: String| SourceBuildsError::Line {
            path: path.to_path_buf(),
            line: i + 1,
            detail,
        };
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split('\t').collect();
        let [name, component, version, sha256, usage] = f[..] else {
            return Err(err(format!(
                "expected 5 tab-separated fields (name component version sha256 use), found {}",
                f.len()
            )));
        };
        if !super::valid_file_name(name) {
            return Err(err(format!("{name:?} is not a valid file name")));
        }
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(err(format!("{name}: sha256 is not 64 hex digits")));
        }
        let usage = match usage {
            "ship" => Usage::Ship,
            "test-only" => Usage::TestOnly,
            "image" => Usage::Image,
            other => {
                return Err(err(format!(
                    "{name}: use {other:?} is not ship, test-only or image"
                )))
            }
        };
        let entry = SourceBuild {
            component: component.to_string(),
            version: version.to_string(),
            sha256: sha256.to_ascii_lowercase(),
            usage,
        };
        if out.insert(name.to_string(), entry).is_some() {
            return Err(err(format!("{name} is listed twice")));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUM: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    #[test]
    fn parses_ship_and_test_only_lines() {
        let text = format!(
            "# header\nkube-apiserver\tkubernetes\tv1.32.8\t{SUM}\tship\n\nproxy-server\tapiserver-network-proxy\tv0.33.0\t{SUM}\ttest-only\ncoredns\tcoredns\tv1.11.3\t{SUM}\timage\n"
        );
        let r = parse(Path::new("/x/source-builds.tsv"), &text).unwrap();
        assert!(r["kube-apiserver"].ship());
        assert_eq!(r["kube-apiserver"].version, "v1.32.8");
        assert!(!r["proxy-server"].ship());
        assert_eq!(r["proxy-server"].usage, Usage::TestOnly);
        assert!(!r["coredns"].ship());
        assert_eq!(r["coredns"].usage.as_str(), "image");
    }

    #[test]
    fn bad_lines_name_the_file_and_line() {
        for (text, want) in [
            ("kube-apiserver\tkubernetes\tv1.32.8\n", "expected 5"),
            (
                &*format!("a\tk\tv\t{SUM}\tmaybe\n"),
                "not ship, test-only or image",
            ),
            ("a\tk\tv\tnothex\tship\n", "64 hex"),
            (&*format!("../a\tk\tv\t{SUM}\tship\n"), "valid file name"),
            (
                &*format!("a\tk\tv\t{SUM}\tship\na\tk\tv\t{SUM}\tship\n"),
                "twice",
            ),
        ] {
            let e = parse(Path::new("/x/source-builds.tsv"), text)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("/x/source-builds.tsv:") && e.contains(want),
                "{e}"
            );
        }
    }

    #[test]
    fn a_dir_without_a_record_has_no_source_builds() {
        let d = tempfile::tempdir().unwrap();
        assert!(read(d.path()).unwrap().is_empty());
    }
}
