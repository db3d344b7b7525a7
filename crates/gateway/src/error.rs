//! Every error answer is `{"error": {"code": "...", "message": "..."}}` with a fitting status.
//! Internal details are logged, never shown to clients.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bus::rpc::{RemoteCode, RpcError};
use serde_json::json;
use tracing::{error, warn};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed JSON or a request that makes no sense (400).
    #[error("{0}")]
    BadRequest(String),
    /// Well-formed but breaks the contract's rules (422).
    #[error("{0}")]
    Invalid(String),
    /// No credentials, or ones that do not check out (401).
    #[error("{0}")]
    Unauthorized(String),
    /// Known caller, not allowed (403).
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// A service, the broker or the database did not do its part (503): what failed, for the
    /// client; why, for the log only (it may name hosts, queues or library errors).
    #[error("{what}")]
    Unavailable { what: &'static str, detail: String },
    /// Past the caller's rate limit (429), with how long to wait.
    #[error("too many requests; try again in {retry_after_secs} s")]
    TooManyRequests { retry_after_secs: u64 },
    /// The request took longer than the gateway allows (503).
    #[error("the request took too long")]
    TimedOut,
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Self::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Self::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            Self::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            Self::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::TooManyRequests { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            Self::TimedOut => (StatusCode::SERVICE_UNAVAILABLE, "timed_out"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        match &self {
            Self::Internal(detail) => error!(%detail, "request failed"),
            Self::Unavailable { what, detail } => warn!(%detail, "{what}"),
            _ => {}
        }
        let body = json!({"error": {"code": code, "message": self.to_string()}});
        let mut response = (status, Json(body)).into_response();
        let headers = response.headers_mut();
        match &self {
            Self::Unauthorized(_) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"warren\""),
                );
            }
            Self::TooManyRequests { retry_after_secs } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            _ => {}
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let text = rejection.body_text();
        match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => {
                Self::TooLarge("the body is larger than allowed".into())
            }
            StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                Self::UnsupportedMediaType("send the body as application/json".into())
            }
            StatusCode::UNPROCESSABLE_ENTITY => Self::Invalid(text),
            _ => Self::BadRequest(text),
        }
    }
}

impl From<RpcError> for ApiError {
    fn from(error: RpcError) -> Self {
        match error {
            RpcError::Remote {
                code: RemoteCode::NotFound,
                message,
            } => Self::NotFound(message),
            RpcError::Remote {
                code: RemoteCode::BadRequest,
                message,
            } => Self::BadRequest(message),
            RpcError::Timeout { .. } | RpcError::Unavailable(_) => Self::Unavailable {
                what: "the owning service did not answer",
                detail: error.to_string(),
            },
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<bus::PublishError> for ApiError {
    fn from(error: bus::PublishError) -> Self {
        Self::Unavailable {
            what: "the command was not accepted by the broker",
            detail: error.to_string(),
        }
    }
}

pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {}", uri.path()))
}

pub async fn method_not_allowed() -> Response {
    let body = json!({"error": {"code": "method_not_allowed", "message": "this route does not take that method"}});
    (StatusCode::METHOD_NOT_ALLOWED, Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unavailable_dependency_is_named_without_its_internal_error() {
        let wait = std::time::Duration::from_secs(3);
        let response = ApiError::from(bus::PublishError::TimedOut(wait)).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            body,
            json!({"error": {"code": "unavailable",
                             "message": "the command was not accepted by the broker"}})
        );
    }
}
