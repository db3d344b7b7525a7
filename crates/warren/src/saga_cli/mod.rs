//! `warren saga ...`: what happened to a saga, and how to fix it, from a terminal.
//!
//! - `list`, `show`: sagas, and one saga's timeline as its log recorded it (what each input
//!   did and what it sent), like Temporal's `workflow list` / `workflow show`.
//! - `replay`: folds recorded logs through the definition version each saga ran on (or a file)
//!   and reports the first place where the result parts from what was recorded: the check that
//!   the machine still reproduces history, and, with a file, that a change fits sagas in flight.
//! - `versions`: the definition versions sagas run on, with counts (in [`crate::saga_versions`]).
//! - `retry`, `cancel`: operator inputs, applied by the orchestrator's engine in one
//!   transaction with the commands they cause (through the outbox, like any transition).
//! - `check`, `graph`: static checks and a Mermaid picture of definitions; no database.
//!   `check --against-history` replays recorded histories through changed definitions.
//! - `migrate`: moves chosen running sagas onto another version of their definition.
//!
//! Every command prints JSON instead of tables with `--json`. Exit codes follow
//! [`crate::exit`]: a divergence, a failed check or an ignored operator input is 1, an unknown
//! saga or definition is 3.
//!
//! The modules, one per concern:
//! - [`list`], [`show`]: the `list` and `show` commands; `show` builds a saga's timeline.
//! - [`fold`]: the replay engine, a recorded log folded through a definition entry by entry
//!   and compared with what was recorded; [`replay`]: the `replay` command on top of it.
//! - [`operate`]: `retry` and `cancel`.
//! - [`check`]: `check`, and `check --against-history` handing over to [`gate`], the replay
//!   gate before a deploy.
//! - [`migrate`]: `migrate`, moving running sagas onto another version where that is safe.
//! - [`graph`]: `graph`, the Mermaid flowchart.
//! - [`time`]: times and durations, as people write and read them.
//!
//! This module holds the command line, the dispatch, and the database access they share.

mod check;
#[cfg(test)]
mod fixtures;
mod fold;
mod gate;
mod graph;
mod list;
mod migrate;
mod operate;
mod replay;
mod show;
mod time;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use orchestrator::repo::{self, LogEntry};
use saga::machine::{Input, Saga};
use sqlx::PgPool;
use sqlx::types::chrono::{DateTime, Utc};
use store::StoreError;
use uuid::Uuid;

use self::list::ListArgs;
use self::replay::ReplayArgs;
use self::time::since;
use crate::exit;
use crate::settings::Settings;

use contracts::messages::SAGA_STATES as STATES;

#[derive(Debug, Subcommand)]
pub enum SagaCommand {
    /// Sagas, newest first.
    List(ListArgs),
    /// A saga's timeline, from its log.
    ///
    /// Every input the log recorded, whether it was applied, what it did and what it sent,
    /// then where the saga stands. Exits 3 when there is no such saga.
    Show { id: Uuid },
    /// Replays recorded logs and reports where they diverge.
    ///
    /// Folds each log through the definition version the saga started under (or
    /// `--definition`) and compares every transition and the final state with what was
    /// recorded. Exits 1 at the first
    /// divergence, 3 when there is no such saga.
    Replay(ReplayArgs),
    /// The definition versions sagas run on.
    ///
    /// Each version with how many sagas are running, compensating, failed, completed and
    /// compensated on it; the current one (new sagas start on it) and the ones that can be
    /// retired (no saga can advance on them any more).
    Versions,
    /// Re-drives a saga from where it stands.
    ///
    /// Sends its current step (or the compensation in progress) again with fresh attempts.
    /// Exits 0 when applied, 1 when the saga ignored it (a completed or compensated saga,
    /// say), 3 when there is no such saga.
    Retry { id: Uuid },
    /// Rolls a running saga back.
    ///
    /// Only before its pivot. Exits 0 when applied, 1 when the saga ignored it (not running,
    /// or past its pivot), 3 when there is no such saga.
    Cancel {
        id: Uuid,
        /// Why, for the saga's log and the compensations.
        #[arg(long, default_value = "cancelled by an operator from the CLI")]
        reason: String,
    },
    /// Moves running sagas onto another version of their definition.
    ///
    /// A saga moves only if its recorded history replays through the target unchanged (the
    /// target would have done the same so far); the others stay on their version and finish
    /// on it. Each move is recorded in the saga's log. Exits 0 when every chosen saga moved
    /// (or would, with `--dry-run`), 1 when some stay, 3 for an unknown version.
    Migrate(migrate::MigrateArgs),
    /// Static checks of saga definitions; with `--against-history`, the replay gate.
    ///
    /// Exits 1 when any definition fails. With `--against-history`, each changed definition
    /// is also folded through the recorded log of every saga of its name, and the report
    /// says where histories would take another path under it, how many, how many of them
    /// are running, and what the change does to each version they ran on; exits 1 when any
    /// history does not replay through the change unchanged.
    Check {
        /// Definition files. With none: the definitions `warren run` would load, every
        /// `*.toml` of `--sagas-dir` when it is set, the built-in ones otherwise.
        files: Vec<PathBuf>,
        /// Replay recorded histories through the definitions (reads the database).
        #[arg(long)]
        against_history: bool,
        /// With `--against-history`: only sagas created since (RFC 3339, a date, or `30m`,
        /// `1h`, `2d`).
        #[arg(long, value_parser = since, requires = "against_history")]
        since: Option<DateTime<Utc>>,
    },
    /// A Mermaid flowchart of a definition.
    ///
    /// The forward path, the failure and timeout edges into the compensation path, and the
    /// terminal states. Exits 3 for an unknown name.
    Graph {
        /// The definition's name (optional with `--definition`).
        #[arg(required_unless_present = "definition")]
        name: Option<String>,
        /// A definition file to draw instead of a current definition.
        #[arg(long)]
        definition: Option<PathBuf>,
    },
}

