//! mkectl as a client of etcd: the connection with the apiserver's client
//! certificate that the join API, the registry, the ops pages and the
//! commands use, and what a learner member needs to get promoted. The etcd
//! process itself is `components::etcd`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::fsutil;
use crate::pki::PkiPaths;

/// Per-request bound of a client made by [`connect`] (and of its connect).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// etcd serves clients on loopback only: the URL of this node's member.
pub fn local_url(client_port: u16) -> String {
    format!("https://127.0.0.1:{client_port}")
}

impl EtcdClientTls {
    /// The apiserver's etcd client identity, which mkectl's own clients
    /// share (it is what the etcd CA authorizes).
    pub fn apiserver(pki: &PkiPaths) -> Self {
        EtcdClientTls {
            ca: pki.etcd_ca.cert.clone(),
            cert: pki.apiserver_etcd_client.cert.clone(),
            key: pki.apiserver_etcd_client.key.clone(),
        }
    }
}

/// Key prefix reserved for mkectl's own data (never under `/registry`).
pub const MKECTL_PREFIX: &str = "/mkectl/";

/// Client-side TLS material for talking to etcd.
#[derive(Debug, Clone)]
pub struct EtcdClientTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum EtcdClientError {
    #[error(transparent)]
    Fs(#[from] fsutil::FsError),
    #[error("etcd at {endpoint}")]
    Etcd {
        endpoint: String,
        source: etcd_client::Error,
    },
}

/// Connects to etcd at `endpoint` (`https://127.0.0.1:2379`) with client
/// certificate auth. The connection is lazy: errors show on the first call.
pub async fn connect(
    endpoint: &str,
    tls: &EtcdClientTls,
) -> Result<etcd_client::Client, EtcdClientError> {
    connect_with_timeout(endpoint, tls, REQUEST_TIMEOUT).await
}

/// [`connect`] with a per-request timeout other than the probe's (a
/// snapshot for a backup takes longer than a probe).
pub async fn connect_with_timeout(
    endpoint: &str,
    tls: &EtcdClientTls,
    timeout: Duration,
) -> Result<etcd_client::Client, EtcdClientError> {
    let ca = fsutil::read(&tls.ca)?;
    let cert = fsutil::read(&tls.cert)?;
    let key = fsutil::read(&tls.key)?;
    let tls_opts = etcd_client::TlsOptions::new()
        .ca_certificate(etcd_client::Certificate::from_pem(ca))
        .identity(etcd_client::Identity::from_pem(cert, key))
        .domain_name("localhost");
    let opts = etcd_client::ConnectOptions::new()
        .with_tls(tls_opts)
        .with_connect_timeout(REQUEST_TIMEOUT)
        .with_timeout(timeout);
    etcd_client::Client::connect([endpoint], Some(opts))
        .await
        .map_err(|source| EtcdClientError::Etcd {
            endpoint: endpoint.into(),
            source,
        })
}

/// Asks the rest of the cluster to promote this node's learner member (the
/// join API of another controller; a learner cannot promote itself).
#[async_trait::async_trait]
pub trait PromoteMember: Send + Sync {
    /// `Ok(true)` once the member votes, `Ok(false)` while it catches up.
    async fn promote(&self, member_id: u64) -> Result<bool, PromoteError>;
}

/// A promotion request that did not get an answer. The implementation lives
/// outside this module (the join API client), so its cause is boxed.
#[derive(Debug, thiserror::Error)]
#[error("cannot ask for the promotion of learner {member_id:x}")]
pub struct PromoteError {
    pub member_id: u64,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// A member that joined as a learner and must be promoted after start.
#[derive(Clone)]
pub struct LearnerPromotion {
    pub member_id: u64,
    pub promoter: Arc<dyn PromoteMember>,
}

impl std::fmt::Debug for LearnerPromotion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LearnerPromotion({:x})", self.member_id)
    }
}
