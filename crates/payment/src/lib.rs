//! Warren's payment participant: owns the `payments` schema (`payments.accounts`,
//! `payments.charges`, its inbox and outbox) and answers `payment.cmd.*`. Each command is
//! idempotent per order id (and a balance per customer id), because the orchestrator re-sends
//! a timed-out command under a new message id, which the inbox cannot recognise. A declined
//! charge commits and replies `payment.evt.declined`; only a message it cannot handle and a
//! database failure are errors.
//!
//! - [`domain`]: the charge decision and how a charge answers each command in each state, as
//!   pure functions over plain values, unit-tested without a database.
//! - [`handler`](mod@handler): `payment.cmd.set_balance`, `payment.cmd.charge`,
//!   `payment.cmd.refund`: a [`store::TxHandler`] that locks rows, asks `domain`, writes the
//!   outcome and returns the replies; [`handler()`] wraps it with the inbox and outbox.
//! - `group`: the same decisions for a group commit's charges and refunds in a few set-based
//!   statements; `handler`'s one-message path is the reference it is tested against.
//! - [`queries`]: an account as the gateway shows it; charges and money totals for invariants.
//!
//! The order and inventory participants are laid out alike, and share [`host::handling`].

pub mod domain;
mod group;
pub mod handler;
pub mod queries;

pub use handler::PaymentHandler;

use std::sync::Arc;

use bus::chaos::Faults;
use contracts::Component;
use contracts::component::Queue;
use futures_util::future::BoxFuture;
use host::{Host, Participant, Tasks};
use sqlx::PgPool;
use store::Transactional;

/// The inbox name of this participant.
pub const CONSUMER: &str = "payment-service";
/// The `app_id` of the messages it produces.
pub const PRODUCER: &str = "payment";
/// The schema holding its tables, inbox and outbox.
pub const SCHEMA: &str = "payments";

/// The handler wrapped with this service's inbox and outbox, ready for a consumer.
pub fn handler(pool: PgPool, faults: Option<Arc<Faults>>) -> Transactional<PaymentHandler> {
    Transactional::new(pool, SCHEMA, CONSUMER, PaymentHandler::with_faults(faults))
}

/// The payment service as the broker, the database and the deployment see it.
pub const COMPONENT: Component = Component {
    consumes: &[Queue {
        name: "payment.commands",
        bindings: &["payment.cmd.*"],
    }],
    ..Component::participant("payment", SCHEMA, "warren_payments", 9184)
};

/// The payment service as `warren run payment` starts it: its relay, consumer and queries.
pub const PARTICIPANT: Participant = Participant {
    component: COMPONENT,
    listeners: 1,
    start,
};

fn start<'a>(host: &'a Host, tasks: &'a mut Tasks) -> BoxFuture<'a, anyhow::Result<()>> {
    Box::pin(host.run_transactional(
        tasks,
        &COMPONENT,
        handler(host.pool.clone(), host.faults.clone()),
        queries::answering(host.pool.clone()),
    ))
}
