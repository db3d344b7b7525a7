//! The checkout saga, given/when/then: replies in, commands out, no I/O.

#![allow(clippy::unwrap_used)] // helpers of a test panic to fail it

use chrono::{DateTime, Duration, Utc};
use saga::definition::Definition;
use saga::machine::{self, Failure, Input, Outcome, Saga, SagaStatus, StepStatus};
use serde_json::{Value, json};
use uuid::Uuid;

fn definition() -> Definition {
    Definition::from_toml(include_str!("../../../sagas/checkout.toml")).unwrap()
}

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).unwrap()
}

/// A saga under test and what the last step sent.
struct Given {
    definition: Definition,
    saga: Saga,
    now: DateTime<Utc>,
    sent: Vec<String>,
    note: String,
}

fn given_a_started_checkout() -> Given {
    let definition = definition();
    let input = json!({"order_id": Uuid::nil(), "customer_id": "c-1",
                       "items": [{"sku": "SKU-1", "quantity": 2}]});
    let Value::Object(input) = input else {
        unreachable!()
    };
    let transition = machine::start(&definition, Uuid::nil(), input, t0()).unwrap();
    let sent = transition
        .commands
        .iter()
        .map(|c| c.message_type.clone())
        .collect();
    Given {
        definition,
        saga: transition.saga,
        now: t0(),
        sent,
        note: transition.note,
    }
}

impl Given {
    fn when(mut self, input: Input) -> Self {
        match machine::apply(&self.definition, &self.saga, &input, self.now) {
            Outcome::Applied(transition) => {
                self.saga = transition.saga;
                self.sent = transition
                    .commands
                    .iter()
                    .map(|c| c.message_type.clone())
                    .collect();
                self.note = transition.note;
            }
            Outcome::Ignored(why) => {
                self.sent = vec![];
                self.note = format!("ignored: {why}");
            }
        }
        self
    }

    fn reply(self, message_type: &str, payload: Value) -> Self {
        self.when(Input::Reply {
            message_type: message_type.into(),
            payload,
        })
    }

    fn after(mut self, seconds: i64) -> Self {
        self.now += Duration::seconds(seconds);
        self
    }

    fn created(self) -> Self {
        self.reply(
            "order.evt.created",
            json!({"order_id": Uuid::nil(), "customer_id": "c-1", "items": []}),
        )
    }

    fn reserved(self) -> Self {
        self.reply(
            "inventory.evt.reserved",
            json!({"order_id": Uuid::nil(), "lines": [], "total_cents": 2500}),
        )
    }

    fn charged(self) -> Self {
        self.reply(
            "payment.evt.charged",
            json!({"order_id": Uuid::nil(), "customer_id": "c-1", "amount_cents": 2500}),
        )
    }

    fn confirmed(self) -> Self {
        self.reply(
            "order.evt.confirmed",
            json!({"order_id": Uuid::nil(), "customer_id": "c-1", "total_cents": 2500}),
        )
    }

    fn then_sent(self, expected: &[&str]) -> Self {
        assert_eq!(self.sent, expected, "after: {}", self.note);
        self
    }

    fn then_status(self, status: SagaStatus) -> Self {
        assert_eq!(self.saga.status, status, "after: {}", self.note);
        self
    }

    fn then_failure(self, failure: Option<Failure>) -> Self {
        assert_eq!(Failure::of(&self.saga), failure, "after: {}", self.note);
        self
    }

    fn then_ignored(self) -> Self {
        assert!(
            self.note.starts_with("ignored"),
            "expected ignored, got: {}",
            self.note
        );
        self
    }

    fn step(&self, name: &str) -> StepStatus {
        self.saga
            .steps
            .iter()
            .find(|s| s.name == name)
            .unwrap()
            .status
    }
}

#[test]
fn a_happy_checkout_runs_every_step_in_order() {
    let given = given_a_started_checkout().then_sent(&["order.cmd.create"]);
    let given = given.created().then_sent(&["inventory.cmd.reserve"]);
    let given = given.reserved().then_sent(&["payment.cmd.charge"]);
    // The charge amount comes from the reservation, never from the client.
    let given = given.charged().then_sent(&["order.cmd.confirm"]);
    let given = given
        .confirmed()
        .then_sent(&[])
        .then_status(SagaStatus::Completed);
    assert_eq!(given.saga.deadline, None);
    assert_eq!(given.saga.context["total_cents"], 2500);
    assert_eq!(given.saga.version, 5);
}

