//! The sending half of the tunnel's gRPC streams without tonic's encode copy.
//!
//! tonic encodes every message into its own buffer: each 64 KiB DATA
//! payload was copied once more at every hop that sends it (agent,
//! server, client), the largest single cost after the kernel's socket
//! copies. Here a DATA packet is written as a small header (gRPC prefix and
//! every protobuf byte before the payload) followed by the payload `Bytes`
//! itself, as two body chunks; the bytes on the wire are exactly what prost
//! and tonic would have sent (tests compare them). Other packets are
//! encoded whole.
//!
//! Receiving ([`PacketStreaming`]) likewise parses messages straight out of
//! the HTTP/2 DATA frames: a payload that arrived in one frame becomes a
//! slice of it (tonic copied every frame into its decode buffer first).
//!
//! [`serve`] wraps a streaming handler as a tonic-routable service;
//! [`call`] opens a bidirectional stream over a tonic [`Channel`].

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::Stream;
use hyper::body::{Body, Frame};
use prost::encoding::{encode_varint, encoded_len_varint};
use prost::Message;
use tonic::metadata::{MetadataMap, GRPC_CONTENT_TYPE};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::proto::{Packet, Payload};

/// gRPC message prefix: compression flag and big-endian length.
const PREFIX: usize = 5;
/// DATA payloads from this size on are sent as their own chunk instead of
/// being copied behind the header.
pub const SPLIT_MIN: usize = 4 * 1024;

/// A stream of packets to send; an `Err` ends a server response with that
/// status.
pub type PacketStream = Pin<Box<dyn Stream<Item = Result<Packet, Status>> + Send + 'static>>;

fn put_prefix(buf: &mut BytesMut, len: usize) -> Result<(), Status> {
    let len = u32::try_from(len).map_err(|_| Status::internal("message too large to frame"))?;
    buf.put_u8(0);
    buf.put_u32(len);
    Ok(())
}

/// Encodes `p` as one gRPC message: the header bytes and, for a large DATA
/// payload, the payload itself (sent right after the header, uncopied).
pub fn encode(p: Packet) -> Result<(Bytes, Option<Bytes>), Status> {
    let large = matches!(&p.payload, Some(Payload::Data(d)) if d.data.len() >= SPLIT_MIN);
    if !large {
        let len = p.encoded_len();
        let mut buf = BytesMut::with_capacity(PREFIX + len);
        put_prefix(&mut buf, len)?;
        p.encode(&mut buf)
            .map_err(|e| Status::internal(format!("encode packet: {e}")))?;
        return Ok((buf.freeze(), None));
    }
    let Packet {
        r#type,
        payload: Some(Payload::Data(d)),
    } = p
    else {
        // `large` matched exactly this shape above.
        return Err(Status::internal("packet changed shape while encoding"));
    };
    // Field order and defaults as prost writes them: Packet.type (1,
    // skipped when 0), Packet.data (4, always present as a oneof arm),
    // then Data.connectID (1), Data.error (2), Data.data (3, last).
    let data_len = d.data.len();
    let mut inner = 1 + encoded_len_varint(data_len as u64) + data_len;
    if d.connect_id != 0 {
        inner += 1 + encoded_len_varint(d.connect_id as u64);
    }
    if !d.error.is_empty() {
        inner += 1 + encoded_len_varint(d.error.len() as u64) + d.error.len();
    }
    let mut msg = 1 + encoded_len_varint(inner as u64) + inner;
    if r#type != 0 {
        msg += 1 + encoded_len_varint(r#type as u64);
    }
    let mut h = BytesMut::with_capacity(PREFIX + msg - data_len);
    put_prefix(&mut h, msg)?;
    if r#type != 0 {
        h.put_u8(1 << 3); // field 1, varint
        encode_varint(r#type as u64, &mut h);
    }
    h.put_u8((4 << 3) | 2); // field 4, length-delimited
    encode_varint(inner as u64, &mut h);
    if d.connect_id != 0 {
        h.put_u8(1 << 3);
        encode_varint(d.connect_id as u64, &mut h);
    }
    if !d.error.is_empty() {
        h.put_u8((2 << 3) | 2);
        encode_varint(d.error.len() as u64, &mut h);
        h.put_slice(d.error.as_bytes());
    }
    h.put_u8((3 << 3) | 2);
    encode_varint(data_len as u64, &mut h);
    Ok((h.freeze(), Some(d.data)))
}

