//! `spec.worker`: what containerd, kubelet, kube-proxy and the node-local
//! apiserver balancer take from the operator, with its validation (label
//! and taint syntax included). The components re-export these types.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{defaults, ConfigError};

/// Taint effects kubelet accepts.
pub const TAINT_EFFECTS: &[&str] = &["NoSchedule", "PreferNoSchedule", "NoExecute"];
/// Labels in the `kubernetes.io`/`k8s.io` namespaces a kubelet may set on its
/// own Node (the NodeRestriction rules kubelet enforces at start).
pub const ALLOWED_KUBERNETES_LABELS: &[&str] = &[
    "beta.kubernetes.io/arch",
    "beta.kubernetes.io/instance-type",
    "beta.kubernetes.io/os",
    "failure-domain.beta.kubernetes.io/region",
    "failure-domain.beta.kubernetes.io/zone",
    "kubernetes.io/arch",
    "kubernetes.io/hostname",
    "kubernetes.io/os",
    "node.kubernetes.io/instance-type",
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
];
/// Label prefixes (namespaces) in `kubernetes.io` a kubelet may use freely.
pub const ALLOWED_KUBERNETES_LABEL_NAMESPACES: &[&str] =
    &["kubelet.kubernetes.io", "node.kubernetes.io"];

/// How containerd and kubelet pick their cgroup driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriverSetting {
    /// `systemd` when systemd is init, else `cgroupfs` (`components::containerd::CgroupDriver::detect`).
    #[default]
    Auto,
    Systemd,
    Cgroupfs,
}

/// What a failed required host check does (see [`crate::hostcheck`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Enforcement {
    /// Refuse to start (exit 69).
    #[default]
    Enforce,
    /// Log a warning and start anyway.
    Warn,
}

/// The worker section of the cluster config (`spec.worker`): what containerd
/// and kubelet take from the operator. `mkectl worker --labels/--taints` add
/// to `labels` and `taints`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkerSpec {
    /// Pause image for pod sandboxes (point it at a private registry offline).
    pub sandbox_image: String,
    pub cgroup_driver: CgroupDriverSetting,
    /// Node labels set at registration (`key: value`).
    pub labels: BTreeMap<String, String>,
    /// Taints set at registration: `key[=value]:Effect`.
    pub taints: Vec<String>,
    /// kubelet API port (on the node IP).
    pub kubelet_port: u16,
    /// kubelet healthz port (on 127.0.0.1).
    pub kubelet_healthz_port: u16,
    /// kube-proxy healthz port (on the node address).
    pub kube_proxy_healthz_port: u16,
    /// kube-proxy metrics port (on 127.0.0.1).
    pub kube_proxy_metrics_port: u16,
    /// The node-local apiserver load balancer on `127.0.0.1` (see
    /// `crate::apilb`); 0 turns it off and the node's kubelet and kube-proxy
    /// talk to the controller the node joined through.
    pub api_load_balancer_port: u16,
    /// Where containerd looks for CNI plugins (Debian's
    /// containernetworking-plugins install them in `/usr/lib/cni`).
    pub cni_bin_dir: PathBuf,
    /// Where containerd looks for the CNI network config (`provider: custom`
    /// puts its conflist here).
    pub cni_conf_dir: PathBuf,
    /// What a failed host prerequisite does at start (see [`crate::hostcheck`]).
    pub host_checks: Enforcement,
    /// Where kubelet keeps container logs; unset = kubelet's
    /// `/var/log/pods`. Several kubelets on one host need one each: a
    /// kubelet removes log directories of pods it does not know.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_logs_dir: Option<PathBuf>,
    /// kubelet's `cgroupRoot` (must exist in every cgroup hierarchy); unset
    /// = `/`. Several kubelets on one host need one each: a kubelet removes
    /// pod cgroups it does not know.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup_root: Option<String>,
}

impl Default for WorkerSpec {
    fn default() -> Self {
        Self {
            sandbox_image: defaults::SANDBOX_IMAGE.into(),
            cgroup_driver: CgroupDriverSetting::default(),
            labels: BTreeMap::new(),
            taints: Vec::new(),
            kubelet_port: defaults::KUBELET_PORT,
            kubelet_healthz_port: defaults::KUBELET_HEALTHZ_PORT,
            kube_proxy_healthz_port: defaults::KUBE_PROXY_HEALTHZ_PORT,
            kube_proxy_metrics_port: defaults::KUBE_PROXY_METRICS_PORT,
            api_load_balancer_port: defaults::API_LOAD_BALANCER_PORT,
            cni_bin_dir: defaults::CNI_BIN_DIR.into(),
            cni_conf_dir: defaults::CNI_CONF_DIR.into(),
            host_checks: Enforcement::default(),
            pod_logs_dir: None,
            cgroup_root: None,
        }
    }
}

