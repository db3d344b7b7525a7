//! Every error answer is `{"error": {"code": "...", "message": "..."}}` with a fitting status.
//! Internal details are logged, never shown to clients.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
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
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Self::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Self::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            Self::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        match &self {
            Self::Internal(detail) => error!(%detail, "request failed"),
            Self::Unavailable(detail) => warn!(%detail, "dependency unavailable"),
            _ => {}
        }
        let body = json!({"error": {"code": code, "message": self.to_string()}});
        (status, Json(body)).into_response()
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
            RpcError::Timeout { .. } | RpcError::Unavailable(_) => {
                Self::Unavailable(format!("the owning service did not answer: {error}"))
            }
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<bus::PublishError> for ApiError {
    fn from(error: bus::PublishError) -> Self {
        Self::Unavailable(format!(
            "the command was not accepted by the broker: {error}"
        ))
    }
}

pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {}", uri.path()))
}

pub async fn method_not_allowed() -> Response {
    let body = json!({"error": {"code": "method_not_allowed", "message": "this route does not take that method"}});
    (StatusCode::METHOD_NOT_ALLOWED, Json(body)).into_response()
}
