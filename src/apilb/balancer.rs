//! The backend table: per-backend health state (the state machine both the
//! active and the passive checks feed), connection accounting, and the order
//! in which a new client connection tries the backends.
//!
//! # Selection: least connections, ties in round-robin order
//!
//! The apiserver's clients on a node (kubelet, kube-proxy) hold a few
//! long-lived connections (HTTP/2 with watches on them) next to short ones
//! (`kubectl`, exec, logs). Round robin alone spreads connection *counts*
//! evenly only when connections live equally long; least-connections looks
//! at what is open now, so a controller that comes back after a restart gets
//! the next new connections until it holds its share again. Ties (the common
//! case for short connections, all backends at 0 or equal) are broken in
//! round-robin order from a rotating cursor, so sequential short connections
//! still spread evenly instead of always landing on the first backend.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Consecutive failed checks (active or passive) that take an up backend
/// down. One: a refused or timed-out probe is a strong signal, and with a
/// 1 s interval and a 1 s probe timeout a dead controller is out of rotation
/// within 2 s.
pub const DOWN_AFTER_FAILURES: u32 = 1;
/// Consecutive successful checks that bring a backend up. One: a `/readyz`
/// 200 means the apiserver *and* its etcd are ready, a strong signal already,
/// and a second check would only delay a returning controller by an interval;
/// a backend that flaps is taken out again by the passive check the moment
/// it refuses a connection.
pub const UP_AFTER_SUCCESSES: u32 = 1;
/// Longest error message kept per backend in the status.
pub const MAX_ERROR_CHARS: usize = 512;

/// What the balancer believes about a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Health {
    /// Not checked yet, or the check could not run (e.g. the probe's client
    /// certificate is not on disk yet). Still tried when no backend is up.
    Unknown,
    /// Answered `/readyz` with 2xx: in rotation.
    Up,
    /// Failed a check or refused a connection: out of rotation (still tried
    /// as a last resort when nothing is up).
    Down,
}

/// Result of one check of one backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The backend is ready.
    Ok,
    /// The backend failed the check (refused, timed out, non-2xx, TLS).
    Fail(String),
    /// The check could not run for a local reason (unreadable CA or client
    /// certificate); says nothing about the backend.
    Unknown(String),
}

/// One backend as `mkectl status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendStatus {
    /// `<ip>:<port>` of the apiserver.
    pub addr: String,
    /// In rotation (health `up`).
    pub healthy: bool,
    pub health: Health,
    /// Why the last check failed (or could not run); `None` after a success.
    pub last_check_error: Option<String>,
    /// Milliseconds since the last check finished; `None` before the first.
    pub last_check_ms_ago: Option<u64>,
    /// Client connections open through the balancer to this backend now.
    pub active_connections: u64,
    /// Client connections ever forwarded to this backend.
    pub total_connections: u64,
    /// Connection attempts to this backend that failed (passive check).
    pub connect_failures: u64,
}

#[derive(Debug)]
struct HealthState {
    health: Health,
    consecutive_ok: u32,
    consecutive_fail: u32,
    last_error: Option<String>,
    last_check: Option<Instant>,
}

impl HealthState {
    fn new() -> Self {
        HealthState {
            health: Health::Unknown,
            consecutive_ok: 0,
            consecutive_fail: 0,
            last_error: None,
            last_check: None,
        }
    }

    /// Applies one outcome; returns the new health when it changed.
    fn record(&mut self, outcome: Outcome, now: Instant) -> Option<Health> {
        let before = self.health;
        self.last_check = Some(now);
        match outcome {
            Outcome::Ok => {
                self.consecutive_fail = 0;
                self.consecutive_ok = self.consecutive_ok.saturating_add(1);
                self.last_error = None;
                if self.consecutive_ok >= UP_AFTER_SUCCESSES {
                    self.health = Health::Up;
                }
            }
            Outcome::Fail(e) => {
                self.consecutive_ok = 0;
                self.consecutive_fail = self.consecutive_fail.saturating_add(1);
                self.last_error = Some(truncate(e));
                // An unknown backend that fails is down at once: nothing
                // vouched for it.
                if self.consecutive_fail >= DOWN_AFTER_FAILURES || self.health == Health::Unknown {
                    self.health = Health::Down;
                }
            }
            Outcome::Unknown(e) => {
                self.consecutive_ok = 0;
                self.consecutive_fail = 0;
                self.last_error = Some(truncate(e));
                self.health = Health::Unknown;
            }
        }
        (self.health != before).then_some(self.health)
    }
}

fn truncate(mut s: String) -> String {
    if s.chars().count() > MAX_ERROR_CHARS {
        s = s.chars().take(MAX_ERROR_CHARS).collect::<String>() + "…";
    }
    s
}

/// One backend: its address, health and counters.
#[derive(Debug)]
pub(crate) struct Backend {
    pub(crate) addr: SocketAddr,
    state: Mutex<HealthState>,
    active: AtomicU64,
    total: AtomicU64,
    connect_failures: AtomicU64,
    /// Stops this backend's health checker when it leaves the set.
    pub(crate) cancel: CancellationToken,
}

