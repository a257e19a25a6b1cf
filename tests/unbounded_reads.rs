//! Issue 17, item 4: inputs are read with bounds, with the real binary.
//! An endless config (`/dev/zero`, an endless stdin) or a 5 MiB one is
//! refused with exit 64 naming it, in bounded memory; `restore` refuses an
//! archive member larger than its manifest says before writing any of it
//! (a ~1 MB gzip that expands to 1 GiB). Each process runs under an
//! address-space or file-size limit, so the unbounded behaviour this
//! replaces fails the test instead of exhausting the machine.

mod common;

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};

use std::time::Duration;

use common::MKECTL;
use nix::sys::resource::{setrlimit, Resource};

/// Address space allowed to the config commands (they need a few MiB).
const AS_LIMIT: u64 = 1 << 30;
/// File size `restore` may write (the real members here are tiny).
const FSIZE_LIMIT: u64 = 16 << 20;
const BOUND: Duration = Duration::from_secs(60);

/// Runs `cmd` with `limit` applied in the child, bounded in time (killed
/// after [`BOUND`]); stdout and stderr go through files.
fn run_limited(mut cmd: Command, limit: (Resource, u64)) -> Output {
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between
    // fork and exec.
    unsafe {
        cmd.pre_exec(move || setrlimit(limit.0, limit.1, limit.1).map_err(std::io::Error::from));
    }
    let out = tempfile::tempdir().unwrap();
    let (o, e) = (out.path().join("out"), out.path().join("err"));
    let mut child = cmd
        .stdout(std::fs::File::create(&o).unwrap())
        .stderr(std::fs::File::create(&e).unwrap())
        .spawn()
        .unwrap();
    let end = std::time::Instant::now() + BOUND;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if std::time::Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} still running after {BOUND:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: std::fs::read(&o).unwrap(),
        stderr: std::fs::read(&e).unwrap(),
    }
}

fn validate(config: &str, stdin: Stdio) -> Output {
    let mut cmd = Command::new(MKECTL);
    cmd.args(["--config", config, "config", "validate"])
        .stdin(stdin);
    run_limited(cmd, (Resource::RLIMIT_AS, AS_LIMIT))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn endless_and_oversized_configs_are_refused_with_64() {
    let zero = validate("/dev/zero", Stdio::null());
    let err = text(&zero.stderr);
    assert_eq!(zero.status.code(), Some(64), "{:?} {err}", zero.status);
    assert!(
        err.contains("config file /dev/zero is larger than 4 MiB"),
        "{err}"
    );

    let stdin = validate("-", std::fs::File::open("/dev/zero").unwrap().into());
    let err = text(&stdin.stderr);
    assert_eq!(stdin.status.code(), Some(64), "{:?} {err}", stdin.status);
    assert!(
        err.contains("config file <stdin> is larger than 4 MiB"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.yaml");
    let mut f = std::fs::File::create(&big).unwrap();
    f.write_all(b"apiVersion: mkectl.io/v1beta1\n").unwrap();
    let comment = format!("# {}\n", "x".repeat(1021));
    for _ in 0..5 * 1024 {
        f.write_all(comment.as_bytes()).unwrap();
    }
    drop(f);
    let out = validate(big.to_str().unwrap(), Stdio::null());
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains(&format!("{} is larger than 4 MiB", big.display())),
        "{err}"
    );

    // Item 5: an empty file is valid, and says it is all defaults.
    let empty = dir.path().join("empty.yaml");
    std::fs::write(&empty, "# nothing yet\n").unwrap();
    let out = validate(empty.to_str().unwrap(), Stdio::null());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).trim(),
        format!(
            "{}: valid, but empty: every field takes its default (see `mkectl config default`)",
            empty.display()
        )
    );
}

/// A backup archive whose manifest lists a 1 KiB snapshot while the tar
/// member is `size` bytes of zeros.
fn lying_archive(path: &std::path::Path, size: u64) {
    let small = vec![0u8; 1024];
    let sha = hex::encode(ring::digest::digest(&ring::digest::SHA256, &small).as_ref());
    let manifest = serde_json::json!({
        "format": "mkectl-backup",
        "formatVersion": 1,
        "createdAt": "2026-01-01T00:00:00Z",
        "mkectlVersion": "test",
        "clusterName": "mke",
        "clusterCaSha256": "sha256:00",
        "files": [{"path": "etcd/snapshot.db", "mode": 384, "size": 1024, "sha256": sha}],
    });
    let manifest = serde_json::to_vec(&manifest).unwrap();
    let gz = flate2::write::GzEncoder::new(
        std::fs::File::create(path).unwrap(),
        flate2::Compression::fast(),
    );
    let mut tar = tar::Builder::new(gz);
    let mut h = tar::Header::new_gnu();
    h.set_size(manifest.len() as u64);
    h.set_mode(0o600);
    h.set_cksum();
    tar.append_data(&mut h, "mkectl-backup/manifest.json", &manifest[..])
        .unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_size(size);
    h.set_mode(0o600);
    h.set_cksum();
    tar.append_data(
        &mut h,
        "mkectl-backup/etcd/snapshot.db",
        std::io::Read::take(std::io::repeat(0), size),
    )
    .unwrap();
    tar.into_inner().unwrap().finish().unwrap();
}

#[test]
fn restore_refuses_a_member_larger_than_its_manifest_before_writing_it() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("bomb.tar.gz");
    lying_archive(&archive, 1 << 30);
    let compressed = std::fs::metadata(&archive).unwrap().len();
    assert!(compressed < 8 << 20, "{compressed} bytes");
    let data = dir.path().join("data");
    let mut cmd = Command::new(MKECTL);
    cmd.arg("--data-dir")
        .arg(&data)
        .arg("--run-dir")
        .arg(dir.path().join("run"))
        .args(["restore", archive.to_str().unwrap(), "--node-name", "r1"]);
    let out = run_limited(cmd, (Resource::RLIMIT_FSIZE, FSIZE_LIMIT));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{:?}: {err}", out.status);
    assert!(
        err.contains(
            "etcd/snapshot.db: the archive holds 1073741824 bytes, the manifest says 1024; nothing of it was written"
        ),
        "{err}"
    );
    // Nothing left: no data dir, no staging directory.
    assert!(!data.exists());
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".mkectl-restore-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    eprintln!("a {compressed}-byte archive expanding to 1 GiB was refused without writing it");
}
