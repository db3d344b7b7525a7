//! What participants' handlers do alike: decoding, error mapping, and cutting a group commit
//! into runs. The order, inventory and payment crates use it, each laid out alike (`domain`,
//! `handler`, `group`, `queries`; see their crate docs).
//!
//! Every handler is idempotent per business key (order id, SKU, customer id), because the
//! orchestrator re-sends a timed-out command under a new message id, which the inbox cannot
//! recognise. Business outcomes (out of stock, declined, rejected) commit and reply with a
//! failure event; only messages a participant cannot handle and database failures are errors:
//! [`decode`], [`unhandled`] and [`corrupt`] park the message for a person, [`db`] retries it
//! when the failure is transient. [`runs`] and [`all_inserted`] serve the `group` path
//! (`TxHandler::apply_all`: read or lock every row the group names, decide each message in
//! order in memory, write each table once).

use std::collections::HashSet;

use bus::HandlerError;
use contracts::{Envelope, Message};
use store::StoreError;
use uuid::Uuid;

/// The payload as `M`; a payload that does not decode will never decode, so it is parked.
pub fn decode<M: Message>(message: &Envelope) -> Result<M, HandlerError> {
    message
        .decode::<M>()
        .map_err(|e| HandlerError::Permanent(e.to_string()))
}

/// A database failure: retried when transient (lost connection, deadlock), parked otherwise.
pub fn db(error: sqlx::Error) -> HandlerError {
    StoreError::from(error).into()
}

/// A message type the participant is not bound to: a topology mistake, parked for a person.
pub fn unhandled(service: &str, message: &Envelope) -> HandlerError {
    HandlerError::Permanent(format!(
        "{service} does not handle {}",
        message.message_type
    ))
}

/// A stored value the code does not know (a row written by a newer version, or by hand).
pub fn corrupt(what: impl std::fmt::Display) -> HandlerError {
    HandlerError::Permanent(format!("unexpected stored data: {what}"))
}

/// Whether a read of an existing row takes its lock until the transaction ends (to change it),
/// or only looks at what is committed (to answer a re-sent command without waiting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lock {
    /// `FOR UPDATE`: the row is changed in this transaction.
    Row,
    /// A plain read of what is committed.
    None,
}

/// A group commit cut into runs, in order: `(true, run)` for messages `covers` takes (applied
/// by the set-based group path), `(false, run)` for the others (applied one at a time). Each
/// run reads its rows only after the runs before it wrote theirs.
pub fn runs<'a>(
    messages: &'a [&'a Envelope],
    covers: fn(&Envelope) -> bool,
) -> impl Iterator<Item = (bool, &'a [&'a Envelope])> {
    messages
        .chunk_by(move |a, b| covers(a) == covers(b))
        .map(move |run| (run.first().is_some_and(|m| covers(m)), run))
}

/// Checks that a group's `INSERT ... ON CONFLICT DO NOTHING RETURNING` inserted every row it
/// meant to; a row another transaction stored after the group read fails the group with
/// `raced` (transient), so each message runs alone and answers from the stored row.
pub fn all_inserted(
    expected: Vec<Uuid>,
    inserted: Vec<Uuid>,
    raced: fn(Uuid) -> HandlerError,
) -> Result<(), HandlerError> {
    let inserted: HashSet<Uuid> = inserted.into_iter().collect();
    match expected.into_iter().find(|id| !inserted.contains(id)) {
        Some(lost) => Err(raced(lost)),
        None => Ok(()),
    }
}
