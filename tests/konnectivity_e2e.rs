//! Loopback end to end: frontend → konnectivity server → agent → a local
//! HTTP target, in gRPC mode (our konnectivity-client-like dialer) and in
//! HTTP-CONNECT mode (raw bytes over the UDS, and socat + curl).

mod common;

use std::time::Duration;

use common::konnectivity::*;
use mkectl::konnectivity::client::{dial_http_connect_uds, ProxyClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

const MIB: usize = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_tunnel_reaches_http_target_and_cleans_up() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let (target, _t) = http_target().await;
    let (s, a) = stack(&pki, dir.path()).await;

    let client = ProxyClient::connect_uds(&s.grpc_uds).await.unwrap();
    let mut conn = client.dial(&target.to_string()).await.unwrap();
    let (status, body) = http_request(&mut conn, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(body, b"hello");
    drop(conn);

    // Graceful close: CLOSE_REQ answered by CLOSE_RSP.
    let mut conn = client.dial(&target.to_string()).await.unwrap();
    conn.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    conn.close().await.unwrap();
    drop(client);
    assert_no_leaks(&s.handle, Some(&a.handle)).await;

    // UDS permissions are the access control: 0660 or tighter.
    use std::os::unix::fs::PermissionsExt;
    for p in [&s.grpc_uds, &s.http_uds] {
        let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & !0o660, 0, "{} has mode {mode:o}", p.display());
    }
    let page = s.handle.metrics_text();
    assert!(page.contains("konnectivity_network_proxy_server_stream_packets_total{segment=\"from_client\",packet_type=\"DIAL_REQ\"} 2"), "{page}");
    s.token.cancel();
    a.token.cancel();
    s.handle.wait_stopped().await;
    a.handle.wait_stopped().await;
    assert!(!s.grpc_uds.exists(), "socket removed on stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_connect_raw_bytes_and_error_mapping() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let (target, _t) = http_target().await;

    // No agent yet: the exact upstream 500.
    let s = start_server(&pki, dir.path(), "s1").await;
    let mut sock = UnixStream::connect(&s.http_uds).await.unwrap();
    sock.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    sock.read_to_end(&mut out).await.unwrap();
    assert_eq!(
        out,
        b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\n\r\ncurrently no tunnels available: No agent available"
    );

    let a = start_agent(&pki.agent, &[s.handle.agent_addr()]).await;
    let h = &s.handle;
    wait_until(Duration::from_secs(10), "agent connected", || {
        h.ready_backends() == 1
    })
    .await;

    // Success: exactly the 200 line, nothing before it, then the tunnel.
    let mut sock = UnixStream::connect(&s.http_uds).await.unwrap();
    sock.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = [0u8; 39];
    sock.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200 Connection Established\r\n\r\n");
    let (status, body) = http_request(&mut sock, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(body, b"hello");

    // Bytes sent right behind the CONNECT head are tunnelled too.
    let mut sock = UnixStream::connect(&s.http_uds).await.unwrap();
    sock.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nGET /hello HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    sock.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.starts_with("HTTP/1.1 200 Connection Established\r\n\r\nHTTP/1.1 200 OK"),
        "{text}"
    );
    assert!(text.ends_with("hello"));

    // Refused dial → 502 with the agent's Go-like error as body.
    let closed = free_addr();
    let err = dial_http_connect_uds(&s.http_uds, &closed.to_string())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("HTTP/1.1 502 Bad Gateway"), "{err}");
    assert!(
        err.contains(&format!("dial tcp {closed}: connect: connection refused")),
        "{err}"
    );

    // Not CONNECT → 405.
    let mut sock = UnixStream::connect(&s.http_uds).await.unwrap();
    let (status, body) = http_request(&mut sock, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
    assert_eq!(body, b"this proxy only supports CONNECT passthrough");

    // gRPC: the same refused dial is a DIAL_RSP error with the same text.
    let client = ProxyClient::connect_uds(&s.grpc_uds).await.unwrap();
    let err = client
        .dial(&closed.to_string())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("connect: connection refused"), "{err}");
    drop(client);

    assert_no_leaks(&s.handle, Some(&a.handle)).await;
    s.token.cancel();
    a.token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socat_and_curl_through_http_connect() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let (target, _t) = http_target().await;
    let (s, a) = stack(&pki, dir.path()).await;
    let port = free_addr().port();
    let mut socat = tokio::process::Command::new("socat")
        .arg(format!("TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr"))
        .arg(format!("UNIX-CONNECT:{}", s.http_uds.display()))
        .kill_on_drop(true)
        .spawn()
        .expect("socat is installed");
    // Wait for socat to listen.
    let mut ok = false;
    for _ in 0..500 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(ok, "socat did not start listening");
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "20", "-p", "-x"])
        .arg(format!("http://127.0.0.1:{port}"))
        .arg(format!("http://{target}/hello"))
        .output()
        .await
        .expect("curl is installed");
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"hello");
    let _ = socat.kill().await;
    assert_no_leaks(&s.handle, Some(&a.handle)).await;
    s.token.cancel();
    a.token.cancel();
}

