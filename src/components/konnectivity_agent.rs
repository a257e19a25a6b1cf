//! The embedded konnectivity agent of a worker: connects to every
//! controller's agent listener (mTLS with the certificate from the join),
//! identifies itself with `host=<node address>`, and follows the controller
//! set: a refresher asks the join API every interval and hands changes to
//! the agent, so a controller added later gets the agent without any
//! reconfiguration. On stop it drains (servers route no new dials here),
//! waits for open connections up to a bound, then closes.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::{Component, ComponentError};
use crate::join::client::{refresh_controllers, server_addrs};
use crate::join::state::{WorkerPaths, WorkerState};
use crate::konnectivity::{Agent, AgentConfig, AgentHandle, TlsFiles};

pub const NAME: &str = "konnectivity-agent";
/// How long open tunnels may finish after DRAIN before the agent closes.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct KonnectivityAgentSettings {
    /// Agent certificate and key, and the konnectivity CA servers chain to.
    pub tls: TlsFiles,
    pub agent_id: String,
    /// `host=<node address>`.
    pub identifiers: String,
    /// /healthz /readyz /metrics; None = off.
    pub admin_listen: Option<SocketAddr>,
    /// How often the controller list is refreshed from the join API.
    pub refresh_interval: Duration,
    pub paths: WorkerPaths,
    pub state: WorkerState,
}

pub struct KonnectivityAgent {
    settings: KonnectivityAgentSettings,
    cancel: CancellationToken,
    handle: Option<AgentHandle>,
}

impl KonnectivityAgent {
    pub fn new(settings: KonnectivityAgentSettings) -> Self {
        Self {
            settings,
            cancel: CancellationToken::new(),
            handle: None,
        }
    }

    pub fn handle(&self) -> Option<&AgentHandle> {
        self.handle.as_ref()
    }
}

#[async_trait::async_trait]
impl Component for KonnectivityAgent {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn init(&mut self) -> Result<(), ComponentError> {
        for f in [
            &self.settings.tls.cert,
            &self.settings.tls.key,
            &self.settings.tls.ca,
        ] {
            crate::fsutil::read(f).map_err(|source| ComponentError::Fs {
                component: NAME,
                source,
            })?;
        }
        Ok(())
    }

    async fn start(&mut self) -> Result<(), ComponentError> {
        if self.handle.is_some() {
            return Ok(());
        }
        let s = &self.settings;
        self.cancel = CancellationToken::new();
        let (tx, rx) = watch::channel(server_addrs(&s.state.controllers));
        let mut cfg = AgentConfig::new(rx, s.tls.clone(), s.agent_id.clone());
        cfg.identifiers = s.identifiers.clone();
        cfg.admin_listen = s.admin_listen;
        let handle =
            Agent::start(cfg, self.cancel.clone())
                .await
                .map_err(|e| ComponentError::Failed {
                    component: NAME,
                    message: e.to_string(),
                })?;
        info!(
            controllers = ?s.state.controllers.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            refresh_every = ?s.refresh_interval,
            "konnectivity agent connecting to every controller"
        );
        tokio::spawn(refresh_controllers(
            s.paths.clone(),
            s.state.clone(),
            s.refresh_interval,
            tx,
            self.cancel.clone(),
        ));
        self.handle = Some(handle);
        Ok(())
    }

    async fn ready(&self) -> Result<(), ComponentError> {
        // Running is ready: controllers may be down while the worker starts,
        // and the agent keeps trying; connections show in its /readyz.
        match &self.handle {
            Some(_) => Ok(()),
            None => Err(ComponentError::NotReady {
                component: NAME,
                message: "not started".into(),
            }),
        }
    }

    async fn stop(&mut self) -> Result<(), ComponentError> {
        let Some(handle) = self.handle.take() else {
            self.cancel.cancel();
            return Ok(());
        };
        handle.drain();
        let end = tokio::time::Instant::now() + DRAIN_TIMEOUT;
        while handle.open_endpoint_connections() > 0 && tokio::time::Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.cancel.cancel();
        if tokio::time::timeout(DRAIN_TIMEOUT, handle.wait_stopped())
            .await
            .is_err()
        {
            return Err(ComponentError::Failed {
                component: NAME,
                message: "agent tasks did not end within the stop timeout".into(),
            });
        }
        Ok(())
    }
}
