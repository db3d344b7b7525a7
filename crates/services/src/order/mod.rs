//! The order service: owns `orders.orders`.
//!
//! - [`domain`]: what a checkout may hold and how an order answers each command in each state.
//! - [`handler`]: `order.cmd.create`, `order.cmd.confirm`, `order.cmd.cancel`.
//! - `group`: a group commit's commands in a few set-based statements.
//! - [`queries`]: an order as the gateway shows it.

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
        queries::Queries::new(host.pool.clone()),
    ))
}
