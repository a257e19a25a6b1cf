//! Cluster PKI: generated material checked with the real openssl, kubectl
//! and etcd 3.4 (no mock verifiers).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use common::free_ports;
use mkectl::pki::{
    self, Ca, CertUsage, KeyType, Leaf, PkiError, PkiPaths, PkiSpec, DEFAULT_LEAF_LIFETIME,
};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

const DAY: Duration = Duration::from_secs(24 * 3600);

fn spec(dir: &Path) -> PkiSpec {
    let mut s = PkiSpec::new(dir.join("pki"), "node-1");
    s.node_addresses = vec![
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)),
        IpAddr::V4(Ipv4Addr::new(198, 51, 100, 20)),
    ];
    s.extra_sans = vec!["api.example.test".into(), "203.0.113.7".into()];
    s.api_server_url = "https://192.0.2.10:6443".into();
    s
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    out
}

fn openssl(args: &[&str]) -> Output {
    run(Command::new("openssl").args(args))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn verify(ca: &Path, leaf: &Path, purpose: &str) -> Output {
    openssl(&["verify", "-purpose", purpose, "-CAfile", s(ca), s(leaf)])
}

fn purpose_of(leaf: Leaf) -> &'static str {
    match leaf {
        Leaf::ApiServer | Leaf::KonnectivityServer | Leaf::EtcdServer | Leaf::EtcdPeer => {
            "sslserver"
        }
        _ => "sslclient",
    }
}

fn parse_cert(path: &Path) -> Vec<u8> {
    let pem = fs::read(path).unwrap();
    let (_, p) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
    p.contents
}

/// (sha256, mtime, mode) of every file and directory under `dir`.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (String, SystemTime, u32)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = fs::metadata(&p).unwrap();
            let mode = m.permissions().mode() & 0o7777;
            if m.is_dir() {
                out.insert(p.clone(), (String::new(), m.modified().unwrap(), mode));
                stack.push(p);
            } else {
                let digest = ring::digest::digest(&ring::digest::SHA256, &fs::read(&p).unwrap());
                out.insert(
                    p,
                    (hex::encode(digest.as_ref()), m.modified().unwrap(), mode),
                );
            }
        }
    }
    out
}

