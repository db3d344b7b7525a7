//! The inventory service: owns `inventory.products` and `inventory.reservations`.
//!
//! - [`domain`]: pricing and the all-or-nothing reservation decision, stock moves, and how a
//!   reservation answers each command in each state.
//! - [`handler`]: `inventory.cmd.upsert_product`, `inventory.cmd.reserve`,
//!   `inventory.cmd.release`, and the event `order.evt.confirmed` (reserved stock is sold).
//! - `group`: a group commit's reserves, releases and sales in a few set-based statements.
//! - [`queries`]: a product as the gateway shows it; stock totals for invariants.

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
        queries::Queries::new(host.pool.clone()),
    ))
}
