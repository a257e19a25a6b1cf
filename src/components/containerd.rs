//! containerd on a worker: a supervised child running from a config mkectl
//! generates, with everything under the node's data and run dirs so several
//! workers (and a host containerd) can share one machine.
//!
//! # Layout (see [`NodePaths`])
//!
//! | what | where |
//! |---|---|
//! | config | `<data-dir>/containerd/config.toml` |
//! | `root` (images, snapshots, metadata) | `<data-dir>/containerd/root` |
//! | `state` (bundles, rootfs mounts, CRI netns mounts) | `<run-dir>/containerd/state` |
//! | gRPC + CRI socket | `<run-dir>/containerd/containerd.sock` |
//! | ttrpc socket | `<run-dir>/containerd/containerd.sock.ttrpc` |
//! | runc state of CRI containers | `<run-dir>/containerd/runc` |
//!
//! The CRI plugin is on, with the overlayfs snapshotter, the runc v2 shim,
//! a configurable sandbox (pause) image (which the worker provides itself,
//! see `crate::images::pause`, so it is never pulled), `SystemdCgroup`
//! matching the host's cgroup driver ([`CgroupDriver::detect`]) and
//! `restrict_oom_score_adj` where mkectl lacks `CAP_SYS_RESOURCE`
//! ([`ContainerdSettings::restrict_oom_score_adj`]). No plugin is disabled:
//! the ones that cannot work on a host (btrfs, zfs, aufs, devmapper) skip
//! themselves and say so in the log.
//!
//! # Readiness
//!
//! `ready` calls containerd's own `Version` RPC *and* the CRI
//! `RuntimeService/Version` RPC on the socket, so "ready" means what kubelet
//! needs: the daemon answers and the CRI plugin is loaded.
//!
//! # Stopping leaves nothing behind
//!
//! containerd starts one shim per container (per pod with CRI) in its own
//! session (`setsid`), so neither the supervisor's process group nor
//! `PR_SET_PDEATHSIG` reaches shims or containers; containerd itself is
//! designed to leave them running when it exits. mkectl's rule is that
//! nothing it started outlives it, so [`Component::stop`] does, in order:
//!
//! 1. while containerd still answers: for every namespace, SIGKILL every task
//!    (`all = true`, so exec'd processes die too), wait for each to exit
//!    (bounded by [`TASK_DRAIN_TIMEOUT`]) and delete it; deleting a task makes
//!    its shim unmount the rootfs and exit;
//! 2. stop containerd (SIGTERM, [`STOP_GRACE`], SIGKILL);
//! 3. sweep: any shim still running whose command line names *this*
//!    containerd's socket is SIGKILLed together with its descendants (the
//!    containers), and any mount left below this node's containerd `root` or
//!    `state` dirs (rootfs overlays, CRI netns bind mounts, shm) is lazily
//!    unmounted. Both are logged as warnings: they mean step 1 could not run.
//!
//! Workloads therefore stop with the worker; they are restarted by kubelet
//! when the worker comes back. CNI resources inside pod network namespaces
//! disappear with the namespaces; IPAM state on disk is the CNI plugin's to
//! reconcile.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::Mutex;
use tracing::{info, warn};

use super::{binary, Component, ComponentError};
use crate::config::NodePaths;
use crate::containerd::{drain_tasks, kill_shims, ContainerdClient};
use crate::fsutil;
use crate::fsutil::absolute;
use crate::mounts::unmount_below;
use crate::supervisor::{ChildSpec, Supervised};

pub const NAME: &str = "containerd";
/// The pause image CRI uses for pod sandboxes (what kubelet 1.32 expects).
pub const DEFAULT_SANDBOX_IMAGE: &str = crate::config::defaults::SANDBOX_IMAGE;
/// containerd's own log level.
pub const DEFAULT_LOG_LEVEL: &str = "info";
/// containerd exits within a second or two after SIGTERM.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// containerd loads its plugins in well under a second on a healthy host.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// One readiness probe (connect + two RPCs) may take this long.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on killing, waiting for and deleting every task at stop.
pub const TASK_DRAIN_TIMEOUT: Duration = Duration::from_secs(15);
/// Mode of containerd's `root` and `state` dirs, as containerd creates them:
/// others may traverse (not list), which containers with remapped user ids
/// need to reach their rootfs.
pub const TRAVERSE_DIR_MODE: u32 = 0o711;
/// Size of `sun_path` in `struct sockaddr_un` on Linux, NUL included.
pub const MAX_SOCKET_PATH: usize = 108;

