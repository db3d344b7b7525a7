//! Logging: `RUST_LOG` filters (default `info` for components, `warn` for operator commands,
//! whose output is their answer), text for people, JSON for collectors.

use tracing_subscriber::EnvFilter;

use crate::settings::LogFormat;

pub fn init(format: &LogFormat, default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
