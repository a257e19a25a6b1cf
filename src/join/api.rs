//! The join API server (HTTPS on the node address, port 9443 by default).
//!
//! | route | auth | what |
//! |---|---|---|
//! | `GET /v1/ca` | none | the cluster CA certificate |
//! | `POST /v1/join/worker` | bearer: worker token | signs the agent CSR; CA bundle, controllers, kubelet bootstrap |
//! | `POST /v1/join/controller` | bearer: controller token | CA keys, SA keys; adds the etcd learner |
//! | `POST /v1/etcd/promote` | mTLS: controller | promotes a learner once in sync |
//! | `POST /v1/etcd/leave` | mTLS: that controller | removes its etcd member (quorum-checked) |
//! | `GET /v1/controllers` | mTLS: agent or controller | live controllers |
//!
//! Every request is rate-limited per source address (token bucket,
//! [`RATE_BURST`], [`RATE_PER_SECOND`]) and bodies are capped at
//! [`MAX_BODY_BYTES`]. Nobody without a token can hold the API's
//! connections: the TLS handshake and the request head each have a short
//! deadline ([`HANDSHAKE_TIMEOUT`], [`HEADER_TIMEOUT`]); authentication is
//! decided from the head (bearer or client certificate) before any body is
//! read, and the body then has [`BODY_TIMEOUT`]; connections not yet
//! authenticated are capped per source and in total, the oldest of the
//! busiest source giving way to a newcomer ([`super::gate`]). One request
//! per connection. Logs name token ids, never secrets. Status codes are
//! listed in the module docs of [`crate::join`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Extension, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::gate::{Gate, Limits, Slot};
use super::members;
use super::registry::{self, ControllerRecord};
use super::store::{AuthError, TokenStore};
use super::tls::{self, Peer, PeerCas, ServingCert, ServingSpec};
use super::token::{BootstrapToken, Role, StoredToken};
use super::wire::*;
use super::JoinError;
use crate::config::worker::is_dns_subdomain;
use crate::etcd::{self as etcd_component, EtcdClientTls};
use crate::fsutil;
use crate::pki::{self, Ca, CertUsage, KubeconfigUser, PkiPaths};

const COMPONENT: &str = "join-api";
/// Largest request body accepted (a CSR is ~500 bytes).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Requests one source address may send at once.
pub const RATE_BURST: f64 = 30.0;
/// Sustained requests per second per source address.
pub const RATE_PER_SECOND: f64 = 10.0;
/// Source addresses tracked; beyond, new ones share one bucket.
pub const RATE_MAX_CLIENTS: usize = 4096;
/// TLS handshake bound.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Request head bound, from the end of the handshake.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Request body bound, from authentication (a CSR is ~500 bytes).
pub const BODY_TIMEOUT: Duration = Duration::from_secs(5);
/// Whole-connection bound (the handler's work included).
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);
/// Concurrent connections; more are closed at once.
pub const MAX_CONNECTIONS: usize = 1024;
/// Concurrent connections from one source (IPv4 address, IPv6 /64).
pub const MAX_CONNECTIONS_PER_SOURCE: usize = 64;
/// Connections not yet authenticated (handshake, request head); a newcomer
/// beyond evicts the oldest one of the source holding the most.
pub const MAX_PENDING: usize = 256;
/// Connections not yet authenticated from one source; more are closed.
pub const MAX_PENDING_PER_SOURCE: usize = 16;
/// How often connection refusals are summarised in the log at most.
pub const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);
/// How often the serving certificate is checked for renewal.
pub const CERT_CHECK_EVERY: Duration = Duration::from_secs(3600);

/// Everything the join API needs, resolved from config and PKI.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub listen: SocketAddr,
    /// Connections from the single-port front instead of binding `listen`
    /// ([`crate::expose`]).
    pub routed: Option<crate::expose::RoutedIncoming>,
    pub pki: PkiPaths,
    pub serving: ServingSpec,
    /// Local etcd (tokens, registry, membership).
    pub etcd_endpoint: String,
    pub etcd_tls: EtcdClientTls,
    /// This controller's own record (listed even before it registers).
    pub this: ControllerRecord,
    pub cluster_name: String,
    pub kubelet: KubeletDefaults,
    /// Lifetime of agent certificates signed for workers.
    pub agent_cert_lifetime: Duration,
    /// Admin kubeconfig to mirror worker tokens as bootstrap-token Secrets;
    /// None when kube-apiserver does not run on this controller.
    pub mirror_kubeconfig: Option<PathBuf>,
    /// `/metrics` counters: every request is counted by outcome.
    pub metrics: Arc<crate::ops::Metrics>,
}

