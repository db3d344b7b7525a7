//! The replay gate: histories recorded under checkout, folded through changes of it.

#![allow(clippy::unwrap_used)] // helpers of a test panic to fail it

use std::time::Duration;

use chrono::{DateTime, Utc};
use saga::definition::Definition;
use saga::history::{Fork, Recorded, changes, fork};
use saga::machine::{self, Input, Outcome};
use serde_json::{Value, json};
use uuid::Uuid;

fn checkout() -> Definition {
    Definition::from_toml(include_str!("../../../sagas/checkout.toml")).unwrap()
}

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-12-01T12:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

fn reply(message_type: &str, payload: Value) -> Input {
    Input::Reply {
        message_type: message_type.into(),
        payload,
    }
}

/// A log entry as the orchestrator records it: the input, when, whether it was applied, the
/// commands it sent and the status after.
struct Entry {
    input: Input,
    at: DateTime<Utc>,
    applied: bool,
    sent: Vec<String>,
    status: String,
}

/// The log `definition` records for these inputs (seconds after the start).
fn record(definition: &Definition, inputs: Vec<(Input, i64)>) -> Vec<Entry> {
    let Value::Object(start) = json!({"order_id": Uuid::nil(), "customer_id": "c-1",
                                      "items": [{"sku": "SKU-1", "quantity": 1}]})
    else {
        unreachable!()
    };
    let started = machine::start(definition, Uuid::nil(), start.clone(), t0()).unwrap();
    let mut saga = started.saga;
    let mut log = vec![Entry {
        input: Input::Start { input: start },
        at: t0(),
        applied: true,
        sent: started
            .commands
            .into_iter()
            .map(|c| c.message_type)
            .collect(),
        status: saga.status.as_str().into(),
    }];
    for (input, seconds) in inputs {
        let at = t0() + chrono::Duration::seconds(seconds);
        let (applied, sent) = match machine::apply(definition, &saga, &input, at) {
            Outcome::Applied(t) => {
                saga = t.saga;
                (
                    true,
                    t.commands.into_iter().map(|c| c.message_type).collect(),
                )
            }
            Outcome::Ignored(_) => (false, vec![]),
        };
        log.push(Entry {
            input,
            at,
            applied,
            sent,
            status: saga.status.as_str().into(),
        });
    }
    log
}

fn recorded(log: &[Entry]) -> Vec<Recorded<'_>> {
    log.iter()
        .map(|e| Recorded {
            input: &e.input,
            at: e.at,
            applied: e.applied,
            sent: e.sent.clone(),
            status: &e.status,
        })
        .collect()
}

fn happy() -> Vec<(Input, i64)> {
    vec![
        (reply("order.evt.created", json!({})), 1),
        (
            reply("inventory.evt.reserved", json!({"total_cents": 1250})),
            2,
        ),
        (reply("payment.evt.charged", json!({})), 3),
        (reply("order.evt.confirmed", json!({})), 4),
    ]
}

fn declined() -> Vec<(Input, i64)> {
    vec![
        (reply("order.evt.created", json!({})), 1),
        (
            reply("inventory.evt.reserved", json!({"total_cents": 1250})),
            2,
        ),
        (
            reply(
                "payment.evt.declined",
                json!({"reason": "insufficient funds"}),
            ),
            3,
        ),
        (reply("inventory.evt.released", json!({})), 4),
        (reply("order.evt.cancelled", json!({})), 5),
    ]
}

/// The create times out once (10 s) and is sent again; the second attempt succeeds.
fn slow_create() -> Vec<(Input, i64)> {
    let mut inputs = vec![(Input::Timeout, 11)];
    inputs.extend(happy().into_iter().map(|(input, s)| (input, s + 11)));
    inputs
}

fn fork_of(definition: &Definition, log: &[Entry]) -> Option<(usize, Fork)> {
    fork(definition, Uuid::nil(), &recorded(log))
}

