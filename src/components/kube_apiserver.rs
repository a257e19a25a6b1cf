//! kube-apiserver as a supervised child, with the flags of the pinned release
//! ([`KUBERNETES_VERSION`](super::kube_common::KUBERNETES_VERSION)).
//!
//! What the flags enforce:
//! * authentication by client certificate (cluster CA), bootstrap tokens and
//!   service-account tokens only: `--anonymous-auth=false`;
//! * authorization `Node,RBAC`, admission adds `NodeRestriction`;
//! * etcd over mTLS with the apiserver's etcd client certificate, on the
//!   loopback client URL;
//! * kubelet connections verified against the cluster CA and authenticated
//!   with the apiserver-kubelet-client certificate;
//! * front-proxy (requestheader) authentication for aggregated APIs;
//! * TLS 1.2+ with ECDHE/AEAD suites, `--profiling=false`;
//! * everything bound for nodes (logs, exec, port-forward, webhooks) goes
//!   through konnectivity: `--egress-selector-config-file` selects `cluster`
//!   traffic → gRPC over the konnectivity server's UDS.
//!
//! `init` writes the egress selector file and `<data-dir>/config/kube-apiserver.args`
//! (the exact argv). Readiness is `GET /readyz` over TLS, trusting the
//! cluster CA and authenticating as the admin, like `kubectl get --raw /readyz`.
//!
//! Stop: the apiserver drains on SIGTERM. With `--shutdown-delay-duration`
//! (set only when several controllers run, so a load balancer sees `/readyz`
//! fail before the listener closes) it first keeps serving for that long, then
//! waits for in-flight requests, which `--request-timeout` (upstream default
//! 1m) bounds. The stop grace is the sum of both plus a margin.
//! `--shutdown-send-retry-after` keeps the drain short: without it the
//! listener closes first and the HTTP server then waits the whole request
//! timeout for connections carrying watches (every controller-manager,
//! scheduler and kubelet holds some), so each restart, e.g. for a renewed
//! certificate, took the API away for a full minute. With it the apiserver
//! answers 429 + Retry-After (which clients retry) until in-flight requests
//! are done, then gives watches 2 s.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::kube_common::{
    fs_err, parse_go_duration, secure_endpoint, write_args_file, Flags, KubeProcess,
};
use super::{Component, ComponentError};
use crate::config::{ClusterConfig, NodePaths};
use crate::fsutil;
use crate::https_probe::{ClientIdentity, HttpsProbe, ServerTrust, PROBE_TIMEOUT};
use crate::pki::PkiPaths;

pub const NAME: &str = "kube-apiserver";
/// A cold apiserver runs its post-start hooks (RBAC bootstrap, priority
/// classes, ...) against etcd before `/readyz` passes.
pub const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Upstream's default `--request-timeout`: the longest a non-long-running
/// request may take, so the longest the drain waits for one.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// `--shutdown-delay-duration` with more than one controller.
pub const HA_SHUTDOWN_DELAY: Duration = Duration::from_secs(10);
/// Added to delay + request timeout before SIGKILL.
pub const STOP_GRACE_MARGIN: Duration = Duration::from_secs(10);
/// Admission plugins enabled on top of upstream's defaults.
pub const ADMISSION_PLUGINS: &str = "NodeRestriction";
/// `--authorization-mode`.
pub const AUTHORIZATION_MODE: &str = "Node,RBAC";
/// Only the front-proxy client certificate may assert identities in headers.
pub const REQUESTHEADER_ALLOWED_NAMES: &str = "front-proxy-client";

/// `apiVersion` and `kind` of the egress selector file.
pub const EGRESS_API_VERSION: &str = "apiserver.k8s.io/v1beta1";
pub const EGRESS_KIND: &str = "EgressSelectorConfiguration";
/// The selection that carries traffic to nodes, pods and services.
pub const EGRESS_CLUSTER: &str = "cluster";
pub const EGRESS_PROXY_PROTOCOL_GRPC: &str = "GRPC";

