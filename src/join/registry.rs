//! The controller registry: each controller keeps a record of its addresses
//! under `/mkectl/controllers/<node-name>`, attached to an etcd lease it
//! keeps alive. A controller that dies loses its record when the lease runs
//! out ([`REGISTRY_TTL`]); a clean stop revokes the lease at once. Workers
//! learn the list through the join API, so a controller added later gets
//! every agent without reconfiguration.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::JoinError;
use crate::fsutil;

/// Key prefix of the registry.
pub const CONTROLLERS_PREFIX: &str = "/mkectl/controllers/";
/// Lease TTL of a record: how long a dead controller stays listed.
pub const REGISTRY_TTL: Duration = Duration::from_secs(10);
/// How often the lease is renewed (a third of the TTL: two renewals may fail).
pub const KEEPALIVE_EVERY: Duration = Duration::from_millis(3300);
/// How often the registry is re-read (server count, peer cache).
pub const POLL_EVERY: Duration = Duration::from_secs(2);
/// Pause before re-registering after etcd trouble.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Bound on one etcd call made by the registry.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

const COMPONENT: &str = "controller-registry";

/// One controller as workers and other controllers see it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ControllerRecord {
    /// Node name (etcd member name, konnectivity server id).
    pub name: String,
    /// `https://<address>:<port>` of its kube-apiserver.
    pub api_server: String,
    /// `<host>:<port>` of its konnectivity agent listener.
    pub konnectivity: String,
    /// `https://<address>:<port>` of its join API.
    pub join_api: String,
    /// `https://<address>:<port>` of its etcd peer listener.
    pub etcd_peer_url: String,
}

impl ControllerRecord {
    fn key(&self) -> String {
        format!("{CONTROLLERS_PREFIX}{}", self.name)
    }
}

fn etcd_err(what: &'static str) -> impl FnOnce(etcd_client::Error) -> JoinError {
    move |source| JoinError::Etcd { what, source }
}

async fn timed<T>(
    what: &'static str,
    fut: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, JoinError> {
    match tokio::time::timeout(CALL_TIMEOUT, fut).await {
        Ok(r) => r.map_err(etcd_err(what)),
        Err(_) => Err(JoinError::Timeout { what }),
    }
}

/// Every live controller record, sorted by name. Records that do not parse
/// are skipped with a warning (they cannot be used by anyone).
pub async fn list(client: &mut etcd_client::Client) -> Result<Vec<ControllerRecord>, JoinError> {
    let opts = etcd_client::GetOptions::new().with_prefix();
    let resp = timed(
        "list the controller registry",
        client.get(CONTROLLERS_PREFIX, Some(opts)),
    )
    .await?;
    let mut out = Vec::new();
    for kv in resp.kvs() {
        match serde_json::from_slice::<ControllerRecord>(kv.value()) {
            Ok(r) => out.push(r),
            Err(e) => warn!(
                component = COMPONENT,
                key = %String::from_utf8_lossy(kv.key()),
                error = %crate::telemetry::Chain(&e),
                "ignoring an unreadable controller record"
            ),
        }
    }
    out.sort();
    Ok(out)
}

/// Reads the peer cache a controller keeps in its data dir (for `reset`,
/// which runs while the local etcd is stopped). Missing file: empty.
pub fn read_cache(path: &Path) -> Result<Vec<ControllerRecord>, JoinError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| JoinError::State {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(JoinError::Fs(fsutil::FsError::Read {
            path: path.to_path_buf(),
            source,
        })),
    }
}

