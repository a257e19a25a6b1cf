//! Stand-in apiservers for the node-local balancer's tests and benchmark:
//! rustls + hyper servers on 127.0.0.1 with the apiserver serving
//! certificate of a PKI made by mkectl's own `pki::ensure`, asking for a
//! client certificate from the cluster CA (optional at the TLS level and
//! answered 401 when absent, as kube-apiserver does), answering
//! `/readyz` with a status the test sets, `/id` with the backend's name and
//! `POST /echo` with the request body.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use mkectl::pki::{self, PkiPaths, PkiSpec};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A cluster PKI in `dir` (mkectl's own), returning its paths.
pub fn make_pki(dir: &Path) -> PkiPaths {
    let pki_dir = dir.join("pki");
    pki::ensure(&PkiSpec::new(&pki_dir, "controller-1")).expect("pki");
    PkiPaths::new(&pki_dir)
}

/// Writes a fresh client certificate from `ca` (cert and key in one PEM
/// file, as the kubelet's `kubelet-client-current.pem`) to `path`,
/// atomically (rename), as a rotation does.
pub fn write_client_cert(pki: &PkiPaths, ca: pki::Ca, cn: &str, path: &Path) {
    let issued = pki::issue_client_cert(
        &pki.dir,
        ca,
        cn,
        &[],
        std::time::Duration::from_secs(3600),
        pki::KeyType::default(),
    )
    .expect("issue client cert");
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{}{}", issued.cert_pem, issued.key_pem)).expect("write cert");
    std::fs::rename(&tmp, path).expect("rename cert");
}

fn server_config(pki: &PkiPaths) -> Arc<rustls::ServerConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&pki.ca.cert).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .allow_unauthenticated()
            .build()
            .unwrap();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&pki.apiserver.cert)
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(&pki.apiserver.key).unwrap();
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

fn common_name(der: &[u8]) -> Option<String> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, c) = X509Certificate::from_der(der).ok()?;
    let cn = c.subject().iter_common_name().next()?.as_str().ok()?;
    Some(cn.to_string())
}

/// One stand-in apiserver.
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    /// Status `/readyz` answers with.
    pub readyz: Arc<AtomicU16>,
    /// Common name of the client certificate the last `/readyz` came with.
    pub last_probe_cn: Arc<Mutex<Option<String>>>,
    /// Requests served other than `/readyz`.
    pub served: Arc<AtomicU64>,
    /// `/readyz` requests answered.
    pub probes: Arc<AtomicU64>,
    /// Closes the listener (new connections refused), open ones continue.
    stop_accepting: CancellationToken,
    /// Also drops every open connection (the process died).
    kill: CancellationToken,
    accept_loop: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Backend {
    /// Starts on 127.0.0.1 with a free port.
    pub async fn start(name: &str, pki: &PkiPaths) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(name, pki, listener)
    }

    fn serve(name: &str, pki: &PkiPaths, listener: TcpListener) -> Backend {
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(server_config(pki));
        let b = Backend {
            name: name.to_string(),
            addr,
            readyz: Arc::new(AtomicU16::new(200)),
            last_probe_cn: Arc::new(Mutex::new(None)),
            served: Arc::new(AtomicU64::new(0)),
            probes: Arc::new(AtomicU64::new(0)),
            stop_accepting: CancellationToken::new(),
            kill: CancellationToken::new(),
            accept_loop: Mutex::new(None),
        };
        let (stop, kill) = (b.stop_accepting.clone(), b.kill.clone());
        let (readyz, last_cn, served, probes) = (
            b.readyz.clone(),
            b.last_probe_cn.clone(),
            b.served.clone(),
            b.probes.clone(),
        );
        let name = b.name.clone();
        let task = tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let kill = kill.clone();
                let (readyz, last_cn, served, probes, name) = (
                    readyz.clone(),
                    last_cn.clone(),
                    served.clone(),
                    probes.clone(),
                    name.clone(),
                );
                tokio::spawn(async move {
                    let conn = async move {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let cn = tls
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .and_then(|c| common_name(c));
                        let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                            let (readyz, last_cn, served, probes, name, cn) = (
                                readyz.clone(),
                                last_cn.clone(),
                                served.clone(),
                                probes.clone(),
                                name.clone(),
                                cn.clone(),
                            );
                            async move {
                                let path = req.uri().path().to_string();
                                let (status, body) = if cn.is_none() {
                                    (401, Bytes::from_static(b"Unauthorized"))
                                } else if path == "/readyz" {
                                    probes.fetch_add(1, Ordering::Relaxed);
                                    *last_cn.lock().unwrap() = cn.clone();
                                    let s = readyz.load(Ordering::Relaxed);
                                    (
                                        s,
                                        Bytes::from(if s == 200 { "ok" } else { "[-]etcd failed" }),
                                    )
                                } else if path == "/id" {
                                    served.fetch_add(1, Ordering::Relaxed);
                                    (200, Bytes::from(name))
                                } else if path == "/echo" {
                                    served.fetch_add(1, Ordering::Relaxed);
                                    let body = req.into_body().collect().await?.to_bytes();
                                    (200, body)
                                } else {
                                    (404, Bytes::new())
                                };
                                let resp = hyper::Response::builder()
                                    .status(status)
                                    .body(Full::new(body))
                                    .unwrap();
                                Ok::<_, hyper::Error>(resp)
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                            .await;
                    };
                    tokio::select! {
                        _ = kill.cancelled() => {}
                        _ = conn => {}
                    }
                });
            }
        });
        *b.accept_loop.lock().unwrap() = Some(task);
        b
    }

    /// New connections are refused from when this returns (the listener is
    /// closed); open ones continue.
    pub async fn stop_accepting(&self) {
        self.stop_accepting.cancel();
        let task = self.accept_loop.lock().unwrap().take();
        if let Some(t) = task {
            let _ = t.await;
        }
    }

    /// The process died: listener closed and every open connection dropped.
    pub async fn kill(&self) {
        self.kill.cancel();
        self.stop_accepting().await;
    }
}

/// TLS client settings as a node client (kubelet) uses them.
pub fn client_tls(ca: &Path, cert: &Path, key: &Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// An HTTP/1.1 connection over TLS to `addr`, verifying the server as
/// `127.0.0.1` (the SAN the apiserver certificate carries for local use).
pub struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    driver: tokio::task::JoinHandle<()>,
}

impl Conn {
    pub async fn open(addr: SocketAddr, tls: Arc<rustls::ClientConfig>) -> Result<Conn, BoxError> {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
        let tls = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn { sender, driver })
    }

    /// One request; the status and body.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Bytes,
    ) -> Result<(u16, Bytes), BoxError> {
        self.sender.ready().await?;
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "127.0.0.1")
            .body(Full::new(body))?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    pub async fn get(&mut self, path: &str) -> Result<(u16, Bytes), BoxError> {
        self.request("GET", path, Bytes::new()).await
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// One request on a new connection.
pub async fn get_once(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    path: &str,
) -> Result<(u16, Bytes), BoxError> {
    let mut c = Conn::open(addr, tls).await?;
    c.get(path).await
}
