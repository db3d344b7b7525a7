//! Every saga input as one transaction.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use bus::HandlerError;
use chrono::{DateTime, Utc};
use contracts::messages::{SagaStart, SagaUpdated};
use contracts::{Envelope, Message};
use saga::Definition;
use saga::machine::{self, Input, Outcome, Saga, Transition};
use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool};
use store::{Outbox, StoreError, TxHandler};
use tracing::{info, warn};
use uuid::Uuid;

use crate::clock::Clock;
use crate::isolate::advance;
use crate::versions::Versions;
use crate::{PRODUCER, SCHEMA, repo, view};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("no saga {0}")]
    UnknownSaga(Uuid),
    #[error("no saga definition named {0:?}")]
    UnknownDefinition(String),
    #[error("no version {digest} of saga definition {name:?} in sagas.definitions")]
    UnknownVersion { name: String, digest: String },
    #[error("a stored saga definition version is corrupt: {0}")]
    CorruptVersion(String),
    #[error("cannot start: {0}")]
    BadInput(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for EngineError {
    fn from(error: sqlx::Error) -> Self {
        Self::Store(error.into())
    }
}

impl From<EngineError> for HandlerError {
    fn from(error: EngineError) -> Self {
        match error {
            EngineError::Store(e) => e.into(),
            other => HandlerError::Permanent(other.to_string()),
        }
    }
}

/// The orchestrator's logic over its tables. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Engine {
    pool: PgPool,
    versions: Arc<Versions>,
    outbox: Outbox,
    clock: Arc<Clock>,
}

impl Engine {
    pub fn new(pool: PgPool, definitions: Vec<Definition>) -> Self {
        Self {
            pool,
            versions: Arc::new(Versions::new(definitions)),
            outbox: Outbox::new(SCHEMA),
            clock: Arc::new(Clock::new()),
        }
    }

