//! Join tokens against a real controller: every kind of bad token is refused
//! with a clear message and nothing is written on the joining side; token
//! list/invalidate; the join API's body and rate limits and client
//! certificate checks; `mkectl token` exits 69 when the controller is down.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::join::*;
use common::*;
use mkectl::join::{BootstrapToken, JoinToken, Role};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const START: Duration = Duration::from_secs(60);

/// Runs `mkectl worker` on a fresh node with `token`; it must fail. Returns
/// (exit code, log) and checks the data dir was never created.
fn refused_worker(token: &str) -> (i32, String) {
    let w = Node::with_address("wx", "127.0.0.20", "");
    let mut p = w.start_worker(&[
        "--token",
        token,
        "--address",
        "127.0.0.20",
        "--agent-admin-port",
        "0",
    ]);
    let st = p.wait_exit(Duration::from_secs(30));
    let log = p.log_text();
    assert!(!st.success(), "join with a bad token succeeded:\n{log}");
    assert!(
        files_under(&w.data).is_empty(),
        "files written on a refused join: {:?}",
        files_under(&w.data)
    );
    (st.code().unwrap_or(-1), log)
}

/// Same for `mkectl controller --token-file`.
fn refused_controller(token: &str) -> (i32, String) {
    let c = Node::with_address("cx", "127.0.0.21", "");
    let f = token_file(&c, "t", token);
    let mut p = c.start_controller(&ctl_args(&["--token-file", f.to_str().unwrap()]));
    let st = p.wait_exit(Duration::from_secs(30));
    let log = p.log_text();
    assert!(
        !st.success(),
        "controller join with a bad token succeeded:\n{log}"
    );
    assert!(!c.data.exists(), "data dir created on a refused join");
    (st.code().unwrap_or(-1), log)
}

