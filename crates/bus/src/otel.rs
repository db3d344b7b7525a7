//! Joining spans to their W3C trace for an OpenTelemetry exporter (feature `otel`, turned on by
//! the binary's `otlp` feature). Without an OpenTelemetry layer installed they change nothing.

use contracts::TraceParent;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Makes `span` a child of the remote span `parent` names.
pub fn join(span: &tracing::Span, parent: &TraceParent) {
    let remote = SpanContext::new(
        TraceId::from_bytes(parent.trace_id.to_be_bytes()),
        SpanId::from_bytes(parent.parent_id.to_be_bytes()),
        TraceFlags::new(parent.flags),
        true,
        TraceState::default(),
    );
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
}

/// The trace context of `span` as the exporter will report it, when one is installed.
pub fn context(span: &tracing::Span) -> Option<TraceParent> {
    let context = span.context();
    let reference = context.span();
    let own = reference.span_context();
    own.is_valid().then(|| TraceParent {
        trace_id: u128::from_be_bytes(own.trace_id().to_bytes()),
        parent_id: u64::from_be_bytes(own.span_id().to_bytes()),
        flags: own.trace_flags().to_u8(),
    })
}
