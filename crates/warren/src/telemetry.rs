//! Logging and metrics, set up once per process.
//!
//! Logs: `RUST_LOG` filters (default `info` for components, `warn` for operator commands, whose
//! output is their answer), text for people, JSON for collectors. Every line logged while a
//! message is handled carries the message's span: queue, type, message id, saga id, trace id,
//! step and attempt.
//!
//! Metrics: the `metrics` facade, recorded by the Prometheus exporter and rendered by `/metrics`.

use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;
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

/// Latency buckets in seconds, from a fast handler (a millisecond) to a slow saga step.
const SECONDS: [f64; 16] = [
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Installs the process-wide recorder; histograms ending in `_seconds` get [`SECONDS`] buckets.
/// The handle renders the text `/metrics` answers with.
pub fn metrics(shutdown: CancellationToken) -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS)
        .context("metric buckets")?
        .install_recorder()
        .context("installing the metrics recorder")?;
    // Histograms buffer samples until upkeep folds them in.
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(Duration::from_secs(5)) => upkeep.run_upkeep(),
            }
        }
    });
    metrics::gauge!("warren_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    Ok(handle)
}
