//! A worker from `mkectl worker --token-file` to its Node `Ready` and to its
//! first pod `Running`, each against the time the same kubelet alone takes
//! to bring its Node to `Ready` (measured in the same run, same host, same
//! argv, with containerd already up and the credentials already issued);
//! and the RSS of the `mkectl worker` process itself (goal: under 25 MB).
//!
//! Real components only: the whole control plane under `mkectl controller`
//! in one network namespace, each worker in another one joined by a veth
//! pair; images imported offline; the pod network is Debian's bridge plugin.
//! Times are taken by polling the apiserver every 100 ms with kubectl (each
//! poll takes about as long again), so they carry ~0.2 s of resolution.
//!
//! Needs root and the upstream binaries (`MKECTL_UPSTREAM_BIN_DIR`); without
//! them it says NOT RUN and exits 0 (under `CI=true` it fails).
//!
//! Run: `cargo bench --bench node`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::cluster::*;
use common::netns::{veth, Netns};
use common::upstream::wait_ready;
use common::*;

const RUNS: usize = 3;
const CONTROLLER_IP: &str = "192.0.2.10";
const TICK: Duration = Duration::from_millis(100);
/// The first node gets the first /24 of the default pod CIDR.
const POD_SUBNET: &str = "10.244.0.0/24";
const RSS_GOAL_MB: f64 = 25.0;

/// Polls `f` every [`TICK`] until it holds (bounded by `limit`); the time
/// from `since`.
fn until(since: Instant, limit: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let end = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(TICK);
    }
    since.elapsed()
}

fn node_ready(ctl: &Node, name: &str) -> bool {
    let o = ctl.kubectl(&[
        "get",
        "node",
        name,
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
    ]);
    o.status.success() && text(&o.stdout).trim() == "True"
}

fn pod_running(ctl: &Node, pod: &str) -> bool {
    let o = ctl.kubectl(&["get", "pod", pod, "-o", "jsonpath={.status.phase}"]);
    o.status.success() && text(&o.stdout).trim() == "Running"
}

/// VmRSS of `pid` in MB (10^6 bytes).
fn rss_mb(pid: i32) -> f64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb * 1024.0 / 1e6)
        .unwrap_or(f64::NAN)
}

fn pid_file(w: &Worker, component: &str) -> i32 {
    fs::read_to_string(w.run.join(format!("{component}.pid")))
        .unwrap_or_else(|e| panic!("{component} pid file: {e}"))
        .trim()
        .parse()
        .unwrap()
}

/// A pod bound to `node` before the node exists: kubelet starts it as soon
/// as it has registered.
fn pod_manifest(name: &str, node: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  nodeName: {node}\n  terminationGracePeriodSeconds: 1\n  containers:\n    - name: main\n      image: {BUSYBOX_IMAGE}\n      imagePullPolicy: Never\n      command: [{BUSYBOX}, sleep, \"3600\"]\n"
    )
}

struct Sample {
    ready: Duration,
    pod: Duration,
    kubelet_alone: Duration,
    rss: f64,
    rss_with_pod: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
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
    let tmp = tempfile::Builder::new()
        .prefix("mkbnode-")
        .tempdir_in("/tmp")
        .unwrap();
    let ctl_ns = Netns::new("bctl");
    ctl_ns.ip(&["addr", "add", &format!("{CONTROLLER_IP}/32"), "dev", "lo"]);
    let ctl = Node::in_netns(
        "bn-ctl",
        &ctl_ns,
        CONTROLLER_IP,
        "  network:\n    provider: custom\n",
    );
    // Workers are made (and their veths added) before the controller starts
    // so that its address is routable from each of them.
    let mut workers: Vec<Worker> = (0..RUNS)
        .map(|i| {
            let name = format!("bn-w{i}");
            let ip = format!("192.0.2.{}", 20 + i);
            let w = Worker::new(&name, &ip, tmp.path(), "");
            veth(
                &w.ns,
                "eth0",
                &format!("{ip}/24"),
                &ctl_ns,
                &format!("w{i}"),
                &format!("192.0.3.{}/32", 1 + i),
            );
            ctl_ns.ip(&["route", "add", &format!("{ip}/32"), "dev", &format!("w{i}")]);
            output_ok(w.ns.cmd("sysctl").args(["-qw", "net.ipv4.ip_forward=1"]));
            fs::write(
                w.cni_conf_dir.join("10-bench.conflist"),
                conflist(POD_SUBNET),
            )
            .unwrap();
            w
        })
        .collect();
    let data_dirs: Vec<&Path> = workers.iter().map(|w| w.data.as_path()).collect();
    stage_images(&bin, tmp.path(), &data_dirs);

