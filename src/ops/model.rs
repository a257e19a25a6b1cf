//! What `mkectl status` shows: the JSON the status socket serves, and its
//! human rendering. Field names are camelCase like the config.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::components::{ComponentStatus, Peers};

/// A node's status as served on `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    /// `controller` (workers will report `worker`).
    pub role: String,
    pub version: String,
    pub node_name: String,
    pub node_address: String,
    /// mkectl's own pid.
    pub pid: u32,
    pub uptime_seconds: u64,
    /// Every component is running and ready.
    pub ready: bool,
    /// One line per thing that is not ready.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ready: Vec<String>,
    pub components: Vec<ComponentStatus>,
    /// Konnectivity peers of this node (agents connected to its server);
    /// `null` when no konnectivity component runs here.
    pub konnectivity: Option<Peers>,
    /// Cluster view from etcd; `null` when this node runs no etcd.
    pub etcd: Option<EtcdStatus>,
    pub certificates: CertSummary,
    /// The node-local apiserver balancer's backends with their health;
    /// absent where none runs (controllers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_load_balancer: Option<Vec<crate::apilb::BackendStatus>>,
}

/// etcd membership as the local member sees it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EtcdStatus {
    pub members: Vec<EtcdMember>,
    /// Name of the leader (its id in hex when it has no name yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// Version of the local member.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub db_size_bytes: Option<i64>,
    /// Why the rest is missing (etcd unreachable).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EtcdMember {
    /// Member id, hex.
    pub id: String,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub learner: bool,
    pub leader: bool,
}

/// The certificate that expires first.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertSummary {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub soonest: Option<CertExpiry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertExpiry {
    pub name: String,
    /// RFC 3339.
    pub not_after: String,
    /// Negative once expired.
    pub seconds_left: i64,
}

