//! The konnectivity server: frontends (gRPC on a UDS for kube-apiserver,
//! HTTP-CONNECT on a UDS and optionally TCP+mTLS), the agent listener (TLS,
//! client certificate required), backend choice and tunnel bookkeeping.
//!
//! States: `Server::start` binds every listener (or fails, binding nothing
//! further) and returns a [`ServerHandle`]; the server then runs until the
//! cancellation token fires, when every listener stops, every stream ends
//! (tunnels are closed towards both sides) and the UDS files are removed;
//! [`ServerHandle::wait_stopped`] resolves once all its tasks are gone.

mod agent_listener;
pub mod authority;
pub mod backend;
mod grpc_frontend;
mod http_connect;
pub mod identity;
pub mod tunnels;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use backend::BackendManager;
pub use backend::ProxyStrategy;
pub use identity::AgentIdentity;
use tunnels::{FrontendLink, Tunnels};

use super::metrics::ServerMetrics;
use super::proto::{Packet, DATA_QUEUE_PACKETS};
use super::tls::TlsFiles;
use super::KonnectivityError;

/// How long the stream reader waits for one tunnel's full queue before it
/// closes that tunnel (see the module docs of `konnectivity`).
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Packets queued towards one frontend (one tunnel): at most
/// [`QUEUED_DATA_BYTES`](super::proto::QUEUED_DATA_BYTES) (1 MiB) of full DATA packets. The HTTP/2 windows
/// already hold megabytes in flight; deeper queues only add memory. At 32
/// packets of 128 KiB (the default was 64), 16 busy tunnels swung the
/// server's heap by tens of MiB, past the allocator's trim threshold, and
/// it faulted ~17,000 freshly returned pages back in per second; at 8, ~340.
pub const DEFAULT_FRONTEND_QUEUE: usize = DATA_QUEUE_PACKETS;
/// Packets queued towards one agent stream (shared by its tunnels), in
/// front of its HTTP/2 window. Deeper queues only add data in flight that
/// has gone cold in the cache by the time it is sent.
pub const DEFAULT_BACKEND_QUEUE: usize = DATA_QUEUE_PACKETS;
/// Control packets queued towards one agent stream before it is retired.
pub const BACKEND_CTRL_QUEUE: usize = 4096;
/// How long a dial may wait for the agent's DIAL_RSP. konnectivity-client
/// gives up after 30 s; answering just before that lets it see the reason.
pub const DEFAULT_DIAL_TIMEOUT: Duration = Duration::from_secs(25);
/// How long a frontend waits for room in its agent stream's queue.
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 windows: large enough that one tunnel can fill a fast link.
pub(crate) const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
pub(crate) const CONN_WINDOW: u32 = 16 * 1024 * 1024;
/// Largest HTTP/2 frame we accept: a whole DATA packet fits one frame
/// instead of being cut into 16 KiB pieces (fewer frames to process).
pub(crate) const MAX_FRAME: u32 = 256 * 1024;
// A full DATA packet (payload plus gRPC and protobuf headers) fits a frame.
const _: () = assert!(super::proto::MAX_DATA_CHUNK + 64 <= MAX_FRAME as usize);
/// Largest gRPC message accepted (4 MiB payload plus framing).
pub(crate) const MAX_DECODE: usize = super::proto::MAX_MESSAGE_SIZE + 64 * 1024;

/// Everything the server needs; validated by [`Server::start`] before
/// anything binds.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Sent to agents in the `serverid` header; must differ per server.
    pub server_id: String,
    /// Sent to agents in the `servercount` header.
    pub server_count: u32,
    /// gRPC frontend socket (what kube-apiserver's egress selector uses).
    pub grpc_uds: Option<PathBuf>,
    /// HTTP-CONNECT frontend socket.
    pub http_connect_uds: Option<PathBuf>,
    /// HTTP-CONNECT frontend over TCP; clients need a certificate from `ca`.
    pub http_connect_tcp: Option<(SocketAddr, TlsFiles)>,
    /// Agent listener address.
    pub agent_listen: SocketAddr,
    /// Agents arrive from the single-port front instead ([`crate::expose`]).
    pub agent_routed: Option<crate::expose::RoutedIncoming>,
    /// Agent listener identity and the CA agents' certificates must chain to.
    pub tls: TlsFiles,
    /// Where an agent's id and identifiers come from (see [`identity`]).
    pub agent_identity: AgentIdentity,
    /// Admin HTTP (`/healthz`, `/readyz`, `/metrics`); None = off.
    pub admin_listen: Option<SocketAddr>,
    /// Backend choice, tried in order.
    pub proxy_strategies: Vec<ProxyStrategy>,
    pub stall_timeout: Duration,
    pub dial_timeout: Duration,
    pub frontend_queue: usize,
    pub backend_queue: usize,
}

