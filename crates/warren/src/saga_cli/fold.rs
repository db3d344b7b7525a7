//! The replay engine: a saga's recorded log folded through a definition, entry by entry, and
//! the first place where the result parts from what was recorded, then the final state compared
//! field by field with the stored one.

use std::collections::BTreeSet;
use std::fmt::Display;

use orchestrator::repo::LogEntry;
use orchestrator::view;
use saga::Definition;
use saga::fold::{Fold, Folded};
use saga::machine::Saga;
use serde::Serialize;
use uuid::Uuid;

/// One log entry as recorded and as replayed.
#[derive(Debug, Serialize)]
pub(super) struct ReplayedEntry {
    pub(super) seq: i32,
    pub(super) input: String,
    pub(super) logged_applied: bool,
    pub(super) replayed_applied: bool,
    pub(super) logged_state: String,
    /// None while replay has no saga (its start failed).
    pub(super) replayed_state: Option<String>,
    logged_note: String,
    /// What replay did, or why it ignored the input.
    pub(super) note: String,
    pub(super) matches: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub(super) struct Divergence {
    /// The log entry where it shows first; none when only the final state differs.
    pub(super) seq: Option<i32>,
    pub(super) reason: String,
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
pub(super) struct Difference {
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
pub(super) struct Replayed {
    pub(super) saga_id: Uuid,
    pub(super) saga: String,
    pub(super) stored_state: String,
    pub(super) replayed_state: Option<String>,
    pub(super) transitions: Vec<ReplayedEntry>,
    /// The first divergence; none when replay reproduces the log and the stored state.
    pub(super) divergence: Option<Divergence>,
    /// Where the replayed final state differs from the stored one.
    pub(super) differences: Vec<Difference>,
}

impl Replayed {
    pub(super) fn ok(&self) -> bool {
        self.divergence.is_none()
    }
}

/// Folds a saga's log through a definition, entry by entry ([`saga::fold::Fold`], as
/// `machine::replay` does), and compares each outcome (applied or ignored, and the state after)
/// with what the log recorded, then the final state with the stored one.
pub(super) fn replay_log(definition: &Definition, stored: &Saga, log: &[LogEntry]) -> Replayed {
    let mut fold = Fold::new(definition, stored.id);
    let mut transitions = Vec::with_capacity(log.len());
    let mut divergence = None;
    for entry in log {
        let input = &entry.input.0;
        let Folded { applied, note, .. } = fold.feed(input, entry.at);
        let replayed_state = fold.saga().map(|s| s.status.as_str().to_owned());
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
    let differences = match fold.saga() {
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
        replayed_state: fold.saga().map(|s| s.status.as_str().to_owned()),
        transitions,
        divergence,
        differences,
    }
}

/// A saga whose definition is not at hand cannot be replayed: that counts as a divergence.
pub(super) fn unreplayable(stored: &Saga, reason: String) -> Replayed {
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use saga::machine::{self, Input, SagaStatus, StepStatus};

    use super::{Difference, replay_log};
    use crate::saga_cli::fixtures::{checkout, declined, record, start};

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
}
