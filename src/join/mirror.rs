//! Mirrors a worker token as a `bootstrap.kubernetes.io/token` Secret in
//! kube-system, so the kubelet's TLS bootstrap (which presents the same
//! token to kube-apiserver) is authenticated. Done by the join API when a
//! worker joins, which is just before its kubelet needs it; only on
//! controllers that run kube-apiserver.

use std::collections::BTreeMap;
use std::path::Path;

use crate::kubeapi::{Api, KubeError};
use k8s_openapi::api::core::v1::Secret;

use super::token::{BootstrapToken, StoredToken};

/// Group the kubelet bootstrap RBAC binds (besides `system:bootstrappers`).
pub const EXTRA_GROUP: &str = "system:bootstrappers:mkectl:default-node-token";
/// Field manager of the server-side apply.
const FIELD_MANAGER: &str = "mkectl-join-api";

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("cannot build a Kubernetes client from {path}: {reason}")]
    Client { path: String, reason: String },
    #[error("cannot apply Secret kube-system/{name}")]
    Apply { name: String, source: KubeError },
}

/// The Secret for `token` (what kubeadm creates for its tokens).
pub fn bootstrap_secret(token: &BootstrapToken, stored: &StoredToken) -> Secret {
    let mut data = BTreeMap::new();
    data.insert("token-id".to_string(), token.id.clone());
    data.insert("token-secret".to_string(), token.secret().to_string());
    data.insert("usage-bootstrap-authentication".to_string(), "true".into());
    data.insert("usage-bootstrap-signing".to_string(), "true".into());
    data.insert("auth-extra-groups".to_string(), EXTRA_GROUP.into());
    if !stored.description.is_empty() {
        data.insert("description".to_string(), stored.description.clone());
    }
    if let Some(exp) = stored.expires {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(exp);
        data.insert(
            "expiration".to_string(),
            humantime::format_rfc3339_seconds(at).to_string(),
        );
    }
    Secret {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(format!("bootstrap-token-{}", token.id)),
            namespace: Some("kube-system".into()),
            ..Default::default()
        },
        type_: Some("bootstrap.kubernetes.io/token".into()),
        string_data: Some(data),
        ..Default::default()
    }
}

/// Applies the Secret for `token` with the admin kubeconfig.
pub async fn mirror_bootstrap_token(
    kubeconfig: &Path,
    token: &BootstrapToken,
    stored: &StoredToken,
) -> Result<(), MirrorError> {
    let client =
        crate::kubeapi::client_from_kubeconfig(kubeconfig).map_err(|e| MirrorError::Client {
            path: kubeconfig.display().to_string(),
            reason: e.to_string(),
        })?;
    let api: Api<Secret> = Api::namespaced(client, "kube-system");
    let secret = bootstrap_secret(token, stored);
    let name = format!("bootstrap-token-{}", token.id);
    api.apply(&name, FIELD_MANAGER, true, &secret)
        .await
        .map_err(|source| MirrorError::Apply { name, source })?;
    tracing::info!(component = "join-api", token_id = %token.id, "mirrored the worker token as a bootstrap-token Secret");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::join::token::Role;

    #[test]
    fn secret_has_the_bootstrap_token_shape() {
        let t = BootstrapToken::generate();
        let st = StoredToken::new(
            &t,
            Role::Worker,
            Some(std::time::Duration::from_secs(60)),
            "w",
        );
        let s = bootstrap_secret(&t, &st);
        assert_eq!(s.type_.as_deref(), Some("bootstrap.kubernetes.io/token"));
        assert_eq!(s.metadata.name, Some(format!("bootstrap-token-{}", t.id)));
        let d = s.string_data.unwrap();
        assert_eq!(d["token-id"], t.id);
        assert_eq!(d["token-secret"], t.secret());
        assert_eq!(d["usage-bootstrap-authentication"], "true");
        assert!(d["expiration"].ends_with('Z'));
    }
}
