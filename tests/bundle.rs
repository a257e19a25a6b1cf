//! The bundle end to end with real binaries: Debian's etcd and containerd are
//! appended to mkectl; the bundled mkectl runs a controller with no etcd on
//! PATH, stages etcd once, and refuses corrupt or truncated copies before
//! writing anything. The upstream Kubernetes binaries that
//! `packaging/build-upstream.sh` builds from source are bundled with their own
//! SHA-256, checked against its `source-builds.tsv`.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use mkectl::bundle::source_builds::SOURCE_BUILDS_FILE;
use mkectl::bundle::{Bundle, Origin};
use mkectl::etcd::{connect, EtcdClientTls};

const READY: Duration = Duration::from_secs(60);
const PINS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/versions.yaml");

/// `Command::spawn`, retried while the kernel reports ETXTBSY: a file this
/// process just wrote can stay open for writing in a child forked by
/// another test thread until that child execs.
fn spawn(cmd: &mut Command) -> Child {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        match cmd.spawn() {
            Ok(c) => return c,
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && Instant::now() < end => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("spawn {cmd:?}: {e}"),
        }
    }
}

fn output(cmd: &mut Command) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    spawn(cmd).wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// "etcd Version: 3.4.23" → "3.4.23".
fn etcd_version() -> String {
    let out = Command::new("/usr/bin/etcd")
        .arg("--version")
        .output()
        .unwrap();
    let s = text(&out.stdout);
    s.lines()
        .find_map(|l| l.strip_prefix("etcd Version: "))
        .unwrap_or_else(|| panic!("unexpected etcd --version output: {s}"))
        .trim()
        .to_string()
}

/// "containerd github.com/containerd/containerd 1.6.20~ds1 <rev>" → "1.6.20~ds1".
fn containerd_version() -> String {
    let out = Command::new("/usr/bin/containerd")
        .arg("--version")
        .output()
        .unwrap();
    let s = text(&out.stdout);
    s.split_whitespace()
        .nth(2)
        .unwrap_or_else(|| panic!("unexpected containerd --version output: {s}"))
        .to_string()
}

fn client_tls(node: &Node) -> EtcdClientTls {
    EtcdClientTls {
        ca: node.pki("etcd/ca.crt"),
        cert: node.pki("apiserver-etcd-client.crt"),
        key: node.pki("apiserver-etcd-client.key"),
    }
}