impl ServerConfig {
    /// A config with every tunable at its default.
    pub fn new(server_id: impl Into<String>, agent_listen: SocketAddr, tls: TlsFiles) -> Self {
        ServerConfig {
            server_id: server_id.into(),
            server_count: 1,
            grpc_uds: None,
            http_connect_uds: None,
            http_connect_tcp: None,
            agent_listen,
            agent_routed: None,
            tls,
            agent_identity: AgentIdentity::default(),
            admin_listen: None,
            proxy_strategies: vec![ProxyStrategy::Default],
            stall_timeout: DEFAULT_STALL_TIMEOUT,
            dial_timeout: DEFAULT_DIAL_TIMEOUT,
            frontend_queue: DEFAULT_FRONTEND_QUEUE,
            backend_queue: DEFAULT_BACKEND_QUEUE,
        }
    }

    fn validate(&self) -> Result<(), KonnectivityError> {
        let bad = |field, reason: &str| {
            Err(KonnectivityError::Config {
                field,
                reason: reason.to_string(),
            })
        };
        if self.server_id.is_empty() {
            return bad("server_id", "must not be empty");
        }
        if self.server_count == 0 {
            return bad("server_count", "must be at least 1");
        }
        if self.grpc_uds.is_none()
            && self.http_connect_uds.is_none()
            && self.http_connect_tcp.is_none()
        {
            return bad(
                "frontends",
                "at least one frontend (gRPC UDS or HTTP-CONNECT) is needed",
            );
        }
        if self.proxy_strategies.is_empty() {
            return bad("proxy_strategies", "must not be empty");
        }
        if self.frontend_queue == 0 || self.backend_queue == 0 {
            return bad("queues", "queue sizes must be at least 1");
        }
        if self.stall_timeout.is_zero() {
            return bad("stall_timeout", "must be positive");
        }
        Ok(())
    }
}

/// Leak counters: all of them return to zero once every tunnel is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ServerStats {
    pub pending_dials: usize,
    pub established: usize,
    /// Open Proxy streams and HTTP-CONNECT connections.
    pub frontends: usize,
    pub grpc_frontend_streams: i64,
    pub http_connections: i64,
    /// Connected agent streams.
    pub backends: usize,
    /// Per-stream and per-connection tasks currently alive.
    pub tunnel_tasks: i64,
}

/// State shared by every task of one server.
#[derive(Debug)]
pub(crate) struct Shared {
    pub server_id: String,
    /// Changes at run time (see [`ServerHandle::set_server_count`]).
    pub server_count: AtomicU32,
    pub backends: BackendManager,
    pub tunnels: Tunnels,
    pub metrics: Arc<ServerMetrics>,
    pub cancel: CancellationToken,
    pub tracker: TaskTracker,
    pub stall_timeout: Duration,
    pub dial_timeout: Duration,
    pub frontend_queue: usize,
    pub backend_queue: usize,
    pub agent_identity: AgentIdentity,
    next_id: AtomicU64,
    tasks: AtomicI64,
    grpc_streams: AtomicI64,
}

