//! Queries: request/reply over RabbitMQ's direct reply-to.
//!
//! The gateway owns no tables; it reads by asking the owning service. Each service consumes a
//! classic `<service>.queries` queue of its own ([`crate::topology::query_queue`]), so a read
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

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Consumer};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};
use uuid::Uuid;

use crate::{Bus, BusError};

/// The pseudo-queue a requester consumes its replies from.
pub const REPLY_TO: &str = "amq.rabbitmq.reply-to";
/// How long [`serve`] lets requests in hand finish after shutdown is asked for. A reply later
/// than this is useless anyway: requesters wait seconds, not more.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

const TRANSIENT: u8 = 1;
/// What the broker rewrites `reply_to` to: the pseudo-queue, a dot, then the channel's address.
const REPLY_TO_PREFIX: &str = "amq.rabbitmq.reply-to.";
/// AMQP short strings (queue names, `type`) hold at most 255 bytes.
const SHORT_STRING_MAX: usize = 255;
const JSON: &str = "application/json";
const MANDATORY: BasicPublishOptions = BasicPublishOptions {
    mandatory: true,
    immediate: false,
};

/// Why the owning service could not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RemoteCode {
    /// The thing asked for does not exist (HTTP 404).
    NotFound,
    /// The method is unknown or the parameters are wrong (HTTP 400).
    BadRequest,
    /// The service failed (HTTP 500; the message is for logs, not for clients).
    Internal,
}

impl RemoteCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotFound => "not_found",
            Self::BadRequest => "bad_request",
            Self::Internal => "internal",
        }
    }
}

impl std::fmt::Display for RemoteCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A query handler's refusal, sent back to the requester as it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct QueryError {
    pub code: RemoteCode,
    pub message: String,
}

impl QueryError {
    pub fn new(code: RemoteCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(RemoteCode::NotFound, message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(RemoteCode::BadRequest, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(RemoteCode::Internal, message)
    }
}

/// Why a query got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RpcError {
    /// Nobody answered in time (the service is down, slow or overloaded). Another try may work;
    /// the gateway answers 504.
    #[error("no reply from {queue} to {method} within {after:?}")]
    Timeout {
        queue: String,
        method: String,
        after: Duration,
    },
    /// The request could not be delivered: no such queue (or a name no queue can have), the
    /// queue is full, or no connection to the broker. The gateway answers 503.
    #[error("query service unavailable: {0}")]
    Unavailable(String),
    /// The service answered with an error: the gateway maps the code to a status.
    #[error("the service answered {code}: {message}")]
    Remote { code: RemoteCode, message: String },
    /// The reply was not what the protocol says: a bug on one side, never retried.
    #[error("malformed reply: {0}")]
    Protocol(String),
}

/// The reply body on the wire: `{"ok": value}` or `{"error": {"code", "message"}}`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Reply {
    Ok(Value),
    Error(QueryError),
}

fn decode_reply(body: &[u8]) -> Result<Value, RpcError> {
    match serde_json::from_slice::<Reply>(body) {
        Ok(Reply::Ok(value)) => Ok(value),
        Ok(Reply::Error(QueryError { code, message })) => Err(RpcError::Remote { code, message }),
        Err(error) => Err(RpcError::Protocol(error.to_string())),
    }
}

fn encode_reply(outcome: Result<Value, QueryError>) -> Vec<u8> {
    let reply = match outcome {
        Ok(value) => Reply::Ok(value),
        Err(error) => Reply::Error(error),
    };
    serde_json::to_vec(&reply).expect("a JSON value always serialises")
}

// ---------------------------------------------------------------------------------------------
// Client

/// Sends queries and waits for their replies. Cheap to clone; clones share one channel and one
/// reply reader, which stops when the last clone is dropped.
///
/// Confirms: the channel is in confirm mode. Direct reply-to works with confirms on RabbitMQ
/// 3.10 (the reply is delivered to the channel directly, whatever its mode), and confirms are
/// the only way lapin reports a `mandatory` return to the publisher: without them a returned
/// message is only stored for `wait_for_confirms`, so a request to a missing queue could not
/// fail fast. A confirm also turns a full queue (`reject-publish`) into an immediate nack.
#[derive(Clone)]
pub struct RpcClient {
    inner: Arc<Inner>,
}

