//! Network namespaces for tests that need separate hosts (e.g. a controller
//! and a worker joined by a veth).
//!
//! Network safety: every namespace gets a unique name (role, test pid and a
//! counter), starts with only `lo`, and never gets a default route; links are
//! created directly inside the namespaces, so nothing is added to the host
//! namespace. Dropping a [`Netns`] kills every process still inside it and
//! deletes it, also when the test panics.
//!
//! Creating namespaces needs root (CAP_SYS_ADMIN). CI runs as root, so a
//! failure to create one fails the test loudly instead of skipping it.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn run_ip(args: &[&str]) -> Output {
    Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `ip` (iproute2 is required): {e}"))
}

fn check(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// A network namespace owned by the test; deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates `mketest-<role>-<pid>-<n>` with `lo` up. Panics when the
    /// namespace cannot be created (not root): these tests must not skip.
    pub fn new(role: &str) -> Netns {
        let name = format!(
            "mketest-{role}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let out = run_ip(&["netns", "add", &name]);
        assert!(
            out.status.success(),
            "`ip netns add {name}` failed: {}. This test creates network namespaces and \
             must run as root (CI does); it does not skip.",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n <name> <args>`; panics with ip's message on failure.
    pub fn ip(&self, args: &[&str]) {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        check(&format!("ip {}", full.join(" ")), &run_ip(&full));
    }

    /// `ip -n <name> <args>` without checking; for probes.
    pub fn ip_output(&self, args: &[&str]) -> Output {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        run_ip(&full)
    }

    /// A command that runs `program` inside the namespace
    /// (`ip netns exec <name> <program>`, which execs it: the child's pid is
    /// the program's).
    pub fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Starts `program args` inside the namespace with stdout and stderr
    /// going to `log`; killed when the returned guard is dropped.
    pub fn spawn<S: AsRef<std::ffi::OsStr>>(
        &self,
        log: &Path,
        program: impl AsRef<std::ffi::OsStr>,
        args: impl IntoIterator<Item = S>,
    ) -> NsChild {
        let f = std::fs::File::create(log).unwrap();
        let child = self
            .cmd(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap();
        NsChild {
            child,
            log: log.to_path_buf(),
        }
    }

    /// Runs `f` on a thread that joined this namespace. Sockets created
    /// there stay in the namespace after the thread ends and can be used by
    /// any thread (e.g. a listener handed to tokio).
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = PathBuf::from("/run/netns").join(&self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = std::fs::File::open(&path)
                    .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
                // SAFETY: setns on a valid namespace fd only changes this
                // (scoped, short-lived) thread's network namespace.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(
                    rc,
                    0,
                    "setns {}: {}",
                    path.display(),
                    std::io::Error::last_os_error()
                );
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Pids of processes inside the namespace.
    pub fn pids(&self) -> Vec<i32> {
        let out = run_ip(&["netns", "pids", &self.name]);
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .filter(|p| *p != std::process::id() as i32)
            .collect()
    }

    /// True while `ip netns list` shows the namespace.
    pub fn exists(name: &str) -> bool {
        let out = run_ip(&["netns", "list"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.split_whitespace().next() == Some(name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Everything the test started in here (including forks of its
        // processes) dies with the namespace.
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            let pids = self.pids();
            if pids.is_empty() || Instant::now() > end {
                break;
            }
            for p in pids {
                super::signal(p, libc::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = run_ip(&["netns", "del", &self.name]);
        if !out.status.success() {
            eprintln!(
                "warning: ip netns del {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
}

/// Joins `a` and `b` with a veth pair created directly inside them (never in
/// the host namespace), addresses each end and brings both up.
pub fn veth(a: &Netns, a_if: &str, a_cidr: &str, b: &Netns, b_if: &str, b_cidr: &str) {
    let out = run_ip(&[
        "link", "add", "name", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if,
        "netns", &b.name,
    ]);
    check("ip link add veth", &out);
    a.ip(&["addr", "add", a_cidr, "dev", a_if]);
    a.ip(&["link", "set", a_if, "up"]);
    b.ip(&["addr", "add", b_cidr, "dev", b_if]);
    b.ip(&["link", "set", b_if, "up"]);
}

/// Plugs `node` into the bridge `bridge` of `switch` (a namespace acting
/// as an Ethernet switch) with a veth pair: `node_if` gets `node_cidr`, the
/// switch's end (`port`) no address.
pub fn bridge_port(
    switch: &Netns,
    bridge: &str,
    port: &str,
    node: &Netns,
    node_if: &str,
    node_cidr: &str,
) {
    let out = run_ip(&[
        "link",
        "add",
        "name",
        port,
        "netns",
        &switch.name,
        "type",
        "veth",
        "peer",
        "name",
        node_if,
        "netns",
        &node.name,
    ]);
    check("ip link add veth", &out);
    switch.ip(&["link", "set", port, "master", bridge]);
    switch.ip(&["link", "set", port, "up"]);
    node.ip(&["addr", "add", node_cidr, "dev", node_if]);
    node.ip(&["link", "set", node_if, "up"]);
}

/// A process started inside a namespace; killed and reaped on drop.
pub struct NsChild {
    pub child: Child,
    pub log: PathBuf,
}

impl NsChild {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `sig` and waits (bounded) for the exit status.
    pub fn stop(&mut self, sig: i32, timeout: Duration) -> std::process::ExitStatus {
        super::signal(self.pid(), sig);
        let end = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < end,
                "pid {} did not exit within {timeout:?}; log:\n{}",
                self.pid(),
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NsChild {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
