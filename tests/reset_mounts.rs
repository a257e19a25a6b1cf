//! `mkectl reset` and mounts left below the data dir: kubelet leaves pod
//! volumes mounted when it stops (a hostPath bind, a secret tmpfs). Reset
//! must detach them before deleting, so what a bind mount points at
//! survives; a data dir that is a mount of its own is emptied and kept.
//!
//! Needs root (mount(8)); CI runs as root.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::MKECTL;

/// Detaches whatever a failed test left mounted below its temp dir.
struct MountGuard(PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        mkectl::mounts::unmount_below(&[&self.0]);
    }
}

fn sh(args: &[&str]) {
    common::output_ok(Command::new(args[0]).args(&args[1..]));
}

/// A temp dir (unmounted below on drop) with `data`, `run`, `outside`.
struct Dirs {
    _guard: MountGuard,
    tmp: tempfile::TempDir,
    data: PathBuf,
    run: PathBuf,
    outside: PathBuf,
}

fn dirs() -> Dirs {
    let tmp = tempfile::tempdir().unwrap();
    Dirs {
        _guard: MountGuard(tmp.path().to_path_buf()),
        data: tmp.path().join("data"),
        run: tmp.path().join("run"),
        outside: tmp.path().join("outside"),
        tmp,
    }
}

/// Runs `mkectl reset` and asserts it succeeded; returns its stdout.
fn reset_ok(d: &Dirs) -> String {
    common::output_ok(
        Command::new(MKECTL)
            .arg("--data-dir")
            .arg(&d.data)
            .arg("--run-dir")
            .arg(&d.run)
            .arg("reset"),
    )
}

fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = fs::read_to_string(mkectl::mounts::MOUNTINFO).unwrap();
    mkectl::mounts::mounts_below(&info, &mkectl::mounts::canonical_dirs(&[dir]))
}

/// A worker's data dir (what `reset` recognises) with a pod's volumes
/// mounted in it: a bind of `outside` and a tmpfs.
fn worker_with_volumes(data: &Path, outside: &Path) {
    fs::create_dir_all(data).unwrap();
    fs::write(data.join("worker.json"), "{}").unwrap();
    let vols = data.join("kubelet/root/pods/p1/volumes");
    let (hp, secret) = (vols.join("hostpath"), vols.join("secret"));
    fs::create_dir_all(&hp).unwrap();
    fs::create_dir_all(&secret).unwrap();
    fs::create_dir_all(outside).unwrap();
    fs::write(outside.join("keep"), "host data").unwrap();
    sh(&[
        "mount",
        "--bind",
        outside.to_str().unwrap(),
        hp.to_str().unwrap(),
    ]);
    sh(&["mount", "-t", "tmpfs", "tmpfs", secret.to_str().unwrap()]);
    fs::write(secret.join("token"), "s3cret").unwrap();
    assert_eq!(
        fs::read_to_string(hp.join("keep")).unwrap(),
        "host data",
        "the bind mount shows the outside dir"
    );
}

#[test]
fn reset_detaches_pod_volumes_before_deleting_and_spares_what_they_point_at() {
    let d = dirs();
    worker_with_volumes(&d.data, &d.outside);
    assert_eq!(mounts_under(&d.data).len(), 2);

    reset_ok(&d);
    assert!(!d.data.exists(), "data dir removed");
    assert!(mounts_under(d.tmp.path()).is_empty(), "no mount left");
    assert_eq!(
        fs::read_to_string(d.outside.join("keep")).unwrap(),
        "host data",
        "the bind mount's source was not deleted through it"
    );
}

#[test]
fn a_data_dir_on_its_own_mount_is_emptied_and_kept_mounted() {
    let d = dirs();
    fs::create_dir_all(&d.data).unwrap();
    sh(&["mount", "-t", "tmpfs", "tmpfs", d.data.to_str().unwrap()]);
    worker_with_volumes(&d.data, &d.outside);

    let stdout = reset_ok(&d);
    assert!(stdout.contains("kept"), "{stdout}");
    assert_eq!(fs::read_dir(&d.data).unwrap().count(), 0, "emptied");
    assert_eq!(
        mounts_under(&d.data),
        [d.data.canonicalize().unwrap()],
        "only the data dir's own mount is left"
    );
    assert_eq!(
        fs::read_to_string(d.outside.join("keep")).unwrap(),
        "host data"
    );
}
