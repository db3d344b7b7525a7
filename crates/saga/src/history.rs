//! Recorded histories against a changed definition: would each saga have taken the same path?
//!
//! The replay gate before a deploy (`warren saga check --against-history`): every saga's log is
//! folded through the changed definition, input by input at the times they were recorded, and
//! compared with what was recorded: whether each input was applied, which commands it sent,
//! and where the saga stood after it. The first place the two part is the saga's [`Fork`].
//! What is compared is the path, not every field of the state: a changed timeout that fires no
//! differently in any history replays unchanged, while one that would have fired earlier (or
//! not yet) shows as a fork where the recorded timeout was applied.
//!
//! [`changes`] lists what a change does to a definition, step by step, so that the forks can
//! be read against it.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::definition::{Definition, Step};
use crate::fold::Fold;
use crate::machine::Input;

/// One entry of a saga's log, as recorded.
#[derive(Debug, Clone)]
pub struct Recorded<'a> {
    pub input: &'a Input,
    pub at: DateTime<Utc>,
    pub applied: bool,
    /// The message types of the commands it sent, in order.
    pub sent: Vec<String>,
    /// The saga's status after it (`running`, `completed`, ...).
    pub status: &'a str,
}

/// Where a recorded history parts from the changed definition.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fork {
    /// The changed definition does not accept the saga's start.
    CannotStart { reason: String },
    /// The input was applied both times, but sends other commands.
    Sends {
        input: String,
        recorded: Vec<String>,
        replayed: Vec<String>,
    },
    /// History applied the input; the change ignores it (it waits for another reply, or a
    /// timeout has not passed under it).
    Ignores {
        input: String,
        recorded: Vec<String>,
    },
    /// History ignored the input; the change applies it.
    Applies {
        input: String,
        replayed: Vec<String>,
    },
    /// The same commands, but the saga ends up in another state.
    EndsOtherwise {
        input: String,
        recorded: String,
        replayed: String,
    },
}

impl fmt::Display for Fork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sent = |types: &[String]| {
            if types.is_empty() {
                "nothing".to_owned()
            } else {
                types.join(", ")
            }
        };
        match self {
            Self::CannotStart { reason } => write!(f, "the change cannot start it: {reason}"),
            Self::Sends {
                input,
                recorded,
                replayed,
            } => write!(
                f,
                "at {input}: history sent {}, the change sends {}",
                sent(recorded),
                sent(replayed)
            ),
            Self::Ignores { input, recorded } => write!(
                f,
                "at {input}: the change ignores it (history applied it and sent {})",
                sent(recorded)
            ),
            Self::Applies { input, replayed } => write!(
                f,
                "at {input}: the change applies it and sends {} (history ignored it)",
                sent(replayed)
            ),
            Self::EndsOtherwise {
                input,
                recorded,
                replayed,
            } => write!(
                f,
                "at {input}: history went {recorded}, the change goes {replayed}"
            ),
        }
    }
}

/// Folds a recorded history through `definition`; returns the first entry (by index) where
/// the paths part, or `None` when the change replays it unchanged.
pub fn fork(definition: &Definition, id: Uuid, history: &[Recorded<'_>]) -> Option<(usize, Fork)> {
    let first = history.first()?;
    let Input::Start { input } = first.input else {
        return Some((
            0,
            Fork::CannotStart {
                reason: "the log does not begin with a start".into(),
            },
        ));
    };
    let mut fold = Fold::new(definition, id);
    for (i, recorded) in history.iter().enumerate() {
        let folded = if i == 0 {
            match fold.start(input, first.at) {
                Ok(started) => started,
                Err(error) => {
                    let reason = error.to_string();
                    return Some((0, Fork::CannotStart { reason }));
                }
            }
        } else {
            fold.feed(recorded.input, recorded.at)
        };
        let status = fold
            .saga()
            .map_or("not started", |saga| saga.status.as_str());
        let sent = folded
            .commands
            .into_iter()
            .map(|c| c.message_type)
            .collect();
        if let Some(fork) = compare(recorded, folded.applied, sent, status) {
            return Some((i, fork));
        }
    }
    None
}

fn compare(
    recorded: &Recorded<'_>,
    applied: bool,
    sent: Vec<String>,
    status: &str,
) -> Option<Fork> {
    let input = recorded.input.describe();
    match (recorded.applied, applied) {
        (true, false) => Some(Fork::Ignores {
            input,
            recorded: recorded.sent.clone(),
        }),
        (false, true) => Some(Fork::Applies {
            input,
            replayed: sent,
        }),
        (false, false) => None,
        (true, true) if recorded.sent != sent => Some(Fork::Sends {
            input,
            recorded: recorded.sent.clone(),
            replayed: sent,
        }),
        (true, true) if recorded.status != status => Some(Fork::EndsOtherwise {
            input,
            recorded: recorded.status.to_owned(),
            replayed: status.to_owned(),
        }),
        (true, true) => None,
    }
}

/// What a change does to a definition, in lines for people: steps added, removed or moved,
/// and for each step kept, what changed in it.
pub fn changes(old: &Definition, new: &Definition) -> Vec<String> {
    let mut lines = Vec::new();
    let names = |d: &Definition| d.steps.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
    let (before, after) = (names(old), names(new));
    for (i, name) in after.iter().enumerate() {
        if !before.contains(name) {
            lines.push(format!(
                "step {name} added (step {} of {})",
                i + 1,
                after.len()
            ));
        }
    }
    for name in before.iter().filter(|n| !after.contains(n)) {
        lines.push(format!("step {name} removed"));
    }
    let kept = |list: &[String], other: &[String]| -> Vec<String> {
        list.iter().filter(|n| other.contains(n)).cloned().collect()
    };
    let (kept_before, kept_after) = (kept(&before, &after), kept(&after, &before));
    if kept_before != kept_after {
        lines.push(format!(
            "steps reordered: {} became {}",
            kept_before.join(", "),
            kept_after.join(", ")
        ));
    }
    if old.input != new.input {
        lines.push(format!(
            "start input {:?} became {:?}",
            old.input, new.input
        ));
    }
    if old.compensation_retry != new.compensation_retry {
        lines.push("compensation retries changed".into());
    }
    for step in &new.steps {
        if let Some(was) = old.steps.iter().find(|s| s.name == step.name) {
            lines.extend(
                step_changes(was, step)
                    .into_iter()
                    .map(|change| format!("step {}: {change}", step.name)),
            );
        }
    }
    lines
}

fn step_changes(old: &Step, new: &Step) -> Vec<String> {
    let mut lines = Vec::new();
    if old.command != new.command || old.fields != new.fields {
        lines.push(format!(
            "command {} {:?} became {} {:?}",
            old.command, old.fields, new.command, new.fields
        ));
    }
    if old.success != new.success || old.failure != new.failure {
        lines.push(format!(
            "another reply expected: {} / {:?} became {} / {:?}",
            old.success, old.failure, new.success, new.failure
        ));
    }
    if old.compensation != new.compensation {
        lines.push("compensation changed".into());
    }
    if old.pivot != new.pivot || old.retriable != new.retriable {
        lines.push(format!(
            "pivot {} retriable {} became pivot {} retriable {}",
            old.pivot, old.retriable, new.pivot, new.retriable
        ));
    }
    if old.timeout != new.timeout || old.attempts != new.attempts {
        lines.push(format!(
            "timeout {:?} x{} became {:?} x{}",
            old.timeout, old.attempts, new.timeout, new.attempts
        ));
    }
    lines
}
