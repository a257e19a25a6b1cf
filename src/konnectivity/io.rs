//! Socket reads that wait for readiness before taking a buffer, so an idle
//! tunnel holds no read buffer at all (10,000 idle tunnels must stay small).

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::proto::MAX_DATA_CHUNK;

/// Reads one chunk (≤ 32 KiB); `None` at EOF.
pub trait ChunkRead: AsyncRead + Unpin + Send {
    fn read_chunk(
        &mut self,
    ) -> impl std::future::Future<Output = std::io::Result<Option<Bytes>>> + Send;
}

/// Turns a filled buffer into a payload without keeping a mostly-empty
/// 32 KiB allocation alive for a small read.
pub fn shrink(buf: BytesMut) -> Bytes {
    if buf.len() < buf.capacity() / 4 {
        Bytes::copy_from_slice(&buf)
    } else {
        buf.freeze()
    }
}

macro_rules! ready_read {
    ($t:ty) => {
        impl ChunkRead for $t {
            async fn read_chunk(&mut self) -> std::io::Result<Option<Bytes>> {
                loop {
                    self.readable().await?;
                    let mut buf = BytesMut::with_capacity(MAX_DATA_CHUNK);
                    match self.try_read_buf(&mut buf) {
                        Ok(0) => return Ok(None),
                        Ok(_) => return Ok(Some(shrink(buf))),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    };
}

ready_read!(tokio::net::unix::OwnedReadHalf);
ready_read!(tokio::net::tcp::OwnedReadHalf);

/// Streams without a readiness API (TLS) read through a small buffer.
pub struct BufRead<R>(pub R);

impl<R: AsyncRead + Unpin + Send> AsyncRead for BufRead<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<R: AsyncRead + Unpin + Send> ChunkRead for BufRead<R> {
    async fn read_chunk(&mut self) -> std::io::Result<Option<Bytes>> {
        let mut buf = BytesMut::with_capacity(8 * 1024);
        match self.0.read_buf(&mut buf).await? {
            0 => Ok(None),
            _ => Ok(Some(shrink(buf))),
        }
    }
}
