//! CPU time and resident memory of process trees, read from /proc: a path's
//! cost is that of every process it runs (server + agent, or ssh + sshd with
//! its privilege-separated children).

use std::collections::HashMap;
use std::time::Duration;

/// `(pid, ppid)` of every process now.
fn parents() -> HashMap<u32, u32> {
    let mut m = HashMap::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return m;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok());
        if let Some(ppid) = ppid {
            m.insert(pid, ppid);
        }
    }
    m
}

/// `roots` and all their descendants that are alive now.
pub fn tree(roots: &[u32]) -> Vec<u32> {
    if roots.is_empty() {
        return Vec::new();
    }
    let parents = parents();
    let mut out: Vec<u32> = roots
        .iter()
        .copied()
        .filter(|p| parents.contains_key(p))
        .collect();
    let mut i = 0;
    // Bounded: each pid is added once and there are finitely many.
    while i < out.len() {
        let p = out[i];
        for (&c, &pp) in &parents {
            if pp == p && !out.contains(&c) {
                out.push(c);
            }
        }
        i += 1;
    }
    out
}

/// CPU time (user + system) used so far by `pid` ("self" for this process);
/// zero once it is gone.
fn cpu_of(pid: &str) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    // utime and stime are the 14th and 15th fields of the whole line.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let ticks: u64 = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|v| v.parse::<u64>().unwrap_or(0))
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

/// CPU time of this process (client, target and any in-process relays).
pub fn cpu_self() -> Duration {
    cpu_of("self")
}

/// CPU time of the trees under `roots`.
pub fn cpu_tree(roots: &[u32]) -> Duration {
    tree(roots).iter().map(|p| cpu_of(&p.to_string())).sum()
}

/// VmRSS of `pid` in KiB (0 once it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// VmRSS of the trees under `roots` in KiB.
pub fn rss_tree_kib(roots: &[u32]) -> u64 {
    tree(roots).into_iter().map(rss_kib).sum()
}
