//! The worker's containerd for real (Debian's containerd 1.6 + runc): it comes
//! up from the config mkectl generates, `ctr` answers on its socket, a
//! container runs from an image built here from busybox-static, and stopping
//! the component leaves no shim, no container process and no mount behind.
//!
//! Needs root, containerd, ctr, runc, tar and `/bin/busybox` from the
//! `busybox-static` package.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use mkectl::components::containerd::{
    self, CgroupDriver, ContainerdSettings, DEFAULT_SANDBOX_IMAGE,
};
use mkectl::components::Manager;
use mkectl::config::NodePaths;
use tokio_util::sync::CancellationToken;

const NAMESPACE: &str = "mkectl-test";
const IMAGE: &str = "docker.io/mkectl/busybox:test";
const BUSYBOX: &str = "/bin/busybox";
/// runc's state root when the client (ctr) passes no runtime options.
const CTR_RUNC_ROOT: &str = "/run/containerd/runc";

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

fn run(cmd: &mut Command) -> String {
    common::output_ok(cmd)
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Writes `blob` under `blobs/sha256/` and returns its OCI descriptor.
fn put_blob(layout: &Path, media_type: &str, blob: &[u8]) -> serde_json::Value {
    let hex = sha256_hex(blob);
    fs::write(layout.join("blobs/sha256").join(&hex), blob).unwrap();
    serde_json::json!({
        "mediaType": media_type,
        "digest": format!("sha256:{hex}"),
        "size": blob.len(),
    })
}

/// An OCI image-layout tarball with one layer holding busybox and a few of
/// its applets, named [`IMAGE`].
fn build_busybox_image(dir: &Path) -> PathBuf {
    assert!(
        Path::new(BUSYBOX).is_file(),
        "{BUSYBOX} missing: install the busybox-static package"
    );
    let rootfs = dir.join("rootfs");
    fs::create_dir_all(rootfs.join("bin")).unwrap();
    fs::copy(BUSYBOX, rootfs.join("bin/busybox")).unwrap();
    for applet in ["sh", "echo", "sleep", "cat"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    let layer_tar = dir.join("layer.tar");
    run(Command::new("tar")
        .arg("--numeric-owner")
        .arg("--owner=0")
        .arg("--group=0")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&layer_tar)
        .arg("."));
    let layer = fs::read(&layer_tar).unwrap();

    let layout = dir.join("layout");
    fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    let layer_desc = put_blob(&layout, "application/vnd.oci.image.layer.v1.tar", &layer);
    let config = serde_json::json!({
        "architecture": go_arch(),
        "os": "linux",
        "config": { "Cmd": ["/bin/sh"] },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{}", sha256_hex(&layer))] },
    });
    let config_desc = put_blob(
        &layout,
        "application/vnd.oci.image.config.v1+json",
        &serde_json::to_vec(&config).unwrap(),
    );
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config_desc,
        "layers": [layer_desc],
    });
    let mut manifest_desc = put_blob(
        &layout,
        "application/vnd.oci.image.manifest.v1+json",
        &serde_json::to_vec(&manifest).unwrap(),
    );
    manifest_desc["annotations"] = serde_json::json!({
        "io.containerd.image.name": IMAGE,
        "org.opencontainers.image.ref.name": "test",
    });
    manifest_desc["platform"] = serde_json::json!({ "architecture": go_arch(), "os": "linux" });
    let index = serde_json::json!({ "schemaVersion": 2, "manifests": [manifest_desc] });
    fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let image_tar = dir.join("image.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&image_tar)
        .arg("oci-layout")
        .arg("index.json")
        .arg("blobs"));
    image_tar
}

fn ctr(socket: &Path) -> Command {
    let mut c = Command::new("ctr");
    c.arg("--address")
        .arg(socket)
        .arg("--namespace")
        .arg(NAMESPACE);
    c
}

/// Mount points at or below `dir` in this mount namespace.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mut dirs = vec![dir.to_path_buf()];
    if let Ok(c) = dir.canonicalize() {
        dirs.push(c);
    }
    mkectl::mounts::mounts_below(&info, &dirs)
}

