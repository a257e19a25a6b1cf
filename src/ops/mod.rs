//! Operating a running node: the status socket (`mkectl status`), the
//! Prometheus endpoint, live leaf rotation (`certs renew`), backup and
//! restore.
//!
//! [`start`] wires the node-side services into a controller or a worker in
//! one call.
//! Other parts of mkectl feed them through two seams:
//!
//! * components: `Component::supervised`, `uses_certs`, `restart` and
//!   `peers` (see `components`), read through the manager's handle;
//! * counters: [`Metrics`] (`record_join_request`), shared as an `Arc`.

pub mod backup;
pub mod client;
pub mod collect;
pub mod etcd_info;
pub mod metrics;
pub mod model;
pub mod restore;
pub mod rotation;
pub mod server;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

pub use metrics::Metrics;
pub use model::NodeStatus;

use crate::components::ManagerHandle;
use crate::config::{ClusterConfig, NodePaths};
use crate::etcd::EtcdClientTls;
use crate::pki::{PkiPaths, PkiSpec};

#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("{path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Fs {
        #[from]
        source: crate::fsutil::FsError,
    },
    #[error("cannot bind the metrics endpoint {addr} (spec.metrics)")]
    BindMetrics {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
    #[error("background task failed")]
    Task(#[source] tokio::task::JoinError),
    #[error("certificate {0} is not maintained on this node (only a controller running with --enable-worker has it)")]
    NotMaintained(&'static str),
}

/// What the node-side services are built from.
pub struct OpsSettings {
    pub role: &'static str,
    pub cfg: ClusterConfig,
    pub paths: NodePaths,
    pub node_name: String,
    pub node_address: IpAddr,
    /// The same spec the controller ensured its PKI with, so rotation
    /// reissues nothing else; `None` on a worker (no rotation, no
    /// `certs renew`: its certificates come from the join).
    pub pki_spec: Option<PkiSpec>,
    /// Whether this node runs etcd (its membership shows in the status).
    pub etcd: bool,
    pub metrics: Arc<Metrics>,
    /// The node-local apiserver balancer (workers): its backends show in
    /// the status and its families on the metrics page.
    pub api_lb: Option<crate::components::api_lb::ApiLbMonitor>,
    /// The single-port front (controllers with `exposeStrategy: single-port`):
    /// its families on the metrics page.
    pub front: Option<crate::components::api_front::FrontMonitor>,
}

/// The running services; dropping it removes the status socket.
pub struct OpsServices {
    _socket: server::SocketGuard,
    pub metrics_addr: SocketAddr,
}

/// Binds the status socket and the metrics endpoint (errors here fail the
/// start) and, on a controller, spawns the rotation loop; everything stops
/// with `cancel`.
pub async fn start(
    s: OpsSettings,
    manager: ManagerHandle,
    cancel: &CancellationToken,
) -> Result<OpsServices, OpsError> {
    let pki = PkiPaths::new(&s.paths.pki_dir());
    let etcd = s.etcd.then(|| {
        etcd_info::EtcdInfo::new(
            crate::etcd::local_url(s.cfg.spec.etcd.client_port),
            EtcdClientTls::apiserver(&pki),
        )
    });
    let collector = Arc::new(collect::Collector {
        role: s.role,
        node_name: s.node_name.clone(),
        node_address: s.node_address,
        pki_dir: pki.dir.clone(),
        manager: manager.clone(),
        etcd,
        started: Instant::now(),
        api_lb: s.api_lb.clone(),
        front: s.front.clone(),
    });
    let rotator = s
        .pki_spec
        .map(|spec| Arc::new(rotation::Rotator::new(spec, manager, cancel.clone())));
    let ip: IpAddr = s.cfg.spec.metrics.address;
    let (socket, metrics_addr) = server::serve(
        &s.paths.status_socket(),
        SocketAddr::new(ip, s.cfg.spec.metrics.port),
        collector,
        rotator.clone(),
        s.metrics,
        cancel,
    )
    .await?;
    tracing::info!(
        component = "status",
        socket = %s.paths.status_socket().display(),
        metrics = %metrics_addr,
        "status socket and metrics endpoint listening"
    );
    if let Some(rotator) = rotator {
        tokio::spawn(rotator.run());
    }
    Ok(OpsServices {
        _socket: socket,
        metrics_addr,
    })
}
