//! The order commands of a group commit in at most three statements, whatever the size of the
//! group: lock every order the group names (in order-id order), decide every message in order
//! in memory with [`domain`], then insert the new orders and update the stored ones.
//!
//! New orders are inserted in order-id order (so two groups never wait on each other's inserts
//! in opposite orders) with `ON CONFLICT DO NOTHING`; an order another transaction stored after
//! the lock found none fails the group with a transient error, and each message then runs
//! alone, where the per-message path locks the stored row and answers from it.

use std::collections::BTreeMap;

use bus::HandlerError;
use contracts::messages::{
    LineItem, OrderCancel, OrderCancelled, OrderConfirm, OrderConfirmed, OrderCreate, OrderCreated,
    OrderRejected,
};
use contracts::{Envelope, Message};
use host::handling::{all_inserted, corrupt, db, decode, unhandled};
use sqlx::PgConnection;
use sqlx::types::Json;
use tracing::info;
use uuid::Uuid;

use crate::domain::{self, CancelOutcome, ConfirmOutcome, CreateOutcome, Existing, OrderStatus};
use crate::handler::{raced, reply};

/// Applies order commands in order, as the per-message path would; any other message type
/// fails the group (as it fails alone).
pub(super) async fn apply(
    tx: &mut PgConnection,
    messages: &[&Envelope],
) -> Result<Vec<Envelope>, HandlerError> {
    if messages.is_empty() {
        return Ok(Vec::new());
    }
    let commands = messages
        .iter()
        .map(|m| Command::decode(m))
        .collect::<Result<Vec<_>, _>>()?;
    let mut book = Book::load(tx, &commands).await?;
    let mut caused = Vec::with_capacity(messages.len());
    for (command, message) in commands.into_iter().zip(messages) {
        caused.push(match command {
            Command::Create(command) => book.create(command, message)?,
            Command::Confirm(command) => book.confirm(command, message)?,
            Command::Cancel(command) => book.cancel(command, message)?,
        });
    }
    book.write(tx).await?;
    Ok(caused)
}

#[derive(Debug)]
enum Command {
    Create(OrderCreate),
    Confirm(OrderConfirm),
    Cancel(OrderCancel),
}

impl Command {
    fn decode(message: &Envelope) -> Result<Self, HandlerError> {
        Ok(match message.message_type.as_str() {
            OrderCreate::TYPE => Self::Create(decode(message)?),
            OrderConfirm::TYPE => Self::Confirm(decode(message)?),
            OrderCancel::TYPE => Self::Cancel(decode(message)?),
            _ => return Err(unhandled("the order service", message)),
        })
    }

    fn order_id(&self) -> Uuid {
        match self {
            Self::Create(c) => c.order_id,
            Self::Confirm(c) => c.order_id,
            Self::Cancel(c) => c.order_id,
        }
    }
}

/// An order as the group has left it so far.
#[derive(Debug)]
struct Order {
    customer_id: Option<String>,
    status: OrderStatus,
    total_cents: Option<i64>,
    items: Vec<LineItem>,
    cancel_reason: Option<String>,
    /// Read from the table rather than made by this group.
    stored: bool,
    changed: bool,
}

impl Order {
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

#[derive(Debug, sqlx::FromRow)]
struct Row {
    order_id: Uuid,
    customer_id: Option<String>,
    status: String,
    total_cents: Option<i64>,
    items: Json<Vec<LineItem>>,
    cancel_reason: Option<String>,
}

/// The orders the group names, kept in memory until [`Book::write`].
#[derive(Debug)]
struct Book {
    orders: BTreeMap<Uuid, Order>,
}

impl Book {
    async fn load(tx: &mut PgConnection, commands: &[Command]) -> Result<Self, HandlerError> {
        let mut ids: Vec<Uuid> = commands.iter().map(Command::order_id).collect();
        ids.sort_unstable();
        ids.dedup();
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT order_id, customer_id, status, total_cents, items, cancel_reason \
             FROM orders.orders WHERE order_id = ANY($1) ORDER BY order_id FOR UPDATE",
        )
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        let orders = rows
            .into_iter()
            .map(|row| {
                let order = Order {
                    customer_id: row.customer_id,
                    status: row.status.parse().map_err(corrupt)?,
                    total_cents: row.total_cents,
                    items: row.items.0,
                    cancel_reason: row.cancel_reason,
                    stored: true,
                    changed: false,
                };
                Ok((row.order_id, order))
            })
            .collect::<Result<_, HandlerError>>()?;
        Ok(Self { orders })
    }

    fn create(
        &mut self,
        command: OrderCreate,
        message: &Envelope,
    ) -> Result<Envelope, HandlerError> {
        let order_id = command.order_id;
        let existing = self.orders.get(&order_id).map(|o| Existing {
            status: o.status,
            customer_id: o.customer_id.as_deref(),
        });
        let created = match domain::decide_create(existing, &command.customer_id, &command.items) {
            CreateOutcome::Insert => {
                let new = Order {
                    customer_id: Some(command.customer_id.clone()),
                    status: OrderStatus::Pending,
                    total_cents: None,
                    items: command.items.clone(),
                    cancel_reason: None,
                    stored: false,
                    changed: true,
                };
                self.orders.insert(order_id, new);
                OrderCreated {
                    order_id,
                    customer_id: command.customer_id,
                    items: command.items,
                }
            }
            CreateOutcome::AlreadyCreated => {
                let order = self
                    .orders
                    .get(&order_id)
                    .ok_or_else(|| corrupt("an order that does not exist was created"))?;
                OrderCreated {
                    order_id,
                    customer_id: order.customer(order_id)?,
                    items: order.items.clone(),
                }
            }
            CreateOutcome::Reject(reason) => {
                info!(%order_id, %reason, "order rejected");
                return Ok(reply(&OrderRejected { order_id, reason }, message));
            }
        };
        Ok(reply(&created, message))
    }

