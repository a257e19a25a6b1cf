//! Prometheus metrics for the server and the agent.
//!
//! A small hand-rolled registry instead of `prometheus-client`: upstream's
//! names must be mirrored exactly (for example the counter
//! `..._server_dial_failure_count` has no `_total` suffix, which
//! prometheus-client would force) and the page must be plain Prometheus text
//! format 0.0.4, which `promtool check metrics` accepts.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Content type of the `/metrics` page.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Metric name prefix shared with upstream.
pub const NAMESPACE: &str = "konnectivity_network_proxy";

/// Upstream's dial latency buckets (seconds).
const DIAL_BUCKETS: &[f64] = &[
    0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Labelled counters or gauges: label values (in `labels` order) → value.
/// Label sets are small and fixed (packet types, reasons), so a map under a
/// mutex is plenty.
#[derive(Debug)]
pub struct Family {
    labels: &'static [&'static str],
    values: Mutex<BTreeMap<Vec<String>, i64>>,
}

impl Family {
    const fn new(labels: &'static [&'static str]) -> Self {
        Family {
            labels,
            values: Mutex::new(BTreeMap::new()),
        }
    }

    /// Adds `delta` to the series with these label values.
    pub fn add(&self, values: &[&str], delta: i64) {
        let key: Vec<String> = values.iter().map(|s| s.to_string()).collect();
        let mut map = self.values.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry(key).or_insert(0) += delta;
    }

    pub fn inc(&self, values: &[&str]) {
        self.add(values, 1);
    }

    /// Sets the series to `v` (gauges).
    pub fn set(&self, values: &[&str], v: i64) {
        let key: Vec<String> = values.iter().map(|s| s.to_string()).collect();
        let mut map = self.values.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(key, v);
    }

    pub fn get(&self, values: &[&str]) -> i64 {
        let key: Vec<String> = values.iter().map(|s| s.to_string()).collect();
        let map = self.values.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&key).copied().unwrap_or(0)
    }

    fn encode(&self, out: &mut String, name: &str) {
        let map = self.values.lock().unwrap_or_else(|p| p.into_inner());
        for (vals, v) in map.iter() {
            out.push_str(name);
            out.push('{');
            for (i, (l, val)) in self.labels.iter().zip(vals).enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{l}=\"{}\"", escape(val));
            }
            let _ = writeln!(out, "}} {v}");
        }
    }
}

