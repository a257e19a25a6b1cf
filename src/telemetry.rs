//! Logging setup: `tracing` to stderr, text or JSON, verbosity from `-v` or
//! `RUST_LOG`. Every component runs inside a span carrying `component`, and
//! child output is re-logged with `component` and `stream` fields.

use tracing_subscriber::{fmt, EnvFilter};

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
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    // try_init: a second call (tests) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
    };
}
