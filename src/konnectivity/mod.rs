//! Embedded konnectivity (apiserver-network-proxy) server and agent,
//! wire-compatible with upstream kube-apiserver, konnectivity-agent and
//! konnectivity-client. The byte-level reference is
//! `docs/konnectivity-protocol.md`.
//!
//! # Embedding
//!
//! ```text
//! let handle = Server::start(ServerConfig { .. }, token.clone()).await?;   // listeners bound
//! handle.ready_backends();  handle.stats();  handle.wait_stopped().await;
//! write_egress_selector_config(&path, &grpc_uds)?;                          // for kube-apiserver
//!
//! let agent = Agent::start(AgentConfig { servers: watch_rx, .. }, token).await?;
//! agent.drain();  agent.connected_servers();  agent.wait_stopped().await;
//! ```
//!
//! * [`server`]: gRPC frontend on a UDS (what kube-apiserver uses), optional
//!   HTTP-CONNECT frontends (UDS, TCP+mTLS), the agent listener (TLS, client
//!   certificate required), backend choice by `--proxy-strategies`, tunnel
//!   bookkeeping, admin HTTP.
//! * [`agent`]: dials every configured server, one connection per distinct
//!   server id, reconnects with capped backoff and jitter, dials endpoints.
//! * [`client`]: a konnectivity-client-like dialer (gRPC over UDS, one Proxy
//!   stream per dial) and an HTTP-CONNECT helper.
//!
//! # Memory and backpressure policy
//!
//! The protocol has no flow control of its own: all tunnels to one agent share
//! one HTTP/2 stream. Every queue here is bounded. The task reading a shared
//! stream (server: an agent stream; agent: a server stream) hands each packet
//! to the tunnel's own bounded queue. When that queue is full it waits for
//! that tunnel only while the queue keeps moving: a queue that has not moved
//! for a whole stall budget ([`server::DEFAULT_STALL_TIMEOUT`],
//! [`agent::DEFAULT_STALL_TIMEOUT`]; see [`io::Progress`]) belongs to a stuck
//! reader, and that tunnel is closed (CLOSE_REQ to the peer, an error to the
//! frontend) while the stream moves on. Tunnels that get stuck together cost
//! the other tunnels of the agent one budget in total; a slow but live
//! reader is waited for (without protocol flow control the alternative would
//! be cutting it off or buffering without bound). Unknown connection ids are
//! answered, never buffered.
//!
//! An idle tunnel holds no read buffer and only small per-RPC codec buffers
//! (see [`proto::TunnelCodec`]); after a large drop in open tunnels the
//! freed heap is given back to the OS ([`trim`]). `benches/tunnel.rs`
//! measures both.
//!
//! EOF in either direction is a full close (the protocol has no half-close).
//! All DATA of a connection is queued before its CLOSE_RSP on the same ordered
//! queue, so CLOSE_RSP never overtakes data.

pub mod admin;
pub mod agent;
pub mod client;
pub mod egress;
pub mod io;
pub mod metrics;
pub mod proto;
pub mod runtime;
pub mod server;
pub mod tls;
pub mod trim;
pub mod wire;

use std::path::PathBuf;

pub use agent::{Agent, AgentConfig, AgentHandle, ServerAddr};
pub use egress::{egress_selector_config, write_egress_selector_config};
pub use server::{AgentIdentity, ProxyStrategy, Server, ServerConfig, ServerHandle, ServerStats};
pub use tls::TlsFiles;

/// Errors of the konnectivity module.
#[derive(Debug, thiserror::Error)]
pub enum KonnectivityError {
    #[error("TLS material {path}: {reason}")]
    Tls { path: PathBuf, reason: String },
    #[error("cannot bind {what} on {addr}")]
    Bind {
        what: &'static str,
        addr: String,
        source: std::io::Error,
    },
    #[error("unix socket {path}")]
    Uds {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid {field}: {reason}")]
    Config { field: &'static str, reason: String },
    #[error("connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("dial {address}: {reason}")]
    Dial { address: String, reason: String },
    #[error("render egress selector configuration: {0}")]
    Yaml(String),
    #[error(transparent)]
    Fs(#[from] crate::fsutil::FsError),
}
