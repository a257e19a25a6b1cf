//! Kubeconfig files (clientcmd `v1` `Config`) with embedded credentials.

use base64::Engine;
use serde::Serialize;

use super::error::PkiError;

#[derive(Serialize)]
struct Kubeconfig<'a> {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    kind: &'static str,
    clusters: Vec<NamedCluster<'a>>,
    contexts: Vec<NamedContext<'a>>,
    #[serde(rename = "current-context")]
    current_context: String,
    users: Vec<NamedUser<'a>>,
}

#[derive(Serialize)]
struct NamedCluster<'a> {
    name: &'a str,
    cluster: Cluster<'a>,
}

#[derive(Serialize)]
struct Cluster<'a> {
    server: &'a str,
    #[serde(rename = "certificate-authority-data")]
    certificate_authority_data: String,
}

#[derive(Serialize)]
struct NamedContext<'a> {
    name: String,
    context: Context<'a>,
}

#[derive(Serialize)]
struct Context<'a> {
    cluster: &'a str,
    user: &'a str,
}

#[derive(Serialize)]
struct NamedUser<'a> {
    name: &'a str,
    user: User<'a>,
}

#[derive(Serialize)]
struct User<'a> {
    #[serde(
        rename = "client-certificate-data",
        skip_serializing_if = "Option::is_none"
    )]
    client_certificate_data: Option<String>,
    #[serde(rename = "client-key-data", skip_serializing_if = "Option::is_none")]
    client_key_data: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<&'a str>,
}

/// How the kubeconfig's user authenticates.
#[derive(Clone, Copy)]
pub enum KubeconfigUser<'a> {
    /// Client certificate and key, both PEM, embedded base64.
    ClientCert { cert_pem: &'a str, key_pem: &'a str },
    /// Bearer token, e.g. a bootstrap token `abcdef.0123456789abcdef`.
    Token(&'a str),
}

impl std::fmt::Debug for KubeconfigUser<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KubeconfigUser::ClientCert { .. } => f.write_str("ClientCert([elided])"),
            KubeconfigUser::Token(_) => f.write_str("Token([elided])"),
        }
    }
}

/// Renders a kubeconfig with one cluster, one user and one context
/// (`<user>@<cluster>`, current). The result is secret when it embeds a key
/// or token: write it 0600.
pub fn render_kubeconfig(
    cluster_name: &str,
    server: &str,
    ca_pem: &str,
    user_name: &str,
    user: KubeconfigUser<'_>,
) -> Result<String, PkiError> {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    let user_entry = match user {
        KubeconfigUser::ClientCert { cert_pem, key_pem } => User {
            client_certificate_data: Some(b64(cert_pem)),
            client_key_data: Some(b64(key_pem)),
            token: None,
        },
        KubeconfigUser::Token(token) => User {
            client_certificate_data: None,
            client_key_data: None,
            token: Some(token),
        },
    };
    let context_name = format!("{user_name}@{cluster_name}");
    let config = Kubeconfig {
        api_version: "v1",
        kind: "Config",
        clusters: vec![NamedCluster {
            name: cluster_name,
            cluster: Cluster {
                server,
                certificate_authority_data: b64(ca_pem),
            },
        }],
        contexts: vec![NamedContext {
            name: context_name.clone(),
            context: Context {
                cluster: cluster_name,
                user: user_name,
            },
        }],
        current_context: context_name,
        users: vec![NamedUser {
            name: user_name,
            user: user_entry,
        }],
    };
    // Plain scalars (as kubectl writes them) rather than folded `>-` blocks
    // for the long base64 values.
    let options = serde_saphyr::ser_options! { prefer_block_scalars: false };
    serde_saphyr::to_string_with_options(&config, options).map_err(|source| PkiError::Kubeconfig {
        name: user_name.to_string(),
        source,
    })
}