/// What a handler sees about its connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub remote: SocketAddr,
    pub peer: Peer,
    slot: Arc<Slot>,
}

impl ConnInfo {
    /// The request is authenticated: its connection is no longer pending.
    fn admit(&self) {
        self.slot.admit();
    }
}

/// A JSON error answer.
#[derive(Debug)]
pub struct ApiError {
    status: u16,
    reason: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            reason,
            message: message.into(),
        }
    }
    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }
    fn internal(e: impl std::error::Error + 'static) -> Self {
        Self::new(500, "Internal", crate::telemetry::Chain(&e).to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = ErrorBody {
            error: self.message,
            reason: self.reason.to_string(),
        };
        (status, Json(body)).into_response()
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        ApiError::new(
            e.status(),
            e.reason(),
            crate::telemetry::Chain(&e).to_string(),
        )
    }
}

impl From<members::MemberError> for ApiError {
    fn from(e: members::MemberError) -> Self {
        ApiError::new(e.status(), e.reason(), e.to_string())
    }
}

/// Token buckets per source address, bounded.
#[derive(Debug)]
pub struct RateLimiter {
    burst: f64,
    per_second: f64,
    max_clients: usize,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(burst: f64, per_second: f64, max_clients: usize) -> Self {
        Self {
            burst,
            per_second,
            max_clients,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `ip`; false when its bucket is empty.
    pub fn allow(&self, ip: IpAddr) -> bool {
        let now = Instant::now();
        let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let refill = |tokens: f64, last: Instant| -> f64 {
            (tokens + now.duration_since(last).as_secs_f64() * self.per_second).min(self.burst)
        };
        let mut key = ip;
        if !map.contains_key(&ip) && map.len() >= self.max_clients {
            // Forget clients whose bucket is full again (idle ones).
            map.retain(|_, (t, last)| refill(*t, *last) < self.burst);
            if map.len() >= self.max_clients {
                key = IpAddr::from([0, 0, 0, 0]);
            }
        }
        let (tokens, last) = map.entry(key).or_insert((self.burst, now));
        let available = refill(*tokens, *last);
        *last = now;
        if available >= 1.0 {
            *tokens = available - 1.0;
            true
        } else {
            *tokens = available;
            false
        }
    }
}

struct AppState {
    settings: ApiSettings,
    tokens: TokenStore,
    etcd: etcd_client::Client,
    limiter: RateLimiter,
    ca_pem: String,
    konnectivity_ca_pem: String,
}

impl AppState {
    /// Live controllers (the registry) plus this one.
    async fn controllers(&self) -> Result<Vec<ControllerRecord>, ApiError> {
        let mut etcd = self.etcd.clone();
        let mut list = registry::list(&mut etcd).await.map_err(|e| {
            ApiError::new(
                503,
                "EtcdUnavailable",
                crate::telemetry::Chain(&e).to_string(),
            )
        })?;
        if !list.iter().any(|r| r.name == self.settings.this.name) {
            list.push(self.settings.this.clone());
            list.sort();
        }
        Ok(list)
    }
}

/// A running join API.
#[derive(Debug)]
pub struct ApiHandle {
    addr: SocketAddr,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl ApiHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, closes connections, waits up to `deadline`.
    pub async fn shutdown(&self, deadline: Duration) -> bool {
        self.cancel.cancel();
        self.tracker.close();
        tokio::time::timeout(deadline, self.tracker.wait())
            .await
            .is_ok()
    }
}

fn read_string(path: &std::path::Path) -> Result<String, JoinError> {
    Ok(String::from_utf8_lossy(&fsutil::read(path)?).into_owned())
}

/// Issues the serving certificate, binds `settings.listen` and serves in
/// the background until `cancel` or [`ApiHandle::shutdown`].
pub async fn start(
    settings: ApiSettings,
    cancel: CancellationToken,
) -> Result<ApiHandle, JoinError> {
    let cert_spec = settings.serving.clone();
    let cert = tokio::task::spawn_blocking(move || ServingCert::issue(cert_spec))
        .await
        .map_err(|e| JoinError::Internal {
            reason: e.to_string(),
        })??;
    let cert = Arc::new(cert);
    let tls_cfg = tls::server_config(
        cert.clone(),
        &[
            settings.pki.etcd_ca.cert.clone(),
            settings.pki.konnectivity_ca.cert.clone(),
        ],
    )?;
    let peer_cas = PeerCas::load(
        &settings.pki.etcd_ca.cert,
        &settings.pki.konnectivity_ca.cert,
    )?;
    let etcd = etcd_component::connect(&settings.etcd_endpoint, &settings.etcd_tls)
        .await
        .map_err(|e| JoinError::Internal {
            reason: crate::telemetry::Chain(&e).to_string(),
        })?;
    let state = Arc::new(AppState {
        tokens: TokenStore::new(etcd.clone()),
        etcd,
        limiter: RateLimiter::new(RATE_BURST, RATE_PER_SECOND, RATE_MAX_CLIENTS),
        ca_pem: read_string(&settings.pki.ca.cert)?,
        konnectivity_ca_pem: read_string(&settings.pki.konnectivity_ca.cert)?,
        settings,
    });
    if state.settings.mirror_kubeconfig.is_none() {
        info!(
            component = COMPONENT,
            "kube-apiserver does not run on this controller: worker tokens are not mirrored as bootstrap-token Secrets"
        );
    }
    let (listener, addr) = crate::expose::Incoming::open(
        "join API",
        state.settings.listen,
        state.settings.routed.as_ref(),
    )
    .await
    .map_err(|e| JoinError::Tls {
        what: format!("listen on {}", state.settings.listen),
        reason: match std::error::Error::source(&e) {
            Some(s) => format!("{e}: {s}"),
            None => e.to_string(),
        },
    })?;
    let app = router(state.clone());
    let tracker = TaskTracker::new();
    let cancel = cancel.child_token();
    tracker.spawn(accept_loop(
        listener,
        tokio_rustls::TlsAcceptor::from(tls_cfg),
        app,
        peer_cas,
        state.settings.metrics.clone(),
        cancel.clone(),
        tracker.clone(),
    ));
    tracker.spawn(renew_loop(cert, cancel.clone()));
    info!(component = COMPONENT, %addr, "join API listening");
    Ok(ApiHandle {
        addr,
        cancel,
        tracker,
    })
}

async fn renew_loop(cert: Arc<ServingCert>, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(CERT_CHECK_EVERY) => {}
        }
        let c = cert.clone();
        match tokio::task::spawn_blocking(move || c.renew_if_due()).await {
            Ok(Ok(true)) => info!(
                component = COMPONENT,
                "renewed the join API serving certificate"
            ),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => {
                warn!(component = COMPONENT, error = %crate::telemetry::Chain(&e), "cannot renew the join API serving certificate")
            }
            Err(e) => {
                warn!(component = COMPONENT, error = %crate::telemetry::Chain(&e), "renewal task failed")
            }
        }
    }
}

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/ca", get(get_ca))
        .route("/v1/join/worker", post(join_worker))
        .route("/v1/join/controller", post(join_controller))
        .route("/v1/etcd/promote", post(promote))
        .route("/v1/etcd/leave", post(leave))
        .route("/v1/controllers", get(list_controllers))
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .layer(middleware::from_fn_with_state(state.clone(), count))
        .with_state(state)
}

