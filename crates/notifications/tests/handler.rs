//! The notification handler against real PostgreSQL (a fresh migrated database per test),
//! driven through `store::Transactional` as the consumer drives it, so the inbox and outbox
//! take part.

#![allow(clippy::unwrap_used)] // helpers of a test panic to fail it

mod support;

use bus::HandlerError;
use contracts::Schemas;
use contracts::messages::NotificationCreated;
use notifications::NotificationHandler;
use notifications::queries::{NotificationView, list};
use notifications::render::Kind;
use sqlx::PgPool;
use store::TxHandler;
use support::{
    cancelled, confirmed, count, deliver_event, image_completed, image_failed, notifications,
    outbox,
};
use uuid::Uuid;

#[sqlx::test(migrations = "../../migrations")]
async fn each_event_kind_stores_one_notification_and_announces_it(pool: PgPool) {
    let events = [
        confirmed(Uuid::now_v7(), "c-1"),
        cancelled(Uuid::now_v7(), Some("c-1")),
        image_completed(Uuid::now_v7(), Some("c-1")),
        image_failed(Uuid::now_v7(), Some("c-1")),
    ];
    for event in &events {
        deliver_event(&pool, event.clone()).await.unwrap();
    }

    let created = outbox(&pool).await;
    assert_eq!(created.len(), events.len());
    let stored = list(&pool, "c-1", 10).await.unwrap();
    let kinds = [
        Kind::OrderConfirmed,
        Kind::OrderCancelled,
        Kind::ImageCompleted,
        Kind::ImageFailed,
    ];
    for ((event, reply), kind) in events.iter().zip(&created).zip(kinds) {
        Schemas::embedded()
            .validate(&reply.message_type, &reply.payload)
            .unwrap();
        assert_eq!(reply.causation_id, Some(event.message_id));
        assert_eq!(reply.correlation_id, event.correlation_id);
        assert_eq!(reply.producer, notifications::PRODUCER);
        let body: NotificationCreated = reply.decode().unwrap();
        assert_eq!(body.source_event, event.message_id);
        assert_eq!(body.customer_id, "c-1");
        assert_eq!(body.kind, kind.as_str());
        let view = stored
            .iter()
            .find(|v| v.notification_id == body.notification_id)
            .unwrap();
        assert_eq!(view.kind, kind);
        assert_eq!(view.message, body.message);
        assert_eq!(view.delivered_at, None);
    }
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_redelivered_event_creates_one_notification(pool: PgPool) {
    let event = confirmed(Uuid::now_v7(), "c-1");

    deliver_event(&pool, event.clone()).await.unwrap();
    deliver_event(&pool, event.clone()).await.unwrap();
    deliver_event(&pool, event.next_attempt()).await.unwrap();

    assert_eq!(notifications(&pool).await, 1);
    assert_eq!(outbox(&pool).await.len(), 1);
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_redelivery_after_the_inbox_forgot_the_event_creates_no_second_notification(
    pool: PgPool,
) {
    let event = confirmed(Uuid::now_v7(), "c-1");
    deliver_event(&pool, event.clone()).await.unwrap();
    // Pruned past the retention window, then redriven from the parking queue.
    sqlx::query("DELETE FROM notifications.inbox")
        .execute(&pool)
        .await
        .unwrap();

    deliver_event(&pool, event).await.unwrap();

    assert_eq!(notifications(&pool).await, 1);
    assert_eq!(outbox(&pool).await.len(), 1);
}

#[sqlx::test(migrations = "../../migrations")]
async fn the_same_fact_under_a_new_message_id_creates_one_notification(pool: PgPool) {
    // What the order service does when the orchestrator re-sends `order.cmd.confirm`: it
    // answers with another `order.evt.confirmed` for the same order, under a new message id.
    let order_id = Uuid::now_v7();
    let first = confirmed(order_id, "c-1");
    let again = confirmed(order_id, "c-1");
    assert_ne!(first.message_id, again.message_id);

    deliver_event(&pool, first.clone()).await.unwrap();
    deliver_event(&pool, again).await.unwrap();
    // A different fact about the same order is another notification.
    deliver_event(&pool, cancelled(order_id, Some("c-1")))
        .await
        .unwrap();

    let created = outbox(&pool).await;
    assert_eq!(notifications(&pool).await, 2);
    assert_eq!(created.len(), 2);
    let body: NotificationCreated = created[0].decode().unwrap();
    assert_eq!(
        body.source_event, first.message_id,
        "the first event counts"
    );
}

#[sqlx::test(migrations = "../../migrations")]
async fn concurrent_events_of_one_fact_create_one_notification(pool: PgPool) {
    let order_id = Uuid::now_v7();
    let events: Vec<_> = (0..4).map(|_| confirmed(order_id, "c-1")).collect();

    let handled = events.into_iter().map(|event| {
        let pool = pool.clone();
        tokio::spawn(async move { deliver_event(&pool, event).await })
    });
    for task in handled.collect::<Vec<_>>() {
        task.await.unwrap().unwrap();
    }

    assert_eq!(notifications(&pool).await, 1);
    assert_eq!(outbox(&pool).await.len(), 1);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM notifications.inbox").await,
        4,
        "each event was taken"
    );
}

#[sqlx::test(migrations = "../../migrations")]
async fn events_without_a_customer_create_nothing_but_are_taken(pool: PgPool) {
    deliver_event(&pool, cancelled(Uuid::now_v7(), None))
        .await
        .unwrap();
    deliver_event(&pool, image_completed(Uuid::now_v7(), None))
        .await
        .unwrap();
    deliver_event(&pool, image_failed(Uuid::now_v7(), None))
        .await
        .unwrap();

    assert_eq!(notifications(&pool).await, 0);
    assert_eq!(outbox(&pool).await.len(), 0);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM notifications.inbox").await,
        3
    );
}

