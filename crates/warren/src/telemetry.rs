//! Logging and metrics, set up once per process.
//!
//! Logs: `RUST_LOG` filters (default `info` for components, `warn` for operator commands, whose
//! output is their answer), text for people, JSON for collectors. Every line logged while a
//! message is handled carries the message's span: queue, type, message id, saga id, trace id,
//! step and attempt.
//!
//! Spans: built with the `otlp` feature and given `OTEL_EXPORTER_OTLP_ENDPOINT`, every span
//! (a message's, a request's) is exported over OTLP/HTTP, joined to the W3C trace its message
//! carries, so a tracing back end shows each saga as one trace.
//!
//! Metrics: the `metrics` facade, recorded by the Prometheus exporter and rendered by `/metrics`.

use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use crate::settings::LogFormat;

/// Installs logging (and, built with `otlp` and given `OTEL_EXPORTER_OTLP_ENDPOINT`, span
/// export). Keep the guard until the process ends: dropping it flushes the spans not yet sent.
pub fn init(format: &LogFormat, default_level: &str, service: &str) -> Guard {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let lines = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let lines = match format {
        LogFormat::Text => lines.boxed(),
        LogFormat::Json => lines.json().flatten_event(true).boxed(),
    };
    let registry = tracing_subscriber::registry().with(filter).with(lines);
    #[cfg(feature = "otlp")]
    {
        let (layer, provider) = otlp::layer(service);
        registry.with(layer).init();
        Guard { provider }
    }
    #[cfg(not(feature = "otlp"))]
    {
        let _ = service;
        registry.init();
        Guard {}
    }
}

/// Flushes exported spans when dropped.
#[derive(Debug)]
pub struct Guard {
    #[cfg(feature = "otlp")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

#[cfg(feature = "otlp")]
impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("warning: flushing spans to the OTLP endpoint failed: {error}");
        }
    }
}

/// OTLP over HTTP (protobuf), configured by the standard `OTEL_EXPORTER_OTLP_*` variables.
#[cfg(feature = "otlp")]
mod otlp {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::trace::SdkTracerProvider;

    type Layer<S> = tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>;

    /// The span-export layer, when an endpoint is configured.
    pub fn layer<S>(service: &str) -> (Option<Layer<S>>, Option<SdkTracerProvider>)
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        let configured = [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        ]
        .iter()
        .any(|v| std::env::var_os(v).is_some());
        if !configured {
            return (None, None);
        }
        let exporter = match opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
        {
            Ok(exporter) => exporter,
            Err(error) => {
                eprintln!("warning: no span export: {error}");
                return (None, None);
            }
        };
        let name = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| service.to_owned());
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(Resource::builder().with_service_name(name).build())
            .build();
        let tracer = provider.tracer("warren");
        (
            Some(tracing_opentelemetry::layer().with_tracer(tracer)),
            Some(provider),
        )
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
