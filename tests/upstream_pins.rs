//! The upstream pins live in four places that must agree: the Go wrapper
//! modules under `packaging/upstream/` (what `build-upstream.sh` builds),
//! the script's own constants (its ldflags and cache key), `versions.yaml`
//! (what the bundle downloads) and `KUBERNETES_VERSION` (what mkectl
//! generates flags for). A drift between them fails here.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;

use mkectl::kubeapi::KUBERNETES_VERSION;

fn repo(rel: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel);
    fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// `module => module version` lines of a go.mod's replace block, and the
/// `module version` lines of its require blocks.
fn go_mod(text: &str) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let (mut require, mut replace) = (BTreeMap::new(), BTreeMap::new());
    let mut block = "";
    for raw in text.lines() {
        let line = raw.split("//").next().unwrap().trim();
        if line.is_empty() {
            continue;
        }
        if line == ")" {
            block = "";
            continue;
        }
        let (kind, rest) = match line.split_once(' ') {
            Some(("require", r)) => ("require", r.trim()),
            Some(("replace", r)) => ("replace", r.trim()),
            _ => (block, line),
        };
        if rest == "(" {
            block = kind;
            continue;
        }
        let f: Vec<&str> = rest.split_whitespace().collect();
        match kind {
            "require" => {
                require.insert(f[0].to_string(), f[1].to_string());
            }
            "replace" => {
                assert_eq!(f[1], "=>", "replace line {raw:?}");
                assert_eq!(f[0], f[2], "a replace points elsewhere: {raw:?}");
                replace.insert(f[0].to_string(), f[3].to_string());
            }
            _ => {}
        }
    }
    (require, replace)
}

/// `NAME=value` assignments at the start of a line of the build script.
fn script_const(name: &str) -> String {
    let text = repo("packaging/build-upstream.sh");
    let prefix = format!("{name}=");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("{name}= not in build-upstream.sh"))
        .trim()
        .to_string()
}

#[test]
fn kubernetes_pins_agree() {
    let (require, replace) = go_mod(&repo("packaging/upstream/go.mod"));
    assert_eq!(require["k8s.io/kubernetes"], KUBERNETES_VERSION);
    assert_eq!(script_const("KUBE_VERSION"), KUBERNETES_VERSION);

    let pins = repo("packaging/versions.yaml");
    let kube = pins
        .split("- name: ")
        .find(|c| c.starts_with("kubernetes"))
        .expect("kubernetes in versions.yaml");
    assert!(
        kube.contains(&format!("version: {KUBERNETES_VERSION}\n")),
        "versions.yaml's kubernetes version is not {KUBERNETES_VERSION}"
    );

    // Every staging module at v0.<minor>.<patch> of the same release, but the
    // one the module proxy refuses (go.mod says why, and what stands in).
    let staging = KUBERNETES_VERSION.replacen("v1.", "v0.", 1);
    assert!(
        replace.len() >= 29,
        "{} staging replaces: {replace:?}",
        replace.len()
    );
    for (module, version) in &replace {
        assert!(module.starts_with("k8s.io/"), "{module}");
        if module == "k8s.io/kube-controller-manager" {
            assert_eq!(version, "v0.32.7", "the documented stand-in changed");
            assert_eq!(
                KUBERNETES_VERSION, "v1.32.8",
                "drop the stand-in with the move"
            );
        } else {
            assert_eq!(version, &staging, "{module}");
        }
    }
}

#[test]
fn konnectivity_pins_agree() {
    let (require, replace) = go_mod(&repo("packaging/upstream/konnectivity/go.mod"));
    assert!(replace.is_empty());
    assert_eq!(
        require["sigs.k8s.io/apiserver-network-proxy"],
        script_const("KNP_VERSION")
    );
    // The upstream proxy-server / proxy-agent are test peers, never bundled.
    assert!(!repo("packaging/versions.yaml").contains("apiserver-network-proxy"));
}

#[test]
fn go_sums_cover_the_pins() {
    for (m, v, sum) in [
        (
            "k8s.io/kubernetes",
            KUBERNETES_VERSION.to_string(),
            "packaging/upstream/go.sum",
        ),
        (
            "sigs.k8s.io/apiserver-network-proxy",
            script_const("KNP_VERSION"),
            "packaging/upstream/konnectivity/go.sum",
        ),
    ] {
        let text = repo(sum);
        assert!(
            text.lines().any(|l| l.starts_with(&format!("{m} {v} h1:"))),
            "{sum} has no checksum for {m} {v}"
        );
    }
}