/// Pids of live processes whose command line mentions `needle`.
fn pids_mentioning(needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(cmd) = fs::read(format!("/proc/{pid}/cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) && common::alive(pid) {
                out.push(pid);
            }
        }
    }
    out
}

/// Kills and unmounts whatever a failed test left behind.
struct Cleanup {
    tmp: PathBuf,
    settings: ContainerdSettings,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let socket = self.settings.socket.clone();
        let tmp = self.tmp.clone();
        let root = self.settings.root.clone();
        let state = self.settings.state.clone();
        // Drop may run inside the test's runtime: use a thread with its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(mkectl::containerd::kill_shims(&socket));
            for pid in pids_mentioning(&tmp.display().to_string()) {
                common::signal(pid, libc::SIGKILL);
            }
            mkectl::mounts::unmount_below(&[&root, &state]);
            let _ = fs::remove_dir_all(&tmp);
        })
        .join();
    }
}

/// A worker's containerd in a fresh short temp dir (the socket path must stay
/// under the 108-byte UDS limit), started and ready, with the test image
/// imported.
struct Node {
    tmp: PathBuf,
    paths: NodePaths,
    settings: ContainerdSettings,
    socket: PathBuf,
    manager: Manager,
    containerd_pid: i32,
    _cleanup: Cleanup,
}

