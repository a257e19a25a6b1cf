//! mkectl: one binary that turns Linux hosts into a Kubernetes cluster.
//!
//! The module tree mirrors the architecture in docs/design.md: `cli` holds the clap
//! definitions, `commands` one file per subcommand, and every long-lived part
//! of a node is a `components::Component` supervised by the manager.

pub mod apilb;
pub mod applier;
pub mod bundle;
pub mod cli;
pub mod commands;
pub mod components;
pub mod config;
pub mod containerd;
pub mod etcd;
pub mod exit;
pub mod expose;
pub mod fsutil;
pub mod hostcheck;
pub mod https_probe;
pub mod images;
pub mod join;
pub mod konnectivity;
pub mod kubeapi;
pub mod mounts;
pub mod node;
pub mod nodelock;
pub mod ops;
pub mod pki;
pub mod supervisor;
pub mod telemetry;
pub mod tlspolicy;
