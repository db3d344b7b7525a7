//! Reads of the notification service, for the gateway (over request/reply) and for tests.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use crate::render::Kind;

/// The most notifications one [`list`] returns, whatever it is asked for (the gateway
/// refuses a larger `limit` with a 4xx).
pub const MAX_LIMIT: u32 = 1000;

/// A notification as `GET /v1/notifications` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationView {
    pub notification_id: Uuid,
    pub customer_id: String,
    pub kind: Kind,
    pub message: String,
    pub created_at: DateTime<Utc>,
    /// When a channel accepted it; `None` while it waits or retries.
    pub delivered_at: Option<DateTime<Utc>>,
}

/// A customer's notifications, newest first, at most `limit` (capped at [`MAX_LIMIT`]).
pub async fn list(
    pool: &PgPool,
    customer_id: &str,
    limit: u32,
) -> Result<Vec<NotificationView>, sqlx::Error> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT notification_id, customer_id, kind, message, created_at, delivered_at \
         FROM notifications.notifications WHERE customer_id = $1 \
         ORDER BY created_at DESC, notification_id DESC LIMIT $2",
    )
    .bind(customer_id)
    .bind(i64::from(limit.min(MAX_LIMIT)))
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|row| {
            Ok(NotificationView {
                notification_id: row.notification_id,
                customer_id: row.customer_id,
                kind: row
                    .kind
                    .parse()
                    .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
                message: row.message,
                created_at: row.created_at,
                delivered_at: row.delivered_at,
            })
        })
        .collect()
}

#[derive(sqlx::FromRow)]
struct Row {
    notification_id: Uuid,
    customer_id: String,
    kind: String,
    message: String,
    created_at: DateTime<Utc>,
    delivered_at: Option<DateTime<Utc>>,
}

/// Answers `notification.queries`: `list_notifications`, newest first.
pub fn answering(pool: PgPool) -> impl bus::rpc::QueryHandler {
    bus::rpc::OneMethod::new(
        "list_notifications",
        pool,
        |pool: PgPool, Params { customer_id, limit }| async move {
            let found = list(&pool, &customer_id, limit.unwrap_or(50)).await;
            let found = found.map_err(|e| bus::rpc::QueryError::internal(e.to_string()))?;
            bus::rpc::QueryError::answer(found)
        },
    )
}

#[derive(serde::Deserialize)]
struct Params {
    customer_id: String,
    limit: Option<u32>,
}
