//! The broker floor: what the broker alone does with confirmed persistent messages.

use std::time::Duration;

use anyhow::Context;
use bus::{Bus, Outgoing};
use contracts::Envelope;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use serde_json::json;
use tokio::time::Instant;

/// Confirmed, persistent publish-and-consume with acks through a quorum queue of its own:
/// messages per second, from the first publish to the last ack.
pub async fn broker_floor(bus: &Bus, run: &str, messages: usize) -> anyhow::Result<f64> {
    let queue = format!("warren.bench.{run}.floor");
    let channel = bus.channel().await?;
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from(b"quorum".to_vec())),
    );
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            arguments,
        )
        .await?;
    channel.basic_qos(500, BasicQosOptions::default()).await?;
    let mut deliveries = channel
        .basic_consume(
            queue.as_str().into(),
            "warren-bench-floor".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let publisher = bus.publisher().await?;
    let started = Instant::now();
    let consumed = tokio::spawn(async move {
        let mut count = 0;
        while count < messages {
            let Some(Ok(delivery)) = deliveries.next().await else {
                break;
            };
            delivery.ack(BasicAckOptions::default()).await?;
            count += 1;
        }
        anyhow::Ok(count)
    });
    let body = vec![b'x'; 512];
    let mut left = messages;
    while left > 0 {
        let batch: Vec<Outgoing> = (0..left.min(500))
            .map(|_| {
                let envelope = Envelope::raw("bench", "bench.floor", json!({}));
                let mut message = Outgoing::to("", &queue, &envelope);
                message.body.clone_from(&body);
                message
            })
            .collect();
        left -= batch.len();
        for result in publisher.send_all(&batch).await {
            result.context("publishing to the floor queue")?;
        }
    }
    let count = tokio::time::timeout(Duration::from_secs(120), consumed)
        .await
        .context("the floor queue did not drain within 120 s")???;
    let elapsed = started.elapsed();
    // Cancel before deleting: RabbitMQ 3.10 crashes the channel (and closes the connection
    // with INTERNAL_ERROR) on a cancel that arrives after its quorum queue was deleted.
    let _ = channel
        .basic_cancel("warren-bench-floor".into(), BasicCancelOptions::default())
        .await;
    let _ = channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = channel.close(200, "bench done".into()).await;
    Ok(count as f64 / elapsed.as_secs_f64())
}