    fn confirm(
        &mut self,
        command: OrderConfirm,
        message: &Envelope,
    ) -> Result<Envelope, HandlerError> {
        let order_id = command.order_id;
        let order = self.orders.get_mut(&order_id);
        let outcome = domain::decide_confirm(order.as_ref().map(|o| o.status));
        let (Some(order), outcome) = (order, outcome) else {
            return Err(HandlerError::Permanent(format!(
                "order {order_id}: cannot confirm an order that does not exist"
            )));
        };
        let total_cents = match outcome {
            ConfirmOutcome::Confirm => {
                order.status = OrderStatus::Confirmed;
                order.total_cents = Some(command.total_cents);
                order.changed = true;
                command.total_cents
            }
            ConfirmOutcome::AlreadyConfirmed => order
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
            customer_id: order.customer(order_id)?,
            total_cents,
        };
        Ok(reply(&confirmed, message))
    }

    fn cancel(
        &mut self,
        command: OrderCancel,
        message: &Envelope,
    ) -> Result<Envelope, HandlerError> {
        let order_id = command.order_id;
        let order = self.orders.get_mut(&order_id);
        let outcome = domain::decide_cancel(order.as_ref().map(|o| o.status));
        let cancelled = match (outcome, order) {
            (CancelOutcome::Tombstone, _) => {
                let tombstone = Order {
                    customer_id: None,
                    status: OrderStatus::Cancelled,
                    total_cents: None,
                    items: Vec::new(),
                    cancel_reason: Some(command.reason.clone()),
                    stored: false,
                    changed: true,
                };
                self.orders.insert(order_id, tombstone);
                info!(%order_id, "order cancelled before it was created; tombstone left");
                OrderCancelled {
                    order_id,
                    customer_id: None,
                    reason: command.reason,
                }
            }
            (CancelOutcome::Cancel, Some(order)) => {
                order.status = OrderStatus::Cancelled;
                order.cancel_reason = Some(command.reason.clone());
                order.changed = true;
                OrderCancelled {
                    order_id,
                    customer_id: order.customer_id.clone(),
                    reason: command.reason,
                }
            }
            // Answered as it was cancelled the first time.
            (CancelOutcome::AlreadyCancelled, Some(order)) => OrderCancelled {
                order_id,
                customer_id: order.customer_id.clone(),
                reason: order.cancel_reason.clone().unwrap_or(command.reason),
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
        Ok(reply(&cancelled, message))
    }

    /// One insert of the new orders, one update of the stored ones.
    async fn write(self, tx: &mut PgConnection) -> Result<(), HandlerError> {
        let (new, stored): (Vec<_>, Vec<_>) = self
            .orders
            .iter()
            .filter(|(_, o)| o.changed)
            .partition(|(_, o)| !o.stored);
        if !new.is_empty() {
            let ids: Vec<Uuid> = new.iter().map(|(id, _)| **id).collect();
            let inserted: Vec<Uuid> = sqlx::query_scalar(
                "INSERT INTO orders.orders \
                 (order_id, customer_id, status, total_cents, items, cancel_reason) \
                 SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::bigint[], \
                                      $5::jsonb[], $6::text[]) \
                 ON CONFLICT (order_id) DO NOTHING RETURNING order_id",
            )
            .bind(&ids)
            .bind(
                new.iter()
                    .map(|(_, o)| o.customer_id.as_deref())
                    .collect::<Vec<_>>(),
            )
            .bind(
                new.iter()
                    .map(|(_, o)| o.status.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(new.iter().map(|(_, o)| o.total_cents).collect::<Vec<_>>())
            .bind(new.iter().map(|(_, o)| Json(&o.items)).collect::<Vec<_>>())
            .bind(
                new.iter()
                    .map(|(_, o)| o.cancel_reason.as_deref())
                    .collect::<Vec<_>>(),
            )
            .fetch_all(&mut *tx)
            .await
            .map_err(db)?;
            all_inserted(ids, inserted, raced)?;
        }
        if !stored.is_empty() {
            sqlx::query(
                "UPDATE orders.orders AS o SET status = u.status, total_cents = u.total_cents, \
                 cancel_reason = u.cancel_reason, updated_at = now() \
                 FROM UNNEST($1::uuid[], $2::text[], $3::bigint[], $4::text[]) \
                      AS u(order_id, status, total_cents, cancel_reason) \
                 WHERE o.order_id = u.order_id",
            )
            .bind(stored.iter().map(|(id, _)| **id).collect::<Vec<_>>())
            .bind(
                stored
                    .iter()
                    .map(|(_, o)| o.status.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                stored
                    .iter()
                    .map(|(_, o)| o.total_cents)
                    .collect::<Vec<_>>(),
            )
            .bind(
                stored
                    .iter()
                    .map(|(_, o)| o.cancel_reason.as_deref())
                    .collect::<Vec<_>>(),
            )
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        }
        Ok(())
    }
}
