//! Any `:authority` on the gRPC frontend's unix socket, as upstream's Go
//! server accepts.
//!
//! grpc-go dialling a socket path (kube-apiserver's konnectivity-client) and
//! gRPC C-core clients (Python `grpcio`, ...) send the socket path, or a
//! percent-encoded form of it, as `:authority`. The HTTP/2 layer under tonic
//! checks that value against URI syntax and resets the stream with
//! `PROTOCOL_ERROR` before the service ever sees it, so kube-apiserver's
//! first dial through the egress selector fails. Over a unix socket the
//! authority names nothing, so [`AuthorityFix`] sits between the socket and
//! tonic and replaces an authority that is not valid URI syntax with
//! `localhost`.
//!
//! Only header blocks are touched: HPACK state is per direction and per
//! connection, so every client header block is decoded (tracking the
//! client's dynamic table) and re-encoded (feeding the server's). Every other
//! frame, DATA included, is read straight into the caller's buffer; the
//! server-to-client direction is not touched at all.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use loona_hpack::{Decoder, Encoder};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const COMPONENT: &str = "konnectivity-server";
/// The client connection preface every HTTP/2 connection starts with.
const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// Stream dependency (4 bytes) and weight (1 byte) of a HEADERS frame.
const PRIORITY_LEN: usize = 5;
/// The largest frame any HTTP/2 peer must accept: re-encoded header blocks
/// are cut to this.
const MAX_OUT_FRAME: usize = 16_384;
/// Bound on one header block (all its HEADERS and CONTINUATION fragments).
/// A Proxy stream's headers are a few hundred bytes; tonic's own limit on a
/// decoded header list is 16 KiB.
pub const MAX_HEADER_BLOCK: usize = 64 * 1024;
/// The HPACK dynamic table size both sides use (neither advertises another).
const HPACK_TABLE_SIZE: usize = 4096;
/// What an authority that is not URI syntax becomes.
const REPLACEMENT: &[u8] = b"localhost";

/// A client connection that cannot be carried further.
#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    #[error("header block of {len} bytes on stream {stream} exceeds {MAX_HEADER_BLOCK}")]
    BlockTooLarge { stream: u32, len: usize },
    #[error("frame of type {frame_type:#x} on stream {stream} in the middle of a header block")]
    Interleaved { stream: u32, frame_type: u8 },
    #[error("CONTINUATION on stream {stream} without a header block")]
    StrayContinuation { stream: u32 },
    #[error("HEADERS frame on stream {stream}: padding or priority longer than the frame")]
    BadHeadersFrame { stream: u32 },
    #[error("undecodable header block on stream {stream}: {reason}")]
    Hpack { stream: u32, reason: String },
    #[error("connection closed in the middle of a frame")]
    Truncated,
}

impl From<AuthorityError> for io::Error {
    fn from(e: AuthorityError) -> io::Error {
        let kind = match e {
            AuthorityError::Truncated => io::ErrorKind::UnexpectedEof,
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, e)
    }
}

enum ReadState {
    /// Bytes of the connection preface still to pass through.
    Preface(usize),
    /// Reading a frame header into `hdr`.
    Header,
    /// Bytes of a non-header frame's payload still to pass through.
    Passthrough(usize),
    /// Reading a HEADERS or CONTINUATION payload into `payload`.
    Collect,
}

/// The header block being collected across HEADERS and CONTINUATION frames.
struct Block {
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; PRIORITY_LEN]>,
    fragment: Vec<u8>,
}

/// Reads a client's HTTP/2 connection, rewriting an invalid `:authority`
/// (see the module doc); writes go to the inner stream unchanged.
pub struct AuthorityFix<S> {
    inner: S,
    state: ReadState,
    hdr: [u8; FRAME_HEADER_LEN],
    hdr_len: usize,
    /// Type, flags and stream of the frame whose payload is being collected.
    frame: (u8, u8, u32),
    payload: Vec<u8>,
    payload_len: usize,
    block: Option<Block>,
    /// Bytes ready for the reader: a held frame header or re-encoded frames.
    out: Vec<u8>,
    out_pos: usize,
    decoder: Decoder<'static>,
    encoder: Encoder<'static>,
    rewrites: u64,
}