fn all_key_files(paths: &PkiPaths) -> Vec<PathBuf> {
    let mut keys: Vec<PathBuf> = Ca::ALL.iter().map(|c| paths.ca(*c).key.clone()).collect();
    keys.extend(Leaf::ALL.iter().map(|l| paths.leaf(*l).key.clone()));
    keys.push(paths.sa_key.clone());
    keys.push(paths.admin_kubeconfig.clone());
    keys.push(paths.controller_manager_kubeconfig.clone());
    keys.push(paths.scheduler_kubeconfig.clone());
    keys
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Every leaf verifies against its own CA (with the right purpose), its key
/// matches, and openssl reads every PKCS#8 key.
fn check_chains(paths: &PkiPaths) {
    for leaf in Leaf::ALL {
        let files = paths.leaf(leaf);
        let ca = &paths.ca(leaf.ca()).cert;
        let out = verify(ca, &files.cert, purpose_of(leaf));
        assert!(
            out.status.success(),
            "{leaf} does not verify against {}: {}{}",
            ca.display(),
            stdout(&out),
            String::from_utf8_lossy(&out.stderr)
        );
        let from_key = openssl(&["pkey", "-in", s(&files.key), "-pubout"]);
        assert!(
            from_key.status.success(),
            "openssl cannot read {}",
            files.key.display()
        );
        let from_cert = openssl(&["x509", "-in", s(&files.cert), "-noout", "-pubkey"]);
        assert_eq!(
            stdout(&from_key),
            stdout(&from_cert),
            "{leaf}: key does not match"
        );
    }
}

#[test]
fn full_pki_chains_identities_usages_and_modes() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = spec(tmp.path());
    let report = pki::ensure(&spec).unwrap();
    let paths = PkiPaths::new(&spec.dir);
    for name in [
        "ca",
        "etcd-ca",
        "front-proxy-ca",
        "konnectivity-ca",
        "apiserver",
        "apiserver-kubelet-client",
        "apiserver-etcd-client",
        "etcd-server",
        "etcd-peer",
        "front-proxy-client",
        "konnectivity-server",
        "admin",
        "controller-manager",
        "scheduler",
        "sa",
    ] {
        assert!(
            report.created.iter().any(|c| c == name),
            "{name} not created: {report:?}"
        );
    }
    assert!(report.renewed.is_empty());

    check_chains(&paths);

    // Spot checks against the wrong CA: the CAs really are separate.
    assert!(
        !verify(&paths.etcd_ca.cert, &paths.apiserver.cert, "sslserver")
            .status
            .success()
    );
    assert!(!verify(
        &paths.ca.cert,
        &paths.apiserver_etcd_client.cert,
        "sslclient"
    )
    .status
    .success());
    assert!(
        !verify(&paths.ca.cert, &paths.front_proxy_client.cert, "sslclient")
            .status
            .success()
    );
    assert!(
        !verify(&paths.ca.cert, &paths.konnectivity_server.cert, "sslserver")
            .status
            .success()
    );
    // Usages: a client cert is not a server cert and vice versa.
    assert!(!verify(&paths.ca.cert, &paths.admin.cert, "sslserver")
        .status
        .success());
    assert!(!verify(&paths.ca.cert, &paths.apiserver.cert, "sslclient")
        .status
        .success());
    // etcd members need both.
    assert!(
        verify(&paths.etcd_ca.cert, &paths.etcd_peer.cert, "sslclient")
            .status
            .success()
    );

    // apiserver SANs.
    let der = parse_cert(&paths.apiserver.cert);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    for n in &san.value.general_names {
        match n {
            GeneralName::DNSName(d) => dns.push(d.to_string()),
            GeneralName::IPAddress(b) if b.len() == 4 => {
                ips.push(IpAddr::from([b[0], b[1], b[2], b[3]]).to_string())
            }
            other => panic!("unexpected SAN {other:?}"),
        }
    }
    for want in [
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
        "localhost",
        "node-1",
        "api.example.test",
    ] {
        assert!(
            dns.iter().any(|d| d == want),
            "apiserver SANs lack {want}: {dns:?}"
        );
    }
    for want in [
        "10.96.0.1",
        "127.0.0.1",
        "192.0.2.10",
        "198.51.100.20",
        "203.0.113.7",
    ] {
        assert!(
            ips.iter().any(|i| i == want),
            "apiserver SANs lack {want}: {ips:?}"
        );
    }
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && !eku.client_auth);
    assert!(!cert.is_ca());

    // openssl agrees on the SAN extension.
    let ext = openssl(&[
        "x509",
        "-in",
        s(&paths.apiserver.cert),
        "-noout",
        "-ext",
        "subjectAltName",
    ]);
    assert!(
        stdout(&ext).contains("IP Address:10.96.0.1"),
        "{}",
        stdout(&ext)
    );
    assert!(stdout(&ext).contains("DNS:kubernetes.default.svc.cluster.local"));

    // Identities.
    let subject = |p: &Path| {
        stdout(&openssl(&[
            "x509",
            "-in",
            s(p),
            "-noout",
            "-subject",
            "-nameopt",
            "RFC2253",
        ]))
    };
    assert_eq!(
        subject(&paths.admin.cert).trim(),
        "subject=CN=kubernetes-admin,O=system:masters"
    );
    assert_eq!(
        subject(&paths.apiserver_kubelet_client.cert).trim(),
        "subject=CN=kube-apiserver-kubelet-client,O=system:masters"
    );
    assert_eq!(
        subject(&paths.controller_manager.cert).trim(),
        "subject=CN=system:kube-controller-manager"
    );
    assert_eq!(
        subject(&paths.scheduler.cert).trim(),
        "subject=CN=system:kube-scheduler"
    );
    assert_eq!(
        subject(&paths.apiserver_etcd_client.cert).trim(),
        "subject=CN=kube-apiserver-etcd-client"
    );
    assert_eq!(
        subject(&paths.front_proxy_client.cert).trim(),
        "subject=CN=front-proxy-client"
    );
    // CAs are CAs.
    for ca in Ca::ALL {
        let text = stdout(&openssl(&[
            "x509",
            "-in",
            s(&paths.ca(ca).cert),
            "-noout",
            "-text",
        ]));
        assert!(text.contains("CA:TRUE"), "{ca} is not a CA");
        assert!(
            text.contains("Certificate Sign"),
            "{ca} cannot sign certificates"
        );
    }
    // etcd SANs include ::1 and the node addresses.
    let etcd = stdout(&openssl(&[
        "x509",
        "-in",
        s(&paths.etcd_server.cert),
        "-noout",
        "-ext",
        "subjectAltName",
    ]));
    for want in [
        "IP Address:0:0:0:0:0:0:0:1",
        "IP Address:127.0.0.1",
        "IP Address:192.0.2.10",
        "DNS:node-1",
        "DNS:localhost",
    ] {
        assert!(etcd.contains(want), "etcd SANs lack {want}: {etcd}");
    }

    // Service-account pair.
    let sa_pub = fs::read_to_string(&paths.sa_pub).unwrap();
    assert!(sa_pub.starts_with("-----BEGIN PUBLIC KEY-----"));
    let derived = stdout(&openssl(&["pkey", "-in", s(&paths.sa_key), "-pubout"]));
    assert_eq!(derived, sa_pub);

    // Modes.
    for key in all_key_files(&paths) {
        assert_eq!(mode(&key), 0o600, "{} is not 0600", key.display());
    }
    for dir in [&paths.dir, &paths.etcd_dir, &paths.konnectivity_dir] {
        assert_eq!(mode(dir), 0o700, "{} is not 0700", dir.display());
    }
    assert_eq!(mode(&paths.apiserver.cert), 0o644);
    assert_eq!(mode(&paths.sa_pub), 0o644);

    // Expiry listing covers every certificate.
    let list = pki::list_certificates(&spec.dir).unwrap();
    assert_eq!(list.len(), 14);
    let admin = list.iter().find(|c| c.name == "admin").unwrap();
    assert_eq!(admin.authority.as_deref(), Some("ca"));
    assert!(admin.subject.contains("system:masters"));
    assert!(list.iter().filter(|c| c.is_ca).count() == 4);
    let left = admin.remaining(SystemTime::now());
    assert!(left > DEFAULT_LEAF_LIFETIME - DAY && left <= DEFAULT_LEAF_LIFETIME);
    let due = pki::next_renewal_due(&spec.dir, spec.renew_before, &spec.leaves())
        .unwrap()
        .unwrap();
    let until_due = due.duration_since(SystemTime::now()).unwrap();
    assert!(until_due > DEFAULT_LEAF_LIFETIME - spec.renew_before - DAY);
}

