//! Errors of the Kubernetes client: building it from a kubeconfig
//! ([`KubeClientError`]) and one API call ([`KubeError`]).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum KubeClientError {
    #[error("reading kubeconfig {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("kubeconfig {path}: not a kubeconfig: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("kubeconfig {path}: {field} is missing")]
    Missing { path: PathBuf, field: String },
    #[error("kubeconfig {path}: {field} is not valid base64")]
    Base64 {
        path: PathBuf,
        field: String,
        #[source]
        source: base64::DecodeError,
    },
    #[error("kubeconfig {path}: {field} is not supported by mkectl's client ({why})")]
    Unsupported {
        path: PathBuf,
        field: String,
        why: &'static str,
    },
    #[error("kubeconfig {path}: reading {field} file {file}")]
    ReadFile {
        path: PathBuf,
        field: String,
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("API server address {server}: {message}")]
    Server { server: String, message: String },
    #[error("{what}: no PEM {expected} in it")]
    Pem {
        what: String,
        expected: &'static str,
    },
    #[error("TLS client configuration for {server}")]
    Tls {
        server: String,
        #[source]
        source: rustls::Error,
    },
    #[error("bearer token for {server} is not a valid header value")]
    Token { server: String },
}

/// The apiserver's `Status` object: what it says when a call fails.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Status {
    pub code: u16,
    pub reason: String,
    pub message: String,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.code, self.reason, self.message)
    }
}

/// One API call failed. Every variant names the call (`GET /api/v1/...`).
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// The apiserver answered with an error status.
    #[error("{call}: the API server answered {status}")]
    Api { call: String, status: Box<Status> },
    #[error("{call}: no answer from the API server")]
    Transport {
        call: String,
        #[source]
        source: Box<hyper_util::client::legacy::Error>,
    },
    #[error("{call}: reading the response")]
    Body {
        call: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{call}: no complete answer within {after:?}")]
    Timeout { call: String, after: Duration },
    #[error("{call}: unexpected response body")]
    Decode {
        call: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{call}: cannot encode the request body")]
    Encode {
        call: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{call}: cannot build the request")]
    Request {
        call: String,
        #[source]
        source: Box<http::Error>,
    },
    #[error("{call}: watch event line longer than {limit} bytes")]
    LineTooLong { call: String, limit: usize },
}

impl KubeError {
    /// The HTTP status the apiserver answered with, if it answered.
    pub fn code(&self) -> Option<u16> {
        match self {
            KubeError::Api { status, .. } => Some(status.code),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.code() == Some(404)
    }

    pub fn is_conflict(&self) -> bool {
        self.code() == Some(409)
    }
}
