//! Reserves, releases and sales of a group commit in at most five statements, whatever the
//! size of the group: read the reservations the group names, lock the products it may move,
//! decide every message in order in memory with [`domain`], then write each table once.
//!
//! Locks come in the per-message path's order: reservations a release or sale may change, then
//! products in SKU order. A reservation only a reserve names is read without a lock, for the
//! reason the handler gives. New reservations are inserted in order-id order (so two groups
//! never wait on each other's inserts in opposite orders) with `ON CONFLICT DO NOTHING`; a row
//! another transaction stored after the read fails the group with a transient error, and each
//! message then runs alone, where the per-message path answers from the stored row.

use std::collections::{BTreeMap, BTreeSet};

use bus::HandlerError;
use contracts::messages::{
    InventoryRelease, InventoryReleased, InventoryReserve, InventoryReserved, OrderConfirmed,
    PricedLine,
};
use contracts::{Envelope, Message};
use host::handling::{all_inserted, corrupt, db, decode, unhandled};
use sqlx::PgConnection;
use sqlx::types::Json;
use tracing::info;
use uuid::Uuid;

use crate::domain::{
    self, Product, ReleaseOutcome, ReservationStatus, ReserveAgain, ReserveOutcome, StockChange,
    StockMove,
};
use crate::handler::{failed, lock_products, raced, reply, write_stock};

/// Whether [`apply`] takes the message; the handler applies anything else on its own.
pub(super) fn covers(message: &Envelope) -> bool {
    matches!(
        message.message_type.as_str(),
        InventoryReserve::TYPE | InventoryRelease::TYPE | OrderConfirmed::TYPE
    )
}

/// Applies a run of messages that [`covers`] takes, in order, as the per-message path would.
pub(super) async fn apply(
    tx: &mut PgConnection,
    messages: &[&Envelope],
) -> Result<Vec<Envelope>, HandlerError> {
    let commands = messages
        .iter()
        .map(|m| Command::decode(m))
        .collect::<Result<Vec<_>, _>>()?;
    let mut book = Book::load(tx, &commands).await?;
    let mut caused = Vec::with_capacity(messages.len());
    for (command, message) in commands.into_iter().zip(messages) {
        match command {
            Command::Reserve(command) => caused.push(book.reserve(command, message)),
            Command::Release(order_id) => caused.push(book.release(order_id, message)?),
            Command::Sell(order_id) => book.sell(order_id)?,
        }
    }
    book.write(tx).await?;
    Ok(caused)
}

#[derive(Debug)]
enum Command {
    Reserve(InventoryReserve),
    Release(Uuid),
    Sell(Uuid),
}

impl Command {
    fn decode(message: &Envelope) -> Result<Self, HandlerError> {
        Ok(match message.message_type.as_str() {
            InventoryReserve::TYPE => Self::Reserve(decode(message)?),
            InventoryRelease::TYPE => Self::Release(decode::<InventoryRelease>(message)?.order_id),
            OrderConfirmed::TYPE => Self::Sell(decode::<OrderConfirmed>(message)?.order_id),
            _ => return Err(unhandled("the inventory service", message)),
        })
    }
}

/// A reservation as the group has left it so far.
#[derive(Debug)]
struct Reservation {
    status: ReservationStatus,
    lines: Vec<PricedLine>,
    total_cents: i64,
    reason: Option<String>,
    /// Read from the table (only its status can change) rather than made by this group.
    stored: bool,
    changed: bool,
}

#[derive(Debug, sqlx::FromRow)]
struct Row {
    order_id: Uuid,
    status: String,
    lines: Json<Vec<PricedLine>>,
    total_cents: i64,
    reason: Option<String>,
}

/// What the group reads and changes, kept in memory until [`Book::write`].
#[derive(Debug)]
struct Book {
    reservations: BTreeMap<Uuid, Reservation>,
    products: BTreeMap<String, Product>,
    /// SKUs whose stock changed.
    moved: BTreeSet<String>,
}

