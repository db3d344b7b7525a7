//! Charges and refunds of a group commit in at most five statements, whatever the size of the
//! group: read the charges the group names, lock the accounts it may debit or credit, decide
//! every message in order in memory with [`domain`], then write each table once.
//!
//! Locks come in the per-message path's order: charges a refund may change, then accounts in
//! customer order. A charge row only a charge command names is read without a lock, for the
//! reason the handler gives. New charge rows are inserted in order-id order (so two groups
//! never wait on each other's inserts in opposite orders) with `ON CONFLICT DO NOTHING`; a row
//! another transaction stored after the read fails the group with a transient error, and each
//! message then runs alone, where the per-message path answers from the stored row.

use std::collections::{BTreeMap, BTreeSet};

use bus::HandlerError;
use bus::chaos::Faults;
use contracts::messages::{PaymentCharge, PaymentCharged, PaymentRefund, PaymentRefunded};
use contracts::{Envelope, Message};
use host::handling::{all_inserted, corrupt, db, decode, unhandled};
use sqlx::PgConnection;
use tracing::info;
use uuid::Uuid;

use crate::domain::{self, ChargeAgain, ChargeOutcome, ChargeStatus, RefundOutcome};
use crate::handler::{declined, raced, reply};

/// Whether [`apply`] takes the message; the handler applies anything else on its own.
pub(super) fn covers(message: &Envelope) -> bool {
    matches!(
        message.message_type.as_str(),
        PaymentCharge::TYPE | PaymentRefund::TYPE
    )
}

/// Applies a run of messages that [`covers`] takes, in order, as the per-message path would.
pub(super) async fn apply(
    tx: &mut PgConnection,
    messages: &[&Envelope],
    faults: Option<&Faults>,
) -> Result<Vec<Envelope>, HandlerError> {
    let commands = messages
        .iter()
        .map(|m| Command::decode(m))
        .collect::<Result<Vec<_>, _>>()?;
    let mut book = Book::load(tx, &commands).await?;
    let mut caused = Vec::with_capacity(messages.len());
    for (command, message) in commands.into_iter().zip(messages) {
        caused.push(match command {
            Command::Charge(command) => book.charge(command, message, faults)?,
            Command::Refund(order_id) => book.refund(order_id, message)?,
        });
    }
    book.write(tx).await?;
    Ok(caused)
}

#[derive(Debug)]
enum Command {
    Charge(PaymentCharge),
    Refund(Uuid),
}

impl Command {
    fn decode(message: &Envelope) -> Result<Self, HandlerError> {
        Ok(match message.message_type.as_str() {
            PaymentCharge::TYPE => Self::Charge(decode(message)?),
            PaymentRefund::TYPE => Self::Refund(decode::<PaymentRefund>(message)?.order_id),
            _ => return Err(unhandled("the payment service", message)),
        })
    }
}

/// An order's charge as the group has left it so far.
#[derive(Debug)]
struct Charge {
    customer_id: Option<String>,
    amount_cents: i64,
    status: ChargeStatus,
    reason: Option<String>,
    /// Read from the table (only its status can change) rather than made by this group.
    stored: bool,
    changed: bool,
}

#[derive(Debug, sqlx::FromRow)]
struct Row {
    order_id: Uuid,
    customer_id: Option<String>,
    amount_cents: i64,
    status: String,
    reason: Option<String>,
}

/// What the group reads and changes, kept in memory until [`Book::write`].
#[derive(Debug)]
struct Book {
    charges: BTreeMap<Uuid, Charge>,
    /// Locked balances by customer; a customer without an account is absent.
    balances: BTreeMap<String, i64>,
    /// Customers whose balance changed.
    moved: BTreeSet<String>,
}

