//! kube-controller-manager as a supervised child.
//!
//! * Talks to the apiserver with its own kubeconfig (CN
//!   `system:kube-controller-manager`), which also serves for delegated
//!   authentication and authorization of its own HTTPS port.
//! * Signs CSRs with the cluster CA (`--cluster-signing-*`), signs
//!   service-account tokens with `sa.key`, and runs the `bootstrapsigner` and
//!   `tokencleaner` controllers (off upstream by default) that kubelet TLS
//!   bootstrap with join tokens needs.
//! * Leader election only when more than one controller runs: with a single
//!   controller it would only add lease traffic and a 15 s failover wait after
//!   every restart. A controller joining later must restart this component
//!   with the new count.
//! * Serves HTTPS on 127.0.0.1:10257 only, with a self-signed certificate it
//!   generates into `<data-dir>/kube-controller-manager/serving`; readiness is
//!   `GET /healthz` pinning that certificate (see [`crate::https_probe`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::kube_common::{self_signed_probe, Flags, LocalKubeComponent, LocalKubeSettings};
use super::ComponentError;
use crate::config::{ClusterConfig, NodePaths};
use crate::https_probe::HttpsProbe;
use crate::pki::PkiPaths;

pub const NAME: &str = "kube-controller-manager";
/// Upstream's default secure port.
pub const DEFAULT_SECURE_PORT: u16 = 10257;
/// Loopback only: nothing off the node needs this port.
pub const BIND_ADDRESS: &str = "127.0.0.1";
/// Upstream defaults plus the two bootstrap-token controllers.
pub const CONTROLLERS: &str = "*,bootstrapsigner,tokencleaner";
/// It exits quickly; controllers stop with their informers.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Everything the controller-manager's flags are built from.
#[derive(Debug, Clone)]
pub struct KubeControllerManagerSettings {
    pub pki: PkiPaths,
    /// `--cert-dir`: its self-signed serving certificate lives here.
    pub cert_dir: PathBuf,
    pub cluster_name: String,
    pub pod_cidr: String,
    pub service_cidr: String,
    /// Controllers in the cluster; leader election only above one.
    pub controller_count: usize,
    pub extra_args: BTreeMap<String, String>,
}

impl KubeControllerManagerSettings {
    pub fn from_config(
        cfg: &ClusterConfig,
        paths: &NodePaths,
        pki: &PkiPaths,
        controller_count: usize,
    ) -> Self {
        Self {
            pki: pki.clone(),
            cert_dir: paths.component_cert_dir(NAME),
            cluster_name: cfg.metadata.name.clone(),
            pod_cidr: cfg.spec.network.pod_cidr.to_string(),
            service_cidr: cfg.spec.network.service_cidr.to_string(),
            controller_count,
            extra_args: cfg.spec.extra_args.kube_controller_manager.clone(),
        }
    }

    pub fn leader_elect(&self) -> bool {
        self.controller_count > 1
    }

    /// The final flags, `extraArgs` applied.
    pub fn flags(&self) -> Flags {
        let pki = &self.pki;
        let kubeconfig = &pki.controller_manager_kubeconfig;
        let mut f = Flags::new();
        f.set_path("kubeconfig", kubeconfig);
        f.set_path("authentication-kubeconfig", kubeconfig);
        f.set_path("authorization-kubeconfig", kubeconfig);
        f.set_path("client-ca-file", &pki.ca.cert);
        f.set_path("requestheader-client-ca-file", &pki.front_proxy_ca.cert);
        f.set("bind-address", BIND_ADDRESS);
        f.set("secure-port", DEFAULT_SECURE_PORT.to_string());
        f.set_path("cert-dir", &self.cert_dir);
        f.set("tls-min-version", crate::tlspolicy::MIN_VERSION);
        f.set("tls-cipher-suites", crate::tlspolicy::cipher_suites_flag());
        f.set("profiling", "false");
        f.set("cluster-name", self.cluster_name.clone());
        f.set_path("cluster-signing-cert-file", &pki.ca.cert);
        f.set_path("cluster-signing-key-file", &pki.ca.key);
        f.set_path("root-ca-file", &pki.ca.cert);
        f.set_path("service-account-private-key-file", &pki.sa_key);
        f.set("use-service-account-credentials", "true");
        f.set("controllers", CONTROLLERS);
        f.set("leader-elect", self.leader_elect().to_string());
        f.set("allocate-node-cidrs", "true");
        f.set("cluster-cidr", self.pod_cidr.clone());
        f.set("service-cluster-ip-range", self.service_cidr.clone());
        f.merge_extra(&self.extra_args);
        f
    }

