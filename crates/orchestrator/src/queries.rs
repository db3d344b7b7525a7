//! Answers `saga.queries`: `get_saga`, `get_start` (for idempotency and ownership checks) and `list_sagas`.

use bus::rpc::{QueryError, QueryHandler};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{repo, view};

#[derive(Debug, Clone)]
pub struct SagaQueries {
    pool: PgPool,
}

impl SagaQueries {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[derive(Deserialize)]
struct ById {
    saga_id: Uuid,
}

#[derive(Deserialize)]
struct List {
    state: Option<String>,
    saga: Option<String>,
    limit: Option<i64>,
}

fn params<T: for<'de> Deserialize<'de>>(params: Value) -> Result<T, QueryError> {
    serde_json::from_value(params).map_err(|e| QueryError::bad_request(e.to_string()))
}

fn internal(error: sqlx::Error) -> QueryError {
    QueryError::internal(error.to_string())
}

impl QueryHandler for SagaQueries {
    async fn query(&self, method: &str, params_json: Value) -> Result<Value, QueryError> {
        match method {
            "get_saga" => {
                let ById { saga_id } = params(params_json)?;
                let saga = repo::get(&self.pool, saga_id)
                    .await
                    .map_err(internal)?
                    .ok_or_else(|| QueryError::not_found(format!("no saga {saga_id}")))?;
                serde_json::to_value(view::of(&saga))
                    .map_err(|e| QueryError::internal(e.to_string()))
            }
            "get_start" => {
                let ById { saga_id } = params(params_json)?;
                let row: Option<(String, Option<String>, Option<String>)> = sqlx::query_as(
                    "SELECT status, request_hash, state->'context'->>'customer_id' \
                     FROM sagas.sagas WHERE saga_id = $1",
                )
                .bind(saga_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(internal)?;
                let (state, request_hash, customer_id) =
                    row.ok_or_else(|| QueryError::not_found(format!("no saga {saga_id}")))?;
                Ok(
                    json!({"saga_id": saga_id, "state": state, "request_hash": request_hash,
                          "customer_id": customer_id}),
                )
            }
            "list_sagas" => {
                let List { state, saga, limit } = params(params_json)?;
                let sagas = repo::list(
                    &self.pool,
                    state.as_deref(),
                    saga.as_deref(),
                    None,
                    limit.unwrap_or(50).clamp(1, 1000),
                )
                .await
                .map_err(internal)?;
                let views: Vec<_> = sagas.iter().map(view::of).collect();
                serde_json::to_value(views).map_err(|e| QueryError::internal(e.to_string()))
            }
            other => Err(QueryError::bad_request(format!("unknown method {other:?}"))),
        }
    }
}
