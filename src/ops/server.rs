//! The node's operating endpoints:
//!
//! * the status socket `<run-dir>/status.sock`: HTTP/1.1 over a unix socket,
//!   mode 0600 in the 0700 run dir, and every connection's peer credentials
//!   are checked (root or mkectl's own uid). `GET /v1/status` serves the
//!   [`NodeStatus`](super::model::NodeStatus) JSON, `POST /v1/certs/renew`
//!   renews leaves and restarts their users.
//! * `/metrics` on `spec.metrics` (127.0.0.1 by default), plain HTTP, read
//!   only, the same convention as every Kubernetes component's metrics port.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::collect::Collector;
use super::metrics::{Metrics, CONTENT_TYPE};
use super::rotation::{parse_leaves, Rotator};
use super::OpsError;
use crate::fsutil;

/// Request body of `POST /v1/certs/renew`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RenewRequest {
    #[serde(default)]
    pub certificates: Vec<String>,
    #[serde(default)]
    pub all: bool,
}

/// Error body of the status socket's API.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}

#[derive(Clone)]
struct AppState {
    collector: Arc<Collector>,
    /// `None` on a worker: its certificates come from the join and kubelet
    /// rotates its own.
    rotator: Option<Arc<Rotator>>,
    metrics: Arc<Metrics>,
}

fn api_error(code: StatusCode, error: String) -> Response {
    (code, Json(ApiError { error })).into_response()
}

async fn status(State(s): State<AppState>) -> Response {
    Json(s.collector.collect().await).into_response()
}

async fn renew(State(s): State<AppState>, body: axum::body::Bytes) -> Response {
    let req: RenewRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return api_error(StatusCode::BAD_REQUEST, format!("bad request body: {e}")),
    };
    let Some(rotator) = &s.rotator else {
        return api_error(
            StatusCode::BAD_REQUEST,
            "this node maintains no certificates of its own: a worker's agent certificate comes from its join (join again after `mkectl reset` to replace it) and kubelet rotates its own".into(),
        );
    };
    let leaves = match parse_leaves(&req.certificates, req.all, &rotator.leaves()) {
        Ok(l) => l,
        Err(e) => return api_error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    match rotator.renew(leaves).await {
        Ok(outcome) => Json(outcome).into_response(),
        Err(e) => api_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            crate::telemetry::Chain(&e).to_string(),
        ),
    }
}

async fn metrics(State(s): State<AppState>) -> Response {
    let status = s.collector.collect().await;
    let certs = s.collector.certificates().await.unwrap_or_default();
    let mut page = s.metrics.render(&status, &certs, SystemTime::now());
    if let Some(lb) = &s.collector.api_lb {
        page.push_str(&lb.metrics());
    }
    if let Some(front) = &s.collector.front {
        page.push_str(&front.metrics());
    }
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], page).into_response()
}

/// Accepts only peers running as root or as mkectl's own user.
struct PeerChecked(UnixListener);

impl axum::serve::Listener for PeerChecked {
    type Io = UnixStream;
    type Addr = tokio::net::unix::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let me = nix::unistd::geteuid().as_raw();
        loop {
            match self.0.accept().await {
                Ok((stream, addr)) => match stream.peer_cred() {
                    Ok(cred) if cred.uid() == 0 || cred.uid() == me => return (stream, addr),
                    Ok(cred) => {
                        warn!(
                            component = "status",
                            uid = cred.uid(),
                            "refused a status client running as another user"
                        )
                    }
                    Err(e) => {
                        warn!(component = "status", error = %e, "cannot read peer credentials")
                    }
                },
                Err(e) => {
                    debug!(component = "status", error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// Binds the status socket: an old socket at `path` is replaced (the caller
/// holds the run-dir lock, so it is stale), the new one is created under a
/// temporary name, set to 0600, then renamed into place, so it is never
/// reachable with looser permissions.
pub fn bind_status_socket(path: &Path) -> Result<UnixListener, OpsError> {
    let io = |source| OpsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension(format!("sock.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).map_err(io)?;
    fsutil::set_mode(&tmp, fsutil::PRIVATE_FILE_MODE).map_err(|source| OpsError::Fs { source })?;
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(listener)
}

/// Removes the status socket when dropped.
pub struct SocketGuard(pub PathBuf);

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Binds and serves both endpoints until `cancel`. Binding happens before
/// this returns, so a taken port fails the controller's start.
pub async fn serve(
    socket: &Path,
    metrics_addr: SocketAddr,
    collector: Arc<Collector>,
    rotator: Option<Arc<Rotator>>,
    metrics_registry: Arc<Metrics>,
    cancel: &CancellationToken,
) -> Result<(SocketGuard, SocketAddr), OpsError> {
    let state = AppState {
        collector,
        rotator,
        metrics: metrics_registry,
    };
    let tcp = tokio::net::TcpListener::bind(metrics_addr)
        .await
        .map_err(|source| OpsError::BindMetrics {
            addr: metrics_addr,
            source,
        })?;
    let bound = tcp.local_addr().map_err(|source| OpsError::BindMetrics {
        addr: metrics_addr,
        source,
    })?;
    let uds = bind_status_socket(socket)?;
    let guard = SocketGuard(socket.to_path_buf());

    let status_app = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/certs/renew", post(renew))
        .with_state(state.clone());
    let metrics_app = Router::new()
        .route("/metrics", get(metrics))
        .with_state(state);
    let c = cancel.clone();
    tokio::spawn(async move {
        let r = axum::serve(PeerChecked(uds), status_app)
            .with_graceful_shutdown(c.cancelled_owned())
            .await;
        if let Err(e) = r {
            warn!(component = "status", error = %e, "status socket server ended");
        }
    });
    let c = cancel.clone();
    tokio::spawn(async move {
        let r = axum::serve(tcp, metrics_app)
            .with_graceful_shutdown(c.cancelled_owned())
            .await;
        if let Err(e) = r {
            warn!(component = "metrics", error = %e, "metrics server ended");
        }
    });
    Ok((guard, bound))
}
