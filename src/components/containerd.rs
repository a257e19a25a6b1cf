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

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tokio::sync::Mutex;
use tonic::transport::{Channel, Endpoint};
use tracing::{info, warn};

use super::{binary, Component, ComponentError};
use crate::config::NodePaths;
use crate::fsutil;
// Re-exported: the containerd tests and stop path use them by this name.
pub use crate::mounts::{mounts_below, unmount_below};
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
/// Bound on waiting for swept shims and containers to disappear.
pub const SWEEP_WAIT: Duration = Duration::from_secs(5);
/// Mode of containerd's `root` and `state` dirs, as containerd creates them:
/// others may traverse (not list), which containers with remapped user ids
/// need to reach their rootfs.
pub const TRAVERSE_DIR_MODE: u32 = 0o711;
/// Size of `sun_path` in `struct sockaddr_un` on Linux, NUL included.
pub const MAX_SOCKET_PATH: usize = 108;
/// The systemd marker directory: present iff systemd is PID 1.
pub const SYSTEMD_MARKER: &str = "/run/systemd/system";

/// gRPC metadata key containerd reads the namespace from.
const NAMESPACE_HEADER: &str = "containerd-namespace";
/// `SIGKILL` as containerd's `Kill` RPC takes it.
const SIGKILL: u32 = 9;

