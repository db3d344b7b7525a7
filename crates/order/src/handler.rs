//! The order service's handler: `order.cmd.create`, `order.cmd.confirm`, `order.cmd.cancel`.
//!
//! Each command locks its order row (or, for a row that does not exist yet, races to insert
//! it with `ON CONFLICT DO NOTHING`, which waits for a concurrent insert of the same order and
//! then reads what it committed), so concurrent re-sends of one command answer alike.
//!
//! A group commit applies its commands through `super::group` in a few set-based statements.

use bus::HandlerError;
use contracts::messages::{
    LineItem, OrderCancel, OrderCancelled, OrderConfirm, OrderConfirmed, OrderCreate, OrderCreated,
    OrderRejected,
};
use contracts::{Envelope, Message};
use host::handling::{corrupt, db, decode, unhandled};
use sqlx::PgConnection;
use sqlx::types::Json;
use store::TxHandler;
use tracing::info;
use uuid::Uuid;

use crate::domain::{self, CancelOutcome, ConfirmOutcome, CreateOutcome, Existing, OrderStatus};
use crate::{PRODUCER, group};

/// Applies order commands to `orders.orders`.
#[derive(Debug, Clone, Copy, Default)]
pub struct OrderHandler;

impl TxHandler for OrderHandler {
    async fn apply(
        &self,
        tx: &mut PgConnection,
        message: &Envelope,
    ) -> Result<Vec<Envelope>, HandlerError> {
        match message.message_type.as_str() {
            OrderCreate::TYPE => create(tx, message, decode(message)?).await,
            OrderConfirm::TYPE => confirm(tx, message, decode(message)?).await,
            OrderCancel::TYPE => cancel(tx, message, decode(message)?).await,
            _ => Err(unhandled("the order service", message)),
        }
    }

    async fn apply_all(
        &self,
        tx: &mut PgConnection,
        messages: &[&Envelope],
    ) -> Result<Vec<Envelope>, HandlerError> {
        group::apply(tx, messages).await
    }
}

/// An order row as the handler needs it.
#[derive(Debug, sqlx::FromRow)]
struct Row {
    customer_id: Option<String>,
    status: String,
    total_cents: Option<i64>,
    items: Json<Vec<LineItem>>,
    cancel_reason: Option<String>,
}

impl Row {
    fn status(&self) -> Result<OrderStatus, HandlerError> {
        self.status.parse().map_err(corrupt)
    }

    fn existing(&self) -> Result<Existing<'_>, HandlerError> {
        Ok(Existing {
            status: self.status()?,
            customer_id: self.customer_id.as_deref(),
        })
    }

    /// The customer of an order that is not a tombstone.
    fn customer(&self, order_id: Uuid) -> Result<String, HandlerError> {
        self.customer_id.clone().ok_or_else(|| {
            corrupt(format!(
                "order {order_id} is {} without a customer",
                self.status
            ))
        })
    }
}

async fn lock(tx: &mut PgConnection, order_id: Uuid) -> Result<Option<Row>, HandlerError> {
    sqlx::query_as(
        "SELECT customer_id, status, total_cents, items, cancel_reason \
         FROM orders.orders WHERE order_id = $1 FOR UPDATE",
    )
    .bind(order_id)
    .fetch_optional(tx)
    .await
    .map_err(db)
}

/// Commands for an order that has no row yet insert one with `ON CONFLICT DO NOTHING`, which
/// waits for a concurrent insert of the same order; when that one commits, the next round
/// locks its row and answers from it. Rows are never deleted, so two rounds always suffice.
const ROUNDS: usize = 2;

pub(super) fn raced(order_id: Uuid) -> HandlerError {
    HandlerError::Transient(format!(
        "order {order_id} changed under a concurrent insert"
    ))
}

