//! A gRPC C-core client (Python `grpcio`, tests/data/grpcio_client.py) as a
//! konnectivity frontend: it dials the server's gRPC unix socket as
//! `unix://<path>` with grpcio's default authority, which since grpcio 1.57
//! is the socket path (percent-encoded), not `localhost`. Upstream's Go server accepts
//! that; mkectl must too (issue 14: h2 used to reset such streams with
//! PROTOCOL_ERROR, see src/konnectivity/server/authority.rs).
//!
//! * what grpcio really sends as `:authority` is read off the wire (a bare
//!   unix socket that decodes the first HEADERS block);
//! * the same client runs one whole tunnel (DIAL_REQ, DATA, CLOSE) through a
//!   mkectl server and agent, and the server's debug log shows it rewrote
//!   the path authority;
//! * the same script passes against upstream proxy-server/proxy-agent.
//!
//! The interpreter comes from `MKECTL_TEST_PYTHON` (a venv with grpcio and
//! grpcio-tools that `.ci/run` builds); under `CI=true` a missing one fails
//! the test, elsewhere the test says NOT RUN and returns.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::konnectivity::*;
use common::konnectivity_cmd::{agent_command, server_command, Flavor, KonnOpts};
use common::upstream::upstream_bins;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

/// The oldest grpcio whose C-core sends the socket path as `:authority` on
/// unix: targets (checked: 1.56.2 sends `localhost`; 1.57.0, 1.66.2 and
/// 1.85.1 send the path percent-encoded without its leading slash, e.g.
/// `tmp%2Fx%2Fgrpc.sock`).
const MIN_GRPCIO: (u32, u32) = (1, 57);
/// Bound on one client run (it bounds its own waits by 30 s).
const CLIENT_LIMIT: Duration = Duration::from_secs(90);

fn proto_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("proto")
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/grpcio_client.py")
}

/// The Python with grpcio + grpcio-tools, or None (outside CI only) after
/// saying on stderr that the test did not run.
fn test_python() -> Option<PathBuf> {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let missing = |why: String| -> Option<PathBuf> {
        if ci {
            panic!("CI=true and {why}: .ci/run builds the venv and exports MKECTL_TEST_PYTHON");
        }
        eprintln!("NOT RUN: {why} (set MKECTL_TEST_PYTHON to a python with grpcio and grpcio-tools, see .ci/run)");
        None
    };
    let Some(py) = std::env::var_os("MKECTL_TEST_PYTHON").filter(|p| !p.is_empty()) else {
        return missing("MKECTL_TEST_PYTHON is not set".into());
    };
    let out = std::process::Command::new(&py)
        .args(["-c", "import grpc, grpc_tools; print(grpc.__version__)"])
        .output();
    match out {
        Ok(o) if o.status.success() => Some(PathBuf::from(py)),
        Ok(o) => missing(format!(
            "{} cannot import grpc and grpc_tools: {}",
            Path::new(&py).display(),
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => missing(format!("cannot run {}: {e}", Path::new(&py).display())),
    }
}

/// Runs the client script once; returns whether it succeeded, its JSON
/// report (also printed on failure) and its stderr.
async fn run_script(
    py: &Path,
    socket: &Path,
    address: &str,
    gen_dir: &Path,
) -> (bool, serde_json::Value, String) {
    let target = format!("unix://{}", socket.display());
    let child = Command::new(py)
        .arg(script())
        .args(["--target", &target, "--address", address])
        .arg("--proto-dir")
        .arg(proto_dir())
        .arg("--gen-dir")
        .arg(gen_dir)
        .args(["--timeout", "30"])
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python runs");
    let out = tokio::time::timeout(CLIENT_LIMIT, child.wait_with_output())
        .await
        .expect("grpcio client finishes within its bound")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "grpcio client ({}) printed no JSON report ({e}): {stdout}\n{stderr}",
            out.status
        )
    });
    (out.status.success(), report, stderr)
}

