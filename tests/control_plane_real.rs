//! `mkectl controller` with the real upstream control plane (kube-apiserver,
//! kube-controller-manager, kube-scheduler v1.32, built from their Go modules
//! by `packaging/build-upstream.sh`), Debian's etcd and the embedded
//! konnectivity server, on loopback.
//!
//! - the whole control plane comes up ready, kubectl works against it, the
//!   generated flags are accepted as they are;
//! - the apiserver reaches a node only through the konnectivity tunnel;
//! - kill -9 of each child: restarted, kubectl works again, nothing lost.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::upstream::{control_plane_bins, CONTROL_PLANE_READY, KUBE_VERSION};
use common::*;
use mkectl::pki::{self, Ca, KeyType};

/// The node address of the controller that must publish itself as the
/// `kubernetes` Service's endpoint (TEST-NET-1, inside a test namespace).
const NODE_IP: &str = "192.0.2.10";

/// Every line of `/readyz?verbose` (or `/livez?verbose`) is a passing check.
fn all_checks_ok(verbose: &str) -> bool {
    let checks: Vec<&str> = verbose
        .lines()
        .filter(|l| l.starts_with('[') && !l.contains("excluded"))
        .collect();
    !checks.is_empty()
        && checks
            .iter()
            .all(|l| l.starts_with("[+]") && l.ends_with(" ok"))
}

