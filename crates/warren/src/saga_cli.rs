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
//!
//! Every command prints JSON instead of tables with `--json`. Exit codes follow
//! [`crate::exit`]: a divergence, a failed check or an ignored operator input is 1, an unknown
//! saga or definition is 3.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use contracts::Schemas;
use contracts::messages::SagaView;
use orchestrator::repo::{self, LogEntry};
use orchestrator::{Engine, EngineError, view};
use saga::Definition;
use saga::machine::{self, Input, Outcome, Saga};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::PgPool;
use sqlx::types::chrono::{DateTime, NaiveDate, Utc};
use store::StoreError;
use uuid::Uuid;

use crate::exit;
use crate::output::{self, Table, paint, state_style};
use crate::settings::Settings;

const STATES: [&str; 5] = [
    "running",
    "compensating",
    "completed",
    "compensated",
    "failed",
];

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
    Migrate(crate::saga_migrate::MigrateArgs),
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

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only sagas in this state.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(STATES))]
    state: Option<String>,
    /// Only sagas of this definition.
    #[arg(long)]
    saga: Option<String>,
    /// Only sagas created since: RFC 3339, a date, or a relative `30m`, `1h`, `2d`.
    #[arg(long, value_parser = since)]
    since: Option<DateTime<Utc>>,
    /// At most this many.
    #[arg(long, default_value_t = 50)]
    limit: i64,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The saga to replay.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    id: Option<Uuid>,
    /// Replay every saga, newest first.
    #[arg(long)]
    all: bool,
    /// With `--all`: only sagas created since (RFC 3339, a date, or `30m`, `1h`, `2d`).
    #[arg(long, value_parser = since, requires = "all")]
    since: Option<DateTime<Utc>>,
    /// A definition file to replay every saga of its name through, whatever version it
    /// started under.
    #[arg(long)]
    definition: Option<PathBuf>,
}

