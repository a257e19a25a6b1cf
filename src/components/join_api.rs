//! The join API as a controller component: HTTPS on the node address
//! (`spec.joinApi.port`), serving joins, promotions, leaves and the
//! controller list (see [`crate::join::api`]). In-process; `init` only
//! checks the CA material it serves from exists.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Component, ComponentError};
use crate::fsutil;
use crate::join::api::{self, ApiHandle, ApiSettings};

pub const NAME: &str = "join-api";
/// Bound on closing open connections when the controller stops.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);

pub struct JoinApi {
    settings: ApiSettings,
    handle: Option<ApiHandle>,
}

impl JoinApi {
    pub fn new(settings: ApiSettings) -> Self {
        Self {
            settings,
            handle: None,
        }
    }

    /// The bound address, once started.
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.handle.as_ref().map(ApiHandle::local_addr)
    }
}

#[async_trait::async_trait]
impl Component for JoinApi {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn init(&mut self) -> Result<(), ComponentError> {
        let p = &self.settings.pki;
        for f in [
            &p.ca.cert,
            &p.ca.key,
            &p.konnectivity_ca.cert,
            &p.konnectivity_ca.key,
            &p.etcd_ca.cert,
        ] {
            fsutil::read(f).map_err(|source| ComponentError::Fs {
                component: NAME,
                source,
            })?;
        }
        Ok(())
    }

    async fn start(&mut self) -> Result<(), ComponentError> {
        if self.handle.is_some() {
            return Ok(());
        }
        let handle = api::start(self.settings.clone(), CancellationToken::new())
            .await
            .map_err(|e| ComponentError::during(NAME, "starting the join API", e))?;
        self.handle = Some(handle);
        Ok(())
    }

    async fn ready(&self) -> Result<(), ComponentError> {
        match &self.handle {
            Some(_) => Ok(()),
            None => Err(ComponentError::NotReady {
                component: NAME,
                message: "not started".into(),
            }),
        }
    }

    async fn stop(&mut self) -> Result<(), ComponentError> {
        if let Some(h) = self.handle.take() {
            if !h.shutdown(STOP_TIMEOUT).await {
                return Err(ComponentError::StopTimeout {
                    component: NAME,
                    what: "connections did not close",
                    bound: STOP_TIMEOUT,
                });
            }
        }
        Ok(())
    }
}
