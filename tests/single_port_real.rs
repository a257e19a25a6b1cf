//! `spec.api.exposeStrategy: single-port` with the real control plane and a
//! real worker: the worker's namespace has a firewall (nft rules this test
//! creates) that lets it reach the controller on 6443 only. Through that one
//! port it joins (join API), opens its konnectivity tunnel, registers its
//! node (kube-apiserver), becomes `Ready`, and `kubectl logs` of a pod on it
//! works (apiserver → konnectivity → kubelet).
//!
//! Needs root, nft and the upstream binaries (`MKECTL_UPSTREAM_BIN_DIR`).

mod common;

use std::fs;
use std::process::Command;
use std::time::Instant;

use common::cluster::*;
use common::join::{token_create, token_file};
use common::netns::{bridge_port, Netns};
use common::upstream::{kube_ports_spec, wait_ready};
use common::*;
use mkectl::join::JoinToken;

const CTL_IP: &str = "192.0.2.41";
const WORKER_IP: &str = "192.0.2.42";
const API_PORT: u16 = mkectl::config::defaults::API_PORT;

const TALKER: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: talker, namespace: default}
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: talker
      image: IMAGE
      imagePullPolicy: Never
      command: [/bin/busybox, sh, -c, "echo through-one-port; exec /bin/busybox sleep 3600"]
"#;

