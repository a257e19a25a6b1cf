//! Live rotation of the apiserver's serving certificate with the real
//! control plane (kube-apiserver, kube-controller-manager, kube-scheduler
//! v1.32 from `packaging/build-upstream.sh`) and Debian's etcd:
//! `mkectl certs renew apiserver` reissues the certificate, restarts only
//! kube-apiserver (etcd, the controller-manager, the scheduler and mkectl
//! keep their pids), the apiserver serves the new certificate under the
//! unchanged cluster CA, and kubectl with the unchanged admin kubeconfig
//! works as soon as the command returns, with nothing lost.
//!
//! kubectl is polled during the renewal; the longest stretch in which it
//! failed is printed (one apiserver: its restart is a short outage).

mod common;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::upstream::{control_plane_bins, kube_ports_spec, CONTROL_PLANE_READY};
use common::*;

/// Longest kubectl may fail while the apiserver restarts: well under the
/// apiserver's 1-minute request timeout, which a drain stuck on watches
/// would take, and generous for a cold start on a busy 2-core machine.
const OUTAGE_BOUND: Duration = Duration::from_secs(30);

/// `spec:` lines giving kube-controller-manager and kube-scheduler secure
/// ports that are free now, instead of upstream's fixed 10257/10259, which
/// another test's control plane on this machine may hold; and the
/// controller-manager's port.
fn own_kube_ports() -> (String, u16) {
    let ports: [u16; 2] = common::free_ports();
    let port = |i: usize| ports[i];
    let spec = kube_ports_spec(port(0), port(1));
    (spec, port(0))
}

/// Waits until kube-controller-manager has started its controllers: its
/// `/healthz?verbose` lists a check per controller only after the last one
/// started. (While it is still starting them it exits when the apiserver
/// goes away, upstream's behaviour; a settled cluster is what is renewed.)
fn wait_controllers_started(node: &Node, port: u16) {
    let cert = node
        .data
        .join("kube-controller-manager/serving/kube-controller-manager.crt");
    wait_for(
        "kube-controller-manager started its controllers",
        CONTROL_PLANE_READY,
        || {
            let out = Command::new("curl")
                .args(["-sS", "--max-time", "5", "--cacert"])
                .arg(&cert)
                .arg(format!("https://127.0.0.1:{port}/healthz?verbose"))
                .output()
                .ok()?;
            String::from_utf8_lossy(&out.stdout)
                .contains("[+]namespace-controller ok")
                .then_some(())
        },
    );
}

