//! Node-local apiserver load balancer (issue #16): latency it adds and
//! failover time, on loopback, in one run.
//!
//! * Round trip of an HTTPS `GET /readyz` (TLS 1.3, client certificate, as
//!   `kubectl get --raw /readyz` makes it), direct to a backend against
//!   through the balancer, interleaved request by request so load changes hit
//!   both alike: over one kept-alive connection each, and on a new connection
//!   per request (TCP + TLS handshake + request, what one `kubectl` run
//!   does). p50/p99 and the latency added (ms and ratio). Goal: under
//!   0.2 ms added at p50.
//! * Failover: a backend killed (listener closed, connections dropped) with
//!   no traffic: time until the active check marks it down; a backend killed
//!   and a new connection made at once: time until that connection is
//!   answered by another backend (passive check); a backend that hangs
//!   (accepts TCP, never answers, as a stopped process): time until it is
//!   marked down (bound: interval + probe timeout = 2 s).
//!
//! The backends are stand-in apiservers (rustls + hyper with mkectl's PKI,
//! tests/common/apilb.rs), not kube-apiserver: the figure is what the
//! balancer adds, which does not depend on what answers behind it.
//!
//! Measured on the 2-core shared dev machine (2026-12-05, other builds
//! running): added p50 +0.016 ms kept-alive (0.054 → 0.070 ms), +0.087 ms on
//! a new connection (0.361 → 0.448 ms); killed backend down after 314–862 ms,
//! hung backend after 1315–1862 ms; a new connection right after a kill
//! answered by the survivor within 1 ms.
//!
//! `cargo bench --bench apilb` (`MKECTL_BENCH_ITERS=n` requests per series,
//! default 5000 kept-alive, a tenth of it on new connections).

#[allow(dead_code)]
#[path = "../tests/common/apilb.rs"]
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use mkectl::apilb::{ApiLb, ApiLbConfig, Health, HttpsHealthCheck};
use mkectl::https_probe::ClientIdentity;
use mkectl::pki::Ca;
use support::{get_once, Backend, Conn};

const FAILOVER_RUNS: usize = 5;

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn report(what: &str, direct: &mut [Duration], lb: &mut [Duration]) {
    direct.sort();
    lb.sort();
    for (p, name) in [(0.5, "p50"), (0.99, "p99")] {
        let (d, l) = (pct(direct, p), pct(lb, p));
        println!(
            "{what:<28} {name}: direct {:.3} ms, through balancer {:.3} ms, added {:+.3} ms, ratio {:.2}x",
            ms(d),
            ms(l),
            ms(l) - ms(d),
            l.as_secs_f64() / d.as_secs_f64()
        );
    }
}

async fn wait_health(lb: &ApiLb, addr: SocketAddr, want: Health) {
    let a = addr.to_string();
    tokio::time::timeout(
        Duration::from_secs(30),
        lb.wait_until(|s| s.iter().any(|b| b.addr == a && b.health == want)),
    )
    .await
    .expect("balancer state");
}

