//! The join API's request and response bodies (JSON, camelCase). Shared by
//! the server (`api`) and the client (`client`); every struct refuses unknown
//! fields so a version skew fails loudly instead of silently dropping data.
//! Structs that carry key material redact it in `Debug`.

use serde::{Deserialize, Serialize};

use super::registry::ControllerRecord;

/// `GET /v1/ca` (unauthenticated): the cluster CA certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CaResponse {
    pub ca_cert: String,
}

/// Every error body: a human message and a stable machine reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ErrorBody {
    pub error: String,
    pub reason: String,
}

/// `POST /v1/join/worker` (bearer: a worker token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkerJoinRequest {
    pub node_name: String,
    /// The worker's node address (konnectivity `host=` identifier).
    pub address: String,
    /// PEM CSR for the konnectivity agent client certificate; its common
    /// name must be [`agent_common_name`] of `node_name`.
    pub csr: String,
}

/// Defaults the kubelet of a joined worker starts from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KubeletDefaults {
    pub cluster_name: String,
    pub cluster_domain: String,
    pub cluster_dns: Vec<String>,
    #[serde(rename = "podCIDR")]
    pub pod_cidr: String,
    #[serde(rename = "serviceCIDR")]
    pub service_cidr: String,
}

/// Answer to a worker join.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkerJoinResponse {
    /// Cluster CA (kubelet, apiserver).
    pub ca_cert: String,
    /// Konnectivity CA: the controllers' agent listeners chain to it.
    pub konnectivity_ca_cert: String,
    /// The agent client certificate signed from the worker's CSR.
    pub agent_cert: String,
    /// Every kube-apiserver URL.
    pub api_servers: Vec<String>,
    /// Every live controller (konnectivity endpoint, join API URL).
    pub controllers: Vec<ControllerRecord>,
    /// Kubelet bootstrap kubeconfig (embeds the bootstrap token: secret).
    pub kubelet_bootstrap_kubeconfig: String,
    pub kubelet: KubeletDefaults,
}

impl std::fmt::Debug for WorkerJoinResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerJoinResponse")
            .field("api_servers", &self.api_servers)
            .field("controllers", &self.controllers)
            .field("kubelet_bootstrap_kubeconfig", &"[elided]")
            .finish_non_exhaustive()
    }
}

/// `POST /v1/join/controller` (bearer: a controller token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ControllerJoinRequest {
    pub node_name: String,
    /// `https://<peer address>:<peer port>` of the new etcd member.
    pub etcd_peer_url: String,
}

/// A CA certificate with its private key, PEM.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CaKeyPair {
    pub cert: String,
    pub key: String,
}

impl std::fmt::Debug for CaKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CaKeyPair([elided])")
    }
}

/// Everything a controller shares with the others: the four CAs and the
/// service-account key pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SharedKeys {
    pub cluster_ca: CaKeyPair,
    pub etcd_ca: CaKeyPair,
    pub front_proxy_ca: CaKeyPair,
    pub konnectivity_ca: CaKeyPair,
    /// `sa.key` / `sa.pub`.
    pub service_account: CaKeyPair,
}

/// The etcd side of a controller join.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EtcdJoin {
    /// The new member's id (a learner until promoted).
    pub member_id: u64,
    /// `--initial-cluster` for the new member.
    pub initial_cluster: String,
}

/// Answer to a controller join.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ControllerJoinResponse {
    pub keys: SharedKeys,
    pub etcd: EtcdJoin,
    pub controllers: Vec<ControllerRecord>,
}

/// `POST /v1/etcd/promote` (mTLS: a controller).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PromoteRequest {
    pub member_id: u64,
}

/// Outcome of a promotion request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PromoteResponse {
    /// True once the member votes (also when it already did).
    pub voting: bool,
    /// Why not yet (learner still catching up).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// `POST /v1/etcd/leave` (mTLS: the leaving controller itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LeaveRequest {
    pub name: String,
    /// Remove even when the remaining members would lose quorum.
    #[serde(default)]
    pub force: bool,
}

/// Outcome of a leave request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LeaveResponse {
    /// False when no member had that name (already gone).
    pub removed: bool,
    /// Voting members left.
    pub members: usize,
}

/// `GET /v1/controllers` (mTLS: an agent or a controller).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ControllersResponse {
    pub controllers: Vec<ControllerRecord>,
}

/// The common name a worker's konnectivity agent certificate must carry.
pub fn agent_common_name(node_name: &str) -> String {
    format!("{AGENT_CN_PREFIX}{node_name}")
}

/// Prefix of every agent certificate's common name.
pub const AGENT_CN_PREFIX: &str = "konnectivity-agent:";