/// `1d2h`, `3h4m`, `5m6s`, `7s`: two units at most, for tables.
pub fn short_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d{h}h")
    } else if h > 0 {
        format!("{h}h{m}m")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

fn last_exit_text(c: &ComponentStatus) -> String {
    match &c.last_exit {
        None => "-".into(),
        Some(x) => match (&x.code, &x.signal) {
            (Some(code), _) => format!("code {code}"),
            (None, Some(sig)) => sig.clone(),
            (None, None) => "unknown".into(),
        },
    }
}

/// The human rendering of `mkectl status`.
pub fn render_text(s: &NodeStatus) -> String {
    let mut out = String::new();
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    let _ = writeln!(out, "Role:      {}", s.role);
    let _ = writeln!(out, "Version:   {}", s.version);
    let _ = writeln!(out, "Node:      {} ({})", s.node_name, s.node_address);
    let _ = writeln!(
        out,
        "Process:   pid {}, up {}",
        s.pid,
        short_duration(s.uptime_seconds)
    );
    let _ = writeln!(out, "Ready:     {}", yes_no(s.ready));
    for reason in &s.not_ready {
        let _ = writeln!(out, "  - {reason}");
    }
    let _ = writeln!(out);
    let width = s
        .components
        .iter()
        .map(|c| c.name.len())
        .max()
        .unwrap_or(9)
        .max(9);
    let _ = writeln!(
        out,
        "{:<width$}  {:<10}  {:<5}  {:>7}  {:>8}  {:<10}  UPTIME",
        "COMPONENT", "STATE", "READY", "PID", "RESTARTS", "LAST EXIT"
    );
    for c in &s.components {
        let _ = writeln!(
            out,
            "{:<width$}  {:<10}  {:<5}  {:>7}  {:>8}  {:<10}  {}",
            c.name,
            c.state,
            yes_no(c.ready),
            c.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            c.restarts,
            last_exit_text(c),
            c.uptime_seconds
                .map(short_duration)
                .unwrap_or_else(|| "-".into()),
        );
    }
    let _ = writeln!(out);
    match &s.konnectivity {
        None => {
            let _ = writeln!(out, "Konnectivity: not running on this node");
        }
        Some(p) => {
            let _ = writeln!(
                out,
                "Konnectivity: {} {} connected{}{}",
                p.connected.len(),
                p.kind,
                if p.connected.is_empty() { "" } else { ": " },
                p.connected.join(", ")
            );
        }
    }
    if let Some(backends) = &s.api_load_balancer {
        let up = backends.iter().filter(|b| b.healthy).count();
        let _ = writeln!(
            out,
            "API balancer: {} apiserver(s), {up} up",
            backends.len()
        );
        for b in backends {
            let _ = writeln!(
                out,
                "  {:<24} {:<7} {} open, {} total{}",
                b.addr,
                format!("{:?}", b.health).to_lowercase(),
                b.active_connections,
                b.total_connections,
                b.last_check_error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            );
        }
    }
    match &s.etcd {
        None => {
            let _ = writeln!(out, "etcd:         not running on this node");
        }
        Some(e) if e.error.is_some() => {
            let _ = writeln!(
                out,
                "etcd:         unavailable: {}",
                e.error.as_deref().unwrap_or_default()
            );
        }
        Some(e) => {
            let _ = writeln!(
                out,
                "etcd:         {} member(s), leader {}{}",
                e.members.len(),
                e.leader.as_deref().unwrap_or("none"),
                e.version
                    .as_deref()
                    .map(|v| format!(", version {v}"))
                    .unwrap_or_default()
            );
            for m in &e.members {
                let _ = writeln!(
                    out,
                    "  {:<16} {:<16} {}{}{}",
                    m.name,
                    m.id,
                    m.peer_urls.join(","),
                    if m.leader { "  (leader)" } else { "" },
                    if m.learner { "  (learner)" } else { "" }
                );
            }
        }
    }
    match (&s.certificates.soonest, &s.certificates.error) {
        (Some(c), _) => {
            let left = if c.seconds_left < 0 {
                "EXPIRED".to_string()
            } else {
                format!("in {}", short_duration(c.seconds_left as u64))
            };
            let _ = writeln!(
                out,
                "Certificates: soonest expiry {} {left} ({})",
                c.name, c.not_after
            );
        }
        (None, Some(e)) => {
            let _ = writeln!(out, "Certificates: cannot read: {e}");
        }
        (None, None) => {
            let _ = writeln!(out, "Certificates: none");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::components::manager::LastExit;

    fn sample() -> NodeStatus {
        NodeStatus {
            role: "controller".into(),
            version: "0.1.0".into(),
            node_name: "n1".into(),
            node_address: "127.0.0.1".into(),
            pid: 42,
            uptime_seconds: 3725,
            ready: false,
            not_ready: vec!["etcd: not ready: probe timed out".into()],
            components: vec![ComponentStatus {
                name: "etcd".into(),
                state: "running".into(),
                ready: false,
                message: Some("probe timed out".into()),
                supervised: true,
                pid: Some(1234),
                restarts: 2,
                last_exit: Some(LastExit {
                    code: None,
                    signal: Some("SIGKILL".into()),
                    signal_number: Some(9),
                }),
                uptime_seconds: Some(61),
                peers: None,
            }],
            konnectivity: Some(Peers {
                kind: "agents".into(),
                connected: vec![],
            }),
            etcd: Some(EtcdStatus {
                members: vec![EtcdMember {
                    id: "8e9e05c52164694d".into(),
                    name: "n1".into(),
                    peer_urls: vec!["https://127.0.0.1:2380".into()],
                    client_urls: vec![],
                    learner: false,
                    leader: true,
                }],
                leader: Some("n1".into()),
                version: Some("3.4.23".into()),
                db_size_bytes: Some(20480),
                error: None,
            }),
            api_load_balancer: None,
            certificates: CertSummary {
                soonest: Some(CertExpiry {
                    name: "etcd-server".into(),
                    not_after: "2027-01-01T00:00:00Z".into(),
                    seconds_left: 90_000,
                }),
                error: None,
            },
        }
    }

    #[test]
    fn text_shows_every_field_an_operator_needs() {
        let t = render_text(&sample());
        for want in [
            "Role:      controller",
            "Ready:     no",
            "etcd: not ready: probe timed out",
            "SIGKILL",
            "1234",
            "0 agents connected",
            "1 member(s), leader n1",
            "etcd-server in 1d1h",
            "up 1h2m",
        ] {
            assert!(t.contains(want), "missing {want:?} in\n{t}");
        }
    }

    #[test]
    fn json_round_trips_with_camel_case_names() {
        let s = sample();
        let j = serde_json::to_value(&s).unwrap();
        assert_eq!(j["components"][0]["lastExit"]["signal"], "SIGKILL");
        assert_eq!(
            j["etcd"]["members"][0]["peerUrls"][0],
            "https://127.0.0.1:2380"
        );
        assert_eq!(j["certificates"]["soonest"]["secondsLeft"], 90_000);
        let back: NodeStatus = serde_json::from_value(j).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn short_durations() {
        assert_eq!(short_duration(0), "0s");
        assert_eq!(short_duration(59), "59s");
        assert_eq!(short_duration(61), "1m1s");
        assert_eq!(short_duration(3600 * 5 + 60), "5h1m");
        assert_eq!(short_duration(86_400 * 364 + 3600), "364d1h");
    }
}
