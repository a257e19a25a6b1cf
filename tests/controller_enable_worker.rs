//! `mkectl controller --enable-worker`: the worker side (containerd, the
//! konnectivity agent, kubelet) in the controller's process, with its
//! credentials issued from the local CAs instead of a join.
//!
//! Real etcd, containerd and konnectivity server/agent; kube-apiserver,
//! controller-manager, scheduler and kubelet are upstream binaries CI does
//! not have, so they are disabled here (the kubelet's files are still
//! checked through `--init-only`, and vagrant/e2e.sh runs the real thing).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::konnectivity::{http_request, http_target};
use common::*;
use mkectl::konnectivity::client::dial_grpc_uds;

const START: Duration = Duration::from_secs(60);
const KUBE_AND_KUBELET: &str = "kube-apiserver,kube-controller-manager,kube-scheduler,kubelet";

fn openssl(args: &[&str]) -> String {
    output_ok(Command::new("openssl").args(args))
}

/// `openssl verify` of a client certificate against `ca`.
fn verify_client(ca: &Path, cert: &Path) {
    let out = openssl(&[
        "verify",
        "-purpose",
        "sslclient",
        "-CAfile",
        ca.to_str().unwrap(),
        cert.to_str().unwrap(),
    ]);
    assert!(out.contains("OK"), "{out}");
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn peers(status: &serde_json::Value, name: &str) -> Vec<String> {
    component(status, name)["peers"]["connected"]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn controller_runs_containerd_and_an_agent_tunnelling_to_this_node() {
    let node = Node::new("ew-1");
    let agent_admin = node.spare_port.to_string();
    let mut ctl = node.start_controller(&[
        "--disable-components",
        KUBE_AND_KUBELET,
        "--enable-worker",
        "--agent-admin-port",
        &agent_admin,
    ]);

    // Ready means every component, the worker side included, is up; the
    // embedded agent is connected to this controller's own server.
    let status = node.wait_status("controller+worker ready", START, |s| {
        peers(s, "konnectivity-agent") == ["ew-1"]
    });
    assert_eq!(status["role"], "controller+worker");
    let names: Vec<&str> = status["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    let pos = |n: &str| names.iter().position(|x| *x == n).unwrap();
    assert!(
        pos("etcd") < pos("konnectivity-server")
            && pos("konnectivity-server") < pos("containerd")
            && pos("containerd") < pos("konnectivity-agent"),
        "worker side starts after the control plane: {names:?}"
    );
    assert!(!names.contains(&"kubelet"), "{names:?}");
    assert_eq!(peers(&status, "konnectivity-server"), ["ew-1"]);
    assert_eq!(
        common::join::readyz(node.konnectivity_admin_port).await,
        200
    );
    assert_eq!(
        common::join::readyz(agent_admin.parse().unwrap()).await,
        200,
        "the agent's own /readyz"
    );

    // containerd is a supervised child and answers on the socket in the
    // controller's run dir.
    assert_eq!(
        component(&status, "containerd")["pid"].as_i64(),
        node.child_pid("containerd").map(i64::from),
        "{status:#}"
    );
    ctr_answers(&node.run.join("containerd/containerd.sock"));

    // What kube-apiserver does for logs/exec: dial a node address through
    // the egress socket; the embedded agent reaches it.
    let (target, _stop) = http_target().await;
    let uds = node.run.join("konnectivity-server.sock");
    let mut conn = dial_grpc_uds(&uds, &target.to_string()).await.unwrap();
    let (head, _) = http_request(
        &mut conn,
        "GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(head.contains("200"), "{head}");
    drop(conn);

    // The worker credentials come from the local CAs, private and chained.
    let kubelet_cert = node.pki("kubelet-client.crt");
    let subject = openssl(&[
        "x509",
        "-noout",
        "-subject",
        "-nameopt",
        "RFC2253",
        "-in",
        kubelet_cert.to_str().unwrap(),
    ]);
    assert!(
        subject.contains("CN=system:node:ew-1") && subject.contains("O=system:nodes"),
        "{subject}"
    );
    verify_client(&node.pki("ca.crt"), &kubelet_cert);
    let agent_cert = node.pki("konnectivity/agent.crt");
    verify_client(&node.pki("konnectivity/ca.crt"), &agent_cert);
    for key in [
        "kubelet-client.key",
        "konnectivity/agent.key",
        "kubelet.conf",
    ] {
        assert_eq!(mode(&node.pki(key)), 0o600, "{key}");
    }
    let view = output_ok(
        Command::new("kubectl")
            .args(["config", "view", "-o", "json", "--kubeconfig"])
            .arg(node.pki("kubelet.conf")),
    );
    let view: serde_json::Value = serde_json::from_str(&view).unwrap();
    assert_eq!(view["users"][0]["name"], "system:node:ew-1");
    // The kubelet goes through the node-local apiserver balancer.
    assert_eq!(
        view["clusters"][0]["cluster"]["server"],
        format!("https://127.0.0.1:{}", mkectl::apilb::DEFAULT_PORT)
    );

    // Renewing the agent's certificate restarts the agent alone; it comes
    // back connected with the new certificate.
    let before_cert = std::fs::read(&agent_cert).unwrap();
    let etcd_pid = component(&status, "etcd")["pid"].as_i64().unwrap();
    let out = node
        .cmd(&["certs", "renew", "konnectivity-agent"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("restarted: konnectivity-agent\n"), "{text}");
    assert_ne!(std::fs::read(&agent_cert).unwrap(), before_cert);
    let status = node.wait_status("agent back after renewal", START, |s| {
        peers(s, "konnectivity-agent") == ["ew-1"]
    });
    assert_eq!(
        component(&status, "etcd")["pid"].as_i64().unwrap(),
        etcd_pid,
        "etcd untouched"
    );

    // A clean stop leaves no containerd behind.
    let containerd_pid = node.child_pid("containerd").expect("containerd pid file");
    signal(ctl.pid(), libc::SIGTERM);
    let st = ctl.wait_exit(Duration::from_secs(60));
    assert!(st.success(), "{st}\n{}", ctl.log_text());
    wait_for("containerd gone", Duration::from_secs(10), || {
        (!alive(containerd_pid)).then_some(())
    });
}

/// The kubelet's files as `--init-only` writes them, without a kubelet
/// binary: `registerWithTaints` carries the control-plane taint unless
/// `--no-taints`, plus `--taints`; the kubelet's client CA is the cluster CA.
#[test]
fn kubelet_is_registered_with_the_control_plane_taint_unless_no_taints() {
    let taints = |extra: &[&str]| -> Vec<(String, String)> {
        let node = Node::new("ew-init");
        let mut args = vec!["controller", "--node-name", "ew-init", "--init-only"];
        args.push("--enable-worker");
        args.extend_from_slice(extra);
        let out = node.cmd(&args).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(node.data.join("kubelet/config.yaml")).unwrap();
        let cfg: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
        assert_eq!(
            cfg["authentication"]["x509"]["clientCAFile"],
            node.pki("ca.crt").display().to_string()
        );
        assert!(node.pki("kubelet.conf").is_file());
        cfg["registerWithTaints"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|t| {
                (
                    t["key"].as_str().unwrap().to_string(),
                    t["effect"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let cp = (
        "node-role.kubernetes.io/control-plane".to_string(),
        "NoSchedule".to_string(),
    );
    assert_eq!(taints(&[]), std::slice::from_ref(&cp));
    assert_eq!(taints(&["--no-taints"]), []);
    assert_eq!(
        taints(&["--taints", "dedicated=edge:NoExecute"]),
        [("dedicated".to_string(), "NoExecute".to_string()), cp]
    );
}

/// Worker-side flags without `--enable-worker` are usage errors (64) that
/// name the flag, and nothing is written.
#[test]
fn worker_side_flags_need_enable_worker() {
    let node = Node::new("ew-usage");
    for (args, needle) in [
        (vec!["--no-taints"], "--enable-worker"),
        (vec!["--labels", "a=b"], "--enable-worker"),
        (
            vec!["--disable-components", "kubelet"],
            "runs only with --enable-worker",
        ),
        (vec!["--enable-worker", "--taints", "bad-taint"], "taint"),
        (
            vec!["--enable-worker", "--disable-components", "nope"],
            "kubelet",
        ),
    ] {
        let mut full = vec!["controller", "--node-name", "ew-usage"];
        full.extend_from_slice(&args);
        let out = node.cmd(&full).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    assert!(!node.data.exists(), "nothing written for a refused command");
}
