//! kubelet on a worker: a supervised child (the upstream binary, pinned at
//! [`KUBERNETES_VERSION`]) started with a generated `KubeletConfiguration`
//! file and a short argv of the flags that have no config field.
//!
//! # Security defaults
//!
//! * the kubelet API (`port`, bound to the node IP) authenticates clients by
//!   certificate against the cluster CA or by webhook token review, refuses
//!   anonymous requests, and authorizes every request by webhook
//!   (SubjectAccessReview);
//! * the unauthenticated read-only port is off (`readOnlyPort: 0`);
//! * the client certificate comes from TLS bootstrap with the join's
//!   bootstrap token and is rotated (`rotateCertificates`); the serving
//!   certificate is requested from the cluster CA too (`serverTLSBootstrap`),
//!   approved by the controller's CSR approver (`csr_approver`) only for the
//!   node's own name and addresses;
//! * TLS 1.2+ with ECDHE + AEAD suites only;
//! * no static pods (`staticPodPath` unset).
//!
//! # Files (see [`NodePaths`])
//!
//! | what | where |
//! |---|---|
//! | KubeletConfiguration | `<data-dir>/kubelet/config.yaml` |
//! | bootstrap kubeconfig (from the join, bootstrap token) | `<data-dir>/kubelet/bootstrap-kubelet.conf` |
//! | kubeconfig (kubelet writes it after bootstrap) | `<data-dir>/kubelet/kubelet.conf` |
//! | client and serving certificates | `<data-dir>/kubelet/pki/` |
//! | `--root-dir` (pods, volumes, plugins) | `<data-dir>/kubelet/root` |
//!
//! Readiness is kubelet's own `/healthz` on `127.0.0.1:<healthzPort>`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::containerd::{CgroupDriver, DEFAULT_SANDBOX_IMAGE};
use super::{binary, Component, ComponentError};
pub use crate::config::worker::{
    is_dns_subdomain, validate_node_label, CgroupDriverSetting, Taint, WorkerSpec,
    ALLOWED_KUBERNETES_LABELS, ALLOWED_KUBERNETES_LABEL_NAMESPACES, TAINT_EFFECTS,
};
use crate::config::{ClusterConfig, NodePaths};
use crate::fsutil;
use crate::fsutil::absolute;
use crate::supervisor::{ChildSpec, Supervised};