/// Puts and reads back `key` once etcd answers, within `READY`.
async fn put_get_when_ready(node: &Node, ctl: &mut Controller, key: &str, value: &str) {
    let end = Instant::now() + READY;
    loop {
        if let Ok(mut c) = connect(&node.etcd_endpoint(), &client_tls(node)).await {
            if c.put(key, value, None).await.is_ok() {
                let r = c.get(key, None).await.unwrap();
                assert_eq!(r.kvs()[0].value_str().unwrap(), value);
                return;
            }
        }
        if let Ok(Some(st)) = ctl.child.try_wait() {
            panic!(
                "controller exited with {st} before etcd was ready:\n{}",
                ctl.log_text()
            );
        }
        assert!(
            Instant::now() < end,
            "etcd never became ready:\n{}",
            ctl.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts `<exe> controller` for `node` with `PATH=<path_dir>` only and
/// without the components that need the upstream kube binaries.
fn start(node: &Node, exe: &Path, path_dir: &Path, log_name: &str) -> Controller {
    let log = node.tmp.path().join(log_name);
    let mut cmd = Command::new(exe);
    cmd.arg("--data-dir")
        .arg(&node.data)
        .arg("--run-dir")
        .arg(&node.run)
        .arg("--config")
        .arg(&node.config)
        .args(["controller", "--node-name", &node.name])
        .args(NO_KUBE_BINARIES)
        .env_clear()
        .env("PATH", path_dir)
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap());
    Controller {
        child: spawn(&mut cmd),
        log,
    }
}

fn stop(ctl: &mut Controller) {
    signal(ctl.pid(), libc::SIGTERM);
    let st = ctl.wait_exit(Duration::from_secs(40));
    assert!(st.success(), "controller exit {st:?}:\n{}", ctl.log_text());
}

/// Regular, non-dot files under `dir` (none when it does not exist).
fn binaries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Runs `exe controller` on a fresh node and expects a quick, clean refusal
/// that names `exe` and says `why`, with nothing staged or started.
fn assert_refused(exe: &Path, path_dir: &Path, why: &str) {
    let node = Node::new("ctl-corrupt");
    let mut ctl = start(&node, exe, path_dir, "refused.log");
    let st = ctl.wait_exit(Duration::from_secs(30));
    let log = ctl.log_text();
    assert_eq!(st.code(), Some(1), "expected exit 1:\n{log}");
    assert!(
        log.contains(&exe.display().to_string()),
        "error names the file:\n{log}"
    );
    assert!(log.contains(why), "error says {why:?}:\n{log}");
    assert!(
        binaries(&node.data.join("bin")).is_empty(),
        "files written for a corrupt bundle: {:?}",
        binaries(&node.data.join("bin"))
    );
    assert!(node.child_pid("etcd").is_none(), "etcd was started");
}

#[tokio::test(flavor = "multi_thread")]
async fn bundled_etcd_is_staged_once_and_corrupt_bundles_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("binaries");
    fs::create_dir(&src).unwrap();
    fs::copy("/usr/bin/etcd", src.join("etcd")).unwrap();
    fs::copy("/usr/bin/containerd", src.join("containerd")).unwrap();
    let (etcd_v, containerd_v) = (etcd_version(), containerd_version());
    let bundled = tmp.path().join("mkectl-bundled");

    // Offline bundle of local binaries, with the shipped pins file: neither
    // file is a pinned artifact, so both need --allow-local.
    let create = |extra: &[&str]| {
        let mut cmd = Command::new(MKECTL);
        cmd.args(["bundle", "create", "--from-dir"])
            .arg(&src)
            .args(["--versions", PINS, "--output"])
            .arg(&bundled)
            .args(extra);
        output(&mut cmd)
    };
    let out = create(&[]);
    assert_eq!(out.status.code(), Some(64), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("--allow-local"),
        "{}",
        text(&out.stderr)
    );
    assert!(!bundled.exists());
    let ev = format!("etcd={etcd_v}");
    let cv = format!("containerd={containerd_v}");
    let out = create(&[
        "--allow-local",
        "--local-version",
        &ev,
        "--local-version",
        &cv,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let summary = text(&out.stdout);
    assert!(
        summary.contains("etcd") && summary.contains("LOCAL"),
        "{summary}"
    );

    // version lists both components from the manifest.
    let out = output(Command::new(&bundled).arg("version"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v = text(&out.stdout);
    assert!(v.starts_with("mkectl "), "{v}");
    for (name, ver) in [("etcd", &etcd_v), ("containerd", &containerd_v)] {
        assert!(
            v.lines()
                .any(|l| l.split_whitespace().take(2).eq([name, ver.as_str()])),
            "{name} {ver} not listed:\n{v}"
        );
    }
    let out = output(Command::new(&bundled).args(["version", "-o", "json"]));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let comps = j["bundle"]["components"].as_array().unwrap();
    assert!(comps
        .iter()
        .any(|c| c["name"] == "etcd" && c["version"] == etcd_v.as_str()));
    let out = output(Command::new(MKECTL).args(["version", "-o", "json"]));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        j["bundle"].is_null(),
        "the plain build carries no bundle: {j}"
    );

    // PATH holds nothing but an empty directory: etcd can only come from the bundle.
    let empty_path = tmp.path().join("empty-path");
    fs::create_dir(&empty_path).unwrap();

    let node = Node::new("ctl-bundle");
    let bin = node.data.join("bin");
    let mut ctl = start(&node, &bundled, &empty_path, "start-1.log");
    put_get_when_ready(&node, &mut ctl, "/bundle/k", "v").await;
    assert_eq!(binaries(&bin), vec!["containerd", "etcd"]);
    assert_eq!(
        fs::read(bin.join("etcd")).unwrap(),
        fs::read("/usr/bin/etcd").unwrap()
    );
    let etcd_pid = node.child_pid("etcd").unwrap();
    assert_eq!(
        fs::read_link(format!("/proc/{etcd_pid}/exe")).unwrap(),
        bin.join("etcd"),
        "etcd runs from the staged copy"
    );
    assert!(
        ctl.log_text().contains("extracted 2, unchanged 0"),
        "{}",
        ctl.log_text()
    );
    stop(&mut ctl);
    let staged = snapshot(&bin);

    // Second start, now with a decoy etcd on PATH that would fail: nothing is
    // extracted, no byte or mtime changes, and the bundle still wins.
    let decoy_path = tmp.path().join("decoy-path");
    fs::create_dir(&decoy_path).unwrap();
    let decoy = decoy_path.join("etcd");
    fs::write(&decoy, "#!/bin/sh\necho decoy etcd from PATH >&2\nexit 3\n").unwrap();
    fs::set_permissions(&decoy, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut ctl = start(&node, &bundled, &decoy_path, "start-2.log");
    put_get_when_ready(&node, &mut ctl, "/bundle/k2", "v2").await;
    let log = ctl.log_text();
    assert!(log.contains("extracted 0, unchanged 2"), "{log}");
    assert!(!log.contains("decoy"), "the PATH etcd ran:\n{log}");
    let etcd_pid = node.child_pid("etcd").unwrap();
    assert_eq!(
        fs::read_link(format!("/proc/{etcd_pid}/exe")).unwrap(),
        bin.join("etcd")
    );
    stop(&mut ctl);
    assert_eq!(
        snapshot(&bin),
        staged,
        "the second start rewrote staged files"
    );

    // A full check of the good bundle passes.
    let out = output(Command::new(&bundled).args(["bundle", "verify"]));
    assert!(out.status.success(), "{}", text(&out.stderr));

    // One flipped byte in the middle of the payload.
    let footer = *Bundle::open(&bundled).unwrap().unwrap().footer();
    let flipped = tmp.path().join("mkectl-flipped");
    fs::copy(&bundled, &flipped).unwrap();
    {
        let mut f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&flipped)
            .unwrap();
        let at = footer.payload_offset + footer.payload_len / 2;
        f.seek(SeekFrom::Start(at)).unwrap();
        let mut b = [0u8; 1];
        std::io::Read::read_exact(&mut f, &mut b).unwrap();
        f.seek(SeekFrom::Start(at)).unwrap();
        f.write_all(&[b[0] ^ 0xff]).unwrap();
        f.sync_all().unwrap();
    }
    assert_refused(&flipped, &empty_path, "checksum mismatch");
    let out = output(
        Command::new(MKECTL)
            .args(["bundle", "verify"])
            .arg(&flipped),
    );
    assert_eq!(out.status.code(), Some(1));
    fs::remove_file(&flipped).unwrap();

    // Truncated: the last 4 KiB (footer included) cut off.
    let truncated = tmp.path().join("mkectl-truncated");
    fs::copy(&bundled, &truncated).unwrap();
    {
        let f = fs::OpenOptions::new().write(true).open(&truncated).unwrap();
        let len = f.metadata().unwrap().len();
        f.set_len(len - 4096).unwrap();
        f.sync_all().unwrap();
    }
    assert_refused(&truncated, &empty_path, "truncated or corrupt");
    fs::remove_file(&truncated).unwrap();
}

#[test]
fn bundle_plan_lists_every_pinned_download_with_its_checksum() {
    let out = output(Command::new(MKECTL).args([
        "bundle",
        "plan",
        "--versions",
        PINS,
        "--arch",
        "amd64",
    ]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let plan = text(&out.stdout);
    let rows: Vec<Vec<&str>> = plan.lines().map(|l| l.split('\t').collect()).collect();
    assert!(rows.len() >= 5, "{plan}");
    for r in &rows {
        assert_eq!(r.len(), 5, "{r:?}");
        assert!(
            r[1].starts_with("https://") && r[1].ends_with(r[4]),
            "{r:?}"
        );
        let want = if r[2] == "sha256" { 64 } else { 128 };
        assert_eq!(r[3].len(), want, "{r:?}");
    }
    for c in ["kubernetes", "etcd", "containerd", "runc", "cni-plugins"] {
        assert!(rows.iter().any(|r| r[0] == c), "{c} missing:\n{plan}");
    }

    // An empty checksum is refused for download.
    let tmp = tempfile::tempdir().unwrap();
    let pins = tmp.path().join("versions.yaml");
    fs::write(
        &pins,
        "components:\n  - name: etcd\n    version: v3.5.21\n    artifacts:\n      - arch: amd64\n        url: https://example.invalid/etcd.tar.gz\n        sha256: \"\"\n        extract: {etcd/etcd: etcd}\n",
    )
    .unwrap();
    let out = output(
        Command::new(MKECTL)
            .args(["bundle", "plan", "--arch", "amd64", "--versions"])
            .arg(&pins),
    );
    assert_eq!(out.status.code(), Some(64));
    assert!(
        text(&out.stderr).contains("no checksum pinned for: etcd"),
        "{}",
        text(&out.stderr)
    );
    assert!(out.stdout.is_empty());
}

/// What `packaging/build-upstream.sh` builds and marks `ship`.
const SHIPPED: [&str; 5] = [
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
];
/// What it builds for tests only (upstream konnectivity peers).
const TEST_ONLY: [&str; 2] = ["proxy-server", "proxy-agent"];

/// Lowercase hex SHA-256 of a file, computed here (ring, the crate's one
/// crypto provider) independently of the bundle code.
fn sha256_file(path: &Path) -> String {
    let mut f = fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    hex::encode(ctx.finish().as_ref())
}

/// Hard link (the binaries are 50-95 MB each), else a copy.
fn link_or_copy(from: &Path, to: &Path) {
    if fs::hard_link(from, to).is_err() {
        fs::copy(from, to)
            .unwrap_or_else(|e| panic!("copy {} → {}: {e}", from.display(), to.display()));
    }
}

/// `bundle create --from-dir DIR --versions PINS --output OUT` (level 1: the
/// test is about what is recorded, not about compression).
fn create_from(dir: &Path, out: &Path) -> Output {
    let mut cmd = Command::new(MKECTL);
    cmd.args(["bundle", "create", "--from-dir"])
        .arg(dir)
        .args(["--versions", PINS, "--compression-level", "1", "--output"])
        .arg(out);
    output(&mut cmd)
}

#[test]
fn source_built_upstream_binaries_are_bundled_with_their_own_sha256() {
    let Some(up) = upstream::upstream_bins(&SHIPPED) else {
        return;
    };
    let record = up.join(SOURCE_BUILDS_FILE);
    assert!(
        record.is_file(),
        "{} is missing: packaging/build-upstream.sh writes it next to the binaries",
        record.display()
    );
    // Beside target/, not in /tmp, which may be a small tmpfs.
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let src = tmp.path().join("upstream");
    fs::create_dir(&src).unwrap();
    for name in SHIPPED.iter().chain(&TEST_ONLY) {
        let from = up.join(name);
        if *name == "proxy-server" || *name == "proxy-agent" {
            assert!(from.is_file(), "{} is missing", from.display());
        }
        link_or_copy(&from, &src.join(name));
    }
    fs::copy(&record, src.join(SOURCE_BUILDS_FILE)).unwrap();
    let sums: BTreeMap<&str, String> = SHIPPED
        .iter()
        .map(|n| (*n, sha256_file(&src.join(n))))
        .collect();

    let bundled = tmp.path().join("mkectl-upstream");
    let out = create_from(&src, &bundled);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let summary = text(&out.stdout);
    for name in SHIPPED {
        assert!(
            summary.lines().any(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                w.len() > 3
                    && w[0] == name
                    && w[2] == upstream::KUBE_VERSION
                    && l.contains("BUILT FROM SOURCE")
            }),
            "{name} not listed as built from source:\n{summary}"
        );
    }
    for name in TEST_ONLY {
        assert!(!summary.contains(name), "{name} was bundled:\n{summary}");
    }

    // The manifest: exactly the five, each the pinned version, built from
    // source, with the file's own SHA-256 and size.
    let manifest = Bundle::open(&bundled).unwrap().unwrap().manifest().unwrap();
    let mut names: Vec<&str> = manifest.files.iter().map(|f| f.name.as_str()).collect();
    names.sort();
    let mut want = SHIPPED.to_vec();
    want.sort();
    assert_eq!(
        names, want,
        "proxy-server/proxy-agent are test peers, never bundled"
    );
    for f in &manifest.files {
        assert_eq!(f.component, "kubernetes", "{f:?}");
        assert_eq!(f.version, upstream::KUBE_VERSION, "{f:?}");
        assert_eq!(f.origin, Origin::Source, "{f:?}");
        assert_eq!(f.origin.to_string(), "built from source");
        assert_eq!(f.sha256, sums[f.name.as_str()], "{}", f.name);
        assert_eq!(f.size, fs::metadata(src.join(&f.name)).unwrap().len());
    }

    // What the bundled mkectl prints about itself.
    let out = output(Command::new(&bundled).arg("version"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v = text(&out.stdout);
    let line = v
        .lines()
        .find(|l| {
            l.split_whitespace()
                .take(2)
                .eq(["kubernetes", upstream::KUBE_VERSION])
        })
        .unwrap_or_else(|| panic!("kubernetes {} not listed:\n{v}", upstream::KUBE_VERSION));
    assert!(line.contains("built from source"), "{v}");
    for name in SHIPPED {
        assert!(line.contains(name), "{name} missing:\n{v}");
    }
    let out = output(Command::new(&bundled).args(["version", "-o", "json"]));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let comps = j["bundle"]["components"].as_array().unwrap();
    assert_eq!(comps.len(), 1, "{j}");
    assert_eq!(comps[0]["origin"], "source", "{j}");
    assert_eq!(comps[0]["version"], upstream::KUBE_VERSION, "{j}");

    // Every bundled file's bytes check out against the manifest.
    let out = output(Command::new(&bundled).args(["bundle", "verify"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    fs::remove_file(&bundled).unwrap();

    // A binary changed after the build (one byte flipped in a copy) no
    // longer has the SHA-256 the record holds: refused, naming the file,
    // and nothing written.
    let bad = tmp.path().join("tampered");
    fs::create_dir(&bad).unwrap();
    for name in SHIPPED.iter().chain(&TEST_ONLY) {
        if *name != "kube-apiserver" {
            link_or_copy(&src.join(name), &bad.join(name));
        }
    }
    fs::copy(&record, bad.join(SOURCE_BUILDS_FILE)).unwrap();
    let tampered = bad.join("kube-apiserver");
    fs::copy(src.join("kube-apiserver"), &tampered).unwrap();
    {
        let mut f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&tampered)
            .unwrap();
        let at = f.metadata().unwrap().len() / 2;
        let mut b = [0u8; 1];
        f.seek(SeekFrom::Start(at)).unwrap();
        f.read_exact(&mut b).unwrap();
        f.seek(SeekFrom::Start(at)).unwrap();
        f.write_all(&[b[0] ^ 0xff]).unwrap();
    }
    let refused = tmp.path().join("mkectl-tampered");
    let out = create_from(&bad, &refused);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&tampered.display().to_string()), "{err}");
    assert!(err.contains("sha256 mismatch"), "{err}");
    assert!(err.contains(&sums["kube-apiserver"]), "{err}");
    assert!(err.contains(SOURCE_BUILDS_FILE), "{err}");
    assert!(!refused.exists(), "output written for a tampered input");
    let left: Vec<String> = fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "staging left behind: {left:?}");
    // The cached build itself is untouched.
    assert_eq!(
        sha256_file(&up.join("kube-apiserver")),
        sums["kube-apiserver"]
    );
}
