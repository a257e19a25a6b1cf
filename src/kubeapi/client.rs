//! The connection to kube-apiserver: a keep-alive HTTP/1.1 pool (hyper-util)
//! over rustls with ring, authenticated by client certificate or bearer
//! token, and one bounded request/response.
//!
//! HTTP/1.1 rather than HTTP/2: a watch then holds its own connection and a
//! slow watch never delays the calls beside it; the pool reuses the others.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::error::{KubeClientError, KubeError, Status};

/// Bound on one call (connect, request, whole response) unless it is a watch.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on connecting (TCP and TLS handshake).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest response body read (a list of every CSR or object of a type).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;
/// Idle pooled connections are closed after this long.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// At most this much of a non-Status error body goes into the message.
const MAX_ERROR_TEXT: usize = 512;

/// What a client needs to reach one apiserver (from a kubeconfig).
#[derive(Clone, Default)]
pub struct ClientConfig {
    /// `https://host:port` (or `http://` for a plain test server).
    pub server: String,
    /// PEM CA bundle the server's certificate must chain to.
    pub ca_pem: Option<Vec<u8>>,
    pub client_cert_pem: Option<Vec<u8>>,
    pub client_key_pem: Option<Vec<u8>>,
    pub token: Option<String>,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Key material and tokens are never printed.
        f.debug_struct("ClientConfig")
            .field("server", &self.server)
            .field("ca", &self.ca_pem.is_some())
            .field("client_cert", &self.client_cert_pem.is_some())
            .field("token", &self.token.as_ref().map(|_| "[elided]"))
            .finish()
    }
}

impl ClientConfig {
    /// A plain-HTTP server without credentials (test API servers on loopback).
    pub fn plain(server: impl Into<String>) -> Self {
        Self {
            server: server.into(),
            ..Default::default()
        }
    }
}

/// A cheap-to-clone handle on one apiserver's connection pool.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    /// `scheme://authority`, no trailing slash.
    base: String,
    http: hyper_util::client::legacy::Client<Connector, Full<Bytes>>,
    authorization: Option<HeaderValue>,
    timeout: Duration,
}

impl Client {
    pub fn new(cfg: ClientConfig) -> Result<Self, KubeClientError> {
        let server_err = |message: String| KubeClientError::Server {
            server: cfg.server.clone(),
            message,
        };
        let uri: Uri = cfg
            .server
            .trim_end_matches('/')
            .parse()
            .map_err(|e: http::uri::InvalidUri| server_err(e.to_string()))?;
        let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
            return Err(server_err("needs a scheme and a host".into()));
        };
        if uri.path() != "/" && !uri.path().is_empty() {
            return Err(server_err("a path prefix is not supported".into()));
        }
        let tls = match scheme {
            "https" => {
                let name = ServerName::try_from(authority.host().trim_matches(['[', ']']))
                    .map_err(|e| server_err(e.to_string()))?
                    .to_owned();
                Some((Arc::new(tls_config(&cfg)?), name))
            }
            "http" => None,
            other => return Err(server_err(format!("unknown scheme {other}"))),
        };
        let authorization = match &cfg.token {
            Some(t) => Some(
                HeaderValue::from_str(&format!("Bearer {t}"))
                    .map(|mut v| {
                        v.set_sensitive(true);
                        v
                    })
                    .map_err(|_| KubeClientError::Token {
                        server: cfg.server.clone(),
                    })?,
            ),
            None => None,
        };
        let connector = Connector {
            tls: tls.map(|(config, name)| (tokio_rustls::TlsConnector::from(config), name)),
        };
        let http = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(connector);
        Ok(Self {
            inner: Arc::new(Inner {
                base: format!("{scheme}://{authority}"),
                http,
                authorization,
                timeout: DEFAULT_REQUEST_TIMEOUT,
            }),
        })
    }

    /// The server this client talks to (`scheme://host:port`).
    pub fn server(&self) -> &str {
        &self.inner.base
    }

    /// Sends one request and returns the response once its headers arrived
    /// with a success status; an error status is read into
    /// [`KubeError::Api`]. `path` includes the query.
    pub(crate) async fn send(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<Response<Incoming>, KubeError> {
        let call = || format!("{method} {path}");
        let mut req = Request::builder()
            .method(method.clone())
            .uri(format!("{}{path}", self.inner.base))
            .header(http::header::ACCEPT, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("mkectl/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(ct) = content_type {
            req = req.header(http::header::CONTENT_TYPE, ct);
        }
        if let Some(auth) = &self.inner.authorization {
            req = req.header(http::header::AUTHORIZATION, auth.clone());
        }
        let req = req
            .body(Full::new(body))
            .map_err(|source| KubeError::Request {
                call: call(),
                source: Box::new(source),
            })?;
        let resp = tokio::time::timeout(self.inner.timeout, self.inner.http.request(req))
            .await
            .map_err(|_| KubeError::Timeout {
                call: call(),
                after: self.inner.timeout,
            })?
            .map_err(|source| KubeError::Transport {
                call: call(),
                source: Box::new(source),
            })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body = tokio::time::timeout(self.inner.timeout, read_body(resp.into_body()))
            .await
            .unwrap_or_else(|_| Ok(Bytes::new()))
            .unwrap_or_default();
        Err(KubeError::Api {
            call: call(),
            status: Box::new(status_of(status, &body)),
        })
    }

    /// One call whose JSON answer is decoded into `T`.
    pub(crate) async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<T, KubeError> {
        let call = || format!("{method} {path}");
        let timeout = self.inner.timeout;
        let exchange = async {
            let resp = self.send(method.clone(), path, content_type, body).await?;
            read_body(resp.into_body())
                .await
                .map_err(|source| KubeError::Body {
                    call: call(),
                    source,
                })
        };
        let bytes = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| KubeError::Timeout {
                call: call(),
                after: timeout,
            })??;
        serde_json::from_slice(&bytes).map_err(|source| KubeError::Decode {
            call: call(),
            source,
        })
    }
}

