//! What a joined node remembers in its data dir, so a restart needs no token:
//! a controller's etcd membership (`join.json`), a worker's identity and its
//! last known controllers (`worker.json`). Written atomically, 0600, after
//! everything else of the join is in place: a file present means "joined".

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::registry::ControllerRecord;
use super::JoinError;
use crate::fsutil;

/// A controller that joined an existing cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ControllerJoinState {
    pub node_name: String,
    /// Seconds since the epoch.
    pub joined_at: u64,
    pub etcd_member_id: u64,
    /// `--initial-cluster` for the first start of its etcd.
    pub initial_cluster: String,
    /// True once the member votes; until then every start asks for promotion.
    pub promoted: bool,
    /// Join API URLs known at join time (promotion goes through them).
    pub join_endpoints: Vec<String>,
}

/// A joined worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkerState {
    pub node_name: String,
    pub address: String,
    /// Seconds since the epoch.
    pub joined_at: u64,
    pub cluster_name: String,
    pub api_servers: Vec<String>,
    /// Last list of live controllers (refreshed from the join API).
    pub controllers: Vec<ControllerRecord>,
    /// Join API URLs from the token, the fallback when every known
    /// controller changed.
    pub token_endpoints: Vec<String>,
}

impl WorkerState {
    /// Join API URLs to ask: the known controllers', then the token's.
    pub fn join_endpoints(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .controllers
            .iter()
            .map(|c| c.join_api.clone())
            .collect();
        for e in &self.token_endpoints {
            if !out.contains(e) {
                out.push(e.clone());
            }
        }
        out
    }
}

/// Reads a state file; `Ok(None)` when it does not exist.
pub fn read<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, JoinError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| JoinError::State {
                path: path.to_path_buf(),
                reason: format!(
                    "unreadable join state ({e}); restore it or `mkectl reset` the node"
                ),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(JoinError::Fs(fsutil::FsError::Read {
            path: path.to_path_buf(),
            source,
        })),
    }
}

/// Writes a state file atomically (0600). Returns whether it changed.
pub fn write<T: Serialize>(path: &Path, value: &T) -> Result<bool, JoinError> {
    let json = serde_json::to_vec_pretty(value).map_err(|e| JoinError::State {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(fsutil::write_atomic(
        path,
        &json,
        fsutil::PRIVATE_FILE_MODE,
    )?)
}

/// Files of a joined worker under its data dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerPaths {
    pub data_dir: PathBuf,
    /// `worker.json`.
    pub state: PathBuf,
    /// `pki/ca.crt`: the cluster CA.
    pub ca_cert: PathBuf,
    /// `pki/konnectivity/ca.crt`.
    pub konnectivity_ca: PathBuf,
    /// `pki/konnectivity/agent.crt` / `agent.key`.
    pub agent_cert: PathBuf,
    pub agent_key: PathBuf,
    /// `kubelet/bootstrap-kubelet.conf` (embeds the bootstrap token).
    pub kubelet_bootstrap_kubeconfig: PathBuf,
    /// `kubelet/defaults.json`: [`super::wire::KubeletDefaults`].
    pub kubelet_defaults: PathBuf,
}

impl WorkerPaths {
    pub fn new(data_dir: &Path) -> Self {
        let pki = data_dir.join("pki");
        // Same layout the kubelet component reads (`NodePaths`).
        let node = crate::config::NodePaths::new(data_dir, Path::new("/"), None);
        let kubelet = node.kubelet_dir();
        Self {
            data_dir: data_dir.to_path_buf(),
            state: data_dir.join("worker.json"),
            ca_cert: pki.join("ca.crt"),
            konnectivity_ca: pki.join("konnectivity").join("ca.crt"),
            agent_cert: pki.join("konnectivity").join("agent.crt"),
            agent_key: pki.join("konnectivity").join("agent.key"),
            kubelet_bootstrap_kubeconfig: node.kubelet_bootstrap_kubeconfig(),
            kubelet_defaults: kubelet.join("defaults.json"),
        }
    }
}
