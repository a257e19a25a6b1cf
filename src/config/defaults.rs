//! Every ClusterConfig default, as a named constant.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net};

pub const API_VERSION: &str = "mkectl.io/v1beta1";
pub const KIND: &str = "ClusterConfig";
pub const CLUSTER_NAME: &str = "mke";

pub const API_PORT: u16 = 6443;
pub const POD_CIDR: IpNet = IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(10, 244, 0, 0), 16));
pub const SERVICE_CIDR: IpNet = IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(10, 96, 0, 0), 12));
pub const CLUSTER_DOMAIN: &str = "cluster.local";

pub const ETCD_CLIENT_PORT: u16 = 2379;
pub const ETCD_PEER_PORT: u16 = 2380;

pub const KONNECTIVITY_AGENT_PORT: u16 = 8132;
pub const KONNECTIVITY_ADMIN_PORT: u16 = 8133;
pub const KONNECTIVITY_ADMIN_ADDRESS: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// Agents are who their certificate says (see `konnectivity::server::identity`).
pub const KONNECTIVITY_AGENT_IDENTITY: super::konnectivity::AgentIdentity =
    super::konnectivity::AgentIdentity::Certificate;

pub const JOIN_API_PORT: u16 = 9443;

/// mkectl's Prometheus endpoint; a port no Kubernetes component uses by
/// default (kube-proxy 10249/10256, kubelet 10250, controller-manager 10257,
/// scheduler 10259, node-exporter 9100, Prometheus 9090).
pub const METRICS_PORT: u16 = 9641;
/// Metrics are served on loopback unless the operator opens them up.
pub const METRICS_ADDRESS: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

const HOUR: u64 = 3600;
/// CAs live ten years: replacing one means re-trusting every node.
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * HOUR);
/// Leaves live one year and are renewed automatically.
pub const LEAF_LIFETIME: Duration = Duration::from_secs(365 * 24 * HOUR);
/// Leaves are renewed when they have less than 30 days left.
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * HOUR);

/// The pause image for pod sandboxes (what kubelet 1.32 expects; mkectl
/// imports its own under this name, so it is never pulled).
pub const SANDBOX_IMAGE: &str = "registry.k8s.io/pause:3.10";
/// kubelet's HTTPS API port (on the node address).
pub const KUBELET_PORT: u16 = 10250;
/// kubelet's healthz port (plain HTTP, loopback only).
pub const KUBELET_HEALTHZ_PORT: u16 = 10248;
/// kube-proxy's healthz port, upstream's (load balancers probe it).
pub const KUBE_PROXY_HEALTHZ_PORT: u16 = 10256;
/// kube-proxy's metrics port, upstream's.
pub const KUBE_PROXY_METRICS_PORT: u16 = 10249;
/// The node-local apiserver balancer (`127.0.0.1:<port>`, see `apilb`).
pub const API_LOAD_BALANCER_PORT: u16 = 7443;

/// Where CNI plugins are installed and where containerd looks for them
/// (`spec.worker.cniBinDir`); the default stacks' CNI DaemonSets write there.
pub const CNI_BIN_DIR: &str = "/opt/cni/bin";
/// Where CNI network configurations are (`spec.worker.cniConfDir`).
pub const CNI_CONF_DIR: &str = "/etc/cni/net.d";

/// Index (0-based offset) of the cluster DNS address inside the service CIDR:
/// the 10th address, as kubeadm and k0s do.
pub const CLUSTER_DNS_OFFSET: u32 = 10;
