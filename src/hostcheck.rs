//! Host prerequisites of a node that runs pods, checked when the worker side
//! starts (before containerd, kubelet and kube-proxy), so a host that cannot
//! carry pod traffic says why at once instead of failing later inside a
//! component's log.
//!
//! | check | needed for | failing means |
//! |---|---|---|
//! | `net.ipv4.ip_forward = 1` | any pod traffic leaving the node, Services | refuse |
//! | `br_netfilter` loaded, `net.bridge.bridge-nf-call-iptables = 1` | Services reached from a pod on the same bridge | refuse |
//! | cgroup controllers cpu, cpuset, memory, pids (and cpuacct on v1) | kubelet's pod resource limits | refuse |
//! | `/` mounted `rshared` | volumes with mount propagation | warn |
//!
//! "Refuse" is exit 69 with every failed check listed and how to fix it;
//! `spec.worker.hostChecks: warn` turns refusals into warnings (for hosts
//! where the operator knows better). Reads go through [`HostView`], so the
//! tests feed them without touching the host. `/proc/sys/net` is per network
//! namespace: the values read are those of the namespace mkectl runs in.

use std::io;
use std::path::Path;

pub const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
pub const BRIDGE_NF_CALL_IPTABLES: &str = "/proc/sys/net/bridge/bridge-nf-call-iptables";
pub const MOUNTINFO: &str = "/proc/self/mountinfo";
pub const CGROUP2_CONTROLLERS: &str = "/sys/fs/cgroup/cgroup.controllers";
pub const PROC_CGROUPS: &str = "/proc/cgroups";
/// Controllers kubelet needs on cgroup v2.
pub const CGROUP2_REQUIRED: &[&str] = &["cpu", "cpuset", "memory", "pids"];
/// Controllers kubelet needs on cgroup v1.
pub const CGROUP1_REQUIRED: &[&str] = &["cpu", "cpuacct", "cpuset", "memory", "pids"];

pub use crate::config::worker::Enforcement;

/// The reads the checks make; the real host or a test's fixture.
pub trait HostView {
    fn read(&self, path: &Path) -> io::Result<String>;
}

/// The host mkectl runs on.
pub struct RealHost;

