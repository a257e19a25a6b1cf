//! Issue 17, item 1: nobody without a token can hold the join API's
//! connections. While a bounded flood runs from 20 loopback addresses
//! (127.0.0.100-119) — 400 stalled TLS handshakes and 260 slow-body
//! requests with a made-up token, every connection reopened when the
//! server closes it, for 15 s — worker joins from another address keep
//! succeeding, one after another, and a real `mkectl worker` joins.
//!
//! Network safety: every connection is to and from 127.0.0.0/8; the flood
//! is bounded in connections (660 at once), reconnects (paced, and at most
//! `MAX_ROUNDS` per connection) and time (`FLOOD_FOR`).

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::join::{ctl_args, token_create, wait_log};

use common::*;
use mkectl::join::state::WorkerPaths;
use mkectl::join::JoinToken;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const START: Duration = Duration::from_secs(60);
const SOURCES: u8 = 20;
const STALLED_PER_SOURCE: usize = 20;
const SLOW_BODY_PER_SOURCE: usize = 13;
const FLOOD_FOR: Duration = Duration::from_secs(15);
/// Reconnects per flood connection, at most.
const MAX_ROUNDS: usize = 100;
/// A join must finish within this, flood or not.
const JOIN_BOUND: Duration = Duration::from_secs(10);
const LEGIT_SOURCE: &str = "127.0.0.90";

#[derive(Default)]
struct Stats {
    /// Connection attempts begun, of both kinds.
    attempts: AtomicU64,
    stalled_opened: AtomicU64,
    slow_sent: AtomicU64,
    /// Slow-body requests the server answered, and with 401.
    slow_answered: AtomicU64,
    slow_401: AtomicU64,
}

async fn connect_from(src: IpAddr, dst: SocketAddr) -> Option<tokio::net::TcpStream> {
    let sock = tokio::net::TcpSocket::new_v4().ok()?;
    sock.bind(SocketAddr::new(src, 0)).ok()?;
    tokio::time::timeout(Duration::from_secs(2), sock.connect(dst))
        .await
        .ok()?
        .ok()
}

