//! One agent ↔ server stream (`AgentService/Connect`): connecting, the
//! packet loop, and the endpoint connections it carries.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;

use super::{ServerAddr, ServerConn, Shared, COMPONENT, CONNECT_TIMEOUT};
use crate::konnectivity::io::{ChunkRead, Progress, ReadBuffered, TLS_WRITE_BUFFER};
use crate::konnectivity::metrics::{FROM_SERVER, TO_SERVER};
use crate::konnectivity::proto::{Packet, PacketType, Payload};
use crate::konnectivity::server::{CONN_WINDOW, MAX_DECODE, MAX_FRAME, STREAM_WINDOW};
use crate::konnectivity::wire::PacketStreaming;

/// Packets queued towards the server (shared by all endpoint connections),
/// in front of the HTTP/2 window (see `server::DEFAULT_BACKEND_QUEUE`).
const DATA_QUEUE: usize = crate::konnectivity::proto::DATA_QUEUE_PACKETS;
/// Control answers queued towards the server.
const CTRL_QUEUE: usize = 4096;

/// A connected, not yet registered server stream.
pub(crate) struct Session {
    pub server_id: String,
    pub addr: ServerAddr,
    inbound: PacketStreaming,
    data: mpsc::Sender<Packet>,
    ctrl: mpsc::Sender<Packet>,
    cancel: CancellationToken,
    _channel: tonic::transport::Channel,
}

/// How a session ended.
pub(crate) enum Ended {
    /// The server id was already connected through another connection.
    Duplicate,
    /// The stream ended (server gone, error, or shutdown).
    Closed,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("{0}")]
    Transport(String),
    #[error("{0}")]
    Headers(String),
    #[error("timed out")]
    Timeout,
    #[error("cancelled")]
    Cancelled,
}

/// TCP + TLS (SNI = the konnectivity route name, verified as host; ALPN h2) + `Connect` + response headers.
pub(crate) async fn connect(
    shared: &Arc<Shared>,
    addr: &ServerAddr,
    cancel: &CancellationToken,
) -> Result<Session, ConnectError> {
    let fut = connect_inner(shared, addr, cancel);
    tokio::select! {
        _ = cancel.cancelled() => Err(ConnectError::Cancelled),
        r = tokio::time::timeout(CONNECT_TIMEOUT, fut) => r.unwrap_or(Err(ConnectError::Timeout)),
    }
}