/// Escapes a label value for the Prometheus text format.
pub(crate) fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A histogram with fixed buckets.
#[derive(Debug)]
pub struct Histogram {
    buckets: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(buckets: &'static [f64]) -> Self {
        Histogram {
            buckets,
            counts: buckets.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (i, b) in self.buckets.iter().enumerate() {
            if secs <= *b {
                self.counts[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn encode(&self, out: &mut String, name: &str) {
        for (i, b) in self.buckets.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{b}\"}} {}",
                self.counts[i].load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// Packet counts by segment and packet type without locking or allocating
/// on the data path.
#[derive(Debug)]
pub struct PacketCounter {
    segments: &'static [&'static str],
    counts: Vec<[AtomicU64; 7]>,
}

/// Server segments (upstream label values).
pub const SERVER_SEGMENTS: &[&str] = &["from_client", "to_client", "from_agent", "to_agent"];
pub const FROM_CLIENT: usize = 0;
pub const TO_CLIENT: usize = 1;
pub const FROM_AGENT: usize = 2;
pub const TO_AGENT: usize = 3;
/// Agent segments.
pub const AGENT_SEGMENTS: &[&str] = &["from_server", "to_server"];
pub const FROM_SERVER: usize = 0;
pub const TO_SERVER: usize = 1;

impl PacketCounter {
    fn new(segments: &'static [&'static str]) -> Self {
        PacketCounter {
            segments,
            counts: segments.iter().map(|_| Default::default()).collect(),
        }
    }

    /// Counts one packet of wire type `kind` on `segment` (an index into the
    /// segment list); unknown types are not counted.
    pub fn inc(&self, segment: usize, kind: i32) {
        if let (Some(row), Ok(k)) = (self.counts.get(segment), usize::try_from(kind)) {
            if let Some(c) = row.get(k) {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn get(&self, segment: usize, kind: i32) -> u64 {
        self.counts
            .get(segment)
            .and_then(|row| row.get(kind as usize))
            .map(|c| c.load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    fn encode(&self, out: &mut String, name: &str) {
        for (seg, row) in self.segments.iter().zip(&self.counts) {
            for (k, c) in row.iter().enumerate() {
                let v = c.load(Ordering::Relaxed);
                if v == 0 {
                    continue;
                }
                let kind = super::proto::PacketType::try_from(k as i32)
                    .map(|t| t.label())
                    .unwrap_or("UNKNOWN");
                let _ = writeln!(
                    out,
                    "{name}{{segment=\"{seg}\",packet_type=\"{kind}\"}} {v}"
                );
            }
        }
    }
}

/// Writes the `# HELP` and `# TYPE` lines of a metric family (text format
/// 0.0.4; also used by the node's own metrics page).
pub(crate) fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let help = help.replace('\\', "\\\\").replace('\n', "\\n");
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn scalar(out: &mut String, name: &str, kind: &str, help: &str, v: i64) {
    header(out, name, kind, help);
    let _ = writeln!(out, "{name} {v}");
}

/// Server metrics (`konnectivity_network_proxy_server_*`).
#[derive(Debug)]
pub struct ServerMetrics {
    pub dial_duration: Histogram,
    /// `service_method` = Proxy | Connect.
    pub grpc_connections: Family,
    pub http_connections: AtomicI64,
    /// `proxy_strategy`.
    pub ready_backends: Family,
    pub pending_dials: AtomicI64,
    pub established: AtomicI64,
    /// `service_method`: tunnels whose receive queue was full when a packet
    /// arrived.
    pub full_receive_channels: Family,
    /// `reason`.
    pub dial_failures: Family,
    /// `segment`, `packet_type`.
    pub stream_packets: PacketCounter,
    /// `segment`, `code`, `packet_type`.
    pub stream_errors: Family,
    /// Tunnels closed because their reader stalled past the budget.
    pub stalled_tunnels: AtomicU64,
    /// `reason`: agents refused because their headers claim an identity
    /// their certificate does not give them (see `server::identity`).
    pub agent_identity_refused: Family,
    /// Agents whose `agentid` header named someone other than their
    /// certificate (connected under the certificate's id).
    pub agent_id_header_ignored: AtomicU64,
}

impl Default for ServerMetrics {
    fn default() -> Self {
        let m = ServerMetrics {
            dial_duration: Histogram::new(DIAL_BUCKETS),
            grpc_connections: Family::new(&["service_method"]),
            http_connections: AtomicI64::new(0),
            ready_backends: Family::new(&["proxy_strategy"]),
            pending_dials: AtomicI64::new(0),
            established: AtomicI64::new(0),
            full_receive_channels: Family::new(&["service_method"]),
            dial_failures: Family::new(&["reason"]),
            stream_packets: PacketCounter::new(SERVER_SEGMENTS),
            stream_errors: Family::new(&["segment", "code", "packet_type"]),
            stalled_tunnels: AtomicU64::new(0),
            agent_identity_refused: Family::new(&["reason"]),
            agent_id_header_ignored: AtomicU64::new(0),
        };
        // Present from the start, so an alert on any increase works.
        for reason in ["identifiers", "certificate"] {
            m.agent_identity_refused.set(&[reason], 0);
        }
        m
    }
}

impl ServerMetrics {
    /// Renders the page.
    pub fn encode(&self) -> String {
        let p = format!("{NAMESPACE}_server");
        let mut out = String::new();
        let n = format!("{p}_dial_duration_seconds");
        header(
            &mut out,
            &n,
            "histogram",
            "Latency of dial requests, from DIAL_REQ to DIAL_RSP.",
        );
        self.dial_duration.encode(&mut out, &n);
        let n = format!("{p}_grpc_connections");
        header(
            &mut out,
            &n,
            "gauge",
            "Open gRPC streams by service method.",
        );
        self.grpc_connections.encode(&mut out, &n);
        scalar(
            &mut out,
            &format!("{p}_http_connections"),
            "gauge",
            "Open HTTP-CONNECT connections.",
            self.http_connections.load(Ordering::Relaxed),
        );
        let n = format!("{p}_ready_backends");
        header(
            &mut out,
            &n,
            "gauge",
            "Connected agent streams by proxy strategy.",
        );
        self.ready_backends.encode(&mut out, &n);
        scalar(
            &mut out,
            &format!("{p}_pending_backend_dials"),
            "gauge",
            "Dials sent to an agent and not answered yet.",
            self.pending_dials.load(Ordering::Relaxed),
        );
        scalar(
            &mut out,
            &format!("{p}_established_connections"),
            "gauge",
            "Established tunnels.",
            self.established.load(Ordering::Relaxed),
        );
        let n = format!("{p}_full_receive_channels");
        header(
            &mut out,
            &n,
            "gauge",
            "Packets that found their tunnel's receive queue full.",
        );
        self.full_receive_channels.encode(&mut out, &n);
        let n = format!("{p}_dial_failure_count");
        header(&mut out, &n, "counter", "Failed dials by reason.");
        self.dial_failures.encode(&mut out, &n);
        let n = format!("{p}_stream_packets_total");
        header(
            &mut out,
            &n,
            "counter",
            "Packets by stream segment and type.",
        );
        self.stream_packets.encode(&mut out, &n);
        let n = format!("{p}_stream_errors_total");
        header(
            &mut out,
            &n,
            "counter",
            "Stream errors by segment, code and packet type.",
        );
        self.stream_errors.encode(&mut out, &n);
        let n = format!("{p}_stalled_tunnels_total");
        header(
            &mut out,
            &n,
            "counter",
            "Tunnels closed because their reader stalled longer than the stall budget.",
        );
        let _ = writeln!(out, "{n} {}", self.stalled_tunnels.load(Ordering::Relaxed));
        let n = format!("{p}_agent_identity_refused_total");
        header(
            &mut out,
            &n,
            "counter",
            "Agents refused because their identifiers do not belong to their certificate (reason identifiers) or their certificate names nobody (reason certificate).",
        );
        self.agent_identity_refused.encode(&mut out, &n);
        scalar(
            &mut out,
            &format!("{p}_agent_id_header_ignored_total"),
            "counter",
            "Agents whose agentid header differed from their certificate; they were registered under the certificate's id.",
            self.agent_id_header_ignored.load(Ordering::Relaxed) as i64,
        );
        out
    }
}

/// Agent metrics (`konnectivity_network_proxy_agent_*`).
#[derive(Debug)]
pub struct AgentMetrics {
    pub dial_duration: Histogram,
    /// `reason` = timeout | unknown.
    pub endpoint_dial_failures: Family,
    pub open_server_connections: AtomicI64,
    pub known_server_count: AtomicI64,
    pub open_endpoint_connections: AtomicI64,
    /// `direction`.
    pub server_connection_failures: Family,
    /// `segment`, `packet_type`.
    pub stream_packets: PacketCounter,
    /// `segment`, `code`, `packet_type`.
    pub stream_errors: Family,
    pub stalled_connections: AtomicU64,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        AgentMetrics {
            dial_duration: Histogram::new(DIAL_BUCKETS),
            endpoint_dial_failures: Family::new(&["reason"]),
            open_server_connections: AtomicI64::new(0),
            known_server_count: AtomicI64::new(0),
            open_endpoint_connections: AtomicI64::new(0),
            server_connection_failures: Family::new(&["direction"]),
            stream_packets: PacketCounter::new(AGENT_SEGMENTS),
            stream_errors: Family::new(&["segment", "code", "packet_type"]),
            stalled_connections: AtomicU64::new(0),
        }
    }
}

impl AgentMetrics {
    pub fn encode(&self) -> String {
        let p = format!("{NAMESPACE}_agent");
        let mut out = String::new();
        let n = format!("{p}_dial_duration_seconds");
        header(&mut out, &n, "histogram", "Latency of endpoint dials.");
        self.dial_duration.encode(&mut out, &n);
        let n = format!("{p}_endpoint_dial_failure_total");
        header(&mut out, &n, "counter", "Failed endpoint dials by reason.");
        self.endpoint_dial_failures.encode(&mut out, &n);
        scalar(
            &mut out,
            &format!("{p}_open_server_connections"),
            "gauge",
            "Connected proxy servers.",
            self.open_server_connections.load(Ordering::Relaxed),
        );
        scalar(
            &mut out,
            &format!("{p}_known_server_count"),
            "gauge",
            "Server count learnt from the servers.",
            self.known_server_count.load(Ordering::Relaxed),
        );
        scalar(
            &mut out,
            &format!("{p}_open_endpoint_connections"),
            "gauge",
            "Open connections to endpoints.",
            self.open_endpoint_connections.load(Ordering::Relaxed),
        );
        let n = format!("{p}_server_connection_failure_count");
        header(
            &mut out,
            &n,
            "counter",
            "Failures on server connections by direction.",
        );
        self.server_connection_failures.encode(&mut out, &n);
        let n = format!("{p}_stream_packets_total");
        header(
            &mut out,
            &n,
            "counter",
            "Packets by stream segment and type.",
        );
        self.stream_packets.encode(&mut out, &n);
        let n = format!("{p}_stream_errors_total");
        header(
            &mut out,
            &n,
            "counter",
            "Stream errors by segment, code and packet type.",
        );
        self.stream_errors.encode(&mut out, &n);
        let n = format!("{p}_stalled_connections_total");
        header(
            &mut out,
            &n,
            "counter",
            "Endpoint connections closed because the endpoint stopped reading.",
        );
        let _ = writeln!(
            out,
            "{n} {}",
            self.stalled_connections.load(Ordering::Relaxed)
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_has_upstream_names_and_valid_lines() {
        let m = ServerMetrics::default();
        m.dial_failures.inc(&["no_agent"]);
        m.stream_packets.inc(FROM_CLIENT, 0);
        m.dial_duration.observe(Duration::from_millis(3));
        let page = m.encode();
        assert!(page.contains(
            "konnectivity_network_proxy_server_dial_failure_count{reason=\"no_agent\"} 1"
        ));
        assert!(page.contains(
            "konnectivity_network_proxy_server_stream_packets_total{segment=\"from_client\",packet_type=\"DIAL_REQ\"} 1"
        ));
        assert!(page.contains(
            "konnectivity_network_proxy_server_dial_duration_seconds_bucket{le=\"0.005\"} 1"
        ));
        assert!(page.contains("konnectivity_network_proxy_server_dial_duration_seconds_count 1"));
        for line in page.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
            assert!(
                name.starts_with("konnectivity_network_proxy_server_"),
                "{line}"
            );
        }
    }

    #[test]
    fn label_values_are_escaped() {
        let f = Family::new(&["reason"]);
        f.inc(&["a\"b\\c\nd"]);
        let mut out = String::new();
        f.encode(&mut out, "m");
        assert_eq!(out, "m{reason=\"a\\\"b\\\\c\\nd\"} 1\n");
    }
}
