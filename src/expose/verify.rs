//! Client side of the routes: send the route name as SNI (so a single-port
//! front can route) while verifying the server certificate against the
//! address actually dialled, exactly as without a front.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::{ExposeError, Route};

/// Verifies every server as `name`, whatever name the handshake was opened
/// with (the route's SNI).
#[derive(Debug)]
pub struct VerifyAs {
    inner: Arc<dyn ServerCertVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for VerifyAs {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _sni: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A client TLS config whose server verifier is known, so that per-route
/// copies can wrap it.
#[derive(Debug, Clone)]
pub struct RoutedClient {
    pub config: Arc<rustls::ClientConfig>,
    pub verifier: Arc<dyn ServerCertVerifier>,
}

impl RoutedClient {
    /// The config and server name to open a connection to `host` on
    /// `route` with: SNI = the route name, verified as `host`. Session
    /// resumption is off in these copies: the ticket store would key
    /// every server under the one route name.
    pub fn for_route(
        &self,
        route: Route,
        host: ServerName<'static>,
    ) -> Result<(Arc<rustls::ClientConfig>, ServerName<'static>), ExposeError> {
        let Some(sni) = route.sni() else {
            return Ok((self.config.clone(), host));
        };
        let name =
            ServerName::try_from(sni.to_string()).map_err(|source| ExposeError::ServerName {
                route: route.as_str(),
                name: sni.to_string(),
                source,
            })?;
        let mut cfg = (*self.config).clone();
        cfg.dangerous().set_certificate_verifier(Arc::new(VerifyAs {
            inner: self.verifier.clone(),
            name: host,
        }));
        cfg.resumption = Resumption::disabled();
        Ok((Arc::new(cfg), name))
    }
}
