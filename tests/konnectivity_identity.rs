//! Issue 17, item 3: a konnectivity agent is who its certificate says.
//!
//! A real controller (etcd, konnectivity server, join API) and two real
//! workers that joined with a token on their own loopback addresses. An
//! agent process presenting worker w1's certificate (the one the join API
//! issued) but claiming w2's id and address is refused, with a log line and
//! a metric, and the apiserver's dials to w2's address keep reaching w2's
//! own agent; claiming only w2's id registers it as w1. The standalone
//! `mkectl konnectivity server` applies the same rule by default and takes
//! `--agent-identity headers` for agents that share one certificate.
//!
//! Network safety: everything is on 127.0.0.0/8.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::join::{ctl_args, token_create, wait_log};
use common::konnectivity::{http_get, http_request, http_target_on, pki, start_agent, wait_until};
use common::konnectivity_cmd::{agent_command, server_command, Flavor, KonnOpts};
use common::*;
use mkectl::konnectivity::client::dial_grpc_uds;
use mkectl::konnectivity::TlsFiles;

const START: Duration = Duration::from_secs(60);
const W1_IP: &str = "127.0.0.71";
const W2_IP: &str = "127.0.0.72";

/// `(agent id, streams)` listed by a konnectivity admin port's
/// `/readyz?verbose`.
async fn agents(admin: SocketAddr) -> Vec<(String, usize)> {
    let (_, body) = http_get(admin, "/readyz?verbose").await;
    let mut v: Vec<(String, usize)> = body
        .lines()
        .filter_map(|l| {
            let (id, rest) = l.strip_prefix("agent ")?.split_once(" streams=")?;
            Some((
                id.to_string(),
                rest.split_whitespace().next()?.parse().ok()?,
            ))
        })
        .collect();
    v.sort();
    v
}

