//! The single port's listener: per-source connection limits, a bounded wait
//! for the ClientHello, then the connection goes whole to its route (see the
//! module docs of [`crate::expose`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::hello::{self, Hello};
use super::incoming::RoutedConn;
use super::{ExposeError, Route};
use crate::join::gate::{Gate, Limits};

const COMPONENT: &str = "api-front";

/// A connection must send its ClientHello within this.
pub const DEFAULT_HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on connecting to the local apiserver.
pub const APISERVER_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long apiserver relays may run on after the front stops.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Connection limits: generous per source, as every worker behind one NAT
/// shares an address and each holds several long-lived apiserver
/// connections; tight on connections that have not sent a ClientHello yet,
/// which is all an attacker without credentials can hold here.
pub const DEFAULT_LIMITS: Limits = Limits {
    total: 16_384,
    per_source: 4_096,
    pending: 1_024,
    pending_per_source: 64,
};

/// What the front runs with.
#[derive(Debug, Clone)]
pub struct FrontConfig {
    /// The single port (`<node address>:<spec.api.port>`).
    pub listen: SocketAddr,
    /// kube-apiserver on loopback.
    pub apiserver: SocketAddr,
    /// In-process listeners; None: that route is closed.
    pub join: Option<mpsc::Sender<RoutedConn>>,
    pub konnectivity: Option<mpsc::Sender<RoutedConn>>,
    pub hello_timeout: Duration,
    pub drain_timeout: Duration,
    pub limits: Limits,
}

impl FrontConfig {
    pub fn new(listen: SocketAddr, apiserver: SocketAddr) -> Self {
        FrontConfig {
            listen,
            apiserver,
            join: None,
            konnectivity: None,
            hello_timeout: DEFAULT_HELLO_TIMEOUT,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            limits: DEFAULT_LIMITS,
        }
    }
}

/// Counters of a running front (the `mkectl_front_*` metrics).
#[derive(Debug, Default)]
pub struct FrontStatus {
    pub apiserver: AtomicU64,
    pub join: AtomicU64,
    pub konnectivity: AtomicU64,
    /// Closed: over a limit, no ClientHello in time, route closed or full,
    /// apiserver unreachable.
    pub refused: AtomicU64,
    /// Apiserver relays now open.
    pub relays: AtomicI64,
}

impl FrontStatus {
    fn routed(&self, r: Route) -> &AtomicU64 {
        match r {
            Route::ApiServer => &self.apiserver,
            Route::Join => &self.join,
            Route::Konnectivity => &self.konnectivity,
        }
    }

    /// Prometheus text of the counters.
    pub fn metrics(&self) -> String {
        let mut s = String::new();
        s.push_str("# HELP mkectl_front_connections_total Connections the single-port front routed, by route.\n");
        s.push_str("# TYPE mkectl_front_connections_total counter\n");
        for r in [Route::ApiServer, Route::Join, Route::Konnectivity] {
            s.push_str(&format!(
                "mkectl_front_connections_total{{route=\"{}\"}} {}\n",
                r.as_str(),
                self.routed(r).load(Ordering::Relaxed)
            ));
        }
        s.push_str("# HELP mkectl_front_refused_total Connections the single-port front closed without routing them.\n");
        s.push_str("# TYPE mkectl_front_refused_total counter\n");
        s.push_str(&format!(
            "mkectl_front_refused_total {}\n",
            self.refused.load(Ordering::Relaxed)
        ));
        s.push_str("# HELP mkectl_front_apiserver_relays Open relays to the local apiserver.\n");
        s.push_str("# TYPE mkectl_front_apiserver_relays gauge\n");
        s.push_str(&format!(
            "mkectl_front_apiserver_relays {}\n",
            self.relays.load(Ordering::Relaxed).max(0)
        ));
        s
    }
}

/// A running front.
#[derive(Debug)]
pub struct Front {
    addr: SocketAddr,
    status: Arc<FrontStatus>,
    tracker: TaskTracker,
    /// Ends the apiserver relays once the drain deadline passes.
    hard: CancellationToken,
    drain_timeout: Duration,
}

