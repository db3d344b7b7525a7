//! The envelope: what Warren knows about a message besides its payload.
//!
//! It maps one-to-one onto AMQP properties and headers (see `bus::amqp`) and onto outbox rows
//! (see `store::outbox`), so a message keeps its identity from the transaction that produced it
//! to every consumer that handles it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Message, TraceParent};

/// Why a message could not be built from or turned into its payload type.
#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    #[error("message type is {actual}, expected {expected}")]
    WrongType {
        expected: &'static str,
        actual: String,
    },
    #[error("payload of {message_type} does not decode: {source}")]
    Payload {
        message_type: String,
        #[source]
        source: serde_json::Error,
    },
}

/// A message with its metadata. The payload stays JSON until a handler asks for its type, so
/// routing, parking and auditing never need to know every payload type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Unique per message, UUID v7 so ids sort by creation time. Consumers dedupe on it.
    pub message_id: Uuid,
    /// The saga (or other conversation) this message belongs to.
    pub correlation_id: Option<Uuid>,
    /// The message whose handling produced this one.
    pub causation_id: Option<Uuid>,
    /// The routing key, `<service>.cmd.<name>` or `<service>.evt.<name>`.
    pub message_type: String,
    /// The producing component (AMQP `app_id`).
    pub producer: String,
    pub timestamp: DateTime<Utc>,
    /// W3C trace context, carried unchanged along a causation chain.
    pub traceparent: Option<String>,
    /// The saga step this message belongs to (AMQP header `x-saga-step`): set on the commands
    /// the orchestrator sends, carried back on their replies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    pub schema_version: u32,
    /// 1 on first delivery; each delayed retry publishes a copy with the next attempt.
    pub attempt: u32,
    pub payload: serde_json::Value,
}

impl Envelope {
    /// A fresh message of type `M`, with no causation.
    pub fn new<M: Message>(producer: &str, message: &M) -> Self {
        let payload =
            serde_json::to_value(message).expect("message types serialise to JSON infallibly");
        Self {
            schema_version: M::SCHEMA_VERSION,
            ..Self::raw(producer, M::TYPE, payload)
        }
    }

    /// A fresh message of a type known only by name (tools, tests, redrives).
    pub fn raw(producer: &str, message_type: &str, payload: serde_json::Value) -> Self {
        Self {
            message_id: Uuid::now_v7(),
            correlation_id: None,
            causation_id: None,
            message_type: message_type.to_owned(),
            producer: producer.to_owned(),
            timestamp: Utc::now(),
            traceparent: None,
            step: None,
            schema_version: 1,
            attempt: 1,
            payload,
        }
    }

    /// A message caused by `cause`: same correlation, trace and step, causation pointing at
    /// `cause`.
    pub fn caused_by<M: Message>(producer: &str, message: &M, cause: &Envelope) -> Self {
        Self {
            correlation_id: cause.correlation_id,
            causation_id: Some(cause.message_id),
            traceparent: cause.traceparent.clone(),
            step: cause.step.clone(),
            ..Self::new(producer, message)
        }
    }

    /// How this message travels ([`crate::messages::delivery`] of its type).
    pub fn delivery(&self) -> crate::messages::Delivery {
        crate::messages::delivery(&self.message_type)
    }

    /// The trace id of its `traceparent`, when it carries a valid one.
    pub fn trace_id(&self) -> Option<String> {
        self.traceparent
            .as_deref()
            .and_then(TraceParent::parse)
            .map(|t| t.trace_id_hex())
    }

    #[must_use]
    pub fn with_correlation(mut self, correlation_id: Uuid) -> Self {
        self.correlation_id = Some(correlation_id);
        self
    }

    #[must_use]
    pub fn with_step(mut self, step: impl Into<String>) -> Self {
        self.step = Some(step.into());
        self
    }

    #[must_use]
    pub fn with_traceparent(mut self, traceparent: impl Into<String>) -> Self {
        self.traceparent = Some(traceparent.into());
        self
    }

    /// The payload as `M`, refusing a message of another type.
    pub fn decode<M: Message>(&self) -> Result<M, ContractError> {
        if self.message_type != M::TYPE {
            return Err(ContractError::WrongType {
                expected: M::TYPE,
                actual: self.message_type.clone(),
            });
        }
        serde_json::from_value(self.payload.clone()).map_err(|source| ContractError::Payload {
            message_type: self.message_type.clone(),
            source,
        })
    }

    /// The same message for its next delivery attempt (same id, so inboxes still dedupe).
    #[must_use]
    pub fn next_attempt(&self) -> Self {
        Self {
            attempt: self.attempt + 1,
            ..self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{LineItem, OrderCreate};

    fn create() -> OrderCreate {
        OrderCreate {
            order_id: Uuid::now_v7(),
            customer_id: "c-1".into(),
            items: vec![LineItem {
                sku: "SKU-1".into(),
                quantity: 2,
            }],
        }
    }

    #[test]
    fn decode_returns_the_payload_of_the_right_type() {
        let message = create();
        let envelope = Envelope::new("test", &message);
        assert_eq!(envelope.message_type, "order.cmd.create");
        assert_eq!(envelope.attempt, 1);
        assert_eq!(envelope.decode::<OrderCreate>().unwrap(), message);
    }

    #[test]
    fn decode_refuses_another_type() {
        let envelope = Envelope::new("test", &create());
        let error = envelope
            .decode::<crate::messages::InventoryReserve>()
            .unwrap_err();
        assert!(matches!(error, ContractError::WrongType { .. }), "{error}");
    }

    #[test]
    fn a_caused_message_inherits_correlation_trace_and_step() {
        let saga = Uuid::now_v7();
        let cause = Envelope::new("gateway", &create())
            .with_correlation(saga)
            .with_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
            .with_step("create_order");
        let effect = Envelope::caused_by("order", &create(), &cause);
        assert_eq!(effect.step.as_deref(), Some("create_order"));
        assert_eq!(
            effect.trace_id().as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(effect.correlation_id, Some(saga));
        assert_eq!(effect.causation_id, Some(cause.message_id));
        assert_eq!(effect.traceparent, cause.traceparent);
        assert_ne!(effect.message_id, cause.message_id);
    }

    #[test]
    fn next_attempt_keeps_the_identity() {
        let envelope = Envelope::new("test", &create());
        let retry = envelope.next_attempt();
        assert_eq!(retry.message_id, envelope.message_id);
        assert_eq!(retry.attempt, 2);
    }
}
