//! `manifest.json`, the first entry of the payload: what the bundle holds and
//! the checksum every extracted file must match.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{valid_file_name, FORMAT_VERSION};

/// Name of the manifest entry in the payload tar.
pub const MANIFEST_NAME: &str = "manifest.json";
/// Upper bound on the manifest's size, so a corrupt header cannot make us
/// allocate gigabytes.
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;
/// Directory of image archives in the payload (`images/<name>`); they are
/// staged into `<data-dir>/images/`.
pub const IMAGES_PREFIX: &str = "images/";
/// Mode of a staged image archive (data, not a program).
pub const IMAGE_MODE: u32 = 0o644;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Manifest {
    /// Payload format version, equal to the footer's.
    pub format_version: u32,
    /// Architecture of the bundled binaries (`amd64`, `arm64`, ...).
    pub arch: String,
    /// The mkectl that built the bundle (`mkectl 0.1.0`).
    pub created_by: String,
    /// One entry per file, in name order.
    pub files: Vec<FileEntry>,
    /// Image archives, in name order. Absent from bundles without any, so
    /// those keep exactly the manifest older mkectl versions wrote (and
    /// read); an older mkectl refuses a bundle with images (unknown field)
    /// rather than silently not staging them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<ImageEntry>,
}

/// An image archive the bundle carries (`mkectl bundle create --image`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImageEntry {
    /// File name in the payload (under [`IMAGES_PREFIX`]) and in
    /// `<data-dir>/images/`.
    pub name: String,
    /// Lowercase hex SHA-256 of the archive file.
    pub sha256: String,
    pub size: u64,
    /// The image names it carries (what `bundle create` read from it).
    pub refs: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileEntry {
    /// File name in the payload and in `<data-dir>/bin`.
    pub name: String,
    /// Component it belongs to (`kubernetes`, `etcd`, `cni-plugins`, ...).
    pub component: String,
    pub version: String,
    /// Lowercase hex SHA-256 of the file.
    pub sha256: String,
    pub size: u64,
    /// Permission bits given to the staged copy.
    pub mode: u32,
    pub origin: Origin,
}

/// Where a bundled file came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Origin {
    /// From an upstream artifact whose checksum matched `packaging/versions.yaml`.
    Pinned,
    /// A local file bundled with its own checksum (`--allow-local`).
    Local,
    /// The pinned upstream version built from its source (Go modules) by
    /// `packaging/build-upstream.sh`; the checksum is that build's, not the
    /// published artifact's.
    Source,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Origin::Pinned => "pinned",
            Origin::Local => "local",
            Origin::Source => "built from source",
        })
    }
}

/// One component with its version and files, for `mkectl version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ComponentSummary {
    pub name: String,
    pub version: String,
    pub origin: Origin,
    pub files: Vec<String>,
}

fn is_hex_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn printable(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.chars().all(|c| !c.is_control())
}

/// Why a bundle's `manifest.json` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest.json")]
    Json(#[source] serde_json::Error),
    #[error("manifest.json: formatVersion {found} (this mkectl reads {FORMAT_VERSION})")]
    FormatVersion { found: u32 },
    #[error("manifest.json: lists no files")]
    Empty,
    /// `problem` names the rule the entry breaks.
    #[error("manifest.json: file {name:?}: {problem}")]
    File { name: String, problem: String },
    #[error("manifest.json: image archive {name:?}: {problem}")]
    Image { name: String, problem: String },
}

