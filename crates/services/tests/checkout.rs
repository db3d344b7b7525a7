//! The three participants together, driven as the checkout saga drives them (create, reserve,
//! charge, confirm; compensate in reverse), for many orders at once, with re-sent commands and
//! timed-out steps whose compensation overtakes them. Stock and money must be conserved.

#![allow(clippy::unwrap_used)] // helpers of a test panic to fail it

mod support;

use std::collections::HashMap;

use contracts::Envelope;
use contracts::messages::{
    AccountSetBalance, InventoryRelease, InventoryReserve, InventoryReserved, LineItem,
    OrderCancel, OrderConfirm, OrderConfirmed, OrderCreate, PaymentCharge, PaymentCharged,
    PaymentRefund, ProductUpsert,
};
use services::inventory::InventoryHandler;
use services::inventory::domain::ReservationStatus;
use services::inventory::queries::{get_reservation, stock_totals};
use services::order::OrderHandler;
use services::order::domain::OrderStatus;
use services::order::queries::get_order;
use services::payment::PaymentHandler;
use services::payment::domain::ChargeStatus;
use services::payment::queries::{charges_for, money_totals};
use sqlx::PgPool;
use store::TxHandler;
use support::{Rng, apply, send};
use uuid::Uuid;

const ORDERS: u64 = 200;
const SKUS: [(&str, i64, i64); 3] = [
    ("SKU-1", 250, 150),
    ("SKU-2", 400, 150),
    ("SKU-3", 1000, 150),
];
const CUSTOMERS: [&str; 5] = ["c-1", "c-2", "c-3", "c-4", "c-5"];
const BALANCE: i64 = 30_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Outcome {
    Rejected,
    Compensated,
    Confirmed,
}

/// Sends one command under a saga id, sometimes twice (a re-send after a timeout), and
/// checks that a re-send is answered alike. Returns the reply.
async fn step<H: TxHandler>(
    pool: &PgPool,
    handler: &H,
    rng: &mut Rng,
    saga_id: Uuid,
    command: Envelope,
) -> Option<Envelope> {
    let command = command.with_correlation(saga_id);
    let replies = apply(pool, handler, &command).await.unwrap();
    if rng.chance(25) {
        let resent = Envelope {
            message_id: Uuid::now_v7(),
            ..command.clone()
        };
        let again = apply(pool, handler, &resent).await.unwrap();
        assert_eq!(
            replies.iter().map(|r| &r.payload).collect::<Vec<_>>(),
            again.iter().map(|r| &r.payload).collect::<Vec<_>>(),
            "a re-sent {} is answered alike",
            command.message_type
        );
    }
    assert!(replies.len() <= 1, "{replies:?}");
    replies.into_iter().next()
}

/// Undoes whatever of reserve and charge may have happened, then cancels the order.
async fn compensate(pool: &PgPool, rng: &mut Rng, saga_id: Uuid, order_id: Uuid) -> Outcome {
    let refund = Envelope::new("saga", &PaymentRefund { order_id });
    step(pool, &PaymentHandler::default(), rng, saga_id, refund).await;
    let release = Envelope::new("saga", &InventoryRelease { order_id });
    step(pool, &InventoryHandler, rng, saga_id, release).await;
    let cancel = Envelope::new(
        "saga",
        &OrderCancel {
            order_id,
            reason: "checkout failed".into(),
        },
    );
    step(pool, &OrderHandler, rng, saga_id, cancel).await;
    Outcome::Compensated
}

async fn checkout(pool: PgPool, n: u64) -> (Uuid, Vec<LineItem>, Outcome) {
    let mut rng = Rng::new(1000 + n);
    let saga_id = Uuid::now_v7();
    let order_id = Uuid::now_v7();
    let customer_id = CUSTOMERS[rng.below(CUSTOMERS.len() as u64) as usize].to_owned();
    let mut items = Vec::new();
    for (sku, _, _) in SKUS {
        if rng.chance(60) {
            items.push(LineItem {
                sku: sku.into(),
                quantity: 1 + rng.below(4) as u32,
            });
        }
    }
    if items.is_empty() || rng.chance(5) {
        // Sometimes an order the order service must refuse (no lines, or a repeated SKU).
        items.extend(items.first().cloned());
    }
    let outcome = async {
        let create = Envelope::new(
            "saga",
            &OrderCreate {
                order_id,
                customer_id: customer_id.clone(),
                items: items.clone(),
            },
        );
        let reply = step(&pool, &OrderHandler, &mut rng, saga_id, create)
            .await
            .unwrap();
        if reply.message_type == "order.evt.rejected" {
            return Outcome::Rejected;
        }

        let reserve = Envelope::new(
            "saga",
            &InventoryReserve {
                order_id,
                items: items.clone(),
            },
        );
        if rng.chance(10) {
            // The reserve timed out and its compensation overtakes it.
            compensate(&pool, &mut rng, saga_id, order_id).await;
            let late = step(&pool, &InventoryHandler, &mut rng, saga_id, reserve)
                .await
                .unwrap();
            assert_eq!(late.message_type, "inventory.evt.reservation_failed");
            return Outcome::Compensated;
        }
        let reply = step(&pool, &InventoryHandler, &mut rng, saga_id, reserve)
            .await
            .unwrap();
        let Ok(reserved) = reply.decode::<InventoryReserved>() else {
            return compensate(&pool, &mut rng, saga_id, order_id).await;
        };

        let charge = Envelope::new(
            "saga",
            &PaymentCharge {
                order_id,
                customer_id: customer_id.clone(),
                amount_cents: reserved.total_cents,
            },
        );
        if rng.chance(10) {
            compensate(&pool, &mut rng, saga_id, order_id).await;
            let late = step(&pool, &PaymentHandler::default(), &mut rng, saga_id, charge)
                .await
                .unwrap();
            assert_eq!(late.message_type, "payment.evt.declined");
            return Outcome::Compensated;
        }
        let reply = step(&pool, &PaymentHandler::default(), &mut rng, saga_id, charge)
            .await
            .unwrap();
        let Ok(charged) = reply.decode::<PaymentCharged>() else {
            return compensate(&pool, &mut rng, saga_id, order_id).await;
        };

        let confirm = Envelope::new(
            "saga",
            &OrderConfirm {
                order_id,
                total_cents: charged.amount_cents,
            },
        );
        let confirmed = step(&pool, &OrderHandler, &mut rng, saga_id, confirm)
            .await
            .unwrap();
        assert_eq!(
            confirmed.decode::<OrderConfirmed>().unwrap().total_cents,
            reserved.total_cents
        );
        // Choreography: inventory hears the confirmation and sells the held stock.
        let sold = step(&pool, &InventoryHandler, &mut rng, saga_id, confirmed).await;
        assert!(sold.is_none());
        Outcome::Confirmed
    }
    .await;
    (order_id, items, outcome)
}

