//! Joining a cluster: the token format (`token`), its storage in etcd
//! (`store`), the controller registry (`registry`), etcd membership changes
//! (`members`), the join API server (`api`) and its client (`client`), the
//! pinned TLS both use (`tls`), and what a joined node remembers (`state`).
//!
//! # Trust
//!
//! A join token pins the cluster CA (SHA-256 of its SubjectPublicKeyInfo).
//! The join API presents its serving certificate together with the cluster
//! CA; the joining side accepts the connection only if a certificate in that
//! chain matches the pin *and* the serving certificate chains to it for the
//! address dialled ([`tls::PinnedCaVerifier`]). Nothing is trusted on first
//! use. The bearer is the bootstrap token `id.secret`; controllers store only
//! a SHA-256 of the secret.
//!
//! # Status codes
//!
//! | status | when |
//! |---|---|
//! | 400 | malformed request (bad CSR, bad node name, ...) |
//! | 401 | no bearer, unknown token id or wrong secret (not distinguished), or no client certificate where one is needed |
//! | 403 | a genuine token that is expired, invalidated or of the wrong role; a certificate of the wrong kind |
//! | 409 | conflict (an etcd member with that name or peer URL exists; removing a member would break quorum) |
//! | 413 | request body over [`api::MAX_BODY_BYTES`] |
//! | 429 | rate limit per source address exceeded |
//! | 503 | try again (etcd busy, another controller joining, learner not in sync yet) |

pub mod api;
pub mod client;
pub mod gate;
pub mod members;
pub mod mirror;
pub mod registry;
pub mod state;
pub mod store;
pub mod tls;
pub mod token;
pub mod wire;

use std::path::PathBuf;

pub use client::JoinClient;
pub use registry::ControllerRecord;
pub use state::{ControllerJoinState, WorkerState};
pub use token::{BootstrapToken, JoinToken, Role, StoredToken};

/// Errors of the join module. None of them carries a token secret or key.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(transparent)]
    Token(#[from] token::TokenError),
    #[error("this is a {have} token, but {what} needs a {want} token")]
    WrongRole {
        have: Role,
        want: Role,
        what: &'static str,
    },
    #[error("etcd: cannot {what}")]
    Etcd {
        what: &'static str,
        source: etcd_client::Error,
    },
    #[error("etcd: {what}: timed out")]
    Timeout { what: &'static str },
    #[error("{path}: {reason}")]
    State { path: PathBuf, reason: String },
    #[error(transparent)]
    Fs(#[from] crate::fsutil::FsError),
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
    #[error("TLS ({what}): {reason}")]
    Tls { what: String, reason: String },
    #[error("CA pin mismatch at {endpoint}: {detail}; the token pins {pinned}. The token does not belong to this cluster (or someone is intercepting the connection): nothing was trusted or written")]
    PinMismatch {
        endpoint: String,
        pinned: String,
        detail: String,
    },
    #[error("join refused by {endpoint} ({status}): {message}")]
    Refused {
        endpoint: String,
        status: u16,
        reason: String,
        message: String,
    },
    #[error("no join API reachable (tried {tried}): {last}")]
    Unreachable { tried: String, last: String },
    #[error("unexpected answer from {endpoint}: {reason}")]
    Protocol { endpoint: String, reason: String },
    #[error("{0}")]
    Conflict(String),
    #[error("internal error: {reason}")]
    Internal { reason: String },
}

impl JoinError {
    /// HTTP status of a refusal, if this is one.
    pub fn status(&self) -> Option<u16> {
        match self {
            JoinError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether retrying later (or elsewhere) may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            JoinError::Refused { status, .. } => *status == 503 || *status == 429,
            JoinError::Unreachable { .. } | JoinError::Timeout { .. } => true,
            _ => false,
        }
    }
}

/// `<data-dir>/join.json`: a controller that joined (or a worker).
pub fn controller_state_file(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("join.json")
}

/// `<data-dir>/controllers.json`: the controller's cache of the registry.
pub fn controllers_cache_file(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("controllers.json")
}