fn sends(input: &str, recorded: &[&str], replayed: &[&str]) -> Fork {
    Fork::Sends {
        input: input.into(),
        recorded: recorded.iter().map(|s| (*s).to_owned()).collect(),
        replayed: replayed.iter().map(|s| (*s).to_owned()).collect(),
    }
}

#[test]
fn every_history_replays_through_the_definition_it_was_recorded_under() {
    for inputs in [happy(), declined(), slow_create()] {
        let log = record(&checkout(), inputs);
        assert_eq!(fork_of(&checkout(), &log), None);
    }
}

#[test]
fn a_longer_timeout_forks_only_the_histories_where_one_fired() {
    let mut patient = checkout();
    patient.steps[0].timeout = Some(Duration::from_secs(30));
    for inputs in [happy(), declined()] {
        assert_eq!(fork_of(&patient, &record(&checkout(), inputs)), None);
    }
    // At 11 s the create had timed out under 10 s; under 30 s it has not.
    let log = record(&checkout(), slow_create());
    assert_eq!(
        fork_of(&patient, &log),
        Some((
            1,
            Fork::Ignores {
                input: "timeout".into(),
                recorded: vec!["order.cmd.create".into()],
            }
        ))
    );
}

#[test]
fn reordered_steps_fork_every_history_at_the_start() {
    let mut reordered = checkout();
    reordered.steps.swap(0, 1);
    let log = record(&checkout(), happy());
    assert_eq!(
        fork_of(&reordered, &log),
        Some((
            0,
            sends("start", &["order.cmd.create"], &["inventory.cmd.reserve"])
        ))
    );
    assert_eq!(
        changes(&checkout(), &reordered),
        [
            "steps reordered: create_order, reserve_inventory, charge_payment, confirm_order \
          became reserve_inventory, create_order, charge_payment, confirm_order"
        ]
    );
}

#[test]
fn a_step_added_at_the_end_forks_only_the_histories_that_reach_it() {
    let mut extended = checkout();
    let mut notify = extended.steps[3].clone();
    notify.name = "notify_customer".into();
    notify.command = "notification.cmd.send".into();
    notify.fields = vec!["order_id".into()];
    notify.success = "notification.evt.sent".into();
    extended.steps.push(notify);
    let log = record(&checkout(), happy());
    assert_eq!(
        fork_of(&extended, &log),
        Some((
            4,
            sends("reply order.evt.confirmed", &[], &["notification.cmd.send"])
        ))
    );
    // A checkout declined before the end never gets there.
    assert_eq!(fork_of(&extended, &record(&checkout(), declined())), None);
    assert_eq!(
        changes(&checkout(), &extended),
        ["step notify_customer added (step 5 of 5)"]
    );
}

#[test]
fn a_step_removed_forks_the_histories_that_ran_it() {
    let mut shortened = checkout();
    shortened.steps.pop();
    let log = record(&checkout(), happy());
    assert_eq!(
        fork_of(&shortened, &log),
        Some((
            3,
            sends("reply payment.evt.charged", &["order.cmd.confirm"], &[])
        ))
    );
    assert_eq!(
        changes(&checkout(), &shortened),
        ["step confirm_order removed"]
    );
}

#[test]
fn another_reply_expected_is_named_in_the_changes_and_forks_where_it_came() {
    let mut renamed = checkout();
    renamed.steps[1].success = "inventory.evt.held".into();
    let log = record(&checkout(), happy());
    assert_eq!(
        fork_of(&renamed, &log),
        Some((
            2,
            Fork::Ignores {
                input: "reply inventory.evt.reserved".into(),
                recorded: vec!["payment.cmd.charge".into()],
            }
        ))
    );
    let listed = changes(&checkout(), &renamed);
    assert_eq!(listed.len(), 1);
    assert!(
        listed[0].starts_with("step reserve_inventory: another reply expected"),
        "{listed:?}"
    );
}