async fn connect_inner(
    shared: &Arc<Shared>,
    addr: &ServerAddr,
    cancel: &CancellationToken,
) -> Result<Session, ConnectError> {
    let host = rustls_pki_types::ServerName::try_from(addr.host.clone())
        .map_err(|e| ConnectError::Transport(format!("bad server name {}: {e}", addr.host)))?;
    let (config, server_name) = shared
        .tls
        .for_route(crate::expose::Route::Konnectivity, host)
        .map_err(|e| ConnectError::Transport(error_chain(&e)))?;
    let tls = tokio_rustls::TlsConnector::from(config);
    let target = addr.to_string();
    let connector = tower::service_fn(move |_uri: http::Uri| {
        let tls = tls.clone();
        let server_name = server_name.clone();
        let target = target.clone();
        async move {
            let tcp = TcpStream::connect(&target).await?;
            let _ = tcp.set_nodelay(true);
            let mut stream = tls.connect(server_name, ReadBuffered::new(tcp)).await?;
            stream.get_mut().1.set_buffer_limit(Some(TLS_WRITE_BUFFER));
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| ConnectError::Transport(e.to_string()))?
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONN_WINDOW)
        .max_frame_size(MAX_FRAME);
    let channel = endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|e| ConnectError::Transport(error_chain(&e)))?;

    let (data_tx, data_rx) = mpsc::channel::<Packet>(DATA_QUEUE);
    let (ctrl_tx, ctrl_rx) = mpsc::channel::<Packet>(CTRL_QUEUE);
    let session_cancel = cancel.child_token();
    let out_cancel = session_cancel.clone();
    let s2 = shared.clone();
    let outbound = futures::stream::unfold(
        (ctrl_rx, data_rx, out_cancel, s2),
        |(mut ctrl, mut data, cancel, shared)| async move {
            let p = tokio::select! {
                biased;
                _ = cancel.cancelled() => None,
                Some(p) = ctrl.recv() => Some(p),
                Some(p) = data.recv() => Some(p),
                else => None,
            };
            p.map(|p| {
                shared.metrics.stream_packets.inc(TO_SERVER, p.r#type);
                (p, (ctrl, data, cancel, shared))
            })
        },
    );
    let mut md = tonic::metadata::MetadataMap::new();
    md.insert(
        "agentid",
        shared
            .agent_id
            .parse()
            .map_err(|_| ConnectError::Headers("agent id is not a valid header".into()))?,
    );
    md.insert(
        "agentidentifiers",
        shared
            .identifiers
            .parse()
            .map_err(|_| ConnectError::Headers("identifiers are not a valid header".into()))?,
    );
    let resp = crate::konnectivity::wire::call(
        &channel,
        "/AgentService/Connect",
        md,
        outbound,
        MAX_DECODE,
    )
    .await
    .map_err(|s| ConnectError::Transport(format!("Connect: {}: {}", s.code(), s.message())))?;
    let md = resp.metadata();
    let ids: Vec<_> = md.get_all("serverid").iter().collect();
    if ids.len() != 1 {
        return Err(ConnectError::Headers(format!(
            "expected one serverid header, got {}",
            ids.len()
        )));
    }
    let server_id = ids[0]
        .to_str()
        .map_err(|_| ConnectError::Headers("serverid is not ASCII".into()))?
        .to_string();
    let counts: Vec<_> = md.get_all("servercount").iter().collect();
    if counts.len() != 1 {
        return Err(ConnectError::Headers(format!(
            "expected one servercount header, got {}",
            counts.len()
        )));
    }
    let count: i64 = counts[0]
        .to_str()
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|c| *c > 0)
        .ok_or_else(|| ConnectError::Headers("servercount is not a positive integer".into()))?;
    shared.known_server_count.store(count, Ordering::Relaxed);
    shared
        .metrics
        .known_server_count
        .store(count, Ordering::Relaxed);
    Ok(Session {
        server_id,
        addr: addr.clone(),
        inbound: resp.into_inner(),
        data: data_tx,
        ctrl: ctrl_tx,
        cancel: session_cancel,
        _channel: channel,
    })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Control shared by the two tasks of one endpoint connection.
struct ConnCtl {
    stop_read: CancellationToken,
    close_error: OnceLock<String>,
    /// When the writer queue last moved (stall detection).
    progress: Progress,
}

/// The map's entry: the writer's queue (dropping it lets the writer flush
/// and finish) plus the control half.
struct Conn {
    tx: mpsc::Sender<Bytes>,
    ctl: Arc<ConnCtl>,
}

type Conns = Arc<Mutex<HashMap<i64, Arc<Conn>>>>;

fn lock(c: &Conns) -> std::sync::MutexGuard<'_, HashMap<i64, Arc<Conn>>> {
    c.lock().unwrap_or_else(|p| p.into_inner())
}

/// Decrements `open_endpoint_connections` when both tasks of a connection
/// are gone.
struct EndpointGuard(Arc<Shared>);