struct Inner {
    bus: Bus,
    pending: Arc<Pending>,
    lane: Mutex<Arc<Lane>>,
    /// Held while a dead lane is being replaced, so concurrent requests open one channel.
    replacing: tokio::sync::Mutex<()>,
    next_lane: AtomicU64,
    /// Stops every reply reader when the last client is dropped.
    stop: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The reply channel and its reader. lapin recovers it through connection failures; it dies
/// only when the broker closes the channel itself (a channel error) or the connection is lost
/// for good, and is then replaced by a fresh one.
struct Lane {
    id: u64,
    channel: Channel,
    /// Cancelled when the lane is dead: its reader stops and its pending requests are released.
    dead: CancellationToken,
}

impl std::fmt::Debug for RpcClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lane = self.inner.current();
        f.debug_struct("RpcClient")
            .field("bus", &self.inner.bus)
            .field("channel", &lane.channel.id())
            .field("pending", &self.inner.pending.len())
            .finish()
    }
}

impl RpcClient {
    /// Opens the reply channel on `bus` and starts reading replies.
    pub async fn connect(bus: &Bus) -> Result<Self, BusError> {
        let pending = Arc::new(Pending::default());
        let stop = CancellationToken::new();
        let lane = open_lane(bus, 0, &pending, &stop).await?;
        Ok(Self {
            inner: Arc::new(Inner {
                bus: bus.clone(),
                pending,
                lane: Mutex::new(lane),
                replacing: tokio::sync::Mutex::new(()),
                next_lane: AtomicU64::new(1),
                stop,
            }),
        })
    }

    /// Asks `method` of the service consuming `queue` and waits up to `timeout` for its answer.
    pub async fn request(
        &self,
        queue: &str,
        method: &str,
        params: &Value,
        timeout: Duration,
    ) -> Result<Value, RpcError> {
        // Longer names cannot be queues, and lapin would write a corrupt frame for them.
        for (what, name) in [("queue", queue), ("method", method)] {
            if name.len() > SHORT_STRING_MAX {
                return Err(RpcError::Unavailable(format!(
                    "{what} name longer than {SHORT_STRING_MAX} bytes: {:?}...",
                    name.chars().take(32).collect::<String>()
                )));
            }
        }
        let body = serde_json::to_vec(params).expect("a JSON value always serialises");
        let deadline = Instant::now() + timeout;
        // Set while the broker is out of reach, so running out of time then says so.
        let mut trouble = None;
        let outcome = tokio::time::timeout_at(
            deadline,
            self.inner
                .exchange(queue, method, &body, deadline, &mut trouble),
        )
        .await;
        match outcome {
            Ok(result) => result,
            Err(_) => Err(match trouble {
                Some(reason) => RpcError::Unavailable(reason),
                None => RpcError::Timeout {
                    queue: queue.to_owned(),
                    method: method.to_owned(),
                    after: timeout,
                },
            }),
        }
    }

    /// Requests waiting for their reply right now (for metrics and tests).
    pub fn pending(&self) -> usize {
        self.inner.pending.len()
    }
}

