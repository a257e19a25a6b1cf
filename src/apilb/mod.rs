//! The node-local apiserver load balancer (issue #16): on every worker,
//! mkectl listens on `127.0.0.1:7443` ([`DEFAULT_PORT`]) and forwards TCP to
//! the live controllers' kube-apiservers. The kubelet and kube-proxy
//! kubeconfigs point at it, so they keep working when a controller goes
//! away without any external load balancer.
//!
//! # Why node-local
//!
//! An HA control plane needs one apiserver address for its clients. An
//! external load balancer (cloud LB, keepalived + HAProxy) is one more thing
//! to run, and a single point of failure unless it is itself made HA. k0s
//! solves it by running an Envoy on every worker that balances to the
//! controllers it learns from the cluster; mkectl does the same in-process:
//! the worker already learns the controller list from the join API (and
//! refreshes it), so the balancer only has to follow that list. Each node
//! only depends on itself and the controllers.
//!
//! # What it does
//!
//! * **Plain TCP**: bytes are copied both ways, half-close is passed on. TLS
//!   stays end to end between the client and the apiserver (whose serving
//!   certificate names `127.0.0.1`), so client certificates authenticate to
//!   the apiserver exactly as with a direct connection.
//! * **Backends** come from a `watch` channel of addresses
//!   ([`backends_from_records`] maps the join API's controller list); a
//!   change takes effect for new connections at once.
//! * **Selection**: least connections among the healthy backends, ties in
//!   round-robin order (see [`balancer`] for why). A backend that refuses
//!   the connection (or does not answer within [`DEFAULT_CONNECT_TIMEOUT`])
//!   is marked down at once (passive check) and the next candidate is tried
//!   immediately, so a client is not failed while another backend is alive.
//!   With no healthy backend every known one is tried once (unknown before
//!   down), so a cold start before the first check, or a probe identity not
//!   yet on disk, still forwards.
//! * **Health policy** ([`health`]): `GET /readyz` over TLS every
//!   [`DEFAULT_HEALTH_INTERVAL`] (1 s), bounded by [`DEFAULT_HEALTH_TIMEOUT`]
//!   (1 s), the serving certificate verified against the cluster CA for the
//!   backend's IP address, a client certificate presented (re-read at every
//!   probe: the kubelet's rotates). Up after [`UP_AFTER_SUCCESSES`] 2xx
//!   answer, down after [`DOWN_AFTER_FAILURES`] failure.
//! * **Failover bound**: a controller that goes away is out of rotation at
//!   the next probe after its death, at most interval + timeout = 2 s later
//!   (1 s when it refuses connections, the usual case for a killed process);
//!   a client connecting in between is moved to another backend by the
//!   passive check without seeing an error.
//! * **Drain**: on cancellation the listener closes; open connections get
//!   [`DEFAULT_DRAIN_TIMEOUT`] to finish, then are dropped.
//! * **Observability**: [`ApiLb::status`] (serde, camelCase) and
//!   [`ApiLb::metrics`] (Prometheus text).

pub mod balancer;
pub mod health;
pub mod kubeconfig;
mod metrics;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

pub use balancer::{
    BackendStatus, Health, Outcome, DOWN_AFTER_FAILURES, MAX_ERROR_CHARS, UP_AFTER_SUCCESSES,
};
pub use health::{
    HealthCheck, HttpsHealthCheck, DEFAULT_HEALTH_INTERVAL, DEFAULT_HEALTH_TIMEOUT, HEALTH_PATH,
};

use balancer::Shared;

use crate::join::registry::ControllerRecord;

