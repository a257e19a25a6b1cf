//! `mkectl controller`: checks the flags and the config, turns them into a
//! [`ControllerPlan`] and runs it (`crate::node::controller`).

use crate::cli::{ControllerArgs, GlobalArgs};
use crate::config::display_name;
use crate::node::controller::{ControllerPlan, COMPONENTS, CONTROL_PLANE_TAINT};
use crate::node::controller_context::ControllerWorker;
use crate::node::join_token::TokenSource;
use crate::node::node_side::{agent_admin, worker_spec, WORKER_OPTIONAL};
use crate::node::{identity, NodeError};

pub async fn run(global: &GlobalArgs, args: &ControllerArgs) -> anyhow::Result<()> {
    let cfg = super::shared::load_config(global.config.as_deref())?;
    let config_file = display_name(global.config.as_deref());
    check_disabled(args)?;
    // The worker side's labels and taints are checked before anything is
    // written, like the rest of the config.
    let worker = if args.enable_worker {
        let mut taints = args.taints.clone();
        if !args.no_taints {
            taints.push(CONTROL_PLANE_TAINT.to_string());
        }
        Some(ControllerWorker {
            spec: worker_spec(&cfg, &args.labels, &taints, &config_file)?,
            agent_admin: agent_admin(args.agent_admin_address, args.agent_admin_port),
            disabled: args.disable_components.clone(),
        })
    } else {
        None
    };
    let plan = ControllerPlan {
        paths: identity::absolute_paths(
            &global.data_dir,
            &global.run_dir,
            global.bin_dir.as_deref(),
        )?,
        node_name: identity::node_name(args.node_name.as_deref())?,
        node_address: cfg.node_address(&config_file)?,
        cfg,
        disabled: args.disable_components.clone(),
        worker,
        token: args.token_file.clone().map(TokenSource::File),
        init_only: args.init_only,
    };
    Ok(crate::node::controller::run(plan).await?)
}

/// `--disable-components` names only components this controller can run.
fn check_disabled(args: &ControllerArgs) -> Result<(), NodeError> {
    for name in &args.disable_components {
        let worker_side = WORKER_OPTIONAL.contains(&name.as_str());
        if worker_side && !args.enable_worker {
            return Err(NodeError::Usage(format!(
                "--disable-components: {name:?} runs only with --enable-worker"
            )));
        }
        if !COMPONENTS.contains(&name.as_str()) && !worker_side {
            let mut known = COMPONENTS.to_vec();
            if args.enable_worker {
                known.extend(WORKER_OPTIONAL);
            }
            return Err(NodeError::Usage(format!(
                "--disable-components: unknown component {name:?}; known: {}",
                known.join(", ")
            )));
        }
    }
    Ok(())
}