#[derive(Debug, thiserror::Error)]
pub enum ContainerdError {
    #[error("cannot connect to containerd at {socket}: {source}")]
    Connect {
        socket: PathBuf,
        source: tonic::transport::Error,
    },
    #[error("containerd at {socket}: {method}: {status}")]
    Rpc {
        socket: PathBuf,
        method: &'static str,
        status: Box<tonic::Status>,
    },
    #[error("containerd at {socket}: {method} timed out after {waited:?}")]
    Timeout {
        socket: PathBuf,
        method: &'static str,
        waited: Duration,
    },
}

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
    pub fn validate(&self) -> Result<(), String> {
        for sock in [&self.socket, &self.ttrpc_socket] {
            let len = sock.as_os_str().len();
            if len >= MAX_SOCKET_PATH {
                return Err(format!(
                    "socket path {} is {len} bytes; at most {} fit in a unix socket address: use a shorter run dir",
                    sock.display(),
                    MAX_SOCKET_PATH - 1
                ));
            }
        }
        if self.sandbox_image.trim().is_empty() {
            return Err("sandbox image is empty".into());
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

/// `p` made absolute against the current directory (unchanged if that fails).
pub fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
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

/// The small part of containerd's gRPC API mkectl speaks, as prost messages
/// (field numbers from containerd's `api/` protos; unknown fields in answers
/// are skipped by prost).
pub mod api {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Empty {}

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct VersionResponse {
        #[prost(string, tag = "1")]
        pub version: String,
        #[prost(string, tag = "2")]
        pub revision: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListNamespacesRequest {
        #[prost(string, tag = "1")]
        pub filter: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Namespace {
        #[prost(string, tag = "1")]
        pub name: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListNamespacesResponse {
        #[prost(message, repeated, tag = "1")]
        pub namespaces: Vec<Namespace>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListTasksRequest {
        #[prost(string, tag = "1")]
        pub filter: String,
    }

    /// `containerd.v1.types.Process`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Process {
        #[prost(string, tag = "1")]
        pub container_id: String,
        #[prost(string, tag = "2")]
        pub id: String,
        #[prost(uint32, tag = "3")]
        pub pid: u32,
        /// 0 unknown, 1 created, 2 running, 3 stopped, 4 paused, 5 pausing.
        #[prost(int32, tag = "4")]
        pub status: i32,
        #[prost(uint32, tag = "9")]
        pub exit_status: u32,
    }

    impl Process {
        /// The task's container id: `Tasks/List` fills `id` (the init
        /// process is named after its container), other calls `container_id`.
        pub fn task_id(&self) -> &str {
            if self.container_id.is_empty() {
                &self.id
            } else {
                &self.container_id
            }
        }
    }

    /// `Process.status` of a task that has exited.
    pub const STATUS_STOPPED: i32 = 3;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListTasksResponse {
        #[prost(message, repeated, tag = "1")]
        pub tasks: Vec<Process>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct KillRequest {
        #[prost(string, tag = "1")]
        pub container_id: String,
        #[prost(string, tag = "2")]
        pub exec_id: String,
        #[prost(uint32, tag = "3")]
        pub signal: u32,
        #[prost(bool, tag = "4")]
        pub all: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct WaitRequest {
        #[prost(string, tag = "1")]
        pub container_id: String,
        #[prost(string, tag = "2")]
        pub exec_id: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct WaitResponse {
        #[prost(uint32, tag = "1")]
        pub exit_status: u32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct DeleteTaskRequest {
        #[prost(string, tag = "1")]
        pub container_id: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct DeleteResponse {
        #[prost(string, tag = "1")]
        pub id: String,
        #[prost(uint32, tag = "2")]
        pub pid: u32,
        #[prost(uint32, tag = "3")]
        pub exit_status: u32,
    }

    /// `containerd.services.images.v1.ListImagesRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListImagesRequest {
        #[prost(string, repeated, tag = "1")]
        pub filters: Vec<String>,
    }

    /// `containerd.types.Descriptor` (what an image points to).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Descriptor {
        #[prost(string, tag = "1")]
        pub media_type: String,
        #[prost(string, tag = "2")]
        pub digest: String,
        #[prost(int64, tag = "3")]
        pub size: i64,
    }

    /// `containerd.services.images.v1.Image` (labels and times skipped).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Image {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(message, optional, tag = "3")]
        pub target: Option<Descriptor>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListImagesResponse {
        #[prost(message, repeated, tag = "1")]
        pub images: Vec<Image>,
    }

    /// CRI `runtime.v1.ImageSpec`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ImageSpec {
        #[prost(string, tag = "1")]
        pub image: String,
    }

    /// CRI `runtime.v1.ImageStatusRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ImageStatusRequest {
        #[prost(message, optional, tag = "1")]
        pub image: Option<ImageSpec>,
        #[prost(bool, tag = "2")]
        pub verbose: bool,
    }

    /// CRI `runtime.v1.Image`: `id` is the config digest (the image ID).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct CriImage {
        #[prost(string, tag = "1")]
        pub id: String,
        #[prost(string, repeated, tag = "2")]
        pub repo_tags: Vec<String>,
        #[prost(string, repeated, tag = "3")]
        pub repo_digests: Vec<String>,
        #[prost(uint64, tag = "4")]
        pub size: u64,
    }

    /// CRI `runtime.v1.ImageStatusResponse`: no image when CRI has none.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ImageStatusResponse {
        #[prost(message, optional, tag = "1")]
        pub image: Option<CriImage>,
    }

    /// CRI `runtime.v1.VersionRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct CriVersionRequest {
        #[prost(string, tag = "1")]
        pub version: String,
    }

    /// CRI `runtime.v1.VersionResponse`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct CriVersionResponse {
        #[prost(string, tag = "1")]
        pub version: String,
        #[prost(string, tag = "2")]
        pub runtime_name: String,
        #[prost(string, tag = "3")]
        pub runtime_version: String,
        #[prost(string, tag = "4")]
        pub runtime_api_version: String,
    }
}

const VERSION: &str = "/containerd.services.version.v1.Version/Version";
const CRI_VERSION: &str = "/runtime.v1.RuntimeService/Version";
const LIST_NAMESPACES: &str = "/containerd.services.namespaces.v1.Namespaces/List";
const LIST_TASKS: &str = "/containerd.services.tasks.v1.Tasks/List";
const KILL: &str = "/containerd.services.tasks.v1.Tasks/Kill";
const WAIT: &str = "/containerd.services.tasks.v1.Tasks/Wait";
const DELETE: &str = "/containerd.services.tasks.v1.Tasks/Delete";
const LIST_IMAGES: &str = "/containerd.services.images.v1.Images/List";
const CRI_IMAGE_STATUS: &str = "/runtime.v1.ImageService/ImageStatus";

/// A client for containerd's socket (containerd API and CRI on one socket).
#[derive(Debug, Clone)]
pub struct ContainerdClient {
    socket: PathBuf,
    grpc: tonic::client::Grpc<Channel>,
}

impl ContainerdClient {
    /// Connects to the UDS at `socket`, failing after `timeout`.
    pub async fn connect(socket: &Path, timeout: Duration) -> Result<Self, ContainerdError> {
        let path = socket.to_path_buf();
        let connector = tower::service_fn(move |_uri: http::Uri| {
            let p = path.clone();
            async move { Ok::<_, io::Error>(TokioIo::new(UnixStream::connect(p).await?)) }
        });
        // The URI is a placeholder: the connector dials the socket.
        let channel = Endpoint::from_static("http://containerd")
            .connect_timeout(timeout)
            .timeout(timeout)
            .connect_with_connector(connector)
            .await
            .map_err(|source| ContainerdError::Connect {
                socket: socket.to_path_buf(),
                source,
            })?;
        Ok(Self {
            socket: socket.to_path_buf(),
            grpc: tonic::client::Grpc::new(channel),
        })
    }

    async fn call<Req, Resp>(
        &mut self,
        method: &'static str,
        namespace: Option<&str>,
        request: Req,
    ) -> Result<Resp, ContainerdError>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let rpc_err = |socket: &Path, status: tonic::Status| ContainerdError::Rpc {
            socket: socket.to_path_buf(),
            method,
            status: Box::new(status),
        };
        self.grpc.ready().await.map_err(|e| {
            rpc_err(
                &self.socket,
                tonic::Status::unavailable(format!("channel not ready: {e}")),
            )
        })?;
        let mut req = tonic::Request::new(request);
        if let Some(ns) = namespace {
            let value = ns.parse().map_err(|_| {
                rpc_err(
                    &self.socket,
                    tonic::Status::invalid_argument(format!("bad namespace {ns:?}")),
                )
            })?;
            req.metadata_mut().insert(NAMESPACE_HEADER, value);
        }
        let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
        let path = http::uri::PathAndQuery::from_static(method);
        self.grpc
            .unary(req, path, codec)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| rpc_err(&self.socket, status))
    }

    /// containerd's version and revision.
    pub async fn version(&mut self) -> Result<api::VersionResponse, ContainerdError> {
        self.call(VERSION, None, api::Empty {}).await
    }

    /// The CRI runtime's version (fails when the CRI plugin is not loaded).
    pub async fn cri_version(&mut self) -> Result<api::CriVersionResponse, ContainerdError> {
        self.call(CRI_VERSION, None, api::CriVersionRequest::default())
            .await
    }

    /// Every namespace's name.
    pub async fn namespaces(&mut self) -> Result<Vec<String>, ContainerdError> {
        let r: api::ListNamespacesResponse = self
            .call(LIST_NAMESPACES, None, api::ListNamespacesRequest::default())
            .await?;
        Ok(r.namespaces.into_iter().map(|n| n.name).collect())
    }

    /// Every task in `namespace`.
    pub async fn tasks(&mut self, namespace: &str) -> Result<Vec<api::Process>, ContainerdError> {
        let r: api::ListTasksResponse = self
            .call(
                LIST_TASKS,
                Some(namespace),
                api::ListTasksRequest::default(),
            )
            .await?;
        Ok(r.tasks)
    }

    /// Sends SIGKILL to every process of the task (including exec'd ones).
    pub async fn kill_all(&mut self, namespace: &str, id: &str) -> Result<(), ContainerdError> {
        let req = api::KillRequest {
            container_id: id.into(),
            exec_id: String::new(),
            signal: SIGKILL,
            all: true,
        };
        let _: api::Empty = self.call(KILL, Some(namespace), req).await?;
        Ok(())
    }

    /// Waits for the task's init process to exit; returns its exit status.
    pub async fn wait(&mut self, namespace: &str, id: &str) -> Result<u32, ContainerdError> {
        let req = api::WaitRequest {
            container_id: id.into(),
            exec_id: String::new(),
        };
        let r: api::WaitResponse = self.call(WAIT, Some(namespace), req).await?;
        Ok(r.exit_status)
    }

    /// Every image in `namespace` (name and target descriptor).
    pub async fn images(&mut self, namespace: &str) -> Result<Vec<api::Image>, ContainerdError> {
        let r: api::ListImagesResponse = self
            .call(
                LIST_IMAGES,
                Some(namespace),
                api::ListImagesRequest::default(),
            )
            .await?;
        Ok(r.images)
    }

    /// What CRI (the `k8s.io` namespace, as kubelet sees it) knows of
    /// `reference`; None when it has no such image.
    pub async fn cri_image_status(
        &mut self,
        reference: &str,
    ) -> Result<Option<api::CriImage>, ContainerdError> {
        let req = api::ImageStatusRequest {
            image: Some(api::ImageSpec {
                image: reference.to_string(),
            }),
            verbose: false,
        };
        let r: api::ImageStatusResponse = self.call(CRI_IMAGE_STATUS, None, req).await?;
        Ok(r.image)
    }

    /// Deletes an exited task (its shim unmounts the rootfs and exits).
    pub async fn delete_task(&mut self, namespace: &str, id: &str) -> Result<(), ContainerdError> {
        let req = api::DeleteTaskRequest {
            container_id: id.into(),
        };
        let _: api::DeleteResponse = self.call(DELETE, Some(namespace), req).await?;
        Ok(())
    }
}