#[test]
fn second_ensure_changes_no_byte_and_no_mtime() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = spec(tmp.path());
    pki::ensure(&spec).unwrap();
    let before = snapshot(&spec.dir);
    assert!(before.len() > 30, "too few files: {}", before.len());
    let report = pki::ensure(&spec).unwrap();
    assert!(report.is_unchanged(), "{report:?}");
    assert_eq!(before, snapshot(&spec.dir));
}

#[test]
fn expiring_leaves_are_renewed_with_new_keys_and_cas_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = spec(tmp.path());
    pki::ensure(&spec).unwrap();
    let paths = PkiPaths::new(&spec.dir);
    let before = snapshot(&spec.dir);

    // 340 days on, every 1-year leaf is within the 30-day renewal window.
    let later = SystemTime::now() + 340 * DAY;
    let report = pki::ensure_at(&spec, later).unwrap();
    let mut renewed = report.renewed.clone();
    renewed.sort();
    let mut all: Vec<String> = Leaf::ALL.iter().map(|l| l.name().to_string()).collect();
    all.sort();
    assert_eq!(renewed, all);
    assert!(report.created.is_empty(), "{report:?}");

    let after = snapshot(&spec.dir);
    for ca in Ca::ALL {
        for p in [&paths.ca(ca).cert, &paths.ca(ca).key] {
            assert_eq!(before[p], after[p], "{} changed", p.display());
        }
    }
    for p in [&paths.sa_key, &paths.sa_pub] {
        assert_eq!(before[p], after[p], "{} changed", p.display());
    }
    for leaf in Leaf::ALL {
        let f = paths.leaf(leaf);
        assert_ne!(
            before[&f.cert].0, after[&f.cert].0,
            "{leaf} cert not renewed"
        );
        assert_ne!(before[&f.key].0, after[&f.key].0, "{leaf} key not rotated");
    }
    assert_ne!(
        before[&paths.admin_kubeconfig].0,
        after[&paths.admin_kubeconfig].0
    );
    // The renewed certificate really lives a year from the simulated time.
    let info = pki::list_certificates(&spec.dir).unwrap();
    let apiserver = info.iter().find(|c| c.name == "apiserver").unwrap();
    assert!(apiserver.not_after > later + DEFAULT_LEAF_LIFETIME - DAY);

    // And at that time nothing more is due.
    assert!(pki::ensure_at(&spec, later).unwrap().is_unchanged());
}

