//! The order handler's group path (`apply_all`) against its per-message path (`apply`) on
//! real PostgreSQL: the same groups must leave the same rows and send the same replies.

#![allow(clippy::unwrap_used)] // helpers of a test panic to fail it

use bus::HandlerError;
use contracts::Envelope;
use contracts::messages::{LineItem, OrderCancel, OrderConfirm, OrderCreate};
use order::OrderHandler;
use sqlx::PgPool;
use testkit::grouping::{Tables, compare, ids, one_by_one, racing, sent, types};
use testkit::participant::{Rng, Service, apply};
use uuid::Uuid;

/// The order service as `order::handler` builds it.
fn orders(pool: &PgPool) -> Service<OrderHandler> {
    Service::new(pool, order::SCHEMA, order::handler(pool.clone()))
}

const TABLES: Tables = &[("orders.orders", "order_id")];

const CREATED: &str = "order.evt.created";
const REJECTED: &str = "order.evt.rejected";
const CONFIRMED: &str = "order.evt.confirmed";
const CANCELLED: &str = "order.evt.cancelled";

fn create(order_id: Uuid, customer_id: &str, items: &[(&str, u32)]) -> Envelope {
    let items = items
        .iter()
        .map(|(sku, quantity)| LineItem {
            sku: (*sku).into(),
            quantity: *quantity,
        })
        .collect();
    sent(&OrderCreate {
        order_id,
        customer_id: customer_id.into(),
        items,
    })
}

fn confirm(order_id: Uuid, total_cents: i64) -> Envelope {
    sent(&OrderConfirm {
        order_id,
        total_cents,
    })
}

fn cancel(order_id: Uuid, reason: &str) -> Envelope {
    sent(&OrderCancel {
        order_id,
        reason: reason.into(),
    })
}

#[sqlx::test(migrations = "../../migrations")]
async fn duplicates_under_new_message_ids_answer_alike_in_one_group(pool: PgPool) {
    let [a, b] = ids();
    let group = vec![
        create(a, "c-1", &[("SKU-1", 2)]),
        create(a, "c-1", &[("SKU-1", 2)]),
        confirm(a, 2500),
        // Answered with the first total.
        confirm(a, 9999),
        cancel(b, "timeout"),
        cancel(b, "again"),
    ];

    let grouped = compare(&pool, &OrderHandler, &[group], TABLES).await;

    assert_eq!(
        types(&grouped),
        [CREATED, CREATED, CONFIRMED, CONFIRMED, CANCELLED, CANCELLED]
    );
    assert_eq!(grouped.outcome.replies[3].payload["total_cents"], 2500);
    assert_eq!(grouped.outcome.replies[5].payload["reason"], "timeout");
}