impl Node {
    async fn start() -> Node {
        let tmp = tempfile::Builder::new()
            .prefix("mk-")
            .tempdir_in("/tmp")
            .unwrap()
            .keep();
        let paths = NodePaths::new(&tmp.join("d"), &tmp.join("r"), None);
        let settings =
            ContainerdSettings::new(&paths, DEFAULT_SANDBOX_IMAGE, CgroupDriver::detect());
        let cleanup = Cleanup {
            tmp: tmp.clone(),
            settings: settings.clone(),
        };
        let mut manager = Manager::new();
        manager.add(Box::new(containerd::Containerd::new(
            settings.clone(),
            paths.clone(),
        )));
        manager.init_all().await.unwrap();
        let config = fs::read_to_string(&settings.config_file).unwrap();
        assert!(config.contains(&format!("root = \"{}\"", settings.root.display())));
        manager
            .start_all(&CancellationToken::new())
            .await
            .expect("containerd becomes ready (containerd and CRI answer)");
        let containerd_pid: i32 = fs::read_to_string(paths.run_dir.join("containerd.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let socket = settings.socket.clone();
        let image_tar = build_busybox_image(&tmp.join("img"));
        run(ctr(&socket).args(["images", "import"]).arg(&image_tar));
        Node {
            tmp,
            paths,
            settings,
            socket,
            manager,
            containerd_pid,
            _cleanup: cleanup,
        }
    }

    /// Starts a detached `sleep` container named `id`; returns its pid and
    /// the sleep argument (unique, to find it in /proc).
    fn run_sleeper(&self, id: &str) -> (i32, String) {
        let sleep_arg = format!(
            "{}",
            100_000 + (std::process::id() + id.len() as u32) % 100_000
        );
        run(ctr(&self.socket).args(["run", "-d", IMAGE, id, "/bin/sleep", &sleep_arg]));
        let pid = common::wait_for("sleeper task running", Duration::from_secs(20), || {
            let tasks = run(ctr(&self.socket).args(["tasks", "ls"]));
            tasks
                .lines()
                .find(|l| l.starts_with(&format!("{id} ")) && l.contains("RUNNING"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|p| p.parse::<i32>().ok())
        });
        assert!(common::alive(pid));
        (pid, sleep_arg)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_runs_containers_and_stops_clean() {
    let mut node = Node::start().await;
    let socket = node.socket.clone();

    // The daemon answers ctr on the generated socket and runs from our config.
    let version = run(ctr(&socket).arg("version"));
    assert!(version.contains("Server:"), "{version}");
    let cmdline = fs::read_to_string(format!("/proc/{}/cmdline", node.containerd_pid)).unwrap();
    assert!(
        cmdline.contains(&node.settings.config_file.display().to_string()),
        "{cmdline}"
    );
    let plugins = run(ctr(&socket).args(["plugins", "ls"]));
    let cri_line = plugins
        .lines()
        .find(|l| l.contains("io.containerd.grpc.v1") && l.contains(" cri "))
        .unwrap_or_else(|| panic!("no cri plugin in\n{plugins}"));
    assert!(cri_line.trim_end().ends_with("ok"), "{cri_line}");

    // The locally built image was imported and runs.
    let images = run(ctr(&socket).args(["images", "ls", "-q"]));
    assert!(images.lines().any(|l| l == IMAGE), "{images}");
    let marker = format!("mkectl-marker-{}", std::process::id());
    let out = run(ctr(&socket).args([
        "run",
        "--rm",
        IMAGE,
        &format!("echo-{}", std::process::id()),
        "/bin/sh",
        "-c",
        &format!("echo {marker}"),
    ]));
    assert_eq!(out.trim(), marker);

    // A long-running container: its shim and rootfs mount exist while it runs.
    let sleeper = format!("sleeper-{}", std::process::id());
    let (sleeper_pid, sleep_arg) = node.run_sleeper(&sleeper);
    let shims = mkectl::containerd::shims_of(&socket);
    assert!(!shims.is_empty(), "no shim found for {}", socket.display());
    assert!(
        !mounts_under(&node.settings.state).is_empty(),
        "the running container's rootfs should be mounted under the state dir"
    );
    // ctr gives runc its default root; the task's runc state lives there
    // until the task is deleted through containerd.
    let runc_state = Path::new(CTR_RUNC_ROOT).join(NAMESPACE).join(&sleeper);
    assert!(runc_state.exists(), "{}", runc_state.display());

    node.manager.stop_all(Duration::from_secs(60)).await;

    // Nothing is left: containerd, shims, the container, mounts.
    assert!(
        !common::alive(node.containerd_pid),
        "containerd still running"
    );
    for pid in &shims {
        assert!(!common::alive(*pid), "shim {pid} still running");
    }
    assert!(mkectl::containerd::shims_of(&socket).is_empty());
    assert!(
        !common::alive(sleeper_pid),
        "container process still running"
    );
    assert!(
        pids_mentioning(&format!("sleep {sleep_arg}")).is_empty(),
        "sleep still running"
    );
    assert_eq!(mounts_under(&node.tmp), Vec::<PathBuf>::new());
    assert!(!node.paths.run_dir.join("containerd.pid").exists());
    // The task was killed and deleted through containerd (the orderly path),
    // not merely swept: runc's state for it is gone.
    assert!(
        !runc_state.exists(),
        "task was not deleted through containerd: {} remains",
        runc_state.display()
    );
}

/// The fallback for when containerd cannot be asked (crashed, wedged): the
/// sweep finds this node's shims by their `-address`, kills them with their
/// containers, and unmounts what is left under the node's dirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_kills_shims_and_containers_and_unmounts() {
    let mut node = Node::start().await;
    let sleeper = format!("swept-{}", std::process::id());
    let (sleeper_pid, _) = node.run_sleeper(&sleeper);
    let shims = mkectl::containerd::shims_of(&node.socket);
    assert!(!shims.is_empty());

    let killed = mkectl::containerd::kill_shims(&node.socket).await;
    assert_eq!(killed, shims);
    assert!(!common::alive(sleeper_pid), "container survived the sweep");
    for pid in &shims {
        assert!(!common::alive(*pid), "shim {pid} survived the sweep");
    }
    mkectl::mounts::unmount_below(&[&node.settings.root, &node.settings.state]);
    assert_eq!(mounts_under(&node.tmp), Vec::<PathBuf>::new());

    // containerd is still there and stops cleanly afterwards.
    assert!(common::alive(node.containerd_pid));
    node.manager.stop_all(Duration::from_secs(60)).await;
    assert!(!common::alive(node.containerd_pid));
    assert!(mkectl::containerd::shims_of(&node.socket).is_empty());
    assert_eq!(mounts_under(&node.tmp), Vec::<PathBuf>::new());
    let _ = fs::remove_dir_all(Path::new(CTR_RUNC_ROOT).join(NAMESPACE).join(&sleeper));
}
