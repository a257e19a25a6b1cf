//! The node-local apiserver load balancer ([`crate::apilb`]) as a component
//! of a worker (and of a controller with `--enable-worker`): listens on
//! `127.0.0.1:<spec.worker.apiLoadBalancerPort>` and forwards to the live
//! controllers' apiservers, following the controller list it is given.
//!
//! Ready once it listens and at least one backend passes its `/readyz`
//! check. One exception: while the probe's client certificate is not on
//! disk yet (a fresh worker whose kubelet has not finished TLS bootstrap, and
//! the bootstrap itself goes through this balancer), no check can run and
//! every backend is `unknown`; the balancer then forwards to any backend
//! that accepts, and counts as ready so the kubelet after it can start.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Component, ComponentError, Peers};
use crate::apilb::{ApiLb, ApiLbConfig, BackendStatus, Health, StatusHandle};

pub const NAME: &str = "api-lb";
/// Bound on the drain when the component stops: the balancer's own drain
/// deadline plus a margin for the accept loop to notice.
pub const STOP_MARGIN: Duration = Duration::from_secs(1);

/// What the component runs with.
#[derive(Debug, Clone)]
pub struct ApiLbSettings {
    pub config: ApiLbConfig,
    /// The apiserver addresses to balance to (see
    /// [`crate::apilb::backends_from_records`]).
    pub backends: watch::Receiver<Vec<SocketAddr>>,
}

pub struct ApiLoadBalancer {
    settings: ApiLbSettings,
    cancel: CancellationToken,
    lb: Option<ApiLb>,
    monitor: ApiLbMonitor,
}

/// Status and metrics of the component's balancer, readable from anywhere
/// (the status and metrics pages) while the component itself sits in the
/// manager: empty while it is not running.
#[derive(Debug, Clone, Default)]
pub struct ApiLbMonitor(Arc<RwLock<Option<StatusHandle>>>);

impl ApiLbMonitor {
    fn set(&self, h: Option<StatusHandle>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = h;
    }

    fn get(&self) -> Option<StatusHandle> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Every backend with its health and connections (empty when stopped).
    pub fn status(&self) -> Vec<BackendStatus> {
        self.get().map(|h| h.status()).unwrap_or_default()
    }

    /// The `mkectl_apilb_*` families (empty when stopped).
    pub fn metrics(&self) -> String {
        self.get().map(|h| h.metrics()).unwrap_or_default()
    }
}

impl ApiLoadBalancer {
    pub fn new(settings: ApiLbSettings) -> Self {
        Self {
            settings,
            cancel: CancellationToken::new(),
            lb: None,
            monitor: ApiLbMonitor::default(),
        }
    }

    /// A reader of the status and metrics; take it before handing the
    /// component to the manager.
    pub fn monitor(&self) -> ApiLbMonitor {
        self.monitor.clone()
    }

    /// The running balancer (status, metrics).
    pub fn balancer(&self) -> Option<&ApiLb> {
        self.lb.as_ref()
    }
}

/// Ready: listening, and a backend up or (see the module docs) no check able
/// to run for lack of the probe identity.
fn readiness(lb: &ApiLb) -> Result<(), Unready> {
    if !lb.listening() {
        return Err(Unready::NotListening);
    }
    let status = lb.status();
    if status.is_empty() {
        return Err(Unready::NoBackend);
    }
    if status.iter().any(|b| b.healthy) {
        return Ok(());
    }
    // `unknown` with an error: the check ran and could not probe (its
    // files are unreadable); without one it has not run yet.
    let identity_missing = status
        .iter()
        .all(|b| b.health == Health::Unknown && b.last_check_error.is_some());
    if identity_missing {
        return Ok(());
    }
    let reasons: Vec<String> = status
        .iter()
        .map(|b| {
            format!(
                "{}: {}",
                b.addr,
                b.last_check_error.as_deref().unwrap_or("not checked yet")
            )
        })
        .collect();
    Err(Unready::NoHealthyBackend {
        reasons: reasons.join("; "),
    })
}

/// Why the balancer is not ready yet.
#[derive(Debug, thiserror::Error)]
enum Unready {
    #[error("not listening")]
    NotListening,
    #[error("no apiserver backend known yet")]
    NoBackend,
    /// `reasons` lists each backend's last health check outcome.
    #[error("no healthy apiserver backend ({reasons})")]
    NoHealthyBackend { reasons: String },
}

#[async_trait::async_trait]
impl Component for ApiLoadBalancer {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn init(&mut self) -> Result<(), ComponentError> {
        Ok(())
    }

    async fn start(&mut self) -> Result<(), ComponentError> {
        if self.lb.is_some() {
            return Ok(());
        }
        self.cancel = CancellationToken::new();
        let lb = ApiLb::start(
            self.settings.config.clone(),
            self.settings.backends.clone(),
            self.cancel.clone(),
        )
        .await
        .map_err(|e| ComponentError::during(NAME, "starting the load balancer", e))?;
        self.monitor.set(Some(lb.status_handle()));
        self.lb = Some(lb);
        Ok(())
    }

    async fn ready(&self) -> Result<(), ComponentError> {
        let lb = self.lb.as_ref().ok_or_else(|| ComponentError::NotReady {
            component: NAME,
            message: "not started".into(),
        })?;
        readiness(lb).map_err(|e| ComponentError::NotReady {
            component: NAME,
            message: e.to_string(),
        })
    }

    async fn stop(&mut self) -> Result<(), ComponentError> {
        self.cancel.cancel();
        self.monitor.set(None);
        if let Some(lb) = self.lb.take() {
            let bound = self.settings.config.drain_timeout + STOP_MARGIN;
            super::stop_within(NAME, "did not drain", bound, lb.join()).await?;
        }
        Ok(())
    }

    fn peers(&self) -> Option<Peers> {
        let lb = self.lb.as_ref()?;
        let mut connected: Vec<String> = lb.healthy().iter().map(ToString::to_string).collect();
        connected.sort();
        Some(Peers {
            kind: "apiservers".into(),
            connected,
        })
    }
}
