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

/// Waits at `stop` up to `bound` for `done` (a task's end, a drain); a
/// timeout is [`ComponentError::StopTimeout`] naming `what` did not finish.
pub(crate) async fn stop_within<F: std::future::Future>(
    component: &'static str,
    what: &'static str,
    bound: Duration,
    done: F,
) -> Result<(), ComponentError> {
    tokio::time::timeout(bound, done)
        .await
        .map(drop)
        .map_err(|_| ComponentError::StopTimeout {
            component,
            what,
            bound,
        })
}

impl ComponentError {
    /// `component` failed while doing `what` because of `source`.
    pub fn during(
        component: &'static str,
        what: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        ComponentError::Step {
            component,
            what: what.into(),
            source: source.into(),
        }
    }
}

/// Why a component's `init`, `start`, `ready` or `stop` failed. The message
/// names the component and what it was doing; the cause, when there is one,
/// is the `source` (printed by the chain, never repeated in the message).
#[derive(Debug, thiserror::Error)]
pub enum ComponentError {
    /// A step failed because of another module's error. The causes come from
    /// many modules (applier, konnectivity, etcd, ...), so the source is
    /// boxed rather than one variant per cause type.
    #[error("{component}: {what}")]
    Step {
        component: &'static str,
        /// What was being done (`writing the egress selector configuration`).
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A flag in the final command line (defaults plus `spec.extraArgs`) has a
    /// value mkectl cannot use.
    #[error("{component}: flag --{flag}={value:?} (spec.extraArgs.{component}): {problem}")]
    BadFlag {
        component: &'static str,
        flag: String,
        value: String,
        problem: &'static str,
    },
    /// A file the component needs is not there (yet).
    #[error("{component}: {} does not exist{note}", path.display())]
    MissingFile {
        component: &'static str,
        path: std::path::PathBuf,
        /// Why it is missing or who writes it; empty or starting with `: `.
        note: &'static str,
    },
    /// The component checked its own inputs and found them unusable; a
    /// finding with no underlying error value, so it is text.
    #[error("{component}: {problem}")]
    Invalid {
        component: &'static str,
        problem: String,
    },
    /// `start` was called before `init`.
    #[error("{component}: start before init")]
    NotInitialized { component: &'static str },
    /// The background task that is the component ended on its own.
    #[error("{component}: the {task} task ended")]
    TaskEnded {
        component: &'static str,
        task: &'static str,
    },
    /// `stop` gave up waiting for `what` to end.
    #[error("{component}: {what} within {bound:?}")]
    StopTimeout {
        component: &'static str,
        /// What did not finish (`tunnels did not drain`).
        what: &'static str,
        bound: Duration,
    },
    /// A readiness probe's answer. It describes an observation (a refused
    /// connection, a 500, "not started") rather than wrapping one error
    /// value, so it stays text.
    #[error("{component}: not ready: {message}")]
    NotReady {
        component: &'static str,
        message: String,
    },
    #[error("{component}")]
    Fs {
        component: &'static str,
        source: crate::fsutil::FsError,
    },
    #[error("{component}")]
    Supervisor {
        component: &'static str,
        source: crate::supervisor::SupervisorError,
    },
    #[error(transparent)]
    BinaryNotFound(#[from] binary::BinaryNotFound),
    /// `last` is the text of the last `NotReady`, a probe observation (see
    /// `NotReady`), not an error value.
    #[error("{component} did not become ready within {waited:?}: {last}")]
    ReadyTimeout {
        component: &'static str,
        waited: Duration,
        last: String,
    },
    #[error("start of {component} cancelled")]
    Cancelled { component: &'static str },
}

impl crate::exit::ExitCode for ComponentError {
    /// A missing binary is exit 69; `transparent` hides it from the chain, so
    /// the wrapper answers for it. Other variants leave it to their causes.
    fn exit_code(&self) -> Option<u8> {
        match self {
            ComponentError::BinaryNotFound(e) => crate::exit::ExitCode::exit_code(e),
            _ => None,
        }
    }
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
            tracing::warn!(component = self.name(), error = %crate::telemetry::Chain(&e), "stop before restart failed; starting anyway");
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
