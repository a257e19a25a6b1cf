//! Join latencies with real processes and real etcd on loopback addresses.
//!
//! * controller join to voting etcd member (token given to voting member in
//!   `etcd member list`), against the baseline of bootstrapping the first
//!   controller to a ready etcd (PKI + etcd start), measured in the same run;
//! * worker join to "agent connected to every controller" (each server's
//!   /readyz is 200), against the baseline of restarting the same worker
//!   with its saved credentials (no join), measured in the same run.
//!
//! Run: `cargo bench --bench join` (uses the mkectl binary of the profile).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mkectl::etcd::{connect, EtcdClientTls};

const MKECTL: &str = env!("CARGO_BIN_EXE_mkectl");
const WORKER_RUNS: usize = 3;
const LIMIT: Duration = Duration::from_secs(60);
/// The upstream kube binaries are not on these machines.
const NO_KUBE: &str = "kube-apiserver,kube-controller-manager,kube-scheduler";

/// `N` distinct ports that were free a moment ago on 127.0.0.1 (all held
/// while picking, so no two coincide).
fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    std::array::from_fn(|i| held[i].local_addr().unwrap().port())
}

struct Node {
    dir: PathBuf,
    address: String,
    etcd_port: u16,
    admin_port: u16,
    name: String,
}

impl Node {
    fn new(root: &Path, name: &str, address: &str) -> Self {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let [etcd_port, admin_port, api, peer, agent, join, metrics] = free_ports();
        let yaml = format!(
            "apiVersion: mkectl.io/v1beta1\nkind: ClusterConfig\nspec:\n  api:\n    address: {address}\n    port: {api}\n  etcd:\n    clientPort: {etcd_port}\n    peerPort: {peer}\n  konnectivity:\n    agentPort: {agent}\n    adminPort: {admin_port}\n  joinApi:\n    port: {join}\n  metrics:\n    port: {metrics}\n",
        );
        std::fs::write(dir.join("cfg.yaml"), yaml).unwrap();
        Self {
            dir,
            address: address.into(),
            etcd_port,
            admin_port,
            name: name.into(),
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(MKECTL);
        c.arg("--data-dir")
            .arg(self.dir.join("data"))
            .arg("--run-dir")
            .arg(self.dir.join("run"))
            .arg("--config")
            .arg(self.dir.join("cfg.yaml"))
            .args(args);
        c
    }

    fn spawn(&self, args: &[&str]) -> Proc {
        let log = self.dir.join(format!("{}.log", args[0]));
        let child = self
            .cmd(args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Proc { child, log }
    }

    fn tls(&self) -> EtcdClientTls {
        let pki = self.dir.join("data/pki");
        EtcdClientTls {
            ca: pki.join("etcd/ca.crt"),
            cert: pki.join("apiserver-etcd-client.crt"),
            key: pki.join("apiserver-etcd-client.key"),
        }
    }
}

struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn wait_log(&mut self, needle: &str) {
        let end = Instant::now() + LIMIT;
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if text.contains(needle) {
                return;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("exited ({st}) before {needle:?}:\n{text}");
            }
            assert!(Instant::now() < end, "no {needle:?}:\n{text}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn stop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn readyz(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    if s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    buf.starts_with(b"HTTP/1.1 200")
}

async fn poll(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let end = Instant::now() + LIMIT;
    while !f().await {
        assert!(Instant::now() < end, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn voting(node: &Node, name: &str) -> bool {
    let Ok(mut c) = connect(
        &format!("https://127.0.0.1:{}", node.etcd_port),
        &node.tls(),
    )
    .await
    else {
        return false;
    };
    match c.member_list().await {
        Ok(l) => l
            .members()
            .iter()
            .any(|m| m.name() == name && !m.is_learner()),
        Err(_) => false,
    }
}

async fn all_ready(ports: &[u16]) -> bool {
    for p in ports {
        if !readyz(*p).await {
            return false;
        }
    }
    true
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let root = tempfile::tempdir().unwrap();

    // Baseline 1: bootstrap the first controller until its etcd serves.
    let c1 = Node::new(root.path(), "c1", "127.0.0.1");
    let t0 = Instant::now();
    let mut p1 = c1.spawn(&[
        "controller",
        "--node-name",
        "c1",
        "--disable-components",
        NO_KUBE,
    ]);
    poll("c1 etcd votes", async || voting(&c1, "c1").await).await;
    let bootstrap = t0.elapsed();
    p1.wait_log("controller ready");

    let out = c1
        .cmd(&["token", "create", "--role", "controller"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tok_file = root.path().join("controller.token");
    std::fs::write(&tok_file, &out.stdout).unwrap();

    // Controller join to voting member.
    let c2 = Node::new(root.path(), "c2", "127.0.0.2");
    let t0 = Instant::now();
    let mut p2 = c2.spawn(&[
        "controller",
        "--disable-components",
        NO_KUBE,
        "--node-name",
        "c2",
        "--token-file",
        tok_file.to_str().unwrap(),
    ]);
    poll("c2 votes", async || voting(&c1, "c2").await).await;
    let join = t0.elapsed();
    p2.wait_log("controller ready");

    println!(
        "controller join to voting etcd member: {:.0} ms; bootstrap baseline (first controller to voting etcd): {:.0} ms; ratio {:.2}",
        ms(join),
        ms(bootstrap),
        join.as_secs_f64() / bootstrap.as_secs_f64()
    );

    let out = c1
        .cmd(&["token", "create", "--role", "worker"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let wtok = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let ports = [c1.admin_port, c2.admin_port];

    let mut joins = Vec::new();
    let mut restarts = Vec::new();
    for i in 0..WORKER_RUNS {
        let w = Node::new(
            root.path(),
            &format!("w{i}"),
            &format!("127.0.0.{}", 10 + i),
        );
        let name = w.name.clone();
        let address = w.address.clone();
        let t0 = Instant::now();
        let mut pw = w.spawn(&[
            "worker",
            "--disable-components",
            "containerd,kubelet",
            "--node-name",
            &name,
            "--address",
            &address,
            "--token",
            &wtok,
            "--agent-admin-port",
            "0",
        ]);
        poll("agent on every controller", async || {
            all_ready(&ports).await
        })
        .await;
        joins.push(t0.elapsed());
        pw.stop();
        poll("agent gone", async || !readyz(c1.admin_port).await).await;

        let t0 = Instant::now();
        let mut pw = w.spawn(&[
            "worker",
            "--disable-components",
            "containerd,kubelet",
            "--address",
            &address,
            "--agent-admin-port",
            "0",
        ]);
        poll("restarted agent on every controller", async || {
            all_ready(&ports).await
        })
        .await;
        restarts.push(t0.elapsed());
        pw.stop();
        poll("agent gone", async || !readyz(c1.admin_port).await).await;
    }
    let (j, r) = (median(joins), median(restarts));
    println!(
        "worker join to agent connected to every controller (2): median {:.0} ms over {WORKER_RUNS}; restart with saved credentials baseline: {:.0} ms; ratio {:.2}",
        ms(j),
        ms(r),
        j.as_secs_f64() / r.as_secs_f64()
    );
    p2.stop();
    p1.stop();
}
