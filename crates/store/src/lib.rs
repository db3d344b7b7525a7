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
pub use error::StoreError;
pub use inbox::Inbox;
pub use outbox::Outbox;
pub use relay::{Handoff, Relay, RelaySettings};
pub use worker::{Transactional, TxHandler};

/// The service schemas created by the migrations.
pub const SCHEMAS: [&str; 6] = [
    "orders",
    "inventory",
    "payments",
    "images",
    "notifications",
    "sagas",
];

/// Refuses anything but a known schema name, since schema names are spliced into SQL.
fn checked_schema(schema: &str) -> &str {
    assert!(
        SCHEMAS.contains(&schema),
        "unknown schema {schema:?}; expected one of {SCHEMAS:?}"
    );
    schema
}
