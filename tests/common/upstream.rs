//! The upstream binaries `packaging/build-upstream.sh` builds from their Go
//! modules (kube-apiserver, kube-controller-manager, kube-scheduler, kubelet,
//! kube-proxy, proxy-server, proxy-agent), found through
//! `MKECTL_UPSTREAM_BIN_DIR` (`.ci/run` exports it).
//!
//! Under `CI=true` a test that needs one and does not find it fails. Outside
//! CI it returns early and says on stderr, naming the binary, that it did not
//! run: it never claims to have run.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use super::{wait_for, Controller, Node};

pub const CONTROL_PLANE: [&str; 3] = [
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
];

/// The pinned upstream Kubernetes version the binaries must report.
pub const KUBE_VERSION: &str = "v1.32.8";

/// Bound for a whole controller to become ready with the real control plane
/// on a busy 2-core machine.
pub const CONTROL_PLANE_READY: Duration = Duration::from_secs(240);

/// etcd's answer to a request that was in flight while its leader changed
/// (the kill of a controller whose etcd member led causes one); etcd's own
/// clients retry it.
pub const ETCD_LEADER_CHANGED: &str = "etcdserver: leader changed";
/// Tries per call when etcd answers [`ETCD_LEADER_CHANGED`].
const LEADER_CHANGE_TRIES: usize = 3;

/// Runs `call` (a kubectl invocation) again, at most [`LEADER_CHANGE_TRIES`]
/// times 200 ms apart, only while it fails with etcd's transient "leader
/// changed"; every other outcome is returned at once. Also returns how many
/// retries it took, for the test to print.
pub fn through_etcd_leader_change(mut call: impl FnMut() -> Output) -> (Output, usize) {
    let mut retries = 0;
    loop {
        let out = call();
        let transient = !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains(ETCD_LEADER_CHANGED);
        if !transient || retries + 1 >= LEADER_CHANGE_TRIES {
            return (out, retries);
        }
        retries += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The directory holding every binary in `names`, or None (outside CI only)
/// after saying on stderr that the test did not run.
pub fn upstream_bins(names: &[&str]) -> Option<PathBuf> {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let missing = |why: String| -> Option<PathBuf> {
        if ci {
            panic!("CI=true and {why}: run packaging/build-upstream.sh and export MKECTL_UPSTREAM_BIN_DIR");
        }
        eprintln!("NOT RUN: {why} (set MKECTL_UPSTREAM_BIN_DIR, see packaging/build-upstream.sh)");
        None
    };
    let Some(dir) = std::env::var_os("MKECTL_UPSTREAM_BIN_DIR").filter(|d| !d.is_empty()) else {
        return missing(format!(
            "MKECTL_UPSTREAM_BIN_DIR is not set ({names:?} needed)"
        ));
    };
    let dir = PathBuf::from(dir);
    for n in names {
        if !is_executable(&dir.join(n)) {
            return missing(format!("{n} is not an executable in {}", dir.display()));
        }
    }
    Some(dir)
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The upstream binaries a full controller needs, or None (see
/// [`upstream_bins`]).
pub fn control_plane_bins() -> Option<PathBuf> {
    upstream_bins(&CONTROL_PLANE)
}

/// YAML under `spec:` giving kube-controller-manager and kube-scheduler
/// these secure ports instead of upstream's fixed 10257 and 10259, which
/// controllers running side by side on one machine cannot share.
pub fn kube_ports_spec(kcm: u16, scheduler: u16) -> String {
    format!(
        "  extraArgs:\n    kube-controller-manager:\n      secure-port: \"{kcm}\"\n    kube-scheduler:\n      secure-port: \"{scheduler}\"\n"
    )
}

impl Node {
    /// A controller node on `address` whose kube-controller-manager and
    /// kube-scheduler get free secure ports (see [`kube_ports_spec`]).
    pub fn control_plane_node(name: &str, address: &str) -> Node {
        let [kcm, scheduler] = super::free_ports();
        Node::with_address(name, address, &kube_ports_spec(kcm, scheduler))
    }

    /// `kubectl --kubeconfig <admin.conf> <args>`, waited for.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.program("kubectl")
            .env_remove("KUBECONFIG")
            .arg("--kubeconfig")
            .arg(self.pki("admin.conf"))
            .arg("--request-timeout=20s")
            .args(args)
            .output()
            .expect("kubectl runs")
    }

    /// `kubectl <args>` that must succeed; returns its stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until `kubectl <args>` succeeds; returns its stdout.
    pub fn kubectl_until(&self, what: &str, timeout: Duration, args: &[&str]) -> String {
        wait_for(what, timeout, || {
            let out = self.kubectl(args);
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
        })
    }

    /// Starts `mkectl controller --bin-dir <bin> <extra>` with the whole
    /// control plane and waits until it logs that it is ready.
    pub fn start_full_controller(&self, bin: &Path, extra: &[&str]) -> Controller {
        let mut args = vec!["--bin-dir", bin.to_str().unwrap()];
        args.extend_from_slice(extra);
        let mut ctl = self.start_controller(&args);
        wait_ready(&mut ctl, "controller ready");
        ctl
    }
}

/// Waits until `ctl` logs `needle` (the whole control plane is slow to come
/// up); panics with the log if it exits first or the bound passes.
pub fn wait_ready(ctl: &mut Controller, needle: &str) {
    super::join::wait_log(ctl, needle, CONTROL_PLANE_READY);
}
