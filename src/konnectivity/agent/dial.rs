//! Endpoint dialling with Go-like error texts: upstream servers map HTTP
//! statuses from substrings of these (`i/o timeout` → 504, `too many open
//! files` → 503, anything else → 502), so the wording matters.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

/// Dial failure, classified for metrics (`reason` = timeout | unknown).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialFailure {
    pub message: String,
    pub timeout: bool,
}

/// Go's wording for an OS error (`connect: connection refused`).
fn go_text(e: &io::Error) -> String {
    use io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => "connection refused".into(),
        ConnectionReset => "connection reset by peer".into(),
        HostUnreachable => "no route to host".into(),
        NetworkUnreachable => "network is unreachable".into(),
        AddrNotAvailable => "cannot assign requested address".into(),
        PermissionDenied => "permission denied".into(),
        _ => {
            if e.raw_os_error() == Some(libc::EMFILE) || e.raw_os_error() == Some(libc::ENFILE) {
                return "too many open files".into();
            }
            let s = e.to_string();
            let s = match s.find(" (os error") {
                Some(i) => s[..i].to_string(),
                None => s,
            };
            let mut c = s.chars();
            match c.next() {
                Some(f) => f.to_lowercase().collect::<String>() + c.as_str(),
                None => s,
            }
        }
    }
}

/// Connects to `address` (`host:port`, `[v6]:port`) within `timeout`.
pub async fn dial(address: &str, timeout: Duration) -> Result<TcpStream, DialFailure> {
    let attempt = async {
        let addrs: Vec<SocketAddr> = match address.parse::<SocketAddr>() {
            Ok(a) => vec![a],
            Err(_) => {
                let host = address.rsplit_once(':').map(|(h, _)| h).unwrap_or(address);
                match tokio::net::lookup_host(address).await {
                    Ok(it) => it.collect(),
                    Err(_) => {
                        return Err(DialFailure {
                            message: format!("dial tcp: lookup {host}: no such host"),
                            timeout: false,
                        })
                    }
                }
            }
        };
        let mut last = None;
        for a in &addrs {
            match TcpStream::connect(a).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some((a, e)),
            }
        }
        Err(match last {
            Some((a, e)) => DialFailure {
                message: format!("dial tcp {a}: connect: {}", go_text(&e)),
                timeout: false,
            },
            None => DialFailure {
                message: format!("dial tcp: lookup {address}: no such host"),
                timeout: false,
            },
        })
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(DialFailure {
            message: format!("dial tcp {address}: i/o timeout"),
            timeout: true,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refused_has_go_wording() {
        // Bind then drop to get a port nobody listens on.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let e = dial(&addr.to_string(), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(
            e.message,
            format!("dial tcp {addr}: connect: connection refused")
        );
        assert!(!e.timeout);
    }

    #[test]
    fn emfile_reads_as_too_many_open_files() {
        let e = io::Error::from_raw_os_error(libc::EMFILE);
        assert_eq!(go_text(&e), "too many open files");
    }
}
