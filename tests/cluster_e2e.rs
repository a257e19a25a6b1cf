//! A real cluster in network namespaces: one controller (the whole upstream
//! control plane under `mkectl controller`) and two workers (`mkectl worker
//! --token-file`: containerd, kubelet, kube-proxy, the konnectivity agent)
//! behind a NAT router, as docs/design.md ("Isolation") promises the product works:
//!
//! ```text
//!   controller ns            router ns                      worker ns (x2)
//!   192.0.2.10/24 ---- 192.0.2.1/24  (MASQUERADE out)
//!                      198.51.100.1/25   ---------------- 198.51.100.11/25   pods 10.244.a.0/24
//!                      198.51.100.129/25 ---------------- 198.51.100.140/25  pods 10.244.b.0/24
//! ```
//!
//! The controller has a route to its own /24 only: no route to the workers'
//! addresses nor to the pod CIDR (asserted: a direct TCP connect to a
//! kubelet fails). Everything the apiserver sends to a node goes through the
//! konnectivity tunnel the worker's agent opened outward. No namespace has a
//! default route; pods route only 10.0.0.0/8 (pods and Services).
//!
//! Pod networking is `network.provider: custom`: Debian's bridge,
//! host-local, loopback and portmap plugins with a conflist this test drops
//! into each worker's CNI config dir once the node has its pod CIDR, and the
//! routes between the pod subnets set on the router and workers (what an
//! operator's network does for a host-gateway setup).
//!
//! Needs root, the upstream binaries (`MKECTL_UPSTREAM_BIN_DIR`), etcd,
//! containerd, runc, kubectl, iptables, busybox-static and the CNI plugins.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::cluster::*;
use common::netns::{veth, Netns};
use common::upstream::wait_ready;
use common::*;

const CONTROLLER_IP: &str = "192.0.2.10";
const ROUTER_CTL_IP: &str = "192.0.2.1";
/// The whole cluster; dropped in field order: workers (with their pods),
/// then the controller, then the router.
struct Cluster {
    workers: Vec<Worker>,
    ctl: Option<Controller>,
    node: Node,
    _ctl_ns: Netns,
    router: Netns,
    bin: PathBuf,
    last_exec: std::cell::RefCell<String>,
}

impl Cluster {
    fn diag(&self) -> String {
        let mut s = format!("--- last exec\n{}\n", self.last_exec.borrow());
        for args in [
            &["get", "nodes", "-o", "wide"][..],
            &["get", "pods", "-A", "-o", "wide"],
            &["get", "events", "-A", "--sort-by=.lastTimestamp"],
        ] {
            let o = self.node.kubectl(args);
            s += &format!(
                "--- kubectl {}\n{}{}\n",
                args.join(" "),
                text(&o.stdout),
                text(&o.stderr)
            );
        }
        for w in &self.workers {
            s += &format!("--- {} log (tail)\n{}\n", w.name, w.log_tail());
        }
        s
    }

    fn kubectl_ok(&self, args: &[&str]) -> String {
        let o = self.node.kubectl(args);
        assert!(
            o.status.success(),
            "kubectl {args:?}: {}\n{}",
            text(&o.stderr),
            self.diag()
        );
        text(&o.stdout)
    }

    fn until(
        &self,
        what: &str,
        timeout: Duration,
        args: &[&str],
        ok: impl Fn(&str) -> bool,
    ) -> String {
        poll(
            what,
            timeout,
            || self.diag(),
            || {
                let o = self.node.kubectl(args);
                let out = text(&o.stdout);
                (o.status.success() && ok(&out)).then_some(out)
            },
        )
    }