/// The `result` label of `mkectl_join_requests_total` for a status.
pub fn outcome(status: u16) -> &'static str {
    match status {
        200..=299 => "ok",
        401 | 403 => "denied",
        429 => "rate_limited",
        409 => "conflict",
        400..=499 => "invalid",
        _ => "error",
    }
}

/// Counts every request by outcome (`/metrics`).
async fn count(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    state
        .settings
        .metrics
        .record_join_request(outcome(resp.status().as_u16()));
    resp
}

/// Connection refusals since the last summary line (a flood must not
/// become a log flood).
#[derive(Debug)]
struct RefusalLog {
    since: Instant,
    counts: BTreeMap<&'static str, u64>,
}

impl RefusalLog {
    fn new() -> Self {
        Self {
            since: Instant::now(),
            counts: BTreeMap::new(),
        }
    }

    /// Counts one refusal (also on /metrics) and logs a summary at most
    /// every [`REFUSAL_LOG_EVERY`].
    fn record(&mut self, metrics: &crate::ops::Metrics, reason: &'static str, remote: SocketAddr) {
        metrics.record_join_connection_refused(reason);
        *self.counts.entry(reason).or_insert(0) += 1;
        if self.since.elapsed() >= REFUSAL_LOG_EVERY {
            warn!(
                component = COMPONENT,
                refused = ?self.counts,
                last_remote = %remote,
                "join API connection limits hit (per source or in total); closing connections"
            );
            self.counts.clear();
            self.since = Instant::now();
        }
    }
}

