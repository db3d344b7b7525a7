//! The SQL of saga rows and saga logs.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use saga::history::Recorded;
use saga::machine::{Input, Saga};
use serde_json::Value;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

/// One row of a saga's log.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LogEntry {
    pub seq: i32,
    pub at: DateTime<Utc>,
    pub input: sqlx::types::Json<Input>,
    pub message_id: Option<Uuid>,
    pub applied: bool,
    pub note: String,
    pub commands: sqlx::types::Json<Value>,
    pub status: String,
    pub version: i64,
    /// The definition version the entry was applied under (none before versions were kept).
    pub definition_version: Option<String>,
}

impl LogEntry {
    /// The entry as the replay gate compares it ([`saga::history::fork`]).
    pub fn recorded(&self) -> Recorded<'_> {
        Recorded {
            input: &self.input.0,
            at: self.at,
            applied: self.applied,
            sent: sent_types(&self.commands.0),
            status: &self.status,
        }
    }
}

/// The message types of the commands a log entry sent (its `commands` column).
pub fn sent_types(commands: &Value) -> Vec<String> {
    commands
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["message_type"].as_str().map(str::to_owned))
        .collect()
}

/// Inserts a new saga; `false` when one with this id exists already.
pub async fn insert(
    tx: &mut PgConnection,
    saga: &Saga,
    request_hash: Option<&str>,
    traceparent: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO sagas.sagas (saga_id, definition, status, current_step, state, version, \
         deadline, request_hash, created_at, updated_at, traceparent) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (saga_id) DO NOTHING",
    )
    .bind(saga.id)
    .bind(&saga.definition)
    .bind(saga.status.as_str())
    .bind(saga.current_step().map(|s| s.name.as_str()))
    .bind(sqlx::types::Json(saga))
    .bind(saga.version)
    .bind(saga.deadline)
    .bind(request_hash)
    .bind(saga.created_at)
    .bind(saga.updated_at)
    .bind(traceparent)
    .execute(tx)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

/// The trace a saga was started in.
pub async fn traceparent(
    tx: &mut PgConnection,
    saga_id: Uuid,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT traceparent FROM sagas.sagas WHERE saga_id = $1")
        .bind(saga_id)
        .fetch_optional(tx)
        .await
        .map(Option::flatten)
}

/// Reads a saga without locking it.
pub async fn get<'e>(db: impl PgExecutor<'e>, saga_id: Uuid) -> Result<Option<Saga>, sqlx::Error> {
    let state: Option<sqlx::types::Json<Saga>> =
        sqlx::query_scalar("SELECT state FROM sagas.sagas WHERE saga_id = $1")
            .bind(saga_id)
            .fetch_optional(db)
            .await?;
    Ok(state.map(|s| s.0))
}

/// The request hash a saga was started with.
pub async fn request_hash<'e>(
    db: impl PgExecutor<'e>,
    saga_id: Uuid,
) -> Result<Option<Option<String>>, sqlx::Error> {
    sqlx::query_scalar("SELECT request_hash FROM sagas.sagas WHERE saga_id = $1")
        .bind(saga_id)
        .fetch_optional(db)
        .await
}

/// Newest first, optionally of one status and one definition.
pub async fn list<'e>(
    db: impl PgExecutor<'e>,
    status: Option<&str>,
    definition: Option<&str>,
    since: Option<DateTime<Utc>>,
    limit: i64,
) -> Result<Vec<Saga>, sqlx::Error> {
    let rows: Vec<sqlx::types::Json<Saga>> = sqlx::query_scalar(
        "SELECT state FROM sagas.sagas \
         WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR definition = $2) \
         AND ($3::timestamptz IS NULL OR created_at >= $3) \
         ORDER BY created_at DESC, saga_id DESC LIMIT $4",
    )
    .bind(status)
    .bind(definition)
    .bind(since)
    .bind(limit)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|r| r.0).collect())
}

/// Appends one entry to a saga's log.
#[allow(clippy::too_many_arguments)]
pub async fn append(
    tx: &mut PgConnection,
    saga: &Saga,
    at: DateTime<Utc>,
    input: &Input,
    message_id: Option<Uuid>,
    applied: bool,
    note: &str,
    commands: &Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO sagas.saga_log (saga_id, seq, at, input, message_id, applied, note, \
         commands, status, version, definition_version) \
         SELECT $1, coalesce(max(seq), 0) + 1, $2, $3, $4, $5, $6, $7, $8, $9, $10 \
         FROM sagas.saga_log WHERE saga_id = $1",
    )
    .bind(saga.id)
    .bind(at)
    .bind(sqlx::types::Json(input))
    .bind(message_id)
    .bind(applied)
    .bind(note)
    .bind(sqlx::types::Json(commands))
    .bind(saga.status.as_str())
    .bind(saga.version)
    .bind(saga.definition_version.as_deref())
    .execute(tx)
    .await?;
    Ok(())
}