pub const NAME: &str = "kubelet";
pub use super::kube_common::KUBERNETES_VERSION;
/// kubelet's HTTPS API port.
pub const DEFAULT_PORT: u16 = crate::config::defaults::KUBELET_PORT;
/// kubelet's healthz port (plain HTTP, loopback only).
pub const DEFAULT_HEALTHZ_PORT: u16 = crate::config::defaults::KUBELET_HEALTHZ_PORT;
/// What kubelet keeps its current client certificate and key in (one PEM,
/// in `--cert-dir`), replaced on every rotation.
pub const CLIENT_CERT_FILE: &str = "kubelet-client-current.pem";
/// healthz never leaves the node.
pub const HEALTHZ_BIND_ADDRESS: &str = "127.0.0.1";
pub const CONFIG_API_VERSION: &str = "kubelet.config.k8s.io/v1beta1";
pub const CONFIG_KIND: &str = "KubeletConfiguration";
pub const AUTHORIZATION_MODE: &str = "Webhook";
/// On systemd-resolved hosts `/etc/resolv.conf` points at a stub resolver on
/// 127.0.0.53 that pods cannot reach; this file lists the real upstreams.
pub const SYSTEMD_RESOLV_CONF: &str = "/run/systemd/resolve/resolv.conf";
pub const DEFAULT_RESOLV_CONF: &str = "/etc/resolv.conf";
/// kubelet stops its sync loops and exits within seconds of SIGTERM.
pub const STOP_GRACE: Duration = Duration::from_secs(15);
/// healthz answers once kubelet has its client certificate; TLS bootstrap
/// needs a round trip to the apiserver and the CSR approval.
pub const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// One healthz probe may take this long.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    #[error("kubelet setting `{field}`: {message}")]
    Invalid { field: String, message: String },
    #[error("cannot render the kubelet config: {0}")]
    Render(String),
    #[error(transparent)]
    Fs(#[from] fsutil::FsError),
    #[error("{path}: {message}")]
    Input { path: PathBuf, message: String },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> KubeletError {
    KubeletError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

impl CgroupDriverSetting {
    pub fn resolve(self) -> CgroupDriver {
        match self {
            CgroupDriverSetting::Auto => CgroupDriver::detect(),
            CgroupDriverSetting::Systemd => CgroupDriver::Systemd,
            CgroupDriverSetting::Cgroupfs => CgroupDriver::Cgroupfs,
        }
    }
}

/// The resolv.conf kubelet hands to pods: systemd-resolved's upstream list
/// when the host runs it, else `/etc/resolv.conf`.
pub fn detect_resolv_conf() -> PathBuf {
    if Path::new(SYSTEMD_RESOLV_CONF).is_file() {
        SYSTEMD_RESOLV_CONF.into()
    } else {
        DEFAULT_RESOLV_CONF.into()
    }
}

/// Everything the kubelet component needs.
#[derive(Debug, Clone, PartialEq)]
pub struct KubeletSettings {
    pub node_name: String,
    pub node_ip: IpAddr,
    pub cluster_dns_ip: IpAddr,
    pub cluster_domain: String,
    /// CA bundle that signs client certificates kubelet accepts (the cluster
    /// CA: the apiserver's kubelet-client certificate chains to it).
    pub client_ca: PathBuf,
    /// Bootstrap-token kubeconfig from the join.
    pub bootstrap_kubeconfig: PathBuf,
    /// Where kubelet writes its own kubeconfig after TLS bootstrap.
    pub kubeconfig: PathBuf,
    pub config_file: PathBuf,
    pub cert_dir: PathBuf,
    pub root_dir: PathBuf,
    pub containerd_socket: PathBuf,
    pub cgroup_driver: CgroupDriver,
    /// The pod sandbox image, the same name containerd's `sandbox_image`
    /// has: `--pod-infra-container-image` keeps kubelet's image garbage
    /// collector from removing it (containerd 1.6 does not mark it pinned).
    pub sandbox_image: String,
    pub resolv_conf: PathBuf,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    pub port: u16,
    pub healthz_port: u16,
    /// `spec.extraArgs.kubelet`: flags without dashes; they override ours.
    pub extra_args: BTreeMap<String, String>,
    /// `podLogsDir`; None = kubelet's default.
    pub pod_logs_dir: Option<PathBuf>,
    /// `cgroupRoot`; None = kubelet's default.
    pub cgroup_root: Option<String>,
}

impl KubeletSettings {
    /// Settings with the node's standard layout and the cluster defaults
    /// (DNS = 10th service IP of the default CIDR, `cluster.local`, client CA
    /// `<data-dir>/pki/ca.crt`); callers override what the join returned.
    pub fn for_node(paths: &NodePaths, node_name: &str, node_ip: IpAddr) -> Self {
        let cluster = ClusterConfig::default();
        // Absolute: kubelet runs with its root dir as working directory.
        let abs = |p: PathBuf| absolute(&p);
        Self {
            node_name: node_name.into(),
            node_ip,
            cluster_dns_ip: cluster.cluster_dns_ip(),
            cluster_domain: cluster.spec.network.cluster_domain.clone(),
            client_ca: abs(paths.pki_dir().join("ca.crt")),
            bootstrap_kubeconfig: abs(paths.kubelet_bootstrap_kubeconfig()),
            kubeconfig: abs(paths.kubelet_kubeconfig()),
            config_file: abs(paths.kubelet_config_file()),
            cert_dir: abs(paths.kubelet_cert_dir()),
            root_dir: abs(paths.kubelet_root_dir()),
            containerd_socket: abs(paths.containerd_socket()),
            cgroup_driver: CgroupDriver::detect(),
            sandbox_image: DEFAULT_SANDBOX_IMAGE.into(),
            resolv_conf: detect_resolv_conf(),
            labels: BTreeMap::new(),
            taints: Vec::new(),
            port: DEFAULT_PORT,
            healthz_port: DEFAULT_HEALTHZ_PORT,
            extra_args: BTreeMap::new(),
            pod_logs_dir: None,
            cgroup_root: None,
        }
    }

    /// Takes labels, taints, ports and the cgroup driver from `spec.worker`
    /// (validated first with [`WorkerSpec::validate`]).
    pub fn apply_spec(&mut self, spec: &WorkerSpec) -> Result<(), KubeletError> {
        self.labels.extend(spec.labels.clone());
        for (i, t) in spec.taints.iter().enumerate() {
            let taint =
                Taint::parse(t).map_err(|m| invalid(format!("taints[{i}]"), m.to_string()))?;
            self.taints.push(taint);
        }
        self.port = spec.kubelet_port;
        self.healthz_port = spec.kubelet_healthz_port;
        self.cgroup_driver = spec.cgroup_driver.resolve();
        self.sandbox_image = spec.sandbox_image.clone();
        self.pod_logs_dir = spec.pod_logs_dir.clone();
        self.cgroup_root = spec.cgroup_root.clone();
        Ok(())
    }

    /// Checks what kubelet would refuse, so the error names our setting.
    pub fn validate(&self) -> Result<(), KubeletError> {
        if !is_dns_subdomain(&self.node_name) {
            return Err(invalid(
                "node_name",
                format!(
                    "{:?} is not a lowercase RFC 1123 DNS subdomain (Node names must be)",
                    self.node_name
                ),
            ));
        }
        if !is_dns_subdomain(&self.cluster_domain) {
            return Err(invalid(
                "cluster_domain",
                format!("{:?} is not a DNS name", self.cluster_domain),
            ));
        }
        for (k, v) in &self.labels {
            validate_node_label(k, v).map_err(|m| invalid(format!("labels.{k}"), m.to_string()))?;
        }
        if self.port == 0 || self.healthz_port == 0 || self.port == self.healthz_port {
            return Err(invalid(
                "port",
                "port and healthz port must be distinct and non-zero",
            ));
        }
        for k in self.extra_args.keys() {
            let name = k.trim_start_matches('-');
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                return Err(invalid(format!("extra_args.{k}"), "not a valid flag name"));
            }
        }
        Ok(())
    }

    /// The generated KubeletConfiguration.
    pub fn config(&self) -> KubeletConfiguration {
        KubeletConfiguration {
            api_version: CONFIG_API_VERSION.into(),
            kind: CONFIG_KIND.into(),
            enable_server: true,
            address: self.node_ip.to_string(),
            port: self.port,
            read_only_port: 0,
            tls_min_version: crate::tlspolicy::MIN_VERSION.into(),
            tls_cipher_suites: crate::tlspolicy::CIPHER_SUITES
                .iter()
                .map(|s| s.to_string())
                .collect(),
            rotate_certificates: true,
            server_tls_bootstrap: true,
            authentication: KubeletAuthentication {
                x509: KubeletX509Authentication {
                    client_ca_file: self.client_ca.display().to_string(),
                },
                webhook: KubeletWebhookAuthentication { enabled: true },
                anonymous: KubeletAnonymousAuthentication { enabled: false },
            },
            authorization: KubeletAuthorization {
                mode: AUTHORIZATION_MODE.into(),
            },
            healthz_port: self.healthz_port,
            healthz_bind_address: HEALTHZ_BIND_ADDRESS.into(),
            cluster_domain: self.cluster_domain.clone(),
            cluster_dns: vec![self.cluster_dns_ip.to_string()],
            resolv_conf: self.resolv_conf.display().to_string(),
            cgroup_driver: self.cgroup_driver.as_str().into(),
            container_runtime_endpoint: format!("unix://{}", self.containerd_socket.display()),
            register_node: true,
            register_with_taints: self.taints.clone(),
            pod_logs_dir: self.pod_logs_dir.as_ref().map(|d| d.display().to_string()),
            cgroup_root: self.cgroup_root.clone(),
        }
    }

    /// The config file's text.
    pub fn render_config(&self) -> Result<String, KubeletError> {
        serde_saphyr::to_string(&self.config()).map_err(|e| KubeletError::Render(e.to_string()))
    }

    /// The argv (without the program): only what has no config field, then
    /// `extra_args` on top.
    pub fn args(&self) -> Vec<String> {
        let mut flags: BTreeMap<String, String> = BTreeMap::new();
        let p = |p: &Path| p.display().to_string();
        flags.insert("config".into(), p(&self.config_file));
        flags.insert("bootstrap-kubeconfig".into(), p(&self.bootstrap_kubeconfig));
        flags.insert("kubeconfig".into(), p(&self.kubeconfig));
        flags.insert("cert-dir".into(), p(&self.cert_dir));
        flags.insert("root-dir".into(), p(&self.root_dir));
        flags.insert("node-ip".into(), self.node_ip.to_string());
        flags.insert("hostname-override".into(), self.node_name.clone());
        flags.insert(
            "pod-infra-container-image".into(),
            self.sandbox_image.clone(),
        );
        if !self.labels.is_empty() {
            let labels = self
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",");
            flags.insert("node-labels".into(), labels);
        }
        for (k, v) in &self.extra_args {
            flags.insert(k.trim_start_matches('-').to_string(), v.clone());
        }
        flags
            .into_iter()
            .map(|(k, v)| format!("--{k}={v}"))
            .collect()
    }

    /// Path-valued flags that must exist before kubelet starts (`kubeconfig`
    /// is written by kubelet itself after bootstrap).
    pub fn input_paths(&self) -> Vec<(&'static str, &Path)> {
        vec![
            ("config", &self.config_file),
            ("cert-dir", &self.cert_dir),
            ("root-dir", &self.root_dir),
            ("authentication.x509.clientCAFile", &self.client_ca),
            ("resolvConf", &self.resolv_conf),
        ]
    }

    /// Writes the config and creates the directories; checks the inputs the
    /// join provides. Starts nothing.
    pub fn write_files(&self) -> Result<(), KubeletError> {
        self.validate()?;
        for dir in [&self.cert_dir, &self.root_dir] {
            fsutil::ensure_dir(dir, fsutil::PRIVATE_DIR_MODE)?;
        }
        for file in [&self.config_file, &self.kubeconfig] {
            if let Some(parent) = file.parent() {
                fsutil::ensure_dir(parent, fsutil::PRIVATE_DIR_MODE)?;
            }
        }
        let ca = std::fs::read(&self.client_ca).map_err(|e| KubeletError::Input {
            path: self.client_ca.clone(),
            message: format!("client CA unreadable: {e}"),
        })?;
        if !String::from_utf8_lossy(&ca).contains("-----BEGIN CERTIFICATE-----") {
            return Err(KubeletError::Input {
                path: self.client_ca.clone(),
                message: "client CA holds no PEM certificate".into(),
            });
        }
        if !self.bootstrap_kubeconfig.is_file() && !self.kubeconfig.is_file() {
            return Err(KubeletError::Input {
                path: self.bootstrap_kubeconfig.clone(),
                message: format!(
                    "neither the bootstrap kubeconfig nor {} exists: join the node first",
                    self.kubeconfig.display()
                ),
            });
        }
        fsutil::write_atomic(
            &self.config_file,
            self.render_config()?.as_bytes(),
            fsutil::PRIVATE_FILE_MODE,
        )?;
        Ok(())
    }
}