/// `component` field of every span and event.
pub const COMPONENT: &str = "api-lb";
/// Port of the balancer on 127.0.0.1 (`spec.worker.apiLoadBalancerPort`).
pub const DEFAULT_PORT: u16 = crate::config::defaults::API_LOAD_BALANCER_PORT;
/// Address the balancer listens on by default: loopback only, it serves the
/// node's own clients.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DEFAULT_PORT);
/// Bound on one connection attempt to a backend before the next is tried.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long open connections may run after cancellation before they are
/// dropped.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ApiLbError {
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the local address of the listener on {addr}")]
    LocalAddr {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Everything the balancer needs besides its backends.
#[derive(Debug, Clone)]
pub struct ApiLbConfig {
    /// Where to listen ([`DEFAULT_LISTEN`]; port 0 picks a free one).
    pub listen: SocketAddr,
    /// How backends are probed.
    pub health: HttpsHealthCheck,
    /// Probe every backend this often.
    pub health_interval: Duration,
    pub connect_timeout: Duration,
    pub drain_timeout: Duration,
}

impl ApiLbConfig {
    /// Defaults for every timing; `health` says how to probe.
    pub fn new(listen: SocketAddr, health: HttpsHealthCheck) -> Self {
        ApiLbConfig {
            listen,
            health,
            health_interval: DEFAULT_HEALTH_INTERVAL,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
        }
    }
}

/// The apiserver addresses of `records` (`https://<ip>:<port>`), in order,
/// without duplicates. A URL that does not parse or names a host rather than
/// an IP address is skipped with a warning (the balancer resolves nothing).
pub fn backends_from_records(records: &[ControllerRecord]) -> Vec<SocketAddr> {
    let mut out = Vec::with_capacity(records.len());
    for r in records {
        let parsed = crate::join::tls::split_host_port(&r.api_server)
            .map_err(|e| e.to_string())
            .and_then(|(host, port)| {
                host.parse::<IpAddr>()
                    .map(|ip| SocketAddr::new(ip, port))
                    .map_err(|_| format!("{host} is not an IP address"))
            });
        match parsed {
            Ok(addr) if !out.contains(&addr) => out.push(addr),
            Ok(_) => {}
            Err(error) => warn!(
                component = COMPONENT,
                controller = %r.name,
                api_server = %r.api_server,
                error = %error,
                "skipping controller: its apiserver URL is not https://<ip>:<port>"
            ),
        }
    }
    out
}

/// A backend list that follows a controller list: the current
/// [`backends_from_records`] of `records` at once, then after every change,
/// until `cancel` or until `records`' sender is gone. An empty or entirely
/// unparsable controller list is not passed on (the last usable set stays):
/// forgetting every apiserver would only turn a refresh glitch into an
/// outage of the node.
pub fn follow_records(
    mut records: watch::Receiver<Vec<ControllerRecord>>,
    cancel: CancellationToken,
) -> watch::Receiver<Vec<SocketAddr>> {
    let (tx, rx) = watch::channel(backends_from_records(&records.borrow_and_update()));
    let span = tracing::info_span!("apilb_follow_records", component = COMPONENT);
    tokio::spawn(
        async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    r = records.changed() => if r.is_err() { return },
                }
                let next = backends_from_records(&records.borrow_and_update());
                if next.is_empty() {
                    warn!(
                        component = COMPONENT,
                        "controller list has no usable apiserver; keeping the last set"
                    );
                    continue;
                }
                tx.send_if_modified(|cur| {
                    let changed = *cur != next;
                    *cur = next;
                    changed
                });
            }
        }
        .instrument(span),
    );
    rx
}

/// A running balancer. Dropping it does not stop it: cancel the token given
/// to [`ApiLb::start`], then [`ApiLb::join`].
pub struct ApiLb {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for ApiLb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiLb")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl ApiLb {
    /// Binds the listener, takes the current backend set, starts the health
    /// checkers and the accept loop, and returns. Runs until `cancel`.
    pub async fn start(
        config: ApiLbConfig,
        backends: watch::Receiver<Vec<SocketAddr>>,
        cancel: CancellationToken,
    ) -> Result<Self, ApiLbError> {
        let check: Arc<dyn HealthCheck> = Arc::new(config.health.clone());
        Self::start_with_check(config, check, backends, cancel).await
    }

    /// [`ApiLb::start`] with another health check (tests, benchmarks);
    /// `config.health` is then only used for its timeout.
    pub async fn start_with_check(
        config: ApiLbConfig,
        check: Arc<dyn HealthCheck>,
        mut backends: watch::Receiver<Vec<SocketAddr>>,
        cancel: CancellationToken,
    ) -> Result<Self, ApiLbError> {
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ApiLbError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| ApiLbError::LocalAddr {
                addr: config.listen,
                source,
            })?;
        let shared = Arc::new(Shared::new());
        let checks = Checks {
            check,
            shared: shared.clone(),
            interval: config.health_interval,
            timeout: config.health.timeout,
            root: cancel.child_token(),
        };
        let initial = backends.borrow_and_update().clone();
        checks.apply(&initial);
        shared.listening.store(true, Ordering::Relaxed);
        info!(
            component = COMPONENT,
            listen = %local_addr,
            backends = ?initial,
            "apiserver load balancer listening"
        );

