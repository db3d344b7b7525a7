//! `warren saga show`: a saga's timeline as its log recorded it, what each input did and what it
//! sent, then where each step stands.

use std::process::ExitCode;

use contracts::messages::SagaView;
use orchestrator::repo::LogEntry;
use orchestrator::view;
use saga::machine::{Input, Saga};
use serde::{Deserialize, Serialize};
use sqlx::types::chrono::{DateTime, Utc};
use uuid::Uuid;

use super::time::span;
use super::{connect, not_found, snapshot};
use crate::output::{self, Table, paint, state_style};
use crate::settings::Settings;

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

pub(super) async fn show(settings: &Settings, id: Uuid, json: bool) -> anyhow::Result<ExitCode> {
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;
    use sqlx::types::Json;
    use uuid::Uuid;

    use super::timeline;
    use crate::saga_cli::fixtures::{checkout, declined, record};

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