impl Backend {
    fn new(addr: SocketAddr, cancel: CancellationToken) -> Self {
        Backend {
            addr,
            state: Mutex::new(HealthState::new()),
            active: AtomicU64::new(0),
            total: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            cancel,
        }
    }

    pub(crate) fn health(&self) -> Health {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).health
    }

    /// Records a check; returns the new health when it changed.
    pub(crate) fn record(&self, outcome: Outcome) -> Option<Health> {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record(outcome, Instant::now())
    }

    /// A connection attempt failed: counts it and feeds the state machine.
    pub(crate) fn connect_failed(&self, error: String) -> Option<Health> {
        self.connect_failures.fetch_add(1, Ordering::Relaxed);
        self.record(Outcome::Fail(format!("connect: {error}")))
    }

    /// Counts a forwarded connection until the guard drops.
    pub(crate) fn open(self: &Arc<Self>) -> ConnectionGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard(self.clone())
    }

    pub(crate) fn status(&self, now: Instant) -> BackendStatus {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        BackendStatus {
            addr: self.addr.to_string(),
            healthy: st.health == Health::Up,
            health: st.health,
            last_check_error: st.last_error.clone(),
            last_check_ms_ago: st.last_check.map(|t| {
                u64::try_from(now.saturating_duration_since(t).as_millis()).unwrap_or(u64::MAX)
            }),
            active_connections: self.active.load(Ordering::Relaxed),
            total_connections: self.total.load(Ordering::Relaxed),
            connect_failures: self.connect_failures.load(Ordering::Relaxed),
        }
    }
}

