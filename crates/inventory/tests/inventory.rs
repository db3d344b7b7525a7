//! The inventory service's handler against real PostgreSQL (a fresh migrated database per
//! test), each message delivered through its `store::Transactional` (inbox, one transaction,
//! outbox) as the consumer runs it.

#![allow(clippy::unwrap_used)] // helpers of a test panic to fail it

use bus::HandlerError;
use contracts::messages::{
    InventoryRelease, InventoryReleased, InventoryReservationFailed, InventoryReserve,
    InventoryReserved, LineItem, OrderConfirmed, PricedLine, ProductUpsert, ProductUpserted,
};
use inventory::InventoryHandler;
use inventory::domain::ReservationStatus;
use inventory::queries::{ProductView, StockTotals, get_product, get_reservation, stock_totals};
use sqlx::PgPool;
use testkit::participant::{Rng, Service, apply, ask, parked, send};
use uuid::Uuid;

/// The inventory service as `inventory::handler` builds it.
fn inventory(pool: &PgPool) -> Service<InventoryHandler> {
    Service::new(pool, inventory::SCHEMA, inventory::handler(pool.clone()))
}

fn line(sku: &str, quantity: u32) -> LineItem {
    LineItem {
        sku: sku.into(),
        quantity,
    }
}

async fn product(pool: &PgPool, sku: &str, price_cents: i64, available: i64) {
    let upsert = ProductUpsert {
        sku: sku.into(),
        name: format!("Product {sku}"),
        price_cents,
        available,
    };
    let upserted: ProductUpserted = ask(&inventory(pool), &upsert).await;
    assert_eq!(upserted.available, available);
}

/// (available, reserved, sold) of one product.
async fn stock(pool: &PgPool, sku: &str) -> (i64, i64, i64) {
    sqlx::query_as("SELECT available, reserved, sold FROM inventory.products WHERE sku = $1")
        .bind(sku)
        .fetch_one(pool)
        .await
        .unwrap()
}

fn reserve(order_id: Uuid, items: Vec<LineItem>) -> InventoryReserve {
    InventoryReserve { order_id, items }
}

fn confirmed(order_id: Uuid) -> OrderConfirmed {
    OrderConfirmed {
        order_id,
        customer_id: "c-1".into(),
        total_cents: 0,
    }
}