/// Opens a TCP connection and sends nothing (a TLS handshake that never
/// starts); reopens it whenever the server closes it.
async fn stalled(src: IpAddr, dst: SocketAddr, stop: CancellationToken, stats: Arc<Stats>) {
    for _ in 0..MAX_ROUNDS {
        stats.attempts.fetch_add(1, Ordering::Relaxed);
        if let Some(mut s) = connect_from(src, dst).await {
            stats.stalled_opened.fetch_add(1, Ordering::Relaxed);
            let mut b = [0u8; 1];
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = s.read(&mut b) => {}
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

/// A worker join request with a made-up token whose 60 000-byte body comes
/// one byte a second; reopened 2 s after the server answers or closes.
async fn slow_body(
    src: IpAddr,
    dst: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    stop: CancellationToken,
    stats: Arc<Stats>,
) {
    for _ in 0..MAX_ROUNDS {
        stats.attempts.fetch_add(1, Ordering::Relaxed);
        let attempt = async {
            let tcp = connect_from(src, dst).await?;
            let name = rustls_pki_types::ServerName::try_from("127.0.0.1").ok()?;
            let conn = tokio_rustls::TlsConnector::from(tls.clone()).connect(name, tcp);
            let tls = tokio::time::timeout(Duration::from_secs(5), conn)
                .await
                .ok()?
                .ok()?;
            let (mut r, mut w) = tokio::io::split(tls);
            w.write_all(
                b"POST /v1/join/worker HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer abcdef.0123456789abcdef\r\nContent-Type: application/json\r\nContent-Length: 60000\r\n\r\n{",
            )
            .await
            .ok()?;
            stats.slow_sent.fetch_add(1, Ordering::Relaxed);
            let trickle = async {
                for _ in 0..60 {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if w.write_all(b" ").await.is_err() {
                        break;
                    }
                }
                std::future::pending::<()>().await;
            };
            let mut buf = vec![0u8; 4096];
            let answer = async {
                let n = r.read(&mut buf).await.unwrap_or(0);
                String::from_utf8_lossy(&buf[..n]).into_owned()
            };
            tokio::select! {
                head = answer => {
                    stats.slow_answered.fetch_add(1, Ordering::Relaxed);
                    if head.starts_with("HTTP/1.1 401") {
                        stats.slow_401.fetch_add(1, Ordering::Relaxed);
                    }
                }
                _ = trickle => {}
            }
            Some(())
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = attempt => {}
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

fn client_tls(node: &Node) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in mkectl::join::tls::certs_from_pem("ca", &std::fs::read(node.pki("ca.crt")).unwrap())
        .unwrap()
    {
        roots.add(c).unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

/// The flood holds ~700 sockets here: lift the soft limit to the hard one.
fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    assert!(
        hard >= 2048,
        "RLIMIT_NOFILE hard limit {hard} is too low for this test"
    );
}

/// One worker join from the legitimate address; its duration.
async fn join_once(tok: &JoinToken, i: usize) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let r = tokio::time::timeout(
        JOIN_BOUND,
        mkectl::join::client::join_worker(
            tok,
            &format!("flood-w{i}"),
            LEGIT_SOURCE.parse().unwrap(),
            &WorkerPaths::new(dir.path()),
        ),
    )
    .await;
    match r {
        Ok(Ok(_)) => t.elapsed(),
        Ok(Err(e)) => panic!("join {i} refused: {e}"),
        Err(_) => panic!("join {i} did not finish within {JOIN_BOUND:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn joins_succeed_while_slots_are_flooded_without_a_token() {
    raise_nofile();
    let c1 = Node::with_address("fl1", "127.0.0.1", "");
    let mut p1 = c1.start_controller(&ctl_args(&[]));
    wait_log(&mut p1, "controller ready", START);
    let tok_text = token_create(&c1, "worker", &[]);
    let tok = JoinToken::decode(&tok_text).unwrap();
    let dst = SocketAddr::from(([127, 0, 0, 1], c1.join_port));
    let quiet = join_once(&tok, 0).await;

    let stop = CancellationToken::new();
    let stats = Arc::new(Stats::default());
    let tls = client_tls(&c1);
    let mut tasks = Vec::new();
    for s in 0..SOURCES {
        let src = IpAddr::from([127, 0, 0, 100 + s]);
        for _ in 0..STALLED_PER_SOURCE {
            tasks.push(tokio::spawn(stalled(src, dst, stop.clone(), stats.clone())));
        }
        for _ in 0..SLOW_BODY_PER_SOURCE {
            tasks.push(tokio::spawn(slow_body(
                src,
                dst,
                tls.clone(),
                stop.clone(),
                stats.clone(),
            )));
        }
    }
    let flood_start = Instant::now();
    // The flood is in place once every one of its connections was tried
    // (whatever the server then did with it).
    let connections = tasks.len() as u64;
    let end = Instant::now() + Duration::from_secs(10);
    while stats.attempts.load(Ordering::Relaxed) < connections {
        assert!(Instant::now() < end, "flood never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A real worker joins, and library joins follow one another, all while
    // the flood runs.
    let w = Node::with_address("flw", "127.0.0.91", "");
    let pw = w.start_worker(&["--token", &tok_text, "--address", "127.0.0.91"]);
    // One join every 500 ms for the rest of the flood (each bounded).
    let mut latencies = Vec::new();
    let mut worker_ready = None;
    let mut pace = tokio::time::interval(Duration::from_millis(500));
    for i in 1..=40 {
        pace.tick().await;
        if worker_ready.is_none() && pw.log_text().contains("worker ready") {
            worker_ready = Some(flood_start.elapsed());
        }
        if flood_start.elapsed() >= FLOOD_FOR {
            break;
        }
        latencies.push(join_once(&tok, i).await);
    }
    let worker_ready = worker_ready.unwrap_or_else(|| {
        panic!(
            "`mkectl worker` not ready while the flood ran; log:\n{}",
            pw.log_text()
        )
    });
    let flood_ran = flood_start.elapsed();
    assert!(flood_ran < FLOOD_FOR + JOIN_BOUND, "{flood_ran:?}");
    stop.cancel();
    for t in tasks {
        t.await.unwrap();
    }

    latencies.sort();
    let page = c1.metrics_page();
    let refused: Vec<&str> = page
        .lines()
        .filter(|l| l.starts_with("mkectl_join_connections_refused_total{"))
        .collect();
    eprintln!(
        "flood: {SOURCES} sources, {} stalled-handshake connections opened, {} slow-body requests sent ({} answered, {} with 401), {:.1?}; joins during the flood: {}/{} ok, p50 {:?}, max {:?} (quiet: {quiet:?}); `mkectl worker` joined and ready {worker_ready:.1?} into the flood; server: {refused:?}",
        stats.stalled_opened.load(Ordering::Relaxed),
        stats.slow_sent.load(Ordering::Relaxed),
        stats.slow_answered.load(Ordering::Relaxed),
        stats.slow_401.load(Ordering::Relaxed),
        flood_ran,
        latencies.len(),
        latencies.len(),
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1],
    );
    assert!(latencies.len() >= 5, "too few joins during the flood");
    // The flood did hit the limits, and its bodies were refused from the
    // headers (401) instead of being read.
    assert!(
        page.contains("mkectl_join_connections_refused_total{reason=\"source_limit\"}"),
        "{refused:?}"
    );
    assert!(stats.slow_401.load(Ordering::Relaxed) > 0);
    assert!(p1.child.try_wait().unwrap().is_none(), "controller died");
}
