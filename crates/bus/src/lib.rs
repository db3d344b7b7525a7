//! Warren's RabbitMQ adapter, on lapin 4.x.
//!
//! - [`connection`]: one supervised connection per process, recovered automatically.
//! - [`publisher`]: confirmed, `mandatory` publishing; a return or a nack is an error.
//! - [`consumer`]: the consumer runner: bounded prefetch, ack after the handler committed,
//!   delayed retry tiers, parking with a reason, draining on shutdown.
//! - [`retry`]: the pure decision of what to do with a handled message.
//! - [`topology`]: exchanges, queues and bindings, declared from code or exported as
//!   `rabbitmq/definitions.json`.
//! - [`access`]: one broker user per component and one for operators, and what each may
//!   configure, write, read, publish and bind.
//! - [`chaos`]: injected faults, for processes started with the allow flag, and their
//!   control messages.
//! - [`amqp`]: the envelope's mapping onto AMQP properties and headers.
//! - [`rpc`]: queries, request/reply over direct reply-to: [`RpcClient`] for the gateway,
//!   [`rpc::serve`] for the owning services.
//! - `otel` (feature `otel`): message spans joined to their W3C trace for an OpenTelemetry
//!   exporter.

pub mod access;
pub mod amqp;
pub mod chaos;
pub mod connection;
pub mod consumer;
pub mod error;
#[cfg(feature = "otel")]
pub mod otel;
pub mod publisher;
pub mod retry;
pub mod rpc;
pub mod topology;

pub use access::{Access, Grant};
pub use connection::{Bus, BusSettings};
pub use consumer::{ConsumerSpec, Handler, HandlerError};
pub use error::{BusError, PublishError};
pub use publisher::Outgoing;
pub use publisher::Publisher;
pub use retry::{Disposition, Parked, RetryPolicy};
pub use rpc::{QueryError, QueryHandler, RemoteCode, RpcClient, RpcError};
pub use topology::{ConsumerQueue, Topology};
