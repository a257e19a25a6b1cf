//! Validation of a parsed ClusterConfig. Runs before anything binds or spawns;
//! the first problem found is reported with its field path.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use super::{defaults, ClusterConfig, ConfigError};

struct Ctx<'a> {
    file: &'a str,
}

impl Ctx<'_> {
    fn err(&self, field: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.into(),
            field: field.into(),
            message: message.into(),
        }
    }

    fn cidr(&self, field: &str, net: IpNet) -> Result<IpNet, ConfigError> {
        let value = net.to_string();
        if net.trunc() != net {
            return Err(self.err(
                field,
                format!("{value:?} has host bits set; did you mean {}?", net.trunc()),
            ));
        }
        Ok(net)
    }

    fn port(&self, field: &str, value: u16) -> Result<u16, ConfigError> {
        if value == 0 {
            return Err(self.err(field, "port 0 is not allowed (1-65535)"));
        }
        Ok(value)
    }

    fn args(&self, field: &str, args: &BTreeMap<String, String>) -> Result<(), ConfigError> {
        for key in args.keys() {
            let name = key.trim_start_matches('-');
            let ok = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
            if !ok {
                return Err(self.err(
                    &format!("{field}.{key}"),
                    "not a valid flag name (letters, digits, '-', '_', '.')",
                ));
            }
        }
        Ok(())
    }
}

/// A DNS name per RFC 1123 (labels of letters, digits and '-').
pub(crate) fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

