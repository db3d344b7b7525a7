//! The answering side: [`serve`] consumes a service's queries queue and answers each request
//! through its [`QueryHandler`], then acks it; a failed read is answered, never retried.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use serde_json::Value;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use super::protocol::encode_reply;
use super::{JSON, QueryError, SHUTDOWN_GRACE, TRANSIENT};
use crate::{Bus, BusError};

/// What the broker rewrites `reply_to` to: the pseudo-queue, a dot, then the channel's address.
const REPLY_TO_PREFIX: &str = "amq.rabbitmq.reply-to.";

/// Answers queries. Implementations only read; a query may arrive twice.
pub trait QueryHandler: Send + Sync + 'static {
    fn query(
        &self,
        method: &str,
        params: Value,
    ) -> impl Future<Output = Result<Value, QueryError>> + Send;
}

/// A query handler answering one method: its parameters decoded as `P` (a bad request when they
/// do not decode), answered by `read` given a clone of `state` (a pool, say). Every other method is
/// a bad request.
pub struct OneMethod<S, P, F> {
    method: &'static str,
    state: S,
    read: F,
    params: std::marker::PhantomData<fn() -> P>,
}

impl<S, P, F> OneMethod<S, P, F> {
    pub fn new(method: &'static str, state: S, read: F) -> Self {
        Self {
            method,
            state,
            read,
            params: std::marker::PhantomData,
        }
    }
}

impl<S, P, F> std::fmt::Debug for OneMethod<S, P, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OneMethod")
            .field("method", &self.method)
            .finish_non_exhaustive()
    }
}

impl<S, P, F, Fut> QueryHandler for OneMethod<S, P, F>
where
    S: Clone + Send + Sync + 'static,
    P: serde::de::DeserializeOwned + 'static,
    F: Fn(S, P) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Value, QueryError>> + Send,
{
    fn query(
        &self,
        method: &str,
        params: Value,
    ) -> impl Future<Output = Result<Value, QueryError>> + Send {
        let call = if method == self.method {
            QueryError::params(params).map(|params| (self.read)(self.state.clone(), params))
        } else {
            Err(QueryError::unknown_method(method))
        };
        async move { call?.await }
    }
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
