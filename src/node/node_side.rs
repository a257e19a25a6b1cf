//! The node side both roles run (`mkectl worker`, `mkectl controller
//! --enable-worker`): containerd, the konnectivity agent, the image import,
//! the node-local apiserver balancer, the kubelet and kube-proxy.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::NodeError;
use crate::apilb::{ApiLbConfig, HttpsHealthCheck};
use crate::components::api_lb::{ApiLbMonitor, ApiLbSettings, ApiLoadBalancer};
use crate::components::containerd::{self, Containerd, ContainerdSettings};
use crate::components::image_import::ImageImport;
use crate::components::konnectivity_agent::{
    KonnectivityAgent, KonnectivityAgentSettings, ServerSource,
};
use crate::components::kube_proxy::{self, KubeProxy, KubeProxySettings};
use crate::components::kubelet::{self, Kubelet, KubeletSettings};
use crate::components::Manager;
use crate::config::worker::WorkerSpec;
use crate::config::{ClusterConfig, NodePaths};
use crate::https_probe::ClientIdentity;
use crate::join::registry::ControllerRecord;
use crate::konnectivity::TlsFiles;

/// The agent's admin endpoints (`/healthz`, `/readyz`, `/metrics`) at
/// `address:port`; port 0 = off. One rule for both roles.
pub fn agent_admin(address: IpAddr, port: u16) -> Option<SocketAddr> {
    (port != 0).then(|| SocketAddr::new(address, port))
}

/// What the node side (containerd, konnectivity agent, kubelet) is built
/// from, under `mkectl worker` and under `mkectl controller --enable-worker`.
pub struct NodeSide<'a> {
    pub cfg: &'a ClusterConfig,
    pub worker_spec: &'a WorkerSpec,
    pub paths: &'a NodePaths,
    pub node_name: &'a str,
    pub node_address: IpAddr,
    /// Agent certificate and key, and the konnectivity CA.
    pub agent_tls: TlsFiles,
    /// The agent's /healthz /readyz /metrics; None = off.
    pub agent_admin: Option<SocketAddr>,
    pub servers: ServerSource,
    pub cluster_dns: IpAddr,
    pub cluster_domain: String,
    /// The cluster's pod CIDR (kube-proxy's `clusterCIDR`).
    pub pod_cidr: String,
    /// A kubeconfig the kubelet uses from its first start (a controller's
    /// own, issued from the local CA); None = TLS bootstrap with the
    /// bootstrap kubeconfig the join wrote.
    pub kubelet_kubeconfig: Option<PathBuf>,
    /// `--disable-components` (only names in [`WORKER_OPTIONAL`] matter).
    pub disabled: &'a [String],
    /// The node-local apiserver balancer, before the kubelet; None = off.
    pub api_lb: Option<NodeApiLb>,
}

/// What the node-local apiserver balancer needs besides the controller list.
pub struct NodeApiLb {
    /// `spec.worker.apiLoadBalancerPort` on 127.0.0.1.
    pub port: u16,
    /// The cluster CA the apiservers' serving certificates chain to.
    pub ca: PathBuf,
    /// Client certificate the `/readyz` checks present (the kubelet's own:
    /// re-read at every check, so rotation is picked up).
    pub identity: ClientIdentity,
    /// Ends the task that maps the controller list to backends.
    pub cancel: CancellationToken,
}

