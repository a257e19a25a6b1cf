//! kube-scheduler as a supervised child: its own kubeconfig (CN
//! `system:kube-scheduler`) for the API and for delegated authentication and
//! authorization, HTTPS on 127.0.0.1:10259 only with a self-signed certificate
//! in `<data-dir>/kube-scheduler/serving`, leader election only with more than
//! one controller (same reasoning as the controller-manager), profiling off.
//! Readiness is `GET /healthz` pinning that certificate.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::kube_common::{self_signed_probe, Flags, LocalKubeComponent, LocalKubeSettings};
use super::ComponentError;
use crate::config::{ClusterConfig, NodePaths};
use crate::https_probe::HttpsProbe;
use crate::pki::PkiPaths;

pub const NAME: &str = "kube-scheduler";
/// Upstream's default secure port.
pub const DEFAULT_SECURE_PORT: u16 = 10259;
/// Loopback only: nothing off the node needs this port.
pub const BIND_ADDRESS: &str = "127.0.0.1";
pub const STOP_GRACE: Duration = Duration::from_secs(10);
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct KubeSchedulerSettings {
    pub kubeconfig: PathBuf,
    /// `--cert-dir`: its self-signed serving certificate lives here.
    pub cert_dir: PathBuf,
    pub controller_count: usize,
    pub extra_args: BTreeMap<String, String>,
}

impl KubeSchedulerSettings {
    pub fn from_config(
        cfg: &ClusterConfig,
        paths: &NodePaths,
        pki: &PkiPaths,
        controller_count: usize,
    ) -> Self {
        Self {
            kubeconfig: pki.scheduler_kubeconfig.clone(),
            cert_dir: paths.component_cert_dir(NAME),
            controller_count,
            extra_args: cfg.spec.extra_args.kube_scheduler.clone(),
        }
    }

    pub fn leader_elect(&self) -> bool {
        self.controller_count > 1
    }

    /// The final flags, `extraArgs` applied.
    pub fn flags(&self) -> Flags {
        let mut f = Flags::new();
        f.set_path("kubeconfig", &self.kubeconfig);
        f.set_path("authentication-kubeconfig", &self.kubeconfig);
        f.set_path("authorization-kubeconfig", &self.kubeconfig);
        f.set("bind-address", BIND_ADDRESS);
        f.set("secure-port", DEFAULT_SECURE_PORT.to_string());
        f.set_path("cert-dir", &self.cert_dir);
        f.set("tls-min-version", crate::tlspolicy::MIN_VERSION);
        f.set("tls-cipher-suites", crate::tlspolicy::cipher_suites_flag());
        f.set("leader-elect", self.leader_elect().to_string());
        f.set("profiling", "false");
        f.merge_extra(&self.extra_args);
        f
    }

    pub fn args(&self) -> Vec<String> {
        self.flags().to_args()
    }

    pub fn readiness_probe(&self) -> Result<HttpsProbe, ComponentError> {
        self_signed_probe(NAME, &self.flags(), DEFAULT_SECURE_PORT, &self.cert_dir)
    }
}

/// The component: the shared local-kube implementation with these settings.
pub type KubeScheduler = LocalKubeComponent<KubeSchedulerSettings>;

impl LocalKubeSettings for KubeSchedulerSettings {
    const NAME: &'static str = NAME;
    const LEAVES: &'static [crate::pki::Leaf] = &[crate::pki::Leaf::Scheduler];
    const STOP_GRACE: Duration = STOP_GRACE;
    const READY_TIMEOUT: Duration = READY_TIMEOUT;
    fn args(&self) -> Vec<String> {
        KubeSchedulerSettings::args(self)
    }
    fn readiness_probe(&self) -> Result<HttpsProbe, ComponentError> {
        KubeSchedulerSettings::readiness_probe(self)
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
    use std::path::Path;

    #[test]
    fn flags() {
        let paths = NodePaths::new(Path::new("/d"), Path::new("/r"), None);
        let pki = PkiPaths::new(&paths.pki_dir());
        let mut cfg = ClusterConfig::default();
        cfg.spec
            .extra_args
            .kube_scheduler
            .insert("v".into(), "2".into());
        let s = KubeSchedulerSettings::from_config(&cfg, &paths, &pki, 1);
        let f = s.flags();
        assert_eq!(f.get("kubeconfig"), Some("/d/pki/scheduler.conf"));
        assert_eq!(
            f.get("authorization-kubeconfig"),
            Some("/d/pki/scheduler.conf")
        );
        assert_eq!(f.get("bind-address"), Some("127.0.0.1"));
        assert_eq!(f.get("leader-elect"), Some("false"));
        assert_eq!(f.get("profiling"), Some("false"));
        assert_eq!(f.get("v"), Some("2"));
        assert_eq!(
            s.readiness_probe().unwrap().addr,
            "127.0.0.1:10259".parse().unwrap()
        );
        let ha = KubeSchedulerSettings::from_config(&cfg, &paths, &pki, 3);
        assert_eq!(ha.flags().get("leader-elect"), Some("true"));
    }
}
