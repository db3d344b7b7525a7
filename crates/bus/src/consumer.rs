//! The consumer runner.
//!
//! For each delivery: decode the envelope, check its schema, run the handler, then decide
//! ([`crate::retry::dispose`]) to ack, to send it to a delayed retry tier, or to park it with the
//! reason. The handler commits its own transaction (inbox row, effect, outbox rows) before it
//! returns; the delivery is acked only after that, and after any retry or parking copy was
//! confirmed, so a crash anywhere leaves the message on the broker, never lost.
//!
//! Up to `prefetch` deliveries are handled at once. On shutdown the consumer is cancelled and
//! in-flight deliveries get a grace period to finish; whatever is left is redelivered.
//!
//! Who may put a message in the queue: whatever came through `warren` passed the broker's topic
//! permissions (a worker cannot publish another service's command there). Anything else came
//! straight into the queue, through the default exchange or a retry queue, where no routing key
//! is checked: it is taken only when its `user_id` (which the broker checks against the
//! publishing connection) is this consumer's own user (its retries) or a trusted one (the
//! operator's redrives), and parked otherwise. So the retry and parking copies carry this
//! consumer's user.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use contracts::{Envelope, Schemas, TraceParent, routing};
use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::FieldTable;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::field::Empty;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::chaos::Faults;
use crate::publisher::Outgoing;
use crate::retry::{Disposition, dispose};
use crate::{Bus, BusError, ConsumerQueue, Publisher, amqp};

/// What a handler says about a message it could not apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// Might work later (database unavailable, serialisation conflict): retried with back-off.
    #[error("transient failure: {0}")]
    Transient(String),
    /// Will never work (references something that does not exist, breaks a rule): parked.
    #[error("permanent failure: {0}")]
    Permanent(String),
}

/// Applies one message. Implementations commit their effects before returning `Ok`, and must be
/// idempotent per message id (the store's inbox does that).
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, message: Envelope) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// How to run one consumer.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    pub queue: ConsumerQueue,
    /// Deliveries in flight at once (AMQP prefetch).
    pub prefetch: u16,
    /// Consumer tag shown in the management UI.
    pub tag: String,
    /// How long in-flight handlers may run after shutdown is asked for.
    pub shutdown_grace: Duration,
    /// Injected faults, only in processes that allow them.
    pub faults: Option<Arc<Faults>>,
    /// Users besides this connection's own whose messages are taken when they did not come
    /// through `warren` (the operator, for redrives).
    pub trusted: Vec<String>,
}

impl ConsumerSpec {
    pub fn new(queue: ConsumerQueue, component: &str) -> Self {
        let tag = format!("{component}@{}", queue.name);
        Self {
            queue,
            prefetch: 32,
            tag,
            shutdown_grace: Duration::from_secs(10),
            faults: None,
            trusted: Vec::new(),
        }
    }

    #[must_use]
    pub fn with_trusted(mut self, users: impl IntoIterator<Item = String>) -> Self {
        self.trusted.extend(users);
        self
    }

    #[must_use]
    pub fn with_faults(mut self, faults: Option<Arc<Faults>>) -> Self {
        self.faults = faults;
        self
    }

    #[must_use]
    pub fn with_prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = prefetch.max(1);
        self
    }
}