impl Drop for EndpointGuard {
    fn drop(&mut self) {
        self.0
            .metrics
            .open_endpoint_connections
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves a session until its stream ends. Registers it first; a server id
/// already connected ends it at once.
pub(crate) async fn run(shared: Arc<Shared>, sess: Session) -> Ended {
    let Session {
        server_id,
        addr,
        mut inbound,
        data,
        ctrl,
        cancel,
        _channel,
    } = sess;
    if !shared.claim(
        &server_id,
        ServerConn {
            addr: addr.clone(),
            ctrl: ctrl.clone(),
        },
    ) {
        tracing::debug!(component = COMPONENT, server = %addr, server_id = %server_id, "server already connected; closing duplicate");
        cancel.cancel();
        return Ended::Duplicate;
    }
    let _guard = shared.task_guard();
    tracing::info!(component = COMPONENT, server = %addr, server_id = %server_id, "connected to proxy server");
    if shared.draining.load(Ordering::Relaxed) {
        let _ = ctrl.try_send(Packet::drain());
    }
    let conns: Conns = Arc::new(Mutex::new(HashMap::new()));
    let dials: Arc<Mutex<HashMap<i64, CancellationToken>>> = Arc::new(Mutex::new(HashMap::new()));
    loop {
        let msg = tokio::select! {
            m = inbound.message() => m,
            _ = cancel.cancelled() => break,
        };
        let p = match msg {
            Ok(Some(p)) => p,
            Ok(None) => break,
            Err(status) => {
                shared.metrics.server_connection_failures.inc(&["receive"]);
                tracing::info!(component = COMPONENT, server = %addr, error = %status.message(), "server stream failed");
                break;
            }
        };
        shared.metrics.stream_packets.inc(FROM_SERVER, p.r#type);
        let Some(kind) = p.kind() else { continue };
        match kind {
            PacketType::DialReq => {
                let Some(Payload::DialRequest(req)) = p.payload else {
                    continue;
                };
                if shared.draining.load(Ordering::Relaxed) {
                    let _ = ctrl.try_send(Packet::dial_rsp(req.random, 0, "agent is draining"));
                    continue;
                }
                let token = cancel.child_token();
                dials
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(req.random, token.clone());
                shared.tracker.spawn(endpoint(
                    shared.clone(),
                    conns.clone(),
                    dials.clone(),
                    data.clone(),
                    token,
                    req.address,
                    req.random,
                ));
            }
            PacketType::Data => {
                let cid = p.connect_id();
                let Some(Payload::Data(d)) = p.payload else {
                    continue;
                };
                let conn = lock(&conns).get(&cid).cloned();
                let Some(conn) = conn else {
                    if cid != 0 {
                        let _ = ctrl.try_send(Packet::close_rsp(cid, "unrecognized connectID"));
                    }
                    continue;
                };
                if d.data.is_empty() {
                    continue;
                }
                match conn.tx.try_send(d.data) {
                    Ok(()) => conn.ctl.progress.touch(),
                    Err(mpsc::error::TrySendError::Closed(_)) => {}
                    Err(mpsc::error::TrySendError::Full(b)) => {
                        let wait = conn.ctl.progress.remaining(shared.stall_timeout);
                        let stalled = wait.is_zero()
                            || tokio::select! {
                                r = conn.tx.send(b) => {
                                    if r.is_ok() {
                                        conn.ctl.progress.touch();
                                    }
                                    false
                                }
                                _ = tokio::time::sleep(wait) => true,
                                _ = cancel.cancelled() => false,
                            };
                        if stalled {
                            shared
                                .metrics
                                .stalled_connections
                                .fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(
                                component = COMPONENT,
                                connect_id = cid,
                                "endpoint stopped reading; closing that connection"
                            );
                            let _ = conn.ctl.close_error.set("endpoint stalled".into());
                            lock(&conns).remove(&cid);
                            conn.ctl.stop_read.cancel();
                        }
                    }
                }
            }
            PacketType::CloseReq => {
                let cid = p.connect_id();
                match lock(&conns).remove(&cid) {
                    // Dropping our sender lets the writer flush what is
                    // queued; the reader then sends CLOSE_RSP after its data.
                    Some(conn) => conn.ctl.stop_read.cancel(),
                    None => {
                        let _ = ctrl.try_send(Packet::close_rsp(cid, "Unknown connectID"));
                    }
                }
            }
            PacketType::DialCls => {
                // Upstream ignores this; honouring it stops a dial nobody
                // waits for any more.
                if let Some(t) = dials
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&p.random())
                {
                    t.cancel();
                }
            }
            PacketType::DialRsp | PacketType::CloseRsp | PacketType::Drain => {}
        }
    }
    cancel.cancel();
    shared.release(&server_id);
    let n = {
        let mut map = lock(&conns);
        let n = map.len();
        for (_, c) in map.drain() {
            c.ctl.stop_read.cancel();
        }
        n
    };
    tracing::info!(component = COMPONENT, server = %addr, server_id = %server_id, closed_connections = n, "disconnected from proxy server");
    Ended::Closed
}

/// Dials one endpoint and pumps it until either side closes.
async fn endpoint(
    shared: Arc<Shared>,
    conns: Conns,
    dials: Arc<Mutex<HashMap<i64, CancellationToken>>>,
    data: mpsc::Sender<Packet>,
    session: CancellationToken,
    address: String,
    random: i64,
) {
    let _task = shared.task_guard();
    let cid = shared.next_connect_id.fetch_add(1, Ordering::Relaxed);
    let started = Instant::now();
    let r = tokio::select! {
        r = super::dial(&address, shared.dial_timeout) => Some(r),
        _ = session.cancelled() => None,
    };
    dials
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&random);
    let Some(r) = r else { return };
    let stream = match r {
        Ok(s) => s,
        Err(f) => {
            shared.metrics.endpoint_dial_failures.inc(&[if f.timeout {
                "timeout"
            } else {
                "unknown"
            }]);
            tracing::debug!(component = COMPONENT, %address, error = %f.message, "endpoint dial failed");
            let _ = data.send(Packet::dial_rsp(random, 0, f.message)).await;
            return;
        }
    };
    shared.metrics.dial_duration.observe(started.elapsed());
    let _ = stream.set_nodelay(true);
    shared
        .metrics
        .open_endpoint_connections
        .fetch_add(1, Ordering::Relaxed);
    let guard = Arc::new(EndpointGuard(shared.clone()));
    let (tx, mut rx) = mpsc::channel::<Bytes>(shared.conn_queue);
    let ctl = Arc::new(ConnCtl {
        stop_read: session.child_token(),
        close_error: OnceLock::new(),
        progress: Progress::default(),
    });
    lock(&conns).insert(
        cid,
        Arc::new(Conn {
            tx,
            ctl: ctl.clone(),
        }),
    );
    if data.send(Packet::dial_rsp(random, cid, "")).await.is_err() {
        lock(&conns).remove(&cid);
        return;
    }
    let (mut rd, mut wr) = stream.into_split();

    // Writer: server → endpoint. Ends when the connection is removed from
    // the map (sender dropped, queue flushed first) or on a write error.
    let stop_read = ctl.stop_read.clone();
    let wctl = ctl.clone();
    let g2 = guard.clone();
    let s2 = shared.clone();
    let sess2 = session.clone();
    shared.tracker.spawn(async move {
        let _task = s2.task_guard();
        let _g = g2;
        loop {
            let b = tokio::select! {
                b = rx.recv() => b,
                _ = sess2.cancelled() => None,
            };
            match b {
                Some(b) => {
                    wctl.progress.touch();
                    if wr.write_all(&b).await.is_err() {
                        stop_read.cancel();
                        break;
                    }
                }
                None => break,
            }
        }
        let _ = wr.shutdown().await;
    });

    // Reader: endpoint → server, then CLOSE_RSP after the last DATA.
    let my = ctl;
    loop {
        let chunk = tokio::select! {
            r = rd.read_chunk() => r,
            _ = my.stop_read.cancelled() => break,
        };
        match chunk {
            Ok(Some(b)) => {
                let sent = tokio::select! {
                    r = data.send(Packet::data(cid, b)) => r.is_ok(),
                    _ = session.cancelled() => false,
                };
                if !sent {
                    break;
                }
            }
            _ => break,
        }
    }
    lock(&conns).remove(&cid);
    let err = my.close_error.get().cloned().unwrap_or_default();
    my.stop_read.cancel();
    drop(my);
    if !session.is_cancelled() {
        tokio::select! {
            _ = data.send(Packet::close_rsp(cid, err)) => {}
            _ = session.cancelled() => {}
        }
    }
    drop(guard);
}
