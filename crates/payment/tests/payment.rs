//! The payment service's handler against real PostgreSQL (a fresh migrated database per test),
//! each message delivered through its `store::Transactional` (inbox, one transaction, outbox)
//! as the consumer runs it.

#![allow(clippy::unwrap_used)] // helpers of a test panic to fail it

use contracts::Envelope;
use contracts::messages::{
    AccountBalanceSet, AccountSetBalance, PaymentCharge, PaymentCharged, PaymentDeclined,
    PaymentRefund, PaymentRefunded,
};
use payment::PaymentHandler;
use payment::domain::ChargeStatus;
use payment::queries::{AccountView, MoneyTotals, charges_for, get_account, money_totals};
use sqlx::PgPool;
use testkit::participant::{Rng, Service, apply, ask, duplicates, parked, send};
use uuid::Uuid;

/// The payment service as `payment::handler` builds it, without injected faults.
fn payments(pool: &PgPool) -> Service<PaymentHandler> {
    Service::new(pool, payment::SCHEMA, payment::handler(pool.clone(), None))
}

async fn account(pool: &PgPool, customer_id: &str, balance_cents: i64) {
    let set = AccountSetBalance {
        customer_id: customer_id.into(),
        balance_cents,
    };
    let _: AccountBalanceSet = ask(&payments(pool), &set).await;
}

async fn balance(pool: &PgPool, customer_id: &str) -> i64 {
    get_account(pool, customer_id)
        .await
        .unwrap()
        .unwrap()
        .balance_cents
}

fn charge(order_id: Uuid, customer_id: &str, amount_cents: i64) -> PaymentCharge {
    PaymentCharge {
        order_id,
        customer_id: customer_id.into(),
        amount_cents,
    }
}

#[sqlx::test(migrations = "../../migrations")]
async fn set_balance_creates_and_replaces_an_account(pool: PgPool) {
    let set = AccountSetBalance {
        customer_id: "c-1".into(),
        balance_cents: 5000,
    };
    let first: AccountBalanceSet = ask(&payments(&pool), &set).await;
    account(&pool, "c-1", 7000).await;

    assert_eq!(first.balance_cents, 5000);
    assert_eq!(
        get_account(&pool, "c-1").await.unwrap(),
        Some(AccountView {
            customer_id: "c-1".into(),
            balance_cents: 7000
        })
    );
    assert_eq!(get_account(&pool, "c-2").await.unwrap(), None);
}