        let span = tracing::info_span!("apilb", component = COMPONENT, listen = %local_addr);
        tokio::spawn(follow_backends(backends, checks, cancel.clone()).instrument(span.clone()));
        let task = tokio::spawn(
            serve(
                listener,
                shared.clone(),
                config.connect_timeout,
                config.drain_timeout,
                cancel,
            )
            .instrument(span),
        );
        Ok(ApiLb {
            local_addr,
            shared,
            task,
        })
    }

    /// The address the balancer listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Every backend with its health and connection counts.
    pub fn status(&self) -> Vec<BackendStatus> {
        self.shared.status()
    }

    /// Backends in rotation.
    pub fn healthy(&self) -> Vec<SocketAddr> {
        self.shared
            .backends()
            .iter()
            .filter(|b| b.health() == Health::Up)
            .map(|b| b.addr)
            .collect()
    }

    /// Whether the listener accepts connections (false once draining).
    pub fn listening(&self) -> bool {
        self.shared.listening.load(Ordering::Relaxed)
    }

    /// Prometheus text (format 0.0.4) of the balancer's families.
    pub fn metrics(&self) -> String {
        metrics::render(&self.shared, &self.shared.status())
    }

    /// Waits until `pred` holds for the status (checked now and after every
    /// health check, connection failure and backend set change).
    pub async fn wait_until(&self, mut pred: impl FnMut(&[BackendStatus]) -> bool) {
        let mut rx = self.shared.subscribe();
        loop {
            let _ = rx.borrow_and_update();
            if pred(&self.shared.status()) {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// A cheap, cloneable reader of the status and metrics, for status and
    /// metrics pages that live apart from the balancer.
    pub fn status_handle(&self) -> StatusHandle {
        StatusHandle(self.shared.clone())
    }

    /// Waits for the accept loop and the drain to finish (after cancellation).
    pub async fn join(self) {
        if let Err(e) = self.task.await {
            warn!(component = COMPONENT, error = %crate::telemetry::Chain(&e), "balancer task ended abnormally");
        }
    }

    /// Whether the accept loop has ended.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

/// Reads a balancer's status and metrics ([`ApiLb::status_handle`]).
#[derive(Clone)]
pub struct StatusHandle(Arc<Shared>);

impl std::fmt::Debug for StatusHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusHandle").finish_non_exhaustive()
    }
}

impl StatusHandle {
    /// Same as [`ApiLb::status`].
    pub fn status(&self) -> Vec<BackendStatus> {
        self.0.status()
    }

    /// Same as [`ApiLb::metrics`].
    pub fn metrics(&self) -> String {
        metrics::render(&self.0, &self.0.status())
    }

    /// Same as [`ApiLb::listening`].
    pub fn listening(&self) -> bool {
        self.0.listening.load(Ordering::Relaxed)
    }
}

/// Starts and stops health checkers as the backend set changes.
struct Checks {
    check: Arc<dyn HealthCheck>,
    shared: Arc<Shared>,
    interval: Duration,
    timeout: Duration,
    root: CancellationToken,
}

impl Checks {
    fn apply(&self, addrs: &[SocketAddr]) {
        for b in self.shared.set_backends(addrs, &self.root) {
            health::spawn_checker(
                b,
                self.check.clone(),
                self.shared.clone(),
                self.interval,
                self.timeout,
            );
        }
    }
}

async fn follow_backends(
    mut rx: watch::Receiver<Vec<SocketAddr>>,
    checks: Checks,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            r = rx.changed() => {
                if r.is_err() {
                    // The sender is gone: the set stays as it was.
                    debug!(component = COMPONENT, "backend list source closed; keeping the last set");
                    cancel.cancelled().await;
                    break;
                }
                let addrs = rx.borrow_and_update().clone();
                info!(component = COMPONENT, backends = ?addrs, "apiserver backend set changed");
                checks.apply(&addrs);
            }
        }
    }
    checks.root.cancel();
}

/// Accepts until `cancel`, then drains.
async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    connect_timeout: Duration,
    drain_timeout: Duration,
    cancel: CancellationToken,
) {
    let tracker = TaskTracker::new();
    let hard_stop = CancellationToken::new();
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((client, peer)) => {
                shared.accepted.fetch_add(1, Ordering::Relaxed);
                let shared = shared.clone();
                let hard_stop = hard_stop.clone();
                tracker.spawn(
                    async move {
                        tokio::select! {
                            _ = hard_stop.cancelled() => {
                                debug!(component = COMPONENT, "connection dropped at the end of the drain");
                            }
                            _ = forward(client, &shared, connect_timeout) => {}
                        }
                    }
                    .instrument(
                        tracing::debug_span!("apilb_conn", component = COMPONENT, client = %peer),
                    ),
                );
            }
            Err(e) => {
                // Out of file descriptors and the like: back off briefly
                // instead of spinning.
                warn!(component = COMPONENT, error = %crate::telemetry::Chain(&e), "accept failed");
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        }
    }
    drop(listener);
    shared.listening.store(false, Ordering::Relaxed);
    shared.notify();
    tracker.close();
    let open = tracker.len();
    info!(
        component = COMPONENT,
        open,
        drain_timeout = ?drain_timeout,
        "apiserver load balancer stopped accepting; draining"
    );
    if tokio::time::timeout(drain_timeout, tracker.wait())
        .await
        .is_err()
    {
        warn!(
            component = COMPONENT,
            open = tracker.len(),
            "drain deadline passed; dropping open connections"
        );
        hard_stop.cancel();
        tracker.wait().await;
    }
    info!(component = COMPONENT, "apiserver load balancer stopped");
}

