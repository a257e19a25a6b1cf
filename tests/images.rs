//! Offline images against the real containerd (Debian's 1.6 and its `ctr`):
//! archives packed here by `mkectl images pack` (busybox from the
//! busybox-static package; CoreDNS and mkectl's pause program from
//! `packaging/build-upstream.sh`) are imported from the images dir into the
//! `k8s.io` namespace, skipped by digest on the next run, a corrupt one is
//! named and skipped, the sandbox image is made from the pause program and
//! runs as a pod's PID 1, and a bundle carries archives into the images dir.
//!
//! Needs root, containerd, ctr, runc and `/bin/busybox`.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mkectl::components::containerd::{
    self, CgroupDriver, ContainerdSettings, DEFAULT_SANDBOX_IMAGE,
};
use mkectl::components::image_import::{self, ImageImport};
use mkectl::components::Manager;
use mkectl::config::NodePaths;
use mkectl::containerd::ContainerdClient;
use mkectl::images::import::{
    import_dir, ImportReport, ImportSettings, SandboxOutcome, SandboxSettings,
};
use tokio_util::sync::CancellationToken;

const NS: &str = "k8s.io";
const BUSYBOX: &str = "/bin/busybox";

/// Kills and unmounts whatever a test left behind (also on failure).
struct Cleanup {
    tmp: PathBuf,
    settings: ContainerdSettings,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let socket = self.settings.socket.clone();
        let tmp = self.tmp.clone();
        let (root, state) = (self.settings.root.clone(), self.settings.state.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(mkectl::containerd::kill_shims(&socket));
            mkectl::mounts::unmount_below(&[&root, &state]);
            let _ = fs::remove_dir_all(&tmp);
        })
        .join();
    }
}

/// A worker's containerd (the component, from mkectl's generated config) in
/// a fresh short temp dir, ready.
struct Node {
    tmp: PathBuf,
    paths: NodePaths,
    socket: PathBuf,
    manager: Manager,
    _cleanup: Cleanup,
}

impl Node {
    async fn start(bin_dir: Option<&Path>) -> Node {
        let tmp = tempfile::Builder::new()
            .prefix("mki-")
            .tempdir_in("/tmp")
            .unwrap()
            .keep();
        let paths = NodePaths::new(&tmp.join("d"), &tmp.join("r"), bin_dir);
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
        manager
            .start_all(&CancellationToken::new())
            .await
            .expect("containerd becomes ready");
        fs::create_dir_all(paths.images_dir()).unwrap();
        Node {
            socket: settings.socket.clone(),
            tmp,
            paths,
            manager,
            _cleanup: cleanup,
        }
    }

    fn images_dir(&self) -> PathBuf {
        self.paths.images_dir()
    }

    fn settings(&self) -> ImportSettings {
        ImportSettings::new(&self.images_dir(), &self.socket, Path::new("ctr"))
    }

    fn ctr(&self) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address")
            .arg(&self.socket)
            .arg("--namespace")
            .arg(NS);
        c
    }

    /// `ctr images ls` in k8s.io: name → target digest.
    fn images(&self) -> BTreeMap<String, String> {
        let out = common::output_ok(self.ctr().args(["images", "ls"]));
        out.lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() >= 3).then(|| (f[0].to_string(), f[2].to_string()))
            })
            .collect()
    }

    /// The image ID CRI (so kubelet) sees for `name`.
    async fn cri_image_id(&self, name: &str) -> Option<String> {
        let mut c = ContainerdClient::connect(&self.socket, Duration::from_secs(5))
            .await
            .unwrap();
        c.cri_image_status(name).await.unwrap().map(|i| i.id)
    }

    async fn stop(mut self) {
        self.manager.stop_all(Duration::from_secs(60)).await;
    }
}

/// Log lines written while `f` runs on this thread.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Runs the import with logs captured (a current-thread runtime keeps every
/// log line of it on this thread).
async fn import(settings: &ImportSettings) -> (ImportReport, String) {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let report = {
        let _guard = tracing::subscriber::set_default(subscriber);
        import_dir(settings, &|_| {}).await
    };
    (report, logs.text())
}

