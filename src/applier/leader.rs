//! Leader election through a `coordination.k8s.io/v1` Lease, so exactly one
//! controller applies manifests at a time.
//!
//! Like client-go, expiry is judged by *local* observation: a holder's lease
//! is taken over only when its record (resourceVersion) has not changed for
//! `leaseDurationSeconds` as seen by this process, so clock skew between
//! controllers cannot cause a premature takeover. A leader that cannot renew
//! for two thirds of the lease duration steps down before anyone else may
//! take over. On a graceful stop the leader releases the lease (empty holder)
//! so a successor takes over at once instead of waiting for expiry.

use std::time::Duration;

use crate::kubeapi::{Api, Client, KubeError};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::ApplierError;

/// Lease parameters.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub duration: Duration,
    /// How often the holder renews and candidates retry.
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// A leader that has not renewed for this long stops acting as leader.
    pub fn renew_deadline(&self) -> Duration {
        self.duration * 2 / 3
    }

    fn duration_secs(&self) -> i32 {
        i32::try_from(self.duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }
}

/// One candidate's view of the lease.
pub struct Elector {
    api: Api<Lease>,
    cfg: LeaseConfig,
    /// Last resourceVersion seen and when this process first saw it.
    observed: Option<(String, Instant)>,
}

fn now() -> MicroTime {
    // jiff is built without its clock here (no `std` feature): take the time
    // from std. Before 1970 or past jiff's range cannot happen on a running
    // host; the epoch is the harmless fallback.
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    MicroTime(Timestamp::from_microsecond(micros).unwrap_or(Timestamp::UNIX_EPOCH))
}

impl Elector {
    pub fn new(client: Client, cfg: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
            observed: None,
        }
    }

    fn err(&self, source: KubeError) -> ApplierError {
        ApplierError::Lease {
            namespace: self.cfg.namespace.clone(),
            name: self.cfg.name.clone(),
            source,
        }
    }

    /// One round: acquire, renew or observe. Returns whether we hold the lease.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, ApplierError> {
        let existing = self
            .api
            .get_opt(&self.cfg.name)
            .await
            .map_err(|e| self.err(e))?;
        let Some(mut lease) = existing else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.cfg.name.clone()),
                    namespace: Some(self.cfg.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.cfg.identity.clone()),
                    lease_duration_seconds: Some(self.cfg.duration_secs()),
                    acquire_time: Some(now()),
                    renew_time: Some(now()),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&lease).await {
                Ok(_) => Ok(true),
                Err(e) if e.is_conflict() => Ok(false),
                Err(e) => Err(self.err(e)),
            };
        };
        let rv = lease.metadata.resource_version.clone().unwrap_or_default();
        let seen_at = match &self.observed {
            Some((prev, at)) if *prev == rv => *at,
            _ => {
                let at = Instant::now();
                self.observed = Some((rv, at));
                at
            }
        };
        let mut spec = lease.spec.take().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        if holder != self.cfg.identity {
            let held_for = Duration::from_secs(
                u64::try_from(
                    spec.lease_duration_seconds
                        .unwrap_or(self.cfg.duration_secs()),
                )
                .unwrap_or(0),
            );
            if !holder.is_empty() && seen_at.elapsed() < held_for {
                return Ok(false);
            }
            spec.holder_identity = Some(self.cfg.identity.clone());
            spec.acquire_time = Some(now());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.renew_time = Some(now());
        spec.lease_duration_seconds = Some(self.cfg.duration_secs());
        lease.spec = Some(spec);
        // The resourceVersion in `lease` makes this a compare-and-swap: a
        // concurrent candidate's write turns ours into a 409.
        match self.api.replace(&self.cfg.name, &lease).await {
            Ok(updated) => {
                if let Some(rv) = updated.metadata.resource_version {
                    self.observed = Some((rv, Instant::now()));
                }
                Ok(true)
            }
            Err(e) if e.is_conflict() || e.is_not_found() => Ok(false),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Gives the lease up if we hold it (best effort).
    pub async fn release(&mut self) -> Result<(), ApplierError> {
        let Some(mut lease) = self
            .api
            .get_opt(&self.cfg.name)
            .await
            .map_err(|e| self.err(e))?
        else {
            return Ok(());
        };
        let mut spec = lease.spec.take().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.cfg.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(now());
        lease.spec = Some(spec);
        match self.api.replace(&self.cfg.name, &lease).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_conflict() || e.is_not_found() => Ok(()),
            Err(e) => Err(self.err(e)),
        }
    }
}

/// Runs the election until `cancel`, publishing leadership on `leader`.
/// Releases the lease on the way out if held.
pub async fn run_election(
    client: Client,
    cfg: LeaseConfig,
    leader: watch::Sender<bool>,
    cancel: CancellationToken,
) {
    let mut elector = Elector::new(client, cfg.clone());
    let mut last_renew: Option<Instant> = None;
    let set = |v: bool| {
        leader.send_if_modified(|cur| {
            if *cur != v {
                *cur = v;
                true
            } else {
                false
            }
        });
    };
    loop {
        let round = tokio::select! {
            _ = cancel.cancelled() => break,
            r = tokio::time::timeout(cfg.retry_period.max(Duration::from_millis(50)) * 2, elector.try_acquire_or_renew()) => r,
        };
        match round {
            Ok(Ok(true)) => {
                if last_renew.is_none() {
                    info!(component = "applier", lease = %cfg.name, identity = %cfg.identity, "acquired applier lease; this controller applies manifests");
                }
                last_renew = Some(Instant::now());
                set(true);
            }
            Ok(Ok(false)) => {
                if last_renew.take().is_some() {
                    warn!(component = "applier", lease = %cfg.name, "lost applier lease to another controller");
                }
                set(false);
            }
            Ok(Err(e)) => {
                warn!(component = "applier", error = %crate::telemetry::Chain(&e), "lease round failed");
            }
            Err(_) => {
                warn!(component = "applier", lease = %cfg.name, "lease round timed out");
            }
        }
        if let Some(t) = last_renew {
            if t.elapsed() >= cfg.renew_deadline() {
                warn!(component = "applier", lease = %cfg.name, "could not renew the applier lease in time; stepping down");
                last_renew = None;
                set(false);
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(cfg.retry_period) => {}
        }
    }
    set(false);
    if last_renew.is_some() {
        match tokio::time::timeout(cfg.duration, elector.release()).await {
            Ok(Ok(())) => info!(component = "applier", lease = %cfg.name, "released applier lease"),
            Ok(Err(e)) => {
                warn!(component = "applier", error = %crate::telemetry::Chain(&e), "releasing the applier lease failed")
            }
            Err(_) => warn!(
                component = "applier",
                "releasing the applier lease timed out"
            ),
        }
    }
}