#[sqlx::test(migrations = "../../migrations")]
async fn concurrent_checkouts_conserve_stock_and_money(pool: PgPool) {
    for (sku, price_cents, available) in SKUS {
        let upsert = ProductUpsert {
            sku: sku.into(),
            name: format!("Product {sku}"),
            price_cents,
            available,
        };
        apply(&pool, &InventoryHandler, &send(&upsert))
            .await
            .unwrap();
    }
    for customer_id in CUSTOMERS {
        let set = AccountSetBalance {
            customer_id: customer_id.into(),
            balance_cents: BALANCE,
        };
        apply(&pool, &PaymentHandler::default(), &send(&set))
            .await
            .unwrap();
    }

    let tasks: Vec<_> = (0..ORDERS)
        .map(|n| tokio::spawn(checkout(pool.clone(), n)))
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap());
    }

    let mut counts: HashMap<Outcome, usize> = HashMap::new();
    let mut sold_units: HashMap<String, i64> = HashMap::new();
    for (order_id, items, outcome) in &outcomes {
        *counts.entry(*outcome).or_default() += 1;
        let order = get_order(&pool, *order_id).await.unwrap();
        let reservation = get_reservation(&pool, *order_id).await.unwrap();
        let charges = charges_for(&pool, *order_id).await.unwrap();
        let standing: Vec<_> = charges
            .iter()
            .filter(|c| c.status == ChargeStatus::Charged)
            .collect();
        match outcome {
            Outcome::Rejected => {
                assert_eq!(order, None);
                assert_eq!(reservation, None);
                assert!(charges.is_empty());
            }
            Outcome::Compensated => {
                let status = order.map(|o| o.status);
                assert!(
                    matches!(status, None | Some(OrderStatus::Cancelled)),
                    "{status:?}"
                );
                assert_eq!(
                    reservation.unwrap().status,
                    ReservationStatus::Released,
                    "no stock stays held"
                );
                assert!(
                    standing.is_empty(),
                    "a compensated order has no charge left"
                );
            }
            Outcome::Confirmed => {
                let order = order.unwrap();
                let reservation = reservation.unwrap();
                assert_eq!(order.status, OrderStatus::Confirmed);
                assert_eq!(reservation.status, ReservationStatus::Committed);
                assert_eq!(
                    standing.len(),
                    1,
                    "a confirmed order has exactly one charge"
                );
                assert_eq!(order.total_cents, Some(reservation.total_cents));
                assert_eq!(standing[0].amount_cents, reservation.total_cents);
                for line in items {
                    *sold_units.entry(line.sku.clone()).or_default() += i64::from(line.quantity);
                }
            }
        }
    }
    println!("{} orders: {counts:?}", outcomes.len());
    assert!(
        counts.get(&Outcome::Confirmed).copied().unwrap_or(0) > 0,
        "{counts:?}"
    );
    assert!(
        counts.get(&Outcome::Compensated).copied().unwrap_or(0) > 0,
        "{counts:?}"
    );

    // Stock: initial available = available + reserved + sold, nothing held once every saga
    // has finished, nothing negative, and sold is exactly what confirmed orders bought.
    for (sku, _, initial) in SKUS {
        let (available, reserved, sold): (i64, i64, i64) = sqlx::query_as(
            "SELECT available, reserved, sold FROM inventory.products WHERE sku = $1",
        )
        .bind(sku)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(available + reserved + sold, initial, "{sku}");
        assert_eq!(reserved, 0, "{sku}");
        assert_eq!(sold, sold_units.get(sku).copied().unwrap_or(0), "{sku}");
    }
    let stock = stock_totals(&pool).await.unwrap();
    assert_eq!(
        stock.available + stock.reserved + stock.sold,
        SKUS.iter().map(|(_, _, a)| a).sum::<i64>()
    );

    // Money: initial balance = balance + standing charges, per customer and in total.
    let money = money_totals(&pool).await.unwrap();
    assert_eq!(
        money.balance_cents + money.charged_cents,
        BALANCE * CUSTOMERS.len() as i64,
        "{money:?}"
    );
    let per_customer: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT a.customer_id, a.balance_cents, \
                COALESCE(SUM(c.amount_cents) FILTER (WHERE c.status = 'charged'), 0)::bigint \
         FROM payments.accounts a LEFT JOIN payments.charges c USING (customer_id) \
         GROUP BY a.customer_id, a.balance_cents",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(per_customer.len(), CUSTOMERS.len());
    for (customer_id, balance, standing) in per_customer {
        assert_eq!(balance + standing, BALANCE, "{customer_id}");
    }
}