#[test]
fn the_charge_is_built_from_the_reservation_total() {
    let definition = definition();
    let given = given_a_started_checkout().created();
    let outcome = machine::apply(
        &definition,
        &given.saga,
        &Input::Reply {
            message_type: "inventory.evt.reserved".into(),
            payload: json!({"order_id": Uuid::nil(), "lines": [], "total_cents": 4200}),
        },
        given.now,
    );
    let Outcome::Applied(transition) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(
        transition.commands[0].payload,
        json!({"order_id": Uuid::nil(), "customer_id": "c-1", "amount_cents": 4200})
    );
}

#[test]
fn out_of_stock_cancels_the_order_and_holds_nothing() {
    given_a_started_checkout()
        .created()
        .reply(
            "inventory.evt.reservation_failed",
            json!({"order_id": Uuid::nil(), "reason": "SKU-1: 2 requested, 1 available"}),
        )
        // The reservation failed, so there is nothing to release: only the order is cancelled.
        .then_sent(&["order.cmd.cancel"])
        .then_status(SagaStatus::Compensating)
        .reply(
            "order.evt.cancelled",
            json!({"order_id": Uuid::nil(), "customer_id": "c-1", "reason": "x"}),
        )
        .then_sent(&[])
        .then_status(SagaStatus::Compensated);
}

#[test]
fn a_declined_payment_releases_stock_then_cancels_the_order() {
    let given = given_a_started_checkout()
        .created()
        .reserved()
        .reply(
            "payment.evt.declined",
            json!({"order_id": Uuid::nil(), "reason": "insufficient funds"}),
        )
        .then_sent(&["inventory.cmd.release"])
        .reply("inventory.evt.released", json!({"order_id": Uuid::nil()}))
        .then_sent(&["order.cmd.cancel"])
        .reply(
            "order.evt.cancelled",
            json!({"order_id": Uuid::nil(), "customer_id": "c-1", "reason": "x"}),
        )
        .then_status(SagaStatus::Compensated);
    assert!(
        given
            .saga
            .error
            .as_deref()
            .unwrap()
            .contains("insufficient funds")
    );
    assert_eq!(given.step("charge_payment"), StepStatus::Failed);
    assert_eq!(given.step("reserve_inventory"), StepStatus::Compensated);
}

#[test]
fn a_charge_that_never_answers_is_refunded_released_and_cancelled() {
    given_a_started_checkout()
        .created()
        .reserved()
        .then_sent(&["payment.cmd.charge"])
        .after(5)
        .when(Input::Timeout)
        .then_ignored()
        .after(6)
        .when(Input::Timeout)
        // The outcome is unknown: refund (which also voids a late charge), release, cancel.
        .then_sent(&["payment.cmd.refund"])
        .reply(
            "payment.evt.refunded",
            json!({"order_id": Uuid::nil(), "amount_cents": 0}),
        )
        .then_sent(&["inventory.cmd.release"])
        .reply("inventory.evt.released", json!({"order_id": Uuid::nil()}))
        .then_sent(&["order.cmd.cancel"])
        .reply(
            "order.evt.cancelled",
            json!({"order_id": Uuid::nil(), "customer_id": "c-1", "reason": "x"}),
        )
        .then_status(SagaStatus::Compensated);
}

#[test]
fn a_timed_out_step_with_attempts_left_is_sent_again() {
    let given = given_a_started_checkout()
        .after(11)
        .when(Input::Timeout)
        .then_sent(&["order.cmd.create"])
        .then_status(SagaStatus::Running);
    assert_eq!(given.saga.steps[0].attempts, 2);
}

#[test]
fn duplicate_and_stale_replies_change_nothing() {
    let given = given_a_started_checkout().created().reserved();
    let version = given.saga.version;
    let given = given.created().then_ignored().reserved().then_ignored();
    assert_eq!(given.saga.version, version);
    given
        .reply(
            "order.evt.rejected",
            json!({"order_id": Uuid::nil(), "reason": "late"}),
        )
        .then_ignored()
        .reply(
            "payment.evt.refunded",
            json!({"order_id": Uuid::nil(), "amount_cents": 0}),
        )
        .then_ignored();
}

#[test]
fn a_late_charge_after_compensation_is_refunded_again() {
    given_a_started_checkout()
        .created()
        .reserved()
        .after(11)
        .when(Input::Timeout)
        .then_sent(&["payment.cmd.refund"])
        .reply(
            "payment.evt.refunded",
            json!({"order_id": Uuid::nil(), "amount_cents": 0}),
        )
        .reply("inventory.evt.released", json!({"order_id": Uuid::nil()}))
        .reply(
            "order.evt.cancelled",
            json!({"order_id": Uuid::nil(), "customer_id": "c-1", "reason": "x"}),
        )
        .then_status(SagaStatus::Compensated)
        .charged()
        .then_sent(&["payment.cmd.refund"])
        .then_status(SagaStatus::Compensated);
}

