//! `warren saga check --against-history`: the replay gate before a deploy.
//!
//! Folds the recorded log of every saga of a definition's name (finished and running, since a
//! time if given) through the changed definition ([`saga::history::fork`]) and reports, per
//! place where histories part from it, how many sagas would have taken another path, how many
//! of them are running now, and a few of their ids; with what the change does to each version
//! they ran on ([`saga::history::changes`]). It fails when any history does not replay through
//! the change: such a change is still safe to deploy (running sagas keep their own version and
//! new ones start on it), but running sagas cannot be moved onto it as they stand, and the
//! report says what the new version does differently.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::Context;
use chrono::{DateTime, Utc};
use saga::Definition;
use saga::history::{Fork, Recorded, changes, fork};
use saga::machine::Input;
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use sqlx::types::Json;
use uuid::Uuid;

use crate::exit;
use crate::output::{self, paint};

/// How many saga ids a fork lists.
const EXAMPLES: usize = 3;

#[derive(Debug, Serialize)]
struct Gate {
    source: String,
    saga: String,
    version: String,
    /// Recorded sagas of this name.
    sagas: usize,
    /// Those whose history replays through the change unchanged.
    unchanged: usize,
    versions: Vec<Against>,
    forks: Vec<Forked>,
    ok: bool,
}

/// A recorded version, and what the change does to it.
#[derive(Debug, Serialize)]
struct Against {
    version: String,
    sagas: usize,
    running: usize,
    /// Empty when the version is the change itself; `None` when the version is not stored.
    changes: Option<Vec<String>>,
}

/// One place where histories part from the change.
#[derive(Debug, Serialize)]
struct Forked {
    fork: Fork,
    description: String,
    sagas: usize,
    running: usize,
    examples: Vec<Uuid>,
}

#[derive(sqlx::FromRow)]
struct Row {
    saga_id: Uuid,
    saga_status: String,
    definition_version: Option<String>,
    at: DateTime<Utc>,
    input: Json<Input>,
    applied: bool,
    commands: Json<Value>,
    status: String,
}

/// Checks each changed definition against the recorded histories of its name.
pub(super) async fn against_history(
    pool: &PgPool,
    definitions: Vec<(String, Definition)>,
    since: Option<DateTime<Utc>>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut conn = pool.acquire().await.context("connecting to the database")?;
    let stored = orchestrator::versions::load_all(&mut conn)
        .await
        .context("reading the stored definition versions")?;
    drop(conn);
    let mut gates = Vec::with_capacity(definitions.len());
    for (source, definition) in definitions {
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT l.saga_id, s.status AS saga_status, s.definition_version, l.at, l.input, \
                    l.applied, l.commands, l.status \
             FROM sagas.saga_log l JOIN sagas.sagas s USING (saga_id) \
             WHERE s.definition = $1 AND ($2::timestamptz IS NULL OR s.created_at >= $2) \
             ORDER BY s.created_at, l.saga_id, l.seq",
        )
        .bind(&definition.name)
        .bind(since)
        .fetch_all(pool)
        .await
        .with_context(|| format!("reading the logs of {} sagas", definition.name))?;
        gates.push(gate(source, &definition, &rows, &stored));
    }
    let ok = gates.iter().all(|g| g.ok);
    if json {
        output::json(&gates)?;
    } else {
        for gate in &gates {
            print(gate);
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(exit::PROBLEM)
    })
}

fn gate(
    source: String,
    definition: &Definition,
    rows: &[Row],
    stored: &BTreeMap<(String, String), Definition>,
) -> Gate {
    let digest = definition.digest();
    let mut versions: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut forks: BTreeMap<Fork, Forked> = BTreeMap::new();
    let (mut sagas, mut unchanged) = (0, 0);
    for log in rows.chunk_by(|a, b| a.saga_id == b.saga_id) {
        let first = &log[0];
        let running = matches!(first.saga_status.as_str(), "running" | "compensating");
        sagas += 1;
        let version = first.definition_version.clone().unwrap_or_default();
        let counts = versions.entry(version).or_default();
        counts.0 += 1;
        counts.1 += usize::from(running);
        let recorded: Vec<Recorded<'_>> = log
            .iter()
            .map(|row| Recorded {
                input: &row.input.0,
                at: row.at,
                applied: row.applied,
                sent: orchestrator::repo::sent_types(&row.commands.0),
                status: &row.status,
            })
            .collect();
        let Some((_, parted)) = fork(definition, first.saga_id, &recorded) else {
            unchanged += 1;
            continue;
        };
        let forked = forks.entry(parted.clone()).or_insert_with(|| Forked {
            description: parted.to_string(),
            fork: parted,
            sagas: 0,
            running: 0,
            examples: Vec::new(),
        });
        forked.sagas += 1;
        forked.running += usize::from(running);
        if forked.examples.len() < EXAMPLES {
            forked.examples.push(first.saga_id);
        }
    }
    let versions = versions
        .into_iter()
        .map(|(version, (sagas, running))| Against {
            changes: if version == digest {
                Some(Vec::new())
            } else {
                stored
                    .get(&(definition.name.clone(), version.clone()))
                    .map(|old| changes(old, definition))
            },
            version,
            sagas,
            running,
        })
        .collect();
    let mut forks: Vec<Forked> = forks.into_values().collect();
    forks.sort_by_key(|f| std::cmp::Reverse(f.sagas));
    Gate {
        source,
        saga: definition.name.clone(),
        version: digest,
        sagas,
        unchanged,
        versions,
        ok: forks.is_empty(),
        forks,
    }
}

fn print(gate: &Gate) {
    println!(
        "{}: {}@{} against {} recorded sagas",
        gate.source, gate.saga, gate.version, gate.sagas
    );
    for against in &gate.versions {
        let name = if against.version.is_empty() {
            "no recorded version".to_owned()
        } else {
            format!("{}@{}", gate.saga, against.version)
        };
        println!(
            "  against {name} ({} sagas, {} running):",
            against.sagas, against.running
        );
        match &against.changes {
            None => println!("    (not stored: what the change does to it is unknown)"),
            Some(changes) if changes.is_empty() => println!("    the same version"),
            Some(changes) => {
                for change in changes {
                    println!("    - {change}");
                }
            }
        }
    }
    let parted = gate.sagas - gate.unchanged;
    if parted > 0 {
        let running: usize = gate.forks.iter().map(|f| f.running).sum();
        println!("  {parted} would take another path ({running} of them running):");
        for fork in &gate.forks {
            let examples: Vec<String> = fork.examples.iter().map(Uuid::to_string).collect();
            println!(
                "    {:>6}  {} ({} running)",
                fork.sagas, fork.description, fork.running
            );
            println!("            e.g. {}", examples.join(", "));
        }
    }
    println!("  {} replay through it unchanged", gate.unchanged);
    if gate.ok {
        println!(
            "{} every recorded history replays through the change",
            paint("ok", "green")
        );
    } else {
        println!(
            "{} recorded histories take another path under this change: running sagas cannot \
             be moved onto it as they stand (deployed, it is a new version: they finish on \
             their own, new sagas start on it)",
            paint("FAIL", "red")
        );
    }
}
