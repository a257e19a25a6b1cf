//! A wrong upstream binary (another release, not executable, crashing at
//! start) stops `mkectl controller` before it starts anything: exit 69, and
//! the message names the binary, what was found and what is expected.
//!
//! The faulty binaries are shell scripts: the fault is the point, so no
//! real binary is needed and these run everywhere.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::*;

const GOOD: &str = "#!/bin/sh\necho 'Kubernetes v1.32.8'\n";

/// A bin dir whose kube binaries all report v1.32.8, except `name`, which
/// gets `body` and `mode`.
fn bin_dir(root: &Path, name: &str, body: &str, mode: u32) -> std::path::PathBuf {
    let dir = root.join("bin");
    fs::create_dir_all(&dir).unwrap();
    for b in [
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
    ] {
        let p = dir.join(b);
        let (text, m) = if b == name {
            (body, mode)
        } else {
            (GOOD, 0o755)
        };
        fs::write(&p, text).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(m)).unwrap();
    }
    dir
}

/// Runs the controller with `bin`; returns its exit code and log once it
/// exits, and checks that nothing was started.
fn refused(node: &Node, bin: &Path) -> (i32, String) {
    let mut cmd = node.cmd(&[
        "controller",
        "--node-name",
        &node.name,
        "--bin-dir",
        bin.to_str().unwrap(),
    ]);
    // Only the system dirs: no other kube binary may be found on PATH.
    cmd.env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    let log = node.tmp.path().join("controller.log");
    let mut ctl = Controller {
        child: cmd
            .stdout(std::process::Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
        log,
    };
    let status = ctl.wait_exit(Duration::from_secs(60));
    let text = ctl.log_text();
    for child in ["etcd", "konnectivity-server", "kube-apiserver"] {
        assert!(
            node.child_pid(child).is_none(),
            "{child} was started before the binaries were checked:\n{text}"
        );
    }
    assert!(!text.contains("controller ready"), "{text}");
    (status.code().unwrap_or(-1), text)
}

#[test]
fn another_release_is_refused_naming_found_and_expected() {
    let node = Node::new("wrong-version");
    let bin = bin_dir(
        node.tmp.path(),
        "kube-apiserver",
        "#!/bin/sh\necho 'Kubernetes v1.31.4'\n",
        0o755,
    );
    let (code, log) = refused(&node, &bin);
    assert_eq!(code, 69, "{log}");
    for want in ["kube-apiserver", "Kubernetes v1.31.4", "v1.32.8", "v1.32.x"] {
        assert!(log.contains(want), "{want:?} missing from:\n{log}");
    }
}

#[test]
fn a_binary_that_is_not_executable_is_named_as_such() {
    let node = Node::new("not-exec");
    let bin = bin_dir(node.tmp.path(), "kube-controller-manager", GOOD, 0o644);
    let (code, log) = refused(&node, &bin);
    assert_eq!(code, 69, "{log}");
    let path = bin.join("kube-controller-manager");
    assert!(
        log.contains(&format!("{} exists but is not executable", path.display())),
        "{log}"
    );
}

#[test]
fn a_binary_that_crashes_at_start_is_refused_with_its_output() {
    let node = Node::new("crashes");
    let bin = bin_dir(
        node.tmp.path(),
        "kube-scheduler",
        "#!/bin/sh\necho 'fatal error: unexpected signal' >&2\nexit 2\n",
        0o755,
    );
    let (code, log) = refused(&node, &bin);
    assert_eq!(code, 69, "{log}");
    for want in ["kube-scheduler", "fails at start", "unexpected signal"] {
        assert!(log.contains(want), "{want:?} missing from:\n{log}");
    }
}
