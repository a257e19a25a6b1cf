//! Interop matrix (issue 14): mkectl's konnectivity server and agent against
//! the real upstream peers, with real binaries only (kube-apiserver v1.32.8,
//! apiserver-network-proxy `proxy-server`/`proxy-agent`, mkectl's own
//! `konnectivity server|agent` processes).
//!
//! | row | frontend | server | agent |
//! |-----|----------|--------|-------|
//! | 1 | kube-apiserver (egress selector, gRPC over UDS) | mkectl | mkectl |
//! | 2 | kube-apiserver | mkectl | upstream `proxy-agent` |
//! | 3 | kube-apiserver | upstream `proxy-server` | mkectl |
//! | 4 | this test's HTTP-CONNECT client | mkectl `--mode http-connect` | upstream `proxy-agent` |
//! | 1e | kube-apiserver | mkectl, embedded in `mkectl controller` | mkectl |
//!
//! Every row checks, in order:
//! (a) 64 MiB each way with equal SHA-256 (apiserver rows: through the node
//!     proxy, `GET` a 64 MiB body and `POST` 64 MiB that the target hashes);
//! (b) 100 tunnels open at once, all answering;
//! (c) a dial to a port nobody listens on: the agent's dial error reaches
//!     the client;
//! (d) the agent SIGKILLed mid-transfer: the client's transfer ends within
//!     10 s and the server's gauges show no tunnel left;
//! (e) the server restarted: the agent is connected again within 2 s of the
//!     new server answering `/healthz`.
//!
//! Network safety: every row runs in a network namespace of its own
//! ([`Netns`]: unique name, only `lo`, no default route, deleted on drop).
//! The apiserver rows put documentation addresses (192.0.2.x) on that
//! namespace's `lo`, because kube-apiserver refuses to proxy to loopback
//! node addresses; row 4 uses that namespace's 127.0.0.1. Sockets this test
//! opens to those addresses are created inside the namespace
//! ([`Netns::enter`]); the HTTP-CONNECT client uses a unix socket. Since
//! each namespace is private, the konnectivity processes get fixed ports
//! there (upstream `proxy-server` refuses ports above 49151, where the
//! kernel's free ports usually are).
//!
//! Rows 1–3 run the controller with its embedded konnectivity server
//! disabled and start the server under test as its own process on the unix
//! socket the generated egress selector file names, with the controller's
//! konnectivity PKI: that is what lets the upstream server take its place,
//! and lets (e) restart the server without restarting the apiserver.
//! `mkectl konnectivity server` runs the same server code as the embedded
//! one; row 1e runs the embedded server itself, restarted in (e) by
//! restarting its controller.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::konnectivity::{expected_download_sha, Gen};
use common::netns::{Netns, NsChild};
use common::upstream::upstream_bins;
use common::{signal, Node, MKECTL};
use mkectl::pki::{self, Ca, KeyType};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::watch;

const MIB: usize = 1 << 20;
/// Bytes moved each way in scenario (a).
const BIG: usize = 64 * MIB;
/// Tunnels open at once in scenario (b).
const TUNNELS: usize = 100;

/// The controller's node address (TEST-NET-1, on the row namespace's `lo`).
const NODE_IP: &str = "192.0.2.10";
/// Where the apiserver rows' "kubelet" (the test target) listens.
const TARGET_IP: &str = "192.0.2.20";

// Fixed ports inside each row's private namespace.
const AGENT_PORT: u16 = 8132;
/// Server `/metrics` (both implementations) and `/healthz` (mkectl).
const SERVER_ADMIN_PORT: u16 = 8133;
/// Upstream server `/healthz`.
const SERVER_HEALTH_PORT: u16 = 8134;
/// mkectl agent admin (`/metrics`); upstream agent admin (redirects).
const AGENT_ADMIN_PORT: u16 = 8135;
/// Upstream agent health (`/healthz`, `/metrics`).
const AGENT_HEALTH_PORT: u16 = 8136;

/// Bound for a client to see its tunnel end once the agent is killed.
const CLOSE_BOUND: Duration = Duration::from_secs(10);
/// Bound from the restarted server answering to the agent being connected.
const RECONNECT_BOUND: Duration = Duration::from_secs(2);

const M: &str = "konnectivity_network_proxy_server";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Impl {
    Mkectl,
    Upstream,
}

// ---------------------------------------------------------------------------
// HTTP/1.1 framing shared by the target and the clients.

enum Framing {
    Length(u64),
    Chunked,
    ToEof,
}

/// How a body ended.
#[derive(Debug)]
enum End {
    /// Every byte its framing announced.
    Complete,
    /// The peer closed early.
    Eof,
    Error(std::io::Error),
}

fn framing(head: &str, default: Framing) -> Framing {
    let mut f = default;
    for l in head.lines().skip(1) {
        let l = l.to_ascii_lowercase();
        if let Some(v) = l.strip_prefix("content-length:") {
            f = Framing::Length(v.trim().parse().unwrap_or(0));
        } else if let Some(v) = l.strip_prefix("transfer-encoding:") {
            if v.contains("chunked") {
                return Framing::Chunked;
            }
        }
    }
    f
}

/// Reads a request or response head (up to the blank line).
async fn read_head<S: AsyncRead + Unpin>(r: &mut BufReader<S>) -> std::io::Result<String> {
    let mut head = String::new();
    loop {
        let mut l = String::new();
        if r.read_line(&mut l).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let blank = l == "\r\n" || l == "\n";
        head.push_str(&l);
        if blank && head.len() > l.len() {
            return Ok(head);
        }
        if head.len() > 64 * 1024 {
            return Err(std::io::Error::other("head too long"));
        }
    }
}