#[test]
fn changed_node_address_reissues_serving_certs_only() {
    let tmp = tempfile::tempdir().unwrap();
    let mut spec = spec(tmp.path());
    pki::ensure(&spec).unwrap();
    let paths = PkiPaths::new(&spec.dir);
    let before = snapshot(&spec.dir);

    spec.node_addresses[1] = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 99));
    let report = pki::ensure(&spec).unwrap();
    let mut renewed = report.renewed.clone();
    renewed.sort();
    assert_eq!(
        renewed,
        vec![
            "apiserver",
            "etcd-peer",
            "etcd-server",
            "konnectivity-server"
        ]
    );
    let after = snapshot(&spec.dir);
    assert_eq!(before[&paths.ca.cert], after[&paths.ca.cert]);
    assert_eq!(before[&paths.admin.cert], after[&paths.admin.cert]);
    assert_eq!(
        before[&paths.admin_kubeconfig],
        after[&paths.admin_kubeconfig]
    );
    let ext = stdout(&openssl(&[
        "x509",
        "-in",
        s(&paths.apiserver.cert),
        "-noout",
        "-ext",
        "subjectAltName",
    ]));
    assert!(ext.contains("IP Address:198.51.100.99"), "{ext}");
    assert!(!ext.contains("IP Address:198.51.100.20"), "{ext}");
    check_chains(&paths);

    // An extra SAN added by config reissues the apiserver cert too.
    spec.extra_sans.push("lb.example.test".into());
    let report = pki::ensure(&spec).unwrap();
    assert!(
        report.renewed.contains(&"apiserver".to_string()),
        "{report:?}"
    );
    assert!(
        !report.renewed.contains(&"etcd-server".to_string()),
        "{report:?}"
    );
}

#[test]
fn broken_leaf_is_reissued() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = spec(tmp.path());
    pki::ensure(&spec).unwrap();
    let paths = PkiPaths::new(&spec.dir);
    // Garbage cert, missing key, a key of another leaf, and a leaf signed by
    // the wrong CA: all reissued.
    fs::write(&paths.scheduler.cert, "garbage").unwrap();
    fs::remove_file(&paths.front_proxy_client.key).unwrap();
    fs::copy(&paths.admin.key, &paths.controller_manager.key).unwrap();
    fs::copy(
        &paths.apiserver_etcd_client.cert,
        &paths.apiserver_kubelet_client.cert,
    )
    .unwrap();
    fs::copy(
        &paths.apiserver_etcd_client.key,
        &paths.apiserver_kubelet_client.key,
    )
    .unwrap();
    let report = pki::ensure(&spec).unwrap();
    let mut renewed = report.renewed.clone();
    renewed.sort();
    assert_eq!(
        renewed,
        vec![
            "apiserver-kubelet-client",
            "controller-manager",
            "front-proxy-client",
            "scheduler"
        ]
    );
    assert!(report.created.is_empty(), "{report:?}");
    check_chains(&paths);
    assert!(pki::ensure(&spec).unwrap().is_unchanged());
}