impl WorkerSpec {
    /// Checks every value; errors name `spec.worker.<field>` in `file`.
    pub fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let err = |field: String, message: String| ConfigError::Invalid {
            file: file.into(),
            field: format!("spec.worker.{field}"),
            message,
        };
        if self.sandbox_image.trim().is_empty() || self.sandbox_image.contains(char::is_whitespace)
        {
            return Err(err(
                "sandboxImage".into(),
                "must be an image reference".into(),
            ));
        }
        for (k, v) in &self.labels {
            validate_node_label(k, v).map_err(|m| err(format!("labels.{k}"), m.to_string()))?;
        }
        if let Some(root) = &self.cgroup_root {
            if !root.starts_with('/') || root.contains(char::is_whitespace) {
                return Err(err(
                    "cgroupRoot".into(),
                    "must be an absolute cgroup path".into(),
                ));
            }
        }
        for (i, t) in self.taints.iter().enumerate() {
            Taint::parse(t).map_err(|m| err(format!("taints[{i}]"), m.to_string()))?;
        }
        let mut ports = vec![
            ("kubeletPort", self.kubelet_port),
            ("kubeletHealthzPort", self.kubelet_healthz_port),
            ("kubeProxyHealthzPort", self.kube_proxy_healthz_port),
            ("kubeProxyMetricsPort", self.kube_proxy_metrics_port),
        ];
        // 0 = no balancer; any other value must be free like the rest.
        if self.api_load_balancer_port != 0 {
            ports.push(("apiLoadBalancerPort", self.api_load_balancer_port));
        }
        for (i, (field, port)) in ports.iter().enumerate() {
            if *port == 0 {
                return Err(err((*field).into(), "must be 1-65535".into()));
            }
            if let Some((other, _)) = ports[..i].iter().find(|(_, p)| p == port) {
                return Err(err((*field).into(), format!("must differ from {other}")));
            }
        }
        let logs = self.pod_logs_dir.iter().map(|d| ("podLogsDir", d));
        for (field, dir) in [
            ("cniBinDir", &self.cni_bin_dir),
            ("cniConfDir", &self.cni_conf_dir),
        ]
        .into_iter()
        .chain(logs)
        {
            if !dir.is_absolute() {
                return Err(err(field.into(), "must be an absolute path".into()));
            }
        }
        Ok(())
    }
}

/// A node taint (`registerWithTaints` entry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Taint {
    pub key: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value: String,
    pub effect: String,
}

impl Taint {
    /// Parses `key[=value]:Effect`.
    pub fn parse(s: &str) -> Result<Taint, TaintError> {
        let (kv, effect) = s.rsplit_once(':').ok_or_else(|| TaintError::Syntax {
            taint: s.to_string(),
        })?;
        if !TAINT_EFFECTS.contains(&effect) {
            return Err(TaintError::Effect {
                taint: s.to_string(),
            });
        }
        let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
        validate_qualified_name(key).map_err(|problem| TaintError::Key {
            taint: s.to_string(),
            problem,
        })?;
        validate_label_value(value).map_err(|problem| TaintError::Value {
            taint: s.to_string(),
            problem,
        })?;
        Ok(Taint {
            key: key.into(),
            value: value.into(),
            effect: effect.into(),
        })
    }
}

/// A taint that is not `key[=value]:Effect` with a valid key and value.
/// `problem` is a finding about one part of the taint, not a failure it
/// caused, so it is part of the message rather than a `source`.
#[derive(Debug, thiserror::Error)]
pub enum TaintError {
    #[error("{taint:?}: expected key[=value]:Effect")]
    Syntax { taint: String },
    #[error("{taint:?}: effect must be one of {}", TAINT_EFFECTS.join(", "))]
    Effect { taint: String },
    #[error("{taint:?}: key {problem}")]
    Key { taint: String, problem: LabelError },
    #[error("{taint:?}: value {problem}")]
    Value { taint: String, problem: LabelError },
}

/// A node label key or value Kubernetes (or NodeRestriction) refuses.
#[derive(Debug, thiserror::Error)]
pub enum LabelError {
    #[error("{key:?}: prefix must be a lowercase DNS subdomain")]
    Prefix { key: String },
    #[error("{key:?}: name must be 1-63 letters, digits, '-', '_', '.', starting and ending alphanumeric")]
    Name { key: String },
    #[error("{value:?}: must be empty or 1-63 letters, digits, '-', '_', '.', starting and ending alphanumeric")]
    Value { value: String },
    #[error(
        "{key:?}: kubelet may not set labels in the kubernetes.io/k8s.io namespaces except under {} or {}",
        ALLOWED_KUBERNETES_LABEL_NAMESPACES.join(", "),
        ALLOWED_KUBERNETES_LABELS.join(", ")
    )]
    Restricted { key: String },
}

/// `[a-zA-Z0-9]([-a-zA-Z0-9_.]*[a-zA-Z0-9])?`, at most 63 characters.
fn is_label_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// A lowercase RFC 1123 DNS subdomain (what Node names and label prefixes are).
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        })
}

/// A label key: `[prefix/]name`, prefix a DNS subdomain.
fn validate_qualified_name(key: &str) -> Result<(), LabelError> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if !is_dns_subdomain(p) {
            return Err(LabelError::Prefix { key: key.into() });
        }
    }
    if !is_label_name(name) {
        return Err(LabelError::Name { key: key.into() });
    }
    Ok(())
}

fn validate_label_value(v: &str) -> Result<(), LabelError> {
    if v.is_empty() || is_label_name(v) {
        Ok(())
    } else {
        Err(LabelError::Value { value: v.into() })
    }
}

/// A label kubelet may set on its own Node: a valid key and value, and in the
/// `kubernetes.io` / `k8s.io` namespaces only what NodeRestriction allows.
pub fn validate_node_label(key: &str, value: &str) -> Result<(), LabelError> {
    validate_qualified_name(key)?;
    validate_label_value(value)?;
    if let Some((prefix, _)) = key.split_once('/') {
        let k8s_namespace = ["kubernetes.io", "k8s.io"]
            .iter()
            .any(|ns| prefix == *ns || prefix.ends_with(&format!(".{ns}")));
        let allowed = ALLOWED_KUBERNETES_LABELS.contains(&key)
            || ALLOWED_KUBERNETES_LABEL_NAMESPACES
                .iter()
                .any(|ns| prefix == *ns || prefix.ends_with(&format!(".{ns}")));
        if k8s_namespace && !allowed {
            return Err(LabelError::Restricted { key: key.into() });
        }
    }
    Ok(())
}
