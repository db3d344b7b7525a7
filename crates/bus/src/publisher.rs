//! Confirmed publishing. A message counts as sent only when the broker confirmed it (`ack`)
//! and did not return it as unroutable; anything else is an error the caller sees and acts on.
//! (A transient message, which feeds live views, is not `mandatory`: with no view listening
//! the broker drops it, and that is no error.)
//! After a connection failure the channel is recovered and the message re-sent, so a consumer
//! may see it twice; inboxes absorb that.

use std::collections::HashMap;

use contracts::{Envelope, routing};
use lapin::Confirmation;
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel};
use tracing::warn;

use crate::{PublishError, amqp};

/// How many connection recoveries one publish call waits through before giving up.
const MAX_RECOVERIES: usize = 8;

/// A channel in confirm mode. Cheap to clone; clones share the channel.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("channel", &self.channel.id())
            .finish()
    }
}

/// One message to publish, raw: where to, properties and body.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub exchange: String,
    pub routing_key: String,
    pub properties: BasicProperties,
    pub body: Vec<u8>,
}

impl Outgoing {
    /// An envelope on the `warren` exchange, routed by its type.
    pub fn event(envelope: &Envelope) -> Self {
        Self::to(routing::EXCHANGE, &envelope.message_type, envelope)
    }

    pub fn to(exchange: &str, routing_key: &str, envelope: &Envelope) -> Self {
        Self {
            exchange: exchange.to_owned(),
            routing_key: routing_key.to_owned(),
            properties: amqp::properties(envelope),
            body: amqp::body(envelope),
        }
    }
}

impl Publisher {
    pub(crate) fn new(channel: Channel) -> Self {
        Self { channel }
    }

    /// Publishes an envelope on the `warren` exchange and waits for its confirm.
    pub async fn publish(&self, envelope: &Envelope) -> Result<(), PublishError> {
        self.send(&Outgoing::event(envelope)).await
    }

    /// Publishes one message and waits for its confirm.
    pub async fn send(&self, message: &Outgoing) -> Result<(), PublishError> {
        self.send_all(std::slice::from_ref(message))
            .await
            .pop()
            .expect("one result per message")
    }

    /// Publishes every message, then waits for all confirms: one round trip for the batch.
    /// Returns one result per message, in order. Messages caught by a connection failure are
    /// re-sent once the channel has recovered.
    ///
    /// A refused publish (`ACCESS_REFUSED`: the user may not publish there) is not sent again:
    /// the broker closes the channel, which lapin does not reopen, so every message not yet
    /// confirmed is reported as [`PublishError::Refused`], with the broker's reason naming the
    /// exchange and key it refused. The publisher is unusable after that; permissions that
    /// refuse what a component sends are a deployment error, fixed by correcting them.
    pub async fn send_all(&self, messages: &[Outgoing]) -> Vec<Result<(), PublishError>> {
        let mut results: Vec<Option<Result<(), PublishError>>> =
            messages.iter().map(|_| None).collect();
        let mut pending: Vec<usize> = (0..messages.len()).collect();
        let mut recoveries = 0;
        while !pending.is_empty() {
            let mut in_flight = Vec::with_capacity(pending.len());
            let mut failure = None;
            for &i in &pending {
                let message = &messages[i];
                match self
                    .channel
                    .basic_publish(
                        message.exchange.as_str().into(),
                        message.routing_key.as_str().into(),
                        BasicPublishOptions {
                            mandatory: amqp::is_mandatory(&message.properties),
                            immediate: false,
                        },
                        &message.body,
                        message.properties.clone(),
                    )
                    .await
                {
                    Ok(confirm) => in_flight.push((i, confirm)),
                    Err(error) => {
                        failure.get_or_insert(error);
                        break;
                    }
                }
            }
            let mut confirmed = Vec::with_capacity(in_flight.len());
            for (i, confirm) in in_flight {
                match confirm.await {
                    Ok(confirmation) => confirmed.push((i, confirmation)),
                    Err(error) => {
                        failure.get_or_insert(error);
                    }
                }
            }
            for (i, verdict) in verdicts(messages, confirmed) {
                results[i] = Some(verdict);
            }
            // Everything not confirmed (failed or never sent) goes round again after recovery.
            pending.retain(|i| results[*i].is_none());
            let Some(error) = failure else { break };
            if is_refusal(&error) {
                warn!(%error, unconfirmed = pending.len(), "publish refused by the broker");
                for i in pending.drain(..) {
                    results[i] = Some(Err(PublishError::Refused(error.clone())));
                }
                break;
            }
            recoveries += 1;
            warn!(%error, unconfirmed = pending.len(), "publish interrupted; waiting for recovery");
            let recovered = if recoveries > MAX_RECOVERIES {
                Err(error)
            } else {
                self.channel.wait_for_recovery(error).await
            };
            if let Err(error) = recovered {
                for i in pending.drain(..) {
                    results[i] = Some(Err(PublishError::Connection(error.clone())));
                }
            }
        }
        for (message, result) in messages.iter().zip(&results) {
            if matches!(result, Some(Ok(()))) && message.exchange == routing::EXCHANGE {
                metrics::counter!("warren_messages_published_total", "type" => message.routing_key.clone())
                    .increment(1);
            }
        }
        results
            .into_iter()
            .map(|r| r.expect("every message has a result"))
            .collect()
    }
}

/// Whether the broker closed the channel because this user may not do what it asked.
fn is_refusal(error: &lapin::Error) -> bool {
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(amqp)
        if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED)))
}

/// What each confirmed message's fate was.
///
/// lapin hands a returned (unroutable) message to whichever confirm it completes next, and a
/// broker's `multiple` ack completes several in no set order: the return may come attached to
/// another message of the batch. So returns are matched to messages by message id; only a
/// message without one falls back to lapin's pairing.
fn verdicts(
    messages: &[Outgoing],
    confirmed: Vec<(usize, Confirmation)>,
) -> Vec<(usize, Result<(), PublishError>)> {
    let mut returned: HashMap<String, String> = HashMap::new();
    let mut confirmed_plain = Vec::with_capacity(confirmed.len());
    for (i, confirmation) in confirmed {
        let (acked, paired) = match confirmation {
            Confirmation::Ack(paired) => (Some(true), paired),
            Confirmation::Nack(paired) => (Some(false), paired),
            Confirmation::NotRequested => (None, None),
        };
        if let Some(paired) = &paired
            && let Some(id) = paired.properties.message_id()
        {
            returned.insert(id.to_string(), paired.reply_text.to_string());
        }
        confirmed_plain.push((i, acked, paired.map(|r| r.reply_text.to_string())));
    }
    confirmed_plain
        .into_iter()
        .map(|(i, acked, paired)| {
            let message = &messages[i];
            let unroutable = match message.properties.message_id() {
                Some(id) => returned.get(id.as_str()).cloned(),
                None => paired,
            };
            let verdict = match (acked, unroutable) {
                (None, _) => Err(PublishError::Unconfirmed),
                (Some(false), _) => Err(PublishError::Nacked {
                    exchange: message.exchange.clone(),
                    routing_key: message.routing_key.clone(),
                }),
                (Some(true), Some(reply)) => Err(PublishError::Unroutable {
                    exchange: message.exchange.clone(),
                    routing_key: message.routing_key.clone(),
                    reply,
                }),
                (Some(true), None) => Ok(()),
            };
            (i, verdict)
        })
        .collect()
}
