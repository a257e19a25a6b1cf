//! Contract tests for the files and argv mkectl generates for the upstream
//! kubelet (v1.32), which is not obtainable on CI machines: every flag is a
//! real v1.32 kubelet flag, every config field a real KubeletConfiguration
//! v1beta1 field, every path exists, the certificates chain to the cluster
//! CA, the kubeconfig passes `kubectl config view`, and kubelet and
//! containerd agree on the CRI socket and the cgroup driver.
//!
//! The real kubelet (built by `packaging/build-upstream.sh`, found through
//! `MKECTL_UPSTREAM_BIN_DIR`) runs too, inside a network namespace of its
//! own so nothing it sets up touches the host's network.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use mkectl::components::containerd::{self, ContainerdSettings, DEFAULT_SANDBOX_IMAGE};
use mkectl::components::kubelet::{self, KubeletConfiguration, KubeletSettings, Taint};
use mkectl::components::Component;
use mkectl::config::NodePaths;
use mkectl::pki::{self, KubeconfigUser, PkiSpec};

const TOKEN: &str = "abcdef.0123456789abcdef";
const SERVER: &str = "https://127.0.0.1:6443";

/// Non-comment, non-empty lines of a file under `tests/data`.
fn data_list(name: &str) -> BTreeSet<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

struct Worker {
    _tmp: tempfile::TempDir,
    paths: NodePaths,
    settings: KubeletSettings,
}

/// A cluster PKI (as a controller makes it), a bootstrap kubeconfig as the
/// join writes it, and kubelet's files generated from them.
fn worker() -> Worker {
    let tmp = tempfile::tempdir().unwrap();
    let paths = NodePaths::new(&tmp.path().join("data"), &tmp.path().join("run"), None);
    pki::ensure(&PkiSpec::new(paths.pki_dir(), "controller-1")).unwrap();
    let ca_pem = fs::read_to_string(paths.pki_dir().join("ca.crt")).unwrap();
    let bootstrap = pki::render_kubeconfig(
        "mke",
        SERVER,
        &ca_pem,
        "kubelet-bootstrap",
        KubeconfigUser::Token(TOKEN),
    )
    .unwrap();
    fs::create_dir_all(paths.kubelet_dir()).unwrap();
    fs::write(paths.kubelet_bootstrap_kubeconfig(), bootstrap).unwrap();
    fs::set_permissions(
        paths.kubelet_bootstrap_kubeconfig(),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();

    let mut settings = KubeletSettings::for_node(&paths, "worker-1", "127.0.0.1".parse().unwrap());
    settings.labels.insert("tier".into(), "edge".into());
    settings
        .labels
        .insert("node.kubernetes.io/pool".into(), "blue".into());
    settings
        .taints
        .push(Taint::parse("dedicated=gpu:NoSchedule").unwrap());
    settings.healthz_port = common::free_port();
    settings.port = common::free_port();
    settings.write_files().unwrap();
    Worker {
        _tmp: tmp,
        paths,
        settings,
    }
}

/// `--name=value` pairs of an argv.
fn flags(args: &[String]) -> Vec<(String, String)> {
    args.iter()
        .map(|a| {
            let a = a
                .strip_prefix("--")
                .unwrap_or_else(|| panic!("{a}: not a long flag"));
            let (k, v) = a
                .split_once('=')
                .unwrap_or_else(|| panic!("{a}: not --name=value"));
            (k.to_string(), v.to_string())
        })
        .collect()
}

#[test]
fn every_flag_is_a_kubelet_v1_32_flag() {
    let w = worker();
    let known = data_list("kubelet-v1.32.flags");
    assert!(known.len() > 100, "flag list looks truncated");
    for (name, _) in flags(&w.settings.args()) {
        assert!(
            known.contains(&name),
            "--{name} is not a kubelet v1.32 flag"
        );
    }
    // extraArgs go through the same check: a typo would be caught here.
    let mut s = w.settings.clone();
    s.extra_args.insert("max-pods".into(), "50".into());
    for (name, _) in flags(&s.args()) {
        assert!(known.contains(&name), "--{name}");
    }
}

#[test]
fn every_path_flag_exists_and_kubeconfig_is_left_to_kubelet() {
    let w = worker();
    let args = flags(&w.settings.args());
    let get = |n: &str| {
        args.iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| PathBuf::from(v))
            .unwrap_or_else(|| panic!("--{n} missing"))
    };
    for name in ["config", "bootstrap-kubeconfig", "cert-dir", "root-dir"] {
        let p = get(name);
        assert!(p.exists(), "--{name}={} does not exist", p.display());
    }
    // kubelet writes --kubeconfig itself after TLS bootstrap: its dir exists.
    let kubeconfig = get("kubeconfig");
    assert!(!kubeconfig.exists());
    assert!(kubeconfig.parent().unwrap().is_dir());
    for (what, p) in w.settings.input_paths() {
        assert!(p.exists(), "{what}: {} does not exist", p.display());
    }
    // Secrets and kubelet's dirs are private.
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&w.settings.config_file), 0o600);
    assert_eq!(mode(&w.settings.cert_dir), 0o700);
    assert_eq!(mode(&w.settings.root_dir), 0o700);
    assert_eq!(mode(&w.paths.kubelet_dir()), 0o700);
    assert_eq!(get("node-ip").display().to_string(), "127.0.0.1");
    assert_eq!(get("hostname-override").display().to_string(), "worker-1");
    assert_eq!(
        get("node-labels").display().to_string(),
        "node.kubernetes.io/pool=blue,tier=edge"
    );
}

