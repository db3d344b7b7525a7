//! What travels between a requester and a server: the reply body (`{"ok": ...}` or
//! `{"error": ...}`) and the errors on either side, [`QueryError`] and [`RpcError`].

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Why the owning service could not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RemoteCode {
    /// The thing asked for does not exist (HTTP 404).
    NotFound,
    /// The method is unknown or the parameters are wrong (HTTP 400).
    BadRequest,
    /// The service failed (HTTP 500; the message is for logs, not for clients).
    Internal,
}

impl RemoteCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotFound => "not_found",
            Self::BadRequest => "bad_request",
            Self::Internal => "internal",
        }
    }
}

impl std::fmt::Display for RemoteCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A query handler's refusal, sent back to the requester as it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct QueryError {
    pub code: RemoteCode,
    pub message: String,
}

impl QueryError {
    pub fn new(code: RemoteCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(RemoteCode::NotFound, message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(RemoteCode::BadRequest, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(RemoteCode::Internal, message)
    }

    /// A query's parameters as `T`, or a bad request saying what is wrong with them.
    pub fn params<T: serde::de::DeserializeOwned>(params: Value) -> Result<T, Self> {
        serde_json::from_value(params).map_err(|e| Self::bad_request(e.to_string()))
    }

    /// What a read found as the answer, "no `what`" when it found nothing, and a failed read
    /// as an internal error.
    pub fn found<T: Serialize, E: std::fmt::Display>(
        found: Result<Option<T>, E>,
        what: impl FnOnce() -> String,
    ) -> Result<Value, Self> {
        let found = found.map_err(|e| Self::internal(e.to_string()))?;
        Self::answer(found.ok_or_else(|| Self::not_found(format!("no {}", what())))?)
    }

    /// A value as the answer.
    pub fn answer<T: Serialize>(value: T) -> Result<Value, Self> {
        serde_json::to_value(value).map_err(|e| Self::internal(e.to_string()))
    }

    /// The answer to a method the handler does not know.
    pub fn unknown_method(method: &str) -> Self {
        Self::bad_request(format!("unknown method {method:?}"))
    }
}

/// Why a query got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RpcError {
    /// Nobody answered in time (the service is down, slow or overloaded). Another try may work;
    /// the gateway answers 504.
    #[error("no reply from {queue} to {method} within {after:?}")]
    Timeout {
        queue: String,
        method: String,
        after: Duration,
    },
    /// The request could not be delivered: no such queue (or a name no queue can have), the
    /// queue is full, or no connection to the broker. The gateway answers 503.
    #[error("query service unavailable: {0}")]
    Unavailable(String),
    /// The service answered with an error: the gateway maps the code to a status.
    #[error("the service answered {code}: {message}")]
    Remote { code: RemoteCode, message: String },
    /// The reply was not what the protocol says: a bug on one side, never retried.
    #[error("malformed reply: {0}")]
    Protocol(String),
}

/// The reply body on the wire: `{"ok": value}` or `{"error": {"code", "message"}}`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Reply {
    Ok(Value),
    Error(QueryError),
}

pub(super) fn decode_reply(body: &[u8]) -> Result<Value, RpcError> {
    match serde_json::from_slice::<Reply>(body) {
        Ok(Reply::Ok(value)) => Ok(value),
        Ok(Reply::Error(QueryError { code, message })) => Err(RpcError::Remote { code, message }),
        Err(error) => Err(RpcError::Protocol(error.to_string())),
    }
}

pub(super) fn encode_reply(outcome: Result<Value, QueryError>) -> Vec<u8> {
    let reply = match outcome {
        Ok(value) => Reply::Ok(value),
        Err(error) => Reply::Error(error),
    };
    serde_json::to_vec(&reply).expect("a JSON value always serialises")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn replies_look_like_the_protocol_says() {
        assert_eq!(
            serde_json::from_slice::<Value>(&encode_reply(Ok(json!({"id": 7})))).unwrap(),
            json!({"ok": {"id": 7}})
        );
        assert_eq!(
            serde_json::from_slice::<Value>(&encode_reply(Err(QueryError::not_found(
                "no order 7"
            ))))
            .unwrap(),
            json!({"error": {"code": "not_found", "message": "no order 7"}})
        );
    }

    #[test]
    fn replies_decode_into_values_and_errors() {
        assert_eq!(decode_reply(br#"{"ok": null}"#), Ok(Value::Null));
        assert_eq!(
            decode_reply(br#"{"error": {"code": "bad_request", "message": "no id"}}"#),
            Err(RpcError::Remote {
                code: RemoteCode::BadRequest,
                message: "no id".into()
            })
        );
        for broken in [
            &br#"{"error": {"code": "teapot", "message": "?"}}"#[..],
            br#"{"value": 1}"#,
            b"not json",
        ] {
            assert!(matches!(decode_reply(broken), Err(RpcError::Protocol(_))));
        }
    }
}
