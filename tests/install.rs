//! `mkectl install controller|worker`: the unit file's content and quoting,
//! idempotence, refusals, and (where the host has it) systemd's own parser.
//! Always with `--unit-dir` and `--no-systemctl`: tests never touch the
//! host's systemd.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::MKECTL;

fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(MKECTL)
        .current_dir(dir)
        .env_remove("MKECTL_DATA_DIR")
        .env_remove("MKECTL_CONFIG")
        .args(args)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn exe() -> String {
    fs::canonicalize(MKECTL).unwrap().display().to_string()
}

fn exec_start(unit: &str) -> &str {
    unit.lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap_or_else(|| panic!("no ExecStart in:\n{unit}"))
}

/// Runs `systemd-analyze verify` on `unit` when the host has it (it needs no
/// running systemd); returns ExecStart's "Command Line:" from the debug dump
/// (how systemd split and unescaped it), or None when systemd-analyze is not
/// installed.
fn systemd_verify(unit: &Path) -> Option<String> {
    let out = Command::new("systemd-analyze")
        .env("SYSTEMD_LOG_LEVEL", "debug")
        .arg("verify")
        .arg(unit)
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) => {
            eprintln!("systemd-analyze not available ({e}); skipping systemd's own check");
            return None;
        }
    };
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{all}"
    );
    let name = unit.display().to_string();
    let complaints: Vec<&str> = all
        .lines()
        .filter(|l| l.starts_with(&format!("{name}:")))
        .collect();
    assert!(
        complaints.is_empty(),
        "systemd complains about the unit: {complaints:#?}"
    );
    // The dump lists "-> ExecStartPre:" blocks too; take ExecStart's.
    Some(
        all.lines()
            .skip_while(|l| l.trim() != "-> ExecStart:")
            .find_map(|l| l.trim().strip_prefix("Command Line: "))
            .expect("no ExecStart command line in systemd's dump")
            .to_string(),
    )
}

#[test]
fn controller_unit_content_quoting_and_idempotence() {
    let tmp = tempfile::tempdir().unwrap();
    let units = tmp.path().join("units");
    let data = tmp.path().join("data dir/100%");
    let data_s = data.display().to_string();
    fs::write(tmp.path().join("mkectl.yaml"), "").unwrap();
    let args = [
        "--data-dir",
        &data_s,
        "--config",
        "mkectl.yaml", // relative: made absolute, a unit runs from /
        "install",
        "controller",
        "--unit-dir",
        "units",
        "--no-systemctl",
        "--node-name",
        "ctl$1",
        "--disable-components",
        "etcd",
    ];
    let out = run(tmp.path(), &args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("wrote "),
        "{}",
        text(&out.stdout)
    );
    let path = units.join("mkectl-controller.service");
    let unit = fs::read_to_string(&path).unwrap();
    let config = tmp.path().join("mkectl.yaml").display().to_string();
    let want = format!(
        "{} --data-dir \"{}/data dir/100%%\" --config {config} controller --node-name ctl$$1 --disable-components etcd",
        exe(),
        tmp.path().display()
    );
    assert_eq!(exec_start(&unit), want);
    for line in [
        "Type=exec",
        "KillMode=mixed",
        "TimeoutStopSec=150",
        "Restart=always",
        "LimitNOFILE=1048576",
        "WantedBy=multi-user.target",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line} missing:\n{unit}");
    }
    assert!(!unit.contains("@EXEC_START@"));
    assert!(
        !unit.contains("Delegate="),
        "the controller runs no kubelet"
    );
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o644
    );

    // systemd reads it back as the same words ("%%" is a literal "%").
    if let Some(cmdline) = systemd_verify(&path) {
        assert!(
            cmdline.contains(&format!("\"{}/data dir/100%\"", tmp.path().display())),
            "{cmdline}"
        );
        assert!(cmdline.contains(" controller "), "{cmdline}");
    }

    // Same flags: not rewritten (content and mtime unchanged).
    let mtime = fs::metadata(&path).unwrap().modified().unwrap();
    let out = run(tmp.path(), &args);
    assert!(out.status.success());
    assert!(
        text(&out.stdout).starts_with("unchanged: "),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(fs::read_to_string(&path).unwrap(), unit);
    assert_eq!(fs::metadata(&path).unwrap().modified().unwrap(), mtime);

    // Other flags: rewritten.
    let out = run(
        tmp.path(),
        &[
            "install",
            "controller",
            "--unit-dir",
            "units",
            "--no-systemctl",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        exec_start(&fs::read_to_string(&path).unwrap()),
        format!("{} controller", exe())
    );
}

#[test]
fn worker_unit_delegates_cgroups_and_keeps_containers_on_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let out = run(
        tmp.path(),
        &[
            "install",
            "worker",
            "--unit-dir",
            "u",
            "--no-systemctl",
            "--token-file",
            "/etc/mke/join token",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let path: PathBuf = tmp.path().join("u/mkectl-worker.service");
    let unit = fs::read_to_string(&path).unwrap();
    assert_eq!(
        exec_start(&unit),
        format!("{} worker --token-file \"/etc/mke/join token\"", exe())
    );
    for line in [
        "Delegate=yes",
        "KillMode=process",
        "Restart=always",
        "TimeoutStopSec=150",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line} missing:\n{unit}");
    }
    if let Some(cmdline) = systemd_verify(&path) {
        assert!(cmdline.contains("\"/etc/mke/join token\""), "{cmdline}");
    }
}

#[test]
fn refusals_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let units = tmp.path().join("units");
    let cases: Vec<(Vec<&str>, u8, &str)> = vec![
        (
            vec![
                "install",
                "controller",
                "--unit-dir",
                "units",
                "--no-systemctl",
                "--no-such-flag",
            ],
            64,
            "--no-such-flag",
        ),
        (
            vec![
                "install",
                "controller",
                "--unit-dir",
                "units",
                "--no-systemctl",
                "--start",
            ],
            64,
            "",
        ),
        (
            vec![
                "install",
                "controller",
                "--start",
                "--no-systemctl",
                "--unit-dir",
                "units",
            ],
            64,
            "--start needs systemctl",
        ),
        (
            vec![
                "--config",
                "-",
                "install",
                "controller",
                "--unit-dir",
                "units",
                "--no-systemctl",
            ],
            64,
            "standard input",
        ),
    ];
    for (args, code, want) in cases {
        let out = run(tmp.path(), &args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(i32::from(code)), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(
            !units.join("mkectl-controller.service").exists(),
            "{args:?} wrote the unit"
        );
    }

    // --start on a host without systemd: exit 69 before writing anything.
    if Path::new("/run/systemd/system").exists() {
        eprintln!("systemd runs on this host; not exercising --start (it would start a real unit)");
        return;
    }
    let out = run(
        tmp.path(),
        &["install", "controller", "--start", "--unit-dir", "units"],
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{err}");
    assert!(err.contains("systemd is not running"), "{err}");
    assert!(!units.join("mkectl-controller.service").exists());
}