impl Book {
    async fn load(tx: &mut PgConnection, commands: &[Command]) -> Result<Self, HandlerError> {
        let mut locked = BTreeSet::new();
        let mut read = BTreeSet::new();
        for command in commands {
            match command {
                Command::Reserve(reserve) => read.insert(reserve.order_id),
                Command::Release(order_id) | Command::Sell(order_id) => locked.insert(*order_id),
            };
        }
        let locked: Vec<Uuid> = locked.into_iter().collect();
        let read: Vec<Uuid> = read.into_iter().collect();
        let rows: Vec<Row> = sqlx::query_as(
            "WITH locked AS ( \
                 SELECT order_id, status, lines, total_cents, reason \
                 FROM inventory.reservations WHERE order_id = ANY($1) \
                 ORDER BY order_id FOR UPDATE) \
             SELECT * FROM locked \
             UNION ALL \
             SELECT order_id, status, lines, total_cents, reason FROM inventory.reservations \
             WHERE order_id = ANY($2) AND order_id <> ALL($1)",
        )
        .bind(&locked)
        .bind(&read)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        let reservations = rows
            .into_iter()
            .map(|row| {
                let reservation = Reservation {
                    status: row.status.parse().map_err(corrupt)?,
                    lines: row.lines.0,
                    total_cents: row.total_cents,
                    reason: row.reason,
                    stored: true,
                    changed: false,
                };
                Ok((row.order_id, reservation))
            })
            .collect::<Result<BTreeMap<_, _>, HandlerError>>()?;

        // Stock moves only for a reserve of an order without a row, or for a release or sale
        // of a standing reservation (a stored row never becomes `reserved` again).
        let mut skus: BTreeSet<&str> = BTreeSet::new();
        for command in commands {
            match command {
                Command::Reserve(reserve) if !reservations.contains_key(&reserve.order_id) => {
                    skus.extend(reserve.items.iter().map(|l| l.sku.as_str()));
                }
                Command::Release(order_id) | Command::Sell(order_id) => {
                    if let Some(held) = reservations.get(order_id)
                        && held.status == ReservationStatus::Reserved
                    {
                        skus.extend(held.lines.iter().map(|l| l.sku.as_str()));
                    }
                }
                Command::Reserve(_) => {}
            }
        }
        let products = if skus.is_empty() {
            Vec::new()
        } else {
            lock_products(&mut *tx, skus).await?
        };
        Ok(Self {
            reservations,
            products: products.into_iter().map(|p| (p.sku.clone(), p)).collect(),
            moved: BTreeSet::new(),
        })
    }

    fn reserve(&mut self, command: InventoryReserve, message: &Envelope) -> Envelope {
        let order_id = command.order_id;
        if let Some(existing) = self.reservations.get(&order_id) {
            return match domain::reserve_again(existing.status, existing.reason.as_deref()) {
                ReserveAgain::Reserved => {
                    let reserved = InventoryReserved {
                        order_id,
                        lines: existing.lines.clone(),
                        total_cents: existing.total_cents,
                    };
                    reply(&reserved, message)
                }
                ReserveAgain::Failed(reason) => failed(order_id, reason, message),
            };
        }
        let products = self.products_of(command.items.iter().map(|l| l.sku.as_str()));
        match domain::decide_reservation(&command.items, &products) {
            ReserveOutcome::Reserve {
                lines,
                total_cents,
                changes,
            } => {
                self.restock(changes);
                let reserved = InventoryReserved {
                    order_id,
                    lines,
                    total_cents,
                };
                let status = ReservationStatus::Reserved;
                self.add(order_id, status, reserved.lines.clone(), total_cents, None);
                reply(&reserved, message)
            }
            ReserveOutcome::Fail { reason } => {
                let status = ReservationStatus::Failed;
                self.add(order_id, status, Vec::new(), 0, Some(reason.clone()));
                failed(order_id, reason, message)
            }
        }
    }

    fn release(&mut self, order_id: Uuid, message: &Envelope) -> Result<Envelope, HandlerError> {
        let status = self.reservations.get(&order_id).map(|r| r.status);
        match domain::decide_release(status) {
            ReleaseOutcome::Tombstone => {
                self.add(order_id, ReservationStatus::Released, Vec::new(), 0, None);
                info!(%order_id, "released before any reservation; tombstone left");
            }
            ReleaseOutcome::ReturnStock => {
                self.move_held(order_id, StockMove::Release, ReservationStatus::Released)?;
            }
            ReleaseOutcome::MarkReleased => self.set_status(order_id, ReservationStatus::Released),
            ReleaseOutcome::AlreadyReleased => {}
            ReleaseOutcome::Refuse(reason) => {
                return Err(HandlerError::Permanent(format!(
                    "reservation {order_id}: {reason}"
                )));
            }
        }
        Ok(reply(&InventoryReleased { order_id }, message))
    }

