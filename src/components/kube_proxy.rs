//! kube-proxy on a worker: a host process supervised by mkectl (as k3s runs
//! it), not a DaemonSet. That keeps a node's Service routing independent of
//! an image registry (nothing to pull offline), of the pod network (it runs
//! before any pod can) and of the scheduler.
//!
//! # Identity
//!
//! kube-proxy uses the kubelet's own kubeconfig (`<data-dir>/kubelet/kubelet.conf`,
//! written by kubelet after TLS bootstrap with the join's bootstrap token,
//! and rotated by kubelet): it acts as `system:node:<name>` in group
//! `system:nodes`. The Node authorizer already lets nodes read Services and
//! Nodes and write Events; the bootstrap RBAC stack binds the upstream
//! `system:node-proxier` role to `system:nodes` for the EndpointSlices. So
//! no second credential has to be issued, stored or rotated per node, and a
//! node's kube-proxy can do nothing its kubelet could not read anyway.
//!
//! # Settings
//!
//! iptables mode; `clusterCIDR` (which traffic is local to pods) is the
//! cluster's pod CIDR from the join; the node name matches the kubelet's.
//! `conntrack.maxPerCore: 0` leaves the host's conntrack table size (a
//! host-wide sysctl, not writable from a network namespace) as the operator
//! set it.
//!
//! | what | where |
//! |---|---|
//! | KubeProxyConfiguration | `<data-dir>/kube-proxy/config.yaml` |
//! | healthz (plain HTTP, for load balancers) | `<node address>:<kubeProxyHealthzPort>` |
//! | metrics | `127.0.0.1:<kubeProxyMetricsPort>` |
//!
//! Readiness is kube-proxy's `/healthz`.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{binary, Component, ComponentError};
use crate::config::NodePaths;
use crate::fsutil;
use crate::fsutil::absolute;
use crate::supervisor::{ChildSpec, Supervised};

pub const NAME: &str = "kube-proxy";
pub const CONFIG_API_VERSION: &str = "kubeproxy.config.k8s.io/v1alpha1";
pub const CONFIG_KIND: &str = "KubeProxyConfiguration";
/// The one mode every kernel with netfilter supports.
pub const MODE: &str = "iptables";
/// Upstream's healthz port (load balancers probe it).
pub const DEFAULT_HEALTHZ_PORT: u16 = crate::config::defaults::KUBE_PROXY_HEALTHZ_PORT;
/// Upstream's metrics port.
pub const DEFAULT_METRICS_PORT: u16 = crate::config::defaults::KUBE_PROXY_METRICS_PORT;
/// Metrics stay on the node.
pub const METRICS_BIND_ADDRESS: &str = "127.0.0.1";
/// 0 = leave `nf_conntrack_max` alone (see the module docs).
pub const CONNTRACK_MAX_PER_CORE: i32 = 0;
/// kube-proxy removes nothing on exit; it stops at once.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// The first sync needs the apiserver's Services and EndpointSlices.
pub const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// One healthz probe may take this long.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Directory under the data dir.
pub const DIR: &str = "kube-proxy";

#[derive(Debug, thiserror::Error)]
pub enum KubeProxyError {
    #[error("kube-proxy setting `{field}`: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("cannot render the kube-proxy config: {0}")]
    Render(String),
    #[error(transparent)]
    Fs(#[from] fsutil::FsError),
}

/// Everything the kube-proxy component needs.
#[derive(Debug, Clone, PartialEq)]
pub struct KubeProxySettings {
    pub node_name: String,
    pub node_ip: IpAddr,
    /// The cluster's pod CIDR (`clusterCIDR`).
    pub cluster_cidr: String,
    /// The kubelet's kubeconfig (node credentials, see the module docs).
    pub kubeconfig: PathBuf,
    pub config_file: PathBuf,
    pub healthz_port: u16,
    pub metrics_port: u16,
}

impl KubeProxySettings {
    pub fn for_node(
        paths: &NodePaths,
        node_name: &str,
        node_ip: IpAddr,
        cluster_cidr: &str,
    ) -> Self {
        Self {
            node_name: node_name.into(),
            node_ip,
            cluster_cidr: cluster_cidr.into(),
            kubeconfig: absolute(&paths.kubelet_kubeconfig()),
            config_file: absolute(&paths.data_dir.join(DIR).join("config.yaml")),
            healthz_port: DEFAULT_HEALTHZ_PORT,
            metrics_port: DEFAULT_METRICS_PORT,
        }
    }