impl Book {
    async fn load(tx: &mut PgConnection, commands: &[Command]) -> Result<Self, HandlerError> {
        let mut locked = BTreeSet::new();
        let mut read = BTreeSet::new();
        for command in commands {
            match command {
                Command::Charge(charge) => read.insert(charge.order_id),
                Command::Refund(order_id) => locked.insert(*order_id),
            };
        }
        let locked: Vec<Uuid> = locked.into_iter().collect();
        let read: Vec<Uuid> = read.into_iter().collect();
        let rows: Vec<Row> = sqlx::query_as(
            "WITH locked AS ( \
                 SELECT order_id, customer_id, amount_cents, status, reason \
                 FROM payments.charges WHERE order_id = ANY($1) \
                 ORDER BY order_id FOR UPDATE) \
             SELECT * FROM locked \
             UNION ALL \
             SELECT order_id, customer_id, amount_cents, status, reason FROM payments.charges \
             WHERE order_id = ANY($2) AND order_id <> ALL($1)",
        )
        .bind(&locked)
        .bind(&read)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        let charges = rows
            .into_iter()
            .map(|row| {
                let charge = Charge {
                    customer_id: row.customer_id,
                    amount_cents: row.amount_cents,
                    status: row.status.parse().map_err(corrupt)?,
                    reason: row.reason,
                    stored: true,
                    changed: false,
                };
                Ok((row.order_id, charge))
            })
            .collect::<Result<BTreeMap<_, _>, HandlerError>>()?;

        // Money moves only for a charge of an order without a row, or for a refund of a
        // standing charge (a stored row never becomes `charged` again).
        let mut customers: BTreeSet<&str> = BTreeSet::new();
        for command in commands {
            match command {
                Command::Charge(charge) if !charges.contains_key(&charge.order_id) => {
                    customers.insert(&charge.customer_id);
                }
                Command::Refund(order_id) => {
                    if let Some(standing) = charges.get(order_id)
                        && standing.status == ChargeStatus::Charged
                        && let Some(customer_id) = &standing.customer_id
                    {
                        customers.insert(customer_id);
                    }
                }
                Command::Charge(_) => {}
            }
        }
        let balances: Vec<(String, i64)> = if customers.is_empty() {
            Vec::new()
        } else {
            sqlx::query_as(
                "SELECT customer_id, balance_cents FROM payments.accounts \
                 WHERE customer_id = ANY($1) ORDER BY customer_id FOR UPDATE",
            )
            .bind(customers.into_iter().collect::<Vec<_>>())
            .fetch_all(&mut *tx)
            .await
            .map_err(db)?
        };
        Ok(Self {
            charges,
            balances: balances.into_iter().collect(),
            moved: BTreeSet::new(),
        })
    }

    fn charge(
        &mut self,
        command: PaymentCharge,
        message: &Envelope,
        faults: Option<&Faults>,
    ) -> Result<Envelope, HandlerError> {
        let order_id = command.order_id;
        if let Some(existing) = self.charges.get(&order_id) {
            return Ok(
                match domain::charge_again(existing.status, existing.reason.as_deref()) {
                    ChargeAgain::Charged => {
                        let charged = PaymentCharged {
                            order_id,
                            customer_id: existing.customer_id.clone().ok_or_else(|| {
                                corrupt(format!("charge {order_id} has no customer"))
                            })?,
                            amount_cents: existing.amount_cents,
                        };
                        reply(&charged, message)
                    }
                    ChargeAgain::Declined(reason) => declined(order_id, reason, message),
                },
            );
        }
        let balance = self.balances.get(&command.customer_id).copied();
        let outcome = if faults.is_some_and(Faults::declines) {
            ChargeOutcome::Decline {
                reason: "declined by an injected fault".into(),
            }
        } else {
            domain::decide_charge(&command.customer_id, balance, command.amount_cents)
                .map_err(|e| HandlerError::Permanent(format!("charge {order_id}: {e}")))?
        };
        let mut new = Charge {
            customer_id: Some(command.customer_id.clone()),
            amount_cents: command.amount_cents,
            status: ChargeStatus::Charged,
            reason: None,
            stored: false,
            changed: true,
        };
        let answer = match outcome {
            ChargeOutcome::Charge { balance_after } => {
                self.balances
                    .insert(command.customer_id.clone(), balance_after);
                self.moved.insert(command.customer_id.clone());
                let charged = PaymentCharged {
                    order_id,
                    customer_id: command.customer_id,
                    amount_cents: command.amount_cents,
                };
                reply(&charged, message)
            }
            ChargeOutcome::Decline { reason } => {
                new.status = ChargeStatus::Declined;
                new.reason = Some(reason.clone());
                declined(order_id, reason, message)
            }
        };
        self.charges.insert(order_id, new);
        Ok(answer)
    }

