//! Contract tests for the kube control-plane components mkectl runs:
//! kube-apiserver, kube-controller-manager and kube-scheduler.
//!
//! The argv each component gets is read from the args file `mkectl controller
//! --init-only` writes (`<data-dir>/config/<component>.args`, the exact argv
//! `start` execs), then checked against the real tools that exist here:
//! openssl for certificate chains and key pairs, kubectl for kubeconfigs, the
//! real etcd for the apiserver's etcd client identity, and the upstream v1.32
//! flag lists under `tests/data/` (sources in their headers).
//!
//! One test runs the real kube-apiserver (`MKECTL_UPSTREAM_BIN_DIR`, built
//! by `packaging/build-upstream.sh`) under the real supervisor; the whole
//! control plane runs in `tests/control_plane_real.rs`.
//!
//! Hook for the worker (kubelet): add `tests/data/kubelet-v1.32.flags` with its
//! source, have the kubelet component write `kubelet.args` in `init`, and call
//! [`check_flag_names`] and [`check_paths_exist`] on it like the tests below.
//!
//! The egress selector file named by the apiserver's flags is also checked
//! end to end: with the controller's embedded konnectivity server running and
//! an agent connected, a gRPC dial through its `udsName` reaches a target, as
//! kube-apiserver's would.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use base64::Engine;
use common::*;
use mkectl::components::kube_apiserver::EgressSelectorConfiguration;
use mkectl::components::kube_common::{parse_args_file, Flags};
use mkectl::etcd::{connect, EtcdClientTls};
use mkectl::https_probe::{ClientIdentity, HttpsProbe, ServerTrust};
use mkectl::konnectivity::client::dial_grpc_uds;
use mkectl::konnectivity::TlsFiles;
use mkectl::pki::{self, Ca, KeyType};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

const READY: Duration = Duration::from_secs(60);

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn ok_stdout(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A node whose `--init-only` ran; the scheduler gets a non-default port
/// through extraArgs so the override path is covered too.
fn init_node(name: &str) -> Node {
    let extra = format!(
        "  extraArgs:\n    kube-apiserver:\n      v: \"2\"\n    kube-scheduler:\n      secure-port: \"{}\"\n",
        free_port()
    );
    let node = Node::with_spec(name, &extra);
    let out = run(&mut node.cmd(&["controller", "--init-only", "--node-name", name]));
    ok_stdout(out, "mkectl controller --init-only");
    node
}

/// The argv `start` would exec for `component`, from its args file.
fn args_of(node: &Node, component: &str) -> (Vec<String>, Flags) {
    let file = node.data.join("config").join(format!("{component}.args"));
    let text = fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let args = parse_args_file(&text);
    let flags = Flags::parse_args(&args).unwrap_or_else(|a| panic!("not --flag=value: {a}"));
    assert_eq!(
        args.len(),
        flags.names().count(),
        "a flag repeats: {args:?}"
    );
    (args, flags)
}

/// Every flag name is one the pinned upstream release accepts.
fn check_flag_names(component: &str, flags: &Flags) {
    let list = format!(
        "{}/tests/data/{component}-v1.32.flags",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = fs::read_to_string(&list).unwrap();
    assert!(text.starts_with('#'), "{list} must name its source");
    let known: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for name in flags.names() {
        assert!(
            known.contains(&name),
            "{component}: --{name} is not a v1.32 flag (list: {list})"
        );
    }
}

/// Every value that is an absolute path names something that exists.
fn check_paths_exist(component: &str, flags: &Flags) -> usize {
    let mut n = 0;
    for (name, value) in flags.iter() {
        if value.starts_with('/') {
            assert!(
                Path::new(value).exists(),
                "{component}: --{name}={value} does not exist"
            );
            n += 1;
        }
    }
    n
}

fn path_of(flags: &Flags, name: &str) -> PathBuf {
    PathBuf::from(
        flags
            .get(name)
            .unwrap_or_else(|| panic!("--{name} is not set")),
    )
}

/// `openssl verify -purpose <purpose> -CAfile ca leaf`.
fn verify_chain(ca: &Path, leaf: &Path, purpose: &str) -> bool {
    run(Command::new("openssl").args(["verify", "-purpose", purpose, "-CAfile", s(ca), s(leaf)]))
        .status
        .success()
}

fn pubkey_of_cert(cert: &Path) -> String {
    ok_stdout(
        run(Command::new("openssl").args(["x509", "-noout", "-pubkey", "-in", s(cert)])),
        "openssl x509 -pubkey",
    )
}

fn pubkey_of_key(key: &Path) -> String {
    ok_stdout(
        run(Command::new("openssl").args(["pkey", "-pubout", "-in", s(key)])),
        "openssl pkey -pubout",
    )
}

fn der_of(pem_path: &Path) -> Vec<u8> {
    let pem = fs::read(pem_path).unwrap();
    let (_, p) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
    p.contents
}

struct Identity {
    cn: String,
    orgs: Vec<String>,
    dns: Vec<String>,
    ips: Vec<String>,
}

fn identity(der: &[u8]) -> Identity {
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .map(|a| a.as_str().unwrap().to_string())
        .unwrap_or_default();
    let orgs = cert
        .subject()
        .iter_organization()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    let (mut dns, mut ips) = (Vec::new(), Vec::new());
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => dns.push(d.to_string()),
                GeneralName::IPAddress(b) if b.len() == 4 => {
                    ips.push(std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string())
                }
                _ => {}
            }
        }
    }
    Identity { cn, orgs, dns, ips }
}

