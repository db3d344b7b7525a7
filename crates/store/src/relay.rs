//! The outbox relay: publishes committed outbox rows and deletes each one only after the broker
//! confirmed it.
//!
//! Two ways in:
//! - **Hand-off** (the hot path): a handler that just committed its outbox rows hands the same
//!   messages to its process's relay in memory ([`Handoff`]). The relay publishes them at once,
//!   batched with whatever else was handed meanwhile, and a marker task deletes the confirmed
//!   rows in batches. Such rows are written with a short lease, so no relay claims them while
//!   this is under way; if the process dies first, the lease runs out and the claim below
//!   publishes them.
//! - **Claim**: rows are claimed in commit order with `FOR UPDATE SKIP LOCKED`, so any number
//!   of relays can run against one schema without publishing a row twice at the same time or
//!   skipping one. `NOTIFY warren_outbox` (sent only for rows without a lease) wakes the relay;
//!   a slow poll catches anything missed and the rows whose lease ran out.
//!
//! A row the broker refuses keeps its place, records the error, and waits a growing back-off so
//! it never blocks the rows behind it. Confirms are awaited for at most
//! [`RelaySettings::confirm_timeout`]: a broker blocked by a memory or disk alarm accepts
//! publishes and confirms none, and a claim must not hold its row locks and its database
//! connection for as long as the alarm lasts. A batch not confirmed in time is refused like any
//! other, and a row the broker did take meanwhile is published twice, which the receiver's
//! inbox absorbs.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus::chaos::{Fate, Faults};
use bus::{Outgoing, PublishError, Publisher};
use chrono::{DateTime, Utc};
use contracts::Envelope;
use contracts::messages::Delivery;
use sqlx::postgres::PgListener;
use sqlx::{AssertSqlSafe, PgConnection, PgPool};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
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
    /// How long a handed-off row is left to the fast path before a claim may take it.
    pub lease: Duration,
    /// Hand-off batches published at once (each waits for its confirms).
    pub publishes_in_flight: usize,
    /// How long a batch waits for the broker's confirms. Past it the batch counts as not
    /// published: its rows are released (no lock or connection is held on a blocked broker)
    /// and tried again after their back-off.
    pub confirm_timeout: Duration,
}

/// How long the marker gathers confirmed ids before deleting their rows (far below any lease).
const DELETE_LINGER: Duration = Duration::from_millis(200);

/// How often a relay measures its backlog for the metrics.
const BACKLOG_INTERVAL: Duration = Duration::from_secs(5);

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            batch_size: 200,
            poll_interval: Duration::from_secs(1),
            retention: Duration::from_secs(7 * 24 * 3600),
            prune_interval: Duration::from_secs(60),
            lease: Duration::from_secs(5),
            publishes_in_flight: 4,
            confirm_timeout: Duration::from_secs(10),
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
    handoff: Handoff,
    /// Taken by the first `run`; a clone of the relay that runs later has no fast path.
    handed: Arc<Mutex<Option<mpsc::Receiver<Vec<Envelope>>>>>,
}

/// Hands messages a handler has just committed to the outbox to the relay that publishes them.
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct Handoff {
    lease: Duration,
    sender: mpsc::Sender<Vec<Envelope>>,
}

impl Handoff {
    /// How far ahead the outbox rows of handed-off messages must be made available.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Passes committed messages on; waits while the relay is that far behind. If the relay
    /// has stopped, the rows wait for their lease to run out and are claimed then.
    pub async fn hand(&self, messages: Vec<Envelope>) {
        if messages.is_empty() {
            return;
        }
        if self.sender.send(messages).await.is_err() {
            debug!("relay gone; the outbox rows go out when their lease ends");
        }
    }
}

/// Messages ready to publish, with what the relay needs to know about each (in step).
#[derive(Default)]
struct Batch {
    ids: Vec<Uuid>,
    types: Vec<String>,
    messages: Vec<Outgoing>,
}

impl Batch {
    fn push(&mut self, id: Uuid, message_type: String, message: Outgoing) {
        self.ids.push(id);
        self.types.push(message_type);
        self.messages.push(message);
    }
}

