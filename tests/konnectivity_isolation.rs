//! Issue 3's isolation proof with real processes on separate "hosts": a
//! controller network namespace and a worker network namespace joined by a
//! veth, and a pod address that exists only inside the worker. From the
//! controller a direct connection to the pod address fails (no route); the
//! same requests through the konnectivity tunnel succeed, over the
//! HTTP-CONNECT frontend (curl in the controller namespace, through a socat
//! TCP→UDS bridge) and over the gRPC frontend (our client on the UDS).
//!
//! `mkectl konnectivity server` runs in the controller namespace with its
//! agent listener on the controller end of the veth; `mkectl konnectivity
//! agent` runs in the worker namespace and dials it across the veth; the
//! HTTP target listens on the pod address inside the worker namespace (its
//! socket is created there by a thread that joined the namespace). The
//! frontends are unix sockets in a temp dir: filesystem objects, not
//! network-namespaced.
//!
//! Network safety: all addresses exist only inside the two namespaces
//! (192.168.251.0/30 on the veth, 10.244.77.5/32 on the worker's `lo`),
//! neither namespace has a default route, and nothing in the host namespace
//! connects to any of them. The namespaces (and every process in them) are
//! removed when the test ends, also on failure. Needs root: CI runs as root,
//! and the test fails (never skips) without it.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use common::konnectivity::*;
use common::netns::{veth, Netns, NsChild};
use mkectl::konnectivity::client::{dial_grpc_uds, dial_http_connect_uds, ProxyClient};

const CTL_IP: &str = "192.168.251.1";
const WRK_IP: &str = "192.168.251.2";
const POD_IP: &str = "10.244.77.5";
/// An address nobody has: not even the worker can reach it.
const NOWHERE_IP: &str = "10.244.77.6";
const POD_PORT: u16 = 8080;
/// Ports are per namespace, so fixed ones are safe in fresh namespaces.
const AGENT_PORT: u16 = 8132;
const SERVER_ADMIN_PORT: u16 = 8133;
const AGENT_ADMIN_PORT: u16 = 8093;
const BRIDGE_PORT: u16 = 18080;
const DOWNLOAD: usize = 3 << 20;

async fn run(cmd: std::process::Command) -> Output {
    tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .output()
        .await
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim().to_string()
}

/// `curl` inside `ns`; returns the output (never fails by itself).
async fn curl(ns: &Netns, args: &[&str]) -> Output {
    let mut c = ns.cmd("curl");
    c.args(["-sS", "--max-time", "10"]).args(args);
    run(c).await
}

fn logs(procs: &[&NsChild]) -> String {
    procs
        .iter()
        .map(|p| format!("--- {}:\n{}", p.log.display(), p.log_text()))
        .collect()
}