/// Keeps a backend's active count up while a forwarded connection lives.
pub(crate) struct ConnectionGuard(Arc<Backend>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// State shared by the accept loop, the health checkers and status readers.
#[derive(Debug)]
pub(crate) struct Shared {
    backends: RwLock<Vec<Arc<Backend>>>,
    cursor: AtomicUsize,
    /// Moves to another backend after a failed connection attempt.
    pub(crate) failovers: AtomicU64,
    /// Client connections closed because no backend could be reached.
    pub(crate) unroutable: AtomicU64,
    pub(crate) accepted: AtomicU64,
    pub(crate) listening: AtomicBool,
    /// Bumped on every health transition and backend set change.
    changes: watch::Sender<u64>,
}

impl Shared {
    pub(crate) fn new() -> Self {
        Shared {
            backends: RwLock::new(Vec::new()),
            cursor: AtomicUsize::new(0),
            failovers: AtomicU64::new(0),
            unroutable: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            listening: AtomicBool::new(false),
            changes: watch::channel(0).0,
        }
    }

    pub(crate) fn notify(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub(crate) fn backends(&self) -> Vec<Arc<Backend>> {
        self.backends
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the backend set with `addrs` (duplicates ignored). Backends
    /// that stay keep their state and counters; returns the added ones (whose
    /// checkers the caller starts) and cancels the checkers of removed ones.
    /// Connections already open to a removed backend are left alone.
    pub(crate) fn set_backends(
        &self,
        addrs: &[SocketAddr],
        parent: &CancellationToken,
    ) -> Vec<Arc<Backend>> {
        let mut added = Vec::new();
        {
            let mut cur = self.backends.write().unwrap_or_else(|p| p.into_inner());
            let mut next: Vec<Arc<Backend>> = Vec::with_capacity(addrs.len());
            for addr in addrs {
                if next.iter().any(|b| b.addr == *addr) {
                    continue;
                }
                match cur.iter().find(|b| b.addr == *addr) {
                    Some(b) => next.push(b.clone()),
                    None => {
                        let b = Arc::new(Backend::new(*addr, parent.child_token()));
                        added.push(b.clone());
                        next.push(b);
                    }
                }
            }
            for old in cur.iter() {
                if !next.iter().any(|b| b.addr == old.addr) {
                    old.cancel.cancel();
                }
            }
            *cur = next;
        }
        self.notify();
        added
    }

    /// The order in which a new connection tries the backends: the up ones
    /// by fewest active connections (ties in round-robin order), then the
    /// unknown ones, then the down ones, each once. Trying the others after
    /// the up ones means a client is served whenever any backend accepts,
    /// including at a cold start before the first health check.
    pub(crate) fn candidates(&self) -> Vec<Arc<Backend>> {
        let all = self.backends.read().unwrap_or_else(|p| p.into_inner());
        if all.is_empty() {
            return Vec::new();
        }
        let turn = self.cursor.fetch_add(1, Ordering::Relaxed);
        let mut out = Vec::with_capacity(all.len());
        for rank in [Health::Up, Health::Unknown, Health::Down] {
            let mut group: Vec<(u64, Arc<Backend>)> = all
                .iter()
                .filter(|b| b.health() == rank)
                .map(|b| (b.active.load(Ordering::Relaxed), b.clone()))
                .collect();
            if group.is_empty() {
                continue;
            }
            // Rotate within the group (not the whole set), so a down backend
            // does not hand its turns to the one after it.
            let start = turn % group.len();
            group.rotate_left(start);
            if rank == Health::Up {
                // Stable: equal counts keep the rotation order.
                group.sort_by_key(|(active, _)| *active);
            }
            out.extend(group.into_iter().map(|(_, b)| b));
        }
        out
    }

    pub(crate) fn status(&self) -> Vec<BackendStatus> {
        let now = Instant::now();
        self.backends().iter().map(|b| b.status(now)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn state_machine_follows_the_policy() {
        let mut s = HealthState::new();
        let t = Instant::now();
        assert_eq!(s.health, Health::Unknown);
        assert_eq!(s.record(Outcome::Ok, t), Some(Health::Up));
        assert_eq!(s.record(Outcome::Ok, t), None);
        assert_eq!(
            s.record(Outcome::Fail("refused".into()), t),
            Some(Health::Down)
        );
        assert_eq!(s.last_error.as_deref(), Some("refused"));
        assert_eq!(s.record(Outcome::Fail("refused".into()), t), None);
        assert_eq!(s.record(Outcome::Ok, t), Some(Health::Up));
        assert_eq!(s.last_error, None);
        assert_eq!(
            s.record(Outcome::Unknown("no client cert".into()), t),
            Some(Health::Unknown)
        );
        assert_eq!(s.record(Outcome::Fail("x".into()), t), Some(Health::Down));
        let long = "e".repeat(MAX_ERROR_CHARS * 2);
        s.record(Outcome::Fail(long), t);
        assert_eq!(
            s.last_error.as_ref().map(|e| e.chars().count()),
            Some(MAX_ERROR_CHARS + 1)
        );
    }

    #[test]
    fn candidates_prefer_up_then_fewest_connections_then_rotation() {
        let shared = Shared::new();
        let root = CancellationToken::new();
        let added = shared.set_backends(&[addr(1), addr(2), addr(3), addr(1)], &root);
        assert_eq!(added.len(), 3);

        // Nothing checked yet: every backend is a candidate, in rotation.
        let firsts: Vec<SocketAddr> = (0..3).map(|_| shared.candidates()[0].addr).collect();
        assert_eq!(firsts, vec![addr(1), addr(2), addr(3)]);
        assert_eq!(shared.candidates().len(), 3);

        added[0].record(Outcome::Ok);
        added[1].record(Outcome::Ok);
        added[2].record(Outcome::Fail("down".into()));
        for _ in 0..4 {
            let c = shared.candidates();
            assert_eq!(c.len(), 3);
            assert_eq!(c[2].addr, addr(3), "down backend last");
        }
        // Up backends alternate while equally loaded, evenly although a
        // down one sits in the set...
        let firsts: Vec<SocketAddr> = (0..6).map(|_| shared.candidates()[0].addr).collect();
        assert_eq!(
            firsts.iter().filter(|a| **a == addr(1)).count(),
            3,
            "{firsts:?}"
        );
        assert_eq!(
            firsts.iter().filter(|a| **a == addr(2)).count(),
            3,
            "{firsts:?}"
        );
        // ...and the less loaded one wins otherwise.
        let _guard = added[0].open();
        for _ in 0..3 {
            assert_eq!(shared.candidates()[0].addr, addr(2));
        }
    }

    #[test]
    fn set_changes_keep_state_and_cancel_removed_checkers() {
        let shared = Shared::new();
        let root = CancellationToken::new();
        let added = shared.set_backends(&[addr(1), addr(2)], &root);
        added[0].record(Outcome::Ok);
        let _g = added[0].open();
        let again = shared.set_backends(&[addr(1), addr(3)], &root);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].addr, addr(3));
        assert!(added[1].cancel.is_cancelled());
        assert!(!added[0].cancel.is_cancelled());
        let st = shared.status();
        assert_eq!(st.len(), 2);
        assert!(st[0].healthy);
        assert_eq!(st[0].active_connections, 1);
        assert_eq!(st[0].total_connections, 1);
        assert_eq!(st[1].health, Health::Unknown);
        drop(_g);
        assert_eq!(shared.status()[0].active_connections, 0);
    }

    #[test]
    fn status_serializes_in_camel_case() {
        let shared = Shared::new();
        let added = shared.set_backends(&[addr(6443)], &CancellationToken::new());
        added[0].connect_failed("refused".into());
        let json = serde_json::to_value(shared.status()).unwrap();
        assert_eq!(json[0]["addr"], "127.0.0.1:6443");
        assert_eq!(json[0]["health"], "down");
        assert_eq!(json[0]["healthy"], false);
        assert_eq!(json[0]["connectFailures"], 1);
        assert_eq!(json[0]["lastCheckError"], "connect: refused");
        assert!(json[0]["activeConnections"].is_number());
    }
}
