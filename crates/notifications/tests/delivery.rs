//! Delivering committed notifications: exactly once per notification across concurrent
//! deliverers, never from a transaction that did not commit, and with back-off on failure.

#![allow(clippy::unwrap_used)] // helpers of a test panic to fail it

mod support;

use std::collections::HashSet;
use std::time::Duration;

use notifications::delivery::{Batch, Deliverer, DeliveryError, DeliverySettings};
use notifications::{NotificationHandler, queries};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use store::TxHandler;
use support::{PATIENCE, Recording, confirmed, count, deliver_event, undelivered};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Stores `n` notifications, one event (and transaction) each.
async fn store(pool: &PgPool, n: usize) {
    for i in 0..n {
        deliver_event(pool, confirmed(Uuid::now_v7(), &format!("c-{i}")))
            .await
            .unwrap();
    }
}

/// Seconds until a row is due again.
async fn due_in(pool: &PgPool) -> f64 {
    sqlx::query_scalar(
        "SELECT extract(epoch FROM available_at - now())::float8 FROM notifications.notifications",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn failure(pool: &PgPool) -> (i32, Option<String>, bool) {
    sqlx::query_as(
        "SELECT attempts, last_error, available_at = 'infinity' FROM notifications.notifications",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// As if the back-off had passed.
async fn make_due(pool: &PgPool) {
    sqlx::query("UPDATE notifications.notifications SET available_at = now()")
        .execute(pool)
        .await
        .unwrap();
}

#[sqlx::test(migrations = "../../migrations")]
async fn two_deliverers_deliver_200_notifications_exactly_once(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let pool = options
        .max_connections(10)
        .connect_with(connect)
        .await
        .unwrap();
    let settings = DeliverySettings {
        batch_size: 7,
        // Long, so the rows stored after start are found through NOTIFY, not by polling.
        poll_interval: Duration::from_secs(3600),
        ..DeliverySettings::default()
    };
    let channel = Recording::new();
    let shutdown = CancellationToken::new();
    store(&pool, 100).await;

    let deliverers: Vec<_> = ["first", "second"]
        .into_iter()
        .map(|label| {
            let deliverer = Deliverer::new(pool.clone(), channel.labelled(label), settings.clone());
            tokio::spawn(deliverer.run(shutdown.clone()))
        })
        .collect();
    store(&pool, 100).await;
    channel.record.until(200).await;
    shutdown.cancel();
    for deliverer in deliverers {
        testkit::within(PATIENCE, "the deliverer to stop", deliverer)
            .await
            .unwrap()
            .unwrap();
    }

    let ids = channel.record.ids();
    assert_eq!(ids.len(), 200, "no notification was handed over twice");
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 200);
    assert_eq!(undelivered(&pool).await, 0);
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM notifications.notifications \
             WHERE channel = 'recording' AND attempts = 0"
        )
        .await,
        200
    );
    let view = queries::list(&pool, "c-7", 10).await.unwrap();
    assert!(view[0].delivered_at.is_some());
}

#[sqlx::test(migrations = "../../migrations")]
async fn nothing_is_delivered_from_a_transaction_that_did_not_commit(pool: PgPool) {
    let channel = Recording::new();
    let deliverer = Deliverer::new(pool.clone(), channel.clone(), DeliverySettings::default());

    let mut rolled_back = pool.begin().await.unwrap();
    let created = NotificationHandler
        .apply(&mut rolled_back, &confirmed(Uuid::now_v7(), "c-1"))
        .await
        .unwrap();
    assert_eq!(created.len(), 1);
    rolled_back.rollback().await.unwrap();

    let mut pending = pool.begin().await.unwrap();
    NotificationHandler
        .apply(&mut pending, &confirmed(Uuid::now_v7(), "c-2"))
        .await
        .unwrap();
    assert_eq!(deliverer.deliver_batch().await.unwrap(), Batch::default());
    pending.commit().await.unwrap();
    let batch = deliverer.deliver_batch().await.unwrap();

    assert_eq!(batch.delivered, 1);
    assert_eq!(channel.record.len(), 1);
    assert_eq!(undelivered(&pool).await, 0);
    assert_eq!(deliverer.deliver_batch().await.unwrap(), Batch::default());
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_failing_channel_records_the_attempts_and_the_row_is_retried_later(pool: PgPool) {
    store(&pool, 1).await;
    let channel = Recording::failing(2, DeliveryError::Transient("mailbox busy".into()));
    let deliverer = Deliverer::new(pool.clone(), channel.clone(), DeliverySettings::default());

    let first = deliverer.deliver_batch().await.unwrap();
    let (attempts, error, parked) = failure(&pool).await;
    let wait = due_in(&pool).await;
    assert_eq!(
        first,
        Batch {
            claimed: 1,
            delivered: 0,
            failed: 1
        }
    );
    assert_eq!(attempts, 1);
    assert!(error.unwrap().contains("mailbox busy"));
    assert!(!parked);
    assert!((1.0..=2.5).contains(&wait), "first back-off {wait}s");
    assert_eq!(
        deliverer.deliver_batch().await.unwrap(),
        Batch::default(),
        "not due yet"
    );

    make_due(&pool).await;
    deliverer.deliver_batch().await.unwrap();
    let wait = due_in(&pool).await;
    assert_eq!(failure(&pool).await.0, 2);
    assert!((3.0..=4.5).contains(&wait), "second back-off {wait}s");

    make_due(&pool).await;
    let last = deliverer.deliver_batch().await.unwrap();
    assert_eq!(last.delivered, 1);
    assert_eq!(channel.record.len(), 1);
    assert_eq!(undelivered(&pool).await, 0);
    assert_eq!(failure(&pool).await.0, 2, "attempts count the failures");
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_permanent_failure_parks_the_row_at_once(pool: PgPool) {
    store(&pool, 1).await;
    let channel = Recording::failing(1, DeliveryError::Permanent("no such mailbox".into()));
    let deliverer = Deliverer::new(pool.clone(), channel.clone(), DeliverySettings::default());

    assert_eq!(deliverer.deliver_batch().await.unwrap().failed, 1);

    let (attempts, error, parked) = failure(&pool).await;
    assert_eq!(attempts, 1);
    assert!(error.unwrap().contains("no such mailbox"));
    assert!(parked);
    assert_eq!(deliverer.deliver_batch().await.unwrap(), Batch::default());
    assert_eq!(channel.record.len(), 0);
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_row_is_parked_after_its_last_allowed_attempt(pool: PgPool) {
    store(&pool, 1).await;
    let channel = Recording::failing(u32::MAX, DeliveryError::Transient("down".into()));
    let settings = DeliverySettings {
        max_attempts: 3,
        retry_base: Duration::ZERO,
        ..DeliverySettings::default()
    };
    let deliverer = Deliverer::new(pool.clone(), channel, settings);

    for _ in 0..3 {
        assert_eq!(deliverer.deliver_batch().await.unwrap().failed, 1);
    }

    let (attempts, _, parked) = failure(&pool).await;
    assert_eq!(attempts, 3);
    assert!(parked);
    assert_eq!(deliverer.deliver_batch().await.unwrap(), Batch::default());
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_channel_that_does_not_answer_counts_as_a_transient_failure(pool: PgPool) {
    #[derive(Debug)]
    struct Silent;
    impl notifications::Channel for Silent {
        fn name(&self) -> &'static str {
            "silent"
        }
        async fn deliver(
            &self,
            _: &notifications::delivery::Notification,
        ) -> Result<(), DeliveryError> {
            std::future::pending().await
        }
    }
    store(&pool, 1).await;
    let settings = DeliverySettings {
        delivery_timeout: Duration::from_millis(50),
        ..DeliverySettings::default()
    };
    let deliverer = Deliverer::new(pool.clone(), Silent, settings);

    assert_eq!(deliverer.deliver_batch().await.unwrap().failed, 1);

    let (attempts, error, parked) = failure(&pool).await;
    assert_eq!(attempts, 1);
    assert!(error.unwrap().contains("no answer within"));
    assert!(!parked);
}
