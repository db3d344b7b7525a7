//! Delivers messages to a participant as a consumer does: through its real
//! `store::Transactional` (inbox claim, the change, outbox rows, commit), with the bus's retry
//! tiers for transient failures, only shorter. What a delivery caused is read back from the
//! outbox it was written to and marked published, as the relay would. The inbox dedupes by
//! message id alone, so a command re-sent under a fresh message id reaches the handler again;
//! the same delivery twice does not.
//!
//! Generic over the handler: a participant's tests build their [`Service`] from its crate
//! (`Service::new(&pool, order::SCHEMA, order::handler(pool.clone()))`).

use std::sync::Arc;
use std::time::Duration;

use bus::{Disposition, Handler, HandlerError, RetryPolicy};
use chrono::{DateTime, Utc};
use contracts::{Envelope, Message, Schemas};
use sqlx::{AssertSqlSafe, PgPool};
use store::{Transactional, TxHandler};
use uuid::Uuid;

/// A consumer's handler with the schema its inbox and outbox live in. Cheap to clone.
#[derive(Debug)]
pub struct Service<H> {
    pool: PgPool,
    schema: &'static str,
    handler: Arc<Transactional<H>>,
}

impl<H> Clone for Service<H> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            schema: self.schema,
            handler: Arc::clone(&self.handler),
        }
    }
}

impl<H: TxHandler> Service<H> {
    /// `handler` must keep its inbox and outbox in `schema`.
    pub fn new(pool: &PgPool, schema: &'static str, handler: Transactional<H>) -> Self {
        Self {
            pool: pool.clone(),
            schema,
            handler: Arc::new(handler),
        }
    }

    pub fn inner(&self) -> &H {
        self.handler.inner()
    }
}

/// A command (or event) as the orchestrator sends it: fresh message id, a saga id.
pub fn send<M: Message>(message: &M) -> Envelope {
    Envelope::new("test", message).with_correlation(Uuid::now_v7())
}

/// The bus's tiers (`RetryPolicy::standard`, four attempts in all), waiting milliseconds
/// instead of seconds.
fn retry_policy() -> RetryPolicy {
    RetryPolicy::new([1, 5, 30].map(Duration::from_millis))
}

/// Delivers `message` to `service` as the consumer does and returns what this delivery caused,
/// as the relay would publish it. A transient failure is delivered again (attempt 2, 3, ...)
/// until the bus would park it; a failure returned here is one the bus parks. Every message
/// caused must pass its schema and carry the saga id of `message` (and, being found by it,
/// its causation).
pub async fn apply<H: TxHandler>(
    service: &Service<H>,
    message: &Envelope,
) -> Result<Vec<Envelope>, HandlerError> {
    let policy = retry_policy();
    let mut attempt = 1;
    loop {
        let delivery = Envelope {
            attempt,
            ..message.clone()
        };
        let outcome = service.handler.handle(delivery).await;
        match bus::retry::dispose(&outcome, attempt, &policy) {
            Disposition::Ack => break,
            Disposition::Retry { tier } => {
                eprintln!(
                    "{} attempt {attempt} failed, retrying: {outcome:?}",
                    message.message_type
                );
                tokio::time::sleep(policy.delays[tier]).await;
                attempt += 1;
            }
            Disposition::Park { .. } => {
                return Err(outcome.expect_err("only a failure is parked"));
            }
        }
    }
    let caused = publish(service, "causation_id", message.message_id).await;
    for reply in &caused {
        Schemas::embedded()
            .validate(&reply.message_type, &reply.payload)
            .unwrap_or_else(|e| panic!("{reply:?}: {e}"));
        assert_eq!(reply.correlation_id, message.correlation_id, "{reply:?}");
    }
    Ok(caused)
}

/// Publishes what the outbox of `service` holds for saga `saga_id` and nobody published yet:
/// what no delivery caused (a timeout, an operator's action).
pub async fn relay<H>(service: &Service<H>, saga_id: Uuid) -> Vec<Envelope> {
    publish(service, "correlation_id", saga_id).await
}

/// Marks the unpublished outbox rows whose `column` is `id` published and returns them in the
/// order they were written.
async fn publish<H>(service: &Service<H>, column: &'static str, id: Uuid) -> Vec<Envelope> {
    let sql = format!(
        "UPDATE {}.outbox SET published_at = now() \
         WHERE {column} = $1 AND published_at IS NULL \
         RETURNING seq, message_id, correlation_id, causation_id, message_type, producer, \
                   created_at, traceparent, step, schema_version, payload",
        service.schema
    );
    let mut rows: Vec<OutboxRow> = sqlx::query_as(AssertSqlSafe(sql))
        .bind(id)
        .fetch_all(&service.pool)
        .await
        .unwrap();
    rows.sort_by_key(|row| row.seq);
    rows.into_iter().map(OutboxRow::envelope).collect()
}

#[derive(sqlx::FromRow)]
struct OutboxRow {
    seq: i64,
    message_id: Uuid,
    correlation_id: Option<Uuid>,
    causation_id: Option<Uuid>,
    message_type: String,
    producer: String,
    created_at: DateTime<Utc>,
    traceparent: Option<String>,
    step: Option<String>,
    schema_version: i32,
    payload: serde_json::Value,
}

impl OutboxRow {
    fn envelope(self) -> Envelope {
        Envelope {
            message_id: self.message_id,
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            message_type: self.message_type,
            producer: self.producer,
            timestamp: self.created_at,
            traceparent: self.traceparent,
            step: self.step,
            schema_version: u32::try_from(self.schema_version).unwrap(),
            attempt: 1,
            payload: self.payload,
        }
    }
}

/// The one reply, decoded as `M` (fails the test if it is anything else).
pub fn only<M: Message>(replies: &[Envelope]) -> M {
    assert_eq!(replies.len(), 1, "expected one reply, got {replies:?}");
    replies[0]
        .decode::<M>()
        .unwrap_or_else(|e| panic!("expected {}, got {:?}: {e}", M::TYPE, replies[0]))
}

/// Sends `message` and returns its one reply as `M`.
pub async fn ask<H: TxHandler, M: Message, R: Message>(service: &Service<H>, message: &M) -> R {
    let replies = apply(service, &send(message)).await.unwrap();
    only(&replies)
}

/// Expects the handler to refuse `message` for good (the bus would park it).
pub async fn parked<H: TxHandler>(service: &Service<H>, message: &Envelope) -> String {
    match apply(service, message).await {
        Err(HandlerError::Permanent(reason)) => reason,
        other => panic!("expected a permanent failure, got {other:?}"),
    }
}

/// How often the inbox of `service` absorbed a second delivery of `message_id`.
pub async fn duplicates<H>(service: &Service<H>, consumer: &str, message_id: Uuid) -> i32 {
    let sql = format!(
        "SELECT duplicates FROM {}.inbox WHERE consumer = $1 AND message_id = $2",
        service.schema
    );
    sqlx::query_scalar(AssertSqlSafe(sql))
        .bind(consumer)
        .bind(message_id)
        .fetch_one(&service.pool)
        .await
        .unwrap()
}

/// A small deterministic generator, so a failing run can be replayed from its seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next number of the sequence (xorshift64*); named as `rand` names it, since `next`
    /// reads as `Iterator::next`.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `percent`%.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}
