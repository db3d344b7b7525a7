//! The language every Warren process speaks: no I/O lives here.
//!
//! - [`component`]: what a component is (its queues, permissions, role), declared in its crate.
//! - [`envelope`]: the metadata that travels with every message (ids, causation, trace, attempt).
//! - [`messages`]: the typed payloads, each bound to its routing key by [`Message`].
//! - [`routing`]: exchange and queue names shared by producers, consumers and the topology.
//! - [`schema`]: the JSON Schemas of `schemas/`, compiled once, checked on produce and consume.
//! - [`trace`]: W3C trace context, one trace per saga.
//! - [`whole`]: whole numbers as JSON Schema has them (`165` and `165.0` alike).

pub mod component;
pub mod envelope;
pub mod messages;
pub mod routing;
pub mod schema;
pub mod trace;
pub mod whole;

pub use component::Component;
pub use envelope::{ContractError, Envelope};
pub use messages::Message;
pub use schema::{SchemaError, Schemas};
pub use trace::TraceParent;