/// Reads a body framed as `f`, handing every piece to `sink`; returns the
/// byte count and how it ended.
async fn read_body<S: AsyncRead + Unpin>(
    r: &mut BufReader<S>,
    f: Framing,
    mut sink: impl FnMut(&[u8]),
) -> (u64, End) {
    let mut n = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    match f {
        Framing::Length(len) => {
            let mut left = len;
            while left > 0 {
                let want = (left as usize).min(buf.len());
                match r.read(&mut buf[..want]).await {
                    Ok(0) => return (n, End::Eof),
                    Ok(k) => {
                        sink(&buf[..k]);
                        n += k as u64;
                        left -= k as u64;
                    }
                    Err(e) => return (n, End::Error(e)),
                }
            }
            (n, End::Complete)
        }
        Framing::ToEof => loop {
            match r.read(&mut buf).await {
                Ok(0) => return (n, End::Complete),
                Ok(k) => {
                    sink(&buf[..k]);
                    n += k as u64;
                }
                Err(e) => return (n, End::Error(e)),
            }
        },
        Framing::Chunked => loop {
            let mut l = String::new();
            match r.read_line(&mut l).await {
                Ok(0) => return (n, End::Eof),
                Ok(_) => {}
                Err(e) => return (n, End::Error(e)),
            }
            let size = l.trim().split(';').next().unwrap_or("");
            let Ok(mut left) = u64::from_str_radix(size, 16) else {
                return (
                    n,
                    End::Error(std::io::Error::other(format!("chunk size {l:?}"))),
                );
            };
            if left == 0 {
                // Trailers up to the blank line.
                loop {
                    let mut t = String::new();
                    match r.read_line(&mut t).await {
                        Ok(0) => return (n, End::Eof),
                        Ok(_) if t == "\r\n" || t == "\n" => return (n, End::Complete),
                        Ok(_) => {}
                        Err(e) => return (n, End::Error(e)),
                    }
                }
            }
            while left > 0 {
                let want = (left as usize).min(buf.len());
                match r.read(&mut buf[..want]).await {
                    Ok(0) => return (n, End::Eof),
                    Ok(k) => {
                        sink(&buf[..k]);
                        n += k as u64;
                        left -= k as u64;
                    }
                    Err(e) => return (n, End::Error(e)),
                }
            }
            let mut crlf = String::new();
            match r.read_line(&mut crlf).await {
                Ok(0) => return (n, End::Eof),
                Ok(_) => {}
                Err(e) => return (n, End::Error(e)),
            }
        },
    }
}

fn status_code(head: &str) -> u16 {
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// A whole response with a small body.
struct Reply {
    code: u16,
    head: String,
    body: Vec<u8>,
}

impl Reply {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Writes `req` (a full head) and reads the reply, keeping the body.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut BufReader<S>,
    req: &str,
) -> std::io::Result<Reply> {
    s.write_all(req.as_bytes()).await?;
    s.flush().await?;
    let head = read_head(s).await?;
    let mut body = Vec::new();
    let (_, end) = read_body(s, framing(&head, Framing::ToEof), |b| {
        body.extend_from_slice(b)
    })
    .await;
    if let End::Error(e) = end {
        return Err(e);
    }
    Ok(Reply {
        code: status_code(&head),
        head,
        body,
    })
}

/// Sends `len` bytes of [`Gen`] `seed` as the body of `method path` and
/// returns (reply, SHA-256 of what was sent).
async fn upload<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut BufReader<S>,
    method: &str,
    path: &str,
    host: &str,
    len: usize,
    seed: u64,
) -> (Reply, String) {
    s.write_all(
        format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut g = Gen::new(seed, len);
    while let Some(c) = g.next_chunk() {
        ctx.update(&c);
        s.write_all(&c).await.unwrap();
    }
    s.flush().await.unwrap();
    let head = read_head(s).await.unwrap();
    let mut body = Vec::new();
    let (_, end) = read_body(s, framing(&head, Framing::ToEof), |b| {
        body.extend_from_slice(b)
    })
    .await;
    assert!(matches!(end, End::Complete), "upload reply: {end:?}");
    (
        Reply {
            code: status_code(&head),
            head,
            body,
        },
        hex::encode(ctx.finish().as_ref()),
    )
}

/// `GET path`, hashing the body: (code, body length, SHA-256, how it ended).
async fn download<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut BufReader<S>,
    path: &str,
    host: &str,
) -> (u16, u64, String, End) {
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    s.flush().await.unwrap();
    let head = read_head(s).await.unwrap();
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let (n, end) = read_body(s, framing(&head, Framing::ToEof), |b| ctx.update(b)).await;
    (
        status_code(&head),
        n,
        hex::encode(ctx.finish().as_ref()),
        end,
    )
}

// ---------------------------------------------------------------------------
// The target: what the agent dials (the apiserver rows' "kubelet").

/// `/barrier/<i>` requests wait here until the test releases them.
struct Target {
    arrived: AtomicUsize,
    release: watch::Sender<bool>,
}

impl Target {
    fn new() -> Arc<Target> {
        Arc::new(Target {
            arrived: AtomicUsize::new(0),
            release: watch::channel(false).0,
        })
    }
}

/// One request per connection (`Connection: close`):
/// * `GET /hello` → `hello`
/// * `GET /download/<n>/<seed>` → n bytes of [`Gen`] `seed`
/// * `GET /zeros/<n>` → n constant bytes (cheap; for kill tests)
/// * `POST|PUT /upload` (Content-Length or chunked) → hex SHA-256 of the body
/// * `GET /barrier/<i>` → waits (≤ 60 s) for the test's release, then `released <i>`
async fn serve_target<S: AsyncRead + AsyncWrite + Unpin>(
    s: S,
    st: Arc<Target>,
) -> std::io::Result<()> {
    let mut s = BufReader::new(s);
    let head = read_head(&mut s).await?;
    let mut first = head.split_whitespace();
    let method = first.next().unwrap_or("").to_string();
    let path = first.next().unwrap_or("").to_string();
    let ok = |len: usize| {
        format!("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n")
    };
    let reply = |code: &str, body: &str| {
        format!(
            "HTTP/1.1 {code}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let num = |p: &str, prefix: &str, i: usize| -> u64 {
        p.trim_start_matches(prefix)
            .split('/')
            .nth(i)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    match (method.as_str(), path.as_str()) {
        ("GET", "/hello") => s.write_all(reply("200 OK", "hello").as_bytes()).await?,
        ("GET", p) if p.starts_with("/download/") => {
            let n = num(p, "/download/", 0) as usize;
            let seed = num(p, "/download/", 1);
            s.write_all(ok(n).as_bytes()).await?;
            let mut g = Gen::new(seed, n);
            while let Some(c) = g.next_chunk() {
                s.write_all(&c).await?;
            }
        }
        ("GET", p) if p.starts_with("/zeros/") => {
            let mut left = num(p, "/zeros/", 0) as usize;
            s.write_all(ok(left).as_bytes()).await?;
            let buf = vec![0x5au8; 256 * 1024];
            while left > 0 {
                let k = left.min(buf.len());
                s.write_all(&buf[..k]).await?;
                left -= k;
            }
        }
        ("POST" | "PUT", "/upload") => {
            let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
            let (_, end) = read_body(&mut s, framing(&head, Framing::Length(0)), |b| {
                ctx.update(b)
            })
            .await;
            if !matches!(end, End::Complete) {
                return Err(std::io::Error::other(format!("upload body: {end:?}")));
            }
            let hexd = hex::encode(ctx.finish().as_ref());
            s.write_all(reply("200 OK", &hexd).as_bytes()).await?;
        }
        ("GET", p) if p.starts_with("/barrier/") => {
            let i = num(p, "/barrier/", 0);
            st.arrived.fetch_add(1, Ordering::SeqCst);
            let mut rx = st.release.subscribe();
            let released = tokio::time::timeout(Duration::from_secs(60), rx.wait_for(|r| *r))
                .await
                .is_ok_and(|r| r.is_ok());
            let r = if released {
                reply("200 OK", &format!("released {i}"))
            } else {
                reply("503 Service Unavailable", "barrier timeout")
            };
            s.write_all(r.as_bytes()).await?;
        }
        _ => s.write_all(reply("404 Not Found", "").as_bytes()).await?,
    }
    s.flush().await?;
    s.shutdown().await
}

/// Serves [`serve_target`] on `l` (bound inside a row namespace), over TLS
/// when `tls` is given.
fn spawn_target(
    rt: &tokio::runtime::Runtime,
    l: std::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    st: Arc<Target>,
) {
    l.set_nonblocking(true).unwrap();
    let _guard = rt.enter();
    let l = tokio::net::TcpListener::from_std(l).unwrap();
    rt.spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let st = st.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let _ = match tls {
                    Some(a) => match a.accept(tcp).await {
                        Ok(t) => serve_target(t, st).await,
                        Err(_) => return,
                    },
                    None => serve_target(tcp, st).await,
                };
            });
        }
    });
}

