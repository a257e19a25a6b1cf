//! The least CPU per byte any konnectivity implementation can spend on this
//! machine: the tunnel's three socket crossings (target →TCP→ agent →TCP→ server
//! →UDS→ client) and its encryption between agent and server, with nothing
//! else. Two relays run as plain threads with blocking I/O and 256 KiB
//! buffers; between them every 16 KiB is sealed into a TLS 1.3-shaped record
//! (5-byte header as AAD, AES-128-GCM from ring, per-record nonce, 16-byte
//! tag) and opened in place on the other side. No HTTP/2, no gRPC, no
//! multiplexing, no flow control, no handshake: a wire-compatible tunnel
//! does strictly more work per byte. Its throughput is a reference, not a
//! ceiling: it also depends on how the work is spread over the cores, and
//! these blocking threads share the bench process with client and target
//! (mkectl's one-thread relay matched it on downloads).

use std::io::{IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, NONCE_LEN};

const BUF: usize = 256 * 1024;
/// TLS's maximum record payload.
const RECORD: usize = 16 * 1024;
const HEADER: usize = 5;
const TAG: usize = 16;

/// Both relays of one connection; dropping it after the client closed joins
/// every thread.
pub struct Floor {
    pub uds: PathBuf,
    threads: Vec<JoinHandle<()>>,
}

impl Floor {
    /// Starts relays leading to `target`; the client connects to `uds`.
    pub fn start(target: SocketAddr, dir: &Path) -> Floor {
        let uds = dir.join(format!("floor-{}.sock", rand_suffix()));
        let client_side = UnixListener::bind(&uds).expect("bind floor UDS");
        let link = TcpListener::bind("127.0.0.1:0").expect("bind floor link");
        let link_addr = link.local_addr().expect("floor link addr");
        // One key per direction, as TLS has.
        let (up, down) = ([1u8; 16], [2u8; 16]);
        let mut threads = Vec::new();
        threads.push(std::thread::spawn(move || {
            // The agent's relay: dials the server relay and the target.
            let to_server = TcpStream::connect(link_addr).expect("floor agent dial");
            let to_target = TcpStream::connect(target).expect("floor target dial");
            for s in [&to_server, &to_target] {
                s.set_nodelay(true).expect("nodelay");
            }
            let a = spawn_pair(
                to_target.try_clone().expect("clone"),
                to_server.try_clone().expect("clone"),
                Seal(down),
            );
            let b = spawn_pair(to_server, to_target, Open(up));
            a.join().expect("floor relay");
            b.join().expect("floor relay");
        }));
        threads.push(std::thread::spawn(move || {
            // The server's relay: the agent link in, the client's UDS out.
            let (from_agent, _) = link.accept().expect("floor link accept");
            from_agent.set_nodelay(true).expect("nodelay");
            let (client, _) = client_side.accept().expect("floor UDS accept");
            let a = spawn_pair(
                from_agent.try_clone().expect("clone"),
                client.try_clone().expect("clone"),
                Open(down),
            );
            let b = spawn_pair(client, from_agent, Seal(up));
            a.join().expect("floor relay");
            b.join().expect("floor relay");
        }));
        Floor { uds, threads }
    }

