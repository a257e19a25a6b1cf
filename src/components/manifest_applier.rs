//! The manifest applier on the controller: `init` renders the default stacks
//! (CoreDNS, kube-proxy, CNI, bootstrap RBAC) into `<data-dir>/manifests`,
//! `start` runs the applier (leader-elected through a Lease) against the local
//! kube-apiserver with the admin identity. It needs kube-apiserver, so the
//! controller only adds it when the apiserver runs.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Component, ComponentError};
use crate::applier::{self, ApplierConfig, RenderInputs, StatusHandle};
use crate::config::{ClusterConfig, NodePaths};

pub const NAME: &str = "applier";
/// Bound on releasing the lease and finishing the current pass at stop.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

pub struct ApplierComponent {
    inputs: RenderInputs,
    addons: applier::AddonsSettings,
    paths: NodePaths,
    admin_kubeconfig: std::path::PathBuf,
    identity: String,
    removed_stacks: Vec<String>,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
    status: Option<StatusHandle>,
}

impl ApplierComponent {
    pub fn new(
        cfg: &ClusterConfig,
        node_address: std::net::IpAddr,
        paths: NodePaths,
        admin_kubeconfig: std::path::PathBuf,
        identity: String,
    ) -> Self {
        Self {
            inputs: RenderInputs::from_config(cfg, node_address),
            addons: cfg.spec.addons.clone(),
            paths,
            admin_kubeconfig,
            identity,
            removed_stacks: Vec::new(),
            cancel: CancellationToken::new(),
            task: None,
            status: None,
        }
    }

    /// Per-stack status, once started.
    pub fn status(&self) -> Option<&StatusHandle> {
        self.status.as_ref()
    }
}

#[async_trait::async_trait]
impl Component for ApplierComponent {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn init(&mut self) -> Result<(), ComponentError> {
        let dir = self.paths.manifests_dir();
        crate::fsutil::ensure_dir(&dir, crate::fsutil::PRIVATE_DIR_MODE).map_err(|source| {
            ComponentError::Fs {
                component: NAME,
                source,
            }
        })?;
        let report = applier::write_default_stacks(&dir, &self.addons, &self.inputs)
            .map_err(|e| ComponentError::during(NAME, "rendering the default stacks", e))?;
        info!(
            enabled = ?report.enabled,
            disabled = ?report.disabled,
            changed = report.changed.len(),
            "default stacks rendered"
        );
        self.removed_stacks = report.disabled;
        Ok(())
    }

    async fn start(&mut self) -> Result<(), ComponentError> {
        if self.task.is_some() {
            return Ok(());
        }
        let client = crate::kubeapi::client_from_kubeconfig(&self.admin_kubeconfig)
            .map_err(|e| ComponentError::during(NAME, "building the API client", e))?;
        let mut cfg = ApplierConfig::new(self.paths.manifests_dir(), client, self.identity.clone());
        cfg.removed_stacks = self.removed_stacks.clone();
        let runner = applier::Applier::new(cfg)
            .map_err(|e| ComponentError::during(NAME, "setting up the applier", e))?;
        self.status = Some(runner.status());
        self.cancel = CancellationToken::new();
        let cancel = self.cancel.clone();
        self.task = Some(tokio::spawn(async move {
            if let Err(e) = runner.run(cancel).await {
                warn!(component = NAME, error = %crate::telemetry::Chain(&e), "applier stopped with an error");
            }
        }));
        Ok(())
    }

    async fn ready(&self) -> Result<(), ComponentError> {
        match &self.task {
            Some(t) if !t.is_finished() => Ok(()),
            Some(_) => Err(ComponentError::TaskEnded {
                component: NAME,
                task: "applier",
            }),
            None => Err(ComponentError::NotReady {
                component: NAME,
                message: "not started".into(),
            }),
        }
    }

    /// Its client is built from admin.conf at start: a renewed admin
    /// certificate needs a restart (stop + start) to be used.
    fn uses_certs(&self) -> &[crate::pki::Leaf] {
        &[crate::pki::Leaf::Admin]
    }

    async fn stop(&mut self) -> Result<(), ComponentError> {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            super::stop_within(NAME, "did not stop", STOP_TIMEOUT, task).await?;
        }
        Ok(())
    }
}
