//! The order service's handler against real PostgreSQL (a fresh migrated database per test),
//! each message delivered through its `store::Transactional` (inbox, one transaction, outbox)
//! as the consumer runs it.

#![allow(clippy::unwrap_used)] // helpers of a test panic to fail it

use contracts::Envelope;
use contracts::messages::{
    LineItem, OrderCancel, OrderCancelled, OrderConfirm, OrderConfirmed, OrderCreate, OrderCreated,
    OrderRejected,
};
use order::OrderHandler;
use order::domain::OrderStatus;
use order::queries::{OrderView, get_order};
use serde_json::json;
use sqlx::PgPool;
use testkit::participant::{Service, apply, ask, only, parked, send};
use uuid::Uuid;

/// The order service as `order::handler` builds it.
fn orders(pool: &PgPool) -> Service<OrderHandler> {
    Service::new(pool, order::SCHEMA, order::handler(pool.clone()))
}

fn line(sku: &str, quantity: u32) -> LineItem {
    LineItem {
        sku: sku.into(),
        quantity,
    }
}

fn create(order_id: Uuid) -> OrderCreate {
    OrderCreate {
        order_id,
        customer_id: "c-1".into(),
        items: vec![line("SKU-1", 2), line("SKU-2", 1)],
    }
}

fn cancel(order_id: Uuid, reason: &str) -> OrderCancel {
    OrderCancel {
        order_id,
        reason: reason.into(),
    }
}