/// The first PEM certificate block in `text`, whitespace-normalised.
fn first_pem_cert(text: &str) -> Option<String> {
    let begin = text.find("-----BEGIN CERTIFICATE-----")?;
    let end_marker = "-----END CERTIFICATE-----";
    let end = text[begin..].find(end_marker)? + begin + end_marker.len();
    Some(
        text[begin..end]
            .lines()
            .map(str::trim)
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

/// The certificate the apiserver at 127.0.0.1:`port` presents, verified by
/// openssl against `ca` for the IP 127.0.0.1 (the handshake fails otherwise).
fn served_cert(port: u16, ca: &std::path::Path) -> String {
    let out = Command::new("openssl")
        .args(["s_client", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-CAfile")
        .arg(ca)
        .args(["-verify_return_error", "-verify_ip", "127.0.0.1"])
        .stdin(Stdio::null())
        .output()
        .expect("openssl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && text.contains("Verify return code: 0 (ok)"),
        "TLS to the apiserver did not verify against the cluster CA:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    first_pem_cert(&text).expect("openssl printed the server certificate")
}

fn pid_of(status: &serde_json::Value, name: &str) -> i64 {
    component(status, name)["pid"]
        .as_i64()
        .unwrap_or_else(|| panic!("{name} has no pid: {status}"))
}

#[test]
fn renewing_the_apiserver_certificate_restarts_only_the_apiserver() {
    let Some(bin) = control_plane_bins() else {
        return;
    };
    let (spec, kcm_port) = own_kube_ports();
    let node = Node::with_spec("rot-real", &spec);
    let ctl = node.start_full_controller(&bin, &[]);
    wait_controllers_started(&node, kcm_port);
    let before = node.wait_status("status ready", CONTROL_PLANE_READY, |v| v["ready"] == true);
    node.kubectl_until(
        "ConfigMap written",
        CONTROL_PLANE_READY,
        &[
            "create",
            "configmap",
            "kept",
            "-n",
            "default",
            "--from-literal=k=v1",
        ],
    );

    let read = |rel: &str| std::fs::read(node.pki(rel)).unwrap();
    let ca = read("ca.crt");
    let ca_key = read("ca.key");
    let admin_conf = read("admin.conf");
    let old_cert_file = String::from_utf8(read("apiserver.crt")).unwrap();
    let old_served = served_cert(node.api_port, &node.pki("ca.crt"));
    assert_eq!(
        Some(old_served.clone()),
        first_pem_cert(&old_cert_file),
        "the apiserver serves pki/apiserver.crt"
    );

    // kubectl keeps being asked while the renewal runs.
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let stop = stop.clone();
        let kubeconfig = node.pki("admin.conf");
        std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let ok = Command::new("kubectl")
                    .env_remove("KUBECONFIG")
                    .arg("--kubeconfig")
                    .arg(&kubeconfig)
                    .args([
                        "--request-timeout=5s",
                        "get",
                        "ns",
                        "kube-system",
                        "-o",
                        "name",
                    ])
                    .output()
                    .is_ok_and(|o| o.status.success());
                samples.push((Instant::now(), ok));
                std::thread::sleep(Duration::from_millis(100));
            }
            samples
        })
    };

    let t0 = Instant::now();
    let out = node
        .cmd(&["certs", "renew", "kube-apiserver"])
        .output()
        .unwrap();
    let took = t0.elapsed();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "certs renew: {said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("renewed: apiserver\n"), "{said}");
    assert!(
        said.contains("restarted: kube-apiserver\n"),
        "only the apiserver is restarted: {said}"
    );

    // The command returned once the apiserver was ready again: kubectl
    // with the same admin kubeconfig works at once, and the data is there.
    let first = node.kubectl(&["get", "ns", "kube-system", "-o", "name"]);
    stop.store(true, Ordering::Relaxed);
    let samples = poller.join().unwrap();
    assert!(
        first.status.success(),
        "kubectl right after `certs renew` returned: {}",
        String::from_utf8_lossy(&first.stderr)
    );
    let v = node.kubectl_ok(&[
        "get",
        "configmap",
        "kept",
        "-n",
        "default",
        "-o",
        "jsonpath={.data.k}",
    ]);
    assert_eq!(v, "v1");
    node.kubectl_ok(&[
        "create",
        "configmap",
        "after",
        "-n",
        "default",
        "--from-literal=k=v2",
    ]);

    // A new certificate on disk and on the wire, under the same CA; the
    // admin kubeconfig was not touched.
    let new_cert_file = String::from_utf8(read("apiserver.crt")).unwrap();
    assert_ne!(
        new_cert_file, old_cert_file,
        "apiserver.crt was not reissued"
    );
    let new_served = served_cert(node.api_port, &node.pki("ca.crt"));
    assert_ne!(
        new_served, old_served,
        "the apiserver still serves the old certificate"
    );
    assert_eq!(Some(new_served), first_pem_cert(&new_cert_file));
    assert_eq!(read("ca.crt"), ca, "cluster CA changed");
    assert_eq!(read("ca.key"), ca_key, "cluster CA key changed");
    assert_eq!(read("admin.conf"), admin_conf, "admin.conf changed");

    // Only the apiserver was restarted.
    let after = node.wait_status("status ready after renewal", CONTROL_PLANE_READY, |v| {
        v["ready"] == true
    });
    assert_eq!(after["pid"], before["pid"], "mkectl restarted");
    assert_ne!(
        pid_of(&after, "kube-apiserver"),
        pid_of(&before, "kube-apiserver"),
        "kube-apiserver kept its pid"
    );
    assert!(
        !alive(pid_of(&before, "kube-apiserver") as i32),
        "the old apiserver still runs"
    );
    for kept in ["etcd", "kube-controller-manager", "kube-scheduler"] {
        assert_eq!(
            pid_of(&after, kept),
            pid_of(&before, kept),
            "{kept} was restarted"
        );
        assert_eq!(
            component(&after, kept)["restarts"],
            component(&before, kept)["restarts"],
            "{kept} was restarted"
        );
    }

    // The outage kubectl saw while the apiserver restarted.
    let mut longest = Duration::ZERO;
    let mut down_since: Option<Instant> = None;
    for (at, ok) in &samples {
        match (ok, down_since) {
            (false, None) => down_since = Some(*at),
            (true, Some(since)) => {
                longest = longest.max(at.duration_since(since));
                down_since = None;
            }
            _ => {}
        }
    }
    if let Some(since) = down_since {
        longest = longest.max(since.elapsed());
    }
    let failed = samples.iter().filter(|(_, ok)| !ok).count();
    println!(
        "certs renew apiserver: {} ms; kubectl polled {} times during it, {failed} failed, longest failing stretch {} ms",
        took.as_millis(),
        samples.len(),
        longest.as_millis()
    );
    // The old apiserver let go at once instead of holding its clients'
    // watches for the whole request timeout (1 min) with its listener
    // closed: the outage is the restart, not a drain.
    assert!(
        longest < OUTAGE_BOUND,
        "kubectl failed for {longest:?} in a row while the apiserver restarted"
    );
    let log = ctl.log_text();
    assert!(log.contains("renewed certificates"), "rotation is logged");
}
