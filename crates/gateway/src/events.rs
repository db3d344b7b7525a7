//! Live events for server-sent event streams: saga transitions and new notifications.
//!
//! One subscription per gateway process: an exclusive, auto-deleted queue bound to
//! `saga.evt.#` and `notification.evt.#`, read without acks (these are for watching, not work)
//! and fanned out to every open stream through broadcast channels.
//!
//! The queue is named by the client ([`Bus::watch`]) so lapin's recovery can declare it again;
//! should recovery fail anyway, the subscription is made again from scratch.

use std::sync::Arc;
use std::time::Duration;

use bus::{Bus, BusError};
use contracts::messages::{NotificationCreated, SagaUpdated};
use contracts::{Message, routing};
use futures_util::StreamExt;
use lapin::{Channel, Consumer};
use tokio::sync::broadcast;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tracing::{debug, info, warn};

/// How many events a slow stream may fall behind before it misses some.
const BACKLOG: usize = 4096;
/// How long to wait between attempts to subscribe again.
const RESUBSCRIBE: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct LiveEvents {
    sagas: broadcast::Sender<Arc<SagaUpdated>>,
    notifications: broadcast::Sender<Arc<NotificationCreated>>,
    shutdown: CancellationToken,
}

impl LiveEvents {
    /// Subscribes to the live events and starts fanning them out until `shutdown`.
    pub async fn start(bus: &Bus, shutdown: CancellationToken) -> Result<Self, BusError> {
        let subscription = subscribe(bus).await?;
        let (sagas, _) = broadcast::channel(BACKLOG);
        let (notifications, _) = broadcast::channel(BACKLOG);
        let events = Self {
            sagas,
            notifications,
            shutdown: shutdown.clone(),
        };
        tokio::spawn(events.clone().fan_out(bus.clone(), subscription, shutdown));
        Ok(events)
    }

    async fn fan_out(
        self,
        bus: Bus,
        mut subscription: (Channel, Consumer),
        shutdown: CancellationToken,
    ) {
        loop {
            let (channel, mut consumer) = subscription;
            let lost = loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    next = consumer.next() => match next {
                        Some(Ok(delivery)) => self.dispatch(&delivery.properties, &delivery.data),
                        Some(Err(error)) => {
                            if let Err(error) = channel.wait_for_recovery(error).await {
                                break error.to_string();
                            }
                        }
                        None => break "the broker cancelled the consumer".to_owned(),
                    }
                }
            };
            warn!(%lost, "live event subscription lost; subscribing again");
            subscription = loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(RESUBSCRIBE) => {}
                }
                match subscribe(&bus).await {
                    Ok(subscription) => break subscription,
                    Err(error) => warn!(%error, "cannot subscribe to live events yet"),
                }
            };
            info!("live events subscribed again");
        }
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

    /// Completes when the process stops. Streams end on it: graceful shutdown waits for open
    /// connections, and a page left open would otherwise hold it for the whole grace period.
    pub fn stopping(&self) -> WaitForCancellationFutureOwned {
        self.shutdown.clone().cancelled_owned()
    }
}

/// This process's private live event queue.
async fn subscribe(bus: &Bus) -> Result<(Channel, Consumer), BusError> {
    bus.watch(
        bus::access::LIVE_EVENTS,
        routing::EXCHANGE,
        &bus::access::LIVE_EVENT_KEYS,
    )
    .await
}
