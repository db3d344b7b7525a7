//! Writing to the outbox inside the caller's transaction: the messages exist exactly when the
//! change that caused them committed.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use contracts::{Envelope, routing};
use sqlx::{AssertSqlSafe, PgConnection};
use uuid::Uuid;

use crate::checked_schema;

#[derive(Debug, Clone)]
pub struct Outbox {
    schema: &'static str,
    insert: Arc<str>,
}

impl Outbox {
    /// The outbox of one service schema.
    pub fn new(schema: &'static str) -> Self {
        let schema = checked_schema(schema);
        Self {
            schema,
            insert: format!(
                "INSERT INTO {schema}.outbox (message_id, exchange, routing_key, message_type, \
                 correlation_id, causation_id, producer, traceparent, schema_version, payload, \
                 created_at, step, available_at) \
                 SELECT *, now() + make_interval(secs => $13) FROM UNNEST($1::uuid[], \
                 $2::text[], $3::text[], $4::text[], $5::uuid[], $6::uuid[], $7::text[], \
                 $8::text[], $9::int4[], $10::jsonb[], $11::timestamptz[], $12::text[])"
            )
            .into(),
        }
    }

    pub fn schema(&self) -> &'static str {
        self.schema
    }

    /// Adds messages for the `warren` exchange, routed by their type.
    pub async fn write(
        &self,
        tx: &mut PgConnection,
        messages: &[Envelope],
    ) -> Result<(), sqlx::Error> {
        self.insert(tx, routing::EXCHANGE, messages, Duration::ZERO)
            .await
    }

    /// Adds messages that the caller hands to its relay after the commit
    /// ([`crate::relay::Handoff`]): no relay claims them before `lease` has passed.
    pub async fn write_leased<'m>(
        &self,
        tx: &mut PgConnection,
        messages: impl IntoIterator<Item = &'m Envelope>,
        lease: Duration,
    ) -> Result<(), sqlx::Error> {
        self.insert(tx, routing::EXCHANGE, messages, lease).await
    }

    /// Adds messages for another exchange (tests, special routes), routed by their type.
    pub async fn write_to(
        &self,
        tx: &mut PgConnection,
        exchange: &str,
        messages: &[Envelope],
    ) -> Result<(), sqlx::Error> {
        self.insert(tx, exchange, messages, Duration::ZERO).await
    }

    async fn insert<'m>(
        &self,
        tx: &mut PgConnection,
        exchange: &str,
        messages: impl IntoIterator<Item = &'m Envelope>,
        lease: Duration,
    ) -> Result<(), sqlx::Error> {
        let mut rows = Columns::default();
        for m in messages {
            rows.message_id.push(m.message_id);
            rows.exchange.push(exchange.to_owned());
            rows.routing_key.push(m.message_type.clone());
            rows.message_type.push(m.message_type.clone());
            rows.correlation_id.push(m.correlation_id);
            rows.causation_id.push(m.causation_id);
            rows.producer.push(m.producer.clone());
            rows.traceparent.push(m.traceparent.clone());
            rows.schema_version
                .push(i32::try_from(m.schema_version).unwrap_or(i32::MAX));
            rows.payload.push(m.payload.clone());
            rows.created_at.push(m.timestamp);
            rows.step.push(m.step.clone());
        }
        if rows.message_id.is_empty() {
            return Ok(());
        }
        sqlx::query(AssertSqlSafe(self.insert.clone()))
            .bind(rows.message_id)
            .bind(rows.exchange)
            .bind(rows.routing_key)
            .bind(rows.message_type)
            .bind(rows.correlation_id)
            .bind(rows.causation_id)
            .bind(rows.producer)
            .bind(rows.traceparent)
            .bind(rows.schema_version)
            .bind(rows.payload)
            .bind(rows.created_at)
            .bind(rows.step)
            .bind(lease.as_secs_f64())
            .execute(tx)
            .await?;
        Ok(())
    }
}

/// Column arrays for one multi-row insert.
#[derive(Default)]
struct Columns {
    message_id: Vec<Uuid>,
    exchange: Vec<String>,
    routing_key: Vec<String>,
    message_type: Vec<String>,
    correlation_id: Vec<Option<Uuid>>,
    causation_id: Vec<Option<Uuid>>,
    producer: Vec<String>,
    traceparent: Vec<Option<String>>,
    schema_version: Vec<i32>,
    payload: Vec<serde_json::Value>,
    created_at: Vec<DateTime<Utc>>,
    step: Vec<Option<String>>,
}
