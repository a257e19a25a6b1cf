//! A client for the small part of containerd's gRPC API mkectl speaks
//! (containerd API and CRI on one socket): readiness, listing images and
//! draining tasks. Used by the containerd component and the image import.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};
use tracing::{info, warn};

/// The `component` field of this module's log lines.
const COMPONENT: &str = "containerd";
/// gRPC metadata key containerd reads the namespace from.
const NAMESPACE_HEADER: &str = "containerd-namespace";
/// `SIGKILL` as containerd's `Kill` RPC takes it.
const SIGKILL: u32 = 9;

#[derive(Debug, thiserror::Error)]
pub enum ContainerdError {
    #[error("cannot connect to containerd at {socket}")]
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
                warn!(component = COMPONENT, namespace = %ns, task = %t.task_id(), error = %crate::telemetry::Chain(&e), "kill failed");
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
                warn!(component = COMPONENT, namespace = %ns, task = %id, error = %crate::telemetry::Chain(&e), "wait failed");
            }
        }
        for t in &tasks {
            match client.delete_task(&ns, t.task_id()).await {
                Ok(()) => deleted += 1,
                Err(e) => {
                    warn!(component = COMPONENT, namespace = %ns, task = %t.task_id(), error = %crate::telemetry::Chain(&e), "delete failed")
                }
            }
        }
        if !tasks.is_empty() {
            info!(component = COMPONENT, namespace = %ns, tasks = tasks.len(), "stopped containers");
        }
    }
    Ok(deleted)
}