#[test]
fn confirming_past_the_pivot_is_retried_and_never_compensated() {
    let mut given = given_a_started_checkout().created().reserved().charged();
    for _ in 1..20 {
        given = given
            .after(11)
            .when(Input::Timeout)
            .then_sent(&["order.cmd.confirm"]);
    }
    let given = given
        .after(11)
        .when(Input::Timeout)
        .then_sent(&[])
        .then_status(SagaStatus::Failed)
        .then_failure(Some(Failure::StuckPastPivot));
    assert_eq!(given.step("charge_payment"), StepStatus::Succeeded);
    // An operator re-drives it.
    given
        .when(Input::Retry)
        .then_sent(&["order.cmd.confirm"])
        .then_status(SagaStatus::Running)
        .then_failure(None)
        .confirmed()
        .then_status(SagaStatus::Completed);
}

#[test]
fn a_confirmation_arriving_after_the_step_gave_up_past_the_pivot_completes_the_saga() {
    let mut given = given_a_started_checkout().created().reserved().charged();
    for _ in 0..20 {
        given = given.after(11).when(Input::Timeout);
    }
    let given = given.then_status(SagaStatus::Failed);
    assert!(given.saga.error.is_some());
    // The order service was slow, not broken: its confirmation comes in after all.
    let given = given
        .confirmed()
        .then_sent(&[])
        .then_status(SagaStatus::Completed);
    assert_eq!(given.step("confirm_order"), StepStatus::Succeeded);
    assert_eq!(given.saga.error, None);
    assert!(!given.saga.context.contains_key("failure_reason"));
    // A second copy of it is a duplicate.
    given
        .confirmed()
        .then_ignored()
        .then_status(SagaStatus::Completed);
}

#[test]
fn a_success_after_a_failure_reply_past_the_pivot_does_not_revive_the_saga() {
    // The step said no (nothing done): a success for it afterwards contradicts that and is
    // left to the operator the failure already called.
    let mut definition = definition();
    definition.steps[3].failure = vec!["order.evt.confirm_refused".into()];
    let mut given = given_a_started_checkout();
    given.definition = definition;
    given
        .created()
        .reserved()
        .charged()
        .reply(
            "order.evt.confirm_refused",
            json!({"order_id": Uuid::nil(), "reason": "closed"}),
        )
        .then_status(SagaStatus::Failed)
        .then_failure(Some(Failure::StuckPastPivot))
        .confirmed()
        .then_ignored()
        .then_status(SagaStatus::Failed);
}

#[test]
fn a_halt_stops_a_running_saga_for_an_operator_and_leaves_a_finished_one_alone() {
    let given = given_a_started_checkout()
        .created()
        .when(Input::Halt {
            reason: "no version abc".into(),
        })
        .then_sent(&[])
        .then_status(SagaStatus::Failed)
        .then_failure(Some(Failure::Halted));
    assert_eq!(given.saga.deadline, None);
    assert_eq!(given.saga.error.as_deref(), Some("halted: no version abc"));
    // A halted saga is failed like any other: an operator retry re-sends its current step.
    let given = given
        .when(Input::Retry)
        .then_sent(&["inventory.cmd.reserve"])
        .then_status(SagaStatus::Running);
    let finished = given
        .reserved()
        .charged()
        .confirmed()
        .then_status(SagaStatus::Completed);
    finished
        .when(Input::Halt { reason: "x".into() })
        .then_ignored()
        .then_status(SagaStatus::Completed);
}

#[test]
fn a_compensation_that_keeps_timing_out_fails_the_saga_until_an_operator_retries() {
    let mut given = given_a_started_checkout()
        .created()
        .reply(
            "inventory.evt.reservation_failed",
            json!({"order_id": Uuid::nil(), "reason": "no stock"}),
        )
        .then_sent(&["order.cmd.cancel"]);
    for attempt in 2..=8 {
        given = given
            .after(100)
            .when(Input::Timeout)
            .then_sent(&["order.cmd.cancel"]);
        assert_eq!(given.saga.steps[0].compensation_attempts, attempt);
    }
    let given = given
        .after(100)
        .when(Input::Timeout)
        .then_sent(&[])
        .then_status(SagaStatus::Failed)
        .then_failure(Some(Failure::CompensationExhausted));
    assert!(
        given
            .saga
            .error
            .as_deref()
            .unwrap()
            .contains("after 8 attempts")
    );
    given
        .when(Input::Retry)
        .then_sent(&["order.cmd.cancel"])
        .then_status(SagaStatus::Compensating)
        .reply(
            "order.evt.cancelled",
            json!({"order_id": Uuid::nil(), "customer_id": "c-1", "reason": "x"}),
        )
        .then_status(SagaStatus::Compensated);
}

