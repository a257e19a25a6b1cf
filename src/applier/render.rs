//! Default stacks: the templates in `manifests/` (embedded at build time)
//! rendered with the cluster's addresses and the configured images, and
//! written into `<manifests>/<stack>/` where the applier picks them up.
//!
//! Templates use `{{ NAME }}` placeholders. Every value is validated before
//! it is substituted (images, hosts, paths are restricted to characters that
//! cannot break out of a YAML scalar), and a template that names an unknown
//! placeholder is an error, so a typo never ships a literal `{{ X }}`.

use crate::config::{ClusterConfig, NetworkProvider};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;

use super::settings::{AddonsSettings, DEFAULT_CALICO_VERSION};
use super::ApplierError;
use crate::fsutil;

pub const STACK_BOOTSTRAP_RBAC: &str = "bootstrap-rbac";
pub const STACK_COREDNS: &str = "coredns";
pub const STACK_KUBE_PROXY: &str = "kube-proxy";
pub const STACK_CALICO: &str = "calico";
pub const STACK_KUBE_ROUTER: &str = "kube-router";

/// Every stack name the controller owns. A disabled one is removed from disk
/// (and so pruned from the cluster by the applier).
pub const DEFAULT_STACKS: [&str; 5] = [
    STACK_BOOTSTRAP_RBAC,
    STACK_COREDNS,
    STACK_KUBE_PROXY,
    STACK_CALICO,
    STACK_KUBE_ROUTER,
];

const TPL_BOOTSTRAP_RBAC: &str = include_str!("../../manifests/bootstrap-rbac.yaml");
const TPL_COREDNS: &str = include_str!("../../manifests/coredns.yaml");
const TPL_KUBE_PROXY: &str = include_str!("../../manifests/kube-proxy.yaml");
const TPL_CALICO: &str = include_str!("../../manifests/calico.yaml");
const TPL_KUBE_ROUTER: &str = include_str!("../../manifests/kube-router.yaml");

/// The pod network provider (`network.provider`; the lead maps the config enum to this).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Calico,
    Kuberouter,
    /// No CNI stack: the operator drops their own into a stack of their choosing.
    Custom,
}

/// Cluster facts the templates need.
#[derive(Debug, Clone)]
pub struct RenderInputs {
    /// Service IP of kube-dns (usually the 10th address of the service CIDR).
    pub cluster_dns_ip: IpAddr,
    pub cluster_domain: String,
    pub pod_cidr: IpNet,
    pub service_cidr: IpNet,
    /// Address pods use to reach the apiserver directly (no Service, no kube-proxy).
    pub api_server_host: String,
    pub api_server_port: u16,
    pub provider: Provider,
    pub cni_bin_dir: PathBuf,
    pub cni_conf_dir: PathBuf,
}

/// One rendered manifest file: `<manifests>/<stack>/<file>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedFile {
    pub stack: String,
    pub file: String,
    pub contents: String,
}

/// What [`write_default_stacks`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DefaultStacksReport {
    /// Stacks written (enabled by the config).
    pub enabled: Vec<String>,
    /// Default stacks the config disables; their directories were removed.
    /// Pass them as [`super::ApplierConfig::removed_stacks`] so the applier
    /// prunes them even though it never saw their directory.
    pub disabled: Vec<String>,
    /// Files whose content changed on disk.
    pub changed: Vec<PathBuf>,
}

/// The config checks that need the templates: rendering the default stacks
/// checks images and the add-on settings against the network values before
/// anything is written. Every command that loads a config calls this after
/// `ClusterConfig::load` (config/ sits below the applier and cannot).
pub fn check_config(
    cfg: &crate::config::ClusterConfig,
    file: &str,
) -> Result<(), crate::config::ConfigError> {
    let inputs = RenderInputs::from_config(cfg, std::net::IpAddr::from([127, 0, 0, 1]));
    render_default_stacks(&cfg.spec.addons, &inputs)
        .map(drop)
        .map_err(|e| crate::config::ConfigError::Invalid {
            file: file.into(),
            field: "spec.addons".into(),
            message: e.to_string(),
        })
}

