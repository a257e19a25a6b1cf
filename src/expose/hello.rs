//! Reads the SNI of a TLS ClientHello without consuming it: the socket is
//! peeked, so whoever the connection is routed to reads it from its first
//! byte. The ClientHello is parsed by rustls ([`rustls::server::Acceptor`]),
//! not by hand.

use std::time::Duration;

use tokio::net::TcpStream;

/// A ClientHello is at most one maximal handshake message in records of
/// 16 KiB: in practice far smaller (1–2 KiB with post-quantum key shares).
pub const MAX_HELLO: usize = 16 * 1024 + 5;
/// First wait when only part of the ClientHello has arrived (it can span
/// TCP segments); doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(1);
const MAX_BACKOFF: Duration = Duration::from_millis(50);

/// What the first bytes of a connection are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hello {
    /// A TLS ClientHello, with its SNI when it has one.
    Tls { sni: Option<String> },
    /// Not TLS (or a malformed ClientHello).
    NotTls,
}

/// Why no ClientHello could be read.
#[derive(Debug, thiserror::Error)]
pub enum HelloError {
    #[error("connection closed before a ClientHello")]
    Closed,
    #[error("ClientHello larger than {MAX_HELLO} bytes")]
    TooLarge,
    #[error("reading the ClientHello")]
    Io(#[source] std::io::Error),
}

/// What `bytes` (the start of a connection) say; `None` while the
/// ClientHello is incomplete.
pub fn parse(bytes: &[u8]) -> Option<Hello> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut rest = bytes;
    while !rest.is_empty() {
        match acceptor.read_tls(&mut rest) {
            Ok(0) => break,
            Ok(_) => {}
            Err(_) => return Some(Hello::NotTls),
        }
    }
    match acceptor.accept() {
        Ok(Some(accepted)) => Some(Hello::Tls {
            sni: accepted.client_hello().server_name().map(str::to_owned),
        }),
        Ok(None) => None,
        Err(_) => Some(Hello::NotTls),
    }
}

/// Peeks at `sock` until its ClientHello (or something that is not one) is
/// complete. The caller bounds the wait.
pub async fn peek(sock: &TcpStream) -> Result<Hello, HelloError> {
    let mut buf = vec![0u8; MAX_HELLO];
    let mut backoff = FIRST_BACKOFF;
    let mut seen = 0;
    loop {
        let n = sock.peek(&mut buf).await.map_err(HelloError::Io)?;
        if n == 0 {
            return Err(HelloError::Closed);
        }
        if n > seen {
            seen = n;
            if let Some(hello) = parse(&buf[..n]) {
                return Ok(hello);
            }
            if n == buf.len() {
                return Err(HelloError::TooLarge);
            }
            backoff = FIRST_BACKOFF;
        }
        // `peek` returns at once while any data is queued: wait for more
        // instead of spinning on the same bytes.
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// The first flight of a real rustls client for `name`.
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

    #[test]
    fn reads_the_sni_only_once_the_hello_is_whole() {
        let hello = client_hello(crate::expose::JOIN_SNI);
        for cut in [1, 5, hello.len() / 2, hello.len() - 1] {
            assert_eq!(parse(&hello[..cut]), None, "cut at {cut}");
        }
        assert_eq!(
            parse(&hello),
            Some(Hello::Tls {
                sni: Some(crate::expose::JOIN_SNI.into())
            })
        );
    }

    #[test]
    fn an_ip_sends_no_sni_and_http_is_not_tls() {
        assert_eq!(
            parse(&client_hello("127.0.0.1")),
            Some(Hello::Tls { sni: None })
        );
        assert_eq!(parse(b"GET / HTTP/1.1\r\n\r\n"), Some(Hello::NotTls));
    }

    #[tokio::test]
    async fn peek_waits_for_a_hello_split_across_writes_and_leaves_it_unread() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let hello = client_hello(crate::expose::KONNECTIVITY_SNI);
        let sent = hello.clone();
        let client = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.set_nodelay(true).unwrap();
            let (a, b) = sent.split_at(7);
            c.write_all(a).await.unwrap();
            tokio::time::sleep(Duration::from_millis(30)).await;
            c.write_all(b).await.unwrap();
            c
        });
        let (mut s, _) = l.accept().await.unwrap();
        let got = peek(&s).await.unwrap();
        assert_eq!(
            got,
            Hello::Tls {
                sni: Some(crate::expose::KONNECTIVITY_SNI.into())
            }
        );
        let mut read = vec![0u8; hello.len()];
        s.read_exact(&mut read).await.unwrap();
        assert_eq!(read, hello, "peeking consumed nothing");
        drop(client.await.unwrap());
    }

    #[tokio::test]
    async fn a_close_before_any_byte_is_reported() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        drop(TcpStream::connect(addr).await.unwrap());
        let (s, _) = l.accept().await.unwrap();
        assert!(matches!(peek(&s).await, Err(HelloError::Closed)));
    }
}
