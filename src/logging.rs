//! Log output: text or JSON lines on stderr, level from `RUST_LOG` (default `info`).
//!
//! The access log is ordinary `tracing` events on the target `access`, so it can be
//! filtered or routed on its own (`RUST_LOG=info,access=off`).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// The tracing target of access-log lines.
pub const ACCESS: &str = "access";

/// Installs the global subscriber. Safe to call once per process.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    // A second call (tests) finds a subscriber already installed; that one stays.
    drop(result);
}
