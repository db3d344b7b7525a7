//! Test fixtures shared by the saga CLI's test modules: the checkout definition, a clock, and
//! the log the engine would have written for a run of inputs.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use orchestrator::repo::LogEntry;
use saga::Definition;
use saga::machine::{self, Input, Outcome, Saga};
use serde_json::{Map, Value, json};
use sqlx::types::Json;
use sqlx::types::chrono::{DateTime, Utc};
use uuid::Uuid;

const CHECKOUT: &str = include_str!("../../../../sagas/checkout.toml");

pub(super) fn checkout() -> Definition {
    Definition::from_toml(CHECKOUT).unwrap()
}

pub(super) fn at(seconds: u64) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2025-03-01T12:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
        + Duration::from_secs(seconds)
}

fn reply(message_type: &str, payload: Value) -> Input {
    Input::Reply {
        message_type: message_type.into(),
        payload,
    }
}

/// Runs inputs through the definition the way the engine does and returns the log it would
/// have written and the saga it would have stored.
pub(super) fn record(definition: &Definition, inputs: &[(Input, u64)]) -> (Saga, Vec<LogEntry>) {
    let id = Uuid::now_v7();
    let mut saga: Option<Saga> = None;
    let mut log = Vec::new();
    for (seq, (input, when)) in inputs.iter().enumerate() {
        let (applied, note) = match (&saga, input) {
            (None, Input::Start { input }) => {
                let t = machine::start(definition, id, input.clone(), at(*when)).unwrap();
                saga = Some(t.saga);
                (true, t.note)
            }
            (Some(s), input) => match machine::apply(definition, s, input, at(*when)) {
                Outcome::Applied(t) => {
                    saga = Some(t.saga);
                    (true, t.note)
                }
                Outcome::Ignored(why) => (false, why),
            },
            (None, _) => panic!("start first"),
        };
        let current = saga.as_ref().unwrap();
        log.push(LogEntry {
            seq: i32::try_from(seq).unwrap() + 1,
            at: at(*when),
            input: Json(input.clone()),
            message_id: None,
            applied,
            note,
            commands: Json(json!([])),
            status: current.status.as_str().into(),
            version: current.version,
            definition_version: current.definition_version.clone(),
        });
    }
    (saga.unwrap(), log)
}

pub(super) fn start() -> Input {
    let mut input = Map::new();
    input.insert("order_id".into(), json!(Uuid::nil().to_string()));
    input.insert("customer_id".into(), json!("c-1"));
    input.insert("items".into(), json!([{"sku": "SKU-1", "quantity": 1}]));
    Input::Start { input }
}

/// A checkout whose payment is declined: compensated.
pub(super) fn declined() -> Vec<(Input, u64)> {
    vec![
        (start(), 0),
        (reply("order.evt.created", json!({})), 1),
        (
            reply("inventory.evt.reserved", json!({"total_cents": 1250})),
            2,
        ),
        (
            reply(
                "payment.evt.declined",
                json!({"reason": "insufficient funds"}),
            ),
            3,
        ),
        (
            reply("payment.evt.declined", json!({"reason": "duplicate"})),
            4,
        ),
        (reply("inventory.evt.released", json!({})), 5),
        (reply("order.evt.cancelled", json!({})), 6),
    ]
}
