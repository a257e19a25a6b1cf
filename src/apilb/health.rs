//! Active health checks: every backend is probed on its own schedule with an
//! HTTPS `GET /readyz` (the project's [`HttpsProbe`]: rustls with ring, the
//! server certificate verified against the cluster CA for the backend's IP
//! address, a client certificate presented because the apiserver refuses
//! anonymous requests).
//!
//! The probe reads the CA, certificate and key files at every check, so a
//! rotated kubelet client certificate is used from the next check on without
//! any restart. A file that cannot be read makes the outcome
//! [`Outcome::Unknown`]: a local problem says nothing about the backend.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn, Instrument};

use super::balancer::{Backend, Health, Outcome, Shared};
use super::COMPONENT;
use crate::https_probe::{ClientIdentity, HttpsProbe, ProbeError, ServerTrust};

/// Path probed on every apiserver.
pub const HEALTH_PATH: &str = "/readyz";
/// How often each backend is probed.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// Bound on one probe (connect, TLS handshake, request, answer). With the
/// interval this bounds failover: a backend that dies is found at the next
/// probe, at most one interval later, and a probe that hangs gives up after
/// this long, so it is out of rotation within interval + timeout = 2 s.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);

/// Something that tells whether a backend is ready (the HTTPS probe in
/// production; tests substitute their own).
#[async_trait::async_trait]
pub trait HealthCheck: Send + Sync + 'static {
    async fn check(&self, addr: SocketAddr) -> Outcome;
}

/// The HTTPS `/readyz` probe settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpsHealthCheck {
    /// Path probed, [`HEALTH_PATH`] by default.
    pub path: String,
    /// Cluster CA (PEM) the apiserver serving certificates chain to.
    pub ca: PathBuf,
    /// Client certificate and key (PEM; may be one file holding both, as
    /// the kubelet's `kubelet-client-current.pem`).
    pub client: Option<ClientIdentity>,
    /// Bound on one probe.
    pub timeout: Duration,
}

impl HttpsHealthCheck {
    pub fn new(ca: PathBuf, client: Option<ClientIdentity>) -> Self {
        HttpsHealthCheck {
            path: HEALTH_PATH.to_string(),
            ca,
            client,
            timeout: DEFAULT_HEALTH_TIMEOUT,
        }
    }
}

#[async_trait::async_trait]
impl HealthCheck for HttpsHealthCheck {
    async fn check(&self, addr: SocketAddr) -> Outcome {
        let probe = HttpsProbe {
            addr,
            path: self.path.clone(),
            trust: ServerTrust::CaFile(self.ca.clone()),
            client: self.client.clone(),
            timeout: self.timeout,
        };
        match probe.check().await {
            Ok(()) => Outcome::Ok,
            Err(e @ (ProbeError::Read { .. } | ProbeError::NoCertificate { .. })) => {
                Outcome::Unknown(crate::telemetry::Chain(&e).to_string())
            }
            // A client key that does not fit its certificate, or similar:
            // also a local problem.
            Err(e @ ProbeError::Config(_)) => {
                Outcome::Unknown(crate::telemetry::Chain(&e).to_string())
            }
            Err(e) => Outcome::Fail(crate::telemetry::Chain(&e).to_string()),
        }
    }
}

/// Probes `backend` every `interval` (first probe at once) until its
/// cancellation token fires; each probe bounded by `timeout`.
pub(crate) fn spawn_checker(
    backend: Arc<Backend>,
    check: Arc<dyn HealthCheck>,
    shared: Arc<Shared>,
    interval: Duration,
    timeout: Duration,
) {
    let span = tracing::info_span!("apilb_health", component = COMPONENT, backend = %backend.addr);
    tokio::spawn(
        async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = backend.cancel.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let outcome = tokio::select! {
                    _ = backend.cancel.cancelled() => return,
                    r = tokio::time::timeout(timeout, check.check(backend.addr)) => match r {
                        Ok(o) => o,
                        Err(_) => Outcome::Fail(format!("health check timed out after {timeout:?}")),
                    },
                };
                let error = match &outcome {
                    Outcome::Ok => None,
                    Outcome::Fail(e) | Outcome::Unknown(e) => Some(e.clone()),
                };
                if let Some(health) = backend.record(outcome) {
                    log_transition(backend.addr, health, error.as_deref(), "health check");
                }
                // Every check changes the status (its time, maybe its error).
                shared.notify();
            }
        }
        .instrument(span),
    );
}

