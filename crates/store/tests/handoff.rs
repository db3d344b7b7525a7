//! The relay's hand-off path and group commit in `Transactional`, against real PostgreSQL (a
//! fresh migrated database per test) and the real broker (vhost `warren_test`).

#![allow(clippy::unwrap_used)] // helpers of a test panic to fail it

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bus::{ConsumerQueue, Handler, HandlerError};
use contracts::Envelope;
use serde_json::json;
use sqlx::{PgConnection, PgPool};
use store::{Outbox, Relay, RelaySettings, Transactional, TxHandler};
use testkit::until;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const PATIENCE: Duration = Duration::from_secs(60);

/// Records `n` of each message in `test_effects` with the transaction that did it, answers
/// with one `<prefix>.evt.done`, and refuses `n == refuse`.
struct Recorder {
    prefix: String,
    refuse: Option<i64>,
}

impl TxHandler for Recorder {
    async fn apply(
        &self,
        tx: &mut PgConnection,
        message: &Envelope,
    ) -> Result<Vec<Envelope>, HandlerError> {
        let n = message.payload["n"].as_i64().unwrap();
        if Some(n) == self.refuse {
            return Err(HandlerError::Permanent(format!("{n} is refused")));
        }
        sqlx::query("INSERT INTO test_effects (n, txid) VALUES ($1, txid_current())")
            .bind(n)
            .execute(&mut *tx)
            .await
            .map_err(|e| HandlerError::Transient(e.to_string()))?;
        let done = format!("{}.evt.done", self.prefix);
        Ok(vec![Envelope::raw("test", &done, json!({"n": n}))])
    }
}

async fn effects_table(pool: &PgPool) {
    sqlx::query("CREATE TABLE test_effects (n bigint NOT NULL, txid bigint NOT NULL)")
        .execute(pool)
        .await
        .unwrap();
}

fn command(prefix: &str, n: i64) -> Envelope {
    Envelope::raw("test", &format!("{prefix}.cmd.do"), json!({"n": n}))
}

