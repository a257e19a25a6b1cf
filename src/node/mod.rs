//! A node's lifecycle, shared by both roles, and the plan of components for
//! each role.
//!
//! Layering (one way only): `commands/` turns flags into a plan and calls
//! `node`; `node` builds the components and runs them (identity resolved
//! once, locks, stale children, signals, the ops server, start and drain);
//! `components/` are the supervised parts; below them the domain libraries
//! (`config`, `pki`, `etcd`, `join`, `konnectivity`, `containerd`,
//! `kubeapi`, ...) import neither `node` nor `components`. The ops server
//! (`crate::ops`) sits beside `node`: it reads the component manager.

pub mod controller;
pub mod controller_context;
pub mod controller_join;
mod error;
pub mod identity;
pub mod join_token;
pub mod lifecycle;
pub mod node_side;
pub mod worker;

pub use error::NodeError;
pub use identity::{hostname, url_for};
