//! `mkectl status [-o text|json|yaml]`: asks the running node over its
//! status socket. Exit 0 when everything is ready, 1 when something is not
//! (so scripts can wait on it), 69 when no node runs with this run dir.

use crate::cli::{GlobalArgs, OutputFormat, StatusArgs};
use crate::config::NodePaths;
use crate::exit::UnavailableError;
use crate::ops::client::{self, ClientError};
use crate::ops::model;

pub async fn run(global: &GlobalArgs, args: &StatusArgs) -> anyhow::Result<()> {
    let paths = NodePaths::new(&global.data_dir, &global.run_dir, global.bin_dir.as_deref());
    let status = client::status(&paths.status_socket())
        .await
        .map_err(unavailable_if_not_running)?;
    match args.output {
        OutputFormat::Text => print!("{}", model::render_text(&status)),
        other => super::shared::print_structured(&status, other)?,
    }
    if !status.ready {
        anyhow::bail!("not ready: {}", status.not_ready.join("; "));
    }
    Ok(())
}

/// "No node is running" exits 69; other failures stay runtime errors.
pub(crate) fn unavailable_if_not_running(e: ClientError) -> anyhow::Error {
    match e {
        ClientError::NotRunning { .. } => UnavailableError(e.to_string()).into(),
        other => other.into(),
    }
}
