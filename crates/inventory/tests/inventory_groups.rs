//! The inventory handler's group path (`apply_all`) against its per-message path (`apply`) on
//! real PostgreSQL: the same groups must leave the same rows and send the same replies.

#![allow(clippy::unwrap_used)] // helpers of a test panic to fail it

use bus::HandlerError;
use contracts::Envelope;
use contracts::messages::{
    InventoryRelease, InventoryReserve, LineItem, OrderConfirmed, ProductUpsert, ProductUpserted,
};
use inventory::InventoryHandler;
use sqlx::PgPool;
use testkit::grouping::{Tables, compare, ids, one_by_one, racing, sent, types};
use testkit::participant::{Rng, Service, apply, ask};
use uuid::Uuid;

/// The inventory service as `inventory::handler` builds it.
fn inventory(pool: &PgPool) -> Service<InventoryHandler> {
    Service::new(pool, inventory::SCHEMA, inventory::handler(pool.clone()))
}

const TABLES: Tables = &[
    ("inventory.products", "sku"),
    ("inventory.reservations", "order_id"),
];

const RESERVED: &str = "inventory.evt.reserved";
const FAILED: &str = "inventory.evt.reservation_failed";
const RELEASED: &str = "inventory.evt.released";

async fn product(pool: &PgPool, sku: &str, price_cents: i64, available: i64) {
    let upsert = ProductUpsert {
        sku: sku.into(),
        name: format!("Product {sku}"),
        price_cents,
        available,
    };
    let _: ProductUpserted = ask(&inventory(pool), &upsert).await;
}

fn reserve(order_id: Uuid, items: &[(&str, u32)]) -> Envelope {
    let items = items
        .iter()
        .map(|(sku, quantity)| LineItem {
            sku: (*sku).into(),
            quantity: *quantity,
        })
        .collect();
    sent(&InventoryReserve { order_id, items })
}

fn release(order_id: Uuid) -> Envelope {
    sent(&InventoryRelease { order_id })
}

fn confirmed(order_id: Uuid) -> Envelope {
    sent(&OrderConfirmed {
        order_id,
        customer_id: "c-1".into(),
        total_cents: 0,
    })
}

fn upsert(sku: &str, available: i64) -> Envelope {
    sent(&ProductUpsert {
        sku: sku.into(),
        name: format!("Product {sku}"),
        price_cents: 500,
        available,
    })
}

