//! The payment handler's group path (`apply_all`) against its per-message path (`apply`) on
//! real PostgreSQL: the same groups must leave the same rows and send the same replies.

#![allow(clippy::unwrap_used)] // helpers of a test panic to fail it

use bus::HandlerError;
use contracts::Envelope;
use contracts::messages::{AccountBalanceSet, AccountSetBalance, PaymentCharge, PaymentRefund};
use payment::PaymentHandler;
use sqlx::PgPool;
use testkit::grouping::{Tables, compare, ids, one_by_one, racing, sent, types};
use testkit::participant::{Rng, Service, apply, ask};
use uuid::Uuid;

/// The payment service as `payment::handler` builds it, without injected faults.
fn payments(pool: &PgPool) -> Service<PaymentHandler> {
    Service::new(pool, payment::SCHEMA, payment::handler(pool.clone(), None))
}

const TABLES: Tables = &[
    ("payments.accounts", "customer_id"),
    ("payments.charges", "order_id"),
];

const CHARGED: &str = "payment.evt.charged";
const DECLINED: &str = "payment.evt.declined";
const REFUNDED: &str = "payment.evt.refunded";

async fn account(pool: &PgPool, customer_id: &str, balance_cents: i64) {
    let set = AccountSetBalance {
        customer_id: customer_id.into(),
        balance_cents,
    };
    let _: AccountBalanceSet = ask(&payments(pool), &set).await;
}

fn charge(order_id: Uuid, customer_id: &str, amount_cents: i64) -> Envelope {
    sent(&PaymentCharge {
        order_id,
        customer_id: customer_id.into(),
        amount_cents,
    })
}

fn refund(order_id: Uuid) -> Envelope {
    sent(&PaymentRefund { order_id })
}

fn set_balance(customer_id: &str, balance_cents: i64) -> Envelope {
    sent(&AccountSetBalance {
        customer_id: customer_id.into(),
        balance_cents,
    })
}

