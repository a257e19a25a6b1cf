//! Test PKI, a small local HTTP target, server/agent launchers and bounded
//! waits for the konnectivity tests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mkectl::konnectivity::{
    Agent, AgentConfig, AgentHandle, AgentIdentity, Server, ServerAddr, ServerConfig, ServerHandle,
    TlsFiles,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Certificates for one test: a konnectivity CA, a server cert (127.0.0.1),
/// an agent client cert, and an agent cert from an unrelated CA.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub server: TlsFiles,
    /// Shared by every test agent (CN `konnectivity-agent`, no node): the
    /// servers of `server_config` take identities from headers for it.
    pub agent: TlsFiles,
    pub foreign_agent: TlsFiles,
    ca_pem: String,
    ca_key_pem: String,
}

impl Pki {
    /// An agent certificate bound to `node` as mkectl's join API issues
    /// one: CN `konnectivity-agent:<node>`, the node's `addresses` as SANs.
    pub fn node_agent(&self, node: &str, addresses: &[&str]) -> TlsFiles {
        let key = KeyPair::from_pem(&self.ca_key_pem).unwrap();
        let issuer = Issuer::from_ca_cert_pem(&self.ca_pem, key).unwrap();
        let (cert, key) = leaf(
            &issuer,
            &format!("konnectivity-agent:{node}"),
            addresses.iter().map(|s| s.to_string()).collect(),
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        let d = self.dir.path();
        TlsFiles {
            cert: write(d, &format!("agent-{node}.crt"), &cert),
            key: write(d, &format!("agent-{node}.key"), &key),
            ca: self.agent.ca.clone(),
        }
    }
}

fn ca(name: &str) -> (CertificateParams, KeyPair, String) {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().unwrap();
    let pem = p.self_signed(&key).unwrap().pem();
    (p, key, pem)
}

fn leaf<S: rcgen::SigningKey>(
    issuer: &Issuer<'_, S>,
    cn: &str,
    sans: Vec<String>,
    eku: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let mut p = CertificateParams::new(sans).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.extended_key_usages = vec![eku];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn write(dir: &Path, name: &str, s: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, s).unwrap();
    p
}

pub fn pki() -> Pki {
    pki_with_server_sans(&[])
}

/// Like [`pki`], with `extra` (IP addresses or DNS names) added to the
/// server certificate's SANs, e.g. a veth address agents dial.
pub fn pki_with_server_sans(extra: &[&str]) -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ca_params, ca_key, ca_pem) = ca("konnectivity-ca");
    let issuer = Issuer::from_params(&ca_params, &ca_key);
    let ca_path = write(d, "ca.crt", &ca_pem);
    let ca_key_pem = ca_key.serialize_pem();
    let (sc, sk) = leaf(
        &issuer,
        "konnectivity-server",
        ["127.0.0.1", "127.0.0.2", "localhost"]
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect(),
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (ac, ak) = leaf(
        &issuer,
        "konnectivity-agent",
        vec!["agent".into()],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let (f_params, f_key, f_pem) = ca("foreign-ca");
    let f_issuer = Issuer::from_params(&f_params, &f_key);
    let (fc, fk) = leaf(
        &f_issuer,
        "konnectivity-agent",
        vec!["agent".into()],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let _ = f_pem;
    Pki {
        server: TlsFiles {
            cert: write(d, "server.crt", &sc),
            key: write(d, "server.key", &sk),
            ca: ca_path.clone(),
        },
        agent: TlsFiles {
            cert: write(d, "agent.crt", &ac),
            key: write(d, "agent.key", &ak),
            ca: ca_path.clone(),
        },
        // Trusts the right server CA but presents a certificate the server
        // must refuse.
        foreign_agent: TlsFiles {
            cert: write(d, "foreign.crt", &fc),
            key: write(d, "foreign.key", &fk),
            ca: ca_path,
        },
        ca_pem,
        ca_key_pem,
        dir,
    }
}

/// Polls `cond` every 10 ms until it holds or `limit` passes.
pub async fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A server with gRPC and HTTP-CONNECT frontends on sockets in `dir`.
pub struct TestServer {
    pub handle: ServerHandle,
    pub token: CancellationToken,
    pub grpc_uds: PathBuf,
    pub http_uds: PathBuf,
}

/// Agents share [`Pki::agent`] and name themselves (`agent-<uuid>`,
/// `host=127.0.0.1`), so identities come from their headers here;
/// certificate-bound identities are tested in `konnectivity_identity.rs`.
pub fn server_config(pki: &Pki, dir: &Path, id: &str, agent_listen: SocketAddr) -> ServerConfig {
    let mut cfg = ServerConfig::new(id, agent_listen, pki.server.clone());
    cfg.agent_identity = AgentIdentity::Headers;
    cfg.grpc_uds = Some(dir.join(format!("{id}-grpc.sock")));
    cfg.http_connect_uds = Some(dir.join(format!("{id}-http.sock")));
    cfg.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    cfg
}

pub async fn start_server_with(cfg: ServerConfig) -> TestServer {
    let token = CancellationToken::new();
    let grpc_uds = cfg.grpc_uds.clone().unwrap();
    let http_uds = cfg.http_connect_uds.clone().unwrap();
    let handle = Server::start(cfg, token.clone())
        .await
        .expect("server starts");
    TestServer {
        handle,
        token,
        grpc_uds,
        http_uds,
    }
}

pub async fn start_server(pki: &Pki, dir: &Path, id: &str) -> TestServer {
    start_server_with(server_config(pki, dir, id, "127.0.0.1:0".parse().unwrap())).await
}

pub struct TestAgent {
    pub handle: AgentHandle,
    pub token: CancellationToken,
    pub servers: watch::Sender<Vec<ServerAddr>>,
}

pub fn agent_config(
    tls: &TlsFiles,
    servers: &[SocketAddr],
) -> (AgentConfig, watch::Sender<Vec<ServerAddr>>) {
    let list = servers
        .iter()
        .map(|a| ServerAddr {
            host: a.ip().to_string(),
            port: a.port(),
        })
        .collect();
    let (tx, rx) = watch::channel(list);
    let mut cfg = AgentConfig::new(rx, tls.clone(), format!("agent-{}", uuid::Uuid::new_v4()));
    cfg.identifiers = "host=127.0.0.1".into();
    cfg.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    (cfg, tx)
}

pub async fn start_agent(tls: &TlsFiles, servers: &[SocketAddr]) -> TestAgent {
    start_agent_with_identifiers(tls, servers, "host=127.0.0.1").await
}

/// [`start_agent`] announcing `identifiers` instead of `host=127.0.0.1`.
pub async fn start_agent_with_identifiers(
    tls: &TlsFiles,
    servers: &[SocketAddr],
    identifiers: &str,
) -> TestAgent {
    let (mut cfg, tx) = agent_config(tls, servers);
    cfg.identifiers = identifiers.to_string();
    let token = CancellationToken::new();
    let handle = Agent::start(cfg, token.clone())
        .await
        .expect("agent starts");
    TestAgent {
        handle,
        token,
        servers: tx,
    }
}

/// Server + one connected agent.
pub async fn stack(pki: &Pki, dir: &Path) -> (TestServer, TestAgent) {
    let s = start_server(pki, dir, "s1").await;
    let a = start_agent(&pki.agent, &[s.handle.agent_addr()]).await;
    let h = &s.handle;
    wait_until(Duration::from_secs(10), "agent connected", || {
        h.ready_backends() == 1
    })
    .await;
    (s, a)
}

/// Asserts every leak counter of the server and agent returns to zero.
pub async fn assert_no_leaks(s: &ServerHandle, a: Option<&AgentHandle>) {
    wait_until(Duration::from_secs(10), "server tunnels released", || {
        let st = s.stats();
        st.pending_dials == 0 && st.established == 0 && st.frontends == 0 && st.http_connections == 0
            && st.grpc_frontend_streams == 0
            // Only the agent stream readers remain.
            && st.tunnel_tasks == st.backends as i64
    })
    .await;
    if let Some(a) = a {
        wait_until(
            Duration::from_secs(10),
            "agent connections released",
            || {
                // One reader task per connected server remains.
                a.open_endpoint_connections() == 0
                    && a.tasks() == a.connected_servers().len() as i64
            },
        )
        .await;
    }
}

/// Deterministic bytes (xorshift) for transfer tests.
pub fn fill(seed: u64, buf: &mut [u8]) {
    let mut x = seed | 1;
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

/// Generates `len` deterministic bytes in 1 MiB pieces, feeding a hasher.
pub struct Gen {
    seed: u64,
    pub remaining: usize,
}

impl Gen {
    pub fn new(seed: u64, len: usize) -> Self {
        Gen {
            seed,
            remaining: len,
        }
    }
    pub fn next_chunk(&mut self) -> Option<Vec<u8>> {
        if self.remaining == 0 {
            return None;
        }
        let n = self.remaining.min(1 << 20);
        let mut v = vec![0u8; n];
        fill(self.seed, &mut v);
        self.seed = self
            .seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.remaining -= n;
        Some(v)
    }
}

/// A minimal HTTP/1.1 target on 127.0.0.1:
/// * `GET /hello` → `hello`
/// * `GET /download/<n>/<seed>` → n deterministic bytes ([`Gen`])
/// * `POST /upload` (Content-Length) → hex SHA-256 of the body
/// * `GET /stream` → endless data (for stall tests)
///
/// One request per connection (`Connection: close`).
pub async fn http_target() -> (SocketAddr, CancellationToken) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    (addr, http_target_on(l))
}

/// Serves the [`http_target`] endpoints on an already bound listener (e.g.
/// one bound inside a test network namespace); cancel the token to stop.
pub fn http_target_on(l: TcpListener) -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        loop {
            let (sock, _) = tokio::select! {
                _ = t.cancelled() => return,
                r = l.accept() => match r { Ok(v) => v, Err(_) => continue },
            };
            let t2 = t.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = t2.cancelled() => {}
                    _ = serve_http(sock) => {}
                }
            });
        }
    });
    token
}