/// Settings containerd cannot run with.
#[derive(Debug, thiserror::Error)]
pub enum ContainerdSettingsError {
    #[error(
        "socket path {} is {len} bytes; at most {} fit in a unix socket address: use a shorter run dir",
        path.display(),
        MAX_SOCKET_PATH - 1
    )]
    SocketPathTooLong { path: PathBuf, len: usize },
    #[error("sandbox image is empty")]
    EmptySandboxImage,
}
/// The systemd marker directory: present iff systemd is PID 1.
pub const SYSTEMD_MARKER: &str = "/run/systemd/system";

/// Which cgroup driver containerd (for CRI containers) and kubelet use. They
/// must match, and both must match the host: with systemd as init, systemd
/// owns the cgroup tree and `cgroupfs` would fight it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    Systemd,
    #[default]
    Cgroupfs,
}

impl CgroupDriver {
    /// `systemd` when systemd is the init system (`/run/systemd/system`
    /// exists, the check `sd_booted()` makes), else `cgroupfs`.
    pub fn detect() -> Self {
        Self::detect_at(Path::new(SYSTEMD_MARKER))
    }

    /// [`CgroupDriver::detect`] with the marker path as a seam for tests.
    pub fn detect_at(marker: &Path) -> Self {
        if marker.is_dir() {
            CgroupDriver::Systemd
        } else {
            CgroupDriver::Cgroupfs
        }
    }

    /// The name kubelet's `cgroupDriver` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            CgroupDriver::Systemd => "systemd",
            CgroupDriver::Cgroupfs => "cgroupfs",
        }
    }
}

/// Everything the containerd component needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerdSettings {
    pub config_file: PathBuf,
    pub root: PathBuf,
    pub state: PathBuf,
    pub socket: PathBuf,
    pub ttrpc_socket: PathBuf,
    pub runc_root: PathBuf,
    /// containerd's `opt` plugin dir (kept off the host's `/opt/containerd`).
    pub opt_dir: PathBuf,
    pub sandbox_image: String,
    pub cgroup_driver: CgroupDriver,
    pub cni_bin_dir: PathBuf,
    pub cni_conf_dir: PathBuf,
    pub log_level: String,
    /// CRI's `restrict_oom_score_adj`: never give a container a lower OOM
    /// score adjustment than containerd's own. Needed where mkectl runs
    /// without `CAP_SYS_RESOURCE` (some VMs and containers): there runc
    /// cannot set the -998 CRI gives every pod sandbox, and no pod starts.
    pub restrict_oom_score_adj: bool,
}

impl ContainerdSettings {
    /// Settings with the node's standard layout and the defaults. Paths are
    /// made absolute: containerd and its shims resolve relative ones against
    /// their own working directories.
    pub fn new(paths: &NodePaths, sandbox_image: &str, cgroup_driver: CgroupDriver) -> Self {
        Self {
            config_file: absolute(&paths.containerd_config_file()),
            root: absolute(&paths.containerd_root()),
            state: absolute(&paths.containerd_state()),
            socket: absolute(&paths.containerd_socket()),
            ttrpc_socket: absolute(&paths.containerd_ttrpc_socket()),
            runc_root: absolute(&paths.containerd_runc_root()),
            opt_dir: absolute(&paths.containerd_dir().join("opt")),
            sandbox_image: sandbox_image.to_string(),
            cgroup_driver,
            cni_bin_dir: crate::config::defaults::CNI_BIN_DIR.into(),
            cni_conf_dir: crate::config::defaults::CNI_CONF_DIR.into(),
            log_level: DEFAULT_LOG_LEVEL.into(),
            restrict_oom_score_adj: !has_effective_capability(CAP_SYS_RESOURCE),
        }
    }

    /// Refuses socket paths the kernel cannot bind (`sun_path` holds 108
    /// bytes including the terminating NUL); containerd's own error for this
    /// does not name the cause.
    pub fn validate(&self) -> Result<(), ContainerdSettingsError> {
        for sock in [&self.socket, &self.ttrpc_socket] {
            let len = sock.as_os_str().len();
            if len >= MAX_SOCKET_PATH {
                return Err(ContainerdSettingsError::SocketPathTooLong {
                    path: sock.clone(),
                    len,
                });
            }
        }
        if self.sandbox_image.trim().is_empty() {
            return Err(ContainerdSettingsError::EmptySandboxImage);
        }
        Ok(())
    }