async fn accept_loop(
    mut listener: crate::expose::Incoming,
    acceptor: tokio_rustls::TlsAcceptor,
    app: Router,
    peer_cas: PeerCas,
    metrics: Arc<crate::ops::Metrics>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let gate = Gate::new(Limits {
        total: MAX_CONNECTIONS,
        per_source: MAX_CONNECTIONS_PER_SOURCE,
        pending: MAX_PENDING,
        pending_per_source: MAX_PENDING_PER_SOURCE,
    });
    let peer_cas = Arc::new(peer_cas);
    let log = Arc::new(Mutex::new(RefusalLog::new()));
    let record = {
        let (log, metrics) = (log.clone(), metrics.clone());
        move |reason: &'static str, remote: SocketAddr| {
            log.lock()
                .unwrap_or_else(|p| p.into_inner())
                .record(&metrics, reason, remote);
        }
    };
    loop {
        let (tcp, remote) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    warn!(component = COMPONENT, error = %crate::telemetry::Chain(&e), "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let slot = match gate.enter(remote.ip()) {
            Ok(entered) => {
                if entered.evicted {
                    record("evicted", remote);
                }
                Arc::new(entered.slot)
            }
            Err(refused) => {
                // Dropping the socket closes it.
                record(refused.reason(), remote);
                continue;
            }
        };
        let (acceptor, app, peer_cas, cancel, record) = (
            acceptor.clone(),
            app.clone(),
            peer_cas.clone(),
            cancel.clone(),
            record.clone(),
        );
        tracker.spawn(async move {
            let evicted = slot.evicted.clone();
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
            let tls = tokio::select! {
                _ = cancel.cancelled() => return,
                _ = evicted.cancelled() => return,
                r = handshake => match r {
                    Ok(Ok(t)) => t,
                    Ok(Err(e)) => {
                        debug!(component = COMPONENT, %remote, error = %crate::telemetry::Chain(&e), "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        record("handshake_timeout", remote);
                        return;
                    }
                },
            };
            let peer =
                peer_cas.identify(tls.get_ref().1.peer_certificates().and_then(|c| c.first()));
            let info = ConnInfo { remote, peer, slot };
            let svc =
                hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(info.clone());
                    let app = app.clone();
                    async move { tower::ServiceExt::oneshot(app, req).await }
                });
            // One request per connection: a connection is authenticated
            // once, and never sits idle holding a slot.
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(tls), svc);
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = evicted.cancelled() => {}
                _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn) => {}
            }
        });
    }
}

/// Rate limit per source address, then the announced body size.
async fn guard(
    State(state): State<Arc<AppState>>,
    Extension(conn): Extension<ConnInfo>,
    req: Request,
    next: Next,
) -> Response {
    if !state.limiter.allow(conn.remote.ip()) {
        warn!(component = COMPONENT, remote = %conn.remote, path = %req.uri().path(), "rate limit exceeded");
        return ApiError::new(
            429,
            "RateLimited",
            "too many requests from this address; slow down",
        )
        .into_response();
    }
    // Refuse an announced oversized body before any work (authentication
    // included); bodies without a length are cut off by the extractor.
    let announced = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        warn!(component = COMPONENT, remote = %conn.remote, path = %req.uri().path(), "request body too large");
        return ApiError::new(
            413,
            "BodyTooLarge",
            format!("request body over {MAX_BODY_BYTES} bytes"),
        )
        .into_response();
    }
    next.run(req).await
}