#[sqlx::test(migrations = "../../migrations")]
async fn duplicates_under_new_message_ids_charge_once(pool: PgPool) {
    account(&pool, "c-1", 5000).await;
    let [a, b] = ids();
    let group = vec![
        charge(a, "c-1", 1200),
        charge(a, "c-1", 1200),
        charge(b, "c-9", 100),
        charge(b, "c-9", 100),
        refund(a),
        refund(a),
    ];

    let grouped = compare(&pool, &PaymentHandler::default(), &[group], TABLES).await;

    assert_eq!(
        types(&grouped),
        [CHARGED, CHARGED, DECLINED, DECLINED, REFUNDED, REFUNDED]
    );
    assert_eq!(grouped.outcome.replies[5].payload["amount_cents"], 1200);
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_charge_then_a_refund_of_a_stored_and_of_a_new_charge(pool: PgPool) {
    account(&pool, "c-1", 5000).await;
    account(&pool, "c-2", 700).await;
    let [a, b, c] = ids();
    let groups = [
        vec![charge(a, "c-1", 1000)],
        vec![
            refund(a),
            charge(b, "c-2", 700),
            // The money refunded for a pays this one.
            charge(c, "c-1", 5000),
            refund(b),
            // Charged again after its refund: declined.
            charge(b, "c-2", 700),
        ],
    ];

    let grouped = compare(&pool, &PaymentHandler::default(), &groups, TABLES).await;

    assert_eq!(
        types(&grouped),
        [CHARGED, REFUNDED, CHARGED, CHARGED, REFUNDED, DECLINED]
    );
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_charge_beyond_what_earlier_charges_left_is_declined(pool: PgPool) {
    account(&pool, "c-1", 1000).await;
    let [a, b, c] = ids();
    let group = vec![
        charge(a, "c-1", 600),
        charge(b, "c-1", 600),
        charge(c, "c-1", 400),
    ];

    let grouped = compare(&pool, &PaymentHandler::default(), &[group], TABLES).await;

    assert_eq!(types(&grouped), [CHARGED, DECLINED, CHARGED]);
    assert_eq!(
        grouped.outcome.replies[1].payload["reason"],
        "insufficient funds: balance 400, amount 600"
    );
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_refund_before_its_charge_leaves_a_tombstone(pool: PgPool) {
    account(&pool, "c-1", 1000).await;
    let [a, b] = ids();
    let groups = [
        vec![refund(a), charge(a, "c-1", 100), refund(b)],
        vec![charge(b, "c-1", 100), refund(a), refund(b)],
    ];

    let grouped = compare(&pool, &PaymentHandler::default(), &groups, TABLES).await;

    assert_eq!(
        types(&grouped),
        [REFUNDED, DECLINED, REFUNDED, DECLINED, REFUNDED, REFUNDED]
    );
}

#[sqlx::test(migrations = "../../migrations")]
async fn balance_sets_run_between_the_set_based_runs_of_a_group(pool: PgPool) {
    account(&pool, "c-1", 1000).await;
    let [a, b, c] = ids();
    let group = vec![
        charge(a, "c-1", 800),
        set_balance("c-1", 300),
        charge(b, "c-1", 300),
        set_balance("c-2", 50),
        charge(c, "c-2", 60),
        refund(a),
    ];

    let grouped = compare(&pool, &PaymentHandler::default(), &[group], TABLES).await;

    assert_eq!(
        types(&grouped),
        [
            CHARGED,
            "payment.evt.balance_set",
            CHARGED,
            "payment.evt.balance_set",
            DECLINED,
            REFUNDED
        ]
    );
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_refused_charge_fails_its_group_alone(pool: PgPool) {
    account(&pool, "c-1", 1000).await;
    let [a, b] = ids();
    let groups = [vec![charge(a, "c-1", 100), charge(b, "c-1", -5), refund(a)]];

    let grouped = compare(&pool, &PaymentHandler::default(), &groups, TABLES).await;

    assert_eq!(grouped.fell_back, [0]);
    assert_eq!(grouped.outcome.refused, [1]);
    assert_eq!(types(&grouped), [CHARGED, REFUNDED]);
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_charge_stored_meanwhile_fails_the_group_as_transient(pool: PgPool) {
    account(&pool, "c-1", 5000).await;
    let [a, b] = ids();
    let command = charge(a, "c-1", 2000);
    let group = vec![command.clone(), charge(b, "c-1", 100)];
    let handler = PaymentHandler::default();

    let result = racing(&pool, &handler, &charge(a, "c-1", 1000), group).await;

    assert!(
        matches!(result, Err(HandlerError::Transient(_))),
        "{result:?}"
    );
    // Alone, the command answers from what the other transaction stored.
    let replies = apply(&payments(&pool), &command).await.unwrap();
    assert_eq!(replies[0].payload["amount_cents"], 1000);
    let balance: i64 =
        sqlx::query_scalar("SELECT balance_cents FROM payments.accounts WHERE customer_id = 'c-1'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        balance, 4000,
        "charged once, and the failed group left nothing"
    );
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_group_takes_a_fixed_number_of_statements(pool: PgPool) {
    for n in 1..=4 {
        account(&pool, &format!("c-{n}"), 10_000).await;
    }
    let orders: [Uuid; 8] = ids();
    let mut group = Vec::new();
    for (n, order_id) in orders.iter().enumerate() {
        group.push(charge(*order_id, &format!("c-{}", n % 5 + 1), 100));
        group.push(refund(*order_id));
        group.push(refund(Uuid::now_v7()));
    }
    // The first order is charged before the group, so the group also answers from a row.
    let groups = [vec![charge(orders[0], "c-1", 100)], group];

    let alone = one_by_one(&pool, &PaymentHandler::default(), &groups, TABLES).await;
    let grouped = compare(&pool, &PaymentHandler::default(), &groups, TABLES).await;

    eprintln!(
        "24 messages: {} statements one at a time, {} as a group",
        alone.statements[1], grouped.statements[1]
    );
    assert!(grouped.statements[1] <= 5, "{:?}", grouped.statements);
    assert!(alone.statements[1] >= 40, "{:?}", alone.statements);
}

/// Random sequences over a few orders and customers, cut into random groups.
#[sqlx::test(migrations = "../../migrations")]
async fn random_groups_agree_with_one_at_a_time(pool: PgPool) {
    account(&pool, "c-1", 2000).await;
    account(&pool, "c-2", 500).await;
    // c-3 has no account.
    let mut fallbacks = 0;
    for seed in 0..30 {
        let mut rng = Rng::new(seed);
        let orders: [Uuid; 6] = ids();
        let mut messages = Vec::new();
        for _ in 0..40 {
            let order_id = orders[rng.below(6) as usize];
            let customer = format!("c-{}", rng.below(3) + 1);
            let roll = rng.below(100);
            messages.push(if roll < 55 {
                let amount = if rng.chance(3) {
                    -1
                } else {
                    rng.below(1200) as i64
                };
                charge(order_id, &customer, amount)
            } else if roll < 92 {
                refund(order_id)
            } else {
                set_balance(&customer, rng.below(1500) as i64)
            });
        }
        let mut groups = Vec::new();
        while !messages.is_empty() {
            let size = (rng.below(10) as usize + 1).min(messages.len());
            groups.push(messages.drain(..size).collect::<Vec<_>>());
        }
        eprintln!("seed {seed}");
        fallbacks += compare(&pool, &PaymentHandler::default(), &groups, TABLES)
            .await
            .fell_back
            .len();
    }
    eprintln!("{fallbacks} groups fell back");
}
