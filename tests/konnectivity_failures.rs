//! Failure behaviour: stalled readers, vanished frontends, agents or servers
//! going away, refused certificates, garbage and oversized packets. Every
//! test ends by checking that no tunnel, socket or task leaked.

mod common;

use std::time::{Duration, Instant};

use common::konnectivity::*;
use mkectl::konnectivity::client::ProxyClient;
use mkectl::konnectivity::proto::proxy_service_client::ProxyServiceClient;
use mkectl::konnectivity::proto::{Packet, PacketType, Payload};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::wrappers::ReceiverStream;

async fn raw_client(path: &std::path::Path) -> tonic::transport::Channel {
    let p = path.to_path_buf();
    tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let p = p.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(p).await?,
                ))
            }
        }))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_reader_does_not_stop_other_tunnels() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let (target, _t) = http_target().await;
    let (s, a) = stack(&pki, dir.path()).await;
    let client = ProxyClient::connect_uds(&s.grpc_uds).await.unwrap();

    // Stuck tunnels: endless responses nobody reads. Each on its own
    // connection, as released kube-apiservers dial (single-use tunnels): on a
    // shared HTTP/2 connection unread streams would also exhaust the
    // client's own connection window, which no server can help.
    let mut stuck = Vec::new();
    for _ in 0..5 {
        let mut c = mkectl::konnectivity::client::dial_grpc_uds(&s.grpc_uds, &target.to_string())
            .await
            .unwrap();
        c.write_all(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        stuck.push(c);
    }

    // Meanwhile other tunnels on the same agent move data.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..8u64 {
        let c = client.clone();
        let t = target.to_string();
        tasks.push(tokio::spawn(async move {
            let mut conn = c.dial(&t).await.unwrap();
            let len = 4 * 1024 * 1024;
            conn.write_all(
                format!("GET /download/{len}/{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
            let (_, n, sha) = read_response_hashed(&mut conn).await;
            assert_eq!(n, len);
            assert_eq!(sha, expected_download_sha(len, i));
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("other tunnels finish")
            .unwrap();
    }
    // Five stuck readers together cost at most about one stall budget.
    let took = started.elapsed();
    eprintln!("8 × 4 MiB beside 5 stalled tunnels took {took:?}");
    assert!(took < Duration::from_secs(30), "{took:?}");

    // The stuck tunnels were closed with an error, not left to grow.
    let sh = &s.handle;
    wait_until(Duration::from_secs(20), "stalled tunnels closed", || {
        sh.metrics_text()
            .contains("konnectivity_network_proxy_server_stalled_tunnels_total 5")
    })
    .await;
    let mut buf = vec![0u8; 1 << 20];
    for st in stuck.iter_mut() {
        let res = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match st.read(&mut buf).await {
                    Ok(0) => return Ok(()),
                    Ok(_) => continue,
                    Err(e) => return Err(e),
                }
            }
        })
        .await
        .expect("stalled tunnel ends");
        assert!(res.is_err(), "a stalled tunnel ends with an error");
    }
    drop(stuck);
    drop(client);
    assert_no_leaks(&s.handle, Some(&a.handle)).await;
    s.token.cancel();
    a.token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanished_frontend_releases_everything() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let (target, _t) = http_target().await;
    let (s, a) = stack(&pki, dir.path()).await;
    let client = ProxyClient::connect_uds(&s.grpc_uds).await.unwrap();
    let mut conns = Vec::new();
    for _ in 0..50 {
        let mut c = client.dial(&target.to_string()).await.unwrap();
        c.write_all(b"GET /stream HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        conns.push(c);
    }
    let sh = &s.handle;
    assert_eq!(sh.stats().established, 50);
    // Frontend goes away without CLOSE_REQ: connection dropped.
    drop(conns);
    drop(client);
    assert_no_leaks(&s.handle, Some(&a.handle)).await;

    // HTTP-CONNECT clients vanishing too.
    let mut socks = Vec::new();
    for _ in 0..20 {
        let mut sock =
            mkectl::konnectivity::client::dial_http_connect_uds(&s.http_uds, &target.to_string())
                .await
                .unwrap();
        sock.write_all(b"GET /hello HTTP/1.1\r\n").await.unwrap(); // incomplete: stays open
        socks.push(sock);
    }
    drop(socks);
    assert_no_leaks(&s.handle, Some(&a.handle)).await;
    s.token.cancel();
    a.token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_stopping_fails_its_tunnels_without_hanging() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let (target, _t) = http_target().await;
    let (s, a) = stack(&pki, dir.path()).await;
    let client = ProxyClient::connect_uds(&s.grpc_uds).await.unwrap();
    let mut grpc = Vec::new();
    for _ in 0..20 {
        let mut c = client.dial(&target.to_string()).await.unwrap();
        c.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap(); // incomplete head: stays open
        grpc.push(c);
    }
    let mut http =
        mkectl::konnectivity::client::dial_http_connect_uds(&s.http_uds, &target.to_string())
            .await
            .unwrap();
    a.token.cancel();
    a.handle.wait_stopped().await;
    for mut c in grpc {
        let mut b = [0u8; 64];
        let r = tokio::time::timeout(Duration::from_secs(10), c.read(&mut b))
            .await
            .expect("no hang");
        let e = r.expect_err("frontend gets an error");
        assert!(e.to_string().contains("agent disconnected"), "{e}");
    }
    let mut b = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), http.read(&mut b))
        .await
        .expect("no hang");
    assert!(matches!(n, Ok(0) | Err(_)), "HTTP-CONNECT socket closed");
    // New dials fail fast.
    let err = client
        .dial(&target.to_string())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("No agent available"), "{err}");
    drop(client);
    assert_no_leaks(&s.handle, None).await;
    assert_eq!(s.handle.stats().backends, 0);
    assert_eq!(a.handle.open_endpoint_connections(), 0);
    assert_eq!(a.handle.tasks(), 0);
    s.token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_server_gets_its_agent_back_within_two_seconds() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let (target, _t) = http_target().await;
    let (s, a) = stack(&pki, dir.path()).await;
    let agent_addr = s.handle.agent_addr();
    let client = ProxyClient::connect_uds(&s.grpc_uds).await.unwrap();
    let mut open = client.dial(&target.to_string()).await.unwrap();
    s.token.cancel();
    s.handle.wait_stopped().await;
    // The open tunnel ends with an error, the agent drops its endpoint.
    let mut b = [0u8; 16];
    let r = tokio::time::timeout(Duration::from_secs(10), open.read(&mut b))
        .await
        .expect("no hang");
    assert!(!matches!(r, Ok(n) if n > 0));
    let ah = &a.handle;
    wait_until(Duration::from_secs(10), "agent notices", || {
        ah.connected_servers().is_empty()
    })
    .await;
    wait_until(Duration::from_secs(10), "agent endpoints closed", || {
        ah.open_endpoint_connections() == 0
    })
    .await;

    let restarted = Instant::now();
    let s2 = start_server_with(server_config(&pki, dir.path(), "s1", agent_addr)).await;
    let h2 = &s2.handle;
    wait_until(Duration::from_secs(10), "agent reconnects", || {
        h2.ready_backends() == 1
    })
    .await;
    let took = restarted.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "agent came back after {took:?}"
    );
    let client = ProxyClient::connect_uds(&s2.grpc_uds).await.unwrap();
    let mut c = client.dial(&target.to_string()).await.unwrap();
    let (status, _) = http_request(&mut c, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    drop(c);
    drop(client);
    assert_no_leaks(&s2.handle, Some(&a.handle)).await;
    s2.token.cancel();
    a.token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_with_certificate_from_another_ca_is_refused() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let s = start_server(&pki, dir.path(), "s1").await;
    let a = start_agent(&pki.foreign_agent, &[s.handle.agent_addr()]).await;
    let ah = &a.handle;
    wait_until(Duration::from_secs(15), "two refused attempts", || {
        ah.metrics_text()
            .contains("konnectivity_network_proxy_agent_server_connection_failure_count{direction=\"connect\"} 2")
    })
    .await;
    assert_eq!(s.handle.ready_backends(), 0);
    assert!(a.handle.connected_servers().is_empty());
    // The right certificate is accepted by the same server.
    let good = start_agent(&pki.agent, &[s.handle.agent_addr()]).await;
    let sh = &s.handle;
    wait_until(Duration::from_secs(10), "good agent connected", || {
        sh.ready_backends() == 1
    })
    .await;
    a.token.cancel();
    good.token.cancel();
    s.token.cancel();
}

