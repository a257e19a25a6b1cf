//! TLS material for the agent listener (server side, client certificate
//! required) and for agents dialling it. Always the ring provider.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::KonnectivityError;

/// Paths of one TLS identity plus the CA that authenticates the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain presented to peers.
    pub cert: PathBuf,
    /// PEM private key of `cert` (never logged).
    pub key: PathBuf,
    /// PEM CA bundle that peers' certificates must chain to.
    pub ca: PathBuf,
}

/// ring, with AES-128-GCM preferred over AES-256-GCM (as Go's TLS does
/// on hardware with AES instructions): the tunnel encrypts every byte, and
/// AES-128 does fewer rounds. Peers still negotiate any suite both allow.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    let preferred = [
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256,
        rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    ];
    p.cipher_suites
        .sort_by_key(|s| !preferred.contains(&s.suite()));
    Arc::new(p)
}

fn tls_err(path: &Path, reason: impl std::fmt::Display) -> KonnectivityError {
    KonnectivityError::Tls {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Reads every certificate of a PEM file; an empty file is an error.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, KonnectivityError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| tls_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_err(path, e))?;
    if certs.is_empty() {
        return Err(tls_err(path, "no certificate found"));
    }
    Ok(certs)
}

/// Reads the first private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, KonnectivityError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| tls_err(path, e))
}

/// Builds a root store from a PEM CA bundle.
pub fn load_roots(path: &Path) -> Result<RootCertStore, KonnectivityError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| tls_err(path, e))?;
    }
    Ok(roots)
}

/// Server config for an mTLS listener: the client must present a
/// certificate chaining to `files.ca`; ALPN offers `h2` (gRPC) or, for
/// HTTP-CONNECT over TCP, `http/1.1` only.
pub fn server_config(
    files: &TlsFiles,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ServerConfig>, KonnectivityError> {
    let roots = Arc::new(load_roots(&files.ca)?);
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| tls_err(&files.ca, e))?;
    let certs = load_certs(&files.cert)?;
    let key = load_key(&files.key)?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(&files.cert, e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| tls_err(&files.key, e))?;
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// Client config with a client certificate, trusting only `files.ca`.
pub fn client_config(
    files: &TlsFiles,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ClientConfig>, KonnectivityError> {
    Ok(routed_client_config(files, alpn)?.config)
}

/// [`client_config`] with its verifier at hand, so that connections can
/// send the konnectivity route name as SNI ([`crate::expose`]).
pub fn routed_client_config(
    files: &TlsFiles,
    alpn: &[&[u8]],
) -> Result<crate::expose::verify::RoutedClient, KonnectivityError> {
    let roots = load_roots(&files.ca)?;
    let certs = load_certs(&files.cert)?;
    let key = load_key(&files.key)?;
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| tls_err(&files.ca, e))?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(&files.cert, e))?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_client_auth_cert(certs, key)
        .map_err(|e| tls_err(&files.key, e))?;
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(crate::expose::verify::RoutedClient {
        config: Arc::new(cfg),
        verifier,
    })
}
