//! Agent streams ("backends") and the choice of one per dial
//! (`--proxy-strategies`, protocol reference §3.3).

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::konnectivity::proto::Packet;

/// How a backend is chosen for a dial; tried in the configured order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyStrategy {
    /// Any agent (random start), first non-draining.
    Default,
    /// The agent whose `host`/`ipv4`/`ipv6` identifier equals the dial host.
    DestHost,
    /// Agents that announced `default-route=true`.
    DefaultRoute,
}

impl FromStr for ProxyStrategy {
    type Err = StrategyError;
    fn from_str(s: &str) -> Result<Self, StrategyError> {
        match s.trim() {
            "default" => Ok(ProxyStrategy::Default),
            "destHost" => Ok(ProxyStrategy::DestHost),
            "defaultRoute" => Ok(ProxyStrategy::DefaultRoute),
            other => Err(StrategyError::Unknown(other.to_string())),
        }
    }
}

/// A `--proxy-strategies` value that names no strategy mkectl knows.
#[derive(Debug, thiserror::Error)]
pub enum StrategyError {
    #[error("unknown proxy strategy {0:?} (expected default, destHost or defaultRoute)")]
    Unknown(String),
    #[error("no proxy strategy given")]
    Empty,
}

/// An agent identifier pair that is not valid percent-encoding.
#[derive(Debug, thiserror::Error)]
#[error("bad encoding in {pair:?}")]
pub struct BadIdentifiers {
    pub pair: String,
}

impl ProxyStrategy {
    pub fn name(self) -> &'static str {
        match self {
            ProxyStrategy::Default => "default",
            ProxyStrategy::DestHost => "destHost",
            ProxyStrategy::DefaultRoute => "defaultRoute",
        }
    }

    /// Parses a comma list such as `destHost,default`.
    pub fn parse_list(s: &str) -> Result<Vec<ProxyStrategy>, StrategyError> {
        let list = s
            .split(',')
            .filter(|p| !p.trim().is_empty())
            .map(ProxyStrategy::from_str)
            .collect::<Result<Vec<_>, _>>()?;
        if list.is_empty() {
            return Err(StrategyError::Empty);
        }
        Ok(list)
    }
}

/// What an agent announced in its `agentidentifiers` header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identifiers {
    /// `host`, `ipv4` and `ipv6` values: keys of the destHost strategy.
    pub hosts: Vec<String>,
    pub cidrs: Vec<String>,
    pub default_route: bool,
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

impl Identifiers {
    /// Parses the URL-query form (`host=node1&ipv4=10.0.0.5&default-route=true`).
    /// Unknown keys are ignored, as upstream does.
    pub fn parse(s: &str) -> Result<Identifiers, BadIdentifiers> {
        let mut ids = Identifiers::default();
        for pair in s.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let bad = || BadIdentifiers {
                pair: pair.to_string(),
            };
            let k = percent_decode(k).ok_or_else(bad)?;
            let v = percent_decode(v).ok_or_else(bad)?;
            match k.as_str() {
                "host" | "ipv4" | "ipv6" if !v.is_empty() => ids.hosts.push(v),
                "cidr" => ids.cidrs.push(v),
                "default-route" => ids.default_route = v == "true",
                _ => {}
            }
        }
        Ok(ids)
    }
}

/// One agent stream as the server sees it. Packets to the agent go through
/// two bounded queues: `data` (ordered with the frontend's DATA, so CLOSE_REQ
/// never overtakes it) and `ctrl` (answers the stream reader must send
/// without ever blocking, e.g. CLOSE_REQ for an unknown connection).
#[derive(Debug)]
pub struct Backend {
    pub id: u64,
    pub agent_id: String,
    pub identifiers: Identifiers,
    data: mpsc::Sender<Packet>,
    ctrl: mpsc::Sender<Packet>,
    draining: AtomicBool,
    /// Cancelled when the stream ends or the backend is retired.
    pub cancel: CancellationToken,
}

/// Why a packet could not be queued towards an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    Gone,
    Timeout,
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Gone => f.write_str("backend connection closed"),
            SendError::Timeout => f.write_str("timed out sending to backend"),
        }
    }
}

