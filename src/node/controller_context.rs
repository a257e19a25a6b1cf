//! What the controller role's components are built from, resolved once at
//! start; shared by the plan (`controller`) and the join half
//! (`controller_join`), which do not import each other.

use crate::config::worker::WorkerSpec;
use crate::config::{ClusterConfig, NodePaths};
use crate::{ops, pki};

/// Everything components are built from, resolved once at start.
pub struct ControllerContext {
    pub cfg: ClusterConfig,
    pub paths: NodePaths,
    pub pki: pki::PkiPaths,
    pub node_name: String,
    pub node_address: std::net::IpAddr,
    /// Set when this controller joined an existing cluster (`join.json`).
    pub join: Option<crate::join::ControllerJoinState>,
    /// Counters served on /metrics (the join API records its requests here).
    pub metrics: std::sync::Arc<ops::Metrics>,
    /// `--enable-worker`: the worker side runs here too.
    pub worker: Option<ControllerWorker>,
}

/// The worker side of `controller --enable-worker`.
pub struct ControllerWorker {
    /// `spec.worker` with `--labels`, `--taints` and (unless `--no-taints`)
    /// the control-plane taint.
    pub spec: WorkerSpec,
    pub agent_admin: Option<std::net::SocketAddr>,
    pub disabled: Vec<String>,
}
