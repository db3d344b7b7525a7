//! Saga definitions as data.
//!
//! A definition lists steps. Each step sends a command built from the saga's context (the
//! start input plus every success reply so far), waits for its success or failure reply, and
//! names the compensation that undoes it. A step is either compensatable (it has a
//! compensation), the pivot (past it the saga can only go forward), or retriable (it is sent
//! again until it succeeds); steps after the pivot must be retriable.
//!
//! [`Definition::check`] refuses what cannot run safely: a compensatable step without a
//! compensation, a step without a timeout, a message type without a schema, a reply type that
//! could belong to two places, a command field nothing provides.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use contracts::Schemas;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::duration;

/// The context key the orchestrator fills with why a saga is compensating.
pub const FAILURE_REASON: &str = "failure_reason";

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// A label for people (`"2"`, `"2026-12 reorder"`); the version itself is [`Self::digest`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Context keys a start request must carry.
    pub input: Vec<String>,
    /// How compensations are re-sent when they time out.
    #[serde(default)]
    pub compensation_retry: Backoff,
    #[serde(rename = "step")]
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub name: String,
    pub command: String,
    /// Payload fields: `"key"` copies a context key, `"key = source"` copies another one.
    pub fields: Vec<String>,
    pub success: String,
    #[serde(default)]
    pub failure: Vec<String>,
    #[serde(default)]
    pub compensation: Option<Compensation>,
    #[serde(default)]
    pub pivot: bool,
    #[serde(default)]
    pub retriable: bool,
    #[serde(
        default,
        deserialize_with = "duration::deserialize_option",
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_option_duration"
    )]
    pub timeout: Option<Duration>,
    /// How many times the command is sent before the step counts as timed out (retriable
    /// steps: before the saga fails and needs an operator).
    #[serde(default = "one")]
    pub attempts: u32,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Compensation {
    pub command: String,
    pub fields: Vec<String>,
    /// The reply that says the step is undone.
    pub done: String,
}

/// Capped exponential back-off: the n-th re-send waits `backoff * 2^(n-1)`, at most
/// `max_backoff`, on top of the step's timeout.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    pub attempts: u32,
    #[serde(
        deserialize_with = "duration::deserialize",
        serialize_with = "duration::serialize"
    )]
    pub backoff: Duration,
    #[serde(
        deserialize_with = "duration::deserialize",
        serialize_with = "duration::serialize"
    )]
    pub max_backoff: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            attempts: 8,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    /// The extra wait before attempt `attempt` (1-based; the first has none).
    pub fn delay(&self, attempt: u32) -> Duration {
        if attempt <= 1 {
            return Duration::ZERO;
        }
        let factor = 2u32.saturating_pow(attempt - 2);
        self.backoff.saturating_mul(factor).min(self.max_backoff)
    }
}

fn one() -> u32 {
    1
}

fn serialize_option_duration<S: serde::Serializer>(
    value: &Option<Duration>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(d) => duration::serialize(d, s),
        None => s.serialize_none(),
    }
}

/// One payload field: where it goes and which context key it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field<'a> {
    pub target: &'a str,
    pub source: &'a str,
}

pub fn fields(specs: &[String]) -> impl Iterator<Item = Field<'_>> {
    specs.iter().map(|spec| match spec.split_once('=') {
        Some((target, source)) => Field {
            target: target.trim(),
            source: source.trim(),
        },
        None => Field {
            target: spec.trim(),
            source: spec.trim(),
        },
    })
}