#[test]
fn missing_or_bad_ca_is_an_error_and_nothing_is_overwritten() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = spec(tmp.path());
    pki::ensure(&spec).unwrap();
    let paths = PkiPaths::new(&spec.dir);
    // Make a leaf due so a careless implementation would write something.
    fs::remove_file(&paths.apiserver.cert).unwrap();

    fs::remove_file(&paths.ca.key).unwrap();
    let before = snapshot(&spec.dir);
    let err = pki::ensure(&spec).unwrap_err();
    assert!(matches!(err, PkiError::CaKeyMissing { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(s(&paths.ca.key)), "{msg}");
    assert!(msg.contains(s(&paths.ca.cert)), "{msg}");
    assert_eq!(before, snapshot(&spec.dir));

    // A CA key that belongs to another CA.
    fs::copy(&paths.front_proxy_ca.key, &paths.ca.key).unwrap();
    fs::set_permissions(&paths.ca.key, fs::Permissions::from_mode(0o600)).unwrap();
    let before = snapshot(&spec.dir);
    let err = pki::ensure(&spec).unwrap_err();
    assert!(matches!(err, PkiError::CaKeyMismatch { .. }), "{err:?}");
    assert!(err.to_string().contains(s(&paths.ca.key)));
    assert_eq!(before, snapshot(&spec.dir));

    // A CA key without its certificate.
    let tmp2 = tempfile::tempdir().unwrap();
    let spec2 = self::spec(tmp2.path());
    pki::ensure(&spec2).unwrap();
    let paths2 = PkiPaths::new(&spec2.dir);
    fs::remove_file(&paths2.etcd_ca.cert).unwrap();
    let before = snapshot(&spec2.dir);
    let err = pki::ensure(&spec2).unwrap_err();
    assert!(matches!(err, PkiError::CaCertMissing { .. }), "{err:?}");
    assert!(err.to_string().contains(s(&paths2.etcd_ca.cert)));
    assert_eq!(before, snapshot(&spec2.dir));
}

#[test]
fn expired_ca_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = spec(tmp.path());
    pki::ensure(&spec).unwrap();
    let before = snapshot(&spec.dir);
    let err = pki::ensure_at(&spec, SystemTime::now() + 11 * 365 * DAY).unwrap_err();
    assert!(matches!(err, PkiError::CaExpired { .. }), "{err:?}");
    assert!(err.to_string().contains("ca.crt"), "{err}");
    assert_eq!(before, snapshot(&spec.dir));
    // Within renew_before of CA expiry: kept (warning only), leaves renewed.
    let near = SystemTime::now() + (10 * 365 - 10) * DAY;
    let report = pki::ensure_at(&spec, near).unwrap();
    assert!(report.created.is_empty(), "{report:?}");
    let after = snapshot(&spec.dir);
    let paths = PkiPaths::new(&spec.dir);
    assert_eq!(before[&paths.ca.cert], after[&paths.ca.cert]);
}

fn kubectl_view(conf: &Path, raw: bool) -> Output {
    let mut cmd = Command::new("kubectl");
    cmd.args(["--kubeconfig", s(conf), "config", "view"]);
    if raw {
        cmd.arg("--raw");
    }
    cmd.env_remove("KUBECONFIG");
    run(&mut cmd)
}

#[test]
fn kubeconfigs_are_accepted_by_kubectl() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = spec(tmp.path());
    pki::ensure(&spec).unwrap();
    let paths = PkiPaths::new(&spec.dir);
    let b64 = |p: &Path| base64::engine::general_purpose::STANDARD.encode(fs::read(p).unwrap());
    for (conf, leaf, user) in [
        (&paths.admin_kubeconfig, Leaf::Admin, "kubernetes-admin"),
        (
            &paths.controller_manager_kubeconfig,
            Leaf::ControllerManager,
            "system:kube-controller-manager",
        ),
        (
            &paths.scheduler_kubeconfig,
            Leaf::Scheduler,
            "system:kube-scheduler",
        ),
    ] {
        let out = kubectl_view(conf, false);
        assert!(
            out.status.success(),
            "kubectl rejects {}: {}",
            conf.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let view = stdout(&out);
        assert!(
            view.contains("DATA+OMITTED") || view.contains("REDACTED"),
            "{view}"
        );
        let raw = stdout(&kubectl_view(conf, true));
        assert!(raw.contains(&b64(&paths.leaf(leaf).cert)), "{raw}");
        assert!(raw.contains(&b64(&paths.leaf(leaf).key)));
        assert!(raw.contains(&b64(&paths.ca.cert)));
        assert!(raw.contains("server: https://192.0.2.10:6443"), "{raw}");
        assert!(
            raw.contains(&format!("current-context: {user}@mke")),
            "{raw}"
        );
        // The embedded data round-trips through kubectl's own decoder.
        let jsonpath = run(Command::new("kubectl").args([
            "--kubeconfig",
            s(conf),
            "config",
            "view",
            "--raw",
            "-o",
            "jsonpath={.users[0].user.client-certificate-data}",
        ]));
        assert_eq!(stdout(&jsonpath), b64(&paths.leaf(leaf).cert));
        assert_eq!(mode(conf), 0o600);
    }
}

