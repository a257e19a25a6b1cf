//! Where a listener's connections come from: a socket it binds itself, or
//! the [`super::Front`] of the single port, which hands over accepted
//! sockets (their ClientHello still unread) through a channel.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Mutex, OwnedMutexGuard};

use super::ExposeError;

/// A connection the front routed here, with its real peer address.
pub type RoutedConn = (TcpStream, SocketAddr);

/// Connections queued between the front and a listener; more are closed by
/// the front (the listener is not keeping up or not running).
pub const ROUTED_QUEUE: usize = 256;
/// How long a restarted listener waits for its previous run to let go of
/// the channel.
const TAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The receiving end of one route, shared by the runs of the listener that
/// serves it (a component that restarts takes it again).
#[derive(Debug, Clone)]
pub struct RoutedIncoming {
    rx: Arc<Mutex<mpsc::Receiver<RoutedConn>>>,
    /// The front's address, which clients dial.
    pub addr: SocketAddr,
}

impl RoutedIncoming {
    /// A route into a listener; the sender goes to the front.
    pub fn channel(addr: SocketAddr) -> (mpsc::Sender<RoutedConn>, RoutedIncoming) {
        let (tx, rx) = mpsc::channel(ROUTED_QUEUE);
        (
            tx,
            RoutedIncoming {
                rx: Arc::new(Mutex::new(rx)),
                addr,
            },
        )
    }
}

/// A listener's source of connections.
#[derive(Debug)]
pub enum Incoming {
    Bound(TcpListener),
    Routed(OwnedMutexGuard<mpsc::Receiver<RoutedConn>>),
}

impl Incoming {
    /// Binds `listen`, or takes the route when there is one. Returns the
    /// address clients reach it at.
    pub async fn open(
        what: &'static str,
        listen: SocketAddr,
        routed: Option<&RoutedIncoming>,
    ) -> Result<(Incoming, SocketAddr), ExposeError> {
        match routed {
            None => {
                let l = TcpListener::bind(listen)
                    .await
                    .map_err(|source| ExposeError::Bind {
                        addr: listen,
                        source,
                    })?;
                let addr = l.local_addr().map_err(|source| ExposeError::Bind {
                    addr: listen,
                    source,
                })?;
                Ok((Incoming::Bound(l), addr))
            }
            Some(r) => {
                let guard = tokio::time::timeout(TAKE_TIMEOUT, r.rx.clone().lock_owned())
                    .await
                    .map_err(|_| ExposeError::RoutedBusy { what })?;
                Ok((Incoming::Routed(guard), r.addr))
            }
        }
    }

    /// The next connection. A route whose front is gone never yields again.
    /// A routed socket is moved to the caller's runtime (the front accepted
    /// it on the node's): the konnectivity server serves agents on a
    /// runtime of its own, and every readiness event of a busy agent link
    /// would otherwise pass through another runtime's thread.
    pub async fn accept(&mut self) -> std::io::Result<RoutedConn> {
        match self {
            Incoming::Bound(l) => l.accept().await,
            Incoming::Routed(rx) => match rx.recv().await {
                Some((s, peer)) => Ok((TcpStream::from_std(s.into_std()?)?, peer)),
                None => std::future::pending().await,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_route_passes_sockets_and_survives_a_restart_of_its_listener() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let front = l.local_addr().unwrap();
        let (tx, route) = RoutedIncoming::channel(front);
        let (mut first, addr) = Incoming::open("test", front, Some(&route)).await.unwrap();
        assert_eq!(addr, front);
        // A second run waits for the first to let go.
        let second = tokio::spawn({
            let route = route.clone();
            async move { Incoming::open("test", front, Some(&route)).await }
        });
        let c = TcpStream::connect(front).await.unwrap();
        let (s, peer) = l.accept().await.unwrap();
        tx.send((s, peer)).await.unwrap();
        let (_, got) = first.accept().await.unwrap();
        assert_eq!(got, c.local_addr().unwrap());
        drop(first);
        let (mut second, _) = second.await.unwrap().unwrap();
        let _c2 = TcpStream::connect(front).await.unwrap();
        let (s, peer) = l.accept().await.unwrap();
        tx.send((s, peer)).await.unwrap();
        assert_eq!(second.accept().await.unwrap().1, peer);
    }

    #[tokio::test]
    async fn bound_reports_its_address() {
        let (mut inc, addr) = Incoming::open("test", "127.0.0.1:0".parse().unwrap(), None)
            .await
            .unwrap();
        assert_ne!(addr.port(), 0);
        let c = TcpStream::connect(addr).await.unwrap();
        assert_eq!(inc.accept().await.unwrap().1, c.local_addr().unwrap());
    }
}
