//! Components: every long-lived part of a node (etcd, the konnectivity
//! server, kube-apiserver, ...) behind one contract, driven by the `Manager`.
//!
//! # The contract
//!
//! A component moves through these states, and only forward:
//!
//! ```text
//!  Created --init--> Initialized --start--> Running --(ready ok)--> Ready
//!     \                  \                     \                      |
//!      `------------------`---------------------`------stop-------> Stopped
//! ```
//!
//! * `init` prepares files (configs, directories, certificates it needs) and
//!   never starts a process or binds a socket; it may run with `--init-only`.
//! * `start` returns once the component runs in the background (a supervised
//!   child was spawned, a task was spawned). It does not wait for readiness.
//! * `ready` is a cheap probe: `Ok` when the component serves. The manager
//!   polls it with a bound (`ready_timeout`) after `start`.
//! * `stop` is idempotent and callable from any state, including after a
//!   failed `start`; it releases everything the component holds.

pub mod applier;
pub mod binary;
pub mod containerd;
pub mod controller_registry;
pub mod csr_approver;
pub mod etcd;
pub mod https_probe;
pub mod join_api;
pub mod konnectivity_agent;
pub mod konnectivity_server;
pub mod kube_apiserver;
pub mod kube_common;
pub mod kube_controller_manager;
pub mod kube_scheduler;
pub mod kubelet;
pub mod manager;

use std::time::Duration;

pub use manager::Manager;

/// How long the manager waits for a component to turn ready by default.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ComponentError {
    #[error("{component}: {message}")]
    Failed {
        component: &'static str,
        message: String,
    },
    #[error("{component}: not ready: {message}")]
    NotReady {
        component: &'static str,
        message: String,
    },
    #[error("{component}: {source}")]
    Fs {
        component: &'static str,
        source: crate::fsutil::FsError,
    },
    #[error("{component}: {source}")]
    Supervisor {
        component: &'static str,
        source: crate::supervisor::SupervisorError,
    },
    #[error(transparent)]
    BinaryNotFound(#[from] binary::BinaryNotFound),
    #[error("{component} did not become ready within {waited:?}: {last}")]
    ReadyTimeout {
        component: &'static str,
        waited: Duration,
        last: String,
    },
    #[error("start of {component} cancelled")]
    Cancelled { component: &'static str },
}

/// A long-lived part of a node. See the module docs for the state machine.
#[async_trait::async_trait]
pub trait Component: Send + Sync {
    /// Stable name: used in logs (`component` field), pid files, status and
    /// `--disable-components`.
    fn name(&self) -> &'static str;

    /// Prepares files; never starts anything.
    async fn init(&mut self) -> Result<(), ComponentError>;

    /// Starts the component in the background and returns.
    async fn start(&mut self) -> Result<(), ComponentError>;

    /// Cheap readiness probe.
    async fn ready(&self) -> Result<(), ComponentError>;

    /// Stops the component; idempotent, callable from any state.
    async fn stop(&mut self) -> Result<(), ComponentError>;

    /// Bound on the wait for `ready` after `start`.
    fn ready_timeout(&self) -> Duration {
        DEFAULT_READY_TIMEOUT
    }
}
