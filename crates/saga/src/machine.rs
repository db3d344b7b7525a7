//! The saga state machine: `(saga, input) -> new saga + commands`, with no I/O and no clock
//! of its own (the caller passes `now`), so it can be tested event by event and replayed from
//! a saga's log.
//!
//! Forward: each step's command is sent in turn; its success reply merges into the context
//! and the next step starts. Backward: a failure reply (the step did nothing), a timeout after
//! the last attempt (the outcome is unknown), or an operator's cancel compensates every step
//! that may have taken effect, latest first. Past the pivot the saga only goes forward.
//! Compensations are re-sent with capped back-off; when they run out the saga is `failed` and
//! waits for an operator. Stale and duplicate replies are ignored; a success that arrives
//! after its step was given up on is undone by sending the compensation again, or, past the
//! pivot (where nothing is undone), carries the saga on. An input the engine cannot apply to
//! one saga halts that saga alone ([`Input::Halt`]).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::definition::{Definition, FAILURE_REASON, ReplyKind, fields};
pub use crate::failure::Failure;
use crate::failure::{HALTED, NO_CONTEXT_FIELD};
pub use crate::fold::{ReplayError, replay};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SagaStatus {
    Running,
    Compensating,
    Completed,
    /// Rolled back cleanly.
    Compensated,
    /// Needs an operator: a compensation (or a step past the pivot) ran out of attempts.
    Failed,
}

impl SagaStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Compensating => "compensating",
            Self::Completed => "completed",
            Self::Compensated => "compensated",
            Self::Failed => "failed",
        }
    }

    /// Every status, in the order of `contracts::messages::SAGA_STATES`.
    pub const ALL: [Self; 5] = [
        Self::Running,
        Self::Compensating,
        Self::Completed,
        Self::Compensated,
        Self::Failed,
    ];

    /// No more progress without an operator.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Compensated | Self::Failed)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Pending,
    Running,
    Succeeded,
    /// Its participant said no: nothing to undo.
    Failed,
    /// Given up on without an answer (timed out, or the saga was cancelled): may have taken
    /// effect, so it is compensated.
    TimedOut,
    Compensating,
    Compensated,
}

impl StepStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::TimedOut => "timed_out",
            Self::Compensating => "compensating",
            Self::Compensated => "compensated",
        }
    }

    /// Whether the step may have left an effect that a compensation must undo.
    fn may_have_effect(self) -> bool {
        matches!(self, Self::Succeeded | Self::TimedOut | Self::Compensating)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepState {
    pub name: String,
    pub status: StepStatus,
    /// How many times the command was sent.
    pub attempts: u32,
    /// How many times the compensation was sent.
    pub compensation_attempts: u32,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Saga {
    pub id: Uuid,
    pub definition: String,
    /// The [`Definition::digest`] the saga started under, which it keeps to its end. None for
    /// sagas started before versions were recorded: those follow the definition of their name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition_version: Option<String>,
    pub status: SagaStatus,
    /// The step in progress (forward or being compensated); the last one touched once done.
    pub current: usize,
    pub steps: Vec<StepState>,
    /// The start input plus every success reply's fields.
    pub context: Map<String, Value>,
    pub error: Option<String>,
    /// When the step or compensation in flight times out.
    pub deadline: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Incremented by every applied transition.
    pub version: i64,
}

impl Saga {
    pub fn current_step(&self) -> Option<&StepState> {
        self.steps.get(self.current)
    }
}

/// What can happen to a saga.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Input {
    Start {
        input: Map<String, Value>,
    },
    Reply {
        message_type: String,
        payload: Value,
    },
    /// The deadline passed.
    Timeout,
    /// An operator re-drives the saga from where it stands.
    Retry,
    /// An operator asks for the saga to be rolled back.
    Cancel {
        reason: String,
    },
    /// The engine could not apply an input to this saga (its definition version cannot be
    /// read, or its transition panicked): the saga stops where it stands and waits for an
    /// operator, so that the sagas around it go on. Logged in place of the input it could not
    /// apply, so that replaying the log reproduces the saga.
    Halt {
        reason: String,
    },
    /// An operator moved the saga onto another version of its definition (`warren saga
    /// migrate`), which had to take the saga's recorded history the same way. Replaying the
    /// log through the new version reproduces the saga with this entry applied.
    Migrate {
        to: String,
    },
}

impl Input {
    pub fn describe(&self) -> String {
        match self {
            Self::Start { .. } => "start".into(),
            Self::Reply { message_type, .. } => format!("reply {message_type}"),
            Self::Timeout => "timeout".into(),
            Self::Retry => "operator retry".into(),
            Self::Cancel { reason } => format!("operator cancel ({reason})"),
            Self::Halt { reason } => format!("halt ({reason})"),
            Self::Migrate { to } => format!("moved to version {to}"),
        }
    }
}

/// A command to send as a result of a transition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    pub step: String,
    pub compensation: bool,
    pub message_type: String,
    pub payload: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub saga: Saga,
    pub commands: Vec<Command>,
    /// What happened, for the saga's log and timeline.
    pub note: String,
}