/// Kills, waits for and deletes every task in every namespace. Returns how
/// many tasks were deleted. Errors on single tasks are logged and skipped so
/// one stuck task does not keep the others alive.
pub async fn drain_tasks(client: &mut ContainerdClient) -> Result<usize, ContainerdError> {
    let mut deleted = 0;
    for ns in client.namespaces().await? {
        let tasks = client.tasks(&ns).await?;
        for t in tasks.iter().filter(|t| t.status != api::STATUS_STOPPED) {
            if let Err(e) = client.kill_all(&ns, t.task_id()).await {
                warn!(component = NAME, namespace = %ns, task = %t.task_id(), error = %e, "kill failed");
            }
        }
        // Wait concurrently: each Wait is one stream on the same channel.
        let waits = tasks.iter().map(|t| {
            let mut c = client.clone();
            let ns = ns.clone();
            let id = t.task_id().to_string();
            async move {
                let r = c.wait(&ns, &id).await;
                (id, r)
            }
        });
        for (id, r) in futures::future::join_all(waits).await {
            if let Err(e) = r {
                warn!(component = NAME, namespace = %ns, task = %id, error = %e, "wait failed");
            }
        }
        for t in &tasks {
            match client.delete_task(&ns, t.task_id()).await {
                Ok(()) => deleted += 1,
                Err(e) => {
                    warn!(component = NAME, namespace = %ns, task = %t.task_id(), error = %e, "delete failed")
                }
            }
        }
        if !tasks.is_empty() {
            info!(component = NAME, namespace = %ns, tasks = tasks.len(), "stopped containers");
        }
    }
    Ok(deleted)
}

