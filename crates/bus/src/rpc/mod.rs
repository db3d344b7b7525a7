//! Queries: request/reply over RabbitMQ's direct reply-to.
//!
//! The gateway owns no tables; it reads by asking the owning service. Each service consumes a
//! classic `<service>.queries` queue of its own ([`contracts::Component::query_queue`]), so a read
//! never waits behind a backlog of commands.
//!
//! The protocol:
//!
//! - **Request**: published on the default exchange `""` with the queries queue as routing key,
//!   `mandatory` (a missing queue comes back at once instead of timing out), transient
//!   (delivery mode 1), `content_type` `application/json`, `type` = the method (`get_order`),
//!   `correlation_id` = a fresh UUID v7, `reply_to` = `amq.rabbitmq.reply-to` and `expiration` =
//!   the time the caller still waits, in milliseconds, so an unanswered request does not linger.
//!   The body is the JSON parameters.
//! - **Reply**: published by the server on the default exchange with the request's `reply_to`
//!   (the broker rewrote it to the requester's channel) as routing key and the same
//!   `correlation_id`; the body is `{"ok": <value>}` or
//!   `{"error": {"code": "not_found|bad_request|internal", "message": "..."}}`. A reply whose
//!   requester is gone is dropped by the broker.
//!
//! Direct reply-to ties replies to one channel: the client consumes the pseudo-queue
//! `amq.rabbitmq.reply-to` with `no_ack` and must publish its requests on that same channel.
//! [`RpcClient`] owns that channel, a map of pending correlation ids and a task that reads the
//! replies. The server side is [`serve`], a consumer loop like [`crate::consumer`], without
//! envelopes, retries or parking: a failed read is answered, never retried by the broker.
//!
//! Queries are reads, so sending one again is harmless: a request caught by a connection failure
//! is re-sent once the channel is back, within the caller's timeout.
//!
//! The modules:
//! - `protocol`: what travels on the wire, the reply body, and the errors on either side.
//! - `client`: [`RpcClient`], its reply channel and the reader that hands replies out.
//! - `pending`: the requests waiting for a reply, by correlation id.
//! - `server`: [`serve`] and the [`QueryHandler`] it calls.

mod client;
mod pending;
mod protocol;
mod server;

use std::time::Duration;

pub use self::client::RpcClient;
pub use self::protocol::{QueryError, RemoteCode, RpcError};
pub use self::server::{OneMethod, QueryHandler, serve};

/// The pseudo-queue a requester consumes its replies from.
pub const REPLY_TO: &str = "amq.rabbitmq.reply-to";
/// How long [`serve`] lets requests in hand finish after shutdown is asked for. A reply later
/// than this is useless anyway: requesters wait seconds, not more.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

const TRANSIENT: u8 = 1;
const JSON: &str = "application/json";
