//! The konnectivity agent: dials every configured server directly (TLS with
//! a client certificate), keeps exactly one connection per distinct server
//! id, learns the server count, reconnects with capped exponential backoff
//! and jitter, and dials endpoints for the servers.
//!
//! States: `Agent::start` loads the TLS material and binds the admin port,
//! then runs in the background: per server address one worker connects,
//! serves the stream until it ends and reconnects. [`AgentHandle::drain`]
//! sends DRAIN to every server and refuses new dials; cancelling the token
//! closes everything, and [`AgentHandle::wait_stopped`] resolves once every
//! task ended.

mod dial;
mod session;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use dial::{dial, DialFailure};

use super::metrics::AgentMetrics;
use super::proto::Packet;
use super::tls::TlsFiles;
use super::KonnectivityError;

const COMPONENT: &str = "konnectivity-agent";

/// Upstream's default endpoint dial timeout.
pub const DEFAULT_DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// Upstream's `--sync-interval` default.
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// Upstream's `--sync-interval-cap` default.
pub const DEFAULT_SYNC_INTERVAL_CAP: Duration = Duration::from_secs(10);
/// How long the server-stream reader waits for one endpoint connection's
/// full queue before closing that connection.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Chunks queued towards one endpoint (upstream `--xfr-channel-size`).
pub const DEFAULT_CONN_QUEUE: usize = 150;
/// Time allowed for TCP + TLS + headers when connecting to a server.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One proxy server address. `host` is also the TLS server name (SNI).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerAddr {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A server address that is not `host:port`.
#[derive(Debug, thiserror::Error)]
pub enum ServerAddrError {
    #[error("{addr:?}: expected host:port")]
    NoPort { addr: String },
    #[error("{addr:?}: bad port")]
    BadPort { addr: String },
    #[error("{addr:?}: empty host")]
    EmptyHost { addr: String },
}

impl std::str::FromStr for ServerAddr {
    type Err = ServerAddrError;
    fn from_str(s: &str) -> Result<Self, ServerAddrError> {
        let (host, port) = s.rsplit_once(':').ok_or_else(|| ServerAddrError::NoPort {
            addr: s.to_string(),
        })?;
        let port = port.parse().map_err(|_| ServerAddrError::BadPort {
            addr: s.to_string(),
        })?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(ServerAddrError::EmptyHost {
                addr: s.to_string(),
            });
        }
        Ok(ServerAddr {
            host: host.to_string(),
            port,
        })
    }
}

/// Everything the agent needs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Server addresses; may be replaced at run time (join API refresh).
    pub servers: watch::Receiver<Vec<ServerAddr>>,
    /// `ca`: the CA servers' certificates chain to; `cert`/`key`: the
    /// agent's client certificate.
    pub tls: TlsFiles,
    /// Sent in the `agentid` header.
    pub agent_id: String,
    /// Sent in the `agentidentifiers` header (URL query form, e.g.
    /// `host=10.0.0.5`).
    pub identifiers: String,
    /// Admin HTTP (`/healthz`, `/readyz`, `/metrics`); None = off.
    pub admin_listen: Option<SocketAddr>,
    pub sync_interval: Duration,
    pub sync_interval_cap: Duration,
    pub dial_timeout: Duration,
    pub stall_timeout: Duration,
    pub conn_queue: usize,
}

impl AgentConfig {
    /// A config with every tunable at its default.
    pub fn new(
        servers: watch::Receiver<Vec<ServerAddr>>,
        tls: TlsFiles,
        agent_id: impl Into<String>,
    ) -> Self {
        AgentConfig {
            servers,
            tls,
            agent_id: agent_id.into(),
            identifiers: String::new(),
            admin_listen: None,
            sync_interval: DEFAULT_SYNC_INTERVAL,
            sync_interval_cap: DEFAULT_SYNC_INTERVAL_CAP,
            dial_timeout: DEFAULT_DIAL_TIMEOUT,
            stall_timeout: DEFAULT_STALL_TIMEOUT,
            conn_queue: DEFAULT_CONN_QUEUE,
        }
    }

