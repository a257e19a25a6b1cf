//! Command lines of konnectivity servers and agents as processes: upstream
//! apiserver-network-proxy `proxy-server` / `proxy-agent` (from a bin dir,
//! see [`super::upstream`]) or `mkectl konnectivity server|agent`, which
//! take upstream's flags.
//!
//! Self-contained (no `super::`), so that benches include it by path as
//! well: `#[path = "../tests/common/konnectivity_cmd.rs"] mod …;`.
//!
//! Only the command line is built here ([`server_command`],
//! [`agent_command`]): callers choose stdio, logs and `kill_on_drop` (a
//! `tokio::process::Command` is made `From` the `std::process::Command`
//! returned). Every listener named is on 127.0.0.1.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use mkectl::konnectivity::TlsFiles;

const MKECTL: &str = env!("CARGO_BIN_EXE_mkectl");

/// Whose server or agent.
#[derive(Clone, Copy, Debug)]
pub enum Flavor<'a> {
    /// `mkectl konnectivity server|agent`.
    Mkectl,
    /// `proxy-server` / `proxy-agent` in this directory.
    Upstream(&'a Path),
}

impl Flavor<'_> {
    /// The program and the arguments naming the subcommand.
    fn command(self, mkectl_sub: &str, upstream_bin: &str) -> Command {
        match self {
            Flavor::Mkectl => {
                let mut c = Command::new(MKECTL);
                c.args(["konnectivity", mkectl_sub]);
                c
            }
            Flavor::Upstream(dir) => Command::new(dir.join(upstream_bin)),
        }
    }
}

/// Optional flags of [`server_command`] and [`agent_command`]: each is
/// given by the one it is marked for, and ignored by the other.
#[derive(Default)]
pub struct KonnOpts<'a> {
    /// Server: `--mode` (grpc or http-connect).
    pub mode: Option<&'a str>,
    /// Server: `--server-count`.
    pub server_count: Option<usize>,
    /// Server: `--http-connect-uds-name` (mkectl: a second frontend).
    pub http_connect_uds: Option<&'a Path>,
    /// Server: `--agent-identity` (mkectl).
    pub agent_identity: Option<&'a str>,
    /// Agent: `--agent-identifiers`.
    pub identifiers: Option<&'a str>,
    /// Agent: `--sync-interval`, with `--sync-interval-cap 1s`.
    pub sync_interval: Option<&'a str>,
    /// Both (upstream): the health port on 127.0.0.1, server
    /// `--health-port`, agent `--health-server-port`.
    pub health_port: Option<u16>,
    /// Both: further flags, given last.
    pub extra: &'a [&'a str],
}

/// A konnectivity server `server_id`: frontend on `uds`, agents on
/// 127.0.0.1:`agent_port`, `--admin-port admin_port`, cluster certificate
/// `tls`; upstream's also without a TCP frontend (`--server-port 0`).
pub fn server_command(
    flavor: Flavor,
    tls: &TlsFiles,
    server_id: &str,
    uds: &Path,
    agent_port: u16,
    admin_port: u16,
    o: KonnOpts,
) -> Command {
    let mut c = flavor.command("server", "proxy-server");
    if let Flavor::Upstream(_) = flavor {
        c.args(["--server-port", "0"]);
    }
    if let Some(m) = o.mode {
        c.args(["--mode", m]);
    }
    c.args(["--server-id", server_id]);
    if let Some(n) = o.server_count {
        c.arg("--server-count").arg(n.to_string());
    }
    if let Some(i) = o.agent_identity {
        c.args(["--agent-identity", i]);
    }
    c.arg("--uds-name").arg(uds);
    if let Some(u) = o.http_connect_uds {
        c.arg("--http-connect-uds-name").arg(u);
    }
    c.args(["--agent-bind-address", "127.0.0.1", "--agent-port"])
        .arg(agent_port.to_string())
        .arg("--admin-port")
        .arg(admin_port.to_string());
    if let Some(h) = o.health_port {
        c.args(["--health-bind-address", "127.0.0.1", "--health-port"])
            .arg(h.to_string());
    }
    c.args(tls_args(
        tls,
        ["--cluster-cert", "--cluster-key", "--cluster-ca-cert"],
    ))
    .args(o.extra);
    c
}

/// A konnectivity agent `agent_id` with client certificate `tls`,
/// connecting to `server` (mkectl: `--proxy-server-host <ip:port>`;
/// upstream: `--proxy-server-host <ip> --proxy-server-port <port>`), its
/// admin port `admin_port` (mkectl: `--admin-port`; upstream:
/// `--admin-server-port` on `--admin-bind-address 127.0.0.1`).
pub fn agent_command(
    flavor: Flavor,
    tls: &TlsFiles,
    agent_id: &str,
    server: SocketAddr,
    admin_port: u16,
    o: KonnOpts,
) -> Command {
    let mut c = flavor.command("agent", "proxy-agent");
    c.args(["--agent-id", agent_id]);
    match flavor {
        Flavor::Mkectl => {
            c.arg("--proxy-server-host")
                .arg(server.to_string())
                .arg("--admin-port");
        }
        Flavor::Upstream(_) => {
            c.arg("--proxy-server-host")
                .arg(server.ip().to_string())
                .arg("--proxy-server-port")
                .arg(server.port().to_string())
                .args(["--admin-bind-address", "127.0.0.1", "--admin-server-port"]);
        }
    }
    c.arg(admin_port.to_string());
    c.args(tls_args(tls, ["--agent-cert", "--agent-key", "--ca-cert"]));
    if let Some(i) = o.identifiers {
        c.args(["--agent-identifiers", i]);
    }
    if let Some(s) = o.sync_interval {
        c.args(["--sync-interval", s, "--sync-interval-cap", "1s"]);
    }
    if let Some(h) = o.health_port {
        c.args(["--health-server-host", "127.0.0.1", "--health-server-port"])
            .arg(h.to_string());
    }
    c.args(o.extra);
    c
}

/// `[cert flag, cert, key flag, key, CA flag, CA]`.
fn tls_args(tls: &TlsFiles, [cert, key, ca]: [&str; 3]) -> [OsString; 6] {
    [
        cert.into(),
        tls.cert.clone().into(),
        key.into(),
        tls.key.clone().into(),
        ca.into(),
        tls.ca.clone().into(),
    ]
}
