//! Reads a kubeconfig (clientcmd `v1` `Config`) into what the client needs:
//! the current context's server, CA and credentials.
//!
//! Supported: client certificates and keys (embedded `-data` or files),
//! bearer tokens (`token` or `tokenFile`), the CA (embedded or file). File
//! paths are relative to the kubeconfig's directory, as kubectl reads them.
//! `exec` and `auth-provider` plugins are refused with a clear error: mkectl
//! writes the kubeconfigs its controllers use, and none runs a plugin.

use std::path::{Path, PathBuf};

use base64::Engine;
use serde::Deserialize;

use super::client::ClientConfig;
use super::error::KubeClientError;

#[derive(Deserialize)]
struct Kubeconfig {
    #[serde(rename = "current-context", default)]
    current_context: String,
    #[serde(default)]
    clusters: Vec<Named<Cluster>>,
    #[serde(default)]
    contexts: Vec<Named<Context>>,
    #[serde(default)]
    users: Vec<Named<User>>,
}

#[derive(Deserialize)]
struct Named<T> {
    name: String,
    #[serde(alias = "cluster", alias = "context", alias = "user")]
    value: T,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Cluster {
    server: String,
    #[serde(rename = "certificate-authority-data")]
    ca_data: Option<String>,
    #[serde(rename = "certificate-authority")]
    ca_file: Option<PathBuf>,
    #[serde(rename = "insecure-skip-tls-verify")]
    insecure: bool,
    #[serde(rename = "proxy-url")]
    proxy_url: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Context {
    cluster: String,
    user: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct User {
    #[serde(rename = "client-certificate-data")]
    cert_data: Option<String>,
    #[serde(rename = "client-certificate")]
    cert_file: Option<PathBuf>,
    #[serde(rename = "client-key-data")]
    key_data: Option<String>,
    #[serde(rename = "client-key")]
    key_file: Option<PathBuf>,
    token: Option<String>,
    #[serde(rename = "tokenFile")]
    token_file: Option<PathBuf>,
    exec: Option<serde::de::IgnoredAny>,
    #[serde(rename = "auth-provider")]
    auth_provider: Option<serde::de::IgnoredAny>,
}

/// Reads the kubeconfig at `path`.
pub fn load(path: &Path) -> Result<ClientConfig, KubeClientError> {
    let text = std::fs::read_to_string(path).map_err(|source| KubeClientError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, path)
}

/// Parses kubeconfig `text`; `path` names it in errors and anchors relative
/// file references.
pub fn parse(text: &str, path: &Path) -> Result<ClientConfig, KubeClientError> {
    let kc: Kubeconfig = serde_saphyr::from_str(text).map_err(|e| KubeClientError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let missing = |field: String| KubeClientError::Missing {
        path: path.to_path_buf(),
        field,
    };
    // No current context: a kubeconfig with exactly one context means it.
    let context = if kc.current_context.is_empty() && kc.contexts.len() == 1 {
        &kc.contexts[0].value
    } else {
        &kc.contexts
            .iter()
            .find(|c| c.name == kc.current_context)
            .ok_or_else(|| {
                missing(format!(
                    "contexts[name={:?}] (current-context)",
                    kc.current_context
                ))
            })?
            .value
    };
    let cluster = &kc
        .clusters
        .iter()
        .find(|c| c.name == context.cluster)
        .ok_or_else(|| missing(format!("clusters[name={:?}]", context.cluster)))?
        .value;
    let user = kc
        .users
        .iter()
        .find(|u| u.name == context.user)
        .map(|u| &u.value);
    if cluster.server.is_empty() {
        return Err(missing("clusters[].cluster.server".into()));
    }
    let unsupported = |field: &str, why: &'static str| KubeClientError::Unsupported {
        path: path.to_path_buf(),
        field: field.to_string(),
        why,
    };
    if cluster.insecure {
        return Err(unsupported(
            "clusters[].cluster.insecure-skip-tls-verify",
            "the server is always verified",
        ));
    }
    if cluster.proxy_url.is_some() {
        return Err(unsupported(
            "clusters[].cluster.proxy-url",
            "controllers talk to the API server directly",
        ));
    }
    let base = path.parent().unwrap_or(Path::new("."));
    let source = Source { path, base };
    let ca_pem = source.bytes(
        "clusters[].cluster.certificate-authority",
        cluster.ca_data.as_deref(),
        cluster.ca_file.as_deref(),
    )?;
    let mut cfg = ClientConfig {
        server: cluster.server.clone(),
        ca_pem,
        client_cert_pem: None,
        client_key_pem: None,
        token: None,
    };
    if let Some(user) = user {
        if user.exec.is_some() {
            return Err(unsupported(
                "users[].user.exec",
                "credential plugins are not run",
            ));
        }
        if user.auth_provider.is_some() {
            return Err(unsupported(
                "users[].user.auth-provider",
                "auth provider plugins are not run",
            ));
        }
        cfg.client_cert_pem = source.bytes(
            "users[].user.client-certificate",
            user.cert_data.as_deref(),
            user.cert_file.as_deref(),
        )?;
        cfg.client_key_pem = source.bytes(
            "users[].user.client-key",
            user.key_data.as_deref(),
            user.key_file.as_deref(),
        )?;
        if cfg.client_cert_pem.is_some() != cfg.client_key_pem.is_some() {
            return Err(missing(if cfg.client_cert_pem.is_some() {
                "users[].user.client-key (the certificate has no key)".into()
            } else {
                "users[].user.client-certificate (the key has no certificate)".into()
            }));
        }
        cfg.token = match (&user.token, &user.token_file) {
            (Some(t), _) if !t.is_empty() => Some(t.clone()),
            (_, Some(f)) => {
                let raw = source.read("users[].user.tokenFile", f)?;
                Some(String::from_utf8_lossy(&raw).trim().to_string())
            }
            _ => None,
        };
    }
    Ok(cfg)
}

/// Where a kubeconfig's referenced files are read from.
struct Source<'a> {
    path: &'a Path,
    base: &'a Path,
}

impl Source<'_> {
    /// `<field>-data` (base64) wins over `<field>` (a file), as in kubectl.
    fn bytes(
        &self,
        field: &str,
        data: Option<&str>,
        file: Option<&Path>,
    ) -> Result<Option<Vec<u8>>, KubeClientError> {
        if let Some(d) = data.filter(|d| !d.is_empty()) {
            let cleaned: String = d.chars().filter(|c| !c.is_whitespace()).collect();
            return base64::engine::general_purpose::STANDARD
                .decode(cleaned)
                .map(Some)
                .map_err(|source| KubeClientError::Base64 {
                    path: self.path.to_path_buf(),
                    field: format!("{field}-data"),
                    source,
                });
        }
        match file.filter(|f| !f.as_os_str().is_empty()) {
            Some(f) => self.read(field, f).map(Some),
            None => Ok(None),
        }
    }

    fn read(&self, field: &str, file: &Path) -> Result<Vec<u8>, KubeClientError> {
        let full = self.base.join(file);
        std::fs::read(&full).map_err(|source| KubeClientError::ReadFile {
            path: self.path.to_path_buf(),
            field: field.to_string(),
            file: full,
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn reads_what_mkectl_writes() {
        let text = crate::pki::render_kubeconfig(
            "mke",
            "https://127.0.0.1:6443",
            "CA PEM",
            "admin",
            crate::pki::KubeconfigUser::ClientCert {
                cert_pem: "CERT",
                key_pem: "KEY",
            },
        )
        .unwrap();
        let cfg = parse(&text, Path::new("/x/admin.conf")).unwrap();
        assert_eq!(cfg.server, "https://127.0.0.1:6443");
        assert_eq!(cfg.ca_pem.as_deref(), Some(&b"CA PEM"[..]));
        assert_eq!(cfg.client_cert_pem.as_deref(), Some(&b"CERT"[..]));
        assert_eq!(cfg.client_key_pem.as_deref(), Some(&b"KEY"[..]));
        assert!(cfg.token.is_none());
    }

    #[test]
    fn files_are_relative_to_the_kubeconfig_and_tokens_are_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.crt"), "CA").unwrap();
        std::fs::write(dir.path().join("token"), "abc.def\n").unwrap();
        let text = "apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters:\n- name: k\n  cluster:\n    server: https://127.0.0.1:1\n    certificate-authority: ca.crt\ncontexts:\n- name: c\n  context: {cluster: k, user: u}\nusers:\n- name: u\n  user:\n    tokenFile: token\npreferences: {}\n";
        let cfg = parse(text, &dir.path().join("kc")).unwrap();
        assert_eq!(cfg.ca_pem.as_deref(), Some(&b"CA"[..]));
        assert_eq!(cfg.token.as_deref(), Some("abc.def"));
    }

    #[test]
    fn refuses_what_it_cannot_honour_and_names_the_field() {
        let base = |user: &str| {
            format!(
                "current-context: c\nclusters:\n- name: k\n  cluster:\n    server: https://127.0.0.1:1\n    certificate-authority-data: {}\ncontexts:\n- name: c\n  context: {{cluster: k, user: u}}\nusers:\n- name: u\n  user:\n{user}",
                b64("CA")
            )
        };
        let err = |text: String| parse(&text, Path::new("kc")).unwrap_err().to_string();
        assert!(err(base("    exec: {command: x}\n")).contains("users[].user.exec"));
        assert!(err(base(&format!(
            "    client-certificate-data: {}\n",
            b64("C")
        )))
        .contains("users[].user.client-key"));
        assert!(err(base("    client-key-data: '%%%'\n")).contains("client-key-data"));
        assert!(err("current-context: nope\ncontexts: []\n".into()).contains("current-context"));
    }
}