    fn validate(&self) -> Result<(), KonnectivityError> {
        let bad = |field, reason: &str| {
            Err(KonnectivityError::Config {
                field,
                reason: reason.to_string(),
            })
        };
        if self.agent_id.is_empty() {
            return bad("agent_id", "must not be empty");
        }
        if http::HeaderValue::from_str(&self.agent_id).is_err() {
            return bad("agent_id", "must be printable ASCII");
        }
        if http::HeaderValue::from_str(&self.identifiers).is_err() {
            return bad("identifiers", "must be URL-encoded ASCII");
        }
        if self.sync_interval.is_zero() {
            return bad("sync_interval", "must be positive");
        }
        if self.sync_interval_cap < self.sync_interval {
            return bad("sync_interval_cap", "must be at least sync_interval");
        }
        if self.dial_timeout.is_zero() || self.stall_timeout.is_zero() || self.conn_queue == 0 {
            return bad(
                "timeouts",
                "dial/stall timeouts and the queue size must be positive",
            );
        }
        Ok(())
    }
}

/// A connected server as the agent tracks it.
#[derive(Debug)]
pub(crate) struct ServerConn {
    pub addr: ServerAddr,
    pub ctrl: mpsc::Sender<Packet>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub agent_id: String,
    pub identifiers: String,
    /// Connections send the konnectivity route name as SNI and verify the
    /// server as the address dialled ([`crate::expose`]).
    pub tls: crate::expose::verify::RoutedClient,
    pub metrics: AgentMetrics,
    pub cancel: CancellationToken,
    pub tracker: TaskTracker,
    pub draining: AtomicBool,
    pub next_connect_id: AtomicI64,
    pub known_server_count: AtomicI64,
    pub connected: Mutex<HashMap<String, ServerConn>>,
    pub dial_timeout: Duration,
    pub stall_timeout: Duration,
    pub conn_queue: usize,
    pub sync_interval: Duration,
    pub sync_interval_cap: Duration,
    tasks: AtomicI64,
}

