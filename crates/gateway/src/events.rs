//! Live events for server-sent event streams: saga transitions and new notifications.
//!
//! One subscription per gateway process: an exclusive, auto-deleted, server-named queue bound
//! to `saga.evt.#` and `notification.evt.#`, read without acks (these are for watching, not
//! work) and fanned out to every open stream through broadcast channels.

use std::sync::Arc;

use bus::{Bus, BusError};
use contracts::messages::{NotificationCreated, SagaUpdated};
use contracts::{Message, routing};
use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// How many events a slow stream may fall behind before it misses some.
const BACKLOG: usize = 4096;

#[derive(Debug, Clone)]
pub struct LiveEvents {
    sagas: broadcast::Sender<Arc<SagaUpdated>>,
    notifications: broadcast::Sender<Arc<NotificationCreated>>,
}

impl LiveEvents {
    /// Subscribes to the live events and starts fanning them out until `shutdown`.
    pub async fn start(bus: &Bus, shutdown: CancellationToken) -> Result<Self, BusError> {
        let channel = bus.channel().await?;
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(BusError::amqp("queue.declare"))?;
        for key in ["saga.evt.#", "notification.evt.#"] {
            channel
                .queue_bind(
                    queue.name().clone(),
                    routing::EXCHANGE.into(),
                    key.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(BusError::amqp("queue.bind"))?;
        }
        let mut consumer = channel
            .basic_consume(
                queue.name().clone(),
                "gateway-live-events".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    exclusive: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(BusError::amqp("basic.consume"))?;
        let (sagas, _) = broadcast::channel(BACKLOG);
        let (notifications, _) = broadcast::channel(BACKLOG);
        let events = Self {
            sagas,
            notifications,
        };
        let fan_out = events.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    next = consumer.next() => match next {
                        Some(Ok(delivery)) => fan_out.dispatch(&delivery.properties, &delivery.data),
                        Some(Err(error)) => {
                            if let Err(error) = channel.wait_for_recovery(error).await {
                                warn!(%error, "saga event subscription lost");
                                break;
                            }
                        }
                        None => break,
                    }
                }
            }
        });
        Ok(events)
    }

    fn dispatch(&self, properties: &lapin::BasicProperties, body: &[u8]) {
        let Ok(envelope) = bus::amqp::decode(properties, body) else {
            debug!("ignored a live event that does not decode");
            return;
        };
        // No receiver is fine: nobody is watching.
        match envelope.message_type.as_str() {
            SagaUpdated::TYPE => {
                if let Ok(event) = envelope.decode::<SagaUpdated>() {
                    let _ = self.sagas.send(Arc::new(event));
                }
            }
            NotificationCreated::TYPE => {
                if let Ok(event) = envelope.decode::<NotificationCreated>() {
                    let _ = self.notifications.send(Arc::new(event));
                }
            }
            _ => {}
        }
    }

    pub fn sagas(&self) -> broadcast::Receiver<Arc<SagaUpdated>> {
        self.sagas.subscribe()
    }

    pub fn notifications(&self) -> broadcast::Receiver<Arc<NotificationCreated>> {
        self.notifications.subscribe()
    }
}