impl Front {
    /// Binds and serves until `cancel`.
    pub async fn start(cfg: FrontConfig, cancel: CancellationToken) -> Result<Front, ExposeError> {
        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| ExposeError::Bind {
                addr: cfg.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| ExposeError::Bind {
            addr: cfg.listen,
            source,
        })?;
        let status = Arc::new(FrontStatus::default());
        let tracker = TaskTracker::new();
        let hard = CancellationToken::new();
        let drain_timeout = cfg.drain_timeout;
        tracker.spawn(accept_loop(
            listener,
            Arc::new(cfg),
            status.clone(),
            cancel,
            hard.clone(),
            tracker.clone(),
        ));
        info!(component = COMPONENT, %addr, "single port listening: apiserver, join API and konnectivity routed by SNI");
        Ok(Front {
            addr,
            status,
            tracker,
            hard,
            drain_timeout,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn status(&self) -> Arc<FrontStatus> {
        self.status.clone()
    }

    /// After the cancel: waits for the relays up to the drain deadline,
    /// then ends them.
    pub async fn join(self) {
        self.tracker.close();
        if tokio::time::timeout(self.drain_timeout, self.tracker.wait())
            .await
            .is_err()
        {
            debug!(
                component = COMPONENT,
                "drain deadline passed; closing apiserver relays"
            );
            self.hard.cancel();
            self.tracker.wait().await;
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    cfg: Arc<FrontConfig>,
    status: Arc<FrontStatus>,
    cancel: CancellationToken,
    hard: CancellationToken,
    tracker: TaskTracker,
) {
    let gate = Gate::new(cfg.limits);
    loop {
        let (sock, peer) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    warn!(component = COMPONENT, error = %crate::telemetry::Chain(&e), "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let slot = match gate.enter(peer.ip()) {
            Ok(entered) => entered.slot,
            Err(refused) => {
                status.refused.fetch_add(1, Ordering::Relaxed);
                debug!(component = COMPONENT, %peer, reason = refused.reason(), "connection refused");
                continue;
            }
        };
        let (cfg, status, cancel, hard) =
            (cfg.clone(), status.clone(), cancel.clone(), hard.clone());
        tracker.spawn(async move {
            let evicted = slot.evicted.clone();
            let hello = tokio::select! {
                _ = cancel.cancelled() => return,
                _ = evicted.cancelled() => {
                    status.refused.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                r = tokio::time::timeout(cfg.hello_timeout, hello::peek(&sock)) => r,
            };
            let route = match hello {
                Ok(Ok(Hello::Tls { sni })) => Route::for_sni(sni.as_deref()),
                // The apiserver answers plain HTTP with a clear error.
                Ok(Ok(Hello::NotTls)) => Route::ApiServer,
                Ok(Err(e)) => {
                    status.refused.fetch_add(1, Ordering::Relaxed);
                    debug!(component = COMPONENT, %peer, error = %crate::telemetry::Chain(&e), "no ClientHello");
                    return;
                }
                Err(_) => {
                    status.refused.fetch_add(1, Ordering::Relaxed);
                    debug!(component = COMPONENT, %peer, "no ClientHello in time");
                    return;
                }
            };
            let tx = match route {
                Route::ApiServer => {
                    slot.admit();
                    relay(sock, peer, &cfg, &status, &hard).await;
                    drop(slot);
                    return;
                }
                Route::Join => cfg.join.as_ref(),
                Route::Konnectivity => cfg.konnectivity.as_ref(),
            };
            // The listener applies its own limits from here on.
            drop(slot);
            match tx.map(|tx| tx.try_send((sock, peer))) {
                Some(Ok(())) => {
                    status.routed(route).fetch_add(1, Ordering::Relaxed);
                }
                Some(Err(_)) => {
                    status.refused.fetch_add(1, Ordering::Relaxed);
                    warn!(component = COMPONENT, %peer, route = route.as_str(), "route busy or not running; connection closed");
                }
                None => {
                    status.refused.fetch_add(1, Ordering::Relaxed);
                    debug!(component = COMPONENT, %peer, route = route.as_str(), "route not served here");
                }
            }
        });
    }
}

/// Plain TCP both ways between a client and the local apiserver.
async fn relay(
    mut client: TcpStream,
    peer: SocketAddr,
    cfg: &FrontConfig,
    status: &FrontStatus,
    hard: &CancellationToken,
) {
    let connect =
        tokio::time::timeout(APISERVER_CONNECT_TIMEOUT, TcpStream::connect(cfg.apiserver));
    let mut upstream = match connect.await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            status.refused.fetch_add(1, Ordering::Relaxed);
            debug!(component = COMPONENT, %peer, apiserver = %cfg.apiserver, error = %crate::telemetry::Chain(&e), "apiserver not reachable");
            return;
        }
        Err(_) => {
            status.refused.fetch_add(1, Ordering::Relaxed);
            debug!(component = COMPONENT, %peer, apiserver = %cfg.apiserver, "apiserver connect timed out");
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    status.apiserver.fetch_add(1, Ordering::Relaxed);
    status.relays.fetch_add(1, Ordering::Relaxed);
    tokio::select! {
        _ = hard.cancelled() => {}
        r = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
            if let Err(e) = r {
                debug!(component = COMPONENT, %peer, error = %crate::telemetry::Chain(&e), "apiserver relay ended");
            }
        }
    }
    status.relays.fetch_sub(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expose::{RoutedIncoming, JOIN_SNI, KONNECTIVITY_SNI};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn client_hello(name: &str) -> Vec<u8> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let name = rustls_pki_types::ServerName::try_from(name.to_string()).unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    /// An "apiserver" that answers each connection with what it read first.
    async fn echo_once() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    let n = s.read(&mut buf).await.unwrap();
                    s.write_all(&buf[..n]).await.unwrap();
                });
            }
        });
        addr
    }

