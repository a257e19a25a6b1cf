//! Client side of the status socket: one HTTP/1.1 request per connection.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;

use super::model::NodeStatus;
use super::rotation::RenewOutcome;
use super::server::{ApiError, RenewRequest};

/// Bound on a status read (the server probes every component, each bounded
/// by a few seconds, in parallel).
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on a renewal: reissuing plus restarting components and waiting for
/// them to be ready again.
pub const RENEW_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket: no node is running with this run dir.
    #[error("no mkectl node is running with this run dir (status socket {path})")]
    NotRunning {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("status socket {path}: {message}")]
    Protocol { path: PathBuf, message: String },
    #[error("status socket {path}: no answer within {waited:?}")]
    Timeout { path: PathBuf, waited: Duration },
    /// The node answered with an error.
    #[error("{message}")]
    Api { status: u16, message: String },
}

/// `GET /v1/status`.
pub async fn status(socket: &Path) -> Result<NodeStatus, ClientError> {
    request(
        socket,
        http::Method::GET,
        "/v1/status",
        None,
        STATUS_TIMEOUT,
    )
    .await
}

/// `POST /v1/certs/renew`.
pub async fn renew(socket: &Path, req: &RenewRequest) -> Result<RenewOutcome, ClientError> {
    let body = serde_json::to_vec(req).map_err(|e| ClientError::Protocol {
        path: socket.to_path_buf(),
        message: e.to_string(),
    })?;
    request(
        socket,
        http::Method::POST,
        "/v1/certs/renew",
        Some(body),
        RENEW_TIMEOUT,
    )
    .await
}

async fn request<T: DeserializeOwned>(
    socket: &Path,
    method: http::Method,
    path: &str,
    body: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<T, ClientError> {
    match tokio::time::timeout(timeout, request_inner(socket, method, path, body)).await {
        Ok(r) => r,
        Err(_) => Err(ClientError::Timeout {
            path: socket.to_path_buf(),
            waited: timeout,
        }),
    }
}

async fn request_inner<T: DeserializeOwned>(
    socket: &Path,
    method: http::Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<T, ClientError> {
    let proto = |message: String| ClientError::Protocol {
        path: socket.to_path_buf(),
        message,
    };
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|source| ClientError::NotRunning {
            path: socket.to_path_buf(),
            source,
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| proto(e.to_string()))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, "mkectl")
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| proto(e.to_string()))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| proto(e.to_string()))?;
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| proto(e.to_string()))?
        .to_bytes();
    if !status.is_success() {
        let message = serde_json::from_slice::<ApiError>(&bytes)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
        return Err(ClientError::Api {
            status: status.as_u16(),
            message,
        });
    }
    serde_json::from_slice(&bytes).map_err(|e| proto(format!("unexpected answer: {e}")))
}
