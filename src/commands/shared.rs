//! Helpers several subcommands use: loading the config, printing
//! structured output. Imports no subcommand.

use std::path::Path;

use serde::Serialize;

use crate::cli::OutputFormat;
use crate::config::{display_name, ClusterConfig};

/// Loads and validates the cluster config (`None` = the defaults), the
/// checks against the add-on templates included.
pub fn load_config(path: Option<&Path>) -> anyhow::Result<ClusterConfig> {
    let cfg = ClusterConfig::load(path)?;
    crate::applier::check_config(&cfg, &display_name(path))?;
    Ok(cfg)
}

/// [`load_config`] for config text already read (`file` names it).
pub fn config_from_yaml(text: &str, file: &str) -> anyhow::Result<ClusterConfig> {
    let cfg = ClusterConfig::from_yaml(text, file)?;
    crate::applier::check_config(&cfg, file)?;
    Ok(cfg)
}

/// Prints `value` as JSON or YAML (`Text` falls back to JSON).
pub fn print_structured<T: Serialize>(value: &T, format: OutputFormat) -> anyhow::Result<()> {
    match format {
        OutputFormat::Yaml => print!("{}", serde_saphyr::to_string(value)?),
        OutputFormat::Json | OutputFormat::Text => {
            println!("{}", serde_json::to_string_pretty(value)?)
        }
    }
    Ok(())
}
