//! The embedded konnectivity server: runs in-process (no child), so the
//! tunnels live exactly as long as the controller. It serves kube-apiserver
//! on a UDS (gRPC, plus HTTP-CONNECT on a second socket), agents on the node
//! address with mTLS against the konnectivity CA, and /healthz, /readyz,
//! /metrics on the admin address. `init` writes the apiserver's
//! EgressSelectorConfiguration pointing at the gRPC socket.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use tokio_util::sync::CancellationToken;
use tracing::info;

use super::{Component, ComponentError};
use crate::config::NodePaths;
use crate::fsutil;
use crate::konnectivity::runtime::{RelayRuntime, RELAY_THREADS};
use crate::konnectivity::{
    AgentIdentity, ProxyStrategy, Server, ServerConfig, ServerHandle, TlsFiles,
};

pub const NAME: &str = "konnectivity-server";
/// Bound on draining tunnels when the controller stops.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything the embedded server needs, resolved from config and PKI.
#[derive(Debug, Clone)]
pub struct KonnectivityServerSettings {
    /// This server's id (the node name): agents keep one connection per id.
    pub server_id: String,
    /// How many controllers serve agents; agents use it to know when they
    /// are connected to all of them.
    pub server_count: u32,
    pub agent_listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// Server certificate + key, and the CA agent certificates must chain to.
    pub tls: TlsFiles,
    /// Where agents' ids and identifiers come from (`spec.konnectivity.agentIdentity`).
    pub agent_identity: AgentIdentity,
    /// Live updates of `server_count` (the controller registry counts the
    /// registered controllers); None keeps `server_count`.
    pub server_count_updates: Option<watch::Receiver<u32>>,
    /// Agents come through the single-port front instead of `agent_listen`.
    pub agent_routed: Option<crate::expose::RoutedIncoming>,
}

pub struct KonnectivityServer {
    settings: KonnectivityServerSettings,
    paths: NodePaths,
    cancel: CancellationToken,
    handle: Option<Arc<ServerHandle>>,
    /// The server's own runtime (see `konnectivity::runtime`), while started.
    relay: Option<RelayRuntime>,
}

impl KonnectivityServer {
    pub fn new(settings: KonnectivityServerSettings, paths: NodePaths) -> Self {
        Self {
            settings,
            paths,
            cancel: CancellationToken::new(),
            handle: None,
            relay: None,
        }
    }

    /// The running server (agents, stats), once started.
    pub fn handle(&self) -> Option<&ServerHandle> {
        self.handle.as_deref()
    }
}

#[async_trait::async_trait]
impl Component for KonnectivityServer {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn init(&mut self) -> Result<(), ComponentError> {
        let fs_err = |source| ComponentError::Fs {
            component: NAME,
            source,
        };
        fsutil::ensure_dir(&self.paths.generated_config_dir(), fsutil::PRIVATE_DIR_MODE)
            .map_err(fs_err)?;
        let written = crate::konnectivity::write_egress_selector_config(
            &self.paths.egress_selector_file(),
            &self.paths.konnectivity_uds(),
        )
        .map_err(|e| {
            ComponentError::during(NAME, "writing the egress selector configuration", e)
        })?;
        if written {
            info!(path = %self.paths.egress_selector_file().display(), "wrote egress selector configuration");
        }
        for f in [
            &self.settings.tls.cert,
            &self.settings.tls.key,
            &self.settings.tls.ca,
        ] {
            fsutil::read(f).map_err(fs_err)?;
        }
        Ok(())
    }

    async fn start(&mut self) -> Result<(), ComponentError> {
        if self.handle.is_some() {
            return Ok(());
        }
        let s = &self.settings;
        let mut cfg = ServerConfig::new(s.server_id.clone(), s.agent_listen, s.tls.clone());
        cfg.server_count = s.server_count;
        cfg.agent_identity = s.agent_identity;
        cfg.agent_routed = s.agent_routed.clone();
        cfg.grpc_uds = Some(self.paths.konnectivity_uds());
        cfg.http_connect_uds = Some(self.paths.konnectivity_http_uds());
        cfg.admin_listen = Some(s.admin_listen);
        // Kubelet traffic goes to the agent on that node when it has one.
        cfg.proxy_strategies = vec![ProxyStrategy::DestHost, ProxyStrategy::Default];
        self.cancel = CancellationToken::new();
        let relay = RelayRuntime::start(NAME, RELAY_THREADS)
            .map_err(|e| ComponentError::during(NAME, "starting its runtime", e))?;
        let handle = relay
            .run(Server::start(cfg, self.cancel.clone()))
            .await
            .map_err(|e| ComponentError::during(NAME, "starting the server", e))?
            .map_err(|e| ComponentError::during(NAME, "starting the server", e))?;
        info!(
            agent_addr = %handle.agent_addr(),
            uds = %self.paths.konnectivity_uds().display(),
            "konnectivity server listening"
        );
        let handle = Arc::new(handle);
        if let Some(mut updates) = s.server_count_updates.clone() {
            let h = handle.clone();
            let cancel = self.cancel.clone();
            tokio::spawn(async move {
                loop {
                    let count = *updates.borrow_and_update();
                    if count > 0 && count != h.server_count() {
                        info!(
                            server_count = count,
                            "announcing a new server count to agents"
                        );
                        h.set_server_count(count);
                    }
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        r = updates.changed() => if r.is_err() { break },
                    }
                }
            });
        }
        self.handle = Some(handle);
        self.relay = Some(relay);
        Ok(())
    }

    async fn ready(&self) -> Result<(), ComponentError> {
        // Serving (listeners bound) is ready; agents arrive later, and their
        // count is reported by /readyz on the admin port and by status.
        match &self.handle {
            Some(_) => Ok(()),
            None => Err(ComponentError::NotReady {
                component: NAME,
                message: "not started".into(),
            }),
        }
    }

    fn uses_certs(&self) -> &[crate::pki::Leaf] {
        &[crate::pki::Leaf::KonnectivityServer]
    }

    fn peers(&self) -> Option<super::Peers> {
        let handle = self.handle.as_ref()?;
        Some(super::Peers {
            kind: "agents".into(),
            connected: handle.agents().into_iter().map(|(id, ..)| id).collect(),
        })
    }

    async fn stop(&mut self) -> Result<(), ComponentError> {
        if let Some(handle) = self.handle.take() {
            handle.shutdown();
            let drained = handle.wait_stopped();
            let r = super::stop_within(NAME, "tunnels did not drain", STOP_TIMEOUT, drained).await;
            // Whatever did not drain within the deadline ends with its runtime.
            self.relay = None;
            r?;
        }
        Ok(())
    }
}