async fn upload<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    len: usize,
    seed: u64,
) -> (String, String) {
    s.write_all(
        format!("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut g = Gen::new(seed, len);
    while let Some(c) = g.next_chunk() {
        ctx.update(&c);
        s.write_all(&c).await.unwrap();
    }
    let sent = hex::encode(ctx.finish().as_ref());
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    (
        sent,
        text.rsplit("\r\n\r\n").next().unwrap_or("").to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mib_each_way_grpc_and_http_connect() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let (target, _t) = http_target().await;
    let (s, a) = stack(&pki, dir.path()).await;
    let len = 64 * MIB;
    let expected = expected_download_sha(len, 42);
    let client = ProxyClient::connect_uds(&s.grpc_uds).await.unwrap();

    let t = target.to_string();
    let c2 = client.clone();
    let grpc_up = tokio::spawn(async move {
        let mut conn = c2.dial(&t).await.unwrap();
        upload(&mut conn, len, 7).await
    });
    let t = target.to_string();
    let c3 = client.clone();
    let grpc_down = tokio::spawn(async move {
        let mut conn = c3.dial(&t).await.unwrap();
        conn.write_all(format!("GET /download/{len}/42 HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        read_response_hashed(&mut conn).await
    });
    let (sent, got) = grpc_up.await.unwrap();
    assert_eq!(sent, got, "gRPC upload SHA-256");
    let (status, n, sha) = grpc_down.await.unwrap();
    assert_eq!((status.as_str(), n), ("HTTP/1.1 200 OK", len));
    assert_eq!(sha, expected, "gRPC download SHA-256");

    let path = s.http_uds.clone();
    let t = target.to_string();
    let http_up = tokio::spawn(async move {
        let mut sock = dial_http_connect_uds(&path, &t).await.unwrap();
        upload(&mut sock, len, 9).await
    });
    let path = s.http_uds.clone();
    let t = target.to_string();
    let http_down = tokio::spawn(async move {
        let mut sock = dial_http_connect_uds(&path, &t).await.unwrap();
        sock.write_all(format!("GET /download/{len}/42 HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        read_response_hashed(&mut sock).await
    });
    let (sent, got) = http_up.await.unwrap();
    assert_eq!(sent, got, "HTTP-CONNECT upload SHA-256");
    let (status, n, sha) = http_down.await.unwrap();
    assert_eq!((status.as_str(), n), ("HTTP/1.1 200 OK", len));
    assert_eq!(sha, expected, "HTTP-CONNECT download SHA-256");

    drop(client);
    assert_no_leaks(&s.handle, Some(&a.handle)).await;
    s.token.cancel();
    a.token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_tunnels() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let (target, _t) = http_target().await;
    let (s, a) = stack(&pki, dir.path()).await;
    let client = ProxyClient::connect_uds(&s.grpc_uds).await.unwrap();
    // Open all 500 first so they are really concurrent, then use them.
    let mut conns = Vec::new();
    let mut dials = Vec::new();
    for _ in 0..500 {
        let c = client.clone();
        let t = target.to_string();
        dials.push(tokio::spawn(async move { c.dial(&t).await.unwrap() }));
    }
    for d in dials {
        conns.push(d.await.unwrap());
    }
    let sh = &s.handle;
    assert_eq!(sh.stats().established, 500);
    assert_eq!(a.handle.open_endpoint_connections(), 500);
    let mut tasks = Vec::new();
    for (i, mut c) in conns.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            c.write_all(
                format!(
                    "GET /download/{}/{} HTTP/1.1\r\nHost: x\r\n\r\n",
                    16 * 1024,
                    i
                )
                .as_bytes(),
            )
            .await
            .unwrap();
            let (status, n, sha) = read_response_hashed(&mut c).await;
            assert_eq!(status, "HTTP/1.1 200 OK");
            assert_eq!(n, 16 * 1024);
            assert_eq!(sha, expected_download_sha(16 * 1024, i as u64));
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    drop(client);
    assert_no_leaks(&s.handle, Some(&a.handle)).await;
    s.token.cancel();
    a.token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_connect_over_tcp_requires_a_client_certificate() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let (target, _t) = http_target().await;
    let mut cfg = server_config(&pki, dir.path(), "s1", "127.0.0.1:0".parse().unwrap());
    cfg.http_connect_tcp = Some(("127.0.0.1:0".parse().unwrap(), pki.server.clone()));
    let s = start_server_with(cfg).await;
    let a = start_agent(&pki.agent, &[s.handle.agent_addr()]).await;
    let h = &s.handle;
    wait_until(Duration::from_secs(10), "agent connected", || {
        h.ready_backends() == 1
    })
    .await;
    let addr = s.handle.http_connect_tcp_addr().unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();

    // With a certificate from the konnectivity CA: tunnel works.
    let tls = mkectl::konnectivity::tls::client_config(&pki.agent, &[b"http/1.1"]).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut st = tokio_rustls::TlsConnector::from(tls)
        .connect(name.clone(), tcp)
        .await
        .unwrap();
    st.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = [0u8; 39];
    st.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200 Connection Established\r\n\r\n");
    let (status, body) = http_request(&mut st, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(
        (status.as_str(), body.as_slice()),
        ("HTTP/1.1 200 OK", &b"hello"[..])
    );

    // With a certificate from another CA: refused during the handshake.
    let tls = mkectl::konnectivity::tls::client_config(&pki.foreign_agent, &[b"http/1.1"]).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let refused = match tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
    {
        Err(_) => true,
        // TLS 1.3: the client finishes first; the refusal shows on first use.
        Ok(mut st) => {
            let _ = st
                .write_all(
                    format!("CONNECT {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes(),
                )
                .await;
            let mut b = [0u8; 1];
            !matches!(st.read(&mut b).await, Ok(1))
        }
    };
    assert!(refused, "foreign client certificate must be refused");
    assert_no_leaks(&s.handle, Some(&a.handle)).await;
    s.token.cancel();
    a.token.cancel();
}