    /// `unix://<socket>`: kubelet's `containerRuntimeEndpoint`.
    pub fn cri_endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The argv (without the program).
    pub fn args(&self) -> Vec<String> {
        vec!["--config".into(), self.config_file.display().to_string()]
    }

    /// The config file (containerd config version 2, as 1.6 and 1.7 read it).
    /// Hand-formatted: the file is small and fixed in shape, every value goes
    /// through [`toml_string`], and the integration test proves containerd
    /// accepts it.
    pub fn render_config(&self) -> String {
        let s = |p: &Path| toml_string(&p.display().to_string());
        let cri = "plugins.\"io.containerd.grpc.v1.cri\"";
        let runc = format!("{cri}.containerd.runtimes.runc");
        format!(
            r#"# Generated by mkectl; rewritten on every start. Change the worker
# settings in the mkectl config instead of editing this file.
version = 2
root = {root}
state = {state}
# Nothing needs to be off: plugins that cannot work on this host skip themselves.
disabled_plugins = []

[grpc]
  address = {socket}
  uid = 0
  gid = 0

[ttrpc]
  address = {ttrpc}

[debug]
  level = {log_level}

[plugins."io.containerd.internal.v1.opt"]
  path = {opt}

[{cri}]
  sandbox_image = {sandbox}
  restrict_oom_score_adj = {restrict_oom}
  # Pod network namespaces are bind-mounted under `state`, not /var/run/netns,
  # so they belong to this node and are swept with it.
  netns_mounts_under_state_dir = true

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{runc}]
  runtime_type = "io.containerd.runc.v2"

[{runc}.options]
  SystemdCgroup = {systemd}
  Root = {runc_root}

[{cri}.cni]
  bin_dir = {cni_bin}
  conf_dir = {cni_conf}
"#,
            root = s(&self.root),
            state = s(&self.state),
            socket = s(&self.socket),
            ttrpc = s(&self.ttrpc_socket),
            log_level = toml_string(&self.log_level),
            opt = s(&self.opt_dir),
            sandbox = toml_string(&self.sandbox_image),
            restrict_oom = self.restrict_oom_score_adj,
            systemd = self.cgroup_driver == CgroupDriver::Systemd,
            runc_root = s(&self.runc_root),
            cni_bin = s(&self.cni_bin_dir),
            cni_conf = s(&self.cni_conf_dir),
        )
    }
}

/// `CAP_SYS_RESOURCE` (linux/capability.h): lowering an OOM score adjustment.
pub const CAP_SYS_RESOURCE: u32 = 24;

/// True when this process has capability `cap` in its effective set (from
/// `/proc/self/status`; true when that cannot be read, the usual case for
/// root).
pub fn has_effective_capability(cap: u32) -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| effective_caps(&s))
        .is_none_or(|caps| caps & (1u64 << cap) != 0)
}