/// A message whose field 1 has the wrong wire type: garbage to the server.
#[derive(Clone, PartialEq, prost::Message)]
struct Garbage {
    #[prost(string, tag = "1")]
    junk: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_or_oversized_packet_closes_only_its_stream() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let (target, _t) = http_target().await;
    let (s, a) = stack(&pki, dir.path()).await;
    let client = ProxyClient::connect_uds(&s.grpc_uds).await.unwrap();
    // A healthy tunnel on the same connection as the bad streams below.
    let mut good = client.dial(&target.to_string()).await.unwrap();
    good.write_all(b"GET /hello HTTP/1.1\r\n").await.unwrap();

    let channel = raw_client(&s.grpc_uds).await;
    // Garbage.
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let req = tonic::Request::new(futures::stream::iter(vec![Garbage {
        junk: "x".repeat(100),
    }]));
    let resp = grpc
        .streaming(
            req,
            http::uri::PathAndQuery::from_static("/ProxyService/Proxy"),
            tonic_prost::ProstCodec::<Garbage, Packet>::default(),
        )
        .await
        .unwrap();
    let mut st = resp.into_inner();
    let r = tokio::time::timeout(Duration::from_secs(10), st.message())
        .await
        .expect("no hang");
    assert!(
        r.is_err() || matches!(r, Ok(None)),
        "garbage stream ended: {r:?}"
    );

