//! The one-shot step between containerd and kubelet: import the image
//! archives in `<data-dir>/images/` and provide the sandbox image (see
//! `crate::images::import`), so kubelet never makes containerd pull either.
//!
//! `start` runs the import as a task and returns; `ready` turns Ok once it
//! finished (whatever the outcome of single archives, which are logged and
//! never stop the worker) and until then says which archive is being
//! imported. `stop` abandons an import in progress (ctr is killed).

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::task::JoinHandle;
use tracing::{info_span, Instrument};

use super::{binary, Component, ComponentError};
use crate::config::NodePaths;
use crate::fsutil;
use crate::images::import::{self, ImportReport, ImportSettings, SandboxSettings};
use crate::images::pause;

pub const NAME: &str = "images";
/// Bound on the whole import: a few large archives on a slow disk.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60 * 60);

#[derive(Debug, Clone, Default)]
enum Progress {
    #[default]
    NotStarted,
    Running(String),
    Done(Box<ImportReport>),
}

pub struct ImageImport {
    paths: NodePaths,
    socket: PathBuf,
    sandbox_image: String,
    settings: Option<ImportSettings>,
    task: Option<JoinHandle<()>>,
    progress: Arc<Mutex<Progress>>,
}

impl ImageImport {
    /// Imports into the containerd at `socket`; provides `sandbox_image`
    /// (containerd's `sandbox_image`).
    pub fn new(paths: NodePaths, socket: PathBuf, sandbox_image: &str) -> Self {
        Self {
            paths,
            socket,
            sandbox_image: sandbox_image.to_string(),
            settings: None,
            task: None,
            progress: Arc::new(Mutex::new(Progress::NotStarted)),
        }
    }

    /// What the last import did, once it finished.
    pub fn report(&self) -> Option<ImportReport> {
        match &*self.progress.lock().unwrap_or_else(PoisonError::into_inner) {
            Progress::Done(r) => Some((**r).clone()),
            _ => None,
        }
    }
}

#[async_trait::async_trait]
impl Component for ImageImport {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn init(&mut self) -> Result<(), ComponentError> {
        let dir = self.paths.images_dir();
        fsutil::ensure_dir(&dir, fsutil::PRIVATE_DIR_MODE).map_err(|source| {
            ComponentError::Fs {
                component: NAME,
                source,
            }
        })?;
        // ctr comes with every containerd (Debian's, the bundle's).
        let ctr = binary::find("ctr", &self.paths)?;
        let mut s = ImportSettings::new(&dir, &self.socket, &ctr);
        s.sandbox = Some(SandboxSettings {
            name: self.sandbox_image.clone(),
            pause_binary: pause::find_binary(&self.paths),
        });
        self.settings = Some(s);
        Ok(())
    }

    async fn start(&mut self) -> Result<(), ComponentError> {
        if self.task.is_some() {
            return Ok(());
        }
        let Some(settings) = self.settings.clone() else {
            return Err(ComponentError::NotInitialized { component: NAME });
        };
        let progress = self.progress.clone();
        *progress.lock().unwrap_or_else(PoisonError::into_inner) =
            Progress::Running("starting".into());
        let span = info_span!("images", component = NAME);
        self.task = Some(tokio::spawn(
            async move {
                let p = progress.clone();
                let report = import::import_dir(&settings, &move |m| {
                    *p.lock().unwrap_or_else(PoisonError::into_inner) = Progress::Running(m);
                })
                .await;
                *progress.lock().unwrap_or_else(PoisonError::into_inner) =
                    Progress::Done(Box::new(report));
            }
            .instrument(span),
        ));
        Ok(())
    }

    async fn ready(&self) -> Result<(), ComponentError> {
        let message = match &*self.progress.lock().unwrap_or_else(PoisonError::into_inner) {
            Progress::Done(_) => return Ok(()),
            Progress::Running(m) => m.clone(),
            Progress::NotStarted => "not started".into(),
        };
        Err(ComponentError::NotReady {
            component: NAME,
            message,
        })
    }

    async fn stop(&mut self) -> Result<(), ComponentError> {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
        Ok(())
    }

    fn ready_timeout(&self) -> Duration {
        READY_TIMEOUT
    }
}