/// The value of one series (exact name and labels) on a `/metrics` page.
async fn metric(admin: SocketAddr, series: &str) -> Option<f64> {
    let (_, page) = http_get(admin, "/metrics").await;
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Dials served by an agent, from its own admin port.
async fn dials_served(agent_admin: SocketAddr) -> f64 {
    metric(
        agent_admin,
        "konnectivity_network_proxy_agent_dial_duration_seconds_count",
    )
    .await
    .unwrap_or(0.0)
}

/// `mkectl konnectivity agent` with `cert`/`key` (issued for some node),
/// claiming `agent_id` and `identifiers`; logs to `log`.
fn spawn_agent(
    dir: &Path,
    server: SocketAddr,
    ca: &Path,
    agent_id: &str,
    identifiers: &str,
    admin_port: u16,
    log: &Path,
) -> Child {
    let tls = TlsFiles {
        cert: dir.join("agent.crt"),
        key: dir.join("agent.key"),
        ca: ca.to_path_buf(),
    };
    agent_command(
        Flavor::Mkectl,
        &tls,
        agent_id,
        server,
        admin_port,
        KonnOpts {
            identifiers: Some(identifiers),
            sync_interval: Some("200ms"),
            extra: &["--admin-bind-address", "127.0.0.1"],
            ..Default::default()
        },
    )
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(log).unwrap())
    .spawn()
    .unwrap()
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_cannot_claim_another_nodes_identity() {
    let c1 = Node::with_address("idc1", "127.0.0.70", "");
    let mut p1 = c1.start_controller(&ctl_args(&[]));
    wait_log(&mut p1, "controller ready", START);
    let tok = token_create(&c1, "worker", &[]);
    let admin = SocketAddr::from(([127, 0, 0, 1], c1.konnectivity_admin_port));
    let agent_port = SocketAddr::new("127.0.0.70".parse().unwrap(), c1.konnectivity_agent_port);

    // Two workers join on their own addresses and connect as themselves.
    let w1 = Node::with_address("idw1", W1_IP, "");
    let w2 = Node::with_address("idw2", W2_IP, "");
    let mut workers = Vec::new();
    for (w, ip) in [(&w1, W1_IP), (&w2, W2_IP)] {
        let port = w.spare_port.to_string();
        let mut p = w.start_worker(&[
            "--token",
            &tok,
            "--address",
            ip,
            "--agent-admin-port",
            &port,
        ]);
        wait_log(&mut p, "worker ready", START);
        workers.push(p);
    }
    let legit = vec![("idw1".to_string(), 1), ("idw2".to_string(), 1)];
    let end = Instant::now() + Duration::from_secs(20);
    while agents(admin).await != legit {
        assert!(
            Instant::now() < end,
            "workers' agents: {:?}",
            agents(admin).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The join API wrote the node name and the joined address into w1's
    // certificate (openssl reads it).
    let text = output_ok(
        Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in"])
            .arg(w1.data.join("pki/konnectivity/agent.crt")),
    );
    assert!(text.contains("CN = konnectivity-agent:idw1"), "{text}");
    assert!(text.contains(&format!("IP Address:{W1_IP}")), "{text}");

    // The attacker: w1's certificate and key, claiming w2's id and address.
    let stolen = tempfile::tempdir().unwrap();
    for f in ["agent.crt", "agent.key"] {
        std::fs::copy(
            w1.data.join("pki/konnectivity").join(f),
            stolen.path().join(f),
        )
        .unwrap();
    }
    let ca = w1.data.join("pki/konnectivity/ca.crt");
    let [thief_admin_port] = free_ports();
    let thief_admin = SocketAddr::from(([127, 0, 0, 1], thief_admin_port));
    let thief_log = stolen.path().join("thief.log");
    let refused =
        "konnectivity_network_proxy_server_agent_identity_refused_total{reason=\"identifiers\"}";
    assert_eq!(metric(admin, refused).await, Some(0.0));
    let thief = Killed(spawn_agent(
        stolen.path(),
        agent_port,
        &ca,
        "idw2",
        &format!("host={W2_IP}"),
        thief_admin_port,
        &thief_log,
    ));
    let end = Instant::now() + Duration::from_secs(20);
    while metric(admin, refused).await.unwrap_or(0.0) < 2.0 {
        assert!(
            Instant::now() < end,
            "the impostor was never refused; controller log:\n{}",
            p1.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Refused every time it tries, never registered.
    assert_eq!(agents(admin).await, legit);
    let log = p1.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("agent refused: identity not backed by its certificate"))
        .unwrap_or_else(|| panic!("no refusal logged:\n{log}"));
    assert!(
        line.contains(W2_IP) && line.contains("certificate of idw1") && line.contains(W1_IP),
        "{line}"
    );
    // The agent is told why.
    let end = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&thief_log)
        .unwrap_or_default()
        .contains("does not belong to the certificate of idw1")
    {
        assert!(
            Instant::now() < end,
            "{}",
            std::fs::read_to_string(&thief_log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // What kube-apiserver does: dials to w2's address through the
    // controller's socket. Every one is served by w2's own agent.
    let target_l = tokio::net::TcpListener::bind((W2_IP, 0)).await.unwrap();
    let target = target_l.local_addr().unwrap().to_string();
    let _stop = http_target_on(target_l);
    let agent_admin = |w: &Node| SocketAddr::from(([127, 0, 0, 1], w.spare_port));
    let before = [
        dials_served(agent_admin(&w1)).await,
        dials_served(agent_admin(&w2)).await,
    ];
    let uds = c1.run.join("konnectivity-server.sock");
    for _ in 0..10 {
        let mut c = dial_grpc_uds(&uds, &target).await.unwrap();
        let (status, body) = http_request(
            &mut c,
            "GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(
            (status.as_str(), body.as_slice()),
            ("HTTP/1.1 200 OK", &b"hello"[..])
        );
    }
    let after = [
        dials_served(agent_admin(&w1)).await,
        dials_served(agent_admin(&w2)).await,
    ];
    assert_eq!(
        after[1] - before[1],
        10.0,
        "w2's agent served {before:?} -> {after:?}"
    );
    assert_eq!(after[0], before[0], "w1's agent served dials for w2");
    assert_eq!(dials_served(thief_admin).await, 0.0);
    drop(thief);

    // Claiming only w2's id: connected, but as w1 (its certificate).
    let ignored = "konnectivity_network_proxy_server_agent_id_header_ignored_total";
    let _renamed = Killed(spawn_agent(
        stolen.path(),
        agent_port,
        &ca,
        "idw2",
        &format!("host={W1_IP}"),
        thief_admin_port,
        &stolen.path().join("renamed.log"),
    ));
    let want = vec![("idw1".to_string(), 2), ("idw2".to_string(), 1)];
    let end = Instant::now() + Duration::from_secs(20);
    while agents(admin).await != want {
        assert!(Instant::now() < end, "agents: {:?}", agents(admin).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(metric(admin, ignored).await.unwrap_or(0.0) >= 1.0);
    assert!(p1
        .log_text()
        .contains("agent's agentid header differs from its certificate"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_server_binds_identities_unless_told_headers() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    for (mode, accepted) in [(None, false), (Some("headers"), true)] {
        let [agent_port, admin_port] = free_ports();
        let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
        let uds = dir
            .path()
            .join(format!("{}.sock", mode.unwrap_or("default")));
        let mut cmd = server_command(
            Flavor::Mkectl,
            &pki.server,
            "s1",
            &uds,
            agent_port,
            admin_port,
            KonnOpts {
                agent_identity: mode,
                ..Default::default()
            },
        );
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        let _server = Killed(cmd.spawn().unwrap());
        wait_until(Duration::from_secs(20), "server admin port", || {
            std::net::TcpStream::connect(admin).is_ok()
        })
        .await;
        // The shared test certificate (CN konnectivity-agent, no address)
        // with host=127.0.0.1.
        let a = start_agent(
            &pki.agent,
            &[SocketAddr::from(([127, 0, 0, 1], agent_port))],
        )
        .await;
        if accepted {
            let h = &a.handle;
            wait_until(Duration::from_secs(20), "agent connected", || {
                h.connected_servers() == vec!["s1".to_string()]
            })
            .await;
            let listed = agents(admin).await;
            assert_eq!(listed.len(), 1);
            assert!(
                listed[0].0.starts_with("agent-"),
                "header id kept: {listed:?}"
            );
        } else {
            let series =
                "konnectivity_network_proxy_server_agent_identity_refused_total{reason=\"identifiers\"}";
            let end = Instant::now() + Duration::from_secs(20);
            while metric(admin, series).await.unwrap_or(0.0) < 1.0 {
                assert!(Instant::now() < end, "never refused");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert!(a.handle.connected_servers().is_empty());
            assert!(agents(admin).await.is_empty());
        }
        a.token.cancel();
    }
}
