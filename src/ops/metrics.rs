//! mkectl's Prometheus page (`/metrics`, text format 0.0.4).
//!
//! Written by hand rather than with `prometheus-client`: that crate emits
//! OpenMetrics, whose counters are declared as `x` and sampled as `x_total`,
//! which the 0.0.4 text parser (`promtool check metrics`, older scrapers)
//! reports as a family without help. Every figure here is read from the live
//! status at scrape time, except the counters other parts of mkectl feed
//! (join requests), which live in [`Metrics`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::SystemTime;

use super::model::NodeStatus;
use crate::konnectivity::metrics::{escape, header};
use crate::pki::CertInfo;

/// Content type of the page.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Counters fed by other parts of the node. Shared as `Arc<Metrics>`
/// (see `ControllerContext::metrics`).
#[derive(Debug, Default)]
pub struct Metrics {
    join_requests: Mutex<BTreeMap<String, u64>>,
    join_connections_refused: Mutex<BTreeMap<String, u64>>,
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one join API request by its outcome (`ok`, `denied`,
    /// `invalid`, `error`, ...): one call per request from the join API.
    pub fn record_join_request(&self, result: &str) {
        let mut map = self.join_requests.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry(result.to_string()).or_insert(0) += 1;
    }

    /// Counts one join API connection closed by its connection limits
    /// before a request was served (`source_limit`, `full`, `evicted`,
    /// `handshake_timeout`).
    pub fn record_join_connection_refused(&self, reason: &str) {
        let mut map = self
            .join_connections_refused
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *map.entry(reason.to_string()).or_insert(0) += 1;
    }

    /// The page for `status` and the certificates found on disk.
    pub fn render(&self, status: &NodeStatus, certs: &[CertInfo], now: SystemTime) -> String {
        let mut p = Page::default();
        p.family("mkectl_build_info", "mkectl version.", "gauge");
        p.sample("mkectl_build_info", &[("version", &status.version)], 1);
        p.family(
            "mkectl_node_ready",
            "1 when every component of this node is ready.",
            "gauge",
        );
        p.sample("mkectl_node_ready", &[], i64::from(status.ready));

        let per_component: [(&str, &str, &str); 3] = [
            (
                "mkectl_component_up",
                "1 when the component runs (its process is alive).",
                "gauge",
            ),
            (
                "mkectl_component_ready",
                "1 when the component's readiness probe passes.",
                "gauge",
            ),
            (
                "mkectl_component_restarts_total",
                "Restarts of the component's process (crashes and certificate rotations).",
                "counter",
            ),
        ];
        for (name, help, kind) in per_component {
            p.family(name, help, kind);
            for c in &status.components {
                let v = match name {
                    "mkectl_component_up" => i64::from(c.state == "running"),
                    "mkectl_component_ready" => i64::from(c.ready),
                    _ => i64::try_from(c.restarts).unwrap_or(i64::MAX),
                };
                p.sample(name, &[("component", &c.name)], v);
            }
        }
        p.family(
            "mkectl_component_last_exit_code",
            "Exit code of the component's last process exit (128 + signal number when killed); absent before the first exit.",
            "gauge",
        );
        for c in &status.components {
            if let Some(code) = c.last_exit.as_ref().and_then(|x| x.as_code()) {
                p.sample(
                    "mkectl_component_last_exit_code",
                    &[("component", &c.name)],
                    code,
                );
            }
        }

        p.family(
            "mkectl_join_requests_total",
            "Join API requests by result.",
            "counter",
        );
        let joins = self
            .join_requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for (result, n) in &joins {
            p.sample(
                "mkectl_join_requests_total",
                &[("result", result)],
                i64::try_from(*n).unwrap_or(i64::MAX),
            );
        }

        p.family(
            "mkectl_join_connections_refused_total",
            "Join API connections closed by the connection limits before a request was served, by reason.",
            "counter",
        );
        let refused = self
            .join_connections_refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for (reason, n) in &refused {
            p.sample(
                "mkectl_join_connections_refused_total",
                &[("reason", reason)],
                i64::try_from(*n).unwrap_or(i64::MAX),
            );
        }

        p.family(
            "mkectl_certificate_expiry_seconds",
            "Seconds until the certificate expires (negative once expired).",
            "gauge",
        );
        for c in certs {
            let left = match c.not_after.duration_since(now) {
                Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
            };
            p.sample(
                "mkectl_certificate_expiry_seconds",
                &[("certificate", &c.name)],
                left,
            );
        }
        p.0
    }
}

/// Text format 0.0.4 writer.
#[derive(Default)]
struct Page(String);

impl Page {
    fn family(&mut self, name: &str, help: &str, kind: &str) {
        header(&mut self.0, name, kind, help);
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: i64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::components::{ComponentStatus, LastExit};
    use crate::ops::model::CertSummary;
    use std::time::Duration;

    fn status(restarts: u64, ready: bool) -> NodeStatus {
        NodeStatus {
            role: "controller".into(),
            version: "0.1.0".into(),
            node_name: "n".into(),
            node_address: "127.0.0.1".into(),
            pid: 1,
            uptime_seconds: 1,
            ready,
            not_ready: vec![],
            components: vec![ComponentStatus {
                name: "etcd".into(),
                state: "running".into(),
                ready,
                message: None,
                supervised: true,
                pid: Some(7),
                restarts,
                last_exit: (restarts > 0).then(|| LastExit {
                    code: None,
                    signal: Some("SIGKILL".into()),
                    signal_number: Some(9),
                }),
                uptime_seconds: Some(3),
                peers: None,
            }],
            konnectivity: None,
            etcd: None,
            api_load_balancer: None,
            certificates: CertSummary::default(),
        }
    }

    #[test]
    fn figures_follow_the_status() {
        let m = Metrics::new();
        m.record_join_request("ok");
        m.record_join_request("ok");
        m.record_join_request("denied \"x\"");
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let cert = CertInfo {
            name: "etcd-server".into(),
            path: "/p".into(),
            subject: String::new(),
            issuer: String::new(),
            not_before: SystemTime::UNIX_EPOCH,
            not_after: now + Duration::from_secs(120),
            is_ca: false,
            authority: None,
        };
        let page = m.render(&status(0, true), std::slice::from_ref(&cert), now);
        assert!(page.contains("mkectl_component_up{component=\"etcd\"} 1\n"));
        assert!(page.contains("mkectl_component_restarts_total{component=\"etcd\"} 0\n"));
        assert!(!page.contains("mkectl_component_last_exit_code{"));
        assert!(page.contains("mkectl_join_requests_total{result=\"ok\"} 2\n"));
        assert!(page.contains("mkectl_join_requests_total{result=\"denied \\\"x\\\"\"} 1\n"));
        assert!(
            page.contains("mkectl_certificate_expiry_seconds{certificate=\"etcd-server\"} 120\n")
        );

        let page = m.render(&status(3, false), &[cert], now + Duration::from_secs(200));
        assert!(page.contains("mkectl_component_restarts_total{component=\"etcd\"} 3\n"));
        assert!(page.contains("mkectl_component_ready{component=\"etcd\"} 0\n"));
        assert!(page.contains("mkectl_component_last_exit_code{component=\"etcd\"} 137\n"));
        assert!(page.contains("mkectl_node_ready 0\n"));
        assert!(page.contains("{certificate=\"etcd-server\"} -80\n"));
    }
}
