//! Live leaf rotation with a real etcd: leaves live 2 minutes and are renewed
//! 90 s before expiry, so the running controller renews them ~30 s after
//! issuance, restarts etcd (and only the components using a renewed leaf),
//! keeps every CA, and keeps serving clients past the first leaves' expiry,
//! all without mkectl restarting. This is the one slow test (~2.5 minutes).

mod common;

use std::fs;
use std::time::{Duration, Instant, SystemTime};

use common::*;
use mkectl::etcd::{connect, EtcdClientTls};

fn client_tls(node: &Node) -> EtcdClientTls {
    EtcdClientTls {
        ca: node.pki("etcd/ca.crt"),
        cert: node.pki("apiserver-etcd-client.crt"),
        key: node.pki("apiserver-etcd-client.key"),
    }
}

/// A fresh client (it reads the certificate files now) reads `key`.
async fn get(node: &Node, key: &str) -> Option<String> {
    let mut c = connect(&node.etcd_endpoint(), &client_tls(node))
        .await
        .ok()?;
    let r = c.get(key, None).await.ok()?;
    r.kvs()
        .first()
        .map(|kv| kv.value_str().unwrap().to_string())
}

fn not_after(node: &Node, rel: &str) -> SystemTime {
    let list = mkectl::pki::list_certificates(&node.data.join("pki")).unwrap();
    let path = node.pki(rel);
    list.iter().find(|c| c.path == path).unwrap().not_after
}

#[tokio::test(flavor = "multi_thread")]
async fn running_controller_renews_leaves_and_restarts_etcd() {
    let node = Node::with_spec(
        "rot",
        "  pki:\n    leafLifetime: 2m\n    renewBefore: 90s\n",
    );
    let mut ctl = node.start_controller(NO_KUBE_BINARIES);
    let st = node.wait_status("controller ready", Duration::from_secs(60), |_| true);
    let mkectl_pid = st["pid"].as_i64().unwrap();
    assert_eq!(mkectl_pid, i64::from(ctl.pid()));
    let etcd_pid = component(&st, "etcd")["pid"].as_i64().unwrap();

    let mut c = connect(&node.etcd_endpoint(), &client_tls(&node))
        .await
        .unwrap();
    c.put("/registry/rot", "kept", None).await.unwrap();

    let cas: Vec<_> = ["ca.crt", "ca.key", "etcd/ca.crt", "etcd/ca.key"]
        .iter()
        .map(|p| fs::read(node.pki(p)).unwrap())
        .collect();
    let first_server = fs::read(node.pki("etcd/server.crt")).unwrap();
    let first_expiry = not_after(&node, "etcd/server.crt");

    // Renewed by the controller itself, ~30 s after issuance.
    let t0 = Instant::now();
    wait_for("etcd-server renewed", Duration::from_secs(75), || {
        (fs::read(node.pki("etcd/server.crt")).unwrap() != first_server).then_some(())
    });
    eprintln!("renewed after {:?}", t0.elapsed());
    assert!(not_after(&node, "etcd/server.crt") > first_expiry);
    let st = node.wait_status(
        "etcd restarted on new certs",
        Duration::from_secs(60),
        |s| {
            let e = component(s, "etcd");
            e["pid"].as_i64() != Some(etcd_pid) && e["restarts"].as_u64() >= Some(1)
        },
    );
    assert_eq!(st["pid"].as_i64(), Some(mkectl_pid), "mkectl restarted");

    // Past the first leaves' expiry, etcd still serves (it runs on renewed
    // certificates), the CAs never changed and mkectl never exited.
    let wait = first_expiry
        .duration_since(SystemTime::now())
        .unwrap_or_default()
        + Duration::from_secs(3);
    tokio::time::sleep(wait).await;
    let st = node.wait_status(
        "ready after the first leaves expired",
        Duration::from_secs(60),
        |_| true,
    );
    assert_eq!(st["pid"].as_i64(), Some(mkectl_pid));
    assert!(
        ctl.child.try_wait().unwrap().is_none(),
        "mkectl exited:\n{}",
        ctl.log_text()
    );
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        if get(&node, "/registry/rot").await.as_deref() == Some("kept") {
            break;
        }
        assert!(Instant::now() < end, "etcd stopped serving after rotation");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (p, before) in ["ca.crt", "ca.key", "etcd/ca.crt", "etcd/ca.key"]
        .iter()
        .zip(&cas)
    {
        assert_eq!(&fs::read(node.pki(p)).unwrap(), before, "{p} changed");
    }
    let log = ctl.log_text();
    assert!(log.contains("renewed certificate"), "rotation is logged");
}