fn write_cache(path: &Path, records: &[ControllerRecord]) -> Result<bool, JoinError> {
    let json = serde_json::to_vec_pretty(records).map_err(|e| JoinError::State {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(fsutil::write_atomic(
        path,
        &json,
        fsutil::PRIVATE_FILE_MODE,
    )?)
}

/// Keeps this controller's record alive and follows the registry.
pub struct Registration {
    pub record: ControllerRecord,
    /// Where the peer cache is written (`<data-dir>/controllers.json`).
    pub cache_file: std::path::PathBuf,
    /// Receives the live list on every change.
    pub controllers: watch::Sender<Vec<ControllerRecord>>,
    /// Receives the number of live controllers (konnectivity server count).
    pub server_count: watch::Sender<u32>,
}

impl Registration {
    /// Runs until `cancel`; `registered` turns true once the record is in
    /// etcd. On cancellation the lease is revoked (record gone at once).
    pub async fn run(
        self,
        mut client: etcd_client::Client,
        registered: Arc<AtomicBool>,
        cancel: CancellationToken,
    ) {
        let mut lease: Option<Lease> = None;
        let mut next_poll = tokio::time::Instant::now();
        loop {
            if cancel.is_cancelled() {
                break;
            }
            if lease.is_none() {
                match self.register(&mut client).await {
                    Ok(l) => {
                        if !registered.swap(true, Ordering::Relaxed) {
                            info!(component = COMPONENT, name = %self.record.name, "registered in the controller registry");
                        }
                        lease = Some(l);
                        next_poll = tokio::time::Instant::now();
                    }
                    Err(e) => {
                        warn!(component = COMPONENT, error = %crate::telemetry::Chain(&e), "cannot register; retrying");
                        tokio::select! {
                            _ = cancel.cancelled() => break,
                            _ = tokio::time::sleep(RETRY_AFTER) => {}
                        }
                        continue;
                    }
                }
            }
            if tokio::time::Instant::now() >= next_poll {
                self.poll(&mut client).await;
                next_poll = tokio::time::Instant::now() + POLL_EVERY;
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(KEEPALIVE_EVERY.min(POLL_EVERY)) => {}
            }
            if let Some(l) = lease.as_mut() {
                if let Err(e) = l.renew().await {
                    warn!(component = COMPONENT, error = %crate::telemetry::Chain(&e), "lease renewal failed; registering again");
                    lease = None;
                }
            }
        }
        if let Some(l) = lease {
            match timed("revoke the registry lease", client.lease_revoke(l.id)).await {
                Ok(_) => info!(
                    component = COMPONENT,
                    "left the controller registry (lease revoked)"
                ),
                Err(e) => {
                    warn!(component = COMPONENT, error = %crate::telemetry::Chain(&e), "could not revoke the registry lease; the record expires with it")
                }
            }
        }
    }

    async fn register(&self, client: &mut etcd_client::Client) -> Result<Lease, JoinError> {
        let grant = timed(
            "grant the registry lease",
            client.lease_grant(REGISTRY_TTL.as_secs() as i64, None),
        )
        .await?;
        let value = serde_json::to_vec(&self.record).map_err(|e| JoinError::Internal {
            reason: e.to_string(),
        })?;
        let opts = etcd_client::PutOptions::new().with_lease(grant.id());
        timed(
            "write the registry record",
            client.put(self.record.key(), value, Some(opts)),
        )
        .await?;
        let (keeper, stream) = timed(
            "open the lease keep-alive stream",
            client.lease_keep_alive(grant.id()),
        )
        .await?;
        Ok(Lease {
            id: grant.id(),
            keeper,
            stream,
        })
    }

    async fn poll(&self, client: &mut etcd_client::Client) {
        let records = match list(client).await {
            Ok(r) => r,
            Err(e) => {
                warn!(component = COMPONENT, error = %crate::telemetry::Chain(&e), "cannot read the controller registry");
                return;
            }
        };
        let count = records.len().max(1) as u32;
        self.server_count.send_if_modified(|c| {
            let changed = *c != count;
            *c = count;
            changed
        });
        match write_cache(&self.cache_file, &records) {
            Ok(true) => info!(
                component = COMPONENT,
                controllers = ?records.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
                "controller set changed"
            ),
            Ok(false) => {}
            Err(e) => {
                warn!(component = COMPONENT, error = %crate::telemetry::Chain(&e), "cannot write the controller cache")
            }
        }
        self.controllers.send_if_modified(|c| {
            let changed = *c != records;
            *c = records;
            changed
        });
    }
}

/// A granted lease with its keep-alive stream.
struct Lease {
    id: i64,
    keeper: etcd_client::LeaseKeeper,
    stream: etcd_client::LeaseKeepAliveStream,
}

impl Lease {
    async fn renew(&mut self) -> Result<(), JoinError> {
        timed("renew the registry lease", self.keeper.keep_alive()).await?;
        match timed("read the lease renewal", self.stream.message()).await? {
            Some(resp) if resp.ttl() > 0 => Ok(()),
            _ => Err(JoinError::Internal {
                reason: "the registry lease expired".into(),
            }),
        }
    }
}
