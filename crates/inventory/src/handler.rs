//! The inventory service's handler: `inventory.cmd.upsert_product`, `inventory.cmd.reserve`,
//! `inventory.cmd.release`, and the event `order.evt.confirmed`.
//!
//! Release and sale lock the reservation, then its products in SKU order. A reserve locks only
//! products (in SKU order) and then inserts the reservation with `ON CONFLICT DO NOTHING`,
//! which waits for a concurrent insert for the same order; when that one commits, the next
//! round answers from what it stored. A reserve only reads existing reservations, never locks
//! them: it may already hold product locks that a release holding the reservation waits for.
//!
//! A group commit applies its reserves, releases and sales through `super::group` in a few
//! set-based statements; product upserts run one at a time between them.

use bus::HandlerError;
use contracts::messages::{
    InventoryRelease, InventoryReleased, InventoryReservationFailed, InventoryReserve,
    InventoryReserved, OrderConfirmed, PricedLine, ProductUpsert, ProductUpserted,
};
use contracts::{Envelope, Message};
use host::handling::{Lock, corrupt, db, decode, runs, unhandled};
use sqlx::PgConnection;
use sqlx::types::Json;
use store::TxHandler;
use tracing::info;
use uuid::Uuid;

use crate::domain::{
    self, Product, ReleaseOutcome, ReservationStatus, ReserveAgain, ReserveOutcome, Stock,
    StockChange, StockMove,
};
use crate::{PRODUCER, group};

/// Applies inventory commands (and order confirmations) to the `inventory` tables.
#[derive(Debug, Clone, Copy, Default)]
pub struct InventoryHandler;

impl TxHandler for InventoryHandler {
    async fn apply(
        &self,
        tx: &mut PgConnection,
        message: &Envelope,
    ) -> Result<Vec<Envelope>, HandlerError> {
        match message.message_type.as_str() {
            ProductUpsert::TYPE => upsert_product(tx, message, decode(message)?).await,
            InventoryReserve::TYPE => reserve(tx, message, decode(message)?).await,
            InventoryRelease::TYPE => release(tx, message, decode(message)?).await,
            OrderConfirmed::TYPE => sell(tx, decode(message)?).await,
            _ => Err(unhandled("the inventory service", message)),
        }
    }

    async fn apply_all(
        &self,
        tx: &mut PgConnection,
        messages: &[&Envelope],
    ) -> Result<Vec<Envelope>, HandlerError> {
        // Product upserts run alone between the runs the group path takes; each run reads the
        // rows only after the ones before it wrote theirs, so it decides on what they left.
        let mut caused = Vec::with_capacity(messages.len());
        for (set_based, run) in runs(messages, group::covers) {
            if set_based {
                caused.extend(group::apply(tx, run).await?);
            } else {
                for message in run {
                    caused.extend(self.apply(tx, message).await?);
                }
            }
        }
        Ok(caused)
    }
}

/// Rows are never deleted, so after one lost insert race the second round finds the row.
const ROUNDS: usize = 2;

pub(super) fn raced(order_id: Uuid) -> HandlerError {
    HandlerError::Transient(format!(
        "reservation {order_id} changed under a concurrent insert"
    ))
}

async fn upsert_product(
    tx: &mut PgConnection,
    message: &Envelope,
    command: ProductUpsert,
) -> Result<Vec<Envelope>, HandlerError> {
    sqlx::query(
        "INSERT INTO inventory.products (sku, name, price_cents, available, stocked) \
         VALUES ($1, $2, $3, $4, $4) \
         ON CONFLICT (sku) DO UPDATE SET name = EXCLUDED.name, \
         price_cents = EXCLUDED.price_cents, available = EXCLUDED.available, \
         stocked = EXCLUDED.available + products.reserved + products.sold, updated_at = now()",
    )
    .bind(&command.sku)
    .bind(&command.name)
    .bind(command.price_cents)
    .bind(command.available)
    .execute(tx)
    .await
    .map_err(db)?;
    let upserted = ProductUpserted {
        sku: command.sku,
        name: command.name,
        price_cents: command.price_cents,
        available: command.available,
    };
    Ok(vec![reply(&upserted, message)])
}

#[derive(Debug, sqlx::FromRow)]
struct Reservation {
    status: String,
    lines: Json<Vec<PricedLine>>,
    total_cents: i64,
    reason: Option<String>,
}