pub async fn execute(
    settings: &Settings,
    command: SagaCommand,
    json: bool,
) -> anyhow::Result<ExitCode> {
    match command {
        SagaCommand::List(args) => list(settings, args, json).await,
        SagaCommand::Show { id } => show(settings, id, json).await,
        SagaCommand::Replay(args) => replay(settings, args, json).await,
        SagaCommand::Versions => {
            let pool = connect(settings).await?;
            crate::saga_versions::versions(settings, &pool, json).await
        }
        SagaCommand::Migrate(args) => {
            let pool = connect(settings).await?;
            crate::saga_migrate::execute(settings, pool, args, json).await
        }
        SagaCommand::Retry { id } => operate(settings, id, Input::Retry, json).await,
        SagaCommand::Cancel { id, reason } => {
            operate(settings, id, Input::Cancel { reason }, json).await
        }
        SagaCommand::Check {
            files,
            against_history: false,
            ..
        } => check(settings, &files, json),
        SagaCommand::Check { files, since, .. } => gate(settings, &files, since, json).await,
        SagaCommand::Graph { name, definition } => {
            graph(settings, name.as_deref(), definition.as_deref(), json)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Database access

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

// ---------------------------------------------------------------------------------------------
// list

async fn list(settings: &Settings, args: ListArgs, json: bool) -> anyhow::Result<ExitCode> {
    let pool = connect(settings).await?;
    let sagas = repo::list(
        &pool,
        args.state.as_deref(),
        args.saga.as_deref(),
        args.since,
        args.limit.max(0),
    )
    .await
    .db("listing sagas")?;
    if json {
        let views: Vec<SagaView> = sagas.iter().map(view::of).collect();
        output::json(&views)?;
        return Ok(ExitCode::SUCCESS);
    }
    let now = Utc::now();
    let mut table = Table::new(&[
        "id", "saga", "version", "state", "step", "created", "age", "error",
    ]);
    for saga in &sagas {
        let shown = view::of(saga);
        table.row(vec![
            (saga.id.to_string(), None),
            (saga.definition.clone(), None),
            (
                saga.definition_version
                    .clone()
                    .unwrap_or_else(|| "-".into()),
                None,
            ),
            (shown.state.clone(), Some(state_style(&shown.state))),
            (shown.current_step.unwrap_or_else(|| "-".into()), None),
            (
                saga.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                None,
            ),
            (age((now - saga.created_at).num_milliseconds()), None),
            (
                saga.error
                    .as_deref()
                    .map_or_else(String::new, |e| shorten(e, 60)),
                Some("red"),
            ),
        ]);
    }
    if table.is_empty() {
        println!("no sagas");
    } else {
        table.print();
    }
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------------------
// show

/// A command a transition sent, as the log records it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Sent {
    message_id: Option<Uuid>,
    message_type: String,
    step: String,
    #[serde(default)]
    compensation: bool,
}

#[derive(Debug, Serialize)]
struct TimelineEntry {
    seq: i32,
    at: DateTime<Utc>,
    /// Since the previous entry (none for the first).
    since_previous_ms: Option<i64>,
    /// `start`, `reply <type>`, `timeout`, `operator retry`, `operator cancel (...)`.
    summary: String,
    input: Input,
    /// The message that carried the input (none for timeouts and operator actions).
    message_id: Option<Uuid>,
    applied: bool,
    note: String,
    commands: Vec<Sent>,
    /// The saga's state after the entry.
    state: String,
    version: i64,
}

#[derive(Debug, Serialize)]
struct StepSummary {
    name: String,
    state: String,
    attempts: u32,
    compensation_attempts: u32,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    duration_ms: Option<i64>,
}

#[derive(Debug, Serialize)]
struct Shown {
    saga: SagaView,
    /// The definition version the saga advances by (none: started before versions were kept).
    definition_version: Option<String>,
    deadline: Option<DateTime<Utc>>,
    timeline: Vec<TimelineEntry>,
    steps: Vec<StepSummary>,
}

fn timeline(saga: &Saga, log: &[LogEntry]) -> Shown {
    let mut previous: Option<DateTime<Utc>> = None;
    let timeline = log
        .iter()
        .map(|entry| {
            let since_previous_ms = previous.map(|p| (entry.at - p).num_milliseconds());
            previous = Some(entry.at);
            TimelineEntry {
                seq: entry.seq,
                at: entry.at,
                since_previous_ms,
                summary: entry.input.0.describe(),
                input: entry.input.0.clone(),
                message_id: entry.message_id,
                applied: entry.applied,
                note: entry.note.clone(),
                commands: serde_json::from_value(entry.commands.0.clone()).unwrap_or_default(),
                state: entry.status.clone(),
                version: entry.version,
            }
        })
        .collect();
    let steps = saga
        .steps
        .iter()
        .map(|s| StepSummary {
            name: s.name.clone(),
            state: view::step_state(s.status).to_owned(),
            attempts: s.attempts,
            compensation_attempts: s.compensation_attempts,
            started_at: s.started_at,
            finished_at: s.finished_at,
            duration_ms: s
                .started_at
                .zip(s.finished_at)
                .map(|(a, b)| (b - a).num_milliseconds()),
        })
        .collect();
    Shown {
        saga: view::of(saga),
        definition_version: saga.definition_version.clone(),
        deadline: saga.deadline,
        timeline,
        steps,
    }
}

async fn show(settings: &Settings, id: Uuid, json: bool) -> anyhow::Result<ExitCode> {
    let pool = connect(settings).await?;
    let Some((saga, log)) = snapshot(&pool, id).await? else {
        return Ok(not_found(id));
    };
    let shown = timeline(&saga, &log);
    if json {
        output::json(&shown)?;
    } else {
        print_timeline(&shown);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_timeline(shown: &Shown) {
    let saga = &shown.saga;
    println!(
        "{} {} ({}): {}",
        paint("saga", "bold"),
        saga.saga_id,
        saga.saga,
        paint(&saga.state, state_style(&saga.state))
    );
    match &shown.definition_version {
        Some(digest) => println!("definition version {}@{digest}", saga.saga),
        None => println!(
            "definition version: none recorded (started before versions were kept; follows the current {})",
            saga.saga
        ),
    }
    println!(
        "created {}, updated {} ({} in all)",
        saga.created_at.format("%Y-%m-%d %H:%M:%S%.3f UTC"),
        saga.updated_at.format("%Y-%m-%d %H:%M:%S%.3f UTC"),
        span((saga.updated_at - saga.created_at).num_milliseconds())
    );
    println!();
    let day = saga.created_at.date_naive();
    for entry in &shown.timeline {
        let time = if entry.at.date_naive() == day {
            entry.at.format("%H:%M:%S%.3f").to_string()
        } else {
            entry.at.format("%Y-%m-%d %H:%M:%S%.3f").to_string()
        };
        let delta = entry
            .since_previous_ms
            .map_or_else(|| String::from("      "), |ms| format!("+{:<5}", span(ms)));
        let input = match entry.message_id {
            Some(id) => format!("{} (message {id})", entry.summary),
            None => entry.summary.clone(),
        };
        let (result, style) = if entry.applied {
            ("applied", "green")
        } else {
            ("ignored", "dim")
        };
        let head = format!("{:>4}  {time}  {delta}  {input}", entry.seq);
        if entry.applied {
            println!("{head}  {}", paint(result, style));
            println!("      {}", entry.note);
        } else {
            println!("{}", paint(&format!("{head}  {result}"), "dim"));
            println!("      {}", paint(&entry.note, "dim"));
        }
        for sent in &entry.commands {
            let role = if sent.compensation {
                format!("compensation of {}", sent.step)
            } else {
                format!("step {}", sent.step)
            };
            let id = sent
                .message_id
                .map_or_else(String::new, |id| format!("  (message {id})"));
            println!("      -> {}  {role}{id}", paint(&sent.message_type, "blue"));
        }
    }
    println!();
    println!(
        "final state: {} (version {})",
        paint(&saga.state, state_style(&saga.state)),
        saga.version
    );
    if let Some(step) = &saga.current_step {
        println!("current step: {step}");
    }
    if let Some(deadline) = shown.deadline {
        println!("deadline: {}", deadline.format("%Y-%m-%d %H:%M:%S%.3f UTC"));
    }
    if let Some(error) = &saga.error {
        println!("error: {}", paint(error, "red"));
    }
    println!();
    let mut table = Table::new(&[
        "step",
        "state",
        "attempts",
        "compensations",
        "started",
        "finished",
        "duration",
    ]);
    let time = |t: Option<DateTime<Utc>>| {
        t.map_or_else(|| "-".into(), |t| t.format("%H:%M:%S%.3f").to_string())
    };
    for step in &shown.steps {
        table.row(vec![
            (step.name.clone(), None),
            (step.state.clone(), Some(state_style(&step.state))),
            (step.attempts.to_string(), None),
            (step.compensation_attempts.to_string(), None),
            (time(step.started_at), None),
            (time(step.finished_at), None),
            (step.duration_ms.map_or_else(|| "-".into(), span), None),
        ]);
    }
    table.print();
}

// ---------------------------------------------------------------------------------------------
// replay

/// One log entry as recorded and as replayed.
#[derive(Debug, Serialize)]
struct ReplayedEntry {
    seq: i32,
    input: String,
    logged_applied: bool,
    replayed_applied: bool,
    logged_state: String,
    /// None while replay has no saga (its start failed).
    replayed_state: Option<String>,
    logged_note: String,
    /// What replay did, or why it ignored the input.
    note: String,
    matches: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
struct Divergence {
    /// The log entry where it shows first; none when only the final state differs.
    seq: Option<i32>,
    reason: String,
}

impl Display for Divergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.seq {
            Some(seq) => write!(f, "diverges at seq {seq}: {}", self.reason),
            None => write!(f, "diverges: {}", self.reason),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
struct Difference {
    field: String,
    stored: String,
    replayed: String,
}

impl Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (stored {}, replayed {})",
            self.field, self.stored, self.replayed
        )
    }
}

#[derive(Debug, Serialize)]
struct Replayed {
    saga_id: Uuid,
    saga: String,
    stored_state: String,
    replayed_state: Option<String>,
    transitions: Vec<ReplayedEntry>,
    /// The first divergence; none when replay reproduces the log and the stored state.
    divergence: Option<Divergence>,
    /// Where the replayed final state differs from the stored one.
    differences: Vec<Difference>,
}

impl Replayed {
    fn ok(&self) -> bool {
        self.divergence.is_none()
    }
}

/// Folds a saga's log through a definition, entry by entry, and compares each outcome
/// (applied or ignored, and the state after) with what the log recorded, then the final
/// state with the stored one. The fold is `machine::replay`'s (start, then `apply` per input
/// at its recorded time), kept step by step to say where things part.
fn replay_log(definition: &Definition, stored: &Saga, log: &[LogEntry]) -> Replayed {
    let mut saga: Option<Saga> = None;
    let mut transitions = Vec::with_capacity(log.len());
    let mut divergence = None;
    for entry in log {
        let input = &entry.input.0;
        let (applied, note) = match (&saga, input) {
            (None, Input::Start { input: context }) => {
                match machine::start(definition, stored.id, context.clone(), entry.at) {
                    Ok(transition) => {
                        saga = Some(transition.saga);
                        (true, transition.note)
                    }
                    Err(why) => (false, why),
                }
            }
            (None, _) => (false, "the saga has not started".to_owned()),
            (Some(current), input) => match machine::apply(definition, current, input, entry.at) {
                Outcome::Applied(transition) => {
                    saga = Some(transition.saga);
                    (true, transition.note)
                }
                Outcome::Ignored(why) => (false, why),
            },
        };
        let replayed_state = saga.as_ref().map(|s| s.status.as_str().to_owned());
        let matches =
            applied == entry.applied && replayed_state.as_deref() == Some(entry.status.as_str());
        if !matches && divergence.is_none() {
            let what = input.describe();
            let reason = if entry.applied && !applied {
                format!("{what} was applied in the log but ignored on replay: {note}")
            } else if !entry.applied && applied {
                format!(
                    "{what} was ignored in the log ({}) but applied on replay: {note}",
                    entry.note
                )
            } else {
                format!(
                    "after {what} the log says {} but replay says {} ({note})",
                    entry.status,
                    replayed_state.as_deref().unwrap_or("not started")
                )
            };
            divergence = Some(Divergence {
                seq: Some(entry.seq),
                reason,
            });
        }
        transitions.push(ReplayedEntry {
            seq: entry.seq,
            input: input.describe(),
            logged_applied: entry.applied,
            replayed_applied: applied,
            logged_state: entry.status.clone(),
            replayed_state,
            logged_note: entry.note.clone(),
            note,
            matches,
        });
    }
    let differences = match &saga {
        Some(replayed) => {
            // The version a replay runs under is chosen, not reproduced.
            let replayed = Saga {
                definition_version: stored.definition_version.clone(),
                ..replayed.clone()
            };
            differences(stored, &replayed)
        }
        None => vec![Difference {
            field: "saga".into(),
            stored: stored.status.as_str().into(),
            replayed: "never started".into(),
        }],
    };
    if divergence.is_none() && !differences.is_empty() {
        let list: Vec<String> = differences.iter().map(ToString::to_string).collect();
        divergence = Some(Divergence {
            seq: None,
            reason: format!("the final state differs: {}", list.join("; ")),
        });
    }
    if log.is_empty() {
        divergence = Some(Divergence {
            seq: None,
            reason: "the saga's log is empty".into(),
        });
    }
    Replayed {
        saga_id: stored.id,
        saga: stored.definition.clone(),
        stored_state: stored.status.as_str().to_owned(),
        replayed_state: saga.map(|s| s.status.as_str().to_owned()),
        transitions,
        divergence,
        differences,
    }
}

/// A saga whose definition is not at hand cannot be replayed: that counts as a divergence.
fn unreplayable(stored: &Saga, reason: String) -> Replayed {
    Replayed {
        saga_id: stored.id,
        saga: stored.definition.clone(),
        stored_state: stored.status.as_str().to_owned(),
        replayed_state: None,
        transitions: Vec::new(),
        divergence: Some(Divergence { seq: None, reason }),
        differences: Vec::new(),
    }
}

fn or_none<T: Display>(value: Option<T>) -> String {
    value.map_or_else(|| "none".into(), |v| v.to_string())
}

/// The fields of two sagas that differ, named the way an operator reads them.
fn differences(stored: &Saga, replayed: &Saga) -> Vec<Difference> {
    let mut out = Vec::new();
    let mut differ = |field: String, a: String, b: String| {
        if a != b {
            out.push(Difference {
                field,
                stored: a,
                replayed: b,
            });
        }
    };
    differ(
        "definition".into(),
        stored.definition.clone(),
        replayed.definition.clone(),
    );
    differ(
        "status".into(),
        stored.status.as_str().into(),
        replayed.status.as_str().into(),
    );
    let current = |s: &Saga| or_none(s.current_step().map(|c| c.name.clone()));
    differ("current step".into(), current(stored), current(replayed));
    differ(
        "error".into(),
        or_none(stored.error.as_ref()),
        or_none(replayed.error.as_ref()),
    );
    differ(
        "deadline".into(),
        or_none(stored.deadline),
        or_none(replayed.deadline),
    );
    differ(
        "version".into(),
        stored.version.to_string(),
        replayed.version.to_string(),
    );
    differ(
        "created_at".into(),
        stored.created_at.to_string(),
        replayed.created_at.to_string(),
    );
    differ(
        "updated_at".into(),
        stored.updated_at.to_string(),
        replayed.updated_at.to_string(),
    );
    let keys: BTreeSet<&String> = stored
        .context
        .keys()
        .chain(replayed.context.keys())
        .collect();
    for key in keys {
        differ(
            format!("context {key}"),
            or_none(stored.context.get(key)),
            or_none(replayed.context.get(key)),
        );
    }
    for i in 0..stored.steps.len().max(replayed.steps.len()) {
        match (stored.steps.get(i), replayed.steps.get(i)) {
            (Some(a), Some(b)) => {
                let name = if a.name == b.name {
                    a.name.clone()
                } else {
                    differ(
                        format!("step {} name", i + 1),
                        a.name.clone(),
                        b.name.clone(),
                    );
                    format!("{} / {}", a.name, b.name)
                };
                differ(
                    format!("step {name} status"),
                    view::step_state(a.status).into(),
                    view::step_state(b.status).into(),
                );
                differ(
                    format!("step {name} attempts"),
                    a.attempts.to_string(),
                    b.attempts.to_string(),
                );
                differ(
                    format!("step {name} compensation attempts"),
                    a.compensation_attempts.to_string(),
                    b.compensation_attempts.to_string(),
                );
                differ(
                    format!("step {name} started_at"),
                    or_none(a.started_at),
                    or_none(b.started_at),
                );
                differ(
                    format!("step {name} finished_at"),
                    or_none(a.finished_at),
                    or_none(b.finished_at),
                );
            }
            (a, b) => differ(
                format!("step {}", i + 1),
                or_none(a.map(|s| s.name.clone())),
                or_none(b.map(|s| s.name.clone())),
            ),
        }
    }
    if out.is_empty() && stored != replayed {
        out.push(Difference {
            field: "other fields".into(),
            stored: "the stored state".into(),
            replayed: "something else".into(),
        });
    }
    out
}

/// The definitions to replay with. By default each saga's own version, read back from
/// `sagas.definitions` (the current definition of its name for a saga started before versions
/// were kept); with `--definition`, the file for every saga of its name.
struct ReplayWith {
    current: BTreeMap<String, Definition>,
    stored: BTreeMap<(String, String), Definition>,
    file: Option<Definition>,
}

impl ReplayWith {
    async fn load(settings: &Settings, pool: &PgPool, file: Option<&Path>) -> anyhow::Result<Self> {
        let current = crate::run::definitions(settings)?
            .into_iter()
            .map(|d| (d.name.clone(), d))
            .collect();
        let file = file
            .map(|f| Definition::load(f, &Schemas::embedded()))
            .transpose()?;
        let mut db = pool.acquire().await.db("reading definition versions")?;
        let stored = orchestrator::versions::load_all(&mut db).await?;
        Ok(Self {
            current,
            stored,
            file,
        })
    }

    fn for_saga(&self, saga: &Saga) -> Result<&Definition, String> {
        if let Some(file) = self.file.as_ref().filter(|f| f.name == saga.definition) {
            return Ok(file);
        }
        match &saga.definition_version {
            Some(digest) => self
                .stored
                .get(&(saga.definition.clone(), digest.clone()))
                .ok_or_else(|| {
                    format!(
                        "its version {}@{digest} is not in sagas.definitions",
                        saga.definition
                    )
                }),
            None => self.current.get(&saga.definition).ok_or_else(|| {
                format!(
                    "no definition named {:?} to replay it with (known: {})",
                    saga.definition,
                    self.current.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            }),
        }
    }

    fn replay(&self, saga: &Saga, log: &[LogEntry]) -> Replayed {
        match self.for_saga(saga) {
            Ok(definition) => replay_log(definition, saga, log),
            Err(reason) => unreplayable(saga, reason),
        }
    }
}

async fn replay(settings: &Settings, args: ReplayArgs, json: bool) -> anyhow::Result<ExitCode> {
    let pool = connect(settings).await?;
    let with = ReplayWith::load(settings, &pool, args.definition.as_deref()).await?;
    let Some(id) = args.id else {
        return replay_all(&pool, &with, args.since, json).await;
    };
    let Some((saga, log)) = snapshot(&pool, id).await? else {
        return Ok(not_found(id));
    };
    if let (Some(name), Some(file)) = (with.file.as_ref().map(|f| &f.name), &args.definition)
        && *name != saga.definition
    {
        anyhow::bail!(
            "{} defines {name:?}, but saga {id} is a {:?} saga",
            file.display(),
            saga.definition
        );
    }
    let replayed = with.replay(&saga, &log);
    if json {
        output::json(&replayed)?;
    } else {
        let source = match &args.definition {
            Some(file) => file.display().to_string(),
            None => match &saga.definition_version {
                Some(digest) => format!("its own version {}@{digest}", saga.definition),
                None => "the current definition".into(),
            },
        };
        print_replay(&replayed, &source);
    }
    Ok(if replayed.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(exit::PROBLEM)
    })
}

fn print_replay(replayed: &Replayed, source: &str) {
    println!(
        "replaying saga {} ({}) through {source}",
        replayed.saga_id, replayed.saga
    );
    println!();
    let mut table = Table::new(&["seq", "input", "log", "replay", "match", "note"]);
    let outcome = |applied: bool, state: Option<&str>| {
        format!(
            "{}, {}",
            if applied { "applied" } else { "ignored" },
            state.unwrap_or("not started")
        )
    };
    for t in &replayed.transitions {
        let dim = |style: &'static str| Some(if t.logged_applied { style } else { "dim" });
        table.row(vec![
            (t.seq.to_string(), None),
            (t.input.clone(), dim("bold")),
            (
                outcome(t.logged_applied, Some(&t.logged_state)),
                dim("bold"),
            ),
            (
                outcome(t.replayed_applied, t.replayed_state.as_deref()),
                if t.replayed_applied {
                    None
                } else {
                    Some("dim")
                },
            ),
            if t.matches {
                ("yes".into(), Some("green"))
            } else {
                ("NO".into(), Some("red"))
            },
            (t.note.clone(), None),
        ]);
    }
    table.print();
    println!();
    match &replayed.divergence {
        None => println!(
            "{}: replay reproduces the log and the stored state ({})",
            paint("ok", "green"),
            replayed.stored_state
        ),
        Some(divergence) => {
            println!("{}", paint(&divergence.to_string(), "red"));
            if divergence.seq.is_some() && !replayed.differences.is_empty() {
                println!("the final state differs too:");
                for difference in &replayed.differences {
                    println!("  - {difference}");
                }
            }
        }
    }
}

#[derive(Debug, Serialize)]
struct ReplaySummary {
    saga_id: Uuid,
    saga: String,
    state: String,
    ok: bool,
    divergence: Option<Divergence>,
}

async fn replay_all(
    pool: &PgPool,
    with: &ReplayWith,
    since: Option<DateTime<Utc>>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let sagas = repo::list(pool, None, None, since, i64::MAX)
        .await
        .db("listing sagas")?;
    let mut summaries = Vec::with_capacity(sagas.len());
    for listed in &sagas {
        // Read again with its log, in one snapshot; a saga gone since the listing is skipped.
        let Some((saga, log)) = snapshot(pool, listed.id).await? else {
            continue;
        };
        let replayed = with.replay(&saga, &log);
        summaries.push(ReplaySummary {
            saga_id: saga.id,
            saga: saga.definition.clone(),
            state: saga.status.as_str().to_owned(),
            ok: replayed.ok(),
            divergence: replayed.divergence,
        });
    }
    let diverging = summaries.iter().filter(|s| !s.ok).count();
    if json {
        output::json(&json!({
            "replayed": summaries.len(),
            "diverging": diverging,
            "sagas": summaries,
        }))?;
    } else {
        let mut table = Table::new(&["id", "saga", "state", "replay"]);
        for s in &summaries {
            table.row(vec![
                (s.saga_id.to_string(), None),
                (s.saga.clone(), None),
                (s.state.clone(), Some(state_style(&s.state))),
                match &s.divergence {
                    None => ("ok".into(), Some("green")),
                    Some(d) => (d.to_string(), Some("red")),
                },
            ]);
        }
        if !table.is_empty() {
            table.print();
        }
        println!("{} sagas replayed, {diverging} diverge", summaries.len());
    }
    Ok(if diverging == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(exit::PROBLEM)
    })
}

// ---------------------------------------------------------------------------------------------
// retry, cancel

async fn operate(
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

// ---------------------------------------------------------------------------------------------
// check

#[derive(Debug, Serialize)]
struct Checked {
    source: String,
    saga: Option<String>,
    ok: bool,
    errors: Vec<String>,
}

fn checked(source: String, result: Result<Definition, saga::definition::LoadError>) -> Checked {
    use saga::definition::LoadError;
    match result {
        Ok(definition) => Checked {
            source,
            saga: Some(definition.name),
            ok: true,
            errors: Vec::new(),
        },
        Err(LoadError::Check { errors, .. }) => Checked {
            source,
            saga: None,
            ok: false,
            errors,
        },
        Err(LoadError::Read { reason, .. } | LoadError::Parse { reason, .. }) => Checked {
            source,
            saga: None,
            ok: false,
            errors: vec![reason],
        },
    }
}

fn check(settings: &Settings, files: &[PathBuf], json: bool) -> anyhow::Result<ExitCode> {
    let schemas = Schemas::embedded();
    let mut files = files.to_vec();
    if files.is_empty()
        && let Some(dir) = &settings.sagas_dir
    {
        let entries = std::fs::read_dir(dir)
            .with_context(|| format!("reading the sagas folder {}", dir.display()))?;
        files = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
    }
    let results: Vec<Checked> = if files.is_empty() && settings.sagas_dir.is_none() {
        let built_in = Settings {
            sagas_dir: None,
            ..settings.clone()
        };
        match crate::run::definitions(&built_in) {
            Ok(definitions) => definitions
                .into_iter()
                .map(|d| checked(format!("built-in {}", d.name), Ok(d)))
                .collect(),
            Err(error) => vec![Checked {
                source: "built-in definitions".into(),
                saga: None,
                ok: false,
                errors: vec![format!("{error:#}")],
            }],
        }
    } else {
        files
            .iter()
            .map(|f| checked(f.display().to_string(), Definition::load(f, &schemas)))
            .collect()
    };
    if results.is_empty() {
        eprintln!("no saga definitions to check");
        return Ok(ExitCode::from(exit::PROBLEM));
    }
    let failed = results.iter().filter(|r| !r.ok).count();
    if json {
        output::json(&results)?;
    } else {
        for result in &results {
            if result.ok {
                println!("{} {}", paint("ok", "green"), result.source);
            } else {
                println!("{} {}", paint("FAIL", "red"), result.source);
                for error in &result.errors {
                    println!("  - {error}");
                }
            }
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(exit::PROBLEM)
    })
}

/// `check --against-history`: the static checks, then the replay gate for the definitions
/// that pass them.
async fn gate(
    settings: &Settings,
    files: &[PathBuf],
    since: Option<DateTime<Utc>>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let schemas = Schemas::embedded();
    let definitions = if files.is_empty() {
        crate::run::definitions(settings)?
            .into_iter()
            .map(|d| (format!("loaded {}", d.name), d))
            .collect()
    } else {
        let mut definitions = Vec::with_capacity(files.len());
        for file in files {
            match Definition::load(file, &schemas) {
                Ok(definition) => definitions.push((file.display().to_string(), definition)),
                Err(error) => {
                    let failed = checked(file.display().to_string(), Err(error));
                    eprintln!("{} {}", paint("FAIL", "red"), failed.source);
                    for error in &failed.errors {
                        eprintln!("  - {error}");
                    }
                    return Ok(ExitCode::from(exit::PROBLEM));
                }
            }
        }
        definitions
    };
    let pool = connect(settings).await?;
    crate::saga_gate::against_history(&pool, definitions, since, json).await
}

// ---------------------------------------------------------------------------------------------
// graph

fn graph(
    settings: &Settings,
    name: Option<&str>,
    file: Option<&Path>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let definition = match file {
        Some(file) => {
            let definition = Definition::load(file, &Schemas::embedded())?;
            if let Some(name) = name
                && name != definition.name
            {
                anyhow::bail!(
                    "{} defines {:?}, not {name:?}",
                    file.display(),
                    definition.name
                );
            }
            definition
        }
        None => {
            let name = name.unwrap_or_default();
            let definitions = crate::run::definitions(settings)?;
            let known: Vec<String> = definitions.iter().map(|d| d.name.clone()).collect();
            match definitions.into_iter().find(|d| d.name == name) {
                Some(definition) => definition,
                None => {
                    eprintln!(
                        "no saga definition named {name:?}; known: {}",
                        known.join(", ")
                    );
                    return Ok(ExitCode::from(exit::NOT_FOUND));
                }
            }
        }
    };
    let text = mermaid(&definition);
    if json {
        output::json(&json!({"saga": definition.name, "mermaid": text}))?;
    } else {
        print!("{text}");
    }
    Ok(ExitCode::SUCCESS)
}

fn node_id(prefix: &str, name: &str) -> String {
    let safe: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("{prefix}_{safe}")
}

fn quoted(text: &str) -> String {
    format!("\"{}\"", text.replace('"', "#quot;"))
}

/// Where compensation goes once everything after step `upto` is settled: the compensation of
/// the latest step at or before it that has one, or the end.
fn undo_target(definition: &Definition, upto: Option<usize>) -> String {
    upto.and_then(|u| {
        (0..=u)
            .rev()
            .find(|&j| definition.steps[j].compensation.is_some())
    })
    .map_or_else(
        || "compensated".to_owned(),
        |j| node_id("undo", &definition.steps[j].name),
    )
}

/// A Mermaid flowchart of a definition, as the state machine runs it: solid edges forward,
/// dotted edges on failure, timeouts and exhausted compensations.
fn mermaid(definition: &Definition) -> String {
    let mut lines = vec![
        "flowchart TD".to_owned(),
        format!("    %% saga {}", definition.name),
        "    start((start))".to_owned(),
    ];
    let pivot = definition.pivot();
    let past_pivot = |i: usize| pivot.is_some_and(|p| i > p);
    for step in &definition.steps {
        let mut marks = Vec::new();
        if step.pivot {
            marks.push("PIVOT".to_owned());
        }
        if step.retriable {
            marks.push("retriable".to_owned());
        }
        if let Some(timeout) = step.timeout {
            marks.push(format!("timeout {}", saga::duration::format(timeout)));
        }
        if step.attempts > 1 {
            marks.push(format!("{} attempts", step.attempts));
        }
        let label = quoted(&format!("{}<br/>{}", step.name, marks.join(", ")));
        let id = node_id("step", &step.name);
        lines.push(if step.pivot {
            format!("    {id}{{{{{label}}}}}")
        } else if step.retriable {
            format!("    {id}[[{label}]]")
        } else {
            format!("    {id}[{label}]")
        });
    }
    for step in definition.steps.iter().rev() {
        if let Some(c) = &step.compensation {
            let short = c.command.rsplit('.').next().unwrap_or(&c.command);
            let label = quoted(&format!(
                "{short}<br/>{}<br/>undoes {}",
                c.command, step.name
            ));
            lines.push(format!("    {}({label})", node_id("undo", &step.name)));
        }
    }
    lines.push("    completed([completed])".to_owned());
    lines.push("    compensated([compensated])".to_owned());
    lines.push("    failed([failed])".to_owned());

    // Forward: each edge carries the reply that ends a step and the command that starts the next.
    let Some(first) = definition.steps.first() else {
        lines.push("    start --> completed".to_owned());
        return lines.join("\n") + "\n";
    };
    lines.push(format!(
        "    start -->|{}| {}",
        quoted(&first.command),
        node_id("step", &first.name)
    ));
    for (i, step) in definition.steps.iter().enumerate() {
        let id = node_id("step", &step.name);
        match definition.steps.get(i + 1) {
            Some(next) => lines.push(format!(
                "    {id} -->|{}| {}",
                quoted(&format!("{}, then {}", step.success, next.command)),
                node_id("step", &next.name)
            )),
            None => lines.push(format!("    {id} -->|{}| completed", quoted(&step.success))),
        }
        if step.attempts > 1 {
            lines.push(format!(
                "    {id} -->|{}| {id}",
                quoted(&format!(
                    "timeout: {} again, up to {} attempts",
                    step.command, step.attempts
                ))
            ));
        }
        // A refusal means the step did nothing: compensate what came before. A timeout after
        // the last attempt leaves the outcome unknown: compensate the step itself too.
        let (refused, timed_out) = if past_pivot(i) {
            ("failed".to_owned(), "failed".to_owned())
        } else {
            (
                undo_target(definition, i.checked_sub(1)),
                undo_target(definition, Some(i)),
            )
        };
        for failure in &step.failure {
            lines.push(format!("    {id} -.->|{}| {refused}", quoted(failure)));
        }
        let timeout = if step.attempts > 1 {
            format!("timeout after {} attempts", step.attempts)
        } else {
            "timeout".to_owned()
        };
        lines.push(format!("    {id} -.->|{}| {timed_out}", quoted(&timeout)));
    }
    // Backward: compensations in reverse order, each re-sent with back-off until it runs out.
    let retry = &definition.compensation_retry;
    for (i, step) in definition.steps.iter().enumerate().rev() {
        let Some(c) = &step.compensation else {
            continue;
        };
        let id = node_id("undo", &step.name);
        lines.push(format!(
            "    {id} -->|{}| {}",
            quoted(&c.done),
            undo_target(definition, i.checked_sub(1))
        ));
        lines.push(format!(
            "    {id} -.->|{}| failed",
            quoted(&format!("no {} after {} attempts", c.done, retry.attempts))
        ));
    }
    lines.push("    classDef pivot stroke-width:4px".to_owned());
    lines.push("    classDef undo stroke-dasharray:5 3".to_owned());
    lines.push("    classDef good fill:#d4f7d4".to_owned());
    lines.push("    classDef bad fill:#f7d4d4".to_owned());
    if let Some(p) = pivot {
        lines.push(format!(
            "    class {} pivot",
            node_id("step", &definition.steps[p].name)
        ));
    }
    let undo: Vec<String> = definition
        .steps
        .iter()
        .filter(|s| s.compensation.is_some())
        .map(|s| node_id("undo", &s.name))
        .collect();
    if !undo.is_empty() {
        lines.push(format!("    class {} undo", undo.join(",")));
    }
    lines.push("    class completed,compensated good".to_owned());
    lines.push("    class failed bad".to_owned());
    lines.join("\n") + "\n"
}

// ---------------------------------------------------------------------------------------------
// Time, for people

/// `--since`: RFC 3339, a date (midnight UTC), or a relative `90s`, `30m`, `1h`, `2d`, `1w`.
fn since(text: &str) -> Result<DateTime<Utc>, String> {
    parse_time(text, Utc::now())
}

fn parse_time(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(day) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return day
            .and_hms_opt(0, 0, 0)
            .map(|t| t.and_utc())
            .ok_or_else(|| format!("{text:?} is not a date"));
    }
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let bad = || {
        format!(
            "{text:?} is neither RFC 3339 (2025-01-31T12:00:00Z), a date, nor a relative time (30s, 15m, 1h, 2d, 1w)"
        )
    };
    let number: i64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return Err(bad()),
    };
    number
        .checked_mul(seconds * 1_000_000)
        .and_then(|back| now.timestamp_micros().checked_sub(back))
        .and_then(DateTime::from_timestamp_micros)
        .ok_or_else(|| format!("{text:?} reaches too far back"))
}

/// How long ago, roughly: `42s`, `5m`, `3h`, `12d`.
fn age(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..172_800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// A duration in milliseconds to read: `850ms`, `1.25s`, `3m05s`, `2h10m`.
fn span(ms: i64) -> String {
    let (sign, ms) = if ms < 0 { ("-", -ms) } else { ("", ms) };
    let text = match ms {
        0..1000 => format!("{ms}ms"),
        1000..60_000 => format!("{:.2}s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{}m{:02}s", ms / 60_000, ms / 1000 % 60),
        _ => format!("{}h{:02}m", ms / 3_600_000, ms / 60_000 % 60),
    };
    format!("{sign}{text}")
}

fn shorten(text: &str, max: usize) -> String {
    let line = text.lines().next().unwrap_or_default();
    if line.chars().count() <= max && line.len() == text.len() {
        return line.to_owned();
    }
    let cut: String = line.chars().take(max.saturating_sub(1)).collect();
    format!("{cut}…")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use saga::machine::{SagaStatus, StepStatus};
    use serde_json::{Map, Value};
    use sqlx::types::Json;
    use std::time::Duration;

    const CHECKOUT: &str = include_str!("../../../sagas/checkout.toml");

    fn checkout() -> Definition {
        Definition::from_toml(CHECKOUT).unwrap()
    }

    fn at(seconds: u64) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2025-03-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
            + Duration::from_secs(seconds)
    }

    fn reply(message_type: &str, payload: Value) -> Input {
        Input::Reply {
            message_type: message_type.into(),
            payload,
        }
    }

    /// Runs inputs through the definition the way the engine does and returns the log it would
    /// have written and the saga it would have stored.
    fn record(definition: &Definition, inputs: &[(Input, u64)]) -> (Saga, Vec<LogEntry>) {
        let id = Uuid::now_v7();
        let mut saga: Option<Saga> = None;
        let mut log = Vec::new();
        for (seq, (input, when)) in inputs.iter().enumerate() {
            let (applied, note) = match (&saga, input) {
                (None, Input::Start { input }) => {
                    let t = machine::start(definition, id, input.clone(), at(*when)).unwrap();
                    saga = Some(t.saga);
                    (true, t.note)
                }
                (Some(s), input) => match machine::apply(definition, s, input, at(*when)) {
                    Outcome::Applied(t) => {
                        saga = Some(t.saga);
                        (true, t.note)
                    }
                    Outcome::Ignored(why) => (false, why),
                },
                (None, _) => panic!("start first"),
            };
            let current = saga.as_ref().unwrap();
            log.push(LogEntry {
                seq: i32::try_from(seq).unwrap() + 1,
                at: at(*when),
                input: Json(input.clone()),
                message_id: None,
                applied,
                note,
                commands: Json(json!([])),
                status: current.status.as_str().into(),
                version: current.version,
                definition_version: current.definition_version.clone(),
            });
        }
        (saga.unwrap(), log)
    }

    fn start() -> Input {
        let mut input = Map::new();
        input.insert("order_id".into(), json!(Uuid::nil().to_string()));
        input.insert("customer_id".into(), json!("c-1"));
        input.insert("items".into(), json!([{"sku": "SKU-1", "quantity": 1}]));
        Input::Start { input }
    }

    /// A checkout whose payment is declined: compensated.
    fn declined() -> Vec<(Input, u64)> {
        vec![
            (start(), 0),
            (reply("order.evt.created", json!({})), 1),
            (
                reply("inventory.evt.reserved", json!({"total_cents": 1250})),
                2,
            ),
            (
                reply(
                    "payment.evt.declined",
                    json!({"reason": "insufficient funds"}),
                ),
                3,
            ),
            (
                reply("payment.evt.declined", json!({"reason": "duplicate"})),
                4,
            ),
            (reply("inventory.evt.released", json!({})), 5),
            (reply("order.evt.cancelled", json!({})), 6),
        ]
    }

    #[test]
    fn relative_and_absolute_times_are_understood() {
        let now = at(0);
        assert_eq!(
            parse_time("30m", now).unwrap(),
            now - Duration::from_secs(1800)
        );
        assert_eq!(
            parse_time("1h", now).unwrap(),
            now - Duration::from_secs(3600)
        );
        assert_eq!(
            parse_time("2d", now).unwrap(),
            now - Duration::from_secs(2 * 86_400)
        );
        assert_eq!(
            parse_time("45s", now).unwrap(),
            now - Duration::from_secs(45)
        );
        assert_eq!(
            parse_time("1w", now).unwrap(),
            now - Duration::from_secs(7 * 86_400)
        );
        assert_eq!(parse_time("2025-03-01T13:00:00+01:00", now).unwrap(), now);
        assert_eq!(
            parse_time("2025-03-01", now).unwrap(),
            now - Duration::from_secs(12 * 3600)
        );
        for bad in ["", "h", "5", "5y", "-5m", "yesterday", "99999999999999999d"] {
            assert!(parse_time(bad, now).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn durations_and_ages_read_well() {
        assert_eq!(span(850), "850ms");
        assert_eq!(span(1250), "1.25s");
        assert_eq!(span(185_000), "3m05s");
        assert_eq!(span(130 * 60_000), "2h10m");
        assert_eq!(age(42_000), "42s");
        assert_eq!(age(3 * 3_600_000), "3h");
        assert_eq!(age(12 * 86_400_000), "12d");
        assert_eq!(shorten("short", 10), "short");
        assert_eq!(shorten("a rather long error message", 10), "a rather …");
        assert_eq!(shorten("two\nlines", 10), "two…");
    }

    #[test]
    fn the_checkout_graph_shows_both_paths_and_the_terminals() {
        let text = mermaid(&checkout());
        assert!(text.starts_with("flowchart TD\n"), "{text}");
        for expected in [
            // Forward, command and success reply on the edges.
            r#"start -->|"order.cmd.create"| step_create_order"#,
            r#"step_create_order -->|"order.evt.created, then inventory.cmd.reserve"| step_reserve_inventory"#,
            r#"step_reserve_inventory -->|"inventory.evt.reserved, then payment.cmd.charge"| step_charge_payment"#,
            r#"step_charge_payment -->|"payment.evt.charged, then order.cmd.confirm"| step_confirm_order"#,
            r#"step_confirm_order -->|"order.evt.confirmed"| completed"#,
            // The pivot and the retriable step are marked.
            r#"step_charge_payment{{"charge_payment<br/>PIVOT, timeout 10s"}}"#,
            r#"step_confirm_order[["confirm_order<br/>retriable, timeout 10s, 20 attempts"]]"#,
            "class step_charge_payment pivot",
            r#"step_confirm_order -->|"timeout: order.cmd.confirm again, up to 20 attempts"| step_confirm_order"#,
            // Failures enter the compensation path just before the failing step.
            r#"step_create_order -.->|"order.evt.rejected"| compensated"#,
            r#"step_reserve_inventory -.->|"inventory.evt.reservation_failed"| undo_create_order"#,
            r#"step_charge_payment -.->|"payment.evt.declined"| undo_reserve_inventory"#,
            // A timeout compensates the step itself, whose outcome is unknown.
            r#"step_charge_payment -.->|"timeout"| undo_charge_payment"#,
            r#"step_create_order -.->|"timeout after 2 attempts"| undo_create_order"#,
            // Past the pivot, only forward or an operator.
            r#"step_confirm_order -.->|"timeout after 20 attempts"| failed"#,
            // The compensation path, in reverse.
            r#"undo_charge_payment("refund<br/>payment.cmd.refund<br/>undoes charge_payment")"#,
            r#"undo_reserve_inventory("release<br/>inventory.cmd.release<br/>undoes reserve_inventory")"#,
            r#"undo_create_order("cancel<br/>order.cmd.cancel<br/>undoes create_order")"#,
            r#"undo_charge_payment -->|"payment.evt.refunded"| undo_reserve_inventory"#,
            r#"undo_reserve_inventory -->|"inventory.evt.released"| undo_create_order"#,
            r#"undo_create_order -->|"order.evt.cancelled"| compensated"#,
            r#"undo_create_order -.->|"no order.evt.cancelled after 8 attempts"| failed"#,
            "completed([completed])",
            "compensated([compensated])",
            "failed([failed])",
        ] {
            assert!(text.contains(expected), "missing {expected}\n{text}");
        }
        // The compensation nodes are declared latest first.
        let position = |s: &str| text.find(s).unwrap();
        assert!(position("undo_charge_payment(") < position("undo_reserve_inventory("));
        assert!(position("undo_reserve_inventory(") < position("undo_create_order("));
        // Nothing on a confirmation failure goes backwards: confirm_order has no compensation.
        assert!(!text.contains("undo_confirm_order"));
    }

    #[test]
    fn the_fold_agrees_with_the_machines_replay() {
        let definition = checkout();
        let (stored, log) = record(&definition, &declined());
        let (saga, applied) = machine::replay(
            &definition,
            stored.id,
            log.iter().map(|e| (&e.input.0, e.at)),
        )
        .unwrap();
        let replayed = replay_log(&definition, &stored, &log);
        assert_eq!(
            replayed
                .transitions
                .iter()
                .map(|t| t.replayed_applied)
                .collect::<Vec<_>>(),
            applied
        );
        assert_eq!(saga, stored);
        assert_eq!(replayed.divergence, None, "{replayed:#?}");
        assert!(replayed.differences.is_empty());
        assert_eq!(replayed.replayed_state.as_deref(), Some("compensated"));
        // The duplicate decline was ignored, in the log and on replay.
        assert!(!replayed.transitions[4].logged_applied);
        assert!(replayed.transitions[4].matches);
    }

    #[test]
    fn a_different_step_order_diverges_at_the_first_reply() {
        let (stored, log) = record(&checkout(), &declined());
        let mut changed = checkout();
        changed.steps.swap(0, 1);
        let replayed = replay_log(&changed, &stored, &log);
        let divergence = replayed.divergence.clone().unwrap();
        assert_eq!(divergence.seq, Some(2));
        assert!(
            divergence.reason.starts_with(
                "reply order.evt.created was applied in the log but ignored on replay"
            ),
            "{divergence}"
        );
        assert!(!replayed.transitions[1].matches);
        assert!(
            replayed
                .differences
                .iter()
                .any(|d| d.field == "step 1 name"),
            "{:?}",
            replayed.differences
        );
    }

    #[test]
    fn fewer_attempts_diverge_where_a_timeout_is_treated_differently() {
        let definition = checkout();
        // The order service is silent: create_order times out twice, then its cancel is sent.
        let (stored, log) = record(
            &definition,
            &[(start(), 0), (Input::Timeout, 10), (Input::Timeout, 20)],
        );
        assert_eq!(stored.status, SagaStatus::Compensating);
        let mut changed = definition.clone();
        changed.steps[0].attempts = 1;
        let replayed = replay_log(&changed, &stored, &log);
        assert_eq!(
            replayed.divergence.clone().unwrap().to_string(),
            "diverges at seq 2: after timeout the log says running but replay says compensating \
             (create_order timed out after 1 attempts; compensating)"
        );
        let fields: Vec<&str> = replayed
            .differences
            .iter()
            .map(|d| d.field.as_str())
            .collect();
        assert!(
            fields.contains(&"step create_order compensation attempts"),
            "{fields:?}"
        );
    }

    #[test]
    fn a_final_state_that_differs_is_reported_field_by_field() {
        let definition = checkout();
        let (mut stored, log) = record(&definition, &declined());
        // As if someone had edited the stored row by hand.
        stored.status = SagaStatus::Failed;
        stored.steps[1].status = StepStatus::Compensating;
        stored.error = None;
        let replayed = replay_log(&definition, &stored, &log);
        let divergence = replayed.divergence.clone().unwrap();
        assert_eq!(divergence.seq, None);
        assert_eq!(
            replayed.differences,
            vec![
                Difference {
                    field: "status".into(),
                    stored: "failed".into(),
                    replayed: "compensated".into(),
                },
                Difference {
                    field: "error".into(),
                    stored: "none".into(),
                    replayed: "charge_payment failed: insufficient funds".into(),
                },
                Difference {
                    field: "step reserve_inventory status".into(),
                    stored: "compensating".into(),
                    replayed: "compensated".into(),
                },
            ]
        );
        assert!(divergence.to_string().starts_with(
            "diverges: the final state differs: status (stored failed, replayed compensated); "
        ));
    }

    #[test]
    fn an_ignored_input_that_replay_applies_is_a_divergence() {
        let definition = checkout();
        let (stored, mut log) = record(&definition, &declined());
        log[4].applied = false;
        log[3].applied = false;
        log[3].note = "it was lost".into();
        let replayed = replay_log(&definition, &stored, &log);
        assert_eq!(
            replayed.divergence.unwrap().to_string(),
            "diverges at seq 4: reply payment.evt.declined was ignored in the log (it was lost) \
             but applied on replay: charge_payment failed: insufficient funds; compensating"
        );
    }

    #[test]
    fn a_saga_without_its_definition_cannot_be_replayed() {
        let (stored, log) = record(&checkout(), &declined());
        let nothing = ReplayWith {
            current: BTreeMap::new(),
            stored: BTreeMap::new(),
            file: None,
        };
        // Its own version is not stored.
        let replayed = nothing.replay(&stored, &log);
        assert!(!replayed.ok());
        let reason = replayed.divergence.unwrap().reason;
        assert!(reason.contains("is not in sagas.definitions"), "{reason}");
        // Started before versions were kept, and no definition of its name is loaded.
        let legacy = Saga {
            definition_version: None,
            ..stored
        };
        let reason = nothing.replay(&legacy, &log).divergence.unwrap().reason;
        assert!(reason.contains("no definition named"), "{reason}");
    }

    #[test]
    fn the_timeline_lists_what_each_entry_sent() {
        let definition = checkout();
        let (stored, mut log) = record(&definition, &declined());
        log[3].commands = Json(json!([{
            "message_id": Uuid::nil(), "message_type": "inventory.cmd.release",
            "step": "reserve_inventory", "compensation": true
        }]));
        let shown = timeline(&stored, &log);
        assert_eq!(shown.timeline.len(), 7);
        assert_eq!(shown.timeline[0].since_previous_ms, None);
        assert_eq!(shown.timeline[1].since_previous_ms, Some(1000));
        assert_eq!(
            shown.timeline[3].commands[0].message_type,
            "inventory.cmd.release"
        );
        assert!(shown.timeline[3].commands[0].compensation);
        assert_eq!(shown.steps[2].state, "failed");
        assert_eq!(shown.steps[0].duration_ms, Some(6000));
    }
}
