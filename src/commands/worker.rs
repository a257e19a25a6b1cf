//! `mkectl worker`: checks the flags and the config, decodes the join token
//! and runs the worker role (`crate::node::worker`).

use crate::cli::{GlobalArgs, WorkerArgs};
use crate::config::display_name;
use crate::node::join_token::TokenSource;
use crate::node::node_side::{agent_admin, worker_spec, WORKER_OPTIONAL};
use crate::node::worker::WorkerPlan;
use crate::node::{identity, NodeError};

pub async fn run(global: &GlobalArgs, args: &WorkerArgs) -> anyhow::Result<()> {
    // Everything from the command line and the config is checked before
    // anything is written or joined.
    let cfg = super::shared::load_config(global.config.as_deref())?;
    for name in &args.disable_components {
        if !WORKER_OPTIONAL.contains(&name.as_str()) {
            return Err(NodeError::Usage(format!(
                "--disable-components: unknown worker component {name:?}; known: {}",
                WORKER_OPTIONAL.join(", ")
            ))
            .into());
        }
    }
    let worker_spec = worker_spec(
        &cfg,
        &args.labels,
        &args.taints,
        &display_name(global.config.as_deref()),
    )?;
    let token = match (&args.token, &args.token_file) {
        (Some(t), _) => Some(TokenSource::Inline(t.clone())),
        (None, Some(f)) => Some(TokenSource::File(f.clone())),
        (None, None) => None,
    };
    let plan = WorkerPlan {
        cfg,
        worker_spec,
        paths: identity::absolute_paths(
            &global.data_dir,
            &global.run_dir,
            global.bin_dir.as_deref(),
        )?,
        token,
        node_name: args.node_name.clone(),
        address: args.address,
        refresh_interval: args.refresh_interval,
        agent_admin: agent_admin(args.agent_admin_address, args.agent_admin_port),
        disabled: args.disable_components.clone(),
    };
    Ok(crate::node::worker::run(plan).await?)
}
