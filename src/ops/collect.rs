//! Gathers a [`NodeStatus`]: components from the manager (probed now),
//! etcd membership, the soonest certificate expiry.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use super::etcd_info::EtcdInfo;
use super::model::{CertExpiry, CertSummary, NodeStatus};
use crate::components::api_lb::ApiLbMonitor;
use crate::components::ManagerHandle;
use crate::pki::{self, CertInfo};

/// Bound on one component's readiness probe during a status read.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Name of the component whose presence means "this node runs etcd".
const ETCD: &str = crate::components::etcd::NAME;

pub struct Collector {
    pub role: &'static str,
    pub node_name: String,
    pub node_address: IpAddr,
    pub pki_dir: PathBuf,
    pub manager: ManagerHandle,
    /// `None` when the node runs no etcd.
    pub etcd: Option<EtcdInfo>,
    pub started: Instant,
    /// The node-local apiserver balancer, where one runs.
    pub api_lb: Option<ApiLbMonitor>,
    /// The single-port front, where one runs.
    pub front: Option<crate::components::api_front::FrontMonitor>,
}

impl Collector {
    pub async fn collect(&self) -> NodeStatus {
        let components = self.manager.status(PROBE_TIMEOUT).await;
        let etcd = match &self.etcd {
            Some(info) if components.iter().any(|c| c.name == ETCD) => Some(info.status().await),
            _ => None,
        };
        let certificates = match self.certificates().await {
            Ok(certs) => summarize(&certs, SystemTime::now()),
            Err(e) => CertSummary {
                soonest: None,
                error: Some(crate::telemetry::Chain(&e).to_string()),
            },
        };
        let not_ready = components
            .iter()
            .filter(|c| !c.ready)
            .map(|c| match &c.message {
                Some(m) => format!("{}: {m}", c.name),
                None => format!("{}: not ready", c.name),
            })
            .collect::<Vec<_>>();
        let konnectivity = components
            .iter()
            .filter(|c| c.name.starts_with("konnectivity"))
            .find_map(|c| c.peers.clone());
        NodeStatus {
            role: self.role.to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            node_name: self.node_name.clone(),
            node_address: self.node_address.to_string(),
            pid: std::process::id(),
            uptime_seconds: self.started.elapsed().as_secs(),
            ready: not_ready.is_empty(),
            not_ready,
            components,
            konnectivity,
            etcd,
            certificates,
            api_load_balancer: self.api_lb.as_ref().map(|m| m.status()),
        }
    }

    /// Every certificate of the PKI (read off the runtime's worker threads).
    pub async fn certificates(&self) -> Result<Vec<CertInfo>, CertListError> {
        let dir = self.pki_dir.clone();
        tokio::task::spawn_blocking(move || pki::list_certificates(&dir))
            .await
            .map_err(CertListError::Task)?
            .map_err(CertListError::Pki)
    }
}

/// Why the certificates could not be listed for the status page.
#[derive(Debug, thiserror::Error)]
pub enum CertListError {
    #[error("certificate listing task")]
    Task(#[source] tokio::task::JoinError),
    #[error("listing the certificates")]
    Pki(#[source] crate::pki::PkiError),
}

/// The soonest expiry among `certs`.
pub fn summarize(certs: &[CertInfo], now: SystemTime) -> CertSummary {
    let soonest = certs.iter().min_by_key(|c| c.not_after).map(|c| {
        let seconds_left = match c.not_after.duration_since(now) {
            Ok(d) => d.as_secs() as i64,
            Err(e) => -(e.duration().as_secs() as i64),
        };
        CertExpiry {
            name: c.name.clone(),
            not_after: humantime::format_rfc3339_seconds(c.not_after).to_string(),
            seconds_left,
        }
    });
    CertSummary {
        soonest,
        error: None,
    }
}
