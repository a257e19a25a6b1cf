//! The node's directory layout (docs/design.md "Filesystem and ports"): everything
//! hangs off the data dir and the run dir so several nodes can share a host.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePaths {
    pub data_dir: PathBuf,
    pub run_dir: PathBuf,
    /// `--bin-dir`: searched first for component binaries.
    pub bin_dir: Option<PathBuf>,
}

impl NodePaths {
    pub fn new(data_dir: &Path, run_dir: &Path, bin_dir: Option<&Path>) -> Self {
        Self {
            data_dir: data_dir.to_path_buf(),
            run_dir: run_dir.to_path_buf(),
            bin_dir: bin_dir.map(Path::to_path_buf),
        }
    }

    /// `<data-dir>/pki` (0700).
    pub fn pki_dir(&self) -> PathBuf {
        self.data_dir.join("pki")
    }
    /// `<data-dir>/etcd` (0700): etcd's data directory.
    pub fn etcd_dir(&self) -> PathBuf {
        self.data_dir.join("etcd")
    }
    /// `<data-dir>/bin`: binaries staged from the bundle.
    pub fn staged_bin_dir(&self) -> PathBuf {
        self.data_dir.join("bin")
    }
    /// `<data-dir>/images`: image archives imported into containerd at
    /// worker start (staged there from the bundle, or put there by hand).
    pub fn images_dir(&self) -> PathBuf {
        self.data_dir.join("images")
    }
    /// `<data-dir>/manifests`: one subdirectory per stack.
    pub fn manifests_dir(&self) -> PathBuf {
        self.data_dir.join("manifests")
    }
    /// `<data-dir>/config`: generated component configuration files.
    pub fn generated_config_dir(&self) -> PathBuf {
        self.data_dir.join("config")
    }
    /// `<run-dir>/konnectivity-server.sock`: the gRPC frontend kube-apiserver
    /// dials through its egress selector.
    pub fn konnectivity_uds(&self) -> PathBuf {
        self.run_dir.join("konnectivity-server.sock")
    }
    /// `<run-dir>/konnectivity-http.sock`: the HTTP-CONNECT frontend (for
    /// operators and HTTP-CONNECT egress clients).
    pub fn konnectivity_http_uds(&self) -> PathBuf {
        self.run_dir.join("konnectivity-http.sock")
    }
    /// `<data-dir>/config/egress-selector.yaml`: kube-apiserver's
    /// EgressSelectorConfiguration.
    pub fn egress_selector_file(&self) -> PathBuf {
        self.generated_config_dir().join("egress-selector.yaml")
    }
    /// `<data-dir>/config/<component>.args`: the argv mkectl runs a kube
    /// component with, one flag per line, for operators to inspect.
    pub fn component_args_file(&self, component: &str) -> PathBuf {
        self.generated_config_dir()
            .join(format!("{component}.args"))
    }
    /// `<data-dir>/<component>/serving`: where kube-controller-manager and
    /// kube-scheduler keep their self-signed serving certificate (`--cert-dir`).
    pub fn component_cert_dir(&self, component: &str) -> PathBuf {
        self.data_dir.join(component).join("serving")
    }
    /// `<run-dir>/status.sock` (0600): `mkectl status` and `certs renew`
    /// talk to the running node over it.
    pub fn status_socket(&self) -> PathBuf {
        self.run_dir.join("status.sock")
    }
    /// `<run-dir>/mkectl.lock`: one mkectl per data/run dir pair.
    pub fn lock_file(&self) -> PathBuf {
        self.run_dir.join("mkectl.lock")
    }

    // Worker layout: containerd keeps its persistent store under the data dir
    // and everything that must not survive a reboot (state, sockets, runc
    // state) under the run dir, so several workers can share one host.

    /// `<data-dir>/containerd`: generated config and the persistent store.
    pub fn containerd_dir(&self) -> PathBuf {
        self.data_dir.join("containerd")
    }
    /// `<data-dir>/containerd/config.toml`: containerd's generated config.
    pub fn containerd_config_file(&self) -> PathBuf {
        self.containerd_dir().join("config.toml")
    }
    /// `<data-dir>/containerd/root`: images, snapshots, metadata (`root`).
    pub fn containerd_root(&self) -> PathBuf {
        self.containerd_dir().join("root")
    }
    /// `<run-dir>/containerd`: containerd's volatile files.
    pub fn containerd_run_dir(&self) -> PathBuf {
        self.run_dir.join("containerd")
    }
    /// `<run-dir>/containerd/state`: task bundles, rootfs mounts (`state`).
    pub fn containerd_state(&self) -> PathBuf {
        self.containerd_run_dir().join("state")
    }
    /// `<run-dir>/containerd/containerd.sock`: the gRPC (and CRI) socket.
    pub fn containerd_socket(&self) -> PathBuf {
        self.containerd_run_dir().join("containerd.sock")
    }
    /// `<run-dir>/containerd/containerd.sock.ttrpc`: the ttrpc socket shims call back on.
    pub fn containerd_ttrpc_socket(&self) -> PathBuf {
        self.containerd_run_dir().join("containerd.sock.ttrpc")
    }
    /// `<run-dir>/containerd/runc`: runc's state root for CRI containers.
    pub fn containerd_runc_root(&self) -> PathBuf {
        self.containerd_run_dir().join("runc")
    }
    /// `<data-dir>/kubelet` (0700): kubelet's generated files.
    pub fn kubelet_dir(&self) -> PathBuf {
        self.data_dir.join("kubelet")
    }
    /// `<data-dir>/kubelet/config.yaml`: the KubeletConfiguration file.
    pub fn kubelet_config_file(&self) -> PathBuf {
        self.kubelet_dir().join("config.yaml")
    }
    /// `<data-dir>/kubelet/bootstrap-kubelet.conf`: the bootstrap-token
    /// kubeconfig the join writes (0600).
    pub fn kubelet_bootstrap_kubeconfig(&self) -> PathBuf {
        self.kubelet_dir().join("bootstrap-kubelet.conf")
    }
    /// `<data-dir>/kubelet/kubelet.conf`: written by kubelet after TLS bootstrap.
    pub fn kubelet_kubeconfig(&self) -> PathBuf {
        self.kubelet_dir().join("kubelet.conf")
    }
    /// `<data-dir>/kubelet/pki` (0700): kubelet's client and serving certificates.
    pub fn kubelet_cert_dir(&self) -> PathBuf {
        self.kubelet_dir().join("pki")
    }
    /// `<data-dir>/kubelet/root`: kubelet's `--root-dir` (pods, volumes, plugins).
    pub fn kubelet_root_dir(&self) -> PathBuf {
        self.kubelet_dir().join("root")
    }
}

/// The host's first global (non-loopback, non-link-local) IPv4 address, from
/// the interface list; no packet is sent.
pub fn detect_node_address() -> Option<IpAddr> {
    let addrs = nix::ifaddrs::getifaddrs().ok()?;
    for ifa in addrs {
        if !ifa.flags.contains(nix::net::if_::InterfaceFlags::IFF_UP) {
            continue;
        }
        let Some(sin) = ifa.address.as_ref().and_then(|a| a.as_sockaddr_in()) else {
            continue;
        };
        let ip = sin.ip();
        if !ip.is_loopback() && !ip.is_link_local() && !ip.is_unspecified() {
            return Some(IpAddr::V4(ip));
        }
    }
    None
}
