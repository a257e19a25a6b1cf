//! A worker host in a network namespace of its own for the tests and
//! benches that run real clusters (`tests/cluster_e2e.rs`, `benches/node.rs`):
//! its files, its cgroup root, `mkectl` inside it, and what it needs to run
//! pods offline (images packed locally, a bridge CNI conflist).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::netns::Netns;
use super::{output_ok, signal, Controller, MKECTL};

/// Debian's containernetworking-plugins.
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";
pub const BUSYBOX: &str = "/bin/busybox";
pub const BUSYBOX_IMAGE: &str = "docker.io/mkectl/busybox:e2e";
/// A resolver address no namespace routes: CoreDNS's upstream forwarding
/// fails at once instead of looping back to itself or leaving the test.
pub const UPSTREAM_DNS: &str = "203.0.113.53";
/// Bound for a node to turn Ready after its worker starts.
pub const NODE_READY: Duration = Duration::from_secs(120);
/// Bound for the node-lifecycle controller to lift its not-ready taint
/// after the node turned Ready (it passes every 5 s; a busy CI machine).
pub const TAINTS_CLEARED: Duration = Duration::from_secs(60);
/// Bound for pods to run (image import is done before kubelet starts).
pub const PODS_RUNNING: Duration = Duration::from_secs(120);
pub const POLL: Duration = Duration::from_millis(500);

