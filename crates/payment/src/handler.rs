//! The payment service's handler: `payment.cmd.set_balance`, `payment.cmd.charge`,
//! `payment.cmd.refund`.
//!
//! A refund locks the charge row, then the account. A charge locks only the account and then
//! inserts its row with `ON CONFLICT DO NOTHING` before the balance changes; that insert waits
//! for a concurrent one for the same order, and when that one commits, the next round answers
//! from what it stored, so a re-sent charge can never take money twice. A charge only reads
//! existing charge rows, never locks them: it may already hold the account lock that a refund
//! holding the charge row waits for.
//!
//! A group commit applies its charges and refunds through `super::group` in a few set-based
//! statements; balance sets run one at a time between them.

use std::sync::Arc;

use bus::HandlerError;
use bus::chaos::Faults;
use contracts::messages::{
    AccountBalanceSet, AccountSetBalance, PaymentCharge, PaymentCharged, PaymentDeclined,
    PaymentRefund, PaymentRefunded,
};
use contracts::{Envelope, Message};
use host::handling::{Lock, corrupt, db, decode, runs, unhandled};
use sqlx::PgConnection;
use store::TxHandler;
use tracing::info;
use uuid::Uuid;

use crate::domain::{self, ChargeAgain, ChargeOutcome, ChargeStatus, RefundOutcome};
use crate::{PRODUCER, group};

/// Applies payment commands to the `payments` tables.
#[derive(Debug, Clone, Default)]
pub struct PaymentHandler {
    /// Injected declines, in processes that allow chaos.
    faults: Option<Arc<Faults>>,
}

impl PaymentHandler {
    pub fn with_faults(faults: Option<Arc<Faults>>) -> Self {
        Self { faults }
    }
}

impl TxHandler for PaymentHandler {
    async fn apply(
        &self,
        tx: &mut PgConnection,
        message: &Envelope,
    ) -> Result<Vec<Envelope>, HandlerError> {
        match message.message_type.as_str() {
            AccountSetBalance::TYPE => set_balance(tx, message, decode(message)?).await,
            PaymentCharge::TYPE => {
                let faults = self.faults.as_deref();
                charge(tx, message, decode(message)?, faults).await
            }
            PaymentRefund::TYPE => refund(tx, message, decode(message)?).await,
            _ => Err(unhandled("the payment service", message)),
        }
    }

