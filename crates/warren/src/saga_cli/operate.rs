//! `warren saga retry` and `warren saga cancel`: operator inputs, applied by the orchestrator's
//! engine like any transition.

use std::process::ExitCode;

use orchestrator::{Engine, EngineError, repo, view};
use saga::machine::Input;
use serde_json::json;
use uuid::Uuid;

use super::{Db, connect, not_found};
use crate::exit;
use crate::output::{self, paint, state_style};
use crate::settings::Settings;

pub(super) async fn operate(
    settings: &Settings,
    id: Uuid,
    input: Input,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let action = match input {
        Input::Cancel { .. } => "cancel",
        _ => "retry",
    };
    let definitions = crate::run::definitions(settings)?;
    let pool = connect(settings).await?;
    let engine = Engine::new(pool.clone(), definitions);
    let (saga, applied) = match engine.operate(id, input.clone()).await {
        Ok(done) => done,
        Err(EngineError::UnknownSaga(_)) => return Ok(not_found(id)),
        Err(EngineError::Store(e)) => {
            return Err(anyhow::Error::new(e).context(format!("applying {action} to saga {id}")));
        }
        Err(other) => return Err(other.into()),
    };
    // The engine logged what it did (or why it did nothing); that is the operator's answer.
    let log = repo::log(&pool, id).await.db("reading the saga's log")?;
    let note = log
        .iter()
        .rev()
        .find(|e| e.input.0 == input && e.applied == applied)
        .map(|e| e.note.clone())
        .unwrap_or_default();
    let shown = view::of(&saga);
    if json {
        output::json(&json!({
            "saga_id": id,
            "action": action,
            "applied": applied,
            "note": note,
            "saga": shown,
        }))?;
    } else {
        let step = shown
            .current_step
            .as_deref()
            .map_or_else(String::new, |s| format!(" (step {s})"));
        let state = paint(&shown.state, state_style(&shown.state));
        if applied {
            println!("{action} {}: {note}", paint("applied", "green"));
            println!("saga {id} is now {state}{step}");
        } else {
            println!("{action} {}: {note}", paint("ignored", "yellow"));
            println!("saga {id} stays {state}{step}");
        }
    }
    Ok(if applied {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(exit::PROBLEM)
    })
}
