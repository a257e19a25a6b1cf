//! The balancer's Prometheus families (text format 0.0.4, written by hand as
//! `ops::metrics` does), read from the live state at scrape time.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use super::balancer::{BackendStatus, Shared};
use crate::konnectivity::metrics::{escape, header};

/// A per-backend family: name, help, type and how its value is read.
type BackendFamily = (
    &'static str,
    &'static str,
    &'static str,
    fn(&BackendStatus) -> u64,
);

fn sample(out: &mut String, name: &str, backend: Option<&str>, value: u64) {
    out.push_str(name);
    if let Some(b) = backend {
        let _ = write!(out, "{{backend=\"{}\"}}", escape(b));
    }
    let _ = writeln!(out, " {value}");
}

/// Renders every family for `backends` (a snapshot) and the shared counters.
pub(crate) fn render(shared: &Shared, backends: &[BackendStatus]) -> String {
    let mut out = String::new();
    let per_backend: [BackendFamily; 4] = [
        (
            "mkectl_apilb_backend_healthy",
            "1 when the apiserver backend passes its /readyz check and is in rotation.",
            "gauge",
            |b| u64::from(b.healthy),
        ),
        (
            "mkectl_apilb_backend_active_connections",
            "Client connections open through the node-local apiserver balancer to the backend.",
            "gauge",
            |b| b.active_connections,
        ),
        (
            "mkectl_apilb_backend_connections_total",
            "Client connections forwarded to the backend.",
            "counter",
            |b| b.total_connections,
        ),
        (
            "mkectl_apilb_backend_connect_failures_total",
            "Connection attempts to the backend that failed (each takes it out of rotation).",
            "counter",
            |b| b.connect_failures,
        ),
    ];
    for (name, help, kind, value) in per_backend {
        header(&mut out, name, kind, help);
        for b in backends {
            sample(&mut out, name, Some(&b.addr), value(b));
        }
    }
    let totals = [
        (
            "mkectl_apilb_listening",
            "1 while the node-local apiserver balancer accepts connections.",
            "gauge",
            u64::from(shared.listening.load(Ordering::Relaxed)),
        ),
        (
            "mkectl_apilb_connections_accepted_total",
            "Client connections accepted by the node-local apiserver balancer.",
            "counter",
            shared.accepted.load(Ordering::Relaxed),
        ),
        (
            "mkectl_apilb_failovers_total",
            "Times a client connection moved on to another backend after a failed connection attempt.",
            "counter",
            shared.failovers.load(Ordering::Relaxed),
        ),
        (
            "mkectl_apilb_connections_unroutable_total",
            "Client connections closed because no backend accepted a connection.",
            "counter",
            shared.unroutable.load(Ordering::Relaxed),
        ),
    ];
    for (name, help, kind, v) in totals {
        header(&mut out, name, kind, help);
        sample(&mut out, name, None, v);
    }
    out
}