#[sqlx::test(migrations = "../../migrations")]
async fn an_upsert_sets_name_price_and_available_and_keeps_held_stock(pool: PgPool) {
    product(&pool, "SKU-1", 1250, 5).await;
    let _: InventoryReserved = ask(
        &inventory(&pool),
        &reserve(Uuid::now_v7(), vec![line("SKU-1", 2)]),
    )
    .await;

    let upsert = ProductUpsert {
        sku: "SKU-1".into(),
        name: "Renamed".into(),
        price_cents: 990,
        available: 10,
    };
    let upserted: ProductUpserted = ask(&inventory(&pool), &upsert).await;

    assert_eq!(upserted.name, "Renamed");
    assert_eq!(
        get_product(&pool, "SKU-1").await.unwrap(),
        Some(ProductView {
            sku: "SKU-1".into(),
            name: "Renamed".into(),
            price_cents: 990,
            available: 10,
            reserved: 2,
        })
    );
    assert_eq!(get_product(&pool, "SKU-9").await.unwrap(), None);
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_reservation_is_priced_by_inventory_and_a_resent_reserve_holds_once(pool: PgPool) {
    product(&pool, "SKU-1", 1250, 5).await;
    product(&pool, "SKU-2", 300, 3).await;
    let order_id = Uuid::now_v7();
    let command = reserve(order_id, vec![line("SKU-1", 2), line("SKU-2", 3)]);

    let first: InventoryReserved = ask(&inventory(&pool), &command).await;
    // The price changes; a re-send answers with the prices the order was reserved at.
    product(&pool, "SKU-1", 9999, 3).await;
    let again: InventoryReserved = ask(&inventory(&pool), &command).await;

    let expected = InventoryReserved {
        order_id,
        lines: vec![
            PricedLine {
                sku: "SKU-1".into(),
                quantity: 2,
                unit_price_cents: 1250,
            },
            PricedLine {
                sku: "SKU-2".into(),
                quantity: 3,
                unit_price_cents: 300,
            },
        ],
        total_cents: 2 * 1250 + 3 * 300,
    };
    assert_eq!(first, expected);
    assert_eq!(again, expected);
    assert_eq!(stock(&pool, "SKU-1").await, (3, 2, 0));
    assert_eq!(stock(&pool, "SKU-2").await, (0, 3, 0));
    let reservation = get_reservation(&pool, order_id).await.unwrap().unwrap();
    assert_eq!(reservation.status, ReservationStatus::Reserved);
    assert_eq!(reservation.total_cents, expected.total_cents);
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_reservation_with_one_short_line_holds_nothing(pool: PgPool) {
    product(&pool, "SKU-1", 100, 2).await;
    product(&pool, "SKU-2", 100, 50).await;
    let command = reserve(Uuid::now_v7(), vec![line("SKU-2", 5), line("SKU-1", 3)]);

    let failed: InventoryReservationFailed = ask(&inventory(&pool), &command).await;
    let again: InventoryReservationFailed = ask(&inventory(&pool), &command).await;

    assert_eq!(failed.reason, "SKU-1: 3 requested, 2 available");
    assert_eq!(again, failed);
    assert_eq!(stock(&pool, "SKU-1").await, (2, 0, 0));
    assert_eq!(stock(&pool, "SKU-2").await, (50, 0, 0), "all or nothing");
    let reservation = get_reservation(&pool, command.order_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reservation.status, ReservationStatus::Failed);
    assert!(reservation.lines.is_empty());
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_reservation_with_an_unknown_sku_holds_nothing(pool: PgPool) {
    product(&pool, "SKU-1", 100, 10).await;
    let command = reserve(Uuid::now_v7(), vec![line("SKU-1", 1), line("SKU-9", 1)]);

    let failed: InventoryReservationFailed = ask(&inventory(&pool), &command).await;

    assert_eq!(failed.reason, "unknown SKU SKU-9");
    assert_eq!(stock(&pool, "SKU-1").await, (10, 0, 0));
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_release_before_reserve_leaves_a_tombstone_and_the_late_reserve_holds_nothing(
    pool: PgPool,
) {
    product(&pool, "SKU-1", 100, 10).await;
    let order_id = Uuid::now_v7();

    let released: InventoryReleased = ask(&inventory(&pool), &InventoryRelease { order_id }).await;
    let late: InventoryReservationFailed = ask(
        &inventory(&pool),
        &reserve(order_id, vec![line("SKU-1", 4)]),
    )
    .await;

    assert_eq!(released.order_id, order_id);
    assert_eq!(late.reason, "reservation was released");
    assert_eq!(stock(&pool, "SKU-1").await, (10, 0, 0));
    let reservation = get_reservation(&pool, order_id).await.unwrap().unwrap();
    assert_eq!(reservation.status, ReservationStatus::Released);
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_release_returns_held_stock_once(pool: PgPool) {
    product(&pool, "SKU-1", 100, 10).await;
    let order_id = Uuid::now_v7();
    let command = reserve(order_id, vec![line("SKU-1", 4)]);
    let _: InventoryReserved = ask(&inventory(&pool), &command).await;
    assert_eq!(stock(&pool, "SKU-1").await, (6, 4, 0));

    for _ in 0..3 {
        let released: InventoryReleased =
            ask(&inventory(&pool), &InventoryRelease { order_id }).await;
        assert_eq!(released.order_id, order_id);
        assert_eq!(stock(&pool, "SKU-1").await, (10, 0, 0));
    }
    let late: InventoryReservationFailed = ask(&inventory(&pool), &command).await;
    assert_eq!(late.reason, "reservation was released");
    assert_eq!(stock(&pool, "SKU-1").await, (10, 0, 0));
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_release_after_a_failed_reservation_changes_no_stock(pool: PgPool) {
    product(&pool, "SKU-1", 100, 1).await;
    let order_id = Uuid::now_v7();
    let _: InventoryReservationFailed = ask(
        &inventory(&pool),
        &reserve(order_id, vec![line("SKU-1", 2)]),
    )
    .await;

    let _: InventoryReleased = ask(&inventory(&pool), &InventoryRelease { order_id }).await;

    assert_eq!(stock(&pool, "SKU-1").await, (1, 0, 0));
    let reservation = get_reservation(&pool, order_id).await.unwrap().unwrap();
    assert_eq!(reservation.status, ReservationStatus::Released);
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_confirmed_order_sells_its_held_stock_once(pool: PgPool) {
    product(&pool, "SKU-1", 100, 10).await;
    let order_id = Uuid::now_v7();
    let command = reserve(order_id, vec![line("SKU-1", 4)]);
    let reserved: InventoryReserved = ask(&inventory(&pool), &command).await;

    for _ in 0..2 {
        let replies = apply(&inventory(&pool), &send(&confirmed(order_id)))
            .await
            .unwrap();
        assert!(replies.is_empty(), "{replies:?}");
        assert_eq!(stock(&pool, "SKU-1").await, (6, 0, 4));
    }
    let again: InventoryReserved = ask(&inventory(&pool), &command).await;
    let reason = parked(&inventory(&pool), &send(&InventoryRelease { order_id })).await;

    assert_eq!(again, reserved);
    assert!(reason.contains("confirmed order"), "{reason}");
    assert_eq!(stock(&pool, "SKU-1").await, (6, 0, 4));
    let reservation = get_reservation(&pool, order_id).await.unwrap().unwrap();
    assert_eq!(reservation.status, ReservationStatus::Committed);
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_confirmation_without_a_standing_reservation_changes_nothing(pool: PgPool) {
    product(&pool, "SKU-1", 100, 10).await;
    let released = Uuid::now_v7();
    let _: InventoryReserved = ask(
        &inventory(&pool),
        &reserve(released, vec![line("SKU-1", 4)]),
    )
    .await;
    let _: InventoryReleased =
        ask(&inventory(&pool), &InventoryRelease { order_id: released }).await;

    for order_id in [released, Uuid::now_v7()] {
        let replies = apply(&inventory(&pool), &send(&confirmed(order_id)))
            .await
            .unwrap();
        assert!(replies.is_empty());
    }

    assert_eq!(stock(&pool, "SKU-1").await, (10, 0, 0));
    let reservation = get_reservation(&pool, released).await.unwrap().unwrap();
    assert_eq!(reservation.status, ReservationStatus::Released);
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_negative_stock_is_parked_by_the_database(pool: PgPool) {
    let upsert = send(&ProductUpsert {
        sku: "SKU-1".into(),
        name: "Broken".into(),
        price_cents: 100,
        available: -1,
    });
    let outcome = apply(&inventory(&pool), &upsert).await;
    assert!(
        matches!(outcome, Err(HandlerError::Permanent(_))),
        "{outcome:?}"
    );
    assert_eq!(get_product(&pool, "SKU-1").await.unwrap(), None);
}

/// Many orders race for scarce stock: each reserve is sent twice at once (a re-send after a
/// timeout), and some orders are released while their reserve is in flight, some sold.
#[sqlx::test(migrations = "../../migrations")]
async fn concurrent_reserves_releases_and_sales_conserve_stock(pool: PgPool) {
    const ORDERS: u64 = 120;
    const SKUS: [(&str, i64); 3] = [("SKU-A", 40), ("SKU-B", 25), ("SKU-C", 60)];
    for (sku, available) in SKUS {
        product(&pool, sku, 100, available).await;
    }

    let mut tasks = Vec::new();
    for n in 0..ORDERS {
        let inventory = inventory(&pool);
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(n);
            let order_id = Uuid::now_v7();
            let mut items = Vec::new();
            for (sku, _) in SKUS {
                if rng.chance(60) {
                    items.push(line(sku, 1 + rng.below(4) as u32));
                }
            }
            if items.is_empty() {
                items.push(line("SKU-A", 1));
            }
            let command = send(&reserve(order_id, items.clone()));
            let resent = send(&reserve(order_id, items));
            let release = send(&InventoryRelease { order_id });
            let releases_early = rng.chance(15);
            let (first, second, early) = tokio::join!(
                apply(&inventory, &command),
                apply(&inventory, &resent),
                async {
                    if releases_early {
                        Some(apply(&inventory, &release).await.unwrap())
                    } else {
                        None
                    }
                }
            );
            let (first, second) = (first.unwrap(), second.unwrap());
            if early.is_none() {
                assert_eq!(
                    first[0].payload, second[0].payload,
                    "a re-send answers alike"
                );
            }
            match rng.below(3) {
                0 => {
                    apply(&inventory, &release).await.unwrap();
                }
                1 => {
                    apply(&inventory, &send(&confirmed(order_id)))
                        .await
                        .unwrap();
                }
                _ => {}
            }
            order_id
        }));
    }
    let mut order_ids = Vec::new();
    for task in tasks {
        order_ids.push(task.await.unwrap());
    }

    let initial: i64 = SKUS.iter().map(|(_, available)| available).sum();
    let totals = stock_totals(&pool).await.unwrap();
    assert_eq!(totals.available + totals.reserved + totals.sold, initial);
    for (sku, available) in SKUS {
        let (a, r, s) = stock(&pool, sku).await;
        assert_eq!(a + r + s, available, "{sku}");
    }
    // What products hold agrees with what reservations say they hold.
    let (held, sold): (i64, i64) = sqlx::query_as(
        "SELECT COALESCE(SUM((l->>'quantity')::bigint) FILTER (WHERE r.status = 'reserved'), 0)::bigint, \
                COALESCE(SUM((l->>'quantity')::bigint) FILTER (WHERE r.status = 'committed'), 0)::bigint \
         FROM inventory.reservations r, jsonb_array_elements(r.lines) l",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((held, sold), (totals.reserved, totals.sold), "{totals:?}");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM inventory.reservations")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, ORDERS as i64);
    assert_ne!(
        totals,
        StockTotals {
            available: initial,
            reserved: 0,
            sold: 0
        },
        "the run should move some stock"
    );
}

/// Stock and balances are never negative because the schema refuses it, whatever a handler
/// does: the tests of conservation rely on these constraints instead of re-checking the sign.
#[sqlx::test(migrations = "../../migrations")]
async fn the_schema_refuses_negative_stock_and_balances(pool: PgPool) {
    sqlx::query(
        "INSERT INTO inventory.products (sku, name, price_cents, available, stocked) \
         VALUES ('SKU-N', 'n', 100, 1, 1)",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO payments.accounts (customer_id, balance_cents, funded_cents) VALUES ('c-n', 1, 1)")
        .execute(&pool)
        .await
        .unwrap();
    for sql in [
        "UPDATE inventory.products SET available = available - 2 WHERE sku = 'SKU-N'",
        "UPDATE inventory.products SET reserved = reserved - 1 WHERE sku = 'SKU-N'",
        "UPDATE inventory.products SET sold = sold - 1 WHERE sku = 'SKU-N'",
        "UPDATE payments.accounts SET balance_cents = balance_cents - 2 WHERE customer_id = 'c-n'",
    ] {
        let refused = sqlx::query(sql).execute(&pool).await.unwrap_err();
        let kind = refused.as_database_error().map(|e| e.kind());
        assert_eq!(
            kind,
            Some(sqlx::error::ErrorKind::CheckViolation),
            "{sql}: {refused}"
        );
    }
}
