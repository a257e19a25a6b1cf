//! Konnectivity tunnel bench: throughput, dial latency and the memory of
//! idle tunnels, with the real `mkectl konnectivity server` and `agent`
//! processes on loopback (server ↔ agent over TLS with client certificates,
//! frontends on unix sockets, as kube-apiserver uses them).
//!
//! * Throughput, 1 and 16 concurrent streams, download (target → client) and
//!   upload (client → target): direct loopback TCP to the target (the
//!   baseline) vs the tunnel through the gRPC frontend (one shared
//!   `ProxyClient` connection, one Proxy stream per tunnel) and through the
//!   HTTP-CONNECT frontend. Best of `MKECTL_BENCH_REPEAT` (default 3) runs
//!   of 256 MiB each, interleaved so load changes hit all three alike.
//!   Target: one tunnel stream ≥ 25% of direct loopback TCP. Also "floor":
//!   the same three socket crossings and AES-128-GCM records with no
//!   protocol at all (benches/support/relay_floor.rs), the ceiling for any
//!   implementation on this machine in this run.
//! * Dial latency p50/p99: direct TCP connect (baseline), gRPC through the
//!   shared `ProxyClient`, gRPC single-use (new UDS connection + HTTP/2
//!   handshake per dial, as released kube-apiservers dial) and HTTP-CONNECT.
//!   Target: gRPC dial p50 < 1 ms.
//! * RSS (VmRSS) of server + agent, fresh processes: connected and idle,
//!   holding 10,000 idle tunnels (gRPC, one shared client connection), and
//!   after all of them closed. Targets: < 150 MB with 10,000 tunnels; after
//!   closing, RSS gives back at least 80% of what the tunnels took.
//!
//! The target is a TCP server in this process on 127.0.0.1. All traffic is
//! loopback or unix sockets.
//!
//! `cargo bench --bench tunnel` (`MKECTL_BENCH_REPEAT=n` runs per throughput
//! figure; `MKECTL_BENCH_PHASES=throughput,dial,rss` picks phases). For
//! profiling one mode: `MKECTL_BENCH_MODES=grpc,http,floor` (the direct baseline
//! always runs), `MKECTL_BENCH_DIRS=download,upload`,
//! `MKECTL_BENCH_STREAMS=1,16`; a mode left out prints as 0.

#[allow(dead_code)]
#[path = "../tests/common/konnectivity.rs"]
mod konn;
#[path = "support/relay_floor.rs"]
mod relay_floor;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use mkectl::konnectivity::client::{dial_grpc_uds, dial_http_connect_uds, ProxyClient};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

const MKECTL: &str = env!("CARGO_BIN_EXE_mkectl");
/// Bytes moved per throughput run (split across the streams).
const RUN_BYTES: u64 = 256 << 20;
const IO_BUF: usize = 256 * 1024;
const RUN_TIMEOUT: Duration = Duration::from_secs(60);
const DIALS_SHARED: usize = 1000;
const DIALS_SINGLE_USE: usize = 300;
const IDLE_TUNNELS: usize = 10_000;
const DIAL_CONCURRENCY: usize = 64;
const NOFILE: u64 = 65_536;

/// Wait after the last tunnel closed before reading RSS.
const SETTLE_AFTER_CLOSE: Duration = Duration::from_secs(3);
const TARGET_THROUGHPUT_RATIO: f64 = 0.25;
const TARGET_DIAL_P50: Duration = Duration::from_millis(1);
const TARGET_IDLE_RSS_MB: f64 = 150.0;
/// Share of the memory taken by the tunnels that must be given back.
const TARGET_RETURNED: f64 = 0.80;

fn verdict(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "MISS"
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// VmRSS of `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc status")
}

fn mb(kib: u64) -> f64 {
    kib as f64 * 1024.0 / 1e6
}

fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    // Root may raise the hard limit; otherwise use what the hard limit allows.
    if setrlimit(Resource::RLIMIT_NOFILE, NOFILE, NOFILE.max(hard)).is_err() {
        setrlimit(Resource::RLIMIT_NOFILE, NOFILE.min(hard), hard).expect("setrlimit NOFILE");
    }
    let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    assert!(
        soft as usize > IDLE_TUNNELS + 1000,
        "RLIMIT_NOFILE {soft} is too low for {IDLE_TUNNELS} tunnels"
    );
}

// ---------------------------------------------------------------- target

/// The endpoint tunnels lead to. Each connection sends a 9-byte header:
/// `D` + u64 LE n → the target sends n bytes; `U` + n → it reads n bytes and
/// answers one byte. Then it holds the connection until the peer closes. A
/// connection that sends nothing (an idle tunnel) is simply held.
struct Target {
    addr: SocketAddr,
    open: Arc<AtomicUsize>,
}

async fn start_target() -> Target {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind target");
    let addr = l.local_addr().expect("target addr");
    let open = Arc::new(AtomicUsize::new(0));
    let o = open.clone();
    tokio::spawn(async move {
        loop {
            match l.accept().await {
                Ok((s, _)) => {
                    tokio::spawn(serve_target(s, o.clone()));
                }
                Err(e) => {
                    eprintln!("target accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    });
    Target { addr, open }
}

struct OpenGuard(Arc<AtomicUsize>);
impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn payload() -> &'static [u8] {
    static P: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    P.get_or_init(|| {
        let mut v = vec![0u8; IO_BUF];
        konn::fill(42, &mut v);
        v
    })
}

async fn serve_target(mut s: TcpStream, open: Arc<AtomicUsize>) {
    open.fetch_add(1, Ordering::Relaxed);
    let _g = OpenGuard(open);
    let _ = s.set_nodelay(true);
    let mut hdr = [0u8; 9];
    if s.read_exact(&mut hdr).await.is_err() {
        return;
    }
    let n = u64::from_le_bytes(hdr[1..].try_into().expect("8 bytes"));
    let r: std::io::Result<()> = async {
        match hdr[0] {
            b'D' => send_bytes(&mut s, n).await?,
            b'U' => {
                recv_bytes(&mut s, n).await?;
                s.write_all(b"k").await?;
            }
            _ => return Ok(()),
        }
        // Hold until the peer closes.
        let mut b = [0u8; 64];
        while s.read(&mut b).await? > 0 {}
        Ok(())
    }
    .await;
    let _ = r;
}

async fn send_bytes<S: AsyncWrite + Unpin>(s: &mut S, n: u64) -> std::io::Result<()> {
    let p = payload();
    let mut left = n;
    while left > 0 {
        let k = left.min(p.len() as u64) as usize;
        s.write_all(&p[..k]).await?;
        left -= k as u64;
    }
    s.flush().await
}

async fn recv_bytes<S: AsyncRead + Unpin>(s: &mut S, n: u64) -> std::io::Result<()> {
    let mut buf = vec![0u8; IO_BUF];
    let mut left = n;
    while left > 0 {
        let k = s.read(&mut buf[..left.min(IO_BUF as u64) as usize]).await?;
        if k == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        left -= k as u64;
    }
    Ok(())
}

// ------------------------------------------------------- server and agent

struct Stack {
    _pki: konn::Pki,
    dir: tempfile::TempDir,
    server: Child,
    agent: Child,
    server_admin: SocketAddr,
    agent_admin: SocketAddr,
    grpc_uds: PathBuf,
    http_uds: PathBuf,
}

impl Stack {
    fn pids(&self) -> (u32, u32) {
        (
            self.server.id().expect("server running"),
            self.agent.id().expect("agent running"),
        )
    }

    fn rss(&self) -> (u64, u64) {
        let (s, a) = self.pids();
        (rss_kib(s), rss_kib(a))
    }

    fn logs(&self) -> String {
        let r = |n: &str| std::fs::read_to_string(self.dir.path().join(n)).unwrap_or_default();
        format!(
            "--- server log:\n{}\n--- agent log:\n{}",
            r("server.log"),
            r("agent.log")
        )
    }

    async fn stop(mut self) {
        for c in [&mut self.server, &mut self.agent] {
            if let Some(pid) = c.id() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            if tokio::time::timeout(Duration::from_secs(20), c.wait())
                .await
                .is_err()
            {
                let _ = c.kill().await;
            }
        }
    }
}

fn log_file(dir: &Path, name: &str) -> std::process::Stdio {
    std::fs::File::create(dir.join(name))
        .expect("log file")
        .into()
}

/// One gauge from a `/metrics` page (sum over its label sets).
fn gauge(page: &str, name: &str) -> Option<i64> {
    let mut found = None;
    for l in page.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = l.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        let v: f64 = rest.rsplit(' ').next()?.parse().ok()?;
        *found.get_or_insert(0) += v as i64;
    }
    found
}

async fn start_stack() -> Stack {
    let pki = konn::pki();
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let grpc_uds = d.join("grpc.sock");
    let http_uds = d.join("http.sock");
    let agent_addr = konn::free_addr();
    let server_admin = konn::free_addr();
    let agent_admin = konn::free_addr();
    let server = Command::new(MKECTL)
        .args([
            "konnectivity",
            "server",
            "--mode",
            "grpc",
            "--server-id",
            "bench",
        ])
        .arg("--uds-name")
        .arg(&grpc_uds)
        .arg("--http-connect-uds-name")
        .arg(&http_uds)
        .args(["--agent-bind-address", "127.0.0.1", "--agent-port"])
        .arg(agent_addr.port().to_string())
        .arg("--admin-port")
        .arg(server_admin.port().to_string())
        .arg("--cluster-cert")
        .arg(&pki.server.cert)
        .arg("--cluster-key")
        .arg(&pki.server.key)
        .arg("--cluster-ca-cert")
        .arg(&pki.server.ca)
        .stdout(log_file(d, "server.out"))
        .stderr(log_file(d, "server.log"))
        .kill_on_drop(true)
        .spawn()
        .expect("spawn server");
    let agent = Command::new(MKECTL)
        .args(["konnectivity", "agent", "--agent-id", "bench-agent"])
        .arg("--proxy-server-host")
        .arg(agent_addr.to_string())
        .arg("--ca-cert")
        .arg(&pki.agent.ca)
        .arg("--agent-cert")
        .arg(&pki.agent.cert)
        .arg("--agent-key")
        .arg(&pki.agent.key)
        .arg("--admin-port")
        .arg(agent_admin.port().to_string())
        .stdout(log_file(d, "agent.out"))
        .stderr(log_file(d, "agent.log"))
        .kill_on_drop(true)
        .spawn()
        .expect("spawn agent");
    let stack = Stack {
        _pki: pki,
        dir,
        server,
        agent,
        server_admin,
        agent_admin,
        grpc_uds,
        http_uds,
    };
    let start = Instant::now();
    loop {
        let ready = |a| async move {
            tokio::net::TcpStream::connect(a).await.is_ok()
                && konn::http_get(a, "/readyz").await.0 == 200
        };
        if ready(stack.server_admin).await && ready(stack.agent_admin).await {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "server and agent not ready within 30 s\n{}",
            stack.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stack
}

// ------------------------------------------------------------ throughput

#[derive(Clone, Copy, PartialEq)]
enum Dir {
    Download,
    Upload,
}

#[derive(Clone, Copy, PartialEq)]
enum Path3 {
    Direct,
    Grpc,
    HttpConnect,
    /// [`relay_floor`]: the same sockets and cipher, no protocol.
    Floor,
}

/// Moves `n` bytes in `dir` over one connection.
async fn transfer<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, dir: Dir, n: u64) {
    let mut hdr = [0u8; 9];
    hdr[0] = if dir == Dir::Download { b'D' } else { b'U' };
    hdr[1..].copy_from_slice(&n.to_le_bytes());
    s.write_all(&hdr).await.expect("send header");
    match dir {
        Dir::Download => recv_bytes(&mut s, n).await.expect("download"),
        Dir::Upload => {
            send_bytes(&mut s, n).await.expect("upload");
            let mut k = [0u8; 1];
            s.read_exact(&mut k).await.expect("upload ack");
        }
    }
}

/// CPU time (user + system) used so far by `pid` (0 = this process).
fn cpu_time(pid: u32) -> Duration {
    let path = if pid == 0 {
        "/proc/self/stat".to_string()
    } else {
        format!("/proc/{pid}/stat")
    };
    let stat = std::fs::read_to_string(path).expect("read /proc stat");
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis((f.iter().sum::<u64>()) * 1000 / hz)
}

/// CPU time of this process (client and target), the server and the agent.
fn cpu_all(stack: &Stack) -> Duration {
    let (s, a) = stack.pids();
    cpu_time(0) + cpu_time(s) + cpu_time(a)
}

/// One run: dials `streams` connections, then times moving RUN_BYTES in
/// total across them; returns (MiB/s, CPU ms per MiB of all processes).
async fn run_throughput(
    stack: &Stack,
    client: &ProxyClient,
    target: SocketAddr,
    path: Path3,
    dir: Dir,
    streams: usize,
) -> (f64, f64) {
    let per = RUN_BYTES / streams as u64;
    let addr = target.to_string();
    let mut tasks = Vec::new();
    macro_rules! go {
        ($conns:expr) => {{
            let conns = $conns;
            let c0 = cpu_all(stack);
            let t0 = Instant::now();
            for c in conns {
                tasks.push(tokio::spawn(transfer(c, dir, per)));
            }
            for t in tasks.drain(..) {
                tokio::time::timeout(RUN_TIMEOUT, t)
                    .await
                    .unwrap_or_else(|_| panic!("run exceeded {RUN_TIMEOUT:?}\n{}", stack.logs()))
                    .expect("transfer task");
            }
            (t0.elapsed(), cpu_all(stack) - c0)
        }};
    }
    let (elapsed, cpu) = match path {
        Path3::Direct => {
            let mut v = Vec::new();
            for _ in 0..streams {
                let s = TcpStream::connect(target).await.expect("direct connect");
                let _ = s.set_nodelay(true);
                v.push(s);
            }
            go!(v)
        }
        Path3::Grpc => {
            let mut v = Vec::new();
            for _ in 0..streams {
                v.push(client.dial(&addr).await.expect("gRPC dial"));
            }
            go!(v)
        }
        Path3::HttpConnect => {
            let mut v = Vec::new();
            for _ in 0..streams {
                v.push(
                    dial_http_connect_uds(&stack.http_uds, &addr)
                        .await
                        .expect("HTTP-CONNECT dial"),
                );
            }
            go!(v)
        }
        Path3::Floor => {
            let mut v = Vec::new();
            let mut relays = Vec::new();
            for _ in 0..streams {
                let f = relay_floor::Floor::start(target, stack.dir.path());
                v.push(
                    tokio::net::UnixStream::connect(&f.uds)
                        .await
                        .expect("floor connect"),
                );
                relays.push(f);
            }
            let r = go!(v);
            tokio::task::spawn_blocking(move || relays.into_iter().for_each(|f| f.join()))
                .await
                .expect("floor relays");
            r
        }
    };
    let mib = (per * streams as u64) as f64 / (1 << 20) as f64;
    (
        mib / elapsed.as_secs_f64(),
        cpu.as_secs_f64() * 1000.0 / mib,
    )
}

/// Whether `item` is in the comma list of env `var` (absent: everything).
fn selected(var: &str, item: &str) -> bool {
    match std::env::var(var) {
        Ok(v) => v.split(',').any(|x| x.trim() == item),
        Err(_) => true,
    }
}

async fn throughput(stack: &Stack, target: &Target, repeat: usize) -> bool {
    let client = ProxyClient::connect_uds(&stack.grpc_uds)
        .await
        .expect("connect gRPC UDS");
    let mut ok = true;
    println!(
        "throughput: {} MiB per run, best of {repeat}, MiB/s (ratio to direct loopback TCP); \
         then CPU ms per MiB of client + target + server + agent (lowest of the runs)",
        RUN_BYTES >> 20
    );
    for dir in [Dir::Download, Dir::Upload] {
        if !selected(
            "MKECTL_BENCH_DIRS",
            if dir == Dir::Download {
                "download"
            } else {
                "upload"
            },
        ) {
            continue;
        }
        for streams in [1usize, 16] {
            if !selected("MKECTL_BENCH_STREAMS", &streams.to_string()) {
                continue;
            }
            let mut best = [0f64; 4];
            let mut cpu = [f64::MAX; 4];
            for _ in 0..repeat {
                for (i, p) in [Path3::Direct, Path3::Grpc, Path3::HttpConnect, Path3::Floor]
                    .into_iter()
                    .enumerate()
                {
                    let mode = match p {
                        Path3::Direct => "direct",
                        Path3::Grpc => "grpc",
                        Path3::HttpConnect => "http",
                        Path3::Floor => "floor",
                    };
                    if p != Path3::Direct && !selected("MKECTL_BENCH_MODES", mode) {
                        continue;
                    }
                    let (r, c) = run_throughput(stack, &client, target.addr, p, dir, streams).await;
                    best[i] = best[i].max(r);
                    cpu[i] = cpu[i].min(c);
                }
            }
            let [direct, grpc, http, floor] = best;
            let pct = |v: f64| v / direct * 100.0;
            let label = format!(
                "{:<8} {:>2} stream{}",
                if dir == Dir::Download {
                    "download"
                } else {
                    "upload"
                },
                streams,
                if streams == 1 { " " } else { "s" }
            );
            let target_txt = if streams == 1 {
                let pass = grpc / direct >= TARGET_THROUGHPUT_RATIO
                    && http / direct >= TARGET_THROUGHPUT_RATIO;
                ok &= pass;
                format!(
                    "target >= {:.0}%: {}",
                    TARGET_THROUGHPUT_RATIO * 100.0,
                    verdict(pass)
                )
            } else {
                "(no target)".into()
            };
            println!(
                "  {label}  direct {direct:>7.0}  gRPC {grpc:>7.0} ({:>5.1}%)  HTTP-CONNECT {http:>7.0} ({:>5.1}%)  floor {floor:>7.0} ({:>5.1}%)  {target_txt}",
                pct(grpc),
                pct(http),
                pct(floor)
            );
            let c = |v: f64| {
                if v == f64::MAX {
                    "-".to_string()
                } else {
                    format!("{v:.2}")
                }
            };
            println!(
                "  {:<19}  CPU ms/MiB: direct {}  gRPC {}  HTTP-CONNECT {}  floor {}",
                "",
                c(cpu[0]),
                c(cpu[1]),
                c(cpu[2]),
                c(cpu[3])
            );
        }
    }
    ok
}

// --------------------------------------------------------- dial latency

fn percentile(samples: &[Duration], p: usize) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let idx = (sorted.len() * p).div_ceil(100).saturating_sub(1);
    sorted[idx.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn dial_latency(stack: &Stack, target: &Target) -> bool {
    let addr = target.addr.to_string();
    let mut direct = Vec::new();
    for _ in 0..DIALS_SHARED {
        let t0 = Instant::now();
        let s = TcpStream::connect(target.addr).await.expect("connect");
        direct.push(t0.elapsed());
        drop(s);
    }
    let client = ProxyClient::connect_uds(&stack.grpc_uds)
        .await
        .expect("connect gRPC UDS");
    let mut shared = Vec::new();
    for _ in 0..DIALS_SHARED {
        let t0 = Instant::now();
        let c = client.dial(&addr).await.expect("gRPC dial");
        shared.push(t0.elapsed());
        c.close().await.expect("close tunnel");
    }
    let mut single = Vec::new();
    for _ in 0..DIALS_SINGLE_USE {
        let t0 = Instant::now();
        let c = dial_grpc_uds(&stack.grpc_uds, &addr)
            .await
            .expect("single-use gRPC dial");
        single.push(t0.elapsed());
        c.close().await.expect("close tunnel");
    }
    let mut http = Vec::new();
    for _ in 0..DIALS_SHARED {
        let t0 = Instant::now();
        let c = dial_http_connect_uds(&stack.http_uds, &addr)
            .await
            .expect("HTTP-CONNECT dial");
        http.push(t0.elapsed());
        drop(c);
    }
    let d50 = percentile(&direct, 50);
    println!("dial latency (sequential dials; ratio of p50 to direct TCP connect):");
    let mut ok = true;
    for (label, v, with_target) in [
        ("direct TCP connect (baseline)", &direct, false),
        ("gRPC, shared ProxyClient", &shared, true),
        ("gRPC, single-use connection", &single, true),
        ("HTTP-CONNECT (UDS)", &http, false),
    ] {
        let (p50, p99) = (percentile(v, 50), percentile(v, 99));
        let t = if with_target {
            let pass = p50 < TARGET_DIAL_P50;
            ok &= pass;
            format!(
                "target p50 < {} ms: {}",
                TARGET_DIAL_P50.as_millis(),
                verdict(pass)
            )
        } else {
            "(no target)".into()
        };
        println!(
            "  {label:<30} n={:<5} p50 {:>7.3} ms  p99 {:>7.3} ms  ({:>6.1}x)  {t}",
            v.len(),
            ms(p50),
            ms(p99),
            ms(p50) / ms(d50)
        );
    }
    ok
}

// ------------------------------------------------------------ idle RSS

async fn wait_metric(stack: &Stack, admin: SocketAddr, name: &str, want: i64) {
    let start = Instant::now();
    loop {
        let (_, page) = konn::http_get(admin, "/metrics").await;
        if gauge(&page, name) == Some(want) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{name} did not reach {want} (now {:?})\n{}",
            gauge(&page, name),
            stack.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn idle_rss(target: &Target) -> bool {
    let stack = start_stack().await;
    let client = ProxyClient::connect_uds(&stack.grpc_uds)
        .await
        .expect("connect gRPC UDS");
    let addr = target.addr.to_string();
    // Settle: one tunnel through, so lazily built state exists before the
    // baseline (as on any server that served a request).
    client
        .dial(&addr)
        .await
        .expect("warm-up dial")
        .close()
        .await
        .expect("warm-up close");
    let base_open = target.open.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (s0, a0) = stack.rss();

    let t0 = Instant::now();
    let tunnels: Vec<_> = futures::stream::iter(0..IDLE_TUNNELS)
        .map(|_| {
            let c = client.clone();
            let a = addr.clone();
            async move { c.dial(&a).await }
        })
        .buffer_unordered(DIAL_CONCURRENCY)
        .collect()
        .await;
    let tunnels: Vec<_> = tunnels
        .into_iter()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("dial an idle tunnel: {e}\n{}", stack.logs()));
    let open_time = t0.elapsed();
    let start = Instant::now();
    while target.open.load(Ordering::Relaxed) < base_open + IDLE_TUNNELS {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "target saw every tunnel"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_metric(
        &stack,
        stack.server_admin,
        "konnectivity_network_proxy_server_established_connections",
        IDLE_TUNNELS as i64,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (s1, a1) = stack.rss();

    let t1 = Instant::now();
    drop(tunnels);
    let start = Instant::now();
    while target.open.load(Ordering::Relaxed) > base_open {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "tunnels closed at the target\n{}",
            stack.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_metric(
        &stack,
        stack.server_admin,
        "konnectivity_network_proxy_server_established_connections",
        0,
    )
    .await;
    wait_metric(
        &stack,
        stack.agent_admin,
        "konnectivity_network_proxy_agent_open_endpoint_connections",
        0,
    )
    .await;
    let close_time = t1.elapsed();
    // Server and agent give free memory back within a second or two of a
    // large drop in open tunnels (konnectivity::trim).
    tokio::time::sleep(SETTLE_AFTER_CLOSE).await;
    let (s2, a2) = stack.rss();
    drop(client);

    let (base, peak, after) = (s0 + a0, s1 + a1, s2 + a2);
    let taken = peak.saturating_sub(base);
    let kept = after.saturating_sub(base);
    let returned = if taken == 0 {
        1.0
    } else {
        1.0 - kept as f64 / taken as f64
    };
    println!(
        "RSS, server + agent (separate processes), {IDLE_TUNNELS} idle gRPC tunnels on one client connection:"
    );
    println!(
        "  connected, idle          server {:>6.1} MB  agent {:>6.1} MB  total {:>6.1} MB",
        mb(s0),
        mb(a0),
        mb(base)
    );
    let pass_peak = mb(peak) < TARGET_IDLE_RSS_MB;
    println!(
        "  {IDLE_TUNNELS} idle tunnels     server {:>6.1} MB  agent {:>6.1} MB  total {:>6.1} MB  ({:.1} KiB per tunnel; opened in {:.2} s)  target < {TARGET_IDLE_RSS_MB:.0} MB: {}",
        mb(s1),
        mb(a1),
        mb(peak),
        taken as f64 / IDLE_TUNNELS as f64,
        open_time.as_secs_f64(),
        verdict(pass_peak)
    );
    let pass_ret = returned >= TARGET_RETURNED;
    println!(
        "  after closing all        server {:>6.1} MB  agent {:>6.1} MB  total {:>6.1} MB  ({:.0}% of the tunnels' memory returned; closed in {:.2} s)  target >= {:.0}%: {}",
        mb(s2),
        mb(a2),
        mb(after),
        returned * 100.0,
        close_time.as_secs_f64(),
        TARGET_RETURNED * 100.0,
        verdict(pass_ret)
    );
    stack.stop().await;
    pass_peak && pass_ret
}

fn main() {
    let started = Instant::now();
    let repeat: usize = std::env::var("MKECTL_BENCH_REPEAT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);
    raise_nofile();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "tunnel bench: mkectl konnectivity server + agent as processes on loopback; {cpus} CPUs; load average at start {}",
        loadavg()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    // MKECTL_BENCH_PHASES: comma-separated subset of throughput,dial,rss.
    let phases =
        std::env::var("MKECTL_BENCH_PHASES").unwrap_or_else(|_| "throughput,dial,rss".into());
    let on = |p: &str| phases.split(',').any(|x| x.trim() == p);
    let all_ok = rt.block_on(async {
        let target = start_target().await;
        let mut ok = true;
        if on("throughput") || on("dial") {
            let stack = start_stack().await;
            if on("throughput") {
                ok &= throughput(&stack, &target, repeat).await;
            }
            if on("dial") {
                ok &= dial_latency(&stack, &target).await;
            }
            stack.stop().await;
        }
        if on("rss") {
            ok &= idle_rss(&target).await;
        }
        ok
    });
    println!(
        "done in {:.1} s; load average at end {}; all targets: {}",
        started.elapsed().as_secs_f64(),
        loadavg(),
        verdict(all_ok)
    );
}
