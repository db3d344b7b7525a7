//! What the orchestrator's tests share: the checkout definition, messages, and handling them
//! in a transaction of their own.

#![allow(dead_code)] // each test binary uses some of these
#![allow(clippy::unwrap_used)] // helpers of a test panic to fail it

use std::sync::Arc;
use std::time::Duration;

use contracts::Envelope;
use contracts::messages::SagaStart;
use orchestrator::{Clock, Engine, repo};
use saga::Definition;
use saga::machine::SagaStatus;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

pub fn checkout() -> Definition {
    Definition::from_toml(include_str!("../../../../sagas/checkout.toml")).unwrap()
}

/// Checkout with timeouts short enough to pass during a test.
pub fn hasty_checkout() -> Definition {
    let mut definition = checkout();
    for step in &mut definition.steps {
        step.timeout = Some(Duration::from_millis(20));
        step.attempts = 1;
    }
    definition
}

/// An engine on a machine whose clock runs an hour behind the database's and was never
/// synced: every deadline it writes has passed already, so sweeps find work without waiting.
pub fn overdue(engine: Engine) -> Engine {
    engine.with_clock(Arc::new(Clock::skewed(chrono::Duration::hours(-1))))
}

pub fn start_message(saga_id: Uuid) -> Envelope {
    let Value::Object(input) = json!({"order_id": Uuid::now_v7(), "customer_id": "c-1",
                                      "items": [{"sku": "SKU-1", "quantity": 1}]})
    else {
        unreachable!()
    };
    Envelope::new(
        "gateway",
        &SagaStart {
            saga_id,
            saga: "checkout".into(),
            input,
            request_hash: Some("h1".into()),
        },
    )
}

pub fn reply(saga_id: Uuid, message_type: &str, payload: Value) -> Envelope {
    Envelope::raw("test", message_type, payload).with_correlation(saga_id)
}

pub async fn handle(engine: &Engine, pool: &PgPool, message: &Envelope) -> Vec<Envelope> {
    let mut tx = pool.begin().await.unwrap();
    let out = store::TxHandler::apply(engine, &mut tx, message)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    out
}

pub fn types(messages: &[Envelope]) -> Vec<&str> {
    messages.iter().map(|m| m.message_type.as_str()).collect()
}

pub async fn handle_group(engine: &Engine, pool: &PgPool, messages: &[&Envelope]) -> Vec<Envelope> {
    let mut tx = pool.begin().await.unwrap();
    let out = store::TxHandler::apply_all(engine, &mut tx, messages)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    out
}

/// Sets a field of a saga's stored state, as a hand edit or an old bug might have.
pub async fn tamper(pool: &PgPool, saga_id: Uuid, field: &str, value: Value) {
    sqlx::query("UPDATE sagas.sagas SET state = jsonb_set(state, $2, $3) WHERE saga_id = $1")
        .bind(saga_id)
        .bind(vec![field.to_owned()])
        .bind(value)
        .execute(pool)
        .await
        .unwrap();
}

pub async fn status_of(pool: &PgPool, saga_id: Uuid) -> (SagaStatus, Option<String>) {
    let saga = repo::get(pool, saga_id).await.unwrap().unwrap();
    (saga.status, saga.error)
}