/// Counts a live task in [`ServerStats::tunnel_tasks`] until dropped.
pub(crate) struct TaskGuard(Arc<Shared>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.tasks.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Outcome of handing a packet to a frontend.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Delivery {
    Delivered,
    /// The frontend is gone.
    Gone,
    /// The frontend did not take the packet within the stall budget.
    Stalled,
}

impl Shared {
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn task_guard(self: &Arc<Self>) -> TaskGuard {
        self.tasks.fetch_add(1, Ordering::Relaxed);
        TaskGuard(self.clone())
    }

    /// Hands `p` (from an agent stream) to a frontend under the stall policy:
    /// waits on a full queue only while the queue has moved within the stall
    /// budget (see [`super::io::Progress`]).
    pub async fn deliver(&self, link: &FrontendLink, p: Packet) -> Delivery {
        match link.tx.try_send(Box::new(p)) {
            Ok(()) => {
                link.progress.touch();
                Delivery::Delivered
            }
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => Delivery::Gone,
            Err(tokio::sync::mpsc::error::TrySendError::Full(p)) => {
                let method = match link.kind {
                    tunnels::FrontendKind::Grpc => "Proxy",
                    tunnels::FrontendKind::HttpConnect => "HTTPConnect",
                };
                self.metrics.full_receive_channels.add(&[method], 1);
                let wait = link.progress.remaining(self.stall_timeout);
                let r = if wait.is_zero() {
                    Delivery::Stalled
                } else {
                    tokio::select! {
                        r = link.tx.send(p) => if r.is_ok() { Delivery::Delivered } else { Delivery::Gone },
                        _ = link.kill.cancelled() => Delivery::Gone,
                        _ = tokio::time::sleep(wait) => Delivery::Stalled,
                    }
                };
                if r == Delivery::Delivered {
                    link.progress.touch();
                }
                self.metrics.full_receive_channels.add(&[method], -1);
                r
            }
        }
    }

    /// Ends an established tunnel whose frontend cannot take data: CLOSE_REQ
    /// to the agent, and the frontend is ended with an error.
    pub fn abort_tunnel(&self, backend: &backend::Backend, connect_id: i64, stalled: bool) {
        if let Some(link) = self.tunnels.drop_established(backend.id, connect_id) {
            link.kill.cancel();
        }
        if stalled {
            self.metrics.stalled_tunnels.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                component = "konnectivity-server",
                agent_id = %backend.agent_id,
                connect_id,
                "tunnel reader stalled past the budget; closing that tunnel"
            );
        }
        self.metrics.stream_packets.inc(
            super::metrics::TO_AGENT,
            super::proto::PacketType::CloseReq as i32,
        );
        backend.send_ctrl(Packet::close_req(connect_id));
    }

    fn refresh_backend_metrics(&self) {
        for s in self.backends.strategies() {
            self.metrics
                .ready_backends
                .set(&[s.name()], self.backends.count(*s) as i64);
        }
    }

    pub fn stats(&self) -> ServerStats {
        let (pending, established, frontends) = self.tunnels.counts();
        ServerStats {
            pending_dials: pending,
            established,
            frontends,
            grpc_frontend_streams: self.grpc_streams.load(Ordering::Relaxed),
            http_connections: self.metrics.http_connections.load(Ordering::Relaxed),
            backends: self.backends.total(),
            tunnel_tasks: self.tasks.load(Ordering::Relaxed),
        }
    }
}

/// A running server.
#[derive(Debug)]
pub struct ServerHandle {
    shared: Arc<Shared>,
    agent_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    http_connect_tcp_addr: Option<SocketAddr>,
    uds_files: Vec<PathBuf>,
}

