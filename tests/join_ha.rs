//! HA without a load balancer, with real processes on their own loopback
//! addresses and real etcd: one controller bootstraps, two join with a
//! controller token (etcd: 3 voting members); a worker's agent connects to
//! every controller; a fourth controller added later gets the running
//! worker's agent within the refresh interval; a killed controller leaves a
//! quorum that still serves joins, and comes back without a token; `reset`
//! removes a controller's member and data and the rest stays healthy.
//!
//! One cluster is reused across the steps to keep the file fast; each step
//! says what it proves. Timings of the two targets are printed.

mod common;

use std::time::{Duration, Instant};

use common::join::*;
use common::*;

const START: Duration = Duration::from_secs(60);
const REFRESH: &str = "1s";

fn voting(members: &[(String, bool)]) -> Vec<&str> {
    members
        .iter()
        .filter(|(_, learner)| !learner)
        .map(|(n, _)| n.as_str())
        .collect()
}

async fn all_ready(ports: &[u16]) -> bool {
    for p in ports {
        if readyz(*p).await != 200 {
            return false;
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread")]
async fn ha_controllers_workers_and_reset() {
    // --- 1. c1 bootstraps; c2 and c3 join with one controller token.
    let c1 = Node::with_address("c1", "127.0.0.1", "");
    let mut p1 = c1.start_controller(&ctl_args(&[]));
    wait_log(&mut p1, "controller ready", START);
    let ctok = token_create(&c1, "controller", &["--description", "ha test"]);
    let ctok_file = token_file(&c1, "controller.token", &ctok);
    let ctok_arg = ctok_file.to_str().unwrap();

    let c2 = Node::with_address("c2", "127.0.0.2", "");
    let c3 = Node::with_address("c3", "127.0.0.3", "");
    let mut joins = Vec::new();
    let mut p2 = None;
    let mut p3 = None;
    for (node, slot) in [(&c2, &mut p2), (&c3, &mut p3)] {
        let t0 = Instant::now();
        let mut p = node.start_controller(&ctl_args(&["--token-file", ctok_arg]));
        until(&format!("{} votes in etcd", node.name), START, || async {
            members(&c1)
                .await
                .is_some_and(|m| voting(&m).contains(&node.name.as_str()))
        })
        .await;
        joins.push((node.name.clone(), t0.elapsed()));
        wait_log(&mut p, "controller ready", START);
        assert!(node.data.join("join.json").exists());
        *slot = Some(p);
    }
    let (mut p2, mut p3) = (p2.unwrap(), p3.unwrap());
    for (name, d) in &joins {
        println!(
            "TARGET controller join to voting etcd member ({name}): {} ms (target < 10000 ms)",
            d.as_millis()
        );
    }
    let m = members(&c1).await.unwrap();
    assert_eq!(voting(&m), ["c1", "c2", "c3"], "{m:?}");
    assert_eq!(m.len(), 3, "no learner left over: {m:?}");
    // Same trust everywhere: the joiners hold the first controller's CAs
    // and issued their own leaves from them.
    for rel in [
        "ca.crt",
        "etcd/ca.crt",
        "front-proxy-ca.crt",
        "konnectivity/ca.crt",
        "sa.pub",
    ] {
        assert_eq!(
            std::fs::read(c1.pki(rel)).unwrap(),
            std::fs::read(c3.pki(rel)).unwrap(),
            "{rel} differs"
        );
    }
    assert_ne!(
        std::fs::read(c1.pki("etcd/peer.crt")).unwrap(),
        std::fs::read(c3.pki("etcd/peer.crt")).unwrap()
    );

    // --- 2. A worker joins; its agent connects to all three controllers
    // (each konnectivity server's /readyz turns 200).
    let wtok = token_create(&c1, "worker", &[]);
    let w1 = Node::with_address("w1", "127.0.0.10", "");
    let admin = free_port().to_string();
    let t0 = Instant::now();
    let mut pw1 = w1.start_worker(&[
        "--token",
        &wtok,
        "--address",
        "127.0.0.10",
        "--refresh-interval",
        REFRESH,
        "--agent-admin-port",
        &admin,
    ]);
    let admin_ports = [
        c1.konnectivity_admin_port,
        c2.konnectivity_admin_port,
        c3.konnectivity_admin_port,
    ];
    until(
        "agent connected to c1, c2, c3",
        Duration::from_secs(20),
        || all_ready(&admin_ports),
    )
    .await;
    println!(
        "TARGET worker join to agent connected to every controller (3): {} ms (target < 2000 ms)",
        t0.elapsed().as_millis()
    );
    wait_log(&mut pw1, "worker ready", START);
    // Credentials on disk, private where they must be; the key was made here.
    let mode = |p: &std::path::Path| {
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions())
            & 0o777
    };
    assert_eq!(mode(&w1.data.join("pki/konnectivity/agent.key")), 0o600);
    assert_eq!(mode(&w1.data.join("kubelet/bootstrap-kubelet.conf")), 0o600);
    assert_eq!(mode(&w1.data), 0o700);
    let out = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(w1.data.join("kubelet/bootstrap-kubelet.conf"))
        .args(["config", "view", "-o", "jsonpath={.users[0].name}"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "kubelet-bootstrap");
    let worker_state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(w1.data.join("worker.json")).unwrap()).unwrap();
    assert_eq!(worker_state["controllers"].as_array().unwrap().len(), 3);
    // No secret in any log.
    let secret = mkectl::join::JoinToken::decode(&wtok).unwrap().bootstrap;
    for log in [pw1.log_text(), p1.log_text()] {
        assert!(!log.contains(secret.secret()), "token secret logged");
    }

    // --- 3. A fourth controller added later gets the running worker's agent
    // within the refresh interval, with no change on the worker.
    let c4 = Node::with_address("c4", "127.0.0.4", "");
    let mut p4 = c4.start_controller(&ctl_args(&["--token-file", ctok_arg]));
    wait_log(&mut p4, "controller ready", START);
    let t0 = Instant::now();
    until(
        "worker agent reaches c4",
        Duration::from_secs(10),
        || async { readyz(c4.konnectivity_admin_port).await == 200 },
    )
    .await;
    println!(
        "controller added later: agent connected {} ms after it registered (refresh interval {REFRESH})",
        t0.elapsed().as_millis()
    );
    assert_eq!(
        voting(&members(&c1).await.unwrap()),
        ["c1", "c2", "c3", "c4"]
    );
    // Every konnectivity server now announces 4 servers to new agents.
    wait_log(&mut p1, "server_count=4", Duration::from_secs(10));

    // --- 4. kill -9 c3: the rest keep quorum and serve joins.
    signal(p3.pid(), libc::SIGKILL);
    p3.wait_exit(Duration::from_secs(5));
    until("etcd writable without c3", Duration::from_secs(20), || {
        etcd_healthy(&c1)
    })
    .await;
    let wtok2 = token_create(&c2, "worker", &[]);
    let w2 = Node::with_address("w2", "127.0.0.11", "");
    let mut pw2 = w2.start_worker(&[
        "--token",
        &wtok2,
        "--address",
        "127.0.0.11",
        "--refresh-interval",
        REFRESH,
        "--agent-admin-port",
        "0",
    ]);
    wait_log(&mut pw2, "worker ready", START);
    assert!(w2.data.join("worker.json").exists());

    // Restarted without a token, c3 rejoins with its data: its own etcd
    // serves quorum reads again and the worker's agent comes back to it.
    let mut p3 = c3.start_controller(&ctl_args(&[]));
    wait_log(&mut p3, "controller ready", START);
    until("c3 etcd healthy again", Duration::from_secs(20), || {
        etcd_healthy(&c3)
    })
    .await;
    until("agent back on c3", Duration::from_secs(20), || async {
        readyz(c3.konnectivity_admin_port).await == 200
    })
    .await;
    assert_eq!(members(&c3).await.unwrap().len(), 4);

    // --- 5. reset: refused while running, then c4 leaves etcd and its
    // data dir is gone; the remaining cluster is healthy.
    let out = run(&c4, &["reset"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("stop mkectl"), "{}", stderr(&out));
    assert!(c4.data.exists(), "a refused reset removed data");
    signal(p4.pid(), libc::SIGTERM);
    assert!(p4.wait_exit(Duration::from_secs(20)).success());
    let out = run(&c4, &["reset"]);
    assert!(out.status.success(), "reset: {}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("removed etcd member c4"));
    assert!(!c4.data.exists(), "data dir left behind");
    let m = members(&c1).await.unwrap();
    assert_eq!(voting(&m), ["c1", "c2", "c3"], "{m:?}");
    for n in [&c1, &c2, &c3] {
        assert!(
            etcd_healthy(n).await,
            "{} unhealthy after the reset",
            n.name
        );
    }
    until(
        "c1..c3 still serve the agent",
        Duration::from_secs(10),
        || all_ready(&admin_ports),
    )
    .await;

    // A worker reset removes its data.
    signal(pw2.pid(), libc::SIGTERM);
    assert!(pw2.wait_exit(Duration::from_secs(20)).success());
    let out = run(&w2, &["reset"]);
    assert!(out.status.success(), "worker reset: {}", stderr(&out));
    assert!(!w2.data.exists());

    // A worker restarted without a token reuses its credentials and
    // reaches every controller again.
    signal(pw1.pid(), libc::SIGTERM);
    assert!(
        pw1.wait_exit(Duration::from_secs(20)).success(),
        "{}",
        pw1.log_text()
    );
    until(
        "servers see the agent gone",
        Duration::from_secs(10),
        || async { readyz(c1.konnectivity_admin_port).await != 200 },
    )
    .await;
    let mut pw1 = w1.start_worker(&["--refresh-interval", REFRESH, "--agent-admin-port", "0"]);
    until(
        "restarted agent back on c1..c3",
        Duration::from_secs(10),
        || all_ready(&admin_ports),
    )
    .await;
    assert!(
        pw1.log_text().contains("already joined")
            || !pw1.log_text().contains("joining the cluster")
    );

    for p in [&mut pw1, &mut p3, &mut p2, &mut p1] {
        signal(p.pid(), libc::SIGTERM);
        p.wait_exit(Duration::from_secs(30));
    }
}
