//! Kubelet TLS bootstrap against the real control plane (kube-apiserver,
//! kube-controller-manager and kube-scheduler v1.32, built by
//! `packaging/build-upstream.sh`), driven the way a kubelet drives it, with
//! kubectl and openssl as the client:
//!
//! - a worker join mirrors its token as a `bootstrap.kubernetes.io/token`
//!   Secret; the bootstrap kubeconfig the join wrote then authenticates as
//!   `system:bootstrap:<id>` (a token that was never mirrored does not);
//! - with it a client CSR (`kubernetes.io/kube-apiserver-client-kubelet`) is
//!   created; kube-controller-manager approves it (bootstrap RBAC from the
//!   applier's default stack) and signs it with the cluster CA; the node
//!   then authenticates as `system:node:<name>` and renews the same way;
//! - as that node, it registers its Node and asks for a kubelet serving
//!   certificate (`kubernetes.io/kubelet-serving`): mkectl's CSR approver
//!   approves it and kube-controller-manager signs it; forged requests
//!   (an address or a host name the node does not have, a requester that is
//!   not a node) are denied and never signed; one for another node's CN is
//!   refused by the apiserver itself (NodeRestriction).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use base64::Engine;
use common::join::{token_create, token_file, wait_log};
use common::upstream::{control_plane_bins, CONTROL_PLANE_READY};
use common::*;
use mkectl::components::csr_approver::{APPROVE_REASON, DENY_REASON, KUBELET_SERVING_SIGNER};
use mkectl::join::mirror::EXTRA_GROUP;
use mkectl::join::JoinToken;
use serde_json::{json, Value};

const NODE: &str = "br-w1";
const NODE_IP: &str = "127.0.0.20";
const CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// Bound for approvals and signing (watch-driven, so normally well under a
/// second) on a busy 2-core machine.
const WAIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------- helpers

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .unwrap_or_else(|e| panic!("{s:?} is not base64: {e}"))
}

/// `kubectl --kubeconfig <kc> <args>`.
fn kubectl_as(kc: &Path, args: &[&str]) -> Output {
    Command::new("kubectl")
        .env_remove("KUBECONFIG")
        .arg("--kubeconfig")
        .arg(kc)
        .arg("--request-timeout=20s")
        .args(args)
        .output()
        .expect("kubectl runs")
}

fn kubectl_as_ok(kc: &Path, args: &[&str]) -> String {
    let out = kubectl_as(kc, args);
    assert!(
        out.status.success(),
        "kubectl --kubeconfig {} {args:?}: {}",
        kc.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `kubectl create -f <manifest>` as `kc`.
fn create_as(kc: &Path, dir: &Path, name: &str, manifest: &Value) {
    let f = dir.join(format!("{name}.json"));
    std::fs::write(&f, manifest.to_string()).unwrap();
    kubectl_as_ok(kc, &["create", "-f", f.to_str().unwrap()]);
}

/// `(username, groups)` that `kc` authenticates as (`kubectl auth whoami`).
fn whoami(kc: &Path) -> (String, Vec<String>) {
    let v: Value =
        serde_json::from_str(&kubectl_as_ok(kc, &["auth", "whoami", "-o", "json"])).unwrap();
    let info = &v["status"]["userInfo"];
    let groups = info["groups"]
        .as_array()
        .map(|g| g.iter().map(|x| x.as_str().unwrap().to_string()).collect())
        .unwrap_or_default();
    (info["username"].as_str().unwrap().to_string(), groups)
}

fn openssl(args: &[&str]) -> String {
    output_ok(Command::new("openssl").args(args))
}

/// A new P-256 key (SEC1 PEM, as the kubelet makes) at `dir/<name>.key`.
fn new_key(dir: &Path, name: &str) -> PathBuf {
    let key = dir.join(format!("{name}.key"));
    openssl(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        key.to_str().unwrap(),
    ]);
    key
}

/// A PEM certificate request signed by `key` for `subject`, with a
/// subjectAltName extension when `sans` is not empty.
fn csr_pem(key: &Path, subject: &str, sans: &str) -> String {
    let mut args = vec![
        "req",
        "-new",
        "-key",
        key.to_str().unwrap(),
        "-subj",
        subject,
    ];
    let ext = format!("subjectAltName={sans}");
    if !sans.is_empty() {
        args.extend(["-addext", &ext]);
    }
    openssl(&args)
}

fn csr_object(name: &str, pem: &str, signer: &str, usages: &[&str]) -> Value {
    json!({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"name": name},
        "spec": {
            "request": b64(pem.as_bytes()),
            "signerName": signer,
            "usages": usages,
        },
    })
}