// ---------------------------------------------------------------------------
// Namespaced plumbing: sockets, admin pages, metrics.

/// A TCP connection made from inside `ns`.
fn connect_in(ns: &Netns, addr: SocketAddr) -> std::io::Result<std::net::TcpStream> {
    ns.enter(|| std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)))
}

/// `GET path` on 127.0.0.1:`port` inside `ns` (plain HTTP); None when
/// nothing answers.
fn ns_get(ns: &Netns, port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = connect_in(ns, SocketAddr::from(([127, 0, 0, 1], port))).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    Some((status_code(head), body.to_string()))
}

/// Sum of the samples of `name` whose labels contain each of `labels`;
/// None when the page has no such sample.
fn metric(page: &str, name: &str, labels: &[&str]) -> Option<f64> {
    let mut found = None;
    for l in page.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = l.rsplit_once(' ') else {
            continue;
        };
        let (n, lab) = series.split_once('{').unwrap_or((series, ""));
        if n == name && labels.iter().all(|x| lab.contains(x)) {
            if let Ok(v) = value.parse::<f64>() {
                *found.get_or_insert(0.0) += v;
            }
        }
    }
    found
}

/// On a failing test, prints the tail of every `*.log` in `dirs` (the
/// controller's and each konnectivity process's) before they are deleted.
struct PanicLogs(Vec<PathBuf>);

impl Drop for PanicLogs {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for dir in &self.0 {
            eprint!("{}", common::log_tails(dir, 60));
        }
    }
}

/// Bound for one client step (a 64 MiB transfer, 100 tunnels, one request).
const STEP: Duration = Duration::from_secs(120);

/// Runs `f`, panicking with `what` if it takes longer than `limit`.
async fn within<T>(limit: Duration, what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no result within {limit:?}"))
}