// An outcome is moved out of `apply` once and taken apart at once; boxing the common
// variant would only add an allocation per transition.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Applied(Transition),
    /// Nothing changes (stale or duplicate input); says why.
    Ignored(String),
}

/// Why a saga cannot start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    #[error("{saga} input lacks {}", .missing.join(", "))]
    MissingInput { saga: String, missing: Vec<String> },
}

/// Starts a saga: checks the input and sends the first step's command.
pub fn start(
    definition: &Definition,
    id: Uuid,
    input: Map<String, Value>,
    now: DateTime<Utc>,
) -> Result<Transition, StartError> {
    let missing: Vec<String> = definition
        .input
        .iter()
        .filter(|k| !input.contains_key(k.as_str()))
        .cloned()
        .collect();
    if !missing.is_empty() {
        return Err(StartError::MissingInput {
            saga: definition.name.clone(),
            missing,
        });
    }
    let saga = Saga {
        id,
        definition: definition.name.clone(),
        definition_version: Some(definition.digest()),
        status: SagaStatus::Running,
        current: 0,
        steps: definition
            .steps
            .iter()
            .map(|s| StepState {
                name: s.name.clone(),
                status: StepStatus::Pending,
                attempts: 0,
                compensation_attempts: 0,
                started_at: None,
                finished_at: None,
            })
            .collect(),
        context: input,
        error: None,
        deadline: None,
        created_at: now,
        updated_at: now,
        version: 0,
    };
    let mut run = Run::new(definition, saga, now);
    run.send_step(0);
    Ok(run.finish(format!("started; step {} sent", definition.steps[0].name)))
}

/// Applies one input to a saga.
pub fn apply(definition: &Definition, saga: &Saga, input: &Input, now: DateTime<Utc>) -> Outcome {
    let run = || Run::new(definition, saga.clone(), now);
    match input {
        Input::Start { .. } => Outcome::Ignored("already started".into()),
        Input::Reply {
            message_type,
            payload,
        } => run().reply(message_type, payload),
        Input::Timeout => run().timeout(),
        Input::Retry => run().retry(),
        Input::Cancel { reason } => run().cancel(reason),
        Input::Halt { reason } => halt(saga, reason, now),
        Input::Migrate { to } => migrate(saga, to, now),
    }
}

/// Records that the saga now runs on version `to`. Whether it may is the engine's to decide
/// (the saga's history must replay through `to` unchanged); the state itself is the one that
/// replay produced.
fn migrate(saga: &Saga, to: &str, now: DateTime<Utc>) -> Outcome {
    let mut saga = saga.clone();
    let from = saga.definition_version.replace(to.to_owned());
    saga.version += 1;
    saga.updated_at = now;
    Outcome::Applied(Transition {
        saga,
        commands: vec![],
        note: format!(
            "moved by an operator from version {} to {to}",
            from.as_deref().unwrap_or("(none)")
        ),
    })
}