    fn refund(&mut self, order_id: Uuid, message: &Envelope) -> Result<Envelope, HandlerError> {
        let state = self
            .charges
            .get(&order_id)
            .map(|c| (c.status, c.amount_cents));
        let amount_cents = match domain::decide_refund(state) {
            RefundOutcome::Tombstone => {
                let tombstone = Charge {
                    customer_id: None,
                    amount_cents: 0,
                    status: ChargeStatus::Voided,
                    reason: None,
                    stored: false,
                    changed: true,
                };
                self.charges.insert(order_id, tombstone);
                info!(%order_id, "refunded before any charge; tombstone left");
                0
            }
            RefundOutcome::Refund { amount_cents } => {
                let charge = self
                    .charges
                    .get_mut(&order_id)
                    .ok_or_else(|| corrupt(format!("charge {order_id} does not exist")))?;
                let customer_id = charge.customer_id.clone().ok_or_else(|| {
                    corrupt(format!("standing charge {order_id} has no customer"))
                })?;
                let balance = self.balances.get_mut(&customer_id).ok_or_else(|| {
                    corrupt(format!(
                        "charge {order_id} of customer {customer_id} has no account to refund to"
                    ))
                })?;
                *balance = balance.checked_add(amount_cents).ok_or_else(|| {
                    corrupt(format!(
                        "refund {order_id} takes {customer_id}'s balance out of range"
                    ))
                })?;
                charge.status = ChargeStatus::Refunded;
                charge.changed = true;
                self.moved.insert(customer_id);
                amount_cents
            }
            RefundOutcome::Answer { amount_cents } => amount_cents,
        };
        let refunded = PaymentRefunded {
            order_id,
            amount_cents,
        };
        Ok(reply(&refunded, message))
    }

    /// One insert of the new charges, one update of the stored ones, one of the balances.
    async fn write(self, tx: &mut PgConnection) -> Result<(), HandlerError> {
        let (new, stored): (Vec<_>, Vec<_>) = self
            .charges
            .iter()
            .filter(|(_, c)| c.changed)
            .partition(|(_, c)| !c.stored);
        if !new.is_empty() {
            let ids: Vec<Uuid> = new.iter().map(|(id, _)| **id).collect();
            let inserted: Vec<Uuid> = sqlx::query_scalar(
                "INSERT INTO payments.charges (order_id, customer_id, amount_cents, status, reason) \
                 SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::bigint[], $4::text[], $5::text[]) \
                 ON CONFLICT (order_id) DO NOTHING RETURNING order_id",
            )
            .bind(&ids)
            .bind(new.iter().map(|(_, c)| c.customer_id.as_deref()).collect::<Vec<_>>())
            .bind(new.iter().map(|(_, c)| c.amount_cents).collect::<Vec<_>>())
            .bind(new.iter().map(|(_, c)| c.status.as_str()).collect::<Vec<_>>())
            .bind(new.iter().map(|(_, c)| c.reason.as_deref()).collect::<Vec<_>>())
            .fetch_all(&mut *tx)
            .await
            .map_err(db)?;
            all_inserted(ids, inserted, raced)?;
        }
        if !stored.is_empty() {
            sqlx::query(
                "UPDATE payments.charges AS c SET status = u.status, updated_at = now() \
                 FROM UNNEST($1::uuid[], $2::text[]) AS u(order_id, status) \
                 WHERE c.order_id = u.order_id",
            )
            .bind(stored.iter().map(|(id, _)| **id).collect::<Vec<_>>())
            .bind(
                stored
                    .iter()
                    .map(|(_, c)| c.status.as_str())
                    .collect::<Vec<_>>(),
            )
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        }
        let (customers, balances): (Vec<&str>, Vec<i64>) = self
            .moved
            .iter()
            .filter_map(|c| self.balances.get(c).map(|balance| (c.as_str(), *balance)))
            .unzip();
        if !customers.is_empty() {
            sqlx::query(
                "UPDATE payments.accounts AS a SET balance_cents = u.balance_cents, \
                 updated_at = now() \
                 FROM UNNEST($1::text[], $2::bigint[]) AS u(customer_id, balance_cents) \
                 WHERE a.customer_id = u.customer_id",
            )
            .bind(customers)
            .bind(balances)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        }
        Ok(())
    }
}