/// The schema of the apiserver's `EgressSelectorConfiguration`
/// (apiserver.k8s.io/v1beta1) restricted to what mkectl writes: one
/// selection, UDS transport. The file itself is rendered by
/// [`crate::konnectivity::egress_selector_config`] (one writer for the
/// konnectivity server and the apiserver); these types parse it back with
/// unknown fields refused, so tests and `init` prove its exact shape.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EgressSelectorConfiguration {
    pub api_version: String,
    pub kind: String,
    pub egress_selections: Vec<EgressSelection>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EgressSelection {
    pub name: String,
    pub connection: EgressConnection,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EgressConnection {
    pub proxy_protocol: String,
    pub transport: EgressTransport,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EgressTransport {
    pub uds: UdsTransport,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UdsTransport {
    pub uds_name: String,
}

impl EgressSelectorConfiguration {
    /// Whether this routes `cluster` traffic over gRPC to `uds`, and nothing else.
    pub fn is_cluster_grpc_over(&self, uds: &Path) -> bool {
        self.api_version == EGRESS_API_VERSION
            && self.kind == EGRESS_KIND
            && self.egress_selections.len() == 1
            && self.egress_selections[0].name == EGRESS_CLUSTER
            && self.egress_selections[0].connection.proxy_protocol == EGRESS_PROXY_PROTOCOL_GRPC
            && Path::new(&self.egress_selections[0].connection.transport.uds.uds_name) == uds
    }
}

/// Everything the apiserver's flags are built from.
#[derive(Debug, Clone)]
pub struct KubeApiserverSettings {
    /// `--advertise-address` (and `--bind-address` unless `bind_address`).
    pub node_address: IpAddr,
    /// `--bind-address`: the node address, or loopback when a single-port
    /// front owns the node address's port ([`crate::expose`]).
    pub bind_address: IpAddr,
    pub secure_port: u16,
    pub etcd_servers: Vec<String>,
    pub service_cidr: String,
    pub cluster_domain: String,
    pub pki: PkiPaths,
    pub egress_selector_file: PathBuf,
    pub konnectivity_uds: PathBuf,
    /// Controllers in the cluster; more than one adds a shutdown delay.
    pub controller_count: usize,
    pub extra_args: BTreeMap<String, String>,
}

impl KubeApiserverSettings {
    /// The settings of this node from its config.
    pub fn from_config(
        cfg: &ClusterConfig,
        paths: &NodePaths,
        pki: &PkiPaths,
        node_address: IpAddr,
        controller_count: usize,
    ) -> Self {
        let bind_address = match (cfg.single_port(), node_address) {
            (false, a) => a,
            (true, IpAddr::V4(_)) => IpAddr::from([127, 0, 0, 1]),
            (true, IpAddr::V6(_)) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        };
        Self {
            node_address,
            bind_address,
            secure_port: cfg.spec.api.port,
            etcd_servers: vec![crate::etcd::local_url(cfg.spec.etcd.client_port)],
            service_cidr: cfg.spec.network.service_cidr.to_string(),
            cluster_domain: cfg.spec.network.cluster_domain.clone(),
            pki: pki.clone(),
            egress_selector_file: paths.egress_selector_file(),
            konnectivity_uds: paths.konnectivity_uds(),
            controller_count,
            extra_args: cfg.spec.extra_args.kube_apiserver.clone(),
        }
    }

    /// `https://kubernetes.default.svc.<domain>`: the service-account token
    /// issuer and API audience.
    pub fn service_account_issuer(&self) -> String {
        format!("https://kubernetes.default.svc.{}", self.cluster_domain)
    }

    fn shutdown_delay(&self) -> Duration {
        if self.controller_count > 1 {
            HA_SHUTDOWN_DELAY
        } else {
            Duration::ZERO
        }
    }

    /// The final flags, `extraArgs` applied.
    pub fn flags(&self) -> Flags {
        let pki = &self.pki;
        let mut f = Flags::new();
        f.set("advertise-address", self.node_address.to_string());
        f.set("bind-address", self.bind_address.to_string());
        f.set("secure-port", self.secure_port.to_string());
        f.set_path("tls-cert-file", &pki.apiserver.cert);
        f.set_path("tls-private-key-file", &pki.apiserver.key);
        f.set("tls-min-version", crate::tlspolicy::MIN_VERSION);
        f.set("tls-cipher-suites", crate::tlspolicy::cipher_suites_flag());
        f.set_path("client-ca-file", &pki.ca.cert);
        f.set("anonymous-auth", "false");
        f.set("enable-bootstrap-token-auth", "true");
        f.set("authorization-mode", AUTHORIZATION_MODE);
        f.set("enable-admission-plugins", ADMISSION_PLUGINS);
        f.set("allow-privileged", "true");
        f.set("profiling", "false");
        f.set("etcd-servers", self.etcd_servers.join(","));
        f.set_path("etcd-cafile", &pki.etcd_ca.cert);
        f.set_path("etcd-certfile", &pki.apiserver_etcd_client.cert);
        f.set_path("etcd-keyfile", &pki.apiserver_etcd_client.key);
        f.set_path("kubelet-certificate-authority", &pki.ca.cert);
        f.set_path(
            "kubelet-client-certificate",
            &pki.apiserver_kubelet_client.cert,
        );
        f.set_path("kubelet-client-key", &pki.apiserver_kubelet_client.key);
        f.set(
            "kubelet-preferred-address-types",
            "InternalIP,ExternalIP,Hostname",
        );
        f.set("service-cluster-ip-range", self.service_cidr.clone());
        f.set("service-account-issuer", self.service_account_issuer());
        f.set("api-audiences", self.service_account_issuer());
        f.set_path("service-account-key-file", &pki.sa_pub);
        f.set_path("service-account-signing-key-file", &pki.sa_key);
        f.set_path("requestheader-client-ca-file", &pki.front_proxy_ca.cert);
        f.set("requestheader-allowed-names", REQUESTHEADER_ALLOWED_NAMES);
        f.set("requestheader-username-headers", "X-Remote-User");
        f.set("requestheader-group-headers", "X-Remote-Group");
        f.set("requestheader-extra-headers-prefix", "X-Remote-Extra-");
        f.set_path("proxy-client-cert-file", &pki.front_proxy_client.cert);
        f.set_path("proxy-client-key-file", &pki.front_proxy_client.key);
        f.set_path("egress-selector-config-file", &self.egress_selector_file);
        f.set("shutdown-send-retry-after", "true");
        let delay = self.shutdown_delay();
        if !delay.is_zero() {
            f.set("shutdown-delay-duration", format!("{}s", delay.as_secs()));
        }
        f.merge_extra(&self.extra_args);
        f
    }

    /// The argv (without the program).
    pub fn args(&self) -> Vec<String> {
        self.flags().to_args()
    }

    /// SIGTERM → SIGKILL grace: shutdown delay + request timeout + margin,
    /// read from the final flags so `extraArgs` changes are honoured.
    pub fn stop_grace(&self) -> Result<Duration, ComponentError> {
        let flags = self.flags();
        let dur = |flag: &str, default: Duration| -> Result<Duration, ComponentError> {
            match flags.get(flag) {
                None => Ok(default),
                Some(v) => parse_go_duration(v).ok_or_else(|| ComponentError::BadFlag {
                    component: NAME,
                    flag: flag.to_string(),
                    value: v.to_string(),
                    problem: "not a duration like 10s or 1m0s",
                }),
            }
        };
        Ok(dur("shutdown-delay-duration", Duration::ZERO)?
            + dur("request-timeout", DEFAULT_REQUEST_TIMEOUT)?
            + STOP_GRACE_MARGIN)
    }

    /// `GET /readyz` as the admin, trusting the cluster CA.
    pub fn readiness_probe(&self) -> Result<HttpsProbe, ComponentError> {
        let addr = secure_endpoint(NAME, &self.flags(), self.secure_port)?;
        Ok(HttpsProbe {
            addr,
            path: "/readyz".into(),
            trust: ServerTrust::CaFile(self.pki.ca.cert.clone()),
            client: Some(ClientIdentity {
                cert: self.pki.admin.cert.clone(),
                key: self.pki.admin.key.clone(),
            }),
            timeout: PROBE_TIMEOUT,
        })
    }
}

pub struct KubeApiserver {
    settings: KubeApiserverSettings,
    paths: NodePaths,
    process: KubeProcess,
    probe: Option<HttpsProbe>,
}

impl KubeApiserver {
    pub fn new(settings: KubeApiserverSettings, paths: NodePaths) -> Self {
        Self {
            process: KubeProcess::new(NAME, paths.clone()),
            settings,
            paths,
            probe: None,
        }
    }

    pub fn process(&self) -> &KubeProcess {
        &self.process
    }
}

/// The leaves this component reads (see `Component::uses_certs`).
const LEAVES: [crate::pki::Leaf; 4] = [
    crate::pki::Leaf::ApiServer,
    crate::pki::Leaf::ApiServerKubeletClient,
    crate::pki::Leaf::ApiServerEtcdClient,
    crate::pki::Leaf::FrontProxyClient,
];

#[async_trait::async_trait]
impl Component for KubeApiserver {
    fn name(&self) -> &'static str {
        NAME
    }

    fn supervised(&self) -> Option<&crate::supervisor::Supervised> {
        self.process.child()
    }

    /// Renewing one of these restarts the process (status, rotation).
    fn uses_certs(&self) -> &[crate::pki::Leaf] {
        &LEAVES
    }

    async fn init(&mut self) -> Result<(), ComponentError> {
        // Validate what extraArgs may have broken before anything starts.
        self.settings.stop_grace()?;
        self.probe = Some(self.settings.readiness_probe()?);
        // The konnectivity server writes the same file in its own init; the
        // apiserver cannot start without it, so it is written here too (the
        // write is idempotent) and checked against the schema.
        let file = &self.settings.egress_selector_file;
        let uds = &self.settings.konnectivity_uds;
        if let Some(dir) = file.parent() {
            fsutil::ensure_dir(dir, fsutil::PRIVATE_DIR_MODE).map_err(fs_err(NAME))?;
        }
        crate::konnectivity::write_egress_selector_config(file, uds)
            .map_err(|e| ComponentError::during(NAME, format!("writing {}", file.display()), e))?;
        let text = fsutil::read(file).map_err(fs_err(NAME))?;
        let parsed: EgressSelectorConfiguration = serde_saphyr::from_slice(&text)
            .map_err(|e| ComponentError::during(NAME, format!("parsing {}", file.display()), e))?;
        if !parsed.is_cluster_grpc_over(uds) {
            return Err(ComponentError::Invalid {
                component: NAME,
                problem: format!(
                    "{} does not route cluster traffic over gRPC to {}",
                    file.display(),
                    uds.display()
                ),
            });
        }
        write_args_file(NAME, &self.paths, &self.settings.args())?;
        Ok(())
    }

    async fn start(&mut self) -> Result<(), ComponentError> {
        let grace = self.settings.stop_grace()?;
        self.process.start(self.settings.args(), grace).await
    }

    async fn ready(&self) -> Result<(), ComponentError> {
        let probe = match &self.probe {
            Some(p) => p.clone(),
            None => self.settings.readiness_probe()?,
        };
        probe.check().await.map_err(|e| ComponentError::NotReady {
            component: NAME,
            message: crate::telemetry::Chain(&e).to_string(),
        })
    }

    async fn stop(&mut self) -> Result<(), ComponentError> {
        self.process.stop().await;
        Ok(())
    }

    fn ready_timeout(&self) -> Duration {
        READY_TIMEOUT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> KubeApiserverSettings {
        let cfg = ClusterConfig::default();
        let paths = NodePaths::new(Path::new("/d"), Path::new("/r"), None);
        let pki = PkiPaths::new(&paths.pki_dir());
        KubeApiserverSettings::from_config(&cfg, &paths, &pki, "192.0.2.10".parse().unwrap(), 1)
    }

    #[test]
    fn single_port_binds_loopback_and_advertises_the_node() {
        let mut cfg = ClusterConfig::default();
        cfg.spec.api.expose_strategy = crate::config::ExposeStrategy::SinglePort;
        let paths = NodePaths::new(Path::new("/d"), Path::new("/r"), None);
        let pki = PkiPaths::new(&paths.pki_dir());
        for (node, bind) in [("192.0.2.10", "127.0.0.1"), ("2001:db8::10", "::1")] {
            let s =
                KubeApiserverSettings::from_config(&cfg, &paths, &pki, node.parse().unwrap(), 1);
            let f = s.flags();
            assert_eq!(f.get("bind-address").unwrap(), bind);
            assert_eq!(f.get("advertise-address").unwrap(), node);
            assert_eq!(f.get("secure-port").unwrap(), "6443");
        }
    }

    #[test]
    fn security_flags() {
        let f = settings().flags();
        let get = |k| f.get(k).unwrap_or_else(|| panic!("--{k} missing"));
        assert_eq!(get("anonymous-auth"), "false");
        assert_eq!(get("authorization-mode"), "Node,RBAC");
        assert_eq!(get("enable-admission-plugins"), "NodeRestriction");
        assert_eq!(get("enable-bootstrap-token-auth"), "true");
        assert_eq!(get("profiling"), "false");
        assert_eq!(get("tls-min-version"), "VersionTLS12");
        assert!(!get("tls-cipher-suites").contains("CBC"));
        assert_eq!(get("bind-address"), "192.0.2.10");
        assert_eq!(get("advertise-address"), "192.0.2.10");
        assert_eq!(get("secure-port"), "6443");
        assert_eq!(get("etcd-servers"), "https://127.0.0.1:2379");
        assert_eq!(get("service-cluster-ip-range"), "10.96.0.0/12");
        assert_eq!(
            get("service-account-issuer"),
            "https://kubernetes.default.svc.cluster.local"
        );
        assert_eq!(get("api-audiences"), get("service-account-issuer"));
        assert_eq!(get("service-account-key-file"), "/d/pki/sa.pub");
        assert_eq!(get("service-account-signing-key-file"), "/d/pki/sa.key");
        assert_eq!(get("requestheader-allowed-names"), "front-proxy-client");
        assert_eq!(
            get("egress-selector-config-file"),
            "/d/config/egress-selector.yaml"
        );
        assert!(f.get("shutdown-delay-duration").is_none());
        assert_eq!(get("shutdown-send-retry-after"), "true");
    }

    #[test]
    fn extra_args_override_and_grace_follows() {
        let mut s = settings();
        assert_eq!(s.stop_grace().unwrap(), Duration::from_secs(70));
        s.controller_count = 3;
        assert_eq!(s.flags().get("shutdown-delay-duration"), Some("10s"));
        assert_eq!(s.stop_grace().unwrap(), Duration::from_secs(80));
        s.extra_args.insert("request-timeout".into(), "2m0s".into());
        s.extra_args.insert("--profiling".into(), "true".into());
        assert_eq!(s.flags().get("profiling"), Some("true"));
        assert_eq!(s.stop_grace().unwrap(), Duration::from_secs(140));
        s.extra_args.insert("request-timeout".into(), "soon".into());
        let e = s.stop_grace().unwrap_err().to_string();
        assert!(
            e.contains("request-timeout") && e.contains("extraArgs"),
            "{e}"
        );
    }

    #[test]
    fn probe_targets_the_bind_address() {
        let mut s = settings();
        let p = s.readiness_probe().unwrap();
        assert_eq!(p.addr, "192.0.2.10:6443".parse().unwrap());
        assert_eq!(p.path, "/readyz");
        assert_eq!(p.trust, ServerTrust::CaFile("/d/pki/ca.crt".into()));
        assert_eq!(p.client.unwrap().cert, PathBuf::from("/d/pki/admin.crt"));
        s.extra_args.insert("bind-address".into(), "0.0.0.0".into());
        assert_eq!(
            s.readiness_probe().unwrap().addr,
            "127.0.0.1:6443".parse().unwrap()
        );
    }

    #[test]
    fn egress_selector_file_matches_the_schema_and_refuses_unknown_fields() {
        let uds = Path::new("/r/konnectivity-server.sock");
        let yaml = crate::konnectivity::egress_selector_config(uds).unwrap();
        let parsed: EgressSelectorConfiguration = serde_saphyr::from_str(&yaml).unwrap();
        assert!(parsed.is_cluster_grpc_over(uds), "{yaml}");
        assert!(!parsed.is_cluster_grpc_over(Path::new("/elsewhere.sock")));
        let bad = yaml.replace("proxyProtocol", "proxyProtocl");
        assert!(serde_saphyr::from_str::<EgressSelectorConfiguration>(&bad).is_err());
    }
}
