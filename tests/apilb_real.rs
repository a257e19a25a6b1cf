//! The node-local apiserver balancer with the real control plane: three
//! controllers (one network namespace, an address each) and one worker in a
//! namespace of its own. The worker's kubelet and kube-proxy reach the
//! apiservers only through `127.0.0.1:7443`; kill -9 of the controller the
//! kubelet was talking to:
//!
//! - the balancer takes the dead apiserver out of rotation (measured);
//! - the node stays `Ready` and its heartbeat (its Lease in
//!   `kube-node-lease`) keeps being renewed, as a survivor sees it;
//! - a pod on the worker that calls `https://kubernetes.default.svc` keeps
//!   getting answers;
//! - `mkectl status` and the metrics page show the backends and their health.
//!
//! Needs root and the upstream binaries (`MKECTL_UPSTREAM_BIN_DIR`).

mod common;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use common::cluster::*;
use common::join::{token_create, token_file};
use common::netns::{bridge_port, Netns};
use common::upstream::{
    kube_ports_spec, through_etcd_leader_change, wait_ready, ETCD_LEADER_CHANGED,
};
use common::*;

const CONTROLLERS: [(&str, &str); 3] = [
    ("lb-c1", "192.0.2.11"),
    ("lb-c2", "192.0.2.12"),
    ("lb-c3", "192.0.2.13"),
];
const WORKER_IP: &str = "192.0.2.20";
const API_PORT: u16 = mkectl::config::defaults::API_PORT;
const LB: &str = "https://127.0.0.1:7443";
/// How long the node is watched after the kill: past the controller
/// manager's node-monitor grace period (40 s), so a lost heartbeat would
/// show as NotReady.
const WATCH_AFTER_KILL: Duration = Duration::from_secs(50);

fn status(w: &Worker, bin: &Path) -> Option<serde_json::Value> {
    let o = w.mkectl(bin, &["status", "-o", "json"]).output().ok()?;
    serde_json::from_slice(&o.stdout).ok()
}