/// Stops a saga where it stands, for an operator (see [`Input::Halt`]). Needs no definition:
/// the reason to halt may be that the saga's definition cannot be read.
pub fn halt(saga: &Saga, reason: &str, now: DateTime<Utc>) -> Outcome {
    if saga.status.is_terminal() {
        return Outcome::Ignored(format!(
            "the saga is {} already; not halted ({reason})",
            saga.status.as_str()
        ));
    }
    let mut saga = saga.clone();
    saga.status = SagaStatus::Failed;
    saga.error = Some(format!("{HALTED}{reason}"));
    saga.deadline = None;
    saga.version += 1;
    saga.updated_at = now;
    Outcome::Applied(Transition {
        saga,
        commands: vec![],
        note: format!("halted, an operator must act: {reason}"),
    })
}

/// One transition in the making.
struct Run<'a> {
    definition: &'a Definition,
    saga: Saga,
    now: DateTime<Utc>,
    commands: Vec<Command>,
}

impl<'a> Run<'a> {
    fn new(definition: &'a Definition, saga: Saga, now: DateTime<Utc>) -> Self {
        Self {
            definition,
            saga,
            now,
            commands: Vec::new(),
        }
    }

    fn finish(mut self, note: String) -> Transition {
        self.saga.version += 1;
        self.saga.updated_at = self.now;
        Transition {
            saga: self.saga,
            commands: self.commands,
            note,
        }
    }

    fn applied(self, note: String) -> Outcome {
        Outcome::Applied(self.finish(note))
    }

    fn past_pivot(&self, step: usize) -> bool {
        self.definition.pivot().is_some_and(|p| step > p)
    }