/// A TCP connect from the worker's namespace to the controller, 3 s bound.
fn worker_connects(w: &Worker, port: u16) -> bool {
    w.ns.cmd("timeout")
        .args([
            "3",
            "bash",
            "-c",
            &format!("exec 3<>/dev/tcp/{CTL_IP}/{port}"),
        ])
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[test]
fn a_worker_allowed_only_the_api_port_joins_and_serves_logs() {
    let Some(bin) = common::upstream::upstream_bins(&[
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kubelet",
        "kube-proxy",
        "coredns",
    ]) else {
        return;
    };
    assert!(
        Command::new("nft").arg("--version").output().is_ok(),
        "nft (package nftables) is needed to build the worker's firewall"
    );
    let t0 = Instant::now();
    let tmp = tempfile::Builder::new()
        .prefix("mksingle-")
        .tempdir_in("/tmp")
        .unwrap();

    // --- Network: a bridge with the controller and the worker on it.
    let switch = Netns::new("spsw");
    switch.ip(&["link", "add", "br0", "type", "bridge"]);
    switch.ip(&["link", "set", "br0", "up"]);
    let ctl_ns = Netns::new("sp-c1");
    bridge_port(
        &switch,
        "br0",
        "pc",
        &ctl_ns,
        "eth0",
        &format!("{CTL_IP}/24"),
    );
    let mut w = Worker::new("sp-w1", WORKER_IP, tmp.path(), "");
    bridge_port(
        &switch,
        "br0",
        "pw",
        &w.ns,
        "eth0",
        &format!("{WORKER_IP}/24"),
    );
    output_ok(w.ns.cmd("sysctl").args(["-qw", "net.ipv4.ip_forward=1"]));
    stage_images(&bin, tmp.path(), &[w.data.as_path()]);

    // --- The worker may reach the controller on the API port only.
    let rules = format!(
        "table inet mkectl_test_fw {{\n  chain out {{\n    type filter hook output priority 0; policy accept;\n    ip daddr {CTL_IP} tcp dport {API_PORT} accept\n    ip daddr {CTL_IP} counter drop\n  }}\n}}\n"
    );
    let rules_file = tmp.path().join("fw.nft");
    fs::write(&rules_file, rules).unwrap();
    output_ok(w.ns.cmd("nft").arg("-f").arg(&rules_file));

    // --- The controller, single-port.
    let [kcm, scheduler] = free_ports();
    let mut ctl = Node::in_netns(
        "sp-c1",
        &ctl_ns,
        CTL_IP,
        &format!(
            "{}  network:\n    provider: custom\n",
            kube_ports_spec(kcm, scheduler)
        ),
    );
    let cfg = fs::read_to_string(&ctl.config).unwrap();
    let api_line = format!("    port: {}\n", ctl.api_port);
    assert!(cfg.contains(&api_line), "{cfg}");
    fs::write(
        &ctl.config,
        cfg.replace(
            &api_line,
            &format!("    port: {API_PORT}\n    exposeStrategy: single-port\n"),
        ),
    )
    .unwrap();
    ctl.api_port = API_PORT;
    let mut p = ctl.start_controller(&["--bin-dir", bin.to_str().unwrap()]);
    wait_ready(&mut p, "controller ready");
    eprintln!("controller ready after {:?}", t0.elapsed());

    // kube-apiserver listens on loopback only; the node address's 6443 is
    // the front. Everything else (etcd peer, the ports of `ports` mode)
    // is closed to the worker by its firewall.
    let listening = text(
        &ctl_ns
            .cmd("ss")
            .args(["-Htlnp", &format!("sport = :{API_PORT}")])
            .output()
            .unwrap()
            .stdout,
    );
    assert!(
        listening.contains(&format!("127.0.0.1:{API_PORT}"))
            && listening.contains(&format!("{CTL_IP}:{API_PORT}")),
        "listeners on {API_PORT}:\n{listening}"
    );
    assert!(worker_connects(&w, API_PORT), "the API port is open");
    let etcd_peer = ctl.etcd_peer_port;
    assert!(
        !worker_connects(&w, etcd_peer),
        "the firewall lets the worker reach {CTL_IP}:{etcd_peer}"
    );

    // --- The token's join endpoint is the single port.
    let tok = token_create(&ctl, "worker", &[]);
    let decoded = JoinToken::decode(&tok).unwrap();
    assert_eq!(
        decoded.endpoints,
        vec![format!("https://{CTL_IP}:{API_PORT}")]
    );
    let tok_file = token_file(&ctl, "worker.token", &tok);
    w.start(&bin, Some(&tok_file));
    let diag = |w: &Worker| w.log_tail();
    let cidr = poll(
        "worker pod CIDR",
        NODE_READY,
        || diag(&w),
        || {
            let o = ctl.kubectl(&["get", "node", "sp-w1", "-o", "jsonpath={.spec.podCIDR}"]);
            let s = text(&o.stdout);
            (o.status.success() && !s.trim().is_empty()).then_some(s)
        },
    );
    fs::write(w.cni_conf_dir.join("10-sp.conflist"), conflist(cidr.trim())).unwrap();
    poll(
        "worker Ready",
        NODE_READY,
        || diag(&w),
        || {
            let o = ctl.kubectl(&[
                "get",
                "node",
                "sp-w1",
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ]);
            (text(&o.stdout).trim() == "True").then_some(())
        },
    );
    eprintln!("worker Ready after {:?}", t0.elapsed());

    // --- logs through the tunnel the worker opened on the single port.
    let manifest = tmp.path().join("talker.yaml");
    fs::write(&manifest, TALKER.replace("IMAGE", BUSYBOX_IMAGE)).unwrap();
    ctl.kubectl_ok(&["apply", "-f", manifest.to_str().unwrap()]);
    let logs = poll(
        "kubectl logs talker",
        PODS_RUNNING,
        || diag(&w),
        || {
            let o = ctl.kubectl(&["logs", "talker"]);
            (o.status.success() && text(&o.stdout).contains("through-one-port"))
                .then(|| text(&o.stdout))
        },
    );
    eprintln!("kubectl logs: {}", logs.trim());

    // The front counted each route, and the firewall dropped what the
    // worker tried elsewhere (the probe above at least).
    let page = output_ok(ctl_ns.cmd("curl").args([
        "-sf",
        &format!("http://127.0.0.1:{}/metrics", ctl.metrics_port),
    ]));
    for route in ["apiserver", "join", "konnectivity"] {
        let line = page
            .lines()
            .find(|l| {
                l.starts_with(&format!(
                    "mkectl_front_connections_total{{route=\"{route}\"}}"
                ))
            })
            .unwrap_or_else(|| panic!("no {route} counter on the metrics page:\n{page}"));
        let n: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(n > 0, "{line}");
    }
    let counters = output_ok(
        w.ns.cmd("nft")
            .args(["list", "table", "inet", "mkectl_test_fw"]),
    );
    assert!(
        !counters.contains("packets 0 "),
        "the firewall dropped nothing:\n{counters}"
    );
    eprintln!("single port real: total {:?}", t0.elapsed());
    drop(w);
    drop(p);
}
