//! The outbox relay: publishes committed outbox rows and marks them published only after the
//! broker confirmed them.
//!
//! Rows are claimed in commit order with `FOR UPDATE SKIP LOCKED`, so any number of relays can
//! run against one schema without publishing a row twice at the same time or skipping one. A
//! row the broker refuses keeps its place, records the error, and waits a growing back-off so it
//! never blocks the rows behind it. `NOTIFY warren_outbox` wakes the relay; a slow poll catches
//! anything missed (a notification lost with a dropped connection).

use std::sync::Arc;
use std::time::Duration;

use bus::chaos::{Fate, Faults};
use bus::{Outgoing, PublishError, Publisher};
use chrono::{DateTime, Utc};
use contracts::Envelope;
use sqlx::postgres::PgListener;
use sqlx::{AssertSqlSafe, PgPool};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};
use uuid::Uuid;

use crate::{StoreError, checked_schema};

/// The channel the outbox trigger notifies on.
pub const NOTIFY_CHANNEL: &str = "warren_outbox";

#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// Rows claimed and published per round trip.
    pub batch_size: i64,
    /// How often to look without a notification.
    pub poll_interval: Duration,
    /// How long published outbox rows and inbox rows are kept (longer than any retry or
    /// redrive, so a late duplicate still finds its inbox row).
    pub retention: Duration,
    pub prune_interval: Duration,
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            batch_size: 200,
            poll_interval: Duration::from_secs(1),
            retention: Duration::from_secs(7 * 24 * 3600),
            prune_interval: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Relay {
    schema: &'static str,
    pool: PgPool,
    publisher: Publisher,
    settings: RelaySettings,
    sql: Arc<Statements>,
    faults: Option<Arc<Faults>>,
}

#[derive(Debug)]
struct Statements {
    claim: String,
    mark_published: String,
    mark_failed: String,
    prune_outbox: String,
    prune_inbox: String,
}

#[derive(sqlx::FromRow)]
struct Row {
    message_id: Uuid,
    exchange: String,
    routing_key: String,
    message_type: String,
    correlation_id: Option<Uuid>,
    causation_id: Option<Uuid>,
    producer: String,
    traceparent: Option<String>,
    schema_version: i32,
    payload: serde_json::Value,
    created_at: DateTime<Utc>,
}

impl Row {
    fn outgoing(self) -> Outgoing {
        let envelope = Envelope {
            message_id: self.message_id,
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            message_type: self.message_type,
            producer: self.producer,
            timestamp: self.created_at,
            traceparent: self.traceparent,
            schema_version: u32::try_from(self.schema_version).unwrap_or(1),
            attempt: 1,
            payload: self.payload,
        };
        Outgoing::to(&self.exchange, &self.routing_key, &envelope)
    }
}

impl Relay {
    pub fn new(
        schema: &'static str,
        pool: PgPool,
        publisher: Publisher,
        settings: RelaySettings,
    ) -> Self {
        let s = checked_schema(schema);
        let sql = Statements {
            claim: format!(
                "SELECT message_id, exchange, routing_key, message_type, correlation_id, \
                 causation_id, producer, traceparent, schema_version, payload, created_at \
                 FROM {s}.outbox WHERE published_at IS NULL AND available_at <= now() \
                 ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED"
            ),
            mark_published: format!(
                "UPDATE {s}.outbox SET published_at = now() WHERE message_id = ANY($1)"
            ),
            mark_failed: format!(
                "UPDATE {s}.outbox SET attempts = attempts + 1, last_error = $2, \
                 available_at = now() + make_interval(secs => least(power(2, attempts), 60)) \
                 WHERE message_id = $1"
            ),
            prune_outbox: format!(
                "DELETE FROM {s}.outbox WHERE message_id IN (SELECT message_id FROM {s}.outbox \
                 WHERE published_at < now() - make_interval(secs => $1) LIMIT 10000)"
            ),
            prune_inbox: format!(
                "DELETE FROM {s}.inbox WHERE (consumer, message_id) IN (SELECT consumer, message_id \
                 FROM {s}.inbox WHERE received_at < now() - make_interval(secs => $1) LIMIT 10000)"
            ),
        };
        Self {
            schema,
            pool,
            publisher,
            settings,
            sql: Arc::new(sql),
            faults: None,
        }
    }

    /// Lets injected faults drop saga replies and double messages (chaos rehearsals only).
    #[must_use]
    pub fn with_faults(mut self, faults: Option<Arc<Faults>>) -> Self {
        self.faults = faults;
        self
    }