#[sqlx::test(migrations = "../../migrations")]
async fn duplicates_under_new_message_ids_answer_alike_in_one_group(pool: PgPool) {
    product(&pool, "SKU-1", 1250, 10).await;
    product(&pool, "SKU-2", 300, 5).await;
    let [a, b, c] = ids();
    let group = vec![
        reserve(a, &[("SKU-1", 2), ("SKU-2", 1)]),
        reserve(a, &[("SKU-1", 2), ("SKU-2", 1)]),
        release(b),
        release(b),
        reserve(c, &[("SKU-9", 1)]),
        reserve(c, &[("SKU-9", 1)]),
        confirmed(a),
        confirmed(a),
        // A failed reservation is marked released.
        release(c),
        release(c),
    ];

    let grouped = compare(&pool, &InventoryHandler, &[group], TABLES).await;

    assert_eq!(
        types(&grouped),
        [
            RESERVED, RESERVED, RELEASED, RELEASED, FAILED, FAILED, RELEASED, RELEASED
        ]
    );
    assert!(grouped.fell_back.is_empty());
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_reserve_and_a_release_of_one_order_in_one_group(pool: PgPool) {
    product(&pool, "SKU-1", 1250, 4).await;
    let [a, b] = ids();
    let group = vec![
        reserve(a, &[("SKU-1", 3)]),
        release(a),
        // The released stock is free again for another order in the same group.
        reserve(b, &[("SKU-1", 4)]),
        // And the released order cannot be reserved again.
        reserve(a, &[("SKU-1", 1)]),
    ];

    let grouped = compare(&pool, &InventoryHandler, &[group], TABLES).await;

    assert_eq!(types(&grouped), [RESERVED, RELEASED, RESERVED, FAILED]);
}

#[sqlx::test(migrations = "../../migrations")]
async fn two_reserves_compete_for_the_last_units_and_the_second_fails(pool: PgPool) {
    product(&pool, "SKU-1", 1250, 3).await;
    product(&pool, "SKU-2", 300, 8).await;
    let [a, b, c] = ids();
    let group = vec![
        reserve(a, &[("SKU-2", 1), ("SKU-1", 2)]),
        reserve(b, &[("SKU-1", 2), ("SKU-2", 1)]),
        reserve(c, &[("SKU-1", 1), ("SKU-2", 7)]),
    ];

    let grouped = compare(&pool, &InventoryHandler, &[group], TABLES).await;

    assert_eq!(types(&grouped), [RESERVED, FAILED, RESERVED]);
    assert_eq!(
        grouped.outcome.replies[1].payload["reason"],
        "SKU-1: 2 requested, 1 available"
    );
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_release_before_its_reserve_leaves_a_tombstone(pool: PgPool) {
    product(&pool, "SKU-1", 1250, 3).await;
    let [a, b] = ids();
    let groups = [
        vec![release(a), reserve(a, &[("SKU-1", 1)]), release(b)],
        // The tombstones are stored rows now.
        vec![reserve(b, &[("SKU-1", 1)]), release(a), release(b)],
    ];

    let grouped = compare(&pool, &InventoryHandler, &groups, TABLES).await;

    assert_eq!(
        types(&grouped),
        [RELEASED, FAILED, RELEASED, FAILED, RELEASED, RELEASED]
    );
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_confirmed_order_sells_its_held_stock(pool: PgPool) {
    product(&pool, "SKU-1", 1250, 6).await;
    product(&pool, "SKU-2", 300, 6).await;
    let [a, b, c] = ids();
    let groups = [
        vec![
            reserve(a, &[("SKU-1", 2)]),
            reserve(b, &[("SKU-1", 1), ("SKU-2", 2)]),
        ],
        vec![
            confirmed(a),
            confirmed(a),
            reserve(a, &[("SKU-1", 2)]),
            release(b),
            // Released: nothing left to sell.
            confirmed(b),
            // Reserved and sold within the group.
            reserve(c, &[("SKU-2", 3)]),
            confirmed(c),
        ],
        // A sold order cannot be released: the group fails and only that message is refused.
        vec![reserve(c, &[("SKU-2", 3)]), release(a), confirmed(c)],
    ];

    let grouped = compare(&pool, &InventoryHandler, &groups, TABLES).await;

    assert_eq!(grouped.fell_back, [2]);
    assert_eq!(
        types(&grouped),
        [RESERVED, RESERVED, RESERVED, RELEASED, RESERVED, RESERVED]
    );
}

#[sqlx::test(migrations = "../../migrations")]
async fn product_upserts_run_between_the_set_based_runs_of_a_group(pool: PgPool) {
    product(&pool, "SKU-1", 1250, 3).await;
    let [a, b, c, d] = ids();
    let group = vec![
        reserve(a, &[("SKU-1", 3)]),
        upsert("SKU-1", 1),
        reserve(b, &[("SKU-1", 1)]),
        reserve(c, &[("SKU-1", 1)]),
        upsert("SKU-3", 2),
        reserve(d, &[("SKU-3", 2)]),
        release(a),
    ];

    let grouped = compare(&pool, &InventoryHandler, &[group], TABLES).await;

    assert_eq!(
        types(&grouped),
        [
            RESERVED,
            "inventory.evt.product_upserted",
            RESERVED,
            FAILED,
            "inventory.evt.product_upserted",
            RESERVED,
            RELEASED
        ]
    );
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_reservation_stored_meanwhile_fails_the_group_as_transient(pool: PgPool) {
    product(&pool, "SKU-1", 1250, 5).await;
    let [a, b] = ids();
    let command = reserve(a, &[("SKU-1", 2)]);
    let group = vec![command.clone(), reserve(b, &[("SKU-1", 1)])];

    let result = racing(
        &pool,
        &InventoryHandler,
        &reserve(a, &[("SKU-1", 1)]),
        group,
    )
    .await;

    assert!(
        matches!(result, Err(HandlerError::Transient(_))),
        "{result:?}"
    );
    // Alone, the command answers from what the other transaction stored.
    let replies = apply(&inventory(&pool), &command).await.unwrap();
    assert_eq!(replies[0].payload["lines"][0]["quantity"], 1);
    let b_stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM inventory.reservations WHERE order_id = $1")
            .bind(b)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(b_stored, 0, "the failed group left nothing");
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_group_takes_a_fixed_number_of_statements(pool: PgPool) {
    for n in 1..=4 {
        product(&pool, &format!("SKU-{n}"), 100, 50).await;
    }
    let orders: [Uuid; 8] = ids();
    let mut group = Vec::new();
    for (n, order_id) in orders.iter().enumerate() {
        let sku = format!("SKU-{}", n % 4 + 1);
        group.push(reserve(*order_id, &[(sku.as_str(), 1), ("SKU-4", 1)]));
        group.push(confirmed(*order_id));
        group.push(release(Uuid::now_v7()));
    }
    // The first order is stored before the group, so the group also answers from a row.
    let groups = [vec![reserve(orders[0], &[("SKU-1", 1)])], group];

    let alone = one_by_one(&pool, &InventoryHandler, &groups, TABLES).await;
    let grouped = compare(&pool, &InventoryHandler, &groups, TABLES).await;

    eprintln!(
        "24 messages: {} statements one at a time, {} as a group",
        alone.statements[1], grouped.statements[1]
    );
    assert!(grouped.statements[1] <= 5, "{:?}", grouped.statements);
    assert!(alone.statements[1] >= 40, "{:?}", alone.statements);
}

/// Random sequences over a few orders and SKUs, cut into random groups.
#[sqlx::test(migrations = "../../migrations")]
async fn random_groups_agree_with_one_at_a_time(pool: PgPool) {
    product(&pool, "SKU-1", 700, 4).await;
    product(&pool, "SKU-2", 250, 6).await;
    product(&pool, "SKU-3", 1000, 2).await;
    let mut fallbacks = 0;
    for seed in 0..30 {
        let mut rng = Rng::new(seed);
        let orders: [Uuid; 6] = ids();
        let mut messages = Vec::new();
        for _ in 0..40 {
            let order_id = orders[rng.below(6) as usize];
            let roll = rng.below(100);
            messages.push(if roll < 45 {
                let mut items = Vec::new();
                for sku in ["SKU-1", "SKU-2", "SKU-3", "SKU-4"] {
                    if rng.chance(40) {
                        items.push((sku, rng.below(4) as u32));
                    }
                }
                reserve(order_id, &items)
            } else if roll < 70 {
                release(order_id)
            } else if roll < 92 {
                confirmed(order_id)
            } else {
                upsert(&format!("SKU-{}", rng.below(3) + 1), rng.below(6) as i64)
            });
        }
        let mut groups = Vec::new();
        while !messages.is_empty() {
            let size = (rng.below(10) as usize + 1).min(messages.len());
            groups.push(messages.drain(..size).collect::<Vec<_>>());
        }
        eprintln!("seed {seed}");
        fallbacks += compare(&pool, &InventoryHandler, &groups, TABLES)
            .await
            .fell_back
            .len();
    }
    eprintln!("{fallbacks} groups fell back");
}
