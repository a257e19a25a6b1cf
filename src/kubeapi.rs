//! The Kubernetes API as a domain library (below `components/`): the
//! release mkectl pins and the client factory every in-process controller
//! (applier, CSR approver, join API's token mirror) builds its client with.

use std::path::{Path, PathBuf};

/// The Kubernetes release of the upstream binaries mkectl runs (the bundle
/// pin; `packaging/versions.yaml` must agree).
pub const KUBERNETES_VERSION: &str = "v1.32.8";

#[derive(Debug, thiserror::Error)]
pub enum KubeClientError {
    #[error("reading kubeconfig {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("kubeconfig {path} cannot be used")]
    Config {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("building a Kubernetes client from kubeconfig {path}")]
    Client {
        path: PathBuf,
        #[source]
        source: kube::Error,
    },
}

/// Builds a client from a kubeconfig file (a controller's admin kubeconfig).
pub async fn client_from_kubeconfig(path: &Path) -> Result<kube::Client, KubeClientError> {
    let path_buf = || path.to_path_buf();
    let kc = kube::config::Kubeconfig::read_from(path).map_err(|source| KubeClientError::Read {
        path: path_buf(),
        source,
    })?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .map_err(|source| KubeClientError::Config {
            path: path_buf(),
            source,
        })?;
    kube::Client::try_from(cfg).map_err(|source| KubeClientError::Client {
        path: path_buf(),
        source,
    })
}