/// Which side of the RPC a [`PacketBody`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Request body: ends when the source ends.
    Client,
    /// Response body: ends with `grpc-status` trailers.
    Server,
}

/// HTTP body of a packet stream (see the module docs).
pub struct PacketBody {
    source: PacketStream,
    role: Role,
    /// The payload chunk that follows the header just sent.
    pending: Option<Bytes>,
    done: bool,
}

impl PacketBody {
    fn new(source: PacketStream, role: Role) -> Self {
        PacketBody {
            source,
            role,
            pending: None,
            done: false,
        }
    }

    fn finish(&mut self, status: Status) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        self.done = true;
        match self.role {
            Role::Client => Poll::Ready(None),
            Role::Server => {
                let mut trailers = http::HeaderMap::new();
                match status.add_header(&mut trailers) {
                    Ok(()) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
                    Err(e) => Poll::Ready(Some(Err(e))),
                }
            }
        }
    }
}

impl Body for PacketBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Some(b) = self.pending.take() {
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        if self.done {
            return Poll::Ready(None);
        }
        match self.source.as_mut().poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(p))) => match encode(p) {
                Ok((head, payload)) => {
                    self.pending = payload;
                    Poll::Ready(Some(Ok(Frame::data(head))))
                }
                Err(s) => self.finish(s),
            },
            Poll::Ready(Some(Err(s))) => match self.role {
                Role::Server => self.finish(s),
                Role::Client => {
                    self.done = true;
                    Poll::Ready(Some(Err(s)))
                }
            },
            Poll::Ready(None) => self.finish(Status::ok("")),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.pending.is_none()
    }
}

/// What a [`serve`]d RPC runs: the request stream in, packets out.
pub type Handler = Arc<
    dyn Fn(
            Request<PacketStreaming>,
        ) -> Pin<Box<dyn Future<Output = Result<Response<PacketStream>, Status>> + Send>>
        + Send
        + Sync,
>;

/// The konnectivity services (the protos have no package).
#[derive(Debug, Clone, Copy)]
pub struct AgentServiceName;
impl tonic::server::NamedService for AgentServiceName {
    const NAME: &'static str = "AgentService";
}
#[derive(Debug, Clone, Copy)]
pub struct ProxyServiceName;
impl tonic::server::NamedService for ProxyServiceName {
    const NAME: &'static str = "ProxyService";
}

/// A bidirectional-streaming gRPC method of service `N` served with
/// [`PacketBody`] responses; other methods answer `Unimplemented`, as a
/// generated tonic server does.
pub struct PacketService<N> {
    path: &'static str,
    max_decode: usize,
    handler: Handler,
    _name: std::marker::PhantomData<fn() -> N>,
}

impl<N> Clone for PacketService<N> {
    fn clone(&self) -> Self {
        PacketService {
            path: self.path,
            max_decode: self.max_decode,
            handler: self.handler.clone(),
            _name: std::marker::PhantomData,
        }
    }
}

impl<N: tonic::server::NamedService> tonic::server::NamedService for PacketService<N> {
    const NAME: &'static str = N::NAME;
}

impl<N> PacketService<N> {
    /// `path`: the full method path, e.g. `/AgentService/Connect`.
    pub fn new(path: &'static str, max_decode: usize, handler: Handler) -> Self {
        PacketService {
            path,
            max_decode,
            handler,
            _name: std::marker::PhantomData,
        }
    }
}

