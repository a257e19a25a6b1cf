//! The single port of a controller under `spec.api.exposeStrategy:
//! single-port` ([`crate::expose`]) as a component. It starts after the
//! konnectivity server and the join API it routes to are listening (their
//! routes queue until then anyway) and before kube-apiserver, whose readiness
//! probe talks to the apiserver directly on loopback. Ready once listening.

use std::sync::{Arc, RwLock};

use tokio_util::sync::CancellationToken;

use super::{Component, ComponentError};
use crate::expose::{Front, FrontConfig, FrontStatus};

pub const NAME: &str = "api-front";

pub struct ApiFront {
    config: FrontConfig,
    cancel: CancellationToken,
    front: Option<Front>,
    monitor: FrontMonitor,
}

/// The front's counters, readable from the metrics page while the
/// component sits in the manager: empty while it is not running.
#[derive(Debug, Clone, Default)]
pub struct FrontMonitor(Arc<RwLock<Option<Arc<FrontStatus>>>>);

impl FrontMonitor {
    fn set(&self, s: Option<Arc<FrontStatus>>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = s;
    }

    /// The `mkectl_front_*` families (empty when stopped).
    pub fn metrics(&self) -> String {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|s| s.metrics())
            .unwrap_or_default()
    }
}

impl ApiFront {
    pub fn new(config: FrontConfig) -> Self {
        Self {
            config,
            cancel: CancellationToken::new(),
            front: None,
            monitor: FrontMonitor::default(),
        }
    }

    /// A reader of the counters; take it before handing the component to
    /// the manager.
    pub fn monitor(&self) -> FrontMonitor {
        self.monitor.clone()
    }
}

#[async_trait::async_trait]
impl Component for ApiFront {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn init(&mut self) -> Result<(), ComponentError> {
        Ok(())
    }

    async fn start(&mut self) -> Result<(), ComponentError> {
        if self.front.is_some() {
            return Ok(());
        }
        self.cancel = CancellationToken::new();
        let front = Front::start(self.config.clone(), self.cancel.clone())
            .await
            .map_err(|e| ComponentError::during(NAME, "starting the front", e))?;
        self.monitor.set(Some(front.status()));
        self.front = Some(front);
        Ok(())
    }

    async fn ready(&self) -> Result<(), ComponentError> {
        match self.front {
            Some(_) => Ok(()),
            None => Err(ComponentError::NotReady {
                component: NAME,
                message: "not started".into(),
            }),
        }
    }

    async fn stop(&mut self) -> Result<(), ComponentError> {
        self.cancel.cancel();
        self.monitor.set(None);
        if let Some(front) = self.front.take() {
            front.join().await;
        }
        Ok(())
    }
}
