//! The agent listener: TLS with a required client certificate from the
//! konnectivity CA, ALPN h2, `AgentService/Connect` streams.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::backend::{Backend, Identifiers};
use super::identity::{self, AgentIdentity};
use super::tunnels::DialOutcome;
use super::{
    Delivery, Shared, BACKEND_CTRL_QUEUE, CONN_WINDOW, MAX_DECODE, MAX_FRAME, STREAM_WINDOW,
};
use crate::konnectivity::io::{ReadBuffered, TLS_WRITE_BUFFER};
use crate::konnectivity::metrics::{FROM_AGENT, TO_AGENT, TO_CLIENT};
use crate::konnectivity::proto::{Packet, PacketType, Payload};
use crate::konnectivity::wire::{AgentServiceName, PacketService, PacketStream, PacketStreaming};

/// TLS handshakes that take longer are dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// After shutdown starts, how long the gRPC server may take to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Error text sent to frontends whose agent stream ended.
pub(crate) const AGENT_GONE: &str = "Backend context error: agent disconnected";

const COMPONENT: &str = "konnectivity-server";

/// One accepted agent connection: TLS over a read-buffered socket.
type AgentStream = tokio_rustls::server::TlsStream<ReadBuffered<tokio::net::TcpStream>>;

pub(crate) fn spawn(
    shared: Arc<Shared>,
    mut listener: crate::expose::Incoming,
    tls: Arc<rustls::ServerConfig>,
) {
    let (tx, rx) = mpsc::channel::<Result<AgentStream, std::io::Error>>(64);
    let acceptor = TlsAcceptor::from(tls);
    let s = shared.clone();
    shared.tracker.spawn(async move {
        loop {
            let (sock, peer) = tokio::select! {
                _ = s.cancel.cancelled() => break,
                r = listener.accept() => match r {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::warn!(component = COMPONENT, error = %crate::telemetry::Chain(&e), "agent listener accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let _ = sock.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let cancel = s.cancel.clone();
            s.tracker.spawn(async move {
                let hs = tokio::select! {
                    _ = cancel.cancelled() => return,
                    r = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(ReadBuffered::new(sock))) => r,
                };
                match hs {
                    Ok(Ok(mut tls)) => {
                        tls.get_mut().1.set_buffer_limit(Some(TLS_WRITE_BUFFER));
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(component = COMPONENT, %peer, error = %crate::telemetry::Chain(&e), "agent TLS handshake refused");
                    }
                    Err(_) => {
                        tracing::warn!(component = COMPONENT, %peer, "agent TLS handshake timed out");
                    }
                }
            });
        }
    });

    let agent_svc = Arc::new(AgentSvc {
        shared: shared.clone(),
    });
    let svc = PacketService::<AgentServiceName>::new(
        "/AgentService/Connect",
        MAX_DECODE,
        Arc::new(move |req| {
            let s = agent_svc.clone();
            Box::pin(async move { s.connect(req).await })
        }),
    );
    let cancel = shared.cancel.clone();
    shared.tracker.spawn(async move {
        let serve = tonic::transport::Server::builder()
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONN_WINDOW)
            .max_frame_size(MAX_FRAME)
            .max_concurrent_streams(1024)
            .add_service(svc)
            .serve_with_incoming_shutdown(
                ReceiverStream::new(rx),
                cancel.clone().cancelled_owned(),
            );
        tokio::select! {
            r = serve => if let Err(e) = r {
                tracing::warn!(component = COMPONENT, error = %crate::telemetry::Chain(&e), "agent gRPC server failed");
            },
            _ = async { cancel.cancelled().await; tokio::time::sleep(SHUTDOWN_GRACE).await } => {}
        }
    });
}

struct AgentSvc {
    shared: Arc<Shared>,
}

fn one_header(
    md: &tonic::metadata::MetadataMap,
    key: &str,
    required: bool,
) -> Result<Option<String>, Status> {
    let vals: Vec<_> = md.get_all(key).iter().collect();
    match vals.len() {
        0 if required => Err(Status::invalid_argument(format!(
            "expected one {key} header, got none"
        ))),
        0 => Ok(None),
        1 => vals[0]
            .to_str()
            .map(|s| Some(s.to_string()))
            .map_err(|_| Status::invalid_argument(format!("{key} header is not ASCII"))),
        n => Err(Status::invalid_argument(format!(
            "expected one {key} header, got {n}"
        ))),
    }
}

/// [`AgentIdentity::Certificate`]: the agent's id is its certificate's, and
/// identifiers beyond what the certificate covers are refused (logged and
/// counted). Returns the id to register the agent under.
fn bind_to_certificate(
    shared: &Shared,
    req: &Request<PacketStreaming>,
    header_id: String,
    identifiers: &Identifiers,
) -> Result<String, Status> {
    let peer = req
        .remote_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|| "unknown".into());
    let certs = req.peer_certs();
    let leaf = certs.as_ref().and_then(|c| c.first()).map(|c| c.as_ref());
    match identity::bind(leaf, &header_id, identifiers) {
        Ok(bound) => {
            if let Some(claimed) = &bound.ignored_header {
                shared
                    .metrics
                    .agent_id_header_ignored
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(
                    component = COMPONENT,
                    %peer,
                    agent_id = %bound.agent_id,
                    claimed_agent_id = %claimed,
                    "agent's agentid header differs from its certificate; registered under the certificate's id"
                );
            }
            Ok(bound.agent_id)
        }
        Err(refusal) => {
            shared
                .metrics
                .agent_identity_refused
                .inc(&[refusal.reason()]);
            tracing::warn!(
                component = COMPONENT,
                %peer,
                claimed_agent_id = %header_id,
                reason = refusal.reason(),
                error = %refusal,
                "agent refused: identity not backed by its certificate"
            );
            Err(Status::permission_denied(refusal.to_string()))
        }
    }
}

