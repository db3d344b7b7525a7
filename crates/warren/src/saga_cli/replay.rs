//! `warren saga replay`: one saga's log, or every saga's, replayed through the definition version
//! it ran on (or a file), with the first divergence reported.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use contracts::Schemas;
use orchestrator::repo::{self, LogEntry};
use saga::Definition;
use saga::machine::Saga;
use serde::Serialize;
use serde_json::json;
use sqlx::PgPool;
use sqlx::types::chrono::{DateTime, Utc};
use uuid::Uuid;

use super::fold::{Divergence, Replayed, replay_log, unreplayable};
use super::time::since;
use super::{Db, connect, not_found, snapshot};
use crate::exit;
use crate::output::{self, Table, paint, state_style};
use crate::settings::Settings;

#[derive(Debug, Args)]
pub(crate) struct ReplayArgs {
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

pub(super) async fn replay(
    settings: &Settings,
    args: ReplayArgs,
    json: bool,
) -> anyhow::Result<ExitCode> {
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use saga::machine::Saga;

    use super::ReplayWith;
    use crate::saga_cli::fixtures::{checkout, declined, record};

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
}
