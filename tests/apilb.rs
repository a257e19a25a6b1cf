//! The node-local apiserver load balancer on loopback, with stand-in
//! apiservers speaking real TLS (mkectl's PKI) and requiring a client
//! certificate from the cluster CA, as kube-apiserver does.

#[allow(dead_code)]
#[path = "common/apilb.rs"]
mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use mkectl::apilb::{ApiLb, ApiLbConfig, BackendStatus, Health, HttpsHealthCheck};
use mkectl::components::api_lb::{ApiLbSettings, ApiLoadBalancer};
use mkectl::components::Component;
use mkectl::https_probe::ClientIdentity;
use mkectl::pki::{Ca, PkiPaths};
use support::{get_once, Backend, Conn};

/// Generous bound on any wait for the balancer's state (the failover bound is
/// 2 s; this only keeps a broken test from hanging).
const WAIT: Duration = Duration::from_secs(15);

struct Fixture {
    _tmp: tempfile::TempDir,
    pki: PkiPaths,
    /// The balancer's probe identity (cert + key in one file).
    node_cert: PathBuf,
    client: Arc<rustls::ClientConfig>,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let pki = support::make_pki(tmp.path());
    let node_cert = tmp.path().join("kubelet-client-current.pem");
    support::write_client_cert(&pki, Ca::Cluster, "system:node:worker-1", &node_cert);
    let client = support::client_tls(&pki.ca.cert, &pki.admin.cert, &pki.admin.key);
    Fixture {
        _tmp: tmp,
        pki,
        node_cert,
        client,
    }
}

fn config(ca: &Path, identity: &Path) -> ApiLbConfig {
    let health = HttpsHealthCheck::new(
        ca.to_path_buf(),
        Some(ClientIdentity {
            cert: identity.to_path_buf(),
            key: identity.to_path_buf(),
        }),
    );
    ApiLbConfig::new("127.0.0.1:0".parse().unwrap(), health)
}

async fn start(
    f: &Fixture,
    backends: &[&Backend],
) -> (ApiLb, watch::Sender<Vec<SocketAddr>>, CancellationToken) {
    let (tx, rx) = watch::channel(backends.iter().map(|b| b.addr).collect());
    let cancel = CancellationToken::new();
    let lb = ApiLb::start(config(&f.pki.ca.cert, &f.node_cert), rx, cancel.clone())
        .await
        .unwrap();
    (lb, tx, cancel)
}

fn health_of(status: &[BackendStatus], addr: SocketAddr) -> Option<Health> {
    status
        .iter()
        .find(|b| b.addr == addr.to_string())
        .map(|b| b.health)
}

async fn wait(lb: &ApiLb, what: &str, pred: impl FnMut(&[BackendStatus]) -> bool) {
    if tokio::time::timeout(WAIT, lb.wait_until(pred))
        .await
        .is_err()
    {
        panic!("{what}: not within {WAIT:?}; status {:#?}", lb.status());
    }
}

async fn wait_all_up(lb: &ApiLb, n: usize) {
    wait(lb, "all backends up", |s| {
        s.len() == n && s.iter().all(|b| b.healthy)
    })
    .await;
}

/// `n` requests to `/id`, each on a new connection through the balancer;
/// counts per backend name. Every request must succeed.
async fn spread(
    lb: &ApiLb,
    client: &Arc<rustls::ClientConfig>,
    n: usize,
) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for i in 0..n {
        let (status, body) = get_once(lb.local_addr(), client.clone(), "/id")
            .await
            .unwrap_or_else(|e| panic!("request {i} through the balancer failed: {e}"));
        assert_eq!(status, 200);
        *counts
            .entry(String::from_utf8_lossy(&body).to_string())
            .or_insert(0) += 1;
    }
    counts
}