    let mut c = ctl.start_controller(&["--bin-dir", bin.to_str().unwrap()]);
    wait_ready(&mut c, "controller ready");
    // Pods need the namespace's default service account first.
    until(
        Instant::now(),
        NODE_READY,
        "default service account",
        || {
            ctl.kubectl(&["get", "serviceaccount", "default"])
                .status
                .success()
        },
    );
    let token = common::join::token_create(&ctl, "worker", &[]);
    let token_file = common::join::token_file(&ctl, "worker.token", &token);

    let mut samples = Vec::new();
    for (i, w) in workers.iter_mut().enumerate() {
        let pod = format!("first-{i}");
        let manifest = tmp.path().join(format!("{pod}.yaml"));
        fs::write(&manifest, pod_manifest(&pod, &w.name)).unwrap();
        ctl.kubectl_ok(&["apply", "-f", manifest.to_str().unwrap()]);

        // mkectl worker: join, containerd, agent, image import, kubelet
        // (TLS bootstrap), kube-proxy.
        let t0 = Instant::now();
        w.start(&bin, Some(&token_file));
        let name = w.name.clone();
        let ready = until(t0, NODE_READY, "node Ready", || node_ready(&ctl, &name));
        let rss = rss_mb(w.process.as_ref().unwrap().pid());
        let pod_t = until(t0, PODS_RUNNING, "first pod Running", || {
            pod_running(&ctl, &pod)
        });
        let rss_with_pod = rss_mb(w.process.as_ref().unwrap().pid());

        // Baseline: the same kubelet (its argv as mkectl ran it), alone,
        // with containerd already up and its credentials already issued.
        let kubelet_pid = pid_file(w, "kubelet");
        let argv: Vec<String> = fs::read(format!("/proc/{kubelet_pid}/cmdline"))
            .unwrap()
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let pid = w.process.as_ref().unwrap().pid();
        signal(pid, libc::SIGTERM);
        w.process
            .as_mut()
            .unwrap()
            .wait_exit(Duration::from_secs(60));
        ctl.kubectl_ok(&["delete", "pod", &pod, "--wait=false"]);
        ctl.kubectl_ok(&["delete", "node", &name]);
        w.spawn(
            &bin,
            &[
                "worker",
                "--node-name",
                &name,
                "--address",
                &w.ip.clone(),
                "--disable-components",
                "kubelet,kube-proxy",
            ],
        );
        let status_ready = || {
            w.mkectl(&bin, &["status", "-o", "json"])
                .output()
                .ok()
                .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
                .is_some_and(|v| component(&v, "containerd")["ready"] == true)
        };
        until(Instant::now(), NODE_READY, "containerd ready", status_ready);
        let t1 = Instant::now();
        let mut kubelet = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", w.ns.name))
            .arg("--")
            .args(&argv)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(w.dir.join("kubelet-alone.log")).unwrap())
            .spawn()
            .unwrap();
        let kubelet_alone = until(t1, NODE_READY, "kubelet alone: node Ready", || {
            node_ready(&ctl, &name)
        });
        let _ = kubelet.kill();
        let _ = kubelet.wait();
        eprintln!(
            "run {i}: mkectl worker -> node Ready {ready:.2?}, first pod Running {pod_t:.2?}; kubelet alone -> node Ready {kubelet_alone:.2?}; mkectl RSS {rss:.1} MB ({rss_with_pod:.1} MB with the pod)"
        );
        samples.push(Sample {
            ready,
            pod: pod_t,
            kubelet_alone,
            rss,
            rss_with_pod,
        });
        // Stop this worker now: the next run measures on a quiet machine.
        drop(w.process.take());
    }

    let secs =
        |f: fn(&Sample) -> Duration| median(samples.iter().map(|s| f(s).as_secs_f64()).collect());
    let ready = secs(|s| s.ready);
    let pod = secs(|s| s.pod);
    let alone = secs(|s| s.kubelet_alone);
    let rss = median(samples.iter().map(|s| s.rss).collect());
    let rss_pod = median(samples.iter().map(|s| s.rss_with_pod).collect());
    println!(
        "node bench, median of {RUNS} runs (real control plane, workers in network namespaces)"
    );
    println!("| figure | mkectl worker | kubelet alone (baseline) | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| start to Node Ready | {ready:.2} s (join, containerd, agent, images, TLS bootstrap) | {alone:.2} s | {:.2}x |",
        ready / alone
    );
    println!(
        "| start to first pod Running | {pod:.2} s | {alone:.2} s (to Ready) | {:.2}x |",
        pod / alone
    );
    println!(
        "| mkectl worker RSS | {rss:.1} MB ({rss_pod:.1} MB with a pod) | goal < {RSS_GOAL_MB} MB | {} |",
        if rss_pod < RSS_GOAL_MB { "PASS" } else { "MISS" }
    );
    drop(c);
}
