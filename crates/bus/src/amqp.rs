//! The envelope on the wire: AMQP properties carry identity, headers carry the rest, the body
//! is the JSON payload.

use chrono::{DateTime, Utc};
use contracts::messages::Delivery;
use contracts::{Envelope, routing};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use uuid::Uuid;

const PERSISTENT: u8 = 2;
const TRANSIENT: u8 = 1;
const JSON: &str = "application/json";

/// Why a delivery is not a Warren message. Such a delivery is parked, never retried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("missing AMQP property {0}")]
    Missing(&'static str),
    #[error("property {property} is not a UUID: {value:?}")]
    NotUuid {
        property: &'static str,
        value: String,
    },
    #[error("header {header} is not a positive integer")]
    NotCount { header: &'static str },
    #[error("body is not JSON: {0}")]
    Body(String),
}

/// AMQP properties for a message: persistent (transient for [`Delivery::Live`] types), JSON,
/// identity in the standard properties.
pub fn properties(envelope: &Envelope) -> BasicProperties {
    let mut headers = FieldTable::default();
    if let Some(causation) = envelope.causation_id {
        headers.insert(
            routing::HEADER_CAUSATION_ID.into(),
            long_string(&causation.to_string()),
        );
    }
    if let Some(traceparent) = &envelope.traceparent {
        headers.insert(routing::HEADER_TRACEPARENT.into(), long_string(traceparent));
    }
    if let Some(step) = &envelope.step {
        headers.insert(routing::HEADER_STEP.into(), long_string(step));
    }
    headers.insert(
        routing::HEADER_SCHEMA_VERSION.into(),
        AMQPValue::LongLongInt(envelope.schema_version.into()),
    );
    headers.insert(
        routing::HEADER_ATTEMPT.into(),
        AMQPValue::LongLongInt(envelope.attempt.into()),
    );
    let mut properties = BasicProperties::default()
        .with_message_id(envelope.message_id.to_string().into())
        .with_type(envelope.message_type.as_str().into())
        .with_app_id(envelope.producer.as_str().into())
        .with_timestamp(u64::try_from(envelope.timestamp.timestamp()).unwrap_or_default())
        .with_content_type(JSON.into())
        .with_delivery_mode(match envelope.delivery() {
            Delivery::Durable => PERSISTENT,
            Delivery::Live => TRANSIENT,
        })
        .with_headers(headers);
    if let Some(correlation) = envelope.correlation_id {
        properties = properties.with_correlation_id(correlation.to_string().into());
    }
    properties
}

/// Whether a message is published `mandatory`: all but transient ones, which feed live views
/// that may have no listener at the moment.
pub fn is_mandatory(properties: &BasicProperties) -> bool {
    *properties.delivery_mode() != Some(TRANSIENT)
}

/// The JSON body of a message.
pub fn body(envelope: &Envelope) -> Vec<u8> {
    serde_json::to_vec(&envelope.payload).expect("a JSON value always serialises")
}

/// Reads a delivery back into an envelope.
pub fn decode(properties: &BasicProperties, body: &[u8]) -> Result<Envelope, DecodeError> {
    let message_id = uuid_property("message_id", properties.message_id().as_ref())?
        .ok_or(DecodeError::Missing("message_id"))?;
    let message_type = properties
        .kind()
        .as_ref()
        .ok_or(DecodeError::Missing("type"))?
        .to_string();
    let correlation_id = uuid_property("correlation_id", properties.correlation_id().as_ref())?;
    let empty = FieldTable::default();
    let headers = properties.headers().as_ref().unwrap_or(&empty);
    let causation_id = match header_text(headers, routing::HEADER_CAUSATION_ID) {
        Some(text) => Some(parse_uuid(routing::HEADER_CAUSATION_ID, &text)?),
        None => None,
    };
    let payload = serde_json::from_slice(body).map_err(|e| DecodeError::Body(e.to_string()))?;
    let timestamp = properties
        .timestamp()
        .and_then(|seconds| i64::try_from(seconds).ok())
        .and_then(|seconds| DateTime::<Utc>::from_timestamp(seconds, 0))
        .unwrap_or_else(Utc::now);
    Ok(Envelope {
        message_id,
        correlation_id,
        causation_id,
        message_type,
        producer: properties
            .app_id()
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        timestamp,
        traceparent: header_text(headers, routing::HEADER_TRACEPARENT),
        step: header_text(headers, routing::HEADER_STEP),
        schema_version: header_count(headers, routing::HEADER_SCHEMA_VERSION)?.unwrap_or(1),
        attempt: header_count(headers, routing::HEADER_ATTEMPT)?.unwrap_or(1),
        payload,
    })
}

/// Copies a delivery's properties for parking, adding why and from where.
pub fn parked_properties(original: &BasicProperties, queue: &str, reason: &str) -> BasicProperties {
    let mut headers = original.headers().clone().unwrap_or_default();
    headers.insert(routing::HEADER_PARKED_REASON.into(), long_string(reason));
    headers.insert(routing::HEADER_PARKED_FROM.into(), long_string(queue));
    original
        .clone()
        .with_headers(headers)
        .with_delivery_mode(PERSISTENT)
}

/// A header as text, whatever string type the producer used.
pub fn header_text(headers: &FieldTable, name: &str) -> Option<String> {
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

fn header_count(headers: &FieldTable, header: &'static str) -> Result<Option<u32>, DecodeError> {
    let Some(value) = headers.inner().get(header) else {
        return Ok(None);
    };
    let number: Option<i128> = match value {
        AMQPValue::ShortShortInt(n) => Some((*n).into()),
        AMQPValue::ShortShortUInt(n) => Some((*n).into()),
        AMQPValue::ShortInt(n) => Some((*n).into()),
        AMQPValue::ShortUInt(n) => Some((*n).into()),
        AMQPValue::LongInt(n) => Some((*n).into()),
        AMQPValue::LongUInt(n) => Some((*n).into()),
        AMQPValue::LongLongInt(n) => Some((*n).into()),
        _ => None,
    };
    number
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| *n > 0)
        .map(Some)
        .ok_or(DecodeError::NotCount { header })
}

fn uuid_property(
    property: &'static str,
    value: Option<&ShortString>,
) -> Result<Option<Uuid>, DecodeError> {
    value.map(|v| parse_uuid(property, v.as_str())).transpose()
}

fn parse_uuid(property: &'static str, value: &str) -> Result<Uuid, DecodeError> {
    Uuid::parse_str(value).map_err(|_| DecodeError::NotUuid {
        property,
        value: value.chars().take(64).collect(),
    })
}

fn long_string(text: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(text.as_bytes().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use contracts::messages::{LineItem, OrderCreate};

    fn envelope() -> Envelope {
        let cause = Envelope::new(
            "gateway",
            &OrderCreate {
                order_id: Uuid::now_v7(),
                customer_id: "c-1".into(),
                items: vec![LineItem {
                    sku: "SKU-1".into(),
                    quantity: 1,
                }],
            },
        )
        .with_correlation(Uuid::now_v7())
        .with_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let mut envelope =
            Envelope::caused_by("order", &cause.decode::<OrderCreate>().unwrap(), &cause);
        envelope.attempt = 3;
        envelope
    }

    #[test]
    fn an_envelope_survives_the_wire() {
        let sent = envelope();
        let mut received = decode(&properties(&sent), &body(&sent)).unwrap();
        // AMQP timestamps have whole seconds.
        assert_eq!(received.timestamp.timestamp(), sent.timestamp.timestamp());
        received.timestamp = sent.timestamp;
        assert_eq!(received, sent);
    }

    #[test]
    fn messages_are_persistent_json() {
        let properties = properties(&envelope());
        assert_eq!(*properties.delivery_mode(), Some(PERSISTENT));
        assert!(is_mandatory(&properties));
        assert_eq!(properties.content_type().as_ref().unwrap().as_str(), JSON);
    }

    #[test]
    fn live_messages_are_transient_and_not_mandatory() {
        let live = Envelope::raw("orchestrator", "saga.evt.updated", serde_json::json!({}));
        let properties = properties(&live);
        assert_eq!(*properties.delivery_mode(), Some(TRANSIENT));
        assert!(!is_mandatory(&properties));
    }

    #[test]
    fn foreign_messages_are_refused_with_a_reason() {
        let sent = envelope();
        let no_id = BasicProperties::default().with_type("order.cmd.create".into());
        assert_eq!(
            decode(&no_id, b"{}"),
            Err(DecodeError::Missing("message_id"))
        );
        let bad_id = properties(&sent).with_message_id("42".into());
        assert!(matches!(
            decode(&bad_id, b"{}"),
            Err(DecodeError::NotUuid {
                property: "message_id",
                ..
            })
        ));
        assert!(matches!(
            decode(&properties(&sent), b"{not json"),
            Err(DecodeError::Body(_))
        ));
    }

    #[test]
    fn parking_keeps_the_headers_and_adds_the_reason() {
        let original = properties(&envelope());
        let parked = parked_properties(&original, "order.commands", "body is not JSON");
        let headers = parked.headers().as_ref().unwrap();
        assert_eq!(
            header_text(headers, routing::HEADER_PARKED_REASON).as_deref(),
            Some("body is not JSON")
        );
        assert_eq!(
            header_text(headers, routing::HEADER_PARKED_FROM).as_deref(),
            Some("order.commands")
        );
        assert!(headers.contains_key(routing::HEADER_ATTEMPT));
        assert_eq!(parked.message_id(), original.message_id());
    }
}
