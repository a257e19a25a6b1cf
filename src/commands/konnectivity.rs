//! `mkectl konnectivity server|agent`: the embedded konnectivity server and
//! agent as standalone processes, with upstream's flag names where they mean
//! the same, so they can stand in for `proxy-server` / `proxy-agent`.
//! First SIGTERM/SIGINT drains, a second one exits at once.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::cli::{AgentArgs, KonnectivityCommand, Mode, ServerArgs};
use crate::exit::UsageError;
use crate::konnectivity::{
    Agent, AgentConfig, ProxyStrategy, Server, ServerAddr, ServerConfig, TlsFiles,
};

/// How long a stop may take before the process exits anyway.
pub const STOP_DEADLINE: Duration = Duration::from_secs(15);

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
    cfg.agent_identity = a.agent_identity;
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