/// Connects `client` to the first candidate backend that accepts and copies
/// bytes both ways until both sides are done.
async fn forward(mut client: TcpStream, shared: &Shared, connect_timeout: Duration) {
    // Small request/response exchanges (HTTP/2 frames, TLS records) must
    // not wait for Nagle on either leg.
    let _ = client.set_nodelay(true);
    let candidates = shared.candidates();
    if candidates.is_empty() {
        shared.unroutable.fetch_add(1, Ordering::Relaxed);
        warn!(
            component = COMPONENT,
            "no apiserver backend known; closing the client connection"
        );
        return;
    }
    for (i, backend) in candidates.iter().enumerate() {
        let attempt = tokio::time::timeout(connect_timeout, TcpStream::connect(backend.addr)).await;
        let error = match attempt {
            Ok(Ok(mut upstream)) => {
                let _ = upstream.set_nodelay(true);
                let _guard = backend.open();
                match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                    Ok((up, down)) => debug!(
                        component = COMPONENT,
                        backend = %backend.addr,
                        bytes_to_backend = up,
                        bytes_to_client = down,
                        "connection closed"
                    ),
                    Err(e) => debug!(
                        component = COMPONENT,
                        backend = %backend.addr,
                        error = %crate::telemetry::Chain(&e),
                        "connection ended with an error"
                    ),
                }
                return;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("timed out after {connect_timeout:?}"),
        };
        if let Some(health) = backend.connect_failed(error.clone()) {
            health::log_transition(backend.addr, health, Some(&error), "connection attempt");
            shared.notify();
        }
        if i + 1 < candidates.len() {
            shared.failovers.fetch_add(1, Ordering::Relaxed);
            debug!(
                component = COMPONENT,
                backend = %backend.addr,
                error = %error,
                "backend refused; trying the next one"
            );
        }
    }
    shared.unroutable.fetch_add(1, Ordering::Relaxed);
    warn!(
        component = COMPONENT,
        tried = candidates.len(),
        "no apiserver backend accepted the connection; closing the client connection"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, api_server: &str) -> ControllerRecord {
        ControllerRecord {
            name: name.into(),
            api_server: api_server.into(),
            konnectivity: String::new(),
            join_api: String::new(),
            etcd_peer_url: String::new(),
        }
    }

    #[test]
    fn records_map_to_addresses_and_bad_ones_are_skipped() {
        let got = backends_from_records(&[
            record("a", "https://192.0.2.10:6443"),
            record("b", "https://[2001:db8::1]:6443/"),
            record("c", "https://controller.example:6443"),
            record("d", "http://192.0.2.11:6443"),
            record("e", "https://192.0.2.12"),
            record("f", "https://192.0.2.10:6443"),
        ]);
        assert_eq!(
            got,
            vec![
                "192.0.2.10:6443".parse::<SocketAddr>().unwrap(),
                "[2001:db8::1]:6443".parse().unwrap(),
                "192.0.2.12:443".parse().unwrap(),
            ]
        );
    }

    #[tokio::test]
    async fn followed_records_map_and_keep_the_last_usable_set() {
        let (tx, rx) = watch::channel(vec![record("a", "https://127.0.0.1:6443")]);
        let cancel = CancellationToken::new();
        let mut out = follow_records(rx, cancel.clone());
        assert_eq!(
            *out.borrow_and_update(),
            vec![SocketAddr::from(([127, 0, 0, 1], 6443))]
        );
        tx.send(vec![
            record("a", "https://127.0.0.1:6443"),
            record("b", "https://127.0.0.2:6443"),
        ])
        .unwrap();
        out.changed().await.unwrap();
        assert_eq!(out.borrow_and_update().len(), 2);
        tx.send(vec![]).unwrap();
        tx.send(vec![record("c", "https://127.0.0.3:6443")])
            .unwrap();
        out.changed().await.unwrap();
        assert_eq!(
            *out.borrow_and_update(),
            vec![SocketAddr::from(([127, 0, 0, 3], 6443))]
        );
        cancel.cancel();
        assert!(out.changed().await.is_err());
    }

    #[test]
    fn default_listen_is_loopback_7443() {
        assert_eq!(DEFAULT_LISTEN.to_string(), "127.0.0.1:7443");
    }
}