fn get_csr(node: &Node, name: &str) -> Value {
    serde_json::from_str(&node.kubectl_ok(&["get", "csr", name, "-o", "json"])).unwrap()
}

/// The CSR's condition of `type_` (Approved, Denied, Failed), if any.
fn condition(csr: &Value, type_: &str) -> Option<Value> {
    csr["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .cloned()
}

/// Waits until the CSR carries a signed certificate; returns the CSR.
fn wait_signed(node: &Node, name: &str) -> Value {
    wait_for(&format!("CSR {name} signed"), WAIT, || {
        let csr = get_csr(node, name);
        assert!(
            condition(&csr, "Denied").is_none() && condition(&csr, "Failed").is_none(),
            "CSR {name} was not approved and signed: {csr:#}"
        );
        csr["status"]["certificate"]
            .as_str()
            .is_some_and(|c| !c.is_empty())
            .then_some(csr)
    })
}

/// Waits until the CSR is denied; returns the Denied condition.
fn wait_denied(node: &Node, name: &str) -> Value {
    wait_for(&format!("CSR {name} denied"), WAIT, || {
        let csr = get_csr(node, name);
        assert!(
            condition(&csr, "Approved").is_none(),
            "forged CSR {name} approved: {csr:#}"
        );
        condition(&csr, "Denied")
    })
}

/// Writes the CSR's certificate to `dir/<name>.crt` and checks it with
/// openssl: issued by the cluster CA, for `key`, with `subject`; returns
/// its text form (subject, SANs, usages).
fn check_certificate(node: &Node, dir: &Path, name: &str, csr: &Value, key: &Path) -> String {
    let pem = unb64(csr["status"]["certificate"].as_str().unwrap());
    let crt = dir.join(format!("{name}.crt"));
    std::fs::write(&crt, &pem).unwrap();
    let verify = openssl(&[
        "verify",
        "-CAfile",
        node.pki("ca.crt").to_str().unwrap(),
        crt.to_str().unwrap(),
    ]);
    assert!(verify.trim().ends_with(": OK"), "{verify}");
    let cert_key = openssl(&["x509", "-in", crt.to_str().unwrap(), "-noout", "-pubkey"]);
    let our_key = openssl(&["pkey", "-in", key.to_str().unwrap(), "-pubout"]);
    assert_eq!(cert_key, our_key, "the certificate is not for our key");
    openssl(&[
        "x509",
        "-in",
        crt.to_str().unwrap(),
        "-noout",
        "-subject",
        "-issuer",
        "-ext",
        "subjectAltName,extendedKeyUsage,keyUsage",
        "-nameopt",
        "RFC2253",
    ])
}

/// A kubeconfig for the same cluster as `base` that authenticates with a
/// client certificate.
fn cert_kubeconfig(base: &Path, out: &Path, crt_pem: &[u8], key: &Path) {
    let view: Value = serde_json::from_str(&kubectl_as_ok(
        base,
        &["config", "view", "--raw", "--minify", "-o", "json"],
    ))
    .unwrap();
    let cluster = &view["clusters"][0]["cluster"];
    let kc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {
            "server": cluster["server"],
            "certificate-authority-data": cluster["certificate-authority-data"],
        }}],
        "users": [{"name": "u", "user": {
            "client-certificate-data": b64(crt_pem),
            "client-key-data": b64(&std::fs::read(key).unwrap()),
        }}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    });
    std::fs::write(out, kc.to_string()).unwrap();
}

/// The same kubeconfig as `base` with another bearer token.
fn token_kubeconfig(base: &Path, out: &Path, token: &str) {
    let mut view: Value = serde_json::from_str(&kubectl_as_ok(
        base,
        &["config", "view", "--raw", "--minify", "-o", "json"],
    ))
    .unwrap();
    view["users"][0]["user"] = json!({ "token": token });
    std::fs::write(out, view.to_string()).unwrap();
}