/// One raw HTTPS request to the join API from `source`; returns the status.
async fn https_status(node: &Node, source: &str, method: &str, path: &str, body: &[u8]) -> u16 {
    let mut roots = rustls::RootCertStore::empty();
    for c in mkectl::join::tls::certs_from_pem("ca", &std::fs::read(node.pki("ca.crt")).unwrap())
        .unwrap()
    {
        roots.add(c).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{}", node.join_port).parse().unwrap();
    let tcp = sock.connect(addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect("127.0.0.1".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer abcdef.0123456789abcdef\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    // The server may answer (413) before reading the whole body.
    let _ = tls.write_all(body).await;
    let mut buf = Vec::new();
    let _ = tls.read_to_end(&mut buf).await;
    String::from_utf8_lossy(&buf)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_tokens_are_refused_and_nothing_is_written() {
    let c1 = Node::new("t1");
    let mut p1 = c1.start_controller(&ctl_args(&[]));
    wait_log(&mut p1, "controller ready", START);
    let good = JoinToken::decode(&token_create(&c1, "worker", &[])).unwrap();

    // Malformed: refused before any network traffic (exit 64).
    let (code, log) = refused_worker("mke1.not-a-token");
    assert_eq!(code, 64, "{log}");
    assert!(log.contains("malformed join token"), "{log}");

    // Unknown id / wrong secret: 401, the same message either way.
    let mut unknown = good.clone();
    unknown.bootstrap = BootstrapToken::generate();
    let (code, log) = refused_worker(&unknown.encode());
    assert_eq!(code, 1, "{log}");
    assert!(
        log.contains("(401)") && log.contains("not valid for this cluster"),
        "{log}"
    );
    let mut wrong_secret = good.clone();
    wrong_secret.bootstrap =
        BootstrapToken::parse(&format!("{}.zzzzzzzzzzzzzzzz", good.bootstrap.id)).unwrap();
    let (_, log) = refused_worker(&wrong_secret.encode());
    assert!(
        log.contains("(401)") && log.contains("not valid for this cluster"),
        "{log}"
    );

    // Expired: 403 and says so.
    let expiring = token_create(&c1, "worker", &["--expiry", "1s"]);
    // Expiry is wall-clock time: nothing to wait on but the clock.
    std::thread::sleep(Duration::from_millis(1500));
    let (code, log) = refused_worker(&expiring);
    assert_eq!(code, 1, "{log}");
    assert!(log.contains("(403)") && log.contains("expired"), "{log}");

    // Invalidated: 403 and says so.
    let revoked = JoinToken::decode(&token_create(&c1, "worker", &[])).unwrap();
    let out = run(&c1, &["token", "invalidate", &revoked.bootstrap.id]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (_, log) = refused_worker(&revoked.encode());
    assert!(
        log.contains("(403)") && log.contains("invalidated"),
        "{log}"
    );
    let out = run(&c1, &["token", "invalidate", "zzzzzz"]);
    assert!(!out.status.success() && stderr(&out).contains("no such token"));

    // Wrong role, caught locally from the token string (exit 64) ...
    let ctok = token_create(&c1, "controller", &[]);
    let (code, log) = refused_worker(&ctok);
    assert_eq!(code, 64, "{log}");
    assert!(log.contains("this is a controller token"), "{log}");
    let (code, log) = refused_controller(&good.encode());
    assert_eq!(code, 64, "{log}");
    assert!(log.contains("this is a worker token"), "{log}");
    // ... and by the server when the string lies about its role (403).
    let mut forged = JoinToken::decode(&ctok).unwrap();
    forged.role = Role::Worker;
    let (_, log) = refused_worker(&forged.encode());
    assert!(
        log.contains("(403)") && log.contains("is a controller token"),
        "{log}"
    );

    // A CA pin that does not match the controller's certificate: the TLS
    // connection is refused before anything is sent (worker and controller).
    let other_ca = std::fs::read(c1.pki("etcd/ca.crt")).unwrap();
    let mut pinned_elsewhere = good.clone();
    pinned_elsewhere.ca_pin = mkectl::pki::spki_sha256(&other_ca).unwrap();
    let (code, log) = refused_worker(&pinned_elsewhere.encode());
    assert_eq!(code, 1, "{log}");
    assert!(log.contains("CA pin mismatch"), "{log}");
    let mut ctl_elsewhere = JoinToken::decode(&ctok).unwrap();
    ctl_elsewhere.ca_pin = pinned_elsewhere.ca_pin.clone();
    let (_, log) = refused_controller(&ctl_elsewhere.encode());
    assert!(log.contains("CA pin mismatch"), "{log}");
    // No secret was logged by the controller through all of this.
    for t in [&good, &revoked, &forged, &unknown] {
        assert!(!p1.log_text().contains(t.bootstrap.secret()));
    }

    // token list: ids, roles and states, never a secret or its hash.
    let out = run(&c1, &["token", "list", "-o", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let rows: serde_json::Value = serde_json::from_str(&text).unwrap();
    let state_of = |id: &str| {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id)
            .map(|r| r["status"].as_str().unwrap().to_string())
    };
    assert_eq!(state_of(&good.bootstrap.id).as_deref(), Some("valid"));
    assert_eq!(
        state_of(&revoked.bootstrap.id).as_deref(),
        Some("invalidated")
    );
    let exp_id = JoinToken::decode(&expiring).unwrap().bootstrap.id;
    assert_eq!(state_of(&exp_id).as_deref(), Some("expired"));
    assert!(!text.contains(good.bootstrap.secret()) && !text.contains("secret"));

    // Limits and client-certificate checks of the join API.
    let big = vec![b'x'; 100 * 1024];
    assert_eq!(
        https_status(&c1, "127.0.0.30", "POST", "/v1/join/worker", &big).await,
        413
    );
    assert_eq!(
        https_status(&c1, "127.0.0.30", "GET", "/v1/controllers", b"").await,
        401,
        "the controller list needs a client certificate"
    );
    assert_eq!(
        https_status(&c1, "127.0.0.30", "POST", "/v1/etcd/leave", b"{}").await,
        401
    );
    let mut statuses = Vec::new();
    for _ in 0..60 {
        statuses.push(https_status(&c1, "127.0.0.31", "GET", "/v1/ca", b"").await);
    }
    assert_eq!(statuses[0], 200);
    assert!(statuses.contains(&429), "never rate limited: {statuses:?}");
    // Other sources are not affected.
    assert_eq!(
        https_status(&c1, "127.0.0.32", "GET", "/v1/ca", b"").await,
        200
    );

    // Every join API request is counted by outcome on /metrics.
    let page = c1.metrics_page();
    for result in ["ok", "denied", "invalid", "rate_limited"] {
        assert!(
            page.contains(&format!(
                "mkectl_join_requests_total{{result=\"{result}\"}}"
            )),
            "no {result} count in:\n{page}"
        );
    }

    // With the controller stopped, `mkectl token` says so and exits 69.
    signal(p1.pid(), libc::SIGTERM);
    assert!(p1.wait_exit(Duration::from_secs(30)).success());
    let out = run(&c1, &["token", "list"]);
    assert_eq!(out.status.code(), Some(69), "{}", stderr(&out));
    assert!(stderr(&out).contains("is `mkectl controller` running"));

    // Resetting the only controller destroys the cluster: only with --force.
    let out = run(&c1, &["reset"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("only controller"), "{}", stderr(&out));
    assert!(
        c1.data.join("etcd").exists(),
        "a refused reset removed data"
    );
    let out = run(&c1, &["reset", "--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!c1.data.exists());
    assert!(!c1.run.join("mkectl.lock").exists());
}
