//! What every participant's handler does the same way: decoding and error mapping.

use std::collections::HashSet;

use bus::HandlerError;
use contracts::{Envelope, Message};
use store::StoreError;
use uuid::Uuid;

/// The payload as `M`; a payload that does not decode will never decode, so it is parked.
pub(crate) fn decode<M: Message>(message: &Envelope) -> Result<M, HandlerError> {
    message
        .decode::<M>()
        .map_err(|e| HandlerError::Permanent(e.to_string()))
}

/// A database failure: retried when transient (lost connection, deadlock), parked otherwise.
pub(crate) fn db(error: sqlx::Error) -> HandlerError {
    StoreError::from(error).into()
}

/// A message type the service is not bound to: a topology mistake, parked for a person.
pub(crate) fn unhandled(service: &str, message: &Envelope) -> HandlerError {
    HandlerError::Permanent(format!(
        "{service} does not handle {}",
        message.message_type
    ))
}

/// A stored value the code does not know (a row written by a newer version, or by hand).
pub(crate) fn corrupt(what: impl std::fmt::Display) -> HandlerError {
    HandlerError::Permanent(format!("unexpected stored data: {what}"))
}

/// Whether a read of an existing row takes its lock until the transaction ends (to change it),
/// or only looks at what is committed (to answer a re-sent command without waiting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lock {
    Row,
    None,
}

/// A group commit cut into runs, in order: `(true, run)` for messages `covers` takes (applied
/// by the set-based group path), `(false, run)` for the others (applied one at a time). Each
/// run reads its rows only after the runs before it wrote theirs.
pub(crate) fn runs<'a>(
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
pub(crate) fn all_inserted(
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
