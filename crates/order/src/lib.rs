//! Warren's order participant: owns the `orders` schema (`orders.orders`, its inbox and outbox)
//! and answers `order.cmd.*`. Each command is idempotent per order id, because the
//! orchestrator re-sends a timed-out command under a new message id, which the inbox cannot
//! recognise. A rejected order commits and replies `order.evt.rejected`; only a message it
//! cannot handle and a database failure are errors.
//!
//! - [`domain`]: what a checkout may hold and how an order answers each command in each state,
//!   as pure functions over plain values, unit-tested without a database.
//! - [`handler`](mod@handler): `order.cmd.create`, `order.cmd.confirm`, `order.cmd.cancel`: a
//!   [`store::TxHandler`] that locks rows, asks `domain`, writes the outcome and returns the
//!   replies; [`handler()`] wraps it with the inbox and outbox.
//! - `group`: the same decisions for a whole group commit in a few set-based statements;
//!   `handler`'s one-message path is the reference it is tested against.
//! - [`queries`]: an order as the gateway shows it.
//!
//! The inventory and payment participants are laid out alike, and share [`host::handling`].

pub mod domain;
mod group;
pub mod handler;
pub mod queries;

pub use handler::OrderHandler;

use contracts::Component;
use contracts::component::Queue;
use futures_util::future::BoxFuture;
use host::{Host, Participant, Tasks};
use sqlx::PgPool;
use store::Transactional;

/// The inbox name of this participant.
pub const CONSUMER: &str = "order-service";
/// The `app_id` of the messages it produces.
pub const PRODUCER: &str = "order";
/// The schema holding its tables, inbox and outbox.
pub const SCHEMA: &str = "orders";

/// The handler wrapped with this service's inbox and outbox, ready for a consumer.
pub fn handler(pool: PgPool) -> Transactional<OrderHandler> {
    Transactional::new(pool, SCHEMA, CONSUMER, OrderHandler)
}

/// The order service as the broker, the database and the deployment see it.
pub const COMPONENT: Component = Component {
    consumes: &[Queue {
        name: "order.commands",
        bindings: &["order.cmd.*"],
    }],
    ..Component::participant("order", SCHEMA, "warren_orders", 9182)
};

/// The order service as `warren run order` starts it: its relay, consumer and queries.
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