/// Dotted field paths of a YAML mapping, descending into the fields the list
/// knows as structs (`authentication.x509`, ...).
fn field_paths(
    v: &serde_json::Value,
    prefix: &str,
    known: &BTreeSet<String>,
    out: &mut Vec<String>,
) {
    let Some(map) = v.as_object() else { return };
    for (k, v) in map {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        let is_struct = known.iter().any(|f| f.starts_with(&format!("{path}.")));
        if is_struct {
            field_paths(v, &path, known, out);
        }
        out.push(path);
    }
}

#[test]
fn config_file_has_only_real_v1beta1_fields_and_the_required_values() {
    let w = worker();
    let text = fs::read_to_string(&w.settings.config_file).unwrap();
    // Our own schema, unknown fields refused: the file holds exactly this.
    let cfg: KubeletConfiguration = serde_saphyr::from_str(&text).unwrap();
    assert_eq!(cfg, w.settings.config());

    let known = data_list("kubelet-config-v1beta1.fields");
    let value: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    let mut paths = Vec::new();
    field_paths(&value, "", &known, &mut paths);
    assert!(paths.len() > 20, "{paths:?}");
    for p in &paths {
        assert!(
            known.contains(p),
            "{p} is not a KubeletConfiguration v1beta1 field"
        );
    }

    assert_eq!(cfg.api_version, "kubelet.config.k8s.io/v1beta1");
    assert_eq!(cfg.kind, "KubeletConfiguration");
    assert!(!cfg.authentication.anonymous.enabled);
    assert!(cfg.authentication.webhook.enabled);
    assert_eq!(cfg.authorization.mode, "Webhook");
    assert!(cfg.rotate_certificates);
    assert!(cfg.server_tls_bootstrap);
    assert_eq!(cfg.read_only_port, 0);
    assert_eq!(cfg.cluster_dns, ["10.96.0.10"], "10th service IP");
    assert_eq!(cfg.cluster_domain, "cluster.local");
    assert_eq!(cfg.healthz_bind_address, "127.0.0.1");
    assert_eq!(cfg.healthz_port, w.settings.healthz_port);
    assert!(!text.contains("staticPodPath"), "static pods must stay off");
    assert_eq!(
        cfg.register_with_taints,
        [Taint {
            key: "dedicated".into(),
            value: "gpu".into(),
            effect: "NoSchedule".into()
        }]
    );
}

#[test]
fn kubelet_and_containerd_agree_on_socket_and_cgroup_driver() {
    let w = worker();
    let cfg = w.settings.config();
    let cd = ContainerdSettings::new(&w.paths, DEFAULT_SANDBOX_IMAGE, w.settings.cgroup_driver);
    assert_eq!(cfg.container_runtime_endpoint, cd.cri_endpoint());
    assert_eq!(cfg.cgroup_driver, cd.cgroup_driver.as_str());
    let toml = cd.render_config();
    let systemd = format!("SystemdCgroup = {}", cfg.cgroup_driver == "systemd");
    assert!(toml.contains(&systemd), "{toml}");
    assert_eq!(
        w.settings.cgroup_driver,
        containerd::CgroupDriver::detect(),
        "the default follows the host"
    );
}

fn openssl_verify(ca: &Path, cert: &Path) {
    let out = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(ca)
        .arg(cert)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl verify {} against {}: {}{}",
        cert.display(),
        ca.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn certificates_chain_to_the_cluster_ca() {
    let w = worker();
    let cluster_ca = w.paths.pki_dir().join("ca.crt");
    let cfg = w.settings.config();
    let client_ca = PathBuf::from(&cfg.authentication.x509.client_ca_file);
    assert_eq!(
        fs::read(&client_ca).unwrap(),
        fs::read(&cluster_ca).unwrap()
    );
    openssl_verify(&client_ca, &client_ca);
    // The identity kube-apiserver presents to kubelet (logs, exec, ...) is
    // accepted by kubelet's x509 authenticator.
    openssl_verify(
        &client_ca,
        &w.paths.pki_dir().join("apiserver-kubelet-client.crt"),
    );
    // A certificate from another CA is not.
    let other = w.paths.pki_dir().join("front-proxy-client.crt");
    let out = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(&client_ca)
        .arg(&other)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "front-proxy cert must not chain to the cluster CA"
    );
}

