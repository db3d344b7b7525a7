//! Reads of the payment service, for the gateway (over request/reply) and for tests.

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::ChargeStatus;

/// An account as `GET /v1/accounts/{customer_id}` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct AccountView {
    pub customer_id: String,
    pub balance_cents: i64,
}

pub async fn get_account(
    pool: &PgPool,
    customer_id: &str,
) -> Result<Option<AccountView>, sqlx::Error> {
    sqlx::query_as(
        "SELECT customer_id, balance_cents FROM payments.accounts WHERE customer_id = $1",
    )
    .bind(customer_id)
    .fetch_optional(pool)
    .await
}

/// Money over every account. Conservation: `balance_cents + charged_cents` equals the
/// balances as last set; `refunded_cents` is what went back to customers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct MoneyTotals {
    /// Sum of every balance.
    pub balance_cents: i64,
    /// Sum of the charges standing (status `charged`).
    pub charged_cents: i64,
    /// Sum of the charges paid back (status `refunded`).
    pub refunded_cents: i64,
}

pub async fn money_totals(pool: &PgPool) -> Result<MoneyTotals, sqlx::Error> {
    sqlx::query_as(
        "SELECT (SELECT COALESCE(SUM(balance_cents), 0) FROM payments.accounts)::bigint \
                    AS balance_cents, \
                COALESCE(SUM(amount_cents) FILTER (WHERE status = 'charged'), 0)::bigint \
                    AS charged_cents, \
                COALESCE(SUM(amount_cents) FILTER (WHERE status = 'refunded'), 0)::bigint \
                    AS refunded_cents \
         FROM payments.charges",
    )
    .fetch_one(pool)
    .await
}

/// What payments holds about one order's charge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChargeView {
    pub order_id: Uuid,
    /// `None` on a tombstone (a refund that came before any charge).
    pub customer_id: Option<String>,
    pub amount_cents: i64,
    pub status: ChargeStatus,
    pub reason: Option<String>,
}

/// The charge rows of an order: at most one, since the order id is the primary key. A list,
/// so a check that a confirmed order has exactly one charge reads as such.
pub async fn charges_for(pool: &PgPool, order_id: Uuid) -> Result<Vec<ChargeView>, sqlx::Error> {
    let rows: Vec<(Option<String>, i64, String, Option<String>)> = sqlx::query_as(
        "SELECT customer_id, amount_cents, status, reason FROM payments.charges \
         WHERE order_id = $1",
    )
    .bind(order_id)
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|(customer_id, amount_cents, status, reason)| {
            Ok(ChargeView {
                order_id,
                customer_id,
                amount_cents,
                status: status
                    .parse()
                    .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
                reason,
            })
        })
        .collect()
}

/// Answers `payment.queries`: `get_account`.
pub fn answering(pool: PgPool) -> impl bus::rpc::QueryHandler {
    bus::rpc::OneMethod::new(
        "get_account",
        pool,
        |pool: PgPool, Params { customer_id }| async move {
            bus::rpc::QueryError::found(get_account(&pool, &customer_id).await, || {
                format!("account {customer_id}")
            })
        },
    )
}

#[derive(serde::Deserialize)]
struct Params {
    customer_id: String,
}