async fn read_body(body: Incoming) -> Result<Bytes, Box<dyn std::error::Error + Send + Sync>> {
    Ok(Limited::new(body, MAX_RESPONSE_BYTES)
        .collect()
        .await?
        .to_bytes())
}

/// The apiserver's `Status` from an error body, or one made from the HTTP
/// status and the start of the body when it sent something else.
fn status_of(code: StatusCode, body: &[u8]) -> Status {
    match serde_json::from_slice::<Status>(body) {
        Ok(mut s) if !s.message.is_empty() || !s.reason.is_empty() => {
            s.code = code.as_u16();
            s
        }
        _ => {
            let text = String::from_utf8_lossy(body);
            let mut message: String = text.trim().chars().take(MAX_ERROR_TEXT).collect();
            if message.is_empty() {
                message = "(empty body)".into();
            }
            Status {
                code: code.as_u16(),
                reason: code.canonical_reason().unwrap_or("").to_string(),
                message,
            }
        }
    }
}

/// rustls with ring: the cluster CA only (no system roots), TLS 1.2+, the
/// client certificate when the kubeconfig has one.
fn tls_config(cfg: &ClientConfig) -> Result<rustls::ClientConfig, KubeClientError> {
    let tls_err = |source| KubeClientError::Tls {
        server: cfg.server.clone(),
        source,
    };
    let pem = |what: &str, expected| KubeClientError::Pem {
        what: format!("{what} for {}", cfg.server),
        expected,
    };
    // Every certificate of a PEM text; none is an error.
    let certs = |what: &str, text: &[u8]| {
        CertificateDer::pem_slice_iter(text)
            .collect::<Result<Vec<CertificateDer<'static>>, _>>()
            .ok()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| pem(what, "certificate"))
    };
    let Some(ca) = &cfg.ca_pem else {
        return Err(KubeClientError::Server {
            server: cfg.server.clone(),
            message: "https needs the cluster CA (certificate-authority-data)".into(),
        });
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in certs("the CA", ca)? {
        roots.add(c).map_err(tls_err)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
    .map_err(tls_err)?
    .with_root_certificates(roots);
    let mut config = match (&cfg.client_cert_pem, &cfg.client_key_pem) {
        (Some(cert), Some(key)) => {
            let chain = certs("the client certificate", cert)?;
            let key = PrivateKeyDer::from_pem_slice(key)
                .map_err(|_| pem("the client key", "private key"))?;
            builder.with_client_auth_cert(chain, key).map_err(tls_err)?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Opens TCP (and TLS) connections for the pool.
#[derive(Clone)]
struct Connector {
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
}

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<Stream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, io::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = self.tls.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no host"))?
                .trim_matches(['[', ']'])
                .to_string();
            let port = uri
                .port_u16()
                .unwrap_or(if tls.is_some() { 443 } else { 80 });
            let connect = async {
                let tcp = TcpStream::connect((host.as_str(), port)).await?;
                tcp.set_nodelay(true)?;
                Ok::<_, io::Error>(match tls {
                    Some((connector, name)) => {
                        Stream::Tls(Box::new(connector.connect(name, tcp).await?))
                    }
                    None => Stream::Plain(tcp),
                })
            };
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, connect)
                .await
                .map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("connecting to {host}:{port} took over {CONNECT_TIMEOUT:?}"),
                    )
                })??;
            Ok(TokioIo::new(stream))
        })
    }
}

/// A pooled connection: plain TCP (tests) or TLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_become_statuses() {
        let s = status_of(
            StatusCode::NOT_FOUND,
            br#"{"kind":"Status","code":404,"reason":"NotFound","message":"configmaps \"x\" not found"}"#,
        );
        assert_eq!(s.code, 404);
        assert_eq!(s.reason, "NotFound");
        assert!(s.message.contains("not found"));
        let s = status_of(StatusCode::BAD_GATEWAY, b"upstream down");
        assert_eq!((s.code, s.reason.as_str()), (502, "Bad Gateway"));
        assert_eq!(s.message, "upstream down");
    }

    #[test]
    fn https_needs_a_ca_and_the_config_never_prints_secrets() {
        let mut cfg = ClientConfig::plain("https://127.0.0.1:6443");
        cfg.token = Some("abcdef.0123456789abcdef".into());
        assert!(!format!("{cfg:?}").contains("0123456789abcdef"));
        let err = Client::new(cfg).err().unwrap().to_string();
        assert!(err.contains("certificate-authority-data"), "{err}");
        assert!(Client::new(ClientConfig::plain("ftp://x")).is_err());
        assert!(Client::new(ClientConfig::plain("http://127.0.0.1:1/prefix")).is_err());
        assert!(Client::new(ClientConfig::plain("http://127.0.0.1:1")).is_ok());
    }
}
