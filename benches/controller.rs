//! Controller cold start to etcd ready, and mkectl's own memory while etcd
//! runs. Baseline in the same run: bare etcd (no TLS, no mkectl) started
//! directly, time to its first successful request.
//!
//! With the upstream binaries (`MKECTL_UPSTREAM_BIN_DIR`, built by
//! `packaging/build-upstream.sh`), also the whole control plane: a fresh
//! controller's cold start to kube-apiserver `/readyz` ok and to `kubectl get
//! ns` working, against the floor measured in the same run: kube-apiserver
//! alone, with the same flags, started on an etcd that already runs, to
//! `/readyz` ok. And mkectl's own RSS with the whole control plane running.
//!
//! Run: `cargo bench --bench controller`

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mkectl::etcd::{connect, EtcdClientTls};

const RUNS: usize = 3;
const BOUND: Duration = Duration::from_secs(30);

/// `N` distinct ports that were free a moment ago on 127.0.0.1 (all held
/// while picking, so no two coincide).
fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    std::array::from_fn(|i| held[i].local_addr().unwrap().port())
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let end = Instant::now() + Duration::from_secs(15);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Writes a controller config with free ports; returns (config, etcd client
/// port, apiserver port).
fn write_config(dir: &Path) -> (std::path::PathBuf, u16, u16) {
    let [c, p, api, agent, admin, join, metrics] = free_ports();
    let cfg = dir.join("c.yaml");
    std::fs::write(
        &cfg,
        format!(
            "apiVersion: mkectl.io/v1beta1\nkind: ClusterConfig\nspec:\n  api:\n    address: 127.0.0.1\n    port: {api}\n  etcd:\n    clientPort: {c}\n    peerPort: {p}\n  konnectivity:\n    agentPort: {agent}\n    adminPort: {admin}\n  joinApi:\n    port: {join}\n  metrics:\n    port: {metrics}\n",
        ),
    )
    .unwrap();
    (cfg, c, api)
}

fn mkectl(dir: &Path, cfg: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mkectl"));
    cmd.arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--run-dir")
        .arg(dir.join("run"))
        .arg("--config")
        .arg(cfg);
    cmd
}

async fn controller_cold_start(dir: &Path) -> (Duration, Kill) {
    let (cfg, c, _) = write_config(dir);
    let t0 = Instant::now();
    let child = mkectl(dir, &cfg)
        .args(["controller", "--node-name", "bench"])
        // etcd alone: this figure is mkectl's own start cost.
        .args([
            "--disable-components",
            "kube-apiserver,kube-controller-manager,kube-scheduler",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let guard = Kill(child);
    let pki = dir.join("data/pki");
    let tls = EtcdClientTls {
        ca: pki.join("etcd/ca.crt"),
        cert: pki.join("apiserver-etcd-client.crt"),
        key: pki.join("apiserver-etcd-client.key"),
    };
    let endpoint = format!("https://127.0.0.1:{c}");
    loop {
        if let Ok(mut cl) = connect(&endpoint, &tls).await {
            if cl.get("/bench", None).await.is_ok() {
                return (t0.elapsed(), guard);
            }
        }
        assert!(t0.elapsed() < BOUND, "controller never became ready");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn bare_etcd_start(dir: &Path) -> Duration {
    let [c, p] = free_ports();
    let t0 = Instant::now();
    let child = Command::new("etcd")
        .arg(format!("--data-dir={}", dir.join("bare").display()))
        .arg(format!("--listen-client-urls=http://127.0.0.1:{c}"))
        .arg(format!("--advertise-client-urls=http://127.0.0.1:{c}"))
        .arg(format!("--listen-peer-urls=http://127.0.0.1:{p}"))
        .arg(format!(
            "--initial-advertise-peer-urls=http://127.0.0.1:{p}"
        ))
        .arg(format!("--initial-cluster=default=http://127.0.0.1:{p}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _g = Kill(child);
    loop {
        if let Ok(mut cl) =
            etcd_client::Client::connect([format!("http://127.0.0.1:{c}")], None).await
        {
            if cl.get("/bench", None).await.is_ok() {
                return t0.elapsed();
            }
        }
        assert!(t0.elapsed() < BOUND, "bare etcd never became ready");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `GET /readyz` on the apiserver with the admin identity answers 200.
async fn apiserver_ready(dir: &Path, port: u16) -> bool {
    use mkectl::https_probe::{ClientIdentity, HttpsProbe, ServerTrust};
    let pki = dir.join("data/pki");
    let probe = HttpsProbe {
        addr: format!("127.0.0.1:{port}").parse().unwrap(),
        path: "/readyz".into(),
        trust: ServerTrust::CaFile(pki.join("ca.crt")),
        client: Some(ClientIdentity {
            cert: pki.join("admin.crt"),
            key: pki.join("admin.key"),
        }),
        timeout: Duration::from_secs(2),
    };
    probe.check().await.is_ok()
}

fn kubectl_get_ns(dir: &Path) -> bool {
    Command::new("kubectl")
        .env_remove("KUBECONFIG")
        .arg("--kubeconfig")
        .arg(dir.join("data/pki/admin.conf"))
        .args(["get", "ns", "kube-system", "-o", "name"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

const CONTROL_PLANE_BOUND: Duration = Duration::from_secs(300);

/// A fresh controller with the whole control plane: time to apiserver
/// `/readyz` ok and to `kubectl get ns` working; mkectl's RSS once it is
/// all running.
async fn full_cold_start(dir: &Path, bin: &Path) -> (Duration, Duration, u64) {
    let (cfg, _, api) = write_config(dir);
    let t0 = Instant::now();
    let child = mkectl(dir, &cfg)
        .arg("--bin-dir")
        .arg(bin)
        .args(["controller", "--node-name", "bench"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let guard = Kill(child);
    while !apiserver_ready(dir, api).await {
        assert!(t0.elapsed() < CONTROL_PLANE_BOUND, "apiserver never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let readyz = t0.elapsed();
    while !kubectl_get_ns(dir) {
        assert!(
            t0.elapsed() < CONTROL_PLANE_BOUND,
            "kubectl get ns never worked"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let get_ns = t0.elapsed();
    // Let controller-manager, scheduler and the applier settle, then read
    // mkectl's own memory (not its children's).
    let status = |d: &Path| {
        mkectl(d, &cfg)
            .arg("status")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    while !status(dir) {
        assert!(t0.elapsed() < CONTROL_PLANE_BOUND, "controller never ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = rss_kib(guard.0.id());
    drop(guard);
    (readyz, get_ns, rss)
}

/// The floor: kube-apiserver alone, with the flags mkectl generates, started
/// on an etcd that already runs (a controller with only etcd and the
/// konnectivity server), to `/readyz` ok.
async fn apiserver_alone(dir: &Path, bin: &Path) -> Duration {
    let (cfg, _, api) = write_config(dir);
    // --init-only writes the PKI and every component's flags (the
    // apiserver's included) and exits; then etcd and the konnectivity
    // server run without the apiserver.
    let init = mkectl(dir, &cfg)
        .args(["controller", "--node-name", "bench", "--init-only"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(init.success(), "controller --init-only failed");
    let base = mkectl(dir, &cfg)
        .args(["controller", "--node-name", "bench"])
        .args([
            "--disable-components",
            "kube-apiserver,kube-controller-manager,kube-scheduler",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _base = Kill(base);
    let t0 = Instant::now();
    while !mkectl(dir, &cfg)
        .arg("status")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        assert!(t0.elapsed() < CONTROL_PLANE_BOUND, "etcd never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let args_file = dir.join("data/config/kube-apiserver.args");
    let args = mkectl::components::kube_common::parse_args_file(
        &std::fs::read_to_string(&args_file).unwrap(),
    );
    let t0 = Instant::now();
    let child = Command::new(bin.join("kube-apiserver"))
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _g = Kill(child);
    while !apiserver_ready(dir, api).await {
        assert!(
            t0.elapsed() < CONTROL_PLANE_BOUND,
            "bare apiserver never ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    t0.elapsed()
}

async fn control_plane(bin: &Path) {
    let mut floor = Vec::new();
    let mut readyz = Vec::new();
    let mut get_ns = Vec::new();
    let mut rss = Vec::new();
    for _ in 0..RUNS {
        let d = tempfile::tempdir().unwrap();
        floor.push(apiserver_alone(d.path(), bin).await);
        let d = tempfile::tempdir().unwrap();
        let (r, g, m) = full_cold_start(d.path(), bin).await;
        readyz.push(r);
        get_ns.push(g);
        rss.push(m);
    }
    for v in [&mut floor, &mut readyz, &mut get_ns] {
        v.sort();
    }
    rss.sort();
    let med = |v: &[Duration]| v[v.len() / 2].as_secs_f64();
    let (f, r, g) = (med(&floor), med(&readyz), med(&get_ns));
    println!(
        "--- whole control plane (upstream v1.32.8 from {}), median of {RUNS}",
        bin.display()
    );
    println!(
        "floor: kube-apiserver alone on a running etcd to /readyz ok: {:.0} ms",
        f * 1e3
    );
    println!(
        "fresh controller cold start to apiserver /readyz ok:        {:.0} ms  ratio {:.2} (goal <= 1.5)",
        r * 1e3,
        r / f
    );
    println!(
        "fresh controller cold start to `kubectl get ns` working:   {:.0} ms  ratio {:.2} (goal <= 1.5)",
        g * 1e3,
        g / f
    );
    println!(
        "mkectl RSS with the whole control plane running, median:  {:.1} MiB (goal < 30 MiB)",
        rss[rss.len() / 2] as f64 / 1024.0
    );
}

#[tokio::main]
async fn main() {
    let mut ours = Vec::new();
    let mut bare = Vec::new();
    let mut rss = Vec::new();
    for _ in 0..RUNS {
        let dir = tempfile::tempdir().unwrap();
        bare.push(bare_etcd_start(dir.path()).await);
        let (d, guard) = controller_cold_start(dir.path()).await;
        ours.push(d);
        tokio::time::sleep(Duration::from_secs(1)).await;
        rss.push(rss_kib(guard.0.id()));
        drop(guard);
    }
    ours.sort();
    bare.sort();
    rss.sort();
    let med = |v: &[Duration]| v[v.len() / 2];
    let (o, b) = (med(&ours), med(&bare));
    println!(
        "controller cold start to etcd ready (PKI + TLS etcd), median of {RUNS}: {:.0} ms",
        o.as_secs_f64() * 1e3
    );
    println!(
        "baseline: bare etcd (no TLS, no mkectl) to first request:   {:.0} ms",
        b.as_secs_f64() * 1e3
    );
    println!(
        "ratio controller / bare etcd: {:.2}",
        o.as_secs_f64() / b.as_secs_f64()
    );
    println!("target: < 2000 ms cold start");
    println!(
        "mkectl RSS while etcd runs, median: {:.1} MiB (target < 30 MiB)",
        rss[rss.len() / 2] as f64 / 1024.0
    );
    match std::env::var_os("MKECTL_UPSTREAM_BIN_DIR") {
        Some(bin) if !bin.is_empty() => control_plane(Path::new(&bin)).await,
        _ => println!(
            "whole control plane: NOT MEASURED (set MKECTL_UPSTREAM_BIN_DIR; see packaging/build-upstream.sh)"
        ),
    }
}