    // Oversized (8 MiB) DATA.
    let mut raw = ProxyServiceClient::new(channel.clone());
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(Packet::data(1, vec![0u8; 8 << 20].into()))
        .await
        .unwrap();
    let mut st = raw
        .proxy(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let r = tokio::time::timeout(Duration::from_secs(10), st.message())
        .await
        .expect("no hang");
    assert!(r.is_err(), "oversized stream fails: {r:?}");
    drop(tx);

    // A 4 MiB DATA message (konnectivity-client sends a whole Write as one
    // packet) is accepted and relayed.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(Packet::dial_req(&target.to_string(), 777))
        .await
        .unwrap();
    let mut st = raw
        .proxy(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let rsp = st.message().await.unwrap().unwrap();
    let Some(Payload::DialResponse(d)) = rsp.payload else {
        panic!("{rsp:?}")
    };
    assert!(d.error.is_empty(), "{}", d.error);
    let len = 4 * 1024 * 1024 - 1024;
    let mut body = vec![0u8; len];
    fill(5, &mut body);
    let mut msg =
        format!("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\n\r\n").into_bytes();
    msg.extend_from_slice(&body);
    tx.send(Packet::data(d.connect_id, msg.into()))
        .await
        .unwrap();
    let mut got = Vec::new();
    loop {
        let p = st.message().await.unwrap().expect("stream open");
        match (p.kind(), p.payload) {
            (Some(PacketType::Data), Some(Payload::Data(d))) => got.extend_from_slice(&d.data),
            (Some(PacketType::CloseRsp), _) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(String::from_utf8_lossy(&got).ends_with(&sha256_hex(&body)));
    drop(tx);
    drop(st);

    // The healthy tunnel is unaffected.
    let (status, body) = http_request(&mut good, "Host: x\r\n\r\n").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(body, b"hello");
    drop(good);
    drop(client);
    drop(raw);
    drop(channel);
    assert_no_leaks(&s.handle, Some(&a.handle)).await;
    s.token.cancel();
    a.token.cancel();
}
