//! HTTPS readiness probes for the kube components: one `GET` over TLS (rustls
//! with ring) that counts as ready on a 2xx answer.
//!
//! How the server is trusted depends on what it serves:
//! * [`ServerTrust::CaFile`]: the apiserver's certificate chains to the
//!   cluster CA and names the probed address; the probe presents the admin
//!   client certificate, as `kubectl` would.
//! * [`ServerTrust::PinnedCertFile`]: kube-controller-manager and
//!   kube-scheduler serve a self-signed certificate they generate into their
//!   `--cert-dir`. No CA vouches for it, so the probe trusts exactly that
//!   certificate (the first one in the file) and nothing else: a different
//!   process squatting on the port fails the handshake. The handshake
//!   signature is still verified against the pinned certificate's key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// Default bound on one probe (connect, handshake, request, body).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// At most this much of a failing response body is kept for the message.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{path} holds no certificate")]
    NoCertificate { path: PathBuf },
    #[error("TLS client configuration")]
    Config(#[from] rustls::Error),
    #[error("cannot connect to {addr}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS handshake with {addr} failed")]
    Handshake {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP exchange with {addr} failed")]
    Http {
        addr: SocketAddr,
        source: hyper::Error,
    },
    #[error("GET {path} on {addr} answered {status}: {body}")]
    Status {
        addr: SocketAddr,
        path: String,
        status: http::StatusCode,
        body: String,
    },
    #[error("probe of {addr} timed out after {after:?}")]
    Timeout { addr: SocketAddr, after: Duration },
}

/// How the probed server's certificate is trusted (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerTrust {
    /// Chain to the CA(s) in this PEM file and match the server name.
    CaFile(PathBuf),
    /// Accept exactly the first certificate in this PEM file.
    PinnedCertFile(PathBuf),
}

/// A client certificate and key (PEM files) to present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// One HTTPS readiness check.
#[derive(Debug, Clone)]
pub struct HttpsProbe {
    pub addr: SocketAddr,
    pub path: String,
    pub trust: ServerTrust,
    pub client: Option<ClientIdentity>,
    pub timeout: Duration,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ProbeError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|source| ProbeError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(ProbeError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// Builds the rustls client configuration of a probe (also used by tests and
/// the stand-in's checks).
pub fn client_config(
    trust: &ServerTrust,
    client: Option<&ClientIdentity>,
) -> Result<rustls::ClientConfig, ProbeError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match trust {
        ServerTrust::CaFile(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in read_certs(ca)? {
                roots.add(c)?;
            }
            builder.with_root_certificates(roots)
        }
        ServerTrust::PinnedCertFile(file) => {
            let pinned = read_certs(file)?.swap_remove(0);
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinnedCert { pinned, provider }))
        }
    };
    Ok(match client {
        Some(id) => {
            let certs = read_certs(&id.cert)?;
            let key = PrivateKeyDer::from_pem_file(&id.key).map_err(|source| ProbeError::Read {
                path: id.key.clone(),
                source,
            })?;
            builder.with_client_auth_cert(certs, key)?
        }
        None => builder.with_no_client_auth(),
    })
}

impl HttpsProbe {
    /// Runs the probe once, bounded by `timeout`.
    pub async fn check(&self) -> Result<(), ProbeError> {
        match tokio::time::timeout(self.timeout, self.exchange()).await {
            Ok(r) => r,
            Err(_) => Err(ProbeError::Timeout {
                addr: self.addr,
                after: self.timeout,
            }),
        }
    }

