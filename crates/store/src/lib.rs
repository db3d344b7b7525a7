//! Warren's PostgreSQL adapter, on sqlx.
//!
//! - [`db`]: the pool (connected with back-off) and the embedded migrations.
//! - [`outbox`]: writing messages inside the caller's transaction.
//! - [`relay`]: publishing committed outbox rows with confirms; pruning old rows.
//! - [`inbox`]: at-most-once effects per `(consumer, message id)`.
//! - [`worker`]: the transactional handler every participant runs inside.
//! - [`error`]: the layer's error, which says whether a retry can help.

pub mod db;
pub mod error;
pub mod inbox;
pub mod outbox;
pub mod relay;
pub mod worker;

pub use db::{DbSettings, connect, migrate};
pub use error::{Constraint, Failure, StoreError};
pub use inbox::Inbox;
pub use outbox::Outbox;
pub use relay::{Handoff, Relay, RelaySettings};
pub use worker::{Transactional, TxHandler};

/// Refuses anything but a plain lowercase identifier (`orders`, `loyalty_points`) as a schema
/// name, since schema names are spliced into SQL. The names come from the components'
/// declarations (`contracts::Component::schema`), never from input.
fn checked_schema(schema: &str) -> &str {
    let plain = schema.starts_with(|c: char| c.is_ascii_lowercase())
        && schema.len() <= 63
        && schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    assert!(plain, "{schema:?} is not a plain schema name");
    schema
}

#[cfg(test)]
mod tests {
    use super::checked_schema;

    #[test]
    fn only_plain_identifiers_are_schema_names() {
        for good in ["orders", "loyalty_points", "s3"] {
            assert_eq!(checked_schema(good), good);
        }
        for bad in ["", "Orders", "1st", "orders; DROP TABLE x", "a.b", "\"x\""] {
            assert!(
                std::panic::catch_unwind(|| checked_schema(bad)).is_err(),
                "{bad:?} was taken"
            );
        }
    }
}