#[test]
fn compensation_back_off_grows_and_is_capped() {
    let mut given = given_a_started_checkout().created().reply(
        "inventory.evt.reservation_failed",
        json!({"order_id": Uuid::nil(), "reason": "no stock"}),
    );
    let mut waits = vec![];
    for _ in 0..7 {
        let deadline = given.saga.deadline.unwrap();
        waits.push((deadline - given.now).num_seconds());
        given.now = deadline;
        given = given.when(Input::Timeout);
    }
    // The step's 10 s timeout plus 0, 1, 2, 4, 8, 16, then 30 (the cap) seconds of back-off.
    assert_eq!(waits, vec![10, 11, 12, 14, 18, 26, 40]);
}

#[test]
fn an_operator_can_cancel_before_the_pivot_but_not_after() {
    given_a_started_checkout()
        .created()
        .when(Input::Cancel {
            reason: "customer called".into(),
        })
        // The reservation's outcome is unknown: release it, then cancel the order.
        .then_sent(&["inventory.cmd.release"])
        .then_status(SagaStatus::Compensating);
    given_a_started_checkout()
        .created()
        .reserved()
        .charged()
        .when(Input::Cancel {
            reason: "too late".into(),
        })
        .then_ignored()
        .then_status(SagaStatus::Running);
}

#[test]
fn replaying_the_log_reproduces_the_state() {
    let definition = definition();
    let Value::Object(start) = json!({"order_id": Uuid::nil(), "customer_id": "c-1",
                                      "items": [{"sku": "SKU-1", "quantity": 2}]})
    else {
        unreachable!()
    };
    let inputs = [
        (
            Input::Start {
                input: start.clone(),
            },
            t0(),
        ),
        (
            Input::Reply {
                message_type: "order.evt.created".into(),
                payload: json!({}),
            },
            t0(),
        ),
        (
            Input::Reply {
                message_type: "order.evt.created".into(),
                payload: json!({}),
            },
            t0(),
        ),
        (Input::Timeout, t0() + Duration::seconds(11)),
        (Input::Timeout, t0() + Duration::seconds(22)),
        (
            Input::Reply {
                message_type: "inventory.evt.released".into(),
                payload: json!({}),
            },
            t0() + Duration::seconds(23),
        ),
    ];
    let (saga, applied) = machine::replay(
        &definition,
        Uuid::nil(),
        inputs.iter().map(|(i, at)| (i, *at)),
    )
    .unwrap();
    // What these inputs do, worked out by hand: the order is created (a second copy of that
    // reply is stale), the reservation is sent twice and times out for good at 22 s, its
    // release comes back at 23 s, and the order's cancellation is under way.
    assert_eq!(applied, vec![true, true, false, true, true, true]);
    assert_eq!(saga.status, SagaStatus::Compensating);
    assert_eq!(saga.current, 0);
    assert_eq!(
        saga.steps.iter().map(|s| s.status).collect::<Vec<_>>(),
        [
            StepStatus::Compensating,
            StepStatus::Compensated,
            StepStatus::Pending,
            StepStatus::Pending,
        ]
    );
    assert_eq!(saga.steps[1].attempts, 2);
    assert_eq!(
        (
            saga.steps[0].compensation_attempts,
            saga.steps[1].compensation_attempts
        ),
        (1, 1)
    );
    assert_eq!(saga.version, 5, "the start and four applied inputs");
    assert_eq!(saga.updated_at, t0() + Duration::seconds(23));
    assert_eq!(
        saga.error.as_deref(),
        Some("reserve_inventory timed out after 2 attempts")
    );
}

#[test]
fn a_reply_without_a_field_the_next_command_needs_fails_the_saga_naming_it() {
    let given = given_a_started_checkout()
        .created()
        .reply(
            "inventory.evt.reserved",
            json!({"order_id": Uuid::nil(), "lines": []}),
        )
        .then_sent(&[])
        .then_status(SagaStatus::Failed)
        .then_failure(Some(Failure::MissingField));
    let error = given.saga.error.as_deref().unwrap();
    assert!(error.contains("total_cents"), "{error}");
}

#[test]
fn the_machine_names_its_statuses_as_the_contract_does() {
    let names = SagaStatus::ALL.map(SagaStatus::as_str);
    assert_eq!(names, contracts::messages::SAGA_STATES);
}