impl<S> AuthorityFix<S> {
    pub fn new(inner: S) -> Self {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(HPACK_TABLE_SIZE);
        let mut encoder = Encoder::new();
        encoder.set_max_table_size(HPACK_TABLE_SIZE);
        AuthorityFix {
            inner,
            state: ReadState::Preface(PREFACE_LEN),
            hdr: [0; FRAME_HEADER_LEN],
            hdr_len: 0,
            frame: (0, 0, 0),
            payload: Vec::new(),
            payload_len: 0,
            block: None,
            out: Vec::new(),
            out_pos: 0,
            decoder,
            encoder,
            rewrites: 0,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// A frame header is complete: decide what happens to its payload.
    fn on_frame_header(&mut self) -> Result<(), AuthorityError> {
        let h = self.hdr;
        let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
        let (ty, flags) = (h[3], h[4]);
        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        if let Some(b) = &self.block {
            if ty != CONTINUATION || stream != b.stream {
                return Err(AuthorityError::Interleaved {
                    stream,
                    frame_type: ty,
                });
            }
        } else if ty == CONTINUATION {
            return Err(AuthorityError::StrayContinuation { stream });
        }
        if ty == HEADERS || ty == CONTINUATION {
            let so_far = self.block.as_ref().map_or(0, |b| b.fragment.len());
            if so_far + len > MAX_HEADER_BLOCK {
                return Err(AuthorityError::BlockTooLarge {
                    stream,
                    len: so_far + len,
                });
            }
            self.frame = (ty, flags, stream);
            self.payload.clear();
            self.payload_len = len;
            self.state = ReadState::Collect;
        } else {
            self.out.clear();
            self.out.extend_from_slice(&h);
            self.out_pos = 0;
            self.state = if len == 0 {
                ReadState::Header
            } else {
                ReadState::Passthrough(len)
            };
        }
        self.hdr_len = 0;
        Ok(())
    }

    /// A HEADERS or CONTINUATION payload is complete.
    fn on_payload(&mut self) -> Result<(), AuthorityError> {
        let (ty, flags, stream) = self.frame;
        let p = std::mem::take(&mut self.payload);
        if ty == HEADERS {
            let mut body = &p[..];
            let mut pad = 0;
            if flags & PADDED != 0 {
                let (&n, rest) = body
                    .split_first()
                    .ok_or(AuthorityError::BadHeadersFrame { stream })?;
                pad = usize::from(n);
                body = rest;
            }
            let mut priority = None;
            if flags & PRIORITY != 0 {
                let (pri, rest) = body
                    .split_first_chunk::<PRIORITY_LEN>()
                    .ok_or(AuthorityError::BadHeadersFrame { stream })?;
                priority = Some(*pri);
                body = rest;
            }
            let keep = body
                .len()
                .checked_sub(pad)
                .ok_or(AuthorityError::BadHeadersFrame { stream })?;
            self.block = Some(Block {
                stream,
                end_stream: flags & END_STREAM != 0,
                priority,
                fragment: body[..keep].to_vec(),
            });
        } else if let Some(b) = &mut self.block {
            b.fragment.extend_from_slice(&p);
        }
        self.payload = p;
        self.payload.clear();
        if flags & END_HEADERS != 0 {
            if let Some(b) = self.block.take() {
                self.reencode(b)?;
            }
        }
        self.state = ReadState::Header;
        Ok(())
    }

    /// Decodes a whole header block, fixes `:authority`, and queues it as
    /// HEADERS (+ CONTINUATION) frames for the server.
    fn reencode(&mut self, b: Block) -> Result<(), AuthorityError> {
        let mut fields = self
            .decoder
            .decode(&b.fragment)
            .map_err(|e| AuthorityError::Hpack {
                stream: b.stream,
                reason: format!("{e:?}"),
            })?;
        for (name, value) in &mut fields {
            if name.as_slice() == b":authority"
                && http::uri::Authority::try_from(value.as_slice()).is_err()
            {
                if self.rewrites == 0 {
                    tracing::debug!(
                        component = COMPONENT,
                        authority = %String::from_utf8_lossy(value),
                        "client sent a socket path as :authority; serving it as localhost"
                    );
                }
                self.rewrites += 1;
                *value = REPLACEMENT.to_vec();
            }
        }
        let block = self
            .encoder
            .encode(fields.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        self.out.clear();
        self.out_pos = 0;
        let first_room = MAX_OUT_FRAME - b.priority.map_or(0, |_| PRIORITY_LEN);
        let (first, mut rest) = block.split_at(block.len().min(first_room));
        let mut flags = if rest.is_empty() { END_HEADERS } else { 0 };
        if b.end_stream {
            flags |= END_STREAM;
        }
        if b.priority.is_some() {
            flags |= PRIORITY;
        }
        let pri = b.priority.as_ref().map_or(&[][..], |p| &p[..]);
        push_frame(&mut self.out, HEADERS, flags, b.stream, &[pri, first]);
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(rest.len().min(MAX_OUT_FRAME));
            let flags = if tail.is_empty() { END_HEADERS } else { 0 };
            push_frame(&mut self.out, CONTINUATION, flags, b.stream, &[chunk]);
            rest = tail;
        }
        Ok(())
    }
}

fn push_frame(out: &mut Vec<u8>, ty: u8, flags: u8, stream: u32, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    // len <= MAX_OUT_FRAME, which fits the 24-bit length field.
    out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
    out.push(ty);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    for p in parts {
        out.extend_from_slice(p);
    }
}

/// Reads at most `limit` bytes from `inner` straight into `buf`; returns how
/// many (0 at end of stream).
fn read_into<S: AsyncRead + Unpin>(
    inner: &mut S,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
    limit: usize,
) -> Poll<io::Result<usize>> {
    let mut sub = buf.take(limit);
    ready!(Pin::new(inner).poll_read(cx, &mut sub))?;
    let n = sub.filled().len();
    // SAFETY: `sub` covers the start of `buf`'s unfilled part, and the inner
    // reader initialised and filled its first `n` bytes.
    unsafe { buf.assume_init(n) };
    buf.advance(n);
    Poll::Ready(Ok(n))
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.out_pos < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.out_pos);
                buf.put_slice(&this.out[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                return Poll::Ready(Ok(()));
            }
            match this.state {
                ReadState::Preface(left) | ReadState::Passthrough(left) => {
                    let n = ready!(read_into(&mut this.inner, cx, buf, left))?;
                    if n == 0 {
                        return match this.state {
                            ReadState::Preface(PREFACE_LEN) => Poll::Ready(Ok(())),
                            _ => Poll::Ready(Err(AuthorityError::Truncated.into())),
                        };
                    }
                    this.state = match (&this.state, left - n) {
                        (_, 0) => ReadState::Header,
                        (ReadState::Preface(_), l) => ReadState::Preface(l),
                        (_, l) => ReadState::Passthrough(l),
                    };
                    return Poll::Ready(Ok(()));
                }
                ReadState::Header => {
                    let mut hb = ReadBuf::new(&mut this.hdr[this.hdr_len..]);
                    ready!(Pin::new(&mut this.inner).poll_read(cx, &mut hb))?;
                    let n = hb.filled().len();
                    if n == 0 {
                        if this.hdr_len == 0 && this.block.is_none() {
                            return Poll::Ready(Ok(()));
                        }
                        return Poll::Ready(Err(AuthorityError::Truncated.into()));
                    }
                    this.hdr_len += n;
                    if this.hdr_len == FRAME_HEADER_LEN {
                        this.on_frame_header()?;
                    }
                }
                ReadState::Collect => {
                    let need = this.payload_len - this.payload.len();
                    if need > 0 {
                        let start = this.payload.len();
                        this.payload.resize(this.payload_len, 0);
                        let mut pb = ReadBuf::new(&mut this.payload[start..]);
                        let r = Pin::new(&mut this.inner).poll_read(cx, &mut pb);
                        let n = pb.filled().len();
                        this.payload.truncate(start + n);
                        ready!(r)?;
                        if n == 0 {
                            return Poll::Ready(Err(AuthorityError::Truncated.into()));
                        }
                        continue;
                    }
                    this.on_payload()?;
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected
    for AuthorityFix<S>
{
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const PREFACE: &[u8; PREFACE_LEN] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        push_frame(&mut v, ty, flags, stream, &[payload]);
        v
    }

    /// Everything `input` becomes after the fix, read in small pieces.
    async fn through(input: Vec<u8>, read_size: usize) -> io::Result<Vec<u8>> {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        client.write_all(&input).await.unwrap();
        drop(client);
        let mut fix = AuthorityFix::new(server);
        let mut out = Vec::new();
        let mut buf = vec![0u8; read_size];
        loop {
            let n = fix.read(&mut buf).await?;
            if n == 0 {
                return Ok(out);
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    /// Type, flags, stream, decoded header fields (HEADERS only), payload.
    type SeenFrame = (u8, u8, u32, Vec<(Vec<u8>, Vec<u8>)>, Vec<u8>);

    /// Splits `bytes` (after the preface) into frames and decodes every
    /// header block with one decoder, as the server would.
    fn server_view(bytes: &[u8]) -> Vec<SeenFrame> {
        assert_eq!(&bytes[..PREFACE_LEN], PREFACE);
        let mut dec = Decoder::new();
        let mut rest = &bytes[PREFACE_LEN..];
        let mut frames = Vec::new();
        while !rest.is_empty() {
            let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
            let (ty, flags) = (rest[3], rest[4]);
            let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]);
            let payload = rest[9..9 + len].to_vec();
            rest = &rest[9 + len..];
            let fields = if ty == HEADERS {
                let skip = if flags & PRIORITY != 0 {
                    PRIORITY_LEN
                } else {
                    0
                };
                dec.decode(&payload[skip..]).unwrap()
            } else {
                Vec::new()
            };
            frames.push((ty, flags, stream, fields, payload));
        }
        frames
    }

    fn request(enc: &mut Encoder<'static>, authority: &[u8]) -> Vec<u8> {
        enc.encode([
            (&b":method"[..], &b"POST"[..]),
            (b":scheme", b"http"),
            (b":path", b"/ProxyService/Proxy"),
            (b":authority", authority),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        ])
    }

    fn authority_of(fields: &[(Vec<u8>, Vec<u8>)]) -> &[u8] {
        &fields.iter().find(|(n, _)| n == b":authority").unwrap().1
    }

    #[tokio::test]
    async fn socket_path_authority_becomes_localhost_and_data_passes_untouched() {
        let mut enc = Encoder::new();
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        input.extend(frame(
            HEADERS,
            END_HEADERS,
            1,
            &request(&mut enc, b"/run/mke/k.sock"),
        ));
        let data: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
        input.extend(frame(0x0, 0, 1, &data));
        // The second request reuses the client's dynamic table entries.
        input.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            3,
            &request(&mut enc, b"/run/mke/k.sock"),
        ));
        input.extend(frame(
            HEADERS,
            END_HEADERS,
            5,
            &request(&mut enc, b"localhost:8131"),
        ));
        for read_size in [1, 7, 4096, 1 << 16] {
            let out = through(input.clone(), read_size).await.unwrap();
            let frames = server_view(&out);
            assert_eq!(frames.len(), 5, "read size {read_size}");
            assert_eq!(frames[0].0, 0x4);
            assert_eq!(authority_of(&frames[1].3), b"localhost");
            assert_eq!(frames[2].4, data, "DATA unchanged");
            assert_eq!(authority_of(&frames[3].3), b"localhost");
            assert_eq!(frames[3].1, END_HEADERS | END_STREAM);
            assert_eq!(frames[3].2, 3);
            assert_eq!(authority_of(&frames[4].3), b"localhost:8131", "valid kept");
            assert_eq!(frames[4].3.len(), 6);
        }
    }

    #[tokio::test]
    async fn continuation_padding_and_priority_are_folded_into_one_frame() {
        let mut enc = Encoder::new();
        let block = request(&mut enc, b"%2Frun%2Fk.sock");
        let (a, b) = block.split_at(10);
        let mut headers = vec![3u8]; // pad length
        headers.extend_from_slice(&[0, 0, 0, 0, 16]); // priority
        headers.extend_from_slice(a);
        headers.extend_from_slice(&[0, 0, 0]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, PADDED | PRIORITY, 1, &headers));
        input.extend(frame(CONTINUATION, END_HEADERS, 1, b));
        let frames = server_view(&through(input, 3).await.unwrap());
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].1, PRIORITY | END_HEADERS);
        assert_eq!(&frames[0].4[..PRIORITY_LEN], &[0, 0, 0, 0, 16]);
        assert_eq!(authority_of(&frames[0].3), b"localhost");
    }