#[tokio::main]
async fn main() {
    let iters: usize = std::env::var("MKECTL_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let tmp = tempfile::tempdir().unwrap();
    let pki = support::make_pki(tmp.path());
    let node_cert = tmp.path().join("kubelet-client-current.pem");
    support::write_client_cert(&pki, Ca::Cluster, "system:node:bench", &node_cert);
    let client = support::client_tls(&pki.ca.cert, &pki.admin.cert, &pki.admin.key);

    let backend = Backend::start("a", &pki).await;
    let (tx, rx) = watch::channel(vec![backend.addr]);
    let cancel = CancellationToken::new();
    let health = HttpsHealthCheck::new(
        pki.ca.cert.clone(),
        Some(ClientIdentity {
            cert: node_cert.clone(),
            key: node_cert.clone(),
        }),
    );
    let lb = ApiLb::start(
        ApiLbConfig::new("127.0.0.1:0".parse().unwrap(), health),
        rx,
        cancel.clone(),
    )
    .await
    .unwrap();
    wait_health(&lb, backend.addr, Health::Up).await;
    println!(
        "apilb bench: {iters} requests kept-alive, {} on new connections, per path",
        iters / 10
    );

    // Kept-alive.
    let mut direct_conn = Conn::open(backend.addr, client.clone()).await.unwrap();
    let mut lb_conn = Conn::open(lb.local_addr(), client.clone()).await.unwrap();
    for _ in 0..200 {
        direct_conn.get("/readyz").await.unwrap();
        lb_conn.get("/readyz").await.unwrap();
    }
    let (mut d, mut l) = (Vec::with_capacity(iters), Vec::with_capacity(iters));
    for i in 0..iters {
        // Alternate which path goes first.
        for path in [i % 2, 1 - i % 2] {
            let conn = if path == 0 {
                &mut direct_conn
            } else {
                &mut lb_conn
            };
            let t = Instant::now();
            let (status, _) = conn.get("/readyz").await.unwrap();
            let took = t.elapsed();
            assert_eq!(status, 200);
            if path == 0 {
                d.push(took)
            } else {
                l.push(took)
            }
        }
    }
    report("GET /readyz kept-alive", &mut d, &mut l);
    drop((direct_conn, lb_conn));

    // New connection per request.
    let n = (iters / 10).max(10);
    let (mut d, mut l) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        for path in [i % 2, 1 - i % 2] {
            let addr = if path == 0 {
                backend.addr
            } else {
                lb.local_addr()
            };
            let t = Instant::now();
            let (status, _) = get_once(addr, client.clone(), "/readyz").await.unwrap();
            let took = t.elapsed();
            assert_eq!(status, 200);
            if path == 0 {
                d.push(took)
            } else {
                l.push(took)
            }
        }
    }
    report("GET /readyz new connection", &mut d, &mut l);

    // Failover, active check: kill with no traffic.
    let survivor = Backend::start("survivor", &pki).await;
    let mut active = Vec::new();
    let mut passive = Vec::new();
    let mut hung = Vec::new();
    for run in 0..FAILOVER_RUNS {
        let victim = Backend::start(&format!("victim-{run}"), &pki).await;
        tx.send(vec![victim.addr, survivor.addr]).unwrap();
        wait_health(&lb, victim.addr, Health::Up).await;
        wait_health(&lb, survivor.addr, Health::Up).await;
        // Kill at a random point between two probes.
        tokio::time::sleep(Duration::from_millis(137 * (run as u64 + 1) % 1000)).await;
        let t = Instant::now();
        victim.kill().await;
        wait_health(&lb, victim.addr, Health::Down).await;
        active.push(t.elapsed());

        // Passive: kill and connect at once, the victim first in line.
        let victim = Backend::start(&format!("victim-p{run}"), &pki).await;
        tx.send(vec![victim.addr]).unwrap();
        wait_health(&lb, victim.addr, Health::Up).await;
        tx.send(vec![victim.addr, survivor.addr]).unwrap();
        wait_health(&lb, survivor.addr, Health::Up).await;
        let t = Instant::now();
        victim.kill().await;
        loop {
            assert!(t.elapsed() < Duration::from_secs(30), "no backend answered");
            if let Ok((200, body)) = get_once(lb.local_addr(), client.clone(), "/id").await {
                if body.as_ref() == b"survivor" {
                    break;
                }
            }
        }
        passive.push(t.elapsed());

        // Hung: the port accepts TCP but nothing answers.
        let victim = Backend::start(&format!("victim-h{run}"), &pki).await;
        tx.send(vec![victim.addr, survivor.addr]).unwrap();
        wait_health(&lb, victim.addr, Health::Up).await;
        tokio::time::sleep(Duration::from_millis(137 * (run as u64 + 1) % 1000)).await;
        let t = Instant::now();
        victim.kill().await;
        let squatter = tokio::net::TcpListener::bind(victim.addr).await.unwrap();
        wait_health(&lb, victim.addr, Health::Down).await;
        hung.push(t.elapsed());
        drop(squatter);
    }
    let show = |v: &[Duration]| {
        v.iter()
            .map(|d| format!("{:.0}", ms(*d)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let max = |v: &[Duration]| v.iter().max().copied().unwrap_or_default();
    println!(
        "failover, killed backend, active check (marked down): [{}] ms, max {:.0} ms (bound 2000 ms)",
        show(&active),
        ms(max(&active))
    );
    println!(
        "failover, killed backend, new connection answered by another backend: [{}] ms, max {:.1} ms",
        passive
            .iter()
            .map(|d| format!("{:.2}", ms(*d)))
            .collect::<Vec<_>>()
            .join(", "),
        ms(max(&passive))
    );
    println!(
        "failover, hung backend (accepts, never answers), marked down: [{}] ms, max {:.0} ms (bound 2000 ms)",
        show(&hung),
        ms(max(&hung))
    );
    let m = lb.metrics();
    for line in m.lines().filter(|l| {
        l.starts_with("mkectl_apilb_failovers_total")
            || l.starts_with("mkectl_apilb_connections_unroutable_total")
    }) {
        println!("{line}");
    }
    cancel.cancel();
    lb.join().await;
}
