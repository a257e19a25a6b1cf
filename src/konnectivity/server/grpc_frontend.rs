//! gRPC frontend (`ProxyService/Proxy`) on a unix socket: what
//! kube-apiserver's egress selector (proxyProtocol GRPC) and
//! konnectivity-client speak. One dial per stream; many streams per
//! connection.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixListener;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

use tokio_stream::StreamExt;

use super::authority::AuthorityFix;
use super::tunnels::{FrontendKind, FrontendLink};
use super::{Shared, CONN_WINDOW, DEFAULT_SEND_TIMEOUT, MAX_DECODE, MAX_FRAME, STREAM_WINDOW};
use crate::konnectivity::metrics::{FROM_CLIENT, TO_AGENT, TO_CLIENT};
use crate::konnectivity::proto::{Packet, PacketType, Payload};
use crate::konnectivity::wire::{PacketService, PacketStream, PacketStreaming, ProxyServiceName};

const COMPONENT: &str = "konnectivity-server";
/// After shutdown starts, how long the gRPC server may take to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Concurrent Proxy streams per frontend connection (grpc-go allows ~all).
const MAX_STREAMS: u32 = 1 << 20;

pub(crate) fn spawn_uds(shared: Arc<Shared>, listener: UnixListener) {
    let proxy_svc = Arc::new(ProxySvc {
        shared: shared.clone(),
    });
    let svc = PacketService::<ProxyServiceName>::new(
        "/ProxyService/Proxy",
        MAX_DECODE,
        Arc::new(move |req| {
            let s = proxy_svc.clone();
            Box::pin(async move { s.proxy(req).await })
        }),
    );
    let cancel = shared.cancel.clone();
    shared.tracker.spawn(async move {
        let serve = tonic::transport::Server::builder()
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONN_WINDOW)
            .max_frame_size(MAX_FRAME)
            .max_concurrent_streams(MAX_STREAMS)
            .add_service(svc)
            .serve_with_incoming_shutdown(
                // Any :authority, as upstream accepts (see authority.rs).
                UnixListenerStream::new(listener).map(|c| c.map(AuthorityFix::new)),
                cancel.clone().cancelled_owned(),
            );
        tokio::select! {
            r = serve => if let Err(e) = r {
                tracing::warn!(component = COMPONENT, error = %crate::telemetry::Chain(&e), "gRPC frontend failed");
            },
            _ = async { cancel.cancelled().await; tokio::time::sleep(SHUTDOWN_GRACE).await } => {}
        }
    });
}

struct ProxySvc {
    shared: Arc<Shared>,
}

