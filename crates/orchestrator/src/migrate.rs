//! Moving a running saga onto another version of its definition, where that is safe.
//!
//! A saga may move when its recorded history replays through the target version unchanged
//! ([`saga::history::fork`] finds no fork): the target would have done exactly what was done so
//! far, so the saga can go on under it. Its state becomes the one the replay through the target
//! produces (the target's steps, and deadlines by the target's timeouts), and an
//! [`Input::Migrate`] entry records the move in its log, so that replaying the log through the
//! target reproduces the saga. A saga that may not move keeps its version and finishes on it.

use saga::Definition;
use saga::history::fork;
use saga::machine::{self, Input, Outcome, SagaStatus};
use serde_json::json;
use tracing::info;
use uuid::Uuid;

use crate::{Engine, EngineError, repo};

/// What became of one saga.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Moved {
    /// Moved (or, in a dry run, would be) from this version.
    Moved { from: Option<String> },
    /// Left on its version, and why.
    Refused(String),
}

/// Moves one saga onto `to` if its history replays through it unchanged; with `dry_run`, only
/// says whether it would. One transaction, under the saga's row lock.
pub async fn migrate(
    engine: &Engine,
    saga_id: Uuid,
    to: &Definition,
    dry_run: bool,
) -> Result<Moved, EngineError> {
    let mut tx = engine.pool().begin().await?;
    let saga = repo::lock_all(&mut tx, &[saga_id])
        .await?
        .remove(&saga_id)
        .ok_or(EngineError::UnknownSaga(saga_id))?;
    let digest = to.digest();
    let refuse = |why: String| Ok(Moved::Refused(why));
    if saga.definition != to.name {
        return refuse(format!(
            "the saga runs {}, not {}",
            saga.definition, to.name
        ));
    }
    if !matches!(saga.status, SagaStatus::Running | SagaStatus::Compensating) {
        return refuse(format!(
            "the saga is {}: only running and compensating sagas move",
            saga.status.as_str()
        ));
    }
    if saga.definition_version.as_deref() == Some(digest.as_str()) {
        return refuse(format!("the saga runs on {digest} already"));
    }
    let log = repo::log(&mut *tx, saga_id).await?;
    let recorded: Vec<_> = log.iter().map(repo::LogEntry::recorded).collect();
    if let Some((_, parted)) = fork(to, saga_id, &recorded) {
        return refuse(format!(
            "its history takes another path under {digest}: {parted}"
        ));
    }
    let replayed = match machine::replay(to, saga_id, log.iter().map(|e| (&e.input.0, e.at))) {
        Ok((replayed, _)) => replayed,
        Err(reason) => return refuse(format!("its log does not replay: {reason}")),
    };
    if (replayed.status, replayed.current, replayed.version)
        != (saga.status, saga.current, saga.version)
    {
        return refuse("its log replays to another state than its row holds".into());
    }
    let from = saga.definition_version.clone();
    if dry_run {
        return Ok(Moved::Moved { from });
    }
    let now = engine.clock().now().max(saga.updated_at);
    let input = Input::Migrate { to: digest.clone() };
    let Outcome::Applied(transition) = machine::apply(to, &replayed, &input, now) else {
        return refuse("the state machine did not apply the move".into());
    };
    engine.versions().record(&mut tx, to, &digest).await?;
    let moved = &transition.saga;
    let entry = repo::Entry {
        saga_id,
        definition_version: Some(digest.clone()),
        offset: 1,
        at: now,
        input,
        message_id: None,
        applied: true,
        note: transition.note.clone(),
        commands: json!([]),
        status: moved.status.as_str().to_owned(),
        version: moved.version,
    };
    repo::save_all(&mut tx, &[(moved, saga.version)], &[entry]).await?;
    tx.commit().await?;
    info!(%saga_id, from = ?from, to = %digest, "saga moved to another version");
    Ok(Moved::Moved { from })
}