/// Runs the client script once; returns its JSON report, failing with its
/// output if it did not run the whole tunnel.
async fn run_client(py: &Path, socket: &Path, address: &str, gen_dir: &Path) -> serde_json::Value {
    let target = format!("unix://{}", socket.display());
    let (ok, report, stderr) = run_script(py, socket, address, gen_dir).await;
    assert!(ok, "grpcio client failed: {report}\nstderr: {stderr}");
    assert_eq!(report["target"], target.as_str());
    assert_eq!(report["status"], "HTTP/1.1 200 OK", "{report}");
    assert_eq!(report["body"], "hello", "{report}");
    let seen: Vec<&str> = report["seen"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(seen.first(), Some(&"DIAL_RSP"), "{report}");
    assert!(
        seen.contains(&"DATA") && seen.contains(&"CLOSE_RSP"),
        "{report}"
    );
    // The stream ended with OK after the half-close (a reset would show as
    // an rpc-error with another code).
    assert_eq!(report["stream_end"][0], "end", "{report}");
    assert!(
        report["stream_end"][1]
            .as_str()
            .unwrap_or("")
            .ends_with(".OK"),
        "{report}"
    );
    let version = report["grpcio"].as_str().unwrap();
    let mut it = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    assert!(
        (major, minor) >= MIN_GRPCIO,
        "grpcio {version} still sends `localhost` on unix: targets; the venv needs >= {MIN_GRPCIO:?}"
    );
    report
}

/// Server debug log lines, captured from this process's tracing events.
fn captured_log() -> Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let w = buf.clone();
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        let filter: tracing_subscriber::filter::Targets =
            "info,mkectl::konnectivity::server::authority=debug"
                .parse()
                .unwrap();
        let _ = tracing_subscriber::fmt()
            // The builder's own filter is INFO: let `filter` decide.
            .with_max_level(tracing::level_filters::LevelFilter::TRACE)
            .with_ansi(false)
            .with_writer(move || LogWriter(w.clone()))
            .finish()
            .with(filter)
            .try_init();
        buf
    })
    .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Reads one HTTP/2 frame: (type, flags, stream, payload).
async fn read_frame(s: &mut tokio::net::UnixStream) -> (u8, u8, u32, Vec<u8>) {
    let mut h = [0u8; 9];
    s.read_exact(&mut h).await.unwrap();
    let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
    let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await.unwrap();
    (h[3], h[4], stream, payload)
}