fn bearer(headers: &HeaderMap) -> Result<BootstrapToken, ApiError> {
    let unauth = || ApiError::new(401, "InvalidToken", "missing or malformed bearer token");
    let value = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(unauth)?;
    let token = value.strip_prefix("Bearer ").ok_or_else(unauth)?;
    BootstrapToken::parse(token.trim()).map_err(|_| unauth())
}

/// Reads and parses the body of an authenticated request: at most
/// [`MAX_BODY_BYTES`] within [`BODY_TIMEOUT`].
async fn read_body<T: serde::de::DeserializeOwned>(
    conn: &ConnInfo,
    body: Body,
) -> Result<T, ApiError> {
    let read = Limited::new(body, MAX_BODY_BYTES).collect();
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, read).await {
        Err(_) => {
            warn!(component = COMPONENT, remote = %conn.remote, "request body not received in time");
            return Err(ApiError::new(
                408,
                "BodyTimeout",
                format!(
                    "request body not received within {} s",
                    BODY_TIMEOUT.as_secs()
                ),
            ));
        }
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return Err(ApiError::new(
                413,
                "BodyTooLarge",
                format!("request body over {MAX_BODY_BYTES} bytes"),
            ))
        }
        Ok(Err(e)) => {
            return Err(ApiError::new(
                400,
                "BadBody",
                format!("reading the body: {e}"),
            ))
        }
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_request(format!("bad JSON: {e}")))
}

/// Authenticates the bearer for `role`, logging refusals by token id only.
async fn authenticate(
    state: &AppState,
    conn: &ConnInfo,
    headers: &HeaderMap,
    role: Role,
) -> Result<(BootstrapToken, StoredToken), ApiError> {
    let token = match bearer(headers) {
        Ok(t) => t,
        Err(e) => {
            warn!(component = COMPONENT, remote = %conn.remote, %role, "join refused: no valid bearer token");
            return Err(e);
        }
    };
    match state.tokens.authenticate(&token, role).await {
        Ok(stored) => Ok((token, stored)),
        Err(e) => {
            warn!(component = COMPONENT, remote = %conn.remote, token_id = %token.id, %role, reason = e.reason(), "join refused");
            Err(e.into())
        }
    }
}

async fn get_ca(State(state): State<Arc<AppState>>) -> Json<CaResponse> {
    Json(CaResponse {
        ca_cert: state.ca_pem.clone(),
    })
}