    /// Claims one batch, publishes it and marks what the broker confirmed. Returns how many
    /// rows were claimed (published or not).
    pub async fn publish_batch(&self) -> Result<usize, StoreError> {
        let mut tx = self.pool.begin().await?;
        let rows: Vec<Row> = sqlx::query_as(AssertSqlSafe(self.sql.claim.as_str()))
            .bind(self.settings.batch_size)
            .fetch_all(&mut *tx)
            .await?;
        if rows.is_empty() {
            tx.commit().await?;
            return Ok(0);
        }
        let claimed = rows.len();
        let ids: Vec<Uuid> = rows.iter().map(|r| r.message_id).collect();
        let fates: Option<Vec<Fate>> = self
            .faults
            .as_ref()
            .map(|faults| rows.iter().map(|r| faults.fate(&r.message_type)).collect());
        let messages: Vec<Outgoing> = rows.into_iter().map(Row::outgoing).collect();
        let results = match fates {
            None => self.publisher.send_all(&messages).await,
            Some(fates) => self.send_with_faults(&messages, &fates).await,
        };

        let mut published = Vec::with_capacity(claimed);
        for (id, result) in ids.into_iter().zip(results) {
            match result {
                Ok(()) => published.push(id),
                Err(error) => {
                    warn!(schema = self.schema, message_id = %id, %error, "outbox row not published");
                    sqlx::query(AssertSqlSafe(self.sql.mark_failed.as_str()))
                        .bind(id)
                        .bind(error.to_string())
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }
        sqlx::query(AssertSqlSafe(self.sql.mark_published.as_str()))
            .bind(&published)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        debug!(
            schema = self.schema,
            claimed,
            published = published.len(),
            "outbox batch"
        );
        Ok(claimed)
    }

    /// Publishes each message as its fate says; a dropped one counts as published.
    async fn send_with_faults(
        &self,
        messages: &[Outgoing],
        fates: &[Fate],
    ) -> Vec<Result<(), PublishError>> {
        let mut sends = Vec::with_capacity(messages.len());
        let mut owners = Vec::with_capacity(messages.len());
        for (i, (message, fate)) in messages.iter().zip(fates).enumerate() {
            let copies = match fate {
                Fate::Drop => 0,
                Fate::Publish => 1,
                Fate::Duplicate => 2,
            };
            for _ in 0..copies {
                sends.push(message.clone());
                owners.push(i);
            }
        }
        let mut results: Vec<Result<(), PublishError>> = messages.iter().map(|_| Ok(())).collect();
        for (owner, result) in owners
            .into_iter()
            .zip(self.publisher.send_all(&sends).await)
        {
            if result.is_err() {
                results[owner] = result;
            }
        }
        results
    }

    /// Publishes until no row is waiting.
    pub async fn drain(&self) -> Result<(), StoreError> {
        loop {
            let claimed = self.publish_batch().await?;
            if i64::try_from(claimed).unwrap_or(i64::MAX) < self.settings.batch_size {
                return Ok(());
            }
        }
    }

    /// Deletes published outbox rows and inbox rows older than the retention window.
    /// Returns how many rows went.
    pub async fn prune(&self) -> Result<u64, StoreError> {
        let retention = self.settings.retention.as_secs_f64();
        let mut removed = 0;
        for statement in [&self.sql.prune_outbox, &self.sql.prune_inbox] {
            loop {
                let done = sqlx::query(AssertSqlSafe(statement.as_str()))
                    .bind(retention)
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
                removed += done;
                if done < 10_000 {
                    break;
                }
            }
        }
        Ok(removed)
    }

    /// Runs until `shutdown`: drain, then sleep until a notification or the poll interval.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), StoreError> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(NOTIFY_CHANNEL).await?;
        info!(schema = self.schema, "outbox relay running");
        let mut next_prune = Instant::now();
        loop {
            if let Err(error) = self.drain().await {
                error!(schema = self.schema, %error, "outbox relay round failed");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(self.settings.poll_interval) => continue,
                }
            }
            if Instant::now() >= next_prune {
                match self.prune().await {
                    Ok(0) => {}
                    Ok(removed) => info!(
                        schema = self.schema,
                        removed, "pruned old outbox and inbox rows"
                    ),
                    Err(error) => warn!(schema = self.schema, %error, "pruning failed"),
                }
                next_prune = Instant::now() + self.settings.prune_interval;
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                notification = listener.recv() => {
                    if let Err(error) = notification {
                        // The listener reconnects on the next recv; the poll covers the gap.
                        warn!(%error, "outbox listener interrupted");
                        tokio::time::sleep(self.settings.poll_interval).await;
                    }
                }
                () = tokio::time::sleep(self.settings.poll_interval) => {}
            }
        }
        info!(schema = self.schema, "outbox relay stopped");
        Ok(())
    }
}