    /// Checks what kube-proxy would refuse, naming our setting.
    pub fn validate(&self) -> Result<(), KubeProxyError> {
        let invalid = |field, message: String| KubeProxyError::Invalid { field, message };
        let (net, len) = self.cluster_cidr.split_once('/').ok_or_else(|| {
            invalid(
                "cluster_cidr",
                format!("{:?} is not a CIDR", self.cluster_cidr),
            )
        })?;
        let net: IpAddr = net.parse().map_err(|_| {
            invalid(
                "cluster_cidr",
                format!("{:?} is not a CIDR", self.cluster_cidr),
            )
        })?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        if !len.parse::<u8>().is_ok_and(|l| l <= max) {
            return Err(invalid(
                "cluster_cidr",
                format!("{:?}: bad prefix length", self.cluster_cidr),
            ));
        }
        if self.healthz_port == 0
            || self.metrics_port == 0
            || self.healthz_port == self.metrics_port
        {
            return Err(invalid(
                "healthz_port",
                "healthz and metrics ports must be distinct and non-zero".into(),
            ));
        }
        Ok(())
    }

    pub fn healthz_address(&self) -> SocketAddr {
        SocketAddr::new(self.node_ip, self.healthz_port)
    }

    /// The generated KubeProxyConfiguration.
    pub fn config(&self) -> KubeProxyConfiguration {
        KubeProxyConfiguration {
            api_version: CONFIG_API_VERSION.into(),
            kind: CONFIG_KIND.into(),
            client_connection: ClientConnection {
                kubeconfig: self.kubeconfig.display().to_string(),
            },
            hostname_override: self.node_name.clone(),
            bind_address: self.node_ip.to_string(),
            healthz_bind_address: self.healthz_address().to_string(),
            metrics_bind_address: format!("{METRICS_BIND_ADDRESS}:{}", self.metrics_port),
            mode: MODE.into(),
            cluster_cidr: self.cluster_cidr.clone(),
            conntrack: Conntrack {
                max_per_core: CONNTRACK_MAX_PER_CORE,
            },
        }
    }

    pub fn render_config(&self) -> Result<String, KubeProxyError> {
        serde_saphyr::to_string(&self.config()).map_err(|e| KubeProxyError::Render(e.to_string()))
    }

    /// The argv (without the program): everything else is in the file.
    pub fn args(&self) -> Vec<String> {
        vec![format!("--config={}", self.config_file.display())]
    }

