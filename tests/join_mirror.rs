//! Worker tokens are mirrored as `bootstrap.kubernetes.io/token` Secrets so
//! kubelet TLS bootstrap works: the join API's mirror against the stateful
//! fake Kubernetes API (no kube-apiserver on these machines).

mod common_applier;

use std::time::Duration;

use common_applier::FakeKube;
use mkectl::join::mirror::mirror_bootstrap_token;
use mkectl::join::{BootstrapToken, Role, StoredToken};

#[tokio::test(flavor = "multi_thread")]
async fn worker_token_becomes_a_bootstrap_token_secret() {
    let fake = FakeKube::start().await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("admin.conf");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\nusers:\n- name: u\n  user:\n    token: admin\n",
            fake.url()
        ),
    )
    .unwrap();
    let token = BootstrapToken::generate();
    let stored = StoredToken::new(
        &token,
        Role::Worker,
        Some(Duration::from_secs(3600)),
        "rack 3",
    );
    mirror_bootstrap_token(&kubeconfig, &token, &stored)
        .await
        .unwrap();
    // Idempotent: a second worker joining with the same token re-applies.
    mirror_bootstrap_token(&kubeconfig, &token, &stored)
        .await
        .unwrap();

    let name = format!("bootstrap-token-{}", token.id);
    let secret = fake
        .get("", "secrets", Some("kube-system"), &name)
        .expect("Secret created");
    assert_eq!(secret["type"], "bootstrap.kubernetes.io/token");
    let data = &secret["stringData"];
    assert_eq!(data["token-id"], token.id.as_str());
    assert_eq!(data["token-secret"], token.secret());
    assert_eq!(data["usage-bootstrap-authentication"], "true");
    assert_eq!(data["usage-bootstrap-signing"], "true");
    assert_eq!(data["description"], "rack 3");
    assert!(data["expiration"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        data["auth-extra-groups"],
        "system:bootstrappers:mkectl:default-node-token"
    );
}
