//! Helpers for the join tests: tokens through the CLI, etcd membership
//! seen from a node, readiness waits on logs and admin ports.

use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use mkectl::etcd::{connect, EtcdClientTls};

use super::{Controller, Node};

/// `controller` flags for these tests: no upstream kube binaries here, plus
/// `extra`.
pub fn ctl_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut v: Vec<&str> = super::NO_KUBE_BINARIES.to_vec();
    v.extend_from_slice(extra);
    v
}

/// `mkectl <args>` on `node`, waited for.
pub fn run(node: &Node, args: &[&str]) -> Output {
    node.cmd(args).output().unwrap()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `mkectl token create --role <role> <extra>` on a controller node.
pub fn token_create(node: &Node, role: &str, extra: &[&str]) -> String {
    let mut args = vec!["token", "create", "--role", role];
    args.extend_from_slice(extra);
    let out = run(node, &args);
    assert!(out.status.success(), "token create: {}", stderr(&out));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Writes `token` to a 0600 file in the node's temp dir.
pub fn token_file(node: &Node, name: &str, token: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = node.tmp.path().join(name);
    std::fs::write(&p, token).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// Waits until the process log contains `needle`; panics with the log if
/// the process exits or the time runs out.
pub fn wait_log(p: &mut Controller, needle: &str, timeout: Duration) {
    let end = Instant::now() + timeout;
    loop {
        if p.log_text().contains(needle) {
            return;
        }
        if let Ok(Some(st)) = p.child.try_wait() {
            panic!(
                "process exited ({st}) before {needle:?}; log:\n{}",
                p.log_text()
            );
        }
        if Instant::now() > end {
            panic!("no {needle:?} within {timeout:?}; log:\n{}", p.log_text());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn etcd_tls(node: &Node) -> EtcdClientTls {
    EtcdClientTls {
        ca: node.pki("etcd/ca.crt"),
        cert: node.pki("apiserver-etcd-client.crt"),
        key: node.pki("apiserver-etcd-client.key"),
    }
}

/// (name, is_learner) of every etcd member, as `node`'s etcd sees them.
pub async fn members(node: &Node) -> Option<Vec<(String, bool)>> {
    let mut c = connect(&node.etcd_endpoint(), &etcd_tls(node)).await.ok()?;
    let list = c.member_list().await.ok()?;
    let mut v: Vec<(String, bool)> = list
        .members()
        .iter()
        .map(|m| (m.name().to_string(), m.is_learner()))
        .collect();
    v.sort();
    Some(v)
}

/// Whether a linearizable write and read work through `node`'s etcd.
pub async fn etcd_healthy(node: &Node) -> bool {
    let Ok(mut c) = connect(&node.etcd_endpoint(), &etcd_tls(node)).await else {
        return false;
    };
    let key = format!("/test/health/{}", node.name);
    c.put(key.clone(), "ok", None).await.is_ok() && c.get(key, None).await.is_ok()
}

/// Polls `f` every 50 ms until it is true or `timeout` passes.
pub async fn until<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + timeout;
    while !f().await {
        assert!(Instant::now() < end, "timed out after {timeout:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// HTTP status of `GET /readyz` on a konnectivity admin port (0 = down).
pub async fn readyz(port: u16) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf);
        text.split_whitespace().nth(1)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(2), fut)
        .await
        .ok()
        .flatten()
        .unwrap_or(0)
}

/// Files (not directories) under `dir`, or none if it does not exist.
pub fn files_under(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}
