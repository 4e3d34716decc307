//! The only place a tracing subscriber is built.
//!
//! Logs go to stdout (journald adds timestamps under systemd). `RUST_LOG` filters (INFO by default);
//! `RUST_LOG_FORMAT=json` switches to JSON lines for log shippers.

use std::io::IsTerminal as _;

use tracing_subscriber::{fmt, EnvFilter};

/// Installs the subscriber for a service binary.
pub fn init(service: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("RUST_LOG_FORMAT").is_ok_and(|v| v == "json");
    // Colours only on a terminal: journald and log files get plain text.
    let ansi = std::io::stdout().is_terminal();
    let builder = fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi);
    let res = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
    if res.is_ok() {
        tracing::info!(service, version = env!("CARGO_PKG_VERSION"), "starting");
    }
}

/// Installs a subscriber that writes through the test harness (captured unless the test fails).
pub fn init_for_test() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = fmt().with_env_filter(filter).with_test_writer().try_init();
}
