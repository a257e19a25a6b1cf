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
//!
//! # Operating hooks (status, metrics, certificate rotation)
//!
//! Optional methods with defaults, so a component opts in:
//!
//! * `supervised` exposes the child behind a component that runs one, which
//!   gives `mkectl status` and the metrics its pid, restarts and last exit.
//! * `uses_certs` names the PKI leaves the component reads (its own serving
//!   or client certificates). When the rotation loop renews one of them it
//!   calls `restart` on exactly the components that list it.
//! * `restart` makes the component pick up new files. The default restarts
//!   the supervised child in place (`Supervised::restart`), and otherwise
//!   runs `stop` then `start`. The manager calls it only on a running
//!   component and waits for `ready` again afterwards.
//! * `peers` lists the connections a component holds that operators care
//!   about (the konnectivity agents a server sees), shown by `mkectl status`.
//!
//! The manager keeps every component behind a lock, so `ready`, `supervised`
//! and `peers` may be called concurrently with each other (status readers)
//! while `init`/`start`/`stop`/`restart` run exclusively.

pub mod api_front;
pub mod api_lb;
pub mod binary;
pub mod containerd;
pub mod controller_registry;
pub mod csr_approver;
pub mod etcd;
pub mod image_import;
pub mod join_api;
pub mod konnectivity_agent;
pub mod konnectivity_server;
pub mod kube_apiserver;
pub mod kube_common;
pub mod kube_controller_manager;
pub mod kube_proxy;
pub mod kube_scheduler;
pub mod kubelet;
pub mod manager;
pub mod manifest_applier;

use std::time::Duration;

pub use manager::{ComponentStatus, LastExit, Manager, ManagerHandle, Phase};

use crate::pki::Leaf;
use crate::supervisor::Supervised;

/// How long the manager waits for a component to turn ready by default.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Starts `spec` under the supervisor; a failure names `component`.
pub(crate) async fn start_supervised(
    component: &'static str,
    spec: crate::supervisor::ChildSpec,
) -> Result<Supervised, ComponentError> {
    crate::supervisor::start(spec)
        .await
        .map_err(|source| ComponentError::Supervisor { component, source })
}

impl ComponentError {
    /// `component` failed for the reason `message` says.
    pub fn failed(component: &'static str, message: impl std::fmt::Display) -> Self {
        ComponentError::Failed {
            component,
            message: message.to_string(),
        }
    }
}

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

    /// The supervised child, for components that run one.
    fn supervised(&self) -> Option<&Supervised> {
        None
    }

    /// The PKI leaves this component reads; renewing one restarts it.
    fn uses_certs(&self) -> &[Leaf] {
        &[]
    }

    /// Picks up renewed certificates: restarts the supervised child in place,
    /// or stops and starts an in-process component.
    async fn restart(&mut self) -> Result<(), ComponentError> {
        if let Some(child) = self.supervised() {
            child.restart().await;
            return Ok(());
        }
        // Start even when the stop reported a problem (e.g. a slow drain):
        // a component left stopped serves nobody.
        if let Err(e) = self.stop().await {
            tracing::warn!(component = self.name(), error = %e, "stop before restart failed; starting anyway");
        }
        self.start().await
    }

    /// Connected peers worth showing in `mkectl status`, if the component
    /// has any (e.g. the agents a konnectivity server sees).
    fn peers(&self) -> Option<Peers> {
        None
    }
}

/// Peers a component is connected to, as `mkectl status` shows them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Peers {
    /// What the peers are: `agents` (a konnectivity server), `servers` (an agent).
    pub kind: String,
    /// Their identities, sorted.
    pub connected: Vec<String>,
}