impl Inner {
    fn current(&self) -> Arc<Lane> {
        Arc::clone(&self.lane.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The live lane, replacing a dead one.
    async fn lane(&self) -> Result<Arc<Lane>, RpcError> {
        let lane = self.current();
        if !lane.dead.is_cancelled() {
            return Ok(lane);
        }
        let _replacing = self.replacing.lock().await;
        let lane = self.current();
        if !lane.dead.is_cancelled() {
            return Ok(lane); // another request replaced it meanwhile
        }
        let id = self.next_lane.fetch_add(1, Ordering::Relaxed);
        let fresh = open_lane(&self.bus, id, &self.pending, &self.stop)
            .await
            .map_err(|error| RpcError::Unavailable(error.to_string()))?;
        info!(channel = fresh.channel.id(), "reply channel replaced");
        *self.lane.lock().unwrap_or_else(PoisonError::into_inner) = Arc::clone(&fresh);
        Ok(fresh)
    }

    /// Publishes the request and waits for its reply, sending it again after a connection
    /// failure. The caller bounds this with the deadline.
    async fn exchange(
        &self,
        queue: &str,
        method: &str,
        body: &[u8],
        deadline: Instant,
        trouble: &mut Option<String>,
    ) -> Result<Value, RpcError> {
        loop {
            let lane = self.lane().await?;
            // A fresh id per attempt: a late reply to an earlier attempt is simply unknown.
            let correlation_id = Uuid::now_v7().to_string();
            let (reply, replied) = oneshot::channel();
            let _waiting = self.pending.insert(&correlation_id, lane.id, reply);
            let expiration = deadline
                .saturating_duration_since(Instant::now())
                .as_millis()
                .max(1);
            let properties = BasicProperties::default()
                .with_correlation_id(correlation_id.as_str().into())
                .with_reply_to(REPLY_TO.into())
                .with_type(method.into())
                .with_expiration(expiration.to_string().as_str().into())
                .with_delivery_mode(TRANSIENT)
                .with_content_type(JSON.into());
            let confirmed = match lane
                .channel
                .basic_publish("".into(), queue.into(), MANDATORY, body, properties)
                .await
            {
                Ok(confirm) => confirm.await,
                Err(error) => Err(error),
            };
            match confirmed {
                Ok(Confirmation::Ack(None)) => *trouble = None,
                Ok(Confirmation::Ack(Some(returned))) => {
                    return Err(RpcError::Unavailable(format!(
                        "no queue {queue:?} takes queries ({})",
                        returned.reply_text
                    )));
                }
                Ok(Confirmation::Nack(_)) => {
                    return Err(RpcError::Unavailable(format!(
                        "{queue} refused the request (full?)"
                    )));
                }
                Ok(Confirmation::NotRequested) => {
                    return Err(RpcError::Unavailable(
                        "the reply channel is not in confirm mode".into(),
                    ));
                }
                Err(error) => {
                    warn!(%error, %queue, %method, "query not sent; waiting for the connection");
                    *trouble = Some(format!("connection to the broker lost: {error}"));
                    self.recover(&lane, error).await?;
                    continue;
                }
            }
            match replied.await {
                Ok(body) => return decode_reply(&body),
                // The lane died: its channel, and with it the reply's address, is gone.
                Err(_) => {
                    *trouble = Some("the reply channel was closed".into());
                }
            }
        }
    }

    /// After a failed publish: waits until `lane` is usable again, declares it dead so the
    /// next attempt opens a fresh one, or gives up if the request itself is at fault.
    async fn recover(&self, lane: &Lane, error: lapin::Error) -> Result<(), RpcError> {
        if lane.channel.wait_for_recovery(error.clone()).await.is_ok() {
            // lapin reports the channel recovered as soon as it is open again, before it has
            // re-registered the reply consumer; a request published in that instant makes
            // RabbitMQ close the channel ("fast reply consumer does not exist"). A round trip
            // first lets the re-registration go out ahead of the request. (`confirm.select` is
            // idempotent and, unlike `basic.qos`, adds nothing that lapin replays later.)
            let _ = lane
                .channel
                .confirm_select(ConfirmSelectOptions::default())
                .await;
            return Ok(());
        }
        let status = lane.channel.status();
        if status.reconnecting() {
            // The error carried no way to wait; the next publish returns one that does.
            return Ok(());
        }
        if status.connected() {
            // The channel is fine: the request itself could not be sent.
            return Err(RpcError::Unavailable(format!(
                "cannot send the request: {error}"
            )));
        }
        // Closed by a channel error (such as the one above, should the round trip not have
        // been enough), or the connection is lost for good.
        lane.dead.cancel();
        Ok(())
    }
}

async fn open_lane(
    bus: &Bus,
    id: u64,
    pending: &Arc<Pending>,
    stop: &CancellationToken,
) -> Result<Arc<Lane>, BusError> {
    let channel = bus.channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(BusError::amqp("confirm.select"))?;
    let replies = channel
        .basic_consume(
            REPLY_TO.into(),
            format!("{}@{REPLY_TO}", bus.name()).as_str().into(),
            BasicConsumeOptions {
                no_ack: true, // direct reply-to requires it
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(BusError::amqp("basic.consume"))?;
    let lane = Arc::new(Lane {
        id,
        channel,
        dead: CancellationToken::new(),
    });
    tokio::spawn(read_replies(
        Arc::clone(&lane),
        replies,
        Arc::clone(pending),
        stop.clone(),
    ));
    Ok(lane)
}

/// Hands each reply to its waiting request until the client is dropped or the lane dies.
async fn read_replies(
    lane: Arc<Lane>,
    mut replies: Consumer,
    pending: Arc<Pending>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            () = lane.dead.cancelled() => break,
            next = replies.next() => match next {
                Some(Ok(delivery)) => pending.complete(delivery),
                Some(Err(error)) => {
                    warn!(%error, "reply consumer interrupted; waiting for recovery");
                    let recovered = tokio::select! {
                        () = stop.cancelled() => break,
                        recovered = lane.channel.wait_for_recovery(error) => recovered,
                    };
                    if let Err(error) = recovered {
                        warn!(%error, "reply channel lost; the next request opens another");
                        break;
                    }
                }
                None => {
                    warn!("reply consumer cancelled; the next request opens another channel");
                    break;
                }
            }
        }
    }
    lane.dead.cancel();
    let released = pending.release_lane(lane.id);
    if released > 0 {
        debug!(released, "requests released from a dead reply channel");
    }
    if lane.channel.status().connected() {
        let _ = lane.channel.close(200, "reply channel done".into()).await;
    }
}

/// Requests waiting for a reply, by correlation id.
#[derive(Default)]
struct Pending(Mutex<HashMap<String, Waiter>>);

struct Waiter {
    lane: u64,
    reply: oneshot::Sender<Vec<u8>>,
}

/// Removes its entry when the request finishes, fails, times out or is dropped.
struct Waiting<'a> {
    pending: &'a Pending,
    correlation_id: &'a str,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.pending.lock().remove(self.correlation_id);
    }
}