#[tokio::test]
async fn connections_spread_across_three_backends_end_to_end_tls() {
    let f = fixture();
    let b = [
        Backend::start("a", &f.pki).await,
        Backend::start("b", &f.pki).await,
        Backend::start("c", &f.pki).await,
    ];
    let (lb, _tx, cancel) = start(&f, &[&b[0], &b[1], &b[2]]).await;
    wait_all_up(&lb, 3).await;

    let counts = spread(&lb, &f.client, 30).await;
    eprintln!("30 new connections spread as {counts:?}");
    for name in ["a", "b", "c"] {
        let n = counts.get(name).copied().unwrap_or(0);
        assert!(n >= 5, "backend {name} got {n} of 30: {counts:?}");
    }

    // Bytes go both ways unchanged, and the client certificate reaches the
    // backend (TLS end to end: the balancer sees only ciphertext).
    let mut conn = Conn::open(lb.local_addr(), f.client.clone()).await.unwrap();
    let payload = Bytes::from(vec![7u8; 1 << 20]);
    let (status, echoed) = conn
        .request("POST", "/echo", payload.clone())
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(echoed, payload);

    let status = lb.status();
    let total: u64 = status.iter().map(|s| s.total_connections).sum();
    assert!(total >= 31, "{status:#?}");
    let metrics = lb.metrics();
    for b in &b {
        assert!(
            metrics.contains(&format!(
                "mkectl_apilb_backend_healthy{{backend=\"{}\"}} 1\n",
                b.addr
            )),
            "{metrics}"
        );
    }
    assert!(metrics.contains("# TYPE mkectl_apilb_failovers_total counter"));
    assert!(metrics.contains("mkectl_apilb_listening 1\n"));

    cancel.cancel();
    drop(conn);
    lb.join().await;
}

#[tokio::test]
async fn killed_backend_is_out_within_the_bound_and_new_connections_never_fail() {
    let f = fixture();
    let b = [
        Backend::start("a", &f.pki).await,
        Backend::start("b", &f.pki).await,
        Backend::start("c", &f.pki).await,
    ];
    let (lb, _tx, cancel) = start(&f, &[&b[0], &b[1], &b[2]]).await;
    wait_all_up(&lb, 3).await;

    // Active check alone: no traffic while the backend dies.
    let t0 = Instant::now();
    b[0].kill().await;
    let dead = b[0].addr;
    wait(&lb, "killed backend down", |s| {
        health_of(s, dead) == Some(Health::Down)
    })
    .await;
    let took = t0.elapsed();
    eprintln!("apilb: killed backend marked down by the active check after {took:?}");
    assert!(took < Duration::from_secs(3), "down after {took:?}");
    let err = lb
        .status()
        .into_iter()
        .find(|s| s.addr == dead.to_string())
        .and_then(|s| s.last_check_error)
        .unwrap_or_default();
    assert!(err.contains("connect"), "{err}");

    // Passive check: kill a second one and connect at once, before any
    // probe ran: every new connection lands on the survivor.
    let t0 = Instant::now();
    b[1].kill().await;
    let counts = spread(&lb, &f.client, 20).await;
    eprintln!(
        "apilb: second backend killed; 20 new connections right after all served (in {:?}): {counts:?}",
        t0.elapsed()
    );
    assert_eq!(counts.get("c"), Some(&20), "{counts:?}");
    wait(&lb, "second backend down", |s| {
        health_of(s, b[1].addr) == Some(Health::Down)
    })
    .await;
    assert!(lb
        .metrics()
        .contains("mkectl_apilb_connections_unroutable_total 0\n"));
    cancel.cancel();
    lb.join().await;
}

#[tokio::test]
async fn readyz_500_takes_a_backend_out_of_rotation_and_200_brings_it_back() {
    let f = fixture();
    let b = [
        Backend::start("a", &f.pki).await,
        Backend::start("b", &f.pki).await,
        Backend::start("c", &f.pki).await,
    ];
    let (lb, _tx, cancel) = start(&f, &[&b[0], &b[1], &b[2]]).await;
    wait_all_up(&lb, 3).await;

    b[1].readyz.store(500, std::sync::atomic::Ordering::Relaxed);
    wait(&lb, "backend b down", |s| {
        health_of(s, b[1].addr) == Some(Health::Down)
    })
    .await;
    let st = lb.status();
    let err = st
        .iter()
        .find(|s| s.addr == b[1].addr.to_string())
        .and_then(|s| s.last_check_error.clone())
        .unwrap_or_default();
    assert!(err.contains("500") && err.contains("etcd failed"), "{err}");
    let metrics = lb.metrics();
    assert!(
        metrics.contains(&format!(
            "mkectl_apilb_backend_healthy{{backend=\"{}\"}} 0\n",
            b[1].addr
        )),
        "{metrics}"
    );

    let counts = spread(&lb, &f.client, 20).await;
    assert_eq!(counts.get("b"), None, "{counts:?}");
    assert_eq!(counts.values().sum::<usize>(), 20);

    b[1].readyz.store(200, std::sync::atomic::Ordering::Relaxed);
    wait_all_up(&lb, 3).await;
    let counts = spread(&lb, &f.client, 12).await;
    assert!(counts.get("b").copied().unwrap_or(0) >= 2, "{counts:?}");
    cancel.cancel();
    lb.join().await;
}