#[test]
fn whole_control_plane_comes_up_and_serves_kubectl() {
    let Some(bin) = control_plane_bins() else {
        return;
    };
    // kube-apiserver refuses to publish a loopback address as the
    // `kubernetes` Service's endpoint, so this node gets a namespace of its
    // own with a documentation address on its `lo`: everything still stays
    // on that namespace's loopback device.
    let ns = netns::Netns::new("cp-up");
    ns.ip(&["addr", "add", &format!("{NODE_IP}/32"), "dev", "lo"]);
    let node = Node::in_netns("cp-up", &ns, NODE_IP, "");
    let ctl = node.start_full_controller(&bin, &[]);

    // Every component in status is running and ready, the real binaries'
    // versions checked before anything started.
    let st = node.wait_status("status ready", CONTROL_PLANE_READY, |v| v["ready"] == true);
    for name in [
        "etcd",
        "konnectivity-server",
        "kube-apiserver",
        "join-api",
        "kube-controller-manager",
        "kube-scheduler",
        "applier",
    ] {
        let c = component(&st, name);
        assert_eq!(c["ready"], true, "{name}: {c}");
    }
    let log = ctl.log_text();
    for b in common::upstream::CONTROL_PLANE {
        assert!(
            log.contains(&format!("binary=\"{b}\"")) || log.contains(&format!("binary={b}")),
            "{b} was not version-checked:\n{log}"
        );
    }
    assert!(log.contains(KUBE_VERSION), "{log}");

    let readyz = node.kubectl_until(
        "/readyz?verbose all ok",
        CONTROL_PLANE_READY,
        &["get", "--raw", "/readyz?verbose"],
    );
    assert!(
        all_checks_ok(&readyz) || {
            // post-start hooks may still be finishing: ask again until all ok
            let again = node.kubectl_until(
                "readyz",
                CONTROL_PLANE_READY,
                &["get", "--raw", "/readyz?verbose"],
            );
            all_checks_ok(&again)
        },
        "{readyz}"
    );
    assert_eq!(node.kubectl_ok(&["get", "--raw", "/livez"]).trim(), "ok");
    let livez = node.kubectl_ok(&["get", "--raw", "/livez?verbose"]);
    assert!(all_checks_ok(&livez), "{livez}");

    let ns = node.kubectl_until(
        "kube-system",
        CONTROL_PLANE_READY,
        &["get", "ns", "kube-system", "-o", "name"],
    );
    assert_eq!(ns.trim(), "namespace/kube-system");
    let svc = node.kubectl_until(
        "kubernetes Service",
        CONTROL_PLANE_READY,
        &[
            "get",
            "service",
            "kubernetes",
            "-n",
            "default",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ],
    );
    assert_eq!(
        svc.trim(),
        "10.96.0.1",
        "the first address of the service CIDR"
    );
    let eps = wait_for(
        "kubernetes EndpointSlice with the apiserver",
        CONTROL_PLANE_READY,
        || {
            let out = node.kubectl(&[
                "get",
                "endpointslices",
                "-n",
                "default",
                "-l",
                "kubernetes.io/service-name=kubernetes",
                "-o",
                "jsonpath={.items[*].endpoints[*].addresses[*]}:{.items[*].ports[*].port}",
            ]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            (out.status.success() && text.contains(NODE_IP)).then_some(text)
        },
    );
    assert_eq!(eps.trim(), format!("{NODE_IP}:{}", node.api_port));

    // The flags were accepted as generated: nothing unknown, nothing
    // deprecated, in any component's own output.
    let log = ctl.log_text();
    for bad in [
        "unknown flag",
        "has been deprecated",
        "flag provided but not defined",
    ] {
        assert!(!log.contains(bad), "a component said {bad:?}:\n{log}");
    }
}

/// Where the test's "kubelet" listens: a second address on the controller
/// namespace's `lo`, reachable from the apiserver's own namespace, so only
/// the egress selector can explain a failure to reach it.
const TARGET_IP: &str = "192.0.2.20";

/// Serves HTTPS on `l` with a kubelet-like serving certificate from the
/// cluster CA (the apiserver verifies kubelets against it): any request
/// answers `target-ok`.
fn tls_target(
    rt: &tokio::runtime::Runtime,
    node: &Node,
    l: std::net::TcpListener,
) -> tokio::task::JoinHandle<()> {
    let issued = pki::issue_server_cert(
        &node.data.join("pki"),
        Ca::Cluster,
        "node-target",
        &[TARGET_IP.to_string()],
        Duration::from_secs(3600),
        KeyType::EcdsaP256,
    )
    .unwrap();
    use rustls_pki_types::pem::PemObject;
    let certs: Vec<_> =
        rustls_pki_types::CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    l.set_nonblocking(true).unwrap();
    let _guard = rt.enter();
    let l = tokio::net::TcpListener::from_std(l).unwrap();
    rt.spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((tcp, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let body = "target-ok";
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(resp.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    })
}

/// Sums the samples of `metric` on the konnectivity server's admin page
/// (read with curl inside the node's namespace) whose labels contain every
/// one of `labels`.
fn server_metric(node: &Node, metric: &str, labels: &[&str]) -> u64 {
    let url = format!("http://127.0.0.1:{}/metrics", node.konnectivity_admin_port);
    let page = output_ok(node.program("curl").args(["-sf", &url]));
    page.lines()
        .filter(|l| {
            l.split(['{', ' ']).next() == Some(metric) && labels.iter().all(|x| l.contains(x))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// Dial requests the apiserver sent into the konnectivity server.
fn dials_served(node: &Node) -> u64 {
    server_metric(
        node,
        "konnectivity_network_proxy_server_stream_packets_total",
        &["segment=\"from_client\"", "packet_type=\"DIAL_REQ\""],
    )
}

/// kube-apiserver's egress selector sends node traffic into the embedded
/// konnectivity server: a node proxy request reaches a target served behind
/// an agent, the server counts the dial, and without the agent the same
/// request fails although the target listens in the apiserver's own
/// namespace.
#[test]
fn apiserver_reaches_nodes_only_through_konnectivity() {
    let Some(bin) = control_plane_bins() else {
        return;
    };
    // The apiserver refuses to proxy to loopback node addresses, so the
    // node addresses here are documentation ones on the `lo` of a namespace
    // this test owns.
    let ns = netns::Netns::new("cp-egress");
    for ip in [NODE_IP, TARGET_IP] {
        ns.ip(&["addr", "add", &format!("{ip}/32"), "dev", "lo"]);
    }
    let node = Node::in_netns("cp-egress", &ns, NODE_IP, "");
    let _ctl = node.start_full_controller(
        &bin,
        &[
            "--disable-components",
            "kube-controller-manager,kube-scheduler",
        ],
    );

    // A node object whose kubelet endpoint is our TLS target.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let target = ns.enter(|| std::net::TcpListener::bind((TARGET_IP, 0)).unwrap());
    let target_port = target.local_addr().unwrap().port();
    let _srv = tls_target(&rt, &node, target);
    let f = node.tmp.path().join("node.json");
    std::fs::write(
        &f,
        r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"tunnel-node"}}"#,
    )
    .unwrap();
    node.kubectl_ok(&["create", "-f", f.to_str().unwrap()]);
    let status = format!(
        r#"{{"status":{{"addresses":[{{"type":"InternalIP","address":"{TARGET_IP}"}}],"daemonEndpoints":{{"kubeletEndpoint":{{"Port":{target_port}}}}}}}}}"#
    );
    node.kubectl_ok(&[
        "patch",
        "node",
        "tunnel-node",
        "--subresource=status",
        "--type=merge",
        "-p",
        &status,
    ]);
    let proxy_path = "/api/v1/nodes/tunnel-node/proxy/healthz";

    // The target answers a direct connection from this namespace...
    let direct = output_ok(
        node.program("curl")
            .args(["-sk", &format!("https://{TARGET_IP}:{target_port}/healthz")]),
    );
    assert_eq!(direct, "target-ok");
    // ...but with no agent the apiserver cannot reach it: its dial went to
    // the konnectivity server, which has nobody to hand it to.
    let out = node.kubectl(&["get", "--raw", proxy_path]);
    assert!(!out.status.success(), "reached the node without a tunnel");
    let before = dials_served(&node);
    if before == 0 {
        std::fs::copy(&_ctl.log, "/tmp/egress-ctl.log").unwrap();
    }
    assert!(
        before >= 1,
        "the apiserver's dial did not reach the konnectivity server: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // An agent (mkectl konnectivity agent, in the namespace) with a client
    // certificate from the konnectivity CA.
    let agent_cert = pki::issue_client_cert(
        &node.data.join("pki"),
        Ca::Konnectivity,
        "tunnel-node",
        &[],
        Duration::from_secs(3600),
        KeyType::EcdsaP256,
    )
    .unwrap();
    let dir = node.tmp.path();
    std::fs::write(dir.join("agent.crt"), &agent_cert.cert_pem).unwrap();
    std::fs::write(dir.join("agent.key"), &agent_cert.key_pem).unwrap();
    let path = |n: &str| dir.join(n).to_str().unwrap().to_string();
    let ca = node.pki("konnectivity/ca.crt");
    let agent_args = [
        "konnectivity".to_string(),
        "agent".into(),
        "--proxy-server-host".into(),
        NODE_IP.into(),
        "--proxy-server-port".into(),
        node.konnectivity_agent_port.to_string(),
        "--ca-cert".into(),
        ca.to_str().unwrap().into(),
        "--agent-cert".into(),
        path("agent.crt"),
        "--agent-key".into(),
        path("agent.key"),
        "--admin-port".into(),
        node.spare_port.to_string(),
    ];
    let agent_args: Vec<&str> = agent_args.iter().map(String::as_str).collect();
    let mut agent = node.spawn_logged("agent", &agent_args);
    let node_ref = &node;
    let connected = |n: u64| {
        move || {
            let backends = server_metric(
                node_ref,
                "konnectivity_network_proxy_server_ready_backends",
                &[],
            );
            (backends == n).then_some(())
        }
    };
    wait_for("agent connected", Duration::from_secs(30), connected(1));

    let body = node.kubectl_until(
        "node proxy through the tunnel",
        Duration::from_secs(30),
        &["get", "--raw", proxy_path],
    );
    assert_eq!(body.trim(), "target-ok");
    let after = dials_served(&node);
    assert!(
        after > before,
        "the proxied request was not dialled through konnectivity ({before} -> {after})"
    );

    // Agent gone: the same request fails again.
    signal(agent.pid(), libc::SIGKILL);
    agent.wait_exit(Duration::from_secs(10));
    wait_for("agent disconnected", Duration::from_secs(30), connected(0));
    let out = node.kubectl(&["get", "--raw", proxy_path]);
    assert!(
        !out.status.success(),
        "reached the node with the agent gone: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// kill -9 of each control-plane child under the real stack: it is
/// restarted, kubectl works again, and a ConfigMap written before is there.
#[test]
fn kill_9_of_each_child_is_recovered_without_loss() {
    let Some(bin) = control_plane_bins() else {
        return;
    };
    let node = Node::control_plane_node("cp-kill", "127.0.0.1");
    let _ctl = node.start_full_controller(&bin, &[]);
    node.kubectl_until(
        "ConfigMap written",
        CONTROL_PLANE_READY,
        &[
            "create",
            "configmap",
            "survivor",
            "-n",
            "default",
            "--from-literal=k=v1",
        ],
    );
    for child in [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
    ] {
        let pid = node
            .child_pid(child)
            .unwrap_or_else(|| panic!("{child} pid file"));
        signal(pid, libc::SIGKILL);
        let new_pid = wait_for(&format!("{child} restarted"), CONTROL_PLANE_READY, || {
            node.child_pid(child).filter(|p| *p != pid && alive(*p))
        });
        assert_ne!(new_pid, pid);
        node.kubectl_until(
            &format!("kubectl get ns after kill -9 of {child}"),
            CONTROL_PLANE_READY,
            &["get", "ns", "kube-system"],
        );
        let v = node.kubectl_until(
            "the ConfigMap",
            CONTROL_PLANE_READY,
            &[
                "get",
                "configmap",
                "survivor",
                "-n",
                "default",
                "-o",
                "jsonpath={.data.k}",
            ],
        );
        assert_eq!(v, "v1", "after kill -9 of {child}");
        node.wait_status(
            &format!("status ready after {child}"),
            CONTROL_PLANE_READY,
            |v| v["ready"] == true,
        );
    }
}