impl Pending {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Waiter>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn insert<'a>(
        &'a self,
        correlation_id: &'a str,
        lane: u64,
        reply: oneshot::Sender<Vec<u8>>,
    ) -> Waiting<'a> {
        self.lock()
            .insert(correlation_id.to_owned(), Waiter { lane, reply });
        Waiting {
            pending: self,
            correlation_id,
        }
    }

    fn complete(&self, delivery: Delivery) {
        let Some(correlation_id) = delivery.properties.correlation_id().as_ref() else {
            warn!("reply without a correlation id dropped");
            return;
        };
        match self.lock().remove(correlation_id.as_str()) {
            // The requester may have given up since; nothing to do then.
            Some(waiter) => {
                let _ = waiter.reply.send(delivery.data);
            }
            None => debug!(%correlation_id, "late reply dropped"),
        }
    }

    /// Drops the waiters of a dead lane, so their requests try again on a fresh one.
    fn release_lane(&self, lane: u64) -> usize {
        let mut waiting = self.lock();
        let before = waiting.len();
        waiting.retain(|_, waiter| waiter.lane != lane);
        before - waiting.len()
    }

    fn len(&self) -> usize {
        self.lock().len()
    }
}

// ---------------------------------------------------------------------------------------------
// Server

/// Answers queries. Implementations only read; a query may arrive twice.
pub trait QueryHandler: Send + Sync + 'static {
    fn query(
        &self,
        method: &str,
        params: Value,
    ) -> impl Future<Output = Result<Value, QueryError>> + Send;
}

/// Answers the queries arriving on `queue` until `shutdown` is cancelled (then drains) or the
/// connection is lost for good. Up to `prefetch` queries are handled at once.
pub async fn serve<H: QueryHandler>(
    bus: &Bus,
    queue: &str,
    prefetch: u16,
    handler: Arc<H>,
    shutdown: CancellationToken,
) -> Result<(), BusError> {
    let prefetch = prefetch.max(1);
    let channel = bus.channel().await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .map_err(BusError::amqp("basic.qos"))?;
    let tag = format!("{}@{queue}", bus.name());
    let mut requests = channel
        .basic_consume(
            queue.into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(BusError::amqp("basic.consume"))?;
    info!(%queue, prefetch, "answering queries");

    let mut in_flight = JoinSet::new();
    let outcome = loop {
        tokio::select! {
            () = shutdown.cancelled() => break Ok(()),
            Some(joined) = in_flight.join_next(), if !in_flight.is_empty() => {
                if let Err(error) = joined {
                    error!(%error, "query task failed");
                }
            }
            next = requests.next() => match next {
                Some(Ok(delivery)) => {
                    in_flight.spawn(answer(
                        delivery,
                        channel.clone(),
                        queue.to_owned(),
                        Arc::clone(&handler),
                    ));
                }
                Some(Err(error)) => {
                    warn!(%error, %queue, "query consumer interrupted; waiting for recovery");
                    if let Err(error) = channel.wait_for_recovery(error).await {
                        break Err(BusError::Amqp { operation: "basic.consume", source: error });
                    }
                    info!(%queue, "query consumer recovered");
                }
                None => {
                    warn!(%queue, "the broker cancelled the query consumer");
                    break Ok(());
                }
            }
        }
    };

    let _ = channel
        .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
        .await;
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while in_flight.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(
            left = in_flight.len(),
            "grace period over; unanswered queries return to the queue"
        );
        in_flight.abort_all();
    }
    let _ = channel.close(200, "query server stopped".into()).await;
    info!(%queue, "stopped answering queries");
    outcome
}

