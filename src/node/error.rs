//! What can stop a node from starting or running, with the exit code each
//! deserves (`crate::exit`).

use std::path::PathBuf;

use crate::components::binary::{BinaryNotFound, UnusableBinary};
use crate::components::ComponentError;
use crate::exit::{ExitCode, UNAVAILABLE, USAGE};
use crate::join::JoinError;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Bad flags or flag combinations found while planning (exit 64).
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("resolving {path}")]
    Path {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the hostname")]
    Hostname(#[source] nix::Error),
    #[error(transparent)]
    Lock(#[from] crate::nodelock::LockError),
    #[error(transparent)]
    Fs(#[from] crate::fsutil::FsError),
    #[error("staging the bundled binaries")]
    Bundle(#[from] crate::bundle::BundleError),
    #[error("generating the PKI")]
    Pki(#[from] crate::pki::PkiError),
    #[error(transparent)]
    Component(#[from] ComponentError),
    #[error(transparent)]
    BinaryNotFound(#[from] BinaryNotFound),
    #[error(transparent)]
    UnusableBinary(#[from] UnusableBinary),
    #[error(transparent)]
    HostCheck(#[from] crate::hostcheck::HostCheckError),
    /// `what` names the join (controller or worker) or the state read.
    #[error("{what}")]
    Join {
        what: &'static str,
        #[source]
        source: JoinError,
    },
    #[error("starting the status and metrics services")]
    Ops(#[from] crate::ops::OpsError),
    #[error("kubelet settings")]
    Kubelet(#[from] crate::components::kubelet::KubeletError),
    #[error("pointing the kubeconfigs at the apiserver")]
    Kubeconfig(#[from] crate::apilb::kubeconfig::KubeconfigError),
    #[error("installing the {signal} handler")]
    Signal {
        signal: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} task")]
    Task {
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
    #[error("stopping stale children")]
    Supervisor(#[from] crate::supervisor::SupervisorError),
    /// A file written at join time that this node cannot use.
    #[error("{path}: bad {what}")]
    BadState {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl ExitCode for NodeError {
    /// 64 for what the operator asked for, 69 for what is missing on the
    /// host or unreachable; the wrapped error's own code otherwise (the
    /// transparent variants hide it from the chain walk).
    fn exit_code(&self) -> Option<u8> {
        match self {
            Self::Usage(_) => Some(USAGE),
            Self::Config(e) => e.exit_code(),
            Self::Bundle(e) if e.is_usage() => Some(USAGE),
            Self::Join { source, .. } => match source {
                JoinError::Token(_) | JoinError::WrongRole { .. } => Some(USAGE),
                JoinError::Unreachable { .. } => Some(UNAVAILABLE),
                _ => None,
            },
            Self::Component(e) => e.exit_code(),
            Self::BinaryNotFound(e) => e.exit_code(),
            Self::UnusableBinary(e) => e.exit_code(),
            Self::HostCheck(e) => e.exit_code(),
            _ => None,
        }
    }
}

impl NodeError {
    pub(crate) fn join(what: &'static str) -> impl FnOnce(JoinError) -> Self {
        move |source| Self::Join { what, source }
    }
}
