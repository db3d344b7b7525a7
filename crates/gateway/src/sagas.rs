//! Sagas: one, a list, and a live stream of one saga's transitions.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use contracts::messages::SagaView;
use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

use crate::auth::{Principal, Scope};
use crate::extract::ApiQuery;
use crate::{ApiError, AppState};

use contracts::messages::SAGA_STATES as STATES;

fn saga_id(text: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(text).map_err(|_| ApiError::NotFound(format!("no saga {text}")))
}

/// Refuses a caller limited to its own sagas when the saga is another customer's.
async fn check_owner(state: &AppState, principal: &Principal, id: Uuid) -> Result<(), ApiError> {
    if principal.has(Scope::Customers) || principal.has(Scope::Ui) {
        return Ok(());
    }
    let start = state
        .query("saga.queries", "get_start", json!({"saga_id": id}))
        .await?;
    match start["customer_id"].as_str() {
        Some(customer) => principal.act_for(customer),
        None => Err(ApiError::Forbidden(format!(
            "saga {id} belongs to no customer"
        ))),
    }
}

pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = saga_id(&id)?;
    check_owner(&state, &principal, id).await?;
    Ok(Json(
        state
            .query("saga.queries", "get_saga", json!({"saga_id": id}))
            .await?,
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    pub state: Option<String>,
    pub limit: Option<u32>,
}

pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<Value>, ApiError> {
    principal.require(Scope::Ui)?;
    if let Some(s) = &params.state
        && !STATES.contains(&s.as_str())
    {
        return Err(ApiError::Invalid(format!(
            "state must be one of {}",
            STATES.join(", ")
        )));
    }
    let limit = params.limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::Invalid("limit must be 1 to 1000".into()));
    }
    Ok(Json(
        state
            .query(
                "saga.queries",
                "list_sagas",
                json!({"state": params.state, "limit": limit}),
            )
            .await?,
    ))
}

fn terminal(state: &str) -> bool {
    matches!(state, "completed" | "compensated" | "failed")
}

/// The saga as it is now, then each transition as it happens; the stream ends after a
/// terminal state.
pub async fn events(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let id = saga_id(&id)?;
    check_owner(&state, &principal, id).await?;
    // Subscribe before reading, so no transition falls between the two.
    let receiver = state.events.sagas().await;
    let current: SagaView = serde_json::from_value(
        state
            .query("saga.queries", "get_saga", json!({"saga_id": id}))
            .await?,
    )
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    let first = event(&current, "snapshot");
    let done = terminal(&current.state);
    let seen = current.version;
    let stream = futures_util::stream::unfold(
        (Some(first), receiver, done, seen),
        move |(first, mut receiver, done, seen)| async move {
            if let Some(first) = first {
                return Some((Ok(first), (None, receiver, done, seen)));
            }
            if done {
                return None;
            }
            loop {
                match receiver.recv().await {
                    Ok(update) if update.view.saga_id == id && update.view.version > seen => {
                        let done = terminal(&update.view.state);
                        let event = event(&update.view, &update.transition);
                        return Some((Ok(event), (None, receiver, done, update.view.version)));
                    }
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return None,
                }
            }
        },
    );
    Ok(Sse::new(stream.take_until(state.events.stopping()))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// Also [`crate::ui::events`]'s format, so one page reads both streams the same way.
pub(crate) fn event(view: &SagaView, transition: &str) -> Event {
    let mut data = serde_json::to_value(view).unwrap_or(Value::Null);
    data["transition"] = Value::String(transition.to_owned());
    Event::default()
        .event("saga")
        .id(view.version.to_string())
        .data(data.to_string())
}
