//! TLS for the join API, ring provider only.
//!
//! * Server: a serving certificate from the cluster CA, issued in memory at
//!   start and reissued before it expires ([`ServingCert`]); the chain sent
//!   includes the cluster CA so a joining node can check it against its pin.
//!   Client certificates are optional: an etcd-CA certificate identifies a
//!   controller, a konnectivity-CA certificate a worker's agent ([`Peer`]).
//! * Client: either a pinned CA ([`PinnedCaVerifier`], before the joining
//!   side has the CA) or the cluster CA file (after joining).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, OtherError, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use super::JoinError;
use crate::pki::{self, Ca, KeyType};

/// The one crypto provider (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_err(what: impl Into<String>, reason: impl std::fmt::Display) -> JoinError {
    JoinError::Tls {
        what: what.into(),
        reason: reason.to_string(),
    }
}

/// Every certificate of a PEM text.
pub fn certs_from_pem(what: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, JoinError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_err(what, e))?;
    if certs.is_empty() {
        return Err(tls_err(what, "no certificate found"));
    }
    Ok(certs)
}

fn read_file(path: &Path) -> Result<Vec<u8>, JoinError> {
    Ok(crate::fsutil::read(path)?)
}

/// The pin check failed: the chain the server sent holds no certificate
/// whose public key matches the token's pin.
#[derive(Debug)]
pub struct PinError {
    pub detail: String,
}

impl std::fmt::Display for PinError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)
    }
}

impl std::error::Error for PinError {}

/// Finds the [`PinError`] inside a failed TLS connection's error, if any.
pub fn pin_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a PinError> {
    let mut cur: Option<&'a (dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(p) = err.downcast_ref::<PinError>() {
            return Some(p);
        }
        if let Some(rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner)))) =
            err.downcast_ref::<rustls::Error>()
        {
            if let Some(p) = inner.downcast_ref::<PinError>() {
                return Some(p);
            }
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref() {
                if let Some(p) = pin_error(inner) {
                    return Some(p);
                }
            }
        }
        cur = err.source();
    }
    None
}

/// Verifies a server against the CA pinned by a join token: a certificate
/// of the presented chain must have the pinned SPKI hash, and the serving
/// certificate must chain to exactly that CA for the name dialled (normal
/// WebPKI checks: signature, validity, serverAuth, SAN). Never trusts on
/// first use.
#[derive(Debug)]
pub struct PinnedCaVerifier {
    pin: String,
    provider: Arc<CryptoProvider>,
}

impl PinnedCaVerifier {
    pub fn new(pin: &str) -> Self {
        Self {
            pin: pin.to_ascii_lowercase(),
            provider: provider(),
        }
    }
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut seen = Vec::new();
        let mut pinned = None;
        for c in intermediates {
            match pki::spki_sha256_der(c) {
                Ok(p) if p.eq_ignore_ascii_case(&self.pin) => {
                    pinned = Some(c.clone().into_owned());
                    break;
                }
                Ok(p) => seen.push(p),
                Err(_) => seen.push("<unparseable certificate>".into()),
            }
        }
        let Some(ca) = pinned else {
            let detail = if seen.is_empty() {
                "the server sent no CA certificate with its own".to_string()
            } else {
                format!("the server presents a CA with {}", seen.join(", "))
            };
            return Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(PinError { detail })),
            )));
        };
        let mut roots = RootCertStore::empty();
        roots
            .add(ca)
            .map_err(|e| rustls::Error::General(format!("pinned CA unusable: {e}")))?;
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        verifier.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// How a client trusts the join API.
#[derive(Debug, Clone)]
pub enum Trust {
    /// `sha256:<hex>` from a join token.
    Pin(String),
    /// The cluster CA certificate (PEM), once the node has it.
    CaPem(Vec<u8>),
}