#[sqlx::test(migrations = "../../migrations")]
async fn an_unhandled_or_undecodable_event_is_parked_and_leaves_nothing(pool: PgPool) {
    let other = support::event(
        "order",
        &contracts::messages::OrderRejected {
            order_id: Uuid::now_v7(),
            reason: "no".into(),
        },
    );
    let broken = contracts::Envelope::raw(
        "order",
        "order.evt.confirmed",
        serde_json::json!({"order_id": Uuid::now_v7()}),
    );

    for message in [other, broken] {
        match deliver_event(&pool, message).await {
            Err(HandlerError::Permanent(reason)) => assert!(!reason.is_empty()),
            other => panic!("expected a permanent failure, got {other:?}"),
        }
    }

    assert_eq!(notifications(&pool).await, 0);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM notifications.inbox").await,
        0,
        "a parked message can be redriven"
    );
}

#[sqlx::test(migrations = "../../migrations")]
async fn the_handler_returns_the_created_event_only_when_it_stored_one(pool: PgPool) {
    let event = image_failed(Uuid::now_v7(), Some("c-9"));

    let mut tx = pool.begin().await.unwrap();
    let first = NotificationHandler.apply(&mut tx, &event).await.unwrap();
    let again = NotificationHandler.apply(&mut tx, &event).await.unwrap();
    tx.commit().await.unwrap();

    assert_eq!(first.len(), 1);
    assert!(again.is_empty());
    Schemas::embedded()
        .validate(&first[0].message_type, &first[0].payload)
        .unwrap();
    let body: NotificationCreated = first[0].decode().unwrap();
    assert!(body.message.starts_with("Your image "), "{}", body.message);
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_customers_notifications_list_newest_first_up_to_the_limit(pool: PgPool) {
    let mut orders = Vec::new();
    for _ in 0..5 {
        let order_id = Uuid::now_v7();
        orders.push(order_id);
        deliver_event(&pool, confirmed(order_id, "c-1"))
            .await
            .unwrap();
    }
    deliver_event(&pool, confirmed(Uuid::now_v7(), "c-2"))
        .await
        .unwrap();

    let all = list(&pool, "c-1", 100).await.unwrap();
    let three = list(&pool, "c-1", 3).await.unwrap();

    assert_eq!(all.len(), 5);
    assert!(all.iter().all(|v| v.customer_id == "c-1"));
    let shown: Vec<String> = all.iter().map(|v| v.message.clone()).collect();
    let expected: Vec<String> = orders
        .iter()
        .rev()
        .map(|id| {
            format!(
                "Your order {} is confirmed: total $25.00",
                notifications::render::short_id(*id)
            )
        })
        .collect();
    assert_eq!(shown, expected, "newest first");
    assert_eq!(three, all[..3].to_vec());
    assert_eq!(
        list(&pool, "nobody", 10).await.unwrap(),
        Vec::<NotificationView>::new()
    );
}

/// A group commit's one insert skips what one insert per event, in order, would skip: the same
/// fact twice under two message ids, a fact stored before, an event without a customer.
#[sqlx::test(migrations = "../../migrations")]
async fn a_group_stores_what_one_event_at_a_time_would(pool: PgPool) {
    let (stored_before, fresh) = (Uuid::now_v7(), Uuid::now_v7());
    let mut tx = pool.begin().await.unwrap();
    NotificationHandler
        .apply(&mut tx, &confirmed(stored_before, "c-1"))
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let group = [
        confirmed(fresh, "c-1"),
        cancelled(Uuid::now_v7(), None),
        confirmed(stored_before, "c-1"),
        confirmed(fresh, "c-1"),
        cancelled(fresh, Some("c-2")),
    ];
    let messages: Vec<&contracts::Envelope> = group.iter().collect();
    let mut tx = pool.begin().await.unwrap();
    let created = NotificationHandler
        .apply_all(&mut tx, &messages)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let sources: Vec<Uuid> = created
        .iter()
        .map(|m| m.decode::<NotificationCreated>().unwrap().source_event)
        .collect();
    assert_eq!(
        sources,
        [group[0].message_id, group[4].message_id],
        "the first event of each new fact, in order"
    );
    for (created, cause) in created.iter().zip([&group[0], &group[4]]) {
        assert_eq!(created.causation_id, Some(cause.message_id));
    }
    assert_eq!(notifications(&pool).await, 3);
}
