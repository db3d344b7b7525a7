//! `warren saga list`: sagas, newest first, filtered by state, definition and age.

use std::process::ExitCode;

use clap::Args;
use contracts::messages::SagaView;
use orchestrator::{repo, view};
use sqlx::types::chrono::{DateTime, Utc};

use super::time::{age, since};
use super::{Db, STATES, connect};
use crate::output::{self, Table, shorten, state_style};
use crate::settings::Settings;

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
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

pub(super) async fn list(
    settings: &Settings,
    args: ListArgs,
    json: bool,
) -> anyhow::Result<ExitCode> {
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
