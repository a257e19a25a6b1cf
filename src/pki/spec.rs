//! What the PKI must look like: key type, lifetimes and the names that go
//! into certificates. The controller's config supplies the values; the
//! defaults here are the named constants it falls back to.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use super::error::PkiError;
use super::leaf::Leaf;
use super::x509::San;
use crate::config::defaults;

// The config's defaults, for a spec built without a config (tests, benches).
/// CA lifetime when the config sets none.
pub const DEFAULT_CA_LIFETIME: Duration = defaults::CA_LIFETIME;
/// Leaf lifetime when the config sets none.
pub const DEFAULT_LEAF_LIFETIME: Duration = defaults::LEAF_LIFETIME;
/// Leaves are renewed this long before they expire.
pub const DEFAULT_RENEW_BEFORE: Duration = defaults::RENEW_BEFORE;
/// Cluster name used in kubeconfigs.
pub const DEFAULT_CLUSTER_NAME: &str = defaults::CLUSTER_NAME;
/// Cluster DNS domain (`kubernetes.default.svc.<domain>`).
pub const DEFAULT_CLUSTER_DOMAIN: &str = defaults::CLUSTER_DOMAIN;
/// First IP of the default service CIDR 10.96.0.0/12: the `kubernetes` service.
pub const DEFAULT_FIRST_SERVICE_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 96, 0, 1));

pub use crate::config::KeyType;

/// The desired PKI of one controller node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkiSpec {
    /// `<data-dir>/pki`; created 0700 with its subdirectories.
    pub dir: PathBuf,
    pub key_type: KeyType,
    pub ca_lifetime: Duration,
    pub leaf_lifetime: Duration,
    /// Leaves expiring within this window are renewed; CAs within it only warn.
    pub renew_before: Duration,
    /// Cluster name in kubeconfigs, e.g. `mke`.
    pub cluster_name: String,
    /// Cluster DNS domain, e.g. `cluster.local`.
    pub cluster_domain: String,
    /// ClusterIP of the `kubernetes` service (first IP of the service CIDR).
    pub first_service_ip: IpAddr,
    /// Host name of this node; goes in the SANs of the apiserver, etcd and
    /// konnectivity serving certificates.
    pub node_name: String,
    /// Addresses of this node (API address, etcd peer address, ...).
    pub node_addresses: Vec<IpAddr>,
    /// Extra apiserver (and konnectivity) SANs: IP addresses or DNS names.
    pub extra_sans: Vec<String>,
    /// Server URL written into the admin, controller-manager and scheduler
    /// kubeconfigs.
    pub api_server_url: String,
    /// Server URL of the kubelet's kubeconfig when it is not
    /// `api_server_url`: the node-local apiserver balancer of
    /// `controller --enable-worker`.
    pub kubelet_server_url: Option<String>,
    /// Also maintain [`Leaf::WORKER`] (`controller --enable-worker`).
    pub worker: bool,
}

impl PkiSpec {
    /// A spec with every default filled in; callers override fields as their
    /// config says.
    pub fn new(dir: impl Into<PathBuf>, node_name: impl Into<String>) -> Self {
        PkiSpec {
            dir: dir.into(),
            key_type: KeyType::default(),
            ca_lifetime: DEFAULT_CA_LIFETIME,
            leaf_lifetime: DEFAULT_LEAF_LIFETIME,
            renew_before: DEFAULT_RENEW_BEFORE,
            cluster_name: DEFAULT_CLUSTER_NAME.to_string(),
            cluster_domain: DEFAULT_CLUSTER_DOMAIN.to_string(),
            first_service_ip: DEFAULT_FIRST_SERVICE_IP,
            node_name: node_name.into(),
            node_addresses: Vec::new(),
            extra_sans: Vec::new(),
            api_server_url: "https://127.0.0.1:6443".to_string(),
            kubelet_server_url: None,
            worker: false,
        }
    }

    /// The leaves this spec maintains.
    pub fn leaves(&self) -> Vec<Leaf> {
        let mut out = Leaf::ALL.to_vec();
        if self.worker {
            out.extend(Leaf::WORKER);
        }
        out
    }

    /// Checks the spec before anything is written, naming the bad field.
    pub fn validate(&self) -> Result<(), PkiError> {
        let invalid = |field: &'static str, reason: &str| PkiError::InvalidSpec {
            field,
            reason: reason.to_string(),
        };
        if self.dir.as_os_str().is_empty() {
            return Err(invalid("dir", "must not be empty"));
        }
        if self.ca_lifetime.is_zero() {
            return Err(invalid("ca_lifetime", "must be positive"));
        }
        if self.leaf_lifetime.is_zero() {
            return Err(invalid("leaf_lifetime", "must be positive"));
        }
        // Otherwise every freshly issued leaf would already be due and each
        // run would reissue it.
        if self.renew_before >= self.leaf_lifetime {
            return Err(invalid(
                "renew_before",
                "must be shorter than leaf_lifetime",
            ));
        }
        if self.cluster_name.trim().is_empty() {
            return Err(invalid("cluster_name", "must not be empty"));
        }
        if self.cluster_domain.trim().is_empty() {
            return Err(invalid("cluster_domain", "must not be empty"));
        }
        if self.node_name.trim().is_empty() {
            return Err(invalid("node_name", "must not be empty"));
        }
        San::parse(&self.node_name)?;
        San::parse(&format!("kubernetes.default.svc.{}", self.cluster_domain))?;
        for s in &self.extra_sans {
            San::parse(s)?;
        }
        let url = self.api_server_url.trim();
        if !url.starts_with("https://") || url.len() <= "https://".len() {
            return Err(invalid(
                "api_server_url",
                "must be an https:// URL with a host",
            ));
        }
        Ok(())
    }
}