/// Plays an HTTP/2 server on `socket` just long enough to decode the
/// first request's header block; returns its header fields.
async fn first_request_headers(l: tokio::net::UnixListener) -> Vec<(String, String)> {
    let (mut s, _) = l.accept().await.unwrap();
    // Server preface: an empty SETTINGS (C-core waits for it before the
    // channel is READY).
    s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    let mut preface = [0u8; 24];
    s.read_exact(&mut preface).await.unwrap();
    assert_eq!(&preface, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    let mut block = Vec::new();
    for _ in 0..64 {
        let (ty, flags, _stream, payload) = read_frame(&mut s).await;
        match ty {
            // SETTINGS without ACK: acknowledge.
            0x4 if flags & 0x1 == 0 => s.write_all(&[0, 0, 0, 4, 1, 0, 0, 0, 0]).await.unwrap(),
            0x1 => {
                let mut body = &payload[..];
                let mut pad = 0;
                if flags & 0x8 != 0 {
                    pad = usize::from(body[0]);
                    body = &body[1..];
                }
                if flags & 0x20 != 0 {
                    body = &body[5..];
                }
                block.extend_from_slice(&body[..body.len() - pad]);
                if flags & 0x4 != 0 {
                    break;
                }
            }
            0x9 => {
                block.extend_from_slice(&payload);
                if flags & 0x4 != 0 {
                    break;
                }
            }
            _ => {}
        }
    }
    assert!(!block.is_empty(), "no HEADERS frame from the client");
    let mut dec = loona_hpack::Decoder::new();
    dec.decode(&block)
        .unwrap()
        .into_iter()
        .map(|(n, v)| {
            (
                String::from_utf8_lossy(&n).into_owned(),
                String::from_utf8_lossy(&v).into_owned(),
            )
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).and_then(|c| hex(*c)),
            b.get(i + 2).and_then(|c| hex(*c)),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_sends_the_socket_path_as_authority() {
    let Some(py) = test_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let gen = dir.path().join("gen");
    let socket = dir.path().join("capture.sock");
    let l = tokio::net::UnixListener::bind(&socket).unwrap();
    let target = format!("unix://{}", socket.display());
    let mut child = Command::new(&py)
        .arg(script())
        .args(["--target", &target, "--address", "127.0.0.1:1"])
        .arg("--proto-dir")
        .arg(proto_dir())
        .arg("--gen-dir")
        .arg(&gen)
        .args(["--timeout", "20"])
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let fields = tokio::time::timeout(Duration::from_secs(60), first_request_headers(l))
        .await
        .expect("grpcio sent its first request within 60 s");
    let _ = child.kill().await;
    let get = |name: &str| {
        fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no {name} in {fields:?}"))
    };
    assert_eq!(get(":path"), "/ProxyService/Proxy");
    let authority = get(":authority");
    eprintln!("grpcio sent :authority {authority:?} for target {target}");
    assert_ne!(authority, "localhost");
    // The socket path: raw (slashes included) or, as grpcio 1.85 sends it,
    // percent-encoded without its leading slash. Neither is URI authority
    // syntax, which is what made h2 reset the stream.
    assert_eq!(
        percent_decode(&authority).trim_start_matches('/'),
        socket.to_str().unwrap().trim_start_matches('/'),
        "{fields:?}"
    );
    assert!(http::uri::Authority::try_from(authority.as_str()).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_client_tunnels_through_mkectl_with_its_default_authority() {
    let Some(py) = test_python() else { return };
    let log = captured_log();
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let (target, _t) = http_target().await;
    let (s, a) = stack(&pki, dir.path()).await;
    let gen = dir.path().join("gen");

    let started = Instant::now();
    let report = run_client(&py, &s.grpc_uds, &target.to_string(), &gen).await;
    eprintln!(
        "grpcio {} tunnel through mkectl in {:?}: {report}",
        report["grpcio"],
        started.elapsed()
    );
    // A second client on a new connection (single-use tunnels, as
    // kube-apiserver dials).
    run_client(&py, &s.grpc_uds, &target.to_string(), &gen).await;

    // The rewrite, logged once per connection, names this server's socket
    // (other tests in this binary may log rewrites of their own sockets).
    let text = String::from_utf8_lossy(&log.lock().unwrap()).into_owned();
    let ours = s.grpc_uds.to_str().unwrap().trim_start_matches('/');
    let rewrites: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("client sent a socket path as :authority"))
        .filter(|l| {
            l.split("authority=")
                .nth(1)
                .and_then(|v| v.split_whitespace().next())
                .is_some_and(|v| {
                    percent_decode(v.trim_matches('"')).trim_start_matches('/') == ours
                })
        })
        .collect();
    assert!(
        !rewrites.is_empty(),
        "no rewrite of this server's socket path logged:\n{text}"
    );
    let line = rewrites[0];
    eprintln!("server log: {line}");
    let page = s.handle.metrics_text();
    assert!(
        page.contains("konnectivity_network_proxy_server_stream_packets_total{segment=\"from_client\",packet_type=\"DIAL_REQ\"} 2"),
        "{page}"
    );
    assert_no_leaks(&s.handle, Some(&a.handle)).await;
    s.token.cancel();
    a.token.cancel();
    s.handle.wait_stopped().await;
    a.handle.wait_stopped().await;
}

/// Serves h2 on `l` the way tonic does (hyper), each connection optionally
/// behind mkectl's [`AuthorityFix`]; every request is answered with an
/// empty trailers-only gRPC OK and its `:authority` recorded.
fn plain_h2_server(
    l: tokio::net::UnixListener,
    with_fix: bool,
    seen: Arc<Mutex<Vec<String>>>,
) -> tokio::task::JoinHandle<()> {
    use mkectl::konnectivity::server::authority::AuthorityFix;
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = l.accept().await else {
                return;
            };
            let seen = seen.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let authority = req
                            .uri()
                            .authority()
                            .map(|a| a.to_string())
                            .unwrap_or_default();
                        seen.lock().unwrap().push(authority);
                        async move {
                            http::Response::builder()
                                .status(200)
                                .header("content-type", "application/grpc")
                                .header("grpc-status", "0")
                                .body(http_body_util::Empty::<bytes::Bytes>::new())
                        }
                    });
                let builder =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
                let _ = if with_fix {
                    builder
                        .serve_connection(
                            hyper_util::rt::TokioIo::new(AuthorityFix::new(sock)),
                            svc,
                        )
                        .await
                } else {
                    builder
                        .serve_connection(hyper_util::rt::TokioIo::new(sock), svc)
                        .await
                };
            });
        }
    })
}