/// Renders every enabled default stack.
pub fn render_default_stacks(
    settings: &AddonsSettings,
    inputs: &RenderInputs,
) -> Result<Vec<RenderedFile>, ApplierError> {
    let values = placeholder_values(settings, inputs)?;
    let mut out = Vec::new();
    let mut push = |stack: &str, template: &str| -> Result<(), ApplierError> {
        out.push(RenderedFile {
            stack: stack.to_string(),
            file: format!("{stack}.yaml"),
            contents: substitute(stack, template, &values)?,
        });
        Ok(())
    };
    if settings.bootstrap_rbac.enabled {
        push(STACK_BOOTSTRAP_RBAC, TPL_BOOTSTRAP_RBAC)?;
    }
    if settings.coredns.enabled {
        push(STACK_COREDNS, TPL_COREDNS)?;
    }
    if settings.kube_proxy.enabled {
        push(STACK_KUBE_PROXY, TPL_KUBE_PROXY)?;
    }
    if settings.cni.enabled {
        match inputs.provider {
            Provider::Calico => {
                if !inputs.pod_cidr.addr().is_ipv4() {
                    return Err(invalid(
                        "podCIDR",
                        &inputs.pod_cidr.to_string(),
                        "the calico stack supports an IPv4 pod CIDR only",
                    ));
                }
                push(STACK_CALICO, TPL_CALICO)?;
            }
            Provider::Kuberouter => push(STACK_KUBE_ROUTER, TPL_KUBE_ROUTER)?,
            Provider::Custom => {}
        }
    }
    Ok(out)
}

/// Renders the default stacks and writes them atomically under
/// `manifests_dir`, removing the directories of default stacks the config
/// disables. Idempotent: unchanged files are not rewritten.
pub fn write_default_stacks(
    manifests_dir: &Path,
    settings: &AddonsSettings,
    inputs: &RenderInputs,
) -> Result<DefaultStacksReport, ApplierError> {
    let rendered = render_default_stacks(settings, inputs)?;
    let mut report = DefaultStacksReport::default();
    for f in &rendered {
        let dir = manifests_dir.join(&f.stack);
        fsutil::ensure_dir(&dir, fsutil::PRIVATE_DIR_MODE)?;
        let path = dir.join(&f.file);
        if fsutil::write_atomic(&path, f.contents.as_bytes(), fsutil::PUBLIC_FILE_MODE)? {
            report.changed.push(path);
        }
        report.enabled.push(f.stack.clone());
    }
    for stack in DEFAULT_STACKS {
        if report.enabled.iter().any(|s| s == stack) {
            continue;
        }
        let dir = manifests_dir.join(stack);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(ApplierError::Io { path: dir, source }),
        }
        report.disabled.push(stack.to_string());
    }
    Ok(report)
}

fn placeholder_values(
    s: &AddonsSettings,
    i: &RenderInputs,
) -> Result<BTreeMap<&'static str, String>, ApplierError> {
    check_dns_name("clusterDomain", &i.cluster_domain)?;
    if !i.service_cidr.contains(&i.cluster_dns_ip) {
        return Err(invalid(
            "clusterDNS",
            &i.cluster_dns_ip.to_string(),
            &format!("not inside the service CIDR {}", i.service_cidr),
        ));
    }
    let host = i
        .api_server_host
        .trim_start_matches('[')
        .trim_end_matches(']');
    if host.parse::<IpAddr>().is_err() {
        check_dns_name("apiServerHost", host)?;
    }
    let url_host = match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(_)) => format!("[{host}]"),
        _ => host.to_string(),
    };
    let mut v = BTreeMap::new();
    v.insert("CLUSTER_DNS_IP", i.cluster_dns_ip.to_string());
    v.insert("CLUSTER_DOMAIN", i.cluster_domain.clone());
    // Normalise (10.244.1.0/16 -> 10.244.0.0/16): components reject host bits.
    v.insert("POD_CIDR", i.pod_cidr.trunc().to_string());
    v.insert("SERVICE_CIDR", i.service_cidr.trunc().to_string());
    v.insert("API_SERVER_HOST", host.to_string());
    v.insert("API_SERVER_PORT", i.api_server_port.to_string());
    v.insert(
        "API_SERVER_URL",
        format!("https://{url_host}:{}", i.api_server_port),
    );
    v.insert("CNI_BIN_DIR", check_path("cniBinDir", &i.cni_bin_dir)?);
    v.insert("CNI_CONF_DIR", check_path("cniConfDir", &i.cni_conf_dir)?);
    v.insert(
        "COREDNS_IMAGE",
        check_image("addons.coredns.image", &s.coredns.image)?,
    );
    if s.coredns.replicas == 0 {
        return Err(invalid(
            "addons.coredns.replicas",
            "0",
            "must be at least 1",
        ));
    }
    v.insert("COREDNS_REPLICAS", s.coredns.replicas.to_string());
    v.insert(
        "KUBE_PROXY_IMAGE",
        check_image("addons.kubeProxy.image", &s.kube_proxy.image)?,
    );
    let c = &s.cni.calico;
    v.insert("CALICO_VERSION", DEFAULT_CALICO_VERSION.to_string());
    v.insert(
        "CALICO_CNI_IMAGE",
        check_image("addons.cni.calico.cniImage", &c.cni_image)?,
    );
    v.insert(
        "CALICO_NODE_IMAGE",
        check_image("addons.cni.calico.nodeImage", &c.node_image)?,
    );
    v.insert(
        "CALICO_KUBE_CONTROLLERS_IMAGE",
        check_image(
            "addons.cni.calico.kubeControllersImage",
            &c.kube_controllers_image,
        )?,
    );
    if c.mtu != 0 && !(576..=9000).contains(&c.mtu) {
        return Err(invalid(
            "addons.cni.calico.mtu",
            &c.mtu.to_string(),
            "must be 0 (auto) or between 576 and 9000",
        ));
    }
    v.insert("CALICO_MTU", c.mtu.to_string());
    if c.vxlan_port == 0 {
        return Err(invalid("addons.cni.calico.vxlanPort", "0", "must not be 0"));
    }
    v.insert("CALICO_VXLAN_PORT", c.vxlan_port.to_string());
    v.insert(
        "KUBE_ROUTER_IMAGE",
        check_image("addons.cni.kubeRouter.image", &s.cni.kube_router.image)?,
    );
    Ok(v)
}

