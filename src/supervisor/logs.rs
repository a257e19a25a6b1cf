//! Child stdout/stderr → `tracing` events, one per line, in bounded memory.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt};
use tracing::Instrument;

/// Longest line kept, in bytes; the rest of a longer line is dropped and the
/// event gets `truncated = true`. Bounds memory per stream to this plus one
/// read buffer.
pub const MAX_LINE_BYTES: usize = 16 * 1024;

/// `tracing` target of re-logged child output, so it can be filtered apart
/// from mkectl's own messages (`RUST_LOG=info,mkectl::child=warn`).
pub const CHILD_LOG_TARGET: &str = "mkectl::child";

const READ_CHUNK: usize = 8 * 1024;

/// Splits a byte stream into lines of at most `max` bytes.
#[derive(Debug)]
pub(crate) struct LineSplitter {
    buf: Vec<u8>,
    max: usize,
    /// The current line overflowed and was emitted; skip to its end.
    discarding: bool,
}

impl LineSplitter {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            buf: Vec::with_capacity(max.min(1024)),
            max: max.max(1),
            discarding: false,
        }
    }

    /// Feeds bytes; calls `emit(line, truncated)` for every complete line
    /// (without the newline and a trailing `\r`).
    pub(crate) fn feed(&mut self, mut data: &[u8], emit: &mut impl FnMut(&[u8], bool)) {
        while !data.is_empty() {
            let newline = data.iter().position(|&b| b == b'\n');
            let (part, rest, complete) = match newline {
                Some(i) => (&data[..i], &data[i + 1..], true),
                None => (data, &data[data.len()..], false),
            };
            data = rest;
            if self.discarding {
                if complete {
                    self.discarding = false;
                }
                continue;
            }
            let room = self.max - self.buf.len();
            if part.len() > room {
                self.buf.extend_from_slice(&part[..room]);
                emit(&self.buf, true);
                self.buf.clear();
                self.discarding = !complete;
                continue;
            }
            self.buf.extend_from_slice(part);
            if complete {
                let line = self.buf.strip_suffix(b"\r").unwrap_or(&self.buf);
                emit(line, false);
                self.buf.clear();
            }
        }
    }

    /// End of stream: emits an unterminated last line.
    pub(crate) fn finish(&mut self, emit: &mut impl FnMut(&[u8], bool)) {
        if !self.buf.is_empty() {
            emit(&self.buf, false);
            self.buf.clear();
        }
        self.discarding = false;
    }
}

/// Reads `reader` to its end, logging every line.
pub(crate) async fn forward<R: AsyncRead + Unpin>(
    mut reader: R,
    component: Arc<str>,
    stream: &'static str,
) {
    let mut splitter = LineSplitter::new(MAX_LINE_BYTES);
    let mut chunk = vec![0u8; READ_CHUNK];
    let mut emit = |line: &[u8], truncated: bool| {
        let text = String::from_utf8_lossy(line);
        if truncated {
            tracing::info!(target: CHILD_LOG_TARGET, component = %component, stream, truncated = true, "{text}");
        } else {
            tracing::info!(target: CHILD_LOG_TARGET, component = %component, stream, "{text}");
        }
    };
    loop {
        match reader.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => splitter.feed(&chunk[..n], &mut emit),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(component = %component, stream, error = %crate::telemetry::Chain(&e), "cannot read child output");
                break;
            }
        }
    }
    splitter.finish(&mut emit);
}

/// Starts a task that re-logs one output pipe of a child. The task ends when
/// every writer of the pipe is gone (the child and anything it forked).
pub(crate) fn spawn_forwarder(fd: OwnedFd, component: Arc<str>, stream: &'static str) {
    match tokio::net::unix::pipe::Receiver::from_owned_fd(fd) {
        Ok(pipe) => {
            tokio::spawn(forward(pipe, component, stream).in_current_span());
        }
        Err(e) => {
            // The fd came from Stdio::piped(), so this would be a bug; the
            // pipe is closed by the drop and the child gets EPIPE/SIGPIPE.
            tracing::error!(component = %component, stream, error = %crate::telemetry::Chain(&e), "cannot watch child output pipe");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(max: usize, chunks: &[&[u8]]) -> Vec<(String, bool)> {
        let mut s = LineSplitter::new(max);
        let mut out = Vec::new();
        let mut emit = |l: &[u8], t: bool| out.push((String::from_utf8_lossy(l).into_owned(), t));
        for c in chunks {
            s.feed(c, &mut emit);
        }
        s.finish(&mut emit);
        out
    }

    fn l(s: &str, t: bool) -> (String, bool) {
        (s.to_owned(), t)
    }

    #[test]
    fn lines_across_chunks() {
        assert_eq!(
            split(100, &[b"ab", b"c\nde", b"f\r\n\n", b"tail"]),
            vec![
                l("abc", false),
                l("def", false),
                l("", false),
                l("tail", false)
            ]
        );
    }

    #[test]
    fn long_lines_are_cut_and_the_rest_skipped() {
        assert_eq!(
            split(4, &[b"0123456789\nok\n"]),
            vec![l("0123", true), l("ok", false)]
        );
        // Overflow spread over several chunks.
        assert_eq!(
            split(4, &[b"01", b"2345", b"67", b"89\nnext\n"]),
            vec![l("0123", true), l("next", false)]
        );
        // Exactly max bytes followed by a newline is not truncated.
        assert_eq!(
            split(4, &[b"0123\n", b"45"]),
            vec![l("0123", false), l("45", false)]
        );
        // max bytes at a chunk end, newline in the next chunk: not cut.
        assert_eq!(
            split(4, &[b"0123", b"\nx\n"]),
            vec![l("0123", false), l("x", false)]
        );
        assert_eq!(
            split(4, &[b"0123", b"4\nx\n"]),
            vec![l("0123", true), l("x", false)]
        );
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        assert_eq!(split(16, &[b"a\xffb\n"]), vec![l("a\u{fffd}b", false)]);
    }

    #[tokio::test]
    async fn forward_reads_to_the_end() {
        let (mut w, r) = tokio::io::duplex(64);
        let task = tokio::spawn(forward(r, Arc::from("t"), "stdout"));
        tokio::io::AsyncWriteExt::write_all(&mut w, b"x\n")
            .await
            .unwrap();
        drop(w);
        task.await.unwrap();
    }
}
