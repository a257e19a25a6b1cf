//! Socket reads that wait for readiness before taking a buffer, so an idle
//! tunnel holds no read buffer at all (10,000 idle tunnels must stay small).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use super::proto::MAX_DATA_CHUNK;

/// Reads one chunk (≤ [`MAX_DATA_CHUNK`]); `None` at EOF.
pub trait ChunkRead: AsyncRead + Unpin + Send {
    fn read_chunk(
        &mut self,
    ) -> impl std::future::Future<Output = std::io::Result<Option<Bytes>>> + Send;
}

/// Turns a filled buffer into a payload without keeping a mostly-empty
/// [`MAX_DATA_CHUNK`] allocation alive for a small read.
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

/// Size of [`ReadBuffered`]'s buffer: one socket read fills it.
pub const TLS_READ_BUFFER: usize = 256 * 1024;

/// How much encrypted output rustls may hold before a write waits for the
/// socket (rustls's default is 64 KiB). A full DATA packet plus its
/// HTTP/2 and gRPC headers then goes out in one write instead of a full
/// write and a tiny second record.
pub const TLS_WRITE_BUFFER: usize = 512 * 1024;

/// A read buffer under a TLS stream. rustls reads the socket at most 4 KiB
/// at a time, which made four to five `recv` calls per 16 KiB record on a
/// busy agent connection; with this buffer one `recv` takes whatever the
/// socket holds (up to [`TLS_READ_BUFFER`]) and rustls's small reads are
/// served from memory. The buffer exists only while it holds data: it is
/// freed as soon as it is drained and the socket has nothing more, so an
/// idle connection costs nothing. Writes pass straight through.
#[derive(Debug)]
pub struct ReadBuffered<T> {
    inner: T,
    buf: BytesMut,
}

impl<T> ReadBuffered<T> {
    pub fn new(inner: T) -> Self {
        ReadBuffered {
            inner,
            buf: BytesMut::new(),
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ReadBuffered<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.buf.is_empty() {
            // A read at least as large as the buffer gains nothing from it.
            if out.remaining() >= TLS_READ_BUFFER {
                return Pin::new(&mut this.inner).poll_read(cx, out);
            }
            // Empty: reuses the drained allocation (or makes the first one).
            this.buf.reserve(TLS_READ_BUFFER);
            let filled = {
                let spare = this.buf.spare_capacity_mut();
                let mut rb = ReadBuf::uninit(spare);
                match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) => rb.filled().len(),
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        // Nothing to read: an idle connection keeps no buffer.
                        this.buf = BytesMut::new();
                        return Poll::Pending;
                    }
                }
            };
            if filled == 0 {
                this.buf = BytesMut::new();
                return Poll::Ready(Ok(()));
            }
            // SAFETY: `poll_read` initialised the first `filled` bytes of the
            // spare capacity (ReadBuf tracks what it filled).
            unsafe { this.buf.set_len(filled) };
        }
        let n = this.buf.len().min(out.remaining());
        out.put_slice(&this.buf[..n]);
        this.buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ReadBuffered<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected
    for ReadBuffered<T>
{
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// When a tunnel's queue last moved: stamped by the shared-stream reader on
/// every successful enqueue and by the tunnel's consumer on every dequeue.
/// A full queue that has not moved for a whole stall budget belongs to a
/// stuck consumer: the reader waits only for the rest of the budget, so
/// tunnels that got stuck together cost the other tunnels one budget in
/// total, and a slow but live consumer (its queue keeps moving) is waited
/// for, never cut off.
#[derive(Debug)]
pub struct Progress(std::sync::atomic::AtomicU64);

fn epoch() -> std::time::Instant {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(std::time::Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

impl Default for Progress {
    fn default() -> Self {
        Progress(std::sync::atomic::AtomicU64::new(now_ms()))
    }
}

impl Progress {
    /// Records that the queue moved now.
    pub fn touch(&self) {
        self.0.store(now_ms(), std::sync::atomic::Ordering::Relaxed);
    }

    /// How long the queue has not moved.
    pub fn idle_for(&self) -> std::time::Duration {
        let last = self.0.load(std::sync::atomic::Ordering::Relaxed);
        std::time::Duration::from_millis(now_ms().saturating_sub(last))
    }

    /// How much longer a full queue may be waited for within `budget`.
    pub fn remaining(&self, budget: std::time::Duration) -> std::time::Duration {
        budget.saturating_sub(self.idle_for())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn progress_measures_idle_time() {
        let p = Progress::default();
        assert!(p.idle_for() < Duration::from_secs(1));
        p.0.store(0, std::sync::atomic::Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(20));
        assert!(p.idle_for() >= Duration::from_millis(20));
        assert_eq!(p.remaining(Duration::from_millis(10)), Duration::ZERO);
        p.touch();
        assert!(p.remaining(Duration::from_secs(3)) > Duration::from_secs(2));
    }
}
