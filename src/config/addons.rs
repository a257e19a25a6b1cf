//! `spec.addons` of the cluster config: which default stacks the controller
//! writes and which images they run, so air-gapped sites can point every
//! add-on at their own registry.

use serde::{Deserialize, Serialize};

/// CoreDNS image; 1.11.3 is what Kubernetes 1.32 ships with.
pub const DEFAULT_COREDNS_IMAGE: &str = "registry.k8s.io/coredns/coredns:v1.11.3";
/// Two replicas so a single node drain never takes DNS down.
pub const DEFAULT_COREDNS_REPLICAS: u32 = 2;
/// kube-proxy must match the apiserver minor version (1.32 in the bundle).
/// Matches `kubeapi::KUBERNETES_VERSION` (the bundle pin).
pub const DEFAULT_KUBE_PROXY_IMAGE: &str = "registry.k8s.io/kube-proxy:v1.32.8";
/// Calico release whose manifests the calico template follows.
pub const DEFAULT_CALICO_VERSION: &str = "v3.29.3";
pub const DEFAULT_CALICO_CNI_IMAGE: &str = "docker.io/calico/cni:v3.29.3";
pub const DEFAULT_CALICO_NODE_IMAGE: &str = "docker.io/calico/node:v3.29.3";
pub const DEFAULT_CALICO_KUBE_CONTROLLERS_IMAGE: &str = "docker.io/calico/kube-controllers:v3.29.3";
/// 0 lets calico detect the MTU from the host interface (minus VXLAN overhead).
pub const DEFAULT_CALICO_MTU: u32 = 0;
/// IANA VXLAN port, calico's default.
pub const DEFAULT_CALICO_VXLAN_PORT: u16 = 4789;
pub const DEFAULT_KUBE_ROUTER_IMAGE: &str = "docker.io/cloudnativelabs/kube-router:v2.4.1";

/// The add-ons the controller installs as default stacks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AddonsSettings {
    #[serde(default)]
    pub coredns: CoreDnsSettings,
    #[serde(default)]
    pub kube_proxy: KubeProxySettings,
    /// The CNI for `network.provider` (calico or kube-router; `custom` installs none).
    #[serde(default)]
    pub cni: CniSettings,
    /// Bindings that let kubelets join with bootstrap tokens and renew their certificates.
    #[serde(default)]
    pub bootstrap_rbac: BootstrapRbacSettings,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CoreDnsSettings {
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(default = "default_coredns_image")]
    pub image: String,
    #[serde(default = "default_coredns_replicas")]
    pub replicas: u32,
}

impl Default for CoreDnsSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            image: DEFAULT_COREDNS_IMAGE.to_string(),
            replicas: DEFAULT_COREDNS_REPLICAS,
        }
    }
}

/// Whether the kube-proxy DaemonSet stack is installed by default: no.
/// mkectl runs kube-proxy on every node as a host process it supervises
/// (`components::kube_proxy`), with the kubelet's credentials and no image
/// to pull; running both would have two kube-proxies rewrite the same
/// iptables chains.
pub const DEFAULT_KUBE_PROXY_DAEMONSET: bool = false;

/// The kube-proxy DaemonSet, in iptables mode (the mode every kernel
/// supports): the alternative to the host process for operators who prefer
/// it. Enabling it means starting every node with `--disable-components
/// kube-proxy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KubeProxySettings {
    #[serde(default = "default_kube_proxy_daemonset")]
    pub enabled: bool,
    #[serde(default = "default_kube_proxy_image")]
    pub image: String,
}

impl Default for KubeProxySettings {
    fn default() -> Self {
        Self {
            enabled: DEFAULT_KUBE_PROXY_DAEMONSET,
            image: DEFAULT_KUBE_PROXY_IMAGE.to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CniSettings {
    /// Off means no CNI stack is written even for calico/kube-router.
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(default)]
    pub calico: CalicoSettings,
    #[serde(default)]
    pub kube_router: KubeRouterSettings,
}

impl Default for CniSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            calico: CalicoSettings::default(),
            kube_router: KubeRouterSettings::default(),
        }
    }
}

