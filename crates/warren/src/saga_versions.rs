//! `warren saga versions`: the definition versions sagas run on.
//!
//! Every saga is pinned to the version of its definition it started under (the definition's
//! digest, `saga::Definition::digest`); the orchestrator keeps each one in `sagas.definitions`.
//! This lists them with how many sagas are in each state on each, which one new sagas start on
//! (the current one, from the definitions `warren run` loads), and which can be retired: no saga
//! can advance on it any more (none running, compensating, or failed and waiting for an
//! operator's retry) and new sagas do not start on it.

use std::collections::BTreeMap;
use std::process::ExitCode;

use serde::Serialize;
use sqlx::PgPool;
use sqlx::types::chrono::{DateTime, Utc};

use crate::output::{self, Table};
use crate::settings::Settings;

/// One version and the sagas on it.
#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct VersionUse {
    pub saga: String,
    /// None for sagas started before versions were kept: they follow the current definition.
    pub digest: Option<String>,
    pub label: Option<String>,
    pub first_used_at: Option<DateTime<Utc>>,
    pub running: i64,
    pub compensating: i64,
    pub failed: i64,
    pub completed: i64,
    pub compensated: i64,
    #[sqlx(skip)]
    pub current: bool,
    #[sqlx(skip)]
    pub retirable: bool,
}

impl VersionUse {
    /// Sagas that may still advance on this version.
    fn live(&self) -> i64 {
        self.running + self.compensating + self.failed
    }
}

pub async fn uses(
    pool: &PgPool,
    current: &BTreeMap<String, String>,
) -> sqlx::Result<Vec<VersionUse>> {
    let mut versions: Vec<VersionUse> = sqlx::query_as(
        "WITH counts AS ( \
             SELECT definition AS saga, definition_version AS digest, \
                    count(*) FILTER (WHERE status = 'running') AS running, \
                    count(*) FILTER (WHERE status = 'compensating') AS compensating, \
                    count(*) FILTER (WHERE status = 'failed') AS failed, \
                    count(*) FILTER (WHERE status = 'completed') AS completed, \
                    count(*) FILTER (WHERE status = 'compensated') AS compensated \
             FROM sagas.sagas GROUP BY definition, definition_version) \
         SELECT coalesce(d.name, c.saga) AS saga, coalesce(d.digest, c.digest) AS digest, \
                d.label, d.first_used_at, \
                coalesce(c.running, 0) AS running, coalesce(c.compensating, 0) AS compensating, \
                coalesce(c.failed, 0) AS failed, coalesce(c.completed, 0) AS completed, \
                coalesce(c.compensated, 0) AS compensated \
         FROM sagas.definitions d \
         FULL JOIN counts c ON c.saga = d.name AND c.digest = d.digest \
         ORDER BY 1, d.first_used_at NULLS FIRST, 2",
    )
    .fetch_all(pool)
    .await?;
    for version in &mut versions {
        version.current =
            version.digest.is_some() && current.get(&version.saga) == version.digest.as_ref();
        version.retirable = !version.current && version.digest.is_some() && version.live() == 0;
    }
    Ok(versions)
}

pub async fn versions(settings: &Settings, pool: &PgPool, json: bool) -> anyhow::Result<ExitCode> {
    let current: BTreeMap<String, String> = crate::run::definitions(settings)?
        .into_iter()
        .map(|d| (d.name.clone(), d.digest()))
        .collect();
    let versions = uses(pool, &current).await?;
    if json {
        output::json(&versions)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&[
        "saga",
        "version",
        "label",
        "first used",
        "running",
        "compensating",
        "failed",
        "completed",
        "compensated",
        "",
    ]);
    for v in &versions {
        let role = if v.current {
            ("current: new sagas start on it".to_owned(), Some("green"))
        } else if v.retirable {
            ("retirable".to_owned(), Some("dim"))
        } else if v.digest.is_none() {
            ("before versions: follows the current one".to_owned(), None)
        } else {
            (format!("{} sagas may still advance on it", v.live()), None)
        };
        table.row(vec![
            (v.saga.clone(), None),
            (v.digest.clone().unwrap_or_else(|| "-".into()), None),
            (v.label.clone().unwrap_or_default(), None),
            (
                v.first_used_at
                    .map_or_else(|| "-".into(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string()),
                None,
            ),
            (v.running.to_string(), None),
            (v.compensating.to_string(), None),
            (v.failed.to_string(), None),
            (v.completed.to_string(), None),
            (v.compensated.to_string(), None),
            role,
        ]);
    }
    if table.is_empty() {
        println!("no definition versions yet: no saga has started");
    } else {
        table.print();
    }
    Ok(ExitCode::SUCCESS)
}