impl Manifest {
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain strings and numbers cannot fail.
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    /// Parses and validates; the error text says what is wrong.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ManifestError> {
        let m: Manifest = serde_json::from_slice(bytes).map_err(ManifestError::Json)?;
        m.validate()?;
        Ok(m)
    }

    /// Checks every field: known format, safe unique names, well-formed
    /// digests, executable modes without group/other write or special bits.
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.format_version != FORMAT_VERSION {
            return Err(ManifestError::FormatVersion {
                found: self.format_version,
            });
        }
        if self.files.is_empty() && self.images.is_empty() {
            return Err(ManifestError::Empty);
        }
        let mut seen = BTreeSet::new();
        for f in &self.files {
            let what = |problem: &str| ManifestError::File {
                name: f.name.clone(),
                problem: problem.to_string(),
            };
            if !valid_file_name(&f.name) {
                return Err(what("not a valid file name"));
            }
            if !seen.insert(f.name.as_str()) {
                return Err(what("listed twice"));
            }
            if !is_hex_sha256(&f.sha256) {
                return Err(what("sha256 is not 64 lowercase hex digits"));
            }
            if f.mode & !0o777 != 0 || f.mode & 0o022 != 0 || f.mode & 0o100 == 0 {
                return Err(what(&format!(
                    "mode {:o} is not an owner-executable mode without group/other write",
                    f.mode
                )));
            }
            if !printable(&f.version) || !printable(&f.component) {
                return Err(what("empty or unprintable component/version"));
            }
        }
        let mut seen = BTreeSet::new();
        for i in &self.images {
            let what = |problem: &str| ManifestError::Image {
                name: i.name.clone(),
                problem: problem.to_string(),
            };
            if !valid_file_name(&i.name) || !crate::images::is_archive_name(&i.name) {
                return Err(what(
                    "not a valid archive file name (.tar, .tar.gz or .tgz)",
                ));
            }
            if !seen.insert(i.name.as_str()) {
                return Err(what("listed twice"));
            }
            if !is_hex_sha256(&i.sha256) {
                return Err(what("sha256 is not 64 lowercase hex digits"));
            }
            if i.refs.iter().any(|r| r.len() > 255 || !printable(r)) {
                return Err(what("an unprintable image name"));
            }
        }
        Ok(())
    }

    pub fn image(&self, name: &str) -> Option<&ImageEntry> {
        self.images.iter().find(|i| i.name == name)
    }

    pub fn file(&self, name: &str) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.name == name)
    }

    /// Files grouped by component and version, in name order.
    pub fn components(&self) -> Vec<ComponentSummary> {
        let mut by: BTreeMap<(String, String, Origin), Vec<String>> = BTreeMap::new();
        for f in &self.files {
            by.entry((f.component.clone(), f.version.clone(), f.origin))
                .or_default()
                .push(f.name.clone());
        }
        by.into_iter()
            .map(|((name, version, origin), mut files)| {
                files.sort();
                ComponentSummary {
                    name,
                    version,
                    origin,
                    files,
                }
            })
            .collect()
    }

    /// Sum of all file and image archive sizes.
    pub fn total_size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum::<u64>()
            + self.images.iter().map(|i| i.size).sum::<u64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str) -> FileEntry {
        FileEntry {
            name: name.into(),
            component: "etcd".into(),
            version: "3.5.21".into(),
            sha256: "a".repeat(64),
            size: 1,
            mode: 0o755,
            origin: Origin::Pinned,
        }
    }

    fn manifest(files: Vec<FileEntry>) -> Manifest {
        Manifest {
            format_version: FORMAT_VERSION,
            arch: "amd64".into(),
            created_by: "test".into(),
            files,
            images: Vec::new(),
        }
    }

    fn image(name: &str) -> ImageEntry {
        ImageEntry {
            name: name.into(),
            sha256: "b".repeat(64),
            size: 10,
            refs: vec!["registry.k8s.io/coredns/coredns:v1.11.3".into()],
        }
    }

    #[test]
    fn images_are_optional_and_validated() {
        let m = manifest(vec![entry("etcd")]);
        let text = String::from_utf8(m.to_json()).unwrap();
        assert!(!text.contains("images"), "no images, no field: {text}");
        let with = Manifest {
            images: vec![image("coredns.tar")],
            ..m.clone()
        };
        assert_eq!(Manifest::from_json(&with.to_json()).unwrap(), with);
        assert_eq!(with.total_size(), 11);
        // Images alone are a bundle too.
        Manifest {
            files: vec![],
            ..with.clone()
        }
        .validate()
        .unwrap();
        for (bad, want) in [
            (image("coredns.zip"), "archive file name"),
            (image("../x.tar"), "archive file name"),
            (
                ImageEntry {
                    sha256: "x".into(),
                    ..image("a.tar")
                },
                "sha256",
            ),
            (
                ImageEntry {
                    refs: vec!["a\nb".into()],
                    ..image("a.tar")
                },
                "unprintable",
            ),
        ] {
            let e = Manifest {
                images: vec![bad],
                ..m.clone()
            }
            .validate()
            .unwrap_err()
            .to_string();
            assert!(e.contains(want), "{e} (wanted {want})");
        }
        let e = Manifest {
            images: vec![image("a.tar"), image("a.tar")],
            ..m
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("twice"), "{e}");
    }

    #[test]
    fn json_round_trip() {
        let m = manifest(vec![entry("etcd"), entry("etcdctl")]);
        let back = Manifest::from_json(&m.to_json()).unwrap();
        assert_eq!(back, m);
        let text = String::from_utf8(m.to_json()).unwrap();
        assert!(text.contains("\"formatVersion\": 1"), "{text}");
        assert!(text.contains("\"origin\": \"pinned\""), "{text}");
    }

    #[test]
    fn validation_refuses_what_could_hurt() {
        let cases: Vec<(Manifest, &str)> = vec![
            (manifest(vec![]), "no files"),
            (manifest(vec![entry("../etc/passwd")]), "valid file name"),
            (manifest(vec![entry(".x")]), "valid file name"),
            (manifest(vec![entry("a"), entry("a")]), "twice"),
            (
                manifest(vec![FileEntry {
                    sha256: "A".repeat(64),
                    ..entry("a")
                }]),
                "sha256",
            ),
            (
                manifest(vec![FileEntry {
                    mode: 0o4755,
                    ..entry("a")
                }]),
                "mode",
            ),
            (
                manifest(vec![FileEntry {
                    mode: 0o777,
                    ..entry("a")
                }]),
                "mode",
            ),
            (
                manifest(vec![FileEntry {
                    version: "".into(),
                    ..entry("a")
                }]),
                "version",
            ),
            (
                Manifest {
                    format_version: 2,
                    ..manifest(vec![entry("a")])
                },
                "formatVersion",
            ),
        ];
        for (m, want) in cases {
            let e = m.validate().unwrap_err().to_string();
            assert!(e.contains(want), "{e} (wanted {want})");
        }
        assert!(Manifest::from_json(b"{\"formatVersion\":1,\"x\":1}").is_err());
    }

    #[test]
    fn components_group_files() {
        let mut k = entry("kubelet");
        k.component = "kubernetes".into();
        k.version = "v1.32.8".into();
        let mut a = k.clone();
        a.name = "kube-apiserver".into();
        let m = manifest(vec![entry("etcd"), k, a]);
        let c = m.components();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].name, "etcd");
        assert_eq!(c[1].files, vec!["kube-apiserver", "kubelet"]);
    }
}
