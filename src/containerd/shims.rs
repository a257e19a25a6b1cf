//! Finding and killing the shims (and their containers) a containerd left
//! running: containerd starts each shim in its own session, so neither the
//! supervisor's process group nor `PR_SET_PDEATHSIG` reaches them.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

/// Bound on waiting for swept shims and containers to disappear.
pub const SWEEP_WAIT: Duration = Duration::from_secs(5);

/// One process as `/proc` shows it.
#[derive(Debug, Clone)]
struct ProcEntry {
    pid: i32,
    ppid: i32,
    argv: Vec<String>,
}

fn read_procs() -> Vec<ProcEntry> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces and parens.
        let Some(after) = stat.rsplit_once(')').map(|(_, a)| a) else {
            continue;
        };
        let mut fields = after.split_whitespace();
        let state = fields.next().unwrap_or("");
        if state == "Z" || state == "X" {
            continue;
        }
        let ppid = fields.next().and_then(|f| f.parse().ok()).unwrap_or(0);
        let argv = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| {
                b.split(|c| *c == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect()
            })
            .unwrap_or_default();
        out.push(ProcEntry { pid, ppid, argv });
    }
    out
}

/// True when `argv` is a containerd shim started for the containerd at `socket`.
fn is_shim_of(argv: &[String], socket: &str) -> bool {
    let is_shim = argv
        .first()
        .and_then(|a| Path::new(a).file_name())
        .map(|n| n.to_string_lossy().starts_with("containerd-shim"))
        .unwrap_or(false);
    is_shim
        && argv
            .windows(2)
            .any(|w| (w[0] == "-address" || w[0] == "--address") && w[1] == socket)
}

/// Pids of running shims that belong to the containerd listening on `socket`.
pub fn shims_of(socket: &Path) -> Vec<i32> {
    let socket = socket.display().to_string();
    read_procs()
        .into_iter()
        .filter(|p| is_shim_of(&p.argv, &socket))
        .map(|p| p.pid)
        .collect()
}

/// SIGKILLs every shim of the containerd at `socket` together with all its
/// descendants (the containers), then waits up to [`SWEEP_WAIT`] for them to
/// go. Returns the shim pids that were found.
pub async fn kill_shims(socket: &Path) -> Vec<i32> {
    let procs = read_procs();
    let socket_s = socket.display().to_string();
    let shims: Vec<i32> = procs
        .iter()
        .filter(|p| is_shim_of(&p.argv, &socket_s))
        .map(|p| p.pid)
        .collect();
    if shims.is_empty() {
        return shims;
    }
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for p in &procs {
        children.entry(p.ppid).or_default().push(p.pid);
    }
    let mut victims = BTreeSet::new();
    let mut stack = shims.clone();
    while let Some(pid) = stack.pop() {
        if victims.insert(pid) {
            if let Some(kids) = children.get(&pid) {
                stack.extend(kids);
            }
        }
    }
    // Containers first (killing a pid namespace's init kills the namespace),
    // then the shims.
    for pid in victims.iter().filter(|p| !shims.contains(p)) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    for pid in &shims {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let end = tokio::time::Instant::now() + SWEEP_WAIT;
    while tokio::time::Instant::now() < end {
        let alive: Vec<i32> = read_procs()
            .iter()
            .map(|p| p.pid)
            .filter(|p| victims.contains(p))
            .collect();
        if alive.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shims
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shim_match_needs_our_socket() {
        let argv = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let ours = argv(&[
            "/usr/bin/containerd-shim-runc-v2",
            "-namespace",
            "k8s.io",
            "-id",
            "abc",
            "-address",
            "/r/containerd/containerd.sock",
        ]);
        assert!(is_shim_of(&ours, "/r/containerd/containerd.sock"));
        assert!(!is_shim_of(&ours, "/run/containerd/containerd.sock"));
        let not_shim = argv(&["/bin/sh", "-address", "/r/containerd/containerd.sock"]);
        assert!(!is_shim_of(&not_shim, "/r/containerd/containerd.sock"));
    }
}