fn unimplemented() -> http::Response<tonic::body::Body> {
    let mut r = http::Response::new(tonic::body::Body::default());
    r.headers_mut().insert(
        Status::GRPC_STATUS,
        (tonic::Code::Unimplemented as i32).into(),
    );
    r.headers_mut()
        .insert(http::header::CONTENT_TYPE, GRPC_CONTENT_TYPE);
    r
}

impl<N, B> tower::Service<http::Request<B>> for PacketService<N>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != self.path {
            return Box::pin(async { Ok(unimplemented()) });
        }
        let handler = self.handler.clone();
        let max = self.max_decode;
        Box::pin(async move {
            let req = req
                .map(|body| PacketStreaming::new(tonic::body::Body::new(body), Role::Server, max));
            match handler(Request::from_http(req)).await {
                Ok(resp) => {
                    let (md, stream, _) = resp.into_parts();
                    let mut r = http::Response::new(tonic::body::Body::new(PacketBody::new(
                        stream,
                        Role::Server,
                    )));
                    *r.headers_mut() = md.into_headers();
                    r.headers_mut()
                        .insert(http::header::CONTENT_TYPE, GRPC_CONTENT_TYPE);
                    Ok(r)
                }
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

/// Opens the bidirectional stream `path` on `channel`, sending `source`
/// with [`PacketBody`] and `metadata` as request headers; resolves once the
/// response headers arrived (as tonic's generated client does).
pub async fn call(
    channel: &Channel,
    path: &'static str,
    metadata: MetadataMap,
    source: impl Stream<Item = Packet> + Send + 'static,
    max_decode: usize,
) -> Result<Response<PacketStreaming>, Status> {
    use futures::StreamExt;
    use tower::{Service, ServiceExt};

    let body = PacketBody::new(Box::pin(source.map(Ok)), Role::Client);
    let mut req = http::Request::new(tonic::body::Body::new(body));
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = http::Uri::from_static(path);
    *req.version_mut() = http::Version::HTTP_2;
    let h = req.headers_mut();
    *h = metadata.into_headers();
    h.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
    h.insert(http::header::CONTENT_TYPE, GRPC_CONTENT_TYPE);
    let mut ch = channel.clone();
    let ready = ch
        .ready()
        .await
        .map_err(|e| Status::from_error(Box::new(e)))?;
    let resp = ready
        .call(req)
        .await
        .map_err(|e| Status::from_error(Box::new(e)))?;
    // A `grpc-status` in the headers is a trailers-only answer.
    match Status::from_header_map(resp.headers()) {
        Some(s) if s.code() != tonic::Code::Ok => return Err(s),
        Some(_) => {
            let (head, _) = resp.into_parts();
            let mut s =
                PacketStreaming::new(tonic::body::Body::default(), Role::Client, max_decode);
            s.ended = true;
            return Ok(Response::from_parts(
                MetadataMap::from_headers(head.headers),
                s,
                head.extensions,
            ));
        }
        None => {}
    }
    if resp.status() != http::StatusCode::OK {
        return Err(Status::unknown(format!(
            "grpc-status header missing, mapped from HTTP status code {}",
            resp.status().as_u16()
        )));
    }
    let resp = resp.map(|body| PacketStreaming::new(body, Role::Client, max_decode));
    let (head, body) = resp.into_parts();
    Ok(Response::from_parts(
        MetadataMap::from_headers(head.headers),
        body,
        head.extensions,
    ))
}

/// The bytes of one message, read across the received chunks; a large
/// `bytes` field that lies within one chunk is sliced, not copied. Small
/// ones are copied so that a few bytes kept in a queue never pin a whole
/// receive buffer.
struct MsgBuf<'a> {
    chunks: &'a mut VecDeque<Bytes>,
    left: usize,
}

impl Buf for MsgBuf<'_> {
    fn remaining(&self) -> usize {
        self.left
    }

    fn chunk(&self) -> &[u8] {
        match self.chunks.front() {
            Some(c) => &c[..c.len().min(self.left)],
            None => &[],
        }
    }

    fn advance(&mut self, mut n: usize) {
        assert!(n <= self.left, "advance past the message");
        self.left -= n;
        while n > 0 {
            let Some(front) = self.chunks.front_mut() else {
                return;
            };
            if n < front.len() {
                front.advance(n);
                return;
            }
            n -= front.len();
            self.chunks.pop_front();
        }
    }

    fn copy_to_bytes(&mut self, len: usize) -> Bytes {
        assert!(len <= self.left, "copy past the message");
        if let Some(front) = self.chunks.front_mut() {
            if len >= SPLIT_MIN && len <= front.len() {
                let b = front.split_to(len);
                if front.is_empty() {
                    self.chunks.pop_front();
                }
                self.left -= len;
                return b;
            }
        }
        let mut out = BytesMut::with_capacity(len);
        while out.len() < len {
            let c = self.chunk();
            let k = c.len().min(len - out.len());
            out.put_slice(&c[..k]);
            self.advance(k);
        }
        out.freeze()
    }
}

/// The receiving half of a packet stream (request body on the server,
/// response body on a client); [`PacketStreaming::message`] behaves like
/// tonic's `Streaming::message`.
pub struct PacketStreaming {
    body: tonic::body::Body,
    role: Role,
    max: usize,
    chunks: VecDeque<Bytes>,
    buffered: usize,
    /// The body ended (or failed); only buffered bytes remain.
    ended: bool,
    trailers: Option<Status>,
}

impl std::fmt::Debug for PacketStreaming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PacketStreaming")
            .field("buffered", &self.buffered)
            .field("ended", &self.ended)
            .finish()
    }
}