async fn rows(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM orders.orders")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_new_order_is_pending_and_a_resent_create_answers_the_same(pool: PgPool) {
    let order_id = Uuid::now_v7();
    let command = create(order_id);

    let first: OrderCreated = ask(&orders(&pool), &command).await;
    let again: OrderCreated = ask(&orders(&pool), &command).await;

    let expected = OrderCreated {
        order_id,
        customer_id: "c-1".into(),
        items: command.items.clone(),
    };
    assert_eq!(first, expected);
    assert_eq!(again, expected);
    assert_eq!(rows(&pool).await, 1);
    assert_eq!(
        get_order(&pool, order_id).await.unwrap(),
        Some(OrderView {
            order_id,
            customer_id: "c-1".into(),
            status: OrderStatus::Pending,
            total_cents: None,
            items: command.items,
        })
    );
    assert_eq!(get_order(&pool, Uuid::now_v7()).await.unwrap(), None);
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_reply_carries_the_saga_id_and_its_cause(pool: PgPool) {
    let saga_id = Uuid::now_v7();
    let command = Envelope::new("saga", &create(Uuid::now_v7()))
        .with_correlation(saga_id)
        .with_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");

    let replies = apply(&orders(&pool), &command).await.unwrap();

    assert_eq!(replies[0].correlation_id, Some(saga_id));
    assert_eq!(replies[0].causation_id, Some(command.message_id));
    assert_eq!(replies[0].traceparent, command.traceparent);
    assert_eq!(replies[0].producer, order::PRODUCER);
}

#[sqlx::test(migrations = "../../migrations")]
async fn an_invalid_order_is_rejected_and_nothing_is_stored(pool: PgPool) {
    let order_id = Uuid::now_v7();
    for (items, reason) in [
        (
            vec![line("SKU-1", 1), line("SKU-1", 2)],
            "SKU-1 appears on more than one line",
        ),
        (
            vec![line("SKU-1", 1001)],
            "SKU-1: quantity 1001 is outside 1 to 1000",
        ),
        (vec![], "an order holds 1 to 100 lines, not 0"),
    ] {
        let command = OrderCreate {
            items,
            ..create(order_id)
        };
        let rejected: OrderRejected = ask(&orders(&pool), &command).await;
        assert_eq!(rejected.reason, reason);
    }
    assert_eq!(rows(&pool).await, 0);
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_cancel_before_create_leaves_a_tombstone_and_the_late_create_is_rejected(pool: PgPool) {
    let order_id = Uuid::now_v7();

    let cancelled: OrderCancelled = ask(&orders(&pool), &cancel(order_id, "saga timed out")).await;
    let late: OrderRejected = ask(&orders(&pool), &create(order_id)).await;
    let again: OrderCancelled = ask(&orders(&pool), &cancel(order_id, "again")).await;

    assert_eq!(
        cancelled,
        OrderCancelled {
            order_id,
            customer_id: None,
            reason: "saga timed out".into()
        }
    );
    assert_eq!(late.reason, "order was cancelled");
    assert_eq!(
        again, cancelled,
        "a re-sent cancel answers as the first did"
    );
    assert_eq!(rows(&pool).await, 1);
    assert_eq!(
        get_order(&pool, order_id).await.unwrap(),
        None,
        "a tombstone is not an order"
    );
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_cancelled_order_stays_cancelled(pool: PgPool) {
    let order_id = Uuid::now_v7();
    let _: OrderCreated = ask(&orders(&pool), &create(order_id)).await;

    let cancelled: OrderCancelled = ask(&orders(&pool), &cancel(order_id, "out of stock")).await;
    let again: OrderCancelled = ask(&orders(&pool), &cancel(order_id, "again")).await;
    let recreated: OrderRejected = ask(&orders(&pool), &create(order_id)).await;
    let confirm = send(&OrderConfirm {
        order_id,
        total_cents: 100,
    });
    let reason = parked(&orders(&pool), &confirm).await;

    assert_eq!(
        cancelled,
        OrderCancelled {
            order_id,
            customer_id: Some("c-1".into()),
            reason: "out of stock".into()
        }
    );
    assert_eq!(again, cancelled);
    assert_eq!(recreated.reason, "order was cancelled");
    assert!(
        reason.contains("cannot confirm a cancelled order"),
        "{reason}"
    );
    let view = get_order(&pool, order_id).await.unwrap().unwrap();
    assert_eq!(view.status, OrderStatus::Cancelled);
    assert_eq!(view.total_cents, None);
}

#[sqlx::test(migrations = "../../migrations")]
async fn confirm_after_confirm_answers_with_the_first_total(pool: PgPool) {
    let order_id = Uuid::now_v7();
    let _: OrderCreated = ask(&orders(&pool), &create(order_id)).await;

    let confirm = |total_cents| OrderConfirm {
        order_id,
        total_cents,
    };
    let first: OrderConfirmed = ask(&orders(&pool), &confirm(2500)).await;
    let again: OrderConfirmed = ask(&orders(&pool), &confirm(9999)).await;
    let created_again: OrderCreated = ask(&orders(&pool), &create(order_id)).await;

    let expected = OrderConfirmed {
        order_id,
        customer_id: "c-1".into(),
        total_cents: 2500,
    };
    assert_eq!(first, expected);
    assert_eq!(again, expected);
    assert_eq!(created_again.order_id, order_id);
    let view = get_order(&pool, order_id).await.unwrap().unwrap();
    assert_eq!(view.status, OrderStatus::Confirmed);
    assert_eq!(view.total_cents, Some(2500));
}

#[sqlx::test(migrations = "../../migrations")]
async fn cancelling_a_confirmed_order_is_parked_and_changes_nothing(pool: PgPool) {
    let order_id = Uuid::now_v7();
    let _: OrderCreated = ask(&orders(&pool), &create(order_id)).await;
    let _: OrderConfirmed = ask(
        &orders(&pool),
        &OrderConfirm {
            order_id,
            total_cents: 2500,
        },
    )
    .await;

    let reason = parked(&orders(&pool), &send(&cancel(order_id, "late"))).await;

    assert!(
        reason.contains("cannot cancel a confirmed order"),
        "{reason}"
    );
    let view = get_order(&pool, order_id).await.unwrap().unwrap();
    assert_eq!(view.status, OrderStatus::Confirmed);
}

#[sqlx::test(migrations = "../../migrations")]
async fn confirming_an_order_that_does_not_exist_is_parked(pool: PgPool) {
    let confirm = send(&OrderConfirm {
        order_id: Uuid::now_v7(),
        total_cents: 100,
    });
    let reason = parked(&orders(&pool), &confirm).await;
    assert!(reason.contains("does not exist"), "{reason}");
    assert_eq!(rows(&pool).await, 0);
}

#[sqlx::test(migrations = "../../migrations")]
async fn other_services_messages_and_undecodable_payloads_are_parked(pool: PgPool) {
    let foreign = Envelope::raw(
        "test",
        "payment.cmd.refund",
        json!({"order_id": Uuid::now_v7()}),
    );
    let garbled = Envelope::raw("test", "order.cmd.create", json!({"order_id": "nope"}));

    let foreign_reason = parked(&orders(&pool), &foreign).await;
    let garbled_reason = parked(&orders(&pool), &garbled).await;

    assert!(
        foreign_reason.contains("payment.cmd.refund"),
        "{foreign_reason}"
    );
    assert!(
        garbled_reason.contains("does not decode"),
        "{garbled_reason}"
    );
}

#[sqlx::test(migrations = "../../migrations")]
async fn concurrent_creates_and_a_cancel_of_one_order_agree(pool: PgPool) {
    const ORDERS: usize = 30;
    const CREATES: usize = 3;
    let orders = orders(&pool);
    let mut tasks = Vec::new();
    let mut order_ids = Vec::new();
    for _ in 0..ORDERS {
        let order_id = Uuid::now_v7();
        order_ids.push(order_id);
        for n in 0..=CREATES {
            let orders = orders.clone();
            tasks.push(tokio::spawn(async move {
                let message = if n == 0 {
                    send(&cancel(order_id, "raced"))
                } else {
                    send(&create(order_id))
                };
                apply(&orders, &message).await.unwrap()
            }));
        }
    }
    let mut replies = Vec::new();
    for task in tasks {
        replies.push(task.await.unwrap());
    }

    for (order_id, replies) in order_ids.iter().zip(replies.chunks(CREATES + 1)) {
        let cancelled: OrderCancelled = only(&replies[0]);
        let mut created = 0;
        for reply in &replies[1..] {
            assert_eq!(reply.len(), 1);
            match reply[0].decode::<OrderCreated>() {
                Ok(_) => created += 1,
                Err(_) => assert_eq!(only::<OrderRejected>(reply).reason, "order was cancelled"),
            }
        }
        let status: String =
            sqlx::query_scalar("SELECT status FROM orders.orders WHERE order_id = $1")
                .bind(order_id)
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(status, "cancelled", "the cancel wins whatever the order");
        if cancelled.customer_id.is_none() {
            assert_eq!(created, 0, "a create after the tombstone must be rejected");
        } else {
            assert!(
                created >= 1,
                "the cancel found an order, so a create made it"
            );
        }
    }
    assert_eq!(rows(&pool).await, ORDERS as i64);
}
