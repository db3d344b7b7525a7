//! Reads of the order service, for the gateway (over request/reply) and for tests.

use contracts::messages::LineItem;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use sqlx::types::Json;
use uuid::Uuid;

use crate::domain::OrderStatus;

/// An order as `GET /v1/orders/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderView {
    pub order_id: Uuid,
    pub customer_id: String,
    pub status: OrderStatus,
    /// Set once the order is confirmed at the total inventory priced.
    pub total_cents: Option<i64>,
    pub items: Vec<LineItem>,
}

/// The order, or `None` when it was never created. A cancel that arrived before any create
/// leaves a tombstone row, which is not an order and reads as `None` too.
pub async fn get_order(pool: &PgPool, order_id: Uuid) -> Result<Option<OrderView>, sqlx::Error> {
    let row: Option<Row> = sqlx::query_as(
        "SELECT customer_id, status, total_cents, items FROM orders.orders \
         WHERE order_id = $1 AND customer_id IS NOT NULL",
    )
    .bind(order_id)
    .fetch_optional(pool)
    .await?;
    row.map(|row| {
        Ok(OrderView {
            order_id,
            customer_id: row.customer_id,
            status: row
                .status
                .parse()
                .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
            total_cents: row.total_cents,
            items: row.items.0,
        })
    })
    .transpose()
}

#[derive(sqlx::FromRow)]
struct Row {
    customer_id: String,
    status: String,
    total_cents: Option<i64>,
    items: Json<Vec<LineItem>>,
}

/// Answers `order.queries`: `get_order`.
pub fn answering(pool: PgPool) -> impl bus::rpc::QueryHandler {
    bus::rpc::OneMethod::new(
        "get_order",
        pool,
        |pool: PgPool, Params { order_id }| async move {
            bus::rpc::QueryError::found(get_order(&pool, order_id).await, || {
                format!("order {order_id}")
            })
        },
    )
}

#[derive(serde::Deserialize)]
struct Params {
    order_id: Uuid,
}