/// A client certificate and key (PEM files).
#[derive(Debug, Clone)]
pub struct ClientIdentity {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A client config for the join API (HTTP/1.1), with its verifier at hand
/// so that connections send the join route name as SNI
/// ([`crate::expose`]).
pub fn client_config(
    trust: &Trust,
    identity: Option<&ClientIdentity>,
) -> Result<crate::expose::verify::RoutedClient, JoinError> {
    let verifier: Arc<dyn ServerCertVerifier> = match trust {
        Trust::Pin(pin) => Arc::new(PinnedCaVerifier::new(pin)),
        Trust::CaPem(pem) => {
            let mut roots = RootCertStore::empty();
            for c in certs_from_pem("cluster CA", pem)? {
                roots.add(c).map_err(|e| tls_err("cluster CA", e))?;
            }
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| tls_err("cluster CA", e))?
        }
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err("client config", e))?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone());
    let mut cfg = match identity {
        None => builder.with_no_client_auth(),
        Some(id) => {
            let certs = certs_from_pem(&id.cert.display().to_string(), &read_file(&id.cert)?)?;
            let key = PrivateKeyDer::from_pem_slice(&read_file(&id.key)?)
                .map_err(|e| tls_err(id.key.display().to_string(), e))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| tls_err(id.key.display().to_string(), e))?
        }
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(crate::expose::verify::RoutedClient {
        config: Arc::new(cfg),
        verifier,
    })
}

/// What the join API's serving certificate is issued from.
#[derive(Debug, Clone)]
pub struct ServingSpec {
    pub pki_dir: PathBuf,
    /// IP addresses and DNS names (node addresses, node name, 127.0.0.1).
    pub sans: Vec<String>,
    pub lifetime: Duration,
    pub renew_before: Duration,
    pub key_type: KeyType,
}

/// Common name of the join API's serving certificate.
pub const SERVING_CN: &str = "mkectl-join-api";

struct Issued {
    key: Arc<CertifiedKey>,
    not_after: SystemTime,
}

/// The join API's serving certificate: issued in memory from the cluster CA
/// (its key never touches the disk), reissued by [`ServingCert::renew_if_due`].
pub struct ServingCert {
    spec: ServingSpec,
    current: RwLock<Arc<CertifiedKey>>,
    not_after: Mutex<SystemTime>,
}

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCert")
            .field("sans", &self.spec.sans)
            .finish_non_exhaustive()
    }
}

fn issue(spec: &ServingSpec) -> Result<Issued, JoinError> {
    let issued = pki::issue_server_cert(
        &spec.pki_dir,
        Ca::Cluster,
        SERVING_CN,
        &spec.sans,
        spec.lifetime,
        spec.key_type,
    )?;
    let ca_path = pki::PkiPaths::new(&spec.pki_dir).ca.cert;
    let mut chain = certs_from_pem("join API certificate", issued.cert_pem.as_bytes())?;
    chain.extend(certs_from_pem(
        &ca_path.display().to_string(),
        &read_file(&ca_path)?,
    )?);
    let not_after = {
        use x509_parser::prelude::{FromDer, X509Certificate};
        let (_, c) =
            X509Certificate::from_der(&chain[0]).map_err(|e| tls_err("join API certificate", e))?;
        let secs = c.validity().not_after.timestamp().max(0) as u64;
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    };
    let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes())
        .map_err(|e| tls_err("join API key", e))?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| tls_err("join API key", e))?;
    Ok(Issued {
        key: Arc::new(CertifiedKey::new(chain, signing)),
        not_after,
    })
}

impl ServingCert {
    pub fn issue(spec: ServingSpec) -> Result<Self, JoinError> {
        let first = issue(&spec)?;
        Ok(Self {
            spec,
            current: RwLock::new(first.key),
            not_after: Mutex::new(first.not_after),
        })
    }