    #[tokio::test]
    async fn broken_framing_is_an_error_not_a_hang() {
        let mut enc = Encoder::new();
        let block = request(&mut enc, b"x");
        // HEADERS without END_HEADERS, then DATA: interleaved.
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, 0, 1, &block));
        input.extend(frame(0x0, 0, 1, b"x"));
        let e = through(input, 64).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        // A block over the bound.
        let mut input = PREFACE.to_vec();
        let big = vec![0u8; MAX_OUT_FRAME];
        input.extend(frame(HEADERS, 0, 1, &big));
        for _ in 0..(MAX_HEADER_BLOCK / MAX_OUT_FRAME) {
            input.extend(frame(CONTINUATION, 0, 1, &big));
        }
        let e = through(input, 64).await.unwrap_err();
        assert!(e.to_string().contains("exceeds"), "{e}");
        // Garbage HPACK.
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, END_HEADERS, 1, &[0xff, 0xff, 0xff, 0xff]));
        let e = through(input, 64).await.unwrap_err();
        assert!(e.to_string().contains("undecodable"), "{e}");
        // Cut in the middle of a frame.
        let mut input = PREFACE.to_vec();
        input.extend(&frame(0x0, 0, 1, b"hello")[..11]);
        let e = through(input, 64).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        // A clean close between frames is a clean end.
        assert!(through(PREFACE.to_vec(), 64).await.unwrap().len() == PREFACE_LEN);
    }
}
