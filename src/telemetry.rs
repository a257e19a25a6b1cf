//! Logging setup: `tracing` to stderr, text or JSON, verbosity from `-v` or
//! `RUST_LOG` (`level` and `target=level` directives, comma-separated; span
//! and field filters are not supported: the filter is `Targets`, which needs
//! no regex engine in the binary). Every component runs inside a span carrying `component`, and
//! child output is re-logged with `component` and `stream` fields.

use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Output format of the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Installs the global subscriber. `verbosity` counts `-v` flags: 0 = info,
/// 1 = debug, 2+ = trace. `RUST_LOG`, when set, wins.
pub fn init(format: LogFormat, verbosity: u8) {
    let level = match verbosity {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    // Dependencies are chatty at debug; keep them one notch quieter.
    let default = format!("{level},h2=info,hyper=info,tower=info,rustls=info,tonic=info");
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => spec.parse::<Targets>().unwrap_or_else(|e| {
            // Logging is not up yet: say it on stderr, once, and go on.
            eprintln!("mkectl: RUST_LOG {spec:?} is not a level or target=level list ({e}); using {default:?}");
            default_targets(&default)
        }),
        _ => default_targets(&default),
    };
    let builder = fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    // try_init: a second call (tests) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.finish().with(filter).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .finish()
            .with(filter)
            .try_init(),
    };
}

/// The built-in filter; it always parses (its directives are fixed above),
/// and a failure would still log at info rather than not at all.
fn default_targets(spec: &str) -> Targets {
    spec.parse()
        .unwrap_or_else(|_| Targets::new().with_default(tracing::Level::INFO))
}

/// Displays an error with all its causes, `outer: inner: innermost`, the way
/// `main` prints a failure (`{:#}`). Errors keep their cause out of their own
/// message (it is their `source`), so a log field or a status line that
/// shows only `Display` would drop it; this puts it back, once. Some
/// dependencies' errors also print their source in their own message; a
/// cause whose text the level above already shows is skipped, so it does not
/// appear twice.
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut above = self.0.to_string();
        f.write_str(&above)?;
        let mut cause = self.0.source();
        while let Some(c) = cause {
            let text = c.to_string();
            if !above.contains(&text) {
                write!(f, ": {text}")?;
            }
            above = text;
            cause = c.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("reading /etc/x")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn rust_log_directives_mkectl_documents_parse() {
        use tracing::Level;
        use tracing_subscriber::filter::LevelFilter;
        let t = default_targets("debug,h2=info,hyper=info,tower=info,rustls=info,tonic=info");
        assert!(t.would_enable("mkectl::applier", &Level::DEBUG));
        assert!(!t.would_enable("h2::codec", &Level::DEBUG));
        // src/supervisor/logs.rs tells operators to quiet child output so.
        let t: Targets = "info,mkectl::child=warn".parse().unwrap();
        assert!(!t.would_enable("mkectl::child", &Level::INFO));
        assert!(t.would_enable("mkectl::child", &Level::WARN));
        assert_eq!(t.default_level(), Some(LevelFilter::INFO));
    }

    #[test]
    fn chain_prints_every_cause_once() {
        let e = Outer(std::io::Error::other("denied"));
        assert_eq!(Chain(&e).to_string(), "reading /etc/x: denied");
    }

    #[derive(Debug, thiserror::Error)]
    #[error("reading /etc/x: {0}")]
    struct Repeats(#[source] std::io::Error);

    #[test]
    fn chain_skips_a_cause_the_message_already_shows() {
        let e = Repeats(std::io::Error::other("denied"));
        assert_eq!(Chain(&e).to_string(), "reading /etc/x: denied");
    }
}
