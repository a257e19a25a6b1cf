//! STAND-IN for kube-apiserver, used only by mkectl's tests (`tests/kube_contract.rs`).
//!
//! The real kube-apiserver is not obtainable on CI machines. This program takes
//! its place under the real supervisor to prove the wiring around it: it is
//! started with the exact argv mkectl generates, refuses any flag that is not
//! a kube-apiserver v1.32 flag (like the real binary's flag parser), and
//! serves `/readyz`, `/livez` and `/healthz` over TLS on `--bind-address`:
//! `--secure-port` with `--tls-cert-file`/`--tls-private-key-file`, requiring a
//! client certificate that chains to `--client-ca-file`. It implements nothing
//! else of the API and says so on every start. It is not shipped: packaging
//! builds `--bin mkectl` only.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The flags the real v1.32 binary accepts (the list the contract test uses).
const KNOWN_FLAGS: &str = include_str!("../data/kube-apiserver-v1.32.flags");
const REQUIRED: &[&str] = &[
    "secure-port",
    "bind-address",
    "tls-cert-file",
    "tls-private-key-file",
    "client-ca-file",
];

fn fail(msg: &str) -> ! {
    eprintln!("kube-apiserver STAND-IN: error: {msg}");
    std::process::exit(1);
}

fn parse_flags() -> BTreeMap<String, String> {
    let known: Vec<&str> = KNOWN_FLAGS
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let mut flags = BTreeMap::new();
    for arg in std::env::args().skip(1) {
        let Some((name, value)) = arg.strip_prefix("--").and_then(|a| a.split_once('=')) else {
            fail(&format!("expected --flag=value, got {arg:?}"));
        };
        if !known.contains(&name) {
            fail(&format!("unknown flag: --{name}"));
        }
        flags.insert(name.to_string(), value.to_string());
    }
    for r in REQUIRED {
        if !flags.contains_key(*r) {
            fail(&format!("the stand-in needs --{r}"));
        }
    }
    flags
}

fn server_config(flags: &BTreeMap<String, String>) -> rustls::ServerConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let read_certs = |flag: &str| -> Vec<CertificateDer<'static>> {
        let path = &flags[flag];
        CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .unwrap_or_else(|e| fail(&format!("--{flag}={path}: {e}")))
    };
    let mut roots = rustls::RootCertStore::empty();
    for ca in read_certs("client-ca-file") {
        roots
            .add(ca)
            .unwrap_or_else(|e| fail(&format!("--client-ca-file: {e}")));
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap_or_else(|e| fail(&format!("client verifier: {e}")));
    let key_path = &flags["tls-private-key-file"];
    let key = PrivateKeyDer::from_pem_file(key_path)
        .unwrap_or_else(|e| fail(&format!("--tls-private-key-file={key_path}: {e}")));
    rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .unwrap_or_else(|e| fail(&e.to_string()))
        .with_client_cert_verifier(verifier)
        .with_single_cert(read_certs("tls-cert-file"), key)
        .unwrap_or_else(|e| fail(&format!("serving certificate: {e}")))
}

async fn answer(
    req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<Full<Bytes>>, std::convert::Infallible> {
    let (status, body) = match req.uri().path() {
        "/readyz" | "/livez" | "/healthz" => (http::StatusCode::OK, "ok"),
        _ => (
            http::StatusCode::NOT_FOUND,
            "kube-apiserver STAND-IN: only /readyz, /livez and /healthz exist here",
        ),
    };
    let mut resp = http::Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    Ok(resp)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let flags = parse_flags();
    let ip: IpAddr = flags["bind-address"]
        .parse()
        .unwrap_or_else(|_| fail("--bind-address is not an IP address"));
    let port: u16 = flags["secure-port"]
        .parse()
        .unwrap_or_else(|_| fail("--secure-port is not a port"));
    let addr = SocketAddr::new(ip, port);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config(&flags)));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| fail(&format!("cannot listen on {addr}: {e}")));
    eprintln!(
        "kube-apiserver STAND-IN (mkectl test double, NOT the real kube-apiserver): \
         serving /readyz on https://{addr} with {} flags accepted; client certificates \
         must chain to {}",
        flags.len(),
        flags["client-ca-file"]
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .unwrap_or_else(|e| fail(&format!("SIGTERM handler: {e}")));
    loop {
        tokio::select! {
            _ = term.recv() => {
                eprintln!("kube-apiserver STAND-IN: SIGTERM, exiting");
                return;
            }
            accepted = listener.accept() => {
                let Ok((tcp, peer)) = accepted else { continue };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let tls = match acceptor.accept(tcp).await {
                        Ok(t) => t,
                        Err(e) => {
                            eprintln!("kube-apiserver STAND-IN: refused TLS client {peer}: {e}");
                            return;
                        }
                    };
                    let io = hyper_util::rt::TokioIo::new(tls);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, hyper::service::service_fn(answer))
                        .await;
                });
            }
        }
    }
}