/// Polls `f` every 500 ms; on timeout panics with `diag()`.
pub fn poll<T>(
    what: &str,
    timeout: Duration,
    diag: impl Fn() -> String,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > end {
            panic!("timed out after {timeout:?} waiting for {what}\n{}", diag());
        }
        std::thread::sleep(POLL);
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A worker host: its namespace, its files, its `mkectl worker`, and its
/// own cgroup root (two kubelets on one machine must not share one: each
/// removes pod cgroups it does not know).
pub struct Worker {
    pub name: String,
    pub ip: String,

    pub dir: PathBuf,
    pub data: PathBuf,
    pub run: PathBuf,
    pub config: PathBuf,
    pub cni_conf_dir: PathBuf,
    pub cgroup_root: String,
    pub cgroup_dirs: Vec<PathBuf>,
    pub process: Option<Controller>,
    pub log: PathBuf,
    pub ns: Netns,
}

impl Worker {
    /// `extra_spec` is appended under `spec:` of its config.
    pub fn new(name: &str, ip: &str, tmp: &Path, extra_spec: &str) -> Worker {
        let ns = Netns::new(name);
        let dir = tmp.join(name);
        let data = dir.join("data");
        let run = dir.join("run");
        let cni_conf_dir = dir.join("cni");
        fs::create_dir_all(data.join("images")).unwrap();
        fs::create_dir_all(&cni_conf_dir).unwrap();
        let cgroup_root = format!("/mketest-{}-{name}", std::process::id());
        let resolv = dir.join("resolv.conf");
        fs::write(&resolv, format!("nameserver {UPSTREAM_DNS}\n")).unwrap();
        let config = dir.join("mkectl.yaml");
        fs::write(
            &config,
            format!(
                "apiVersion: mkectl.io/v1beta1\nkind: ClusterConfig\nspec:\n  worker:\n    cniBinDir: {CNI_BIN_DIR}\n    cniConfDir: {}\n    podLogsDir: {}\n    cgroupRoot: {cgroup_root}\n  extraArgs:\n    kubelet:\n      resolv-conf: {}\n{extra_spec}",
                cni_conf_dir.display(),
                dir.join("pod-logs").display(),
                resolv.display()
            ),
        )
        .unwrap();
        let mut w = Worker {
            name: name.into(),
            ip: ip.into(),

            log: dir.join("worker.log"),
            dir,
            data,
            run,
            config,
            cni_conf_dir,
            cgroup_root,
            cgroup_dirs: Vec::new(),
            process: None,
            ns,
        };
        w.make_cgroup_root();
        w
    }

    /// `<hierarchy>/<cgroup_root>` in every cgroup hierarchy (kubelet checks
    /// that its root exists in each); cpuset gets its parent's cpus and mems.
    pub fn make_cgroup_root(&mut self) {
        let rel = self.cgroup_root.trim_start_matches('/');
        let base = Path::new("/sys/fs/cgroup");
        let mut hierarchies = vec![];
        if base.join("cgroup.procs").exists() {
            hierarchies.push(base.to_path_buf());
        } else {
            for e in fs::read_dir(base).unwrap().flatten() {
                if e.path().join("cgroup.procs").exists() {
                    hierarchies.push(e.path());
                }
            }
        }
        for h in hierarchies {
            let d = h.join(rel);
            fs::create_dir_all(&d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
            for f in ["cpuset.cpus", "cpuset.mems"] {
                if let Ok(v) = fs::read_to_string(h.join(f)) {
                    let _ = fs::write(d.join(f), v.trim());
                }
            }
            self.cgroup_dirs.push(d);
        }
    }

    /// `mkectl <args>` inside this worker's network namespace only
    /// (`nsenter --net`): unlike `ip netns exec` it keeps the host's /sys,
    /// where kubelet finds the cgroup hierarchies.
    pub fn mkectl(&self, bin: &Path, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.ns.name))
            .arg("--")
            .arg(MKECTL)
            .arg("--data-dir")
            .arg(&self.data)
            .arg("--run-dir")
            .arg(&self.run)
            .arg("--config")
            .arg(&self.config)
            .arg("--bin-dir")
            .arg(bin)
            .args(args);
        c
    }

    /// `mkectl worker`; without a token file once the node has joined (its
    /// credentials are on disk).
    pub fn start(&mut self, bin: &Path, token_file: Option<&Path>) {
        let (name, ip) = (self.name.clone(), self.ip.clone());
        let mut args = vec!["worker", "--node-name", &name, "--address", &ip];
        if let Some(f) = token_file {
            args.extend(["--token-file", f.to_str().unwrap()]);
        }
        self.spawn(bin, &args);
    }

    /// `mkectl <args>` in the background, logging to `worker.log`.
    pub fn spawn(&mut self, bin: &Path, args: &[&str]) {
        let log = fs::File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = self
            .mkectl(bin, args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.process = Some(Controller {
            child,
            log: self.log.clone(),
        });
    }

    pub fn log_tail(&self) -> String {
        super::tail(&fs::read_to_string(&self.log).unwrap_or_default(), 60)
    }

    /// Every pid in this worker's cgroup root (pods' processes live in
    /// their own namespaces, so killing the network namespace's processes
    /// does not reach them).
    pub fn cgroup_pids(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        for d in &self.cgroup_dirs {
            let mut stack = vec![d.clone()];
            while let Some(d) = stack.pop() {
                if let Ok(t) = fs::read_to_string(d.join("cgroup.procs")) {
                    pids.extend(t.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
                }
                if let Ok(rd) = fs::read_dir(&d) {
                    stack.extend(rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
                }
            }
        }
        pids.sort();
        pids.dedup();
        pids
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // mkectl and its children (containerd, shims, kubelet, kube-proxy)
        // first, then the pods' processes, then their mounts, then the
        // cgroups; the namespace and the files go with the fields.
        drop(self.process.take());
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let mut pids = self.ns.pids();
            pids.extend(self.cgroup_pids());
            if pids.is_empty() || Instant::now() > end {
                break;
            }
            for p in pids {
                signal(p, libc::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let swept = mkectl::mounts::unmount_below(&[self.dir.as_path()]);
        if !swept.is_empty() {
            eprintln!(
                "cleanup: unmounted {} mounts under {}",
                swept.len(),
                self.dir.display()
            );
        }
        for d in &self.cgroup_dirs {
            // Deepest first.
            let mut all = vec![];
            let mut stack = vec![d.clone()];
            while let Some(d) = stack.pop() {
                if let Ok(rd) = fs::read_dir(&d) {
                    stack.extend(rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
                }
                all.push(d);
            }
            for d in all.iter().rev() {
                let _ = fs::remove_dir(d);
            }
        }
    }
}

pub fn conflist(subnet: &str) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "mke-e2e",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": subnet}]],
                    // Pods and Services only: no default route anywhere.
                    "routes": [{"dst": "10.0.0.0/8"}]
                }
            },
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    })
    .to_string()
}

/// Packs busybox (from the host's busybox-static) and, through the
/// packaging step, CoreDNS into OCI archives; copies both into each data
/// dir's `images/`, which `mkectl` imports at start.
pub fn stage_images(bin: &Path, tmp: &Path, data_dirs: &[&Path]) {
    let packed = tmp.join("packed");
    output_ok(
        Command::new("bash")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/images/build-images.sh"))
            .arg("--mkectl")
            .arg(MKECTL)
            .arg("--bin-dir")
            .arg(bin)
            .arg("--output")
            .arg(&packed),
    );
    let busybox_tar = packed.join("busybox.oci.tar");
    output_ok(Command::new(MKECTL).args([
        "images",
        "pack",
        "--name",
        BUSYBOX_IMAGE,
        "--file",
        &format!("{BUSYBOX}:{BUSYBOX}"),
        "--entrypoint",
        BUSYBOX,
        "--output",
        busybox_tar.to_str().unwrap(),
    ]));
    for d in data_dirs {
        fs::copy(&busybox_tar, d.join("images/busybox.tar")).unwrap();
        fs::copy(
            packed.join("coredns-v1.11.3.oci.tar"),
            d.join("images/coredns.tar"),
        )
        .unwrap();
    }
}
