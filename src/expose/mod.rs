//! One-port exposure of a controller (`spec.api.exposeStrategy:
//! single-port`): the apiserver, the konnectivity agent listener and the join
//! API share one TCP port, so a worker needs just that port open towards the
//! controllers (KKP calls this its Tunneling expose strategy).
//!
//! The port is served by a [`front::Front`] that reads, without consuming
//! it, the TLS ClientHello of each connection and routes on its SNI:
//! [`JOIN_SNI`] to the join API, [`KONNECTIVITY_SNI`] to the konnectivity
//! agent listener (both in this process: the accepted socket is handed over
//! whole, so they see the real peer address and terminate TLS themselves),
//! anything else (kubectl, kubelet, pods dialling an IP send no SNI) to
//! kube-apiserver, which then listens on loopback only, over a plain TCP
//! relay. No TLS is terminated by the front: the apiserver's clients keep
//! end-to-end TLS and client-certificate authentication.
//!
//! mkectl's own clients (the join client, the konnectivity agent) always
//! send the route name as SNI and verify the server's certificate against
//! the address they dialled ([`verify::VerifyAs`]), so they work against
//! either strategy with no setting on the worker.

pub mod front;
pub mod hello;
pub mod incoming;
pub mod verify;

pub use front::{Front, FrontConfig, FrontStatus};
pub use incoming::{Incoming, RoutedConn, RoutedIncoming};

/// SNI that routes a connection to the join API.
pub const JOIN_SNI: &str = "join.mkectl.internal";
/// SNI that routes a connection to the konnectivity agent listener.
pub const KONNECTIVITY_SNI: &str = "konnectivity.mkectl.internal";

/// Where the front sends a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    ApiServer,
    Join,
    Konnectivity,
}

impl Route {
    /// The route of a ClientHello's SNI; anything unknown (no SNI, an IP, a
    /// DNS name of the apiserver) is the apiserver's.
    pub fn for_sni(sni: Option<&str>) -> Route {
        match sni {
            Some(s) if s.eq_ignore_ascii_case(JOIN_SNI) => Route::Join,
            Some(s) if s.eq_ignore_ascii_case(KONNECTIVITY_SNI) => Route::Konnectivity,
            _ => Route::ApiServer,
        }
    }

    /// The SNI mkectl's clients send for this route (none for the apiserver,
    /// whose clients are kubelet, kubectl and friends).
    pub fn sni(self) -> Option<&'static str> {
        match self {
            Route::ApiServer => None,
            Route::Join => Some(JOIN_SNI),
            Route::Konnectivity => Some(KONNECTIVITY_SNI),
        }
    }

    /// Label value in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Route::ApiServer => "apiserver",
            Route::Join => "join",
            Route::Konnectivity => "konnectivity",
        }
    }
}

/// Errors of the front listener.
#[derive(Debug, thiserror::Error)]
pub enum ExposeError {
    #[error("bind {addr}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: the routed listener is still held by a previous run")]
    RoutedBusy { what: &'static str },
    #[error("server name {name:?} for the {route} route")]
    ServerName {
        route: &'static str,
        name: String,
        #[source]
        source: rustls_pki_types::InvalidDnsNameError,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_follow_the_sni() {
        assert_eq!(Route::for_sni(None), Route::ApiServer);
        assert_eq!(Route::for_sni(Some("kubernetes")), Route::ApiServer);
        assert_eq!(Route::for_sni(Some(JOIN_SNI)), Route::Join);
        assert_eq!(
            Route::for_sni(Some("Konnectivity.MKECTL.internal")),
            Route::Konnectivity
        );
        assert_eq!(
            Route::for_sni(Some("x.join.mkectl.internal")),
            Route::ApiServer
        );
        for r in [Route::ApiServer, Route::Join, Route::Konnectivity] {
            assert_eq!(Route::for_sni(r.sni()), r);
        }
    }
}
