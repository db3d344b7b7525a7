//! `/healthz` says the process is alive; `/readyz` says it can do work: the broker connection
//! is up and the database answers.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use crate::{ApiError, AppState};

pub async fn live() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

pub async fn ready(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    if !state.bus.is_connected() {
        return Err(ApiError::Unavailable {
            what: "RabbitMQ connection is down",
            detail: "the broker connection is not connected".into(),
        });
    }
    if let Some(pool) = &state.pool {
        sqlx::query("SELECT 1")
            .execute(pool)
            .await
            .map_err(|error| ApiError::Unavailable {
                what: "PostgreSQL does not answer",
                detail: error.to_string(),
            })?;
    }
    Ok(Json(
        json!({"status": "ready", "broker": "up", "database": "up"}),
    ))
}
