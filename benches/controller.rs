//! Controller cold start to etcd ready, and mkectl's own memory while etcd
//! runs. Baseline in the same run: bare etcd (no TLS, no mkectl) started
//! directly, time to its first successful request.
//!
//! Run: `cargo bench --bench controller`

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mkectl::components::etcd::{connect, EtcdClientTls};

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

async fn controller_cold_start(dir: &Path) -> (Duration, Kill) {
    let [c, p, api, agent, admin, join, metrics] = free_ports();
    let cfg = dir.join("c.yaml");
    std::fs::write(
        &cfg,
        format!(
            "apiVersion: mkectl.io/v1beta1\nkind: ClusterConfig\nspec:\n  api:\n    address: 127.0.0.1\n    port: {api}\n  etcd:\n    clientPort: {c}\n    peerPort: {p}\n  konnectivity:\n    agentPort: {agent}\n    adminPort: {admin}\n  joinApi:\n    port: {join}\n  metrics:\n    port: {metrics}\n",
        ),
    )
    .unwrap();
    let t0 = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_mkectl"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--run-dir")
        .arg(dir.join("run"))
        .arg("--config")
        .arg(&cfg)
        .args(["controller", "--node-name", "bench"])
        // Without the upstream kube binaries: they are not installed here.
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
}