/// Calico in VXLAN mode (no BGP, no IP-in-IP), as in the MKE design.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CalicoSettings {
    #[serde(default = "default_calico_cni_image")]
    pub cni_image: String,
    #[serde(default = "default_calico_node_image")]
    pub node_image: String,
    #[serde(default = "default_calico_kube_controllers_image")]
    pub kube_controllers_image: String,
    /// Pod interface MTU; 0 = auto-detect.
    #[serde(default)]
    pub mtu: u32,
    #[serde(default = "default_calico_vxlan_port")]
    pub vxlan_port: u16,
}

impl Default for CalicoSettings {
    fn default() -> Self {
        Self {
            cni_image: DEFAULT_CALICO_CNI_IMAGE.to_string(),
            node_image: DEFAULT_CALICO_NODE_IMAGE.to_string(),
            kube_controllers_image: DEFAULT_CALICO_KUBE_CONTROLLERS_IMAGE.to_string(),
            mtu: DEFAULT_CALICO_MTU,
            vxlan_port: DEFAULT_CALICO_VXLAN_PORT,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KubeRouterSettings {
    /// Also used for the init container that installs the CNI config, so an
    /// air-gapped site mirrors one image only.
    #[serde(default = "default_kube_router_image")]
    pub image: String,
}

impl Default for KubeRouterSettings {
    fn default() -> Self {
        Self {
            image: DEFAULT_KUBE_ROUTER_IMAGE.to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BootstrapRbacSettings {
    #[serde(default = "default_true")]
    pub enabled: bool,
}

impl Default for BootstrapRbacSettings {
    fn default() -> Self {
        Self { enabled: true }
    }
}

fn default_true() -> bool {
    true
}
fn default_coredns_image() -> String {
    DEFAULT_COREDNS_IMAGE.to_string()
}
fn default_coredns_replicas() -> u32 {
    DEFAULT_COREDNS_REPLICAS
}
fn default_kube_proxy_daemonset() -> bool {
    DEFAULT_KUBE_PROXY_DAEMONSET
}
fn default_kube_proxy_image() -> String {
    DEFAULT_KUBE_PROXY_IMAGE.to_string()
}
fn default_calico_cni_image() -> String {
    DEFAULT_CALICO_CNI_IMAGE.to_string()
}
fn default_calico_node_image() -> String {
    DEFAULT_CALICO_NODE_IMAGE.to_string()
}
fn default_calico_kube_controllers_image() -> String {
    DEFAULT_CALICO_KUBE_CONTROLLERS_IMAGE.to_string()
}
fn default_calico_vxlan_port() -> u16 {
    DEFAULT_CALICO_VXLAN_PORT
}
fn default_kube_router_image() -> String {
    DEFAULT_KUBE_ROUTER_IMAGE.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_document_gives_defaults() {
        let s: AddonsSettings = serde_saphyr::from_str("{}").unwrap();
        assert_eq!(s, AddonsSettings::default());
        assert!(s.coredns.enabled && s.cni.enabled);
        // kube-proxy runs as a host process; its DaemonSet is opt-in.
        assert!(!s.kube_proxy.enabled);
        assert_eq!(s.cni.calico.node_image, DEFAULT_CALICO_NODE_IMAGE);
        assert!(DEFAULT_CALICO_NODE_IMAGE.ends_with(DEFAULT_CALICO_VERSION));
    }

    #[test]
    fn camel_case_and_unknown_fields_rejected() {
        let s: AddonsSettings = serde_saphyr::from_str(
            "kubeProxy: {enabled: true}\ncni: {calico: {nodeImage: reg.local/calico/node:v1}}\n",
        )
        .unwrap();
        assert!(s.kube_proxy.enabled);
        assert_eq!(s.kube_proxy.image, DEFAULT_KUBE_PROXY_IMAGE);
        assert_eq!(s.cni.calico.node_image, "reg.local/calico/node:v1");
        assert_eq!(s.cni.calico.cni_image, DEFAULT_CALICO_CNI_IMAGE);
        let err = serde_saphyr::from_str::<AddonsSettings>("coredns: {imgae: x}\n").unwrap_err();
        assert!(err.to_string().contains("imgae"), "{err}");
    }
}