#[test]
fn rsa_2048_pki_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let mut spec = spec(tmp.path());
    spec.key_type = KeyType::Rsa2048;
    let report = pki::ensure(&spec).unwrap();
    assert_eq!(report.created.len(), 15);
    let paths = PkiPaths::new(&spec.dir);
    check_chains(&paths);
    for cert in [&paths.ca.cert, &paths.apiserver.cert, &paths.etcd_peer.cert] {
        let text = stdout(&openssl(&["x509", "-in", s(cert), "-noout", "-text"]));
        assert!(text.contains("Public-Key: (2048 bit)"), "{text}");
        assert!(text.contains("sha256WithRSAEncryption"), "{text}");
    }
    let check = openssl(&["pkey", "-in", s(&paths.apiserver.key), "-check", "-noout"]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(kubectl_view(&paths.admin_kubeconfig, false)
        .status
        .success());
    // Idempotent for RSA too, and a key-type switch reissues the leaves but
    // keeps the (RSA) CAs.
    let before = snapshot(&spec.dir);
    assert!(pki::ensure(&spec).unwrap().is_unchanged());
    assert_eq!(before, snapshot(&spec.dir));
    spec.key_type = KeyType::EcdsaP256;
    let report = pki::ensure(&spec).unwrap();
    assert_eq!(report.renewed.len(), Leaf::ALL.len(), "{report:?}");
    assert_eq!(before[&paths.ca.cert], snapshot(&spec.dir)[&paths.ca.cert]);
    check_chains(&paths);
}

