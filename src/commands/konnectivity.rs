//! `mkectl konnectivity server|agent`: the embedded konnectivity server and
//! agent as standalone processes, with upstream's flag names where they mean
//! the same, so they can stand in for `proxy-server` / `proxy-agent`.
//! First SIGTERM/SIGINT drains, a second one exits at once.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::exit::UsageError;
use crate::konnectivity::{
    Agent, AgentConfig, ProxyStrategy, Server, ServerAddr, ServerConfig, TlsFiles,
};

/// Default agent listener port (DESIGN.md; upstream's default is 8091).
pub const DEFAULT_AGENT_PORT: u16 = 8132;
/// Default server admin port: /healthz /readyz /metrics.
pub const DEFAULT_SERVER_ADMIN_PORT: u16 = 8133;
/// Default agent admin port (upstream's agent health port).
pub const DEFAULT_AGENT_ADMIN_PORT: u16 = 8093;
/// How long a stop may take before the process exits anyway.
pub const STOP_DEADLINE: Duration = Duration::from_secs(15);

#[derive(Debug, Subcommand)]
pub enum KonnectivityCommand {
    /// Run a konnectivity server (upstream `proxy-server`).
    Server(Box<ServerArgs>),
    /// Run a konnectivity agent (upstream `proxy-agent`).
    Agent(Box<AgentArgs>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    Grpc,
    HttpConnect,
}

#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Frontend protocol on --uds-name / --server-port.
    #[arg(long, value_enum, default_value_t = Mode::Grpc)]
    pub mode: Mode,
    /// Frontend unix socket (kube-apiserver's egress selector udsName).
    #[arg(long)]
    pub uds_name: Option<PathBuf>,
    /// Also serve HTTP-CONNECT on this unix socket (gRPC mode).
    #[arg(long)]
    pub http_connect_uds_name: Option<PathBuf>,
    /// Replace a stale socket file at --uds-name.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub delete_existing_uds_file: bool,
    /// TCP frontend port (HTTP-CONNECT with mTLS); 0 = none.
    #[arg(long, default_value_t = 0)]
    pub server_port: u16,
    #[arg(long, default_value = "0.0.0.0")]
    pub server_bind_address: IpAddr,
    /// TCP frontend certificate, key, and the CA clients must chain to.
    #[arg(long)]
    pub server_cert: Option<PathBuf>,
    #[arg(long)]
    pub server_key: Option<PathBuf>,
    #[arg(long)]
    pub server_ca_cert: Option<PathBuf>,
    /// Agent listener port.
    #[arg(long, default_value_t = DEFAULT_AGENT_PORT)]
    pub agent_port: u16,
    #[arg(long, default_value = "0.0.0.0")]
    pub agent_bind_address: IpAddr,
    /// Agent listener certificate and key.
    #[arg(long)]
    pub cluster_cert: PathBuf,
    #[arg(long)]
    pub cluster_key: PathBuf,
    /// CA that agent client certificates must chain to (required).
    #[arg(long)]
    pub cluster_ca_cert: PathBuf,
    /// /healthz /readyz /metrics port (upstream's --health-port serves the
    /// same endpoints); 0 = off.
    #[arg(long, alias = "health-port", default_value_t = DEFAULT_SERVER_ADMIN_PORT)]
    pub admin_port: u16,
    #[arg(long, alias = "health-bind-address", default_value = "127.0.0.1")]
    pub admin_bind_address: IpAddr,
    /// This server's id (`serverid` header).
    #[arg(long, env = "PROXY_SERVER_ID")]
    pub server_id: Option<String>,
    /// Number of servers (`servercount` header).
    #[arg(long, default_value_t = 1)]
    pub server_count: u32,
    /// Backend choice, comma separated: default, destHost, defaultRoute.
    #[arg(long, default_value = "default")]
    pub proxy_strategies: String,
}

