//! Tunnel bookkeeping: pending dials by dial id, established tunnels by
//! (agent stream, connectID), and what each frontend owns, so that every
//! tunnel is cleaned up when its frontend, its agent stream or its target
//! goes away.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::backend::Backend;
use crate::konnectivity::io::Progress;
use crate::konnectivity::metrics::ServerMetrics;
use crate::konnectivity::proto::Packet;

/// Which frontend protocol a link serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrontendKind {
    Grpc,
    HttpConnect,
}

/// A packet queued towards a frontend. Boxed because a tokio queue
/// allocates its slots in blocks of 32 when created: an idle tunnel's queue
/// then costs 32 pointers instead of 32 packets (2.5 KiB per tunnel).
pub type Queued = Box<Packet>;

/// The server's handle on one frontend (one Proxy stream or one
/// HTTP-CONNECT connection): a bounded queue towards it and a kill switch
/// that ends it with an error.
#[derive(Debug)]
pub struct FrontendLink {
    pub id: u64,
    pub kind: FrontendKind,
    pub tx: mpsc::Sender<Queued>,
    pub kill: CancellationToken,
    /// When `tx`'s queue last moved (stall detection).
    pub progress: Arc<Progress>,
}

#[derive(Debug)]
struct Front {
    link: Arc<FrontendLink>,
    backend: Option<Arc<Backend>>,
    random: Option<i64>,
    dial_started: Option<Instant>,
    connect_id: Option<i64>,
    close_sent: bool,
}

#[derive(Debug, Default)]
struct Inner {
    pending: HashMap<i64, u64>,
    established: HashMap<(u64, i64), u64>,
    fronts: HashMap<u64, Front>,
}

/// Result of a DIAL_RSP from an agent.
#[derive(Debug)]
pub enum DialOutcome {
    /// Forward to this frontend; the dial took `elapsed`.
    Forward(Arc<FrontendLink>, Duration),
    /// No such pending dial (the frontend gave up).
    Unknown,
}

/// What to do after a frontend went away: packets to send to its agent.
pub type Cleanup = Vec<(Arc<Backend>, Packet)>;

#[derive(Debug)]
pub struct Tunnels {
    inner: Mutex<Inner>,
    metrics: Arc<ServerMetrics>,
}

impl Tunnels {
    pub fn new(metrics: Arc<ServerMetrics>) -> Self {
        Tunnels {
            inner: Mutex::new(Inner::default()),
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, inner: &Inner) {
        self.metrics
            .pending_dials
            .store(inner.pending.len() as i64, Ordering::Relaxed);
        self.metrics
            .established
            .store(inner.established.len() as i64, Ordering::Relaxed);
    }

    pub fn register(&self, link: Arc<FrontendLink>) {
        let mut inner = self.lock();
        inner.fronts.insert(
            link.id,
            Front {
                link,
                backend: None,
                random: None,
                dial_started: None,
                connect_id: None,
                close_sent: false,
            },
        );
    }

    /// Records a dial sent by frontend `fid`. Fails when the frontend already
    /// dialled (one dial per stream) or the dial id is in use.
    pub fn begin_dial(
        &self,
        fid: u64,
        random: i64,
        backend: Arc<Backend>,
    ) -> Result<(), &'static str> {
        let mut inner = self.lock();
        if inner.pending.contains_key(&random) {
            return Err("dial id already in use");
        }
        let front = inner.fronts.get_mut(&fid).ok_or("frontend closed")?;
        if front.backend.is_some() {
            return Err("only one dial per stream is supported");
        }
        front.backend = Some(backend);
        front.random = Some(random);
        front.dial_started = Some(Instant::now());
        inner.pending.insert(random, fid);
        self.publish(&inner);
        Ok(())
    }

    /// Forgets a pending dial of `fid` (frontend DIAL_CLS, dial timeout,
    /// failed send). Returns whether it was still pending.
    pub fn cancel_dial(&self, fid: u64, random: i64) -> bool {
        let mut inner = self.lock();
        if inner.pending.get(&random) != Some(&fid) {
            return false;
        }
        inner.pending.remove(&random);
        if let Some(f) = inner.fronts.get_mut(&fid) {
            f.random = None;
        }
        self.publish(&inner);
        true
    }

    pub fn dial_response(
        &self,
        backend_id: u64,
        random: i64,
        connect_id: i64,
        ok: bool,
    ) -> DialOutcome {
        let mut inner = self.lock();
        let Some(&fid) = inner.pending.get(&random) else {
            return DialOutcome::Unknown;
        };
        let belongs = inner
            .fronts
            .get(&fid)
            .and_then(|f| f.backend.as_ref())
            .map(|b| b.id == backend_id)
            .unwrap_or(false);
        if !belongs {
            return DialOutcome::Unknown;
        }
        inner.pending.remove(&random);
        let Some(front) = inner.fronts.get_mut(&fid) else {
            self.publish(&inner);
            return DialOutcome::Unknown;
        };
        front.random = None;
        let elapsed = front.dial_started.map(|t| t.elapsed()).unwrap_or_default();
        let link = front.link.clone();
        if ok && connect_id != 0 {
            front.connect_id = Some(connect_id);
            inner.established.insert((backend_id, connect_id), fid);
        }
        self.publish(&inner);
        DialOutcome::Forward(link, elapsed)
    }

