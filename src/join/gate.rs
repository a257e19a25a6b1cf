//! Connection slots of the join API, so that nobody without a token can
//! hold them.
//!
//! A connection is *pending* from accept until its request has been
//! authenticated from the headers (bearer token or client certificate), and
//! *admitted* after. Pending connections are what an attacker without a
//! token can create (stalled TLS handshakes, slow headers), so they are
//! bounded per source ([`Limits::pending_per_source`]: further connections
//! from that source are closed at once) and in total
//! ([`Limits::pending`]: a new connection then evicts the oldest pending
//! connection of the source holding the most, so a flood from many
//! addresses cannot keep out a client that has none pending). All
//! connections are also bounded per source and in total. A source is an
//! IPv4 address or an IPv6 /64 (one host's usual allocation).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

/// Where connections come from, for the per-source limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    V4(Ipv4Addr),
    /// The /64 prefix.
    V6([u8; 8]),
}

impl Source {
    pub fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(a) => Source::V4(a),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => Source::V4(v4),
                None => {
                    let o = a.octets();
                    Source::V6([o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7]])
                }
            },
        }
    }
}

/// The bounds; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub total: usize,
    pub per_source: usize,
    pub pending: usize,
    pub pending_per_source: usize,
}

/// Why a connection was not let in (the `reason` of the refusal metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The source has its share of (pending) connections.
    SourceBusy,
    /// Every connection slot is taken by admitted connections.
    Full,
}

impl Refused {
    pub fn reason(self) -> &'static str {
        match self {
            Refused::SourceBusy => "source_limit",
            Refused::Full => "full",
        }
    }
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    /// Pending connections, oldest first.
    pending: BTreeMap<u64, (Source, CancellationToken)>,
    pending_by_source: HashMap<Source, usize>,
    by_source: HashMap<Source, usize>,
    total: usize,
}

fn dec(map: &mut HashMap<Source, usize>, s: Source) {
    if let Some(n) = map.get_mut(&s) {
        *n -= 1;
        if *n == 0 {
            map.remove(&s);
        }
    }
}

/// The slots of one join API.
#[derive(Debug)]
pub struct Gate {
    limits: Limits,
    state: Mutex<State>,
}

/// One connection's slot: pending until [`Slot::admit`], released on drop.
#[derive(Debug)]
pub struct Slot {
    gate: Arc<Gate>,
    id: u64,
    source: Source,
    /// Cancelled when a newer connection evicts this pending one.
    pub evicted: CancellationToken,
}

/// What [`Gate::enter`] did to make room.
#[derive(Debug)]
pub struct Entered {
    pub slot: Slot,
    /// A pending connection that was evicted for this one.
    pub evicted: bool,
}

impl Gate {
    pub fn new(limits: Limits) -> Arc<Gate> {
        Arc::new(Gate {
            limits,
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a pending slot for a connection from `ip`.
    pub fn enter(self: &Arc<Self>, ip: IpAddr) -> Result<Entered, Refused> {
        let source = Source::of(ip);
        let mut st = self.lock();
        let l = &self.limits;
        if st.total >= l.total {
            return Err(Refused::Full);
        }
        if st.by_source.get(&source).copied().unwrap_or(0) >= l.per_source
            || st.pending_by_source.get(&source).copied().unwrap_or(0) >= l.pending_per_source
        {
            return Err(Refused::SourceBusy);
        }
        let mut evicted = false;
        if st.pending.len() >= l.pending {
            // The source holding the most pending slots gives up its oldest.
            let Some(victim_source) = st
                .pending_by_source
                .iter()
                .max_by_key(|(_, n)| **n)
                .map(|(s, _)| *s)
            else {
                return Err(Refused::Full);
            };
            let victim = st
                .pending
                .iter()
                .find(|(_, (s, _))| *s == victim_source)
                .map(|(id, _)| *id);
            if let Some(id) = victim {
                if let Some((s, token)) = st.pending.remove(&id) {
                    dec(&mut st.pending_by_source, s);
                    token.cancel();
                    evicted = true;
                }
            }
        }
        let id = st.next_id;
        st.next_id += 1;
        let token = CancellationToken::new();
        st.pending.insert(id, (source, token.clone()));
        *st.pending_by_source.entry(source).or_insert(0) += 1;
        *st.by_source.entry(source).or_insert(0) += 1;
        st.total += 1;
        Ok(Entered {
            slot: Slot {
                gate: self.clone(),
                id,
                source,
                evicted: token,
            },
            evicted,
        })
    }

    /// `(pending, total)` connections.
    pub fn counts(&self) -> (usize, usize) {
        let st = self.lock();
        (st.pending.len(), st.total)
    }
}

impl Slot {
    /// The request was authenticated: this connection can no longer be
    /// evicted and stops counting as pending.
    pub fn admit(&self) {
        let mut st = self.gate.lock();
        if st.pending.remove(&self.id).is_some() {
            dec(&mut st.pending_by_source, self.source);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut st = self.gate.lock();
        if st.pending.remove(&self.id).is_some() {
            dec(&mut st.pending_by_source, self.source);
        }
        dec(&mut st.by_source, self.source);
        st.total -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits = Limits {
        total: 8,
        per_source: 4,
        pending: 5,
        pending_per_source: 3,
    };

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn per_source_pending_is_capped_and_admitted_ones_free_it() {
        let g = Gate::new(L);
        let a: Vec<_> = (0..3).map(|_| g.enter(ip(1)).unwrap().slot).collect();
        assert_eq!(g.enter(ip(1)).unwrap_err(), Refused::SourceBusy);
        a[0].admit();
        let d = g.enter(ip(1)).unwrap().slot;
        // Four connections from that source now: its total share.
        a[1].admit();
        assert_eq!(g.enter(ip(1)).unwrap_err(), Refused::SourceBusy);
        drop(d);
        assert!(g.enter(ip(1)).is_ok());
        drop(a);
        assert_eq!(g.counts(), (0, 0));
    }

    #[test]
    fn a_full_pending_set_evicts_from_the_busiest_source() {
        let g = Gate::new(L);
        let flood: Vec<_> = (0..3).map(|_| g.enter(ip(1)).unwrap().slot).collect();
        let other: Vec<_> = (0..2).map(|_| g.enter(ip(2)).unwrap().slot).collect();
        assert_eq!(g.counts(), (5, 5));
        // A newcomer gets in; the flood's oldest pending connection goes.
        let e = g.enter(ip(3)).unwrap();
        assert!(e.evicted);
        assert!(flood[0].evicted.is_cancelled());
        assert!(!flood[1].evicted.is_cancelled() && !other[0].evicted.is_cancelled());
        assert_eq!(g.counts().0, 5);
        // Admitted connections are never evicted; when every slot is
        // admitted, newcomers are refused.
        for s in flood.iter().chain(&other) {
            s.admit();
        }
        e.slot.admit();
        let more: Vec<_> = (4..6).map(|i| g.enter(ip(i)).unwrap().slot).collect();
        assert_eq!(g.enter(ip(9)).unwrap_err(), Refused::Full);
        drop((flood, other, more, e));
        assert_eq!(g.counts(), (0, 0));
    }

    #[test]
    fn ipv6_sources_are_per_64() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(Source::of(a), Source::of(b));
        assert_ne!(Source::of(a), Source::of(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(Source::of(mapped), Source::of(ip(1)));
    }
}