impl Backend {
    pub fn new(
        id: u64,
        agent_id: String,
        identifiers: Identifiers,
        data: mpsc::Sender<Packet>,
        ctrl: mpsc::Sender<Packet>,
        cancel: CancellationToken,
    ) -> Self {
        Backend {
            id,
            agent_id,
            identifiers,
            data,
            ctrl,
            draining: AtomicBool::new(false),
            cancel,
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Queues `p` in order with this frontend's other packets, waiting for
    /// room at most `timeout` (shared backpressure of the agent stream).
    pub async fn send(&self, p: Packet, timeout: Duration) -> Result<(), SendError> {
        if self.cancel.is_cancelled() {
            return Err(SendError::Gone);
        }
        match self.data.try_send(p) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(SendError::Gone),
            Err(mpsc::error::TrySendError::Full(p)) => {
                tokio::select! {
                    r = self.data.send(p) => r.map_err(|_| SendError::Gone),
                    _ = self.cancel.cancelled() => Err(SendError::Gone),
                    _ = tokio::time::sleep(timeout) => Err(SendError::Timeout),
                }
            }
        }
    }

    /// Queues a control packet without waiting. A backend whose control
    /// queue is full has stopped reading altogether: it is retired.
    pub fn send_ctrl(&self, p: Packet) {
        match self.ctrl.try_send(p) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(
                    component = "konnectivity-server",
                    agent_id = %self.agent_id,
                    "agent stream stopped reading (control queue full); retiring it"
                );
                self.cancel.cancel();
            }
        }
    }
}

#[derive(Debug, Default)]
struct Index {
    /// agentID → its streams, first one routed to.
    agents: HashMap<String, Vec<Arc<Backend>>>,
    /// destHost key → streams.
    hosts: HashMap<String, Vec<Arc<Backend>>>,
    /// agentID → streams of agents with default-route=true.
    default_route: HashMap<String, Vec<Arc<Backend>>>,
}

fn remove_from(map: &mut HashMap<String, Vec<Arc<Backend>>>, key: &str, id: u64) {
    if let Some(list) = map.get_mut(key) {
        list.retain(|b| b.id != id);
        if list.is_empty() {
            map.remove(key);
        }
    }
}

/// All connected backends, indexed for every strategy.
#[derive(Debug)]
pub struct BackendManager {
    strategies: Vec<ProxyStrategy>,
    index: Mutex<Index>,
}

/// The dial host used as destHost key: port and IPv6 brackets stripped.
pub fn dest_host(address: &str) -> &str {
    let host = match address.rsplit_once(':') {
        Some((h, port)) if !port.contains(']') => h,
        _ => address,
    };
    host.trim_start_matches('[').trim_end_matches(']')
}