impl Reservation {
    fn status(&self) -> Result<ReservationStatus, HandlerError> {
        self.status.parse().map_err(corrupt)
    }
}

/// The row of an order, locked or not (see [`Lock`]).
async fn fetch_reservation(
    tx: &mut PgConnection,
    order_id: Uuid,
    lock: Lock,
) -> Result<Option<Reservation>, HandlerError> {
    macro_rules! select {
        () => {
            "SELECT status, lines, total_cents, reason FROM inventory.reservations WHERE order_id = $1"
        };
    }
    let sql = match lock {
        Lock::Row => concat!(select!(), " FOR UPDATE"),
        Lock::None => select!(),
    };
    sqlx::query_as(sql)
        .bind(order_id)
        .fetch_optional(tx)
        .await
        .map_err(db)
}

/// Inserts a reservation unless one exists; `false` when another transaction stored one first.
async fn insert_reservation(
    tx: &mut PgConnection,
    order_id: Uuid,
    status: ReservationStatus,
    lines: &[PricedLine],
    total_cents: i64,
    reason: Option<&str>,
) -> Result<bool, HandlerError> {
    let inserted = sqlx::query(
        "INSERT INTO inventory.reservations (order_id, status, lines, total_cents, reason) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(order_id)
    .bind(status.as_str())
    .bind(Json(lines))
    .bind(total_cents)
    .bind(reason)
    .execute(tx)
    .await
    .map_err(db)?;
    Ok(inserted.rows_affected() == 1)
}

async fn set_status(
    tx: &mut PgConnection,
    order_id: Uuid,
    status: ReservationStatus,
) -> Result<(), HandlerError> {
    sqlx::query(
        "UPDATE inventory.reservations SET status = $2, updated_at = now() WHERE order_id = $1",
    )
    .bind(order_id)
    .bind(status.as_str())
    .execute(tx)
    .await
    .map_err(db)?;
    Ok(())
}

/// Locks the products in SKU order (the one order every transaction uses).
pub(super) async fn lock_products(
    tx: &mut PgConnection,
    skus: impl IntoIterator<Item = &str>,
) -> Result<Vec<Product>, HandlerError> {
    let mut skus: Vec<&str> = skus.into_iter().collect();
    skus.sort_unstable();
    skus.dedup();
    let rows: Vec<(String, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT sku, price_cents, available, reserved, sold FROM inventory.products \
         WHERE sku = ANY($1) ORDER BY sku FOR UPDATE",
    )
    .bind(&skus)
    .fetch_all(tx)
    .await
    .map_err(db)?;
    Ok(rows
        .into_iter()
        .map(|(sku, price_cents, available, reserved, sold)| Product {
            sku,
            price_cents,
            stock: Stock {
                available,
                reserved,
                sold,
            },
        })
        .collect())
}

pub(super) async fn write_stock(
    tx: &mut PgConnection,
    changes: &[StockChange],
) -> Result<(), HandlerError> {
    let skus: Vec<&str> = changes.iter().map(|c| c.sku.as_str()).collect();
    let part = |f: fn(&Stock) -> i64| changes.iter().map(|c| f(&c.stock)).collect::<Vec<i64>>();
    sqlx::query(
        "UPDATE inventory.products AS p \
         SET available = c.available, reserved = c.reserved, sold = c.sold, updated_at = now() \
         FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::bigint[]) \
              AS c(sku, available, reserved, sold) \
         WHERE p.sku = c.sku",
    )
    .bind(&skus)
    .bind(part(|s| s.available))
    .bind(part(|s| s.reserved))
    .bind(part(|s| s.sold))
    .execute(tx)
    .await
    .map_err(db)?;
    Ok(())
}

/// Moves the held lines of a reservation (locking their products) and writes the new stock.
async fn move_held(
    tx: &mut PgConnection,
    order_id: Uuid,
    lines: &[PricedLine],
    movement: StockMove,
) -> Result<(), HandlerError> {
    let products = lock_products(&mut *tx, lines.iter().map(|l| l.sku.as_str())).await?;
    let changes = domain::move_lines(&products, domain::held(lines), movement)
        .map_err(|e| corrupt(format!("reservation {order_id}: {e}")))?;
    write_stock(tx, &changes).await
}

async fn reserve(
    tx: &mut PgConnection,
    message: &Envelope,
    command: InventoryReserve,
) -> Result<Vec<Envelope>, HandlerError> {
    let order_id = command.order_id;
    for _ in 0..ROUNDS {
        if let Some(existing) = fetch_reservation(tx, order_id, Lock::None).await? {
            let again = domain::reserve_again(existing.status()?, existing.reason.as_deref());
            return Ok(vec![match again {
                ReserveAgain::Reserved => reply(
                    &InventoryReserved {
                        order_id,
                        lines: existing.lines.0,
                        total_cents: existing.total_cents,
                    },
                    message,
                ),
                ReserveAgain::Failed(reason) => failed(order_id, reason, message),
            }]);
        }
        let products =
            lock_products(&mut *tx, command.items.iter().map(|l| l.sku.as_str())).await?;
        match domain::decide_reservation(&command.items, &products) {
            ReserveOutcome::Reserve {
                lines,
                total_cents,
                changes,
            } => {
                let status = ReservationStatus::Reserved;
                if insert_reservation(tx, order_id, status, &lines, total_cents, None).await? {
                    write_stock(tx, &changes).await?;
                    let reserved = InventoryReserved {
                        order_id,
                        lines,
                        total_cents,
                    };
                    return Ok(vec![reply(&reserved, message)]);
                }
            }
            ReserveOutcome::Fail { reason } => {
                let status = ReservationStatus::Failed;
                if insert_reservation(tx, order_id, status, &[], 0, Some(&reason)).await? {
                    return Ok(vec![failed(order_id, reason, message)]);
                }
            }
        }
    }
    Err(raced(order_id))
}

pub(super) fn failed(order_id: Uuid, reason: String, message: &Envelope) -> Envelope {
    info!(%order_id, %reason, "reservation failed");
    reply(&InventoryReservationFailed { order_id, reason }, message)
}

async fn release(
    tx: &mut PgConnection,
    message: &Envelope,
    command: InventoryRelease,
) -> Result<Vec<Envelope>, HandlerError> {
    let order_id = command.order_id;
    let released = || Ok(vec![reply(&InventoryReleased { order_id }, message)]);
    for _ in 0..ROUNDS {
        let existing = fetch_reservation(tx, order_id, Lock::Row).await?;
        let status = existing.as_ref().map(Reservation::status).transpose()?;
        match (domain::decide_release(status), existing) {
            (ReleaseOutcome::Tombstone, _) => {
                let status = ReservationStatus::Released;
                if insert_reservation(tx, order_id, status, &[], 0, None).await? {
                    info!(%order_id, "released before any reservation; tombstone left");
                    return released();
                }
            }
            (ReleaseOutcome::ReturnStock, Some(existing)) => {
                move_held(tx, order_id, &existing.lines, StockMove::Release).await?;
                set_status(tx, order_id, ReservationStatus::Released).await?;
                return released();
            }
            (ReleaseOutcome::MarkReleased, _) => {
                set_status(tx, order_id, ReservationStatus::Released).await?;
                return released();
            }
            (ReleaseOutcome::AlreadyReleased, _) => return released(),
            (ReleaseOutcome::Refuse(reason), _) => {
                return Err(HandlerError::Permanent(format!(
                    "reservation {order_id}: {reason}"
                )));
            }
            (ReleaseOutcome::ReturnStock, None) => {
                return Err(corrupt("a reservation that does not exist was released"));
            }
        }
    }
    Err(raced(order_id))
}

/// Choreography: a confirmed order's held stock is sold. Replies with nothing.
async fn sell(tx: &mut PgConnection, event: OrderConfirmed) -> Result<Vec<Envelope>, HandlerError> {
    let order_id = event.order_id;
    let existing = fetch_reservation(tx, order_id, Lock::Row).await?;
    let status = existing.as_ref().map(Reservation::status).transpose()?;
    if let (true, Some(existing)) = (domain::sells_on_confirmation(status), existing) {
        move_held(tx, order_id, &existing.lines, StockMove::Sell).await?;
        set_status(tx, order_id, ReservationStatus::Committed).await?;
    }
    Ok(Vec::new())
}

pub(super) fn reply<M: Message>(reply: &M, cause: &Envelope) -> Envelope {
    Envelope::caused_by(PRODUCER, reply, cause)
}
