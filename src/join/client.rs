//! The join API client and the joining side of both joins.
//!
//! Every request is HTTP/1.1 over TLS to one of the endpoints, tried in
//! order: an endpoint that cannot be reached, is busy (503) or rate-limits
//! (429) is skipped; a refusal (401/403/4xx) or a CA pin mismatch stops at
//! once. Nothing is written on the joining side until the controller has
//! answered and the answer checked; the state file is written last.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::registry::ControllerRecord;
use super::state::{self, ControllerJoinState, WorkerPaths, WorkerState};
use super::tls::{self, ClientIdentity, Trust};
use super::token::{unix_now, BootstrapToken, JoinToken, Role};
use super::wire::*;
use super::JoinError;
use crate::fsutil::{self, PRIVATE_DIR_MODE, PRIVATE_FILE_MODE, PUBLIC_FILE_MODE};
use crate::konnectivity::ServerAddr;
use crate::pki;

const COMPONENT: &str = "join-client";
/// TCP connect bound per endpoint.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Whole-request bound per endpoint (TLS, request, response).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest response body accepted.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// How long a controller join keeps retrying while another joins (503).
pub const BUSY_RETRY_FOR: Duration = Duration::from_secs(60);

/// A client of one cluster's join API.
#[derive(Clone)]
pub struct JoinClient {
    endpoints: Vec<String>,
    trust: Trust,
    tls: crate::expose::verify::RoutedClient,
    /// `id.secret`; never logged.
    bearer: Option<String>,
    local_address: Option<IpAddr>,
}

impl std::fmt::Debug for JoinClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinClient")
            .field("endpoints", &self.endpoints)
            .field("bearer", &self.bearer.as_ref().map(|_| "[elided]"))
            .finish_non_exhaustive()
    }
}

enum Method {
    Get,
    Post,
}

impl JoinClient {
    pub fn new(
        endpoints: Vec<String>,
        trust: Trust,
        identity: Option<&ClientIdentity>,
    ) -> Result<Self, JoinError> {
        let tls = tls::client_config(&trust, identity)?;
        Ok(Self {
            endpoints,
            trust,
            tls,
            bearer: None,
            local_address: None,
        })
    }

    /// A client for a join token: its endpoints, its CA pin, its bearer.
    pub fn for_token(token: &JoinToken) -> Result<Self, JoinError> {
        Ok(Self::new(
            token.endpoints.clone(),
            Trust::Pin(token.ca_pin.clone()),
            None,
        )?
        .with_bearer(&token.bootstrap))
    }

    pub fn with_bearer(mut self, token: &BootstrapToken) -> Self {
        self.bearer = Some(token.expose());
        self
    }