#[tokio::test]
async fn backend_set_follows_the_watch_channel() {
    let f = fixture();
    let b = [
        Backend::start("a", &f.pki).await,
        Backend::start("b", &f.pki).await,
        Backend::start("c", &f.pki).await,
    ];
    let (lb, tx, cancel) = start(&f, &[&b[0]]).await;
    wait_all_up(&lb, 1).await;
    assert_eq!(spread(&lb, &f.client, 3).await.get("a"), Some(&3));

    tx.send(vec![b[1].addr, b[2].addr]).unwrap();
    wait(&lb, "new set up", |s| {
        s.len() == 2
            && health_of(s, b[1].addr) == Some(Health::Up)
            && health_of(s, b[2].addr) == Some(Health::Up)
    })
    .await;
    let counts = spread(&lb, &f.client, 10).await;
    assert_eq!(counts.get("a"), None, "{counts:?}");
    assert_eq!(counts.values().sum::<usize>(), 10);

    // The removed backend's checker stopped: its probe count stays put for
    // longer than an interval (an absence: nothing to wait for but time).
    let probes = b[0].probes.load(std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        b[0].probes.load(std::sync::atomic::Ordering::Relaxed),
        probes
    );

    // An empty set: connections are closed, counted as unroutable.
    tx.send(vec![]).unwrap();
    wait(&lb, "empty set", |s| s.is_empty()).await;
    assert!(get_once(lb.local_addr(), f.client.clone(), "/id")
        .await
        .is_err());
    assert!(lb
        .metrics()
        .contains("mkectl_apilb_connections_unroutable_total 1\n"));
    cancel.cancel();
    lb.join().await;
}

#[tokio::test]
async fn client_certificate_replaced_on_disk_is_used_by_the_next_probes() {
    let f = fixture();
    // Start with a certificate the apiserver does not accept (konnectivity
    // CA, like the worker's agent certificate).
    support::write_client_cert(&f.pki, Ca::Konnectivity, "agent", &f.node_cert);
    let b = Backend::start("a", &f.pki).await;
    let (lb, _tx, cancel) = start(&f, &[&b]).await;
    wait(&lb, "backend down with the wrong identity", |s| {
        s[0].health == Health::Down
    })
    .await;
    eprintln!("wrong identity: {:?}", lb.status()[0].last_check_error);

    // Cold start without a healthy backend still forwards (try all).
    let (status, _) = get_once(lb.local_addr(), f.client.clone(), "/id")
        .await
        .unwrap();
    assert_eq!(status, 200);

    support::write_client_cert(&f.pki, Ca::Cluster, "system:node:worker-1", &f.node_cert);
    wait(&lb, "backend up with the node identity", |s| s[0].healthy).await;
    assert_eq!(
        b.last_probe_cn.lock().unwrap().as_deref(),
        Some("system:node:worker-1")
    );

    // A rotation: same name in real life; another here so the test sees it.
    support::write_client_cert(&f.pki, Ca::Cluster, "system:node:rotated", &f.node_cert);
    let t0 = Instant::now();
    wait(&lb, "rotated certificate presented", |_| {
        b.last_probe_cn.lock().unwrap().as_deref() == Some("system:node:rotated")
    })
    .await;
    eprintln!(
        "rotated client certificate presented {:?} after the rename",
        t0.elapsed()
    );
    assert!(lb.status()[0].healthy);

    // The identity file vanishes: health unknown (not down), and the
    // component still counts as ready (see components::api_lb).
    std::fs::remove_file(&f.node_cert).unwrap();
    wait(&lb, "unknown without identity", |s| {
        s[0].health == Health::Unknown
    })
    .await;
    cancel.cancel();
    lb.join().await;
}

