//! `warren saga migrate`: moves chosen running sagas onto another version of their definition.
//!
//! Each saga moves in a transaction of its own, and only if its recorded history replays
//! through the target version unchanged ([`orchestrator::migrate`]); the others stay on their
//! version and finish on it. Every move is recorded in the saga's log.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use contracts::Schemas;
use orchestrator::Engine;
use orchestrator::migrate::{Moved, migrate};
use saga::Definition;
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::exit;
use crate::output::{self, Table, paint};
use crate::settings::Settings;

#[derive(Debug, Args)]
pub(crate) struct MigrateArgs {
    /// The version to move sagas from (a digest, as `warren saga versions` lists it).
    #[arg(long)]
    from: String,
    /// The version to move them to: a definition file, or the digest of a stored version.
    #[arg(long)]
    to: String,
    /// Only this saga (repeat for several). Without: every running or compensating saga on
    /// `--from`.
    #[arg(long = "saga")]
    sagas: Vec<Uuid>,
    /// Only sagas whose current step is this one.
    #[arg(long)]
    at_step: Option<String>,
    /// Say what would move, and move nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Debug, Serialize)]
struct Outcome {
    saga_id: Uuid,
    moved: bool,
    /// Why it stayed.
    reason: Option<String>,
}

pub(super) async fn execute(
    settings: &Settings,
    pool: PgPool,
    args: MigrateArgs,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let Some(to) = target(&pool, &args.to).await? else {
        eprintln!(
            "no definition file and no stored version {:?} (see `warren saga versions`)",
            args.to
        );
        return Ok(ExitCode::from(exit::NOT_FOUND));
    };
    let known: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM sagas.definitions WHERE digest = $1)")
            .bind(&args.from)
            .fetch_one(&pool)
            .await
            .context("reading the stored versions")?;
    if !known {
        eprintln!(
            "no stored version {:?} (see `warren saga versions`)",
            args.from
        );
        return Ok(ExitCode::from(exit::NOT_FOUND));
    }
    let chosen: Vec<Uuid> = sqlx::query_scalar(
        "SELECT saga_id FROM sagas.sagas \
         WHERE definition_version = $1 AND status IN ('running', 'compensating') \
           AND (cardinality($2::uuid[]) = 0 OR saga_id = ANY($2)) \
           AND ($3::text IS NULL OR current_step = $3) \
         ORDER BY created_at",
    )
    .bind(&args.from)
    .bind(&args.sagas)
    .bind(&args.at_step)
    .fetch_all(&pool)
    .await
    .context("choosing the sagas to move")?;

    let engine = Engine::new(pool.clone(), crate::run::definitions(settings)?);
    engine
        .clock()
        .sync(&pool)
        .await
        .context("reading the database's clock")?;
    let mut outcomes = Vec::with_capacity(chosen.len());
    for saga_id in chosen {
        let outcome = match migrate(&engine, saga_id, &to, args.dry_run).await {
            Ok(Moved::Moved { .. }) => Outcome {
                saga_id,
                moved: true,
                reason: None,
            },
            Ok(Moved::Refused(reason)) => Outcome {
                saga_id,
                moved: false,
                reason: Some(reason),
            },
            Err(error) => {
                return Err(anyhow::Error::new(error).context(format!("moving saga {saga_id}")));
            }
        };
        outcomes.push(outcome);
    }
    let stayed = outcomes.iter().filter(|o| !o.moved).count();
    if json {
        output::json(&serde_json::json!({
            "from": args.from,
            "to": to.digest(),
            "dry_run": args.dry_run,
            "sagas": outcomes,
        }))?;
    } else {
        print(&outcomes, &args.from, &to.digest(), args.dry_run);
    }
    Ok(if stayed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(exit::PROBLEM)
    })
}

/// The target version: a definition file (statically checked), or a stored version.
async fn target(pool: &PgPool, to: &str) -> anyhow::Result<Option<Definition>> {
    let path = Path::new(to);
    if path.is_file() {
        let definition = Definition::load(path, &Schemas::embedded())
            .with_context(|| format!("loading {to}"))?;
        return Ok(Some(definition));
    }
    let mut conn = pool.acquire().await.context("connecting to the database")?;
    let stored = orchestrator::versions::load_all(&mut conn)
        .await
        .context("reading the stored versions")?;
    Ok(stored
        .into_iter()
        .find(|((_, digest), _)| digest == to)
        .map(|(_, definition)| definition))
}

fn print(outcomes: &[Outcome], from: &str, to: &str, dry_run: bool) {
    let verb = if dry_run { "would move" } else { "moved" };
    let mut table = Table::new(&["saga", "result"]);
    for outcome in outcomes {
        table.row(vec![
            (outcome.saga_id.to_string(), None),
            match &outcome.reason {
                None => (verb.to_owned(), Some("green")),
                Some(reason) => (format!("stays: {reason}"), Some("yellow")),
            },
        ]);
    }
    if !table.is_empty() {
        table.print();
    }
    let moved = outcomes.iter().filter(|o| o.moved).count();
    println!(
        "{} {moved} of {} sagas from {from} to {to}; {} stay on their version",
        paint(verb, "bold"),
        outcomes.len(),
        outcomes.len() - moved
    );
}
