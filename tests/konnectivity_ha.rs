//! HA: one agent given two server addresses connects to both (each server's
//! /readyz shows it); when one server dies new tunnels go through the other.

mod common;

use std::time::Duration;

use common::konnectivity::*;
use mkectl::konnectivity::client::ProxyClient;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_connects_to_both_servers_and_survives_one() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let (target, _t) = http_target().await;
    let mut c1 = server_config(&pki, dir.path(), "s1", "127.0.0.1:0".parse().unwrap());
    c1.server_count = 2;
    let mut c2 = server_config(&pki, dir.path(), "s2", "127.0.0.2:0".parse().unwrap());
    c2.server_count = 2;
    let s1 = start_server_with(c1).await;
    let s2 = start_server_with(c2).await;
    for s in [&s1, &s2] {
        let (code, body) = http_get(s.handle.admin_addr().unwrap(), "/readyz").await;
        assert_eq!(
            (code, body.as_str()),
            (500, "no connection to any proxy agent")
        );
    }
    let a = start_agent(
        &pki.agent,
        &[s1.handle.agent_addr(), s2.handle.agent_addr()],
    )
    .await;
    let ah = &a.handle;
    wait_until(Duration::from_secs(10), "agent on both servers", || {
        ah.connected_servers().len() == 2
    })
    .await;
    assert_eq!(
        a.handle.connected_servers(),
        vec!["s1".to_string(), "s2".to_string()]
    );
    assert_eq!(a.handle.known_server_count(), 2);
    for s in [&s1, &s2] {
        let (code, body) = http_get(s.handle.admin_addr().unwrap(), "/readyz?verbose").await;
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("agent agent-"), "{body}");
        assert_eq!(
            s.handle.ready_backends(),
            1,
            "exactly one stream per server"
        );
    }
    let (code, body) = http_get(a.handle.admin_addr().unwrap(), "/readyz?verbose").await;
    assert_eq!(code, 200);
    assert!(
        body.contains("server s1") && body.contains("server s2"),
        "{body}"
    );
    let (code, page) = http_get(a.handle.admin_addr().unwrap(), "/metrics").await;
    assert_eq!(code, 200);
    assert!(
        page.contains("konnectivity_network_proxy_agent_open_server_connections 2"),
        "{page}"
    );

    // Tunnels work through each server.
    for s in [&s1, &s2] {
        let client = ProxyClient::connect_uds(&s.grpc_uds).await.unwrap();
        let mut c = client.dial(&target.to_string()).await.unwrap();
        let (status, _) = http_request(&mut c, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(status, "HTTP/1.1 200 OK");
    }

    // Kill s1: the agent keeps s2, new tunnels go through s2.
    let open_on_s1 = {
        let client = ProxyClient::connect_uds(&s1.grpc_uds).await.unwrap();
        client.dial(&target.to_string()).await.unwrap()
    };
    s1.token.cancel();
    s1.handle.wait_stopped().await;
    wait_until(Duration::from_secs(10), "agent notices s1 gone", || {
        ah.connected_servers() == vec!["s2".to_string()]
    })
    .await;
    drop(open_on_s1);
    let client = ProxyClient::connect_uds(&s2.grpc_uds).await.unwrap();
    for _ in 0..5 {
        let mut c = client.dial(&target.to_string()).await.unwrap();
        let (status, body) = http_request(&mut c, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(body, b"hello");
    }
    let (code, _) = http_get(s2.handle.admin_addr().unwrap(), "/readyz").await;
    assert_eq!(code, 200);
    drop(client);
    assert_no_leaks(&s2.handle, None).await;
    wait_until(Duration::from_secs(10), "agent endpoints closed", || {
        ah.open_endpoint_connections() == 0
    })
    .await;
    a.token.cancel();
    s2.token.cancel();
    a.handle.wait_stopped().await;
    s2.handle.wait_stopped().await;
}
