//! The payment service: owns `payments.accounts` and `payments.charges`.
//!
//! - [`domain`]: the charge decision and how a charge answers each command in each state.
//! - [`handler`]: `payment.cmd.set_balance`, `payment.cmd.charge`, `payment.cmd.refund`.
//! - `group`: a group commit's charges and refunds in a few set-based statements.
//! - [`queries`]: an account as the gateway shows it; charges and money totals for invariants.

pub mod domain;
mod group;
pub mod handler;
pub mod queries;

pub use handler::PaymentHandler;

use std::sync::Arc;

use bus::chaos::Faults;
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
