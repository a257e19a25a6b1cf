//! A konnectivity-client-like dialer: the frontend side of the protocol, as
//! kube-apiserver uses it. [`ProxyClient`] keeps one HTTP/2 connection to the
//! server's gRPC UDS and opens one `Proxy` stream per dial (upstream's
//! `CreateGRPCTunnel`); [`dial_grpc_uds`] is the single-use form (one
//! connection per dial, as released kube-apiservers do). The returned
//! [`TunnelConn`] is an `AsyncRead + AsyncWrite` byte stream.
//!
//! Also [`dial_http_connect_uds`]: the HTTP-CONNECT handshake exactly as
//! kube-apiserver writes it.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use hyper_util::rt::TokioIo;
use rand::Rng;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::PollSender;
use tonic::transport::{Channel, Endpoint};

use super::proto::{Packet, PacketType, Payload, MAX_DATA_CHUNK};
use super::server::{CONN_WINDOW, MAX_DECODE, MAX_FRAME, STREAM_WINDOW};
use super::wire::PacketStreaming;
use super::KonnectivityError;

/// konnectivity-client's backstop for a DIAL_RSP.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(30);
/// konnectivity-client's wait for CLOSE_RSP.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Packets queued towards the server per tunnel (the inbound side is the
/// HTTP/2 stream itself, bounded by its flow-control window): at most
/// `QUEUED_DATA_BYTES` of full DATA packets, as the server's queues.
const QUEUE: usize = super::proto::DATA_QUEUE_PACKETS;

fn connect_err(path: &Path, e: impl std::fmt::Display) -> KonnectivityError {
    KonnectivityError::Connect {
        addr: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// A gRPC connection to a konnectivity server's frontend UDS.
#[derive(Debug, Clone)]
pub struct ProxyClient {
    path: PathBuf,
    channel: Channel,
}

impl ProxyClient {
    /// Connects to the server's gRPC UDS.
    pub async fn connect_uds(path: &Path) -> Result<ProxyClient, KonnectivityError> {
        let p = path.to_path_buf();
        let connector = tower::service_fn(move |_uri: http::Uri| {
            let p = p.clone();
            async move { Ok::<_, io::Error>(TokioIo::new(UnixStream::connect(p).await?)) }
        });
        let channel = Endpoint::from_static("http://localhost")
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONN_WINDOW)
            .max_frame_size(MAX_FRAME)
            .connect_with_connector(connector)
            .await
            .map_err(|e| connect_err(path, e))?;
        Ok(ProxyClient {
            path: path.to_path_buf(),
            channel,
        })
    }

    /// Dials `address` (`host:port`) through the proxy, waiting up to 30 s
    /// for the agent's answer.
    pub async fn dial(&self, address: &str) -> Result<TunnelConn, KonnectivityError> {
        self.dial_timeout(address, DIAL_TIMEOUT).await
    }

    /// Like [`ProxyClient::dial`] with an explicit bound on the dial.
    pub async fn dial_timeout(
        &self,
        address: &str,
        timeout: Duration,
    ) -> Result<TunnelConn, KonnectivityError> {
        let derr = |reason: String| KonnectivityError::Dial {
            address: address.to_string(),
            reason,
        };
        let (tx, rx) = mpsc::channel::<Packet>(QUEUE);
        let random: i64 = rand::rng().random_range(1..i64::MAX);
        tx.send(Packet::dial_req(address, random))
            .await
            .map_err(|_| derr("request stream closed".into()))?;
        let work = async {
            let resp = super::wire::call(
                &self.channel,
                "/ProxyService/Proxy",
                tonic::metadata::MetadataMap::new(),
                ReceiverStream::new(rx),
                MAX_DECODE,
            )
            .await
            .map_err(|s| connect_err(&self.path, format!("{}: {}", s.code(), s.message())))?;
            let mut inbound = resp.into_inner();
            loop {
                let p = inbound
                    .message()
                    .await
                    .map_err(|s| derr(format!("stream failed: {}", s.message())))?
                    .ok_or_else(|| derr("stream closed before the dial answer".into()))?;
                match (p.kind(), &p.payload) {
                    (Some(PacketType::DialRsp), Some(Payload::DialResponse(r)))
                        if r.random == random =>
                    {
                        if !r.error.is_empty() {
                            return Err(derr(r.error.clone()));
                        }
                        if r.connect_id == 0 {
                            return Err(derr("dial answer without a connection id".into()));
                        }
                        return Ok((r.connect_id, inbound));
                    }
                    (Some(PacketType::DialRsp), _) => {
                        return Err(derr("dial answer for another dial".into()))
                    }
                    (Some(PacketType::DialCls), _) => {
                        return Err(derr("dial closed by the proxy".into()))
                    }
                    _ => {}
                }
            }
        };
        let (connect_id, inbound) = match tokio::time::timeout(timeout, work).await {
            Ok(r) => r?,
            Err(_) => {
                let _ = tx.try_send(Packet::dial_cls(random));
                return Err(derr("timed out waiting for the dial answer".into()));
            }
        };
        Ok(TunnelConn::new(connect_id, tx, inbound))
    }
}

/// Single-use tunnel: a fresh connection to the UDS for this one dial.
pub async fn dial_grpc_uds(path: &Path, address: &str) -> Result<TunnelConn, KonnectivityError> {
    ProxyClient::connect_uds(path).await?.dial(address).await
}

/// One tunnelled TCP connection. EOF arrives when the agent closes the
/// endpoint (CLOSE_RSP); an error when the tunnel was torn down (agent gone,
/// stalled, server stopped). Dropping it closes the tunnel; [`TunnelConn::close`]
/// closes it and waits for the agent's CLOSE_RSP. Reads poll the tunnel's own
/// HTTP/2 stream directly (no relay task): a reader that stops reading holds
/// back its stream through HTTP/2 flow control and nothing else.
pub struct TunnelConn {
    connect_id: i64,
    tx: PollSender<Packet>,
    inbound: PacketStreaming,
    cur: Bytes,
    eof: bool,
    close_sent: bool,
}

impl std::fmt::Debug for TunnelConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelConn")
            .field("connect_id", &self.connect_id)
            .finish()
    }
}

