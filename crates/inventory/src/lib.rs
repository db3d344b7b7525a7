//! Warren's inventory participant: owns the `inventory` schema (`inventory.products`,
//! `inventory.reservations`, its inbox and outbox) and answers `inventory.cmd.*`: it reserves
//! all lines of an order or none, releases them, and sells reserved stock once the order is
//! confirmed. Each command is idempotent per order id (and a product per SKU), because the
//! orchestrator re-sends a timed-out command under a new message id, which the inbox cannot
//! recognise. Too little stock commits and replies `inventory.evt.reservation_failed`; only a
//! message it cannot handle and a database failure are errors.
//!
//! - [`domain`]: pricing and the all-or-nothing reservation decision, stock moves, and how a
//!   reservation answers each command in each state, as pure functions over plain values,
//!   unit-tested without a database.
//! - [`handler`](mod@handler): `inventory.cmd.upsert_product`, `inventory.cmd.reserve`,
//!   `inventory.cmd.release`, and the event `order.evt.confirmed` (reserved stock is sold): a
//!   [`store::TxHandler`] that locks rows, asks `domain`, writes the outcome and returns the
//!   replies; [`handler()`] wraps it with the inbox and outbox.
//! - `group`: the same decisions for a group commit's reserves, releases and sales in a few
//!   set-based statements; `handler`'s one-message path is the reference it is tested against.
//! - [`queries`]: a product as the gateway shows it; stock totals for invariants.
//!
//! The order and payment participants are laid out alike, and share [`host::handling`].

pub mod domain;
mod group;
pub mod handler;
pub mod queries;

pub use handler::InventoryHandler;

use contracts::Component;
use contracts::component::Queue;
use futures_util::future::BoxFuture;
use host::{Host, Participant, Tasks};
use sqlx::PgPool;
use store::Transactional;

/// The inbox name of this participant.
pub const CONSUMER: &str = "inventory-service";
/// The `app_id` of the messages it produces.
pub const PRODUCER: &str = "inventory";
/// The schema holding its tables, inbox and outbox.
pub const SCHEMA: &str = "inventory";

/// The handler wrapped with this service's inbox and outbox, ready for a consumer.
pub fn handler(pool: PgPool) -> Transactional<InventoryHandler> {
    Transactional::new(pool, SCHEMA, CONSUMER, InventoryHandler)
}

/// The inventory service as the broker, the database and the deployment see it.
pub const COMPONENT: Component = Component {
    consumes: &[Queue {
        name: "inventory.commands",
        bindings: &[
            "inventory.cmd.*",
            // It also sells reserved stock once an order is confirmed.
            "order.evt.confirmed",
        ],
    }],
    ..Component::participant("inventory", SCHEMA, "warren_inventory", 9183)
};

/// The inventory service as `warren run inventory` starts it: its relay, consumer and queries.
pub const PARTICIPANT: Participant = Participant {
    component: COMPONENT,
    listeners: 1,
    start,
};

fn start<'a>(host: &'a Host, tasks: &'a mut Tasks) -> BoxFuture<'a, anyhow::Result<()>> {
    Box::pin(host.run_transactional(
        tasks,
        &COMPONENT,
        handler(host.pool.clone()),
        queries::answering(host.pool.clone()),
    ))
}