impl PacketStreaming {
    fn new(body: tonic::body::Body, role: Role, max: usize) -> Self {
        PacketStreaming {
            body,
            role,
            max,
            chunks: VecDeque::new(),
            buffered: 0,
            ended: false,
            trailers: None,
        }
    }

    /// The next packet; `Ok(None)` when the stream ended cleanly.
    pub async fn message(&mut self) -> Result<Option<Packet>, Status> {
        std::future::poll_fn(|cx| self.poll_message(cx)).await
    }

    fn fail(&mut self, s: Status) -> Poll<Result<Option<Packet>, Status>> {
        self.ended = true;
        self.chunks.clear();
        self.buffered = 0;
        Poll::Ready(Err(s))
    }

    /// Poll form of [`PacketStreaming::message`].
    pub fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Packet>, Status>> {
        loop {
            if self.buffered >= PREFIX {
                let mut head = [0u8; PREFIX];
                let mut got = 0;
                for c in &self.chunks {
                    let k = c.len().min(PREFIX - got);
                    head[got..got + k].copy_from_slice(&c[..k]);
                    got += k;
                    if got == PREFIX {
                        break;
                    }
                }
                let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
                if head[0] != 0 {
                    return self.fail(Status::internal(
                        "protocol error: received message with compressed-flag but no grpc-encoding was specified",
                    ));
                }
                if len > self.max {
                    return self.fail(Status::out_of_range(format!(
                        "Error, decoded message length too large: found {len} bytes, the limit is: {} bytes",
                        self.max
                    )));
                }
                if self.buffered >= PREFIX + len {
                    let mut msg = MsgBuf {
                        chunks: &mut self.chunks,
                        left: PREFIX + len,
                    };
                    msg.advance(PREFIX);
                    let r = Packet::decode(&mut msg);
                    // A message prost stopped short in is skipped whole.
                    let rest = msg.remaining();
                    msg.advance(rest);
                    self.buffered -= PREFIX + len;
                    return match r {
                        Ok(p) => Poll::Ready(Ok(Some(p))),
                        Err(e) => self.fail(Status::internal(format!(
                            "failed to decode Protobuf message: {e}"
                        ))),
                    };
                }
            }
            if self.ended {
                if self.buffered > 0 {
                    return self.fail(Status::internal("stream ended inside a message"));
                }
                return Poll::Ready(match self.trailers.take() {
                    Some(s) if s.code() != tonic::Code::Ok => Err(s),
                    _ => Ok(None),
                });
            }
            match std::task::ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(d) => {
                        if !d.is_empty() {
                            self.buffered += d.len();
                            self.chunks.push_back(d);
                        }
                    }
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            if self.role == Role::Client {
                                self.trailers = Status::from_header_map(&t);
                            }
                        }
                    }
                },
                Some(Err(s)) => return self.fail(s),
                None => self.ended = true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(p: &Packet) -> Vec<u8> {
        let mut v = vec![0u8];
        v.extend_from_slice(&(p.encoded_len() as u32).to_be_bytes());
        v.extend_from_slice(&p.encode_to_vec());
        v
    }

    fn ours(p: Packet) -> Vec<u8> {
        let (h, payload) = encode(p).unwrap();
        let mut v = h.to_vec();
        if let Some(b) = payload {
            v.extend_from_slice(&b);
        }
        v
    }

    #[test]
    fn split_encoding_is_byte_identical_to_prost() {
        let big = Bytes::from((0..200_000u32).map(|i| i as u8).collect::<Vec<_>>());
        let mut cases = vec![
            Packet::data(7, big.slice(..SPLIT_MIN)),
            Packet::data(7, big.clone()),
            Packet::data(0, big.slice(..70_000)),
            Packet::data(-3, big.slice(..65_536)),
            Packet::data(i64::MAX, big.slice(..16_384)),
            Packet::data(1, Bytes::from_static(b"small")),
            Packet::data(1, Bytes::new()),
            Packet::dial_req("10.0.0.1:443", 42),
            Packet::close_rsp(9, "boom"),
            Packet::drain(),
        ];
        let mut with_error = Packet::data(5, big.slice(..40_000));
        if let Some(Payload::Data(d)) = &mut with_error.payload {
            d.error = "broken".into();
        }
        cases.push(with_error);
        let mut odd_type = Packet::data(5, big.slice(..40_000));
        odd_type.r#type = -1;
        cases.push(odd_type);
        let mut zero_type = Packet::data(5, big.slice(..40_000));
        zero_type.r#type = 0;
        cases.push(zero_type);
        for p in cases {
            assert_eq!(ours(p.clone()), wire(&p), "packet {:?}", p.kind());
        }
    }

    #[test]
    fn large_payloads_are_not_copied() {
        let payload = Bytes::from(vec![1u8; 64 * 1024]);
        let (head, rest) = encode(Packet::data(3, payload.clone())).unwrap();
        assert!(head.len() < 32);
        let rest = rest.expect("payload sent separately");
        assert_eq!(rest.as_ptr(), payload.as_ptr());
    }

    #[tokio::test]
    async fn server_body_ends_with_status_trailers() {
        use http_body_util::BodyExt;
        let src: PacketStream = Box::pin(futures::stream::iter(vec![
            Ok(Packet::data(1, Bytes::from(vec![2u8; SPLIT_MIN]))),
            Err(Status::aborted("gone")),
        ]));
        let mut body = PacketBody::new(src, Role::Server);
        let mut data = Vec::new();
        let mut trailers = None;
        while let Some(f) = body.frame().await {
            let f = f.unwrap();
            match f.into_data() {
                Ok(d) => data.extend_from_slice(&d),
                Err(f) => trailers = f.into_trailers().ok(),
            }
        }
        assert_eq!(
            data,
            wire(&Packet::data(1, Bytes::from(vec![2u8; SPLIT_MIN])))
        );
        let t = trailers.expect("trailers");
        assert_eq!(
            t.get("grpc-status").unwrap(),
            &(tonic::Code::Aborted as i32).to_string()
        );
        assert!(body.is_end_stream());
    }

    fn body(frames: Vec<Result<Frame<Bytes>, Status>>) -> tonic::body::Body {
        tonic::body::Body::new(http_body_util::StreamBody::new(futures::stream::iter(
            frames,
        )))
    }

    fn chunked(bytes: &[u8], cuts: &[usize]) -> Vec<Result<Frame<Bytes>, Status>> {
        let mut out = Vec::new();
        let mut at = 0;
        for &c in cuts.iter().chain(std::iter::once(&bytes.len())) {
            out.push(Ok(Frame::data(Bytes::copy_from_slice(&bytes[at..c]))));
            at = c;
        }
        out
    }

    #[tokio::test]
    async fn receives_messages_split_anywhere() {
        let packets = vec![
            Packet::dial_rsp(5, 9, ""),
            Packet::data(9, Bytes::from(vec![7u8; 70_000])),
            Packet::data(9, Bytes::from_static(b"x")),
            Packet::close_rsp(9, ""),
            Packet::default(),
        ];
        let all: Vec<u8> = packets.iter().flat_map(wire).collect();
        for cuts in [
            vec![],
            vec![1],
            vec![3, 4, 5, 6],
            vec![20, 40, 30_000, 70_030],
            (1..all.len()).step_by(997).collect(),
        ] {
            let mut s = PacketStreaming::new(body(chunked(&all, &cuts)), Role::Server, 1 << 20);
            for p in &packets {
                assert_eq!(
                    s.message().await.unwrap().as_ref(),
                    Some(p),
                    "cuts {cuts:?}"
                );
            }
            assert!(s.message().await.unwrap().is_none());
        }
    }

    #[tokio::test]
    async fn payload_in_one_frame_is_sliced_not_copied() {
        let p = Packet::data(3, Bytes::from(vec![1u8; 64 * 1024]));
        let (head, payload) = encode(p).unwrap();
        let payload = payload.unwrap();
        let frames = vec![Ok(Frame::data(head)), Ok(Frame::data(payload.clone()))];
        let mut s = PacketStreaming::new(body(frames), Role::Server, 1 << 20);
        let got = s.message().await.unwrap().unwrap();
        let Some(Payload::Data(d)) = got.payload else {
            panic!("not DATA")
        };
        assert_eq!(d.data.as_ptr(), payload.as_ptr());
    }

    #[tokio::test]
    async fn bad_messages_fail_the_stream() {
        let big = wire(&Packet::data(1, Bytes::from(vec![0u8; 2000])));
        let mut s = PacketStreaming::new(body(chunked(&big, &[])), Role::Server, 1000);
        assert_eq!(
            s.message().await.unwrap_err().code(),
            tonic::Code::OutOfRange
        );
        let mut compressed = wire(&Packet::drain());
        compressed[0] = 1;
        let mut s = PacketStreaming::new(body(chunked(&compressed, &[])), Role::Server, 1000);
        assert_eq!(s.message().await.unwrap_err().code(), tonic::Code::Internal);
        let garbage = [0u8, 0, 0, 0, 3, 0xff, 0xff, 0xff];
        let mut s = PacketStreaming::new(body(chunked(&garbage, &[])), Role::Server, 1000);
        assert_eq!(s.message().await.unwrap_err().code(), tonic::Code::Internal);
        let truncated = &wire(&Packet::drain())[..4];
        let mut s = PacketStreaming::new(body(chunked(truncated, &[])), Role::Server, 1000);
        assert!(s.message().await.is_err());
    }

    #[tokio::test]
    async fn client_sees_the_trailer_status() {
        let mut t = http::HeaderMap::new();
        Status::aborted("tunnel closed").add_header(&mut t).unwrap();
        let mut frames = chunked(&wire(&Packet::drain()), &[]);
        frames.push(Ok(Frame::trailers(t)));
        let mut s = PacketStreaming::new(body(frames), Role::Client, 1000);
        assert!(s.message().await.unwrap().is_some());
        let e = s.message().await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Aborted);
        assert_eq!(e.message(), "tunnel closed");
        let mut ok = http::HeaderMap::new();
        Status::ok("").add_header(&mut ok).unwrap();
        let mut s = PacketStreaming::new(body(vec![Ok(Frame::trailers(ok))]), Role::Client, 1000);
        assert!(s.message().await.unwrap().is_none());
    }
}