impl TunnelConn {
    fn new(connect_id: i64, tx: mpsc::Sender<Packet>, inbound: PacketStreaming) -> Self {
        TunnelConn {
            connect_id,
            tx: PollSender::new(tx),
            inbound,
            cur: Bytes::new(),
            eof: false,
            close_sent: false,
        }
    }

    /// The agent's connection id.
    pub fn connect_id(&self) -> i64 {
        self.connect_id
    }

    /// The next non-empty DATA payload of this tunnel; `None` once the agent
    /// closed it cleanly. After `None` or an error the tunnel is finished.
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        if self.eof {
            return Poll::Ready(Ok(None));
        }
        loop {
            let p = match ready!(self.inbound.poll_message(cx)) {
                Ok(Some(p)) => p,
                Ok(None) => {
                    self.eof = true;
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "tunnel stream ended",
                    )));
                }
                Err(s) => {
                    self.eof = true;
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        format!("tunnel failed: {}", s.message()),
                    )));
                }
            };
            match (p.kind(), p.payload) {
                (Some(PacketType::Data), Some(Payload::Data(d)))
                    if d.connect_id == self.connect_id && !d.data.is_empty() =>
                {
                    return Poll::Ready(Ok(Some(d.data)));
                }
                (Some(PacketType::CloseRsp), Some(Payload::CloseResponse(r))) => {
                    self.eof = true;
                    return Poll::Ready(if r.error.is_empty() {
                        Ok(None)
                    } else {
                        Err(io::Error::new(io::ErrorKind::ConnectionAborted, r.error))
                    });
                }
                (Some(PacketType::DialCls), _) => {
                    self.eof = true;
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "dial closed",
                    )));
                }
                _ => {}
            }
        }
    }

    /// Sends CLOSE_REQ and waits (up to 10 s) for the CLOSE_RSP; data still
    /// arriving meanwhile is discarded.
    pub async fn close(mut self) -> io::Result<()> {
        if !self.close_sent {
            self.close_sent = true;
            let tx = self.tx.get_ref().cloned();
            if let Some(tx) = tx {
                tx.send(Packet::close_req(self.connect_id))
                    .await
                    .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "tunnel closed"))?;
            }
        }
        let drain = async {
            while std::future::poll_fn(|cx| self.poll_chunk(cx))
                .await?
                .is_some()
            {}
            Ok(())
        };
        tokio::time::timeout(CLOSE_TIMEOUT, drain)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no CLOSE_RSP within 10 s"))?
    }
}

impl AsyncRead for TunnelConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.cur.is_empty() {
            match ready!(self.poll_chunk(cx))? {
                Some(b) => self.cur = b,
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = self.cur.len().min(buf.remaining());
        buf.put_slice(&self.cur[..n]);
        self.cur.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for TunnelConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.close_sent {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "tunnel closed",
            )));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let broken = |_| io::Error::new(io::ErrorKind::BrokenPipe, "tunnel closed");
        ready!(self.tx.poll_reserve(cx)).map_err(broken)?;
        let n = buf.len().min(MAX_DATA_CHUNK);
        let p = Packet::data(self.connect_id, Bytes::copy_from_slice(&buf[..n]));
        self.tx.send_item(p).map_err(broken)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Sends CLOSE_REQ (the protocol has no half-close: this closes both
    /// directions once the agent answers).
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.close_sent {
            return Poll::Ready(Ok(()));
        }
        let broken = |_| io::Error::new(io::ErrorKind::BrokenPipe, "tunnel closed");
        ready!(self.tx.poll_reserve(cx)).map_err(broken)?;
        let p = Packet::close_req(self.connect_id);
        self.tx.send_item(p).map_err(broken)?;
        self.close_sent = true;
        Poll::Ready(Ok(()))
    }
}

/// Opens an HTTP-CONNECT tunnel over a UDS with exactly the bytes
/// kube-apiserver writes; returns the socket positioned after the 200.
pub async fn dial_http_connect_uds(
    path: &Path,
    address: &str,
) -> Result<UnixStream, KonnectivityError> {
    let mut s = UnixStream::connect(path)
        .await
        .map_err(|e| connect_err(path, e))?;
    s.write_all(format!("CONNECT {address} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await
        .map_err(|e| connect_err(path, e))?;
    // Read the head byte by byte so no tunnel byte is consumed.
    let mut head = Vec::with_capacity(64);
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 * 1024 || s.read(&mut b).await.map_err(|e| connect_err(path, e))? == 0 {
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest).await;
            head.extend_from_slice(&rest);
            return Err(KonnectivityError::Dial {
                address: address.to_string(),
                reason: String::from_utf8_lossy(&head).to_string(),
            });
        }
        head.push(b[0]);
    }
    if !head.starts_with(b"HTTP/1.1 200") {
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
        head.extend_from_slice(&rest);
        return Err(KonnectivityError::Dial {
            address: address.to_string(),
            reason: String::from_utf8_lossy(&head).to_string(),
        });
    }
    Ok(s)
}