impl ServerHandle {
    /// The bound agent listener address (useful with port 0).
    pub fn agent_addr(&self) -> SocketAddr {
        self.agent_addr
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    pub fn http_connect_tcp_addr(&self) -> Option<SocketAddr> {
        self.http_connect_tcp_addr
    }

    pub fn server_id(&self) -> &str {
        &self.shared.server_id
    }

    /// Updates the `servercount` header sent to agents that connect from now
    /// on (an HA controller set grows or shrinks while the server runs).
    /// Agents already connected keep the count they were told; with one
    /// address per controller they do not need it to find every server.
    /// Zero is ignored (the count is at least this server).
    pub fn set_server_count(&self, count: u32) {
        if count > 0 {
            self.shared.server_count.store(count, Ordering::Relaxed);
        }
    }

    /// The count currently announced to agents.
    pub fn server_count(&self) -> u32 {
        self.shared.server_count.load(Ordering::Relaxed)
    }

    /// Agent streams counted by the first strategy (what `/readyz` checks).
    pub fn ready_backends(&self) -> usize {
        self.shared.backends.ready_count()
    }

    /// `(agent id, streams, draining)` for every connected agent.
    pub fn agents(&self) -> Vec<(String, usize, bool)> {
        self.shared.backends.describe()
    }

    pub fn stats(&self) -> ServerStats {
        self.shared.stats()
    }

    /// The `/metrics` page.
    pub fn metrics_text(&self) -> String {
        self.shared.refresh_backend_metrics();
        self.shared.metrics.encode()
    }

    /// Stops the server (same as cancelling its token).
    pub fn shutdown(&self) {
        self.shared.cancel.cancel();
    }

    /// Resolves once the server was stopped and all its tasks ended.
    pub async fn wait_stopped(&self) {
        self.shared.cancel.cancelled().await;
        self.shared.tracker.close();
        self.shared.tracker.wait().await;
        for p in &self.uds_files {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Binds a unix socket at `path`, replacing a stale socket, with mode 0660:
/// the socket is bound under a temporary name, restricted, then renamed into
/// place so the final path is never reachable with looser permissions.
pub(crate) fn bind_uds(path: &Path) -> Result<UnixListener, KonnectivityError> {
    let err = |source| KonnectivityError::Uds {
        path: path.to_path_buf(),
        source,
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "exists and is not a socket; refusing to replace it",
            )));
        }
        std::fs::remove_file(path).map_err(err)?;
    }
    let file_name = path.file_name().ok_or_else(|| {
        err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "no file name",
        ))
    })?;
    let tmp = path.with_file_name(format!(
        ".{}.{}.tmp",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).map_err(err)?;
    let finish = || -> std::io::Result<()> {
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o660))?;
        std::fs::rename(&tmp, path)
    };
    if let Err(e) = finish() {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    Ok(listener)
}

/// The server entry point.
#[derive(Debug)]
pub struct Server;

