//! `mkectl kubeconfig admin|create`: kubeconfigs for people and tools
//! outside the node. The server is `spec.api.externalAddress` (a load
//! balancer or DNS name) when set, else the node address, so the file works
//! from an operator's machine. Reads the cluster CA from the data dir, so it
//! runs on a controller as root.

use std::net::IpAddr;
use std::str::FromStr;

use anyhow::Context;

use crate::cli::{GlobalArgs, KubeconfigCommand};
use crate::config::{ClusterConfig, ConfigDuration, NodePaths};
use crate::exit::UsageError;
use crate::pki::{self, Ca, KubeconfigUser, PkiPaths};

/// The user name of the admin kubeconfig (its certificate's CN).
pub const ADMIN_USER: &str = "kubernetes-admin";

pub fn run(global: &GlobalArgs, cmd: &KubeconfigCommand) -> anyhow::Result<()> {
    let cfg = super::shared::load_config(global.config.as_deref())?;
    let paths = NodePaths::new(&global.data_dir, &global.run_dir, global.bin_dir.as_deref());
    let pki_paths = PkiPaths::new(&paths.pki_dir());
    let read = |p: &std::path::Path| -> anyhow::Result<String> {
        std::fs::read_to_string(p).with_context(|| {
            format!(
                "reading {} (run on a controller, as root, with its --data-dir)",
                p.display()
            )
        })
    };
    let ca_pem = read(&pki_paths.ca.cert)?;
    let server = external_server_url(&cfg, &crate::config::display_name(global.config.as_deref()))?;
    let text = match cmd {
        KubeconfigCommand::Admin => {
            let cert = read(&pki_paths.admin.cert)?;
            let key = read(&pki_paths.admin.key)?;
            pki::render_kubeconfig(
                &cfg.metadata.name,
                &server,
                &ca_pem,
                ADMIN_USER,
                KubeconfigUser::ClientCert {
                    cert_pem: &cert,
                    key_pem: &key,
                },
            )?
        }
        KubeconfigCommand::Create {
            user,
            groups,
            expiry,
        } => {
            let (user, groups) = check_identity(user, groups)?;
            let lifetime = match expiry {
                None => cfg.spec.pki.leaf_lifetime.as_duration(),
                Some(e) => {
                    let d = ConfigDuration::from_str(e)
                        .map_err(|m| UsageError(format!("--expiry: {m}")))?
                        .as_duration();
                    if d.is_zero() {
                        return Err(UsageError("--expiry must be greater than zero".into()).into());
                    }
                    d
                }
            };
            let issued = pki::issue_client_cert(
                &pki_paths.dir,
                Ca::Cluster,
                &user,
                &groups,
                lifetime,
                cfg.spec.pki.key_type,
            )?;
            pki::render_kubeconfig(
                &cfg.metadata.name,
                &server,
                &ca_pem,
                &user,
                KubeconfigUser::ClientCert {
                    cert_pem: &issued.cert_pem,
                    key_pem: &issued.key_pem,
                },
            )?
        }
    };
    print!("{text}");
    Ok(())
}

/// A user name and groups fit for a certificate subject and RBAC.
fn check_identity(user: &str, groups: &[String]) -> Result<(String, Vec<String>), UsageError> {
    let ok = |s: &str| !s.is_empty() && !s.chars().any(char::is_control);
    let user = user.trim();
    if !ok(user) {
        return Err(UsageError(format!(
            "USER {user:?} must be a non-empty name without control characters"
        )));
    }
    let mut out = Vec::new();
    for g in groups.iter().map(|g| g.trim()) {
        if !ok(g) {
            return Err(UsageError(format!(
                "--groups: {g:?} must be a non-empty name without control characters"
            )));
        }
        if !out.iter().any(|o: &String| o == g) {
            out.push(g.to_string());
        }
    }
    Ok((user.to_string(), out))
}

/// `https://<externalAddress or node address>:<api port>`.
pub fn external_server_url(
    cfg: &ClusterConfig,
    file: &str,
) -> Result<String, crate::config::ConfigError> {
    let host = match &cfg.spec.api.external_address {
        Some(a) => a.clone(),
        None => cfg.node_address(file)?.to_string(),
    };
    Ok(match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(a)) => format!("https://[{a}]:{}", cfg.spec.api.port),
        _ => format!("https://{host}:{}", cfg.spec.api.port),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_prefers_the_external_address() {
        let mut cfg = ClusterConfig::default();
        cfg.spec.api.address = Some("192.0.2.7".parse().unwrap());
        assert_eq!(
            external_server_url(&cfg, "t").unwrap(),
            "https://192.0.2.7:6443"
        );
        cfg.spec.api.external_address = Some("k8s.example.com".into());
        assert_eq!(
            external_server_url(&cfg, "t").unwrap(),
            "https://k8s.example.com:6443"
        );
        cfg.spec.api.external_address = Some("2001:db8::5".into());
        assert_eq!(
            external_server_url(&cfg, "t").unwrap(),
            "https://[2001:db8::5]:6443"
        );
    }

    #[test]
    fn identities_are_checked() {
        let (u, g) = check_identity(" jane ", &["dev".into(), "dev".into(), "ops".into()]).unwrap();
        assert_eq!(u, "jane");
        assert_eq!(g, ["dev", "ops"]);
        assert!(check_identity("", &[]).is_err());
        assert!(check_identity("a\nb", &[]).is_err());
        assert!(check_identity("a", &["".into()]).is_err());
    }
}