fn kubectl(kubeconfig: &Path, args: &[&str]) -> String {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .expect("kubectl runs");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn bootstrap_kubeconfig_passes_kubectl_and_pins_the_cluster_ca() {
    let w = worker();
    let kc = w.settings.bootstrap_kubeconfig.clone();
    let view = kubectl(&kc, &["config", "view"]);
    assert!(view.contains(SERVER), "{view}");
    let raw = |path: &str| {
        kubectl(
            &kc,
            &[
                "config",
                "view",
                "--raw",
                "-o",
                &format!("jsonpath={{{path}}}"),
            ],
        )
    };
    let ca_b64 = raw(".clusters[0].cluster.certificate-authority-data");
    let ca = base64::engine::general_purpose::STANDARD
        .decode(ca_b64.trim())
        .unwrap();
    assert_eq!(ca, fs::read(w.paths.pki_dir().join("ca.crt")).unwrap());
    assert_eq!(raw(".users[0].user.token"), TOKEN);
    assert_eq!(raw(".clusters[0].cluster.server"), SERVER);
    assert_eq!(
        fs::metadata(&kc).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn write_files_refuses_a_node_that_has_not_joined() {
    let tmp = tempfile::tempdir().unwrap();
    let paths = NodePaths::new(&tmp.path().join("data"), &tmp.path().join("run"), None);
    pki::ensure(&PkiSpec::new(paths.pki_dir(), "controller-1")).unwrap();
    let s = KubeletSettings::for_node(&paths, "worker-1", "127.0.0.1".parse().unwrap());
    let e = s.write_files().unwrap_err().to_string();
    assert!(
        e.contains("bootstrap-kubelet.conf") && e.contains("join"),
        "{e}"
    );
    let mut s = s;
    s.client_ca = tmp.path().join("missing-ca.crt");
    let e = s.write_files().unwrap_err().to_string();
    assert!(e.contains("missing-ca.crt"), "{e}");
}

/// The real kubelet v1.32 accepts the generated argv and config: it starts,
/// keeps running (an unknown flag or config field makes it exit at once) and
/// waits for TLS bootstrap against the (absent) apiserver.
#[test]
fn upstream_kubelet_accepts_flags_and_config() {
    let Some(bin) = common::upstream::upstream_bins(&["kubelet"]) else {
        return;
    };
    // Children inherit the network namespace of the thread that forks them:
    // the runtime lives on a thread inside the test's namespace.
    let ns = common::netns::Netns::new("kubelet");
    ns.enter(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(kubelet_runs(&bin))
    });
}

async fn kubelet_runs(bin: &Path) {
    let mut w = worker();
    w.paths.bin_dir = Some(bin.to_path_buf());
    let kubelet_bin = mkectl::components::binary::find(kubelet::NAME, &w.paths)
        .expect("kubelet in MKECTL_UPSTREAM_BIN_DIR");
    assert_eq!(kubelet_bin, bin.join("kubelet"));
    let version = Command::new(&kubelet_bin)
        .arg("--version")
        .output()
        .unwrap();
    let version = String::from_utf8_lossy(&version.stdout).into_owned();
    assert!(version.contains("v1.32."), "{version}");

    let tmp = tempfile::Builder::new()
        .prefix("mk-")
        .tempdir_in("/tmp")
        .unwrap();
    let cd_paths = NodePaths::new(&tmp.path().join("d"), &tmp.path().join("r"), None);
    let mut cd = containerd::Containerd::new(
        ContainerdSettings::new(&cd_paths, DEFAULT_SANDBOX_IMAGE, w.settings.cgroup_driver),
        cd_paths.clone(),
    );
    let mut settings = w.settings.clone();
    settings.containerd_socket = cd.settings().socket.clone();
    settings.write_files().unwrap();
    cd.init().await.unwrap();
    cd.start().await.unwrap();
    let end = std::time::Instant::now() + Duration::from_secs(30);
    while let Err(e) = cd.ready().await {
        assert!(std::time::Instant::now() < end, "containerd not ready: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut k = kubelet::Kubelet::new(settings, w.paths.clone());
    k.init().await.unwrap();
    k.start().await.unwrap();
    let pid = k.child().unwrap().status().pid.unwrap();
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < end {
        let st = k.child().unwrap().status();
        assert_eq!(st.restarts, 0, "kubelet exited: {:?}", st.last_exit);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(common::alive(pid));
    k.stop().await.unwrap();
    cd.stop().await.unwrap();
}
