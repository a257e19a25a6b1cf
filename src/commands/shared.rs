//! Helpers several subcommands use: loading the config, reading join
//! tokens, printing structured output. Imports no subcommand.

use std::path::Path;

use serde::Serialize;

use crate::cli::OutputFormat;
use crate::config::{display_name, ClusterConfig};
use crate::exit::UsageError;
use crate::join::{JoinToken, Role};

/// Loads and validates the cluster config (`None` = the defaults), the
/// checks against the add-on templates included.
pub fn load_config(path: Option<&Path>) -> anyhow::Result<ClusterConfig> {
    let cfg = ClusterConfig::load(path)?;
    crate::applier::check_config(&cfg, &display_name(path))?;
    Ok(cfg)
}

/// Largest token file read (a token is well under 1 KiB per controller).
pub const MAX_TOKEN_FILE_BYTES: u64 = 64 * 1024;

/// Reads and decodes a token file (at most [`MAX_TOKEN_FILE_BYTES`]) for
/// role `want`; errors name the file (exit 64).
pub fn read_token_file(path: &Path, want: Role) -> anyhow::Result<JoinToken> {
    let cannot = |e: String| UsageError(format!("--token-file {}: {e}", path.display()));
    let bytes = std::fs::File::open(path)
        .and_then(|f| crate::fsutil::read_at_most(f, MAX_TOKEN_FILE_BYTES))
        .map_err(|e| cannot(format!("cannot read: {e}")))?
        .ok_or_else(|| {
            cannot(format!(
                "larger than {MAX_TOKEN_FILE_BYTES} bytes; not a join token"
            ))
        })?;
    let text = String::from_utf8(bytes).map_err(|_| cannot("not UTF-8 text".into()))?;
    let token = JoinToken::decode(&text).map_err(|e| cannot(e.to_string()))?;
    check_role(&token, want)?;
    Ok(token)
}

/// A token for another role is bad usage (exit 64).
pub fn check_role(token: &JoinToken, want: Role) -> anyhow::Result<()> {
    if token.role == want {
        return Ok(());
    }
    let e = crate::join::JoinError::WrongRole {
        have: token.role,
        want,
        what: if want == Role::Controller {
            "`mkectl controller --token-file`"
        } else {
            "`mkectl worker`"
        },
    };
    Err(UsageError(e.to_string()).into())
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
