//! HTTP-CONNECT frontend (protocol reference §2.3), on a unix socket and
//! optionally on TCP with mTLS. Behaviour of upstream ≥ v0.34: the 200 is
//! written only after the agent's dial succeeded, errors map to 500/502/503/
//! 504 with the exact texts upstream uses. EOF from the client is a full
//! close.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rand::Rng;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::mpsc;

use super::tunnels::{FrontendKind, FrontendLink};
use super::{Shared, DEFAULT_SEND_TIMEOUT};
use crate::konnectivity::io::{BufRead, ChunkRead};
use crate::konnectivity::metrics::{FROM_CLIENT, TO_AGENT};
use crate::konnectivity::proto::{Packet, PacketType, Payload, MAX_DATA_CHUNK};

const COMPONENT: &str = "konnectivity-server";
/// Upstream's ReadHeaderTimeout.
const HEADER_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest request head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Bytes a client may send before the 200 (kept, then tunnelled).
const MAX_EARLY: usize = 64 * 1024;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Exact bytes of upstream's "no agent" answer.
pub(crate) const NO_AGENT_RESPONSE: &[u8] = b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\n\r\ncurrently no tunnels available: No agent available";
/// Exact success line.
pub(crate) const ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection Established\r\n\r\n";

pub(crate) fn spawn_uds(shared: Arc<Shared>, listener: UnixListener) {
    let s = shared.clone();
    shared.tracker.spawn(async move {
        loop {
            let sock = tokio::select! {
                _ = s.cancel.cancelled() => break,
                r = listener.accept() => match r {
                    Ok((sock, _)) => sock,
                    Err(e) => {
                        tracing::warn!(component = COMPONENT, error = %crate::telemetry::Chain(&e), "HTTP-CONNECT accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let (rd, wr) = sock.into_split();
            s.tracker.spawn(serve_conn(s.clone(), rd, wr));
        }
    });
}

pub(crate) fn spawn_tcp(
    shared: Arc<Shared>,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let s = shared.clone();
    shared.tracker.spawn(async move {
        loop {
            let (sock, peer) = tokio::select! {
                _ = s.cancel.cancelled() => break,
                r = listener.accept() => match r {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::warn!(component = COMPONENT, error = %crate::telemetry::Chain(&e), "HTTP-CONNECT accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let _ = sock.set_nodelay(true);
            let acceptor = acceptor.clone();
            let s2 = s.clone();
            s.tracker.spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(sock)).await {
                    Ok(Ok(tls)) => {
                        let (rd, wr) = tokio::io::split(tls);
                        serve_conn(s2, BufRead(rd), wr).await;
                    }
                    Ok(Err(e)) => tracing::warn!(component = COMPONENT, %peer, error = %crate::telemetry::Chain(&e), "HTTP-CONNECT TLS handshake refused"),
                    Err(_) => tracing::warn!(component = COMPONENT, %peer, "HTTP-CONNECT TLS handshake timed out"),
                }
            });
        }
    });
}

/// Reads until the end of the request head; returns its length.
async fn read_head<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
) -> std::io::Result<Option<usize>> {
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok(Some(i + 4));
        }
        if buf.len() >= MAX_HEAD {
            return Ok(None);
        }
        buf.reserve(1024);
        if rd.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

/// Maps an agent dial error to upstream's HTTP status.
pub(crate) fn status_for_dial_error(err: &str) -> &'static str {
    let e = err.to_ascii_lowercase();
    if e.contains("i/o timeout") || e.contains("deadline exceeded") || e.contains("timeout") {
        "504 Gateway Timeout"
    } else if e.contains("too many open files") {
        "503 Service Unavailable"
    } else {
        "502 Bad Gateway"
    }
}

fn error_response(status: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

struct ConnGuard(Arc<Shared>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0
            .metrics
            .http_connections
            .fetch_sub(1, Ordering::Relaxed);
    }
}

async fn serve_conn<R: ChunkRead, W: AsyncWrite + Unpin + Send>(
    shared: Arc<Shared>,
    mut rd: R,
    mut wr: W,
) {
    let _task = shared.task_guard();
    shared
        .metrics
        .http_connections
        .fetch_add(1, Ordering::Relaxed);
    let _conn = ConnGuard(shared.clone());

    let mut buf = BytesMut::with_capacity(1024);
    let head_len = tokio::select! {
        _ = shared.cancel.cancelled() => return,
        r = tokio::time::timeout(HEADER_TIMEOUT, read_head(&mut rd, &mut buf)) => match r {
            Ok(Ok(Some(n))) => n,
            Ok(Ok(None)) => {
                let _ = wr.write_all(&error_response("400 Bad Request", "malformed or oversized request head")).await;
                return;
            }
            _ => return,
        },
    };
    let mut early = buf.split_off(head_len);
    let head = String::from_utf8_lossy(&buf).to_string();
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target, version) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    if !version.starts_with("HTTP/1.") {
        let _ = wr
            .write_all(&error_response("400 Bad Request", "malformed request line"))
            .await;
        return;
    }
    if method != "CONNECT" {
        let _ = wr
            .write_all(&error_response(
                "405 Method Not Allowed",
                "this proxy only supports CONNECT passthrough",
            ))
            .await;
        return;
    }
    if target
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .is_none()
    {
        let _ = wr
            .write_all(&error_response(
                "400 Bad Request",
                "CONNECT target must be host:port",
            ))
            .await;
        return;
    }
    let target = target.to_string();

    let Some(backend) = shared.backends.choose(&target) else {
        shared.metrics.dial_failures.inc(&["no_agent"]);
        let _ = wr.write_all(NO_AGENT_RESPONSE).await;
        let _ = wr.shutdown().await;
        return;
    };
    let random: i64 = rand::rng().random_range(1..i64::MAX);
    let (tx, mut rx) = mpsc::channel(shared.frontend_queue);
    let link = Arc::new(FrontendLink {
        id: shared.next_id(),
        kind: FrontendKind::HttpConnect,
        tx,
        kill: shared.cancel.child_token(),
        progress: Default::default(),
    });
    shared.tunnels.register(link.clone());
    let fid = link.id;

    let result = tunnel(
        &shared, &link, &backend, random, &target, &mut rd, &mut wr, &mut rx, &mut early,
    )
    .await;
    if let Err(resp) = result {
        if !resp.is_empty() {
            let _ = wr.write_all(&resp).await;
        }
    }
    let _ = wr.shutdown().await;
    for (b, p) in shared.tunnels.frontend_gone(fid) {
        shared.metrics.stream_packets.inc(TO_AGENT, p.r#type);
        if b.send(p.clone(), Duration::from_secs(1)).await.is_err() {
            b.send_ctrl(p);
        }
    }
}

/// Dials and runs the tunnel. `Err(bytes)` = response to write before
/// closing (empty: close silently).
#[allow(clippy::too_many_arguments)]
async fn tunnel<R: ChunkRead, W: AsyncWrite + Unpin + Send>(
    shared: &Arc<Shared>,
    link: &Arc<FrontendLink>,
    backend: &Arc<super::backend::Backend>,
    random: i64,
    target: &str,
    rd: &mut R,
    wr: &mut W,
    rx: &mut mpsc::Receiver<super::tunnels::Queued>,
    early: &mut BytesMut,
) -> Result<(), Vec<u8>> {
    if let Err(e) = shared.tunnels.begin_dial(link.id, random, backend.clone()) {
        return Err(error_response("503 Service Unavailable", e));
    }
    shared
        .metrics
        .stream_packets
        .inc(TO_AGENT, PacketType::DialReq as i32);
    if let Err(e) = backend
        .send(Packet::dial_req(target, random), DEFAULT_SEND_TIMEOUT)
        .await
    {
        shared.tunnels.cancel_dial(link.id, random);
        let status = match e {
            super::backend::SendError::Timeout => "504 Gateway Timeout",
            super::backend::SendError::Gone => "502 Bad Gateway",
        };
        return Err(error_response(
            status,
            &format!("Failed to tunnel dial request: {e}\r\n"),
        ));
    }
    let deadline = tokio::time::sleep(shared.dial_timeout);
    tokio::pin!(deadline);
    let connect_id = loop {
        tokio::select! {
            p = rx.recv() => {
                let Some(p) = p else { return Err(Vec::new()) };
                match (p.kind(), &p.payload) {
                    (Some(PacketType::DialRsp), Some(Payload::DialResponse(r))) => {
                        if r.error.is_empty() && r.connect_id != 0 {
                            break r.connect_id;
                        }
                        return Err(error_response(status_for_dial_error(&r.error), &r.error));
                    }
                    (Some(PacketType::DialCls), _) => return Err(Vec::new()),
                    _ => continue,
                }
            }
            _ = link.kill.cancelled() => {
                return Err(error_response("502 Bad Gateway", "Backend context error: tunnel closed"));
            }
            r = rd.read_buf(early), if early.len() < MAX_EARLY => {
                if !matches!(r, Ok(n) if n > 0) {
                    // Client went away while dialling: clean up silently.
                    return Err(Vec::new());
                }
            }
            _ = &mut deadline => {
                if shared.tunnels.cancel_dial(link.id, random) {
                    backend.send_ctrl(Packet::dial_cls(random));
                }
                shared.metrics.dial_failures.inc(&["backend_dial_timeout"]);
                return Err(error_response("504 Gateway Timeout", "Backend dial timeout: timed out waiting for backend dial"));
            }
        }
    };
    if wr.write_all(ESTABLISHED).await.is_err() {
        return Err(Vec::new());
    }
    let early = early.split().freeze();
    let up = async {
        let mut pending = early;
        while !pending.is_empty() {
            let chunk = pending.split_to(pending.len().min(MAX_DATA_CHUNK));
            shared
                .metrics
                .stream_packets
                .inc(FROM_CLIENT, PacketType::Data as i32);
            shared
                .metrics
                .stream_packets
                .inc(TO_AGENT, PacketType::Data as i32);
            if backend
                .send(Packet::data(connect_id, chunk), DEFAULT_SEND_TIMEOUT)
                .await
                .is_err()
            {
                return;
            }
        }
        while let Ok(Some(chunk)) = rd.read_chunk().await {
            shared
                .metrics
                .stream_packets
                .inc(FROM_CLIENT, PacketType::Data as i32);
            shared
                .metrics
                .stream_packets
                .inc(TO_AGENT, PacketType::Data as i32);
            if backend
                .send(Packet::data(connect_id, chunk), DEFAULT_SEND_TIMEOUT)
                .await
                .is_err()
            {
                return;
            }
        }
        // Client EOF: full close, CLOSE_REQ ordered after the data.
        shared.tunnels.mark_close_sent(link.id);
        shared
            .metrics
            .stream_packets
            .inc(TO_AGENT, PacketType::CloseReq as i32);
        if backend
            .send(Packet::close_req(connect_id), Duration::from_secs(1))
            .await
            .is_err()
        {
            backend.send_ctrl(Packet::close_req(connect_id));
        }
    };
    let down = async {
        while let Some(p) = rx.recv().await {
            link.progress.touch();
            let p = *p;
            match (p.kind(), p.payload) {
                (Some(PacketType::Data), Some(Payload::Data(d)))
                    if wr.write_all(&d.data).await.is_err() =>
                {
                    return;
                }
                (Some(PacketType::CloseRsp), _) | (Some(PacketType::DialCls), _) => return,
                _ => {}
            }
        }
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
        _ = link.kill.cancelled() => {}
    }
    Err(Vec::new())
}