async fn serve_http(sock: tokio::net::TcpStream) -> std::io::Result<()> {
    let (rd, mut wr) = sock.into_split();
    let mut rd = BufReader::new(rd);
    let mut line = String::new();
    rd.read_line(&mut line).await?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let mut content_length = 0usize;
    loop {
        let mut h = String::new();
        if rd.read_line(&mut h).await? == 0 || h == "\r\n" {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
            content_length = v.trim().parse().unwrap_or(0);
        }
    }
    let head = |len: usize| {
        format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n")
    };
    match (method.as_str(), path.as_str()) {
        ("GET", "/hello") => {
            wr.write_all(format!("{}hello", head(5)).as_bytes()).await?;
        }
        ("GET", p) if p.starts_with("/download/") => {
            let mut it = p.trim_start_matches("/download/").split('/');
            let n: usize = it.next().unwrap_or("0").parse().unwrap_or(0);
            let seed: u64 = it.next().unwrap_or("1").parse().unwrap_or(1);
            wr.write_all(head(n).as_bytes()).await?;
            let mut g = Gen::new(seed, n);
            while let Some(c) = g.next_chunk() {
                wr.write_all(&c).await?;
            }
        }
        ("POST", "/upload") => {
            let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
            let mut left = content_length;
            let mut buf = vec![0u8; 64 * 1024];
            while left > 0 {
                let n = rd.read(&mut buf[..left.min(64 * 1024)]).await?;
                if n == 0 {
                    break;
                }
                ctx.update(&buf[..n]);
                left -= n;
            }
            let hexd = hex::encode(ctx.finish().as_ref());
            wr.write_all(format!("{}{hexd}", head(hexd.len())).as_bytes())
                .await?;
        }
        ("GET", "/stream") => {
            wr.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
                .await?;
            let buf = vec![7u8; 64 * 1024];
            loop {
                wr.write_all(&buf).await?;
            }
        }
        _ => {
            wr.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )
            .await?;
        }
    }
    wr.shutdown().await?;
    Ok(())
}