/// A saga's whole log, in order.
pub async fn log<'e>(db: impl PgExecutor<'e>, saga_id: Uuid) -> Result<Vec<LogEntry>, sqlx::Error> {
    sqlx::query_as(
        "SELECT seq, at, input, message_id, applied, note, commands, status, version, \
                definition_version \
         FROM sagas.saga_log WHERE saga_id = $1 ORDER BY seq",
    )
    .bind(saga_id)
    .fetch_all(db)
    .await
}

/// Loads and locks the sagas of a group, in id order (so two groups wait rather than deadlock
/// on the sagas they share).
pub async fn lock_all(
    tx: &mut PgConnection,
    saga_ids: &[Uuid],
) -> Result<HashMap<Uuid, Saga>, sqlx::Error> {
    let states: Vec<sqlx::types::Json<Saga>> = sqlx::query_scalar(
        "SELECT state FROM sagas.sagas WHERE saga_id = ANY($1) ORDER BY saga_id FOR UPDATE",
    )
    .bind(saga_ids)
    .fetch_all(tx)
    .await?;
    Ok(states.into_iter().map(|s| (s.0.id, s.0)).collect())
}

/// A new saga for [`insert_all`].
#[derive(Debug)]
pub struct NewSaga<'a> {
    pub saga: &'a Saga,
    pub request_hash: Option<&'a str>,
    pub traceparent: Option<&'a str>,
}

