//! Manifest stacks: every `<manifests>/<stack>/*.yaml|*.yml` is applied to the
//! cluster with server-side apply, and what leaves a stack is pruned.
//!
//! One controller applies at a time (a `coordination.k8s.io` Lease). Every
//! object carries the label [`STACK_LABEL`] = `<stack>`; pruning deletes only
//! objects that carry it *and* list [`FIELD_MANAGER`] in their managed fields,
//! so nothing the applier did not create is ever touched. An object that
//! already existed when a stack first named it is *adopted* (annotation
//! [`ADOPTED_ANNOTATION`]): its fields follow the stack, but leaving the stack
//! never deletes it.
//!
//! Safety rules (see [`Applier`]):
//! - a parse or apply error anywhere in a stack leaves that stack unpruned;
//!   the error names the file and the document index; other stacks go on;
//! - a stack directory that is missing or empty when the applier starts never
//!   deletes anything (the k0s#8214 hazard); only a stack that this process
//!   saw with manifests and that then disappears is pruned, or one the
//!   controller explicitly names in [`ApplierConfig::removed_stacks`];
//! - the resource types a stack has used are recorded in the cluster (a
//!   ConfigMap per stack, see [`engine`]) so a restarted or new leader prunes
//!   the same types.

pub mod engine;
pub mod leader;
pub mod manifest;
pub mod render;
pub mod runner;
pub use crate::config::addons as settings;
pub mod status;

use std::path::PathBuf;
use std::time::Duration;

pub use crate::config::addons::AddonsSettings;
pub use render::{
    check_config, render_default_stacks, write_default_stacks, DefaultStacksReport, Provider,
    RenderInputs, RenderedFile, DEFAULT_STACKS,
};
pub use runner::{Applier, ApplierConfig};
pub use status::{ApplierStatus, StackState, StackStatus, StatusHandle};

/// Field manager of every server-side apply (and the marker pruning checks).
pub const FIELD_MANAGER: &str = "mkectl";
/// Label on every applied object: the stack it belongs to.
pub const STACK_LABEL: &str = "mkectl.io/stack";
/// Annotation on objects that existed before a stack named them: the applier
/// manages their fields but, not having created them, never deletes them.
pub const ADOPTED_ANNOTATION: &str = "mkectl.io/adopted";
/// Label on the per-stack record ConfigMaps (never a prune candidate).
pub const RECORD_LABEL: &str = "mkectl.io/stack-record";

#[derive(Debug, thiserror::Error)]
pub enum ApplierError {
    #[error("{path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Fs(#[from] crate::fsutil::FsError),
    #[error("template of stack {stack}: {message}")]
    Template { stack: String, message: String },
    #[error("invalid {field} {value:?}: {reason}")]
    InvalidSetting {
        field: String,
        value: String,
        reason: String,
    },
    #[error("invalid applier config: {0}")]
    Config(String),
    #[error("stack directory name {name:?} is not a DNS label (lowercase a-z, 0-9, '-', at most 63 characters)")]
    InvalidStackName { name: String },
    #[error("{file}: document index {index} (line {line}): {message}")]
    Parse {
        file: PathBuf,
        index: usize,
        line: usize,
        message: String,
    },
    #[error("{file}: document index {index} (line {line}): {message}")]
    InvalidObject {
        file: PathBuf,
        index: usize,
        line: usize,
        message: String,
    },
    #[error("{file}: document index {index}: the API server does not serve kind {kind} in {api_version}: {message}")]
    UnknownKind {
        file: PathBuf,
        index: usize,
        api_version: String,
        kind: String,
        message: String,
    },
    #[error("{file}: document index {index}: applying {object}")]
    Apply {
        file: PathBuf,
        index: usize,
        object: String,
        source: crate::kubeapi::KubeError,
    },
    #[error("CustomResourceDefinition {name} not Established after {waited:?}")]
    CrdNotEstablished { name: String, waited: Duration },
    #[error("listing {resource} of stack {stack} for pruning")]
    PruneList {
        stack: String,
        resource: String,
        source: crate::kubeapi::KubeError,
    },
    #[error("pruning {object} of stack {stack}")]
    Prune {
        stack: String,
        object: String,
        source: crate::kubeapi::KubeError,
    },
    #[error("stack record {namespace}/{name}: {message}")]
    Record {
        namespace: String,
        name: String,
        message: String,
    },
    #[error("lease {namespace}/{name}")]
    Lease {
        namespace: String,
        name: String,
        source: crate::kubeapi::KubeError,
    },
    #[error("watching {path}")]
    Watch {
        path: PathBuf,
        source: notify::Error,
    },
    #[error(transparent)]
    Client(#[from] crate::kubeapi::KubeClientError),
    /// Several failures in one stack, each naming its file and document.
    #[error("{}", join_errors(.0))]
    Many(Vec<ApplierError>),
}

fn join_errors(errors: &[ApplierError]) -> String {
    errors
        .iter()
        .map(|e| crate::telemetry::Chain(e).to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

impl ApplierError {
    /// Collapses a list of errors (never empty in practice) into one.
    pub(crate) fn from_many(mut errors: Vec<ApplierError>) -> ApplierError {
        if errors.len() == 1 {
            errors.remove(0)
        } else {
            ApplierError::Many(errors)
        }
    }
}

/// Stack names become a label value and part of a ConfigMap name: DNS labels.
pub fn valid_stack_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}