/// The `CapEff:` mask of a `/proc/<pid>/status` text.
fn effective_caps(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// A TOML basic string: quoted, with `"`, `\` and control characters escaped.
pub fn toml_string(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\u{:04X}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

pub struct Containerd {
    settings: ContainerdSettings,
    paths: NodePaths,
    child: Option<Supervised>,
    started: bool,
    client: Mutex<Option<ContainerdClient>>,
}

impl Containerd {
    pub fn new(settings: ContainerdSettings, paths: NodePaths) -> Self {
        Self {
            settings,
            paths,
            child: None,
            started: false,
            client: Mutex::new(None),
        }
    }

    pub fn settings(&self) -> &ContainerdSettings {
        &self.settings
    }

    /// The supervised child, once started.
    pub fn child(&self) -> Option<&Supervised> {
        self.child.as_ref()
    }

    fn fs_err(source: fsutil::FsError) -> ComponentError {
        ComponentError::Fs {
            component: NAME,
            source,
        }
    }

    /// PATH for containerd: it finds the shim there, and the shim finds runc,
    /// so staged and `--bin-dir` binaries come first.
    fn child_path(&self) -> String {
        let dirs = binary::search_dirs(&self.paths, std::env::var_os("PATH").as_deref());
        std::env::join_paths(dirs)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    async fn drain(&self) {
        let drained = async {
            let mut c = ContainerdClient::connect(&self.settings.socket, PROBE_TIMEOUT).await?;
            drain_tasks(&mut c).await
        };
        match tokio::time::timeout(TASK_DRAIN_TIMEOUT, drained).await {
            Ok(Ok(n)) => info!(component = NAME, tasks = n, "all tasks deleted"),
            Ok(Err(e)) => {
                warn!(component = NAME, error = %crate::telemetry::Chain(&e), "cannot stop tasks through containerd; sweeping")
            }
            Err(_) => warn!(component = NAME, "stopping tasks timed out; sweeping"),
        }
    }
}

fn not_ready(message: impl Into<String>) -> ComponentError {
    ComponentError::NotReady {
        component: NAME,
        message: message.into(),
    }
}

#[async_trait::async_trait]
impl Component for Containerd {
    fn name(&self) -> &'static str {
        NAME
    }

    /// Status (pid, restarts, last exit) and in-place restarts.
    fn supervised(&self) -> Option<&Supervised> {
        self.child.as_ref()
    }

    async fn init(&mut self) -> Result<(), ComponentError> {
        let s = &self.settings;
        s.validate()
            .map_err(|e| ComponentError::during(NAME, "checking the settings", e))?;
        // root and state (and the dirs holding them) get the modes containerd
        // itself uses; the rest is private.
        for dir in [&s.root, &s.state] {
            if let Some(parent) = dir.parent() {
                fsutil::ensure_dir(parent, TRAVERSE_DIR_MODE).map_err(Self::fs_err)?;
            }
            fsutil::ensure_dir(dir, TRAVERSE_DIR_MODE).map_err(Self::fs_err)?;
        }
        for dir in [&s.runc_root, &s.opt_dir] {
            fsutil::ensure_dir(dir, fsutil::PRIVATE_DIR_MODE).map_err(Self::fs_err)?;
        }
        for file in [&s.socket, &s.config_file] {
            if let Some(parent) = file.parent() {
                if !parent.is_dir() {
                    fsutil::ensure_dir(parent, fsutil::PRIVATE_DIR_MODE).map_err(Self::fs_err)?;
                }
            }
        }
        fsutil::write_atomic(
            &s.config_file,
            s.render_config().as_bytes(),
            fsutil::PUBLIC_FILE_MODE,
        )
        .map_err(Self::fs_err)?;
        // Fail before anything starts when a piece of the runtime is missing.
        binary::find(NAME, &self.paths)?;
        binary::find("containerd-shim-runc-v2", &self.paths)?;
        binary::find("runc", &self.paths)?;
        Ok(())
    }

    async fn start(&mut self) -> Result<(), ComponentError> {
        if self.child.is_some() {
            return Ok(());
        }
        let program = binary::find(NAME, &self.paths)?;
        // A socket left by a crashed containerd would make it refuse to start.
        let _ = std::fs::remove_file(&self.settings.socket);
        let _ = std::fs::remove_file(&self.settings.ttrpc_socket);
        let spec = ChildSpec {
            name: NAME.into(),
            program,
            args: self.settings.args(),
            env: vec![("PATH".into(), self.child_path())],
            cwd: None,
            run_dir: self.paths.run_dir.clone(),
            stop_grace: STOP_GRACE,
            backoff: Default::default(),
        };
        let child = super::start_supervised(NAME, spec).await?;
        self.child = Some(child);
        self.started = true;
        Ok(())
    }

    async fn ready(&self) -> Result<(), ComponentError> {
        let mut guard = self.client.lock().await;
        if guard.is_none() {
            let c = ContainerdClient::connect(&self.settings.socket, PROBE_TIMEOUT)
                .await
                .map_err(|e| not_ready(crate::telemetry::Chain(&e).to_string()))?;
            *guard = Some(c);
        }
        let Some(client) = guard.as_mut() else {
            return Err(not_ready("no client"));
        };
        let probe = async {
            client.version().await?;
            client.cri_version().await
        };
        match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                *guard = None;
                Err(not_ready(crate::telemetry::Chain(&e).to_string()))
            }
            Err(_) => {
                *guard = None;
                Err(not_ready("probe timed out"))
            }
        }
    }

    async fn stop(&mut self) -> Result<(), ComponentError> {
        *self.client.lock().await = None;
        if !self.started {
            return Ok(());
        }
        if self.child.is_some() {
            self.drain().await;
        }
        if let Some(child) = self.child.take() {
            child.stop().await;
        }
        let shims = kill_shims(&self.settings.socket).await;
        if !shims.is_empty() {
            warn!(component = NAME, shims = ?shims, "killed leftover shims and their containers");
        }
        let unmounted = unmount_below(&[&self.settings.root, &self.settings.state]);
        if !unmounted.is_empty() {
            warn!(
                component = NAME,
                mounts = unmounted.len(),
                "unmounted leftover mounts"
            );
        }
        self.started = false;
        Ok(())
    }

    fn ready_timeout(&self) -> Duration {
        READY_TIMEOUT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ContainerdSettings {
        let paths = NodePaths::new(Path::new("/d"), Path::new("/r"), None);
        ContainerdSettings::new(&paths, DEFAULT_SANDBOX_IMAGE, CgroupDriver::Cgroupfs)
    }

    #[test]
    fn layout_splits_persistent_and_volatile() {
        let s = settings();
        assert_eq!(s.config_file, Path::new("/d/containerd/config.toml"));
        assert_eq!(s.root, Path::new("/d/containerd/root"));
        assert_eq!(s.state, Path::new("/r/containerd/state"));
        assert_eq!(s.socket, Path::new("/r/containerd/containerd.sock"));
        assert_eq!(s.cri_endpoint(), "unix:///r/containerd/containerd.sock");
        assert_eq!(s.args(), ["--config", "/d/containerd/config.toml"]);
    }

    #[test]
    fn config_carries_every_setting() {
        let mut s = settings();
        s.sandbox_image = "mirror.example/pause:3.10".into();
        let c = s.render_config();
        for want in [
            "version = 2\n",
            "root = \"/d/containerd/root\"\n",
            "state = \"/r/containerd/state\"\n",
            "address = \"/r/containerd/containerd.sock\"\n",
            "address = \"/r/containerd/containerd.sock.ttrpc\"\n",
            "sandbox_image = \"mirror.example/pause:3.10\"\n",
            "snapshotter = \"overlayfs\"\n",
            "runtime_type = \"io.containerd.runc.v2\"\n",
            "SystemdCgroup = false\n",
            "Root = \"/r/containerd/runc\"\n",
            "disabled_plugins = []\n",
            "netns_mounts_under_state_dir = true\n",
            "bin_dir = \"/opt/cni/bin\"\n",
        ] {
            assert!(c.contains(want), "missing {want:?} in\n{c}");
        }
        s.cgroup_driver = CgroupDriver::Systemd;
        assert!(s.render_config().contains("SystemdCgroup = true\n"));
    }

    #[test]
    fn long_socket_paths_and_relative_dirs() {
        let long = format!("/{}", "r".repeat(100));
        let paths = NodePaths::new(Path::new("/d"), Path::new(&long), None);
        let s = ContainerdSettings::new(&paths, DEFAULT_SANDBOX_IMAGE, CgroupDriver::Cgroupfs);
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("shorter run dir"), "{e}");
        settings().validate().unwrap();
        let rel = NodePaths::new(Path::new("data"), Path::new("run"), None);
        let s = ContainerdSettings::new(&rel, DEFAULT_SANDBOX_IMAGE, CgroupDriver::Cgroupfs);
        assert!(s.socket.is_absolute() && s.root.is_absolute(), "{s:?}");
    }

    #[test]
    fn oom_score_restriction_follows_cap_sys_resource() {
        assert_eq!(
            effective_caps("Name:\tx\nCapEff:\t000001fffeffffff\n"),
            Some(0x1fffeffffff)
        );
        assert_eq!(effective_caps("Name:\tx\n"), None);
        // 0x1fffeffffff lacks bit 24.
        assert_eq!(0x1fffeffffffu64 & (1 << CAP_SYS_RESOURCE), 0);
        let mut s = settings();
        s.restrict_oom_score_adj = true;
        assert!(s
            .render_config()
            .contains("restrict_oom_score_adj = true\n"));
        s.restrict_oom_score_adj = false;
        assert!(s
            .render_config()
            .contains("restrict_oom_score_adj = false\n"));
    }

    #[test]
    fn toml_strings_are_escaped() {
        assert_eq!(toml_string("plain"), "\"plain\"");
        assert_eq!(toml_string("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(toml_string("x\ny\u{1}"), "\"x\\ny\\u0001\"");
    }

    #[test]
    fn cgroup_driver_follows_the_systemd_marker() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(
            CgroupDriver::detect_at(&tmp.path().join("nope")),
            CgroupDriver::Cgroupfs
        );
        assert_eq!(CgroupDriver::detect_at(tmp.path()), CgroupDriver::Systemd);
        assert_eq!(CgroupDriver::Systemd.as_str(), "systemd");
    }
}
