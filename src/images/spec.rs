//! The few OCI image-spec (and docker-archive) JSON documents mkectl writes
//! and reads. Written by hand rather than through the `oci-spec` crate: four
//! small structs are all that is needed, and the field order here is what
//! makes the packed bytes (hence the digests) stable.
//!
//! Reading is lenient (unknown fields are ignored, as the spec requires of
//! consumers); writing emits exactly these fields in this order.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `oci-layout`: the marker file of an image layout.
pub const OCI_LAYOUT_FILE: &str = "oci-layout";
/// The layout's entry point.
pub const INDEX_FILE: &str = "index.json";
/// The entry point of a docker archive (`docker save`).
pub const DOCKER_MANIFEST_FILE: &str = "manifest.json";
/// The layout version this code writes and reads.
pub const OCI_LAYOUT_VERSION: &str = "1.0.0";

pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MEDIA_DOCKER_MANIFEST_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";

/// The name containerd gives an image imported from an index entry (it
/// prefers this to [`ANNOTATION_REF_NAME`]).
pub const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";
/// The OCI annotation naming an index entry.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageLayout {
    pub image_layout_version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
}

/// A content descriptor: what a blob is, its digest and size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Descriptor {
    /// The image name containerd's importer gives this index entry, if any:
    /// `io.containerd.image.name`, else `org.opencontainers.image.ref.name`.
    pub fn image_name(&self) -> Option<&str> {
        self.annotations
            .get(ANNOTATION_CONTAINERD_NAME)
            .or_else(|| self.annotations.get(ANNOTATION_REF_NAME))
            .map(String::as_str)
            .filter(|n| !n.is_empty())
    }

    /// True for an image manifest (OCI or docker schema 2).
    pub fn is_manifest(&self) -> bool {
        matches!(
            self.media_type.as_str(),
            MEDIA_OCI_MANIFEST | MEDIA_DOCKER_MANIFEST
        )
    }

    /// True for an index (OCI index or docker manifest list).
    pub fn is_index(&self) -> bool {
        matches!(
            self.media_type.as_str(),
            MEDIA_OCI_INDEX | MEDIA_DOCKER_MANIFEST_LIST
        )
    }
}

/// `index.json`, or a nested index blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub media_type: String,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

/// An image manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub media_type: String,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

/// One entry of a docker archive's `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DockerArchiveEntry {
    /// Path of the config blob inside the archive.
    pub config: String,
    /// Names, as `docker save` writes them (`busybox:latest`).
    #[serde(default)]
    pub repo_tags: Vec<String>,
    /// Paths of the layer tars, base first.
    pub layers: Vec<String>,
}

/// The image configuration (only what mkectl sets).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageConfig {
    pub architecture: String,
    pub os: String,
    pub config: ContainerConfig,
    pub rootfs: RootFs,
    pub history: Vec<History>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    pub env: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub entrypoint: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cmd: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    pub diff_ids: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct History {
    pub created_by: String,
}

/// `blobs/<algorithm>/<hex>` for `digest`, or None when the digest is not
/// `algorithm:hex` with a plain algorithm and hex part.
pub fn blob_path(digest: &str) -> Option<String> {
    let (alg, hex) = digest.split_once(':')?;
    let plain = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'+')
    };
    (plain(alg) && plain(hex)).then(|| format!("blobs/{alg}/{hex}"))
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!(
        "sha256:{}",
        hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_prefer_the_containerd_annotation() {
        let mut d = Descriptor {
            media_type: MEDIA_OCI_MANIFEST.into(),
            digest: sha256_digest(b"x"),
            size: 1,
            platform: None,
            annotations: BTreeMap::new(),
        };
        assert_eq!(d.image_name(), None);
        d.annotations
            .insert(ANNOTATION_REF_NAME.into(), "r.io/a:1".into());
        assert_eq!(d.image_name(), Some("r.io/a:1"));
        d.annotations
            .insert(ANNOTATION_CONTAINERD_NAME.into(), "r.io/b:2".into());
        assert_eq!(d.image_name(), Some("r.io/b:2"));
        assert!(d.is_manifest() && !d.is_index());
    }

    #[test]
    fn blob_paths() {
        let d = sha256_digest(b"abc");
        assert_eq!(
            blob_path(&d).unwrap(),
            "blobs/sha256/ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(blob_path("sha256:../x"), None);
        assert_eq!(blob_path("nocolon"), None);
        assert_eq!(blob_path("sha256:"), None);
    }
}