    async fn front(
        apiserver: SocketAddr,
        hello_timeout: Duration,
    ) -> (Front, RoutedIncoming, RoutedIncoming, CancellationToken) {
        let mut cfg = FrontConfig::new("127.0.0.1:0".parse().unwrap(), apiserver);
        let (jtx, join) = RoutedIncoming::channel("127.0.0.1:1".parse().unwrap());
        let (ktx, konn) = RoutedIncoming::channel("127.0.0.1:1".parse().unwrap());
        cfg.join = Some(jtx);
        cfg.konnectivity = Some(ktx);
        cfg.hello_timeout = hello_timeout;
        let cancel = CancellationToken::new();
        let f = Front::start(cfg, cancel.clone()).await.unwrap();
        (f, join, konn, cancel)
    }

    #[tokio::test]
    async fn routes_by_sni_with_the_hello_unread_and_the_real_peer() {
        let (f, join, konn, cancel) = front(echo_once().await, DEFAULT_HELLO_TIMEOUT).await;
        let (mut join_in, _) = crate::expose::Incoming::open("join", f.addr(), Some(&join))
            .await
            .unwrap();
        let (mut konn_in, _) = crate::expose::Incoming::open("konnectivity", f.addr(), Some(&konn))
            .await
            .unwrap();
        for (name, inc) in [(JOIN_SNI, &mut join_in), (KONNECTIVITY_SNI, &mut konn_in)] {
            let hello = client_hello(name);
            let mut c = TcpStream::connect(f.addr()).await.unwrap();
            c.write_all(&hello).await.unwrap();
            let (mut s, peer) = inc.accept().await.unwrap();
            assert_eq!(peer, c.local_addr().unwrap(), "{name}: real peer address");
            let mut got = vec![0u8; hello.len()];
            s.read_exact(&mut got).await.unwrap();
            assert_eq!(
                got, hello,
                "{name}: the listener reads the ClientHello itself"
            );
        }
        // No SNI (a client dialling an IP): the apiserver, byte for byte.
        let hello = client_hello("127.0.0.1");
        let mut c = TcpStream::connect(f.addr()).await.unwrap();
        c.write_all(&hello).await.unwrap();
        let mut got = vec![0u8; hello.len()];
        c.read_exact(&mut got).await.unwrap();
        assert_eq!(got, hello);
        // Not TLS at all: also the apiserver's to answer.
        let mut c = TcpStream::connect(f.addr()).await.unwrap();
        c.write_all(b"GET /readyz HTTP/1.1\r\n\r\n").await.unwrap();
        let mut got = vec![0u8; 24];
        c.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"GET /readyz HTTP/1.1\r\n\r\n");
        let st = f.status();
        assert_eq!(st.join.load(Ordering::Relaxed), 1);
        assert_eq!(st.konnectivity.load(Ordering::Relaxed), 1);
        assert_eq!(st.apiserver.load(Ordering::Relaxed), 2);
        cancel.cancel();
        drop((c, join_in, konn_in));
        f.join().await;
    }

    #[tokio::test]
    async fn a_silent_connection_is_closed_after_the_hello_timeout() {
        let (f, _j, _k, cancel) = front(echo_once().await, Duration::from_millis(200)).await;
        let mut c = TcpStream::connect(f.addr()).await.unwrap();
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf))
            .await
            .expect("closed by the front")
            .unwrap_or(0);
        assert_eq!(n, 0);
        assert_eq!(f.status().refused.load(Ordering::Relaxed), 1);
        assert!(f
            .status()
            .metrics()
            .contains("mkectl_front_refused_total 1\n"));
        cancel.cancel();
        f.join().await;
    }

    #[tokio::test]
    async fn one_source_cannot_hold_more_than_its_pending_share() {
        let (f, _j, _k, cancel) = front(echo_once().await, DEFAULT_HELLO_TIMEOUT).await;
        let n = DEFAULT_LIMITS.pending_per_source;
        let mut held = Vec::new();
        for _ in 0..n {
            held.push(TcpStream::connect(f.addr()).await.unwrap());
        }
        // One more from the same address is closed at once...
        let mut extra = TcpStream::connect(f.addr()).await.unwrap();
        let mut buf = [0u8; 1];
        let r = tokio::time::timeout(Duration::from_secs(10), extra.read(&mut buf))
            .await
            .expect("closed at once");
        assert!(matches!(r, Ok(0) | Err(_)));
        // ...while another source still gets through to the apiserver.
        let other = tokio::net::TcpSocket::new_v4().unwrap();
        other.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let mut c = other.connect(f.addr()).await.unwrap();
        let hello = client_hello("127.0.0.1");
        c.write_all(&hello).await.unwrap();
        let mut got = vec![0u8; hello.len()];
        c.read_exact(&mut got).await.unwrap();
        assert_eq!(got, hello);
        cancel.cancel();
        drop(held);
        f.join().await;
    }
}