    /// Waits for the relays to finish (after the client closed).
    pub fn join(mut self) {
        for t in self.threads.drain(..) {
            t.join().expect("floor relay thread");
        }
        let _ = std::fs::remove_file(&self.uds);
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

trait Half: Read + Write + Send + 'static {
    fn close_write(&self);
}
impl Half for TcpStream {
    fn close_write(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}
impl Half for UnixStream {
    fn close_write(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

trait Direction: Send + 'static {
    fn run(self, from: &mut dyn Read, to: &mut dyn Write) -> std::io::Result<()>;
}

/// Plaintext in, records out.
struct Seal([u8; 16]);
/// Records in, plaintext out.
struct Open([u8; 16]);

fn key(k: &[u8; 16]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_128_GCM, k).expect("AES-128 key"))
}

fn nonce(seq: u64) -> Nonce {
    let mut n = [0x5au8; NONCE_LEN];
    for (b, s) in n[4..].iter_mut().zip(seq.to_be_bytes()) {
        *b ^= s;
    }
    Nonce::assume_unique_for_key(n)
}

impl Direction for Seal {
    fn run(self, from: &mut dyn Read, to: &mut dyn Write) -> std::io::Result<()> {
        let k = key(&self.0);
        let mut plain = vec![0u8; BUF];
        let mut out = vec![0u8; BUF + (BUF / RECORD + 1) * (HEADER + TAG)];
        let mut seq = 0u64;
        loop {
            let n = from.read(&mut plain)?;
            if n == 0 {
                return Ok(());
            }
            let mut len = 0;
            for chunk in plain[..n].chunks(RECORD) {
                let body = chunk.len() + TAG;
                let hdr = [0x17, 0x03, 0x03, (body >> 8) as u8, body as u8];
                out[len..len + HEADER].copy_from_slice(&hdr);
                let data = &mut out[len + HEADER..len + HEADER + chunk.len()];
                data.copy_from_slice(chunk);
                let tag = k
                    .seal_in_place_separate_tag(nonce(seq), Aad::from(hdr), data)
                    .expect("seal");
                seq += 1;
                let t = len + HEADER + chunk.len();
                out[t..t + TAG].copy_from_slice(tag.as_ref());
                len = t + TAG;
            }
            to.write_all(&out[..len])?;
        }
    }
}

impl Direction for Open {
    fn run(self, from: &mut dyn Read, to: &mut dyn Write) -> std::io::Result<()> {
        let k = key(&self.0);
        let mut buf = vec![0u8; BUF + RECORD + HEADER + TAG];
        let (mut have, mut seq) = (0usize, 0u64);
        loop {
            let n = from.read(&mut buf[have..])?;
            if n == 0 {
                return Ok(());
            }
            have += n;
            let mut off = 0;
            let mut plain = Vec::new();
            while have - off >= HEADER {
                let body = u16::from_be_bytes([buf[off + 3], buf[off + 4]]) as usize;
                if have - off < HEADER + body {
                    break;
                }
                let hdr: [u8; HEADER] = buf[off..off + HEADER].try_into().expect("5 bytes");
                let rec = &mut buf[off + HEADER..off + HEADER + body];
                let len = k
                    .open_in_place(nonce(seq), Aad::from(hdr), rec)
                    .expect("open")
                    .len();
                seq += 1;
                plain.push((off + HEADER, len));
                off += HEADER + body;
            }
            let mut slices: Vec<IoSlice> = plain
                .iter()
                .map(|&(o, l)| IoSlice::new(&buf[o..o + l]))
                .collect();
            let mut rest = &mut slices[..];
            while !rest.is_empty() {
                let w = to.write_vectored(rest)?;
                if w == 0 {
                    return Err(std::io::ErrorKind::WriteZero.into());
                }
                IoSlice::advance_slices(&mut rest, w);
            }
            buf.copy_within(off..have, 0);
            have -= off;
        }
    }
}

/// CPU time (ns) of every relay thread that has finished: the floor's own
/// cost, apart from the client and target in the same process.
static RELAY_CPU_NS: AtomicU64 = AtomicU64::new(0);

/// CPU time used by relay threads that have finished so far.
pub fn relay_cpu() -> Duration {
    Duration::from_nanos(RELAY_CPU_NS.load(Ordering::Relaxed))
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Relays `from` → `to` through `dir` on a thread; at EOF closes `to`'s
/// write side so the end of the stream travels on.
fn spawn_pair<A: Half, B: Half>(mut from: A, mut to: B, dir: impl Direction) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let _ = dir.run(&mut from, &mut to);
        to.close_write();
        RELAY_CPU_NS.fetch_add(thread_cpu_ns(), Ordering::Relaxed);
    })
}
