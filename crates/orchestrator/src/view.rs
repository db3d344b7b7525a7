//! The saga as people see it, from the machine's state.

use contracts::messages::{SagaView, StepView};
use saga::machine::{Saga, SagaStatus, StepStatus};
use uuid::Uuid;

pub fn step_state(status: StepStatus) -> &'static str {
    match status {
        StepStatus::Pending => "pending",
        StepStatus::Running => "running",
        StepStatus::Succeeded => "succeeded",
        StepStatus::Failed => "failed",
        StepStatus::TimedOut => "timed_out",
        StepStatus::Compensating => "compensating",
        StepStatus::Compensated => "compensated",
    }
}

pub fn of(saga: &Saga) -> SagaView {
    let current_step = match saga.status {
        SagaStatus::Completed | SagaStatus::Compensated => None,
        _ => saga.current_step().map(|s| s.name.clone()),
    };
    SagaView {
        saga_id: saga.id,
        saga: saga.definition.clone(),
        state: saga.status.as_str().to_owned(),
        current_step,
        order_id: saga
            .context
            .get("order_id")
            .and_then(|v| v.as_str())
            .and_then(|s| Uuid::parse_str(s).ok()),
        steps: saga
            .steps
            .iter()
            .map(|s| StepView {
                name: s.name.clone(),
                state: step_state(s.status).to_owned(),
                attempts: s.attempts,
                started_at: s.started_at,
                finished_at: s.finished_at,
            })
            .collect(),
        error: saga.error.clone(),
        created_at: saga.created_at,
        updated_at: saga.updated_at,
        version: saga.version,
        definition_version: saga.definition_version.clone(),
    }
}
