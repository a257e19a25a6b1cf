//! `mkectl config default|validate`.

use anyhow::Context;

use crate::cli::{ConfigCommand, GlobalArgs};
use crate::config::{display_name, ClusterConfig};
use crate::exit::UsageError;

pub fn run(global: &GlobalArgs, cmd: &ConfigCommand) -> anyhow::Result<()> {
    match cmd {
        ConfigCommand::Default => {
            let yaml = ClusterConfig::default()
                .to_yaml()
                .context("rendering the default config")?;
            print!("{yaml}");
            Ok(())
        }
        ConfigCommand::Validate => {
            let Some(path) = global.config.as_deref() else {
                return Err(UsageError(
                    "config validate needs --config FILE (or --config - for standard input)".into(),
                )
                .into());
            };
            ClusterConfig::load(Some(path))?;
            println!("{}: valid", display_name(Some(path)));
            Ok(())
        }
    }
}
