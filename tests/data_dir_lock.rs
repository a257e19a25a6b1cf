//! Issue 17, item 2: one node per data dir. A second `mkectl` pointed at a
//! running controller's data dir, with its own run dir and ports, is refused
//! before it writes anything, naming the running one's pid; nothing in the
//! data dir changes (kubeconfigs, generated config, the lock itself).
//! Also item 5: the run dir's pid files are 0600.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::join::{ctl_args, wait_log};
use common::*;

const START: Duration = Duration::from_secs(60);

/// `mkectl` with `data` as data dir and another node's run dir and config.
fn foreign(data: &Path, other: &Node, args: &[&str]) -> Output {
    Command::new(MKECTL)
        .arg("--data-dir")
        .arg(data)
        .arg("--run-dir")
        .arg(&other.run)
        .arg("--config")
        .arg(&other.config)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn a_running_nodes_data_dir_is_refused_to_a_second_mkectl() {
    let c1 = Node::with_address("lk1", "127.0.0.81", "");
    let mut p1 = c1.start_controller(&ctl_args(&[]));
    wait_log(&mut p1, "controller ready", START);
    let lock = c1.data.join("mkectl.lock");
    assert_eq!(
        std::fs::read_to_string(&lock).unwrap().trim(),
        p1.pid().to_string(),
        "the data dir lock names its holder"
    );
    let files = |d: &Node| {
        let mut v = snapshot(&d.data.join("pki"));
        v.extend(snapshot(&d.data.join("config")));
        v.push(
            snapshot(&d.data)
                .into_iter()
                .find(|(p, ..)| *p == lock)
                .unwrap(),
        );
        v
    };
    let before = files(&c1);
    // Item 5: the run dir's pid files (and both locks) are 0600, as the
    // README says.
    let mode = |p: &Path| {
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions())
            & 0o777
    };
    for p in [
        c1.pid_file("etcd"),
        c1.run.join("mkectl.lock"),
        lock.clone(),
    ] {
        assert_eq!(mode(&p), 0o600, "{}", p.display());
    }

    // Another node's run dir and ports (other address), this data dir.
    let c2 = Node::with_address("lk2", "127.0.0.82", "");
    let want = format!(
        "data dir {} is in use by another mkectl (pid {}",
        c1.data.display(),
        p1.pid()
    );
    let mut controller = vec!["controller", "--node-name", "lk2"];
    controller.extend(ctl_args(&[]));
    let worker = [
        "worker",
        "--node-name",
        "lk2",
        "--token",
        "mke1.e30",
        "--disable-components",
        "containerd,kubelet",
    ];
    for args in [
        &controller[..],
        &["controller", "--init-only", "--node-name", "lk2"][..],
        &worker[..],
        &["reset", "--force"][..],
        &["certs", "renew", "--all", "--node-name", "lk1"][..],
    ] {
        let out = foreign(&c1.data, &c2, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(&want), "{args:?}: {err}");
        assert_eq!(
            files(&c1),
            before,
            "{args:?} changed the running node's files"
        );
    }
    // The controller kept running, and the refused ones left no data dir of
    // their own anywhere: their run dir holds only its lock.
    assert!(p1.child.try_wait().unwrap().is_none());
    let left: Vec<_> = std::fs::read_dir(&c2.run)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["mkectl.lock"]);
    assert!(!c2.data.exists());

    // A clean stop releases and removes the data dir's lock.
    signal(p1.pid(), libc::SIGTERM);
    assert!(p1.wait_exit(Duration::from_secs(60)).success());
    assert!(!lock.exists());
}
