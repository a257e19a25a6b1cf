//! The konnectivity server embedded in `mkectl controller`: the egress
//! selector file it writes for kube-apiserver points at a socket that really
//! tunnels, agents need a certificate from the cluster's konnectivity CA, and
//! /readyz follows connected agents.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::konnectivity::{
    http_get, http_request, http_target, start_agent_with_identifiers, wait_until,
};

/// An agent announcing its certificate's name (`agent_tls` issues no
/// address): the embedded server binds identities to certificates.
async fn start_agent(
    tls: &mkectl::konnectivity::TlsFiles,
    servers: &[std::net::SocketAddr],
) -> common::konnectivity::TestAgent {
    start_agent_with_identifiers(tls, servers, "host=agent-test").await
}
use common::*;
use mkectl::konnectivity::client::dial_grpc_uds;
use mkectl::konnectivity::TlsFiles;
use mkectl::pki::{self, Ca, KeyType};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct EgressSelectorConfiguration {
    api_version: String,
    kind: String,
    egress_selections: Vec<Selection>,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Selection {
    name: String,
    connection: Connection,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Connection {
    proxy_protocol: String,
    transport: Transport,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Transport {
    uds: Uds,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Uds {
    uds_name: String,
}

fn agent_tls(node: &Node, ca: Ca) -> TlsFiles {
    let cert = pki::issue_client_cert(
        &node.data.join("pki"),
        ca,
        "agent-test",
        &[],
        Duration::from_secs(3600),
        KeyType::EcdsaP256,
    )
    .unwrap();
    let dir = node.tmp.path();
    let name = format!("{ca:?}").to_lowercase();
    std::fs::write(dir.join(format!("{name}.crt")), &cert.cert_pem).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), &cert.key_pem).unwrap();
    TlsFiles {
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
        ca: node.pki("konnectivity/ca.crt"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn egress_selector_socket_tunnels_to_an_agent_target() {
    let node = Node::new("ctl-k");
    let _ctl = node.start_controller(NO_KUBE_BINARIES);
    let admin: SocketAddr = format!("127.0.0.1:{}", node.konnectivity_admin_port)
        .parse()
        .unwrap();
    wait_for(
        "konnectivity admin /healthz",
        Duration::from_secs(30),
        || std::net::TcpStream::connect(admin).ok(),
    );
    assert_eq!(http_get(admin, "/healthz").await.0, 200);
    assert_ne!(
        http_get(admin, "/readyz").await.0,
        200,
        "ready with no agent"
    );

    // The egress selector file parses into the documented schema.
    let text = std::fs::read_to_string(node.data.join("config/egress-selector.yaml")).unwrap();
    let cfg: EgressSelectorConfiguration = serde_saphyr::from_str(&text).unwrap();
    assert_eq!(cfg.api_version, "apiserver.k8s.io/v1beta1");
    assert_eq!(cfg.kind, "EgressSelectorConfiguration");
    let cluster = cfg
        .egress_selections
        .iter()
        .find(|s| s.name == "cluster")
        .expect("a cluster selection");
    assert_eq!(cluster.connection.proxy_protocol, "GRPC");
    let uds = std::path::PathBuf::from(&cluster.connection.transport.uds.uds_name);
    assert_eq!(uds, node.run.join("konnectivity-server.sock"));
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&uds).unwrap().permissions());
    assert_eq!(mode & 0o007, 0, "socket open to others: {mode:o}");

    let agent_addr: SocketAddr = format!("127.0.0.1:{}", node.konnectivity_agent_port)
        .parse()
        .unwrap();

    // An agent with a certificate from another CA of the cluster is refused.
    let foreign = start_agent(&agent_tls(&node, Ca::Cluster), &[agent_addr]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(foreign.handle.connected_servers().len(), 0);
    foreign.token.cancel();

    // An agent with a konnectivity-CA certificate connects; /readyz follows.
    let agent = start_agent(&agent_tls(&node, Ca::Konnectivity), &[agent_addr]).await;
    wait_until(Duration::from_secs(10), "agent connected", || {
        agent.handle.connected_servers().len() == 1
    })
    .await;
    assert_eq!(agent.handle.connected_servers()[0], "ctl-k");
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while http_get(admin, "/readyz").await.0 != 200 {
        assert!(std::time::Instant::now() < end, "/readyz never turned 200");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // What kube-apiserver does: dial through the udsName to a node target.
    let (target, _stop) = http_target().await;
    let mut conn = dial_grpc_uds(&uds, &target.to_string()).await.unwrap();
    let (status, _) = http_request(
        &mut conn,
        "GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(status.contains("200"), "{status}");
    agent.token.cancel();
}
