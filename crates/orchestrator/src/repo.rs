//! The SQL of saga rows and saga logs.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
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

/// Loads a saga and locks its row until the transaction ends.
pub async fn lock(tx: &mut PgConnection, saga_id: Uuid) -> Result<Option<Saga>, sqlx::Error> {
    let state: Option<sqlx::types::Json<Saga>> =
        sqlx::query_scalar("SELECT state FROM sagas.sagas WHERE saga_id = $1 FOR UPDATE")
            .bind(saga_id)
            .fetch_optional(tx)
            .await?;
    Ok(state.map(|s| s.0))
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

/// Saves a saga after a transition; the row must be locked by this transaction.
pub async fn update(tx: &mut PgConnection, saga: &Saga) -> Result<(), sqlx::Error> {
    let updated = sqlx::query(
        "UPDATE sagas.sagas SET status = $2, current_step = $3, state = $4, version = $5, \
         deadline = $6, updated_at = $7 WHERE saga_id = $1 AND version = $5 - 1",
    )
    .bind(saga.id)
    .bind(saga.status.as_str())
    .bind(saga.current_step().map(|s| s.name.as_str()))
    .bind(sqlx::types::Json(saga))
    .bind(saga.version)
    .bind(saga.deadline)
    .bind(saga.updated_at)
    .execute(tx)
    .await?;
    if updated.rows_affected() == 1 {
        Ok(())
    } else {
        // Cannot happen under the row lock; refuse rather than overwrite.
        Err(sqlx::Error::RowNotFound)
    }
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
         commands, status, version) \
         SELECT $1, coalesce(max(seq), 0) + 1, $2, $3, $4, $5, $6, $7, $8, $9 \
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
    .execute(tx)
    .await?;
    Ok(())
}

/// A saga's whole log, in order.
pub async fn log<'e>(db: impl PgExecutor<'e>, saga_id: Uuid) -> Result<Vec<LogEntry>, sqlx::Error> {
    sqlx::query_as(
        "SELECT seq, at, input, message_id, applied, note, commands, status, version \
         FROM sagas.saga_log WHERE saga_id = $1 ORDER BY seq",
    )
    .bind(saga_id)
    .fetch_all(db)
    .await
}

/// A saga of a group as locked: its state and where its log goes on (0 before any entry).
#[derive(Debug)]
pub struct Locked {
    pub saga: Saga,
    pub last_seq: i32,
}

/// Loads and locks the sagas of a group, in id order (so two groups wait rather than deadlock
/// on the sagas they share), each with the last position of its log, in one statement.
pub async fn lock_all(
    tx: &mut PgConnection,
    saga_ids: &[Uuid],
) -> Result<HashMap<Uuid, Locked>, sqlx::Error> {
    let rows: Vec<(sqlx::types::Json<Saga>, Option<i32>)> = sqlx::query_as(
        "SELECT s.state, (SELECT max(l.seq) FROM sagas.saga_log l WHERE l.saga_id = s.saga_id) \
         FROM sagas.sagas s WHERE s.saga_id = ANY($1) ORDER BY s.saga_id FOR UPDATE OF s",
    )
    .bind(saga_ids)
    .fetch_all(tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(state, last_seq)| {
            let saga = state.0;
            let locked = Locked {
                last_seq: last_seq.unwrap_or(0),
                saga,
            };
            (locked.saga.id, locked)
        })
        .collect())
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

/// Saves sagas after their transitions, each with the version it had when locked; the rows
/// must be locked by this transaction.
pub async fn update_all(tx: &mut PgConnection, sagas: &[(&Saga, i64)]) -> Result<(), sqlx::Error> {
    if sagas.is_empty() {
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
    let done = sqlx::query(
        "UPDATE sagas.sagas s SET status = u.status, current_step = u.step, state = u.state, \
         version = u.version, deadline = u.deadline, updated_at = u.updated_at \
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::jsonb[], $5::int8[], \
                     $6::timestamptz[], $7::timestamptz[], $8::int8[]) \
              AS u(saga_id, status, step, state, version, deadline, updated_at, was) \
         WHERE s.saga_id = u.saga_id AND s.version = u.was",
    )
    .bind(ids)
    .bind(statuses)
    .bind(steps)
    .bind(states)
    .bind(versions)
    .bind(deadlines)
    .bind(updated)
    .bind(was)
    .execute(tx)
    .await?;
    if done.rows_affected() == sagas.len() as u64 {
        Ok(())
    } else {
        // Cannot happen under the row locks; refuse rather than overwrite.
        Err(sqlx::Error::RowNotFound)
    }
}

/// One entry of a saga's log, for [`append_all`].
#[derive(Debug)]
pub struct Entry {
    pub saga_id: Uuid,
    pub seq: i32,
    pub at: DateTime<Utc>,
    pub input: Input,
    pub message_id: Option<Uuid>,
    pub applied: bool,
    pub note: String,
    pub commands: Value,
    pub status: String,
    pub version: i64,
}

/// Appends log entries of many sagas in one statement.
pub async fn append_all(tx: &mut PgConnection, entries: &[Entry]) -> Result<(), sqlx::Error> {
    if entries.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO sagas.saga_log (saga_id, seq, at, input, message_id, applied, note, \
         commands, status, version) \
         SELECT * FROM UNNEST($1::uuid[], $2::int4[], $3::timestamptz[], $4::jsonb[], \
                              $5::uuid[], $6::bool[], $7::text[], $8::jsonb[], $9::text[], \
                              $10::int8[])",
    )
    .bind(entries.iter().map(|e| e.saga_id).collect::<Vec<_>>())
    .bind(entries.iter().map(|e| e.seq).collect::<Vec<_>>())
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
    .execute(tx)
    .await?;
    Ok(())
}