/// What the fix is for, shown without removing it: the same h2 server
/// stack resets grpcio's stream when it sees the path authority directly,
/// and serves it once the connection goes through `AuthorityFix`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_authority_fix_h2_resets_the_grpcio_stream() {
    let Some(py) = test_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let gen = dir.path().join("gen");

    let plain_sock = dir.path().join("plain.sock");
    let plain_seen = Arc::new(Mutex::new(Vec::new()));
    let plain = plain_h2_server(
        tokio::net::UnixListener::bind(&plain_sock).unwrap(),
        false,
        plain_seen.clone(),
    );
    let (ok, report, stderr) = run_script(&py, &plain_sock, "127.0.0.1:1", &gen).await;
    plain.abort();
    eprintln!("grpcio against plain h2: {report}");
    assert!(!ok, "{report}\n{stderr}");
    assert_eq!(report["stream_end"][0], "rpc-error", "{report}");
    assert_eq!(report["stream_end"][1], "StatusCode.INTERNAL", "{report}");
    assert!(
        report["stream_end"][2]
            .as_str()
            .unwrap_or("")
            .contains("RST_STREAM with error code 1"),
        "{report}"
    );
    assert!(
        plain_seen.lock().unwrap().is_empty(),
        "the request reached the service: {:?}",
        plain_seen.lock().unwrap()
    );

    let fixed_sock = dir.path().join("fixed.sock");
    let fixed_seen = Arc::new(Mutex::new(Vec::new()));
    let fixed = plain_h2_server(
        tokio::net::UnixListener::bind(&fixed_sock).unwrap(),
        true,
        fixed_seen.clone(),
    );
    let (ok, report, _) = run_script(&py, &fixed_sock, "127.0.0.1:1", &gen).await;
    fixed.abort();
    eprintln!("grpcio against h2 behind AuthorityFix: {report}");
    // The service answered (no DIAL_RSP, so the script itself fails), and
    // the stream ended with OK instead of a reset.
    assert!(!ok);
    assert_eq!(report["error"], "stream ended before DIAL_RSP", "{report}");
    assert_eq!(report["stream_end"][0], "end", "{report}");
    assert_eq!(report["stream_end"][1], "StatusCode.OK", "{report}");
    assert_eq!(*fixed_seen.lock().unwrap(), vec!["localhost".to_string()]);
}

/// `n` distinct ports in 20000..32000 (below the kernel's ephemeral range
/// and within the 1024..=49151 upstream's flags accept), free a moment ago.
fn low_ports<const N: usize>() -> [u16; N] {
    let mut x = u64::from(std::process::id())
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
    let mut held = Vec::new();
    for _ in 0..1000 {
        if held.len() == N {
            break;
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let port = 20000 + (x % 12000) as u16;
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            held.push(l);
        }
    }
    assert_eq!(held.len(), N, "no {N} free ports in 20000..32000");
    std::array::from_fn(|i| held[i].local_addr().unwrap().port())
}

fn spawn_logged(cmd: &mut Command, log: &Path) -> tokio::process::Child {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_grpcio_client_passes_against_upstream_proxy_server() {
    let Some(py) = test_python() else { return };
    let Some(bin) = upstream_bins(&["proxy-server", "proxy-agent"]) else {
        return;
    };
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let (target, _t) = http_target().await;
    let socket = dir.path().join("upstream-grpc.sock");
    let [agent_port, admin, health, a_admin, a_health] = low_ports();
    let server_log = dir.path().join("proxy-server.log");
    let server = server_command(
        Flavor::Upstream(&bin),
        &pki.server,
        "upstream-1",
        &socket,
        agent_port,
        admin,
        KonnOpts {
            mode: Some("grpc"),
            server_count: Some(1),
            health_port: Some(health),
            ..Default::default()
        },
    );
    let _server = spawn_logged(&mut Command::from(server), &server_log);
    let agent_log = dir.path().join("proxy-agent.log");
    let agent = agent_command(
        Flavor::Upstream(&bin),
        &pki.agent,
        "upstream-agent",
        ([127, 0, 0, 1], agent_port).into(),
        a_admin,
        KonnOpts {
            sync_interval: Some("200ms"),
            health_port: Some(a_health),
            ..Default::default()
        },
    );
    let _agent = spawn_logged(&mut Command::from(agent), &agent_log);
    let health_addr = format!("127.0.0.1:{health}").parse().unwrap();
    let start = Instant::now();
    loop {
        let ready = match tokio::net::TcpStream::connect(health_addr).await {
            Ok(_) => http_get(health_addr, "/readyz").await.0 == 200,
            Err(_) => false,
        };
        if ready {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "upstream proxy-agent not connected to proxy-server within 30 s\nserver:\n{}\nagent:\n{}",
            std::fs::read_to_string(&server_log).unwrap_or_default(),
            std::fs::read_to_string(&agent_log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let report = run_client(&py, &socket, &target.to_string(), &dir.path().join("gen")).await;
    eprintln!("grpcio through upstream proxy-server: {report}");
}
