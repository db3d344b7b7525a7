//! What every participant's handler does the same way: decoding and error mapping.

use bus::HandlerError;
use contracts::{Envelope, Message};
use store::StoreError;

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