// The KubeletConfiguration (kubelet.config.k8s.io/v1beta1) mkectl writes:
// only the fields it sets, with upstream's names. Deserialize with
// deny_unknown_fields so the contract test proves the file holds exactly this.

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KubeletConfiguration {
    pub api_version: String,
    pub kind: String,
    pub enable_server: bool,
    pub address: String,
    pub port: u16,
    pub read_only_port: u16,
    #[serde(rename = "tlsMinVersion")]
    pub tls_min_version: String,
    #[serde(rename = "tlsCipherSuites")]
    pub tls_cipher_suites: Vec<String>,
    pub rotate_certificates: bool,
    #[serde(rename = "serverTLSBootstrap")]
    pub server_tls_bootstrap: bool,
    pub authentication: KubeletAuthentication,
    pub authorization: KubeletAuthorization,
    pub healthz_port: u16,
    pub healthz_bind_address: String,
    pub cluster_domain: String,
    #[serde(rename = "clusterDNS")]
    pub cluster_dns: Vec<String>,
    pub resolv_conf: String,
    pub cgroup_driver: String,
    pub container_runtime_endpoint: String,
    pub register_node: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub register_with_taints: Vec<Taint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_logs_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_root: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubeletAuthentication {
    pub x509: KubeletX509Authentication,
    pub webhook: KubeletWebhookAuthentication,
    pub anonymous: KubeletAnonymousAuthentication,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubeletX509Authentication {
    #[serde(rename = "clientCAFile")]
    pub client_ca_file: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubeletWebhookAuthentication {
    pub enabled: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubeletAnonymousAuthentication {
    pub enabled: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubeletAuthorization {
    pub mode: String,
}

/// Why a plain-HTTP healthz probe failed.
#[derive(Debug, thiserror::Error)]
pub enum HealthzError {
    #[error("connect {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("handshake")]
    Handshake(#[source] hyper::Error),
    #[error("building the request")]
    Request(#[source] http::Error),
    #[error("request")]
    Send(#[source] hyper::Error),
    #[error("healthz answered {status}: {body}")]
    Status {
        status: http::StatusCode,
        body: String,
    },
    #[error("healthz probe timed out")]
    Timeout,
}

/// GET `http://127.0.0.1:<port>/healthz`; Ok when it answers 200.
pub async fn probe_healthz(port: u16) -> Result<(), HealthzError> {
    // HEALTHZ_BIND_ADDRESS.
    probe_http_healthz(SocketAddr::from(([127, 0, 0, 1], port)), PROBE_TIMEOUT).await
}

/// GET `http://<addr>/healthz` (plain HTTP, as kubelet and kube-proxy serve
/// it); Ok when it answers 200 within `timeout`.
pub async fn probe_http_healthz(addr: SocketAddr, timeout: Duration) -> Result<(), HealthzError> {
    use http_body_util::{BodyExt, Empty};
    let probe = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|source| HealthzError::Connect { addr, source })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(HealthzError::Handshake)?;
        let conn = tokio::spawn(conn);
        let req = http::Request::get("/healthz")
            .header(http::header::HOST, addr.to_string())
            .body(Empty::<bytes::Bytes>::new())
            .map_err(HealthzError::Request)?;
        let resp = sender.send_request(req).await.map_err(HealthzError::Send)?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        conn.abort();
        if status == http::StatusCode::OK {
            Ok(())
        } else {
            Err(HealthzError::Status {
                status,
                body: String::from_utf8_lossy(&body).trim().to_string(),
            })
        }
    };
    match tokio::time::timeout(timeout, probe).await {
        Ok(r) => r,
        Err(_) => Err(HealthzError::Timeout),
    }
}

pub struct Kubelet {
    settings: KubeletSettings,
    paths: NodePaths,
    child: Option<Supervised>,
}

impl Kubelet {
    pub fn new(settings: KubeletSettings, paths: NodePaths) -> Self {
        Self {
            settings,
            paths,
            child: None,
        }
    }

    pub fn settings(&self) -> &KubeletSettings {
        &self.settings
    }

    /// The supervised child, once started.
    pub fn child(&self) -> Option<&Supervised> {
        self.child.as_ref()
    }
}

#[async_trait::async_trait]
impl Component for Kubelet {
    fn name(&self) -> &'static str {
        NAME
    }

    /// Status (pid, restarts, last exit) and in-place restarts.
    fn supervised(&self) -> Option<&Supervised> {
        self.child.as_ref()
    }

    /// Maintained (and rotated) locally only on a controller with
    /// `--enable-worker`; a joined kubelet rotates its own certificate.
    fn uses_certs(&self) -> &[crate::pki::Leaf] {
        &[crate::pki::Leaf::KubeletClient]
    }

    /// Writes the files only: the binary is looked up by the command before
    /// anything starts (and again in `start`), so `--init-only` works
    /// without it.
    async fn init(&mut self) -> Result<(), ComponentError> {
        self.settings
            .write_files()
            .map_err(|e| ComponentError::during(NAME, "writing its configuration", e))
    }

    async fn start(&mut self) -> Result<(), ComponentError> {
        if self.child.is_some() {
            return Ok(());
        }
        let program = binary::find(NAME, &self.paths)?;
        let spec = ChildSpec {
            name: NAME.into(),
            program,
            args: self.settings.args(),
            env: Vec::new(),
            cwd: Some(self.settings.root_dir.clone()),
            run_dir: self.paths.run_dir.clone(),
            stop_grace: STOP_GRACE,
            backoff: Default::default(),
        };
        let child = super::start_supervised(NAME, spec).await?;
        self.child = Some(child);
        Ok(())
    }

    async fn ready(&self) -> Result<(), ComponentError> {
        probe_healthz(self.settings.healthz_port)
            .await
            .map_err(|e| ComponentError::NotReady {
                component: NAME,
                message: crate::telemetry::Chain(&e).to_string(),
            })
    }

    async fn stop(&mut self) -> Result<(), ComponentError> {
        if let Some(child) = self.child.take() {
            child.stop().await;
        }
        Ok(())
    }

    fn ready_timeout(&self) -> Duration {
        READY_TIMEOUT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> KubeletSettings {
        let paths = NodePaths::new(Path::new("/d"), Path::new("/r"), None);
        let mut s = KubeletSettings::for_node(&paths, "worker-1", "192.0.2.21".parse().unwrap());
        s.cgroup_driver = CgroupDriver::Cgroupfs;
        s.resolv_conf = DEFAULT_RESOLV_CONF.into();
        s
    }

    #[test]
    fn argv_has_paths_identity_and_labels() {
        let mut s = settings();
        s.labels.insert("tier".into(), "edge".into());
        s.labels
            .insert("node.kubernetes.io/pool".into(), "a".into());
        let args = s.args();
        for want in [
            "--config=/d/kubelet/config.yaml",
            "--bootstrap-kubeconfig=/d/kubelet/bootstrap-kubelet.conf",
            "--kubeconfig=/d/kubelet/kubelet.conf",
            "--cert-dir=/d/kubelet/pki",
            "--root-dir=/d/kubelet/root",
            "--node-ip=192.0.2.21",
            "--hostname-override=worker-1",
            "--node-labels=node.kubernetes.io/pool=a,tier=edge",
            "--pod-infra-container-image=registry.k8s.io/pause:3.10",
        ] {
            assert!(args.iter().any(|a| a == want), "missing {want} in {args:?}");
        }
    }

    #[test]
    fn no_labels_no_label_flag_and_extra_args_override() {
        let mut s = settings();
        assert!(!s.args().iter().any(|a| a.starts_with("--node-labels")));
        s.extra_args
            .insert("--root-dir".into(), "/var/lib/kubelet".into());
        s.extra_args.insert("v".into(), "2".into());
        let args = s.args();
        assert!(args.contains(&"--root-dir=/var/lib/kubelet".to_string()));
        assert!(args.contains(&"--v=2".to_string()));
        assert_eq!(
            args.iter().filter(|a| a.starts_with("--root-dir")).count(),
            1
        );
    }

    #[test]
    fn config_is_locked_down() {
        let mut s = settings();
        s.taints
            .push(Taint::parse("dedicated=gpu:NoSchedule").unwrap());
        let c = s.config();
        assert!(!c.authentication.anonymous.enabled);
        assert!(c.authentication.webhook.enabled);
        assert_eq!(c.authentication.x509.client_ca_file, "/d/pki/ca.crt");
        assert_eq!(c.authorization.mode, "Webhook");
        assert_eq!(c.read_only_port, 0);
        assert!(c.rotate_certificates && c.server_tls_bootstrap);
        assert_eq!(c.cluster_dns, ["10.96.0.10"]);
        assert_eq!(c.cluster_domain, "cluster.local");
        assert_eq!(c.healthz_bind_address, "127.0.0.1");
        assert_eq!(c.tls_min_version, "VersionTLS12");
        assert_eq!(
            c.container_runtime_endpoint,
            "unix:///r/containerd/containerd.sock"
        );
        assert_eq!(c.register_with_taints[0].effect, "NoSchedule");
        // Round trip through YAML with unknown fields refused.
        let yaml = s.render_config().unwrap();
        let back: KubeletConfiguration = serde_saphyr::from_str(&yaml).unwrap();
        assert_eq!(back, c);
        assert!(yaml.contains("clusterDNS:"), "{yaml}");
        assert!(yaml.contains("serverTLSBootstrap: true"), "{yaml}");
        assert!(!yaml.contains("staticPodPath"), "{yaml}");
    }

    #[test]
    fn taints_parse_and_refuse_garbage() {
        assert_eq!(
            Taint::parse("example.com/key:NoExecute").unwrap(),
            Taint {
                key: "example.com/key".into(),
                value: String::new(),
                effect: "NoExecute".into()
            }
        );
        assert_eq!(Taint::parse("k=v:PreferNoSchedule").unwrap().value, "v");
        for bad in [
            "k=v",
            "k=v:Sometimes",
            ":NoSchedule",
            "bad key:NoSchedule",
            "k=v v:NoSchedule",
        ] {
            assert!(Taint::parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn node_labels_follow_node_restriction() {
        assert!(validate_node_label("tier", "edge").is_ok());
        assert!(validate_node_label("node.kubernetes.io/pool", "a").is_ok());
        assert!(validate_node_label("topology.kubernetes.io/zone", "z1").is_ok());
        assert!(validate_node_label("example.com/x", "").is_ok());
        let e = validate_node_label("node-role.kubernetes.io/worker", "")
            .unwrap_err()
            .to_string();
        assert!(e.contains("may not set"), "{e}");
        assert!(validate_node_label("Bad_Prefix/x", "y").is_err());
        assert!(validate_node_label("x", "has space").is_err());
        assert!(validate_node_label(&"a".repeat(64), "v").is_err());
    }

    #[test]
    fn settings_validation_names_the_field() {
        let mut s = settings();
        s.node_name = "Worker_1".into();
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("node_name"), "{e}");
        let mut s = settings();
        s.healthz_port = s.port;
        assert!(s.validate().is_err());
        let mut s = settings();
        s.extra_args.insert("bad flag".into(), "x".into());
        assert!(s.validate().unwrap_err().to_string().contains("extra_args"));
    }

    #[test]
    fn worker_spec_defaults_validate_and_apply() {
        let spec = WorkerSpec::default();
        assert_eq!(spec.sandbox_image, "registry.k8s.io/pause:3.10");
        spec.validate("f.yaml").unwrap();

        let yaml = "labels:\n  tier: edge\ntaints: [\"dedicated=gpu:NoSchedule\"]\ncgroupDriver: systemd\nkubeletPort: 11250\nsandboxImage: mirror.example/pause:9\n";
        let spec: WorkerSpec = serde_saphyr::from_str(yaml).unwrap();
        spec.validate("f.yaml").unwrap();
        let mut s = settings();
        s.apply_spec(&spec).unwrap();
        assert_eq!(s.labels["tier"], "edge");
        assert_eq!(s.taints[0].key, "dedicated");
        assert_eq!(s.cgroup_driver, CgroupDriver::Systemd);
        assert_eq!(s.port, 11250);
        // The same name containerd gets: kubelet's GC leaves it alone.
        assert_eq!(s.sandbox_image, "mirror.example/pause:9");
        assert!(s
            .args()
            .contains(&"--pod-infra-container-image=mirror.example/pause:9".to_string()));

        let bad: WorkerSpec = serde_saphyr::from_str("taints: [\"x:Never\"]\n").unwrap();
        let e = bad.validate("f.yaml").unwrap_err();
        assert_eq!(e.field(), Some("spec.worker.taints[0]"));
        assert!(serde_saphyr::from_str::<WorkerSpec>("nope: 1\n").is_err());
    }

    #[tokio::test]
    async fn healthz_probe_reads_the_status() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            for answer in [
                "200 OK\r\nContent-Length: 2\r\n\r\nok",
                "500 Internal Server Error\r\nContent-Length: 4\r\n\r\nsick",
            ] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = vec![0u8; 1024];
                let n = s.read(&mut buf).await.unwrap();
                assert!(String::from_utf8_lossy(&buf[..n]).starts_with("GET /healthz HTTP/1.1"));
                s.write_all(format!("HTTP/1.1 {answer}").as_bytes())
                    .await
                    .unwrap();
            }
        });
        probe_healthz(port).await.unwrap();
        let e = probe_healthz(port).await.unwrap_err().to_string();
        assert!(e.contains("500") && e.contains("sick"), "{e}");
        server.await.unwrap();
        // Nothing listens any more: refused, not a hang.
        let e = probe_healthz(port).await.unwrap_err();
        assert!(matches!(e, HealthzError::Connect { .. }), "{e}");
    }
}