    /// Connect from this source address (the node's own), when it is local.
    pub fn with_local_address(mut self, ip: Option<IpAddr>) -> Self {
        self.local_address = ip;
        self
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    pub async fn join_worker(
        &self,
        req: &WorkerJoinRequest,
    ) -> Result<(String, WorkerJoinResponse), JoinError> {
        self.call(Method::Post, "/v1/join/worker", Some(req)).await
    }

    pub async fn join_controller(
        &self,
        req: &ControllerJoinRequest,
    ) -> Result<(String, ControllerJoinResponse), JoinError> {
        self.call(Method::Post, "/v1/join/controller", Some(req))
            .await
    }

    pub async fn promote(&self, member_id: u64) -> Result<PromoteResponse, JoinError> {
        let req = PromoteRequest { member_id };
        Ok(self
            .call(Method::Post, "/v1/etcd/promote", Some(&req))
            .await?
            .1)
    }

    pub async fn leave(&self, req: &LeaveRequest) -> Result<(String, LeaveResponse), JoinError> {
        self.call(Method::Post, "/v1/etcd/leave", Some(req)).await
    }

    pub async fn controllers(&self) -> Result<Vec<ControllerRecord>, JoinError> {
        let (_, resp): (String, ControllersResponse) = self
            .call(Method::Get, "/v1/controllers", None::<&()>)
            .await?;
        Ok(resp.controllers)
    }

    /// Tries every endpoint in order; returns the one that answered.
    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&Req>,
    ) -> Result<(String, Resp), JoinError> {
        let body = match body {
            Some(b) => Some(serde_json::to_vec(b).map_err(|e| JoinError::Internal {
                reason: e.to_string(),
            })?),
            None => None,
        };
        let mut last: Option<JoinError> = None;
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            let more = i + 1 < self.endpoints.len();
            let attempt = tokio::time::timeout(
                REQUEST_TIMEOUT,
                self.call_one(endpoint, &method, path, body.clone()),
            )
            .await
            .unwrap_or_else(|_| {
                Err(JoinError::Unreachable {
                    tried: endpoint.clone(),
                    last: "request timed out".into(),
                })
            });
            match attempt {
                Ok(resp) => return Ok((endpoint.clone(), resp)),
                Err(e) if e.is_retryable() => {
                    if more {
                        info!(component = COMPONENT, %endpoint, error = %crate::telemetry::Chain(&e), "trying the next join API");
                    }
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(match last {
            Some(e @ JoinError::Refused { .. }) => e,
            Some(e) => JoinError::Unreachable {
                tried: self.endpoints.join(", "),
                last: match e {
                    JoinError::Unreachable { last, .. } => last,
                    other => other.to_string(),
                },
            },
            None => JoinError::Unreachable {
                tried: "no endpoint".into(),
                last: "the token names no join endpoint".into(),
            },
        })
    }

    async fn connect(&self, host: &str, port: u16) -> Result<tokio::net::TcpStream, ConnectError> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|source| ConnectError::Resolve {
                host: host.to_string(),
                source,
            })?
            .collect();
        let mut last = ConnectError::NoAddress {
            host: host.to_string(),
        };
        for addr in addrs {
            let sock = if addr.is_ipv4() {
                tokio::net::TcpSocket::new_v4()
            } else {
                tokio::net::TcpSocket::new_v6()
            }
            .map_err(ConnectError::Socket)?;
            if let Some(local) = self.local_address {
                if local.is_ipv4() == addr.is_ipv4() {
                    // Not fatal: the address may not be local (NAT).
                    let _ = sock.bind(SocketAddr::new(local, 0));
                }
            }
            match tokio::time::timeout(CONNECT_TIMEOUT, sock.connect(addr)).await {
                Ok(Ok(s)) => return Ok(s),
                Ok(Err(source)) => last = ConnectError::Connect { addr, source },
                Err(_) => last = ConnectError::Timeout { addr },
            }
        }
        Err(last)
    }

