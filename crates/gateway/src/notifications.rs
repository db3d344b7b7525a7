//! Customers' notifications: the list (asked of the notification service) and a live stream.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use crate::auth::Principal;
use crate::extract::ApiQuery;
use crate::{ApiError, AppState};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    pub customer_id: String,
    pub limit: Option<u32>,
}

pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<Value>, ApiError> {
    if params.customer_id.is_empty() || params.customer_id.len() > 128 {
        return Err(ApiError::Invalid(
            "customer_id must be 1 to 128 characters".into(),
        ));
    }
    principal.act_for(&params.customer_id)?;
    let limit = params.limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::Invalid("limit must be 1 to 1000".into()));
    }
    Ok(Json(
        state
            .query(
                "notification.queries",
                "list_notifications",
                json!({"customer_id": params.customer_id, "limit": limit}),
            )
            .await?,
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamParams {
    pub customer_id: Option<String>,
}

/// Each new notification as it is created, optionally for one customer only.
pub async fn stream(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(params): ApiQuery<StreamParams>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    // A customer's stream carries its own notifications only.
    let customer = principal.customer_for(params.customer_id)?;
    let receiver = state.events.notifications().await;
    let stream = futures_util::stream::unfold(
        (receiver, customer),
        |(mut receiver, customer)| async move {
            loop {
                match receiver.recv().await {
                    Ok(n) if customer.as_ref().is_none_or(|c| *c == n.customer_id) => {
                        let event = Event::default()
                            .event("notification")
                            .id(n.notification_id.to_string())
                            .data(serde_json::to_string(&*n).unwrap_or_default());
                        return Some((Ok(event), (receiver, customer)));
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