/// Sends one HTTP request over any byte stream and returns (status line,
/// body) once the server closes.
pub async fn http_request<S>(s: &mut S, req: &str) -> (String, Vec<u8>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.lines().next().unwrap_or("").to_string();
    let body = match out.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => out[i + 4..].to_vec(),
        None => Vec::new(),
    };
    (status, body)
}

/// Reads an HTTP response head, then exactly Content-Length bytes, hashing
/// the body; returns (status line, body length, sha256 hex).
pub async fn read_response_hashed<S>(s: &mut S) -> (String, usize, String)
where
    S: tokio::io::AsyncRead + Unpin,
{
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut b).await.unwrap();
        assert!(
            n == 1,
            "EOF inside response head: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(b[0]);
    }
    let text = String::from_utf8_lossy(&head).to_string();
    let status = text.lines().next().unwrap_or("").to_string();
    let len: usize = text
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut left = len;
    let mut buf = vec![0u8; 256 * 1024];
    while left > 0 {
        let n = s.read(&mut buf[..left.min(256 * 1024)]).await.unwrap();
        assert!(n > 0, "EOF with {left} body bytes missing");
        ctx.update(&buf[..n]);
        left -= n;
    }
    (status, len, hex::encode(ctx.finish().as_ref()))
}

/// SHA-256 of the bytes `/download/<len>/<seed>` serves.
pub fn expected_download_sha(len: usize, seed: u64) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut g = Gen::new(seed, len);
    while let Some(c) = g.next_chunk() {
        ctx.update(&c);
    }
    hex::encode(ctx.finish().as_ref())
}

/// `GET path` on a plain-HTTP admin port; returns (status code, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (status, body) = http_request(
        &mut s,
        &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    )
    .await;
    let code = status
        .split_whitespace()
        .nth(1)
        .unwrap_or("0")
        .parse()
        .unwrap_or(0);
    (code, String::from_utf8_lossy(&body).to_string())
}
