//! The command line as an operator meets it: help everywhere, config
//! round-trip, exit 64 naming the field and file, exit 69 naming a missing
//! binary and every place looked.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;

fn mkectl(args: &[&str]) -> std::process::Output {
    Command::new(MKECTL).args(args).output().unwrap()
}

#[test]
fn help_everywhere() {
    for args in [
        vec!["--help"],
        vec!["controller", "--help"],
        vec!["config", "--help"],
        vec!["config", "default", "--help"],
        vec!["config", "validate", "--help"],
        vec!["certs", "check-expiration", "--help"],
        vec!["version", "--help"],
    ] {
        let out = mkectl(&args);
        assert!(out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage"),
            "{args:?}"
        );
    }
    let out = mkectl(&["version"]);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("mkectl "));
    let out = mkectl(&["no-such-command"]);
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn default_config_round_trips_through_validate() {
    let out = mkectl(&["config", "default"]);
    assert!(out.status.success());
    let yaml = out.stdout;
    assert!(String::from_utf8_lossy(&yaml).contains("apiVersion: mkectl.io/v1beta1"));
    let mut child = Command::new(MKECTL)
        .args(["config", "validate", "--config", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&yaml).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn invalid_configs_exit_64_naming_field_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let head = "apiVersion: mkectl.io/v1beta1\nkind: ClusterConfig\n";
    let cases = [
        ("unknown", "spec:\n  api:\n    adress: 1.2.3.4\n", "adress"),
        (
            "badip",
            "spec:\n  api:\n    address: 1.2.3\n",
            "spec.api.address",
        ),
        (
            "badcidr",
            "spec:\n  network:\n    serviceCIDR: 10.96.0.0/40\n",
            "spec.network.serviceCIDR",
        ),
        (
            "overlap",
            "spec:\n  network:\n    podCIDR: 10.0.0.0/8\n    serviceCIDR: 10.96.0.0/12\n",
            "spec.network.serviceCIDR",
        ),
        (
            "port",
            "spec:\n  etcd:\n    clientPort: 99999\n",
            "spec.etcd.clientPort",
        ),
        (
            "duration",
            "spec:\n  pki:\n    leafLifetime: forever\n",
            "spec.pki.leafLifetime",
        ),
        (
            "provider",
            "spec:\n  network:\n    provider: weave\n",
            "spec.network.provider",
        ),
    ];
    for (name, body, field) in cases {
        let file = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&file, format!("{head}{body}")).unwrap();
        let out = mkectl(&["config", "validate", "--config", file.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{name}: {err}");
        assert!(
            err.contains(field),
            "{name}: message does not name {field}: {err}"
        );
        assert!(
            err.contains(file.to_str().unwrap()),
            "{name}: message does not name the file: {err}"
        );
        // The controller refuses it the same way, before touching anything.
        let data = dir.path().join(format!("data-{name}"));
        let out = Command::new(MKECTL)
            .args(["--data-dir", data.to_str().unwrap()])
            .args(["--run-dir", dir.path().join("run").to_str().unwrap()])
            .args([
                "--config",
                file.to_str().unwrap(),
                "controller",
                "--init-only",
            ])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{name}");
        assert!(
            !data.exists(),
            "{name}: controller wrote files for a bad config"
        );
    }
    let out = mkectl(&["config", "validate", "--config", "/nonexistent/mkectl.yaml"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/mkectl.yaml"));
}

#[test]
fn single_port_on_a_loopback_node_address_is_bad_usage_and_writes_nothing() {
    let node = Node::with_spec("cli-sp", "");
    let cfg = std::fs::read_to_string(&node.config)
        .unwrap()
        .replace("  api:\n", "  api:\n    exposeStrategy: single-port\n");
    std::fs::write(&node.config, cfg).unwrap();
    let out = node.cmd(&["controller", "--init-only"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains("spec.api.exposeStrategy") && err.contains("spec.api.address"),
        "{err}"
    );
    assert!(
        !node.data.join("pki").exists(),
        "PKI written for a refused config"
    );
}

/// A host with no global IPv4 address (a namespace with only `lo`): the node
/// address is refused, naming the field, instead of silently becoming
/// 127.0.0.1; a worker is told to give --address.
#[test]
fn no_node_address_is_bad_usage_not_loopback() {
    let ns = common::netns::Netns::new("noaddr");
    ns.ip(&["link", "set", "lo", "up"]);
    let mut node = Node::new("cli-noaddr");
    node.netns = Some(ns.name.clone());
    // The default config, but no spec.api.address.
    let cfg = std::fs::read_to_string(&node.config)
        .unwrap()
        .replace("    address: 127.0.0.1\n", "");
    std::fs::write(&node.config, cfg).unwrap();
    let out = node.cmd(&["controller", "--init-only"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains("spec.api.address") && err.contains(node.config.to_str().unwrap()),
        "{err}"
    );
    assert!(
        !node.data.join("pki").exists(),
        "PKI written without an address"
    );

    let token = node.tmp.path().join("w.token");
    let valid = mkectl::join::JoinToken {
        endpoints: vec!["https://192.0.2.1:9443".into()],
        ca_pin: format!("sha256:{}", "0".repeat(64)),
        role: mkectl::join::Role::Worker,
        bootstrap: mkectl::join::token::BootstrapToken::generate(),
    };
    std::fs::write(&token, valid.encode()).unwrap();
    let out = ns
        .cmd(MKECTL)
        .arg("--data-dir")
        .arg(node.tmp.path().join("w"))
        .arg("--run-dir")
        .arg(node.tmp.path().join("wr"))
        .args(["worker", "--node-name", "w", "--token-file"])
        .arg(&token)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(err.contains("--address"), "{err}");
}

#[test]
fn unknown_component_is_bad_usage() {
    let node = Node::new("cli-x");
    let out = node
        .cmd(&["controller", "--disable-components", "etcdd"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("etcdd"));
}

#[test]
fn missing_etcd_exits_69_naming_every_place_looked() {
    let node = Node::new("cli-y");
    let empty = node.tmp.path().join("empty-bin");
    std::fs::create_dir_all(&empty).unwrap();
    let out = node
        .cmd(&[
            "--bin-dir",
            empty.to_str().unwrap(),
            "controller",
            "--node-name",
            "cli-y",
        ])
        .env("PATH", node.tmp.path().join("nothing-here"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{err}");
    assert!(err.contains("`etcd`"), "{err}");
    assert!(err.contains(empty.to_str().unwrap()), "{err}");
    assert!(
        err.contains(node.data.join("bin").to_str().unwrap()),
        "{err}"
    );
    assert!(err.contains("nothing-here"), "{err}");
}

/// `mkectl version -o json` names the commit it was built from and whether
/// the tree was dirty (build.rs, at build time).
#[test]
fn version_reports_git_commit_and_dirty_flag() {
    let out = mkectl(&["version", "-o", "json"]);
    assert!(out.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let commit = doc["gitCommit"].as_str().unwrap();
    let head = Command::new("git")
        .args(["-C", env!("CARGO_MANIFEST_DIR"), "rev-parse", "HEAD"])
        .output();
    match head {
        Ok(h) if h.status.success() => {
            assert_eq!(commit, String::from_utf8_lossy(&h.stdout).trim());
            assert!(doc["gitTreeDirty"].is_boolean(), "{doc}");
        }
        // No git here (source tarball): the build still says so.
        _ => assert_eq!(commit, "unknown"),
    }
    let out = mkectl(&["version"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("git commit "));
}