/// The inbox dedupes by message id alone: the same delivery again (a broker redelivers what
/// it saw no ack for) reaches no handler, while the same command under a new id does. Setting a
/// balance is not idempotent by its business key, so only the inbox keeps the redelivery out.
#[sqlx::test(migrations = "../../migrations")]
async fn a_redelivery_is_absorbed_by_the_inbox_and_a_resend_is_not(pool: PgPool) {
    let payments = payments(&pool);
    let first = send(&AccountSetBalance {
        customer_id: "c-1".into(),
        balance_cents: 5000,
    });
    let replies = apply(&payments, &first).await.unwrap();
    account(&pool, "c-1", 7000).await;

    let redelivered = apply(&payments, &first).await.unwrap();
    assert!(redelivered.is_empty(), "{redelivered:?}");
    assert_eq!(
        balance(&pool, "c-1").await,
        7000,
        "the redelivery changed nothing"
    );
    assert_eq!(
        duplicates(&payments, payment::CONSUMER, first.message_id).await,
        1
    );

    let resent = Envelope {
        message_id: Uuid::now_v7(),
        ..first.clone()
    };
    let again = apply(&payments, &resent).await.unwrap();
    assert_eq!(again[0].payload, replies[0].payload);
    assert_eq!(balance(&pool, "c-1").await, 5000, "the re-send was applied");
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_charge_takes_the_amount_once_however_often_it_is_sent(pool: PgPool) {
    account(&pool, "c-1", 5000).await;
    let order_id = Uuid::now_v7();
    let command = charge(order_id, "c-1", 1250);

    let first: PaymentCharged = ask(&payments(&pool), &command).await;
    let again: PaymentCharged = ask(&payments(&pool), &command).await;

    let expected = PaymentCharged {
        order_id,
        customer_id: "c-1".into(),
        amount_cents: 1250,
    };
    assert_eq!(first, expected);
    assert_eq!(again, expected);
    assert_eq!(balance(&pool, "c-1").await, 3750);
    let charges = charges_for(&pool, order_id).await.unwrap();
    assert_eq!(charges.len(), 1);
    assert_eq!(charges[0].status, ChargeStatus::Charged);
    assert_eq!(charges[0].amount_cents, 1250);
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_charge_above_the_balance_is_declined_and_takes_nothing(pool: PgPool) {
    account(&pool, "c-1", 1000).await;
    let command = charge(Uuid::now_v7(), "c-1", 1001);

    let declined: PaymentDeclined = ask(&payments(&pool), &command).await;
    // The balance grows meanwhile; a re-send still answers as the charge was decided.
    account(&pool, "c-1", 9000).await;
    let again: PaymentDeclined = ask(&payments(&pool), &command).await;

    assert_eq!(
        declined.reason,
        "insufficient funds: balance 1000, amount 1001"
    );
    assert_eq!(again, declined);
    assert_eq!(balance(&pool, "c-1").await, 9000);
    let charges = charges_for(&pool, command.order_id).await.unwrap();
    assert_eq!(charges[0].status, ChargeStatus::Declined);
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_charge_for_an_unknown_customer_is_declined(pool: PgPool) {
    let declined: PaymentDeclined = ask(&payments(&pool), &charge(Uuid::now_v7(), "c-9", 1)).await;
    assert_eq!(declined.reason, "unknown customer c-9");
    assert_eq!(get_account(&pool, "c-9").await.unwrap(), None);
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_refund_before_the_charge_voids_it_and_the_late_charge_is_declined(pool: PgPool) {
    account(&pool, "c-1", 5000).await;
    let order_id = Uuid::now_v7();

    let refunded: PaymentRefunded = ask(&payments(&pool), &PaymentRefund { order_id }).await;
    let late: PaymentDeclined = ask(&payments(&pool), &charge(order_id, "c-1", 1250)).await;

    assert_eq!(
        refunded,
        PaymentRefunded {
            order_id,
            amount_cents: 0
        }
    );
    assert_eq!(late.reason, "order was refunded");
    assert_eq!(balance(&pool, "c-1").await, 5000, "the balance is intact");
    let charges = charges_for(&pool, order_id).await.unwrap();
    assert_eq!(charges[0].status, ChargeStatus::Voided);
    assert_eq!(charges[0].customer_id, None);
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_double_refund_pays_back_once(pool: PgPool) {
    account(&pool, "c-1", 5000).await;
    let order_id = Uuid::now_v7();
    let _: PaymentCharged = ask(&payments(&pool), &charge(order_id, "c-1", 1250)).await;

    let first: PaymentRefunded = ask(&payments(&pool), &PaymentRefund { order_id }).await;
    let again: PaymentRefunded = ask(&payments(&pool), &PaymentRefund { order_id }).await;
    let recharged: PaymentDeclined = ask(&payments(&pool), &charge(order_id, "c-1", 1250)).await;

    assert_eq!(first.amount_cents, 1250);
    assert_eq!(again.amount_cents, 1250, "answers with what was refunded");
    assert_eq!(recharged.reason, "order was refunded");
    assert_eq!(balance(&pool, "c-1").await, 5000);
    assert_eq!(
        money_totals(&pool).await.unwrap(),
        MoneyTotals {
            balance_cents: 5000,
            charged_cents: 0,
            refunded_cents: 1250
        }
    );
}

#[sqlx::test(migrations = "../../migrations")]
async fn refunding_a_declined_charge_pays_back_nothing(pool: PgPool) {
    account(&pool, "c-1", 100).await;
    let order_id = Uuid::now_v7();
    let _: PaymentDeclined = ask(&payments(&pool), &charge(order_id, "c-1", 1250)).await;

    let refunded: PaymentRefunded = ask(&payments(&pool), &PaymentRefund { order_id }).await;

    assert_eq!(refunded.amount_cents, 0);
    assert_eq!(balance(&pool, "c-1").await, 100);
    let charges = charges_for(&pool, order_id).await.unwrap();
    assert_eq!(charges[0].status, ChargeStatus::Declined);
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_negative_charge_is_parked(pool: PgPool) {
    account(&pool, "c-1", 100).await;
    let reason = parked(
        &payments(&pool),
        &send(&charge(Uuid::now_v7(), "c-1", -500)),
    )
    .await;
    assert!(reason.contains("cannot be negative"), "{reason}");
    assert_eq!(balance(&pool, "c-1").await, 100);
}

/// Many orders charge five customers at once: each charge is sent twice at once (a re-send
/// after a timeout), some are refunded while the charge is in flight, some afterwards, some
/// twice.
#[sqlx::test(migrations = "../../migrations")]
async fn concurrent_charges_and_refunds_conserve_money(pool: PgPool) {
    const ORDERS: u64 = 150;
    const CUSTOMERS: [&str; 5] = ["c-1", "c-2", "c-3", "c-4", "c-5"];
    const BALANCE: i64 = 20_000;
    for customer in CUSTOMERS {
        account(&pool, customer, BALANCE).await;
    }

    let mut tasks = Vec::new();
    for n in 0..ORDERS {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(n);
            let order_id = Uuid::now_v7();
            let customer = CUSTOMERS[rng.below(5) as usize];
            let command = charge(order_id, customer, 100 * (1 + rng.below(20) as i64));
            let (once, twice) = (send(&command), send(&command));
            let refund = send(&PaymentRefund { order_id });
            let refunds_early = rng.chance(15);
            let payments = payments(&pool);
            let (first, second, early) =
                tokio::join!(apply(&payments, &once), apply(&payments, &twice), async {
                    if refunds_early {
                        Some(apply(&payments, &refund).await.unwrap())
                    } else {
                        None
                    }
                });
            let (first, second) = (first.unwrap(), second.unwrap());
            if early.is_none() {
                assert_eq!(
                    first[0].payload, second[0].payload,
                    "a re-send answers alike"
                );
            }
            for _ in 0..rng.below(3) {
                apply(&payments, &refund).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }

    let totals = money_totals(&pool).await.unwrap();
    assert_eq!(
        totals.balance_cents + totals.charged_cents,
        BALANCE * CUSTOMERS.len() as i64,
        "{totals:?}"
    );
    for customer in CUSTOMERS {
        let (balance, standing): (i64, i64) = sqlx::query_as(
            "SELECT a.balance_cents, \
                    COALESCE((SELECT SUM(amount_cents) FROM payments.charges c \
                              WHERE c.customer_id = a.customer_id AND c.status = 'charged'), 0)::bigint \
             FROM payments.accounts a WHERE a.customer_id = $1",
        )
        .bind(customer)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(balance + standing, BALANCE, "{customer}");
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM payments.charges")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, ORDERS as i64);
    assert!(
        totals.charged_cents > 0 && totals.refunded_cents > 0,
        "{totals:?}"
    );
}