/// Adds the node side in start order (docs/design.md "Process model"):
/// containerd (the kubelet needs its socket), the konnectivity agent, the
/// image import (with containerd ready, before kubelet can ask for an
/// image: the sandbox image above all), the apiserver balancer, the kubelet
/// and kube-proxy last. Returns the balancer's reader, when one runs.
pub fn add_node_components(
    manager: &mut Manager,
    n: NodeSide<'_>,
) -> Result<Option<ApiLbMonitor>, NodeError> {
    let enabled = |name: &str| !n.disabled.iter().any(|d| d == name);
    let mut monitor = None;
    let controllers = n.servers.controllers.clone();
    let driver = n.worker_spec.cgroup_driver.resolve();
    let mut containerd_settings =
        ContainerdSettings::new(n.paths, &n.worker_spec.sandbox_image, driver);
    containerd_settings.cni_bin_dir = n.worker_spec.cni_bin_dir.clone();
    containerd_settings.cni_conf_dir = n.worker_spec.cni_conf_dir.clone();
    if enabled(containerd::NAME) {
        manager.add(Box::new(Containerd::new(
            containerd_settings.clone(),
            n.paths.clone(),
        )));
    }

    manager.add(Box::new(KonnectivityAgent::new(
        KonnectivityAgentSettings {
            tls: n.agent_tls,
            agent_id: n.node_name.to_string(),
            identifiers: format!("host={}", n.node_address),
            admin_listen: n.agent_admin,
            servers: n.servers,
        },
    )));

    // Only into the containerd mkectl runs: with containerd disabled its
    // images are the operator's business.
    if enabled(containerd::NAME) {
        manager.add(Box::new(ImageImport::new(
            n.paths.clone(),
            containerd_settings.socket.clone(),
            &containerd_settings.sandbox_image,
        )));
    }

    if enabled(kubelet::NAME) {
        if let Some(lb) = &n.api_lb {
            let component = api_lb_component(controllers.clone(), lb);
            monitor = Some(component.monitor());
            manager.add(Box::new(component));
        }
        let mut k = KubeletSettings::for_node(n.paths, n.node_name, n.node_address);
        k.cluster_dns_ip = n.cluster_dns;
        k.cluster_domain = n.cluster_domain;
        k.containerd_socket = containerd_settings.socket.clone();
        k.cgroup_driver = containerd_settings.cgroup_driver;
        if let Some(kubeconfig) = n.kubelet_kubeconfig {
            k.kubeconfig = kubeconfig;
        }
        k.apply_spec(n.worker_spec)?;
        k.extra_args = n.cfg.spec.extra_args.kubelet.clone();
        let kubelet_kubeconfig = k.kubeconfig.clone();
        manager.add(Box::new(Kubelet::new(k, n.paths.clone())));

        // kube-proxy runs with the kubelet's credentials (see
        // `components::kube_proxy`), so only where a kubelet runs, after it.
        if enabled(kube_proxy::NAME) {
            let mut p =
                KubeProxySettings::for_node(n.paths, n.node_name, n.node_address, &n.pod_cidr);
            p.kubeconfig = kubelet_kubeconfig;
            p.healthz_port = n.worker_spec.kube_proxy_healthz_port;
            p.metrics_port = n.worker_spec.kube_proxy_metrics_port;
            manager.add(Box::new(KubeProxy::new(p, n.paths.clone())));
        }
    }
    Ok(monitor)
}

/// The balancer probes each apiserver's `/readyz` with the kubelet's own
/// client certificate (re-read at every probe) and verifies the serving
/// certificate against the cluster CA.
fn api_lb_component(
    controllers: watch::Receiver<Vec<ControllerRecord>>,
    lb: &NodeApiLb,
) -> ApiLoadBalancer {
    let health = HttpsHealthCheck::new(lb.ca.clone(), Some(lb.identity.clone()));
    let listen = SocketAddr::new(IpAddr::from([127, 0, 0, 1]), lb.port);
    ApiLoadBalancer::new(ApiLbSettings {
        config: ApiLbConfig::new(listen, health),
        backends: crate::apilb::follow_records(controllers, lb.cancel.clone()),
    })
}

/// Worker components that `--disable-components` may leave out.
pub const WORKER_OPTIONAL: &[&str] = &[containerd::NAME, kubelet::NAME, kube_proxy::NAME];

