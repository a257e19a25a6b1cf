//! Every path of the PKI, derived from the pki directory alone, so components
//! build their flags from the same table `ensure` writes.

use std::path::{Path, PathBuf};

use super::ca::Ca;
use super::leaf::Leaf;

/// A certificate and its private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertKeyPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertKeyPaths {
    fn new(dir: &Path, stem: &str) -> Self {
        CertKeyPaths {
            cert: dir.join(format!("{stem}.crt")),
            key: dir.join(format!("{stem}.key")),
        }
    }
}

/// All files of the PKI (see the layout table in the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkiPaths {
    pub dir: PathBuf,
    /// `etcd/`: etcd CA and etcd server/peer certificates.
    pub etcd_dir: PathBuf,
    /// `konnectivity/`: konnectivity CA and server certificate.
    pub konnectivity_dir: PathBuf,

    pub ca: CertKeyPaths,
    pub etcd_ca: CertKeyPaths,
    pub front_proxy_ca: CertKeyPaths,
    pub konnectivity_ca: CertKeyPaths,

    pub apiserver: CertKeyPaths,
    pub apiserver_kubelet_client: CertKeyPaths,
    pub apiserver_etcd_client: CertKeyPaths,
    pub etcd_server: CertKeyPaths,
    pub etcd_peer: CertKeyPaths,
    pub front_proxy_client: CertKeyPaths,
    pub konnectivity_server: CertKeyPaths,
    pub admin: CertKeyPaths,
    pub controller_manager: CertKeyPaths,
    pub scheduler: CertKeyPaths,
    /// `kubelet-client.crt` / `.key` (only with [`super::PkiSpec::worker`]).
    pub kubelet_client: CertKeyPaths,
    /// `konnectivity/agent.crt` / `.key`: where a joined worker keeps its
    /// agent certificate too (`join::state::WorkerPaths`).
    pub konnectivity_agent: CertKeyPaths,

    /// Service-account token signing key (`--service-account-signing-key-file`,
    /// `--service-account-private-key-file`).
    pub sa_key: PathBuf,
    /// Its public half (`--service-account-key-file`).
    pub sa_pub: PathBuf,

    pub admin_kubeconfig: PathBuf,
    pub controller_manager_kubeconfig: PathBuf,
    pub scheduler_kubeconfig: PathBuf,
    /// `kubelet.conf`: the kubelet's kubeconfig (only with `worker`).
    pub kubelet_kubeconfig: PathBuf,
}

impl PkiPaths {
    pub fn new(dir: &Path) -> Self {
        let etcd_dir = dir.join("etcd");
        let konnectivity_dir = dir.join("konnectivity");
        PkiPaths {
            ca: CertKeyPaths::new(dir, "ca"),
            etcd_ca: CertKeyPaths::new(&etcd_dir, "ca"),
            front_proxy_ca: CertKeyPaths::new(dir, "front-proxy-ca"),
            konnectivity_ca: CertKeyPaths::new(&konnectivity_dir, "ca"),
            apiserver: CertKeyPaths::new(dir, "apiserver"),
            apiserver_kubelet_client: CertKeyPaths::new(dir, "apiserver-kubelet-client"),
            apiserver_etcd_client: CertKeyPaths::new(dir, "apiserver-etcd-client"),
            etcd_server: CertKeyPaths::new(&etcd_dir, "server"),
            etcd_peer: CertKeyPaths::new(&etcd_dir, "peer"),
            front_proxy_client: CertKeyPaths::new(dir, "front-proxy-client"),
            konnectivity_server: CertKeyPaths::new(&konnectivity_dir, "server"),
            admin: CertKeyPaths::new(dir, "admin"),
            controller_manager: CertKeyPaths::new(dir, "controller-manager"),
            scheduler: CertKeyPaths::new(dir, "scheduler"),
            kubelet_client: CertKeyPaths::new(dir, "kubelet-client"),
            konnectivity_agent: CertKeyPaths::new(&konnectivity_dir, "agent"),
            sa_key: dir.join("sa.key"),
            sa_pub: dir.join("sa.pub"),
            admin_kubeconfig: dir.join("admin.conf"),
            controller_manager_kubeconfig: dir.join("controller-manager.conf"),
            scheduler_kubeconfig: dir.join("scheduler.conf"),
            kubelet_kubeconfig: dir.join("kubelet.conf"),
            etcd_dir,
            konnectivity_dir,
            dir: dir.to_path_buf(),
        }
    }

    /// Certificate and key of one CA.
    pub fn ca(&self, ca: Ca) -> &CertKeyPaths {
        match ca {
            Ca::Cluster => &self.ca,
            Ca::Etcd => &self.etcd_ca,
            Ca::FrontProxy => &self.front_proxy_ca,
            Ca::Konnectivity => &self.konnectivity_ca,
        }
    }

    /// Certificate and key of one leaf.
    pub fn leaf(&self, leaf: Leaf) -> &CertKeyPaths {
        match leaf {
            Leaf::ApiServer => &self.apiserver,
            Leaf::ApiServerKubeletClient => &self.apiserver_kubelet_client,
            Leaf::ApiServerEtcdClient => &self.apiserver_etcd_client,
            Leaf::EtcdServer => &self.etcd_server,
            Leaf::EtcdPeer => &self.etcd_peer,
            Leaf::FrontProxyClient => &self.front_proxy_client,
            Leaf::KonnectivityServer => &self.konnectivity_server,
            Leaf::Admin => &self.admin,
            Leaf::ControllerManager => &self.controller_manager,
            Leaf::Scheduler => &self.scheduler,
            Leaf::KubeletClient => &self.kubelet_client,
            Leaf::KonnectivityAgent => &self.konnectivity_agent,
        }
    }

    /// The kubeconfig rendered from a leaf, for the four that have one.
    pub fn kubeconfig(&self, leaf: Leaf) -> Option<&Path> {
        match leaf {
            Leaf::Admin => Some(&self.admin_kubeconfig),
            Leaf::ControllerManager => Some(&self.controller_manager_kubeconfig),
            Leaf::Scheduler => Some(&self.scheduler_kubeconfig),
            Leaf::KubeletClient => Some(&self.kubelet_kubeconfig),
            _ => None,
        }
    }
}
