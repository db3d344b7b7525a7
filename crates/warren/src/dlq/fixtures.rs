//! Parked messages for the dlq tests: a message as `warren` sends it, parked by the consumer
//! runner, and dead-lettered by the broker.

#![allow(clippy::unwrap_used)]

use bus::amqp;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString};
use serde_json::json;

use super::parked::X_DEATH;

pub(super) fn long(text: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(text.as_bytes().to_vec()))
}

pub(super) fn message() -> BasicProperties {
    let mut envelope = contracts::Envelope::raw(
        "test",
        "payment.cmd.set_balance",
        json!({"customer_id": "c-1", "balance_cents": 100}),
    )
    .with_correlation(uuid::Uuid::now_v7())
    .with_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    envelope.attempt = 4;
    amqp::properties(&envelope)
}

pub(super) fn parked_by_warren() -> BasicProperties {
    amqp::parked_properties(&message(), "payment.commands", "handler failed for good")
}

/// What the broker does on a delivery limit, history of an earlier retry included.
pub(super) fn parked_by_broker() -> BasicProperties {
    let death = |queue: &str, reason: &str, time: u64| {
        let mut table = FieldTable::default();
        table.insert("queue".into(), long(queue));
        table.insert("reason".into(), long(reason));
        table.insert("count".into(), AMQPValue::LongLongInt(1));
        table.insert("time".into(), AMQPValue::Timestamp(time));
        table.insert("exchange".into(), long(""));
        AMQPValue::FieldTable(table)
    };
    let original = message();
    let mut headers = original.headers().clone().unwrap();
    headers.insert(
        X_DEATH.into(),
        AMQPValue::FieldArray(FieldArray::from(vec![
            death("payment.commands", "delivery_limit", 1_800_000_000),
            death("payment.commands.retry.1", "expired", 1_700_000_000),
        ])),
    );
    headers.insert(
        "x-first-death-queue".into(),
        long("payment.commands.retry.1"),
    );
    headers.insert("x-delivery-count".into(), AMQPValue::LongLongInt(3));
    original.with_headers(headers)
}

pub(super) fn id(properties: &BasicProperties) -> String {
    properties.message_id().as_ref().unwrap().to_string()
}