impl AgentSvc {
    async fn connect(
        &self,
        req: Request<PacketStreaming>,
    ) -> Result<Response<PacketStream>, Status> {
        let shared = &self.shared;
        let md = req.metadata();
        let mut agent_id = one_header(md, "agentid", true)?.unwrap_or_default();
        if agent_id.is_empty() {
            return Err(Status::invalid_argument("agentid header is empty"));
        }
        let identifiers = match one_header(md, "agentidentifiers", false)? {
            Some(s) => {
                Identifiers::parse(&s).map_err(|e| Status::invalid_argument(e.to_string()))?
            }
            None => Identifiers::default(),
        };
        if shared.agent_identity == AgentIdentity::Certificate {
            agent_id = bind_to_certificate(shared, &req, agent_id, &identifiers)?;
        }
        let mut resp_md = tonic::metadata::MetadataMap::new();
        resp_md.insert(
            "serverid",
            shared
                .server_id
                .parse()
                .map_err(|_| Status::internal("server id is not a valid header value"))?,
        );
        resp_md.insert(
            "servercount",
            shared
                .server_count
                .load(std::sync::atomic::Ordering::Relaxed)
                .to_string()
                .parse()
                .map_err(|_| Status::internal("bad server count"))?,
        );
        let inbound = req.into_inner();
        let (data_tx, data_rx) = mpsc::channel(shared.backend_queue);
        let (ctrl_tx, ctrl_rx) = mpsc::channel(BACKEND_CTRL_QUEUE);
        let cancel = shared.cancel.child_token();
        let backend = Arc::new(Backend::new(
            shared.next_id(),
            agent_id.clone(),
            identifiers,
            data_tx,
            ctrl_tx,
            cancel.clone(),
        ));
        shared.backends.add(backend.clone());
        shared.refresh_backend_metrics();
        shared.metrics.grpc_connections.add(&["Connect"], 1);
        tracing::info!(
            component = COMPONENT,
            agent_id = %agent_id,
            identifiers = ?backend.identifiers,
            "agent connected"
        );
        shared
            .tracker
            .spawn(backend_reader(shared.clone(), backend, inbound));

        let metrics = shared.metrics.clone();
        let out = futures::stream::unfold(
            (ctrl_rx, data_rx, cancel, metrics),
            |(mut ctrl, mut data, cancel, metrics)| async move {
                let p = tokio::select! {
                    biased;
                    _ = cancel.cancelled() => None,
                    Some(p) = ctrl.recv() => Some(p),
                    Some(p) = data.recv() => Some(p),
                    else => None,
                };
                p.map(|p| {
                    metrics.stream_packets.inc(TO_AGENT, p.r#type);
                    (Ok(p), (ctrl, data, cancel, metrics))
                })
            },
        );
        let mut resp = Response::new(Box::pin(out) as PacketStream);
        *resp.metadata_mut() = resp_md;
        Ok(resp)
    }
}

async fn backend_reader(shared: Arc<Shared>, backend: Arc<Backend>, mut inbound: PacketStreaming) {
    let _guard = shared.task_guard();
    loop {
        let msg = tokio::select! {
            m = inbound.message() => m,
            _ = backend.cancel.cancelled() => break,
        };
        match msg {
            Ok(Some(p)) => {
                shared.metrics.stream_packets.inc(FROM_AGENT, p.r#type);
                handle(&shared, &backend, p).await;
            }
            Ok(None) => break,
            Err(status) => {
                shared.metrics.stream_errors.inc(&[
                    "from_agent",
                    &format!("{:?}", status.code()),
                    "UNKNOWN",
                ]);
                tracing::info!(
                    component = COMPONENT,
                    agent_id = %backend.agent_id,
                    error = %status.message(),
                    "agent stream ended with an error"
                );
                break;
            }
        }
    }
    backend.cancel.cancel();
    shared.backends.remove(&backend);
    shared.refresh_backend_metrics();
    shared.metrics.grpc_connections.add(&["Connect"], -1);
    let orphans = shared.tunnels.backend_gone(backend.id, AGENT_GONE);
    tracing::info!(
        component = COMPONENT,
        agent_id = %backend.agent_id,
        closed_tunnels = orphans.len(),
        "agent disconnected"
    );
    for (link, p) in orphans {
        shared.metrics.stream_packets.inc(TO_CLIENT, p.r#type);
        if link.tx.try_send(Box::new(p)).is_err() {
            link.kill.cancel();
        }
    }
}

async fn handle(shared: &Arc<Shared>, backend: &Arc<Backend>, p: Packet) {
    let Some(kind) = p.kind() else { return };
    match kind {
        PacketType::DialRsp => {
            let Some(Payload::DialResponse(rsp)) = &p.payload else {
                return;
            };
            let ok = rsp.error.is_empty() && rsp.connect_id != 0;
            let (cid, random) = (rsp.connect_id, rsp.random);
            match shared.tunnels.dial_response(backend.id, random, cid, ok) {
                DialOutcome::Forward(link, elapsed) => {
                    if ok {
                        shared.metrics.dial_duration.observe(elapsed);
                    } else {
                        shared.metrics.dial_failures.inc(&["error_response"]);
                    }
                    shared.metrics.stream_packets.inc(TO_CLIENT, p.r#type);
                    let d = shared.deliver(&link, p).await;
                    if d != Delivery::Delivered {
                        shared.metrics.dial_failures.inc(&["send_rsp"]);
                        if ok {
                            shared.abort_tunnel(backend, cid, d == Delivery::Stalled);
                        }
                    }
                }
                DialOutcome::Unknown => {
                    shared.metrics.dial_failures.inc(&["unrecognized_response"]);
                    if cid != 0 {
                        backend.send_ctrl(Packet::close_req(cid));
                    }
                }
            }
        }
        PacketType::Data => {
            let cid = p.connect_id();
            if cid == 0 {
                return;
            }
            match shared.tunnels.lookup(backend.id, cid) {
                Some(link) => {
                    shared.metrics.stream_packets.inc(TO_CLIENT, p.r#type);
                    match shared.deliver(&link, p).await {
                        Delivery::Delivered => {}
                        Delivery::Gone => shared.abort_tunnel(backend, cid, false),
                        Delivery::Stalled => shared.abort_tunnel(backend, cid, true),
                    }
                }
                None => backend.send_ctrl(Packet::close_req(cid)),
            }
        }
        PacketType::CloseRsp => {
            let cid = p.connect_id();
            if let Some(link) = shared.tunnels.close_response(backend.id, cid) {
                shared.metrics.stream_packets.inc(TO_CLIENT, p.r#type);
                if shared.deliver(&link, p).await == Delivery::Stalled {
                    link.kill.cancel();
                }
            }
        }
        PacketType::DialCls => {
            if let Some(link) = shared.tunnels.dial_closed_by_agent(backend.id, p.random()) {
                shared.metrics.dial_failures.inc(&["backend_close"]);
                shared.metrics.stream_packets.inc(TO_CLIENT, p.r#type);
                if shared.deliver(&link, p).await == Delivery::Stalled {
                    link.kill.cancel();
                }
            }
        }
        PacketType::Drain => {
            tracing::info!(component = COMPONENT, agent_id = %backend.agent_id, "agent is draining");
            backend.set_draining();
        }
        PacketType::DialReq | PacketType::CloseReq => {}
    }
}