fn kubectl_jsonpath(conf: &Path, path: &str) -> String {
    ok_stdout(
        run(Command::new("kubectl")
            .env_remove("KUBECONFIG")
            .args(["--kubeconfig", s(conf), "config", "view", "--raw", "-o"])
            .arg(format!("jsonpath={path}"))),
        "kubectl config view --raw",
    )
}

/// The kubeconfig passes `kubectl config view`, trusts the cluster CA, points
/// at the apiserver and authenticates as `user`.
fn check_kubeconfig(conf: &Path, ca: &Path, server: &str, user: &str) {
    ok_stdout(
        run(Command::new("kubectl").env_remove("KUBECONFIG").args([
            "--kubeconfig",
            s(conf),
            "config",
            "view",
        ])),
        &format!("kubectl config view {}", conf.display()),
    );
    let b64 = base64::engine::general_purpose::STANDARD;
    assert_eq!(
        kubectl_jsonpath(conf, "{.clusters[0].cluster.server}"),
        server
    );
    let ca_pem = b64
        .decode(kubectl_jsonpath(
            conf,
            "{.clusters[0].cluster.certificate-authority-data}",
        ))
        .unwrap();
    assert_eq!(
        ca_pem,
        fs::read(ca).unwrap(),
        "{} trusts another CA",
        conf.display()
    );
    let cert_pem = b64
        .decode(kubectl_jsonpath(
            conf,
            "{.users[0].user.client-certificate-data}",
        ))
        .unwrap();
    let tmp = tempfile::NamedTempFile::new().unwrap();
    fs::write(tmp.path(), &cert_pem).unwrap();
    assert!(
        verify_chain(ca, tmp.path(), "sslclient"),
        "{}: client cert not from the cluster CA",
        conf.display()
    );
    assert_eq!(identity(&der_of(tmp.path())).cn, user);
}

