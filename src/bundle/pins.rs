//! `packaging/versions.yaml`: the upstream release artifacts a bundle is
//! built from, each pinned by URL and published checksum, and which files
//! each one contributes.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::Path;

use serde::Deserialize;

use super::{valid_file_name, BundleError};

/// The whole pins file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Pins {
    pub components: Vec<PinnedComponent>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PinnedComponent {
    /// Component name shown by `mkectl version` (`kubernetes`, `etcd`, ...).
    pub name: String,
    pub version: String,
    pub artifacts: Vec<Artifact>,
}

/// One downloadable file for one architecture.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Artifact {
    pub arch: String,
    /// `https://` URL; its last path segment is the file name expected in
    /// the `--from-dir` directory.
    pub url: String,
    /// Published SHA-256 (hex). Exactly one of `sha256`/`sha512` is given;
    /// an empty value means "not filled in yet" and is refused when used.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Published SHA-512 (hex), where upstream publishes only that.
    #[serde(default)]
    pub sha512: Option<String>,
    /// The artifact is a bare binary, bundled under this name.
    #[serde(default)]
    pub file: Option<String>,
    /// The artifact is a `.tar.gz`/`.tgz`: archive member path → name in
    /// the bundle.
    #[serde(default)]
    pub extract: BTreeMap<String, String>,
}

/// A pinned digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checksum<'a> {
    Sha256(&'a str),
    Sha512(&'a str),
}

impl Checksum<'_> {
    pub fn algorithm(&self) -> &'static str {
        match self {
            Checksum::Sha256(_) => "sha256",
            Checksum::Sha512(_) => "sha512",
        }
    }
    pub fn hex(&self) -> &str {
        match self {
            Checksum::Sha256(h) | Checksum::Sha512(h) => h,
        }
    }

    /// Hashes `path` with this checksum's algorithm; returns the hex digest.
    pub fn digest_file(&self, path: &Path) -> std::io::Result<String> {
        let alg = match self {
            Checksum::Sha256(_) => &ring::digest::SHA256,
            Checksum::Sha512(_) => &ring::digest::SHA512,
        };
        let mut ctx = ring::digest::Context::new(alg);
        let mut f = std::fs::File::open(path)?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = match f.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            ctx.update(&buf[..n]);
        }
        Ok(hex::encode(ctx.finish().as_ref()))
    }
}

impl Artifact {
    /// The file name the artifact is saved under (last URL path segment).
    pub fn file_name(&self) -> &str {
        self.url.rsplit('/').next().unwrap_or("")
    }

    /// The pinned checksum; `None` when it was left empty.
    pub fn checksum(&self) -> Option<Checksum<'_>> {
        match (self.sha256.as_deref(), self.sha512.as_deref()) {
            (Some(h), _) if !h.is_empty() => Some(Checksum::Sha256(h)),
            (_, Some(h)) if !h.is_empty() => Some(Checksum::Sha512(h)),
            _ => None,
        }
    }

    /// Names this artifact puts into the bundle.
    pub fn bundle_names(&self) -> Vec<&str> {
        match &self.file {
            Some(f) => vec![f.as_str()],
            None => self.extract.values().map(String::as_str).collect(),
        }
    }
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A pins file entry that is not usable; `problem` says which rule it
/// breaks.
#[derive(Debug, thiserror::Error)]
pub enum PinsError {
    #[error("component {component:?}: {problem}")]
    Component { component: String, problem: String },
    #[error("component {component:?}: artifact {url}: {problem}")]
    Artifact {
        component: String,
        url: String,
        problem: String,
    },
}

