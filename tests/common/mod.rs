//! Shared helpers for integration tests: free ports, temporary node
//! directories, the mkectl binary as a real process, bounded waits.
#![allow(dead_code)]

pub mod cluster;
pub mod join;
pub mod konnectivity;
pub mod konnectivity_cmd;
pub mod netns;
pub mod upstream;

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const MKECTL: &str = env!("CARGO_BIN_EXE_mkectl");

/// `mkectl controller` arguments that leave out the components needing the
/// upstream kube binaries, which CI machines do not have (the applier then
/// stays off too, for lack of an apiserver).
pub const NO_KUBE_BINARIES: &[&str] = &[
    "--disable-components",
    "kube-apiserver,kube-controller-manager,kube-scheduler",
];

/// Runs `cmd`, asserts it succeeded (showing its stderr if not) and returns
/// its stdout.
pub fn output_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ctr version` against a containerd socket: containerd answers.
pub fn ctr_answers(socket: &Path) {
    output_ok(
        Command::new("ctr")
            .arg("--address")
            .arg(socket)
            .arg("version"),
    );
}

/// `n` distinct ports free now on 127.0.0.1, for components a test starts.
pub fn free_ports<const N: usize>() -> [u16; N] {
    std::array::from_fn(|_| free_port())
}

/// Where this process's port search starts and how far it runs: below the
/// kernel's ephemeral range, so that no process's outgoing connection can
/// take a port between our check and the component's own bind. A port from
/// `bind(:0)` comes out of that range and, on a busy 2-core CI machine, was
/// sometimes taken by a client socket (etcd's, a status poll's) before the
/// controller bound it; the controller then never became ready.
const PORT_POOL: std::ops::Range<u16> = 20000..30000;

/// A port free now on 127.0.0.1, outside the ephemeral range, never handed
/// out twice by this process (tests of one binary run in parallel threads).
/// Falls back to a kernel-chosen port if the machine's ephemeral range
/// overlaps the pool.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::OnceLock;
    static NEXT: OnceLock<AtomicU32> = OnceLock::new();
    static POOL_USABLE: OnceLock<bool> = OnceLock::new();
    let usable = *POOL_USABLE.get_or_init(|| {
        let range = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
        let bounds: Vec<u32> = range.split_whitespace().filter_map(|v| v.parse().ok()).collect();
        matches!(bounds[..], [lo, hi] if hi < u32::from(PORT_POOL.start) || lo >= u32::from(PORT_POOL.end))
    });
    if !usable {
        return TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
    }
    let span = u32::from(PORT_POOL.end - PORT_POOL.start);
    // Start at a pid-dependent offset: two test binaries running at once
    // (a developer's second terminal) mostly walk different stretches.
    let next = NEXT.get_or_init(|| AtomicU32::new(std::process::id().wrapping_mul(7919) % span));
    for _ in 0..span {
        let offset = next.fetch_add(1, Ordering::Relaxed) % span;
        let port = PORT_POOL.start + offset as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
    }
    panic!("no free port left in {PORT_POOL:?}");
}

/// Polls `f` every 50 ms until it returns Some or `timeout` passes.
pub fn wait_for<T>(what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
    wait_for_or(what, timeout, f, String::new)
}

/// [`wait_for`], adding `context()` (log tails, say) to the panic message
/// on timeout, so a CI failure says why and not only what.
pub fn wait_for_or<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
    context: impl FnOnce() -> String,
) -> T {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > end {
            panic!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                context()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The last `n` lines of every `*.log` file directly in `dir`.
pub fn log_tails(dir: &Path, n: usize) -> String {
    let mut logs: Vec<PathBuf> = fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    logs.retain(|p| p.extension().is_some_and(|e| e == "log"));
    logs.sort();
    let mut out = String::new();
    for log in logs {
        let text = fs::read_to_string(&log).unwrap_or_default();
        out.push_str(&format!(
            "--- last {n} lines of {} ---\n{}\n",
            log.display(),
            tail(&text, n)
        ));
    }
    out
}

/// True while `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // state is the field after the parenthesised comm
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z') && !state.starts_with('X')
        }
        Err(_) => false,
    }
}