    pub fn args(&self) -> Vec<String> {
        self.flags().to_args()
    }

    /// `GET /healthz` on its secure port, pinning its serving certificate.
    pub fn readiness_probe(&self) -> Result<HttpsProbe, ComponentError> {
        self_signed_probe(NAME, &self.flags(), DEFAULT_SECURE_PORT, &self.cert_dir)
    }
}

/// The component: the shared local-kube implementation with these settings.
pub type KubeControllerManager = LocalKubeComponent<KubeControllerManagerSettings>;

impl LocalKubeSettings for KubeControllerManagerSettings {
    const NAME: &'static str = NAME;
    const LEAVES: &'static [crate::pki::Leaf] = &[crate::pki::Leaf::ControllerManager];
    const STOP_GRACE: Duration = STOP_GRACE;
    const READY_TIMEOUT: Duration = READY_TIMEOUT;
    fn args(&self) -> Vec<String> {
        KubeControllerManagerSettings::args(self)
    }
    fn readiness_probe(&self) -> Result<HttpsProbe, ComponentError> {
        KubeControllerManagerSettings::readiness_probe(self)
    }
    fn cert_dir(&self) -> &std::path::Path {
        &self.cert_dir
    }
    fn controller_count(&self) -> usize {
        self.controller_count
    }
    fn set_controller_count(&mut self, n: usize) {
        self.controller_count = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::https_probe::ServerTrust;
    use std::path::Path;

    fn settings(count: usize) -> KubeControllerManagerSettings {
        let paths = NodePaths::new(Path::new("/d"), Path::new("/r"), None);
        let pki = PkiPaths::new(&paths.pki_dir());
        KubeControllerManagerSettings::from_config(&ClusterConfig::default(), &paths, &pki, count)
    }

    #[test]
    fn flags_sign_with_cluster_ca_and_bind_loopback() {
        let f = settings(1).flags();
        let get = |k| f.get(k).unwrap_or_else(|| panic!("--{k} missing"));
        assert_eq!(get("bind-address"), "127.0.0.1");
        assert_eq!(get("cluster-signing-cert-file"), "/d/pki/ca.crt");
        assert_eq!(get("cluster-signing-key-file"), "/d/pki/ca.key");
        assert_eq!(get("service-account-private-key-file"), "/d/pki/sa.key");
        assert_eq!(get("controllers"), "*,bootstrapsigner,tokencleaner");
        assert_eq!(get("leader-elect"), "false");
        assert_eq!(get("profiling"), "false");
        assert_eq!(get("cluster-cidr"), "10.244.0.0/16");
        assert_eq!(get("allocate-node-cidrs"), "true");
        assert_eq!(get("kubeconfig"), "/d/pki/controller-manager.conf");
        assert_eq!(get("cert-dir"), "/d/kube-controller-manager/serving");
        assert_eq!(settings(2).flags().get("leader-elect"), Some("true"));
    }

    #[test]
    fn probe_follows_extra_args() {
        let mut s = settings(1);
        let p = s.readiness_probe().unwrap();
        assert_eq!(p.addr, "127.0.0.1:10257".parse().unwrap());
        assert_eq!(
            p.trust,
            ServerTrust::PinnedCertFile(
                "/d/kube-controller-manager/serving/kube-controller-manager.crt".into()
            )
        );
        s.extra_args.insert("secure-port".into(), "11000".into());
        s.extra_args
            .insert("tls-cert-file".into(), "/etc/kcm.crt".into());
        let p = s.readiness_probe().unwrap();
        assert_eq!(p.addr.port(), 11000);
        assert_eq!(p.trust, ServerTrust::PinnedCertFile("/etc/kcm.crt".into()));
        s.extra_args.insert("secure-port".into(), "0".into());
        assert!(s.readiness_probe().is_err());
    }
}