pub(crate) struct TaskGuard(Arc<Shared>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.tasks.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Shared {
    pub fn task_guard(self: &Arc<Self>) -> TaskGuard {
        self.tasks.fetch_add(1, Ordering::Relaxed);
        TaskGuard(self.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, ServerConn>> {
        self.connected.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a server connection unless that server id is already
    /// connected. Returns whether it was added.
    pub fn claim(&self, server_id: &str, conn: ServerConn) -> bool {
        let mut map = self.lock();
        if map.contains_key(server_id) {
            return false;
        }
        map.insert(server_id.to_string(), conn);
        self.metrics
            .open_server_connections
            .store(map.len() as i64, Ordering::Relaxed);
        true
    }

    pub fn release(&self, server_id: &str) {
        let mut map = self.lock();
        map.remove(server_id);
        self.metrics
            .open_server_connections
            .store(map.len() as i64, Ordering::Relaxed);
    }

    fn connected_count(&self) -> usize {
        self.lock().len()
    }
}

/// Adds ±10 % jitter.
fn jitter(d: Duration) -> Duration {
    let f: f64 = rand::rng().random_range(0.9..1.1);
    d.mul_f64(f)
}

/// A running agent.
#[derive(Debug)]
pub struct AgentHandle {
    shared: Arc<Shared>,
    admin_addr: Option<SocketAddr>,
}

impl AgentHandle {
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Ids of the servers currently connected, sorted.
    pub fn connected_servers(&self) -> Vec<String> {
        let mut v: Vec<String> = self.shared.lock().keys().cloned().collect();
        v.sort();
        v
    }

    /// Server count learnt from the servers' `servercount` headers.
    pub fn known_server_count(&self) -> i64 {
        self.shared.known_server_count.load(Ordering::Relaxed)
    }

    /// Endpoint connections currently open (leak counter).
    pub fn open_endpoint_connections(&self) -> i64 {
        self.shared
            .metrics
            .open_endpoint_connections
            .load(Ordering::Relaxed)
    }

    /// Per-connection and per-stream tasks alive (leak counter).
    pub fn tasks(&self) -> i64 {
        self.shared.tasks.load(Ordering::Relaxed)
    }

    pub fn ready(&self) -> bool {
        self.shared.connected_count() > 0
    }

    pub fn metrics_text(&self) -> String {
        self.shared.metrics.encode()
    }

    /// Tells every server to stop routing new dials here and refuses new
    /// dials; existing connections keep working.
    pub fn drain(&self) {
        if self.shared.draining.swap(true, Ordering::Relaxed) {
            return;
        }
        tracing::info!(
            component = COMPONENT,
            "draining: servers told to route new dials elsewhere"
        );
        for conn in self.shared.lock().values() {
            let _ = conn.ctrl.try_send(Packet::drain());
        }
    }

    pub fn shutdown(&self) {
        self.shared.cancel.cancel();
    }

    /// Resolves once the agent was stopped and every task ended.
    pub async fn wait_stopped(&self) {
        self.shared.cancel.cancelled().await;
        self.shared.tracker.close();
        self.shared.tracker.wait().await;
    }
}

/// The agent entry point.
#[derive(Debug)]
pub struct Agent;

impl Agent {
    /// Validates `cfg`, loads TLS material, binds the admin port and starts
    /// connecting in the background.
    pub async fn start(
        cfg: AgentConfig,
        cancel: CancellationToken,
    ) -> Result<AgentHandle, KonnectivityError> {
        cfg.validate()?;
        let tls = super::tls::routed_client_config(&cfg.tls, &[b"h2"])?;
        let admin =
            match cfg.admin_listen {
                Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(
                    |source| KonnectivityError::Bind {
                        what: "agent admin listener",
                        addr: addr.to_string(),
                        source,
                    },
                )?),
                None => None,
            };
        let admin_addr = admin.as_ref().and_then(|l| l.local_addr().ok());
        let shared = Arc::new(Shared {
            agent_id: cfg.agent_id.clone(),
            identifiers: cfg.identifiers.clone(),
            tls,
            metrics: AgentMetrics::default(),
            cancel: cancel.clone(),
            tracker: TaskTracker::new(),
            draining: AtomicBool::new(false),
            next_connect_id: AtomicI64::new(1),
            known_server_count: AtomicI64::new(0),
            connected: Mutex::new(HashMap::new()),
            dial_timeout: cfg.dial_timeout,
            stall_timeout: cfg.stall_timeout,
            conn_queue: cfg.conn_queue,
            sync_interval: cfg.sync_interval,
            sync_interval_cap: cfg.sync_interval_cap,
            tasks: AtomicI64::new(0),
        });
        if let Some(l) = admin {
            let s = shared.clone();
            let src = Arc::new(move || {
                let ids: Vec<String> = s.lock().keys().cloned().collect();
                super::admin::Status {
                    ready: !ids.is_empty(),
                    not_ready_code: 503,
                    not_ready_text: "[-]server-connected failed: no servers connected".into(),
                    detail: s
                        .lock()
                        .iter()
                        .map(|(i, c)| format!("server {i} at {}\n", c.addr))
                        .collect(),
                    metrics: s.metrics.encode(),
                }
            });
            shared
                .tracker
                .spawn(super::admin::serve(l, src, cancel.clone(), COMPONENT));
        }
        shared.tracker.spawn(manage(shared.clone(), cfg.servers));
        let s = shared.clone();
        super::trim::spawn(&shared.tracker, cancel.clone(), COMPONENT, move || {
            s.metrics
                .open_endpoint_connections
                .load(Ordering::Relaxed)
                .max(0) as usize
        });
        tracing::info!(component = COMPONENT, agent_id = %cfg.agent_id, admin = ?admin_addr, "konnectivity agent started");
        Ok(AgentHandle { shared, admin_addr })
    }
}

/// Keeps one worker per configured address and, when the servers announce
/// more servers than are connected (servers behind one load-balanced
/// address), opens extra connections round-robin until the count is met.
async fn manage(shared: Arc<Shared>, mut servers: watch::Receiver<Vec<ServerAddr>>) {
    let mut workers: HashMap<ServerAddr, CancellationToken> = HashMap::new();
    let mut rr = 0usize;
    let mut tick = tokio::time::interval(shared.sync_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let list: Vec<ServerAddr> = servers.borrow_and_update().clone();
        workers.retain(|addr, tok| {
            let keep = list.contains(addr);
            if !keep {
                tok.cancel();
            }
            keep
        });
        for addr in &list {
            if !workers.contains_key(addr) {
                let tok = shared.cancel.child_token();
                workers.insert(addr.clone(), tok.clone());
                shared
                    .tracker
                    .spawn(worker(shared.clone(), addr.clone(), tok));
            }
        }
        tokio::select! {
            _ = shared.cancel.cancelled() => break,
            r = servers.changed() => if r.is_err() {
                // Sender gone: keep the last list until cancelled.
                shared.cancel.cancelled().await;
                break;
            },
            _ = tick.tick() => {
                let want = shared.known_server_count.load(Ordering::Relaxed) as usize;
                if !list.is_empty()
                    && !shared.draining.load(Ordering::Relaxed)
                    && shared.connected_count() < want
                    && shared.connected_count() >= list.len()
                {
                    rr = rr.wrapping_add(1);
                    let addr = list[rr % list.len()].clone();
                    if let Some(tok) = workers.get(&addr) {
                        let s = shared.clone();
                        let tok = tok.clone();
                        shared.tracker.spawn(async move {
                            if let Ok(sess) = session::connect(&s, &addr, &tok).await {
                                session::run(s, sess).await;
                            }
                        });
                    }
                }
            }
        }
    }
}

/// Maintains one connection to `addr`.
async fn worker(shared: Arc<Shared>, addr: ServerAddr, cancel: CancellationToken) {
    let mut backoff = shared.sync_interval;
    loop {
        if cancel.is_cancelled() {
            break;
        }
        if shared.draining.load(Ordering::Relaxed) {
            cancel.cancelled().await;
            break;
        }
        match session::connect(&shared, &addr, &cancel).await {
            Ok(sess) => {
                backoff = shared.sync_interval;
                match session::run(shared.clone(), sess).await {
                    session::Ended::Duplicate => {
                        // Another address reached the same server: retry
                        // later without growing the backoff (upstream does).
                        tokio::select! {
                            _ = cancel.cancelled() => break,
                            _ = tokio::time::sleep(jitter(shared.sync_interval)) => {}
                        }
                    }
                    session::Ended::Closed => {}
                }
            }
            Err(e) => {
                shared.metrics.server_connection_failures.inc(&["connect"]);
                tracing::info!(
                    component = COMPONENT,
                    server = %addr,
                    error = %crate::telemetry::Chain(&e),
                    retry_in_ms = backoff.as_millis() as u64,
                    "cannot connect to proxy server"
                );
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(jitter(backoff)) => {}
                }
                backoff = backoff.mul_f64(1.5).min(shared.sync_interval_cap);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_addr_parses_and_prints() {
        let a: ServerAddr = "127.0.0.1:8132".parse().unwrap();
        assert_eq!(a.host, "127.0.0.1");
        assert_eq!(a.port, 8132);
        let b: ServerAddr = "[::1]:8132".parse().unwrap();
        assert_eq!(b.host, "::1");
        assert_eq!(b.to_string(), "[::1]:8132");
        assert!("nohost".parse::<ServerAddr>().is_err());
        assert!(":80".parse::<ServerAddr>().is_err());
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        for _ in 0..100 {
            let j = jitter(Duration::from_secs(1));
            assert!(j >= Duration::from_millis(900) && j <= Duration::from_millis(1100));
        }
    }
}
