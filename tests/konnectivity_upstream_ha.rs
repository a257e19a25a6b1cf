//! HA behind one address with upstream agents (issue 14): three
//! `mkectl konnectivity server` processes, each with its own server id and
//! `--server-count 3`, behind a round-robin TCP relay on loopback (a plain L4
//! load balancer, no health checks); two upstream `proxy-agent` processes
//! are given only the relay's address.
//!
//! Upstream agents learn `servercount` from the first server they reach
//! and keep dialling the one address until they have seen that many
//! distinct `serverid`s. Every server must end up with both agents, so a
//! dial through any server finds an agent: the load-balancer case that
//! leaves k0s users with "No agent available" when it goes wrong. Then one
//! server is SIGKILLed (agents keep working through the other two) and
//! restarted (the agents reconnect to it through the relay).
//!
//! Agent flags that keep it quick: `--sync-interval 100ms
//! --sync-interval-cap 1s` (upstream's defaults are 1s and 10s).
//!
//! Network: every socket is on 127.0.0.1.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::konnectivity::*;
use common::konnectivity_cmd::{agent_command, server_command, Flavor, KonnOpts};
use common::tail;
use common::upstream::upstream_bins;
use mkectl::konnectivity::client::ProxyClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

const SERVERS: usize = 3;
const AGENTS: [&str; 2] = ["upstream-agent-1", "upstream-agent-2"];
/// Bound for the full mesh (and for the reconnect after a restart).
const MESH_LIMIT: Duration = Duration::from_secs(45);
/// Relay connections still in flight are cut after this (bounds every task).
const RELAY_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// `n` distinct ports in 20000..32000 (below the kernel's ephemeral range
/// and within the 1024..=49151 upstream's flags accept), free a moment ago.
fn low_ports<const N: usize>() -> [u16; N] {
    let mut x = u64::from(std::process::id()).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
    let mut held = Vec::new();
    for _ in 0..1000 {
        if held.len() == N {
            break;
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let port = 20000 + (x % 12000) as u16;
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            held.push(l);
        }
    }
    assert_eq!(held.len(), N, "no {N} free ports in 20000..32000");
    std::array::from_fn(|i| held[i].local_addr().unwrap().port())
}

/// A round-robin TCP relay: each new connection goes to the next backend
/// in turn; when that backend is down the client's connection is closed
/// (no health checks, no retry elsewhere).
struct Relay {
    addr: SocketAddr,
    token: CancellationToken,
    /// Connections handed to each backend (connected or not).
    per_backend: Arc<Vec<AtomicUsize>>,
}

impl Relay {
    async fn start(backends: Vec<SocketAddr>) -> Relay {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let token = CancellationToken::new();
        let per_backend: Arc<Vec<AtomicUsize>> =
            Arc::new(backends.iter().map(|_| AtomicUsize::new(0)).collect());
        let (t, counts) = (token.clone(), per_backend.clone());
        tokio::spawn(async move {
            let mut next = 0usize;
            loop {
                let (mut client, _) = tokio::select! {
                    _ = t.cancelled() => return,
                    r = l.accept() => match r { Ok(v) => v, Err(_) => continue },
                };
                let i = next % backends.len();
                next += 1;
                counts[i].fetch_add(1, Ordering::Relaxed);
                let backend = backends[i];
                let t = t.clone();
                tokio::spawn(async move {
                    let connect =
                        tokio::time::timeout(RELAY_CONNECT_TIMEOUT, TcpStream::connect(backend));
                    let mut upstream = match connect.await {
                        Ok(Ok(s)) => s,
                        _ => return, // backend down: drop the client
                    };
                    tokio::select! {
                        _ = t.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                    }
                });
            }
        });
        Relay {
            addr,
            token,
            per_backend,
        }
    }