/// Pids of processes whose environment carries `needle`.
pub fn pids_with_env(needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(env) = fs::read(format!("/proc/{pid}/environ")) {
            if env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()) && alive(pid) {
                out.push(pid);
            }
        }
    }
    out
}

pub fn signal(pid: i32, sig: i32) {
    unsafe {
        libc::kill(pid, sig);
    }
}

/// A controller node in temporary directories with its own free ports.
pub struct Node {
    pub tmp: tempfile::TempDir,
    pub data: PathBuf,
    pub run: PathBuf,
    pub config: PathBuf,
    pub etcd_client_port: u16,
    pub etcd_peer_port: u16,
    pub api_port: u16,
    pub konnectivity_agent_port: u16,
    pub konnectivity_admin_port: u16,
    pub join_port: u16,
    pub metrics_port: u16,
    /// One more port, distinct from the others, for a test's own use
    /// (e.g. an agent admin port).
    pub spare_port: u16,
    pub name: String,
    /// The network namespace every `mkectl` and `kubectl` of this node runs
    /// in (`ip netns exec`), when the test gave it one.
    pub netns: Option<String>,
}

impl Node {
    pub fn new(name: &str) -> Self {
        Self::with_spec(name, "")
    }

    /// `extra_spec` is YAML appended under `spec:` (indented two spaces).
    pub fn with_spec(name: &str, extra_spec: &str) -> Self {
        Self::with_address(name, "127.0.0.1", extra_spec)
    }