    async fn call_one<Resp: DeserializeOwned>(
        &self,
        endpoint: &str,
        method: &Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Resp, JoinError> {
        let unreachable = |last: String| JoinError::Unreachable {
            tried: endpoint.to_string(),
            last,
        };
        let (host, port) = tls::split_host_port(endpoint)?;
        let name = tls::server_name(endpoint)?;
        let tcp = self
            .connect(&host, port)
            .await
            .map_err(|e| unreachable(crate::telemetry::Chain(&e).to_string()))?;
        let (config, name) = self
            .tls
            .for_route(crate::expose::Route::Join, name)
            .map_err(|e| JoinError::Protocol {
                endpoint: endpoint.to_string(),
                reason: e.to_string(),
            })?;
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| {
                if let (Some(p), Trust::Pin(pin)) = (tls::pin_error(&e), &self.trust) {
                    return JoinError::PinMismatch {
                        endpoint: endpoint.to_string(),
                        pinned: pin.clone(),
                        detail: p.detail.clone(),
                    };
                }
                // Another endpoint may be fine (a dying controller resets
                // the connection); only a pin mismatch stops at once.
                unreachable(format!("TLS handshake: {e}"))
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        let authority = endpoint
            .trim_start_matches("https://")
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let mut builder = http::Request::builder()
            .method(match method {
                Method::Get => http::Method::GET,
                Method::Post => http::Method::POST,
            })
            .uri(path)
            .header(http::header::HOST, authority)
            .header(http::header::ACCEPT, "application/json");
        if let Some(b) = &self.bearer {
            builder = builder.header(http::header::AUTHORIZATION, format!("Bearer {b}"));
        }
        if body.is_some() {
            builder = builder.header(http::header::CONTENT_TYPE, "application/json");
        }
        let req = builder
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| JoinError::Internal {
                reason: e.to_string(),
            })?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let status = resp.status().as_u16();
        let bytes = Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| JoinError::Protocol {
                endpoint: endpoint.to_string(),
                reason: format!("reading the response: {e}"),
            })?
            .to_bytes();
        driver.abort();
        if !(200..300).contains(&status) {
            let (reason, message) = match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(b) => (b.reason, b.error),
                Err(_) => (
                    String::new(),
                    String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).into_owned(),
                ),
            };
            return Err(JoinError::Refused {
                endpoint: endpoint.to_string(),
                status,
                reason,
                message,
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| JoinError::Protocol {
            endpoint: endpoint.to_string(),
            reason: format!("bad JSON: {e}"),
        })
    }
}

fn require_role(token: &JoinToken, want: Role, what: &'static str) -> Result<(), JoinError> {
    if token.role != want {
        return Err(JoinError::WrongRole {
            have: token.role,
            want,
            what,
        });
    }
    Ok(())
}

fn check_pin(endpoint: &str, token: &JoinToken, ca_pem: &str) -> Result<(), JoinError> {
    let got = pki::spki_sha256(ca_pem.as_bytes())?;
    if !got.eq_ignore_ascii_case(&token.ca_pin) {
        return Err(JoinError::PinMismatch {
            endpoint: endpoint.to_string(),
            pinned: token.ca_pin.clone(),
            detail: format!("the CA it returned has {got}"),
        });
    }
    Ok(())
}

/// A fresh ECDSA P-256 key and a CSR for the agent certificate of
/// `node_name`. The key stays on this node.
fn agent_csr(node_name: &str) -> Result<(rcgen::KeyPair, String), JoinError> {
    let err = |e: rcgen::Error| JoinError::Internal {
        reason: format!("CSR: {e}"),
    };
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(err)?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, agent_common_name(node_name));
    let csr = params.serialize_request(&key).map_err(err)?;
    Ok((key, csr.pem().map_err(err)?))
}

/// Public key bits of the first certificate of `pem`.
fn cert_public_key(pem: &str) -> Result<Vec<u8>, JoinError> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let der = tls::certs_from_pem("agent certificate", pem.as_bytes())?;
    let (_, c) = X509Certificate::from_der(&der[0]).map_err(|e| JoinError::Tls {
        what: "agent certificate".into(),
        reason: e.to_string(),
    })?;
    Ok(c.public_key().subject_public_key.data.to_vec())
}

