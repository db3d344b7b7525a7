//! What every protected route goes through before its handler: the caller is authenticated
//! ([`crate::auth`]), held to its rate limit, and given a deadline.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::{FromRequestParts, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::auth::Principal;
use crate::{ApiError, AppState};

/// Per-client request limits.
#[derive(Debug, Clone)]
pub struct Limits {
    limiter: Arc<DefaultKeyedRateLimiter<String>>,
    checks: Arc<AtomicU64>,
    /// How long a handler may take to answer (an event stream's answer is its first byte).
    pub request_timeout: Duration,
}

impl Limits {
    /// `per_second` requests a second for each client, with bursts of up to `burst`.
    pub fn new(per_second: u32, burst: u32, request_timeout: Duration) -> Self {
        let rate = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(burst.max(per_second)).unwrap_or(rate);
        Self {
            limiter: Arc::new(RateLimiter::keyed(
                Quota::per_second(rate).allow_burst(burst),
            )),
            checks: Arc::new(AtomicU64::new(0)),
            request_timeout,
        }
    }

    /// `Err(seconds to wait)` when `client` is over its limit.
    fn check(&self, client: &str) -> Result<(), u64> {
        // Forget idle clients now and then, so the table does not grow for ever.
        if self.checks.fetch_add(1, Ordering::Relaxed) % 4096 == 4095 {
            self.limiter.retain_recent();
        }
        self.limiter
            .check_key(&client.to_owned())
            .map_err(|not_until| {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
            })
    }
}

/// Cross-origin requests from `origins` only (none: no CORS headers at all, so browsers keep
/// other sites' pages out).
pub fn cors(origins: &[String]) -> Result<Option<tower_http::cors::CorsLayer>, String> {
    use axum::http::{HeaderName, HeaderValue, Method, header};
    if origins.is_empty() {
        return Ok(None);
    }
    let origins = origins
        .iter()
        .map(|o| HeaderValue::from_str(o).map_err(|_| format!("bad CORS origin {o:?}")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(
        tower_http::cors::CorsLayer::new()
            .allow_origin(origins)
            .allow_methods([Method::GET, Method::POST, Method::PUT])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("idempotency-key"),
                HeaderName::from_static("x-api-key"),
                HeaderName::from_static("traceparent"),
            ])
            .expose_headers([HeaderName::from_static("traceparent"), header::RETRY_AFTER])
            .max_age(Duration::from_secs(600)),
    ))
}

/// Authenticates, rate-limits and times the request; handlers find the [`Principal`] in the
/// request's extensions.
pub async fn guard(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    let principal = match Principal::from_request_parts(&mut parts, &state).await {
        Ok(principal) => principal,
        Err(error) => return error.into_response(),
    };
    if let Err(retry_after_secs) = state.limits.check(&principal.id) {
        metrics::counter!("warren_http_rate_limited_total").increment(1);
        return ApiError::TooManyRequests { retry_after_secs }.into_response();
    }
    request = Request::from_parts(parts, body);
    match tokio::time::timeout(state.limits.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::TimedOut.into_response(),
    }
}
