//! The Kubernetes API as a domain library (below `components/`): the
//! release mkectl pins and the REST client every in-process controller
//! (applier, CSR approver, join API's token mirror) talks to kube-apiserver
//! with.
//!
//! The client is mkectl's own, not kube-rs: the controllers need a dozen
//! calls (get, create, replace, server-side apply, merge patch, delete, list,
//! watch and discovery) with kubeconfigs mkectl wrote itself, and kube-rs
//! (client, JSONPath and regex engines) was 1.7 MB of the binary (#18). The
//! typed objects still come from `k8s-openapi`.
//!
//! * [`kubeconfig`]: reads a kubeconfig into a [`ClientConfig`].
//! * [`client`]: the connection pool, TLS and one request/response.
//! * [`api`]: a resource's REST paths and verbs ([`Api`]).
//! * [`discovery`]: which resource serves a kind.
//! * [`watch`]: the newline-delimited watch stream.

pub mod api;
pub mod client;
pub mod discovery;
pub mod error;
pub mod kubeconfig;
pub mod watch;

pub use api::{Api, ApiResource, DynamicObject, ListParams, ObjectList};
pub use client::{Client, ClientConfig, DEFAULT_REQUEST_TIMEOUT};
pub use error::{KubeClientError, KubeError, Status};
pub use watch::WatchEvent;

use std::path::Path;

/// The Kubernetes release of the upstream binaries mkectl runs (the bundle
/// pin; `packaging/versions.yaml` must agree).
pub const KUBERNETES_VERSION: &str = "v1.32.8";

/// Builds a client from a kubeconfig file (a controller's admin kubeconfig).
pub fn client_from_kubeconfig(path: &Path) -> Result<Client, KubeClientError> {
    Client::new(kubeconfig::load(path)?)
}
