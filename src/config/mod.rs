//! ClusterConfig: the YAML an operator writes (`apiVersion: mkectl.io/v1beta1`,
//! `kind: ClusterConfig`), its defaults and its validation, plus the node's
//! directory layout (`paths`).
//!
//! A partial file merges over the defaults (every struct is `serde(default)`),
//! unknown fields are refused, and `validate` runs before anything binds or
//! spawns; every error names the file and the field path.

pub mod addons;
pub mod defaults;
pub mod duration;
mod field_path;
pub mod konnectivity;
pub mod paths;
pub mod pki;
mod validate;
pub mod worker;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub use duration::ConfigDuration;
pub use paths::NodePaths;
pub use pki::KeyType;

/// Where a config came from, for error messages.
pub const STDIN_NAME: &str = "<stdin>";
/// Name used when no file was given.
pub const DEFAULTS_NAME: &str = "<defaults>";
/// Largest config accepted (a full config is a few KiB); anything larger,
/// or an endless input, is refused without reading further.
pub const MAX_CONFIG_BYTES: u64 = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {file}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error(
        "config file {file} is larger than {} MiB; not reading it (a config is a few KiB)",
        limit / (1024 * 1024)
    )]
    TooLarge { file: String, limit: u64 },
    #[error("{file}: field `{field}`: {message}")]
    Parse {
        file: String,
        field: String,
        message: String,
    },
    #[error("{file}: field `{field}`: {message}")]
    Invalid {
        file: String,
        field: String,
        message: String,
    },
    #[error("cannot render config as YAML: {0}")]
    Render(String),
}

impl crate::exit::ExitCode for ConfigError {
    /// Every config error is the operator's input: exit 64.
    fn exit_code(&self) -> Option<u8> {
        Some(crate::exit::USAGE)
    }
}

