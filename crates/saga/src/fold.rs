//! A saga's log folded through a definition, one input at a time.
//!
//! Every reading of history goes through [`Fold`]: [`replay`] (the state a log leads to), the
//! replay gate ([`crate::history::fork`]: where a changed definition parts from recorded paths)
//! and `warren saga replay` (where a replay parts from what the log recorded, entry by entry).
//! The first input starts the saga; each later one is applied at the time it was recorded.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::definition::Definition;
use crate::machine::{self, Command, Input, Outcome, Saga, StartError};

/// What one input did.
#[derive(Debug, Clone, PartialEq)]
pub struct Folded {
    pub applied: bool,
    /// What happened, as the machine says it (or why nothing did).
    pub note: String,
    /// The commands it sent.
    pub commands: Vec<Command>,
}

/// A log being folded through a definition.
#[derive(Debug, Clone)]
pub struct Fold<'a> {
    definition: &'a Definition,
    id: Uuid,
    saga: Option<Saga>,
}

impl<'a> Fold<'a> {
    pub fn new(definition: &'a Definition, id: Uuid) -> Self {
        Self {
            definition,
            id,
            saga: None,
        }
    }

    /// Starts the saga with its start input, at the time it was recorded.
    pub fn start(
        &mut self,
        context: &Map<String, Value>,
        at: DateTime<Utc>,
    ) -> Result<Folded, StartError> {
        let transition = machine::start(self.definition, self.id, context.clone(), at)?;
        Ok(self.took(Outcome::Applied(transition)))
    }

    /// Feeds the next input, at the time it was recorded.
    pub fn feed(&mut self, input: &Input, at: DateTime<Utc>) -> Folded {
        match (&self.saga, input) {
            (None, Input::Start { input: context }) => self
                .start(context, at)
                .unwrap_or_else(|error| self.took(Outcome::Ignored(error.to_string()))),
            (None, _) => self.took(Outcome::Ignored("the saga has not started".into())),
            (Some(saga), input) => {
                let outcome = machine::apply(self.definition, saga, input, at);
                self.took(outcome)
            }
        }
    }

    fn took(&mut self, outcome: Outcome) -> Folded {
        match outcome {
            Outcome::Applied(transition) => {
                self.saga = Some(transition.saga);
                Folded {
                    applied: true,
                    note: transition.note,
                    commands: transition.commands,
                }
            }
            Outcome::Ignored(why) => Folded {
                applied: false,
                note: why,
                commands: Vec::new(),
            },
        }
    }

    /// The saga as the inputs so far left it; none before a start was applied.
    pub fn saga(&self) -> Option<&Saga> {
        self.saga.as_ref()
    }

    pub fn into_saga(self) -> Option<Saga> {
        self.saga
    }
}

/// Why a log cannot be replayed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    #[error("the log does not begin with a start")]
    NoStart,
    #[error(transparent)]
    Start(#[from] StartError),
}

/// Folds a saga's log (every input with the time it was applied) through a definition.
/// Returns the resulting saga and, per input, whether it was applied.
pub fn replay<'a>(
    definition: &Definition,
    id: Uuid,
    log: impl IntoIterator<Item = (&'a Input, DateTime<Utc>)>,
) -> Result<(Saga, Vec<bool>), ReplayError> {
    let mut log = log.into_iter();
    let Some((Input::Start { input }, at)) = log.next() else {
        return Err(ReplayError::NoStart);
    };
    let mut fold = Fold::new(definition, id);
    fold.start(input, at)?;
    let mut applied = vec![true];
    applied.extend(log.map(|(input, at)| fold.feed(input, at).applied));
    let saga = fold.into_saga().ok_or(ReplayError::NoStart)?;
    Ok((saga, applied))
}