    async fn apply_all(
        &self,
        tx: &mut PgConnection,
        messages: &[&Envelope],
    ) -> Result<Vec<Envelope>, HandlerError> {
        // Balance sets run alone between the runs the group path takes; each run reads the
        // rows only after the ones before it wrote theirs, so it decides on what they left.
        let mut caused = Vec::with_capacity(messages.len());
        for (set_based, run) in runs(messages, group::covers) {
            if set_based {
                caused.extend(group::apply(tx, run, self.faults.as_deref()).await?);
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
        "charge {order_id} changed under a concurrent insert"
    ))
}

async fn set_balance(
    tx: &mut PgConnection,
    message: &Envelope,
    command: AccountSetBalance,
) -> Result<Vec<Envelope>, HandlerError> {
    sqlx::query(
        "INSERT INTO payments.accounts (customer_id, balance_cents, funded_cents) \
         VALUES ($1, $2, $2) \
         ON CONFLICT (customer_id) DO UPDATE \
         SET balance_cents = EXCLUDED.balance_cents, updated_at = now(), \
         funded_cents = EXCLUDED.balance_cents + COALESCE((SELECT sum(amount_cents) \
             FROM payments.charges WHERE customer_id = $1 AND status = 'charged'), 0)",
    )
    .bind(&command.customer_id)
    .bind(command.balance_cents)
    .execute(tx)
    .await
    .map_err(db)?;
    let set = AccountBalanceSet {
        customer_id: command.customer_id,
        balance_cents: command.balance_cents,
    };
    Ok(vec![reply(&set, message)])
}

#[derive(Debug, sqlx::FromRow)]
struct Charge {
    customer_id: Option<String>,
    amount_cents: i64,
    status: String,
    reason: Option<String>,
}

impl Charge {
    fn status(&self) -> Result<ChargeStatus, HandlerError> {
        self.status.parse().map_err(corrupt)
    }
}

/// The row of an order, locked or not (see [`Lock`]).
async fn fetch_charge(
    tx: &mut PgConnection,
    order_id: Uuid,
    lock: Lock,
) -> Result<Option<Charge>, HandlerError> {
    macro_rules! select {
        () => {
            "SELECT customer_id, amount_cents, status, reason FROM payments.charges WHERE order_id = $1"
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

/// Inserts a charge row unless one exists; `false` when another transaction stored one first.
async fn insert_charge(
    tx: &mut PgConnection,
    order_id: Uuid,
    customer_id: Option<&str>,
    amount_cents: i64,
    status: ChargeStatus,
    reason: Option<&str>,
) -> Result<bool, HandlerError> {
    let inserted = sqlx::query(
        "INSERT INTO payments.charges (order_id, customer_id, amount_cents, status, reason) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(order_id)
    .bind(customer_id)
    .bind(amount_cents)
    .bind(status.as_str())
    .bind(reason)
    .execute(tx)
    .await
    .map_err(db)?;
    Ok(inserted.rows_affected() == 1)
}

async fn charge(
    tx: &mut PgConnection,
    message: &Envelope,
    command: PaymentCharge,
    faults: Option<&Faults>,
) -> Result<Vec<Envelope>, HandlerError> {
    let order_id = command.order_id;
    for _ in 0..ROUNDS {
        if let Some(existing) = fetch_charge(tx, order_id, Lock::None).await? {
            return Ok(vec![match domain::charge_again(
                existing.status()?,
                existing.reason.as_deref(),
            ) {
                ChargeAgain::Charged => {
                    let charged = PaymentCharged {
                        order_id,
                        customer_id: existing
                            .customer_id
                            .ok_or_else(|| corrupt(format!("charge {order_id} has no customer")))?,
                        amount_cents: existing.amount_cents,
                    };
                    reply(&charged, message)
                }
                ChargeAgain::Declined(reason) => declined(order_id, reason, message),
            }]);
        }
        let balance: Option<i64> = sqlx::query_scalar(
            "SELECT balance_cents FROM payments.accounts WHERE customer_id = $1 FOR UPDATE",
        )
        .bind(&command.customer_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        let outcome = if faults.is_some_and(Faults::declines) {
            ChargeOutcome::Decline {
                reason: "declined by an injected fault".into(),
            }
        } else {
            domain::decide_charge(&command.customer_id, balance, command.amount_cents)
                .map_err(|e| HandlerError::Permanent(format!("charge {order_id}: {e}")))?
        };
        let customer = Some(command.customer_id.as_str());
        let amount = command.amount_cents;
        match outcome {
            ChargeOutcome::Charge { balance_after } => {
                let status = ChargeStatus::Charged;
                if insert_charge(tx, order_id, customer, amount, status, None).await? {
                    sqlx::query(
                        "UPDATE payments.accounts SET balance_cents = $2, updated_at = now() \
                         WHERE customer_id = $1",
                    )
                    .bind(&command.customer_id)
                    .bind(balance_after)
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
                    let charged = PaymentCharged {
                        order_id,
                        customer_id: command.customer_id,
                        amount_cents: amount,
                    };
                    return Ok(vec![reply(&charged, message)]);
                }
            }
            ChargeOutcome::Decline { reason } => {
                let status = ChargeStatus::Declined;
                if insert_charge(tx, order_id, customer, amount, status, Some(&reason)).await? {
                    return Ok(vec![declined(order_id, reason, message)]);
                }
            }
        }
    }
    Err(raced(order_id))
}

pub(super) fn declined(order_id: Uuid, reason: String, message: &Envelope) -> Envelope {
    info!(%order_id, %reason, "payment declined");
    reply(&PaymentDeclined { order_id, reason }, message)
}

async fn refund(
    tx: &mut PgConnection,
    message: &Envelope,
    command: PaymentRefund,
) -> Result<Vec<Envelope>, HandlerError> {
    let order_id = command.order_id;
    let refunded = |amount_cents| {
        Ok(vec![reply(
            &PaymentRefunded {
                order_id,
                amount_cents,
            },
            message,
        )])
    };
    for _ in 0..ROUNDS {
        let existing = fetch_charge(tx, order_id, Lock::Row).await?;
        let state = match &existing {
            Some(charge) => Some((charge.status()?, charge.amount_cents)),
            None => None,
        };
        match domain::decide_refund(state) {
            RefundOutcome::Tombstone => {
                let status = ChargeStatus::Voided;
                if insert_charge(tx, order_id, None, 0, status, None).await? {
                    info!(%order_id, "refunded before any charge; tombstone left");
                    return refunded(0);
                }
            }
            RefundOutcome::Refund { amount_cents } => {
                let customer_id = existing.and_then(|c| c.customer_id).ok_or_else(|| {
                    corrupt(format!("standing charge {order_id} has no customer"))
                })?;
                let credited = sqlx::query(
                    "UPDATE payments.accounts \
                     SET balance_cents = balance_cents + $2, updated_at = now() \
                     WHERE customer_id = $1",
                )
                .bind(&customer_id)
                .bind(amount_cents)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
                if credited.rows_affected() != 1 {
                    return Err(corrupt(format!(
                        "charge {order_id} of customer {customer_id} has no account to refund to"
                    )));
                }
                sqlx::query(
                    "UPDATE payments.charges SET status = 'refunded', updated_at = now() \
                     WHERE order_id = $1",
                )
                .bind(order_id)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
                return refunded(amount_cents);
            }
            RefundOutcome::Answer { amount_cents } => return refunded(amount_cents),
        }
    }
    Err(raced(order_id))
}

pub(super) fn reply<M: Message>(reply: &M, cause: &Envelope) -> Envelope {
    Envelope::caused_by(PRODUCER, reply, cause)
}