    fn sell(&mut self, order_id: Uuid) -> Result<(), HandlerError> {
        let status = self.reservations.get(&order_id).map(|r| r.status);
        if domain::sells_on_confirmation(status) {
            self.move_held(order_id, StockMove::Sell, ReservationStatus::Committed)?;
        }
        Ok(())
    }

    /// Moves the held lines of a reservation and gives it its new status.
    fn move_held(
        &mut self,
        order_id: Uuid,
        movement: StockMove,
        status: ReservationStatus,
    ) -> Result<(), HandlerError> {
        let lines = &self
            .reservations
            .get(&order_id)
            .ok_or_else(|| corrupt(format!("reservation {order_id} does not exist")))?
            .lines;
        let products = self.products_of(lines.iter().map(|l| l.sku.as_str()));
        let changes = domain::move_lines(&products, domain::held(lines), movement)
            .map_err(|e| corrupt(format!("reservation {order_id}: {e}")))?;
        self.restock(changes);
        self.set_status(order_id, status);
        Ok(())
    }

    /// The products of `skus` as they stand now in the group (unknown SKUs left out).
    fn products_of<'a>(&self, skus: impl IntoIterator<Item = &'a str>) -> Vec<Product> {
        let skus: BTreeSet<&str> = skus.into_iter().collect();
        skus.into_iter()
            .filter_map(|sku| self.products.get(sku).cloned())
            .collect()
    }

    fn restock(&mut self, changes: Vec<StockChange>) {
        for change in changes {
            if let Some(product) = self.products.get_mut(&change.sku) {
                product.stock = change.stock;
                self.moved.insert(change.sku);
            }
        }
    }

    fn add(
        &mut self,
        order_id: Uuid,
        status: ReservationStatus,
        lines: Vec<PricedLine>,
        total_cents: i64,
        reason: Option<String>,
    ) {
        let new = Reservation {
            status,
            lines,
            total_cents,
            reason,
            stored: false,
            changed: true,
        };
        self.reservations.insert(order_id, new);
    }

    fn set_status(&mut self, order_id: Uuid, status: ReservationStatus) {
        if let Some(reservation) = self.reservations.get_mut(&order_id) {
            reservation.status = status;
            reservation.changed = true;
        }
    }

    /// One insert of the new reservations, one update of the stored ones, one of the stock.
    async fn write(self, tx: &mut PgConnection) -> Result<(), HandlerError> {
        let (new, stored): (Vec<_>, Vec<_>) = self
            .reservations
            .iter()
            .filter(|(_, r)| r.changed)
            .partition(|(_, r)| !r.stored);
        if !new.is_empty() {
            let ids: Vec<Uuid> = new.iter().map(|(id, _)| **id).collect();
            let inserted: Vec<Uuid> = sqlx::query_scalar(
                "INSERT INTO inventory.reservations (order_id, status, lines, total_cents, reason) \
                 SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::jsonb[], $4::bigint[], $5::text[]) \
                 ON CONFLICT (order_id) DO NOTHING RETURNING order_id",
            )
            .bind(&ids)
            .bind(new.iter().map(|(_, r)| r.status.as_str()).collect::<Vec<_>>())
            .bind(new.iter().map(|(_, r)| Json(&r.lines)).collect::<Vec<_>>())
            .bind(new.iter().map(|(_, r)| r.total_cents).collect::<Vec<_>>())
            .bind(new.iter().map(|(_, r)| r.reason.as_deref()).collect::<Vec<_>>())
            .fetch_all(&mut *tx)
            .await
            .map_err(db)?;
            all_inserted(ids, inserted, raced)?;
        }
        if !stored.is_empty() {
            sqlx::query(
                "UPDATE inventory.reservations AS r SET status = u.status, updated_at = now() \
                 FROM UNNEST($1::uuid[], $2::text[]) AS u(order_id, status) \
                 WHERE r.order_id = u.order_id",
            )
            .bind(stored.iter().map(|(id, _)| **id).collect::<Vec<_>>())
            .bind(
                stored
                    .iter()
                    .map(|(_, r)| r.status.as_str())
                    .collect::<Vec<_>>(),
            )
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        }
        let changes: Vec<StockChange> = self
            .moved
            .iter()
            .filter_map(|sku| self.products.get(sku))
            .map(|p| StockChange {
                sku: p.sku.clone(),
                stock: p.stock,
            })
            .collect();
        if !changes.is_empty() {
            write_stock(tx, &changes).await?;
        }
        Ok(())
    }
}