impl HostView for RealHost {
    fn read(&self, path: &Path) -> io::Result<String> {
        std::fs::read_to_string(path)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Required,
    Recommended,
}

/// One failed check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub check: &'static str,
    pub severity: Severity,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// A required check failed (exit 69 through `crate::exit`).
#[derive(Debug, thiserror::Error)]
#[error("host prerequisites missing for running pods:\n{}\n(set spec.worker.hostChecks: warn to start anyway)", list(.0))]
pub struct HostCheckError(pub Vec<Finding>);

impl crate::exit::ExitCode for HostCheckError {
    fn exit_code(&self) -> Option<u8> {
        Some(crate::exit::UNAVAILABLE)
    }
}

fn list(f: &[Finding]) -> String {
    f.iter()
        .map(|f| format!("  - {}: {}", f.check, f.message))
        .collect::<Vec<_>>()
        .join("\n")
}

fn sysctl_is_one(host: &dyn HostView, path: &str) -> Result<bool, io::Error> {
    host.read(Path::new(path)).map(|v| v.trim() == "1")
}

/// Runs every check; returns the failures (empty = all good).
pub fn run(host: &dyn HostView) -> Vec<Finding> {
    let mut out = Vec::new();
    let required = |check, message: String| Finding {
        check,
        severity: Severity::Required,
        message,
    };

    match sysctl_is_one(host, IP_FORWARD) {
        Ok(true) => {}
        Ok(false) => out.push(required(
            "net.ipv4.ip_forward",
            "is 0: pods cannot reach anything off their node; set it: `sysctl -w net.ipv4.ip_forward=1` (and in /etc/sysctl.d/ to keep it)".into(),
        )),
        Err(e) => out.push(required("net.ipv4.ip_forward", format!("{IP_FORWARD}: {e}"))),
    }

    match sysctl_is_one(host, BRIDGE_NF_CALL_IPTABLES) {
        Ok(true) => {}
        Ok(false) => out.push(required(
            "net.bridge.bridge-nf-call-iptables",
            "is 0: Services are not reachable from pods on the same bridge; set it: `sysctl -w net.bridge.bridge-nf-call-iptables=1`".into(),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => out.push(required(
            "br_netfilter",
            "the kernel module is not loaded (no /proc/sys/net/bridge): `modprobe br_netfilter` (and list it in /etc/modules-load.d/ to keep it)".into(),
        )),
        Err(e) => out.push(required(
            "net.bridge.bridge-nf-call-iptables",
            format!("{BRIDGE_NF_CALL_IPTABLES}: {e}"),
        )),
    }

    if let Some(f) = cgroups(host) {
        out.push(f);
    }

    match host.read(Path::new(MOUNTINFO)) {
        Ok(text) if root_is_shared(&text) => {}
        Ok(_) => out.push(Finding {
            check: "rshared /",
            severity: Severity::Recommended,
            message: "/ is not a shared mount: volumes with mountPropagation (CSI drivers) will not work; `mount --make-rshared /`".into(),
        }),
        Err(e) => out.push(Finding {
            check: "rshared /",
            severity: Severity::Recommended,
            message: format!("{MOUNTINFO}: {e}"),
        }),
    }
    out
}

/// The cgroup controllers kubelet needs, on v2 (unified) or v1.
fn cgroups(host: &dyn HostView) -> Option<Finding> {
    let missing: Vec<&str> = match host.read(Path::new(CGROUP2_CONTROLLERS)) {
        Ok(text) => {
            let have: Vec<&str> = text.split_whitespace().collect();
            CGROUP2_REQUIRED
                .iter()
                .copied()
                .filter(|c| !have.contains(c))
                .collect()
        }
        Err(_) => match host.read(Path::new(PROC_CGROUPS)) {
            // `#subsys_name hierarchy num_cgroups enabled`
            Ok(text) => {
                let enabled: Vec<&str> = text
                    .lines()
                    .filter(|l| !l.starts_with('#'))
                    .filter_map(|l| {
                        let f: Vec<&str> = l.split_whitespace().collect();
                        (f.len() == 4 && f[3] == "1").then_some(f[0])
                    })
                    .collect();
                CGROUP1_REQUIRED
                    .iter()
                    .copied()
                    .filter(|c| !enabled.contains(c))
                    .collect()
            }
            Err(e) => {
                return Some(Finding {
                    check: "cgroups",
                    severity: Severity::Required,
                    message: format!(
                        "neither {CGROUP2_CONTROLLERS} nor {PROC_CGROUPS} is readable: {e}"
                    ),
                })
            }
        },
    };
    (!missing.is_empty()).then(|| Finding {
        check: "cgroups",
        severity: Severity::Required,
        message: format!(
            "controllers {} are not available: enable them on the kernel command line (e.g. cgroup_enable=memory)",
            missing.join(", ")
        ),
    })
}

/// True when the mount at `/` carries a `shared:N` optional field.
fn root_is_shared(mountinfo: &str) -> bool {
    mountinfo.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // id parent major:minor root mountpoint options [optional...] - ...
        f.len() > 6
            && f[4] == "/"
            && f[6..]
                .iter()
                .take_while(|x| **x != "-")
                .any(|x| x.starts_with("shared:"))
    })
}

/// Runs the checks and applies `enforcement`: recommended failures are
/// warnings; required ones refuse (or warn with `Warn`).
pub fn enforce(host: &dyn HostView, enforcement: Enforcement) -> Result<(), HostCheckError> {
    let findings = run(host);
    let mut refused = Vec::new();
    for f in findings {
        match (f.severity, enforcement) {
            (Severity::Required, Enforcement::Enforce) => refused.push(f),
            _ => tracing::warn!(component = "hostcheck", check = f.check, "{}", f.message),
        }
    }
    if refused.is_empty() {
        Ok(())
    } else {
        Err(HostCheckError(refused))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Fake(HashMap<&'static str, &'static str>);

    impl HostView for Fake {
        fn read(&self, path: &Path) -> io::Result<String> {
            self.0
                .get(path.to_str().unwrap_or_default())
                .map(|s| s.to_string())
                .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
        }
    }

    const SHARED_ROOT: &str =
        "22 1 253:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n30 22 0:5 / /dev rw - devtmpfs udev rw\n";
    const PRIVATE_ROOT: &str = "22 1 253:0 / / rw,relatime - ext4 /dev/vda rw\n";
    const V1: &str = "#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpuset\t3\t1\t1\ncpu\t1\t1\t1\ncpuacct\t2\t1\t1\nmemory\t4\t1\t1\npids\t8\t1\t1\n";

    fn good() -> HashMap<&'static str, &'static str> {
        HashMap::from([
            (IP_FORWARD, "1\n"),
            (BRIDGE_NF_CALL_IPTABLES, "1\n"),
            (MOUNTINFO, SHARED_ROOT),
            (
                CGROUP2_CONTROLLERS,
                "cpuset cpu io memory hugetlb pids rdma misc\n",
            ),
        ])
    }

    #[test]
    fn a_good_host_passes() {
        assert_eq!(run(&Fake(good())), []);
        let mut v1 = good();
        v1.remove(CGROUP2_CONTROLLERS);
        v1.insert(PROC_CGROUPS, V1);
        assert_eq!(run(&Fake(v1)), []);
        enforce(&Fake(good()), Enforcement::Enforce).unwrap();
    }

    #[test]
    fn each_missing_prerequisite_is_named_with_its_fix() {
        let mut h = good();
        h.insert(IP_FORWARD, "0\n");
        h.remove(BRIDGE_NF_CALL_IPTABLES);
        h.insert(CGROUP2_CONTROLLERS, "cpu io pids\n");
        h.insert(MOUNTINFO, PRIVATE_ROOT);
        let f = run(&Fake(h.clone()));
        let checks: Vec<_> = f.iter().map(|f| (f.check, f.severity)).collect();
        assert_eq!(
            checks,
            [
                ("net.ipv4.ip_forward", Severity::Required),
                ("br_netfilter", Severity::Required),
                ("cgroups", Severity::Required),
                ("rshared /", Severity::Recommended),
            ]
        );
        assert!(f[0].message.contains("sysctl -w net.ipv4.ip_forward=1"));
        assert!(f[1].message.contains("modprobe br_netfilter"));
        assert!(f[2].message.contains("cpuset, memory"), "{}", f[2].message);
        let e = enforce(&Fake(h.clone()), Enforcement::Enforce)
            .unwrap_err()
            .to_string();
        assert!(e.contains("ip_forward") && e.contains("br_netfilter") && e.contains("cgroups"));
        assert!(
            !e.contains("rshared"),
            "a recommendation does not refuse: {e}"
        );
        enforce(&Fake(h), Enforcement::Warn).unwrap();
    }

    #[test]
    fn bridge_sysctl_off_and_v1_controller_disabled() {
        let mut h = good();
        h.insert(BRIDGE_NF_CALL_IPTABLES, "0\n");
        h.remove(CGROUP2_CONTROLLERS);
        h.insert(PROC_CGROUPS, "#subsys_name hierarchy num_cgroups enabled\ncpuset 3 1 1\ncpu 1 1 1\ncpuacct 2 1 1\nmemory 0 1 0\npids 8 1 1\n");
        let f = run(&Fake(h));
        assert_eq!(f.len(), 2, "{f:?}");
        assert_eq!(f[0].check, "net.bridge.bridge-nf-call-iptables");
        assert!(f[1].message.contains("memory") && !f[1].message.contains("cpu,"));
    }

    #[test]
    fn shared_root_is_read_from_the_optional_fields() {
        assert!(root_is_shared(SHARED_ROOT));
        assert!(!root_is_shared(PRIVATE_ROOT));
        // `shared:` on another mount point does not count.
        assert!(!root_is_shared(
            "22 1 253:0 / / rw - ext4 /dev/vda rw\n30 22 0:5 / /dev rw shared:2 - devtmpfs udev rw\n"
        ));
    }
}
