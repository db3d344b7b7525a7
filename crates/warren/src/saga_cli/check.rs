//! `warren saga check`: static checks of saga definitions, and with `--against-history` the
//! replay gate ([`super::gate`]) for the definitions that pass them.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use contracts::Schemas;
use saga::Definition;
use serde::Serialize;
use sqlx::types::chrono::{DateTime, Utc};

use super::connect;
use crate::exit;
use crate::output::{self, paint};
use crate::settings::Settings;

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

pub(super) fn check(
    settings: &Settings,
    files: &[PathBuf],
    json: bool,
) -> anyhow::Result<ExitCode> {
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
pub(super) async fn gate(
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
    super::gate::against_history(&pool, definitions, since, json).await
}