/// Joins as a worker with `token`: sends a CSR, checks the answer, writes
/// the CA bundle, the agent certificate and key, the kubelet bootstrap
/// kubeconfig and defaults, then `worker.json`. Nothing is written when the
/// join fails.
pub async fn join_worker(
    token: &JoinToken,
    node_name: &str,
    address: IpAddr,
    paths: &WorkerPaths,
) -> Result<WorkerState, JoinError> {
    require_role(token, Role::Worker, "`mkectl worker`")?;
    let client = JoinClient::for_token(token)?.with_local_address(Some(address));
    let (key, csr) = agent_csr(node_name)?;
    let req = WorkerJoinRequest {
        node_name: node_name.to_string(),
        address: address.to_string(),
        csr,
    };
    let (endpoint, resp) = client.join_worker(&req).await?;
    check_pin(&endpoint, token, &resp.ca_cert)?;
    let protocol = |reason: String| JoinError::Protocol {
        endpoint: endpoint.clone(),
        reason,
    };
    if cert_public_key(&resp.agent_cert)? != key.public_key_raw() {
        return Err(protocol(
            "the agent certificate is not for the key this node generated".into(),
        ));
    }
    tls::certs_from_pem("konnectivity CA", resp.konnectivity_ca_cert.as_bytes())?;
    if resp.controllers.is_empty() {
        return Err(protocol("no controller listed".into()));
    }
    for c in &resp.controllers {
        c.konnectivity
            .parse::<ServerAddr>()
            .map_err(|e| protocol(format!("controller {}: {e}", c.name)))?;
    }
    let kubelet_defaults =
        serde_json::to_vec_pretty(&resp.kubelet).map_err(|e| protocol(e.to_string()))?;

    for dir in [
        paths.data_dir.clone(),
        paths.data_dir.join("pki"),
        paths.data_dir.join("pki").join("konnectivity"),
        paths.data_dir.join("kubelet"),
    ] {
        fsutil::ensure_dir(&dir, PRIVATE_DIR_MODE)?;
    }
    fsutil::write_atomic(&paths.ca_cert, resp.ca_cert.as_bytes(), PUBLIC_FILE_MODE)?;
    fsutil::write_atomic(
        &paths.konnectivity_ca,
        resp.konnectivity_ca_cert.as_bytes(),
        PUBLIC_FILE_MODE,
    )?;
    fsutil::write_atomic(
        &paths.agent_key,
        key.serialize_pem().as_bytes(),
        PRIVATE_FILE_MODE,
    )?;
    fsutil::write_atomic(
        &paths.agent_cert,
        resp.agent_cert.as_bytes(),
        PUBLIC_FILE_MODE,
    )?;
    fsutil::write_atomic(
        &paths.kubelet_bootstrap_kubeconfig,
        resp.kubelet_bootstrap_kubeconfig.as_bytes(),
        PRIVATE_FILE_MODE,
    )?;
    fsutil::write_atomic(&paths.kubelet_defaults, &kubelet_defaults, PUBLIC_FILE_MODE)?;
    let st = WorkerState {
        node_name: node_name.to_string(),
        address: address.to_string(),
        joined_at: unix_now(),
        cluster_name: resp.kubelet.cluster_name.clone(),
        api_servers: resp.api_servers.clone(),
        controllers: resp.controllers.clone(),
        token_endpoints: token.endpoints.clone(),
    };
    state::write(&paths.state, &st)?;
    info!(
        component = COMPONENT,
        %endpoint,
        token_id = %token.bootstrap.id,
        controllers = ?st.controllers.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
        "joined the cluster as a worker"
    );
    Ok(st)
}

