//! Talking to containerd as a domain library (below `components/`): its gRPC
//! client and the sweep of shims it left behind. The supervised containerd
//! process itself is `components::containerd`.

pub mod client;
pub mod shims;

pub use client::{api, drain_tasks, ContainerdClient, ContainerdError};
pub use shims::{kill_shims, shims_of, SWEEP_WAIT};