#[test]
fn client_certs_and_csr_signing() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = spec(tmp.path());
    pki::ensure(&spec).unwrap();
    let paths = PkiPaths::new(&spec.dir);

    // A client cert in two groups.
    let issued = pki::issue_client_cert(
        &spec.dir,
        Ca::Cluster,
        "jane",
        &["team-a".to_string(), "system:masters".to_string()],
        30 * DAY,
        KeyType::EcdsaP256,
    )
    .unwrap();
    assert!(!format!("{issued:?}").contains("PRIVATE KEY"));
    let cert = tmp.path().join("jane.crt");
    let key = tmp.path().join("jane.key");
    fs::write(&cert, &issued.cert_pem).unwrap();
    fs::write(&key, &issued.key_pem).unwrap();
    assert!(verify(&paths.ca.cert, &cert, "sslclient").status.success());
    assert!(!verify(&paths.ca.cert, &cert, "sslserver").status.success());
    let subj = stdout(&openssl(&[
        "x509",
        "-in",
        s(&cert),
        "-noout",
        "-subject",
        "-nameopt",
        "RFC2253",
    ]));
    assert_eq!(subj.trim(), "subject=CN=jane,O=system:masters,O=team-a");
    let from_key = stdout(&openssl(&["pkey", "-in", s(&key), "-pubout"]));
    let from_cert = stdout(&openssl(&["x509", "-in", s(&cert), "-noout", "-pubkey"]));
    assert_eq!(from_key, from_cert);
    // Usable in a kubeconfig that kubectl accepts.
    let ca_pem = fs::read_to_string(&paths.ca.cert).unwrap();
    let conf = pki::render_kubeconfig(
        "mke",
        "https://127.0.0.1:6443",
        &ca_pem,
        "jane",
        pki::KubeconfigUser::ClientCert {
            cert_pem: &issued.cert_pem,
            key_pem: &issued.key_pem,
        },
    )
    .unwrap();
    let conf_path = tmp.path().join("jane.conf");
    fs::write(&conf_path, conf).unwrap();
    assert!(kubectl_view(&conf_path, false).status.success());
    let token_conf = pki::render_kubeconfig(
        "mke",
        "https://127.0.0.1:6443",
        &ca_pem,
        "kubelet-bootstrap",
        pki::KubeconfigUser::Token("abcdef.0123456789abcdef"),
    )
    .unwrap();
    fs::write(&conf_path, token_conf).unwrap();
    let raw = stdout(&kubectl_view(&conf_path, true));
    assert!(raw.contains("token: abcdef.0123456789abcdef"), "{raw}");

    // A CSR made by openssl (the requester keeps its key), asking to be a CA.
    let csr_key = tmp.path().join("agent.key");
    let csr = tmp.path().join("agent.csr");
    let out = openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        s(&csr_key),
        "-out",
        s(&csr),
        "-subj",
        "/O=agents/CN=konnectivity-agent",
        "-addext",
        "subjectAltName=DNS:worker-1,IP:192.0.2.50",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csr_pem = fs::read_to_string(&csr).unwrap();
    let info = pki::inspect_csr(&csr_pem).unwrap();
    assert_eq!(info.common_name.as_deref(), Some("konnectivity-agent"));
    assert_eq!(info.organizations, vec!["agents"]);
    assert_eq!(info.sans, vec!["DNS:worker-1", "IP:192.0.2.50"]);
    let signed = pki::sign_csr(
        &spec.dir,
        Ca::Konnectivity,
        &csr_pem,
        30 * DAY,
        CertUsage::Client,
    )
    .unwrap();
    let signed_path = tmp.path().join("agent.crt");
    fs::write(&signed_path, &signed).unwrap();
    assert!(
        verify(&paths.konnectivity_ca.cert, &signed_path, "sslclient")
            .status
            .success()
    );
    assert!(!verify(&paths.ca.cert, &signed_path, "sslclient")
        .status
        .success());
    let text = stdout(&openssl(&[
        "x509",
        "-in",
        s(&signed_path),
        "-noout",
        "-text",
    ]));
    assert!(!text.contains("CA:TRUE"), "CSR made itself a CA: {text}");
    assert!(text.contains("DNS:worker-1"));
    let from_cert = stdout(&openssl(&[
        "x509",
        "-in",
        s(&signed_path),
        "-noout",
        "-pubkey",
    ]));
    let from_key = stdout(&openssl(&["pkey", "-in", s(&csr_key), "-pubout"]));
    assert_eq!(from_cert, from_key);

    // A tampered CSR is refused.
    let tampered = csr_pem.replacen("MII", "MIJ", 1);
    assert!(pki::sign_csr(&spec.dir, Ca::Cluster, &tampered, DAY, CertUsage::Client).is_err());
    // Issuing from a CA that does not exist is a clear error.
    let empty = tempfile::tempdir().unwrap();
    let err = pki::issue_client_cert(empty.path(), Ca::Cluster, "x", &[], DAY, KeyType::EcdsaP256)
        .unwrap_err();
    assert!(matches!(err, PkiError::CaMissing { .. }), "{err:?}");
}

#[test]
fn spki_pin_matches_openssl() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = spec(tmp.path());
    pki::ensure(&spec).unwrap();
    let paths = PkiPaths::new(&spec.dir);
    let pin = pki::spki_sha256(&fs::read(&paths.ca.cert).unwrap()).unwrap();
    let spki_der = tmp.path().join("spki.der");
    let pubkey = openssl(&["x509", "-in", s(&paths.ca.cert), "-noout", "-pubkey"]);
    let pem_path = tmp.path().join("pub.pem");
    fs::write(&pem_path, &pubkey.stdout).unwrap();
    assert!(openssl(&[
        "pkey",
        "-pubin",
        "-in",
        s(&pem_path),
        "-outform",
        "DER",
        "-out",
        s(&spki_der)
    ])
    .status
    .success());
    let digest = ring::digest::digest(&ring::digest::SHA256, &fs::read(&spki_der).unwrap());
    assert_eq!(pin, format!("sha256:{}", hex::encode(digest.as_ref())));
    assert!(pki::spki_sha256(b"not a cert").is_err());
}

#[test]
fn invalid_spec_is_rejected_before_writing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut spec = spec(tmp.path());
    spec.extra_sans.push("bad name!".into());
    let err = pki::ensure(&spec).unwrap_err();
    assert!(matches!(err, PkiError::InvalidSan { .. }), "{err:?}");
    assert!(!spec.dir.exists());
    let mut spec = self::spec(tmp.path());
    spec.renew_before = spec.leaf_lifetime;
    assert!(matches!(
        pki::ensure(&spec).unwrap_err(),
        PkiError::InvalidSpec {
            field: "renew_before",
            ..
        }
    ));
    let mut spec = self::spec(tmp.path());
    spec.api_server_url = "http://x".into();
    assert!(matches!(
        pki::ensure(&spec).unwrap_err(),
        PkiError::InvalidSpec {
            field: "api_server_url",
            ..
        }
    ));
}