async fn join_worker(
    State(state): State<Arc<AppState>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<WorkerJoinResponse>, ApiError> {
    let (token, stored) = authenticate(&state, &conn, &headers, Role::Worker).await?;
    conn.admit();
    let req: WorkerJoinRequest = read_body(&conn, body).await?;
    if !is_dns_subdomain(&req.node_name) {
        return Err(ApiError::bad_request(format!(
            "node name {:?} is not a valid DNS subdomain (lower case letters, digits, '-', '.')",
            req.node_name
        )));
    }
    let address = req.address.parse::<IpAddr>().map_err(|_| {
        ApiError::bad_request(format!("address {:?} is not an IP address", req.address))
    })?;
    let csr = pki::inspect_csr(&req.csr)
        .map_err(|e| ApiError::bad_request(crate::telemetry::Chain(&e).to_string()))?;
    // What `mkectl worker` generates, as the design says; nothing else is
    // signed, and the refusal names the key type.
    if csr.key_type != pki::CsrKeyType::EcdsaP256 {
        return Err(ApiError::new(
            400,
            "UnsupportedKeyType",
            format!(
                "the CSR carries an {} key; the join API signs agent certificates for ECDSA P-256 keys only",
                csr.key_type
            ),
        ));
    }
    let want_cn = agent_common_name(&req.node_name);
    if csr.common_name.as_deref() != Some(want_cn.as_str())
        || !csr.organizations.is_empty()
        || !csr.sans.is_empty()
    {
        return Err(ApiError::bad_request(format!(
            "the CSR must ask for CN={want_cn} with no organization and no SAN"
        )));
    }
    let pki_dir = state.settings.pki.dir.clone();
    let lifetime = state.settings.agent_cert_lifetime;
    let csr_pem = req.csr.clone();
    // The address is recorded in the certificate: the konnectivity server
    // accepts `host=` identifiers only for the node name and this address.
    let sans = vec![address.to_string()];
    let agent_cert = tokio::task::spawn_blocking(move || {
        pki::sign_csr_adding_sans(
            &pki_dir,
            Ca::Konnectivity,
            &csr_pem,
            lifetime,
            CertUsage::Client,
            &sans,
        )
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    let controllers = state.controllers().await?;
    let mut api_servers = vec![state.settings.this.api_server.clone()];
    for c in &controllers {
        if !api_servers.contains(&c.api_server) {
            api_servers.push(c.api_server.clone());
        }
    }
    let kubeconfig = pki::render_kubeconfig(
        &state.settings.cluster_name,
        &api_servers[0],
        &state.ca_pem,
        "kubelet-bootstrap",
        KubeconfigUser::Token(&token.expose()),
    )
    .map_err(ApiError::internal)?;
    if let Some(kc) = &state.settings.mirror_kubeconfig {
        super::mirror::mirror_bootstrap_token(kc, &token, &stored)
            .await
            .map_err(|e| {
                ApiError::new(503, "MirrorFailed", crate::telemetry::Chain(&e).to_string())
            })?;
    }
    info!(
        component = COMPONENT,
        remote = %conn.remote,
        token_id = %token.id,
        node = %req.node_name,
        address = %req.address,
        "worker joined: agent certificate signed"
    );
    Ok(Json(WorkerJoinResponse {
        ca_cert: state.ca_pem.clone(),
        konnectivity_ca_cert: state.konnectivity_ca_pem.clone(),
        agent_cert,
        api_servers,
        controllers,
        kubelet_bootstrap_kubeconfig: kubeconfig,
        kubelet: state.settings.kubelet.clone(),
    }))
}

fn read_pair(cert: &std::path::Path, key: &std::path::Path) -> Result<CaKeyPair, ApiError> {
    Ok(CaKeyPair {
        cert: read_string(cert).map_err(ApiError::internal)?,
        key: read_string(key).map_err(ApiError::internal)?,
    })
}

async fn join_controller(
    State(state): State<Arc<AppState>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<ControllerJoinResponse>, ApiError> {
    let (token, _) = authenticate(&state, &conn, &headers, Role::Controller).await?;
    conn.admit();
    let req: ControllerJoinRequest = read_body(&conn, body).await?;
    if !is_dns_subdomain(&req.node_name) {
        return Err(ApiError::bad_request(format!(
            "node name {:?} is not a valid DNS subdomain",
            req.node_name
        )));
    }
    let (host, _) = tls::split_host_port(&req.etcd_peer_url)
        .map_err(|_| ApiError::bad_request("etcdPeerUrl must be https://<ip>:<port>"))?;
    if host.parse::<IpAddr>().is_err() {
        return Err(ApiError::bad_request("etcdPeerUrl must name an IP address"));
    }
    let p = &state.settings.pki;
    let keys = SharedKeys {
        cluster_ca: read_pair(&p.ca.cert, &p.ca.key)?,
        etcd_ca: read_pair(&p.etcd_ca.cert, &p.etcd_ca.key)?,
        front_proxy_ca: read_pair(&p.front_proxy_ca.cert, &p.front_proxy_ca.key)?,
        konnectivity_ca: read_pair(&p.konnectivity_ca.cert, &p.konnectivity_ca.key)?,
        service_account: read_pair(&p.sa_pub, &p.sa_key)?,
    };
    let mut etcd = state.etcd.clone();
    let (member_id, initial_cluster) =
        members::add_learner(&mut etcd, &req.node_name, &req.etcd_peer_url).await?;
    let controllers = state.controllers().await?;
    info!(
        component = COMPONENT,
        remote = %conn.remote,
        token_id = %token.id,
        node = %req.node_name,
        member_id = format!("{member_id:x}"),
        "controller joined: added as etcd learner, shared keys sent"
    );
    Ok(Json(ControllerJoinResponse {
        keys,
        etcd: EtcdJoin {
            member_id,
            initial_cluster,
        },
        controllers,
    }))
}

fn require_controller(conn: &ConnInfo) -> Result<String, ApiError> {
    match &conn.peer {
        Peer::Controller(name) => Ok(name.clone()),
        Peer::Anonymous => Err(ApiError::new(
            401,
            "ClientCertificateRequired",
            "a controller client certificate (etcd CA) is required",
        )),
        Peer::Agent(_) => Err(ApiError::new(
            403,
            "Forbidden",
            "only controllers may do this",
        )),
    }
}

async fn promote(
    State(state): State<Arc<AppState>>,
    Extension(conn): Extension<ConnInfo>,
    body: Body,
) -> Result<Json<PromoteResponse>, ApiError> {
    let who = require_controller(&conn)?;
    conn.admit();
    let req: PromoteRequest = read_body(&conn, body).await?;
    let mut etcd = state.etcd.clone();
    let resp = members::promote(&mut etcd, req.member_id).await?;
    if resp.voting {
        info!(component = COMPONENT, by = %who, member_id = format!("{:x}", req.member_id), "etcd member votes");
    }
    Ok(Json(resp))
}

async fn leave(
    State(state): State<Arc<AppState>>,
    Extension(conn): Extension<ConnInfo>,
    body: Body,
) -> Result<Json<LeaveResponse>, ApiError> {
    let who = require_controller(&conn)?;
    conn.admit();
    let req: LeaveRequest = read_body(&conn, body).await?;
    if who != req.name {
        return Err(ApiError::new(
            403,
            "Forbidden",
            format!(
                "controller {who} may only remove its own member, not {}",
                req.name
            ),
        ));
    }
    if req.name == state.settings.this.name {
        return Err(ApiError::new(
            409,
            "Conflict",
            "a controller cannot remove itself through its own join API",
        ));
    }
    let healthy: BTreeSet<String> = state
        .controllers()
        .await?
        .into_iter()
        .map(|c| c.name)
        .filter(|n| *n != req.name)
        .collect();
    let mut etcd = state.etcd.clone();
    let resp = members::remove(&mut etcd, &req.name, req.force, &healthy).await?;
    let _ = etcd
        .delete(
            format!("{}{}", registry::CONTROLLERS_PREFIX, req.name),
            None,
        )
        .await;
    info!(
        component = COMPONENT,
        remote = %conn.remote,
        node = %req.name,
        removed = resp.removed,
        force = req.force,
        voting_left = resp.members,
        "controller left the etcd cluster"
    );
    Ok(Json(resp))
}

async fn list_controllers(
    State(state): State<Arc<AppState>>,
    Extension(conn): Extension<ConnInfo>,
) -> Result<Json<ControllersResponse>, ApiError> {
    if conn.peer == Peer::Anonymous {
        return Err(ApiError::new(
            401,
            "ClientCertificateRequired",
            "an agent or controller client certificate is required",
        ));
    }
    conn.admit();
    Ok(Json(ControllersResponse {
        controllers: state.controllers().await?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn rate_limiter_refills_and_stays_bounded() {
        let l = RateLimiter::new(3.0, 2.0, 2);
        let a = IpAddr::from([10, 0, 0, 1]);
        assert!(l.allow(a) && l.allow(a) && l.allow(a));
        assert!(!l.allow(a), "burst exhausted");
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(l.allow(a), "one token refilled after 0.5 s at 2/s");
        assert!(!l.allow(a));
        // A second client has its own bucket.
        let b = IpAddr::from([10, 0, 0, 2]);
        assert!(l.allow(b));
        // The map is full of active clients: a third shares the overflow bucket.
        let c = IpAddr::from([10, 0, 0, 3]);
        assert!(l.allow(c));
        assert!(l.buckets.lock().unwrap().len() <= 3);
        // Once idle (full again), clients are forgotten to make room.
        tokio::time::advance(Duration::from_secs(10)).await;
        let d = IpAddr::from([10, 0, 0, 4]);
        assert!(l.allow(d));
        assert!(l.buckets.lock().unwrap().contains_key(&d));
    }

    #[test]
    fn node_names() {
        for ok in ["w1", "worker-1.example", "a"] {
            assert!(is_dns_subdomain(ok), "{ok}");
        }
        for bad in ["", "W1", "-x", "x-", "a..b", "a_b", &"x".repeat(64)] {
            assert!(!is_dns_subdomain(bad), "{bad}");
        }
    }
}
