//! The trace of a request: the caller's W3C `traceparent` when it sends a valid one (the
//! gateway's hop becomes a child span of it), a new trace otherwise. Commands the request
//! publishes carry it, and the answer names it in its own `traceparent` header, so a caller
//! can find every log line of its checkout by one id.

use std::convert::Infallible;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue};
use contracts::{TraceParent, routing};

#[derive(Debug, Clone, Copy)]
pub struct Trace {
    /// The gateway's own span: what the commands it publishes name as their parent.
    pub current: TraceParent,
    /// What the caller sent, if valid.
    #[cfg_attr(not(feature = "otel"), allow(dead_code))]
    incoming: Option<TraceParent>,
}

impl Trace {
    /// Binds the trace to the request's span: records its trace id there, and with an
    /// OpenTelemetry exporter joins the span to the caller's trace and takes the span's own
    /// context as the one passed on, so exported spans form one tree.
    #[must_use]
    pub fn attach(self, span: &tracing::Span) -> Self {
        #[cfg(feature = "otel")]
        let this = {
            if let Some(incoming) = &self.incoming {
                bus::otel::join(span, incoming);
            }
            bus::otel::context(span).map_or(self, |current| Self { current, ..self })
        };
        #[cfg(not(feature = "otel"))]
        let this = self;
        span.record("trace_id", this.current.trace_id_hex());
        this
    }

    /// The header that tells the caller which trace its request runs in.
    pub fn header(&self) -> (HeaderName, HeaderValue) {
        let value = HeaderValue::from_str(&self.current.to_string())
            .expect("a formatted traceparent is a valid header value");
        (HeaderName::from_static(routing::HEADER_TRACEPARENT), value)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Trace {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let incoming = parts
            .headers
            .get(routing::HEADER_TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(TraceParent::parse);
        Ok(Self {
            current: incoming.map_or_else(TraceParent::new_root, |t| t.child()),
            incoming,
        })
    }
}