/// Joins as a controller with `token`: receives the shared CA material and
/// SA keys and an etcd learner membership, writes the keys into `pki_dir`
/// (refusing to replace a different CA), then `state_file`. The node's own
/// leaves are issued afterwards by `pki::ensure` from the shared CAs.
pub async fn join_controller(
    token: &JoinToken,
    node_name: &str,
    etcd_peer_url: &str,
    pki_dir: &Path,
    state_file: &Path,
) -> Result<ControllerJoinState, JoinError> {
    require_role(token, Role::Controller, "`mkectl controller --token-file`")?;
    let paths = pki::PkiPaths::new(pki_dir);
    // Refuse early (before etcd gets a member) when this node already holds
    // a different cluster's CA.
    if let Ok(existing) = std::fs::read(&paths.ca.cert) {
        let pin = pki::spki_sha256(&existing)?;
        if !pin.eq_ignore_ascii_case(&token.ca_pin) {
            return Err(JoinError::Conflict(format!(
                "{} already holds a different cluster CA ({pin}); a joining controller needs a clean data dir (`mkectl reset`)",
                paths.ca.cert.display()
            )));
        }
    }
    let client = JoinClient::for_token(token)?;
    let req = ControllerJoinRequest {
        node_name: node_name.to_string(),
        etcd_peer_url: etcd_peer_url.to_string(),
    };
    let deadline = tokio::time::Instant::now() + BUSY_RETRY_FOR;
    let (endpoint, resp) = loop {
        match client.join_controller(&req).await {
            Ok(r) => break r,
            Err(e) if e.status() == Some(503) && tokio::time::Instant::now() < deadline => {
                info!(component = COMPONENT, error = %crate::telemetry::Chain(&e), "join API busy; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e),
        }
    };
    check_pin(&endpoint, token, &resp.keys.cluster_ca.cert)?;
    let k = &resp.keys;
    let pairs = [
        (&paths.ca, &k.cluster_ca),
        (&paths.etcd_ca, &k.etcd_ca),
        (&paths.front_proxy_ca, &k.front_proxy_ca),
        (&paths.konnectivity_ca, &k.konnectivity_ca),
    ];
    for (files, pair) in &pairs {
        tls::certs_from_pem(&files.cert.display().to_string(), pair.cert.as_bytes())?;
        if let Ok(existing) = std::fs::read(&files.cert) {
            if existing != pair.cert.as_bytes() {
                return Err(JoinError::Conflict(format!(
                    "{} differs from the cluster's; refusing to replace a CA (clean the data dir with `mkectl reset`)",
                    files.cert.display()
                )));
            }
        }
    }
    for dir in [&paths.dir, &paths.etcd_dir, &paths.konnectivity_dir] {
        fsutil::ensure_dir(dir, PRIVATE_DIR_MODE)?;
    }
    for (files, pair) in &pairs {
        // Key first, as `pki` does: a crash in between is detected there.
        fsutil::write_atomic(&files.key, pair.key.as_bytes(), PRIVATE_FILE_MODE)?;
        fsutil::write_atomic(&files.cert, pair.cert.as_bytes(), PUBLIC_FILE_MODE)?;
    }
    fsutil::write_atomic(
        &paths.sa_key,
        k.service_account.key.as_bytes(),
        PRIVATE_FILE_MODE,
    )?;
    fsutil::write_atomic(
        &paths.sa_pub,
        k.service_account.cert.as_bytes(),
        PUBLIC_FILE_MODE,
    )?;
    let mut join_endpoints: Vec<String> = resp
        .controllers
        .iter()
        .map(|c| c.join_api.clone())
        .collect();
    for e in &token.endpoints {
        if !join_endpoints.contains(e) {
            join_endpoints.push(e.clone());
        }
    }
    let st = ControllerJoinState {
        node_name: node_name.to_string(),
        joined_at: unix_now(),
        etcd_member_id: resp.etcd.member_id,
        initial_cluster: resp.etcd.initial_cluster.clone(),
        promoted: false,
        join_endpoints,
    };
    state::write(state_file, &st)?;
    info!(
        component = COMPONENT,
        %endpoint,
        token_id = %token.bootstrap.id,
        member_id = format!("{:x}", st.etcd_member_id),
        "joined the cluster as a controller; etcd starts as a learner"
    );
    Ok(st)
}

/// Why no TCP connection to a join endpoint could be made; it becomes the
/// `last` text of `JoinError::Unreachable`.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("resolve {host}")]
    Resolve {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{host} resolves to no address")]
    NoAddress { host: String },
    #[error("cannot create a socket")]
    Socket(#[source] std::io::Error),
    #[error("connect {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("connect {addr}: timed out")]
    Timeout { addr: SocketAddr },
}

/// Promotes this controller's etcd learner through the other controllers'
/// join APIs (mTLS with its etcd peer certificate, server checked against
/// the cluster CA) and records success in the join state.
pub struct JoinPromoter {
    pub endpoints: Vec<String>,
    /// Cluster CA file.
    pub ca: std::path::PathBuf,
    /// The etcd peer certificate and key (the controller's identity).
    pub identity: ClientIdentity,
    pub state_file: std::path::PathBuf,
}

#[async_trait::async_trait]
impl crate::etcd::PromoteMember for JoinPromoter {
    async fn promote(&self, member_id: u64) -> Result<bool, crate::etcd::PromoteError> {
        let failed = |e: JoinError| crate::etcd::PromoteError {
            member_id,
            source: Box::new(e),
        };
        let ca = fsutil::read(&self.ca).map_err(|e| failed(e.into()))?;
        let client = JoinClient::new(
            self.endpoints.clone(),
            Trust::CaPem(ca),
            Some(&self.identity),
        )
        .map_err(failed)?;
        let resp = client.promote(member_id).await.map_err(failed)?;
        if !resp.voting {
            return Ok(false);
        }
        match state::read::<ControllerJoinState>(&self.state_file) {
            Ok(Some(mut st)) if !st.promoted => {
                st.promoted = true;
                if let Err(e) = state::write(&self.state_file, &st) {
                    warn!(component = COMPONENT, error = %crate::telemetry::Chain(&e), "cannot record the promotion");
                }
            }
            Ok(_) => {}
            Err(e) => {
                warn!(component = COMPONENT, error = %crate::telemetry::Chain(&e), "cannot record the promotion")
            }
        }
        Ok(true)
    }
}

/// Konnectivity addresses of `controllers`, sorted, unparsable ones skipped.
pub fn server_addrs(controllers: &[ControllerRecord]) -> Vec<ServerAddr> {
    let mut out: Vec<ServerAddr> = controllers
        .iter()
        .filter_map(|c| c.konnectivity.parse().ok())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Keeps a worker's controller list fresh: every `interval` asks the join
/// API (mTLS with the agent certificate) for the live controllers and, on a
/// change, updates `worker.json` and publishes the list (the konnectivity
/// agent and the node-local apiserver balancer follow it).
pub async fn refresh_controllers(
    paths: WorkerPaths,
    mut st: WorkerState,
    interval: Duration,
    controllers: watch::Sender<Vec<ControllerRecord>>,
    cancel: CancellationToken,
) {
    let identity = ClientIdentity {
        cert: paths.agent_cert.clone(),
        key: paths.agent_key.clone(),
    };
    let local: Option<IpAddr> = st.address.parse().ok();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let ca = match fsutil::read(&paths.ca_cert) {
            Ok(ca) => ca,
            Err(e) => {
                warn!(component = COMPONENT, error = %crate::telemetry::Chain(&e), "cannot read the cluster CA");
                continue;
            }
        };
        let client = match JoinClient::new(st.join_endpoints(), Trust::CaPem(ca), Some(&identity)) {
            Ok(c) => c.with_local_address(local),
            Err(e) => {
                warn!(component = COMPONENT, error = %crate::telemetry::Chain(&e), "cannot build the join API client");
                continue;
            }
        };
        let list = tokio::select! {
            _ = cancel.cancelled() => return,
            r = client.controllers() => r,
        };
        match list {
            Ok(list) if !list.is_empty() && list != st.controllers => {
                info!(
                    component = COMPONENT,
                    controllers = ?list.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
                    "controller set changed"
                );
                st.controllers = list;
                if let Err(e) = state::write(&paths.state, &st) {
                    warn!(component = COMPONENT, error = %crate::telemetry::Chain(&e), "cannot save the controller list");
                }
                controllers.send_replace(st.controllers.clone());
            }
            Ok(_) => {}
            Err(e) => {
                warn!(component = COMPONENT, error = %crate::telemetry::Chain(&e), "cannot refresh the controller list")
            }
        }
    }
}