pub(super) fn validate(cfg: &ClusterConfig, file: &str) -> Result<(), ConfigError> {
    let c = Ctx { file };
    if cfg.api_version != defaults::API_VERSION {
        return Err(c.err(
            "apiVersion",
            format!(
                "must be {:?}, got {:?}",
                defaults::API_VERSION,
                cfg.api_version
            ),
        ));
    }
    if cfg.kind != defaults::KIND {
        return Err(c.err(
            "kind",
            format!("must be {:?}, got {:?}", defaults::KIND, cfg.kind),
        ));
    }
    if !is_dns_name(&cfg.metadata.name) {
        return Err(c.err("metadata.name", "must be a DNS-style name"));
    }
    let s = &cfg.spec;

    if let Some(a) = &s.api.address {
        let ip = *a;
        if ip.is_unspecified() || ip.is_multicast() {
            return Err(c.err("spec.api.address", format!("{a} cannot be a node address")));
        }
    }
    if let Some(a) = &s.api.external_address {
        if a.parse::<IpAddr>().is_err() && !is_dns_name(a) {
            return Err(c.err(
                "spec.api.externalAddress",
                format!("{a:?} is neither an IP address nor a DNS name"),
            ));
        }
    }
    for (i, san) in s.api.sans.iter().enumerate() {
        if san.parse::<IpAddr>().is_err() && !is_dns_name(san.trim_start_matches("*.")) {
            return Err(c.err(
                &format!("spec.api.sans[{i}]"),
                format!("{san:?} is neither an IP address nor a DNS name"),
            ));
        }
    }

    let pod = c.cidr("spec.network.podCIDR", s.network.pod_cidr)?;
    let svc = c.cidr("spec.network.serviceCIDR", s.network.service_cidr)?;
    if pod.contains(&svc.network()) || svc.contains(&pod.network()) {
        return Err(c.err(
            "spec.network.serviceCIDR",
            format!("{svc} overlaps spec.network.podCIDR {pod}"),
        ));
    }
    let host_bits = svc.max_prefix_len() - svc.prefix_len();
    if host_bits < 4 {
        return Err(c.err(
            "spec.network.serviceCIDR",
            format!(
                "{svc} is too small: it needs at least 16 addresses (the DNS service is the 10th)"
            ),
        ));
    }
    if pod.max_prefix_len() - pod.prefix_len() < 8 {
        return Err(c.err(
            "spec.network.podCIDR",
            format!("{pod} is too small: it needs at least 256 addresses"),
        ));
    }
    if !is_dns_name(&s.network.cluster_domain) {
        return Err(c.err(
            "spec.network.clusterDomain",
            format!("{:?} is not a DNS domain", s.network.cluster_domain),
        ));
    }

    c.port("spec.api.port", s.api.port)?;
    c.port("spec.etcd.clientPort", s.etcd.client_port)?;
    c.port("spec.etcd.peerPort", s.etcd.peer_port)?;
    c.port("spec.konnectivity.agentPort", s.konnectivity.agent_port)?;
    c.port("spec.konnectivity.adminPort", s.konnectivity.admin_port)?;
    c.port("spec.joinApi.port", s.join_api.port)?;
    c.port("spec.metrics.port", s.metrics.port)?;
    let ports = [
        ("spec.api.port", s.api.port),
        ("spec.etcd.clientPort", s.etcd.client_port),
        ("spec.etcd.peerPort", s.etcd.peer_port),
        ("spec.konnectivity.agentPort", s.konnectivity.agent_port),
        ("spec.konnectivity.adminPort", s.konnectivity.admin_port),
        ("spec.joinApi.port", s.join_api.port),
        ("spec.metrics.port", s.metrics.port),
    ];
    for (i, (name, port)) in ports.iter().enumerate() {
        if let Some((other, _)) = ports[..i].iter().find(|(_, p)| p == port) {
            return Err(c.err(name, format!("port {port} is already used by {other}")));
        }
    }
    if let Some(a) = s.etcd.peer_address {
        if a.is_unspecified() || a.is_multicast() {
            return Err(c.err(
                "spec.etcd.peerAddress",
                format!("{a} cannot be a peer address"),
            ));
        }
    }

    let pki = &s.pki;
    for (field, d) in [
        ("spec.pki.caLifetime", pki.ca_lifetime),
        ("spec.pki.leafLifetime", pki.leaf_lifetime),
        ("spec.pki.renewBefore", pki.renew_before),
    ] {
        if d.0.is_zero() {
            return Err(c.err(field, "must be greater than zero"));
        }
    }
    if pki.leaf_lifetime > pki.ca_lifetime {
        return Err(c.err(
            "spec.pki.leafLifetime",
            format!(
                "{} is longer than spec.pki.caLifetime {}",
                pki.leaf_lifetime, pki.ca_lifetime
            ),
        ));
    }
    if pki.renew_before >= pki.leaf_lifetime {
        return Err(c.err(
            "spec.pki.renewBefore",
            format!(
                "{} must be shorter than spec.pki.leafLifetime {} (leaves would be renewed forever)",
                pki.renew_before, pki.leaf_lifetime
            ),
        ));
    }

    s.worker.validate(file)?;

    // The add-on settings are checked against the templates by
    // `applier::check_config` (the applier sits above config/).

    c.args("spec.etcd.extraArgs", &s.etcd.extra_args)?;
    c.args(
        "spec.extraArgs.kube-apiserver",
        &s.extra_args.kube_apiserver,
    )?;
    c.args(
        "spec.extraArgs.kube-controller-manager",
        &s.extra_args.kube_controller_manager,
    )?;
    c.args(
        "spec.extraArgs.kube-scheduler",
        &s.extra_args.kube_scheduler,
    )?;
    c.args("spec.extraArgs.kubelet", &s.extra_args.kubelet)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::ClusterConfig;

    fn field_of(yaml: &str) -> String {
        let e = ClusterConfig::from_yaml(yaml, "test.yaml").unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("test.yaml: "), "{msg}");
        e.field().unwrap().to_string()
    }

    const HEAD: &str = "apiVersion: mkectl.io/v1beta1\nkind: ClusterConfig\n";

    #[test]
    fn defaults_are_valid_and_round_trip() {
        let d = ClusterConfig::default();
        d.validate("x").unwrap();
        let y = d.to_yaml().unwrap();
        assert_eq!(ClusterConfig::from_yaml(&y, "y").unwrap(), d);
    }

    #[test]
    fn partial_merges_over_defaults() {
        let c = ClusterConfig::from_yaml(
            &format!("{HEAD}spec:\n  network:\n    podCIDR: 10.200.0.0/16\n"),
            "p",
        )
        .unwrap();
        assert_eq!(c.spec.network.pod_cidr.to_string(), "10.200.0.0/16");
        assert_eq!(c.spec.network.service_cidr.to_string(), "10.96.0.0/12");
        assert_eq!(c.spec.api.port, 6443);
        assert_eq!(c.first_service_ip().to_string(), "10.96.0.1");
        assert_eq!(c.cluster_dns_ip().to_string(), "10.96.0.10");
    }

    #[test]
    fn invalid_values_name_their_field() {
        let cases = [
            ("spec:\n  bogus: 1\n", "spec.bogus"),
            (
                "spec:\n  api:\n    address: 300.1.2.3\n",
                "spec.api.address",
            ),
            ("spec:\n  api:\n    port: 70000\n", "spec.api.port"),
            ("spec:\n  api:\n    port: 0\n", "spec.api.port"),
            (
                "spec:\n  network:\n    podCIDR: nope\n",
                "spec.network.podCIDR",
            ),
            (
                "spec:\n  network:\n    podCIDR: 10.96.0.0/16\n",
                "spec.network.serviceCIDR",
            ),
            (
                "spec:\n  network:\n    provider: flannel\n",
                "spec.network.provider",
            ),
            (
                "spec:\n  pki:\n    renewBefore: soon\n",
                "spec.pki.renewBefore",
            ),
            ("spec:\n  pki:\n    keyType: dsa\n", "spec.pki.keyType"),
            (
                "spec:\n  pki:\n    leafLifetime: 24h\n    renewBefore: 48h\n",
                "spec.pki.renewBefore",
            ),
            ("spec:\n  joinApi:\n    port: 6443\n", "spec.joinApi.port"),
            ("spec:\n  metrics:\n    port: 9443\n", "spec.metrics.port"),
            (
                "spec:\n  metrics:\n    address: localhost\n",
                "spec.metrics.address",
            ),
            (
                "spec:\n  api:\n    sans: [\"bad name!\"]\n",
                "spec.api.sans[0]",
            ),
        ];
        for (body, want) in cases {
            let got = field_of(&format!("{HEAD}{body}"));
            assert!(
                got.starts_with(want),
                "{body:?}: field {got:?}, want {want:?}"
            );
        }
        assert_eq!(
            field_of("apiVersion: v1\nkind: ClusterConfig\n"),
            "apiVersion"
        );
    }
}
