//! Random interleavings, duplicates and losses of messages for one checkout saga, checked
//! against a simple model of its participants.
//!
//! Each participant is modelled the way Warren's services behave: a command takes effect once
//! per saga (a re-send answers the same), fails when its fate says so, and a compensation
//! undoes the effect or, when it comes first, leaves a tombstone that makes a later command
//! fail. Messages in flight are delivered in any order, some twice, some lost; time jumps to
//! the saga's deadline when nothing else can happen.
//!
//! Whatever happens, the saga must end `completed` with every step's effect standing, or
//! `compensated` with none standing, or `failed` (a compensation ran out of attempts) with an
//! error, and never send a step's command after its compensation was done.

#![allow(clippy::unwrap_used)] // helpers of a test panic to fail it

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use proptest::prelude::*;
use saga::definition::Definition;
use saga::machine::{self, Command, Input, Outcome, Saga, SagaStatus, StepStatus};
use serde_json::{Value, json};
use uuid::Uuid;

fn definition() -> Definition {
    Definition::from_toml(include_str!("../../../sagas/checkout.toml")).unwrap()
}

#[derive(Debug, Clone, Default)]
struct Participant {
    effect: bool,
    tombstone: bool,
    /// Whether its first decision was a failure (then it keeps answering failure).
    refused: bool,
}

#[derive(Debug, Clone)]
enum Message {
    Command(Command),
    Reply(String, Value),
}

struct World {
    definition: Definition,
    saga: Saga,
    now: DateTime<Utc>,
    in_flight: Vec<Message>,
    participants: BTreeMap<String, Participant>,
    /// Per step: does its participant say yes?
    fate: Vec<bool>,
    /// Commands the saga sent for a step whose compensation was already done.
    undone_then_sent: Vec<String>,
}

impl World {
    fn new(fate: Vec<bool>) -> Self {
        let definition = definition();
        let Value::Object(input) = json!({"order_id": Uuid::nil(), "customer_id": "c-1",
                                          "items": [{"sku": "S", "quantity": 1}]})
        else {
            unreachable!()
        };
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let start = machine::start(&definition, Uuid::nil(), input, now).unwrap();
        let participants = definition
            .steps
            .iter()
            .map(|s| (s.name.clone(), Participant::default()))
            .collect();
        Self {
            in_flight: start.commands.into_iter().map(Message::Command).collect(),
            saga: start.saga,
            definition,
            now,
            participants,
            fate,
            undone_then_sent: Vec::new(),
        }
    }

    fn feed(&mut self, input: &Input) {
        let undone: Vec<String> = self
            .saga
            .steps
            .iter()
            .filter(|s| s.status == StepStatus::Compensated)
            .map(|s| s.name.clone())
            .collect();
        if let Outcome::Applied(t) = machine::apply(&self.definition, &self.saga, input, self.now) {
            for command in t.commands.iter().filter(|c| !c.compensation) {
                if undone.contains(&command.step) {
                    self.undone_then_sent.push(format!(
                        "{} sent for {} after its compensation, on {}",
                        command.message_type,
                        command.step,
                        input.describe()
                    ));
                }
            }
            self.saga = t.saga;
            self.in_flight
                .extend(t.commands.into_iter().map(Message::Command));
        }
    }

    /// A participant handles a command and answers.
    fn handle(&mut self, command: &Command) -> Message {
        let index = self
            .definition
            .steps
            .iter()
            .position(|s| s.name == command.step)
            .unwrap();
        let step = &self.definition.steps[index];
        let fate = self.fate[index] || step.retriable;
        let p = self.participants.get_mut(&command.step).unwrap();
        if command.compensation {
            p.effect = false;
            p.tombstone = true;
            let done = step.compensation.as_ref().unwrap().done.clone();
            return Message::Reply(done, json!({"reason": "x"}));
        }
        if p.effect {
            return Message::Reply(step.success.clone(), json!({"total_cents": 100}));
        }
        if p.tombstone || p.refused || !fate {
            p.refused = true;
            return Message::Reply(step.failure[0].clone(), json!({"reason": "no"}));
        }
        p.effect = true;
        Message::Reply(step.success.clone(), json!({"total_cents": 100}))
    }

    fn step(&mut self, choice: u8) {
        if self.in_flight.is_empty() {
            // Nothing moves: time passes to the deadline.
            if let Some(deadline) = self.saga.deadline {
                self.now = self.now.max(deadline);
                self.feed(&Input::Timeout);
            }
            return;
        }
        let i = usize::from(choice) % self.in_flight.len();
        let message = match choice % 8 {
            // Lost (the broker or a crash ate it).
            0 => {
                self.in_flight.swap_remove(i);
                return;
            }
            // Delivered, and a copy stays in flight (redelivery).
            1 => self.in_flight[i].clone(),
            _ => self.in_flight.swap_remove(i),
        };
        match message {
            Message::Command(command) => {
                let reply = self.handle(&command);
                self.in_flight.push(reply);
            }
            Message::Reply(message_type, payload) => {
                self.feed(&Input::Reply {
                    message_type,
                    payload,
                });
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn every_interleaving_ends_consistently(
        fate in proptest::collection::vec(prop::bool::weighted(0.8), 4),
        choices in proptest::collection::vec(any::<u8>(), 0..400),
    ) {
        let mut world = World::new(fate);
        for choice in choices {
            world.step(choice);
        }
        // Then let it settle: deliver everything in order, no more losses.
        let mut rounds = 0;
        while !(world.saga.status.is_terminal() && world.in_flight.is_empty()) {
            world.step(2);
            rounds += 1;
            prop_assert!(rounds < 10_000, "the saga never settled: {:?}", world.saga.status);
        }
        let effects: Vec<bool> = world.definition.steps.iter()
            .map(|s| world.participants[&s.name].effect)
            .collect();
        match world.saga.status {
            SagaStatus::Completed => prop_assert!(effects.iter().all(|e| *e), "{effects:?}"),
            SagaStatus::Compensated => prop_assert!(effects.iter().all(|e| !*e), "{effects:?}"),
            SagaStatus::Failed => prop_assert!(world.saga.error.is_some()),
            other => prop_assert!(false, "not terminal: {other:?}"),
        }
        // A step's command is never sent again once its compensation was done.
        prop_assert!(world.undone_then_sent.is_empty(), "{:?}", world.undone_then_sent);
        // Never charged without a confirmed order, never confirmed without a charge.
        if world.saga.status != SagaStatus::Failed {
            prop_assert_eq!(effects[2], effects[3]);
        }
    }
}

#[test]
fn a_saga_that_hears_nothing_still_ends() {
    let mut world = World::new(vec![true; 4]);
    world.in_flight.clear();
    let mut rounds = 0;
    while !world.saga.status.is_terminal() {
        world.step(0);
        world.in_flight.clear();
        rounds += 1;
        assert!(rounds < 100);
    }
    assert_eq!(world.saga.status, SagaStatus::Failed);
    assert!(
        world.now > DateTime::from_timestamp(1_800_000_000, 0).unwrap() + Duration::seconds(10)
    );
}