/// Where a reply type belongs in a definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    Success,
    Failure,
    Compensated,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path} is not a valid definition: {reason}")]
    Parse { path: String, reason: String },
    #[error("{path} fails its checks:\n  - {}", .errors.join("\n  - "))]
    Check { path: String, errors: Vec<String> },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    #[error("the saga has no steps")]
    NoSteps,
    #[error("two steps are named {0:?}")]
    DuplicateStep(String),
    #[error("step {0:?} has no timeout")]
    NoTimeout(String),
    #[error(
        "step {0:?} can be compensated but names no compensation (or mark it pivot or retriable)"
    )]
    NoCompensation(String),
    #[error("step {0:?} comes after the pivot and must be retriable")]
    NotRetriableAfterPivot(String),
    #[error("more than one step is marked pivot")]
    TwoPivots,
    #[error("step {step:?}: message type {message_type:?} has no schema")]
    UnknownType { step: String, message_type: String },
    #[error("reply {0:?} is listed in more than one place, so it would be ambiguous")]
    AmbiguousReply(String),
    #[error(
        "step {step:?}: field {field:?} comes from {source_key:?}, which neither the input nor an earlier step's reply provides"
    )]
    UnprovidedField {
        step: String,
        field: String,
        source_key: String,
    },
    #[error("step {step:?}: attempts must be at least 1")]
    NoAttempts { step: String },
}