/// `mkectl images pack <args> --json`: the printed result.
fn pack(args: &[&str]) -> serde_json::Value {
    let out = common::output_ok(
        Command::new(common::MKECTL)
            .args(["images", "pack", "--json"])
            .args(args),
    );
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn busybox(name: &str, output: &Path, extra: &[&str]) -> serde_json::Value {
    assert!(
        Path::new(BUSYBOX).is_file(),
        "{BUSYBOX} missing: install busybox-static"
    );
    let mut args = vec![
        "--name",
        name,
        "--file",
        "/bin/busybox:/bin/busybox",
        "--entrypoint",
        "/bin/busybox",
        "--output",
        output.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    pack(&args)
}

fn files(v: &[impl AsRef<str>]) -> Vec<&str> {
    v.iter().map(|s| s.as_ref()).collect()
}

#[tokio::test(flavor = "current_thread")]
async fn archives_are_imported_once_by_digest_and_a_corrupt_one_is_named() {
    let node = Node::start(None).await;
    let dir = node.images_dir();
    let oci = busybox("mkectl/busybox:oci", &dir.join("a-busybox.oci.tar"), &[]);
    let docker = busybox(
        "mkectl/busybox:docker",
        &dir.join("b-busybox.docker.tar"),
        &["--format", "docker"],
    );
    let gz = busybox(
        "mkectl/busybox:gz",
        &dir.join("c-busybox.tar.gz"),
        &["--gzip"],
    );
    // A truncated copy: corrupt, and only it may fail.
    let raw = fs::read(dir.join("a-busybox.oci.tar")).unwrap();
    fs::write(dir.join("d-broken.tar"), &raw[..raw.len() / 2]).unwrap();
    fs::write(dir.join("notes.txt"), b"not an image").unwrap();
    assert_eq!(oci["name"], "docker.io/mkectl/busybox:oci", "normalised");

    let settings = node.settings();
    let (r, logs) = import(&settings).await;
    let imported: Vec<&str> = r.imported.iter().map(|a| a.file.as_str()).collect();
    assert_eq!(
        imported,
        [
            "a-busybox.oci.tar",
            "b-busybox.docker.tar",
            "c-busybox.tar.gz"
        ],
        "{logs}"
    );
    assert_eq!(r.failed.len(), 1, "{r:?}");
    assert_eq!(r.failed[0].0, "d-broken.tar");
    assert!(r.failed[0].1.contains("d-broken.tar"), "{}", r.failed[0].1);
    assert_eq!(r.ignored, ["notes.txt"]);
    assert!(
        logs.lines()
            .any(|l| l.contains("d-broken.tar") && l.contains("corrupt")),
        "{logs}"
    );
    for name in [
        "docker.io/mkectl/busybox:oci",
        "docker.io/mkectl/busybox:docker",
        "docker.io/mkectl/busybox:gz",
    ] {
        assert!(
            logs.lines()
                .any(|l| l.contains("imported") && l.contains(name)),
            "{name} not logged:\n{logs}"
        );
    }

    // What containerd holds: the OCI images at the digests packed here, the
    // docker archive with the config digest as CRI's image ID.
    let present = node.images();
    assert_eq!(
        present["docker.io/mkectl/busybox:oci"],
        oci["manifestDigest"].as_str().unwrap()
    );
    assert_eq!(
        present["docker.io/mkectl/busybox:gz"],
        gz["manifestDigest"].as_str().unwrap()
    );
    assert!(present.contains_key("docker.io/mkectl/busybox:docker"));
    assert_eq!(
        node.cri_image_id("docker.io/mkectl/busybox:docker").await,
        docker["configDigest"].as_str().map(String::from)
    );
    // The docker-archive image runs.
    let id = format!("imgs-run-{}", std::process::id());
    let out = common::output_ok(node.ctr().args([
        "run",
        "--rm",
        "docker.io/mkectl/busybox:docker",
        &id,
        "/bin/busybox",
        "echo",
        "ran-from-docker-archive",
    ]));
    assert_eq!(out.trim(), "ran-from-docker-archive");

    // The next start imports nothing: every image is present by digest.
    let (r2, logs2) = import(&settings).await;
    assert!(r2.imported.is_empty(), "{r2:?}\n{logs2}");
    assert_eq!(
        files(&r2.already_present),
        [
            "a-busybox.oci.tar",
            "b-busybox.docker.tar",
            "c-busybox.tar.gz"
        ]
    );
    assert_eq!(r2.failed.len(), 1);
    for f in [
        "a-busybox.oci.tar",
        "b-busybox.docker.tar",
        "c-busybox.tar.gz",
    ] {
        assert!(
            logs2
                .lines()
                .any(|l| l.contains(f) && l.contains("already present by digest")),
            "{f}:\n{logs2}"
        );
    }
    assert_eq!(node.images(), present);

    // Same name, other content: present by name is not enough.
    let extra = node.tmp.join("marker");
    fs::write(&extra, b"v2").unwrap();
    let v2 = busybox(
        "mkectl/busybox:oci",
        &dir.join("a-busybox.oci.tar"),
        &["--file", &format!("{}:/etc/marker", extra.display())],
    );
    assert_ne!(v2["manifestDigest"], oci["manifestDigest"]);
    let (r3, _) = import(&settings).await;
    assert_eq!(
        r3.imported
            .iter()
            .map(|a| a.file.as_str())
            .collect::<Vec<_>>(),
        ["a-busybox.oci.tar"]
    );
    assert_eq!(
        r3.imported[0].images[0].digest,
        v2["manifestDigest"].as_str().unwrap()
    );
    assert_eq!(
        node.images()["docker.io/mkectl/busybox:oci"],
        v2["manifestDigest"].as_str().unwrap()
    );
    node.stop().await;
}

/// PIDs of the children of `pid` (zombies included: they keep their parent).
fn children_of(pid: i32) -> Vec<(i32, char)> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let Some((_, after)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = after.split_whitespace().collect();
        if f.len() > 1 && f[1].parse::<i32>().ok() == Some(pid) {
            out.push((p, f[0].chars().next().unwrap_or('?')));
        }
    }
    out
}

#[tokio::test(flavor = "current_thread")]
async fn the_sandbox_image_is_made_from_the_pause_program_and_runs_as_pid_1() {
    let Some(up) = common::upstream::upstream_bins(&["pause"]) else {
        return;
    };
    let node = Node::start(Some(&up)).await;
    let mut settings = node.settings();
    settings.sandbox = Some(SandboxSettings {
        name: DEFAULT_SANDBOX_IMAGE.into(),
        pause_binary: mkectl::images::pause::find_binary(&node.paths),
    });
    assert_eq!(
        settings.sandbox.as_ref().unwrap().pause_binary,
        Some(up.join("pause"))
    );

    let (r, logs) = import(&settings).await;
    let SandboxOutcome::Packed { digest, imported } = r.sandbox.clone() else {
        panic!("{:?}\n{logs}", r.sandbox);
    };
    assert!(imported, "{logs}");
    assert_eq!(node.images()[DEFAULT_SANDBOX_IMAGE], digest);
    assert!(
        node.cri_image_id(DEFAULT_SANDBOX_IMAGE).await.is_some(),
        "CRI does not see the sandbox image"
    );
    assert!(logs.contains("imported the sandbox image"), "{logs}");
    let size = mkectl::images::pause::pack(DEFAULT_SANDBOX_IMAGE, &up.join("pause"))
        .unwrap()
        .0
        .len();
    eprintln!("pause image: {DEFAULT_SANDBOX_IMAGE} {digest}, archive {size} bytes");

    // Packed the same way at the next start: present by digest, skipped.
    let (r, logs) = import(&settings).await;
    assert_eq!(
        r.sandbox,
        SandboxOutcome::Packed {
            digest: digest.clone(),
            imported: false
        },
        "{logs}"
    );

    // An archive of the operator's under the sandbox name wins; without it
    // mkectl's pause comes back.
    let custom = node.images_dir().join("custom-pause.tar");
    let theirs = busybox(DEFAULT_SANDBOX_IMAGE, &custom, &[]);
    let (r, _) = import(&settings).await;
    assert_eq!(
        r.sandbox,
        SandboxOutcome::FromArchive("custom-pause.tar".into())
    );
    assert_eq!(
        node.images()[DEFAULT_SANDBOX_IMAGE],
        theirs["manifestDigest"].as_str().unwrap()
    );
    fs::remove_file(&custom).unwrap();
    let (r, _) = import(&settings).await;
    assert_eq!(
        r.sandbox,
        SandboxOutcome::Packed {
            digest: digest.clone(),
            imported: true
        }
    );

    // It runs: PID 1 of its own PID namespace, unprivileged, reaps the
    // orphans re-parented to it, and exits 0 on SIGTERM.
    let id = format!("pause-{}", std::process::id());
    let mut run = node
        .ctr()
        .args([
            "run",
            "--rm",
            "--mount",
            "type=bind,src=/bin/busybox,dst=/bin/busybox,options=rbind:ro",
            DEFAULT_SANDBOX_IMAGE,
            &id,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = common::wait_for("pause task running", Duration::from_secs(20), || {
        let tasks = common::output_ok(node.ctr().args(["tasks", "ls"]));
        tasks
            .lines()
            .find(|l| l.starts_with(&format!("{id} ")) && l.contains("RUNNING"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok())
    });
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.contains("65535")),
        "{status}"
    );
    let nspid = status
        .lines()
        .find(|l| l.starts_with("NSpid:"))
        .unwrap()
        .to_string();
    assert!(
        nspid.trim_end().ends_with("\t1"),
        "not PID 1 inside: {nspid}"
    );

    // A shell that leaves a sleep behind: the sleep is re-parented to pause,
    // and when it exits pause must reap it (no zombie stays). The sleep's
    // stdio is closed, or ctr would wait for it before returning.
    common::output_ok(node.ctr().args([
        "tasks",
        "exec",
        "--exec-id",
        "orphan",
        &id,
        "/bin/busybox",
        "sh",
        "-c",
        "/bin/busybox sleep 3 </dev/null >/dev/null 2>&1 & exit 0",
    ]));
    common::wait_for(
        "the orphan re-parented to pause",
        Duration::from_secs(5),
        || (!children_of(pid).is_empty()).then_some(()),
    );
    common::wait_for("the orphan reaped", Duration::from_secs(15), || {
        children_of(pid).is_empty().then_some(())
    });

    common::output_ok(
        node.ctr()
            .args(["tasks", "kill", "--signal", "SIGTERM", &id]),
    );
    let exit = common::wait_for("pause exits on SIGTERM", Duration::from_secs(20), || {
        run.try_wait().unwrap()
    });
    let mut err = String::new();
    if let Some(mut e) = run.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut err);
    }
    assert!(exit.success(), "pause exited {exit:?}: {err}");
    node.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn the_worker_step_imports_the_images_dir_and_the_sandbox_image() {
    let Some(up) = common::upstream::upstream_bins(&["pause"]) else {
        return;
    };
    // containerd, then the import step, as the worker runs them.
    let node = Node::start(Some(&up)).await;
    busybox(
        "mkectl/busybox:step",
        &node.images_dir().join("busybox.tar"),
        &[],
    );
    let mut manager = Manager::new();
    manager.add(Box::new(ImageImport::new(
        node.paths.clone(),
        node.socket.clone(),
        DEFAULT_SANDBOX_IMAGE,
    )));
    manager.init_all().await.unwrap();
    manager
        .start_all(&CancellationToken::new())
        .await
        .expect("the import step finishes");
    let ready = manager.readiness().await;
    assert_eq!(ready, [(image_import::NAME, true, String::new())]);
    let present = node.images();
    assert!(
        present.contains_key("docker.io/mkectl/busybox:step"),
        "{present:?}"
    );
    assert!(present.contains_key(DEFAULT_SANDBOX_IMAGE), "{present:?}");
    manager.stop_all(Duration::from_secs(10)).await;
    node.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn coredns_is_packed_by_the_packaging_step_and_runs() {
    let Some(up) = common::upstream::upstream_bins(&["coredns"]) else {
        return;
    };
    let node = Node::start(None).await;
    let out = node.tmp.join("packed");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/images/build-images.sh");
    let printed = common::output_ok(
        Command::new("bash")
            .arg(&script)
            .arg("--mkectl")
            .arg(common::MKECTL)
            .arg("--bin-dir")
            .arg(&up)
            .arg("--output")
            .arg(&out),
    );
    assert_eq!(printed.trim().lines().last(), Some(out.to_str().unwrap()));
    let archive = out.join("coredns-v1.11.3.oci.tar");
    let info = mkectl::images::inspect(&archive).unwrap();
    assert_eq!(
        info.names(),
        [mkectl::applier::settings::DEFAULT_COREDNS_IMAGE],
        "the name the coredns stack runs"
    );
    eprintln!(
        "coredns binary {} bytes, image archive {} bytes",
        fs::metadata(up.join("coredns")).unwrap().len(),
        fs::metadata(&archive).unwrap().len()
    );
    fs::rename(&archive, node.images_dir().join("coredns.tar")).unwrap();
    let (r, logs) = import(&node.settings()).await;
    assert_eq!(r.imported.len(), 1, "{logs}");
    let id = format!("coredns-{}", std::process::id());
    let version = common::output_ok(node.ctr().args([
        "run",
        "--rm",
        mkectl::applier::settings::DEFAULT_COREDNS_IMAGE,
        &id,
        "/coredns",
        "-version",
    ]));
    assert!(version.contains("CoreDNS-1.11.3"), "{version}");
    node.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_bundle_carries_image_archives_into_the_images_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("bins");
    fs::create_dir(&src).unwrap();
    fs::copy("/bin/true", src.join("hello")).unwrap();
    let archive = tmp.path().join("busybox.oci.tar");
    busybox("mkectl/busybox:bundled", &archive, &[]);
    let bundled = tmp.path().join("mkectl-bundled");
    let out = common::output_ok(
        Command::new(common::MKECTL)
            .args(["bundle", "create", "--allow-local", "--from-dir"])
            .arg(&src)
            .arg("--image")
            .arg(&archive)
            .arg("--mkectl")
            .arg(common::MKECTL)
            .arg("--output")
            .arg(&bundled),
    );
    assert!(out.contains("1 image archives"), "{out}");
    assert!(
        out.lines().any(
            |l| l.contains("busybox.oci.tar") && l.contains("docker.io/mkectl/busybox:bundled")
        ),
        "{out}"
    );
    let v = common::output_ok(Command::new(&bundled).arg("version"));
    assert!(v.contains("bundled image archives:"), "{v}");
    common::output_ok(Command::new(&bundled).args(["bundle", "verify"]));

    // The bundled mkectl stages it at worker start (this node has not
    // joined, so the worker stops right after staging: exit 64).
    let node = Node::start(None).await;
    let status = Command::new(&bundled)
        .arg("--data-dir")
        .arg(&node.paths.data_dir)
        .arg("--run-dir")
        .arg(node.tmp.join("r2"))
        .arg("worker")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(64));
    let staged = node.images_dir().join("busybox.oci.tar");
    assert_eq!(fs::read(&staged).unwrap(), fs::read(&archive).unwrap());

    let (r, logs) = import(&node.settings()).await;
    assert_eq!(r.imported.len(), 1, "{logs}");
    assert!(node
        .images()
        .contains_key("docker.io/mkectl/busybox:bundled"));
    node.stop().await;
}

#[test]
fn the_packaging_step_names_coredns_as_the_stack_runs_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = fs::read_to_string(root.join("packaging/images/build-images.sh")).unwrap();
    let image = script
        .lines()
        .find_map(|l| l.strip_prefix("COREDNS_IMAGE="))
        .unwrap();
    assert_eq!(image, mkectl::applier::settings::DEFAULT_COREDNS_IMAGE);
    let build = fs::read_to_string(root.join("packaging/build-upstream.sh")).unwrap();
    let version = build
        .lines()
        .find_map(|l| l.strip_prefix("COREDNS_VERSION="))
        .unwrap();
    assert!(
        image.ends_with(&format!(":{version}")),
        "{image} vs {version}"
    );
    let gomod = fs::read_to_string(root.join("packaging/upstream/coredns/go.mod")).unwrap();
    assert!(
        gomod.contains(&format!("require github.com/coredns/coredns {version}\n")),
        "{gomod}"
    );
    let gosum = fs::read_to_string(root.join("packaging/upstream/coredns/go.sum")).unwrap();
    assert!(
        gosum
            .lines()
            .any(|l| l.starts_with(&format!("github.com/coredns/coredns {version} h1:"))),
        "go.sum has no checksum for coredns {version}"
    );
}

