//! `mkectl controller` with a real etcd (Debian's etcd 3.4) under supervision:
//! mTLS, restart after kill -9, clean shutdown, PDEATHSIG, stale pid files,
//! restarts that keep data and certificates.

mod common;

use std::fs;
use std::time::Duration;

use common::*;
use mkectl::etcd::{connect, EtcdClientTls};

const READY: Duration = Duration::from_secs(30);

fn client_tls(node: &Node) -> EtcdClientTls {
    EtcdClientTls {
        ca: node.pki("etcd/ca.crt"),
        cert: node.pki("apiserver-etcd-client.crt"),
        key: node.pki("apiserver-etcd-client.key"),
    }
}

/// Puts `key=value` once etcd accepts it, retrying until `READY`.
async fn put_when_ready(node: &Node, key: &str, value: &str) {
    let end = std::time::Instant::now() + READY;
    loop {
        if let Ok(mut c) = connect(&node.etcd_endpoint(), &client_tls(node)).await {
            if c.put(key, value, None).await.is_ok() {
                return;
            }
        }
        assert!(std::time::Instant::now() < end, "etcd never accepted a put");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn get(node: &Node, key: &str) -> Option<String> {
    let mut c = connect(&node.etcd_endpoint(), &client_tls(node))
        .await
        .ok()?;
    let r = c.get(key, None).await.ok()?;
    r.kvs()
        .first()
        .map(|kv| kv.value_str().unwrap().to_string())
}

async fn get_until(node: &Node, key: &str, timeout: Duration) -> String {
    let end = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = get(node, key).await {
            return v;
        }
        assert!(std::time::Instant::now() < end, "could not read {key} back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn marker(node: &Node, component: &str) -> String {
    format!("MKECTL_SUPERVISED={}", node.run.join(component).display())
}

/// A CA and client certificate nobody in the cluster trusts.
fn foreign_client(dir: &std::path::Path) -> EtcdClientTls {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "kube-apiserver-etcd-client");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let cert = params.signed_by(&key, &issuer).unwrap();
    let _ = ca;
    fs::write(dir.join("foreign.crt"), cert.pem()).unwrap();
    fs::write(dir.join("foreign.key"), key.serialize_pem()).unwrap();
    EtcdClientTls {
        ca: dir.join("foreign.crt"),
        cert: dir.join("foreign.crt"),
        key: dir.join("foreign.key"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn etcd_under_supervision_with_mtls() {
    let node = Node::new("ctl-a");
    let mut ctl = node.start_controller(NO_KUBE_BINARIES);
    put_when_ready(&node, "/test/k1", "v1").await;
    assert_eq!(get(&node, "/test/k1").await.as_deref(), Some("v1"));

    // Client URL on loopback only, peer URL on the node address, cert auth.
    let etcd_pid = node.child_pid("etcd").expect("etcd pid file");
    let cmdline = fs::read(format!("/proc/{etcd_pid}/cmdline")).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(cmdline.contains(&format!(
        "--listen-client-urls=https://127.0.0.1:{}",
        node.etcd_client_port
    )));
    assert!(cmdline.contains("--client-cert-auth=true"), "{cmdline}");
    assert!(
        cmdline.contains("--peer-client-cert-auth=true"),
        "{cmdline}"
    );
    let mode = fs::metadata(node.data.join("etcd")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o700
    );

    // A client certificate from a foreign CA is refused.
    let mut foreign = foreign_client(node.tmp.path());
    foreign.ca = node.pki("etcd/ca.crt");
    let refused = match connect(&node.etcd_endpoint(), &foreign).await {
        Err(_) => true,
        Ok(mut c) => c.get("/test/k1", None).await.is_err(),
    };
    assert!(
        refused,
        "etcd accepted a client certificate from a foreign CA"
    );

    // kill -9 etcd: the supervisor restarts it and the data is intact.
    signal(etcd_pid, libc::SIGKILL);
    let new_pid = wait_for("etcd restarted", READY, || {
        node.child_pid("etcd")
            .filter(|p| *p != etcd_pid && alive(*p))
    });
    assert_ne!(new_pid, etcd_pid);
    assert_eq!(get_until(&node, "/test/k1", READY).await, "v1");

    // SIGTERM to mkectl: exits 0 and leaves no child within 15 s.
    let ca_before = fs::read(node.pki("ca.crt")).unwrap();
    let etcd_ca_before = fs::read(node.pki("etcd/ca.crt")).unwrap();
    signal(ctl.pid(), libc::SIGTERM);
    let status = ctl.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "exit {status:?}\n{}", ctl.log_text());
    assert!(!alive(new_pid), "etcd survived mkectl's shutdown");
    assert!(pids_with_env(&marker(&node, "etcd")).is_empty());
    assert!(
        !node.pid_file("etcd").exists(),
        "pid file left after clean stop"
    );
    let log = ctl.log_text();
    assert!(log.contains("component"), "logs carry the component field");

    // A restart keeps data and certificates.
    let _ctl2 = node.start_controller(NO_KUBE_BINARIES);
    assert_eq!(get_until(&node, "/test/k1", READY).await, "v1");
    assert_eq!(fs::read(node.pki("ca.crt")).unwrap(), ca_before);
    assert_eq!(fs::read(node.pki("etcd/ca.crt")).unwrap(), etcd_ca_before);
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_mkectl_takes_etcd_along_and_next_start_cleans_up() {
    let node = Node::new("ctl-b");
    let mut ctl = node.start_controller(NO_KUBE_BINARIES);
    put_when_ready(&node, "/test/k2", "v2").await;
    let etcd_pid = node.child_pid("etcd").unwrap();

    signal(ctl.pid(), libc::SIGKILL);
    ctl.wait_exit(Duration::from_secs(5));
    wait_for("etcd to die with mkectl", Duration::from_secs(10), || {
        (!alive(etcd_pid)).then_some(())
    });
    assert!(
        node.pid_file("etcd").exists(),
        "the crash leaves a stale pid file"
    );

    let ctl2 = node.start_controller(NO_KUBE_BINARIES);
    assert_eq!(get_until(&node, "/test/k2", READY).await, "v2");
    let pid2 = node.child_pid("etcd").unwrap();
    assert_ne!(pid2, etcd_pid);
    assert!(alive(pid2));
    let log = ctl2.log_text();
    assert!(
        log.contains("stale"),
        "the stale pid file is reported:\n{log}"
    );
}

#[test]
fn init_only_writes_everything_and_changes_nothing_the_second_time() {
    let node = Node::new("ctl-c");
    let out = node
        .cmd(&["controller", "--init-only", "--node-name", "ctl-c"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(node.pki("ca.crt").exists());
    assert!(node.pki("admin.conf").exists());
    assert!(node.data.join("etcd").is_dir());
    assert!(
        !node.pid_file("etcd").exists(),
        "--init-only started nothing"
    );
    let before = snapshot(&node.data);
    let out = node
        .cmd(&["controller", "--init-only", "--node-name", "ctl-c"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        snapshot(&node.data),
        before,
        "second --init-only changed files"
    );

    // check-expiration lists every certificate.
    let out = node
        .cmd(&["certs", "check-expiration", "-o", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert!(names.len() >= 14, "{names:?}");
    assert!(rows
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["residualSeconds"].as_i64().unwrap() > 0));

    // The admin kubeconfig passes kubectl.
    let out = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(node.pki("admin.conf"))
        .args(["config", "view"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