async fn outbox_rows(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM orders.outbox")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrations = "../../migrations")]
async fn handed_off_messages_go_out_without_a_poll_and_their_rows_are_deleted(pool: PgPool) {
    effects_table(&pool).await;
    let name = testkit::unique();
    let bus = testkit::bus(&name).await;
    let queue = ConsumerQueue::new(format!("{name}.q"), &[&format!("{name}.evt.#")]);
    let topology = testkit::declare(&bus, vec![queue.clone()]).await;
    let collector = testkit::accept_all();
    let done = format!("{name}.evt.done");
    let (stop_consumer, consumer) =
        testkit::spawn_consumer(&bus, queue, testkit::schemas(&[&done]), collector.clone());

    // A relay that would not look at the table again for an hour: only the hand-off can
    // publish within the test.
    let settings = RelaySettings {
        poll_interval: Duration::from_secs(3600),
        ..RelaySettings::default()
    };
    let relay = Relay::new(
        "orders",
        pool.clone(),
        bus.publisher().await.unwrap(),
        settings,
    );
    let handler = Transactional::new(
        pool.clone(),
        "orders",
        "test",
        Recorder {
            prefix: name.clone(),
            refuse: None,
        },
    )
    .with_handoff(relay.handoff());
    let stop_relay = CancellationToken::new();
    let running = tokio::spawn(relay.run(stop_relay.clone()));

    for n in 0..20 {
        handler.handle(command(&name, n)).await.unwrap();
    }
    until(&collector.changed, PATIENCE, "20 replies", || {
        collector.count() >= 20
    })
    .await;
    let replied: HashSet<i64> = collector
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|m| m.payload["n"].as_i64().unwrap())
        .collect();
    assert_eq!(replied, (0..20).collect());

    // A stopped relay has deleted every row it published.
    stop_relay.cancel();
    running.await.unwrap().unwrap();
    assert_eq!(outbox_rows(&pool).await, 0);

    stop_consumer.cancel();
    consumer.await.unwrap().unwrap();
    topology
        .delete_queues(&bus.channel().await.unwrap())
        .await
        .unwrap();
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_leased_row_is_claimed_only_once_its_lease_ran_out(pool: PgPool) {
    let name = testkit::unique();
    let bus = testkit::bus(&name).await;
    let queue = ConsumerQueue::new(format!("{name}.q"), &[&format!("{name}.#")]);
    let topology = testkit::declare(&bus, vec![queue]).await;
    let message = command(&name, 1);
    let mut tx = pool.begin().await.unwrap();
    Outbox::new("orders")
        .write_leased(
            &mut tx,
            std::slice::from_ref(&message),
            Duration::from_secs(3600),
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let relay = Relay::new(
        "orders",
        pool.clone(),
        bus.publisher().await.unwrap(),
        RelaySettings::default(),
    );
    assert_eq!(relay.publish_batch().await.unwrap(), 0, "leased: not yet");
    assert_eq!(outbox_rows(&pool).await, 1);

    // The process that should have published it died; the lease runs out.
    sqlx::query("UPDATE orders.outbox SET available_at = now() - interval '1 second'")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(relay.publish_batch().await.unwrap(), 1);
    assert_eq!(outbox_rows(&pool).await, 0);
    let delivered = testkit::next_delivery(&bus, &format!("{name}.q"), PATIENCE).await;
    let delivered = bus::amqp::decode(&delivered.properties, &delivered.data).unwrap();
    assert_eq!(delivered.message_id, message.message_id);

    topology
        .delete_queues(&bus.channel().await.unwrap())
        .await
        .unwrap();
}

/// A recorder that commits deliveries arriving together in one transaction.
fn grouped(pool: &PgPool, prefix: &str, refuse: Option<i64>) -> Arc<Transactional<Recorder>> {
    let recorder = Recorder {
        prefix: prefix.into(),
        refuse,
    };
    Arc::new(Transactional::new(pool.clone(), "orders", "test", recorder).with_group_commit(64, 1))
}

/// Runs `messages` through `handler` all at once, as a consumer with a large prefetch does.
async fn handle_together<H: TxHandler>(
    handler: &Arc<Transactional<H>>,
    messages: Vec<Envelope>,
) -> Vec<Result<(), HandlerError>> {
    let tasks: Vec<_> = messages
        .into_iter()
        .map(|m| {
            let handler = Arc::clone(handler);
            tokio::spawn(async move { handler.handle(m).await })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    results
}

#[sqlx::test(migrations = "../../migrations")]
async fn deliveries_arriving_together_share_a_transaction_and_each_counts_once(pool: PgPool) {
    effects_table(&pool).await;
    let prefix = "grouped";
    let handler = grouped(&pool, prefix, None);
    let mut messages: Vec<Envelope> = (0..40).map(|n| command(prefix, n)).collect();
    // A redelivery of message 7 in the same burst.
    messages.push(messages[7].clone());

    let results = handle_together(&handler, messages).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");

    let (effects, distinct, transactions): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT n), count(DISTINCT txid) FROM test_effects",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((effects, distinct), (40, 40), "each message applied once");
    assert!(
        transactions < 40,
        "40 deliveries at once took {transactions} transactions"
    );
    assert_eq!(outbox_rows(&pool).await, 40);
    let duplicates: i64 = sqlx::query_scalar("SELECT sum(duplicates) FROM orders.inbox")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(duplicates, 1);
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_failing_delivery_in_a_group_fails_alone(pool: PgPool) {
    effects_table(&pool).await;
    let prefix = "grouped";
    let handler = grouped(&pool, prefix, Some(13));
    let messages: Vec<Envelope> = (0..30).map(|n| command(prefix, n)).collect();
    let ids: Vec<Uuid> = messages.iter().map(|m| m.message_id).collect();

    let results = handle_together(&handler, messages).await;
    for (n, result) in results.iter().enumerate() {
        if n == 13 {
            assert!(
                matches!(result, Err(HandlerError::Permanent(_))),
                "{result:?}"
            );
        } else {
            assert!(result.is_ok(), "message {n}: {result:?}");
        }
    }
    let applied: Vec<i64> = sqlx::query_scalar("SELECT n FROM test_effects ORDER BY n")
        .fetch_all(&pool)
        .await
        .unwrap();
    let expected: Vec<i64> = (0..30).filter(|n| *n != 13).collect();
    assert_eq!(applied, expected);
    // The refused message left no inbox row, so a redrive can apply it later.
    let refused_claimed: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM orders.inbox WHERE message_id = $1)")
            .bind(ids[13])
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(!refused_claimed);
    assert_eq!(outbox_rows(&pool).await, 29);
}