impl Definition {
    /// The version of this definition: the first 16 hex digits of the SHA-256 of its canonical
    /// form (the parsed definition as JSON, fields in declaration order), so the layout, comments
    /// and key order of the file do not count, and neither do the `description` and `version`
    /// labels, which change nothing a saga does. Every saga is pinned to the digest it started
    /// under.
    pub fn digest(&self) -> String {
        let canonical = Self {
            description: String::new(),
            version: None,
            ..self.clone()
        };
        let bytes = serde_json::to_vec(&canonical).expect("a definition serializes");
        Sha256::digest(&bytes)[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// `name@digest`, with the human label after it when there is one.
    pub fn version_name(&self) -> String {
        match &self.version {
            Some(label) => format!("{}@{} ({label})", self.name, self.digest()),
            None => format!("{}@{}", self.name, self.digest()),
        }
    }

    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// Reads and checks a definition file.
    pub fn load(path: &Path, schemas: &Schemas) -> Result<Self, LoadError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| LoadError::Read {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
        let definition = Self::from_toml(&text).map_err(|e| LoadError::Parse {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
        let errors = definition.check(schemas);
        if errors.is_empty() {
            Ok(definition)
        } else {
            Err(LoadError::Check {
                path: shown,
                errors: errors.iter().map(ToString::to_string).collect(),
            })
        }
    }

    /// Every `*.toml` in a directory, checked; sorted by name.
    pub fn load_dir(dir: &Path, schemas: &Schemas) -> Result<Vec<Self>, LoadError> {
        let entries = std::fs::read_dir(dir).map_err(|e| LoadError::Read {
            path: dir.display().to_string(),
            reason: e.to_string(),
        })?;
        let mut paths: Vec<_> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        paths.sort();
        paths.iter().map(|p| Self::load(p, schemas)).collect()
    }

    pub fn step(&self, name: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.name == name)
    }

    pub fn pivot(&self) -> Option<usize> {
        self.steps.iter().position(|s| s.pivot)
    }

    /// The step and role a reply type has in this saga.
    pub fn reply(&self, message_type: &str) -> Option<(usize, ReplyKind)> {
        self.steps.iter().enumerate().find_map(|(i, step)| {
            if step.success == message_type {
                Some((i, ReplyKind::Success))
            } else if step.failure.iter().any(|f| f == message_type) {
                Some((i, ReplyKind::Failure))
            } else if step
                .compensation
                .as_ref()
                .is_some_and(|c| c.done == message_type)
            {
                Some((i, ReplyKind::Compensated))
            } else {
                None
            }
        })
    }

    /// Every reply type the saga waits for (what the orchestrator's queue must receive).
    pub fn reply_types(&self) -> BTreeSet<&str> {
        let mut types = BTreeSet::new();
        for step in &self.steps {
            types.insert(step.success.as_str());
            types.extend(step.failure.iter().map(String::as_str));
            if let Some(c) = &step.compensation {
                types.insert(c.done.as_str());
            }
        }
        types
    }

    /// Static checks; an empty list means the definition can run.
    pub fn check(&self, schemas: &Schemas) -> Vec<CheckError> {
        let mut errors = Vec::new();
        if self.steps.is_empty() {
            errors.push(CheckError::NoSteps);
        }
        let mut names = BTreeSet::new();
        let mut replies: BTreeMap<&str, usize> = BTreeMap::new();
        let pivot = self.pivot();
        if self.steps.iter().filter(|s| s.pivot).count() > 1 {
            errors.push(CheckError::TwoPivots);
        }
        // What the context holds when each step is sent: the input plus earlier successes.
        let mut provided: BTreeSet<String> = self.input.iter().cloned().collect();
        provided.insert(FAILURE_REASON.to_owned());
        for (i, step) in self.steps.iter().enumerate() {
            if !names.insert(step.name.as_str()) {
                errors.push(CheckError::DuplicateStep(step.name.clone()));
            }
            if step.timeout.is_none() {
                errors.push(CheckError::NoTimeout(step.name.clone()));
            }
            if step.attempts == 0 {
                errors.push(CheckError::NoAttempts {
                    step: step.name.clone(),
                });
            }
            let after_pivot = pivot.is_some_and(|p| i > p);
            if after_pivot && !step.retriable {
                errors.push(CheckError::NotRetriableAfterPivot(step.name.clone()));
            }
            if !after_pivot && !step.pivot && !step.retriable && step.compensation.is_none() {
                errors.push(CheckError::NoCompensation(step.name.clone()));
            }
            let mut types = vec![step.command.as_str(), step.success.as_str()];
            types.extend(step.failure.iter().map(String::as_str));
            if let Some(c) = &step.compensation {
                types.push(c.command.as_str());
                types.push(c.done.as_str());
            }
            for message_type in types {
                if !schemas.knows(message_type) {
                    errors.push(CheckError::UnknownType {
                        step: step.name.clone(),
                        message_type: message_type.to_owned(),
                    });
                }
            }
            let mut step_replies = vec![step.success.as_str()];
            step_replies.extend(step.failure.iter().map(String::as_str));
            step_replies.extend(step.compensation.as_ref().map(|c| c.done.as_str()));
            for reply in step_replies {
                *replies.entry(reply).or_default() += 1;
            }
            let mut needed: Vec<Field<'_>> = fields(&step.fields).collect();
            if let Some(c) = &step.compensation {
                needed.extend(fields(&c.fields));
            }
            for field in needed {
                if !provided.contains(field.source) {
                    errors.push(CheckError::UnprovidedField {
                        step: step.name.clone(),
                        field: field.target.to_owned(),
                        source_key: field.source.to_owned(),
                    });
                }
            }
            provided.extend(schema_properties(schemas, &step.success));
        }
        for (reply, count) in replies {
            if count > 1 {
                errors.push(CheckError::AmbiguousReply(reply.to_owned()));
            }
        }
        errors
    }
}

/// The top-level property names a message type's schema declares.
fn schema_properties(schemas: &Schemas, message_type: &str) -> Vec<String> {
    schemas
        .schema(message_type)
        .and_then(|s| s.get("properties"))
        .and_then(|p| p.as_object())
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const CHECKOUT: &str = include_str!("../../../sagas/checkout.toml");

    fn checkout() -> Definition {
        Definition::from_toml(CHECKOUT).unwrap()
    }

    #[test]
    fn the_checkout_definition_passes_its_checks() {
        let definition = checkout();
        assert_eq!(definition.check(&Schemas::embedded()), vec![]);
        assert_eq!(definition.pivot(), Some(2));
        assert_eq!(
            definition.reply("payment.evt.declined"),
            Some((2, ReplyKind::Failure))
        );
        assert_eq!(
            definition.reply("inventory.evt.released"),
            Some((1, ReplyKind::Compensated))
        );
    }

    #[test]
    fn the_digest_ignores_layout_comments_key_order_and_labels() {
        let original = checkout();
        // The same definition written otherwise: comments gone, keys of each table reversed,
        // blank lines and indentation changed, a description and a version label added.
        let mut rewritten = String::new();
        let mut table: Vec<&str> = Vec::new();
        let flush = |table: &mut Vec<&str>, out: &mut String| {
            for line in table.drain(..).rev() {
                out.push_str("   ");
                out.push_str(line);
                out.push('\n');
            }
        };
        for line in CHECKOUT.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') || line.starts_with("description") {
                continue;
            }
            if line.starts_with('[') {
                flush(&mut table, &mut rewritten);
                rewritten.push_str("\n\n");
                rewritten.push_str(line);
                rewritten.push('\n');
            } else {
                table.push(line);
            }
        }
        flush(&mut table, &mut rewritten);
        let rewritten = rewritten.replacen(
            "\n\n[",
            "description = \"told otherwise\"\nversion = \"7\"\n\n[",
            1,
        );
        let reparsed = Definition::from_toml(&rewritten).unwrap();
        assert_ne!(reparsed, original, "the labels differ, so the parse does");
        assert_eq!(reparsed.version.as_deref(), Some("7"));
        assert_eq!(reparsed.digest(), original.digest());
        assert_eq!(original.digest().len(), 16);
    }

    #[test]
    fn the_digest_changes_with_anything_a_saga_does() {
        let original = checkout();
        let mut reordered = checkout();
        reordered.steps.swap(0, 1);
        let mut slower = checkout();
        slower.steps[1].timeout = Some(Duration::from_secs(99));
        let mut fewer = checkout();
        fewer.steps.pop();
        let digests: BTreeSet<String> = [&original, &reordered, &slower, &fewer]
            .iter()
            .map(|d| d.digest())
            .collect();
        assert_eq!(digests.len(), 4, "{digests:?}");
        assert!(original.version_name().starts_with("checkout@"));
    }

    #[test]
    fn the_image_definition_passes_its_checks() {
        let definition = Definition::from_toml(include_str!("../../../sagas/image.toml")).unwrap();
        assert_eq!(definition.check(&Schemas::embedded()), vec![]);
        assert_eq!(
            definition.reply("image.evt.failed"),
            Some((0, ReplyKind::Failure))
        );
    }

    #[test]
    fn a_compensatable_step_without_compensation_is_refused() {
        let mut definition = checkout();
        definition.steps[1].compensation = None;
        assert!(
            definition
                .check(&Schemas::embedded())
                .contains(&CheckError::NoCompensation("reserve_inventory".into()))
        );
    }

    #[test]
    fn a_step_without_timeout_is_refused() {
        let mut definition = checkout();
        definition.steps[0].timeout = None;
        assert!(
            definition
                .check(&Schemas::embedded())
                .contains(&CheckError::NoTimeout("create_order".into()))
        );
    }

    #[test]
    fn unknown_types_and_ambiguous_replies_are_refused() {
        let mut definition = checkout();
        definition.steps[0].command = "order.cmd.crate".into();
        definition.steps[1]
            .failure
            .push("order.evt.rejected".into());
        let errors = definition.check(&Schemas::embedded());
        assert!(errors.contains(&CheckError::UnknownType {
            step: "create_order".into(),
            message_type: "order.cmd.crate".into()
        }));
        assert!(errors.contains(&CheckError::AmbiguousReply("order.evt.rejected".into())));
    }

    #[test]
    fn a_field_nothing_provides_is_refused() {
        let mut definition = checkout();
        // total_cents comes from the reservation reply, so the first step cannot use it.
        definition.steps[0].fields.push("total_cents".into());
        assert!(
            definition
                .check(&Schemas::embedded())
                .iter()
                .any(|e| matches!(e, CheckError::UnprovidedField { source_key, .. } if source_key == "total_cents"))
        );
    }

    #[test]
    fn steps_after_the_pivot_must_be_retriable() {
        let mut definition = checkout();
        definition.steps[3].retriable = false;
        assert!(
            definition
                .check(&Schemas::embedded())
                .contains(&CheckError::NotRetriableAfterPivot("confirm_order".into()))
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let backoff = Backoff {
            attempts: 10,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(5),
        };
        let delays: Vec<u64> = (1..=6).map(|a| backoff.delay(a).as_secs()).collect();
        assert_eq!(delays, vec![0, 1, 2, 4, 5, 5]);
    }

    #[test]
    fn fields_may_rename() {
        let specs = vec![
            "order_id".to_owned(),
            "amount_cents = total_cents".to_owned(),
        ];
        let fields: Vec<Field<'_>> = fields(&specs).collect();
        assert_eq!(
            fields[1],
            Field {
                target: "amount_cents",
                source: "total_cents"
            }
        );
    }
}