#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    /// Proxy server host(s): repeat or comma separate; `host` or
    /// `host:port`. The agent keeps one connection per distinct server.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1")]
    pub proxy_server_host: Vec<String>,
    /// Port for hosts given without one.
    #[arg(long, default_value_t = DEFAULT_AGENT_PORT)]
    pub proxy_server_port: u16,
    /// CA the servers' certificates must chain to.
    #[arg(long)]
    pub ca_cert: PathBuf,
    /// Client certificate and key presented to servers.
    #[arg(long)]
    pub agent_cert: PathBuf,
    #[arg(long)]
    pub agent_key: PathBuf,
    #[arg(long, env = "PROXY_AGENT_ID")]
    pub agent_id: Option<String>,
    /// URL-encoded identifiers: host, ipv4, ipv6, cidr, default-route.
    #[arg(long, default_value = "")]
    pub agent_identifiers: String,
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub sync_interval: Duration,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub sync_interval_cap: Duration,
    /// Endpoint dial timeout.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub dial_timeout: Duration,
    /// /healthz /readyz /metrics port (upstream's --health-server-port
    /// serves the same); 0 = off.
    #[arg(long, alias = "health-server-port", alias = "admin-server-port", default_value_t = DEFAULT_AGENT_ADMIN_PORT)]
    pub admin_port: u16,
    #[arg(long, alias = "health-server-host", default_value = "127.0.0.1")]
    pub admin_bind_address: IpAddr,
    /// After the first signal, how long to wait for open connections to
    /// finish before exiting.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
}

fn usage(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(msg.into()))
}

/// Builds the server config from flags (usage errors name the flag).
pub fn server_config(a: &ServerArgs) -> anyhow::Result<ServerConfig> {
    let server_id = a
        .server_id
        .clone()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let mut cfg = ServerConfig::new(
        server_id,
        SocketAddr::new(a.agent_bind_address, a.agent_port),
        TlsFiles {
            cert: a.cluster_cert.clone(),
            key: a.cluster_key.clone(),
            ca: a.cluster_ca_cert.clone(),
        },
    );
    if a.server_count == 0 {
        return Err(usage("--server-count must be at least 1"));
    }
    cfg.server_count = a.server_count;
    cfg.proxy_strategies = ProxyStrategy::parse_list(&a.proxy_strategies)
        .map_err(|e| usage(format!("--proxy-strategies: {e}")))?;
    if let Some(p) = &a.uds_name {
        if !a.delete_existing_uds_file && p.exists() {
            return Err(usage(format!(
                "--uds-name {} exists and --delete-existing-uds-file=false",
                p.display()
            )));
        }
        if a.server_port != 0 {
            return Err(usage("--uds-name requires --server-port=0"));
        }
    }
    match a.mode {
        Mode::Grpc => {
            if a.server_port != 0 {
                return Err(usage(
                    "--mode=grpc is served on --uds-name only (kube-apiserver speaks gRPC only over a UDS); use --mode=http-connect for --server-port",
                ));
            }
            let Some(p) = &a.uds_name else {
                return Err(usage("--mode=grpc needs --uds-name"));
            };
            cfg.grpc_uds = Some(p.clone());
            cfg.http_connect_uds = a.http_connect_uds_name.clone();
        }
        Mode::HttpConnect => {
            if a.http_connect_uds_name.is_some() {
                return Err(usage(
                    "--http-connect-uds-name is for --mode=grpc; use --uds-name",
                ));
            }
            cfg.http_connect_uds = a.uds_name.clone();
            if a.server_port != 0 {
                let (Some(cert), Some(key), Some(ca)) =
                    (&a.server_cert, &a.server_key, &a.server_ca_cert)
                else {
                    return Err(usage(
                        "--server-port needs --server-cert, --server-key and --server-ca-cert (clients must present a certificate)",
                    ));
                };
                cfg.http_connect_tcp = Some((
                    SocketAddr::new(a.server_bind_address, a.server_port),
                    TlsFiles {
                        cert: cert.clone(),
                        key: key.clone(),
                        ca: ca.clone(),
                    },
                ));
            }
            if cfg.http_connect_uds.is_none() && cfg.http_connect_tcp.is_none() {
                return Err(usage(
                    "--mode=http-connect needs --uds-name or --server-port",
                ));
            }
        }
    }
    if a.admin_port != 0 {
        cfg.admin_listen = Some(SocketAddr::new(a.admin_bind_address, a.admin_port));
    }
    for (flag, p) in [
        ("--cluster-cert", &a.cluster_cert),
        ("--cluster-key", &a.cluster_key),
        ("--cluster-ca-cert", &a.cluster_ca_cert),
    ] {
        if !p.is_file() {
            return Err(usage(format!("{flag} {}: no such file", p.display())));
        }
    }
    Ok(cfg)
}

