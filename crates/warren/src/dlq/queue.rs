//! Reading a parking queue: each message it held when the command began, at most once, held
//! unacked until the command acts on it; and the error for a parking queue the broker lacks.

use bus::{Bus, BusError};
use contracts::routing;
use lapin::Channel;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions};
use lapin::types::FieldTable;

/// A parking queue that does not exist on the broker (the topology was never applied).
#[derive(Debug)]
pub(super) struct MissingQueue(String);

impl std::fmt::Display for MissingQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the parking queue {} does not exist on the broker; declare the topology with \
             `warren topology apply`",
            self.0
        )
    }
}

impl std::error::Error for MissingQueue {}

/// One parking queue being read on a channel of its own: each message it held at the start, at
/// most once, none taken from it until acked.
pub(super) struct Reader {
    /// The consumer queue the parking queue belongs to.
    pub(super) consumer: String,
    pub(super) name: String,
    channel: Channel,
    /// Messages in the queue when it was opened.
    pub(super) count: u32,
    left: u32,
}

impl Reader {
    pub(super) async fn open(bus: &Bus, consumer: &str) -> anyhow::Result<Self> {
        let name = routing::parking_queue(consumer);
        let channel = bus.channel().await?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let queue = channel
            .queue_declare(name.as_str().into(), passive, FieldTable::default())
            .await
            .map_err(|error| {
                if is_not_found(&error) {
                    anyhow::Error::new(MissingQueue(name.clone()))
                } else {
                    BusError::Amqp {
                        operation: "queue.declare",
                        source: error,
                    }
                    .into()
                }
            })?;
        let count = queue.message_count();
        Ok(Self {
            consumer: consumer.to_owned(),
            name,
            channel,
            count,
            left: count,
        })
    }

    /// The next message, held (unacked) until acked or the reader is released. `None` once as
    /// many messages as the queue held at the start were taken, so messages published or
    /// returned meanwhile are not seen twice.
    pub(super) async fn next(&mut self) -> anyhow::Result<Option<Delivery>> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        let got = self
            .channel
            .basic_get(self.name.as_str().into(), BasicGetOptions { no_ack: false })
            .await
            .map_err(BusError::amqp("basic.get"))?;
        if got.is_none() {
            // Someone else took the rest (another `dlq` run holds them).
            self.left = 0;
        }
        Ok(got.map(|message| message.delivery))
    }

    /// Gives every message not acked back to the queue, in its place.
    pub(super) async fn release(self) {
        if let Err(error) = self.channel.close(200, "warren dlq done".into()).await {
            tracing::warn!(%error, queue = %self.name, "closing the channel; unacked messages return when the connection closes");
        }
    }
}

pub(super) async fn ack(delivery: &Delivery) -> anyhow::Result<()> {
    delivery
        .ack(BasicAckOptions::default())
        .await
        .map_err(BusError::amqp("basic.ack"))?;
    Ok(())
}

fn is_not_found(error: &lapin::Error) -> bool {
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    matches!(
        error.kind(),
        lapin::ErrorKind::ProtocolError(amqp)
            if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND))
    )
}
