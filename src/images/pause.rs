//! The pod sandbox ("pause") image, made by the worker itself.
//!
//! # Why it is packed at worker start
//!
//! containerd's CRI plugin pulls `sandbox_image` before the first pod on a
//! node unless it already has it; here no registry is reachable, and a
//! production node should not depend on one for its most basic image. The
//! image's *name* is `spec.worker.sandboxImage` of the node's own config,
//! which is only known when the worker starts (and may differ per node), so
//! the image cannot be packed once at bundle time under a fixed name.
//! Instead the bundle (or `--bin-dir`) carries mkectl's small static pause
//! program (`packaging/pause/`, built by `packaging/build-upstream.sh`), and
//! the worker packs it into an OCI image under the configured name right
//! before importing. Packing is deterministic, so the digest is the same at
//! every start and an image already present is not imported again. The
//! same name is passed to containerd (`sandbox_image`) and to kubelet
//! (`--pod-infra-container-image`, which keeps its image garbage collector
//! away from it), so the two always agree.
//!
//! An archive in `<data-dir>/images/` that carries an image under the
//! sandbox name wins: the operator chose that image on purpose.

use std::path::{Path, PathBuf};

use super::oci::{self, FileSpec, PackSpec, Packed};
use super::{reference, ImagesError};
use crate::config::NodePaths;

/// File name of the pause program among the staged binaries.
pub const PAUSE_BINARY: &str = "pause";
/// Where the program sits in the image (what upstream's image uses too).
pub const PAUSE_PATH: &str = "/pause";
/// The sandbox process runs unprivileged, as in upstream's image.
pub const PAUSE_USER: &str = "65535:65535";

/// The pause program: in `--bin-dir`, else among the binaries staged from
/// the bundle (`<data-dir>/bin`). `PATH` is not searched: a program called
/// `pause` there is not necessarily ours.
pub fn find_binary(paths: &NodePaths) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    paths
        .bin_dir
        .iter()
        .cloned()
        .chain(std::iter::once(paths.staged_bin_dir()))
        .map(|d| d.join(PAUSE_BINARY))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The image spec: `binary` as `/pause`, its entrypoint, under `name`
/// (normalised the way CRI looks the sandbox image up).
pub fn spec(name: &str, binary: &Path) -> Result<PackSpec, ImagesError> {
    let name = reference::normalize(name).map_err(|e| ImagesError::Spec {
        field: "name",
        detail: e.to_string(),
    })?;
    let mut s = PackSpec::new(
        &name,
        vec![FileSpec {
            source: binary.to_path_buf(),
            dest: PAUSE_PATH.into(),
            mode: 0o755,
        }],
    );
    s.entrypoint = vec![PAUSE_PATH.into()];
    s.user = Some(PAUSE_USER.into());
    s.workdir = Some("/".into());
    Ok(s)
}

/// Packs the pause image in memory (a couple of MiB); returns the archive
/// and what was packed.
pub fn pack(name: &str, binary: &Path) -> Result<(Vec<u8>, Packed), ImagesError> {
    let s = spec(name, binary)?;
    let mut out = Vec::new();
    let packed = oci::pack(&s, &mut out)?;
    Ok((out, packed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn found_in_bin_dir_or_staged_not_path() {
        let d = tempfile::tempdir().unwrap();
        let paths = NodePaths::new(&d.path().join("data"), &d.path().join("run"), None);
        assert_eq!(find_binary(&paths), None);
        let staged = paths.staged_bin_dir();
        fs::create_dir_all(&staged).unwrap();
        let p = staged.join(PAUSE_BINARY);
        fs::write(&p, b"x").unwrap();
        assert_eq!(find_binary(&paths), None, "not executable");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(find_binary(&paths), Some(p.clone()));
        let own = d.path().join("own");
        fs::create_dir(&own).unwrap();
        let q = own.join(PAUSE_BINARY);
        fs::write(&q, b"y").unwrap();
        fs::set_permissions(&q, fs::Permissions::from_mode(0o755)).unwrap();
        let paths = NodePaths::new(&d.path().join("data"), &d.path().join("run"), Some(&own));
        assert_eq!(find_binary(&paths), Some(q));
    }

    #[test]
    fn packed_under_the_normalised_name_with_a_stable_digest() {
        let d = tempfile::tempdir().unwrap();
        let bin = d.path().join("pause");
        fs::write(&bin, b"\x7fELF not really").unwrap();
        let (a, pa) = pack("registry.k8s.io/pause:3.10", &bin).unwrap();
        let (b, pb) = pack("registry.k8s.io/pause:3.10", &bin).unwrap();
        assert_eq!(a, b);
        assert_eq!(pa.name, "registry.k8s.io/pause:3.10");
        assert_eq!(pa.manifest_digest, pb.manifest_digest);
        let (_, pc) = pack("pause:3.10", &bin).unwrap();
        assert_eq!(pc.name, "docker.io/library/pause:3.10");
        // The name lives in index.json only: same content, same digest.
        assert_eq!(pc.manifest_digest, pa.manifest_digest);
    }
}
