//! Reads of the inventory service, for the gateway (over request/reply) and for tests.

use contracts::messages::PricedLine;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use sqlx::types::Json;
use uuid::Uuid;

use crate::domain::ReservationStatus;

/// A product as `GET /v1/products/{sku}` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct ProductView {
    pub sku: String,
    pub name: String,
    pub price_cents: i64,
    pub available: i64,
    pub reserved: i64,
}

pub async fn get_product(pool: &PgPool, sku: &str) -> Result<Option<ProductView>, sqlx::Error> {
    sqlx::query_as(
        "SELECT sku, name, price_cents, available, reserved FROM inventory.products \
         WHERE sku = $1",
    )
    .bind(sku)
    .fetch_optional(pool)
    .await
}

/// Units over every product. Conservation: `available + reserved + sold` equals the stock
/// the products were last set to, and no part is ever negative.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct StockTotals {
    pub available: i64,
    pub reserved: i64,
    pub sold: i64,
}

pub async fn stock_totals(pool: &PgPool) -> Result<StockTotals, sqlx::Error> {
    sqlx::query_as(
        "SELECT COALESCE(SUM(available), 0)::bigint AS available, \
                COALESCE(SUM(reserved), 0)::bigint AS reserved, \
                COALESCE(SUM(sold), 0)::bigint AS sold \
         FROM inventory.products",
    )
    .fetch_one(pool)
    .await
}

/// What inventory decided for one order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationView {
    pub order_id: Uuid,
    pub status: ReservationStatus,
    pub lines: Vec<PricedLine>,
    pub total_cents: i64,
    pub reason: Option<String>,
}

pub async fn get_reservation(
    pool: &PgPool,
    order_id: Uuid,
) -> Result<Option<ReservationView>, sqlx::Error> {
    let row: Option<Row> = sqlx::query_as(
        "SELECT status, lines, total_cents, reason FROM inventory.reservations \
         WHERE order_id = $1",
    )
    .bind(order_id)
    .fetch_optional(pool)
    .await?;
    row.map(|row| {
        Ok(ReservationView {
            order_id,
            status: row
                .status
                .parse()
                .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
            lines: row.lines.0,
            total_cents: row.total_cents,
            reason: row.reason,
        })
    })
    .transpose()
}

#[derive(sqlx::FromRow)]
struct Row {
    status: String,
    lines: Json<Vec<PricedLine>>,
    total_cents: i64,
    reason: Option<String>,
}

/// Answers `inventory.queries`: `get_product`.
pub fn answering(pool: PgPool) -> impl bus::rpc::QueryHandler {
    bus::rpc::OneMethod::new(
        "get_product",
        pool,
        |pool: PgPool, Params { sku }| async move {
            bus::rpc::QueryError::found(get_product(&pool, &sku).await, || format!("product {sku}"))
        },
    )
}

#[derive(serde::Deserialize)]
struct Params {
    sku: String,
}