impl BackendManager {
    pub fn new(strategies: Vec<ProxyStrategy>) -> Self {
        BackendManager {
            strategies,
            index: Mutex::new(Index::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn add(&self, b: Arc<Backend>) {
        let mut idx = self.lock();
        idx.agents
            .entry(b.agent_id.clone())
            .or_default()
            .push(b.clone());
        for h in &b.identifiers.hosts {
            idx.hosts.entry(h.clone()).or_default().push(b.clone());
        }
        if b.identifiers.default_route {
            idx.default_route
                .entry(b.agent_id.clone())
                .or_default()
                .push(b.clone());
        }
    }

    pub fn remove(&self, b: &Backend) {
        let mut idx = self.lock();
        remove_from(&mut idx.agents, &b.agent_id, b.id);
        for h in &b.identifiers.hosts {
            remove_from(&mut idx.hosts, h, b.id);
        }
        remove_from(&mut idx.default_route, &b.agent_id, b.id);
    }

    /// Picks the backend for a dial to `address`: strategies in order, each
    /// preferring non-draining backends; a draining one only as last resort.
    pub fn choose(&self, address: &str) -> Option<Arc<Backend>> {
        let idx = self.lock();
        let mut fallback: Option<Arc<Backend>> = None;
        for s in &self.strategies {
            let candidates: Vec<&Arc<Backend>> = match s {
                ProxyStrategy::Default => idx.agents.values().filter_map(|v| v.first()).collect(),
                ProxyStrategy::DefaultRoute => idx
                    .default_route
                    .values()
                    .filter_map(|v| v.first())
                    .collect(),
                ProxyStrategy::DestHost => idx
                    .hosts
                    .get(dest_host(address))
                    .map(|v| v.iter().collect())
                    .unwrap_or_default(),
            };
            if candidates.is_empty() {
                continue;
            }
            let start = rand::rng().random_range(0..candidates.len());
            for i in 0..candidates.len() {
                let b = candidates[(start + i) % candidates.len()];
                if !b.is_draining() && !b.cancel.is_cancelled() {
                    return Some(b.clone());
                }
                if fallback.is_none() && !b.cancel.is_cancelled() {
                    fallback = Some(b.clone());
                }
            }
        }
        fallback
    }

    /// Backends counted by the first strategy's index (upstream readiness).
    pub fn ready_count(&self) -> usize {
        self.count(
            self.strategies
                .first()
                .copied()
                .unwrap_or(ProxyStrategy::Default),
        )
    }

    pub fn count(&self, s: ProxyStrategy) -> usize {
        let idx = self.lock();
        match s {
            ProxyStrategy::Default => idx.agents.values().map(Vec::len).sum(),
            ProxyStrategy::DestHost => idx.hosts.values().map(Vec::len).sum(),
            ProxyStrategy::DefaultRoute => idx.default_route.values().map(Vec::len).sum(),
        }
    }

    /// Total agent streams.
    pub fn total(&self) -> usize {
        self.count(ProxyStrategy::Default)
    }

    pub fn strategies(&self) -> &[ProxyStrategy] {
        &self.strategies
    }

    /// `(agent id, stream count, draining)` of every connected agent.
    pub fn describe(&self) -> Vec<(String, usize, bool)> {
        let idx = self.lock();
        let mut v: Vec<_> = idx
            .agents
            .iter()
            .map(|(id, list)| {
                (
                    id.clone(),
                    list.len(),
                    list.first().map(|b| b.is_draining()).unwrap_or(false),
                )
            })
            .collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(id: u64, agent: &str, ids: &str) -> Arc<Backend> {
        let (d, _) = mpsc::channel(1);
        let (c, _) = mpsc::channel(1);
        Arc::new(Backend::new(
            id,
            agent.into(),
            Identifiers::parse(ids).unwrap(),
            d,
            c,
            CancellationToken::new(),
        ))
    }

    #[test]
    fn dest_host_strips_port_and_brackets() {
        assert_eq!(dest_host("10.0.0.5:10250"), "10.0.0.5");
        assert_eq!(dest_host("[fd00::5]:10250"), "fd00::5");
        assert_eq!(dest_host("node1:22"), "node1");
        assert_eq!(dest_host("node1"), "node1");
    }

    #[test]
    fn identifiers_parse_url_query() {
        let ids = Identifiers::parse(
            "host=node%2D1&ipv4=10.0.0.5&cidr=10.0.0.0%2F24&default-route=true&x=y",
        )
        .unwrap();
        assert_eq!(ids.hosts, vec!["node-1", "10.0.0.5"]);
        assert_eq!(ids.cidrs, vec!["10.0.0.0/24"]);
        assert!(ids.default_route);
    }

    #[test]
    fn dest_host_then_default() {
        let m = BackendManager::new(vec![ProxyStrategy::DestHost, ProxyStrategy::Default]);
        assert!(m.choose("10.0.0.5:1").is_none());
        m.add(backend(1, "a", "host=10.0.0.5"));
        m.add(backend(2, "b", "host=10.0.0.6"));
        for _ in 0..20 {
            assert_eq!(m.choose("10.0.0.5:10250").unwrap().id, 1);
            assert_eq!(m.choose("10.0.0.6:10250").unwrap().id, 2);
        }
        // Unknown host falls through to default.
        assert!(m.choose("10.9.9.9:80").is_some());
        assert_eq!(m.ready_count(), 2);
    }

    #[test]
    fn draining_is_last_resort_and_removal_works() {
        let m = BackendManager::new(vec![ProxyStrategy::Default]);
        let a = backend(1, "a", "");
        let b = backend(2, "b", "");
        m.add(a.clone());
        m.add(b.clone());
        a.set_draining();
        for _ in 0..20 {
            assert_eq!(m.choose("x:1").unwrap().id, 2);
        }
        m.remove(&b);
        assert_eq!(m.choose("x:1").unwrap().id, 1);
        m.remove(&a);
        assert!(m.choose("x:1").is_none());
        assert_eq!(m.total(), 0);
    }
}
