//! The controller registry as a component: registers this controller's
//! addresses in etcd under a lease it keeps alive, follows the other
//! controllers (konnectivity server count, the peer cache `reset` uses) and
//! revokes the lease on stop. Ready once the record is written.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Component, ComponentError};
use crate::etcd::{connect, EtcdClientTls};
use crate::join::registry::{ControllerRecord, Registration};

pub const NAME: &str = "controller-registry";
/// Bound on revoking the lease when the controller stops.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);

pub struct ControllerRegistry {
    etcd_endpoint: String,
    etcd_tls: EtcdClientTls,
    record: ControllerRecord,
    cache_file: std::path::PathBuf,
    server_count: watch::Sender<u32>,
    controllers: watch::Sender<Vec<ControllerRecord>>,
    registered: Arc<AtomicBool>,
    cancel: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl ControllerRegistry {
    /// `server_count` receives the number of live controllers.
    pub fn new(
        etcd_endpoint: String,
        etcd_tls: EtcdClientTls,
        record: ControllerRecord,
        cache_file: std::path::PathBuf,
        server_count: watch::Sender<u32>,
    ) -> Self {
        Self {
            etcd_endpoint,
            etcd_tls,
            record,
            cache_file,
            server_count,
            controllers: watch::channel(Vec::new()).0,
            registered: Arc::new(AtomicBool::new(false)),
            cancel: CancellationToken::new(),
            task: None,
        }
    }

    /// The live controllers as last read.
    pub fn controllers(&self) -> watch::Receiver<Vec<ControllerRecord>> {
        self.controllers.subscribe()
    }
}

#[async_trait::async_trait]
impl Component for ControllerRegistry {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn init(&mut self) -> Result<(), ComponentError> {
        Ok(())
    }

    async fn start(&mut self) -> Result<(), ComponentError> {
        if self.task.is_some() {
            return Ok(());
        }
        let client = connect(&self.etcd_endpoint, &self.etcd_tls)
            .await
            .map_err(|e| ComponentError::during(NAME, "connecting to etcd", e))?;
        self.cancel = CancellationToken::new();
        let reg = Registration {
            record: self.record.clone(),
            cache_file: self.cache_file.clone(),
            controllers: self.controllers.clone(),
            server_count: self.server_count.clone(),
        };
        self.task = Some(tokio::spawn(reg.run(
            client,
            self.registered.clone(),
            self.cancel.clone(),
        )));
        Ok(())
    }

    async fn ready(&self) -> Result<(), ComponentError> {
        if self.registered.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err(ComponentError::NotReady {
                component: NAME,
                message: "record not written to etcd yet".into(),
            })
        }
    }

    async fn stop(&mut self) -> Result<(), ComponentError> {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            super::stop_within(NAME, "did not leave the registry", STOP_TIMEOUT, task).await?;
        }
        Ok(())
    }
}