impl Pins {
    /// Reads and validates a pins file.
    pub fn load(path: &Path) -> Result<Self, BundleError> {
        let text = std::fs::read_to_string(path).map_err(|source| BundleError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_yaml(&text, path)
    }

    /// Parses and validates; `path` only names the source in errors.
    pub fn from_yaml(text: &str, path: &Path) -> Result<Self, BundleError> {
        let err = |detail: String| BundleError::Pins {
            path: path.to_path_buf(),
            detail,
        };
        let pins: Pins = serde_saphyr::from_str(text).map_err(|e| err(e.to_string()))?;
        pins.validate().map_err(|e| err(e.to_string()))?;
        Ok(pins)
    }

    /// Structural checks. Empty checksums pass here (a file may be partly
    /// filled in); using such an artifact is refused later.
    pub fn validate(&self) -> Result<(), PinsError> {
        let mut names = BTreeSet::new();
        // Per arch: artifact file names and bundle names must be unique.
        let mut files: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        let mut outputs: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for c in &self.components {
            let at = |problem: String| PinsError::Component {
                component: c.name.clone(),
                problem,
            };
            if c.name.is_empty() || !names.insert(c.name.as_str()) {
                return Err(at("empty or duplicate name".into()));
            }
            if c.version.is_empty() || c.version.chars().any(char::is_control) {
                return Err(at("empty or unprintable version".into()));
            }
            if c.artifacts.is_empty() {
                return Err(at("no artifacts".into()));
            }
            for a in &c.artifacts {
                let at = |problem: String| PinsError::Artifact {
                    component: c.name.clone(),
                    url: a.url.clone(),
                    problem,
                };
                if a.arch.is_empty() {
                    return Err(at("empty arch".into()));
                }
                if !a.url.starts_with("https://") {
                    return Err(at("url must start with https://".into()));
                }
                let fname = a.file_name();
                if fname.is_empty() || fname.starts_with('.') || fname.contains(char::is_whitespace)
                {
                    return Err(at("url does not end in a file name".into()));
                }
                match (&a.sha256, &a.sha512) {
                    (Some(h), None) if h.is_empty() || is_hex(h, 64) => {}
                    (None, Some(h)) if h.is_empty() || is_hex(h, 128) => {}
                    (Some(_), Some(_)) | (None, None) => {
                        return Err(at("give exactly one of sha256 and sha512".into()))
                    }
                    _ => {
                        return Err(at(
                            "checksum is not lowercase hex of the right length (64 for sha256, 128 for sha512)"
                                .into(),
                        ))
                    }
                }
                match (&a.file, a.extract.is_empty()) {
                    (Some(_), true) => {}
                    (None, false) => {
                        if !(fname.ends_with(".tar.gz") || fname.ends_with(".tgz")) {
                            return Err(at("extract needs a .tar.gz or .tgz url".into()));
                        }
                    }
                    _ => return Err(at("give exactly one of file and extract".into())),
                }
                if !files.entry(&a.arch).or_default().insert(fname) {
                    return Err(at(format!(
                        "file name {fname} used twice for arch {}",
                        a.arch
                    )));
                }
                for out in a.bundle_names() {
                    if !valid_file_name(out) {
                        return Err(at(format!("{out:?} is not a valid bundle file name")));
                    }
                    if !outputs.entry(&a.arch).or_default().insert(out) {
                        return Err(at(format!("{out} is produced twice for arch {}", a.arch)));
                    }
                }
            }
        }
        Ok(())
    }

    /// Every artifact for `arch`, with its component.
    pub fn for_arch(&self, arch: &str) -> Vec<(&PinnedComponent, &Artifact)> {
        self.components
            .iter()
            .flat_map(|c| c.artifacts.iter().map(move |a| (c, a)))
            .filter(|(_, a)| a.arch == arch)
            .collect()
    }

    /// The download plan for `arch`: refuses when any artifact lacks its
    /// checksum or the arch has no artifacts at all.
    pub fn plan(
        &self,
        arch: &str,
        path: &Path,
    ) -> Result<Vec<(&PinnedComponent, &Artifact)>, BundleError> {
        let list = self.for_arch(arch);
        if list.is_empty() {
            return Err(BundleError::Pins {
                path: path.to_path_buf(),
                detail: format!("no artifacts pinned for arch {arch}"),
            });
        }
        let missing: Vec<String> = list
            .iter()
            .filter(|(_, a)| a.checksum().is_none())
            .map(|(c, a)| format!("{} ({})", c.name, a.url))
            .collect();
        if !missing.is_empty() {
            return Err(BundleError::Pins {
                path: path.to_path_buf(),
                detail: format!(
                    "no checksum pinned for: {}; fill in the published sha256/sha512 before downloading",
                    missing.join(", ")
                ),
            });
        }
        Ok(list)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIPPED: &str = include_str!("../../packaging/versions.yaml");

    #[test]
    fn shipped_pins_are_complete_for_amd64_and_arm64() {
        let pins = Pins::from_yaml(SHIPPED, Path::new("packaging/versions.yaml")).unwrap();
        for arch in ["amd64", "arm64"] {
            let plan = pins.plan(arch, Path::new("versions.yaml")).unwrap();
            let names: BTreeSet<&str> = plan.iter().flat_map(|(_, a)| a.bundle_names()).collect();
            for want in [
                "kube-apiserver",
                "kube-controller-manager",
                "kube-scheduler",
                "kubelet",
                "kubectl",
                "etcd",
                "containerd",
                "containerd-shim-runc-v2",
                "runc",
                "bridge",
                "host-local",
                "loopback",
                "portmap",
            ] {
                assert!(
                    names.contains(want),
                    "{arch}: {want} missing from {names:?}"
                );
            }
            for (c, a) in plan {
                assert!(
                    a.url.contains(c.version.trim_start_matches('v')),
                    "{}: url {} does not carry version {}",
                    c.name,
                    a.url,
                    c.version
                );
                assert!(
                    a.url.contains(arch),
                    "{}: url {} is not for {arch}",
                    c.name,
                    a.url
                );
            }
        }
        let k = pins
            .components
            .iter()
            .find(|c| c.name == "kubernetes")
            .unwrap();
        // Same minor as the flags mkectl generates for the kube components.
        let minor = |v: &str| v.rsplit_once('.').map(|(m, _)| m.to_string());
        let generated = crate::kubeapi::KUBERNETES_VERSION;
        assert_eq!(
            minor(&k.version),
            minor(generated),
            "pinned {} vs generated flags for {generated}",
            k.version
        );
        assert!(k.version.starts_with("v1.32."), "{}", k.version);
    }

    fn pins(artifact: &str) -> Result<Pins, BundleError> {
        let text =
            format!("components:\n  - name: x\n    version: \"1\"\n    artifacts:\n{artifact}");
        Pins::from_yaml(&text, Path::new("p.yaml"))
    }

    #[test]
    fn validation() {
        let good = "      - arch: amd64\n        url: https://h/x\n        sha256: \"\"\n        file: x\n";
        let p = pins(good).unwrap();
        let err = p
            .plan("amd64", Path::new("p.yaml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no checksum pinned for: x (https://h/x)"),
            "{err}"
        );
        assert!(p
            .plan("arm64", Path::new("p.yaml"))
            .unwrap_err()
            .to_string()
            .contains("no artifacts"));

        for (bad, want) in [
            ("      - arch: amd64\n        url: http://h/x\n        sha256: \"\"\n        file: x\n", "https"),
            ("      - arch: amd64\n        url: https://h/x\n        sha256: abc\n        file: x\n", "lowercase hex"),
            ("      - arch: amd64\n        url: https://h/x\n        file: x\n", "exactly one of sha256"),
            ("      - arch: amd64\n        url: https://h/x.zip\n        sha256: \"\"\n        extract: {a: b}\n", ".tar.gz"),
            ("      - arch: amd64\n        url: https://h/x\n        sha256: \"\"\n        file: ../x\n", "valid bundle file name"),
            ("      - arch: amd64\n        url: https://h/x\n        sha256: \"\"\n        file: x\n        bogus: 1\n", "bogus"),
        ] {
            let e = pins(bad).unwrap_err().to_string();
            assert!(e.contains(want), "{e} (wanted {want})");
            assert!(e.starts_with("p.yaml"), "{e}");
        }
    }
}
