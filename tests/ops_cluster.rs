//! Operating a controller with a real etcd: `mkectl status` and its exit
//! codes, the metrics page (checked by promtool), kubeconfigs (checked by
//! kubectl and openssl), on-demand certificate renewal, backup and restore.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use common::*;
use mkectl::etcd::{connect, EtcdClientTls};

const READY: Duration = Duration::from_secs(60);

fn client_tls(node: &Node) -> EtcdClientTls {
    EtcdClientTls {
        ca: node.pki("etcd/ca.crt"),
        cert: node.pki("apiserver-etcd-client.crt"),
        key: node.pki("apiserver-etcd-client.key"),
    }
}

async fn put(node: &Node, key: &str, value: &str) {
    let mut c = connect(&node.etcd_endpoint(), &client_tls(node))
        .await
        .unwrap();
    c.put(key, value, None).await.unwrap();
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

fn mode(p: &std::path::Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn promtool_check(page: &str) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) is installed");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(page.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool rejected the page: {}{}\n{page}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sample(page: &str, series: &str) -> Option<i64> {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn pid_of(status: &serde_json::Value, name: &str) -> i64 {
    component(status, name)["pid"].as_i64().unwrap()
}

#[test]
fn status_and_metrics_follow_the_components() {
    let node = Node::new("ops-a");
    let ctl = node.start_controller(NO_KUBE_BINARIES);
    let st = node.wait_status("controller ready", READY, |_| true);

    // What status reports, from the real processes.
    assert_eq!(st["role"], "controller");
    assert_eq!(st["nodeName"], "ops-a");
    assert_eq!(st["nodeAddress"], "127.0.0.1");
    assert_eq!(st["pid"].as_i64().unwrap(), i64::from(ctl.pid()));
    let etcd = component(&st, "etcd");
    assert_eq!(etcd["ready"], true);
    assert_eq!(etcd["restarts"], 0);
    assert_eq!(etcd["pid"].as_i64(), node.child_pid("etcd").map(i64::from));
    assert_eq!(st["etcd"]["members"].as_array().unwrap().len(), 1);
    assert_eq!(st["etcd"]["leader"], "ops-a");
    assert!(
        st["certificates"]["soonest"]["secondsLeft"]
            .as_i64()
            .unwrap()
            > 0
    );
    assert_eq!(st["konnectivity"]["kind"], "agents");
    assert_eq!(mode(&node.run.join("status.sock")), 0o600);
    let text = node.cmd(&["status"]).output().unwrap();
    assert!(text.status.success());
    assert!(String::from_utf8_lossy(&text.stdout).contains("leader ops-a"));
    let yaml = node.cmd(&["status", "-o", "yaml"]).output().unwrap();
    assert!(String::from_utf8_lossy(&yaml.stdout).contains("nodeName: ops-a"));

    let page = node.metrics_page();
    promtool_check(&page);
    let restarts = "mkectl_component_restarts_total{component=\"etcd\"}";
    assert_eq!(sample(&page, restarts), Some(0));
    assert_eq!(
        sample(&page, "mkectl_component_up{component=\"etcd\"}"),
        Some(1)
    );
    assert!(
        sample(
            &page,
            "mkectl_certificate_expiry_seconds{certificate=\"etcd-server\"}"
        )
        .unwrap()
            > 0
    );
    assert!(page.contains("# TYPE mkectl_join_requests_total counter"));

    // kill -9 etcd: the restart count grows, status and metrics show it.
    let old_pid = pid_of(&st, "etcd");
    signal(old_pid as i32, libc::SIGKILL);
    let st = node.wait_status("etcd restarted and ready", READY, |s| {
        let e = component(s, "etcd");
        e["restarts"].as_u64() >= Some(1)
            && e["ready"] == true
            && e["pid"].as_i64() != Some(old_pid)
    });
    assert_eq!(component(&st, "etcd")["lastExit"]["signal"], "SIGKILL");
    let page = node.metrics_page();
    promtool_check(&page);
    assert!(sample(&page, restarts).unwrap() >= 1);
    assert_eq!(
        sample(&page, "mkectl_component_last_exit_code{component=\"etcd\"}"),
        Some(137)
    );

    // A frozen etcd is not ready: exit code 1; thawed, 0 again.
    let pid = pid_of(&st, "etcd") as i32;
    signal(pid, libc::SIGSTOP);
    let (code, doc) = wait_for("status to report etcd not ready", READY, || {
        let (code, doc) = node.status_json();
        (code != 0).then_some((code, doc))
    });
    signal(pid, libc::SIGCONT);
    assert_eq!(code, 1);
    let doc = doc.expect("status still prints the document");
    assert_eq!(doc["ready"], false);
    assert_eq!(component(&doc, "etcd")["ready"], false);
    node.wait_status("etcd ready after SIGCONT", READY, |_| true);

    // Renew on demand through the running controller: etcd restarts, the CA
    // stays, mkectl stays.
    let ca = fs::read(node.pki("etcd/ca.crt")).unwrap();
    let cert = fs::read(node.pki("etcd/server.crt")).unwrap();
    let before = node.status_json().1.unwrap();
    let out = node
        .cmd(&["certs", "renew", "etcd-server"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("restarted: etcd"), "{said}");
    assert_ne!(fs::read(node.pki("etcd/server.crt")).unwrap(), cert);
    assert_eq!(fs::read(node.pki("etcd/ca.crt")).unwrap(), ca);
    let after = node.wait_status("etcd ready after renewal", READY, |_| true);
    assert_ne!(pid_of(&after, "etcd"), pid_of(&before, "etcd"));
    assert_eq!(after["pid"], before["pid"]);
    let out = node.cmd(&["certs", "renew", "etcd-ca"]).output().unwrap();
    assert_eq!(out.status.code(), Some(64));

    // No controller on a run dir: 69 with a clear message.
    let out = Command::new(MKECTL)
        .arg("--run-dir")
        .arg(node.tmp.path().join("elsewhere"))
        .args(["status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(69));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no mkectl node is running"));
}

fn kubectl_view(path: &std::path::Path, extra: &[&str]) -> String {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(path)
        .args(["config", "view"])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn kubeconfigs_for_admin_and_users_and_offline_renewal() {
    let node = Node::new("ops-k");
    let yaml = fs::read_to_string(&node.config).unwrap().replace(
        "    address: 127.0.0.1\n",
        "    address: 127.0.0.1\n    externalAddress: k8s.example.test\n",
    );
    fs::write(&node.config, yaml).unwrap();
    let out = node
        .cmd(&["controller", "--init-only", "--node-name", "ops-k"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = node.cmd(&["kubeconfig", "admin"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let admin = node.tmp.path().join("admin.kubeconfig");
    fs::write(&admin, &out.stdout).unwrap();
    let view = kubectl_view(&admin, &[]);
    let server = format!("server: https://k8s.example.test:{}", node.api_port);
    assert!(view.contains(&server), "{view}");

    let out = node
        .cmd(&[
            "kubeconfig",
            "create",
            "jane",
            "--groups",
            "dev,ops",
            "--expiry",
            "2h",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let user = node.tmp.path().join("jane.kubeconfig");
    fs::write(&user, &out.stdout).unwrap();
    assert!(kubectl_view(&user, &[]).contains(&server));
    let b64 = kubectl_view(
        &user,
        &[
            "--raw",
            "-o",
            "jsonpath={.users[0].user.client-certificate-data}",
        ],
    );
    use base64::Engine;
    let pem = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .unwrap();
    let cert = node.tmp.path().join("jane.crt");
    fs::write(&cert, pem).unwrap();
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-enddate", "-in"])
        .arg(&cert)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).replace(" = ", "=");
    assert!(text.contains("CN=jane"), "{text}");
    assert!(text.contains("O=dev") && text.contains("O=ops"), "{text}");
    // Signed by the cluster CA, valid ~2h.
    let verify = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(node.pki("ca.crt"))
        .arg(&cert)
        .output()
        .unwrap();
    assert!(verify.status.success());
    let check = |secs: &str| {
        Command::new("openssl")
            .args(["x509", "-noout", "-checkend", secs, "-in"])
            .arg(&cert)
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(check("3600") && !check("10800"), "expiry is not ~2h");
    let bad = node
        .cmd(&["kubeconfig", "create", "x", "--expiry", "soon"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(64));

    // No controller running: `certs renew` renews the files and says so.
    let ca = fs::read(node.pki("ca.crt")).unwrap();
    let admin_crt = fs::read(node.pki("admin.crt")).unwrap();
    let out = node
        .cmd(&["certs", "renew", "--all", "--node-name", "ops-k"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("renewed the files only"));
    assert_ne!(fs::read(node.pki("admin.crt")).unwrap(), admin_crt);
    assert_eq!(fs::read(node.pki("ca.crt")).unwrap(), ca);
}

fn leftovers(dir: &std::path::Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".mkectl-"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn backup_wipe_restore_brings_the_data_back() {
    let node = Node::new("ops-b");
    let mut ctl = node.start_controller(NO_KUBE_BINARIES);
    node.wait_status("controller ready", READY, |_| true);
    for i in 0..20 {
        put(&node, &format!("/registry/test/k{i}"), &format!("v{i}")).await;
    }
    let archive = node.tmp.path().join("backup.tar.gz");
    let out = node
        .cmd(&["backup", "--save-path", archive.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mode(&archive), 0o600);
    // Never overwritten.
    let again = node
        .cmd(&["backup", "--save-path", archive.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!again.status.success());
    put(&node, "/registry/test/after", "not in the backup").await;

    let ca = fs::read(node.pki("ca.crt")).unwrap();
    let sa = fs::read(node.pki("sa.key")).unwrap();
    signal(ctl.pid(), libc::SIGTERM);
    assert!(ctl.wait_exit(Duration::from_secs(30)).success());
    fs::remove_dir_all(&node.data).unwrap();

    // A truncated archive is refused and nothing is written.
    let bytes = fs::read(&archive).unwrap();
    let truncated = node.tmp.path().join("truncated.tar.gz");
    fs::write(&truncated, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let out = node
        .cmd(&[
            "restore",
            truncated.to_str().unwrap(),
            "--node-name",
            "ops-b",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("damaged or truncated"), "{err}");
    assert!(!node.data.exists(), "a refused restore wrote the data dir");
    assert!(leftovers(node.tmp.path()).is_empty());

    // A foreign archive (a tar.gz of something else) is refused too; this
    // time the data dir exists, empty (a mount point, say), and stays so.
    fs::create_dir(&node.data).unwrap();
    let foreign = node.tmp.path().join("foreign.tar.gz");
    let st = Command::new("tar")
        .arg("czf")
        .arg(&foreign)
        .arg("-C")
        .arg(node.tmp.path())
        .arg("mkectl.yaml")
        .status()
        .unwrap();
    assert!(st.success());
    let out = node
        .cmd(&["restore", foreign.to_str().unwrap(), "--node-name", "ops-b"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an mkectl backup"));
    assert_eq!(fs::read_dir(&node.data).unwrap().count(), 0);

    let out = node
        .cmd(&["restore", archive.to_str().unwrap(), "--node-name", "ops-b"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mode(&node.data), 0o700);
    assert_eq!(mode(&node.pki("ca.key")), 0o600);
    assert_eq!(mode(&node.pki("ca.crt")), 0o644);
    assert_eq!(fs::read(node.pki("ca.crt")).unwrap(), ca);
    assert_eq!(fs::read(node.pki("sa.key")).unwrap(), sa);

    // Into a non-empty data dir: usage error, nothing touched.
    let out = node
        .cmd(&["restore", archive.to_str().unwrap(), "--node-name", "ops-b"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));

    let _ctl = node.start_controller(NO_KUBE_BINARIES);
    node.wait_status("restored controller ready", READY, |_| true);
    for i in 0..20 {
        assert_eq!(
            get(&node, &format!("/registry/test/k{i}")).await.as_deref(),
            Some(format!("v{i}").as_str())
        );
    }
    assert_eq!(get(&node, "/registry/test/after").await, None);
}