    fn counts(&self) -> Vec<usize> {
        self.per_backend
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// One `mkectl konnectivity server` process and what it listens on.
struct MkeServer {
    id: String,
    agent_port: u16,
    admin: SocketAddr,
    uds: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    starts: usize,
}

impl MkeServer {
    fn new(dir: &Path, id: &str) -> MkeServer {
        let [agent_port, admin_port] = common::free_ports();
        MkeServer {
            id: id.into(),
            agent_port,
            admin: SocketAddr::from(([127, 0, 0, 1], admin_port)),
            uds: dir.join(format!("{id}.sock")),
            log: dir.join(format!("{id}.log")),
            child: None,
            starts: 0,
        }
    }

    fn agent_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.agent_port))
    }

    /// Starts (or restarts) the process on the same ports and socket.
    fn spawn(&mut self, pki: &Pki) {
        assert!(self.child.is_none());
        self.starts += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let cmd = server_command(
            Flavor::Mkectl,
            &pki.server,
            &self.id,
            &self.uds,
            self.agent_port,
            self.admin.port(),
            KonnOpts {
                mode: Some("grpc"),
                server_count: Some(SERVERS),
                // Both upstream agents present one shared certificate and name
                // themselves: the documented option for such agents.
                agent_identity: Some("headers"),
                extra: &["--admin-bind-address", "127.0.0.1"],
                ..Default::default()
            },
        );
        let child = Command::from(cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// SIGKILL, waited for.
    async fn kill(&mut self) {
        let mut c = self.child.take().expect("running");
        c.start_kill().unwrap();
        tokio::time::timeout(Duration::from_secs(10), c.wait())
            .await
            .expect("killed server exits")
            .unwrap();
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `(agent id, streams)` from `/readyz?verbose`, or None while the
    /// admin port does not answer.
    async fn agents(&self) -> Option<Vec<(String, usize)>> {
        let body = get(self.admin, "/readyz?verbose").await?.1;
        Some(
            body.lines()
                .filter_map(|l| {
                    let rest = l.strip_prefix("agent ")?;
                    let (id, streams) = rest.split_once(" streams=")?;
                    let n = streams.split_whitespace().next()?.parse().ok()?;
                    Some((id.to_string(), n))
                })
                .collect(),
        )
    }

    /// Both agents, one stream each, nothing else.
    async fn has_all_agents(&self) -> bool {
        let want: Vec<(String, usize)> = AGENTS.iter().map(|a| (a.to_string(), 1)).collect();
        self.agents().await == Some(want)
    }
}

/// `GET path` on a plain-HTTP loopback port: (status, body), or None if
/// nothing answers (bounded: 5 s).
async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .ok()?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.ok()?;
        let text = String::from_utf8_lossy(&out).into_owned();
        let code = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
        Some((code, body))
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .ok()
        .flatten()
}

struct UpstreamAgent {
    id: &'static str,
    health: SocketAddr,
    log: PathBuf,
    _child: Child,
}

fn spawn_agent(
    bin: &Path,
    pki: &Pki,
    dir: &Path,
    id: &'static str,
    relay: SocketAddr,
) -> UpstreamAgent {
    let [admin, health] = low_ports();
    let log = dir.join(format!("{id}.log"));
    let cmd = agent_command(
        Flavor::Upstream(bin),
        &pki.agent,
        id,
        relay,
        admin,
        KonnOpts {
            identifiers: Some("host=127.0.0.1"),
            sync_interval: Some("100ms"),
            health_port: Some(health),
            extra: &["-v", "2"],
            ..Default::default()
        },
    );
    let child = Command::from(cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    UpstreamAgent {
        id,
        health: SocketAddr::from(([127, 0, 0, 1], health)),
        log,
        _child: child,
    }
}

impl UpstreamAgent {
    /// `konnectivity_network_proxy_agent_open_server_connections`, if the
    /// health port answers.
    async fn open_server_connections(&self) -> Option<u64> {
        let (_, page) = get(self.health, "/metrics").await?;
        page.lines()
            .find(|l| l.starts_with("konnectivity_network_proxy_agent_open_server_connections "))?
            .split_whitespace()
            .nth(1)?
            .parse::<f64>()
            .ok()
            .map(|v| v as u64)
    }
}

/// Polls until every agent's health port reports `n` open server
/// connections (the agent adds a server after its headers, so it may lag
/// the server's view by a moment); returns how long it took.
async fn wait_agents_count(servers: &[MkeServer], agents: &[UpstreamAgent], n: u64) -> Duration {
    let start = Instant::now();
    for a in agents {
        loop {
            let got = a.open_server_connections().await;
            if got == Some(n) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{} reports {got:?} open server connections, not {n}\n{}",
                a.id,
                logs(servers, agents)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    start.elapsed()
}

fn logs(servers: &[MkeServer], agents: &[UpstreamAgent]) -> String {
    let mut s = String::new();
    for srv in servers {
        s.push_str(&format!(
            "--- {} log:\n{}\n",
            srv.id,
            tail(&srv.log_text(), 40)
        ));
    }
    for a in agents {
        let text = std::fs::read_to_string(&a.log).unwrap_or_default();
        s.push_str(&format!("--- {} log:\n{}\n", a.id, tail(&text, 40)));
    }
    s
}

/// Polls until every server in `which` has both agents (one stream each);
/// returns how long it took.
async fn wait_mesh(
    servers: &[MkeServer],
    which: &[usize],
    agents: &[UpstreamAgent],
    what: &str,
) -> Duration {
    let start = Instant::now();
    loop {
        let mut all = true;
        for &i in which {
            if !servers[i].has_all_agents().await {
                all = false;
                break;
            }
        }
        if all {
            return start.elapsed();
        }
        if start.elapsed() > MESH_LIMIT {
            let mut state = String::new();
            for &i in which {
                state.push_str(&format!(
                    "{}: {:?}\n",
                    servers[i].id,
                    servers[i].agents().await
                ));
            }
            panic!(
                "timed out after {MESH_LIMIT:?} waiting for {what}:\n{state}{}",
                logs(servers, agents)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `n` tunnels through `server`'s gRPC socket to the target, each a GET.
async fn dial_through(server: &MkeServer, target: SocketAddr, n: usize) {
    let client = tokio::time::timeout(
        Duration::from_secs(10),
        ProxyClient::connect_uds(&server.uds),
    )
    .await
    .expect("frontend connect within 10 s")
    .unwrap_or_else(|e| panic!("{}: {e}", server.id));
    for i in 0..n {
        let mut c = tokio::time::timeout(Duration::from_secs(10), client.dial(&target.to_string()))
            .await
            .unwrap_or_else(|_| panic!("dial {i} through {} timed out", server.id))
            .unwrap_or_else(|e| panic!("dial {i} through {}: {e}", server.id));
        let (status, body) = tokio::time::timeout(
            Duration::from_secs(10),
            http_request(&mut c, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"),
        )
        .await
        .unwrap_or_else(|_| panic!("request {i} through {} timed out", server.id));
        assert_eq!(
            (status.as_str(), body.as_slice()),
            ("HTTP/1.1 200 OK", &b"hello"[..]),
            "through {}",
            server.id
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_agents_behind_one_address_reach_all_three_servers() {
    let Some(bin) = upstream_bins(&["proxy-agent"]) else {
        return;
    };
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let (target, _t) = http_target().await;

    let mut servers: Vec<MkeServer> = (1..=SERVERS)
        .map(|i| MkeServer::new(dir.path(), &format!("mke-{i}")))
        .collect();
    for s in &mut servers {
        s.spawn(&pki);
    }
    let start = Instant::now();
    for s in &servers {
        loop {
            if let Some((500, body)) = get(s.admin, "/readyz").await {
                assert_eq!(body, "no connection to any proxy agent");
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{} not serving within 20 s:\n{}",
                s.id,
                s.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let relay = Relay::start(servers.iter().map(MkeServer::agent_addr).collect()).await;

    let started = Instant::now();
    let agents: Vec<UpstreamAgent> = AGENTS
        .iter()
        .map(|id| spawn_agent(&bin, &pki, dir.path(), id, relay.addr))
        .collect();
    wait_mesh(
        &servers,
        &[0, 1, 2],
        &agents,
        "both agents on all three servers",
    )
    .await;
    let mesh = started.elapsed();
    eprintln!(
        "full mesh (2 upstream agents x 3 servers via one address) after {mesh:?}; relay connections per server: {:?}",
        relay.counts()
    );
    wait_agents_count(&servers, &agents, 3).await;
    // Any server finds an agent: no "No agent available".
    for s in &servers {
        dial_through(s, target, 4).await;
    }

    // SIGKILL one server: the agents drop it and keep working through the
    // other two.
    servers[1].kill().await;
    let dropped = wait_agents_count(&servers, &agents, 2).await;
    eprintln!("agents dropped the killed server after {dropped:?}");
    wait_mesh(&servers, &[0, 2], &agents, "survivors keep both agents").await;
    for i in [0, 2] {
        dial_through(&servers[i], target, 4).await;
    }
    // Some time with the server down: the agents keep retrying through the
    // relay (hitting the dead backend or a duplicate) without disturbing
    // the survivors.
    tokio::time::sleep(Duration::from_secs(2)).await;
    wait_mesh(
        &servers,
        &[0, 2],
        &agents,
        "survivors still have both agents",
    )
    .await;

    // Restart it on the same ports: the agents come back to it.
    let before = relay.counts();
    servers[1].spawn(&pki);
    let restarted = Instant::now();
    let reconnect = wait_mesh(
        &servers,
        &[0, 1, 2],
        &agents,
        "both agents back on the restarted server",
    )
    .await;
    eprintln!(
        "agents reconnected to the restarted server after {reconnect:?} (relay connections per server: {before:?} -> {:?})",
        relay.counts()
    );
    assert!(restarted.elapsed() < MESH_LIMIT);
    wait_agents_count(&servers, &agents, 3).await;
    for s in &servers {
        dial_through(s, target, 4).await;
    }
    // Every tunnel closed on every server.
    for s in &servers {
        let start = Instant::now();
        loop {
            let page = get(s.admin, "/metrics")
                .await
                .map(|(_, p)| p)
                .unwrap_or_default();
            if page.contains("konnectivity_network_proxy_server_established_connections 0")
                && page.contains("konnectivity_network_proxy_server_pending_backend_dials 0")
            {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{} keeps tunnels open:\n{page}",
                s.id
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(servers[1].starts, 2);
    drop(relay);
}