pub async fn execute(
    settings: &Settings,
    command: SagaCommand,
    json: bool,
) -> anyhow::Result<ExitCode> {
    match command {
        SagaCommand::List(args) => list::list(settings, args, json).await,
        SagaCommand::Show { id } => show::show(settings, id, json).await,
        SagaCommand::Replay(args) => replay::replay(settings, args, json).await,
        SagaCommand::Versions => {
            let pool = connect(settings).await?;
            crate::saga_versions::versions(settings, &pool, json).await
        }
        SagaCommand::Migrate(args) => {
            let pool = connect(settings).await?;
            migrate::execute(settings, pool, args, json).await
        }
        SagaCommand::Retry { id } => operate::operate(settings, id, Input::Retry, json).await,
        SagaCommand::Cancel { id, reason } => {
            operate::operate(settings, id, Input::Cancel { reason }, json).await
        }
        SagaCommand::Check {
            files,
            against_history: false,
            ..
        } => check::check(settings, &files, json),
        SagaCommand::Check { files, since, .. } => check::gate(settings, &files, since, json).await,
        SagaCommand::Graph { name, definition } => {
            graph::graph(settings, name.as_deref(), definition.as_deref(), json)
        }
    }
}

/// Keeps a database error's `StoreError` in the chain, so `main` can tell an unreachable
/// database (exit 4) from anything else.
trait Db<T> {
    fn db(self, what: &str) -> anyhow::Result<T>;
}

impl<T> Db<T> for Result<T, sqlx::Error> {
    fn db(self, what: &str) -> anyhow::Result<T> {
        self.map_err(|e| anyhow::Error::new(StoreError::from(e)).context(what.to_owned()))
    }
}

async fn connect(settings: &Settings) -> anyhow::Result<PgPool> {
    let mut db = settings.db();
    db.max_connections = 2;
    store::connect(&db).await.with_context(|| {
        format!(
            "cannot reach PostgreSQL at {}",
            bus::connection::redact(&settings.database_url)
        )
    })
}

/// A saga and its log as of one moment: the engine writes both in one transaction, so a
/// repeatable-read snapshot never sees a log entry without its state or the reverse.
async fn snapshot(pool: &PgPool, id: Uuid) -> anyhow::Result<Option<(Saga, Vec<LogEntry>)>> {
    let what = format!("reading saga {id}");
    let mut tx = pool.begin().await.db(&what)?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await
        .db(&what)?;
    let Some(saga) = repo::get(&mut *tx, id).await.db(&what)? else {
        return Ok(None);
    };
    let log = repo::log(&mut *tx, id).await.db(&what)?;
    tx.commit().await.db(&what)?;
    Ok(Some((saga, log)))
}

fn not_found(id: Uuid) -> ExitCode {
    eprintln!("no saga {id}");
    ExitCode::from(exit::NOT_FOUND)
}