pub(crate) fn log_transition(addr: SocketAddr, health: Health, error: Option<&str>, by: &str) {
    match health {
        Health::Up => info!(component = COMPONENT, backend = %addr, by, "apiserver backend up"),
        Health::Down => warn!(
            component = COMPONENT,
            backend = %addr,
            by,
            error = error.unwrap_or_default(),
            "apiserver backend down"
        ),
        Health::Unknown => warn!(
            component = COMPONENT,
            backend = %addr,
            by,
            error = error.unwrap_or_default(),
            "apiserver backend health unknown: the check cannot run"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apilb::balancer::Health;
    use std::sync::atomic::{AtomicU8, Ordering};
    use tokio::time::Instant;
    use tokio_util::sync::CancellationToken;

    const OK: u8 = 0;
    const FAIL: u8 = 1;
    const HANG: u8 = 2;

    /// A backend whose behaviour the test switches.
    struct Scripted(AtomicU8);

    #[async_trait::async_trait]
    impl HealthCheck for Scripted {
        async fn check(&self, _addr: SocketAddr) -> Outcome {
            match self.0.load(Ordering::SeqCst) {
                OK => Outcome::Ok,
                FAIL => Outcome::Fail("connection refused".into()),
                _ => std::future::pending().await,
            }
        }
    }

    async fn wait_health(shared: &Shared, want: Health) {
        let mut rx = shared.subscribe();
        while shared.backends()[0].health() != want {
            rx.changed().await.unwrap();
        }
    }

    /// Failover bound on a paused clock: a backend that starts refusing is
    /// down within one interval, one that hangs within interval + timeout,
    /// and one that recovers is up within one interval.
    #[tokio::test(start_paused = true)]
    async fn transitions_land_within_the_bound() {
        let shared = Arc::new(Shared::new());
        let root = CancellationToken::new();
        let b = shared
            .set_backends(&[SocketAddr::from(([127, 0, 0, 1], 6443))], &root)
            .remove(0);
        let script = Arc::new(Scripted(AtomicU8::new(OK)));
        spawn_checker(
            b.clone(),
            script.clone(),
            shared.clone(),
            DEFAULT_HEALTH_INTERVAL,
            DEFAULT_HEALTH_TIMEOUT,
        );
        wait_health(&shared, Health::Up).await;

        for (mode, bound) in [
            (FAIL, DEFAULT_HEALTH_INTERVAL),
            (HANG, DEFAULT_HEALTH_INTERVAL + DEFAULT_HEALTH_TIMEOUT),
        ] {
            // Let the backend fail at an arbitrary point between probes.
            tokio::time::sleep(Duration::from_millis(1300)).await;
            assert_eq!(b.health(), Health::Up);
            let t0 = Instant::now();
            script.0.store(mode, Ordering::SeqCst);
            wait_health(&shared, Health::Down).await;
            let took = t0.elapsed();
            assert!(
                took <= bound,
                "mode {mode}: down after {took:?} > {bound:?}"
            );
            let t0 = Instant::now();
            script.0.store(OK, Ordering::SeqCst);
            wait_health(&shared, Health::Up).await;
            // A hanging probe in flight finishes by its timeout first.
            assert!(t0.elapsed() <= DEFAULT_HEALTH_INTERVAL + DEFAULT_HEALTH_TIMEOUT);
        }

        b.cancel.cancel();
    }
}