    fn name(&self, step: usize) -> &'a str {
        &self.definition.steps[step].name
    }

    fn deadline_after(&self, timeout: std::time::Duration) -> Option<DateTime<Utc>> {
        chrono::Duration::from_std(timeout)
            .ok()
            .map(|d| self.now + d)
    }

    fn payload(&mut self, specs: &[String]) -> Option<Value> {
        let mut payload = Map::new();
        for field in fields(specs) {
            match self.saga.context.get(field.source) {
                Some(value) => {
                    payload.insert(field.target.to_owned(), value.clone());
                }
                None => {
                    self.fail(format!("{NO_CONTEXT_FIELD}{}", field.source));
                    return None;
                }
            }
        }
        Some(Value::Object(payload))
    }

    fn fail(&mut self, error: String) {
        self.saga.status = SagaStatus::Failed;
        self.saga.error = Some(error);
        self.saga.deadline = None;
        self.commands.clear();
    }

    fn send_step(&mut self, index: usize) {
        let step = &self.definition.steps[index];
        let Some(payload) = self.payload(&step.fields) else {
            return;
        };
        let state = &mut self.saga.steps[index];
        state.status = StepStatus::Running;
        state.attempts += 1;
        state.started_at.get_or_insert(self.now);
        self.saga.current = index;
        self.saga.status = SagaStatus::Running;
        self.saga.deadline = step.timeout.and_then(|t| self.deadline_after(t));
        self.commands.push(Command {
            step: step.name.clone(),
            compensation: false,
            message_type: step.command.clone(),
            payload,
        });
    }

    fn send_compensation(&mut self, index: usize) {
        let step = &self.definition.steps[index];
        let Some(compensation) = &step.compensation else {
            return;
        };
        let Some(payload) = self.payload(&compensation.fields) else {
            return;
        };
        let state = &mut self.saga.steps[index];
        state.status = StepStatus::Compensating;
        state.compensation_attempts += 1;
        let wait = step.timeout.unwrap_or_default()
            + self
                .definition
                .compensation_retry
                .delay(state.compensation_attempts);
        self.saga.current = index;
        self.saga.status = SagaStatus::Compensating;
        self.saga.deadline = self.deadline_after(wait);
        self.commands.push(Command {
            step: step.name.clone(),
            compensation: true,
            message_type: compensation.command.clone(),
            payload,
        });
    }

    /// Compensates the latest step at or before `from` that may have taken effect; the saga is
    /// compensated when there is none.
    fn compensate_from(&mut self, from: Option<usize>) {
        let next = from.and_then(|from| {
            (0..=from).rev().find(|&j| {
                self.saga.steps[j].status.may_have_effect()
                    && self.definition.steps[j].compensation.is_some()
            })
        });
        match next {
            Some(j) => self.send_compensation(j),
            None => {
                self.saga.status = SagaStatus::Compensated;
                self.saga.deadline = None;
            }
        }
    }

    fn give_up(&mut self, index: usize, status: StepStatus, reason: String) {
        let state = &mut self.saga.steps[index];
        state.status = status;
        state.finished_at = Some(self.now);
        self.saga.error = Some(reason.clone());
        self.saga
            .context
            .insert(FAILURE_REASON.to_owned(), Value::String(reason));
    }

    fn reply(mut self, message_type: &str, payload: &Value) -> Outcome {
        let Some((i, kind)) = self.definition.reply(message_type) else {
            return Outcome::Ignored(format!("{message_type} is not a reply of this saga"));
        };
        let name = self.name(i);
        let step_status = self.saga.steps[i].status;
        let current = i == self.saga.current;
        match (self.saga.status, kind, step_status) {
            (SagaStatus::Running, ReplyKind::Success, StepStatus::Running) if current => {
                self.succeed(i, payload)
            }
            (SagaStatus::Failed, ReplyKind::Success, StepStatus::Running)
                if current && self.past_pivot(i) =>
            {
                // The step ran out of attempts past the pivot, and then took effect after all:
                // the saga goes on from it as if the success had come in time.
                self.saga.error = None;
                self.saga.context.remove(FAILURE_REASON);
                self.succeed(i, payload)
            }
            (SagaStatus::Running, ReplyKind::Failure, StepStatus::Running) if current => {
                let reason = payload
                    .get("reason")
                    .and_then(Value::as_str)
                    .unwrap_or(message_type);
                let reason = format!("{name} failed: {reason}");
                self.give_up(i, StepStatus::Failed, reason.clone());
                if self.past_pivot(i) {
                    self.saga.status = SagaStatus::Failed;
                    self.saga.deadline = None;
                    return self.applied(format!("{reason}; past the pivot, an operator must act"));
                }
                self.compensate_from(i.checked_sub(1));
                self.applied(format!("{reason}; compensating"))
            }
            (SagaStatus::Compensating, ReplyKind::Compensated, StepStatus::Compensating)
                if current =>
            {
                let state = &mut self.saga.steps[i];
                state.status = StepStatus::Compensated;
                state.finished_at = Some(self.now);
                self.compensate_from(i.checked_sub(1));
                let then = match self.saga.status {
                    SagaStatus::Compensated => "saga compensated".to_owned(),
                    _ => format!("compensating {}", self.name(self.saga.current)),
                };
                self.applied(format!("{name} compensated; {then}"))
            }
            (status, ReplyKind::Success, StepStatus::Compensated)
                if status != SagaStatus::Running =>
            {
                // The step took effect after all, after it was undone: undo it again.
                self.resend_compensation(i, name)
            }
            (
                SagaStatus::Compensated | SagaStatus::Failed,
                ReplyKind::Success,
                StepStatus::TimedOut,
            ) => self.resend_compensation(i, name),
            _ => Outcome::Ignored(format!(
                "{message_type} for {name} ({step_status:?}) while the saga is {}: stale or duplicate",
                self.saga.status.as_str()
            )),
        }
    }

    /// Step `i` succeeded: its reply's fields join the context and the next step starts, or the
    /// saga is complete.
    fn succeed(mut self, i: usize, payload: &Value) -> Outcome {
        let name = self.name(i);
        if let Value::Object(fields) = payload {
            self.saga
                .context
                .extend(fields.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        let state = &mut self.saga.steps[i];
        state.status = StepStatus::Succeeded;
        state.finished_at = Some(self.now);
        self.saga.status = SagaStatus::Running;
        if i + 1 < self.definition.steps.len() {
            self.send_step(i + 1);
            let next = self.name(i + 1);
            self.applied(format!("{name} succeeded; {next} sent"))
        } else {
            self.saga.status = SagaStatus::Completed;
            self.saga.deadline = None;
            self.applied(format!("{name} succeeded; saga completed"))
        }
    }

    fn resend_compensation(mut self, i: usize, name: &str) -> Outcome {
        let Some(compensation) = &self.definition.steps[i].compensation else {
            return Outcome::Ignored(format!("late success of {name}, which has no compensation"));
        };
        let Some(payload) = self.payload(&compensation.fields) else {
            return self.applied(format!(
                "late success of {name}; cannot build its compensation"
            ));
        };
        self.commands.push(Command {
            step: name.to_owned(),
            compensation: true,
            message_type: compensation.command.clone(),
            payload,
        });
        self.applied(format!(
            "late success of {name} after it was given up; compensating it again"
        ))
    }

    fn timeout(mut self) -> Outcome {
        if self.saga.deadline.is_none_or(|d| d > self.now) {
            return Outcome::Ignored("no deadline has passed".into());
        }
        let i = self.saga.current;
        let name = self.name(i);
        let step = &self.definition.steps[i];
        match self.saga.status {
            SagaStatus::Running => {
                let attempts = self.saga.steps[i].attempts;
                if attempts < step.attempts {
                    self.send_step(i);
                    self.applied(format!("{name} timed out; attempt {} sent", attempts + 1))
                } else if self.past_pivot(i) {
                    self.give_up(
                        i,
                        StepStatus::Running,
                        format!("{name} did not succeed after {attempts} attempts, past the pivot"),
                    );
                    self.saga.status = SagaStatus::Failed;
                    self.saga.deadline = None;
                    self.applied(format!("{name} timed out for good; an operator must act"))
                } else {
                    let reason = format!("{name} timed out after {attempts} attempts");
                    self.give_up(i, StepStatus::TimedOut, reason.clone());
                    self.compensate_from(Some(i));
                    self.applied(format!("{reason}; compensating"))
                }
            }
            SagaStatus::Compensating => {
                let attempts = self.saga.steps[i].compensation_attempts;
                if attempts < self.definition.compensation_retry.attempts {
                    self.send_compensation(i);
                    self.applied(format!(
                        "compensation of {name} timed out; attempt {} sent",
                        attempts + 1
                    ))
                } else {
                    self.saga.status = SagaStatus::Failed;
                    self.saga.deadline = None;
                    self.saga.error = Some(format!(
                        "compensation of {name} did not succeed after {attempts} attempts"
                    ));
                    self.applied(format!(
                        "compensation of {name} exhausted its attempts; an operator must act"
                    ))
                }
            }
            _ => Outcome::Ignored("the saga is not waiting".into()),
        }
    }

    fn retry(mut self) -> Outcome {
        let i = self.saga.current;
        let name = self.name(i);
        match (self.saga.status, self.saga.steps[i].status) {
            (SagaStatus::Completed | SagaStatus::Compensated, _) => {
                Outcome::Ignored(format!("the saga is already {}", self.saga.status.as_str()))
            }
            (SagaStatus::Compensating, _) | (SagaStatus::Failed, StepStatus::Compensating) => {
                self.saga.steps[i].compensation_attempts = 0;
                self.saga.error = None;
                self.send_compensation(i);
                self.applied(format!("operator retry: compensation of {name} sent again"))
            }
            (SagaStatus::Running | SagaStatus::Failed, _) => {
                self.saga.steps[i].attempts = 0;
                self.saga.error = None;
                self.send_step(i);
                self.applied(format!("operator retry: {name} sent again"))
            }
        }
    }

    fn cancel(mut self, reason: &str) -> Outcome {
        if self.saga.status != SagaStatus::Running {
            return Outcome::Ignored(format!(
                "only a running saga can be cancelled; this one is {}",
                self.saga.status.as_str()
            ));
        }
        if let Some(p) = self.definition.pivot()
            && self.saga.steps[p].status == StepStatus::Succeeded
        {
            return Outcome::Ignored(format!(
                "{} (the pivot) succeeded; the saga can only go forward",
                self.name(p)
            ));
        }
        let i = self.saga.current;
        self.give_up(
            i,
            StepStatus::TimedOut,
            format!("cancelled by an operator: {reason}"),
        );
        self.compensate_from(Some(i));
        self.applied(format!("cancelled by an operator ({reason}); compensating"))
    }
}