#[test]
fn generated_flags_and_files_meet_the_contract() {
    let node = init_node("kc-a");
    let (_, api) = args_of(&node, "kube-apiserver");
    let (_, kcm) = args_of(&node, "kube-controller-manager");
    let (_, sched) = args_of(&node, "kube-scheduler");
    for (c, f) in [
        ("kube-apiserver", &api),
        ("kube-controller-manager", &kcm),
        ("kube-scheduler", &sched),
    ] {
        check_flag_names(c, f);
        assert!(check_paths_exist(c, f) >= 3, "{c}: too few path flags");
        assert_eq!(f.get("profiling"), Some("false"), "{c}");
        assert_eq!(f.get("tls-min-version"), Some("VersionTLS12"), "{c}");
        let suites = f.get("tls-cipher-suites").unwrap();
        assert!(
            suites
                .split(',')
                .all(|s| s.starts_with("TLS_ECDHE_")
                    && (s.contains("GCM") || s.contains("CHACHA20"))),
            "{c}: {suites}"
        );
    }

    // --- kube-apiserver ---------------------------------------------------
    let get = |k: &str| api.get(k).unwrap_or_else(|| panic!("--{k} missing"));
    assert_eq!(get("anonymous-auth"), "false");
    assert_eq!(get("authorization-mode"), "Node,RBAC");
    assert_eq!(get("enable-admission-plugins"), "NodeRestriction");
    assert_eq!(get("enable-bootstrap-token-auth"), "true");
    assert_eq!(get("v"), "2", "extraArgs reach the argv");
    assert_eq!(get("bind-address"), "127.0.0.1");
    assert_eq!(
        get("etcd-servers"),
        format!("https://127.0.0.1:{}", node.etcd_client_port)
    );
    let client_ca = path_of(&api, "client-ca-file");
    assert_eq!(client_ca, node.pki("ca.crt"));
    let serving = path_of(&api, "tls-cert-file");
    assert!(verify_chain(&client_ca, &serving, "sslserver"));
    assert_eq!(
        pubkey_of_cert(&serving),
        pubkey_of_key(&path_of(&api, "tls-private-key-file"))
    );
    let id = identity(&der_of(&serving));
    for ip in ["127.0.0.1", "10.96.0.1", get("advertise-address")] {
        assert!(
            id.ips.iter().any(|i| i == ip),
            "serving SANs lack {ip}: {:?}",
            id.ips
        );
    }
    for dns in ["kubernetes", "kubernetes.default.svc.cluster.local", "kc-a"] {
        assert!(
            id.dns.iter().any(|d| d == dns),
            "serving SANs lack {dns}: {:?}",
            id.dns
        );
    }
    // Kubelets are verified against the cluster CA and see the apiserver's
    // kubelet-client identity, which that CA issued for client auth.
    assert_eq!(path_of(&api, "kubelet-certificate-authority"), client_ca);
    let kubelet_client = path_of(&api, "kubelet-client-certificate");
    assert!(verify_chain(&client_ca, &kubelet_client, "sslclient"));
    assert_eq!(
        identity(&der_of(&kubelet_client)).cn,
        "kube-apiserver-kubelet-client"
    );
    assert_eq!(
        pubkey_of_cert(&kubelet_client),
        pubkey_of_key(&path_of(&api, "kubelet-client-key"))
    );
    // etcd: its own CA, not the cluster one.
    let etcd_ca = path_of(&api, "etcd-cafile");
    let etcd_client = path_of(&api, "etcd-certfile");
    assert!(verify_chain(&etcd_ca, &etcd_client, "sslclient"));
    assert!(!verify_chain(&client_ca, &etcd_client, "sslclient"));
    assert_eq!(
        identity(&der_of(&etcd_client)).cn,
        "kube-apiserver-etcd-client"
    );
    // Front proxy: the client cert chains to the requestheader CA and its CN
    // is the one allowed name; the cluster CA did not issue it.
    let fp_ca = path_of(&api, "requestheader-client-ca-file");
    let fp_client = path_of(&api, "proxy-client-cert-file");
    assert!(verify_chain(&fp_ca, &fp_client, "sslclient"));
    assert!(!verify_chain(&client_ca, &fp_client, "sslclient"));
    assert_eq!(
        identity(&der_of(&fp_client)).cn,
        get("requestheader-allowed-names")
    );
    assert_eq!(
        pubkey_of_cert(&fp_client),
        pubkey_of_key(&path_of(&api, "proxy-client-key-file"))
    );
    // Service accounts: the verification key is the signing key's public half.
    let sa_key = path_of(&api, "service-account-signing-key-file");
    assert_eq!(
        fs::read_to_string(path_of(&api, "service-account-key-file")).unwrap(),
        pubkey_of_key(&sa_key)
    );
    assert_eq!(
        get("service-account-issuer"),
        "https://kubernetes.default.svc.cluster.local"
    );
    // The egress selector parses into the documented schema (unknown fields
    // refused) and sends `cluster` traffic over gRPC to the konnectivity UDS.
    let egress_text = fs::read_to_string(path_of(&api, "egress-selector-config-file")).unwrap();
    let egress: EgressSelectorConfiguration = serde_saphyr::from_str(&egress_text).unwrap();
    assert_eq!(egress.api_version, "apiserver.k8s.io/v1beta1");
    assert_eq!(egress.kind, "EgressSelectorConfiguration");
    assert_eq!(egress.egress_selections.len(), 1);
    let sel = &egress.egress_selections[0];
    assert_eq!(sel.name, "cluster");
    assert_eq!(sel.connection.proxy_protocol, "GRPC");
    let uds = PathBuf::from(&sel.connection.transport.uds.uds_name);
    assert_eq!(uds, node.run.join("konnectivity-server.sock"));
    assert!(uds.parent().unwrap().is_dir());

    // --- kube-controller-manager -------------------------------------------
    let kget = |k: &str| kcm.get(k).unwrap_or_else(|| panic!("--{k} missing"));
    assert_eq!(kget("bind-address"), "127.0.0.1");
    assert_eq!(kget("controllers"), "*,bootstrapsigner,tokencleaner");
    assert_eq!(kget("use-service-account-credentials"), "true");
    assert_eq!(kget("leader-elect"), "false", "one controller: no election");
    assert_eq!(kget("cluster-cidr"), "10.244.0.0/16");
    assert_eq!(
        kget("service-cluster-ip-range"),
        get("service-cluster-ip-range")
    );
    let signing = path_of(&kcm, "cluster-signing-cert-file");
    assert_eq!(fs::read(&signing).unwrap(), fs::read(&client_ca).unwrap());
    assert_eq!(
        pubkey_of_cert(&signing),
        pubkey_of_key(&path_of(&kcm, "cluster-signing-key-file"))
    );
    assert_eq!(path_of(&kcm, "root-ca-file"), client_ca);
    assert_eq!(path_of(&kcm, "service-account-private-key-file"), sa_key);
    assert!(path_of(&kcm, "cert-dir").is_dir());
    let server = format!("https://127.0.0.1:{}", get("secure-port"));
    for f in [
        "kubeconfig",
        "authentication-kubeconfig",
        "authorization-kubeconfig",
    ] {
        check_kubeconfig(
            &path_of(&kcm, f),
            &client_ca,
            &server,
            "system:kube-controller-manager",
        );
    }

    // --- kube-scheduler ----------------------------------------------------
    assert_eq!(sched.get("bind-address"), Some("127.0.0.1"));
    assert_eq!(sched.get("leader-elect"), Some("false"));
    assert_ne!(
        sched.get("secure-port"),
        Some("10259"),
        "extraArgs override"
    );
    assert!(path_of(&sched, "cert-dir").is_dir());
    for f in [
        "kubeconfig",
        "authentication-kubeconfig",
        "authorization-kubeconfig",
    ] {
        check_kubeconfig(
            &path_of(&sched, f),
            &client_ca,
            &server,
            "system:kube-scheduler",
        );
    }
    // The admin identity the apiserver readiness probe uses is a cluster admin.
    let admin = identity(&der_of(&node.pki("admin.crt")));
    assert_eq!(admin.orgs, vec!["system:masters".to_string()]);
    assert!(verify_chain(
        &client_ca,
        &node.pki("admin.crt"),
        "sslclient"
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn apiserver_etcd_identity_and_egress_work_against_the_running_controller() {
    let node = init_node("kc-b");
    let (_, api) = args_of(&node, "kube-apiserver");
    let _ctl = node.start_controller(NO_KUBE_BINARIES);
    let tls = EtcdClientTls {
        ca: path_of(&api, "etcd-cafile"),
        cert: path_of(&api, "etcd-certfile"),
        key: path_of(&api, "etcd-keyfile"),
    };
    let endpoint = api
        .get("etcd-servers")
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .to_string();
    let key = "/registry/mkectl-contract/probe";
    let end = std::time::Instant::now() + READY;
    loop {
        if let Ok(mut c) = connect(&endpoint, &tls).await {
            if c.put(key, "v1", None).await.is_ok() {
                let got = c.get(key, None).await.unwrap();
                assert_eq!(got.kvs()[0].value_str().unwrap(), "v1");
                break;
            }
        }
        assert!(
            std::time::Instant::now() < end,
            "etcd never accepted the apiserver's identity"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The kubelet-client identity (cluster CA) must not get in.
    let wrong = EtcdClientTls {
        ca: tls.ca.clone(),
        cert: path_of(&api, "kubelet-client-certificate"),
        key: path_of(&api, "kubelet-client-key"),
    };
    let refused = match connect(&endpoint, &wrong).await {
        Err(_) => true,
        Ok(mut c) => c.get(key, None).await.is_err(),
    };
    assert!(refused, "etcd accepted a certificate from the cluster CA");

    // The egress selector the apiserver is pointed at: dial a target through
    // its udsName once an agent is connected to the embedded server.
    let egress_text = fs::read_to_string(path_of(&api, "egress-selector-config-file")).unwrap();
    let egress: EgressSelectorConfiguration = serde_saphyr::from_str(&egress_text).unwrap();
    let uds = PathBuf::from(
        &egress.egress_selections[0]
            .connection
            .transport
            .uds
            .uds_name,
    );
    assert!(egress.is_cluster_grpc_over(&uds));
    wait_for("konnectivity socket", READY, || uds.exists().then_some(()));
    let agent_cert = pki::issue_client_cert(
        &node.data.join("pki"),
        Ca::Konnectivity,
        "contract-agent",
        &[],
        Duration::from_secs(3600),
        KeyType::EcdsaP256,
    )
    .unwrap();
    let dir = node.tmp.path();
    fs::write(dir.join("agent.crt"), &agent_cert.cert_pem).unwrap();
    fs::write(dir.join("agent.key"), &agent_cert.key_pem).unwrap();
    let agent_tls = TlsFiles {
        cert: dir.join("agent.crt"),
        key: dir.join("agent.key"),
        ca: node.pki("konnectivity/ca.crt"),
    };
    let agent_addr = format!("127.0.0.1:{}", node.konnectivity_agent_port)
        .parse()
        .unwrap();
    // The server binds identities to certificates: the agent may announce
    // its certificate's name, not an address the certificate lacks.
    let agent = konnectivity::start_agent_with_identifiers(
        &agent_tls,
        &[agent_addr],
        "host=contract-agent",
    )
    .await;
    konnectivity::wait_until(READY, "agent connected", || {
        agent.handle.connected_servers().len() == 1
    })
    .await;
    let (target, _stop) = konnectivity::http_target().await;
    let mut conn = dial_grpc_uds(&uds, &target.to_string()).await.unwrap();
    let (status, _) = konnectivity::http_request(
        &mut conn,
        "GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(status.contains("200"), "{status}");
    agent.token.cancel();
}

fn admin_probe(node: &Node, api: &Flags) -> HttpsProbe {
    HttpsProbe {
        addr: format!(
            "{}:{}",
            api.get("bind-address").unwrap(),
            api.get("secure-port").unwrap()
        )
        .parse()
        .unwrap(),
        path: "/readyz".into(),
        trust: ServerTrust::CaFile(node.pki("ca.crt")),
        client: Some(ClientIdentity {
            cert: node.pki("admin.crt"),
            key: node.pki("admin.key"),
        }),
        timeout: Duration::from_secs(3),
    }
}

async fn ready_within(probe: &HttpsProbe, within: Duration) {
    let end = std::time::Instant::now() + within;
    loop {
        match probe.check().await {
            Ok(()) => return,
            Err(e) => assert!(std::time::Instant::now() < end, "never ready: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The real kube-apiserver under the real supervisor: it runs exactly the
/// argv of its args file, authenticates every client, and comes back after
/// kill -9.
#[tokio::test(flavor = "multi_thread")]
async fn real_apiserver_under_the_supervisor() {
    let Some(bin) = upstream::upstream_bins(&["kube-apiserver"]) else {
        return;
    };
    let node = init_node("kc-c");
    let (args, api) = args_of(&node, "kube-apiserver");
    // The applier and the CSR approver are left out: this test is about the
    // apiserver alone.
    let mut ctl = node.start_controller(&[
        "--bin-dir",
        s(&bin),
        "--disable-components",
        "kube-controller-manager,kube-scheduler,applier,csr-approver",
    ]);
    upstream::wait_ready(&mut ctl, "controller ready");
    // The supervisor ran exactly the argv of the args file.
    let pid = node.child_pid("kube-apiserver").expect("pid file");
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let argv: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    assert_eq!(&argv[1..], &args[..]);

    // It serves /readyz to the admin, and refuses clients without a cluster
    // CA certificate.
    let probe = admin_probe(&node, &api);
    probe.check().await.unwrap();
    let mut anonymous = probe.clone();
    anonymous.client = None;
    assert!(
        anonymous.check().await.is_err(),
        "served a client without a certificate"
    );
    let mut foreign = probe.clone();
    foreign.client = Some(ClientIdentity {
        cert: path_of(&api, "proxy-client-cert-file"),
        key: path_of(&api, "proxy-client-key-file"),
    });
    assert!(
        foreign.check().await.is_err(),
        "served a front-proxy CA client"
    );

    // kill -9: the supervisor starts a new one, which serves again.
    signal(pid, libc::SIGKILL);
    let new_pid = wait_for("kube-apiserver restarted", READY, || {
        node.child_pid("kube-apiserver")
            .filter(|p| *p != pid && alive(*p))
    });
    assert_ne!(new_pid, pid);
    ready_within(&probe, upstream::CONTROL_PLANE_READY).await;

    // Clean shutdown takes it down and removes its pid file.
    signal(ctl.pid(), libc::SIGTERM);
    let status = ctl.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status:?}\n{}", ctl.log_text());
    assert!(!alive(new_pid));
    assert!(!node.pid_file("kube-apiserver").exists());
}

#[test]
fn missing_kube_binary_exits_69_before_anything_starts() {
    let node = init_node("kc-d");
    let empty = node.tmp.path().join("empty-bin");
    fs::create_dir_all(&empty).unwrap();
    let out = run(&mut node.cmd(&[
        "--bin-dir",
        s(&empty),
        "controller",
        "--node-name",
        "kc-d",
        "--disable-components",
        "kube-controller-manager,kube-scheduler",
    ]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{err}");
    assert!(err.contains("`kube-apiserver`"), "{err}");
    assert!(node.child_pid("etcd").is_none(), "etcd was started anyway");
}

/// Flags that only appear with several controllers (leader election, the
/// apiserver's shutdown delay) are upstream v1.32 flags too.
#[test]
fn multi_controller_flags_are_upstream_flags() {
    use mkectl::components::{kube_apiserver, kube_controller_manager, kube_scheduler};
    use mkectl::config::{ClusterConfig, NodePaths};
    use mkectl::pki::PkiPaths;
    let cfg = ClusterConfig::default();
    let paths = NodePaths::new(Path::new("/d"), Path::new("/r"), None);
    let pki = PkiPaths::new(&paths.pki_dir());
    let api = kube_apiserver::KubeApiserverSettings::from_config(
        &cfg,
        &paths,
        &pki,
        "192.0.2.1".parse().unwrap(),
        3,
    )
    .flags();
    assert_eq!(api.get("shutdown-delay-duration"), Some("10s"));
    check_flag_names("kube-apiserver", &api);
    let kcm =
        kube_controller_manager::KubeControllerManagerSettings::from_config(&cfg, &paths, &pki, 3)
            .flags();
    assert_eq!(kcm.get("leader-elect"), Some("true"));
    check_flag_names("kube-controller-manager", &kcm);
    let sched = kube_scheduler::KubeSchedulerSettings::from_config(&cfg, &paths, &pki, 3).flags();
    assert_eq!(sched.get("leader-elect"), Some("true"));
    check_flag_names("kube-scheduler", &sched);
}