    /// Reissues the certificate when it expires within `renew_before`.
    /// Returns whether it did. Connections made afterwards get the new one.
    pub fn renew_if_due(&self) -> Result<bool, JoinError> {
        let due = {
            let na = *self.not_after.lock().unwrap_or_else(|p| p.into_inner());
            SystemTime::now() + self.spec.renew_before >= na
        };
        if !due {
            return Ok(false);
        }
        let next = issue(&self.spec)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = next.key;
        *self.not_after.lock().unwrap_or_else(|p| p.into_inner()) = next.not_after;
        Ok(true)
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

/// The server config: the resolver's certificate, client certificates
/// optional but verified against the etcd and konnectivity CAs when sent.
pub fn server_config(
    cert: Arc<ServingCert>,
    client_cas: &[PathBuf],
) -> Result<Arc<rustls::ServerConfig>, JoinError> {
    let mut roots = RootCertStore::empty();
    for path in client_cas {
        for c in certs_from_pem(&path.display().to_string(), &read_file(path)?)? {
            roots
                .add(c)
                .map_err(|e| tls_err(path.display().to_string(), e))?;
        }
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| tls_err("client verifier", e))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err("server config", e))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert);
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Who is on the other end of a join API connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// No client certificate (joining nodes use a bearer token).
    Anonymous,
    /// A certificate from the etcd CA: a controller (common name = node name).
    Controller(String),
    /// A certificate from the konnectivity CA: a worker's agent.
    Agent(String),
}

/// DER of the two CAs client certificates are told apart by.
#[derive(Debug, Clone)]
pub struct PeerCas {
    pub etcd: Vec<u8>,
    pub konnectivity: Vec<u8>,
}

impl PeerCas {
    pub fn load(etcd_ca: &Path, konnectivity_ca: &Path) -> Result<Self, JoinError> {
        let first = |p: &Path| -> Result<Vec<u8>, JoinError> {
            Ok(certs_from_pem(&p.display().to_string(), &read_file(p)?)?[0].to_vec())
        };
        Ok(Self {
            etcd: first(etcd_ca)?,
            konnectivity: first(konnectivity_ca)?,
        })
    }

    /// Classifies a client certificate rustls already verified against one
    /// of the two CAs.
    pub fn identify(&self, leaf: Option<&CertificateDer<'_>>) -> Peer {
        use x509_parser::prelude::{FromDer, X509Certificate};
        let Some(leaf) = leaf else {
            return Peer::Anonymous;
        };
        let Ok((_, cert)) = X509Certificate::from_der(leaf) else {
            return Peer::Anonymous;
        };
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|a| a.as_str().ok())
            .unwrap_or_default()
            .to_string();
        let signed_by = |ca_der: &[u8]| -> bool {
            X509Certificate::from_der(ca_der)
                .map(|(_, ca)| cert.verify_signature(Some(ca.public_key())).is_ok())
                .unwrap_or(false)
        };
        if signed_by(&self.etcd) {
            Peer::Controller(cn)
        } else if signed_by(&self.konnectivity) {
            Peer::Agent(cn)
        } else {
            Peer::Anonymous
        }
    }
}

/// The server name to verify for `https://host:port` (IPv6 in brackets).
pub fn server_name(endpoint: &str) -> Result<ServerName<'static>, JoinError> {
    let (host, _) = split_host_port(endpoint)?;
    ServerName::try_from(host.clone()).map_err(|e| tls_err(endpoint, e))
}

/// `(host, port)` of an `https://host:port[/...]` URL.
pub fn split_host_port(endpoint: &str) -> Result<(String, u16), JoinError> {
    let bad = |reason: &str| JoinError::Protocol {
        endpoint: endpoint.to_string(),
        reason: reason.to_string(),
    };
    let rest = endpoint
        .strip_prefix("https://")
        .ok_or_else(|| bad("not an https:// URL"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
        (h, after.strip_prefix(':').unwrap_or("443"))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, p),
            None => (authority, "443"),
        }
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let port = port.parse().map_err(|_| bad("bad port"))?;
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_split() {
        assert_eq!(
            split_host_port("https://127.0.0.2:9443").unwrap(),
            ("127.0.0.2".into(), 9443)
        );
        assert_eq!(
            split_host_port("https://[::1]:9443/x").unwrap(),
            ("::1".into(), 9443)
        );
        assert_eq!(
            split_host_port("https://example.com").unwrap(),
            ("example.com".into(), 443)
        );
        assert!(split_host_port("http://x:1").is_err());
        assert!(split_host_port("https://:1").is_err());
        assert!(split_host_port("https://x:99999").is_err());
    }
}