    /// The same engine telling time by `clock` (see [`Clock`]).
    pub fn with_clock(mut self, clock: Arc<Clock>) -> Self {
        self.clock = clock;
        self
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The current definition of this name: the one new sagas start on.
    pub fn definition(&self, name: &str) -> Option<&Definition> {
        self.versions.current(name).map(|d| &**d)
    }

    pub fn versions(&self) -> &Versions {
        &self.versions
    }

    /// Every reply type some version at hand waits for (see [`Versions::register`]).
    pub fn reply_types(&self) -> Vec<String> {
        let mut types: Vec<String> = self
            .versions
            .known()
            .iter()
            .flat_map(|d| d.reply_types())
            .map(str::to_owned)
            .collect();
        types.sort();
        types.dedup();
        types
    }

    /// Starts a saga unless one with this id exists (a repeated request). Returns the
    /// messages to publish.
    pub async fn start(
        &self,
        tx: &mut PgConnection,
        start: &SagaStart,
        cause: Option<&Envelope>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Envelope>, EngineError> {
        let definition = self
            .definition(&start.saga)
            .ok_or_else(|| EngineError::UnknownDefinition(start.saga.clone()))?;
        let transition = match machine::start(definition, start.saga_id, start.input.clone(), now) {
            Ok(transition) => transition,
            Err(error) => return Err(EngineError::BadInput(error.to_string())),
        };
        self.versions
            .record(tx, definition, started_under(&transition))
            .await?;
        let traceparent = cause.and_then(|c| c.traceparent.as_deref());
        if !repo::insert(
            tx,
            &transition.saga,
            start.request_hash.as_deref(),
            traceparent,
        )
        .await?
        {
            info!(saga_id = %start.saga_id, "saga exists already; start ignored");
            return Ok(vec![]);
        }
        metrics::counter!("warren_sagas_started_total", "saga" => definition.name.clone())
            .increment(1);
        let input = Input::Start {
            input: start.input.clone(),
        };
        self.record(
            tx,
            &transition.saga,
            &input,
            cause,
            now,
            true,
            &transition.note,
            &transition,
        )
        .await
    }

    /// Applies one input to an existing saga under its row lock, in two statements: lock the
    /// saga, then save it and append the entry.
    pub async fn apply(
        &self,
        tx: &mut PgConnection,
        saga_id: Uuid,
        input: &Input,
        cause: Option<&Envelope>,
        now: DateTime<Utc>,
    ) -> Result<(Saga, Vec<Envelope>), EngineError> {
        let saga = repo::lock_all(tx, &[saga_id])
            .await?
            .remove(&saga_id)
            .ok_or(EngineError::UnknownSaga(saga_id))?;
        let advanced = advance(&self.versions, tx, &saga, input, now).await?;
        let input = advanced.input;
        let entry = |saga: &Saga, applied: bool, note: String, commands: Value| repo::Entry {
            saga_id,
            definition_version: saga.definition_version.clone(),
            offset: 1,
            at: now,
            input: input.clone().into_owned(),
            message_id: cause.map(|c| c.message_id),
            applied,
            note,
            commands,
            status: saga.status.as_str().to_owned(),
            version: saga.version,
        };
        match advanced.outcome {
            Outcome::Applied(transition) => {
                observe(&saga, &transition.saga);
                let (mut messages, sent) = caused(&transition.saga, &transition, cause);
                let logged = entry(&transition.saga, true, transition.note.clone(), sent);
                repo::save_all(tx, &[(&transition.saga, saga.version)], &[logged]).await?;
                if cause.is_none() && !messages.is_empty() {
                    // A timeout or an operator's input goes on in the trace the saga began in.
                    let traceparent = repo::traceparent(tx, saga_id).await?;
                    for message in &mut messages {
                        message.traceparent.clone_from(&traceparent);
                    }
                }
                Ok((transition.saga, messages))
            }
            Outcome::Ignored(why) => {
                repo::save_all(tx, &[], &[entry(&saga, false, why, json!([]))]).await?;
                Ok((saga, vec![]))
            }
        }
    }

    /// Logs an applied transition and turns its commands, plus the `saga.evt.updated` event,
    /// into messages.
    #[allow(clippy::too_many_arguments)]
    async fn record(
        &self,
        tx: &mut PgConnection,
        saga: &Saga,
        input: &Input,
        cause: Option<&Envelope>,
        now: DateTime<Utc>,
        applied: bool,
        note: &str,
        transition: &Transition,
    ) -> Result<Vec<Envelope>, EngineError> {
        let (messages, sent) = caused(saga, transition, cause);
        repo::append(
            tx,
            saga,
            now,
            input,
            cause.map(|c| c.message_id),
            applied,
            note,
            &sent,
        )
        .await?;
        Ok(messages)
    }

    /// Applies a group commit in at most three statements: insert the sagas it starts, lock
    /// every saga it replies to, then save the sagas that changed and append every log entry.
    async fn apply_group(
        &self,
        tx: &mut PgConnection,
        messages: &[&Envelope],
    ) -> Result<Vec<Envelope>, EngineError> {
        let now = self.clock.now();
        let mut starts = Vec::new();
        let mut replies = Vec::with_capacity(messages.len());
        for message in messages {
            if message.message_type == SagaStart::TYPE {
                starts.push(*message);
            } else if let Some(saga_id) = message.correlation_id {
                replies.push((saga_id, *message));
            }
            // Events that are not replies to a saga (a product changed, say) pass by.
        }
        let mut caused_all = Vec::new();
        let mut entries = Vec::with_capacity(messages.len());
        self.start_all(tx, &starts, now, &mut caused_all, &mut entries)
            .await?;

        let ids: Vec<Uuid> = replies.iter().map(|(id, _)| *id).collect();
        let mut sagas = repo::lock_all(tx, &ids).await?;
        let before: BTreeMap<Uuid, i64> = sagas.iter().map(|(id, s)| (*id, s.version)).collect();
        let mut offsets: BTreeMap<Uuid, i32> = BTreeMap::new();
        for (saga_id, message) in replies {
            let Some(saga) = sagas.get(&saga_id) else {
                warn!(%saga_id, message_type = %message.message_type, "reply for an unknown saga; dropped");
                continue;
            };
            let reply = Input::Reply {
                message_type: message.message_type.clone(),
                payload: message.payload.clone(),
            };
            let advanced = advance(&self.versions, tx, saga, &reply, now).await?;
            let offset = offsets.entry(saga_id).or_insert(0);
            *offset += 1;
            let (after, applied, note, sent) = match advanced.outcome {
                Outcome::Applied(transition) => {
                    observe(saga, &transition.saga);
                    let (messages, sent) = caused(&transition.saga, &transition, Some(message));
                    caused_all.extend(messages);
                    (transition.saga, true, transition.note, sent)
                }
                Outcome::Ignored(why) => (saga.clone(), false, why, json!([])),
            };
            entries.push(repo::Entry {
                saga_id,
                definition_version: after.definition_version.clone(),
                offset: *offset,
                at: now,
                input: match advanced.input {
                    Cow::Owned(halt) => halt,
                    Cow::Borrowed(_) => reply,
                },
                message_id: Some(message.message_id),
                applied,
                note,
                commands: sent,
                status: after.status.as_str().to_owned(),
                version: after.version,
            });
            sagas.insert(saga_id, after);
        }
        let changed: Vec<(&Saga, i64)> = sagas
            .values()
            .filter_map(|saga| {
                let was = before[&saga.id];
                (saga.version != was).then_some((saga, was))
            })
            .collect();
        repo::save_all(tx, &changed, &entries).await?;
        Ok(caused_all)
    }

    /// The starts of a group: one insert for all their sagas. A start whose saga exists
    /// already (a repeated request, or the same start twice in the group) changes nothing.
    async fn start_all(
        &self,
        tx: &mut PgConnection,
        messages: &[&Envelope],
        now: DateTime<Utc>,
        caused_all: &mut Vec<Envelope>,
        entries: &mut Vec<repo::Entry>,
    ) -> Result<(), EngineError> {
        if messages.is_empty() {
            return Ok(());
        }
        let mut started = Vec::with_capacity(messages.len());
        let mut seen = std::collections::HashSet::with_capacity(messages.len());
        for message in messages {
            let start: SagaStart = message
                .decode()
                .map_err(|e| EngineError::BadInput(e.to_string()))?;
            let definition = self
                .definition(&start.saga)
                .ok_or_else(|| EngineError::UnknownDefinition(start.saga.clone()))?;
            let transition = machine::start(definition, start.saga_id, start.input.clone(), now)
                .map_err(|e| EngineError::BadInput(e.to_string()))?;
            self.versions
                .record(tx, definition, started_under(&transition))
                .await?;
            if seen.insert(start.saga_id) {
                started.push((*message, start, transition));
            } else {
                info!(saga_id = %start.saga_id, "saga started twice in one group; start ignored");
            }
        }
        let new: Vec<repo::NewSaga<'_>> = started
            .iter()
            .map(|(message, start, transition)| repo::NewSaga {
                saga: &transition.saga,
                request_hash: start.request_hash.as_deref(),
                traceparent: message.traceparent.as_deref(),
            })
            .collect();
        let inserted = repo::insert_all(tx, &new).await?;
        for (message, start, transition) in started {
            if !inserted.contains(&start.saga_id) {
                info!(saga_id = %start.saga_id, "saga exists already; start ignored");
                continue;
            }
            metrics::counter!("warren_sagas_started_total", "saga" => start.saga.clone())
                .increment(1);
            let (messages, sent) = caused(&transition.saga, &transition, Some(message));
            caused_all.extend(messages);
            entries.push(repo::Entry {
                saga_id: start.saga_id,
                definition_version: transition.saga.definition_version.clone(),
                offset: 1,
                at: now,
                input: Input::Start { input: start.input },
                message_id: Some(message.message_id),
                applied: true,
                note: transition.note,
                commands: sent,
                status: transition.saga.status.as_str().to_owned(),
                version: transition.saga.version,
            });
        }
        Ok(())
    }

    /// One message as its own input: a start, or a reply.
    async fn apply_message(
        &self,
        tx: &mut PgConnection,
        message: &Envelope,
        now: DateTime<Utc>,
    ) -> Result<Vec<Envelope>, EngineError> {
        if message.message_type == SagaStart::TYPE {
            let start: SagaStart = message
                .decode()
                .map_err(|e| EngineError::BadInput(e.to_string()))?;
            return self.start(tx, &start, Some(message), now).await;
        }
        let Some(saga_id) = message.correlation_id else {
            // Events that are not replies to a saga (a product changed, say) pass by.
            return Ok(vec![]);
        };
        let input = Input::Reply {
            message_type: message.message_type.clone(),
            payload: message.payload.clone(),
        };
        match Engine::apply(self, tx, saga_id, &input, Some(message), now).await {
            Ok((_, messages)) => Ok(messages),
            Err(EngineError::UnknownSaga(id)) => {
                warn!(saga_id = %id, message_type = %message.message_type, "reply for an unknown saga; dropped");
                Ok(vec![])
            }
            Err(error) => Err(error),
        }
    }

    /// Applies an operator's input (retry, cancel) in a transaction of its own and publishes
    /// what it causes through the outbox. Returns the saga after, and whether it changed.
    pub async fn operate(&self, saga_id: Uuid, input: Input) -> Result<(Saga, bool), EngineError> {
        let mut tx = self.pool.begin().await?;
        let before = repo::get(&mut *tx, saga_id).await?.map(|s| s.version);
        let (saga, messages) = self
            .apply(&mut tx, saga_id, &input, None, self.clock.now())
            .await?;
        self.outbox.write(&mut tx, &messages).await?;
        tx.commit().await?;
        Ok((saga.clone(), before != Some(saga.version)))
    }

    /// Feeds a timeout to up to `limit` sagas whose deadline passed, each claimed with
    /// `SKIP LOCKED` so concurrent sweepers share the work. Returns how many were handled.
    ///
    /// Deadlines are compared with the database's clock, and the state machine is given that
    /// same instant, so a saga the query finds due is due for the machine too, whatever the
    /// local clock says. A saga whose transition cannot be applied is halted (see
    /// [`crate::isolate`]); the others in the batch go on.
    pub async fn sweep(&self, limit: i64) -> Result<usize, EngineError> {
        let mut tx = self.pool.begin().await?;
        let due: Vec<(Uuid, DateTime<Utc>)> = sqlx::query_as(
            // Through the index of unfinished sagas: no index holds `deadline`, so a step's
            // update of the saga row stays HOT (migration 0012).
            "SELECT saga_id, now() FROM sagas.sagas \
             WHERE status IN ('running', 'compensating') AND deadline <= now() \
             ORDER BY deadline LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        for &(saga_id, now) in &due {
            let (_, messages) = self
                .apply(&mut tx, saga_id, &Input::Timeout, None, now)
                .await?;
            self.outbox.write(&mut tx, &messages).await?;
        }
        tx.commit().await?;
        Ok(due.len())
    }
}

/// The metrics of a transition: a saga that ended, and each step that finished with how long
/// it took. (Recorded inside the transaction: a group that rolls back and is applied again one
/// by one counts twice; rare, and only a metric.)
fn observe(before: &Saga, after: &Saga) {
    if !before.status.is_terminal() && after.status.is_terminal() {
        metrics::counter!(
            "warren_sagas_ended_total",
            "saga" => after.definition.clone(),
            "state" => after.status.as_str(),
        )
        .increment(1);
    }
    for (was, step) in before.steps.iter().zip(&after.steps) {
        if was.status == step.status || was.finished_at == step.finished_at {
            continue;
        }
        if let (Some(started), Some(finished)) = (step.started_at, step.finished_at) {
            let seconds = (finished - started)
                .to_std()
                .unwrap_or_default()
                .as_secs_f64();
            metrics::histogram!(
                "warren_saga_step_duration_seconds",
                "saga" => after.definition.clone(),
                "step" => step.name.clone(),
                "outcome" => step.status.as_str(),
            )
            .record(seconds);
        }
    }
}

/// The messages a transition sends (its commands, then `saga.evt.updated`), and the list of
/// commands for the saga's log.
fn caused(
    saga: &Saga,
    transition: &Transition,
    cause: Option<&Envelope>,
) -> (Vec<Envelope>, Value) {
    let mut messages: Vec<Envelope> = transition
        .commands
        .iter()
        .map(|c| {
            let message =
                Envelope::raw(PRODUCER, &c.message_type, c.payload.clone()).with_step(&c.step);
            correlate(message, saga.id, cause)
        })
        .collect();
    let sent: Vec<Value> = transition
        .commands
        .iter()
        .zip(&messages)
        .map(|(c, m)| {
            json!({"message_id": m.message_id, "message_type": c.message_type,
                   "step": c.step, "compensation": c.compensation})
        })
        .collect();
    let updated = SagaUpdated {
        view: view::of(saga),
        transition: transition.note.clone(),
    };
    messages.push(correlate(Envelope::new(PRODUCER, &updated), saga.id, cause));
    (messages, Value::Array(sent))
}

/// The version a new saga was pinned to by `machine::start`.
fn started_under(transition: &Transition) -> &str {
    transition
        .saga
        .definition_version
        .as_deref()
        .expect("machine::start pins every new saga to its definition's digest")
}

fn correlate(message: Envelope, saga_id: Uuid, cause: Option<&Envelope>) -> Envelope {
    let mut message = message.with_correlation(saga_id);
    if let Some(cause) = cause {
        message.causation_id = Some(cause.message_id);
        message.traceparent.clone_from(&cause.traceparent);
    }
    message
}

/// The orchestrator's message handler: `saga.cmd.start` on `saga.commands`, replies on
/// `saga.replies`.
impl TxHandler for Engine {
    async fn apply(
        &self,
        tx: &mut PgConnection,
        message: &Envelope,
    ) -> Result<Vec<Envelope>, HandlerError> {
        Ok(self.apply_message(tx, message, self.clock.now()).await?)
    }

    async fn apply_all(
        &self,
        tx: &mut PgConnection,
        messages: &[&Envelope],
    ) -> Result<Vec<Envelope>, HandlerError> {
        Ok(self.apply_group(tx, messages).await?)
    }
}