/// One process as `/proc` shows it.
#[derive(Debug, Clone)]
struct ProcEntry {
    pid: i32,
    ppid: i32,
    argv: Vec<String>,
}

fn read_procs() -> Vec<ProcEntry> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces and parens.
        let Some(after) = stat.rsplit_once(')').map(|(_, a)| a) else {
            continue;
        };
        let mut fields = after.split_whitespace();
        let state = fields.next().unwrap_or("");
        if state == "Z" || state == "X" {
            continue;
        }
        let ppid = fields.next().and_then(|f| f.parse().ok()).unwrap_or(0);
        let argv = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| {
                b.split(|c| *c == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect()
            })
            .unwrap_or_default();
        out.push(ProcEntry { pid, ppid, argv });
    }
    out
}

/// True when `argv` is a containerd shim started for the containerd at `socket`.
fn is_shim_of(argv: &[String], socket: &str) -> bool {
    let is_shim = argv
        .first()
        .and_then(|a| Path::new(a).file_name())
        .map(|n| n.to_string_lossy().starts_with("containerd-shim"))
        .unwrap_or(false);
    is_shim
        && argv
            .windows(2)
            .any(|w| (w[0] == "-address" || w[0] == "--address") && w[1] == socket)
}

/// Pids of running shims that belong to the containerd listening on `socket`.
pub fn shims_of(socket: &Path) -> Vec<i32> {
    let socket = socket.display().to_string();
    read_procs()
        .into_iter()
        .filter(|p| is_shim_of(&p.argv, &socket))
        .map(|p| p.pid)
        .collect()
}

/// SIGKILLs every shim of the containerd at `socket` together with all its
/// descendants (the containers), then waits up to [`SWEEP_WAIT`] for them to
/// go. Returns the shim pids that were found.
pub async fn kill_shims(socket: &Path) -> Vec<i32> {
    let procs = read_procs();
    let socket_s = socket.display().to_string();
    let shims: Vec<i32> = procs
        .iter()
        .filter(|p| is_shim_of(&p.argv, &socket_s))
        .map(|p| p.pid)
        .collect();
    if shims.is_empty() {
        return shims;
    }
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for p in &procs {
        children.entry(p.ppid).or_default().push(p.pid);
    }
    let mut victims = BTreeSet::new();
    let mut stack = shims.clone();
    while let Some(pid) = stack.pop() {
        if victims.insert(pid) {
            if let Some(kids) = children.get(&pid) {
                stack.extend(kids);
            }
        }
    }
    // Containers first (killing a pid namespace's init kills the namespace),
    // then the shims.
    for pid in victims.iter().filter(|p| !shims.contains(p)) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    for pid in &shims {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let end = tokio::time::Instant::now() + SWEEP_WAIT;
    while tokio::time::Instant::now() < end {
        let alive: Vec<i32> = read_procs()
            .iter()
            .map(|p| p.pid)
            .filter(|p| victims.contains(p))
            .collect();
        if alive.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shims
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
                warn!(component = NAME, error = %e, "cannot stop tasks through containerd; sweeping")
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
        s.validate().map_err(|message| ComponentError::Failed {
            component: NAME,
            message,
        })?;
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
                .map_err(|e| not_ready(e.to_string()))?;
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
                Err(not_ready(e.to_string()))
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
        let e = s.validate().unwrap_err();
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

    #[test]
    fn shim_match_needs_our_socket() {
        let argv = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let ours = argv(&[
            "/usr/bin/containerd-shim-runc-v2",
            "-namespace",
            "k8s.io",
            "-id",
            "abc",
            "-address",
            "/r/containerd/containerd.sock",
        ]);
        assert!(is_shim_of(&ours, "/r/containerd/containerd.sock"));
        assert!(!is_shim_of(&ours, "/run/containerd/containerd.sock"));
        let not_shim = argv(&["/bin/sh", "-address", "/r/containerd/containerd.sock"]);
        assert!(!is_shim_of(&not_shim, "/r/containerd/containerd.sock"));
    }
}
