//! The bus against the real broker (vhost `warren_test`).

#![allow(clippy::unwrap_used)] // helpers of a test panic to fail it

use std::collections::HashSet;
use std::time::Duration;

use bus::{ConsumerQueue, HandlerError, RetryPolicy};
use contracts::{Envelope, routing};
use lapin::BasicProperties;
use serde_json::json;
use testkit::{Collector, accept_all, until};

const PATIENCE: Duration = Duration::from_secs(60);

/// A message of a type only this test uses.
fn ping(message_type: &str, n: u32, poison: bool) -> Envelope {
    Envelope::raw("test", message_type, json!({"n": n, "poison": poison}))
}

#[tokio::test]
async fn consumer_resumes_after_its_connection_is_closed_by_force() {
    let name = testkit::unique();
    let message_type = format!("{name}.evt.ping");
    let bus = testkit::bus(&name).await;
    let queue = ConsumerQueue::new(format!("{name}.q"), &[&format!("{name}.#")]);
    let topology = testkit::declare(&bus, vec![queue.clone()]).await;
    let collector = accept_all();
    let (stop, consumer) = testkit::spawn_consumer(
        &bus,
        queue,
        testkit::schemas(&[&message_type]),
        collector.clone(),
    );
    let publisher = bus.publisher().await.unwrap();

    let mut sent = HashSet::new();
    for n in 0..50 {
        let message = ping(&message_type, n, false);
        publisher.publish(&message).await.unwrap();
        sent.insert(message.message_id);
    }
    // Close while those may still be in flight to the consumer, then keep publishing: the
    // publisher waits for recovery and re-sends; the consumer comes back by itself.
    assert_eq!(testkit::close_connections(&name).await, 1);
    for n in 50..100 {
        let message = ping(&message_type, n, false);
        publisher.publish(&message).await.unwrap();
        sent.insert(message.message_id);
    }

    until(&collector.changed, PATIENCE, "all 100 messages", || {
        let seen: HashSet<_> = collector.ids().into_iter().collect();
        sent.is_subset(&seen)
    })
    .await;
    assert!(
        !consumer.is_finished(),
        "the consumer must not have stopped"
    );
    assert!(bus.is_connected());

    stop.cancel();
    consumer.await.unwrap().unwrap();
    topology
        .delete_queues(&bus.channel().await.unwrap())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_poison_message_is_parked_after_its_attempts_while_others_flow() {
    let name = testkit::unique();
    let message_type = format!("{name}.evt.ping");
    let bus = testkit::bus(&name).await;
    let retry = RetryPolicy::new([Duration::from_millis(50), Duration::from_millis(100)]);
    let queue = ConsumerQueue::new(format!("{name}.q"), &[&format!("{name}.#")]).with_retry(retry);
    let topology = testkit::declare(&bus, vec![queue.clone()]).await;
    let collector = Collector::new(|message: &Envelope, _| {
        if message.payload["poison"] == true {
            Err(HandlerError::Transient("cannot digest this".into()))
        } else {
            Ok(())
        }
    });
    let (stop, consumer) = testkit::spawn_consumer(
        &bus,
        queue.clone(),
        testkit::schemas(&[&message_type]),
        collector.clone(),
    );
    let publisher = bus.publisher().await.unwrap();

    let poison = ping(&message_type, 0, true);
    publisher.publish(&poison).await.unwrap();
    let mut good = HashSet::new();
    for n in 1..=20 {
        let message = ping(&message_type, n, false);
        publisher.publish(&message).await.unwrap();
        good.insert(message.message_id);
    }

    until(&collector.changed, PATIENCE, "the good messages", || {
        let seen = collector.ids();
        good.iter().all(|id| seen.contains(id))
    })
    .await;
    let parked = testkit::next_delivery(&bus, &queue.parking_queue(), PATIENCE).await;
    let headers = parked.properties.headers().clone().unwrap();
    let reason = bus::amqp::header_text(&headers, routing::HEADER_PARKED_REASON).unwrap();
    assert!(reason.contains("gave up after 3 attempts"), "{reason}");
    assert!(reason.contains("cannot digest this"), "{reason}");
    let parked = bus::amqp::decode(&parked.properties, &parked.data).unwrap();
    assert_eq!(parked.message_id, poison.message_id);
    assert_eq!(parked.attempt, 3);

    let seen = collector.ids();
    assert_eq!(
        seen.iter().filter(|id| **id == poison.message_id).count(),
        3
    );
    assert_eq!(
        seen.len(),
        23,
        "each good message once, the poison three times"
    );

    stop.cancel();
    consumer.await.unwrap().unwrap();
    topology
        .delete_queues(&bus.channel().await.unwrap())
        .await
        .unwrap();
}

#[tokio::test]
async fn undecodable_and_invalid_messages_are_parked_at_once_with_the_reason() {
    let name = testkit::unique();
    let bus = testkit::bus(&name).await;
    let queue = ConsumerQueue::new(format!("{name}.q"), &[&format!("{name}.#")]);
    let topology = testkit::declare(&bus, vec![queue.clone()]).await;
    let collector = accept_all();
    // Only the embedded schemas: `order.cmd.create` is known, this test's own type is not.
    let (stop, consumer) = testkit::spawn_consumer(
        &bus,
        queue.clone(),
        contracts::Schemas::embedded(),
        collector.clone(),
    );
    let publisher = bus.publisher().await.unwrap();
    let key = format!("{name}.cmd.anything");

    let not_json = bus::Outgoing {
        exchange: routing::EXCHANGE.into(),
        routing_key: key.clone(),
        properties: BasicProperties::default()
            .with_message_id(uuid::Uuid::now_v7().to_string().as_str().into())
            .with_type("order.cmd.create".into()),
        body: b"{ this is not json".to_vec(),
    };
    publisher.send(&not_json).await.unwrap();
    let invalid = Envelope::raw(
        "test",
        "order.cmd.create",
        json!({"order_id": "not-a-uuid"}),
    );
    publisher
        .send(&bus::Outgoing::to(routing::EXCHANGE, &key, &invalid))
        .await
        .unwrap();

    let mut reasons = Vec::new();
    for _ in 0..2 {
        let parked = testkit::next_delivery(&bus, &queue.parking_queue(), PATIENCE).await;
        let headers = parked.properties.headers().clone().unwrap();
        reasons.push(bus::amqp::header_text(&headers, routing::HEADER_PARKED_REASON).unwrap());
        assert_eq!(
            bus::amqp::header_text(&headers, routing::HEADER_PARKED_FROM).as_deref(),
            Some(queue.name.as_str())
        );
    }
    reasons.sort();
    assert!(
        reasons[0].contains("cannot decode: body is not JSON"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].contains("order.cmd.create fails its schema"),
        "{reasons:?}"
    );
    assert_eq!(collector.count(), 0, "the handler never saw them");

    stop.cancel();
    consumer.await.unwrap().unwrap();
    topology
        .delete_queues(&bus.channel().await.unwrap())
        .await
        .unwrap();
}

/// Holds every message until released, so a test can stop the consumer mid-message.
struct Gate {
    started: tokio::sync::Notify,
    release: tokio::sync::Semaphore,
    handled: std::sync::atomic::AtomicUsize,
}

impl bus::Handler for Gate {
    async fn handle(&self, _: Envelope) -> Result<(), HandlerError> {
        self.started.notify_one();
        let _permit = self.release.acquire().await.unwrap();
        self.handled
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test]
async fn shutdown_finishes_the_message_in_hand_and_takes_no_more() {
    use std::sync::atomic::Ordering;

    let name = testkit::unique();
    let message_type = format!("{name}.evt.ping");
    let bus = testkit::bus(&name).await;
    let queue = ConsumerQueue::new(format!("{name}.q"), &[&format!("{name}.#")]);
    let topology = testkit::declare(&bus, vec![queue.clone()]).await;
    let gate = std::sync::Arc::new(Gate {
        started: tokio::sync::Notify::new(),
        release: tokio::sync::Semaphore::new(0),
        handled: std::sync::atomic::AtomicUsize::new(0),
    });
    let (stop, consumer) = testkit::spawn_consumer(
        &bus,
        queue.clone(),
        testkit::schemas(&[&message_type]),
        gate.clone(),
    );
    let publisher = bus.publisher().await.unwrap();
    publisher
        .publish(&ping(&message_type, 1, false))
        .await
        .unwrap();
    testkit::within(PATIENCE, "the handler to start", gate.started.notified()).await;

    stop.cancel();
    publisher
        .publish(&ping(&message_type, 2, false))
        .await
        .unwrap();
    gate.release.add_permits(10);
    consumer.await.unwrap().unwrap();

    assert_eq!(
        gate.handled.load(Ordering::SeqCst),
        1,
        "the one in hand finished"
    );
    // The first was acked; the second went back to the queue for the next consumer.
    let next = testkit::next_delivery(&bus, &queue.name, PATIENCE).await;
    let next = bus::amqp::decode(&next.properties, &next.data).unwrap();
    assert_eq!(next.payload["n"], 2);
    topology
        .delete_queues(&bus.channel().await.unwrap())
        .await
        .unwrap();
}

#[tokio::test]
async fn in_a_mixed_batch_exactly_the_unroutable_messages_are_reported() {
    use lapin::ExchangeKind;
    use lapin::options::{
        ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
        QueueDeleteOptions,
    };
    use lapin::types::FieldTable;

    let name = testkit::unique();
    let bus = testkit::bus(&name).await;
    let channel = bus.channel().await.unwrap();
    // An exchange of this test's own, so no catch-all binding makes every key routable.
    let exchange = format!("{name}.x");
    channel
        .exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let queue = format!("{name}.q");
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.as_str().into(), durable, FieldTable::default())
        .await
        .unwrap();
    channel
        .queue_bind(
            queue.as_str().into(),
            exchange.as_str().into(),
            "kept".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    // Persistent messages to a durable queue are confirmed after the disk write, returns at
    // once: the broker's acks come late and often cover several messages.
    let publisher = bus.publisher().await.unwrap();
    for round in 0..5 {
        let batch: Vec<bus::Outgoing> = (0..200)
            .map(|n| {
                let key = if n % 3 == 0 { "nowhere" } else { "kept" };
                bus::Outgoing::to(&exchange, key, &ping(key, round * 1000 + n, false))
            })
            .collect();
        let results = publisher.send_all(&batch).await;
        for (n, result) in results.iter().enumerate() {
            if n % 3 == 0 {
                assert!(
                    matches!(result, Err(bus::PublishError::Unroutable { .. })),
                    "round {round}, message {n}: {result:?}"
                );
            } else {
                assert!(result.is_ok(), "round {round}, message {n}: {result:?}");
            }
        }
    }
    channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    channel
        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();
}
