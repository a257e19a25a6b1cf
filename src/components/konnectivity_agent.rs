//! The embedded konnectivity agent of a worker: connects to every
//! controller's agent listener (mTLS with the certificate from the join),
//! identifies itself with `host=<node address>`, and follows the controller
//! set, so a controller added later gets the agent without any
//! reconfiguration. On a joined worker a refresher asks the join API every
//! interval; on a controller running the worker side (`--enable-worker`)
//! the local controller registry's live list feeds it. On stop it drains
//! (servers route no new dials here), waits for open connections up to a
//! bound, then closes.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::{Component, ComponentError};
use crate::join::client::server_addrs;
use crate::join::registry::ControllerRecord;
use crate::konnectivity::runtime::{RelayRuntime, RELAY_THREADS};
use crate::konnectivity::{Agent, AgentConfig, AgentHandle, ServerAddr, TlsFiles};

pub const NAME: &str = "konnectivity-agent";
/// Longest wait between reconnect attempts of a worker's agent. Upstream's
/// 10 s cap means an agent whose controller was down for a few seconds (a
/// restart, an upgrade) comes back up to 10 s after the server; at 1 s it is
/// back within about a second, and a connection refused by a down server is
/// cheap. The standalone `mkectl konnectivity agent` keeps upstream's default.
const RECONNECT_CAP: std::time::Duration = std::time::Duration::from_secs(1);
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
    /// Where the list of servers to connect to comes from.
    pub servers: ServerSource,
}

/// Where the agent's server list comes from: the live controller list (on
/// a controller running the worker side, the controller registry's; on a
/// worker, the join API's, refreshed by
/// [`crate::join::client::refresh_controllers`]). `local` (a controller's
/// own agent listener) stands in while the list is empty, so the node is
/// reachable from its own apiserver first.
#[derive(Debug, Clone)]
pub struct ServerSource {
    pub controllers: watch::Receiver<Vec<ControllerRecord>>,
    pub local: Option<ServerAddr>,
}

pub struct KonnectivityAgent {
    settings: KonnectivityAgentSettings,
    cancel: CancellationToken,
    handle: Option<AgentHandle>,
    /// The agent's own runtime (see `konnectivity::runtime`), while started.
    relay: Option<RelayRuntime>,
}

impl KonnectivityAgent {
    pub fn new(settings: KonnectivityAgentSettings) -> Self {
        Self {
            settings,
            cancel: CancellationToken::new(),
            handle: None,
            relay: None,
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
        let initial = registry_addrs(s.servers.local.as_ref(), &s.servers.controllers.borrow());
        let (tx, rx) = watch::channel(initial);
        let mut cfg = AgentConfig::new(rx, s.tls.clone(), s.agent_id.clone());
        cfg.identifiers = s.identifiers.clone();
        cfg.admin_listen = s.admin_listen;
        cfg.sync_interval_cap = RECONNECT_CAP;
        let relay = RelayRuntime::start(NAME, RELAY_THREADS)
            .map_err(|e| ComponentError::during(NAME, "starting its runtime", e))?;
        let handle = relay
            .run(Agent::start(cfg, self.cancel.clone()))
            .await
            .map_err(|e| ComponentError::during(NAME, "starting the agent", e))?
            .map_err(|e| ComponentError::during(NAME, "starting the agent", e))?;
        info!(servers = ?tx.borrow().iter().map(ToString::to_string).collect::<Vec<_>>(),
            "konnectivity agent connecting to every controller");
        tokio::spawn(follow_registry(
            s.servers.local.clone(),
            s.servers.controllers.clone(),
            tx,
            self.cancel.clone(),
        ));
        self.handle = Some(handle);
        self.relay = Some(relay);
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

    /// Only on a controller with `--enable-worker` is this leaf maintained
    /// (and rotated) locally; a joined worker's certificate comes from its join.
    fn uses_certs(&self) -> &[crate::pki::Leaf] {
        &[crate::pki::Leaf::KonnectivityAgent]
    }

    fn peers(&self) -> Option<super::Peers> {
        let mut connected = self.handle.as_ref()?.connected_servers();
        connected.sort();
        Some(super::Peers {
            kind: "servers".into(),
            connected,
        })
    }

    async fn stop(&mut self) -> Result<(), ComponentError> {
        let Some(handle) = self.handle.take() else {
            self.cancel.cancel();
            self.relay = None;
            return Ok(());
        };
        handle.drain();
        let end = tokio::time::Instant::now() + DRAIN_TIMEOUT;
        while handle.open_endpoint_connections() > 0 && tokio::time::Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.cancel.cancel();
        let ended = handle.wait_stopped();
        let r = super::stop_within(NAME, "agent tasks did not end", DRAIN_TIMEOUT, ended).await;
        // Whatever did not end within the deadline ends with its runtime.
        self.relay = None;
        r
    }
}

/// The servers of `controllers`, or `local` alone while the list is empty.
fn registry_addrs(local: Option<&ServerAddr>, controllers: &[ControllerRecord]) -> Vec<ServerAddr> {
    let addrs = server_addrs(controllers);
    match local {
        Some(local) if addrs.is_empty() => vec![local.clone()],
        _ => addrs,
    }
}

/// Hands every change of the registry's list to the agent until `cancel`
/// (or until the registry is gone: the last list stays).
async fn follow_registry(
    local: Option<ServerAddr>,
    mut controllers: watch::Receiver<Vec<ControllerRecord>>,
    servers: watch::Sender<Vec<ServerAddr>>,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = controllers.changed() => if changed.is_err() { return },
        }
        let addrs = registry_addrs(local.as_ref(), &controllers.borrow_and_update());
        servers.send_if_modified(|cur| {
            let changed = *cur != addrs;
            if changed {
                info!(servers = ?addrs.iter().map(ToString::to_string).collect::<Vec<_>>(), "controller set changed");
            }
            *cur = addrs;
            changed
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, konnectivity: &str) -> ControllerRecord {
        ControllerRecord {
            name: name.into(),
            api_server: String::new(),
            konnectivity: konnectivity.into(),
            join_api: String::new(),
            etcd_peer_url: String::new(),
        }
    }

    #[tokio::test]
    async fn registry_changes_reach_the_agent_and_an_empty_list_keeps_the_local_server() {
        let local: ServerAddr = "10.0.0.1:8132".parse().unwrap();
        let (reg_tx, reg_rx) = watch::channel(Vec::new());
        let (tx, mut rx) = watch::channel(registry_addrs(Some(&local), &reg_rx.borrow()));
        assert_eq!(*rx.borrow(), std::slice::from_ref(&local));
        let cancel = CancellationToken::new();
        let task = tokio::spawn(follow_registry(
            Some(local.clone()),
            reg_rx,
            tx,
            cancel.clone(),
        ));

        reg_tx.send_replace(vec![
            record("c2", "10.0.0.2:8132"),
            record("c1", "10.0.0.1:8132"),
        ]);
        rx.changed().await.unwrap();
        let got: Vec<String> = rx
            .borrow_and_update()
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(got, ["10.0.0.1:8132", "10.0.0.2:8132"]);

        reg_tx.send_replace(Vec::new());
        rx.changed().await.unwrap();
        assert_eq!(*rx.borrow_and_update(), [local]);

        cancel.cancel();
        task.await.unwrap();
    }
}
