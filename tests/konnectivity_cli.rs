//! `mkectl konnectivity server|agent` as real processes: usage errors exit
//! 64, a SIGKILLed agent fails its tunnels without hangs or leaks, SIGTERM
//! stops a server cleanly.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::konnectivity::*;
use common::konnectivity_cmd::{agent_command, server_command, Flavor, KonnOpts};
use mkectl::konnectivity::client::ProxyClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_mkectl");

async fn exit_code(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN).args(args).output().await.unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[tokio::test]
async fn bad_flags_exit_64() {
    let pki = pki();
    let ca = pki.server.ca.to_str().unwrap().to_string();
    let cert = pki.server.cert.to_str().unwrap().to_string();
    let key = pki.server.key.to_str().unwrap().to_string();
    let (code, err) = exit_code(&["konnectivity", "server", "--no-such-flag"]).await;
    assert_eq!(code, 64, "{err}");
    let (code, err) = exit_code(&[
        "konnectivity",
        "server",
        "--cluster-cert",
        &cert,
        "--cluster-key",
        &key,
        "--cluster-ca-cert",
        &ca,
    ])
    .await;
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--uds-name"), "{err}");
    let (code, err) = exit_code(&[
        "konnectivity",
        "server",
        "--uds-name",
        "/tmp/x.sock",
        "--proxy-strategies",
        "nearest",
        "--cluster-cert",
        &cert,
        "--cluster-key",
        &key,
        "--cluster-ca-cert",
        &ca,
    ])
    .await;
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--proxy-strategies"), "{err}");
    let (code, err) = exit_code(&[
        "konnectivity",
        "agent",
        "--ca-cert",
        &ca,
        "--agent-cert",
        &cert,
        "--agent-key",
        &key,
        "--agent-identifiers",
        "zone=a",
    ])
    .await;
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--agent-identifiers"), "{err}");
    let (code, err) = exit_code(&[
        "konnectivity",
        "agent",
        "--ca-cert",
        "/nonexistent",
        "--agent-cert",
        &cert,
        "--agent-key",
        &key,
    ])
    .await;
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--ca-cert"), "{err}");
    for role in ["server", "agent"] {
        let (code, err) = exit_code(&["konnectivity", role, "--worker-threads", "257"]).await;
        assert_eq!(code, 64, "{err}");
        assert!(err.contains("--worker-threads"), "{err}");
    }
    let (code, _) = exit_code(&["konnectivity", "agent", "--help"]).await;
    assert_eq!(code, 0);
}

fn spawn_agent(pki: &Pki, server: std::net::SocketAddr, admin_port: u16) -> Child {
    let cmd = agent_command(
        Flavor::Mkectl,
        &pki.agent,
        "proc-agent",
        server,
        admin_port,
        KonnOpts {
            identifiers: Some("host=127.0.0.1"),
            ..Default::default()
        },
    );
    Command::from(cmd)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_agent_process_fails_its_tunnels_and_leaks_nothing() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let (target, _t) = http_target().await;
    let s = start_server(&pki, dir.path(), "s1").await;
    let admin = free_addr();
    let mut agent = spawn_agent(&pki, s.handle.agent_addr(), admin.port());
    let sh = &s.handle;
    wait_until(Duration::from_secs(20), "agent process connected", || {
        sh.ready_backends() == 1
    })
    .await;
    assert_eq!(s.handle.agents()[0].0, "proc-agent");
    // The agent marks itself ready once it has read the server's headers,
    // a moment after the server registered it.
    let mut ready = (0, String::new());
    for _ in 0..500 {
        ready = http_get(admin, "/readyz").await;
        if ready.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!((ready.0, ready.1.as_str()), (200, "ok"));

    let client = ProxyClient::connect_uds(&s.grpc_uds).await.unwrap();
    let mut conns = Vec::new();
    for _ in 0..20 {
        let mut c = client.dial(&target.to_string()).await.unwrap();
        c.write_all(b"GET /hello HTTP/1.1\r\n").await.unwrap(); // stays open
        conns.push(c);
    }
    let mut http =
        mkectl::konnectivity::client::dial_http_connect_uds(&s.http_uds, &target.to_string())
            .await
            .unwrap();
    assert_eq!(s.handle.stats().established, 21);

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let _ = agent.wait().await;

    for mut c in conns {
        let mut b = [0u8; 16];
        let r = tokio::time::timeout(Duration::from_secs(10), c.read(&mut b))
            .await
            .expect("no hang");
        assert!(r.is_err(), "gRPC frontend gets an error: {r:?}");
    }
    let mut b = [0u8; 16];
    let r = tokio::time::timeout(Duration::from_secs(10), http.read(&mut b))
        .await
        .expect("no hang");
    assert!(matches!(r, Ok(0) | Err(_)), "HTTP-CONNECT socket closed");
    let err = client
        .dial(&target.to_string())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("No agent available"), "{err}");
    drop(client);
    drop(http);
    assert_no_leaks(&s.handle, None).await;
    assert_eq!(s.handle.stats().backends, 0);
    s.token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_process_serves_tunnels_and_stops_on_sigterm() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let (target, _t) = http_target().await;
    let uds = dir.path().join("konnectivity.sock");
    let agent_addr = free_addr();
    let admin = free_addr();
    let cmd = server_command(
        Flavor::Mkectl,
        &pki.server,
        "proc-server",
        &uds,
        agent_addr.port(),
        admin.port(),
        KonnOpts {
            mode: Some("grpc"),
            server_count: Some(1),
            // The test agent shares the test PKI's certificate.
            agent_identity: Some("headers"),
            ..Default::default()
        },
    );
    // A thread per core (the non-default --worker-threads 0) serves too.
    let mut server = Command::from(cmd)
        .args(["--worker-threads", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let a = start_agent(&pki.agent, &[agent_addr]).await;
    let ah = &a.handle;
    wait_until(
        Duration::from_secs(20),
        "agent connected to server process",
        || ah.connected_servers() == vec!["proc-server".to_string()],
    )
    .await;
    let (code, _) = http_get(admin, "/readyz").await;
    assert_eq!(code, 200);
    let (code, page) = http_get(admin, "/metrics").await;
    assert_eq!(code, 200);
    assert!(
        page.contains(
            "konnectivity_network_proxy_server_ready_backends{proxy_strategy=\"default\"} 1"
        ),
        "{page}"
    );
    let client = ProxyClient::connect_uds(&uds).await.unwrap();
    let mut c = client.dial(&target.to_string()).await.unwrap();
    let (status, body) = http_request(&mut c, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(
        (status.as_str(), body.as_slice()),
        ("HTTP/1.1 200 OK", &b"hello"[..])
    );
    drop(c);
    drop(client);

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), server.wait())
        .await
        .expect("server exits")
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!uds.exists(), "socket removed");
    wait_until(Duration::from_secs(10), "agent notices", || {
        ah.connected_servers().is_empty()
    })
    .await;
    a.token.cancel();
}