/// Inserts new sagas in one statement; returns the ids inserted now (a saga that exists
/// already is a repeated request and is left alone).
pub async fn insert_all(
    tx: &mut PgConnection,
    sagas: &[NewSaga<'_>],
) -> Result<std::collections::HashSet<Uuid>, sqlx::Error> {
    if sagas.is_empty() {
        return Ok(std::collections::HashSet::new());
    }
    let inserted: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO sagas.sagas (saga_id, definition, status, current_step, state, version, \
         deadline, request_hash, created_at, updated_at, traceparent) \
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::jsonb[], \
                              $6::int8[], $7::timestamptz[], $8::text[], $9::timestamptz[], \
                              $10::timestamptz[], $11::text[]) \
         ON CONFLICT (saga_id) DO NOTHING RETURNING saga_id",
    )
    .bind(sagas.iter().map(|n| n.saga.id).collect::<Vec<_>>())
    .bind(
        sagas
            .iter()
            .map(|n| n.saga.definition.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        sagas
            .iter()
            .map(|n| n.saga.status.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        sagas
            .iter()
            .map(|n| n.saga.current_step().map(|s| s.name.as_str()))
            .collect::<Vec<_>>(),
    )
    .bind(
        sagas
            .iter()
            .map(|n| sqlx::types::Json(n.saga))
            .collect::<Vec<_>>(),
    )
    .bind(sagas.iter().map(|n| n.saga.version).collect::<Vec<_>>())
    .bind(sagas.iter().map(|n| n.saga.deadline).collect::<Vec<_>>())
    .bind(sagas.iter().map(|n| n.request_hash).collect::<Vec<_>>())
    .bind(sagas.iter().map(|n| n.saga.created_at).collect::<Vec<_>>())
    .bind(sagas.iter().map(|n| n.saga.updated_at).collect::<Vec<_>>())
    .bind(sagas.iter().map(|n| n.traceparent).collect::<Vec<_>>())
    .fetch_all(tx)
    .await?;
    Ok(inserted.into_iter().collect())
}

/// One entry of a saga's log, for [`save_all`].
#[derive(Debug)]
pub struct Entry {
    pub saga_id: Uuid,
    /// The definition version the input was applied under.
    pub definition_version: Option<String>,
    /// Where the entry goes after the saga's stored log: 1 for the first entry of this saga
    /// in the statement, 2 for the next. The log position itself is read by the statement
    /// that writes it, after this transaction holds the saga's lock, so it never comes from
    /// a snapshot older than the lock.
    pub offset: i32,
    pub at: DateTime<Utc>,
    pub input: Input,
    pub message_id: Option<Uuid>,
    pub applied: bool,
    pub note: String,
    pub commands: Value,
    pub status: String,
    pub version: i64,
}

/// Saves sagas after their transitions (each with the version it had when locked) and
/// appends the log entries of the group, in one statement; the rows must be locked by this
/// transaction.
pub async fn save_all(
    tx: &mut PgConnection,
    sagas: &[(&Saga, i64)],
    entries: &[Entry],
) -> Result<(), sqlx::Error> {
    if sagas.is_empty() && entries.is_empty() {
        return Ok(());
    }
    let mut ids = Vec::with_capacity(sagas.len());
    let mut statuses = Vec::with_capacity(sagas.len());
    let mut steps = Vec::with_capacity(sagas.len());
    let mut states = Vec::with_capacity(sagas.len());
    let mut versions = Vec::with_capacity(sagas.len());
    let mut deadlines = Vec::with_capacity(sagas.len());
    let mut updated = Vec::with_capacity(sagas.len());
    let mut was = Vec::with_capacity(sagas.len());
    for (saga, version_before) in sagas {
        ids.push(saga.id);
        statuses.push(saga.status.as_str());
        steps.push(saga.current_step().map(|s| s.name.as_str()));
        states.push(sqlx::types::Json(*saga));
        versions.push(saga.version);
        deadlines.push(saga.deadline);
        updated.push(saga.updated_at);
        was.push(*version_before);
    }
    let (saved, logged): (i64, i64) = sqlx::query_as(
        "WITH saved AS ( \
             UPDATE sagas.sagas s SET status = u.status, current_step = u.step, \
                    state = u.state, version = u.version, deadline = u.deadline, \
                    updated_at = u.updated_at \
             FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::jsonb[], $5::int8[], \
                         $6::timestamptz[], $7::timestamptz[], $8::int8[]) \
                  AS u(saga_id, status, step, state, version, deadline, updated_at, was) \
             WHERE s.saga_id = u.saga_id AND s.version = u.was RETURNING 1), \
         logged AS ( \
             INSERT INTO sagas.saga_log (saga_id, seq, at, input, message_id, applied, note, \
                                         commands, status, version, definition_version) \
             SELECT e.saga_id, coalesce((SELECT max(l.seq) FROM sagas.saga_log l \
                                         WHERE l.saga_id = e.saga_id), 0) + e.offset_by, \
                    e.at, e.input, e.message_id, e.applied, e.note, e.commands, e.status, \
                    e.version, e.definition_version \
             FROM UNNEST($9::uuid[], $10::int4[], $11::timestamptz[], $12::jsonb[], \
                         $13::uuid[], $14::bool[], $15::text[], $16::jsonb[], $17::text[], \
                         $18::int8[], $19::text[]) \
                  AS e(saga_id, offset_by, at, input, message_id, applied, note, commands, \
                       status, version, definition_version) \
             RETURNING 1) \
         SELECT (SELECT count(*) FROM saved), (SELECT count(*) FROM logged)",
    )
    .bind(ids)
    .bind(statuses)
    .bind(steps)
    .bind(states)
    .bind(versions)
    .bind(deadlines)
    .bind(updated)
    .bind(was)
    .bind(entries.iter().map(|e| e.saga_id).collect::<Vec<_>>())
    .bind(entries.iter().map(|e| e.offset).collect::<Vec<_>>())
    .bind(entries.iter().map(|e| e.at).collect::<Vec<_>>())
    .bind(
        entries
            .iter()
            .map(|e| sqlx::types::Json(&e.input))
            .collect::<Vec<_>>(),
    )
    .bind(entries.iter().map(|e| e.message_id).collect::<Vec<_>>())
    .bind(entries.iter().map(|e| e.applied).collect::<Vec<_>>())
    .bind(entries.iter().map(|e| e.note.as_str()).collect::<Vec<_>>())
    .bind(
        entries
            .iter()
            .map(|e| sqlx::types::Json(&e.commands))
            .collect::<Vec<_>>(),
    )
    .bind(
        entries
            .iter()
            .map(|e| e.status.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(entries.iter().map(|e| e.version).collect::<Vec<_>>())
    .bind(
        entries
            .iter()
            .map(|e| e.definition_version.as_deref())
            .collect::<Vec<_>>(),
    )
    .fetch_one(tx)
    .await?;
    if saved == sagas.len() as i64 && logged == entries.len() as i64 {
        Ok(())
    } else {
        // Cannot happen under the row locks; refuse rather than overwrite.
        Err(sqlx::Error::RowNotFound)
    }
}