impl Server {
    /// Validates `cfg`, binds every listener and starts serving. Returns once
    /// all listeners are bound. Cancelling `cancel` stops the server.
    pub async fn start(
        cfg: ServerConfig,
        cancel: CancellationToken,
    ) -> Result<ServerHandle, KonnectivityError> {
        cfg.validate()?;
        // Load TLS material before binding anything.
        let agent_tls = super::tls::server_config(&cfg.tls, &[b"h2"])?;
        let http_tcp_tls = match &cfg.http_connect_tcp {
            Some((_, files)) => Some(super::tls::server_config(files, &[b"http/1.1"])?),
            None => None,
        };
        let metrics = Arc::new(ServerMetrics::default());
        let shared = Arc::new(Shared {
            server_id: cfg.server_id.clone(),
            server_count: AtomicU32::new(cfg.server_count),
            backends: BackendManager::new(cfg.proxy_strategies.clone()),
            tunnels: Tunnels::new(metrics.clone()),
            metrics,
            cancel: cancel.clone(),
            tracker: TaskTracker::new(),
            stall_timeout: cfg.stall_timeout,
            dial_timeout: cfg.dial_timeout,
            frontend_queue: cfg.frontend_queue,
            backend_queue: cfg.backend_queue,
            agent_identity: cfg.agent_identity,
            next_id: AtomicU64::new(1),
            tasks: AtomicI64::new(0),
            grpc_streams: AtomicI64::new(0),
        });

        let (agent_listener, agent_addr) = crate::expose::Incoming::open(
            "agent listener",
            cfg.agent_listen,
            cfg.agent_routed.as_ref(),
        )
        .await
        .map_err(|e| KonnectivityError::Bind {
            what: "agent listener",
            addr: cfg.agent_listen.to_string(),
            source: match e {
                crate::expose::ExposeError::Bind { source, .. } => source,
                other => std::io::Error::other(other.to_string()),
            },
        })?;
        let mut uds_files = Vec::new();
        let grpc_uds = match &cfg.grpc_uds {
            Some(p) => {
                let l = bind_uds(p)?;
                uds_files.push(p.clone());
                Some(l)
            }
            None => None,
        };
        let http_uds = match &cfg.http_connect_uds {
            Some(p) => {
                let l = bind_uds(p)?;
                uds_files.push(p.clone());
                Some(l)
            }
            None => None,
        };
        let mut http_connect_tcp_addr = None;
        let http_tcp = match &cfg.http_connect_tcp {
            Some((addr, _)) => {
                let l = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| KonnectivityError::Bind {
                        what: "HTTP-CONNECT listener",
                        addr: addr.to_string(),
                        source,
                    })?;
                http_connect_tcp_addr = l.local_addr().ok();
                Some(l)
            }
            None => None,
        };
        let admin =
            match cfg.admin_listen {
                Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(
                    |source| KonnectivityError::Bind {
                        what: "admin listener",
                        addr: addr.to_string(),
                        source,
                    },
                )?),
                None => None,
            };
        let admin_addr = admin.as_ref().and_then(|l| l.local_addr().ok());

        agent_listener::spawn(shared.clone(), agent_listener, agent_tls);
        let s = shared.clone();
        super::trim::spawn(
            &shared.tracker,
            cancel.clone(),
            "konnectivity-server",
            move || {
                let grpc = s.grpc_streams.load(Ordering::Relaxed);
                let http = s.metrics.http_connections.load(Ordering::Relaxed);
                (grpc.max(0) + http.max(0)) as usize
            },
        );
        if let Some(l) = grpc_uds {
            grpc_frontend::spawn_uds(shared.clone(), l);
        }
        if let Some(l) = http_uds {
            http_connect::spawn_uds(shared.clone(), l);
        }
        if let (Some(l), Some(tls)) = (http_tcp, http_tcp_tls) {
            http_connect::spawn_tcp(shared.clone(), l, tls);
        }
        if let Some(l) = admin {
            let s = shared.clone();
            let src = Arc::new(move || admin_status(&s));
            let fut = super::admin::serve(l, src, cancel.clone(), "konnectivity-server");
            shared.tracker.spawn(fut);
        }
        tracing::info!(
            component = "konnectivity-server",
            server_id = %cfg.server_id,
            agent_addr = %agent_addr,
            grpc_uds = ?cfg.grpc_uds,
            http_connect_uds = ?cfg.http_connect_uds,
            admin = ?admin_addr,
            agent_identity = %cfg.agent_identity,
            "konnectivity server listening"
        );
        Ok(ServerHandle {
            shared,
            agent_addr,
            admin_addr,
            http_connect_tcp_addr,
            uds_files,
        })
    }
}

fn admin_status(shared: &Shared) -> super::admin::Status {
    shared.refresh_backend_metrics();
    let ready = shared.backends.ready_count() > 0;
    let mut detail = String::new();
    for (agent, streams, draining) in shared.backends.describe() {
        detail.push_str(&format!(
            "agent {agent} streams={streams}{}\n",
            if draining { " draining" } else { "" }
        ));
    }
    super::admin::Status {
        ready,
        not_ready_code: 500,
        not_ready_text: "no connection to any proxy agent".into(),
        detail,
        metrics: shared.metrics.encode(),
    }
}

#[cfg(test)]
mod tests {
    use super::http_connect::status_for_dial_error;

    #[test]
    fn dial_errors_map_to_upstream_statuses() {
        assert_eq!(
            status_for_dial_error("dial tcp 10.0.0.1:80: i/o timeout"),
            "504 Gateway Timeout"
        );
        assert_eq!(
            status_for_dial_error("context deadline exceeded"),
            "504 Gateway Timeout"
        );
        assert_eq!(
            status_for_dial_error("socket: too many open files"),
            "503 Service Unavailable"
        );
        assert_eq!(
            status_for_dial_error("dial tcp 127.0.0.1:1: connect: connection refused"),
            "502 Bad Gateway"
        );
        assert_eq!(
            status_for_dial_error("lookup x: no such host"),
            "502 Bad Gateway"
        );
    }
}