    /// Writes the config file; starts nothing.
    pub fn write_files(&self) -> Result<(), KubeProxyError> {
        self.validate()?;
        if let Some(parent) = self.config_file.parent() {
            fsutil::ensure_dir(parent, fsutil::PRIVATE_DIR_MODE)?;
        }
        fsutil::write_atomic(
            &self.config_file,
            self.render_config()?.as_bytes(),
            fsutil::PRIVATE_FILE_MODE,
        )?;
        Ok(())
    }
}

// The KubeProxyConfiguration (kubeproxy.config.k8s.io/v1alpha1) fields mkectl
// writes, with upstream's names; unknown fields refused on the way back in.

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KubeProxyConfiguration {
    pub api_version: String,
    pub kind: String,
    pub client_connection: ClientConnection,
    pub hostname_override: String,
    pub bind_address: String,
    pub healthz_bind_address: String,
    pub metrics_bind_address: String,
    pub mode: String,
    #[serde(rename = "clusterCIDR")]
    pub cluster_cidr: String,
    pub conntrack: Conntrack,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConnection {
    pub kubeconfig: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Conntrack {
    pub max_per_core: i32,
}

pub struct KubeProxy {
    settings: KubeProxySettings,
    paths: NodePaths,
    child: Option<Supervised>,
}

impl KubeProxy {
    pub fn new(settings: KubeProxySettings, paths: NodePaths) -> Self {
        Self {
            settings,
            paths,
            child: None,
        }
    }

    pub fn settings(&self) -> &KubeProxySettings {
        &self.settings
    }
}

#[async_trait::async_trait]
impl Component for KubeProxy {
    fn name(&self) -> &'static str {
        NAME
    }

    fn supervised(&self) -> Option<&Supervised> {
        self.child.as_ref()
    }

    async fn init(&mut self) -> Result<(), ComponentError> {
        self.settings
            .write_files()
            .map_err(|e| ComponentError::during(NAME, "writing its configuration", e))
    }

    /// Started after the kubelet is ready, which is after TLS bootstrap
    /// wrote the kubeconfig this needs.
    async fn start(&mut self) -> Result<(), ComponentError> {
        if self.child.is_some() {
            return Ok(());
        }
        if !self.settings.kubeconfig.is_file() {
            return Err(ComponentError::MissingFile {
                component: NAME,
                path: self.settings.kubeconfig.clone(),
                note: ": kube-proxy uses the kubelet's credentials, which kubelet writes after TLS bootstrap",
            });
        }
        let program = binary::find(NAME, &self.paths)?;
        let spec = ChildSpec {
            name: NAME.into(),
            program,
            args: self.settings.args(),
            env: Vec::new(),
            cwd: None,
            run_dir: self.paths.run_dir.clone(),
            stop_grace: STOP_GRACE,
            backoff: Default::default(),
        };
        self.child = Some(super::start_supervised(NAME, spec).await?);
        Ok(())
    }

    async fn ready(&self) -> Result<(), ComponentError> {
        super::kubelet::probe_http_healthz(self.settings.healthz_address(), PROBE_TIMEOUT)
            .await
            .map_err(|e| ComponentError::NotReady {
                component: NAME,
                message: crate::telemetry::Chain(&e).to_string(),
            })
    }

    async fn stop(&mut self) -> Result<(), ComponentError> {
        if let Some(child) = self.child.take() {
            child.stop().await;
        }
        Ok(())
    }

    fn ready_timeout(&self) -> Duration {
        READY_TIMEOUT
    }
}

/// The config file path a node uses (for `reset` and tests).
pub fn config_file(data_dir: &Path) -> PathBuf {
    data_dir.join(DIR).join("config.yaml")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> KubeProxySettings {
        let paths = NodePaths::new(Path::new("/d"), Path::new("/r"), None);
        KubeProxySettings::for_node(
            &paths,
            "worker-1",
            "198.51.100.11".parse().unwrap(),
            "10.244.0.0/16",
        )
    }

    #[test]
    fn config_uses_the_kubelet_identity_and_the_pod_cidr() {
        let s = settings();
        let c = s.config();
        assert_eq!(c.client_connection.kubeconfig, "/d/kubelet/kubelet.conf");
        assert_eq!(c.hostname_override, "worker-1");
        assert_eq!(c.mode, "iptables");
        assert_eq!(c.cluster_cidr, "10.244.0.0/16");
        assert_eq!(c.healthz_bind_address, "198.51.100.11:10256");
        assert_eq!(c.metrics_bind_address, "127.0.0.1:10249");
        assert_eq!(c.conntrack.max_per_core, 0);
        let yaml = s.render_config().unwrap();
        assert!(yaml.contains("clusterCIDR: 10.244.0.0/16"), "{yaml}");
        let back: KubeProxyConfiguration = serde_saphyr::from_str(&yaml).unwrap();
        assert_eq!(back, c);
        assert_eq!(s.args(), ["--config=/d/kube-proxy/config.yaml"]);
        assert_eq!(config_file(Path::new("/d")), s.config_file);
    }

    #[test]
    fn validation_names_the_setting() {
        let mut s = settings();
        s.cluster_cidr = "10.244.0.0".into();
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("cluster_cidr"));
        s.cluster_cidr = "10.244.0.0/33".into();
        assert!(s.validate().is_err());
        let mut s = settings();
        s.metrics_port = s.healthz_port;
        assert!(s.validate().unwrap_err().to_string().contains("healthz"));
        settings().validate().unwrap();
    }

    #[test]
    fn write_files_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let paths = NodePaths::new(&d.path().join("data"), &d.path().join("run"), None);
        let s = KubeProxySettings::for_node(
            &paths,
            "w",
            "198.51.100.11".parse().unwrap(),
            "10.244.0.0/16",
        );
        s.write_files().unwrap();
        let mode = std::fs::metadata(&s.config_file)
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }
}
