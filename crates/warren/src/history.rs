//! Growing a database's history for `warren bench --history N`: the flat-cost target is about
//! throughput with a million finished sagas in the tables, and running a million real ones
//! first would take hours. Finished sagas already in the database serve as templates and are
//! copied under new ids, with their logs, in chunks; each service's inbox and the
//! notifications grow in the same proportion as they stand now. Copies keep the template's
//! order, so every invariant `warren chaos verify` checks still holds; orders, charges and
//! reservations themselves are not copied (their rows are ledger entries). Copied rows are
//! dated within the last six days, inside the pruning window, so they stay for the run.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use sqlx::{AssertSqlSafe, PgPool};

/// Sagas copied per transaction.
const CHUNK: i64 = 50_000;
/// Schemas whose inbox grows with history.
const INBOXES: [&str; 5] = ["sagas", "orders", "inventory", "payments", "notifications"];

#[derive(Debug, Serialize)]
pub struct Grown {
    /// Finished sagas in the tables after growing.
    pub finished_sagas: i64,
    /// How many were added now.
    pub added: i64,
    #[serde(skip)]
    pub took: Duration,
}

/// Copies finished sagas until at least `target` are in the tables.
pub async fn grow(pool: &PgPool, target: i64) -> anyhow::Result<Grown> {
    let started = Instant::now();
    let finished = finished_sagas(pool).await?;
    let want = target - finished;
    if want <= 0 {
        return Ok(Grown {
            finished_sagas: finished,
            added: 0,
            took: started.elapsed(),
        });
    }
    anyhow::ensure!(
        finished > 0,
        "no finished saga to copy: run a bench without --history first"
    );
    // Rows each finished saga left in each inbox and in the notifications, as they stand now.
    let mut ratios = Vec::new();
    for schema in INBOXES {
        let rows: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT count(*) FROM {schema}.inbox"
        )))
        .fetch_one(pool)
        .await?;
        ratios.push((format!("{schema}.inbox"), rows as f64 / finished as f64));
    }
    let notifications: i64 = sqlx::query_scalar("SELECT count(*) FROM notifications.notifications")
        .fetch_one(pool)
        .await?;
    let notification_ratio = notifications as f64 / finished as f64;

    let mut added = 0;
    while added < want {
        let chunk = CHUNK.min(want - added);
        let mut tx = pool.begin().await?;
        sqlx::query(COPY_SAGAS)
            .bind(chunk)
            .execute(&mut *tx)
            .await
            .context("copying sagas")?;
        for (table, ratio) in &ratios {
            sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO {table} (consumer, message_id, received_at) \
                 SELECT c.consumer, gen_random_uuid(), now() - interval '6 days' * random() \
                 FROM (SELECT DISTINCT consumer FROM {table}) c \
                 CROSS JOIN generate_series(1, $1) LIMIT $1"
            )))
            .bind(scaled(chunk, *ratio))
            .execute(&mut *tx)
            .await
            .with_context(|| format!("growing {table}"))?;
        }
        sqlx::query(COPY_NOTIFICATIONS)
            .bind(scaled(chunk, notification_ratio))
            .execute(&mut *tx)
            .await
            .context("copying notifications")?;
        tx.commit().await?;
        added += chunk;
        tracing::warn!(added, of = want, "growing history");
    }
    // What autovacuum would have done over the days this history took.
    let grown = [
        "sagas.sagas",
        "sagas.saga_log",
        "notifications.notifications",
    ]
    .into_iter()
    .chain(ratios.iter().map(|(table, _)| table.as_str()));
    for table in grown {
        sqlx::query(AssertSqlSafe(format!("VACUUM ANALYZE {table}")))
            .execute(pool)
            .await?;
    }
    Ok(Grown {
        finished_sagas: finished_sagas(pool).await?,
        added,
        took: started.elapsed(),
    })
}

fn scaled(sagas: i64, ratio: f64) -> i64 {
    (sagas as f64 * ratio).round() as i64
}

async fn finished_sagas(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM sagas.sagas WHERE status IN ('completed', 'compensated', 'failed')",
    )
    .fetch_one(pool)
    .await?)
}

/// `$1` copies of the first thousand finished sagas, round robin, with their logs.
const COPY_SAGAS: &str = "\
WITH template AS (
    SELECT * FROM sagas.sagas WHERE status IN ('completed', 'compensated')
    ORDER BY created_at LIMIT 1000
), copies AS MATERIALIZED (
    SELECT t.*, gen_random_uuid() AS copy_id, now() - interval '6 days' * random() AS copy_at
    FROM template t
    CROSS JOIN generate_series(1, ceil($1::float8 / (SELECT count(*) FROM template))::int)
    LIMIT $1
), sagas AS (
    INSERT INTO sagas.sagas (saga_id, definition, status, current_step, state, version,
                             deadline, request_hash, created_at, updated_at)
    SELECT copy_id, definition, status, current_step,
           jsonb_set(state, '{id}', to_jsonb(copy_id::text)), version, NULL, NULL,
           copy_at, copy_at
    FROM copies
)
INSERT INTO sagas.saga_log (saga_id, seq, at, input, message_id, applied, note, commands,
                            status, version, definition_version)
SELECT c.copy_id, l.seq, c.copy_at, l.input, gen_random_uuid(), l.applied, l.note, l.commands,
       l.status, l.version, l.definition_version
FROM copies c JOIN sagas.saga_log l ON l.saga_id = c.saga_id";

/// `$1` copies of delivered notifications, about facts of their own.
const COPY_NOTIFICATIONS: &str = "\
INSERT INTO notifications.notifications (notification_id, source_event, about, customer_id,
    kind, subject, message, created_at, delivered_at, channel, attempts, available_at)
SELECT gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), t.customer_id, t.kind,
       t.subject, t.message, t.at, t.at, 'log', 0, t.at
FROM (SELECT customer_id, kind, subject, message, now() - interval '6 days' * random() AS at
      FROM notifications.notifications WHERE delivered_at IS NOT NULL LIMIT 1000) t
CROSS JOIN generate_series(1, $1)
LIMIT $1";