    async fn exchange(&self) -> Result<(), ProbeError> {
        let config = client_config(&self.trust, self.client.as_ref())?;
        let addr = self.addr;
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|source| ProbeError::Connect { addr, source })?;
        let name = ServerName::IpAddress(addr.ip().into());
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|source| ProbeError::Handshake { addr, source })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|source| ProbeError::Http { addr, source })?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = http::Request::get(self.path.as_str())
            .header(http::header::HOST, addr.to_string())
            .body(Empty::<Bytes>::new())
            .map_err(|e| ProbeError::Status {
                addr,
                path: self.path.clone(),
                status: http::StatusCode::BAD_REQUEST,
                body: e.to_string(),
            })?;
        let result = async {
            let resp = sender
                .send_request(req)
                .await
                .map_err(|source| ProbeError::Http { addr, source })?;
            let status = resp.status();
            if status.is_success() {
                return Ok(());
            }
            let body = match Limited::new(resp.into_body(), MAX_BODY_BYTES)
                .collect()
                .await
            {
                Ok(b) => String::from_utf8_lossy(&b.to_bytes()).trim().to_string(),
                Err(_) => "(body unreadable or too large)".to_string(),
            };
            Err(ProbeError::Status {
                addr,
                path: self.path.clone(),
                status,
                body,
            })
        }
        .await;
        driver.abort();
        result
    }
}

/// Accepts exactly one certificate; signatures are checked with ring.
#[derive(Debug)]
struct PinnedCert {
    pinned: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.pinned.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
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
        verify_tls13_signature(
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

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A self-signed server on 127.0.0.1 that answers every request with
    /// `status`; returns its address and certificate PEM.
    async fn server(status: &'static str) -> (SocketAddr, String) {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let pem = cert.pem();
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = vec![0u8; 4096];
                    let _ = tls.read(&mut buf).await;
                    let body = "[-]etcd failed";
                    let resp = format!(
                        "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tls.write_all(resp.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        (addr, pem)
    }

    fn probe(addr: SocketAddr, trust: ServerTrust) -> HttpsProbe {
        HttpsProbe {
            addr,
            path: "/healthz".into(),
            trust,
            client: None,
            timeout: PROBE_TIMEOUT,
        }
    }

    #[tokio::test]
    async fn pinned_certificate_is_accepted_and_others_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (addr, pem) = server("200 OK").await;
        let pinned = tmp.path().join("pinned.crt");
        std::fs::write(&pinned, &pem).unwrap();
        probe(addr, ServerTrust::PinnedCertFile(pinned.clone()))
            .check()
            .await
            .unwrap();
        // The same file used as a CA works too here (self-signed, right SAN).
        probe(addr, ServerTrust::CaFile(pinned))
            .check()
            .await
            .unwrap();

        // Another server's certificate must not satisfy the pin.
        let (_, other_pem) = server("200 OK").await;
        let other = tmp.path().join("other.crt");
        std::fs::write(&other, other_pem).unwrap();
        let e = probe(addr, ServerTrust::PinnedCertFile(other))
            .check()
            .await
            .unwrap_err();
        assert!(matches!(e, ProbeError::Handshake { .. }), "{e}");
    }

    #[tokio::test]
    async fn non_2xx_reports_status_and_body() {
        let tmp = tempfile::tempdir().unwrap();
        let (addr, pem) = server("500 Internal Server Error").await;
        let pinned = tmp.path().join("p.crt");
        std::fs::write(&pinned, pem).unwrap();
        let e = probe(addr, ServerTrust::PinnedCertFile(pinned))
            .check()
            .await
            .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("500") && msg.contains("etcd failed"), "{msg}");
    }

    #[tokio::test]
    async fn missing_files_and_closed_ports_are_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let e = probe(addr, ServerTrust::PinnedCertFile(tmp.path().join("none")))
            .check()
            .await
            .unwrap_err();
        assert!(matches!(e, ProbeError::Read { .. }), "{e}");
        std::fs::write(tmp.path().join("empty"), "").unwrap();
        let e = probe(addr, ServerTrust::CaFile(tmp.path().join("empty")))
            .check()
            .await
            .unwrap_err();
        assert!(matches!(e, ProbeError::NoCertificate { .. }), "{e}");
    }
}