/// Kills etcd when the test ends, also on panic.
struct EtcdGuard {
    child: Child,
    log: PathBuf,
}

impl Drop for EtcdGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl EtcdGuard {
    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn etcdctl(endpoint: &str, ca: &Path, cert: &Path, key: &Path, args: &[&str]) -> Output {
    run(Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            endpoint,
            "--cacert",
            s(ca),
            "--cert",
            s(cert),
            "--key",
            s(key),
            "--dial-timeout=2s",
            "--command-timeout=3s",
        ])
        .args(args))
}

#[test]
fn etcd_accepts_the_generated_certificates() {
    let tmp = tempfile::tempdir().unwrap();
    let mut spec = spec(tmp.path());
    spec.node_addresses = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
    pki::ensure(&spec).unwrap();
    etcd_roundtrip(&PkiPaths::new(&spec.dir), tmp.path());
}

/// Starts the real etcd 3.4 with the etcd server/peer certificates and
/// client-cert auth, then writes and reads a key with the
/// apiserver-etcd-client certificate through etcdctl.
fn etcd_roundtrip(paths: &PkiPaths, tmp: &Path) {
    let data = tmp.join("etcd-data");
    fs::create_dir(&data).unwrap();
    fs::set_permissions(&data, fs::Permissions::from_mode(0o700)).unwrap();
    let [client_port, peer_port, metrics_port] = free_ports();
    let client_url = format!("https://127.0.0.1:{client_port}");
    let peer_url = format!("https://127.0.0.1:{peer_port}");
    let log = tmp.join("etcd.log");
    let log_file = fs::File::create(&log).unwrap();
    let child = Command::new("/usr/bin/etcd")
        .args([
            "--name",
            "node-1",
            "--data-dir",
            s(&data),
            "--listen-client-urls",
            &client_url,
            "--advertise-client-urls",
            &client_url,
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
            "--initial-cluster",
            &format!("node-1={peer_url}"),
            "--listen-metrics-urls",
            &format!("http://127.0.0.1:{metrics_port}"),
            "--cert-file",
            s(&paths.etcd_server.cert),
            "--key-file",
            s(&paths.etcd_server.key),
            "--client-cert-auth",
            "--trusted-ca-file",
            s(&paths.etcd_ca.cert),
            "--peer-cert-file",
            s(&paths.etcd_peer.cert),
            "--peer-key-file",
            s(&paths.etcd_peer.key),
            "--peer-client-cert-auth",
            "--peer-trusted-ca-file",
            s(&paths.etcd_ca.cert),
        ])
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .spawn()
        .expect("start /usr/bin/etcd");
    let mut guard = EtcdGuard { child, log };

    let client = &paths.apiserver_etcd_client;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = etcdctl(
            &client_url,
            &paths.etcd_ca.cert,
            &client.cert,
            &client.key,
            &["endpoint", "health"],
        );
        if out.status.success() {
            break;
        }
        if let Some(status) = guard.child.try_wait().unwrap() {
            panic!("etcd exited with {status}: {}", guard.log());
        }
        assert!(
            Instant::now() < deadline,
            "etcd not healthy within 30s: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            guard.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let put = etcdctl(
        &client_url,
        &paths.etcd_ca.cert,
        &client.cert,
        &client.key,
        &["put", "/mke/test", "hello"],
    );
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    let get = etcdctl(
        &client_url,
        &paths.etcd_ca.cert,
        &client.cert,
        &client.key,
        &["get", "/mke/test", "--print-value-only"],
    );
    assert!(
        get.status.success(),
        "{}",
        String::from_utf8_lossy(&get.stderr)
    );
    assert_eq!(stdout(&get).trim(), "hello");

    // A client certificate from the cluster CA is refused by etcd.
    let wrong = etcdctl(
        &client_url,
        &paths.etcd_ca.cert,
        &paths.admin.cert,
        &paths.admin.key,
        &["get", "/mke/test"],
    );
    assert!(
        !wrong.status.success(),
        "etcd accepted a cluster-CA client cert"
    );
}
