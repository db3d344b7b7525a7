//! The outbox, relay and inbox against real PostgreSQL (a fresh migrated database per test)
//! and the real broker (vhost `warren_test`).

#![allow(clippy::unwrap_used)] // helpers of a test panic to fail it

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bus::{ConsumerQueue, Handler, HandlerError, RetryPolicy};
use contracts::Envelope;
use lapin::ExchangeKind;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use serde_json::json;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use store::{Inbox, Outbox, Relay, RelaySettings, StoreError};
use testkit::until;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const PATIENCE: Duration = Duration::from_secs(120);

fn ping(message_type: &str, n: usize) -> Envelope {
    Envelope::raw("test", message_type, json!({"n": n}))
}

#[derive(sqlx::FromRow, Debug)]
struct RowState {
    attempts: i32,
    last_error: Option<String>,
}

/// The outbox row of a message; `None` once it was published (and so deleted).
async fn row_state(pool: &PgPool, id: Uuid) -> Option<RowState> {
    sqlx::query_as("SELECT attempts, last_error FROM orders.outbox WHERE message_id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrations = "../../migrations")]
async fn rows_the_broker_refuses_stay_and_confirmed_rows_go(pool: PgPool) {
    let name = testkit::unique();
    let bus = testkit::bus(&name).await;
    let channel = bus.channel().await.unwrap();
    // An exchange of this test's own, so no catch-all binding makes every key routable.
    let exchange = format!("{name}.x");
    channel
        .exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let (ok, full, lost) = (
        format!("{name}.evt.ok"),
        format!("{name}.evt.full"),
        format!("{name}.evt.lost"),
    );
    let mut refuse_everything = FieldTable::default();
    refuse_everything.insert("x-max-length".into(), AMQPValue::LongLongInt(0));
    refuse_everything.insert(
        "x-overflow".into(),
        AMQPValue::LongString(LongString::from(b"reject-publish".to_vec())),
    );
    for (queue, key, arguments) in [
        (format!("{name}.ok"), &ok, FieldTable::default()),
        (format!("{name}.full"), &full, refuse_everything),
    ] {
        let options = QueueDeclareOptions::default();
        channel
            .queue_declare(queue.as_str().into(), options, arguments)
            .await
            .unwrap();
        channel
            .queue_bind(
                queue.as_str().into(),
                exchange.as_str().into(),
                key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    }

    let outbox = Outbox::new("orders");
    let messages = [ping(&ok, 1), ping(&full, 2), ping(&lost, 3)];
    let mut tx = pool.begin().await.unwrap();
    outbox
        .write_to(&mut tx, &exchange, &messages)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let relay = Relay::new(
        "orders",
        pool.clone(),
        bus.publisher().await.unwrap(),
        RelaySettings::default(),
    );
    assert_eq!(relay.publish_batch().await.unwrap(), 3);

    let ok_row = row_state(&pool, messages[0].message_id).await;
    assert!(ok_row.is_none(), "published rows are deleted: {ok_row:?}");
    let nacked = row_state(&pool, messages[1].message_id).await.unwrap();
    assert_eq!(nacked.attempts, 1);
    assert!(nacked.last_error.unwrap().contains("nacked"));
    let unroutable = row_state(&pool, messages[2].message_id).await.unwrap();
    assert!(unroutable.last_error.unwrap().contains("unroutable"));

    // Refused rows back off: an immediate second round claims nothing.
    assert_eq!(relay.publish_batch().await.unwrap(), 0);

    for queue in [format!("{name}.ok"), format!("{name}.full")] {
        channel
            .queue_delete(queue.as_str().into(), Default::default())
            .await
            .unwrap();
    }
    channel
        .exchange_delete(exchange.as_str().into(), Default::default())
        .await
        .unwrap();
}

/// Applies each message once through the inbox, but reports a failure after committing for
/// the first `fail_first` deliveries, as if the ack had been lost, so the message comes back.
struct CountingHandler {
    pool: PgPool,
    inbox: Inbox,
    deliveries: AtomicUsize,
    fail_first: usize,
    changed: Notify,
}

impl Handler for CountingHandler {
    async fn handle(&self, message: Envelope) -> Result<(), HandlerError> {
        let mut tx = self.pool.begin().await.map_err(StoreError::from)?;
        if self
            .inbox
            .claim(&mut tx, "test-counter", message.message_id)
            .await
            .map_err(StoreError::from)?
        {
            sqlx::query("UPDATE test_effects SET applied = applied + 1")
                .execute(&mut *tx)
                .await
                .map_err(StoreError::from)?;
        }
        tx.commit().await.map_err(StoreError::from)?;
        let delivery = self.deliveries.fetch_add(1, Ordering::SeqCst) + 1;
        self.changed.notify_waiters();
        if delivery <= self.fail_first {
            Err(HandlerError::Transient("ack lost after commit".into()))
        } else {
            Ok(())
        }
    }
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_message_delivered_five_times_changes_the_database_once(pool: PgPool) {
    sqlx::query("CREATE TABLE test_effects (applied integer NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO test_effects VALUES (0)")
        .execute(&pool)
        .await
        .unwrap();

    let name = testkit::unique();
    let message_type = format!("{name}.evt.pay");
    let bus = testkit::bus(&name).await;
    let retry = RetryPolicy::new([Duration::from_millis(20); 4]);
    let queue = ConsumerQueue::new(format!("{name}.q"), &[&format!("{name}.#")]).with_retry(retry);
    let topology = testkit::declare(&bus, vec![queue.clone()]).await;
    let handler = Arc::new(CountingHandler {
        pool: pool.clone(),
        inbox: Inbox::new("orders"),
        deliveries: AtomicUsize::new(0),
        fail_first: 2,
        changed: Notify::new(),
    });
    let (stop, consumer) = testkit::spawn_consumer(
        &bus,
        queue,
        testkit::schemas(&[&message_type]),
        handler.clone(),
    );

    // Three deliveries through the retry tiers (two lost acks), plus two duplicate publishes
    // of the same message id, as a publisher re-sending after a recovery would.
    let publisher = bus.publisher().await.unwrap();
    let message = ping(&message_type, 1);
    publisher.publish(&message).await.unwrap();
    until(&handler.changed, PATIENCE, "three deliveries", || {
        handler.deliveries.load(Ordering::SeqCst) >= 3
    })
    .await;
    publisher.publish(&message).await.unwrap();
    publisher.publish(&message).await.unwrap();
    until(&handler.changed, PATIENCE, "five deliveries", || {
        handler.deliveries.load(Ordering::SeqCst) >= 5
    })
    .await;

    let applied: i32 = sqlx::query_scalar("SELECT applied FROM test_effects")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(handler.deliveries.load(Ordering::SeqCst), 5);
    assert_eq!(applied, 1, "five deliveries, one effect");

    stop.cancel();
    consumer.await.unwrap().unwrap();
    topology
        .delete_queues(&bus.channel().await.unwrap())
        .await
        .unwrap();
}

#[sqlx::test(migrations = "../../migrations")]
async fn concurrent_relays_publish_every_committed_row(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    const WRITERS: usize = 20;
    const TRANSACTIONS: usize = 50;
    const ROWS: usize = 10;
    const RELAYS: usize = 4;
    // A pool of its own: the relays' listeners and batches and the writers all hold connections.
    let pool = PgPoolOptions::new()
        .max_connections(30)
        .connect_with(connect)
        .await
        .unwrap();

    let name = testkit::unique();
    let message_type = format!("{name}.evt.row");
    let bus = testkit::bus(&name).await;
    let queue = ConsumerQueue::new(format!("{name}.q"), &[&format!("{name}.#")]);
    let topology = testkit::declare(&bus, vec![queue.clone()]).await;
    let collector = testkit::accept_all();
    let (stop_consumer, consumer) = testkit::spawn_consumer(
        &bus,
        queue,
        testkit::schemas(&[&message_type]),
        collector.clone(),
    );

    let stop_relays = CancellationToken::new();
    let mut relays = Vec::new();
    for _ in 0..RELAYS {
        let settings = RelaySettings {
            batch_size: 100,
            ..RelaySettings::default()
        };
        let relay = Relay::new(
            "orders",
            pool.clone(),
            bus.publisher().await.unwrap(),
            settings,
        );
        relays.push(tokio::spawn(relay.run(stop_relays.clone())));
    }

    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let pool = pool.clone();
        let message_type = message_type.clone();
        writers.push(tokio::spawn(async move {
            let outbox = Outbox::new("orders");
            let mut written = Vec::new();
            for t in 0..TRANSACTIONS {
                let batch: Vec<Envelope> = (0..ROWS)
                    .map(|r| ping(&message_type, (writer * TRANSACTIONS + t) * ROWS + r))
                    .collect();
                let mut tx = pool.begin().await.unwrap();
                outbox.write(&mut tx, &batch).await.unwrap();
                tx.commit().await.unwrap();
                written.extend(batch.iter().map(|m| m.message_id));
            }
            written
        }));
    }
    let mut written = HashSet::new();
    for writer in writers {
        written.extend(writer.await.unwrap());
    }
    assert_eq!(written.len(), WRITERS * TRANSACTIONS * ROWS);

    until(&collector.changed, PATIENCE, "every row to arrive", || {
        collector.count() >= written.len()
            && collector.ids().into_iter().collect::<HashSet<_>>() == written
    })
    .await;
    let received = collector.count();
    println!(
        "{} rows, {} relays: {} deliveries ({} duplicates)",
        written.len(),
        RELAYS,
        received,
        received - written.len()
    );

    stop_relays.cancel();
    for relay in relays {
        relay.await.unwrap().unwrap();
    }
    // A row is deleted in the transaction that claimed it, which may commit after the message
    // arrived: count what is left once the relays have stopped.
    let unpublished: i64 = sqlx::query_scalar("SELECT count(*) FROM orders.outbox")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(unpublished, 0);
    stop_consumer.cancel();
    consumer.await.unwrap().unwrap();
    topology
        .delete_queues(&bus.channel().await.unwrap())
        .await
        .unwrap();
}

#[sqlx::test(migrations = "../../migrations")]
async fn pruning_removes_only_what_the_retention_window_lets_go(pool: PgPool) {
    let outbox = Outbox::new("orders");
    let messages: Vec<Envelope> = (0..3).map(|n| ping("prune.evt.row", n)).collect();
    let mut tx = pool.begin().await.unwrap();
    outbox.write(&mut tx, &messages).await.unwrap();
    tx.commit().await.unwrap();
    // Published two days ago, published just now, never published.
    sqlx::query(
        "UPDATE orders.outbox SET published_at = now() - interval '2 days' WHERE message_id = $1",
    )
    .bind(messages[0].message_id)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("UPDATE orders.outbox SET published_at = now() WHERE message_id = $1")
        .bind(messages[1].message_id)
        .execute(&pool)
        .await
        .unwrap();
    let (old, recent) = (Uuid::now_v7(), Uuid::now_v7());
    sqlx::query(
        "INSERT INTO orders.inbox (consumer, message_id, received_at) \
         VALUES ('c', $1, now() - interval '2 days'), ('c', $2, now())",
    )
    .bind(old)
    .bind(recent)
    .execute(&pool)
    .await
    .unwrap();

    let name = testkit::unique();
    let bus = testkit::bus(&name).await;
    let settings = RelaySettings {
        retention: Duration::from_secs(24 * 3600),
        ..RelaySettings::default()
    };
    let relay = Relay::new(
        "orders",
        pool.clone(),
        bus.publisher().await.unwrap(),
        settings,
    );
    assert_eq!(relay.prune().await.unwrap(), 2);

    let outbox_left: Vec<Uuid> =
        sqlx::query_scalar("SELECT message_id FROM orders.outbox ORDER BY seq")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        outbox_left,
        vec![messages[1].message_id, messages[2].message_id]
    );
    let inbox_left: Vec<Uuid> = sqlx::query_scalar("SELECT message_id FROM orders.inbox")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(inbox_left, vec![recent]);
}
