//! One saga's transition, kept from stopping the others.
//!
//! The reply path and the timeout sweeper apply inputs to many sagas in one transaction. If one
//! saga's definition version cannot be read, or the state machine panics on it (a bug, or a row
//! edited by hand), failing the whole transaction would hold back every other saga in it, and
//! the same input would fail again on every redelivery or every sweep. Instead that one saga is
//! halted ([`Input::Halt`]): it stops, failed, with the reason in its error and its log, for an
//! operator to look at (`warren saga show`, `/ui`, `warren_sagas_halted_total`), and the rest of
//! the batch goes on. Errors of the database itself still fail the transaction: those are
//! retried, not blamed on a saga.

use std::any::Any;
use std::borrow::Cow;
use std::panic::{AssertUnwindSafe, catch_unwind};

use chrono::{DateTime, Utc};
use saga::machine::{self, Input, Outcome, Saga};
use sqlx::PgConnection;
use store::StoreError;
use tracing::warn;

use crate::EngineError;
use crate::versions::Versions;

/// A transition as applied: the input that was applied (the one given, or the halt that took
/// its place, which is what the saga's log records) and what it did.
pub struct Advanced<'a> {
    pub input: Cow<'a, Input>,
    pub outcome: Outcome,
}

/// Applies `input` to `saga` by the saga's own definition version; halts the saga instead if
/// that version cannot be had or the transition panics.
pub async fn advance<'a>(
    versions: &Versions,
    db: &mut PgConnection,
    saga: &Saga,
    input: &'a Input,
    now: DateTime<Utc>,
) -> Result<Advanced<'a>, StoreError> {
    let reason = match versions.of(db, saga).await {
        Ok(definition) => {
            match catch_unwind(AssertUnwindSafe(|| {
                machine::apply(&definition, saga, input, now)
            })) {
                Ok(outcome) => {
                    return Ok(Advanced {
                        input: Cow::Borrowed(input),
                        outcome,
                    });
                }
                Err(panic) => format!(
                    "the state machine failed on {}: {}",
                    input.describe(),
                    panic_message(&*panic)
                ),
            }
        }
        Err(EngineError::Store(error)) => return Err(error),
        Err(error) => format!("cannot apply {}: {error}", input.describe()),
    };
    warn!(saga_id = %saga.id, saga = %saga.definition, %reason, "saga halted");
    metrics::counter!("warren_sagas_halted_total", "saga" => saga.definition.clone()).increment(1);
    let outcome = machine::halt(saga, &reason, now);
    Ok(Advanced {
        input: Cow::Owned(Input::Halt { reason }),
        outcome,
    })
}

fn panic_message(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message")
}