impl ConfigError {
    /// The field path the error is about (`spec.network.podCIDR`), if any.
    pub fn field(&self) -> Option<&str> {
        match self {
            ConfigError::Parse { field, .. } | ConfigError::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterConfig {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: ClusterSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Metadata {
    /// Cluster name, written into kubeconfigs.
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterSpec {
    pub api: ApiSpec,
    pub network: NetworkSpec,
    pub etcd: EtcdSpec,
    pub konnectivity: KonnectivitySpec,
    pub join_api: JoinApiSpec,
    pub metrics: MetricsSpec,
    pub pki: PkiSettings,
    /// Worker node settings: sandbox image, cgroup driver, labels, taints,
    /// kubelet ports.
    pub worker: worker::WorkerSpec,
    /// Default add-on stacks (CoreDNS, kube-proxy, CNI, bootstrap RBAC): each
    /// can be disabled, images can point at a private registry.
    pub addons: addons::AddonsSettings,
    /// Extra flags per kube component (`kube-apiserver`, `kube-controller-manager`,
    /// `kube-scheduler`, `kubelet`), without leading dashes; they override ours.
    pub extra_args: ExtraArgs,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ApiSpec {
    /// Node address the apiserver, join API, konnectivity agent port and etcd
    /// peer port bind to. Empty: the first global IPv4 address of the host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<IpAddr>,
    pub port: u16,
    /// Address clients outside the node use (load balancer or DNS name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_address: Option<String>,
    /// Extra subject alternative names (IPs or DNS names) for the apiserver.
    pub sans: Vec<String>,
    /// How the apiserver, the konnectivity agent listener and the join API
    /// are exposed to workers (see [`ExposeStrategy`]).
    pub expose_strategy: ExposeStrategy,
}

/// `spec.api.exposeStrategy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExposeStrategy {
    /// Each on its own port: `spec.api.port`, `spec.konnectivity.agentPort`,
    /// `spec.joinApi.port`.
    #[default]
    Ports,
    /// All three on `spec.api.port`, routed by TLS SNI ([`crate::expose`]);
    /// kube-apiserver itself then listens on loopback only.
    SinglePort,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkProvider {
    #[default]
    Calico,
    Kuberouter,
    Custom,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct NetworkSpec {
    #[serde(rename = "podCIDR")]
    pub pod_cidr: ipnet::IpNet,
    #[serde(rename = "serviceCIDR")]
    pub service_cidr: ipnet::IpNet,
    pub cluster_domain: String,
    pub provider: NetworkProvider,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct EtcdSpec {
    /// Client port, bound to 127.0.0.1 only.
    pub client_port: u16,
    /// Peer port, bound to the peer address.
    pub peer_port: u16,
    /// Peer address; empty means the API address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_address: Option<IpAddr>,
    /// Extra etcd flags without leading dashes; they override ours.
    pub extra_args: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct KonnectivitySpec {
    /// Port agents dial (mTLS), on the node address.
    pub agent_port: u16,
    /// Admin port (/healthz, /readyz, /metrics).
    pub admin_port: u16,
    /// Address the admin port binds to.
    pub admin_address: IpAddr,
    /// Where an agent's id and `host=` identifiers come from: `certificate`
    /// (its client certificate, as the join API issued it) or `headers`
    /// (as the agent sends them; for upstream agents that share one
    /// certificate or authenticate otherwise).
    pub agent_identity: konnectivity::AgentIdentity,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct JoinApiSpec {
    pub port: u16,
}

/// mkectl's own Prometheus endpoint (`/metrics`, plain HTTP).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct MetricsSpec {
    /// Address the endpoint binds to (loopback by default).
    pub address: IpAddr,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct PkiSettings {
    pub key_type: KeyType,
    pub ca_lifetime: ConfigDuration,
    pub leaf_lifetime: ConfigDuration,
    /// Leaves with less than this left are renewed (their CA is kept).
    pub renew_before: ConfigDuration,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExtraArgs {
    #[serde(rename = "kube-apiserver")]
    pub kube_apiserver: BTreeMap<String, String>,
    #[serde(rename = "kube-controller-manager")]
    pub kube_controller_manager: BTreeMap<String, String>,
    #[serde(rename = "kube-scheduler")]
    pub kube_scheduler: BTreeMap<String, String>,
    pub kubelet: BTreeMap<String, String>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            api_version: defaults::API_VERSION.into(),
            kind: defaults::KIND.into(),
            metadata: Metadata::default(),
            spec: ClusterSpec::default(),
        }
    }
}

impl Default for Metadata {
    fn default() -> Self {
        Self {
            name: defaults::CLUSTER_NAME.into(),
        }
    }
}

impl Default for ApiSpec {
    fn default() -> Self {
        Self {
            address: None,
            port: defaults::API_PORT,
            external_address: None,
            sans: Vec::new(),
            expose_strategy: ExposeStrategy::default(),
        }
    }
}

impl Default for NetworkSpec {
    fn default() -> Self {
        Self {
            pod_cidr: defaults::POD_CIDR,
            service_cidr: defaults::SERVICE_CIDR,
            cluster_domain: defaults::CLUSTER_DOMAIN.into(),
            provider: NetworkProvider::default(),
        }
    }
}

impl Default for EtcdSpec {
    fn default() -> Self {
        Self {
            client_port: defaults::ETCD_CLIENT_PORT,
            peer_port: defaults::ETCD_PEER_PORT,
            peer_address: None,
            extra_args: BTreeMap::new(),
        }
    }
}

impl Default for KonnectivitySpec {
    fn default() -> Self {
        Self {
            agent_port: defaults::KONNECTIVITY_AGENT_PORT,
            admin_port: defaults::KONNECTIVITY_ADMIN_PORT,
            admin_address: defaults::KONNECTIVITY_ADMIN_ADDRESS,
            agent_identity: defaults::KONNECTIVITY_AGENT_IDENTITY,
        }
    }
}

impl Default for JoinApiSpec {
    fn default() -> Self {
        Self {
            port: defaults::JOIN_API_PORT,
        }
    }
}

impl Default for MetricsSpec {
    fn default() -> Self {
        Self {
            address: defaults::METRICS_ADDRESS,
            port: defaults::METRICS_PORT,
        }
    }
}

impl Default for PkiSettings {
    fn default() -> Self {
        Self {
            key_type: KeyType::default(),
            ca_lifetime: defaults::CA_LIFETIME.into(),
            leaf_lifetime: defaults::LEAF_LIFETIME.into(),
            renew_before: defaults::RENEW_BEFORE.into(),
        }
    }
}

impl ClusterConfig {
    /// Parses YAML text; `file` only names the source in errors. The result is
    /// validated.
    pub fn from_yaml(text: &str, file: &str) -> Result<Self, ConfigError> {
        let cfg = match serde_saphyr::from_str::<ClusterConfig>(text) {
            Ok(cfg) => cfg,
            Err(e) => {
                let field = e
                    .location()
                    .and_then(|at| field_path::path_at(text, at.line(), at.column()))
                    .unwrap_or_else(|| "(document)".into());
                return Err(ConfigError::Parse {
                    file: file.into(),
                    field,
                    message: first_line(&e.to_string()),
                });
            }
        };
        cfg.validate(file)?;
        Ok(cfg)
    }

    /// Loads `path` (`-` = standard input) or the defaults when `None`.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        match path {
            None => {
                let cfg = Self::default();
                cfg.validate(DEFAULTS_NAME)?;
                Ok(cfg)
            }
            Some(p) => {
                let (text, file) = read_text(p)?;
                Self::from_yaml(&text, &file)
            }
        }
    }

    /// Renders as YAML (what `mkectl config default` prints).
    pub fn to_yaml(&self) -> Result<String, ConfigError> {
        serde_saphyr::to_string(self).map_err(|e| ConfigError::Render(e.to_string()))
    }

    /// Checks every value; `file` names the source in errors.
    pub fn validate(&self, file: &str) -> Result<(), ConfigError> {
        validate::validate(self, file)
    }

    /// The node address: `spec.api.address`, else the host's first global
    /// IPv4 address. A host without one is refused (naming
    /// `spec.api.address` in `file`) rather than silently given 127.0.0.1.
    /// Interfaces are scanned on every call: resolve it once at start.
    pub fn node_address(&self, file: &str) -> Result<IpAddr, ConfigError> {
        if let Some(ip) = self.spec.api.address {
            return Ok(ip);
        }
        paths::detect_node_address().ok_or_else(|| ConfigError::Invalid {
            file: file.into(),
            field: "spec.api.address".into(),
            message: "unset, and this host has no global IPv4 address to use instead; set it (127.0.0.1 for a single host)".into(),
        })
    }

    /// Whether one port carries the apiserver, konnectivity and the join API.
    pub fn single_port(&self) -> bool {
        self.spec.api.expose_strategy == ExposeStrategy::SinglePort
    }

    /// The port workers' konnectivity agents dial on this controller.
    pub fn exposed_konnectivity_port(&self) -> u16 {
        if self.single_port() {
            self.spec.api.port
        } else {
            self.spec.konnectivity.agent_port
        }
    }

    /// The port joining nodes dial the join API on.
    pub fn exposed_join_port(&self) -> u16 {
        if self.single_port() {
            self.spec.api.port
        } else {
            self.spec.join_api.port
        }
    }

    /// The etcd peer address: `spec.etcd.peerAddress`, else `node` (the
    /// resolved node address).
    pub fn etcd_peer_address(&self, node: IpAddr) -> IpAddr {
        self.spec.etcd.peer_address.unwrap_or(node)
    }

    /// The service CIDR.
    pub fn service_cidr(&self) -> ipnet::IpNet {
        self.spec.network.service_cidr
    }

    /// The first address of the service CIDR: the `kubernetes` Service IP.
    pub fn first_service_ip(&self) -> IpAddr {
        nth_address(&self.service_cidr(), 1)
    }

    /// The cluster DNS Service IP (10th address of the service CIDR).
    pub fn cluster_dns_ip(&self) -> IpAddr {
        nth_address(&self.service_cidr(), defaults::CLUSTER_DNS_OFFSET)
    }
}

/// The `n`th address after the network address of `net`.
pub fn nth_address(net: &ipnet::IpNet, n: u32) -> IpAddr {
    match net.network() {
        IpAddr::V4(v4) => IpAddr::V4(std::net::Ipv4Addr::from(u32::from(v4).wrapping_add(n))),
        IpAddr::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from(
            u128::from(v6).wrapping_add(u128::from(n)),
        )),
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().trim().to_string()
}

/// How a config source is named in messages.
pub fn display_name(path: Option<&Path>) -> String {
    match path {
        None => DEFAULTS_NAME.into(),
        Some(p) if p == Path::new("-") => STDIN_NAME.into(),
        Some(p) => p.display().to_string(),
    }
}

/// Reads a config file (`-` = standard input), at most
/// [`MAX_CONFIG_BYTES`]; returns its text and its name for messages.
pub fn read_text(path: &Path) -> Result<(String, String), ConfigError> {
    let file = display_name(Some(path));
    let read_err = |source| ConfigError::Read {
        file: file.clone(),
        source,
    };
    let bytes = if path == Path::new("-") {
        crate::fsutil::read_at_most(std::io::stdin().lock(), MAX_CONFIG_BYTES)
    } else {
        std::fs::File::open(path).and_then(|f| crate::fsutil::read_at_most(f, MAX_CONFIG_BYTES))
    }
    .map_err(read_err)?
    .ok_or_else(|| ConfigError::TooLarge {
        file: file.clone(),
        limit: MAX_CONFIG_BYTES,
    })?;
    let text = String::from_utf8(bytes).map_err(|e| {
        read_err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not UTF-8 text: {e}"),
        ))
    })?;
    Ok((text, file))
}