    /// `kubectl exec <pod> -- <cmd>`: (success, stdout), or stdout +
    /// stderr on failure. (kubectl's websocket client may print notices such
    /// as "Unknown stream id 1, discarding message" on stderr of a
    /// successful exec; they are kept for the diagnostics only.)
    fn exec(&self, pod: &str, cmd: &[&str]) -> (bool, String) {
        let mut args = vec!["exec", pod, "--"];
        args.extend_from_slice(cmd);
        let o = self.node.kubectl(&args);
        let (stdout, stderr) = (text(&o.stdout), text(&o.stderr));
        *self.last_exec.borrow_mut() = format!(
            "kubectl exec {pod} -- {cmd:?}: {}\n{stdout}{stderr}",
            o.status
        );
        if o.status.success() {
            (true, stdout)
        } else {
            (false, stdout + &stderr)
        }
    }

    /// An HTTP GET from inside `pod`. Debian's busybox-static 1.35 wget
    /// segfaults on `-T`, so busybox's own `timeout` bounds it instead.
    fn wget(&self, pod: &str, url: &str) -> (bool, String) {
        self.exec(
            pod,
            &[
                BUSYBOX, "timeout", "5", BUSYBOX, "wget", "-q", "-O", "-", url,
            ],
        )
    }

    fn jsonpath(&self, args: &[&str], path: &str) -> String {
        let mut a = args.to_vec();
        let p = format!("jsonpath={path}");
        a.extend_from_slice(&["-o", &p]);
        self.kubectl_ok(&a)
    }
}