#[derive(Debug)]
struct Statements {
    claim: String,
    delete_published: String,
    mark_failed: String,
    prune_outbox: String,
    prune_inbox: String,
    backlog: String,
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
    step: Option<String>,
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
            step: self.step,
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
                 causation_id, producer, traceparent, step, schema_version, payload, \
                 created_at FROM {s}.outbox WHERE published_at IS NULL AND available_at <= now() \
                 ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED"
            ),
            delete_published: format!("DELETE FROM {s}.outbox WHERE message_id = ANY($1)"),
            mark_failed: format!(
                "UPDATE {s}.outbox o SET attempts = o.attempts + 1, last_error = r.error, \
                 available_at = now() + make_interval(secs => least(power(2, o.attempts), 60)) \
                 FROM UNNEST($1::uuid[], $2::text[]) AS r(message_id, error) \
                 WHERE o.message_id = r.message_id"
            ),
            // Rows published before deletion on publish (kept with `published_at`).
            prune_outbox: format!(
                "DELETE FROM {s}.outbox WHERE message_id IN (SELECT message_id FROM {s}.outbox \
                 WHERE published_at < now() - make_interval(secs => $1) LIMIT 10000)"
            ),
            prune_inbox: format!(
                "DELETE FROM {s}.inbox WHERE (consumer, message_id) IN (SELECT consumer, message_id \
                 FROM {s}.inbox WHERE received_at < now() - make_interval(secs => $1) LIMIT 10000)"
            ),
            backlog: format!(
                "SELECT count(*), extract(epoch FROM now() - min(created_at))::float8 \
                 FROM {s}.outbox WHERE published_at IS NULL"
            ),
        };
        let (sender, receiver) = mpsc::channel(1024);
        Self {
            schema,
            pool,
            publisher,
            handoff: Handoff {
                lease: settings.lease,
                sender,
            },
            settings,
            sql: Arc::new(sql),
            faults: None,
            handed: Arc::new(Mutex::new(Some(receiver))),
        }
    }

    /// Where handlers of this process hand their committed messages (see the module docs).
    pub fn handoff(&self) -> Handoff {
        self.handoff.clone()
    }

    /// Lets injected faults drop saga replies and double messages (chaos rehearsals only).
    #[must_use]
    pub fn with_faults(mut self, faults: Option<Arc<Faults>>) -> Self {
        self.faults = faults;
        self
    }

    /// Claims one batch, publishes it and deletes what the broker confirmed. Returns how many
    /// rows were claimed (published or not).
    pub async fn publish_batch(&self) -> Result<usize, StoreError> {
        let mut tx = self.pool.begin().await?;
        let rows: Vec<Row> = sqlx::query_as(AssertSqlSafe(self.sql.claim.as_str()))
            .bind(self.settings.batch_size)
            .fetch_all(&mut *tx)
            .await?;
        let claimed = rows.len();
        if claimed > 0 {
            let mut batch = Batch::default();
            for row in rows {
                let (id, message_type) = (row.message_id, row.message_type.clone());
                batch.push(id, message_type, row.outgoing());
            }
            let (published, refused) = self.publish(&batch).await;
            self.mark_refused(&mut tx, refused).await?;
            sqlx::query(AssertSqlSafe(self.sql.delete_published.as_str()))
                .bind(&published)
                .execute(&mut *tx)
                .await?;
            debug!(
                schema = self.schema,
                claimed,
                published = published.len(),
                "outbox batch"
            );
        }
        tx.commit().await?;
        Ok(claimed)
    }

    /// Publishes messages (as injected faults say, if any) and sorts them into the confirmed
    /// and the refused.
    async fn publish(&self, batch: &Batch) -> (Vec<Uuid>, Vec<(Uuid, PublishError)>) {
        let sending = async {
            match &self.faults {
                None => self.publisher.send_all(&batch.messages).await,
                Some(faults) => {
                    let fates: Vec<Fate> = batch.types.iter().map(|t| faults.fate(t)).collect();
                    self.send_with_faults(&batch.messages, &fates).await
                }
            }
        };
        let wait = self.settings.confirm_timeout;
        let results = match tokio::time::timeout(wait, sending).await {
            Ok(results) => results,
            Err(_) => {
                metrics::counter!("warren_outbox_confirm_timeouts_total", "schema" => self.schema)
                    .increment(1);
                batch
                    .ids
                    .iter()
                    .map(|_| Err(PublishError::TimedOut(wait)))
                    .collect()
            }
        };
        let mut published = Vec::with_capacity(batch.ids.len());
        let mut refused = Vec::new();
        for (&message_id, result) in batch.ids.iter().zip(results) {
            match result {
                Ok(()) => published.push(message_id),
                Err(error) => refused.push((message_id, error)),
            }
        }
        if let Some((message_id, error)) = refused.first() {
            let rows = refused.len();
            warn!(schema = self.schema, rows, %message_id, %error, "outbox rows not published");
        }
        (published, refused)
    }

    /// Records why rows were refused and backs them off, in one statement.
    async fn mark_refused(
        &self,
        db: &mut PgConnection,
        refused: Vec<(Uuid, PublishError)>,
    ) -> Result<(), sqlx::Error> {
        if refused.is_empty() {
            return Ok(());
        }
        let (ids, errors): (Vec<Uuid>, Vec<String>) = refused
            .into_iter()
            .map(|(id, error)| (id, error.to_string()))
            .unzip();
        sqlx::query(AssertSqlSafe(self.sql.mark_failed.as_str()))
            .bind(ids)
            .bind(errors)
            .execute(&mut *db)
            .await?;
        Ok(())
    }

    /// Publishes handed-off messages and passes the confirmed ids to the marker; refused rows
    /// are backed off like claimed ones. Live messages have no row: whatever becomes of them
    /// is only logged.
    async fn publish_handed(&self, handed: Vec<Envelope>, marks: mpsc::UnboundedSender<Vec<Uuid>>) {
        let mut batch = Batch::default();
        let mut live = HashSet::new();
        for message in handed {
            if message.delivery() == Delivery::Live {
                live.insert(message.message_id);
            }
            let outgoing = Outgoing::event(&message);
            batch.push(message.message_id, message.message_type, outgoing);
        }
        let (mut published, mut refused) = self.publish(&batch).await;
        if !live.is_empty() {
            published.retain(|id| !live.contains(id));
            refused.retain(|(id, _)| !live.contains(id));
        }
        if !published.is_empty() {
            let _ = marks.send(published);
        }
        if refused.is_empty() {
            return;
        }
        let marked = match self.pool.acquire().await {
            Ok(mut conn) => self.mark_refused(&mut conn, refused).await,
            Err(error) => Err(error),
        };
        if let Err(error) = marked {
            // Their lease runs out and a claim publishes them again.
            warn!(schema = self.schema, %error, "cannot record refused outbox rows");
        }
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

    /// Publishes until no row is waiting, or until `shutdown`: it is checked between batches,
    /// each of which takes at most the confirm timeout, so that a batch the broker took is
    /// also deleted before the relay stops.
    pub async fn drain(&self, shutdown: &CancellationToken) -> Result<(), StoreError> {
        while !shutdown.is_cancelled() {
            let claimed = self.publish_batch().await?;
            if i64::try_from(claimed).unwrap_or(i64::MAX) < self.settings.batch_size {
                break;
            }
        }
        Ok(())
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

    /// Sets the backlog gauges: rows not yet published, and how long the oldest has waited.
    async fn measure_backlog(&self) -> Result<(), StoreError> {
        let (rows, oldest): (i64, Option<f64>) =
            sqlx::query_as(AssertSqlSafe(self.sql.backlog.clone()))
                .fetch_one(&self.pool)
                .await?;
        #[allow(clippy::cast_precision_loss)] // a gauge; backlogs never near 2^52
        metrics::gauge!("warren_outbox_backlog", "schema" => self.schema).set(rows as f64);
        metrics::gauge!("warren_outbox_oldest_age_seconds", "schema" => self.schema)
            .set(oldest.unwrap_or(0.0));
        Ok(())
    }

    /// Runs until `shutdown`: publishes handed-off messages as they come, and drains claimable
    /// rows whenever a notification or the poll interval says so.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), StoreError> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(NOTIFY_CHANNEL).await?;
        let mut handed = self.handed.lock().expect("relay lock").take();
        let (marks, marked) = mpsc::unbounded_channel();
        let marker = tokio::spawn(delete_published(
            self.schema,
            self.pool.clone(),
            Arc::clone(&self.sql),
            marked,
            shutdown.clone(),
        ));
        let slots = Arc::new(Semaphore::new(self.settings.publishes_in_flight.max(1)));
        let mut publishing = JoinSet::new();
        info!(
            schema = self.schema,
            fast_path = handed.is_some(),
            "outbox relay running"
        );
        let mut next_drain = Instant::now();
        let mut next_prune = Instant::now();
        let mut next_gauge = Instant::now();
        loop {
            if Instant::now() >= next_drain {
                next_drain = Instant::now() + self.settings.poll_interval;
                if let Err(error) = self.drain(&shutdown).await {
                    error!(schema = self.schema, %error, "outbox relay round failed");
                }
            }
            if Instant::now() >= next_gauge {
                next_gauge = Instant::now() + BACKLOG_INTERVAL;
                if let Err(error) = self.measure_backlog().await {
                    debug!(schema = self.schema, %error, "cannot measure the outbox backlog");
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
                Some(batch) = next_handed(&mut handed, self.settings.batch_size) => {
                    let permit = Arc::clone(&slots).acquire_owned().await.expect("never closed");
                    let (relay, marks) = (self.clone(), marks.clone());
                    publishing.spawn(async move {
                        relay.publish_handed(batch, marks).await;
                        drop(permit);
                    });
                }
                Some(_) = publishing.join_next(), if !publishing.is_empty() => {}
                notification = listener.recv() => {
                    match notification {
                        Ok(_) => next_drain = Instant::now(),
                        Err(error) => {
                            // The listener reconnects on the next recv; the poll covers the gap.
                            warn!(%error, "outbox listener interrupted");
                            tokio::time::sleep(self.settings.poll_interval).await;
                        }
                    }
                }
                () = tokio::time::sleep_until(next_drain) => {}
            }
        }
        // What was handed over and not yet published goes out now; the rest waits for its lease.
        if let Some(mut handed) = handed {
            handed.close();
            while let Some(batch) = handed.recv().await {
                self.publish_handed(batch, marks.clone()).await;
            }
        }
        while publishing.join_next().await.is_some() {}
        drop(marks);
        let _ = marker.await;
        info!(schema = self.schema, "outbox relay stopped");
        Ok(())
    }
}

/// Waits for handed-off messages and takes up to about `limit` of them at once; never ready
/// when this relay has no fast path.
async fn next_handed(
    handed: &mut Option<mpsc::Receiver<Vec<Envelope>>>,
    limit: i64,
) -> Option<Vec<Envelope>> {
    let Some(receiver) = handed else {
        return std::future::pending().await;
    };
    let mut batch = receiver.recv().await?;
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    while batch.len() < limit {
        match receiver.try_recv() {
            Ok(more) => batch.extend(more),
            Err(_) => break,
        }
    }
    Some(batch)
}

/// Deletes confirmed hand-off rows, many per statement. Ids it cannot delete (database down at
/// shutdown) are left: their lease runs out and a claim publishes them again, which inboxes
/// absorb.
async fn delete_published(
    schema: &'static str,
    pool: PgPool,
    sql: Arc<Statements>,
    mut marked: mpsc::UnboundedReceiver<Vec<Uuid>>,
    shutdown: CancellationToken,
) {
    const MOST: usize = 5_000;
    while let Some(mut ids) = marked.recv().await {
        // Confirmed ids trickle in one batch at a time when the load is light: gather them for
        // a moment (far inside the lease) so one statement deletes many, not each its own
        // commit. Nothing waits on the deletion; a crash meanwhile only republishes rows.
        if ids.len() < MOST && !shutdown.is_cancelled() {
            tokio::select! {
                () = tokio::time::sleep(DELETE_LINGER) => {}
                () = shutdown.cancelled() => {}
            }
        }
        while ids.len() < MOST {
            match marked.try_recv() {
                Ok(more) => ids.extend(more),
                Err(_) => break,
            }
        }
        loop {
            match sqlx::query(AssertSqlSafe(sql.delete_published.as_str()))
                .bind(&ids)
                .execute(&pool)
                .await
            {
                Ok(_) => break,
                Err(error) if shutdown.is_cancelled() => {
                    warn!(schema, %error, left = ids.len(), "cannot delete published rows; a claim republishes them");
                    break;
                }
                Err(error) => {
                    warn!(schema, %error, "cannot delete published rows; trying again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}
