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
            let (text, file) = crate::config::read_text(path)?;
            let cfg = super::shared::config_from_yaml(&text, &file)?;
            if is_blank(&text) {
                println!(
                    "{file}: valid, but empty: every field takes its default (see `mkectl config default`)"
                );
            } else if cfg == ClusterConfig::default() {
                println!("{file}: valid; every field is at its default");
            } else {
                println!("{}: valid", display_name(Some(path)));
            }
            Ok(())
        }
    }
}

/// No YAML content: only blank lines, comments and document markers.
fn is_blank(text: &str) -> bool {
    text.lines()
        .map(str::trim)
        .all(|l| l.is_empty() || l.starts_with('#') || l == "---" || l == "...")
}

#[cfg(test)]
mod tests {
    use super::is_blank;

    #[test]
    fn blank_documents() {
        for t in ["", "\n\n", "# nothing\n---\n...\n", "  # indented comment"] {
            assert!(is_blank(t), "{t:?}");
        }
        for t in ["kind: ClusterConfig", "{}", "spec:\n  api: {}"] {
            assert!(!is_blank(t), "{t:?}");
        }
    }
}