// ------------------------------------------------------------------ test

#[test]
fn worker_token_bootstraps_a_kubelet_identity_and_serving_certificate() {
    let Some(bin) = control_plane_bins() else {
        return;
    };
    let t_start = Instant::now();
    let c = Node::control_plane_node("br-c1", "127.0.0.1");
    let mut ctl = c.start_full_controller(&bin, &[]);
    // The bootstrap RBAC comes from the applier's default stack.
    wait_log(
        &mut ctl,
        "stack applied stack=bootstrap-rbac ",
        CONTROL_PLANE_READY,
    );
    let dir = c.tmp.path().to_path_buf();

    // --- 1. The worker token is mirrored when the worker joins.
    let tok = token_create(&c, "worker", &["--description", "bootstrap test"]);
    let id = JoinToken::decode(&tok).unwrap().bootstrap.id;
    let secret_name = format!("bootstrap-token-{id}");
    let before = c.kubectl(&["get", "secret", "-n", "kube-system", &secret_name]);
    assert!(
        !before.status.success() && String::from_utf8_lossy(&before.stderr).contains("NotFound"),
        "mirrored before any worker joined"
    );
    let w = Node::with_address(NODE, NODE_IP, "");
    let wtok = token_file(&w, "worker.token", &tok);
    let admin_port = w.spare_port.to_string();
    let mut worker = w.start_worker(&[
        "--token-file",
        wtok.to_str().unwrap(),
        "--address",
        NODE_IP,
        "--agent-admin-port",
        &admin_port,
    ]);
    wait_log(&mut worker, "worker ready", CONTROL_PLANE_READY);
    let t_joined = t_start.elapsed();

    let secret: Value = serde_json::from_str(&c.kubectl_ok(&[
        "get",
        "secret",
        "-n",
        "kube-system",
        &secret_name,
        "-o",
        "json",
    ]))
    .unwrap();
    assert_eq!(secret["type"], "bootstrap.kubernetes.io/token");
    let data = |k: &str| {
        String::from_utf8(unb64(
            secret["data"][k]
                .as_str()
                .unwrap_or_else(|| panic!("no {k} in {secret:#}")),
        ))
        .unwrap()
    };
    let boot_token = JoinToken::decode(&tok).unwrap().bootstrap;
    assert_eq!(data("token-id"), id);
    assert_eq!(data("token-secret"), boot_token.secret());
    assert_eq!(data("usage-bootstrap-authentication"), "true");
    assert_eq!(data("auth-extra-groups"), EXTRA_GROUP);
    assert_eq!(data("description"), "bootstrap test");

    // The kubeconfig the join wrote authenticates with that token.
    let boot_kc = w.data.join("kubelet/bootstrap-kubelet.conf");
    let (user, groups) = whoami(&boot_kc);
    assert_eq!(user, format!("system:bootstrap:{id}"));
    assert!(
        groups.contains(&"system:bootstrappers".to_string()),
        "{groups:?}"
    );
    assert!(groups.contains(&EXTRA_GROUP.to_string()), "{groups:?}");
    // A second worker joining with the same token re-applies the same
    // Secret (server-side apply, idempotent) and authenticates the same way.
    let w2 = Node::with_address("br-w2", "127.0.0.21", "");
    let w2tok = token_file(&w2, "worker.token", &tok);
    let admin_port2 = w2.spare_port.to_string();
    let mut worker2 = w2.start_worker(&[
        "--token-file",
        w2tok.to_str().unwrap(),
        "--address",
        "127.0.0.21",
        "--agent-admin-port",
        &admin_port2,
    ]);
    wait_log(&mut worker2, "worker ready", CONTROL_PLANE_READY);
    let (user2, _) = whoami(&w2.data.join("kubelet/bootstrap-kubelet.conf"));
    assert_eq!(user2, format!("system:bootstrap:{id}"));
    let again: Value = serde_json::from_str(&c.kubectl_ok(&[
        "get",
        "secret",
        "-n",
        "kube-system",
        &secret_name,
        "-o",
        "json",
    ]))
    .unwrap();
    assert_eq!(again["data"], secret["data"]);
    drop(worker2);
    // A worker token nobody joined with is not mirrored: the apiserver
    // does not know it.
    let unused = token_create(&c, "worker", &[]);
    let unused = JoinToken::decode(&unused).unwrap().bootstrap.expose();
    let unused_kc = dir.join("unused.conf");
    token_kubeconfig(&boot_kc, &unused_kc, &unused);
    let out = kubectl_as(&unused_kc, &["auth", "whoami"]);
    assert!(!out.status.success(), "an unmirrored token authenticated");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Unauthorized"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // --- 2. The kubelet's first client certificate: CSR as the bootstrap
    // identity, approved and signed by kube-controller-manager.
    let t_csr = Instant::now();
    let client_key = new_key(&dir, "client");
    let subject = format!("/O=system:nodes/CN=system:node:{NODE}");
    let pem = csr_pem(&client_key, &subject, "");
    create_as(
        &boot_kc,
        &dir,
        "node-csr-1",
        &csr_object(
            "node-csr-1",
            &pem,
            CLIENT_SIGNER,
            &["digital signature", "client auth"],
        ),
    );
    let csr = wait_signed(&c, "node-csr-1");
    let client_signed = t_csr.elapsed();
    assert_eq!(csr["spec"]["username"], format!("system:bootstrap:{id}"));
    let approved = condition(&csr, "Approved").unwrap();
    assert_eq!(approved["reason"], "AutoApproved", "{approved}");
    assert!(
        approved["message"]
            .as_str()
            .unwrap()
            .contains("kubelet client certificate"),
        "approved by kube-controller-manager, not mkectl: {approved}"
    );
    let text = check_certificate(&c, &dir, "client", &csr, &client_key);
    assert!(
        text.contains(&format!("subject=CN=system:node:{NODE},O=system:nodes")),
        "{text}"
    );
    assert!(text.contains("TLS Web Client Authentication"), "{text}");
    assert!(!text.contains("TLS Web Server Authentication"), "{text}");
    let node_kc = dir.join("node.conf");
    let client_crt = std::fs::read(dir.join("client.crt")).unwrap();
    cert_kubeconfig(&boot_kc, &node_kc, &client_crt, &client_key);
    let (user, groups) = whoami(&node_kc);
    assert_eq!(user, format!("system:node:{NODE}"));
    assert!(groups.contains(&"system:nodes".to_string()), "{groups:?}");

    // Renewal as the node itself (selfnodeclient): approved and signed too.
    let renew_key = new_key(&dir, "renew");
    let pem = csr_pem(&renew_key, &subject, "");
    create_as(
        &node_kc,
        &dir,
        "node-csr-renew",
        &csr_object(
            "node-csr-renew",
            &pem,
            CLIENT_SIGNER,
            &["digital signature", "client auth"],
        ),
    );
    let csr = wait_signed(&c, "node-csr-renew");
    assert_eq!(csr["spec"]["username"], format!("system:node:{NODE}"));
    check_certificate(&c, &dir, "renew", &csr, &renew_key);

    // --- 3. The node registers itself with its addresses, as the kubelet
    // does (one create, status included).
    create_as(
        &node_kc,
        &dir,
        "node",
        &json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE},
        "status": {"addresses": [
            {"type": "InternalIP", "address": NODE_IP},
            {"type": "Hostname", "address": NODE},
        ]}}),
    );
    let addresses = c.kubectl_ok(&[
        "get",
        "node",
        NODE,
        "-o",
        "jsonpath={.status.addresses[*].address}",
    ]);
    assert_eq!(addresses, format!("{NODE_IP} {NODE}"));

    // --- 4. Serving certificates: the kubelet's own request is approved by
    // mkectl's approver and signed by kube-controller-manager; forged ones
    // are denied.
    let serving = ["digital signature", "server auth"];
    // An address the node does not have.
    let other_key = new_key(&dir, "forged");
    let pem = csr_pem(&other_key, &subject, &format!("DNS:{NODE},IP:127.0.0.99"));
    create_as(
        &node_kc,
        &dir,
        "serving-foreign-ip",
        &csr_object("serving-foreign-ip", &pem, KUBELET_SERVING_SIGNER, &serving),
    );
    // Another node's host name in the SANs.
    let pem = csr_pem(&other_key, &subject, &format!("DNS:{NODE},DNS:br-w2"));
    create_as(
        &node_kc,
        &dir,
        "serving-other-name",
        &csr_object("serving-other-name", &pem, KUBELET_SERVING_SIGNER, &serving),
    );
    // Another node's identity (CN) asked for by this node: the apiserver's
    // NodeRestriction admission already refuses to store it, so the
    // approver's own CN rule is a second line of defence only.
    let pem = csr_pem(
        &other_key,
        "/O=system:nodes/CN=system:node:br-w2",
        "DNS:br-w2",
    );
    let f = dir.join("serving-other-node.json");
    std::fs::write(
        &f,
        csr_object("serving-other-node", &pem, KUBELET_SERVING_SIGNER, &serving).to_string(),
    )
    .unwrap();
    let out = kubectl_as(&node_kc, &["create", "-f", f.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("Forbidden"),
        "node {NODE} created a CSR for another node: {err}"
    );
    // A request exactly like the good one, but by someone who is not a node.
    let pem = csr_pem(&other_key, &subject, &format!("DNS:{NODE},IP:{NODE_IP}"));
    create_as(
        &c.pki("admin.conf"),
        &dir,
        "serving-not-a-node",
        &csr_object("serving-not-a-node", &pem, KUBELET_SERVING_SIGNER, &serving),
    );

    for (name, reason) in [
        (
            "serving-foreign-ip",
            "IP SAN 127.0.0.99 is not an address of Node",
        ),
        (
            "serving-other-name",
            "DNS SAN \"br-w2\" is neither the node name nor a host name of Node",
        ),
        ("serving-not-a-node", "is not a node"),
    ] {
        let denied = wait_denied(&c, name);
        assert_eq!(denied["reason"], DENY_REASON, "{name}: {denied}");
        let message = denied["message"].as_str().unwrap();
        assert!(message.contains(reason), "{name}: {message}");
    }
    let t_serving = Instant::now();
    let serving_key = new_key(&dir, "serving");
    let pem = csr_pem(&serving_key, &subject, &format!("DNS:{NODE},IP:{NODE_IP}"));
    create_as(
        &node_kc,
        &dir,
        "serving-good",
        &csr_object("serving-good", &pem, KUBELET_SERVING_SIGNER, &serving),
    );
    let csr = wait_signed(&c, "serving-good");
    let serving_signed = t_serving.elapsed();
    assert_eq!(csr["spec"]["username"], format!("system:node:{NODE}"));
    let approved = condition(&csr, "Approved").unwrap();
    assert_eq!(approved["reason"], APPROVE_REASON, "{approved}");
    assert!(
        approved["message"].as_str().unwrap().starts_with("mkectl:"),
        "approved by mkectl's approver: {approved}"
    );
    let text = check_certificate(&c, &dir, "serving", &csr, &serving_key);
    assert!(
        text.contains(&format!("subject=CN=system:node:{NODE},O=system:nodes")),
        "{text}"
    );
    assert!(
        text.contains(&format!("DNS:{NODE}")) && text.contains(&format!("IP Address:{NODE_IP}")),
        "{text}"
    );
    assert!(text.contains("TLS Web Server Authentication"), "{text}");

    // kube-controller-manager signed the good one after the forged ones
    // were denied: it never signs a denied request.
    for name in [
        "serving-foreign-ip",
        "serving-other-name",
        "serving-not-a-node",
    ] {
        let csr = get_csr(&c, name);
        assert!(
            csr["status"]["certificate"]
                .as_str()
                .unwrap_or("")
                .is_empty(),
            "denied CSR {name} was signed: {csr:#}"
        );
    }
    let log = ctl.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains(": approved ") && l.contains("csr=serving-good")),
        "the approver did not log its approval:\n{log}"
    );
    println!(
        "bootstrap_real: worker joined {:.1}s after start; client CSR signed in {:.2}s; serving CSR signed in {:.2}s; whole test {:.1}s",
        t_joined.as_secs_f64(),
        client_signed.as_secs_f64(),
        serving_signed.as_secs_f64(),
        t_start.elapsed().as_secs_f64()
    );
}
