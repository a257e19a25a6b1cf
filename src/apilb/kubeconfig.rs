//! Points a node's kubeconfigs (the kubelet's bootstrap kubeconfig from the
//! join, and the kubeconfig kubelet writes after TLS bootstrap, which
//! kube-proxy shares) at the node-local balancer, so every apiserver client
//! on the node survives the loss of the controller it joined through.
//!
//! Only `clusters[].cluster.server` changes; credentials, CA data and file
//! paths are kept as they are. A file that already points there is left
//! untouched (no rewrite, no mtime change).

use std::path::{Path, PathBuf};

use crate::fsutil::{self, FsError, PRIVATE_FILE_MODE};

#[derive(Debug, thiserror::Error)]
pub enum KubeconfigError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("{path}: not a kubeconfig: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: has no clusters[].cluster.server to point at the load balancer")]
    NoServer { path: PathBuf },
    #[error("{path}: cannot render: {message}")]
    Render { path: PathBuf, message: String },
}

/// `https://127.0.0.1:<port>`: the balancer's address for a kubeconfig.
pub fn local_server(port: u16) -> String {
    format!("https://127.0.0.1:{port}")
}

/// Sets every cluster's `server` in the kubeconfig at `path` to `server`.
/// Returns whether the file changed; a missing file is `Ok(false)` (kubelet
/// writes its kubeconfig only after TLS bootstrap, from the bootstrap one).
pub fn point_at(path: &Path, server: &str) -> Result<bool, KubeconfigError> {
    if !path.exists() {
        return Ok(false);
    }
    let bytes = fsutil::read(path)?;
    let text = String::from_utf8_lossy(&bytes);
    let mut doc: serde_json::Value =
        serde_saphyr::from_str(&text).map_err(|e| KubeconfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    let clusters = doc
        .get_mut("clusters")
        .and_then(|c| c.as_array_mut())
        .filter(|c| !c.is_empty())
        .ok_or_else(|| KubeconfigError::NoServer {
            path: path.to_path_buf(),
        })?;
    let mut changed = false;
    for c in clusters.iter_mut() {
        let Some(cluster) = c.get_mut("cluster").and_then(|c| c.as_object_mut()) else {
            return Err(KubeconfigError::NoServer {
                path: path.to_path_buf(),
            });
        };
        if cluster.get("server").and_then(|s| s.as_str()) != Some(server) {
            cluster.insert("server".into(), server.into());
            changed = true;
        }
    }
    if !changed {
        return Ok(false);
    }
    // Plain scalars for the long base64 values, as kubectl writes them.
    let options = serde_saphyr::ser_options! { prefer_block_scalars: false };
    let out = serde_saphyr::to_string_with_options(&doc, options).map_err(|e| {
        KubeconfigError::Render {
            path: path.to_path_buf(),
            message: e.to_string(),
        }
    })?;
    fsutil::write_atomic(path, out.as_bytes(), PRIVATE_FILE_MODE)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBECONFIG: &str = "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    certificate-authority-data: QUJD\n    server: https://192.0.2.10:6443\n  name: default-cluster\ncontexts:\n- context:\n    cluster: default-cluster\n    namespace: default\n    user: default-auth\n  name: default-context\ncurrent-context: default-context\nusers:\n- name: default-auth\n  user:\n    client-certificate: /var/lib/mke/kubelet/pki/kubelet-client-current.pem\n    client-key: /var/lib/mke/kubelet/pki/kubelet-client-current.pem\n";

    #[test]
    fn rewrites_only_the_server_once() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("kubelet.conf");
        std::fs::write(&p, KUBECONFIG).unwrap();
        assert!(point_at(&p, &local_server(7443)).unwrap());
        let v: serde_json::Value =
            serde_saphyr::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        assert_eq!(
            v["clusters"][0]["cluster"]["server"],
            "https://127.0.0.1:7443"
        );
        assert_eq!(
            v["clusters"][0]["cluster"]["certificate-authority-data"],
            "QUJD"
        );
        assert_eq!(
            v["users"][0]["user"]["client-certificate"],
            "/var/lib/mke/kubelet/pki/kubelet-client-current.pem"
        );
        assert_eq!(v["current-context"], "default-context");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Already there: nothing written.
        assert!(!point_at(&p, &local_server(7443)).unwrap());
    }

    #[test]
    fn missing_file_is_fine_bad_file_is_named() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("absent.conf");
        assert!(!point_at(&p, &local_server(7443)).unwrap());
        std::fs::write(&p, "apiVersion: v1\nkind: Config\nusers: []\n").unwrap();
        let e = point_at(&p, &local_server(7443)).unwrap_err().to_string();
        assert!(e.contains("absent.conf") && e.contains("server"), "{e}");
        std::fs::write(&p, "[unclosed").unwrap();
        let e = point_at(&p, &local_server(7443)).unwrap_err().to_string();
        assert!(
            e.contains("absent.conf") && e.contains("not a kubeconfig"),
            "{e}"
        );
    }
}