/// `spec.worker` with `--labels` and `--taints` merged in, validated.
pub fn worker_spec(
    cfg: &ClusterConfig,
    labels: &[String],
    taints: &[String],
    file: &str,
) -> Result<WorkerSpec, NodeError> {
    let mut spec = cfg.spec.worker.clone();
    for l in labels {
        let (k, v) = l
            .split_once('=')
            .ok_or_else(|| NodeError::Usage(format!("--labels: {l:?} is not key=value")))?;
        spec.labels.insert(k.to_string(), v.to_string());
    }
    spec.taints.extend(taints.iter().cloned());
    spec.validate(file)
        .map_err(|e| NodeError::Usage(format!("--labels/--taints or {e}")))?;
    Ok(spec)
}

/// Before a node side that runs pods starts: the host prerequisites
/// (`crate::hostcheck`) and the upstream binaries (kubelet, kube-proxy),
/// which only come with the bundle: missing or of another release, it is
/// exit 69 before anything starts.
pub async fn check_node_side(
    manager: &Manager,
    paths: &NodePaths,
    spec: &WorkerSpec,
) -> Result<(), NodeError> {
    let names = manager.names();
    if names.contains(&kubelet::NAME) {
        crate::hostcheck::enforce(&crate::hostcheck::RealHost, spec.host_checks)?;
    }
    for name in [kubelet::NAME, kube_proxy::NAME] {
        if names.contains(&name) {
            let path = crate::components::binary::find(name, paths)?;
            let found = crate::components::binary::check_kube_version(
                name,
                &path,
                kubelet::KUBERNETES_VERSION,
            )
            .await?;
            info!(binary = name, path = %path.display(), version = %found, "upstream binary checked");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::components::image_import;
    use crate::konnectivity::ServerAddr;

    fn plan(disabled: &[String]) -> Vec<&'static str> {
        let d = tempfile::tempdir().unwrap();
        let paths = NodePaths::new(&d.path().join("data"), &d.path().join("run"), None);
        let cfg = ClusterConfig::default();
        let spec = WorkerSpec::default();
        let (_tx, controllers) = tokio::sync::watch::channel(Vec::new());
        let mut manager = Manager::new();
        add_node_components(
            &mut manager,
            NodeSide {
                cfg: &cfg,
                worker_spec: &spec,
                paths: &paths,
                node_name: "w1",
                node_address: IpAddr::from([127, 0, 0, 1]),
                agent_tls: TlsFiles {
                    cert: "c".into(),
                    key: "k".into(),
                    ca: "ca".into(),
                },
                agent_admin: None,
                servers: ServerSource {
                    local: Some(ServerAddr {
                        host: "127.0.0.1".into(),
                        port: 8132,
                    }),
                    controllers: controllers.clone(),
                },
                api_lb: Some(NodeApiLb {
                    port: 7443,
                    ca: "ca".into(),
                    identity: ClientIdentity {
                        cert: "kc".into(),
                        key: "kc".into(),
                    },
                    cancel: CancellationToken::new(),
                }),
                cluster_dns: IpAddr::from([10, 96, 0, 10]),
                cluster_domain: "cluster.local".into(),
                pod_cidr: "10.244.0.0/16".into(),
                kubelet_kubeconfig: None,
                disabled,
            },
        )
        .unwrap();
        manager.names()
    }

    #[tokio::test]
    async fn images_are_imported_after_containerd_and_before_kubelet() {
        assert_eq!(
            plan(&[]),
            [
                containerd::NAME,
                "konnectivity-agent",
                image_import::NAME,
                crate::components::api_lb::NAME,
                kubelet::NAME,
                kube_proxy::NAME
            ]
        );
        // No containerd of ours, nothing to import into.
        assert_eq!(
            plan(&[containerd::NAME.to_string()]),
            [
                "konnectivity-agent",
                crate::components::api_lb::NAME,
                kubelet::NAME,
                kube_proxy::NAME
            ]
        );
        // kube-proxy uses the kubelet's credentials: not without it.
        assert_eq!(
            plan(&[kubelet::NAME.to_string()]),
            [containerd::NAME, "konnectivity-agent", image_import::NAME]
        );
    }
}