/// Runs a consumer until `shutdown` is cancelled (then drains) or the connection is lost for
/// good.
pub async fn run<H: Handler>(
    bus: &Bus,
    spec: ConsumerSpec,
    schemas: Schemas,
    handler: Arc<H>,
    shutdown: CancellationToken,
) -> Result<(), BusError> {
    let channel = bus.channel().await?;
    channel
        .basic_qos(spec.prefetch, BasicQosOptions::default())
        .await
        .map_err(BusError::amqp("basic.qos"))?;
    let publisher = bus.publisher().await?;
    let mut deliveries = channel
        .basic_consume(
            spec.queue.name.as_str().into(),
            spec.tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(BusError::amqp("basic.consume"))?;
    info!(queue = %spec.queue.name, prefetch = spec.prefetch, "consuming");

    let mut trusted = spec.trusted.clone();
    trusted.push(bus.user().to_owned());
    let context = Arc::new(Context {
        user: bus.user().to_owned(),
        trusted,
        faults: spec.faults.clone(),
        queue: spec.queue.clone(),
        schemas,
        handler,
        publisher,
    });
    let mut in_flight = JoinSet::new();
    let outcome = loop {
        tokio::select! {
            () = shutdown.cancelled() => break Ok(()),
            Some(joined) = in_flight.join_next(), if !in_flight.is_empty() => {
                if let Err(error) = joined {
                    error!(%error, "message task failed");
                }
            }
            next = deliveries.next() => match next {
                Some(Ok(delivery)) => {
                    in_flight.spawn(process(delivery, Arc::clone(&context)));
                }
                Some(Err(error)) => {
                    warn!(%error, queue = %spec.queue.name, "consumer interrupted; waiting for recovery");
                    if let Err(error) = channel.wait_for_recovery(error).await {
                        break Err(BusError::Amqp { operation: "basic.consume", source: error });
                    }
                    info!(queue = %spec.queue.name, "consumer recovered");
                }
                None => {
                    warn!(queue = %spec.queue.name, "the broker cancelled the consumer");
                    break Ok(());
                }
            }
        }
    };

    // Stop new deliveries, let the ones in hand finish, then give back the rest.
    let _ = channel
        .basic_cancel(spec.tag.as_str().into(), BasicCancelOptions::default())
        .await;
    let drained = tokio::time::timeout(spec.shutdown_grace, async {
        while in_flight.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(
            left = in_flight.len(),
            "grace period over; unfinished messages will be redelivered"
        );
        in_flight.abort_all();
    }
    let _ = channel.close(200, "consumer stopped".into()).await;
    info!(queue = %spec.queue.name, "consumer stopped");
    outcome
}

struct Context<H> {
    /// This connection's user, which its retry and parking copies carry.
    user: String,
    /// Who may send a message that did not come through `warren`.
    trusted: Vec<String>,
    faults: Option<Arc<Faults>>,
    queue: ConsumerQueue,
    schemas: Schemas,
    handler: Arc<H>,
    publisher: Publisher,
}

/// Whether the queue may take this delivery: see the module's documentation.
fn admitted(delivery: &Delivery, trusted: &[String]) -> Result<(), String> {
    let exchange = delivery.exchange.as_str();
    if exchange == routing::EXCHANGE {
        return Ok(());
    }
    match delivery.properties.user_id() {
        Some(user) if trusted.iter().any(|t| t == user.as_str()) => Ok(()),
        sender => Err(format!(
            "untrusted sender: {} put it straight into the queue (through {}), which only this \
             consumer's retries and the operator's redrives may",
            sender
                .as_ref()
                .map_or_else(|| "an unnamed user".to_owned(), |u| format!("user {u}")),
            if exchange.is_empty() {
                "the default exchange".to_owned()
            } else {
                format!("exchange {exchange}")
            }
        )),
    }
}

async fn process<H: Handler>(delivery: Delivery, context: Arc<Context<H>>) {
    if let Err(reason) = admitted(&delivery, &context.trusted) {
        let message_type = delivery
            .properties
            .kind()
            .as_ref()
            .map_or_else(|| "unknown".to_owned(), ToString::to_string);
        return park(&delivery, &context, &message_type, "untrusted", &reason).await;
    }
    let envelope = amqp::decode(&delivery.properties, &delivery.data)
        .map_err(|e| ("undecodable", format!("cannot decode: {e}")))
        .and_then(|envelope| {
            context
                .schemas
                .validate(&envelope.message_type, &envelope.payload)
                .map(|()| envelope)
                .map_err(|e| ("invalid", e.to_string()))
        });
    let envelope = match envelope {
        Ok(envelope) => envelope,
        Err((kind, reason)) => {
            let message_type = delivery
                .properties
                .kind()
                .as_ref()
                .map_or_else(|| "unknown".to_owned(), ToString::to_string);
            return park(&delivery, &context, &message_type, kind, &reason).await;
        }
    };
    let span = info_span!(
        "message",
        queue = %context.queue.name,
        message_type = %envelope.message_type,
        message_id = %envelope.message_id,
        saga_id = envelope.correlation_id.map(|id| id.to_string()),
        trace_id = envelope.trace_id(),
        span_id = Empty,
        step = envelope.step.as_deref(),
        attempt = envelope.attempt,
    );
    // The handler sees this hop's own trace context, so what it sends names this hop as its
    // parent; a retry keeps the context the message came with.
    let incoming = envelope.traceparent.as_deref().and_then(TraceParent::parse);
    let handed = match hop(&span, incoming.as_ref()) {
        Some(own) => {
            span.record("span_id", format!("{:016x}", own.parent_id));
            Envelope {
                traceparent: Some(own.to_string()),
                ..envelope.clone()
            }
        }
        None => envelope.clone(),
    };
    let labels = [
        ("queue", context.queue.name.clone()),
        ("type", envelope.message_type.clone()),
    ];
    metrics::counter!("warren_messages_consumed_total", &labels).increment(1);
    async {
        let attempt = envelope.attempt;
        let started = Instant::now();
        let faults = context.faults.as_deref();
        if let Some(delay) = faults.and_then(|f| f.delay(&envelope.message_type)) {
            tokio::time::sleep(delay).await;
        }
        let outcome = if faults.is_some_and(|f| f.fails_compensation(&envelope.message_type)) {
            Err(HandlerError::Transient(
                "injected fault: compensation outage".into(),
            ))
        } else {
            AssertUnwindSafe(context.handler.handle(handed))
                .catch_unwind()
                .await
                .unwrap_or_else(|_| Err(HandlerError::Transient("handler panicked".into())))
        };
        metrics::histogram!("warren_handler_duration_seconds", &labels)
            .record(started.elapsed().as_secs_f64());
        match dispose(&outcome, attempt, &context.queue.retry) {
            Disposition::Ack => {
                debug!("handled");
                if faults.is_some_and(Faults::crashes) {
                    error!("injected fault: crashing after the commit, before the ack");
                    std::process::abort();
                }
                ack(&delivery).await;
            }
            Disposition::Retry { tier } => {
                let reason = outcome.err().map(|e| e.to_string()).unwrap_or_default();
                let retry_queue = context.queue.retry_queue(tier);
                let mut copy = Outgoing::to(
                    routing::RETRY_EXCHANGE,
                    &retry_queue,
                    &envelope.next_attempt(),
                );
                copy.body.clone_from(&delivery.data);
                // It comes back straight into the queue: signed by this consumer.
                copy.properties = copy.properties.with_user_id(context.user.as_str().into());
                match context.publisher.send(&copy).await {
                    Ok(()) => {
                        warn!(%reason, %retry_queue, "handler failed; retrying later");
                        metrics::counter!("warren_messages_retried_total", &labels).increment(1);
                        ack(&delivery).await;
                    }
                    Err(error) => {
                        error!(%error, "cannot schedule a retry; returning the message");
                        requeue(&delivery).await;
                    }
                }
            }
            Disposition::Park { kind, reason } => {
                park(
                    &delivery,
                    &context,
                    &envelope.message_type,
                    kind.as_str(),
                    &reason,
                )
                .await;
            }
        }
    }
    .instrument(span)
    .await;
}

/// The trace context of this hop: a child of the span that sent the message (with an
/// OpenTelemetry exporter, the exported message span itself, joined to that sender).
fn hop(span: &tracing::Span, incoming: Option<&TraceParent>) -> Option<TraceParent> {
    let incoming = incoming?;
    #[cfg(feature = "otel")]
    {
        crate::otel::join(span, incoming);
        if let Some(own) = crate::otel::context(span) {
            return Some(own);
        }
    }
    #[cfg(not(feature = "otel"))]
    let _ = span;
    Some(incoming.child())
}

/// Moves a delivery to its parking queue with the reason, verbatim otherwise. `kind` sorts
/// reasons for the metric: undecodable, invalid (schema), rejected (by the handler),
/// exhausted (out of retries).
async fn park<H>(
    delivery: &Delivery,
    context: &Context<H>,
    message_type: &str,
    kind: &'static str,
    reason: &str,
) {
    let queue = &context.queue.name;
    let copy = Outgoing {
        exchange: routing::DEAD_LETTER_EXCHANGE.to_owned(),
        routing_key: queue.clone(),
        // The broker refuses a `user_id` other than this connection's own.
        properties: amqp::parked_properties(&delivery.properties, queue, reason)
            .with_user_id(context.user.as_str().into()),
        body: delivery.data.clone(),
    };
    match context.publisher.send(&copy).await {
        Ok(()) => {
            warn!(%queue, %reason, "message parked");
            metrics::counter!(
                "warren_messages_parked_total",
                "queue" => queue.clone(),
                "type" => message_type.to_owned(),
                "reason" => kind,
            )
            .increment(1);
            ack(delivery).await;
        }
        Err(error) => {
            // The queue's delivery limit dead-letters it if this keeps failing.
            error!(%error, %queue, "cannot park a message; returning it");
            requeue(delivery).await;
        }
    }
}

async fn ack(delivery: &Delivery) {
    // A failed ack means the channel went away: the broker redelivers and the inbox dedupes.
    if let Err(error) = delivery.ack(BasicAckOptions::default()).await {
        warn!(%error, "ack failed; the message will be redelivered");
    }
}

async fn requeue(delivery: &Delivery) {
    let options = BasicNackOptions {
        multiple: false,
        requeue: true,
    };
    if let Err(error) = delivery.nack(options).await {
        warn!(%error, "nack failed; the message will be redelivered");
    }
}

#[cfg(test)]
mod tests {
    use super::admitted;
    use lapin::BasicProperties;
    use lapin::message::Delivery;

    fn delivery(exchange: &str, user: Option<&str>) -> Delivery {
        let mut delivery = Delivery::mock(1, exchange.into(), "k".into(), false, b"{}".to_vec());
        if let Some(user) = user {
            delivery.properties = BasicProperties::default().with_user_id(user.into());
        }
        delivery
    }

    #[test]
    fn only_warren_or_trusted_users_may_fill_a_queue() {
        let trusted = ["warren-order".to_owned(), "warren-operator".to_owned()];
        // Through `warren`, the broker's topic permissions decided.
        assert!(admitted(&delivery("warren", None), &trusted).is_ok());
        // A retry (dead-lettered back through the default exchange) or a redrive.
        assert!(admitted(&delivery("", Some("warren-order")), &trusted).is_ok());
        assert!(admitted(&delivery("", Some("warren-operator")), &trusted).is_ok());
        // Another component straight into the queue, with or without naming itself.
        let forged = admitted(&delivery("", Some("warren-payment")), &trusted).unwrap_err();
        assert!(forged.contains("user warren-payment"), "{forged}");
        assert!(admitted(&delivery("", None), &trusted).is_err());
        assert!(admitted(&delivery("warren.retry", None), &trusted).is_err());
    }
}