/// Dial requests the apiserver sent into the konnectivity server.
/// `curl` is a command that runs curl where the server's admin port is on
/// loopback.
fn dials_served(mut curl: Command, admin_port: u16) -> u64 {
    let url = format!("http://127.0.0.1:{admin_port}/metrics");
    let page = output_ok(curl.args(["-sf", &url]));
    page.lines()
        .filter(|l| {
            l.starts_with("konnectivity_network_proxy_server_stream_packets_total{")
                && l.contains("segment=\"from_client\"")
                && l.contains("packet_type=\"DIAL_REQ\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

const ECHO: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo, namespace: default}
spec:
  replicas: 2
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      terminationGracePeriodSeconds: 1
AFFINITY      containers:
        - name: echo
          image: IMAGE
          imagePullPolicy: Never
          command:
            - /bin/busybox
            - sh
            - -c
            - /bin/busybox mkdir -p /www && /bin/busybox hostname > /www/index.html && echo serving && exec /bin/busybox httpd -f -v -p 8080 -h /www
          ports: [{containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: default}
spec:
  selector: {app: echo}
  ports: [{port: 80, targetPort: 8080}]
"#;

/// One replica per node.
const SPREAD: &str = r#"      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
            - labelSelector: {matchLabels: {app: echo}}
              topologyKey: kubernetes.io/hostname
"#;

/// The echo Deployment and Service, `spread` over nodes or not.
fn echo_manifest(spread: bool) -> String {
    ECHO.replace("IMAGE", BUSYBOX_IMAGE)
        .replace("AFFINITY", if spread { SPREAD } else { "" })
}

/// Both tests here run a whole control plane and kubelets: one at a time on
/// a 2-core CI machine.
static ONE_CLUSTER_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn two_workers_behind_nat_run_pods_reached_only_through_konnectivity() {
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
    let _one = ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let t0 = Instant::now();
    let tmp = tempfile::Builder::new()
        .prefix("mke2e-")
        .tempdir_in("/tmp")
        .unwrap();

    // --- Network: controller, router, two workers.
    let router = Netns::new("rtr");
    let ctl_ns = Netns::new("ctl");
    veth(
        &ctl_ns,
        "eth0",
        &format!("{CONTROLLER_IP}/24"),
        &router,
        "r0",
        &format!("{ROUTER_CTL_IP}/24"),
    );
    let w_specs = [
        ("e2e-w1", "198.51.100.11", "198.51.100.1"),
        ("e2e-w2", "198.51.100.140", "198.51.100.129"),
    ];
    let mut workers = Vec::new();
    for (i, (name, ip, rip)) in w_specs.iter().enumerate() {
        let w = Worker::new(name, ip, tmp.path(), "");
        veth(
            &w.ns,
            "eth0",
            &format!("{ip}/25"),
            &router,
            &format!("r{}", i + 1),
            &format!("{rip}/25"),
        );
        w.ns.ip(&["route", "add", "192.0.2.0/24", "via", rip]);
        w.ns.ip(&["route", "add", "10.244.0.0/16", "via", rip]);
        // The host preparation `mkectl worker` checks for (hostcheck).
        output_ok(w.ns.cmd("sysctl").args(["-qw", "net.ipv4.ip_forward=1"]));
        workers.push(w);
    }
    output_ok(router.cmd("sysctl").args(["-qw", "net.ipv4.ip_forward=1"]));
    output_ok(router.cmd("iptables").args([
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-o",
        "r0",
        "-j",
        "MASQUERADE",
    ]));

    // Images every worker imports at start: busybox and CoreDNS.
    let data_dirs: Vec<&Path> = workers.iter().map(|w| w.data.as_path()).collect();
    stage_images(&bin, tmp.path(), &data_dirs);

    // --- Controller.
    let node = Node::in_netns(
        "e2e-ctl",
        &ctl_ns,
        CONTROLLER_IP,
        "  network:\n    provider: custom\n",
    );
    let mut ctl = node.start_controller(&["--bin-dir", bin.to_str().unwrap()]);
    wait_ready(&mut ctl, "controller ready");
    let controller_ready = t0.elapsed();
    eprintln!("controller ready after {controller_ready:?}");
    let mut c = Cluster {
        workers,
        ctl: Some(ctl),
        node,
        _ctl_ns: ctl_ns,
        router,
        bin: bin.clone(),
        last_exec: Default::default(),
    };

    // The isolation the product promises: no route from the controller to a
    // worker's kubelet.
    let direct = c
        .node
        .program("curl")
        .args([
            "-sk",
            "--connect-timeout",
            "3",
            "https://198.51.100.11:10250/healthz",
        ])
        .output()
        .unwrap();
    assert!(
        !direct.status.success(),
        "the controller reached a kubelet directly"
    );
    eprintln!(
        "direct connect from the controller to a kubelet: curl exit {:?}",
        direct.status.code()
    );

    // --- Workers join with a token file.
    let token = common::join::token_create(&c.node, "worker", &[]);
    let token_file = common::join::token_file(&c.node, "worker.token", &token);
    let workers_started = Instant::now();
    for w in c.workers.iter_mut() {
        w.start(&bin, Some(&token_file));
    }
    // Each node gets its pod CIDR from kube-controller-manager; the
    // operator's part: the CNI conflist and the routes between pod subnets.
    let mut subnets = Vec::new();
    for i in 0..c.workers.len() {
        let name = c.workers[i].name.clone();
        let cidr = c.until(
            &format!("{name} registered with a pod CIDR"),
            NODE_READY,
            &["get", "node", &name, "-o", "jsonpath={.spec.podCIDR}"],
            |s| !s.trim().is_empty(),
        );
        let cidr = cidr.trim().to_string();
        let w = &c.workers[i];
        fs::write(w.cni_conf_dir.join("10-mke-e2e.conflist"), conflist(&cidr)).unwrap();
        c.router.ip(&["route", "add", &cidr, "via", &w.ip]);
        subnets.push(cidr);
    }
    let mut ready_at = Vec::new();
    for w in &c.workers {
        c.until(
            &format!("{} Ready", w.name),
            NODE_READY,
            &[
                "get",
                "node",
                &w.name,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ],
            |s| s.trim() == "True",
        );
        ready_at.push(workers_started.elapsed());
    }
    eprintln!("nodes Ready {ready_at:?} after the workers started; pod CIDRs {subnets:?}");
    let wide = c.kubectl_ok(&["get", "nodes", "-o", "wide"]);
    eprintln!("{wide}");
    for (name, ip, _) in w_specs {
        let line = wide
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{wide}"));
        assert!(line.contains(" Ready ") && line.contains(ip), "{line}");
    }
    // Serving certificates: issued by the cluster CA after mkectl's
    // approver approved the kubelets' CSRs.
    let csrs = c.until(
        "kubelet serving CSRs approved and issued",
        NODE_READY,
        &["get", "csr", "-o", "jsonpath={range .items[?(@.spec.signerName==\"kubernetes.io/kubelet-serving\")]}{.spec.username} {.status.conditions[0].type} {.status.certificate}{\"\\n\"}{end}"],
        |s| {
            w_specs.iter().all(|(n, _, _)| {
                s.lines().any(|l| {
                    let f: Vec<&str> = l.split(' ').collect();
                    f.len() == 3 && f[0] == format!("system:node:{n}") && f[1] == "Approved" && !f[2].is_empty()
                })
            })
        },
    );
    assert!(!csrs.contains("Denied"), "{csrs}");
    // kube-proxy runs on both, supervised by mkectl, and turns ready.
    for w in &c.workers {
        poll(
            &format!("kube-proxy ready on {}", w.name),
            NODE_READY,
            || c.diag(),
            || {
                let o = w.mkectl(&bin, &["status", "-o", "json"]).output().ok()?;
                let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
                (component(&v, "kube-proxy")["ready"] == true).then_some(())
            },
        );
    }
    eprintln!(
        "kube-proxy ready on both after {:?}",
        workers_started.elapsed()
    );

    // --- Workload: two busybox replicas, one per node.
    let manifest = tmp.path().join("echo.yaml");
    fs::write(&manifest, echo_manifest(true)).unwrap();
    c.kubectl_ok(&["apply", "-f", manifest.to_str().unwrap()]);
    let pods_started = Instant::now();
    let pods = c.until(
        "2 echo pods running on two nodes",
        PODS_RUNNING,
        &["get", "pods", "-l", "app=echo", "-o", "jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName} {.status.podIP} {.status.phase}{\"\\n\"}{end}"],
        |s| {
            let running: Vec<&str> = s.lines().filter(|l| l.ends_with(" Running")).collect();
            running.len() == 2 && running[0].split(' ').nth(1) != running[1].split(' ').nth(1)
        },
    );
    eprintln!(
        "echo pods running after {:?}:\n{pods}",
        pods_started.elapsed()
    );
    let pods: Vec<Vec<String>> = pods
        .lines()
        .map(|l| l.split(' ').map(String::from).collect())
        .collect();
    let (p1, p2) = (&pods[0], &pods[1]);
    // httpd answers locally first (the container is up).
    poll(
        "echo serving",
        PODS_RUNNING,
        || c.diag(),
        || {
            let (ok, out) = c.wget(&p1[0], "http://127.0.0.1:8080/");
            (ok && out.contains(&p1[0])).then_some(())
        },
    );

    // Pod to pod across nodes (no NAT between pod subnets).
    for (from, to) in [(p1, p2), (p2, p1)] {
        let url = format!("http://{}:8080/", to[2]);
        let out = poll(
            &format!("{} -> {}", from[0], to[0]),
            Duration::from_secs(30),
            || c.diag(),
            || {
                let (ok, out) = c.wget(&from[0], &url);
                ok.then_some(out)
            },
        );
        assert_eq!(out.trim(), to[0], "pod {} from pod {}", to[0], from[0]);
    }

    // The ClusterIP Service reaches both pods (kube-proxy's iptables rules).
    let svc_ip = c.jsonpath(&["get", "svc", "echo"], "{.spec.clusterIP}");
    let mut seen = std::collections::BTreeSet::new();
    poll(
        "the echo Service answering from both pods",
        Duration::from_secs(60),
        || c.diag(),
        || {
            let (ok, out) = c.wget(&p1[0], &format!("http://{svc_ip}/"));
            if ok {
                seen.insert(out.trim().to_string());
            }
            (seen.contains(&p1[0]) && seen.contains(&p2[0])).then_some(())
        },
    );

    // The `kubernetes` Service from a pod, by name (CoreDNS) and with the
    // pod's service account token: the apiserver answers through kube-proxy.
    let api = poll(
        "https://kubernetes.default.svc from a pod",
        Duration::from_secs(90),
        || c.diag(),
        || {
            let (ok, out) = c.exec(&p2[0], &[
            BUSYBOX,
            "sh",
            "-c",
            "/bin/busybox timeout 5 /bin/busybox wget -q --no-check-certificate -O - --header \"Authorization: Bearer $(/bin/busybox cat /var/run/secrets/kubernetes.io/serviceaccount/token)\" https://kubernetes.default.svc/api",
        ]);
            (ok && out.contains("\"kind\": \"APIVersions\"")
                || out.contains("\"kind\":\"APIVersions\""))
            .then_some(out)
        },
    );
    assert!(
        api.contains(CONTROLLER_IP),
        "the apiserver's address: {api}"
    );
    // CoreDNS answers for the `kubernetes` Service. (The fully qualified
    // name: Debian's busybox 1.35 nslookup ignores resolv.conf's search
    // list; wget above resolved the short name through it.)
    let api_ip = c.jsonpath(&["get", "svc", "kubernetes"], "{.spec.clusterIP}");
    let dns = poll(
        "nslookup kubernetes.default from a pod",
        Duration::from_secs(60),
        || c.diag(),
        || {
            let (ok, out) = c.exec(
                &p1[0],
                &[BUSYBOX, "nslookup", "kubernetes.default.svc.cluster.local"],
            );
            (ok && out.contains(api_ip.trim())).then_some(out)
        },
    );
    eprintln!("nslookup from a pod:\n{}", dns.trim());

    // --- Through the tunnels only: logs, exec, port-forward, node proxy.
    let dials_before = dials_served(c.node.program("curl"), c.node.konnectivity_admin_port);
    let logs = c.kubectl_ok(&["logs", &p1[0]]);
    assert!(logs.contains("serving"), "{logs}");
    let (ok, out) = c.exec(&p2[0], &["/bin/busybox", "echo", "through-the-tunnel"]);
    assert!(ok && out.trim() == "through-the-tunnel", "{out}");

    let mut pf = c
        .node
        .program("kubectl")
        .env_remove("KUBECONFIG")
        .arg("--kubeconfig")
        .arg(c.node.pki("admin.conf"))
        .args(["port-forward", &format!("pod/{}", p2[0]), ":8080"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let port = {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(pf.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        // "Forwarding from 127.0.0.1:NNNNN -> 8080"
        line.split("127.0.0.1:")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .unwrap_or_else(|| panic!("port-forward said {line:?}"))
            .to_string()
    };
    let via_pf = output_ok(c.node.program("curl").args([
        "-sf",
        "--max-time",
        "10",
        &format!("http://127.0.0.1:{port}/"),
    ]));
    let _ = pf.kill();
    let _ = pf.wait();
    assert_eq!(via_pf.trim(), p2[0], "port-forward reached the pod");

    for w in &c.workers {
        let h = c.kubectl_ok(&[
            "get",
            "--raw",
            &format!("/api/v1/nodes/{}/proxy/healthz", w.name),
        ]);
        assert_eq!(h.trim(), "ok", "{}", w.name);
    }
    // exec and port-forward each upgrade a connection of their own; each
    // node needs at least one more (logs and the node proxy may share a
    // kept-alive one): four dials at least, all through the tunnels.
    let dials_after = dials_served(c.node.program("curl"), c.node.konnectivity_admin_port);
    assert!(
        dials_after >= dials_before + 4,
        "logs, exec, port-forward and two node proxies dialled through konnectivity: {dials_before} -> {dials_after}"
    );
    eprintln!("konnectivity dials {dials_before} -> {dials_after}");

    // --- A worker's agent killed: kubectl logs fails fast and clearly, then
    // works again once the worker's mkectl (and its agent) is back.
    let w1 = &c.workers[0];
    let pod_on_w1 = if p1[1] == w1.name { &p1[0] } else { &p2[0] };
    let mkectl_pid = c.workers[0].process.as_ref().unwrap().pid();
    signal(mkectl_pid, libc::SIGKILL);
    let t_fail = Instant::now();
    let o = c.node.kubectl(&["logs", pod_on_w1]);
    let fail_took = t_fail.elapsed();
    let err = text(&o.stderr);
    assert!(!o.status.success(), "logs worked without the agent");
    eprintln!(
        "kubectl logs without the agent failed in {fail_took:?}: {}",
        err.trim()
    );
    assert!(fail_took < Duration::from_secs(15), "{fail_took:?}");
    c.workers[0]
        .process
        .as_mut()
        .unwrap()
        .wait_exit(Duration::from_secs(10));
    // The kill left kubelet, containerd and kube-proxy behind? PDEATHSIG
    // takes them down with mkectl; the restart finds no stale children.
    c.workers[0].start(&bin, None);
    let back = Instant::now();
    let logs = c.until(
        "kubectl logs after the worker restarted",
        Duration::from_secs(90),
        &["logs", pod_on_w1],
        |s| s.contains("serving"),
    );
    eprintln!(
        "kubectl logs worked again {:?} after the worker restarted",
        back.elapsed()
    );
    assert!(logs.contains("serving"));

    // --- kubelet and containerd killed -9 on the second worker: mkectl
    // restarts both; the pod there serves again.
    let (w2_pod, w2_name) = if p1[1] == c.workers[1].name {
        (p1[0].clone(), p1[1].clone())
    } else {
        (p2[0].clone(), p2[1].clone())
    };
    let pid_of = |w: &Worker, comp: &str| -> Option<i32> {
        fs::read_to_string(w.run.join(format!("{comp}.pid")))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    let killed: Vec<(&str, i32)> = ["kubelet", "containerd"]
        .into_iter()
        .map(|comp| (comp, pid_of(&c.workers[1], comp).expect(comp)))
        .collect();
    for (_, pid) in &killed {
        signal(*pid, libc::SIGKILL);
    }
    let restarted = Instant::now();
    poll(
        "kubelet and containerd restarted by mkectl",
        Duration::from_secs(90),
        || c.diag() + &c.workers[1].log_tail(),
        || {
            let w = &c.workers[1];
            let o = w.mkectl(&bin, &["status", "-o", "json"]).output().ok()?;
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
            killed
                .iter()
                .all(|(comp, old)| {
                    component(&v, comp)["ready"] == true
                        && pid_of(w, comp).is_some_and(|p| p != *old)
                })
                .then_some(())
        },
    );
    poll(
        &format!("{w2_pod} serving after kubelet and containerd restarted"),
        Duration::from_secs(90),
        || c.diag(),
        || {
            let (ok, out) = c.wget(&w2_pod, "http://127.0.0.1:8080/");
            (ok && out.trim() == w2_pod).then_some(())
        },
    );
    eprintln!(
        "kubelet and containerd killed on {w2_name}: back, pod serving after {:?}",
        restarted.elapsed()
    );

    // --- The second worker stopped (SIGTERM): its node turns NotReady;
    // started again without a token: Ready, its pod runs again.
    let pid = c.workers[1].process.as_ref().unwrap().pid();
    signal(pid, libc::SIGTERM);
    let stopped = Instant::now();
    let st = c.workers[1]
        .process
        .as_mut()
        .unwrap()
        .wait_exit(Duration::from_secs(60));
    eprintln!("worker stopped in {:?}: {st}", stopped.elapsed());
    let ready_cond = "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}";
    c.until(
        &format!("{w2_name} NotReady"),
        Duration::from_secs(120),
        &["get", "node", &w2_name, "-o", ready_cond],
        |s| s.trim() != "True",
    );
    eprintln!("{w2_name} NotReady {:?} after the stop", stopped.elapsed());
    let started = Instant::now();
    c.workers[1].start(&bin, None);
    c.until(
        &format!("{w2_name} Ready again"),
        NODE_READY,
        &["get", "node", &w2_name, "-o", ready_cond],
        |s| s.trim() == "True",
    );
    poll(
        &format!("{w2_pod} serving after its worker restarted"),
        PODS_RUNNING,
        || c.diag(),
        || {
            let (ok, out) = c.wget(&w2_pod, "http://127.0.0.1:8080/");
            (ok && out.trim() == w2_pod).then_some(())
        },
    );
    eprintln!(
        "{w2_name} Ready and its pod serving {:?} after restart without a token",
        started.elapsed()
    );

    // --- `mkectl reset` after a crash (kill -9: kubelet and containerd go
    // with mkectl, shims and containers do not) leaves nothing behind.
    let w1 = &mut c.workers[0];
    let shim_needle = w1.run.join("containerd").display().to_string();
    let shims = || -> Vec<i32> {
        fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                    let c = String::from_utf8_lossy(&c);
                    c.contains("containerd-shim") && c.contains(&shim_needle)
                })
            })
            .collect()
    };
    assert!(
        !shims().is_empty(),
        "pods run on {} before the crash",
        w1.name
    );
    signal(w1.process.as_ref().unwrap().pid(), libc::SIGKILL);
    w1.process
        .as_mut()
        .unwrap()
        .wait_exit(Duration::from_secs(10));
    let reset = w1.mkectl(&bin, &["reset"]).output().unwrap();
    assert!(
        reset.status.success(),
        "reset: {}{}",
        text(&reset.stdout),
        text(&reset.stderr)
    );
    assert!(shims().is_empty(), "shims left after reset: {:?}", shims());
    let left_pids = w1.cgroup_pids();
    assert!(
        left_pids.is_empty(),
        "containers left after reset: {left_pids:?}"
    );
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = w1.dir.display().to_string();
    let left: Vec<&str> = mountinfo.lines().filter(|l| l.contains(&dir)).collect();
    assert!(left.is_empty(), "mounts left after reset: {left:#?}");
    assert!(!w1.data.exists() && !w1.run.join("containerd").exists());
    eprintln!("reset after a crash left no shim, container or mount");

    eprintln!("cluster e2e total {:?}", t0.elapsed());
    let _ = c.ctl.take();
    let _ = &c.bin;
}

/// `mkectl controller --enable-worker --no-taints`: one node, the whole
/// control plane and the worker side in one process, in a network namespace
/// of its own; the echo Deployment runs there, `kubectl logs` and `exec`
/// reach it through the node's own konnectivity tunnel.
#[test]
fn single_node_controller_with_worker_runs_pods() {
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
    let _one = ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let t0 = Instant::now();
    let tmp = tempfile::Builder::new()
        .prefix("mksn-")
        .tempdir_in("/tmp")
        .unwrap();
    let ip = "198.51.100.50";
    let mut w = Worker::new(
        "sn-1",
        ip,
        tmp.path(),
        &format!("  api:\n    address: {ip}\n  network:\n    provider: custom\n"),
    );
    w.ns.ip(&["addr", "add", &format!("{ip}/32"), "dev", "lo"]);
    output_ok(w.ns.cmd("sysctl").args(["-qw", "net.ipv4.ip_forward=1"]));
    stage_images(&bin, tmp.path(), &[w.data.as_path()]);
    w.spawn(
        &bin,
        &[
            "controller",
            "--node-name",
            "sn-1",
            "--enable-worker",
            "--no-taints",
        ],
    );
    let kubectl = |args: &[&str]| -> std::process::Output {
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", w.ns.name))
            .arg("--")
            .arg("kubectl")
            .arg("--kubeconfig")
            .arg(w.data.join("pki/admin.conf"))
            .arg("--request-timeout=20s")
            .args(args)
            .env_remove("KUBECONFIG")
            .output()
            .unwrap()
    };
    let ok = |args: &[&str]| -> Option<String> {
        let o = kubectl(args);
        o.status.success().then(|| text(&o.stdout))
    };
    let diag = || {
        let mut d = String::new();
        for args in [
            &["get", "nodes", "-o", "wide"][..],
            &["get", "pods", "-A", "-o", "wide"],
        ] {
            let o = kubectl(args);
            d += &format!(
                "--- kubectl {}\n{}{}\n",
                args.join(" "),
                text(&o.stdout),
                text(&o.stderr)
            );
        }
        d + &w.log_tail()
    };
    let cidr = poll("sn-1 registered with a pod CIDR", NODE_READY, diag, || {
        ok(&["get", "node", "sn-1", "-o", "jsonpath={.spec.podCIDR}"])
            .filter(|s| !s.trim().is_empty())
    });
    fs::write(
        w.cni_conf_dir.join("10-mke-e2e.conflist"),
        conflist(cidr.trim()),
    )
    .unwrap();
    poll("sn-1 Ready", NODE_READY, diag, || {
        ok(&[
            "get",
            "node",
            "sn-1",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ])
        .filter(|s| s.trim() == "True")
    });
    let ready = t0.elapsed();
    // Its kubelet goes through the node-local balancer too, whose one
    // backend (this controller) is up.
    let kc = fs::read_to_string(w.data.join("pki/kubelet.conf")).unwrap();
    assert!(kc.contains("server: https://127.0.0.1:7443"), "{kc}");
    let status = poll("the balancer's backend up", NODE_READY, diag, || {
        let o = w.mkectl(&bin, &["status"]).output().ok()?;
        let t = text(&o.stdout);
        t.contains("API balancer: 1 apiserver(s), 1 up")
            .then_some(t)
    });
    assert!(status.contains(&format!("{ip}:6443")), "{status}");
    // No taint of mkectl's (no control-plane taint with --no-taints); the
    // node-lifecycle controller's `not-ready:NoExecute`, added while the
    // node was registering, goes at its next pass (5 s monitor period) after
    // Ready, which the test may see first.
    poll(
        "no taints on sn-1 (--no-taints)",
        TAINTS_CLEARED,
        diag,
        || {
            ok(&["get", "node", "sn-1", "-o", "jsonpath={.spec.taints}"])
                .filter(|t| t.trim().is_empty())
        },
    );

    let manifest = tmp.path().join("echo.yaml");
    fs::write(&manifest, echo_manifest(false)).unwrap();
    ok(&["apply", "-f", manifest.to_str().unwrap()]).expect("apply");
    let pods = poll("2 echo pods running", PODS_RUNNING, diag, || {
        ok(&[
            "get",
            "pods",
            "-l",
            "app=echo",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.status.phase}{\"\\n\"}{end}",
        ])
        .filter(|s| s.lines().filter(|l| l.ends_with(" Running")).count() == 2)
    });
    let running = t0.elapsed();
    let curl = || {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", w.ns.name))
            .args(["--", "curl"]);
        c
    };
    let admin = mkectl::config::defaults::KONNECTIVITY_ADMIN_PORT;
    let dials_before = dials_served(curl(), admin);
    for pod in pods.lines().map(|l| l.split(' ').next().unwrap()) {
        let logs = poll(&format!("kubectl logs {pod}"), PODS_RUNNING, diag, || {
            ok(&["logs", pod]).filter(|s| s.contains("serving"))
        });
        assert!(logs.contains("serving"));
        let out = ok(&["exec", pod, "--", BUSYBOX, "echo", "single-node"]).unwrap_or_default();
        assert_eq!(out.trim(), "single-node", "exec in {pod}");
    }
    // Two logs and two execs: at least one dial each for the execs (an
    // upgraded connection of its own), one for the logs.
    let dials_after = dials_served(curl(), admin);
    assert!(
        dials_after >= dials_before + 3,
        "logs and exec through the node's own tunnel: {dials_before} -> {dials_after}"
    );
    eprintln!(
        "single node: Ready after {ready:?}, 2 pods running after {running:?}, logs and exec through its own tunnel ({dials_before} -> {dials_after} dials)"
    );
}
