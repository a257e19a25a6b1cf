//! Logging setup: `tracing` to stderr, text or JSON, verbosity from `-v` or
//! `RUST_LOG` (`level` and `target=level` directives, comma-separated; span
//! and field filters are not supported: the filter is `Targets`, which needs
//! no regex engine in the binary). Every component runs inside a span
//! carrying `component`, and child output is re-logged with `component` and
//! `stream` fields.

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
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // try_init: a second call (tests) keeps the first subscriber.
    let _ = subscriber(format, filter, std::io::stderr, ansi).try_init();
}

/// The subscriber `init` installs, writing to `writer`.
fn subscriber<W>(
    format: LogFormat,
    filter: Targets,
    writer: W,
    ansi: bool,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    // The fmt builder filters at INFO unless told otherwise: let everything
    // through to `filter`, which alone decides.
    let builder = fmt()
        .with_max_level(tracing::level_filters::LevelFilter::TRACE)
        .with_writer(writer)
        .with_ansi(ansi)
        .with_target(false);
    match format {
        LogFormat::Text => Box::new(builder.finish().with(filter)),
        LogFormat::Json => Box::new(
            builder
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .finish()
                .with(filter),
        ),
    }
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

    /// A writer the tests read back.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_filter_alone_decides_what_is_logged() {
        for format in [LogFormat::Text, LogFormat::Json] {
            let out = Captured::default();
            let w = out.clone();
            let sub = subscriber(
                format,
                default_targets("debug,h2=info"),
                move || w.clone(),
                false,
            );
            tracing::subscriber::with_default(sub, || {
                tracing::debug!(component = "test", "debug from mkectl");
                tracing::trace!(component = "test", "trace from mkectl");
                tracing::debug!(target: "h2::proto", "debug from h2");
            });
            let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
            assert!(text.contains("debug from mkectl"), "{format:?}: {text}");
            assert!(!text.contains("trace from mkectl"), "{format:?}: {text}");
            assert!(!text.contains("debug from h2"), "{format:?}: {text}");
        }
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