#[sqlx::test(migrations = "../../migrations")]
async fn creates_confirms_and_cancels_of_stored_and_new_orders(pool: PgPool) {
    let [a, b, c, d] = ids();
    let groups = [
        vec![
            create(a, "c-1", &[("SKU-1", 1)]),
            create(b, "c-2", &[("SKU-2", 3)]),
        ],
        vec![
            confirm(a, 1000),
            cancel(b, "payment declined"),
            // Another customer's order id, and lines out of range: rejected, nothing stored.
            create(a, "c-2", &[("SKU-1", 1)]),
            create(c, "c-1", &[("SKU-1", 0)]),
            create(c, "c-1", &[("SKU-1", 1), ("SKU-2", 1)]),
            cancel(c, "out of stock"),
            // A cancel before the create leaves a tombstone; the late create is rejected.
            cancel(d, "timeout"),
            create(d, "c-1", &[("SKU-1", 1)]),
            create(b, "c-2", &[("SKU-2", 3)]),
        ],
    ];

    let grouped = compare(&pool, &OrderHandler, &groups, TABLES).await;

    assert_eq!(
        types(&grouped),
        [
            CREATED, CREATED, CONFIRMED, CANCELLED, REJECTED, REJECTED, CREATED, CANCELLED,
            CANCELLED, REJECTED, REJECTED
        ]
    );
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_refused_command_fails_its_group_alone(pool: PgPool) {
    let [a, b, c] = ids();
    let groups = [
        vec![create(a, "c-1", &[("SKU-1", 1)]), confirm(a, 500)],
        vec![create(b, "c-1", &[("SKU-1", 1)]), cancel(a, "too late")],
        vec![cancel(b, "timeout"), confirm(b, 100)],
        vec![confirm(c, 100), create(c, "c-1", &[("SKU-1", 1)])],
    ];

    let grouped = compare(&pool, &OrderHandler, &groups, TABLES).await;

    assert_eq!(grouped.fell_back, [1, 2, 3]);
    assert_eq!(grouped.outcome.refused, [3, 5, 6]);
}

#[sqlx::test(migrations = "../../migrations")]
async fn an_order_stored_meanwhile_fails_the_group_as_transient(pool: PgPool) {
    let [a, b] = ids();
    let command = create(a, "c-1", &[("SKU-1", 2)]);
    let group = vec![command.clone(), create(b, "c-1", &[("SKU-1", 1)])];

    let result = racing(
        &pool,
        &OrderHandler,
        &create(a, "c-1", &[("SKU-1", 1)]),
        group,
    )
    .await;

    assert!(
        matches!(result, Err(HandlerError::Transient(_))),
        "{result:?}"
    );
    // Alone, the command answers from what the other transaction stored.
    let replies = apply(&orders(&pool), &command).await.unwrap();
    assert_eq!(replies[0].payload["items"][0]["quantity"], 1);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM orders.orders")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 1, "the failed group left nothing");
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_group_takes_a_fixed_number_of_statements(pool: PgPool) {
    let orders: [Uuid; 8] = ids();
    let mut group = Vec::new();
    for (n, order_id) in orders.iter().enumerate() {
        group.push(create(*order_id, "c-1", &[("SKU-1", 1)]));
        group.push(if n % 2 == 0 {
            confirm(*order_id, 100)
        } else {
            cancel(*order_id, "timeout")
        });
        group.push(cancel(Uuid::now_v7(), "timeout"));
    }
    // The first order is stored before the group, so the group also updates a row.
    let groups = [vec![create(orders[0], "c-1", &[("SKU-1", 1)])], group];

    let alone = one_by_one(&pool, &OrderHandler, &groups, TABLES).await;
    let grouped = compare(&pool, &OrderHandler, &groups, TABLES).await;

    eprintln!(
        "24 messages: {} statements one at a time, {} as a group",
        alone.statements[1], grouped.statements[1]
    );
    assert!(grouped.statements[1] <= 3, "{:?}", grouped.statements);
    assert!(alone.statements[1] >= 40, "{:?}", alone.statements);
}

/// Random sequences over a few orders and customers, cut into random groups.
#[sqlx::test(migrations = "../../migrations")]
async fn random_groups_agree_with_one_at_a_time(pool: PgPool) {
    let mut fallbacks = 0;
    for seed in 0..30 {
        let mut rng = Rng::new(seed);
        let orders: [Uuid; 5] = ids();
        let mut messages: Vec<Envelope> = Vec::new();
        for _ in 0..40 {
            let order_id = orders[rng.below(5) as usize];
            let customer = format!("c-{}", rng.below(2) + 1);
            let roll = rng.below(100);
            messages.push(if roll < 45 {
                let quantity = if rng.chance(10) { 0 } else { 1 };
                create(order_id, &customer, &[("SKU-1", quantity)])
            } else if roll < 70 {
                confirm(order_id, rng.below(3) as i64 * 100)
            } else {
                cancel(order_id, &format!("reason {}", rng.below(3)))
            });
        }
        // A refused message changes nothing, so most can go, leaving groups that go through.
        let refused = one_by_one(&pool, &OrderHandler, &[messages.clone()], TABLES)
            .await
            .outcome
            .refused;
        let mut messages: Vec<Envelope> = messages
            .into_iter()
            .enumerate()
            .filter(|(n, _)| !refused.contains(n) || rng.chance(10))
            .map(|(_, m)| m)
            .collect();
        let mut groups = Vec::new();
        while !messages.is_empty() {
            let size = (rng.below(10) as usize + 1).min(messages.len());
            groups.push(messages.drain(..size).collect::<Vec<_>>());
        }
        eprintln!("seed {seed}");
        fallbacks += compare(&pool, &OrderHandler, &groups, TABLES)
            .await
            .fell_back
            .len();
    }
    eprintln!("{fallbacks} groups fell back");
}