fn parse_servers(a: &AgentArgs) -> anyhow::Result<Vec<ServerAddr>> {
    let mut out = Vec::new();
    for h in a
        .proxy_server_host
        .iter()
        .map(|h| h.trim())
        .filter(|h| !h.is_empty())
    {
        let addr = if h.parse::<IpAddr>().is_ok()
            || !h.contains(':')
            || (h.starts_with('[') && h.ends_with(']'))
        {
            ServerAddr {
                host: h.trim_start_matches('[').trim_end_matches(']').to_string(),
                port: a.proxy_server_port,
            }
        } else {
            h.parse::<ServerAddr>()
                .map_err(|e| usage(format!("--proxy-server-host: {e}")))?
        };
        if !out.contains(&addr) {
            out.push(addr);
        }
    }
    if out.is_empty() {
        return Err(usage("--proxy-server-host: no server given"));
    }
    Ok(out)
}

fn validate_identifiers(s: &str) -> anyhow::Result<()> {
    for pair in s.split('&').filter(|p| !p.is_empty()) {
        let key = pair.split_once('=').map(|(k, _)| k).unwrap_or(pair);
        if !matches!(key, "host" | "ipv4" | "ipv6" | "cidr" | "default-route") {
            return Err(usage(format!(
                "--agent-identifiers: unknown key {key:?} (allowed: host, ipv4, ipv6, cidr, default-route)"
            )));
        }
    }
    Ok(())
}

/// Builds the agent config from flags.
pub fn agent_config(
    a: &AgentArgs,
) -> anyhow::Result<(AgentConfig, watch::Sender<Vec<ServerAddr>>)> {
    let servers = parse_servers(a)?;
    validate_identifiers(&a.agent_identifiers)?;
    if a.sync_interval_cap < a.sync_interval {
        return Err(usage(
            "--sync-interval-cap must be at least --sync-interval",
        ));
    }
    for (flag, p) in [
        ("--ca-cert", &a.ca_cert),
        ("--agent-cert", &a.agent_cert),
        ("--agent-key", &a.agent_key),
    ] {
        if !p.is_file() {
            return Err(usage(format!("{flag} {}: no such file", p.display())));
        }
    }
    let (tx, rx) = watch::channel(servers);
    let id = a
        .agent_id
        .clone()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let mut cfg = AgentConfig::new(
        rx,
        TlsFiles {
            cert: a.agent_cert.clone(),
            key: a.agent_key.clone(),
            ca: a.ca_cert.clone(),
        },
        id,
    );
    cfg.identifiers = a.agent_identifiers.clone();
    cfg.sync_interval = a.sync_interval;
    cfg.sync_interval_cap = a.sync_interval_cap;
    cfg.dial_timeout = a.dial_timeout;
    if a.admin_port != 0 {
        cfg.admin_listen = Some(SocketAddr::new(a.admin_bind_address, a.admin_port));
    }
    Ok((cfg, tx))
}

/// Resolves on the first SIGTERM/SIGINT; a second one exits the process.
async fn first_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::warn!(component = "konnectivity", "second signal: exiting now");
        std::process::exit(1);
    });
    Ok(())
}

/// Runs the subcommand until a signal, then drains.
pub async fn run(cmd: &KonnectivityCommand) -> anyhow::Result<()> {
    match cmd {
        KonnectivityCommand::Server(a) => run_server(a).await,
        KonnectivityCommand::Agent(a) => run_agent(a).await,
    }
}

async fn run_server(a: &ServerArgs) -> anyhow::Result<()> {
    let cfg = server_config(a)?;
    let token = CancellationToken::new();
    let handle = Server::start(cfg, token.clone())
        .await
        .context("start konnectivity server")?;
    first_signal().await?;
    tracing::info!(
        component = "konnectivity-server",
        "signal received: stopping"
    );
    token.cancel();
    if tokio::time::timeout(STOP_DEADLINE, handle.wait_stopped())
        .await
        .is_err()
    {
        tracing::warn!(
            component = "konnectivity-server",
            "stop took too long; exiting"
        );
    }
    Ok(())
}

async fn run_agent(a: &AgentArgs) -> anyhow::Result<()> {
    let (cfg, _servers) = agent_config(a)?;
    let token = CancellationToken::new();
    let handle = Agent::start(cfg, token.clone())
        .await
        .context("start konnectivity agent")?;
    first_signal().await?;
    handle.drain();
    let deadline = tokio::time::Instant::now() + a.drain_timeout;
    while handle.open_endpoint_connections() > 0 && tokio::time::Instant::now() < deadline {
        tracing::info!(
            component = "konnectivity-agent",
            open = handle.open_endpoint_connections(),
            "draining: waiting for open connections"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    token.cancel();
    if tokio::time::timeout(STOP_DEADLINE, handle.wait_stopped())
        .await
        .is_err()
    {
        tracing::warn!(
            component = "konnectivity-agent",
            "stop took too long; exiting"
        );
    }
    Ok(())
}