/// Polls `f` every 10 ms until it returns Some or `limit` passes.
fn poll<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out after {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A konnectivity process (server or agent) in a row namespace, restartable
/// with the same command line; every start logs to a file of its own.
struct Proc {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    log_dir: PathBuf,
    starts: usize,
    child: Option<NsChild>,
}

impl Proc {
    fn start(ns: &Netns, name: &str, program: &Path, args: Vec<String>, log_dir: &Path) -> Proc {
        let mut p = Proc {
            name: name.into(),
            program: program.into(),
            args,
            log_dir: log_dir.into(),
            starts: 0,
            child: None,
        };
        p.spawn(ns);
        p
    }

    fn spawn(&mut self, ns: &Netns) {
        let log = self
            .log_dir
            .join(format!("{}-{}.log", self.name, self.starts));
        self.starts += 1;
        self.child = Some(ns.spawn(&log, &self.program, &self.args));
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").pid()
    }

    /// Sends `sig` and waits (bounded) for the exit.
    fn stop(&mut self, sig: i32) {
        let mut c = self.child.take().expect("running");
        c.stop(sig, Duration::from_secs(15));
    }

    /// Every log this process wrote so far, for failure messages.
    fn logs(&self) -> String {
        let mut out = String::new();
        for i in 0..self.starts {
            let p = self.log_dir.join(format!("{}-{i}.log", self.name));
            let t = std::fs::read_to_string(&p).unwrap_or_default();
            let tail: Vec<&str> = t.lines().rev().take(40).collect();
            out.push_str(&format!("--- {} (last 40 lines)\n", p.display()));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

/// The konnectivity server under test and what it needs to be probed.
struct KServer {
    kind: Impl,
    /// Serves `/metrics`.
    admin_port: u16,
    /// Serves `/healthz`.
    health_port: u16,
    /// None for the server embedded in `mkectl controller`.
    proc: Option<Proc>,
}

impl KServer {
    /// A server process: `mode` is `grpc` or `http-connect`, the frontend
    /// is the unix socket `uds`, agents connect with `tls` (cert, key, CA
    /// for their certificates).
    fn start(
        ns: &Netns,
        kind: Impl,
        bin: &Path,
        mode: &str,
        uds: &Path,
        tls: [&Path; 3],
        dir: &Path,
    ) -> KServer {
        let s = |v: &str| v.to_string();
        let p = |v: &Path| v.to_str().unwrap().to_string();
        let mut args = vec![
            s("--mode"),
            s(mode),
            s("--uds-name"),
            p(uds),
            s("--agent-port"),
            AGENT_PORT.to_string(),
            s("--admin-port"),
            SERVER_ADMIN_PORT.to_string(),
            s("--cluster-cert"),
            p(tls[0]),
            s("--cluster-key"),
            p(tls[1]),
            s("--cluster-ca-cert"),
            p(tls[2]),
            s("--server-count"),
            s("1"),
            s("--server-id"),
            format!("interop-{kind:?}-server").to_lowercase(),
        ];
        let (program, health_port) = match kind {
            Impl::Mkectl => {
                let run = dir.join("mkectl-server-run");
                std::fs::create_dir_all(&run).unwrap();
                let mut a = vec![
                    s("--data-dir"),
                    p(&run),
                    s("--run-dir"),
                    p(&run),
                    s("konnectivity"),
                    s("server"),
                ];
                a.append(&mut args);
                args = a;
                (PathBuf::from(MKECTL), SERVER_ADMIN_PORT)
            }
            Impl::Upstream => {
                args.extend([
                    s("--server-port"),
                    s("0"),
                    s("--health-port"),
                    SERVER_HEALTH_PORT.to_string(),
                ]);
                (bin.join("proxy-server"), SERVER_HEALTH_PORT)
            }
        };
        let name = format!("{kind:?}-server").to_lowercase();
        KServer {
            kind,
            admin_port: SERVER_ADMIN_PORT,
            health_port,
            proc: Some(Proc::start(ns, &name, &program, args, dir)),
        }
    }

    /// The server embedded in the controller of `node`.
    fn embedded(node: &Node) -> KServer {
        KServer {
            kind: Impl::Mkectl,
            admin_port: node.konnectivity_admin_port,
            health_port: node.konnectivity_admin_port,
            proc: None,
        }
    }

    fn logs(&self) -> String {
        match &self.proc {
            Some(p) => p.logs(),
            None => "(embedded server: see the controller log)".into(),
        }
    }

    fn healthy(&self, ns: &Netns) -> bool {
        ns_get(ns, self.health_port, "/healthz").is_some_and(|(c, _)| c == 200)
    }

    fn page(&self, ns: &Netns) -> Option<String> {
        ns_get(ns, self.admin_port, "/metrics")
            .filter(|(c, _)| *c == 200)
            .map(|(_, b)| b)
    }

    /// Connected agent streams: mkectl's `ready_backends{proxy_strategy}`;
    /// upstream v0.33 only exports `ready_backend_connections`.
    fn ready_backends(&self, ns: &Netns) -> Option<f64> {
        let page = self.page(ns)?;
        Some(match self.kind {
            Impl::Mkectl => metric(
                &page,
                &format!("{M}_ready_backends"),
                &["proxy_strategy=\"default\""],
            )
            .unwrap_or(0.0),
            Impl::Upstream => {
                metric(&page, &format!("{M}_ready_backend_connections"), &[]).unwrap_or(0.0)
            }
        })
    }

    fn wait_backends(&self, ns: &Netns, n: f64, limit: Duration) {
        poll(
            &format!("{n} agent(s) connected to the {:?} server", self.kind),
            limit,
            || (self.ready_backends(ns) == Some(n)).then_some(()),
        );
    }

    fn counter(&self, ns: &Netns, name: &str, labels: &[&str]) -> f64 {
        let page = self.page(ns).expect("server metrics");
        metric(&page, &format!("{M}_{name}"), labels).unwrap_or(0.0)
    }

    /// Tunnel gauges that must return to zero once no client is left. A
    /// gauge never set is absent upstream: zero.
    fn leak_gauges(&self, ns: &Netns) -> Vec<(String, f64)> {
        let page = self.page(ns).unwrap_or_default();
        [
            ("established_connections", &[][..]),
            ("pending_backend_dials", &[][..]),
            ("grpc_connections", &["service_method=\"Proxy\""][..]),
            ("http_connections", &[][..]),
        ]
        .iter()
        .map(|(n, l)| {
            (
                n.to_string(),
                metric(&page, &format!("{M}_{n}"), l).unwrap_or(0.0),
            )
        })
        .collect()
    }

    fn assert_no_leaks(&self, ns: &Netns, what: &str) {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let g = self.leak_gauges(ns);
            if g.iter().all(|(_, v)| *v == 0.0) {
                return;
            }
            assert!(
                Instant::now() < end,
                "{what}: the {:?} server still holds tunnels after 10 s: {g:?}\n{}",
                self.kind,
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// (e) for a server process: SIGTERM, start again, measure (see
    /// [`KServer::measure_reconnect`]).
    fn restart_and_measure(&mut self, ns: &Netns) -> (Duration, Duration) {
        let proc = self.proc.as_mut().expect("a server process");
        proc.stop(libc::SIGTERM);
        let stopped = Instant::now();
        proc.spawn(ns);
        self.measure_reconnect(ns, stopped)
    }

    /// After a restart begun at `stopped`: waits for `/healthz` 200, then
    /// for the agent connected. Returns (downtime, time from healthy to
    /// connected).
    fn measure_reconnect(&self, ns: &Netns, stopped: Instant) -> (Duration, Duration) {
        let t_ready = poll("restarted server healthy", Duration::from_secs(60), || {
            self.healthy(ns).then(Instant::now)
        });
        let t_conn = poll(
            "agent reconnected after the server restart",
            Duration::from_secs(30),
            || (self.ready_backends(ns) == Some(1.0)).then(Instant::now),
        );
        (t_ready - stopped, t_conn.saturating_duration_since(t_ready))
    }
}

/// The konnectivity agent under test.
struct KAgent {
    kind: Impl,
    proc: Proc,
}

impl KAgent {
    /// Connects to `server` with `tls` (cert, key, CA of the server's
    /// certificate), plus `extra` flags. Without them both kinds reconnect
    /// with the same defaults: sync interval 1 s, backoff ×1.5 with 10 %
    /// jitter, capped at 10 s.
    fn start(
        ns: &Netns,
        kind: Impl,
        bin: &Path,
        server: SocketAddr,
        tls: [&Path; 3],
        extra: &[&str],
        dir: &Path,
    ) -> KAgent {
        let s = |v: &str| v.to_string();
        let p = |v: &Path| v.to_str().unwrap().to_string();
        let mut args = vec![
            s("--proxy-server-host"),
            server.ip().to_string(),
            s("--proxy-server-port"),
            server.port().to_string(),
            s("--ca-cert"),
            p(tls[2]),
            s("--agent-cert"),
            p(tls[0]),
            s("--agent-key"),
            p(tls[1]),
            s("--agent-id"),
            format!("interop-{kind:?}-agent").to_lowercase(),
        ];
        let program = match kind {
            Impl::Mkectl => {
                let run = dir.join("mkectl-agent-run");
                std::fs::create_dir_all(&run).unwrap();
                let mut a = vec![
                    s("--data-dir"),
                    p(&run),
                    s("--run-dir"),
                    p(&run),
                    s("konnectivity"),
                    s("agent"),
                ];
                a.append(&mut args);
                a.extend([s("--admin-port"), AGENT_ADMIN_PORT.to_string()]);
                args = a;
                PathBuf::from(MKECTL)
            }
            Impl::Upstream => {
                args.extend([
                    s("--admin-server-port"),
                    AGENT_ADMIN_PORT.to_string(),
                    s("--health-server-port"),
                    AGENT_HEALTH_PORT.to_string(),
                ]);
                bin.join("proxy-agent")
            }
        };
        args.extend(extra.iter().map(|a| a.to_string()));
        let name = format!("{kind:?}-agent").to_lowercase();
        KAgent {
            kind,
            proc: Proc::start(ns, &name, &program, args, dir),
        }
    }

    /// Open connections to endpoints, from the agent's own metrics.
    fn open_endpoints(&self, ns: &Netns) -> Option<f64> {
        let port = match self.kind {
            Impl::Mkectl => AGENT_ADMIN_PORT,
            Impl::Upstream => AGENT_HEALTH_PORT,
        };
        let (code, page) = ns_get(ns, port, "/metrics")?;
        (code == 200).then_some(())?;
        metric(
            &page,
            "konnectivity_network_proxy_agent_open_endpoint_connections",
            &[],
        )
    }

    fn assert_no_leaks(&self, ns: &Netns, what: &str) {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let open = self.open_endpoints(ns);
            if open == Some(0.0) {
                return;
            }
            assert!(
                Instant::now() < end,
                "{what}: the {:?} agent still has endpoint connections after 10 s: {open:?}\n{}",
                self.kind,
                self.proc.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

// ---------------------------------------------------------------------------
// A client of kube-apiserver with the admin certificate, from inside a row
// namespace.

#[derive(Clone)]
struct Api {
    addr: SocketAddr,
    host: String,
    tls: tokio_rustls::TlsConnector,
}

type ApiConn = BufReader<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

impl Api {
    /// HTTP/1.1 only (ALPN), so bodies stream as plain bytes.
    fn new(node: &Node) -> Api {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(node.pki("ca.crt")).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let certs: Vec<_> = CertificateDer::pem_file_iter(node.pki("admin.crt"))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(node.pki("admin.key")).unwrap();
        let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .unwrap();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let addr = SocketAddr::new(NODE_IP.parse().unwrap(), node.api_port);
        Api {
            addr,
            host: addr.to_string(),
            tls: tokio_rustls::TlsConnector::from(Arc::new(cfg)),
        }
    }

    /// TLS over a socket made inside the namespace (see [`connect_in`]).
    async fn open(&self, sock: std::net::TcpStream) -> ApiConn {
        sock.set_nonblocking(true).unwrap();
        let tcp = tokio::net::TcpStream::from_std(sock).unwrap();
        let ip: IpAddr = NODE_IP.parse().unwrap();
        let tls = self
            .tls
            .connect(rustls_pki_types::ServerName::IpAddress(ip.into()), tcp)
            .await
            .expect("TLS to kube-apiserver");
        BufReader::new(tls)
    }

    async fn open_in(&self, ns: &Netns) -> ApiConn {
        self.open(connect_in(ns, self.addr).expect("connect to kube-apiserver"))
            .await
    }

    fn get_req(&self, path: &str) -> String {
        format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: */*\r\nConnection: close\r\n\r\n",
            self.host
        )
    }

    async fn get(&self, ns: &Netns, path: &str) -> Reply {
        let mut c = self.open_in(ns).await;
        exchange(&mut c, &self.get_req(path))
            .await
            .expect("apiserver reply")
    }
}

/// Node objects the apiserver proxies to: `target-node` (the target) and
/// `refused-node` (a port with no listener).
const TARGET_NODE: &str = "target-node";
const REFUSED_NODE: &str = "refused-node";

fn node_proxy(node: &str, path: &str) -> String {
    format!("/api/v1/nodes/{node}/proxy{path}")
}

/// Registers a Node whose InternalIP is [`TARGET_IP`] and kubelet port
/// `port`, so `nodes/<name>/proxy` dials `TARGET_IP:port`.
fn register_node(node: &Node, name: &str, port: u16) {
    let f = node.tmp.path().join(format!("{name}.json"));
    std::fs::write(
        &f,
        format!(r#"{{"apiVersion":"v1","kind":"Node","metadata":{{"name":"{name}"}}}}"#),
    )
    .unwrap();
    node.kubectl_ok(&["create", "-f", f.to_str().unwrap()]);
    let status = format!(
        r#"{{"status":{{"addresses":[{{"type":"InternalIP","address":"{TARGET_IP}"}}],"daemonEndpoints":{{"kubeletEndpoint":{{"Port":{port}}}}}}}}}"#
    );
    node.kubectl_ok(&[
        "patch",
        "node",
        name,
        "--subresource=status",
        "--type=merge",
        "-p",
        &status,
    ]);
}

/// A TLS acceptor with a serving certificate for [`TARGET_IP`] from the
/// cluster CA, which the apiserver verifies kubelets against.
fn target_tls(node: &Node) -> tokio_rustls::TlsAcceptor {
    use rustls_pki_types::pem::PemObject;
    let issued = pki::issue_server_cert(
        &node.data.join("pki"),
        Ca::Cluster,
        "interop-target",
        &[TARGET_IP.to_string()],
        Duration::from_secs(3600),
        KeyType::EcdsaP256,
    )
    .unwrap();
    let certs: Vec<_> =
        rustls_pki_types::CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}

/// The egress selector file the controller generated names `uds` for the
/// `cluster` selection over gRPC.
fn egress_uds(node: &Node) -> PathBuf {
    let f = node.data.join("config").join("egress-selector.yaml");
    let text = std::fs::read_to_string(&f).unwrap();
    assert!(text.contains("name: cluster"), "{text}");
    assert!(text.contains("proxyProtocol: GRPC"), "{text}");
    let uds = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("udsName:"))
        .unwrap_or_else(|| panic!("no udsName in {}:\n{text}", f.display()))
        .trim()
        .trim_matches('"');
    PathBuf::from(uds)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn rate(bytes: usize, d: Duration) -> String {
    format!(
        "{d:.2?} ({:.0} MiB/s)",
        bytes as f64 / MIB as f64 / d.as_secs_f64()
    )
}

/// Reads a response to a long download and SIGKILLs `pid` once `after`
/// body bytes arrived; returns (bytes read, how it ended, time from the
/// kill to the end).
async fn read_killing<S: AsyncRead + Unpin>(
    r: &mut BufReader<S>,
    pid: i32,
    after: usize,
) -> (u64, End, Duration) {
    let head = read_head(r).await.expect("response head");
    assert_eq!(status_code(&head), 200, "{head}");
    let mut got = 0usize;
    let mut killed_at: Option<Instant> = None;
    let fut = read_body(r, framing(&head, Framing::ToEof), |b| {
        got += b.len();
        if got >= after && killed_at.is_none() {
            signal(pid, libc::SIGKILL);
            killed_at = Some(Instant::now());
        }
    });
    let (n, end) = tokio::time::timeout(Duration::from_secs(120), fut)
        .await
        .expect("the transfer ended (killed agent)");
    let killed_at = killed_at.expect("the agent was killed mid-transfer");
    (n, end, killed_at.elapsed())
}

// ---------------------------------------------------------------------------
// Rows 1–3: kube-apiserver → server → agent → target.

/// Which server the apiserver rows' egress socket reaches.
#[derive(Clone, Copy, Debug, PartialEq)]
enum ServerUnderTest {
    /// The server embedded in `mkectl controller` (restarted by restarting
    /// the controller).
    Embedded,
    /// A server process on the socket the egress selector file names, the
    /// controller's own server disabled.
    Process(Impl),
}

fn apiserver_row(row: &str, server_under_test: ServerUnderTest, agent_kind: Impl) {
    let mut need = vec!["kube-apiserver"];
    if server_under_test == ServerUnderTest::Process(Impl::Upstream) {
        need.push("proxy-server");
    }
    if agent_kind == Impl::Upstream {
        need.push("proxy-agent");
    }
    let Some(bin) = upstream_bins(&need) else {
        return;
    };
    let started = Instant::now();
    let tag = format!("interop-{row}");
    let ns = Netns::new(&tag);
    for ip in [NODE_IP, TARGET_IP] {
        ns.ip(&["addr", "add", &format!("{ip}/32"), "dev", "lo"]);
    }
    let node = Node::in_netns(&tag, &ns, NODE_IP, "");
    let _logs = PanicLogs(vec![node.tmp.path().to_path_buf()]);
    // kcm, scheduler, applier and CSR approver are not needed; a server
    // process replaces the embedded one.
    let mut disabled = "kube-controller-manager,kube-scheduler,applier,csr-approver".to_string();
    if server_under_test != ServerUnderTest::Embedded {
        disabled.push_str(",konnectivity-server");
    }
    let ctl_args = ["--disable-components", disabled.as_str()];
    let mut ctl = node.start_full_controller(&bin, &ctl_args);
    let controller_up = started.elapsed();
    let dir = node.tmp.path().to_path_buf();
    let uds = egress_uds(&node);
    assert!(uds.starts_with(&node.run), "{}", uds.display());

    let rt = runtime();
    let target_state = Target::new();
    let target_l = ns.enter(|| std::net::TcpListener::bind((TARGET_IP, 0)).unwrap());
    let target_port = target_l.local_addr().unwrap().port();
    spawn_target(&rt, target_l, Some(target_tls(&node)), target_state.clone());
    // A port nobody listens on in the namespace.
    let refused_port = ns.enter(|| {
        std::net::TcpListener::bind((TARGET_IP, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    });
    register_node(&node, TARGET_NODE, target_port);
    register_node(&node, REFUSED_NODE, refused_port);

    let kpki = node.pki("konnectivity");
    let (mut server, agent_port) = match server_under_test {
        ServerUnderTest::Embedded => (KServer::embedded(&node), node.konnectivity_agent_port),
        ServerUnderTest::Process(kind) => (
            KServer::start(
                &ns,
                kind,
                &bin,
                "grpc",
                &uds,
                [
                    &kpki.join("server.crt"),
                    &kpki.join("server.key"),
                    &kpki.join("ca.crt"),
                ],
                &dir,
            ),
            AGENT_PORT,
        ),
    };
    poll("server healthy", Duration::from_secs(30), || {
        server.healthy(&ns).then_some(())
    });
    let agent_cert = pki::issue_client_cert(
        &node.data.join("pki"),
        Ca::Konnectivity,
        "interop-agent",
        &[],
        Duration::from_secs(3600),
        KeyType::EcdsaP256,
    )
    .unwrap();
    std::fs::write(dir.join("agent.crt"), &agent_cert.cert_pem).unwrap();
    std::fs::write(dir.join("agent.key"), &agent_cert.key_pem).unwrap();
    let agent_tls = [
        dir.join("agent.crt"),
        dir.join("agent.key"),
        kpki.join("ca.crt"),
    ];
    let agent_tls = [&*agent_tls[0], &*agent_tls[1], &*agent_tls[2]];
    let server_addr = SocketAddr::new(NODE_IP.parse().unwrap(), agent_port);
    // A quick process restart (ms of downtime) is within the defaults'
    // first retry. Restarting the controller to restart its embedded server
    // takes seconds, by which time the default backoff (1 s, 1.5 s, 2.25 s,
    // ... up to 10 s) may next retry more than 2 s after the server is
    // back: a 1 s cap keeps every retry gap at ~1.1 s.
    let agent_extra: &[&str] = match server_under_test {
        ServerUnderTest::Embedded => &["--sync-interval-cap", "1s"],
        ServerUnderTest::Process(_) => &[],
    };
    let mut agent = KAgent::start(
        &ns,
        agent_kind,
        &bin,
        server_addr,
        agent_tls,
        agent_extra,
        &dir,
    );
    server.wait_backends(&ns, 1.0, Duration::from_secs(30));
    let api = Api::new(&node);
    let server_name = match server_under_test {
        ServerUnderTest::Embedded => "embedded Mkectl".to_string(),
        ServerUnderTest::Process(k) => format!("{k:?}"),
    };
    let label = format!("row {row} (kube-apiserver → {server_name} server → {agent_kind:?} agent)");
    eprintln!(
        "{label}: controller ready in {controller_up:.1?}, agent connected at {:.1?}",
        started.elapsed()
    );

    // (a) 64 MiB each way through the node proxy.
    rt.block_on(within(STEP, "(a) 64 MiB each way", async {
        let mut c = api.open_in(&ns).await;
        let t = Instant::now();
        let (code, n, sha, end) = download(
            &mut c,
            &node_proxy(TARGET_NODE, &format!("/download/{BIG}/7")),
            &api.host,
        )
        .await;
        let took = t.elapsed();
        assert_eq!(code, 200, "{label}: download");
        assert!(matches!(end, End::Complete), "{label}: download {end:?}");
        assert_eq!(n, BIG as u64, "{label}: download length");
        assert_eq!(
            sha,
            expected_download_sha(BIG, 7),
            "{label}: download sha256"
        );
        eprintln!("{label}: (a) GET 64 MiB in {}", rate(BIG, took));

        let mut c = api.open_in(&ns).await;
        let t = Instant::now();
        let (reply, sent) = upload(
            &mut c,
            "POST",
            &node_proxy(TARGET_NODE, "/upload"),
            &api.host,
            BIG,
            11,
        )
        .await;
        let took = t.elapsed();
        assert_eq!(reply.code, 200, "{label}: upload {}", reply.text());
        assert_eq!(
            reply.text(),
            sent,
            "{label}: the target hashed what was sent"
        );
        eprintln!("{label}: (a) POST 64 MiB in {}", rate(BIG, took));
    }));

    // (b) 100 tunnels at once: the target holds every request until all
    // arrived and the server counts them established.
    let socks = ns
        .enter(|| {
            (0..TUNNELS)
                .map(|_| std::net::TcpStream::connect(api.addr))
                .collect::<std::io::Result<Vec<_>>>()
        })
        .unwrap();
    let t = Instant::now();
    let tasks: Vec<_> = socks
        .into_iter()
        .enumerate()
        .map(|(i, sock)| {
            let api = api.clone();
            rt.spawn(async move {
                let mut c = api.open(sock).await;
                let path = node_proxy(TARGET_NODE, &format!("/barrier/{i}"));
                exchange(&mut c, &api.get_req(&path)).await
            })
        })
        .collect();
    let end = Instant::now() + Duration::from_secs(60);
    while target_state.arrived.load(Ordering::SeqCst) < TUNNELS {
        if tasks.iter().any(|h| h.is_finished()) || Instant::now() > end {
            let arrived = target_state.arrived.load(Ordering::SeqCst);
            let _ = target_state.release.send(true);
            let early: Vec<String> = tasks
                .into_iter()
                .filter(|h| h.is_finished())
                .take(3)
                .map(|h| match rt.block_on(h).unwrap() {
                    Ok(r) => format!("{} {}", r.head.lines().next().unwrap_or(""), r.text()),
                    Err(e) => e.to_string(),
                })
                .collect();
            panic!(
                "{label}: only {arrived} of {TUNNELS} requests reached the target; early replies: {early:?}\n{}{}",
                server.logs(),
                agent.proc.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    poll(
        "the server counts 100 established tunnels",
        Duration::from_secs(10),
        || (server.counter(&ns, "established_connections", &[]) == TUNNELS as f64).then_some(()),
    );
    target_state.release.send(true).unwrap();
    for (i, h) in tasks.into_iter().enumerate() {
        let r = rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(60), h).await })
            .expect("tunnel finishes")
            .unwrap()
            .expect("reply");
        assert_eq!(
            (r.code, r.text()),
            (200, format!("released {i}")),
            "{label}: tunnel {i}"
        );
    }
    eprintln!(
        "{label}: (b) {TUNNELS} concurrent tunnels in {:.2?}",
        t.elapsed()
    );
    server.assert_no_leaks(&ns, &label);
    agent.assert_no_leaks(&ns, &label);

    // (c) a refused dial: the agent's error is the proxy's answer.
    let dials = server.counter(
        &ns,
        "stream_packets_total",
        &["segment=\"from_client\"", "packet_type=\"DIAL_REQ\""],
    );
    let r = rt.block_on(within(
        STEP,
        "proxied GET /hello",
        api.get(&ns, &node_proxy(REFUSED_NODE, "/hello")),
    ));
    let text = r.text();
    assert!(
        r.code >= 500,
        "{label}: refused dial answered {}: {text}",
        r.code
    );
    assert!(
        text.contains(&format!(
            "dial tcp {TARGET_IP}:{refused_port}: connect: connection refused"
        )),
        "{label}: {text}"
    );
    let dials_after = server.counter(
        &ns,
        "stream_packets_total",
        &["segment=\"from_client\"", "packet_type=\"DIAL_REQ\""],
    );
    assert!(
        dials_after > dials,
        "{label}: the dial did not go through the server ({dials} → {dials_after})"
    );
    eprintln!("{label}: (c) refused dial → {} {}", r.code, text.trim());
    server.assert_no_leaks(&ns, &label);

    // (d) the agent SIGKILLed mid-transfer.
    let huge: u64 = 1 << 30;
    let pid = agent.proc.pid();
    let (n, end, closed_after) =
        rt.block_on(within(STEP, "(d) transfer with the agent killed", async {
            let mut c = api.open_in(&ns).await;
            c.write_all(
                api.get_req(&node_proxy(TARGET_NODE, &format!("/zeros/{huge}")))
                    .as_bytes(),
            )
            .await
            .unwrap();
            read_killing(&mut c, pid, 4 * MIB).await
        }));
    assert!(
        n < huge && !matches!(end, End::Complete),
        "{label}: the transfer survived the agent: {n} bytes, {end:?}"
    );
    assert!(
        closed_after < CLOSE_BOUND,
        "{label}: the client saw the tunnel end {closed_after:?} after the kill"
    );
    eprintln!("{label}: (d) agent killed after {} MiB: client saw the end ({end:?}) {closed_after:.2?} later", n / MIB as u64);
    agent.proc.stop(libc::SIGKILL);
    server.wait_backends(&ns, 0.0, Duration::from_secs(10));
    server.assert_no_leaks(&ns, &label);
    // A new agent serves again.
    agent.proc.spawn(&ns);
    server.wait_backends(&ns, 1.0, Duration::from_secs(30));
    let r = rt.block_on(within(
        STEP,
        "proxied GET /hello",
        api.get(&ns, &node_proxy(TARGET_NODE, "/hello")),
    ));
    assert_eq!(
        (r.code, r.text().as_str()),
        (200, "hello"),
        "{label}: after the agent restart"
    );

    // (e) the server restarted: the agent is back within 2 s.
    let (down, reconnect) = match server_under_test {
        ServerUnderTest::Process(_) => server.restart_and_measure(&ns),
        ServerUnderTest::Embedded => {
            // The embedded server restarts with its controller.
            signal(ctl.pid(), libc::SIGTERM);
            ctl.wait_exit(Duration::from_secs(120));
            let stopped = Instant::now();
            ctl = node.start_controller(&[
                "--bin-dir",
                bin.to_str().unwrap(),
                ctl_args[0],
                ctl_args[1],
            ]);
            let m = server.measure_reconnect(&ns, stopped);
            common::upstream::wait_ready(&mut ctl, "controller ready");
            m
        }
    };
    eprintln!("{label}: (e) server restarted (down {down:.2?}): agent reconnected {reconnect:.2?} after /healthz");
    assert!(
        reconnect < RECONNECT_BOUND,
        "{label}: agent reconnected {reconnect:?} after the server was ready\n{}",
        agent.proc.logs()
    );
    let r = rt.block_on(within(
        STEP,
        "proxied GET /hello",
        api.get(&ns, &node_proxy(TARGET_NODE, "/hello")),
    ));
    assert_eq!(
        (r.code, r.text().as_str()),
        (200, "hello"),
        "{label}: after the server restart"
    );
    server.assert_no_leaks(&ns, &label);
    eprintln!("{label}: all scenarios passed in {:.1?}", started.elapsed());
}

#[test]
fn row1_apiserver_mkectl_server_mkectl_agent() {
    apiserver_row("1", ServerUnderTest::Process(Impl::Mkectl), Impl::Mkectl);
}

#[test]
fn row2_apiserver_mkectl_server_upstream_agent() {
    apiserver_row("2", ServerUnderTest::Process(Impl::Mkectl), Impl::Upstream);
}

#[test]
fn row3_apiserver_upstream_server_mkectl_agent() {
    apiserver_row("3", ServerUnderTest::Process(Impl::Upstream), Impl::Mkectl);
}

#[test]
fn row1_apiserver_embedded_server_mkectl_agent() {
    apiserver_row("1e", ServerUnderTest::Embedded, Impl::Mkectl);
}

// ---------------------------------------------------------------------------
// Row 4: HTTP-CONNECT client → mkectl server (--mode http-connect) →
// upstream proxy-agent → target.

type Tunnel = BufReader<tokio::net::UnixStream>;

/// `CONNECT target` on the server's unix socket: the tunnel once the
/// server answered 200, else its reply.
async fn http_connect(uds: &Path, target: &str) -> Result<Tunnel, Reply> {
    let s = tokio::net::UnixStream::connect(uds)
        .await
        .expect("server socket");
    let mut s = BufReader::new(s);
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut s).await.expect("CONNECT reply");
    let code = status_code(&head);
    if code == 200 {
        assert_eq!(head, "HTTP/1.1 200 Connection Established\r\n\r\n");
        return Ok(s);
    }
    let mut body = Vec::new();
    let _ = read_body(&mut s, framing(&head, Framing::ToEof), |b| {
        body.extend_from_slice(b)
    })
    .await;
    Err(Reply { code, head, body })
}

async fn tunnel(uds: &Path, target: &str) -> Tunnel {
    match http_connect(uds, target).await {
        Ok(t) => t,
        Err(r) => panic!("CONNECT {target}: {}{}", r.head, r.text()),
    }
}

#[test]
fn row4_http_connect_client_mkectl_server_upstream_agent() {
    let Some(bin) = upstream_bins(&["proxy-agent"]) else {
        return;
    };
    let started = Instant::now();
    let label = "row 4 (HTTP-CONNECT client → Mkectl server → Upstream agent)";
    let ns = Netns::new("interop-4");
    let dir = tempfile::tempdir().unwrap();
    let _logs = PanicLogs(vec![dir.path().to_path_buf()]);
    let kpki = common::konnectivity::pki();
    let rt = runtime();
    let target_state = Target::new();
    let target_l = ns.enter(|| std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    let target = target_l.local_addr().unwrap().to_string();
    spawn_target(&rt, target_l, None, target_state.clone());
    let refused = ns.enter(|| {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    });

    let uds = dir.path().join("http-connect.sock");
    let mut server = KServer::start(
        &ns,
        Impl::Mkectl,
        &bin,
        "http-connect",
        &uds,
        [&kpki.server.cert, &kpki.server.key, &kpki.server.ca],
        dir.path(),
    );
    poll("server healthy", Duration::from_secs(30), || {
        server.healthy(&ns).then_some(())
    });
    let mut agent = KAgent::start(
        &ns,
        Impl::Upstream,
        &bin,
        SocketAddr::from(([127, 0, 0, 1], AGENT_PORT)),
        [&kpki.agent.cert, &kpki.agent.key, &kpki.agent.ca],
        &[],
        dir.path(),
    );
    server.wait_backends(&ns, 1.0, Duration::from_secs(30));
    let host = "Host: target\r\nConnection: close\r\n";

    // (a) 64 MiB each way.
    rt.block_on(within(STEP, "(a) 64 MiB each way", async {
        let mut t = tunnel(&uds, &target).await;
        let start = Instant::now();
        let (code, n, sha, end) = download(&mut t, &format!("/download/{BIG}/3"), "target").await;
        let took = start.elapsed();
        assert_eq!(code, 200);
        assert!(matches!(end, End::Complete), "{end:?}");
        assert_eq!(n, BIG as u64);
        assert_eq!(sha, expected_download_sha(BIG, 3), "download sha256");
        eprintln!("{label}: (a) GET 64 MiB in {}", rate(BIG, took));

        let mut t = tunnel(&uds, &target).await;
        let start = Instant::now();
        let (reply, sent) = upload(&mut t, "PUT", "/upload", "target", BIG, 5).await;
        let took = start.elapsed();
        assert_eq!(reply.code, 200, "{}", reply.text());
        assert_eq!(reply.text(), sent, "the target hashed what was sent");
        eprintln!("{label}: (a) PUT 64 MiB in {}", rate(BIG, took));
    }));

    // (b) 100 tunnels open at once, then each used.
    rt.block_on(within(STEP, "(b) 100 tunnels", async {
        let start = Instant::now();
        let mut tunnels = Vec::new();
        for _ in 0..TUNNELS {
            tunnels.push(tunnel(&uds, &target).await);
        }
        let (s, n) = (&server, &ns);
        poll(
            "the server counts 100 HTTP-CONNECT tunnels",
            Duration::from_secs(10),
            || {
                let http = s.counter(n, "http_connections", &[]);
                let est = s.counter(n, "established_connections", &[]);
                (http == TUNNELS as f64 && est == TUNNELS as f64).then_some(())
            },
        );
        let req = format!("GET /hello HTTP/1.1\r\n{host}\r\n");
        let replies =
            futures::future::join_all(tunnels.iter_mut().map(|t| exchange(t, &req))).await;
        for r in replies {
            let r = r.expect("reply through the tunnel");
            assert_eq!((r.code, r.text().as_str()), (200, "hello"));
        }
        eprintln!(
            "{label}: (b) {TUNNELS} concurrent tunnels in {:.2?}",
            start.elapsed()
        );
    }));
    server.assert_no_leaks(&ns, label);
    agent.assert_no_leaks(&ns, label);

    // (c) refused dial: 502 with the agent's dial error as the body.
    let r = rt
        .block_on(within(
            STEP,
            "(c) CONNECT",
            http_connect(&uds, &refused.to_string()),
        ))
        .expect_err("CONNECT to a closed port fails");
    assert_eq!(r.code, 502, "{}{}", r.head, r.text());
    assert!(
        r.text()
            .contains(&format!("dial tcp {refused}: connect: connection refused")),
        "{}",
        r.text()
    );
    eprintln!("{label}: (c) refused dial → {} {}", r.code, r.text().trim());
    server.assert_no_leaks(&ns, label);

    // (d) the agent SIGKILLed mid-transfer.
    let huge: u64 = 1 << 30;
    let pid = agent.proc.pid();
    let (n, end, closed_after) =
        rt.block_on(within(STEP, "(d) transfer with the agent killed", async {
            let mut t = tunnel(&uds, &target).await;
            t.write_all(format!("GET /zeros/{huge} HTTP/1.1\r\n{host}\r\n").as_bytes())
                .await
                .unwrap();
            read_killing(&mut t, pid, 4 * MIB).await
        }));
    assert!(
        n < huge && !matches!(end, End::Complete),
        "the transfer survived the agent: {n} bytes, {end:?}"
    );
    assert!(
        closed_after < CLOSE_BOUND,
        "the client saw the tunnel end {closed_after:?} after the kill"
    );
    eprintln!("{label}: (d) agent killed after {} MiB: client saw the end ({end:?}) {closed_after:.2?} later", n / MIB as u64);
    agent.proc.stop(libc::SIGKILL);
    server.wait_backends(&ns, 0.0, Duration::from_secs(10));
    server.assert_no_leaks(&ns, label);
    agent.proc.spawn(&ns);
    server.wait_backends(&ns, 1.0, Duration::from_secs(30));

    // (e) the server restarted.
    let (down, reconnect) = server.restart_and_measure(&ns);
    eprintln!("{label}: (e) server restarted (down {down:.2?}): agent reconnected {reconnect:.2?} after /healthz");
    assert!(
        reconnect < RECONNECT_BOUND,
        "agent reconnected {reconnect:?} after the server was ready\n{}",
        agent.proc.logs()
    );
    let r = rt.block_on(within(STEP, "GET /hello after the server restart", async {
        let mut t = tunnel(&uds, &target).await;
        exchange(&mut t, &format!("GET /hello HTTP/1.1\r\n{host}\r\n"))
            .await
            .unwrap()
    }));
    assert_eq!(
        (r.code, r.text().as_str()),
        (200, "hello"),
        "after the server restart"
    );
    server.assert_no_leaks(&ns, label);
    eprintln!("{label}: all scenarios passed in {:.1?}", started.elapsed());
}