    /// A DIAL_CLS from the agent: drops the pending dial, returns its frontend.
    pub fn dial_closed_by_agent(&self, backend_id: u64, random: i64) -> Option<Arc<FrontendLink>> {
        let mut inner = self.lock();
        let fid = *inner.pending.get(&random)?;
        let front = inner.fronts.get_mut(&fid)?;
        if front.backend.as_ref().map(|b| b.id) != Some(backend_id) {
            return None;
        }
        front.random = None;
        let link = front.link.clone();
        inner.pending.remove(&random);
        self.publish(&inner);
        Some(link)
    }

    pub fn lookup(&self, backend_id: u64, connect_id: i64) -> Option<Arc<FrontendLink>> {
        let inner = self.lock();
        let fid = inner.established.get(&(backend_id, connect_id))?;
        inner.fronts.get(fid).map(|f| f.link.clone())
    }

    /// The connection id and backend of frontend `fid`, once established.
    pub fn established_of(&self, fid: u64) -> Option<(Arc<Backend>, i64)> {
        let inner = self.lock();
        let f = inner.fronts.get(&fid)?;
        Some((f.backend.clone()?, f.connect_id?))
    }

    /// The backend chosen for `fid`, if any.
    pub fn backend_of(&self, fid: u64) -> Option<Arc<Backend>> {
        self.lock().fronts.get(&fid)?.backend.clone()
    }

    /// Marks that the frontend's CLOSE_REQ was forwarded.
    pub fn mark_close_sent(&self, fid: u64) {
        if let Some(f) = self.lock().fronts.get_mut(&fid) {
            f.close_sent = true;
        }
    }

    /// A CLOSE_RSP from the agent ends the tunnel; returns its frontend.
    pub fn close_response(&self, backend_id: u64, connect_id: i64) -> Option<Arc<FrontendLink>> {
        let mut inner = self.lock();
        let fid = inner.established.remove(&(backend_id, connect_id))?;
        self.publish(&inner);
        let f = inner.fronts.get_mut(&fid)?;
        f.connect_id = None;
        Some(f.link.clone())
    }

    /// Drops an established tunnel whose frontend cannot keep up or vanished;
    /// returns its frontend (to kill) if it was still registered.
    pub fn drop_established(&self, backend_id: u64, connect_id: i64) -> Option<Arc<FrontendLink>> {
        self.close_response(backend_id, connect_id)
    }

    /// The frontend went away: forgets everything it owned and returns the
    /// packets its agent must get (DIAL_CLS for a pending dial, CLOSE_REQ for
    /// an established tunnel whose CLOSE_REQ was not sent yet).
    pub fn frontend_gone(&self, fid: u64) -> Cleanup {
        let mut inner = self.lock();
        let mut out = Vec::new();
        if let Some(f) = inner.fronts.remove(&fid) {
            if let Some(backend) = f.backend {
                if let Some(r) = f.random {
                    inner.pending.remove(&r);
                    out.push((backend.clone(), Packet::dial_cls(r)));
                }
                if let Some(c) = f.connect_id {
                    inner.established.remove(&(backend.id, c));
                    if !f.close_sent {
                        out.push((backend, Packet::close_req(c)));
                    }
                }
            }
        }
        self.publish(&inner);
        out
    }

    /// An agent stream ended: every tunnel and pending dial routed through it
    /// is finished, and each frontend gets a packet saying so (CLOSE_RSP or
    /// DIAL_RSP carrying `error`).
    pub fn backend_gone(&self, backend_id: u64, error: &str) -> Vec<(Arc<FrontendLink>, Packet)> {
        let mut inner = self.lock();
        let mut out = Vec::new();
        let mut pend = Vec::new();
        let mut est = Vec::new();
        for f in inner.fronts.values_mut() {
            if f.backend.as_ref().map(|b| b.id) != Some(backend_id) {
                continue;
            }
            if let Some(r) = f.random.take() {
                pend.push(r);
                out.push((f.link.clone(), Packet::dial_rsp(r, 0, error)));
            }
            if let Some(c) = f.connect_id.take() {
                est.push(c);
                out.push((f.link.clone(), Packet::close_rsp(c, error)));
            }
        }
        for r in pend {
            inner.pending.remove(&r);
        }
        for c in est {
            inner.established.remove(&(backend_id, c));
        }
        self.publish(&inner);
        out
    }

    /// (pending dials, established tunnels, registered frontends).
    pub fn counts(&self) -> (usize, usize, usize) {
        let inner = self.lock();
        (
            inner.pending.len(),
            inner.established.len(),
            inner.fronts.len(),
        )
    }
}