/// Handles one request: run the handler, publish the reply, then ack.
async fn answer<H: QueryHandler>(
    delivery: Delivery,
    channel: Channel,
    queue: String,
    handler: Arc<H>,
) {
    let properties = &delivery.properties;
    let (Some(reply_to), Some(correlation_id)) = (
        properties.reply_to().clone(),
        properties.correlation_id().clone(),
    ) else {
        warn!(%queue, "query without reply_to or correlation_id dropped");
        return ack(&delivery).await;
    };
    // Replies go back through direct reply-to only: a `reply_to` naming an ordinary queue would
    // let a query drop messages into, say, a command queue.
    if !reply_to.as_str().starts_with(REPLY_TO_PREFIX) {
        warn!(%queue, reply_to = %reply_to, "query with a reply_to other than direct reply-to dropped");
        return ack(&delivery).await;
    }
    let method = properties
        .kind()
        .as_ref()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_default();
    let span = info_span!("query", %queue, %method, %correlation_id);
    async {
        let outcome = if method.is_empty() {
            Err(QueryError::bad_request(
                "the request has no method (AMQP type)",
            ))
        } else {
            match serde_json::from_slice::<Value>(&delivery.data) {
                Err(error) => Err(QueryError::bad_request(format!(
                    "parameters are not JSON: {error}"
                ))),
                Ok(params) => AssertUnwindSafe(handler.query(&method, params))
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|_| {
                        error!("query handler panicked");
                        Err(QueryError::internal("the query handler panicked"))
                    }),
            }
        };
        match &outcome {
            Ok(_) => debug!("answered"),
            Err(error) => debug!(%error, "answered with an error"),
        }
        let reply = BasicProperties::default()
            .with_correlation_id(correlation_id)
            .with_delivery_mode(TRANSIENT)
            .with_content_type(JSON.into());
        // Not mandatory: RabbitMQ delivers direct replies outside routing, so a mandatory reply
        // would come back as unroutable even when it arrived.
        let published = channel
            .basic_publish(
                "".into(),
                reply_to,
                BasicPublishOptions::default(),
                &encode_reply(outcome),
                reply,
            )
            .await;
        match published {
            // Without confirm mode this resolves at once; awaiting it keeps lapin from filing it
            // away as a dropped confirm.
            Ok(confirm) => {
                let _ = confirm.await;
            }
            // The ack below fails too, so the request is redelivered after recovery.
            Err(error) => warn!(%error, "cannot send the reply"),
        }
        ack(&delivery).await;
    }
    .instrument(span)
    .await;
}

async fn ack(delivery: &Delivery) {
    if let Err(error) = delivery.ack(BasicAckOptions::default()).await {
        warn!(%error, "ack failed; the query will be redelivered");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn replies_look_like_the_protocol_says() {
        assert_eq!(
            serde_json::from_slice::<Value>(&encode_reply(Ok(json!({"id": 7})))).unwrap(),
            json!({"ok": {"id": 7}})
        );
        assert_eq!(
            serde_json::from_slice::<Value>(&encode_reply(Err(QueryError::not_found(
                "no order 7"
            ))))
            .unwrap(),
            json!({"error": {"code": "not_found", "message": "no order 7"}})
        );
    }

    #[test]
    fn replies_decode_into_values_and_errors() {
        assert_eq!(decode_reply(br#"{"ok": null}"#), Ok(Value::Null));
        assert_eq!(
            decode_reply(br#"{"error": {"code": "bad_request", "message": "no id"}}"#),
            Err(RpcError::Remote {
                code: RemoteCode::BadRequest,
                message: "no id".into()
            })
        );
        for broken in [
            &br#"{"error": {"code": "teapot", "message": "?"}}"#[..],
            br#"{"value": 1}"#,
            b"not json",
        ] {
            assert!(matches!(decode_reply(broken), Err(RpcError::Protocol(_))));
        }
    }
}