/// Polls `probe` every 100 ms until it holds, failing with the processes'
/// logs after `limit`.
async fn wait_for_probe<F, Fut>(what: &str, limit: Duration, procs: &[&NsChild], mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !probe().await {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}\n{}",
            logs(procs)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn server_args(pki: &Pki, dir: &Path) -> Vec<String> {
    let p = |p: &Path| p.to_str().unwrap().to_string();
    [
        "konnectivity",
        "server",
        "--mode",
        "grpc",
        "--server-id",
        "ctl-1",
        "--uds-name",
        &p(&dir.join("grpc.sock")),
        "--http-connect-uds-name",
        &p(&dir.join("http.sock")),
        "--agent-bind-address",
        CTL_IP,
        "--agent-port",
        &AGENT_PORT.to_string(),
        "--admin-bind-address",
        "127.0.0.1",
        "--admin-port",
        &SERVER_ADMIN_PORT.to_string(),
        "--cluster-cert",
        &p(&pki.server.cert),
        "--cluster-key",
        &p(&pki.server.key),
        "--cluster-ca-cert",
        &p(&pki.server.ca),
    ]
    .map(String::from)
    .to_vec()
}

fn agent_args(pki: &Pki) -> Vec<String> {
    let p = |p: &Path| p.to_str().unwrap().to_string();
    // Bound to worker-1 and its address, as the join API issues it: the
    // server (default --agent-identity certificate) accepts ipv4=WRK_IP.
    let tls = pki.node_agent("worker-1", &[WRK_IP]);
    [
        "konnectivity",
        "agent",
        "--proxy-server-host",
        CTL_IP,
        "--proxy-server-port",
        &AGENT_PORT.to_string(),
        "--ca-cert",
        &p(&tls.ca),
        "--agent-cert",
        &p(&tls.cert),
        "--agent-key",
        &p(&tls.key),
        "--agent-id",
        "worker-1",
        "--agent-identifiers",
        &format!("ipv4={WRK_IP}"),
        "--admin-bind-address",
        "127.0.0.1",
        "--admin-port",
        &AGENT_ADMIN_PORT.to_string(),
    ]
    .map(String::from)
    .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_address_is_reachable_from_the_controller_only_through_the_tunnel() {
    // Namespaces first: they are dropped last, after every process guard.
    let ctl = Netns::new("ctl");
    let wrk = Netns::new("wrk");
    let names = [ctl.name.clone(), wrk.name.clone()];
    veth(
        &ctl,
        "vctl",
        &format!("{CTL_IP}/30"),
        &wrk,
        "vwrk",
        &format!("{WRK_IP}/30"),
    );
    wrk.ip(&["addr", "add", &format!("{POD_IP}/32"), "dev", "lo"]);
    for ns in [&ctl, &wrk] {
        let out = ns.ip_output(&["route", "show", "default"]);
        assert!(out.status.success() && out.stdout.is_empty(), "{out:?}");
    }
    let out = ctl.ip_output(&["route", "get", POD_IP]);
    assert!(
        !out.status.success(),
        "the controller namespace must have no route to the pod address: {}",
        text(&out.stdout)
    );

    let pki = pki_with_server_sans(&[CTL_IP]);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    // The pod: the HTTP target, listening on the pod address inside the
    // worker namespace.
    let listener = wrk.enter(|| {
        let l = std::net::TcpListener::bind((POD_IP, POD_PORT)).unwrap();
        l.set_nonblocking(true).unwrap();
        l
    });
    let _pod = http_target_on(tokio::net::TcpListener::from_std(listener).unwrap());

    let mkectl = common::MKECTL;
    let mut server = ctl.spawn(&d.join("server.log"), mkectl, server_args(&pki, d));
    let mut agent = wrk.spawn(&d.join("agent.log"), mkectl, agent_args(&pki));
    let readyz = format!("http://127.0.0.1:{SERVER_ADMIN_PORT}/readyz");
    wait_for_probe(
        "the agent (worker namespace) to connect to the server (controller namespace)",
        Duration::from_secs(30),
        &[&server, &agent],
        || async {
            let out = curl(&ctl, &["-o", "/dev/null", "-w", "%{http_code}", &readyz]).await;
            out.stdout == b"200"
        },
    )
    .await;

    let hello = format!("http://{POD_IP}:{POD_PORT}/hello");

    // 1. The pod serves inside the worker namespace ...
    let out = curl(&wrk, &[&hello]).await;
    assert_eq!(text(&out.stdout), "hello", "{out:?}");

    // 2. ... but the controller cannot reach it directly: no route.
    let out = curl(&ctl, &["--max-time", "2", &hello]).await;
    assert_eq!(
        out.status.code(),
        Some(7),
        "direct connection from the controller must fail to connect: {out:?}"
    );
    assert!(out.stdout.is_empty(), "{out:?}");
    let direct = ctl.enter(|| {
        std::net::TcpStream::connect_timeout(
            &format!("{POD_IP}:{POD_PORT}").parse().unwrap(),
            Duration::from_secs(2),
        )
    });
    let err = direct.expect_err("direct connect from the controller namespace");
    assert_eq!(
        err.raw_os_error(),
        Some(libc::ENETUNREACH),
        "direct connect fails with no route: {err}"
    );

    // 3. Through the tunnel, HTTP-CONNECT mode, from inside the controller
    //    namespace: curl → socat (TCP→UDS bridge) → server → agent → pod.
    let http_uds = d.join("http.sock");
    let bridge = ctl.spawn(
        &d.join("bridge.log"),
        "socat",
        [
            format!("TCP-LISTEN:{BRIDGE_PORT},bind=127.0.0.1,reuseaddr,fork"),
            format!("UNIX-CONNECT:{}", http_uds.display()),
        ],
    );
    wait_for_probe(
        "the socat bridge to listen",
        Duration::from_secs(10),
        &[&bridge],
        || async {
            let mut c = ctl.cmd("ss");
            c.args(["-Hltn", &format!("sport = :{BRIDGE_PORT}")]);
            !run(c).await.stdout.is_empty()
        },
    )
    .await;
    let proxy = format!("http://127.0.0.1:{BRIDGE_PORT}");
    let out = curl(&ctl, &["-p", "-x", &proxy, &hello]).await;
    assert_eq!(
        text(&out.stdout),
        "hello",
        "curl through the tunnel: {out:?}\n{}",
        logs(&[&server, &agent, &bridge])
    );
    let file = d.join("download.bin");
    let out = curl(
        &ctl,
        &[
            "-p",
            "-x",
            &proxy,
            "-o",
            file.to_str().unwrap(),
            &format!("http://{POD_IP}:{POD_PORT}/download/{DOWNLOAD}/11"),
        ],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        sha256_hex(&std::fs::read(&file).unwrap()),
        expected_download_sha(DOWNLOAD, 11),
        "bytes through the HTTP-CONNECT tunnel"
    );

    // 4. Through the tunnel, gRPC mode (as kube-apiserver's egress selector
    //    dials): our konnectivity client on the server's gRPC UDS.
    let pod = format!("{POD_IP}:{POD_PORT}");
    let grpc_uds = d.join("grpc.sock");
    let client = ProxyClient::connect_uds(&grpc_uds).await.unwrap();
    let mut c = client.dial(&pod).await.unwrap();
    let req = format!("GET /download/{DOWNLOAD}/12 HTTP/1.1\r\nHost: pod\r\n\r\n");
    tokio::io::AsyncWriteExt::write_all(&mut c, req.as_bytes())
        .await
        .unwrap();
    let (status, len, sha) = read_response_hashed(&mut c).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(len, DOWNLOAD);
    assert_eq!(sha, expected_download_sha(DOWNLOAD, 12));
    drop(c);
    let get = "GET /hello HTTP/1.1\r\nHost: pod\r\n\r\n";
    let mut c = dial_grpc_uds(&grpc_uds, &pod).await.unwrap();
    let (status, body) = http_request(&mut c, get).await;
    assert_eq!(
        (status.as_str(), &body[..]),
        ("HTTP/1.1 200 OK", &b"hello"[..])
    );
    // The HTTP-CONNECT frontend from Rust too (kube-apiserver's bytes).
    let mut c = dial_http_connect_uds(&http_uds, &pod).await.unwrap();
    let (status, body) = http_request(&mut c, get).await;
    assert_eq!(
        (status.as_str(), &body[..]),
        ("HTTP/1.1 200 OK", &b"hello"[..])
    );

    // 5. An address the worker cannot reach either: the agent's dial fails
    //    and the error comes back (no hang).
    let err = client
        .dial_timeout(&format!("{NOWHERE_IP}:{POD_PORT}"), Duration::from_secs(10))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("unreachable"), "{err}");
    drop(client);

    // 6. Clean stop: SIGTERM ends both processes successfully.
    drop(bridge);
    let st = agent.stop(libc::SIGTERM, Duration::from_secs(20));
    assert!(st.success(), "agent: {st:?}\n{}", agent.log_text());
    let st = server.stop(libc::SIGTERM, Duration::from_secs(20));
    assert!(st.success(), "server: {st:?}\n{}", server.log_text());
    assert!(!grpc_uds.exists() && !http_uds.exists(), "sockets removed");

    drop(server);
    drop(agent);
    drop(ctl);
    drop(wrk);
    for n in names {
        assert!(!Netns::exists(&n), "namespace {n} deleted");
    }
}
