//! Admin HTTP shared by server and agent: `/healthz`, `/readyz` (and the
//! deprecated `/ready`), `/metrics`. Bound to 127.0.0.1 by default.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A snapshot of what the admin endpoints report.
#[derive(Debug, Clone)]
pub struct Status {
    pub ready: bool,
    /// Status code when not ready (server 500, agent 503, as upstream).
    pub not_ready_code: u16,
    pub not_ready_text: String,
    /// Extra lines shown by `/readyz?verbose`.
    pub detail: String,
    /// The Prometheus page.
    pub metrics: String,
}

/// Produces the current status.
pub type StatusSource = Arc<dyn Fn() -> Status + Send + Sync>;

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(
    State(src): State<StatusSource>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let st = src();
    let verbose = q.contains_key("verbose");
    if st.ready {
        let body = if verbose {
            format!("[+]ready ok\n{}", st.detail)
        } else {
            "ok".to_string()
        };
        (StatusCode::OK, body).into_response()
    } else {
        let code =
            StatusCode::from_u16(st.not_ready_code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        let body = if verbose {
            format!("[-]ready failed: {}\n{}", st.not_ready_text, st.detail)
        } else {
            st.not_ready_text
        };
        (code, body).into_response()
    }
}

async fn metrics(State(src): State<StatusSource>) -> Response {
    let st = src();
    (
        [(header::CONTENT_TYPE, super::metrics::CONTENT_TYPE)],
        st.metrics,
    )
        .into_response()
}

/// Serves the admin endpoints on `listener` until `cancel` fires.
pub async fn serve(
    listener: TcpListener,
    src: StatusSource,
    cancel: CancellationToken,
    component: &'static str,
) {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/ready", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(src);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await
    {
        tracing::warn!(component, error = %crate::telemetry::Chain(&e), "admin server failed");
    }
}