    /// A node on its own loopback address (127.0.0.2, 127.0.0.3, ...):
    /// apiserver, join API, konnectivity agent port and etcd peer port bind
    /// there; every port is free and distinct.
    pub fn with_address(name: &str, address: &str, extra_spec: &str) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let run = tmp.path().join("run");
        let config = tmp.path().join("mkectl.yaml");
        let [c, p, api, ka, kadm, join, metrics, spare] = free_ports();
        let yaml = format!(
            "apiVersion: mkectl.io/v1beta1\nkind: ClusterConfig\nspec:\n  api:\n    address: {address}\n    port: {api}\n  etcd:\n    clientPort: {c}\n    peerPort: {p}\n  konnectivity:\n    agentPort: {ka}\n    adminPort: {kadm}\n  joinApi:\n    port: {join}\n  metrics:\n    port: {metrics}\n{extra_spec}",
        );
        fs::write(&config, yaml).unwrap();
        Self {
            tmp,
            data,
            run,
            config,
            etcd_client_port: c,
            etcd_peer_port: p,
            api_port: api,
            konnectivity_agent_port: ka,
            konnectivity_admin_port: kadm,
            join_port: join,
            metrics_port: metrics,
            spare_port: spare,
            name: name.into(),
            netns: None,
        }
    }

    /// A node whose processes run inside `ns`, on `address` (which the test
    /// has put on an interface of `ns`, e.g. its `lo`).
    pub fn in_netns(name: &str, ns: &netns::Netns, address: &str, extra_spec: &str) -> Self {
        let mut node = Self::with_address(name, address, extra_spec);
        node.netns = Some(ns.name.clone());
        node
    }

    /// `program` as this node runs it: inside its namespace, if it has one
    /// (`ip netns exec` execs it, so the child's pid is the program's).
    pub fn program(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(program);
                c
            }
            None => Command::new(program),
        }
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = self.program(MKECTL);
        cmd.arg("--data-dir")
            .arg(&self.data)
            .arg("--run-dir")
            .arg(&self.run)
            .arg("--config")
            .arg(&self.config)
            .args(args);
        cmd
    }

    pub fn pki(&self, rel: &str) -> PathBuf {
        self.data.join("pki").join(rel)
    }

    /// Starts `mkectl controller` with logs going to `<tmp>/controller-N.log`.
    pub fn start_controller(&self, extra: &[&str]) -> Controller {
        let mut args = vec!["controller", "--node-name", &self.name];
        args.extend_from_slice(extra);
        self.spawn_logged("controller", &args)
    }

    /// Starts `mkectl worker` with logs going to `<tmp>/worker-N.log`.
    /// Starts `mkectl worker` without containerd and kubelet (kubelet is an
    /// upstream binary CI machines do not have; containerd has its own test),
    /// so the join and the konnectivity agent are what runs.
    pub fn start_worker(&self, extra: &[&str]) -> Controller {
        self.start_worker_without("containerd,kubelet", extra)
    }

    /// `mkectl worker --disable-components <disabled> <extra>`.
    pub fn start_worker_without(&self, disabled: &str, extra: &[&str]) -> Controller {
        let mut args = vec![
            "worker",
            "--node-name",
            &self.name,
            "--disable-components",
            disabled,
        ];
        args.extend_from_slice(extra);
        self.spawn_logged("worker", &args)
    }

    /// Runs `mkectl <args>` in the background, logging to `<tmp>/<kind>-N.log`.
    pub fn spawn_logged(&self, kind: &str, args: &[&str]) -> Controller {
        let prefix = format!("{kind}-");
        let n = fs::read_dir(self.tmp.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .map(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                    .unwrap_or(false)
            })
            .count();
        let log = self.tmp.path().join(format!("{kind}-{n}.log"));
        let child = self
            .cmd(args)
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Controller { child, log }
    }

    pub fn pid_file(&self, component: &str) -> PathBuf {
        self.run.join(format!("{component}.pid"))
    }

    /// The pid recorded for a component, once its pid file exists.
    pub fn child_pid(&self, component: &str) -> Option<i32> {
        fs::read_to_string(self.pid_file(component))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    pub fn etcd_endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.etcd_client_port)
    }

    /// `mkectl status -o json`: its exit code and, when it printed one, the
    /// status document.
    pub fn status_json(&self) -> (i32, Option<serde_json::Value>) {
        let out = self.cmd(&["status", "-o", "json"]).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            serde_json::from_slice(&out.stdout).ok(),
        )
    }

    /// Waits until `mkectl status` exits 0 and `pred` holds for its document.
    pub fn wait_status(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        wait_for_or(
            what,
            timeout,
            || match self.status_json() {
                (0, Some(v)) if pred(&v) => Some(v),
                _ => None,
            },
            || {
                let (code, doc) = self.status_json();
                format!(
                    "last `mkectl status`: exit {code}, {doc:?}\n{}",
                    log_tails(self.tmp.path(), 40)
                )
            },
        )
    }

    /// `GET /metrics` on the node's metrics port.
    pub fn metrics_page(&self) -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.metrics_port)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let (head, body) = resp.split_once("\r\n\r\n").expect("HTTP response");
        assert!(
            head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
            "{head}"
        );
        body.to_string()
    }
}

/// The component named `name` in a status document.
pub fn component<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no component {name} in {status}"))
}

pub struct Controller {
    pub child: Child,
    pub log: PathBuf,
}

impl Controller {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
    /// Waits for exit with a bound; returns the exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let end = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > end {
                panic!(
                    "mkectl did not exit within {timeout:?}; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Hex SHA-256 and mtime of every file under `dir`, for "no byte changed".
pub fn snapshot(dir: &Path) -> Vec<(PathBuf, String, std::time::SystemTime)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let bytes = fs::read(&p).unwrap();
                let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
                let mtime = e.metadata().unwrap().modified().unwrap();
                out.push((p, hex::encode(digest.as_ref()), mtime));
            }
        }
    }
    out.sort();
    out
}