/// Replaces every `{{ NAME }}` in `template`; unknown names are an error.
fn substitute(
    stack: &str,
    template: &str,
    values: &BTreeMap<&'static str, String>,
) -> Result<String, ApplierError> {
    let mut out = String::with_capacity(template.len() + 256);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or_else(|| ApplierError::Template {
            stack: stack.to_string(),
            message: "unterminated '{{'".to_string(),
        })?;
        let name = after[..end].trim();
        let value = values.get(name).ok_or_else(|| ApplierError::Template {
            stack: stack.to_string(),
            message: format!("unknown placeholder {name:?}"),
        })?;
        out.push_str(value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

fn invalid(field: &str, value: &str, reason: &str) -> ApplierError {
    ApplierError::InvalidSetting {
        field: field.to_string(),
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

/// Image references: registry/path:tag or @digest, nothing that could end a
/// YAML scalar or start a new one.
fn check_image(field: &str, image: &str) -> Result<String, ApplierError> {
    let ok = !image.is_empty()
        && image.len() <= 512
        && image
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '/' | ':' | '@' | '_' | '-'))
        && image
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
    if !ok {
        return Err(invalid(field, image, "not a valid image reference"));
    }
    Ok(image.to_string())
}

fn check_dns_name(field: &str, name: &str) -> Result<(), ApplierError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if !ok {
        return Err(invalid(field, name, "not a valid DNS name"));
    }
    Ok(())
}

fn check_path(field: &str, path: &Path) -> Result<String, ApplierError> {
    let s = path.to_string_lossy();
    let ok = path.is_absolute()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-'));
    if !ok {
        return Err(invalid(
            field,
            &s,
            "must be an absolute path of [A-Za-z0-9/._-]",
        ));
    }
    Ok(s.into_owned())
}

/// The values the default stack templates are rendered with.
impl RenderInputs {
    /// The inputs of a cluster config, the apiserver reached at
    /// `node_address` unless `spec.api.externalAddress` says otherwise.
    pub fn from_config(cfg: &ClusterConfig, node_address: std::net::IpAddr) -> RenderInputs {
        let api_host = cfg
            .spec
            .api
            .external_address
            .clone()
            .unwrap_or_else(|| node_address.to_string());
        RenderInputs {
            cluster_dns_ip: cfg.cluster_dns_ip(),
            cluster_domain: cfg.spec.network.cluster_domain.clone(),
            // validate() refused CIDRs that do not parse.
            pod_cidr: cfg.spec.network.pod_cidr,
            service_cidr: cfg.service_cidr(),
            api_server_host: api_host,
            api_server_port: cfg.spec.api.port,
            provider: match cfg.spec.network.provider {
                NetworkProvider::Calico => Provider::Calico,
                NetworkProvider::Kuberouter => Provider::Kuberouter,
                NetworkProvider::Custom => Provider::Custom,
            },
            // Where the workers' containerd looks: the CNI DaemonSets must
            // install there.
            cni_bin_dir: cfg.spec.worker.cni_bin_dir.clone(),
            cni_conf_dir: cfg.spec.worker.cni_conf_dir.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitution_rejects_unknown_and_unterminated() {
        let mut v = BTreeMap::new();
        v.insert("A", "1".to_string());
        assert_eq!(substitute("s", "x{{ A }}y{{A}}", &v).unwrap(), "x1y1");
        assert!(substitute("s", "{{ B }}", &v)
            .unwrap_err()
            .to_string()
            .contains("\"B\""));
        assert!(substitute("s", "{{ A", &v).is_err());
    }

    #[test]
    fn image_and_name_checks() {
        assert!(check_image("f", "reg.local:5000/calico/node@sha256:abc").is_ok());
        assert!(check_image("f", "x\"\ny: z").is_err());
        assert!(check_image("f", "").is_err());
        assert!(check_dns_name("f", "cluster.local").is_ok());
        assert!(check_dns_name("f", "bad_domain").is_err());
        assert!(check_path("f", Path::new("/opt/cni/bin")).is_ok());
        assert!(check_path("f", Path::new("opt/cni")).is_err());
    }
}