async fn create(
    tx: &mut PgConnection,
    message: &Envelope,
    command: OrderCreate,
) -> Result<Vec<Envelope>, HandlerError> {
    let order_id = command.order_id;
    for _ in 0..ROUNDS {
        let row = lock(tx, order_id).await?;
        let existing = row.as_ref().map(Row::existing).transpose()?;
        match (
            domain::decide_create(existing, &command.customer_id, &command.items),
            row,
        ) {
            (CreateOutcome::Insert, _) => {
                let inserted = sqlx::query(
                    "INSERT INTO orders.orders (order_id, customer_id, status, items) \
                     VALUES ($1, $2, 'pending', $3) ON CONFLICT (order_id) DO NOTHING",
                )
                .bind(order_id)
                .bind(&command.customer_id)
                .bind(Json(&command.items))
                .execute(&mut *tx)
                .await
                .map_err(db)?
                .rows_affected()
                    == 1;
                if inserted {
                    let created = OrderCreated {
                        order_id,
                        customer_id: command.customer_id,
                        items: command.items,
                    };
                    return Ok(vec![reply(&created, message)]);
                }
            }
            (CreateOutcome::AlreadyCreated, Some(row)) => {
                let created = OrderCreated {
                    order_id,
                    customer_id: row.customer(order_id)?,
                    items: row.items.0,
                };
                return Ok(vec![reply(&created, message)]);
            }
            (CreateOutcome::AlreadyCreated, None) => {
                return Err(corrupt("an order that does not exist was created"));
            }
            (CreateOutcome::Reject(reason), _) => {
                info!(%order_id, %reason, "order rejected");
                return Ok(vec![reply(&OrderRejected { order_id, reason }, message)]);
            }
        }
    }
    Err(raced(order_id))
}

async fn confirm(
    tx: &mut PgConnection,
    message: &Envelope,
    command: OrderConfirm,
) -> Result<Vec<Envelope>, HandlerError> {
    let order_id = command.order_id;
    let row = lock(tx, order_id).await?;
    let status = row.as_ref().map(Row::status).transpose()?;
    let (outcome, Some(row)) = (domain::decide_confirm(status), row) else {
        return Err(HandlerError::Permanent(format!(
            "order {order_id}: cannot confirm an order that does not exist"
        )));
    };
    let total_cents = match outcome {
        ConfirmOutcome::Confirm => {
            sqlx::query(
                "UPDATE orders.orders SET status = 'confirmed', total_cents = $2, \
                 updated_at = now() WHERE order_id = $1",
            )
            .bind(order_id)
            .bind(command.total_cents)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
            command.total_cents
        }
        ConfirmOutcome::AlreadyConfirmed => row
            .total_cents
            .ok_or_else(|| corrupt(format!("confirmed order {order_id} has no total")))?,
        ConfirmOutcome::Refuse(reason) => {
            return Err(HandlerError::Permanent(format!(
                "order {order_id}: {reason}"
            )));
        }
    };
    let confirmed = OrderConfirmed {
        order_id,
        customer_id: row.customer(order_id)?,
        total_cents,
    };
    Ok(vec![reply(&confirmed, message)])
}

async fn cancel(
    tx: &mut PgConnection,
    message: &Envelope,
    command: OrderCancel,
) -> Result<Vec<Envelope>, HandlerError> {
    let order_id = command.order_id;
    for _ in 0..ROUNDS {
        let row = lock(tx, order_id).await?;
        let status = row.as_ref().map(Row::status).transpose()?;
        let cancelled = match (domain::decide_cancel(status), row) {
            (CancelOutcome::Tombstone, _) => {
                let inserted = sqlx::query(
                    "INSERT INTO orders.orders (order_id, status, cancel_reason) \
                     VALUES ($1, 'cancelled', $2) ON CONFLICT (order_id) DO NOTHING",
                )
                .bind(order_id)
                .bind(&command.reason)
                .execute(&mut *tx)
                .await
                .map_err(db)?
                .rows_affected()
                    == 1;
                if !inserted {
                    continue;
                }
                info!(%order_id, "order cancelled before it was created; tombstone left");
                OrderCancelled {
                    order_id,
                    customer_id: None,
                    reason: command.reason,
                }
            }
            (CancelOutcome::Cancel, Some(row)) => {
                sqlx::query(
                    "UPDATE orders.orders SET status = 'cancelled', cancel_reason = $2, \
                     updated_at = now() WHERE order_id = $1",
                )
                .bind(order_id)
                .bind(&command.reason)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
                OrderCancelled {
                    order_id,
                    customer_id: row.customer_id,
                    reason: command.reason,
                }
            }
            // Answered as it was cancelled the first time.
            (CancelOutcome::AlreadyCancelled, Some(row)) => OrderCancelled {
                order_id,
                customer_id: row.customer_id,
                reason: row.cancel_reason.unwrap_or(command.reason),
            },
            (CancelOutcome::Refuse(reason), _) => {
                return Err(HandlerError::Permanent(format!(
                    "order {order_id}: {reason}"
                )));
            }
            (CancelOutcome::Cancel | CancelOutcome::AlreadyCancelled, None) => {
                return Err(corrupt("an order that does not exist was cancelled"));
            }
        };
        return Ok(vec![reply(&cancelled, message)]);
    }
    Err(raced(order_id))
}

pub(super) fn reply<M: Message>(reply: &M, cause: &Envelope) -> Envelope {
    Envelope::caused_by(PRODUCER, reply, cause)
}