#[tokio::test]
async fn cancel_stops_accepting_and_drains_open_connections_until_the_deadline() {
    let f = fixture();
    let b = Backend::start("a", &f.pki).await;
    let (tx, rx) = watch::channel(vec![b.addr]);
    let cancel = CancellationToken::new();
    let mut cfg = config(&f.pki.ca.cert, &f.node_cert);
    cfg.drain_timeout = Duration::from_millis(1500);
    let lb = ApiLb::start(cfg, rx, cancel.clone()).await.unwrap();
    wait_all_up(&lb, 1).await;
    let addr = lb.local_addr();

    let mut open = Conn::open(addr, f.client.clone()).await.unwrap();
    assert_eq!(open.get("/id").await.unwrap().0, 200);
    let t0 = Instant::now();
    cancel.cancel();
    wait(&lb, "listener closed", |_| !lb.listening()).await;
    // New connections are refused...
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    // ...while the open one still works during the drain.
    assert_eq!(open.get("/id").await.unwrap().0, 200);
    lb.join().await;
    let took = t0.elapsed();
    eprintln!("drain ended after {took:?} (deadline 1.5 s)");
    assert!(took >= Duration::from_millis(1400), "{took:?}");
    // After the deadline the connection is gone.
    assert!(open.get("/id").await.is_err());
    drop(tx);
}

#[tokio::test]
async fn component_is_ready_with_a_healthy_backend_and_stops_cleanly() {
    let f = fixture();
    let b = Backend::start("a", &f.pki).await;
    let (_tx, rx) = watch::channel(vec![b.addr]);
    let mut c = ApiLoadBalancer::new(ApiLbSettings {
        config: config(&f.pki.ca.cert, &f.node_cert),
        backends: rx,
    });
    assert_eq!(c.name(), mkectl::components::api_lb::NAME);
    let monitor = c.monitor();
    assert!(monitor.status().is_empty());
    c.init().await.unwrap();
    assert!(c.ready().await.is_err());
    c.start().await.unwrap();
    let lb = c.balancer().unwrap();
    wait_all_up(lb, 1).await;
    c.ready().await.unwrap();
    let peers = c.peers().unwrap();
    assert_eq!(peers.connected, vec![b.addr.to_string()]);
    assert!(monitor.status()[0].healthy);
    assert!(monitor.metrics().contains(&format!(
        "mkectl_apilb_backend_healthy{{backend=\"{}\"}} 1\n",
        b.addr
    )));

    b.kill().await;
    let lb = c.balancer().unwrap();
    wait(lb, "down", |s| !s[0].healthy).await;
    let e = c.ready().await.unwrap_err().to_string();
    assert!(e.contains("no healthy apiserver backend"), "{e}");

    c.stop().await.unwrap();
    c.stop().await.unwrap();
    assert!(c.ready().await.is_err());
    assert!(monitor.status().is_empty() && monitor.metrics().is_empty());
}

#[tokio::test]
async fn component_is_ready_before_the_probe_identity_exists() {
    let f = fixture();
    std::fs::remove_file(&f.node_cert).unwrap();
    let b = Backend::start("a", &f.pki).await;
    let (_tx, rx) = watch::channel(vec![b.addr]);
    let mut c = ApiLoadBalancer::new(ApiLbSettings {
        config: config(&f.pki.ca.cert, &f.node_cert),
        backends: rx,
    });
    c.start().await.unwrap();
    let lb = c.balancer().unwrap();
    wait(lb, "checked", |s| s[0].last_check_error.is_some()).await;
    c.ready().await.unwrap();
    // And it forwards.
    let (status, _) = get_once(lb.local_addr(), f.client.clone(), "/id")
        .await
        .unwrap();
    assert_eq!(status, 200);
    c.stop().await.unwrap();
}
