//! Why a failed saga waits for an operator, in kinds a report can count.

use serde::Serialize;

use crate::machine::{Saga, SagaStatus, StepStatus};

/// How a halted saga's error begins.
pub(crate) const HALTED: &str = "halted: ";
/// How the error of a saga that lacks a field a command needs begins.
pub(crate) const NO_CONTEXT_FIELD: &str = "the saga's context has no ";

/// Why a failed saga waits for an operator, in kinds a report can count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Failure {
    /// A compensation ran out of attempts: the saga could not be rolled back.
    CompensationExhausted,
    /// A step past the pivot failed or ran out of attempts: the saga can only go forward.
    StuckPastPivot,
    /// A command could not be built: the saga's context lacks a field its definition needs.
    MissingField,
    /// The engine could not apply an input (see [`crate::machine::Input::Halt`]).
    Halted,
}

impl Failure {
    /// Why a failed saga failed; `None` for a saga that has not.
    pub fn of(saga: &Saga) -> Option<Self> {
        if saga.status != SagaStatus::Failed {
            return None;
        }
        let error = saga.error.as_deref().unwrap_or_default();
        Some(if error.starts_with(HALTED) {
            Self::Halted
        } else if error.starts_with(NO_CONTEXT_FIELD) {
            Self::MissingField
        } else if saga
            .current_step()
            .is_some_and(|step| step.status == StepStatus::Compensating)
        {
            Self::CompensationExhausted
        } else {
            Self::StuckPastPivot
        })
    }

    pub fn describe(self) -> &'static str {
        match self {
            Self::CompensationExhausted => "a compensation ran out of attempts",
            Self::StuckPastPivot => "a step past the pivot failed or ran out of attempts",
            Self::MissingField => "a command lacked a field of the saga's context",
            Self::Halted => "halted by the engine",
        }
    }
}