/// The CRI calls kubelet makes for a pod sandbox, as prost messages (field
/// numbers from `k8s.io/cri-api` runtime/v1; only what is set here).
mod cri {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PodSandboxMetadata {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub uid: String,
        #[prost(string, tag = "3")]
        pub namespace: String,
        #[prost(uint32, tag = "4")]
        pub attempt: u32,
    }
    /// `network`/`pid`/`ipc`: 0 POD, 1 CONTAINER, 2 NODE.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NamespaceOption {
        #[prost(int32, tag = "1")]
        pub network: i32,
        #[prost(int32, tag = "2")]
        pub pid: i32,
        #[prost(int32, tag = "3")]
        pub ipc: i32,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LinuxSandboxSecurityContext {
        #[prost(message, optional, tag = "1")]
        pub namespace_options: Option<NamespaceOption>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LinuxPodSandboxConfig {
        #[prost(string, tag = "1")]
        pub cgroup_parent: String,
        #[prost(message, optional, tag = "2")]
        pub security_context: Option<LinuxSandboxSecurityContext>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PodSandboxConfig {
        #[prost(message, optional, tag = "1")]
        pub metadata: Option<PodSandboxMetadata>,
        #[prost(string, tag = "2")]
        pub hostname: String,
        #[prost(message, optional, tag = "8")]
        pub linux: Option<LinuxPodSandboxConfig>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RunPodSandboxRequest {
        #[prost(message, optional, tag = "1")]
        pub config: Option<PodSandboxConfig>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RunPodSandboxResponse {
        #[prost(string, tag = "1")]
        pub pod_sandbox_id: String,
    }
    /// Stop, Remove and Status requests all carry just the id (field 1).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SandboxId {
        #[prost(string, tag = "1")]
        pub pod_sandbox_id: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Empty {}
    /// `state`: 0 SANDBOX_READY, 1 SANDBOX_NOTREADY.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PodSandboxStatus {
        #[prost(string, tag = "1")]
        pub id: String,
        #[prost(int32, tag = "3")]
        pub state: i32,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PodSandboxStatusResponse {
        #[prost(message, optional, tag = "1")]
        pub status: Option<PodSandboxStatus>,
    }
}

/// One unary CRI call on containerd's socket.
async fn cri_call<Req, Resp>(socket: &Path, method: &'static str, req: Req) -> Resp
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    let path = socket.to_path_buf();
    let connector = tower::service_fn(move |_: http::Uri| {
        let p = path.clone();
        async move {
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                tokio::net::UnixStream::connect(p).await?,
            ))
        }
    });
    let channel = tonic::transport::Endpoint::from_static("http://containerd")
        .timeout(Duration::from_secs(120))
        .connect_with_connector(connector)
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
    grpc.unary(
        tonic::Request::new(req),
        http::uri::PathAndQuery::from_static(method),
        codec,
    )
    .await
    .unwrap_or_else(|s| panic!("{method}: {s}"))
    .into_inner()
}

/// What kubelet does first for every pod: CRI `RunPodSandbox`. containerd
/// starts the sandbox from its configured `sandbox_image`, which the import
/// provided; no registry is reachable, so a pull could not have succeeded.
#[tokio::test(flavor = "current_thread")]
async fn a_pod_sandbox_starts_from_the_provided_pause_image_without_a_pull() {
    let Some(up) = common::upstream::upstream_bins(&["pause"]) else {
        return;
    };
    let node = Node::start(Some(&up)).await;
    let mut settings = node.settings();
    settings.sandbox = Some(SandboxSettings {
        name: DEFAULT_SANDBOX_IMAGE.into(),
        pause_binary: Some(up.join("pause")),
    });
    let (r, logs) = import(&settings).await;
    assert!(
        matches!(r.sandbox, SandboxOutcome::Packed { imported: true, .. }),
        "{logs}"
    );

    // Never let CRI fall back to a pull (network): the image must be there.
    assert!(
        node.cri_image_id(DEFAULT_SANDBOX_IMAGE).await.is_some(),
        "sandbox image missing; not asking CRI for a sandbox"
    );

    let uid = format!("mkectl-images-{}", std::process::id());
    let cgroup_parent = match CgroupDriver::detect() {
        CgroupDriver::Systemd => "system.slice".to_string(),
        CgroupDriver::Cgroupfs => format!("/{uid}"),
    };
    let config = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: "sandbox".into(),
            uid: uid.clone(),
            namespace: "default".into(),
            attempt: 0,
        }),
        // Host network: no CNI involved, the sandbox image is what is
        // tested (and no hostname: the UTS namespace is the host's too).
        hostname: String::new(),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent,
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: 2,
                    pid: 0,
                    ipc: 0,
                }),
            }),
        }),
    };
    let run: cri::RunPodSandboxResponse = cri_call(
        &node.socket,
        "/runtime.v1.RuntimeService/RunPodSandbox",
        cri::RunPodSandboxRequest {
            config: Some(config),
        },
    )
    .await;
    let id = run.pod_sandbox_id;
    let status: cri::PodSandboxStatusResponse = cri_call(
        &node.socket,
        "/runtime.v1.RuntimeService/PodSandboxStatus",
        cri::SandboxId {
            pod_sandbox_id: id.clone(),
        },
    )
    .await;
    assert_eq!(status.status.map(|s| s.state), Some(0), "sandbox not ready");
    // Its container runs mkectl's pause image.
    let containers = common::output_ok(node.ctr().args(["containers", "ls"]));
    let line = containers
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{id} not in\n{containers}"));
    assert!(line.contains(DEFAULT_SANDBOX_IMAGE), "{line}");

    let _: cri::Empty = cri_call(
        &node.socket,
        "/runtime.v1.RuntimeService/StopPodSandbox",
        cri::SandboxId {
            pod_sandbox_id: id.clone(),
        },
    )
    .await;
    let _: cri::Empty = cri_call(
        &node.socket,
        "/runtime.v1.RuntimeService/RemovePodSandbox",
        cri::SandboxId { pod_sandbox_id: id },
    )
    .await;
    if let CgroupDriver::Cgroupfs = CgroupDriver::detect() {
        // runc leaves the (empty) parent cgroups it created.
        for ctl in fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = fs::remove_dir(ctl.path().join(&uid));
        }
        let _ = fs::remove_dir(Path::new("/sys/fs/cgroup").join(&uid));
    }
    node.stop().await;
}