impl ProxySvc {
    async fn proxy(&self, req: Request<PacketStreaming>) -> Result<Response<PacketStream>, Status> {
        let shared = &self.shared;
        let inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(shared.frontend_queue);
        let kill = shared.cancel.child_token();
        let link = Arc::new(FrontendLink {
            id: shared.next_id(),
            kind: FrontendKind::Grpc,
            tx,
            kill: kill.clone(),
            progress: Default::default(),
        });
        shared.tunnels.register(link.clone());
        shared.grpc_streams.fetch_add(1, Ordering::Relaxed);
        shared.metrics.grpc_connections.add(&["Proxy"], 1);
        // The response side only needs the progress stamp, not the link
        // (which holds the sender: keeping it would keep the stream open).
        let link_for_out = link.progress.clone();
        shared
            .tracker
            .spawn(frontend_reader(shared.clone(), link, inbound));
        let metrics = shared.metrics.clone();
        let out = futures::stream::unfold(
            Some((rx, kill, metrics, link_for_out)),
            |state| async move {
                let (mut rx, kill, metrics, link) = state?;
                tokio::select! {
                    biased;
                    _ = kill.cancelled() => Some((
                        Err(Status::aborted("tunnel closed by the proxy server")),
                        None,
                    )),
                    p = rx.recv() => p.map(|p| {
                        link.touch();
                        metrics.stream_packets.inc(TO_CLIENT, p.r#type);
                        (Ok(*p), Some((rx, kill, metrics, link)))
                    }),
                }
            },
        );
        Ok(Response::new(Box::pin(out) as PacketStream))
    }
}

async fn sleep_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn reply(link: &FrontendLink, p: Packet) {
    tokio::select! {
        _ = link.tx.send(Box::new(p)) => {}
        _ = link.kill.cancelled() => {}
    }
}

/// Reads one Proxy stream until it ends, then releases all it owned.
async fn frontend_reader(
    shared: Arc<Shared>,
    link: Arc<FrontendLink>,
    mut inbound: PacketStreaming,
) {
    let _guard = shared.task_guard();
    let mut processing = true;
    let mut dial: Option<(i64, Instant)> = None;
    loop {
        let msg = tokio::select! {
            m = inbound.message() => m,
            _ = link.kill.cancelled() => break,
            _ = sleep_opt(dial.map(|d| d.1)) => {
                if let Some((random, _)) = dial.take() {
                    if let Some(backend) = shared.tunnels.backend_of(link.id) {
                        if shared.tunnels.cancel_dial(link.id, random) {
                            shared.metrics.dial_failures.inc(&["backend_dial_timeout"]);
                            backend.send_ctrl(Packet::dial_cls(random));
                            reply(&link, Packet::dial_rsp(random, 0, "timed out waiting for backend dial")).await;
                        }
                    }
                }
                continue;
            }
        };
        match msg {
            Ok(Some(p)) => {
                shared.metrics.stream_packets.inc(FROM_CLIENT, p.r#type);
                if processing {
                    // Boxed: its state lives only while a packet is
                    // handled, not in every idle tunnel's task.
                    processing = Box::pin(handle(&shared, &link, p, &mut dial)).await;
                }
            }
            Ok(None) => break,
            Err(status) => {
                shared.metrics.stream_errors.inc(&[
                    "from_client",
                    &format!("{:?}", status.code()),
                    "UNKNOWN",
                ]);
                tracing::debug!(component = COMPONENT, error = %status.message(), "frontend stream failed");
                // End the response with an error status too (e.g. an
                // undecodable or oversized packet): only this stream dies.
                link.kill.cancel();
                break;
            }
        }
    }
    for (backend, p) in shared.tunnels.frontend_gone(link.id) {
        shared.metrics.stream_packets.inc(TO_AGENT, p.r#type);
        if backend
            .send(p.clone(), Duration::from_secs(1))
            .await
            .is_err()
        {
            backend.send_ctrl(p);
        }
    }
    shared.grpc_streams.fetch_sub(1, Ordering::Relaxed);
    shared.metrics.grpc_connections.add(&["Proxy"], -1);
}

/// Handles one frontend packet; returns whether to keep processing packets
/// of this stream (later ones are read and discarded, as upstream does).
async fn handle(
    shared: &Arc<Shared>,
    link: &Arc<FrontendLink>,
    p: Packet,
    dial: &mut Option<(i64, Instant)>,
) -> bool {
    let Some(kind) = p.kind() else { return true };
    match kind {
        PacketType::DialReq => {
            let (address, protocol, random) = match &p.payload {
                Some(Payload::DialRequest(r)) => (r.address.clone(), r.protocol.clone(), r.random),
                _ => (String::new(), String::new(), 0),
            };
            if shared.tunnels.backend_of(link.id).is_some() {
                reply(
                    link,
                    Packet::dial_rsp(random, 0, "only one dial per stream is supported"),
                )
                .await;
                return true;
            }
            if protocol != "tcp" || address.is_empty() {
                reply(
                    link,
                    Packet::dial_rsp(
                        random,
                        0,
                        format!("unsupported dial: protocol {protocol:?} address {address:?}"),
                    ),
                )
                .await;
                return false;
            }
            let Some(backend) = shared.backends.choose(&address) else {
                shared.metrics.dial_failures.inc(&["no_agent"]);
                reply(link, Packet::dial_rsp(random, 0, "No agent available")).await;
                return false;
            };
            if let Err(e) = shared.tunnels.begin_dial(link.id, random, backend.clone()) {
                reply(link, Packet::dial_rsp(random, 0, e)).await;
                return false;
            }
            shared.metrics.stream_packets.inc(TO_AGENT, p.r#type);
            if let Err(e) = backend.send(p, DEFAULT_SEND_TIMEOUT).await {
                shared.tunnels.cancel_dial(link.id, random);
                let reason = match e {
                    super::backend::SendError::Timeout => "backend_dial_timeout",
                    super::backend::SendError::Gone => "backend_close",
                };
                shared.metrics.dial_failures.inc(&[reason]);
                reply(link, Packet::dial_rsp(random, 0, e.to_string())).await;
                return false;
            }
            *dial = Some((random, Instant::now() + shared.dial_timeout));
            true
        }
        PacketType::Data => {
            let cid = p.connect_id();
            let Some(backend) = shared.tunnels.backend_of(link.id) else {
                reply(link, Packet::close_rsp(cid, "backend not initialized")).await;
                return false;
            };
            if cid == 0 {
                return true;
            }
            if let Some((_, own)) = shared.tunnels.established_of(link.id) {
                if own != cid {
                    // Only this stream's own connection is closed: another id
                    // may belong to someone else's tunnel on the same agent.
                    backend.send_ctrl(Packet::close_req(own));
                    shared.tunnels.mark_close_sent(link.id);
                    reply(link, Packet::close_rsp(own, "mismatched connection IDs")).await;
                    reply(link, Packet::close_rsp(cid, "mismatched connection IDs")).await;
                    return false;
                }
            }
            shared.metrics.stream_packets.inc(TO_AGENT, p.r#type);
            if backend.send(p, DEFAULT_SEND_TIMEOUT).await.is_err() {
                reply(link, Packet::close_rsp(cid, "DATA to backend failed")).await;
                return false;
            }
            true
        }
        PacketType::CloseReq => {
            let cid = p.connect_id();
            let Some(backend) = shared.tunnels.backend_of(link.id) else {
                reply(link, Packet::close_rsp(cid, "backend uninitialized")).await;
                return true;
            };
            shared.metrics.stream_packets.inc(TO_AGENT, p.r#type);
            shared.tunnels.mark_close_sent(link.id);
            if backend.send(p, DEFAULT_SEND_TIMEOUT).await.is_err() {
                reply(link, Packet::close_rsp(cid, "CLOSE_REQ to backend failed")).await;
            }
            false
        }
        PacketType::DialCls => {
            if shared.tunnels.cancel_dial(link.id, p.random()) {
                shared.metrics.dial_failures.inc(&["frontend_close"]);
            }
            *dial = None;
            true
        }
        PacketType::DialRsp | PacketType::CloseRsp | PacketType::Drain => true,
    }
}
