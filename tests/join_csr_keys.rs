//! Issue 17, item 5: the join API signs worker CSRs for ECDSA P-256 keys
//! only (what `mkectl worker` generates, as the design says). CSRs made by
//! openssl with other keys are refused with 400 naming the key type; one
//! whose signature cannot be checked at all (P-521) is refused as such,
//! not as a bad signature.

mod common;

use std::process::Command;
use std::time::Duration;

use common::join::{ctl_args, token_create, wait_log};
use common::*;
use mkectl::join::wire::{agent_common_name, WorkerJoinRequest};
use mkectl::join::{JoinClient, JoinError, JoinToken};

const START: Duration = Duration::from_secs(60);

/// A CSR for `node`'s agent from openssl with `newkey` (`ec`+curve, `rsa:N`,
/// `ed25519`).
fn openssl_csr(dir: &std::path::Path, node: &str, newkey: &[&str]) -> String {
    let out = dir.join(format!("{node}.csr"));
    output_ok(
        Command::new("openssl")
            .args(["req", "-new", "-nodes", "-newkey"])
            .args(newkey)
            .arg("-keyout")
            .arg(dir.join(format!("{node}.key")))
            .arg("-out")
            .arg(&out)
            .args(["-subj", &format!("/CN={}", agent_common_name(node))]),
    );
    std::fs::read_to_string(out).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn only_p256_agent_keys_are_signed_and_others_are_named() {
    let c1 = Node::with_address("csr1", "127.0.0.1", "");
    let mut p1 = c1.start_controller(&ctl_args(&[]));
    wait_log(&mut p1, "controller ready", START);
    let tok = JoinToken::decode(&token_create(&c1, "worker", &[])).unwrap();
    let client = JoinClient::for_token(&tok).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let join = |node: &str, csr: String| {
        let client = client.clone();
        let req = WorkerJoinRequest {
            node_name: node.into(),
            address: "127.0.0.95".into(),
            csr,
        };
        async move { client.join_worker(&req).await }
    };

    let csr = openssl_csr(
        dir.path(),
        "k-p256",
        &["ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
    );
    join("k-p256", csr).await.expect("P-256 is signed");

    for (node, newkey, named) in [
        (
            "k-p384",
            &["ec", "-pkeyopt", "ec_paramgen_curve:P-384"][..],
            "an ECDSA P-384 key",
        ),
        ("k-rsa", &["rsa:2048"][..], "an RSA-2048 key"),
        ("k-ed", &["ed25519"][..], "an Ed25519 key"),
        (
            "k-p521",
            &["ec", "-pkeyopt", "ec_paramgen_curve:P-521"][..],
            "ECDSA P-521, is not supported",
        ),
    ] {
        let csr = openssl_csr(dir.path(), node, newkey);
        match join(node, csr).await {
            Err(JoinError::Refused {
                status, message, ..
            }) => {
                assert_eq!(status, 400, "{node}: {message}");
                assert!(message.contains(named), "{node}: {message}");
                assert!(!message.contains("signature"), "{node}: {message}");
            }
            other => panic!("{node}: {other:?}"),
        }
    }
}