/// `(addr, healthy, active connections)` of every backend.
fn backends(w: &Worker, bin: &Path) -> Vec<(String, bool, u64)> {
    let Some(v) = status(w, bin) else {
        return Vec::new();
    };
    v["apiLoadBalancer"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|b| {
                    (
                        b["addr"].as_str().unwrap_or_default().to_string(),
                        b["healthy"] == true,
                        b["activeConnections"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The node's Lease renewTime, or None when it cannot be read. Both
/// queries below go to a survivor right after the kill of a controller
/// whose etcd member may have led, so they pass through etcd's transient
/// "leader changed" ([`through_etcd_leader_change`]); the retries are
/// added to `retries` for the test to print.
fn node_lease_renewed(ctl: &Node, node: &str, retries: &mut usize) -> Option<SystemTime> {
    let (o, r) = through_etcd_leader_change(|| {
        ctl.kubectl(&[
            "get",
            "lease",
            "-n",
            "kube-node-lease",
            node,
            "-o",
            "jsonpath={.spec.renewTime}",
        ])
    });
    *retries += r;
    humantime::parse_rfc3339(text(&o.stdout).trim()).ok()
}

/// Whether the node's Ready condition is True; Err(kubectl's message) when
/// the apiserver could not answer, which is not the same as NotReady.
fn node_ready(ctl: &Node, node: &str, retries: &mut usize) -> Result<bool, String> {
    let (o, r) = through_etcd_leader_change(|| {
        ctl.kubectl(&[
            "get",
            "node",
            node,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ])
    });
    *retries += r;
    if o.status.success() {
        Ok(text(&o.stdout).trim() == "True")
    } else {
        Err(format!("{}: {}", o.status, text(&o.stderr)))
    }
}

const CALLER: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: caller, namespace: default}
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: caller
      image: IMAGE
      imagePullPolicy: Never
      command: [/bin/busybox, sleep, "3600"]
"#;

#[test]
fn worker_keeps_its_apiserver_when_the_controller_it_used_dies() {
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
    let t0 = Instant::now();
    let tmp = tempfile::Builder::new()
        .prefix("mkapilb-")
        .tempdir_in("/tmp")
        .unwrap();

    // --- Network: one Ethernet segment (a bridge in a namespace of its
    // own) with a namespace per controller and one for the worker. (Not
    // one namespace for all three controllers: traffic between addresses of
    // one namespace leaves from the destination's address, and etcd checks
    // a peer's certificate against the source address.)
    let switch = Netns::new("lbsw");
    switch.ip(&["link", "add", "br0", "type", "bridge"]);
    switch.ip(&["link", "set", "br0", "up"]);
    let mut w = Worker::new("lb-w1", WORKER_IP, tmp.path(), "");
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

    // --- Three controllers; the second and third join the first.
    let mut ctl_ns = Vec::new();
    let nodes: Vec<Node> = CONTROLLERS
        .iter()
        .enumerate()
        .map(|(i, (name, ip))| {
            let ns = Netns::new(name);
            bridge_port(
                &switch,
                "br0",
                &format!("p{i}"),
                &ns,
                "eth0",
                &format!("{ip}/24"),
            );
            // Pods reach the apiservers without NAT (the `kubernetes`
            // Service): the way back to the pod network is via the worker.
            ns.ip(&["route", "add", "10.244.0.0/16", "via", WORKER_IP]);
            let [kcm, scheduler] = free_ports();
            let mut n = Node::in_netns(
                name,
                &ns,
                ip,
                &format!(
                    "{}  network:\n    provider: custom\n",
                    kube_ports_spec(kcm, scheduler)
                ),
            );
            // One apiserver port for all, as in production: the `kubernetes`
            // Service's endpoints carry one port for every apiserver.
            let cfg = fs::read_to_string(&n.config).unwrap().replace(
                &format!("    port: {}\n", n.api_port),
                &format!("    port: {API_PORT}\n"),
            );
            fs::write(&n.config, cfg).unwrap();
            n.api_port = API_PORT;
            ctl_ns.push(ns);
            n
        })
        .collect();
    let mut procs: Vec<Option<Controller>> = Vec::new();
    let mut first = nodes[0].start_controller(&["--bin-dir", bin.to_str().unwrap()]);
    wait_ready(&mut first, "controller ready");
    procs.push(Some(first));
    let ctok = token_create(&nodes[0], "controller", &[]);
    let ctok_file = token_file(&nodes[0], "controller.token", &ctok);
    for n in &nodes[1..] {
        let mut p = n.start_controller(&[
            "--bin-dir",
            bin.to_str().unwrap(),
            "--token-file",
            ctok_file.to_str().unwrap(),
        ]);
        wait_ready(&mut p, "controller ready");
        procs.push(Some(p));
    }
    eprintln!("three controllers ready after {:?}", t0.elapsed());

    // --- The worker joins through the first controller's join API.
    let wtok = token_create(&nodes[0], "worker", &[]);
    let wtok_file = token_file(&nodes[0], "worker.token", &wtok);
    w.start(&bin, Some(&wtok_file));
    let diag = |w: &Worker| w.log_tail();
    let cidr = poll(
        "worker pod CIDR",
        NODE_READY,
        || diag(&w),
        || {
            let o = nodes[0].kubectl(&["get", "node", "lb-w1", "-o", "jsonpath={.spec.podCIDR}"]);
            let s = text(&o.stdout);
            (o.status.success() && !s.trim().is_empty()).then_some(s)
        },
    );
    fs::write(w.cni_conf_dir.join("10-lb.conflist"), conflist(cidr.trim())).unwrap();
    poll(
        "worker Ready",
        NODE_READY,
        || diag(&w),
        || node_ready(&nodes[0], "lb-w1", &mut 0).ok().filter(|r| *r),
    );
    // The balancer knows all three apiservers and finds them healthy; the
    // kubelet's kubeconfigs point at it.
    let all = poll(
        "three healthy backends",
        NODE_READY,
        || diag(&w),
        || {
            let b = backends(&w, &bin);
            (b.len() == 3 && b.iter().all(|(_, up, _)| *up)).then_some(b)
        },
    );
    for f in ["kubelet/kubelet.conf", "kubelet/bootstrap-kubelet.conf"] {
        let kc = fs::read_to_string(w.data.join(f)).unwrap();
        assert!(kc.contains(&format!("server: {LB}")), "{f}:\n{kc}");
    }
    let page = output_ok(w.ns.cmd("curl").args([
        "-sf",
        &format!(
            "http://127.0.0.1:{}/metrics",
            mkectl::config::defaults::METRICS_PORT
        ),
    ]));
    assert!(
        page.lines()
            .filter(|l| l.starts_with("mkectl_apilb_backend_healthy{") && l.ends_with(" 1"))
            .count()
            == 3,
        "metrics page:\n{page}"
    );
    let text_status = text(&w.mkectl(&bin, &["status"]).output().unwrap().stdout);
    assert!(
        text_status.contains("API balancer: 3 apiserver(s), 3 up"),
        "{text_status}"
    );
    eprintln!("balancer backends: {all:?}");

    // A pod on the worker that calls the `kubernetes` Service.
    let manifest = tmp.path().join("caller.yaml");
    fs::write(&manifest, CALLER.replace("IMAGE", BUSYBOX_IMAGE)).unwrap();
    nodes[0].kubectl_ok(&["apply", "-f", manifest.to_str().unwrap()]);
    let call_api = |ctl: &Node| -> bool {
        let o = ctl.kubectl(&[
            "exec",
            "caller",
            "--",
            BUSYBOX,
            "sh",
            "-c",
            "/bin/busybox timeout 5 /bin/busybox wget -q --no-check-certificate -O - --header \"Authorization: Bearer $(/bin/busybox cat /var/run/secrets/kubernetes.io/serviceaccount/token)\" https://kubernetes.default.svc/api",
        ]);
        let ok = o.status.success() && text(&o.stdout).contains("APIVersions");
        if !ok {
            eprintln!(
                "caller: {}: {}{}",
                o.status,
                text(&o.stdout),
                text(&o.stderr)
            );
        }
        ok
    };
    poll(
        "the pod reaches kubernetes.default.svc",
        PODS_RUNNING,
        || diag(&w),
        || call_api(&nodes[0]).then_some(()),
    );

    // --- kill -9 the controller whose apiserver holds the most of the
    // node's connections (the kubelet's and kube-proxy's).
    let (victim_addr, _, conns) = backends(&w, &bin)
        .into_iter()
        .max_by_key(|(_, _, c)| *c)
        .unwrap();
    assert!(conns > 0, "no connection through the balancer");
    let victim = CONTROLLERS
        .iter()
        .position(|(_, ip)| victim_addr.starts_with(&format!("{ip}:")))
        .unwrap();
    let survivor = &nodes[(victim + 1) % 3];
    let renewed_before = poll(
        "the node's Lease",
        NODE_READY,
        || diag(&w),
        || node_lease_renewed(survivor, "lb-w1", &mut 0),
    );
    eprintln!(
        "killing {} ({victim_addr}, {conns} node connections)",
        CONTROLLERS[victim].0
    );
    let mut p = procs[victim].take().unwrap();
    let killed = Instant::now();
    signal(p.pid(), libc::SIGKILL);
    p.wait_exit(Duration::from_secs(10));
    let down_after = poll(
        "the dead apiserver out of rotation",
        Duration::from_secs(10),
        || diag(&w),
        || {
            backends(&w, &bin)
                .iter()
                .any(|(a, up, _)| *a == victim_addr && !*up)
                .then(|| killed.elapsed())
        },
    );
    eprintln!("balancer marked {victim_addr} down {down_after:?} after the kill");

    // The node stays Ready and keeps renewing its Lease; the pod keeps
    // reaching the apiserver.
    let mut renewals = Vec::new();
    let mut last = renewed_before;
    let mut api_ok_after = None;
    let mut leader_change_retries = 0;
    while killed.elapsed() < WATCH_AFTER_KILL {
        match node_ready(survivor, "lb-w1", &mut leader_change_retries) {
            Ok(true) => {}
            Ok(false) => panic!(
                "the node went NotReady {:?} after the kill\n{}",
                killed.elapsed(),
                diag(&w)
            ),
            Err(e) => panic!(
                "the survivor's apiserver did not answer {:?} after the kill: {e}\n{}",
                killed.elapsed(),
                diag(&w)
            ),
        }
        if let Some(r) = node_lease_renewed(survivor, "lb-w1", &mut leader_change_retries) {
            if r > last {
                renewals.push(killed.elapsed());
                last = r;
            }
        }
        if api_ok_after.is_none() && call_api(survivor) {
            api_ok_after = Some(killed.elapsed());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    eprintln!(
        "after the kill: node Ready throughout {WATCH_AFTER_KILL:?}; lease renewed at {renewals:?}; pod reached kubernetes.default.svc after {api_ok_after:?}; \
         {leader_change_retries} kubectl call(s) retried after etcd's transient \"{ETCD_LEADER_CHANGED}\""
    );
    assert!(
        renewals.len() >= 3,
        "the node's heartbeat continued: renewals {renewals:?}"
    );
    assert!(api_ok_after.is_some(), "the pod lost the apiserver");
    // And still at the end (the dead endpoint long gone from the Service).
    assert!(call_api(survivor), "the pod at the end of the watch");
    eprintln!("apilb real: total {:?}", t0.elapsed());
    drop(w);
    drop(procs);
}
